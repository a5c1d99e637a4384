/*
 * The command codec (proto/cmd.c) against the table of tests/cmd_cases.json,
 * which the contract test also runs through the JSON Schemas of
 * proto/schemas/commands/: each case is decoded or refused as the table
 * says, naming the field. And the example of each command schema decodes
 * and, for a signed op, verifies with the example platform key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <sodium.h>

#include "cmd.h"

#define CASES "tests/cmd_cases.json"
#define SCHEMAS "proto/schemas/commands"
/* Ed25519 from the seed SHA-256("lockerd example platform key"). */
#define EXAMPLE_PK "1c4c3c78968c0d2b5b8af50fb384334f73ddf1e63f4d0713e747" \
	"b10839d1e874"

static const char *const spec_ops[] = { "ping", "state", "rebirth",
	"reserve", "cancel", "reissue", "resv", "service", "open", "load",
	"staff_add", "staff_revoke", "restore_ack" };

/* Whether this codec knows op (it is in the list cmd_ops() gives). */
static int
codec_knows(const char *op)
{
	const char *s = cmd_ops(), *p;
	size_t n = strlen(op);

	/* An empty op would match everywhere, up to and past the end. */
	if (n == 0)
		return 0;
	for (p = strstr(s, op); p != NULL; p = strstr(p + 1, op))
		if ((p == s || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
			return 1;
	return 0;
}

/*
 * The bytes of a case, as the contract test builds them: "raw" text,
 * "raw_hex" bytes, or "cmd" compact, padded with spaces after the opening
 * brace to "pad" bytes.
 */
static char *
case_payload(json_t *c, size_t *len)
{
	json_t *raw = json_object_get(c, "raw"), *hex = json_object_get(c,
	    "raw_hex"), *pad = json_object_get(c, "pad");
	char *text, *out;
	size_t n, want;

	if (raw != NULL) {
		n = json_string_length(raw);
		out = malloc(n + 1);
		assert_non_null(out);
		memcpy(out, json_string_value(raw), n + 1);
		*len = n;
		return out;
	}
	if (hex != NULL) {
		n = json_string_length(hex) / 2;
		out = malloc(n + 1);
		assert_non_null(out);
		assert_int_equal(sodium_hex2bin((unsigned char *)out, n,
		    json_string_value(hex), json_string_length(hex), NULL, len,
		    NULL), 0);
		return out;
	}
	text = json_dumps(json_object_get(c, "cmd"), JSON_COMPACT);
	assert_non_null(text);
	n = strlen(text);
	if (pad == NULL) {
		*len = n;
		return text;
	}
	want = (size_t)json_integer_value(pad);
	assert_true(want >= n);
	out = malloc(want + 1);
	assert_non_null(out);
	out[0] = '{';
	memset(out + 1, ' ', want - n);
	memcpy(out + 1 + want - n, text + 1, n);
	free(text);
	*len = want;
	return out;
}

static void
test_the_table_of_cases(void **state)
{
	char field[48], why[160], *payload;
	json_t *cases, *c, *op, *want_field, *todo;
	size_t i, len;
	int rc, valid, wrong = 0, skipped = 0, todos = 0, checked = 0;
	json_error_t err;
	struct cmd cmd;

	(void)state;
	cases = json_load_file(CASES, JSON_REJECT_DUPLICATES, &err);
	if (cases == NULL)
		fail_msg("%s:%d: %s", CASES, err.line, err.text);
	json_array_foreach(cases, i, c) {
		const char *name = json_string_value(json_object_get(c,
		    "name"));

		op = json_object_get(json_object_get(c, "cmd"), "op");
		/* Ops of the spec that this codec does not have yet. */
		if (json_is_string(op) && !codec_knows(json_string_value(op))) {
			size_t k;

			for (k = 0; k < sizeof(spec_ops) / sizeof(spec_ops[0]);
			    k++)
				if (strcmp(spec_ops[k], json_string_value(op))
				    == 0)
					break;
			if (k < sizeof(spec_ops) / sizeof(spec_ops[0])) {
				skipped++;
				continue;
			}
		}
		payload = case_payload(c, &len);
		rc = cmd_parse(payload, len, &cmd, field, sizeof(field), why,
		    sizeof(why));
		free(payload);
		cmd_free(&cmd);
		valid = json_is_true(json_object_get(c, "valid"));
		want_field = json_object_get(c, "field");
		todo = json_object_get(c, "codec_todo");
		checked++;
		if (todo != NULL) {
			/* A known gap: the codec takes what the spec refuses. */
			if (rc == 0) {
				todos++;
				continue;
			}
			print_error("%s: the codec refuses it now (%s: %s); "
			    "drop its codec_todo\n", name, field, why);
			wrong++;
			continue;
		}
		if ((rc == 0) != valid) {
			print_error("%s: the codec %s (%s%s%s), the table says "
			    "%s\n", name, rc == 0 ? "takes it" : "refuses it",
			    field, rc == 0 ? "" : ": ", rc == 0 ? "" : why,
			    valid ? "valid" : "invalid");
			wrong++;
		} else if (rc == -1 && want_field != NULL &&
		    strcmp(field, json_string_value(want_field)) != 0) {
			print_error("%s: the codec names '%s' (%s), the table "
			    "'%s'\n", name, field, why,
			    json_string_value(want_field));
			wrong++;
		}
	}
	print_message("%d cases through the codec, %d known gaps "
	    "(codec_todo), %d skipped: ops this codec does not have yet\n",
	    checked, todos, skipped);
	json_decref(cases);
	assert_int_equal(wrong, 0);
	assert_true(checked > 100);
}

static void
test_schema_examples_decode_and_verify(void **state)
{
	uint8_t pk[32];
	char path[256], field[48], why[160], *text;
	json_t *schema, *ex;
	json_error_t err;
	struct cmd cmd;
	size_t i, k;
	int n = 0;

	(void)state;
	assert_int_equal(sodium_hex2bin(pk, sizeof(pk), EXAMPLE_PK,
	    strlen(EXAMPLE_PK), NULL, NULL, NULL), 0);
	for (k = 0; k < sizeof(spec_ops) / sizeof(spec_ops[0]); k++) {
		if (!codec_knows(spec_ops[k]))
			continue;
		snprintf(path, sizeof(path), "%s/%s.json", SCHEMAS,
		    spec_ops[k]);
		if ((schema = json_load_file(path, 0, &err)) == NULL)
			fail_msg("%s:%d: %s", path, err.line, err.text);
		json_array_foreach(json_object_get(schema, "examples"), i,
		    ex) {
			text = json_dumps(ex, JSON_COMPACT);
			assert_non_null(text);
			if (cmd_parse(text, strlen(text), &cmd, field,
			    sizeof(field), why, sizeof(why)) == -1)
				fail_msg("%s example: %s %s", spec_ops[k],
				    field, why);
			if (cmd.signed_op && cmd_verify(&cmd, pk) == -1)
				fail_msg("%s example: the signature does not "
				    "verify", spec_ops[k]);
			cmd_free(&cmd);
			free(text);
			n++;
		}
		json_decref(schema);
	}
	assert_true(n >= 9);
}

/* The request id of payloads that do not decode (cmd_scan_request_id()),
 * and that cmd_parse() puts it in its refusal. */
static void
test_request_id_of_a_bad_payload(void **state)
{
	static const struct {
		const char *payload;
		const char *rid;        /* NULL: none to be read */
	} t[] = {
		{ "{\"request_id\":\"r-1\",\"exp\":123456789012345678901234567890}",
		    "r-1" },
		{ "{\"a\":[[[{\"request_id\":\"inner\"}]]],\"request_id\":\"r-2\",\"x\":",
		    "r-2" },
		{ " \n{ \"op\" : \"ping\" , \"request_id\" : \"r-3\" ", "r-3" },
		{ "{\"s\":\"a \\\" \\\\ }\",\"request_id\":\"r-4\"}", "r-4" },
		{ "{\"a\":[[[[[[", NULL },
		{ "{\"a\":{\"request_id\":\"nested\"}}", NULL },
		{ "[{\"request_id\":\"r-5\"}]", NULL },
		{ "{\"request_id\":\"with space\"}", NULL },
		{ "{\"request_id\":\"esc\\u0041\",\"x\":", NULL },
		{ "{\"request_id\":12}", NULL },
		{ "{\"request_\\u0069d\":\"r-6\",", NULL },
		{ "{\"request_id\":\"", NULL },
		{ "{\"request_id\":\"rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr\"}",
		    NULL },
		{ "", NULL },
	};
	char out[CMD_ID_MAX + 1], field[48], why[160];
	struct cmd c;
	size_t i;
	int rc;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		rc = cmd_scan_request_id(t[i].payload, strlen(t[i].payload),
		    out);
		if (t[i].rid == NULL && rc == 0)
			fail_msg("%s: scanned %s", t[i].payload, out);
		if (t[i].rid != NULL && (rc != 0 || strcmp(out, t[i].rid) !=
		    0))
			fail_msg("%s: scanned %s, want %s", t[i].payload,
			    rc == 0 ? out : "nothing", t[i].rid);
		assert_int_equal(cmd_parse(t[i].payload, strlen(t[i].payload),
		    &c, field, sizeof(field), why, sizeof(why)), -1);
		if ((c.request_id == NULL) != (t[i].rid == NULL) ||
		    (t[i].rid != NULL && strcmp(c.request_id, t[i].rid) != 0))
			fail_msg("%s: the refusal carries %s", t[i].payload,
			    c.request_id ? c.request_id : "null");
		cmd_free(&c);
	}
}

/* The digest: what the command asks, not how it was sent or signed. */
static void
test_digest(void **state)
{
	static const char *const same[] = {
		"{\"op\":\"open\",\"request_id\":\"a\",\"exp\":1,\"cell\":5,"
		"\"locker\":\"L\",\"ts\":1,\"nonce\":\"nnnnnnnnnnnnnnnn\",\"sig\":\""
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		"AAAAAAAAAAAAAAAAAAAA\"}",
		"{\"cell\":5,\"locker\":\"L\",\"op\":\"open\",\"request_id\":\"b\","
		"\"exp\":99,\"ts\":2,\"nonce\":\"mmmmmmmmmmmmmmmm\",\"sig\":\""
		"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
		"BBBBBBBBBBBBBBBBBBBA\"}",
	};
	static const char *const other[] = {
		"{\"op\":\"open\",\"request_id\":\"a\",\"exp\":1,\"cell\":6,"
		"\"locker\":\"L\",\"ts\":1,\"nonce\":\"nnnnnnnnnnnnnnnn\",\"sig\":\""
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		"AAAAAAAAAAAAAAAAAAAA\"}",
		"{\"op\":\"open\",\"request_id\":\"a\",\"exp\":1,\"cell\":5,"
		"\"locker\":\"M\",\"ts\":1,\"nonce\":\"nnnnnnnnnnnnnnnn\",\"sig\":\""
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		"AAAAAAAAAAAAAAAAAAAA\"}",
		"{\"op\":\"service\",\"request_id\":\"a\",\"exp\":1,\"cell\":5,"
		"\"in\":true,\"locker\":\"L\",\"ts\":1,\"nonce\":\"nnnnnnnnnnnnnnnn\","
		"\"sig\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
		"AAAAAAAAAAAAAAAAAAAAAAAAA\"}",
	};
	uint8_t d0[CMD_DIGEST_LEN], d[CMD_DIGEST_LEN];
	char field[48], why[160];
	struct cmd c;
	size_t i;

	(void)state;
	for (i = 0; i < 2 + sizeof(other) / sizeof(other[0]); i++) {
		const char *p = i < 2 ? same[i] : other[i - 2];

		if (cmd_parse(p, strlen(p), &c, field, sizeof(field), why,
		    sizeof(why)) == -1)
			fail_msg("%s: %s %s", p, field, why);
		assert_int_equal(cmd_digest(&c, i == 0 ? d0 : d), 0);
		cmd_free(&c);
		if (i == 1)
			assert_memory_equal(d, d0, sizeof(d));
		else if (i > 1)
			assert_memory_not_equal(d, d0, sizeof(d));
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_table_of_cases),
		cmocka_unit_test(test_schema_examples_decode_and_verify),
		cmocka_unit_test(test_request_id_of_a_bad_payload),
		cmocka_unit_test(test_digest),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
