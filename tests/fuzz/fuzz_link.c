/*
 * libFuzzer target: a message from the broker as lockerd receives it, a
 * topic and a payload, through link_message() (controller/link.c: the
 * topic check, the codec, the rate limits, authentication, the command
 * log and the ledger, the command itself) on a locker started without
 * boards (lockerd_start_offline(), as fuzz_kiosk), with the MQTT client
 * faked at the platform_* interface.
 *
 * Input: TOPIC "\n" PAYLOAD, or a PAYLOAD alone for the command topic.
 * A payload that is a JSON object with "sig": "FUZZ" is signed here with
 * the platform key the locker trusts (its ts set to now), so that signed
 * commands run too; anything else is as the fuzzer made it.
 *
 * Checked: a message on another topic gets no reply and runs nothing; one
 * on the command topic gets exactly one reply, a JSON object with ok and
 * a request id (a string, or null), and on a refusal an error of the
 * contract's list and a reason; nothing but a command signed with the
 * platform's key, on the command topic, records a command_executed, an
 * unlock or any change of custody, staff or service.
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
#include "platform.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t sign_seed[crypto_sign_SEEDBYTES] =
    "fuzz_link: fixed device seed";
static const uint8_t hash_key[32] = "fuzz_link: fixed code key";
static const uint8_t platform_seed[crypto_sign_SEEDBYTES] =
    "fuzz_link: the platform's seed";

static struct lockerd d;        /* large; the bank points into it */
static struct config cfg;
static char dir[] = "/tmp/fuzz_link.XXXXXX";
static char key_path[CONFIG_PATH_MAX];
static uint8_t platform_sk[crypto_sign_SECRETKEYBYTES];
static int ready;

/* ---- The MQTT client, faked: connected, replies kept ------------------ */

struct platform {
	int unused;
};

static struct platform fake;
static int nreplies;
static json_t *last_reply;

struct platform *
platform_start(const struct config_mqtt *c, const char *locker,
    const char *will, char *err, size_t errlen)
{
	(void)c;
	(void)locker;
	(void)will;
	(void)err;
	(void)errlen;
	return &fake;
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
	(void)out;
	(void)max;
	return 0;
}

int
platform_publish(struct platform *p, unsigned gen, const char *sub,
    const char *payload, enum platform_class cls, int retain, int *mid)
{
	(void)p;
	(void)gen;
	(void)cls;
	(void)retain;
	*mid = 1;
	if (strcmp(sub, "reply") == 0) {
		nreplies++;
		json_decref(last_reply);
		if ((last_reply = json_loads(payload, 0, NULL)) == NULL)
			__builtin_trap();
	}
	return 0;
}

void
platform_stats(struct platform *p, struct platform_stats *out)
{
	(void)p;
	memset(out, 0, sizeof(*out));
}

/* ---- The locker ------------------------------------------------------- */

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

static void
setup(void)
{
	uint8_t ppk[crypto_sign_PUBLICKEYBYTES];
	char err[512];

	log_init("fuzz_link", LOG_LEVEL_ERROR, 0);
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
	util_strlcpy(cfg.mqtt.host, "platform.invalid", sizeof(cfg.mqtt.host));
	crypto_sign_seed_keypair(ppk, platform_sk, platform_seed);
	sodium_bin2hex(cfg.mqtt.platform_key, sizeof(cfg.mqtt.platform_key),
	    ppk, sizeof(ppk));
}

static void
start(void)
{
	struct bank_actions acts;
	int i;

	memset(&d, 0, sizeof(d));
	d.cfg = cfg;
	if (lockerd_start_offline(&d) == -1 || link_start(&d) == -1)
		abort();
	for (i = 0; i < d.cfg.ncells; i++)
		d.cells[i].door = BANK_DOOR_CLOSED;
	for (i = 0; i < d.cfg.nboards; i++)
		d.boards[i].ok = d.boards[i].seen = 1;
	memset(&acts, 0, sizeof(acts));
	bank_reconcile(&d.bank, util_mono_ms(), &acts);
}

/* "sig": "FUZZ": signed with the platform's key, its ts now. */
static char *
resign(const char *payload, size_t len, size_t *outlen)
{
	char sig64[sodium_base64_ENCODED_LEN(crypto_sign_BYTES,
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	uint8_t sig[crypto_sign_BYTES];
	json_t *o = json_loadb(payload, len, JSON_REJECT_DUPLICATES, NULL);
	char *canon, *out = NULL;

	if (!json_is_object(o) || !json_is_string(json_object_get(o, "sig")) ||
	    strcmp(json_string_value(json_object_get(o, "sig")), "FUZZ") != 0) {
		json_decref(o);
		return NULL;
	}
	json_object_del(o, "sig");
	json_object_set_new(o, "ts", json_integer(util_wall_ms()));
	canon = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS |
	    JSON_ENSURE_ASCII);
	if (canon != NULL && crypto_sign_detached(sig, NULL,
	    (const uint8_t *)canon, strlen(canon), platform_sk) == 0) {
		sodium_bin2base64(sig64, sizeof(sig64), sig, sizeof(sig),
		    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
		json_object_set_new(o, "sig", json_string(sig64));
		out = json_dumps(o, JSON_COMPACT);
	}
	free(canon);
	json_decref(o);
	if (out != NULL)
		*outlen = strlen(out);
	return out;
}

/* Events an unauthenticated message must never cause. */
static int
ledger_count(int64_t seq, const char *body, void *arg)
{
	static const char *const authorised_only[] = { "unlock",
		"command_executed", "dropoff_reserved", "code_reissued",
		"cancelled", "cell_service", "load_started", "staff_added",
		"staff_revoked" };
	int *n = arg;
	json_t *o = json_loads(body, 0, NULL);
	const char *t = json_string_value(json_object_get(o, "type"));
	size_t i;

	(void)seq;
	for (i = 0; t != NULL && i < sizeof(authorised_only) /
	    sizeof(authorised_only[0]); i++)
		if (strcmp(t, authorised_only[i]) == 0)
			(*n)++;
	json_decref(o);
	return 0;
}

static const char *const errors[] = { "bad_command", "wrong_locker",
	"expired", "unauthorised", "stale", "replayed", "request_id_reused",
	"unknown_outcome", "unrecorded", "refused", "busy", "internal" };

static void
check_reply(json_t *r)
{
	json_t *ok = json_object_get(r, "ok"), *rid, *err;
	size_t i;

	rid = json_object_get(r, "request_id");
	if (!json_is_object(r) || !json_is_boolean(ok) ||
	    (!json_is_string(rid) && !json_is_null(rid)))
		__builtin_trap();
	if (json_is_true(ok))
		return;
	err = json_object_get(r, "error");
	if (!json_is_string(err) ||
	    !json_is_string(json_object_get(r, "reason")))
		__builtin_trap();
	for (i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
		if (strcmp(errors[i], json_string_value(err)) == 0)
			return;
	__builtin_trap();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data, *nl;
	char topic[256], *signed_payload, *copy;
	size_t len = size;
	int64_t seq0;
	int acted = 0, ours, signd;

	if (!ready) {
		setup();
		ready = 1;
	}
	snprintf(topic, sizeof(topic), "%s/%s/cmd", cfg.mqtt.prefix,
	    cfg.locker_id);
	ours = 1;
	if ((nl = memchr(s, '\n', size < 200 ? size : 200)) != NULL) {
		snprintf(topic, sizeof(topic), "%.*s", (int)(nl - s), s);
		ours = strcmp(topic, "lockers/demo-locker/cmd") == 0;
		len = size - (size_t)(nl - s) - 1;
		s = nl + 1;
	}
	start();
	seq0 = store_event_last(d.store);
	signed_payload = resign(s, len, &len);
	signd = signed_payload != NULL;
	/* The link thread hands over a NUL-terminated copy. */
	if ((copy = malloc(len + 1)) == NULL)
		abort();
	memcpy(copy, signd ? signed_payload : s, len);
	copy[len] = '\0';
	nreplies = 0;
	link_message(&d, topic, copy, len, util_mono_ms());
	if (nreplies != (ours ? 1 : 0))
		__builtin_trap();
	if (ours)
		check_reply(last_reply);
	if (store_events_after(d.store, seq0, 1000, ledger_count, &acted) ==
	    -1)
		abort();
	if (acted > 0 && (!signd || !ours))
		__builtin_trap();
	json_decref(last_reply);
	last_reply = NULL;
	free(copy);
	free(signed_payload);
	link_stop(&d);
	lockerd_stop(&d);
	return 0;
}
