/*
 * The ledger's seal: a chain of events sealed with a fresh key verifies
 * whole, and every kind of tampering (edit, removal, reorder, another key,
 * a broken link, a missing signature, bad JSON, duplicate keys) is caught
 * at the right event with a reason that names it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "ledger.h"

#define CHAIN_LEN 10
/* ledger_code_mac of the known answer in test_code_mac, as computed by
 * sim/lockerctl's code_key() and code_mac() (PyNaCl): the two agree. */
#define CODE_MAC_KAT "791715c20f767ba139e766bf0dc15ddaafb7fec03868bb92f92c484b761f573e"

struct chain {
	uint8_t pk[LEDGER_PK_LEN];
	uint8_t sk[LEDGER_SK_LEN];
	char *text[CHAIN_LEN];                  /* as stored: not canonical */
	uint8_t digest[CHAIN_LEN][LEDGER_HASH_LEN];
};

static json_t *
event_new(int64_t seq)
{
	static const char *const types[] = { "reserved", "deposited",
	    "retrieved", "loaded", "collected" };

	return json_pack("{s:I, s:s, s:i, s:s, s:{s:s, s:i}}",
	    "seq", (json_int_t)seq, "type", types[seq % 5], "cell",
	    (int)(seq % 4) + 1, "locker", "hall-3",
	    "doc", "ref", "A-2026-0042", "pages", (int)seq * 3);
}

/* Stored text as lockerd writes it: compact, in insertion order. */
static char *
event_text(const json_t *ev)
{
	char *s = json_dumps(ev, JSON_COMPACT);

	assert_non_null(s);
	return s;
}

static int
chain_setup(void **state)
{
	struct chain *c = calloc(1, sizeof(*c));
	uint8_t prev[LEDGER_HASH_LEN] = { 0 };
	json_t *ev;
	int i;

	if (c == NULL)
		return -1;
	crypto_sign_keypair(c->pk, c->sk);
	for (i = 0; i < CHAIN_LEN; i++) {
		ev = event_new(i + 1);
		assert_non_null(ev);
		assert_int_equal(ledger_seal(ev, c->sk, prev, c->digest[i]), 0);
		memcpy(prev, c->digest[i], sizeof(prev));
		c->text[i] = event_text(ev);
		json_decref(ev);
	}
	*state = c;
	return 0;
}

static int
chain_teardown(void **state)
{
	struct chain *c = *state;
	int i;

	for (i = 0; i < CHAIN_LEN; i++)
		free(c->text[i]);
	sodium_memzero(c->sk, sizeof(c->sk));
	free(c);
	return 0;
}

/* Replaces event i's stored text. */
static void
chain_replace(struct chain *c, int i, char *text)
{
	free(c->text[i]);
	c->text[i] = text;
}

/*
 * Walks texts[0..n) from seq 1; returns the index of the first event that
 * fails (its reason in v->error), or -1 if all verify.
 */
static int
walk(struct ledger_verify *v, const uint8_t *pk, char *const *texts, int n)
{
	int i;

	ledger_verify_init(v, pk, 1, NULL);
	for (i = 0; i < n; i++)
		if (ledger_verify_next(v, texts[i], strlen(texts[i])) == -1)
			return i;
	return -1;
}

/* Parses a stored event so that a test can tamper with it. */
static json_t *
event_parse(const char *text)
{
	json_t *ev = json_loads(text, 0, NULL);

	assert_non_null(ev);
	return ev;
}

static void
test_chain_verifies(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	uint8_t d[LEDGER_HASH_LEN];
	char zeros[65];
	json_t *ev;
	int i;

	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), -1);
	assert_int_equal(v.count, CHAIN_LEN);
	assert_int_equal(v.next_seq, CHAIN_LEN + 1);
	assert_string_equal(v.error, "");
	assert_memory_equal(v.prev, c->digest[CHAIN_LEN - 1], LEDGER_HASH_LEN);

	/* The first links to 64 zeros; each digest is the next one's prev. */
	memset(zeros, '0', 64);
	zeros[64] = '\0';
	ev = event_parse(c->text[0]);
	assert_string_equal(json_string_value(json_object_get(ev, "prev")),
	    zeros);
	json_decref(ev);
	for (i = 0; i < CHAIN_LEN; i++) {
		ev = event_parse(c->text[i]);
		/* ledger_digest leaves "sig" out, as the seal did. */
		assert_int_equal(ledger_digest(ev, d), 0);
		assert_memory_equal(d, c->digest[i], LEDGER_HASH_LEN);
		assert_non_null(json_object_get(ev, "sig"));
		json_decref(ev);
	}
}

static void
test_partial_walk(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	int i;

	/* From the middle, given the digest of the event before. */
	ledger_verify_init(&v, c->pk, 5, c->digest[3]);
	for (i = 4; i < CHAIN_LEN; i++)
		assert_int_equal(ledger_verify_next(&v, c->text[i],
		    strlen(c->text[i])), 0);
	assert_int_equal(v.count, CHAIN_LEN - 4);

	/* The same event checked against the genesis does not link. */
	ledger_verify_init(&v, c->pk, 5, NULL);
	assert_int_equal(ledger_verify_next(&v, c->text[4],
	    strlen(c->text[4])), -1);
	assert_string_equal(v.error,
	    "seq 5: prev does not match the previous event");
	assert_int_equal(v.count, 0);
}

static void
test_edited_field(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	json_t *ev;

	ev = event_parse(c->text[4]);
	json_object_set_new(ev, "cell", json_integer(9));
	chain_replace(c, 4, event_text(ev));
	json_decref(ev);
	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), 4);
	assert_string_equal(v.error, "seq 5: bad signature");
	assert_int_equal(v.count, 4);

	/* A nested field, and an added one, count as edits too. */
	ev = event_parse(c->text[4]);
	json_object_set_new(ev, "cell", json_integer(1));
	json_object_set_new(json_object_get(ev, "doc"), "pages",
	    json_integer(16));
	chain_replace(c, 4, event_text(ev));
	json_decref(ev);
	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), 4);
	assert_string_equal(v.error, "seq 5: bad signature");

	ev = event_parse(c->text[6]);
	json_object_set_new(ev, "staff", json_string("mallory"));
	chain_replace(c, 6, event_text(ev));
	json_decref(ev);
	ledger_verify_init(&v, c->pk, 7, c->digest[5]);
	assert_int_equal(ledger_verify_next(&v, c->text[6],
	    strlen(c->text[6])), -1);
	assert_string_equal(v.error, "seq 7: bad signature");
}

static void
test_event_removed(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	char *texts[CHAIN_LEN - 1];
	int i, j;

	for (i = 0, j = 0; i < CHAIN_LEN; i++)
		if (i != 3)
			texts[j++] = c->text[i];
	assert_int_equal(walk(&v, c->pk, texts, CHAIN_LEN - 1), 3);
	assert_string_equal(v.error, "seq 5: expected seq 4");
	assert_int_equal(v.count, 3);

	/* The first one missing. */
	assert_int_equal(walk(&v, c->pk, c->text + 1, CHAIN_LEN - 1), 0);
	assert_string_equal(v.error, "seq 2: expected seq 1");
}

static void
test_events_swapped(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	char *texts[CHAIN_LEN];

	memcpy(texts, c->text, sizeof(texts));
	texts[3] = c->text[4];
	texts[4] = c->text[3];
	assert_int_equal(walk(&v, c->pk, texts, CHAIN_LEN), 3);
	assert_string_equal(v.error, "seq 5: expected seq 4");

	/* A replayed event. */
	memcpy(texts, c->text, sizeof(texts));
	texts[4] = c->text[3];
	assert_int_equal(walk(&v, c->pk, texts, CHAIN_LEN), 4);
	assert_string_equal(v.error, "seq 4: expected seq 5");
}

static void
test_other_key(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	uint8_t pk2[LEDGER_PK_LEN], sk2[LEDGER_SK_LEN], d[LEDGER_HASH_LEN];
	json_t *ev;

	crypto_sign_keypair(pk2, sk2);
	/* Re-sealed with the right prev but another key. */
	ev = event_parse(c->text[4]);
	json_object_set_new(ev, "cell", json_integer(4));
	assert_int_equal(ledger_seal(ev, sk2, c->digest[3], d), 0);
	chain_replace(c, 4, event_text(ev));
	json_decref(ev);
	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), 4);
	assert_string_equal(v.error, "seq 5: bad signature");

	/* The whole chain checked against another device's key. */
	assert_int_equal(walk(&v, pk2, c->text, CHAIN_LEN), 0);
	assert_string_equal(v.error, "seq 1: bad signature");
	sodium_memzero(sk2, sizeof(sk2));
}

static void
test_prev_not_linked(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	uint8_t d[LEDGER_HASH_LEN];
	json_t *ev;

	/* Properly signed by the device key, but linked past event 4. */
	ev = event_parse(c->text[4]);
	assert_int_equal(ledger_seal(ev, c->sk, c->digest[2], d), 0);
	chain_replace(c, 4, event_text(ev));
	json_decref(ev);
	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), 4);
	assert_string_equal(v.error,
	    "seq 5: prev does not match the previous event");

	/* Upper-case hex is not the canonical prev. */
	ev = event_parse(c->text[1]);
	{
		char hex[65];
		int i;

		snprintf(hex, sizeof(hex), "%s",
		    json_string_value(json_object_get(ev, "prev")));
		for (i = 0; hex[i]; i++)
			if (hex[i] >= 'a' && hex[i] <= 'f')
				hex[i] = (char)(hex[i] - 'a' + 'A');
		json_object_set_new(ev, "prev", json_string(hex));
	}
	chain_replace(c, 1, event_text(ev));
	json_decref(ev);
	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), 1);
	assert_string_equal(v.error,
	    "seq 2: prev does not match the previous event");

	/* No prev at all, or not a string. */
	ev = event_parse(c->text[2]);
	json_object_del(ev, "prev");
	chain_replace(c, 2, event_text(ev));
	json_decref(ev);
	ledger_verify_init(&v, c->pk, 3, c->digest[1]);
	assert_int_equal(ledger_verify_next(&v, c->text[2],
	    strlen(c->text[2])), -1);
	assert_string_equal(v.error, "seq 3: missing prev");

	ev = event_parse(c->text[3]);
	json_object_set_new(ev, "prev", json_integer(0));
	chain_replace(c, 3, event_text(ev));
	json_decref(ev);
	ledger_verify_init(&v, c->pk, 4, c->digest[2]);
	assert_int_equal(ledger_verify_next(&v, c->text[3],
	    strlen(c->text[3])), -1);
	assert_string_equal(v.error,
	    "seq 4: prev does not match the previous event");
}

static void
test_sig_missing_or_malformed(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	static const char *const bad[] = {
		"", "AAAA", "not base64!",
		/* 63 and 65 bytes */
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	};
	uint8_t sig[64];
	char std[sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_ORIGINAL)];
	json_t *ev;
	char *s;
	size_t i, len;

	ev = event_parse(c->text[5]);
	json_object_del(ev, "sig");
	chain_replace(c, 5, event_text(ev));
	json_decref(ev);
	assert_int_equal(walk(&v, c->pk, c->text, CHAIN_LEN), 5);
	assert_string_equal(v.error, "seq 6: missing sig");
	assert_int_equal(v.count, 5);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ev = event_parse(c->text[4]);
		json_object_set_new(ev, "sig", json_string(bad[i]));
		s = event_text(ev);
		json_decref(ev);
		ledger_verify_init(&v, c->pk, 5, c->digest[3]);
		assert_int_equal(ledger_verify_next(&v, s, strlen(s)), -1);
		assert_string_equal(v.error, "seq 5: malformed sig");
		free(s);
	}

	/* A sig that is not a string. */
	ev = event_parse(c->text[4]);
	json_object_set_new(ev, "sig", json_integer(1));
	s = event_text(ev);
	json_decref(ev);
	ledger_verify_init(&v, c->pk, 5, c->digest[3]);
	assert_int_equal(ledger_verify_next(&v, s, strlen(s)), -1);
	assert_string_equal(v.error, "seq 5: malformed sig");
	free(s);

	/* The right signature in standard base64 (with padding) is refused. */
	ev = event_parse(c->text[4]);
	assert_int_equal(sodium_base642bin(sig, sizeof(sig),
	    json_string_value(json_object_get(ev, "sig")), 86, NULL, &len,
	    NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING), 0);
	assert_int_equal(len, 64);
	sodium_bin2base64(std, sizeof(std), sig, sizeof(sig),
	    sodium_base64_VARIANT_ORIGINAL);
	json_object_set_new(ev, "sig", json_string(std));
	s = event_text(ev);
	ledger_verify_init(&v, c->pk, 5, c->digest[3]);
	assert_int_equal(ledger_verify_next(&v, s, strlen(s)), -1);
	assert_string_equal(v.error, "seq 5: malformed sig");
	free(s);

	/* 64 bytes that are not the signature. */
	memset(sig, 0, sizeof(sig));
	sodium_bin2base64(std, sizeof(std), sig, sizeof(sig),
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	json_object_set_new(ev, "sig", json_string(std));
	s = event_text(ev);
	json_decref(ev);
	ledger_verify_init(&v, c->pk, 5, c->digest[3]);
	assert_int_equal(ledger_verify_next(&v, s, strlen(s)), -1);
	assert_string_equal(v.error, "seq 5: bad signature");
	free(s);
}

static void
test_not_json(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	static const char *const bad[] = {
		"", "not json", "{\"seq\":1,", "{\"seq\":1}}", "\"seq\"", "42",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ledger_verify_init(&v, c->pk, 1, NULL);
		assert_int_equal(ledger_verify_next(&v, bad[i], strlen(bad[i])),
		    -1);
		assert_true(strncmp(v.error, "seq 1: not JSON", 15) == 0);
		assert_int_equal(v.count, 0);
		assert_int_equal(v.next_seq, 1);
	}
	/* Cut short: the length given is what counts, not the NUL. */
	ledger_verify_init(&v, c->pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, c->text[0],
	    strlen(c->text[0]) - 1), -1);
	assert_true(strncmp(v.error, "seq 1: not JSON", 15) == 0);
	assert_int_equal(ledger_verify_next(&v, NULL, 0), -1);
	assert_true(strncmp(v.error, "seq 1: not JSON", 15) == 0);

	/* JSON, but not an event. */
	ledger_verify_init(&v, c->pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, "[1,2]", 5), -1);
	assert_string_equal(v.error, "seq 1: not a JSON object");
	assert_int_equal(ledger_verify_next(&v, "{}", 2), -1);
	assert_string_equal(v.error, "seq 1: missing seq");
	assert_int_equal(ledger_verify_next(&v, "{\"seq\":\"1\"}", 11), -1);
	assert_string_equal(v.error, "seq 1: seq is not an integer");
	assert_int_equal(ledger_verify_next(&v, "{\"seq\":1.0}", 11), -1);
	assert_string_equal(v.error, "seq 1: seq is not an integer");
}

static void
test_duplicate_keys(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	char *s;
	size_t n;

	/*
	 * A second "cell" after the signed one: a parser that keeps the last
	 * value would read cell 4 from a text signed for another cell.
	 */
	n = strlen(c->text[0]);
	s = malloc(n + 16);
	assert_non_null(s);
	memcpy(s, c->text[0], n - 1);
	snprintf(s + n - 1, 17, "%s", ",\"cell\":4}");
	ledger_verify_init(&v, c->pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, s, strlen(s)), -1);
	assert_true(strncmp(v.error, "seq 1: not JSON", 15) == 0);
	assert_non_null(strstr(v.error, "duplicate"));

	/* A second "sig" is refused the same way. */
	snprintf(s + n - 1, 17, "%s", ",\"sig\":\"x\"}");
	assert_int_equal(ledger_verify_next(&v, s, strlen(s)), -1);
	assert_true(strncmp(v.error, "seq 1: not JSON", 15) == 0);
	free(s);

	/* The untouched event still verifies after the failures. */
	ledger_verify_init(&v, c->pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, c->text[0],
	    strlen(c->text[0])), 0);
}

static void
test_canonical_key_order(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	uint8_t d1[LEDGER_HASH_LEN], d2[LEDGER_HASH_LEN], d3[LEDGER_HASH_LEN];
	/* BLAKE2b-256 of {"a":1,"b":2} (Python's hashlib.blake2b). */
	static const uint8_t want[LEDGER_HASH_LEN] = {
		0xa4, 0x08, 0x7a, 0xa0, 0x88, 0x06, 0x6a, 0xfe,
		0x11, 0xbd, 0x73, 0x00, 0x1c, 0x25, 0x8d, 0x05,
		0xa2, 0x31, 0x59, 0x0b, 0x9b, 0x1e, 0xa0, 0x24,
		0x24, 0x77, 0x0d, 0x2d, 0x20, 0x3c, 0x95, 0x89,
	};
	json_t *a, *b;
	char *sa, *sb, *s;

	a = json_loads("{\"a\":1,\"b\":2}", 0, NULL);
	b = json_loads("{ \"b\" : 2,\n  \"a\" : 1 }", 0, NULL);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(ledger_digest(a, d1), 0);
	assert_int_equal(ledger_digest(b, d2), 0);
	assert_memory_equal(d1, d2, LEDGER_HASH_LEN);
	assert_memory_equal(d1, want, LEDGER_HASH_LEN);

	/* "sig" is not part of the digest, and ledger_digest keeps it. */
	json_object_set_new(b, "sig", json_string("whatever"));
	assert_int_equal(ledger_digest(b, d3), 0);
	assert_memory_equal(d1, d3, LEDGER_HASH_LEN);
	assert_string_equal(json_string_value(json_object_get(b, "sig")),
	    "whatever");

	/* Sealed in either order: same digest, same (deterministic) sig. */
	json_object_set_new(a, "seq", json_integer(1));
	json_object_set_new(b, "seq", json_integer(1));
	assert_int_equal(ledger_seal(a, c->sk, NULL, d1), 0);
	assert_int_equal(ledger_seal(b, c->sk, NULL, d2), 0);
	assert_memory_equal(d1, d2, LEDGER_HASH_LEN);
	assert_string_equal(json_string_value(json_object_get(a, "sig")),
	    json_string_value(json_object_get(b, "sig")));

	/* Stored pretty-printed and unsorted, each still verifies. */
	sa = json_dumps(a, JSON_INDENT(2));
	sb = json_dumps(b, JSON_COMPACT | JSON_PRESERVE_ORDER);
	assert_non_null(sa);
	assert_non_null(sb);
	ledger_verify_init(&v, c->pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, sa, strlen(sa)), 0);
	ledger_verify_init(&v, c->pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, sb, strlen(sb)), 0);
	assert_memory_equal(v.prev, d1, LEDGER_HASH_LEN);

	/* Sealing again replaces "prev" and "sig" rather than adding. */
	assert_int_equal(ledger_seal(a, c->sk, d1, d3), 0);
	assert_int_equal(json_object_size(a), 5);
	s = json_dumps(a, JSON_COMPACT);
	ledger_verify_init(&v, c->pk, 1, d1);
	assert_int_equal(ledger_verify_next(&v, s, strlen(s)), 0);
	assert_memory_equal(v.prev, d3, LEDGER_HASH_LEN);
	free(s);
	free(sa);
	free(sb);
	json_decref(a);
	json_decref(b);
}

static void
test_non_ascii(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	uint8_t d[LEDGER_HASH_LEN], pk[LEDGER_PK_LEN], sk[LEDGER_SK_LEN];
	uint8_t seed[32];
	/* "Zoë 日 😀": two, three and four bytes of UTF-8. */
	static const char name[] = "Zo\xc3\xab \xe6\x97\xa5 \xf0\x9f\x98\x80";
	/*
	 * Known answers from Python (hashlib.blake2b, cryptography's Ed25519)
	 * over '{"name":"Zo\u00EB \u65E5 \uD83D\uDE00","prev":"000...",
	 * "seq":1,"type":"x"}': jansson escapes in upper-case hex.
	 */
	static const char want_digest[] =
	    "cd6a2b230159100d54dfca35936b4f6cb9a711c81edceb78b347503d53733abb";
	static const char want_sig[] = "9kjAJLbw-HcyPXzabHvAHhNEIadbOLijgfOszzZ"
	    "DLvZTyQ2lpM-LgUULAR3SqevUrmfE0NEmaNiMCHngMO_pCg";
	char hex[LEDGER_HASH_LEN * 2 + 1], *raw, *esc;
	json_t *ev;
	int i;

	(void)c;
	for (i = 0; i < 32; i++)
		seed[i] = (uint8_t)(i + 1);
	crypto_sign_seed_keypair(pk, sk, seed);
	ev = json_pack("{s:I, s:s, s:s}", "seq", (json_int_t)1, "type", "x",
	    "name", name);
	assert_non_null(ev);
	assert_int_equal(ledger_seal(ev, sk, NULL, d), 0);
	sodium_bin2hex(hex, sizeof(hex), d, sizeof(d));
	assert_string_equal(hex, want_digest);
	assert_string_equal(json_string_value(json_object_get(ev, "sig")),
	    want_sig);

	/* Stored as raw UTF-8 or escaped, it verifies either way. */
	raw = json_dumps(ev, JSON_COMPACT);
	esc = json_dumps(ev, JSON_COMPACT | JSON_ENSURE_ASCII);
	assert_non_null(raw);
	assert_non_null(esc);
	assert_non_null(strstr(raw, name));
	assert_null(strstr(esc, name));
	ledger_verify_init(&v, pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, raw, strlen(raw)), 0);
	ledger_verify_init(&v, pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, esc, strlen(esc)), 0);
	assert_memory_equal(v.prev, d, LEDGER_HASH_LEN);

	/* Invalid UTF-8 in the stored text is not JSON. */
	raw[strstr(raw, name) - raw + 2] = '\xff';
	ledger_verify_init(&v, pk, 1, NULL);
	assert_int_equal(ledger_verify_next(&v, raw, strlen(raw)), -1);
	assert_true(strncmp(v.error, "seq 1: not JSON", 15) == 0);
	free(raw);
	free(esc);
	json_decref(ev);
	sodium_memzero(sk, sizeof(sk));
}

static void
test_seal_refuses(void **state)
{
	struct chain *c = *state;
	uint8_t d[LEDGER_HASH_LEN];
	json_t *ev;

	ev = json_array();
	assert_int_equal(ledger_seal(ev, c->sk, NULL, d), -1);
	assert_int_equal(ledger_digest(ev, d), -1);
	json_decref(ev);
	ev = json_pack("{s:s}", "type", "x");
	assert_int_equal(ledger_seal(ev, c->sk, NULL, d), -1);
	json_decref(ev);
	ev = json_pack("{s:s}", "seq", "1");
	assert_int_equal(ledger_seal(ev, c->sk, NULL, d), -1);
	json_decref(ev);
}

/*
 * A restored event may skip seqs, and only it: it names the event it
 * follows (from_seq), which must be the one before it in the walk, and
 * links to its digest. Anything else that skips is a gap.
 */
static void
test_restored_skip(void **state)
{
	struct chain *c = *state;
	struct ledger_verify v;
	uint8_t d[LEDGER_HASH_LEN];
	char *texts[2];
	json_t *ev;
	int i;

	ledger_verify_init(&v, c->pk, 1, NULL);
	for (i = 0; i < 4; i++)
		assert_int_equal(ledger_verify_next(&v, c->text[i],
		    strlen(c->text[i])), 0);
	/* Resumed at seq 40 after seq 4, as a restore_ack said. */
	ev = json_pack("{s:I, s:s, s:I, s:b}", "seq", (json_int_t)40, "type",
	    "restored", "from_seq", (json_int_t)4, "alarm", 1);
	assert_int_equal(ledger_seal(ev, c->sk, c->digest[3], d), 0);
	texts[0] = event_text(ev);
	json_decref(ev);
	ev = event_new(41);
	assert_int_equal(ledger_seal(ev, c->sk, d, d), 0);
	texts[1] = event_text(ev);
	json_decref(ev);
	assert_int_equal(ledger_verify_next(&v, texts[0], strlen(texts[0])), 0);
	assert_int_equal(ledger_verify_next(&v, texts[1], strlen(texts[1])), 0);
	assert_int_equal(v.next_seq, 42);
	assert_int_equal(v.count, 6);
	free(texts[0]);
	free(texts[1]);

	/* Another type, or a from_seq that is not the event before: gaps. */
	ledger_verify_init(&v, c->pk, 1, NULL);
	for (i = 0; i < 4; i++)
		ledger_verify_next(&v, c->text[i], strlen(c->text[i]));
	ev = json_pack("{s:I, s:s, s:I}", "seq", (json_int_t)40, "type",
	    "started", "from_seq", (json_int_t)4);
	assert_int_equal(ledger_seal(ev, c->sk, c->digest[3], d), 0);
	texts[0] = event_text(ev);
	json_decref(ev);
	assert_int_equal(ledger_verify_next(&v, texts[0], strlen(texts[0])), -1);
	assert_string_equal(v.error, "seq 40: expected seq 5");
	free(texts[0]);
	ev = json_pack("{s:I, s:s, s:I}", "seq", (json_int_t)40, "type",
	    "restored", "from_seq", (json_int_t)3);
	assert_int_equal(ledger_seal(ev, c->sk, c->digest[3], d), 0);
	texts[0] = event_text(ev);
	json_decref(ev);
	assert_int_equal(ledger_verify_next(&v, texts[0], strlen(texts[0])), -1);
	assert_string_equal(v.error, "seq 40: expected seq 5");
	free(texts[0]);
	/* Nor may a restored event go back. */
	ev = json_pack("{s:I, s:s, s:I}", "seq", (json_int_t)3, "type",
	    "restored", "from_seq", (json_int_t)4);
	assert_int_equal(ledger_seal(ev, c->sk, c->digest[3], d), 0);
	texts[0] = event_text(ev);
	json_decref(ev);
	assert_int_equal(ledger_verify_next(&v, texts[0], strlen(texts[0])), -1);
	free(texts[0]);
}

/* A signature checked alone: ledger_signed_by. */
static void
test_signed_by(void **state)
{
	struct chain *c = *state;
	uint8_t pk[LEDGER_PK_LEN], sk[LEDGER_SK_LEN];
	json_t *ev = event_parse(c->text[2]);

	assert_int_equal(ledger_signed_by(ev, c->pk), 0);
	crypto_sign_keypair(pk, sk);
	assert_int_equal(ledger_signed_by(ev, pk), -1);
	/* Transport fields are not signed; the rest is. */
	json_object_set_new(ev, "replayed", json_true());
	json_object_set_new(ev, "code", json_string("0123456789"));
	assert_int_equal(ledger_signed_by(ev, c->pk), 0);
	json_object_set_new(ev, "cell", json_integer(9));
	assert_int_equal(ledger_signed_by(ev, c->pk), -1);
	json_object_del(ev, "sig");
	assert_int_equal(ledger_signed_by(ev, c->pk), -1);
	json_decref(ev);
	sodium_memzero(sk, sizeof(sk));
}

/*
 * The code MAC's key is the same from both sides (the device with its
 * secret key and the platform's public one, the platform with its own
 * and the device's), and differs for another platform; the MAC binds the
 * locker, the seq and the code, as the known answer below says.
 */
static void
test_code_mac(void **state)
{
	struct chain *c = *state;
	uint8_t ppk[LEDGER_PK_LEN], psk[LEDGER_SK_LEN], seed[32];
	uint8_t opk[LEDGER_PK_LEN], osk[LEDGER_SK_LEN];
	uint8_t kd[LEDGER_HASH_LEN], kp[LEDGER_HASH_LEN], ko[LEDGER_HASH_LEN];
	uint8_t dpk[LEDGER_PK_LEN], dsk[LEDGER_SK_LEN];
	char a[65], b[65];

	crypto_sign_keypair(ppk, psk);
	crypto_sign_keypair(opk, osk);
	assert_int_equal(ledger_code_key(c->sk, c->pk, ppk, 1, kd), 0);
	assert_int_equal(ledger_code_key(psk, c->pk, ppk, 0, kp), 0);
	assert_memory_equal(kd, kp, sizeof(kd));
	assert_int_equal(ledger_code_key(c->sk, c->pk, opk, 1, ko), 0);
	assert_memory_not_equal(kd, ko, sizeof(kd));

	assert_int_equal(ledger_code_mac(kd, "hall-3", 17, "0123456789", a), 0);
	assert_int_equal(strlen(a), 64);
	assert_int_equal(ledger_code_mac(kp, "hall-3", 17, "0123456789", b), 0);
	assert_string_equal(a, b);
	ledger_code_mac(kd, "hall-3", 17, "0123456788", b);
	assert_string_not_equal(a, b);
	ledger_code_mac(kd, "hall-3", 18, "0123456789", b);
	assert_string_not_equal(a, b);
	ledger_code_mac(kd, "hall-4", 17, "0123456789", b);
	assert_string_not_equal(a, b);
	ledger_code_mac(ko, "hall-3", 17, "0123456789", b);
	assert_string_not_equal(a, b);

	/* A known answer, for a verifier in another language: seeds of 32
	 * bytes 0x01 (device) and 0x02 (platform). */
	memset(seed, 1, sizeof(seed));
	crypto_sign_seed_keypair(dpk, dsk, seed);
	memset(seed, 2, sizeof(seed));
	crypto_sign_seed_keypair(ppk, psk, seed);
	assert_int_equal(ledger_code_key(dsk, dpk, ppk, 1, kd), 0);
	assert_int_equal(ledger_code_mac(kd, "hall-3", 17, "0123456789", a), 0);
	assert_string_equal(a, CODE_MAC_KAT);
	sodium_memzero(psk, sizeof(psk));
	sodium_memzero(osk, sizeof(osk));
	sodium_memzero(dsk, sizeof(dsk));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_chain_verifies,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_partial_walk,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_edited_field,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_event_removed,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_events_swapped,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_other_key,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_prev_not_linked,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_sig_missing_or_malformed,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_not_json,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_keys,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_canonical_key_order,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_non_ascii,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_seal_refuses,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_restored_skip,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_signed_by,
		    chain_setup, chain_teardown),
		cmocka_unit_test_setup_teardown(test_code_mac,
		    chain_setup, chain_teardown),
	};

	/* ledger.c leaves sodium_init to its caller. */
	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
