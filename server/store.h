/*
 * store.h - hookrelay's storage: the only way server/ reads or writes events,
 * subscriptions, deliveries and attempts.
 *
 * Writes are asynchronous: a struct store_call goes to the single writer thread, which
 * runs everything queued in one transaction (group commit) and then calls each call's
 * done() after COMMIT has returned: on the writer thread, or for a durable call on the
 * syncer thread once the WAL is synced (see writer.h). Reads are synchronous and run on
 * the caller's thread over a pool of read-only connections (WAL lets them run beside
 * the writer).
 *
 * Results are jansson values in the shapes of docs/api.md, built here so that every
 * route shows an object the same way.
 */
#ifndef HOOKRELAY_STORE_H
#define HOOKRELAY_STORE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "delivery.h"
#include "histogram.h"

enum store_rc {
	STORE_OK,
	STORE_NOTFOUND,   /* unknown id */
	STORE_CONFLICT,   /* state forbids it (e.g. retry of a delivery in flight) */
	STORE_OVERLOADED, /* writer queue full (or, for a read, the read queue) */
	STORE_ERR         /* storage failed (disk full, I/O); nothing of the call was kept */
};

struct store;

struct store_options {
	const char *path;        /* database file; created with its directory's permission */
	int synchronous_full;    /* 1: fsync every commit (default); 0: NORMAL */
	size_t max_queue;        /* writer calls queued before store_submit says overloaded */
	int64_t disable_after_ms; /* a subscription failing this long is disabled; 0 = never */
	int64_t retention_ms;     /* events older than this are deleted with their deliveries
	                             and attempts, unless a delivery is pending; 0 = never */
};

/* Opens (creating and migrating) the database, clears leases an older version left in
 * the rows, loads subscriptions and starts the writer thread. NULL with a message in err
 * on failure. */
struct store *store_open(const struct store_options *opts, char *err, size_t errlen);

/* Stops the writer after it drains its queue, closes every connection. Accepts NULL. */
void store_close(struct store *s);

/* The delivery/ side of the store, for the dispatcher. Valid until store_close. */
const struct delivery_store *store_delivery_source(struct store *s);

/* fn(arg) is called on the writer or syncer thread after each commit that made
 * deliveries due (new events, retries, re-enabled subscriptions). Thread-safe; after
 * store_set_due_hook(s, NULL, NULL) returns, the old fn is not running and won't run. */
void store_set_due_hook(struct store *s, void (*fn)(void *arg), void *arg);

/* One event to ingest; built by the caller, borrowed by the store until done(). */
struct store_event {
	char id[32];                  /* "evt_" + 26 chars */
	const char *type;
	const char *key;              /* or NULL */
	const char *idempotency_key;  /* or NULL */
	int64_t created_at_ms;
	const char *envelope;         /* exact bytes to store and send */
	size_t envelope_len;          /* bytes */
	/* outputs, valid from done() on when rc == STORE_OK */
	int deliveries;               /* delivery rows it made (replayed: the first one made) */
	int replayed;                 /* 1 if its idempotency key was known; id is then the
	                                 stored event's */
};

enum store_call_kind {
	STORE_INGEST,         /* events[0..nevents): all-or-nothing */
	STORE_SUB_CREATE,     /* fields: validated subscription fields incl. "secret" */
	STORE_SUB_UPDATE,     /* id, fields: validated fields to change */
	STORE_SUB_DELETE,     /* id */
	STORE_SUB_ROTATE,     /* id, fields: {"secret": new, "grace_ms": n} */
	STORE_SUB_RECOVER,    /* id, fields: {"since_ms": n}: re-queue failed deliveries */
	STORE_SUB_REPLAY,     /* id, fields: {"since_ms": n, "until_ms"?: n}: deliveries of
	                         stored events it has none of */
	STORE_DELIVERY_RETRY, /* id */
	STORE_CLAIM,          /* internal: the dispatcher's claim */
	STORE_COMPLETE,       /* internal: the dispatcher's results */
	STORE_SWEEP,          /* internal: fails a chunk of a deleted subscription's pending
	                         deliveries */
	STORE_PRUNE,          /* internal: deletes a chunk of events past the retention */
	STORE_WAKE            /* internal: writes nothing; its done() runs on the writer
	                         thread (a checkpoint has caught up: see store_prune_schedule) */
};

/* Whether a call's answer promises its writes are on disk. Claims (which write nothing)
 * and attempt results do not: a power cut may lose a result (not a crash: the OS has
 * it), and its delivery is then simply sent again, which at-least-once allows. A lost
 * sweep or prune is done again later. */
static inline int store_call_durable(enum store_call_kind kind)
{
	return kind != STORE_CLAIM && kind != STORE_COMPLETE && kind != STORE_SWEEP &&
	       kind != STORE_PRUNE && kind != STORE_WAKE;
}

/* Whether a call changes a subscription, so that the writer ends its batch after it:
 * the store's in-memory copy of the subscriptions (what claims and ingests read) is
 * reloaded after a COMMIT, and a claim or ingest in the same transaction would still
 * see the old one (send to a deleted or just-disabled subscription, its old URL, its old
 * secret, or match its old patterns). Operators' changes are rare; cutting costs nothing. */
static inline int store_call_ends_batch(enum store_call_kind kind)
{
	return kind == STORE_SUB_CREATE || kind == STORE_SUB_UPDATE || kind == STORE_SUB_DELETE ||
	       kind == STORE_SUB_ROTATE;
}

struct store_call {
	enum store_call_kind kind;
	/* inputs, borrowed until done() */
	struct store_event *events;   /* STORE_INGEST */
	size_t nevents;
	int64_t id;                   /* row id for SUB_* and DELIVERY_RETRY */
	json_t *fields;               /* SUB_CREATE, SUB_UPDATE, SUB_ROTATE */
	/* outputs, valid from done() on */
	enum store_rc rc;
	json_t *result;   /* new reference the caller owns: INGEST: NULL (the outputs
	                     are in events[]); SUB_*: the subscription
	                     (with "secret" after CREATE/ROTATE); RECOVER:
	                     {"requeued": n}; REPLAY: {"replayed": n,
	                     "next": time|null}; RETRY: the delivery */
	char why[160];    /* for rc != STORE_OK: what went wrong, for the error message */
	/* completion, called on the writer or syncer thread; may free the call */
	void (*done)(struct store_call *call);
	void *arg;
	/* private to the store */
	struct store_call *next;
	int64_t due_ms; /* writer_submit_later: monotonic ms from which it may run */
	void *internal;
};

/* Queues a call for the writer. Returns 0, or -1 when the queue is full (the call is
 * untouched, done() will not be called: answer 503). */
int store_submit(struct store *s, struct store_call *call);

/* Reads. Each returns STORE_OK with *out a new reference, STORE_NOTFOUND, or STORE_ERR.
 * Lists set *out to {"data": [...], "next": cursor|null}. Ids are the external strings. */
struct store_list_query {
	const char *type;          /* events: exact type filter, or NULL */
	int64_t subscription;      /* deliveries: subscription id filter, or 0 */
	const char *event;         /* deliveries: "evt_..." filter, or NULL */
	int status;                /* deliveries: -1 any, 0 pending, 1 delivered, 2 failed */
	int64_t after;             /* cursor: rows strictly older than this; 0 = from newest */
	int limit;                 /* 1..1000 */
};
enum store_rc store_health(struct store *s);

/* What GET /metrics shows. Counters count since the process started. */
struct store_stats {
	int64_t events_published;       /* new events stored (not idempotent replays) */
	int64_t attempts_delivered;     /* attempt results recorded, by outcome */
	int64_t attempts_retry;
	int64_t attempts_failed;        /* the last attempt of a delivery, or a 410 */
	int64_t deliveries_in_flight;   /* leased to the dispatcher */
	int64_t deliveries_pending;     /* state pending, in flight included */
	int64_t subscriptions_enabled;
	int64_t subscriptions_disabled;
	int64_t subscriptions_failing;  /* enabled, and failing since their last success */
	int64_t writer_queue;           /* calls waiting for the writer */
	int64_t write_failures;         /* write batches that failed (disk full, I/O error) */
	struct histogram_counts attempt_duration; /* each attempt sent: its duration */
	struct histogram_counts delivery_latency; /* each delivery done with a 2xx: from
	                                             its event published to that answer */
	struct histogram_counts wal_sync;         /* each fdatasync of the WAL by the syncer */
};
enum store_rc store_stats(struct store *s, struct store_stats *out);
/* Events come as JSON text (*out malloc'ed), not json_t: data is shown as stored, byte
 * for byte, which jansson would re-spell (0.1 as 0.10000000000000001). A page of
 * deliveries comes as text too: built as a tree, its malloc cost more than the query. */
enum store_rc store_event_get(struct store *s, const char *id, char **out);
enum store_rc store_events_list(struct store *s, const struct store_list_query *q, char **out);
enum store_rc store_subscription_get(struct store *s, int64_t id, json_t **out);
/* {"id", "pending" (in flight included), "failed", "oldest_due_at": the earliest
 * next_attempt_at of its pending deliveries, or null}: costs its own backlog. */
enum store_rc store_subscription_stats(struct store *s, int64_t id, json_t **out);
enum store_rc store_subscriptions_list(struct store *s, const struct store_list_query *q,
                                       json_t **out);
enum store_rc store_delivery_get(struct store *s, int64_t id, json_t **out);
enum store_rc store_deliveries_list(struct store *s, const struct store_list_query *q, char **out);

#endif
