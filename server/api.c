/*
 * api.c - what the routes share: authorization, JSON body parsing, list queries,
 * replies for store results, suspended writes (api_write), /healthz and /metrics.
 *
 * An api_write lives from the handler that creates it until its continuation replied;
 * the writer (or syncer) thread touches it only between store_submit and done().
 */
#include "api.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "read_pool.h"
#include "util.h"

#define API_READ_THREADS 2 /* reads at once off the HTTP threads */

struct api {
	struct store *store;
	struct read_pool *reads;
	char **admin_keys;   /* NULL-terminated copies */
	char **publish_keys;
	const struct target_policy *targets; /* borrowed; NULL = default policy */
};

static char **copy_keys(const char *const *keys)
{
	size_t n = 0;
	while (keys && keys[n])
		n++;
	char **out = calloc(n + 1, sizeof(*out));
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		out[i] = strdup(keys[i]);
		if (!out[i]) {
			for (size_t j = 0; j < i; j++)
				free(out[j]);
			free(out);
			return NULL;
		}
	}
	return out;
}

static void free_keys(char **keys)
{
	for (size_t i = 0; keys && keys[i]; i++) {
		OPENSSL_cleanse(keys[i], strlen(keys[i]));
		free(keys[i]);
	}
	free(keys);
}

struct api *api_new(struct store *store, const struct api_options *opts)
{
	struct api *api = calloc(1, sizeof(*api));
	if (!api)
		return NULL;
	api->store = store;
	api->targets = opts->targets;
	api->admin_keys = copy_keys(opts->admin_keys);
	api->publish_keys = copy_keys(opts->publish_keys);
	api->reads = read_pool_start(API_READ_THREADS);
	if (!api->admin_keys || !api->publish_keys || !api->reads) {
		api_free(api);
		return NULL;
	}
	return api;
}

void api_free(struct api *api)
{
	if (!api)
		return;
	read_pool_stop(api->reads); /* idle by now: http_stop waited for every read */
	free_keys(api->admin_keys);
	free_keys(api->publish_keys);
	free(api);
}

struct store *api_store(const struct api *api)
{
	return api->store;
}

const struct target_policy *api_targets(const struct api *api)
{
	return api->targets;
}

/* Compares digests, not the keys, so neither length nor content leaks through timing. */
static int key_in(char **keys, const char *given)
{
	unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
	int found = 0;

	SHA256((const unsigned char *)given, strlen(given), got);
	for (size_t i = 0; keys[i]; i++) {
		SHA256((const unsigned char *)keys[i], strlen(keys[i]), want);
		found |= CRYPTO_memcmp(want, got, sizeof(got)) == 0;
	}
	return found;
}

int api_authorize(struct api *api, struct http_request *req, api_handler handler)
{
	const char *auth, *given;

	if (handler == api_healthz || (!api->admin_keys[0] && !api->publish_keys[0]))
		return 0;
	auth = http_header(req, "Authorization");
	if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) {
		http_add_header(req, "WWW-Authenticate", "Bearer");
		http_reply_error(req, 401, "unauthorized",
		                 "send an API key as 'Authorization: Bearer <key>'");
		return -1;
	}
	given = auth + 7;
	if (key_in(api->admin_keys, given))
		return 0;
	if (key_in(api->publish_keys, given)) {
		if (handler == api_events_create || handler == api_events_batch)
			return 0;
		http_reply_error(req, 403, "forbidden", "this key may only publish events");
		return -1;
	}
	http_add_header(req, "WWW-Authenticate", "Bearer");
	http_reply_error(req, 401, "unauthorized", "the API key is not valid");
	return -1;
}

json_t *api_parse_body(struct http_request *req)
{
	json_error_t error;
	size_t len;
	const char *body = http_body(req, &len);
	json_t *v;

	if (len == 0) {
		http_reply_error(req, 400, "malformed_json", "the request body is empty; send JSON");
		return NULL;
	}
	v = json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &error);
	if (!v && (json_error_code(&error) == json_error_null_character ||
	           json_error_code(&error) == json_error_null_byte_in_key))
		/* valid JSON that no field may hold (as the events route answers a key with it) */
		http_reply_error(
		    req, 422, "invalid_field",
		    "a string at line %d, column %d holds \\u0000, which no field may hold",
		    error.line, error.column);
	else if (!v && json_error_code(&error) == json_error_numeric_overflow)
		/* valid JSON too (RFC 8259 leaves the range to us), and no field holds it */
		http_reply_error(req, 422, "invalid_field",
		                 "a number at line %d, column %d is too large for any field",
		                 error.line, error.column);
	else if (!v)
		http_reply_error(req, 400, "malformed_json", "invalid JSON at line %d, column %d: %s",
		                 error.line, error.column, error.text);
	return v;
}

/* The index of name in known (NULL-terminated), or -1. */
static int name_index(const char *const known[], const char *name)
{
	for (int i = 0; known[i]; i++)
		if (strcmp(known[i], name) == 0)
			return i;
	return -1;
}

/* why = "<name>: unknown <what> (known: a, b, c)" */
static void unknown_name_why(char *why, size_t whylen, const char *name, const char *what,
                             const char *const known[])
{
	size_t off = (size_t)snprintf(why, whylen, "%.64s: unknown %s (known:", name, what);
	for (size_t i = 0; known[i] && off < whylen; i++)
		off += (size_t)snprintf(why + off, whylen - off, "%s %s", i ? "," : "", known[i]);
	if (off < whylen)
		snprintf(why + off, whylen - off, ")");
}

int api_known_fields(json_t *obj, const char *const known[], char *why, size_t whylen)
{
	const char *name;
	json_t *value;

	json_object_foreach(obj, name, value)
	{
		if (name_index(known, name) < 0) {
			unknown_name_why(why, whylen, name, "field", known);
			return -1;
		}
	}
	return 0;
}

int api_path_id(struct http_request *req, const char *prefix, const char *what, int64_t *id)
{
	if (util_parse_id(prefix, http_path_param(req), id) != 0) {
		http_reply_error(req, 404, "not_found", "no %s with that id", what);
		return -1;
	}
	return 0;
}

#define LIST_FILTERS_MAX 4

struct query_check {
	const char *known[LIST_FILTERS_MAX + 3]; /* limit, after, the route's filters, NULL */
	unsigned seen;                           /* bit i: known[i] was given */
	char why[256];
};

static int query_check_one(void *arg, const char *name, const char *value)
{
	struct query_check *c = arg;
	if (name[0] == '\0' && !value)
		return 0; /* an empty segment, as in "?&limit=5" */
	int i = name_index(c->known, name);
	if (i < 0) {
		unknown_name_why(c->why, sizeof(c->why), name, "query parameter", c->known);
		return -1;
	}
	if (c->seen & (1u << i)) {
		snprintf(c->why, sizeof(c->why), "%s: given more than once", name);
		return -1;
	}
	c->seen |= 1u << i;
	if (!value) {
		snprintf(c->why, sizeof(c->why), "%s: needs a value (%s=...)", name, name);
		return -1;
	}
	return 0;
}

int api_list_query(struct http_request *req, const char *const filters[],
                   struct store_list_query *q)
{
	struct query_check check = {.known = {"limit", "after"}};
	size_t n = 2;
	for (size_t i = 0; filters[i] && i < LIST_FILTERS_MAX; i++)
		check.known[n++] = filters[i];
	/* A misspelt filter is refused: ?stauts=failed must not list every delivery. */
	int walk = http_query_each(req, query_check_one, &check);
	if (walk == HTTP_QUERY_NUL) {
		http_reply_error(req, 422, "invalid_field",
		                 "query parameters may not hold %%00 (NUL)");
		return -1;
	}
	if (walk != 0) {
		http_reply_error(req, 422, "invalid_field", "%s", check.why);
		return -1;
	}

	const char *limit = http_query(req, "limit");
	const char *after = http_query(req, "after");
	int64_t v;

	memset(q, 0, sizeof(*q));
	q->status = -1;
	q->limit = 50;
	if (limit) {
		if (util_parse_int(limit, 1, 1000, &v) != 0) {
			http_reply_error(req, 422, "invalid_field", "limit must be an integer from 1 to 1000");
			return -1;
		}
		q->limit = (int)v;
	}
	if (after) {
		if (util_parse_int(after, 1, INT64_MAX, &v) != 0) {
			http_reply_error(req, 422, "invalid_field",
			                 "after must be a cursor from a previous page's 'next'");
			return -1;
		}
		q->after = v;
	}
	return 0;
}

/* ---------- reads off the HTTP threads ---------- */

struct read_task {
	struct api_read r;
	struct api *api;
	struct http_request *req;
	enum store_rc rc;
};

/* Runs the read and turns a JSON answer into its text here too: serializing a page of a
 * thousand deliveries costs more than the query, and must not fall to the HTTP thread. */
static void read_run(struct read_task *t)
{
	t->rc = t->r.run(t->api->store, &t->r);
	if (t->r.json) {
		if (t->rc == STORE_OK && !t->r.text)
			t->r.text = json_dumps(t->r.json, JSON_COMPACT | JSON_ENCODE_ANY);
		json_decref(t->r.json); /* also a partial answer of a failed read */
		t->r.json = NULL;
	}
}

/* Replies and frees the task: 200 with the text (none: a 500), 404 naming what, or 503
 * (the store failed, or the read queue was full).
 * On an MHD thread: the request's continuation after resume, or inline. */
static void read_reply(struct http_request *req, void *arg)
{
	struct read_task *t = arg;

	if (t->rc == STORE_OK) {
		http_reply_owned(req, 200, "application/json", t->r.text);
	} else if (t->rc == STORE_NOTFOUND) {
		free(t->r.text);
		http_reply_error(req, 404, "not_found", "no %s with that id", t->r.what);
	} else if (t->rc == STORE_OVERLOADED) {
		http_reply_error(req, 503, "overloaded", "too many reads waiting; retry shortly");
	} else {
		free(t->r.text);
		http_reply_error(req, 503, "storage_unavailable",
		                 "the store did not answer; try again");
	}
	free(t);
}

/* A read thread: query, then wake the request. */
static void read_work(void *arg)
{
	struct read_task *t = arg;
	read_run(t);
	http_resume(t->req);
}

void api_read_submit(struct api *api, struct http_request *req, const struct api_read *r)
{
	struct read_task *t = malloc(sizeof(*t));
	if (!t) {
		http_reply_error(req, 503, "overloaded", "out of memory");
		return;
	}
	*t = (struct read_task){*r, api, req, STORE_ERR};
	if (http_await(req, read_reply, t) != 0) { /* stopping: a read may still be answered */
		read_run(t);
		read_reply(req, t);
		return;
	}
	/* A full queue is answered 503, not run here: a storm of reads (clients that may
	 * have gone already) must not take the HTTP thread from publishes and /healthz. */
	if (read_pool_submit(api->reads, read_work, t) != 0) {
		t->rc = STORE_OVERLOADED;
		http_resume(req);
	}
}

/* ---------- suspended writes ---------- */

struct api_write *api_write_new(struct http_request *req, enum store_call_kind kind)
{
	struct api_write *w = calloc(1, sizeof(*w));
	if (!w) {
		http_reply_error(req, 503, "overloaded", "out of memory");
		return NULL;
	}
	w->req = req;
	w->call.kind = kind;
	w->what = "resource";
	return w;
}

static void api_write_free(struct api_write *w)
{
	if (w->cleanup)
		w->cleanup(w);
	json_decref(w->call.result);
	json_decref(w->body);
	free(w);
}

/* The writer or syncer thread: the commit is done (and synced); wake the connection. */
static void write_done(struct store_call *call)
{
	struct api_write *w = call->arg;
	http_resume(w->req);
}

/* An MHD thread, after resume: reply and free. */
static void write_then(struct http_request *req, void *arg)
{
	struct api_write *w = arg;

	switch (w->call.rc) {
	case STORE_OK:
		if (w->reply)
			w->reply(req, w);
		else if (w->call.result)
			http_reply_json(req, w->status, json_incref(w->call.result));
		else
			http_reply_empty(req, w->status);
		break;
	case STORE_NOTFOUND:
		http_reply_error(req, 404, "not_found", "no %s with that id", w->what);
		break;
	case STORE_CONFLICT:
		http_reply_error(req, 409, "conflict", "%s", w->call.why);
		break;
	case STORE_OVERLOADED:
		http_reply_error(req, 503, "overloaded", "too many writes queued; retry shortly");
		break;
	case STORE_ERR:
		http_add_header(req, "Retry-After", "5");
		http_reply_error(req, 503, "storage_unavailable", "%s",
		                 w->call.why[0] ? w->call.why : "the store failed; nothing was kept");
		break;
	}
	api_write_free(w);
}

void api_write_submit(struct api *api, struct api_write *w)
{
	w->call.done = write_done;
	w->call.arg = w;
	if (http_await(w->req, write_then, w) != 0) {
		http_add_header(w->req, "Retry-After", "5");
		http_reply_error(w->req, 503, "shutting_down", "hookrelay is stopping; retry shortly");
		api_write_free(w);
		return;
	}
	if (store_submit(api->store, &w->call) != 0) {
		w->call.rc = STORE_OVERLOADED;
		http_resume(w->req);
	}
}

void api_healthz(struct api *api, struct http_request *req)
{
	if (store_health(api->store) == STORE_OK) {
		http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
		return;
	}
	http_reply_error(req, 503, "storage_unavailable", "the store does not answer");
}

/* Prometheus text format (version 0.0.4). Needs the admin key when keys are set. */
void api_metrics(struct api *api, struct http_request *req)
{
	struct store_stats st;
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	if (store_stats(api->store, &st) != STORE_OK) {
		http_reply_error(req, 503, "storage_unavailable", "the store does not answer");
		return;
	}
	f = open_memstream(&text, &len);
	if (!f) {
		http_reply_error(req, 500, "internal", "out of memory");
		return;
	}
	int bad = fprintf(f,
	        "# HELP hookrelay_events_published_total Events stored since start (not replays).\n"
	        "# TYPE hookrelay_events_published_total counter\n"
	        "hookrelay_events_published_total %lld\n"
	        "# HELP hookrelay_delivery_attempts_total Attempts recorded since start, by outcome.\n"
	        "# TYPE hookrelay_delivery_attempts_total counter\n"
	        "hookrelay_delivery_attempts_total{outcome=\"delivered\"} %lld\n"
	        "hookrelay_delivery_attempts_total{outcome=\"retry\"} %lld\n"
	        "hookrelay_delivery_attempts_total{outcome=\"failed\"} %lld\n"
	        "# HELP hookrelay_deliveries_pending Deliveries not yet delivered or failed.\n"
	        "# TYPE hookrelay_deliveries_pending gauge\n"
	        "hookrelay_deliveries_pending %lld\n"
	        "# HELP hookrelay_deliveries_in_flight Deliveries leased to the sender.\n"
	        "# TYPE hookrelay_deliveries_in_flight gauge\n"
	        "hookrelay_deliveries_in_flight %lld\n"
	        "# HELP hookrelay_subscriptions Subscriptions not deleted, by state.\n"
	        "# TYPE hookrelay_subscriptions gauge\n"
	        "hookrelay_subscriptions{state=\"enabled\"} %lld\n"
	        "hookrelay_subscriptions{state=\"disabled\"} %lld\n"
	        "# HELP hookrelay_subscriptions_failing Enabled subscriptions whose deliveries "
	        "have failed since their last success.\n"
	        "# TYPE hookrelay_subscriptions_failing gauge\n"
	        "hookrelay_subscriptions_failing %lld\n"
	        "# HELP hookrelay_writer_queue Writes waiting for the writer thread.\n"
	        "# TYPE hookrelay_writer_queue gauge\n"
	        "hookrelay_writer_queue %lld\n"
	        "# HELP hookrelay_store_write_failures_total Batches of writes the database "
	        "refused since start (disk full, I/O error); publishes in them got 503, results "
	        "are retried.\n"
	        "# TYPE hookrelay_store_write_failures_total counter\n"
	        "hookrelay_store_write_failures_total %lld\n",
	        (long long)st.events_published, (long long)st.attempts_delivered,
	        (long long)st.attempts_retry, (long long)st.attempts_failed,
	        (long long)st.deliveries_pending, (long long)st.deliveries_in_flight,
	        (long long)st.subscriptions_enabled, (long long)st.subscriptions_disabled,
	        (long long)st.subscriptions_failing, (long long)st.writer_queue,
	        (long long)st.write_failures) < 0;
	unsigned long refused[HTTP_REFUSED_KINDS];
	http_refused(req, refused);
	bad = bad ||
	      fprintf(f, "# HELP hookrelay_requests_refused_total Requests answered 503 since "
	                 "start, by error code (each with Retry-After): overloaded (write queue "
	                 "or read queue full, or out of memory), storage_unavailable (/healthz "
	                 "included), shutting_down.\n"
	                 "# TYPE hookrelay_requests_refused_total counter\n") < 0;
	for (int i = 0; i < HTTP_REFUSED_KINDS && !bad; i++)
		bad = fprintf(f, "hookrelay_requests_refused_total{code=\"%s\"} %lu\n",
		              http_refusal_codes[i], refused[i]) < 0;
	bad = bad ||
	      histogram_write(f, "hookrelay_delivery_attempt_duration_seconds",
	                      "Time from an attempt's request to its answer or failure.",
	                      &st.attempt_duration) < 0 ||
	      histogram_write(f, "hookrelay_delivery_latency_seconds",
	                      "Time from an event being published (its timestamp) to a 2xx "
	                      "for its delivery, retries included.",
	                      &st.delivery_latency) < 0 ||
	      histogram_write(f, "hookrelay_wal_sync_duration_seconds",
	                      "Time each fdatasync of the WAL took: with --synchronous full every "
	                      "publish waits for one, so a slow disk shows here first.",
	                      &st.wal_sync) < 0 ||
	      ferror(f);
	if (fclose(f) != 0 || bad) {
		free(text);
		text = NULL;
	}
	http_reply_owned(req, 200, "text/plain; version=0.0.4; charset=utf-8", text);
}
