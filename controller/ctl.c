/*
 * The operator control socket: local commands (open a cell, take it in or
 * out of service, read the state and the ledger) as JSON lines. The socket
 * is mode 0600 and off unless configured: whoever can reach it is root on
 * the locker's controller and could drive the relays directly anyway.
 */
#include <jansson.h>
#include <string.h>

#include "lockerd.h"
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
	return jsonl_error("unknown op '%.40s' (ping, open, service, state, "
	    "events)", name);
}
