/*
 * Reservations: the custody lifecycles on top of the bank. Pure: the
 * caller passes the wall-clock time, records EVENT and SAVE actions in one
 * transaction with the bank's, asks the bank for UNLOCK actions, and makes
 * codes for NEED_CODE actions. A reservation that ends leaves the table
 * at once; its last SAVE carries its final state.
 */
#include "resv.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const state_names[] = {
	[RESV_RESERVED] = "reserved", [RESV_OPENING] = "opening",
	[RESV_OPEN] = "open", [RESV_DEPOSITED] = "deposited",
	[RESV_RETRIEVING] = "retrieving", [RESV_LOADING] = "loading",
	[RESV_READY] = "ready", [RESV_OVERDUE] = "overdue",
	[RESV_TAKING_BACK] = "taking_back", [RESV_RETRIEVED] = "retrieved",
	[RESV_COLLECTED] = "collected", [RESV_RETURNED] = "returned",
	[RESV_EXPIRED] = "expired", [RESV_CANCELLED] = "cancelled",
	[RESV_LOAD_FAILED] = "load_failed",
};

static const char *const event_names[] = {
	[RESV_EV_RESERVED] = "dropoff_reserved",
	[RESV_EV_CODE_ISSUED] = "code_issued",
	[RESV_EV_CODE_USED] = "code_used",
	[RESV_EV_DEPOSITED] = "deposited",
	[RESV_EV_RETRIEVED] = "retrieved",
	[RESV_EV_EXPIRED] = "expired",
	[RESV_EV_CANCELLED] = "cancelled",
	[RESV_EV_LOAD_STARTED] = "load_started",
	[RESV_EV_LOAD_FAILED] = "load_failed",
	[RESV_EV_READY] = "pickup_ready",
	[RESV_EV_COLLECTED] = "collected",
	[RESV_EV_OVERDUE] = "overdue",
	[RESV_EV_RETURNED] = "returned",
	[RESV_EV_CODE_RESTORED] = "code_restored",
	[RESV_EV_REASSIGNED] = "reassigned",
	[RESV_EV_REISSUED] = "code_reissued",
	[RESV_EV_TAKE_BACK] = "take_back",
};

static const char *const refusal_names[] = {
	[RESV_OK] = "ok",
	[RESV_ERR_NO_CODE] = "this code is not valid",
	[RESV_ERR_EXPIRED] = "this code has expired",
	[RESV_ERR_USED] = "this code has already been used",
	[RESV_ERR_FULL] = "no free cell of that size or larger",
	[RESV_ERR_NO_RESV] = "no such reservation",
	[RESV_ERR_STATE] = "not possible in the reservation's present state",
	[RESV_ERR_CELL] = "the cell cannot be opened now",
	[RESV_ERR_NOTHING] = "nothing to do",
	[RESV_ERR_TABLE_FULL] = "too many reservations",
	[RESV_ERR_CANCELLED] = "this reservation was cancelled",
	[RESV_ERR_IN_PROGRESS] = "this code is in use: its cell is opening",
	[RESV_ERR_PHONE_NEEDED] = "the last 4 digits of the phone are needed",
};

const char *
resv_state_name(enum resv_state s)
{
	return state_names[s];
}

int
resv_state_parse(const char *s, enum resv_state *out)
{
	size_t i;

	for (i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++)
		if (state_names[i] != NULL && strcmp(s, state_names[i]) == 0) {
			*out = (enum resv_state)i;
			return 0;
		}
	return -1;
}

const char *
resv_event_name(enum resv_event ev)
{
	return event_names[ev];
}

const char *
resv_refusal_str(enum resv_refusal r)
{
	return refusal_names[r];
}

int
resv_is_terminal(enum resv_state s)
{
	return s >= RESV_RETRIEVED;
}

/*
 * Lookups compare the first 8 bytes plainly, then the whole hash in
 * constant time. The hashes are keyed with the device key: timing can at
 * most tell a guesser how many leading bytes of a secret hash their own
 * unknowable hash shares, which helps with nothing.
 */
static int
hash_prefix(const uint8_t *a, const uint8_t *b)
{
	return memcmp(a, b, 8) == 0;
}

/* Constant-time: the same work whether or not, and wherever, it differs. */
static int
hash_equal(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0;
	int i;

	for (i = 0; i < RESV_HASH_LEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

static void
copy_str(char *dst, size_t len, const char *src)
{
	snprintf(dst, len, "%s", src ? src : "");
}

static struct resv_action *
push(struct resv_table *t, struct resv_actions *out, enum resv_act_type type,
    int slot)
{
	struct resv_action *a;

	if (out->n == RESV_ACTIONS_MAX) {
		out->overflow = 1;
		return NULL;
	}
	a = &out->a[out->n++];
	memset(a, 0, sizeof(*a));
	a->type = type;
	a->slot = slot;
	if (slot >= 0) {
		a->r = t->r[slot];
		a->cell = t->r[slot].cell;
	}
	return a;
}

static void
event(struct resv_table *t, struct resv_actions *out, enum resv_event ev,
    int slot)
{
	struct resv_action *a = push(t, out, RESV_ACT_EVENT, slot);

	if (a != NULL)
		a->ev = ev;
}

static void
save(struct resv_table *t, struct resv_actions *out, int slot)
{
	push(t, out, RESV_ACT_SAVE, slot);
	/* An ended reservation has its final record; free its slot. */
	if (resv_is_terminal(t->r[slot].state)) {
		t->cell_slot[t->r[slot].cell] = -1;
		memset(&t->r[slot], 0, sizeof(t->r[slot]));
	}
}

static void
unlock(struct resv_table *t, struct resv_actions *out, int slot,
    const char *reason)
{
	struct resv_action *a = push(t, out, RESV_ACT_UNLOCK, slot);

	if (a != NULL)
		copy_str(a->reason, sizeof(a->reason), reason);
}

static void notice(struct resv_table *t, struct resv_actions *out, int slot,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void
notice(struct resv_table *t, struct resv_actions *out, int slot,
    const char *fmt, ...)
{
	struct resv_action *a = push(t, out, RESV_ACT_NOTICE, slot);
	va_list ap;

	if (a == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(a->text, sizeof(a->text), fmt, ap);
	va_end(ap);
}

static int
cell_number(const struct resv_table *t, int cell)
{
	return t->bank->cells[cell].number;
}

int
resv_init(struct resv_table *t, const struct bank *b,
    const struct resv_timing *tm, int64_t next_id)
{
	memset(t, 0, sizeof(*t));
	t->bank = b;
	t->t = *tm;
	t->next_id = next_id > 0 ? next_id : 1;
	t->cap = b->ncells > 0 ? b->ncells : 1;
	t->r = calloc((size_t)t->cap, sizeof(*t->r));
	t->cell_slot = malloc((size_t)t->cap * sizeof(*t->cell_slot));
	if (t->r == NULL || t->cell_slot == NULL) {
		resv_free(t);
		return -1;
	}
	for (int i = 0; i < t->cap; i++)
		t->cell_slot[i] = -1;
	return 0;
}

void
resv_free(struct resv_table *t)
{
	free(t->r);
	free(t->cell_slot);
	t->cell_slot = NULL;
	t->r = NULL;
	t->cap = t->n = 0;
}

static int
slot_new(struct resv_table *t)
{
	int i;

	for (i = 0; i < t->cap; i++)
		if (t->r[i].id == 0) {
			if (i >= t->n)
				t->n = i + 1;
			return i;
		}
	return -1;
}

int
resv_restore(struct resv_table *t, const struct resv *r)
{
	int slot;

	if (resv_is_terminal(r->state) || r->cell < 0 ||
	    r->cell >= t->bank->ncells || resv_slot_of_cell(t, r->cell) != -1)
		return -1;
	if ((slot = slot_new(t)) == -1)
		return -1;
	t->r[slot] = *r;
	t->cell_slot[r->cell] = slot;
	if (r->id >= t->next_id)
		t->next_id = r->id + 1;
	return 0;
}

int
resv_slot_of_cell(const struct resv_table *t, int cell)
{
	if (cell < 0 || cell >= t->cap)
		return -1;
	return t->cell_slot[cell];
}

int
resv_slot_of_id(const struct resv_table *t, int64_t id)
{
	int i;

	for (i = 0; i < t->n; i++)
		if (id != 0 && t->r[i].id == id)
			return i;
	return -1;
}

static int
size_rank(char s)
{
	return s == 'S' ? 1 : s == 'M' ? 2 : s == 'L' ? 3 : 9;
}

int
resv_cell_free(const struct resv_table *t, int cell)
{
	const struct bank *b = t->bank;
	const struct bank_cell *c = &b->cells[cell];

	return c->in_service && b->boards[c->board].ok &&
	    c->door == BANK_DOOR_CLOSED && !c->unlocking && c->item != 1 &&
	    resv_slot_of_cell(t, cell) == -1;
}

/* The smallest free cell that fits, then the lowest number. */
static int
allocate(const struct resv_table *t, char size, int except)
{
	const struct bank *b = t->bank;
	int i, best = -1;

	for (i = 0; i < b->ncells; i++) {
		const struct bank_cell *c = &b->cells[i];

		if (i == except || size_rank(c->size) < size_rank(size) ||
		    !resv_cell_free(t, i))
			continue;
		if (best == -1 ||
		    size_rank(c->size) < size_rank(b->cells[best].size) ||
		    (size_rank(c->size) == size_rank(b->cells[best].size) &&
		     c->number < b->cells[best].number))
			best = i;
	}
	return best;
}

static int
new_resv(struct resv_table *t, enum resv_kind kind, enum resv_state state,
    int cell, const char *app, int64_t now)
{
	int slot = slot_new(t);
	struct resv *r;

	if (slot == -1)
		return -1;
	r = &t->r[slot];
	memset(r, 0, sizeof(*r));
	r->id = t->next_id++;
	r->kind = kind;
	r->state = state;
	r->cell = cell;
	t->cell_slot[cell] = slot;
	r->created_at = now;
	copy_str(r->app, sizeof(r->app), app);
	return slot;
}

enum resv_refusal
resv_reserve(struct resv_table *t, const char *app, char size,
    int64_t valid_until, const uint8_t *phone_hash, int64_t now,
    struct resv_actions *out, int *slot_out)
{
	int cell = allocate(t, size, -1), slot;
	struct resv *r;

	if (cell == -1)
		return RESV_ERR_FULL;
	if ((slot = new_resv(t, RESV_DROPOFF, RESV_RESERVED, cell, app, now)) ==
	    -1)
		return RESV_ERR_TABLE_FULL;
	r = &t->r[slot];
	r->valid_until = valid_until;
	if (phone_hash != NULL) {
		memcpy(r->phone_hash, phone_hash, RESV_HASH_LEN);
		r->has_phone = 1;
	}
	event(t, out, RESV_EV_RESERVED, slot);
	push(t, out, RESV_ACT_NEED_CODE, slot);
	*slot_out = slot;
	return RESV_OK;
}

void
resv_code_set(struct resv_table *t, int slot, const uint8_t *hash,
    int64_t now, struct resv_actions *out)
{
	struct resv *r = &t->r[slot];
	int first = r->issued == 0;

	(void)now;
	memcpy(r->code_hash, hash, RESV_HASH_LEN);
	r->has_code = 1;
	r->issued++;
	event(t, out, first ? RESV_EV_CODE_ISSUED : RESV_EV_REISSUED, slot);
	if (first && r->kind == RESV_PICKUP)
		event(t, out, RESV_EV_READY, slot);
	save(t, out, slot);
}

int
resv_code_taken(const struct resv_table *t, const uint8_t *hash)
{
	int i, taken = 0;

	for (i = 0; i < t->n; i++)
		if (t->r[i].id != 0 && t->r[i].has_code &&
		    hash_prefix(t->r[i].code_hash, hash))
			taken |= hash_equal(t->r[i].code_hash, hash);
	return taken;
}

static int
code_live(enum resv_state s)
{
	return s == RESV_RESERVED || s == RESV_READY || s == RESV_OVERDUE;
}

/* The code is good: consume it durably, then open. */
static enum resv_refusal
consume(struct resv_table *t, int slot, int64_t now,
    struct resv_actions *out)
{
	struct resv *r = &t->r[slot];
	const struct bank_cell *c = &t->bank->cells[r->cell];

	if (r->state == RESV_OPENING) {
		/* The door was never seen open: a power cut or a jam. The
		 * same code re-opens the same cell within the grace window. */
		if (r->door_seen_open || now - r->consumed_at >= t->t.grace_ms)
			return RESV_ERR_USED;
		/* Its unlock is still under way: in use, not good again. */
		if (c->unlocking && !c->restart_wait)
			return RESV_ERR_IN_PROGRESS;
	} else if (!code_live(r->state))
		return RESV_ERR_USED;
	else if (r->kind == RESV_DROPOFF && now >= r->valid_until)
		return RESV_ERR_EXPIRED;
	/* A door standing open (forced, or left so) is not spent on: the
	 * code waits until it is closed. */
	if (!c->in_service || !t->bank->boards[c->board].ok ||
	    (c->door == BANK_DOOR_OPEN && r->state != RESV_OPENING))
		return RESV_ERR_CELL;
	if (r->state != RESV_OPENING) {
		r->state = RESV_OPENING;
		r->consumed_at = now;
		r->door_seen_open = 0;
		r->reassigned = 0;
	}
	event(t, out, RESV_EV_CODE_USED, slot);
	save(t, out, slot);
	unlock(t, out, slot, r->kind == RESV_DROPOFF ? "dropoff" : "pickup");
	return RESV_OK;
}

/*
 * An applicant who comes back after the code expired is told so, not
 * "not valid" (and is not counted as guessing): the last
 * RESV_EXPIRED_KEEP expired codes are kept, as hashes, in memory.
 */
static void
remember_expired(struct resv_table *t, const struct resv *r)
{
	struct resv_expired *e = &t->expired[t->expired_next];

	if (!r->has_code)
		return;
	memcpy(e->code_hash, r->code_hash, sizeof(e->code_hash));
	memcpy(e->phone_hash, r->phone_hash, sizeof(e->phone_hash));
	e->has_phone = r->has_phone;
	t->expired_next = (t->expired_next + 1) % RESV_EXPIRED_KEEP;
	if (t->expired_n < RESV_EXPIRED_KEEP)
		t->expired_n++;
}

static int
was_expired(const struct resv_table *t, const uint8_t *code_hash,
    const uint8_t *phone_hash)
{
	const struct resv_expired *e;
	int i;

	for (i = 0; i < t->expired_n; i++) {
		e = &t->expired[i];
		/* A wrong second factor still looks like a wrong code. */
		if (hash_equal(e->code_hash, code_hash) && (!e->has_phone ||
		    (phone_hash != NULL && hash_equal(e->phone_hash,
		    phone_hash))))
			return 1;
	}
	return 0;
}

enum resv_refusal
resv_enter(struct resv_table *t, const uint8_t *code_hash,
    const uint8_t *phone_hash, int64_t now, struct resv_actions *out,
    int *slot_out)
{
	int i, found = -1;

	for (i = 0; i < t->n; i++)
		if (t->r[i].id != 0 && t->r[i].has_code &&
		    hash_prefix(t->r[i].code_hash, code_hash) &&
		    hash_equal(t->r[i].code_hash, code_hash))
			found = i;
	if (found == -1)
		return was_expired(t, code_hash, phone_hash) ?
		    RESV_ERR_EXPIRED : RESV_ERR_NO_CODE;
	/* A wrong second factor looks exactly like a wrong code. */
	if (t->r[found].has_phone && (phone_hash == NULL ||
	    !hash_equal(t->r[found].phone_hash, phone_hash)))
		return RESV_ERR_NO_CODE;
	*slot_out = found;
	return consume(t, found, now, out);
}

enum resv_refusal
resv_enter_credential(struct resv_table *t, int64_t id, int cell_number,
    const uint8_t *code_hash, const uint8_t *phone_hash, int64_t not_after,
    int64_t now, struct resv_actions *out, int *slot_out)
{
	int slot = resv_slot_of_id(t, id);
	struct resv *r;

	/* The credential's signature is checked already: its not-after is
	 * the locker's own word. */
	if (now >= not_after)
		return RESV_ERR_EXPIRED;
	if (slot == -1)
		return RESV_ERR_NO_CODE;
	r = &t->r[slot];
	if (!r->has_code || !hash_equal(r->code_hash, code_hash) ||
	    t->bank->cells[r->cell].number != cell_number)
		return RESV_ERR_NO_CODE;
	if (r->has_phone && phone_hash == NULL)
		return RESV_ERR_PHONE_NEEDED;
	if (r->has_phone && !hash_equal(r->phone_hash, phone_hash))
		return RESV_ERR_NO_CODE;
	*slot_out = slot;
	return consume(t, slot, now, out);
}

void
resv_door_opened(struct resv_table *t, int cell, int64_t now,
    struct resv_actions *out)
{
	int slot = resv_slot_of_cell(t, cell);
	struct resv *r;

	(void)now;
	if (slot == -1)
		return;
	r = &t->r[slot];
	switch (r->state) {
	case RESV_OPENING:
		r->state = RESV_OPEN;
		/* FALLTHROUGH */
	case RESV_LOADING:
	case RESV_RETRIEVING:
	case RESV_TAKING_BACK:
		r->door_seen_open = 1;
		save(t, out, slot);
		break;
	default:
		break;
	}
}

/* Staff retrieval run: open the next deposited cell, if any. */
static void
retrieve_next(struct resv_table *t, int64_t now, struct resv_actions *out)
{
	int i, left = 0;

	(void)now;
	for (i = 0; i < t->n; i++) {
		struct resv *r = &t->r[i];
		const struct bank_cell *c;

		if (r->id == 0 || r->state != RESV_DEPOSITED)
			continue;
		c = &t->bank->cells[r->cell];
		if (!c->in_service || !t->bank->boards[c->board].ok)
			continue;
		r->state = RESV_RETRIEVING;
		r->door_seen_open = 0;
		copy_str(r->staff, sizeof(r->staff), t->retrieve_staff);
		save(t, out, i);
		unlock(t, out, i, "staff_retrieve");
		notice(t, out, i, "Cell %d is open: take the documents out and "
		    "close the door.", cell_number(t, r->cell));
		return;
	}
	t->retrieve_staff[0] = '\0';
	for (i = 0; i < t->n; i++)
		left += t->r[i].id != 0 && t->r[i].state == RESV_DEPOSITED;
	if (left > 0)
		notice(t, out, -1, "%d drop-off(s) left that cannot be opened "
		    "now (cell out of service or board down).", left);
	else
		notice(t, out, -1, "All drop-offs are retrieved.");
}

void
resv_door_closed(struct resv_table *t, int cell, int64_t now,
    struct resv_actions *out)
{
	int slot = resv_slot_of_cell(t, cell);
	struct resv *r;

	if (slot == -1)
		return;
	r = &t->r[slot];
	if (!r->door_seen_open)
		return;
	switch (r->state) {
	case RESV_OPEN:
		r->state = r->kind == RESV_DROPOFF ? RESV_DEPOSITED :
		    RESV_COLLECTED;
		event(t, out, r->kind == RESV_DROPOFF ? RESV_EV_DEPOSITED :
		    RESV_EV_COLLECTED, slot);
		save(t, out, slot);
		break;
	case RESV_LOADING:
		r->state = RESV_READY;
		r->valid_until = now + t->t.pickup_due_ms;
		r->door_seen_open = 0;
		push(t, out, RESV_ACT_NEED_CODE, slot);
		break;
	case RESV_RETRIEVING:
		r->state = RESV_RETRIEVED;
		event(t, out, RESV_EV_RETRIEVED, slot);
		save(t, out, slot);
		if (t->retrieve_staff[0] != '\0')
			retrieve_next(t, now, out);
		break;
	case RESV_TAKING_BACK:
		r->state = RESV_RETURNED;
		event(t, out, RESV_EV_RETURNED, slot);
		save(t, out, slot);
		break;
	default:
		break;
	}
}

/* A code-opened cell whose door never opened goes back to waiting. */
static void
restore_code(struct resv_table *t, int slot, int64_t now,
    struct resv_actions *out)
{
	struct resv *r = &t->r[slot];

	r->state = r->kind == RESV_DROPOFF ? RESV_RESERVED :
	    now >= r->valid_until ? RESV_OVERDUE : RESV_READY;
	r->consumed_at = 0;
	event(t, out, RESV_EV_CODE_RESTORED, slot);
	/* It fell due while the unlock was in flight: say so, as the tick
	 * would have. */
	if (r->state == RESV_OVERDUE)
		event(t, out, RESV_EV_OVERDUE, slot);
	save(t, out, slot);
}

void
resv_unlock_failed(struct resv_table *t, int cell, int64_t now,
    struct resv_actions *out)
{
	int slot = resv_slot_of_cell(t, cell), other;
	struct resv *r;

	if (slot == -1)
		return;
	r = &t->r[slot];
	if (r->door_seen_open)
		return;
	switch (r->state) {
	case RESV_OPENING:
		/* The applicant is at the locker: offer another cell, once.
		 * When that fails too (a board refusing writes, its queue
		 * full), going back to the first would bounce for ever. */
		if (r->kind == RESV_DROPOFF && !r->reassigned &&
		    (other = allocate(t, t->bank->cells[cell].size, cell)) !=
		    -1) {
			t->cell_slot[r->cell] = -1;
			t->cell_slot[other] = slot;
			r->cell = other;
			r->reassigned = 1;
			event(t, out, RESV_EV_REASSIGNED, slot);
			out->a[out->n - 1].from_cell = cell;
			save(t, out, slot);
			unlock(t, out, slot, "dropoff");
			notice(t, out, slot, "Cell %d did not open. Cell %d is "
			    "open for you instead.", cell_number(t, cell),
			    cell_number(t, other));
			break;
		}
		restore_code(t, slot, now, out);
		notice(t, out, slot, "Cell %d did not open. Your code still "
		    "works; please ask the hall staff.", cell_number(t, cell));
		break;
	case RESV_LOADING:
		r->state = RESV_LOAD_FAILED;
		event(t, out, RESV_EV_LOAD_FAILED, slot);
		save(t, out, slot);
		notice(t, out, -1, "Cell %d did not open; choose load again "
		    "for another cell.", cell_number(t, cell));
		break;
	case RESV_RETRIEVING:
		r->state = RESV_DEPOSITED;
		save(t, out, slot);
		notice(t, out, -1, "Cell %d did not open; it stays on the list "
		    "of drop-offs.", cell_number(t, cell));
		break;
	default:
		break;
	}
}

enum resv_refusal
resv_load(struct resv_table *t, const char *app, char size,
    const char *staff, int64_t now, struct resv_actions *out, int *slot_out)
{
	int cell = allocate(t, size, -1), slot;

	if (cell == -1)
		return RESV_ERR_FULL;
	if ((slot = new_resv(t, RESV_PICKUP, RESV_LOADING, cell, app, now)) ==
	    -1)
		return RESV_ERR_TABLE_FULL;
	copy_str(t->r[slot].staff, sizeof(t->r[slot].staff), staff);
	event(t, out, RESV_EV_LOAD_STARTED, slot);
	save(t, out, slot);
	unlock(t, out, slot, "staff_load");
	*slot_out = slot;
	return RESV_OK;
}

enum resv_refusal
resv_retrieve(struct resv_table *t, const char *staff, int64_t now,
    struct resv_actions *out)
{
	int i, any = 0;

	for (i = 0; i < t->n; i++) {
		if (t->r[i].id != 0 && t->r[i].state == RESV_RETRIEVING)
			return RESV_ERR_STATE;
		any |= t->r[i].id != 0 && t->r[i].state == RESV_DEPOSITED;
	}
	if (!any)
		return RESV_ERR_NOTHING;
	copy_str(t->retrieve_staff, sizeof(t->retrieve_staff), staff);
	retrieve_next(t, now, out);
	return RESV_OK;
}

enum resv_refusal
resv_take_back(struct resv_table *t, const char *staff, int64_t now,
    struct resv_actions *out)
{
	int i;

	(void)now;
	for (i = 0; i < t->n; i++) {
		struct resv *r = &t->r[i];

		if (r->id == 0 || r->kind != RESV_PICKUP)
			continue;
		if (!(r->state == RESV_OVERDUE ||
		    (r->state == RESV_READY && r->cancelled) ||
		    (r->state == RESV_TAKING_BACK && !r->door_seen_open)))
			continue;
		/* From this moment the applicant's code is dead. */
		r->state = RESV_TAKING_BACK;
		r->has_code = 0;
		r->door_seen_open = 0;
		copy_str(r->staff, sizeof(r->staff), staff);
		event(t, out, RESV_EV_TAKE_BACK, i);
		save(t, out, i);
		unlock(t, out, i, "staff_takeback");
		notice(t, out, i, "Cell %d is open: take the item back and "
		    "close the door.", cell_number(t, r->cell));
		return RESV_OK;
	}
	return RESV_ERR_NOTHING;
}

enum resv_refusal
resv_cancel(struct resv_table *t, int64_t id, int64_t now,
    struct resv_actions *out)
{
	int slot = resv_slot_of_id(t, id);
	struct resv *r;

	(void)now;
	if (slot == -1)
		return RESV_ERR_NO_RESV;
	r = &t->r[slot];
	switch (r->state) {
	case RESV_RESERVED:
		r->state = RESV_CANCELLED;
		r->has_code = 0;
		event(t, out, RESV_EV_CANCELLED, slot);
		save(t, out, slot);
		return RESV_OK;
	case RESV_DEPOSITED:
	case RESV_READY:
	case RESV_OVERDUE:
		/* An item is inside: it waits for staff; the code is dead. */
		if (r->cancelled)
			return RESV_OK;
		r->cancelled = 1;
		r->has_code = r->state == RESV_DEPOSITED ? r->has_code : 0;
		event(t, out, RESV_EV_CANCELLED, slot);
		save(t, out, slot);
		return RESV_OK;
	default:
		return RESV_ERR_STATE;
	}
}

enum resv_refusal
resv_reissue(struct resv_table *t, int64_t id, int64_t now,
    struct resv_actions *out)
{
	int slot = resv_slot_of_id(t, id);
	struct resv *r;

	(void)now;
	if (slot == -1)
		return RESV_ERR_NO_RESV;
	r = &t->r[slot];
	if (!code_live(r->state) || r->cancelled)
		return RESV_ERR_STATE;
	/* The old code is dead before the new one exists. */
	r->has_code = 0;
	memset(r->code_hash, 0, sizeof(r->code_hash));
	push(t, out, RESV_ACT_NEED_CODE, slot);
	return RESV_OK;
}

void
resv_tick(struct resv_table *t, int64_t now, struct resv_actions *out)
{
	int i;

	for (i = 0; i < t->n; i++) {
		struct resv *r = &t->r[i];

		if (out->n + 4 > RESV_ACTIONS_MAX)
			return;
		if (r->id == 0)
			continue;
		if (r->state == RESV_RESERVED && now >= r->valid_until) {
			remember_expired(t, r);
			r->state = RESV_EXPIRED;
			r->has_code = 0;
			event(t, out, RESV_EV_EXPIRED, i);
			save(t, out, i);
		} else if (r->state == RESV_READY && !r->cancelled &&
		    now >= r->valid_until) {
			r->state = RESV_OVERDUE;
			event(t, out, RESV_EV_OVERDUE, i);
			save(t, out, i);
		} else if (r->state == RESV_OPENING && !r->door_seen_open &&
		    now - r->consumed_at >= t->t.grace_ms &&
		    !t->bank->cells[r->cell].unlocking)
			restore_code(t, i, now, out);
	}
}

int64_t
resv_next_deadline(const struct resv_table *t)
{
	int64_t next = INT64_MAX, d;
	int i;

	for (i = 0; i < t->n; i++) {
		const struct resv *r = &t->r[i];

		if (r->id == 0)
			continue;
		d = INT64_MAX;
		if (r->state == RESV_RESERVED ||
		    (r->state == RESV_READY && !r->cancelled))
			d = r->valid_until;
		/* While the bank unlocks, its verdict (door opened, unlock
		 * failed) moves the reservation on: resv_tick waits for it. */
		else if (r->state == RESV_OPENING && !r->door_seen_open &&
		    !t->bank->cells[r->cell].unlocking)
			d = r->consumed_at + t->t.grace_ms;
		if (d < next)
			next = d;
	}
	return next;
}
