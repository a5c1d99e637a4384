/*
 * Codes and signatures (libsodium): the device keys, one-time human codes
 * and their keyed hashes, signed credentials for QR codes, and the
 * signatures and hash chain of the ledger. Pure apart from randomness,
 * which is injectable so tests can fix it.
 */
#ifndef LOCKERD_CODES_H
#define LOCKERD_CODES_H

#include <stddef.h>
#include <stdint.h>

#define CODES_HASH_LEN 32
#define CODES_SIG_LEN 64
#define CODES_PK_LEN 32
#define CODES_DIGITS_MIN 6
#define CODES_DIGITS_MAX 12
#define CODES_CRED_MAX 256     /* base64url credential, with NUL */

/* The device keys: Ed25519 signing key and the code-hashing key. */
struct codes_keys {
	uint8_t sign_sk[64];
	uint8_t sign_pk[CODES_PK_LEN];
	uint8_t hash_key[32];
};

/* Uniform random integer in [0, upper): randombytes_uniform by default. */
typedef uint32_t (*codes_uniform_fn)(uint32_t upper);

/* Must be called once, before anything else (sodium_init). */
int codes_init(void);
/* Replaces the random source (tests); NULL restores libsodium's. */
void codes_set_uniform(codes_uniform_fn fn);

/*
 * Loads the key file, or creates it (mode 0600) if it does not exist.
 * Refuses a file that group or others can read, or that is not ours.
 * The keys live in sodium_malloc'ed, read-only memory; codes_keys_free
 * wipes them. On error returns NULL with the reason in err.
 */
struct codes_keys *codes_keys_load(const char *path, char *err,
    size_t errlen);
/*
 * The same, but with create 0 a missing file is an error (errno ENOENT):
 * lockerd makes keys only on a first start with an empty database.
 */
struct codes_keys *codes_keys_open(const char *path, int create, char *err,
    size_t errlen);
void codes_keys_free(struct codes_keys *k);
/* Fresh keys in memory only (tests, tools). */
struct codes_keys *codes_keys_new(void);

/* A code of n digits (6..12), uniform, into out (n + 1 bytes). */
void codes_generate(char *out, int n);
/* Keyed BLAKE2b of a code; domain separates codes from second factors. */
void codes_hash(const struct codes_keys *k, const char *what,
    const char *digits, uint8_t out[CODES_HASH_LEN]);
/* Constant-time comparison of two hashes: 1 if equal. */
int codes_equal(const uint8_t *a, const uint8_t *b, size_t len);
/* Digits only, length in [min, max]. */
int codes_valid_digits(const char *s, int min, int max);

/* Signs a message (detached); verifies with a public key. */
void codes_sign(const struct codes_keys *k, const void *msg, size_t len,
    uint8_t sig[CODES_SIG_LEN]);
int codes_verify(const uint8_t pk[CODES_PK_LEN], const void *msg, size_t len,
    const uint8_t sig[CODES_SIG_LEN]);
/* Keyed BLAKE2b of any bytes with the hash key; what separates uses
 * ("mark": the ledger's mark, mark.c). */
void codes_mac(const struct codes_keys *k, const char *what, const void *msg,
    size_t len, uint8_t out[CODES_HASH_LEN]);
/* BLAKE2b-256 of a message (the ledger chain). */
void codes_digest(const void *msg, size_t len, uint8_t out[CODES_HASH_LEN]);

/* Hex and base64url helpers; return -1 if out is too small / bad input. */
int codes_hex(const uint8_t *bin, size_t len, char *out, size_t outlen);
int codes_unhex(const char *hex, uint8_t *bin, size_t len);
int codes_b64(const uint8_t *bin, size_t len, char *out, size_t outlen);
int codes_unb64(const char *b64, uint8_t *bin, size_t maxlen, size_t *len);

/* What a signed credential (the QR form of a code) says. */
enum codes_purpose { CODES_DROPOFF = 1, CODES_PICKUP = 2 };

struct codes_cred {
	char locker[65];
	int64_t resv;
	int cell;
	enum codes_purpose purpose;
	int64_t not_after;       /* unix seconds */
	uint8_t code_hash[CODES_HASH_LEN];
};

/*
 * Encodes and signs: "LKC1" | u8 len | locker | u64 resv | u16 cell |
 * u8 purpose | i64 not_after | code_hash, then the Ed25519 signature,
 * all big-endian, as base64url without padding.
 */
int codes_cred_make(const struct codes_keys *k, const struct codes_cred *c,
    char *out, size_t outlen);
/*
 * Decodes and checks the signature against pk. Returns 0, or -1 with a
 * reason (malformed, wrong version, bad signature).
 */
int codes_cred_parse(const uint8_t pk[CODES_PK_LEN], const char *s,
    struct codes_cred *out, const char **reason);

#endif
