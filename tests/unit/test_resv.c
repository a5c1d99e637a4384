/*
 * The reservation state machine, transition by transition: each test feeds
 * calls with a simulated wall clock against a fake bank and compares the
 * actions with a golden string, e.g. "code_used:1 save:1=opening
 * unlock:1/dropoff". Refusals are checked by their code and change nothing.
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
#include "resv.h"

#define NCELLS 5
#define NHASH 8
#define GRACE 10000
#define DUE 100000
#define LATER 1000000 /* a drop-off valid_until far beyond the test */

/*
 * Cell number n is index n - 1: 1 S, 2 S, 3 M on board 0; 4 M, 5 L on
 * board 1. All in service, doors closed, boards answering, no item sensor.
 */
struct fixture {
	struct bank b;
	struct bank_cell cells[NCELLS];
	struct bank_board boards[2];
	struct resv_table t;
	struct resv_actions acts;
	uint8_t h[NHASH][RESV_HASH_LEN]; /* fake code and phone hashes */
	char out[2048];
	char note[128];                  /* the last NOTICE rendered */
};

static const struct bank_timing btiming = {
	.debounce_ms = 50,
	.unlock_confirm_ms = 1000,
	.unlock_retries = 1,
	.door_left_open_ms = 10000,
	.door_left_open_repeat_ms = 5000,
};

static const struct resv_timing timing = {
	.grace_ms = GRACE,
	.pickup_due_ms = DUE,
};

static int
fixture_reset(struct fixture *f)
{
	static const struct {
		int number, board, channel;
		char size;
	} layout[NCELLS] = {
		{ 1, 0, 1, 'S' }, { 2, 0, 2, 'S' }, { 3, 0, 3, 'M' },
		{ 4, 1, 1, 'M' }, { 5, 1, 2, 'L' },
	};
	int i;

	resv_free(&f->t);
	memset(f->cells, 0, sizeof(f->cells));
	for (i = 0; i < NCELLS; i++) {
		f->cells[i].number = layout[i].number;
		f->cells[i].board = layout[i].board;
		f->cells[i].channel = layout[i].channel;
		f->cells[i].size = layout[i].size;
		f->cells[i].door = BANK_DOOR_CLOSED;
		f->cells[i].in_service = 1;
		f->cells[i].item = -1;
	}
	bank_init(&f->b, f->cells, NCELLS, f->boards, 2, &btiming);
	f->b.started = 1;
	memset(&f->acts, 0, sizeof(f->acts));
	f->note[0] = '\0';
	return resv_init(&f->t, &f->b, &timing, 100);
}

static int
setup(void **state)
{
	struct fixture *f;
	int i;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return -1;
	for (i = 0; i < NHASH; i++)
		memset(f->h[i], 0x10 + i, RESV_HASH_LEN);
	if (fixture_reset(f) == -1) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	resv_free(&f->t);
	free(f);
	return 0;
}

/* Renders the actions gathered since the last call, then clears them. */
static const char *
render(struct fixture *f)
{
	size_t len = 0;
	int i;

	f->out[0] = '\0';
	for (i = 0; i < f->acts.n; i++) {
		const struct resv_action *a = &f->acts.a[i];
		int num = a->slot >= 0 ? f->cells[a->cell].number : 0;
		char item[96];

		if (a->slot >= 0)
			assert_int_equal(a->cell, a->r.cell);
		switch (a->type) {
		case RESV_ACT_EVENT:
			if (a->ev == RESV_EV_REASSIGNED)
				snprintf(item, sizeof(item), "%s:%d<%d",
				    resv_event_name(a->ev), num,
				    f->cells[a->from_cell].number);
			else
				snprintf(item, sizeof(item), "%s:%d",
				    resv_event_name(a->ev), num);
			break;
		case RESV_ACT_SAVE:
			snprintf(item, sizeof(item), "save:%d=%s", num,
			    resv_state_name(a->r.state));
			break;
		case RESV_ACT_UNLOCK:
			snprintf(item, sizeof(item), "unlock:%d/%s", num,
			    a->reason);
			break;
		case RESV_ACT_NEED_CODE:
			snprintf(item, sizeof(item), "need_code:%d", num);
			break;
		case RESV_ACT_NOTICE:
			if (a->slot >= 0)
				snprintf(item, sizeof(item), "notice:%d", num);
			else
				snprintf(item, sizeof(item), "notice");
			snprintf(f->note, sizeof(f->note), "%s", a->text);
			break;
		default:
			snprintf(item, sizeof(item), "?%d", (int)a->type);
			break;
		}
		len += (size_t)snprintf(f->out + len, sizeof(f->out) - len,
		    "%s%s", len ? " " : "", item);
	}
	assert_false(f->acts.overflow);
	memset(&f->acts, 0, sizeof(f->acts));
	return f->out;
}

static int
number_of(const struct fixture *f, int slot)
{
	return f->cells[f->t.r[slot].cell].number;
}

static enum resv_state
state_of(const struct fixture *f, int slot)
{
	return f->t.r[slot].state;
}

/* The keypad, without a second factor. */
static enum resv_refusal
enter(struct fixture *f, int code, int64_t now)
{
	int slot = -1;

	return resv_enter(&f->t, f->h[code], NULL, now, &f->acts, &slot);
}

/* What the bank reports once a door has debounced; the fake bank follows. */
static void
opened(struct fixture *f, int number, int64_t now)
{
	f->cells[number - 1].door = BANK_DOOR_OPEN;
	f->cells[number - 1].unlocking = 0;
	resv_door_opened(&f->t, number - 1, now, &f->acts);
}

static void
closed(struct fixture *f, int number, int64_t now)
{
	f->cells[number - 1].door = BANK_DOOR_CLOSED;
	resv_door_closed(&f->t, number - 1, now, &f->acts);
}

static void
failed(struct fixture *f, int number, int64_t now)
{
	f->cells[number - 1].unlocking = 0;
	resv_unlock_failed(&f->t, number - 1, now, &f->acts);
}

static void
tick(struct fixture *f, int64_t now)
{
	resv_tick(&f->t, now, &f->acts);
}

/* A drop-off reserved with code h[code] issued; its actions cleared. */
static int
dropoff(struct fixture *f, char size, int code, int64_t until, int64_t now)
{
	int slot = -1;

	assert_int_equal(resv_reserve(&f->t, "A-1", size, until, NULL, now,
	    &f->acts, &slot), RESV_OK);
	resv_code_set(&f->t, slot, f->h[code], now, &f->acts);
	render(f);
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	return slot;
}

/* Documents inside: reserved, code entered, door opened and closed. */
static int
deposited(struct fixture *f, char size, int code, int64_t now)
{
	int slot = dropoff(f, size, code, LATER, now), n;

	n = number_of(f, slot);
	assert_int_equal(enter(f, code, now), RESV_OK);
	opened(f, n, now);
	closed(f, n, now);
	render(f);
	assert_int_equal(state_of(f, slot), RESV_DEPOSITED);
	return slot;
}

/* A certificate loaded at now, pickup code h[code]; due at now + DUE. */
static int
pickup(struct fixture *f, char size, int code, int64_t now)
{
	int slot = -1, n;

	assert_int_equal(resv_load(&f->t, "P-1", size, "staff7", now,
	    &f->acts, &slot), RESV_OK);
	n = number_of(f, slot);
	opened(f, n, now);
	closed(f, n, now);
	resv_code_set(&f->t, slot, f->h[code], now, &f->acts);
	render(f);
	assert_int_equal(state_of(f, slot), RESV_READY);
	return slot;
}

static void
test_reserve_issues_a_code(void **state)
{
	struct fixture *f = *state;
	const struct resv *r;
	int slot = -1;

	assert_int_equal(resv_reserve(&f->t, "APP-1", 'S', 5000, NULL, 1000,
	    &f->acts, &slot), RESV_OK);
	assert_int_equal(f->acts.a[0].r.id, 100);
	assert_string_equal(render(f), "dropoff_reserved:1 need_code:1");
	r = &f->t.r[slot];
	assert_int_equal(r->id, 100);
	assert_int_equal(r->kind, RESV_DROPOFF);
	assert_int_equal(r->state, RESV_RESERVED);
	assert_int_equal(r->cell, 0);
	assert_string_equal(r->app, "APP-1");
	assert_int_equal(r->valid_until, 5000);
	assert_int_equal(r->created_at, 1000);
	assert_false(r->has_code);
	assert_false(r->has_phone);
	/* No code yet: nothing opens it. */
	assert_int_equal(enter(f, 1, 1100), RESV_ERR_NO_CODE);
	resv_code_set(&f->t, slot, f->h[1], 1200, &f->acts);
	assert_string_equal(render(f), "code_issued:1 save:1=reserved");
	assert_true(r->has_code);
	assert_int_equal(r->issued, 1);
	assert_memory_equal(r->code_hash, f->h[1], RESV_HASH_LEN);
	assert_int_equal(resv_slot_of_id(&f->t, 100), slot);
	assert_int_equal(resv_slot_of_cell(&f->t, 0), slot);
	assert_int_equal(resv_slot_of_id(&f->t, 0), -1);
}

/* S fills S cells first, then the smaller of the larger sizes. */
static void
test_reserve_smallest_fit(void **state)
{
	static const char *const want[] = {
		"dropoff_reserved:1 need_code:1",
		"dropoff_reserved:2 need_code:2",
		"dropoff_reserved:3 need_code:3",
		"dropoff_reserved:4 need_code:4",
		"dropoff_reserved:5 need_code:5",
	};
	struct fixture *f = *state;
	size_t i;
	int slot;

	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
		    &f->acts, &slot), RESV_OK);
		assert_string_equal(render(f), want[i]);
		assert_int_equal(f->t.r[slot].id, 100 + (int64_t)i);
	}
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_ERR_FULL);
	assert_string_equal(render(f), "");
	/* A refusal spends no id. */
	assert_int_equal(f->t.next_id, 105);

	/* M skips the free S cells and takes M before L. */
	assert_int_equal(fixture_reset(f), 0);
	assert_int_equal(resv_reserve(&f->t, "A", 'M', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:3 need_code:3");
	assert_int_equal(resv_reserve(&f->t, "A", 'M', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:4 need_code:4");
	assert_int_equal(resv_reserve(&f->t, "A", 'M', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:5 need_code:5");
	/* The S cells are free but too small. */
	assert_int_equal(resv_reserve(&f->t, "A", 'M', LATER, NULL, 0,
	    &f->acts, &slot), RESV_ERR_FULL);
	assert_int_equal(resv_reserve(&f->t, "A", 'L', LATER, NULL, 0,
	    &f->acts, &slot), RESV_ERR_FULL);
	assert_string_equal(render(f), "");

	/* Only M and L free: S gets an M. */
	assert_int_equal(fixture_reset(f), 0);
	f->cells[0].in_service = 0;
	f->cells[1].in_service = 0;
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:3 need_code:3");
	/* Only L free: S gets the L. */
	f->cells[3].in_service = 0;
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:5 need_code:5");
}

/* Among cells of one size the lowest number wins, not the lowest index. */
static void
test_reserve_lowest_number(void **state)
{
	struct fixture *f = *state;
	int slot;

	f->cells[0].number = 7;
	f->cells[2].number = 9;
	f->cells[3].number = 8;
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:2 need_code:2");
	assert_int_equal(f->t.r[slot].cell, 1);
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:7 need_code:7");
	assert_int_equal(resv_reserve(&f->t, "A", 'M', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:8 need_code:8");
	assert_int_equal(f->t.r[slot].cell, 3);
}

static void
test_reserve_skips_unusable_cells(void **state)
{
	enum { SERVICE, DOOR_OPEN, DOOR_UNKNOWN, UNLOCKING, ITEM, HELD,
	    NCASES };
	struct fixture *f = *state;
	int i, slot;

	/* Each case spoils cell 1 one way: the S request gets cell 2. */
	for (i = 0; i < NCASES; i++) {
		assert_int_equal(fixture_reset(f), 0);
		switch (i) {
		case SERVICE:
			f->cells[0].in_service = 0;
			break;
		case DOOR_OPEN:
			f->cells[0].door = BANK_DOOR_OPEN;
			break;
		case DOOR_UNKNOWN:
			f->cells[0].door = BANK_DOOR_UNKNOWN;
			break;
		case UNLOCKING:
			f->cells[0].unlocking = 1;
			break;
		case ITEM:
			f->cells[0].item = 1;
			break;
		case HELD:
			dropoff(f, 'S', 1, LATER, 0);
			break;
		}
		assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
		    &f->acts, &slot), RESV_OK);
		assert_string_equal(render(f),
		    "dropoff_reserved:2 need_code:2");
	}
	/* An empty cell (item sensor 0) is usable. */
	assert_int_equal(fixture_reset(f), 0);
	f->cells[0].item = 0;
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:1 need_code:1");
	/* Board 0 down: cells 1 to 3 are skipped, S goes to M cell 4. */
	assert_int_equal(fixture_reset(f), 0);
	f->boards[0].ok = 0;
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:4 need_code:4");
	/* Nothing usable at all: full, and the staff cannot load either. */
	f->cells[3].door = BANK_DOOR_OPEN;
	f->cells[4].in_service = 0;
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 0,
	    &f->acts, &slot), RESV_ERR_FULL);
	assert_int_equal(resv_load(&f->t, "P", 'S', "staff7", 0, &f->acts,
	    &slot), RESV_ERR_FULL);
	assert_string_equal(render(f), "");
}

static void
test_reissue_issues_a_new_code(void **state)
{
	struct fixture *f = *state;
	const struct resv *r;
	int slot, got;

	slot = dropoff(f, 'S', 1, LATER, 0);
	r = &f->t.r[slot];
	assert_int_equal(resv_reissue(&f->t, r->id, 100, &f->acts), RESV_OK);
	assert_string_equal(render(f), "need_code:1");
	/* The old code is dead before the new one exists. */
	assert_false(r->has_code);
	assert_false(resv_code_taken(&f->t, f->h[1]));
	assert_int_equal(enter(f, 1, 200), RESV_ERR_NO_CODE);
	resv_code_set(&f->t, slot, f->h[2], 300, &f->acts);
	assert_string_equal(render(f), "code_reissued:1 save:1=reserved");
	assert_int_equal(r->issued, 2);
	assert_int_equal(enter(f, 1, 400), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter(&f->t, f->h[2], NULL, 500, &f->acts, &got),
	    RESV_OK);
	assert_int_equal(got, slot);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
}

static void
test_enter_right_code(void **state)
{
	struct fixture *f = *state;
	int slot, got = -1;

	slot = dropoff(f, 'S', 1, 5000, 0);
	assert_int_equal(resv_enter(&f->t, f->h[1], NULL, 1000, &f->acts,
	    &got), RESV_OK);
	assert_int_equal(got, slot);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
	assert_int_equal(state_of(f, slot), RESV_OPENING);
	assert_int_equal(f->t.r[slot].consumed_at, 1000);
	assert_false(f->t.r[slot].door_seen_open);
}

static void
test_enter_wrong_code(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, 5000, 0);
	assert_int_equal(enter(f, 2, 1000), RESV_ERR_NO_CODE);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	/* Nothing reserved at all. */
	assert_int_equal(fixture_reset(f), 0);
	assert_int_equal(enter(f, 1, 1000), RESV_ERR_NO_CODE);
	assert_string_equal(render(f), "");
}

static void
test_enter_second_factor(void **state)
{
	struct fixture *f = *state;
	int slot = -1, got;

	assert_int_equal(resv_reserve(&f->t, "A", 'S', 5000, f->h[6], 0,
	    &f->acts, &slot), RESV_OK);
	resv_code_set(&f->t, slot, f->h[1], 0, &f->acts);
	render(f);
	assert_true(f->t.r[slot].has_phone);
	/* Missing or wrong: exactly like a wrong code. */
	assert_int_equal(resv_enter(&f->t, f->h[1], NULL, 1000, &f->acts,
	    &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter(&f->t, f->h[1], f->h[7], 1000, &f->acts,
	    &got), RESV_ERR_NO_CODE);
	/* Even once expired, a wrong second factor says nothing more. */
	assert_int_equal(resv_enter(&f->t, f->h[1], f->h[7], 6000, &f->acts,
	    &got), RESV_ERR_NO_CODE);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	assert_int_equal(resv_enter(&f->t, f->h[1], f->h[6], 1000, &f->acts,
	    &got), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
	/* Without a second factor on record, one given is ignored. */
	dropoff(f, 'S', 2, 5000, 0);
	assert_int_equal(resv_enter(&f->t, f->h[2], f->h[7], 1000, &f->acts,
	    &got), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:2 save:2=opening unlock:2/dropoff");
}

static void
test_enter_expired(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, 5000, 0);
	assert_int_equal(enter(f, 1, 5000), RESV_ERR_EXPIRED);
	assert_int_equal(enter(f, 1, 9000), RESV_ERR_EXPIRED);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	assert_true(f->t.r[slot].has_code);
	assert_int_equal(enter(f, 1, 4999), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
}

static void
test_enter_cell_unavailable(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, 5000, 0);
	f->cells[0].in_service = 0;
	assert_int_equal(enter(f, 1, 1000), RESV_ERR_CELL);
	f->cells[0].in_service = 1;
	f->boards[0].ok = 0;
	assert_int_equal(enter(f, 1, 1000), RESV_ERR_CELL);
	/* The code is not spent by a refusal. */
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	f->boards[0].ok = 1;
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
}

static void
test_dropoff_deposit(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, 5000, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	/* A close before any open is nothing: the door never moved. */
	closed(f, 1, 1200);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_OPENING);
	opened(f, 1, 1500);
	assert_string_equal(render(f), "save:1=open");
	assert_int_equal(state_of(f, slot), RESV_OPEN);
	assert_true(f->t.r[slot].door_seen_open);
	/* Open: the code is spent. */
	assert_int_equal(enter(f, 1, 1600), RESV_ERR_USED);
	assert_string_equal(render(f), "");
	closed(f, 1, 2000);
	assert_string_equal(render(f), "deposited:1 save:1=deposited");
	assert_int_equal(state_of(f, slot), RESV_DEPOSITED);
	assert_int_equal(enter(f, 1, 2100), RESV_ERR_USED);
	assert_string_equal(render(f), "");
	/* The cell stays held for staff, and the spent code stays taken. */
	assert_int_equal(resv_slot_of_cell(&f->t, 0), slot);
	assert_true(resv_code_taken(&f->t, f->h[1]));
	/* Door events a deposited cell does not expect change nothing. */
	opened(f, 1, 3000);
	closed(f, 1, 3100);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_DEPOSITED);
}

/* A door that closes without having been seen open did nothing. */
static void
test_door_closed_unseen_ignored(void **state)
{
	struct fixture *f = *state;
	int load = -1, dep, back;

	back = pickup(f, 'S', 1, 0);
	tick(f, DUE);
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE, &f->acts),
	    RESV_OK);
	dep = deposited(f, 'S', 2, DUE);
	assert_int_equal(resv_retrieve(&f->t, "staff7", DUE, &f->acts),
	    RESV_OK);
	assert_int_equal(resv_load(&f->t, "P", 'S', "staff7", DUE, &f->acts,
	    &load), RESV_OK);
	render(f);
	closed(f, number_of(f, back), DUE + 100);
	closed(f, number_of(f, dep), DUE + 100);
	closed(f, number_of(f, load), DUE + 100);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, back), RESV_TAKING_BACK);
	assert_int_equal(state_of(f, dep), RESV_RETRIEVING);
	assert_int_equal(state_of(f, load), RESV_LOADING);
}

/* Doors that move with no reservation, or in a waiting state. */
static void
test_door_events_elsewhere_ignored(void **state)
{
	struct fixture *f = *state;
	int a, b;

	a = dropoff(f, 'S', 1, LATER, 0);
	b = pickup(f, 'S', 2, 0);
	opened(f, 1, 100);
	closed(f, 1, 200);
	opened(f, 2, 100);
	closed(f, 2, 200);
	opened(f, 5, 100);
	closed(f, 5, 200);
	failed(f, 5, 300);
	/* A jam report for a cell nobody is opening. */
	failed(f, 1, 300);
	failed(f, 2, 300);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, a), RESV_RESERVED);
	assert_int_equal(state_of(f, b), RESV_READY);
	assert_false(f->t.r[a].door_seen_open);
	assert_false(f->t.r[b].door_seen_open);
}

static void
test_grace_reopen(void **state)
{
	struct fixture *f = *state;
	int slot, got = -1;

	slot = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	/* The bank is still trying: the code is in use, no new work (and
	 * no new success, that would refill the keypad's throttle). */
	f->cells[0].unlocking = 1;
	assert_int_equal(resv_enter(&f->t, f->h[1], NULL, 2000, &f->acts,
	    &got), RESV_ERR_IN_PROGRESS);
	assert_int_equal(got, slot);
	assert_string_equal(render(f), "");
	/* The unlock went nowhere (power cut): the code opens it again. */
	f->cells[0].unlocking = 0;
	assert_int_equal(enter(f, 1, 1000 + GRACE - 1), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
	/* The window runs from the first use. */
	assert_int_equal(f->t.r[slot].consumed_at, 1000);
	assert_int_equal(state_of(f, slot), RESV_OPENING);
	assert_int_equal(enter(f, 1, 1000 + GRACE), RESV_ERR_USED);
	f->cells[0].unlocking = 1;
	assert_int_equal(enter(f, 1, 1000 + GRACE), RESV_ERR_USED);
	assert_string_equal(render(f), "");
	/* Inside the window, a cell gone out of service is refused. */
	assert_int_equal(fixture_reset(f), 0);
	dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	f->cells[0].in_service = 0;
	assert_int_equal(enter(f, 1, 2000), RESV_ERR_CELL);
	assert_string_equal(render(f), "");
}

/* The grace window is counted from consumption, not from validity. */
static void
test_grace_reopen_past_valid_until(void **state)
{
	struct fixture *f = *state;

	dropoff(f, 'S', 1, 5000, 0);
	assert_int_equal(enter(f, 1, 4999), RESV_OK);
	render(f);
	assert_int_equal(enter(f, 1, 6000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
	/* Nor does the tick expire a consumed reservation. */
	tick(f, 6000);
	assert_string_equal(render(f), "");
}

static void
test_grace_tick_restores_code(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	assert_int_equal(resv_next_deadline(&f->t), 1000 + GRACE);
	tick(f, 1000 + GRACE - 1);
	assert_string_equal(render(f), "");
	/*
	 * An unlock still in flight: wait for the bank's verdict, which moves
	 * the reservation on by itself; no deadline the tick would not meet,
	 * or a caller polling on it spins.
	 */
	f->cells[0].unlocking = 1;
	tick(f, 1000 + GRACE);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_OPENING);
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	f->cells[0].unlocking = 0;
	tick(f, 1000 + GRACE);
	assert_string_equal(render(f), "code_restored:1 save:1=reserved");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	assert_int_equal(f->t.r[slot].consumed_at, 0);
	assert_int_equal(resv_next_deadline(&f->t), LATER);
	/* The code works again, with a fresh window. */
	assert_int_equal(enter(f, 1, 20000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
	assert_int_equal(f->t.r[slot].consumed_at, 20000);
}

static void
test_grace_tick_restores_pickup(void **state)
{
	struct fixture *f = *state;
	int a, b;

	/* a is due at DUE, b at DUE + 5000. */
	a = pickup(f, 'S', 1, 0);
	b = pickup(f, 'S', 2, 5000);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/pickup");
	tick(f, 1000 + GRACE);
	assert_string_equal(render(f), "code_restored:1 save:1=ready");
	assert_int_equal(state_of(f, a), RESV_READY);
	assert_int_equal(enter(f, 2, DUE + 4000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:2 save:2=opening unlock:2/pickup");
	/* Restored after its due time: overdue, code still valid. */
	tick(f, DUE + 4000 + GRACE);
	assert_string_equal(render(f),
	    "overdue:1 save:1=overdue code_restored:2 overdue:2 "
	    "save:2=overdue");
	assert_int_equal(state_of(f, b), RESV_OVERDUE);
	assert_int_equal(enter(f, 2, DUE + 20000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:2 save:2=opening unlock:2/pickup");
}

static void
test_unlock_failed_reassigns(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	failed(f, 1, 2000);
	assert_string_equal(render(f),
	    "reassigned:2<1 save:2=opening unlock:2/dropoff notice:2");
	assert_string_equal(f->note,
	    "Cell 1 did not open. Cell 2 is open for you instead.");
	assert_int_equal(f->t.r[slot].cell, 1);
	assert_int_equal(state_of(f, slot), RESV_OPENING);
	assert_int_equal(resv_slot_of_cell(&f->t, 0), -1);
	assert_int_equal(resv_slot_of_cell(&f->t, 1), slot);
	opened(f, 2, 2500);
	closed(f, 2, 3000);
	assert_string_equal(render(f),
	    "save:2=open deposited:2 save:2=deposited");
	/* The jammed cell is free for others once the bank allows it. */
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 4000,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:1 need_code:1");
}

/* A larger cell is taken when no S is left: M for an S cell. */
static void
test_unlock_failed_reassigns_larger(void **state)
{
	struct fixture *f = *state;
	int slot;

	dropoff(f, 'S', 2, LATER, 0);
	slot = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(number_of(f, slot), 2);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	failed(f, 2, 2000);
	assert_string_equal(render(f),
	    "reassigned:3<2 save:3=opening unlock:3/dropoff notice:3");
	assert_string_equal(f->note,
	    "Cell 2 did not open. Cell 3 is open for you instead.");
}

/*
 * One other cell per use of the code: when it fails too (the board takes
 * no writes, its queue is full), the code is restored, not bounced back
 * to the first cell for ever (found by fuzz_kiosk).
 */
static void
test_unlock_failed_twice(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	failed(f, 1, 2000);
	assert_string_equal(render(f),
	    "reassigned:2<1 save:2=opening unlock:2/dropoff notice:2");
	failed(f, 2, 3000);
	assert_string_equal(render(f),
	    "code_restored:2 save:2=reserved notice:2");
	assert_string_equal(f->note, "Cell 2 did not open. Your code still "
	    "works; please ask the hall staff.");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	/* The next use of the code may move once more. */
	assert_int_equal(enter(f, 1, 4000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:2 save:2=opening unlock:2/dropoff");
	failed(f, 2, 5000);
	assert_string_equal(render(f),
	    "reassigned:1<2 save:1=opening unlock:1/dropoff notice:1");
}

static void
test_unlock_failed_no_other_cell(void **state)
{
	struct fixture *f = *state;
	int slot, i;

	for (i = 1; i <= 4; i++)
		dropoff(f, 'S', i, LATER, 0);
	slot = dropoff(f, 'L', 5, LATER, 0);
	assert_int_equal(number_of(f, slot), 5);
	assert_int_equal(enter(f, 5, 1000), RESV_OK);
	render(f);
	failed(f, 5, 2000);
	assert_string_equal(render(f),
	    "code_restored:5 save:5=reserved notice:5");
	assert_string_equal(f->note, "Cell 5 did not open. Your code still "
	    "works; please ask the hall staff.");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	assert_int_equal(f->t.r[slot].cell, 4);
	assert_int_equal(enter(f, 5, 3000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:5 save:5=opening unlock:5/dropoff");
}

/* The certificate is in that cell: no other cell will do. */
static void
test_unlock_failed_pickup(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = pickup(f, 'S', 1, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	render(f);
	failed(f, 1, 2000);
	assert_string_equal(render(f), "code_restored:1 save:1=ready notice:1");
	assert_int_equal(state_of(f, slot), RESV_READY);
	assert_int_equal(f->t.r[slot].cell, 0);
}

static void
test_unlock_failed_loading(void **state)
{
	struct fixture *f = *state;
	int64_t id;
	int slot = -1;

	assert_int_equal(resv_load(&f->t, "P-1", 'S', "staff7", 1000,
	    &f->acts, &slot), RESV_OK);
	render(f);
	id = f->t.r[slot].id;
	failed(f, 1, 2000);
	assert_string_equal(render(f),
	    "load_failed:1 save:1=load_failed notice");
	assert_string_equal(f->note,
	    "Cell 1 did not open; choose load again for another cell.");
	assert_int_equal(resv_slot_of_cell(&f->t, 0), -1);
	assert_int_equal(resv_slot_of_id(&f->t, id), -1);
	assert_int_equal(f->t.r[slot].id, 0);
	/* The cell is free again (in service here: the jam was a write). */
	assert_int_equal(resv_load(&f->t, "P-1", 'S', "staff7", 3000,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f),
	    "load_started:1 save:1=loading unlock:1/staff_load");
}

static void
test_unlock_failed_retrieving(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = deposited(f, 'S', 1, 0);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 1000, &f->acts),
	    RESV_OK);
	render(f);
	assert_int_equal(state_of(f, slot), RESV_RETRIEVING);
	failed(f, 1, 2000);
	assert_string_equal(render(f), "save:1=deposited notice");
	assert_string_equal(f->note,
	    "Cell 1 did not open; it stays on the list of drop-offs.");
	assert_int_equal(state_of(f, slot), RESV_DEPOSITED);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 3000, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f),
	    "save:1=retrieving unlock:1/staff_retrieve notice:1");
}

/* Once the door was seen open the unlock did its job. */
static void
test_unlock_failed_after_door_opened(void **state)
{
	struct fixture *f = *state;
	int slot, load = -1, dep;

	slot = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 1000), RESV_OK);
	opened(f, 1, 1500);
	assert_int_equal(resv_load(&f->t, "P", 'S', "staff7", 1000, &f->acts,
	    &load), RESV_OK);
	opened(f, number_of(f, load), 1500);
	dep = deposited(f, 'S', 2, 1000);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 1000, &f->acts),
	    RESV_OK);
	opened(f, number_of(f, dep), 1500);
	render(f);
	failed(f, 1, 2000);
	failed(f, number_of(f, load), 2000);
	failed(f, number_of(f, dep), 2000);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_OPEN);
	assert_int_equal(state_of(f, load), RESV_LOADING);
	assert_int_equal(state_of(f, dep), RESV_RETRIEVING);
}

static void
test_pickup_lifecycle(void **state)
{
	struct fixture *f = *state;
	const struct resv *r;
	int slot = -1, got = -1;

	assert_int_equal(resv_load(&f->t, "P-9", 'M', "staff7", 1000,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(f->acts.a[1].r.staff, "staff7");
	assert_string_equal(render(f),
	    "load_started:3 save:3=loading unlock:3/staff_load");
	r = &f->t.r[slot];
	assert_int_equal(r->kind, RESV_PICKUP);
	assert_int_equal(r->state, RESV_LOADING);
	assert_string_equal(r->app, "P-9");
	/* No code exists while loading. */
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	opened(f, 3, 1500);
	assert_string_equal(render(f), "save:3=loading");
	assert_true(r->door_seen_open);
	closed(f, 3, 2000);
	assert_string_equal(render(f), "need_code:3");
	assert_int_equal(r->state, RESV_READY);
	assert_int_equal(r->valid_until, 2000 + DUE);
	assert_false(r->door_seen_open);
	resv_code_set(&f->t, slot, f->h[1], 2000, &f->acts);
	assert_string_equal(render(f),
	    "code_issued:3 pickup_ready:3 save:3=ready");
	assert_int_equal(resv_next_deadline(&f->t), 2000 + DUE);
	assert_int_equal(resv_enter(&f->t, f->h[1], NULL, 5000, &f->acts,
	    &got), RESV_OK);
	assert_int_equal(got, slot);
	assert_string_equal(render(f),
	    "code_used:3 save:3=opening unlock:3/pickup");
	opened(f, 3, 5500);
	assert_string_equal(render(f), "save:3=open");
	closed(f, 3, 6000);
	assert_string_equal(render(f), "collected:3 save:3=collected");
	/* Terminal: the slot is free and the code is gone. */
	assert_int_equal(resv_slot_of_cell(&f->t, 2), -1);
	assert_int_equal(resv_slot_of_id(&f->t, 100), -1);
	assert_int_equal(f->t.r[slot].id, 0);
	assert_false(resv_code_taken(&f->t, f->h[1]));
	assert_int_equal(enter(f, 1, 7000), RESV_ERR_NO_CODE);
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	assert_string_equal(render(f), "");
}

static void
test_retrieve(void **state)
{
	struct fixture *f = *state;
	int a, b, c;

	assert_int_equal(resv_retrieve(&f->t, "staff7", 0, &f->acts),
	    RESV_ERR_NOTHING);
	/* Reservations still waiting for the applicant are not for staff. */
	c = dropoff(f, 'S', 1, LATER, 0);
	pickup(f, 'S', 4, 0);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 0, &f->acts),
	    RESV_ERR_NOTHING);
	assert_string_equal(render(f), "");
	a = deposited(f, 'S', 2, 0);
	b = deposited(f, 'S', 3, 0);
	assert_int_equal(number_of(f, a), 3);
	assert_int_equal(number_of(f, b), 4);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 1000, &f->acts),
	    RESV_OK);
	assert_string_equal(f->acts.a[0].r.staff, "staff7");
	assert_string_equal(render(f),
	    "save:3=retrieving unlock:3/staff_retrieve notice:3");
	assert_string_equal(f->note,
	    "Cell 3 is open: take the documents out and close the door.");
	assert_int_equal(state_of(f, a), RESV_RETRIEVING);
	assert_int_equal(state_of(f, b), RESV_DEPOSITED);
	/* One run at a time. */
	assert_int_equal(resv_retrieve(&f->t, "staff8", 1100, &f->acts),
	    RESV_ERR_STATE);
	assert_string_equal(render(f), "");
	opened(f, 3, 1500);
	assert_string_equal(render(f), "save:3=retrieving");
	/* The next cell opens only when this door closes. */
	assert_int_equal(state_of(f, b), RESV_DEPOSITED);
	closed(f, 3, 2000);
	assert_string_equal(render(f), "retrieved:3 save:3=retrieved "
	    "save:4=retrieving unlock:4/staff_retrieve notice:4");
	assert_int_equal(resv_slot_of_cell(&f->t, 2), -1);
	assert_string_equal(f->t.r[b].staff, "staff7");
	opened(f, 4, 2500);
	closed(f, 4, 3000);
	assert_string_equal(render(f),
	    "save:4=retrieving retrieved:4 save:4=retrieved notice");
	assert_string_equal(f->note, "All drop-offs are retrieved.");
	assert_string_equal(f->t.retrieve_staff, "");
	assert_int_equal(resv_slot_of_cell(&f->t, 3), -1);
	assert_int_equal(state_of(f, c), RESV_RESERVED);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 4000, &f->acts),
	    RESV_ERR_NOTHING);
	assert_string_equal(render(f), "");
}

/* A deposited cell whose board is down is passed over in a run. */
static void
test_retrieve_skips_unreachable(void **state)
{
	struct fixture *f = *state;
	int a, b;

	a = deposited(f, 'S', 1, 0);
	b = deposited(f, 'L', 2, 0);
	f->cells[0].in_service = 0;
	assert_int_equal(resv_retrieve(&f->t, "staff7", 1000, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f),
	    "save:5=retrieving unlock:5/staff_retrieve notice:5");
	assert_int_equal(state_of(f, a), RESV_DEPOSITED);
	assert_int_equal(state_of(f, b), RESV_RETRIEVING);
	/* The run ends, and says what it had to leave behind. */
	opened(f, 5, 1500);
	closed(f, 5, 2000);
	assert_string_equal(render(f), "save:5=retrieving retrieved:5 "
	    "save:5=retrieved notice");
	assert_string_equal(f->note, "1 drop-off(s) left that cannot be "
	    "opened now (cell out of service or board down).");
	assert_int_equal(state_of(f, a), RESV_DEPOSITED);
}

static void
test_overdue(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = pickup(f, 'S', 1, 0);
	assert_int_equal(resv_next_deadline(&f->t), DUE);
	tick(f, DUE - 1);
	assert_string_equal(render(f), "");
	tick(f, DUE);
	assert_string_equal(render(f), "overdue:1 save:1=overdue");
	assert_int_equal(state_of(f, slot), RESV_OVERDUE);
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	/* Overdue once only. */
	tick(f, DUE + 1);
	assert_string_equal(render(f), "");
	/* The code still opens it. */
	assert_int_equal(enter(f, 1, DUE + 1000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/pickup");
	opened(f, 1, DUE + 1500);
	closed(f, 1, DUE + 2000);
	assert_string_equal(render(f),
	    "save:1=open collected:1 save:1=collected");
}

static void
test_take_back(void **state)
{
	struct fixture *f = *state;
	int a, b;

	a = pickup(f, 'S', 1, 0);
	b = pickup(f, 'S', 2, 0);
	tick(f, DUE);
	assert_string_equal(render(f),
	    "overdue:1 save:1=overdue overdue:2 save:2=overdue");
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE + 100, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "take_back:1 save:1=taking_back "
	    "unlock:1/staff_takeback notice:1");
	assert_string_equal(f->note,
	    "Cell 1 is open: take the item back and close the door.");
	assert_int_equal(state_of(f, a), RESV_TAKING_BACK);
	assert_int_equal(state_of(f, b), RESV_OVERDUE);
	assert_string_equal(f->t.r[a].staff, "staff7");
	/* From the take-back on the applicant's code is dead. */
	assert_false(f->t.r[a].has_code);
	assert_int_equal(enter(f, 1, DUE + 200), RESV_ERR_NO_CODE);
	assert_string_equal(render(f), "");
	/* The door did not open yet: take back opens the same cell again. */
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE + 300, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "take_back:1 save:1=taking_back "
	    "unlock:1/staff_takeback notice:1");
	opened(f, 1, DUE + 500);
	assert_string_equal(render(f), "save:1=taking_back");
	closed(f, 1, DUE + 1000);
	assert_string_equal(render(f), "returned:1 save:1=returned");
	assert_int_equal(resv_slot_of_cell(&f->t, 0), -1);
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE + 2000, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "take_back:2 save:2=taking_back "
	    "unlock:2/staff_takeback notice:2");
	assert_int_equal(enter(f, 2, DUE + 2100), RESV_ERR_NO_CODE);
	opened(f, 2, DUE + 2500);
	closed(f, 2, DUE + 3000);
	assert_string_equal(render(f),
	    "save:2=taking_back returned:2 save:2=returned");
	assert_int_equal(resv_slot_of_cell(&f->t, 1), -1);
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE + 4000, &f->acts),
	    RESV_ERR_NOTHING);
	assert_string_equal(render(f), "");
}

static void
test_take_back_nothing(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(resv_take_back(&f->t, "staff7", 0, &f->acts),
	    RESV_ERR_NOTHING);
	/* Not yet due, a drop-off, a reservation: none is for taking back. */
	pickup(f, 'S', 1, 0);
	deposited(f, 'S', 2, 0);
	dropoff(f, 'S', 3, LATER, 0);
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE - 1, &f->acts),
	    RESV_ERR_NOTHING);
	assert_string_equal(render(f), "");
}

/* A code for a cell whose door stands open is not spent: it waits. */
static void
test_code_not_spent_on_an_open_door(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, LATER, 0);
	f->cells[0].door = BANK_DOOR_OPEN;
	assert_int_equal(enter(f, 1, 1000), RESV_ERR_CELL);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	f->cells[0].door = BANK_DOOR_CLOSED;
	assert_int_equal(enter(f, 1, 2000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
}

/* After expiry the code says "expired" only with its second factor. */
static void
test_expired_code_remembered_with_its_factor(void **state)
{
	struct fixture *f = *state;
	int slot = -1, got;

	assert_int_equal(resv_reserve(&f->t, "A", 'S', 5000, f->h[6], 0,
	    &f->acts, &slot), RESV_OK);
	resv_code_set(&f->t, slot, f->h[1], 0, &f->acts);
	render(f);
	tick(f, 5000);
	assert_string_equal(render(f), "expired:1 save:1=expired");
	assert_int_equal(resv_enter(&f->t, f->h[1], NULL, 5100, &f->acts,
	    &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter(&f->t, f->h[1], f->h[7], 5100, &f->acts,
	    &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter(&f->t, f->h[1], f->h[6], 5100, &f->acts,
	    &got), RESV_ERR_EXPIRED);
	assert_string_equal(render(f), "");
}

static void
test_expiry(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = dropoff(f, 'S', 1, 5000, 0);
	assert_int_equal(resv_next_deadline(&f->t), 5000);
	tick(f, 4999);
	assert_string_equal(render(f), "");
	tick(f, 5000);
	assert_string_equal(render(f), "expired:1 save:1=expired");
	assert_int_equal(resv_slot_of_cell(&f->t, 0), -1);
	assert_int_equal(f->t.r[slot].id, 0);
	assert_false(resv_code_taken(&f->t, f->h[1]));
	/* The applicant who comes late is told the code expired. */
	assert_int_equal(enter(f, 1, 5100), RESV_ERR_EXPIRED);
	assert_int_equal(enter(f, 2, 5100), RESV_ERR_NO_CODE);
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	tick(f, 6000);
	assert_string_equal(render(f), "");
	/* The cell is free again. */
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 6000,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:1 need_code:1");
}

static void
test_cancel_reserved(void **state)
{
	struct fixture *f = *state;
	int64_t id;
	int slot;

	slot = dropoff(f, 'S', 1, LATER, 0);
	id = f->t.r[slot].id;
	assert_int_equal(resv_cancel(&f->t, id, 1000, &f->acts), RESV_OK);
	assert_string_equal(render(f), "cancelled:1 save:1=cancelled");
	assert_int_equal(enter(f, 1, 1100), RESV_ERR_NO_CODE);
	assert_false(resv_code_taken(&f->t, f->h[1]));
	assert_int_equal(resv_slot_of_id(&f->t, id), -1);
	/* It has left the table: cancelling again knows it no more. */
	assert_int_equal(resv_cancel(&f->t, id, 1200, &f->acts),
	    RESV_ERR_NO_RESV);
	assert_string_equal(render(f), "");
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 1300,
	    &f->acts, &slot), RESV_OK);
	assert_string_equal(render(f), "dropoff_reserved:1 need_code:1");
}

static void
test_cancel_with_item_inside(void **state)
{
	struct fixture *f = *state;
	int a, b, c;

	a = pickup(f, 'S', 1, 0);
	assert_int_equal(resv_cancel(&f->t, f->t.r[a].id, 1000, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "cancelled:1 save:1=ready");
	assert_int_equal(state_of(f, a), RESV_READY);
	assert_true(f->t.r[a].cancelled);
	assert_false(f->t.r[a].has_code);
	assert_int_equal(enter(f, 1, 1100), RESV_ERR_NO_CODE);
	/* Again: already done, nothing new. */
	assert_int_equal(resv_cancel(&f->t, f->t.r[a].id, 1200, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "");
	/* A cancelled certificate never becomes overdue; staff take it. */
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	tick(f, DUE);
	assert_string_equal(render(f), "");
	assert_int_equal(state_of(f, a), RESV_READY);
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE + 100, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "take_back:1 save:1=taking_back "
	    "unlock:1/staff_takeback notice:1");
	opened(f, 1, DUE + 200);
	closed(f, 1, DUE + 300);
	assert_string_equal(render(f),
	    "save:1=taking_back returned:1 save:1=returned");

	/* Overdue, cancelled: the code dies too. */
	b = pickup(f, 'S', 2, 0);
	tick(f, DUE);
	render(f);
	assert_int_equal(resv_cancel(&f->t, f->t.r[b].id, DUE, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "cancelled:1 save:1=overdue");
	assert_int_equal(enter(f, 2, DUE + 1), RESV_ERR_NO_CODE);

	/* Documents deposited, cancelled: they wait for staff. */
	c = deposited(f, 'S', 3, 0);
	assert_int_equal(resv_cancel(&f->t, f->t.r[c].id, 1000, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "cancelled:2 save:2=deposited");
	assert_int_equal(state_of(f, c), RESV_DEPOSITED);
	assert_int_equal(enter(f, 3, 1100), RESV_ERR_USED);
	assert_int_equal(resv_retrieve(&f->t, "staff7", 1200, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f),
	    "save:2=retrieving unlock:2/staff_retrieve notice:2");
}

static void
test_cancel_refused(void **state)
{
	struct fixture *f = *state;
	int opening, open, loading, retrieving, taking, slot = -1;

	taking = pickup(f, 'S', 4, 0);
	tick(f, DUE);
	assert_int_equal(resv_take_back(&f->t, "staff7", DUE, &f->acts),
	    RESV_OK);
	opening = dropoff(f, 'S', 1, LATER, DUE);
	assert_int_equal(enter(f, 1, DUE + 100), RESV_OK);
	open = dropoff(f, 'S', 2, LATER, DUE);
	assert_int_equal(enter(f, 2, DUE + 100), RESV_OK);
	opened(f, number_of(f, open), DUE + 200);
	assert_int_equal(resv_load(&f->t, "P", 'S', "staff7", DUE, &f->acts,
	    &loading), RESV_OK);
	retrieving = deposited(f, 'S', 3, DUE);
	assert_int_equal(resv_retrieve(&f->t, "staff7", DUE + 300, &f->acts),
	    RESV_OK);
	render(f);
	assert_int_equal(state_of(f, opening), RESV_OPENING);
	assert_int_equal(state_of(f, open), RESV_OPEN);
	assert_int_equal(state_of(f, loading), RESV_LOADING);
	assert_int_equal(state_of(f, retrieving), RESV_RETRIEVING);
	assert_int_equal(state_of(f, taking), RESV_TAKING_BACK);
	for (slot = 0; slot < f->t.n; slot++) {
		enum resv_state s = state_of(f, slot);

		assert_int_equal(resv_cancel(&f->t, f->t.r[slot].id, DUE,
		    &f->acts), RESV_ERR_STATE);
		assert_int_equal(state_of(f, slot), s);
		assert_false(f->t.r[slot].cancelled);
	}
	assert_int_equal(resv_cancel(&f->t, 9999, DUE, &f->acts),
	    RESV_ERR_NO_RESV);
	assert_int_equal(resv_cancel(&f->t, 0, DUE, &f->acts),
	    RESV_ERR_NO_RESV);
	assert_string_equal(render(f), "");
}

static void
test_reissue_pickup(void **state)
{
	struct fixture *f = *state;
	int slot;

	slot = pickup(f, 'S', 1, 0);
	assert_int_equal(resv_reissue(&f->t, f->t.r[slot].id, 100, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "need_code:1");
	assert_int_equal(enter(f, 1, 200), RESV_ERR_NO_CODE);
	resv_code_set(&f->t, slot, f->h[2], 300, &f->acts);
	/* Ready was announced once; a new code is only a new code. */
	assert_string_equal(render(f), "code_reissued:1 save:1=ready");
	/* Overdue keeps a live code, so it can be re-issued. */
	tick(f, DUE);
	render(f);
	assert_int_equal(resv_reissue(&f->t, f->t.r[slot].id, DUE, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f), "need_code:1");
	resv_code_set(&f->t, slot, f->h[3], DUE, &f->acts);
	assert_string_equal(render(f), "code_reissued:1 save:1=overdue");
	assert_int_equal(enter(f, 2, DUE + 1), RESV_ERR_NO_CODE);
	assert_int_equal(enter(f, 3, DUE + 1), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/pickup");
}

static void
test_reissue_refused(void **state)
{
	struct fixture *f = *state;
	int opening, open, loading, deposit, cancelled, slot;
	int64_t gone;

	opening = dropoff(f, 'S', 1, LATER, 0);
	assert_int_equal(enter(f, 1, 100), RESV_OK);
	open = dropoff(f, 'S', 2, LATER, 0);
	assert_int_equal(enter(f, 2, 100), RESV_OK);
	opened(f, 2, 200);
	assert_int_equal(resv_load(&f->t, "P", 'S', "staff7", 0, &f->acts,
	    &loading), RESV_OK);
	deposit = deposited(f, 'S', 3, 0);
	cancelled = pickup(f, 'S', 4, 0);
	assert_int_equal(resv_cancel(&f->t, f->t.r[cancelled].id, 300,
	    &f->acts), RESV_OK);
	render(f);
	assert_int_equal(state_of(f, opening), RESV_OPENING);
	assert_int_equal(state_of(f, open), RESV_OPEN);
	assert_int_equal(state_of(f, loading), RESV_LOADING);
	assert_int_equal(state_of(f, deposit), RESV_DEPOSITED);
	assert_true(f->t.r[cancelled].cancelled);
	for (slot = 0; slot < f->t.n; slot++) {
		struct resv before = f->t.r[slot];

		assert_int_equal(resv_reissue(&f->t, f->t.r[slot].id, 400,
		    &f->acts), RESV_ERR_STATE);
		assert_memory_equal(&f->t.r[slot], &before, sizeof(before));
	}
	assert_string_equal(render(f), "");
	/* A cancelled reservation that held nothing has left the table. */
	assert_int_equal(fixture_reset(f), 0);
	slot = dropoff(f, 'S', 1, LATER, 0);
	gone = f->t.r[slot].id;
	assert_int_equal(resv_cancel(&f->t, gone, 100, &f->acts), RESV_OK);
	render(f);
	assert_int_equal(resv_reissue(&f->t, gone, 200, &f->acts),
	    RESV_ERR_NO_RESV);
	assert_int_equal(resv_reissue(&f->t, 9999, 200, &f->acts),
	    RESV_ERR_NO_RESV);
	assert_string_equal(render(f), "");
}

static void
test_enter_credential(void **state)
{
	struct fixture *f = *state;
	int64_t id;
	int slot, got = -1;

	slot = dropoff(f, 'S', 1, 8000, 0);
	id = f->t.r[slot].id;
	assert_int_equal(resv_enter_credential(&f->t, id, 2, f->h[1], NULL,
	    5000, 1000, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter_credential(&f->t, id, 1, f->h[2], NULL,
	    5000, 1000, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter_credential(&f->t, 999, 1, f->h[1], NULL,
	    5000, 1000, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter_credential(&f->t, 0, 1, f->h[1], NULL, 5000,
	    1000, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_enter_credential(&f->t, id, 1, f->h[1], NULL,
	    5000, 5000, &f->acts, &got), RESV_ERR_EXPIRED);
	assert_string_equal(render(f), "");
	assert_int_equal(got, -1);
	assert_int_equal(state_of(f, slot), RESV_RESERVED);
	/* Within the credential's life but past the reservation's. */
	assert_int_equal(resv_enter_credential(&f->t, id, 1, f->h[1], NULL,
	    9000, 8000, &f->acts, &got), RESV_ERR_EXPIRED);
	assert_string_equal(render(f), "");
	assert_int_equal(resv_enter_credential(&f->t, id, 1, f->h[1], NULL,
	    5000, 4999, &f->acts, &got), RESV_OK);
	assert_int_equal(got, slot);
	assert_string_equal(render(f),
	    "code_used:1 save:1=opening unlock:1/dropoff");
	assert_int_equal(state_of(f, slot), RESV_OPENING);
	opened(f, 1, 5000);
	closed(f, 1, 5100);
	render(f);
	assert_int_equal(resv_enter_credential(&f->t, id, 1, f->h[1], NULL,
	    9000, 5200, &f->acts, &got), RESV_ERR_USED);
	/* A cancelled or taken-back certificate's credential is dead. */
	slot = pickup(f, 'S', 3, 0);
	id = f->t.r[slot].id;
	assert_int_equal(resv_cancel(&f->t, id, 6000, &f->acts), RESV_OK);
	assert_int_equal(resv_enter_credential(&f->t, id, number_of(f, slot),
	    f->h[3], NULL, 9000, 6100, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_int_equal(resv_take_back(&f->t, "staff7", 6200, &f->acts),
	    RESV_OK);
	assert_int_equal(resv_enter_credential(&f->t, id, number_of(f, slot),
	    f->h[3], NULL, 9000, 6300, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_int_equal(state_of(f, slot), RESV_TAKING_BACK);
	render(f);
	/* A re-issued code makes the old credential worthless. */
	slot = dropoff(f, 'S', 2, LATER, 0);
	id = f->t.r[slot].id;
	assert_int_equal(resv_reissue(&f->t, id, 6000, &f->acts), RESV_OK);
	assert_int_equal(resv_enter_credential(&f->t, id, number_of(f, slot),
	    f->h[2], NULL, 9000, 6100, &f->acts, &got), RESV_ERR_NO_CODE);
	resv_code_set(&f->t, slot, f->h[4], 6200, &f->acts);
	render(f);
	assert_int_equal(resv_enter_credential(&f->t, id, number_of(f, slot),
	    f->h[2], NULL, 9000, 6300, &f->acts, &got), RESV_ERR_NO_CODE);
	assert_string_equal(render(f), "");
	assert_int_equal(resv_enter_credential(&f->t, id, number_of(f, slot),
	    f->h[4], NULL, 9000, 6300, &f->acts, &got), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:3 save:3=opening unlock:3/dropoff");
}

static void
test_code_taken(void **state)
{
	struct fixture *f = *state;
	int a, b;

	assert_false(resv_code_taken(&f->t, f->h[1]));
	a = dropoff(f, 'S', 1, LATER, 0);
	b = pickup(f, 'S', 2, 0);
	assert_true(resv_code_taken(&f->t, f->h[1]));
	assert_true(resv_code_taken(&f->t, f->h[2]));
	assert_false(resv_code_taken(&f->t, f->h[3]));
	assert_int_equal(resv_reissue(&f->t, f->t.r[a].id, 100, &f->acts),
	    RESV_OK);
	assert_false(resv_code_taken(&f->t, f->h[1]));
	assert_int_equal(resv_cancel(&f->t, f->t.r[b].id, 100, &f->acts),
	    RESV_OK);
	assert_false(resv_code_taken(&f->t, f->h[2]));
	render(f);
}

static void
test_next_deadline(void **state)
{
	struct fixture *f = *state;
	int a, b, c;

	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	a = dropoff(f, 'S', 1, 50000, 0);
	assert_int_equal(resv_next_deadline(&f->t), 50000);
	b = pickup(f, 'S', 2, 0);
	assert_int_equal(resv_next_deadline(&f->t), 50000);
	c = dropoff(f, 'S', 3, 80000, 0);
	assert_int_equal(enter(f, 3, 1000), RESV_OK);
	assert_int_equal(resv_next_deadline(&f->t), 1000 + GRACE);
	opened(f, number_of(f, c), 1500);
	assert_int_equal(resv_next_deadline(&f->t), 50000);
	closed(f, number_of(f, c), 2000);
	assert_int_equal(resv_next_deadline(&f->t), 50000);
	assert_int_equal(resv_cancel(&f->t, f->t.r[a].id, 3000, &f->acts),
	    RESV_OK);
	assert_int_equal(resv_next_deadline(&f->t), DUE);
	tick(f, DUE);
	assert_int_equal(state_of(f, b), RESV_OVERDUE);
	assert_int_equal(resv_next_deadline(&f->t), INT64_MAX);
	render(f);
}

static void
test_restore(void **state)
{
	static const enum resv_state terminal[] = {
		RESV_RETRIEVED, RESV_COLLECTED, RESV_RETURNED, RESV_EXPIRED,
		RESV_CANCELLED, RESV_LOAD_FAILED,
	};
	struct fixture *f = *state;
	struct resv r;
	size_t i;
	int slot;

	memset(&r, 0, sizeof(r));
	r.id = 500;
	r.cell = 2;
	r.kind = RESV_DROPOFF;
	r.state = RESV_RESERVED;
	memcpy(r.code_hash, f->h[3], RESV_HASH_LEN);
	r.has_code = 1;
	r.issued = 1;
	r.valid_until = 9000;
	assert_int_equal(resv_restore(&f->t, &r), 0);
	slot = resv_slot_of_id(&f->t, 500);
	assert_true(slot >= 0);
	assert_int_equal(resv_slot_of_cell(&f->t, 2), slot);
	assert_int_equal(f->t.next_id, 501);
	assert_true(resv_code_taken(&f->t, f->h[3]));
	assert_int_equal(resv_next_deadline(&f->t), 9000);
	/* One reservation per cell. */
	r.id = 501;
	assert_int_equal(resv_restore(&f->t, &r), -1);
	r.cell = -1;
	assert_int_equal(resv_restore(&f->t, &r), -1);
	r.cell = NCELLS;
	assert_int_equal(resv_restore(&f->t, &r), -1);
	/* An ended reservation has no business in the table. */
	r.cell = 3;
	for (i = 0; i < sizeof(terminal) / sizeof(terminal[0]); i++) {
		r.state = terminal[i];
		assert_int_equal(resv_restore(&f->t, &r), -1);
	}
	assert_int_equal(resv_slot_of_cell(&f->t, 3), -1);
	assert_int_equal(resv_slot_of_id(&f->t, 501), -1);
	/* An older id does not move next_id back. */
	r.id = 50;
	r.state = RESV_DEPOSITED;
	memcpy(r.code_hash, f->h[4], RESV_HASH_LEN);
	assert_int_equal(resv_restore(&f->t, &r), 0);
	assert_int_equal(f->t.next_id, 501);
	/* The restored reservations are live. */
	assert_int_equal(enter(f, 3, 1000), RESV_OK);
	assert_string_equal(render(f),
	    "code_used:3 save:3=opening unlock:3/dropoff");
	assert_int_equal(resv_retrieve(&f->t, "staff7", 1000, &f->acts),
	    RESV_OK);
	assert_string_equal(render(f),
	    "save:4=retrieving unlock:4/staff_retrieve notice:4");
	assert_int_equal(resv_reserve(&f->t, "A", 'S', LATER, NULL, 1000,
	    &f->acts, &slot), RESV_OK);
	assert_int_equal(f->t.r[slot].id, 501);
	assert_string_equal(render(f), "dropoff_reserved:1 need_code:1");
}

static void
test_names(void **state)
{
	enum resv_state s, parsed;
	int i;

	(void)state;
	for (s = RESV_RESERVED; s <= RESV_LOAD_FAILED; s++) {
		assert_non_null(resv_state_name(s));
		assert_int_equal(resv_state_parse(resv_state_name(s), &parsed),
		    0);
		assert_int_equal(parsed, s);
		assert_int_equal(resv_is_terminal(s), s >= RESV_RETRIEVED);
	}
	assert_string_equal(resv_state_name(RESV_TAKING_BACK), "taking_back");
	assert_int_equal(resv_state_parse("bogus", &parsed), -1);
	assert_int_equal(resv_state_parse("", &parsed), -1);
	assert_int_equal(resv_state_parse("Reserved", &parsed), -1);
	for (i = RESV_OK; i <= RESV_ERR_CANCELLED; i++) {
		assert_non_null(resv_refusal_str((enum resv_refusal)i));
		assert_true(resv_refusal_str((enum resv_refusal)i)[0] != '\0');
	}
	for (i = RESV_EV_RESERVED; i <= RESV_EV_TAKE_BACK; i++) {
		assert_non_null(resv_event_name((enum resv_event)i));
		assert_true(resv_event_name((enum resv_event)i)[0] != '\0');
	}
	assert_string_equal(resv_event_name(RESV_EV_READY), "pickup_ready");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int
main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_reserve_issues_a_code),
		T(test_reserve_smallest_fit),
		T(test_reserve_lowest_number),
		T(test_reserve_skips_unusable_cells),
		T(test_reissue_issues_a_new_code),
		T(test_enter_right_code),
		T(test_enter_wrong_code),
		T(test_enter_second_factor),
		T(test_enter_expired),
		T(test_enter_cell_unavailable),
		T(test_dropoff_deposit),
		T(test_door_closed_unseen_ignored),
		T(test_door_events_elsewhere_ignored),
		T(test_grace_reopen),
		T(test_grace_reopen_past_valid_until),
		T(test_grace_tick_restores_code),
		T(test_grace_tick_restores_pickup),
		T(test_unlock_failed_reassigns),
		T(test_unlock_failed_reassigns_larger),
		T(test_unlock_failed_twice),
		T(test_unlock_failed_no_other_cell),
		T(test_unlock_failed_pickup),
		T(test_unlock_failed_loading),
		T(test_unlock_failed_retrieving),
		T(test_unlock_failed_after_door_opened),
		T(test_pickup_lifecycle),
		T(test_retrieve),
		T(test_retrieve_skips_unreachable),
		T(test_overdue),
		T(test_take_back),
		T(test_take_back_nothing),
		T(test_expiry),
		T(test_expired_code_remembered_with_its_factor),
		T(test_code_not_spent_on_an_open_door),
		T(test_cancel_reserved),
		T(test_cancel_with_item_inside),
		T(test_cancel_refused),
		T(test_reissue_pickup),
		T(test_reissue_refused),
		T(test_enter_credential),
		T(test_code_taken),
		T(test_next_deadline),
		T(test_restore),
		T(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
