/*
 * libFuzzer target: platform commands as they arrive over MQTT
 * (proto/cmd.c). Anything must be decoded or refused with a field and a
 * reason; a decoded command always has an op, a request id and an
 * expiry; signature checks never crash.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t pk[32], sk[64];
	static int ready;
	char field[48], why[160];
	struct cmd c;

	if (!ready) {
		if (sodium_init() < 0)
			abort();
		crypto_sign_keypair(pk, sk);
		ready = 1;
	}
	if (cmd_parse((const char *)data, size, &c, field, sizeof(field),
	    why, sizeof(why)) == 0) {
		if (c.op == NULL || c.request_id == NULL || c.exp < 0)
			abort();
		if (c.signed_op)
			(void)cmd_verify(&c, pk);
	} else if (why[0] == '\0')
		abort();
	cmd_free(&c);
	return 0;
}
