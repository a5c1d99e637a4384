/*
 * The daemon's glue: start-up (database, cells, first read of every board,
 * reconciliation with the stored state), and the one place where the
 * bank's actions become ledger events, saved cells and relay pulses.
 */
#include "lockerd.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "util.h"

struct body_arg {
	struct lockerd *d;
	const struct bank_action *a;
	const char *type;
	int64_t wall;
	json_t *extra;
};

static char *
event_body(int64_t seq, void *arg)
{
	struct body_arg *ba = arg;
	const struct bank_action *a = ba->a;
	struct lockerd *d = ba->d;
	char when[UTIL_ISO_LEN];
	json_t *o;
	char *s;

	util_iso_time(ba->wall, when, sizeof(when));
	o = json_pack("{s:I, s:s, s:s, s:s}", "seq", (json_int_t)seq,
	    "locker", d->cfg.locker_id, "time", when, "type", ba->type);
	if (o == NULL)
		return NULL;
	if (a != NULL) {
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
			json_object_set_new(o, "attempt",
			    json_integer(a->attempt));
			json_object_set_new(o, "reason", json_string(a->text));
			break;
		case BANK_EV_DOOR_JAMMED:
			json_object_set_new(o, "attempts",
			    json_integer(a->attempt));
			break;
		case BANK_EV_DOOR_OPENED:
			json_object_set_new(o, "expected",
			    json_boolean(a->expected));
			break;
		case BANK_EV_DOOR_LEFT_OPEN:
			json_object_set_new(o, "open_s",
			    json_integer(a->open_s));
			break;
		case BANK_EV_CELL_SERVICE:
			json_object_set_new(o, "in",
			    json_boolean(a->in_service));
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
	if (ba->extra != NULL)
		json_object_update(o, ba->extra);
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
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
	struct body_arg ba = { d, a, type, util_wall_ms(), extra };
	int cell = a != NULL && a->cell >= 0 ? d->cells[a->cell].number : 0;

	return store_event_append(d->store, ba.wall, type, cell, event_body,
	    &ba, NULL);
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

int
lockerd_apply(struct lockerd *d, struct bank_actions *acts)
{
	struct bank_actions retry;
	int i, need_tx = 0;

	if (acts->overflow)
		fatal("bank: more than %d actions at once", BANK_ACTIONS_MAX);
	for (i = 0; i < acts->n; i++)
		if (acts->a[i].type != BANK_ACT_PULSE)
			need_tx = 1;
	if (need_tx) {
		if (store_begin(d->store) == -1)
			goto fail;
		for (i = 0; i < acts->n; i++) {
			const struct bank_action *a = &acts->a[i];
			int rc = 0;

			if (a->type == BANK_ACT_EVENT)
				rc = append_event(d, a, bank_event_name(a->ev),
				    NULL);
			else if (a->type == BANK_ACT_SAVE)
				rc = save_cell(d, a->cell);
			if (rc == -1) {
				store_rollback(d->store);
				goto fail;
			}
		}
		if (store_commit(d->store) == -1)
			goto fail;
	}
	for (i = 0; i < acts->n; i++) {
		const struct bank_action *a = &acts->a[i];

		if (a->type == BANK_ACT_EVENT)
			log_action(d, a);
		if (a->type != BANK_ACT_PULSE)
			continue;
		if (mb_unlock(d->mb, d->cells[a->cell].board,
		    d->cells[a->cell].channel, a->cell) == -1) {
			memset(&retry, 0, sizeof(retry));
			bank_unlock_result(&d->bank, a->cell, 0,
			    "too many unlocks queued for the board",
			    util_mono_ms(), &retry);
			lockerd_apply(d, &retry);
		}
	}
	return 0;
fail:
	/* Nothing was recorded, so nothing may move: undo in-flight unlocks. */
	log_error("could not record %d actions; no relay was pulsed",
	    acts->n);
	for (i = 0; i < acts->n; i++)
		if (acts->a[i].type == BANK_ACT_PULSE)
			d->cells[acts->a[i].cell].unlocking = 0;
	return -1;
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
	int more;

	do {
		memset(&acts, 0, sizeof(acts));
		more = bank_tick(&d->bank, util_mono_ms(), &acts);
		lockerd_apply(d, &acts);
	} while (more);
}

static int
make_state_dir(const char *path)
{
	struct stat st;

	if (mkdir(path, 0700) == -1 && errno != EEXIST) {
		log_error("state folder %s: %s", path, strerror(errno));
		return -1;
	}
	if (stat(path, &st) == -1 || !S_ISDIR(st.st_mode)) {
		log_error("state folder %s: not a folder", path);
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
	int64_t deadline = util_mono_ms() + d->cfg.timing.startup_read_ms;
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
		if (poll(&pfd, 1, (int)(deadline - util_mono_ms())) > 0)
			lockerd_mb_dispatch(d);
	}
	for (i = 0; i < d->cfg.nboards; i++)
		if (!d->boards[i].seen)
			log_warn("board %s: no reading at start-up; its cells "
			    "keep their stored state until it answers",
			    d->cfg.boards[i].name);
	extra = json_pack("{s:I, s:s}", "boot", (json_int_t)d->boot,
	    "version", LOCKERD_VERSION);
	if (extra == NULL || store_begin(d->store) == -1 ||
	    append_event(d, NULL, "started", extra) == -1 ||
	    store_commit(d->store) == -1) {
		json_decref(extra);
		store_rollback(d->store);
		return -1;
	}
	json_decref(extra);
	memset(&acts, 0, sizeof(acts));
	bank_reconcile(&d->bank, util_mono_ms(), &acts);
	lockerd_tick(d);
	return 0;
}

int
lockerd_start(struct lockerd *d)
{
	struct bank_timing t;
	char err[512];

	if (make_state_dir(d->cfg.state_dir) == -1)
		return -1;
	if ((d->store = store_open(d->cfg.database, err, sizeof(err))) ==
	    NULL) {
		log_error("%s", err);
		return -1;
	}
	if ((d->boot = store_boot(d->store)) == -1 || load_cells(d) == -1)
		return -1;
	t.debounce_ms = d->cfg.timing.debounce_ms;
	t.unlock_confirm_ms = d->cfg.timing.unlock_confirm_ms;
	t.unlock_retries = d->cfg.timing.unlock_retries;
	t.door_left_open_ms = (int64_t)d->cfg.timing.door_left_open_s * 1000;
	t.door_left_open_repeat_ms =
	    (int64_t)d->cfg.timing.door_left_open_repeat_s * 1000;
	bank_init(&d->bank, d->cells, d->cfg.ncells, d->boards,
	    d->cfg.nboards, &t);
	if ((d->mb = mb_start(&d->cfg)) == NULL)
		return -1;
	if (first_read(d) == -1)
		return -1;
	if (d->cfg.control_socket[0] != '\0' &&
	    (d->ctl = jsonl_open(d->cfg.control_socket, 0600, ctl_handle, d)) ==
	    NULL)
		return -1;
	log_info("locker %s: %d cells on %d boards, boot %lld, ready",
	    d->cfg.locker_id, d->cfg.ncells, d->cfg.nboards,
	    (long long)d->boot);
	return 0;
}

void
lockerd_stop(struct lockerd *d)
{
	jsonl_close(d->ctl);
	d->ctl = NULL;
	/* The workers switch off any relay still in a pulse. */
	mb_stop(d->mb);
	d->mb = NULL;
	store_close(d->store);
	d->store = NULL;
}

void
lockerd_reload(struct lockerd *d)
{
	struct config *nc;
	char err[512];

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
	if (strcmp(nc->locker_id, d->cfg.locker_id) != 0 ||
	    strcmp(nc->database, d->cfg.database) != 0 ||
	    strcmp(nc->control_socket, d->cfg.control_socket) != 0 ||
	    nc->nbuses != d->cfg.nbuses || nc->nboards != d->cfg.nboards ||
	    nc->ncells != d->cfg.ncells ||
	    memcmp(nc->buses, d->cfg.buses, sizeof(nc->buses)) != 0 ||
	    memcmp(nc->boards, d->cfg.boards, sizeof(nc->boards)) != 0 ||
	    memcmp(nc->cells, d->cfg.cells, sizeof(nc->cells)) != 0 ||
	    nc->log_syslog != d->cfg.log_syslog)
		log_warn("SIGHUP: locker id, database, sockets, log target, "
		    "buses, boards and cells changed in the file only take "
		    "effect after a restart");
	log_info("SIGHUP: log level %s and timings reloaded",
	    log_level_name(nc->log_level));
	free(nc);
}
