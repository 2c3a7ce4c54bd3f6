/*
 * writer.h - the single writer thread: a bounded queue of store calls, drained in
 * batches. Each batch is handed to the store's batch function, which runs it in one
 * transaction; then each call's done() runs. One fsync per batch is group commit.
 *
 * Threads: writer_submit from any thread; the batch function and every done() run on
 * the writer thread only.
 */
#ifndef HOOKRELAY_WRITER_H
#define HOOKRELAY_WRITER_H

#include <stddef.h>

struct store_call;
struct writer;

/* Runs calls[0..n) in one transaction and sets each call's rc/result. */
typedef void (*writer_batch_fn)(void *ctx, struct store_call **calls, size_t n);

/* Starts the thread. max_queue bounds submitted-but-not-started calls; max_batch bounds
 * one transaction. NULL if the thread cannot start. */
struct writer *writer_start(writer_batch_fn fn, void *ctx, size_t max_queue, size_t max_batch);

/* Queues a call. Returns 0, or -1 if the queue holds max_queue calls already and
 * `must` is 0. `must` = 1 always queues (the dispatcher's results may not be dropped). */
int writer_submit(struct writer *w, struct store_call *call, int must);

/* Runs everything still queued, then joins the thread and frees it. Accepts NULL. */
void writer_stop(struct writer *w);

#endif
