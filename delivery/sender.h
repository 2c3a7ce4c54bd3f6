/*
 * sender.h - many webhook POSTs in flight on one thread, over one libcurl multi handle.
 *
 * The sender knows HTTP, not policy: it builds and sends the signed request for a job,
 * bounds what it reads back, and reports what happened (status, timing, error text,
 * Retry-After). Whether that is delivered, retry or failed is the dispatcher's call.
 *
 * Every job given to sender_start() comes back exactly once, from sender_next() when
 * its transfer ends (or could not start), or from sender_release() at shutdown.
 *
 * Threads: a struct sender belongs to one thread at a time (the dispatcher's); every
 * function but sender_wakeup() must be called from that thread. sender_wakeup() is safe
 * from any thread while the sender exists.
 */
#ifndef HOOKRELAY_SENDER_H
#define HOOKRELAY_SENDER_H

#include <stddef.h>
#include <stdint.h>

#include "delivery.h"
#include "target.h"

#define SENDER_BODY_MAX (1024 * 1024) /* bytes of response body read before we abort */

struct sender;

struct sender_options {
	int max_total;          /* connections open at once, all hosts */
	int max_per_host;       /* requests at once to one host:port (>= 1; over HTTP/1.1 a
	                           connection each); jobs beyond it wait in the sender, not
	                           yet handed to curl */
	int timeout_ms;         /* whole-request timeout per attempt */
	const char *user_agent; /* user-agent header value; borrowed */
	const char *ca_file;    /* PEM file of the CAs an https receiver's certificate must
	                           chain to, instead of the system's; borrowed. NULL: the
	                           system's (libcurl's built-in bundle file) */
	const struct target_policy *targets; /* checked on every address a transfer is
	                                        about to connect to; borrowed. NULL: no
	                                        check (unit tests of the HTTP side only) */
	int (*still_wanted)(void *arg, const struct delivery_job *job); /* asked as a job
	                           is handed to curl; 0 sends it back unsent (released = 1).
	                           NULL: every job is wanted */
	void *still_wanted_arg;
};

/* One job whose transfer is over. The caller owns job and result from here on. */
struct sender_done {
	struct delivery_job *job;
	struct delivery_result *result; /* ids, attempt, started_at_ms, duration_ms,
	                                   http_status, error, snippet are filled; outcome
	                                   and next_attempt_at_ms are left for the caller */
	int complete;                   /* 1 if the receiver answered: the whole response
	                                   was read, or the body passed 1 MiB after the
	                                   status; 0 after a timeout, network error, local
	                                   failure or release */
	int64_t retry_after_ms;         /* unix ms named by a Retry-After header, or -1 */
	int released;                   /* 1 if never sent: still_wanted said no (then
	                                   complete = 0 and duration_ms = 0) */
};

/* Creates the multi handle. Returns NULL (message on stderr) if curl cannot start.
 * curl_global_init() must have run. opts is copied; user_agent and targets are
 * borrowed. A connection to an address targets refuses is never opened: the transfer
 * fails with complete = 0 and result->error "blocked: <address> is <rule>". Proxies
 * from the environment are ignored, so the address checked is the receiver's. */
struct sender *sender_new(const struct sender_options *opts);

/* Checks that path is a PEM file OpenSSL can load with at least one certificate in it,
 * as a start-up check of --ca-file: libcurl reads the file only when it connects, and
 * a bad one would fail every https delivery. Returns 0, or -1 with why in err. */
int sender_ca_file_check(const char *path, char *err, size_t errlen);

/* The same check of libcurl's built-in CA bundle, the one used without --ca-file (on
 * Debian /etc/ssl/certs/ca-certificates.crt, from the ca-certificates package); a
 * libcurl with a CA directory and no bundle file passes unchecked. */
int sender_system_ca_check(char *err, size_t errlen);

/* 1 if name (any case) is a header a subscription may not set: webhook-*, the ones the
 * sender sets itself, and framing, coding and hop-by-hop ones. Such a header stored
 * before its name was reserved is left out of the request. */
int sender_header_reserved(const char *name);

/* Frees everything. Transfers still in flight are dropped and their jobs freed: call
 * sender_release() until it returns 0 first to hand them back. Accepts NULL. */
void sender_free(struct sender *s);

/* Starts the signed POST for job and takes ownership of it; nothing is sent until
 * sender_perform(). With max_per_host of its host's jobs already with curl, or
 * job->max_in_flight of its subscription's (when above 0), it waits for one of them to
 * end, behind the earlier waiting jobs of its subscription; its attempt (started_at,
 * signature timestamp, timeout) begins when it is handed to curl. A job that cannot be
 * sent (malformed secret or headers, curl refuses it) still comes back from
 * sender_next() with complete = 0 and the reason in result->error. Returns 0, or -1
 * only when out of memory: then the job is still the caller's. */
int sender_start(struct sender *s, struct delivery_job *job);

/* Moves every transfer forward as far as it can without blocking. Returns 0 or -1. */
int sender_perform(struct sender *s);

/* Blocks until a transfer has something to do, sender_wakeup() is called or
 * timeout_ms passes, whichever is first (curl's own timers may shorten the wait).
 * Returns 0 or -1. */
int sender_wait(struct sender *s, int timeout_ms);

/* Interrupts a sender_wait() in progress or the next one. Thread-safe, never blocks. */
void sender_wakeup(struct sender *s);

/* Takes one finished transfer: fills *out and returns 1, or returns 0 if none is
 * finished. */
int sender_next(struct sender *s, struct sender_done *out);

/* Aborts one transfer still in flight (nothing more is read or sent for it): fills
 * *out with complete = 0 and returns 1, or returns 0 if none is left. */
int sender_release(struct sender *s, struct sender_done *out);

/* Jobs started and not yet returned by sender_next() or sender_release(). */
int sender_in_flight(const struct sender *s);

/* Calls each(arg, key, used) for every receiver host with jobs sent or waiting: key is
 * its target_host_key (valid during the call only), used how many of its connections
 * its jobs take or wait for: those sent, and while all max_per_host are taken, those
 * waiting too (below that, a job waits only for its subscription's max_in_flight: it
 * leaves the host's room to others). */
void sender_each_host(const struct sender *s, void (*each)(void *arg, const char *key, int used),
                      void *arg);

#endif
