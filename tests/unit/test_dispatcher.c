/*
 * test_dispatcher.c - the dispatcher and curl-multi sender against real HTTP receivers.
 *
 * An in-memory struct delivery_store (jobs with next_attempt_at and a lease flag under a
 * mutex; complete() records every result and re-queues RETRY ones) stands in for
 * SQLite. The receivers are one libmicrohttpd daemon on 127.0.0.1, port 0, thread per
 * connection, routing by path to programmable behaviours (status sequence, delay,
 * body size, Retry-After, Location) and recording what arrived.
 *
 * Threads: the test thread drives; the dispatcher thread calls test_store_claim and
 * test_store_complete; MHD threads run test_rx_handler. Shared state is under
 * test_rx.mu (receiver) or store->mu (store); both signal a condvar on change.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <microhttpd.h>

#include "check.h"
#include "clock.h"
#include "delivery.h"
#include "dispatcher.h"
#include "sign.h"

#define TEST_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define TEST_SECRET_OLD "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define TEST_UA "hookrelay-test/1.0"
#define TEST_BIG_LEN (2 * 1024 * 1024 + 17) /* bytes: larger than SENDER_BODY_MAX */
#define TEST_MAX_PORTS 16
#define TEST_MAX_SLOTS 16
#define TEST_MAX_RESULTS 64
#define TEST_UPLOAD_MAX (64 * 1024) /* bytes a receiver keeps of one request body */

/* ---- receivers --------------------------------------------------------------------- */

struct test_seen {
	char id[128];
	char timestamp[32];
	char signature[512];
	char content_type[64];
	char user_agent[64];
	char api_key[64];
	int has_empty;       /* the X-Empty custom header arrived */
	int has_expect;      /* an Expect header arrived (it must not) */
	unsigned char *body; /* the first TEST_UPLOAD_MAX bytes */
	size_t body_len;
	size_t body_total; /* bytes received */
};

struct test_route {
	const char *path;
	int statuses[4];         /* status for hit 1, 2, ...; the last non-zero one repeats */
	int sleep_ms;            /* delay before answering; cut short when the test ends */
	size_t body_len;         /* response body bytes, from test_rx.big */
	const char *retry_after; /* Retry-After value or NULL */
	const char *location;    /* Location value or NULL */
	/* recorded, under test_rx.mu */
	int hits;
	int active; /* requests inside the handler now */
	struct test_seen last;
	int ports[TEST_MAX_PORTS]; /* distinct client ports seen */
	int n_ports;
};

static struct test_route test_routes[] = {
    {.path = "/ok", .statuses = {200}, .body_len = 6},
    {.path = "/keepalive", .statuses = {200}},
    {.path = "/flaky", .statuses = {500, 200}},
    {.path = "/flaky2", .statuses = {500, 200}},
    {.path = "/always500", .statuses = {500}},
    {.path = "/gone", .statuses = {410}},
    {.path = "/redirect", .statuses = {302}, .location = "/target"},
    {.path = "/target", .statuses = {200}},
    {.path = "/slow", .statuses = {200}, .sleep_ms = 1500},
    {.path = "/503", .statuses = {503}, .retry_after = "2"},
    {.path = "/429", .statuses = {429}, .retry_after = "2"},
    {.path = "/500ra", .statuses = {500}, .retry_after = "2"},
    {.path = "/big", .statuses = {200}, .body_len = 10000},
    {.path = "/huge", .statuses = {200}, .body_len = TEST_BIG_LEN},
    {.path = "/hang", .statuses = {200}, .sleep_ms = 10000},
    {.path = "/slowish", .statuses = {200}, .sleep_ms = 300},
    {.path = "/queued", .statuses = {200}, .sleep_ms = 300},
    {.path = "/unwanted", .statuses = {200}, .sleep_ms = 300},
    {.path = "/persub", .statuses = {200}, .sleep_ms = 300},
    {.path = "/persub500", .statuses = {500}, .sleep_ms = 100},
    {.path = "/wake", .statuses = {204}},
    {.path = "/large", .statuses = {200}},
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int closing; /* 1: sleeping handlers return at once */
	struct MHD_Daemon *daemon;
	int port;
	unsigned char *big; /* TEST_BIG_LEN bytes of 'a'..'z' */
} test_rx = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

struct test_upload {
	unsigned char *data; /* the first TEST_UPLOAD_MAX bytes */
	size_t len;          /* bytes in data */
	size_t total;        /* bytes received */
};

static struct timespec test_abs_deadline(int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static void test_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static struct test_route *test_route_find(const char *path)
{
	size_t i;

	for (i = 0; i < sizeof test_routes / sizeof test_routes[0]; i++)
		if (strcmp(test_routes[i].path, path) == 0)
			return &test_routes[i];
	return NULL;
}

static void test_copy_header(struct MHD_Connection *c, const char *name, char *out, size_t size)
{
	const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);

	snprintf(out, size, "%s", v ? v : "");
}

/* Under test_rx.mu: records one request on route r. */
static void test_record(struct test_route *r, struct MHD_Connection *c,
                        const struct test_upload *up)
{
	struct test_seen *s = &r->last;
	const union MHD_ConnectionInfo *ci;
	int port = 0, i;

	test_copy_header(c, "webhook-id", s->id, sizeof s->id);
	test_copy_header(c, "webhook-timestamp", s->timestamp, sizeof s->timestamp);
	test_copy_header(c, "webhook-signature", s->signature, sizeof s->signature);
	test_copy_header(c, "content-type", s->content_type, sizeof s->content_type);
	test_copy_header(c, "user-agent", s->user_agent, sizeof s->user_agent);
	test_copy_header(c, "x-api-key", s->api_key, sizeof s->api_key);
	s->has_empty = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-empty") != NULL;
	s->has_expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "expect") != NULL;
	free(s->body);
	s->body = NULL;
	s->body_len = 0;
	s->body_total = up->total;
	if (up->len > 0) {
		s->body = malloc(up->len);
		if (s->body) {
			memcpy(s->body, up->data, up->len);
			s->body_len = up->len;
		}
	}
	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
		port = ntohs(((const struct sockaddr_in *)(const void *)ci->client_addr)->sin_port);
	for (i = 0; i < r->n_ports && r->ports[i] != port; i++)
		;
	if (i == r->n_ports && r->n_ports < TEST_MAX_PORTS)
		r->ports[r->n_ports++] = port;
}

static enum MHD_Result test_rx_handler(void *cls, struct MHD_Connection *c, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct test_upload *up = *con_cls;
	struct test_route *r;
	struct MHD_Response *resp;
	struct timespec until;
	enum MHD_Result ret;
	int status, hit, i;
	size_t len;

	(void)cls;
	(void)method;
	(void)version;
	if (!up) {
		up = calloc(1, sizeof *up);
		if (!up)
			return MHD_NO;
		*con_cls = up;
		return MHD_YES;
	}
	if (*upload_size > 0) {
		len = *upload_size;
		up->total += len;
		if (up->len + len <= TEST_UPLOAD_MAX) {
			unsigned char *grown = realloc(up->data, up->len + len);
			if (grown) {
				memcpy(grown + up->len, upload_data, len);
				up->data = grown;
				up->len += len;
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}

	r = test_route_find(url);
	if (!r) {
		resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
		ret = MHD_queue_response(c, MHD_HTTP_NOT_FOUND, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	pthread_mutex_lock(&test_rx.mu);
	hit = ++r->hits;
	r->active++;
	test_record(r, c, up);
	pthread_cond_broadcast(&test_rx.cv);
	if (r->sleep_ms > 0) {
		until = test_abs_deadline(r->sleep_ms);
		while (!test_rx.closing &&
		       pthread_cond_timedwait(&test_rx.cv, &test_rx.mu, &until) == 0)
			;
	}
	r->active--;
	pthread_cond_broadcast(&test_rx.cv);
	pthread_mutex_unlock(&test_rx.mu);

	status = r->statuses[0];
	for (i = 1; i < hit && i < 4 && r->statuses[i] != 0; i++)
		status = r->statuses[i];
	resp = MHD_create_response_from_buffer(r->body_len, test_rx.big, MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	if (r->retry_after)
		MHD_add_response_header(resp, "Retry-After", r->retry_after);
	if (r->location)
		MHD_add_response_header(resp, "Location", r->location);
	ret = MHD_queue_response(c, (unsigned int)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void test_rx_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
	struct test_upload *up = *con_cls;

	(void)cls;
	(void)c;
	(void)toe;
	if (up) {
		free(up->data);
		free(up);
		*con_cls = NULL;
	}
}

static int test_rx_start(void)
{
	struct sockaddr_in sin;
	const union MHD_DaemonInfo *info;
	size_t i;

	test_rx.big = malloc(TEST_BIG_LEN);
	if (!test_rx.big)
		return -1;
	for (i = 0; i < TEST_BIG_LEN; i++)
		test_rx.big[i] = (unsigned char)('a' + i % 26);
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = 0;
	test_rx.daemon = MHD_start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
	    test_rx_handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
	    MHD_OPTION_NOTIFY_COMPLETED, test_rx_completed, NULL, MHD_OPTION_END);
	if (!test_rx.daemon)
		return -1;
	info = MHD_get_daemon_info(test_rx.daemon, MHD_DAEMON_INFO_BIND_PORT);
	if (!info || info->port == 0)
		return -1;
	test_rx.port = info->port;
	return 0;
}

static void test_rx_stop(void)
{
	size_t i;

	pthread_mutex_lock(&test_rx.mu);
	test_rx.closing = 1;
	pthread_cond_broadcast(&test_rx.cv);
	pthread_mutex_unlock(&test_rx.mu);
	if (test_rx.daemon)
		MHD_stop_daemon(test_rx.daemon);
	for (i = 0; i < sizeof test_routes / sizeof test_routes[0]; i++)
		free(test_routes[i].last.body);
	free(test_rx.big);
}

/* Waits until route r has at least `active` requests inside its handler. */
static int test_rx_wait_active(struct test_route *r, int active, int timeout_ms)
{
	struct timespec until = test_abs_deadline(timeout_ms);
	int ok;

	pthread_mutex_lock(&test_rx.mu);
	while (r->active < active && pthread_cond_timedwait(&test_rx.cv, &test_rx.mu, &until) == 0)
		;
	ok = r->active >= active;
	pthread_mutex_unlock(&test_rx.mu);
	return ok;
}

static int test_rx_hits(struct test_route *r)
{
	int hits;

	pthread_mutex_lock(&test_rx.mu);
	hits = r->hits;
	pthread_mutex_unlock(&test_rx.mu);
	return hits;
}

static char *test_url(const char *path)
{
	char buf[128];

	snprintf(buf, sizeof buf, "http://127.0.0.1:%d%s", test_rx.port, path);
	return strdup(buf);
}

/* A loopback port nobody listens on: bind one, read it, close it. */
static int test_dead_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int port = 0;

	if (fd < 0)
		return 0;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
		port = ntohs(sin.sin_port);
	close(fd);
	return port;
}

/* ---- in-memory store --------------------------------------------------------------- */

struct test_slot {
	struct delivery_job *tmpl; /* owned; copied out on every claim */
	int attempt;               /* number of the next attempt */
	int64_t next_at;           /* unix ms when due */
	int leased;
	int done;
};

struct test_store {
	struct delivery_store iface; /* what the dispatcher sees; ctx = this */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct test_slot slots[TEST_MAX_SLOTS];
	int n_slots;
	struct delivery_result *results[TEST_MAX_RESULTS]; /* owned, in completion order */
	int n_results;
	int fail_claims;    /* claims still to fail with -1 */
	int failed_claims;  /* claims that did */
	int complete_calls; /* calls to complete() */
	int fail_completes; /* complete() calls still to refuse (-1, results not taken) */
	int failed_completes; /* complete() calls that did */
	int leased_now;
	atomic_int unwanted; /* current() says no (the subscription changed) while set */
	int release_ends;    /* a RELEASED result ends its slot (no claim again) */
	int max_leased; /* most leases held at once */
	/* Like hookrelay's writer, where results and the claim behind them share a batch
	 * and a lease ends only at its COMMIT: results are recorded at once but change
	 * their slots only after the next claim has been answered. */
	int defer_results;
	struct delivery_result *deferred[TEST_MAX_RESULTS]; /* borrowed from results[] */
	int n_deferred;
};

static struct delivery_job *test_job_copy(const struct delivery_job *src)
{
	struct delivery_job *j = delivery_job_new(src->url, src->event_id, src->body, src->body_len,
	                                          src->secrets, src->headers_json);
	if (!j)
		return NULL;
	j->delivery_id = src->delivery_id;
	j->subscription_id = src->subscription_id;
	j->attempt = src->attempt;
	j->subscription_version = src->subscription_version;
	j->published_at_ms = src->published_at_ms;
	j->fills_subscription = src->fills_subscription;
	j->max_in_flight = src->max_in_flight;
	return j;
}

static void test_store_apply(struct test_store *st, const struct delivery_result *r);

static int test_store_lease(struct test_store *st, int64_t now_ms, int max,
                            struct delivery_job ***jobs_out, int64_t *next_due_ms)
{
	struct delivery_job **jobs = NULL;
	int64_t next = INT64_MAX;
	int n = 0, i, rc = -1;

	pthread_mutex_lock(&st->mu);
	if (st->fail_claims > 0) {
		st->fail_claims--;
		st->failed_claims++;
		goto out;
	}
	jobs = calloc((size_t)(max > 0 ? max : 1), sizeof *jobs);
	if (!jobs)
		goto out;
	for (i = 0; i < st->n_slots; i++) {
		struct test_slot *s = &st->slots[i];
		if (s->leased || s->done)
			continue;
		if (s->next_at > now_ms || n >= max) {
			if (s->next_at < next)
				next = s->next_at;
			continue;
		}
		jobs[n] = test_job_copy(s->tmpl);
		if (!jobs[n])
			goto out;
		jobs[n]->attempt = s->attempt;
		n++;
	}
	for (i = 0; i < n; i++) {
		st->slots[jobs[i]->delivery_id - 1].leased = 1;
		st->leased_now++;
	}
	if (st->leased_now > st->max_leased)
		st->max_leased = st->leased_now;
	*jobs_out = jobs;
	*next_due_ms = next;
	jobs = NULL;
	rc = n;
	for (i = 0; i < st->n_deferred; i++) /* the batch commits */
		test_store_apply(st, st->deferred[i]);
	st->n_deferred = 0;
out:
	pthread_mutex_unlock(&st->mu);
	if (jobs) { /* failed part way: nothing leased, drop the copies */
		for (i = 0; i < n; i++)
			delivery_job_free(jobs[i]);
		free(jobs);
	}
	return rc;
}

/* Answers at once, before returning: the contract allows it. */
static int test_store_claim(void *ctx, struct delivery_claim *claim)
{
	claim->count = test_store_lease(ctx, claim->now_ms, claim->max, &claim->jobs,
	                                &claim->next_due_ms);
	claim->done(claim);
	return 0;
}

/* A result's effect on its slot (under st->mu). */
static void test_store_apply(struct test_store *st, const struct delivery_result *r)
{
	struct test_slot *s = NULL;

	if (r->delivery_id >= 1 && r->delivery_id <= st->n_slots)
		s = &st->slots[r->delivery_id - 1];
	if (!s || !s->leased)
		return;
	s->leased = 0;
	st->leased_now--;
	switch (r->outcome) {
	case DELIVERY_RETRY:
		s->attempt++;
		s->next_at = r->next_attempt_at_ms;
		break;
	case DELIVERY_RELEASED:
		s->done = st->release_ends;
		break;
	default:
		s->done = 1;
		break;
	}
}

static int test_store_complete(void *ctx, struct delivery_result **results, int n)
{
	struct test_store *st = ctx;
	int i;

	pthread_mutex_lock(&st->mu);
	st->complete_calls++;
	if (st->fail_completes > 0) { /* out of memory: the results stay the caller's */
		st->fail_completes--;
		st->failed_completes++;
		pthread_mutex_unlock(&st->mu);
		return -1;
	}
	for (i = 0; i < n; i++) {
		struct delivery_result *r = results[i];
		if (st->n_results >= TEST_MAX_RESULTS) {
			test_store_apply(st, r);
			delivery_result_free(r);
			continue;
		}
		st->results[st->n_results++] = r;
		if (st->defer_results)
			st->deferred[st->n_deferred++] = r;
		else
			test_store_apply(st, r);
	}
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
	return 0;
}

static int test_store_current(void *ctx, int64_t subscription_id, uint64_t version)
{
	struct test_store *st = ctx;

	(void)subscription_id;
	(void)version;
	return !atomic_load(&st->unwanted);
}

static struct test_store *test_store_new(void)
{
	struct test_store *st = calloc(1, sizeof *st);

	if (!st)
		return NULL;
	pthread_mutex_init(&st->mu, NULL);
	pthread_cond_init(&st->cv, NULL);
	st->iface.ctx = st;
	st->iface.claim = test_store_claim;
	st->iface.complete = test_store_complete;
	st->iface.current = test_store_current;
	return st;
}

static void test_store_free(struct test_store *st)
{
	int i;

	if (!st)
		return;
	for (i = 0; i < st->n_slots; i++)
		delivery_job_free(st->slots[i].tmpl);
	for (i = 0; i < st->n_results; i++)
		delivery_result_free(st->results[i]);
	pthread_mutex_destroy(&st->mu);
	pthread_cond_destroy(&st->cv);
	free(st);
}

static const char test_body[] =
    "{\"id\":\"evt_1\",\"type\":\"order.updated\",\"key\":\"order-42\","
    "\"timestamp\":\"2024-01-01T00:00:00Z\",\"data\":{\"note\":\"h\xc3\xa9llo \xe2\x9c\x93\","
    "\"n\":1}}";

/* Adds a job due now; returns its delivery id (1-based slot), or 0. Thread-safe. */
static int test_store_add_body(struct test_store *st, const char *path, const char *secrets,
                               const char *headers_json, const char *body, size_t body_len)
{
	struct delivery_job tmpl = {0};
	int id = 0;

	tmpl.subscription_id = 7;
	tmpl.url = path[0] == '/' ? test_url(path) : strdup(path);
	tmpl.event_id = (char *)"evt_test_1";
	tmpl.body = (unsigned char *)(void *)body;
	tmpl.body_len = body_len;
	tmpl.secrets = (char *)secrets;
	tmpl.headers_json = (char *)headers_json;
	pthread_mutex_lock(&st->mu);
	if (tmpl.url && st->n_slots < TEST_MAX_SLOTS) {
		struct test_slot *s = &st->slots[st->n_slots];
		tmpl.delivery_id = st->n_slots + 1;
		s->tmpl = test_job_copy(&tmpl);
		if (s->tmpl) {
			s->attempt = 1;
			s->next_at = 0;
			id = ++st->n_slots;
		}
	}
	pthread_mutex_unlock(&st->mu);
	free(tmpl.url);
	return id;
}

static int test_store_add(struct test_store *st, const char *path, const char *secrets,
                          const char *headers_json)
{
	return test_store_add_body(st, path, secrets, headers_json, test_body,
	                           sizeof test_body - 1);
}

/* Waits until the store holds at least n results. */
static int test_store_wait(struct test_store *st, int n, int timeout_ms)
{
	struct timespec until = test_abs_deadline(timeout_ms);
	int ok;

	pthread_mutex_lock(&st->mu);
	while (st->n_results < n && pthread_cond_timedwait(&st->cv, &st->mu, &until) == 0)
		;
	ok = st->n_results >= n;
	pthread_mutex_unlock(&st->mu);
	return ok;
}

/* The k-th (0-based) result for delivery id, in completion order, or NULL. Call only
 * once the dispatcher is stopped or the result is known to be there. */
static struct delivery_result *test_result(struct test_store *st, int id, int k)
{
	struct delivery_result *found = NULL;
	int i;

	pthread_mutex_lock(&st->mu);
	for (i = 0; i < st->n_results && !found; i++)
		if (st->results[i]->delivery_id == id && k-- == 0)
			found = st->results[i];
	pthread_mutex_unlock(&st->mu);
	return found;
}

static const int64_t test_schedule_fast[] = {50, 50};
static const int64_t test_schedule_slow[] = {60000};

static struct dispatcher_options test_opts(void)
{
	struct dispatcher_options o = {0};

	o.max_in_flight = 8;
	o.max_per_host = 4;
	o.timeout_ms = 3000;
	o.retry_schedule = test_schedule_fast;
	o.retry_count = 2;
	o.user_agent = TEST_UA;
	return o;
}

/* ---- cases ------------------------------------------------------------------------- */

static void test_delivered_with_headers(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct test_route *r = test_route_find("/ok");
	struct dispatcher *d;
	struct delivery_result *res;
	int64_t before = clock_now_ms(), ts;
	int id;

	id = test_store_add(st, "/ok", TEST_SECRET " " TEST_SECRET_OLD,
	                    "{\"X-Api-Key\": \"k-123\", \"X-Empty\": \"\"}");
	CHECK(id == 1);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 1, 5000));
	dispatcher_stop(d, 1000);

	res = test_result(st, id, 0);
	CHECK(res != NULL);
	if (!res)
		goto out;
	CHECK(res->outcome == DELIVERY_DELIVERED);
	CHECK(res->attempt == 1);
	CHECK(res->subscription_id == 7);
	CHECK(res->http_status == 200);
	CHECK(res->error[0] == '\0');
	CHECK(res->started_at_ms >= before - 5 && res->started_at_ms <= clock_now_ms());
	CHECK(res->duration_ms >= 0 && res->duration_ms < 3000);
	CHECK(res->snippet_len == 6 && res->response_snippet &&
	      memcmp(res->response_snippet, "abcdef", 6) == 0);

	pthread_mutex_lock(&test_rx.mu);
	CHECK(r->hits == 1);
	CHECK(r->last.body_len == sizeof test_body - 1 &&
	      memcmp(r->last.body, test_body, r->last.body_len) == 0);
	CHECK(strcmp(r->last.content_type, "application/json") == 0);
	CHECK(strcmp(r->last.user_agent, TEST_UA) == 0);
	CHECK(strcmp(r->last.id, "evt_test_1") == 0);
	CHECK(strcmp(r->last.api_key, "k-123") == 0);
	CHECK(r->last.has_empty);
	CHECK(!r->last.has_expect);
	ts = strtoll(r->last.timestamp, NULL, 10);
	CHECK(ts == res->started_at_ms / 1000);
	CHECK(sign_verify(TEST_SECRET, r->last.id, ts, r->last.body, r->last.body_len,
	                  r->last.signature) == 0);
	CHECK(sign_verify(TEST_SECRET_OLD, r->last.id, ts, r->last.body, r->last.body_len,
	                  r->last.signature) == 0);
	CHECK(strchr(r->last.signature, ' ') != NULL); /* two signatures while rotating */
	CHECK(sign_verify(TEST_SECRET, r->last.id, ts + 1, r->last.body, r->last.body_len,
	                  r->last.signature) != 0);
	pthread_mutex_unlock(&test_rx.mu);
out:
	test_store_free(st);
}

/* One after another through max_in_flight 1: every request rides one connection. */
static void test_keepalive(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct test_route *r = test_route_find("/keepalive");
	struct dispatcher *d;
	int i;

	o.max_in_flight = 1;
	for (i = 0; i < 4; i++)
		test_store_add(st, "/keepalive", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 4, 5000));
	dispatcher_stop(d, 1000);
	for (i = 1; i <= 4; i++)
		CHECK(test_result(st, i, 0) &&
		      test_result(st, i, 0)->outcome == DELIVERY_DELIVERED);
	CHECK(st->max_leased == 1);
	pthread_mutex_lock(&test_rx.mu);
	CHECK(r->hits == 4);
	CHECK(r->n_ports == 1);
	pthread_mutex_unlock(&test_rx.mu);
	test_store_free(st);
}

/* A 500 then a 200 on `path`: the retry goes out on schedule. With defer_results the
 * store applies results only after the next claim is answered, as one writer batch
 * holding both does: the claim cannot see the retry's due time then, and with
 * max_in_flight 1 the full claim before it makes the dispatcher ask that claim at once
 * when the attempt ends. Either way the retry must not wait for the one-second look. */
static void check_retry_then_delivered(const char *path, int max_in_flight, int defer_results)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *a, *b;
	int id;

	o.max_in_flight = max_in_flight;
	st->defer_results = defer_results;
	id = test_store_add(st, path, TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 2, 5000));
	dispatcher_stop(d, 1000);
	a = test_result(st, id, 0);
	b = test_result(st, id, 1);
	CHECK(a && b);
	if (!a || !b)
		goto out;
	CHECK(a->outcome == DELIVERY_RETRY && a->attempt == 1 && a->http_status == 500);
	CHECK(strcmp(a->error, "HTTP 500") == 0);
	/* 50 ms +-20%, counted from the end of the failed attempt */
	CHECK(a->next_attempt_at_ms >= a->started_at_ms + a->duration_ms + 40 &&
	      a->next_attempt_at_ms <= a->started_at_ms + a->duration_ms + 60);
	CHECK(b->outcome == DELIVERY_DELIVERED && b->attempt == 2 && b->http_status == 200);
	CHECK(b->started_at_ms >= a->next_attempt_at_ms);
	CHECK(b->started_at_ms <= a->next_attempt_at_ms + 400); /* not at the 1 s look */
	CHECK(test_rx_hits(test_route_find(path)) == 2);
out:
	test_store_free(st);
}

static void test_retry_then_delivered(void)
{
	check_retry_then_delivered("/flaky", 8, 0);
	check_retry_then_delivered("/flaky2", 1, 1);
}

static void test_schedule_exhausted(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *r;
	int id = test_store_add(st, "/always500", TEST_SECRET, NULL);
	int k;

	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 3, 5000));
	test_sleep_ms(150); /* a fourth attempt would come within this */
	dispatcher_stop(d, 1000);
	CHECK(st->n_results == 3);
	for (k = 0; k < 3; k++) {
		r = test_result(st, id, k);
		CHECK(r && r->attempt == k + 1 && r->http_status == 500);
		if (r)
			CHECK(r->outcome == (k < 2 ? DELIVERY_RETRY : DELIVERY_FAILED));
	}
	CHECK(test_rx_hits(test_route_find("/always500")) == 3);
	test_store_free(st);
}

/* 410, 302, timeout, refused, bad secret, oversized and large bodies: one attempt each. */
static void test_single_attempts(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *r;
	char refused[64];
	int gone, redirect, slow, dead, badsecret, big, huge, i;
	int64_t t0;

	o.timeout_ms = 300;
	o.retry_schedule = test_schedule_slow;
	o.retry_count = 1;
	snprintf(refused, sizeof refused, "http://127.0.0.1:%d/", test_dead_port());
	gone = test_store_add(st, "/gone", TEST_SECRET, NULL);
	redirect = test_store_add(st, "/redirect", TEST_SECRET, NULL);
	slow = test_store_add(st, "/slow", TEST_SECRET, NULL);
	dead = test_store_add(st, refused, TEST_SECRET, NULL);
	badsecret = test_store_add(st, "/ok", "whsec_not*base64", NULL);
	big = test_store_add(st, "/big", TEST_SECRET, NULL);
	huge = test_store_add(st, "/huge", TEST_SECRET, NULL);
	/* each its own subscription: after the 410, a subscription's jobs still waiting
	 * for the host would go back unsent */
	for (i = 0; i < st->n_slots; i++)
		st->slots[i].tmpl->subscription_id = 100 + i;
	t0 = clock_mono_ms();
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 7, 5000));
	dispatcher_stop(d, 1000);
	CHECK(clock_mono_ms() - t0 < 2000);
	CHECK(st->n_results == 7);

	r = test_result(st, gone, 0);
	CHECK(r && r->outcome == DELIVERY_GONE && r->http_status == 410);

	r = test_result(st, redirect, 0);
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 302);
	CHECK(r && strcmp(r->error, "redirect not followed (HTTP 302)") == 0);
	CHECK(r && r->next_attempt_at_ms >= r->started_at_ms + 48000);
	CHECK(test_rx_hits(test_route_find("/redirect")) == 1);
	CHECK(test_rx_hits(test_route_find("/target")) == 0);

	r = test_result(st, slow, 0);
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 0);
	CHECK(r && r->error[0] != '\0');
	CHECK(r && r->duration_ms >= 250 && r->duration_ms < 1200);
	/* the µs /metrics buckets it by, and the ms the log shows, are one measure */
	CHECK(r && r->duration_us >= 250000 && r->duration_ms == r->duration_us / 1000);
	if (r)
		printf("  timeout error: %s\n", r->error);

	r = test_result(st, dead, 0);
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 0);
	CHECK(r && r->error[0] != '\0');
	if (r)
		printf("  refused error: %s\n", r->error);

	r = test_result(st, badsecret, 0);
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 0);
	CHECK(r && strstr(r->error, "sign") != NULL);

	r = test_result(st, big, 0);
	CHECK(r && r->outcome == DELIVERY_DELIVERED && r->snippet_len == DELIVERY_SNIPPET_MAX);
	if (r && r->response_snippet) {
		for (i = 0; i < DELIVERY_SNIPPET_MAX && r->response_snippet[i] == 'a' + i % 26; i++)
			;
		CHECK(i == DELIVERY_SNIPPET_MAX);
	}

	/* A 2xx is a delivery however long its body: we stop reading past 1 MiB, and the
	 * attempt's log says so. */
	r = test_result(st, huge, 0);
	CHECK(r && r->outcome == DELIVERY_DELIVERED && r->http_status == 200);
	CHECK(r && strstr(r->error, "over 1 MiB") != NULL);
	CHECK(r && r->snippet_len == DELIVERY_SNIPPET_MAX);
	test_store_free(st);
}

/* Over 1 MiB curl would send "Expect: 100-continue" and wait; we never let it. */
static void test_large_body_no_expect(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct test_route *r = test_route_find("/large");
	struct dispatcher *d;
	struct delivery_result *res;
	size_t len = 1536 * 1024;
	char *body = malloc(len);
	int id;

	CHECK(body != NULL);
	if (!body)
		goto out;
	memset(body, 'x', len);
	body[0] = '"';
	body[len - 1] = '"';
	id = test_store_add_body(st, "/large", TEST_SECRET, NULL, body, len);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 1, 5000));
	dispatcher_stop(d, 1000);
	res = test_result(st, id, 0);
	CHECK(res && res->outcome == DELIVERY_DELIVERED);
	pthread_mutex_lock(&test_rx.mu);
	CHECK(r->hits == 1 && r->last.body_total == len);
	CHECK(!r->last.has_expect);
	pthread_mutex_unlock(&test_rx.mu);
out:
	free(body);
	test_store_free(st);
}

static void test_schedule_empty_fails(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *r;
	int id;

	o.retry_count = 0;
	id = test_store_add(st, "/always500", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 1, 5000));
	dispatcher_stop(d, 1000);
	r = test_result(st, id, 0);
	CHECK(r && r->outcome == DELIVERY_FAILED && strcmp(r->error, "HTTP 500") == 0);
	test_store_free(st);
}

static void test_retry_after(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *r;
	int a, b, c;

	a = test_store_add(st, "/503", TEST_SECRET, NULL);
	b = test_store_add(st, "/429", TEST_SECRET, NULL);
	c = test_store_add(st, "/500ra", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 3, 5000));
	dispatcher_stop(d, 1000);
	r = test_result(st, a, 0);
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 503);
	CHECK(r && r->next_attempt_at_ms >= r->started_at_ms + 2000);
	CHECK(r && r->next_attempt_at_ms <= r->started_at_ms + 4000);
	r = test_result(st, b, 0);
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 429);
	CHECK(r && r->next_attempt_at_ms >= r->started_at_ms + 2000);
	r = test_result(st, c, 0); /* Retry-After only counts on 429 and 503 */
	CHECK(r && r->outcome == DELIVERY_RETRY && r->http_status == 500);
	/* the wait (50 ms +-20%) counts from the end of the attempt */
	CHECK(r && r->next_attempt_at_ms <= r->started_at_ms + r->duration_ms + 60);
	test_store_free(st);
}

static void test_claim_errors_back_off(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *r;
	int64_t t0 = clock_mono_ms(), took;
	int id;

	st->fail_claims = 2;
	id = test_store_add(st, "/ok", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 1, 5000));
	took = clock_mono_ms() - t0;
	dispatcher_stop(d, 1000);
	r = test_result(st, id, 0);
	CHECK(r && r->outcome == DELIVERY_DELIVERED);
	CHECK(st->failed_claims == 2);
	CHECK(took >= 550 && took < 2000); /* 200 ms, then 400 ms */
	test_store_free(st);
}

/* A store that cannot take results (out of memory) gets them again: each delivery ends
 * with exactly one result, and its lease is not lost. They were dropped, which kept
 * their leases until a restart: pending for ever, the subscription's slots gone. */
static void test_complete_refused_then_taken(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	int ids[3];

	st->fail_completes = 3;
	for (int i = 0; i < 3; i++)
		ids[i] = test_store_add(st, "/ok", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 3, 5000));
	dispatcher_stop(d, 1000);
	CHECK(st->failed_completes == 3);
	for (int i = 0; i < 3; i++) {
		struct delivery_result *r = test_result(st, ids[i], 0);
		CHECK(r && r->outcome == DELIVERY_DELIVERED);
		CHECK(test_result(st, ids[i], 1) == NULL); /* once */
	}
	CHECK(st->leased_now == 0);
	test_store_free(st);
}

/* Jobs beyond --max-per-host wait in the sender (this store leases past the host's
 * room; hookrelay's claim does not, so its integration tests never queue there). Each
 * gets the whole timeout from when it is sent, not from when it was claimed: handed to
 * curl's own queue, the fourth of four 300 ms requests timed out at 700 ms unsent. */
static void test_host_queue_timeout_from_send(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	int ids[4];
	int64_t prev_start = 0;

	o.max_per_host = 1;
	o.timeout_ms = 700;
	for (int i = 0; i < 4; i++)
		ids[i] = test_store_add(st, "/queued", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 4, 5000));
	dispatcher_stop(d, 1000);
	for (int i = 0; i < 4; i++) {
		struct delivery_result *r = test_result(st, ids[i], 0);
		CHECK(r && r->outcome == DELIVERY_DELIVERED && r->http_status == 200);
		CHECK(r && r->duration_ms >= 250 && r->duration_ms < 700);
		if (r && i > 0)
			CHECK(r->started_at_ms >= prev_start + 250); /* one at a time, in order */
		if (r)
			prev_start = r->started_at_ms;
	}
	CHECK(test_rx_hits(test_route_find("/queued")) == 4);
	test_store_free(st);
}

/* A job waiting for host room whose subscription changes meanwhile (PATCH url, disable,
 * delete: current() says no) goes back unsent, RELEASED; the ones already sent finish. */
static void test_host_queue_unwanted_released(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	int delivered = 0, released = 0;

	o.max_per_host = 2;
	st->release_ends = 1;
	for (int i = 0; i < 6; i++)
		test_store_add(st, "/unwanted", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	test_sleep_ms(100); /* 2 sent, 4 waiting for the host */
	atomic_store(&st->unwanted, 1);
	CHECK(test_store_wait(st, 6, 5000));
	dispatcher_stop(d, 1000);
	for (int i = 0; i < st->n_results; i++) {
		delivered += st->results[i]->outcome == DELIVERY_DELIVERED;
		released += st->results[i]->outcome == DELIVERY_RELEASED;
	}
	CHECK(delivered == 2 && released == 4);
	CHECK(test_rx_hits(test_route_find("/unwanted")) == 2);
	test_store_free(st);
}

/* The store leases a subscription more jobs than its max_in_flight (its lead): the
 * sender runs no more than that many of them at once, starts the rest in order as those
 * end, and another subscription's job on the same host goes past them at once. */
static void test_sub_queue_max_in_flight(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	struct delivery_result *r[5];
	int ids[5];

	o.max_per_host = 8;
	for (int i = 0; i < 5; i++) {
		ids[i] = test_store_add(st, "/persub", TEST_SECRET, NULL);
		CHECK(ids[i] == i + 1);
		st->slots[i].tmpl->max_in_flight = 2;
		st->slots[i].tmpl->subscription_id = i < 4 ? 7 : 8; /* the last another's */
	}
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 5, 5000));
	dispatcher_stop(d, 1000);
	for (int i = 0; i < 5; i++) {
		r[i] = test_result(st, ids[i], 0);
		CHECK(r[i] && r[i]->outcome == DELIVERY_DELIVERED);
		if (!r[i])
			goto out;
	}
	/* the first two at once, with the other subscription's */
	CHECK(llabs(r[1]->started_at_ms - r[0]->started_at_ms) < 150);
	CHECK(llabs(r[4]->started_at_ms - r[0]->started_at_ms) < 150);
	/* the third and fourth once those two ended (300 ms each), in order */
	CHECK(r[2]->started_at_ms >= r[0]->started_at_ms + 250);
	CHECK(r[3]->started_at_ms >= r[0]->started_at_ms + 250);
	CHECK(r[2]->started_at_ms <= r[3]->started_at_ms);
	CHECK(test_rx_hits(test_route_find("/persub")) == 5);
out:
	test_store_free(st);
}

/* A request answered without a 2xx sends its subscription's waiting jobs back unsent
 * (released), as the store may disable the subscription or hold it back once it has
 * that result: sent, a 410 would have failed each of them. */
static void test_sub_queue_released_after_failure(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	int retried = 0, released = 0;

	o.retry_schedule = test_schedule_slow;
	o.retry_count = 1;
	st->release_ends = 1;
	for (int i = 0; i < 3; i++) {
		CHECK(test_store_add(st, "/persub500", TEST_SECRET, NULL) == i + 1);
		st->slots[i].tmpl->max_in_flight = 1;
	}
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_store_wait(st, 3, 5000));
	dispatcher_stop(d, 1000);
	for (int i = 0; i < st->n_results; i++) {
		retried += st->results[i]->outcome == DELIVERY_RETRY;
		released += st->results[i]->outcome == DELIVERY_RELEASED;
	}
	CHECK(retried == 1 && released == 2);
	CHECK(test_rx_hits(test_route_find("/persub500")) == 1);
	test_store_free(st);
}

/* A store that never takes them: the stop still ends, and drops them (ASan: freed). */
static void test_complete_refused_at_stop(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	int64_t t0;

	st->fail_completes = 1000000;
	test_store_add(st, "/ok", TEST_SECRET, NULL);
	test_store_add(st, "/ok", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	test_sleep_ms(300);
	t0 = clock_mono_ms();
	dispatcher_stop(d, 500);
	CHECK(clock_mono_ms() - t0 < 1500);
	CHECK(st->n_results == 0);
	CHECK(st->failed_completes >= 2 && st->failed_completes < 20); /* every 100 ms, no spin */
	test_store_free(st);
}

/* An idle dispatcher picks up new work at once when woken, not at its next look. */
static void test_wake(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct dispatcher *d;
	int64_t t0, took;

	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	test_sleep_ms(150);
	t0 = clock_mono_ms();
	test_store_add(st, "/wake", TEST_SECRET, NULL);
	dispatcher_wake(d);
	CHECK(test_store_wait(st, 1, 3000));
	took = clock_mono_ms() - t0;
	dispatcher_stop(d, 1000);
	CHECK(took < 400);
	CHECK(test_result(st, 1, 0) && test_result(st, 1, 0)->outcome == DELIVERY_DELIVERED &&
	      test_result(st, 1, 0)->http_status == 204);
	test_store_free(st);
}

/* Hanging receivers: stop waits out the deadline, then releases what is in flight. */
/* The stop in steps: while transfers hang, each wait returns 0; dispatcher_hurry() ends
 * the grace at once and the jobs come back released (the second SIGINT of main). */
static void test_stop_hurried(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct test_route *r = test_route_find("/hang");
	struct dispatcher *d;
	int64_t t0, took;
	int i, done, released = 0, hits_before = test_rx_hits(r);

	o.timeout_ms = 10000;
	for (i = 0; i < 2; i++)
		test_store_add(st, "/hang", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	for (i = 0; i < 300 && test_rx_hits(r) < hits_before + 2; i++)
		test_sleep_ms(10); /* both requests are at the receiver, hanging */
	CHECK(test_rx_hits(r) == hits_before + 2);
	t0 = clock_mono_ms();
	done = dispatcher_stop_for(d, 5000, 200); /* still in its 5 s of grace */
	CHECK(done == 0);
	if (!done) {
		CHECK(dispatcher_stop_for(d, 5000, 0) == 0);
		dispatcher_hurry(d);
		done = dispatcher_stop_for(d, 5000, 2000);
	}
	took = clock_mono_ms() - t0;
	CHECK(done == 1);
	if (!done)
		dispatcher_stop(d, 0);
	CHECK(took >= 180 && took < 1500); /* not the 5 s */
	for (i = 1; i <= 2; i++) {
		struct delivery_result *res = test_result(st, i, 0);
		if (res && res->outcome == DELIVERY_RELEASED)
			released++;
	}
	CHECK(released == 2);
	CHECK(st->leased_now == 0);
	test_store_free(st);
}

static void test_stop_releases(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct test_route *r = test_route_find("/hang");
	struct dispatcher *d;
	struct delivery_result *res;
	int64_t t0, took;
	int i, calls_before, released = 0;

	o.max_in_flight = 3;
	o.timeout_ms = 10000;
	for (i = 0; i < 5; i++)
		test_store_add(st, "/hang", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_rx_wait_active(r, 3, 3000));
	test_sleep_ms(100); /* room for a wrong fourth claim to show */
	pthread_mutex_lock(&st->mu);
	calls_before = st->complete_calls;
	CHECK(st->max_leased == 3);
	pthread_mutex_unlock(&st->mu);
	t0 = clock_mono_ms();
	dispatcher_stop(d, 300);
	took = clock_mono_ms() - t0;
	CHECK(took >= 280 && took < 1000);
	CHECK(st->n_results == 3);
	CHECK(st->complete_calls - calls_before == 1); /* one batch */
	CHECK(st->leased_now == 0);
	for (i = 1; i <= 5; i++) {
		res = test_result(st, i, 0);
		if (res) {
			CHECK(res->outcome == DELIVERY_RELEASED && res->attempt == 1);
			released++;
		}
	}
	CHECK(released == 3);
	CHECK(test_rx_hits(r) == 3);
	test_store_free(st);
}

/* Receivers that answer before the deadline: stop waits for them and reports them. */
static void test_stop_lets_finish(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();
	struct test_route *r = test_route_find("/slowish");
	struct dispatcher *d;
	int64_t t0, took;

	test_store_add(st, "/slowish", TEST_SECRET, NULL);
	test_store_add(st, "/slowish", TEST_SECRET, NULL);
	d = dispatcher_start(&o, &st->iface);
	CHECK(d != NULL);
	CHECK(test_rx_wait_active(r, 2, 3000));
	t0 = clock_mono_ms();
	dispatcher_stop(d, 3000);
	took = clock_mono_ms() - t0;
	CHECK(took < 1500);
	CHECK(st->n_results == 2);
	CHECK(test_result(st, 1, 0) && test_result(st, 1, 0)->outcome == DELIVERY_DELIVERED);
	CHECK(test_result(st, 2, 0) && test_result(st, 2, 0)->outcome == DELIVERY_DELIVERED);
	test_store_free(st);
}

static void test_bad_options(void)
{
	struct test_store *st = test_store_new();
	struct dispatcher_options o = test_opts();

	o.max_in_flight = 0;
	CHECK(dispatcher_start(&o, &st->iface) == NULL);
	dispatcher_stop(NULL, 0);
	test_store_free(st);
}

int main(void)
{
	int64_t t0 = clock_mono_ms();

	signal(SIGPIPE, SIG_IGN);
	/* Loopback only: an inherited proxy must not get between us and the receivers. */
	unsetenv("http_proxy");
	unsetenv("HTTP_PROXY");
	unsetenv("https_proxy");
	unsetenv("HTTPS_PROXY");
	unsetenv("all_proxy");
	unsetenv("ALL_PROXY");
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "curl_global_init failed\n");
		return 1;
	}
	CHECK(test_rx_start() == 0);
	if (test_rx.daemon && test_rx.port) {
		test_delivered_with_headers();
		test_keepalive();
		test_retry_then_delivered();
		test_schedule_exhausted();
		test_single_attempts();
		test_large_body_no_expect();
		test_schedule_empty_fails();
		test_retry_after();
		test_claim_errors_back_off();
		test_complete_refused_then_taken();
		test_complete_refused_at_stop();
		test_host_queue_timeout_from_send();
		test_host_queue_unwanted_released();
		test_sub_queue_max_in_flight();
		test_sub_queue_released_after_failure();
		test_wake();
		test_stop_releases();
		test_stop_hurried();
		test_stop_lets_finish();
		test_bad_options();
	}
	test_rx_stop();
	curl_global_cleanup();
	printf("  took %lld ms\n", (long long)(clock_mono_ms() - t0));
	return CHECK_DONE();
}
