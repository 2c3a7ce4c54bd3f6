/*
 * ingest.c - published body -> validated events with their envelopes.
 *
 * jansson validates the whole body (UTF-8, syntax, duplicate keys) and gives us the
 * fields we check; a small scanner over the same bytes finds each event's "data" value
 * so the envelope carries the publisher's bytes, minus insignificant white space.
 * Because jansson accepted the body first, the scanner may assume valid JSON.
 *
 * Invariants: every envelope is compact, valid JSON whose "id" and "type" are the
 * event's; `root` outlives the strings the events borrow from it.
 */
#include "ingest.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "matcher.h"
#include "util.h"

struct ingest {
	json_t *root;               /* the parsed body: events borrow its strings */
	struct store_event *events; /* n of them */
	char **envelopes;           /* malloc'd, one per event */
	size_t n;
};

/* ---------- raw scanning (valid JSON assumed) ---------- */

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at the opening quote; returns the position after the closing quote. */
static const char *string_end(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return end;
}

/* Returns the position after the value starting at p. */
static const char *value_end(const char *p, const char *end)
{
	int depth = 0;

	if (p >= end)
		return end;
	if (*p == '"')
		return string_end(p, end);
	if (*p != '{' && *p != '[') {
		while (p < end && !strchr(",]} \t\r\n", *p))
			p++;
		return p;
	}
	while (p < end) {
		if (*p == '"') {
			p = string_end(p, end);
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if ((*p == '}' || *p == ']') && --depth == 0)
			return p + 1;
		p++;
	}
	return end;
}

/* Deepest nesting of arrays/objects in the body, counted without parsing it. */
static int max_depth(const char *p, const char *end)
{
	int depth = 0, deepest = 0;
	while (p < end) {
		if (*p == '"') {
			p = string_end(p, end);
			continue;
		}
		if (*p == '{' || *p == '[') {
			if (++depth > deepest)
				deepest = depth;
		} else if (*p == '}' || *p == ']') {
			depth--;
		}
		p++;
	}
	return deepest;
}

/* Finds the raw value of member "data" in the object at p. Returns 0 with the span set
 * (start == NULL when absent), or -1 if p is not an object. */
static int find_data(const char *p, const char *end, const char **start, const char **stop)
{
	*start = *stop = NULL;
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p = skip_ws(p + 1, end);
	while (p < end && *p == '"') {
		const char *key_end = string_end(p, end);
		/* Compare decoded keys: "d\u0061ta" is "data" too. */
		json_t *key = json_loadb(p, (size_t)(key_end - p), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		int is_data = key && json_string_length(key) == 4 &&
		              memcmp(json_string_value(key), "data", 4) == 0;
		json_decref(key);
		p = skip_ws(key_end, end);
		p = skip_ws(p + 1, end); /* the colon */
		const char *v_end = value_end(p, end);
		if (is_data) {
			*start = p;
			*stop = v_end;
		}
		p = skip_ws(v_end, end);
		if (p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	return 0;
}

/* The value's bytes without white space outside strings; malloc'd, NUL-terminated. */
static char *minify(const char *p, const char *end)
{
	char *out = malloc((size_t)(end - p) + 1);
	size_t n = 0;
	if (!out)
		return NULL;
	while (p < end) {
		if (*p == '"') {
			const char *s_end = string_end(p, end);
			memcpy(out + n, p, (size_t)(s_end - p));
			n += (size_t)(s_end - p);
			p = s_end;
			continue;
		}
		if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
			out[n++] = *p;
		p++;
	}
	out[n] = '\0';
	return out;
}

/* ---------- validation ---------- */

/* A string field with no NUL inside (the store and the headers are C strings). */
static int plain_string(json_t *v, size_t min, size_t max)
{
	size_t len = json_string_length(v);
	return json_is_string(v) && len >= min && len <= max && strlen(json_string_value(v)) == len;
}

/* Validates one event object and fills ev (borrowing from obj). why gets `where`. */
static int check_event(json_t *obj, const char *idem_header, const char *where,
                       struct store_event *ev, char *why, size_t whylen)
{
	json_t *type, *key, *id;
	const char *reason = NULL;

	if (!json_is_object(obj)) {
		snprintf(why, whylen, "%sthe event must be a JSON object", where);
		return -1;
	}
	type = json_object_get(obj, "type");
	key = json_object_get(obj, "key");
	id = json_object_get(obj, "id");
	if (!type) {
		snprintf(why, whylen, "%stype is required", where);
		return -1;
	}
	if (!json_is_string(type)) {
		snprintf(why, whylen, "%stype must be a string", where);
		return -1;
	}
	if (!plain_string(type, 1, MATCHER_TYPE_MAX) ||
	    event_type_check(json_string_value(type), &reason) != 0) {
		snprintf(why, whylen, "%stype: %s", where, reason ? reason : "not a valid event type");
		return -1;
	}
	if (key && !json_is_null(key) && !plain_string(key, 0, INGEST_KEY_MAX)) {
		snprintf(why, whylen, "%skey must be a string of at most %d bytes", where, INGEST_KEY_MAX);
		return -1;
	}
	if (id && !json_is_null(id) && !plain_string(id, 1, INGEST_KEY_MAX)) {
		snprintf(why, whylen, "%sid must be a string of 1 to %d bytes", where, INGEST_KEY_MAX);
		return -1;
	}
	ev->type = json_string_value(type);
	ev->key = json_is_string(key) ? json_string_value(key) : NULL;
	ev->idempotency_key = json_is_string(id) ? json_string_value(id) : idem_header;
	return 0;
}

/* Builds {"id","type","key","timestamp","data"} with the raw data bytes. */
static char *build_envelope(const struct store_event *ev, const char *data_start,
                            const char *data_stop)
{
	char ts[UTIL_TIME_MAX];
	char *data = NULL, *key = NULL, *type = NULL, *out = NULL;
	json_t *v;
	size_t len;

	util_format_time(ev->created_at_ms, ts);
	data = data_start ? minify(data_start, data_stop) : strdup("null");
	v = json_string(ev->type);
	type = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	json_decref(v);
	v = ev->key ? json_string(ev->key) : json_null();
	key = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	json_decref(v);
	if (!data || !type || !key)
		goto out;
	len = strlen(ev->id) + strlen(type) + strlen(key) + strlen(ts) + strlen(data) + 64;
	out = malloc(len);
	if (out)
		snprintf(out, len, "{\"id\":\"%s\",\"type\":%s,\"key\":%s,\"timestamp\":\"%s\",\"data\":%s}",
		         ev->id, type, key, ts, data);
out:
	free(data);
	free(type);
	free(key);
	return out;
}

enum ingest_rc ingest_parse(const char *body, size_t len, int batch, const char *idempotency_key,
                            int64_t now_ms, struct ingest **out, char *why, size_t whylen)
{
	enum ingest_rc rc = INGEST_INVALID;
	struct ingest *in = NULL;
	const char *end = body + len;
	const char *p;
	json_error_t error;
	size_t n;

	*out = NULL;
	why[0] = '\0';
	if (len == 0) {
		snprintf(why, whylen, "the request body is empty; send JSON");
		return INGEST_MALFORMED;
	}
	if (max_depth(body, end) > INGEST_DEPTH_MAX) {
		snprintf(why, whylen, "the body nests deeper than %d levels", INGEST_DEPTH_MAX);
		return INGEST_INVALID;
	}
	if (idempotency_key &&
	    (idempotency_key[0] == '\0' || strlen(idempotency_key) > INGEST_KEY_MAX)) {
		snprintf(why, whylen, "Idempotency-Key must be 1 to %d bytes", INGEST_KEY_MAX);
		return INGEST_INVALID;
	}
	in = calloc(1, sizeof(*in));
	if (!in)
		return INGEST_NOMEM;
	/* Integers as reals: data may hold integers of any size; we keep its raw bytes. */
	in->root = json_loadb(body, len,
	                      JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL |
	                          JSON_DECODE_INT_AS_REAL,
	                      &error);
	if (!in->root) {
		snprintf(why, whylen, "invalid JSON at line %d, column %d: %s", error.line, error.column,
		         error.text);
		rc = INGEST_MALFORMED;
		goto out;
	}
	if (batch && (!json_is_array(in->root) || json_array_size(in->root) == 0 ||
	              json_array_size(in->root) > INGEST_BATCH_MAX)) {
		snprintf(why, whylen, "the body must be a JSON array of 1 to %d events", INGEST_BATCH_MAX);
		goto out;
	}
	n = batch ? json_array_size(in->root) : 1;
	in->events = calloc(n, sizeof(*in->events));
	in->envelopes = calloc(n, sizeof(*in->envelopes));
	if (!in->events || !in->envelopes) {
		rc = INGEST_NOMEM;
		goto out;
	}
	p = skip_ws(body, end);
	if (batch)
		p = skip_ws(p + 1, end); /* into the array */
	for (size_t i = 0; i < n; i++) {
		struct store_event *ev = &in->events[i];
		json_t *obj = batch ? json_array_get(in->root, i) : in->root;
		const char *data_start, *data_stop, *item_end = value_end(p, end);
		char where[32] = "";

		if (batch)
			snprintf(where, sizeof(where), "items[%zu].", i);
		if (check_event(obj, batch ? NULL : idempotency_key, where, ev, why, whylen) != 0)
			goto out;
		find_data(p, item_end, &data_start, &data_stop);
		ev->created_at_ms = now_ms;
		if (util_new_event_id(now_ms, ev->id) != 0) {
			snprintf(why, whylen, "no entropy for an event id");
			rc = INGEST_NOMEM;
			goto out;
		}
		in->envelopes[i] = build_envelope(ev, data_start, data_stop);
		if (!in->envelopes[i]) {
			rc = INGEST_NOMEM;
			goto out;
		}
		in->n = i + 1;
		ev->envelope = in->envelopes[i];
		ev->envelope_len = strlen(in->envelopes[i]);
		p = skip_ws(item_end, end);
		if (p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	*out = in;
	in = NULL;
	rc = INGEST_OK;
out:
	if (rc == INGEST_NOMEM && why[0] == '\0')
		snprintf(why, whylen, "out of memory");
	ingest_free(in);
	return rc;
}

size_t ingest_count(const struct ingest *in)
{
	return in->n;
}

struct store_event *ingest_events(struct ingest *in)
{
	return in->events;
}

void ingest_free(struct ingest *in)
{
	if (!in)
		return;
	for (size_t i = 0; i < in->n; i++)
		free(in->envelopes[i]);
	free(in->envelopes);
	free(in->events);
	json_decref(in->root);
	free(in);
}
