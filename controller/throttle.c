/*
 * The keypad throttle: a token bucket of failed attempts (throttle.h).
 */
#include "throttle.h"

#include <string.h>

/*
 * A full bucket again means the episode is over: the next one alarms.
 * Time never runs back: a stamp older than the last one (a command that
 * arrived before a reload was charged, link.c) refills nothing.
 */
static void
refill(struct throttle *t, int64_t now)
{
	if (now > t->at) {
		t->tokens += (double)(now - t->at) / t->refill_ms;
		if (t->tokens >= t->burst) {
			t->tokens = t->burst;
			t->alarmed = 0;
		}
		t->at = now;
	}
}

void
throttle_init(struct throttle *t, int burst, int64_t refill_ms, int64_t now)
{
	t->burst = burst > 0 ? burst : 1;
	t->refill_ms = refill_ms > 0 ? (double)refill_ms : 1.0;
	t->tokens = t->burst;
	t->at = now;
	t->failures = t->refused = 0;
	t->alarmed = 0;
	t->realarm = 0;
	t->episode = 0;
}

void
throttle_init_rate(struct throttle *t, int burst, int per_s, int64_t now)
{
	throttle_init(t, burst, 1, now);
	t->refill_ms = 1000.0 / (per_s > 0 ? per_s : 1);
}

int64_t
throttle_wait(struct throttle *t, int64_t now)
{
	int64_t ms;

	refill(t, now);
	if (t->tokens >= 1.0)
		return 0;
	ms = (int64_t)((1.0 - t->tokens) * t->refill_ms + 0.999);
	return ms > 0 ? ms : 1;
}

int
throttle_fail(struct throttle *t, int64_t now)
{
	refill(t, now);
	t->failures++;
	t->tokens -= 1.0;
	if (t->tokens < 1.0 && !t->alarmed) {
		t->alarmed = 1;
		t->episode = 0;
		return 1;
	}
	if (t->alarmed && t->realarm > 0 && ++t->episode % t->realarm == 0)
		return 1;
	return 0;
}

void
throttle_success(struct throttle *t, int64_t now)
{
	refill(t, now);
	t->tokens = t->burst;
	t->alarmed = 0;
}

void
throttle_refused(struct throttle *t)
{
	t->refused++;
}

void
throttle_set(struct throttle *t, int burst, int64_t refill_ms, int64_t now)
{
	refill(t, now);
	t->burst = burst > 0 ? burst : 1;
	t->refill_ms = refill_ms > 0 ? (double)refill_ms : 1.0;
	if (t->tokens > t->burst)
		t->tokens = t->burst;
}

double
throttle_tokens(struct throttle *t, int64_t now)
{
	refill(t, now);
	return t->tokens;
}

int
throttle_full(struct throttle *t, int64_t now)
{
	return throttle_tokens(t, now) >= t->burst;
}

void
throttle_restore(struct throttle *t, double tokens, int alarmed,
    int64_t episode, int64_t failures, int64_t ago_ms, int64_t now)
{
	/* A row written with other numbers (a changed burst) is believed
	 * only as far as the bucket's own limits go. */
	if (!(tokens >= -1.0))
		tokens = -1.0;
	t->tokens = tokens < t->burst ? tokens : t->burst;
	t->alarmed = alarmed != 0;
	t->episode = episode > 0 ? episode : 0;
	t->failures = failures > 0 ? failures : 0;
	t->at = now - (ago_ms > 0 ? ago_ms : 0);
	refill(t, now);
}

void
throttle_keypad_init(struct throttle_keypad *k, int code_burst,
    int64_t code_refill_ms, int pin_burst, int64_t pin_refill_ms,
    int realarm, int64_t now)
{
	int i;

	memset(k, 0, sizeof(*k));
	throttle_init(&k->code, code_burst, code_refill_ms, now);
	throttle_init(&k->pin, pin_burst, pin_refill_ms, now);
	k->code.realarm = k->pin.realarm = realarm;
	for (i = 0; i < THROTTLE_ACCOUNTS; i++) {
		throttle_init(&k->acct[i].t, pin_burst, pin_refill_ms, now);
		k->acct[i].t.realarm = realarm;
	}
}

int
throttle_code_opened(struct throttle_keypad *k, int64_t resv, int64_t now)
{
	int i, n = k->nopened < THROTTLE_OPENED_KEEP ? k->nopened :
	    THROTTLE_OPENED_KEEP;

	for (i = 0; i < n; i++)
		if (k->opened[i] == resv)
			return 0;
	k->opened[k->nopened++ % THROTTLE_OPENED_KEEP] = resv;
	throttle_success(&k->code, now);
	return 1;
}

struct throttle_account *
throttle_account_find(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN])
{
	int i;

	for (i = 0; i < THROTTLE_ACCOUNTS; i++)
		if (k->acct[i].used &&
		    memcmp(k->acct[i].key, key, THROTTLE_KEY_LEN) == 0)
			return &k->acct[i];
	return NULL;
}

/*
 * When every slot is taken (a guesser naming ever new ids), the fullest
 * bucket goes: it knows least. Losing one costs nothing that matters,
 * because the keypad's own bucket charges every one of those failures
 * and bounds them all; a lost 'spent' only gives less back.
 */
struct throttle_account *
throttle_account_get(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now,
    struct throttle_account *evicted)
{
	struct throttle_account *a = throttle_account_find(k, key), *best;
	double tok, best_tok = -1e300;
	int i;

	if (evicted != NULL)
		evicted->used = 0;
	if (a != NULL)
		return a;
	best = NULL;
	for (i = 0; i < THROTTLE_ACCOUNTS && best == NULL; i++)
		if (!k->acct[i].used)
			best = &k->acct[i];
	for (i = 0; i < THROTTLE_ACCOUNTS && best == NULL; i++) {
		tok = throttle_tokens(&k->acct[i].t, now) -
		    (double)k->acct[i].spent;
		if (tok > best_tok) {
			best_tok = tok;
			a = &k->acct[i];
		}
	}
	if (best == NULL) {
		best = a;
		if (evicted != NULL)
			*evicted = *best;
	}
	throttle_init(&best->t, k->pin.burst, (int64_t)k->pin.refill_ms, now);
	best->t.refill_ms = k->pin.refill_ms;
	best->t.realarm = k->pin.realarm;
	memcpy(best->key, key, THROTTLE_KEY_LEN);
	best->used = 1;
	best->spent = 0;
	return best;
}

int64_t
throttle_pin_wait(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now)
{
	struct throttle_account *a = throttle_account_find(k, key);
	int64_t w = throttle_wait(&k->pin, now), wa;

	if (a != NULL && (wa = throttle_wait(&a->t, now)) > w)
		w = wa;
	return w;
}

int
throttle_pin_fail(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now)
{
	struct throttle_account *a = throttle_account_get(k, key, now, NULL);
	int alarm = 0;

	if (throttle_fail(&k->pin, now))
		alarm |= THROTTLE_ALARM_KEYPAD;
	if (throttle_fail(&a->t, now))
		alarm |= THROTTLE_ALARM_ACCOUNT;
	a->spent++;
	return alarm;
}

void
throttle_pin_ok(struct throttle_keypad *k,
    const uint8_t key[THROTTLE_KEY_LEN], int64_t now)
{
	struct throttle_account *a = throttle_account_find(k, key);
	double back;

	if (a == NULL)
		return;
	/* Only this account's own failures come back, and never past a
	 * full bucket: whatever else the keypad spent stays spent. */
	back = (double)a->spent;
	refill(&k->pin, now);
	if (k->pin.tokens + back > k->pin.burst)
		back = k->pin.burst - k->pin.tokens;
	if (back > 0)
		k->pin.tokens += back;
	if (k->pin.tokens >= k->pin.burst)
		k->pin.alarmed = 0;
	a->spent = 0;
	throttle_success(&a->t, now);
}
