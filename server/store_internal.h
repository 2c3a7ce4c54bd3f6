/*
 * store_internal.h - what the store's files (store_sqlite.c, store_read.c, store_subs.c,
 * store_claim.c, store_prune.c) share: struct store and the structs it holds, the
 * writer's statements, and the functions one of them calls in another. Not part of the
 * store's contract, which is store.h.
 */

#ifndef HOOKRELAY_STORE_INTERNAL_H
#define HOOKRELAY_STORE_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>

#include "rate_limit.h"
#include "store.h"

#define READERS_MAX 16          /* idle read connections kept */
#define SECRETS_MAX 11          /* the current secret and at most 10 old ones */
#define CHECKPOINT_PAGES 8000   /* WAL pages (32 MiB) that wake the checkpointer: the
                                   fewer checkpoints, the fewer times a hot index page
                                   is copied to the db */
/* After storage failed: the pause before the next batch, and before a failed completion
 * is applied again. */
#define STORE_RETRY_PAUSE_MS 100

enum delivery_state { STATE_PENDING = 0, STATE_DELIVERED = 1, STATE_FAILED = 2 };

struct sub_secret {
	char *secret;
	int64_t expires_at; /* unix ms; 0 = current */
};

/* What the writer keeps in memory for each subscription that is not deleted. */
struct sub_entry {
	/* What every claim reads of every subscription, idle ones included, first: an idle
	 * one then costs the claim one cache line (with them spread out, a claim beside
	 * 50,000 idle subscriptions missed two or three per subscription). */
	int64_t due_hint_ms;        /* when look is 0: the earliest next_attempt_at of its
	                               pending deliveries that claim found, INT64_MAX for
	                               none */
	uint64_t disabled_in_batch; /* the batch (s->batch_no) whose results disabled it: its
	                               claims and ingests give it nothing before the COMMIT
	                               reloads it */
	int look;                   /* a claim must ask the database for its due deliveries:
	                               something may have made one pending since the last
	                               claim that asked (see store_apply_claim) */
	int enabled;                /* 0: disabled, its deliveries held */
	int releasing;              /* jobs put back unsent whose result is not committed
	                               yet: claims skip it meanwhile, so they keep their place */
	int leased;                 /* leases it holds now (committed claims - applied
	                               completions) */
	int rate_limit;             /* deliveries it may start a second; 0 = no limit */
	struct rate_bucket bucket;  /* what rate_limit has left now (claims take from it) */

	int64_t id;
	int max_in_flight;            /* its requests the sender runs at once; with the
	                                 lead, up to twice as many leases (see
	                                 store_sub_lease_max) */
	int64_t answered_ms;          /* unix ms of its last 2xx result applied; 0 = none */
	uint64_t version;             /* new whenever a reload changes what a job copies (url,
	                                 headers, secrets) or enabled: a job made at another
	                                 version is not sent (current) */
	uint64_t settings_hash;       /* of those, to tell a reload that changed them */
	uint64_t url_version;         /* the version its url came in at: the results of jobs
	                                 made before are an old receiver's, and say nothing
	                                 of this one's health (a 410 there disabled it) */
	int host;                     /* its url's receiver host in s->hosts, or -1 */
	uint64_t claim_no;            /* the claim that set claimed (s->claim_no) */
	int claimed;                  /* jobs that claim gave it so far (not yet in leased) */
	int64_t newest_seq;           /* event seq of its newest delivery stored (a batch rolled
	                                 back may leave it higher than any committed) */
	int64_t failing_since;        /* unix ms of the first failure since a success; 0 = none */
	int64_t health_log_minute;    /* its "failing"/"delivering again" lines: the monotonic
	                                 ms their minute began, how many it has had, */
	int health_lines;             /* and the changes since not logged (a flaky */
	int health_unlogged;          /* receiver flips on every other attempt) */
	uint64_t health_batch;        /* the batch (s->batch_no) batch_failing_since is of */
	int64_t batch_failing_since;  /* failing_since as that batch left it, uncommitted */
	char *url;
	char *headers_json;           /* or NULL */
	struct sub_secret secrets[SECRETS_MAX]; /* newest first */
	int nsecrets;
};

enum {
	ST_IDEM_LOOKUP,
	ST_EVENT_INSERT,
	ST_DELIVERY_INSERT,
	ST_CLAIM,
	ST_NEXT_DUE,
	ST_ENVELOPE,
	ST_DELIVERY_FINISH,
	ST_DELIVERY_RELEASE,
	ST_DELIVERY_ORPHANED,
	ST_SWEEP,
	ST_PRUNE_NEWEST,
	ST_PRUNE_NEXT,
	ST_PRUNE_PENDING,
	ST_PRUNE_ATTEMPTS,
	ST_PRUNE_DELIVERIES,
	ST_PRUNE_EVENT,
	ST_BEGIN,
	ST_COMMIT,
	ST_SAVEPOINT,
	ST_ROLLBACK_TO,
	ST_RELEASE,
	ST_COUNT
};

/* Rows one INSERT of the writer's writes at most (store_rows_insert). One statement for
 * many rows opens SQLite's cursors (a table's and its indexes') once for them all: in
 * alternating runs of batch ingest the writer spent 6.3-6.7 µs an event against 8.8-9.8
 * with a statement a delivery row (and no less with 256 rows a statement). */
#define STORE_ROWS_MAX 64

/* A kind of row the writer inserts many at a time (store_rows_insert). */
struct store_rows {
	const char *head; /* "INSERT OR FAIL INTO t(c1, c2, ...) VALUES " */
	const char *row;  /* "(?, ?, ...)" */
	int params;       /* the ?s in row */
	void (*bind)(sqlite3_stmt *st, int p, int i, void *arg);
};

struct store {
	sqlite3 *wdb;                   /* the write connection: writer thread only */
	sqlite3_stmt *st[ST_COUNT];     /* prepared on wdb */
	int synchronous_full;           /* durable commits fsync */
	int sync_now;                   /* the synchronous level wdb is set to: 0 OFF, 1 durable */
	/* The WAL's size, known from the commit hook (writer thread): */
	int64_t wal_frame_bytes;        /* page size + 24; 0 if unknown (no cutting in steps) */
	int64_t wal_file_bytes;         /* the file's length: it grows with the frames written
	                                   and shrinks only when a restart cuts it */
	int64_t wal_last_frames;        /* frames after the last commit */
	int64_t wal_limit_set;          /* journal_size_limit now, bytes */
	int wal_fd;                     /* the WAL, for the syncer's fdatasync; -1: SQLite syncs */
	atomic_int due_after_sync;      /* a synced batch made work due: wake after the sync */
	int64_t batch_top_seq;          /* writer: the newest event the running batch stored */
	int64_t batch_top_delivery;     /* writer: the newest delivery the running batch made */
	_Atomic int64_t wake_when_synced; /* a claim could not take events up to this one (not
	                                     on disk yet): wake the dispatcher once they are */
	int64_t batch_new_events;       /* writer: events the running batch stored */
	uint64_t batch_no;              /* writer: batches run so far, this one included */
	int64_t *call_disabled;         /* writer: subscriptions the running call disabled */
	size_t ncall_disabled, call_disabled_cap;
	int64_t batch_pending;          /* writer: how the running batch changed the number of
	                                   pending deliveries (counters.pending) */
	_Atomic int64_t committed_seq;  /* the newest event committed */
	_Atomic int64_t synced_seq;     /* the newest event on disk: claims and reads go no
	                                   further */
	_Atomic int64_t committed_delivery; /* the same two for delivery ids: reads show no */
	_Atomic int64_t synced_delivery;    /* delivery a power cut could take back */
	int last_batch_failed;          /* slows the writer down while storage fails */
	int lock_wait_ms;               /* the writer connection's busy timeout now */
	atomic_llong write_failures;    /* batches whose writes failed (not committed, or a
	                                   call failed on storage), for /metrics: a counter,
	                                   as a full disk lets small commits through between
	                                   failures and a "failing now" flag would flicker */
	int64_t disable_after_ms;       /* failing this long disables a subscription; 0 = never */
	size_t claim_cursor;            /* round-robin start among subs for the next claim */
	int claim_busy_subs;            /* subscriptions with work due or in flight at the
	                                   last claim (>= 1): the next one's shares */
	struct writer *writer;
	struct matcher *matcher;        /* enabled subscriptions' patterns */
	struct sub_entry *subs;         /* sorted by id; the writer changes the array (and an
	                                   entry's id, enabled, version) only under subs_lock,
	                                   which the dispatcher takes to read them (current) */
	size_t nsubs, subs_cap;
	size_t subs_skip;      /* entries of the allocation before subs (freed by
	                          removals near the front; subs_cap counts them) */
	uint64_t *quiet;       /* writer: bit k set = subs[k] has look 0, nothing pending and
	                          nothing leased, so a claim passes it by (see store_sub_ask) */
	size_t quiet_words;    /* allocated */
	pthread_mutex_t subs_lock;
	uint64_t last_sub_version; /* the newest sub_entry.version handed out */
	struct claim_host *hosts;  /* writer: every subscription's receiver host */
	size_t nhosts, hosts_cap;
	int32_t *host_slots; /* open addressing over hosts by key, -1 = empty;
	                        host_slots_cap a power of two >= 2 * nhosts */
	size_t host_slots_cap;
	uint64_t claim_no;              /* numbers each application of a claim (claim_host) */
	int64_t *match_ids;             /* matcher_match scratch */
	size_t match_cap;
	/* writer: delivery rows the ingest calls of the running batch have made and not
	   inserted yet (event seq, subscription id and the unix ms it was made, in order;
	   inserted before any other call runs and before the COMMIT), and the statements
	   inserting k of them at once (delivery_rows[k - 1], prepared when first needed) */
	int64_t rows_pending[3 * STORE_ROWS_MAX];
	int nrows_pending;
	sqlite3_stmt *delivery_rows[STORE_ROWS_MAX];
	sqlite3_stmt *attempt_rows[STORE_ROWS_MAX]; /* writer: a completion's attempts */
	pthread_mutex_t hook_lock;      /* guards due_hook/due_arg against a concurrent reset */
	void (*due_hook)(void *);
	void *due_arg;
	struct delivery_store source;   /* for the dispatcher */
	char *path;
	pthread_t checkpointer;         /* copies the WAL into the database off the writer */
	int checkpointer_running;
	pthread_mutex_t ckpt_lock;
	pthread_cond_t ckpt_wake;
	int ckpt_wanted;                /* the WAL passed CHECKPOINT_PAGES */
	atomic_uint ckpt_caught_up;     /* checkpoints that copied every frame of the WAL */
	atomic_int wake_wanted;         /* the writer waits for the next such checkpoint */
	atomic_int wake_queued;         /* wake_call is in the writer's queue */
	struct store_call wake_call;    /* STORE_WAKE, queued by the checkpointer */
	sqlite3 *ckpt_db;               /* the checkpointer's connection */
	int wake_off;                   /* under ckpt_lock: the writer is stopping */
	int ckpt_stop;
	pthread_mutex_t readers_lock;
	sqlite3 *readers[READERS_MAX];  /* idle read-only connections */
	int nreaders;
	struct {              /* health lines held back: writer thread */
		int64_t *ids; /* subscriptions with changes not logged, whose state
		                 is logged once their minute is over */
		size_t n, cap;
	} health_held;
	struct {                        /* deleted subscriptions' pending rows: writer thread */
		int64_t *ids;           /* subscriptions that may have some left, oldest first */
		size_t n, cap;
		struct store_call call; /* the one STORE_SWEEP call, queued or not */
		int queued;             /* call is in the writer's queue */
		int64_t finished;       /* set by the last sweep: this id has none left */
	} sweep;
	struct {                        /* subscriptions whose reload failed: writer thread */
		int64_t *ids;           /* read again after the next COMMIT
		                           (store_reload_changed) */
		size_t n, cap;
	} reload_retry;
	struct {                        /* deliveries in the dispatcher's hands: writer thread */
		int64_t *ids;           /* sorted, no duplicates */
		size_t n, cap;
	} leases;
	struct { /* for /metrics: the writer's, after COMMIT */
		atomic_llong events, delivered, retry, failed;
		atomic_llong in_flight;         /* leases held: claimed minus completed */
		atomic_llong pending;           /* deliveries in state 0: counted at open, then
		                                   moved by each COMMIT (batch_pending), so that
		                                   /metrics does not walk the backlog */
		struct histogram attempt_duration; /* every attempt recorded */
		struct histogram delivery_latency; /* event published -> the 2xx, per delivery */
		struct histogram wal_sync;         /* the syncer's fdatasyncs (syncer thread) */
	} counters;
	int64_t retention_ms;           /* 0: events are kept for ever */
	struct {                        /* events past the retention: writer thread */
		struct store_call call; /* the one STORE_PRUNE call, queued or not */
		int queued;             /* call is in the writer's queue */
		int failing;            /* the last prune's batch failed (said once a streak) */
		int64_t next_at;        /* unix ms: the next prune is queued after this */
		int wal_wait;           /* a catch-up waits for a checkpoint to catch up */
		unsigned wal_gen;       /* ckpt_caught_up when it began to wait */
		struct prune_pass {
			int64_t start;      /* events.seq: every event up to it is gone */
			int64_t pos;        /* the events up to here are gone or kept */
			int64_t first_kept; /* the first kept after start, or 0 */
			int64_t revisit_at; /* unix ms: then go back to start for the kept */
			int64_t kept;       /* events kept since this revisit began */
			int revisiting;     /* this pass began at start */
			int more;           /* the last prune stopped before the retention */
		} pass, next;               /* next: set by a prune, taken after its COMMIT */
	} prune;
};

/* The dispatcher's side of a STORE_CLAIM / STORE_COMPLETE call. */
struct claim_args {
	struct delivery_claim *claim; /* the dispatcher's request, answered in claim_done */
	int64_t now_ms;
	int max;
	struct delivery_job **jobs;   /* filled on the writer thread */
	int njobs;
	int64_t next_due_ms;
	int host_full; /* a host's room cut what a subscription could take */
	int sub_full;  /* a subscription was at its cap, or left due work behind */
};

/* A receiver host of some subscription (its target_host_key), for the claims' per-host
 * limit. Interned at reload and kept (a few bytes per host ever subscribed to). */
struct claim_host {
	char *key;
	int room;           /* leases it may still take in the claim numbered mark */
	uint64_t mark;      /* the claim that set room; any other: room is per_host_max */
	int64_t last_sub;   /* the subscription that last got room here: the host's turn */
	int64_t turn_after; /* last_sub when claim mark began: subscriptions with a higher
	                       id go first in it, then the rest (round robin by id) */
};

struct complete_args {
	struct delivery_result **results;
	int n;
	int ended[3];        /* attempts by the state they left the delivery in (for /metrics) */
	int leases_returned; /* the subscriptions' lease counts already know (see return_leases) */
	int room_freed;      /* returning them gave a full subscription room */
};

/* The functions one store file calls in another, by the file that defines them; each is
 * described where it is defined, with the thread it runs on when that is not the
 * writer's (the store_source_* ones are the dispatcher's). */

/* store_sqlite.c */
int store_exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen);
void store_bind_text_or_null(sqlite3_stmt *st, int i, const char *text);
const char *store_column_text(sqlite3_stmt *st, int i);
int store_step_done(sqlite3_stmt *st);
/* Inserts n rows of one kind, a statement of many rows at a time: `bind` binds row i's
 * values (from arg) to parameters p + 1 ... p + params; the statements of k rows are
 * cached in cache[k - 1] (STORE_ROWS_MAX of them, finalized by store_close). The
 * writer's kinds use OR FAIL: a statement of many rows with the default ABORT opens a
 * statement journal, which copies each page it touches first (one of three rows cost
 * the writer more than three of one row), and a failed one fails its call or its
 * batch, whose rollback takes the rows back. 0, or -1 on a storage error. */
int store_rows_insert(struct store *s, sqlite3_stmt **cache, const struct store_rows *kind, int n,
                      void *arg);
int store_exec_with_id_time(struct store *s, const char *sql, int64_t id, int64_t now);
enum store_rc store_fail_storage(struct store *s, struct store_call *call);
void store_queue_own_call(struct store *s, struct store_call *c, enum store_call_kind kind,
                          void (*done)(struct store_call *), int *queued);

/* store_read.c */
enum store_rc store_load_subscription_json(sqlite3 *db, int64_t id, json_t **out);
enum store_rc store_load_delivery_json(sqlite3 *db, int64_t id, json_t **out);

/* store_subs.c */
struct sub_entry *store_sub_find(struct store *s, int64_t id);

/* How recent a subscription's last 2xx must be for its claims to lease ahead. */
#define STORE_LEAD_WINDOW_MS 1000

/*
 * The leases a subscription may hold at now_ms: its max_in_flight, which the sender
 * keeps to on the wire, and as many again (its lead) while its receiver answers 2xx,
 * one within STORE_LEAD_WINDOW_MS, and it has no rate_limit. The lead waits in the
 * sender and goes the moment one of its requests ends, rather than after the claim
 * that request's result makes room for: a fast receiver sat idle for that round trip
 * through the writer (~0.3-1 ms) at every turn (six alternating drains of 600,000
 * deliveries to three fast receivers: 42,400/s on average without, 45,700 with). A
 * receiver that hangs or fails gets no lead, so that dead ones hold no more slots than
 * they send on (and the sender hands back a subscription's waiting jobs unsent when a
 * request of it gets no 2xx); nor does a rate limit, whose tokens a claim takes.
 */
static inline int store_sub_lease_max(const struct sub_entry *sub, int64_t now_ms)
{
	/* never answered: answered_ms 0 is far behind; a clock stepped back: no lead */
	if (sub->rate_limit == 0 && now_ms >= sub->answered_ms &&
	    now_ms - sub->answered_ms < STORE_LEAD_WINDOW_MS)
		return 2 * sub->max_in_flight;
	return sub->max_in_flight;
}

void store_sub_entry_clear(struct sub_entry *e);
void store_quiet_clear_all(struct store *s);
void store_quiet_clear(struct store *s, const struct sub_entry *sub);
void store_sub_ask(struct store *s, struct sub_entry *sub);
char *store_strdup_or_null(const char *t);
void store_health_log_settled(struct store *s);
int store_mark_disabled(struct store *s, int64_t id);
int store_reload_subscription(struct store *s, int64_t id);
void store_reload_changed(struct store *s, const int64_t *changed, size_t nchanged);
enum store_rc store_apply_sub_create(struct store *s, struct store_call *call, int64_t *changed);
enum store_rc store_apply_sub_update(struct store *s, struct store_call *call, int64_t *changed,
                                     int *made_due);
enum store_rc store_apply_sub_delete(struct store *s, struct store_call *call, int64_t *changed);
enum store_rc store_apply_sweep(struct store *s, struct store_call *call);
void store_sweep_schedule(struct store *s);
int store_sweep_add(struct store *s, int64_t id);
void store_sweep_remove(struct store *s, int64_t id);
enum store_rc store_apply_sub_rotate(struct store *s, struct store_call *call, int64_t *changed);
enum store_rc store_apply_delivery_retry(struct store *s, struct store_call *call, int *made_due);
enum store_rc store_apply_sub_recover(struct store *s, struct store_call *call, int *made_due);
enum store_rc store_apply_sub_replay(struct store *s, struct store_call *call, int *made_due);

/* store_claim.c */
int store_lease_held(const struct store *s, int64_t id);
void store_sql_in_flight(sqlite3_context *ctx, int argc, sqlite3_value **argv);
int store_host_intern(struct store *s, const char *key);
int store_take_wake_wish(struct store *s, int64_t synced);
enum store_rc store_apply_claim(struct store *s, struct store_call *call);
void store_count_results(struct store *s, const struct store_call *c);
void store_account_claimed(struct store *s, struct store_call *c);
int store_health_reread(struct store *s, const struct complete_args *a);
enum store_rc store_apply_complete(struct store *s, struct store_call *call, int64_t *changed,
                                   int *made_due);
void store_free_claim_jobs(struct store *s, struct claim_args *a);
int store_source_current(void *ctx, int64_t subscription_id, uint64_t subscription_version);
int store_source_claim(void *ctx, struct delivery_claim *claim);
int store_source_complete(void *ctx, struct delivery_result **results, int n);

/* store_prune.c */
enum store_rc store_apply_prune(struct store *s, struct store_call *call);
void store_prune_schedule(struct store *s);

#endif
