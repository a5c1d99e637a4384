/*
 * Platform commands (cmd.h): one table of fields per op, checked strictly.
 */
#include "cmd.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* F_ONE_OF: chars lists the allowed words, separated by spaces. */
enum ftype { F_STR, F_INT, F_BOOL, F_ONE_OF, F_PWHASH };

struct field {
	const char *name;
	enum ftype type;
	int required;
	int64_t lo, hi;         /* ints: range; strings: length */
	const char *chars;      /* strings: allowed characters, NULL any */
};

#define DIGITS "0123456789"
#define ALNUM "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" \
	DIGITS
#define IDCHARS ALNUM "_.:-"
#define STAFFCHARS ALNUM "_.-"
#define LOCKERCHARS ALNUM "_-"

/* Common to every command. */
static const struct field common[] = {
	{ "op", F_STR, 1, 1, 32, NULL },
	{ "request_id", F_STR, 1, 1, 64, IDCHARS },
	{ "exp", F_INT, 1, 0, INT64_MAX / 2, NULL },
};

/* The signature envelope of signed ops; the target locker is signed too,
 * so that a command for one locker cannot be replayed on another. */
static const struct field envelope[] = {
	{ "ts", F_INT, 1, 0, INT64_MAX / 2, NULL },
	{ "nonce", F_STR, 1, 16, 64, IDCHARS },
	{ "sig", F_STR, 1, 86, 86, ALNUM "_-" },
	{ "locker", F_STR, 1, 1, 64, LOCKERCHARS },
};
#define NENVELOPE (sizeof(envelope) / sizeof(envelope[0]))

static const struct field f_reserve[] = {
	{ "app", F_STR, 1, 1, 47, NULL },
	{ "size", F_STR, 1, 1, 1, "SML" },
	{ "valid_s", F_INT, 0, 60, 7776000, NULL },
	{ "phone", F_STR, 0, 4, 4, DIGITS },
};
static const struct field f_resv[] = {
	{ "resv", F_INT, 1, 1, INT64_MAX / 2, NULL },
};
static const struct field f_cell[] = {
	{ "cell", F_INT, 1, 1, 999, NULL },
};
static const struct field f_load[] = {
	{ "app", F_STR, 1, 1, 47, NULL },
	{ "size", F_STR, 1, 1, 1, "SML" },
	{ "staff", F_STR, 1, 1, 31, STAFFCHARS },
};
static const struct field f_staff_add[] = {
	{ "staff", F_STR, 1, 1, 31, STAFFCHARS },
	{ "name", F_STR, 1, 1, 63, NULL },
	{ "role", F_ONE_OF, 1, 1, 16, "staff admin" },
	{ "pin_hash", F_PWHASH, 1, 1, 127, NULL },
};
static const struct field f_staff[] = {
	{ "staff", F_STR, 1, 1, 31, STAFFCHARS },
};
/* The platform tells a held locker where to resume (mark.c). */
static const struct field f_restore_ack[] = {
	{ "db_seq", F_INT, 1, 0, INT64_MAX / 2, NULL },
	{ "db_head", F_STR, 1, 64, 64, "0123456789abcdef" },
	{ "seq", F_INT, 1, 0, INT64_MAX / 4, NULL },
};
static const struct field f_service[] = {
	{ "cell", F_INT, 1, 1, 999, NULL },
	{ "in", F_BOOL, 1, 0, 0, NULL },
};

static const struct op {
	const char *name;
	const struct field *fields;
	size_t nfields;
	int signed_op;
} ops[] = {
#define OP(n, f, s) { n, f, sizeof(f) / sizeof(f[0]), s }
	{ "ping", NULL, 0, 0 },
	{ "state", NULL, 0, 0 },
	{ "rebirth", NULL, 0, 0 },
	OP("reserve", f_reserve, 1),
	OP("cancel", f_resv, 1),
	OP("reissue", f_resv, 1),
	OP("resv", f_resv, 0),
	OP("service", f_service, 1),
	OP("open", f_cell, 1),
	OP("load", f_load, 1),
	OP("staff_add", f_staff_add, 1),
	OP("staff_revoke", f_staff, 1),
	OP("restore_ack", f_restore_ack, 1),
#undef OP
};

const char *
cmd_ops(void)
{
	return "ping, state, rebirth, reserve, cancel, reissue, resv, "
	    "service, open, load, staff_add, staff_revoke, restore_ack";
}

static const struct field *
find(const struct field *f, size_t n, const char *key)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(f[i].name, key) == 0)
			return &f[i];
	return NULL;
}

/* A decimal from 1 to max, no leading zero, ending at *end. */
static int
param(const char **p, char end, unsigned max)
{
	unsigned v = 0;
	int n = 0;

	if (**p < '1' || **p > '9')
		return -1;
	while (**p >= '0' && **p <= '9' && n < 6) {
		v = v * 10 + (unsigned)(**p - '0');
		(*p)++;
		n++;
	}
	if (**p != end || v > max)
		return -1;
	(*p)++;
	return 0;
}

/* A run of base64 characters (no padding) ending at end ('\0' or '$'). */
static int
b64run(const char **p, char end)
{
	const char *s = *p;

	while (**p != '\0' && strchr(ALNUM "+/", **p) != NULL)
		(*p)++;
	if (*p == s || **p != end)
		return -1;
	if (end != '\0')
		(*p)++;
	return 0;
}

/*
 * A PIN hash from the platform: libsodium's Argon2id string with a cost
 * this board can afford to check at every log-in (at most 64 MiB and 10
 * passes), "$argon2id$v=19$m=M,t=T,p=1$SALT$HASH".
 */
static int
check_pwhash(const char *s, char *why, size_t whylen)
{
	static const char pre[] = "$argon2id$v=19$m=";
	const char *p = s;

	if (strncmp(p, pre, sizeof(pre) - 1) != 0) {
		snprintf(why, whylen, "must be an Argon2id hash "
		    "($argon2id$v=19$m=...)");
		return -1;
	}
	p += sizeof(pre) - 1;
	if (param(&p, ',', 65536) == -1 || strncmp(p, "t=", 2) != 0 ||
	    (p += 2, param(&p, ',', 10)) == -1 ||
	    strncmp(p, "p=1$", 4) != 0) {
		snprintf(why, whylen, "must have m=1..65536 (KiB), t=1..10 "
		    "and p=1");
		return -1;
	}
	p += 4;
	if (b64run(&p, '$') == -1 || b64run(&p, '\0') == -1) {
		snprintf(why, whylen, "must end in $SALT$HASH (base64)");
		return -1;
	}
	return 0;
}

static int
one_of(const char *words, const char *s, size_t len)
{
	const char *w = words, *e;

	while (*w != '\0') {
		e = strchr(w, ' ');
		if (e == NULL)
			e = w + strlen(w);
		if ((size_t)(e - w) == len && memcmp(w, s, len) == 0)
			return 1;
		w = *e == ' ' ? e + 1 : e;
	}
	return 0;
}

static int
check(const struct field *f, json_t *v, char *why, size_t whylen)
{
	const char *s;
	size_t len, i;

	switch (f->type) {
	case F_INT:
		if (!json_is_integer(v)) {
			snprintf(why, whylen, "must be an integer");
			return -1;
		}
		if (json_integer_value(v) < f->lo ||
		    json_integer_value(v) > f->hi) {
			snprintf(why, whylen, "must be from %lld to %lld",
			    (long long)f->lo, (long long)f->hi);
			return -1;
		}
		return 0;
	case F_BOOL:
		if (!json_is_boolean(v)) {
			snprintf(why, whylen, "must be true or false");
			return -1;
		}
		return 0;
	case F_ONE_OF:
		if (!json_is_string(v) || !one_of(f->chars,
		    json_string_value(v), json_string_length(v))) {
			snprintf(why, whylen, "must be one of: %s", f->chars);
			return -1;
		}
		return 0;
	case F_STR:
	case F_PWHASH:
		if (!json_is_string(v)) {
			snprintf(why, whylen, "must be a string");
			return -1;
		}
		s = json_string_value(v);
		len = json_string_length(v);
		if ((int64_t)len < f->lo || (int64_t)len > f->hi ||
		    strlen(s) != len) {
			snprintf(why, whylen, "must be %lld to %lld characters",
			    (long long)f->lo, (long long)f->hi);
			return -1;
		}
		for (i = 0; f->chars != NULL && i < len; i++)
			if (strchr(f->chars, s[i]) == NULL) {
				snprintf(why, whylen, "has a character out of "
				    "[%s]", f->chars);
				return -1;
			}
		if (f->type == F_PWHASH)
			return check_pwhash(s, why, whylen);
		return 0;
	}
	return -1;
}

/*
 * The scanner behind cmd_scan_request_id(): JSON text walked without
 * building anything, depth counted, strings skipped with their escapes.
 */
struct scan {
	const char *p, *end;
};

static void
scan_ws(struct scan *sc)
{
	while (sc->p < sc->end && (*sc->p == ' ' || *sc->p == '\t' ||
	    *sc->p == '\n' || *sc->p == '\r'))
		sc->p++;
}

/* A string at p (its opening quote): its raw bytes and whether it had an
 * escape. -1 if it does not end. */
static int
scan_string(struct scan *sc, const char **s, size_t *len, int *escaped)
{
	const char *start;

	if (sc->p >= sc->end || *sc->p != '"')
		return -1;
	start = ++sc->p;
	*escaped = 0;
	while (sc->p < sc->end && *sc->p != '"') {
		if (*sc->p == '\\') {
			*escaped = 1;
			if (sc->end - sc->p < 2)
				return -1;
			sc->p++;
		}
		sc->p++;
	}
	if (sc->p >= sc->end)
		return -1;
	*s = start;
	*len = (size_t)(sc->p - start);
	sc->p++;
	return 0;
}

/* Skips one value, however deep, up to the ',' or '}' after it. */
static int
scan_value(struct scan *sc)
{
	const char *s;
	size_t len;
	long depth = 0;
	int esc;

	for (;;) {
		scan_ws(sc);
		if (sc->p >= sc->end)
			return -1;
		switch (*sc->p) {
		case '"':
			if (scan_string(sc, &s, &len, &esc) == -1)
				return -1;
			break;
		case '{':
		case '[':
			depth++;
			sc->p++;
			break;
		case '}':
		case ']':
			if (depth == 0)
				return 0;
			depth--;
			sc->p++;
			break;
		case ',':
			if (depth == 0)
				return 0;
			sc->p++;
			break;
		default:
			sc->p++;
			break;
		}
	}
}

int
cmd_scan_request_id(const char *payload, size_t len, char *out)
{
	struct scan sc = { payload, payload + (len > CMD_SCAN_MAX ?
	    CMD_SCAN_MAX : len) };
	const char *key, *val;
	size_t klen, vlen, i;
	int esc;

	scan_ws(&sc);
	if (sc.p >= sc.end || *sc.p != '{')
		return -1;
	sc.p++;
	for (;;) {
		scan_ws(&sc);
		if (scan_string(&sc, &key, &klen, &esc) == -1)
			return -1;
		scan_ws(&sc);
		if (sc.p >= sc.end || *sc.p != ':')
			return -1;
		sc.p++;
		scan_ws(&sc);
		if (!esc && klen == 10 && memcmp(key, "request_id", 10) == 0 &&
		    sc.p < sc.end && *sc.p == '"') {
			if (scan_string(&sc, &val, &vlen, &esc) == -1 || esc ||
			    vlen < 1 || vlen > CMD_ID_MAX)
				return -1;
			for (i = 0; i < vlen; i++)
				if (strchr(IDCHARS, val[i]) == NULL ||
				    val[i] == '\0')
					return -1;
			memcpy(out, val, vlen);
			out[vlen] = '\0';
			return 0;
		}
		if (scan_value(&sc) == -1 || *sc.p != ',')
			return -1;
		sc.p++;
	}
}

/* A number too large for an integer, anywhere under v (the payload read
 * again with integers as reals). */
static int
too_big(json_t *v, int depth)
{
	const char *k;
	json_t *x;
	size_t i;

	if (depth > 64)
		return 0;
	if (json_is_real(v))
		return json_real_value(v) >= 9.2e18 ||
		    json_real_value(v) <= -9.2e18;
	if (json_is_object(v)) {
		json_object_foreach(v, k, x)
			if (too_big(x, depth + 1))
				return 1;
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, x)
			if (too_big(x, depth + 1))
				return 1;
	}
	return 0;
}

/* jansson refuses integers beyond 64 bits as "not JSON": name the field. */
static int
big_integer(const char *payload, size_t len, char *field, size_t fieldlen,
    char *why, size_t whylen)
{
	json_t *o = json_loadb(payload, len, JSON_DECODE_INT_AS_REAL, NULL),
	    *v;
	const char *key;
	int found = 0;

	if (json_is_object(o))
		json_object_foreach(o, key, v)
			if (!found && too_big(v, 0)) {
				snprintf(field, fieldlen, "%.40s", key);
				snprintf(why, whylen, "has a number too large "
				    "for an integer (at most %lld)",
				    (long long)INT64_MAX);
				found = 1;
			}
	json_decref(o);
	return found ? 0 : -1;
}

int
cmd_parse(const char *payload, size_t len, struct cmd *out, char *field,
    size_t fieldlen, char *why, size_t whylen)
{
	const struct op *op = NULL;
	const struct field *f;
	json_error_t jerr;
	const char *key;
	json_t *v, *rid;
	size_t i;

	memset(out, 0, sizeof(*out));
	snprintf(field, fieldlen, "%s", "");
	if (len > CMD_PAYLOAD_MAX) {
		/* Refused whatever it says; scanned only to correlate the
		 * reply (the broker bounds what reaches us). */
		if (cmd_scan_request_id(payload, len, out->rid) == 0)
			out->request_id = out->rid;
		snprintf(why, whylen, "the command is longer than %d bytes",
		    CMD_PAYLOAD_MAX);
		return -1;
	}
	out->obj = json_loadb(payload, len, JSON_REJECT_DUPLICATES, &jerr);
	if (out->obj == NULL) {
		if (cmd_scan_request_id(payload, len, out->rid) == 0)
			out->request_id = out->rid;
		if (strstr(jerr.text, "too big") == NULL ||
		    big_integer(payload, len, field, fieldlen, why, whylen) ==
		    -1)
			snprintf(why, whylen, "not JSON (%.80s)", jerr.text);
		return -1;
	}
	if (!json_is_object(out->obj)) {
		snprintf(why, whylen, "a command must be a JSON object");
		return -1;
	}
	/* The request id first, so that even a refusal can be matched. */
	rid = json_object_get(out->obj, "request_id");
	if (rid != NULL && check(&common[1], rid, why, whylen) == 0)
		out->request_id = json_string_value(rid);
	for (i = 0; i < sizeof(common) / sizeof(common[0]); i++) {
		v = json_object_get(out->obj, common[i].name);
		snprintf(field, fieldlen, "%s", common[i].name);
		if (v == NULL) {
			snprintf(why, whylen, "is missing");
			return -1;
		}
		if (check(&common[i], v, why, whylen) == -1)
			return -1;
	}
	out->op = json_string_value(json_object_get(out->obj, "op"));
	out->exp = json_integer_value(json_object_get(out->obj, "exp"));
	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(ops[i].name, out->op) == 0)
			op = &ops[i];
	if (op == NULL) {
		snprintf(field, fieldlen, "op");
		snprintf(why, whylen, "is not one of: %s", cmd_ops());
		return -1;
	}
	out->signed_op = op->signed_op;
	json_object_foreach(out->obj, key, v) {
		snprintf(field, fieldlen, "%.40s", key);
		if (find(common, 3, key) != NULL)
			continue;
		f = find(op->fields, op->nfields, key);
		if (f == NULL && (f = find(envelope, NENVELOPE, key)) == NULL) {
			snprintf(why, whylen, "is not a field of '%s'",
			    out->op);
			return -1;
		}
		if (check(f, v, why, whylen) == -1)
			return -1;
	}
	for (i = 0; i < op->nfields; i++)
		if (op->fields[i].required &&
		    json_object_get(out->obj, op->fields[i].name) == NULL) {
			snprintf(field, fieldlen, "%s", op->fields[i].name);
			snprintf(why, whylen, "is missing");
			return -1;
		}
	for (i = 0; op->signed_op && i < NENVELOPE; i++)
		if (json_object_get(out->obj, envelope[i].name) == NULL) {
			snprintf(field, fieldlen, "%s", envelope[i].name);
			snprintf(why, whylen, "is missing: '%s' must be signed%s",
			    out->op, strcmp(envelope[i].name, "locker") == 0 ?
			    " for the locker it is meant for" : "");
			return -1;
		}
	out->locker = json_string_value(json_object_get(out->obj, "locker"));
	out->nonce = json_string_value(json_object_get(out->obj, "nonce"));
	out->ts = json_integer_value(json_object_get(out->obj, "ts"));
	snprintf(field, fieldlen, "%s", "");
	return 0;
}

void
cmd_free(struct cmd *c)
{
	json_decref(c->obj);
	memset(c, 0, sizeof(*c));
}

int
cmd_verify(const struct cmd *c, const uint8_t pk[32])
{
	const char *s = json_string_value(json_object_get(c->obj, "sig"));
	uint8_t sig[crypto_sign_BYTES];
	json_t *copy;
	size_t siglen;
	char *canon;
	int rc;

	if (s == NULL || sodium_base642bin(sig, sizeof(sig), s, strlen(s),
	    NULL, &siglen, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) !=
	    0 || siglen != sizeof(sig))
		return -1;
	if ((copy = json_copy(c->obj)) == NULL)
		return -1;
	json_object_del(copy, "sig");
	canon = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS |
	    JSON_ENSURE_ASCII);
	json_decref(copy);
	if (canon == NULL)
		return -1;
	rc = crypto_sign_verify_detached(sig, (const uint8_t *)canon,
	    strlen(canon), pk) == 0 ? 0 : -1;
	free(canon);
	return rc;
}

int
cmd_digest(const struct cmd *c, uint8_t out[CMD_DIGEST_LEN])
{
	static const char *const drop[] = { "request_id", "exp", "ts",
		"nonce", "sig" };
	json_t *copy;
	char *canon;
	size_t i;

	if ((copy = json_copy(c->obj)) == NULL)
		return -1;
	for (i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
		json_object_del(copy, drop[i]);
	canon = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS |
	    JSON_ENSURE_ASCII);
	json_decref(copy);
	if (canon == NULL)
		return -1;
	crypto_generichash(out, CMD_DIGEST_LEN, (const uint8_t *)canon,
	    strlen(canon), NULL, 0);
	free(canon);
	return 0;
}
