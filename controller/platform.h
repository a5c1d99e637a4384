/*
 * The platform link: one MQTT connection (libmosquitto) run by its own
 * thread, which connects, reconnects with backoff and drives the client
 * loop, so that neither DNS, TCP, TLS nor a slow broker ever blocks the
 * keypad or the boards. The main loop publishes (libmosquitto is
 * thread-safe) and learns what happened from reports behind an eventfd.
 *
 * Every connection is a new client with a clean session: nothing queued
 * in libmosquitto or at the broker outlives it (the outbox resends
 * events), and no subscription but the command topic survives. MQTT 5
 * tells the broker the largest packet lockerd takes; only messages on
 * PREFIX/<locker>/cmd are reported, and what lockerd queues is capped.
 */
#ifndef LOCKERD_PLATFORM_H
#define LOCKERD_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* The largest packet lockerd takes (MQTT 5 CONNECT): a command of up to
 * twice CMD_PAYLOAD_MAX still reaches the codec, to be refused with a
 * reason and its request id; anything bigger the broker drops. */
#define PLATFORM_PACKET_MAX (2 * 4096 + 512)

enum platform_rep_type {
	PLATFORM_CONNECTED,     /* session up (birth is the caller's) */
	PLATFORM_DISCONNECTED,  /* lost; in-flight messages are unknown */
	PLATFORM_ACKED,         /* the broker acknowledged mid (QoS 1) */
	PLATFORM_MESSAGE,       /* a command arrived on the command topic */
	PLATFORM_TICK,          /* about once a second, for timers */
};

struct platform_rep {
	enum platform_rep_type type;
	unsigned gen;           /* the connection it belongs to (from 1) */
	int mid;
	int refused;            /* ACKED: the broker did not take it (MQTT 5
	                         * reason code 0x80 or more) */
	char *topic;            /* MESSAGE: malloc'ed, caller frees */
	char *payload;          /* MESSAGE: malloc'ed, NUL-terminated */
	size_t len;
	int64_t at;             /* MESSAGE: util_mono_ms() on arrival */
	char error[96];         /* DISCONNECTED: why */
};

/*
 * What a publish is, for the cap on what waits in libmosquitto: events
 * are bounded by the outbox's window and never refused here; replies and
 * bulk (retained cell states, answers to unsigned commands) share a cap,
 * of which bulk may take only half, so that a flood of the one never
 * starves the other.
 */
enum platform_class { PLATFORM_EVENT, PLATFORM_REPLY, PLATFORM_BULK };
#define PLATFORM_QUEUE_MSGS 1024
#define PLATFORM_QUEUE_BYTES (1024 * 1024)

struct platform_stats {
	long strays;            /* messages on another topic, dropped */
	long capped;            /* publishes refused by the cap */
	long overflowed;        /* commands answered busy by the thread */
	int queued;             /* publishes the broker has not acked */
	size_t queued_bytes;
	int protocol;           /* 5 or 4 (3.1.1), what the link speaks now */
};

struct platform;

/*
 * Starts the link thread. will_payload is the retained last will on
 * the status topic. Returns NULL with the reason in err.
 */
struct platform *platform_start(const struct config_mqtt *cfg,
    const char *locker, const char *will_payload, char *err, size_t errlen);
/* Readable when reports wait. */
int platform_fd(const struct platform *p);
/* Takes up to max reports. */
int platform_drain(struct platform *p, struct platform_rep *out, int max);
/*
 * Publishes (QoS 1) on <prefix>/<locker>/<sub> on connection gen (the one
 * the caller was told of). Returns 0 with the message id; -1 if that
 * connection is gone or the client refused it; -2 if the cap holds it
 * back (try again after the next acks).
 */
int platform_publish(struct platform *p, unsigned gen, const char *sub,
    const char *payload, enum platform_class cls, int retain, int *mid);
void platform_stats(struct platform *p, struct platform_stats *out);
/*
 * Stops the thread. With a final status payload, publishes it (retained)
 * and disconnects cleanly first, so the will is not sent.
 */
void platform_stop(struct platform *p, const char *final_status);

#endif
