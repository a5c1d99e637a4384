/*
 * Reservations: who may open which cell, and only once. The lifecycles of
 * drop-off (reserved -> opening -> open -> deposited -> retrieved) and
 * pickup (loading -> ready [-> overdue] -> opening -> open -> collected,
 * or taken back), with expiry, cancel and re-issue. Pure: wall-clock time
 * in, actions out; codes arrive as keyed hashes, never as digits.
 */
#ifndef LOCKERD_RESV_H
#define LOCKERD_RESV_H

#include <stdint.h>

#include "bank.h"

#define RESV_HASH_LEN 32
#define RESV_APP_MAX 48
#define RESV_STAFF_MAX 32

enum resv_kind { RESV_DROPOFF = 1, RESV_PICKUP = 2 };

enum resv_state {
	RESV_RESERVED,     /* drop-off: code issued, waiting for the applicant */
	RESV_OPENING,      /* code consumed, unlock in flight (grace window) */
	RESV_OPEN,         /* the applicant's door is open */
	RESV_DEPOSITED,    /* drop-off: documents inside, for staff */
	RESV_RETRIEVING,   /* staff opened a deposited cell */
	RESV_LOADING,      /* pickup: staff opened a cell to load */
	RESV_READY,        /* pickup: code issued, item inside */
	RESV_OVERDUE,      /* pickup: past due, code still valid */
	RESV_TAKING_BACK,  /* pickup: staff opened it to take the item back */
	/* Terminal: the cell is free again. */
	RESV_RETRIEVED, RESV_COLLECTED, RESV_RETURNED, RESV_EXPIRED,
	RESV_CANCELLED, RESV_LOAD_FAILED,
};

struct resv {
	int64_t id;
	int cell;                      /* index into bank cells */
	enum resv_kind kind;
	enum resv_state state;
	char app[RESV_APP_MAX];        /* application number */
	char staff[RESV_STAFF_MAX];    /* who loaded / retrieves */
	uint8_t code_hash[RESV_HASH_LEN];
	int has_code;
	uint8_t phone_hash[RESV_HASH_LEN];
	int has_phone;                 /* second factor required */
	int64_t valid_until;           /* drop-off: code expiry; pickup: due */
	int64_t consumed_at;           /* when the code opened it (grace) */
	int64_t created_at;
	int cancelled;                 /* cancelled with an item inside */
	int door_seen_open;
	int reassigned;                /* this opening moved cells (not stored) */
	int issued;                    /* codes issued so far (re-issues) */
	int64_t last_seq;              /* its newest ledger event (records) */
};

enum resv_act_type {
	RESV_ACT_EVENT,     /* ledger event ev for resv */
	RESV_ACT_SAVE,      /* persist resv (signed row) */
	RESV_ACT_UNLOCK,    /* bank_unlock(cell, reason) */
	RESV_ACT_NEED_CODE, /* make a code for resv and call resv_code_set */
	RESV_ACT_NOTICE,    /* tell the keypad screen (text) */
};

enum resv_event {
	RESV_EV_RESERVED, RESV_EV_CODE_ISSUED, RESV_EV_CODE_USED,
	RESV_EV_DEPOSITED, RESV_EV_RETRIEVED, RESV_EV_EXPIRED,
	RESV_EV_CANCELLED, RESV_EV_LOAD_STARTED, RESV_EV_LOAD_FAILED,
	RESV_EV_READY, RESV_EV_COLLECTED, RESV_EV_OVERDUE, RESV_EV_RETURNED,
	RESV_EV_CODE_RESTORED, RESV_EV_REASSIGNED, RESV_EV_REISSUED,
	RESV_EV_TAKE_BACK,
};

struct resv_action {
	enum resv_act_type type;
	enum resv_event ev;
	struct resv r;                  /* the reservation as of this action */
	int slot;                       /* index into the table */
	int cell;
	int from_cell;                  /* RESV_EV_REASSIGNED */
	char reason[16];
	char text[128];
};

#define RESV_ACTIONS_MAX 32

struct resv_actions {
	struct resv_action a[RESV_ACTIONS_MAX];
	int n;
	int overflow;
};

enum resv_refusal {
	RESV_OK,
	RESV_ERR_NO_CODE,        /* unknown code or wrong second factor */
	RESV_ERR_EXPIRED,
	RESV_ERR_USED,
	RESV_ERR_FULL,           /* no free cell of that size or larger */
	RESV_ERR_NO_RESV,
	RESV_ERR_STATE,          /* not possible in the reservation's state */
	RESV_ERR_CELL,           /* the cell cannot be opened now */
	RESV_ERR_NOTHING,        /* nothing to retrieve / take back */
	RESV_ERR_TABLE_FULL,
	RESV_ERR_CANCELLED,      /* the reservation was cancelled */
	RESV_ERR_IN_PROGRESS,    /* the code is in use: its unlock is under way */
	RESV_ERR_PHONE_NEEDED,   /* a scanned credential: now the phone digits */
};

struct resv_timing {
	int64_t grace_ms;        /* a consumed code re-opens within this */
	int64_t pickup_due_ms;   /* pickup: overdue after this */
};

/* Codes that expired lately, so the keypad can say so (memory only). */
#define RESV_EXPIRED_KEEP 64

struct resv_expired {
	uint8_t code_hash[RESV_HASH_LEN];
	uint8_t phone_hash[RESV_HASH_LEN];
	int has_phone;
};

struct resv_table {
	struct resv *r;                  /* active reservations; slot free if id 0 */
	int cap;                         /* one per cell: a cell holds one */
	int *cell_slot;                  /* per bank cell: its slot or -1 */
	int n;                           /* slots in use (highest + 1) */
	struct resv_timing t;
	const struct bank *bank;
	int64_t next_id;
	char retrieve_staff[RESV_STAFF_MAX]; /* a retrieval run in progress */
	struct resv_expired expired[RESV_EXPIRED_KEEP]; /* a ring */
	int expired_n, expired_next;
};

/* Allocates one slot per cell of the bank; -1 if out of memory. */
int resv_init(struct resv_table *t, const struct bank *b,
    const struct resv_timing *tm, int64_t next_id);
void resv_free(struct resv_table *t);
/* Start-up: puts a stored active reservation back (already verified). */
int resv_restore(struct resv_table *t, const struct resv *r);

/* Drop-off for a size class ('S','M','L'): the smallest free cell fits. */
enum resv_refusal resv_reserve(struct resv_table *t, const char *app,
    char size, int64_t valid_until, const uint8_t *phone_hash, int64_t now,
    struct resv_actions *out, int *slot);
/* A new code (its hash) for the reservation: issue or re-issue. */
void resv_code_set(struct resv_table *t, int slot, const uint8_t *hash,
    int64_t now, struct resv_actions *out);
/* Is this hash already some live reservation's code? */
int resv_code_taken(const struct resv_table *t, const uint8_t *hash);

/*
 * The keypad: a code (hash) and optional second factor (hash or NULL).
 * A code whose unlock is still under way is RESV_ERR_IN_PROGRESS: it is
 * neither a failure nor a new success (a jammed door must not turn one
 * real code into endless successes).
 */
enum resv_refusal resv_enter(struct resv_table *t, const uint8_t *code_hash,
    const uint8_t *phone_hash, int64_t now, struct resv_actions *out,
    int *slot);
/*
 * A scanned credential names the reservation and the code hash. The
 * second factor applies to it as to the typed code: phone_hash NULL for
 * a reservation that asks for one is RESV_ERR_PHONE_NEEDED (a credential
 * is the locker's own signature, not a guess, so the screen may ask for
 * the digits); wrong digits are RESV_ERR_NO_CODE.
 */
enum resv_refusal resv_enter_credential(struct resv_table *t, int64_t id,
    int cell_number, const uint8_t *code_hash, const uint8_t *phone_hash,
    int64_t not_after, int64_t now, struct resv_actions *out, int *slot);

/* From the bank: what the doors did. */
void resv_door_opened(struct resv_table *t, int cell, int64_t now,
    struct resv_actions *out);
void resv_door_closed(struct resv_table *t, int cell, int64_t now,
    struct resv_actions *out);
/* The unlock did not open the door (jammed) or was not sent. */
void resv_unlock_failed(struct resv_table *t, int cell, int64_t now,
    struct resv_actions *out);

/* Staff. */
enum resv_refusal resv_load(struct resv_table *t, const char *app, char size,
    const char *staff, int64_t now, struct resv_actions *out, int *slot);
enum resv_refusal resv_retrieve(struct resv_table *t, const char *staff,
    int64_t now, struct resv_actions *out);
enum resv_refusal resv_take_back(struct resv_table *t, const char *staff,
    int64_t now, struct resv_actions *out);

/* The platform (or operator). */
enum resv_refusal resv_cancel(struct resv_table *t, int64_t id, int64_t now,
    struct resv_actions *out);
enum resv_refusal resv_reissue(struct resv_table *t, int64_t id, int64_t now,
    struct resv_actions *out);

/* Expiry, overdue, grace windows; returns the next deadline. */
void resv_tick(struct resv_table *t, int64_t now, struct resv_actions *out);
int64_t resv_next_deadline(const struct resv_table *t);

int resv_slot_of_cell(const struct resv_table *t, int cell);
/*
 * A cell a reservation could get: in service, on a board that answers,
 * closed, not unlocking, no item sensed, held by no reservation.
 */
int resv_cell_free(const struct resv_table *t, int cell);
int resv_slot_of_id(const struct resv_table *t, int64_t id);
int resv_is_terminal(enum resv_state s);
const char *resv_state_name(enum resv_state s);
int resv_state_parse(const char *s, enum resv_state *out);
const char *resv_event_name(enum resv_event ev);
const char *resv_refusal_str(enum resv_refusal r);

#endif
