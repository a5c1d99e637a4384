/*
 * lockerd's side of the platform link: the retained status (birth, will,
 * goodbye, each with the boot counter), and the outbox: ledger events
 * published in sequence order, QoS 1, at most [mqtt] inflight at a time,
 * each marked delivered only when the broker acknowledges it. After a
 * loss, publishing starts again at the first undelivered event; events
 * that waited for the link carry "replayed": true.
 */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "lockerd.h"
#include "log.h"
#include "platform.h"
#include "util.h"

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

int
link_start(struct lockerd *d)
{
	char err[256], *will;

	if (d->cfg.mqtt.host[0] == '\0')
		return 0;
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
	rc = platform_publish(d->link, "events", msg, 1, 0, &mid);
	free(msg);
	if (rc == -1)
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
 * Retained PREFIX/<locker>/cells/<n>, on change. rev grows with every
 * change and across restarts (boot x 10^6 + changes this boot), so a
 * platform keeps the newest whatever order they arrive in.
 */
static void
publish_cells(struct lockerd *d, int all)
{
	char sub[32], *text;
	uint8_t h[8];
	uint64_t hash;
	json_t *o;
	int i, mid;

	for (i = 0; i < d->bank.ncells; i++) {
		if (!all && !d->cell_dirty[i])
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
		if (!all && hash == d->cell_sent[i]) {
			d->cell_dirty[i] = 0;
			json_decref(o);
			continue;
		}
		if (hash != d->cell_sent[i] || d->cell_rev[i] == 0)
			d->cell_rev[i] = d->cell_rev[i] == 0 ?
			    d->boot * 1000000 + 1 : d->cell_rev[i] + 1;
		snprintf(sub, sizeof(sub), "cells/%d", d->cells[i].number);
		if (json_object_set_new(o, "rev",
		    json_integer(d->cell_rev[i])) == 0 &&
		    (text = json_dumps(o, JSON_COMPACT)) != NULL &&
		    platform_publish(d->link, sub, text, 1, 1, &mid) == 0) {
			d->cell_sent[i] = hash;
			d->cell_dirty[i] = 0;
		}
		free(text);
		json_decref(o);
	}
}

void
link_kick(struct lockerd *d)
{
	struct lockerd_outbox *o = &d->outbox;

	if (d->link == NULL || !o->up)
		return;
	if (o->n < d->cfg.mqtt.inflight)
		store_outbox(d->store, o->next, d->cfg.mqtt.inflight - o->n,
		    publish_one, d);
	publish_cells(d, 0);
}

static void
acked(struct lockerd *d, int mid)
{
	struct lockerd_outbox *o = &d->outbox;
	int i;

	for (i = 0; i < o->n; i++) {
		if (o->win[i].mid != mid)
			continue;
		if (store_event_delivered(d->store, o->win[i].seq) == -1)
			log_error("event %lld: could not mark it delivered; "
			    "it will be sent again", (long long)o->win[i].seq);
		/* Only a delivered code needs the WAL wiped behind it. */
		if (o->win[i].code)
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

static void publish_cells(struct lockerd *d, int all);

static void
connected(struct lockerd *d)
{
	struct lockerd_outbox *o = &d->outbox;
	int64_t first, count;
	char *birth;
	int mid;

	if ((birth = status_json(d, 1, NULL)) != NULL) {
		if (platform_publish(d->link, "status", birth, 1, 1, &mid) ==
		    -1)
			log_warn("mqtt: could not publish the birth message");
		free(birth);
	}
	o->up = 1;
	o->n = 0;
	if (store_undelivered(d->store, &first, &count) == -1)
		return;
	o->next = first > 0 ? first : store_event_last(d->store) + 1;
	o->replay_upto = store_event_last(d->store);
	log_info("mqtt: connected; %lld events to send", (long long)count);
	/* Every cell once (retained), then what changes. */
	publish_cells(d, 1);
	link_kick(d);
}

/* Publishes a reply (text) on PREFIX/<locker>/reply. */
static void
send_reply(struct lockerd *d, const char *text)
{
	int mid;

	if (platform_publish(d->link, "reply", text, 1, 0, &mid) == -1)
		log_warn("mqtt: a reply could not be sent; the platform may "
		    "retry the command and get it again");
}

static char *
reply_text(const char *request_id, json_t *body)
{
	char *text;

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

/* A refused command that could have opened a door is an alarm. */
static void
alarm_refused(struct lockerd *d, const struct cmd *c, const char *why)
{
	json_t *x = json_pack("{s:b, s:s, s:s, s:s}", "alarm", 1, "op", c->op,
	    "request_id", c->request_id, "reason", why);

	log_warn("mqtt: command %s (%s) refused: %s", c->request_id, c->op,
	    why);
	if (x == NULL || lockerd_record(d, "command_refused", x) == -1)
		log_error("could not record a refused command");
	json_decref(x);
}

/* Signed ops: the platform key, a fresh timestamp, a nonce never seen. */
static json_t *
check_signature(struct lockerd *d, const struct cmd *c)
{
	uint8_t pk[32];
	int64_t now = util_wall_ms(), ts, window;
	const char *nonce;
	int rc;

	if (d->cfg.mqtt.platform_key[0] == '\0' ||
	    codes_unhex(d->cfg.mqtt.platform_key, pk, sizeof(pk)) == -1) {
		alarm_refused(d, c, "no platform key is configured");
		return refusal("unauthorised", "sig", "this locker has no "
		    "platform key ([mqtt] platform_key)");
	}
	if (cmd_verify(c, pk) == -1) {
		alarm_refused(d, c, "bad signature");
		return refusal("unauthorised", "sig", "bad signature");
	}
	ts = json_integer_value(json_object_get(c->obj, "ts"));
	window = (int64_t)d->cfg.mqtt.command_window_s * 1000;
	if (ts < now - window || ts > now + window) {
		alarm_refused(d, c, "stale timestamp");
		return refusal("stale", "ts", "the timestamp is outside the "
		    "accepted window");
	}
	nonce = json_string_value(json_object_get(c->obj, "nonce"));
	if ((rc = store_nonce_use(d->store, nonce, now, now - 2 * window)) ==
	    1) {
		alarm_refused(d, c, "replayed nonce");
		return refusal("replayed", "nonce", "this nonce was used "
		    "before");
	}
	if (rc == -1)
		return refusal("unrecorded", NULL, "the nonce could not be "
		    "recorded");
	return NULL;
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

static json_t *
execute(struct lockerd *d, const struct cmd *c)
{
	struct bank_actions acts;
	enum bank_refusal br;
	json_t *req, *res;
	char why[96];
	int cell;

	if (strcmp(c->op, "rebirth") == 0) {
		connected(d);
		return json_pack("{s:b}", "ok", 1);
	}
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
 * The command rate limit: each command takes a token of d->cmd_thr
 * ([mqtt] command_rate a second, command_burst at once). Without one the
 * command is answered "busy" with the wait, and not run or recorded: the
 * platform sends it again, under the same request id, after that wait.
 * The bucket is charged at the command's arrival (at, stamped by the
 * network thread), not when the loop gets to it: the limit is on what
 * the platform sends, and a loop that was held up (a slow disk, a stolen
 * CPU) and then works off its queue at once is no flood.
 * Returns 1 when the command may run.
 */
static int
admit(struct lockerd *d, const struct cmd *c, int64_t at)
{
	int64_t now = at, wait;
	json_t *res, *x;
	char *text;

	if ((wait = throttle_wait(&d->cmd_thr, now)) == 0) {
		if (throttle_fail(&d->cmd_thr, now)) {
			log_warn("mqtt: more than %d commands at once; the "
			    "excess is answered busy at %d a second",
			    d->cfg.mqtt.command_burst, d->cfg.mqtt.command_rate);
			x = json_pack("{s:b, s:i, s:i}", "alarm", 1, "burst",
			    d->cfg.mqtt.command_burst, "rate",
			    d->cfg.mqtt.command_rate);
			if (x == NULL || lockerd_record(d, "command_flood", x) ==
			    -1)
				log_error("could not record the command_flood "
				    "alarm");
			json_decref(x);
		}
		return 1;
	}
	throttle_refused(&d->cmd_thr);
	res = refusal("busy", NULL, "too many commands: the locker runs at "
	    "most [mqtt] command_rate a second; this one was not run, send "
	    "it again after retry_after_ms");
	if (res != NULL)
		json_object_set_new(res, "retry_after_ms", json_integer(wait));
	if ((text = reply_text(c->request_id, res)) != NULL)
		send_reply(d, text);
	free(text);
	return 0;
}

/*
 * The replies of one loop turn's commands: their rows are written in one
 * durable transaction, and only then are the replies sent. One fsync for
 * the lot instead of one each (with the lazy start row, store.h), so a
 * locker on a slow card keeps up with a busy platform.
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
			send_reply(d, b->v[i].text);
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

static void
command(struct lockerd *d, const char *payload, size_t len, int64_t at,
    struct reply_batch *b)
{
	char field[48], why[160], state[16], *stored = NULL, *text;
	struct cmd c;
	json_t *res;
	int rc;

	if (cmd_parse(payload, len, &c, field, sizeof(field), why,
	    sizeof(why)) == -1) {
		log_info("mqtt: a command was refused: %s %s", field, why);
		text = reply_text(c.request_id, refusal("bad_command", field,
		    why));
		if (text != NULL)
			send_reply(d, text);
		free(text);
		cmd_free(&c);
		return;
	}
	if (!admit(d, &c, at))
		goto out;
	if (batch_has(b, c.request_id) || b->n == LINK_BATCH)
		batch_flush(d, b);
	/* Once only: a repeat gets the stored reply, an unknown outcome is
	 * said so and never run again. */
	rc = store_cmd_get(d->store, c.request_id, state, sizeof(state),
	    &stored);
	if (rc == 0 && strcmp(state, "done") == 0 && stored != NULL) {
		send_reply(d, stored);
		goto out;
	}
	if (rc != 1) {
		text = reply_text(c.request_id, rc == -1 ?
		    refusal("unrecorded", NULL, "the command log cannot be "
		    "read") : refusal("unknown_outcome", NULL, "this command "
		    "was started before a restart and its outcome is unknown; "
		    "it is not run again"));
		if (text != NULL)
			send_reply(d, text);
		free(text);
		goto out;
	}
	if (store_cmd_start(d->store, c.request_id, c.op) == -1) {
		text = reply_text(c.request_id, refusal("unrecorded", NULL,
		    "the command could not be recorded; it was not run"));
		if (text != NULL)
			send_reply(d, text);
		free(text);
		goto out;
	}
	if (util_wall_ms() > c.exp) {
		res = refusal("expired", "exp", "the command arrived after its "
		    "expiry and was not run");
		if (c.signed_op)
			alarm_refused(d, &c, "expired");
	} else if (c.signed_op && (res = check_signature(d, &c)) != NULL)
		;
	else
		res = execute(d, &c);
	if (res == NULL)
		res = refusal("internal", NULL, "the reply could not be built");
	text = reply_text(c.request_id, res);
	b->v[b->n].request_id = strdup(c.request_id);
	if (b->v[b->n].request_id == NULL) {
		log_error("command %s: out of memory; its outcome stays "
		    "unknown", c.request_id);
		free(text);
		goto out;
	}
	b->v[b->n].stored = text ? stored_form(text) : NULL;
	b->v[b->n].text = text;
	b->n++;
out:
	free(stored);
	cmd_free(&c);
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
			connected(d);
			break;
		case PLATFORM_DISCONNECTED:
			if (d->outbox.up)
				log_warn("mqtt: link lost (%s); %d events in "
				    "flight will be sent again", reps[i].error,
				    d->outbox.n);
			d->outbox.up = 0;
			d->outbox.n = 0;
			break;
		case PLATFORM_ACKED:
			acked(d, reps[i].mid);
			break;
		case PLATFORM_MESSAGE:
			command(d, reps[i].payload, reps[i].len, reps[i].at,
			    &batch);
			free(reps[i].topic);
			free(reps[i].payload);
			break;
		}
	}
	batch_flush(d, &batch);
	link_kick(d);
}
