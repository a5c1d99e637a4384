/*
 * The store: lockerd's SQLite database, the only module that speaks SQL.
 * One writer connection, WAL with synchronous=FULL, BEGIN IMMEDIATE, and
 * migrations from schema/ applied at start-up.
 */
#ifndef LOCKERD_STORE_H
#define LOCKERD_STORE_H

#include <stddef.h>
#include <stdint.h>

struct store;

struct store_cell {
	int number;
	char board[32];
	int channel;
	char size;
	char door[8];        /* "open" | "closed" | "unknown" */
	int item;            /* -1 unknown */
	int in_service;
	char fault[32];      /* "" when none */
	int unlock_pending;
};

/* Opens (creating) the database and migrates it. err gets the reason. */
struct store *store_open(const char *path, char *err, size_t errlen);
void store_close(struct store *s);
/* The schema version this binary knows: the highest schema/NNN. */
int store_schema_latest(void);

/*
 * Is the database usable? Its file is still the one opened (not deleted
 * or replaced) and the write lock can be taken at once (nobody else holds
 * it). Cheap: a stat and an empty write transaction. -1 and why if not.
 */
int store_check(struct store *s, char *why, size_t len);

int store_begin(struct store *s);
int store_commit(struct store *s);
void store_rollback(struct store *s);

/* Increments and returns the boot counter (own transaction). */
int64_t store_boot(struct store *s);

/*
 * Makes the cells table match the configuration's wiring (inserting new
 * cells, updating moved ones); must be inside a transaction.
 */
int store_cell_define(struct store *s, int number, const char *board,
    int channel, char size);
int store_cell_get(struct store *s, int number, struct store_cell *out);
int store_cell_save(struct store *s, const struct store_cell *c);

/*
 * Appends an event inside the current transaction. body_fmt receives the
 * sequence number the event will get and must return the JSON body
 * (malloc'ed) or NULL.
 */
typedef char *(*store_body_fn)(int64_t seq, void *arg);
int store_event_append(struct store *s, int64_t wall_ms, const char *type,
    int cell, store_body_fn body_fn, void *arg, int64_t *seq_out);
int64_t store_event_last(struct store *s);

/* Calls fn(seq, body, arg) for events with seq > after, at most limit. */
typedef int (*store_event_fn)(int64_t seq, const char *body, void *arg);
int store_events_after(struct store *s, int64_t after, int limit,
    store_event_fn fn, void *arg);
/* The same, newest first, for events with seq < before. */
int store_events_before(struct store *s, int64_t before, int limit,
    store_event_fn fn, void *arg);

/* The plain code of an issuance event until delivered (NULL clears). */
int store_event_secret(struct store *s, int64_t seq, const char *secret);
/* Calls fn(seq, secret, arg) for every event that still holds one. */
int store_event_secrets(struct store *s, store_event_fn fn, void *arg);
/*
 * After wiping secrets, and at start-up: checkpoints the WAL into the
 * database (whose freed space secure_delete zeroes) and truncates it, so
 * no old copy remains.
 */
void store_scrub(struct store *s);
/* The outbox: undelivered events from seq on, with their secret. */
typedef int (*store_outbox_fn)(int64_t seq, const char *body,
    const char *secret, void *arg);
int store_outbox(struct store *s, int64_t from, int limit, store_outbox_fn fn,
    void *arg);
/* The broker has it: delivered, and its plain code (if any) wiped. */
int store_event_delivered(struct store *s, int64_t seq);
/* The first undelivered seq (0 if none) and how many wait. */
int store_undelivered(struct store *s, int64_t *first, int64_t *count);
/*
 * Platform commands (signed ones; the read-only ones are not kept): 0 and
 * the state ("started" / "done"), the stored reply (malloc'ed, or NULL)
 * and the digest of what the command asked (has_digest 0 for rows from
 * before digests) if seen before, 1 if new, -1 on error.
 */
#define STORE_DIGEST_LEN 32
int store_cmd_get(struct store *s, const char *request_id, char *state,
    size_t statelen, char **reply, uint8_t digest[STORE_DIGEST_LEN],
    int *has_digest);
/*
 * Records that a command starts (own transaction, before it runs): its
 * row and its nonce (NULL: none), nonces older than forget_before
 * dropped (a command that old fails its timestamp window anyway).
 * Returns 1, recording nothing, if the nonce was used before.
 * This one commit does not wait for the disk (synchronous = NORMAL): the
 * WAL is written in order, so whatever durable commit comes next (the
 * command's ledger record, before it runs; its reply row, before the
 * reply is sent) takes the rows to the disk first. A power cut before
 * that loses them together with a command that had not run yet.
 */
int store_cmd_start(struct store *s, const char *request_id, const char *op,
    const uint8_t digest[STORE_DIGEST_LEN], const char *nonce, int64_t at,
    int64_t forget_before);
/* Its reply (no transaction of its own; link.c writes a loop turn's
 * replies in one transaction). */
int store_cmd_done(struct store *s, const char *request_id, const char *reply);
/* Has this nonce been used? 1 yes, 0 no, -1 on error. */
int store_nonce_seen(struct store *s, const char *nonce);
/*
 * Puts back a command that the ledger says was run (in the caller's
 * transaction): its row as started if missing (with the ledger's digest
 * if the row says another) and its nonce. Returns the rows changed, -1.
 */
int store_cmd_restore(struct store *s, const char *request_id, const char *op,
    const uint8_t digest[STORE_DIGEST_LEN], const char *nonce, int64_t at);
/*
 * Drops command rows older than before (wall ms), then the oldest beyond
 * keep (own transaction, not waited for: a prune lost to a power cut is
 * done again). Returns how many went, or -1.
 */
int store_cmd_prune(struct store *s, int64_t before, int keep);
/* Marks an event as being about a reservation. */
int store_event_resv(struct store *s, int64_t seq, int64_t resv);
/* The newest event about a reservation (0 if none), -1 on error. */
int64_t store_resv_last_event(struct store *s, int64_t resv);
/* The same for staff accounts (staff_added / staff_revoked events). */
int store_event_staff(struct store *s, int64_t seq, const char *id);
int64_t store_staff_last_event(struct store *s, const char *id);

/*
 * Signed rows (reservations, staff): the key as text, the canonical body
 * and its signature. fn returns -1 to stop.
 */
typedef int (*store_row_fn)(const char *key, const char *body,
    const void *sig, size_t siglen, void *arg);
int store_resv_save(struct store *s, int64_t id, int active, const char *body,
    const uint8_t *sig, size_t siglen);
int store_resv_active(struct store *s, store_row_fn fn, void *arg);
/* The highest reservation id ever used (0 if none), -1 on error. */
int64_t store_resv_max_id(struct store *s);
int store_staff_put(struct store *s, const char *id, const char *body,
    const uint8_t *sig, size_t siglen);
/* 0 and fn called if found, 1 if there is no such staff id, -1 on error. */
int store_staff_get(struct store *s, const char *id, store_row_fn fn,
    void *arg);


/*
 * Custody checks at start-up (mark.c). The database is empty: no event,
 * no reservation, no staff account (1), or not (0); -1 on error.
 */
int store_is_empty(struct store *s);
/* A flag in meta: 1 set, 0 not; take deletes it (1 if it was there). */
int store_meta_has(struct store *s, const char *key);
int store_meta_take(struct store *s, const char *key);
/* The boot counter raised to at least min (own transaction). */
int64_t store_boot_raise(struct store *s, int64_t min);
/* Events with seq > after with their unsigned index columns (resv 0 and
 * staff NULL when not set). */
typedef int (*store_index_fn)(int64_t seq, const char *body, int64_t resv,
    const char *staff, void *arg);
int store_event_index(struct store *s, int64_t after, int limit,
    store_index_fn fn, void *arg);
/* Sets both index columns of an event (0 / NULL clear them). */
int store_event_index_set(struct store *s, int64_t seq, int64_t resv,
    const char *staff);
/* fn(newest seq, staff id, arg) for each id in the staff index. */
int store_staff_seqs(struct store *s, store_event_fn fn, void *arg);
/* Clears the staff index of id's events after seq above. */
int store_staff_unindex(struct store *s, const char *id, int64_t above);
/* One reservation row (fn not called if there is none); every staff row. */
int store_resv_get(struct store *s, int64_t id, store_row_fn fn, void *arg);
int store_resv_set_active(struct store *s, int64_t id, int active);
int store_staff_all(struct store *s, store_row_fn fn, void *arg);
/*
 * Moves the events from seq from on out of the ledger into
 * events_rejected, with the reason; the next event gets seq from.
 */
int store_event_reject(struct store *s, int64_t from, const char *reason);
/* The next event appended gets at least seq next (a restore, mark.c). */
void store_event_seq_skip(struct store *s, int64_t next);
/* The first undelivered seq, 0 if none (one index lookup), -1 on error. */
int64_t store_first_undelivered(struct store *s);
/* Events after seq after marked delivered are sent again; how many. */
int64_t store_delivered_reset(struct store *s, int64_t after);

/*
 * The ledger's mark: a small file of its own beside the database
 * (PATH-mark), outside it, read and written through SQLite's VFS (for an
 * in-memory database, memory). read: 0 and len bytes (what the file
 * lacks reads as zeros), 1 if there is no such file, -1 on error. write:
 * len bytes at off (the file created if need be), synced if sync; sync:
 * what was written reaches the disk. 0 or -1.
 */
#define STORE_MARK_SIZE 1024
const char *store_mark_path(struct store *s);
int store_mark_read(struct store *s, void *buf, size_t len);
int store_mark_write(struct store *s, const void *buf, size_t len,
    int64_t off, int sync);
int store_mark_sync(struct store *s);

/*
 * The keypad throttles (kiosk.c): one row per bucket that is not full.
 * put writes (or, with full set, deletes) n rows in one transaction of
 * its own; load calls fn for each row, fn returning -1 to stop.
 */
struct store_throttle {
	char name[48];
	double tokens;
	int64_t at;                /* wall ms */
	int alarmed;
	int64_t episode, failures, spent;
	int full;                  /* put: nothing to keep, delete the row */
};
int store_throttle_put(struct store *s, const struct store_throttle *rows,
    int n);
typedef int (*store_throttle_fn)(const struct store_throttle *t, void *arg);
int store_throttle_load(struct store *s, store_throttle_fn fn, void *arg);

#endif
