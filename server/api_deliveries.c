/*
 * api_deliveries.c - the delivery log: GET /v1/deliveries[/{id}] and the manual retry.
 */
#include <string.h>

#include "api.h"
#include "util.h"

static int parse_status(const char *text)
{
	static const char *const names[] = {"pending", "delivered", "failed"};
	for (int i = 0; i < 3; i++) {
		if (strcmp(text, names[i]) == 0)
			return i;
	}
	return -1;
}

static enum store_rc run_deliveries_list(struct store *store, struct api_read *r)
{
	return store_deliveries_list(store, &r->q, &r->text);
}

static enum store_rc run_delivery_get(struct store *store, struct api_read *r)
{
	return store_delivery_get(store, r->id, &r->json);
}

void api_deliveries_list(struct api *api, struct http_request *req)
{
	struct store_list_query q;
	const char *status;

	static const char *const filters[] = {"subscription", "event", "status", NULL};
	if (api_list_query(req, filters, &q) != 0)
		return;
	const char *subscription = http_query(req, "subscription");
	q.event = http_query(req, "event");
	/* A malformed id is the caller's mistake, not an empty log (a well-formed unknown one
	 * does list nothing). */
	if (subscription && util_parse_id("sub_", subscription, &q.subscription) != 0) {
		http_reply_error(req, 422, "invalid_field",
		                 "subscription must be a subscription id, sub_<n>");
		return;
	}
	if (q.event && !util_is_event_id(q.event)) {
		http_reply_error(req, 422, "invalid_field",
		                 "event must be an event id, evt_ and 26 characters");
		return;
	}
	status = http_query(req, "status");
	if (status) {
		q.status = parse_status(status);
		if (q.status < 0) {
			http_reply_error(req, 422, "invalid_field",
			                 "status must be pending, delivered or failed");
			return;
		}
	}
	api_read_submit(api, req,
	                &(struct api_read){.run = run_deliveries_list, .what = "delivery", .q = q});
}

static int path_id(struct http_request *req, int64_t *id)
{
	return api_path_id(req, "dlv_", "delivery", id);
}

void api_deliveries_get(struct api *api, struct http_request *req)
{
	int64_t id;
	if (path_id(req, &id) != 0)
		return;
	api_read_submit(api, req,
	                &(struct api_read){.run = run_delivery_get, .what = "delivery", .id = id});
}

void api_deliveries_retry(struct api *api, struct http_request *req)
{
	struct api_write *w;
	int64_t id;

	if (path_id(req, &id) != 0)
		return;
	w = api_write_new(req, STORE_DELIVERY_RETRY);
	if (!w)
		return;
	w->call.id = id;
	w->what = "delivery";
	w->status = 202;
	api_write_submit(api, w);
}
