/*
 * Staff accounts (staff.h).
 */
#include "staff.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "custody.h"
#include "log.h"
#include "util.h"

/*
 * Argon2id cost ([kiosk] pin_hash_kib, pin_hash_passes): by default 8 MiB
 * and 3 passes, about 30 ms on a small ARM board. A 6-digit PIN cannot
 * resist an offline search whatever the cost; the hash keeps a stolen
 * database from handing the PINs over at a glance, and the keypad
 * throttle is what stops guessing at the locker.
 */

int
staff_valid_id(const char *id)
{
	size_t i, n = strlen(id);

	if (n == 0 || n >= STAFF_ID_MAX)
		return 0;
	for (i = 0; i < n; i++)
		if (!((id[i] >= 'a' && id[i] <= 'z') ||
		    (id[i] >= 'A' && id[i] <= 'Z') ||
		    (id[i] >= '0' && id[i] <= '9') || id[i] == '_' ||
		    id[i] == '.' || id[i] == '-'))
			return 0;
	return 1;
}

int
staff_valid_role(const char *role)
{
	return strcmp(role, "staff") == 0 || strcmp(role, "admin") == 0;
}

int
staff_hash_pin(const char *pin, int kib, int passes,
    char out[STAFF_HASH_MAX])
{
	if (!codes_valid_digits(pin, STAFF_PIN_MIN, STAFF_PIN_MAX) ||
	    kib < 8 || passes < 1)
		return -1;
	if (crypto_pwhash_str_alg(out, pin, strlen(pin),
	    (unsigned long long)passes, (size_t)kib * 1024,
	    crypto_pwhash_ALG_ARGON2ID13) != 0)
		return -1;
	return 0;
}

/* A decimal number of 1-9 digits ending at 'end'; -1 if none. */
static long
cost_number(const char **p, char end)
{
	long v = 0;
	int n = 0;

	while (**p >= '0' && **p <= '9' && n < 9) {
		v = v * 10 + (**p - '0');
		(*p)++;
		n++;
	}
	if (n == 0 || **p != end)
		return -1;
	(*p)++;
	return v;
}

int
staff_hash_cost(const char *hash, long *kib, long *passes)
{
	static const char pre[] = "$argon2id$v=19$m=";
	const char *p = hash;

	if (strncmp(p, pre, sizeof(pre) - 1) != 0)
		return -1;
	p += sizeof(pre) - 1;
	if ((*kib = cost_number(&p, ',')) < 0 || strncmp(p, "t=", 2) != 0)
		return -1;
	p += 2;
	if ((*passes = cost_number(&p, ',')) < 0 || strncmp(p, "p=1$", 4) != 0)
		return -1;
	return 0;
}

int
staff_cost_check(const char *hash, int kib, int passes, char *why,
    size_t len)
{
	long m, t;

	if (staff_hash_cost(hash, &m, &t) == -1) {
		snprintf(why, len, "must be an Argon2id hash "
		    "($argon2id$v=19$m=KIB,t=PASSES,p=1$...)");
		return -1;
	}
	if (m != kib || t != passes) {
		snprintf(why, len, "costs m=%ld,t=%ld; this locker verifies "
		    "PINs at exactly m=%d,t=%d ([kiosk] pin_hash_kib, "
		    "pin_hash_passes)", m, t, kib, passes);
		return -1;
	}
	return 0;
}

int
staff_check_pin(const struct staff *s, const char *pin)
{
	return crypto_pwhash_str_verify(s->pin_hash, pin, strlen(pin)) == 0;
}

int
staff_write(struct store *st, const struct codes_keys *k,
    const struct staff *s)
{
	uint8_t sig[CODES_SIG_LEN];
	char *text = NULL;
	json_t *o;
	int rc = -1;

	o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:b, s:I}", "id", s->id,
	    "name", s->name, "role", s->role, "pin", s->pin_hash, "created",
	    (json_int_t)s->created, "revoked", s->revoked, "last_seq",
	    (json_int_t)s->last_seq);
	if (o == NULL || custody_row_sign(k, "staff", o, &text, sig) == -1)
		log_error("staff %s: cannot encode the account", s->id);
	else
		rc = store_staff_put(st, s->id, text, sig, sizeof(sig));
	free(text);
	json_decref(o);
	return rc;
}

int
staff_put(struct store *st, const struct codes_keys *k, struct staff *s)
{
	if (store_begin(st) == -1)
		return -1;
	if ((s->last_seq = store_staff_last_event(st, s->id)) == -1 ||
	    staff_write(st, k, s) == -1) {
		store_rollback(st);
		return -1;
	}
	return store_commit(st);
}

struct get_arg {
	const uint8_t *pk;
	struct staff *out;
	int bad;
};

static int
got_row(const char *key, const char *body, const void *sig, size_t siglen,
    void *arg)
{
	struct get_arg *g = arg;
	const char *id, *name, *role, *pin;
	json_int_t created = 0, last_seq = 0;
	int revoked = 0;
	char why[64];
	json_t *o;

	o = custody_row_open(g->pk, "staff", body, sig, siglen, why,
	    sizeof(why));
	if (o == NULL || json_unpack(o, "{s:s, s:s, s:s, s:s, s:I, s?b, s?I}",
	    "id", &id, "name", &name, "role", &role, "pin", &pin, "created",
	    &created, "revoked", &revoked, "last_seq", &last_seq) == -1 || strcmp(id, key) != 0 ||
	    util_strlcpy(g->out->id, id, sizeof(g->out->id)) == -1 ||
	    util_strlcpy(g->out->name, name, sizeof(g->out->name)) == -1 ||
	    util_strlcpy(g->out->role, role, sizeof(g->out->role)) == -1 ||
	    util_strlcpy(g->out->pin_hash, pin, sizeof(g->out->pin_hash)) ==
	    -1) {
		log_warn("staff %s: the stored account does not verify (%s); "
		    "it was not written by this locker and is ignored", key,
		    o == NULL ? why : "fields");
		g->bad = 1;
	}
	g->out->created = created;
	g->out->revoked = revoked;
	g->out->last_seq = last_seq;
	json_decref(o);
	return 0;
}

int
staff_get(struct store *st, const uint8_t pk[CODES_PK_LEN], const char *id,
    struct staff *out)
{
	struct get_arg g = { pk, out, 0 };
	int64_t last;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = store_staff_get(st, id, got_row, &g);
	if (rc == 0 && !g.bad) {
		last = store_staff_last_event(st, id);
		if (last == -1)
			return -1;
		if (last != out->last_seq) {
			log_warn("staff %s: the stored account is from before "
			    "its newest ledger event (row %lld, ledger %lld); "
			    "it was put back by hand and is ignored", id,
			    (long long)out->last_seq, (long long)last);
			g.bad = 1;
		}
	}
	if (rc == 0 && g.bad) {
		memset(out, 0, sizeof(*out));
		return 2;
	}
	return rc;
}

struct scan_arg {
	struct store *st;
	const uint8_t *pk;
	struct {
		char id[STAFF_ID_MAX];
		char why[96];
	} *bad;
	size_t n, cap;
};

static int
scan_row(const char *key, const char *body, const void *sig, size_t siglen,
    void *arg)
{
	struct scan_arg *sa = arg;
	struct staff out;
	struct get_arg g = { sa->pk, &out, 0 };
	char why[96] = "";
	int64_t last;
	void *p;

	memset(&out, 0, sizeof(out));
	got_row(key, body, sig, siglen, &g);
	if (g.bad)
		snprintf(why, sizeof(why), "its row does not verify: not "
		    "written by this locker");
	else if ((last = store_staff_last_event(sa->st, key)) == -1)
		return -1;
	else if (last != out.last_seq)
		snprintf(why, sizeof(why), "its row is from before its newest "
		    "ledger event (row at seq %lld, ledger seq %lld)",
		    (long long)out.last_seq, (long long)last);
	sodium_memzero(&out, sizeof(out));
	if (why[0] == '\0')
		return 0;
	if (sa->n == sa->cap) {
		sa->cap = sa->cap ? sa->cap * 2 : 8;
		if ((p = realloc(sa->bad, sa->cap * sizeof(*sa->bad))) == NULL)
			return -1;
		sa->bad = p;
	}
	util_strlcpy(sa->bad[sa->n].id, key, sizeof(sa->bad[0].id));
	util_strlcpy(sa->bad[sa->n++].why, why, sizeof(sa->bad[0].why));
	return 0;
}

int
staff_scan(struct store *st, const uint8_t pk[CODES_PK_LEN],
    void (*rejected)(const char *id, const char *why, void *arg), void *arg)
{
	struct scan_arg sa = { st, pk, NULL, 0, 0 };
	size_t i;
	int rc;

	rc = store_staff_all(st, scan_row, &sa);
	for (i = 0; rc == 0 && i < sa.n; i++) {
		log_error("staff %s: rejected: %s; it cannot log in",
		    sa.bad[i].id, sa.bad[i].why);
		rejected(sa.bad[i].id, sa.bad[i].why, arg);
	}
	free(sa.bad);
	return rc;
}
