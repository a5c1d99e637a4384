/*
 * mbping: the bare libmodbus write round trip, the baseline beside which
 * make bench puts lockerd's unlock latency. Writes one coil on and off
 * COUNT times and prints one JSON line per write with CLOCK_MONOTONIC
 * start and end times (seconds), which bench.py pairs with locksim's log.
 * usage: mbping (--tcp HOST:PORT | --rtu DEVICE[:BAUD]) UNIT COIL COUNT
 */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	char host[256], *colon;
	modbus_t *ctx;
	int unit, coil, count, i, baud = 115200;
	double t0, t1;

	if (argc != 6 || (strcmp(argv[1], "--tcp") && strcmp(argv[1], "--rtu"))) {
		fprintf(stderr, "usage: mbping (--tcp HOST:PORT | --rtu "
		    "DEVICE[:BAUD]) UNIT COIL COUNT\n");
		return 2;
	}
	snprintf(host, sizeof(host), "%s", argv[2]);
	colon = strrchr(host, ':');
	if (strcmp(argv[1], "--tcp") == 0) {
		if (colon == NULL) {
			fprintf(stderr, "mbping: --tcp needs HOST:PORT\n");
			return 2;
		}
		*colon = '\0';
		ctx = modbus_new_tcp_pi(host, colon + 1);
	} else {
		if (colon != NULL) {
			*colon = '\0';
			baud = atoi(colon + 1);
		}
		ctx = modbus_new_rtu(host, baud, 'N', 8, 1);
	}
	unit = atoi(argv[3]);
	coil = atoi(argv[4]);
	count = atoi(argv[5]);
	if (ctx == NULL || modbus_connect(ctx) == -1) {
		fprintf(stderr, "mbping: connect: %s\n", modbus_strerror(errno));
		return 1;
	}
	modbus_set_slave(ctx, unit);
	modbus_set_response_timeout(ctx, 1, 0);
	for (i = 0; i < count; i++) {
		modbus_flush(ctx);
		t0 = now_s();
		if (modbus_write_bit(ctx, coil, i % 2 == 0) == -1) {
			fprintf(stderr, "mbping: write: %s\n",
			    modbus_strerror(errno));
			return 1;
		}
		t1 = now_s();
		printf("{\"i\":%d,\"start\":%.9f,\"end\":%.9f}\n", i, t0, t1);
		usleep(2000);
	}
	if (count % 2 == 1 && modbus_write_bit(ctx, coil, 0) == -1)
		fprintf(stderr, "mbping: last write: %s\n",
		    modbus_strerror(errno));
	modbus_close(ctx);
	modbus_free(ctx);
	return 0;
}
