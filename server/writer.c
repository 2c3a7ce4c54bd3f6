/*
 * writer.c - the single writer thread and its queue.
 *
 * Invariants: calls are run in the order they were submitted; a call's done() is called
 * exactly once, after the batch that ran it ended (committed or rolled back); the queue
 * never holds more than max_queue optional calls. Only this thread touches the write
 * connection (through the batch function).
 */
#include "writer.h"

#include <pthread.h>
#include <stdlib.h>

#include "store.h"

struct writer {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct store_call *head, *tail; /* FIFO, linked through call->next */
	size_t queued;                  /* calls in the list */
	size_t max_queue;               /* calls accepted before submit says no */
	size_t max_batch;               /* calls per transaction */
	int stopping;                   /* set by writer_stop; the thread drains and exits */
	writer_batch_fn run_batch;
	void *ctx;
	struct store_call **batch;      /* max_batch slots, writer thread only */
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	for (;;) {
		size_t n = 0;
		pthread_mutex_lock(&w->lock);
		while (!w->head && !w->stopping)
			pthread_cond_wait(&w->wake, &w->lock);
		if (!w->head && w->stopping) {
			pthread_mutex_unlock(&w->lock);
			break;
		}
		while (w->head && n < w->max_batch) {
			struct store_call *c = w->head;
			w->head = c->next;
			c->next = NULL;
			w->batch[n++] = c;
		}
		if (!w->head)
			w->tail = NULL;
		w->queued -= n;
		pthread_mutex_unlock(&w->lock);

		w->run_batch(w->ctx, w->batch, n);
		for (size_t i = 0; i < n; i++) {
			if (w->batch[i]->done)
				w->batch[i]->done(w->batch[i]);
		}
	}
	return NULL;
}

struct writer *writer_start(writer_batch_fn fn, void *ctx, size_t max_queue, size_t max_batch)
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
	w->ctx = ctx;
	w->max_queue = max_queue;
	w->max_batch = max_batch;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->wake, NULL);
	if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
		pthread_cond_destroy(&w->wake);
		pthread_mutex_destroy(&w->lock);
		free(w->batch);
		free(w);
		return NULL;
	}
	pthread_setname_np(w->thread, "hr-writer"); /* for top -H and perf */
	return w;
}

int writer_submit(struct writer *w, struct store_call *call, int must)
{
	int rc = -1;

	pthread_mutex_lock(&w->lock);
	if (w->stopping || (!must && w->queued >= w->max_queue))
		goto out;
	call->next = NULL;
	if (w->tail)
		w->tail->next = call;
	else
		w->head = call;
	w->tail = call;
	w->queued++;
	pthread_cond_signal(&w->wake);
	rc = 0;
out:
	pthread_mutex_unlock(&w->lock);
	return rc;
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
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w->batch);
	free(w);
}
