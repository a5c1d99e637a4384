/*
 * The keypad throttle: a token bucket of failed attempts. Each failure
 * takes a token; with none left the keypad refuses entries until the next
 * token comes back. Tokens return one per refill period, so nobody waits
 * longer than one period at a time, and a person who mistypes once or
 * twice (burst - 1 failures) is not delayed at all. Pure: time in ms in.
 *
 * link.c uses the same bucket as the platform's command rate limit, where
 * every command takes a token (throttle_init_rate()).
 */
#ifndef LOCKERD_THROTTLE_H
#define LOCKERD_THROTTLE_H

#include <stdint.h>

/* The keypad's throttles: a guessing alarm again every this many failures
 * of one episode (about 8 hours at one try per 300 s). */
#define KIOSK_REALARM 100

struct throttle {
	int burst;               /* bucket size: failures before a wait */
	double refill_ms;        /* one token back per period */
	double tokens;           /* kept as tokens at time 'at' */
	int64_t at;
	int64_t failures;        /* total failures (stats) */
	int64_t refused;         /* entries refused while locked (stats) */
	int alarmed;             /* alarm raised; cleared when full again */
	int realarm;             /* alarm again every realarm failures of
	                          * one episode; 0: once per episode */
	int64_t episode;         /* failures since the episode's alarm */
};

void throttle_init(struct throttle *t, int burst, int64_t refill_ms,
    int64_t now);
/* A rate limit: per_s tokens a second (the platform's commands, link.c). */
void throttle_init_rate(struct throttle *t, int burst, int per_s,
    int64_t now);
/* 0 if an attempt may be made now, else the ms to wait (>0). */
int64_t throttle_wait(struct throttle *t, int64_t now);
/*
 * Records a failed attempt (only call when throttle_wait returned 0).
 * Returns 1 when this failure emptied the bucket for the first time since
 * it was last full: the caller raises one "guessing" alarm per episode;
 * and, when t->realarm is set, again every realarm failures while the
 * episode lasts, so that a patient guesser who keeps the bucket dry for
 * months is not reported only once.
 */
int throttle_fail(struct throttle *t, int64_t now);
/*
 * A full bucket again. Only for a step that really happened and cannot be
 * repeated at will: the door of a code opened (once per code), a staff
 * member's own good log-in (that account's bucket only). A code that is
 * merely accepted gives nothing back: its door may never open (a jam),
 * and the same code would be accepted again.
 */
void throttle_success(struct throttle *t, int64_t now);
/* Records a refused (locked-out) entry. */
void throttle_refused(struct throttle *t);
/* Updates the parameters (SIGHUP), keeping the state. */
void throttle_set(struct throttle *t, int burst, int64_t refill_ms,
    int64_t now);
/* The tokens as of now (refilled first): for the database. */
double throttle_tokens(struct throttle *t, int64_t now);
/* 1 if the bucket is full as of now: nothing about it is worth keeping. */
int throttle_full(struct throttle *t, int64_t now);
/*
 * Puts back a bucket saved ago_ms before now (a restart): what has come
 * back since then is added, as if lockerd had run all along. A negative
 * ago (the wall clock went back) adds nothing.
 */
void throttle_restore(struct throttle *t, double tokens, int alarmed,
    int64_t episode, int64_t failures, int64_t ago_ms, int64_t now);

/*
 * The keypad's throttles (kiosk.c): one bucket for codes and scanned
 * credentials; for staff log-ins one bucket of the keypad, charged by
 * every failure whatever id it named, and one per target id. A failure
 * takes a token from both; a good log-in fills that id's own bucket and
 * gives back to the keypad's bucket only the failures charged to that
 * same id, never those spent on other accounts: an insider's own log-ins
 * buy no tries at anyone else. Unknown ids have buckets exactly as known
 * ones do, so a wait never tells that an id exists.
 *
 * Target ids are kept as keyed hashes (kiosk.c makes them): a PIN typed
 * into the id field is never kept in the clear.
 */
#define THROTTLE_ACCOUNTS 64
#define THROTTLE_KEY_LEN 16
#define THROTTLE_OPENED_KEEP 16

struct throttle_account {
	uint8_t key[THROTTLE_KEY_LEN];
	int used;
	struct throttle t;
	int64_t spent;           /* failures the keypad has not given back */
};

struct throttle_keypad {
	struct throttle code;
	struct throttle pin;
	struct throttle_account acct[THROTTLE_ACCOUNTS];
	/* Reservations whose door gave the code bucket back (a ring). */
	int64_t opened[THROTTLE_OPENED_KEEP];
	int nopened;
};

/* What a failed log-in emptied first in its episode: alarm for it. */
enum {
	THROTTLE_ALARM_KEYPAD = 1,
	THROTTLE_ALARM_ACCOUNT = 2,
};

void throttle_keypad_init(struct throttle_keypad *k, int code_burst,
    int64_t code_refill_ms, int pin_burst, int64_t pin_refill_ms,
    int realarm, int64_t now);
/*
 * The door of reservation resv, opened by its code, was seen open: the
 * code bucket is full again, once per reservation. Returns 1 if it was
 * given back now, 0 if that reservation gave it back before.
 */
int throttle_code_opened(struct throttle_keypad *k, int64_t resv,
    int64_t now);
/* 0 if a log-in naming key may be tried now, else the ms to wait. */
int64_t throttle_pin_wait(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now);
/* A failed log-in naming key (call when throttle_pin_wait said 0):
 * THROTTLE_ALARM_* bits for the buckets it emptied. */
int throttle_pin_fail(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now);
/* A good log-in of key: its own bucket full, its own failures back. */
void throttle_pin_ok(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now);
/* The account bucket of key, or NULL if it has none (a full bucket). */
struct throttle_account *throttle_account_find(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN]);
/*
 * A bucket for key, taking the slot of the fullest one when all are in
 * use (*evicted then says whose, for the caller to forget). Never NULL.
 */
struct throttle_account *throttle_account_get(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now,
    struct throttle_account *evicted);

#endif
