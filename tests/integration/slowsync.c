/*
 * An SD card for the tests: LD_PRELOAD'ed into lockerd, it makes every
 * fsync() and fdatasync() take SLOWSYNC_MS (default 8) milliseconds longer,
 * about what a cheap card or eMMC takes to flush, and counts them. At exit
 * it writes the count to the file SLOWSYNC_COUNT names, if any.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long syncs;

static void
slow(void)
{
	const char *e = getenv("SLOWSYNC_MS");
	long ms = e != NULL ? atol(e) : 8;
	struct timespec ts;

	__atomic_add_fetch(&syncs, 1, __ATOMIC_RELAXED);
	if (ms <= 0)
		return;
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) == -1)
		;
}

typedef int (*sync_fn)(int);

static sync_fn
real(const char *name)
{
	sync_fn f;
	void *p = dlsym(RTLD_NEXT, name);

	/* POSIX: a data pointer from dlsym() converts to a function. */
	*(void **)&f = p;
	return f;
}

int
fsync(int fd)
{
	static sync_fn f;

	if (f == NULL)
		f = real("fsync");
	slow();
	return f(fd);
}

int
fdatasync(int fd)
{
	static sync_fn f;

	if (f == NULL)
		f = real("fdatasync");
	slow();
	return f(fd);
}

__attribute__((destructor)) static void
report(void)
{
	const char *path = getenv("SLOWSYNC_COUNT");
	FILE *f;

	if (path == NULL || (f = fopen(path, "w")) == NULL)
		return;
	fprintf(f, "%ld\n", __atomic_load_n(&syncs, __ATOMIC_RELAXED));
	fclose(f);
}
