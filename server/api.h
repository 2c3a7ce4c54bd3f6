/*
 * api.h - the v1 routes (docs/api.md): one api_*.c per resource, plus what they share
 * in api.c (body parsing, list queries, store errors, auth, suspended writes).
 *
 * Threads: handlers run on MHD pool threads; struct api is immutable after api_new.
 */
#ifndef HOOKRELAY_API_H
#define HOOKRELAY_API_H

#include <jansson.h>
#include <stddef.h>

#include "http.h"
#include "store.h"
#include "target.h"

struct api;

struct api_options {
	const char *const *admin_keys;   /* bearer keys with full access; NULL-terminated or NULL */
	const char *const *publish_keys; /* bearer keys that may only publish events */
	const struct target_policy *targets; /* which subscription URLs are refused for their
	                                        address; borrowed, must outlive the api.
	                                        NULL: the default (nothing non-public) */
};

struct api *api_new(struct store *store, const struct api_options *opts); /* NULL on OOM */
void api_free(struct api *api);                                            /* accepts NULL */

typedef void (*api_handler)(struct api *api, struct http_request *req);

/* Checks the Authorization header for the route; returns 0 if allowed, else replies
 * 401/403 and returns -1. */
int api_authorize(struct api *api, struct http_request *req, api_handler handler);

void api_healthz(struct api *api, struct http_request *req);
void api_metrics(struct api *api, struct http_request *req);
void api_events_create(struct api *api, struct http_request *req);
void api_events_batch(struct api *api, struct http_request *req);
void api_events_list(struct api *api, struct http_request *req);
void api_events_get(struct api *api, struct http_request *req);
void api_subscriptions_create(struct api *api, struct http_request *req);
void api_subscriptions_list(struct api *api, struct http_request *req);
void api_subscriptions_get(struct api *api, struct http_request *req);
void api_subscriptions_stats(struct api *api, struct http_request *req);
void api_subscriptions_update(struct api *api, struct http_request *req);
void api_subscriptions_delete(struct api *api, struct http_request *req);
void api_subscriptions_rotate(struct api *api, struct http_request *req);
void api_subscriptions_recover(struct api *api, struct http_request *req);
void api_subscriptions_replay(struct api *api, struct http_request *req);
void api_deliveries_list(struct api *api, struct http_request *req);
void api_deliveries_get(struct api *api, struct http_request *req);
void api_deliveries_retry(struct api *api, struct http_request *req);

/* ---- shared by the api_*.c files ---- */

struct store *api_store(const struct api *api);
const struct target_policy *api_targets(const struct api *api); /* may be NULL */

/* Parses the request body as JSON. On failure replies 400 malformed_json (with line and
 * column) and returns NULL. Returns a new reference. */
json_t *api_parse_body(struct http_request *req);

/* Returns 0 if every member of the object obj is named in known (NULL-terminated); else
 * -1 with why naming the first other one and the known ones. A misspelt field is refused
 * rather than ignored: {"grace": 0} must not rotate a secret with a day's grace. */
int api_known_fields(json_t *obj, const char *const known[], char *why, size_t whylen);

/* Parses the {id} segment as "<prefix><n>"; replies 404 naming `what` and returns -1 if
 * it is not one. */
int api_path_id(struct http_request *req, const char *prefix, const char *what, int64_t *id);

/* Fills limit/after from the query string; replies 422 and returns -1 when out of range,
 * or when a query parameter is given twice or is neither limit, after nor one of the
 * route's filters (NULL-terminated, at most 4; the route reads their values itself). */
int api_list_query(struct http_request *req, const char *const filters[],
                   struct store_list_query *q);

/*
 * A read, run on a read thread (read_pool.h) while its request waits suspended, so a slow
 * one holds up nothing on the HTTP thread. The handler fills the inputs and run, and
 * calls api_read_submit with it on its stack; run calls the store with them and leaves
 * the answer in json or text (the read routes answer with one or the other).
 */
struct api_read {
	enum store_rc (*run)(struct store *store, struct api_read *r); /* on a read thread */
	const char *what;                                              /* noun for a 404 message */
	struct store_list_query q; /* inputs: a list's query (its strings borrowed from */
	int64_t id;                /* the request, which outlives the read), or an id */
	const char *key;
	json_t *json; /* outputs: the answer, for STORE_OK */
	char *text;
};
/* Copies *r, runs it and serializes its answer off the HTTP thread, and replies (200,
 * 404 naming what, or 503). If
 * the read threads cannot take it (their queue is full, the relay is stopping), it runs
 * here and now. */
void api_read_submit(struct api *api, struct http_request *req, const struct api_read *r);

/*
 * A write waiting on the writer. The handler fills call (kind, inputs), sets status (the
 * result is then the answer) or reply, and calls api_write_submit. `reply` runs on an
 * MHD thread after the commit and must reply for STORE_OK; for other rcs api_write_submit's continuation replies (404/409/503)
 * before reply is called. cleanup (may be NULL) frees the handler's inputs; the struct
 * itself is freed by api.c.
 */
struct api_write {
	struct store_call call;
	struct http_request *req;
	int status;        /* without a reply function: answer the result with this status */
	void (*reply)(struct http_request *req, struct api_write *w);
	void (*cleanup)(struct api_write *w);
	json_t *body;      /* the parsed request, kept while the write borrows from it */
	void *owned;       /* handler-specific data freed by cleanup */
	const char *what;  /* noun for a 404 message, e.g. "subscription" */
};
struct api_write *api_write_new(struct http_request *req, enum store_call_kind kind);
/* Suspends req and queues the call; replies 503 overloaded at once if the writer queue
 * is full. Takes ownership of w in every case. */
void api_write_submit(struct api *api, struct api_write *w);

#endif
