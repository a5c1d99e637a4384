/*
 * A JSON-lines server on a UNIX stream socket, driven from the main poll
 * loop. Input is bounded per line and output per client; a client that
 * sends an over-long line gets an error and the rest of the line is
 * skipped, and one that does not read its replies is dropped. Slots are
 * not held for free: slow and idle clients are dropped after a timeout,
 * a newcomer takes the idlest one's slot, and one slot stays kept for
 * the keypad's own client, known by its peer credentials.
 */
#include "jsonl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define JSONL_OUT_MAX (512 * 1024)
/* Connections taken from the backlog per loop turn at most. */
#define JSONL_ACCEPT_MAX 64
/* Drops and take-overs are summed up in the log at most this often. */
#define JSONL_REPORT_MS 60000

struct client {
	int fd;
	char in[JSONL_LINE_MAX];
	size_t inlen;
	int skipping;         /* discarding the rest of an over-long line */
	char *out;
	size_t outlen, outcap;
	int trusted;          /* the keypad's own (peer uid) */
	int64_t last;         /* connected, or its last whole request (ms) */
	int64_t partial_at;   /* an unfinished line began; 0 none */
	int64_t out_at;       /* replies waiting to be read since; 0 none */
};

struct jsonl {
	int fd;
	char path[108];
	jsonl_handler fn;
	void *arg;
	int screen;           /* own errors also carry "show" (the keypad) */
	int64_t slow_ms, idle_ms;
	long trust_uid;       /* -1: none */
	long slow, idle, taken, refused;  /* since the last report */
	int64_t reported;
	struct client clients[JSONL_CLIENTS_MAX];
};

json_t *
jsonl_error(const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Messages quote the client's bytes (a parser's complaint, a field
	 * cut at 40 bytes): found by fuzz_ctl_json. */
	util_printable(msg);
	return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

/*
 * What is at path before bind: a stale socket from a crash goes (bind
 * would fail); one that still answers is someone else's listener (another
 * lockerd, or a process that wants the keypad's traffic): said loudly,
 * then replaced. Anything else is left alone and start-up stops.
 */
static int
make_room(const char *path, const struct sockaddr_un *sun)
{
	struct stat st;
	int fd;

	if (lstat(path, &st) == -1) {
		if (errno == ENOENT)
			return 0;
		log_error("socket %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		log_error("socket %s: something that is not a socket is in its "
		    "place; not replacing it (move it away)", path);
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd != -1 && connect(fd, (const struct sockaddr *)sun,
	    sizeof(*sun)) == 0)
		log_warn("socket %s: another process listens on it (uid %ld); "
		    "replacing it", path, (long)st.st_uid);
	if (fd != -1)
		close(fd);
	if (unlink(path) == -1) {
		log_error("socket %s: removing the old one: %s", path,
		    strerror(errno));
		return -1;
	}
	return 0;
}

struct jsonl *
jsonl_open(const char *path, int mode, jsonl_handler fn, void *arg)
{
	struct sockaddr_un sun;
	struct jsonl *j;
	mode_t old;
	int i, rc;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_error("socket path %s is too long", path);
		return NULL;
	}
	if ((j = calloc(1, sizeof(*j))) == NULL) {
		log_error("socket %s: out of memory", path);
		return NULL;
	}
	for (i = 0; i < JSONL_CLIENTS_MAX; i++)
		j->clients[i].fd = -1;
	j->fn = fn;
	j->arg = arg;
	j->slow_ms = 30000;
	j->idle_ms = 600000;
	j->trust_uid = -1;
	memcpy(j->path, path, strlen(path) + 1);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path) + 1);
	j->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (j->fd == -1) {
		log_error("socket %s: %s", path, strerror(errno));
		free(j);
		return NULL;
	}
	if (make_room(path, &sun) == -1) {
		close(j->fd);
		free(j);
		return NULL;
	}
	/* Born with its mode: no moment at a wider one (the umask is ours
	 * alone, main.c sets it once; nothing else runs on this thread). */
	old = umask((mode_t)(~mode & 0777));
	rc = bind(j->fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (rc == -1 || chmod(path, (mode_t)mode) == -1 ||
	    listen(j->fd, 16) == -1) {
		log_error("socket %s: %s", path, strerror(errno));
		close(j->fd);
		free(j);
		return NULL;
	}
	return j;
}

void
jsonl_limits(struct jsonl *j, int timeout_s, int idle_s)
{
	j->slow_ms = (int64_t)(timeout_s > 0 ? timeout_s : 1) * 1000;
	j->idle_ms = (int64_t)(idle_s > 0 ? idle_s : 0) * 1000;
}

void
jsonl_trust_uid(struct jsonl *j, long uid)
{
	j->trust_uid = uid;
}

static void
client_close(struct client *c)
{
	if (c->fd != -1)
		close(c->fd);
	free(c->out);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

void
jsonl_close(struct jsonl *j)
{
	int i;

	if (j == NULL)
		return;
	for (i = 0; i < JSONL_CLIENTS_MAX; i++)
		client_close(&j->clients[i]);
	close(j->fd);
	unlink(j->path);
	free(j);
}

int
jsonl_pollfds(struct jsonl *j, struct pollfd *pfd, int max)
{
	int i, n = 0;

	if (max < 1 + JSONL_CLIENTS_MAX)
		return 0;
	pfd[n].fd = j->fd;
	pfd[n].events = POLLIN;
	pfd[n++].revents = 0;
	for (i = 0; i < JSONL_CLIENTS_MAX; i++) {
		struct client *c = &j->clients[i];
		pfd[n].fd = c->fd; /* -1 is ignored by poll() */
		pfd[n].events = (short)(POLLIN | (c->outlen ? POLLOUT : 0));
		pfd[n++].revents = 0;
	}
	return n;
}

static int
client_queue(struct client *c, const char *s, size_t len)
{
	size_t cap;
	char *p;

	if (c->outlen + len > JSONL_OUT_MAX)
		return -1;
	if (c->outlen + len > c->outcap) {
		cap = c->outcap ? c->outcap : 4096;
		while (cap < c->outlen + len)
			cap *= 2;
		if ((p = realloc(c->out, cap)) == NULL)
			return -1;
		c->out = p;
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, s, len);
	if (c->outlen == 0 && len > 0)
		c->out_at = util_mono_ms();
	c->outlen += len;
	return 0;
}

static int
client_flush(struct client *c)
{
	ssize_t n;

	while (c->outlen > 0) {
		n = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -1;
		}
		memmove(c->out, c->out + n, c->outlen - (size_t)n);
		c->outlen -= (size_t)n;
	}
	c->out_at = 0;
	return 0;
}

void
jsonl_screen_errors(struct jsonl *j)
{
	j->screen = 1;
}

/* An error of the socket layer itself, in the server's reply style. */
static json_t *
own_error(struct jsonl *j, json_t *err)
{
	json_t *msg;

	if (err == NULL || !j->screen)
		return err;
	msg = json_object_get(err, "error");
	json_object_set(err, "show", msg);
	json_object_set_new(err, "error", json_string("bad_request"));
	json_object_set_new(err, "wait_s", json_integer(0));
	return err;
}

static int
client_reply(struct client *c, json_t *reply)
{
	char *s;
	int rc;

	if (reply == NULL)
		reply = jsonl_error("internal error building the reply");
	s = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	if (s == NULL)
		return -1;
	rc = client_queue(c, s, strlen(s));
	free(s);
	if (rc == 0)
		rc = client_queue(c, "\n", 1);
	return rc;
}

static int
client_line(struct jsonl *j, struct client *c, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *req, *reply;

	if (len == 0)
		return 0;
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (req == NULL)
		reply = own_error(j, jsonl_error("bad JSON at column %d: %s",
		    jerr.column, jerr.text));
	else if (!json_is_object(req))
		reply = own_error(j,
		    jsonl_error("a request must be a JSON object"));
	else
		reply = j->fn(j->arg, req);
	json_decref(req);
	return client_reply(c, reply);
}

static int
client_read(struct jsonl *j, struct client *c)
{
	char buf[4096];
	int64_t now;
	ssize_t n;
	size_t i;

	n = recv(c->fd, buf, sizeof(buf), 0);
	if (n == 0)
		return -1;
	if (n == -1)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	now = util_mono_ms();
	for (i = 0; i < (size_t)n; i++) {
		if (buf[i] == '\n') {
			if (!c->skipping && client_line(j, c, c->in,
			    c->inlen) == -1)
				return -1;
			c->inlen = 0;
			c->skipping = 0;
			c->partial_at = 0;
			c->last = now;
			continue;
		}
		/* A line begun: it has until slow_ms to be finished. */
		if (c->partial_at == 0)
			c->partial_at = now;
		if (c->skipping)
			continue;
		else if (c->inlen == sizeof(c->in)) {
			c->skipping = 1;
			c->inlen = 0;
			if (client_reply(c, own_error(j, jsonl_error(
			    "request longer than %d bytes", JSONL_LINE_MAX))) ==
			    -1)
				return -1;
		} else
			c->in[c->inlen++] = buf[i];
	}
	return 0;
}

static int
peer_trusted(const struct jsonl *j, int fd)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (j->trust_uid < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == -1)
		return 0;
	return (long)cr.uid == j->trust_uid;
}

/*
 * The slot for a newcomer: a free one, but never the last free one for
 * a stranger while a keypad client is configured; otherwise the slot of
 * the stranger idle longest (the keypad's own, only for another of its
 * own). -1: every slot is the keypad's and the newcomer is a stranger.
 */
static int
slot_for(struct jsonl *j, int trusted)
{
	int i, free_ = -1, strangers = 0, idlest = -1, oldest = -1;
	int keep = j->trust_uid >= 0 ? 1 : 0;

	for (i = 0; i < JSONL_CLIENTS_MAX; i++) {
		const struct client *c = &j->clients[i];

		if (c->fd == -1) {
			if (free_ == -1)
				free_ = i;
			continue;
		}
		if (oldest == -1 || c->last < j->clients[oldest].last)
			oldest = i;
		if (c->trusted)
			continue;
		strangers++;
		if (idlest == -1 || c->last < j->clients[idlest].last)
			idlest = i;
	}
	if (free_ != -1 && (trusted || strangers < JSONL_CLIENTS_MAX - keep))
		return free_;
	if (idlest != -1)
		return idlest;
	return trusted ? oldest : -1;
}

/* 0 when a connection was taken (or refused), -1 when none waits. */
static int
accept_client(struct jsonl *j)
{
	struct client *c;
	int fd, slot, trusted;

	fd = accept4(j->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK)
			log_warn("socket %s: accept: %s", j->path,
			    strerror(errno));
		return -1;
	}
	trusted = peer_trusted(j, fd);
	if ((slot = slot_for(j, trusted)) == -1) {
		/* Every slot is the keypad's own: say so rather than leave
		 * the caller hanging. */
		j->refused++;
		if (send(fd, "{\"ok\":false,\"error\":\"too many clients\"}\n",
		    41, MSG_NOSIGNAL) < 0)
			log_debug("socket %s: refusing a client: %s", j->path,
			    strerror(errno));
		close(fd);
		return 0;
	}
	c = &j->clients[slot];
	if (c->fd != -1) {
		log_debug("socket %s: a new client takes the slot of one idle "
		    "for %lld ms", j->path,
		    (long long)(util_mono_ms() - c->last));
		j->taken++;
		client_close(c);
	}
	c->fd = fd;
	c->trusted = trusted;
	c->last = util_mono_ms();
	return 0;
}

/* The clients dropped lately, once a minute at most: a sign of a flood. */
static void
report(struct jsonl *j, int64_t now)
{
	if (j->slow + j->idle + j->taken + j->refused == 0 ||
	    (j->reported != 0 && now - j->reported < JSONL_REPORT_MS))
		return;
	log_info("socket %s: dropped %ld slow and %ld idle clients, gave %ld "
	    "slots to newcomers, refused %ld (since %s)", j->path, j->slow,
	    j->idle, j->taken, j->refused, j->reported ? "the last report" :
	    "start");
	j->slow = j->idle = j->taken = j->refused = 0;
	j->reported = now;
}

int64_t
jsonl_tick(struct jsonl *j, int64_t now)
{
	int64_t next = INT64_MAX, t;
	int i;

	if (j == NULL)
		return INT64_MAX;
	for (i = 0; i < JSONL_CLIENTS_MAX; i++) {
		struct client *c = &j->clients[i];

		if (c->fd == -1)
			continue;
		if ((c->partial_at != 0 && now - c->partial_at >= j->slow_ms) ||
		    (c->out_at != 0 && now - c->out_at >= j->slow_ms)) {
			log_debug("socket %s: dropping a slow client (a request "
			    "or its reply unfinished for %lld s)", j->path,
			    (long long)(j->slow_ms / 1000));
			j->slow++;
			client_close(c);
			continue;
		}
		if (!c->trusted && j->idle_ms > 0 &&
		    now - c->last >= j->idle_ms) {
			log_debug("socket %s: dropping a client idle for %lld "
			    "s", j->path, (long long)(j->idle_ms / 1000));
			j->idle++;
			client_close(c);
			continue;
		}
		if (c->partial_at != 0 && (t = c->partial_at + j->slow_ms) <
		    next)
			next = t;
		if (c->out_at != 0 && (t = c->out_at + j->slow_ms) < next)
			next = t;
		if (!c->trusted && j->idle_ms > 0 &&
		    (t = c->last + j->idle_ms) < next)
			next = t;
	}
	report(j, now);
	if (j->slow + j->idle + j->taken + j->refused > 0 &&
	    (t = j->reported + JSONL_REPORT_MS) < next)
		next = t > now ? t : now + JSONL_REPORT_MS;
	return next;
}

void
jsonl_dispatch(struct jsonl *j, const struct pollfd *pfd, int n)
{
	int i;

	if (n < 1 + JSONL_CLIENTS_MAX)
		return;
	for (i = 0; i < JSONL_CLIENTS_MAX; i++) {
		struct client *c = &j->clients[i];
		short re = pfd[1 + i].revents;

		if (c->fd == -1 || pfd[1 + i].fd != c->fd || re == 0)
			continue;
		if ((re & (POLLIN | POLLHUP | POLLERR)) &&
		    client_read(j, c) == -1) {
			client_close(c);
			continue;
		}
		if (client_flush(c) == -1)
			client_close(c);
	}
	/* Take the whole backlog (to a bound): a flood of connections must
	 * not keep the keypad's own waiting behind it. */
	for (i = 0; (pfd[0].revents & POLLIN) && i < JSONL_ACCEPT_MAX; i++)
		if (accept_client(j) == -1)
			break;
}

void
jsonl_broadcast(struct jsonl *j, json_t *msg)
{
	char *s;
	int i;

	if (j == NULL || (s = json_dumps(msg, JSON_COMPACT)) == NULL)
		return;
	for (i = 0; i < JSONL_CLIENTS_MAX; i++) {
		struct client *c = &j->clients[i];

		if (c->fd == -1)
			continue;
		if (client_queue(c, s, strlen(s)) == -1 ||
		    client_queue(c, "\n", 1) == -1 || client_flush(c) == -1) {
			log_warn("socket %s: dropping a client that does not "
			    "read", j->path);
			client_close(c);
		}
	}
	free(s);
}
