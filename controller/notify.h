/*
 * The service manager's side channel (systemd's sd_notify): readiness,
 * status lines, the watchdog, stopping. Without NOTIFY_SOCKET in the
 * environment every call does nothing.
 */
#ifndef LOCKERD_NOTIFY_H
#define LOCKERD_NOTIFY_H

#include <stdint.h>

/* READY=1 and a STATUS= line. */
void notify_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void notify_watchdog(void);
void notify_stopping(void);
/*
 * The watchdog interval in ms if the manager expects pings from this
 * process (WATCHDOG_USEC set, WATCHDOG_PID unset or ours), else 0.
 */
int64_t notify_watchdog_ms(void);

#endif
