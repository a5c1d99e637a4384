/*
 * The store on a real SQLite file with the real schema (WAL needs a file):
 * pragmas, migrations and their refusal of a newer database, the boot
 * counter, cell rows, and the gap-free event ledger.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "log.h"
#include "store.h"

struct fixture {
	char dir[64];
	char path[96];
	struct store *s;
	sqlite3 *peek;  /* closed by teardown if a test fails with it open */
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/test_store.XXXXXX");
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/lockerd.db", f->dir);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	static const char *const suffix[] = { "", "-wal", "-shm", "-journal",
	    "-mark" };
	char p[128];
	size_t i;

	store_close(f->s);
	sqlite3_close(f->peek);
	for (i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
		snprintf(p, sizeof(p), "%s%s", f->path, suffix[i]);
		unlink(p);
	}
	rmdir(f->dir);
	free(f);
	return 0;
}

static struct store *
open_ok(struct fixture *f)
{
	char err[512] = "";
	struct store *s = store_open(f->path, err, sizeof(err));

	if (s == NULL)
		fail_msg("store_open %s: %s", f->path, err);
	return s;
}

static void
reopen(struct fixture *f)
{
	store_close(f->s);
	f->s = open_ok(f);
}

/* A second, plain connection to the same file, to look behind the store. */
static sqlite3 *
peek_open(struct fixture *f, int flags)
{
	assert_null(f->peek);
	if (sqlite3_open_v2(f->path, &f->peek, flags, NULL) != SQLITE_OK)
		fail_msg("sqlite3_open_v2 %s: %s", f->path,
		    f->peek ? sqlite3_errmsg(f->peek) : "?");
	return f->peek;
}

static void
peek_close(struct fixture *f)
{
	assert_int_equal(sqlite3_close(f->peek), SQLITE_OK);
	f->peek = NULL;
}

static void
peek_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		print_error("%s: %s\n", sql, msg ? msg : "?");
		sqlite3_free(msg);
		fail();
	}
}

/* The first column of the first row as text ("NULL" for NULL). */
static void
peek_text(sqlite3 *db, const char *sql, char *out, size_t len)
{
	sqlite3_stmt *st;
	const unsigned char *t;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) != SQLITE_ROW) {
		print_error("%s: no row: %s\n", sql, sqlite3_errmsg(db));
		sqlite3_finalize(st);
		fail();
	}
	t = sqlite3_column_text(st, 0);
	snprintf(out, len, "%s", t ? (const char *)t : "NULL");
	sqlite3_finalize(st);
}

static int64_t
peek_int(sqlite3 *db, const char *sql)
{
	char buf[64];

	peek_text(db, sql, buf, sizeof(buf));
	return strtoll(buf, NULL, 10);
}

/*
 * synchronous is a per-connection setting, so it cannot be seen from a
 * second connection. An auto-extension runs on every connection the
 * process opens and hands us the store's own handle while it is armed.
 */
static int capture_armed;
static sqlite3 *captured;

static int
capture_db(sqlite3 *db, char **errmsg, const sqlite3_api_routines *api)
{
	(void)errmsg;
	(void)api;
	if (capture_armed)
		captured = db;
	return SQLITE_OK;
}

static void
test_pragmas(void **state)
{
	struct fixture *f = *state;
	char mode[16];
	sqlite3 *db;

	assert_int_equal(sqlite3_auto_extension((void (*)(void))capture_db),
	    SQLITE_OK);
	capture_armed = 1;
	captured = NULL;
	f->s = open_ok(f);
	capture_armed = 0;
	sqlite3_cancel_auto_extension((void (*)(void))capture_db);
	assert_non_null(captured);
	assert_int_equal(peek_int(captured, "PRAGMA synchronous"), 2);
	peek_text(captured, "PRAGMA journal_mode", mode, sizeof(mode));
	assert_string_equal(mode, "wal");
	assert_int_equal(peek_int(captured, "PRAGMA foreign_keys"), 1);

	/* WAL is recorded in the file: a reader sees it too. */
	db = peek_open(f, SQLITE_OPEN_READONLY);
	peek_text(db, "PRAGMA journal_mode", mode, sizeof(mode));
	assert_string_equal(mode, "wal");
	peek_close(f);
}

static void
test_migrate_fresh_and_reopen(void **state)
{
	struct fixture *f = *state;
	sqlite3 *db;
	char buf[64];

	assert_true(store_schema_latest() >= 1);
	f->s = open_ok(f);
	db = peek_open(f, SQLITE_OPEN_READWRITE);
	assert_int_equal(peek_int(db, "PRAGMA user_version"),
	    store_schema_latest());
	assert_int_equal(peek_int(db, "SELECT count(*) FROM sqlite_schema "
	    "WHERE type = 'table' AND name IN ('meta', 'cells', 'events')"),
	    3);
	peek_exec(db, "INSERT INTO meta (key, value) VALUES ('marker', 'kept')");
	peek_close(f);

	/* Reopening applies nothing again: the data and version stay. */
	reopen(f);
	reopen(f);
	db = peek_open(f, SQLITE_OPEN_READONLY);
	assert_int_equal(peek_int(db, "PRAGMA user_version"),
	    store_schema_latest());
	peek_text(db, "SELECT value FROM meta WHERE key = 'marker'", buf,
	    sizeof(buf));
	assert_string_equal(buf, "kept");
	peek_close(f);
}

/* A database from a newer lockerd is refused, naming both versions. */
static void
test_newer_schema_refused(void **state)
{
	struct fixture *f = *state;
	char err[512] = "", sql[64], have[64], know[64];
	int newer = store_schema_latest() + 1;
	sqlite3 *db;

	f->s = open_ok(f);
	store_close(f->s);
	f->s = NULL;
	db = peek_open(f, SQLITE_OPEN_READWRITE);
	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", newer);
	peek_exec(db, sql);
	peek_close(f);

	assert_null(store_open(f->path, err, sizeof(err)));
	snprintf(have, sizeof(have), "schema version %d", newer);
	snprintf(know, sizeof(know), "the %d this lockerd knows",
	    store_schema_latest());
	assert_non_null(strstr(err, f->path));
	assert_non_null(strstr(err, have));
	assert_non_null(strstr(err, know));

	/* And left as it was. */
	db = peek_open(f, SQLITE_OPEN_READONLY);
	assert_int_equal(peek_int(db, "PRAGMA user_version"), newer);
	peek_close(f);
}

static void
test_not_a_database(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	FILE *fp;

	fp = fopen(f->path, "w");
	assert_non_null(fp);
	fputs("this is not an SQLite database, not even close to one......"
	    "................................................................"
	    "................................................................",
	    fp);
	fclose(fp);
	assert_null(store_open(f->path, err, sizeof(err)));
	assert_non_null(strstr(err, f->path));
	assert_non_null(strstr(err, "not a database"));
}

static void
test_boot_counter(void **state)
{
	struct fixture *f = *state;

	f->s = open_ok(f);
	assert_int_equal(store_boot(f->s), 1);
	reopen(f);
	assert_int_equal(store_boot(f->s), 2);
	reopen(f);
	assert_int_equal(store_boot(f->s), 3);
	assert_int_equal(store_boot(f->s), 4);
}

static void
define(struct store *s, int number, const char *board, int channel,
    char size)
{
	assert_int_equal(store_begin(s), 0);
	assert_int_equal(store_cell_define(s, number, board, channel, size), 0);
	assert_int_equal(store_commit(s), 0);
}

static void
test_cell_round_trip(void **state)
{
	struct fixture *f = *state;
	struct store_cell c, got;
	sqlite3 *db;
	char buf[64];

	f->s = open_ok(f);
	assert_int_equal(store_cell_get(f->s, 5, &got), -1);
	define(f->s, 5, "A", 3, 'M');

	/* A new cell: wiring as given, state unknown. */
	assert_int_equal(store_cell_get(f->s, 5, &got), 0);
	assert_int_equal(got.number, 5);
	assert_string_equal(got.board, "A");
	assert_int_equal(got.channel, 3);
	assert_int_equal(got.size, 'M');
	assert_string_equal(got.door, "unknown");
	assert_int_equal(got.item, -1);
	assert_int_equal(got.in_service, 1);
	assert_string_equal(got.fault, "");
	assert_int_equal(got.unlock_pending, 0);

	/* Everything saved comes back. */
	c = got;
	snprintf(c.door, sizeof(c.door), "open");
	c.item = 1;
	c.in_service = 0;
	snprintf(c.fault, sizeof(c.fault), "jammed");
	c.unlock_pending = 1;
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_cell_save(f->s, &c), 0);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_cell_get(f->s, 5, &got), 0);
	assert_string_equal(got.door, "open");
	assert_int_equal(got.item, 1);
	assert_int_equal(got.in_service, 0);
	assert_string_equal(got.fault, "jammed");
	assert_int_equal(got.unlock_pending, 1);

	/* Defining the same wiring again keeps the state. */
	define(f->s, 5, "A", 3, 'M');
	assert_int_equal(store_cell_get(f->s, 5, &got), 0);
	assert_string_equal(got.board, "A");
	assert_string_equal(got.door, "open");
	assert_int_equal(got.item, 1);
	assert_string_equal(got.fault, "jammed");
	assert_int_equal(got.unlock_pending, 1);

	/* New wiring moves the cell and keeps what is known of its door. */
	define(f->s, 5, "B", 7, 'L');
	assert_int_equal(store_cell_get(f->s, 5, &got), 0);
	assert_string_equal(got.board, "B");
	assert_int_equal(got.channel, 7);
	assert_int_equal(got.size, 'L');
	assert_string_equal(got.door, "open");
	assert_int_equal(got.item, 1);
	assert_int_equal(got.in_service, 0);
	assert_string_equal(got.fault, "jammed");
	assert_int_equal(got.unlock_pending, 1);

	/* item -1 and fault "" are stored as NULL, and read back as such. */
	c = got;
	snprintf(c.door, sizeof(c.door), "closed");
	c.item = -1;
	c.fault[0] = '\0';
	c.unlock_pending = 0;
	c.in_service = 1;
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_cell_save(f->s, &c), 0);
	assert_int_equal(store_commit(f->s), 0);
	reopen(f);
	assert_int_equal(store_cell_get(f->s, 5, &got), 0);
	assert_string_equal(got.board, "B");
	assert_string_equal(got.door, "closed");
	assert_int_equal(got.item, -1);
	assert_string_equal(got.fault, "");
	assert_int_equal(got.in_service, 1);
	assert_int_equal(got.unlock_pending, 0);
	db = peek_open(f, SQLITE_OPEN_READONLY);
	peek_text(db, "SELECT typeof(item) || ',' || typeof(fault) FROM cells "
	    "WHERE number = 5", buf, sizeof(buf));
	assert_string_equal(buf, "null,null");
	peek_close(f);

	/* Other cells are separate rows; an absent one is still absent. */
	define(f->s, 6, "B", 8, 'S');
	assert_int_equal(store_cell_get(f->s, 6, &got), 0);
	assert_string_equal(got.door, "unknown");
	assert_int_equal(store_cell_get(f->s, 5, &got), 0);
	assert_string_equal(got.door, "closed");
	assert_int_equal(store_cell_get(f->s, 7, &got), -1);
}

/* The schema's checks hold: a wiring outside them is refused. */
static void
test_cell_define_checked(void **state)
{
	struct fixture *f = *state;
	struct store_cell got;

	f->s = open_ok(f);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_cell_define(f->s, 1000, "A", 1, 'S'), -1);
	assert_int_equal(store_cell_define(f->s, 1, "A", 65, 'S'), -1);
	assert_int_equal(store_cell_define(f->s, 1, "A", 1, 'X'), -1);
	assert_int_equal(store_cell_define(f->s, 1, "A", 1, 'S'), 0);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_cell_get(f->s, 1, &got), 0);
	assert_int_equal(store_cell_get(f->s, 1000, &got), -1);
}

struct body_arg {
	int64_t seqs[16];
	int n;
	int fail;
};

static char *
body_json(int64_t seq, void *arg)
{
	struct body_arg *b = arg;
	char *s;

	if (b->n < 16)
		b->seqs[b->n] = seq;
	b->n++;
	if (b->fail)
		return NULL;
	if ((s = malloc(64)) != NULL)
		snprintf(s, 64, "{\"seq\":%lld}", (long long)seq);
	return s;
}

static int64_t
append(struct store *s, struct body_arg *b, const char *type, int cell)
{
	int64_t seq = -1;

	assert_int_equal(store_event_append(s, 1700000000000LL, type, cell,
	    body_json, b, &seq), 0);
	/* The body was made with the seq the event got. */
	assert_int_equal(b->seqs[b->n - 1], seq);
	return seq;
}

static void
test_event_seq_gap_free(void **state)
{
	struct fixture *f = *state;
	struct body_arg b = { .n = 0 };
	sqlite3 *db;
	char buf[64];
	int64_t i;

	f->s = open_ok(f);
	assert_int_equal(store_event_last(f->s), 0);
	assert_int_equal(store_begin(f->s), 0);
	for (i = 1; i <= 5; i++)
		assert_int_equal(append(f->s, &b, "door_opened", (int)i), i);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_event_last(f->s), 5);

	/* Outside an explicit transaction too, and on after a reopen. */
	assert_int_equal(append(f->s, &b, "boot", 0), 6);
	reopen(f);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(append(f->s, &b, "boot", 0), 7);
	assert_int_equal(store_commit(f->s), 0);

	db = peek_open(f, SQLITE_OPEN_READONLY);
	assert_int_equal(peek_int(db, "SELECT count(*) FROM events"), 7);
	assert_int_equal(peek_int(db, "SELECT min(seq) FROM events"), 1);
	assert_int_equal(peek_int(db, "SELECT max(seq) FROM events"), 7);
	peek_text(db, "SELECT body FROM events WHERE seq = 3", buf,
	    sizeof(buf));
	assert_string_equal(buf, "{\"seq\":3}");
	peek_text(db, "SELECT type || ',' || cell || ',' || time FROM events "
	    "WHERE seq = 3", buf, sizeof(buf));
	assert_string_equal(buf, "door_opened,3,1700000000000");
	/* cell 0 means "no cell". */
	peek_text(db, "SELECT typeof(cell) FROM events WHERE seq = 6", buf,
	    sizeof(buf));
	assert_string_equal(buf, "null");
	peek_close(f);
}

/* A rolled-back transaction gives its sequence numbers back. */
static void
test_event_rollback_frees_seq(void **state)
{
	struct fixture *f = *state;
	struct body_arg b = { .n = 0 };
	char buf[64];
	sqlite3 *db;

	f->s = open_ok(f);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(append(f->s, &b, "a", 1), 1);
	assert_int_equal(append(f->s, &b, "a", 1), 2);
	assert_int_equal(store_commit(f->s), 0);

	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(append(f->s, &b, "lost", 1), 3);
	assert_int_equal(append(f->s, &b, "lost", 1), 4);
	store_rollback(f->s);
	assert_int_equal(store_event_last(f->s), 2);

	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(append(f->s, &b, "kept", 2), 3);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_event_last(f->s), 3);

	db = peek_open(f, SQLITE_OPEN_READONLY);
	assert_int_equal(peek_int(db, "SELECT count(*) FROM events"), 3);
	peek_text(db, "SELECT type FROM events WHERE seq = 3", buf,
	    sizeof(buf));
	assert_string_equal(buf, "kept");
	peek_close(f);
}

/* A body that cannot be made fails the append and uses up no number. */
static void
test_event_body_failure(void **state)
{
	struct fixture *f = *state;
	struct body_arg b = { .n = 0 };
	int64_t seq = -7;

	f->s = open_ok(f);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(append(f->s, &b, "a", 1), 1);
	b.fail = 1;
	assert_int_equal(store_event_append(f->s, 1, "bad", 1, body_json, &b,
	    &seq), -1);
	assert_int_equal(seq, -7);
	assert_int_equal(b.seqs[b.n - 1], 2);
	b.fail = 0;
	assert_int_equal(append(f->s, &b, "a", 1), 2);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_event_last(f->s), 2);
}

struct collect {
	int64_t seqs[32];
	char bodies[32][32];
	int n;
	int stop_at; /* return -1 on this call (1-based); 0 never */
};

static int
collect_event(int64_t seq, const char *body, void *arg)
{
	struct collect *c = arg;

	if (c->n < 32) {
		c->seqs[c->n] = seq;
		snprintf(c->bodies[c->n], sizeof(c->bodies[0]), "%s", body);
	}
	c->n++;
	return c->n == c->stop_at ? -1 : 0;
}

static void
test_events_after(void **state)
{
	static const struct {
		int64_t after;
		int limit, stop_at;
		int64_t first;
		int n;
	} t[] = {
		{ 0, 100, 0, 1, 10 },
		{ 0, 3, 0, 1, 3 },
		{ 4, 100, 0, 5, 6 },
		{ 4, 2, 0, 5, 2 },
		{ 9, 100, 0, 10, 1 },
		{ 10, 100, 0, 0, 0 },
		{ 50, 100, 0, 0, 0 },
		{ 0, 0, 0, 0, 0 },
		{ 0, 100, 1, 1, 1 },  /* -1 on the first call stops there */
		{ 2, 100, 4, 3, 4 },
	};
	struct fixture *f = *state;
	struct body_arg b = { .n = 0 };
	struct collect c;
	size_t i;
	int j;

	f->s = open_ok(f);
	assert_int_equal(store_begin(f->s), 0);
	for (j = 1; j <= 10; j++)
		append(f->s, &b, "e", j);
	assert_int_equal(store_commit(f->s), 0);

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		memset(&c, 0, sizeof(c));
		c.stop_at = t[i].stop_at;
		assert_int_equal(store_events_after(f->s, t[i].after,
		    t[i].limit, collect_event, &c), 0);
		if (c.n != t[i].n)
			fail_msg("after %lld limit %d stop %d: %d events, "
			    "want %d", (long long)t[i].after, t[i].limit,
			    t[i].stop_at, c.n, t[i].n);
		for (j = 0; j < c.n; j++) {
			char want[32];

			assert_int_equal(c.seqs[j], t[i].first + j);
			snprintf(want, sizeof(want), "{\"seq\":%lld}",
			    (long long)(t[i].first + j));
			assert_string_equal(c.bodies[j], want);
		}
	}
}

/* The command log of signed commands (link.c's exactly once). */
static void
test_command_log(void **state)
{
	struct fixture *f = *state;
	uint8_t d1[STORE_DIGEST_LEN], d2[STORE_DIGEST_LEN], got[STORE_DIGEST_LEN];
	char st[16], *reply;
	int has, i;

	memset(d1, 1, sizeof(d1));
	memset(d2, 2, sizeof(d2));
	f->s = open_ok(f);
	assert_int_equal(store_cmd_get(f->s, "r-1", st, sizeof(st), &reply,
	    got, &has), 1);
	/* Started: its row and its nonce, and a used nonce takes nothing. */
	assert_int_equal(store_cmd_start(f->s, "r-1", "open", d1,
	    "nonce-000000000001", 1000, 0), 0);
	assert_int_equal(store_nonce_seen(f->s, "nonce-000000000001"), 1);
	assert_int_equal(store_nonce_seen(f->s, "nonce-000000000002"), 0);
	assert_int_equal(store_cmd_start(f->s, "r-2", "open", d2,
	    "nonce-000000000001", 1000, 0), 1);
	assert_int_equal(store_cmd_get(f->s, "r-2", st, sizeof(st), &reply,
	    got, &has), 1);
	assert_int_equal(store_cmd_get(f->s, "r-1", st, sizeof(st), &reply,
	    got, &has), 0);
	assert_string_equal(st, "started");
	assert_null(reply);
	assert_true(has);
	assert_memory_equal(got, d1, sizeof(d1));
	/* Done, with its reply; survives a reopen. */
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_cmd_done(f->s, "r-1", "{\"ok\":true}"), 0);
	assert_int_equal(store_commit(f->s), 0);
	reopen(f);
	assert_int_equal(store_cmd_get(f->s, "r-1", st, sizeof(st), &reply,
	    got, &has), 0);
	assert_string_equal(st, "done");
	assert_string_equal(reply, "{\"ok\":true}");
	free(reply);
	/* Put back from the ledger: a lost row and nonce come back as
	 * started, a row with another digest gets the ledger's, a row in
	 * place changes nothing. */
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_cmd_restore(f->s, "r-3", "reserve", d2,
	    "nonce-000000000003", 2000), 2);
	assert_int_equal(store_cmd_restore(f->s, "r-1", "open", d1,
	    "nonce-000000000001", 2000), 0);
	assert_int_equal(store_cmd_restore(f->s, "r-1", "open", d2,
	    "nonce-000000000001", 2000), 1);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_cmd_get(f->s, "r-3", st, sizeof(st), &reply,
	    got, &has), 0);
	assert_string_equal(st, "started");
	assert_memory_equal(got, d2, sizeof(d2));
	assert_int_equal(store_nonce_seen(f->s, "nonce-000000000003"), 1);
	assert_int_equal(store_cmd_get(f->s, "r-1", st, sizeof(st), &reply,
	    got, &has), 0);
	free(reply);
	assert_memory_equal(got, d2, sizeof(d2));
	/* Pruned by age, then by count (the oldest go). */
	for (i = 0; i < 10; i++) {
		char id[16], nonce[32];

		snprintf(id, sizeof(id), "p-%d", i);
		snprintf(nonce, sizeof(nonce), "nonce-p-0000000%03d", i);
		assert_int_equal(store_cmd_start(f->s, id, "open", d1, nonce,
		    10000 + i, 0), 0);
	}
	assert_int_equal(store_cmd_prune(f->s, 5000, 100), 2);
	assert_int_equal(store_cmd_get(f->s, "r-1", st, sizeof(st), &reply,
	    got, &has), 1);
	assert_int_equal(store_cmd_prune(f->s, 5000, 4), 6);
	assert_int_equal(store_cmd_get(f->s, "p-5", st, sizeof(st), &reply,
	    got, &has), 1);
	assert_int_equal(store_cmd_get(f->s, "p-6", st, sizeof(st), &reply,
	    got, &has), 0);
	/* Nonces outlive their rows, for their own window. */
	assert_int_equal(store_nonce_seen(f->s, "nonce-p-0000000000"), 1);
	/* A later start drops nonces from before forget_before. */
	assert_int_equal(store_cmd_start(f->s, "q-1", "open", d1,
	    "nonce-000000000009", 20000, 10005), 0);
	assert_int_equal(store_nonce_seen(f->s, "nonce-p-0000000004"), 0);
	assert_int_equal(store_nonce_seen(f->s, "nonce-p-0000000005"), 1);
}

/*
 * store_check: usable as opened; not while another connection holds the
 * write lock (and it does not wait for it); not once the file is gone or
 * replaced; usable again when the lock goes.
 */
static void
test_check(void **state)
{
	struct fixture *f = *state;
	char why[256], moved[128];
	sqlite3 *db;
	FILE *fp;

	f->s = open_ok(f);
	assert_int_equal(store_check(f->s, why, sizeof(why)), 0);
	db = peek_open(f, SQLITE_OPEN_READWRITE);
	assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL),
	    SQLITE_OK);
	assert_int_equal(store_check(f->s, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "locked"));
	assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL),
	    SQLITE_OK);
	assert_int_equal(store_check(f->s, why, sizeof(why)), 0);
	/* The store still writes: the check left no transaction open. */
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_commit(f->s), 0);

	snprintf(moved, sizeof(moved), "%s.moved", f->path);
	assert_int_equal(rename(f->path, moved), 0);
	assert_int_equal(store_check(f->s, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "No such file"));
	/* Another file under the old name is not the database opened. */
	assert_non_null(fp = fopen(f->path, "w"));
	fclose(fp);
	assert_int_equal(store_check(f->s, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "replaced"));
	assert_int_equal(rename(moved, f->path), 0);
	assert_int_equal(store_check(f->s, why, sizeof(why)), 0);
}

/*
 * The ledger's mark: a file of its own beside the database (PATH-mark),
 * absent until written, created with the database's mode, each write
 * where it was put and durable (a second store reads it), and outside the
 * database (replacing the database leaves it as it was).
 */
static void
test_mark_file(void **state)
{
	struct fixture *f = *state;
	unsigned char a[STORE_MARK_SIZE], b[STORE_MARK_SIZE];
	struct store *other;
	char mark[128], err[256];
	struct stat st, dbst;

	f->s = open_ok(f);
	snprintf(mark, sizeof(mark), "%s-mark", f->path);
	assert_string_equal(store_mark_path(f->s), mark);
	assert_int_equal(store_mark_read(f->s, a, sizeof(a)), 1);
	assert_int_equal(access(mark, F_OK), -1);
	memset(a, 0xA5, 512);
	assert_int_equal(store_mark_write(f->s, a, 512, 512, 1), 0);
	assert_int_equal(stat(mark, &st), 0);
	assert_int_equal(st.st_size, 1024);
	assert_int_equal(stat(f->path, &dbst), 0);
	assert_int_equal(st.st_mode & 0777, dbst.st_mode & 0777);
	memset(a + 512, 0x5A, 512);
	assert_int_equal(store_mark_write(f->s, a + 512, 512, 0, 0), 0);
	assert_int_equal(store_mark_sync(f->s), 0);
	/* Read by another connection, as the next start would. */
	assert_non_null(other = store_open(f->path, err, sizeof(err)));
	assert_int_equal(store_mark_read(other, b, sizeof(b)), 0);
	assert_memory_equal(b, a + 512, 512);
	assert_memory_equal(b + 512, a, 512);
	store_close(other);
	assert_int_equal(store_mark_write(f->s, a, 8, STORE_MARK_SIZE, 1), -1);
	/* A database put in place of the old one: the mark stays. */
	store_close(f->s);
	f->s = NULL;
	unlink(f->path);
	f->s = open_ok(f);
	assert_int_equal(store_mark_read(f->s, b, sizeof(b)), 0);
	assert_memory_equal(b, a + 512, 512);
}

/* Start-up checks (mark.c): empty, rows moved aside, delivered again. */
static void
test_custody_checks(void **state)
{
	struct fixture *f = *state;
	struct body_arg b = { .n = 0 };
	sqlite3 *db;
	int64_t first, count;
	uint8_t sig[64] = { 0 };

	f->s = open_ok(f);
	assert_int_equal(store_is_empty(f->s), 1);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_staff_put(f->s, "alice", "{}", sig, 64), 0);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_is_empty(f->s), 0);
	assert_int_equal(store_begin(f->s), 0);
	while (b.n < 6)
		append(f->s, &b, "x", 0);
	assert_int_equal(store_event_index_set(f->s, 2, 7, NULL), 0);
	assert_int_equal(store_event_index_set(f->s, 3, 0, "alice"), 0);
	assert_int_equal(store_event_index_set(f->s, 5, 0, "alice"), 0);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_resv_last_event(f->s, 7), 2);
	assert_int_equal(store_staff_last_event(f->s, "alice"), 5);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_staff_unindex(f->s, "alice", 3), 0);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_staff_last_event(f->s, "alice"), 3);

	/* Every event is delivered; those after 4 are sent again. */
	for (first = 1; first <= 6; first++)
		assert_int_equal(store_event_delivered(f->s, first), 0);
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_delivered_reset(f->s, 4), 2);
	assert_int_equal(store_commit(f->s), 0);
	assert_int_equal(store_undelivered(f->s, &first, &count), 0);
	assert_true(first == 5 && count == 2);

	/* Rows from 5 on out of the ledger; the next event is 5 again. */
	assert_int_equal(store_begin(f->s), 0);
	assert_int_equal(store_event_reject(f->s, 5, "not ours"), 0);
	assert_int_equal(append(f->s, &b, "y", 0), 5);
	assert_int_equal(store_commit(f->s), 0);
	db = peek_open(f, SQLITE_OPEN_READONLY);
	assert_int_equal(peek_int(db, "SELECT count(*) FROM events_rejected "
	    "WHERE reason = 'not ours'"), 2);
	assert_int_equal(peek_int(db, "SELECT max(seq) FROM events"), 5);
	peek_close(f);
	/* A restore resumes later: seqs are skipped, never reused. */
	assert_int_equal(store_begin(f->s), 0);
	store_event_seq_skip(f->s, 40);
	store_event_seq_skip(f->s, 20);
	assert_int_equal(append(f->s, &b, "restored", 0), 40);
	assert_int_equal(store_commit(f->s), 0);
}

struct throttle_seen {
	struct store_throttle rows[4];
	int n;
};

static int
throttle_row(const struct store_throttle *t, void *arg)
{
	struct throttle_seen *ts = arg;

	if (ts->n < 4)
		ts->rows[ts->n++] = *t;
	return 0;
}

/* The keypad throttle rows: kept across a reopen, a full one deleted,
 * the emptiest first. */
static void
test_throttle_rows(void **state)
{
	struct fixture *f = *state;
	struct store_throttle rows[2];
	struct throttle_seen seen;

	f->s = open_ok(f);
	memset(rows, 0, sizeof(rows));
	snprintf(rows[0].name, sizeof(rows[0].name), "code");
	rows[0].tokens = 2.5;
	rows[0].at = 1000;
	snprintf(rows[1].name, sizeof(rows[1].name), "pin:00ff");
	rows[1].tokens = 0.25;
	rows[1].at = 2000;
	rows[1].alarmed = 1;
	rows[1].episode = 7;
	rows[1].failures = 9;
	rows[1].spent = 2;
	assert_int_equal(store_throttle_put(f->s, rows, 2), 0);
	reopen(f);
	memset(&seen, 0, sizeof(seen));
	assert_int_equal(store_throttle_load(f->s, throttle_row, &seen), 0);
	assert_int_equal(seen.n, 2);
	assert_string_equal(seen.rows[0].name, "pin:00ff");
	assert_true(seen.rows[0].tokens == 0.25 && seen.rows[0].at == 2000);
	assert_int_equal(seen.rows[0].alarmed, 1);
	assert_int_equal(seen.rows[0].episode, 7);
	assert_int_equal(seen.rows[0].failures, 9);
	assert_int_equal(seen.rows[0].spent, 2);
	assert_string_equal(seen.rows[1].name, "code");
	/* Full again: nothing to keep. */
	rows[0].full = 1;
	assert_int_equal(store_throttle_put(f->s, rows, 1), 0);
	memset(&seen, 0, sizeof(seen));
	assert_int_equal(store_throttle_load(f->s, throttle_row, &seen), 0);
	assert_int_equal(seen.n, 1);
	assert_string_equal(seen.rows[0].name, "pin:00ff");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pragmas, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_fresh_and_reopen,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema_refused,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_a_database, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_boot_counter, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_cell_round_trip, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_cell_define_checked,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_event_seq_gap_free, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_event_rollback_frees_seq,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_event_body_failure, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_events_after, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_throttle_rows, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_mark_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_custody_checks, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_command_log, setup,
		    teardown),
	};

	/* Refusals are logged by the store; keep the output to the tests. */
	log_set_level(LOG_LEVEL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
