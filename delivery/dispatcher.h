/*
 * dispatcher.h - the delivery engine: one thread that claims due jobs from a
 * delivery_store, pushes them through the curl-multi sender, decides each outcome
 * (delivered / retry with backoff / failed / gone) and hands results back.
 *
 * Threads: dispatcher_start(), dispatcher_stop(), dispatcher_stop_for() and
 * dispatcher_hurry() from the main thread; dispatcher_wake() from any thread. Everything
 * else runs on the dispatcher's thread.
 */
#ifndef HOOKRELAY_DISPATCHER_H
#define HOOKRELAY_DISPATCHER_H

#include <stdint.h>

#include "delivery.h"
#include "target.h"

struct dispatcher;

struct dispatcher_options {
	int max_in_flight;              /* transfers in flight at once, all targets */
	int max_per_host;               /* requests at once per host:port (see sender.h) */
	int max_idle_connections;       /* connections kept open beyond those in flight */
	int nice;                       /* added to the dispatcher thread's nice value (lower
	                                   CPU priority than the threads that take events) */
	int timeout_ms;                 /* whole-request timeout per attempt */
	const int64_t *retry_schedule;  /* ms delays after attempt 1, 2, ...; borrowed */
	int retry_count;                /* entries in retry_schedule */
	const char *user_agent;         /* e.g. "hookrelay/0.1.0"; borrowed */
	const char *ca_file;            /* sender_options.ca_file; borrowed, or NULL */
	const struct target_policy *targets; /* addresses deliveries may connect to, checked
	                                        at connect time; borrowed. NULL: no check
	                                        (tests only; main always sets one) */
};

/* Starts the dispatcher thread. Both arguments are borrowed and must outlive the
 * dispatcher. Returns NULL (with a message on stderr) if the thread or curl cannot start. */
struct dispatcher *dispatcher_start(const struct dispatcher_options *opts,
                                    const struct delivery_store *store);

/* Tells the dispatcher that new jobs may be due now. Thread-safe, cheap, never blocks. */
void dispatcher_wake(struct dispatcher *d);

/* Stops claiming, lets in-flight transfers finish for up to deadline_ms, completes the
 * rest as DELIVERY_RELEASED, joins the thread and frees everything. Accepts NULL. */
void dispatcher_stop(struct dispatcher *d, int deadline_ms);

/* The same in steps, for a caller that has other things to watch meanwhile: the first
 * call begins the stop (later calls keep its deadline), then each waits up to wait_ms
 * for the thread. Returns 1 once it has ended and d is freed, else 0: call again. */
int dispatcher_stop_for(struct dispatcher *d, int deadline_ms, int wait_ms);

/* During a stop: ends the deadline now, so in-flight transfers are released at once. */
void dispatcher_hurry(struct dispatcher *d);

#endif
