/*
 * The platform link (platform.h): libmosquitto in its own thread, with
 * our own connect / reconnect and doubling backoff around mosquitto_loop.
 */
#include "platform.h"

#include <errno.h>
#include <jansson.h>
#include <mosquitto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "log.h"
#include "util.h"

#define REPS_MAX 4096
/*
 * Commands waiting for the main loop, at most, and their bytes. The rest
 * of the ring is for acks and link changes, which must never be crowded
 * out. A flood costs at most MSGS_BYTES bytes of payload.
 */
#define MSGS_MAX 256
#define MSGS_BYTES (1024 * 1024)
/* The codec refuses longer commands, reading this much to find their
 * request id (cmd.c). */
#define MSG_KEEP (16 * CMD_PAYLOAD_MAX + 1)

struct platform {
	struct mosquitto *mosq;
	struct config_mqtt cfg;
	char prefix[160];               /* <prefix>/<locker>/ */
	pthread_t thread;
	int efd;
	atomic_int stop;
	atomic_int connected;
	pthread_mutex_t lock;           /* guards the report ring */
	struct platform_rep reps[REPS_MAX];
	int head, count, dropped;
	int msgs;                       /* PLATFORM_MESSAGE in the ring */
	size_t msg_bytes;               /* ... and their payloads */
	long overflowed;                /* commands answered busy here */
};

static void
report(struct platform *p, const struct platform_rep *r)
{
	uint64_t one = 1;

	pthread_mutex_lock(&p->lock);
	if (p->count == REPS_MAX) {
		/* Never for acks in practice (bounded by the window); a flood
		 * of commands loses the excess, which is refused by silence
		 * and counted. */
		p->dropped++;
		free(r->topic);
		free(r->payload);
	} else {
		p->reps[(p->head + p->count) % REPS_MAX] = *r;
		p->count++;
		if (r->type == PLATFORM_MESSAGE) {
			p->msgs++;
			p->msg_bytes += r->len;
		}
	}
	pthread_mutex_unlock(&p->lock);
	if (write(p->efd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_error("mqtt: eventfd: %s", strerror(errno));
}

static void
on_connect(struct mosquitto *m, void *arg, int rc)
{
	struct platform *p = arg;
	struct platform_rep r;
	char topic[200];

	(void)m;
	memset(&r, 0, sizeof(r));
	if (rc != 0) {
		log_warn("mqtt: broker refused the connection: %s",
		    mosquitto_connack_string(rc));
		return;
	}
	snprintf(topic, sizeof(topic), "%scmd", p->prefix);
	if (mosquitto_subscribe(p->mosq, NULL, topic, 1) != MOSQ_ERR_SUCCESS)
		log_warn("mqtt: cannot subscribe to %s", topic);
	atomic_store(&p->connected, 1);
	r.type = PLATFORM_CONNECTED;
	report(p, &r);
}

static void
on_disconnect(struct mosquitto *m, void *arg, int rc)
{
	struct platform *p = arg;
	struct platform_rep r;

	(void)m;
	memset(&r, 0, sizeof(r));
	atomic_store(&p->connected, 0);
	r.type = PLATFORM_DISCONNECTED;
	snprintf(r.error, sizeof(r.error), "%s", rc == 0 ? "disconnected" :
	    mosquitto_strerror(rc));
	report(p, &r);
}

static void
on_publish(struct mosquitto *m, void *arg, int mid)
{
	struct platform *p = arg;
	struct platform_rep r;

	(void)m;
	memset(&r, 0, sizeof(r));
	r.type = PLATFORM_ACKED;
	r.mid = mid;
	report(p, &r);
}

/*
 * The main loop is this far behind: answer "busy" from here, without
 * running the command, so that the excess of a flood is refused with a
 * reason and not dropped in silence.
 */
static void
overflow(struct platform *p, const struct mosquitto_message *msg)
{
	json_t *o, *id = NULL;
	char topic[200], *text;
	long n;

	if (msg->payloadlen > 0 && msg->payloadlen < MSG_KEEP &&
	    (o = json_loadb(msg->payload, (size_t)msg->payloadlen, 0,
	    NULL)) != NULL) {
		id = json_object_get(o, "request_id");
		id = json_is_string(id) && json_string_length(id) <= 64 ?
		    json_incref(id) : NULL;
		json_decref(o);
	}
	o = json_pack("{s:b, s:s, s:s, s:i, s:o}", "ok", 0, "error", "busy",
	    "reason", "the locker's command queue is full; this command was "
	    "not run, send it again after retry_after_ms", "retry_after_ms",
	    1000, "request_id", id != NULL ? id : json_null());
	text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	snprintf(topic, sizeof(topic), "%sreply", p->prefix);
	if (text == NULL || mosquitto_publish(p->mosq, NULL, topic,
	    (int)strlen(text), text, 1, 0) != MOSQ_ERR_SUCCESS)
		log_warn("mqtt: a busy reply could not be sent");
	free(text);
	pthread_mutex_lock(&p->lock);
	n = ++p->overflowed;
	pthread_mutex_unlock(&p->lock);
	/* Once per power of two: a flood does not flood the log. */
	if ((n & (n - 1)) == 0)
		log_warn("mqtt: %ld commands answered busy: %d wait already",
		    n, MSGS_MAX);
}

static void
on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg)
{
	struct platform *p = arg;
	struct platform_rep r;
	size_t len = (size_t)(msg->payloadlen > 0 ? msg->payloadlen : 0);
	int full;

	(void)m;
	if (len > MSG_KEEP)
		len = MSG_KEEP;
	pthread_mutex_lock(&p->lock);
	full = p->msgs >= MSGS_MAX || p->msg_bytes + len > MSGS_BYTES;
	pthread_mutex_unlock(&p->lock);
	if (full) {
		overflow(p, msg);
		return;
	}
	memset(&r, 0, sizeof(r));
	r.type = PLATFORM_MESSAGE;
	r.at = util_mono_ms();
	r.len = len;
	r.topic = strdup(msg->topic);
	r.payload = malloc(r.len + 1);
	if (r.topic == NULL || r.payload == NULL) {
		free(r.topic);
		free(r.payload);
		return;
	}
	if (r.len > 0)
		memcpy(r.payload, msg->payload, r.len);
	r.payload[r.len] = '\0';
	report(p, &r);
}

static void
sleep_ms(int64_t ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* Connect, serve, and after a loss wait, doubling up to the maximum. */
static void *
run(void *arg)
{
	struct platform *p = arg;
	int64_t backoff = p->cfg.reconnect_min_ms, wait;
	int rc, was_up;

	while (!atomic_load(&p->stop)) {
		rc = mosquitto_connect(p->mosq, p->cfg.host, p->cfg.port,
		    p->cfg.keepalive_s);
		if (rc != MOSQ_ERR_SUCCESS) {
			log_debug("mqtt: connecting to %s:%d: %s",
			    p->cfg.host, p->cfg.port, rc == MOSQ_ERR_ERRNO ?
			    strerror(errno) : mosquitto_strerror(rc));
		} else {
			was_up = 0;
			while (!atomic_load(&p->stop)) {
				rc = mosquitto_loop(p->mosq, 100, 1);
				if (atomic_load(&p->connected))
					was_up = 1;
				if (rc != MOSQ_ERR_SUCCESS)
					break;
			}
			if (atomic_load(&p->stop))
				break;
			mosquitto_disconnect(p->mosq);
			if (atomic_load(&p->connected)) {
				struct platform_rep r;

				memset(&r, 0, sizeof(r));
				atomic_store(&p->connected, 0);
				r.type = PLATFORM_DISCONNECTED;
				snprintf(r.error, sizeof(r.error), "%s",
				    mosquitto_strerror(rc));
				report(p, &r);
			}
			if (was_up)
				backoff = p->cfg.reconnect_min_ms;
		}
		/* Jitter: a fleet that lost its broker does not return in
		 * lock-step. */
		wait = backoff / 2 + (int64_t)(rand() % (int)(backoff / 2 + 1));
		for (; wait > 0 && !atomic_load(&p->stop); wait -= 50)
			sleep_ms(wait < 50 ? wait : 50);
		backoff = backoff * 2 > p->cfg.reconnect_max_ms ?
		    p->cfg.reconnect_max_ms : backoff * 2;
	}
	return NULL;
}

struct platform *
platform_start(const struct config_mqtt *cfg, const char *locker,
    const char *will_payload, char *err, size_t errlen)
{
	struct platform *p;
	char topic[200];
	int rc;

	mosquitto_lib_init();
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		snprintf(err, errlen, "mqtt: out of memory");
		return NULL;
	}
	p->cfg = *cfg;
	p->efd = -1;
	pthread_mutex_init(&p->lock, NULL);
	snprintf(p->prefix, sizeof(p->prefix), "%s/%s/", cfg->prefix, locker);
	/* A persistent session: commands queued while we were away arrive
	 * (and are checked against their expiry). */
	p->mosq = mosquitto_new(cfg->client_id, false, p);
	if (p->mosq == NULL || (p->efd = eventfd(0, EFD_NONBLOCK |
	    EFD_CLOEXEC)) == -1) {
		snprintf(err, errlen, "mqtt: cannot create the client: %s",
		    strerror(errno));
		goto fail;
	}
	mosquitto_int_option(p->mosq, MOSQ_OPT_PROTOCOL_VERSION,
	    MQTT_PROTOCOL_V311);
	/* Our thread runs the loop; the main thread publishes. */
	mosquitto_threaded_set(p->mosq, true);
	/* Replies and events are small: without this each waits ~40 ms for
	 * the broker's delayed ACK (Nagle). */
	mosquitto_int_option(p->mosq, MOSQ_OPT_TCP_NODELAY, 1);
	snprintf(topic, sizeof(topic), "%sstatus", p->prefix);
	rc = mosquitto_will_set(p->mosq, topic, (int)strlen(will_payload),
	    will_payload, 1, true);
	if (rc == MOSQ_ERR_SUCCESS && cfg->username[0] != '\0')
		rc = mosquitto_username_pw_set(p->mosq, cfg->username,
		    cfg->password[0] ? cfg->password : NULL);
	if (rc == MOSQ_ERR_SUCCESS && cfg->cafile[0] != '\0') {
		rc = mosquitto_tls_set(p->mosq, cfg->cafile, NULL,
		    cfg->certfile[0] ? cfg->certfile : NULL,
		    cfg->keyfile[0] ? cfg->keyfile : NULL, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_opts_set(p->mosq, 1, "tlsv1.2",
			    NULL);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		snprintf(err, errlen, "mqtt: %s", mosquitto_strerror(rc));
		goto fail;
	}
	mosquitto_connect_callback_set(p->mosq, on_connect);
	mosquitto_disconnect_callback_set(p->mosq, on_disconnect);
	mosquitto_publish_callback_set(p->mosq, on_publish);
	mosquitto_message_callback_set(p->mosq, on_message);
	mosquitto_max_inflight_messages_set(p->mosq,
	    (unsigned)cfg->inflight + 8);
	if (pthread_create(&p->thread, NULL, run, p) != 0) {
		snprintf(err, errlen, "mqtt: cannot start its thread");
		goto fail;
	}
	return p;
fail:
	if (p->mosq != NULL)
		mosquitto_destroy(p->mosq);
	if (p->efd != -1)
		close(p->efd);
	pthread_mutex_destroy(&p->lock);
	free(p);
	return NULL;
}

int
platform_fd(const struct platform *p)
{
	return p->efd;
}

int
platform_drain(struct platform *p, struct platform_rep *out, int max)
{
	uint64_t n;
	int i = 0;

	if (read(p->efd, &n, sizeof(n)) == -1 && errno != EAGAIN)
		log_error("mqtt: eventfd: %s", strerror(errno));
	pthread_mutex_lock(&p->lock);
	while (i < max && p->count > 0) {
		if (p->reps[p->head].type == PLATFORM_MESSAGE) {
			p->msgs--;
			p->msg_bytes -= p->reps[p->head].len;
		}
		out[i++] = p->reps[p->head];
		p->head = (p->head + 1) % REPS_MAX;
		p->count--;
	}
	if (p->count > 0) {
		n = 1;
		if (write(p->efd, &n, sizeof(n)) == -1 && errno != EAGAIN)
			log_error("mqtt: eventfd: %s", strerror(errno));
	}
	pthread_mutex_unlock(&p->lock);
	return i;
}

int
platform_publish(struct platform *p, const char *sub, const char *payload,
    int qos, int retain, int *mid)
{
	char topic[256];
	int rc;

	if (!atomic_load(&p->connected))
		return -1;
	snprintf(topic, sizeof(topic), "%s%s", p->prefix, sub);
	rc = mosquitto_publish(p->mosq, mid, topic, (int)strlen(payload),
	    payload, qos, retain);
	if (rc != MOSQ_ERR_SUCCESS) {
		log_debug("mqtt: publish to %s: %s", topic,
		    mosquitto_strerror(rc));
		return -1;
	}
	return 0;
}

void
platform_stop(struct platform *p, const char *final_status)
{
	int i, mid = 0;

	if (p == NULL)
		return;
	if (final_status != NULL && atomic_load(&p->connected) &&
	    platform_publish(p, "status", final_status, 1, 1, &mid) == 0) {
		/* Let the loop send it. */
		for (i = 0; i < 50 && mosquitto_want_write(p->mosq); i++)
			sleep_ms(10);
		sleep_ms(20);
		atomic_store(&p->stop, 1);
		pthread_join(p->thread, NULL);
		/* A clean DISCONNECT: the broker drops the will. */
		mosquitto_disconnect(p->mosq);
		mosquitto_loop(p->mosq, 50, 1);
	} else {
		atomic_store(&p->stop, 1);
		pthread_join(p->thread, NULL);
	}
	mosquitto_destroy(p->mosq);
	close(p->efd);
	for (i = 0; i < p->count; i++) {
		free(p->reps[(p->head + i) % REPS_MAX].topic);
		free(p->reps[(p->head + i) % REPS_MAX].payload);
	}
	pthread_mutex_destroy(&p->lock);
	free(p);
	mosquitto_lib_cleanup();
}
