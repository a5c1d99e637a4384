/*
 * The daemon's glue: start-up (database, cells, first read of every board,
 * reconciliation with the stored state), and the one place where the
 * bank's actions become ledger events, saved cells and relay pulses.
 */
#include "lockerd.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "custody.h"
#include "ledger.h"
#include "log.h"
#include "notify.h"
#include "util.h"

struct body_arg {
	struct lockerd *d;
	const struct bank_action *a;
	const struct resv_action *ra;
	const char *type;
	int64_t wall;
	json_t *extra;
	const char *code;       /* a plain code that will rest in the event */
};

int64_t
lockerd_now(void)
{
	return util_wall_ms();
}

static void
bank_fields(struct lockerd *d, const struct bank_action *a, json_t *o)
{
	if (a->cell >= 0)
		json_object_set_new(o, "cell",
		    json_integer(d->cells[a->cell].number));
	if (a->board >= 0)
		json_object_set_new(o, "board",
		    json_string(d->cfg.boards[a->board].name));
	if (bank_event_is_alarm(a->ev))
		json_object_set_new(o, "alarm", json_true());
	switch (a->ev) {
	case BANK_EV_UNLOCK:
		json_object_set_new(o, "attempt", json_integer(a->attempt));
		json_object_set_new(o, "reason", json_string(a->text));
		break;
	case BANK_EV_DOOR_JAMMED:
		json_object_set_new(o, "attempts", json_integer(a->attempt));
		break;
	case BANK_EV_DOOR_OPENED:
		json_object_set_new(o, "expected", json_boolean(a->expected));
		break;
	case BANK_EV_DOOR_LEFT_OPEN:
		json_object_set_new(o, "open_s", json_integer(a->open_s));
		break;
	case BANK_EV_CELL_SERVICE:
		json_object_set_new(o, "in", json_boolean(a->in_service));
		break;
	case BANK_EV_RECONCILED:
		json_object_set_new(o, "door",
		    json_string(bank_door_name(a->door)));
		json_object_set_new(o, "stored",
		    json_string(bank_door_name(a->stored)));
		break;
	case BANK_EV_UNLOCK_FAILED:
	case BANK_EV_BOARD_FAULT:
		json_object_set_new(o, "error", json_string(a->text));
		break;
	default:
		break;
	}
}

/* A reservation's event: who, what, which cell; never a code or a hash. */
static void
resv_fields(struct lockerd *d, const struct resv_action *a, json_t *o)
{
	const struct resv *r = &a->r;
	char when[UTIL_ISO_LEN];

	json_object_set_new(o, "cell", json_integer(d->cells[r->cell].number));
	json_object_set_new(o, "resv", json_integer(r->id));
	json_object_set_new(o, "kind", json_string(r->kind == RESV_DROPOFF ?
	    "dropoff" : "pickup"));
	json_object_set_new(o, "app", json_string(r->app));
	json_object_set_new(o, "state", json_string(resv_state_name(r->state)));
	if (r->staff[0] != '\0')
		json_object_set_new(o, "staff", json_string(r->staff));
	if (a->ev == RESV_EV_REASSIGNED)
		json_object_set_new(o, "from_cell",
		    json_integer(d->cells[a->from_cell].number));
	if (r->valid_until > 0 && (r->state == RESV_RESERVED ||
	    r->state == RESV_READY || r->state == RESV_OVERDUE)) {
		util_iso_time(r->valid_until, when, sizeof(when));
		json_object_set_new(o, r->kind == RESV_DROPOFF ? "valid_until" :
		    "due", json_string(when));
	}
	if (r->cancelled)
		json_object_set_new(o, "cancelled", json_true());
}

static char *
event_body(int64_t seq, void *arg)
{
	struct body_arg *ba = arg;
	struct lockerd *d = ba->d;
	uint8_t digest[32];
	char when[UTIL_ISO_LEN];
	json_t *o;
	char *s = NULL;

	util_iso_time(ba->wall, when, sizeof(when));
	o = json_pack("{s:I, s:s, s:s, s:s}", "seq", (json_int_t)seq,
	    "locker", d->cfg.locker_id, "time", when, "type", ba->type);
	if (o == NULL)
		return NULL;
	if (ba->a != NULL)
		bank_fields(d, ba->a, o);
	if (ba->ra != NULL)
		resv_fields(d, ba->ra, o);
	if (ba->extra != NULL)
		json_object_update(o, ba->extra);
	/* The code travels beside the event, unsigned: its MAC, which only
	 * the platform can check, is signed (ledger.h). */
	if (ba->code != NULL && d->head.code_key != NULL) {
		char mac[2 * LEDGER_HASH_LEN + 1];

		if (ledger_code_mac(d->head.code_key, d->cfg.locker_id, seq,
		    ba->code, mac) == -1) {
			json_decref(o);
			return NULL;
		}
		json_object_set_new(o, "code_mac", json_string(mac));
	}
	/* Chained to the one before, signed; the next links to this. */
	if (ledger_seal(o, d->keys->sign_sk, d->ledger_pend, digest) == 0 &&
	    (s = json_dumps(o, JSON_COMPACT)) != NULL) {
		memcpy(d->ledger_pend, digest, sizeof(digest));
		d->head.pend = seq;
	}
	json_decref(o);
	return s;
}

/* Transactions that append events keep the chain's head in step. */
static int
tx_begin(struct lockerd *d)
{
	memcpy(d->ledger_pend, d->ledger_prev, sizeof(d->ledger_pend));
	d->head.pend = d->head.seq;
	/* Held (mark.c): the ledger takes nothing, so no door opens. */
	if (d->head.held[0] != '\0')
		return -1;
	if (store_begin(d->store) == -1) {
		d->db_failing = 1;
		return -1;
	}
	return 0;
}

static int
tx_commit(struct lockerd *d)
{
	if (store_commit(d->store) == -1) {
		memcpy(d->ledger_pend, d->ledger_prev, sizeof(d->ledger_pend));
		d->head.pend = d->head.seq;
		d->db_failing = 1;
		return -1;
	}
	memcpy(d->ledger_prev, d->ledger_pend, sizeof(d->ledger_prev));
	/* The mark follows at the end of the loop turn (mark_tick). */
	if (d->head.pend != d->head.seq) {
		d->head.seq = d->head.pend;
		if (!d->head.dirty)
			d->head.dirty_ms = util_mono_ms();
		d->head.dirty = 1;
	}
	d->db_failing = 0;
	return 0;
}

static void
tx_rollback(struct lockerd *d)
{
	store_rollback(d->store);
	memcpy(d->ledger_pend, d->ledger_prev, sizeof(d->ledger_pend));
	d->head.pend = d->head.seq;
}

static int
save_cell(struct lockerd *d, int cell)
{
	const struct bank_cell *c = &d->cells[cell];
	struct store_cell sc;

	memset(&sc, 0, sizeof(sc));
	sc.number = c->number;
	util_strlcpy(sc.door, bank_door_name(c->door), sizeof(sc.door));
	sc.item = c->item;
	sc.in_service = c->in_service;
	util_strlcpy(sc.fault, c->fault == BANK_FAULT_JAMMED ? "door_jammed" :
	    "", sizeof(sc.fault));
	sc.unlock_pending = c->unlocking;
	return store_cell_save(d->store, &sc);
}

static int
append_event(struct lockerd *d, const struct bank_action *a, const char *type,
    json_t *extra)
{
	struct body_arg ba = { d, a, NULL, type, util_wall_ms(), extra, NULL };
	int cell = a != NULL && a->cell >= 0 ? d->cells[a->cell].number : 0;

	return store_event_append(d->store, ba.wall, type, cell, event_body,
	    &ba, NULL);
}

/* Appends an event outside the bank and the reservations, own tx. */
int
lockerd_record(struct lockerd *d, const char *type, json_t *extra)
{
	if (tx_begin(d) == -1)
		return -1;
	if (append_event(d, NULL, type, extra) == -1) {
		tx_rollback(d);
		return -1;
	}
	if (tx_commit(d) == -1)
		return -1;
	link_kick(d);
	return 0;
}

int
lockerd_record_from(struct lockerd *d, const char *type, json_t *extra,
    int64_t next)
{
	if (tx_begin(d) == -1)
		return -1;
	store_event_seq_skip(d->store, next);
	if (append_event(d, NULL, type, extra) == -1) {
		tx_rollback(d);
		return -1;
	}
	if (tx_commit(d) == -1)
		return -1;
	link_kick(d);
	return 0;
}

/*
 * A staff account provisioned or revoked (type "staff_added" or
 * "staff_revoked"): the ledger event and the signed row, which carries
 * that event's seq, in one transaction.
 */
int
lockerd_staff_change(struct lockerd *d, struct staff *st, const char *type,
    json_t *extra)
{
	struct body_arg ba = { d, NULL, NULL, type, util_wall_ms(), extra,
	    NULL };
	int64_t seq;

	if (tx_begin(d) == -1)
		return -1;
	if (store_event_append(d->store, ba.wall, type, 0, event_body, &ba,
	    &seq) == -1 || store_event_staff(d->store, seq, st->id) == -1) {
		tx_rollback(d);
		return -1;
	}
	st->last_seq = seq;
	if (staff_write(d->store, d->keys, st) == -1) {
		tx_rollback(d);
		return -1;
	}
	if (tx_commit(d) == -1)
		return -1;
	kiosk_staff_changed(d, st->id, st->revoked ? "revoked" :
	    "account changed");
	link_kick(d);
	return 0;
}

static int
save_resv(struct lockerd *d, const struct resv *r)
{
	uint8_t sig[CODES_SIG_LEN];
	char *text = NULL;
	json_t *o;
	int rc = -1;

	if ((o = custody_resv_json(r, &d->bank)) != NULL &&
	    custody_row_sign(d->keys, "resv", o, &text, sig) == 0)
		rc = store_resv_save(d->store, r->id, !resv_is_terminal(r->state),
		    text, sig, sizeof(sig));
	else
		log_error("reservation %lld: cannot encode it",
		    (long long)r->id);
	free(text);
	json_decref(o);
	return rc;
}

/*
 * The reservation's newest event is seq: its rows saved from now on say
 * so, and a row put back from before does not match the ledger.
 */
static void
mark_last_seq(struct lockerd *d, struct lockerd_step *s, int from,
    int64_t id, int64_t seq)
{
	int i, slot = resv_slot_of_id(&d->resv, id);

	for (i = from; i < s->resv.n; i++)
		if (s->resv.a[i].r.id == id)
			s->resv.a[i].r.last_seq = seq;
	if (slot != -1)
		d->resv.r[slot].last_seq = seq;
}

static int
append_resv_event(struct lockerd *d, struct lockerd_step *s, int idx)
{
	const struct resv_action *a = &s->resv.a[idx];
	struct body_arg ba = { d, NULL, a, resv_event_name(a->ev),
	    util_wall_ms(), NULL, NULL };
	int64_t seq;
	int i, rest = (a->ev == RESV_EV_CODE_ISSUED ||
	    a->ev == RESV_EV_REISSUED) && !s->handed_over;

	for (i = 0; rest && i < s->nissued; i++)
		if (s->issued[i].resv == a->r.id && s->issued[i].seq == 0)
			ba.code = s->issued[i].code;
	if (store_event_append(d->store, ba.wall, ba.type,
	    d->cells[a->r.cell].number, event_body, &ba, &seq) == -1 ||
	    store_event_resv(d->store, seq, a->r.id) == -1)
		return -1;
	mark_last_seq(d, s, idx + 1, a->r.id, seq);
	if (!rest)
		return 0;
	/* The plain code rests only here, until it is delivered. */
	for (i = 0; i < s->nissued; i++)
		if (s->issued[i].resv == a->r.id && s->issued[i].seq == 0) {
			s->issued[i].seq = seq;
			return store_event_secret(d->store, seq,
			    s->issued[i].code);
		}
	return 0;
}

static void
log_action(struct lockerd *d, const struct bank_action *a)
{
	const char *what = bank_event_name(a->ev);

	if (a->cell >= 0 && bank_event_is_alarm(a->ev))
		log_warn("cell %d: %s", d->cells[a->cell].number, what);
	else if (a->cell >= 0)
		log_info("cell %d: %s%s%s", d->cells[a->cell].number, what,
		    a->text[0] ? ": " : "", a->text);
	else if (a->board >= 0)
		log_info("board %s: %s%s%s", d->cfg.boards[a->board].name, what,
		    a->text[0] ? ": " : "", a->text);
}

void
lockerd_step_init(struct lockerd_step *s)
{
	memset(s, 0, sizeof(*s));
}

/* A code for a reservation: unique among the live ones, kept as a hash. */
static void
issue_code(struct lockerd *d, struct lockerd_step *s, int slot)
{
	struct lockerd_issued *is;
	uint8_t hash[CODES_HASH_LEN];
	char code[CODES_DIGITS_MAX + 1];
	int tries = 0;

	do {
		codes_generate(code, d->cfg.codes.digits);
		codes_hash(d->keys, "code", code, hash);
	} while (resv_code_taken(&d->resv, hash) && ++tries < 100);
	if (s->nissued < (int)(sizeof(s->issued) / sizeof(s->issued[0]))) {
		is = &s->issued[s->nissued++];
		is->resv = d->resv.r[slot].id;
		is->seq = 0;
		memcpy(is->code, code, sizeof(is->code));
	}
	sodium_memzero(code, sizeof(code));
	resv_code_set(&d->resv, slot, hash, lockerd_now(), &s->resv);
}

static void
push_order(struct lockerd_step *s, int rec)
{
	if (s->norder < (int)(sizeof(s->order) / sizeof(s->order[0])))
		s->order[s->norder++] = rec;
	else
		s->bank.overflow = 1;
}

#define ORDER_RESV 0x100

/* What a bank event means to the reservation holding the cell. */
static void
bank_to_resv(struct lockerd *d, struct lockerd_step *s,
    const struct bank_action *a)
{
	int64_t now = lockerd_now();

	if (a->type != BANK_ACT_EVENT || a->cell < 0)
		return;
	switch (a->ev) {
	case BANK_EV_DOOR_OPENED:
		resv_door_opened(&d->resv, a->cell, now, &s->resv);
		break;
	case BANK_EV_DOOR_CLOSED:
		resv_door_closed(&d->resv, a->cell, now, &s->resv);
		break;
	case BANK_EV_RECONCILED:
		if (a->door == BANK_DOOR_OPEN)
			resv_door_opened(&d->resv, a->cell, now, &s->resv);
		else if (a->door == BANK_DOOR_CLOSED)
			resv_door_closed(&d->resv, a->cell, now, &s->resv);
		break;
	case BANK_EV_DOOR_JAMMED:
	case BANK_EV_UNLOCK_FAILED:
		resv_unlock_failed(&d->resv, a->cell, now, &s->resv);
		break;
	default:
		break;
	}
}

static void
resv_to_bank(struct lockerd *d, struct lockerd_step *s, int i)
{
	const struct resv_action *a = &s->resv.a[i];

	switch (a->type) {
	case RESV_ACT_EVENT:
	case RESV_ACT_SAVE:
		push_order(s, ORDER_RESV + i);
		break;
	case RESV_ACT_UNLOCK:
		if (bank_unlock(&d->bank, a->cell, a->reason, util_mono_ms(),
		    &s->bank) != BANK_OK)
			resv_unlock_failed(&d->resv, a->cell, lockerd_now(),
			    &s->resv);
		break;
	case RESV_ACT_NEED_CODE:
		issue_code(d, s, a->slot);
		break;
	case RESV_ACT_NOTICE:
		break;
	}
}

/* Reloads the reservations from the store after a failed commit. */
static int load_resv(struct lockerd *d);

/*
 * A step that could not be recorded: what the doors and boards did is
 * still true, so its events wait here (not the unlocks, which did not
 * happen: no relay moved). The reservations are re-read from the store
 * and learn of the doors again when these are recorded.
 */
static void
keep_pending(struct lockerd *d, const struct lockerd_step *s)
{
	const struct bank_action *a;
	int i, lost = 0;

	for (i = 0; i < s->bank.n; i++) {
		a = &s->bank.a[i];
		if (a->type == BANK_ACT_PULSE || (a->type == BANK_ACT_EVENT &&
		    a->ev == BANK_EV_UNLOCK))
			continue;
		if (d->pend.n == BANK_ACTIONS_MAX) {
			lost++;
			continue;
		}
		d->pend.a[d->pend.n++] = *a;
	}
	if (lost > 0)
		log_error("%d door or board events could not be kept for later: "
		    "the database has been failing for too long", lost);
	d->pend_retry = util_mono_ms() + 1000;
}

static void
replay_pending(struct lockerd *d)
{
	struct lockerd_step *s;

	if ((s = malloc(sizeof(*s))) == NULL)
		return;
	lockerd_step_init(s);
	s->bank = d->pend;
	memset(&d->pend, 0, sizeof(d->pend));
	d->replaying = 1;
	if (lockerd_run(d, s) == 0)
		log_info("%d door or board events recorded late", s->bank.n);
	d->replaying = 0;
	free(s);
}

int
lockerd_run(struct lockerd *d, struct lockerd_step *s)
{
	struct bank_actions retry;
	int i, bi = 0, ri = 0, need_tx = 0, rc;

	/* What could not be recorded before goes first, in its order. */
	if (!d->replaying && d->pend.n > 0 && util_mono_ms() >= d->pend_retry)
		replay_pending(d);
	/* Consequences first: what a record caused follows it. */
	while (bi < s->bank.n || ri < s->resv.n) {
		if (ri < s->resv.n) {
			resv_to_bank(d, s, ri++);
			continue;
		}
		if (s->bank.a[bi].type != BANK_ACT_PULSE)
			push_order(s, bi);
		bank_to_resv(d, s, &s->bank.a[bi++]);
	}
	if (s->bank.overflow || s->resv.overflow)
		fatal("more than %d actions at once", BANK_ACTIONS_MAX);
	need_tx = s->norder > 0;
	if (need_tx) {
		d->steptime.tx = util_mono_us();
		if (tx_begin(d) == -1)
			goto fail;
		for (i = 0; i < s->norder; i++) {
			int k = s->order[i];

			if (k >= ORDER_RESV) {
				const struct resv_action *a =
				    &s->resv.a[k - ORDER_RESV];

				rc = a->type == RESV_ACT_EVENT ?
				    append_resv_event(d, s, k - ORDER_RESV) :
				    save_resv(d, &a->r);
			} else if (s->bank.a[k].type == BANK_ACT_EVENT)
				rc = append_event(d, &s->bank.a[k],
				    bank_event_name(s->bank.a[k].ev), NULL);
			else
				rc = save_cell(d, s->bank.a[k].cell);
			if (rc == -1) {
				tx_rollback(d);
				goto fail;
			}
		}
		d->steptime.commit = util_mono_us();
		if (tx_commit(d) == -1)
			goto fail;
		d->steptime.durable = util_mono_us();
	}
	/* What the platform's retained cell states must show again. */
	for (i = 0; i < s->bank.n; i++)
		if (s->bank.a[i].cell >= 0)
			d->cell_dirty[s->bank.a[i].cell] = 1;
		else if (s->bank.a[i].board >= 0)
			for (int k = 0; k < d->bank.ncells; k++)
				if (d->cells[k].board == s->bank.a[i].board)
					d->cell_dirty[k] = 1;
	for (i = 0; i < s->resv.n; i++) {
		d->cell_dirty[s->resv.a[i].r.cell] = 1;
		if (s->resv.a[i].ev == RESV_EV_REASSIGNED &&
		    s->resv.a[i].type == RESV_ACT_EVENT)
			d->cell_dirty[s->resv.a[i].from_cell] = 1;
	}
	for (i = 0; i < s->resv.n; i++) {
		const struct resv_action *a = &s->resv.a[i];

		if (a->type == RESV_ACT_EVENT)
			log_info("cell %d: reservation %lld: %s",
			    d->cells[a->r.cell].number, (long long)a->r.id,
			    resv_event_name(a->ev));
		else if (a->type == RESV_ACT_NOTICE)
			kiosk_notice(d, "info", a->slot >= 0 ?
			    d->cells[a->cell].number : 0, a->text);
	}
	for (i = 0; i < s->bank.n; i++) {
		const struct bank_action *a = &s->bank.a[i];

		if (a->type == BANK_ACT_EVENT)
			log_action(d, a);
		if (a->type == BANK_ACT_EVENT && a->cell >= 0 &&
		    (a->ev == BANK_EV_DOOR_OPENED ||
		    a->ev == BANK_EV_DOOR_CLOSED))
			kiosk_notice(d, a->ev == BANK_EV_DOOR_OPENED ? "open" :
			    "closed", d->cells[a->cell].number, NULL);
		if (a->type != BANK_ACT_PULSE)
			continue;
		d->steptime.queued = util_mono_us();
		d->steptime.cpu_queued = util_thread_cpu_us();
		if (mb_unlock(d->mb, d->cells[a->cell].board,
		    d->cells[a->cell].channel, a->cell) == -1) {
			memset(&retry, 0, sizeof(retry));
			bank_unlock_result(&d->bank, a->cell, 0,
			    "too many unlocks queued for the board",
			    util_mono_ms(), &retry);
			lockerd_apply(d, &retry);
		}
	}
	/* After the relays: the platform hears of it, the door goes first. */
	if (need_tx) {
		kiosk_step_done(d, s);
		link_kick(d);
	}
	if (need_tx && d->unrecorded) {
		log_info("recording works again");
		d->unrecorded = 0;
	}
	return 0;
fail:
	/* Nothing was recorded, so nothing may move: undo in-flight unlocks
	 * and go back to the reservations as stored. */
	if (!d->unrecorded)
		log_error("could not record %d actions; no relay was pulsed, "
		    "door changes will be recorded when recording works "
		    "again", s->norder);
	else
		log_debug("could not record %d actions", s->norder);
	d->unrecorded = 1;
	keep_pending(d, s);
	for (i = 0; i < s->bank.n; i++)
		if (s->bank.a[i].type == BANK_ACT_PULSE)
			d->cells[s->bank.a[i].cell].unlocking = 0;
	for (i = 0; i < s->nissued; i++)
		sodium_memzero(s->issued[i].code, sizeof(s->issued[i].code));
	s->nissued = 0;
	if (s->resv.n > 0 && load_resv(d) == -1)
		log_error("the reservations could not be re-read either");
	return -1;
}

int
lockerd_apply(struct lockerd *d, struct bank_actions *acts)
{
	struct lockerd_step *s;
	int rc;

	/* Steps are large; keep them off the stack of nested calls. */
	if ((s = malloc(sizeof(*s))) == NULL) {
		log_error("out of memory recording %d actions", acts->n);
		return -1;
	}
	lockerd_step_init(s);
	s->bank = *acts;
	rc = lockerd_run(d, s);
	free(s);
	return rc;
}

static void
handle_report(struct lockerd *d, const struct mb_report *r,
    struct bank_actions *acts)
{
	switch (r->type) {
	case MB_REP_INPUTS:
		bank_inputs(&d->bank, r->board, r->door_open,
		    r->has_items ? r->item : NULL, r->nchannels, r->at_ms,
		    acts);
		break;
	case MB_REP_UNLOCK:
		bank_unlock_result(&d->bank, r->cell, r->ok, r->error,
		    r->at_ms, acts);
		break;
	case MB_REP_STATUS:
		util_strlcpy(d->board_error[r->board], r->ok ? "" : r->error,
		    sizeof(d->board_error[r->board]));
		bank_board_status(&d->bank, r->board, r->ok, r->error,
		    r->at_ms, acts);
		break;
	}
}

void
lockerd_mb_dispatch(struct lockerd *d)
{
	struct mb_report reps[32];
	struct bank_actions acts;
	int n, i;

	n = mb_drain(d->mb, reps, 32);
	for (i = 0; i < n; i++) {
		memset(&acts, 0, sizeof(acts));
		handle_report(d, &reps[i], &acts);
		lockerd_apply(d, &acts);
	}
}

void
lockerd_tick(struct lockerd *d)
{
	struct bank_actions acts;
	struct lockerd_step *s;
	int more;

	/* Once a loop turn, after its work: the ledger's mark follows the
	 * commits a moment later, one write for all of them (mark.c). */
	mark_tick(d);
	do {
		memset(&acts, 0, sizeof(acts));
		more = bank_tick(&d->bank, util_mono_ms(), &acts);
		lockerd_apply(d, &acts);
	} while (more);
	/* Expiry, overdue, grace windows: a handful per step. */
	if (d->resv.r == NULL || resv_next_deadline(&d->resv) > lockerd_now() ||
	    (s = malloc(sizeof(*s))) == NULL)
		return;
	do {
		lockerd_step_init(s);
		resv_tick(&d->resv, lockerd_now(), &s->resv);
		if (s->resv.n == 0 || lockerd_run(d, s) == -1)
			break;
	} while (resv_next_deadline(&d->resv) <= lockerd_now());
	free(s);
}

/* "group rw-, others r--" of a mode, for the refusal. */
static void
mode_words(mode_t m, char *buf, size_t len)
{
	snprintf(buf, len, "group %c%c%c, others %c%c%c",
	    m & S_IRGRP ? 'r' : '-', m & S_IWGRP ? 'w' : '-',
	    m & S_IXGRP ? 'x' : '-', m & S_IROTH ? 'r' : '-',
	    m & S_IWOTH ? 'w' : '-', m & S_IXOTH ? 'x' : '-');
}

/*
 * A path lockerd keeps must be out of other users' reach: none of the
 * forbid bits, and owned by lockerd's uid (or root, who may anyway).
 * Another user who could read the database would read undelivered codes;
 * one who could write a socket's folder could put their own listener in
 * the socket's place and hear staff log-ins. Missing is fine (created
 * later, at the right mode) unless must_exist.
 */
static int
check_mode(const struct config *c, const char *what, const char *path,
    mode_t forbid, mode_t wanted, int must_exist)
{
	char who[40], msg[CONFIG_PATH_MAX + 256];
	struct stat st;
	mode_t m;

	if (stat(path, &st) == -1) {
		if (errno == ENOENT && !must_exist)
			return 0;
		log_error("%s %s: %s", what, path, strerror(errno));
		return -1;
	}
	m = st.st_mode & 07777;
	if (st.st_uid != geteuid() && st.st_uid != 0)
		snprintf(msg, sizeof(msg), "%s %s is owned by uid %ld, not by "
		    "lockerd's uid %ld, so that user may change it (mode "
		    "%04o); wanted: owned by uid %ld, mode %04o or stricter",
		    what, path, (long)st.st_uid, (long)geteuid(),
		    (unsigned)m, (long)geteuid(), (unsigned)wanted);
	else if ((m & forbid) != 0) {
		mode_words(m, who, sizeof(who));
		snprintf(msg, sizeof(msg), "%s %s has mode %04o (%s): other "
		    "users may read or write it; wanted %04o or stricter "
		    "(chmod %o %s)", what, path, (unsigned)m, who,
		    (unsigned)wanted, (unsigned)(m & ~forbid & 07777), path);
	} else
		return 0;
	if (c->check_modes) {
		log_error("%s; or set [locker] check_modes = warn", msg);
		return -1;
	}
	log_warn("%s ([locker] check_modes = warn: starting anyway)", msg);
	return 0;
}

/* The folder of a socket or file path ("." if it names none). */
static void
folder_of(const char *path, char *out, size_t len)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		snprintf(out, len, ".");
	else if (slash == path)
		snprintf(out, len, "/");
	else
		snprintf(out, len, "%.*s", (int)(slash - path), path);
}

int
lockerd_state_dir(const struct config *c)
{
	static const char *const db_files[] = { "", "-wal", "-shm",
		"-journal" };
	char dir[CONFIG_PATH_MAX], file[CONFIG_PATH_MAX + 16];
	const char *path = c->state_dir;
	struct stat st;
	size_t i;

	if (mkdir(path, 0700) == -1 && errno != EEXIST) {
		log_error("state folder %s: %s", path, strerror(errno));
		return -1;
	}
	if (stat(path, &st) == -1 || !S_ISDIR(st.st_mode)) {
		log_error("state folder %s: not a folder", path);
		return -1;
	}
	if (check_mode(c, "state folder", path, 077, 0700, 1) == -1)
		return -1;
	/* The database and what SQLite keeps beside it hold codes. */
	if (strcmp(c->database, ":memory:") != 0) {
		for (i = 0; i < sizeof(db_files) / sizeof(db_files[0]); i++) {
			snprintf(file, sizeof(file), "%s%s", c->database,
			    db_files[i]);
			if (check_mode(c, "database file", file, 077, 0600,
			    0) == -1)
				return -1;
		}
		folder_of(c->database, dir, sizeof(dir));
		if (strcmp(dir, path) != 0 && check_mode(c, "database "
		    "folder", dir, 027, 0750, 0) == -1)
			return -1;
	}
	/* Whoever may write a socket's folder may replace the socket. */
	folder_of(c->kiosk_socket, dir, sizeof(dir));
	if (strcmp(dir, path) != 0 && check_mode(c, "keypad socket folder",
	    dir, 027, 0750, 0) == -1)
		return -1;
	if (c->control_socket[0] != '\0') {
		folder_of(c->control_socket, dir, sizeof(dir));
		if (strcmp(dir, path) != 0 && check_mode(c, "control socket "
		    "folder", dir, 027, 0750, 0) == -1)
			return -1;
	}
	return 0;
}

static int
load_cells(struct lockerd *d)
{
	const struct config *c = &d->cfg;
	struct store_cell sc;
	int i;

	if (store_begin(d->store) == -1)
		return -1;
	for (i = 0; i < c->ncells; i++) {
		const struct config_cell *cc = &c->cells[i];
		if (store_cell_define(d->store, cc->number,
		    c->boards[cc->board].name, cc->channel, cc->size) == -1) {
			store_rollback(d->store);
			return -1;
		}
	}
	if (store_commit(d->store) == -1)
		return -1;
	for (i = 0; i < c->ncells; i++) {
		const struct config_cell *cc = &c->cells[i];
		struct bank_cell *bc = &d->cells[i];

		if (store_cell_get(d->store, cc->number, &sc) == -1)
			return -1;
		memset(bc, 0, sizeof(*bc));
		bc->number = cc->number;
		bc->board = cc->board;
		bc->channel = cc->channel;
		bc->size = cc->size;
		if (bank_door_parse(sc.door, &bc->door) == -1)
			bc->door = BANK_DOOR_UNKNOWN;
		bc->in_service = sc.in_service;
		bc->fault = strcmp(sc.fault, "door_jammed") == 0 ?
		    BANK_FAULT_JAMMED : BANK_FAULT_NONE;
		bc->item = sc.item;
		bc->expect_open = sc.unlock_pending;
	}
	return 0;
}

/* Waits for the first read (or fault) of every board, then reconciles. */
static int
first_read(struct lockerd *d)
{
	int64_t deadline = util_mono_ms() + d->cfg.timing.startup_read_ms, left;
	struct bank_actions acts;
	struct pollfd pfd;
	int i, waiting;
	json_t *extra;

	for (;;) {
		waiting = 0;
		for (i = 0; i < d->cfg.nboards; i++)
			if (!d->boards[i].seen && d->boards[i].ok)
				waiting++;
		if (waiting == 0 || util_mono_ms() >= deadline)
			break;
		pfd.fd = mb_fd(d->mb);
		pfd.events = POLLIN;
		/* Waiting for boards is progress: the watchdog hears of it. */
		notify_watchdog();
		left = deadline - util_mono_ms();
		if (poll(&pfd, 1, left > 1000 ? 1000 : left < 0 ? 0 :
		    (int)left) > 0)
			lockerd_mb_dispatch(d);
	}
	for (i = 0; i < d->cfg.nboards; i++)
		if (!d->boards[i].seen)
			log_warn("board %s: no reading at start-up; its cells "
			    "keep their stored state until it answers",
			    d->cfg.boards[i].name);
	/* mark_seq: the ledger's mark at this start (mark.c), which also
	 * says that this ledger is kept under one. */
	extra = json_pack("{s:I, s:s, s:I}", "boot", (json_int_t)d->boot,
	    "version", LOCKERD_VERSION, "mark_seq", (json_int_t)d->head.m.seq);
	/* Held, nothing is recorded: "started" follows the restore_ack. */
	if (extra == NULL || (d->head.held[0] == '\0' &&
	    lockerd_record(d, "started", extra) == -1)) {
		json_decref(extra);
		return -1;
	}
	json_decref(extra);
	memset(&acts, 0, sizeof(acts));
	bank_reconcile(&d->bank, util_mono_ms(), &acts);
	lockerd_tick(d);
	return 0;
}

/* Active reservations, believed only if the device key signed them. */
struct load_arg {
	struct lockerd *d;
	char rejected[8][24];
	char why[8][96];
	int nrejected;
	int loaded;
};

static int
resv_row(const char *key, const char *body, const void *sig, size_t siglen,
    void *arg)
{
	struct load_arg *la = arg;
	struct lockerd *d = la->d;
	char why[96] = "";
	int64_t last;
	struct resv r;
	json_t *o;

	o = custody_row_open(d->keys->sign_pk, "resv", body, sig, siglen, why,
	    sizeof(why));
	if (o != NULL && custody_resv_parse(o, &d->bank, &r, why,
	    sizeof(why)) == 0 && strcmp(key, "") != 0 &&
	    r.id == strtoll(key, NULL, 10)) {
		/* Signed, but is it the newest? The verified ledger says,
		 * never the database's own columns (mark.c). */
		if ((last = mark_resv_expected(d, r.id)) == 0)
			snprintf(why, sizeof(why), "not active in the ledger "
			    "(row at seq %lld)", (long long)r.last_seq);
		else if (last != r.last_seq)
			snprintf(why, sizeof(why), "older than its ledger "
			    "(row at seq %lld, newest event seq %lld)",
			    (long long)r.last_seq, (long long)last);
		else if (resv_restore(&d->resv, &r) == 0)
			la->loaded++;
		else
			snprintf(why, sizeof(why), "its cell is taken or it "
			    "has ended");
	} else if (why[0] == '\0')
		snprintf(why, sizeof(why), "its id does not match");
	json_decref(o);
	if (why[0] != '\0') {
		log_error("reservation %s: rejected: %s; no door opens for it",
		    key, why);
		if (la->nrejected < 8) {
			snprintf(la->rejected[la->nrejected], 24, "%s", key);
			snprintf(la->why[la->nrejected], 96, "%s", why);
			la->nrejected++;
		}
	}
	return 0;
}

/*
 * Once, at start: a reservation the verified ledger knows as live must
 * be loaded. One that the database stopped calling active (its active
 * column, unsigned) is loaded from its row if that is good and fresh,
 * and the column put right; either way it is an alarm.
 */
static int
live_check(struct lockerd *d, struct load_arg *la)
{
	struct mark_head *h = &d->head;
	char key[24];
	int i, j, before;

	for (i = 0; i < h->nlive; i++) {
		if (resv_slot_of_id(&d->resv, h->live[i].id) != -1)
			continue;
		snprintf(key, sizeof(key), "%lld", (long long)h->live[i].id);
		/* Its row was read, and rejected, already. */
		for (j = 0; j < la->nrejected; j++)
			if (strcmp(la->rejected[j], key) == 0)
				break;
		if (j < la->nrejected)
			continue;
		before = la->nrejected;
		if (store_resv_get(d->store, h->live[i].id, resv_row, la) ==
		    -1)
			return -1;
		if (la->nrejected > before)
			continue;
		if (la->nrejected < 8) {
			snprintf(la->rejected[la->nrejected], 24, "%s", key);
			snprintf(la->why[la->nrejected], 96, "%s",
			    resv_slot_of_id(&d->resv, h->live[i].id) != -1 ?
			    "live in the ledger but not marked active in the "
			    "database; loaded from its signed row" :
			    "live in the ledger but its row is missing");
			la->nrejected++;
		}
		log_error("reservation %s: live in the ledger (seq %lld) but %s",
		    key, (long long)h->live[i].seq, resv_slot_of_id(&d->resv,
		    h->live[i].id) != -1 ? "not marked active in the database: "
		    "loaded from its signed row" : "its row is missing; no door "
		    "opens for it");
		if (resv_slot_of_id(&d->resv, h->live[i].id) != -1 &&
		    (store_begin(d->store) == -1 || store_resv_set_active(
		    d->store, h->live[i].id, 1) == -1 ||
		    store_commit(d->store) == -1))
			store_rollback(d->store);
	}
	free(h->live);
	h->live = NULL;
	h->nlive = 0;
	return 0;
}

static int
load_resv(struct lockerd *d)
{
	struct resv_timing rt;
	struct load_arg la;
	int64_t max;
	int i;

	memset(&la, 0, sizeof(la));
	la.d = d;
	resv_free(&d->resv);
	if ((max = store_resv_max_id(d->store)) == -1)
		return -1;
	rt.grace_ms = (int64_t)d->cfg.codes.grace_s * 1000;
	rt.pickup_due_ms = (int64_t)d->cfg.codes.pickup_due_h * 3600 * 1000;
	if (resv_init(&d->resv, &d->bank, &rt, max + 1) == -1) {
		log_error("reservations: out of memory");
		return -1;
	}
	if (store_resv_active(d->store, resv_row, &la) == -1)
		return -1;
	if (live_check(d, &la) == -1)
		return -1;
	for (i = 0; i < la.nrejected; i++) {
		json_t *x = json_pack("{s:b, s:s, s:s, s:s}", "alarm", 1,
		    "record", "reservation", "id", la.rejected[i], "reason",
		    la.why[i]);

		if (x == NULL || lockerd_record(d, "record_rejected", x) == -1)
			log_error("could not record the rejected reservation");
		json_decref(x);
	}
	log_debug("reservations: %d active", la.loaded);
	return 0;
}

/*
 * The device keys. A key is made only on a first start, with an empty
 * database: over a ledger a new key would silently kill every live code,
 * every staff PIN and the whole chain's verification.
 */
static int
load_keys(struct lockerd *d)
{
	uint8_t pk[CODES_PK_LEN];
	char err[512];
	int empty;

	if ((empty = store_is_empty(d->store)) == -1)
		return -1;
	if ((d->keys = codes_keys_open(d->cfg.key_file, empty, err,
	    sizeof(err))) == NULL) {
		if (!empty && access(d->cfg.key_file, F_OK) == -1 &&
		    errno == ENOENT)
			log_error("%s: the device key file is missing, but the "
			    "database %s already holds records signed with it. "
			    "lockerd makes a key only on a first start with an "
			    "empty database (a new one would make every live "
			    "code, staff PIN and the whole ledger fail). Restore "
			    "the key file from its backup (mode 0600, owned by "
			    "lockerd's user); to start this locker over from "
			    "nothing, move the database and its -mark file away "
			    "first", d->cfg.key_file, d->cfg.database);
		else
			log_error("%s", err);
		return -1;
	}
	/* The key the platform and this locker share for code MACs. */
	if (d->cfg.mqtt.platform_key[0] != '\0' &&
	    codes_unhex(d->cfg.mqtt.platform_key, pk, sizeof(pk)) == 0) {
		if ((d->head.code_key = sodium_malloc(LEDGER_HASH_LEN)) == NULL ||
		    ledger_code_key(d->keys->sign_sk, d->keys->sign_pk, pk, 1,
		    d->head.code_key) == -1) {
			log_error("[mqtt] platform_key is not a usable Ed25519 "
			    "public key");
			return -1;
		}
		sodium_mprotect_readonly(d->head.code_key);
	}
	return 0;
}

/* Staff rows that disagree with the verified ledger: alarms, at start. */
static void
staff_rejected(const char *id, const char *why, void *arg)
{
	struct lockerd *d = arg;
	json_t *x = json_pack("{s:b, s:s, s:s, s:s}", "alarm", 1, "record",
	    "staff", "id", id, "reason", why);

	if (x == NULL || lockerd_record(d, "record_rejected", x) == -1)
		log_error("could not record the rejected staff account");
	json_decref(x);
}

static int
check_staff(struct lockerd *d)
{
	return staff_scan(d->store, d->keys->sign_pk, staff_rejected, d);
}

int
lockerd_load_resv(struct lockerd *d)
{
	return load_resv(d);
}

int
lockerd_reissue(struct lockerd *d, int64_t id)
{
	struct lockerd_step *s;
	int rc = -1;

	if ((s = malloc(sizeof(*s))) == NULL)
		return -1;
	lockerd_step_init(s);
	if (resv_reissue(&d->resv, id, lockerd_now(), &s->resv) == RESV_OK)
		rc = lockerd_run(d, s);
	for (int i = 0; i < s->nissued; i++)
		sodium_memzero(s->issued[i].code, sizeof(s->issued[i].code));
	free(s);
	return rc;
}

int
lockerd_start_offline(struct lockerd *d)
{
	struct bank_timing t;
	char err[512];

	if (lockerd_state_dir(&d->cfg) == -1)
		return -1;
	if ((d->store = store_open(d->cfg.database, err, sizeof(err))) ==
	    NULL) {
		log_error("%s", err);
		return -1;
	}
	/*
	 * A crash or power loss between wiping delivered codes and the
	 * checkpoint that scrubs the WAL leaves their plain text in old WAL
	 * frames, which nothing would overwrite for a long time: scrub once
	 * now (test_powerloss found it).
	 */
	store_scrub(d->store);
	if (load_keys(d) == -1)
		return -1;
	if ((d->boot = store_boot(d->store)) == -1 || load_cells(d) == -1 ||
	    mark_start(d) == -1)
		return -1;
	t.debounce_ms = d->cfg.timing.debounce_ms;
	t.unlock_confirm_ms = d->cfg.timing.unlock_confirm_ms;
	t.unlock_retries = d->cfg.timing.unlock_retries;
	t.door_left_open_ms = (int64_t)d->cfg.timing.door_left_open_s * 1000;
	t.door_left_open_repeat_ms =
	    (int64_t)d->cfg.timing.door_left_open_repeat_s * 1000;
	bank_init(&d->bank, d->cells, d->cfg.ncells, d->boards,
	    d->cfg.nboards, &t);
	if (kiosk_start(d) == -1)
		return -1;
	/* Not failures here: every command takes a token (link.c). */
	throttle_init_rate(&d->cmd_thr, d->cfg.mqtt.command_burst,
	    d->cfg.mqtt.command_rate, util_mono_ms());
	if (load_resv(d) == -1)
		return -1;
	return d->head.held[0] != '\0' ? 0 : check_staff(d);
}

int
lockerd_start(struct lockerd *d)
{
	if (lockerd_start_offline(d) == -1)
		return -1;
	if ((d->mb = mb_start(&d->cfg)) == NULL)
		return -1;
	if (first_read(d) == -1)
		return -1;
	if (d->cfg.control_socket[0] != '\0' &&
	    (d->ctl = jsonl_open(d->cfg.control_socket, 0600, ctl_handle, d)) ==
	    NULL)
		return -1;
	if (d->ctl != NULL)
		jsonl_limits(d->ctl, d->cfg.control.client_timeout_s,
		    d->cfg.control.client_idle_s);
	if (kiosk_open(d) == -1)
		return -1;
	log_info("locker %s: %d cells on %d boards, boot %lld, %s",
	    d->cfg.locker_id, d->cfg.ncells, d->cfg.nboards,
	    (long long)d->boot, d->head.held[0] != '\0' ? "HELD (see above)" :
	    "ready");
	return 0;
}

void
lockerd_stop(struct lockerd *d)
{
	jsonl_close(d->ctl);
	d->ctl = NULL;
	jsonl_close(d->kiosk);
	d->kiosk = NULL;
	/* The workers switch off any relay still in a pulse. */
	mb_stop(d->mb);
	d->mb = NULL;
	/* Exact at a clean stop: what reached the broker included. */
	mark_flush(d, 1);
	mark_free(d);
	if (d->head.code_key != NULL)
		sodium_free(d->head.code_key);
	d->head.code_key = NULL;
	store_close(d->store);
	d->store = NULL;
	resv_free(&d->resv);
	codes_keys_free(d->keys);
	d->keys = NULL;
	sodium_memzero(&d->session, sizeof(d->session));
}

int
lockerd_health(struct lockerd *d, char *why, size_t len)
{
	if (store_check(d->store, why, len) == -1)
		return -1;
	if (d->db_failing) {
		snprintf(why, len, "the last database transaction failed "
		    "(see the log above) and none has succeeded since");
		return -1;
	}
	return 0;
}

int64_t
lockerd_watchdog(struct lockerd *d, int64_t now)
{
	char why[sizeof(d->wd_why)];

	if (d->wd_ms <= 0)
		return INT64_MAX;
	if (now < d->wd_next)
		return d->wd_next;
	d->wd_next = now + d->wd_ms;
	if (lockerd_health(d, why, sizeof(why)) == 0) {
		notify_watchdog();
		if (d->wd_sick) {
			log_info("watchdog: healthy again, pinging");
			notify_status("running; locker %s, %d cells",
			    d->cfg.locker_id, d->cfg.ncells);
			d->wd_sick = 0;
		}
		return d->wd_next;
	}
	if (!d->wd_sick || strcmp(why, d->wd_why) != 0) {
		log_error("watchdog: not pinging, the database is not usable: "
		    "%s", why);
		notify_status("database not usable: %s", why);
		util_strlcpy(d->wd_why, why, sizeof(d->wd_why));
	}
	d->wd_sick = 1;
	return d->wd_next;
}

/* What SIGHUP cannot apply: "[section] key" of each change. */
struct restart_list {
	char text[512];
	int n;
};

static void
restart_add(struct restart_list *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
restart_add(struct restart_list *r, const char *fmt, ...)
{
	size_t len = strlen(r->text);
	va_list ap;

	if (len + 8 >= sizeof(r->text))
		return;
	if (r->n++ > 0) {
		memcpy(r->text + len, ", ", 3);
		len += 2;
	}
	va_start(ap, fmt);
	vsnprintf(r->text + len, sizeof(r->text) - len, fmt, ap);
	va_end(ap);
}

/* A field of both configurations, and its key's name in the file. */
#define RL_STR(sec, key, o, n, f) do { if (strcmp((o)->f, (n)->f) != 0) \
	restart_add(rl, "%s %s", sec, key); } while (0)
#define RL_INT(sec, key, o, n, f) do { if ((o)->f != (n)->f) \
	restart_add(rl, "%s %s", sec, key); } while (0)

static void
restart_keys(const struct config *o, const struct config *n,
    struct restart_list *rl)
{
	char sec[48];
	int i, j;

	RL_STR("[locker]", "id", o, n, locker_id);
	RL_STR("[locker]", "state_dir", o, n, state_dir);
	RL_STR("[locker]", "database", o, n, database);
	RL_STR("[locker]", "profile_dir", o, n, profile_dir);
	RL_STR("[locker]", "key_file", o, n, key_file);
	RL_INT("[log]", "target", o, n, log_syslog);
	RL_STR("[control]", "socket", o, n, control_socket);
	RL_STR("[kiosk]", "socket", o, n, kiosk_socket);
	RL_INT("[codes]", "digits", o, n, codes.digits);
	RL_INT("[codes]", "grace_s", o, n, codes.grace_s);
	RL_INT("[codes]", "dropoff_valid_h", o, n, codes.dropoff_valid_h);
	RL_INT("[codes]", "pickup_due_h", o, n, codes.pickup_due_h);
	RL_INT("[kiosk]", "staff_session_s", o, n, kiosk.staff_session_s);
	RL_INT("[kiosk]", "code_burst", o, n, kiosk.code_burst);
	RL_INT("[kiosk]", "code_refill_s", o, n, kiosk.code_refill_s);
	RL_INT("[kiosk]", "pin_burst", o, n, kiosk.pin_burst);
	RL_INT("[kiosk]", "pin_refill_s", o, n, kiosk.pin_refill_s);
	RL_INT("[kiosk]", "pin_hash_kib", o, n, kiosk.pin_hash_kib);
	RL_INT("[kiosk]", "pin_hash_passes", o, n, kiosk.pin_hash_passes);
	RL_INT("[kiosk]", "client_timeout_s", o, n, kiosk.client_timeout_s);
	RL_INT("[kiosk]", "client_idle_s", o, n, kiosk.client_idle_s);
	RL_STR("[kiosk]", "client_user", o, n, kiosk.client_user);
	RL_INT("[control]", "client_timeout_s", o, n,
	    control.client_timeout_s);
	RL_INT("[control]", "client_idle_s", o, n, control.client_idle_s);
	RL_INT("[locker]", "check_modes", o, n, check_modes);
	RL_STR("[mqtt]", "host", o, n, mqtt.host);
	RL_INT("[mqtt]", "port", o, n, mqtt.port);
	/* An empty client_id is the locker id, named above. */
	if (strcmp(o->mqtt.client_id, o->locker_id) != 0 ||
	    strcmp(n->mqtt.client_id, n->locker_id) != 0)
		RL_STR("[mqtt]", "client_id", o, n, mqtt.client_id);
	RL_STR("[mqtt]", "prefix", o, n, mqtt.prefix);
	RL_STR("[mqtt]", "username", o, n, mqtt.username);
	RL_STR("[mqtt]", "password", o, n, mqtt.password);
	RL_STR("[mqtt]", "cafile", o, n, mqtt.cafile);
	RL_STR("[mqtt]", "certfile", o, n, mqtt.certfile);
	RL_STR("[mqtt]", "keyfile", o, n, mqtt.keyfile);
	RL_INT("[mqtt]", "keepalive_s", o, n, mqtt.keepalive_s);
	RL_INT("[mqtt]", "inflight", o, n, mqtt.inflight);
	RL_INT("[mqtt]", "reconnect_min_ms", o, n, mqtt.reconnect_min_ms);
	RL_INT("[mqtt]", "reconnect_max_ms", o, n, mqtt.reconnect_max_ms);
	RL_STR("[mqtt]", "platform_key", o, n, mqtt.platform_key);
	RL_INT("[mqtt]", "command_window_s", o, n, mqtt.command_window_s);
	RL_INT("[mqtt]", "command_rate", o, n, mqtt.command_rate);
	RL_INT("[mqtt]", "command_burst", o, n, mqtt.command_burst);
	RL_INT("[mqtt]", "unsigned_rate", o, n, mqtt.unsigned_rate);
	RL_INT("[mqtt]", "unsigned_burst", o, n, mqtt.unsigned_burst);
	RL_INT("[mqtt]", "protocol", o, n, mqtt.protocol);
	RL_INT("[mqtt]", "refused_alarm_s", o, n, mqtt.refused_alarm_s);
	RL_INT("[mqtt]", "command_log_s", o, n, mqtt.command_log_s);
	RL_INT("[mqtt]", "command_log_rows", o, n, mqtt.command_log_rows);
	for (i = 0; i < n->nbuses; i++) {
		const struct config_bus *nb = &n->buses[i], *ob = NULL;

		for (j = 0; j < o->nbuses; j++)
			if (strcmp(o->buses[j].name, nb->name) == 0)
				ob = &o->buses[j];
		snprintf(sec, sizeof(sec), "[bus %s]", nb->name);
		if (ob == NULL) {
			restart_add(rl, "%s (new)", sec);
			continue;
		}
		RL_INT(sec, "type", ob, nb, type);
		RL_STR(sec, "host", ob, nb, host);
		RL_INT(sec, "port", ob, nb, port);
		RL_STR(sec, "device", ob, nb, device);
		RL_INT(sec, "baud", ob, nb, baud);
		RL_INT(sec, "parity", ob, nb, parity);
		RL_INT(sec, "data_bits", ob, nb, data_bits);
		RL_INT(sec, "stop_bits", ob, nb, stop_bits);
		RL_INT(sec, "rs485", ob, nb, rs485);
		RL_INT(sec, "timeout_ms", ob, nb, timeout_ms);
	}
	for (j = 0; j < o->nbuses; j++) {
		for (i = 0; i < n->nbuses; i++)
			if (strcmp(o->buses[j].name, n->buses[i].name) == 0)
				break;
		if (i == n->nbuses)
			restart_add(rl, "[bus %s] (removed)", o->buses[j].name);
	}
	for (i = 0; i < n->nboards; i++) {
		const struct config_board *nb = &n->boards[i], *ob = NULL;

		for (j = 0; j < o->nboards; j++)
			if (strcmp(o->boards[j].name, nb->name) == 0)
				ob = &o->boards[j];
		snprintf(sec, sizeof(sec), "[board %s]", nb->name);
		if (ob == NULL) {
			restart_add(rl, "%s (new)", sec);
			continue;
		}
		RL_STR(sec, "bus", ob, nb, bus_name);
		RL_INT(sec, "unit", ob, nb, unit);
		RL_STR(sec, "profile", ob, nb, profile_name);
		if (memcmp(&ob->profile, &nb->profile, sizeof(ob->profile)))
			restart_add(rl, "%s profile file", sec);
	}
	for (j = 0; j < o->nboards; j++) {
		for (i = 0; i < n->nboards; i++)
			if (strcmp(o->boards[j].name, n->boards[i].name) == 0)
				break;
		if (i == n->nboards)
			restart_add(rl, "[board %s] (removed)",
			    o->boards[j].name);
	}
	if (o->ncells != n->ncells)
		restart_add(rl, "[cells]");
	else
		for (i = 0; i < n->ncells; i++) {
			const struct config_cell *a = &o->cells[i], *b = &n->cells[i];

			if (a->number != b->number || a->channel != b->channel ||
			    a->size != b->size ||
			    strcmp(a->board_name, b->board_name) != 0) {
				restart_add(rl, "[cells]");
				break;
			}
		}
}

#define TIMING_KEY(f) { #f, offsetof(struct config_timing, f) }

void
lockerd_reload(struct lockerd *d)
{
	static const struct {
		const char *name;
		size_t off;
	} tk[] = {
		TIMING_KEY(poll_ms), TIMING_KEY(debounce_ms),
		TIMING_KEY(unlock_confirm_ms), TIMING_KEY(unlock_retries),
		TIMING_KEY(door_left_open_s), TIMING_KEY(door_left_open_repeat_s),
		TIMING_KEY(startup_read_ms), TIMING_KEY(board_backoff_min_ms),
		TIMING_KEY(board_backoff_max_ms),
	};
	struct restart_list rl;
	struct config *nc;
	char err[512];
	size_t i;
	int changed = 0, o, n;

	if (d->config_path == NULL) {
		log_info("SIGHUP: running on the built-in default; nothing to "
		    "reload");
		return;
	}
	if ((nc = malloc(sizeof(*nc))) == NULL) {
		log_error("SIGHUP: out of memory");
		return;
	}
	if (config_load(nc, d->config_path, d->overrides, err, sizeof(err)) ==
	    -1) {
		log_error("SIGHUP: keeping the running configuration: %s", err);
		free(nc);
		return;
	}
	/* Said before the level changes, so that it is seen either way. */
	if (nc->log_level != d->cfg.log_level) {
		log_info("SIGHUP: [log] level: %s -> %s",
		    log_level_name(d->cfg.log_level),
		    log_level_name(nc->log_level));
		changed++;
	}
	for (i = 0; i < sizeof(tk) / sizeof(tk[0]); i++) {
		o = *(const int *)((const char *)&d->cfg.timing + tk[i].off);
		n = *(const int *)((const char *)&nc->timing + tk[i].off);
		if (o != n) {
			log_info("SIGHUP: [timing] %s: %d -> %d", tk[i].name, o,
			    n);
			changed++;
		}
	}
	log_set_level(nc->log_level);
	d->cfg.log_level = nc->log_level;
	d->cfg.timing = nc->timing;
	d->bank.t.debounce_ms = nc->timing.debounce_ms;
	d->bank.t.unlock_confirm_ms = nc->timing.unlock_confirm_ms;
	d->bank.t.unlock_retries = nc->timing.unlock_retries;
	d->bank.t.door_left_open_ms = (int64_t)nc->timing.door_left_open_s *
	    1000;
	d->bank.t.door_left_open_repeat_ms =
	    (int64_t)nc->timing.door_left_open_repeat_s * 1000;
	mb_set_timing(d->mb, &nc->timing);
	memset(&rl, 0, sizeof(rl));
	restart_keys(&d->cfg, nc, &rl);
	if (rl.n > 0)
		log_warn("SIGHUP: changed in the file, these need a restart "
		    "to take effect (running on the old values): %s", rl.text);
	log_info("SIGHUP: reloaded %s: %d change%s applied%s",
	    d->config_path, changed, changed == 1 ? "" : "s",
	    changed ? "" : " (log level and timings as before)");
	free(nc);
}
