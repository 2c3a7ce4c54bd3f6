/*
 * sender.c - the curl-multi sender: many signed webhook POSTs in flight on one thread.
 *
 * Each job runs in a struct transfer that owns one easy handle. Easy handles are kept
 * on an idle list and reused (curl_easy_reset between jobs) rather than created per
 * attempt; the connections themselves live in the multi handle's pool, so keep-alive
 * to a receiver survives from one delivery to the next. The reset is needed, not only
 * tidy: curl counts, per handle, the times it re-sent a request because a reused
 * connection closed under it, and only a reset clears that count, so without it every
 * sixth such race in a handle's life failed its job ("Connection died, tried 5 times").
 *
 * No host gets more transfers at once than max_per_host, and no subscription more than
 * its jobs' max_in_flight (the store leases jobs ahead of that: see
 * store_sub_lease_max): the ones beyond wait here, in a queue per host, and go to curl
 * as transfers to that host, or of that subscription, end; a subscription's jobs start
 * in the order they came, another's behind them in the queue may pass them. (Handed
 * to curl, they would wait in curl's own queue with their CURLOPT_TIMEOUT_MS already
 * running, so a slow receiver made attempts time out that were never sent; and curl
 * walks its queued transfers on every call.) A job's attempt, its started_at and its
 * signature's timestamp begin when it goes to curl.
 *
 * Invariants:
 * - A transfer is on exactly one list: `live` (added to the multi handle), `failed`
 *   (could not start, or still_wanted said no; waiting for sender_next), its host's `waiting` queue
 * (a job not yet handed to curl) or `idle` (no job, handle reset).
 * - in_flight == length(live) + length(failed) + every host's length(waiting): every job
 *   taken by sender_start comes back exactly once, from sender_next or sender_release.
 * - A job's transfer points at its host (from sender_start until transfer_finish);
 *   host->live counts that host's transfers on `live` and is at most max_per_host; a
 *   host is in the table while it has a live or waiting transfer, and freed after.
 * - Likewise its subscription's sub_wire at that host (from sender_start until
 *   transfer_finish, or until it goes to `failed` unsent): live counts those of its
 *   transfers on `live` (at most its newest job's max_in_flight, when that is set),
 *   waiting those on the host's queue; it is in the table while either is above 0, and
 *   freed no later than its host. A transfer that ends without a 2xx takes its
 *   subscription's waiting jobs at that host to `failed`, unsent.
 * - While a transfer is live, curl writes its error text straight into
 *   res->error (CURLOPT_ERRORBUFFER) and reads the request body straight from
 *   job->body (CURLOPT_POSTFIELDS, no copy). Both belong to the transfer until it is
 *   removed from the multi handle and its easy handle reset, which clears those
 *   pointers before job and result are handed back.
 * - At most SENDER_BODY_MAX bytes of response body are accepted; the first
 *   DELIVERY_SNIPPET_MAX are kept.
 * - With a target policy, every socket a transfer opens is opened by on_open_socket,
 *   which checks the address curl is about to connect to (after DNS, so a rebound name
 *   is caught) and refuses a blocked one. The refusal's reason waits in t->blocked and
 *   replaces curl's generic "couldn't connect" text when the transfer fails. No proxy
 *   is ever used (CURLOPT_PROXY ""), so that address is always the receiver's.
 * - An https receiver's certificate is checked (curl's default, never turned off) against
 *   one CA file: libcurl's built-in bundle (the system's), or opts.ca_file. Not a CA
 *   directory too (CURLOPT_CAPATH is cleared: Debian's libcurl sets /etc/ssl/certs), as
 *   without one libcurl loads the file once into the multi handle's store and keeps it
 *   for CA_CACHE_SECONDS (CURLOPT_CA_CACHE_TIMEOUT: a file replaced in place, as a
 *   mounted ConfigMap or cert-manager does, is read again within that); with a
 *   directory it parsed the whole system bundle again for every new connection, ~40 ms
 *   of this thread each (measured). Only a libcurl built with a directory and no bundle
 *   file keeps its directory (ca_dir_only).
 *
 * Threads: everything here runs on the owning thread (the dispatcher's), except
 * sender_wakeup(), which only calls curl_multi_wakeup() (documented thread-safe).
 */
#include "sender.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "backoff.h"
#include "clock.h"
#include "hash.h"
#include "sign.h"

_Static_assert(DELIVERY_ERROR_MAX >= CURL_ERROR_SIZE,
               "result->error is curl's CURLOPT_ERRORBUFFER and must hold CURL_ERROR_SIZE");

struct transfer {
	CURL *easy;                   /* owned; reused across jobs, reset while idle */
	struct curl_slist *headers;   /* request headers; curl reads them while live */
	struct delivery_job *job;     /* owned while it has a job, NULL while idle */
	struct delivery_result *res;  /* owned while it has a job, NULL while idle */
	int64_t start_mono_us;        /* monotonic µs it went to curl, for its duration */
	size_t body_seen;             /* bytes of response body received, <= SENDER_BODY_MAX */
	int too_big;                  /* 1 once the body passed SENDER_BODY_MAX */
	int head_done;                /* 1 once the last response head seen ended (blank line) */
	int head_final;               /* the last head seen is a final one (not 1xx) */
	const struct target_policy *targets; /* borrowed from the sender's options */
	char blocked[DELIVERY_ERROR_MAX];    /* first address refused by the guard, or "" */
	int sockets;                  /* sockets on_open_socket opened for this job */
	struct host *host;            /* the job's host while it has a job, else NULL */
	struct sub_wire *sub;         /* the job's subscription while it has a job, else NULL */
	int unwanted;                 /* 1: on `failed` unsent, as still_wanted said no */
	struct transfer *prev, *next; /* links in the list the transfer is on */
};

#define SENDER_HOST_BUCKETS 1024 /* hash chains in the host table (a power of two) */
#define SENDER_SUB_BUCKETS 1024  /* hash chains in the subscription table (a power of two) */
#define CA_CACHE_SECONDS 600L    /* the CA file is parsed again at most this often */

/* One receiver host:port with transfers live or waiting. */
struct host {
	struct host *chain;        /* next in the same bucket */
	int live;                  /* its transfers added to the multi handle */
	struct transfer *waiting;  /* FIFO of jobs not yet handed to curl, through next */
	struct transfer *waiting_tail;
	int nwaiting;              /* jobs on waiting */
	char key[];                /* "host:port", host in lower case */
};

/* One subscription with transfers live or waiting, at one host: all of them are on that
 * host's live count or queue, so that the end of one of its requests, which pumps that
 * host, reaches its waiting jobs. (After a change of url its jobs for the old host are
 * an entry of their own; they are not sent, as their version is no longer current.) */
struct sub_wire {
	struct sub_wire *chain; /* next in the same bucket */
	int64_t id;
	const struct host *host;
	int live;    /* its transfers added to the multi handle */
	int waiting; /* its jobs on its host's queue */
	int max;     /* the max_in_flight of its newest job (0: no limit), for all of them:
	                one cap keeps its jobs in order, and a PATCH applies at once */
};

struct sender {
	CURLM *multi;               /* owned */
	struct sender_options opts; /* copy; user_agent borrowed */
	struct transfer *live;      /* added to multi; doubly linked */
	struct transfer *failed;    /* could not start; singly linked through next */
	struct transfer *idle;      /* reusable easy handles; singly linked through next */
	int in_flight;              /* jobs taken and not yet handed back */
	struct host *hosts[SENDER_HOST_BUCKETS]; /* hosts with a transfer, by host_key hash */
	struct sub_wire *subs[SENDER_SUB_BUCKETS]; /* subscriptions with a transfer, by id */
	struct sign_cache *signer;               /* owned; subscriptions' keys, prepared once */
	int ca_dir_only; /* libcurl has a CA directory and no bundle file, and there is
	                    no --ca-file: keep its directory (and so no cached store) */
};

static void set_error(struct delivery_result *res, const char *text)
{
	snprintf(res->error, sizeof res->error, "%s", text);
}

static int header_append(struct curl_slist **list, const char *line)
{
	struct curl_slist *grown = curl_slist_append(*list, line);

	if (!grown)
		return -1;
	*list = grown;
	return 0;
}

/* Appends "name: value" (or "name;" for an empty value, curl's way to send it empty).
 * A bare "Expect:", appended by header_append, is curl's way to send no Expect header
 * at all: a receiver never makes us wait for 100-continue. */
static int header_add(struct curl_slist **list, const char *name, const char *value)
{
	int rc = -1;
	size_t nlen = strlen(name);
	size_t vlen = strlen(value);
	char *line = NULL;

	if (vlen > SIZE_MAX - nlen - 3)
		goto out;
	line = malloc(nlen + vlen + 3);
	if (!line)
		goto out;
	memcpy(line, name, nlen);
	if (vlen == 0) {
		line[nlen] = ';';
		line[nlen + 1] = '\0';
	} else {
		line[nlen] = ':';
		line[nlen + 1] = ' ';
		memcpy(line + nlen + 2, value, vlen);
		line[nlen + 2 + vlen] = '\0';
	}
	if (header_append(list, line) != 0)
		goto out;
	rc = 0;
out:
	free(line);
	return rc;
}

/* Headers a subscription may not set: ours (and every webhook-*, the Standard Webhooks
 * namespace), or ones that would break the request: framing and coding (the body is the
 * signed plain JSON: labelled gzip, no receiver could read it), and the hop-by-hop ones
 * (RFC 9110 7.6.1; an Upgrade could turn the attempt into a protocol switch). */
/* clang-format off */
static const char *const reserved_headers[] = {
    "content-type", "content-length", "content-encoding", "host",  "user-agent",
    "transfer-encoding", "connection", "expect", "te", "trailer",
    "upgrade", "keep-alive", "proxy-connection", "proxy-authorization", NULL,
};
/* clang-format on */

int sender_header_reserved(const char *name)
{
	if (strncasecmp(name, "webhook-", 8) == 0)
		return 1;
	for (size_t i = 0; reserved_headers[i]; i++) {
		if (strcasecmp(name, reserved_headers[i]) == 0)
			return 1;
	}
	return 0;
}

/* The API validated these; a line break would still let one header smuggle another,
 * so such a job is refused rather than sent. */
static int header_text_ok(const char *text)
{
	return strpbrk(text, "\r\n") == NULL;
}

static int add_custom_headers(struct curl_slist **list, const char *headers_json,
                              struct delivery_result *res)
{
	int rc = -1;
	json_t *root = NULL;
	json_error_t jerr;
	const char *name;
	json_t *value;

	if (!headers_json) {
		rc = 0;
		goto out;
	}
	root = json_loads(headers_json, 0, &jerr);
	if (!root || !json_is_object(root)) {
		set_error(res, "custom headers are not a JSON object");
		goto out;
	}
	json_object_foreach(root, name, value)
	{
		if (!json_is_string(value) || !header_text_ok(name) ||
		    !header_text_ok(json_string_value(value))) {
			snprintf(res->error, sizeof res->error,
			         "custom header %.64s is not sendable", name);
			goto out;
		}
		/* stored before a name was reserved (content-encoding): ours wins */
		if (sender_header_reserved(name))
			continue;
		if (header_add(list, name, json_string_value(value)) != 0) {
			set_error(res, "out of memory building headers");
			goto out;
		}
	}
	rc = 0;
out:
	json_decref(root);
	return rc;
}

/* Renders an IPv4 or IPv6 address (no port) for an error text. */
static void address_text(const struct sockaddr_storage *ss, char *out, size_t size)
{
	const void *addr = NULL;

	if (ss->ss_family == AF_INET)
		addr = &((const struct sockaddr_in *)(const void *)ss)->sin_addr;
	else if (ss->ss_family == AF_INET6)
		addr = &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr;
	if (!addr || !inet_ntop(ss->ss_family, addr, out, (socklen_t)size))
		snprintf(out, size, "address of family %d", (int)ss->ss_family);
}

/*
 * CURLOPT_OPENSOCKETFUNCTION: the last point before connect(), with the address curl
 * resolved and will use. Blocked: remember why and give curl no socket, so it tries
 * the next address or fails the transfer with nothing sent anywhere.
 */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *a)
{
	struct transfer *t = clientp;
	struct sockaddr_storage ss;
	const char *why = "not a TCP connection to a receiver";
	char text[INET6_ADDRSTRLEN + 32];

	memset(&ss, 0, sizeof ss);
	if (purpose == CURLSOCKTYPE_IPCXN && a->addrlen <= sizeof ss) {
		memcpy(&ss, &a->addr, a->addrlen);
		if (target_address_allowed(t->targets, (const struct sockaddr *)(const void *)&ss,
		                           &why)) {
			t->sockets++;
			return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
		}
	}
	if (t->blocked[0] == '\0') {
		address_text(&ss, text, sizeof text);
		snprintf(t->blocked, sizeof t->blocked, "blocked: %s is %s", text, why);
	}
	return CURL_SOCKET_BAD;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
	struct transfer *t = userp;
	struct delivery_result *res = t->res;
	size_t n = size * nmemb; /* curl documents size as always 1 */
	size_t keep;
	char *grown;

	if (n > SENDER_BODY_MAX - t->body_seen) {
		t->too_big = 1;
		return 0; /* makes curl abort with CURLE_WRITE_ERROR */
	}
	t->body_seen += n;
	keep = DELIVERY_SNIPPET_MAX - res->snippet_len;
	if (keep > n)
		keep = n;
	if (keep > 0) {
		grown = realloc(res->response_snippet, res->snippet_len + keep);
		if (grown) { /* without memory we lose the snippet, not the delivery */
			memcpy(grown + res->snippet_len, data, keep);
			res->response_snippet = grown;
			res->snippet_len += keep;
		}
	}
	return n;
}

/* CURLOPT_HEADERFUNCTION: notes whether the newest response head (a status line, then
 * header lines) has reached its blank line. curl 7.88 ends a transfer whose connection
 * closed in the middle of the head with CURLE_OK. Once the final head has ended, what
 * comes is a chunked body's trailers (curl passes them here, without their blank line). */
static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
	struct transfer *t = userp;
	size_t n = size * nmemb;

	if (t->head_done && t->head_final)
		return n;
	if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
		const char *space = memchr(data, ' ', n);
		t->head_final = !space || space + 1 >= data + n || space[1] != '1';
		t->head_done = 0;
	} else if ((n == 2 && data[0] == '\r' && data[1] == '\n') || (n == 1 && data[0] == '\n')) {
		t->head_done = 1;
	}
	return n;
}

/* Builds the request for t->job on t->easy. On failure returns -1 with the reason in
 * t->res->error; the caller reports the job as not sent. */
static int transfer_setup(struct sender *s, struct transfer *t)
{
	int rc = -1;
	const struct delivery_job *job = t->job;
	struct delivery_result *res = t->res;
	CURL *e = t->easy;
	int64_t timestamp = res->started_at_ms / 1000;
	char timestamp_text[24];
	char *signature = NULL;
	int tls = job->url && strncasecmp(job->url, "https:", 6) == 0;

	if (!job->url || !job->event_id || !job->body || !job->secrets) {
		set_error(res, "job has no url, event id, body or secret");
		goto out;
	}
	snprintf(timestamp_text, sizeof timestamp_text, "%" PRId64, timestamp);
	signature = sign_cache_header_value(s->signer, job->secrets, job->event_id, timestamp,
	                                    job->body, job->body_len);
	if (!signature) {
		set_error(res, "cannot sign: malformed secret");
		goto out;
	}
	if (header_add(&t->headers, "content-type", "application/json") != 0 ||
	    header_add(&t->headers, "webhook-id", job->event_id) != 0 ||
	    header_add(&t->headers, "webhook-timestamp", timestamp_text) != 0 ||
	    header_add(&t->headers, "webhook-signature", signature) != 0 ||
	    header_append(&t->headers, "Expect:") != 0) {
		set_error(res, "out of memory building headers");
		goto out;
	}
	if (add_custom_headers(&t->headers, job->headers_json, res) != 0)
		goto out;

	if (curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)t) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_URL, job->url) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)s->opts.timeout_ms) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    /* A name lookup still running at the timeout is left to finish on its own:
	     * without this, curl joins the resolver thread, and a DNS server that does not
	     * answer froze the dispatcher (every delivery) for ~10 s past the timeout. */
	    curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, res->error) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_USERAGENT, s->opts.user_agent) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)job->body_len) !=
	        CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const void *)job->body) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)t) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_HEADERDATA, (void *)t) != CURLE_OK ||
	    /* https: HTTP/2 where the receiver offers it, and a transfer to a host whose
	     * connection is still being made waits to learn whether it can be a stream of
	     * it (without, a burst of 8 to a new HTTP/2 receiver opened 8 connections).
	     * http: HTTP/1.1 as always, said outright: otherwise curl counts it as maybe
	     * multiplexed, and that wait held a burst until the first answer (510 ms
	     * against a receiver taking 500). */
	    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
	                     tls ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1) !=
	        CURLE_OK ||
	    curl_easy_setopt(e, CURLOPT_PIPEWAIT, (long)tls) != CURLE_OK) {
		set_error(res, "curl refused the request options");
		goto out;
	}
	if ((!s->ca_dir_only &&
	     (curl_easy_setopt(e, CURLOPT_CAPATH, NULL) != CURLE_OK ||
	      curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, CA_CACHE_SECONDS) != CURLE_OK)) ||
	    (s->opts.ca_file && curl_easy_setopt(e, CURLOPT_CAINFO, s->opts.ca_file) != CURLE_OK)) {
		set_error(res, "curl refused the CA file options");
		goto out;
	}
	t->targets = s->opts.targets;
	t->blocked[0] = '\0';
	t->sockets = 0;
	if (t->targets &&
	    (curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket) != CURLE_OK ||
	     curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)t) != CURLE_OK)) {
		set_error(res, "curl refused the target-address guard");
		goto out;
	}
	rc = 0;
out:
	free(signature);
	return rc;
}

static size_t host_bucket(const char *key)
{
	return hash_fnv1a(key) & (SENDER_HOST_BUCKETS - 1);
}

/* The host entry for url's host, added if new. NULL if out of memory. */
static struct host *host_get(struct sender *s, const char *url)
{
	char key[TARGET_HOST_KEY_MAX];
	struct host *h;
	size_t b, len;

	target_host_key(url, key);
	b = host_bucket(key);
	for (h = s->hosts[b]; h; h = h->chain)
		if (strcmp(h->key, key) == 0)
			return h;
	len = strlen(key);
	h = calloc(1, sizeof *h + len + 1);
	if (!h)
		return NULL;
	memcpy(h->key, key, len + 1);
	h->chain = s->hosts[b];
	s->hosts[b] = h;
	return h;
}

/* Frees h once nothing of it is live or waiting. */
static void host_forget_if_done(struct sender *s, struct host *h)
{
	struct host **link;

	if (h->live > 0 || h->waiting)
		return;
	for (link = &s->hosts[host_bucket(h->key)]; *link; link = &(*link)->chain) {
		if (*link == h) {
			*link = h->chain;
			break;
		}
	}
	free(h);
}

static size_t sub_bucket(int64_t id)
{
	return (size_t)((uint64_t)id * 0x9E3779B97F4A7C15ull >> 54) & (SENDER_SUB_BUCKETS - 1);
}

/* The entry of subscription id at host h, added if new. NULL if out of memory. */
static struct sub_wire *sub_wire_get(struct sender *s, int64_t id, const struct host *h)
{
	size_t b = sub_bucket(id);
	struct sub_wire *w;

	for (w = s->subs[b]; w; w = w->chain)
		if (w->id == id && w->host == h)
			return w;
	w = calloc(1, sizeof *w);
	if (!w)
		return NULL;
	w->id = id;
	w->host = h;
	w->chain = s->subs[b];
	s->subs[b] = w;
	return w;
}

/* Frees w once nothing of it is live or waiting. */
static void sub_wire_forget_if_done(struct sender *s, struct sub_wire *w)
{
	struct sub_wire **link;

	if (w->live > 0 || w->waiting > 0)
		return;
	for (link = &s->subs[sub_bucket(w->id)]; *link; link = &(*link)->chain) {
		if (*link == w) {
			*link = w->chain;
			break;
		}
	}
	free(w);
}

/* Whether t's subscription may have one more transfer live. */
static int sub_wire_has_room(const struct transfer *t)
{
	return t->sub->max <= 0 || t->sub->live < t->sub->max;
}

static void waiting_push(struct host *h, struct transfer *t)
{
	t->next = NULL;
	if (h->waiting_tail)
		h->waiting_tail->next = t;
	else
		h->waiting = t;
	h->waiting_tail = t;
	h->nwaiting++;
	t->sub->waiting++;
}

/* Takes t, which follows prev (NULL: t is the first), off h's queue. */
static void waiting_unlink(struct host *h, struct transfer *prev, struct transfer *t)
{
	if (prev)
		prev->next = t->next;
	else
		h->waiting = t->next;
	if (h->waiting_tail == t)
		h->waiting_tail = prev;
	t->next = NULL;
	h->nwaiting--;
	t->sub->waiting--;
}

static void live_push(struct sender *s, struct transfer *t)
{
	t->prev = NULL;
	t->next = s->live;
	if (s->live)
		s->live->prev = t;
	s->live = t;
}

static void live_unlink(struct sender *s, struct transfer *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		s->live = t->next;
	if (t->next)
		t->next->prev = t->prev;
	t->prev = NULL;
	t->next = NULL;
}

/* The attempt's clock starts: its started_at (and so its signature's timestamp) and
 * the monotonic start its duration counts from. */
static void transfer_start_clock(struct transfer *t)
{
	t->res->started_at_ms = clock_now_ms();
	t->start_mono_us = clock_mono_us();
}

/* Hands t's job to curl now: the attempt starts and t goes live; or, if it cannot be
 * built or added, to `failed` with the reason in t->res->error. */
static void transfer_activate(struct sender *s, struct transfer *t)
{
	transfer_start_clock(t);
	if (s->opts.still_wanted && !s->opts.still_wanted(s->opts.still_wanted_arg, t->job)) {
		set_error(t->res, "not sent: its subscription changed after the claim");
		t->unwanted = 1; /* its host's next waiting job may go instead */
	} else if (transfer_setup(s, t) == 0) {
		if (curl_multi_add_handle(s->multi, t->easy) == CURLM_OK) {
			t->host->live++;
			t->sub->live++;
			live_push(s, t);
			return;
		}
		set_error(t->res, "curl could not add the transfer");
	}
	t->host = NULL;
	sub_wire_forget_if_done(s, t->sub); /* not live: counted nowhere now */
	t->sub = NULL;
	t->next = s->failed;
	s->failed = t;
}

/* Puts w's jobs waiting on h's queue on `failed`, unsent, to go back to the store as
 * released (due again, no attempt logged): its receiver just answered something other
 * than a 2xx, and the store, once it has that result, may disable the subscription (a
 * 410), hold it back or lease it no further ahead. Sent, those jobs would have met the
 * same answer (a 410 failed each, where the store would have held them). */
static void sub_wire_release_waiting(struct sender *s, struct host *h, struct sub_wire *w)
{
	struct transfer *prev = NULL, *t = h->waiting;

	while (t && w->waiting > 0) {
		struct transfer *next = t->next;
		if (t->sub == w) {
			waiting_unlink(h, prev, t);
			transfer_start_clock(t); /* never sent: no time spent */
			set_error(t->res, "not sent: an earlier request of its subscription was "
			                  "answered without a 2xx");
			t->unwanted = 1;
			t->host = NULL;
			t->sub = NULL; /* w stays: the transfer that ended still counts in it */
			t->next = s->failed;
			s->failed = t;
		} else {
			prev = t;
		}
		t = next;
	}
}

/* Hands h's waiting jobs to curl, in order, while h has fewer than max_per_host live,
 * passing over those whose subscription is at its max_in_flight (and so, as its live
 * count does not fall meanwhile, its later ones too); frees h if nothing of it is left. */
static void host_pump(struct sender *s, struct host *h)
{
	struct transfer *prev = NULL, *t = h->waiting;

	while (t && h->live < s->opts.max_per_host) {
		struct transfer *next = t->next;
		if (sub_wire_has_room(t)) {
			waiting_unlink(h, prev, t);
			transfer_activate(s, t);
		} else {
			prev = t;
		}
		t = next;
	}
	host_forget_if_done(s, h);
}

/* Takes live transfer t off the multi handle and out of its host's count. Returns the
 * host, for the caller to pump or forget once t is finished. */
static struct host *live_remove(struct sender *s, struct transfer *t)
{
	struct host *h = t->host;

	curl_multi_remove_handle(s->multi, t->easy);
	live_unlink(s, t);
	t->host = NULL;
	h->live--;
	t->sub->live--;
	return h;
}

/* Hands job and result to *out and puts the (already removed) easy handle back on the
 * idle list with every option, and so every pointer into the job, cleared. */
static void transfer_finish(struct sender *s, struct transfer *t, struct sender_done *out)
{
	int64_t took_us = clock_mono_us() - t->start_mono_us;

	curl_easy_reset(t->easy);
	curl_slist_free_all(t->headers);
	if (t->sub) {
		sub_wire_forget_if_done(s, t->sub);
		t->sub = NULL;
	}
	if (took_us < 0)
		took_us = 0;
	t->res->duration_us = took_us;
	t->res->duration_ms = took_us / 1000 > INT_MAX ? INT_MAX : (int)(took_us / 1000);
	out->job = t->job;
	out->result = t->res;
	out->released = t->unwanted;
	t->unwanted = 0;
	t->headers = NULL;
	t->job = NULL;
	t->res = NULL;
	t->body_seen = 0;
	t->too_big = 0;
	t->head_done = 0;
	t->head_final = 0;
	t->targets = NULL;
	t->blocked[0] = '\0';
	t->prev = NULL;
	t->next = s->idle;
	s->idle = t;
	s->in_flight--;
}

static void transfer_destroy(struct transfer *t)
{
	if (!t)
		return;
	curl_slist_free_all(t->headers);
	delivery_job_free(t->job);
	delivery_result_free(t->res);
	curl_easy_cleanup(t->easy);
	free(t);
}

/* Whether curl's error text is the timeout of a transfer whose time ran out before it
 * began a connection of its own: "Failed to resolve host '...' with timeout after N ms"
 * (the time ran out in the name lookup it starts with), or "Connection timeout after N
 * ms" (in its first connect step: seen under ASan on a loaded machine, 1 in 8 of a
 * burst), with N at most 5. Waiting used up all but those few ms of its
 * --delivery-timeout (100 ms at the least); N is 0, or 1 on a slow run (seen under
 * valgrind). A connect that really ran out of time says "Connection timed out after
 * N milliseconds", and N is the timeout. */
static int waited_for_connection(const char *error)
{
	const char *after = NULL;
	char *end;
	long ms;

	if (strstr(error, "Failed to resolve host") ||
	    strncmp(error, "Connection timeout after ", 25) == 0)
		after = strstr(error, " after ");
	if (!after)
		return 0;
	ms = strtol(after + 7, &end, 10);
	return end != after + 7 && strncmp(end, " ms", 3) == 0 && ms >= 0 && ms <= 5;
}

/* Whether error is curl's "Connection timed out after N milliseconds" (its own
 * connect or TLS handshake ran out of time), with N in *ms. */
static int own_connect_ms(const char *error, long *ms)
{
	static const char prefix[] = "Connection timed out after ";
	char *end;

	if (strncmp(error, prefix, sizeof prefix - 1) != 0)
		return 0;
	*ms = strtol(error + sizeof prefix - 1, &end, 10);
	return end != error + sizeof prefix - 1 && strcmp(end, " milliseconds") == 0 && *ms >= 0;
}

/* libcurl's built-in CA locations: its bundle file (CURLINFO_CAINFO) copied into file,
 * or file[0] = '\0' if it has none (or curl cannot start); returns 1 if it also names a
 * CA directory (CURLINFO_CAPATH). */
static int system_ca_defaults(char *file, size_t size)
{
	char *path = NULL, *dir = NULL;
	CURL *e = curl_easy_init();

	file[0] = '\0';
	if (e && curl_easy_getinfo(e, CURLINFO_CAINFO, &path) == CURLE_OK && path &&
	    (size_t)snprintf(file, size, "%s", path) >= size)
		file[0] = '\0';
	if (e && curl_easy_getinfo(e, CURLINFO_CAPATH, &dir) != CURLE_OK)
		dir = NULL;
	curl_easy_cleanup(e);
	return dir != NULL;
}

struct sender *sender_new(const struct sender_options *opts)
{
	struct sender *s = NULL;
	struct sender *ret = NULL;

	s = calloc(1, sizeof *s);
	if (!s) {
		fprintf(stderr, "hookrelay: sender: out of memory\n");
		goto out;
	}
	s->opts = *opts;
	char bundle[4096];
	system_ca_defaults(bundle, sizeof bundle);
	s->ca_dir_only = !opts->ca_file && bundle[0] == '\0';
	if (opts->max_per_host < 1) { /* curl would read 0 as no limit; our queue, as none */
		fprintf(stderr, "hookrelay: sender: max_per_host must be at least 1\n");
		goto out;
	}
	s->signer = sign_cache_new();
	if (!s->signer) {
		fprintf(stderr, "hookrelay: sender: no signing key cache (out of memory, or "
		                "OpenSSL < 3.0.3)\n");
		goto out;
	}
	s->multi = curl_multi_init();
	if (!s->multi) {
		fprintf(stderr, "hookrelay: sender: curl_multi_init failed\n");
		goto out;
	}
	/* The per-host queue already keeps curl within max_per_host; curl's own cap stays as
	 * the backstop for one host spelled two ways (a name with non-ASCII case, say). */
	if (curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)opts->max_per_host) !=
	        CURLM_OK ||
	    curl_multi_setopt(s->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)opts->max_total) !=
	        CURLM_OK ||
	    /* Idle connections kept for reuse. curl's default follows the number of easy
	     * handles in the multi, which drops between jobs, and it then closed about one
	     * connection in 40 only to open it again for the next job. */
	    curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, (long)opts->max_total) != CURLM_OK) {
		fprintf(stderr, "hookrelay: sender: curl refused the connection limits\n");
		goto out;
	}
	ret = s;
	s = NULL;
out:
	sender_free(s);
	return ret;
}

void sender_free(struct sender *s)
{
	struct transfer *t;

	if (!s)
		return;
	while (s->live) {
		t = s->live;
		live_unlink(s, t);
		curl_multi_remove_handle(s->multi, t->easy);
		transfer_destroy(t);
	}
	for (size_t b = 0; b < SENDER_HOST_BUCKETS; b++) {
		while (s->hosts[b]) {
			struct host *h = s->hosts[b];
			s->hosts[b] = h->chain;
			while ((t = h->waiting) != NULL) {
				h->waiting = t->next;
				transfer_destroy(t);
			}
			free(h);
		}
	}
	for (size_t b = 0; b < SENDER_SUB_BUCKETS; b++) {
		while (s->subs[b]) {
			struct sub_wire *w = s->subs[b];
			s->subs[b] = w->chain;
			free(w);
		}
	}
	while (s->failed) {
		t = s->failed;
		s->failed = t->next;
		transfer_destroy(t);
	}
	while (s->idle) {
		t = s->idle;
		s->idle = t->next;
		transfer_destroy(t);
	}
	curl_multi_cleanup(s->multi);
	sign_cache_free(s->signer);
	free(s);
}

int sender_ca_file_check(const char *path, char *err, size_t errlen)
{
	int rc = -1;
	int certs = 0;
	FILE *f = NULL;
	STACK_OF(X509_INFO) *infos = NULL;
	struct stat st;

	if (stat(path, &st) != 0) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		goto out;
	}
	/* libcurl opens it again at the first https connection: a pipe would be empty by
	 * then (and opening a FIFO nobody writes to would block the start) */
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s is not a regular file", path);
		goto out;
	}
	f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		goto out;
	}
	/* What libcurl's OpenSSL backend does with CURLOPT_CAINFO: every PEM block of the
	 * file, one bad block failing the whole load. */
	infos = PEM_X509_INFO_read(f, NULL, NULL, NULL);
	if (ferror(f)) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		goto out;
	}
	for (int i = 0; infos && i < sk_X509_INFO_num(infos); i++)
		certs += sk_X509_INFO_value(infos, i)->x509 != NULL;
	if (certs == 0) {
		snprintf(err, errlen, "%s holds no PEM certificate that OpenSSL can read", path);
		goto out;
	}
	rc = 0;
out:
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	ERR_clear_error();
	if (f)
		fclose(f);
	return rc;
}

int sender_system_ca_check(char *err, size_t errlen)
{
	char path[4096];
	int has_dir = system_ca_defaults(path, sizeof path);

	if (path[0])
		return sender_ca_file_check(path, err, errlen);
	if (has_dir)
		return 0; /* a CA directory alone: kept (ca_dir_only) and used as it is */
	snprintf(err, errlen, "libcurl names no CA bundle file nor directory");
	return -1;
}

int sender_start(struct sender *s, struct delivery_job *job)
{
	int rc = -1;
	struct transfer *t = NULL;
	struct delivery_result *res = NULL;
	struct host *h = host_get(s, job->url);
	struct sub_wire *w = h ? sub_wire_get(s, job->subscription_id, h) : NULL;

	if (!w)
		goto out;
	res = calloc(1, sizeof *res);
	if (!res)
		goto out;
	if (s->idle) {
		t = s->idle;
		s->idle = t->next;
		t->next = NULL;
	} else {
		t = calloc(1, sizeof *t);
		if (!t)
			goto out;
		t->easy = curl_easy_init();
		if (!t->easy) {
			free(t);
			t = NULL;
			goto out;
		}
	}
	res->delivery_id = job->delivery_id;
	res->subscription_id = job->subscription_id;
	res->attempt = job->attempt;
	res->published_at_ms = job->published_at_ms;
	res->subscription_version = job->subscription_version;
	t->job = job;
	t->res = res;
	t->host = h;
	t->sub = w;
	w->max = job->max_in_flight;
	res = NULL;
	s->in_flight++;
	waiting_push(h, t);
	host_pump(s, h);
	rc = 0;
out:
	free(res);
	if (rc != 0 && w)
		sub_wire_forget_if_done(s, w); /* made for this job alone */
	if (rc != 0 && h)
		host_forget_if_done(s, h);
	return rc;
}

int sender_perform(struct sender *s)
{
	int running = 0;

	return curl_multi_perform(s->multi, &running) == CURLM_OK ? 0 : -1;
}

int sender_wait(struct sender *s, int timeout_ms)
{
	long curl_ms = -1;

	if (curl_multi_timeout(s->multi, &curl_ms) == CURLM_OK && curl_ms >= 0 &&
	    curl_ms < timeout_ms)
		timeout_ms = (int)curl_ms;
	if (timeout_ms < 0)
		timeout_ms = 0;
	return curl_multi_poll(s->multi, NULL, 0, timeout_ms, NULL) == CURLM_OK ? 0 : -1;
}

void sender_wakeup(struct sender *s)
{
	curl_multi_wakeup(s->multi);
}

int sender_next(struct sender *s, struct sender_done *out)
{
	struct transfer *t;
	CURLMsg *msg;
	int left = 0;
	char *priv = NULL;
	long status = 0;
	struct curl_header *h = NULL;
	CURLcode cc;
	long own_ms = 0;
	int64_t ran_ms = 0;

	memset(out, 0, sizeof *out);
	out->retry_after_ms = -1;
	if (s->failed) {
		t = s->failed;
		s->failed = t->next;
		t->next = NULL;
		transfer_finish(s, t, out);
		return 1;
	}
	for (;;) {
		msg = curl_multi_info_read(s->multi, &left);
		if (!msg)
			return 0;
		if (msg->msg == CURLMSG_DONE)
			break;
	}
	cc = msg->data.result;
	curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
	t = (struct transfer *)(void *)priv;

	/* Everything read from the handle is read before it leaves the multi handle. */
	if (curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
	    status >= 200 && status <= 999) /* a 1xx is not an answer: it may be all we got */
		t->res->http_status = (int)status;
	if (curl_easy_header(t->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
		out->retry_after_ms = backoff_retry_after_ms(h->value, clock_now_ms());
	struct host *host = live_remove(s, t);

	if (cc == CURLE_OK) {
		out->complete = 1;
		t->res->error[0] = '\0';
		if (t->res->http_status != 0 && !t->head_done)
			snprintf(
			    t->res->error, sizeof t->res->error,
			    "HTTP %d, response headers cut short: the connection closed before "
			    "their end",
			    t->res->http_status);
	} else if (t->too_big) {
		/* The status line arrived: the receiver answered, and its status decides the
		 * outcome. We only stopped reading a body we would not keep anyway. */
		out->complete = 1;
		set_error(t->res, "response body over 1 MiB (not read past it)");
	} else if (t->res->http_status != 0) {
		/* Likewise whatever went wrong after the status line: the body cut short or
		 * stalled, or a header curl refused (a bad Content-Length, a line without a
		 * colon, one too long; curl 7.88 calls that last "Out of memory"). A 2xx was
		 * an answer, and sending the event again would only duplicate it. */
		int cut = cc == CURLE_PARTIAL_FILE || cc == CURLE_RECV_ERROR ||
		          cc == CURLE_OPERATION_TIMEDOUT || cc == CURLE_HTTP2_STREAM ||
		          cc == CURLE_HTTP2;
		char curl_text[DELIVERY_ERROR_MAX]; /* a copy: the text is rewritten in place */
		memcpy(curl_text, t->res->error, sizeof curl_text);
		curl_text[sizeof curl_text - 1] = '\0';
		snprintf(t->res->error, sizeof t->res->error, "HTTP %d, %s: %.200s",
		         t->res->http_status,
		         !cut           ? "response malformed after the status line"
		         : t->head_done ? "response body cut short"
		                        : "response headers cut short",
		         curl_text[0] ? curl_text : curl_easy_strerror(cc));
		out->complete = 1;
	} else if (t->blocked[0] != '\0' && cc == CURLE_COULDNT_CONNECT && t->sockets == 0) {
		/* Every address was refused by the guard: curl's text would only say it could
		 * not connect. (If another address was tried, curl's text is about that one.) */
		set_error(t->res, t->blocked);
	} else if (cc == CURLE_OPERATION_TIMEDOUT && waited_for_connection(t->res->error)) {
		/* curl's text for a transfer that timed out before its own connection began:
		 * it waited (CURLOPT_PIPEWAIT) on another one's to the same receiver that did
		 * not complete. No name was looked up; send nobody looking at DNS. */
		snprintf(t->res->error, sizeof t->res->error,
		         "timed out waiting for a connection to %s (another request's connection "
		         "to it did not complete)",
		         host->key);
	} else if (cc == CURLE_OPERATION_TIMEDOUT && strncasecmp(t->job->url, "https:", 6) == 0 &&
	           own_connect_ms(t->res->error, &own_ms) &&
	           (ran_ms = (clock_mono_us() - t->start_mono_us) / 1000) > own_ms + 100) {
		/* It waited on another request's connection first (CURLOPT_PIPEWAIT, https
		 * only), then made its own: curl's N is only the second part, "timed out after
		 * 992 ms" under a 3 s timeout, which reads as a short connect timeout of ours. */
		snprintf(t->res->error, sizeof t->res->error,
		         "timed out connecting to %s: %lld ms waiting for another request's"
		         " connection to it, then %ld ms for its own (connect or TLS handshake)",
		         host->key, (long long)(ran_ms - own_ms), own_ms);
	} else if (t->res->error[0] == '\0') {
		set_error(t->res, curl_easy_strerror(cc));
	}
	if (!out->complete || t->res->http_status < 200 || t->res->http_status > 299)
		sub_wire_release_waiting(s, host, t->sub);
	transfer_finish(s, t, out);
	host_pump(s, host); /* its connection is free for the host's next job */
	return 1;
}

int sender_release(struct sender *s, struct sender_done *out)
{
	struct transfer *t = NULL;
	struct host *h = NULL;

	memset(out, 0, sizeof *out);
	out->retry_after_ms = -1;
	/* Jobs never handed to curl first, so that no live one's end starts another. */
	for (size_t b = 0; b < SENDER_HOST_BUCKETS && !t; b++) {
		for (h = s->hosts[b]; h && !h->waiting; h = h->chain)
			;
		if (h) {
			t = h->waiting;
			waiting_unlink(h, NULL, t);
			t->host = NULL;
			transfer_start_clock(t); /* never sent: no time spent */
		}
	}
	if (!t && s->live) {
		t = s->live;
		h = live_remove(s, t);
	}
	if (!t)
		return 0;
	t->res->http_status = 0;
	set_error(t->res, "released at shutdown");
	transfer_finish(s, t, out);
	host_forget_if_done(s, h);
	return 1;
}

int sender_in_flight(const struct sender *s)
{
	return s->in_flight;
}

void sender_each_host(const struct sender *s, void (*each)(void *arg, const char *key, int used),
                      void *arg)
{
	for (size_t b = 0; b < SENDER_HOST_BUCKETS; b++)
		for (const struct host *h = s->hosts[b]; h; h = h->chain)
			each(arg, h->key,
			     h->live < s->opts.max_per_host ? h->live : h->live + h->nwaiting);
}
