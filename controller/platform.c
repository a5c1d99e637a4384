/*
 * The platform link (platform.h): libmosquitto in its own thread, with
 * our own connect / reconnect and doubling backoff around mosquitto_loop,
 * a new client with a clean session for every connection, and the cap on
 * what waits in it.
 */
#include "platform.h"

#include <errno.h>
#include <jansson.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
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
/* What is kept of a message for the codec: more than it takes, so that it
 * says "too long"; on MQTT 5 the broker sends nothing longer anyway. */
#define MSG_KEEP (PLATFORM_PACKET_MAX + 1)
/* Publishes the broker has not acknowledged, by mid (direct-mapped: far
 * more slots than the cap and the outbox's window can fill). */
#define QSLOTS 4096
#define TICK_MS 1000

struct qslot {
	int mid;                        /* 0: free */
	int cls;
	size_t bytes;
};

struct platform {
	struct config_mqtt cfg;
	char prefix[160];               /* <prefix>/<locker>/ */
	char cmd_topic[200];            /* the one topic that is a command */
	char *will;
	pthread_t thread;
	int efd;
	atomic_int stop;
	int protocol;                   /* for the next connect */
	int fallback;                   /* the broker refused MQTT 5 */
	int was_up;                     /* this client got a session */
	int64_t last_tick;

	pthread_mutex_t lock;           /* guards the report ring */
	struct platform_rep reps[REPS_MAX];
	int head, count, dropped;
	int msgs;                       /* PLATFORM_MESSAGE in the ring */
	size_t msg_bytes;               /* ... and their payloads */
	int tick_pending;

	/* Guards the client while the main thread publishes on it, and what
	 * goes with it: connected, gen, the queue's slots and counts. */
	pthread_mutex_t pub;
	struct mosquitto *mosq;         /* this connection's client or NULL */
	int connected;
	unsigned gen;
	struct qslot q[QSLOTS];
	int qn[3];
	size_t qbytes[3];
	long strays, capped, overflowed;
	char *final_status;
	int final_mid, final_acked;
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
		if (r->type == PLATFORM_TICK)
			p->tick_pending = 1;
	}
	pthread_mutex_unlock(&p->lock);
	if (write(p->efd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_error("mqtt: eventfd: %s", strerror(errno));
}

/* A timer report about once a second, never two waiting. */
static void
tick(struct platform *p)
{
	struct platform_rep r;
	int64_t now = util_mono_ms();
	int pending;

	if (now - p->last_tick < TICK_MS)
		return;
	p->last_tick = now;
	pthread_mutex_lock(&p->lock);
	pending = p->tick_pending;
	pthread_mutex_unlock(&p->lock);
	if (pending)
		return;
	memset(&r, 0, sizeof(r));
	r.type = PLATFORM_TICK;
	report(p, &r);
}

/* With p->pub held: may a publish of this class and size go now? */
static int
room(const struct platform *p, int cls, size_t bytes)
{
	int n = p->qn[PLATFORM_REPLY] + p->qn[PLATFORM_BULK];
	size_t b = p->qbytes[PLATFORM_REPLY] + p->qbytes[PLATFORM_BULK];

	if (cls == PLATFORM_EVENT)
		return 1;
	if (n + 1 > PLATFORM_QUEUE_MSGS || b + bytes > PLATFORM_QUEUE_BYTES)
		return 0;
	if (cls == PLATFORM_BULK && (p->qn[cls] + 1 > PLATFORM_QUEUE_MSGS / 2 ||
	    p->qbytes[cls] + bytes > PLATFORM_QUEUE_BYTES / 2))
		return 0;
	return 1;
}

static void
slot_drop(struct platform *p, struct qslot *s)
{
	p->qn[s->cls]--;
	p->qbytes[s->cls] -= s->bytes;
	s->mid = 0;
}

/* With p->pub held and the client there. */
static int
publish_locked(struct platform *p, const char *sub, const char *payload,
    int cls, int retain, int *mid)
{
	char topic[256];
	size_t len = strlen(payload);
	struct qslot *s;
	int rc, m = 0;

	if (!room(p, cls, len)) {
		p->capped++;
		return -2;
	}
	snprintf(topic, sizeof(topic), "%s%s", p->prefix, sub);
	rc = mosquitto_publish(p->mosq, &m, topic, (int)len, payload, 1,
	    retain);
	if (rc != MOSQ_ERR_SUCCESS) {
		log_debug("mqtt: publish to %s: %s", topic,
		    mosquitto_strerror(rc));
		return -1;
	}
	s = &p->q[m % QSLOTS];
	if (s->mid != 0)        /* never acked, and its slot is wanted */
		slot_drop(p, s);
	s->mid = m;
	s->cls = cls;
	s->bytes = len;
	p->qn[cls]++;
	p->qbytes[cls] += len;
	if (mid != NULL)
		*mid = m;
	return 0;
}

static void
on_connect(struct mosquitto *m, void *arg, int rc)
{
	struct platform *p = arg;
	struct platform_rep r;

	memset(&r, 0, sizeof(r));
	if (rc != 0) {
		if (p->protocol == MQTT_PROTOCOL_V5 &&
		    p->cfg.protocol == CONFIG_MQTT_AUTO &&
		    (rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION ||
		    rc == CONNACK_REFUSED_PROTOCOL_VERSION)) {
			log_warn("mqtt: the broker does not speak MQTT 5; "
			    "using 3.1.1, where only the broker's own message "
			    "size limit keeps big messages away from lockerd");
			pthread_mutex_lock(&p->pub);
			p->protocol = MQTT_PROTOCOL_V311;
			pthread_mutex_unlock(&p->pub);
			p->fallback = 1;
			return;
		}
		log_warn("mqtt: broker refused the connection: %s",
		    p->protocol == MQTT_PROTOCOL_V5 ?
		    mosquitto_reason_string(rc) : mosquitto_connack_string(rc));
		return;
	}
	/* The only subscription, in a session that starts clean. */
	if (mosquitto_subscribe(m, NULL, p->cmd_topic, 1) != MOSQ_ERR_SUCCESS)
		log_warn("mqtt: cannot subscribe to %s", p->cmd_topic);
	p->was_up = 1;
	pthread_mutex_lock(&p->pub);
	p->connected = 1;
	r.gen = ++p->gen;
	pthread_mutex_unlock(&p->pub);
	r.type = PLATFORM_CONNECTED;
	report(p, &r);
}

static void
on_disconnect(struct mosquitto *m, void *arg, int rc)
{
	struct platform *p = arg;

	(void)m;
	(void)rc;
	/* Reported when the client is let go (drop_client). */
	pthread_mutex_lock(&p->pub);
	p->connected = 0;
	pthread_mutex_unlock(&p->pub);
}

static void
on_publish(struct mosquitto *m, void *arg, int mid, int reason,
    const mosquitto_property *props)
{
	struct platform *p = arg;
	struct platform_rep r;
	struct qslot *s;

	(void)m;
	(void)props;
	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&p->pub);
	s = &p->q[mid % QSLOTS];
	if (s->mid == mid)
		slot_drop(p, s);
	if (mid == p->final_mid)
		p->final_acked = 1;
	r.gen = p->gen;
	pthread_mutex_unlock(&p->pub);
	r.type = PLATFORM_ACKED;
	r.mid = mid;
	/* MQTT 5 says when the broker did not take it (not authorised,
	 * quota exceeded, ...); 3.1.1 cannot. */
	r.refused = reason >= 0x80;
	if (r.refused)
		log_warn("mqtt: the broker refused message %d: %s", mid,
		    mosquitto_reason_string(reason));
	report(p, &r);
}

/*
 * The main loop is this far behind: answer "busy" from here, without
 * running the command, so that the excess of a flood is refused with a
 * reason and not dropped in silence (as bulk: the cap holds these too).
 */
static void
overflow(struct platform *p, const struct mosquitto_message *msg)
{
	char rid[CMD_ID_MAX + 1], *text;
	json_t *o;
	long n;
	int rc;

	o = json_pack("{s:b, s:s, s:s, s:i, s:o}", "ok", 0, "error", "busy",
	    "reason", "the locker's command queue is full; this command was "
	    "not run, send it again after retry_after_ms", "retry_after_ms",
	    1000, "request_id", msg->payloadlen > 0 &&
	    cmd_scan_request_id(msg->payload, (size_t)msg->payloadlen, rid) ==
	    0 ? json_string(rid) : json_null());
	text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	pthread_mutex_lock(&p->pub);
	rc = text != NULL && p->mosq != NULL ? publish_locked(p, "reply", text,
	    PLATFORM_BULK, 0, NULL) : -1;
	n = ++p->overflowed;
	pthread_mutex_unlock(&p->pub);
	if (rc == -1)
		log_warn("mqtt: a busy reply could not be sent");
	free(text);
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
	long n;
	int full;

	(void)m;
	if (msg->topic == NULL || strcmp(msg->topic, p->cmd_topic) != 0) {
		/* Not ours to run: a subscription we did not make, our own
		 * replies and events fed back. Dropped, counted. */
		pthread_mutex_lock(&p->pub);
		n = ++p->strays;
		pthread_mutex_unlock(&p->pub);
		if ((n & (n - 1)) == 0)
			log_warn("mqtt: %ld messages on topics other than %s "
			    "dropped (the last on %.80s)", n, p->cmd_topic,
			    msg->topic ? msg->topic : "?");
		return;
	}
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

/* A new client for one connection: a clean session, our options. */
static int
new_client(struct platform *p, char *err, size_t errlen)
{
	struct mosquitto *m;
	char topic[200];
	int rc;

	if ((m = mosquitto_new(p->cfg.client_id, true, p)) == NULL) {
		snprintf(err, errlen, "mqtt: cannot create the client: %s",
		    strerror(errno));
		return -1;
	}
	mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, p->protocol);
	/* Our thread runs the loop; the main thread publishes. */
	mosquitto_threaded_set(m, true);
	/* Replies and events are small: without this each waits ~40 ms for
	 * the broker's delayed ACK (Nagle). */
	mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
	snprintf(topic, sizeof(topic), "%sstatus", p->prefix);
	rc = mosquitto_will_set(m, topic, (int)strlen(p->will), p->will, 1,
	    true);
	if (rc == MOSQ_ERR_SUCCESS && p->cfg.username[0] != '\0')
		rc = mosquitto_username_pw_set(m, p->cfg.username,
		    p->cfg.password[0] ? p->cfg.password : NULL);
	if (rc == MOSQ_ERR_SUCCESS && p->cfg.cafile[0] != '\0') {
		rc = mosquitto_tls_set(m, p->cfg.cafile, NULL,
		    p->cfg.certfile[0] ? p->cfg.certfile : NULL,
		    p->cfg.keyfile[0] ? p->cfg.keyfile : NULL, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_tls_opts_set(m, 1, "tlsv1.2", NULL);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		snprintf(err, errlen, "mqtt: %s", mosquitto_strerror(rc));
		mosquitto_destroy(m);
		return -1;
	}
	mosquitto_connect_callback_set(m, on_connect);
	mosquitto_disconnect_callback_set(m, on_disconnect);
	mosquitto_publish_v5_callback_set(m, on_publish);
	mosquitto_message_callback_set(m, on_message);
	mosquitto_max_inflight_messages_set(m, (unsigned)p->cfg.inflight + 8);
	pthread_mutex_lock(&p->pub);
	p->mosq = m;
	pthread_mutex_unlock(&p->pub);
	return 0;
}

/* Lets the client go, and all it held; reports a lost connection. */
static void
drop_client(struct platform *p, const char *why)
{
	struct platform_rep r;
	struct mosquitto *m;
	int was;

	memset(&r, 0, sizeof(r));
	pthread_mutex_lock(&p->pub);
	m = p->mosq;
	p->mosq = NULL;
	was = p->connected;
	p->connected = 0;
	memset(p->q, 0, sizeof(p->q));
	memset(p->qn, 0, sizeof(p->qn));
	memset(p->qbytes, 0, sizeof(p->qbytes));
	r.gen = p->gen;
	pthread_mutex_unlock(&p->pub);
	if (m != NULL)
		mosquitto_destroy(m);
	if (was) {
		r.type = PLATFORM_DISCONNECTED;
		snprintf(r.error, sizeof(r.error), "%s", why);
		report(p, &r);
	}
}

static int
connect_once(struct platform *p)
{
	mosquitto_property *props = NULL;
	int rc;

	if (p->protocol != MQTT_PROTOCOL_V5)
		return mosquitto_connect(p->mosq, p->cfg.host, p->cfg.port,
		    p->cfg.keepalive_s);
	/* The broker never sends us a bigger packet (MQTT 5: it drops it,
	 * for this client only), so a huge publish on our command topic
	 * costs lockerd nothing. */
	rc = mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
	    PLATFORM_PACKET_MAX);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_connect_bind_v5(p->mosq, p->cfg.host,
		    p->cfg.port, p->cfg.keepalive_s, NULL, props);
	mosquitto_property_free_all(&props);
	return rc;
}

/* Stopping while connected: the final status, acknowledged, then a clean
 * DISCONNECT (the broker drops the will). */
static void
goodbye(struct platform *p)
{
	int i, rc = -1, mid = 0;

	pthread_mutex_lock(&p->pub);
	if (p->connected && p->final_status != NULL)
		rc = publish_locked(p, "status", p->final_status,
		    PLATFORM_EVENT, 1, &mid);
	if (rc == 0)
		p->final_mid = mid;
	pthread_mutex_unlock(&p->pub);
	if (rc != 0)
		return;
	for (i = 0; i < 20; i++) {
		if (mosquitto_loop(p->mosq, 50, 1) != MOSQ_ERR_SUCCESS)
			return;
		pthread_mutex_lock(&p->pub);
		rc = p->final_acked;
		pthread_mutex_unlock(&p->pub);
		if (rc)
			break;
	}
	mosquitto_disconnect(p->mosq);
	mosquitto_loop(p->mosq, 50, 1);
}

/* Connect, serve, and after a loss wait, doubling up to the maximum. */
static void *
run(void *arg)
{
	struct platform *p = arg;
	int64_t backoff = p->cfg.reconnect_min_ms, wait;
	char err[160];
	int rc;

	while (!atomic_load(&p->stop)) {
		p->was_up = 0;
		rc = MOSQ_ERR_UNKNOWN;
		if (new_client(p, err, sizeof(err)) == -1)
			log_error("%s", err);
		else if ((rc = connect_once(p)) != MOSQ_ERR_SUCCESS) {
			log_debug("mqtt: connecting to %s:%d: %s",
			    p->cfg.host, p->cfg.port, rc == MOSQ_ERR_ERRNO ?
			    strerror(errno) : mosquitto_strerror(rc));
		} else {
			while (!atomic_load(&p->stop) && !p->fallback) {
				rc = mosquitto_loop(p->mosq, 100, 1);
				tick(p);
				if (rc != MOSQ_ERR_SUCCESS)
					break;
			}
			if (atomic_load(&p->stop)) {
				goodbye(p);
				drop_client(p, "stopped");
				break;
			}
		}
		drop_client(p, mosquitto_strerror(rc));
		if (p->fallback) {
			/* Straight back, speaking 3.1.1. */
			p->fallback = 0;
			backoff = p->cfg.reconnect_min_ms;
			continue;
		}
		if (p->was_up)
			backoff = p->cfg.reconnect_min_ms;
		/* Jitter: a fleet that lost its broker does not return in
		 * lock-step. */
		wait = backoff / 2 + (int64_t)(rand() % (int)(backoff / 2 + 1));
		for (; wait > 0 && !atomic_load(&p->stop); wait -= 50) {
			sleep_ms(wait < 50 ? wait : 50);
			tick(p);
		}
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

	mosquitto_lib_init();
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		snprintf(err, errlen, "mqtt: out of memory");
		return NULL;
	}
	p->cfg = *cfg;
	p->efd = -1;
	pthread_mutex_init(&p->lock, NULL);
	pthread_mutex_init(&p->pub, NULL);
	p->protocol = cfg->protocol == CONFIG_MQTT_V311 ? MQTT_PROTOCOL_V311 :
	    MQTT_PROTOCOL_V5;
	snprintf(p->prefix, sizeof(p->prefix), "%s/%s/", cfg->prefix, locker);
	snprintf(p->cmd_topic, sizeof(p->cmd_topic), "%scmd", p->prefix);
	if ((p->will = strdup(will_payload)) == NULL ||
	    (p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1) {
		snprintf(err, errlen, "mqtt: cannot start: %s",
		    strerror(errno));
		goto fail;
	}
	/* The options are checked once here, not only at the first connect. */
	if (new_client(p, err, errlen) == -1)
		goto fail;
	drop_client(p, "");
	if (pthread_create(&p->thread, NULL, run, p) != 0) {
		snprintf(err, errlen, "mqtt: cannot start its thread");
		goto fail;
	}
	return p;
fail:
	if (p->efd != -1)
		close(p->efd);
	free(p->will);
	pthread_mutex_destroy(&p->lock);
	pthread_mutex_destroy(&p->pub);
	free(p);
	mosquitto_lib_cleanup();
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
		if (p->reps[p->head].type == PLATFORM_TICK)
			p->tick_pending = 0;
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
platform_publish(struct platform *p, unsigned gen, const char *sub,
    const char *payload, enum platform_class cls, int retain, int *mid)
{
	int rc = -1;

	pthread_mutex_lock(&p->pub);
	/* Only on the connection the caller knows: one it has not been told
	 * of would see the event again from the outbox. */
	if (p->connected && p->mosq != NULL && gen == p->gen)
		rc = publish_locked(p, sub, payload, cls, retain, mid);
	pthread_mutex_unlock(&p->pub);
	return rc;
}

void
platform_stats(struct platform *p, struct platform_stats *out)
{
	pthread_mutex_lock(&p->pub);
	out->strays = p->strays;
	out->capped = p->capped;
	out->overflowed = p->overflowed;
	out->queued = p->qn[0] + p->qn[1] + p->qn[2];
	out->queued_bytes = p->qbytes[0] + p->qbytes[1] + p->qbytes[2];
	out->protocol = p->protocol;
	pthread_mutex_unlock(&p->pub);
}

void
platform_stop(struct platform *p, const char *final_status)
{
	int i;

	if (p == NULL)
		return;
	pthread_mutex_lock(&p->pub);
	if (final_status != NULL)
		p->final_status = strdup(final_status);
	pthread_mutex_unlock(&p->pub);
	atomic_store(&p->stop, 1);
	pthread_join(p->thread, NULL);
	close(p->efd);
	for (i = 0; i < p->count; i++) {
		free(p->reps[(p->head + i) % REPS_MAX].topic);
		free(p->reps[(p->head + i) % REPS_MAX].payload);
	}
	free(p->final_status);
	free(p->will);
	pthread_mutex_destroy(&p->lock);
	pthread_mutex_destroy(&p->pub);
	free(p);
	mosquitto_lib_cleanup();
}
