/*
 * Unit tests of locksim's physical model (sim/physics.c): scripted
 * scenarios of writes, person actions and faults against expected door,
 * lock and input states over time, plus address ranges and the automatic
 * person.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "board.h"
#include "physics.h"

enum op {
	OP_END,
	OP_COIL,	/* write coil ch := arg */
	OP_FLASH,	/* flash ch for arg units */
	OP_OPEN,	/* person opens, expecting result arg */
	OP_CLOSE,
	OP_PUT,		/* expecting result arg */
	OP_TAKE,	/* expecting result arg */
	OP_FORCE,
	OP_JAM,		/* arg on/off */
	OP_STUCK,
	OP_FLAP,
	OP_DOOR,	/* expect door_open == arg */
	OP_RELEASED,	/* expect released == arg */
	OP_COILREAD,	/* expect FC01 of ch == arg */
	OP_ITEM,	/* expect item == arg */
	OP_INPUT,	/* expect FC02 of the door input of ch == arg */
	OP_ITEMINPUT,	/* expect FC02 of the item input of ch == arg */
};

struct step {
	int64_t t;
	enum op op;
	int ch;
	int arg;
};

struct scenario {
	const char *name;
	const char *profile;
	int spring_ms;
	struct step steps[24];
};

static const struct scenario scenarios[] = {
	{ "pulse releases, door springs, stays open until closed",
	    "generic-16", 150, {
		{ 0, OP_DOOR, 1, 0 },
		{ 0, OP_COIL, 1, 1 },
		{ 0, OP_RELEASED, 1, 1 },
		{ 0, OP_COILREAD, 1, 1 },
		{ 149, OP_DOOR, 1, 0 },
		{ 150, OP_DOOR, 1, 1 },
		{ 500, OP_COIL, 1, 0 },
		{ 500, OP_RELEASED, 1, 0 },
		{ 60000, OP_DOOR, 1, 1 },
		{ 60000, OP_CLOSE, 1, 0 },
		{ 60000, OP_DOOR, 1, 0 },
		{ 60000, OP_OPEN, 1, PHYSICS_LOCKED },
		{ 0, OP_END, 0, 0 } } },
	{ "a pulse shorter than the spring delay still opens", "generic-16",
	    150, {
		{ 0, OP_COIL, 3, 1 },
		{ 50, OP_COIL, 3, 0 },
		{ 100, OP_DOOR, 3, 0 },
		{ 150, OP_DOOR, 3, 1 },
		{ 150, OP_DOOR, 4, 0 },
		{ 0, OP_END, 0, 0 } } },
	{ "spring delay follows spring_ms", "generic-16", 0, {
		{ 10, OP_COIL, 1, 1 },
		{ 10, OP_DOOR, 1, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "door inputs read open_level 0 on generic-16", "generic-16", 150, {
		{ 0, OP_INPUT, 5, 1 },
		{ 0, OP_FORCE, 5, 0 },
		{ 0, OP_INPUT, 5, 0 },
		{ 0, OP_INPUT, 6, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "item inputs read present_level 1 on generic-24", "generic-24",
	    150, {
		{ 0, OP_ITEMINPUT, 24, 0 },
		{ 0, OP_PUT, 24, PHYSICS_SHUT },
		{ 0, OP_FORCE, 24, 0 },
		{ 0, OP_PUT, 24, PHYSICS_OK },
		{ 0, OP_ITEMINPUT, 24, 1 },
		{ 0, OP_ITEMINPUT, 23, 0 },
		{ 0, OP_TAKE, 24, PHYSICS_OK },
		{ 0, OP_ITEMINPUT, 24, 0 },
		{ 0, OP_END, 0, 0 } } },
	{ "flash energises for value * unit ms", "waveshare-relay-d", 150, {
		{ 0, OP_FLASH, 2, 5 },
		{ 0, OP_RELEASED, 2, 1 },
		{ 0, OP_COILREAD, 2, 1 },
		{ 150, OP_DOOR, 2, 1 },
		{ 150, OP_INPUT, 2, 0 },
		{ 499, OP_COILREAD, 2, 1 },
		{ 500, OP_COILREAD, 2, 0 },
		{ 500, OP_RELEASED, 2, 0 },
		{ 0, OP_END, 0, 0 } } },
	{ "a long gap runs the timers in order", "waveshare-relay-d", 150, {
		{ 0, OP_FLASH, 1, 1 },
		{ 100000, OP_COILREAD, 1, 0 },
		{ 100000, OP_DOOR, 1, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "a plain write cuts a flash short", "waveshare-relay-d", 1000, {
		{ 0, OP_FLASH, 1, 50 },
		{ 100, OP_COIL, 1, 0 },
		{ 100, OP_RELEASED, 1, 0 },
		{ 1000, OP_DOOR, 1, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "jammed: releases, door stays, person cannot open, force can",
	    "generic-16", 150, {
		{ 0, OP_JAM, 2, 1 },
		{ 0, OP_COIL, 2, 1 },
		{ 0, OP_RELEASED, 2, 1 },
		{ 1000, OP_DOOR, 2, 0 },
		{ 1000, OP_OPEN, 2, PHYSICS_JAMMED },
		{ 1000, OP_FORCE, 2, 0 },
		{ 1000, OP_DOOR, 2, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "a jam freed while released lets the door pop", "generic-16", 150, {
		{ 0, OP_JAM, 1, 1 },
		{ 0, OP_COIL, 1, 1 },
		{ 100, OP_JAM, 1, 0 },
		{ 249, OP_DOOR, 1, 0 },
		{ 250, OP_DOOR, 1, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "jam set during the spring delay holds the door", "generic-16",
	    150, {
		{ 0, OP_COIL, 1, 1 },
		{ 100, OP_JAM, 1, 1 },
		{ 1000, OP_DOOR, 1, 0 },
		{ 0, OP_END, 0, 0 } } },
	{ "stuck relay: write recorded, lock never releases", "generic-16",
	    150, {
		{ 0, OP_STUCK, 1, 1 },
		{ 0, OP_COIL, 1, 1 },
		{ 0, OP_COILREAD, 1, 1 },
		{ 0, OP_RELEASED, 1, 0 },
		{ 1000, OP_DOOR, 1, 0 },
		{ 1000, OP_OPEN, 1, PHYSICS_LOCKED },
		{ 2000, OP_STUCK, 1, 0 },
		{ 2000, OP_RELEASED, 1, 1 },
		{ 2149, OP_DOOR, 1, 0 },
		{ 2150, OP_DOOR, 1, 1 },
		{ 0, OP_END, 0, 0 } } },
	{ "the person: open early, item in, close with coil on", "generic-24",
	    150, {
		{ 0, OP_PUT, 1, PHYSICS_SHUT },
		{ 0, OP_OPEN, 1, PHYSICS_LOCKED },
		{ 0, OP_COIL, 1, 1 },
		{ 50, OP_OPEN, 1, PHYSICS_OK },
		{ 60, OP_PUT, 1, PHYSICS_OK },
		{ 60, OP_ITEM, 1, 1 },
		{ 100, OP_CLOSE, 1, 0 },
		{ 1000, OP_DOOR, 1, 0 },
		{ 1000, OP_OPEN, 1, PHYSICS_OK },
		{ 1100, OP_TAKE, 1, PHYSICS_OK },
		{ 1100, OP_ITEM, 1, 0 },
		{ 1100, OP_OPEN, 1, PHYSICS_OK },
		{ 1200, OP_COIL, 1, 0 },
		{ 1200, OP_OPEN, 1, PHYSICS_OK },
		{ 1300, OP_CLOSE, 1, 0 },
		{ 1300, OP_OPEN, 1, PHYSICS_LOCKED },
		{ 0, OP_END, 0, 0 } } },
	{ "force opens a locked door", "waveshare-relay-d", 150, {
		{ 0, OP_FORCE, 8, 0 },
		{ 0, OP_DOOR, 8, 1 },
		{ 0, OP_INPUT, 8, 0 },
		{ 0, OP_RELEASED, 8, 0 },
		{ 0, OP_END, 0, 0 } } },
};

static void
model_new(struct physics **mp, const char *profile, int spring_ms,
    uint64_t seed)
{
	const struct board_profile *p = board_builtin(profile);
	struct physics *m;

	assert_non_null(p);
	m = calloc(1, sizeof(*m));
	assert_non_null(m);
	physics_init(m, spring_ms, seed);
	assert_non_null(physics_board_add(m, 1, p));
	*mp = m;
}

static int
read_input(struct physics *m, struct physics_board *b, int addr, int64_t t)
{
	uint8_t bit = 0xff;

	assert_int_equal(physics_read_inputs(m, b, addr, 1, &bit, t), 0);
	return bit;
}

static void
step_run(struct physics *m, struct physics_board *b, const struct step *s)
{
	struct physics_channel *c = &b->ch[s->ch - 1];
	uint8_t bit = (uint8_t)s->arg;
	int addr;

	switch (s->op) {
	case OP_END:
		break;
	case OP_COIL:
		addr = board_coil_addr(&b->profile, s->ch);
		assert_int_equal(physics_write_coils(m, b, addr, 1, &bit,
		    s->t), 0);
		break;
	case OP_FLASH:
		addr = board_flash_addr(&b->profile, s->ch);
		assert_int_equal(physics_flash(m, b, addr, s->arg, s->t), 0);
		break;
	case OP_OPEN:
		assert_int_equal(physics_open(m, b, s->ch, s->t), s->arg);
		break;
	case OP_CLOSE:
		physics_close(m, b, s->ch, s->t);
		break;
	case OP_PUT:
		assert_int_equal(physics_put(m, b, s->ch, s->t), s->arg);
		break;
	case OP_TAKE:
		assert_int_equal(physics_take(m, b, s->ch, s->t), s->arg);
		break;
	case OP_FORCE:
		physics_force(m, b, s->ch, s->t);
		break;
	case OP_JAM:
		physics_set_jam(m, b, s->ch, s->arg, s->t);
		break;
	case OP_STUCK:
		physics_set_stuck(m, b, s->ch, s->arg, s->t);
		break;
	case OP_FLAP:
		physics_set_flap(m, b, s->ch, s->arg, s->t);
		break;
	case OP_DOOR:
		physics_advance(m, s->t);
		assert_int_equal(c->door_open, s->arg);
		break;
	case OP_RELEASED:
		physics_advance(m, s->t);
		assert_int_equal(physics_released(c), s->arg);
		break;
	case OP_COILREAD:
		addr = board_coil_addr(&b->profile, s->ch);
		assert_int_equal(physics_read_coils(m, b, addr, 1, &bit,
		    s->t), 0);
		assert_int_equal(bit, s->arg);
		break;
	case OP_ITEM:
		physics_advance(m, s->t);
		assert_int_equal(c->item, s->arg);
		break;
	case OP_INPUT:
		assert_int_equal(read_input(m, b,
		    b->profile.door_base + s->ch - 1, s->t), s->arg);
		break;
	case OP_ITEMINPUT:
		assert_int_equal(read_input(m, b,
		    b->profile.item_base + s->ch - 1, s->t), s->arg);
		break;
	}
}

static void
test_scenarios(void **state)
{
	const struct scenario *sc;
	const struct step *st;
	struct physics *m;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		sc = &scenarios[i];
		print_message("scenario: %s\n", sc->name);
		model_new(&m, sc->profile, sc->spring_ms, 42);
		for (st = sc->steps; st->op != OP_END; st++)
			step_run(m, physics_board_find(m, 1), st);
		free(m);
	}
}

static void
test_ranges(void **state)
{
	static const struct {
		const char *profile;
		int coils, inputs;	/* readable counts from address 0 */
		int flash;		/* first flash address, -1 = none */
	} cases[] = {
		{ "generic-16", 16, 16, -1 },
		{ "generic-24", 24, 48, -1 },
		{ "waveshare-relay-d", 8, 8, 0x200 },
	};
	struct physics_board *b;
	struct physics *m;
	uint8_t bits[64], one = 1;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		model_new(&m, cases[i].profile, 150, 1);
		b = physics_board_find(m, 1);
		assert_int_equal(physics_read_coils(m, b, 0, cases[i].coils,
		    bits, 0), 0);
		assert_int_equal(physics_read_coils(m, b, 0,
		    cases[i].coils + 1, bits, 0), -1);
		assert_int_equal(physics_read_coils(m, b, 0, 0, bits, 0), -1);
		assert_int_equal(physics_read_inputs(m, b, 0, cases[i].inputs,
		    bits, 0), 0);
		assert_int_equal(physics_read_inputs(m, b, 1, cases[i].inputs,
		    bits, 0), -1);
		assert_int_equal(physics_write_coils(m, b, cases[i].coils, 1,
		    &one, 0), -1);
		/* A write that runs past the end changes nothing. */
		memset(bits, 1, sizeof(bits));
		assert_int_equal(physics_write_coils(m, b, cases[i].coils - 1,
		    2, bits, 0), -1);
		assert_int_equal(b->ch[cases[i].coils - 1].coil, 0);
		if (cases[i].flash < 0) {
			assert_false(physics_is_flash_addr(b, 0x200));
			assert_int_equal(physics_flash(m, b, 0, 5, 0), -1);
		} else {
			assert_true(physics_is_flash_addr(b, cases[i].flash));
			assert_true(physics_is_flash_addr(b,
			    cases[i].flash + cases[i].coils - 1));
			assert_false(physics_is_flash_addr(b,
			    cases[i].flash + cases[i].coils));
			assert_false(physics_is_flash_addr(b, 0));
			assert_int_equal(physics_flash(m, b, cases[i].flash,
			    0, 0), -1);
		}
		free(m);
	}
}

static void
test_unmapped_inputs_read_zero(void **state)
{
	static const char ini[] =
	    "[profile]\nname = gap\nchannels = 2\ndoor_base = 4\n"
	    "door_open_level = 1\nitem_base = 10\nitem_present_level = 0\n";
	struct board_profile p;
	struct physics_board *b;
	struct physics *m = calloc(1, sizeof(*m));
	uint8_t bits[12];
	char err[128];
	int i;

	(void)state;
	assert_non_null(m);
	assert_int_equal(board_profile_parse(ini, "gap", &p, err,
	    sizeof(err)), 0);
	physics_init(m, 150, 1);
	b = physics_board_add(m, 7, &p);
	assert_non_null(b);
	assert_int_equal(physics_read_inputs(m, b, 0, 12, bits, 0), 0);
	for (i = 0; i < 12; i++) {
		/* Doors closed read 0, no items read 1, the rest 0. */
		if (i == 10 || i == 11)
			assert_int_equal(bits[i], 1);
		else
			assert_int_equal(bits[i], 0);
	}
	assert_int_equal(physics_read_inputs(m, b, 0, 13, bits, 0), -1);
	free(m);
}

static void
test_flap(void **state)
{
	struct physics_board *b;
	struct physics *m;
	int i, seen[2] = { 0, 0 };

	(void)state;
	model_new(&m, "generic-16", 150, 7);
	b = physics_board_find(m, 1);
	physics_set_flap(m, b, 4, 1, 0);
	for (i = 0; i < 200; i++)
		seen[read_input(m, b, 3, i)]++;
	assert_true(seen[0] > 50 && seen[1] > 50);
	/* Only the door input of the flapping channel is noisy. */
	for (i = 0; i < 50; i++)
		assert_int_equal(read_input(m, b, 4, i), 1);
	assert_int_equal(b->ch[3].door_open, 0);
	physics_set_flap(m, b, 4, 0, 300);
	for (i = 0; i < 50; i++)
		assert_int_equal(read_input(m, b, 3, 300 + i), 1);
	free(m);
}

/* When the automatic person toggles the item and closes the door. */
static void
auto_times(uint64_t seed, int64_t *item_at, int64_t *close_at)
{
	struct physics_board *b;
	struct physics *m;
	uint8_t on = 1;
	int64_t t;

	model_new(&m, "generic-24", 150, seed);
	b = physics_board_find(m, 1);
	physics_set_auto(m, 1, 0);
	assert_int_equal(physics_write_coils(m, b, 0, 1, &on, 0), 0);
	*item_at = *close_at = -1;
	for (t = 0; t <= 10000 && *close_at < 0; t++) {
		physics_advance(m, t);
		if (*item_at < 0 && b->ch[0].item)
			*item_at = t;
		if (*item_at >= 0 && !b->ch[0].door_open)
			*close_at = t;
	}
	free(m);
}

static void
test_auto_person(void **state)
{
	int64_t item_at, close_at, item2, close2;
	uint64_t seed;
	int differ = 0;

	(void)state;
	for (seed = 1; seed <= 20; seed++) {
		auto_times(seed, &item_at, &close_at);
		assert_true(item_at >= 150 + PHYSICS_AUTO_ITEM_MIN_MS);
		assert_true(item_at <= 150 + PHYSICS_AUTO_ITEM_MAX_MS);
		assert_true(close_at - item_at >= PHYSICS_AUTO_CLOSE_MIN_MS);
		assert_true(close_at - item_at <= PHYSICS_AUTO_CLOSE_MAX_MS);
		auto_times(seed, &item2, &close2);
		assert_int_equal(item_at, item2);
		assert_int_equal(close_at, close2);
		auto_times(seed + 100, &item2, &close2);
		differ += item2 != item_at;
	}
	assert_true(differ > 10);
}

static void
test_auto_cancel(void **state)
{
	struct physics_board *b;
	struct physics *m;
	uint8_t on = 1;

	(void)state;
	model_new(&m, "generic-24", 150, 3);
	b = physics_board_find(m, 1);
	physics_set_auto(m, 1, 0);
	assert_int_equal(physics_write_coils(m, b, 0, 2, (uint8_t[]){ 1, 1 },
	    0), 0);
	physics_advance(m, 200);
	assert_true(b->ch[0].door_open && b->ch[1].door_open);
	/* A person closing the door ends the automatic visit to it. */
	physics_close(m, b, 1, 300);
	physics_advance(m, 10000);
	assert_int_equal(b->ch[0].item, 0);
	assert_int_equal(b->ch[1].door_open, 0);
	assert_int_equal(b->ch[1].item, 1);
	/* Switching auto off leaves a sprung door open. */
	physics_set_auto(m, 0, 10000);
	assert_int_equal(physics_write_coils(m, b, 2, 1, &on, 10000), 0);
	physics_advance(m, 20000);
	assert_int_equal(b->ch[2].door_open, 1);
	assert_int_equal(b->ch[2].item, 0);
	assert_int_equal(physics_next_due(m), -1);
	free(m);
}

static void
test_next_due(void **state)
{
	struct physics_board *b;
	struct physics *m;
	uint8_t on = 1;

	(void)state;
	model_new(&m, "waveshare-relay-d", 150, 1);
	b = physics_board_find(m, 1);
	assert_int_equal(physics_next_due(m), -1);
	assert_int_equal(physics_flash(m, b, 0x201, 1, 1000), 0);
	assert_int_equal(physics_next_due(m), 1100);
	assert_int_equal(physics_write_coils(m, b, 0, 1, &on, 1050), 0);
	assert_int_equal(physics_next_due(m), 1100);
	physics_advance(m, 1100);
	assert_int_equal(physics_next_due(m), 1150);
	physics_advance(m, 1150);
	assert_int_equal(physics_next_due(m), 1200);
	physics_advance(m, 1200);
	assert_int_equal(physics_next_due(m), -1);
	/* Time never runs backwards inside the model. */
	physics_advance(m, 5);
	assert_int_equal(m->now, 1200);
	free(m);
}

static void
test_boards_and_random(void **state)
{
	const struct board_profile *p = board_builtin("generic-16");
	struct physics *m = calloc(1, sizeof(*m));
	struct physics *n = calloc(1, sizeof(*n));
	uint32_t r, hist[6] = { 0 };
	int i;

	(void)state;
	assert_non_null(m);
	assert_non_null(n);
	physics_init(m, 150, 0);
	for (i = 1; i <= PHYSICS_BOARDS_MAX; i++)
		assert_non_null(physics_board_add(m, i, p));
	assert_null(physics_board_add(m, 99, p));
	physics_init(m, 150, 9);
	assert_non_null(physics_board_add(m, 5, p));
	assert_null(physics_board_add(m, 5, p));
	assert_null(physics_board_find(m, 6));
	assert_int_equal(physics_board_find(m, 5)->unit, 5);

	physics_init(n, 150, 9);
	for (i = 0; i < 6000; i++) {
		r = physics_random(m, 6);
		assert_true(r < 6);
		assert_int_equal(r, physics_random(n, 6));
		hist[r]++;
	}
	for (i = 0; i < 6; i++)
		assert_true(hist[i] > 800 && hist[i] < 1200);
	free(m);
	free(n);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scenarios),
		cmocka_unit_test(test_ranges),
		cmocka_unit_test(test_unmapped_inputs_read_zero),
		cmocka_unit_test(test_flap),
		cmocka_unit_test(test_auto_person),
		cmocka_unit_test(test_auto_cancel),
		cmocka_unit_test(test_next_due),
		cmocka_unit_test(test_boards_and_random),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
