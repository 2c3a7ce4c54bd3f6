/*
 * writer.h - the single writer thread: a bounded queue of store calls, drained in
 * batches. Each batch is handed to the store's batch function, which runs it in one
 * transaction. A batch that promised durability is then handed to the syncer thread,
 * which makes everything committed so far durable with one sync and only then runs its
 * calls' done(); meanwhile the writer already runs the next batch. That is group commit
 * with the sync out of the writer's way: one sync for every batch that committed while
 * the last sync ran.
 *
 * Threads: writer_submit from any thread; the batch function on the writer thread; the
 * sync function on the syncer thread; done() on the syncer thread for the durable calls
 * of a batch that needs a sync, on the writer thread for every other call.
 */
#ifndef HOOKRELAY_WRITER_H
#define HOOKRELAY_WRITER_H

#include <stddef.h>

struct store_call;
struct writer;

/* Runs calls[0..n) in one transaction and sets each call's rc/result. Returns 1 if the
 * calls may be answered only once the sync function has run after it, else 0. */
typedef int (*writer_batch_fn)(void *ctx, struct store_call **calls, size_t n);

/* Makes everything committed so far durable; does not return if it cannot. */
typedef void (*writer_sync_fn)(void *ctx);

/* Starts the threads. max_queue bounds submitted-but-not-started calls; max_batch bounds
 * one transaction. NULL if a thread cannot start. */
struct writer *writer_start(writer_batch_fn fn, writer_sync_fn sync, void *ctx,
                            size_t max_queue, size_t max_batch);

/* Queues a call. Returns 0, or -1 if the queue holds max_queue calls already and
 * `must` is 0. `must` = 1 always queues (the dispatcher's results may not be dropped). */
int writer_submit(struct writer *w, struct store_call *call, int must);

/* Queues a call to run no sooner than delay_ms from now, behind the calls queued by
 * then (a call whose storage failed, tried again after a pause without pausing the
 * others). Always queues, as `must` does. Returns 0, or -1 when stopping (the call is
 * untouched). At the stop, calls still waiting run at once. */
int writer_submit_later(struct writer *w, struct store_call *call, int delay_ms);

/* Calls queued and not yet started (for /metrics). */
size_t writer_queued(struct writer *w);

/* Runs and syncs everything still queued, then joins the threads and frees them.
 * Accepts NULL. */
void writer_stop(struct writer *w);

#endif
