/*
 * Custody records: signed rows and the JSON of a reservation.
 */
#include "custody.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANON_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)

char *
custody_canon(json_t *o)
{
	return json_dumps(o, CANON_FLAGS);
}

/* "lockerd/DOMAIN/1\n" + text, the bytes that are signed. */
static char *
signed_bytes(const char *domain, const char *text, size_t *len)
{
	size_t dl = strlen(domain), tl = strlen(text);
	char *buf = malloc(dl + tl + 12);

	if (buf == NULL)
		return NULL;
	*len = (size_t)snprintf(buf, dl + 12, "lockerd/%s/1\n", domain);
	memcpy(buf + *len, text, tl);
	*len += tl;
	return buf;
}

int
custody_row_sign(const struct codes_keys *k, const char *domain,
    json_t *body, char **text, uint8_t sig[CODES_SIG_LEN])
{
	char *msg;
	size_t len;

	if ((*text = custody_canon(body)) == NULL)
		return -1;
	if ((msg = signed_bytes(domain, *text, &len)) == NULL) {
		free(*text);
		*text = NULL;
		return -1;
	}
	codes_sign(k, msg, len, sig);
	free(msg);
	return 0;
}

json_t *
custody_row_open(const uint8_t pk[CODES_PK_LEN], const char *domain,
    const char *text, const void *sig, size_t siglen, char *why,
    size_t whylen)
{
	json_error_t jerr;
	char *msg, *canon;
	json_t *o;
	size_t len;
	int ok;

	if (text == NULL || sig == NULL || siglen != CODES_SIG_LEN) {
		snprintf(why, whylen, "no signature");
		return NULL;
	}
	if ((msg = signed_bytes(domain, text, &len)) == NULL) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	ok = codes_verify(pk, msg, len, sig) == 0;
	free(msg);
	if (!ok) {
		snprintf(why, whylen, "bad signature");
		return NULL;
	}
	o = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(o)) {
		json_decref(o);
		snprintf(why, whylen, "signed but not a JSON object");
		return NULL;
	}
	/* Signed bytes that are not canonical were not written by us. */
	canon = custody_canon(o);
	ok = canon != NULL && strcmp(canon, text) == 0;
	free(canon);
	if (!ok) {
		json_decref(o);
		snprintf(why, whylen, "not canonical");
		return NULL;
	}
	return o;
}

static int
hex_set(json_t *o, const char *key, const uint8_t *bin)
{
	char hex[2 * RESV_HASH_LEN + 1];

	if (codes_hex(bin, RESV_HASH_LEN, hex, sizeof(hex)) == -1)
		return -1;
	return json_object_set_new(o, key, json_string(hex));
}

json_t *
custody_resv_json(const struct resv *r, const struct bank *b)
{
	json_t *o;

	o = json_pack("{s:I, s:s, s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:b, "
	    "s:b, s:i, s:I}",
	    "id", (json_int_t)r->id,
	    "kind", r->kind == RESV_DROPOFF ? "dropoff" : "pickup",
	    "state", resv_state_name(r->state),
	    "cell", b->cells[r->cell].number,
	    "app", r->app, "staff", r->staff,
	    "valid_until", (json_int_t)r->valid_until,
	    "consumed_at", (json_int_t)r->consumed_at,
	    "created_at", (json_int_t)r->created_at,
	    "cancelled", r->cancelled, "door_seen_open", r->door_seen_open,
	    "issued", r->issued, "last_seq", (json_int_t)r->last_seq);
	if (o == NULL)
		return NULL;
	if ((r->has_code && hex_set(o, "code_hash", r->code_hash) == -1) ||
	    (r->has_phone && hex_set(o, "phone_hash", r->phone_hash) == -1)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int
hex_get(json_t *o, const char *key, uint8_t *bin, int *has)
{
	json_t *v = json_object_get(o, key);

	*has = 0;
	if (v == NULL)
		return 0;
	if (!json_is_string(v) ||
	    codes_unhex(json_string_value(v), bin, RESV_HASH_LEN) == -1)
		return -1;
	*has = 1;
	return 0;
}

int
custody_resv_parse(json_t *o, const struct bank *b, struct resv *r,
    char *why, size_t whylen)
{
	const char *kind, *state, *app, *staff, *ch = NULL, *ph = NULL;
	json_int_t id, valid, consumed, created, last_seq;
	int cell, cancelled, seen, issued;
	json_error_t jerr;

	memset(r, 0, sizeof(*r));
	if (json_unpack_ex(o, &jerr, JSON_STRICT,
	    "{s:I, s:s, s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:b, s:b, s:i, "
	    "s:I, s?s, s?s}",
	    "id", &id, "kind", &kind, "state", &state, "cell", &cell,
	    "app", &app, "staff", &staff, "valid_until", &valid,
	    "consumed_at", &consumed, "created_at", &created,
	    "cancelled", &cancelled, "door_seen_open", &seen,
	    "issued", &issued, "last_seq", &last_seq, "code_hash", &ch,
	    "phone_hash", &ph) == -1) {
		snprintf(why, whylen, "%s", jerr.text);
		return -1;
	}
	if (id <= 0 || (strcmp(kind, "dropoff") != 0 &&
	    strcmp(kind, "pickup") != 0) ||
	    resv_state_parse(state, &r->state) == -1 ||
	    strlen(app) >= sizeof(r->app) || strlen(staff) >= sizeof(r->staff)) {
		snprintf(why, whylen, "a field is out of range");
		return -1;
	}
	if ((r->cell = bank_cell_index(b, cell)) == -1) {
		snprintf(why, whylen, "cell %d is not in this locker", cell);
		return -1;
	}
	if (hex_get(o, "code_hash", r->code_hash, &r->has_code) == -1 ||
	    hex_get(o, "phone_hash", r->phone_hash, &r->has_phone) == -1) {
		snprintf(why, whylen, "a hash is malformed");
		return -1;
	}
	r->id = id;
	r->kind = strcmp(kind, "dropoff") == 0 ? RESV_DROPOFF : RESV_PICKUP;
	snprintf(r->app, sizeof(r->app), "%s", app);
	snprintf(r->staff, sizeof(r->staff), "%s", staff);
	r->valid_until = valid;
	r->consumed_at = consumed;
	r->created_at = created;
	r->cancelled = cancelled;
	r->door_seen_open = seen;
	r->issued = issued;
	r->last_seq = last_seq;
	return 0;
}
