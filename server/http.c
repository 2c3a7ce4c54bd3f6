/*
 * http.c - libmicrohttpd front: request state, bounded body, routing, replies.
 *
 * Each request goes through MHD's three phases (STYLE.md): the first call allocates a
 * struct http_request, routes and authorizes it (route_find), and refuses a declared
 * Content-Length over max_body at once; a refusal decided there is held (req->held)
 * while the middle calls drop the body, and sent by the last call. Otherwise the middle
 * calls append upload data to a buffer that never grows past max_body, and the last
 * call checks the body's size and type and runs the handler (route_run). A handler
 * that must wait for the writer suspends the connection
 * (http_await) and MHD calls us once more after http_resume, when the continuation
 * replies. Request state is freed in the completion callback, whatever happened.
 *
 * Threads: MHD pool threads run everything here except http_resume, which the writer
 * or syncer thread calls; MHD_resume_connection is safe from any thread.
 */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "clock.h"
#include "json_check.h"

#define PATH_MAX_SEGMENTS 8
#define REPLY_HEADERS_MAX 4
#define DISCARD_FACTOR 16               /* an oversize chunked body is read and dropped up to */
#define HTTP_DRAIN_MS 2000 /* at a stop, requests in progress may finish this long */
#define HTTP_LOG_PER_MINUTE 20 /* libmicrohttpd messages written a minute, at most */
/* The request line and headers we take, in bytes of libmicrohttpd's 32 KiB connection
 * pool, which must also hold the answer's headers: a request just under that was
 * processed, and its answer then failed to build (a publish stored, the client told
 * nothing). Below this there is room for any answer. */
#define HTTP_HEADERS_MAX (24u * 1024)
/* per header or query argument besides its name and value: ": ", CRLF, and the record
 * libmicrohttpd keeps for it (7 words) */
#define HTTP_RECORD_BYTES 60
#define DISCARD_MIN (8u * 1024 * 1024) /* max(DISCARD_FACTOR * max_body, DISCARD_MIN) bytes */
/* A reply is held in memory until its client has read it all. Replies of LARGE_REPLY
 * bytes and up (list pages reach 4 MiB) count against HELD_REPLIES_MAX in all: past it a
 * large reply is a 503 instead, so that clients that stop reading cannot pin pages until
 * the memory runs out (1,024 connections of 4 MiB). */
#define LARGE_REPLY (64u * 1024)
#define HELD_REPLIES_MAX (64u * 1024 * 1024)
/* Request bodies being received, in all: past it a body is dropped as it comes and
 * answered 503 (1,024 clients trickling --max-body each held 1 GiB at the default).
 * Bodies up to LARGE_REPLY are not counted, and one body alone always goes. */
#define BODIES_MAX (64u * 1024 * 1024)

struct http_server {
	struct MHD_Daemon *daemon;
	struct api *api;
	size_t max_body;          /* bytes */
	pthread_mutex_t lock;     /* guards the four fields below */
	int suspended;            /* requests waiting for the writer */
	int in_progress;          /* requests begun and not completed */
	int closing;              /* set by http_stop once drained: no request may suspend */
	atomic_int stopping;      /* set by http_stop: requests begun since may not suspend,
	                             and every reply closes its connection */
	atomic_int resuming;      /* http_resume calls still inside MHD_resume_connection,
	                             which touches the daemon after the request may be done */
	pthread_mutex_t log_lock; /* guards the three fields below */
	int64_t log_window_ms;    /* monotonic start of the current minute of MHD messages */
	unsigned int log_shown;   /* messages written in it */
	unsigned long log_dropped; /* messages not written in it */
	atomic_ulong refused[HTTP_REFUSED_KINDS]; /* 503s answered, by code (http_refused) */
	atomic_size_t large_held;                 /* bytes of large replies libmicrohttpd holds */
	atomic_size_t bodies_held;                /* bytes allocated for request bodies */
};

/* A large reply's body and what it counts for, freed by libmicrohttpd. */
struct large_reply {
	struct http_server *srv;
	size_t len;
	char *body;
};

static void large_reply_free(void *cls)
{
	struct large_reply *r = cls;

	atomic_fetch_sub(&r->srv->large_held, r->len);
	free(r->body);
	free(r);
}

/* A response for body (malloc'd, or NULL for none; freed in any case), counted against
 * HELD_REPLIES_MAX when large. NULL: out of memory, or no room (*full set). */
static struct MHD_Response *response_for(struct http_server *srv, char *body, size_t len, int *full)
{
	struct MHD_Response *resp;
	struct large_reply *r;

	*full = 0;
	if (!body || len < LARGE_REPLY) {
		resp = MHD_create_response_from_buffer(
		    len, body, body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
		if (!resp)
			free(body);
		return resp;
	}
	/* (one reply alone always goes: an event of --max-body's 64 MiB, shown in its
	 * envelope, is longer than the budget, and no retry would ever get it) */
	size_t before = atomic_fetch_add(&srv->large_held, len);
	if (before != 0 && before + len > HELD_REPLIES_MAX) {
		atomic_fetch_sub(&srv->large_held, len);
		*full = 1;
		free(body);
		return NULL;
	}
	r = malloc(sizeof *r);
	resp = r ? MHD_create_response_from_buffer_with_free_callback_cls(len, body,
	                                                                  large_reply_free, r)
	         : NULL;
	if (!resp) {
		atomic_fetch_sub(&srv->large_held, len);
		free(r);
		free(body);
		return NULL;
	}
	*r = (struct large_reply){srv, len, body};
	return resp;
}

struct reply_header {
	char *name;
	char *value;
};

#define HEADERS_TRIMMED_MAX 4 /* header values http_header trims per request (3 are read) */

struct http_request {
	struct http_server *srv;
	struct MHD_Connection *conn;
	const char *method;
	char *body;             /* NUL-terminated, at most srv->max_body bytes */
	size_t body_len;        /* bytes held */
	size_t body_cap;        /* bytes allocated for body (> body_len) */
	size_t body_seen;       /* bytes received, held or dropped */
	int too_large;          /* body passed max_body */
	int no_room;            /* bodies_held was full: body dropped, answered 503 */
	int ambiguous;          /* framing or Host ambiguous: refused, connection closed */
	int encoded_separator;  /* the raw path held %00 or %2F (see on_uri) */
	size_t header_bytes;    /* of libmicrohttpd's pool the request line and headers take */
	const struct route *route; /* set by route_find once routed and authorized */
	int hold;               /* replies are held (see held), not queued yet */
	struct MHD_Response *held; /* a reply route_find made, queued once the body is in */
	unsigned int held_status;
	int routed;             /* the handler ran */
	int replied;            /* a response was queued */
	const char *path_param; /* points into path_copy */
	char *path_copy;
	struct reply_header headers[REPLY_HEADERS_MAX];
	int nheaders;
	char *trimmed[HEADERS_TRIMMED_MAX]; /* http_header's copies of values it trimmed */
	int ntrimmed;
	void (*then)(struct http_request *, void *);
	void *then_arg;
	int suspended;
	int before_stop; /* begun before http_stop: may finish during the drain */
};

static size_t discard_limit(const struct http_server *srv)
{
	size_t limit = srv->max_body * DISCARD_FACTOR;
	return limit > DISCARD_MIN ? limit : DISCARD_MIN;
}

/* ---------- replies ---------- */

static void queue_reply_as(struct http_request *req, int status, const char *content_type,
                           char *body, size_t len)
{
	int full;
	struct MHD_Response *resp = response_for(req->srv, body, len, &full);

	if (full) {
		http_reply_error(
		    req, 503, "overloaded",
		    "too many large replies are waiting for their clients to read them;"
		    " retry shortly");
		return;
	}
	if (!resp)
		return;
	if (body)
		MHD_add_response_header(resp, "Content-Type", content_type);
	int retry_after = 0;
	for (int i = 0; i < req->nheaders; i++) {
		MHD_add_response_header(resp, req->headers[i].name, req->headers[i].value);
		retry_after |= strcasecmp(req->headers[i].name, "Retry-After") == 0;
	}
	/* The docs promise Retry-After on every 503: a route that names no wait gets 1 s. */
	if (status == 503 && !retry_after)
		MHD_add_response_header(resp, "Retry-After", "1");
	if (req->too_large || req->ambiguous || atomic_load(&req->srv->stopping))
		MHD_add_response_header(resp, "Connection", "close");
	if (req->hold && !req->held) {
		req->held = resp;
		req->held_status = (unsigned int)status;
		req->replied = 1;
		return;
	}
	if (MHD_queue_response(req->conn, (unsigned int)status, resp) == MHD_YES)
		req->replied = 1;
	MHD_destroy_response(resp);
}

static void queue_reply(struct http_request *req, int status, char *body, size_t len)
{
	queue_reply_as(req, status, "application/json", body, len);
}

void http_reply_owned(struct http_request *req, int status, const char *content_type, char *body)
{
	if (!body) {
		http_reply_error(req, 500, "internal", "out of memory");
		return;
	}
	queue_reply_as(req, status, content_type, body, strlen(body));
}

void http_reply_json(struct http_request *req, int status, json_t *body)
{
	char *text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(body);
	if (!text) {
		http_reply_error(req, 500, "internal", "out of memory");
		return;
	}
	queue_reply(req, status, text, strlen(text));
}

const char *const http_refusal_codes[HTTP_REFUSED_KINDS] = {"overloaded", "storage_unavailable",
                                                            "shutting_down"};

void http_refused(const struct http_request *req, unsigned long out[HTTP_REFUSED_KINDS])
{
	for (int i = 0; i < HTTP_REFUSED_KINDS; i++)
		out[i] = atomic_load_explicit(&req->srv->refused[i], memory_order_relaxed);
}

void http_reply_error(struct http_request *req, int status, const char *code, const char *fmt, ...)
{
	char message[512];
	va_list ap;

	for (int i = 0; status == 503 && i < HTTP_REFUSED_KINDS; i++) {
		if (strcmp(code, http_refusal_codes[i]) == 0)
			atomic_fetch_add_explicit(&req->srv->refused[i], 1, memory_order_relaxed);
	}

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	/* It may quote what the client sent (a path, a header name), cut mid-character. */
	json_utf8_repair(message, strlen(message));
	json_t *body = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message);
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text) { /* out of memory: the code alone (a snake_case literal), still JSON */
		char fixed[160];
		snprintf(fixed, sizeof(fixed), "{\"error\":{\"code\":\"%.64s\",\"message\":\"\"}}", code);
		text = strdup(fixed);
	}
	queue_reply(req, status, text, text ? strlen(text) : 0);
}

void http_reply_text(struct http_request *req, int status, const char *json_text)
{
	char *copy = strdup(json_text);
	queue_reply(req, status, copy, copy ? strlen(copy) : 0);
}

void http_reply_empty(struct http_request *req, int status)
{
	queue_reply(req, status, NULL, 0);
}

void http_add_header(struct http_request *req, const char *name, const char *value)
{
	if (req->nheaders == REPLY_HEADERS_MAX)
		return;
	struct reply_header *h = &req->headers[req->nheaders];
	h->name = strdup(name);
	h->value = strdup(value);
	if (!h->name || !h->value) {
		free(h->name);
		free(h->value);
		return;
	}
	req->nheaders++;
}

/* ---------- accessors ---------- */

const char *http_method(const struct http_request *req)
{
	return req->method;
}

const char *http_path_param(const struct http_request *req)
{
	return req->path_param;
}

const char *http_query(const struct http_request *req, const char *name)
{
	return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct query_walk {
	int (*fn)(void *ctx, const char *name, const char *value);
	void *ctx;
	int rc;
};

static enum MHD_Result query_step(void *arg, enum MHD_ValueKind kind, const char *name,
                                  size_t name_len, const char *value, size_t value_len)
{
	struct query_walk *w = arg;
	(void)kind;
	if (strlen(name) != name_len || (value && strlen(value) != value_len))
		w->rc = HTTP_QUERY_NUL;
	else
		w->rc = w->fn(w->ctx, name, value);
	return w->rc ? MHD_NO : MHD_YES;
}

int http_query_each(const struct http_request *req,
                    int (*fn)(void *ctx, const char *name, const char *value), void *ctx)
{
	struct query_walk w = {fn, ctx, 0};
	MHD_get_connection_values_n(req->conn, MHD_GET_ARGUMENT_KIND, query_step, &w);
	return w.rc;
}

const char *http_header(struct http_request *req, const char *name)
{
	const char *value = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
	size_t len = value ? strlen(value) : 0;
	char *copy;

	/* RFC 9110 5.5: white space around a value is not part of it; libmicrohttpd drops
	 * only the white space before it. (Kept, "Idempotency-Key: k " and "k" were two
	 * keys, and a key followed by a space was a 401.) A value that ends in some is
	 * copied without it, once per request; out of memory, or past the slots, the value
	 * is given as it came, as before. */
	if (len == 0 || (value[len - 1] != ' ' && value[len - 1] != '\t'))
		return value;
	while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t'))
		len--;
	if (req->ntrimmed == HEADERS_TRIMMED_MAX || !(copy = strndup(value, len)))
		return value;
	req->trimmed[req->ntrimmed++] = copy;
	return copy;
}

struct header_count {
	const char *name;
	int n;
};

static enum MHD_Result count_step(void *arg, enum MHD_ValueKind kind, const char *name,
                                  const char *value)
{
	struct header_count *c = arg;
	(void)kind;
	(void)value;
	c->n += strcasecmp(name, c->name) == 0;
	return MHD_YES;
}

int http_header_count(const struct http_request *req, const char *name)
{
	struct header_count c = {name, 0};
	MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_step, &c);
	return c.n;
}

const char *http_body(const struct http_request *req, size_t *len)
{
	*len = req->body_len;
	return req->body ? req->body : "";
}

int http_await(struct http_request *req, void (*then)(struct http_request *req, void *arg),
               void *arg)
{
	struct http_server *srv = req->srv;

	/* Checked and counted under one lock: once http_stop set `closing`, the count can
	 * only fall, so MHD is never stopped with a connection suspended. A request begun
	 * before the stop may still suspend until then: what a client was sending when
	 * SIGTERM came gets its real answer. */
	pthread_mutex_lock(&srv->lock);
	if (srv->closing || (atomic_load(&srv->stopping) && !req->before_stop)) {
		pthread_mutex_unlock(&srv->lock);
		return -1;
	}
	srv->suspended++;
	pthread_mutex_unlock(&srv->lock);
	req->then = then;
	req->then_arg = arg;
	req->suspended = 1;
	MHD_suspend_connection(req->conn);
	return 0;
}

void http_resume(struct http_request *req)
{
	struct http_server *srv = req->srv; /* req may be answered and gone once resumed */

	atomic_fetch_add(&srv->resuming, 1);
	MHD_resume_connection(req->conn);
	atomic_fetch_sub(&srv->resuming, 1);
}

/* ---------- routing ---------- */

enum body_rule { BODY_NONE, BODY_JSON, BODY_OPTIONAL_JSON };

struct route {
	const char *method;
	const char *pattern; /* e.g. "/v1/events/{id}" written with a star for the id */
	enum body_rule body;
	void (*handler)(struct api *api, struct http_request *req);
};

static const struct route routes[] = {
	{"GET", "/healthz", BODY_NONE, api_healthz},
	{"GET", "/metrics", BODY_NONE, api_metrics},
	{"POST", "/v1/events/batch", BODY_JSON, api_events_batch},
	{"POST", "/v1/events", BODY_JSON, api_events_create},
	{"GET", "/v1/events", BODY_NONE, api_events_list},
	{"GET", "/v1/events/*", BODY_NONE, api_events_get},
	{"POST", "/v1/subscriptions", BODY_JSON, api_subscriptions_create},
	{"GET", "/v1/subscriptions", BODY_NONE, api_subscriptions_list},
	{"GET", "/v1/subscriptions/*", BODY_NONE, api_subscriptions_get},
	{"GET", "/v1/subscriptions/*/stats", BODY_NONE, api_subscriptions_stats},
	{"PATCH", "/v1/subscriptions/*", BODY_JSON, api_subscriptions_update},
	{"DELETE", "/v1/subscriptions/*", BODY_NONE, api_subscriptions_delete},
	{"POST", "/v1/subscriptions/*/rotate-secret", BODY_OPTIONAL_JSON, api_subscriptions_rotate},
	{"POST", "/v1/subscriptions/*/recover", BODY_JSON, api_subscriptions_recover},
	{"POST", "/v1/subscriptions/*/replay", BODY_JSON, api_subscriptions_replay},
	{"GET", "/v1/deliveries", BODY_NONE, api_deliveries_list},
	{"GET", "/v1/deliveries/*", BODY_NONE, api_deliveries_get},
	{"POST", "/v1/deliveries/*/retry", BODY_NONE, api_deliveries_retry},
};
#define ROUTE_COUNT (sizeof(routes) / sizeof(routes[0]))

/* Matches `path` against `pattern`; on a match returns the number of wildcard segments
 * used (0 or 1) and points *param at the wildcard segment inside `path`; -1 otherwise.
 * `path` is modified: the wildcard segment is NUL-terminated in place by the caller's copy. */
static int path_match(const char *pattern, const char *path, const char **param, size_t *param_len)
{
	int wild = 0;
	while (*pattern && *path) {
		if (*pattern == '*') {
			const char *end = strchr(path, '/');
			size_t len = end ? (size_t)(end - path) : strlen(path);
			if (len == 0)
				return -1;
			*param = path;
			*param_len = len;
			path += len;
			pattern++;
			wild = 1;
			continue;
		}
		if (*pattern != *path)
			return -1;
		pattern++;
		path++;
	}
	return *pattern == '\0' && *path == '\0' ? wild : -1;
}

static int content_type_is_json(const char *ct)
{
	static const char want[] = "application/json";
	if (!ct || strncasecmp(ct, want, sizeof(want) - 1) != 0)
		return 0;
	ct += sizeof(want) - 1;
	while (*ct == ' ')
		ct++;
	return *ct == '\0' || *ct == ';';
}

static void reply_too_large(struct http_request *req)
{
	http_reply_error(req, 413, "payload_too_large", "the request body is over the %zu-byte limit",
	                 req->srv->max_body);
}

struct request_shape {
	const char *content_length; /* the first one */
	int lengths_differ;         /* another Content-Length with another value */
	int codings;                /* Transfer-Encoding headers */
	int other_coding;           /* one that is not exactly "chunked" */
	int hosts;                  /* Host headers */
	int authorizations;         /* Authorization headers */
	int content_types;          /* Content-Type headers */
	int spaced_name;            /* a name with white space in it (before its colon) */
	size_t bytes;               /* of libmicrohttpd's pool the request takes, about */
};

/* Adds what a header or query argument takes of libmicrohttpd's pool to *(size_t *)arg. */
static enum MHD_Result size_step(void *arg, enum MHD_ValueKind kind, const char *name,
                                 size_t name_len, const char *value, size_t value_len)
{
	(void)kind;
	(void)name;
	(void)value;
	*(size_t *)arg += name_len + value_len + HTTP_RECORD_BYTES;
	return MHD_YES;
}

static enum MHD_Result shape_step(void *arg, enum MHD_ValueKind kind, const char *name,
                                  size_t name_len, const char *value, size_t value_len)
{
	struct request_shape *f = arg;
	size_step(&f->bytes, kind, name, name_len, value, value_len);
	/* "Content-Length : 5" is kept as an unknown header, which a proxy may take for
	 * the length (RFC 9112 5.1: answer 400) */
	if (strpbrk(name, " \t"))
		f->spaced_name = 1;
	if (strcasecmp(name, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
		if (!f->content_length)
			f->content_length = value ? value : "";
		else if (strcmp(f->content_length, value ? value : "") != 0)
			f->lengths_differ = 1;
	} else if (strcasecmp(name, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
		f->codings++;
		/* MHD gives the value without surrounding white space */
		if (!value || strcasecmp(value, "chunked") != 0)
			f->other_coding = 1;
	} else if (strcasecmp(name, MHD_HTTP_HEADER_HOST) == 0) {
		f->hosts++;
	} else if (strcasecmp(name, MHD_HTTP_HEADER_AUTHORIZATION) == 0) {
		f->authorizations++;
	} else if (strcasecmp(name, MHD_HTTP_HEADER_CONTENT_TYPE) == 0) {
		f->content_types++;
	}
	return MHD_YES;
}

/* Why the request is ambiguous, or NULL: two Content-Lengths that differ, or one beside
 * Transfer-Encoding (RFC 9112 6.3): a proxy in front may read the other one, and the rest
 * of the body would then be taken for the next request (request smuggling); a header
 * name with white space before its colon, for the same reason; or an HTTP/1.1 request
 * without exactly one Host header (RFC 9112 3.2: a server must answer 400), which a
 * proxy and we could route differently; or two Authorization or Content-Type headers,
 * of which a proxy and we could read different ones. Sets *bytes to what the request
 * line and headers take of libmicrohttpd's pool: over HTTP_HEADERS_MAX, answered 431. */
static const char *request_conflict(const struct http_request *req, const char *url,
                                    const char *version, size_t *bytes)
{
	struct request_shape f = {0};
	MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, shape_step, &f);
	MHD_get_connection_values_n(req->conn, MHD_GET_ARGUMENT_KIND, size_step, &f.bytes);
	/* libmicrohttpd copies a Cookie header into the pool to split it, a record a
	 * cookie: counted once, a large one left no room for the answer (the request was
	 * run, the event stored, and the client got none) */
	MHD_get_connection_values_n(req->conn, MHD_COOKIE_KIND, size_step, &f.bytes);
	f.bytes += strlen(url);
	*bytes = f.bytes;
	if (f.bytes > HTTP_HEADERS_MAX)
		return "the request headers (with the URL) are over 24 KiB in all";
	if (f.spaced_name)
		return "a header name has white space before its colon";
	if (f.lengths_differ)
		return "the request has Content-Length headers that differ";
	if (f.content_length && f.codings)
		return "the request has both Content-Length and Transfer-Encoding";
	/* RFC 9112 6.3: a coding other than chunked, or chunked not last, leaves the length
	 * unknown; we know no other coding, so Transfer-Encoding is "chunked", once */
	if (f.codings > 1 || f.other_coding)
		return "the request's Transfer-Encoding is not \"chunked\" alone";
	if (f.hosts > 1)
		return "the request has more than one Host header";
	if (f.hosts == 0 && version && strcmp(version, MHD_HTTP_VERSION_1_1) == 0)
		return "an HTTP/1.1 request needs a Host header";
	/* We read the first; a proxy in front may read the last (whose key, whose type?) */
	if (f.authorizations > 1)
		return "the request has more than one Authorization header";
	if (f.content_types > 1)
		return "the request has more than one Content-Type header";
	return NULL;
}

/* The bytes a body of this allocation counts toward BODIES_MAX. */
static size_t body_charge(size_t cap)
{
	return cap > LARGE_REPLY ? cap : 0;
}

/* Makes room for `more` bytes after the body (and its NUL), doubling what it has.
 * Grown to fit each chunk instead, the body was copied whole at every chunk where the
 * allocator cannot grow it in place (glibc's mremap hides it; under ASan a 64 MiB
 * publish took 106 s, 1.1-1.3 s now). Not to a declared length: that would let a client pin
 * --max-body of memory by sending one byte. The caller has checked that body_len + more
 * is within max_body. Returns 0, 1 if that would pass BODIES_MAX (nothing allocated), or
 * -1 out of memory. */
static int body_reserve(struct http_request *req, size_t more)
{
	size_t need = req->body_len + more + 1;
	size_t cap = req->body_cap * 2;

	if (need <= req->body_cap)
		return 0;
	if (cap < need)
		cap = need;
	if (cap > req->srv->max_body + 1)
		cap = req->srv->max_body + 1;
	/* bodies of up to LARGE_REPLY bytes are not counted: small publishes always go */
	size_t own = body_charge(req->body_cap);
	size_t charge = body_charge(cap) - own;
	size_t before = atomic_fetch_add(&req->srv->bodies_held, charge);
	if (charge && before > own && before + charge > BODIES_MAX) { /* others' too */
		atomic_fetch_sub(&req->srv->bodies_held, charge);
		return 1;
	}
	char *grown = realloc(req->body, cap);
	if (!grown) {
		atomic_fetch_sub(&req->srv->bodies_held, charge);
		return -1;
	}
	req->body = grown;
	req->body_cap = cap;
	return 0;
}

/* 1 if the request declares a body longer than max_body. */
static int declared_too_large(const struct http_request *req)
{
	const char *cl =
	    MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	char *end = NULL;
	unsigned long long n;

	if (!cl)
		return 0;
	n = strtoull(cl, &end, 10);
	return end && *end == '\0' && n > req->srv->max_body;
}

/* The path of a request target: a client may send the absolute form
 * ("POST http://relay:8080/v1/events", RFC 9112 3.2.2, which a server must accept), as
 * some proxies and tools do; the authority in it is not ours to check. */
static const char *target_path(const char *url)
{
	size_t skip = strncasecmp(url, "http://", 7) == 0    ? 7
	              : strncasecmp(url, "https://", 8) == 0 ? 8
	                                                     : 0;
	if (!skip)
		return url;
	const char *path = strchr(url + skip, '/');
	return path ? path : "/";
}

static void route_match(struct http_request *req, const char *url)
{
	const struct route *found = NULL;
	const char *param = NULL, *method = req->method;
	size_t param_len = 0;
	char allow[128] = "";
	size_t allow_len = 0;

	if (strcmp(method, "HEAD") == 0)
		method = "GET";
	/* Prefer literal routes ("/v1/events/batch") over wildcard ones ("/v1/events/{id}"). */
	for (int pass = 0; pass <= 1 && !found && allow_len == 0; pass++) {
		for (size_t i = 0; i < ROUTE_COUNT; i++) {
			const char *p = NULL;
			size_t plen = 0;
			int wild = path_match(routes[i].pattern, url, &p, &plen);
			if (wild != pass)
				continue;
			if (strcmp(routes[i].method, method) == 0) {
				found = &routes[i];
				param = p;
				param_len = plen;
				break;
			}
			allow_len += (size_t)snprintf(allow + allow_len, sizeof(allow) - allow_len, "%s%s%s",
			                              allow_len ? ", " : "", routes[i].method,
			                              strcmp(routes[i].method, "GET") == 0 ? ", HEAD" : "");
			if (allow_len >= sizeof(allow))
				allow_len = sizeof(allow) - 1;
		}
	}
	if (!found) {
		if (allow_len) {
			http_add_header(req, "Allow", allow);
			http_reply_error(req, 405, "method_not_allowed", "%s is not allowed on %s (allowed: %s)",
			                 req->method, url, allow);
		} else {
			http_reply_error(req, 404, "not_found", "no route for %s", url);
		}
		return;
	}
	if (param) {
		req->path_copy = strndup(param, param_len);
		if (!req->path_copy) {
			http_reply_error(req, 500, "internal", "out of memory");
			return;
		}
		req->path_param = req->path_copy;
	}
	if (api_authorize(req->srv->api, req, found->handler) != 0)
		return; /* it replied */
	req->route = found;
	if (req->too_large) /* refused before reading it: MHD closes the connection after */
		reply_too_large(req);
}

/* Runs when the headers are in, before any body is read: finds the route, and decides
 * what does not depend on the body (404, 405, 401, 403, and 413 for a declared length
 * over the limit), so an unknown or unauthenticated client never gets a body buffered
 * or a 413/415 that tells it about the route. Such a reply is held while the body is
 * read and dropped (as an oversize chunked one is), then sent, so the connection stays
 * usable; only a declared length over the limit is answered at once, and the
 * connection closed. HEAD is routed as GET (libmicrohttpd leaves the body out). */
static void route_find(struct http_request *req, const char *url, const char *version)
{
	const char *expect =
	    MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);

	const char *conflict = request_conflict(req, url, version, &req->header_bytes);
	if (conflict) { /* refused at once, whatever the route; the connection is closed */
		req->ambiguous = 1;
		if (req->header_bytes > HTTP_HEADERS_MAX)
			http_reply_error(req, 431, "headers_too_large", "%s", conflict);
		else
			http_reply_error(req, 400, "malformed_request", "%s", conflict);
		return;
	}
	req->too_large = declared_too_large(req); /* any reply then says Connection: close */
	/* A client that waits for 100 Continue sends no body if refused now. */
	req->hold = !req->too_large && !(expect && strcasecmp(expect, "100-continue") == 0);
	if (req->encoded_separator)
		http_reply_error(
		    req, 404, "not_found",
		    "no route: the path holds an encoded NUL or slash (%%00 or %%2F), or"
		    " a '#'");
	else
		route_match(req, target_path(url));
	req->hold = 0;
}

/* Runs once the whole body is in, for a request route_find let through. */
static void route_run(struct http_request *req)
{
	const struct route *found = req->route;

	if (req->too_large) {
		reply_too_large(req);
		return;
	}
	if (req->no_room) {
		http_reply_error(
		    req, 503, "overloaded",
		    "too many request bodies are being received at once; retry shortly");
		return;
	}
	if (found->body == BODY_JSON || (found->body == BODY_OPTIONAL_JSON && req->body_len > 0)) {
		if (!content_type_is_json(http_header(req, "Content-Type"))) {
			http_reply_error(req, 415, "unsupported_media_type",
			                 "the body must be JSON with Content-Type: application/json");
			return;
		}
	}
	found->handler(req->srv->api, req);
}

/* ---------- MHD callbacks ---------- */

/* What on_uri hands on_request (as its first *con_cls) for a path that holds an encoded
 * NUL or slash; it is never freed, and on_request replaces it with the request. */
static char encoded_separator_mark;

/* 1 if the path of a raw request target (before its query) holds %00 or %2F. */
static int path_has_encoded_separator(const char *uri)
{
	/* From the start, not from target_path(): in the absolute form an authority like
	 * "h%2Fv1%2Fsubscriptions%2Fsub_4%00x" decodes into a path of its own, and no real
	 * authority holds either escape. Up to the query only: libmicrohttpd takes a '#'
	 * for part of the path (and "http://h#/v1/..." routes as /v1/...), and a request
	 * target never holds a fragment, so a '#' is refused as well. */
	for (const char *p = uri; *p && *p != '?'; p++)
		if (*p == '#' || (p[0] == '%' && ((p[1] == '0' && p[2] == '0') ||
		                                  (p[1] == '2' && (p[2] == 'F' || p[2] == 'f')))))
			return 1;
	return 0;
}

/* MHD's URI callback: sees the request target before MHD decodes it (all of it: the
 * absolute form's authority too). Decoded, a %00
 * ended the path where it stood (DELETE /v1/subscriptions/sub_4%00x deleted sub_4, and
 * /v1/subscriptions/sub_1%00/stats answered as /v1/subscriptions/sub_1), and a %2F split
 * a segment (/v1/deliveries/dlv_1%2Fretry routed as .../retry): a proxy allowing or
 * logging by the raw path saw one route while another ran. Such a path is no route. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	(void)cls;
	(void)conn;
	return path_has_encoded_separator(uri) ? &encoded_separator_mark : NULL;
}

static void run_continuation(struct http_request *req)
{
	struct http_server *srv = req->srv;

	req->suspended = 0;
	req->then(req, req->then_arg);
	pthread_mutex_lock(&srv->lock);
	srv->suspended--;
	pthread_mutex_unlock(&srv->lock);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
	struct http_server *srv = cls;
	struct http_request *req = *con_cls;
	int encoded_separator = req == (void *)&encoded_separator_mark;

	if (!req || encoded_separator) {
		req = calloc(1, sizeof(*req));
		if (!req)
			return MHD_NO;
		req->encoded_separator = encoded_separator;
		req->srv = srv;
		req->conn = conn;
		req->method = method;
		pthread_mutex_lock(&srv->lock);
		req->before_stop = !atomic_load(&srv->stopping);
		srv->in_progress++;
		pthread_mutex_unlock(&srv->lock);
		*con_cls = req;
		route_find(req, url, version);
		return MHD_YES;
	}

	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		req->body_seen += n;
		if (req->held) /* answered already: drop the body, within the discard bound */
			return req->body_seen > discard_limit(srv) ? MHD_NO : MHD_YES;
		if (req->replied)
			return MHD_YES;
		if (req->too_large || req->body_seen > srv->max_body) { /* (held or dropped) */
			/* A chunked body has no length to refuse up front, and MHD 0.9.75 cannot
			 * answer mid-upload: drop the bytes (no memory held) and answer 413 at the
			 * end, unless the sender goes on past the discard bound: then hang up. */
			req->too_large = 1;
			return req->body_seen > discard_limit(srv) ? MHD_NO : MHD_YES;
		}
		if (req->no_room)
			return req->body_seen > discard_limit(srv) ? MHD_NO : MHD_YES;
		int reserved = body_reserve(req, n);
		if (reserved > 0) { /* no room: drop the body (and what it had), 503 at its end */
			req->no_room = 1;
			atomic_fetch_sub(&srv->bodies_held, body_charge(req->body_cap));
			free(req->body);
			req->body = NULL;
			req->body_len = req->body_cap = 0;
			return MHD_YES;
		}
		if (reserved != 0)
			return MHD_NO;
		memcpy(req->body + req->body_len, upload_data, n);
		req->body_len += n;
		req->body[req->body_len] = '\0';
		return MHD_YES;
	}

	if (req->held) {
		if (atomic_load(&srv->stopping)) /* decided before the stop began */
			MHD_add_response_header(req->held, "Connection", "close");
		enum MHD_Result queued = MHD_queue_response(conn, req->held_status, req->held);
		MHD_destroy_response(req->held);
		req->held = NULL;
		return queued == MHD_YES ? MHD_YES : MHD_NO; /* MHD_NO: close the connection */
	}
	if (req->replied)
		return MHD_YES;
	if (req->suspended) {
		/* Resumed: the continuation replies. */
		run_continuation(req);
		if (!req->replied)
			http_reply_error(req, 500, "internal", "no reply");
		return MHD_YES;
	}
	if (!req->route)
		return MHD_NO; /* route_find could not even build its refusal (out of memory) */
	if (!req->routed) {
		size_t trailers = 0;
		req->routed = 1;
		/* A chunked body's trailers come after the headers were checked and take the
		 * same pool: counted here, or they left no room for the answer (a publish
		 * stored, the client told nothing). */
		MHD_get_connection_values_n(conn, MHD_FOOTER_KIND, size_step, &trailers);
		if (req->header_bytes + trailers > HTTP_HEADERS_MAX) {
			req->ambiguous = 1; /* the connection is closed */
			http_reply_error(req, 431, "headers_too_large",
			                 "the request headers and trailers (with the URL) are over "
			                 "24 KiB in all");
		} else {
			route_run(req);
		}
		if (!req->replied && !req->suspended)
			http_reply_error(req, 500, "internal", "no reply");
	}
	return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
	struct http_request *req = *con_cls;
	(void)cls;
	(void)conn;
	(void)toe;
	if (!req || req == (void *)&encoded_separator_mark)
		return; /* on_request never ran */
	/* The client went away while we waited for the writer: MHD resumed the connection
	 * and found it closed without calling on_request again. The continuation still owns
	 * the write's resources; its reply goes nowhere. (A suspended connection is completed
	 * only after it was resumed, so the writer is done with it.) */
	if (req->suspended)
		run_continuation(req);
	pthread_mutex_lock(&req->srv->lock);
	req->srv->in_progress--;
	pthread_mutex_unlock(&req->srv->lock);
	for (int i = 0; i < req->nheaders; i++) {
		free(req->headers[i].name);
		free(req->headers[i].value);
	}
	if (req->held)
		MHD_destroy_response(req->held); /* the client left before its body was in */
	for (int i = 0; i < req->ntrimmed; i++)
		free(req->trimmed[i]);
	free(req->path_copy);
	atomic_fetch_sub(&req->srv->bodies_held, body_charge(req->body_cap));
	free(req->body);
	free(req);
	*con_cls = NULL;
}

/* libmicrohttpd's own messages (a connection it dropped, a request it could not parse)
 * go to stderr with our prefix, at most HTTP_LOG_PER_MINUTE a minute: a client that
 * opens and breaks connections in a loop must not fill the operator's disk. The first
 * message of a new minute says how many the last one left out. */
static void http_log(void *cls, const char *fmt, va_list ap)
{
	struct http_server *srv = cls;
	int64_t now = clock_mono_ms();

	pthread_mutex_lock(&srv->log_lock);
	if (now - srv->log_window_ms >= 60 * 1000) {
		if (srv->log_dropped)
			fprintf(
			    stderr,
			    "hookrelay: http: %lu more libmicrohttpd messages in the last minute "
			    "were not written\n",
			    srv->log_dropped);
		srv->log_window_ms = now;
		srv->log_shown = 0;
		srv->log_dropped = 0;
	}
	if (srv->log_shown < HTTP_LOG_PER_MINUTE) {
		srv->log_shown++;
		flockfile(stderr);
		fputs("hookrelay: http: ", stderr);
		vfprintf(stderr, fmt, ap);
		funlockfile(stderr);
	} else {
		srv->log_dropped++;
	}
	pthread_mutex_unlock(&srv->log_lock);
}

struct http_server *http_start(const struct http_options *opts, struct api *api, int *port_out,
                               char *err, size_t errlen)
{
	struct http_server *srv = calloc(1, sizeof(*srv));
	struct sockaddr_storage addr;
	const union MHD_DaemonInfo *info;
	/* poll, not epoll: libmicrohttpd 0.9.75 (Debian 12) calls epoll_wait again with the
	 * full timeout when one call returned its 128-event maximum, before it handles those
	 * 128, so 128 requests arriving together sat up to the 60 s connection timeout.
	 * poll costs the same with 64 and 512 busy connections (measured), but walks every
	 * open connection per pass: with 900 idle keep-alive ones a request took ~0.2-0.4 ms
	 * longer (measured). A libmicrohttpd without that loop would let us go back. */
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
	                     MHD_USE_ERROR_LOG;

	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->api = api;
	srv->max_body = opts->max_body;
	memset(&addr, 0, sizeof(addr));
	struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
	if (inet_pton(AF_INET, opts->host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)opts->port);
	} else if (inet_pton(AF_INET6, opts->host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)opts->port);
		flags |= MHD_USE_IPv6;
	} else {
		snprintf(err, errlen, "--listen: '%s' is not a numeric IPv4 or IPv6 address", opts->host);
		free(srv);
		return NULL;
	}
	pthread_mutex_init(&srv->lock, NULL);
	pthread_mutex_init(&srv->log_lock, NULL);
	srv->log_window_ms = clock_mono_ms();
	srv->daemon = MHD_start_daemon(
	    flags, (uint16_t)opts->port, NULL, NULL, on_request, srv,
	    /* first, or MHD writes what comes before it with its own logger */
	    MHD_OPTION_EXTERNAL_LOGGER, http_log, srv, MHD_OPTION_SOCK_ADDR, &addr,
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_URI_LOG_CALLBACK, on_uri,
	    NULL, MHD_OPTION_CONNECTION_LIMIT, HTTP_MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
	    60U,
	    /* last: one thread is no pool, and naming a pool of 1 (or 0) makes MHD print a
	     * warning at every start; MHD_OPTION_END there ends the list instead */
	    opts->threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
	    (unsigned int)opts->threads, MHD_OPTION_END);
	if (!srv->daemon) {
		snprintf(err, errlen, "cannot listen on %s:%d (in use, or not an address of this host)",
		         opts->host, opts->port);
		pthread_mutex_destroy(&srv->lock);
		pthread_mutex_destroy(&srv->log_lock);
		free(srv);
		return NULL;
	}
	info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
	*port_out = info ? info->port : opts->port;
	return srv;
}

void http_stop(struct http_server *srv)
{
	if (!srv)
		return;
	/* Stop accepting, and refuse connections at once: MHD stops polling the listening
	 * socket, and shutting it down (it must stay open until MHD has stopped) makes the
	 * kernel refuse new ones rather than queue them for a reset later. Requests begun
	 * (a body still arriving, a write waiting for the writer, which runs until after
	 * us) may finish for up to HTTP_DRAIN_MS; one begun after now may read but not
	 * write (503 shutting_down), and every reply closes its connection. Then no request
	 * may suspend any more, and once none is suspended MHD stops: it must not be
	 * stopped with a connection suspended. */
	MHD_socket listener = MHD_quiesce_daemon(srv->daemon);
	if (listener != MHD_INVALID_SOCKET)
		shutdown(listener, SHUT_RDWR);
	int64_t deadline = clock_mono_ms() + HTTP_DRAIN_MS;
	atomic_store(&srv->stopping, 1);
	for (int done = 0; !done;) {
		pthread_mutex_lock(&srv->lock);
		if (srv->in_progress == 0 || clock_mono_ms() >= deadline)
			srv->closing = 1;
		done = srv->closing && srv->suspended == 0 && atomic_load(&srv->resuming) == 0;
		pthread_mutex_unlock(&srv->lock);
		if (!done)
			usleep(5 * 1000);
	}
	MHD_stop_daemon(srv->daemon);
	if (listener != MHD_INVALID_SOCKET)
		close(listener); /* ours since the quiesce; MHD's threads are gone only now */
	pthread_mutex_destroy(&srv->lock);
	pthread_mutex_destroy(&srv->log_lock);
	free(srv);
}
