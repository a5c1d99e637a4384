/*
 * The keypad socket (proto/kiosk.md): codes, QR credentials, staff log-in
 * and staff actions from the keypad, and notices to the screen. Every
 * failed code and PIN goes through a throttle (throttle.h), kept in the
 * database so that a restart gives nothing back; a throttle that runs
 * dry is a "guessing" alarm in the ledger.
 */
#include <jansson.h>
#include <pwd.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lockerd.h"
#include "log.h"
#include "util.h"

#define SHOW_MAX 160

static json_t *
refuse(const char *error, const char *show, int64_t wait_ms)
{
	return json_pack("{s:b, s:s, s:s, s:I}", "ok", 0, "error", error,
	    "show", show, "wait_s", (json_int_t)((wait_ms + 999) / 1000));
}

static json_t *refuse_bad(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static json_t *
refuse_bad(const char *fmt, ...)
{
	char show[SHOW_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(show, sizeof(show), fmt, ap);
	va_end(ap);
	/* It may quote the client's bytes, cut anywhere ('%.40s'), or
	 * json_pack() refuses it and the keypad gets no "show" (a
	 * fuzz_kiosk regression). */
	util_printable(show);
	return refuse("bad_request", show, 0);
}

void
kiosk_notice(struct lockerd *d, const char *what, int cell, const char *show)
{
	char text[SHOW_MAX];
	json_t *n;

	if (d->kiosk == NULL)
		return;
	if (show == NULL && strcmp(what, "open") == 0)
		snprintf(text, sizeof(text), "Cell %d is open.", cell);
	else if (show == NULL && strcmp(what, "closed") == 0)
		snprintf(text, sizeof(text), "Cell %d is closed. Thank you.",
		    cell);
	else
		snprintf(text, sizeof(text), "%s", show ? show : "");
	n = json_pack("{s:s, s:s}", "notice", what, "show", text);
	if (n == NULL)
		return;
	if (cell > 0)
		json_object_set_new(n, "cell", json_integer(cell));
	jsonl_broadcast(d->kiosk, n);
	json_decref(n);
}

static void
guessing(struct lockerd *d, const char *what, const struct throttle *t)
{
	json_t *x = json_pack("{s:b, s:s, s:I}", "alarm", 1, "what", what,
	    "failures", (json_int_t)t->failures);

	log_warn("keypad: %s guessing: the throttle ran dry after %lld "
	    "failures", what, (long long)t->failures);
	if (x == NULL || lockerd_record(d, "guessing", x) == -1)
		log_error("could not record the guessing alarm");
	json_decref(x);
}

/*
 * A failed log-in emptied a bucket: the keypad's (every id) or the one of
 * the id it named. A known account is named, so that the platform can act
 * on it; an id that is no account is not (it may be a mistyped PIN).
 */
static void
pin_guessing(struct lockerd *d, int alarm, const char *known_id)
{
	json_t *x = json_pack("{s:b, s:s, s:I}", "alarm", 1, "what", "pin",
	    "failures", (json_int_t)d->thr.pin.failures);

	if (x != NULL && known_id != NULL)
		json_object_set_new(x, "staff", json_string(known_id));
	log_warn("keypad: pin guessing: a throttle ran dry (%s) after %lld "
	    "failed log-ins%s%s", alarm == THROTTLE_ALARM_ACCOUNT ?
	    "that account's" : "the keypad's", (long long)d->thr.pin.failures,
	    known_id ? ", aimed at staff " : "", known_id ? known_id : "");
	if (x == NULL || lockerd_record(d, "guessing", x) == -1)
		log_error("could not record the guessing alarm");
	json_decref(x);
}

/* ---- The throttles in the database ---------------------------------- */

/* A throttle row as of now; full (nothing to keep) when it is. */
static void
bucket_row(struct throttle *t, const char *name, int64_t spent, int64_t now,
    struct store_throttle *row)
{
	memset(row, 0, sizeof(*row));
	util_strlcpy(row->name, name, sizeof(row->name));
	row->tokens = throttle_tokens(t, now);
	row->at = lockerd_now();
	row->alarmed = t->alarmed;
	row->episode = t->episode;
	row->failures = t->failures;
	row->spent = spent;
	row->full = row->tokens >= t->burst && spent == 0;
}

static void
account_name(const uint8_t key[THROTTLE_KEY_LEN], char *out, size_t len)
{
	char hex[2 * THROTTLE_KEY_LEN + 1];

	codes_hex(key, THROTTLE_KEY_LEN, hex, sizeof(hex));
	snprintf(out, len, "pin:%s", hex);
}

/*
 * Written before the reply goes out: a guesser who pulls the plug right
 * after a wrong try finds it counted when the locker is back.
 */
static void
save_rows(struct lockerd *d, const struct store_throttle *rows, int n)
{
	if (d->store != NULL && store_throttle_put(d->store, rows, n) == -1)
		log_error("keypad: the throttle could not be saved; a restart "
		    "now would give back the tries spent since");
}

static void
save_code(struct lockerd *d)
{
	struct store_throttle row;

	bucket_row(&d->thr.code, "code", 0, util_mono_ms(), &row);
	save_rows(d, &row, 1);
}

/* The keypad's PIN bucket, one id's, and the one it pushed out if any. */
static void
save_pin(struct lockerd *d, const uint8_t key[THROTTLE_KEY_LEN],
    const struct throttle_account *evicted)
{
	struct throttle_account *a = throttle_account_find(&d->thr, key);
	int64_t now = util_mono_ms();
	struct store_throttle rows[3];
	char name[48];
	int n = 0;

	bucket_row(&d->thr.pin, "pin", 0, now, &rows[n++]);
	if (a != NULL) {
		account_name(key, name, sizeof(name));
		bucket_row(&a->t, name, a->spent, now, &rows[n++]);
	}
	if (evicted != NULL && evicted->used) {
		account_name(evicted->key, name, sizeof(name));
		memset(&rows[n], 0, sizeof(rows[n]));
		util_strlcpy(rows[n].name, name, sizeof(rows[n].name));
		rows[n++].full = 1;
	}
	save_rows(d, rows, n);
}

static int
hex_key(const char *hex, uint8_t key[THROTTLE_KEY_LEN])
{
	size_t i;
	int hi, lo;

	if (strlen(hex) != 2 * THROTTLE_KEY_LEN)
		return -1;
	for (i = 0; i < THROTTLE_KEY_LEN; i++) {
		hi = hex[2 * i];
		lo = hex[2 * i + 1];
		hi = hi >= '0' && hi <= '9' ? hi - '0' : hi >= 'a' && hi <= 'f' ?
		    hi - 'a' + 10 : -1;
		lo = lo >= '0' && lo <= '9' ? lo - '0' : lo >= 'a' && lo <= 'f' ?
		    lo - 'a' + 10 : -1;
		if (hi < 0 || lo < 0)
			return -1;
		key[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

struct load_arg {
	struct lockerd *d;
	int64_t now, wall;
	int accounts;
};

static int
load_row(const struct store_throttle *row, void *arg)
{
	struct load_arg *la = arg;
	struct throttle_account *a;
	uint8_t key[THROTTLE_KEY_LEN];
	struct throttle *t = NULL;

	if (strcmp(row->name, "code") == 0)
		t = &la->d->thr.code;
	else if (strcmp(row->name, "pin") == 0)
		t = &la->d->thr.pin;
	else if (strncmp(row->name, "pin:", 4) == 0 &&
	    hex_key(row->name + 4, key) == 0 &&
	    la->accounts < THROTTLE_ACCOUNTS) {
		a = throttle_account_get(&la->d->thr, key, la->now, NULL);
		a->spent = row->spent > 0 ? row->spent : 0;
		t = &a->t;
		la->accounts++;
	}
	if (t != NULL)
		throttle_restore(t, row->tokens, row->alarmed, row->episode,
		    row->failures, la->wall - row->at, la->now);
	return 0;
}

int
kiosk_start(struct lockerd *d)
{
	const struct config_kiosk *k = &d->cfg.kiosk;
	struct load_arg la = { d, util_mono_ms(), lockerd_now(), 0 };

	/* A guesser who keeps the keypad throttled is reported again every
	 * KIOSK_REALARM failures (about 8 hours at the default refill). */
	throttle_keypad_init(&d->thr, k->code_burst,
	    (int64_t)k->code_refill_s * 1000, k->pin_burst,
	    (int64_t)k->pin_refill_s * 1000, KIOSK_REALARM, la.now);
	if (store_throttle_load(d->store, load_row, &la) == -1)
		return -1;
	if (!throttle_full(&d->thr.code, la.now) ||
	    !throttle_full(&d->thr.pin, la.now) || la.accounts > 0)
		log_info("keypad: the throttle as saved: %.1f of %d code "
		    "tries, %.1f of %d log-ins, %d staff ids with tries spent",
		    throttle_tokens(&d->thr.code, la.now), d->thr.code.burst,
		    throttle_tokens(&d->thr.pin, la.now), d->thr.pin.burst,
		    la.accounts);
	return 0;
}

/* A user name or uid ([kiosk] client_user); -1 if there is none such. */
static long
user_uid(const char *name)
{
	struct passwd pw, *res = NULL;
	char buf[2048], *end;
	long uid;

	uid = strtol(name, &end, 10);
	if (*name != '\0' && *end == '\0')
		return uid >= 0 ? uid : -1;
	if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
		return -1;
	return (long)pw.pw_uid;
}

int
kiosk_open(struct lockerd *d)
{
	const struct config_kiosk *k = &d->cfg.kiosk;
	long uid = -1;

	if (k->client_user[0] != '\0' && (uid = user_uid(k->client_user)) ==
	    -1) {
		log_error("[kiosk] client_user %s: no such user", k->client_user);
		return -1;
	}
	if ((d->kiosk = jsonl_open(d->cfg.kiosk_socket, 0660, kiosk_handle,
	    d)) == NULL)
		return -1;
	jsonl_screen_errors(d->kiosk);
	jsonl_limits(d->kiosk, k->client_timeout_s, k->client_idle_s);
	jsonl_trust_uid(d->kiosk, uid);
	if (uid >= 0)
		log_info("keypad: a slot is kept for uid %ld (%s)", uid,
		    k->client_user);
	return 0;
}

static json_t *
refusal_reply(enum resv_refusal r)
{
	switch (r) {
	case RESV_ERR_NO_CODE:
		return refuse("invalid_code", "This code is not valid. Check "
		    "it and try again.", 0);
	case RESV_ERR_EXPIRED:
		return refuse("expired", "This code has expired. Please "
		    "contact the service hall.", 0);
	case RESV_ERR_USED:
		return refuse("used", "This code has already been used.", 0);
	case RESV_ERR_CANCELLED:
		return refuse("cancelled", "This reservation was cancelled.",
		    0);
	case RESV_ERR_CELL:
		return refuse("cell_unavailable", "The cell cannot be opened "
		    "now. Please ask the hall staff; your code still works.",
		    0);
	case RESV_ERR_FULL:
		return refuse("full", "No free cell of that size.", 0);
	case RESV_ERR_NOTHING:
		return refuse("nothing", "Nothing to do.", 0);
	case RESV_ERR_IN_PROGRESS:
		return refuse("in_progress", "Your cell is opening. Please "
		    "wait a moment.", 0);
	case RESV_ERR_PHONE_NEEDED:
		return refuse("phone_needed", "Please enter the last 4 digits "
		    "of your phone number.", 0);
	default:
		return refuse("not_allowed", resv_refusal_str(r), 0);
	}
}

/* Runs a step; on success the reply for the opened cell. */
static json_t *
opened(struct lockerd *d, struct lockerd_step *s, int slot)
{
	int64_t id = d->resv.r[slot].id;
	int pickup = d->resv.r[slot].kind == RESV_PICKUP;
	char show[SHOW_MAX];
	int cell;

	if (lockerd_run(d, s) == -1)
		return refuse("unrecorded", "Sorry, the locker cannot record "
		    "this now; no door was opened. Please try again later.",
		    0);
	/* The unlock may have failed at once (a board that refuses): then
	 * the code was restored, or another cell is opening instead. */
	if ((slot = resv_slot_of_id(&d->resv, id)) == -1 ||
	    d->resv.r[slot].state != RESV_OPENING ||
	    !d->cells[d->resv.r[slot].cell].unlocking)
		return refuse("cell_unavailable", "The cell could not be "
		    "opened. Your code still works; please ask the hall "
		    "staff.", 0);
	cell = d->cells[d->resv.r[slot].cell].number;
	/* No code in it: only the clock readings of the phases. */
	log_debug("keypad: cell %d unlock timing (monotonic us): got %lld "
	    "checked %lld tx %lld commit %lld durable %lld queued %lld "
	    "cpu %lld", cell,
	    (long long)d->steptime.got, (long long)d->steptime.checked,
	    (long long)d->steptime.tx, (long long)d->steptime.commit,
	    (long long)d->steptime.durable, (long long)d->steptime.queued,
	    (long long)(d->steptime.cpu_queued - d->steptime.cpu_got));
	snprintf(show, sizeof(show), pickup ? "Cell %d is open. Take your "
	    "certificate and close the door." : "Cell %d is open. Put your "
	    "documents in and close the door.", cell);
	return json_pack("{s:b, s:s, s:i, s:s}", "ok", 1, "show", show,
	    "cell", cell, "purpose", pickup ? "pickup" : "dropoff");
}

/* The keypad takes no code while the throttle says wait. */
static json_t *
throttled(struct lockerd *d)
{
	int64_t wait = throttle_wait(&d->thr.code, util_mono_ms());

	if (wait == 0)
		return NULL;
	throttle_refused(&d->thr.code);
	return refuse("wait", "Too many wrong codes. Please wait.", wait);
}

/*
 * What a code or credential came to: a failure counts; a success opens,
 * but gives no tries back until its door is seen open (kiosk_step_done);
 * a code in use (its unlock under way) changes nothing.
 */
static json_t *
outcome(struct lockerd *d, struct lockerd_step *s, enum resv_refusal r,
    int slot)
{
	if (r == RESV_ERR_NO_CODE) {
		if (throttle_fail(&d->thr.code, util_mono_ms()))
			guessing(d, "code", &d->thr.code);
		save_code(d);
		return refusal_reply(r);
	}
	if (r != RESV_OK)
		return refusal_reply(r);
	return opened(d, s, slot);
}

void
kiosk_step_done(struct lockerd *d, const struct lockerd_step *s)
{
	const struct resv_action *a;
	int i;

	/* A reservation is saved "open" once: when the door of its code
	 * was seen open. Nothing else makes one. */
	for (i = 0; i < s->resv.n; i++) {
		a = &s->resv.a[i];
		if (a->type != RESV_ACT_SAVE || a->r.state != RESV_OPEN ||
		    !a->r.door_seen_open)
			continue;
		if (throttle_code_opened(&d->thr, a->r.id, util_mono_ms())) {
			log_debug("keypad: reservation %lld opened: the code "
			    "throttle is full again", (long long)a->r.id);
			save_code(d);
		}
	}
}

static json_t *
enter_code(struct lockerd *d, json_t *req, struct lockerd_step *s)
{
	uint8_t code_hash[CODES_HASH_LEN], phone_hash[CODES_HASH_LEN];
	const char *code = json_string_value(json_object_get(req, "code"));
	json_t *pv = json_object_get(req, "phone");
	const char *phone = json_string_value(pv);
	enum resv_refusal r;
	json_t *wait;
	int slot = -1;

	if (code == NULL)
		return refuse_bad("Field 'code' (a string of digits) is "
		    "missing.");
	if (!codes_valid_digits(code, d->cfg.codes.digits,
	    d->cfg.codes.digits))
		return refuse_bad("A code has %d digits.",
		    d->cfg.codes.digits);
	if (pv != NULL && (phone == NULL || !codes_valid_digits(phone, 4, 4)))
		return refuse_bad("Field 'phone' must be the last 4 digits of "
		    "the phone number.");
	if ((wait = throttled(d)) != NULL)
		return wait;
	codes_hash(d->keys, "code", code, code_hash);
	if (phone != NULL)
		codes_hash(d->keys, "phone", phone, phone_hash);
	r = resv_enter(&d->resv, code_hash, phone ? phone_hash : NULL,
	    lockerd_now(), &s->resv, &slot);
	d->steptime.checked = util_mono_us();
	return outcome(d, s, r, slot);
}

static json_t *
scan(struct lockerd *d, json_t *req, struct lockerd_step *s)
{
	const char *text = json_string_value(json_object_get(req,
	    "credential"));
	json_t *pv = json_object_get(req, "phone");
	const char *phone = json_string_value(pv);
	uint8_t phone_hash[CODES_HASH_LEN];
	const char *reason = NULL;
	struct codes_cred c;
	enum resv_refusal r;
	json_t *wait;
	int slot = -1;

	if (text == NULL)
		return refuse_bad("Field 'credential' (the scanned text) is "
		    "missing.");
	if (pv != NULL && (phone == NULL || !codes_valid_digits(phone, 4, 4)))
		return refuse_bad("Field 'phone' must be the last 4 digits of "
		    "the phone number.");
	if ((wait = throttled(d)) != NULL)
		return wait;
	if (phone != NULL)
		codes_hash(d->keys, "phone", phone, phone_hash);
	if (codes_cred_parse(d->keys->sign_pk, text, &c, &reason) == -1 ||
	    strcmp(c.locker, d->cfg.locker_id) != 0)
		r = RESV_ERR_NO_CODE;
	else
		r = resv_enter_credential(&d->resv, c.resv, c.cell,
		    c.code_hash, phone ? phone_hash : NULL, c.not_after * 1000,
		    lockerd_now(), &s->resv, &slot);
	d->steptime.checked = util_mono_us();
	if (r == RESV_ERR_NO_CODE)
		log_info("keypad: a scanned credential was refused: %s",
		    reason ? reason : "no such live code here");
	return outcome(d, s, r, slot);
}

static int
logged_in(struct lockerd *d)
{
	return d->session.id[0] != '\0' && util_mono_ms() < d->session_until;
}

static void
end_session(struct lockerd *d, const char *why)
{
	json_t *x;

	if (d->session.id[0] == '\0')
		return;
	x = json_pack("{s:s, s:s}", "staff", d->session.id, "why", why);
	if (x == NULL || lockerd_record(d, "staff_logout", x) == -1)
		log_error("could not record the end of a staff session");
	json_decref(x);
	log_info("keypad: staff %s: session ended (%s)", d->session.id, why);
	sodium_memzero(&d->session, sizeof(d->session));
	d->resv.retrieve_staff[0] = '\0';
}

/* What the session's account was when it began: any change shows. */
static void
account_digest(const struct staff *st, uint8_t out[CODES_HASH_LEN])
{
	char buf[STAFF_ID_MAX + STAFF_NAME_MAX + STAFF_HASH_MAX + 64];
	int n;

	n = snprintf(buf, sizeof(buf), "%s\n%s\n%s\n%s\n%d\n%lld", st->id,
	    st->role, st->name, st->pin_hash, st->revoked,
	    (long long)st->last_seq);
	codes_digest(buf, n > 0 && (size_t)n < sizeof(buf) ? (size_t)n :
	    sizeof(buf) - 1, out);
	sodium_memzero(buf, sizeof(buf));
}

void
kiosk_staff_changed(struct lockerd *d, const char *id, const char *why)
{
	if (d->session.id[0] == '\0' || strcmp(d->session.id, id) != 0)
		return;
	end_session(d, why);
	kiosk_notice(d, "session_ended", 0, "Staff session ended: the staff "
	    "account was changed. Please log in again.");
}

void
kiosk_staff_revoked(struct lockerd *d, const char *id)
{
	kiosk_staff_changed(d, id, "revoked");
}

/*
 * The session's account as stored now: 0 as it was at the log-in, 1
 * changed or gone (whatever changed it: the platform, --add-staff, a
 * hand in the database), -1 if it cannot be read.
 */
static int
account_unchanged(struct lockerd *d)
{
	uint8_t now_row[CODES_HASH_LEN];
	struct staff st;
	int rc, revoked;

	rc = staff_get(d->store, d->keys->sign_pk, d->session.id, &st);
	revoked = st.revoked;
	if (rc == 0 && !revoked)
		account_digest(&st, now_row);
	sodium_memzero(&st, sizeof(st));
	if (rc == -1)
		return -1;
	if (rc != 0 || revoked)
		return 1;
	return sodium_memcmp(now_row, d->session_row, sizeof(now_row)) == 0 ?
	    0 : 1;
}

int64_t
kiosk_tick(struct lockerd *d)
{
	if (d->session.id[0] == '\0')
		return INT64_MAX;
	if (util_mono_ms() < d->session_until)
		return d->session_until;
	end_session(d, "timeout");
	kiosk_notice(d, "session_ended", 0, "Staff session ended.");
	return INT64_MAX;
}

/* The bucket of a staff id typed: a keyed hash, never the id itself. */
static void
pin_key(struct lockerd *d, const char *id, uint8_t key[THROTTLE_KEY_LEN])
{
	uint8_t h[CODES_HASH_LEN];

	codes_hash(d->keys, "staff_id", id, h);
	memcpy(key, h, THROTTLE_KEY_LEN);
}

/*
 * The hash an unknown id is checked against: made at the configured cost,
 * so that it takes as long as every real account's (staff_cost_check()
 * holds the platform's to that cost, --add-staff makes them with it). It
 * is made once per cost; it never matches, its PIN being no secret.
 */
static const char *
pin_dummy(const struct config_kiosk *k)
{
	static char hash[STAFF_HASH_MAX];
	static int kib, passes;

	if (hash[0] != '\0' && kib == k->pin_hash_kib &&
	    passes == k->pin_hash_passes)
		return hash;
	if (staff_hash_pin("000000", k->pin_hash_kib, k->pin_hash_passes,
	    hash) == -1) {
		hash[0] = '\0';
		return NULL;
	}
	kib = k->pin_hash_kib;
	passes = k->pin_hash_passes;
	return hash;
}

/*
 * A stored hash that costs more than the configured cost (made before a
 * change, or written by hand) is not verified: it would hold the whole
 * loop up. The account answers as an unknown id does, until re-provisioned.
 */
static int
cost_bounded(struct lockerd *d, const struct staff *st)
{
	long kib, passes;

	if (staff_hash_cost(st->pin_hash, &kib, &passes) == 0 &&
	    kib <= d->cfg.kiosk.pin_hash_kib &&
	    passes <= d->cfg.kiosk.pin_hash_passes)
		return 1;
	log_warn("keypad: staff %s: the PIN hash costs more than [kiosk] "
	    "pin_hash_kib = %d, pin_hash_passes = %d allow (or is no Argon2id "
	    "hash); not verified: provision the account again", st->id,
	    d->cfg.kiosk.pin_hash_kib, d->cfg.kiosk.pin_hash_passes);
	return 0;
}

/* A failed log-in, charged to the keypad and to the id it named. */
static void
pin_failed(struct lockerd *d, const uint8_t key[THROTTLE_KEY_LEN],
    const char *known_id)
{
	struct throttle_account evicted;
	int64_t now = util_mono_ms();
	int alarm;

	throttle_account_get(&d->thr, key, now, &evicted);
	alarm = throttle_pin_fail(&d->thr, key, now);
	save_pin(d, key, &evicted);
	if (alarm)
		pin_guessing(d, alarm, known_id);
}

static json_t *
login(struct lockerd *d, json_t *req)
{
	const char *id = json_string_value(json_object_get(req, "staff"));
	const char *pin = json_string_value(json_object_get(req, "pin"));
	uint8_t key[THROTTLE_KEY_LEN];
	const char *dummy;
	struct staff st;
	int64_t wait;
	int rc, ok;
	json_t *x;

	if (id == NULL || pin == NULL)
		return refuse_bad("Fields 'staff' and 'pin' are needed.");
	/* Made (once) before the id is looked up: the first log-in after a
	 * start pays for it whatever id it names, so that it tells nothing. */
	if ((dummy = pin_dummy(&d->cfg.kiosk)) == NULL)
		return refuse("unrecorded", "The staff list cannot be read "
		    "now.", 0);
	pin_key(d, id, key);
	if ((wait = throttle_pin_wait(&d->thr, key, util_mono_ms())) > 0) {
		throttle_refused(&d->thr.pin);
		return refuse("wait", "Too many wrong log-ins. Please wait.",
		    wait);
	}
	rc = staff_valid_id(id) ? staff_get(d->store, d->keys->sign_pk, id,
	    &st) : 1;
	if (rc == 0 && (st.revoked || !cost_bounded(d, &st)))
		rc = 1;
	if (rc == -1)
		return refuse("unrecorded", "The staff list cannot be read "
		    "now.", 0);
	/* Unknown ids cost as much as wrong PINs: no id enumeration. */
	if (rc != 0) {
		memset(&st, 0, sizeof(st));
		util_strlcpy(st.pin_hash, dummy, sizeof(st.pin_hash));
	}
	ok = staff_check_pin(&st, pin) && rc == 0;
	if (!ok) {
		sodium_memzero(&st, sizeof(st));
		log_info("keypad: failed staff log-in");
		pin_failed(d, key, rc == 0 ? id : NULL);
		return refuse("bad_login", "Wrong staff id or PIN.", 0);
	}
	/* Only this account's own bucket, and its own failures, come back. */
	throttle_pin_ok(&d->thr, key, util_mono_ms());
	save_pin(d, key, NULL);
	end_session(d, "another log-in");
	account_digest(&st, d->session_row);
	d->session = st;
	sodium_memzero(d->session.pin_hash, sizeof(d->session.pin_hash));
	sodium_memzero(&st, sizeof(st));
	d->session_until = util_mono_ms() +
	    (int64_t)d->cfg.kiosk.staff_session_s * 1000;
	x = json_pack("{s:s, s:s}", "staff", d->session.id, "role",
	    d->session.role);
	if (x == NULL || lockerd_record(d, "staff_login", x) == -1)
		log_error("could not record a staff log-in");
	json_decref(x);
	log_info("keypad: staff %s logged in", d->session.id);
	return json_pack("{s:b, s:s, s:s, s:s, s:s, s:i}", "ok", 1, "show",
	    "Logged in.", "staff", d->session.id, "name", d->session.name,
	    "role", d->session.role, "session_s",
	    d->cfg.kiosk.staff_session_s);
}

static int
count_state(struct lockerd *d, enum resv_state state)
{
	int i, n = 0;

	for (i = 0; i < d->resv.n; i++)
		n += d->resv.r[i].id != 0 && d->resv.r[i].state == state;
	return n;
}

/* The cell the step's reservations asked to unlock, or 0. */
static int
unlocked_cell(struct lockerd *d, const struct lockerd_step *s)
{
	int i;

	for (i = 0; i < s->resv.n; i++)
		if (s->resv.a[i].type == RESV_ACT_UNLOCK)
			return d->cells[s->resv.a[i].cell].number;
	return 0;
}

static json_t *
staff_resv(struct lockerd *d, const char *op, json_t *req,
    struct lockerd_step *s)
{
	char show[SHOW_MAX];
	enum resv_refusal r;
	const char *size, *app;
	int slot = -1, cell;

	if (strcmp(op, "load") == 0) {
		size = json_string_value(json_object_get(req, "size"));
		app = json_string_value(json_object_get(req, "app"));
		if (size == NULL || strlen(size) != 1 ||
		    strchr("SML", size[0]) == NULL)
			return refuse_bad("Field 'size' must be S, M or L.");
		if (app == NULL || *app == '\0' || strlen(app) >= RESV_APP_MAX)
			return refuse_bad("Field 'app' (the application "
			    "number, 1-%d characters) is needed.",
			    RESV_APP_MAX - 1);
		r = resv_load(&d->resv, app, size[0], d->session.id,
		    lockerd_now(), &s->resv, &slot);
	} else if (strcmp(op, "retrieve") == 0)
		r = resv_retrieve(&d->resv, d->session.id, lockerd_now(),
		    &s->resv);
	else
		r = resv_take_back(&d->resv, d->session.id, lockerd_now(),
		    &s->resv);
	if (r == RESV_ERR_STATE && strcmp(op, "retrieve") == 0)
		return refuse("busy", "A cell is open for retrieval; close it "
		    "first.", 0);
	if (r != RESV_OK)
		return refusal_reply(r);
	cell = unlocked_cell(d, s);
	if (lockerd_run(d, s) == -1)
		return refuse("unrecorded", "The locker cannot record this "
		    "now; no door was opened.", 0);
	if (strcmp(op, "load") == 0) {
		snprintf(show, sizeof(show), "Cell %d is open: put the "
		    "certificate in and close the door.", cell);
		return json_pack("{s:b, s:s, s:i, s:I}", "ok", 1, "show", show,
		    "cell", cell, "resv", (json_int_t)d->resv.r[slot].id);
	}
	if (strcmp(op, "retrieve") == 0) {
		snprintf(show, sizeof(show), "Cell %d is open: take the "
		    "documents out and close the door.", cell);
		return json_pack("{s:b, s:s, s:i, s:i}", "ok", 1, "show", show,
		    "cell", cell, "remaining",
		    count_state(d, RESV_DEPOSITED));
	}
	snprintf(show, sizeof(show), "Cell %d is open: take the item back "
	    "and close the door.", cell);
	return json_pack("{s:b, s:s, s:i}", "ok", 1, "show", show, "cell",
	    cell);
}

static json_t *
staff_cell(struct lockerd *d, const char *op, json_t *req)
{
	json_t *cv = json_object_get(req, "cell"), *in = NULL, *x;
	struct bank_actions acts;
	enum bank_refusal r;
	char show[SHOW_MAX];
	int cell;

	/* The range first: cast to int, 7 - 2^32 would be cell 7. */
	if (!json_is_integer(cv) || json_integer_value(cv) < 1 ||
	    json_integer_value(cv) > CONFIG_CELL_NUMBER_MAX ||
	    (cell = bank_cell_index(&d->bank, (int)json_integer_value(cv))) ==
	    -1)
		return refuse_bad("Field 'cell' must be a cell number of this "
		    "locker.");
	if (strcmp(op, "service") == 0 &&
	    !json_is_boolean(in = json_object_get(req, "in")))
		return refuse_bad("Field 'in' must be true or false.");
	x = json_pack("{s:s, s:s, s:i}", "staff", d->session.id, "action", op,
	    "cell", d->cells[cell].number);
	if (x != NULL && in != NULL)
		json_object_set(x, "in", in);
	if (x == NULL || lockerd_record(d, "staff_action", x) == -1) {
		json_decref(x);
		return refuse("unrecorded", "The locker cannot record this "
		    "now.", 0);
	}
	json_decref(x);
	memset(&acts, 0, sizeof(acts));
	if (in != NULL)
		r = bank_set_service(&d->bank, cell, json_is_true(in),
		    util_mono_ms(), &acts);
	else
		r = bank_unlock(&d->bank, cell, "staff_service",
		    util_mono_ms(), &acts);
	if (r != BANK_OK) {
		snprintf(show, sizeof(show), "Cell %d: %s.",
		    d->cells[cell].number, bank_refusal_str(r));
		return refuse(r == BANK_ERR_BUSY ? "busy" : "cell_unavailable",
		    show, 0);
	}
	if (lockerd_apply(d, &acts) == -1)
		return refuse("unrecorded", "The locker cannot record this "
		    "now; no door was opened.", 0);
	if (in != NULL) {
		snprintf(show, sizeof(show), "Cell %d is %s service.",
		    d->cells[cell].number, json_is_true(in) ? "in" : "out of");
		return json_pack("{s:b, s:s, s:i, s:O}", "ok", 1, "show", show,
		    "cell", d->cells[cell].number, "in", in);
	}
	snprintf(show, sizeof(show), "Cell %d is open for service.",
	    d->cells[cell].number);
	return json_pack("{s:b, s:s, s:i}", "ok", 1, "show", show, "cell",
	    d->cells[cell].number);
}

static json_t *
status(struct lockerd *d)
{
	int64_t wait = throttle_wait(&d->thr.code, util_mono_ms());
	int free_[3] = { 0, 0, 0 }, i;

	for (i = 0; i < d->bank.ncells; i++) {
		char size = d->cells[i].size;

		if (resv_cell_free(&d->resv, i))
			free_[size == 'S' ? 0 : size == 'M' ? 1 : 2]++;
	}
	return json_pack("{s:b, s:s, s:o, s:I, s:{s:i, s:i, s:i}}", "ok", 1,
	    "show", wait > 0 ? "Please wait." : "Enter your code.",
	    "staff", logged_in(d) ? json_string(d->session.id) : json_null(),
	    "wait_s", (json_int_t)((wait + 999) / 1000),
	    "free", "S", free_[0], "M", free_[1], "L", free_[2]);
}

static json_t *
dispatch(struct lockerd *d, json_t *req, struct lockerd_step *s)
{
	const char *op = json_string_value(json_object_get(req, "op"));
	json_t *reply;

	if (op == NULL)
		return refuse_bad("Field 'op' (a string) is missing.");
	if (strcmp(op, "code") == 0)
		return enter_code(d, req, s);
	if (strcmp(op, "scan") == 0)
		return scan(d, req, s);
	if (strcmp(op, "login") == 0)
		return login(d, req);
	if (strcmp(op, "status") == 0)
		return status(d);
	if (strcmp(op, "logout") == 0) {
		end_session(d, "logout");
		return json_pack("{s:b, s:s}", "ok", 1, "show", "Logged out.");
	}
	if (strcmp(op, "load") != 0 && strcmp(op, "retrieve") != 0 &&
	    strcmp(op, "take_back") != 0 && strcmp(op, "open") != 0 &&
	    strcmp(op, "service") != 0)
		return refuse_bad("Unknown op '%.40s'.", op);
	if (!logged_in(d)) {
		if (d->session.id[0] != '\0')
			end_session(d, "timeout");
		return refuse("not_logged_in", "Please log in first.", 0);
	}
	switch (account_unchanged(d)) {
	case -1:
		return refuse("unrecorded", "The staff list cannot be read "
		    "now.", 0);
	case 1:
		kiosk_staff_changed(d, d->session.id, "account changed");
		return refuse("not_logged_in", "The staff account was changed. "
		    "Please log in again.", 0);
	}
	reply = strcmp(op, "open") == 0 || strcmp(op, "service") == 0 ?
	    staff_cell(d, op, req) : staff_resv(d, op, req, s);
	/* Only a request that was carried out keeps the session going: a
	 * stream of refused ones does not hold an abandoned session open. */
	if (json_is_true(json_object_get(reply, "ok")))
		d->session_until = util_mono_ms() +
		    (int64_t)d->cfg.kiosk.staff_session_s * 1000;
	return reply;
}

json_t *
kiosk_handle(void *arg, json_t *req)
{
	struct lockerd *d = arg;
	struct lockerd_step *s;
	json_t *reply;

	memset(&d->steptime, 0, sizeof(d->steptime));
	d->steptime.got = util_mono_us();
	d->steptime.cpu_got = util_thread_cpu_us();
	if ((s = malloc(sizeof(*s))) == NULL)
		return refuse("unrecorded", "Out of memory.", 0);
	lockerd_step_init(s);
	reply = dispatch(d, req, s);
	free(s);
	return reply;
}

int
lockerd_credential(struct lockerd *d, const struct resv *r, char *out,
    size_t outlen)
{
	struct codes_cred c;

	memset(&c, 0, sizeof(c));
	util_strlcpy(c.locker, d->cfg.locker_id, sizeof(c.locker));
	c.resv = r->id;
	c.cell = d->cells[r->cell].number;
	c.purpose = r->kind == RESV_DROPOFF ? CODES_DROPOFF : CODES_PICKUP;
	/* A pickup code outlives its due date until staff take it back. */
	c.not_after = (r->kind == RESV_DROPOFF ? r->valid_until :
	    r->valid_until + 365LL * 86400 * 1000) / 1000;
	memcpy(c.code_hash, r->code_hash, sizeof(c.code_hash));
	return codes_cred_make(d->keys, &c, out, outlen);
}
