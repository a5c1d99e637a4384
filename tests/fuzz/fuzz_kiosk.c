/*
 * libFuzzer target: hostile lines on the keypad socket. Each line is
 * parsed as controller/jsonl.c parses it and answered by kiosk_handle() of
 * a locker started without boards (lockerd_start_offline(): every relay
 * pulse fails at once, as when a board's queue is full). Every reply must
 * follow proto/kiosk.md, and no unlock may be left in flight.
 *
 * Each input starts from the same locker, started afresh (a few ms, but
 * nothing carries over and every input frees what it allocated, so leaks
 * are caught per input): a database in memory, the built-in default
 * configuration (24 cells), fixed device keys, staff "alice" with PIN
 * 123456, and reservations in several states whose codes are known (see
 * seed_reservations()).
 */
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lockerd.h"
#include "log.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Fixed keys, so that the credential among the seeds verifies. */
static const uint8_t sign_seed[crypto_sign_SEEDBYTES] =
    "fuzz_kiosk: fixed signing seed";
static const uint8_t hash_key[32] = "fuzz_kiosk: fixed code key";

static struct lockerd d;        /* large; the bank points into it */
static struct lockerd_step step;
static struct config cfg;
static char dir[] = "/tmp/fuzz_kiosk.XXXXXX";
static char key_path[CONFIG_PATH_MAX];
static char pin_hash[STAFF_HASH_MAX];
static const char *feed;        /* the digits of the next code made */
static int ready;

static uint32_t
feed_uniform(uint32_t upper)
{
	uint32_t v = (uint32_t)(*feed - '0');

	if (feed[1] != '\0')
		feed++;
	return v % upper;
}

static void
cleanup(void)
{
	unlink(key_path);
	rmdir(dir);
}

static void
write_keys(void)
{
	char sk64[sodium_base64_ENCODED_LEN(64,
	    sodium_base64_VARIANT_ORIGINAL)];
	char hk64[sodium_base64_ENCODED_LEN(32,
	    sodium_base64_VARIANT_ORIGINAL)];
	uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
	char text[512];
	int fd, n;

	crypto_sign_seed_keypair(pk, sk, sign_seed);
	sodium_bin2base64(sk64, sizeof(sk64), sk, sizeof(sk),
	    sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(hk64, sizeof(hk64), hash_key, sizeof(hash_key),
	    sodium_base64_VARIANT_ORIGINAL);
	n = snprintf(text, sizeof(text), "sign_sk=%s\nhash_key=%s\n", sk64,
	    hk64);
	snprintf(key_path, sizeof(key_path), "%s/device.key", dir);
	fd = open(key_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1 || write(fd, text, (size_t)n) != n || close(fd) == -1)
		abort();
}

/* Once per process: the folder, the keys, the configuration, the PIN. */
static void
setup(void)
{
	char err[512];

	log_init("fuzz_kiosk", LOG_LEVEL_ERROR, 0);
	if (codes_init() == -1 || mkdtemp(dir) == NULL)
		abort();
	atexit(cleanup);
	write_keys();
	if (config_load_text(&cfg, config_default_text(), "default", err,
	    sizeof(err)) == -1)
		abort();
	util_strlcpy(cfg.state_dir, dir, sizeof(cfg.state_dir));
	util_strlcpy(cfg.database, ":memory:", sizeof(cfg.database));
	util_strlcpy(cfg.key_file, key_path, sizeof(cfg.key_file));
	/* With the least work Argon2id allows: the PIN check reads the cost
	 * from the hash, so alice's log-ins are cheap (unknown ids are not). */
	if (crypto_pwhash_str_alg(pin_hash, "123456", 6,
	    crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN,
	    crypto_pwhash_ALG_ARGON2ID13) != 0)
		abort();
}

/* A drop-off as the control socket's "reserve" makes one, code known. */
static void
reserve(const char *app, char size, int64_t valid_until, const char *phone,
    const char *code)
{
	uint8_t ph[CODES_HASH_LEN];
	int slot;

	if (phone != NULL)
		codes_hash(d.keys, "phone", phone, ph);
	lockerd_step_init(&step);
	step.handed_over = 1;
	feed = code;
	codes_set_uniform(feed_uniform);
	if (resv_reserve(&d.resv, app, size, valid_until, phone ? ph : NULL,
	    lockerd_now(), &step.resv, &slot) != RESV_OK ||
	    lockerd_run(&d, &step) == -1 || step.nissued != 1 ||
	    strcmp(step.issued[0].code, code) != 0)
		abort();
	codes_set_uniform(NULL);
}

/* One that start-up would put back from its row, and its row saved. */
static void
put_back(enum resv_kind kind, enum resv_state state, int cell,
    const char *app, const char *code, int64_t valid_until)
{
	struct resv_action *a;
	struct resv r;

	memset(&r, 0, sizeof(r));
	r.id = d.resv.next_id;
	r.cell = bank_cell_index(&d.bank, cell);
	r.kind = kind;
	r.state = state;
	util_strlcpy(r.app, app, sizeof(r.app));
	if (kind == RESV_PICKUP)
		util_strlcpy(r.staff, "alice", sizeof(r.staff));
	if (code != NULL) {
		codes_hash(d.keys, "code", code, r.code_hash);
		r.has_code = 1;
		r.issued = 1;
	}
	r.valid_until = valid_until;
	r.created_at = lockerd_now();
	if (resv_restore(&d.resv, &r) == -1)
		abort();
	lockerd_step_init(&step);
	a = &step.resv.a[step.resv.n++];
	a->type = RESV_ACT_SAVE;
	a->r = r;
	a->slot = resv_slot_of_id(&d.resv, r.id);
	a->cell = r.cell;
	if (lockerd_run(&d, &step) == -1)
		abort();
}

/*
 * Drop-offs: resv 1 in cell 1 (code 1111111111), resv 2 in cell 7 (code
 * 2222222222, phone 1234), resv 3 in cell 2 (code 4444444444, expired);
 * documents deposited in cells 3 (with its used code 6666666666) and 21.
 * Pickups: ready in cell 8 (code 3333333333), overdue in cell 13 (code
 * 5555555555).
 */
static void
seed_reservations(void)
{
	int64_t now = lockerd_now(), hour = 3600 * 1000;

	reserve("A-1", 'S', now + 72 * hour, NULL, "1111111111");
	reserve("A-2", 'M', now + 72 * hour, "1234", "2222222222");
	reserve("A-3", 'S', now - hour, NULL, "4444444444");
	put_back(RESV_DROPOFF, RESV_DEPOSITED, 3, "A-4", "6666666666",
	    now + 71 * hour);
	put_back(RESV_DROPOFF, RESV_DEPOSITED, 21, "A-5", NULL, now - hour);
	put_back(RESV_PICKUP, RESV_READY, 8, "P-1", "3333333333",
	    now + 168 * hour);
	put_back(RESV_PICKUP, RESV_OVERDUE, 13, "P-2", "5555555555",
	    now - hour);
}

static void
start(void)
{
	struct bank_actions acts;
	struct staff st;
	int i;

	memset(&d, 0, sizeof(d));
	d.cfg = cfg;
	if (lockerd_start_offline(&d) == -1)
		abort();
	/* As after a first read: every door closed, every board answering. */
	for (i = 0; i < d.cfg.ncells; i++)
		d.cells[i].door = BANK_DOOR_CLOSED;
	for (i = 0; i < d.cfg.nboards; i++)
		d.boards[i].ok = d.boards[i].seen = 1;
	memset(&acts, 0, sizeof(acts));
	bank_reconcile(&d.bank, util_mono_ms(), &acts);
	memset(&st, 0, sizeof(st));
	util_strlcpy(st.id, "alice", sizeof(st.id));
	util_strlcpy(st.name, "Alice", sizeof(st.name));
	util_strlcpy(st.role, "staff", sizeof(st.role));
	memcpy(st.pin_hash, pin_hash, sizeof(st.pin_hash));
	if (staff_put(d.store, d.keys, &st) == -1)
		abort();
	seed_reservations();
}

/* jsonl.c's own errors on the keypad socket (jsonl_screen_errors). */
static json_t *
own_error(json_t *err)
{
	if (err == NULL)
		return NULL;
	json_object_set(err, "show", json_object_get(err, "error"));
	json_object_set_new(err, "error", json_string("bad_request"));
	json_object_set_new(err, "wait_s", json_integer(0));
	return err;
}

/* proto/kiosk.md: ok, show; on refusal error and wait_s. */
static void
check_reply(json_t *req, json_t *reply)
{
	json_t *ok = json_object_get(reply, "ok"), *v;
	const char *op;

	if (!json_is_object(reply) || !json_is_boolean(ok) ||
	    !json_is_string(json_object_get(reply, "show")))
		__builtin_trap();
	if (json_is_false(ok)) {
		v = json_object_get(reply, "wait_s");
		if (!json_is_string(json_object_get(reply, "error")) ||
		    !json_is_integer(v) || json_integer_value(v) < 0)
			__builtin_trap();
		return;
	}
	/* Staff open and service act on the cell asked for, no other. */
	op = json_string_value(json_object_get(req, "op"));
	if (op != NULL && (strcmp(op, "open") == 0 ||
	    strcmp(op, "service") == 0) &&
	    !json_equal(json_object_get(req, "cell"),
	    json_object_get(reply, "cell")))
		__builtin_trap();
}

/* Every pulse failed at once: no unlock or opening may be in flight. */
static void
check_locker(void)
{
	const struct resv_table *t = &d.resv;
	int i;

	for (i = 0; i < d.bank.ncells; i++)
		if (d.cells[i].unlocking || (t->cell_slot[i] != -1 &&
		    t->r[t->cell_slot[i]].cell != i))
			__builtin_trap();
	for (i = 0; i < t->n; i++) {
		const struct resv *r = &t->r[i];

		if (r->id == 0)
			continue;
		if (r->cell < 0 || r->cell >= d.bank.ncells ||
		    t->cell_slot[r->cell] != i || resv_is_terminal(r->state) ||
		    r->state == RESV_OPENING || r->state == RESV_LOADING ||
		    r->state == RESV_RETRIEVING)
			__builtin_trap();
	}
}

/* client_line() and client_reply() of controller/jsonl.c. */
static void
line(const char *s, size_t len)
{
	json_error_t jerr;
	json_t *req, *reply;
	char *out;

	if (len == 0)
		return;
	req = json_loadb(s, len, JSON_REJECT_DUPLICATES, &jerr);
	if (req == NULL)
		reply = own_error(jsonl_error("bad JSON at column %d: %s",
		    jerr.column, jerr.text));
	else if (!json_is_object(req))
		reply = own_error(jsonl_error("a request must be a JSON "
		    "object"));
	else
		reply = kiosk_handle(&d, req);
	/* client_reply() papers over NULL with "internal error", which has
	 * no "show" for the screen: every reply is meant to be built. */
	if (reply == NULL)
		__builtin_trap();
	check_reply(req, reply);
	json_decref(req);
	out = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	if (out == NULL || strchr(out, '\n') != NULL)
		__builtin_trap();
	free(out);
	check_locker();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data, *nl;
	size_t len;

	if (!ready) {
		setup();
		ready = 1;
	}
	start();
	/* Split into lines; one longer than the socket takes is skipped. */
	while (size > 0) {
		nl = memchr(s, '\n', size);
		len = nl ? (size_t)(nl - s) : size;
		if (len <= JSONL_LINE_MAX)
			line(s, len);
		if (nl == NULL)
			break;
		size -= len + 1;
		s += len + 1;
	}
	lockerd_stop(&d);
	return 0;
}
