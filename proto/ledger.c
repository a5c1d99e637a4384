/*
 * The custody ledger's seal and its verifier: canonical bytes, the BLAKE2b
 * hash chain and the Ed25519 signatures of events (see ledger.h). Depends
 * only on jansson and libsodium so that the platform can verify with the
 * same code. The caller must have called sodium_init() before any of this.
 */
#include "ledger.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEDGER_CANON_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)
#define LEDGER_HEX_LEN (LEDGER_HASH_LEN * 2 + 1)
#define LEDGER_SIG_LEN crypto_sign_BYTES
#define LEDGER_SIG_B64_LEN sodium_base64_ENCODED_LEN(LEDGER_SIG_LEN, \
	sodium_base64_VARIANT_URLSAFE_NO_PADDING)

static const uint8_t ledger_zero[LEDGER_HASH_LEN];

/* Canonical bytes of an object that holds no "sig"; free() the result. */
static char *
canon_dump(const json_t *ev, size_t *len)
{
	char *s = json_dumps(ev, LEDGER_CANON_FLAGS);

	if (s != NULL)
		*len = strlen(s);
	return s;
}

/*
 * Fields that are not part of the signed event: the signature itself and
 * what the transport adds when it publishes one (LEDGER_TRANSPORT).
 */
static const char *const unsigned_fields[] = { "sig", "replayed", "code" };
#define NUNSIGNED (sizeof(unsigned_fields) / sizeof(unsigned_fields[0]))

static void
drop_unsigned(json_t *ev)
{
	size_t i;

	for (i = 0; i < NUNSIGNED; i++)
		json_object_del(ev, unsigned_fields[i]);
}

/* Canonical bytes of any event: a shallow copy keeps ev as it was. */
static char *
canon_of(json_t *ev, size_t *len)
{
	json_t *copy;
	size_t i;
	char *s;

	for (i = 0; i < NUNSIGNED; i++)
		if (json_object_get(ev, unsigned_fields[i]) != NULL)
			break;
	if (i == NUNSIGNED)
		return canon_dump(ev, len);
	if ((copy = json_copy(ev)) == NULL)
		return NULL;
	drop_unsigned(copy);
	s = canon_dump(copy, len);
	json_decref(copy);
	return s;
}

int
ledger_seal(json_t *ev, const uint8_t sk[LEDGER_SK_LEN],
    const uint8_t prev[LEDGER_HASH_LEN], uint8_t digest[LEDGER_HASH_LEN])
{
	char hex[LEDGER_HEX_LEN], b64[LEDGER_SIG_B64_LEN];
	uint8_t sig[LEDGER_SIG_LEN];
	size_t len;
	char *canon;

	/* An event without an integer "seq" could never verify. */
	if (!json_is_object(ev) || !json_is_integer(json_object_get(ev, "seq")))
		return -1;
	sodium_bin2hex(hex, sizeof(hex), prev != NULL ? prev : ledger_zero,
	    LEDGER_HASH_LEN);
	drop_unsigned(ev);
	if (json_object_set_new(ev, "prev", json_string(hex)) == -1)
		return -1;
	if ((canon = canon_dump(ev, &len)) == NULL)
		return -1;
	crypto_sign_detached(sig, NULL, (const uint8_t *)canon, len, sk);
	crypto_generichash(digest, LEDGER_HASH_LEN, (const uint8_t *)canon, len,
	    NULL, 0);
	free(canon);
	sodium_bin2base64(b64, sizeof(b64), sig, sizeof(sig),
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return json_object_set_new(ev, "sig", json_string(b64)) == -1 ? -1 : 0;
}

int
ledger_digest(json_t *ev, uint8_t digest[LEDGER_HASH_LEN])
{
	size_t len;
	char *canon;

	if (!json_is_object(ev) || (canon = canon_of(ev, &len)) == NULL)
		return -1;
	crypto_generichash(digest, LEDGER_HASH_LEN, (const uint8_t *)canon, len,
	    NULL, 0);
	free(canon);
	return 0;
}

int
ledger_signed_by(json_t *ev, const uint8_t pk[LEDGER_PK_LEN])
{
	uint8_t sig[LEDGER_SIG_LEN];
	const char *s;
	size_t siglen, len;
	char *canon;
	int rc;

	s = json_string_value(json_object_get(ev, "sig"));
	if (s == NULL || sodium_base642bin(sig, sizeof(sig), s, strlen(s),
	    NULL, &siglen, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) !=
	    0 || siglen != sizeof(sig) || (canon = canon_of(ev, &len)) == NULL)
		return -1;
	rc = crypto_sign_verify_detached(sig, (const uint8_t *)canon, len,
	    pk) == 0 ? 0 : -1;
	free(canon);
	return rc;
}

void
ledger_verify_init(struct ledger_verify *v, const uint8_t pk[LEDGER_PK_LEN],
    int64_t first_seq, const uint8_t prev[LEDGER_HASH_LEN])
{
	memset(v, 0, sizeof(*v));
	v->pk = pk;
	memcpy(v->prev, prev != NULL ? prev : ledger_zero, LEDGER_HASH_LEN);
	v->next_seq = first_seq;
}

/* Fills v->error and returns -1, so that checks can end in one line. */
static int __attribute__((format(printf, 3, 4)))
verify_fail(struct ledger_verify *v, long long seq, const char *fmt, ...)
{
	va_list ap;
	int n;

	n = snprintf(v->error, sizeof(v->error), "seq %lld: ", seq);
	if (n > 0 && (size_t)n < sizeof(v->error)) {
		va_start(ap, fmt);
		vsnprintf(v->error + n, sizeof(v->error) - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* A restored event may skip seqs: it names the event it follows. */
static int
restored_skip(json_t *ev, long long seq, int64_t next)
{
	json_t *from = json_object_get(ev, "from_seq");

	return seq > (long long)next && json_is_integer(from) &&
	    json_integer_value(from) == next - 1 &&
	    json_is_string(json_object_get(ev, "type")) &&
	    strcmp(json_string_value(json_object_get(ev, "type")),
	    "restored") == 0;
}

int
ledger_verify_next(struct ledger_verify *v, const char *text, size_t len)
{
	char hex[LEDGER_HEX_LEN];
	uint8_t sig[LEDGER_SIG_LEN], digest[LEDGER_HASH_LEN];
	json_error_t jerr;
	json_t *ev, *jseq, *jprev, *jsig;
	long long seq = (long long)v->next_seq;
	const char *s;
	size_t siglen, clen;
	char *canon;
	int rc = -1;

	if (text == NULL || (ev = json_loadb(text, len, JSON_REJECT_DUPLICATES,
	    &jerr)) == NULL)
		return verify_fail(v, seq, "not JSON (%s)",
		    text == NULL ? "no text" : jerr.text);
	if (!json_is_object(ev)) {
		verify_fail(v, seq, "not a JSON object");
		goto out;
	}
	jseq = json_object_get(ev, "seq");
	if (jseq == NULL) {
		verify_fail(v, seq, "missing seq");
		goto out;
	}
	if (!json_is_integer(jseq)) {
		verify_fail(v, seq, "seq is not an integer");
		goto out;
	}
	seq = (long long)json_integer_value(jseq);
	if (seq != (long long)v->next_seq && !restored_skip(ev, seq,
	    v->next_seq)) {
		verify_fail(v, seq, "expected seq %lld",
		    (long long)v->next_seq);
		goto out;
	}
	jprev = json_object_get(ev, "prev");
	if (jprev == NULL) {
		verify_fail(v, seq, "missing prev");
		goto out;
	}
	sodium_bin2hex(hex, sizeof(hex), v->prev, LEDGER_HASH_LEN);
	if (!json_is_string(jprev) || strcmp(json_string_value(jprev), hex)
	    != 0) {
		verify_fail(v, seq, "prev does not match the previous event");
		goto out;
	}
	jsig = json_object_get(ev, "sig");
	if (jsig == NULL) {
		verify_fail(v, seq, "missing sig");
		goto out;
	}
	s = json_string_value(jsig);
	if (s == NULL || sodium_base642bin(sig, sizeof(sig), s, strlen(s),
	    NULL, &siglen, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING)
	    != 0 || siglen != sizeof(sig)) {
		verify_fail(v, seq, "malformed sig");
		goto out;
	}
	drop_unsigned(ev);
	if ((canon = canon_dump(ev, &clen)) == NULL) {
		verify_fail(v, seq, "out of memory");
		goto out;
	}
	if (crypto_sign_verify_detached(sig, (const uint8_t *)canon, clen,
	    v->pk) != 0) {
		free(canon);
		verify_fail(v, seq, "bad signature");
		goto out;
	}
	crypto_generichash(digest, sizeof(digest), (const uint8_t *)canon, clen,
	    NULL, 0);
	free(canon);
	memcpy(v->prev, digest, sizeof(digest));
	v->next_seq = (int64_t)seq + 1;
	v->count++;
	v->error[0] = '\0';
	rc = 0;
out:
	json_decref(ev);
	return rc;
}

int
ledger_code_key(const uint8_t my_sk[LEDGER_SK_LEN],
    const uint8_t device_pk[LEDGER_PK_LEN],
    const uint8_t platform_pk[LEDGER_PK_LEN], int i_am_device,
    uint8_t key[LEDGER_HASH_LEN])
{
	static const char domain[] = "lockerd/code-key/1\n";
	uint8_t xsk[crypto_scalarmult_BYTES], xpk[crypto_scalarmult_BYTES];
	uint8_t shared[crypto_scalarmult_BYTES];
	crypto_generichash_state st;
	int rc = -1;

	if (crypto_sign_ed25519_sk_to_curve25519(xsk, my_sk) != 0 ||
	    crypto_sign_ed25519_pk_to_curve25519(xpk, i_am_device ?
	    platform_pk : device_pk) != 0 ||
	    crypto_scalarmult(shared, xsk, xpk) != 0)
		goto out;
	crypto_generichash_init(&st, NULL, 0, LEDGER_HASH_LEN);
	crypto_generichash_update(&st, (const uint8_t *)domain,
	    sizeof(domain) - 1);
	crypto_generichash_update(&st, shared, sizeof(shared));
	crypto_generichash_update(&st, device_pk, LEDGER_PK_LEN);
	crypto_generichash_update(&st, platform_pk, LEDGER_PK_LEN);
	crypto_generichash_final(&st, key, LEDGER_HASH_LEN);
	rc = 0;
out:
	sodium_memzero(xsk, sizeof(xsk));
	sodium_memzero(shared, sizeof(shared));
	return rc;
}

int
ledger_code_mac(const uint8_t key[LEDGER_HASH_LEN], const char *locker,
    int64_t seq, const char *code, char hex[2 * LEDGER_HASH_LEN + 1])
{
	uint8_t mac[LEDGER_HASH_LEN];
	char *msg;
	int n;

	if ((n = snprintf(NULL, 0, "lockerd/code/1\n%s\n%lld\n%s", locker,
	    (long long)seq, code)) < 0 || (msg = malloc((size_t)n + 1)) ==
	    NULL)
		return -1;
	snprintf(msg, (size_t)n + 1, "lockerd/code/1\n%s\n%lld\n%s", locker,
	    (long long)seq, code);
	crypto_generichash(mac, sizeof(mac), (const uint8_t *)msg, (size_t)n,
	    key, LEDGER_HASH_LEN);
	sodium_memzero(msg, (size_t)n);
	free(msg);
	sodium_bin2hex(hex, 2 * LEDGER_HASH_LEN + 1, mac, sizeof(mac));
	return 0;
}
