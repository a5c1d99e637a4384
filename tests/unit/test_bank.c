/*
 * The bank state machine, event by event: each test feeds events with a
 * simulated clock and compares the actions with a golden string, e.g.
 * "unlock:1#1 save:1 pulse:1". Refusals are checked by their reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "bank.h"

/* Cells 1 and 2 on board 0 (channels 1, 2), cell 3 on board 1 channel 1. */
struct fixture {
	struct bank b;
	struct bank_cell cells[3];
	struct bank_board boards[2];
	struct bank_actions acts;
	char out[1024];
};

static const struct bank_timing timing = {
	.debounce_ms = 50,
	.unlock_confirm_ms = 1000,
	.unlock_retries = 1,
	.door_left_open_ms = 10000,
	.door_left_open_repeat_ms = 5000,
};

static void
fixture_init(struct fixture *f, const struct bank_timing *t)
{
	static const int board[] = { 0, 0, 1 }, channel[] = { 1, 2, 1 };
	int i;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < 3; i++) {
		f->cells[i].number = i + 1;
		f->cells[i].board = board[i];
		f->cells[i].channel = channel[i];
		f->cells[i].size = 'S';
		f->cells[i].door = BANK_DOOR_CLOSED;
		f->cells[i].in_service = 1;
		f->cells[i].item = -1;
	}
	bank_init(&f->b, f->cells, 3, f->boards, 2, t ? t : &timing);
}

/* Renders the actions gathered since the last call, then clears them. */
static const char *
render(struct fixture *f)
{
	size_t len = 0;
	int i;

	f->out[0] = '\0';
	for (i = 0; i < f->acts.n; i++) {
		const struct bank_action *a = &f->acts.a[i];
		char item[64];

		if (a->type == BANK_ACT_SAVE)
			snprintf(item, sizeof(item), "save:%d",
			    f->cells[a->cell].number);
		else if (a->type == BANK_ACT_PULSE)
			snprintf(item, sizeof(item), "pulse:%d",
			    f->cells[a->cell].number);
		else if (a->cell >= 0)
			snprintf(item, sizeof(item), "%s:%d%s%s",
			    bank_event_name(a->ev), f->cells[a->cell].number,
			    a->ev == BANK_EV_UNLOCK ? (a->attempt == 1 ? "#1" :
			    "#2") : "",
			    a->ev == BANK_EV_DOOR_OPENED ? (a->expected ?
			    "+" : "!") : "");
		else
			snprintf(item, sizeof(item), "%s:b%d",
			    bank_event_name(a->ev), a->board);
		len += (size_t)snprintf(f->out + len, sizeof(f->out) - len,
		    "%s%s", len ? " " : "", item);
	}
	assert_false(f->acts.overflow);
	memset(&f->acts, 0, sizeof(f->acts));
	return f->out;
}

static void
inputs(struct fixture *f, int board, int ch1, int ch2, int64_t now)
{
	uint8_t door[2] = { (uint8_t)ch1, (uint8_t)ch2 };

	bank_inputs(&f->b, board, door, NULL, 2, now, &f->acts);
}

static void
tick(struct fixture *f, int64_t now)
{
	bank_tick(&f->b, now, &f->acts);
}

/* Both boards read once (all closed) and reconciled at t = 0. */
static void
start(struct fixture *f)
{
	inputs(f, 0, 0, 0, 0);
	inputs(f, 1, 0, 0, 0);
	bank_reconcile(&f->b, 0, &f->acts);
	tick(f, 0);
	assert_string_equal(render(f), "");
}

static void
test_unlock_open_close(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	assert_int_equal(bank_unlock(&f.b, 0, "test", 100, &f.acts), BANK_OK);
	assert_string_equal(f.acts.a[0].text, "test");
	assert_string_equal(render(&f), "unlock:1#1 save:1 pulse:1");
	bank_unlock_result(&f.b, 0, 1, NULL, 120, &f.acts);
	assert_string_equal(render(&f), "");
	inputs(&f, 0, 1, 0, 300);
	tick(&f, 349);
	assert_string_equal(render(&f), "");
	tick(&f, 350);
	assert_string_equal(render(&f), "door_opened:1+ save:1");
	assert_int_equal(f.cells[0].door, BANK_DOOR_OPEN);
	assert_false(f.cells[0].unlocking);
	/* Confirmed: the deadline passing does nothing more. */
	tick(&f, 1200);
	assert_string_equal(render(&f), "");
	inputs(&f, 0, 0, 0, 2000);
	tick(&f, 2050);
	assert_string_equal(render(&f), "door_closed:1 save:1");
}

static void
test_refusals(void **state)
{
	static const struct {
		const char *name;
		enum bank_refusal want;
	} cases[] = {
		{ "no such cell", BANK_ERR_NO_CELL },
		{ "still starting", BANK_ERR_NOT_STARTED },
		{ "out of service", BANK_ERR_OUT_OF_SERVICE },
		{ "not answering", BANK_ERR_BOARD_FAULT },
		{ "in progress", BANK_ERR_BUSY },
		{ "already open", BANK_ERR_DOOR_OPEN },
	};
	struct fixture f;
	size_t i;
	int cell;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fixture_init(&f, NULL);
		cell = 0;
		if (cases[i].want != BANK_ERR_NOT_STARTED)
			start(&f);
		switch (cases[i].want) {
		case BANK_ERR_NO_CELL:
			cell = 7;
			break;
		case BANK_ERR_OUT_OF_SERVICE:
			bank_set_service(&f.b, 0, 0, 0, &f.acts);
			break;
		case BANK_ERR_BOARD_FAULT:
			bank_board_status(&f.b, 0, 0, "timeout", 0, &f.acts);
			break;
		case BANK_ERR_BUSY:
			bank_unlock(&f.b, 0, "test", 0, &f.acts);
			break;
		case BANK_ERR_DOOR_OPEN:
			inputs(&f, 0, 1, 0, 0);
			tick(&f, 100);
			break;
		default:
			break;
		}
		render(&f);
		assert_int_equal(bank_unlock(&f.b, cell, "test", 200, &f.acts),
		    cases[i].want);
		/* A refusal changes nothing and pulses nothing. */
		assert_string_equal(render(&f), "");
		/* The reason the keypad and the operator are shown. */
		assert_non_null(strstr(bank_refusal_str(cases[i].want),
		    cases[i].name));
	}
}

static void
test_jammed_retry_then_out_of_service(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_unlock(&f.b, 1, "test", 0, &f.acts);
	bank_unlock_result(&f.b, 1, 1, NULL, 10, &f.acts);
	assert_string_equal(render(&f), "unlock:2#1 save:2 pulse:2");
	tick(&f, 1009);
	assert_string_equal(render(&f), "");
	tick(&f, 1010);
	/* The retry is recorded with the first attempt's reason. */
	assert_string_equal(f.acts.a[0].text, "test");
	assert_string_equal(render(&f), "unlock:2#2 save:2 pulse:2");
	/* The retry's timer only starts when the board accepts it. */
	tick(&f, 5000);
	assert_string_equal(render(&f), "");
	bank_unlock_result(&f.b, 1, 1, NULL, 5000, &f.acts);
	tick(&f, 6000);
	assert_string_equal(render(&f), "door_jammed:2 save:2");
	assert_false(f.cells[1].in_service);
	assert_int_equal(f.cells[1].fault, BANK_FAULT_JAMMED);
	assert_int_equal(bank_unlock(&f.b, 1, "test", 6100, &f.acts),
	    BANK_ERR_OUT_OF_SERVICE);
	assert_int_equal(bank_set_service(&f.b, 1, 1, 6200, &f.acts), BANK_OK);
	assert_string_equal(render(&f), "cell_service:2 save:2");
	assert_int_equal(f.cells[1].fault, BANK_FAULT_NONE);
	assert_int_equal(bank_unlock(&f.b, 1, "test", 6300, &f.acts), BANK_OK);
	assert_string_equal(render(&f), "unlock:2#1 save:2 pulse:2");
}

static void
test_no_retries_configured(void **state)
{
	struct bank_timing t = timing;
	struct fixture f;

	(void)state;
	t.unlock_retries = 0;
	fixture_init(&f, &t);
	start(&f);
	bank_unlock(&f.b, 0, "test", 0, &f.acts);
	bank_unlock_result(&f.b, 0, 1, NULL, 0, &f.acts);
	render(&f);
	tick(&f, 1000);
	assert_string_equal(render(&f), "door_jammed:1 save:1");
}

static void
test_open_seen_just_before_deadline_waits_for_debounce(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_unlock(&f.b, 0, "test", 0, &f.acts);
	bank_unlock_result(&f.b, 0, 1, NULL, 0, &f.acts);
	render(&f);
	inputs(&f, 0, 1, 0, 990);
	tick(&f, 1000);
	assert_string_equal(render(&f), "");
	tick(&f, 1040);
	assert_string_equal(render(&f), "door_opened:1+ save:1");
}

static void
test_forced_open(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	inputs(&f, 1, 1, 0, 500);
	tick(&f, 550);
	assert_string_equal(render(&f),
	    "door_opened:3! forced_open:3 save:3");
	assert_true(bank_event_is_alarm(BANK_EV_FORCED_OPEN));
}

static void
test_flapping_sensor_is_debounced(void **state)
{
	struct fixture f;
	int64_t t;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	for (t = 100; t < 1000; t += 30) {
		inputs(&f, 0, (int)(t / 30) & 1, 0, t);
		tick(&f, t);
	}
	inputs(&f, 0, 0, 0, 1000);
	tick(&f, 2000);
	assert_string_equal(render(&f), "");
	assert_int_equal(f.cells[0].door, BANK_DOOR_CLOSED);
}

static void
test_door_left_open_repeats(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_unlock(&f.b, 0, "test", 0, &f.acts);
	bank_unlock_result(&f.b, 0, 1, NULL, 0, &f.acts);
	inputs(&f, 0, 1, 0, 100);
	tick(&f, 150);
	render(&f);
	tick(&f, 10149);
	assert_string_equal(render(&f), "");
	tick(&f, 10150);
	assert_string_equal(render(&f), "door_left_open:1");
	tick(&f, 15149);
	assert_string_equal(render(&f), "");
	tick(&f, 15150);
	assert_string_equal(render(&f), "door_left_open:1");
	inputs(&f, 0, 0, 0, 16000);
	tick(&f, 16050);
	assert_string_equal(render(&f), "door_closed:1 save:1");
	tick(&f, 40000);
	assert_string_equal(render(&f), "");
}

static void
test_board_fault_and_recovery(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_board_status(&f.b, 1, 0, "no reply (timeout)", 100, &f.acts);
	assert_string_equal(render(&f), "board_fault:b1");
	/* Reported once, not on every failed poll. */
	bank_board_status(&f.b, 1, 0, "no reply (timeout)", 200, &f.acts);
	assert_string_equal(render(&f), "");
	assert_int_equal(bank_unlock(&f.b, 2, "test", 300, &f.acts),
	    BANK_ERR_BOARD_FAULT);
	/* The other board is untouched. */
	assert_int_equal(bank_unlock(&f.b, 0, "test", 300, &f.acts), BANK_OK);
	assert_string_equal(render(&f), "unlock:1#1 save:1 pulse:1");
	bank_board_status(&f.b, 1, 1, NULL, 400, &f.acts);
	assert_string_equal(render(&f), "board_recovered:b1");
	assert_int_equal(bank_unlock(&f.b, 2, "test", 500, &f.acts), BANK_OK);
}

static void
test_write_failure_is_not_a_jam(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_unlock(&f.b, 0, "test", 0, &f.acts);
	render(&f);
	bank_unlock_result(&f.b, 0, 0, "no reply (timeout)", 200, &f.acts);
	assert_string_equal(render(&f), "unlock_failed:1 save:1");
	assert_false(f.cells[0].unlocking);
	assert_true(f.cells[0].in_service);
	/* A late result for an unlock no longer in flight is ignored. */
	bank_unlock_result(&f.b, 0, 1, NULL, 300, &f.acts);
	tick(&f, 5000);
	assert_string_equal(render(&f), "");
}

static void
test_board_dies_while_waiting_for_the_door(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_unlock(&f.b, 2, "test", 0, &f.acts);
	bank_unlock_result(&f.b, 2, 1, NULL, 0, &f.acts);
	bank_board_status(&f.b, 1, 0, "no reply (timeout)", 300, &f.acts);
	render(&f);
	tick(&f, 1000);
	assert_string_equal(render(&f), "unlock_failed:3 save:3");
	assert_true(f.cells[2].in_service);
}

static void
test_reconcile(void **state)
{
	static const struct {
		enum bank_door stored;
		int pending, open;
		const char *want;
	} cases[] = {
		{ BANK_DOOR_CLOSED, 0, 1,
		  "reconciled:1 door_opened:1! forced_open:1 save:1" },
		{ BANK_DOOR_CLOSED, 1, 1, "reconciled:1 door_opened:1+ save:1" },
		{ BANK_DOOR_OPEN, 0, 0, "reconciled:1 door_closed:1 save:1" },
		{ BANK_DOOR_OPEN, 0, 1, "" },
		{ BANK_DOOR_CLOSED, 0, 0, "" },
		{ BANK_DOOR_UNKNOWN, 0, 1, "save:1" },
		{ BANK_DOOR_UNKNOWN, 0, 0, "save:1" },
	};
	struct fixture f;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fixture_init(&f, NULL);
		f.cells[0].door = cases[i].stored;
		f.cells[0].expect_open = cases[i].pending;
		inputs(&f, 0, cases[i].open, 0, 0);
		inputs(&f, 1, 0, 0, 0);
		assert_int_equal(bank_unlock(&f.b, 0, "test", 0, &f.acts),
		    BANK_ERR_NOT_STARTED);
		bank_reconcile(&f.b, 0, &f.acts);
		assert_string_equal(render(&f), "");
		tick(&f, 0);
		assert_string_equal(render(&f), cases[i].want);
		assert_int_equal(f.cells[0].door, cases[i].open ?
		    BANK_DOOR_OPEN : BANK_DOOR_CLOSED);
		assert_false(f.cells[0].expect_open);
	}
}

/*
 * Killed between the record of an unlock and its door opening: after the
 * restart the door may still spring open (expected, no alarm), or stay
 * shut (then the unlock failed, so its reservation is not left hanging).
 */
static void
test_pending_unlock_after_restart(void **state)
{
	struct fixture f;
	int open;

	(void)state;
	for (open = 0; open <= 1; open++) {
		fixture_init(&f, NULL);
		f.cells[0].door = BANK_DOOR_CLOSED;
		f.cells[0].expect_open = 1;
		inputs(&f, 0, 0, 0, 0);
		inputs(&f, 1, 0, 0, 0);
		bank_reconcile(&f.b, 0, &f.acts);
		tick(&f, 0);
		assert_string_equal(render(&f), "");
		assert_true(f.cells[0].unlocking);
		if (open) {
			inputs(&f, 0, 1, 0, 200);
			tick(&f, 250);
			assert_string_equal(render(&f), "door_opened:1+ save:1");
			tick(&f, 5000);
			assert_string_equal(render(&f), "");
		} else {
			tick(&f, 999);
			assert_string_equal(render(&f), "");
			tick(&f, 1000);
			assert_string_equal(render(&f), "unlock_failed:1 save:1");
			assert_true(f.cells[0].in_service);
			/* A later opening is a forced door again. */
			inputs(&f, 0, 1, 0, 2000);
			tick(&f, 2050);
			assert_string_equal(render(&f),
			    "door_opened:1! forced_open:1 save:1");
		}
	}
	/* The code typed again meanwhile: a new unlock takes its place. */
	fixture_init(&f, NULL);
	f.cells[0].door = BANK_DOOR_CLOSED;
	f.cells[0].expect_open = 1;
	inputs(&f, 0, 0, 0, 0);
	inputs(&f, 1, 0, 0, 0);
	bank_reconcile(&f.b, 0, &f.acts);
	tick(&f, 0);
	render(&f);
	assert_int_equal(bank_unlock(&f.b, 0, "test", 10, &f.acts), BANK_OK);
	assert_string_equal(render(&f), "unlock:1#1 save:1 pulse:1");
	assert_int_equal(bank_unlock(&f.b, 0, "test", 20, &f.acts),
	    BANK_ERR_BUSY);
	bank_unlock_result(&f.b, 0, 1, NULL, 30, &f.acts);
	tick(&f, 1000);
	assert_string_equal(render(&f), "");
}

static void
test_board_first_heard_after_start(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	inputs(&f, 0, 0, 0, 0);
	bank_board_status(&f.b, 1, 0, "no reply (timeout)", 0, &f.acts);
	bank_reconcile(&f.b, 0, &f.acts);
	tick(&f, 0);
	assert_string_equal(render(&f), "board_fault:b1");
	/* Cell 3's door was forced while its board was away. */
	bank_board_status(&f.b, 1, 1, NULL, 5000, &f.acts);
	inputs(&f, 1, 1, 0, 5000);
	assert_true(bank_next_deadline(&f.b) == INT64_MIN);
	tick(&f, 5000);
	assert_string_equal(render(&f), "board_recovered:b1 reconciled:3 "
	    "door_opened:3! forced_open:3 save:3");
}

static void
test_next_deadline(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f, NULL);
	assert_true(bank_next_deadline(&f.b) == INT64_MAX);
	start(&f);
	assert_true(bank_next_deadline(&f.b) == INT64_MAX);
	bank_unlock(&f.b, 0, "test", 0, &f.acts);
	assert_true(bank_next_deadline(&f.b) == INT64_MAX);
	bank_unlock_result(&f.b, 0, 1, NULL, 10, &f.acts);
	assert_true(bank_next_deadline(&f.b) == 1010);
	inputs(&f, 0, 1, 0, 100);
	assert_true(bank_next_deadline(&f.b) == 150);
	tick(&f, 150);
	assert_true(bank_next_deadline(&f.b) == 10150);
}

static void
test_item_sensor_saved(void **state)
{
	struct fixture f;
	uint8_t door[2] = { 0, 0 }, item[2] = { 1, 0 };

	(void)state;
	fixture_init(&f, NULL);
	start(&f);
	bank_inputs(&f.b, 0, door, item, 2, 100, &f.acts);
	tick(&f, 100);
	assert_string_equal(render(&f), "save:1 save:2");
	assert_int_equal(f.cells[0].item, 1);
	assert_int_equal(f.cells[1].item, 0);
	bank_inputs(&f.b, 0, door, item, 2, 200, &f.acts);
	tick(&f, 200);
	assert_string_equal(render(&f), "");
}

/* Many cells with work at once: the output stays bounded, and repeated
 * ticks finish the job without losing any. */
static void
test_tick_output_is_bounded(void **state)
{
	enum { N = 40 };
	struct bank_cell cells[N];
	struct bank_board board;
	struct bank_actions acts;
	struct bank b;
	uint8_t door[N];
	int i, rounds = 0, events = 0, more;

	(void)state;
	memset(cells, 0, sizeof(cells));
	for (i = 0; i < N; i++) {
		cells[i].number = i + 1;
		cells[i].channel = i + 1;
		cells[i].door = BANK_DOOR_CLOSED;
		cells[i].in_service = 1;
		door[i] = 1;
	}
	bank_init(&b, cells, N, &board, 1, &timing);
	bank_inputs(&b, 0, door, NULL, N, 0, &acts);
	bank_reconcile(&b, 0, &acts);
	do {
		memset(&acts, 0, sizeof(acts));
		more = bank_tick(&b, 0, &acts);
		assert_false(acts.overflow);
		for (i = 0; i < acts.n; i++)
			events += acts.a[i].type == BANK_ACT_EVENT &&
			    acts.a[i].ev == BANK_EV_FORCED_OPEN;
		rounds++;
	} while (more);
	assert_int_equal(events, N);
	assert_true(rounds > 1);
	assert_true(bank_next_deadline(&b) == 10000);
}

static void
test_names(void **state)
{
	enum bank_door d;

	(void)state;
	assert_string_equal(bank_event_name(BANK_EV_DOOR_JAMMED),
	    "door_jammed");
	assert_int_equal(bank_door_parse("open", &d), 0);
	assert_int_equal(d, BANK_DOOR_OPEN);
	assert_int_equal(bank_door_parse("ajar", &d), -1);
	assert_string_equal(bank_door_name(BANK_DOOR_UNKNOWN), "unknown");
	assert_int_equal(bank_cell_index(&(struct bank){ 0 }, 1), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unlock_open_close),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_jammed_retry_then_out_of_service),
		cmocka_unit_test(test_no_retries_configured),
		cmocka_unit_test(
		    test_open_seen_just_before_deadline_waits_for_debounce),
		cmocka_unit_test(test_forced_open),
		cmocka_unit_test(test_flapping_sensor_is_debounced),
		cmocka_unit_test(test_door_left_open_repeats),
		cmocka_unit_test(test_board_fault_and_recovery),
		cmocka_unit_test(test_write_failure_is_not_a_jam),
		cmocka_unit_test(test_board_dies_while_waiting_for_the_door),
		cmocka_unit_test(test_pending_unlock_after_restart),
		cmocka_unit_test(test_reconcile),
		cmocka_unit_test(test_board_first_heard_after_start),
		cmocka_unit_test(test_next_deadline),
		cmocka_unit_test(test_item_sensor_saved),
		cmocka_unit_test(test_tick_output_is_bounded),
		cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
