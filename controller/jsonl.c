/*
 * A JSON-lines server on a UNIX stream socket, driven from the main poll
 * loop. Input is bounded per line and output per client; a client that
 * sends an over-long line gets an error and the rest of the line is
 * skipped, and one that does not read its replies is dropped.
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

struct client {
	int fd;
	char in[JSONL_LINE_MAX];
	size_t inlen;
	int skipping;         /* discarding the rest of an over-long line */
	char *out;
	size_t outlen, outcap;
};

struct jsonl {
	int fd;
	char path[108];
	jsonl_handler fn;
	void *arg;
	int screen;           /* own errors also carry "show" (the keypad) */
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

struct jsonl *
jsonl_open(const char *path, int mode, jsonl_handler fn, void *arg)
{
	struct sockaddr_un sun;
	struct jsonl *j;
	int i;

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
	/* A stale socket from a crash would make bind fail. */
	if (unlink(path) == -1 && errno != ENOENT)
		log_warn("socket %s: removing the old one: %s", path,
		    strerror(errno));
	if (bind(j->fd, (struct sockaddr *)&sun, sizeof(sun)) == -1 ||
	    chmod(path, (mode_t)mode) == -1 || listen(j->fd, 16) == -1) {
		log_error("socket %s: %s", path, strerror(errno));
		close(j->fd);
		free(j);
		return NULL;
	}
	return j;
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
	ssize_t n;
	size_t i;

	n = recv(c->fd, buf, sizeof(buf), 0);
	if (n == 0)
		return -1;
	if (n == -1)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	for (i = 0; i < (size_t)n; i++) {
		if (buf[i] == '\n') {
			if (!c->skipping && client_line(j, c, c->in,
			    c->inlen) == -1)
				return -1;
			c->inlen = 0;
			c->skipping = 0;
		} else if (c->skipping)
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

static void
accept_client(struct jsonl *j)
{
	int fd, i;

	fd = accept4(j->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno != EAGAIN && errno != EINTR)
			log_warn("socket %s: accept: %s", j->path,
			    strerror(errno));
		return;
	}
	for (i = 0; i < JSONL_CLIENTS_MAX; i++)
		if (j->clients[i].fd == -1) {
			j->clients[i].fd = fd;
			return;
		}
	/* Full: say so rather than leave the caller hanging. */
	if (send(fd, "{\"ok\":false,\"error\":\"too many clients\"}\n", 41,
	    MSG_NOSIGNAL) < 0)
		log_debug("socket %s: refusing a client: %s", j->path,
		    strerror(errno));
	close(fd);
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
	if (pfd[0].revents & POLLIN)
		accept_client(j);
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
