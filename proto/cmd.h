/*
 * Platform commands (MQTT PREFIX/<locker>/cmd): strict decoding. Every
 * command is a JSON object with "op", "request_id" and "exp" (unix ms
 * after which it must not run), the op's own fields, and for every op
 * that changes custody, staff or service or reveals a code, a signature
 * envelope: "locker" (the target locker's id), "ts" (unix ms), "nonce" and
 * "sig" (Ed25519 by the platform key, base64url, over the canonical bytes
 * of the command without "sig": compact, keys sorted, non-ASCII escaped).
 * Only the read-only ops (ping, state, resv) and rebirth go unsigned.
 * Unknown fields, wrong types, out-of-range values and oversized payloads
 * are refused, naming the field.
 */
#ifndef LOCKERD_CMD_H
#define LOCKERD_CMD_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CMD_PAYLOAD_MAX 4096
/* How far into a payload that does not decode the request id is looked
 * for (cmd_parse()), so that even a refusal can be correlated. */
#define CMD_SCAN_MAX (16 * CMD_PAYLOAD_MAX)
#define CMD_ID_MAX 64
#define CMD_DIGEST_LEN 32

struct cmd {
	json_t *obj;            /* the whole command (owned) */
	const char *op;
	const char *request_id;
	const char *locker;     /* the target locker, NULL if not given */
	const char *nonce;      /* signed ops */
	int64_t exp;
	int64_t ts;             /* signed ops */
	int signed_op;          /* this op needs the signature envelope */
	char rid[CMD_ID_MAX + 1];  /* request_id read from a bad payload */
};

/*
 * Decodes payload. On error returns -1 with the offending field (or ""
 * for the whole message) and the reason; out->request_id is set whenever
 * a valid one can be read, even from a payload that is too long, nested
 * too deep or not JSON at all, so the error can be correlated.
 */
int cmd_parse(const char *payload, size_t len, struct cmd *out, char *field,
    size_t fieldlen, char *why, size_t whylen);
void cmd_free(struct cmd *c);
/* Verifies "sig" with the platform's public key: 0 or -1. */
int cmd_verify(const struct cmd *c, const uint8_t pk[32]);
/*
 * What the command asks for: BLAKE2b-256 of its canonical bytes without
 * the request id, the expiry and the signature envelope (ts, nonce, sig),
 * so that a platform may sign a retry afresh and still be recognised as
 * the same command. 0 or -1 (out of memory).
 */
int cmd_digest(const struct cmd *c, uint8_t out[CMD_DIGEST_LEN]);
/*
 * The value of a top-level "request_id" in JSON text that need not parse
 * (too long, too deep, a number out of range, broken after the id): a
 * scan of at most CMD_SCAN_MAX bytes that allocates nothing. Copies a
 * valid request id into out (CMD_ID_MAX + 1 bytes) and returns 0, or -1.
 */
int cmd_scan_request_id(const char *payload, size_t len, char *out);
/* The ops this codec knows, for messages. */
const char *cmd_ops(void);

#endif
