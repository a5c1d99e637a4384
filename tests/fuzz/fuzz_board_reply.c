/*
 * libFuzzer target: a hostile board reply, read the way controller/mb.c
 * reads it, through libmodbus over a socketpair. The first byte picks the
 * request (even: the FC02 input poll, odd: the Waveshare "flash" write and
 * its echo check); the rest is what the "board" sends back.
 */
#include <errno.h>
#include <fcntl.h>
#include <modbus.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "board.h"

#define FUZZ_REPLY_MAX 300
#define FUZZ_UNIT 1

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* As read_inputs() in controller/mb.c, on the generic-24 profile. */
static void
poll_inputs(modbus_t *ctx, const struct board_profile *p)
{
	uint8_t bits[BOARD_INPUTS_MAX], door[BOARD_CHANNELS_MAX],
	    item[BOARD_CHANNELS_MAX];
	int rc, ch;

	/* libmodbus writes count bits; the rest must stay untouched. */
	memset(bits, 0xa5, sizeof(bits));
	rc = modbus_read_input_bits(ctx, p->input_base, p->input_count, bits);
	if (rc != p->input_count)
		return;
	for (ch = 0; ch < p->input_count; ch++)
		if (bits[ch] > 1)
			__builtin_trap();
	for (ch = p->input_count; ch < BOARD_INPUTS_MAX; ch++)
		if (bits[ch] != 0xa5)
			__builtin_trap();
	board_decode_inputs(p, bits, door, item);
	for (ch = 0; ch < p->channels; ch++)
		if (door[ch] > 1 || item[ch] > 1)
			__builtin_trap();
}

/* As write_flash() in controller/mb.c: FC05 sent raw, echo compared. */
static void
write_flash(modbus_t *ctx, const struct board_profile *p)
{
	int addr = board_flash_addr(p, 1), val = board_flash_value(p);
	uint8_t req[6], rsp[MODBUS_TCP_MAX_ADU_LENGTH];
	int hl, rc;

	req[0] = FUZZ_UNIT;
	req[1] = 0x05;
	req[2] = (uint8_t)(addr >> 8);
	req[3] = (uint8_t)addr;
	req[4] = (uint8_t)(val >> 8);
	req[5] = (uint8_t)val;
	if (modbus_send_raw_request(ctx, req, sizeof(req)) == -1)
		return;
	rc = modbus_receive_confirmation(ctx, rsp);
	if (rc == -1)
		return;
	if (rc > (int)sizeof(rsp))
		__builtin_trap();
	hl = modbus_get_header_length(ctx);
	if (rc < hl + 5 || memcmp(rsp + hl, req + 1, 5) != 0)
		return;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct board_profile *p;
	modbus_t *ctx;
	int sv[2];
	ssize_t n;

	if (size < 1)
		return 0;
	p = board_builtin((data[0] & 1) ? "waveshare-relay-d" : "generic-24");
	if (p == NULL)
		__builtin_trap();
	data++;
	size--;
	if (size > FUZZ_REPLY_MAX)
		size = FUZZ_REPLY_MAX;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
		return 0;
	/* The whole reply is queued before the request goes out; then EOF,
	 * so that a short reply fails at once instead of timing out. */
	if (fcntl(sv[1], F_SETFL, O_NONBLOCK) == -1 ||
	    (size > 0 && (n = write(sv[1], data, size)) != (ssize_t)size) ||
	    shutdown(sv[1], SHUT_WR) == -1) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	if ((ctx = modbus_new_tcp("127.0.0.1", 1)) == NULL) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	modbus_set_socket(ctx, sv[0]);
	modbus_set_error_recovery(ctx, MODBUS_ERROR_RECOVERY_NONE);
	modbus_set_response_timeout(ctx, 0, 20000);
	modbus_set_slave(ctx, FUZZ_UNIT);
	if (p->unlock == BOARD_UNLOCK_FLASH)
		write_flash(ctx, p);
	else
		poll_inputs(ctx, p);
	/* modbus_close() closes sv[0]; sv[1] is ours. */
	modbus_close(ctx);
	modbus_free(ctx);
	close(sv[1]);
	return 0;
}
