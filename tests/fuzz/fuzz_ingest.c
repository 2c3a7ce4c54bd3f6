/*
 * fuzz_ingest.c - libFuzzer target for ingest_parse(): arbitrary published bodies,
 * single and batch, with and without an Idempotency-Key.
 *
 * Input layout: byte 0 picks the mode (bit 0: batch, bit 1: send an Idempotency-Key);
 * with a key, byte 1 is its length L (0..255, so empty keys are tried too) and the next
 * L bytes are the key (cut at its first NUL, as a C string would be); the rest is the body.
 *
 * Invariants checked on INGEST_OK (a violation is __builtin_trap()):
 * - the event count is 1, or the batch array's size;
 * - every envelope is valid JSON of exactly {"id","type","key","timestamp","data"},
 *   envelope_len is its strlen, "id" is the event id, "type" the event type, "key" the
 *   event key (or null), and "data" equals the body's data (or null when absent);
 * - ingest_free frees everything (LeakSanitizer checks at exit of each run).
 * On any other result: nothing is returned and `why` holds a NUL-terminated reason.
 *
 * Single-threaded, like every libFuzzer target.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest.h"

#define NOW_MS 1764000000123LL /* a fixed clock so runs are comparable */
#define WHY_MAX 256            /* bytes, like the HTTP handler's buffer */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

/* Integers as reals: data may hold integers of any size. Duplicate keys are left to
 * jansson's last-wins, applied the same way to the body and to each envelope. */
#define LOAD_FLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

/*
 * jansson refuses "\u0000" inside object keys, which is valid JSON. Rewrites every
 * \u0000 escape inside strings to \u0001 (same length) in a copy, so the body and the
 * envelopes can still be compared; both sides get the same rewrite. Returns the parsed
 * value or NULL.
 */
static json_t *load_json(const char *text, size_t len)
{
	json_error_t err;
	json_t *v = NULL;
	char *copy = NULL;
	int in_string = 0;

	v = json_loadb(text, len, LOAD_FLAGS, &err);
	if (v || json_error_code(&err) != json_error_null_byte_in_key)
		goto out;
	copy = malloc(len);
	REQUIRE(copy != NULL);
	memcpy(copy, text, len);
	for (size_t i = 0; i < len; i++) {
		if (copy[i] == '"') {
			in_string = !in_string;
		} else if (in_string && copy[i] == '\\' && i + 1 < len) {
			if (len - i >= 6 && memcmp(copy + i + 1, "u0000", 5) == 0)
				copy[i + 5] = '1';
			i++; /* the escaped character */
		}
	}
	v = json_loadb(copy, len, LOAD_FLAGS, NULL);
out:
	free(copy);
	return v;
}

static void check_envelope(const struct store_event *ev, json_t *source)
{
	json_t *env = NULL;
	json_t *v;
	json_t *want_data;

	REQUIRE(ev->envelope != NULL);
	REQUIRE(strlen(ev->envelope) == ev->envelope_len);
	env = load_json(ev->envelope, ev->envelope_len);
	REQUIRE(env != NULL);
	REQUIRE(json_is_object(env) && json_object_size(env) == 5);

	v = json_object_get(env, "id");
	REQUIRE(json_is_string(v) && strcmp(json_string_value(v), ev->id) == 0);
	REQUIRE(strncmp(ev->id, "evt_", 4) == 0);

	v = json_object_get(env, "type");
	REQUIRE(json_is_string(v) && ev->type != NULL &&
	        strcmp(json_string_value(v), ev->type) == 0);

	v = json_object_get(env, "key");
	if (ev->key == NULL)
		REQUIRE(json_is_null(v));
	else
		REQUIRE(json_is_string(v) && strcmp(json_string_value(v), ev->key) == 0);

	REQUIRE(json_is_string(json_object_get(env, "timestamp")));

	/* Serialize once: the envelope's data is the publisher's value. */
	want_data = json_object_get(source, "data");
	v = json_object_get(env, "data");
	REQUIRE(v != NULL);
	if (want_data == NULL)
		REQUIRE(json_is_null(v));
	else
		REQUIRE(json_equal(v, want_data));
	json_decref(env);
}

/* Splits the input into mode, key and body. Returns 0, or -1 if it is too short. */
static int split_input(const uint8_t **data, size_t *size, int *batch, char key[256],
                       const char **idem)
{
	size_t klen;
	int rc = -1;

	if (*size < 1)
		goto out;
	*batch = (*data)[0] & 1;
	*idem = NULL;
	if ((*data)[0] & 2) {
		if (*size < 2 || *size - 2 < (*data)[1])
			goto out;
		klen = (*data)[1];
		memcpy(key, *data + 2, klen);
		key[klen] = '\0';
		*idem = key;
		*data += 2 + klen;
		*size -= 2 + klen;
	} else {
		*data += 1;
		*size -= 1;
	}
	rc = 0;
out:
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char key[256];
	char why[WHY_MAX];
	const char *idem = NULL;
	struct ingest *in = NULL;
	struct store_event *events;
	json_t *root = NULL;
	enum ingest_rc rc;
	size_t n;
	int batch = 0;

	if (split_input(&data, &size, &batch, key, &idem) != 0)
		goto out;

	/* libFuzzer's buffer ends exactly at `size`, so ASan sees any read past the body. */
	memset(why, 'x', sizeof(why));
	rc = ingest_parse((const char *)data, size, batch, idem, NOW_MS, &in, why, sizeof(why));
	if (rc != INGEST_OK) {
		REQUIRE(rc == INGEST_MALFORMED || rc == INGEST_INVALID || rc == INGEST_NOMEM);
		REQUIRE(in == NULL);
		REQUIRE(memchr(why, '\0', sizeof(why)) != NULL && why[0] != '\0');
		goto out;
	}
	REQUIRE(in != NULL);

	root = load_json((const char *)data, size);
	REQUIRE(root != NULL); /* ingest accepted it, so it is JSON */
	n = ingest_count(in);
	if (batch)
		REQUIRE(json_is_array(root) && n == json_array_size(root) && n >= 1 &&
		        n <= INGEST_BATCH_MAX);
	else
		REQUIRE(json_is_object(root) && n == 1);

	events = ingest_events(in);
	for (size_t i = 0; i < n; i++) {
		json_t *source = batch ? json_array_get(root, i) : root;
		json_t *id = json_object_get(source, "id");

		check_envelope(&events[i], source);
		REQUIRE(events[i].created_at_ms == NOW_MS);
		/* The body's "id" wins; the header applies to a single event only. */
		if (json_is_string(id))
			REQUIRE(events[i].idempotency_key != NULL &&
			        strcmp(events[i].idempotency_key, json_string_value(id)) == 0);
		else if (!batch && idem != NULL)
			REQUIRE(events[i].idempotency_key != NULL &&
			        strcmp(events[i].idempotency_key, idem) == 0);
		else
			REQUIRE(events[i].idempotency_key == NULL);
	}
out:
	json_decref(root);
	ingest_free(in);
	return 0;
}
