/*
 * The board profiles compiled into the binaries. The texts come from
 * proto/boards/NAME.ini through the generated build/gen/boards.c, and are
 * parsed once, on first use, with the same parser as files on disk.
 */
#include "board.h"

#include <stdio.h>
#include <string.h>

#include "embed.h"

static struct board_profile builtin[16];
static size_t nbuiltin;
static int loaded;

static void
builtin_load(void)
{
	char err[256];
	size_t i;

	if (loaded)
		return;
	loaded = 1;
	for (i = 0; i < embed_boards_count && nbuiltin < 16; i++) {
		/* The build parses these too (tests/unit), so this cannot fail. */
		if (board_profile_parse(embed_boards[i].text,
		    embed_boards[i].name, &builtin[nbuiltin], err,
		    sizeof(err)) == 0)
			nbuiltin++;
		else
			fprintf(stderr, "built-in board profile: %s\n", err);
	}
}

const struct board_profile *
board_builtin(const char *name)
{
	size_t i;

	builtin_load();
	for (i = 0; i < nbuiltin; i++)
		if (strcmp(builtin[i].name, name) == 0)
			return &builtin[i];
	return NULL;
}

size_t
board_builtin_count(void)
{
	builtin_load();
	return nbuiltin;
}

const struct board_profile *
board_builtin_at(size_t i)
{
	builtin_load();
	return i < nbuiltin ? &builtin[i] : NULL;
}
