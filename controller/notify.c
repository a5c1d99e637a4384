/*
 * sd_notify(3) for lockerd: the only file that includes libsystemd. The
 * protocol is fire-and-forget: a failed send is logged at debug level and
 * changes nothing, so lockerd runs the same under any supervisor.
 */
#include "notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "log.h"

static void
notify_send(const char *state)
{
	int rc;

	if ((rc = sd_notify(0, state)) < 0)
		log_debug("sd_notify: %s", strerror(-rc));
}

static void notify_vstatus(const char *, const char *, va_list)
    __attribute__((format(printf, 2, 0)));

static void
notify_vstatus(const char *prefix, const char *fmt, va_list ap)
{
	char buf[512];
	int n;

	n = snprintf(buf, sizeof(buf), "%sSTATUS=", prefix);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return;
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	/* One line: a newline would start another assignment. */
	buf[strcspn(buf + n, "\n") + (size_t)n] = '\0';
	notify_send(buf);
}

void
notify_ready(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	notify_vstatus("READY=1\n", fmt, ap);
	va_end(ap);
}

void
notify_status(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	notify_vstatus("", fmt, ap);
	va_end(ap);
}

void
notify_watchdog(void)
{
	if (notify_watchdog_ms() > 0)
		notify_send("WATCHDOG=1");
}

void
notify_stopping(void)
{
	notify_send("STOPPING=1\nSTATUS=stopping");
}

int64_t
notify_watchdog_ms(void)
{
	uint64_t usec = 0;

	if (sd_watchdog_enabled(0, &usec) <= 0)
		return 0;
	return usec < 2000 ? 1 : (int64_t)(usec / 1000);
}
