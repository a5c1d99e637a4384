/*
 * The custody ledger's seal: each event is a JSON object that carries its
 * gap-free "seq", the BLAKE2b-256 hash of the previous event ("prev", hex)
 * and an Ed25519 signature by the device key ("sig", base64url without
 * padding). Shared by lockerd (sealing, --verify-ledger) and by whatever
 * verifies on the platform side: it needs only jansson and libsodium.
 *
 * Canonical bytes of an event: json_dumps of the object without "sig",
 * with JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII. "prev" is the
 * BLAKE2b-256 (unkeyed, 32 bytes) of the previous event's canonical bytes;
 * the first event's "prev" is 64 zeros. "sig" signs the canonical bytes.
 *
 * A published event may carry transport fields that are not signed and
 * are left out of the canonical bytes: "replayed" (sent again after an
 * outage) and "code" (the plain code of an issuance, for the SMS). That
 * code is bound to the signed event all the same: the body carries
 * "code_mac" (ledger_code_mac), which only the locker and its platform
 * can compute, so a code edited on its way (in the database, before it
 * is delivered) is seen.
 *
 * Seqs are gap-free, with one exception: a "restored" event (the locker
 * resumed on a database restored from a backup, where the platform told
 * it to) may skip seqs, so that no seq the platform holds is used twice;
 * its "from_seq" names the event it follows and its "prev" is that
 * event's digest.
 */
#ifndef LOCKERD_LEDGER_H
#define LOCKERD_LEDGER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define LEDGER_HASH_LEN 32
#define LEDGER_SK_LEN 64
#define LEDGER_PK_LEN 32

/*
 * Sets "prev" (from prev, 32 bytes) and "sig" in ev (an object that holds
 * "seq"), replacing any there, and writes the event's own digest (the
 * next event's prev) into digest. Returns 0, or -1 if out of memory.
 */
int ledger_seal(json_t *ev, const uint8_t sk[LEDGER_SK_LEN],
    const uint8_t prev[LEDGER_HASH_LEN], uint8_t digest[LEDGER_HASH_LEN]);

/* The digest of an event as sealed (canonical bytes without "sig"). */
int ledger_digest(json_t *ev, uint8_t digest[LEDGER_HASH_LEN]);

/* Does ev's "sig" verify with pk (its chain aside)? 0 or -1. */
int ledger_signed_by(json_t *ev, const uint8_t pk[LEDGER_PK_LEN]);

/* Walking a chain: start with ledger_verify_init, feed events in order. */
struct ledger_verify {
	const uint8_t *pk;                 /* device public key */
	uint8_t prev[LEDGER_HASH_LEN];     /* expected "prev" of the next */
	int64_t next_seq;                  /* expected "seq" of the next */
	int64_t count;                     /* events verified so far */
	char error[160];                   /* why the last one failed */
};

/* first_seq: where the walk starts (1 for the whole ledger). */
void ledger_verify_init(struct ledger_verify *v,
    const uint8_t pk[LEDGER_PK_LEN], int64_t first_seq,
    const uint8_t prev[LEDGER_HASH_LEN]);
/*
 * Checks one event, the JSON text as stored or published: parses, checks
 * "seq" is the next, "prev" links to the one before, and "sig" verifies.
 * Returns 0, or -1 with the reason in v->error ("seq 12: prev does not
 * match seq 11", "seq 12: bad signature", ...); after a failure the walk
 * stops being meaningful.
 */
int ledger_verify_next(struct ledger_verify *v, const char *text, size_t len);

/*
 * The key a locker and its platform share for code MACs, from either
 * side: X25519 of the one's Ed25519 secret key (64 bytes, libsodium's
 * form) and the other's public key, hashed (BLAKE2b-256) after the domain
 * "lockerd/code-key/1\n" with both public keys, the device's first. The
 * device passes its own sk with i_am_device 1, the platform its own with
 * 0. Returns 0, or -1 for a key that is not a valid point.
 */
int ledger_code_key(const uint8_t my_sk[LEDGER_SK_LEN],
    const uint8_t device_pk[LEDGER_PK_LEN],
    const uint8_t platform_pk[LEDGER_PK_LEN], int i_am_device,
    uint8_t key[LEDGER_HASH_LEN]);
/*
 * "code_mac" of an issuance event: BLAKE2b-256 keyed with that key over
 * "lockerd/code/1\n" LOCKER "\n" SEQ "\n" CODE (seq in decimal), as 64
 * lower-case hex digits into hex. Returns 0 or -1 (out of memory).
 */
int ledger_code_mac(const uint8_t key[LEDGER_HASH_LEN], const char *locker,
    int64_t seq, const char *code, char hex[2 * LEDGER_HASH_LEN + 1]);

#endif
