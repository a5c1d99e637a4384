/*
 * Platform commands (MQTT PREFIX/<locker>/cmd): strict decoding. Every
 * command is a JSON object with "op", "request_id" and "exp" (unix ms
 * after which it must not run), the op's own fields, and for ops that
 * open doors or provision staff a signature envelope: "ts" (unix ms),
 * "nonce" and "sig" (Ed25519 by the platform key, base64url, over the
 * canonical bytes of the command without "sig": compact, keys sorted,
 * non-ASCII escaped). Unknown fields, wrong types, out-of-range values
 * and oversized payloads are refused, naming the field.
 */
#ifndef LOCKERD_CMD_H
#define LOCKERD_CMD_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CMD_PAYLOAD_MAX 4096

struct cmd {
	json_t *obj;            /* the whole command (owned) */
	const char *op;
	const char *request_id;
	int64_t exp;
	int signed_op;          /* this op needs the signature envelope */
};

/*
 * Decodes payload. On error returns -1 with the offending field (or ""
 * for the whole message) and the reason; out->request_id is set when it
 * could be read, so the error can be correlated.
 */
int cmd_parse(const char *payload, size_t len, struct cmd *out, char *field,
    size_t fieldlen, char *why, size_t whylen);
void cmd_free(struct cmd *c);
/* Verifies "sig" with the platform's public key: 0 or -1. */
int cmd_verify(const struct cmd *c, const uint8_t pk[32]);
/* The ops this codec knows, for messages. */
const char *cmd_ops(void);

#endif
