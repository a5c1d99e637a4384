/*
 * The daemon's one state struct, passed explicitly, and the glue that
 * turns the bank's actions into durable records and relay pulses.
 */
#ifndef LOCKERD_LOCKERD_H
#define LOCKERD_LOCKERD_H

#include <stdint.h>

#include "bank.h"
#include "config.h"
#include "jsonl.h"
#include "mb.h"
#include "store.h"

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
};

/* Start-up: database, cells, boards, first read, reconciliation. */
int lockerd_start(struct lockerd *d);
void lockerd_stop(struct lockerd *d);
/*
 * Records the EVENT and SAVE actions in one transaction, then carries out
 * the PULSE actions. On a failed commit no relay moves; returns -1.
 */
int lockerd_apply(struct lockerd *d, struct bank_actions *acts);
/* Feeds waiting board reports into the bank. */
void lockerd_mb_dispatch(struct lockerd *d);
/* Timers: debounce, unlock confirmation, doors left open. */
void lockerd_tick(struct lockerd *d);
/* SIGHUP: re-reads the configuration and applies what is safe. */
void lockerd_reload(struct lockerd *d);

/* The operator control socket (ctl.c). */
json_t *ctl_handle(void *arg, json_t *req);

#endif
