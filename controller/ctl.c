/*
 * The operator control socket: local commands (open a cell, take it in or
 * out of service, read the state and the ledger) as JSON lines. The socket
 * is mode 0600 and off unless configured: whoever can reach it is root on
 * the locker's controller and could drive the relays directly anyway.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "lockerd.h"
#include "log.h"
#include "util.h"

#define CTL_EVENTS_MAX 200

static int
get_cell(struct lockerd *d, json_t *req, int *cell, json_t **err)
{
	json_t *v = json_object_get(req, "cell");

	if (v == NULL) {
		*err = jsonl_error("missing field 'cell'");
		return -1;
	}
	if (!json_is_integer(v)) {
		*err = jsonl_error("field 'cell' must be an integer");
		return -1;
	}
	*cell = bank_cell_index(&d->bank, (int)json_integer_value(v));
	if (json_integer_value(v) < 1 || json_integer_value(v) > 999 ||
	    *cell == -1) {
		*err = jsonl_error("no cell %lld in this locker",
		    (long long)json_integer_value(v));
		return -1;
	}
	return 0;
}

static json_t *
ctl_open(struct lockerd *d, json_t *req)
{
	struct bank_actions acts;
	enum bank_refusal r;
	json_t *err;
	int cell;

	if (get_cell(d, req, &cell, &err) == -1)
		return err;
	memset(&acts, 0, sizeof(acts));
	r = bank_unlock(&d->bank, cell, "operator", util_mono_ms(), &acts);
	if (r != BANK_OK)
		return jsonl_error("cell %d: %s", d->cells[cell].number,
		    bank_refusal_str(r));
	if (lockerd_apply(d, &acts) == -1)
		return jsonl_error("cell %d: the unlock could not be recorded; "
		    "the door was not opened", d->cells[cell].number);
	return json_pack("{s:b, s:i}", "ok", 1, "cell", d->cells[cell].number);
}

static json_t *
ctl_service(struct lockerd *d, json_t *req)
{
	struct bank_actions acts;
	json_t *in, *err;
	int cell;

	if (get_cell(d, req, &cell, &err) == -1)
		return err;
	in = json_object_get(req, "in");
	if (!json_is_boolean(in))
		return jsonl_error("field 'in' must be true or false");
	memset(&acts, 0, sizeof(acts));
	bank_set_service(&d->bank, cell, json_is_true(in), util_mono_ms(),
	    &acts);
	if (lockerd_apply(d, &acts) == -1)
		return jsonl_error("cell %d: the change could not be recorded",
		    d->cells[cell].number);
	return json_pack("{s:b}", "ok", 1);
}

static json_t *
cell_json(struct lockerd *d, int i)
{
	const struct bank_cell *c = &d->cells[i];
	char size[2] = { c->size, '\0' };
	const char *fault = c->fault == BANK_FAULT_JAMMED ? "door_jammed" :
	    !d->boards[c->board].ok ? "board_fault" : NULL;

	return json_pack("{s:i, s:s, s:i, s:s, s:s, s:o, s:s, s:o, s:b}",
	    "cell", c->number, "board", d->cfg.boards[c->board].name,
	    "channel", c->channel, "size", size,
	    "door", bank_door_name(c->door),
	    "item", c->item < 0 ? json_null() : json_boolean(c->item),
	    "service", c->in_service ? "in" : "out",
	    "fault", fault ? json_string(fault) : json_null(),
	    "unlocking", c->unlocking);
}

static json_t *
ctl_state(struct lockerd *d)
{
	json_t *cells = json_array(), *boards = json_array();
	int i;

	for (i = 0; i < d->bank.ncells; i++)
		json_array_append_new(cells, cell_json(d, i));
	for (i = 0; i < d->cfg.nboards; i++) {
		const struct config_board *b = &d->cfg.boards[i];
		json_array_append_new(boards, json_pack(
		    "{s:s, s:s, s:i, s:s, s:b, s:o}", "name", b->name,
		    "bus", d->cfg.buses[b->bus].name, "unit", b->unit,
		    "profile", b->profile.name, "ok", d->boards[i].ok,
		    "error", d->boards[i].ok ? json_null() :
		    json_string(d->board_error[i])));
	}
	return json_pack("{s:b, s:s, s:I, s:o, s:o}", "ok", 1, "locker",
	    d->cfg.locker_id, "boot", (json_int_t)d->boot, "cells", cells,
	    "boards", boards);
}

static int
add_event(int64_t seq, const char *body, void *arg)
{
	json_t *ev = json_loads(body, 0, NULL);

	(void)seq;
	if (ev == NULL)
		return -1;
	return json_array_append_new(arg, ev);
}

static int
ctl_event_one(int64_t seq, const char *body, void *arg)
{
	(void)seq;
	*(json_t **)arg = json_loads(body, 0, NULL);
	return 0;
}

static json_t *
ctl_events(struct lockerd *d, json_t *req)
{
	json_t *after = json_object_get(req, "after"), *events;

	if (after != NULL && !json_is_integer(after))
		return jsonl_error("field 'after' must be an integer");
	events = json_array();
	if (store_events_after(d->store, after ? json_integer_value(after) : 0,
	    CTL_EVENTS_MAX, add_event, events) == -1) {
		json_decref(events);
		return jsonl_error("reading the ledger failed");
	}
	return json_pack("{s:b, s:o}", "ok", 1, "events", events);
}

json_t *
ctl_resv_json(struct lockerd *d, const struct resv *r)
{
	char when[UTIL_ISO_LEN];
	json_t *o;

	o = json_pack("{s:I, s:s, s:s, s:i, s:s, s:b}",
	    "resv", (json_int_t)r->id,
	    "kind", r->kind == RESV_DROPOFF ? "dropoff" : "pickup",
	    "state", resv_state_name(r->state),
	    "cell", d->cells[r->cell].number, "app", r->app,
	    "cancelled", r->cancelled);
	if (o == NULL)
		return NULL;
	/* A pickup has its due time once it is loaded, not before. */
	if (r->valid_until != 0) {
		util_iso_time(r->valid_until, when, sizeof(when));
		json_object_set_new(o, r->kind == RESV_DROPOFF ?
		    "valid_until" : "due", json_string(when));
	}
	if (r->staff[0] != '\0')
		json_object_set_new(o, "staff", json_string(r->staff));
	return o;
}

/* The reply that hands a new code over: the only place it is shown. */
static json_t *
code_reply(struct lockerd *d, struct lockerd_step *s, int slot)
{
	char cred[CODES_CRED_MAX];
	json_t *o;
	int i;

	if ((o = ctl_resv_json(d, &d->resv.r[slot])) == NULL)
		return NULL;
	json_object_set_new(o, "ok", json_true());
	for (i = 0; i < s->nissued; i++) {
		if (s->issued[i].resv != d->resv.r[slot].id)
			continue;
		json_object_set_new(o, "code", json_string(s->issued[i].code));
		sodium_memzero(s->issued[i].code, sizeof(s->issued[i].code));
	}
	if (lockerd_credential(d, &d->resv.r[slot], cred, sizeof(cred)) == 0)
		json_object_set_new(o, "credential", json_string(cred));
	return o;
}

static json_t *
ctl_reserve(struct lockerd *d, json_t *req, struct lockerd_step *s)
{
	json_t *app = json_object_get(req, "app"), *size =
	    json_object_get(req, "size"), *valid = json_object_get(req,
	    "valid_s"), *phone = json_object_get(req, "phone");
	uint8_t ph[CODES_HASH_LEN];
	const char *sz;
	enum resv_refusal r;
	int64_t valid_ms;
	int slot = -1;

	if (!json_is_string(app) || json_string_length(app) == 0 ||
	    json_string_length(app) >= RESV_APP_MAX)
		return jsonl_error("field 'app' must be the application "
		    "number, 1-%d characters", RESV_APP_MAX - 1);
	sz = json_string_value(size);
	if (sz == NULL || strlen(sz) != 1 || strchr("SML", sz[0]) == NULL)
		return jsonl_error("field 'size' must be S, M or L");
	if (valid != NULL && (!json_is_integer(valid) ||
	    json_integer_value(valid) < 60 ||
	    json_integer_value(valid) > 90 * 86400))
		return jsonl_error("field 'valid_s' must be 60 to 7776000 "
		    "seconds");
	if (phone != NULL && (!json_is_string(phone) ||
	    !codes_valid_digits(json_string_value(phone), 4, 4)))
		return jsonl_error("field 'phone' must be the last 4 digits of "
		    "the applicant's phone");
	valid_ms = valid ? json_integer_value(valid) * 1000 :
	    (int64_t)d->cfg.codes.dropoff_valid_h * 3600 * 1000;
	if (phone != NULL)
		codes_hash(d->keys, "phone", json_string_value(phone), ph);
	r = resv_reserve(&d->resv, json_string_value(app), sz[0],
	    lockerd_now() + valid_ms, phone ? ph : NULL, lockerd_now(),
	    &s->resv, &slot);
	if (r != RESV_OK)
		return jsonl_error("%s", resv_refusal_str(r));
	if (lockerd_run(d, s) == -1)
		return jsonl_error("the reservation could not be recorded");
	return code_reply(d, s, slot);
}

static int
get_resv(json_t *req, int64_t *id, json_t **err)
{
	json_t *v = json_object_get(req, "resv");

	if (!json_is_integer(v) || json_integer_value(v) < 1) {
		*err = jsonl_error("field 'resv' must be a reservation id");
		return -1;
	}
	*id = json_integer_value(v);
	return 0;
}

static json_t *
ctl_resv_op(struct lockerd *d, const char *op, json_t *req,
    struct lockerd_step *s)
{
	enum resv_refusal r;
	int64_t id;
	json_t *err;
	int slot;

	if (get_resv(req, &id, &err) == -1)
		return err;
	if (strcmp(op, "resv") == 0) {
		if ((slot = resv_slot_of_id(&d->resv, id)) == -1)
			return jsonl_error("reservation %lld is not active",
			    (long long)id);
		err = ctl_resv_json(d, &d->resv.r[slot]);
		json_object_set_new(err, "ok", json_true());
		return err;
	}
	r = strcmp(op, "cancel") == 0 ?
	    resv_cancel(&d->resv, id, lockerd_now(), &s->resv) :
	    resv_reissue(&d->resv, id, lockerd_now(), &s->resv);
	if (r != RESV_OK)
		return jsonl_error("reservation %lld: %s", (long long)id,
		    resv_refusal_str(r));
	if (lockerd_run(d, s) == -1)
		return jsonl_error("reservation %lld: the change could not be "
		    "recorded", (long long)id);
	if (strcmp(op, "reissue") == 0 &&
	    (slot = resv_slot_of_id(&d->resv, id)) != -1)
		return code_reply(d, s, slot);
	return json_pack("{s:b, s:I}", "ok", 1, "resv", (json_int_t)id);
}

/*
 * Codes made without a requester waiting (a pickup code when a loaded
 * door closes): the SMS side collects them here until the platform link
 * delivers them. Each is cleared as it is handed over.
 */
struct take_arg {
	struct lockerd *d;
	json_t *codes;
	int64_t seqs[64];
	int n;
};

static int
take_one(int64_t seq, const char *secret, void *arg)
{
	struct take_arg *ta = arg;

	if (ta->n == 64)
		return -1;
	ta->seqs[ta->n++] = seq;
	json_array_append_new(ta->codes, json_pack("{s:I, s:s}", "seq",
	    (json_int_t)seq, "code", secret));
	return 0;
}

static json_t *
ctl_take_codes(struct lockerd *d)
{
	struct take_arg ta;
	int i, ok = 0;

	memset(&ta, 0, sizeof(ta));
	ta.d = d;
	if ((ta.codes = json_array()) == NULL)
		return NULL;
	if (store_event_secrets(d->store, take_one, &ta) == 0 &&
	    store_begin(d->store) == 0) {
		for (i = 0; i < ta.n; i++)
			if (store_event_secret(d->store, ta.seqs[i], NULL) ==
			    -1)
				break;
		if (i == ta.n && store_commit(d->store) == 0)
			ok = 1;
		else
			store_rollback(d->store);
	}
	/* Wiped from the WAL too, not only from the current rows. */
	if (ok && ta.n > 0)
		store_scrub(d->store);
	if (!ok) {
		json_decref(ta.codes);
		return jsonl_error("the undelivered codes could not be read");
	}
	for (i = 0; i < (int)json_array_size(ta.codes); i++) {
		json_t *c = json_array_get(ta.codes, (size_t)i);
		json_int_t seq = json_integer_value(json_object_get(c, "seq"));
		json_t *ev = NULL;
		/* Which reservation: from the event itself. */
		if (store_events_after(d->store, seq - 1, 1, ctl_event_one,
		    &ev) == 0 && ev != NULL) {
			json_object_set(c, "resv", json_object_get(ev, "resv"));
			json_object_set(c, "cell", json_object_get(ev, "cell"));
			json_object_set(c, "app", json_object_get(ev, "app"));
		}
		json_decref(ev);
	}
	return json_pack("{s:b, s:o}", "ok", 1, "codes", ta.codes);
}

static json_t *
ctl_custody(struct lockerd *d, const char *op, json_t *req)
{
	struct lockerd_step *s;
	json_t *reply;

	if ((s = malloc(sizeof(*s))) == NULL)
		return jsonl_error("out of memory");
	lockerd_step_init(s);
	s->handed_over = 1;
	reply = strcmp(op, "reserve") == 0 ? ctl_reserve(d, req, s) :
	    ctl_resv_op(d, op, req, s);
	for (int i = 0; i < s->nissued; i++)
		sodium_memzero(s->issued[i].code, sizeof(s->issued[i].code));
	free(s);
	return reply;
}

json_t *
ctl_handle(void *arg, json_t *req)
{
	struct lockerd *d = arg;
	json_t *op = json_object_get(req, "op");
	const char *name;

	if (!json_is_string(op))
		return jsonl_error("missing field 'op' (a string)");
	name = json_string_value(op);
	if (strcmp(name, "ping") == 0)
		return json_pack("{s:b}", "ok", 1);
	if (strcmp(name, "open") == 0)
		return ctl_open(d, req);
	if (strcmp(name, "service") == 0)
		return ctl_service(d, req);
	if (strcmp(name, "state") == 0)
		return ctl_state(d);
	if (strcmp(name, "events") == 0)
		return ctl_events(d, req);
	if (strcmp(name, "reserve") == 0 || strcmp(name, "cancel") == 0 ||
	    strcmp(name, "reissue") == 0 || strcmp(name, "resv") == 0)
		return ctl_custody(d, name, req);
	if (strcmp(name, "take_codes") == 0)
		return ctl_take_codes(d);
	return jsonl_error("unknown op '%.40s' (ping, open, service, state, "
	    "events, reserve, cancel, reissue, resv, take_codes)", name);
}
