/*
 * The locker bank: cells, their doors, unlocks and alarms. Pure logic: it
 * takes events (an unlock request, a board's input sample, a write result,
 * the passing of time) with the current monotonic time and returns actions
 * (pulse a relay, record an event, save a cell). No I/O, no clock.
 */
#ifndef LOCKERD_BANK_H
#define LOCKERD_BANK_H

#include <stdint.h>

enum bank_door { BANK_DOOR_UNKNOWN, BANK_DOOR_CLOSED, BANK_DOOR_OPEN };
enum bank_fault { BANK_FAULT_NONE, BANK_FAULT_JAMMED };

enum bank_event {
	BANK_EV_UNLOCK,          /* relay pulsed: cell, attempt, reason */
	BANK_EV_UNLOCK_FAILED,   /* the board refused or did not answer */
	BANK_EV_DOOR_OPENED,     /* cell, expected */
	BANK_EV_DOOR_CLOSED,
	BANK_EV_DOOR_JAMMED,     /* alarm; cell goes out of service */
	BANK_EV_DOOR_LEFT_OPEN,  /* alarm; open_s */
	BANK_EV_FORCED_OPEN,     /* alarm */
	BANK_EV_BOARD_FAULT,     /* board, text */
	BANK_EV_BOARD_RECOVERED, /* board */
	BANK_EV_CELL_SERVICE,    /* cell, in_service */
	BANK_EV_RECONCILED,      /* cell: stored door differed from sensor */
};

enum bank_act_type {
	BANK_ACT_EVENT, /* append ev to the ledger */
	BANK_ACT_SAVE,  /* persist cell's durable state */
	BANK_ACT_PULSE, /* after the commit: unlock cell's relay */
};

#define BANK_TEXT_MAX 96

struct bank_action {
	enum bank_act_type type;
	enum bank_event ev;
	int cell;       /* index into bank.cells, -1 if none */
	int board;      /* index into bank.boards, -1 if none */
	int attempt;
	int expected;
	int in_service;
	int64_t open_s;
	enum bank_door door, stored;
	char text[BANK_TEXT_MAX];
};

/*
 * Calls that may touch many cells (bank_tick) stop before the buffer is
 * full and report that more work is waiting; the others need a handful.
 */
#define BANK_ACTIONS_MAX 64

struct bank_actions {
	struct bank_action a[BANK_ACTIONS_MAX];
	int n;
	int overflow; /* a broken invariant: the caller treats it as fatal */
};

struct bank_timing {
	int debounce_ms;
	int unlock_confirm_ms;
	int unlock_retries;
	int64_t door_left_open_ms;
	int64_t door_left_open_repeat_ms;
};

struct bank_cell {
	int number;
	int board;
	int channel;
	char size;
	/* Durable: restored from the store at start-up. */
	enum bank_door door;
	int in_service;
	enum bank_fault fault;
	int item;            /* -1 unknown / no sensor, else 0 or 1 */
	/* Volatile. */
	int raw;             /* last sensor sample: -1 none, 0 closed, 1 open */
	int64_t raw_since;
	int unlocking;       /* an unlock is in flight for this cell */
	char reason[16];     /* who asked for it: "operator", "code", ... */
	int acked;           /* the board accepted the last unlock write */
	int attempt;
	int64_t unlock_deadline;
	int expect_open;     /* restored: an unlock was pending at shutdown */
	int restart_wait;    /* that unlock, its door not yet open: waiting
	                        unlock_confirm_ms for it, then unlock_failed */
	int64_t left_open_next;
	int64_t opened_at;
	int reconcile;       /* compare sensor and stored state next tick */
	int item_dirty;      /* item sensor changed: save next tick */
};

struct bank_board {
	int ok;          /* answering */
	int seen;        /* at least one sample since start */
	int has_items;
};

enum bank_refusal {
	BANK_OK,
	BANK_ERR_NO_CELL,
	BANK_ERR_OUT_OF_SERVICE,
	BANK_ERR_BOARD_FAULT,
	BANK_ERR_BUSY,
	BANK_ERR_DOOR_OPEN,
	BANK_ERR_NOT_STARTED,
};

struct bank {
	struct bank_cell *cells;
	int ncells;
	struct bank_board *boards;
	int nboards;
	struct bank_timing t;
	int started;     /* start-up reconciliation done */
};

/* cells and boards are owned by the caller; cells are pre-filled. */
void bank_init(struct bank *b, struct bank_cell *cells, int ncells,
    struct bank_board *boards, int nboards, const struct bank_timing *t);
int bank_cell_index(const struct bank *b, int number);

/* reason (at most 15 characters) is recorded with each attempt. */
enum bank_refusal bank_unlock(struct bank *b, int cell, const char *reason,
    int64_t now, struct bank_actions *out);
void bank_unlock_result(struct bank *b, int cell, int ok, const char *error,
    int64_t now, struct bank_actions *out);
/*
 * A board's sample: door_open[ch-1], item[ch-1] (item NULL if none). Only
 * records it; the following bank_tick turns it into events.
 */
void bank_inputs(struct bank *b, int board, const uint8_t *door_open,
    const uint8_t *item, int nchannels, int64_t now,
    struct bank_actions *out);
void bank_board_status(struct bank *b, int board, int ok, const char *error,
    int64_t now, struct bank_actions *out);
/*
 * Start-up: from now on the bank serves; every sampled door is compared
 * with its stored state by the following bank_tick calls.
 */
void bank_reconcile(struct bank *b, int64_t now, struct bank_actions *out);
enum bank_refusal bank_set_service(struct bank *b, int cell, int in_service,
    int64_t now, struct bank_actions *out);
/* Timers and pending comparisons; returns 1 if work is left for the
 * next call (the output was nearly full). */
int bank_tick(struct bank *b, int64_t now, struct bank_actions *out);
/* The earliest time bank_tick has work (INT64_MIN: now), or INT64_MAX. */
int64_t bank_next_deadline(const struct bank *b);

const char *bank_refusal_str(enum bank_refusal r);
const char *bank_event_name(enum bank_event ev);
int bank_event_is_alarm(enum bank_event ev);
const char *bank_door_name(enum bank_door d);
int bank_door_parse(const char *s, enum bank_door *out);

#endif
