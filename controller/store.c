/*
 * The store: lockerd's SQLite database, the only module that speaks SQL.
 * One writer connection, WAL with synchronous=FULL (NORMAL may lose the last
 * commits on power loss), BEGIN IMMEDIATE (busy_timeout is not honoured when
 * a deferred transaction upgrades), migrations from schema/ at start-up.
 */
#include "store.h"

#include <sqlite3.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "embed.h"
#include "log.h"
#include "util.h"

/*
 * SQLite's page cache, as negative KiB. The default (2,000 KiB) fills up
 * after a long drain or months of events and is then most of lockerd's
 * private memory; the hot pages (cells, active reservations, the ledger's
 * tail, the outbox index) fit in far less, and a miss is a read from the
 * OS page cache, not the disk. make bench's scale figures show both sides.
 */
#define STORE_CACHE_KIB "-512"

enum {
	ST_BEGIN, ST_COMMIT, ST_ROLLBACK,
	ST_CELL_DEFINE, ST_CELL_GET, ST_CELL_SAVE,
	ST_EVENT_APPEND, ST_EVENT_LAST, ST_EVENTS_AFTER,
	ST_SECRET_SET, ST_SECRETS,
	ST_RESV_SAVE, ST_RESV_ACTIVE, ST_RESV_MAX,
	ST_STAFF_PUT, ST_STAFF_GET, ST_EVENT_RESV, ST_RESV_LAST,
	ST_EVENT_STAFF, ST_STAFF_LAST,
	ST_OUTBOX, ST_DELIVERED, ST_UNDELIVERED,
	ST_CMD_GET, ST_CMD_START, ST_CMD_DONE, ST_NONCE_ADD, ST_NONCE_PRUNE,
	ST_CMD_RESTORE, ST_CMD_PRUNE_AGE, ST_CMD_PRUNE_ROWS, ST_CMD_COUNT,
	ST_EVENTS_BEFORE, ST_NONCE_SEEN,
	ST_SYNC_NORMAL, ST_SYNC_FULL,
	ST_EVENT_INDEX, ST_INDEX_SET, ST_STAFF_SEQS, ST_STAFF_UNINDEX,
	ST_RESV_GET, ST_RESV_ACTIVE_SET, ST_STAFF_ALL, ST_REJECT_COPY,
	ST_REJECT_DELETE, ST_DELIVERED_RESET, ST_FIRST_UNDELIVERED,
	ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
	[ST_BEGIN] = "BEGIN IMMEDIATE",
	[ST_COMMIT] = "COMMIT",
	[ST_ROLLBACK] = "ROLLBACK",
	[ST_CELL_DEFINE] =
	    "INSERT INTO cells (number, board, channel, size, updated) "
	    "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (number) DO UPDATE SET "
	    "board = ?2, channel = ?3, size = ?4 "
	    "WHERE board != ?2 OR channel != ?3 OR size != ?4",
	[ST_CELL_GET] =
	    "SELECT board, channel, size, door, item, in_service, "
	    "coalesce(fault, ''), unlock_pending FROM cells WHERE number = ?1",
	[ST_CELL_SAVE] =
	    "UPDATE cells SET door = ?2, item = ?3, in_service = ?4, "
	    "fault = nullif(?5, ''), unlock_pending = ?6, updated = ?7 "
	    "WHERE number = ?1",
	[ST_EVENT_APPEND] =
	    "INSERT INTO events (seq, time, type, cell, body) "
	    "VALUES (?1, ?2, ?3, ?4, ?5)",
	[ST_EVENT_LAST] = "SELECT coalesce(max(seq), 0) FROM events",
	[ST_EVENTS_AFTER] =
	    "SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
	[ST_SECRET_SET] = "UPDATE events SET secret = ?2 WHERE seq = ?1",
	[ST_SECRETS] =
	    "SELECT seq, secret FROM events WHERE secret IS NOT NULL "
	    "ORDER BY seq",
	[ST_RESV_SAVE] =
	    "INSERT INTO reservations (id, active, body, sig) "
	    "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET "
	    "active = ?2, body = ?3, sig = ?4",
	[ST_RESV_ACTIVE] =
	    "SELECT id, body, sig FROM reservations WHERE active = 1 "
	    "ORDER BY id",
	[ST_RESV_MAX] = "SELECT coalesce(max(id), 0) FROM reservations",
	[ST_STAFF_PUT] =
	    "INSERT INTO staff (id, body, sig) VALUES (?1, ?2, ?3) "
	    "ON CONFLICT (id) DO UPDATE SET body = ?2, sig = ?3",
	[ST_STAFF_GET] = "SELECT body, sig FROM staff WHERE id = ?1",
	[ST_EVENT_RESV] = "UPDATE events SET resv = ?2 WHERE seq = ?1",
	[ST_OUTBOX] =
	    "SELECT seq, body, secret FROM events WHERE seq >= ?1 AND "
	    "delivered = 0 ORDER BY seq LIMIT ?2",
	[ST_DELIVERED] =
	    "UPDATE events SET delivered = 1, secret = NULL WHERE seq = ?1",
	[ST_CMD_GET] =
	    "SELECT state, reply, digest FROM commands WHERE request_id = ?1",
	[ST_CMD_START] =
	    "INSERT INTO commands (request_id, op, state, at, digest) "
	    "VALUES (?1, ?2, 'started', ?3, ?4)",
	[ST_CMD_RESTORE] =
	    "INSERT INTO commands (request_id, op, state, at, digest) "
	    "VALUES (?1, ?2, 'started', ?3, ?4) ON CONFLICT (request_id) "
	    "DO UPDATE SET digest = ?4 WHERE digest IS NOT ?4",
	[ST_CMD_PRUNE_AGE] = "DELETE FROM commands WHERE at < ?1",
	[ST_CMD_PRUNE_ROWS] =
	    "DELETE FROM commands WHERE request_id IN (SELECT request_id "
	    "FROM commands ORDER BY at DESC LIMIT -1 OFFSET ?1)",
	[ST_CMD_COUNT] = "SELECT count(*) FROM commands",
	[ST_EVENTS_BEFORE] =
	    "SELECT seq, body FROM events WHERE seq < ?1 ORDER BY seq DESC "
	    "LIMIT ?2",
	[ST_CMD_DONE] =
	    "UPDATE commands SET state = 'done', reply = ?2 "
	    "WHERE request_id = ?1",
	[ST_SYNC_NORMAL] = "PRAGMA synchronous = NORMAL",
	[ST_SYNC_FULL] = "PRAGMA synchronous = FULL",
	[ST_NONCE_ADD] =
	    "INSERT INTO nonces (nonce, at) VALUES (?1, ?2) "
	    "ON CONFLICT (nonce) DO NOTHING",
	[ST_NONCE_PRUNE] = "DELETE FROM nonces WHERE at < ?1",
	[ST_NONCE_SEEN] = "SELECT 1 FROM nonces WHERE nonce = ?1",
	[ST_UNDELIVERED] =
	    "SELECT coalesce(min(seq), 0), count(*) FROM events "
	    "WHERE delivered = 0",
	[ST_RESV_LAST] =
	    "SELECT coalesce(max(seq), 0) FROM events WHERE resv = ?1",
	[ST_EVENT_STAFF] = "UPDATE events SET staff = ?2 WHERE seq = ?1",
	[ST_STAFF_LAST] =
	    "SELECT coalesce(max(seq), 0) FROM events WHERE staff = ?1",
	[ST_EVENT_INDEX] =
	    "SELECT seq, body, resv, staff FROM events WHERE seq > ?1 "
	    "ORDER BY seq LIMIT ?2",
	[ST_INDEX_SET] = "UPDATE events SET resv = ?2, staff = ?3 WHERE seq = ?1",
	[ST_STAFF_SEQS] =
	    "SELECT staff, max(seq) FROM events WHERE staff IS NOT NULL "
	    "GROUP BY staff ORDER BY staff",
	[ST_STAFF_UNINDEX] =
	    "UPDATE events SET staff = NULL WHERE staff = ?1 AND seq > ?2",
	[ST_RESV_GET] = "SELECT id, body, sig FROM reservations WHERE id = ?1",
	[ST_RESV_ACTIVE_SET] = "UPDATE reservations SET active = ?2 WHERE id = ?1",
	[ST_STAFF_ALL] = "SELECT id, body, sig FROM staff ORDER BY id",
	[ST_REJECT_COPY] =
	    "INSERT INTO events_rejected (seq, time, type, body, reason, at) "
	    "SELECT seq, time, type, body, ?2, ?3 FROM events WHERE seq >= ?1",
	[ST_REJECT_DELETE] = "DELETE FROM events WHERE seq >= ?1",
	[ST_DELIVERED_RESET] =
	    "UPDATE events SET delivered = 0 WHERE seq > ?1 AND delivered = 1",
	[ST_FIRST_UNDELIVERED] =
	    "SELECT coalesce(min(seq), 0) FROM events WHERE delivered = 0",
};

struct store {
	sqlite3 *db;
	sqlite3_stmt *st[ST_COUNT];
	int64_t next_seq;
	int in_tx;
	int lazy;               /* synchronous = NORMAL just now */
	char path[4096];
	dev_t dev;           /* the file opened, to notice it go or change */
	ino_t ino;
	/* The ledger's mark (store_mark_read): PATH-mark through the VFS,
	 * or for an in-memory database these bytes. */
	char mark_path[4096 + 8];
	sqlite3_file *mark;
	unsigned char mark_mem[STORE_MARK_SIZE];
	int mark_mem_len;
};

#define STORE_BUSY_MS 5000

static int
schema_number(const char *name)
{
	int n = 0, i;

	for (i = 0; i < 3; i++) {
		if (name[i] < '0' || name[i] > '9')
			return -1;
		n = n * 10 + (name[i] - '0');
	}
	return name[3] == '_' ? n : -1;
}

int
store_schema_latest(void)
{
	int latest = 0, n;
	size_t i;

	for (i = 0; i < embed_schema_count; i++)
		if ((n = schema_number(embed_schema[i].name)) > latest)
			latest = n;
	return latest;
}

static int
exec(struct store *s, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;

	if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(s->db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static int
user_version(struct store *s)
{
	sqlite3_stmt *st;
	int v = -1;

	if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) !=
	    SQLITE_OK)
		return -1;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* Applies schema/NNN_*.sql above user_version, one transaction each. */
static int
store_migrate(struct store *s, const char *path, char *err, size_t errlen)
{
	int have = user_version(s), latest = store_schema_latest(), n;
	char sql[64], msg[256];
	size_t i;

	if (have < 0) {
		snprintf(err, errlen, "%s: cannot read the schema version: %s",
		    path, sqlite3_errmsg(s->db));
		return -1;
	}
	if (have > latest) {
		snprintf(err, errlen, "%s: the database has schema version %d, "
		    "newer than the %d this lockerd knows; run a newer lockerd "
		    "or restore a backup", path, have, latest);
		return -1;
	}
	for (n = have + 1; n <= latest; n++) {
		const struct embed_file *f = NULL;

		for (i = 0; i < embed_schema_count; i++)
			if (schema_number(embed_schema[i].name) == n)
				f = &embed_schema[i];
		if (f == NULL) {
			snprintf(err, errlen, "schema step %03d is missing", n);
			return -1;
		}
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", n);
		if (exec(s, "BEGIN IMMEDIATE", msg, sizeof(msg)) == -1 ||
		    exec(s, f->text, msg, sizeof(msg)) == -1 ||
		    exec(s, sql, msg, sizeof(msg)) == -1 ||
		    exec(s, "COMMIT", msg, sizeof(msg)) == -1) {
			snprintf(err, errlen, "%s: migration %s failed: %s",
			    path, f->name, msg);
			exec(s, "ROLLBACK", msg, sizeof(msg));
			return -1;
		}
		log_info("database %s: applied %s", path, f->name);
	}
	return 0;
}

struct store *
store_open(const char *path, char *err, size_t errlen)
{
	struct store *s;
	struct stat st;
	char msg[256];
	int i;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", path, s->db ?
		    sqlite3_errmsg(s->db) : "cannot open");
		goto fail;
	}
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
	if (exec(s, "PRAGMA journal_mode = WAL", msg, sizeof(msg)) == -1 ||
	    exec(s, "PRAGMA synchronous = FULL", msg, sizeof(msg)) == -1 ||
	    exec(s, "PRAGMA secure_delete = ON", msg, sizeof(msg)) == -1 ||
	    exec(s, "PRAGMA foreign_keys = ON", msg, sizeof(msg)) == -1 ||
	    exec(s, "PRAGMA cache_size = " STORE_CACHE_KIB, msg,
	    sizeof(msg)) == -1) {
		snprintf(err, errlen, "%s: %s", path, msg);
		goto fail;
	}
	if (store_migrate(s, path, err, errlen) == -1)
		goto fail;
	for (i = 0; i < ST_COUNT; i++)
		if (sqlite3_prepare_v3(s->db, sql_text[i], -1,
		    SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) != SQLITE_OK) {
			snprintf(err, errlen, "%s: preparing '%s': %s", path,
			    sql_text[i], sqlite3_errmsg(s->db));
			goto fail;
		}
	s->next_seq = store_event_last(s) + 1;
	if (s->next_seq <= 0) {
		snprintf(err, errlen, "%s: cannot read the ledger: %s", path,
		    sqlite3_errmsg(s->db));
		goto fail;
	}
	if (util_strlcpy(s->path, path, sizeof(s->path)) == -1) {
		snprintf(err, errlen, "%s: path too long", path);
		goto fail;
	}
	snprintf(s->mark_path, sizeof(s->mark_path), "%s-mark", path);
	/* An in-memory database (tests) has no file to watch. */
	if (strcmp(path, ":memory:") == 0)
		return s;
	if (stat(path, &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto fail;
	}
	s->dev = st.st_dev;
	s->ino = st.st_ino;
	return s;
fail:
	store_close(s);
	return NULL;
}

void
store_close(struct store *s)
{
	int i;

	if (s == NULL)
		return;
	for (i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(s->st[i]);
	if (s->mark != NULL) {
		if (s->mark->pMethods != NULL)
			s->mark->pMethods->xClose(s->mark);
		free(s->mark);
	}
	if (s->db != NULL && sqlite3_close(s->db) != SQLITE_OK)
		log_error("closing the database: %s", sqlite3_errmsg(s->db));
	free(s);
}

int
store_check(struct store *s, char *why, size_t len)
{
	struct stat st;
	int rc;

	if (s->in_tx) {
		snprintf(why, len, "a transaction was left open");
		return -1;
	}
	if (s->ino != 0) {
		if (stat(s->path, &st) == -1) {
			snprintf(why, len, "%s: %s", s->path, strerror(errno));
			return -1;
		}
		if (st.st_dev != s->dev || st.st_ino != s->ino) {
			snprintf(why, len, "%s was replaced by another file",
			    s->path);
			return -1;
		}
	}
	/* The write lock, without waiting for it: in WAL mode readers do
	 * not hold it, so a failure means another writer or a broken file. */
	sqlite3_busy_timeout(s->db, 0);
	rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		snprintf(why, len, "%s: %s", s->path, sqlite3_errmsg(s->db));
		if (sqlite3_get_autocommit(s->db) == 0)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
	return rc == SQLITE_OK ? 0 : -1;
}

/* Runs a prepared statement that returns no rows; logs failures once. */
static int
step_done(struct store *s, int which)
{
	sqlite3_stmt *st = s->st[which];
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE) {
		log_error("database: %s: %s", sql_text[which],
		    sqlite3_errmsg(s->db));
		return -1;
	}
	return 0;
}

/* A query of one integer (bound by the caller); -1 and logged on error. */
static int64_t
step_int64(struct store *s, int which, const char *what)
{
	sqlite3_stmt *st = s->st[which];
	int64_t v = -1;

	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	else
		log_error("database: reading %s: %s", what,
		    sqlite3_errmsg(s->db));
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return v;
}

/* Rows of (seq, text) to fn until it returns -1; -1 on a database error. */
static int
step_events(struct store *s, int which, const char *what, store_event_fn fn,
    void *arg)
{
	sqlite3_stmt *st = s->st[which];
	int rc, ret = 0;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if (fn(sqlite3_column_int64(st, 0),
		    (const char *)sqlite3_column_text(st, 1), arg) == -1)
			break;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("database: reading %s: %s", what,
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

int
store_begin(struct store *s)
{
	/* Every transaction but a command's start row waits for the disk. */
	if (s->lazy) {
		if (step_done(s, ST_SYNC_FULL) == -1)
			return -1;
		s->lazy = 0;
	}
	if (step_done(s, ST_BEGIN) == -1)
		return -1;
	s->in_tx = 1;
	return 0;
}

int
store_commit(struct store *s)
{
	if (step_done(s, ST_COMMIT) == -1) {
		store_rollback(s);
		return -1;
	}
	s->in_tx = 0;
	return 0;
}

void
store_rollback(struct store *s)
{
	if (sqlite3_get_autocommit(s->db) == 0)
		step_done(s, ST_ROLLBACK);
	s->in_tx = 0;
	/* Sequence numbers handed out in the failed transaction are free. */
	s->next_seq = store_event_last(s) + 1;
}

int64_t
store_boot(struct store *s)
{
	sqlite3_stmt *st = NULL;
	int64_t boot = -1;

	if (store_begin(s) == -1)
		return -1;
	if (sqlite3_prepare_v2(s->db,
	    "INSERT INTO meta (key, value) VALUES ('boot', '1') "
	    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1 "
	    "RETURNING CAST(value AS INTEGER)", -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW) {
		log_error("database: counting boots: %s", sqlite3_errmsg(s->db));
		sqlite3_finalize(st);
		store_rollback(s);
		return -1;
	}
	boot = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	if (store_commit(s) == -1)
		return -1;
	return boot;
}

int
store_cell_define(struct store *s, int number, const char *board,
    int channel, char size)
{
	sqlite3_stmt *st = s->st[ST_CELL_DEFINE];
	char sz[2] = { size, '\0' };

	sqlite3_bind_int(st, 1, number);
	sqlite3_bind_text(st, 2, board, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 3, channel);
	sqlite3_bind_text(st, 4, sz, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 5, util_wall_ms());
	return step_done(s, ST_CELL_DEFINE);
}

int
store_cell_get(struct store *s, int number, struct store_cell *out)
{
	sqlite3_stmt *st = s->st[ST_CELL_GET];
	const unsigned char *t;
	int rc;

	memset(out, 0, sizeof(*out));
	sqlite3_bind_int(st, 1, number);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		out->number = number;
		t = sqlite3_column_text(st, 0);
		util_strlcpy(out->board, t ? (const char *)t : "",
		    sizeof(out->board));
		out->channel = sqlite3_column_int(st, 1);
		t = sqlite3_column_text(st, 2);
		out->size = t ? (char)t[0] : '?';
		t = sqlite3_column_text(st, 3);
		util_strlcpy(out->door, t ? (const char *)t : "unknown",
		    sizeof(out->door));
		out->item = sqlite3_column_type(st, 4) == SQLITE_NULL ? -1 :
		    sqlite3_column_int(st, 4);
		out->in_service = sqlite3_column_int(st, 5);
		t = sqlite3_column_text(st, 6);
		util_strlcpy(out->fault, t ? (const char *)t : "",
		    sizeof(out->fault));
		out->unlock_pending = sqlite3_column_int(st, 7);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc == SQLITE_ROW)
		return 0;
	if (rc != SQLITE_DONE)
		log_error("database: reading cell %d: %s", number,
		    sqlite3_errmsg(s->db));
	return -1;
}

int
store_cell_save(struct store *s, const struct store_cell *c)
{
	sqlite3_stmt *st = s->st[ST_CELL_SAVE];

	sqlite3_bind_int(st, 1, c->number);
	sqlite3_bind_text(st, 2, c->door, -1, SQLITE_TRANSIENT);
	if (c->item < 0)
		sqlite3_bind_null(st, 3);
	else
		sqlite3_bind_int(st, 3, c->item);
	sqlite3_bind_int(st, 4, c->in_service);
	sqlite3_bind_text(st, 5, c->fault, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 6, c->unlock_pending);
	sqlite3_bind_int64(st, 7, util_wall_ms());
	return step_done(s, ST_CELL_SAVE);
}

int
store_event_append(struct store *s, int64_t wall_ms, const char *type,
    int cell, store_body_fn body_fn, void *arg, int64_t *seq_out)
{
	sqlite3_stmt *st = s->st[ST_EVENT_APPEND];
	int64_t seq = s->next_seq;
	char *body;

	if ((body = body_fn(seq, arg)) == NULL) {
		log_error("event %s: cannot encode its body", type);
		return -1;
	}
	sqlite3_bind_int64(st, 1, seq);
	sqlite3_bind_int64(st, 2, wall_ms);
	sqlite3_bind_text(st, 3, type, -1, SQLITE_TRANSIENT);
	if (cell > 0)
		sqlite3_bind_int(st, 4, cell);
	else
		sqlite3_bind_null(st, 4);
	sqlite3_bind_text(st, 5, body, -1, free);
	if (step_done(s, ST_EVENT_APPEND) == -1)
		return -1;
	s->next_seq = seq + 1;
	if (seq_out != NULL)
		*seq_out = seq;
	return 0;
}

int64_t
store_event_last(struct store *s)
{
	return step_int64(s, ST_EVENT_LAST, "the ledger");
}

int
store_events_after(struct store *s, int64_t after, int limit,
    store_event_fn fn, void *arg)
{
	sqlite3_bind_int64(s->st[ST_EVENTS_AFTER], 1, after);
	sqlite3_bind_int(s->st[ST_EVENTS_AFTER], 2, limit);
	return step_events(s, ST_EVENTS_AFTER, "events", fn, arg);
}

int
store_events_before(struct store *s, int64_t before, int limit,
    store_event_fn fn, void *arg)
{
	sqlite3_bind_int64(s->st[ST_EVENTS_BEFORE], 1, before);
	sqlite3_bind_int(s->st[ST_EVENTS_BEFORE], 2, limit);
	return step_events(s, ST_EVENTS_BEFORE, "events", fn, arg);
}

int
store_event_secret(struct store *s, int64_t seq, const char *secret)
{
	sqlite3_stmt *st = s->st[ST_SECRET_SET];

	sqlite3_bind_int64(st, 1, seq);
	if (secret != NULL)
		sqlite3_bind_text(st, 2, secret, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 2);
	return step_done(s, ST_SECRET_SET);
}

int
store_event_secrets(struct store *s, store_event_fn fn, void *arg)
{
	return step_events(s, ST_SECRETS, "undelivered codes", fn, arg);
}

int
store_resv_save(struct store *s, int64_t id, int active, const char *body,
    const uint8_t *sig, size_t siglen)
{
	sqlite3_stmt *st = s->st[ST_RESV_SAVE];

	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int(st, 2, active ? 1 : 0);
	sqlite3_bind_text(st, 3, body, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 4, sig, (int)siglen, SQLITE_TRANSIENT);
	return step_done(s, ST_RESV_SAVE);
}

int
store_resv_active(struct store *s, store_row_fn fn, void *arg)
{
	sqlite3_stmt *st = s->st[ST_RESV_ACTIVE];
	char key[24];
	int rc, ret = 0;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		snprintf(key, sizeof(key), "%lld",
		    (long long)sqlite3_column_int64(st, 0));
		if (fn(key, (const char *)sqlite3_column_text(st, 1),
		    sqlite3_column_blob(st, 2),
		    (size_t)sqlite3_column_bytes(st, 2), arg) == -1)
			break;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("database: reading reservations: %s",
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	return ret;
}

int64_t
store_resv_max_id(struct store *s)
{
	return step_int64(s, ST_RESV_MAX, "reservations");
}

int
store_staff_put(struct store *s, const char *id, const char *body,
    const uint8_t *sig, size_t siglen)
{
	sqlite3_stmt *st = s->st[ST_STAFF_PUT];

	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, body, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 3, sig, (int)siglen, SQLITE_TRANSIENT);
	return step_done(s, ST_STAFF_PUT);
}

int
store_staff_get(struct store *s, const char *id, store_row_fn fn, void *arg)
{
	sqlite3_stmt *st = s->st[ST_STAFF_GET];
	int rc, ret;

	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		ret = fn(id, (const char *)sqlite3_column_text(st, 0),
		    sqlite3_column_blob(st, 1),
		    (size_t)sqlite3_column_bytes(st, 1), arg) == -1 ? -1 : 0;
	else if (rc == SQLITE_DONE)
		ret = 1;
	else {
		log_error("database: reading staff %s: %s", id,
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

void
store_scrub(struct store *s)
{
	int rc = sqlite3_wal_checkpoint_v2(s->db, NULL,
	    SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);

	if (rc != SQLITE_OK)
		log_warn("database: checkpoint to scrub the WAL: %s",
		    sqlite3_errmsg(s->db));
}

int
store_event_resv(struct store *s, int64_t seq, int64_t resv)
{
	sqlite3_stmt *st = s->st[ST_EVENT_RESV];

	sqlite3_bind_int64(st, 1, seq);
	sqlite3_bind_int64(st, 2, resv);
	return step_done(s, ST_EVENT_RESV);
}

int64_t
store_resv_last_event(struct store *s, int64_t resv)
{
	sqlite3_bind_int64(s->st[ST_RESV_LAST], 1, resv);
	return step_int64(s, ST_RESV_LAST, "a reservation's ledger");
}

int
store_event_staff(struct store *s, int64_t seq, const char *id)
{
	sqlite3_stmt *st = s->st[ST_EVENT_STAFF];

	sqlite3_bind_int64(st, 1, seq);
	sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
	return step_done(s, ST_EVENT_STAFF);
}

int64_t
store_staff_last_event(struct store *s, const char *id)
{
	sqlite3_bind_text(s->st[ST_STAFF_LAST], 1, id, -1, SQLITE_TRANSIENT);
	return step_int64(s, ST_STAFF_LAST, "a staff account's ledger");
}

int
store_outbox(struct store *s, int64_t from, int limit, store_outbox_fn fn,
    void *arg)
{
	sqlite3_stmt *st = s->st[ST_OUTBOX];
	int rc, ret = 0;

	sqlite3_bind_int64(st, 1, from);
	sqlite3_bind_int(st, 2, limit);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if (fn(sqlite3_column_int64(st, 0),
		    (const char *)sqlite3_column_text(st, 1),
		    (const char *)sqlite3_column_text(st, 2), arg) == -1)
			break;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("database: reading the outbox: %s",
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

int
store_event_delivered(struct store *s, int64_t seq)
{
	sqlite3_bind_int64(s->st[ST_DELIVERED], 1, seq);
	return step_done(s, ST_DELIVERED);
}

int
store_undelivered(struct store *s, int64_t *first, int64_t *count)
{
	sqlite3_stmt *st = s->st[ST_UNDELIVERED];
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW) {
		*first = sqlite3_column_int64(st, 0);
		*count = sqlite3_column_int64(st, 1);
	} else
		log_error("database: reading the outbox: %s",
		    sqlite3_errmsg(s->db));
	sqlite3_reset(st);
	return rc == SQLITE_ROW ? 0 : -1;
}

int
store_cmd_get(struct store *s, const char *request_id, char *state,
    size_t statelen, char **reply, uint8_t digest[STORE_DIGEST_LEN],
    int *has_digest)
{
	sqlite3_stmt *st = s->st[ST_CMD_GET];
	const unsigned char *t;
	int rc, ret;

	*reply = NULL;
	*has_digest = 0;
	sqlite3_bind_text(st, 1, request_id, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		t = sqlite3_column_text(st, 0);
		util_strlcpy(state, t ? (const char *)t : "", statelen);
		t = sqlite3_column_text(st, 1);
		if (t != NULL)
			*reply = strdup((const char *)t);
		if (sqlite3_column_bytes(st, 2) == STORE_DIGEST_LEN) {
			memcpy(digest, sqlite3_column_blob(st, 2),
			    STORE_DIGEST_LEN);
			*has_digest = 1;
		}
		ret = 0;
	} else if (rc == SQLITE_DONE)
		ret = 1;
	else {
		log_error("database: reading command %s: %s", request_id,
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

/* One statement of a lazy transaction (store.h), inside it. */
static int
lazy_begin(struct store *s)
{
	/* SQLite sets the level outside a transaction only; should FULL fail
	 * to come back afterwards, the next store_begin() sets it before
	 * anything else is written. */
	if (step_done(s, ST_SYNC_NORMAL) == -1)
		return -1;
	s->lazy = 1;
	if (step_done(s, ST_BEGIN) == -1) {
		if (step_done(s, ST_SYNC_FULL) == 0)
			s->lazy = 0;
		return -1;
	}
	s->in_tx = 1;
	return 0;
}

static int
lazy_commit(struct store *s, int ok)
{
	int rc = -1;

	if (ok)
		rc = store_commit(s);
	else
		store_rollback(s);
	if (step_done(s, ST_SYNC_FULL) == 0)
		s->lazy = 0;
	return rc;
}

int
store_cmd_start(struct store *s, const char *request_id, const char *op,
    const uint8_t digest[STORE_DIGEST_LEN], const char *nonce, int64_t at,
    int64_t forget_before)
{
	sqlite3_stmt *st = s->st[ST_CMD_START];
	int ok, fresh = 1;

	if (lazy_begin(s) == -1)
		return -1;
	sqlite3_bind_text(st, 1, request_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, op, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 3, at);
	sqlite3_bind_blob(st, 4, digest, STORE_DIGEST_LEN, SQLITE_TRANSIENT);
	ok = step_done(s, ST_CMD_START) == 0;
	if (ok && nonce != NULL) {
		sqlite3_bind_int64(s->st[ST_NONCE_PRUNE], 1, forget_before);
		sqlite3_bind_text(s->st[ST_NONCE_ADD], 1, nonce, -1,
		    SQLITE_TRANSIENT);
		sqlite3_bind_int64(s->st[ST_NONCE_ADD], 2, at);
		ok = step_done(s, ST_NONCE_PRUNE) == 0 &&
		    step_done(s, ST_NONCE_ADD) == 0;
		fresh = ok && sqlite3_changes(s->db) == 1;
	}
	if (ok && !fresh) {
		lazy_commit(s, 0);
		return 1;
	}
	return lazy_commit(s, ok) == 0 ? 0 : -1;
}

int
store_cmd_done(struct store *s, const char *request_id, const char *reply)
{
	sqlite3_stmt *st = s->st[ST_CMD_DONE];

	sqlite3_bind_text(st, 1, request_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, reply, -1, SQLITE_TRANSIENT);
	return step_done(s, ST_CMD_DONE);
}

int
store_nonce_seen(struct store *s, const char *nonce)
{
	sqlite3_stmt *st = s->st[ST_NONCE_SEEN];
	int rc;

	sqlite3_bind_text(st, 1, nonce, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	log_error("database: reading the nonces: %s", sqlite3_errmsg(s->db));
	return -1;
}

int
store_cmd_restore(struct store *s, const char *request_id, const char *op,
    const uint8_t digest[STORE_DIGEST_LEN], const char *nonce, int64_t at)
{
	sqlite3_stmt *st = s->st[ST_CMD_RESTORE];
	int changed;

	sqlite3_bind_text(st, 1, request_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, op, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 3, at);
	sqlite3_bind_blob(st, 4, digest, STORE_DIGEST_LEN, SQLITE_TRANSIENT);
	if (step_done(s, ST_CMD_RESTORE) == -1)
		return -1;
	changed = sqlite3_changes(s->db);
	sqlite3_bind_text(s->st[ST_NONCE_ADD], 1, nonce, -1,
	    SQLITE_TRANSIENT);
	sqlite3_bind_int64(s->st[ST_NONCE_ADD], 2, at);
	if (step_done(s, ST_NONCE_ADD) == -1)
		return -1;
	return changed + sqlite3_changes(s->db);
}

int
store_cmd_prune(struct store *s, int64_t before, int keep)
{
	int64_t n;
	int ok, gone;

	if ((n = step_int64(s, ST_CMD_COUNT, "the command log")) == -1)
		return -1;
	if (lazy_begin(s) == -1)
		return -1;
	sqlite3_bind_int64(s->st[ST_CMD_PRUNE_AGE], 1, before);
	ok = step_done(s, ST_CMD_PRUNE_AGE) == 0;
	gone = ok ? sqlite3_changes(s->db) : 0;
	if (ok && n - gone > keep) {
		sqlite3_bind_int64(s->st[ST_CMD_PRUNE_ROWS], 1, keep);
		ok = step_done(s, ST_CMD_PRUNE_ROWS) == 0;
		gone += ok ? sqlite3_changes(s->db) : 0;
	}
	if (lazy_commit(s, ok) == -1)
		return -1;
	return gone;
}

/* ---- Custody checks at start-up (mark.c) -------------------------- */

int
store_is_empty(struct store *s)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(s->db, "SELECT EXISTS (SELECT 1 FROM events) "
	    "OR EXISTS (SELECT 1 FROM reservations) OR EXISTS (SELECT 1 FROM "
	    "staff)", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) ==
	    SQLITE_ROW)
		rc = sqlite3_column_int(st, 0) ? 0 : 1;
	else
		log_error("database: %s: %s", s->path, sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return rc;
}

int
store_meta_take(struct store *s, const char *key)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(s->db, "DELETE FROM meta WHERE key = ?1", -1,
	    &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
		if (sqlite3_step(st) == SQLITE_DONE)
			rc = sqlite3_changes(s->db) > 0;
	}
	if (rc == -1)
		log_error("database: meta %s: %s", key, sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return rc;
}

int
store_meta_has(struct store *s, const char *key)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(s->db, "SELECT EXISTS (SELECT 1 FROM meta "
	    "WHERE key = ?1)", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
		if (sqlite3_step(st) == SQLITE_ROW)
			rc = sqlite3_column_int(st, 0);
	}
	if (rc == -1)
		log_error("database: meta %s: %s", key, sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return rc;
}

int64_t
store_boot_raise(struct store *s, int64_t min)
{
	sqlite3_stmt *st = NULL;
	int64_t boot = -1;

	if (store_begin(s) == -1)
		return -1;
	if (sqlite3_prepare_v2(s->db, "UPDATE meta SET value = "
	    "CAST(max(CAST(value AS INTEGER), ?1) AS TEXT) WHERE key = 'boot' "
	    "RETURNING CAST(value AS INTEGER)", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, min);
		if (sqlite3_step(st) == SQLITE_ROW)
			boot = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	if (boot == -1) {
		log_error("database: raising the boot counter: %s",
		    sqlite3_errmsg(s->db));
		store_rollback(s);
		return -1;
	}
	return store_commit(s) == -1 ? -1 : boot;
}

int
store_event_index(struct store *s, int64_t after, int limit,
    store_index_fn fn, void *arg)
{
	sqlite3_stmt *st = s->st[ST_EVENT_INDEX];
	int rc, ret = 0;

	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int(st, 2, limit);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if (fn(sqlite3_column_int64(st, 0),
		    (const char *)sqlite3_column_text(st, 1),
		    sqlite3_column_type(st, 2) == SQLITE_NULL ? 0 :
		    sqlite3_column_int64(st, 2),
		    (const char *)sqlite3_column_text(st, 3), arg) == -1)
			break;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("database: reading the ledger: %s",
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

int
store_event_index_set(struct store *s, int64_t seq, int64_t resv,
    const char *staff)
{
	sqlite3_stmt *st = s->st[ST_INDEX_SET];

	sqlite3_bind_int64(st, 1, seq);
	if (resv > 0)
		sqlite3_bind_int64(st, 2, resv);
	else
		sqlite3_bind_null(st, 2);
	if (staff != NULL)
		sqlite3_bind_text(st, 3, staff, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, 3);
	return step_done(s, ST_INDEX_SET);
}

int
store_staff_seqs(struct store *s, store_event_fn fn, void *arg)
{
	sqlite3_stmt *st = s->st[ST_STAFF_SEQS];
	int rc, ret = 0;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if (fn(sqlite3_column_int64(st, 1),
		    (const char *)sqlite3_column_text(st, 0), arg) == -1)
			break;
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("database: reading the staff index: %s",
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	return ret;
}

int
store_staff_unindex(struct store *s, const char *id, int64_t above)
{
	sqlite3_stmt *st = s->st[ST_STAFF_UNINDEX];

	sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, above);
	return step_done(s, ST_STAFF_UNINDEX);
}

/* Rows of (key, body, sig) to fn; the key column an integer or text. */
static int
step_rows(struct store *s, int which, const char *what, store_row_fn fn,
    void *arg)
{
	sqlite3_stmt *st = s->st[which];
	char key[64];
	int rc, ret = 0;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (sqlite3_column_type(st, 0) == SQLITE_INTEGER)
			snprintf(key, sizeof(key), "%lld",
			    (long long)sqlite3_column_int64(st, 0));
		else
			util_strlcpy(key, (const char *)sqlite3_column_text(st,
			    0), sizeof(key));
		if (fn(key, (const char *)sqlite3_column_text(st, 1),
		    sqlite3_column_blob(st, 2),
		    (size_t)sqlite3_column_bytes(st, 2), arg) == -1)
			break;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		log_error("database: reading %s: %s", what,
		    sqlite3_errmsg(s->db));
		ret = -1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

int
store_resv_get(struct store *s, int64_t id, store_row_fn fn, void *arg)
{
	sqlite3_bind_int64(s->st[ST_RESV_GET], 1, id);
	return step_rows(s, ST_RESV_GET, "a reservation", fn, arg);
}

int
store_resv_set_active(struct store *s, int64_t id, int active)
{
	sqlite3_bind_int64(s->st[ST_RESV_ACTIVE_SET], 1, id);
	sqlite3_bind_int(s->st[ST_RESV_ACTIVE_SET], 2, active ? 1 : 0);
	return step_done(s, ST_RESV_ACTIVE_SET);
}

int
store_staff_all(struct store *s, store_row_fn fn, void *arg)
{
	return step_rows(s, ST_STAFF_ALL, "the staff accounts", fn, arg);
}

int
store_event_reject(struct store *s, int64_t from, const char *reason)
{
	sqlite3_bind_int64(s->st[ST_REJECT_COPY], 1, from);
	sqlite3_bind_text(s->st[ST_REJECT_COPY], 2, reason, -1,
	    SQLITE_TRANSIENT);
	sqlite3_bind_int64(s->st[ST_REJECT_COPY], 3, util_wall_ms());
	sqlite3_bind_int64(s->st[ST_REJECT_DELETE], 1, from);
	if (step_done(s, ST_REJECT_COPY) == -1 ||
	    step_done(s, ST_REJECT_DELETE) == -1)
		return -1;
	s->next_seq = store_event_last(s) + 1;
	return s->next_seq > 0 ? 0 : -1;
}

void
store_event_seq_skip(struct store *s, int64_t next)
{
	if (next > s->next_seq)
		s->next_seq = next;
}

int64_t
store_first_undelivered(struct store *s)
{
	return step_int64(s, ST_FIRST_UNDELIVERED, "the outbox");
}

int64_t
store_delivered_reset(struct store *s, int64_t after)
{
	sqlite3_bind_int64(s->st[ST_DELIVERED_RESET], 1, after);
	if (step_done(s, ST_DELIVERED_RESET) == -1)
		return -1;
	return sqlite3_changes(s->db);
}

/*
 * The mark file goes through SQLite's VFS, opened as a journal would be:
 * the unix VFS then gives it the database's mode and owner, syncs its
 * folder on the first sync after creating it, and test_powerloss's disk
 * model covers it with the database's own files.
 */
static int
mark_open(struct store *s, int create)
{
	sqlite3_vfs *vfs = sqlite3_vfs_find(NULL);
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_MAIN_JOURNAL, out, rc;

	if (s->mark != NULL)
		return 0;
	if (vfs == NULL)
		return -1;
	if (!create) {
		if (vfs->xAccess(vfs, s->mark_path, SQLITE_ACCESS_EXISTS,
		    &out) != SQLITE_OK)
			return -1;
		if (!out)
			return 1;
	} else
		flags |= SQLITE_OPEN_CREATE;
	if ((s->mark = calloc(1, (size_t)vfs->szOsFile)) == NULL)
		return -1;
	rc = vfs->xOpen(vfs, s->mark_path, s->mark, flags, &out);
	if (rc != SQLITE_OK) {
		log_error("%s: cannot open it (SQLite error %d)", s->mark_path,
		    rc);
		if (s->mark->pMethods != NULL)
			s->mark->pMethods->xClose(s->mark);
		free(s->mark);
		s->mark = NULL;
		return -1;
	}
	return 0;
}

const char *
store_mark_path(struct store *s)
{
	return s->mark_path;
}

int
store_mark_read(struct store *s, void *buf, size_t len)
{
	int rc;

	memset(buf, 0, len);
	if (len > STORE_MARK_SIZE)
		return -1;
	if (s->ino == 0) {
		if (s->mark_mem_len == 0)
			return 1;
		memcpy(buf, s->mark_mem, len);
		return 0;
	}
	if ((rc = mark_open(s, 0)) != 0)
		return rc;
	rc = s->mark->pMethods->xRead(s->mark, buf, (int)len, 0);
	if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
		log_error("%s: reading: SQLite error %d", s->mark_path, rc);
		return -1;
	}
	return 0;
}

int
store_mark_write(struct store *s, const void *buf, size_t len, int64_t off,
    int sync)
{
	int rc;

	if (off < 0 || (size_t)off + len > STORE_MARK_SIZE)
		return -1;
	if (s->ino == 0) {
		memcpy(s->mark_mem + off, buf, len);
		if ((int)((size_t)off + len) > s->mark_mem_len)
			s->mark_mem_len = (int)((size_t)off + len);
		return 0;
	}
	if (mark_open(s, 1) != 0)
		return -1;
	if ((rc = s->mark->pMethods->xWrite(s->mark, buf, (int)len, off)) !=
	    SQLITE_OK || (sync && (rc = s->mark->pMethods->xSync(s->mark,
	    SQLITE_SYNC_NORMAL)) != SQLITE_OK)) {
		log_error("%s: writing: SQLite error %d", s->mark_path, rc);
		return -1;
	}
	return 0;
}

int
store_mark_sync(struct store *s)
{
	int rc;

	if (s->ino == 0)
		return 0;
	if (s->mark == NULL)
		return -1;
	if ((rc = s->mark->pMethods->xSync(s->mark, SQLITE_SYNC_NORMAL)) !=
	    SQLITE_OK) {
		log_error("%s: syncing: SQLite error %d", s->mark_path, rc);
		return -1;
	}
	return 0;
}

/*
 * The throttle rows are written at most once per failed attempt, which
 * the throttle itself bounds; statements prepared per call keep them
 * apart from the hot paths above.
 */
int
store_throttle_put(struct store *s, const struct store_throttle *rows,
    int n)
{
	static const char put[] =
	    "INSERT INTO throttle (name, tokens, at, alarmed, episode, "
	    "failures, spent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
	    "ON CONFLICT (name) DO UPDATE SET tokens = ?2, at = ?3, "
	    "alarmed = ?4, episode = ?5, failures = ?6, spent = ?7";
	static const char del[] = "DELETE FROM throttle WHERE name = ?1";
	sqlite3_stmt *st = NULL;
	int i, rc = 0;

	if (store_begin(s) == -1)
		return -1;
	for (i = 0; i < n && rc == 0; i++) {
		const struct store_throttle *t = &rows[i];

		if (sqlite3_prepare_v2(s->db, t->full ? del : put, -1, &st,
		    NULL) != SQLITE_OK) {
			rc = -1;
			break;
		}
		sqlite3_bind_text(st, 1, t->name, -1, SQLITE_TRANSIENT);
		if (!t->full) {
			sqlite3_bind_double(st, 2, t->tokens);
			sqlite3_bind_int64(st, 3, t->at);
			sqlite3_bind_int(st, 4, t->alarmed);
			sqlite3_bind_int64(st, 5, t->episode);
			sqlite3_bind_int64(st, 6, t->failures);
			sqlite3_bind_int64(st, 7, t->spent);
		}
		if (sqlite3_step(st) != SQLITE_DONE)
			rc = -1;
		sqlite3_finalize(st);
	}
	if (rc == -1) {
		log_error("database: saving the keypad throttle: %s",
		    sqlite3_errmsg(s->db));
		store_rollback(s);
		return -1;
	}
	return store_commit(s);
}

int
store_throttle_load(struct store *s, store_throttle_fn fn, void *arg)
{
	sqlite3_stmt *st;
	struct store_throttle t;
	const unsigned char *name;
	int rc;

	/* The emptiest first: they matter most when not all fit. */
	if (sqlite3_prepare_v2(s->db, "SELECT name, tokens, at, alarmed, "
	    "episode, failures, spent FROM throttle ORDER BY tokens - spent, "
	    "name", -1, &st, NULL) != SQLITE_OK) {
		log_error("database: reading the keypad throttle: %s",
		    sqlite3_errmsg(s->db));
		return -1;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		memset(&t, 0, sizeof(t));
		name = sqlite3_column_text(st, 0);
		if (name == NULL || util_strlcpy(t.name, (const char *)name,
		    sizeof(t.name)) == -1)
			continue;
		t.tokens = sqlite3_column_double(st, 1);
		t.at = sqlite3_column_int64(st, 2);
		t.alarmed = sqlite3_column_int(st, 3);
		t.episode = sqlite3_column_int64(st, 4);
		t.failures = sqlite3_column_int64(st, 5);
		t.spent = sqlite3_column_int64(st, 6);
		if (fn(&t, arg) == -1) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE)
		log_error("database: reading the keypad throttle: %s",
		    sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}
