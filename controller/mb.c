/*
 * Modbus workers. Each RTU line, and each board behind TCP, has a thread
 * that owns one libmodbus context: it switches every relay off, polls every
 * board's inputs in one request per cycle, carries out unlocks, and
 * reconnects with backoff. libmodbus 3.1.6 care: modbus_flush() before each
 * request (a late reply poisons the next one), the 3.5-character silence
 * between RTU frames kept here, RS485 mode set after connect, and our own
 * reconnect instead of MODBUS_ERROR_RECOVERY_LINK, which can loop.
 */
#include "mb.h"

#include <errno.h>
#include <modbus.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Consecutive failed requests before a board counts as faulty. */
#define MB_FAIL_THRESHOLD 3
#define MB_REPORT_RING 4096
#define MB_CMD_RING 256
#define MB_OFFS_MAX 128

struct mb_cmd {
	int board, channel, cell;
	int64_t queued_us;      /* monotonic: when the main loop asked */
};

struct coil_off {
	int wb;          /* index into worker boards */
	int coil;
	int64_t due;
};

struct wboard {
	const struct config_board *cfg;
	int idx;
	int ok;
	int fails;
	int relays_off;
	int64_t next_poll;
	int backoff_ms;
	int have_last;
	uint8_t last[BOARD_INPUTS_MAX];
};

struct worker {
	struct mb *m;
	pthread_t thread;
	int running;
	const struct config_bus *bus;
	char name[80];
	struct wboard boards[CONFIG_BOARDS_MAX];
	int nboards;
	modbus_t *ctx;
	int64_t reconnect_at;
	int reconnect_backoff;
	int wake_fd;
	int64_t gap_us;
	int64_t last_io_us;
	pthread_mutex_t lock;
	struct mb_cmd cmds[MB_CMD_RING];
	unsigned cmd_head, cmd_tail;
	struct coil_off offs[MB_OFFS_MAX];
	int noffs;
};

struct mb {
	const struct config *cfg;
	struct worker *workers;
	int nworkers;
	int board_worker[CONFIG_BOARDS_MAX];
	int event_fd;
	pthread_mutex_t lock;
	struct mb_report *ring;
	unsigned head, tail;
	atomic_int stop;
	atomic_int poll_ms, backoff_min, backoff_max;
};

/* modbus_strerror() is not thread-safe; this is. */
static void
mb_strerror(int errnum, char *buf, size_t len)
{
	static const char *const own[] = {
		"illegal function", "illegal data address", "illegal data value",
		"slave device failure", "acknowledge", "slave device busy",
		"negative acknowledge", "memory parity error", "not defined",
		"gateway path unavailable", "target device failed to respond",
		"invalid CRC", "invalid data", "invalid exception code",
		"too many data", "response not from requested slave",
	};
	int k = errnum - MODBUS_ENOBASE - 1;

	if (k >= 0 && k < (int)(sizeof(own) / sizeof(own[0])))
		snprintf(buf, len, "%s", own[k]);
	else if (errnum == ETIMEDOUT)
		snprintf(buf, len, "no reply (timeout)");
	else
		snprintf(buf, len, "%s", strerror_r(errnum, (char[128]){ 0 },
		    128));
}

static void
report_push(struct mb *m, const struct mb_report *r)
{
	uint64_t one = 1;

	for (;;) {
		pthread_mutex_lock(&m->lock);
		if (m->head - m->tail < MB_REPORT_RING) {
			m->ring[m->head++ % MB_REPORT_RING] = *r;
			pthread_mutex_unlock(&m->lock);
			break;
		}
		pthread_mutex_unlock(&m->lock);
		/* The main loop drains in microseconds; losing a report
		 * (an unlock result) would be worse than waiting. */
		if (atomic_load(&m->stop))
			return;
		usleep(1000);
	}
	if (write(m->event_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_error("modbus: waking the main loop: %s", strerror(errno));
}

static void
report_status(struct worker *w, struct wboard *b, const char *error)
{
	struct mb_report r;

	memset(&r, 0, sizeof(r));
	r.type = MB_REP_STATUS;
	r.board = b->idx;
	r.ok = b->ok;
	if (error != NULL)
		util_strlcpy(r.error, error, sizeof(r.error));
	r.at_ms = util_mono_ms();
	report_push(w->m, &r);
}

static void
report_unlock(struct worker *w, int board, int cell, int ok,
    const char *error)
{
	struct mb_report r;

	memset(&r, 0, sizeof(r));
	r.type = MB_REP_UNLOCK;
	r.board = board;
	r.cell = cell;
	r.ok = ok;
	if (error != NULL)
		util_strlcpy(r.error, error, sizeof(r.error));
	r.at_ms = util_mono_ms();
	report_push(w->m, &r);
}

static void
worker_disconnect(struct worker *w)
{
	if (w->ctx == NULL)
		return;
	modbus_close(w->ctx);
	modbus_free(w->ctx);
	w->ctx = NULL;
}

static void
board_fail(struct worker *w, struct wboard *b, int errnum, int64_t now)
{
	struct mb *m = w->m;
	char msg[96];

	mb_strerror(errnum, msg, sizeof(msg));
	b->fails++;
	if (b->ok && b->fails >= MB_FAIL_THRESHOLD) {
		b->ok = 0;
		b->backoff_ms = atomic_load(&m->backoff_min);
		log_warn("%s board %s (unit %d): faulty after %d failed "
		    "requests: %s", w->name, b->cfg->name, b->cfg->unit,
		    b->fails, msg);
		report_status(w, b, msg);
	} else if (!b->ok) {
		b->backoff_ms *= 2;
		if (b->backoff_ms > atomic_load(&m->backoff_max))
			b->backoff_ms = atomic_load(&m->backoff_max);
		log_debug("%s board %s: still faulty: %s", w->name,
		    b->cfg->name, msg);
	}
	b->next_poll = now + (b->ok ? atomic_load(&m->poll_ms) : b->backoff_ms);
	/* A TCP link gets a fresh connection, so that no stale transaction
	 * id is left; an RTU line is shared and stays open unless it broke. */
	if (w->bus->type == CONFIG_BUS_TCP ? !b->ok :
	    (errnum == EIO || errnum == EBADF || errnum == ENXIO)) {
		worker_disconnect(w);
		w->reconnect_at = b->next_poll;
	}
}

static void
board_ok(struct worker *w, struct wboard *b)
{
	b->fails = 0;
	if (!b->ok) {
		b->ok = 1;
		b->have_last = 0;
		log_info("%s board %s (unit %d): answering again", w->name,
		    b->cfg->name, b->cfg->unit);
		report_status(w, b, NULL);
	}
}

/* A connected context for the worker's bus in w->ctx; -1 and logged. */
static int
bus_connect(struct worker *w)
{
	const struct config_bus *bus = w->bus;
	char port[16], msg[96];
	int timeout_ms = bus->timeout_ms;

	if (bus->type == CONFIG_BUS_TCP) {
		snprintf(port, sizeof(port), "%d", bus->port);
		w->ctx = modbus_new_tcp_pi(bus->host, port);
	} else
		w->ctx = modbus_new_rtu(bus->device, bus->baud, bus->parity,
		    bus->data_bits, bus->stop_bits);
	if (w->ctx == NULL) {
		mb_strerror(errno, msg, sizeof(msg));
		log_error("%s: cannot create a Modbus context: %s", w->name,
		    msg);
		return -1;
	}
	modbus_set_error_recovery(w->ctx, MODBUS_ERROR_RECOVERY_NONE);
	modbus_set_response_timeout(w->ctx, (uint32_t)(timeout_ms / 1000),
	    (uint32_t)(timeout_ms % 1000) * 1000);
	if (modbus_connect(w->ctx) == -1) {
		mb_strerror(errno, msg, sizeof(msg));
		log_warn("%s: cannot connect: %s", w->name, msg);
		return -1;
	}
	if (bus->type == CONFIG_BUS_RTU && bus->rs485 != CONFIG_RS485_OFF &&
	    modbus_rtu_set_serial_mode(w->ctx, MODBUS_RTU_RS485) == -1) {
		mb_strerror(errno, msg, sizeof(msg));
		if (bus->rs485 == CONFIG_RS485_ON) {
			log_error("%s: the driver refused RS485 mode: %s "
			    "(set rs485 = auto for adapters that switch "
			    "direction themselves)", w->name, msg);
			return -1;
		}
		log_info("%s: no RS485 mode from the driver (%s); assuming "
		    "the adapter switches direction itself", w->name, msg);
	}
	log_info("%s: connected", w->name);
	return 0;
}

static int
worker_connect(struct worker *w, int64_t now)
{
	int i;

	if (bus_connect(w) == 0) {
		w->reconnect_backoff = 0;
		return 0;
	}
	worker_disconnect(w);
	w->reconnect_backoff = w->reconnect_backoff == 0 ?
	    atomic_load(&w->m->backoff_min) : w->reconnect_backoff * 2;
	if (w->reconnect_backoff > atomic_load(&w->m->backoff_max))
		w->reconnect_backoff = atomic_load(&w->m->backoff_max);
	w->reconnect_at = now + w->reconnect_backoff;
	/* Unreachable means every board on it is faulty at once. */
	for (i = 0; i < w->nboards; i++) {
		struct wboard *b = &w->boards[i];
		if (b->ok) {
			b->fails = MB_FAIL_THRESHOLD - 1;
			board_fail(w, b, errno ? errno : EIO, now);
		}
	}
	return -1;
}

/* Flush stale bytes and keep the RTU inter-frame silence. */
static void
request_prepare(struct worker *w, const struct wboard *b)
{
	int64_t wait;

	modbus_flush(w->ctx);
	if (w->bus->type == CONFIG_BUS_RTU) {
		wait = w->last_io_us + w->gap_us - util_mono_us();
		if (wait > 0)
			usleep((useconds_t)wait);
	}
	modbus_set_slave(w->ctx, b->cfg->unit);
}

static void
request_done(struct worker *w)
{
	w->last_io_us = util_mono_us();
}

static int
relays_off(struct worker *w, struct wboard *b)
{
	const struct board_profile *p = &b->cfg->profile;
	uint8_t zeros[BOARD_CHANNELS_MAX] = { 0 };
	int rc;

	request_prepare(w, b);
	rc = modbus_write_bits(w->ctx, p->coil_base, p->channels, zeros);
	request_done(w);
	return rc == -1 ? -1 : 0;
}

static int
read_inputs(struct worker *w, struct wboard *b, int64_t now)
{
	const struct board_profile *p = &b->cfg->profile;
	uint8_t bits[BOARD_INPUTS_MAX];
	struct mb_report r;
	int rc;

	request_prepare(w, b);
	rc = modbus_read_input_bits(w->ctx, p->input_base, p->input_count,
	    bits);
	request_done(w);
	if (rc != p->input_count) {
		board_fail(w, b, rc == -1 ? errno : EMBBADDATA, now);
		return -1;
	}
	board_ok(w, b);
	if (b->have_last && memcmp(bits, b->last, (size_t)rc) == 0)
		return 0;
	memcpy(b->last, bits, (size_t)rc);
	b->have_last = 1;
	memset(&r, 0, sizeof(r));
	r.type = MB_REP_INPUTS;
	r.board = b->idx;
	r.ok = 1;
	r.nchannels = p->channels;
	r.has_items = p->item_base >= 0;
	board_decode_inputs(p, bits, r.door_open, r.item);
	r.at_ms = util_mono_ms();
	report_push(w->m, &r);
	return 0;
}

/* The Waveshare "flash on": FC05 with a value that modbus_write_bit()
 * cannot send; the board answers with an echo. */
static int
write_flash(struct worker *w, struct wboard *b, int channel, int64_t *sent)
{
	const struct board_profile *p = &b->cfg->profile;
	int addr = board_flash_addr(p, channel), val = board_flash_value(p);
	uint8_t req[6], rsp[MODBUS_TCP_MAX_ADU_LENGTH];
	int hl, rc;

	req[0] = (uint8_t)b->cfg->unit;
	req[1] = 0x05;
	req[2] = (uint8_t)(addr >> 8);
	req[3] = (uint8_t)addr;
	req[4] = (uint8_t)(val >> 8);
	req[5] = (uint8_t)val;
	request_prepare(w, b);
	*sent = util_mono_us();
	if (modbus_send_raw_request(w->ctx, req, sizeof(req)) == -1) {
		request_done(w);
		return -1;
	}
	rc = modbus_receive_confirmation(w->ctx, rsp);
	request_done(w);
	if (rc == -1)
		return -1;
	hl = modbus_get_header_length(w->ctx);
	if (rc < hl + 5 || memcmp(rsp + hl, req + 1, 5) != 0) {
		errno = EMBBADDATA;
		return -1;
	}
	return 0;
}

/*
 * The coil goes off at due. A coil already waiting (a second unlock of the
 * same cell within one pulse) keeps one entry, moved to the later time:
 * the first pulse's off must not cut the second pulse short.
 */
static void
schedule_off(struct worker *w, int wb, int coil, int64_t due)
{
	int i;

	for (i = 0; i < w->noffs; i++)
		if (w->offs[i].wb == wb && w->offs[i].coil == coil) {
			w->offs[i].due = due;
			return;
		}
	if (w->noffs < MB_OFFS_MAX) {
		w->offs[w->noffs].wb = wb;
		w->offs[w->noffs].coil = coil;
		w->offs[w->noffs].due = due;
		w->noffs++;
	}
}

/*
 * Did a failed write leave the board's action unknown? A Modbus exception
 * reply is a refusal, and a connection that was refused or gone sent
 * nothing; a timeout or a spoiled reply means the request went out and
 * the board may have acted on it.
 */
static int
outcome_unknown(int e)
{
	if (e > MODBUS_ENOBASE && e < MODBUS_ENOBASE + MODBUS_EXCEPTION_MAX)
		return 0;
	switch (e) {
	case ECONNREFUSED: case ECONNRESET: case EPIPE: case ENOTCONN:
	case EBADF: case EHOSTUNREACH: case ENETUNREACH:
		return 0;
	}
	return 1;
}

static void
do_unlock(struct worker *w, const struct mb_cmd *cmd, int64_t now)
{
	struct wboard *b = NULL;
	const struct board_profile *p;
	char msg[96];
	int i, rc, e, unknown;
	int64_t picked = util_mono_us(), sent, replied;

	for (i = 0; i < w->nboards; i++)
		if (w->boards[i].idx == cmd->board)
			b = &w->boards[i];
	if (b == NULL) {
		report_unlock(w, cmd->board, cmd->cell, 0, "no such board");
		return;
	}
	if (w->ctx == NULL || !b->ok) {
		report_unlock(w, cmd->board, cmd->cell, 0,
		    "the lock board is not answering");
		return;
	}
	p = &b->cfg->profile;
	if (p->unlock == BOARD_UNLOCK_FLASH) {
		rc = write_flash(w, b, cmd->channel, &sent);
		e = errno;
	} else {
		request_prepare(w, b);
		sent = util_mono_us();
		rc = modbus_write_bit(w->ctx, board_coil_addr(p, cmd->channel),
		    1);
		e = errno;
		request_done(w);
	}
	replied = util_mono_us();
	/* The phases of the unlock, for make bench: cheap enough to take
	 * always, written only at debug level. */
	log_debug("%s board %s: unlock channel %d timing (monotonic us): "
	    "queued %lld picked %lld sent %lld replied %lld rc %d", w->name,
	    b->cfg->name, cmd->channel, (long long)cmd->queued_us,
	    (long long)picked, (long long)sent, (long long)replied, rc);
	/*
	 * Without a good reply the request may still have gone out and the
	 * lock be open: the coil goes off after the pulse all the same, and
	 * the door sensor decides, within unlock_confirm_ms, as for any
	 * unlock (a board that goes faulty meanwhile fails it then).
	 */
	unknown = rc == -1 && outcome_unknown(e);
	if (p->unlock != BOARD_UNLOCK_FLASH && (rc != -1 || unknown))
		schedule_off(w, (int)(b - w->boards),
		    board_coil_addr(p, cmd->channel), now + p->pulse_ms);
	if (rc == -1) {
		mb_strerror(e, msg, sizeof(msg));
		board_fail(w, b, e, now);
		log_warn("%s board %s: unlock of channel %d %s: %s", w->name,
		    b->cfg->name, cmd->channel, unknown ? "sent, no good "
		    "reply; waiting for the door" : "failed", msg);
		report_unlock(w, cmd->board, cmd->cell, unknown,
		    unknown ? NULL : msg);
		return;
	}
	board_ok(w, b);
	report_unlock(w, cmd->board, cmd->cell, 1, NULL);
}

/* Pulse ends: a coil that will not switch off is retried every cycle. */
static void
coils_off(struct worker *w, int64_t now, int all)
{
	int i = 0;

	while (i < w->noffs) {
		struct coil_off *o = &w->offs[i];
		struct wboard *b = &w->boards[o->wb];
		int rc;

		if ((!all && o->due > now) || w->ctx == NULL) {
			i++;
			continue;
		}
		request_prepare(w, b);
		rc = modbus_write_bit(w->ctx, o->coil, 0);
		request_done(w);
		if (rc == -1) {
			board_fail(w, b, errno, now);
			o->due = now + atomic_load(&w->m->poll_ms);
			if (all)
				log_error("%s board %s: coil %d may be left "
				    "on", w->name, b->cfg->name, o->coil);
			i++;
			continue;
		}
		w->offs[i] = w->offs[--w->noffs];
	}
}

static int
cmd_pop(struct worker *w, struct mb_cmd *out)
{
	int got = 0;

	pthread_mutex_lock(&w->lock);
	if (w->cmd_tail != w->cmd_head) {
		*out = w->cmds[w->cmd_tail++ % MB_CMD_RING];
		got = 1;
	}
	pthread_mutex_unlock(&w->lock);
	return got;
}

static void
run_commands(struct worker *w)
{
	struct mb_cmd cmd;

	while (cmd_pop(w, &cmd))
		do_unlock(w, &cmd, util_mono_ms());
}

static void
poll_boards(struct worker *w, int64_t now)
{
	int i;

	for (i = 0; i < w->nboards && w->ctx != NULL; i++) {
		struct wboard *b = &w->boards[i];

		if (now < b->next_poll)
			continue;
		if (!b->relays_off) {
			if (relays_off(w, b) == -1) {
				board_fail(w, b, errno, now);
				continue;
			}
			b->relays_off = 1;
		}
		if (read_inputs(w, b, now) == 0) {
			b->next_poll += atomic_load(&w->m->poll_ms);
			if (b->next_poll <= now)
				b->next_poll = now +
				    atomic_load(&w->m->poll_ms);
		}
		/* Unlocks go before the next board's poll. */
		run_commands(w);
		now = util_mono_ms();
	}
}

static int64_t
next_wakeup(struct worker *w)
{
	int64_t next = INT64_MAX;
	int i;

	if (w->ctx == NULL)
		return w->reconnect_at;
	for (i = 0; i < w->nboards; i++)
		if (w->boards[i].next_poll < next)
			next = w->boards[i].next_poll;
	for (i = 0; i < w->noffs; i++)
		if (w->offs[i].due < next)
			next = w->offs[i].due;
	return next;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct mb *m = w->m;
	struct pollfd pfd;
	uint64_t v;
	int64_t now, next;
	int timeout;

	while (!atomic_load(&m->stop)) {
		now = util_mono_ms();
		if (w->ctx == NULL && now >= w->reconnect_at)
			worker_connect(w, now);
		run_commands(w);
		now = util_mono_ms();
		coils_off(w, now, 0);
		poll_boards(w, now);
		next = next_wakeup(w);
		now = util_mono_ms();
		timeout = next == INT64_MAX ? 1000 :
		    next <= now ? 0 : next - now > 1000 ? 1000 :
		    (int)(next - now);
		pfd.fd = w->wake_fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, timeout) > 0 &&
		    read(w->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			log_error("%s: reading wake-up: %s", w->name,
			    strerror(errno));
	}
	/* No relay stays energised after we leave. */
	coils_off(w, util_mono_ms(), 1);
	worker_disconnect(w);
	return NULL;
}

static int64_t
rtu_gap_us(const struct config_bus *bus)
{
	int bits = 1 + bus->data_bits + (bus->parity == 'N' ? 0 : 1) +
	    bus->stop_bits;

	/* Modbus over serial line, 2.5.1.1: fixed 1.75 ms above 19200 Bd. */
	if (bus->baud > 19200)
		return 1750;
	return (int64_t)bits * 3500000 / bus->baud;
}

static struct worker *
worker_add(struct mb *m, int bus, int board)
{
	const struct config *c = m->cfg;
	struct worker *w = &m->workers[m->nworkers++];

	memset(w, 0, sizeof(*w));
	w->m = m;
	w->bus = &c->buses[bus];
	w->wake_fd = -1;
	w->gap_us = w->bus->type == CONFIG_BUS_RTU ? rtu_gap_us(w->bus) : 0;
	if (board >= 0)
		snprintf(w->name, sizeof(w->name), "bus %s (board %s)",
		    w->bus->name, c->boards[board].name);
	else
		snprintf(w->name, sizeof(w->name), "bus %s", w->bus->name);
	return w;
}

static void
worker_board(struct worker *w, int board)
{
	struct wboard *b = &w->boards[w->nboards++];

	memset(b, 0, sizeof(*b));
	b->cfg = &w->m->cfg->boards[board];
	b->idx = board;
	b->ok = 1;
	w->m->board_worker[board] = (int)(w - w->m->workers);
}

struct mb *
mb_start(const struct config *c)
{
	struct mb *m;
	int i, j;

	if ((m = calloc(1, sizeof(*m))) == NULL ||
	    (m->ring = calloc(MB_REPORT_RING, sizeof(*m->ring))) == NULL ||
	    (m->workers = calloc(CONFIG_BOARDS_MAX, sizeof(*m->workers))) ==
	    NULL) {
		log_error("modbus: out of memory");
		goto fail;
	}
	m->cfg = c;
	m->event_fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	mb_set_timing(m, &c->timing);
	for (i = 0; i < c->nbuses; i++) {
		struct worker *w = NULL;
		for (j = 0; j < c->nboards; j++) {
			if (c->boards[j].bus != i)
				continue;
			if (c->buses[i].type == CONFIG_BUS_TCP || w == NULL)
				w = worker_add(m, i,
				    c->buses[i].type == CONFIG_BUS_TCP ? j : -1);
			worker_board(w, j);
		}
	}
	if ((m->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1) {
		log_error("modbus: eventfd: %s", strerror(errno));
		goto fail;
	}
	for (i = 0; i < m->nworkers; i++) {
		struct worker *w = &m->workers[i];
		pthread_mutex_init(&w->lock, NULL);
		if ((w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) ==
		    -1 || pthread_create(&w->thread, NULL, worker_main, w) !=
		    0) {
			log_error("modbus: starting the worker for %s: %s",
			    w->name, strerror(errno));
			goto fail;
		}
		w->running = 1;
	}
	return m;
fail:
	mb_stop(m);
	return NULL;
}

void
mb_stop(struct mb *m)
{
	uint64_t one = 1;
	int i;

	if (m == NULL)
		return;
	atomic_store(&m->stop, 1);
	for (i = 0; i < m->nworkers; i++) {
		struct worker *w = &m->workers[i];
		if (w->running) {
			if (write(w->wake_fd, &one, sizeof(one)) < 0)
				log_error("modbus: waking %s: %s", w->name,
				    strerror(errno));
			pthread_join(w->thread, NULL);
			pthread_mutex_destroy(&w->lock);
		}
		if (w->wake_fd != -1)
			close(w->wake_fd);
	}
	if (m->event_fd != -1)
		close(m->event_fd);
	free(m->workers);
	free(m->ring);
	free(m);
}

int
mb_fd(const struct mb *m)
{
	return m->event_fd;
}

int
mb_drain(struct mb *m, struct mb_report *out, int max)
{
	uint64_t v;
	int n = 0;

	if (read(m->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_error("modbus: reading the event fd: %s", strerror(errno));
	pthread_mutex_lock(&m->lock);
	while (n < max && m->tail != m->head)
		out[n++] = m->ring[m->tail++ % MB_REPORT_RING];
	if (m->tail != m->head) {
		/* More than max waiting: keep the fd readable. */
		v = 1;
		if (write(m->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			log_error("modbus: re-arming the event fd: %s",
			    strerror(errno));
	}
	pthread_mutex_unlock(&m->lock);
	return n;
}

int
mb_unlock(struct mb *m, int board, int channel, int cell)
{
	struct worker *w;
	uint64_t one = 1;
	int rc = 0;

	/* No boards (lockerd_start_offline): as if the queue were full. */
	if (m == NULL)
		return -1;
	w = &m->workers[m->board_worker[board]];
	pthread_mutex_lock(&w->lock);
	if (w->cmd_head - w->cmd_tail == MB_CMD_RING)
		rc = -1;
	else
		w->cmds[w->cmd_head++ % MB_CMD_RING] =
		    (struct mb_cmd){ board, channel, cell, util_mono_us() };
	pthread_mutex_unlock(&w->lock);
	if (rc == 0 && write(w->wake_fd, &one, sizeof(one)) < 0)
		log_error("modbus: waking %s: %s", w->name, strerror(errno));
	return rc;
}

void
mb_set_timing(struct mb *m, const struct config_timing *t)
{
	atomic_store(&m->poll_ms, t->poll_ms);
	atomic_store(&m->backoff_min, t->board_backoff_min_ms);
	atomic_store(&m->backoff_max, t->board_backoff_max_ms);
}

/* One read of a board's inputs for the probe, printed as a table. */
static int
probe_read(struct worker *w, struct wboard *b, FILE *out,
    const uint8_t *before)
{
	const struct board_profile *p = &b->cfg->profile;
	uint8_t bits[BOARD_INPUTS_MAX], door[BOARD_CHANNELS_MAX];
	uint8_t item[BOARD_CHANNELS_MAX];
	int64_t t0 = util_mono_us();
	char msg[96];
	int rc, ch;

	request_prepare(w, b);
	rc = modbus_read_input_bits(w->ctx, p->input_base, p->input_count,
	    bits);
	request_done(w);
	if (rc != p->input_count) {
		mb_strerror(rc == -1 ? errno : EMBBADDATA, msg, sizeof(msg));
		log_error("%s board %s (unit %d): reading %d inputs from %d "
		    "(FC02): %s", w->name, b->cfg->name, b->cfg->unit,
		    p->input_count, p->input_base, msg);
		return -1;
	}
	board_decode_inputs(p, bits, door, item);
	fprintf(out, "inputs: FC02 %d from %d, answered in %lld ms\n",
	    p->input_count, p->input_base,
	    (long long)((util_mono_us() - t0) / 1000));
	fprintf(out, "  channel  door    item\n");
	for (ch = 0; ch < p->channels; ch++)
		fprintf(out, "  %7d  %-6s  %s%s\n", ch + 1,
		    door[ch] ? "open" : "closed", p->item_base < 0 ? "-" :
		    item[ch] ? "present" : "none",
		    before != NULL && before[ch] != door[ch] ?
		    "    (changed)" : "");
	memcpy(b->last, door, (size_t)p->channels);
	return 0;
}

static int
probe_pulse(struct worker *w, struct wboard *b, int channel, FILE *out)
{
	const struct board_profile *p = &b->cfg->profile;
	int coil = board_coil_addr(p, channel), rc;
	int64_t sent;           /* write_flash's timing stamp; unused here */
	char msg[96];

	if (p->unlock == BOARD_UNLOCK_FLASH) {
		fprintf(out, "pulse: channel %d, flash FC05 to %d value %d "
		    "(%d ms)\n", channel, board_flash_addr(p, channel),
		    board_flash_value(p), p->pulse_ms);
		rc = write_flash(w, b, channel, &sent);
	} else {
		fprintf(out, "pulse: channel %d, coil %d on (FC05) for %d ms, "
		    "then off\n", channel, coil, p->pulse_ms);
		request_prepare(w, b);
		rc = modbus_write_bit(w->ctx, coil, 1);
		request_done(w);
		if (rc != -1) {
			usleep((useconds_t)p->pulse_ms * 1000);
			request_prepare(w, b);
			rc = modbus_write_bit(w->ctx, coil, 0);
			request_done(w);
			if (rc == -1) {
				mb_strerror(errno, msg, sizeof(msg));
				log_error("%s board %s: switching coil %d off: "
				    "%s; it may be left on", w->name,
				    b->cfg->name, coil, msg);
				return -1;
			}
		}
	}
	if (rc == -1) {
		mb_strerror(errno, msg, sizeof(msg));
		log_error("%s board %s: pulsing channel %d: %s", w->name,
		    b->cfg->name, channel, msg);
		return -1;
	}
	fprintf(out, "pulse: ok\n");
	return 0;
}

int
mb_probe(const struct config *c, int board, int channel, FILE *out)
{
	const struct config_board *cb = &c->boards[board];
	const struct config_bus *bus = &c->buses[cb->bus];
	uint8_t before[BOARD_CHANNELS_MAX];
	struct worker *w;
	struct wboard *b;
	int rc = -1;

	if ((w = calloc(1, sizeof(*w))) == NULL) {
		log_error("probe: out of memory");
		return -1;
	}
	w->bus = bus;
	w->gap_us = bus->type == CONFIG_BUS_RTU ? rtu_gap_us(bus) : 0;
	snprintf(w->name, sizeof(w->name), "bus %s", bus->name);
	b = &w->boards[0];
	b->cfg = cb;
	b->idx = board;
	if (bus->type == CONFIG_BUS_TCP)
		fprintf(out, "board %s: unit %d on bus %s (tcp %s:%d), "
		    "profile %s, %d channels\n", cb->name, cb->unit, bus->name,
		    bus->host, bus->port, cb->profile_name,
		    cb->profile.channels);
	else
		fprintf(out, "board %s: unit %d on bus %s (rtu %s %d %d%c%d), "
		    "profile %s, %d channels\n", cb->name, cb->unit, bus->name,
		    bus->device, bus->baud, bus->data_bits, bus->parity,
		    bus->stop_bits, cb->profile_name, cb->profile.channels);
	if (bus_connect(w) == -1 || probe_read(w, b, out, NULL) == -1)
		goto out;
	if (channel > 0) {
		memcpy(before, b->last, sizeof(before));
		if (probe_pulse(w, b, channel, out) == -1)
			goto out;
		/* Long enough for a released door to spring open. */
		usleep(1000 * 1000);
		fprintf(out, "after the pulse, 1 s later:\n");
		if (probe_read(w, b, out, before) == -1)
			goto out;
	}
	rc = 0;
out:
	worker_disconnect(w);
	free(w);
	return rc;
}
