/*
 * api_events.c - POST /v1/events, POST /v1/events/batch, GET /v1/events[/{id}].
 *
 * The envelope {"id","type","key","timestamp","data"} is built here, once, as compact
 * JSON; the store keeps those bytes and the sender sends and signs exactly them.
 * An ingest replies only after the writer committed the event and its delivery rows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "clock.h"
#include "matcher.h"
#include "util.h"

#define BATCH_MAX 1000      /* events per batch call */
#define KEY_MAX 255         /* bytes in "key" and "id" */

/* What one validated event holds until the write is done. */
struct ingest {
	struct store_event *events;
	char **envelopes; /* json_dumps output, one per event */
	size_t n;
};

static void ingest_cleanup(struct api_write *w)
{
	struct ingest *in = w->owned;
	if (!in)
		return;
	for (size_t i = 0; i < in->n; i++)
		free(in->envelopes[i]);
	free(in->envelopes);
	free(in->events);
	free(in);
}

/* Validates one event object and builds its envelope into ev/envelope_out.
 * On error writes the reason (prefixed with `where`) into why and returns -1. */
static int build_event(json_t *obj, const char *idem_header, const char *where,
                       struct store_event *ev, char **envelope_out, char *why, size_t whylen)
{
	json_t *type, *key, *id, *data, *env;
	const char *reason = NULL;
	char ts[UTIL_TIME_MAX];

	if (!json_is_object(obj)) {
		snprintf(why, whylen, "%sthe event must be a JSON object", where);
		return -1;
	}
	type = json_object_get(obj, "type");
	key = json_object_get(obj, "key");
	id = json_object_get(obj, "id");
	data = json_object_get(obj, "data");
	if (!type) {
		snprintf(why, whylen, "%stype is required", where);
		return -1;
	}
	if (!json_is_string(type)) {
		snprintf(why, whylen, "%stype must be a string", where);
		return -1;
	}
	if (event_type_check(json_string_value(type), &reason) != 0) {
		snprintf(why, whylen, "%stype: %s", where, reason);
		return -1;
	}
	if (key && !json_is_null(key) &&
	    (!json_is_string(key) || json_string_length(key) > KEY_MAX)) {
		snprintf(why, whylen, "%skey must be a string of at most %d bytes", where, KEY_MAX);
		return -1;
	}
	if (id && !json_is_null(id) &&
	    (!json_is_string(id) || json_string_length(id) == 0 || json_string_length(id) > KEY_MAX)) {
		snprintf(why, whylen, "%sid must be a string of 1 to %d bytes", where, KEY_MAX);
		return -1;
	}
	if (idem_header && (idem_header[0] == '\0' || strlen(idem_header) > KEY_MAX)) {
		snprintf(why, whylen, "Idempotency-Key must be 1 to %d bytes", KEY_MAX);
		return -1;
	}

	memset(ev, 0, sizeof(*ev));
	ev->created_at_ms = clock_now_ms();
	if (util_new_event_id(ev->created_at_ms, ev->id) != 0) {
		snprintf(why, whylen, "no entropy for an event id");
		return -1;
	}
	ev->type = json_string_value(type);
	ev->key = json_is_string(key) ? json_string_value(key) : NULL;
	ev->idempotency_key = json_is_string(id) ? json_string_value(id) : idem_header;
	util_format_time(ev->created_at_ms, ts);
	env = json_pack("{s:s, s:s, s:O?, s:s, s:O?}", "id", ev->id, "type", ev->type, "key",
	                ev->key ? key : NULL, "timestamp", ts, "data", data);
	if (!env) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	*envelope_out = json_dumps(env, JSON_COMPACT | JSON_REAL_PRECISION(17));
	json_decref(env);
	if (!*envelope_out) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	ev->envelope = *envelope_out;
	ev->envelope_len = strlen(*envelope_out);
	return 0;
}

static struct ingest *ingest_new(size_t n)
{
	struct ingest *in = calloc(1, sizeof(*in));
	if (!in)
		return NULL;
	in->events = calloc(n, sizeof(*in->events));
	in->envelopes = calloc(n, sizeof(*in->envelopes));
	if (!in->events || !in->envelopes) {
		free(in->events);
		free(in->envelopes);
		free(in);
		return NULL;
	}
	return in;
}

static int all_replayed(json_t *items)
{
	size_t i;
	json_t *item;
	json_array_foreach(items, i, item)
	{
		if (!json_is_true(json_object_get(item, "replayed")))
			return 0;
	}
	return json_array_size(items) > 0;
}

static void reply_single(struct http_request *req, struct api_write *w)
{
	json_t *item = json_array_get(w->call.result, 0);
	http_reply_json(req, all_replayed(w->call.result) ? 200 : 202,
	                json_pack("{s:O, s:O}", "id", json_object_get(item, "id"), "deliveries",
	                          json_object_get(item, "deliveries")));
}

static void reply_batch(struct http_request *req, struct api_write *w)
{
	json_t *ids = json_array();
	size_t i;
	json_t *item;
	json_array_foreach(w->call.result, i, item)
	{
		json_array_append(ids, json_object_get(item, "id"));
	}
	http_reply_json(req, all_replayed(w->call.result) ? 200 : 202, json_pack("{s:o}", "ids", ids));
}

/* Validates `items` (already an array of 1..BATCH_MAX) and submits one ingest call. */
static void ingest_submit(struct api *api, struct http_request *req, json_t *body, json_t *items,
                          const char *idem_header, int batch)
{
	size_t n = json_array_size(items);
	struct ingest *in = ingest_new(n);
	struct api_write *w = NULL;
	char why[384];

	if (!in) {
		json_decref(body);
		http_reply_error(req, 503, "overloaded", "out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char where[32] = "";
		if (batch)
			snprintf(where, sizeof(where), "items[%zu].", i);
		if (build_event(json_array_get(items, i), idem_header, where, &in->events[i],
		                &in->envelopes[i], why, sizeof(why)) != 0) {
			in->n = i + 1;
			w = NULL;
			goto invalid;
		}
		in->n = i + 1;
	}
	w = api_write_new(req, STORE_INGEST);
	if (!w)
		goto fail;
	w->owned = in;
	w->cleanup = ingest_cleanup;
	w->body = body;
	w->call.events = in->events;
	w->call.nevents = n;
	w->reply = batch ? reply_batch : reply_single;
	api_write_submit(api, w);
	return;
invalid:
	http_reply_error(req, 422, "invalid_field", "%s", why);
fail:
	{
		struct api_write tmp = {.owned = in};
		ingest_cleanup(&tmp);
	}
	json_decref(body);
}

void api_events_create(struct api *api, struct http_request *req)
{
	json_t *body = api_parse_body(req);
	json_t *items;

	if (!body)
		return;
	items = json_pack("[O]", body);
	if (!items) {
		json_decref(body);
		http_reply_error(req, 503, "overloaded", "out of memory");
		return;
	}
	json_decref(body);
	/* `items` keeps the body alive for as long as the write borrows its strings. */
	ingest_submit(api, req, items, items, http_header(req, "Idempotency-Key"), 0);
}

void api_events_batch(struct api *api, struct http_request *req)
{
	json_t *body = api_parse_body(req);

	if (!body)
		return;
	if (!json_is_array(body) || json_array_size(body) == 0 || json_array_size(body) > BATCH_MAX) {
		json_decref(body);
		http_reply_error(req, 422, "invalid_field",
		                 "the body must be a JSON array of 1 to %d events", BATCH_MAX);
		return;
	}
	ingest_submit(api, req, body, body, NULL, 1);
}

void api_events_list(struct api *api, struct http_request *req)
{
	struct store_list_query q;
	json_t *out = NULL;
	const char *reason;

	if (api_list_query(req, &q) != 0)
		return;
	q.type = http_query(req, "type");
	if (q.type && event_type_check(q.type, &reason) != 0) {
		http_reply_error(req, 422, "invalid_field", "type: %s", reason);
		return;
	}
	enum store_rc rc = store_events_list(api_store(api), &q, &out);
	api_reply_read(req, rc, out, "event");
}

void api_events_get(struct api *api, struct http_request *req)
{
	json_t *out = NULL;
	enum store_rc rc = store_event_get(api_store(api), http_path_param(req), &out);
	api_reply_read(req, rc, out, "event");
}
