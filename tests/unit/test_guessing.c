/*
 * Guessing does not pay (DESIGN.md invariant 6), on a simulated clock:
 * a guesser types random codes at the keypad as fast as the throttle lets
 * them, for a whole year, against 500 live drop-off codes. The real code
 * hashing (libsodium), the real reservation lookup and the real throttle
 * are used; only the clock and the random sources are simulated, with
 * fixed seeds so the run is the same every time.
 *
 * The target (README, "Guessing"): fewer than 0.01 cells opened a year;
 * never locked for more than 5 minutes at a time; one or two mistypes
 * cost nothing; a "guessing" alarm per episode.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bank.h"
#include "codes.h"
#include "resv.h"
#include "throttle.h"

#define LIVE 500
#define DIGITS 10
#define BURST 3
#define REFILL_MS (300 * 1000LL)
#define YEAR_MS (365LL * 86400 * 1000)
#define GRACE_MS 120000

/* xorshift64*: a fixed-seed source for codes and for the guesser. */
static uint64_t rng_state;

static uint64_t
rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static uint32_t
fixed_uniform(uint32_t upper)
{
	return (uint32_t)(rng_next() % upper);
}

struct locker {
	struct bank b;
	struct bank_cell cells[LIVE];
	struct bank_board board;
	struct resv_table t;
	struct codes_keys *keys;
	char codes[LIVE][DIGITS + 1];
	char phones[LIVE][5];
};

static struct locker *
locker_new(int with_phone)
{
	static const struct bank_timing bt = { 50, 1000, 1, 120000, 300000 };
	struct resv_timing rt = { GRACE_MS, 7 * 86400 * 1000LL };
	struct resv_actions *out = calloc(1, sizeof(*out));
	struct locker *l = calloc(1, sizeof(*l));
	uint8_t h[CODES_HASH_LEN], ph[CODES_HASH_LEN];
	int i, slot;

	assert_non_null(l);
	assert_non_null(out);
	assert_int_equal(codes_init(), 0);
	assert_non_null(l->keys = codes_keys_new());
	for (i = 0; i < LIVE; i++) {
		l->cells[i].number = i + 1;
		l->cells[i].board = 0;
		l->cells[i].channel = 1 + i % 64;
		l->cells[i].size = 'S';
		l->cells[i].door = BANK_DOOR_CLOSED;
		l->cells[i].in_service = 1;
		l->cells[i].item = -1;
	}
	bank_init(&l->b, l->cells, LIVE, &l->board, 1, &bt);
	l->board.ok = 1;
	assert_int_equal(resv_init(&l->t, &l->b, &rt, 1), 0);
	/* 500 live codes, made the way lockerd makes them. */
	rng_state = 0x9e3779b97f4a7c15ULL;
	codes_set_uniform(fixed_uniform);
	for (i = 0; i < LIVE; i++) {
		codes_generate(l->phones[i], 4);
		if (with_phone)
			codes_hash(l->keys, "phone", l->phones[i], ph);
		out->n = 0;
		assert_int_equal(resv_reserve(&l->t, "A-1", 'S', YEAR_MS * 2,
		    with_phone ? ph : NULL, 0, out, &slot), RESV_OK);
		do {
			codes_generate(l->codes[i], DIGITS);
			codes_hash(l->keys, "code", l->codes[i], h);
		} while (resv_code_taken(&l->t, h));
		out->n = 0;
		resv_code_set(&l->t, slot, h, 0, out);
	}
	codes_set_uniform(NULL);
	free(out);
	return l;
}

static void
locker_free(struct locker *l)
{
	resv_free(&l->t);
	codes_keys_free(l->keys);
	free(l);
}

/* One keypad attempt, as kiosk.c makes it. Returns the refusal. */
static enum resv_refusal
attempt(struct locker *l, struct throttle *th, const char *code,
    const char *phone, int64_t now, int *alarms)
{
	uint8_t h[CODES_HASH_LEN], ph[CODES_HASH_LEN];
	struct resv_actions out;
	enum resv_refusal r;
	int slot;

	codes_hash(l->keys, "code", code, h);
	if (phone != NULL)
		codes_hash(l->keys, "phone", phone, ph);
	out.n = 0;
	out.overflow = 0;
	r = resv_enter(&l->t, h, phone ? ph : NULL, now, &out, &slot);
	if (r == RESV_ERR_NO_CODE && throttle_fail(th, now))
		(*alarms)++;
	if (r == RESV_OK)
		throttle_success(th, now);
	return r;
}

static void
test_a_year_of_guessing(void **state)
{
	struct locker *l = locker_new(0);
	struct throttle th;
	int64_t now = 0, wait, max_wait = 0, attempts = 0, opened = 0;
	char guess[DIGITS + 1];
	int alarms = 0, i;
	double expected;

	(void)state;
	throttle_init(&th, BURST, REFILL_MS, now);
	th.realarm = KIOSK_REALARM;
	rng_state = 0x2545f4914f6cdd1dULL;
	while (now < YEAR_MS) {
		if ((wait = throttle_wait(&th, now)) > 0) {
			/* The keypad refuses until then: the guesser waits. */
			if (wait > max_wait)
				max_wait = wait;
			now += wait;
			continue;
		}
		for (i = 0; i < DIGITS; i++)
			guess[i] = (char)('0' + rng_next() % 10);
		guess[DIGITS] = '\0';
		attempts++;
		if (attempt(l, &th, guess, NULL, now, &alarms) == RESV_OK)
			opened++;
	}
	expected = (double)attempts * LIVE / 1e10;
	print_message("a year at the throttle's highest rate: %lld attempts, "
	    "longest wait %lld s, %d guessing alarm(s), %lld cells opened; "
	    "expected opens %.5f a year (%lld x %d / 10^%d)\n",
	    (long long)attempts, (long long)(max_wait / 1000), alarms,
	    (long long)opened, expected, (long long)attempts, LIVE, DIGITS);
	/* The throttle's highest sustained rate: burst + one per refill. */
	assert_true(attempts <= BURST + YEAR_MS / REFILL_MS + 1);
	assert_true(attempts >= YEAR_MS / REFILL_MS);
	assert_true(expected < 0.01);
	assert_int_equal(opened, 0);
	/* Never locked for more than five minutes at a time. */
	assert_true(max_wait <= 5 * 60 * 1000);
	/* The episode never ended (the bucket never refilled): one alarm
	 * when it began, then one every KIOSK_REALARM failures, about three
	 * a day, so the platform sees the guessing go on. */
	assert_int_equal(alarms, 1 + (attempts - BURST) / KIOSK_REALARM);
	locker_free(l);
}

static void
test_mistypes_are_not_delayed(void **state)
{
	struct locker *l = locker_new(0);
	struct throttle th;
	int alarms = 0;
	char wrong[DIGITS + 1];

	(void)state;
	throttle_init(&th, BURST, REFILL_MS, 0);
	/* Two mistypes (a digit off), then the right code: no wait at all. */
	memcpy(wrong, l->codes[7], sizeof(wrong));
	wrong[3] = wrong[3] == '9' ? '0' : (char)(wrong[3] + 1);
	assert_int_equal(throttle_wait(&th, 1000), 0);
	assert_int_equal(attempt(l, &th, wrong, NULL, 1000, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(throttle_wait(&th, 5000), 0);
	assert_int_equal(attempt(l, &th, wrong, NULL, 5000, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(throttle_wait(&th, 9000), 0);
	assert_int_equal(attempt(l, &th, l->codes[7], NULL, 9000, &alarms),
	    RESV_OK);
	assert_int_equal(alarms, 0);
	/* The success filled the bucket: the next person may mistype twice
	 * too; a third failure in a row empties it: a wait of at most 5 min,
	 * and the alarm. */
	assert_int_equal(attempt(l, &th, wrong, NULL, 10000, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(throttle_wait(&th, 10000), 0);
	assert_int_equal(attempt(l, &th, wrong, NULL, 10000, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(throttle_wait(&th, 10000), 0);
	assert_int_equal(alarms, 0);
	assert_int_equal(attempt(l, &th, wrong, NULL, 10000, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(alarms, 1);
	assert_true(throttle_wait(&th, 10000) > 0);
	assert_true(throttle_wait(&th, 10000) <= REFILL_MS);
	assert_int_equal(throttle_wait(&th, 10000 + REFILL_MS), 0);
	locker_free(l);
}

static void
test_alarm_once_per_episode(void **state)
{
	struct throttle th;
	int64_t now = 0;
	int alarms = 0, i;

	(void)state;
	throttle_init(&th, BURST, REFILL_MS, now);
	for (i = 0; i < 3; i++)
		alarms += throttle_fail(&th, now);
	assert_int_equal(alarms, 1);
	/* Still guessing, one try per refill: no new alarm. */
	for (i = 0; i < 10; i++) {
		now += throttle_wait(&th, now);
		alarms += throttle_fail(&th, now);
	}
	assert_int_equal(alarms, 1);
	/* The guesser left; the bucket filled; a new episode alarms again. */
	now += BURST * REFILL_MS;
	assert_int_equal(throttle_wait(&th, now), 0);
	for (i = 0; i < 3; i++)
		alarms += throttle_fail(&th, now);
	assert_int_equal(alarms, 2);
}

static void
test_alarm_again_while_guessing_goes_on(void **state)
{
	struct throttle th;
	int64_t now = 0;
	int alarms = 0, i;

	(void)state;
	throttle_init(&th, BURST, REFILL_MS, now);
	th.realarm = KIOSK_REALARM;
	for (i = 0; i < BURST; i++)
		alarms += throttle_fail(&th, now);
	assert_int_equal(alarms, 1);
	for (i = 1; i <= 3 * KIOSK_REALARM; i++) {
		now += throttle_wait(&th, now);
		alarms += throttle_fail(&th, now);
		/* Exactly at each KIOSK_REALARM-th failure of the episode. */
		assert_int_equal(alarms, 1 + i / KIOSK_REALARM);
	}
	/* The guesser left; a new episode starts with its own alarm. */
	now += BURST * REFILL_MS;
	for (i = 0; i < BURST; i++)
		alarms += throttle_fail(&th, now);
	assert_int_equal(alarms, 5);
}

static void
test_second_factor(void **state)
{
	struct locker *l = locker_new(1);
	struct throttle th;
	int alarms = 0;
	char other[5];
	int i;

	(void)state;
	throttle_init(&th, 10, REFILL_MS, 0);
	/* The same phone digits with the last one changed. */
	memcpy(other, l->phones[3], sizeof(other));
	i = 3;
	other[i] = other[i] == '9' ? '0' : (char)(other[i] + 1);
	/* The right code alone, or with the wrong phone digits, is refused
	 * exactly as a wrong code is. */
	assert_int_equal(attempt(l, &th, l->codes[3], NULL, 0, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(attempt(l, &th, l->codes[3], other, 0, &alarms),
	    RESV_ERR_NO_CODE);
	assert_int_equal(attempt(l, &th, l->codes[3], l->phones[3], 0,
	    &alarms), RESV_OK);
	locker_free(l);
}

/*
 * The platform's command rate limit (link.c admit()) charges each command
 * at its arrival. Commands that arrived at 100 a second while the loop was
 * held up for 2.3 s, and are then worked off in one go, are all admitted
 * at 200 a second with a burst of 200 (CI once refused 27 of them when
 * the charge was taken at processing time); 300 that arrive at once lose
 * the 100 past the burst.
 */
static int
admitted(struct throttle *th, const int64_t *arrivals, int n)
{
	int i, ok = 0;

	for (i = 0; i < n; i++)
		if (throttle_wait(th, arrivals[i]) == 0) {
			throttle_fail(th, arrivals[i]);
			ok++;
		}
	return ok;
}

static void
test_rate_charged_at_arrival(void **state)
{
	int64_t at[300];
	struct throttle th;
	int i;

	(void)state;
	throttle_init_rate(&th, 200, 200, 0);
	for (i = 0; i < 230; i++)
		at[i] = 1000 + i * 10;          /* 100 a second */
	assert_int_equal(admitted(&th, at, 230), 230);
	throttle_init_rate(&th, 200, 200, 0);
	for (i = 0; i < 300; i++)
		at[i] = 1000;
	assert_int_equal(admitted(&th, at, 300), 200);
	assert_int_equal(throttle_wait(&th, 1000), 5);
	/* A reload stamps a later time; a command that arrived before it
	 * refills nothing and does not turn the clock back. */
	throttle_set(&th, 200, 5, 2000);
	assert_int_equal(admitted(&th, at, 1), 1);
	assert_true(th.at == 2000);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_year_of_guessing),
		cmocka_unit_test(test_mistypes_are_not_delayed),
		cmocka_unit_test(test_alarm_once_per_episode),
		cmocka_unit_test(test_alarm_again_while_guessing_goes_on),
		cmocka_unit_test(test_second_factor),
		cmocka_unit_test(test_rate_charged_at_arrival),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
