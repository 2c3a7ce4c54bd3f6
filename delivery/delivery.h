/*
 * delivery.h - the contract between delivery/ and whatever stores deliveries.
 *
 * delivery/ knows nothing about SQLite. server/ implements struct delivery_store;
 * the dispatcher claims due jobs through it and hands back one result per attempt.
 *
 * Ownership: a claimed job belongs to the dispatcher until it is freed with
 * delivery_job_free(). A result passed to complete() belongs to the store from then on
 * and is freed with delivery_result_free().
 */
#ifndef HOOKRELAY_DELIVERY_H
#define HOOKRELAY_DELIVERY_H

#include <stddef.h>
#include <stdint.h>

#define DELIVERY_SNIPPET_MAX 4096 /* bytes of response body kept per attempt */
#define DELIVERY_ERROR_MAX 256    /* bytes of error text per attempt, NUL included */

/* One attempt to make: everything the sender needs, copied out of the store. */
struct delivery_job {
	int64_t delivery_id;
	int64_t subscription_id;
	int attempt;          /* number of this attempt, 1-based */
	char *url;            /* absolute http(s) URL */
	char *event_id;       /* webhook-id: the event id, same on every retry */
	unsigned char *body;  /* the stored envelope bytes, sent and signed as they are */
	size_t body_len;      /* bytes */
	char *secrets;        /* space-separated signing secrets ("whsec_..." for v1,
	                         "whsk_..." for v1a), newest first; never empty */
	char *headers_json;   /* JSON object {"Name": "value"} of custom headers, or NULL */
	uint64_t subscription_version; /* the subscription's settings (url, headers,
	                                  secrets, enabled) this job was made with; see
	                                  delivery_store.current */
	int64_t published_at_ms;       /* unix ms its event was published (the envelope's
	                                  timestamp) */
	int max_in_flight;             /* the most of its subscription's jobs the sender
	                                  runs at once (0: no limit of its own); the store
	                                  may lease more, which wait in the sender */
	int fills_subscription;        /* its claim left the subscription with all the
	                                  leases it may hold: new work for it waits for
	                                  this one's result */
};

enum delivery_outcome {
	DELIVERY_DELIVERED, /* 2xx: delivery done */
	DELIVERY_RETRY,     /* failed; try again at next_attempt_at_ms */
	DELIVERY_FAILED,    /* failed and the schedule is exhausted */
	DELIVERY_GONE,      /* 410: delivery failed, disable the subscription */
	DELIVERY_RELEASED   /* not attempted (shutdown, or its subscription changed before it
	                       was sent): put back as due, log no attempt; failed if the
	                       subscription is gone */
};

/* What one attempt came to. */
struct delivery_result {
	int64_t delivery_id;
	int64_t subscription_id;
	int attempt;                    /* as in the job */
	int64_t started_at_ms;          /* unix ms when the request started */
	int duration_ms;                /* ms from start to response or failure */
	int64_t duration_us;            /* the same in µs, for /metrics' 5 ms buckets */
	int http_status;                /* 0 = no response */
	char error[DELIVERY_ERROR_MAX]; /* "" on success; curl's text or our reason */
	char *response_snippet;         /* first DELIVERY_SNIPPET_MAX bytes of body, or NULL */
	size_t snippet_len;             /* bytes */
	enum delivery_outcome outcome;
	int64_t next_attempt_at_ms;     /* unix ms, meaningful for DELIVERY_RETRY only */
	int64_t schedule_next_ms;       /* unix ms the retry schedule alone would try again
	                                   (no Retry-After), or -1 if it has no attempt left;
	                                   meaningful for RETRY, FAILED and GONE: the store
	                                   goes by it for an answer from a url the
	                                   subscription has left since */
	int64_t published_at_ms;        /* as in the job */
	uint64_t subscription_version;  /* as in the job: the settings it was sent with */
};

/* A receiver host (target_host_key) with requests in hookrelay, and how many more it may
 * take now. */
struct delivery_host_room {
	const char *key; /* "host:port" */
	int room;        /* per_host_max minus its requests sent or waiting; may be <= 0 */
};

/*
 * One claim request, owned by the dispatcher: the store fills in the answer and calls
 * done(claim) exactly once, on any thread, possibly before claim() has returned.
 */
struct delivery_claim {
	int64_t now_ms;              /* in: lease jobs due at this unix ms */
	int max;                     /* in: at most this many */
	int in_flight_max;           /* in: the dispatcher's max_in_flight. While many
	                                subscriptions have work due, each is held to its
	                                share of it (see the store's claim). 0 = no shares */
	int per_host_max;            /* in: at most this many jobs for one receiver host
	                                (target_host_key of the job's url), less what the
	                                host holds already (hosts[]); 0 = no host limit */
	const struct delivery_host_room *hosts;     /* in: the hosts with requests now; any
	                                    other host has per_host_max room. Borrowed until
	                                    done() */
	int nhosts;                                 /* in: entries in hosts */
	void (*done)(struct delivery_claim *claim); /* in: called with the answer */
	void *arg;                   /* in: for done() */
	int count;                   /* out: jobs leased (0..max), or -1 on storage error */
	struct delivery_job **jobs;  /* out: malloc'd array of count jobs, or NULL */
	int64_t next_due_ms;         /* out: earliest unix ms a pending, unleased job is due
	                                (INT64_MAX if none), among subscriptions and hosts
	                                with room */
	int host_full;               /* out: 1 if a host had no room for a subscription
	                                that did: claim again when a request to one ends */
	int sub_full;                /* out: 1 if a subscription had no room (at its
	                                max_in_flight or its share of ours), or had more
	                                due than it took: its results free room for it */
};

/*
 * Implemented by the store. Both functions are called from the dispatcher thread only,
 * and neither waits for storage: the dispatcher keeps its transfers moving meanwhile.
 *
 * claim: queue a request to lease up to claim->max jobs whose next attempt is due, so
 *   that no other claim returns them until they are completed or the process restarts
 *   (a restart makes every leased job due again: that is the crash-safety promise).
 *   Returns 0 when queued (done() will be called), -1 when it could not be (done() is
 *   not called). The dispatcher frees the jobs (delivery_job_free) and the array.
 *   A claim queued after complete() normally sees the room those completions gave
 *   back (not if their batch failed and they are applied again later).
 * complete: hand over finished attempts. Returns 0 when queued for the writer: every
 *   results[i] (not the array) belongs to the store from then on. Returns -1 when they
 *   could not be queued (out of memory): the caller still owns them, and hands them
 *   over again later; their leases stay held meanwhile.
 * current: asked just before a job's request is sent (a job may wait a while for room
 *   at its host): 1 if its subscription still exists, enabled, at the
 *   subscription_version the job was made with; 0 if it was deleted, disabled or
 *   changed since (the job then goes back unsent, DELIVERY_RELEASED, and a later claim
 *   makes it again with the new settings). Thread-safe and quick; NULL means always 1.
 */
struct delivery_store {
	void *ctx;
	int (*claim)(void *ctx, struct delivery_claim *claim);
	int (*complete)(void *ctx, struct delivery_result **results, int n);
	int (*current)(void *ctx, int64_t subscription_id, uint64_t subscription_version);
};

/* A job with copies of the strings and the body, all in one allocation with it (the
 * store makes jobs on its thread and the dispatcher frees them on another: each free
 * of another thread's memory takes that thread's malloc arena lock). url and secrets are
 * required; event_id, body and headers_json may be NULL (an event pruned: no id, no
 * body), and stay NULL in the job. The body gets a NUL after body_len bytes. Set the
 * other fields after. NULL when out of memory. */
struct delivery_job *delivery_job_new(const char *url, const char *event_id,
                                      const unsigned char *body, size_t body_len,
                                      const char *secrets, const char *headers_json);
void delivery_job_free(struct delivery_job *job);       /* accepts NULL */
void delivery_result_free(struct delivery_result *res); /* accepts NULL */

#endif
