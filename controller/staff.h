/*
 * Staff accounts: id, name, role and a PIN stored with crypto_pwhash
 * (Argon2id). Kept as signed rows (custody.h): an account inserted into
 * the database by hand is not believed.
 */
#ifndef LOCKERD_STAFF_H
#define LOCKERD_STAFF_H

#include <stdint.h>

#include "codes.h"
#include "store.h"

#define STAFF_ID_MAX 32
#define STAFF_NAME_MAX 64
#define STAFF_PIN_MIN 6
#define STAFF_PIN_MAX 12
#define STAFF_HASH_MAX 128

struct staff {
	char id[STAFF_ID_MAX];
	char name[STAFF_NAME_MAX];
	char role[16];                 /* "staff" | "admin" */
	char pin_hash[STAFF_HASH_MAX]; /* crypto_pwhash_str, Argon2id */
	int64_t created;
	int revoked;                   /* kept, so the id cannot come back
	                                  by a row put back from before */
	int64_t last_seq;              /* its newest staff_* ledger event */
};

/* 1-31 of A-Z a-z 0-9 _ . - */
int staff_valid_id(const char *id);
int staff_valid_role(const char *role);
/*
 * Argon2id of the PIN at the configured cost (memory in KiB, passes:
 * [kiosk] pin_hash_kib, pin_hash_passes); -1 if the PIN is not 6-12
 * digits or no memory.
 */
int staff_hash_pin(const char *pin, int kib, int passes,
    char out[STAFF_HASH_MAX]);
/*
 * The cost a hash was made with, read from its text
 * ("$argon2id$v=19$m=KIB,t=PASSES,p=1$..."); -1 if it is no such hash.
 */
int staff_hash_cost(const char *hash, long *kib, long *passes);
/*
 * A hash made elsewhere (the platform's staff_add) must cost exactly the
 * configured kib and passes: more would stall the main loop at every
 * log-in, and any other cost would let a log-in's time tell this account
 * from an unknown id, whose check costs the configured amount. -1 and
 * why if not.
 */
int staff_cost_check(const char *hash, int kib, int passes, char *why,
    size_t len);
/* 1 if pin matches, 0 if not (constant work either way). */
int staff_check_pin(const struct staff *s, const char *pin);

/*
 * Writes (or replaces) an account, signed, in its own transaction, tied
 * to the account's newest ledger event (the local --add-staff path,
 * which appends no event of its own).
 */
int staff_put(struct store *st, const struct codes_keys *k,
    struct staff *s);
/* Writes the row inside the caller's transaction, as s->last_seq says. */
int staff_write(struct store *st, const struct codes_keys *k,
    const struct staff *s);
/*
 * Reads and verifies an account: 0 found (possibly revoked: check
 * out->revoked), 1 no such id, 2 the row does not verify or is older than
 * the account's newest ledger event (logged as tampering), -1 database
 * error.
 */
int staff_get(struct store *st, const uint8_t pk[CODES_PK_LEN],
    const char *id, struct staff *out);

/*
 * At start: every stored account that does not verify, or is older than
 * its newest ledger event, is named to rejected (id, why) after the scan.
 */
int staff_scan(struct store *st, const uint8_t pk[CODES_PK_LEN],
    void (*rejected)(const char *id, const char *why, void *arg), void *arg);

#endif
