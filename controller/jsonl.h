/*
 * A JSON-lines server on a UNIX stream socket: one JSON object per line in,
 * one per line out. Used by the operator control socket (and the keypad).
 * Driven from the main poll loop; never blocks.
 */
#ifndef LOCKERD_JSONL_H
#define LOCKERD_JSONL_H

#include <jansson.h>
#include <poll.h>

#define JSONL_CLIENTS_MAX 16
#define JSONL_LINE_MAX 4096

/* Returns the reply (a new reference) for one request object. */
typedef json_t *(*jsonl_handler)(void *arg, json_t *req);

struct jsonl;

/*
 * Creates the socket at path with the given mode (e.g. 0600), born with
 * it (no moment at a wider mode). A stale socket there is replaced;
 * anything that is not a socket is not.
 */
struct jsonl *jsonl_open(const char *path, int mode, jsonl_handler fn,
    void *arg);
void jsonl_close(struct jsonl *j);
/* Fills up to max pollfds; returns how many. */
int jsonl_pollfds(struct jsonl *j, struct pollfd *pfd, int max);
/* Handles the pollfds that jsonl_pollfds filled. */
void jsonl_dispatch(struct jsonl *j, const struct pollfd *pfd, int n);
/* The socket's own errors (bad JSON, over-long line) also carry "show"
 * and error "bad_request", as the keypad protocol's replies do. */
void jsonl_screen_errors(struct jsonl *j);
/*
 * Clients that hold a slot without using it: one whose request line, or
 * whose unread replies, stay unfinished for timeout_s is slow and
 * dropped; one that sends no request for idle_s (0: never) is dropped
 * too. With every slot taken a new client takes the slot of the one idle
 * longest, rather than being refused. Defaults: 30 s, 600 s.
 */
void jsonl_limits(struct jsonl *j, int timeout_s, int idle_s);
/*
 * Connections whose peer (SO_PEERCRED) runs as uid are the keypad's own
 * (the screen bridge): one slot is always kept for them, and they are
 * never dropped as idle or made to give their slot to a newcomer. -1 off.
 */
void jsonl_trust_uid(struct jsonl *j, long uid);
/* Drops slow and idle clients; returns the next time it has to look
 * (monotonic ms), INT64_MAX if never. j may be NULL. */
int64_t jsonl_tick(struct jsonl *j, int64_t now);
/* Sends msg (borrowed) to every connected client: notices. */
void jsonl_broadcast(struct jsonl *j, json_t *msg);
/* A reply built the same way for errors: {"ok":false,"error":...}. */
json_t *jsonl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
