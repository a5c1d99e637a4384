/*
 * What libinih lets through silently, checked before it parses. Debian's
 * libinih is built with multi-line values on, so an indented "key = value"
 * would become part of the previous value, and it splits lines longer than
 * INI_MAX_LINE into two without a word.
 */
#include "inicheck.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INICHECK_SECTIONS_MAX 128
#define INICHECK_NAME_MAX 64

static int
section_allowed(const char *name, const char *const *sections)
{
	size_t n;

	for (; *sections != NULL; sections++) {
		n = strlen(*sections);
		if (n > 0 && (*sections)[n - 1] == ' ') {
			if (strncmp(name, *sections, n) == 0 && name[n] != '\0')
				return 1;
		} else if (strcmp(name, *sections) == 0)
			return 1;
	}
	return 0;
}

int
inicheck_text(const char *text, const char *const *sections, int *line,
    char *reason, size_t len)
{
	char (*names)[INICHECK_NAME_MAX];
	const char *s = text, *nl, *q, *end;
	int n = 0, nseen = 0, i, rc = -1;
	size_t linelen;

	names = calloc(INICHECK_SECTIONS_MAX, sizeof(*names));
	if (names == NULL) {
		*line = 0;
		snprintf(reason, len, "out of memory");
		return -1;
	}
	while (*s) {
		n++;
		*line = n;
		nl = strchr(s, '\n');
		linelen = nl ? (size_t)(nl - s) : strlen(s);
		end = s + linelen;
		if (linelen > 0 && end[-1] == '\r')
			end--;
		if ((size_t)(end - s) > INICHECK_LINE_MAX) {
			snprintf(reason, len, "line longer than %d characters",
			    INICHECK_LINE_MAX);
			goto out;
		}
		for (q = s; q < end && isspace((unsigned char)*q); q++)
			;
		if (q > s && q < end && *q != ';' && *q != '#') {
			snprintf(reason, len, "indented line (continuation "
			    "lines are not allowed; start keys at column 1)");
			goto out;
		}
		if (q < end && *q == '[') {
			const char *close = memchr(q, ']', (size_t)(end - q));
			size_t nlen;

			if (close == NULL) {
				snprintf(reason, len, "section header without "
				    "']'");
				goto out;
			}
			nlen = (size_t)(close - q - 1);
			if (nlen >= INICHECK_NAME_MAX) {
				snprintf(reason, len, "section name too long");
				goto out;
			}
			if (nseen == INICHECK_SECTIONS_MAX) {
				snprintf(reason, len, "more than %d sections",
				    INICHECK_SECTIONS_MAX);
				goto out;
			}
			memcpy(names[nseen], q + 1, nlen);
			names[nseen][nlen] = '\0';
			if (!section_allowed(names[nseen], sections)) {
				snprintf(reason, len, "unknown section [%.40s]",
				    names[nseen]);
				goto out;
			}
			for (i = 0; i < nseen; i++)
				if (strcmp(names[i], names[nseen]) == 0) {
					snprintf(reason, len, "duplicate section "
					    "[%.40s]", names[nseen]);
					goto out;
				}
			nseen++;
		}
		s += linelen + (nl ? 1 : 0);
	}
	rc = 0;
out:
	free(names);
	return rc;
}

char *
inicheck_read(char *str, int num, void *stream)
{
	struct inicheck_reader *r = stream;
	const char *nl;
	size_t n;

	if (*r->pos == '\0' || num < 2)
		return NULL;
	nl = strchr(r->pos, '\n');
	n = nl ? (size_t)(nl - r->pos) + 1 : strlen(r->pos);
	/* inicheck_text() refused longer lines, so this never splits one. */
	if (n > (size_t)num - 1)
		n = (size_t)num - 1;
	memcpy(str, r->pos, n);
	str[n] = '\0';
	r->pos += n;
	r->line++;
	return str;
}
