/*
 * lockerd's side of the platform link: the retained status (birth, will,
 * goodbye, each with the boot counter); the outbox, ledger events in
 * sequence order, QoS 1, at most [mqtt] inflight at a time, each marked
 * delivered only when the broker acknowledges it on the connection it
 * went out on (after a loss, publishing starts again at the first
 * undelivered event; events that waited carry "replayed": true); the
 * retained cell states; and the platform's commands. A signed command is
 * checked (its locker, signature, time, request id and digest, nonce)
 * before anything of it is stored, recorded in the ledger before it runs
 * and answered once; an unsigned read-only one is answered and forgotten.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "ledger.h"
#include "lockerd.h"
#include "log.h"
#include "platform.h"
#include "util.h"

/* Old command rows are pruned this often. */
#define LINK_PRUNE_MS 60000
/* Rebirths start at most this often; those asked for meanwhile are one. */
#define LINK_REBIRTH_MS 1000

static void publish_cells(struct lockerd *d);
static void refused_flush(struct lockerd *d, int64_t now);

static char *
status_json(struct lockerd *d, int online, const char *why)
{
	char when[UTIL_ISO_LEN];
	json_t *o, *head;
	char *s;

	util_iso_time(util_wall_ms(), when, sizeof(when));
	o = json_pack("{s:b, s:s, s:I, s:s, s:s}", "online", online, "locker",
	    d->cfg.locker_id, "boot", (json_int_t)d->boot, "version",
	    LOCKERD_VERSION, "time", when);
	if (o == NULL)
		return NULL;
	if (why != NULL)
		json_object_set_new(o, "why", json_string(why));
	/* The birth names the ledger's head, so that the platform sees a
	 * locker whose ledger went back (mark.c), and why it is held. */
	if (online && (head = mark_status(d)) != NULL) {
		json_object_update(o, head);
		json_decref(head);
	}
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

/*
 * Exactly once, whatever happened to the tables: the signed commands of
 * the last nonce window are in the ledger (command_executed, with their
 * request id, digest and nonce), so their rows are put back from there if
 * the database lost them. The walk goes back from the ledger's head,
 * whose digest lockerd_start() took, and believes an event only if it
 * hashes to what the next one says came before it.
 */
struct walk {
	struct lockerd *d;
	uint8_t expect[LEDGER_HASH_LEN];
	int64_t expect_seq;
	char cutoff[UTIL_ISO_LEN];
	int64_t now;
	int done, broken, restored, seen;
	char why[128];
};

static int
walk_one(int64_t seq, const char *body, void *arg)
{
	struct walk *w = arg;
	uint8_t dg[LEDGER_HASH_LEN], digest[CMD_DIGEST_LEN];
	const char *prev, *when, *type, *rid, *op, *nonce, *hex;
	json_t *o = NULL;
	int rc;

	if (seq != w->expect_seq) {
		snprintf(w->why, sizeof(w->why), "seq %lld is missing",
		    (long long)w->expect_seq);
		goto broken;
	}
	o = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
	prev = json_string_value(json_object_get(o, "prev"));
	if (o == NULL || ledger_digest(o, dg) == -1 ||
	    sodium_memcmp(dg, w->expect, sizeof(dg)) != 0 || prev == NULL ||
	    sodium_hex2bin(w->expect, sizeof(w->expect), prev, strlen(prev),
	    NULL, NULL, NULL) != 0) {
		snprintf(w->why, sizeof(w->why), "seq %lld does not chain to "
		    "the events after it", (long long)seq);
		goto broken;
	}
	w->expect_seq = seq - 1;
	when = json_string_value(json_object_get(o, "time"));
	if (when == NULL || strcmp(when, w->cutoff) < 0) {
		w->done = 1;
		json_decref(o);
		return -1;
	}
	type = json_string_value(json_object_get(o, "type"));
	rid = json_string_value(json_object_get(o, "request_id"));
	op = json_string_value(json_object_get(o, "op"));
	nonce = json_string_value(json_object_get(o, "nonce"));
	hex = json_string_value(json_object_get(o, "digest"));
	if (type != NULL && strcmp(type, "command_executed") == 0 &&
	    rid != NULL && op != NULL && nonce != NULL && hex != NULL &&
	    sodium_hex2bin(digest, sizeof(digest), hex, strlen(hex), NULL,
	    NULL, NULL) == 0) {
		w->seen++;
		if ((rc = store_cmd_restore(w->d->store, rid, op, digest, nonce,
		    w->now)) == -1) {
			json_decref(o);
			return -1;
		}
		w->restored += rc;
	}
	json_decref(o);
	if (seq == 1)
		w->done = 1;
	return 0;
broken:
	w->broken = 1;
	json_decref(o);
	return -1;
}

static void
guard_start(struct lockerd *d)
{
	struct walk w;
	int64_t window = (int64_t)d->cfg.mqtt.command_window_s * 1000;
	json_t *x = NULL;
	int rc = 0;

	memset(&w, 0, sizeof(w));
	w.d = d;
	w.now = util_wall_ms();
	util_iso_time(w.now - 2 * window, w.cutoff, sizeof(w.cutoff));
	memcpy(w.expect, d->ledger_prev, sizeof(w.expect));
	w.expect_seq = store_event_last(d->store);
	if (w.expect_seq <= 0 || store_begin(d->store) == -1) {
		if (w.expect_seq < 0)
			d->lnk.trust_from = w.now;
		return;
	}
	while (rc == 0 && !w.done && !w.broken) {
		int64_t before = w.expect_seq + 1;

		rc = store_events_before(d->store, before, 64, walk_one, &w);
		if (rc == 0 && !w.done && !w.broken &&
		    w.expect_seq == before - 1) {
			/* Nothing came back: the rows below are gone. */
			snprintf(w.why, sizeof(w.why), "seq %lld is missing",
			    (long long)w.expect_seq);
			w.broken = 1;
		}
	}
	if (rc == -1 || store_commit(d->store) == -1) {
		store_rollback(d->store);
		w.broken = 1;
		if (w.why[0] == '\0')
			snprintf(w.why, sizeof(w.why), "the database could "
			    "not be read");
	}
	if (w.broken) {
		/* Fail safe: a nonce of the window may be unknown, so only
		 * commands signed from now on are taken. */
		d->lnk.trust_from = w.now;
		log_error("ledger: the signed commands of the last %lld s "
		    "cannot be checked (%s); signed commands signed before "
		    "now are refused as stale", (long long)(2 * window / 1000),
		    w.why);
		x = json_pack("{s:b, s:s, s:s}", "alarm", 1, "record",
		    "ledger", "reason", w.why);
	} else if (w.restored > 0) {
		log_error("ledger: %d rows of the command log were missing or "
		    "altered; put back from the ledger's %d signed commands "
		    "of the last %lld s, so none of them runs again",
		    w.restored, w.seen, (long long)(2 * window / 1000));
		x = json_pack("{s:b, s:s, s:s, s:i}", "alarm", 1, "record",
		    "command_log", "reason", "rows missing from the database "
		    "were put back from the ledger", "rows_restored", w.restored);
	} else
		log_debug("ledger: %d signed commands of the last window, "
		    "their rows in place", w.seen);
	if (x != NULL && lockerd_record(d, "record_rejected", x) == -1)
		log_error("could not record the alarm");
	json_decref(x);
}

int
link_start(struct lockerd *d)
{
	char err[256], *will;

	if (d->cfg.mqtt.host[0] == '\0')
		return 0;
	memset(&d->lnk, 0, sizeof(d->lnk));
	throttle_init_rate(&d->lnk.anon_thr, d->cfg.mqtt.unsigned_burst,
	    d->cfg.mqtt.unsigned_rate, util_mono_ms());
	guard_start(d);
	/* The will says which boot went away: a platform drops a stale
	 * will that arrives after the next boot's birth. */
	if ((will = status_json(d, 0, "connection lost")) == NULL)
		return -1;
	d->link = platform_start(&d->cfg.mqtt, d->cfg.locker_id, will, err,
	    sizeof(err));
	free(will);
	if (d->link == NULL) {
		log_error("%s", err);
		return -1;
	}
	log_info("mqtt: platform link to %s:%d as %s", d->cfg.mqtt.host,
	    d->cfg.mqtt.port, d->cfg.mqtt.client_id);
	return 0;
}

void
link_stop(struct lockerd *d)
{
	char *bye;

	if (d->link == NULL)
		return;
	refused_flush(d, INT64_MAX);
	bye = status_json(d, 0, "stopped");
	platform_stop(d->link, bye);
	free(bye);
	d->link = NULL;
}

/* Appends the transport fields to a stored body (a compact object). */
static char *
with_transport(const char *body, int replayed, const char *code)
{
	size_t len = strlen(body);
	char *s;

	if (len < 2 || body[len - 1] != '}' ||
	    (s = malloc(len + 64)) == NULL)
		return NULL;
	memcpy(s, body, len - 1);
	snprintf(s + len - 1, 64, "%s%s%s%s}", replayed ?
	    ",\"replayed\":true" : "", code ? ",\"code\":\"" : "",
	    code ? code : "", code ? "\"" : "");
	return s;
}

static int
publish_one(int64_t seq, const char *body, const char *secret, void *arg)
{
	struct lockerd *d = arg;
	struct lockerd_outbox *o = &d->outbox;
	char *msg;
	int mid, rc;

	if (o->n == d->cfg.mqtt.inflight)
		return -1;
	/* Plain codes are digits; anything else is not sent as one. */
	if (secret != NULL && !codes_valid_digits(secret, 1, 32))
		secret = NULL;
	if ((msg = with_transport(body, seq <= o->replay_upto, secret)) ==
	    NULL)
		return -1;
	rc = platform_publish(d->link, o->gen, "events", msg, PLATFORM_EVENT,
	    0, &mid);
	free(msg);
	if (rc != 0)
		return -1;
	o->win[o->n].mid = mid;
	o->win[o->n].seq = seq;
	o->win[o->n].code = secret != NULL;
	o->n++;
	o->next = seq + 1;
	return 0;
}

/* What a platform needs of a cell, derived from the bank and the
 * reservation that holds it. */
static const char *
cell_state(struct lockerd *d, int i, const struct resv **held)
{
	const struct bank_cell *c = &d->cells[i];
	int slot = resv_slot_of_cell(&d->resv, i);

	*held = slot == -1 ? NULL : &d->resv.r[slot];
	if (*held != NULL)
		switch ((*held)->state) {
		case RESV_OPENING:
		case RESV_OPEN:
			return "in_use";
		default:
			return resv_state_name((*held)->state);
		}
	return c->in_service ? "free" : "out_of_service";
}

/* A cell's state without its "rev", which the caller adds. */
static json_t *
cell_json(struct lockerd *d, int i)
{
	const struct bank_cell *c = &d->cells[i];
	const struct resv *r;
	const char *state = cell_state(d, i, &r);
	char size[2] = { c->size, '\0' };
	const char *fault = c->fault == BANK_FAULT_JAMMED ? "door_jammed" :
	    !d->boards[c->board].ok ? "board_fault" : NULL;
	json_t *occ;

	/* The item sensor when there is one, else what custody implies. */
	if (c->item >= 0)
		occ = json_boolean(c->item);
	else if (r != NULL && (r->state == RESV_DEPOSITED ||
	    r->state == RESV_READY || r->state == RESV_OVERDUE))
		occ = json_true();
	else if (r == NULL || r->state == RESV_RESERVED)
		occ = json_false();
	else
		occ = json_null();
	return json_pack("{s:i, s:s, s:s, s:s, s:o, s:o, s:b, s:o}",
	    "cell", c->number, "state", state, "size", size,
	    "door", bank_door_name(c->door), "occupied", occ,
	    "fault", fault ? json_string(fault) : json_null(),
	    "in_service", c->in_service,
	    "resv", r ? json_integer(r->id) : json_null());
}

/*
 * Retained PREFIX/<locker>/cells/<n>, on change, and every one again after
 * a birth (forced). rev grows with every change and across restarts (boot
 * x 10^6 + changes this boot), so a platform keeps the newest whatever
 * order they arrive in. What the cap holds back waits for the next acks.
 */
static void
publish_cells(struct lockerd *d)
{
	struct lockerd_link *l = &d->lnk;
	char sub[32], *text;
	uint8_t h[8];
	uint64_t hash;
	json_t *o;
	int i, mid, rc;

	for (i = 0; i < d->bank.ncells; i++) {
		if (!d->cell_dirty[i] && !l->force[i])
			continue;
		/* Compare without rev: did anything the platform sees change? */
		if ((o = cell_json(d, i)) == NULL ||
		    (text = json_dumps(o, JSON_COMPACT)) == NULL) {
			json_decref(o);
			continue;
		}
		crypto_generichash(h, sizeof(h), (const uint8_t *)text,
		    strlen(text), NULL, 0);
		memcpy(&hash, h, sizeof(hash));
		free(text);
		text = NULL;
		if (!l->force[i] && hash == d->cell_sent[i]) {
			d->cell_dirty[i] = 0;
			json_decref(o);
			continue;
		}
		if (hash != d->cell_sent[i] || d->cell_rev[i] == 0)
			d->cell_rev[i] = d->cell_rev[i] == 0 ?
			    d->boot * 1000000 + 1 : d->cell_rev[i] + 1;
		snprintf(sub, sizeof(sub), "cells/%d", d->cells[i].number);
		rc = -1;
		if (json_object_set_new(o, "rev",
		    json_integer(d->cell_rev[i])) == 0 &&
		    (text = json_dumps(o, JSON_COMPACT)) != NULL)
			rc = platform_publish(d->link, d->outbox.gen, sub, text,
			    PLATFORM_BULK, 1, &mid);
		free(text);
		json_decref(o);
		if (rc != 0)
			break;          /* not connected, or the cap: later */
		d->cell_sent[i] = hash;
		d->cell_dirty[i] = 0;
		if (l->force[i]) {
			l->force[i] = 0;
			if (--l->forced == 0 && l->rebirth_busy)
				l->rebirth_mid = mid;
		}
	}
}

void
link_kick(struct lockerd *d)
{
	struct lockerd_outbox *o = &d->outbox;

	if (d->link == NULL || !o->up)
		return;
	if (o->n < d->cfg.mqtt.inflight && !o->blocked)
		store_outbox(d->store, o->next, d->cfg.mqtt.inflight - o->n,
		    publish_one, d);
	publish_cells(d);
}

/* The status and every cell again, as one rebirth in flight. */
static void
birth(struct lockerd *d)
{
	struct lockerd_link *l = &d->lnk;
	char *text;
	int i, mid;

	if ((text = status_json(d, 1, NULL)) != NULL) {
		if (platform_publish(d->link, d->outbox.gen, "status", text,
		    PLATFORM_REPLY, 1, &mid) != 0)
			log_warn("mqtt: could not publish the birth message");
		free(text);
	}
	l->rebirth_busy = 1;
	l->rebirth_mid = 0;
	l->rebirth_next = util_mono_ms() + LINK_REBIRTH_MS;
	l->forced = d->bank.ncells;
	for (i = 0; i < d->bank.ncells; i++)
		l->force[i] = 1;
	publish_cells(d);
}

/* The rebirth asked for while another was in flight, once it is time. */
static void
rebirth_due(struct lockerd *d)
{
	struct lockerd_link *l = &d->lnk;

	if (l->rebirth_again && !l->rebirth_busy && d->outbox.up &&
	    util_mono_ms() >= l->rebirth_next) {
		l->rebirth_again = 0;
		birth(d);
	}
}

static void
acked(struct lockerd *d, const struct platform_rep *r)
{
	struct lockerd_outbox *o = &d->outbox;
	struct lockerd_link *l = &d->lnk;
	int i;

	/* A PUBACK of a connection that is gone says nothing of ours. */
	if (!o->up || r->gen != o->gen)
		return;
	if (l->rebirth_busy && l->rebirth_mid != 0 && r->mid == l->rebirth_mid) {
		l->rebirth_busy = 0;
		l->rebirth_mid = 0;
		rebirth_due(d);
	}
	for (i = 0; i < o->n; i++) {
		if (o->win[i].mid != r->mid)
			continue;
		if (r->refused) {
			/* Not delivered: it stays in the outbox, and the
			 * outbox waits for the next connection (in order). */
			log_error("event %lld: the broker did not take it; "
			    "events wait for the next connection",
			    (long long)o->win[i].seq);
			o->blocked = 1;
		} else if (store_event_delivered(d->store, o->win[i].seq) == -1)
			log_error("event %lld: could not mark it delivered; "
			    "it will be sent again", (long long)o->win[i].seq);
		/* Only a delivered code needs the WAL wiped behind it. */
		else if (o->win[i].code)
			o->scrub = 1;
		memmove(&o->win[i], &o->win[i + 1],
		    (size_t)(o->n - i - 1) * sizeof(o->win[0]));
		o->n--;
		break;
	}
	if (o->n == 0 && o->scrub) {
		/* Delivered codes leave no copy in the WAL either. */
		store_scrub(d->store);
		o->scrub = 0;
	}
}

static void
connected(struct lockerd *d, unsigned gen)
{
	struct lockerd_outbox *o = &d->outbox;
	int64_t first, count;

	o->up = 1;
	o->gen = gen;
	o->n = 0;
	o->blocked = 0;
	d->lnk.rebirth_again = 0;
	/* Every cell once (retained), then what changes. */
	birth(d);
	if (store_undelivered(d->store, &first, &count) == -1)
		return;
	o->next = first > 0 ? first : store_event_last(d->store) + 1;
	o->replay_upto = store_event_last(d->store);
	log_info("mqtt: connected; %lld events to send", (long long)count);
	link_kick(d);
}

/* Publishes a reply (text) on PREFIX/<locker>/reply. */
static void
send_reply(struct lockerd *d, const char *text, enum platform_class cls)
{
	int mid, rc;

	rc = d->link != NULL ? platform_publish(d->link, d->outbox.gen,
	    "reply", text, cls, 0, &mid) : -1;
	if (rc == 0)
		return;
	/* Once per power of two: a flood does not flood the log. */
	d->lnk.unsent++;
	if ((d->lnk.unsent & (d->lnk.unsent - 1)) == 0)
		log_warn("mqtt: %ld replies could not be sent (%s); the "
		    "platform may send the command again", d->lnk.unsent,
		    rc == -2 ? "too many wait for the broker" : "no link");
}

static char *
reply_text(const char *request_id, json_t *body)
{
	char *text;

	if (body == NULL)
		return NULL;
	json_object_set_new(body, "request_id", request_id ?
	    json_string(request_id) : json_null());
	text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	return text;
}

static json_t *
refusal(const char *error, const char *field, const char *reason)
{
	json_t *o = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", error,
	    "reason", reason);

	if (o != NULL && field != NULL && *field != '\0')
		json_object_set_new(o, "field", json_string(field));
	return o;
}

static void
answer(struct lockerd *d, const char *request_id, json_t *body,
    enum platform_class cls)
{
	char *text = reply_text(request_id, body);

	if (text != NULL)
		send_reply(d, text, cls);
	free(text);
}

/*
 * Refused commands that could have changed something are alarms, but a
 * flood of them must not flood the ledger: the first is recorded at
 * once, the rest are counted and recorded in one alarm per [mqtt]
 * refused_alarm_s with the count and the reasons.
 */
static void
refused_flush(struct lockerd *d, int64_t now)
{
	struct lockerd_link *l = &d->lnk;
	json_t *x, *why;
	char text[160];
	int i;

	if (l->refused_until == 0 || now < l->refused_until)
		return;
	if (l->refused_n == 0) {
		l->refused_until = 0;
		return;
	}
	why = json_object();
	for (i = 0; why != NULL && i < l->nwhy; i++)
		json_object_set_new(why, l->refused_why[i].reason,
		    json_integer(l->refused_why[i].n));
	snprintf(text, sizeof(text), "%ld more commands refused in %d s; the "
	    "last: %.60s", l->refused_n, d->cfg.mqtt.refused_alarm_s,
	    l->last_reason);
	x = json_pack("{s:b, s:I, s:i, s:o, s:s, s:s, s:s}", "alarm", 1,
	    "count", (json_int_t)l->refused_n, "window_s",
	    d->cfg.mqtt.refused_alarm_s, "reasons", why ? why : json_object(),
	    "reason", text, "op", l->last_op, "request_id", l->last_id);
	log_warn("mqtt: %s", text);
	if (x == NULL || lockerd_record(d, "command_refused", x) == -1)
		log_error("could not record the refused commands");
	json_decref(x);
	l->refused_n = 0;
	l->nwhy = 0;
	l->refused_until = now == INT64_MAX ? 0 : now +
	    (int64_t)d->cfg.mqtt.refused_alarm_s * 1000;
}

static void
refused_count(struct lockerd *d, const char *op, const char *request_id,
    const char *why, long n)
{
	struct lockerd_link *l = &d->lnk;
	int64_t now = util_mono_ms();
	json_t *x;
	int i;

	refused_flush(d, now);
	if (l->refused_until == 0 && n == 1) {
		log_warn("mqtt: command %s (%s) refused: %s", request_id ?
		    request_id : "?", op, why);
		x = json_pack("{s:b, s:s, s:s, s:s, s:i}", "alarm", 1, "op",
		    op, "request_id", request_id ? request_id : "", "reason",
		    why, "count", 1);
		if (x == NULL || lockerd_record(d, "command_refused", x) == -1)
			log_error("could not record a refused command");
		json_decref(x);
		l->refused_until = now +
		    (int64_t)d->cfg.mqtt.refused_alarm_s * 1000;
		return;
	}
	if (l->refused_until == 0)
		l->refused_until = now;         /* flushed at the next tick */
	log_debug("mqtt: command %s (%s) refused: %s", request_id ?
	    request_id : "?", op, why);
	l->refused_n += n;
	util_strlcpy(l->last_op, op, sizeof(l->last_op));
	util_strlcpy(l->last_id, request_id ? request_id : "",
	    sizeof(l->last_id));
	util_strlcpy(l->last_reason, why, sizeof(l->last_reason));
	for (i = 0; i < l->nwhy; i++)
		if (strcmp(l->refused_why[i].reason, why) == 0)
			break;
	if (i == l->nwhy && l->nwhy < 8) {
		util_strlcpy(l->refused_why[i].reason, why,
		    sizeof(l->refused_why[0].reason));
		l->refused_why[i].n = 0;
		l->nwhy++;
	}
	if (i < l->nwhy)
		l->refused_why[i].n += n;
}

static void
refused(struct lockerd *d, const struct cmd *c, const char *why)
{
	refused_count(d, c->op != NULL ? c->op : "?", c->request_id, why, 1);
}

/* Secrets are not kept at rest: a stored reply loses its code. */
static char *
stored_form(const char *text)
{
	json_t *o = json_loads(text, 0, NULL);
	char *s;

	if (o == NULL)
		return NULL;
	if (json_object_get(o, "code") != NULL) {
		json_object_del(o, "code");
		json_object_del(o, "credential");
		json_object_set_new(o, "code_withheld", json_true());
	}
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

static const char *
field_str(const struct cmd *c, const char *name)
{
	return json_string_value(json_object_get(c->obj, name));
}

/*
 * The platform assigns a pickup: a cell of the size opens for hall staff
 * to load the certificate; the pickup code follows on the event stream
 * when the door closes on it.
 */
static json_t *
cmd_load(struct lockerd *d, const struct cmd *c)
{
	const char *who = field_str(c, "staff");
	struct lockerd_step *s;
	enum resv_refusal r;
	struct staff st;
	json_t *res;
	int slot = -1, rc;

	rc = staff_get(d->store, d->keys->sign_pk, who, &st);
	sodium_memzero(st.pin_hash, sizeof(st.pin_hash));
	if (rc == -1)
		return refusal("unrecorded", NULL, "the staff list cannot be "
		    "read");
	if (rc != 0 || st.revoked)
		return refusal("refused", "staff", "no such staff account on "
		    "this locker");
	if ((s = malloc(sizeof(*s))) == NULL)
		return NULL;
	lockerd_step_init(s);
	r = resv_load(&d->resv, field_str(c, "app"), field_str(c, "size")[0],
	    who, lockerd_now(), &s->resv, &slot);
	if (r != RESV_OK)
		res = refusal("refused", NULL, resv_refusal_str(r));
	else if (lockerd_run(d, s) == -1)
		res = refusal("unrecorded", NULL, "the loading could not be "
		    "recorded; no door was opened");
	else if ((res = ctl_resv_json(d, &d->resv.r[slot])) != NULL)
		json_object_set_new(res, "ok", json_true());
	free(s);
	return res;
}

/* Staff accounts from the platform: provisioned or revoked, recorded. */
static json_t *
cmd_staff(struct lockerd *d, const struct cmd *c)
{
	const char *who = field_str(c, "staff");
	int add = strcmp(c->op, "staff_add") == 0, rc, existed;
	struct staff st;
	json_t *x, *res = NULL;
	char why[160];

	/* A PIN hash that costs more stalls the loop at every log-in, one
	 * that costs anything else tells the account apart (staff.h). */
	if (add && staff_cost_check(field_str(c, "pin_hash"),
	    d->cfg.kiosk.pin_hash_kib, d->cfg.kiosk.pin_hash_passes, why,
	    sizeof(why)) == -1)
		return refusal("refused", "pin_hash", why);
	rc = staff_get(d->store, d->keys->sign_pk, who, &st);
	if (rc == -1)
		return refusal("unrecorded", NULL, "the staff list cannot be "
		    "read");
	existed = rc == 0 && !st.revoked;
	if (!add && rc == 0 && st.revoked) {
		/* Done before (a retry under a new request id): said so. */
		sodium_memzero(&st, sizeof(st));
		return json_pack("{s:b, s:s, s:b, s:b}", "ok", 1, "staff", who,
		    "revoked", 1, "already", 1);
	}
	if (!add && rc == 1)
		return refusal("refused", "staff", "no such staff account on "
		    "this locker");
	if (add) {
		memset(&st, 0, sizeof(st));
		util_strlcpy(st.name, field_str(c, "name"), sizeof(st.name));
		util_strlcpy(st.role, field_str(c, "role"), sizeof(st.role));
		util_strlcpy(st.pin_hash, field_str(c, "pin_hash"),
		    sizeof(st.pin_hash));
		st.created = util_wall_ms();
	} else if (rc == 2) {
		/* A row that does not verify is replaced by a revoked one. */
		memset(&st, 0, sizeof(st));
		util_strlcpy(st.role, "staff", sizeof(st.role));
	}
	util_strlcpy(st.id, who, sizeof(st.id));
	if ((st.revoked = !add))
		sodium_memzero(st.pin_hash, sizeof(st.pin_hash));
	x = json_pack("{s:s, s:s, s:s}", "staff", st.id, "role", st.role, "by",
	    "platform");
	if (x != NULL && lockerd_staff_change(d, &st, add ? "staff_added" :
	    "staff_revoked", x) == 0)
		res = json_pack("{s:b, s:s, s:s, s:b}", "ok", 1, "staff",
		    st.id, "role", st.role, add ? "replaced" : "revoked",
		    add ? existed : 1);
	else
		res = refusal("unrecorded", NULL, "the account change could "
		    "not be recorded");
	json_decref(x);
	sodium_memzero(&st, sizeof(st));
	if (!add && res != NULL && json_is_true(json_object_get(res, "ok")))
		kiosk_staff_revoked(d, who);
	return res;
}

/*
 * A rebirth: at most one in flight and one a second; those asked for
 * meanwhile are merged into the next, so that a flood of them (anyone may
 * send one) costs the broker one set of retained states a second.
 */
static json_t *
cmd_rebirth(struct lockerd *d)
{
	if (d->lnk.rebirth_busy || util_mono_ms() < d->lnk.rebirth_next) {
		d->lnk.rebirth_again = 1;
		return json_pack("{s:b, s:b}", "ok", 1, "coalesced", 1);
	}
	birth(d);
	return json_pack("{s:b}", "ok", 1);
}

static json_t *
execute(struct lockerd *d, const struct cmd *c)
{
	struct bank_actions acts;
	enum bank_refusal br;
	json_t *req, *res;
	char why[96];
	int cell;

	if (strcmp(c->op, "rebirth") == 0)
		return cmd_rebirth(d);
	if (strcmp(c->op, "ping") == 0)
		return json_pack("{s:b}", "ok", 1);
	if (strcmp(c->op, "open") == 0) {
		/* The hotline opens a cell: recorded as a remote unlock. */
		cell = bank_cell_index(&d->bank, (int)json_integer_value(
		    json_object_get(c->obj, "cell")));
		if (cell == -1)
			return refusal("refused", "cell", "no such cell in "
			    "this locker");
		memset(&acts, 0, sizeof(acts));
		br = bank_unlock(&d->bank, cell, "remote", util_mono_ms(),
		    &acts);
		if (br != BANK_OK) {
			snprintf(why, sizeof(why), "%s", bank_refusal_str(br));
			return refusal("refused", "cell", why);
		}
		if (lockerd_apply(d, &acts) == -1)
			return refusal("unrecorded", NULL, "the unlock could "
			    "not be recorded; the door was not opened");
		return json_pack("{s:b, s:i}", "ok", 1, "cell",
		    d->cells[cell].number);
	}
	if (strcmp(c->op, "load") == 0)
		return cmd_load(d, c);
	if (strcmp(c->op, "restore_ack") == 0)
		return mark_restore(d, c->obj);
	if (strcmp(c->op, "staff_add") == 0 ||
	    strcmp(c->op, "staff_revoke") == 0)
		return cmd_staff(d, c);
	/* The rest are the control socket's, with the same checks. */
	if ((req = json_copy(c->obj)) == NULL)
		return NULL;
	res = ctl_handle(d, req);
	json_decref(req);
	/* The control socket's refusals are prose; here the reason is, and
	 * the error is a code. */
	if (res != NULL && json_is_false(json_object_get(res, "ok"))) {
		json_object_set(res, "reason", json_object_get(res, "error"));
		json_object_set_new(res, "error", json_string("refused"));
	}
	return res;
}

/*
 * The rate limits: a command takes a token of its bucket, d->cmd_thr for
 * signed commands whose signature verified ([mqtt] command_rate a second,
 * command_burst at once), d->lnk.anon_thr for the rest (unsigned_rate,
 * unsigned_burst), so that what anyone with a broker account can send
 * never takes the platform's share. Without a token the command is
 * answered "busy" with the wait, and not run or recorded: the platform
 * sends it again, under the same request id, after that wait. A bucket
 * is charged at the command's arrival (at, stamped by the network
 * thread), not when the loop gets to it: the limit is on what is sent,
 * and a loop that was held up (a slow disk, a stolen CPU) and then works
 * off its queue at once is no flood. Returns 1 when the command may run.
 */
static int
admit(struct lockerd *d, const char *request_id, int64_t at, int anon)
{
	struct throttle *t = anon ? &d->lnk.anon_thr : &d->cmd_thr;
	int rate = anon ? d->cfg.mqtt.unsigned_rate : d->cfg.mqtt.command_rate;
	int burst = anon ? d->cfg.mqtt.unsigned_burst :
	    d->cfg.mqtt.command_burst;
	int64_t wait;
	json_t *res, *x;

	if ((wait = throttle_wait(t, at)) == 0) {
		if (throttle_fail(t, at)) {
			log_warn("mqtt: more than %d %s commands at once; the "
			    "excess is answered busy at %d a second", burst,
			    anon ? "unsigned" : "signed", rate);
			x = json_pack("{s:b, s:i, s:i, s:s}", "alarm", 1,
			    "burst", burst, "rate", rate, "class", anon ?
			    "unsigned" : "signed");
			if (x == NULL || lockerd_record(d, "command_flood", x) ==
			    -1)
				log_error("could not record the command_flood "
				    "alarm");
			json_decref(x);
		}
		return 1;
	}
	throttle_refused(t);
	res = refusal("busy", NULL, anon ? "too many commands: the locker "
	    "answers at most [mqtt] unsigned_rate unsigned ones a second; "
	    "this one was not run, send it again after retry_after_ms" :
	    "too many commands: the locker runs at most [mqtt] command_rate "
	    "a second; this one was not run, send it again after "
	    "retry_after_ms");
	if (res != NULL)
		json_object_set_new(res, "retry_after_ms", json_integer(wait));
	answer(d, request_id, res, anon ? PLATFORM_BULK : PLATFORM_REPLY);
	return 0;
}

/*
 * The replies of one loop turn's signed commands: their rows are written
 * in one durable transaction, and only then are the replies sent. One
 * fsync for the lot instead of one each, so that a locker on a slow card
 * keeps up with a busy platform.
 */
#define LINK_BATCH 16

struct reply_batch {
	struct {
		char *request_id;
		char *stored;           /* the row: no secrets */
		char *text;             /* what is sent */
	} v[LINK_BATCH];
	int n;
};

static void
batch_flush(struct lockerd *d, struct reply_batch *b)
{
	int i, rc;

	if (b->n == 0)
		return;
	rc = store_begin(d->store);
	for (i = 0; rc == 0 && i < b->n; i++)
		if (b->v[i].stored != NULL && store_cmd_done(d->store,
		    b->v[i].request_id, b->v[i].stored) == -1) {
			store_rollback(d->store);
			rc = -1;
		}
	if (rc == 0)
		rc = store_commit(d->store);
	for (i = 0; i < b->n; i++) {
		if (rc == -1 || b->v[i].stored == NULL)
			log_error("command %s: its reply could not be stored; "
			    "a repeat will be told the outcome is unknown",
			    b->v[i].request_id);
		if (b->v[i].text != NULL)
			send_reply(d, b->v[i].text, PLATFORM_REPLY);
		free(b->v[i].request_id);
		free(b->v[i].stored);
		free(b->v[i].text);
	}
	b->n = 0;
}

/* A repeat of a command whose reply waits in the batch. */
static int
batch_has(const struct reply_batch *b, const char *request_id)
{
	int i;

	for (i = 0; i < b->n; i++)
		if (strcmp(b->v[i].request_id, request_id) == 0)
			return 1;
	return 0;
}

/*
 * Is a signed command the platform's, for this locker, and fresh? Its
 * refusal, or NULL. Nothing is stored for a command that fails here: an
 * unauthenticated one must not be able to take a request id or a nonce.
 */
static json_t *
authenticate(struct lockerd *d, const struct cmd *c, int64_t at, int *anon)
{
	uint8_t pk[32];
	int64_t now = util_wall_ms(), window;
	char why[200];

	*anon = 1;
	if (strcmp(c->locker, d->cfg.locker_id) != 0) {
		snprintf(why, sizeof(why), "this command is for locker %.64s; "
		    "this is %.64s", c->locker, d->cfg.locker_id);
		refused(d, c, "for another locker");
		return refusal("wrong_locker", "locker", why);
	}
	if (d->cfg.mqtt.platform_key[0] == '\0' ||
	    codes_unhex(d->cfg.mqtt.platform_key, pk, sizeof(pk)) == -1) {
		refused(d, c, "no platform key is configured");
		return refusal("unauthorised", "sig", "this locker has no "
		    "platform key ([mqtt] platform_key)");
	}
	if (cmd_verify(c, pk) == -1) {
		refused(d, c, "bad signature");
		return refusal("unauthorised", "sig", "bad signature");
	}
	/* The platform's from here on. */
	*anon = 0;
	if (!admit(d, c->request_id, at, 0))
		return json_null();     /* answered busy already */
	if (now > c->exp) {
		refused(d, c, "expired");
		return refusal("expired", "exp", "the command arrived after its "
		    "expiry and was not run");
	}
	window = (int64_t)d->cfg.mqtt.command_window_s * 1000;
	if (c->ts < now - window || c->ts > now + window) {
		refused(d, c, "stale timestamp");
		return refusal("stale", "ts", "the timestamp is outside the "
		    "accepted window");
	}
	if (c->ts < d->lnk.trust_from) {
		refused(d, c, "signed before a start whose ledger could not "
		    "be checked");
		return refusal("stale", "ts", "signed before this locker "
		    "started, and its ledger could not show that the nonce is "
		    "new; sign it again");
	}
	return NULL;
}

/* Records a signed command in the ledger before it runs: its request id,
 * digest and nonce, so that it never runs twice (guard_start()). */
static int
record_executed(struct lockerd *d, const struct cmd *c,
    const uint8_t digest[CMD_DIGEST_LEN])
{
	char hex[2 * CMD_DIGEST_LEN + 1];
	json_t *x;
	int rc;

	sodium_bin2hex(hex, sizeof(hex), digest, CMD_DIGEST_LEN);
	x = json_pack("{s:s, s:s, s:s, s:s, s:I}", "op", c->op, "request_id",
	    c->request_id, "nonce", c->nonce, "digest", hex, "ts",
	    (json_int_t)c->ts);
	rc = x != NULL ? lockerd_record(d, "command_executed", x) : -1;
	json_decref(x);
	return rc;
}

static void
command_signed(struct lockerd *d, struct cmd *c, int64_t at,
    struct reply_batch *b)
{
	uint8_t digest[CMD_DIGEST_LEN], had[STORE_DIGEST_LEN];
	char state[16], *stored = NULL, *text;
	int64_t window = (int64_t)d->cfg.mqtt.command_window_s * 1000, now;
	json_t *res;
	int anon, rc, has;

	if ((res = authenticate(d, c, at, &anon)) != NULL) {
		if (json_is_null(res))
			json_decref(res);
		else if (!anon || admit(d, c->request_id, at, 1))
			answer(d, c->request_id, res, anon ? PLATFORM_BULK :
			    PLATFORM_REPLY);
		else
			json_decref(res);
		return;
	}
	if (cmd_digest(c, digest) == -1) {
		answer(d, c->request_id, refusal("internal", NULL, "out of "
		    "memory"), PLATFORM_REPLY);
		return;
	}
	if (batch_has(b, c->request_id) || b->n == LINK_BATCH)
		batch_flush(d, b);
	/* Once only: a repeat gets the stored reply, an unknown outcome is
	 * said so and never run again, another command under a used request
	 * id is refused. */
	rc = store_cmd_get(d->store, c->request_id, state, sizeof(state),
	    &stored, had, &has);
	if (rc == 0 && has && sodium_memcmp(had, digest, sizeof(had)) != 0)
		res = refusal("request_id_reused", "request_id", "this request "
		    "id was used for another command; it was not run");
	else if (rc == 0 && strcmp(state, "done") == 0 && stored != NULL) {
		send_reply(d, stored, PLATFORM_REPLY);
		free(stored);
		return;
	} else if (rc == 0)
		res = refusal("unknown_outcome", NULL, "this command was "
		    "started before a restart and its outcome is unknown; it "
		    "is not run again");
	else if (rc == -1)
		res = refusal("unrecorded", NULL, "the command log cannot be "
		    "read");
	free(stored);
	if (rc != 1) {
		answer(d, c->request_id, res, PLATFORM_REPLY);
		return;
	}
	now = util_wall_ms();
	if ((rc = store_nonce_seen(d->store, c->nonce)) == 0)
		rc = store_cmd_start(d->store, c->request_id, c->op, digest,
		    c->nonce, now, now - 2 * window);
	if (rc == 1) {
		refused(d, c, "replayed nonce");
		answer(d, c->request_id, refusal("replayed", "nonce", "this "
		    "nonce was used before"), PLATFORM_REPLY);
		return;
	}
	if (rc == -1) {
		answer(d, c->request_id, refusal("unrecorded", NULL, "the "
		    "command could not be recorded; it was not run"),
		    PLATFORM_REPLY);
		return;
	}
	/* A held locker records nothing (mark.c); its restore_ack is in the
	 * ledger as the restored event it makes, with the request id, and
	 * cannot run twice: the locker is no longer held after it. */
	if (!(strcmp(c->op, "restore_ack") == 0 && d->head.held[0] != '\0') &&
	    record_executed(d, c, digest) == -1)
		res = refusal("unrecorded", NULL, "the command could not be "
		    "recorded in the ledger; it was not run (send it again "
		    "under a new request id)");
	else if ((res = execute(d, c)) == NULL)
		res = refusal("internal", NULL, "the reply could not be built");
	text = reply_text(c->request_id, res);
	b->v[b->n].request_id = strdup(c->request_id);
	if (b->v[b->n].request_id == NULL) {
		log_error("command %s: out of memory; its outcome stays "
		    "unknown", c->request_id);
		free(text);
		return;
	}
	b->v[b->n].stored = text ? stored_form(text) : NULL;
	b->v[b->n].text = text;
	b->n++;
}

/* One message from the broker, as the link thread hands it over. */
static void
message(struct lockerd *d, const char *topic, const char *payload,
    size_t len, int64_t at, struct reply_batch *b)
{
	char field[48], why[160], ctopic[200];
	struct cmd c;
	json_t *res;

	/* platform.c passes nothing else; this says it again. */
	snprintf(ctopic, sizeof(ctopic), "%s/%s/cmd", d->cfg.mqtt.prefix,
	    d->cfg.locker_id);
	if (topic == NULL || strcmp(topic, ctopic) != 0) {
		refused_count(d, "?", NULL, "a message on another topic", 1);
		return;
	}
	if (cmd_parse(payload, len, &c, field, sizeof(field), why,
	    sizeof(why)) == -1) {
		log_info("mqtt: a command was refused: %s %s", field, why);
		if (admit(d, c.request_id, at, 1))
			answer(d, c.request_id, refusal("bad_command", field,
			    why), PLATFORM_BULK);
		cmd_free(&c);
		return;
	}
	if (c.signed_op)
		command_signed(d, &c, at, b);
	else if (admit(d, c.request_id, at, 1)) {
		if (c.locker != NULL && strcmp(c.locker, d->cfg.locker_id) != 0)
			res = refusal("wrong_locker", "locker", "this command "
			    "is for another locker");
		else if (util_wall_ms() > c.exp)
			res = refusal("expired", "exp", "the command arrived "
			    "after its expiry and was not run");
		else
			res = execute(d, &c);
		if (res == NULL)
			res = refusal("internal", NULL, "the reply could not be "
			    "built");
		answer(d, c.request_id, res, PLATFORM_BULK);
	}
	cmd_free(&c);
}

void
link_message(struct lockerd *d, const char *topic, const char *payload,
    size_t len, int64_t at)
{
	struct reply_batch batch;

	batch.n = 0;
	message(d, topic, payload, len, at, &batch);
	batch_flush(d, &batch);
}

/* About once a second (the link thread's tick). */
static void
link_tick(struct lockerd *d)
{
	struct lockerd_link *l = &d->lnk;
	struct platform_stats st;
	int64_t now = util_mono_ms();
	int gone;

	platform_stats(d->link, &st);
	if (st.strays > l->strays) {
		refused_count(d, "?", NULL, "a message on another topic",
		    st.strays - l->strays);
		l->strays = st.strays;
	}
	refused_flush(d, now);
	rebirth_due(d);
	if (now >= l->next_prune) {
		l->next_prune = now + LINK_PRUNE_MS;
		gone = store_cmd_prune(d->store, util_wall_ms() -
		    (int64_t)d->cfg.mqtt.command_log_s * 1000,
		    d->cfg.mqtt.command_log_rows);
		if (gone > 0)
			log_debug("mqtt: %d old commands pruned from the log",
			    gone);
	}
}

void
link_dispatch(struct lockerd *d)
{
	struct platform_rep reps[LINK_BATCH];
	struct reply_batch batch;
	int n, i;

	if (d->link == NULL)
		return;
	/* A turn's worth: the rest waits for the next turn (the eventfd
	 * stays readable), after the keypad and the boards have had theirs. */
	batch.n = 0;
	n = platform_drain(d->link, reps, LINK_BATCH);
	for (i = 0; i < n; i++) {
		switch (reps[i].type) {
		case PLATFORM_CONNECTED:
			connected(d, reps[i].gen);
			break;
		case PLATFORM_DISCONNECTED:
			if (d->outbox.up && reps[i].gen == d->outbox.gen) {
				log_warn("mqtt: link lost (%s); %d events in "
				    "flight will be sent again", reps[i].error,
				    d->outbox.n);
				d->outbox.up = 0;
				d->outbox.n = 0;
				d->lnk.rebirth_busy = 0;
				d->lnk.rebirth_again = 0;
			}
			break;
		case PLATFORM_ACKED:
			acked(d, &reps[i]);
			break;
		case PLATFORM_MESSAGE:
			message(d, reps[i].topic, reps[i].payload,
			    reps[i].len, reps[i].at, &batch);
			free(reps[i].topic);
			free(reps[i].payload);
			break;
		case PLATFORM_TICK:
			link_tick(d);
			break;
		}
	}
	batch_flush(d, &batch);
	link_kick(d);
}
