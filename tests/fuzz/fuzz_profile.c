/*
 * libFuzzer target: the board profile parser (board_profile_parse) and, for
 * every profile it accepts, the input decoder over an FC02 read of exactly
 * input_count bits, so that ASan sees any index outside the read.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "board.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The derived read must cover every door and item input, and no more. */
static void
check_profile(const struct board_profile *p)
{
	if (p->name[0] == '\0' ||
	    memchr(p->name, '\0', sizeof(p->name)) == NULL ||
	    p->channels < 1 || p->channels > BOARD_CHANNELS_MAX ||
	    p->input_count < 1 || p->input_count > BOARD_INPUTS_MAX ||
	    p->input_base < 0 || p->input_base + p->input_count - 1 > 0xffff)
		__builtin_trap();
	if (p->door_base < p->input_base ||
	    p->door_base + p->channels > p->input_base + p->input_count)
		__builtin_trap();
	if (p->item_base >= 0 &&
	    (p->item_base < p->input_base ||
	     p->item_base + p->channels > p->input_base + p->input_count))
		__builtin_trap();
	if (p->unlock == BOARD_UNLOCK_PULSE &&
	    (board_coil_addr(p, 1) < 0 ||
	     board_coil_addr(p, p->channels) > 0xffff))
		__builtin_trap();
	if (p->unlock == BOARD_UNLOCK_FLASH &&
	    (board_flash_addr(p, 1) < 0 ||
	     board_flash_addr(p, p->channels) > 0xffff ||
	     board_flash_value(p) < 1 || board_flash_value(p) > 0xffff))
		__builtin_trap();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct board_profile p;
	uint8_t *bits, *door, *item;
	char err[256], *text;
	int ch;

	if ((text = malloc(size + 1)) == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	err[0] = '\0';
	if (board_profile_parse(text, "fuzz", &p, err, sizeof(err)) == -1) {
		if (err[0] == '\0')
			__builtin_trap();
		free(text);
		return 0;
	}
	free(text);
	check_profile(&p);
	/* Exact sizes, so that one byte too far is a heap overflow. */
	bits = calloc((size_t)p.input_count, 1);
	door = malloc((size_t)p.channels);
	item = malloc((size_t)p.channels);
	if (bits == NULL || door == NULL || item == NULL)
		__builtin_trap();
	board_decode_inputs(&p, bits, door, item);
	for (ch = 0; ch < p.channels; ch++)
		if (door[ch] != (p.door_open_level == 0) ||
		    item[ch] != (p.item_base >= 0 &&
		    p.item_present_level == 0))
			__builtin_trap();
	free(bits);
	free(door);
	free(item);
	return 0;
}
