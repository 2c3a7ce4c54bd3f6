/*
 * writer.c - the single writer thread, its queue, and the syncer thread behind it.
 *
 * Invariants: calls are run in the order they were submitted; a call's done() is called
 * exactly once, after the batch that ran it ended (committed or rolled back) and, for a
 * durable call of a batch that needs a sync, after a sync that began once that batch had
 * committed (a sync does not fail: the store stops the process if it cannot sync).
 * The queue never holds more than max_queue optional calls. A call submitted for later
 * waits in a second list, in the order of its due time (submission order among equal
 * ones), and joins the queue's tail once due, or at once when stopping. A call that
 * changes a subscription is the last of its batch (store_call_ends_batch). Only the
 * writer thread touches the write connection (through the batch function); the sync
 * function must not use it.
 */
#include "writer.h"

#include <pthread.h>
#include <stdlib.h>

#include "clock.h"
#include "store.h"

struct writer {
	pthread_t thread, syncer;
	pthread_mutex_t lock;
	pthread_cond_t wake;            /* writer: calls queued or stopping */
	pthread_cond_t sync_wake;       /* syncer: calls to sync or stopping */
	struct store_call *head, *tail; /* FIFO, linked through call->next */
	size_t queued;                  /* calls in the list */
	struct store_call *later;       /* not due yet, by due_ms, through call->next */
	size_t max_queue;               /* calls accepted before submit says no */
	size_t max_batch;               /* calls per transaction */
	struct store_call *sync_head, *sync_tail; /* committed, waiting for a sync */
	int stopping;                   /* set by writer_stop; the writer drains and exits */
	int writer_done;                /* the writer has exited; the syncer drains and exits */
	writer_batch_fn run_batch;
	writer_sync_fn sync;
	void *ctx;
	struct store_call **batch;      /* max_batch slots, writer thread only */
};

static void *syncer_main(void *arg)
{
	struct writer *w = arg;

	for (;;) {
		struct store_call *list;

		pthread_mutex_lock(&w->lock);
		while (!w->sync_head && !w->writer_done)
			pthread_cond_wait(&w->sync_wake, &w->lock);
		list = w->sync_head;
		w->sync_head = w->sync_tail = NULL;
		pthread_mutex_unlock(&w->lock);
		if (!list)
			break; /* writer done and nothing left */

		w->sync(w->ctx);
		while (list) {
			struct store_call *c = list;
			list = c->next;
			c->next = NULL;
			if (c->done)
				c->done(c);
		}
	}
	return NULL;
}

static void queue_append(struct writer *w, struct store_call *call)
{
	call->next = NULL;
	if (w->tail)
		w->tail->next = call;
	else
		w->head = call;
	w->tail = call;
	w->queued++;
}

/* Moves the calls submitted for later that are due (all of them when stopping) to the
 * queue. Returns the due time of the first still waiting, or -1 if none waits. */
static int64_t later_move_due(struct writer *w)
{
	int64_t now = clock_mono_ms();

	while (w->later && (w->stopping || w->later->due_ms <= now)) {
		struct store_call *c = w->later;
		w->later = c->next;
		queue_append(w, c);
	}
	return w->later ? w->later->due_ms : -1;
}

static void wait_until_ms(struct writer *w, int64_t due_ms)
{
	struct timespec ts = {.tv_sec = (time_t)(due_ms / 1000),
	                      .tv_nsec = (long)(due_ms % 1000) * 1000000};
	pthread_cond_timedwait(&w->wake, &w->lock, &ts); /* w->wake runs on CLOCK_MONOTONIC */
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	for (;;) {
		size_t n = 0;
		int needs_sync;

		pthread_mutex_lock(&w->lock);
		for (;;) {
			int64_t next_due = later_move_due(w);
			if (w->head || w->stopping)
				break;
			if (next_due < 0)
				pthread_cond_wait(&w->wake, &w->lock);
			else
				wait_until_ms(w, next_due);
		}
		if (!w->head && w->stopping) {
			pthread_mutex_unlock(&w->lock);
			break;
		}
		while (w->head && n < w->max_batch) {
			struct store_call *c = w->head;
			w->head = c->next;
			c->next = NULL;
			w->batch[n++] = c;
			if (store_call_ends_batch(c->kind))
				break;
		}
		if (!w->head)
			w->tail = NULL;
		w->queued -= n;
		pthread_mutex_unlock(&w->lock);

		needs_sync = w->run_batch(w->ctx, w->batch, n);
		/* The durable calls go to the syncer in one piece, so that one sync covers the
		 * whole batch; the others are answered now. */
		struct store_call *durable = NULL, *durable_tail = NULL;
		for (size_t i = 0; i < n; i++) {
			struct store_call *c = w->batch[i];
			if (needs_sync && store_call_durable(c->kind)) {
				if (durable_tail)
					durable_tail->next = c;
				else
					durable = c;
				durable_tail = c;
			} else if (c->done) {
				c->done(c);
			}
		}
		if (durable) {
			pthread_mutex_lock(&w->lock);
			if (w->sync_tail)
				w->sync_tail->next = durable;
			else
				w->sync_head = durable;
			w->sync_tail = durable_tail;
			pthread_cond_signal(&w->sync_wake);
			pthread_mutex_unlock(&w->lock);
		}
	}
	pthread_mutex_lock(&w->lock);
	w->writer_done = 1;
	pthread_cond_signal(&w->sync_wake);
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

static void writer_free(struct writer *w)
{
	pthread_cond_destroy(&w->sync_wake);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w->batch);
	free(w);
}

struct writer *writer_start(writer_batch_fn fn, writer_sync_fn sync, void *ctx,
                            size_t max_queue, size_t max_batch)
{
	struct writer *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->batch = calloc(max_batch, sizeof(*w->batch));
	if (!w->batch) {
		free(w);
		return NULL;
	}
	w->run_batch = fn;
	w->sync = sync;
	w->ctx = ctx;
	w->max_queue = max_queue;
	w->max_batch = max_batch;
	pthread_condattr_t monotonic;
	pthread_condattr_init(&monotonic);
	pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, &monotonic);
	pthread_condattr_destroy(&monotonic);
	pthread_cond_init(&w->sync_wake, NULL);
	if (pthread_create(&w->syncer, NULL, syncer_main, w) != 0) {
		writer_free(w);
		return NULL;
	}
	if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
		pthread_mutex_lock(&w->lock);
		w->writer_done = 1;
		pthread_cond_signal(&w->sync_wake);
		pthread_mutex_unlock(&w->lock);
		pthread_join(w->syncer, NULL);
		writer_free(w);
		return NULL;
	}
	pthread_setname_np(w->thread, "hr-writer"); /* for top -H and perf */
	pthread_setname_np(w->syncer, "hr-sync");
	return w;
}

int writer_submit(struct writer *w, struct store_call *call, int must)
{
	int rc = -1;

	pthread_mutex_lock(&w->lock);
	if (w->stopping || (!must && w->queued >= w->max_queue))
		goto out;
	queue_append(w, call);
	pthread_cond_signal(&w->wake);
	rc = 0;
out:
	pthread_mutex_unlock(&w->lock);
	return rc;
}

int writer_submit_later(struct writer *w, struct store_call *call, int delay_ms)
{
	int rc = -1;

	pthread_mutex_lock(&w->lock);
	if (w->stopping)
		goto out;
	call->due_ms = clock_mono_ms() + delay_ms;
	struct store_call **at = &w->later; /* behind every call due no later */
	while (*at && (*at)->due_ms <= call->due_ms)
		at = &(*at)->next;
	call->next = *at;
	*at = call;
	pthread_cond_signal(&w->wake); /* the writer may be waiting for an earlier due time */
	rc = 0;
out:
	pthread_mutex_unlock(&w->lock);
	return rc;
}

size_t writer_queued(struct writer *w)
{
	size_t n;

	pthread_mutex_lock(&w->lock);
	n = w->queued;
	pthread_mutex_unlock(&w->lock);
	return n;
}

void writer_stop(struct writer *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = 1;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	pthread_join(w->syncer, NULL);
	writer_free(w);
}
