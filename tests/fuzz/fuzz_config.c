/*
 * libFuzzer target: the configuration parser (config_load_text) on hostile
 * INI text, and the invariants that the rest of lockerd relies on when it
 * accepts a file.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What lockerd indexes with, unchecked, once the file is accepted. */
static void
check_config(const struct config *c)
{
	int i, j;

	if (c->nbuses < 0 || c->nbuses > CONFIG_BUSES_MAX ||
	    c->nboards < 0 || c->nboards > CONFIG_BOARDS_MAX ||
	    c->ncells < 1 || c->ncells > CONFIG_CELLS_MAX)
		__builtin_trap();
	if (memchr(c->locker_id, '\0', sizeof(c->locker_id)) == NULL ||
	    memchr(c->database, '\0', sizeof(c->database)) == NULL ||
	    memchr(c->control_socket, '\0', sizeof(c->control_socket)) == NULL)
		__builtin_trap();
	for (i = 0; i < c->nboards; i++) {
		const struct config_board *b = &c->boards[i];

		if (b->bus < 0 || b->bus >= c->nbuses ||
		    b->unit < 1 || b->unit > 247 ||
		    b->profile.channels < 1 ||
		    b->profile.channels > BOARD_CHANNELS_MAX ||
		    b->profile.input_count < 1 ||
		    b->profile.input_count > BOARD_INPUTS_MAX)
			__builtin_trap();
	}
	for (i = 0; i < c->ncells; i++) {
		const struct config_cell *cell = &c->cells[i];

		if (cell->number < 1 || cell->number > CONFIG_CELL_NUMBER_MAX ||
		    cell->board < 0 || cell->board >= c->nboards ||
		    cell->channel < 1 ||
		    cell->channel > c->boards[cell->board].profile.channels ||
		    (cell->size != 'S' && cell->size != 'M' &&
		     cell->size != 'L'))
			__builtin_trap();
		for (j = 0; j < i; j++)
			if (c->cells[j].number == cell->number ||
			    (c->cells[j].board == cell->board &&
			     c->cells[j].channel == cell->channel))
				__builtin_trap();
		if (config_cell_find(c, cell->number) != cell)
			__builtin_trap();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config cfg;
	char err[512], *text;

	/* A NUL ends the text, as it would end a C string read from disk. */
	if ((text = malloc(size + 1)) == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	err[0] = '\0';
	if (config_load_text(&cfg, text, "fuzz", err, sizeof(err)) == 0)
		check_config(&cfg);
	else if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL)
		__builtin_trap();
	free(text);
	return 0;
}
