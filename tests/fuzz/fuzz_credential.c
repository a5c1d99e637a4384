/*
 * libFuzzer target: scanned QR credentials (codes_cred_parse). Whatever
 * the scanner hands over must be refused cleanly unless the device key
 * signed it; a credential that parses must encode back to the same text.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct codes_keys *keys;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char text[CODES_CRED_MAX + 64], again[CODES_CRED_MAX];
	struct codes_cred c;
	const char *reason = NULL;

	if (keys == NULL) {
		if (codes_init() == -1 || (keys = codes_keys_new()) == NULL)
			abort();
	}
	if (size >= sizeof(text))
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	if (codes_cred_parse(keys->sign_pk, text, &c, &reason) == 0) {
		/* Only the key's own signature gets here: re-encode. */
		if (codes_cred_make(keys, &c, again, sizeof(again)) == -1 ||
		    strcmp(again, text) != 0)
			abort();
	} else if (reason == NULL || *reason == '\0')
		abort();
	/* Half the time, fuzz a validly signed credential's fields instead. */
	if (size >= 8 && (data[0] & 1)) {
		memset(&c, 0, sizeof(c));
		memcpy(c.locker, "L", 2);
		memcpy(&c.resv, data, 8);
		c.cell = data[1];
		c.purpose = (data[2] & 1) ? CODES_DROPOFF : CODES_PICKUP;
		if (c.resv < 0)
			c.resv = -(c.resv + 1);
		if (codes_cred_make(keys, &c, again, sizeof(again)) == 0 &&
		    codes_cred_parse(keys->sign_pk, again, &c, &reason) != 0)
			abort();
	}
	return 0;
}
