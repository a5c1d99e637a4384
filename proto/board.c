/*
 * Board profiles: parsing the INI description of a lock board model and
 * turning its addresses and input bits into per-channel facts.
 */
#include "board.h"

#include <errno.h>
#include <stdarg.h>
#include <ini.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inicheck.h"

struct parse_ctx {
	struct board_profile *p;
	struct inicheck_reader rd;
	char reason[160];
	int reason_line;
	unsigned seen;         /* bit per key, so a key set twice is refused */
};

static const char *const profile_keys[] = {
	"name", "unlock", "channels", "coil_base", "pulse_ms", "flash_base",
	"flash_unit_ms", "door_base", "door_open_level", "item_base",
	"item_present_level",
};

/* Keeps the first reason: libinih reports the first bad line. */
static int
fail(struct parse_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
fail(struct parse_ctx *c, const char *fmt, ...)
{
	va_list ap;

	if (c->reason[0] == '\0') {
		va_start(ap, fmt);
		vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
		va_end(ap);
		c->reason_line = c->rd.line;
	}
	return 0;
}

/* Strict integer: decimal or 0x hex, whole string, within [lo, hi]. */
static int
parse_int(const char *s, long lo, long hi, int *out)
{
	char *end;
	long v;

	if (*s == '\0')
		return -1;
	errno = 0;
	v = strtol(s, &end, 0);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = (int)v;
	return 0;
}

static int
profile_handler(void *user, const char *section, const char *name,
    const char *value)
{
	struct parse_ctx *c = user;
	struct board_profile *p = c->p;
	int *field = NULL;
	long lo = 0, hi = 0xffff;
	size_t k;

	if (strcmp(section, "profile") != 0)
		return fail(c, "unknown section [%.40s] (expected [profile])",
		    section);
	for (k = 0; k < sizeof(profile_keys) / sizeof(profile_keys[0]); k++)
		if (strcmp(name, profile_keys[k]) == 0)
			break;
	if (k < sizeof(profile_keys) / sizeof(profile_keys[0])) {
		if (c->seen & (1u << k))
			return fail(c, "'%s' is set twice", name);
		c->seen |= 1u << k;
	}
	if (strcmp(name, "name") == 0) {
		size_t n = strlen(value);
		if (n == 0 || n >= sizeof(p->name))
			return fail(c, "name must be 1 to %zu characters",
			    sizeof(p->name) - 1);
		memcpy(p->name, value, n + 1);
		return 1;
	}
	if (strcmp(name, "unlock") == 0) {
		if (strcmp(value, "pulse") == 0)
			p->unlock = BOARD_UNLOCK_PULSE;
		else if (strcmp(value, "flash") == 0)
			p->unlock = BOARD_UNLOCK_FLASH;
		else
			return fail(c, "unlock must be pulse or flash, not "
			    "'%.40s'", value);
		return 1;
	}
	if (strcmp(name, "channels") == 0)
		field = &p->channels, lo = 1, hi = BOARD_CHANNELS_MAX;
	else if (strcmp(name, "coil_base") == 0)
		field = &p->coil_base;
	else if (strcmp(name, "pulse_ms") == 0)
		field = &p->pulse_ms, lo = 50, hi = 10000;
	else if (strcmp(name, "flash_base") == 0)
		field = &p->flash_base;
	else if (strcmp(name, "flash_unit_ms") == 0)
		field = &p->flash_unit_ms, lo = 1, hi = 10000;
	else if (strcmp(name, "door_base") == 0)
		field = &p->door_base;
	else if (strcmp(name, "door_open_level") == 0)
		field = &p->door_open_level, hi = 1;
	else if (strcmp(name, "item_base") == 0)
		field = &p->item_base, lo = -1;
	else if (strcmp(name, "item_present_level") == 0)
		field = &p->item_present_level, hi = 1;
	else
		return fail(c, "unknown key '%.40s'", name);
	if (parse_int(value, lo, hi, field) == -1)
		return fail(c, "%s must be an integer from %ld to %ld, not "
		    "'%.40s'", name, lo, hi, value);
	return 1;
}

static int
profile_finish(struct board_profile *p, char *reason, size_t len)
{
	int lo, hi, item_end;

	if (p->name[0] == '\0' || p->channels == 0) {
		snprintf(reason, len, "name and channels are required");
		return -1;
	}
	if (p->unlock == BOARD_UNLOCK_PULSE &&
	    p->coil_base + p->channels - 1 > 0xffff) {
		snprintf(reason, len, "coil_base + channels exceeds 0xffff");
		return -1;
	}
	if (p->unlock == BOARD_UNLOCK_FLASH &&
	    (p->flash_unit_ms == 0 ||
	     p->flash_base + p->channels - 1 > 0xffff)) {
		snprintf(reason, len,
		    "flash unlock needs flash_base and flash_unit_ms in range");
		return -1;
	}
	lo = p->door_base;
	hi = p->door_base + p->channels;
	if (p->item_base >= 0 && p->item_base < hi &&
	    p->item_base + p->channels > lo) {
		snprintf(reason, len, "door inputs and item inputs overlap");
		return -1;
	}
	if (p->item_base >= 0) {
		item_end = p->item_base + p->channels;
		if (p->item_base < lo)
			lo = p->item_base;
		if (item_end > hi)
			hi = item_end;
	}
	if (hi - lo > BOARD_INPUTS_MAX || hi - 1 > 0xffff) {
		snprintf(reason, len,
		    "door and item inputs must fit in one read of %d inputs",
		    BOARD_INPUTS_MAX);
		return -1;
	}
	p->input_base = lo;
	p->input_count = hi - lo;
	return 0;
}

int
board_profile_parse(const char *text, const char *origin,
    struct board_profile *out, char *err, size_t errlen)
{
	static const char *const sections[] = { "profile", NULL };
	struct parse_ctx c;
	struct board_profile p;
	int line;

	memset(&p, 0, sizeof(p));
	p.unlock = BOARD_UNLOCK_PULSE;
	p.pulse_ms = 500;
	p.flash_unit_ms = 100;
	p.item_base = -1;
	p.item_present_level = 1;
	memset(&c, 0, sizeof(c));
	c.p = &p;

	if (inicheck_text(text, sections, &line, c.reason,
	    sizeof(c.reason)) == -1) {
		snprintf(err, errlen, "%s:%d: %s", origin, line, c.reason);
		return -1;
	}
	c.rd.pos = text;
	line = ini_parse_stream(inicheck_read, &c.rd, profile_handler, &c);
	if (line != 0) {
		/* A syntax error comes before any handler's complaint. */
		snprintf(err, errlen, "%s:%d: %s", origin, line,
		    c.reason[0] && c.reason_line == line ? c.reason :
		    "syntax error (expected key = value)");
		return -1;
	}
	if (profile_finish(&p, c.reason, sizeof(c.reason)) == -1) {
		snprintf(err, errlen, "%s: %s", origin, c.reason);
		return -1;
	}
	*out = p;
	return 0;
}

int
board_coil_addr(const struct board_profile *p, int ch)
{
	return p->coil_base + ch - 1;
}

int
board_flash_addr(const struct board_profile *p, int ch)
{
	return p->flash_base + ch - 1;
}

int
board_flash_value(const struct board_profile *p)
{
	int v = (p->pulse_ms + p->flash_unit_ms - 1) / p->flash_unit_ms;

	return v < 1 ? 1 : v;
}

void
board_decode_inputs(const struct board_profile *p, const uint8_t *bits,
    uint8_t *door_open, uint8_t *item_present)
{
	int ch;

	for (ch = 0; ch < p->channels; ch++) {
		door_open[ch] = bits[p->door_base - p->input_base + ch] ==
		    p->door_open_level;
		if (p->item_base >= 0)
			item_present[ch] =
			    bits[p->item_base - p->input_base + ch] ==
			    p->item_present_level;
		else
			item_present[ch] = 0;
	}
}
