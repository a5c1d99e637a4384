/*
 * The physical model of locksim: what each relay, lock, door and item does
 * over time, the faults of the hardware, and the automatic person. Timers
 * are handled in time order, each at its own due time, so that a long gap
 * between calls gives the same result as many short ones.
 */
#include "physics.h"

#include <string.h>

void
physics_init(struct physics *m, int spring_ms, uint64_t seed)
{
	memset(m, 0, sizeof(*m));
	m->spring_ms = spring_ms < 0 ? 0 : spring_ms;
	/* xorshift must not start from zero. */
	m->rng = seed != 0 ? seed : 0x9e3779b97f4a7c15ULL;
}

struct physics_board *
physics_board_add(struct physics *m, int unit, const struct board_profile *p)
{
	struct physics_board *b;
	int i;

	if (m->nboards == PHYSICS_BOARDS_MAX ||
	    physics_board_find(m, unit) != NULL)
		return NULL;
	b = &m->board[m->nboards++];
	memset(b, 0, sizeof(*b));
	b->unit = unit;
	b->profile = *p;
	for (i = 0; i < BOARD_CHANNELS_MAX; i++) {
		b->ch[i].flash_end = -1;
		b->ch[i].spring_at = -1;
		b->ch[i].auto_at = -1;
	}
	return b;
}

struct physics_board *
physics_board_find(struct physics *m, int unit)
{
	int i;

	for (i = 0; i < m->nboards; i++)
		if (m->board[i].unit == unit)
			return &m->board[i];
	return NULL;
}

uint32_t
physics_random(struct physics *m, uint32_t bound)
{
	uint64_t x = m->rng;

	/* xorshift64*; the modulo bias is irrelevant at these bounds. */
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	m->rng = x;
	return (uint32_t)((x * 0x2545f4914f6cdd1dULL) >> 32) % bound;
}

static int64_t
random_between(struct physics *m, int lo, int hi)
{
	return lo + (int64_t)physics_random(m, (uint32_t)(hi - lo + 1));
}

int
physics_released(const struct physics_channel *c)
{
	return c->coil && !c->stuck;
}

static void
spring_arm(struct physics *m, struct physics_channel *c, int64_t t)
{
	if (!c->door_open && !c->jammed && c->spring_at < 0)
		c->spring_at = t + m->spring_ms;
}

/* Every change of coil or stuck goes through here to catch the release. */
static void
channel_update(struct physics *m, struct physics_channel *c, int coil,
    int stuck, int64_t t)
{
	int before = physics_released(c);

	c->coil = coil;
	c->stuck = stuck;
	if (!before && physics_released(c))
		spring_arm(m, c, t);
}

static void
auto_cancel(struct physics_channel *c)
{
	c->auto_at = -1;
	c->auto_step = PHYSICS_AUTO_IDLE;
}

static void
timer_fire(struct physics *m, struct physics_channel *c, int64_t t)
{
	if (c->flash_end == t) {
		c->flash_end = -1;
		channel_update(m, c, 0, c->stuck, t);
	}
	if (c->spring_at == t) {
		/*
		 * Once the latch has let go the door springs, even if the
		 * lock holds again meanwhile; only a jam stops it.
		 */
		c->spring_at = -1;
		if (!c->door_open && !c->jammed) {
			c->door_open = 1;
			if (m->auto_person) {
				c->auto_at = t + random_between(m,
				    PHYSICS_AUTO_ITEM_MIN_MS,
				    PHYSICS_AUTO_ITEM_MAX_MS);
				c->auto_step = PHYSICS_AUTO_ITEM;
			}
		}
	}
	if (c->auto_at == t) {
		if (!c->door_open)
			auto_cancel(c);
		else if (c->auto_step == PHYSICS_AUTO_ITEM) {
			c->item = !c->item;
			c->auto_at = t + random_between(m,
			    PHYSICS_AUTO_CLOSE_MIN_MS,
			    PHYSICS_AUTO_CLOSE_MAX_MS);
			c->auto_step = PHYSICS_AUTO_CLOSE;
		} else {
			c->door_open = 0;
			auto_cancel(c);
		}
	}
}

static int64_t
channel_next_due(const struct physics_channel *c)
{
	int64_t due = -1;

	if (c->flash_end >= 0)
		due = c->flash_end;
	if (c->spring_at >= 0 && (due < 0 || c->spring_at < due))
		due = c->spring_at;
	if (c->auto_at >= 0 && (due < 0 || c->auto_at < due))
		due = c->auto_at;
	return due;
}

/* The channel whose timer is due first; NULL when none is pending. */
static struct physics_channel *
channel_earliest(const struct physics *m, int64_t *due)
{
	const struct physics_channel *first = NULL;
	const struct physics_board *b;
	int64_t d;
	int i, ch;

	*due = -1;
	for (i = 0; i < m->nboards; i++) {
		b = &m->board[i];
		for (ch = 0; ch < b->profile.channels; ch++) {
			d = channel_next_due(&b->ch[ch]);
			if (d >= 0 && (*due < 0 || d < *due)) {
				*due = d;
				first = &b->ch[ch];
			}
		}
	}
	return (struct physics_channel *)first;
}

int64_t
physics_next_due(const struct physics *m)
{
	int64_t due;

	channel_earliest(m, &due);
	return due;
}

void
physics_advance(struct physics *m, int64_t now)
{
	struct physics_channel *c;
	int64_t due;

	if (now < m->now)
		now = m->now;
	while ((c = channel_earliest(m, &due)) != NULL && due <= now) {
		m->now = due;
		timer_fire(m, c, due);
	}
	m->now = now;
}

static int
coil_range(const struct physics_board *b, int addr, int count)
{
	const struct board_profile *p = &b->profile;

	return count >= 1 && addr >= p->coil_base &&
	    addr + count <= p->coil_base + p->channels;
}

static int
input_level(struct physics *m, const struct physics_board *b, int addr)
{
	const struct board_profile *p = &b->profile;
	const struct physics_channel *c;

	if (addr >= p->door_base && addr < p->door_base + p->channels) {
		c = &b->ch[addr - p->door_base];
		if (c->flap)
			return (int)physics_random(m, 2);
		return c->door_open ? p->door_open_level :
		    !p->door_open_level;
	}
	if (p->item_base >= 0 && addr >= p->item_base &&
	    addr < p->item_base + p->channels) {
		c = &b->ch[addr - p->item_base];
		return c->item ? p->item_present_level :
		    !p->item_present_level;
	}
	return 0;
}

int
physics_read_coils(struct physics *m, struct physics_board *b, int addr,
    int count, uint8_t *bits, int64_t now)
{
	int i;

	if (!coil_range(b, addr, count))
		return -1;
	physics_advance(m, now);
	for (i = 0; i < count; i++)
		bits[i] = b->ch[addr - b->profile.coil_base + i].coil != 0;
	return 0;
}

int
physics_read_inputs(struct physics *m, struct physics_board *b, int addr,
    int count, uint8_t *bits, int64_t now)
{
	const struct board_profile *p = &b->profile;
	int i;

	if (count < 1 || addr < 0 || addr + count > p->input_base +
	    p->input_count)
		return -1;
	physics_advance(m, now);
	for (i = 0; i < count; i++)
		bits[i] = (uint8_t)input_level(m, b, addr + i);
	return 0;
}

int
physics_write_coils(struct physics *m, struct physics_board *b, int addr,
    int count, const uint8_t *bits, int64_t now)
{
	struct physics_channel *c;
	int i;

	if (!coil_range(b, addr, count))
		return -1;
	physics_advance(m, now);
	for (i = 0; i < count; i++) {
		c = &b->ch[addr - b->profile.coil_base + i];
		/* A plain write overrides a running board-timed pulse. */
		c->flash_end = -1;
		channel_update(m, c, bits[i] != 0, c->stuck, m->now);
	}
	physics_advance(m, now);
	return 0;
}

int
physics_is_flash_addr(const struct physics_board *b, int addr)
{
	const struct board_profile *p = &b->profile;

	return p->unlock == BOARD_UNLOCK_FLASH && addr >= p->flash_base &&
	    addr < p->flash_base + p->channels;
}

int
physics_flash(struct physics *m, struct physics_board *b, int addr,
    int units, int64_t now)
{
	struct physics_channel *c;

	if (!physics_is_flash_addr(b, addr) || units < 1)
		return -1;
	physics_advance(m, now);
	c = &b->ch[addr - b->profile.flash_base];
	c->flash_end = m->now + (int64_t)units * b->profile.flash_unit_ms;
	channel_update(m, c, 1, c->stuck, m->now);
	physics_advance(m, now);
	return 0;
}

static struct physics_channel *
channel_at(struct physics *m, struct physics_board *b, int ch, int64_t now)
{
	physics_advance(m, now);
	return &b->ch[ch - 1];
}

enum physics_result
physics_open(struct physics *m, struct physics_board *b, int ch, int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	if (c->door_open)
		return PHYSICS_OK;
	if (!physics_released(c))
		return PHYSICS_LOCKED;
	if (c->jammed)
		return PHYSICS_JAMMED;
	c->door_open = 1;
	c->spring_at = -1;
	return PHYSICS_OK;
}

void
physics_close(struct physics *m, struct physics_board *b, int ch, int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	c->door_open = 0;
	auto_cancel(c);
}

enum physics_result
physics_put(struct physics *m, struct physics_board *b, int ch, int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	if (!c->door_open)
		return PHYSICS_SHUT;
	c->item = 1;
	return PHYSICS_OK;
}

enum physics_result
physics_take(struct physics *m, struct physics_board *b, int ch, int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	if (!c->door_open)
		return PHYSICS_SHUT;
	c->item = 0;
	return PHYSICS_OK;
}

void
physics_force(struct physics *m, struct physics_board *b, int ch, int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	c->door_open = 1;
	c->spring_at = -1;
}

void
physics_set_jam(struct physics *m, struct physics_board *b, int ch, int on,
    int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	c->jammed = on != 0;
	/* Freed while the lock is open, the door pops as on a release. */
	if (!c->jammed && physics_released(c))
		spring_arm(m, c, m->now);
	physics_advance(m, now);
}

void
physics_set_stuck(struct physics *m, struct physics_board *b, int ch, int on,
    int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	channel_update(m, c, c->coil, on != 0, m->now);
	physics_advance(m, now);
}

void
physics_set_flap(struct physics *m, struct physics_board *b, int ch, int on,
    int64_t now)
{
	struct physics_channel *c = channel_at(m, b, ch, now);

	c->flap = on != 0;
}

void
physics_set_auto(struct physics *m, int on, int64_t now)
{
	int i, ch;

	physics_advance(m, now);
	m->auto_person = on != 0;
	if (m->auto_person)
		return;
	for (i = 0; i < m->nboards; i++)
		for (ch = 0; ch < BOARD_CHANNELS_MAX; ch++)
			auto_cancel(&m->board[i].ch[ch]);
}

const char *
physics_strerror(enum physics_result r)
{
	switch (r) {
	case PHYSICS_OK:
		return "ok";
	case PHYSICS_LOCKED:
		return "locked";
	case PHYSICS_JAMMED:
		return "jammed";
	case PHYSICS_SHUT:
		return "door closed";
	}
	return "unknown";
}
