/*
 * lockerd: the locker controller. Command line, signals, and the poll()
 * loop: fixed slots rebuilt each pass, a timeout from the nearest deadline
 * on the monotonic clock, and one dispatch function per ready slot.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <sodium.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "ledger.h"
#include "lockerd.h"
#include "platform.h"
#include "log.h"
#include "notify.h"
#include "util.h"

#define OVERRIDES_MAX 32

enum {
	PFD_SIGNAL, PFD_MB, PFD_LINK, PFD_CTL,
	PFD_MAX = PFD_CTL + 2 * (1 + JSONL_CLIENTS_MAX)
};

static void
usage(FILE *f)
{
	fprintf(f,
"usage: lockerd [-c FILE] [--set SECTION.KEY=VALUE]...\n"
"       lockerd --check-config FILE\n"
"       lockerd --print-default-config\n"
"       lockerd [-c FILE] --add-staff ID --name NAME [--role staff|admin]\n"
"       lockerd [-c FILE] --verify-ledger\n"
"       lockerd [-c FILE] --public-key\n"
"       lockerd [-c FILE] --probe BOARD [--pulse CHANNEL]\n"
"       lockerd --probe UNIT --bus SPEC [--profile NAME] [--pulse CHANNEL]\n"
"\n"
"The controller of one locker bank: drives the lock boards over Modbus and\n"
"keeps the cells' state and the event ledger in SQLite.\n"
"\n"
"  -c, --config FILE        configuration file (INI); without it lockerd runs\n"
"                           on the built-in default, a demo locker of 24 cells\n"
"                           served by locksim on 127.0.0.1:1502\n"
"      --set S.K=V          override one key, e.g. --set 'bus sim.port=1502'\n"
"      --check-config FILE  check FILE and exit: 0 if good, else FILE:LINE:\n"
"                           reason on stderr and exit 1; nothing is started\n"
"      --print-default-config\n"
"                           print the built-in default configuration\n"
"      --add-staff ID       add (or replace) a staff account and exit; the PIN\n"
"                           (6-12 digits) is read from the terminal twice, or\n"
"                           once from standard input; --name and --role say\n"
"                           who (role staff by default)\n"
"      --verify-ledger      check the whole event chain (sequence, hash links,\n"
"                           signatures) and its end against the ledger's mark\n"
"                           (DATABASE-mark) and exit: 0 if it holds, else the\n"
"                           first broken link on stderr and exit 1\n"
"      --public-key         print the device's Ed25519 public key (hex), the\n"
"                           key a platform verifies events and QR codes with\n"
"      --probe BOARD        check one lock board without starting the locker:\n"
"                           read its door and item inputs and print them;\n"
"                           BOARD is a [board NAME] of the configuration, or\n"
"                           with --bus a Modbus unit id (1-247). Exit 0 if it\n"
"                           answered. Stop lockerd first: one master per bus\n"
"      --pulse CHANNEL      with --probe: then unlock that channel (1-based)\n"
"                           as the profile says and print the inputs again\n"
"      --bus SPEC           with --probe: the bus, instead of the config file:\n"
"                           tcp:HOST:PORT or rtu:DEVICE[:BAUD[:PARITY[:STOP]]]\n"
"                           (9600, N, 1 unless given; RS485 mode auto)\n"
"      --profile NAME       with --bus: the board profile (generic-16)\n"
"  -h, --help               this text\n"
"  -V, --version            the version\n"
"\n"
"Signals: SIGTERM and SIGINT stop cleanly (relays off, database closed);\n"
"SIGHUP reloads the log level and timings from the file.\n");
}

static int
setup_signals(sigset_t *set)
{
	int fd;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	/* Blocked before any thread starts, so only signalfd sees them. */
	if (pthread_sigmask(SIG_BLOCK, set, NULL) != 0)
		return -1;
	fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
	return fd;
}

/* Returns 1 when the loop should stop. */
static int
signal_dispatch(struct lockerd *d, int fd)
{
	struct signalfd_siginfo si;

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGHUP)
			lockerd_reload(d);
		else {
			log_info("signal %d: stopping", (int)si.ssi_signo);
			return 1;
		}
	}
	return 0;
}

/*
 * A loop turn that keeps the keypad and the boards waiting is logged with
 * where the time went, so that a stall on a slow disk or a starved CPU
 * can be told from a bug. Once per minute at most.
 */
#define TURN_SLOW_MS 500
enum { TURN_BOARDS, TURN_PLATFORM, TURN_CONTROL, TURN_KEYPAD, TURN_TIMERS,
	TURN_PARTS };
static const char *const turn_names[TURN_PARTS] = {
	"boards", "platform", "control socket", "keypad", "timers"
};

struct turn {
	int64_t start, at, ms[TURN_PARTS];
	int64_t logged;
	long slow;
};

static void
turn_start(struct turn *t)
{
	t->start = t->at = util_mono_ms();
}

static void
turn_mark(struct turn *t, int part)
{
	int64_t now = util_mono_ms();

	t->ms[part] = now - t->at;
	t->at = now;
}

static void
turn_end(struct turn *t)
{
	int64_t took = t->at - t->start;
	char parts[160];
	size_t off = 0;
	int i;

	if (took < TURN_SLOW_MS)
		return;
	t->slow++;
	if (t->logged != 0 && t->at - t->logged < 60000)
		return;
	t->logged = t->at;
	for (i = 0; i < TURN_PARTS && off < sizeof(parts); i++)
		off += (size_t)snprintf(parts + off, sizeof(parts) - off,
		    "%s%s %lld ms", i ? ", " : "", turn_names[i],
		    (long long)t->ms[i]);
	log_warn("a loop turn took %lld ms (%s); %ld such turns so far",
	    (long long)took, parts, t->slow);
}

static int
run(struct lockerd *d, int sigfd)
{
	struct pollfd pfd[PFD_MAX];
	struct turn turn = { 0 };
	int64_t next, now, t, wall, tctl, tkiosk;
	int n, nctl, nkiosk, timeout;

	for (;;) {
		memset(pfd, 0, sizeof(pfd));
		pfd[PFD_SIGNAL].fd = sigfd;
		pfd[PFD_SIGNAL].events = POLLIN;
		pfd[PFD_MB].fd = mb_fd(d->mb);
		pfd[PFD_MB].events = POLLIN;
		pfd[PFD_LINK].fd = d->link ? platform_fd(d->link) : -1;
		pfd[PFD_LINK].events = POLLIN;
		/* Slow and idle clients go before their slots are polled. */
		tctl = jsonl_tick(d->ctl, util_mono_ms());
		tkiosk = jsonl_tick(d->kiosk, util_mono_ms());
		nctl = d->ctl ? jsonl_pollfds(d->ctl, &pfd[PFD_CTL],
		    PFD_MAX - PFD_CTL) : 0;
		nkiosk = d->kiosk == NULL ? 0 : jsonl_pollfds(d->kiosk, &pfd[PFD_CTL + nctl],
		    PFD_MAX - PFD_CTL - nctl);
		next = bank_next_deadline(&d->bank);
		now = util_mono_ms();
		if ((t = kiosk_tick(d)) < next)
			next = t;
		if (tctl < next)
			next = tctl;
		if (tkiosk < next)
			next = tkiosk;
		/* Events waiting for the database to take them again. */
		if (d->pend.n > 0 && d->pend_retry < next)
			next = d->pend_retry;
		/* Reservation deadlines are wall-clock times. */
		wall = lockerd_now();
		if ((t = resv_next_deadline(&d->resv)) != INT64_MAX &&
		    now + (t - wall) < next)
			next = now + (t > wall ? t - wall : 0);
		if ((t = lockerd_watchdog(d, now)) < next)
			next = t;
		/* The ledger's mark waits for the disk (mark.c). */
		if ((t = mark_next(d)) < next)
			next = t;
		timeout = next == INT64_MAX ? -1 : next <= now ? 0 :
		    next - now > 60000 ? 60000 : (int)(next - now);
		n = poll(pfd, (nfds_t)(PFD_CTL + nctl + nkiosk), timeout);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			log_error("poll: %s", strerror(errno));
			return -1;
		}
		if ((pfd[PFD_SIGNAL].revents & POLLIN) &&
		    signal_dispatch(d, sigfd))
			return 0;
		turn_start(&turn);
		if (pfd[PFD_MB].revents & POLLIN)
			lockerd_mb_dispatch(d);
		turn_mark(&turn, TURN_BOARDS);
		if (pfd[PFD_LINK].revents & POLLIN)
			link_dispatch(d);
		turn_mark(&turn, TURN_PLATFORM);
		if (nctl)
			jsonl_dispatch(d->ctl, &pfd[PFD_CTL], nctl);
		turn_mark(&turn, TURN_CONTROL);
		if (nkiosk)
			jsonl_dispatch(d->kiosk, &pfd[PFD_CTL + nctl], nkiosk);
		turn_mark(&turn, TURN_KEYPAD);
		lockerd_tick(d);
		turn_mark(&turn, TURN_TIMERS);
		turn_end(&turn);
	}
}

static int
check_config(const char *path)
{
	struct config *c = malloc(sizeof(*c));
	char err[512];
	int rc;

	if (c == NULL) {
		fprintf(stderr, "lockerd: out of memory\n");
		return 1;
	}
	rc = config_load(c, path, NULL, err, sizeof(err));
	if (rc == -1)
		fprintf(stderr, "%s\n", err);
	else
		printf("%s: ok (locker %s, %d buses, %d boards, %d cells)\n",
		    path, c->locker_id, c->nbuses, c->nboards, c->ncells);
	free(c);
	return rc == -1 ? 1 : 0;
}

/* A PIN from the terminal (no echo) or one line of standard input. */
static int
read_pin(const char *prompt, char *buf, size_t len)
{
	struct termios old, raw;
	int tty = isatty(STDIN_FILENO), ok;
	size_t n;

	if (tty) {
		fputs(prompt, stderr);
		if (tcgetattr(STDIN_FILENO, &old) == -1)
			return -1;
		raw = old;
		raw.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
	}
	ok = fgets(buf, (int)len, stdin) != NULL;
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	if (!ok)
		return -1;
	n = strcspn(buf, "\r\n");
	buf[n] = '\0';
	return 0;
}

/* The store and the keys without starting the locker. */
static int
open_state(struct lockerd *d)
{
	char err[512];
	int empty = 0;

	/* A key is made only for an empty database (lockerd.c). */
	if ((d->store = store_open(d->cfg.database, err, sizeof(err))) == NULL ||
	    (empty = store_is_empty(d->store)) == -1 ||
	    (d->keys = codes_keys_open(d->cfg.key_file, empty, err,
	    sizeof(err))) == NULL) {
		if (empty == -1)
			snprintf(err, sizeof(err), "%s: cannot be read",
			    d->cfg.database);
		else if (d->store != NULL && access(d->cfg.key_file, F_OK) ==
		    -1 && errno == ENOENT)
			snprintf(err + strlen(err), sizeof(err) - strlen(err),
			    ", but the database %s holds records signed with "
			    "it: restore the key file from its backup",
			    d->cfg.database);
		fprintf(stderr, "lockerd: %s\n", err);
		store_close(d->store);
		d->store = NULL;
		return -1;
	}
	return 0;
}

static void
close_state(struct lockerd *d)
{
	store_close(d->store);
	codes_keys_free(d->keys);
	d->store = NULL;
	d->keys = NULL;
}

static int
add_staff(struct lockerd *d, const char *id, const char *name,
    const char *role)
{
	char pin[64], again[64];
	struct staff st;
	int rc = 1;

	memset(&st, 0, sizeof(st));
	if (!staff_valid_id(id) || name == NULL || *name == '\0' ||
	    util_strlcpy(st.name, name, sizeof(st.name)) == -1 ||
	    !staff_valid_role(role)) {
		fprintf(stderr, "lockerd: --add-staff needs an id (1-31 of "
		    "A-Z a-z 0-9 _ . -), --name (1-63 characters) and "
		    "--role staff or admin\n");
		return 2;
	}
	util_strlcpy(st.id, id, sizeof(st.id));
	util_strlcpy(st.role, role, sizeof(st.role));
	if (read_pin("PIN (6-12 digits): ", pin, sizeof(pin)) == -1 ||
	    (isatty(STDIN_FILENO) && (read_pin("PIN again: ", again,
	    sizeof(again)) == -1 || strcmp(pin, again) != 0))) {
		fprintf(stderr, "lockerd: no PIN, or the two did not match\n");
		goto out;
	}
	if (staff_hash_pin(pin, d->cfg.kiosk.pin_hash_kib,
	    d->cfg.kiosk.pin_hash_passes, st.pin_hash) == -1) {
		fprintf(stderr, "lockerd: the PIN must be 6-12 digits\n");
		goto out;
	}
	st.created = util_wall_ms();
	if (open_state(d) == -1)
		goto out;
	if (staff_put(d->store, d->keys, &st) == 0) {
		printf("staff %s (%s, %s) added\n", st.id, st.name, st.role);
		rc = 0;
	}
	close_state(d);
out:
	sodium_memzero(pin, sizeof(pin));
	sodium_memzero(again, sizeof(again));
	return rc;
}

struct verify_arg {
	struct ledger_verify v;
	int failed;
};

static int
verify_one(int64_t seq, const char *body, void *arg)
{
	struct verify_arg *va = arg;

	(void)seq;
	if (ledger_verify_next(&va->v, body, strlen(body)) == -1) {
		va->failed = 1;
		return -1;
	}
	return 0;
}

static int
verify_ledger(struct lockerd *d)
{
	static const uint8_t zero[LEDGER_HASH_LEN];
	struct verify_arg va;
	int64_t after = 0;
	char why[320];
	int rc;

	if (open_state(d) == -1)
		return 1;
	memset(&va, 0, sizeof(va));
	ledger_verify_init(&va.v, d->keys->sign_pk, 1, zero);
	do {
		after = va.v.next_seq - 1;
		rc = store_events_after(d->store, after, 1000, verify_one, &va);
	} while (rc == 0 && !va.failed && va.v.next_seq - 1 > after);
	/* A chain that verifies may still be cut short, or be an old copy:
	 * the mark beside the database knows the head (mark.c). */
	if (rc == 0 && !va.failed && mark_verify(d, va.v.next_seq - 1,
	    va.v.prev, why, sizeof(why)) == -1) {
		close_state(d);
		fprintf(stderr, "ledger broken: %s\n", why);
		return 1;
	}
	close_state(d);
	if (rc == -1)
		return 1;
	if (va.failed) {
		fprintf(stderr, "ledger broken: %s\n", va.v.error);
		return 1;
	}
	printf("ledger ok: %lld events, chain and signatures verify; %s\n",
	    (long long)va.v.count, why);
	return 0;
}

static int
public_key(struct lockerd *d)
{
	char hex[2 * CODES_PK_LEN + 1];

	if (open_state(d) == -1)
		return 1;
	codes_hex(d->keys->sign_pk, CODES_PK_LEN, hex, sizeof(hex));
	close_state(d);
	printf("%s\n", hex);
	return 0;
}

/* A configuration of one bus and one board from --bus and --profile. */
static int
probe_config(struct config *c, const char *spec, const char *unit,
    const char *profile)
{
	char text[1024], buf[CONFIG_PATH_MAX + 64], err[512];
	char *f[5] = { NULL }, *save = NULL, *p;
	const char *parity = "N", *stop = "1", *baud = "9600";
	int n = 0, len;

	if (util_strlcpy(buf, spec, sizeof(buf)) == -1) {
		fprintf(stderr, "lockerd: --bus is too long\n");
		return -1;
	}
	for (p = strtok_r(buf, ":", &save); p != NULL && n < 5;
	    p = strtok_r(NULL, ":", &save))
		f[n++] = p;
	if (n == 3 && strcmp(f[0], "tcp") == 0)
		len = snprintf(text, sizeof(text), "[bus probe]\ntype = tcp\n"
		    "host = %s\nport = %s\n", f[1], f[2]);
	else if (n >= 2 && strcmp(f[0], "rtu") == 0) {
		if (n > 2)
			baud = f[2];
		if (n > 3)
			parity = f[3];
		if (n > 4)
			stop = f[4];
		len = snprintf(text, sizeof(text), "[bus probe]\ntype = rtu\n"
		    "device = %s\nbaud = %s\nparity = %s\nstop_bits = %s\n",
		    f[1], baud, parity, stop);
	} else {
		fprintf(stderr, "lockerd: --bus must be tcp:HOST:PORT or "
		    "rtu:DEVICE[:BAUD[:PARITY[:STOP]]], not '%s'\n", spec);
		return -1;
	}
	if (len < 0 || (size_t)len >= sizeof(text) ||
	    snprintf(text + len, sizeof(text) - (size_t)len,
	    "timeout_ms = 500\n[board probe]\nbus = probe\nunit = %s\n"
	    "profile = %s\n[cells]\n1 = probe:1 S\n", unit, profile) >=
	    (int)(sizeof(text) - (size_t)len)) {
		fprintf(stderr, "lockerd: --bus is too long\n");
		return -1;
	}
	if (config_load_text(c, text, "--probe", err, sizeof(err)) == -1) {
		/* "--probe:LINE: reason": the reason names the value. */
		p = strstr(err, ": ");
		fprintf(stderr, "lockerd: --probe: %s\n", p ? p + 2 : err);
		return -1;
	}
	return 0;
}

static int
probe(struct config *c, const char *board, int pulse)
{
	int i;

	for (i = 0; i < c->nboards; i++)
		if (strcmp(c->boards[i].name, board) == 0)
			break;
	if (i == c->nboards) {
		fprintf(stderr, "lockerd: --probe: no [board %s] in the "
		    "configuration\n", board);
		return 2;
	}
	if (pulse > c->boards[i].profile.channels) {
		fprintf(stderr, "lockerd: --pulse %d: board %s has %d "
		    "channels\n", pulse, board, c->boards[i].profile.channels);
		return 2;
	}
	return mb_probe(c, i, pulse, stdout) == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "set", required_argument, NULL, 's' },
		{ "check-config", required_argument, NULL, 'C' },
		{ "print-default-config", no_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "add-staff", required_argument, NULL, 'A' },
		{ "name", required_argument, NULL, 'N' },
		{ "role", required_argument, NULL, 'R' },
		{ "verify-ledger", no_argument, NULL, 'L' },
		{ "public-key", no_argument, NULL, 'K' },
		{ "probe", required_argument, NULL, 'p' },
		{ "pulse", required_argument, NULL, 'u' },
		{ "bus", required_argument, NULL, 'b' },
		{ "profile", required_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	static struct lockerd d; /* large; and the bank points into it */
	char *overrides[OVERRIDES_MAX + 1] = { NULL };
	const char *config_path = NULL, *staff_id = NULL, *staff_name = NULL;
	const char *staff_role = "staff", *probe_board = NULL, *bus = NULL;
	const char *profile = "generic-16";
	int verify = 0, pubkey = 0, pulse = 0;
	struct rlimit nocore = { 0, 0 };
	int noverrides = 0, ch, sigfd, rc;
	char err[512], *end;
	sigset_t set;

	/* The database holds undelivered codes and the key file secrets:
	 * whatever lockerd creates is its own alone unless it says so. */
	umask(077);
	while ((ch = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			config_path = optarg;
			break;
		case 's':
			if (noverrides == OVERRIDES_MAX) {
				fprintf(stderr, "lockerd: at most %d --set\n",
				    OVERRIDES_MAX);
				return 2;
			}
			overrides[noverrides++] = optarg;
			break;
		case 'C':
			return check_config(optarg);
		case 'P':
			fputs(config_default_text(), stdout);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("lockerd %s\n", LOCKERD_VERSION);
			return 0;
		case 'A':
			staff_id = optarg;
			break;
		case 'N':
			staff_name = optarg;
			break;
		case 'R':
			staff_role = optarg;
			break;
		case 'L':
			verify = 1;
			break;
		case 'K':
			pubkey = 1;
			break;
		case 'p':
			probe_board = optarg;
			break;
		case 'u':
			pulse = (int)strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || pulse < 1 ||
			    pulse > BOARD_CHANNELS_MAX) {
				fprintf(stderr, "lockerd: --pulse must be a "
				    "channel from 1 to %d\n", BOARD_CHANNELS_MAX);
				return 2;
			}
			break;
		case 'b':
			bus = optarg;
			break;
		case 'f':
			profile = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "lockerd: unexpected argument '%s'\n",
		    argv[optind]);
		usage(stderr);
		return 2;
	}
	if ((pulse || bus != NULL) && probe_board == NULL) {
		fprintf(stderr, "lockerd: --pulse and --bus go with --probe\n");
		return 2;
	}
	if (probe_board != NULL && bus != NULL) {
		log_init("lockerd", LOG_LEVEL_INFO, 0);
		if (probe_config(&d.cfg, bus, probe_board, profile) == -1)
			return 2;
		return probe(&d.cfg, "probe", pulse);
	}
	if (config_load(&d.cfg, config_path, overrides, err, sizeof(err)) ==
	    -1) {
		fprintf(stderr, "lockerd: %s\n", err);
		return 1;
	}
	d.config_path = config_path;
	d.overrides = overrides;
	log_init("lockerd", d.cfg.log_level, d.cfg.log_syslog);
	if (codes_init() == -1)
		fatal("libsodium could not start");
	if (probe_board != NULL) {
		/* A report to read, not a daemon's log. */
		log_init("lockerd", d.cfg.log_level, 0);
		return probe(&d.cfg, probe_board, pulse);
	}
	if (staff_id != NULL || verify || pubkey) {
		if (lockerd_state_dir(&d.cfg) == -1)
			return 1;
		return staff_id != NULL ? add_staff(&d, staff_id, staff_name,
		    staff_role) : verify ? verify_ledger(&d) : public_key(&d);
	}
	/* Keys and codes will live in this process's memory: no core dumps. */
	if (setrlimit(RLIMIT_CORE, &nocore) == -1 ||
	    prctl(PR_SET_DUMPABLE, 0) == -1)
		log_warn("could not turn core dumps off: %s", strerror(errno));
	if ((sigfd = setup_signals(&set)) == -1)
		fatal("signals: %s", strerror(errno));
	log_info("lockerd %s starting, configuration %s", LOCKERD_VERSION,
	    config_path ? config_path : "(built-in default)");
	notify_status("starting: database, keys, first read of the boards");
	rc = -1;
	if (lockerd_start(&d) == 0 && link_start(&d) == 0) {
		/* Pings from the loop at half the interval systemd gave. */
		d.wd_ms = notify_watchdog_ms() / 2;
		if (d.wd_ms > 0)
			log_info("watchdog: pinging every %lld ms while healthy",
			    (long long)d.wd_ms);
		notify_ready("running; locker %s, %d cells on %d boards",
		    d.cfg.locker_id, d.cfg.ncells, d.cfg.nboards);
		rc = run(&d, sigfd);
	}
	notify_stopping();
	link_stop(&d);
	lockerd_stop(&d);
	close(sigfd);
	log_info("stopped");
	return rc == 0 ? 0 : 1;
}
