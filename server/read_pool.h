/*
 * read_pool.h - a few threads that run the API's database reads off the HTTP threads,
 * so that a slow read (a page of big events, a long scan of the delivery log) holds up
 * no publish waiting on the same HTTP thread.
 *
 * Threads: read_pool_start and read_pool_stop from one thread (main); read_pool_submit
 * from any thread; work() on a pool thread, in the order submitted when there is one
 * thread, else as threads come free.
 */
#ifndef HOOKRELAY_READ_POOL_H
#define HOOKRELAY_READ_POOL_H

struct read_pool;

/* Starts `threads` threads (named hr-read). NULL (message on stderr) if none starts. */
struct read_pool *read_pool_start(int threads);

/* Queues work(arg). Returns 0, or -1 when the queue is full (READ_POOL_QUEUE_MAX jobs
 * waiting), memory is short or the pool is stopping: work was not queued (the API
 * answers 503 overloaded). */
#define READ_POOL_QUEUE_MAX 256
int read_pool_submit(struct read_pool *p, void (*work)(void *arg), void *arg);

/* Runs what is still queued, joins the threads, frees the pool. Accepts NULL. */
void read_pool_stop(struct read_pool *p);

#endif
