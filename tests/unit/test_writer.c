/*
 * test_writer.c - the writer thread's batching: calls queued while a batch runs go into
 * the next one together (group commit), except that a call changing a subscription ends
 * its batch, so nothing after it in the queue shares its transaction (the store's copy
 * of the subscriptions is reloaded only after a COMMIT).
 *
 * The batch function records each batch's kinds; the first batch blocks until the test
 * has queued the rest, so their grouping is decided by the writer, not by timing.
 * And a call submitted for later (a completion whose storage failed) waits its pause
 * without holding up the calls behind it, and runs at once when the writer stops.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "store.h"
#include "writer.h"

#define MAX_BATCHES 16
#define MAX_PER_BATCH 16

struct recorder {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int entered;  /* the first batch has started */
	int released; /* the test lets the first batch finish */
	int nbatches;
	int sizes[MAX_BATCHES];
	enum store_call_kind kinds[MAX_BATCHES][MAX_PER_BATCH];
	int done; /* calls answered */
};

static int record_batch(void *ctx, struct store_call **calls, size_t n)
{
	struct recorder *r = ctx;
	pthread_mutex_lock(&r->mu);
	if (r->nbatches < MAX_BATCHES) {
		r->sizes[r->nbatches] = (int)n;
		for (size_t i = 0; i < n && i < MAX_PER_BATCH; i++)
			r->kinds[r->nbatches][i] = calls[i]->kind;
	}
	r->nbatches++;
	r->entered = 1;
	pthread_cond_broadcast(&r->cv);
	while (!r->released)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
	return 0; /* nothing to sync: done() runs on the writer thread */
}

static void no_sync(void *ctx)
{
	(void)ctx;
}

static void count_done(struct store_call *call)
{
	struct recorder *r = call->arg;
	pthread_mutex_lock(&r->mu);
	r->done++;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

static int batch_is(const struct recorder *r, int b, const enum store_call_kind *want, int n)
{
	if (b >= r->nbatches || r->sizes[b] != n)
		return 0;
	return memcmp(r->kinds[b], want, (size_t)n * sizeof(*want)) == 0;
}

#define MAX_CALLS 16

/* Submits order[0], waits until its batch runs, queues the rest behind it, lets the
 * first batch end and waits for every call's done(); r then holds the batches. */
static void run_order(struct recorder *r, const enum store_call_kind *order, int n)
{
	struct store_call calls[MAX_CALLS];
	memset(calls, 0, sizeof(calls));
	CHECK(n <= MAX_CALLS);
	if (n > MAX_CALLS)
		return;

	struct writer *w = writer_start(record_batch, no_sync, r, 100, 64);
	CHECK(w != NULL);
	if (!w)
		return;
	for (int i = 0; i < n; i++) {
		calls[i].kind = order[i];
		calls[i].done = count_done;
		calls[i].arg = r;
	}
	CHECK(writer_submit(w, &calls[0], 1) == 0);
	pthread_mutex_lock(&r->mu);
	while (!r->entered)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
	for (int i = 1; i < n; i++)
		CHECK(writer_submit(w, &calls[i], 1) == 0);
	pthread_mutex_lock(&r->mu);
	r->released = 1;
	pthread_cond_broadcast(&r->cv);
	while (r->done < n)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
	writer_stop(w);
}

static void test_subscription_write_ends_batch(void)
{
	struct recorder r = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
	static const enum store_call_kind order[] = {
	    STORE_INGEST,                       /* runs alone while the rest queue */
	    STORE_CLAIM,      STORE_SUB_UPDATE, /* a claim before the change may share it */
	    STORE_CLAIM,      STORE_INGEST,     STORE_SUB_DELETE,
	    STORE_SUB_ROTATE, /* alone: a change right after a change */
	    STORE_COMPLETE,   STORE_SUB_CREATE, STORE_CLAIM,
	};
	run_order(&r, order, (int)(sizeof(order) / sizeof(order[0])));

	CHECK(r.nbatches == 6);
	CHECK(batch_is(&r, 0, (enum store_call_kind[]){STORE_INGEST}, 1));
	CHECK(batch_is(&r, 1, (enum store_call_kind[]){STORE_CLAIM, STORE_SUB_UPDATE}, 2));
	CHECK(batch_is(&r, 2, (enum store_call_kind[]){STORE_CLAIM, STORE_INGEST, STORE_SUB_DELETE},
	               3));
	CHECK(batch_is(&r, 3, (enum store_call_kind[]){STORE_SUB_ROTATE}, 1));
	CHECK(batch_is(&r, 4, (enum store_call_kind[]){STORE_COMPLETE, STORE_SUB_CREATE}, 2));
	CHECK(batch_is(&r, 5, (enum store_call_kind[]){STORE_CLAIM}, 1));
}

static void test_group_commit(void)
{
	struct recorder r = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
	static const enum store_call_kind order[] = {
	    STORE_INGEST,      STORE_INGEST,         STORE_CLAIM, STORE_COMPLETE,
	    STORE_SUB_RECOVER, STORE_DELIVERY_RETRY, STORE_INGEST};
	enum { N = sizeof(order) / sizeof(order[0]) };
	run_order(&r, order, N);

	/* everything that queued while the first batch ran is one transaction */
	CHECK(r.nbatches == 2);
	CHECK(r.sizes[1] == N - 1);
	CHECK(batch_is(&r, 1, &order[1], N - 1));
}

/* A full queue refuses what may be refused (a publish gets its 503) but always takes what
 * may not: the dispatcher's claims and results, whose loss would leave deliveries leased
 * until the next start. The writer is held in its first batch while the queue fills. */
static void test_full_queue_takes_must(void)
{
	struct recorder r = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
	enum { MAX_QUEUE = 3 };
	struct store_call calls[MAX_QUEUE + 4];
	memset(calls, 0, sizeof(calls));
	for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
		calls[i].kind = STORE_INGEST;
		calls[i].done = count_done;
		calls[i].arg = &r;
	}
	struct writer *w = writer_start(record_batch, no_sync, &r, MAX_QUEUE, 64);
	CHECK(w != NULL);
	if (!w)
		return;
	CHECK(writer_submit(w, &calls[0], 0) == 0);
	pthread_mutex_lock(&r.mu);
	while (!r.entered)
		pthread_cond_wait(&r.cv, &r.mu);
	pthread_mutex_unlock(&r.mu);
	int taken = 1;
	for (int i = 1; i <= MAX_QUEUE; i++)
		taken += writer_submit(w, &calls[i], 0) == 0;
	CHECK(taken == 1 + MAX_QUEUE);
	CHECK(writer_queued(w) == MAX_QUEUE);
	CHECK(writer_submit(w, &calls[MAX_QUEUE + 1], 0) == -1); /* full: refused */
	calls[MAX_QUEUE + 2].kind = STORE_CLAIM;
	calls[MAX_QUEUE + 3].kind = STORE_COMPLETE;
	CHECK(writer_submit(w, &calls[MAX_QUEUE + 2], 1) == 0); /* full, but must: taken */
	CHECK(writer_submit(w, &calls[MAX_QUEUE + 3], 1) == 0);
	CHECK(writer_queued(w) == MAX_QUEUE + 2);
	pthread_mutex_lock(&r.mu);
	r.released = 1;
	pthread_cond_broadcast(&r.cv);
	while (r.done < MAX_QUEUE + 3)
		pthread_cond_wait(&r.cv, &r.mu);
	pthread_mutex_unlock(&r.mu);
	writer_stop(w);
	CHECK(r.done == MAX_QUEUE + 3); /* every call taken was run, the refused one was not */
}

/* Waits until r has answered n calls; returns the monotonic ms it saw that at. */
static int64_t wait_done(struct recorder *r, int n)
{
	pthread_mutex_lock(&r->mu);
	while (r->done < n)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
	return clock_mono_ms();
}

/* Calls submitted for later run in the order of their due times, each no sooner than
 * its pause, and a call submitted plainly meanwhile runs at once. */
static void test_later_waits_its_pause(void)
{
	struct recorder r = {
	    .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .released = 1};
	struct store_call later_long = {.kind = STORE_COMPLETE, .done = count_done, .arg = &r};
	struct store_call later_short = {.kind = STORE_CLAIM, .done = count_done, .arg = &r};
	struct store_call now = {.kind = STORE_INGEST, .done = count_done, .arg = &r};
	struct writer *w = writer_start(record_batch, no_sync, &r, 100, 64);
	CHECK(w != NULL);
	if (!w)
		return;
	int64_t t0 = clock_mono_ms();
	CHECK(writer_submit_later(w, &later_long, 300) == 0);
	CHECK(writer_submit_later(w, &later_short, 100) == 0); /* due first, submitted second */
	CHECK(writer_submit(w, &now, 0) == 0);
	int64_t now_ms = wait_done(&r, 1) - t0;
	int64_t short_ms = wait_done(&r, 2) - t0;
	int64_t long_ms = wait_done(&r, 3) - t0;
	writer_stop(w);
	CHECK(now_ms < 100);
	CHECK(short_ms >= 100 && short_ms < 300);
	CHECK(long_ms >= 300);
	CHECK(r.nbatches == 3);
	CHECK(batch_is(&r, 0, (enum store_call_kind[]){STORE_INGEST}, 1));
	CHECK(batch_is(&r, 1, (enum store_call_kind[]){STORE_CLAIM}, 1));
	CHECK(batch_is(&r, 2, (enum store_call_kind[]){STORE_COMPLETE}, 1));
	if (now_ms >= 100 || short_ms < 100 || short_ms >= 300 || long_ms < 300)
		fprintf(stderr, "  now %lld ms, short %lld ms, long %lld ms\n", (long long)now_ms,
		        (long long)short_ms, (long long)long_ms);
}

/* At the stop, a call waiting for later runs at once (its results are written, or
 * dropped by its done() if they fail again), and nothing more is taken for later. */
static void test_later_runs_at_stop(void)
{
	struct recorder r = {
	    .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .released = 1};
	struct store_call later = {.kind = STORE_COMPLETE, .done = count_done, .arg = &r};
	struct writer *w = writer_start(record_batch, no_sync, &r, 100, 64);
	CHECK(w != NULL);
	if (!w)
		return;
	int64_t t0 = clock_mono_ms();
	CHECK(writer_submit_later(w, &later, 60 * 1000) == 0);
	writer_stop(w);
	CHECK(r.done == 1);
	CHECK(clock_mono_ms() - t0 < 5000);
	CHECK(batch_is(&r, 0, (enum store_call_kind[]){STORE_COMPLETE}, 1));
}

int main(void)
{
	test_group_commit();
	test_subscription_write_ends_batch();
	test_full_queue_takes_must();
	test_later_waits_its_pause();
	test_later_runs_at_stop();
	return CHECK_DONE();
}
