/*
 * The keypad throttle: a token bucket of failed attempts (throttle.h).
 */
#include "throttle.h"

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
