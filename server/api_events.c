/*
 * api_events.c - POST /v1/events, POST /v1/events/batch, GET /v1/events[/{id}].
 *
 * Validation and the envelope live in ingest.c; this file maps them to HTTP. An ingest
 * replies only after the writer committed the events and their delivery rows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "clock.h"
#include "ingest.h"
#include "matcher.h"

static void ingest_cleanup(struct api_write *w)
{
	ingest_free(w->owned);
}

/* 200 when every event was a replay of an idempotency key, else 202. */
static int ingest_status(const struct api_write *w)
{
	for (size_t i = 0; i < w->call.nevents; i++) {
		if (!w->call.events[i].replayed)
			return 202;
	}
	return w->call.nevents > 0 ? 200 : 202;
}

static void reply_single(struct http_request *req, struct api_write *w)
{
	const struct store_event *ev = &w->call.events[0];
	char body[96];

	/* The hottest reply: written directly, ids are [A-Za-z0-9_] so nothing needs escaping. */
	snprintf(body, sizeof(body), "{\"id\":\"%s\",\"deliveries\":%d}", ev->id, ev->deliveries);
	http_reply_text(req, ingest_status(w), body);
}

static void reply_batch(struct http_request *req, struct api_write *w)
{
	json_t *ids = json_array();

	for (size_t i = 0; i < w->call.nevents; i++)
		json_array_append_new(ids, json_string(w->call.events[i].id));
	http_reply_json(req, ingest_status(w), json_pack("{s:o}", "ids", ids));
}

static void ingest(struct api *api, struct http_request *req, int batch)
{
	struct ingest *in = NULL;
	struct api_write *w;
	char why[384];
	size_t len;
	const char *body = http_body(req, &len);

	if (http_header_count(req, "Idempotency-Key") > 1) {
		http_reply_error(req, 422, "invalid_field", "send one Idempotency-Key header");
		return;
	}
	switch (ingest_parse(body, len, batch, http_header(req, "Idempotency-Key"),
	                     clock_now_ms(), &in, why, sizeof(why))) {
	case INGEST_OK:
		break;
	case INGEST_MALFORMED:
		http_reply_error(req, 400, "malformed_json", "%s", why);
		return;
	case INGEST_INVALID:
		http_reply_error(req, 422, "invalid_field", "%s", why);
		return;
	case INGEST_NOMEM:
		http_reply_error(req, 503, "overloaded", "%s", why);
		return;
	}
	w = api_write_new(req, STORE_INGEST);
	if (!w) {
		ingest_free(in);
		return;
	}
	w->owned = in;
	w->cleanup = ingest_cleanup;
	w->call.events = ingest_events(in);
	w->call.nevents = ingest_count(in);
	w->reply = batch ? reply_batch : reply_single;
	api_write_submit(api, w);
}

void api_events_create(struct api *api, struct http_request *req)
{
	ingest(api, req, 0);
}

void api_events_batch(struct api *api, struct http_request *req)
{
	ingest(api, req, 1);
}

static enum store_rc run_events_list(struct store *store, struct api_read *r)
{
	return store_events_list(store, &r->q, &r->text);
}

static enum store_rc run_event_get(struct store *store, struct api_read *r)
{
	return store_event_get(store, r->key, &r->text);
}

void api_events_list(struct api *api, struct http_request *req)
{
	struct store_list_query q;
	const char *reason;

	static const char *const filters[] = {"type", NULL};
	if (api_list_query(req, filters, &q) != 0)
		return;
	q.type = http_query(req, "type");
	if (q.type && event_type_check(q.type, &reason) != 0) {
		http_reply_error(req, 422, "invalid_field", "type: %s", reason);
		return;
	}
	api_read_submit(api, req,
	                &(struct api_read){.run = run_events_list, .what = "event", .q = q});
}

void api_events_get(struct api *api, struct http_request *req)
{
	api_read_submit(
	    api, req,
	    &(struct api_read){.run = run_event_get, .what = "event", .key = http_path_param(req)});
}
