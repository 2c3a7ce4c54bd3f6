/*
 * test_ingest.c - ingest_parse: validation, limits, and envelopes that carry the
 * publisher's data bytes exactly (minus insignificant white space).
 */
#include <jansson.h>
#include <string.h>

#include "check.h"
#include "ingest.h"

static char why[384];

/* Parses body; returns the rc and (for single events) the envelope's "data" text. */
static enum ingest_rc parse(const char *body, int batch, struct ingest **out)
{
	return ingest_parse(body, strlen(body), batch, NULL, 1795543672112, out, why, sizeof(why));
}

/* The text after "data": in the envelope, without the closing brace. */
static int data_is(struct ingest *in, size_t i, const char *want)
{
	const char *env = ingest_events(in)[i].envelope;
	const char *d = strstr(env, ",\"data\":");
	size_t len;
	if (!d)
		return 0;
	d += strlen(",\"data\":");
	len = strlen(d);
	return len == strlen(want) + 1 && strncmp(d, want, len - 1) == 0 && d[len - 1] == '}';
}

static void test_exact_data(void)
{
	struct ingest *in = NULL;
	CHECK(parse("{ \"type\" : \"order.updated\", \"data\" : { \"f\" : 0.1, \"big\": "
	            "123456789012345678901234567890, \"s\": \"a  b\\n\", \"e\": 1E+2 } }",
	            0, &in) == INGEST_OK);
	CHECK(in && data_is(in, 0, "{\"f\":0.1,\"big\":123456789012345678901234567890,\"s\":\"a  b\\n\",\"e\":1E+2}"));
	if (in) {
		json_t *env = json_loads(ingest_events(in)[0].envelope, JSON_DECODE_INT_AS_REAL, NULL);
		CHECK(env != NULL);
		CHECK(strcmp(json_string_value(json_object_get(env, "id")), ingest_events(in)[0].id) == 0);
		CHECK(strcmp(json_string_value(json_object_get(env, "type")), "order.updated") == 0);
		CHECK(json_is_null(json_object_get(env, "key")));
		CHECK(strncmp(ingest_events(in)[0].id, "evt_", 4) == 0 && strlen(ingest_events(in)[0].id) == 30);
		json_decref(env);
	}
	ingest_free(in);

	/* Pretty-printed data (newlines, tabs, CRLF between tokens) is sent compact; the
	 * white space inside strings stays. */
	in = NULL;
	CHECK(parse("{\n\t\"type\": \"a\",\r\n\t\"data\": {\r\n\t\t\"x\": [\n1,\n\t2\n],\n"
	            "\t\t\"s\": \"\\n \\t\"\r\n\t}\n}\n",
	            0, &in) == INGEST_OK);
	CHECK(in && data_is(in, 0, "{\"x\":[1,2],\"s\":\"\\n \\t\"}"));
	ingest_free(in);

	/* An escaped key is still "data"; a "data" inside a string or nested is not. */
	in = NULL;
	CHECK(parse("{\"key\":\"\\\"data\\\":2\",\"type\":\"a\",\"d\\u0061ta\":{\"data\":1}}", 0,
	            &in) == INGEST_OK);
	CHECK(in && data_is(in, 0, "{\"data\":1}"));
	ingest_free(in);

	/* No data: null. A key is JSON-escaped. */
	in = NULL;
	CHECK(parse("{\"type\":\"a\",\"key\":\"k\\\"q\"}", 0, &in) == INGEST_OK);
	CHECK(in && data_is(in, 0, "null"));
	CHECK(in && strstr(ingest_events(in)[0].envelope, "\"key\":\"k\\\"q\"") != NULL);
	ingest_free(in);
}

/* A quote ends a string unless an odd run of backslashes stands before it: "\\" ends
 * with one, "\"" goes on, "\\\"" goes on. The data must come out whole either way. */
static void test_backslash_runs(void)
{
	struct ingest *in = NULL;
	CHECK(parse("{\"type\":\"a\",\"key\":\"k\\\\\",\"data\":{\"s\":\"x\\\"}\\\\\\\"]\","
	            "\"t\":\"\\\\\",\"u\":[\"\\\\\\\\\"]}}",
	            0, &in) == INGEST_OK);
	CHECK(in &&
	      data_is(in, 0, "{\"s\":\"x\\\"}\\\\\\\"]\",\"t\":\"\\\\\",\"u\":[\"\\\\\\\\\"]}"));
	CHECK(in && strstr(ingest_events(in)[0].envelope, "\"key\":\"k\\\\\"") != NULL);
	ingest_free(in);
}

static void test_batch(void)
{
	struct ingest *in = NULL;
	CHECK(parse("[ {\"type\":\"a.b\",\"data\":[1,\",]\"]} , {\"data\":{\"k\":[[]]},\"type\":\"a.c\"},{\"type\":\"x\"} ]", 1, &in) == INGEST_OK);
	CHECK(in && ingest_count(in) == 3);
	CHECK(in && data_is(in, 0, "[1,\",]\"]"));
	CHECK(in && data_is(in, 1, "{\"k\":[[]]}"));
	CHECK(in && data_is(in, 2, "null"));
	CHECK(in && strcmp(ingest_events(in)[1].type, "a.c") == 0);
	CHECK(in && strcmp(ingest_events(in)[0].id, ingest_events(in)[1].id) != 0);
	ingest_free(in);

	in = NULL;
	CHECK(parse("[{\"type\":\"a\"},{\"type\":\"a..b\"}]", 1, &in) == INGEST_INVALID);
	CHECK(in == NULL && strncmp(why, "items[1].type", 13) == 0);
	CHECK(parse("[]", 1, &in) == INGEST_INVALID);
	CHECK(parse("{\"type\":\"a\"}", 1, &in) == INGEST_INVALID);
}

static void test_errors(void)
{
	struct ingest *in = NULL;
	char deep[300];
	size_t n = 0;

	CHECK(parse("", 0, &in) == INGEST_MALFORMED);
	CHECK(parse("{\"type\":", 0, &in) == INGEST_MALFORMED);
	CHECK(parse("{\"type\":\"a\",\"type\":\"b\"}", 0, &in) == INGEST_MALFORMED); /* duplicate */
	CHECK(parse("[1]", 0, &in) == INGEST_INVALID);
	CHECK(parse("{}", 0, &in) == INGEST_INVALID && strstr(why, "type is required"));
	CHECK(parse("{\"type\":5}", 0, &in) == INGEST_INVALID && strstr(why, "must be a string"));
	CHECK(parse("{\"type\":\"a\\u0000b\"}", 0, &in) == INGEST_INVALID);
	CHECK(parse("{\"type\":\"a b\"}", 0, &in) == INGEST_INVALID);
	CHECK(parse("{\"type\":\"a\",\"key\":7}", 0, &in) == INGEST_INVALID);
	/* A member an event does not have is refused, not dropped: "payload" for "data". */
	CHECK(parse("{\"type\":\"a\",\"payload\":{\"x\":1}}", 0, &in) == INGEST_INVALID &&
	      strcmp(why, "payload: unknown field (an event has type, data, key and id)") == 0);
	CHECK(parse("{\"idempotency_key\":\"k\",\"type\":\"a\"}", 0, &in) == INGEST_INVALID &&
	      strncmp(why, "idempotency_key: unknown", 24) == 0);
	CHECK(parse("[{\"type\":\"a\"},{\"type\":\"a\",\"Data\":1}]", 1, &in) == INGEST_INVALID &&
	      strncmp(why, "items[1].Data: unknown field", 28) == 0);
	CHECK(parse("{\"type\":\"a\",\"d\\u0061ta\":1}", 0, &in) == INGEST_OK); /* escaped "data" */
	ingest_free(in);
	in = NULL;
	CHECK(parse("{\"type\":\"a\",\"id\":\"\"}", 0, &in) == INGEST_INVALID);
	CHECK(parse("{\"type\":\"a\",\"data\":\"\\u0000\"}", 0, &in) == INGEST_OK);
	ingest_free(in);
	in = NULL;
	deep[n++] = '{';
	memcpy(deep + n, "\"type\":\"a\",\"data\":", 18);
	n += 18;
	for (int i = 0; i < 64; i++)
		deep[n++] = '[';
	for (int i = 0; i < 64; i++)
		deep[n++] = ']';
	deep[n++] = '}';
	deep[n] = '\0';
	CHECK(parse(deep, 0, &in) == INGEST_INVALID && strstr(why, "deeper than 64"));
	/* 63 nested arrays plus the object: exactly at the limit. */
	memmove(deep + 19, deep + 20, n - 20);
	n -= 2;
	memmove(deep + 19 + 63, deep + 19 + 64, n - (19 + 63));
	deep[n] = '\0';
	CHECK(parse(deep, 0, &in) == INGEST_OK);
	ingest_free(in);
	in = NULL;
	/* the same event in a batch: the array around it does not count against it */
	char batch[sizeof(deep) + 2];
	snprintf(batch, sizeof(batch), "[%s]", deep);
	CHECK(parse(batch, 1, &in) == INGEST_OK);
	ingest_free(in);
	in = NULL;
	/* "id": null is no id, as "key": null is no key: a client that writes its absent
	 * fields as null is not refused, and the Idempotency-Key header still counts. */
	CHECK(parse("{\"type\":\"a\",\"id\":null,\"key\":null}", 0, &in) == INGEST_OK);
	CHECK(in && ingest_events(in)[0].idempotency_key == NULL && ingest_events(in)[0].key == NULL);
	ingest_free(in);
	in = NULL;
	static const char id_null[] = "{\"type\":\"a\",\"id\":null}";
	CHECK(ingest_parse(id_null, strlen(id_null), 0, "idem-2", 0, &in, why, sizeof(why)) ==
	      INGEST_OK);
	CHECK(in && strcmp(ingest_events(in)[0].idempotency_key, "idem-2") == 0);
	ingest_free(in);
	in = NULL;
	CHECK(ingest_parse("{\"type\":\"a\"}", 12, 0, "", 0, &in, why, sizeof(why)) == INGEST_INVALID);
	CHECK(ingest_parse("{\"type\":\"a\"}", 12, 0, "idem-1", 0, &in, why, sizeof(why)) == INGEST_OK);
	CHECK(in && strcmp(ingest_events(in)[0].idempotency_key, "idem-1") == 0);
	ingest_free(in);
}

int main(void)
{
	test_exact_data();
	test_backslash_runs();
	test_batch();
	test_errors();
	return CHECK_DONE();
}
