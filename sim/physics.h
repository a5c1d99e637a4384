/*
 * The physical world behind locksim: relays, locks, doors, items, the
 * hardware faults a board can have, and the automatic person. Pure: no I/O
 * and no clock; every call is told the monotonic time in milliseconds.
 */
#ifndef LOCKERD_PHYSICS_H
#define LOCKERD_PHYSICS_H

#include <stdint.h>

#include "board.h"

#define PHYSICS_BOARDS_MAX 32
#define PHYSICS_SPRING_MS 150
/* Automatic person: pause before the item, then before closing the door. */
#define PHYSICS_AUTO_ITEM_MIN_MS 1000
#define PHYSICS_AUTO_ITEM_MAX_MS 3000
#define PHYSICS_AUTO_CLOSE_MIN_MS 1000
#define PHYSICS_AUTO_CLOSE_MAX_MS 2000

enum physics_auto {
	PHYSICS_AUTO_IDLE,
	PHYSICS_AUTO_ITEM,  /* next: put the item in, or take it out */
	PHYSICS_AUTO_CLOSE, /* next: close the door */
};

struct physics_channel {
	int coil;          /* relay energised: what FC01 reads back */
	int door_open;
	int item;
	int jammed;        /* the lock releases but the door stays shut */
	int stuck;         /* the relay never closes its contacts */
	int flap;          /* the door input reads noise */
	int64_t flash_end; /* board-timed pulse switches off here, -1 = none */
	int64_t spring_at; /* the door springs open here, -1 = none */
	int64_t auto_at;   /* the automatic person acts here, -1 = none */
	enum physics_auto auto_step;
};

struct physics_board {
	int unit;
	struct board_profile profile;
	struct physics_channel ch[BOARD_CHANNELS_MAX];
};

struct physics {
	struct physics_board board[PHYSICS_BOARDS_MAX];
	int nboards;
	int spring_ms;
	int auto_person;
	uint64_t rng;
	int64_t now; /* time of the last event handled */
};

/* What a person's action ran into. */
enum physics_result {
	PHYSICS_OK,
	PHYSICS_LOCKED, /* the lock holds the door */
	PHYSICS_JAMMED, /* the lock is open but the door will not move */
	PHYSICS_SHUT,   /* the door is closed: no reaching in */
};

void physics_init(struct physics *m, int spring_ms, uint64_t seed);
/* NULL if the unit is already there or there is no room. */
struct physics_board *physics_board_add(struct physics *m, int unit,
    const struct board_profile *p);
struct physics_board *physics_board_find(struct physics *m, int unit);

/* Runs every timer due at or before now, each at its own time. */
void physics_advance(struct physics *m, int64_t now);
/* The earliest pending timer, or -1 when nothing is scheduled. */
int64_t physics_next_due(const struct physics *m);
/* Uniform in [0, bound), bound >= 1; from the model's seeded generator. */
uint32_t physics_random(struct physics *m, uint32_t bound);

/*
 * The board's side of Modbus. Coils are [coil_base, coil_base+channels);
 * inputs are [0, input_base+input_count), where addresses that map to no
 * sensor read 0. Each returns -1, changing nothing, if any address of the
 * range lies outside; bits get one value (0/1) per byte.
 */
int physics_read_coils(struct physics *m, struct physics_board *b, int addr,
    int count, uint8_t *bits, int64_t now);
int physics_read_inputs(struct physics *m, struct physics_board *b, int addr,
    int count, uint8_t *bits, int64_t now);
int physics_write_coils(struct physics *m, struct physics_board *b, int addr,
    int count, const uint8_t *bits, int64_t now);
/* Flash boards: is addr a timed-pulse ("flash on") address? */
int physics_is_flash_addr(const struct physics_board *b, int addr);
/* Energises the relay for units * flash_unit_ms, then switches it off. */
int physics_flash(struct physics *m, struct physics_board *b, int addr,
    int units, int64_t now);

int physics_released(const struct physics_channel *c);

/* The person and the faults; ch is 1-based and must exist on the board. */
enum physics_result physics_open(struct physics *m, struct physics_board *b,
    int ch, int64_t now);
void physics_close(struct physics *m, struct physics_board *b, int ch,
    int64_t now);
enum physics_result physics_put(struct physics *m, struct physics_board *b,
    int ch, int64_t now);
enum physics_result physics_take(struct physics *m, struct physics_board *b,
    int ch, int64_t now);
void physics_force(struct physics *m, struct physics_board *b, int ch,
    int64_t now);
void physics_set_jam(struct physics *m, struct physics_board *b, int ch,
    int on, int64_t now);
void physics_set_stuck(struct physics *m, struct physics_board *b, int ch,
    int on, int64_t now);
void physics_set_flap(struct physics *m, struct physics_board *b, int ch,
    int on, int64_t now);
void physics_set_auto(struct physics *m, int on, int64_t now);

const char *physics_strerror(enum physics_result r);

#endif
