/*
 * The locker bank: cells, their doors, unlocks and alarms. Pure logic: it
 * takes events with the current monotonic time and returns actions. The
 * caller commits EVENT and SAVE actions in one transaction and only then
 * carries out PULSE actions, so that no relay moves before its record is
 * durable.
 */
#include "bank.h"

#include <stdint.h>
#include <string.h>

static const char *const event_names[] = {
	[BANK_EV_UNLOCK] = "unlock",
	[BANK_EV_UNLOCK_FAILED] = "unlock_failed",
	[BANK_EV_DOOR_OPENED] = "door_opened",
	[BANK_EV_DOOR_CLOSED] = "door_closed",
	[BANK_EV_DOOR_JAMMED] = "door_jammed",
	[BANK_EV_DOOR_LEFT_OPEN] = "door_left_open",
	[BANK_EV_FORCED_OPEN] = "forced_open",
	[BANK_EV_BOARD_FAULT] = "board_fault",
	[BANK_EV_BOARD_RECOVERED] = "board_recovered",
	[BANK_EV_CELL_SERVICE] = "cell_service",
	[BANK_EV_RECONCILED] = "reconciled",
};

static const char *const refusal_names[] = {
	[BANK_OK] = "ok",
	[BANK_ERR_NO_CELL] = "no such cell",
	[BANK_ERR_OUT_OF_SERVICE] = "cell is out of service",
	[BANK_ERR_BOARD_FAULT] = "the cell's lock board is not answering",
	[BANK_ERR_BUSY] = "an unlock of this cell is already in progress",
	[BANK_ERR_DOOR_OPEN] = "the door is already open",
	[BANK_ERR_NOT_STARTED] = "the locker is still starting",
};

const char *
bank_event_name(enum bank_event ev)
{
	return event_names[ev];
}

int
bank_event_is_alarm(enum bank_event ev)
{
	return ev == BANK_EV_DOOR_JAMMED || ev == BANK_EV_DOOR_LEFT_OPEN ||
	    ev == BANK_EV_FORCED_OPEN || ev == BANK_EV_BOARD_FAULT;
}

const char *
bank_refusal_str(enum bank_refusal r)
{
	return refusal_names[r];
}

const char *
bank_door_name(enum bank_door d)
{
	return d == BANK_DOOR_OPEN ? "open" :
	    d == BANK_DOOR_CLOSED ? "closed" : "unknown";
}

int
bank_door_parse(const char *s, enum bank_door *out)
{
	if (strcmp(s, "open") == 0)
		*out = BANK_DOOR_OPEN;
	else if (strcmp(s, "closed") == 0)
		*out = BANK_DOOR_CLOSED;
	else if (strcmp(s, "unknown") == 0)
		*out = BANK_DOOR_UNKNOWN;
	else
		return -1;
	return 0;
}

static struct bank_action *
push(struct bank_actions *out, enum bank_act_type type, int cell, int board)
{
	struct bank_action *a;

	if (out->n == BANK_ACTIONS_MAX) {
		out->overflow = 1;
		return NULL;
	}
	a = &out->a[out->n++];
	memset(a, 0, sizeof(*a));
	a->type = type;
	a->cell = cell;
	a->board = board;
	return a;
}

static struct bank_action *
push_event(struct bank *b, struct bank_actions *out, enum bank_event ev,
    int cell)
{
	struct bank_action *a;

	a = push(out, BANK_ACT_EVENT, cell, cell >= 0 ? b->cells[cell].board :
	    -1);
	if (a != NULL)
		a->ev = ev;
	return a;
}

static void
push_save(struct bank_actions *out, int cell)
{
	push(out, BANK_ACT_SAVE, cell, -1);
}

static void
push_pulse(struct bank *b, struct bank_actions *out, int cell)
{
	push(out, BANK_ACT_PULSE, cell, b->cells[cell].board);
}

static void
set_text(struct bank_action *a, const char *s)
{
	size_t n;

	if (a == NULL || s == NULL)
		return;
	n = strlen(s);
	if (n >= sizeof(a->text))
		n = sizeof(a->text) - 1;
	memcpy(a->text, s, n);
	a->text[n] = '\0';
}

void
bank_init(struct bank *b, struct bank_cell *cells, int ncells,
    struct bank_board *boards, int nboards, const struct bank_timing *t)
{
	int i;

	memset(b, 0, sizeof(*b));
	b->cells = cells;
	b->ncells = ncells;
	b->boards = boards;
	b->nboards = nboards;
	b->t = *t;
	for (i = 0; i < ncells; i++) {
		cells[i].raw = -1;
		cells[i].unlocking = 0;
	}
	for (i = 0; i < nboards; i++) {
		boards[i].ok = 1;
		boards[i].seen = 0;
	}
}

int
bank_cell_index(const struct bank *b, int number)
{
	int i;

	for (i = 0; i < b->ncells; i++)
		if (b->cells[i].number == number)
			return i;
	return -1;
}

static void
start_unlock(struct bank *b, int cell, int attempt, struct bank_actions *out)
{
	struct bank_cell *c = &b->cells[cell];
	struct bank_action *a;

	c->unlocking = 1;
	c->restart_wait = 0;
	c->acked = 0;
	c->attempt = attempt;
	c->unlock_deadline = INT64_MAX;
	if ((a = push_event(b, out, BANK_EV_UNLOCK, cell)) != NULL) {
		a->attempt = attempt;
		set_text(a, c->reason);
	}
	push_save(out, cell);
	push_pulse(b, out, cell);
}

enum bank_refusal
bank_unlock(struct bank *b, int cell, const char *reason, int64_t now,
    struct bank_actions *out)
{
	struct bank_cell *c;
	size_t n;

	(void)now;
	if (cell < 0 || cell >= b->ncells)
		return BANK_ERR_NO_CELL;
	if (!b->started)
		return BANK_ERR_NOT_STARTED;
	c = &b->cells[cell];
	if (!c->in_service)
		return BANK_ERR_OUT_OF_SERVICE;
	if (!b->boards[c->board].ok)
		return BANK_ERR_BOARD_FAULT;
	/* Waiting for the door of an unlock from before a restart is no
	 * reason to refuse a new one: it takes its place. */
	if (c->unlocking && !c->restart_wait)
		return BANK_ERR_BUSY;
	if (c->door == BANK_DOOR_OPEN)
		return BANK_ERR_DOOR_OPEN;
	n = strlen(reason);
	if (n >= sizeof(c->reason))
		n = sizeof(c->reason) - 1;
	memcpy(c->reason, reason, n);
	c->reason[n] = '\0';
	start_unlock(b, cell, 1, out);
	return BANK_OK;
}

void
bank_unlock_result(struct bank *b, int cell, int ok, const char *error,
    int64_t now, struct bank_actions *out)
{
	struct bank_cell *c;

	if (cell < 0 || cell >= b->ncells || !b->cells[cell].unlocking)
		return;
	c = &b->cells[cell];
	if (ok) {
		c->acked = 1;
		c->unlock_deadline = now + b->t.unlock_confirm_ms;
		return;
	}
	c->unlocking = 0;
	set_text(push_event(b, out, BANK_EV_UNLOCK_FAILED, cell), error);
	push_save(out, cell);
}

static void
door_change(struct bank *b, int cell, int open, int64_t now,
    struct bank_actions *out)
{
	struct bank_cell *c = &b->cells[cell];
	struct bank_action *a;
	int expected;

	if (open) {
		expected = c->unlocking || c->expect_open;
		c->unlocking = 0;
		c->restart_wait = 0;
		c->expect_open = 0;
		c->door = BANK_DOOR_OPEN;
		c->opened_at = now;
		c->left_open_next = now + b->t.door_left_open_ms;
		if ((a = push_event(b, out, BANK_EV_DOOR_OPENED, cell)) != NULL)
			a->expected = expected;
		if (!expected)
			push_event(b, out, BANK_EV_FORCED_OPEN, cell);
	} else {
		c->door = BANK_DOOR_CLOSED;
		push_event(b, out, BANK_EV_DOOR_CLOSED, cell);
	}
	push_save(out, cell);
}

/* A sample that has held for the debounce time becomes the door state. */
static void
debounce_check(struct bank *b, int cell, int64_t now,
    struct bank_actions *out)
{
	struct bank_cell *c = &b->cells[cell];

	if (c->raw == -1 || !b->boards[c->board].seen)
		return;
	if (c->raw == (c->door == BANK_DOOR_OPEN) &&
	    c->door != BANK_DOOR_UNKNOWN)
		return;
	if (now - c->raw_since < b->t.debounce_ms)
		return;
	door_change(b, cell, c->raw, now, out);
}

static void
reconcile_cell(struct bank *b, int cell, int64_t now,
    struct bank_actions *out)
{
	struct bank_cell *c = &b->cells[cell];
	enum bank_door seen, stored = c->door;
	struct bank_action *a;
	int expected = c->expect_open;

	if (c->raw == -1)
		return;
	seen = c->raw ? BANK_DOOR_OPEN : BANK_DOOR_CLOSED;
	c->expect_open = 0;
	if (expected && seen == BANK_DOOR_CLOSED) {
		/*
		 * An unlock was recorded and the process stopped before its
		 * door was seen open: the relay may have pulsed a moment ago
		 * (the door is still springing) or never. Wait for the door
		 * as for a live unlock; if it stays shut, the unlock failed
		 * and its reservation hears so (a load or a retrieval is not
		 * left hanging).
		 */
		c->unlocking = 1;
		c->acked = 1;
		c->restart_wait = 1;
		c->unlock_deadline = now + b->t.unlock_confirm_ms;
	}
	if (seen == BANK_DOOR_OPEN) {
		c->opened_at = now;
		c->left_open_next = now + b->t.door_left_open_ms;
	}
	if (seen == stored)
		return;
	c->door = seen;
	if (stored != BANK_DOOR_UNKNOWN) {
		if ((a = push_event(b, out, BANK_EV_RECONCILED, cell)) !=
		    NULL) {
			a->door = seen;
			a->stored = stored;
		}
		if (seen == BANK_DOOR_OPEN) {
			if ((a = push_event(b, out, BANK_EV_DOOR_OPENED,
			    cell)) != NULL)
				a->expected = expected;
			if (!expected)
				push_event(b, out, BANK_EV_FORCED_OPEN, cell);
		} else
			push_event(b, out, BANK_EV_DOOR_CLOSED, cell);
	}
	push_save(out, cell);
}

void
bank_reconcile(struct bank *b, int64_t now, struct bank_actions *out)
{
	int i;

	(void)now;
	(void)out;
	b->started = 1;
	for (i = 0; i < b->ncells; i++)
		if (b->boards[b->cells[i].board].seen)
			b->cells[i].reconcile = 1;
}

void
bank_inputs(struct bank *b, int board, const uint8_t *door_open,
    const uint8_t *item, int nchannels, int64_t now,
    struct bank_actions *out)
{
	struct bank_board *bd = &b->boards[board];
	int i, first = !bd->seen;

	(void)out;
	bd->seen = 1;
	for (i = 0; i < b->ncells; i++) {
		struct bank_cell *c = &b->cells[i];
		int v;

		if (c->board != board || c->channel > nchannels)
			continue;
		v = door_open[c->channel - 1] ? 1 : 0;
		if (v != c->raw) {
			c->raw = v;
			c->raw_since = now;
		}
		if (item != NULL && item[c->channel - 1] != c->item) {
			c->item = item[c->channel - 1];
			c->item_dirty = b->started;
		}
		/* A board first heard after start-up is reconciled too. */
		if (first && b->started)
			c->reconcile = 1;
	}
}

void
bank_board_status(struct bank *b, int board, int ok, const char *error,
    int64_t now, struct bank_actions *out)
{
	struct bank_board *bd = &b->boards[board];
	struct bank_action *a;

	(void)now;
	if (ok == bd->ok)
		return;
	bd->ok = ok;
	a = push(out, BANK_ACT_EVENT, -1, board);
	if (a == NULL)
		return;
	a->ev = ok ? BANK_EV_BOARD_RECOVERED : BANK_EV_BOARD_FAULT;
	set_text(a, error);
}

enum bank_refusal
bank_set_service(struct bank *b, int cell, int in_service, int64_t now,
    struct bank_actions *out)
{
	struct bank_cell *c;
	struct bank_action *a;

	(void)now;
	if (cell < 0 || cell >= b->ncells)
		return BANK_ERR_NO_CELL;
	c = &b->cells[cell];
	in_service = in_service ? 1 : 0;
	if (c->in_service == in_service && c->fault == BANK_FAULT_NONE)
		return BANK_OK;
	c->in_service = in_service;
	if (in_service)
		c->fault = BANK_FAULT_NONE;
	if ((a = push_event(b, out, BANK_EV_CELL_SERVICE, cell)) != NULL)
		a->in_service = in_service;
	push_save(out, cell);
	return BANK_OK;
}

static void
confirm_check(struct bank *b, int cell, int64_t now,
    struct bank_actions *out)
{
	struct bank_cell *c = &b->cells[cell];
	struct bank_action *a;

	if (!c->unlocking || !c->acked || now < c->unlock_deadline)
		return;
	if (c->restart_wait) {
		c->unlocking = 0;
		c->restart_wait = 0;
		set_text(push_event(b, out, BANK_EV_UNLOCK_FAILED, cell),
		    "the door was not seen open after a restart");
		push_save(out, cell);
		return;
	}
	if (!b->boards[c->board].ok) {
		/* The door cannot be seen: give up, but do not blame the
		 * cell; the board fault has been reported already. */
		c->unlocking = 0;
		set_text(push_event(b, out, BANK_EV_UNLOCK_FAILED, cell),
		    "board stopped answering before the door was seen open");
		push_save(out, cell);
		return;
	}
	if (c->raw == 1) {
		/* Open but not yet debounced: wait for the debounce. */
		c->unlock_deadline = c->raw_since + b->t.debounce_ms;
		if (c->unlock_deadline <= now)
			c->unlock_deadline = now + 1;
		return;
	}
	if (c->attempt <= b->t.unlock_retries) {
		start_unlock(b, cell, c->attempt + 1, out);
		return;
	}
	c->unlocking = 0;
	c->in_service = 0;
	c->fault = BANK_FAULT_JAMMED;
	if ((a = push_event(b, out, BANK_EV_DOOR_JAMMED, cell)) != NULL)
		a->attempt = c->attempt;
	push_save(out, cell);
}

/* The most actions one cell can need in one tick. */
#define BANK_CELL_ACTIONS 12

int
bank_tick(struct bank *b, int64_t now, struct bank_actions *out)
{
	struct bank_action *a;
	int i;

	if (!b->started)
		return 0;
	for (i = 0; i < b->ncells; i++) {
		struct bank_cell *c = &b->cells[i];

		/* Bounded output: the rest waits for the next call, which
		 * bank_next_deadline() asks for at once. */
		if (out->n + BANK_CELL_ACTIONS > BANK_ACTIONS_MAX)
			return 1;
		if (c->reconcile) {
			c->reconcile = 0;
			reconcile_cell(b, i, now, out);
		}
		debounce_check(b, i, now, out);
		confirm_check(b, i, now, out);
		if (c->door == BANK_DOOR_OPEN && now >= c->left_open_next) {
			if ((a = push_event(b, out, BANK_EV_DOOR_LEFT_OPEN,
			    i)) != NULL)
				a->open_s = (now - c->opened_at) / 1000;
			c->left_open_next = now + b->t.door_left_open_repeat_ms;
		}
		if (c->item_dirty) {
			c->item_dirty = 0;
			push_save(out, i);
		}
	}
	return 0;
}

int64_t
bank_next_deadline(const struct bank *b)
{
	int64_t next = INT64_MAX;
	int i;

	if (!b->started)
		return next;
	for (i = 0; i < b->ncells; i++) {
		const struct bank_cell *c = &b->cells[i];

		if (c->reconcile || c->item_dirty)
			return INT64_MIN;

		if (c->raw != -1 && b->boards[c->board].seen &&
		    (c->raw != (c->door == BANK_DOOR_OPEN) ||
		     c->door == BANK_DOOR_UNKNOWN) &&
		    c->raw_since + b->t.debounce_ms < next)
			next = c->raw_since + b->t.debounce_ms;
		if (c->unlocking && c->acked && c->unlock_deadline < next)
			next = c->unlock_deadline;
		if (c->door == BANK_DOOR_OPEN && c->left_open_next < next)
			next = c->left_open_next;
	}
	return next;
}
