/*
 * Power loss of the database. A fault-injecting VFS around SQLite's unix
 * VFS holds every write to the database, its WAL and its rollback journal
 * in memory until xSync; a child process runs a whole locker through
 * lockerd's own commit path (boards faked at the mb_* interface) and loses
 * power at the K-th write, truncate or sync, keeping a random part of what
 * was not yet synced. The parent checks what a restart finds, for every K.
 * Platform commands come in through link.c's own path (the MQTT client
 * faked at the platform_* interface): a command whose reply went out is
 * found done, and one whose effect survived is found at least started, so
 * that a repeat never runs it again (the start row is committed without a
 * flush of its own, store.h).
 *
 * The disk, as SQLite's documents assume it (atomiccommit.html, psow.html):
 *  - what a sync covered survives;
 *  - each write not yet synced lands or not, independently and in any
 *    order (a disk that reorders between flushes), or only a prefix of
 *    them lands, in order (one that does not);
 *  - a write that lands may be torn: any subset of its 512-byte sectors
 *    lands, and one sector that does not may get a prefix of its new
 *    bytes (sector writes are linear, not atomic). Bytes outside the
 *    written range never change: the unix VFS claims powersafe overwrite
 *    (SQLITE_IOCAP_POWERSAFE_OVERWRITE), so SQLite does not pad WAL
 *    frames to whole sectors, and a disk that breaks it is outside what
 *    SQLite promises to survive;
 *  - a write that extends a file may leave garbage in the new space
 *    (SQLite assumes the size is updated before the content);
 *  - creating or deleting a file is atomic, and durable once its folder
 *    is synced: the unix VFS syncs it on the first sync of a journal or
 *    WAL it created, and when SQLite deletes with dirSync; until then the
 *    power may take a new file away or bring a deleted one back;
 *  - the -shm wal-index is memory, not storage: it passes through, and the
 *    first connection after the restart rebuilds it from the WAL.
 * Not modelled, because SQLite does not claim to survive them: a disk that
 * acknowledges a flush it has not done, damage outside the written range,
 * bit rot.
 *
 * POWERLOSS_SEEDS: loss patterns per cut point (default 3: nothing unsynced
 * lands, everything lands, one random pattern; more are random).
 * POWERLOSS_STRIDE: every how many cut points (default 1; 10 under ASan).
 * POWERLOSS_ONLY=K:S[:K2] reruns one cut point and seed (K2: and a cut
 * at the K2-th operation of the restart).
 * POWERLOSS_DIR: where the state folder goes (default /dev/shm: a real
 * fsync per commit would only slow the sweep down).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <setjmp.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "ledger.h"
#include "lockerd.h"
#include "log.h"
#include "platform.h"
#include "util.h"

/* The child's exit status when it lost power as planned. */
#define PL_EXIT_POWER 42

/* ---- The fault-injecting VFS ------------------------------------------ */

#define PL_NODES 8
#define PL_SECTOR 512

/* A file whose writes are held back: its content as SQLite sees it. */
struct pl_node {
	char path[512];
	int used;
	unsigned char *img;
	sqlite3_int64 size;
	size_t cap;
};

/* A write or truncate that no sync has covered yet, in issue order. */
struct pl_op {
	struct pl_node *node;
	int trunc;                  /* truncate to off; else a write */
	sqlite3_int64 off;
	int len;
	unsigned char *data;
};

struct pl_file {
	sqlite3_file base;
	struct pl_node *node;       /* NULL: passes through (-shm, temp) */
	int dirsync;                /* its first sync also syncs the folder */
	sqlite3_file *real;         /* the unix VFS's file, right after us */
};

/* A name created or deleted since the folder was last synced. */
struct pl_dirent {
	char path[512];
	int existed;                /* at the last folder sync; then ... */
	unsigned char *data;        /* ... with this durable content */
	size_t len;
};

#define PL_FILE_SIZE ((sizeof(struct pl_file) + 15) & ~(size_t)15)

static sqlite3_vfs *pl_real;
static sqlite3_vfs pl_vfs;
static struct pl_node pl_nodes[PL_NODES];
static struct pl_op *pl_ops;
static int pl_nops, pl_capops;
static int64_t pl_count;        /* writes, truncates and syncs so far */
static int64_t pl_cut = -1;     /* the power fails before this one */
static uint64_t pl_rng;         /* the loss pattern's generator */
static int pl_seed;
static int pl_report = -1;      /* where the loss is described, if any */
static struct pl_dirent pl_dir[PL_NODES];
static int pl_ndir;

static uint64_t
pl_rand(void)
{
	/* xorshift64*: deterministic per (cut, seed), no libsodium state. */
	pl_rng ^= pl_rng >> 12;
	pl_rng ^= pl_rng << 25;
	pl_rng ^= pl_rng >> 27;
	return pl_rng * 2685821657736338717ULL;
}

static int
pl_chance(unsigned in)
{
	return pl_rand() % in == 0;
}

static int
pl_img_fit(struct pl_node *n, sqlite3_int64 size)
{
	unsigned char *p;
	size_t cap = n->cap ? n->cap : 65536;

	if ((size_t)size <= n->cap)
		return 0;
	while (cap < (size_t)size)
		cap *= 2;
	if ((p = realloc(n->img, cap)) == NULL)
		return -1;
	n->img = p;
	n->cap = cap;
	return 0;
}

/* Sets the logical size; new space reads as zeros, as after ftruncate. */
static int
pl_img_resize(struct pl_node *n, sqlite3_int64 size)
{
	if (pl_img_fit(n, size) == -1)
		return -1;
	if (size > n->size)
		memset(n->img + n->size, 0, (size_t)(size - n->size));
	n->size = size;
	return 0;
}

static void
pl_node_drop(struct pl_node *n)
{
	int i, k = 0;

	for (i = 0; i < pl_nops; i++)
		if (pl_ops[i].node == n)
			free(pl_ops[i].data);
		else
			pl_ops[k++] = pl_ops[i];
	pl_nops = k;
	free(n->img);
	memset(n, 0, sizeof(*n));
}

/* The node of a path, created from the file's durable content. */
static struct pl_node *
pl_node_get(const char *path, sqlite3_file *real)
{
	struct pl_node *n = NULL;
	sqlite3_int64 size;
	int i;

	for (i = 0; i < PL_NODES; i++)
		if (pl_nodes[i].used && strcmp(pl_nodes[i].path, path) == 0)
			return &pl_nodes[i];
	for (i = 0; i < PL_NODES && n == NULL; i++)
		if (!pl_nodes[i].used)
			n = &pl_nodes[i];
	if (n == NULL || strlen(path) >= sizeof(n->path))
		return NULL;
	if (real->pMethods->xFileSize(real, &size) != SQLITE_OK ||
	    pl_img_fit(n, size > 0 ? size : 1) == -1)
		return NULL;
	if (size > 0 && real->pMethods->xRead(real, n->img, (int)size, 0) !=
	    SQLITE_OK) {
		free(n->img);
		memset(n, 0, sizeof(*n));
		return NULL;
	}
	n->size = size;
	n->used = 1;
	snprintf(n->path, sizeof(n->path), "%s", path);
	return n;
}

static int
pl_push(struct pl_node *n, int trunc, sqlite3_int64 off, const void *data,
    int len)
{
	struct pl_op *op;

	if (pl_nops == pl_capops) {
		int cap = pl_capops ? pl_capops * 2 : 256;

		if ((op = realloc(pl_ops, (size_t)cap * sizeof(*op))) == NULL)
			return -1;
		pl_ops = op;
		pl_capops = cap;
	}
	op = &pl_ops[pl_nops];
	memset(op, 0, sizeof(*op));
	op->node = n;
	op->trunc = trunc;
	op->off = off;
	op->len = len;
	if (!trunc) {
		if ((op->data = malloc((size_t)len)) == NULL)
			return -1;
		memcpy(op->data, data, (size_t)len);
	}
	pl_nops++;
	return 0;
}

static void pl_power_loss(void) __attribute__((noreturn));

/* Counts one write, truncate or sync; the cut comes before the K-th. */
static void
pl_tick(void)
{
	if (pl_count++ == pl_cut)
		pl_power_loss();
}

static struct pl_dirent *
pl_dir_find(const char *path)
{
	int i;

	for (i = 0; i < pl_ndir; i++)
		if (strcmp(pl_dir[i].path, path) == 0)
			return &pl_dir[i];
	if (pl_ndir == PL_NODES || strlen(path) >= sizeof(pl_dir[0].path))
		return NULL;
	memset(&pl_dir[pl_ndir], 0, sizeof(pl_dir[0]));
	snprintf(pl_dir[pl_ndir].path, sizeof(pl_dir[0].path), "%s", path);
	return &pl_dir[pl_ndir++];
}

/* A new name: gone again if the power fails before a folder sync. */
static void
pl_dir_created(const char *path)
{
	int i, known = 0;

	for (i = 0; i < pl_ndir; i++)
		known |= strcmp(pl_dir[i].path, path) == 0;
	/* Deleted and made again since: the older state stands. */
	if (!known && pl_dir_find(path) == NULL)
		_exit(5);
}

/* A name removed: back, as it was durably, if no folder sync follows. */
static void
pl_dir_deleted(const char *path)
{
	struct pl_dirent *de;
	unsigned char *buf = NULL;
	size_t len = 0;
	struct stat st;
	int i, fd;

	for (i = 0; i < pl_ndir; i++)
		if (strcmp(pl_dir[i].path, path) == 0)
			return;         /* it did not exist at the last sync */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	if (fstat(fd, &st) == 0 && st.st_size > 0 &&
	    (buf = malloc((size_t)st.st_size)) != NULL)
		len = (size_t)pread(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	if ((de = pl_dir_find(path)) == NULL)
		_exit(5);
	de->existed = 1;
	de->data = buf;
	de->len = len == (size_t)-1 ? 0 : len;
}

static void
pl_dir_synced(void)
{
	int i;

	for (i = 0; i < pl_ndir; i++)
		free(pl_dir[i].data);
	pl_ndir = 0;
}

static int
pl_close(sqlite3_file *f)
{
	struct pl_file *p = (struct pl_file *)f;

	/* Unsynced writes stay pending: closing a file does not flush. */
	return p->real->pMethods->xClose(p->real);
}

static int
pl_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
	struct pl_file *p = (struct pl_file *)f;
	struct pl_node *n = p->node;
	sqlite3_int64 have;

	if (n == NULL)
		return p->real->pMethods->xRead(p->real, buf, amt, off);
	have = off >= n->size ? 0 : n->size - off;
	if (have > amt)
		have = amt;
	if (have > 0)
		memcpy(buf, n->img + off, (size_t)have);
	if (have == amt)
		return SQLITE_OK;
	/* As the unix VFS: the missing part reads as zeros. */
	memset((char *)buf + have, 0, (size_t)(amt - have));
	return SQLITE_IOERR_SHORT_READ;
}

static int
pl_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
	struct pl_file *p = (struct pl_file *)f;
	struct pl_node *n = p->node;

	if (n == NULL)
		return p->real->pMethods->xWrite(p->real, buf, amt, off);
	pl_tick();
	if ((off + amt > n->size && pl_img_resize(n, off + amt) == -1) ||
	    pl_push(n, 0, off, buf, amt) == -1)
		return SQLITE_IOERR_NOMEM;
	memcpy(n->img + off, buf, (size_t)amt);
	return SQLITE_OK;
}

static int
pl_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	struct pl_file *p = (struct pl_file *)f;
	struct pl_node *n = p->node;

	if (n == NULL)
		return p->real->pMethods->xTruncate(p->real, size);
	pl_tick();
	if (pl_img_resize(n, size) == -1 || pl_push(n, 1, size, NULL, 0) == -1)
		return SQLITE_IOERR_NOMEM;
	return SQLITE_OK;
}

/* Makes a node's pending operations durable: on the real file, in order. */
static int
pl_flush(struct pl_node *n, sqlite3_file *real)
{
	int i, k = 0, rc = SQLITE_OK;

	for (i = 0; i < pl_nops; i++) {
		struct pl_op *op = &pl_ops[i];

		if (op->node != n) {
			pl_ops[k++] = *op;
			continue;
		}
		if (rc == SQLITE_OK)
			rc = op->trunc ? real->pMethods->xTruncate(real, op->off) :
			    real->pMethods->xWrite(real, op->data, op->len,
			    op->off);
		free(op->data);
	}
	pl_nops = k;
	return rc;
}

static int
pl_sync(sqlite3_file *f, int flags)
{
	struct pl_file *p = (struct pl_file *)f;
	int rc;

	if (p->node == NULL)
		return p->real->pMethods->xSync(p->real, flags);
	pl_tick();
	if ((rc = pl_flush(p->node, p->real)) != SQLITE_OK ||
	    (rc = p->real->pMethods->xSync(p->real, flags)) != SQLITE_OK)
		return rc;
	/* The unix VFS synced the folder too (UNIXFILE_DIRSYNC). */
	if (p->dirsync) {
		p->dirsync = 0;
		pl_dir_synced();
	}
	return SQLITE_OK;
}

static int
pl_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	struct pl_file *p = (struct pl_file *)f;

	if (p->node == NULL)
		return p->real->pMethods->xFileSize(p->real, size);
	*size = p->node->size;
	return SQLITE_OK;
}

static int
pl_lock(sqlite3_file *f, int level)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xLock(p->real, level);
}

static int
pl_unlock(sqlite3_file *f, int level)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xUnlock(p->real, level);
}

static int
pl_check_reserved(sqlite3_file *f, int *out)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int
pl_file_control(sqlite3_file *f, int op, void *arg)
{
	struct pl_file *p = (struct pl_file *)f;

	/* The unix VFS would grow the real file itself (with a chunk size);
	 * the size is the overlay's business. */
	if (p->node != NULL && op == SQLITE_FCNTL_SIZE_HINT)
		return SQLITE_OK;
	return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int
pl_sector_size(sqlite3_file *f)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xSectorSize(p->real);
}

static int
pl_device(sqlite3_file *f)
{
	struct pl_file *p = (struct pl_file *)f;

	/* No batch-atomic writes (F2FS): every write goes through us. */
	return p->real->pMethods->xDeviceCharacteristics(p->real) &
	    ~SQLITE_IOCAP_BATCH_ATOMIC;
}

static int
pl_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xShmMap(p->real, pg, pgsz, extend, pp);
}

static int
pl_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xShmLock(p->real, offset, n, flags);
}

static void
pl_shm_barrier(sqlite3_file *f)
{
	struct pl_file *p = (struct pl_file *)f;

	p->real->pMethods->xShmBarrier(p->real);
}

static int
pl_shm_unmap(sqlite3_file *f, int del)
{
	struct pl_file *p = (struct pl_file *)f;

	return p->real->pMethods->xShmUnmap(p->real, del);
}

/* Version 2: WAL needs the xShm methods; no xFetch, so no mmap reads. */
static const sqlite3_io_methods pl_io = {
	2, pl_close, pl_read, pl_write, pl_truncate, pl_sync, pl_file_size,
	pl_lock, pl_unlock, pl_check_reserved, pl_file_control,
	pl_sector_size, pl_device, pl_shm_map, pl_shm_lock, pl_shm_barrier,
	pl_shm_unmap, NULL, NULL,
};

static int
pl_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags,
    int *out)
{
	struct pl_file *p = (struct pl_file *)f;
	int rc, tracked = name != NULL && (flags & (SQLITE_OPEN_MAIN_DB |
	    SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL));
	int existed = tracked && access(name, F_OK) == 0;

	(void)vfs;
	memset(p, 0, sizeof(*p));
	p->real = (sqlite3_file *)((char *)p + PL_FILE_SIZE);
	rc = pl_real->xOpen(pl_real, name, p->real, flags, out);
	/* SQLite closes what has methods, even after a failed open. */
	p->base.pMethods = p->real->pMethods != NULL ? &pl_io : NULL;
	if (rc != SQLITE_OK || !tracked)
		return rc;
	if ((p->node = pl_node_get(name, p->real)) == NULL) {
		p->real->pMethods->xClose(p->real);
		p->base.pMethods = NULL;
		return SQLITE_CANTOPEN;
	}
	if (!existed)
		pl_dir_created(name);
	/* As unixOpen() decides it. */
	p->dirsync = (flags & SQLITE_OPEN_CREATE) && (flags &
	    (SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_SUPER_JOURNAL |
	    SQLITE_OPEN_WAL));
	return SQLITE_OK;
}

static int
pl_delete(sqlite3_vfs *vfs, const char *name, int dirsync)
{
	int i, rc;

	(void)vfs;
	for (i = 0; i < PL_NODES; i++)
		if (pl_nodes[i].used && strcmp(pl_nodes[i].path, name) == 0)
			pl_node_drop(&pl_nodes[i]);
	if (!dirsync)
		pl_dir_deleted(name);
	rc = pl_real->xDelete(pl_real, name, dirsync);
	if (rc == SQLITE_OK && dirsync)
		pl_dir_synced();
	return rc;
}

static int
pl_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	(void)vfs;
	return pl_real->xAccess(pl_real, name, flags, out);
}

static int
pl_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	(void)vfs;
	return pl_real->xFullPathname(pl_real, name, n, out);
}

static void *
pl_dlopen(sqlite3_vfs *vfs, const char *name)
{
	(void)vfs;
	return pl_real->xDlOpen(pl_real, name);
}

static void
pl_dlerror(sqlite3_vfs *vfs, int n, char *msg)
{
	(void)vfs;
	pl_real->xDlError(pl_real, n, msg);
}

static void (*pl_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
	(void)vfs;
	return pl_real->xDlSym(pl_real, h, sym);
}

static void
pl_dlclose(sqlite3_vfs *vfs, void *h)
{
	(void)vfs;
	pl_real->xDlClose(pl_real, h);
}

static int
pl_randomness(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return pl_real->xRandomness(pl_real, n, out);
}

static int
pl_sleep(sqlite3_vfs *vfs, int us)
{
	(void)vfs;
	return pl_real->xSleep(pl_real, us);
}

static int
pl_current_time(sqlite3_vfs *vfs, double *out)
{
	(void)vfs;
	return pl_real->xCurrentTime(pl_real, out);
}

static int
pl_last_error(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return pl_real->xGetLastError(pl_real, n, out);
}

static int
pl_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
	(void)vfs;
	return pl_real->xCurrentTimeInt64(pl_real, out);
}

/* In the child only: the power fails before operation cut (-1: never). */
static int
pl_install(int64_t cut, int seed)
{
	if ((pl_real = sqlite3_vfs_find(NULL)) == NULL)
		return -1;
	memset(&pl_vfs, 0, sizeof(pl_vfs));
	pl_vfs.iVersion = 2;
	pl_vfs.szOsFile = (int)PL_FILE_SIZE + pl_real->szOsFile;
	pl_vfs.mxPathname = pl_real->mxPathname;
	pl_vfs.zName = "powerloss";
	pl_vfs.xOpen = pl_open;
	pl_vfs.xDelete = pl_delete;
	pl_vfs.xAccess = pl_access;
	pl_vfs.xFullPathname = pl_full_pathname;
	pl_vfs.xDlOpen = pl_dlopen;
	pl_vfs.xDlError = pl_dlerror;
	pl_vfs.xDlSym = pl_dlsym;
	pl_vfs.xDlClose = pl_dlclose;
	pl_vfs.xRandomness = pl_randomness;
	pl_vfs.xSleep = pl_sleep;
	pl_vfs.xCurrentTime = pl_current_time;
	pl_vfs.xGetLastError = pl_last_error;
	pl_vfs.xCurrentTimeInt64 = pl_current_time64;
	pl_count = 0;
	pl_ndir = 0;
	pl_cut = cut;
	pl_seed = seed;
	pl_rng = ((uint64_t)seed << 32 ^ (uint64_t)(cut + 1)) *
	    0x9E3779B97F4A7C15ULL | 1;
	return sqlite3_vfs_register(&pl_vfs, 1) == SQLITE_OK ? 0 : -1;
}

static void
pl_pwrite(int fd, const unsigned char *buf, size_t len, off_t off)
{
	ssize_t n;

	while (len > 0) {
		if ((n = pwrite(fd, buf, len, off)) <= 0) {
			if (n == -1 && errno == EINTR)
				continue;
			_exit(5);
		}
		buf += n;
		len -= (size_t)n;
		off += n;
	}
}

/* A write that lands torn: some sectors, maybe a linear part of one. */
static void
pl_apply_torn(int fd, const struct pl_op *op)
{
	sqlite3_int64 s, from, to, end = op->off + op->len;
	int partial = pl_chance(4);

	for (s = op->off / PL_SECTOR * PL_SECTOR; s < end; s += PL_SECTOR) {
		from = s < op->off ? op->off : s;
		to = s + PL_SECTOR < end ? s + PL_SECTOR : end;
		if (pl_chance(2))
			pl_pwrite(fd, op->data + (from - op->off),
			    (size_t)(to - from), from);
		else if (partial) {
			partial = 0;
			pl_pwrite(fd, op->data + (from - op->off),
			    (size_t)(pl_rand() % (uint64_t)(to - from)), from);
		}
	}
}

/*
 * The power fails: the unsynced operations land as the seed says, then
 * the process ends at once. Seed 0: none lands; seed 1: all land, in
 * order (a process crash); others: a random pattern.
 */
static void
pl_power_loss(void)
{
	int fds[PL_NODES], last_trunc[PL_NODES], i, mode, garbage = 0;
	int tear = 0;
	int landed = 0, torn = 0, grown = 0, undone = 0;
	unsigned char *land;
	unsigned pct = 0;
	int prefix = 0;
	struct stat st;

	if ((land = calloc((size_t)pl_nops + 1, 1)) == NULL)
		_exit(5);
	mode = pl_seed == 0 ? 0 : pl_seed == 1 ? 1 : 2 + (int)(pl_rand() % 2);
	if (mode == 2)          /* in order: a prefix lands */
		prefix = pl_nops > 0 ? (int)(pl_rand() % (uint64_t)(pl_nops + 1)) :
		    0;
	else if (mode == 3)     /* reordered: each lands or not */
		pct = 10 + (unsigned)(pl_rand() % 81);
	if (mode >= 2) {
		garbage = pl_chance(2);
		tear = pl_chance(2);
	}
	for (i = 0; i < pl_nops; i++)
		land[i] = mode == 1 || (mode == 2 && i < prefix) ||
		    (mode == 3 && pl_rand() % 100 < pct);
	for (i = 0; i < PL_NODES; i++) {
		fds[i] = pl_nodes[i].used ? open(pl_nodes[i].path,
		    O_WRONLY | O_CLOEXEC) : -1;
		last_trunc[i] = -1;
	}
	for (i = 0; i < pl_nops; i++) {
		const struct pl_op *op = &pl_ops[i];
		int fd = fds[op->node - pl_nodes];

		if (!land[i] || fd == -1)
			continue;
		landed++;
		if (op->trunc) {
			if (ftruncate(fd, op->off) == -1)
				_exit(5);
		} else if (tear && ((mode == 2 && i == prefix - 1) ||
		    (mode == 3 && pl_chance(8)))) {
			pl_apply_torn(fd, op);
			torn++;
		} else
			pl_pwrite(fd, op->data, (size_t)op->len, op->off);
	}
	/* A lost write that would have grown the file: the size may have
	 * grown all the same, over garbage (unless a truncation that came
	 * later landed). */
	for (i = 0; i < pl_nops; i++)
		if (pl_ops[i].trunc && land[i])
			last_trunc[pl_ops[i].node - pl_nodes] = i;
	for (i = 0; garbage && i < pl_nops; i++) {
		const struct pl_op *op = &pl_ops[i];
		int fd = fds[op->node - pl_nodes];
		sqlite3_int64 from, end = op->off + op->len;
		unsigned char junk[PL_SECTOR];
		size_t k;

		if (land[i] || op->trunc || fd == -1 ||
		    last_trunc[op->node - pl_nodes] > i ||
		    fstat(fd, &st) == -1 || end <= st.st_size || !pl_chance(2))
			continue;
		for (from = st.st_size > op->off ? st.st_size : op->off;
		    from < end; from += (sqlite3_int64)k) {
			k = end - from < PL_SECTOR ? (size_t)(end - from) :
			    PL_SECTOR;
			for (size_t j = 0; j < k; j++)
				junk[j] = (unsigned char)pl_rand();
			pl_pwrite(fd, junk, k, from);
		}
		grown++;
	}
	/* Names changed since the last folder sync: seed 0 undoes them all,
	 * seed 1 none, the others each with even odds. */
	for (i = 0; i < pl_ndir; i++) {
		const struct pl_dirent *de = &pl_dir[i];
		int fd;

		if (mode == 1 || (mode >= 2 && pl_chance(2)))
			continue;
		undone++;
		if (!de->existed) {
			unlink(de->path);
			continue;
		}
		fd = open(de->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		    0644);
		if (fd == -1)
			_exit(5);
		pl_pwrite(fd, de->data, de->len, 0);
		close(fd);
	}
	if (pl_report != -1) {
		char line[96];
		int n = snprintf(line, sizeof(line), "loss %d %d %d %d %d\n",
		    pl_nops, landed, torn, grown, undone);

		if (write(pl_report, line, (size_t)n) != n)
			_exit(6);
	}
	_exit(PL_EXIT_POWER);
}

/* ---- Boards: the mb_* interface, faked --------------------------------- */

/*
 * The real mb.c talks Modbus from worker threads; here the test is the
 * board. A pulse is noted (after the commit, as lockerd_run does it), and
 * the test answers with the write's result and the door sensors.
 */
static struct mb_report fb_queue[16];
static int fb_nq;
static uint8_t fb_door[CONFIG_BOARDS_MAX][BOARD_CHANNELS_MAX];
static int fb_pulsed[CONFIG_CELLS_MAX];

struct mb *
mb_start(const struct config *c)
{
	(void)c;
	return NULL;
}

void
mb_stop(struct mb *m)
{
	(void)m;
}

int
mb_fd(const struct mb *m)
{
	(void)m;
	return -1;
}

/* A fake's report queue: takes up to max of its *nq items of size. */
static int
fake_take(void *queue, int *nq, size_t size, void *out, int max)
{
	int n = *nq < max ? *nq : max;

	memcpy(out, queue, (size_t)n * size);
	memmove(queue, (char *)queue + (size_t)n * size,
	    (size_t)(*nq - n) * size);
	*nq -= n;
	return n;
}

int
mb_drain(struct mb *m, struct mb_report *out, int max)
{
	(void)m;
	return fake_take(fb_queue, &fb_nq, sizeof(*out), out, max);
}

int
mb_unlock(struct mb *m, int board, int channel, int cell)
{
	(void)m;
	(void)board;
	(void)channel;
	if (cell >= 0 && cell < CONFIG_CELLS_MAX)
		fb_pulsed[cell]++;
	return 0;
}

void
mb_set_timing(struct mb *m, const struct config_timing *t)
{
	(void)m;
	(void)t;
}

static void
fb_push(const struct mb_report *r)
{
	if (fb_nq < (int)(sizeof(fb_queue) / sizeof(fb_queue[0])))
		fb_queue[fb_nq++] = *r;
}

static void
fb_inputs(int board)
{
	struct mb_report r;

	memset(&r, 0, sizeof(r));
	r.type = MB_REP_INPUTS;
	r.board = board;
	r.ok = 1;
	r.nchannels = BOARD_CHANNELS_MAX;
	memcpy(r.door_open, fb_door[board], sizeof(r.door_open));
	r.at_ms = util_mono_ms();
	fb_push(&r);
}

/* ---- The platform link, faked at the platform_* interface -------------- */

struct platform {
	int unused;
};

static struct platform fp_link;
static struct platform_rep fp_queue[8];
static int fp_nq;
static int fp_replies;          /* replies published by this step */
static void fp_replied(const char *payload);

struct platform *
platform_start(const struct config_mqtt *c, const char *locker,
    const char *will, char *err, size_t errlen)
{
	(void)c;
	(void)locker;
	(void)will;
	(void)err;
	(void)errlen;
	return &fp_link;
}

void
platform_stop(struct platform *p, const char *final_status)
{
	(void)p;
	(void)final_status;
}

int
platform_fd(const struct platform *p)
{
	(void)p;
	return -1;
}

int
platform_drain(struct platform *p, struct platform_rep *out, int max)
{
	(void)p;
	return fake_take(fp_queue, &fp_nq, sizeof(*out), out, max);
}

/* Never connected: only replies go out (the fake takes them regardless
 * of the connection link.c names). */
int
platform_publish(struct platform *p, unsigned gen, const char *sub,
    const char *payload, enum platform_class cls, int retain, int *mid)
{
	(void)p;
	(void)gen;
	(void)cls;
	(void)retain;
	*mid = 0;
	if (strcmp(sub, "reply") != 0)
		return -1;
	fp_replied(payload);
	return 0;
}

void
platform_stats(struct platform *p, struct platform_stats *out)
{
	(void)p;
	memset(out, 0, sizeof(*out));
}

static struct config cfg;

/* The platform's key, which the locker trusts ([mqtt] platform_key). */
static const uint8_t platform_seed[crypto_sign_SEEDBYTES] =
    "test_powerloss: platform seed";

/* A platform command (its fields but the request id and the expiry) as
 * the MQTT thread hands it to the loop; signed, for this locker, when the
 * op must be (service). */
static int
fp_command(const char *fields, const char *request_id)
{
	struct platform_rep *r = &fp_queue[fp_nq];
	uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
	uint8_t sig[crypto_sign_BYTES];
	char text[512], nonce[40], *canon, *out = NULL;
	char sig64[sodium_base64_ENCODED_LEN(crypto_sign_BYTES,
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	static int count;
	json_t *o;
	int n;

	n = snprintf(text, sizeof(text), "{%s,\"request_id\":\"%s\","
	    "\"exp\":%lld}", fields, request_id,
	    (long long)util_wall_ms() + 3600000);
	if (fp_nq == 8 || n < 0 || (size_t)n >= sizeof(text) ||
	    (o = json_loads(text, 0, NULL)) == NULL)
		return -1;
	if (strstr(fields, "\"service\"") != NULL) {
		snprintf(nonce, sizeof(nonce), "powerloss-nonce-%d-%d",
		    (int)getpid(), ++count);
		json_object_set_new(o, "locker", json_string(cfg.locker_id));
		json_object_set_new(o, "ts", json_integer(util_wall_ms()));
		json_object_set_new(o, "nonce", json_string(nonce));
		canon = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS |
		    JSON_ENSURE_ASCII);
		crypto_sign_seed_keypair(pk, sk, platform_seed);
		if (canon == NULL || crypto_sign_detached(sig, NULL,
		    (const uint8_t *)canon, strlen(canon), sk) != 0) {
			free(canon);
			json_decref(o);
			return -1;
		}
		free(canon);
		sodium_bin2base64(sig64, sizeof(sig64), sig, sizeof(sig),
		    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
		json_object_set_new(o, "sig", json_string(sig64));
	}
	out = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (out == NULL)
		return -1;
	snprintf(text, sizeof(text), "%s/%s/cmd", cfg.mqtt.prefix,
	    cfg.locker_id);
	memset(r, 0, sizeof(*r));
	r->type = PLATFORM_MESSAGE;
	r->topic = strdup(text);
	r->payload = out;
	r->len = strlen(out);
	r->at = util_mono_ms();
	if (r->topic == NULL || r->payload == NULL) {
		free(r->topic);
		free(r->payload);
		return -1;
	}
	fp_nq++;
	return 0;
}

/* ---- The locker under test --------------------------------------------- */

static const uint8_t sign_seed[crypto_sign_SEEDBYTES] =
    "test_powerloss: fixed sign seed";
static const uint8_t hash_key[32] = "test_powerloss: fixed code key";

static struct lockerd d;        /* large; the bank points into it */
static char dir[256], db_path[300], key_path[300];
static char pin_hash[STAFF_HASH_MAX];
static uint8_t sign_pk[crypto_sign_PUBLICKEYBYTES];
static int keep_files;          /* a failure's files, for a look */

static int
write_keys(void)
{
	char sk64[sodium_base64_ENCODED_LEN(64,
	    sodium_base64_VARIANT_ORIGINAL)];
	char hk64[sodium_base64_ENCODED_LEN(32,
	    sodium_base64_VARIANT_ORIGINAL)];
	uint8_t sk[crypto_sign_SECRETKEYBYTES];
	char text[512];
	int fd, n;

	crypto_sign_seed_keypair(sign_pk, sk, sign_seed);
	sodium_bin2base64(sk64, sizeof(sk64), sk, sizeof(sk),
	    sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(hk64, sizeof(hk64), hash_key, sizeof(hash_key),
	    sodium_base64_VARIANT_ORIGINAL);
	sodium_memzero(sk, sizeof(sk));
	n = snprintf(text, sizeof(text), "sign_sk=%s\nhash_key=%s\n", sk64,
	    hk64);
	fd = open(key_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd == -1 || write(fd, text, (size_t)n) != n)
		n = -1;
	if (fd != -1 && close(fd) == -1)
		n = -1;
	return n == -1 ? -1 : 0;
}

/* The state folder: on tmpfs if there is one (a real fsync per commit
 * would make the sweep slow and prove nothing more). */
static int
make_dir(void)
{
	const char *base = getenv("POWERLOSS_DIR");
	char err[512];
	struct stat st;

	/* As main.c: what lockerd creates is its own (start-up refuses a
	 * database others may read). */
	umask(077);
	if (base == NULL)
		base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) &&
		    access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(dir, sizeof(dir), "%s/test_powerloss.XXXXXX", base);
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(db_path, sizeof(db_path), "%s/lockerd.db", dir);
	snprintf(key_path, sizeof(key_path), "%s/device.key", dir);
	if (write_keys() == -1)
		return -1;
	if (config_load_text(&cfg, config_default_text(), "default", err,
	    sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	util_strlcpy(cfg.state_dir, dir, sizeof(cfg.state_dir));
	util_strlcpy(cfg.database, db_path, sizeof(cfg.database));
	util_strlcpy(cfg.key_file, key_path, sizeof(cfg.key_file));
	/* The test is the clock's only user: a door counts at once, and no
	 * unlock times out while a run lasts (under sanitizers too). */
	cfg.timing.debounce_ms = 0;
	cfg.timing.unlock_confirm_ms = 600000;
	/* Refused codes are the point here, not the throttle. */
	cfg.kiosk.code_burst = 1000;
	/* The platform link, to the fake above, and the platform's key. */
	util_strlcpy(cfg.mqtt.host, "platform.invalid", sizeof(cfg.mqtt.host));
	{
		uint8_t ppk[crypto_sign_PUBLICKEYBYTES];
		uint8_t psk[crypto_sign_SECRETKEYBYTES];

		crypto_sign_seed_keypair(ppk, psk, platform_seed);
		sodium_bin2hex(cfg.mqtt.platform_key,
		    sizeof(cfg.mqtt.platform_key), ppk, sizeof(ppk));
	}
	/* The least work Argon2id allows, so log-ins are cheap. */
	return crypto_pwhash_str_alg(pin_hash, "123456", 6,
	    crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN,
	    crypto_pwhash_ALG_ARGON2ID13) == 0 ? 0 : -1;
}

static void
clear_state(void)
{
	static const char *const suffix[] = { "", "-wal", "-shm", "-journal",
	    "-mark" };
	char p[320];
	size_t i;

	for (i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
		snprintf(p, sizeof(p), "%s%s", db_path, suffix[i]);
		unlink(p);
	}
}

static void
remove_dir(void)
{
	clear_state();
	unlink(key_path);
	rmdir(dir);
}

/*
 * lockerd_start() without boards and sockets: start_offline, then what
 * first_read() does once every board has answered (all doors closed, as
 * after an outage in which people shut them): "started", reconciliation.
 */
static int
boot(void)
{
	json_t *extra;
	struct bank_actions acts;
	int b, rc;

	memset(&d, 0, sizeof(d));
	memset(fb_door, 0, sizeof(fb_door));
	memset(fb_pulsed, 0, sizeof(fb_pulsed));
	fb_nq = 0;
	d.cfg = cfg;
	if (lockerd_start_offline(&d) == -1 || link_start(&d) == -1)
		return -1;
	for (b = 0; b < d.cfg.nboards; b++)
		fb_inputs(b);
	lockerd_mb_dispatch(&d);
	extra = json_pack("{s:I, s:s, s:I}", "boot", (json_int_t)d.boot,
	    "version", LOCKERD_VERSION, "mark_seq", (json_int_t)d.head.m.seq);
	rc = extra != NULL ? lockerd_record(&d, "started", extra) : -1;
	json_decref(extra);
	if (rc == -1)
		return -1;
	memset(&acts, 0, sizeof(acts));
	bank_reconcile(&d.bank, util_mono_ms(), &acts);
	lockerd_tick(&d);
	return 0;
}

/* The board answers the last pulse of a cell and its door opens (or, for
 * open 0, closes); the next tick turns the sample into the door event. */
static int
door(int number, int open)
{
	int cell = bank_cell_index(&d.bank, number), b;
	struct mb_report r;

	if (cell == -1)
		return -1;
	b = d.cells[cell].board;
	if (open) {
		if (fb_pulsed[cell] == 0)
			return -1;      /* it would be a forced door */
		fb_pulsed[cell] = 0;
		memset(&r, 0, sizeof(r));
		r.type = MB_REP_UNLOCK;
		r.board = b;
		r.cell = cell;
		r.ok = 1;
		r.at_ms = util_mono_ms();
		fb_push(&r);
	}
	fb_door[b][d.cells[cell].channel - 1] = (uint8_t)open;
	fb_inputs(b);
	lockerd_mb_dispatch(&d);
	lockerd_tick(&d);
	/* Seen and recorded: the step is acknowledged only then. */
	return !d.unrecorded && d.cells[cell].door == (open ?
	    BANK_DOOR_OPEN : BANK_DOOR_CLOSED) ? 0 : -1;
}

static json_t *
ask(json_t *(*handler)(void *, json_t *), json_t *req)
{
	json_t *reply;

	if (req == NULL)
		return NULL;
	reply = handler(&d, req);
	json_decref(req);
	return reply;
}

static int
reply_ok(const json_t *reply)
{
	return json_is_true(json_object_get(reply, "ok"));
}

static json_t *
enter_code(const char *code, const char *phone)
{
	json_t *req = json_pack("{s:s, s:s}", "op", "code", "code", code);

	if (req != NULL && phone[0] != '\0')
		json_object_set_new(req, "phone", json_string(phone));
	return ask(kiosk_handle, req);
}

/* ---- The workload (child) ---------------------------------------------- */

enum { R_A1, R_A2, R_A3, R_A4, R_A5, R_A6, R_A7, R_P1, R_P2, R_COUNT };

static const char *const apps[R_COUNT] = {
	"A-1", "A-2", "A-3", "A-4", "A-5", "A-6", "A-7", "P-1", "P-2",
};

enum act {
	ACT_BOOT, ACT_STAFF_ADD, ACT_STAFF_REVOKE, ACT_RESERVE, ACT_CODE,
	ACT_OPEN, ACT_CLOSE, ACT_CANCEL, ACT_REISSUE, ACT_LOGIN, ACT_LOGOUT,
	ACT_LOAD, ACT_TAKE_CODES, ACT_RETRIEVE, ACT_OPERATOR_OPEN, ACT_SERVICE,
	ACT_COMMANDS,
};

struct step {
	enum act act;
	int r;                  /* reservation, -1 if none */
	const char *arg;        /* size, staff id, phone, cell number */
};

/*
 * Drop-offs used, cancelled, re-issued and left opening; a loading and a
 * pickup; a retrieval; staff added and revoked; operator actions; and two
 * hand-overs of pickup codes, each of which checkpoints and truncates the
 * WAL (store_scrub), so the cuts fall into checkpoints and WAL restarts
 * too.
 */
static const struct step steps[] = {
	{ ACT_BOOT, -1, NULL },
	{ ACT_STAFF_ADD, -1, "alice" },
	{ ACT_STAFF_ADD, -1, "bob" },
	{ ACT_RESERVE, R_A1, "S" },
	{ ACT_RESERVE, R_A2, "S1234" },
	{ ACT_RESERVE, R_A3, "M" },
	{ ACT_RESERVE, R_A4, "S" },
	{ ACT_CODE, R_A1, NULL },
	{ ACT_OPEN, R_A1, NULL },
	{ ACT_CLOSE, R_A1, NULL },
	{ ACT_CANCEL, R_A2, NULL },
	{ ACT_CODE, R_A3, NULL },        /* its door never opens */
	{ ACT_REISSUE, R_A4, NULL },
	{ ACT_STAFF_REVOKE, -1, "bob" },
	{ ACT_LOGIN, -1, "alice" },
	{ ACT_LOAD, R_P1, "M" },
	{ ACT_OPEN, R_P1, NULL },
	{ ACT_CLOSE, R_P1, NULL },
	{ ACT_TAKE_CODES, -1, NULL },
	{ ACT_RETRIEVE, R_A1, NULL },
	{ ACT_OPEN, R_A1, NULL },
	{ ACT_CLOSE, R_A1, NULL },
	{ ACT_CODE, R_P1, NULL },
	{ ACT_OPEN, R_P1, NULL },
	{ ACT_CLOSE, R_P1, NULL },
	{ ACT_RESERVE, R_A5, "L" },
	{ ACT_RESERVE, R_A6, "S" },
	{ ACT_OPERATOR_OPEN, -1, "24" },
	{ ACT_OPEN, -1, "24" },
	{ ACT_CLOSE, -1, "24" },
	{ ACT_SERVICE, -1, "23" },
	{ ACT_COMMANDS, -1, "1" },
	{ ACT_CODE, R_A5, NULL },
	{ ACT_OPEN, R_A5, NULL },
	{ ACT_CLOSE, R_A5, NULL },
	{ ACT_LOAD, R_P2, "S" },
	{ ACT_OPEN, R_P2, NULL },
	{ ACT_CLOSE, R_P2, NULL },
	{ ACT_LOGOUT, -1, NULL },
	{ ACT_TAKE_CODES, -1, NULL },
	{ ACT_RESERVE, R_A7, "S" },
	{ ACT_COMMANDS, -1, "2" },
	{ ACT_REISSUE, R_A6, NULL },
};

#define NSTEPS ((int)(sizeof(steps) / sizeof(steps[0])))

/* What the child knows of each reservation. */
struct wres {
	int64_t id;
	int cell;                   /* number */
	char code[CODES_DIGITS_MAX + 1];
	char phone[8];
	int consumed;               /* its code opened the door, not yet seen */
};

static struct wres res[R_COUNT];
static int cut_after_step = -1; /* the power fails right after this step */
static int out_fd = -1;
static char rbuf[4000];
static size_t rlen;
static int64_t head;            /* the last event reported */

static void rep(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
rep(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(rbuf + rlen, sizeof(rbuf) - rlen, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(rbuf) - rlen)
		_exit(6);
	rlen += (size_t)n;
}

static void
rep_flush(void)
{
	const char *p = rbuf;
	ssize_t n;

	while (rlen > 0) {
		if ((n = write(out_fd, p, rlen)) <= 0) {
			if (n == -1 && errno == EINTR)
				continue;
			_exit(6);
		}
		p += n;
		rlen -= (size_t)n;
	}
}

static void child_fail(int i, const char *why) __attribute__((noreturn));

static void
child_fail(int i, const char *why)
{
	rlen = 0;
	rep("fail %d %s\n", i, why);
	rep_flush();
	_exit(3);
}

static int
rep_event(int64_t seq, const char *body, void *arg)
{
	uint8_t h[16];
	char hex[33];

	(void)arg;
	crypto_generichash(h, sizeof(h), (const uint8_t *)body, strlen(body),
	    NULL, 0);
	sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
	rep("ev %lld %s\n", (long long)seq, hex);
	head = seq;
	return 0;
}

static void
rep_code(const struct wres *w, const char *state)
{
	rep("code %s %s %d %s\n", w->code, w->phone[0] ? w->phone : "-",
	    w->cell, state);
}

static int
staff_change(const char *id, int add)
{
	struct staff st;
	json_t *x;
	int rc;

	memset(&st, 0, sizeof(st));
	util_strlcpy(st.id, id, sizeof(st.id));
	util_strlcpy(st.name, id, sizeof(st.name));
	util_strlcpy(st.role, "staff", sizeof(st.role));
	st.created = util_wall_ms();
	if (add)
		memcpy(st.pin_hash, pin_hash, sizeof(st.pin_hash));
	st.revoked = !add;
	/* As cmd_staff() of link.c records a platform's staff_add. */
	x = json_pack("{s:s, s:s, s:s}", "staff", id, "role", "staff", "by",
	    "platform");
	rc = x != NULL ? lockerd_staff_change(&d, &st, add ? "staff_added" :
	    "staff_revoked", x) : -1;
	json_decref(x);
	return rc;
}

static int
take_codes(void)
{
	json_t *reply = ask(ctl_handle, json_pack("{s:s}", "op",
	    "take_codes")), *codes, *c;
	size_t i;
	int r, n = 0;

	codes = json_object_get(reply, "codes");
	if (!reply_ok(reply) || !json_is_array(codes)) {
		json_decref(reply);
		return -1;
	}
	json_array_foreach(codes, i, c) {
		for (r = 0; r < R_COUNT; r++)
			if (res[r].id != 0 && res[r].id ==
			    json_integer_value(json_object_get(c, "resv")))
				break;
		if (r == R_COUNT)
			continue;
		util_strlcpy(res[r].code, json_string_value(json_object_get(c,
		    "code")), sizeof(res[r].code));
		rep_code(&res[r], "live");
		n++;
	}
	json_decref(reply);
	return n == 1 ? 0 : -1;
}

/* A reply that hands a new code over (reserve, reissue). */
static int
got_code(struct wres *w, json_t *reply)
{
	const char *code = json_string_value(json_object_get(reply, "code"));

	if (!reply_ok(reply) || code == NULL)
		return 0;
	w->id = json_integer_value(json_object_get(reply, "resv"));
	w->cell = (int)json_integer_value(json_object_get(reply, "cell"));
	util_strlcpy(w->code, code, sizeof(w->code));
	rep_code(w, "live");
	rep("resv %lld\n", (long long)w->id);
	return 1;
}

/* The codes and accounts a step may change: unsure if it is cut. */
static void
rep_begin(int i, const struct step *s)
{
	rep("begin %d", i);
	if (s->r >= 0 && res[s->r].code[0] != '\0')
		rep(" %s", res[s->r].code);
	if (s->act == ACT_STAFF_ADD || s->act == ACT_STAFF_REVOKE)
		rep(" staff:%s", s->arg);
	rep("\n");
}

/*
 * Platform commands through link.c, one loop turn each: batch 1 takes cell
 * 22 out of service (svc-1) beside a ping and a state; batch 2 repeats
 * svc-1 (its stored reply, not run again), puts the cell back (svc-2) and
 * pings. Each reply is reported the moment it is published.
 */
static void
fp_replied(const char *payload)
{
	json_t *o = json_loads(payload, 0, NULL);
	const char *id = json_string_value(json_object_get(o, "request_id"));

	rep("reply %s\n", id != NULL ? id : "?");
	rep_flush();
	fp_replies++;
	json_decref(o);
}

static int
platform_batch(int k)
{
	static const char out[] = "\"op\":\"service\",\"cell\":22,"
	    "\"in\":false";
	static const char in[] = "\"op\":\"service\",\"cell\":22,"
	    "\"in\":true";
	static const char ping[] = "\"op\":\"ping\"";
	static const char state[] = "\"op\":\"state\"";
	int n, rc;

	fp_replies = 0;
	if (k == 1)
		rc = fp_command(out, "svc-1") | fp_command(ping, "ping-1") |
		    fp_command(state, "state-1");
	else
		rc = fp_command(out, "svc-1") | fp_command(in, "svc-2") |
		    fp_command(ping, "ping-2");
	if (rc != 0)
		return -1;
	n = fp_nq;
	link_dispatch(&d);
	return fp_replies == n ? 0 : -1;
}

static int
run_step(const struct step *s)
{
	struct wres *w = s->r >= 0 ? &res[s->r] : NULL;
	json_t *reply = NULL;
	int cell, ok = 0;

	switch (s->act) {
	case ACT_BOOT:
		if (boot() == -1)
			return -1;
		/* Half the recoveries with lockerd's sync interval (most mark
		 * writes not synced), half with a sync at every one (by cut
		 * and seed, so that a sampled sweep has both); the mark is
		 * written at the end of each step (the loop's turn), not a
		 * moment later. */
		if ((pl_cut ^ pl_seed) & 1)
			d.head.sync_ms = 0;
		d.head.delay_ms = 0;
		return 0;
	case ACT_STAFF_ADD:
	case ACT_STAFF_REVOKE:
		if (staff_change(s->arg, s->act == ACT_STAFF_ADD) == -1)
			return -1;
		rep("staff %s %s\n", s->arg, s->act == ACT_STAFF_ADD ?
		    "added" : "revoked");
		return 0;
	case ACT_RESERVE:
		reply = ask(ctl_handle, json_pack("{s:s, s:s, s:s#}", "op",
		    "reserve", "app", apps[s->r], "size", s->arg, 1));
		util_strlcpy(w->phone, s->arg + 1, sizeof(w->phone));
		ok = got_code(w, reply);
		break;
	case ACT_REISSUE:
		reply = ask(ctl_handle, json_pack("{s:s, s:I}", "op",
		    "reissue", "resv", (json_int_t)w->id));
		if (reply_ok(reply))
			rep_code(w, "dead");
		ok = got_code(w, reply);
		break;
	case ACT_CODE:
		reply = enter_code(w->code, w->phone);
		if ((ok = reply_ok(reply) && json_integer_value(
		    json_object_get(reply, "cell")) == w->cell)) {
			w->consumed = 1;
			rep_code(w, "grace");
		}
		break;
	case ACT_OPEN:
	case ACT_CLOSE:
		cell = w != NULL ? w->cell : atoi(s->arg);
		if (door(cell, s->act == ACT_OPEN) == -1)
			return -1;
		/* Door seen open: the code is spent. */
		if (s->act == ACT_OPEN && w != NULL && w->consumed) {
			w->consumed = 0;
			rep_code(w, "dead");
		}
		return 0;
	case ACT_CANCEL:
		reply = ask(ctl_handle, json_pack("{s:s, s:I}", "op", "cancel",
		    "resv", (json_int_t)w->id));
		if ((ok = reply_ok(reply)))
			rep_code(w, "dead");
		break;
	case ACT_LOGIN:
		reply = ask(kiosk_handle, json_pack("{s:s, s:s, s:s}", "op",
		    "login", "staff", s->arg, "pin", "123456"));
		ok = reply_ok(reply);
		break;
	case ACT_LOGOUT:
		reply = ask(kiosk_handle, json_pack("{s:s}", "op", "logout"));
		ok = reply_ok(reply);
		break;
	case ACT_LOAD:
		reply = ask(kiosk_handle, json_pack("{s:s, s:s, s:s}", "op",
		    "load", "size", s->arg, "app", apps[s->r]));
		if ((ok = reply_ok(reply))) {
			w->id = json_integer_value(json_object_get(reply,
			    "resv"));
			w->cell = (int)json_integer_value(json_object_get(reply,
			    "cell"));
			rep("resv %lld\n", (long long)w->id);
		}
		break;
	case ACT_TAKE_CODES:
		return take_codes();
	case ACT_RETRIEVE:
		reply = ask(kiosk_handle, json_pack("{s:s}", "op",
		    "retrieve"));
		ok = reply_ok(reply) && json_integer_value(json_object_get(
		    reply, "cell")) == w->cell;
		break;
	case ACT_OPERATOR_OPEN:
		reply = ask(ctl_handle, json_pack("{s:s, s:i}", "op", "open",
		    "cell", atoi(s->arg)));
		ok = reply_ok(reply);
		break;
	case ACT_SERVICE:
		reply = ask(ctl_handle, json_pack("{s:s, s:i, s:b}", "op",
		    "service", "cell", atoi(s->arg), "in", 0));
		ok = reply_ok(reply);
		break;
	case ACT_COMMANDS:
		return platform_batch(atoi(s->arg));
	}
	json_decref(reply);
	return ok ? 0 : -1;
}

/* The child: every step, each reported once it returned; then, if the
 * cut was not reached, the power fails after the last one. */
static void child_run(int fd, int64_t cut, int seed)
    __attribute__((noreturn));

static void
child_run(int fd, int64_t cut, int seed)
{
	int i;

	out_fd = pl_report = fd;
	head = 0;
	memset(res, 0, sizeof(res));
	if (pl_install(cut, seed) == -1)
		child_fail(-1, "cannot register the VFS");
	for (i = 0; i < NSTEPS; i++) {
		rlen = 0;
		rep_begin(i, &steps[i]);
		rep_flush();
		if (run_step(&steps[i]) == -1)
			child_fail(i, "the step failed");
		/* The end of the main loop's turn: the mark follows. */
		mark_tick(&d);
		if (store_events_after(d.store, head, 1000, rep_event, NULL) ==
		    -1)
			child_fail(i, "cannot read the ledger");
		/* Written and synced: a restart may not find it older. */
		if (!d.head.dirty && !d.head.unsynced)
			rep("mark %lld\n", (long long)d.head.m.seq);
		rep("done %d\n", i);
		rep_flush();
		if (i == cut_after_step)
			pl_cut = pl_count;
	}
	rep("ops %lld\n", (long long)pl_count);
	rep_flush();
	pl_power_loss();
}

/* ---- What the parent expects, from the child's reports ------------------ */

enum { C_LIVE, C_GRACE, C_DEAD };

struct pcode {
	char code[CODES_DIGITS_MAX + 1];
	char phone[8];
	int cell;
	int state;
	int unsure;         /* the cut step may have changed it */
};

struct expect {
	struct pcode codes[32];
	int ncodes;
	int64_t ev_seq[512];
	char ev_hash[512][33];
	int nev;
	int64_t resv[32];
	int nresv;
	char staff[2][16];
	int staff_state[2];         /* 1 added, 2 revoked */
	int staff_unsure[2];
	int nstaff;
	int done;                   /* steps acknowledged */
	char replied[8][16];        /* platform commands answered */
	int nreplied;
	int loss[5];                /* unsynced, landed, torn, grown, names */
	int64_t ops;                /* the child's operation count, if known */
	int64_t mark;               /* the last mark the child saw synced */
	int marked;
	char inflight[128];         /* the begin line of the cut step */
	char fail[200];
};

static struct pcode *
code_find(struct expect *e, const char *code)
{
	int i;

	for (i = 0; i < e->ncodes; i++)
		if (strcmp(e->codes[i].code, code) == 0)
			return &e->codes[i];
	return NULL;
}

static int
staff_slot(struct expect *e, const char *id)
{
	int i;

	for (i = 0; i < e->nstaff; i++)
		if (strcmp(e->staff[i], id) == 0)
			return i;
	if (e->nstaff == 2)
		return -1;
	util_strlcpy(e->staff[e->nstaff], id, sizeof(e->staff[0]));
	return e->nstaff++;
}

static int
parse_line(struct expect *e, char *line)
{
	char a[64], b[64], c[64];
	long long seq;
	struct pcode *pc;
	int n, cell, k;

	if (sscanf(line, "begin %d", &n) == 1)
		util_strlcpy(e->inflight, line, sizeof(e->inflight));
	else if (sscanf(line, "done %d", &n) == 1) {
		e->done = n + 1;
		e->inflight[0] = '\0';
	} else if (sscanf(line, "ev %lld %32s", &seq, a) == 2 &&
	    e->nev < 512) {
		e->ev_seq[e->nev] = seq;
		memcpy(e->ev_hash[e->nev++], a, 33);
	} else if (sscanf(line, "code %15s %7s %d %15s", a, b, &cell, c) ==
	    4) {
		if ((pc = code_find(e, a)) == NULL) {
			if (e->ncodes == 32)
				return -1;
			pc = &e->codes[e->ncodes++];
			memset(pc, 0, sizeof(*pc));
			util_strlcpy(pc->code, a, sizeof(pc->code));
			util_strlcpy(pc->phone, strcmp(b, "-") ? b : "",
			    sizeof(pc->phone));
		}
		pc->cell = cell;
		pc->state = strcmp(c, "live") == 0 ? C_LIVE :
		    strcmp(c, "grace") == 0 ? C_GRACE : C_DEAD;
	} else if (sscanf(line, "reply %15s", a) == 1) {
		if (e->nreplied == 8)
			return -1;
		util_strlcpy(e->replied[e->nreplied++], a, 16);
	} else if (sscanf(line, "resv %lld", &seq) == 1) {
		if (e->nresv == 32)
			return -1;
		e->resv[e->nresv++] = seq;
	}
	else if (sscanf(line, "staff %15s %15s", a, b) == 2) {
		if ((k = staff_slot(e, a)) == -1)
			return -1;
		e->staff_state[k] = strcmp(b, "added") == 0 ? 1 : 2;
	} else if (sscanf(line, "loss %d %d %d %d %d", &e->loss[0],
	    &e->loss[1], &e->loss[2], &e->loss[3], &e->loss[4]) == 5)
		;
	else if (sscanf(line, "ops %lld", &seq) == 1)
		e->ops = seq;
	else if (sscanf(line, "mark %lld", &seq) == 1) {
		e->mark = seq;
		e->marked = 1;
	}
	else if (strncmp(line, "fail ", 5) == 0) {
		snprintf(e->fail, sizeof(e->fail), "child: %s", line);
		return -1;
	} else {
		snprintf(e->fail, sizeof(e->fail), "bad report line: %.100s",
		    line);
		return -1;
	}
	return 0;
}

/* The step that was cut may or may not have committed. */
static void
mark_unsure(struct expect *e)
{
	char *tok, *save = NULL, line[sizeof(e->inflight)];
	struct pcode *pc;
	int k;

	memcpy(line, e->inflight, sizeof(line));
	for (tok = strtok_r(line, " ", &save); tok != NULL;
	    tok = strtok_r(NULL, " ", &save)) {
		if (strncmp(tok, "staff:", 6) == 0) {
			if ((k = staff_slot(e, tok + 6)) != -1)
				e->staff_unsure[k] = 1;
		} else if ((pc = code_find(e, tok)) != NULL)
			pc->unsure = 1;
	}
}

/* ---- Running a child ----------------------------------------------------- */

/* Forks a child that cuts at cut (-1: never) with seed; fills e. Returns
 * 0 if it lost power as planned. */
static int
run_child(int64_t cut, int seed, struct expect *e)
{
	char *buf = NULL, *line, *nl;
	size_t len = 0, cap = 0;
	int pfd[2], status;
	ssize_t n;
	pid_t pid;

	memset(e, 0, sizeof(*e));
	e->ops = -1;
	fflush(stdout);
	fflush(stderr);
	if (pipe(pfd) == -1)
		return -1;
	if ((pid = fork()) == -1)
		return -1;
	if (pid == 0) {
		close(pfd[0]);
		child_run(pfd[1], cut, seed);
	}
	close(pfd[1]);
	for (;;) {
		if (len + 4096 > cap) {
			char *p = realloc(buf, cap = cap ? cap * 2 : 16384);

			if (p == NULL)
				break;
			buf = p;
		}
		n = read(pfd[0], buf + len, cap - len - 1);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(pfd[0]);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (buf == NULL)
		return -1;
	buf[len] = '\0';
	for (line = buf; *line != '\0'; line = nl + 1) {
		if ((nl = strchr(line, '\n')) == NULL)
			break;
		*nl = '\0';
		if (parse_line(e, line) == -1)
			break;
	}
	free(buf);
	if (e->fail[0] != '\0')
		return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != PL_EXIT_POWER) {
		snprintf(e->fail, sizeof(e->fail), "child ended with status "
		    "%d (signal %d)", WIFEXITED(status) ? WEXITSTATUS(status) :
		    -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		return -1;
	}
	mark_unsure(e);
	return 0;
}

/* ---- Checking what the restart finds -------------------------------------- */

static int fail_at(struct expect *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
fail_at(struct expect *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e->fail, sizeof(e->fail), fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * The ledger from where v stands (ledger_verify_init at seq 1 for the
 * whole of it): gap-free, chained, signed by the device key.
 */
static int
verify_ledger(sqlite3 *db, struct expect *e, struct ledger_verify *v)
{
	sqlite3_stmt *st;
	int rc;

	rc = sqlite3_prepare_v2(db, "SELECT body FROM events WHERE seq >= ?1 "
	    "ORDER BY seq", -1, &st, NULL);
	if (rc != SQLITE_OK)
		/* Cut before the schema: no ledger yet. */
		return strstr(sqlite3_errmsg(db), "no such table") ? 0 :
		    fail_at(e, "ledger: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(st, 1, v->next_seq);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *body = (const char *)sqlite3_column_text(st, 0);

		if (body == NULL || ledger_verify_next(v, body,
		    strlen(body)) == -1) {
			sqlite3_finalize(st);
			return fail_at(e, "ledger: %s", v->error);
		}
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return fail_at(e, "ledger: %s", sqlite3_errmsg(db));
	return 0;
}

static int
query_text(sqlite3 *db, const char *sql, int64_t arg, char *out, size_t len)
{
	sqlite3_stmt *st;
	int rc;

	out[0] = '\0';
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return -1;
	sqlite3_bind_int64(st, 1, arg);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW &&
	    sqlite3_column_text(st, 0) != NULL)
		util_strlcpy(out, (const char *)sqlite3_column_text(st, 0), len);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* A platform command's state in the command log ("" if no row). */
static int
command_state(sqlite3 *db, const char *request_id, char *out, size_t len)
{
	sqlite3_stmt *st;
	int rc;

	out[0] = '\0';
	if (sqlite3_prepare_v2(db, "SELECT state FROM commands WHERE "
	    "request_id = ?1", -1, &st, NULL) != SQLITE_OK)
		return -1;
	sqlite3_bind_text(st, 1, request_id, -1, SQLITE_STATIC);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW &&
	    sqlite3_column_text(st, 0) != NULL)
		util_strlcpy(out, (const char *)sqlite3_column_text(st, 0), len);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/*
 * The command log: a command that was answered is done; a command whose
 * effect (cell 22's service change, svc-1 then svc-2) survived has its
 * row, so that the platform's repeat is not run again; and none ran twice.
 */
static int
check_commands(sqlite3 *db, struct expect *e)
{
	char text[32], id[16];
	int i, n;

	/* Cut before the schema was in place: nothing was answered. */
	if (query_text(db, "SELECT count(*) FROM sqlite_master WHERE name = "
	    "'commands' AND ?1", 1, text, sizeof(text)) == 0 &&
	    strcmp(text, "0") == 0)
		return e->nreplied == 0 ? 0 : fail_at(e, "the command log is "
		    "gone, %d commands were answered", e->nreplied);
	/* Only signed commands are kept (ping and state are not). */
	for (i = 0; i < e->nreplied; i++)
		if (strncmp(e->replied[i], "svc-", 4) == 0 &&
		    (command_state(db, e->replied[i], text, sizeof(text)) ==
		    -1 || strcmp(text, "done") != 0))
			return fail_at(e, "command %s was answered, but its "
			    "row is %s", e->replied[i], text[0] ? text : "lost");
	if (query_text(db, "SELECT count(*) FROM events WHERE "
	    "json_extract(body, '$.type') = 'cell_service' AND "
	    "json_extract(body, '$.cell') = ?1", 22, text,
	    sizeof(text)) == -1)
		return fail_at(e, "cannot count cell 22's service changes");
	if ((n = atoi(text)) > 2)
		return fail_at(e, "cell 22's service changed %d times: a "
		    "command ran twice", n);
	for (i = 1; i <= n; i++) {
		snprintf(id, sizeof(id), "svc-%d", i);
		if (command_state(db, id, text, sizeof(text)) == -1 ||
		    text[0] == '\0')
			return fail_at(e, "the change of %s survived, its "
			    "command row did not: a repeat would run it "
			    "again", id);
	}
	return 0;
}

/* The files as the power left them, before lockerd touches them. */
/* How the mark stood at the cuts: exactly at the head, or behind it. */
static long long mark_exact, mark_behind, mark_behind_max;

/*
 * The ledger's mark as the power left it (mark.h): written after the
 * commit and synced, it may be behind the database's head (by what the
 * last loop turn committed, if its mark write was lost or torn), never
 * ahead of it, so that a power cut never looks like a restored database;
 * and never behind a mark the child saw synced. The event it names is
 * the database's own.
 */
static int
check_mark(sqlite3 *db, struct expect *e)
{
	unsigned char buf[2 * MARK_SLOT] = { 0 }, hash[32];
	char path[320], text[4096];
	struct codes_keys *k;
	struct mark a, b, *m = NULL;
	int64_t head_seq;
	char err[256];
	ssize_t n = 0;
	json_t *o;
	int fd, ok;

	snprintf(path, sizeof(path), "%s-mark", db_path);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) != -1) {
		n = pread(fd, buf, sizeof(buf), 0);
		close(fd);
	}
	if ((k = codes_keys_load(key_path, err, sizeof(err))) == NULL)
		return fail_at(e, "keys: %s", err);
	ok = n > 0 && mark_decode(k, buf, &a) == 0;
	if (n > MARK_SLOT && mark_decode(k, buf + MARK_SLOT, &b) == 0 &&
	    (!ok || b.gen > a.gen))
		m = &b;
	else if (ok)
		m = &a;
	codes_keys_free(k);
	/* A cut before the first migration leaves no ledger at all. */
	if (query_text(db, "SELECT count(*) FROM sqlite_master WHERE name = "
	    "'events'", 0, text, sizeof(text)) == -1)
		return fail_at(e, "reading the schema: %s", sqlite3_errmsg(db));
	if (strcmp(text, "0") != 0 && query_text(db, "SELECT "
	    "coalesce(max(seq), 0) FROM events", 0, text, sizeof(text)) == -1)
		return fail_at(e, "reading the head: %s", sqlite3_errmsg(db));
	head_seq = atoll(text);
	if (m == NULL)
		return e->marked ? fail_at(e, "no mark that verifies, after the "
		    "child saw mark %lld synced", (long long)e->mark) : 0;
	if (m->seq > head_seq)
		return fail_at(e, "the mark (seq %lld) is ahead of the database's "
		    "head (seq %lld): a power cut would look like a restored "
		    "database", (long long)m->seq, (long long)head_seq);
	if (e->marked && m->seq < e->mark)
		return fail_at(e, "the mark (seq %lld) is behind the one the "
		    "child saw synced (seq %lld)", (long long)m->seq,
		    (long long)e->mark);
	if (m->seq > 0) {
		if (query_text(db, "SELECT body FROM events WHERE seq = ?1",
		    m->seq, text, sizeof(text)) == -1 ||
		    (o = json_loads(text, 0, NULL)) == NULL)
			return fail_at(e, "the mark's event seq %lld is not there",
			    (long long)m->seq);
		ok = ledger_digest(o, hash) == 0 && memcmp(hash, m->hash, 32) ==
		    0;
		json_decref(o);
		if (!ok)
			return fail_at(e, "the mark's hash is not its event's "
			    "(seq %lld)", (long long)m->seq);
	}
	if (m->seq == head_seq)
		mark_exact++;
	else {
		mark_behind++;
		if (head_seq - m->seq > mark_behind_max)
			mark_behind_max = head_seq - m->seq;
	}
	return 0;
}

static int
check_files(struct expect *e, struct ledger_verify *v)
{
	char text[4096], hex[33];
	uint8_t h[16];
	sqlite3 *db = NULL;
	int i, rc = -1;

	/* A database created after the last folder sync may be gone. */
	if (access(db_path, F_OK) == -1)
		return e->nev == 0 ? 0 : fail_at(e, "the database is gone");
	/* Recovery only reads the WAL; closing must not checkpoint it
	 * either: lockerd starts on the files as the power left them. */
	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL) !=
	    SQLITE_OK || sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
	    1, NULL) != SQLITE_OK) {
		fail_at(e, "open: %s", sqlite3_errmsg(db));
		goto out;
	}
	if (query_text(db, "PRAGMA integrity_check", 0, text,
	    sizeof(text)) == -1 || strcmp(text, "ok") != 0) {
		fail_at(e, "integrity_check: %.150s", text[0] ? text :
		    sqlite3_errmsg(db));
		goto out;
	}
	if (verify_ledger(db, e, v) == -1)
		goto out;
	/* Durability: every event of an acknowledged step, byte for byte. */
	for (i = 0; i < e->nev; i++) {
		if (query_text(db, "SELECT body FROM events WHERE seq = ?1",
		    e->ev_seq[i], text, sizeof(text)) == -1 || text[0] == '\0') {
			fail_at(e, "acknowledged event seq %lld is lost",
			    (long long)e->ev_seq[i]);
			goto out;
		}
		crypto_generichash(h, sizeof(h), (const uint8_t *)text,
		    strlen(text), NULL, 0);
		sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
		if (strcmp(hex, e->ev_hash[i]) != 0) {
			fail_at(e, "acknowledged event seq %lld differs",
			    (long long)e->ev_seq[i]);
			goto out;
		}
	}
	for (i = 0; i < e->nresv; i++)
		if (query_text(db, "SELECT id FROM reservations WHERE id = ?1",
		    e->resv[i], text, sizeof(text)) == -1 || text[0] == '\0') {
			fail_at(e, "acknowledged reservation %lld is lost",
			    (long long)e->resv[i]);
			goto out;
		}
	if (check_commands(db, e) == -1)
		goto out;
	if (check_mark(db, e) == -1)
		goto out;
	rc = 0;
out:
	sqlite3_close(db);
	return rc;
}

/* After the restart: no alarm about records, no forced door. */
static int
check_alarms(struct expect *e, struct ledger_verify *v)
{
	char text[64];
	sqlite3 *db = NULL;
	int rc = -1;

	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL) !=
	    SQLITE_OK)
		fail_at(e, "reopen: %s", sqlite3_errmsg(db));
	else if (query_text(db, "SELECT type || ' seq ' || seq FROM events "
	    "WHERE type IN ('record_rejected', 'forced_open') ORDER BY seq",
	    0, text, sizeof(text)) == -1 || text[0] != '\0')
		fail_at(e, "in the ledger: %s", text[0] ? text :
		    sqlite3_errmsg(db));
	/* The chain goes on across the restart. */
	else if (verify_ledger(db, e, v) == 0)
		rc = 0;
	sqlite3_close(db);
	return rc;
}

static int
check_code(struct expect *e, const struct pcode *pc)
{
	json_t *reply = enter_code(pc->code, pc->phone);
	int ok = reply_ok(reply), cell = (int)json_integer_value(
	    json_object_get(reply, "cell")), rc = 0;
	const char *err = json_string_value(json_object_get(reply, "error"));

	if (reply == NULL)
		rc = fail_at(e, "no reply to a code");
	else if (pc->state == C_DEAD && !pc->unsure && ok)
		rc = fail_at(e, "a spent code opened cell %d", cell);
	else if (pc->state == C_LIVE && !pc->unsure && !ok)
		rc = fail_at(e, "an acknowledged code for cell %d is refused: "
		    "%s", pc->cell, err ? err : "?");
	else if (ok && cell != pc->cell)
		rc = fail_at(e, "a code for cell %d opened cell %d", pc->cell,
		    cell);
	json_decref(reply);
	return rc;
}

static int
check_staff(struct expect *e)
{
	struct staff st;
	json_t *reply;
	int i, rc, revoked;

	for (i = 0; i < e->nstaff; i++) {
		rc = staff_get(d.store, sign_pk, e->staff[i], &st);
		revoked = st.revoked;
		sodium_memzero(&st, sizeof(st));
		if (rc == 2 || rc == -1)
			return fail_at(e, "staff %s: the row is rejected (%d)",
			    e->staff[i], rc);
		if (e->staff_unsure[i])
			continue;
		if (rc != 0 || revoked != (e->staff_state[i] == 2))
			return fail_at(e, "staff %s: expected %s, found %s",
			    e->staff[i], e->staff_state[i] == 2 ? "revoked" :
			    "active", rc != 0 ? "none" : revoked ? "revoked" :
			    "active");
	}
	/* alice logs in at the keypad (the first account, never revoked). */
	if (e->nstaff > 0 && !e->staff_unsure[0]) {
		reply = ask(kiosk_handle, json_pack("{s:s, s:s, s:s}", "op",
		    "login", "staff", e->staff[0], "pin", "123456"));
		rc = reply_ok(reply);
		json_decref(reply);
		if (!rc)
			return fail_at(e, "staff %s cannot log in",
			    e->staff[0]);
	}
	return 0;
}

/*
 * Invariant 5 at rest: a plain code lives only in its issuance event until
 * it is handed over. Every code the parent knows was handed over (reserve,
 * reissue) or taken and wiped (take_codes), so none may be in the files
 * the running locker keeps, old WAL frames included.
 */
static int
check_no_code_at_rest(struct expect *e)
{
	static const char *const suffix[] = { "", "-wal" };
	char path[320];
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	ssize_t n;
	int i, k, fd, rc = 0;

	for (k = 0; k < 2 && rc == 0; k++) {
		snprintf(path, sizeof(path), "%s%s", db_path, suffix[k]);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
			continue;
		len = 0;
		for (;;) {
			if (len == cap) {
				unsigned char *p = realloc(buf, cap = cap ?
				    cap * 2 : 1 << 20);

				if (p == NULL) {
					rc = fail_at(e, "out of memory");
					break;
				}
				buf = p;
			}
			if ((n = read(fd, buf + len, cap - len)) <= 0)
				break;
			len += (size_t)n;
		}
		close(fd);
		for (i = 0; i < e->ncodes && rc == 0; i++)
			if (memmem(buf, len, e->codes[i].code,
			    strlen(e->codes[i].code)) != NULL)
				rc = fail_at(e, "the plain code for cell %d is "
				    "at rest in %s", e->codes[i].cell,
				    suffix[k][0] ? "the WAL" : "the database");
	}
	free(buf);
	return rc;
}

/* The whole check of one recovery; e->fail says why on -1. */
static int
verify(struct expect *e)
{
	static const uint8_t zero[LEDGER_HASH_LEN];
	struct ledger_verify v;
	int i, pass, rc = 0;

	ledger_verify_init(&v, sign_pk, 1, zero);
	if (check_files(e, &v) == -1)
		return -1;
	if (boot() == -1) {
		rc = d.head.held[0] != '\0';
		lockerd_stop(&d);
		return fail_at(e, "lockerd does not start on the recovered "
		    "files%s%s", rc ? ": held: " : "", rc ? d.head.held : "");
	}
	/* No door opens by itself after the outage (invariant 1). */
	for (i = 0; i < d.bank.ncells && rc == 0; i++)
		if (fb_pulsed[i] != 0)
			rc = fail_at(e, "cell %d was pulsed at start-up",
			    d.cells[i].number);
	if (rc == 0)
		rc = check_no_code_at_rest(e);
	/* Spent codes first (a refusal changes nothing), live ones last. */
	for (pass = C_DEAD; pass >= C_LIVE && rc == 0; pass--)
		for (i = 0; i < e->ncodes && rc == 0; i++)
			if (e->codes[i].state == pass)
				rc = check_code(e, &e->codes[i]);
	if (rc == 0)
		rc = check_staff(e);
	lockerd_stop(&d);
	if (rc == 0)
		rc = check_alarms(e, &v);
	return rc;
}

/* ---- The tests ------------------------------------------------------------ */

static int
env_int(const char *name, int def)
{
	const char *v = getenv(name);

	return v != NULL && *v != '\0' ? atoi(v) : def;
}

static int
setup(void **state)
{
	(void)state;
	log_init("test_powerloss", LOG_LEVEL_ERROR, 0);
	if (codes_init() == -1 || make_dir() == -1)
		return -1;
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	if (keep_files)
		printf("# files of the failed recovery kept in %s\n", dir);
	else
		remove_dir();
	return 0;
}

/*
 * The harness itself: in a child, through the VFS, a commit with
 * synchronous = mode, then the power fails with nothing unsynced landing.
 * Returns the rows the parent finds (-1 on error).
 */
static int
raw_commit_then_loss(const char *mode)
{
	char sql[400], text[32];
	sqlite3 *db = NULL;
	struct stat st;
	int status, rows = -1;
	pid_t pid;

	clear_state();
	fflush(stdout);
	if ((pid = fork()) == -1)
		return -1;
	if (pid == 0) {
		snprintf(sql, sizeof(sql), "PRAGMA journal_mode = WAL; "
		    "PRAGMA synchronous = %s; CREATE TABLE t (x); "
		    "INSERT INTO t VALUES (1);", mode);
		if (pl_install(-1, 0) == -1 ||
		    sqlite3_open(db_path, &db) != SQLITE_OK ||
		    sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
			_exit(3);
		/* Reads see the writes that are not on the file. */
		if (query_text(db, "SELECT count(*) FROM t", 0, text,
		    sizeof(text)) == -1 || strcmp(text, "1") != 0)
			_exit(4);
		snprintf(sql, sizeof(sql), "%s-wal", db_path);
		if (strcmp(mode, "OFF") == 0 && stat(sql, &st) == 0 &&
		    st.st_size != 0)
			_exit(7);
		pl_power_loss();
	}
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != PL_EXIT_POWER)
		return -1;
	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL) ==
	    SQLITE_OK && query_text(db, "PRAGMA integrity_check", 0, text,
	    sizeof(text)) == 0 && strcmp(text, "ok") == 0)
		rows = query_text(db, "SELECT count(*) FROM t", 0, text,
		    sizeof(text)) == 0 ? atoi(text) : 0;
	sqlite3_close(db);
	return rows;
}

/* The harness can lose a commit: FULL keeps it, OFF and NORMAL do not. */
static void
test_harness_loses_unsynced(void **state)
{
	(void)state;
	assert_int_equal(raw_commit_then_loss("FULL"), 1);
	assert_int_equal(raw_commit_then_loss("NORMAL"), 0);
	assert_int_equal(raw_commit_then_loss("OFF"), 0);
}

/*
 * A second power loss, while lockerd starts on what the first one left
 * (recovery, the start-up scrub's checkpoint, boot counter, reconciled
 * doors): the child starts it through the VFS and loses power before its
 * cut-th operation, or after the start if it makes fewer. 0 if it did.
 */
static int
restart_cut(int64_t cut, int seed, struct expect *e)
{
	int status;
	pid_t pid;

	fflush(stdout);
	if ((pid = fork()) == -1)
		return fail_at(e, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (pl_install(cut, seed) == -1 || boot() == -1)
			_exit(3);
		pl_power_loss();
	}
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != PL_EXIT_POWER)
		return fail_at(e, "the restart before the second loss ended "
		    "with status %d", WIFEXITED(status) ? WEXITSTATUS(status) :
		    -1);
	return 0;
}

/*
 * Regression: the power fails right after the first pickup code was taken
 * (its secret wiped, the WAL checkpointed and truncated), and nothing that
 * was not synced lands: not the WAL's truncation either. The old frame
 * that held the plain code stayed in the WAL, and the restarted lockerd
 * kept it there; now it scrubs at start-up.
 */
static void
test_wiped_code_not_left_in_wal(void **state)
{
	static struct expect e;
	int i, rc;

	(void)state;
	for (i = 0; i < NSTEPS && steps[i].act != ACT_TAKE_CODES; i++)
		;
	clear_state();
	cut_after_step = i;
	rc = run_child(-1, 0, &e);
	cut_after_step = -1;
	assert_int_equal(rc, 0);
	assert_int_equal(e.done, i + 1);
	rc = verify(&e);
	if (rc == -1)
		printf("# %s\n", e.fail);
	assert_int_equal(rc, 0);
}

/*
 * One cut point and seed, and a second cut during the restart if cut2 is
 * not -1: 0 if the recovery checks out.
 */
static int
one(int64_t cut, int seed, int64_t cut2, struct expect *e)
{
	char again[48] = "";
	int rc;

	clear_state();
	rc = run_child(cut, seed, e);
	if (rc == 0 && cut2 != -1) {
		rc = restart_cut(cut2, seed, e);
		snprintf(again, sizeof(again), ", again at %lld of the restart",
		    (long long)cut2);
	}
	if (rc == 0)
		rc = verify(e);
	if (rc == -1)
		printf("# cut %lld seed %d%s (after %d acknowledged steps%s%s): "
		    "%s\n# rerun: POWERLOSS_ONLY=%lld:%d:%lld\n",
		    (long long)cut, seed, again, e->done, e->inflight[0] ?
		    ", cut in " : "", e->inflight, e->fail, (long long)cut,
		    seed, (long long)cut2);
	return rc;
}

/*
 * Under sanitizers every fork copies a large address space and the run is
 * several times slower: `make check` samples every 10th cut point (the
 * full sweep is `make test`'s); POWERLOSS_STRIDE sets it.
 */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(PL_ASAN)
#define PL_STRIDE 10
const char *__asan_default_options(void);

/* A small quarantine keeps the parent small, and its forks cheap. */
const char *
__asan_default_options(void)
{
	return "quarantine_size_mb=16";
}
#else
#define PL_STRIDE 1
#endif

/* The whole workload, no cut: how many operations it makes (-1: failed). */
static long long
workload_ops(struct expect *e)
{
	if (one(-1, 0, -1, e) == -1 || e->ops <= 0 || e->done != NSTEPS) {
		keep_files = 1;
		return -1;
	}
	return e->ops;
}

static void
test_powerloss_sweep(void **state)
{
	int seeds = env_int("POWERLOSS_SEEDS", 3), seed, failed = 0, i;
	int stride = env_int("POWERLOSS_STRIDE", PL_STRIDE);
	const char *only = getenv("POWERLOSS_ONLY");
	long long ocut = -1, ocut2 = -1, total, acked = 0, events = 0;
	long long recoveries = 0, cuts = 0, loss[5] = { 0, 0, 0, 0, 0 };
	int oseed = 0;
	static struct expect ex;
	struct expect *e = &ex;
	int64_t cut;
	time_t t0 = time(NULL);

	(void)state;
	if (only != NULL && sscanf(only, "%lld:%d:%lld", &ocut, &oseed,
	    &ocut2) >= 2) {
		failed = one(ocut, oseed, ocut2, e) == -1;
		keep_files = failed;
		if (failed)
			fail_msg("cut %lld seed %d failed", ocut, oseed);
		return;
	}
	if (seeds < 1 || stride < 1)
		fail_msg("POWERLOSS_SEEDS and POWERLOSS_STRIDE are at least 1");
	if ((total = workload_ops(e)) == -1)
		fail_msg("the workload without a cut failed");
	/* Before each operation, and after the last. */
	for (cut = 0; cut <= total && !failed; cut += stride, cuts++)
		for (seed = 0; seed < seeds && !failed; seed++) {
			failed = one(cut, seed, -1, e) == -1;
			acked += e->done;
			events += e->nev;
			recoveries += !failed;
			for (i = 0; i < 5; i++)
				loss[i] += e->loss[i];
		}
	if (!failed)
		unlink(db_path);
	printf("# powerloss: workload of %d steps, %lld writes/truncates/"
	    "syncs; %lld cut points%s x %d loss patterns = %lld recoveries "
	    "verified; %lld acknowledged steps and %lld acknowledged events "
	    "checked; unsynced at the cuts: %lld operations, %lld landed, "
	    "%lld torn, %lld files grown over garbage, %lld file creations "
	    "or deletions undone; the ledger's mark at the head %lld times, "
	    "behind it %lld times (by at most %lld events), never ahead, "
	    "never held; %ld s\n", NSTEPS, total, cuts,
	    stride > 1 ? " (sampled)" : "", seeds, recoveries, acked, events,
	    loss[0], loss[1], loss[2], loss[3], loss[4], mark_exact,
	    mark_behind, mark_behind_max, (long)(time(NULL) - t0));
	if (failed) {
		keep_files = 1;
		fail_msg("a recovery failed");
	}
}

/*
 * The power fails twice: at every 10th cut point of the workload, and
 * again at a pseudo-random one of the first 32 operations of the restart
 * on what it left (a restart makes 19 to 30, more after a cut in the
 * first start), with the same loss pattern both times.
 */
static void
test_powerloss_twice(void **state)
{
	int seeds = env_int("POWERLOSS_SEEDS", 3), seed, failed = 0;
	int stride = 10 * env_int("POWERLOSS_STRIDE", PL_STRIDE);
	long long total, recoveries = 0, acked = 0;
	static struct expect ex;
	struct expect *e = &ex;
	int64_t cut, cut2;
	time_t t0 = time(NULL);

	(void)state;
	if (getenv("POWERLOSS_ONLY") != NULL)
		skip();
	if (seeds < 1 || stride < 1)
		fail_msg("POWERLOSS_SEEDS and POWERLOSS_STRIDE are at least 1");
	if ((total = workload_ops(e)) == -1)
		fail_msg("the workload without a cut failed");
	for (cut = 0; cut <= total && !failed; cut += stride)
		for (seed = 0; seed < seeds && !failed; seed++) {
			cut2 = (int64_t)(((uint64_t)cut * 2654435761u +
			    (uint64_t)seed * 40503u) % 32);
			failed = one(cut, seed, cut2, e) == -1;
			acked += e->done;
			recoveries += !failed;
		}
	if (!failed)
		unlink(db_path);
	printf("# powerloss twice: %lld recoveries verified after a second "
	    "loss during the restart, %lld acknowledged steps checked; %ld s\n",
	    recoveries, acked, (long)(time(NULL) - t0));
	if (failed) {
		keep_files = 1;
		fail_msg("a recovery failed");
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_harness_loses_unsynced),
		cmocka_unit_test(test_wiped_code_not_left_in_wal),
		cmocka_unit_test(test_powerloss_sweep),
		cmocka_unit_test(test_powerloss_twice),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
