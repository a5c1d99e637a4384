/*
 * The daemon's one state struct, passed explicitly, and the glue that
 * turns the bank's actions into durable records and relay pulses.
 */
#ifndef LOCKERD_LOCKERD_H
#define LOCKERD_LOCKERD_H

#include <stdint.h>

#include "bank.h"
#include "codes.h"
#include "config.h"
#include "jsonl.h"
#include "mark.h"
#include "mb.h"
#include "resv.h"
#include "staff.h"
#include "store.h"
#include "throttle.h"

struct platform;

/* Events published and not yet acknowledged, in order. */
struct lockerd_outbox {
	int up;                         /* connected, birth sent */
	unsigned gen;                   /* ... on this connection */
	int blocked;                    /* the broker refused an event */
	int64_t next;                   /* next seq to publish */
	int64_t replay_upto;            /* events up to here waited */
	int scrub;                      /* a delivered code to wipe */
	int n;
	struct {
		int mid;
		int64_t seq;
		int code;               /* it carried a plain code */
	} win[100];
};

/*
 * The platform link's own state (link.c): rebirths in flight, the cells
 * still to be sent again, refused commands counted for their alarm.
 */
struct lockerd_link {
	int rebirth_busy;               /* a birth's cell states go out */
	int rebirth_again;              /* another was asked for meanwhile */
	int rebirth_mid;                /* the last publish of it, 0: not yet */
	int64_t rebirth_next;           /* monotonic ms: no other before */
	int forced;                     /* cells still to be sent again */
	uint8_t force[CONFIG_CELLS_MAX];
	int64_t refused_until;          /* monotonic ms; 0: no window open */
	long refused_n;                 /* refusals since the last alarm */
	struct {
		char reason[48];
		long n;
	} refused_why[8];
	int nwhy;
	char last_op[16], last_id[65], last_reason[64];
	long strays;                    /* stray messages reported so far */
	int64_t next_prune;             /* monotonic ms */
	/* Signed commands older than this (wall ms) are refused: set when
	 * the ledger could not vouch for the nonces of the last window. */
	int64_t trust_from;
	long unsent;                    /* replies the cap or link lost */
	struct throttle anon_thr;       /* unsigned, malformed, forged */
};

/* A code made while running a step, for whoever asked (never logged). */
struct lockerd_issued {
	int64_t resv;
	int64_t seq;                 /* its code_issued / code_reissued event */
	char code[CODES_DIGITS_MAX + 1];
};

/* One step: what the bank and the reservations do, recorded together. */
struct lockerd_step {
	struct bank_actions bank;
	struct resv_actions resv;
	struct lockerd_issued issued[4];
	int nissued;
	/* A requester waits for the new codes (a reserve or reissue reply):
	 * they go to it and are never written down. Otherwise a new code
	 * rests in its issuance event until delivered. */
	int handed_over;
	/* Records in the order they happened: bank (< 0x100) or resv. */
	int order[BANK_ACTIONS_MAX + RESV_ACTIONS_MAX];
	int norder;
};

/*
 * CLOCK_MONOTONIC microseconds of the phases of the last step that opened
 * a door, for the keypad's debug line "unlock timing" (make bench reads
 * it). Taking them costs a few clock reads per step; the thread CPU times
 * tell the work apart from waiting for a core.
 */
struct lockerd_steptime {
	int64_t got;                    /* the request reached its handler */
	int64_t checked;                /* the code was verified */
	int64_t tx;                     /* the transaction began */
	int64_t commit;                 /* its rows written, COMMIT called */
	int64_t durable;                /* COMMIT returned */
	int64_t queued;                 /* the last unlock handed to its bus */
	int64_t cpu_got, cpu_queued;    /* the main thread's CPU time then */
};

struct lockerd {
	struct config cfg;
	const char *config_path;        /* NULL: built-in default */
	char *const *overrides;
	struct store *store;
	struct mb *mb;
	struct bank bank;
	struct bank_cell cells[CONFIG_CELLS_MAX];
	struct bank_board boards[CONFIG_BOARDS_MAX];
	char board_error[CONFIG_BOARDS_MAX][96];
	struct jsonl *ctl;
	int64_t boot;
	int unrecorded;                /* the last step could not be recorded */
	/* Door and board events of steps that could not be recorded (disk
	 * full): recorded first when recording works again. */
	struct bank_actions pend;
	int64_t pend_retry;            /* monotonic ms */
	int replaying;
	/* The database's health, for the watchdog: a transaction could not
	 * begin or commit (cleared by the next that commits). */
	int db_failing;
	int64_t wd_ms;                 /* ping interval (monotonic ms), 0 off */
	int64_t wd_next;               /* next health check and ping */
	int wd_sick;                   /* the last check failed */
	char wd_why[256];

	struct codes_keys *keys;
	struct resv_table resv;
	uint8_t ledger_prev[32];        /* digest of the last committed event */
	uint8_t ledger_pend[32];        /* ... of the last one in this tx */
	struct mark_head head;          /* its seq, the mark, held (mark.c) */
	struct jsonl *kiosk;
	struct throttle_keypad thr;     /* codes and PINs (kiosk.c) */
	struct throttle cmd_thr;        /* platform commands (link.c) */
	struct staff session;           /* id "" when nobody is logged in */
	int64_t session_until;          /* monotonic ms */
	/* The account as the session began: any change to it ends it. */
	uint8_t session_row[CODES_HASH_LEN];
	struct platform *link;          /* NULL: no [mqtt] host */
	struct lockerd_outbox outbox;
	struct lockerd_link lnk;
	/* Retained cell states: changed since published, what was sent. */
	uint8_t cell_dirty[CONFIG_CELLS_MAX];
	uint64_t cell_sent[CONFIG_CELLS_MAX];
	int64_t cell_rev[CONFIG_CELLS_MAX];
	struct lockerd_steptime steptime;
};

/*
 * The state folder: created 0700 if missing; then it, the database (and
 * its -wal, -shm) and each socket's folder must be lockerd's own, out of
 * other users' reach ([locker] check_modes). -1, with the path, the mode
 * found and the mode wanted in the log, if not.
 */
int lockerd_state_dir(const struct config *c);
/* Start-up: database, cells, boards, first read, reconciliation. */
int lockerd_start(struct lockerd *d);
/*
 * Its first half, without boards or sockets (d->mb and the sockets stay
 * NULL): database, keys, cells as stored, the ledger's head, the bank
 * (not yet started), throttles and reservations. Fuzz targets use it.
 */
int lockerd_start_offline(struct lockerd *d);
void lockerd_stop(struct lockerd *d);
/*
 * Records the EVENT and SAVE actions in one transaction, then carries out
 * the PULSE actions. On a failed commit no relay moves; returns -1.
 */
int lockerd_apply(struct lockerd *d, struct bank_actions *acts);
/*
 * The same for a whole step: the bank's actions and the reservations'
 * (door events feed the reservations, their unlocks go to the bank, new
 * codes are made), all recorded in one transaction before any relay
 * moves. On -1 nothing was recorded and no relay moved.
 */
void lockerd_step_init(struct lockerd_step *s);
int lockerd_run(struct lockerd *d, struct lockerd_step *s);
/* Appends one event of its own (staff log-ins, alarms) in its own tx. */
int lockerd_record(struct lockerd *d, const char *type, json_t *extra);
/* The same at seq next or later (a restore resumes there, mark.c). */
int lockerd_record_from(struct lockerd *d, const char *type, json_t *extra,
    int64_t next);
/* Reads the reservations from the store again (mark.c, on a restore). */
int lockerd_load_resv(struct lockerd *d);
/* A new code for a reservation holding a live one (0 if it got one). */
int lockerd_reissue(struct lockerd *d, int64_t id);
/* A staff account provisioned or revoked: its event and row, one tx. */
int lockerd_staff_change(struct lockerd *d, struct staff *st,
    const char *type, json_t *extra);
/* Reservations, staff: the clock they use (wall ms). */
int64_t lockerd_now(void);
/* Feeds waiting board reports into the bank. */
void lockerd_mb_dispatch(struct lockerd *d);
/* Timers: debounce, unlock confirmation, doors left open. */
void lockerd_tick(struct lockerd *d);
/*
 * Is the locker healthy enough to feed the watchdog? The database's file
 * is in place, its write lock can be taken, and the last transaction did
 * not fail. -1 and why if not.
 */
int lockerd_health(struct lockerd *d, char *why, size_t len);
/*
 * Called from every pass of the main loop: when a ping is due, checks the
 * health and pings only if it holds (the loop's own progress is the other
 * half: a loop stuck anywhere sends nothing). Returns the next time it
 * wants to run (monotonic ms), INT64_MAX without a watchdog.
 */
int64_t lockerd_watchdog(struct lockerd *d, int64_t now);
/* SIGHUP: re-reads the configuration and applies what is safe. */
void lockerd_reload(struct lockerd *d);

/* The platform link (link.c): start, stop, reports, and "new events". */
int link_start(struct lockerd *d);
void link_stop(struct lockerd *d);
void link_dispatch(struct lockerd *d);
void link_kick(struct lockerd *d);
/* One message as the broker delivered it: the topic checked, a command
 * run and answered (link_dispatch() does this for each; fuzz_link too). */
void link_message(struct lockerd *d, const char *topic, const char *payload,
    size_t len, int64_t at);

/* The operator control socket (ctl.c). */
json_t *ctl_handle(void *arg, json_t *req);
/* A reservation as the control socket and the platform see it. */
json_t *ctl_resv_json(struct lockerd *d, const struct resv *r);
/* The keypad socket (kiosk.c). */
json_t *kiosk_handle(void *arg, json_t *req);
void kiosk_notice(struct lockerd *d, const char *what, int cell,
    const char *show);
/* Staff session timeout; returns the next deadline (monotonic ms). */
int64_t kiosk_tick(struct lockerd *d);
/* A revoked account's keypad session ends at once. */
void kiosk_staff_revoked(struct lockerd *d, const char *id);
/*
 * An account changed in any way (PIN, role, name, revoked): a keypad
 * session of it ends at once, with a notice. lockerd_staff_change calls
 * it for every change it records.
 */
void kiosk_staff_changed(struct lockerd *d, const char *id, const char *why);
/* Start-up: the keypad throttles, as the database last saw them. */
int kiosk_start(struct lockerd *d);
/* Start-up: the keypad socket, its client limits and kept slot. */
int kiosk_open(struct lockerd *d);
/*
 * After a step was recorded: a door that opened for a code gives the
 * code throttle back its tries (once per code). lockerd_run calls it.
 */
void kiosk_step_done(struct lockerd *d, const struct lockerd_step *s);
/* The QR credential for a reservation holding a code, into out. */
int lockerd_credential(struct lockerd *d, const struct resv *r, char *out,
    size_t outlen);

#endif
