/*
 * Codes and signatures: generation with fixed and real randomness, keyed
 * hashes and their domains, the hex and base64url helpers, signatures,
 * signed credentials against every kind of tampering, and the key file
 * (created 0600, reloaded, refused when others can read it or it is bad).
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "codes.h"

#define B64URL "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" \
	"0123456789-_"

/* The injected random source: plays back digits, records what it got. */
static struct {
	const char *digits;
	int next;
	int calls;
	uint32_t bad_upper;              /* any upper bound other than 10 */
} script;

static uint32_t
script_uniform(uint32_t upper)
{
	uint32_t d;

	if (upper != 10)
		script.bad_upper = upper;
	script.calls++;
	d = (uint32_t)(script.digits[script.next] - '0');
	if (script.digits[script.next + 1] != '\0')
		script.next++;
	return d;
}

static void
script_start(const char *digits)
{
	memset(&script, 0, sizeof(script));
	script.digits = digits;
	codes_set_uniform(script_uniform);
}

static void
test_init(void **state)
{
	(void)state;
	assert_int_equal(codes_init(), 0);
	/* Again: sodium_init returns 1 when already done, still success. */
	assert_int_equal(codes_init(), 0);
}

static void
test_generate_injected(void **state)
{
	static const char digits[] = "007341985260";
	char out[32];
	int n;

	(void)state;
	for (n = CODES_DIGITS_MIN; n <= CODES_DIGITS_MAX; n++) {
		script_start(digits);
		memset(out, 'X', sizeof(out));
		codes_generate(out, n);
		assert_int_equal(strlen(out), n);
		assert_memory_equal(out, digits, (size_t)n);
		assert_true(out[0] == '0' && out[1] == '0');
		assert_int_equal(out[n + 1], 'X');
		assert_int_equal(script.calls, n);
		assert_int_equal(script.bad_upper, 0);
	}

	/* All zeros and all nines stay whole. */
	script_start("0");
	codes_generate(out, 6);
	assert_string_equal(out, "000000");
	script_start("9");
	codes_generate(out, 12);
	assert_string_equal(out, "999999999999");

	/* NULL puts libsodium back: the script is no longer asked. */
	script_start("1");
	codes_set_uniform(NULL);
	codes_generate(out, 12);
	assert_int_equal(script.calls, 0);
	assert_true(codes_valid_digits(out, 12, 12));
}

static void
test_generate_default(void **state)
{
	enum { CODES = 2000, LEN = 8 };
	int count[10] = { 0 }, i, j;
	char out[LEN + 1];

	(void)state;
	codes_set_uniform(NULL);
	for (i = 0; i < CODES; i++) {
		codes_generate(out, LEN);
		assert_int_equal(strlen(out), LEN);
		for (j = 0; j < LEN; j++) {
			assert_true(out[j] >= '0' && out[j] <= '9');
			count[out[j] - '0']++;
		}
	}
	/* 1600 expected per digit, sigma 38: loose enough never to flake. */
	for (i = 0; i < 10; i++) {
		assert_true(count[i] > 1300);
		assert_true(count[i] < 1900);
	}
}

static void
test_hash(void **state)
{
	struct codes_keys *k1, *k2;
	uint8_t a[CODES_HASH_LEN], b[CODES_HASH_LEN], c[CODES_HASH_LEN];
	crypto_generichash_state st;

	(void)state;
	k1 = codes_keys_new();
	k2 = codes_keys_new();
	assert_non_null(k1);
	assert_non_null(k2);

	codes_hash(k1, "code", "123456", a);
	codes_hash(k1, "code", "123456", b);
	assert_memory_equal(a, b, CODES_HASH_LEN);
	codes_hash(k2, "code", "123456", c);
	assert_memory_not_equal(a, c, CODES_HASH_LEN);
	codes_hash(k1, "phone", "123456", c);
	assert_memory_not_equal(a, c, CODES_HASH_LEN);
	codes_hash(k1, "code", "123457", c);
	assert_memory_not_equal(a, c, CODES_HASH_LEN);
	codes_hash(k1, "code", "0123456", c);
	assert_memory_not_equal(a, c, CODES_HASH_LEN);

	/* The NUL after the domain keeps "code"+"1234567" from "code1". */
	codes_hash(k1, "code", "1234567", a);
	codes_hash(k1, "code1", "234567", b);
	assert_memory_not_equal(a, b, CODES_HASH_LEN);

	/* What is hashed: keyed BLAKE2b-256 of "code\0" then the digits. */
	crypto_generichash_init(&st, k1->hash_key, sizeof(k1->hash_key),
	    CODES_HASH_LEN);
	crypto_generichash_update(&st, (const uint8_t *)"code\0001234567", 12);
	crypto_generichash_final(&st, c, CODES_HASH_LEN);
	assert_memory_equal(a, c, CODES_HASH_LEN);

	codes_keys_free(k1);
	codes_keys_free(k2);
	codes_keys_free(NULL);
}

static void
test_equal(void **state)
{
	uint8_t a[CODES_HASH_LEN], b[CODES_HASH_LEN];

	(void)state;
	randombytes_buf(a, sizeof(a));
	memcpy(b, a, sizeof(b));
	assert_int_equal(codes_equal(a, b, sizeof(a)), 1);
	b[0] ^= 1;
	assert_int_equal(codes_equal(a, b, sizeof(a)), 0);
	b[0] ^= 1;
	b[CODES_HASH_LEN - 1] ^= 0x80;
	assert_int_equal(codes_equal(a, b, sizeof(a)), 0);
	/* Only the first len bytes count. */
	assert_int_equal(codes_equal(a, b, sizeof(a) - 1), 1);
}

static void
test_valid_digits(void **state)
{
	static const struct {
		const char *s;
		int min, max, want;
	} t[] = {
		{ "123456", 6, 12, 1 },
		{ "000000", 6, 12, 1 },
		{ "123456789012", 6, 12, 1 },
		{ "12345", 6, 12, 0 },
		{ "1234567890123", 6, 12, 0 },
		{ "", 6, 12, 0 },
		{ "", 0, 4, 1 },
		{ "1234", 4, 4, 1 },
		{ "123", 4, 4, 0 },
		{ "12345", 4, 4, 0 },
		{ "12345a", 6, 12, 0 },
		{ "a23456", 6, 12, 0 },
		{ " 123456", 6, 12, 0 },
		{ "123456 ", 6, 12, 0 },
		{ "123456\n", 6, 12, 0 },
		{ "-123456", 6, 12, 0 },
		{ "+123456", 6, 12, 0 },
		{ "12 3456", 6, 12, 0 },
		{ "123.456", 6, 12, 0 },
		{ "123456/", 6, 12, 0 },
		{ "123456:", 6, 12, 0 },
		/* Arabic-Indic and full-width digits are not digits here. */
		{ "12345\xd9\xa1", 6, 12, 0 },
		{ "12345\xef\xbc\x91", 6, 12, 0 },
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (codes_valid_digits(t[i].s, t[i].min, t[i].max) !=
		    t[i].want)
			fail_msg("codes_valid_digits(\"%s\", %d, %d) != %d",
			    t[i].s, t[i].min, t[i].max, t[i].want);
	}
}

static void
test_hex(void **state)
{
	uint8_t bin[CODES_HASH_LEN], back[CODES_HASH_LEN];
	char hex[CODES_HASH_LEN * 2 + 1], bad[CODES_HASH_LEN * 2 + 1];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bin); i++)
		bin[i] = (uint8_t)(i * 37 + 0xa0);
	assert_int_equal(codes_hex(bin, sizeof(bin), hex, sizeof(hex)), 0);
	assert_int_equal(strlen(hex), 64);
	assert_true(strspn(hex, "0123456789abcdef") == 64);
	assert_int_equal(codes_unhex(hex, back, sizeof(back)), 0);
	assert_memory_equal(bin, back, sizeof(bin));

	/* One byte short for the NUL. */
	assert_int_equal(codes_hex(bin, sizeof(bin), hex, sizeof(hex) - 1),
	    -1);
	assert_int_equal(codes_hex(bin, 1, hex, 3), 0);
	assert_string_equal(hex, "a0");
	assert_int_equal(codes_hex(bin, 0, hex, 1), 0);
	assert_string_equal(hex, "");

	/* Wrong length either way, and characters that are not hex. */
	assert_int_equal(codes_hex(bin, sizeof(bin), hex, sizeof(hex)), 0);
	hex[63] = '\0';
	assert_int_equal(codes_unhex(hex, back, sizeof(back)), -1);
	assert_int_equal(codes_unhex(hex, back, 31), -1);
	assert_int_equal(codes_unhex("", back, sizeof(back)), -1);
	assert_int_equal(codes_unhex("a0", back, 1), 0);
	assert_int_equal(back[0], 0xa0);
	assert_int_equal(codes_unhex("a0b", back, 1), -1);
	assert_int_equal(codes_unhex("zz", back, 1), -1);
	assert_int_equal(codes_unhex("0g", back, 1), -1);
	assert_int_equal(codes_unhex(" a", back, 1), -1);
	assert_int_equal(codes_hex(bin, sizeof(bin), hex, sizeof(hex)), 0);
	for (i = 0; i < 64; i += 7) {
		memcpy(bad, hex, sizeof(bad));
		bad[i] = 'x';
		assert_int_equal(codes_unhex(bad, back, sizeof(back)), -1);
	}
}

static void
test_b64(void **state)
{
	uint8_t bin[100], back[100];
	char b64[200];
	size_t n, len, need;

	(void)state;
	randombytes_buf(bin, sizeof(bin));
	for (n = 0; n <= sizeof(bin); n++) {
		need = sodium_base64_ENCODED_LEN(n,
		    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
		assert_int_equal(codes_b64(bin, n, b64, need), 0);
		assert_int_equal(strlen(b64), (n * 4 + 2) / 3);
		assert_int_equal(strspn(b64, B64URL), strlen(b64));
		memset(back, 0, sizeof(back));
		assert_int_equal(codes_unb64(b64, back, sizeof(back), &len), 0);
		assert_int_equal(len, n);
		assert_memory_equal(bin, back, n);
		if (n > 0) {
			/* Exactly the length it decodes to fits; less not. */
			assert_int_equal(codes_unb64(b64, back, n, &len), 0);
			assert_int_equal(codes_unb64(b64, back, n - 1, &len),
			    -1);
		}
		assert_int_equal(codes_b64(bin, n, b64, need - 1), -1);
	}

	/* Not base64url: the standard alphabet, padding, stray characters. */
	assert_int_equal(codes_unb64("ab+c", back, sizeof(back), &len), -1);
	assert_int_equal(codes_unb64("ab/c", back, sizeof(back), &len), -1);
	assert_int_equal(codes_unb64("YQ==", back, sizeof(back), &len), -1);
	assert_int_equal(codes_unb64("YQ", back, sizeof(back), &len), 0);
	assert_int_equal(len, 1);
	assert_int_equal(back[0], 'a');
	assert_int_equal(codes_unb64("Y Q", back, sizeof(back), &len), -1);
	assert_int_equal(codes_unb64("YQ\n", back, sizeof(back), &len), -1);
	assert_int_equal(codes_unb64("Y", back, sizeof(back), &len), -1);
	/* Non-zero bits after the last byte: not the canonical encoding. */
	assert_int_equal(codes_unb64("YR", back, sizeof(back), &len), -1);
	assert_int_equal(codes_unb64("", back, sizeof(back), &len), 0);
	assert_int_equal(len, 0);
}

static void
test_sign_verify(void **state)
{
	static const char msg[] = "cell 7 opened for reservation 42";
	struct codes_keys *k, *k2;
	uint8_t sig[CODES_SIG_LEN], bad[CODES_SIG_LEN];
	char m[sizeof(msg)];
	size_t i;

	(void)state;
	k = codes_keys_new();
	k2 = codes_keys_new();
	assert_non_null(k);
	assert_non_null(k2);
	codes_sign(k, msg, strlen(msg), sig);
	assert_int_equal(codes_verify(k->sign_pk, msg, strlen(msg), sig), 0);
	assert_int_equal(crypto_sign_verify_detached(sig,
	    (const uint8_t *)msg, strlen(msg), k->sign_pk), 0);

	/* Any altered byte of the message, a shorter message. */
	for (i = 0; i < strlen(msg); i++) {
		memcpy(m, msg, sizeof(m));
		m[i] ^= 0x20;
		assert_int_equal(codes_verify(k->sign_pk, m, strlen(msg), sig),
		    -1);
	}
	assert_int_equal(codes_verify(k->sign_pk, msg, strlen(msg) - 1, sig),
	    -1);
	/* Any altered bit of the signature (every byte, rotating bits). */
	for (i = 0; i < CODES_SIG_LEN; i++) {
		memcpy(bad, sig, sizeof(bad));
		bad[i] ^= (uint8_t)(1u << (i % 8));
		assert_int_equal(codes_verify(k->sign_pk, msg, strlen(msg),
		    bad), -1);
	}
	/* Another key. */
	assert_int_equal(codes_verify(k2->sign_pk, msg, strlen(msg), sig), -1);
	codes_sign(k2, msg, strlen(msg), bad);
	assert_int_equal(codes_verify(k->sign_pk, msg, strlen(msg), bad), -1);
	assert_int_equal(codes_verify(k2->sign_pk, msg, strlen(msg), bad), 0);
	/* The empty message is a message too. */
	codes_sign(k, "", 0, sig);
	assert_int_equal(codes_verify(k->sign_pk, "", 0, sig), 0);
	codes_keys_free(k);
	codes_keys_free(k2);
}

static void
test_digest(void **state)
{
	/* BLAKE2b-256("abc"), from Python's hashlib. */
	static const char want[] =
	    "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319";
	uint8_t d[CODES_HASH_LEN];
	char hex[CODES_HASH_LEN * 2 + 1];

	(void)state;
	codes_digest("abc", 3, d);
	assert_int_equal(codes_hex(d, sizeof(d), hex, sizeof(hex)), 0);
	assert_string_equal(hex, want);
}

/* A credential with every field away from zero. */
static void
cred_fill(struct codes_cred *c, const char *locker, int64_t resv, int cell,
    enum codes_purpose purpose, int64_t not_after)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->locker, sizeof(c->locker), "%s", locker);
	c->resv = resv;
	c->cell = cell;
	c->purpose = purpose;
	c->not_after = not_after;
	randombytes_buf(c->code_hash, sizeof(c->code_hash));
}

static void
cred_assert_equal(const struct codes_cred *a, const struct codes_cred *b)
{
	assert_string_equal(a->locker, b->locker);
	assert_int_equal(a->resv, b->resv);
	assert_int_equal(a->cell, b->cell);
	assert_int_equal(a->purpose, b->purpose);
	assert_int_equal(a->not_after, b->not_after);
	assert_memory_equal(a->code_hash, b->code_hash, CODES_HASH_LEN);
}

static char locker64[65];

static void
test_cred_roundtrip(void **state)
{
	struct codes_cred in[6], out;
	struct codes_keys *k;
	char s[CODES_CRED_MAX];
	const char *reason;
	size_t i;

	(void)state;
	memset(locker64, 'L', 64);
	locker64[64] = '\0';
	cred_fill(&in[0], "hall-3", 42, 7, CODES_DROPOFF, 1795000000);
	cred_fill(&in[1], "x", 0, 0, CODES_PICKUP, 0);
	cred_fill(&in[2], locker64, INT64_MAX, 0xffff, CODES_PICKUP,
	    INT64_MAX);
	cred_fill(&in[3], "hall-3/annex", -1, 1, CODES_DROPOFF, -1);
	cred_fill(&in[4], "\xe6\x97\xa5", INT64_MIN, 256, CODES_DROPOFF,
	    INT64_MIN);
	cred_fill(&in[5], "hall-3", 0x0102030405060708, 0x0a0b,
	    CODES_PICKUP, 0x7f00000000000001);
	k = codes_keys_new();
	assert_non_null(k);
	for (i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
		assert_int_equal(codes_cred_make(k, &in[i], s, sizeof(s)), 0);
		assert_true(strlen(s) < CODES_CRED_MAX);
		assert_int_equal(strspn(s, B64URL), strlen(s));
		memset(&out, 0xa5, sizeof(out));
		reason = "unset";
		assert_int_equal(codes_cred_parse(k->sign_pk, s, &out,
		    &reason), 0);
		assert_null(reason);
		cred_assert_equal(&in[i], &out);
	}
	codes_keys_free(k);
}

static void
test_cred_make_refuses(void **state)
{
	struct codes_keys *k;
	struct codes_cred c;
	char s[CODES_CRED_MAX];

	(void)state;
	k = codes_keys_new();
	assert_non_null(k);
	cred_fill(&c, "", 1, 1, CODES_DROPOFF, 1);
	assert_int_equal(codes_cred_make(k, &c, s, sizeof(s)), -1);
	cred_fill(&c, "hall-3", 1, -1, CODES_DROPOFF, 1);
	assert_int_equal(codes_cred_make(k, &c, s, sizeof(s)), -1);
	cred_fill(&c, "hall-3", 1, 0x10000, CODES_DROPOFF, 1);
	assert_int_equal(codes_cred_make(k, &c, s, sizeof(s)), -1);
	/* The out buffer must hold all of it. */
	cred_fill(&c, "hall-3", 1, 1, CODES_DROPOFF, 1);
	assert_int_equal(codes_cred_make(k, &c, s, 40), -1);
	assert_int_equal(codes_cred_make(k, &c, s, sizeof(s)), 0);
	assert_int_equal(codes_cred_make(k, &c, s, strlen(s)), -1);
	assert_int_equal(codes_cred_make(k, &c, s, strlen(s) + 1), 0);
	codes_keys_free(k);
}

static void
test_cred_other_key(void **state)
{
	struct codes_keys *k, *k2;
	struct codes_cred c, out;
	char s[CODES_CRED_MAX];
	const char *reason;

	(void)state;
	k = codes_keys_new();
	k2 = codes_keys_new();
	assert_non_null(k);
	assert_non_null(k2);
	cred_fill(&c, "hall-3", 42, 7, CODES_DROPOFF, 1795000000);
	assert_int_equal(codes_cred_make(k2, &c, s, sizeof(s)), 0);
	assert_int_equal(codes_cred_parse(k->sign_pk, s, &out, &reason), -1);
	assert_string_equal(reason, "the credential's signature is not valid");
	assert_int_equal(codes_cred_parse(k2->sign_pk, s, &out, &reason), 0);
	codes_keys_free(k);
	codes_keys_free(k2);
}

static void
test_cred_altered(void **state)
{
	struct codes_keys *k;
	struct codes_cred c, out;
	char s[CODES_CRED_MAX], t[CODES_CRED_MAX + 1];
	const char *reason;
	size_t i, j, len, tries = 0;

	(void)state;
	k = codes_keys_new();
	assert_non_null(k);
	cred_fill(&c, "hall-3", 42, 7, CODES_DROPOFF, 1795000000);
	assert_int_equal(codes_cred_make(k, &c, s, sizeof(s)), 0);
	len = strlen(s);

	/* Every position, to every other base64url character. */
	for (i = 0; i < len; i++) {
		for (j = 0; j < 64; j++) {
			if (B64URL[j] == s[i])
				continue;
			memcpy(t, s, len + 1);
			t[i] = B64URL[j];
			reason = NULL;
			if (codes_cred_parse(k->sign_pk, t, &out, &reason) !=
			    -1)
				fail_msg("accepted with position %zu changed "
				    "to '%c'", i, B64URL[j]);
			assert_non_null(reason);
			tries++;
		}
	}
	assert_int_equal(tries, len * 63);

	/* Every truncation, and one character more. */
	for (i = 0; i < len; i++) {
		memcpy(t, s, i);
		t[i] = '\0';
		assert_int_equal(codes_cred_parse(k->sign_pk, t, &out,
		    &reason), -1);
		assert_non_null(reason);
	}
	memcpy(t, s, len);
	t[len] = 'A';
	t[len + 1] = '\0';
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);
	codes_keys_free(k);
}

/* Re-signs a decoded credential after an edit, so only the edit counts. */
static void
cred_resign(const struct codes_keys *k, uint8_t *bin, size_t len, char *out,
    size_t outlen)
{
	codes_sign(k, bin, len - CODES_SIG_LEN, bin + len - CODES_SIG_LEN);
	assert_int_equal(codes_b64(bin, len, out, outlen), 0);
}

static void
test_cred_malformed(void **state)
{
	static const char *const garbage[] = {
		"", "A", "hello world", "LKC1", "TEtDMQ",
		"!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
	};
	struct codes_keys *k;
	struct codes_cred c, out;
	char s[CODES_CRED_MAX], t[CODES_CRED_MAX];
	char big[CODES_CRED_MAX + 64];
	uint8_t bin[CODES_CRED_MAX], bin2[CODES_CRED_MAX];
	const char *reason;
	size_t i, len;

	(void)state;
	k = codes_keys_new();
	assert_non_null(k);
	for (i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		reason = NULL;
		assert_int_equal(codes_cred_parse(k->sign_pk, garbage[i], &out,
		    &reason), -1);
		assert_string_equal(reason, "not a locker credential");
	}

	cred_fill(&c, "hall-3", 42, 7, CODES_DROPOFF, 1795000000);
	assert_int_equal(codes_cred_make(k, &c, s, sizeof(s)), 0);
	assert_int_equal(codes_unb64(s, bin, sizeof(bin), &len), 0);

	/* Another version, properly signed. */
	memcpy(bin2, bin, len);
	bin2[3] = '2';
	cred_resign(k, bin2, len, t, sizeof(t));
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);
	assert_string_equal(reason, "unknown credential version");
	memcpy(bin2, bin, len);
	memcpy(bin2, "lkc1", 4);
	cred_resign(k, bin2, len, t, sizeof(t));
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);
	assert_string_equal(reason, "unknown credential version");

	/* A locker length that does not match, properly signed. */
	memcpy(bin2, bin, len);
	bin2[4]++;
	cred_resign(k, bin2, len, t, sizeof(t));
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);
	assert_string_equal(reason, "not a locker credential");
	memcpy(bin2, bin, len);
	bin2[4] = 0;
	cred_resign(k, bin2, len, t, sizeof(t));
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);

	/* A byte more inside the signed part, properly signed. */
	memcpy(bin2, bin, len - CODES_SIG_LEN);
	bin2[len - CODES_SIG_LEN] = 0;
	cred_resign(k, bin2, len + 1, t, sizeof(t));
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);

	/* An unknown purpose, properly signed. */
	c.purpose = (enum codes_purpose)3;
	assert_int_equal(codes_cred_make(k, &c, t, sizeof(t)), 0);
	assert_int_equal(codes_cred_parse(k->sign_pk, t, &out, &reason), -1);
	assert_string_equal(reason, "unknown credential purpose");

	/* Overlong: at the limit and far beyond it. */
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(codes_cred_parse(k->sign_pk, big, &out, &reason), -1);
	assert_string_equal(reason, "not a locker credential");
	big[CODES_CRED_MAX] = '\0';
	assert_int_equal(codes_cred_parse(k->sign_pk, big, &out, &reason), -1);
	big[CODES_CRED_MAX - 1] = '\0';
	assert_int_equal(codes_cred_parse(k->sign_pk, big, &out, &reason), -1);
	/* A valid credential with more after it. */
	snprintf(big, sizeof(big), "%sAAAA", s);
	assert_int_equal(codes_cred_parse(k->sign_pk, big, &out, &reason), -1);
	codes_keys_free(k);
}

/* A scratch directory under /tmp, emptied and removed after each test. */
struct tmp {
	char dir[64];
	char path[128];
};

static int
tmp_setup(void **state)
{
	struct tmp *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return -1;
	snprintf(t->dir, sizeof(t->dir), "%s", "/tmp/test_codes.XXXXXX");
	if (mkdtemp(t->dir) == NULL) {
		free(t);
		return -1;
	}
	snprintf(t->path, sizeof(t->path), "%s/lockerd.key", t->dir);
	*state = t;
	return 0;
}

static int
tmp_teardown(void **state)
{
	struct tmp *t = *state;
	char path[sizeof(t->dir) + 260];
	struct dirent *de;
	DIR *d;

	if ((d = opendir(t->dir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 ||
			    strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", t->dir,
			    de->d_name);
			if (unlink(path) == -1)
				rmdir(path);
		}
		closedir(d);
	}
	rmdir(t->dir);
	free(t);
	return 0;
}

/* Writes a file with the given mode (umask aside: fchmod after). */
static void
write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
}

static void
keys_assert_equal(const struct codes_keys *a, const struct codes_keys *b)
{
	assert_memory_equal(a->sign_sk, b->sign_sk, sizeof(a->sign_sk));
	assert_memory_equal(a->sign_pk, b->sign_pk, sizeof(a->sign_pk));
	assert_memory_equal(a->hash_key, b->hash_key, sizeof(a->hash_key));
}

static void
test_keys_create_and_reload(void **state)
{
	struct tmp *t = *state;
	struct codes_keys *k1, *k2;
	uint8_t sig[CODES_SIG_LEN], h1[CODES_HASH_LEN], h2[CODES_HASH_LEN];
	char err[256], text[1024];
	struct stat st;
	ssize_t n;
	int fd;

	err[0] = '\0';
	k1 = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k1);
	assert_int_equal(stat(t->path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);

	/* The file holds the two secrets, and nothing else of ours. */
	fd = open(t->path, O_RDONLY);
	assert_true(fd >= 0);
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	assert_true(n > 0);
	text[n] = '\0';
	assert_non_null(strstr(text, "\nsign_sk="));
	assert_non_null(strstr(text, "\nhash_key="));

	k2 = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k2);
	keys_assert_equal(k1, k2);
	/* Signs with what it loads, hashes with what it loads. */
	codes_sign(k2, "m", 1, sig);
	assert_int_equal(codes_verify(k1->sign_pk, "m", 1, sig), 0);
	codes_hash(k1, "code", "123456", h1);
	codes_hash(k2, "code", "123456", h2);
	assert_memory_equal(h1, h2, CODES_HASH_LEN);
	codes_keys_free(k1);
	codes_keys_free(k2);

	/* A fresh file elsewhere gets fresh keys. */
	snprintf(text, sizeof(text), "%s/other.key", t->dir);
	k1 = codes_keys_load(t->path, err, sizeof(err));
	k2 = codes_keys_load(text, err, sizeof(err));
	assert_non_null(k1);
	assert_non_null(k2);
	assert_memory_not_equal(k1->sign_pk, k2->sign_pk, CODES_PK_LEN);
	assert_memory_not_equal(k1->hash_key, k2->hash_key, 32);
	codes_keys_free(k1);
	codes_keys_free(k2);
}

static void
test_keys_refuses_readable(void **state)
{
	static const mode_t modes[] = { 0644, 0640, 0604, 0620, 0602, 0660 };
	struct tmp *t = *state;
	struct codes_keys *k, *k2;
	char err[256], want[16];
	size_t i;

	k = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k);
	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		assert_int_equal(chmod(t->path, modes[i]), 0);
		err[0] = '\0';
		assert_null(codes_keys_load(t->path, err, sizeof(err)));
		snprintf(want, sizeof(want), "mode %04o", (unsigned)modes[i]);
		if (strstr(err, want) == NULL || strstr(err, "chmod 600") ==
		    NULL || strstr(err, t->path) == NULL)
			fail_msg("mode %04o: %s", (unsigned)modes[i], err);
	}
	/* Put right, it loads again, with the same keys. */
	assert_int_equal(chmod(t->path, 0600), 0);
	k2 = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k2);
	keys_assert_equal(k, k2);
	/* Stricter than 0600 is fine. */
	assert_int_equal(chmod(t->path, 0400), 0);
	codes_keys_free(k2);
	k2 = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k2);
	codes_keys_free(k);
	codes_keys_free(k2);
}

static void
test_keys_refuses_malformed(void **state)
{
	struct tmp *t = *state;
	struct codes_keys *k, *k2;
	char err[256], text[2048], sk[128], hk[64], other[128];
	struct {
		const char *what;
		char text[1200];
	} bad[8];
	uint8_t raw[64];
	size_t i, nbad = 0;

	k = codes_keys_new();
	assert_non_null(k);
	sodium_bin2base64(sk, sizeof(sk), k->sign_sk, 64,
	    sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(hk, sizeof(hk), k->hash_key, 32,
	    sodium_base64_VARIANT_ORIGINAL);

	/* Hand-written but right: loads, and gives the same keys. */
	snprintf(text, sizeof(text), "# keys\n\nhash_key=%s\nsign_sk=%s\n",
	    hk, sk);
	write_file(t->path, text, 0600);
	k2 = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k2);
	keys_assert_equal(k, k2);
	codes_keys_free(k2);

	snprintf(bad[nbad].text, sizeof(bad[0].text), "garbage\n");
	bad[nbad++].what = "garbage";
	snprintf(bad[nbad].text, sizeof(bad[0].text), "%s", "");
	bad[nbad++].what = "empty";
	snprintf(bad[nbad].text, sizeof(bad[0].text), "sign_sk=%s\n", sk);
	bad[nbad++].what = "no hash_key";
	snprintf(bad[nbad].text, sizeof(bad[0].text), "hash_key=%s\n", hk);
	bad[nbad++].what = "no sign_sk";
	/* A key cut short, and one in the wrong base64 alphabet. */
	snprintf(bad[nbad].text, sizeof(bad[0].text),
	    "sign_sk=%.40s\nhash_key=%s\n", sk, hk);
	bad[nbad++].what = "short sign_sk";
	snprintf(bad[nbad].text, sizeof(bad[0].text),
	    "sign_sk=%s\nhash_key=%sAAAA\n", sk, hk);
	bad[nbad++].what = "long hash_key";
	/*
	 * 64 bytes whose second half is not the public key of the first:
	 * lockerd would sign with a key that nothing can verify.
	 */
	memcpy(raw, k->sign_sk, 64);
	raw[40] ^= 1;
	sodium_bin2base64(other, sizeof(other), raw, 64,
	    sodium_base64_VARIANT_ORIGINAL);
	snprintf(bad[nbad].text, sizeof(bad[0].text),
	    "sign_sk=%s\nhash_key=%s\n", other, hk);
	bad[nbad++].what = "sign_sk with a foreign public half";
	/* Too large to be a key file (a comment of 1100 bytes). */
	memset(bad[nbad].text, '#', 1100);
	bad[nbad].text[1100] = '\0';
	bad[nbad++].what = "too large";
	assert_true(nbad <= sizeof(bad) / sizeof(bad[0]));

	for (i = 0; i < nbad; i++) {
		write_file(t->path, bad[i].text, 0600);
		err[0] = '\0';
		if (codes_keys_load(t->path, err, sizeof(err)) != NULL)
			fail_msg("accepted a key file with %s", bad[i].what);
		assert_non_null(strstr(err, t->path));
	}
	codes_keys_free(k);
}

static void
test_keys_refuses_other_files(void **state)
{
	struct tmp *t = *state;
	struct codes_keys *k;
	char err[256], link[160], sub[160];

	/* A symbolic link to a good key file is not followed. */
	k = codes_keys_load(t->path, err, sizeof(err));
	assert_non_null(k);
	codes_keys_free(k);
	snprintf(link, sizeof(link), "%s/link.key", t->dir);
	assert_int_equal(symlink(t->path, link), 0);
	assert_null(codes_keys_load(link, err, sizeof(err)));
	assert_non_null(strstr(err, link));

	/* A directory. */
	snprintf(sub, sizeof(sub), "%s/dir.key", t->dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	assert_null(codes_keys_load(sub, err, sizeof(err)));
	assert_non_null(strstr(err, "not a regular file"));

	/* Nowhere to create one. */
	snprintf(sub, sizeof(sub), "%s/missing/lockerd.key", t->dir);
	assert_null(codes_keys_load(sub, err, sizeof(err)));
	assert_non_null(strstr(err, sub));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init),
		cmocka_unit_test(test_generate_injected),
		cmocka_unit_test(test_generate_default),
		cmocka_unit_test(test_hash),
		cmocka_unit_test(test_equal),
		cmocka_unit_test(test_valid_digits),
		cmocka_unit_test(test_hex),
		cmocka_unit_test(test_b64),
		cmocka_unit_test(test_sign_verify),
		cmocka_unit_test(test_digest),
		cmocka_unit_test(test_cred_roundtrip),
		cmocka_unit_test(test_cred_make_refuses),
		cmocka_unit_test(test_cred_other_key),
		cmocka_unit_test(test_cred_altered),
		cmocka_unit_test(test_cred_malformed),
		cmocka_unit_test_setup_teardown(test_keys_create_and_reload,
		    tmp_setup, tmp_teardown),
		cmocka_unit_test_setup_teardown(test_keys_refuses_readable,
		    tmp_setup, tmp_teardown),
		cmocka_unit_test_setup_teardown(test_keys_refuses_malformed,
		    tmp_setup, tmp_teardown),
		cmocka_unit_test_setup_teardown(test_keys_refuses_other_files,
		    tmp_setup, tmp_teardown),
	};

	if (codes_init() == -1)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
