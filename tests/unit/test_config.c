/*
 * Configuration: the built-in default and controller/lockerd.conf load to
 * the documented values, overrides apply on top, and each kind of bad file
 * is refused with "PATH:LINE: reason" naming the right line.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define CONF_FILE "controller/lockerd.conf"

/* A small valid file: lines 1-7; [cells] is line 8, the first cell line 9. */
#define BASE \
	"[bus b]\n" \
	"type = tcp\n" \
	"port = 1502\n" \
	"[board A]\n" \
	"bus = b\n" \
	"unit = 1\n" \
	"profile = generic-16\n"

struct tmpconf {
	char path[64];
};

/* Writes len bytes of text to a fresh temporary file. */
static void
tmpconf_write(struct tmpconf *t, const char *text, size_t len)
{
	int fd;

	snprintf(t->path, sizeof(t->path), "/tmp/test_config.XXXXXX");
	fd = mkstemp(t->path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

static void
tmpconf_remove(struct tmpconf *t)
{
	unlink(t->path);
}

/* The config is big; a fixture frees it even when an assertion fails. */
static int
setup(void **state)
{
	*state = calloc(1, sizeof(struct config));
	return *state == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	free(*state);
	return 0;
}

/* Loads text from a file; returns config_load's result, err filled. */
static int
load_text(struct config *c, const char *text, size_t len, char *path,
    size_t pathlen, char *err, size_t errlen)
{
	struct tmpconf t;
	int rc;

	tmpconf_write(&t, text, len);
	snprintf(path, pathlen, "%s", t.path);
	err[0] = '\0';
	rc = config_load(c, t.path, NULL, err, errlen);
	tmpconf_remove(&t);
	return rc;
}

static const struct config_board *
board_named(const struct config *c, const char *name)
{
	int i;

	for (i = 0; i < c->nboards; i++)
		if (strcmp(c->boards[i].name, name) == 0)
			return &c->boards[i];
	fail_msg("no board %s", name);
	return NULL;
}

/* What the built-in default and controller/lockerd.conf both describe. */
static void
check_demo(const struct config *c)
{
	const struct config_board *a, *b;
	const struct config_cell *cell;

	assert_string_equal(c->locker_id, "demo-locker");
	assert_string_equal(c->state_dir, "lockerd-state");
	assert_string_equal(c->database, "lockerd-state/lockerd.db");
	assert_string_equal(c->profile_dir, "");
	assert_string_equal(c->control_socket, "");
	assert_int_equal(c->log_level, LOG_LEVEL_INFO);
	assert_int_equal(c->log_syslog, 0);

	/* Every timing default that lockerd.conf states. */
	assert_int_equal(c->timing.poll_ms, 100);
	assert_int_equal(c->timing.debounce_ms, 150);
	assert_int_equal(c->timing.unlock_confirm_ms, 3000);
	assert_int_equal(c->timing.unlock_retries, 1);
	assert_int_equal(c->timing.door_left_open_s, 120);
	assert_int_equal(c->timing.door_left_open_repeat_s, 300);
	assert_int_equal(c->timing.startup_read_ms, 3000);
	assert_int_equal(c->timing.board_backoff_min_ms, 500);
	assert_int_equal(c->timing.board_backoff_max_ms, 30000);

	assert_int_equal(c->nbuses, 1);
	assert_string_equal(c->buses[0].name, "sim");
	assert_int_equal(c->buses[0].type, CONFIG_BUS_TCP);
	assert_string_equal(c->buses[0].host, "127.0.0.1");
	assert_int_equal(c->buses[0].port, 1502);
	assert_int_equal(c->buses[0].timeout_ms, 200);

	assert_int_equal(c->nboards, 2);
	a = board_named(c, "A");
	b = board_named(c, "B");
	assert_int_equal(a->bus, 0);
	assert_int_equal(a->unit, 1);
	assert_string_equal(a->profile_name, "generic-16");
	assert_string_equal(a->profile.name, "generic-16");
	assert_int_equal(a->profile.channels, 16);
	assert_int_equal(b->bus, 0);
	assert_int_equal(b->unit, 2);
	assert_string_equal(b->profile.name, "waveshare-relay-d");
	assert_int_equal(b->profile.unlock, BOARD_UNLOCK_FLASH);

	assert_int_equal(c->ncells, 24);
	cell = config_cell_find(c, 17);
	assert_non_null(cell);
	assert_ptr_equal(&c->boards[cell->board], b);
	assert_string_equal(cell->board_name, "B");
	assert_int_equal(cell->channel, 1);
	assert_int_equal(cell->size, 'S');
}

static void
test_default(void **state)
{
	struct config *c = *state;
	char err[512] = "";

	if (config_load(c, NULL, NULL, err, sizeof(err)) != 0)
		fail_msg("built-in default: %s", err);
	check_demo(c);
}

/* The shipped example is the built-in default, byte for byte. */
static void
test_lockerd_conf(void **state)
{
	struct config *c = *state;
	static char text[65536];
	char err[512] = "";
	FILE *f;
	size_t n;

	if (config_load(c, CONF_FILE, NULL, err, sizeof(err)) != 0)
		fail_msg("%s: %s", CONF_FILE, err);
	check_demo(c);

	f = fopen(CONF_FILE, "r");
	assert_non_null(f);
	n = fread(text, 1, 65535, f);
	fclose(f);
	assert_true(n > 0 && n < 65535);
	text[n] = '\0';
	assert_string_equal(config_default_text(), text);
}

/* Every cell of the demo, and numbers that are not cells. */
static void
test_cell_find(void **state)
{
	static const struct {
		int number;
		const char *board;
		int channel;
		char size;
	} t[] = {
		{ 1, "A", 1, 'S' },   { 6, "A", 6, 'S' },   { 7, "A", 7, 'M' },
		{ 12, "A", 12, 'M' }, { 13, "A", 13, 'L' }, { 16, "A", 16, 'L' },
		{ 17, "B", 1, 'S' },  { 20, "B", 4, 'S' },  { 21, "B", 5, 'M' },
		{ 22, "B", 6, 'M' },  { 23, "B", 7, 'L' },  { 24, "B", 8, 'L' },
	};
	static const int absent[] = { 0, -1, 25, 999, 1000 };
	struct config *c = *state;
	char err[512];
	size_t i;

	assert_int_equal(config_load(c, NULL, NULL, err, sizeof(err)), 0);
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		const struct config_cell *cell = config_cell_find(c, t[i].number);

		assert_non_null(cell);
		assert_int_equal(cell->number, t[i].number);
		assert_string_equal(cell->board_name, t[i].board);
		assert_string_equal(c->boards[cell->board].name, t[i].board);
		assert_int_equal(cell->channel, t[i].channel);
		assert_int_equal(cell->size, t[i].size);
	}
	for (i = 0; i < sizeof(absent) / sizeof(absent[0]); i++)
		assert_null(config_cell_find(c, absent[i]));
}

/* A small file of my own: keys left out take their defaults. */
static void
test_small_file(void **state)
{
	static const char text[] =
	    "[locker]\n"
	    "id = L-1\n"
	    "database = /var/lib/x.db\n"
	    "[bus rs]\n"
	    "type = rtu\n"
	    "device = /dev/ttyUSB0\n"
	    "baud = 19200\n"
	    "parity = E\n"
	    "rs485 = on\n"
	    "[board X]\n"
	    "bus = rs\n"
	    "unit = 247\n"
	    "profile = generic-24\n"
	    "[cells]\n"
	    "1-24 = X:1 M\n";
	struct config *c = *state;
	char err[512], path[64];

	if (load_text(c, text, sizeof(text) - 1, path, sizeof(path), err,
	    sizeof(err)) != 0)
		fail_msg("%s", err);
	assert_string_equal(c->locker_id, "L-1");
	assert_string_equal(c->database, "/var/lib/x.db");
	assert_int_equal(c->timing.poll_ms, 100);
	assert_int_equal(c->nbuses, 1);
	assert_int_equal(c->buses[0].type, CONFIG_BUS_RTU);
	assert_string_equal(c->buses[0].device, "/dev/ttyUSB0");
	assert_int_equal(c->buses[0].baud, 19200);
	assert_int_equal(c->buses[0].parity, 'E');
	assert_int_equal(c->buses[0].data_bits, 8);
	assert_int_equal(c->buses[0].stop_bits, 1);
	assert_int_equal(c->buses[0].rs485, CONFIG_RS485_ON);
	assert_int_equal(c->boards[0].unit, 247);
	assert_int_equal(c->boards[0].profile.channels, 24);
	assert_int_equal(c->ncells, 24);
	assert_int_equal(config_cell_find(c, 24)->channel, 24);
}

struct bad_conf {
	const char *what;
	const char *text;
	size_t len;         /* 0: strlen(text) */
	int line;           /* 0: the error concerns the whole file */
	const char *reason; /* a part of it */
};

static const struct bad_conf bad_confs[] = {
	{ "bad integer",
	  "[timing]\npoll_ms = fast\n", 0,
	  2, "[timing] poll_ms must be a whole number from 20 to 5000, "
	     "not 'fast'" },
	{ "trailing junk",
	  "[timing]\npoll_ms = 100ms\n", 0,
	  2, "not '100ms'" },
	{ "out of range",
	  "[timing]\npoll_ms = 10\n", 0,
	  2, "poll_ms must be a whole number from 20 to 5000, not '10'" },
	{ "retries out of range",
	  "[timing]\nunlock_retries = 4\n", 0,
	  2, "from 0 to 3" },
	{ "unknown key",
	  "[timing]\npoll_ms = 100\nspeed = 3\n", 0,
	  3, "unknown key 'speed' in [timing]" },
	{ "unknown key in [board]",
	  BASE "colour = red\n", 0,
	  8, "unknown key 'colour' in [board A]" },
	{ "unknown section",
	  "[locker]\nid = x\n[colour]\nred = 1\n", 0,
	  3, "unknown section [colour]" },
	{ "key outside a section",
	  "id = x\n[locker]\nstate_dir = s\n", 0,
	  1, "outside any section" },
	{ "indented key (libinih would fold it into the value above)",
	  "[timing]\npoll_ms = 100\n  debounce_ms = 50\n", 0,
	  3, "indented line" },
	{ "unknown empty section",
	  "[locker]\nid = x\n[extra]\n", 0,
	  3, "unknown section [extra]" },
	{ "duplicate section",
	  "[locker]\nid = a\n[log]\nlevel = info\n[locker]\nstate_dir = s\n",
	  0, 5, "duplicate section [locker]" },
	{ "duplicate key",
	  "[locker]\nid = a\nid = b\n", 0,
	  3, "'id' is set twice in [locker]" },
	{ "syntax error",
	  "[locker]\nid a\n", 0,
	  2, "syntax error" },
	{ "bad id",
	  "[locker]\nid = my locker\n", 0,
	  2, "id must be 1-64" },
	{ "bad log level",
	  "[log]\nlevel = loud\n", 0,
	  2, "level must be error, warn, info or debug" },
	{ "bad check_modes",
	  "[locker]\ncheck_modes = maybe\n", 0,
	  2, "check_modes must be refuse or warn, not 'maybe'" },
	{ "PIN hash cost above what a board verifies in a turn",
	  "[kiosk]\npin_hash_kib = 65536\n", 0,
	  2, "pin_hash_kib must be a whole number from 8 to 16384" },
	{ "PIN hash passes above the top",
	  "[kiosk]\npin_hash_passes = 10\n", 0,
	  2, "pin_hash_passes must be a whole number from 1 to 4" },
	{ "bad client_user",
	  "[kiosk]\nclient_user = a b\n", 0,
	  2, "client_user must be a user name or uid" },
	{ "control client timeout 0",
	  "[control]\nclient_timeout_s = 0\n", 0,
	  2, "client_timeout_s must be a whole number from 1 to 3600" },
	{ "duplicate cell",
	  BASE "[cells]\n1-4 = A:1 S\n3 = A:9 M\n", 0,
	  10, "cell 3 is defined twice (first at line 9)" },
	{ "cell number 1000",
	  BASE "[cells]\n1000 = A:1 S\n", 0,
	  9, "numbers from 1 to 999" },
	{ "cell on a missing board",
	  BASE "[cells]\n1 = A:1 S\n2 = Z:1 S\n", 0,
	  10, "cell 2 is on board 'Z', which has no [board Z] section" },
	{ "channel beyond the profile",
	  BASE "[cells]\n1 = A:17 S\n", 0,
	  9, "cell 1 is on channel 17, but board A (generic-16) has 16 "
	     "channels" },
	{ "range runs beyond the profile",
	  BASE "[cells]\n1 = A:1 S\n2-4 = A:15 S\n", 0,
	  10, "cell 4 is on channel 17" },
	{ "channel 0",
	  BASE "[cells]\n1 = A:0 S\n", 0,
	  9, "channel 0 is out of range 1 to 64" },
	{ "two cells on one channel",
	  BASE "[cells]\n1 = A:1 S\n2 = A:2 S\n3 = A:1 M\n", 0,
	  11, "cell 3 uses board A channel 1, as cell 1 does" },
	{ "board on an unknown bus",
	  "[bus b]\ntype = tcp\n[board A]\nbus = nope\nunit = 1\n"
	  "profile = generic-16\n[cells]\n1 = A:1 S\n", 0,
	  3, "[board A] is on bus 'nope', which has no [bus nope] section" },
	{ "board without unit",
	  "[bus b]\ntype = tcp\n[board A]\nbus = b\nprofile = generic-16\n"
	  "[cells]\n1 = A:1 S\n", 0,
	  3, "[board A] needs bus, unit and profile" },
	{ "two boards with one unit on a bus",
	  BASE "[board B]\nbus = b\nunit = 1\nprofile = generic-16\n"
	  "[cells]\n1 = A:1 S\n", 0,
	  8, "[board B] has the same unit 1 on bus b as [board A]" },
	{ "rtu bus without device",
	  "[bus r]\ntype = rtu\nbaud = 19200\n[board A]\nbus = r\nunit = 1\n"
	  "profile = generic-16\n[cells]\n1 = A:1 S\n", 0,
	  1, "[bus r] of type rtu needs device" },
	{ "unknown profile",
	  "[bus b]\ntype = tcp\n[board A]\nbus = b\nunit = 1\n"
	  "profile = nosuch\n[cells]\n1 = A:1 S\n", 0,
	  3, "unknown board profile 'nosuch'" },
	{ "bad size letter",
	  BASE "[cells]\n1 = A:1 X\n", 0,
	  9, "SIZE S, M or L, not 'A:1 X'" },
	{ "two size letters",
	  BASE "[cells]\n1 = A:1 SM\n", 0,
	  9, "SIZE S, M or L" },
	{ "words after the size",
	  BASE "[cells]\n1 = A:1 S spare\n", 0,
	  9, "SIZE S, M or L" },
	{ "reversed range",
	  BASE "[cells]\n5-3 = A:1 S\n", 0,
	  9, "cell range '5-3' runs backwards" },
	{ "backoff max below min",
	  "[timing]\nboard_backoff_min_ms = 5000\n"
	  "board_backoff_max_ms = 1000\n" BASE "[cells]\n1 = A:1 S\n", 0,
	  0, "board_backoff_max_ms is less than board_backoff_min_ms" },
	{ "empty file",
	  "", 0,
	  0, "no [cells] defined" },
	{ "only comments",
	  "; nothing\n# here\n\n", 0,
	  0, "no [cells] defined" },
	{ "NUL byte",
	  "[locker]\nid = a\0b\n", 18,
	  0, "contains a NUL byte" },
};

/* Returns 0 when b is refused as it should be; prints why not otherwise. */
static int
check_bad(struct config *c, const struct bad_conf *b)
{
	char err[512], path[64], prefix[96];

	if (load_text(c, b->text, b->len ? b->len : strlen(b->text), path,
	    sizeof(path), err, sizeof(err)) != -1) {
		print_error("%s: accepted\n", b->what);
		return 1;
	}
	if (b->line > 0)
		snprintf(prefix, sizeof(prefix), "%s:%d: ", path, b->line);
	else
		snprintf(prefix, sizeof(prefix), "%s: ", path);
	if (strncmp(err, prefix, strlen(prefix)) != 0 ||
	    strstr(err, b->reason) == NULL) {
		print_error("%s: want '%s...%s...', got '%s'\n", b->what,
		    prefix, b->reason, err);
		return 1;
	}
	return 0;
}

static void
test_bad_files(void **state)
{
	struct config *c = *state;
	size_t i;
	int failed = 0;

	for (i = 0; i < sizeof(bad_confs) / sizeof(bad_confs[0]); i++)
		failed += check_bad(c, &bad_confs[i]);
	assert_int_equal(failed, 0);
}

/* Appends a comment line of exactly n characters (without the newline). */
static size_t
put_long_line(char *buf, size_t off, size_t n)
{
	buf[off++] = ';';
	memset(buf + off, 'x', n - 1);
	off += n - 1;
	buf[off++] = '\n';
	return off;
}

/*
 * Lines over 197 characters are refused with their own line number:
 * libinih (INI_MAX_LINE 200) needs three bytes of slack and would split
 * a longer line silently.
 */
static void
test_long_line(void **state)
{
	struct config *c = *state;
	struct bad_conf b = { "198-character line", NULL, 0, 3,
	    "line longer than 197 characters" };
	char text[1024];
	size_t n;

	n = (size_t)snprintf(text, sizeof(text), "[locker]\nid = a\n");
	n = put_long_line(text, n, 198);
	n += (size_t)snprintf(text + n, sizeof(text) - n, BASE "[cells]\n"
	    "1 = A:1 S\n");
	b.text = text;
	b.len = n;
	assert_int_equal(check_bad(c, &b), 0);
}

/*
 * A line of exactly 197 characters is accepted, and must not shift the
 * numbers of the lines after it: here the bad poll_ms is on line 5.
 */
static void
test_line_of_197_keeps_numbering(void **state)
{
	struct config *c = *state;
	struct bad_conf b = { "bad value after a 197-character line", NULL, 0,
	    5, "poll_ms must be a whole number" };
	char text[1024], err[512], path[64];
	size_t n;

	/* Accepted when nothing else is wrong. */
	n = (size_t)snprintf(text, sizeof(text), "[locker]\nid = a\n");
	n = put_long_line(text, n, 197);
	n += (size_t)snprintf(text + n, sizeof(text) - n, BASE "[cells]\n"
	    "1 = A:1 S\n");
	if (load_text(c, text, n, path, sizeof(path), err, sizeof(err)) != 0)
		fail_msg("197-character line refused: %s", err);

	n = (size_t)snprintf(text, sizeof(text), "[locker]\nid = a\n");
	n = put_long_line(text, n, 197);
	n += (size_t)snprintf(text + n, sizeof(text) - n,
	    "[timing]\npoll_ms = 10\n");
	b.text = text;
	b.len = n;
	assert_int_equal(check_bad(c, &b), 0);
}

static void
test_missing_file(void **state)
{
	struct config *c = *state;
	char err[512] = "";

	assert_int_equal(config_load(c, "/nonexistent/lockerd.conf", NULL,
	    err, sizeof(err)), -1);
	assert_non_null(strstr(err, "/nonexistent/lockerd.conf: "));
	assert_non_null(strstr(err, "No such file"));
}

/* --set overrides apply on top of the default, leaving the rest alone. */
static void
test_overrides(void **state)
{
	char *ov[] = { "bus sim.port=1600", "timing.poll_ms=50",
	    "locker.id=other", "bus sim.host=10.0.0.7", NULL };
	struct config *c = *state;
	char err[512] = "";

	if (config_load(c, NULL, ov, err, sizeof(err)) != 0)
		fail_msg("overrides: %s", err);
	assert_int_equal(c->buses[0].port, 1600);
	assert_string_equal(c->buses[0].host, "10.0.0.7");
	assert_int_equal(c->timing.poll_ms, 50);
	assert_string_equal(c->locker_id, "other");
	assert_int_equal(c->timing.debounce_ms, 150);
	assert_int_equal(c->nbuses, 1);
	assert_int_equal(c->nboards, 2);
	assert_int_equal(c->ncells, 24);

	/* On top of a file as well. */
	ov[0] = "timing.debounce_ms=0";
	ov[1] = NULL;
	assert_int_equal(config_load(c, CONF_FILE, ov, err, sizeof(err)), 0);
	assert_int_equal(c->timing.debounce_ms, 0);
	assert_int_equal(c->timing.poll_ms, 100);
}

static void
test_bad_overrides(void **state)
{
	static const struct {
		const char *ov, *reason;
	} t[] = {
		{ "timing.poll_ms=10", "poll_ms must be a whole number from 20 "
		  "to 5000, not '10'" },
		{ "timing.speed=3", "unknown key 'speed' in [timing]" },
		{ "poll_ms=50", "expected SECTION.KEY=VALUE" },
		{ "timing.poll_ms", "expected SECTION.KEY=VALUE" },
		{ ".poll_ms=50", "expected SECTION.KEY=VALUE" },
		{ "timing.=50", "expected SECTION.KEY=VALUE" },
		{ "colour.red=1", "unknown section [colour]" },
	};
	struct config *c = *state;
	char err[512], want[128];
	size_t i;
	int failed = 0;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char *ov[] = { "timing.poll_ms=200", (char *)t[i].ov, NULL };

		err[0] = '\0';
		snprintf(want, sizeof(want), "--set %s: ", t[i].ov);
		if (config_load(c, NULL, ov, err, sizeof(err)) != -1 ||
		    strncmp(err, want, strlen(want)) != 0 ||
		    strstr(err, t[i].reason) == NULL) {
			print_error("--set %s: want '%s...%s...', got '%s'\n",
			    t[i].ov, want, t[i].reason, err);
			failed++;
		}
	}
	assert_int_equal(failed, 0);
}

/*
 * An override that adds a cell clashing with the file's wiring is the
 * override's fault: the error must name --set, not a line of the file
 * (the override's index is not a line number of the file).
 */
static void
test_override_conflict_names_set(void **state)
{
	char *ov[] = { "timing.poll_ms=50", "cells.25=B:8 S", NULL };
	struct config *c = *state;
	char err[512] = "";

	assert_int_equal(config_load(c, NULL, ov, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "cell 25 uses board B channel 8, as cell "
	    "24 does"));
	if (strncmp(err, "--set cells.25=B:8 S", 20) != 0)
		fail_msg("want the error to name '--set cells.25=B:8 S', got "
		    "'%s'", err);
}

int
main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_default),
		T(test_lockerd_conf),
		T(test_cell_find),
		T(test_small_file),
		T(test_bad_files),
		T(test_long_line),
		T(test_line_of_197_keeps_numbering),
		T(test_missing_file),
		T(test_overrides),
		T(test_bad_overrides),
		T(test_override_conflict_names_set),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
