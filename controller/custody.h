/*
 * Custody records: the signed rows that grant authority (reservations,
 * staff accounts) and their canonical JSON. A row's truth is its body, a
 * canonical JSON text; its signature is the device key's Ed25519 over
 * "lockerd/DOMAIN/1\n" followed by the body. Rows that do not verify are
 * not believed: whoever edits the database file cannot sign.
 */
#ifndef LOCKERD_CUSTODY_H
#define LOCKERD_CUSTODY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "bank.h"
#include "codes.h"
#include "resv.h"

/* The canonical text of a JSON object (malloc'ed), or NULL. */
char *custody_canon(json_t *o);
/* Canonical text of body and its signature. Returns 0 or -1. */
int custody_row_sign(const struct codes_keys *k, const char *domain,
    json_t *body, char **text, uint8_t sig[CODES_SIG_LEN]);
/*
 * The body of a stored row if its signature verifies and it is the
 * canonical text of a JSON object; else NULL with the reason in why.
 */
json_t *custody_row_open(const uint8_t pk[CODES_PK_LEN], const char *domain,
    const char *text, const void *sig, size_t siglen, char *why,
    size_t whylen);

/* A reservation as a JSON object (cells by number, hashes in hex). */
json_t *custody_resv_json(const struct resv *r, const struct bank *b);
/* Back from JSON; -1 with why if a field is missing or out of range. */
int custody_resv_parse(json_t *o, const struct bank *b, struct resv *r,
    char *why, size_t whylen);

#endif
