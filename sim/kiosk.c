/*
 * kiosk: the terminal client for lockerd's keypad socket (proto/kiosk.md).
 * This file owns the command words, the JSON lines each way and the screen
 * text: one command from the arguments, or one a line from standard input
 * with the server's notices printed as they come, also while idle.
 */
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef LOCKERD_VERSION
#define LOCKERD_VERSION "0.1.0"
#endif

#define KIOSK_SOCKET	"/run/lockerd/kiosk.sock"
#define LINE_MAX_BYTES	4096		/* a line, not counting its newline */
#define ARGS_MAX	4		/* words kept from an input line */
#define WAIT_MAX_S	86400.0

/* Exit codes of one-shot mode. */
enum {
	RC_OK = 0,
	RC_REFUSED = 1,		/* ok:false, or no usable reply */
	RC_USAGE = 2,
	RC_CONN = 3,
};

enum {
	PFD_SIGNAL,
	PFD_SOCK,
	PFD_USER,
	PFD_MAX
};

enum cmd_kind {
	CMD_ERROR,
	CMD_NONE,		/* blank line or comment */
	CMD_SEND,
	CMD_PIN,		/* login without a PIN: ask for it first */
	CMD_HELP,
	CMD_QUIT,
};

enum op {
	OP_CODE,
	OP_SCAN,
	OP_LOGIN,
	OP_LOGOUT,
	OP_LOAD,
	OP_RETRIEVE,
	OP_TAKE_BACK,
	OP_OPEN,
	OP_SERVICE,
	OP_STATUS,
	OP_RAW,
	OP_HELP,
	OP_QUIT,
};

static const struct command {
	const char	*name;
	enum op		 op;
	int		 min, max;	/* arguments after the word */
	const char	*args;
} commands[] = {
	{ "code", OP_CODE, 1, 2, "DIGITS [PHONE4]" },
	{ "scan", OP_SCAN, 1, 2, "CREDENTIAL [PHONE4]" },
	{ "login", OP_LOGIN, 1, 2, "STAFF_ID [PIN]" },
	{ "logout", OP_LOGOUT, 0, 0, "" },
	{ "load", OP_LOAD, 2, 2, "SIZE APP" },
	{ "retrieve", OP_RETRIEVE, 0, 0, "" },
	{ "take-back", OP_TAKE_BACK, 0, 0, "" },
	{ "take_back", OP_TAKE_BACK, 0, 0, "" },
	{ "open", OP_OPEN, 1, 1, "CELL" },
	{ "service", OP_SERVICE, 2, 2, "CELL in|out" },
	{ "status", OP_STATUS, 0, 0, "" },
	{ "raw", OP_RAW, 1, INT_MAX, "JSON" },
	{ "help", OP_HELP, 0, 0, "" },
	{ "quit", OP_QUIT, 0, 0, "" },
};

/* Known notices; others are ignored on the screen, as the protocol asks. */
static const char *const notice_kinds[] = {
	"open", "closed", "info", "session_ended",
};

static const char commands_text[] =
"Commands:\n"
"  code DIGITS [PHONE4]  enter a code; PHONE4 = last four digits of the\n"
"                        applicant's phone, when the reservation asks\n"
"  scan CREDENTIAL [PHONE4]\n"
"                        present a QR credential (with the phone's last\n"
"                        four digits when the reservation asks; without\n"
"                        them, interactive mode asks after the reply)\n"
"  login STAFF_ID [PIN]  staff log-in; without PIN, the PIN is read from\n"
"                        the terminal without echo (or the next input line)\n"
"  logout                end the staff session\n"
"  load SIZE APP         staff: open a free cell of SIZE (S, M or L) for\n"
"                        application APP\n"
"  retrieve              staff: open the deposited cells, one by one\n"
"  take-back             staff: open the next overdue or cancelled pickup\n"
"  open CELL             staff: open cell CELL for service\n"
"  service CELL in|out   staff: put cell CELL into or out of service\n"
"  status                what the idle screen shows\n"
"  raw JSON              send JSON as one request line, unchecked\n"
"  help                  this list\n"
"  quit                  end (interactive mode; so does end of input)\n";

static const char usage_head[] =
"usage: kiosk [-j] [-s SOCKET] [-w SECONDS]                  (interactive)\n"
"       kiosk [-j] [-s SOCKET] [-w SECONDS] COMMAND [ARG ...] (one command)\n"
"\n"
"Terminal client for lockerd's keypad socket. With a COMMAND it sends that\n"
"one request, prints the reply and exits. Without, it reads commands from\n"
"standard input, one a line (blank lines and lines starting with # are\n"
"skipped), waits for each reply before the next, and prints the server's\n"
"notices as they come.\n"
"\n"
"Options:\n"
"  -s SOCKET   the keypad socket; default $LOCKERD_KIOSK if set, else\n"
"              " KIOSK_SOCKET "\n"
"  -j          print the JSON lines received (replies and notices) as they\n"
"              are, instead of the screen text\n"
"  -w SECONDS  after the reply (interactive: after the end of input) keep\n"
"              printing notices for SECONDS (0.." "86400, default 0)\n"
"  -h, --help  show this text\n"
"  --version   show the version\n"
"\n";

static const char usage_tail[] =
"\n"
"Screen text: a reply prints its \"show\" text, after \"error (REASON): \"\n"
"when refused and followed by \" [wait N s]\" when the keypad is throttled;\n"
"a notice prints \"* \" and its text.\n"
"\n"
"Exit status (one command): 0 the reply said ok, 1 it did not, 2 bad usage\n"
"or input, 3 cannot connect or the connection closed before the reply.\n";

/* Input cut into lines; data has room for the longest line and its newline. */
struct lbuf {
	char	data[LINE_MAX_BYTES + 1];
	size_t	len;
	int	skip;		/* dropping the rest of an over-long line */
	int	eof;
};

struct cmd {
	json_t		*req;
	char		*raw;		/* raw: the line to send */
	const char	*staff;		/* login without PIN */
};

struct kiosk {
	const char	*path;
	int		 fd;
	int		 sig_fd;
	int		 json;		/* -j */
	int64_t		 linger_ms;	/* -w */
	int		 interactive;
	int		 in_tty;	/* stdin is a terminal */
	int		 prompt;	/* ... and so is stdout */
	int		 prompt_shown;
	struct lbuf	 sock_in;
	struct lbuf	 user_in;
	int		 pending;	/* replies still to come */
	int		 replied;	/* one-shot: the reply came */
	int		 input_over;	/* interactive: EOF or quit */
	char		*login_staff;	/* waiting for this one's PIN */
	char		*scan_cred;	/* a scan sent without phone digits */
	int		 phone_ask;	/* ... the next line brings them */
	struct termios	 tio;		/* saved while echo is off */
	int		 echo_off;
	int64_t		 deadline;	/* stop printing notices; -1 none */
	int		 done;
	int		 rc;
	int		 signo;
};

static void	log_warn(const char *, ...)
		    __attribute__((format(printf, 1, 2)));

static void
log_warn(const char *fmt, ...)
{
	va_list ap;

	fputs("kiosk: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
usage_hint(void)
{
	fputs("usage: kiosk [-j] [-s SOCKET] [-w SECONDS] [COMMAND [ARG ...]]\n"
	    "(kiosk --help for details)\n", stderr);
}

/*
 * Text from the server goes to a terminal: control characters other than
 * newline and tab become '?', so a bad line cannot drive the terminal.
 */
static void
put_clean(const char *s, size_t len, FILE *fp)
{
	size_t i;
	unsigned char c;

	for (i = 0; i < len; i++) {
		c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f)
			c = '?';
		putc(c, fp);
	}
}

static void
out_flush(struct kiosk *k)
{
	if (fflush(stdout) == EOF) {
		if (!k->done)
			log_warn("stdout: %s", strerror(errno));
		k->done = 1;
		k->rc = RC_REFUSED;
	}
}

/* Starts a line of output, moving off a prompt the user has not answered. */
static void
out_begin(struct kiosk *k)
{
	if (k->prompt_shown) {
		putc('\n', stdout);
		k->prompt_shown = 0;
	}
}

static void
out_raw(struct kiosk *k, const char *line, size_t len)
{
	out_begin(k);
	fwrite(line, 1, len, stdout);
	putc('\n', stdout);
	out_flush(k);
}

/* A line from the server that cannot be shown: raw, with a warning. */
static void
bad_line(struct kiosk *k, const char *why, const char *line, size_t len)
{
	out_begin(k);
	out_flush(k);
	fprintf(stderr, "kiosk: warning: %s: ", why);
	put_clean(line, len, stderr);
	fputc('\n', stderr);
	if (k->json)
		out_raw(k, line, len);
}

static void
term_echo_restore(struct kiosk *k)
{
	if (!k->echo_off)
		return;
	if (tcsetattr(STDIN_FILENO, TCSANOW, &k->tio) == -1)
		log_warn("stdin: cannot turn echo back on: %s",
		    strerror(errno));
	k->echo_off = 0;
}

static int
term_echo_off(struct kiosk *k)
{
	struct termios t;

	if (tcgetattr(STDIN_FILENO, &k->tio) == -1)
		return -1;
	t = k->tio;
	t.c_lflag &= ~(tcflag_t)ECHO;
	t.c_lflag |= ECHONL;
	if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == -1)
		return -1;
	k->echo_off = 1;
	return 0;
}

/*
 * Takes the next line out of b into out (NUL-terminated, newline dropped;
 * out has room for LINE_MAX_BYTES + 1). Returns its length, -1 when no
 * whole line is there yet, -2 when the line is too long: the rest of it
 * is then dropped as it comes. At EOF a last line without newline counts.
 */
static int
lbuf_take(struct lbuf *b, char *out)
{
	char *nl;
	size_t n;

	for (;;) {
		nl = memchr(b->data, '\n', b->len);
		if (b->skip) {
			if (nl == NULL) {
				b->len = 0;
				return -1;
			}
			n = (size_t)(nl - b->data) + 1;
			memmove(b->data, b->data + n, b->len - n);
			b->len -= n;
			b->skip = 0;
			continue;
		}
		if (nl != NULL) {
			n = (size_t)(nl - b->data);
			memcpy(out, b->data, n);
			out[n] = '\0';
			memmove(b->data, nl + 1, b->len - n - 1);
			b->len -= n + 1;
			return (int)n;
		}
		if (b->len == sizeof(b->data)) {
			b->len = 0;
			b->skip = 1;
			return -2;
		}
		if (b->eof && b->len > 0) {
			n = b->len;
			memcpy(out, b->data, n);
			out[n] = '\0';
			b->len = 0;
			return (int)n;
		}
		return -1;
	}
}

static int
parse_cell(const char *s, int *cell)
{
	char *end;
	long v;

	if (*s < '0' || *s > '9') {
		log_warn("cell must be a number, not '%s'", s);
		return -1;
	}
	errno = 0;
	v = strtol(s, &end, 10);
	if (*end != '\0') {
		log_warn("cell must be a number, not '%s'", s);
		return -1;
	}
	if (errno == ERANGE || v > INT_MAX) {
		log_warn("cell %s is out of range", s);
		return -1;
	}
	*cell = (int)v;
	return 0;
}

/* Joins words with single spaces, for `raw` given as several arguments. */
static char *
join_words(int argc, char **argv)
{
	size_t len = 1;
	char *s;
	int i;

	for (i = 0; i < argc; i++)
		len += strlen(argv[i]) + 1;
	if ((s = malloc(len)) == NULL)
		return NULL;
	s[0] = '\0';
	for (i = 0; i < argc; i++) {
		if (i > 0)
			strcat(s, " ");
		strcat(s, argv[i]);
	}
	return s;
}

static void
cmd_free(struct cmd *c)
{
	json_decref(c->req);
	free(c->raw);
	memset(c, 0, sizeof(*c));
}

/*
 * Turns a command (argv[0] the word, argc counting every word even past
 * those kept) into a request. rest is what follows the word on an input
 * line, for raw; NULL in one-shot mode, where raw joins its arguments.
 * Complains on stderr about bad input.
 */
static enum cmd_kind
cmd_parse(int argc, char **argv, const char *rest, struct cmd *c)
{
	const struct command *cm = NULL;
	json_error_t err;
	char size[2];
	size_t i;
	int cell, n = argc - 1;

	memset(c, 0, sizeof(*c));
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[0], commands[i].name) == 0)
			cm = &commands[i];
	if (cm == NULL) {
		log_warn("unknown command '%s' (try help)", argv[0]);
		return CMD_ERROR;
	}
	if (n < cm->min || n > cm->max) {
		log_warn("%s: wrong number of arguments; usage: %s%s%s",
		    cm->name, cm->name, cm->args[0] != '\0' ? " " : "",
		    cm->args);
		return CMD_ERROR;
	}

	err.text[0] = '\0';
	switch (cm->op) {
	case OP_CODE:
		if (n == 2)
			c->req = json_pack_ex(&err, 0, "{s:s, s:s, s:s}",
			    "op", "code", "code", argv[1], "phone", argv[2]);
		else
			c->req = json_pack_ex(&err, 0, "{s:s, s:s}",
			    "op", "code", "code", argv[1]);
		break;
	case OP_SCAN:
		if (n == 2)
			c->req = json_pack_ex(&err, 0, "{s:s, s:s, s:s}",
			    "op", "scan", "credential", argv[1], "phone",
			    argv[2]);
		else
			c->req = json_pack_ex(&err, 0, "{s:s, s:s}",
			    "op", "scan", "credential", argv[1]);
		break;
	case OP_LOGIN:
		if (n == 1) {
			c->staff = argv[1];
			return CMD_PIN;
		}
		c->req = json_pack_ex(&err, 0, "{s:s, s:s, s:s}",
		    "op", "login", "staff", argv[1], "pin", argv[2]);
		break;
	case OP_LOAD:
		if (strlen(argv[1]) != 1 || strchr("SMLsml", argv[1][0]) ==
		    NULL) {
			log_warn("load: size must be S, M or L, not '%s'",
			    argv[1]);
			return CMD_ERROR;
		}
		size[0] = argv[1][0] & ~0x20;	/* upper case */
		size[1] = '\0';
		c->req = json_pack_ex(&err, 0, "{s:s, s:s, s:s}",
		    "op", "load", "size", size, "app", argv[2]);
		break;
	case OP_LOGOUT:
		c->req = json_pack_ex(&err, 0, "{s:s}", "op", "logout");
		break;
	case OP_RETRIEVE:
		c->req = json_pack_ex(&err, 0, "{s:s}", "op", "retrieve");
		break;
	case OP_TAKE_BACK:
		c->req = json_pack_ex(&err, 0, "{s:s}", "op", "take_back");
		break;
	case OP_STATUS:
		c->req = json_pack_ex(&err, 0, "{s:s}", "op", "status");
		break;
	case OP_OPEN:
		if (parse_cell(argv[1], &cell) == -1)
			return CMD_ERROR;
		c->req = json_pack_ex(&err, 0, "{s:s, s:i}",
		    "op", "open", "cell", cell);
		break;
	case OP_SERVICE:
		if (parse_cell(argv[1], &cell) == -1)
			return CMD_ERROR;
		if (strcmp(argv[2], "in") != 0 && strcmp(argv[2], "out") != 0) {
			log_warn("service: say in or out, not '%s'", argv[2]);
			return CMD_ERROR;
		}
		c->req = json_pack_ex(&err, 0, "{s:s, s:i, s:b}",
		    "op", "service", "cell", cell,
		    "in", strcmp(argv[2], "in") == 0);
		break;
	case OP_RAW:
		c->raw = rest != NULL ? strdup(rest) : join_words(n, argv + 1);
		if (c->raw == NULL) {
			log_warn("out of memory");
			return CMD_ERROR;
		}
		/* One request, one line: a newline would make two. */
		if (strchr(c->raw, '\n') != NULL) {
			log_warn("raw: the JSON must be a single line");
			cmd_free(c);
			return CMD_ERROR;
		}
		return CMD_SEND;
	case OP_HELP:
		return CMD_HELP;
	case OP_QUIT:
		return CMD_QUIT;
	}
	if (c->req == NULL) {
		/* Mostly arguments that are not UTF-8. */
		log_warn("%s: %s", cm->name, err.text);
		return CMD_ERROR;
	}
	return CMD_SEND;
}

/*
 * Splits s in place on blanks into at most max words; returns how many
 * words there are, also those past max.
 */
static int
split_words(char *s, char **argv, int max)
{
	int n = 0;
	char *e;

	for (;;) {
		s += strspn(s, " \t");
		if (*s == '\0')
			break;
		e = s + strcspn(s, " \t");
		if (n < max)
			argv[n] = s;
		n++;
		if (*e == '\0')
			break;
		*e = '\0';
		s = e + 1;
	}
	return n;
}

static void
kiosk_lost(struct kiosk *k, const char *why)
{
	k->done = 1;
	out_flush(k);
	if ((!k->interactive && k->replied) ||
	    (k->interactive && k->input_over && k->pending == 0)) {
		/* Only the notices we were waiting for are lost. */
		log_warn("%s: %s", k->path, why);
		return;
	}
	if (k->pending > 0)
		log_warn("%s: %s before the reply", k->path, why);
	else
		log_warn("%s: %s", k->path, why);
	k->rc = RC_CONN;
}

static int
kiosk_send_line(struct kiosk *k, const char *s)
{
	size_t len = strlen(s), off = 0;
	ssize_t n;
	char *buf;

	if ((buf = malloc(len + 1)) == NULL) {
		log_warn("out of memory");
		k->done = 1;
		k->rc = RC_REFUSED;
		return -1;
	}
	memcpy(buf, s, len);
	buf[len++] = '\n';
	while (off < len) {
		n = send(k->fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			free(buf);
			kiosk_lost(k, errno == EPIPE ?
			    "connection closed by lockerd" : strerror(errno));
			return -1;
		}
		off += (size_t)n;
	}
	free(buf);
	k->pending++;
	return 0;
}

static void
kiosk_request(struct kiosk *k, struct cmd *c)
{
	char *s;

	if (c->raw != NULL) {
		kiosk_send_line(k, c->raw);
		return;
	}
	if ((s = json_dumps(c->req, JSON_COMPACT)) == NULL) {
		log_warn("out of memory");
		k->done = 1;
		k->rc = RC_REFUSED;
		return;
	}
	kiosk_send_line(k, s);
	free(s);
}

/* Asks for the PIN of a login; the next input line brings it. */
static void
kiosk_pin_ask(struct kiosk *k, const char *staff)
{
	if ((k->login_staff = strdup(staff)) == NULL) {
		log_warn("out of memory");
		k->done = 1;
		k->rc = RC_REFUSED;
		return;
	}
	if (!k->in_tty)
		return;
	if (term_echo_off(k) == -1) {
		log_warn("login: cannot turn off echo for the PIN: %s",
		    strerror(errno));
		free(k->login_staff);
		k->login_staff = NULL;
		if (!k->interactive) {
			k->done = 1;
			k->rc = RC_USAGE;
		}
		return;
	}
	out_flush(k);
	fputs("PIN: ", stderr);
	fflush(stderr);
}

static void
kiosk_pin_line(struct kiosk *k, const char *pin)
{
	json_error_t err;
	struct cmd c;

	term_echo_restore(k);
	memset(&c, 0, sizeof(c));
	c.req = json_pack_ex(&err, 0, "{s:s, s:s, s:s}", "op", "login",
	    "staff", k->login_staff, "pin", pin);
	free(k->login_staff);
	k->login_staff = NULL;
	if (c.req == NULL) {
		log_warn("login: %s", err.text);
		if (!k->interactive) {
			k->done = 1;
			k->rc = RC_USAGE;
		}
		return;
	}
	kiosk_request(k, &c);
	cmd_free(&c);
}

static void
kiosk_pin_none(struct kiosk *k, const char *why)
{
	if (k->echo_off)
		fputc('\n', stderr);
	term_echo_restore(k);
	log_warn("login: %s", why);
	free(k->login_staff);
	k->login_staff = NULL;
	if (!k->interactive) {
		k->done = 1;
		k->rc = RC_USAGE;
	}
}

/*
 * A scan without the phone digits: if lockerd answers phone_needed, the
 * screen asks for them, and the next input line goes with the same
 * credential (as the locker's screen does it).
 */
static void
kiosk_scan_note(struct kiosk *k, const struct cmd *c)
{
	const char *op, *cred;

	free(k->scan_cred);
	k->scan_cred = NULL;
	if (c->req == NULL ||
	    (op = json_string_value(json_object_get(c->req, "op"))) == NULL ||
	    strcmp(op, "scan") != 0 || json_object_get(c->req, "phone") ||
	    (cred = json_string_value(json_object_get(c->req,
	    "credential"))) == NULL)
		return;
	k->scan_cred = strdup(cred);
}

static void
kiosk_phone_line(struct kiosk *k, const char *digits)
{
	json_error_t err;
	struct cmd c;

	k->phone_ask = 0;
	memset(&c, 0, sizeof(c));
	c.req = json_pack_ex(&err, 0, "{s:s, s:s, s:s}", "op", "scan",
	    "credential", k->scan_cred, "phone", digits);
	free(k->scan_cred);
	k->scan_cred = NULL;
	if (c.req == NULL) {
		log_warn("scan: %s", err.text);
		return;
	}
	kiosk_request(k, &c);
	cmd_free(&c);
}

/* An interactive command line. */
static void
kiosk_command(struct kiosk *k, char *line)
{
	char copy[LINE_MAX_BYTES + 1], *argv[ARGS_MAX];
	const char *rest;
	struct cmd c;
	int argc;

	rest = line + strspn(line, " \t");
	if (*rest == '\0' || *rest == '#')
		return;
	memcpy(copy, line, strlen(line) + 1);
	argc = split_words(copy, argv, ARGS_MAX);
	rest += strcspn(rest, " \t");
	rest += strspn(rest, " \t");

	switch (cmd_parse(argc, argv, rest, &c)) {
	case CMD_SEND:
		kiosk_scan_note(k, &c);
		kiosk_request(k, &c);
		break;
	case CMD_PIN:
		kiosk_pin_ask(k, c.staff);
		break;
	case CMD_HELP:
		out_begin(k);
		fputs(commands_text, stdout);
		out_flush(k);
		break;
	case CMD_QUIT:
		k->input_over = 1;
		break;
	case CMD_NONE:
	case CMD_ERROR:
		break;
	}
	cmd_free(&c);
}

/*
 * Handles the input lines already read, while they may be handled: a PIN
 * when one is awaited; in interactive mode a command once the last reply
 * is in.
 */
static void
kiosk_user_lines(struct kiosk *k)
{
	char line[LINE_MAX_BYTES + 1];
	int n;

	while (!k->done) {
		if (k->login_staff == NULL && (!k->phone_ask ||
		    k->pending > 0) && (!k->interactive ||
		    k->pending > 0 || k->input_over))
			return;
		if ((n = lbuf_take(&k->user_in, line)) == -1)
			break;
		k->prompt_shown = 0;
		if (n == -2) {
			if (k->login_staff != NULL)
				kiosk_pin_none(k, "PIN line too long");
			else
				log_warn("input line longer than %d bytes "
				    "ignored", LINE_MAX_BYTES);
			continue;
		}
		if (n > 0 && line[n - 1] == '\r')
			line[--n] = '\0';
		if (strlen(line) != (size_t)n) {
			if (k->login_staff != NULL)
				kiosk_pin_none(k, "PIN line holds a NUL byte");
			else
				log_warn("input line with a NUL byte ignored");
			continue;
		}
		if (k->login_staff != NULL)
			kiosk_pin_line(k, line);
		else if (k->phone_ask)
			kiosk_phone_line(k, line);
		else
			kiosk_command(k, line);
	}
	if (k->done || !k->user_in.eof || k->user_in.len > 0)
		return;
	if (k->login_staff != NULL)
		kiosk_pin_none(k, "no PIN (end of input)");
	if (k->interactive)
		k->input_over = 1;
}

static void
kiosk_user_read(struct kiosk *k)
{
	struct lbuf *b = &k->user_in;
	ssize_t n;

	n = read(STDIN_FILENO, b->data + b->len, sizeof(b->data) - b->len);
	if (n == -1) {
		if (errno == EINTR || errno == EAGAIN)
			return;
		log_warn("stdin: %s", strerror(errno));
		b->eof = 1;
		return;
	}
	if (n == 0)
		b->eof = 1;
	b->len += (size_t)n;
}

static int
notice_known(const char *kind)
{
	size_t i;

	for (i = 0; i < sizeof(notice_kinds) / sizeof(notice_kinds[0]); i++)
		if (strcmp(kind, notice_kinds[i]) == 0)
			return 1;
	return 0;
}

static void
kiosk_notice(struct kiosk *k, json_t *o, const char *line, size_t len)
{
	const char *kind, *show;

	kind = json_string_value(json_object_get(o, "notice"));
	show = json_string_value(json_object_get(o, "show"));
	if (kind == NULL) {
		bad_line(k, "notice that is not a string", line, len);
		return;
	}
	if (k->json) {
		out_raw(k, line, len);
		return;
	}
	if (!notice_known(kind))
		return;
	if (show == NULL) {
		bad_line(k, "notice without show text", line, len);
		return;
	}
	out_begin(k);
	fputs("* ", stdout);
	put_clean(show, strlen(show), stdout);
	putc('\n', stdout);
	out_flush(k);
}

static void
kiosk_reply(struct kiosk *k, json_t *o, const char *line, size_t len,
    const char *jerr)
{
	json_t *ok, *wait;
	const char *show, *error;

	ok = o != NULL ? json_object_get(o, "ok") : NULL;
	if (o == NULL) {
		char why[200];

		snprintf(why, sizeof(why), "reply that is not a JSON object "
		    "(%s)", jerr);
		bad_line(k, why, line, len);
	} else if (!json_is_boolean(ok)) {
		bad_line(k, "reply without ok", line, len);
	} else if (k->json) {
		out_raw(k, line, len);
	} else if ((show = json_string_value(json_object_get(o, "show"))) ==
	    NULL) {
		bad_line(k, "reply without show text", line, len);
	} else {
		out_begin(k);
		if (!json_is_true(ok)) {
			error = json_string_value(json_object_get(o, "error"));
			fputs("error (", stdout);
			if (error != NULL)
				put_clean(error, strlen(error), stdout);
			else
				fputs("?", stdout);
			fputs("): ", stdout);
		}
		put_clean(show, strlen(show), stdout);
		wait = json_object_get(o, "wait_s");
		if (json_is_integer(wait) && json_integer_value(wait) > 0)
			printf(" [wait %" JSON_INTEGER_FORMAT " s]",
			    json_integer_value(wait));
		else if (json_is_real(wait) && json_real_value(wait) > 0)
			printf(" [wait %g s]", json_real_value(wait));
		putc('\n', stdout);
		out_flush(k);
	}

	if (k->interactive && k->scan_cred != NULL) {
		error = json_string_value(json_object_get(o, "error"));
		if (o != NULL && !json_is_true(ok) && error != NULL &&
		    strcmp(error, "phone_needed") == 0) {
			k->phone_ask = 1;
			if (k->in_tty) {
				fputs("Phone (last 4 digits): ", stderr);
				fflush(stderr);
			}
		} else {
			free(k->scan_cred);
			k->scan_cred = NULL;
		}
	}
	if (k->interactive || k->replied)
		return;
	k->replied = 1;
	if (k->rc == RC_OK)
		k->rc = json_is_true(ok) ? RC_OK : RC_REFUSED;
	if (k->linger_ms == 0)
		k->done = 1;
	else
		k->deadline = now_ms() + k->linger_ms;
}

/*
 * A line from the server. Lines with "notice" and no "ok" are notices;
 * every other line, even one that is no JSON at all, stands for the reply
 * to the oldest request, so that a broken reply cannot leave us waiting
 * forever.
 */
static void
kiosk_server_line(struct kiosk *k, const char *line, size_t len)
{
	json_error_t err;
	json_t *o;

	o = json_loadb(line, len, 0, &err);
	if (o != NULL && !json_is_object(o)) {
		json_decref(o);
		o = NULL;
		snprintf(err.text, sizeof(err.text), "not an object");
	}
	if (o != NULL && json_object_get(o, "notice") != NULL &&
	    json_object_get(o, "ok") == NULL)
		kiosk_notice(k, o, line, len);
	else if (k->pending == 0)
		bad_line(k, "reply to no request", line, len);
	else {
		k->pending--;
		kiosk_reply(k, o, line, len, err.text);
	}
	json_decref(o);
}

static void
kiosk_sock_read(struct kiosk *k)
{
	char line[LINE_MAX_BYTES + 1];
	struct lbuf *b = &k->sock_in;
	ssize_t n;
	int len;

	n = recv(k->fd, b->data + b->len, sizeof(b->data) - b->len, 0);
	if (n == -1) {
		if (errno == EINTR || errno == EAGAIN)
			return;
		kiosk_lost(k, strerror(errno));
		return;
	}
	if (n == 0)
		b->eof = 1;
	b->len += (size_t)n;
	while (!k->done && (len = lbuf_take(b, line)) != -1) {
		if (len == -2) {
			kiosk_lost(k, "lockerd sent a line longer than 4096 "
			    "bytes");
			return;
		}
		kiosk_server_line(k, line, (size_t)len);
	}
	if (!k->done && b->eof)
		kiosk_lost(k, "connection closed by lockerd");
}

static void
kiosk_signal(struct kiosk *k)
{
	struct signalfd_siginfo si;

	while (read(k->sig_fd, &si, sizeof(si)) == sizeof(si)) {
		k->signo = (int)si.ssi_signo;
		k->done = 1;
	}
}

static void
kiosk_prompt(struct kiosk *k)
{
	if (!k->prompt || k->prompt_shown || k->pending > 0 ||
	    k->login_staff != NULL || k->phone_ask || k->input_over)
		return;
	fputs("kiosk> ", stdout);
	out_flush(k);
	k->prompt_shown = 1;
}

static void
kiosk_loop(struct kiosk *k)
{
	struct pollfd pfd[PFD_MAX];
	int64_t now;
	int timeout, user;

	for (;;) {
		kiosk_user_lines(k);
		if (k->done)
			return;
		if (k->interactive && k->input_over && k->pending == 0 &&
		    k->deadline == -1) {
			if (k->linger_ms == 0)
				return;
			k->deadline = now_ms() + k->linger_ms;
		}
		timeout = -1;
		if (k->deadline != -1) {
			now = now_ms();
			if (now >= k->deadline)
				return;
			timeout = k->deadline - now > INT_MAX ? INT_MAX :
			    (int)(k->deadline - now);
		}
		if (k->interactive)
			kiosk_prompt(k);
		user = !k->user_in.eof && (k->login_staff != NULL ||
		    (k->interactive && k->pending == 0 && !k->input_over));

		pfd[PFD_SIGNAL].fd = k->sig_fd;
		pfd[PFD_SOCK].fd = k->fd;
		pfd[PFD_USER].fd = user ? STDIN_FILENO : -1;
		pfd[PFD_SIGNAL].events = pfd[PFD_SOCK].events =
		    pfd[PFD_USER].events = POLLIN;
		if (poll(pfd, PFD_MAX, timeout) == -1) {
			if (errno == EINTR)
				continue;
			log_warn("poll: %s", strerror(errno));
			k->rc = RC_REFUSED;
			return;
		}
		if (pfd[PFD_SIGNAL].revents != 0)
			kiosk_signal(k);
		if (!k->done && pfd[PFD_SOCK].revents != 0)
			kiosk_sock_read(k);
		/* POLLNVAL: no stdin at all, which is the end of input. */
		if (!k->done && pfd[PFD_USER].revents & POLLNVAL)
			k->user_in.eof = 1;
		else if (!k->done && pfd[PFD_USER].revents != 0)
			kiosk_user_read(k);
	}
}

static int
kiosk_connect(struct kiosk *k)
{
	struct sockaddr_un sun;
	size_t len = strlen(k->path);

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (len >= sizeof(sun.sun_path)) {
		log_warn("cannot connect to %s: path too long", k->path);
		return -1;
	}
	memcpy(sun.sun_path, k->path, len + 1);
	if ((k->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1) {
		log_warn("cannot connect to %s: socket: %s", k->path,
		    strerror(errno));
		return -1;
	}
	if (connect(k->fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		log_warn("cannot connect to %s: %s", k->path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Signals arrive on a descriptor, so that the terminal is always restored. */
static int
signals_open(struct kiosk *k)
{
	sigset_t set;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1 ||
	    (k->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) ==
	    -1) {
		log_warn("signalfd: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Dies of the signal that stopped us, as the shell expects. */
static int
signal_die(int signo)
{
	sigset_t set;

	signal(signo, SIG_DFL);
	sigemptyset(&set);
	sigaddset(&set, signo);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	raise(signo);
	return 128 + signo;
}

static int
parse_wait(const char *s, int64_t *ms)
{
	char *end;
	double v;

	if ((*s < '0' || *s > '9') && *s != '.')
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 ||
	    v > WAIT_MAX_S)
		return -1;
	*ms = (int64_t)(v * 1000 + 0.5);
	return 0;
}

static int
args_parse(struct kiosk *k, int argc, char **argv)
{
	enum { OPT_VERSION = 256 };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "wait", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	int o;

	/* "+": options end at the command, whose arguments may start with -. */
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:s:jw:h", opts, NULL)) != -1) {
		switch (o) {
		case 's':
			if (optarg[0] == '\0') {
				log_warn("-s: empty socket path");
				return -1;
			}
			k->path = optarg;
			break;
		case 'j':
			k->json = 1;
			break;
		case 'w':
			if (parse_wait(optarg, &k->linger_ms) == -1) {
				log_warn("-w '%s': seconds must be 0..%.0f",
				    optarg, WAIT_MAX_S);
				return -1;
			}
			break;
		case 'h':
			fputs(usage_head, stdout);
			fputs(commands_text, stdout);
			fputs(usage_tail, stdout);
			exit(RC_OK);
		case OPT_VERSION:
			printf("kiosk %s\n", LOCKERD_VERSION);
			exit(RC_OK);
		case ':':
			log_warn("option %s needs an argument",
			    argv[optind - 1]);
			usage_hint();
			return -1;
		default:
			if (optopt != 0)
				log_warn("unknown option -%c", optopt);
			else
				log_warn("unknown option %s", argv[optind - 1]);
			usage_hint();
			return -1;
		}
	}
	if (k->path == NULL) {
		k->path = getenv("LOCKERD_KIOSK");
		if (k->path == NULL || k->path[0] == '\0')
			k->path = KIOSK_SOCKET;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct kiosk k;
	struct cmd c;
	enum cmd_kind kind = CMD_NONE;
	int fd;

	/* A closed stdin must not become the socket's descriptor. */
	for (fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) == -1 && errno == EBADF &&
		    open("/dev/null", O_RDWR) != fd)
			return RC_REFUSED;

	memset(&k, 0, sizeof(k));
	memset(&c, 0, sizeof(c));
	k.fd = k.sig_fd = -1;
	k.deadline = -1;
	if (args_parse(&k, argc, argv) == -1)
		return RC_USAGE;
	k.interactive = optind == argc;
	k.in_tty = isatty(STDIN_FILENO);
	k.prompt = k.interactive && k.in_tty && isatty(STDOUT_FILENO);

	/* Bad input is reported before anything touches the socket. */
	if (!k.interactive) {
		kind = cmd_parse(argc - optind, argv + optind, NULL, &c);
		switch (kind) {
		case CMD_ERROR:
			return RC_USAGE;
		case CMD_HELP:
			fputs(commands_text, stdout);
			return fflush(stdout) == EOF ? RC_REFUSED : RC_OK;
		case CMD_QUIT:
			log_warn("quit: only in interactive mode");
			return RC_USAGE;
		case CMD_NONE:
		case CMD_SEND:
		case CMD_PIN:
			break;
		}
	}

	if (signals_open(&k) == -1) {
		k.rc = RC_REFUSED;
		goto done;
	}
	if (kiosk_connect(&k) == -1) {
		k.rc = RC_CONN;
		goto done;
	}
	if (k.prompt)
		printf("kiosk %s on %s; help lists the commands.\n",
		    LOCKERD_VERSION, k.path);
	if (kind == CMD_SEND)
		kiosk_request(&k, &c);
	else if (kind == CMD_PIN)
		kiosk_pin_ask(&k, c.staff);
	if (!k.done)
		kiosk_loop(&k);
done:
	term_echo_restore(&k);
	/* Leave the cursor on a fresh line after an unanswered prompt. */
	if (k.prompt_shown)
		putc('\n', stdout);
	else if (k.in_tty && k.login_staff != NULL)
		fputc('\n', stderr);
	cmd_free(&c);
	free(k.login_staff);
	free(k.scan_cred);
	if (k.fd != -1)
		close(k.fd);
	if (k.sig_fd != -1)
		close(k.sig_fd);
	if (fflush(stdout) == EOF && k.rc == RC_OK)
		k.rc = RC_REFUSED;
	if (k.signo != 0)
		return signal_die(k.signo);
	return k.rc;
}
