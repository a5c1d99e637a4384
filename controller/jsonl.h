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

/* Creates the socket at path with the given mode (e.g. 0600). */
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
/* Sends msg (borrowed) to every connected client: notices. */
void jsonl_broadcast(struct jsonl *j, json_t *msg);
/* A reply built the same way for errors: {"ok":false,"error":...}. */
json_t *jsonl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
