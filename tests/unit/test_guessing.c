/*
 * Guessing does not pay (DESIGN.md invariant 6), on a simulated clock,
 * through the real keypad: every attempt is a JSON request to
 * kiosk_handle() of a locker started with lockerd_start_offline(), so the
 * real kiosk.c, throttle.c, resv.c, bank.c, codes.c, staff.c, store.c (a
 * database in memory, or in a folder for the restart) and lockerd.c's
 * step decide. Only the clock (util_mono_ms and util_wall_ms, by
 * --wrap), the lock boards (mb_*: a pulse opens the door unless the test
 * jams it) and the MQTT client (platform_*, never started) are faked,
 * and the random sources have fixed seeds, so a run is the same every
 * time.
 *
 * The arithmetic (README, "Guessing") is checked against simulated
 * stretches: a year of random codes at 500 live codes; a day of the one
 * real code alternated with guesses while every door is jammed; a day of
 * an insider's own log-ins alternated with guesses at another account;
 * a month of PIN guesses at random ids. Each count must be the formula's
 * burst + stretch / refill, and nothing may open.
 */
#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lockerd.h"
#include "log.h"
#include "platform.h"
#include "util.h"

#define LIVE 500
#define DIGITS 10
#define BURST 3
#define REFILL_MS (300 * 1000LL)
#define DAY_MS (86400 * 1000LL)
#define YEAR_MS (365 * DAY_MS)
/* The throttle's highest count in a stretch: burst, then one a refill. */
#define BOUND(ms) (BURST + (ms) / REFILL_MS)

/* ---- The clock ------------------------------------------------------- */

static int64_t sim_ms = 1000;
#define WALL0 1800000000000LL

int64_t __wrap_util_mono_ms(void);
int64_t __wrap_util_wall_ms(void);
int __wrap_crypto_pwhash_str_verify(const char *str, const char *passwd,
    unsigned long long passwdlen);
int __real_crypto_pwhash_str_verify(const char *str, const char *passwd,
    unsigned long long passwdlen);

int64_t
__wrap_util_mono_ms(void)
{
	return sim_ms;
}

int64_t
__wrap_util_wall_ms(void)
{
	return WALL0 + sim_ms;
}

/* The cost of the last PIN hash checked, as staff.c handed it over. */
static char verified[STAFF_HASH_MAX];

int
__wrap_crypto_pwhash_str_verify(const char *str, const char *passwd,
    unsigned long long passwdlen)
{
	util_strlcpy(verified, str, sizeof(verified));
	return __real_crypto_pwhash_str_verify(str, passwd, passwdlen);
}

/* ---- The lock boards: a pulse opens the door unless jammed ------------ */

static struct mb_report fb_queue[256];
static int fb_nq;
static uint8_t fb_door[CONFIG_BOARDS_MAX][BOARD_CHANNELS_MAX];
static int fb_dirty[CONFIG_BOARDS_MAX];
static int fb_jammed;           /* every door stays shut */
static int fb_pulses;

struct mb *
mb_start(const struct config *c)
{
	(void)c;
	return NULL;
}

void
mb_stop(struct mb *m)
{
	(void)m;
}

int
mb_fd(const struct mb *m)
{
	(void)m;
	return -1;
}

int
mb_drain(struct mb *m, struct mb_report *out, int max)
{
	int n = fb_nq < max ? fb_nq : max;

	(void)m;
	memcpy(out, fb_queue, (size_t)n * sizeof(*out));
	memmove(fb_queue, fb_queue + n, (size_t)(fb_nq - n) * sizeof(*out));
	fb_nq -= n;
	return n;
}

static void
fb_push(const struct mb_report *r)
{
	if (fb_nq < (int)(sizeof(fb_queue) / sizeof(fb_queue[0])))
		fb_queue[fb_nq++] = *r;
}

int
mb_unlock(struct mb *m, int board, int channel, int cell)
{
	struct mb_report r;

	(void)m;
	fb_pulses++;
	memset(&r, 0, sizeof(r));
	r.type = MB_REP_UNLOCK;
	r.board = board;
	r.cell = cell;
	r.ok = 1;
	r.at_ms = sim_ms;
	fb_push(&r);
	if (!fb_jammed) {
		fb_door[board][channel - 1] = 1;
		fb_dirty[board] = 1;
	}
	return 0;
}

void
mb_set_timing(struct mb *m, const struct config_timing *t)
{
	(void)m;
	(void)t;
}

/* ---- The platform link: never started --------------------------------- */

struct platform *
platform_start(const struct config_mqtt *c, const char *locker,
    const char *will, char *err, size_t errlen)
{
	(void)c;
	(void)locker;
	(void)will;
	snprintf(err, errlen, "no platform in this test");
	return NULL;
}

void
platform_stop(struct platform *p, const char *final_status)
{
	(void)p;
	(void)final_status;
}

int
platform_fd(const struct platform *p)
{
	(void)p;
	return -1;
}

int
platform_drain(struct platform *p, struct platform_rep *out, int max)
{
	(void)p;
	(void)out;
	(void)max;
	return 0;
}

int
platform_publish(struct platform *p, unsigned gen, const char *sub,
    const char *payload, enum platform_class cls, int retain, int *mid)
{
	(void)p;
	(void)gen;
	(void)sub;
	(void)payload;
	(void)cls;
	(void)retain;
	*mid = 0;
	return -1;
}

void
platform_stats(struct platform *p, struct platform_stats *out)
{
	(void)p;
	memset(out, 0, sizeof(*out));
}

/* ---- The locker ------------------------------------------------------- */

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

static struct lockerd d;        /* large; the bank points into it */
static char dir[64];
static char codes[LIVE][DIGITS + 1];
static char phones[LIVE][5];
static int64_t resv_ids[LIVE];
static int ncodes;

/*
 * 512 cells on 32 boards, no debounce; burst 3, one try back per 300 s
 * (the shipped throttle); the least Argon2id work unless a test asks for
 * more (the time of a hash is not what these tests are about).
 */
static void
locker_config(struct config *c, const char *database, int kib, int passes)
{
	char text[8192], err[512];
	size_t off = 0;
	int i;

	off += (size_t)snprintf(text + off, sizeof(text) - off,
	    "[locker]\nid = guess\nstate_dir = %s\ndatabase = %s\n"
	    "[timing]\ndebounce_ms = 0\nunlock_confirm_ms = 3000\n"
	    "unlock_retries = 1\n"
	    "[kiosk]\ncode_burst = %d\ncode_refill_s = %lld\n"
	    "pin_burst = %d\npin_refill_s = %lld\npin_hash_kib = %d\n"
	    "pin_hash_passes = %d\nstaff_session_s = 3600\n"
	    "[bus b]\ntype = tcp\nhost = 127.0.0.1\nport = 1\n", dir,
	    database, BURST, REFILL_MS / 1000, BURST, REFILL_MS / 1000, kib,
	    passes);
	for (i = 1; i <= 32; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off,
		    "[board B%d]\nbus = b\nunit = %d\nprofile = generic-16\n",
		    i, i);
	off += (size_t)snprintf(text + off, sizeof(text) - off, "[cells]\n");
	for (i = 1; i <= 32; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off,
		    "%d-%d = B%d:1 S\n", (i - 1) * 16 + 1, i * 16, i);
	assert_true(off < sizeof(text));
	if (config_load_text(c, text, "test_guessing", err, sizeof(err)) ==
	    -1)
		fail_msg("%s", err);
}

/* As after the first read: every door closed, every board answering. */
static void
locker_start(const struct config *c)
{
	struct bank_actions acts;
	int i;

	memset(&d, 0, sizeof(d));
	d.cfg = *c;
	assert_int_equal(lockerd_start_offline(&d), 0);
	for (i = 0; i < d.cfg.ncells; i++)
		d.cells[i].door = BANK_DOOR_CLOSED;
	for (i = 0; i < d.cfg.nboards; i++)
		d.boards[i].ok = d.boards[i].seen = 1;
	memset(&acts, 0, sizeof(acts));
	bank_reconcile(&d.bank, sim_ms, &acts);
	assert_int_equal(lockerd_apply(&d, &acts), 0);
}

static void
locker_stop(void)
{
	lockerd_stop(&d);
}

static struct config *
locker_new(const char *database, int nlive, int with_phone, int kib,
    int passes)
{
	static struct config c;
	uint8_t ph[CODES_HASH_LEN];
	struct lockerd_step *s = calloc(1, sizeof(*s));
	int i, slot;

	assert_non_null(s);
	assert_int_equal(codes_init(), 0);
	log_init("test_guessing", LOG_LEVEL_ERROR, 0);
	/* As main.c: what lockerd creates is its own. */
	umask(077);
	snprintf(dir, sizeof(dir), "/tmp/test_guessing.XXXXXX");
	assert_non_null(mkdtemp(dir));
	sim_ms = 1000;
	fb_jammed = 0;
	fb_pulses = 0;
	fb_nq = 0;
	memset(fb_door, 0, sizeof(fb_door));
	memset(fb_dirty, 0, sizeof(fb_dirty));
	locker_config(&c, database, kib, passes);
	locker_start(&c);
	/* nlive codes, made the way lockerd makes them, known to the test. */
	rng_state = 0x9e3779b97f4a7c15ULL;
	codes_set_uniform(fixed_uniform);
	for (i = 0; i < nlive; i++) {
		codes_generate(phones[i], 4);
		if (with_phone)
			codes_hash(d.keys, "phone", phones[i], ph);
		lockerd_step_init(s);
		s->handed_over = 1;
		assert_int_equal(resv_reserve(&d.resv, "A-1", 'S',
		    WALL0 + 2 * YEAR_MS, with_phone ? ph : NULL, lockerd_now(),
		    &s->resv, &slot), RESV_OK);
		assert_int_equal(lockerd_run(&d, s), 0);
		assert_int_equal(s->nissued, 1);
		memcpy(codes[i], s->issued[0].code, sizeof(codes[i]));
		resv_ids[i] = d.resv.r[slot].id;
	}
	codes_set_uniform(NULL);
	ncodes = nlive;
	free(s);
	return &c;
}

static void
rm_state(void)
{
	static const char *const f[] = { "device.key", "lockerd.db",
		"lockerd.db-wal", "lockerd.db-shm", "lockerd.db-journal" };
	char p[128];
	size_t i;

	for (i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, f[i]);
		unlink(p);
	}
	rmdir(dir);
}

static void
locker_free(void)
{
	locker_stop();
	rm_state();
}

/*
 * The world turns: the boards report what their doors do (an unlock
 * that was not jammed opened its door), and lockerd's timers run.
 */
static void
world(void)
{
	struct mb_report r;
	int b;

	for (b = 0; b < d.cfg.nboards; b++) {
		if (!fb_dirty[b])
			continue;
		fb_dirty[b] = 0;
		memset(&r, 0, sizeof(r));
		r.type = MB_REP_INPUTS;
		r.board = b;
		r.ok = 1;
		r.nchannels = 16;
		memcpy(r.door_open, fb_door[b], sizeof(r.door_open));
		r.at_ms = sim_ms;
		fb_push(&r);
	}
	while (fb_nq > 0)
		lockerd_mb_dispatch(&d);
	lockerd_tick(&d);
}

/* The person at the door closes it. */
static void
close_door(int cell)
{
	const struct bank_cell *c = &d.cells[bank_cell_index(&d.bank, cell)];

	fb_door[c->board][c->channel - 1] = 0;
	fb_dirty[c->board] = 1;
	world();
}

static void
advance(int64_t ms)
{
	sim_ms += ms;
	world();
}

/* One keypad request; the reply's "error" ("" for ok) and wait_s. */
struct reply {
	char error[32];
	int64_t wait_s;
	int cell;
};

static struct reply
ask(json_t *req)
{
	struct reply out;
	json_t *rep;
	const char *e;

	assert_non_null(req);
	rep = kiosk_handle(&d, req);
	json_decref(req);
	assert_non_null(rep);
	memset(&out, 0, sizeof(out));
	if (!json_is_true(json_object_get(rep, "ok"))) {
		e = json_string_value(json_object_get(rep, "error"));
		assert_non_null(e);
		util_strlcpy(out.error, e, sizeof(out.error));
	}
	out.wait_s = json_integer_value(json_object_get(rep, "wait_s"));
	out.cell = (int)json_integer_value(json_object_get(rep, "cell"));
	json_decref(rep);
	world();
	return out;
}

static struct reply
code(const char *digits, const char *phone)
{
	return ask(phone ? json_pack("{s:s, s:s, s:s}", "op", "code", "code",
	    digits, "phone", phone) : json_pack("{s:s, s:s}", "op", "code",
	    "code", digits));
}

static struct reply
login(const char *id, const char *pin)
{
	return ask(json_pack("{s:s, s:s, s:s}", "op", "login", "staff", id,
	    "pin", pin));
}

static void
random_digits(char *out, int n)
{
	int i;

	for (i = 0; i < n; i++)
		out[i] = (char)('0' + rng_next() % 10);
	out[n] = '\0';
}

static void
add_staff(const char *id, const char *role, const char *pin, int kib,
    int passes)
{
	struct staff st;

	memset(&st, 0, sizeof(st));
	util_strlcpy(st.id, id, sizeof(st.id));
	util_strlcpy(st.name, id, sizeof(st.name));
	util_strlcpy(st.role, role, sizeof(st.role));
	assert_int_equal(staff_hash_pin(pin, kib, passes, st.pin_hash), 0);
	st.created = lockerd_now();
	assert_int_equal(staff_put(d.store, d.keys, &st), 0);
}

struct count_arg {
	const char *type, *what;
	int n;
	int64_t last;
};

static int
count_one(int64_t seq, const char *body, void *arg)
{
	struct count_arg *ca = arg;
	json_t *o = json_loads(body, 0, NULL);
	const char *t = json_string_value(json_object_get(o, "type"));
	const char *w = json_string_value(json_object_get(o, "what"));

	ca->last = seq;
	if (t != NULL && strcmp(t, ca->type) == 0 &&
	    (ca->what == NULL || (w != NULL && strcmp(w, ca->what) == 0)))
		ca->n++;
	json_decref(o);
	return 0;
}

/* Ledger events of a type (and "what") after seq. */
static int
count_events(const char *type, const char *what, int64_t after)
{
	struct count_arg ca = { type, what, 0, after };
	int64_t before;

	do {
		before = ca.last;
		assert_int_equal(store_events_after(d.store, ca.last, 1000,
		    count_one, &ca), 0);
	} while (ca.last != before);
	return ca.n;
}

/* ---- Codes ------------------------------------------------------------ */

static void
test_a_year_of_code_guessing(void **state)
{
	int64_t start, wait_ms, max_wait = 0, attempts = 0, opened = 0;
	char guess[DIGITS + 1];
	struct reply r;
	int alarms;
	double expected;

	(void)state;
	locker_new(":memory:", LIVE, 0, 8, 1);
	start = sim_ms;
	rng_state = 0x2545f4914f6cdd1dULL;
	while (sim_ms - start < YEAR_MS) {
		random_digits(guess, DIGITS);
		r = code(guess, NULL);
		if (strcmp(r.error, "wait") == 0) {
			/* The keypad refuses until then: the guesser waits. */
			wait_ms = r.wait_s * 1000;
			assert_true(wait_ms > 0);
			if (wait_ms > max_wait)
				max_wait = wait_ms;
			advance(wait_ms);
			continue;
		}
		attempts++;
		if (r.error[0] == '\0')
			opened++;
		else
			assert_string_equal(r.error, "invalid_code");
	}
	alarms = count_events("guessing", "code", 0);
	expected = (double)attempts * LIVE / 1e10;
	print_message("a year at the throttle's highest rate: %lld codes "
	    "tried (the bound: %lld), longest wait %lld s, %d guessing "
	    "alarm(s), %lld cells opened; expected opens %.4f a year (%lld x "
	    "%d / 10^%d)\n", (long long)attempts, (long long)BOUND(YEAR_MS),
	    (long long)(max_wait / 1000), alarms, (long long)opened, expected,
	    (long long)attempts, LIVE, DIGITS);
	assert_true(attempts <= BOUND(YEAR_MS));
	assert_true(attempts >= BOUND(YEAR_MS) - 1);
	assert_true(expected < 0.01);
	assert_int_equal(opened, 0);
	assert_int_equal(fb_pulses, 0);
	/* Never locked for more than five minutes at a time. */
	assert_true(max_wait <= REFILL_MS);
	/* The episode never ended: one alarm when it began, then one every
	 * KIOSK_REALARM failures, about three a day. */
	assert_int_equal(alarms, 1 + (attempts - BURST) / KIOSK_REALARM);
	locker_free();
}

static void
test_mistypes_are_not_delayed(void **state)
{
	char wrong[DIGITS + 1];
	struct reply r;
	int cell;

	(void)state;
	locker_new(":memory:", 4, 0, 8, 1);
	/* Two mistypes (a digit off), then the right code: no wait. */
	memcpy(wrong, codes[1], sizeof(wrong));
	wrong[3] = wrong[3] == '9' ? '0' : (char)(wrong[3] + 1);
	assert_string_equal(code(wrong, NULL).error, "invalid_code");
	assert_string_equal(code(wrong, NULL).error, "invalid_code");
	r = code(codes[1], NULL);
	assert_string_equal(r.error, "");
	cell = r.cell;
	assert_int_equal(count_events("guessing", NULL, 0), 0);
	/* Its door opened: that, and not the accepted code, gave the tries
	 * back, so the next person may mistype twice too ... */
	close_door(cell);
	assert_string_equal(code(wrong, NULL).error, "invalid_code");
	assert_string_equal(code(wrong, NULL).error, "invalid_code");
	assert_int_equal(count_events("guessing", NULL, 0), 0);
	/* ... and a third failure in a row waits, at most 5 minutes. */
	assert_string_equal(code(wrong, NULL).error, "invalid_code");
	assert_int_equal(count_events("guessing", "code", 0), 1);
	r = code(codes[2], NULL);
	assert_string_equal(r.error, "wait");
	assert_true(r.wait_s > 0 && r.wait_s * 1000 <= REFILL_MS);
	advance(r.wait_s * 1000);
	assert_string_equal(code(codes[2], NULL).error, "");
	locker_free();
}

/*
 * Issue 22, 1: with every door held shut, the one real code alternated
 * with two guesses gave a guesser unlimited tries, because each accepted
 * code refilled the bucket. Now an accepted code whose door never opens
 * gives nothing back, and entering it while its unlock is under way is
 * "in_progress": over a simulated day the guesses evaluated are exactly
 * what the throttle allows anyone.
 */
static void
test_jammed_door_gives_no_tries_back(void **state)
{
	int64_t start, guesses = 0, accepted = 0, in_progress = 0, other = 0;
	char guess[DIGITS + 1];
	struct reply r;
	int turn = 0;

	(void)state;
	locker_new(":memory:", 1, 0, 8, 1);
	fb_jammed = 1;
	start = sim_ms;
	rng_state = 0x1234567887654321ULL;
	while (sim_ms - start < DAY_MS) {
		if (turn++ % 3 == 0) {
			r = code(codes[0], NULL);
			if (r.error[0] == '\0')
				accepted++;
			else if (strcmp(r.error, "in_progress") == 0)
				in_progress++;
			else if (strcmp(r.error, "wait") != 0)
				other++;
		} else {
			random_digits(guess, DIGITS);
			r = code(guess, NULL);
			if (strcmp(r.error, "invalid_code") == 0)
				guesses++;
		}
		if (strcmp(r.error, "wait") == 0)
			advance(r.wait_s * 1000);
		else
			advance(100);
	}
	print_message("a day of the real code between guesses, doors "
	    "jammed: %lld guesses evaluated (the bound: %lld), the code "
	    "accepted %lld times, in progress %lld, refused otherwise %lld, "
	    "%d pulses\n", (long long)guesses, (long long)BOUND(DAY_MS),
	    (long long)accepted, (long long)in_progress, (long long)other,
	    fb_pulses);
	assert_true(guesses <= BOUND(DAY_MS));
	assert_true(guesses >= BOUND(DAY_MS) - 1);
	assert_true(accepted > 0 && in_progress > 0);
	assert_true(count_events("guessing", "code", 0) >= 1);
	locker_free();
}

/* A code opens its door once: one refill, then the code is dead. */
static void
test_one_code_refills_once(void **state)
{
	struct reply r;
	int i, cell;

	(void)state;
	locker_new(":memory:", 2, 0, 8, 1);
	for (i = 0; i < BURST; i++)
		assert_string_equal(code("0000000000", NULL).error,
		    "invalid_code");
	r = code(codes[0], NULL);
	assert_string_equal(r.error, "wait");
	advance(r.wait_s * 1000);
	r = code(codes[0], NULL);
	assert_string_equal(r.error, "");
	cell = r.cell;
	/* While its door stands open the code is used, and nothing more
	 * comes back. */
	for (i = 0; i < BURST; i++)
		assert_string_equal(code("0000000000", NULL).error,
		    "invalid_code");
	assert_string_equal(code(codes[0], NULL).error, "wait");
	close_door(cell);
	r = code(codes[0], NULL);
	assert_string_equal(r.error, "wait");
	advance(r.wait_s * 1000);
	assert_string_equal(code(codes[0], NULL).error, "used");
	assert_string_equal(code("0000000000", NULL).error, "invalid_code");
	assert_string_equal(code(codes[1], NULL).error, "wait");
	locker_free();
}

/* ---- The second factor -------------------------------------------------- */

static void
test_second_factor(void **state)
{
	char other[5], cred[CODES_CRED_MAX];
	struct reply r;
	int slot;

	(void)state;
	locker_new(":memory:", 2, 1, 8, 1);
	memcpy(other, phones[0], sizeof(other));
	other[3] = other[3] == '9' ? '0' : (char)(other[3] + 1);
	/* The right code alone, or with the wrong phone digits, is refused
	 * exactly as a wrong code is. */
	assert_string_equal(code(codes[0], NULL).error, "invalid_code");
	assert_string_equal(code(codes[0], other).error, "invalid_code");
	/* The scanned credential too (issue 22, 5): the screen asks for the
	 * digits, wrong ones count as a wrong code, the right ones open. */
	slot = resv_slot_of_id(&d.resv, resv_ids[1]);
	assert_int_equal(lockerd_credential(&d, &d.resv.r[slot], cred,
	    sizeof(cred)), 0);
	assert_string_equal(ask(json_pack("{s:s, s:s}", "op", "scan",
	    "credential", cred)).error, "phone_needed");
	memcpy(other, phones[1], sizeof(other));
	other[0] = other[0] == '9' ? '0' : (char)(other[0] + 1);
	assert_string_equal(ask(json_pack("{s:s, s:s, s:s}", "op", "scan",
	    "credential", cred, "phone", other)).error, "invalid_code");
	assert_int_equal(fb_pulses, 0);
	/* Three failures: even the right digits wait now. */
	r = ask(json_pack("{s:s, s:s, s:s}", "op", "scan", "credential",
	    cred, "phone", phones[1]));
	assert_string_equal(r.error, "wait");
	advance(r.wait_s * 1000);
	r = ask(json_pack("{s:s, s:s, s:s}", "op", "scan", "credential",
	    cred, "phone", phones[1]));
	assert_string_equal(r.error, "");
	assert_int_equal(fb_pulses, 1);
	locker_free();
}

/* ---- PINs --------------------------------------------------------------- */

/*
 * Issue 22, 2: a staff member who logs in with their own PIN between
 * guesses at another account refilled the keypad's PIN bucket each time.
 * Over a simulated day of exactly that, the guesses at "boss" are what the
 * throttle allows anyone, the insider's own log-ins all work, and the
 * guessing alarm names the account aimed at.
 */
static void
test_insider_buys_no_tries(void **state)
{
	int64_t start, guesses = 0, own = 0, boss_in = 0;
	char guess[9];
	struct reply r;
	int turn = 0;

	(void)state;
	locker_new(":memory:", 1, 0, 8, 1);
	add_staff("clerk", "staff", "24681357", 8, 1);
	add_staff("boss", "admin", "97531864", 8, 1);
	start = sim_ms;
	rng_state = 0x0badc0ffee0ddf00ULL;
	while (sim_ms - start < DAY_MS) {
		if (turn++ % 3 == 0) {
			r = login("clerk", "24681357");
			own += r.error[0] == '\0';
		} else {
			random_digits(guess, 8);
			r = login("boss", guess);
			guesses += strcmp(r.error, "bad_login") == 0;
			boss_in += r.error[0] == '\0';
		}
		if (strcmp(r.error, "wait") == 0)
			advance(r.wait_s * 1000);
		else
			advance(100);
	}
	print_message("a day of own log-ins between guesses at boss: %lld "
	    "guesses evaluated (the bound: %lld), %lld own log-ins, %lld as "
	    "boss, %d guessing alarm(s)\n", (long long)guesses,
	    (long long)BOUND(DAY_MS), (long long)own, (long long)boss_in,
	    count_events("guessing", "pin", 0));
	assert_true(guesses <= BOUND(DAY_MS));
	assert_true(guesses >= BOUND(DAY_MS) - 1);
	assert_int_equal(boss_in, 0);
	assert_true(own > 0);
	assert_true(count_events("guessing", "pin", 0) >= 1);
	locker_free();
}

/* Only a log-in's own failures come back, never those spent on others. */
static void
test_own_login_gives_back_only_its_own(void **state)
{
	(void)state;
	locker_new(":memory:", 1, 0, 8, 1);
	add_staff("clerk", "staff", "24681357", 8, 1);
	add_staff("boss", "admin", "97531864", 8, 1);
	/* The clerk mistypes twice, then logs in: those two come back. */
	assert_string_equal(login("clerk", "11111111").error, "bad_login");
	assert_string_equal(login("clerk", "22222222").error, "bad_login");
	assert_string_equal(login("clerk", "24681357").error, "");
	assert_string_equal(login("nobody", "33333333").error, "bad_login");
	assert_string_equal(login("nobody", "44444444").error, "bad_login");
	assert_string_equal(login("nobody", "55555555").error, "bad_login");
	assert_string_equal(login("clerk", "24681357").error, "wait");
	advance(3 * REFILL_MS);
	/* Two guesses at boss, then the clerk's own log-in gives nothing
	 * back: one more failure empties the keypad's bucket. */
	assert_string_equal(login("boss", "11111111").error, "bad_login");
	assert_string_equal(login("boss", "22222222").error, "bad_login");
	assert_string_equal(login("clerk", "24681357").error, "");
	assert_string_equal(login("zed", "33333333").error, "bad_login");
	assert_string_equal(login("clerk", "24681357").error, "wait");
	assert_string_equal(login("zed", "44444444").error, "wait");
	locker_free();
}

/* A month of random ids and PINs: the bound, and a wait is a wait
 * whether the id exists or not. */
static void
test_a_month_of_pin_guessing(void **state)
{
	int64_t start, tries = 0, in = 0, month = 30 * DAY_MS;
	char id[8], pin[9];
	struct reply r;

	(void)state;
	locker_new(":memory:", 1, 0, 8, 1);
	add_staff("alice", "staff", "13572468", 8, 1);
	start = sim_ms;
	rng_state = 0x5eed5eed5eed5eedULL;
	while (sim_ms - start < month) {
		if (rng_next() % 4 == 0)
			util_strlcpy(id, "alice", sizeof(id));
		else
			snprintf(id, sizeof(id), "s%05u",
			    (unsigned)(rng_next() % 100000));
		random_digits(pin, 8);
		r = login(id, pin);
		if (strcmp(r.error, "wait") == 0) {
			/* alice's own bucket may be dry while the keypad's
			 * is not: a guesser names someone else then. */
			if (strcmp(id, "alice") != 0)
				advance(r.wait_s * 1000);
			continue;
		}
		tries++;
		in += r.error[0] == '\0';
		assert_string_equal(r.error, "bad_login");
	}
	print_message("a month of PIN guesses: %lld tries (the bound: %lld), "
	    "%lld log-ins\n", (long long)tries, (long long)BOUND(month),
	    (long long)in);
	assert_true(tries <= BOUND(month) && tries >= BOUND(month) - 1);
	assert_int_equal(in, 0);
	locker_free();
}

/*
 * Issue 22, 8: an unknown id was checked against a hash of 8 MiB / 3
 * passes whatever an account cost, so a costly account's log-in took far
 * longer and told the id. The dummy costs exactly the configured cost, as
 * every account's hash must (staff_cost_check).
 */
static void
test_unknown_id_costs_the_configured_cost(void **state)
{
	long kib, passes;

	(void)state;
	locker_new(":memory:", 1, 0, 64, 2);
	add_staff("alice", "staff", "13572468", 64, 2);
	verified[0] = '\0';
	assert_string_equal(login("alice", "11111111").error, "bad_login");
	assert_int_equal(staff_hash_cost(verified, &kib, &passes), 0);
	assert_int_equal(kib, 64);
	assert_int_equal(passes, 2);
	verified[0] = '\0';
	assert_string_equal(login("nosuchid", "11111111").error, "bad_login");
	assert_int_equal(staff_hash_cost(verified, &kib, &passes), 0);
	assert_int_equal(kib, 64);
	assert_int_equal(passes, 2);
	/* A hash that costs more than configured is not even verified. */
	add_staff("bob", "staff", "13572468", 128, 3);
	verified[0] = '\0';
	assert_string_equal(login("bob", "13572468").error, "bad_login");
	assert_int_equal(staff_hash_cost(verified, &kib, &passes), 0);
	assert_int_equal(kib, 64);
	assert_int_equal(passes, 2);
	locker_free();
}

/* ---- A restart ---------------------------------------------------------- */

/* Issue 22, 8: the throttle lived in memory; a restart refilled it. */
static void
test_throttle_survives_a_restart(void **state)
{
	static struct config c;
	char db[96];
	struct reply r;
	int i;

	(void)state;
	/* A database in the folder, so that the restart finds it. */
	c = *locker_new(":memory:", 0, 0, 8, 1);
	locker_stop();
	snprintf(db, sizeof(db), "%s/lockerd.db", dir);
	locker_config(&c, db, 8, 1);
	locker_start(&c);
	add_staff("alice", "staff", "13572468", 8, 1);
	for (i = 0; i < BURST; i++) {
		assert_string_equal(code("0000000000", NULL).error,
		    "invalid_code");
		assert_string_equal(login("alice", "11111111").error,
		    "bad_login");
	}
	assert_string_equal(code("0000000000", NULL).error, "wait");
	assert_string_equal(login("alice", "13572468").error, "wait");
	/* The power goes; the locker is back 100 s later. */
	locker_stop();
	sim_ms += 100 * 1000;
	locker_start(&c);
	r = code("0000000000", NULL);
	assert_string_equal(r.error, "wait");
	assert_true(r.wait_s <= 200 && r.wait_s > 190);
	r = login("alice", "13572468");
	assert_string_equal(r.error, "wait");
	assert_true(r.wait_s <= 200 && r.wait_s > 190);
	/* The time it was off counted: 200 s more and a try is back. */
	advance(200 * 1000);
	assert_string_equal(code("0000000000", NULL).error, "invalid_code");
	assert_string_equal(code("0000000000", NULL).error, "wait");
	assert_string_equal(login("alice", "13572468").error, "");
	locker_free();
}

/* ---- The bucket itself ------------------------------------------------- */

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

/*
 * A guesser naming ever new ids pushes old buckets out of the table; the
 * keypad's own bucket charged each of those failures, so the rate stays
 * bounded, and the bucket pushed out is the fullest.
 */
static void
test_many_ids_stay_bounded(void **state)
{
	struct throttle_keypad k;
	struct throttle_account ev;
	uint8_t key[THROTTLE_KEY_LEN];
	int64_t now = 0, tries = 0;
	int i;

	(void)state;
	throttle_keypad_init(&k, BURST, REFILL_MS, BURST, REFILL_MS,
	    KIOSK_REALARM, now);
	memset(key, 0, sizeof(key));
	for (i = 0; i < 10 * THROTTLE_ACCOUNTS; i++) {
		memcpy(key, &i, sizeof(i));
		now += throttle_pin_wait(&k, key, now);
		throttle_account_get(&k, key, now, &ev);
		throttle_pin_fail(&k, key, now);
		tries++;
	}
	assert_true(now >= (tries - BURST) * REFILL_MS);
	assert_non_null(throttle_account_find(&k, key));
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
		cmocka_unit_test(test_a_year_of_code_guessing),
		cmocka_unit_test(test_mistypes_are_not_delayed),
		cmocka_unit_test(test_jammed_door_gives_no_tries_back),
		cmocka_unit_test(test_one_code_refills_once),
		cmocka_unit_test(test_second_factor),
		cmocka_unit_test(test_insider_buys_no_tries),
		cmocka_unit_test(test_own_login_gives_back_only_its_own),
		cmocka_unit_test(test_a_month_of_pin_guessing),
		cmocka_unit_test(test_unknown_id_costs_the_configured_cost),
		cmocka_unit_test(test_throttle_survives_a_restart),
		cmocka_unit_test(test_alarm_once_per_episode),
		cmocka_unit_test(test_alarm_again_while_guessing_goes_on),
		cmocka_unit_test(test_many_ids_stay_bounded),
		cmocka_unit_test(test_rate_charged_at_arrival),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
