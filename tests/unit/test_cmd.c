/*
 * The platform command codec (proto/cmd.c): a table of commands, each
 * with the verdict and, for a refusal, the field it must name. The
 * integration tests send the same kinds over MQTT; here every rule of
 * every op is covered without a broker.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "cmd.h"

#define HDR "\"request_id\":\"r-1\",\"exp\":1"
#define SIG "\"ts\":1,\"nonce\":\"nonce-0000000001\",\"sig\":\"" \
	"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" \
	"AAAAAAAAAAAAAAAAAAAAA\""
#define PWH(m, t) "\"$argon2id$v=19$m=" m ",t=" t ",p=1$c2FsdA$aGFzaA\""

struct verdict {
	const char *json;
	const char *field;     /* NULL: accepted */
};

static const struct verdict table[] = {
	{ "{\"op\":\"ping\"," HDR "}", NULL },
	{ "{\"op\":\"ping\",\"exp\":1}", "request_id" },
	{ "{\"op\":\"ping\",\"request_id\":\"r 1\",\"exp\":1}", "request_id" },
	{ "{\"op\":\"ping\",\"request_id\":\"r-1\",\"exp\":-1}", "exp" },
	{ "{\"op\":\"fly\"," HDR "}", "op" },
	{ "{\"op\":\"reserve\"," HDR ",\"app\":\"A-1\",\"size\":\"M\"}", NULL },
	{ "{\"op\":\"reserve\"," HDR ",\"app\":\"A-1\",\"size\":\"XL\"}",
	    "size" },
	{ "{\"op\":\"reserve\"," HDR ",\"app\":\"\",\"size\":\"S\"}", "app" },
	{ "{\"op\":\"reserve\"," HDR ",\"app\":\"A\",\"size\":\"S\","
	    "\"phone\":\"12a4\"}", "phone" },
	{ "{\"op\":\"reserve\"," HDR ",\"app\":\"A\",\"size\":\"S\","
	    "\"valid_s\":59}", "valid_s" },
	{ "{\"op\":\"service\"," HDR ",\"cell\":3,\"in\":1}", "in" },
	{ "{\"op\":\"service\"," HDR ",\"cell\":1000,\"in\":true}", "cell" },
	{ "{\"op\":\"open\"," HDR ",\"cell\":3}", "ts" },
	{ "{\"op\":\"open\"," HDR ",\"cell\":3," SIG "}", NULL },
	{ "{\"op\":\"load\"," HDR ",\"app\":\"A-1\",\"size\":\"M\","
	    "\"staff\":\"alice\"," SIG "}", NULL },
	{ "{\"op\":\"load\"," HDR ",\"app\":\"A-1\",\"size\":\"M\"," SIG "}",
	    "staff" },
	{ "{\"op\":\"load\"," HDR ",\"app\":\"A-1\",\"size\":\"M\","
	    "\"staff\":\"al ice\"," SIG "}", "staff" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"admin\",\"pin_hash\":" PWH("8192", "3") "," SIG "}",
	    NULL },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"admin\",\"pin_hash\":" PWH("65536", "10") "," SIG "}",
	    NULL },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"root\",\"pin_hash\":" PWH("8192", "3") "," SIG "}",
	    "role" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"staff\",\"pin_hash\":" PWH("65537", "3") "," SIG "}",
	    "pin_hash" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"staff\",\"pin_hash\":" PWH("8192", "11") "," SIG "}",
	    "pin_hash" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"staff\",\"pin_hash\":" PWH("08192", "3") "," SIG "}",
	    "pin_hash" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"staff\",\"pin_hash\":\"$argon2i$v=19$m=8192,t=3,p=1"
	    "$c2FsdA$aGFzaA\"," SIG "}", "pin_hash" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"staff\",\"pin_hash\":\"$argon2id$v=19$m=8192,t=3,p=1"
	    "$c2FsdA$\"," SIG "}", "pin_hash" },
	{ "{\"op\":\"staff_add\"," HDR ",\"staff\":\"bob\",\"name\":\"Bob\","
	    "\"role\":\"staff\",\"pin_hash\":\"$argon2id$v=19$m=8192,t=3,p=2"
	    "$c2FsdA$aGFzaA\"," SIG "}", "pin_hash" },
	{ "{\"op\":\"staff_revoke\"," HDR ",\"staff\":\"bob\"," SIG "}", NULL },
	{ "{\"op\":\"staff_revoke\"," HDR ",\"staff\":\"bob\"}", "ts" },
	{ "{\"op\":\"staff_revoke\"," HDR ",\"staff\":\"bob\",\"x\":1," SIG "}",
	    "x" },
	{ "{\"op\":\"ping\"," HDR ",\"op\":\"ping\"}", "" },
	{ "[1]", "" },
};

static void
codec_table(void **state)
{
	char field[48], why[160];
	struct cmd c;
	size_t i;
	int rc;

	(void)state;
	for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		rc = cmd_parse(table[i].json, strlen(table[i].json), &c, field,
		    sizeof(field), why, sizeof(why));
		if (table[i].field == NULL && rc != 0)
			fail_msg("%s: refused (%s: %s)", table[i].json, field,
			    why);
		if (table[i].field != NULL && (rc != -1 ||
		    strcmp(field, table[i].field) != 0 || why[0] == '\0'))
			fail_msg("%s: expected a refusal naming '%s', got rc %d "
			    "field '%s' (%s)", table[i].json, table[i].field, rc,
			    field, why);
		cmd_free(&c);
	}
}

/* A signature over the canonical bytes verifies; any change breaks it. */
static void
signature(void **state)
{
	static const char body[] = "{\"cell\":3,\"exp\":1,\"nonce\":"
	    "\"nonce-0000000001\",\"op\":\"open\",\"request_id\":\"r-1\","
	    "\"ts\":1}";
	uint8_t pk[32], sk[64], sig[64];
	char b64[100], text[400], field[48], why[160];
	struct cmd c;

	(void)state;
	assert_true(sodium_init() >= 0);
	crypto_sign_keypair(pk, sk);
	crypto_sign_detached(sig, NULL, (const uint8_t *)body,
	    strlen(body), sk);
	sodium_bin2base64(b64, sizeof(b64), sig, sizeof(sig),
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	/* Stored in another key order: the canonical form is what counts. */
	snprintf(text, sizeof(text), "{\"op\":\"open\",\"sig\":\"%s\","
	    "\"request_id\":\"r-1\",\"cell\":3,\"exp\":1,\"ts\":1,"
	    "\"nonce\":\"nonce-0000000001\"}", b64);
	assert_int_equal(cmd_parse(text, strlen(text), &c, field,
	    sizeof(field), why, sizeof(why)), 0);
	assert_int_equal(cmd_verify(&c, pk), 0);
	cmd_free(&c);
	snprintf(text, sizeof(text), "{\"op\":\"open\",\"sig\":\"%s\","
	    "\"request_id\":\"r-1\",\"cell\":4,\"exp\":1,\"ts\":1,"
	    "\"nonce\":\"nonce-0000000001\"}", b64);
	assert_int_equal(cmd_parse(text, strlen(text), &c, field,
	    sizeof(field), why, sizeof(why)), 0);
	assert_int_equal(cmd_verify(&c, pk), -1);
	cmd_free(&c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(codec_table),
		cmocka_unit_test(signature),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
