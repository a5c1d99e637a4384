/*
 * Code benchmarks: issuing codes and verifying them with many live
 * reservations, through the same calls lockerd makes (codes_generate,
 * codes_hash with the device key, resv_code_taken / resv_code_set,
 * resv_enter). No I/O: this is the work between a keypad line and the
 * durable commit. Prints one JSON line per figure.
 *
 *   codebench [LIVE] [ROUNDS]     defaults 10000 and 2000
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bank.h"
#include "codes.h"
#include "resv.h"

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void
report(const char *name, const char *what, double *v, int n, int live)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	printf("{\"bench\": \"%s\", \"median\": %.2f, \"p99\": %.2f, "
	    "\"min\": %.2f, \"n\": %d, \"live\": %d, \"unit\": \"us\", "
	    "\"what\": \"%s\"}\n", name, v[n / 2], v[n * 99 / 100], v[0], n,
	    live, what);
}

int
main(int argc, char **argv)
{
	static const struct bank_timing bt = { 50, 1000, 1, 120000, 300000 };
	struct resv_timing rt = { 120000, 7 * 86400 * 1000LL };
	int live = argc > 1 ? atoi(argv[1]) : 10000;
	int rounds = argc > 2 ? atoi(argv[2]) : 2000;
	struct resv_actions *out = calloc(1, sizeof(*out));
	struct bank_cell *cells;
	struct bank_board board = { 1, 1, 0 };
	struct codes_keys *keys;
	struct resv_table t;
	struct bank b;
	char (*codes)[CODES_DIGITS_MAX + 1];
	uint8_t h[CODES_HASH_LEN];
	double *v, t0, t1;
	int i, slot, s;

	if (live < 1 || rounds < 1 || rounds > live || out == NULL ||
	    codes_init() == -1 || (keys = codes_keys_new()) == NULL) {
		fprintf(stderr, "usage: codebench [LIVE] [ROUNDS <= LIVE]\n");
		return 2;
	}
	cells = calloc((size_t)live, sizeof(*cells));
	codes = calloc((size_t)live, sizeof(*codes));
	v = calloc((size_t)live, sizeof(*v));
	if (cells == NULL || codes == NULL || v == NULL)
		return 1;
	for (i = 0; i < live; i++) {
		cells[i].number = i + 1;
		cells[i].size = 'S';
		cells[i].door = BANK_DOOR_CLOSED;
		cells[i].in_service = 1;
		cells[i].item = -1;
	}
	bank_init(&b, cells, live, &board, 1, &bt);
	if (resv_init(&t, &b, &rt, 1) == -1)
		return 1;
	/* Issuance: reserve, then a unique code as lockerd makes it. */
	t0 = now_us();
	for (i = 0; i < live; i++) {
		out->n = 0;
		if (resv_reserve(&t, "A-1", 'S', INT64_MAX / 2, NULL, 0, out,
		    &slot) != RESV_OK)
			return 1;
		do {
			codes_generate(codes[i], 10);
			codes_hash(keys, "code", codes[i], h);
		} while (resv_code_taken(&t, h));
		out->n = 0;
		resv_code_set(&t, slot, h, 0, out);
	}
	t1 = now_us();
	printf("{\"bench\": \"code_issue_rate\", \"value\": %.0f, "
	    "\"unit\": \"codes/s\", \"live_at_end\": %d, \"what\": \"reserve + "
	    "unique 10-digit code + keyed hash, growing to %d live\"}\n",
	    live / ((t1 - t0) / 1e6), live, live);
	/* Verification of a right code: hash + lookup + consume. */
	for (i = 0; i < rounds; i++) {
		int k = (int)((uint64_t)i * 7919 % (uint64_t)live);

		t0 = now_us();
		codes_hash(keys, "code", codes[k], h);
		out->n = 0;
		s = resv_enter(&t, h, NULL, 1, out, &slot);
		t1 = now_us();
		if (s != RESV_OK && s != RESV_ERR_USED)
			return 1;
		v[i] = t1 - t0;
	}
	report("code_verify_us", "right code: keyed hash + lookup among live "
	    "codes + consume", v, rounds, live);
	for (i = 0; i < rounds; i++) {
		char wrong[11];

		snprintf(wrong, sizeof(wrong), "%010d", i * 48271 % 1000000000);
		t0 = now_us();
		codes_hash(keys, "code", wrong, h);
		out->n = 0;
		s = resv_enter(&t, h, NULL, 1, out, &slot);
		t1 = now_us();
		v[i] = t1 - t0;
	}
	report("code_reject_us", "wrong code: keyed hash + lookup among live "
	    "codes", v, rounds, live);
	resv_free(&t);
	codes_keys_free(keys);
	free(cells);
	free(codes);
	free(v);
	free(out);
	return 0;
}
