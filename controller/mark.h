/*
 * The ledger's high-water mark and the start-up check of the database
 * against it. The mark (head seq and hash, the newest checkpoint, the
 * delivered prefix, the boot counter) lives outside the database, in
 * PATH-mark, MACed with the device's hash key, written a moment after
 * each commit that appends events and synced at most once a second (so
 * after a power cut it is behind, never ahead): a database behind it (a
 * restored backup, a cut tail) holds lockerd until the platform's signed
 * restore_ack says where to resume. Checkpoint events (every MARK_CKPT_EVERY events) bound
 * the part of the ledger verified at each start, from which every
 * freshness decision is taken: never from the database's own columns.
 */
#ifndef LOCKERD_MARK_H
#define LOCKERD_MARK_H

#include <jansson.h>
#include <stdint.h>

#define MARK_CKPT_EVERY 1000
/* The mark waits for the disk at most this often (ms), and is written
 * this long after the commit that made it old. */
#define MARK_SYNC_MS 1000
#define MARK_DELAY_MS 20

/* What the file says (one of its two slots, the newer that verifies). */
struct mark {
	uint64_t gen;
	int64_t seq;             /* the ledger's head */
	uint8_t hash[32];        /* its digest (zeros for an empty ledger) */
	int64_t ckpt;            /* the newest checkpoint event, 0 none */
	int64_t delivered;       /* every event up to here reached the broker */
	int64_t boot;
	int clean;               /* written by a clean stop */
};

/* A reservation and its newest event, as a checkpoint lists it. */
struct mark_resv {
	int64_t id, seq;
};

struct mark_head {
	struct mark m;           /* as last read or written */
	int64_t seq;             /* the ledger's committed head */
	int64_t pend;            /* ... and its last seq in this transaction */
	int dirty;               /* events committed since m was written */
	/* Not "": why lockerd records nothing and opens no door (a database
	 * behind its mark, ...) until the platform's restore_ack. */
	char held[320];
	int64_t win_from;        /* verified at start from this seq on */
	struct mark_resv *ckpt;  /* the window's checkpoint: active then */
	int nckpt;
	struct mark_resv *live;  /* the ledger's live ones (start only) */
	int nlive;
	uint8_t *code_key;       /* shared with the platform (sodium_malloc) */
	int ready;               /* checked at start: the mark may be written */
	int unsynced;            /* written, not yet synced */
	int synced_slot;         /* the slot last synced: never written next */
	int64_t synced_ms;       /* monotonic, 0 never */
	int64_t dirty_ms;        /* when dirty was set */
	int64_t sync_ms;         /* MARK_SYNC_MS (tests may change these) */
	int64_t delay_ms;        /* MARK_DELAY_MS */
};

struct lockerd;

/* The mark's slots, encoded and MACed (tests read the file with these). */
#define MARK_SLOT 512
struct codes_keys;
void mark_encode(const struct codes_keys *k, const struct mark *m,
    unsigned char slot[MARK_SLOT]);
int mark_decode(const struct codes_keys *k, const unsigned char *slot,
    struct mark *m);

/*
 * Start-up, once the keys and the cells are loaded: checks that the key
 * signed the ledger (-1 if not: start-up stops), reads the mark, checks
 * the ledger against it and sets the chain's head. A database behind its
 * mark (or without one) sets head.held and returns 0 (lockerd then opens
 * nothing); rows after the last good event are moved aside, and index
 * columns that disagree with their signed events are corrected, each
 * with a record_rejected alarm. -1 on a database error.
 */
int mark_start(struct lockerd *d);
/* Writes the mark if events were committed since (clean: at a stop). */
int mark_flush(struct lockerd *d, int clean);
/* From the loop: a checkpoint when one is due, then mark_flush. */
void mark_tick(struct lockerd *d);
/* When the loop must wake for a pending sync (monotonic ms), INT64_MAX. */
int64_t mark_next(struct lockerd *d);
/*
 * The seq a reservation's stored row must carry: its newest event, from
 * the verified part of the ledger or the checkpoint before it; 0 if the
 * ledger does not know it as active; -1 on a database error.
 */
int64_t mark_resv_expected(struct lockerd *d, int64_t id);
/* The head for the birth message: head_seq, head, and held if held. */
json_t *mark_status(struct lockerd *d);
/* The platform's restore_ack (a signed command): the reply. */
json_t *mark_restore(struct lockerd *d, json_t *cmd);
/* --verify-ledger's last check: the ledger against its mark (0 ok). */
int mark_verify(struct lockerd *d, int64_t last, const uint8_t digest[32],
    char *why, size_t whylen);
void mark_free(struct lockerd *d);

#endif
