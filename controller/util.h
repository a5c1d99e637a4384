/* Small helpers shared by the controller: clocks, bounded strings. */
#ifndef LOCKERD_UTIL_H
#define LOCKERD_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds on CLOCK_MONOTONIC: for deadlines and timers. */
int64_t util_mono_ms(void);
/* Microseconds on CLOCK_MONOTONIC: for timing the phases of an unlock. */
int64_t util_mono_us(void);
/* Microseconds of CPU the calling thread has used (CLOCK_THREAD_CPUTIME_ID). */
int64_t util_thread_cpu_us(void);
/* Milliseconds since the epoch: for what is recorded and reported. */
int64_t util_wall_ms(void);
/* "2026-11-23T10:39:01.123Z" into buf (at least 25 bytes). */
void util_iso_time(int64_t wall_ms, char *buf, size_t len);
/*
 * Replaces every byte outside printable ASCII with '?': for texts that
 * quote a client's bytes, possibly cut inside a UTF-8 sequence, and must
 * become a valid one-line JSON string.
 */
void util_printable(char *s);
/* Copies at most len-1 bytes and terminates; returns -1 if truncated. */
int util_strlcpy(char *dst, const char *src, size_t len);

#define UTIL_ISO_LEN 32

#endif
