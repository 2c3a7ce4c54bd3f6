/*
 * ingest.c - published body -> validated events with their envelopes.
 *
 * json_check validates the whole body (grammar, UTF-8, depth) without building a tree;
 * then a small scanner over the same bytes finds each event's members, so the envelope
 * carries the publisher's own bytes for key and data, minus insignificant white space.
 * Because json_check accepted the body first, the scanner may assume valid JSON.
 * jansson only decodes the rare escaped key or string.
 *
 * Invariants: every envelope is compact, valid JSON whose "id" and "type" are the
 * event's; `arena` outlives the strings the events point into.
 */
#include "ingest.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_check.h"
#include "matcher.h"
#include "util.h"

struct ingest {
	struct store_event *events; /* n of them */
	char **envelopes;           /* malloc'd, one per event */
	size_t n;
	char *arena;                /* decoded type/key/id strings the events point into */
	size_t arena_used;          /* bytes */
};

/* ---------- raw scanning (valid JSON assumed) ---------- */

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at the opening quote; returns the position after the closing quote. A quote closes
 * the string unless an odd number of backslashes stands right before it; memchr finds
 * the quotes, which is most of the time spent on a body (its strings are most of it). */
static const char *string_end(const char *p, const char *end)
{
	const char *from = p + 1;

	while (from < end) {
		const char *q = memchr(from, '"', (size_t)(end - from));
		const char *b;

		if (!q)
			return end;
		/* from - 1 is a quote (the opening one, or the last one found), never a
		 * backslash, so the count stops there */
		for (b = q; b > from && b[-1] == '\\'; b--)
			;
		if ((q - b) % 2 == 0)
			return q + 1;
		from = q + 1;
	}
	return end;
}

/* The bytes value_end stops at inside an array or object; the others are skipped. */
static const unsigned char structural[256] = {
    ['"'] = 1, ['{'] = 1, ['['] = 1, ['}'] = 1, [']'] = 1,
};

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
		if (!structural[(unsigned char)*p]) {
			p++;
			continue;
		}
		if (*p == '"') {
			p = string_end(p, end);
			continue;
		}
		if (*p == '{' || *p == '[')
			depth++;
		else if (--depth == 0)
			return p + 1;
		p++;
	}
	return end;
}

/* The members of one event object that ingest reads, as raw spans (NULL = absent). */
struct fields {
	const char *type, *type_end;
	const char *key, *key_end;
	const char *id, *id_end;
	const char *data, *data_end;
};

/* Is the raw key at [p, key_end) the string `name`? Escaped keys are decoded first:
 * "d\u0061ta" is "data" too. */
static int key_is(const char *p, const char *key_end, const char *name)
{
	size_t n = strlen(name);
	if ((size_t)(key_end - p) == n + 2 && memcmp(p + 1, name, n) == 0)
		return 1;
	if (!memchr(p, '\\', (size_t)(key_end - p)))
		return 0;
	json_t *key = json_loadb(p, (size_t)(key_end - p), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	int same = key && json_string_length(key) == n && memcmp(json_string_value(key), name, n) == 0;
	json_decref(key);
	return same;
}

/* Collects the members of the event object at p (valid JSON). Returns 0; or -1 with
 * [*bad, *bad + *bad_len) naming a member given twice; or -2 with it naming a member an
 * event does not have (as written, escapes and all): a "payload" for "data" would
 * otherwise be dropped without a word, and an "idempotency_key" ignored. */
static int find_fields(const char *p, const char *end, struct fields *f, const char **bad,
                       size_t *bad_len)
{
	static const char *const names[] = {"type", "key", "id", "data"};
	memset(f, 0, sizeof(*f));
	p = skip_ws(p + 1, end); /* past the '{' */
	while (p < end && *p == '"') {
		const char *key_end = string_end(p, end);
		const char *v = skip_ws(skip_ws(key_end, end) + 1, end); /* past the colon */
		const char *v_end = value_end(v, end);
		const char **slots[] = {&f->type, &f->key, &f->id, &f->data};
		const char **ends[] = {&f->type_end, &f->key_end, &f->id_end, &f->data_end};
		int i = 0;
		while (i < 4 && !key_is(p, key_end, names[i]))
			i++;
		if (i == 4) {
			*bad = p + 1;
			*bad_len = (size_t)(key_end - p) - 2;
			return -2;
		}
		if (*slots[i]) {
			*bad = names[i];
			*bad_len = strlen(names[i]);
			return -1;
		}
		*slots[i] = v;
		*ends[i] = v_end;
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

/* Decodes the raw JSON string at [v, v_end) into the arena as a C string. Returns it, or
 * NULL if it is not a string or holds a NUL (we keep these as C strings). */
static const char *take_string(struct ingest *in, const char *v, const char *v_end,
                               size_t *len_out)
{
	char *dst = in->arena + in->arena_used;
	size_t len;

	if (*v != '"')
		return NULL;
	if (!memchr(v, '\\', (size_t)(v_end - v))) {
		len = (size_t)(v_end - v) - 2;
		memcpy(dst, v + 1, len);
	} else {
		json_t *str = json_loadb(v, (size_t)(v_end - v), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		len = json_string_length(str);
		if (!str || len > (size_t)(v_end - v) || strlen(json_string_value(str)) != len) {
			json_decref(str);
			return NULL;
		}
		memcpy(dst, json_string_value(str), len);
		json_decref(str);
	}
	if (memchr(dst, '\0', len))
		return NULL;
	dst[len] = '\0';
	in->arena_used += len + 1;
	*len_out = len;
	return dst;
}

static int is_null(const char *v)
{
	return v && *v == 'n';
}

/* Validates one event object at [p, end) (valid JSON) and fills ev. why gets `where`. */
static enum ingest_rc check_event(struct ingest *in, const char *p, const char *end,
                                  const char *idem_header, const char *where,
                                  struct store_event *ev, struct fields *f, char *why, size_t whylen)
{
	const char *reason = NULL, *bad = NULL;
	size_t len, bad_len = 0;
	int found;

	if (*p != '{') { /* where is "" or "items[3]." */
		size_t wl = strlen(where);
		snprintf(why, whylen, "%.*s%sthe event must be a JSON object",
		         (int)(wl ? wl - 1 : 0), where, wl ? ": " : "");
		return INGEST_INVALID;
	}
	found = find_fields(p, end, f, &bad, &bad_len);
	if (found == -1) {
		snprintf(why, whylen, "%s\"%.*s\" is given twice", where, (int)bad_len, bad);
		return INGEST_MALFORMED;
	}
	if (found == -2) {
		snprintf(why, whylen, "%s%.*s: unknown field (an event has type, data, key and id)",
		         where, bad_len > 64 ? 64 : (int)bad_len, bad);
		return INGEST_INVALID;
	}
	if (!f->type) {
		snprintf(why, whylen, "%stype is required", where);
		return INGEST_INVALID;
	}
	ev->type = take_string(in, f->type, f->type_end, &len);
	if (!ev->type) {
		snprintf(why, whylen, "%stype must be a string, without \\u0000", where);
		return INGEST_INVALID;
	}
	if (len > MATCHER_TYPE_MAX) {
		snprintf(why, whylen, "%stype is longer than %d bytes", where, MATCHER_TYPE_MAX);
		return INGEST_INVALID;
	}
	if (event_type_check(ev->type, &reason) != 0) {
		snprintf(why, whylen, "%stype: %s", where, reason ? reason : "not a valid event type");
		return INGEST_INVALID;
	}
	ev->key = NULL;
	if (f->key && !is_null(f->key)) {
		ev->key = take_string(in, f->key, f->key_end, &len);
		if (!ev->key || len > INGEST_KEY_MAX) {
			snprintf(why, whylen,
			         "%skey must be a string of at most %d bytes, without \\u0000",
			         where, INGEST_KEY_MAX);
			return INGEST_INVALID;
		}
	}
	ev->idempotency_key = idem_header;
	if (f->id && !is_null(f->id)) {
		ev->idempotency_key = take_string(in, f->id, f->id_end, &len);
		if (!ev->idempotency_key || len == 0 || len > INGEST_KEY_MAX) {
			snprintf(why, whylen,
			         "%sid must be a string of 1 to %d bytes, without \\u0000", where,
			         INGEST_KEY_MAX);
			return INGEST_INVALID;
		}
		/* Two keys for one event: keeping either would let a retry that sends only
		 * the other store the event twice. */
		if (idem_header && strcmp(idem_header, ev->idempotency_key) != 0) {
			snprintf(why, whylen,
			         "id and the Idempotency-Key header differ; send one, or the"
			         " same key in both");
			return INGEST_INVALID;
		}
	}
	return INGEST_OK;
}

/* Builds {"id","type","key","timestamp","data"}: the type as validated (nothing to
 * escape), the key and data as the publisher wrote them, data minified. */
static char *build_envelope(const struct store_event *ev, const struct fields *f)
{
	char ts[UTIL_TIME_MAX];
	char *data, *out = NULL;
	size_t key_len = ev->key ? (size_t)(f->key_end - f->key) : 4, len;

	util_format_time(ev->created_at_ms, ts);
	data = f->data ? minify(f->data, f->data_end) : strdup("null");
	if (!data)
		return NULL;
	len = strlen(ev->id) + strlen(ev->type) + key_len + strlen(ts) + strlen(data) + 64;
	out = malloc(len);
	if (out)
		snprintf(out, len, "{\"id\":\"%s\",\"type\":\"%s\",\"key\":%.*s,\"timestamp\":\"%s\",\"data\":%s}",
		         ev->id, ev->type, (int)key_len, ev->key ? f->key : "null", ts, data);
	free(data);
	return out;
}

/* Orders item indexes by their "id" (all non-NULL), then by index. */
static int by_id(const void *a, const void *b, void *events)
{
	const struct store_event *ev = events;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	int c = strcmp(ev[i].idempotency_key, ev[j].idempotency_key);

	return c != 0 ? c : (i > j) - (i < j);
}

/* 1 (with why) if two items of a batch share an "id": the store would take the second
 * for a replay of the first and drop it, in a call that answers 202 for both. 0 if
 * none does, -1 if out of memory. */
static int repeated_id(const struct ingest *in, char *why, size_t whylen)
{
	size_t *idx = malloc(in->n * sizeof(*idx));
	size_t m = 0;
	int found = 0;

	if (!idx)
		return -1;
	for (size_t i = 0; i < in->n; i++)
		if (in->events[i].idempotency_key)
			idx[m++] = i;
	qsort_r(idx, m, sizeof(*idx), by_id, in->events);
	/* Equal ids sort together, by index: report the repeat that comes first in the batch,
	 * with the item it repeats. */
	size_t first = 0, later = SIZE_MAX, earlier = 0;
	for (size_t k = 1; k < m; k++) {
		if (strcmp(in->events[idx[k - 1]].idempotency_key,
		           in->events[idx[k]].idempotency_key) != 0) {
			first = k;
			continue;
		}
		if (k == first + 1 && idx[k] < later) {
			later = idx[k];
			earlier = idx[first];
		}
	}
	if (later != SIZE_MAX) {
		snprintf(why, whylen, "items[%zu].id repeats items[%zu].id; ids in a batch must differ",
		         later, earlier);
		found = 1;
	}
	free(idx);
	return found;
}

/* 1 if s is well-formed UTF-8 without control characters (tab allowed, as in HTTP). */
static int utf8_text(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s);
	while (left > 0) {
		size_t n =
		    *p < 0x80 ? ((*p >= 0x20 && *p != 0x7f) || *p == '\t') : json_utf8_seq(p, left);
		if (n == 0)
			return 0;
		p += n;
		left -= n;
	}
	return 1;
}

enum ingest_rc ingest_parse(const char *body, size_t len, int batch, const char *idempotency_key,
                            int64_t now_ms, struct ingest **out, char *why, size_t whylen)
{
	enum ingest_rc rc = INGEST_INVALID;
	struct ingest *in = NULL;
	const char *end = body + len;
	const char *p;
	struct json_check_error jerr;
	size_t n = 1;

	*out = NULL;
	why[0] = '\0';
	if (len == 0) {
		snprintf(why, whylen, "the request body is empty; send JSON");
		return INGEST_MALFORMED;
	}
	if (idempotency_key && batch) {
		/* One key cannot stand for many events, and ignoring it would store the batch
		 * again on every retry the client believes is safe. */
		snprintf(why, whylen, "Idempotency-Key is for single events; give each batch item "
		                      "its own \"id\" instead");
		return INGEST_INVALID;
	}
	if (idempotency_key &&
	    (idempotency_key[0] == '\0' || strlen(idempotency_key) > INGEST_KEY_MAX)) {
		snprintf(why, whylen, "Idempotency-Key must be 1 to %d bytes", INGEST_KEY_MAX);
		return INGEST_INVALID;
	}
	if (idempotency_key && !utf8_text(idempotency_key)) {
		/* it is stored and shown as a JSON string */
		snprintf(why, whylen,
		         "Idempotency-Key must be UTF-8 text without control characters");
		return INGEST_INVALID;
	}
	/* The limit is an event's: a batch's array is one level more. */
	if (json_check(body, len, INGEST_DEPTH_MAX + (batch ? 1 : 0), &jerr) != 0) {
		if (jerr.too_deep) {
			snprintf(why, whylen, "an event nests deeper than %d levels",
			         INGEST_DEPTH_MAX);
			return INGEST_INVALID;
		}
		snprintf(why, whylen, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
		         jerr.reason);
		return INGEST_MALFORMED;
	}
	p = skip_ws(body, end);
	if (batch) {
		const char *q = skip_ws(p + 1, end);
		if (*p != '[' || *q == ']') {
			snprintf(why, whylen, "the body must be a JSON array of 1 to %d events",
			         INGEST_BATCH_MAX);
			return INGEST_INVALID;
		}
		/* Count the items: one more than the top-level commas. */
		for (n = 1; (q = skip_ws(value_end(q, end), end)) < end && *q == ','; n++) {
			q = skip_ws(q + 1, end);
			if (n == INGEST_BATCH_MAX) {
				snprintf(why, whylen, "the body must be a JSON array of 1 to %d events",
				         INGEST_BATCH_MAX);
				return INGEST_INVALID;
			}
		}
		p = skip_ws(p + 1, end); /* into the array */
	}
	in = calloc(1, sizeof(*in));
	if (!in)
		return INGEST_NOMEM;
	in->events = calloc(n, sizeof(*in->events));
	in->envelopes = calloc(n, sizeof(*in->envelopes));
	in->arena = malloc(len + 3 * n); /* decoded strings never outgrow their raw spans */
	if (!in->events || !in->envelopes || !in->arena) {
		rc = INGEST_NOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct store_event *ev = &in->events[i];
		const char *item_end = value_end(p, end);
		struct fields f;
		char where[32] = "";

		if (batch)
			snprintf(where, sizeof(where), "items[%zu].", i);
		rc = check_event(in, p, item_end, batch ? NULL : idempotency_key, where, ev, &f, why,
		                 whylen);
		if (rc != INGEST_OK)
			goto out;
		rc = INGEST_NOMEM;
		ev->created_at_ms = now_ms;
		if (util_new_event_id(now_ms, ev->id) != 0) {
			snprintf(why, whylen, "no entropy for an event id");
			goto out;
		}
		in->envelopes[i] = build_envelope(ev, &f);
		if (!in->envelopes[i])
			goto out;
		in->n = i + 1;
		ev->envelope = in->envelopes[i];
		ev->envelope_len = strlen(in->envelopes[i]);
		p = skip_ws(item_end, end);
		if (p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	if (batch) {
		int repeated = repeated_id(in, why, whylen);
		if (repeated != 0) {
			rc = repeated > 0 ? INGEST_INVALID : INGEST_NOMEM;
			goto out;
		}
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
	free(in->arena);
	free(in);
}
