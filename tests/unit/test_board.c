/*
 * Board profiles: every file in proto/boards is built in and decodes to the
 * facts its comments state; input bits decode with the profile's polarity;
 * bad profiles are refused with "origin:line: reason".
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "board.h"

#define BOARDS_DIR "proto/boards"

/* Reads a whole (small) file; the tests run from the repository root. */
static void
slurp(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (f == NULL)
		fail_msg("%s: cannot open", path);
	n = fread(buf, 1, len - 1, f);
	fclose(f);
	assert_true(n < len - 1);
	buf[n] = '\0';
}

static int
has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n > m && strcmp(s + n - m, suffix) == 0;
}

static const struct board_profile *
must_builtin(const char *name)
{
	const struct board_profile *p = board_builtin(name);

	if (p == NULL)
		fail_msg("no built-in profile '%s'", name);
	return p;
}

/*
 * Every proto/boards/NAME.ini is built in, under the name NAME (profile_dir
 * look-ups rely on file name = profile name), and the built-in copy is what
 * the file parses to.
 */
static void
test_builtin_matches_files(void **state)
{
	static char paths[32][300], text[65536];
	struct dirent *e;
	size_t nfiles = 0, i;
	DIR *d;

	(void)state;
	/* Names first, so that a failed assertion leaves no DIR open. */
	d = opendir(BOARDS_DIR);
	assert_non_null(d);
	while ((e = readdir(d)) != NULL && nfiles < 32)
		if (has_suffix(e->d_name, ".ini"))
			snprintf(paths[nfiles++], sizeof(paths[0]), "%s/%s",
			    BOARDS_DIR, e->d_name);
	closedir(d);
	assert_true(nfiles >= 3 && nfiles < 32);

	for (i = 0; i < nfiles; i++) {
		const char *path = paths[i], *base = strrchr(path, '/') + 1;
		const struct board_profile *b;
		struct board_profile p;
		char stem[300], err[256] = "";

		memcpy(stem, base, strlen(base) - 4);
		stem[strlen(base) - 4] = '\0';
		slurp(path, text, sizeof(text));
		if (board_profile_parse(text, path, &p, err, sizeof(err)) != 0)
			fail_msg("%s does not parse: %s", path, err);
		assert_string_equal(p.name, stem);
		b = must_builtin(stem);
		assert_memory_equal(b, &p, sizeof(p));
	}
	assert_int_equal(board_builtin_count(), nfiles);
	for (i = 0; i < nfiles; i++) {
		const struct board_profile *b = board_builtin_at(i);

		assert_non_null(b);
		assert_ptr_equal(board_builtin(b->name), b);
	}
	assert_null(board_builtin_at(nfiles));
	assert_null(board_builtin("no-such-board"));
	assert_null(board_builtin(""));
}

static void
test_generic16(void **state)
{
	const struct board_profile *p = must_builtin("generic-16");

	(void)state;
	assert_int_equal(p->channels, 16);
	assert_int_equal(p->unlock, BOARD_UNLOCK_PULSE);
	assert_int_equal(p->pulse_ms, 500);
	assert_int_equal(p->coil_base, 0);
	assert_int_equal(p->door_base, 0);
	assert_int_equal(p->door_open_level, 0);
	assert_int_equal(p->item_base, -1);
	assert_int_equal(p->input_base, 0);
	assert_int_equal(p->input_count, 16);
	assert_int_equal(board_coil_addr(p, 1), 0);
	assert_int_equal(board_coil_addr(p, 16), 15);
}

static void
test_generic24(void **state)
{
	const struct board_profile *p = must_builtin("generic-24");

	(void)state;
	assert_int_equal(p->channels, 24);
	assert_int_equal(p->unlock, BOARD_UNLOCK_PULSE);
	assert_int_equal(p->door_base, 0);
	assert_int_equal(p->door_open_level, 0);
	assert_int_equal(p->item_base, 24);
	assert_int_equal(p->item_present_level, 1);
	assert_int_equal(p->input_base, 0);
	assert_int_equal(p->input_count, 48);
	assert_int_equal(board_coil_addr(p, 24), 23);
}

static void
test_waveshare(void **state)
{
	const struct board_profile *p = must_builtin("waveshare-relay-d");

	(void)state;
	assert_int_equal(p->channels, 8);
	assert_int_equal(p->unlock, BOARD_UNLOCK_FLASH);
	assert_int_equal(p->pulse_ms, 500);
	assert_int_equal(p->flash_base, 0x200);
	assert_int_equal(p->flash_unit_ms, 100);
	assert_int_equal(board_flash_value(p), 5);
	assert_int_equal(board_coil_addr(p, 1), 0x0000);
	assert_int_equal(board_coil_addr(p, 8), 0x0007);
	assert_int_equal(board_flash_addr(p, 1), 0x0200);
	assert_int_equal(board_flash_addr(p, 8), 0x0207);
	assert_int_equal(p->door_open_level, 0);
	assert_int_equal(p->item_base, -1);
	assert_int_equal(p->input_base, 0);
	assert_int_equal(p->input_count, 8);
}

/* The flash value is the pulse in flash units, rounded up, at least 1. */
static void
test_flash_value(void **state)
{
	static const struct {
		int pulse_ms, unit_ms, want;
	} t[] = {
		{ 500, 100, 5 },
		{ 501, 100, 6 },
		{ 599, 100, 6 },
		{ 50, 100, 1 },
		{ 100, 100, 1 },
		{ 10000, 1, 10000 },
		{ 1000, 3, 334 },
	};
	struct board_profile p;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		memset(&p, 0, sizeof(p));
		p.pulse_ms = t[i].pulse_ms;
		p.flash_unit_ms = t[i].unit_ms;
		if (board_flash_value(&p) != t[i].want)
			fail_msg("pulse %d unit %d: want %d, got %d",
			    t[i].pulse_ms, t[i].unit_ms, t[i].want,
			    board_flash_value(&p));
	}
}

static void
parse_ok(const char *text, struct board_profile *p)
{
	char err[256] = "";

	if (board_profile_parse(text, "t.ini", p, err, sizeof(err)) != 0)
		fail_msg("profile should parse: %s", err);
}

/* Door level 0 = open (normally-closed switch): a broken wire reads open. */
static void
test_decode_generic16(void **state)
{
	const struct board_profile *p = must_builtin("generic-16");
	uint8_t bits[BOARD_INPUTS_MAX], door[BOARD_CHANNELS_MAX];
	uint8_t item[BOARD_CHANNELS_MAX];
	int ch;

	(void)state;
	memset(bits, 1, sizeof(bits));
	memset(item, 0xaa, sizeof(item));
	bits[0] = 0;  /* channel 1 open */
	bits[15] = 0; /* channel 16 open */
	board_decode_inputs(p, bits, door, item);
	for (ch = 0; ch < 16; ch++) {
		assert_int_equal(door[ch], ch == 0 || ch == 15);
		assert_int_equal(item[ch], 0);
	}

	memset(bits, 0, sizeof(bits));
	board_decode_inputs(p, bits, door, item);
	for (ch = 0; ch < 16; ch++)
		assert_int_equal(door[ch], 1);
}

/* Doors at 0..23, items at 24..47, item level 1 = present. */
static void
test_decode_generic24(void **state)
{
	const struct board_profile *p = must_builtin("generic-24");
	uint8_t bits[BOARD_INPUTS_MAX], door[BOARD_CHANNELS_MAX];
	uint8_t item[BOARD_CHANNELS_MAX];
	int ch;

	(void)state;
	memset(bits, 0, sizeof(bits));
	for (ch = 0; ch < 24; ch++)
		bits[ch] = 1;   /* every door closed */
	bits[2] = 0;            /* channel 3 open */
	bits[24 + 4] = 1;       /* channel 5 holds an item */
	bits[24 + 23] = 1;      /* channel 24 holds an item */
	board_decode_inputs(p, bits, door, item);
	for (ch = 0; ch < 24; ch++) {
		assert_int_equal(door[ch], ch == 2);
		assert_int_equal(item[ch], ch == 4 || ch == 23);
	}
}

/*
 * Inverted polarities, and items below doors so that input_base comes from
 * item_base: bit offsets are relative to the one read, not to address 0.
 */
static void
test_decode_inverted_items_first(void **state)
{
	struct board_profile p;
	uint8_t bits[BOARD_INPUTS_MAX], door[BOARD_CHANNELS_MAX];
	uint8_t item[BOARD_CHANNELS_MAX];
	int ch;

	(void)state;
	parse_ok("[profile]\n"
	    "name = inverted\n"
	    "channels = 4\n"
	    "door_base = 0x110\n"
	    "door_open_level = 1\n"
	    "item_base = 0x100\n"
	    "item_present_level = 0\n", &p);
	assert_int_equal(p.input_base, 0x100);
	assert_int_equal(p.input_count, 0x14);

	memset(bits, 0, sizeof(bits));
	/* Items at bits 0..3: level 0 = present, so 1 = empty. */
	bits[1] = 1;
	/* Doors at bits 16..19: level 1 = open. */
	bits[16 + 3] = 1;
	board_decode_inputs(&p, bits, door, item);
	for (ch = 0; ch < 4; ch++) {
		assert_int_equal(door[ch], ch == 3);
		assert_int_equal(item[ch], ch != 1);
	}
}

/* Defaults of keys left out, and the limits that are still accepted. */
static void
test_parse_defaults_and_limits(void **state)
{
	struct board_profile p;

	(void)state;
	parse_ok("; comment\n[profile]\nname = d\nchannels = 1\n", &p);
	assert_string_equal(p.name, "d");
	assert_int_equal(p.unlock, BOARD_UNLOCK_PULSE);
	assert_int_equal(p.pulse_ms, 500);
	assert_int_equal(p.flash_unit_ms, 100);
	assert_int_equal(p.item_base, -1);
	assert_int_equal(p.item_present_level, 1);
	assert_int_equal(p.input_count, 1);

	parse_ok("[profile]\n"
	    "name = abcdefghijklmnopqrstuvwxyz01234\n" /* 31 */
	    "channels = 64\n"
	    "door_base = 0\n"
	    "item_base = 192\n", &p); /* 256 inputs: exactly one read */
	assert_int_equal(strlen(p.name), BOARD_NAME_MAX - 1);
	assert_int_equal(p.channels, BOARD_CHANNELS_MAX);
	assert_int_equal(p.input_base, 0);
	assert_int_equal(p.input_count, BOARD_INPUTS_MAX);

	parse_ok("[profile]\nname = h\nchannels = 8\ncoil_base = 0xfff8\n"
	    "door_base = 0xfff8\n", &p);
	assert_int_equal(board_coil_addr(&p, 8), 0xffff);
	assert_int_equal(p.input_base, 0xfff8);
}

struct bad_profile {
	const char *what;
	const char *text;
	int line;           /* 0: the error concerns the whole profile */
	const char *reason; /* a word of it */
};

static const struct bad_profile bad_profiles[] = {
	{ "unknown key",
	  "[profile]\nname = x\nchannels = 8\ncolour = red\n",
	  4, "unknown key 'colour'" },
	{ "unknown section",
	  "[profile]\nname = x\nchannels = 8\n[extra]\nfoo = 1\n",
	  4, "unknown section [extra]" },
	{ "key outside a section",
	  "name = x\n[profile]\nchannels = 8\n",
	  1, "unknown section []" },
	{ "channels 0",
	  "[profile]\nname = x\nchannels = 0\n",
	  3, "channels must be an integer from 1 to 64" },
	{ "channels 65",
	  "[profile]\nname = x\nchannels = 65\n",
	  3, "channels must be an integer from 1 to 64" },
	{ "bad number 0x",
	  "[profile]\nname = x\nchannels = 8\ndoor_base = 0x\n",
	  4, "door_base must be an integer" },
	{ "trailing junk",
	  "[profile]\nname = x\nchannels = 8 cells\n",
	  3, "not '8 cells'" },
	{ "empty number",
	  "[profile]\nname = x\nchannels =\n",
	  3, "channels must be an integer" },
	{ "pulse too short",
	  "[profile]\nname = x\nchannels = 8\npulse_ms = 49\n",
	  4, "pulse_ms must be an integer from 50 to 10000" },
	{ "level 2",
	  "[profile]\nname = x\nchannels = 8\ndoor_open_level = 2\n",
	  4, "door_open_level must be an integer from 0 to 1" },
	{ "address beyond 0xffff",
	  "[profile]\nname = x\nchannels = 8\ncoil_base = 0x10000\n",
	  4, "coil_base must be an integer from 0 to 65535" },
	{ "unlock=weird",
	  "[profile]\nname = x\nchannels = 8\nunlock = weird\n",
	  4, "unlock must be pulse or flash, not 'weird'" },
	{ "name too long",
	  "[profile]\nname = abcdefghijklmnopqrstuvwxyz012345\n" /* 32 */
	  "channels = 8\n",
	  2, "name must be 1 to 31 characters" },
	{ "empty name",
	  "[profile]\nname =\nchannels = 8\n",
	  2, "name must be 1 to 31 characters" },
	{ "syntax error",
	  "[profile]\nname = x\nchannels 8\n",
	  3, "syntax error" },
	{ "missing name",
	  "[profile]\nchannels = 8\n",
	  0, "name and channels are required" },
	{ "missing channels",
	  "[profile]\nname = x\n",
	  0, "name and channels are required" },
	{ "inputs do not fit one read",
	  "[profile]\nname = x\nchannels = 8\ndoor_base = 0\n"
	  "item_base = 1000\n",
	  0, "must fit in one read of 256 inputs" },
	{ "inputs one beyond one read",
	  "[profile]\nname = x\nchannels = 64\ndoor_base = 0\n"
	  "item_base = 193\n",
	  0, "must fit in one read" },
	{ "inputs beyond 0xffff",
	  "[profile]\nname = x\nchannels = 8\ndoor_base = 0xfffc\n",
	  0, "must fit in one read" },
	{ "coils beyond 0xffff",
	  "[profile]\nname = x\nchannels = 8\ncoil_base = 0xfffc\n",
	  0, "coil_base + channels exceeds 0xffff" },
	{ "flash beyond 0xffff",
	  "[profile]\nname = x\nchannels = 8\nunlock = flash\n"
	  "flash_base = 0xfffc\n",
	  0, "flash unlock needs flash_base" },
};

/* Returns 0 when b is refused as it should be; prints why not otherwise. */
static int
check_bad(const struct bad_profile *b)
{
	struct board_profile p;
	char err[256] = "", prefix[64];

	memset(&p, 0x5a, sizeof(p));
	if (board_profile_parse(b->text, "bad.ini", &p, err, sizeof(err)) !=
	    -1) {
		print_error("%s: accepted\n", b->what);
		return 1;
	}
	if (b->line > 0)
		snprintf(prefix, sizeof(prefix), "bad.ini:%d: ", b->line);
	else
		snprintf(prefix, sizeof(prefix), "bad.ini: ");
	if (strncmp(err, prefix, strlen(prefix)) != 0 ||
	    strstr(err, b->reason) == NULL) {
		print_error("%s: want '%s...%s...', got '%s'\n", b->what,
		    prefix, b->reason, err);
		return 1;
	}
	/* A refused profile leaves the output alone. */
	if (p.channels != 0x5a5a5a5a) {
		print_error("%s: output written on error\n", b->what);
		return 1;
	}
	return 0;
}

static void
test_bad_profiles(void **state)
{
	size_t i;
	int failed = 0;

	(void)state;
	for (i = 0; i < sizeof(bad_profiles) / sizeof(bad_profiles[0]); i++)
		failed += check_bad(&bad_profiles[i]);
	assert_int_equal(failed, 0);
}

/* A short err buffer is filled and terminated, never overrun. */
static void
test_bad_profile_short_err(void **state)
{
	struct board_profile p;
	char err[16];

	(void)state;
	memset(err, 'z', sizeof(err));
	assert_int_equal(board_profile_parse("[profile]\nunlock = weird\n",
	    "a-long-origin.ini", &p, err, 8), -1);
	assert_string_equal(err, "a-long-");
	assert_int_equal(err[8], 'z');
}

/*
 * libinih goes on after the first bad line and returns the first bad line's
 * number, so the reason must be the first bad line's too. A profile with
 * two mistakes must not pair line 3 with the reason for line 4.
 */
static void
test_two_errors_report_the_first(void **state)
{
	static const struct bad_profile t[] = {
		{ "bad value then unknown key",
		  "[profile]\nname = x\nchannels = 0\ncolour = red\n",
		  3, "channels must be an integer" },
		{ "syntax error then unknown key",
		  "[profile]\nname = x\nchannels 8\ncolour = red\n",
		  3, "syntax error" },
	};
	size_t i;
	int failed = 0;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		failed += check_bad(&t[i]);
	assert_int_equal(failed, 0);
}

/*
 * libinih folds an indented line into the previous key's value (multi-line
 * values). A profile file indented for readability must not end up with
 * name "unlock = flash" and a pulse unlock: either the line is read as the
 * key it is, or the profile is refused.
 */
static void
test_indented_line_not_folded(void **state)
{
	struct board_profile p;
	char err[256] = "";
	int rc;

	(void)state;
	memset(&p, 0, sizeof(p));
	rc = board_profile_parse("[profile]\nchannels = 8\nname = x\n"
	    "  unlock = flash\n", "t.ini", &p, err, sizeof(err));
	if (rc == 0 && (strcmp(p.name, "x") != 0 ||
	    p.unlock != BOARD_UNLOCK_FLASH))
		fail_msg("accepted as name '%s', unlock %s", p.name,
		    p.unlock == BOARD_UNLOCK_FLASH ? "flash" : "pulse");
	if (rc == -1)
		assert_non_null(strstr(err, "t.ini:4: "));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_builtin_matches_files),
		cmocka_unit_test(test_generic16),
		cmocka_unit_test(test_generic24),
		cmocka_unit_test(test_waveshare),
		cmocka_unit_test(test_flash_value),
		cmocka_unit_test(test_decode_generic16),
		cmocka_unit_test(test_decode_generic24),
		cmocka_unit_test(test_decode_inverted_items_first),
		cmocka_unit_test(test_parse_defaults_and_limits),
		cmocka_unit_test(test_bad_profiles),
		cmocka_unit_test(test_bad_profile_short_err),
		cmocka_unit_test(test_two_errors_report_the_first),
		cmocka_unit_test(test_indented_line_not_folded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
