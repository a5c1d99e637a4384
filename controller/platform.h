/*
 * The platform link: one MQTT connection (libmosquitto) run by its own
 * thread, which connects, reconnects with backoff and drives the client
 * loop, so that neither DNS, TCP, TLS nor a slow broker ever blocks the
 * keypad or the boards. The main loop publishes (libmosquitto is
 * thread-safe) and learns what happened from reports behind an eventfd.
 */
#ifndef LOCKERD_PLATFORM_H
#define LOCKERD_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

enum platform_rep_type {
	PLATFORM_CONNECTED,     /* session up (birth is the caller's) */
	PLATFORM_DISCONNECTED,  /* lost; in-flight messages are unknown */
	PLATFORM_ACKED,         /* the broker acknowledged mid (QoS 1) */
	PLATFORM_MESSAGE,       /* a command arrived */
};

struct platform_rep {
	enum platform_rep_type type;
	int mid;
	char *topic;            /* MESSAGE: malloc'ed, caller frees */
	char *payload;          /* MESSAGE: malloc'ed, NUL-terminated */
	size_t len;
	int64_t at;             /* MESSAGE: util_mono_ms() on arrival */
	char error[96];         /* DISCONNECTED: why */
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
 * Publishes on <prefix>/<locker>/<sub>. Returns 0 with the message id,
 * or -1 if not connected or the client refused it.
 */
int platform_publish(struct platform *p, const char *sub, const char *payload,
    int qos, int retain, int *mid);
/*
 * Stops the thread. With a final status payload, publishes it (retained)
 * and disconnects cleanly first, so the will is not sent.
 */
void platform_stop(struct platform *p, const char *final_status);

#endif
