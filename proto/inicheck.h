/*
 * What libinih lets through silently, checked before it parses: lines it
 * would split (longer than INI_MAX_LINE allows), indented lines it would
 * fold into the previous value, and unknown or repeated sections.
 */
#ifndef LOCKERD_INICHECK_H
#define LOCKERD_INICHECK_H

#include <stddef.h>

/* libinih's INI_MAX_LINE (200) less its own three bytes of slack. */
#define INICHECK_LINE_MAX 197

/*
 * sections: the allowed names, NULL-terminated; a name that ends in a
 * space ("bus ") allows any section that starts with it. Returns 0, or -1
 * with the 1-based line and the reason.
 */
int inicheck_text(const char *text, const char *const *sections, int *line,
    char *reason, size_t len);

/*
 * A reader for ini_parse_stream() over a string that counts lines, so
 * that handlers know the line of the pair they are given.
 */
struct inicheck_reader {
	const char *pos;
	int line;
};

char *inicheck_read(char *str, int num, void *stream);

#endif
