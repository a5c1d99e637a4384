/*
 * Modbus: the lock boards. libmodbus calls block, so each RTU line, and
 * each board behind TCP, has a worker thread that polls inputs, pulses
 * relays and reconnects with backoff. The main loop talks to the workers
 * through queues and one eventfd, so a dead board never stalls it.
 */
#ifndef LOCKERD_MB_H
#define LOCKERD_MB_H

#include <stdint.h>
#include <stdio.h>

#include "board.h"
#include "config.h"

enum mb_report_type {
	MB_REP_INPUTS, /* a board's inputs changed, or the first read */
	MB_REP_UNLOCK, /* the result of an unlock write */
	MB_REP_STATUS, /* a board became faulty or recovered */
};

struct mb_report {
	enum mb_report_type type;
	int board;               /* index into config boards */
	int cell;                /* MB_REP_UNLOCK: the caller's cookie */
	int ok;
	char error[96];
	int nchannels;
	int has_items;
	uint8_t door_open[BOARD_CHANNELS_MAX];
	uint8_t item[BOARD_CHANNELS_MAX];
	int64_t at_ms;           /* monotonic time of the read or write */
};

struct mb;

/* Starts the workers; every relay is switched off before polling starts. */
struct mb *mb_start(const struct config *c);
void mb_stop(struct mb *m);
/* Readable when reports are waiting. */
int mb_fd(const struct mb *m);
/* Pops up to max reports; returns how many. */
int mb_drain(struct mb *m, struct mb_report *out, int max);
/*
 * Queues an unlock of (board, channel); cell comes back in the report.
 * -1 if the board's queue is full, or m is NULL (started without boards).
 */
int mb_unlock(struct mb *m, int board, int channel, int cell);
/*
 * lockerd --probe: one board, in this thread, without workers. Prints its
 * door and item inputs to out; with channel > 0 then pulses that relay as
 * the profile unlocks and prints the inputs again a second later. 0, or
 * -1 with the reason logged.
 */
int mb_probe(const struct config *c, int board, int channel, FILE *out);
/* New poll period and backoff (SIGHUP). */
void mb_set_timing(struct mb *m, const struct config_timing *t);

#endif
