/*
 * libFuzzer target: hostile lines on the operator control socket. Each
 * line is parsed as controller/jsonl.c parses it and its fields are read
 * as controller/ctl.c reads them; the reply is built with jsonl_error()
 * and serialised, as a client would receive it.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *
reply_cell(json_t *req, int *cell)
{
	json_t *v = json_object_get(req, "cell");

	if (v == NULL)
		return jsonl_error("missing field 'cell'");
	if (!json_is_integer(v))
		return jsonl_error("field 'cell' must be an integer");
	if (json_integer_value(v) < 1 || json_integer_value(v) > 999)
		return jsonl_error("no cell %lld in this locker",
		    (long long)json_integer_value(v));
	*cell = (int)json_integer_value(v);
	return NULL;
}

/* The field walk of ctl_handle(), without a locker behind it. */
static json_t *
handle(json_t *req)
{
	json_t *op = json_object_get(req, "op"), *v, *err;
	const char *name;
	int cell;

	if (!json_is_string(op))
		return jsonl_error("missing field 'op' (a string)");
	name = json_string_value(op);
	/* ctl.c compares with strcmp(): without JSON_ALLOW_NUL, no NUL. */
	if (strlen(name) != json_string_length(op))
		__builtin_trap();
	if (strcmp(name, "ping") == 0 || strcmp(name, "state") == 0)
		return json_pack("{s:b}", "ok", 1);
	if (strcmp(name, "open") == 0) {
		if ((err = reply_cell(req, &cell)) != NULL)
			return err;
		return json_pack("{s:b, s:i}", "ok", 1, "cell", cell);
	}
	if (strcmp(name, "service") == 0) {
		if ((err = reply_cell(req, &cell)) != NULL)
			return err;
		v = json_object_get(req, "in");
		if (!json_is_boolean(v))
			return jsonl_error("field 'in' must be true or false");
		return json_pack("{s:b, s:b}", "ok", 1, "in", json_is_true(v));
	}
	if (strcmp(name, "events") == 0) {
		v = json_object_get(req, "after");
		if (v != NULL && !json_is_integer(v))
			return jsonl_error("field 'after' must be an integer");
		return json_pack("{s:b, s:I}", "ok", 1, "after",
		    v ? json_integer_value(v) : (json_int_t)0);
	}
	return jsonl_error("unknown op '%.40s' (ping, open, service, state, "
	    "events)", name);
}

/* client_line() and client_reply() of controller/jsonl.c. */
static void
line(const char *s, size_t len)
{
	json_error_t jerr;
	json_t *req, *reply;
	char *out;

	if (len == 0)
		return;
	req = json_loadb(s, len, JSON_REJECT_DUPLICATES, &jerr);
	if (req == NULL)
		reply = jsonl_error("bad JSON at column %d: %s", jerr.column,
		    jerr.text);
	else if (!json_is_object(req))
		reply = jsonl_error("a request must be a JSON object");
	else
		reply = handle(req);
	json_decref(req);
	/* client_reply() papers over this with "internal error", but every
	 * reply above is meant to be built; NULL means one could not be. */
	if (reply == NULL)
		__builtin_trap();
	out = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	if (out == NULL || strchr(out, '\n') != NULL)
		__builtin_trap();
	free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data, *nl;
	size_t len;

	/* Split into lines; one longer than the socket takes is skipped. */
	while (size > 0) {
		nl = memchr(s, '\n', size);
		len = nl ? (size_t)(nl - s) : size;
		if (len <= JSONL_LINE_MAX)
			line(s, len);
		if (nl == NULL)
			break;
		size -= len + 1;
		s += len + 1;
	}
	return 0;
}
