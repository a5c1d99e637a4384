/*
 * Board profiles: how one model of lock board maps relays, door sensors and
 * item sensors onto Modbus addresses. Shared by lockerd and locksim, the way
 * libmodbus's client and server share one header.
 */
#ifndef LOCKERD_BOARD_H
#define LOCKERD_BOARD_H

#include <stddef.h>
#include <stdint.h>

#define BOARD_NAME_MAX 32
#define BOARD_CHANNELS_MAX 64
/* One FC02 request reads at most this many inputs (Modbus allows 2000). */
#define BOARD_INPUTS_MAX 256

enum board_unlock {
	BOARD_UNLOCK_PULSE, /* coil on, wait pulse_ms, coil off (FC05 twice) */
	BOARD_UNLOCK_FLASH, /* board-timed: FC05 to flash_base+ch, value = units */
};

struct board_profile {
	char name[BOARD_NAME_MAX];
	int channels;           /* 1 .. BOARD_CHANNELS_MAX */
	int coil_base;          /* coil of channel 1 */
	enum board_unlock unlock;
	int pulse_ms;           /* how long the lock is energised */
	int flash_base;         /* BOARD_UNLOCK_FLASH: address of channel 1 */
	int flash_unit_ms;      /* BOARD_UNLOCK_FLASH: value unit */
	int door_base;          /* discrete input of channel 1's door sensor */
	int door_open_level;    /* input value (0/1) that means "door open" */
	int item_base;          /* item-present input of channel 1, -1 if none */
	int item_present_level; /* input value (0/1) that means "item present" */
	/* Derived: the one FC02 read that covers doors and items. */
	int input_base;
	int input_count;
};

/*
 * Parses one profile from INI text. On error returns -1 and writes
 * "<origin>:<line>: <reason>" into err, or "<origin>: <reason>" for what
 * concerns the whole profile (a missing name, inputs that do not fit).
 */
int board_profile_parse(const char *text, const char *origin,
    struct board_profile *out, char *err, size_t errlen);

/* The profiles built into the binaries from proto/boards. */
const struct board_profile *board_builtin(const char *name);
size_t board_builtin_count(void);
const struct board_profile *board_builtin_at(size_t i);

/* Addresses of channel ch (1-based). */
int board_coil_addr(const struct board_profile *p, int ch);
int board_flash_addr(const struct board_profile *p, int ch);
/* Pulse length in the board's flash units, rounded up, at least 1. */
int board_flash_value(const struct board_profile *p);

/*
 * Decodes one FC02 read (input_count bits starting at input_base) into
 * per-channel door-open and item-present flags (item is 0 when the
 * profile has no item sensors).
 */
void board_decode_inputs(const struct board_profile *p, const uint8_t *bits,
    uint8_t *door_open, uint8_t *item_present);

#endif
