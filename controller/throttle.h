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
 * A right code or PIN: the person at the keypad is no guesser, so the
 * next one starts with a full bucket. Each success costs a guesser a
 * real one-time code, so it buys them nothing.
 */
void throttle_success(struct throttle *t, int64_t now);
/* Records a refused (locked-out) entry. */
void throttle_refused(struct throttle *t);
/* Updates the parameters (SIGHUP), keeping the state. */
void throttle_set(struct throttle *t, int burst, int64_t refill_ms,
    int64_t now);

#endif
