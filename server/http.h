/*
 * http.h - the HTTP front on libmicrohttpd: reads each request body into a bounded
 * buffer, routes it to an api_* handler, and sends the JSON reply.
 *
 * A handler either replies at once (http_reply_*) or calls http_await() and replies
 * later from the continuation, which runs on an MHD thread after http_resume() was
 * called (from any thread, typically the writer's done()). A write therefore never
 * blocks an MHD thread while it waits for fsync.
 *
 * Threads: MHD's pool threads run handlers; http_resume() is thread-safe.
 */
#ifndef HOOKRELAY_HTTP_H
#define HOOKRELAY_HTTP_H

#include <jansson.h>
#include <stddef.h>

struct http_server;
struct http_request;
struct api;

#define HTTP_MAX_CONNECTIONS 1024U /* open client connections at once */

struct http_options {
	const char *host;       /* numeric IPv4 or IPv6 address to listen on */
	int port;               /* 0 = any free port */
	int threads;            /* HTTP threads (1: MHD's polling thread alone, no pool) */
	size_t max_body;        /* bytes; a larger body gets 413 */
};

/* Starts listening. *port_out gets the bound port. NULL with a message in err. */
struct http_server *http_start(const struct http_options *opts, struct api *api, int *port_out,
                               char *err, size_t errlen);

/* Stops accepting, finishes what is running, frees. Accepts NULL. */
void http_stop(struct http_server *srv);

/* Request accessors (borrowed, valid for the request's life). */
const char *http_method(const struct http_request *req);
const char *http_path_param(const struct http_request *req); /* the {id} segment or NULL */
const char *http_query(const struct http_request *req, const char *name);
/* Calls fn for each query argument in the order given (a name may come twice); stops at
 * the first non-zero return and returns it, else 0. A name or value holding a NUL (%00,
 * which every C string would cut short) stops the walk with HTTP_QUERY_NUL. */
#define HTTP_QUERY_NUL (-1000)
int http_query_each(const struct http_request *req,
                    int (*fn)(void *ctx, const char *name, const char *value), void *ctx);
/* The first header of that name (case-insensitive), without the white space at its end
 * (valid while req is), or NULL. */
const char *http_header(struct http_request *req, const char *name);
/* How many headers of that name the request has. */
int http_header_count(const struct http_request *req, const char *name);
const char *http_body(const struct http_request *req, size_t *len);

/* The 503s answered since start, by their error code: the clients turned away. */
enum http_refusal {
	HTTP_REFUSED_OVERLOADED,
	HTTP_REFUSED_STORAGE,
	HTTP_REFUSED_STOPPING,
	HTTP_REFUSED_KINDS
};
extern const char *const http_refusal_codes[HTTP_REFUSED_KINDS];
void http_refused(const struct http_request *req, unsigned long out[HTTP_REFUSED_KINDS]);

/* Replies. Exactly one per request. */
void http_reply_json(struct http_request *req, int status, json_t *body); /* steals body */
void http_reply_error(struct http_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void http_reply_empty(struct http_request *req, int status);
/* Replies with JSON text the caller already serialized (copied). */
void http_reply_text(struct http_request *req, int status, const char *json_text);
/* Replies with a NUL-terminated body of another type; steals body (NULL: a 500). */
void http_reply_owned(struct http_request *req, int status, const char *content_type, char *body);
/* Adds a header to the reply about to be sent (before http_reply_*). Values copied. */
void http_add_header(struct http_request *req, const char *name, const char *value);

/* Suspends the request: `then(req, arg)` runs on an MHD thread after http_resume(req)
 * and must reply. Call http_await before handing req to another thread. Returns 0, or
 * -1 when the server is stopping (nothing suspended: reply now). */
int http_await(struct http_request *req, void (*then)(struct http_request *req, void *arg),
               void *arg);
void http_resume(struct http_request *req);

#endif
