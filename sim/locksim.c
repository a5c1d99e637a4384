/*
 * locksim: simulated Modbus lock boards for lockerd's tests and demos. This
 * file owns the I/O: the Modbus TCP and RTU server framing (our own, not
 * modbus_reply()), the pseudo-terminal, injected transport faults, the
 * control socket, the write log and the poll() loop around sim/physics.c.
 */
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "board.h"
#include "physics.h"

static const char usage_text[] =
"usage: locksim [options] --board UNIT:PROFILE ... --tcp PORT | --rtu PATH\n"
"\n"
"Simulated Modbus lock boards for testing lockerd. Each board is one Modbus\n"
"unit with a board profile and a physical model behind it: a released lock\n"
"lets the door spring open, the door stays open until someone closes it, an\n"
"item can be put in or taken out. Every board is served on every transport.\n"
"\n"
"Options:\n"
"  --board UNIT:PROFILE  add a board; UNIT is 1..247, PROFILE a built-in\n"
"                        profile (generic-24, generic-16, waveshare-relay-d)\n"
"                        or the path of a profile .ini file. Repeatable.\n"
"  --tcp PORT            serve Modbus TCP on 127.0.0.1:PORT (loopback only);\n"
"                        0 picks a free port, see --ready-file\n"
"  --rtu PATH            serve Modbus RTU on a new pseudo-terminal and make\n"
"                        PATH a symlink to it; open it as a serial port (any\n"
"                        baud rate, 8N1). Removed on exit.\n"
"  --control PATH        control socket (UNIX stream) for tests: one command\n"
"                        a line in, one JSON line out. Removed on exit.\n"
"  --auto                start with the automatic person on\n"
"  --spring-ms N         the door springs open N ms after its lock releases\n"
"                        (0..60000, default 150)\n"
"  --seed N              seed of the automatic person and the random faults\n"
"                        (default: from the clock; `state` shows it)\n"
"  --ready-file PATH     once listening, write the line\n"
"                        \"tcp=PORT rtu=PATH control=PATH\" (tcp=0 and empty\n"
"                        paths for what is not served) by an atomic rename.\n"
"                        Removed on exit.\n"
"  -v                    log every request and its outcome to stderr\n"
"  --help                show this text\n"
"\n"
"Modbus (TCP: MBAP + PDU; RTU: unit + PDU + CRC, frames end on 20 ms of\n"
"silence or at their known length):\n"
"  FC01 read coils        the relay of channel CH is coil coil_base+CH-1\n"
"  FC02 read inputs       the door sensor of CH is input door_base+CH-1 and\n"
"                         reads door_open_level while the door is open; the\n"
"                         item sensor (item_base+CH-1, if any) reads\n"
"                         item_present_level while an item is in. Inputs\n"
"                         0 .. input_base+input_count-1 can be read; those\n"
"                         that map to no sensor read 0.\n"
"  FC05 write coil        0xFF00 on, 0x0000 off. Flash boards also take FC05\n"
"                         to flash_base+CH-1 with value N (1..65535): relay\n"
"                         on for N * flash_unit_ms, then off by itself; the\n"
"                         reply is the echo.\n"
"  FC15 write coils\n"
"  Other function codes get exception 01, addresses outside the board 02,\n"
"  bad values or quantities 03. A unit that is not served gets no reply on\n"
"  RTU and exception 0B (gateway target failed) on TCP.\n"
"\n"
"Control commands (UNIT is a Modbus unit id, CH a 1-based channel); each\n"
"reply is one JSON line, {\"ok\":true,...} or {\"ok\":false,\"error\":...}:\n"
"  ping                   {\"ok\":true}\n"
"  state [UNIT]           every board: faults, requests (each well-formed\n"
"                         request addressed to it, also while offline) and\n"
"                         per channel coil, released, door_open, item and\n"
"                         the channel faults\n"
"  writes [AFTER_N]       the writes (FC05, FC15) boards acted on, numbered\n"
"                         n = 1, 2, ..., with t in CLOCK_MONOTONIC seconds;\n"
"                         only n > AFTER_N. \"last\" is the newest n.\n"
"  clear                  empty the write log (n keeps counting)\n"
"  open UNIT CH           the person opens the door; error \"locked\" or\n"
"                         \"jammed\" unless the lock is released\n"
"  close UNIT CH          the person closes the door (also with the coil on)\n"
"  put UNIT CH            an item goes in; error \"door closed\" if shut\n"
"  take UNIT CH           the item comes out; the same error if shut\n"
"  force UNIT CH          the door is broken open, whatever the lock\n"
"  jam UNIT CH on|off     the lock releases but the door does not move\n"
"  stuck UNIT CH on|off   the relay takes writes but never releases\n"
"  flap UNIT CH on|off    the door input reads noise\n"
"  offline UNIT on|off    the board answers nothing\n"
"  slow UNIT MS           each reply of the board comes MS ms late\n"
"  corrupt UNIT crc|garbage|off [PERCENT]\n"
"                         spoil that share of replies (default 100). crc:\n"
"                         RTU gets a bad CRC; TCP reads a byte count one\n"
"                         short, TCP writes a wrong function code (05->06,\n"
"                         0F->10). garbage: random bytes, the reply's length.\n"
"  drop UNIT PERCENT      silently drop that share of the board's replies\n"
"  auto on|off            automatic person: 1-3 s after a door springs open\n"
"                         it puts an item in (or takes it out), 1-2 s later\n"
"                         it closes the door\n"
"\n"
"Example:\n"
"  locksim --tcp 1502 --board 1:generic-16 --board 2:waveshare-relay-d \\\n"
"      --control /tmp/locksim.ctl &\n"
"  echo 'state 1' | nc -NU /tmp/locksim.ctl\n"
"\n"
"SIGTERM or SIGINT stops locksim cleanly. Exit status: 0 after a signal,\n"
"1 if serving fails, 2 for bad arguments.\n";

#define MB_ADU_MAX 260
#define MB_PDU_MAX 253
#define MB_READ_MAX 2000
#define MB_WRITE_MAX 1968
#define TCP_CLIENTS_MAX 32
#define CTL_CLIENTS_MAX 16
#define CTL_LINE_MAX 512
#define CTL_WORDS_MAX 6
#define RTU_SILENCE_MS 20
#define MB_OUT_MAX (64 * 1024)
#define CTL_OUT_MAX (64 * 1024 * 1024)
#define WRITES_MAX 100000
#define DELAYED_MAX 4096
#define SLOW_MS_MAX 600000
#define PROFILE_FILE_MAX (64 * 1024)

enum {
	PFD_SIGNAL,
	PFD_TCP,
	PFD_PTY,
	PFD_CTL,
	PFD_TCP_CLIENTS,
	PFD_CTL_CLIENTS = PFD_TCP_CLIENTS + TCP_CLIENTS_MAX,
	PFD_MAX = PFD_CTL_CLIENTS + CTL_CLIENTS_MAX,
};

enum transport {
	TR_TCP,
	TR_RTU,
};

enum corrupt {
	CORRUPT_OFF,
	CORRUPT_CRC,
	CORRUPT_GARBAGE,
};

static const char *const corrupt_names[] = { "off", "crc", "garbage" };
static const char *const transport_names[] = { "tcp", "rtu" };

/* Output waiting for a non-blocking descriptor; data[off..len) unsent. */
struct buf {
	char *data;
	size_t off, len, cap;
};

/* A board as the wire sees it: the model plus its transport faults. */
struct board {
	struct physics_board *pb;
	int offline;
	int slow_ms;
	enum corrupt corrupt;
	int corrupt_pct;
	int drop_pct;
	long long requests;
};

/* A TCP or control client; gen tells a reused slot from the old client. */
struct conn {
	int fd;
	unsigned gen;
	uint8_t in[1024];
	size_t inlen;
	int discard;
	struct buf out;
};

struct rtu {
	int master, slave;
	const char *link;
	int linked;
	char pts[64];
	uint8_t in[2 * MB_ADU_MAX];
	size_t inlen;
	int skipping;
	int64_t last_rx;
	struct buf out;
};

struct wlog {
	uint64_t n;
	uint64_t bits;      /* the coil values written, first 64 */
	struct timespec t;
	uint16_t addr, value, count;
	uint8_t unit, fc, transport;
};

struct delayed {
	int64_t due;
	enum transport tr;
	int slot;
	unsigned gen;
	size_t len;
	uint8_t adu[MB_ADU_MAX];
};

/* A --board argument, kept until the model exists. */
struct board_spec {
	int unit;
	struct board_profile profile;
};

struct sim {
	struct physics *phys;
	struct board boards[PHYSICS_BOARDS_MAX];
	int nboards;
	struct board_spec specs[PHYSICS_BOARDS_MAX];
	int nspecs;
	int verbose;
	int64_t seed;
	int auto_start;
	int spring_ms;

	int tcp_port;           /* asked for; -1 = no TCP */
	int tcp_fd;
	struct conn tcp[TCP_CLIENTS_MAX];
	struct rtu rtu;
	const char *ctl_path;
	int ctl_fd;
	int ctl_bound;
	struct conn ctl[CTL_CLIENTS_MAX];
	const char *ready_path;
	int ready_written;
	int sig_fd;
	int quit;

	struct wlog *wlog;
	size_t wlog_head, wlog_len;
	uint64_t wlog_n;
	struct delayed *delayed;
	size_t ndelayed;
};

static void	log_warn(const char *, ...)
		    __attribute__((format(printf, 1, 2)));
static void	log_debug(struct sim *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static int	buf_printf(struct buf *, size_t, const char *, ...)
		    __attribute__((format(printf, 3, 4)));
static void	ctl_error(struct conn *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));

static void
log_warn(const char *fmt, ...)
{
	va_list ap;

	fputs("locksim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void
log_debug(struct sim *s, const char *fmt, ...)
{
	va_list ap;

	if (!s->verbose)
		return;
	fputs("locksim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void
clock_mono(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

static int64_t
ts_ms(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_mono(&ts);
	return ts_ms(&ts);
}

static int
buf_reserve(struct buf *b, size_t n, size_t max)
{
	size_t cap;
	char *p;

	if (b->off == b->len)
		b->off = b->len = 0;
	if (b->len - b->off + n > max) {
		errno = ENOBUFS;
		return -1;
	}
	if (b->off > 0 && b->len + n > b->cap) {
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
	}
	if (b->len + n <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 512;
	while (cap < b->len + n)
		cap *= 2;
	if ((p = realloc(b->data, cap)) == NULL)
		return -1;
	b->data = p;
	b->cap = cap;
	return 0;
}

static int
buf_add(struct buf *b, const void *p, size_t n, size_t max)
{
	if (buf_reserve(b, n, max) == -1)
		return -1;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

static int
buf_printf(struct buf *b, size_t max, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || buf_reserve(b, (size_t)n + 1, max) == -1)
		return -1;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

static void
buf_free(struct buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* Sends what it can without blocking; -1 when the peer is gone. */
static int
buf_flush(struct buf *b, int fd, int sock)
{
	ssize_t n;

	while (b->off < b->len) {
		if (sock)
			n = send(fd, b->data + b->off, b->len - b->off,
			    MSG_NOSIGNAL);
		else
			n = write(fd, b->data + b->off, b->len - b->off);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		b->off += (size_t)n;
	}
	b->off = b->len = 0;
	return 0;
}

static uint16_t
crc16(const uint8_t *p, size_t len)
{
	uint16_t crc = 0xffff;
	size_t i;
	int bit;

	for (i = 0; i < len; i++) {
		crc ^= p[i];
		for (bit = 0; bit < 8; bit++)
			crc = (crc & 1) ? (crc >> 1) ^ 0xa001 : crc >> 1;
	}
	return crc;
}

static unsigned
get16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static void
put16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static int
chance(struct sim *s, int pct)
{
	if (pct <= 0)
		return 0;
	if (pct >= 100)
		return 1;
	return (int)physics_random(s->phys, 100) < pct;
}

static struct board *
sim_board(struct sim *s, int unit)
{
	int i;

	for (i = 0; i < s->nboards; i++)
		if (s->boards[i].pb->unit == unit)
			return &s->boards[i];
	return NULL;
}

static void
wlog_add(struct sim *s, const struct timespec *ts, int unit, int fc,
    unsigned addr, unsigned value, unsigned count, uint64_t bits,
    enum transport tr)
{
	struct wlog *w;

	if (s->wlog_len < WRITES_MAX)
		w = &s->wlog[(s->wlog_head + s->wlog_len++) % WRITES_MAX];
	else {
		w = &s->wlog[s->wlog_head];
		s->wlog_head = (s->wlog_head + 1) % WRITES_MAX;
	}
	w->n = ++s->wlog_n;
	w->t = *ts;
	w->unit = (uint8_t)unit;
	w->fc = (uint8_t)fc;
	w->addr = (uint16_t)addr;
	w->value = (uint16_t)value;
	w->count = (uint16_t)count;
	w->bits = bits;
	w->transport = (uint8_t)tr;
}

static size_t
mb_exception(uint8_t *rsp, int fc, int code)
{
	rsp[0] = (uint8_t)(fc | 0x80);
	rsp[1] = (uint8_t)code;
	return 2;
}

/*
 * One request PDU for one board, transport aside: acts on the model and
 * writes the reply PDU into rsp (MB_PDU_MAX bytes). Checks follow the
 * Modbus order: function (01), quantity and value (03), address (02).
 */
static size_t
board_request(struct sim *s, struct board *bd, const uint8_t *pdu,
    size_t len, uint8_t *rsp, enum transport tr, const struct timespec *ts)
{
	struct physics_board *pb = bd->pb;
	uint8_t bits[MB_READ_MAX];
	int64_t now = ts_ms(ts);
	unsigned addr, count, value, nbytes, i;
	uint64_t mask;
	int fc = pdu[0], r;

	switch (fc) {
	case 0x01:
	case 0x02:
		if (len != 5)
			return mb_exception(rsp, fc, 0x03);
		addr = get16(pdu + 1);
		count = get16(pdu + 3);
		if (count < 1 || count > MB_READ_MAX)
			return mb_exception(rsp, fc, 0x03);
		if (fc == 0x01)
			r = physics_read_coils(s->phys, pb, (int)addr,
			    (int)count, bits, now);
		else
			r = physics_read_inputs(s->phys, pb, (int)addr,
			    (int)count, bits, now);
		if (r == -1)
			return mb_exception(rsp, fc, 0x02);
		nbytes = (count + 7) / 8;
		rsp[0] = (uint8_t)fc;
		rsp[1] = (uint8_t)nbytes;
		memset(rsp + 2, 0, nbytes);
		for (i = 0; i < count; i++)
			if (bits[i])
				rsp[2 + i / 8] |= (uint8_t)(1 << (i % 8));
		return 2 + nbytes;
	case 0x05:
		if (len != 5)
			return mb_exception(rsp, fc, 0x03);
		addr = get16(pdu + 1);
		value = get16(pdu + 3);
		if (physics_is_flash_addr(pb, (int)addr)) {
			if (value == 0)
				return mb_exception(rsp, fc, 0x03);
			physics_flash(s->phys, pb, (int)addr, (int)value, now);
		} else {
			if (value != 0xff00 && value != 0x0000)
				return mb_exception(rsp, fc, 0x03);
			bits[0] = value == 0xff00;
			if (physics_write_coils(s->phys, pb, (int)addr, 1, bits,
			    now) == -1)
				return mb_exception(rsp, fc, 0x02);
		}
		wlog_add(s, ts, pb->unit, fc, addr, value, 1,
		    value == 0xff00, tr);
		memcpy(rsp, pdu, 5);
		return 5;
	case 0x0f:
		if (len < 6)
			return mb_exception(rsp, fc, 0x03);
		addr = get16(pdu + 1);
		count = get16(pdu + 3);
		nbytes = pdu[5];
		if (count < 1 || count > MB_WRITE_MAX ||
		    nbytes != (count + 7) / 8 || len != 6 + nbytes)
			return mb_exception(rsp, fc, 0x03);
		for (i = 0; i < count; i++)
			bits[i] = (pdu[6 + i / 8] >> (i % 8)) & 1;
		if (physics_write_coils(s->phys, pb, (int)addr, (int)count,
		    bits, now) == -1)
			return mb_exception(rsp, fc, 0x02);
		mask = 0;
		for (i = 0; i < count && i < 64; i++)
			mask |= (uint64_t)bits[i] << i;
		wlog_add(s, ts, pb->unit, fc, addr, bits[0], count, mask, tr);
		memcpy(rsp, pdu, 5);
		return 5;
	default:
		return mb_exception(rsp, fc, 0x01);
	}
}

static size_t
adu_frame(enum transport tr, unsigned tid, int unit, const uint8_t *pdu,
    size_t len, uint8_t *adu)
{
	uint16_t crc;

	if (tr == TR_TCP) {
		put16(adu, tid);
		put16(adu + 2, 0);
		put16(adu + 4, (unsigned)len + 1);
		adu[6] = (uint8_t)unit;
		memcpy(adu + 7, pdu, len);
		return len + 7;
	}
	adu[0] = (uint8_t)unit;
	memcpy(adu + 1, pdu, len);
	crc = crc16(adu, len + 1);
	adu[len + 1] = (uint8_t)crc;
	adu[len + 2] = (uint8_t)(crc >> 8);
	return len + 3;
}

/*
 * Spoils a reply so that a client notices. TCP has no CRC, so "crc" there
 * means a PDU that still frames correctly but fails the client's checks: a
 * read's byte count (and data) one short, or a write's function code
 * turned into its neighbour of the same shape (05 -> 06, 0F -> 10), since
 * libmodbus 3.1.6 does not compare the rest of a write's echo.
 */
static size_t
adu_corrupt(struct sim *s, enum corrupt how, enum transport tr, uint8_t *adu,
    size_t len)
{
	uint8_t *pdu = adu + 7;
	size_t i;

	if (how == CORRUPT_GARBAGE) {
		for (i = 0; i < len; i++)
			adu[i] = (uint8_t)physics_random(s->phys, 256);
		return len;
	}
	if (tr == TR_RTU) {
		adu[len - 1 - physics_random(s->phys, 2)] ^=
		    (uint8_t)(1 + physics_random(s->phys, 255));
		return len;
	}
	switch (pdu[0]) {
	case 0x01:
	case 0x02:
		pdu[1]--;
		put16(adu + 4, get16(adu + 4) - 1);
		return len - 1;
	case 0x05:
	case 0x0f:
		pdu[0]++;
		return len;
	}
	return len;
}

/* A reply the line cannot take is lost, as on a real bus. */
static void
rtu_flush(struct sim *s)
{
	struct buf *b = &s->rtu.out;

	if (buf_flush(b, s->rtu.master, 0) == -1) {
		log_warn("rtu: write: %s; %zu bytes lost", strerror(errno),
		    b->len - b->off);
		b->off = b->len = 0;
	}
}

static void
reply_send(struct sim *s, enum transport tr, int slot, unsigned gen,
    const uint8_t *adu, size_t len)
{
	struct conn *c;

	if (tr == TR_RTU) {
		if (s->rtu.master == -1)
			return;
		if (buf_add(&s->rtu.out, adu, len, MB_OUT_MAX) == -1) {
			log_debug(s, "rtu: nobody reads the line, "
			    "reply dropped");
			return;
		}
		rtu_flush(s);
		return;
	}
	c = &s->tcp[slot];
	if (c->fd == -1 || c->gen != gen)
		return;
	if (buf_add(&c->out, adu, len, MB_OUT_MAX) == -1 ||
	    buf_flush(&c->out, c->fd, 1) == -1) {
		log_debug(s, "tcp client %d: %s, closing", slot,
		    strerror(errno));
		close(c->fd);
		c->fd = -1;
		c->inlen = 0;
		buf_free(&c->out);
	}
}

static void
delayed_add(struct sim *s, int64_t due, enum transport tr, int slot,
    unsigned gen, const uint8_t *adu, size_t len)
{
	struct delayed *d;

	if (s->ndelayed == DELAYED_MAX) {
		log_debug(s, "too many delayed replies, one dropped");
		return;
	}
	d = &s->delayed[s->ndelayed++];
	d->due = due;
	d->tr = tr;
	d->slot = slot;
	d->gen = gen;
	d->len = len;
	memcpy(d->adu, adu, len);
}

/* Sends the delayed replies that are due, earliest first. */
static void
delayed_run(struct sim *s, int64_t now)
{
	struct delayed d;
	size_t i, first;

	for (;;) {
		first = s->ndelayed;
		for (i = 0; i < s->ndelayed; i++)
			if (s->delayed[i].due <= now && (first == s->ndelayed ||
			    s->delayed[i].due < s->delayed[first].due))
				first = i;
		if (first == s->ndelayed)
			return;
		d = s->delayed[first];
		memmove(&s->delayed[first], &s->delayed[first + 1],
		    (s->ndelayed - first - 1) * sizeof(d));
		s->ndelayed--;
		reply_send(s, d.tr, d.slot, d.gen, d.adu, d.len);
	}
}

/*
 * Serves one request that arrived on transport tr (slot and tid for TCP):
 * the board acts on it, then the board's faults decide what, if anything,
 * goes back and when.
 */
static void
sim_serve(struct sim *s, enum transport tr, int slot, unsigned tid,
    int unit, const uint8_t *pdu, size_t len)
{
	struct board *bd = sim_board(s, unit);
	const char *trn = transport_names[tr];
	uint8_t rsp[MB_PDU_MAX], adu[MB_ADU_MAX];
	struct timespec ts;
	unsigned gen = tr == TR_TCP ? s->tcp[slot].gen : 0;
	size_t rlen, alen;
	char what[48];

	clock_mono(&ts);
	if (len >= 5 && pdu[0] == 0x05)
		snprintf(what, sizeof(what), "fc=05 addr=%u value=0x%04x",
		    get16(pdu + 1), get16(pdu + 3));
	else if (len >= 5)
		snprintf(what, sizeof(what), "fc=%02x addr=%u count=%u",
		    pdu[0], get16(pdu + 1), get16(pdu + 3));
	else
		snprintf(what, sizeof(what), "fc=%02x len=%zu", pdu[0], len);
	if (bd == NULL) {
		log_debug(s, "%s unit=%d %s: unit not served", trn, unit, what);
		if (tr == TR_RTU)
			return;
		rlen = mb_exception(rsp, pdu[0], 0x0b);
		alen = adu_frame(tr, tid, unit, rsp, rlen, adu);
		reply_send(s, tr, slot, gen, adu, alen);
		return;
	}
	bd->requests++;
	if (bd->offline) {
		log_debug(s, "%s unit=%d %s: offline", trn, unit, what);
		return;
	}
	rlen = board_request(s, bd, pdu, len, rsp, tr, &ts);
	if (chance(s, bd->drop_pct)) {
		log_debug(s, "%s unit=%d %s: reply dropped", trn, unit, what);
		return;
	}
	alen = adu_frame(tr, tid, unit, rsp, rlen, adu);
	if (bd->corrupt != CORRUPT_OFF && chance(s, bd->corrupt_pct)) {
		alen = adu_corrupt(s, bd->corrupt, tr, adu, alen);
		log_debug(s, "%s unit=%d %s: reply corrupted (%s)", trn, unit,
		    what, corrupt_names[bd->corrupt]);
	} else if (rsp[0] & 0x80)
		log_debug(s, "%s unit=%d %s: exception %02x", trn, unit, what,
		    rsp[1]);
	else
		log_debug(s, "%s unit=%d %s: ok", trn, unit, what);
	if (bd->slow_ms > 0)
		delayed_add(s, ts_ms(&ts) + bd->slow_ms, tr, slot, gen, adu,
		    alen);
	else
		reply_send(s, tr, slot, gen, adu, alen);
}

static void
conn_close(struct conn *c)
{
	if (c->fd != -1)
		close(c->fd);
	c->fd = -1;
	c->inlen = 0;
	c->discard = 0;
	buf_free(&c->out);
}

static int
conn_accept(struct sim *s, int lfd, struct conn *tab, int n, const char *kind)
{
	int fd, i;

	fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd == -1) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
		    errno != ECONNABORTED)
			log_warn("%s: accept: %s", kind, strerror(errno));
		return -1;
	}
	for (i = 0; i < n; i++)
		if (tab[i].fd == -1)
			break;
	if (i == n) {
		log_warn("%s: more than %d clients, connection refused", kind,
		    n);
		close(fd);
		return -1;
	}
	tab[i].fd = fd;
	tab[i].gen++;
	tab[i].inlen = 0;
	tab[i].discard = 0;
	log_debug(s, "%s client %d connected", kind, i);
	return i;
}

/* Reads what waits on a client into its buffer; -1 if nothing came or
 * the client is gone (then closed). */
static int
conn_fill(struct sim *s, struct conn *c, const char *what, int slot)
{
	ssize_t n;

	n = read(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen);
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return -1;
	if (n <= 0) {
		log_debug(s, "%s client %d gone", what, slot);
		conn_close(c);
		return -1;
	}
	c->inlen += (size_t)n;
	return 0;
}

/* Modbus TCP: MBAP header (tid, protocol 0, length, unit) + PDU. */
static void
tcp_dispatch(struct sim *s, int slot)
{
	struct conn *c = &s->tcp[slot];
	unsigned len;

	if (conn_fill(s, c, "tcp", slot) == -1)
		return;
	while (c->inlen >= 7) {
		len = get16(c->in + 4);
		if (get16(c->in + 2) != 0 || len < 2 || len > MB_ADU_MAX - 6) {
			/* Without a sane length there is no next frame. */
			log_warn("tcp client %d: bad MBAP header, closing",
			    slot);
			conn_close(c);
			return;
		}
		if (c->inlen < 6 + len)
			break;
		sim_serve(s, TR_TCP, slot, get16(c->in), c->in[6], c->in + 7,
		    len - 1);
		if (c->fd == -1)
			return;
		c->inlen -= 6 + len;
		memmove(c->in, c->in + 6 + len, c->inlen);
	}
}

/* RTU frame length from its head: 0 = need more, -1 = ends at silence. */
static int
rtu_frame_len(const uint8_t *p, size_t len)
{
	if (len < 2)
		return 0;
	switch (p[1]) {
	case 0x01:
	case 0x02:
	case 0x03:
	case 0x04:
	case 0x05:
	case 0x06:
		return 8;
	case 0x0f:
	case 0x10:
		return len < 7 ? 0 : 9 + p[6];
	default:
		return -1;
	}
}

static int
rtu_crc_ok(const uint8_t *p, size_t len)
{
	return len >= 4 && crc16(p, len - 2) ==
	    (p[len - 2] | (unsigned)p[len - 1] << 8);
}

static void
rtu_discard(struct sim *s, const char *why)
{
	log_debug(s, "rtu: %s, %zu bytes dropped until silence", why,
	    s->rtu.inlen);
	s->rtu.inlen = 0;
	s->rtu.skipping = 1;
}

static void
rtu_frames(struct sim *s)
{
	struct rtu *r = &s->rtu;
	int need;

	while (r->inlen > 0 && !r->skipping) {
		need = rtu_frame_len(r->in, r->inlen);
		if (need <= 0) {
			if (r->inlen > MB_ADU_MAX)
				rtu_discard(s, "frame too long");
			return;
		}
		if (need > MB_ADU_MAX) {
			rtu_discard(s, "frame too long");
			return;
		}
		if ((size_t)need > r->inlen)
			return;
		if (!rtu_crc_ok(r->in, (size_t)need)) {
			rtu_discard(s, "bad CRC");
			return;
		}
		sim_serve(s, TR_RTU, -1, 0, r->in[0], r->in + 1,
		    (size_t)need - 3);
		r->inlen -= (size_t)need;
		memmove(r->in, r->in + need, r->inlen);
	}
}

/* Silence ends a frame whose length the function code does not tell. */
static void
rtu_silence(struct sim *s)
{
	struct rtu *r = &s->rtu;

	if (!r->skipping && r->inlen > 0) {
		if (rtu_frame_len(r->in, r->inlen) == -1 &&
		    rtu_crc_ok(r->in, r->inlen))
			sim_serve(s, TR_RTU, -1, 0, r->in[0], r->in + 1,
			    r->inlen - 3);
		else
			log_debug(s, "rtu: %zu bytes of a partial frame "
			    "dropped", r->inlen);
	}
	r->inlen = 0;
	r->skipping = 0;
}

static void
rtu_dispatch(struct sim *s, int64_t now)
{
	struct rtu *r = &s->rtu;
	uint8_t tmp[sizeof(r->in)];
	size_t room;
	ssize_t n;

	n = read(r->master, tmp, sizeof(tmp));
	if (n == -1 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* We hold the slave open, so this should not happen. */
		log_warn("rtu: read: %s; no more RTU",
		    n == 0 ? "end of file" : strerror(errno));
		close(r->master);
		r->master = -1;
		return;
	}
	r->last_rx = now;
	if (r->skipping)
		return;
	room = sizeof(r->in) - r->inlen;
	if ((size_t)n > room) {
		rtu_discard(s, "frame too long");
		return;
	}
	memcpy(r->in + r->inlen, tmp, (size_t)n);
	r->inlen += (size_t)n;
	rtu_frames(s);
}

/* Control replies. */

static void
ctl_send_json(struct conn *c, json_t *j)
{
	char *text;

	if (j == NULL)
		return;
	/* 16 digits print monotonic seconds to the ns without float noise. */
	text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(16));
	json_decref(j);
	if (text == NULL)
		return;
	if (buf_printf(&c->out, CTL_OUT_MAX, "%s\n", text) == -1)
		conn_close(c);
	free(text);
}

static void
ctl_ok(struct conn *c)
{
	ctl_send_json(c, json_pack("{s:b}", "ok", 1));
}

static void
ctl_error(struct conn *c, const char *fmt, ...)
{
	char msg[200], *p;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Echoed user text must not break the JSON string (UTF-8 only). */
	for (p = msg; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			*p = '?';
	ctl_send_json(c, json_pack("{s:b,s:s}", "ok", 0, "error", msg));
}

static int
parse_num(const char *s, long long lo, long long hi, long long *out)
{
	char *end;
	long long v;

	if (s == NULL || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int
parse_onoff(const char *s, int *on)
{
	if (strcmp(s, "on") == 0)
		*on = 1;
	else if (strcmp(s, "off") == 0)
		*on = 0;
	else
		return -1;
	return 0;
}

static struct board *
ctl_unit(struct sim *s, struct conn *c, const char *word)
{
	struct board *bd;
	long long v;

	if (parse_num(word, 0, 255, &v) == -1) {
		ctl_error(c, "bad unit '%.40s'", word);
		return NULL;
	}
	if ((bd = sim_board(s, (int)v)) == NULL) {
		ctl_error(c, "no board with unit %lld", v);
		return NULL;
	}
	return bd;
}

static int
ctl_channel(struct conn *c, struct board *bd, const char *word)
{
	int n = bd->pb->profile.channels;
	long long v;

	if (parse_num(word, 1, n, &v) == -1) {
		ctl_error(c, "bad channel '%.40s' (unit %d has channels 1..%d)",
		    word, bd->pb->unit, n);
		return -1;
	}
	return (int)v;
}

static json_t *
state_board(const struct board *bd)
{
	const struct physics_board *pb = bd->pb;
	const struct physics_channel *ch;
	json_t *chans = json_array();
	int i;

	for (i = 0; i < pb->profile.channels; i++) {
		ch = &pb->ch[i];
		json_array_append_new(chans, json_pack(
		    "{s:i,s:i,s:b,s:b,s:b,s:b,s:b,s:b}",
		    "ch", i + 1, "coil", ch->coil,
		    "released", physics_released(ch),
		    "door_open", ch->door_open, "item", ch->item,
		    "jammed", ch->jammed, "stuck", ch->stuck,
		    "flap", ch->flap));
	}
	return json_pack("{s:i,s:s,s:b,s:i,s:s,s:i,s:i,s:I,s:o}",
	    "unit", pb->unit, "profile", pb->profile.name,
	    "offline", bd->offline, "slow_ms", bd->slow_ms,
	    "corrupt", corrupt_names[bd->corrupt],
	    "corrupt_percent", bd->corrupt_pct,
	    "drop_percent", bd->drop_pct,
	    "requests", (json_int_t)bd->requests, "channels", chans);
}

static void
ctl_state(struct sim *s, struct conn *c, struct board *only)
{
	struct timespec ts;
	json_t *boards = json_array();
	int i;

	clock_mono(&ts);
	physics_advance(s->phys, ts_ms(&ts));
	for (i = 0; i < s->nboards; i++)
		if (only == NULL || only == &s->boards[i])
			json_array_append_new(boards,
			    state_board(&s->boards[i]));
	ctl_send_json(c, json_pack("{s:b,s:f,s:b,s:I,s:i,s:o}", "ok", 1,
	    "t", (double)ts.tv_sec + ts.tv_nsec / 1e9,
	    "auto", s->phys->auto_person, "seed", (json_int_t)s->seed,
	    "spring_ms", s->phys->spring_ms, "boards", boards));
}

/* Written by hand: jansson cannot print t with exactly nine decimals. */
static void
ctl_writes(struct sim *s, struct conn *c, uint64_t after)
{
	const struct wlog *w;
	const char *sep = "";
	char bits[65];
	size_t i;
	unsigned k;

	if (buf_printf(&c->out, CTL_OUT_MAX,
	    "{\"ok\":true,\"last\":%" PRIu64 ",\"writes\":[", s->wlog_n) == -1)
		goto fail;
	for (i = 0; i < s->wlog_len; i++) {
		w = &s->wlog[(s->wlog_head + i) % WRITES_MAX];
		if (w->n <= after)
			continue;
		for (k = 0; k < w->count && k < 64; k++)
			bits[k] = (char)('0' + ((w->bits >> k) & 1));
		bits[k] = '\0';
		if (buf_printf(&c->out, CTL_OUT_MAX,
		    "%s{\"n\":%" PRIu64 ",\"t\":%lld.%09ld,\"unit\":%u,"
		    "\"fc\":%u,\"addr\":%u,\"value\":%u,\"count\":%u,"
		    "\"bits\":\"%s\",\"transport\":\"%s\"}", sep, w->n,
		    (long long)w->t.tv_sec, w->t.tv_nsec, w->unit, w->fc,
		    w->addr, w->value, w->count, bits,
		    transport_names[w->transport]) == -1)
			goto fail;
		sep = ",";
	}
	if (buf_printf(&c->out, CTL_OUT_MAX, "]}\n") == -1)
		goto fail;
	return;
fail:
	log_warn("control: reply too large, closing the client");
	conn_close(c);
}

static void
ctl_person(struct sim *s, struct conn *c, const char *verb, struct board *bd,
    int ch)
{
	struct physics_board *pb = bd->pb;
	enum physics_result r = PHYSICS_OK;
	int64_t now = now_ms();

	if (strcmp(verb, "open") == 0)
		r = physics_open(s->phys, pb, ch, now);
	else if (strcmp(verb, "close") == 0)
		physics_close(s->phys, pb, ch, now);
	else if (strcmp(verb, "put") == 0)
		r = physics_put(s->phys, pb, ch, now);
	else if (strcmp(verb, "take") == 0)
		r = physics_take(s->phys, pb, ch, now);
	else
		physics_force(s->phys, pb, ch, now);
	if (r != PHYSICS_OK)
		ctl_error(c, "%s", physics_strerror(r));
	else
		ctl_ok(c);
}

static void
ctl_fault(struct sim *s, struct conn *c, const char *verb, struct board *bd,
    int ch, const char *arg)
{
	int64_t now = now_ms();
	int on;

	if (parse_onoff(arg, &on) == -1) {
		ctl_error(c, "%s: expected on or off, not '%.40s'", verb, arg);
		return;
	}
	if (strcmp(verb, "jam") == 0)
		physics_set_jam(s->phys, bd->pb, ch, on, now);
	else if (strcmp(verb, "stuck") == 0)
		physics_set_stuck(s->phys, bd->pb, ch, on, now);
	else
		physics_set_flap(s->phys, bd->pb, ch, on, now);
	ctl_ok(c);
}

/* offline, slow, drop, corrupt; w[1] was the unit, nw >= 3. */
static void
ctl_board_fault(struct conn *c, int nw, char **w, struct board *bd)
{
	long long v = 100;
	int on, mode;

	if (strcmp(w[0], "offline") == 0) {
		if (parse_onoff(w[2], &on) == -1) {
			ctl_error(c, "offline: expected on or off, not '%.40s'",
			    w[2]);
			return;
		}
		bd->offline = on;
	} else if (strcmp(w[0], "slow") == 0) {
		if (parse_num(w[2], 0, SLOW_MS_MAX, &v) == -1) {
			ctl_error(c, "slow: bad delay '%.40s' (ms, 0..%d)",
			    w[2], SLOW_MS_MAX);
			return;
		}
		bd->slow_ms = (int)v;
	} else if (strcmp(w[0], "drop") == 0) {
		if (parse_num(w[2], 0, 100, &v) == -1) {
			ctl_error(c, "drop: bad percent '%.40s' (0..100)",
			    w[2]);
			return;
		}
		bd->drop_pct = (int)v;
	} else {
		for (mode = 0; mode < 3; mode++)
			if (strcmp(w[2], corrupt_names[mode]) == 0)
				break;
		if (mode == 3) {
			ctl_error(c, "corrupt: bad mode '%.40s' (crc, garbage "
			    "or off)", w[2]);
			return;
		}
		if (nw == 4 && parse_num(w[3], 0, 100, &v) == -1) {
			ctl_error(c, "corrupt: bad percent '%.40s' (0..100)",
			    w[3]);
			return;
		}
		bd->corrupt = (enum corrupt)mode;
		bd->corrupt_pct = mode == CORRUPT_OFF ? 0 : (int)v;
	}
	ctl_ok(c);
}

/* Commands, their word counts and usage, for argument count errors. */
static const struct {
	const char *name;
	int min, max;
	const char *usage;
} ctl_cmds[] = {
	{ "ping", 1, 1, "ping" },
	{ "state", 1, 2, "state [UNIT]" },
	{ "writes", 1, 2, "writes [AFTER_N]" },
	{ "clear", 1, 1, "clear" },
	{ "auto", 2, 2, "auto on|off" },
	{ "open", 3, 3, "open UNIT CH" },
	{ "close", 3, 3, "close UNIT CH" },
	{ "put", 3, 3, "put UNIT CH" },
	{ "take", 3, 3, "take UNIT CH" },
	{ "force", 3, 3, "force UNIT CH" },
	{ "jam", 4, 4, "jam UNIT CH on|off" },
	{ "stuck", 4, 4, "stuck UNIT CH on|off" },
	{ "flap", 4, 4, "flap UNIT CH on|off" },
	{ "offline", 3, 3, "offline UNIT on|off" },
	{ "slow", 3, 3, "slow UNIT MS" },
	{ "drop", 3, 3, "drop UNIT PERCENT" },
	{ "corrupt", 3, 4, "corrupt UNIT crc|garbage|off [PERCENT]" },
};

static void
ctl_command(struct sim *s, struct conn *c, char *line)
{
	char *w[CTL_WORDS_MAX + 1], *save = NULL, *p;
	struct board *bd = NULL;
	long long v;
	size_t i;
	int nw = 0, ch, on;

	for (p = strtok_r(line, " \t", &save); p != NULL;
	    p = strtok_r(NULL, " \t", &save)) {
		if (nw == CTL_WORDS_MAX) {
			ctl_error(c, "too many words");
			return;
		}
		w[nw++] = p;
	}
	w[nw] = NULL;
	if (nw == 0) {
		ctl_error(c, "empty command");
		return;
	}
	for (i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++)
		if (strcmp(w[0], ctl_cmds[i].name) == 0)
			break;
	if (i == sizeof(ctl_cmds) / sizeof(ctl_cmds[0])) {
		ctl_error(c, "unknown command '%.40s'", w[0]);
		return;
	}
	if (nw < ctl_cmds[i].min || nw > ctl_cmds[i].max) {
		ctl_error(c, "usage: %s", ctl_cmds[i].usage);
		return;
	}
	if (strcmp(w[0], "ping") == 0) {
		ctl_ok(c);
	} else if (strcmp(w[0], "state") == 0) {
		if (nw == 2 && (bd = ctl_unit(s, c, w[1])) == NULL)
			return;
		ctl_state(s, c, bd);
	} else if (strcmp(w[0], "writes") == 0) {
		v = 0;
		if (nw == 2 && parse_num(w[1], 0, LLONG_MAX, &v) == -1) {
			ctl_error(c, "bad number '%.40s'", w[1]);
			return;
		}
		ctl_writes(s, c, (uint64_t)v);
	} else if (strcmp(w[0], "clear") == 0) {
		s->wlog_head = s->wlog_len = 0;
		ctl_ok(c);
	} else if (strcmp(w[0], "auto") == 0) {
		if (parse_onoff(w[1], &on) == -1) {
			ctl_error(c, "auto: expected on or off, not '%.40s'",
			    w[1]);
			return;
		}
		physics_set_auto(s->phys, on, now_ms());
		ctl_ok(c);
	} else if (strcmp(w[0], "open") == 0 || strcmp(w[0], "close") == 0 ||
	    strcmp(w[0], "put") == 0 || strcmp(w[0], "take") == 0 ||
	    strcmp(w[0], "force") == 0) {
		if ((bd = ctl_unit(s, c, w[1])) == NULL ||
		    (ch = ctl_channel(c, bd, w[2])) == -1)
			return;
		ctl_person(s, c, w[0], bd, ch);
	} else if (strcmp(w[0], "jam") == 0 || strcmp(w[0], "stuck") == 0 ||
	    strcmp(w[0], "flap") == 0) {
		if ((bd = ctl_unit(s, c, w[1])) == NULL ||
		    (ch = ctl_channel(c, bd, w[2])) == -1)
			return;
		ctl_fault(s, c, w[0], bd, ch, w[3]);
	} else {
		if ((bd = ctl_unit(s, c, w[1])) == NULL)
			return;
		ctl_board_fault(c, nw, w, bd);
	}
}

/* Control: lines in, one JSON line out per line. */
static void
ctl_dispatch(struct sim *s, int slot)
{
	struct conn *c = &s->ctl[slot];
	uint8_t *nl;
	size_t len;

	if (conn_fill(s, c, "control", slot) == -1)
		return;
	while (c->fd != -1 &&
	    (nl = memchr(c->in, '\n', c->inlen)) != NULL) {
		len = (size_t)(nl - c->in);
		*nl = '\0';
		if (len > 0 && c->in[len - 1] == '\r')
			c->in[--len] = '\0';
		if (c->discard)
			c->discard = 0;
		else if (len > CTL_LINE_MAX)
			ctl_error(c, "line longer than %d bytes", CTL_LINE_MAX);
		else {
			log_debug(s, "control: %s", (char *)c->in);
			ctl_command(s, c, (char *)c->in);
		}
		if (c->fd == -1)
			return;
		c->inlen -= (size_t)(nl + 1 - c->in);
		memmove(c->in, nl + 1, c->inlen);
	}
	if (c->fd == -1)
		return;
	if (c->inlen > CTL_LINE_MAX + 1) {
		if (!c->discard)
			ctl_error(c, "line longer than %d bytes", CTL_LINE_MAX);
		c->discard = 1;
		c->inlen = 0;
	}
	if (c->fd != -1 && buf_flush(&c->out, c->fd, 1) == -1)
		conn_close(c);
}

/* Set-up and tear-down. */

static int
tcp_listen(struct sim *s)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int one = 1;

	s->tcp_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (s->tcp_fd == -1) {
		log_warn("tcp: socket: %s", strerror(errno));
		return -1;
	}
	setsockopt(s->tcp_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	/* Loopback only: Modbus has no authentication at all. */
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)s->tcp_port);
	if (bind(s->tcp_fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    listen(s->tcp_fd, 16) == -1 ||
	    getsockname(s->tcp_fd, (struct sockaddr *)&sin, &len) == -1) {
		log_warn("tcp: 127.0.0.1:%d: %s", s->tcp_port, strerror(errno));
		return -1;
	}
	s->tcp_port = ntohs(sin.sin_port);
	return 0;
}

static int
rtu_open(struct sim *s)
{
	struct rtu *r = &s->rtu;
	struct termios t;
	struct stat st;
	char tmp[PATH_MAX];

	if ((r->master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)) == -1 ||
	    grantpt(r->master) == -1 || unlockpt(r->master) == -1 ||
	    ptsname_r(r->master, r->pts, sizeof(r->pts)) != 0) {
		log_warn("rtu: pseudo-terminal: %s", strerror(errno));
		return -1;
	}
	/*
	 * Holding the slave open keeps the master from seeing EIO and
	 * hang-ups while no client has the line open.
	 */
	if ((r->slave = open(r->pts, O_RDWR | O_NOCTTY | O_CLOEXEC)) == -1 ||
	    tcgetattr(r->slave, &t) == -1) {
		log_warn("rtu: %s: %s", r->pts, strerror(errno));
		return -1;
	}
	cfmakeraw(&t);
	cfsetspeed(&t, B115200);
	t.c_cflag |= CLOCAL | CREAD;
	if (tcsetattr(r->slave, TCSANOW, &t) == -1 ||
	    fcntl(r->master, F_SETFL, O_NONBLOCK) == -1) {
		log_warn("rtu: %s: %s", r->pts, strerror(errno));
		return -1;
	}
	if (lstat(r->link, &st) == 0 && !S_ISLNK(st.st_mode)) {
		log_warn("rtu: %s exists and is not a symlink", r->link);
		return -1;
	}
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", r->link,
	    (long)getpid()) >= sizeof(tmp)) {
		log_warn("rtu: %s: path too long", r->link);
		return -1;
	}
	unlink(tmp);
	if (symlink(r->pts, tmp) == -1 || rename(tmp, r->link) == -1) {
		log_warn("rtu: %s: %s", r->link, strerror(errno));
		unlink(tmp);
		return -1;
	}
	r->linked = 1;
	return 0;
}

static int
ctl_listen(struct sim *s)
{
	struct sockaddr_un sun;
	struct stat st;
	mode_t old;
	int fd, busy;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(s->ctl_path) >= sizeof(sun.sun_path)) {
		log_warn("control: %s: path too long", s->ctl_path);
		return -1;
	}
	memcpy(sun.sun_path, s->ctl_path, strlen(s->ctl_path) + 1);
	if (lstat(s->ctl_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_warn("control: %s exists and is not a socket",
			    s->ctl_path);
			return -1;
		}
		/* A socket nobody answers on is left over: replace it. */
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
			return -1;
		busy = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
		close(fd);
		if (busy) {
			log_warn("control: %s is in use", s->ctl_path);
			return -1;
		}
		unlink(s->ctl_path);
	}
	s->ctl_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (s->ctl_fd == -1) {
		log_warn("control: socket: %s", strerror(errno));
		return -1;
	}
	old = umask(077);
	if (bind(s->ctl_fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		umask(old);
		log_warn("control: %s: %s", s->ctl_path, strerror(errno));
		return -1;
	}
	umask(old);
	s->ctl_bound = 1;
	if (listen(s->ctl_fd, 8) == -1) {
		log_warn("control: %s: %s", s->ctl_path, strerror(errno));
		return -1;
	}
	return 0;
}

static int
ready_write(struct sim *s)
{
	char tmp[PATH_MAX];
	FILE *f;
	int bad;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", s->ready_path,
	    (long)getpid()) >= sizeof(tmp)) {
		log_warn("%s: path too long", s->ready_path);
		return -1;
	}
	if ((f = fopen(tmp, "w")) == NULL) {
		log_warn("%s: %s", tmp, strerror(errno));
		return -1;
	}
	fprintf(f, "tcp=%d rtu=%s control=%s\n",
	    s->tcp_fd != -1 ? s->tcp_port : 0,
	    s->rtu.link ? s->rtu.link : "", s->ctl_path ? s->ctl_path : "");
	bad = ferror(f);
	if (fclose(f) != 0 || bad || rename(tmp, s->ready_path) == -1) {
		log_warn("%s: %s", s->ready_path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	s->ready_written = 1;
	return 0;
}

static int
signals_open(struct sim *s)
{
	sigset_t set;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1 ||
	    (s->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) ==
	    -1) {
		log_warn("signalfd: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static void
signal_dispatch(struct sim *s)
{
	struct signalfd_siginfo si;

	while (read(s->sig_fd, &si, sizeof(si)) == sizeof(si)) {
		log_debug(s, "signal %u, stopping", si.ssi_signo);
		s->quit = 1;
	}
}

static void
sim_close(struct sim *s)
{
	int i;

	for (i = 0; i < TCP_CLIENTS_MAX; i++)
		conn_close(&s->tcp[i]);
	for (i = 0; i < CTL_CLIENTS_MAX; i++)
		conn_close(&s->ctl[i]);
	if (s->tcp_fd != -1)
		close(s->tcp_fd);
	if (s->rtu.master != -1)
		close(s->rtu.master);
	if (s->rtu.slave != -1)
		close(s->rtu.slave);
	if (s->rtu.linked)
		unlink(s->rtu.link);
	buf_free(&s->rtu.out);
	if (s->ctl_fd != -1)
		close(s->ctl_fd);
	if (s->ctl_bound)
		unlink(s->ctl_path);
	if (s->ready_written)
		unlink(s->ready_path);
	if (s->sig_fd != -1)
		close(s->sig_fd);
	free(s->wlog);
	free(s->delayed);
	free(s->phys);
}

/* The loop. */

static int
sim_timeout(struct sim *s, int64_t now)
{
	int64_t due = physics_next_due(s->phys), d;
	size_t i;

	for (i = 0; i < s->ndelayed; i++)
		if (due < 0 || s->delayed[i].due < due)
			due = s->delayed[i].due;
	if (s->rtu.master != -1 && (s->rtu.inlen > 0 || s->rtu.skipping)) {
		d = s->rtu.last_rx + RTU_SILENCE_MS;
		if (due < 0 || d < due)
			due = d;
	}
	if (due < 0)
		return -1;
	if (due <= now)
		return 0;
	return due - now > INT_MAX ? INT_MAX : (int)(due - now);
}

static void
sim_timers(struct sim *s, int64_t now)
{
	physics_advance(s->phys, now);
	delayed_run(s, now);
	if (s->rtu.master != -1 && (s->rtu.inlen > 0 || s->rtu.skipping) &&
	    now - s->rtu.last_rx >= RTU_SILENCE_MS)
		rtu_silence(s);
}

static void
pfd_set(struct pollfd *p, int fd, const struct buf *out)
{
	p->fd = fd;
	p->events = POLLIN;
	if (out != NULL && out->off < out->len)
		p->events |= POLLOUT;
	p->revents = 0;
}

static int
sim_loop(struct sim *s)
{
	struct pollfd pfd[PFD_MAX];
	struct conn *c;
	int i, k;

	while (!s->quit) {
		pfd_set(&pfd[PFD_SIGNAL], s->sig_fd, NULL);
		pfd_set(&pfd[PFD_TCP], s->tcp_fd, NULL);
		pfd_set(&pfd[PFD_PTY], s->rtu.master, &s->rtu.out);
		pfd_set(&pfd[PFD_CTL], s->ctl_fd, NULL);
		for (i = 0; i < TCP_CLIENTS_MAX; i++)
			pfd_set(&pfd[PFD_TCP_CLIENTS + i], s->tcp[i].fd,
			    &s->tcp[i].out);
		for (i = 0; i < CTL_CLIENTS_MAX; i++)
			pfd_set(&pfd[PFD_CTL_CLIENTS + i], s->ctl[i].fd,
			    &s->ctl[i].out);
		if (poll(pfd, PFD_MAX, sim_timeout(s, now_ms())) == -1) {
			if (errno == EINTR)
				continue;
			log_warn("poll: %s", strerror(errno));
			return -1;
		}
		if (pfd[PFD_SIGNAL].revents & POLLIN)
			signal_dispatch(s);
		if (pfd[PFD_PTY].revents & POLLOUT)
			rtu_flush(s);
		if (pfd[PFD_PTY].revents & (POLLIN | POLLERR | POLLHUP) &&
		    s->rtu.master != -1)
			rtu_dispatch(s, now_ms());
		for (i = 0; i < TCP_CLIENTS_MAX + CTL_CLIENTS_MAX; i++) {
			k = PFD_TCP_CLIENTS + i;
			c = i < TCP_CLIENTS_MAX ? &s->tcp[i] :
			    &s->ctl[i - TCP_CLIENTS_MAX];
			if (pfd[k].revents == 0 || c->fd != pfd[k].fd)
				continue;
			if (pfd[k].revents & POLLOUT &&
			    buf_flush(&c->out, c->fd, 1) == -1) {
				conn_close(c);
				continue;
			}
			if (!(pfd[k].revents & (POLLIN | POLLERR | POLLHUP)))
				continue;
			if (i < TCP_CLIENTS_MAX)
				tcp_dispatch(s, i);
			else
				ctl_dispatch(s, i - TCP_CLIENTS_MAX);
		}
		if (pfd[PFD_TCP].revents & POLLIN)
			conn_accept(s, s->tcp_fd, s->tcp, TCP_CLIENTS_MAX,
			    "tcp");
		if (pfd[PFD_CTL].revents & POLLIN)
			conn_accept(s, s->ctl_fd, s->ctl, CTL_CLIENTS_MAX,
			    "control");
		sim_timers(s, now_ms());
	}
	return 0;
}

/* Arguments. */

static int
profile_load(const char *path, struct board_profile *p)
{
	char *text, err[256];
	size_t n;
	FILE *f;
	int r;

	if ((f = fopen(path, "r")) == NULL) {
		log_warn("%s: %s", path, strerror(errno));
		return -1;
	}
	if ((text = malloc(PROFILE_FILE_MAX + 1)) == NULL) {
		fclose(f);
		return -1;
	}
	n = fread(text, 1, PROFILE_FILE_MAX + 1, f);
	r = ferror(f);
	fclose(f);
	if (r || n > PROFILE_FILE_MAX) {
		log_warn("%s: %s", path, r ? "read error" : "file too large");
		free(text);
		return -1;
	}
	text[n] = '\0';
	r = board_profile_parse(text, path, p, err, sizeof(err));
	free(text);
	if (r == -1)
		log_warn("%s", err);
	return r;
}

static int
board_arg(struct sim *s, const char *arg)
{
	const struct board_profile *bp;
	struct board_profile file;
	const char *name, *colon = strchr(arg, ':');
	char unit[8];
	long long v;
	size_t i, n;

	if (colon == NULL || (size_t)(colon - arg) >= sizeof(unit)) {
		log_warn("--board %s: expected UNIT:PROFILE", arg);
		return -1;
	}
	memcpy(unit, arg, (size_t)(colon - arg));
	unit[colon - arg] = '\0';
	name = colon + 1;
	if (parse_num(unit, 1, 247, &v) == -1) {
		log_warn("--board %s: unit must be 1..247", arg);
		return -1;
	}
	n = strlen(name);
	if (strchr(name, '/') != NULL ||
	    (n > 4 && strcmp(name + n - 4, ".ini") == 0)) {
		if (profile_load(name, &file) == -1)
			return -1;
		bp = &file;
	} else if ((bp = board_builtin(name)) == NULL) {
		log_warn("--board %s: no profile '%s'; built in:", arg, name);
		for (i = 0; i < board_builtin_count(); i++)
			fprintf(stderr, "  %s\n", board_builtin_at(i)->name);
		return -1;
	}
	for (i = 0; i < (size_t)s->nspecs; i++)
		if (s->specs[i].unit == v) {
			log_warn("--board %s: unit %lld given twice", arg, v);
			return -1;
		}
	if (s->nspecs == PHYSICS_BOARDS_MAX) {
		log_warn("--board %s: at most %d boards", arg,
		    PHYSICS_BOARDS_MAX);
		return -1;
	}
	s->specs[s->nspecs].unit = (int)v;
	s->specs[s->nspecs].profile = *bp;
	s->nspecs++;
	return 0;
}

static void
usage_hint(void)
{
	fprintf(stderr, "usage: locksim [options] --board UNIT:PROFILE ... "
	    "--tcp PORT | --rtu PATH\n(locksim --help for details)\n");
}

enum {
	OPT_BOARD = 256,
	OPT_TCP,
	OPT_RTU,
	OPT_CONTROL,
	OPT_AUTO,
	OPT_SPRING,
	OPT_SEED,
	OPT_READY,
	OPT_HELP,
};

static int
args_parse(struct sim *s, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "board", required_argument, NULL, OPT_BOARD },
		{ "tcp", required_argument, NULL, OPT_TCP },
		{ "rtu", required_argument, NULL, OPT_RTU },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "auto", no_argument, NULL, OPT_AUTO },
		{ "spring-ms", required_argument, NULL, OPT_SPRING },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "ready-file", required_argument, NULL, OPT_READY },
		{ "help", no_argument, NULL, OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	long long v;
	int o;

	while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (o) {
		case OPT_BOARD:
			if (board_arg(s, optarg) == -1)
				return -1;
			break;
		case OPT_TCP:
			if (parse_num(optarg, 0, 65535, &v) == -1) {
				log_warn("--tcp %s: port must be 0..65535",
				    optarg);
				return -1;
			}
			s->tcp_port = (int)v;
			break;
		case OPT_RTU:
			s->rtu.link = optarg;
			break;
		case OPT_CONTROL:
			s->ctl_path = optarg;
			break;
		case OPT_AUTO:
			s->auto_start = 1;
			break;
		case OPT_SPRING:
			if (parse_num(optarg, 0, 60000, &v) == -1) {
				log_warn("--spring-ms %s: must be 0..60000",
				    optarg);
				return -1;
			}
			s->spring_ms = (int)v;
			break;
		case OPT_SEED:
			if (parse_num(optarg, 0, LLONG_MAX, &v) == -1) {
				log_warn("--seed %s: must be a number 0..%lld",
				    optarg, LLONG_MAX);
				return -1;
			}
			s->seed = v;
			break;
		case OPT_READY:
			s->ready_path = optarg;
			break;
		case 'v':
			s->verbose = 1;
			break;
		case 'h':
		case OPT_HELP:
			fputs(usage_text, stdout);
			exit(0);
		default:
			usage_hint();
			return -1;
		}
	}
	if (optind < argc) {
		log_warn("unexpected argument '%s'", argv[optind]);
		usage_hint();
		return -1;
	}
	if (s->nspecs == 0 || (s->tcp_port < 0 && s->rtu.link == NULL)) {
		log_warn("need at least one --board and one of --tcp, --rtu");
		usage_hint();
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct sim s;
	struct timespec ts;
	int i, rc = 1;

	memset(&s, 0, sizeof(s));
	s.tcp_port = -1;
	s.tcp_fd = s.ctl_fd = s.sig_fd = -1;
	s.rtu.master = s.rtu.slave = -1;
	s.spring_ms = PHYSICS_SPRING_MS;
	s.seed = -1;
	for (i = 0; i < TCP_CLIENTS_MAX; i++)
		s.tcp[i].fd = -1;
	for (i = 0; i < CTL_CLIENTS_MAX; i++)
		s.ctl[i].fd = -1;
	s.phys = calloc(1, sizeof(*s.phys));
	s.wlog = calloc(WRITES_MAX, sizeof(*s.wlog));
	s.delayed = calloc(DELAYED_MAX, sizeof(*s.delayed));
	if (s.phys == NULL || s.wlog == NULL || s.delayed == NULL) {
		log_warn("out of memory");
		goto done;
	}
	if (args_parse(&s, argc, argv) == -1) {
		rc = 2;
		goto done;
	}
	if (s.seed < 0) {
		/* Kept below 2^53 so that any JSON reader takes it exactly. */
		clock_gettime(CLOCK_REALTIME, &ts);
		s.seed = (int64_t)(((uint64_t)ts.tv_nsec << 20 ^
		    (uint64_t)ts.tv_sec ^ (uint64_t)getpid() << 40) &
		    ((1ULL << 53) - 1));
	}
	physics_init(s.phys, s.spring_ms, (uint64_t)s.seed);
	for (i = 0; i < s.nspecs; i++)
		s.boards[s.nboards++].pb = physics_board_add(s.phys,
		    s.specs[i].unit, &s.specs[i].profile);
	physics_set_auto(s.phys, s.auto_start, now_ms());
	log_debug(&s, "seed %lld", (long long)s.seed);

	if (signals_open(&s) == -1)
		goto done;
	if (s.tcp_port >= 0 && tcp_listen(&s) == -1)
		goto done;
	if (s.rtu.link != NULL && rtu_open(&s) == -1)
		goto done;
	if (s.ctl_path != NULL && ctl_listen(&s) == -1)
		goto done;
	if (s.ready_path != NULL && ready_write(&s) == -1)
		goto done;
	log_debug(&s, "serving: tcp=%d rtu=%s (%s) control=%s",
	    s.tcp_fd != -1 ? s.tcp_port : 0, s.rtu.link ? s.rtu.link : "",
	    s.rtu.pts, s.ctl_path ? s.ctl_path : "");
	rc = sim_loop(&s) == 0 ? 0 : 1;
done:
	sim_close(&s);
	return rc;
}
