/* Files compiled into the binaries by tools/embed (board profiles, schema). */
#ifndef LOCKERD_EMBED_H
#define LOCKERD_EMBED_H

#include <stddef.h>

struct embed_file {
	const char *name; /* file name without its folder */
	const char *text; /* NUL-terminated contents */
	size_t len;
};

extern const struct embed_file embed_boards[];
extern const size_t embed_boards_count;
extern const struct embed_file embed_schema[];
extern const size_t embed_schema_count;
extern const struct embed_file embed_conf[];
extern const size_t embed_conf_count;

#endif
