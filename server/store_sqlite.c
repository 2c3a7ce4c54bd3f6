/*
 * store_sqlite.c - the store on SQLite: migrations, the writer's batch function, the
 * delivery_store the dispatcher claims from, and the read routes' queries.
 *
 * Threads and connections:
 * - `wdb`, its prepared statements, the subscription cache and the matcher belong to the
 *   writer thread (and to store_open/store_close before/after it runs).
 * - Read routes borrow a read-only connection from `readers` (mutex-guarded stack);
 *   one connection is used by one thread at a time.
 * - The syncer thread only calls fdatasync on `wal_fd` (its own descriptor of the WAL),
 *   times it into counters.wal_sync, and calls the due hook.
 * Durability: wdb runs with synchronous=NORMAL, so COMMIT writes the WAL without
 *   syncing it; a batch with a durable call is answered only after the syncer's
 *   fdatasync of the WAL that began after that COMMIT (what synchronous=FULL would have
 *   done in the writer, but the writer runs the next batch meanwhile). If the WAL cannot
 *   be opened for that, wdb falls back to synchronous=FULL for durable batches.
 *   wdb writes through wal_vfs.h, so a COMMIT reaches the WAL in one write per 96 KiB,
 *   not two per page; the other connections use the default VFS.
 *   Claims take only deliveries of events up to synced_seq, which the syncer raises
 *   after each fdatasync: nothing is sent that a power cut could still take back. A
 *   claim that finds newer events asks for a wake after their sync (wake_when_synced).
 *   Reads likewise show events up to synced_seq and deliveries up to synced_delivery:
 *   none is shown that a power cut could take back (SQLite would give its id again).
 * Invariants:
 * - the cache holds every subscription not deleted; the matcher holds the enabled ones;
 *   both change only after the COMMIT that changed the row (reload_subscription; one
 *   that cannot read the row keeps the entry as it was and is tried again after the next
 *   COMMIT), except a subscription's lease count, which a completion lowers when it is
 *   applied (return_leases) so that a claim in the same batch can use the room.
 * - a delivery in the dispatcher's hands (claimed, its result not yet committed) is in
 *   s->leases, in memory only: a claim writes nothing, and a crash or a stop re-sends what
 *   was in flight. An id enters when its claim makes the job (and leaves again if that
 *   claim rolls back) and leaves after the COMMIT of its result, so no claim, sweep or
 *   retry can take a row whose attempt is still running or whose outcome may yet roll
 *   back. SQL sees the set as in_flight(id). The deliveries.leased column is no longer
 *   set (older versions set it; open clears it); it stays in the claim's WHERE because
 *   the partial index deliveries_due_by_sub is defined with it.
 * - a deleted subscription's pending deliveries are failed SWEEP_CHUNK rows per batch
 *   (the delete does the first chunk, STORE_SWEEP calls the rest, one at a time in the
 *   queue), so that deleting a subscription with a million pending rows neither holds
 *   the writer for seconds nor journals them all in memory. sweep.ids lists the deleted
 *   subscriptions that may have some left; it is rebuilt at open.
 * - with a retention, events older than it are deleted PRUNE_CHUNK per STORE_PRUNE call,
 *   oldest first, with their deliveries and attempts; an event with a pending delivery
 *   (in flight, retrying or held) is kept, and looked at again a minute later. The
 *   newest event and the one holding the newest delivery are never deleted, so that no
 *   id is handed out twice (prune_newest). A prune is
 *   queued after a COMMIT once prune.next_at has passed; the dispatcher's claims commit
 *   at least once a second, so an idle relay prunes too.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "json_check.h"
#include "json_text.h"
#include "matcher.h"
#include "hash.h"
#include "histogram.h"
#include "rate_limit.h"
#include "schema.h"
#include "sign.h"
#include "target.h"
#include "util.h"
#include "wal_vfs.h"
#include "writer.h"

#define READERS_MAX 16          /* idle read connections kept */
#define WRITER_BATCH_MAX 4096   /* calls per transaction */
#define SECRETS_MAX 11          /* the current secret and at most 10 old ones */
#define RECOVER_MAX 10000       /* deliveries one recover call re-queues */
#define REPLAY_SCAN 2000        /* events a replay call looks at (~30 ms of writes) */
#define SWEEP_CHUNK 1000        /* pending deliveries of a deleted subscription failed per
                                   batch (~3 ms of writer time) */
#define PRUNE_CHUNK 200         /* events (with their deliveries and attempts) deleted per
                                   batch, at most */
#define PRUNE_ROWS 4000         /* rows deleted per batch, about (a chunk stops past it) */
#define PRUNE_EVERY_MS 1000     /* how often to look for events past the retention */
#define PRUNE_REVISIT_MS 60000  /* how often to look again at the events kept (or once
                                   per retention, if that is shorter) */
#define PRUNE_AHEAD_MS 60000    /* an event stamped more than this after now was stamped
                                   with the clock ahead: kept, and looked past */
#define CHECKPOINT_PAGES 8000   /* WAL pages (32 MiB) that wake the checkpointer: the
                                   fewer checkpoints, the fewer times a hot index page
                                   is copied to the db */
/* Bytes the WAL file is cut back to when it restarts from the top, and the most one
 * restart cuts: SQLite truncates in the first commit after the restart, on the writer
 * thread, and ext4 took ~0.5-1.5 ms a MiB freed here (135 ms for a WAL that a checkpoint
 * racing 1,000 events/s had let grow to 86 MiB: every request waited). A longer file
 * comes down a step at each restart instead (they follow each other within seconds). */
#define WAL_SIZE_LIMIT ((int64_t)64 << 20)
#define WAL_CUT_STEP ((int64_t)8 << 20)
/* ms: while a prune waits, a checkpoint that a reader held back is tried again this often */
#define CHECKPOINT_RETRY_MS 100
#define CHECKPOINT_SHRINK_PAGES 64 /* WAL pages that wake the checkpointer while the file
                                      is longer than WAL_SIZE_LIMIT */

enum delivery_state { STATE_PENDING = 0, STATE_DELIVERED = 1, STATE_FAILED = 2 };
static const char *const state_names[] = {"pending", "delivered", "failed"};

#define STORE_LOCK_WAIT_MS 5000 /* the writer waits this long for the database's write lock */
#define STORE_LOCK_RETRY_MS 250 /* ... and this long after a batch has failed */

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
	                               claim that asked (see apply_claim) */
	int enabled;                /* 0: disabled, its deliveries held */
	int leased;                 /* leases it holds now (committed claims - applied
	                               completions) */
	int rate_limit;             /* deliveries it may start a second; 0 = no limit */
	struct rate_bucket bucket;  /* what rate_limit has left now (claims take from it) */

	int64_t id;
	int max_in_flight;            /* leases this subscription may hold at once */
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
	ST_ATTEMPT_INSERT,
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

static const char *const writer_sql[ST_COUNT] = {
    [ST_IDEM_LOOKUP] = "SELECT e.id, (SELECT count(*) FROM deliveries d WHERE d.event_seq = e.seq)"
                       " FROM events e WHERE e.idempotency_key = ?1",
    [ST_EVENT_INSERT] = "INSERT INTO events(id, type, key, idempotency_key, created_at, envelope)"
                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_DELIVERY_INSERT] =
        "INSERT INTO deliveries(event_seq, subscription_id, state, attempt_count,"
        " next_attempt_at, created_at, updated_at) VALUES (?1, ?2, 0, 0, ?3, ?3, ?3)",
    [ST_CLAIM] = "SELECT id, event_seq, subscription_id, attempt_count FROM deliveries"
                 " WHERE subscription_id = ?3 AND state = 0 AND leased = 0"
                 " AND next_attempt_at <= ?1 AND event_seq <= ?4 AND NOT in_flight(id)"
                 " ORDER BY next_attempt_at LIMIT ?2",
    [ST_NEXT_DUE] = "SELECT min(next_attempt_at) FROM deliveries WHERE subscription_id = ?1"
                    " AND state = 0 AND leased = 0 AND event_seq <= ?2 AND NOT in_flight(id)",
    [ST_ENVELOPE] = "SELECT id, envelope, created_at FROM events WHERE seq = ?1",
    [ST_ATTEMPT_INSERT] = "INSERT INTO attempts(delivery_id, attempt, started_at, duration_ms,"
                          " http_status, error, response_body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [ST_DELIVERY_FINISH] = "UPDATE deliveries SET state = ?2, attempt_count = ?3,"
                           " next_attempt_at = ?4, last_http_status = ?5, last_error = ?6,"
                           " updated_at = ?7 WHERE id = ?1",
    /* a claimed row was due already: it keeps its place (at max_in_flight 1, moved to
     * now, a delivery put back at a stop arrived after every newer event's) */
    [ST_DELIVERY_RELEASE] = "UPDATE deliveries SET next_attempt_at ="
                            " min(coalesce(next_attempt_at, ?2), ?2) WHERE id = ?1",
    [ST_DELIVERY_ORPHANED] = "UPDATE deliveries SET state = 2, next_attempt_at = NULL,"
                             " last_error = 'subscription deleted', updated_at = ?2"
                             " WHERE id = ?1 AND state = 0",
    [ST_SWEEP] = "UPDATE deliveries SET state = 2, next_attempt_at = NULL,"
                 " last_error = 'subscription deleted', updated_at = ?2 WHERE id IN"
                 " (SELECT id FROM deliveries WHERE subscription_id = ?1 AND state = 0"
                 " AND leased = 0 AND NOT in_flight(id) ORDER BY next_attempt_at LIMIT ?3)",
    [ST_PRUNE_NEWEST] = "SELECT (SELECT max(seq) FROM events),"
                        " (SELECT event_seq FROM deliveries ORDER BY id DESC LIMIT 1)",
    [ST_PRUNE_NEXT] = "SELECT seq, created_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    [ST_PRUNE_PENDING] = "SELECT 1 FROM deliveries WHERE event_seq = ?1 AND state = 0 LIMIT 1",
    [ST_PRUNE_ATTEMPTS] = "DELETE FROM attempts WHERE delivery_id IN"
                          " (SELECT id FROM deliveries WHERE event_seq = ?1)",
    [ST_PRUNE_DELIVERIES] = "DELETE FROM deliveries WHERE event_seq = ?1",
    [ST_PRUNE_EVENT] = "DELETE FROM events WHERE seq = ?1",
    /* The batch's own statements, prepared once: they run for every call. */
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_SAVEPOINT] = "SAVEPOINT call",
    [ST_ROLLBACK_TO] = "ROLLBACK TO call",
    [ST_RELEASE] = "RELEASE call",
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
	uint64_t *quiet;       /* writer: bit k set = subs[k] has look 0, nothing pending and
	                          nothing leased, so a claim passes it by (see sub_ask) */
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
		int64_t *ids;           /* read again after the next COMMIT (reload_changed) */
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
	int leases_returned; /* the subscriptions' lease counts already know (see below) */
	int room_freed;      /* returning them gave a full subscription room */
};

/* ---------- small SQLite helpers ---------- */

static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		if (err)
			snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *text)
{
	if (text)
		sqlite3_bind_text(st, i, text, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, i);
}

static const char *column_text(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

/* Runs a prepared statement that returns no rows to be read; resets it. */
static int step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/* The first position in s->leases whose id is >= id. */
static size_t lease_pos(const struct store *s, int64_t id)
{
	size_t lo = 0, hi = s->leases.n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->leases.ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int lease_held(const struct store *s, int64_t id)
{
	size_t i = lease_pos(s, id);
	return i < s->leases.n && s->leases.ids[i] == id;
}

/* Returns 0, or -1 without memory. */
static int lease_add(struct store *s, int64_t id)
{
	size_t i = lease_pos(s, id);

	if (i < s->leases.n && s->leases.ids[i] == id)
		return 0;
	if (s->leases.n == s->leases.cap) {
		size_t cap = s->leases.cap ? s->leases.cap * 2 : 256;
		int64_t *grown = realloc(s->leases.ids, cap * sizeof(*grown));
		if (!grown)
			return -1;
		s->leases.ids = grown;
		s->leases.cap = cap;
	}
	memmove(&s->leases.ids[i + 1], &s->leases.ids[i], (s->leases.n - i) * sizeof(int64_t));
	s->leases.ids[i] = id;
	s->leases.n++;
	return 0;
}

static void lease_drop(struct store *s, int64_t id)
{
	size_t i = lease_pos(s, id);

	if (i < s->leases.n && s->leases.ids[i] == id) {
		memmove(&s->leases.ids[i], &s->leases.ids[i + 1], (s->leases.n - i - 1) * sizeof(int64_t));
		s->leases.n--;
	}
}

/* SQL in_flight(id) on the write connection: 1 if the delivery is leased. */
static void sql_in_flight(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const struct store *s = sqlite3_user_data(ctx);

	(void)argc;
	sqlite3_result_int(ctx, lease_held(s, sqlite3_value_int64(argv[0])));
}

static json_t *json_time_or_null(sqlite3_stmt *st, int i)
{
	char buf[UTIL_TIME_MAX];
	if (sqlite3_column_type(st, i) == SQLITE_NULL)
		return json_null();
	util_format_time(sqlite3_column_int64(st, i), buf);
	return json_string(buf);
}

/* A text column as a JSON string, or null. Text that is not UTF-8 (a key a client sent
 * in a header, kept before that was refused) is shown with '?' for the bad bytes:
 * json_string() would give NULL, and the field would vanish or break the reply. */
static json_t *json_text_or_null(sqlite3_stmt *st, int i)
{
	const char *t = column_text(st, i);
	if (!t)
		return json_null();
	json_t *v = json_string(t);
	if (v)
		return v;
	char *fixed = strdup(t);
	if (!fixed)
		return json_null();
	json_utf8_repair(fixed, strlen(fixed));
	v = json_string(fixed);
	free(fixed);
	return v ? v : json_null();
}

static json_t *json_parsed_or_null(sqlite3_stmt *st, int i)
{
	const char *t = column_text(st, i);
	json_t *v = t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
	return v ? v : json_null();
}

static json_t *json_id(const char *prefix, int64_t n)
{
	char buf[UTIL_ID_MAX];
	util_format_id(prefix, n, buf);
	return json_string(buf);
}

/* ---------- JSON for rows (shared by the writer and the read routes) ---------- */

#define SUB_COLUMNS                                                                                \
	"id, url, event_types, description, headers, enabled, disabled_reason, created_at,"        \
	" updated_at, max_in_flight, failing_since, (SELECT secret FROM subscription_secrets"      \
	" WHERE subscription_id = subscriptions.id ORDER BY id DESC LIMIT 1), rate_limit"

static json_t *subscription_json(sqlite3_stmt *st)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_id("sub_", sqlite3_column_int64(st, 0)));
	json_object_set_new(o, "url", json_text_or_null(st, 1));
	json_object_set_new(o, "event_types", json_parsed_or_null(st, 2));
	json_object_set_new(o, "description", json_text_or_null(st, 3));
	json_object_set_new(o, "headers", json_parsed_or_null(st, 4));
	json_object_set_new(o, "enabled", json_boolean(sqlite3_column_int(st, 5)));
	json_object_set_new(o, "disabled_reason", json_text_or_null(st, 6));
	json_object_set_new(o, "created_at", json_time_or_null(st, 7));
	json_object_set_new(o, "updated_at", json_time_or_null(st, 8));
	json_object_set_new(o, "max_in_flight", json_integer(sqlite3_column_int(st, 9)));
	json_object_set_new(o, "failing_since", json_time_or_null(st, 10));
	json_object_set_new(o, "rate_limit",
	                    sqlite3_column_type(st, 12) == SQLITE_NULL
	                        ? json_null()
	                        : json_integer(sqlite3_column_int(st, 12)));
	/* The signing secret itself is never shown here; an ed25519 key's public half is. */
	const char *secret = column_text(st, 11);
	char public_key[SIGN_SECRET_MAX];
	if (secret && strncmp(secret, "whsk_", 5) == 0 &&
	    sign_public_key(secret, public_key, sizeof(public_key)) == 0) {
		json_object_set_new(o, "signature_algorithm", json_string("ed25519"));
		json_object_set_new(o, "public_key", json_string(public_key));
	} else {
		json_object_set_new(o, "signature_algorithm", json_string("hmac-sha256"));
	}
	return o;
}

#define DELIVERY_COLUMNS                                                                    \
	"d.id, e.id, d.subscription_id, e.type, d.state, d.attempt_count, d.next_attempt_at," \
	" d.last_http_status, d.last_error, d.created_at, d.updated_at"
#define DELIVERY_FROM " FROM deliveries d JOIN events e ON e.seq = d.event_seq"

/* A time column as a JSON string, or null. */
static void text_time_or_null(FILE *f, sqlite3_stmt *st, int i)
{
	char buf[UTIL_TIME_MAX];
	if (sqlite3_column_type(st, i) == SQLITE_NULL) {
		fputs_unlocked("null", f);
		return;
	}
	util_format_time(sqlite3_column_int64(st, i), buf);
	fputc_unlocked('"', f);
	fputs_unlocked(buf, f);
	fputc_unlocked('"', f);
}

static void text_id(FILE *f, const char *prefix, int64_t n)
{
	char buf[UTIL_ID_MAX];
	util_format_id(prefix, n, buf);
	fputc_unlocked('"', f);
	fputs_unlocked(buf, f);
	fputc_unlocked('"', f);
}

/* The one rendering of a delivery row (DELIVERY_COLUMNS), written as text: pages of
 * them are the log's most read answer. */
static void delivery_text(FILE *f, sqlite3_stmt *st)
{
	int state = sqlite3_column_int(st, 4);

	fputc_unlocked('{', f);
	json_text_key(f, "id", 1);
	text_id(f, "dlv_", sqlite3_column_int64(st, 0));
	json_text_key(f, "event_id", 0);
	json_text_string_or_null(f, column_text(st, 1));
	json_text_key(f, "subscription_id", 0);
	text_id(f, "sub_", sqlite3_column_int64(st, 2));
	json_text_key(f, "event_type", 0);
	json_text_string_or_null(f, column_text(st, 3));
	json_text_key(f, "status", 0);
	json_text_string_or_null(f, state_names[state >= 0 && state <= 2 ? state : 0]);
	json_text_key(f, "attempt_count", 0);
	json_text_int(f, sqlite3_column_int(st, 5));
	json_text_key(f, "next_attempt_at", 0);
	if (state == STATE_PENDING)
		text_time_or_null(f, st, 6);
	else
		fputs_unlocked("null", f);
	json_text_key(f, "last_http_status", 0);
	if (sqlite3_column_type(st, 7) == SQLITE_NULL)
		fputs_unlocked("null", f);
	else
		json_text_int(f, sqlite3_column_int(st, 7));
	json_text_key(f, "last_error", 0);
	json_text_string_or_null(f, column_text(st, 8));
	json_text_key(f, "created_at", 0);
	text_time_or_null(f, st, 9);
	json_text_key(f, "updated_at", 0);
	text_time_or_null(f, st, 10);
	fputc_unlocked('}', f);
}

/* A single delivery as json_t (GET of one, a retry's answer): delivery_text parsed. */
static json_t *delivery_json(sqlite3_stmt *st)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	json_t *o = NULL;

	if (f) {
		delivery_text(f, st);
		if (fclose(f) == 0)
			o = json_loadb(text, len, 0, NULL);
		free(text);
	}
	return o; /* NULL: out of memory */
}

#define EVENT_COLUMNS "seq, envelope, idempotency_key"

/* The event object is the envelope as sent, plus its idempotency key. */
static json_t *event_json(sqlite3_stmt *st)
{
	const char *env = sqlite3_column_blob(st, 1);
	size_t len = (size_t)sqlite3_column_bytes(st, 1);
	json_t *o = json_loadb(env, len, JSON_ALLOW_NUL, NULL);
	/* Integers past 64 bits are kept exactly in the envelope we send; jansson can only
	 * show them here as reals. */
	if (!o)
		o = json_loadb(env, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
	if (!json_is_object(o)) { /* never written so; a hand-edited row still gives an object */
		json_decref(o);
		o = json_object();
	}
	json_object_set_new(o, "idempotency_key", json_text_or_null(st, 2));
	return o;
}

/* Writes the event object as JSON text, all but its closing brace: the envelope's own
 * bytes (data exactly as published and sent: numbers keep their spelling, integers past
 * 64 bits included), then idempotency_key. An envelope that is not the object ingest
 * built (never expected) goes through jansson instead. */
static void event_text_open(FILE *f, sqlite3_stmt *st)
{
	const char *env = sqlite3_column_blob(st, 1);
	size_t len = (size_t)sqlite3_column_bytes(st, 1);

	if (env && len > 2 && env[0] == '{' && env[len - 1] == '}') { /* "{}": never ours */
		fwrite_unlocked(env, 1, len - 1, f);
		json_text_key(f, "idempotency_key", 0);
		json_text_string_or_null(f, column_text(st, 2));
	} else {
		json_t *o = event_json(st);
		char *text = json_dumps(o, JSON_COMPACT);
		if (text)
			fwrite_unlocked(text, 1, strlen(text) - 1, f);
		else
			fputs_unlocked("{\"id\":null", f);
		free(text);
		json_decref(o);
	}
}

static void event_text(FILE *f, sqlite3_stmt *st)
{
	event_text_open(f, st);
	fputc_unlocked('}', f);
}

/* Runs a prepared SELECT and builds one object per row with `row`. Returns an array,
 * or NULL on error. Finalizes nothing. */
static json_t *rows_json(sqlite3_stmt *st, json_t *(*row)(sqlite3_stmt *), int limit,
                         int64_t *last_key, int *more)
{
	json_t *arr = json_array();
	int rc, n = 0;

	*more = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (limit > 0 && n == limit) {
			*more = 1;
			break;
		}
		json_array_append_new(arr, row(st));
		if (last_key)
			*last_key = sqlite3_column_int64(st, 0);
		n++;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		json_decref(arr);
		return NULL;
	}
	return arr;
}

/* Runs `sql` (one ?1 = id) on db and builds the row with `row`: STORE_OK with *out,
 * STORE_NOTFOUND, or STORE_ERR. */
static enum store_rc load_one(sqlite3 *db, const char *sql, int64_t id,
                              json_t *(*row)(sqlite3_stmt *), json_t **out)
{
	sqlite3_stmt *st = NULL;
	enum store_rc rc = STORE_ERR;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		*out = row(st);
		rc = *out ? STORE_OK : STORE_ERR; /* NULL: out of memory */
		break;
	case SQLITE_DONE:
		rc = STORE_NOTFOUND;
		break;
	default:
		break;
	}
out:
	sqlite3_finalize(st);
	return rc;
}

/* One subscription row (not deleted) as JSON, on the given connection. */
static enum store_rc load_subscription_json(sqlite3 *db, int64_t id, json_t **out)
{
	return load_one(db, "SELECT " SUB_COLUMNS " FROM subscriptions WHERE id = ?1 AND deleted_at IS NULL",
	                id, subscription_json, out);
}

static json_t *subscription_stats_json(sqlite3_stmt *st)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_id("sub_", sqlite3_column_int64(st, 0)));
	json_object_set_new(o, "pending", json_integer(sqlite3_column_int64(st, 1)));
	json_object_set_new(o, "failed", json_integer(sqlite3_column_int64(st, 2)));
	json_object_set_new(o, "oldest_due_at", json_time_or_null(st, 3));
	return o;
}

static enum store_rc load_delivery_json(sqlite3 *db, int64_t id, json_t **out)
{
	return load_one(db, "SELECT " DELIVERY_COLUMNS DELIVERY_FROM " WHERE d.id = ?1", id,
	                delivery_json, out);
}

/* ---------- the subscription cache (writer thread) ---------- */

static struct sub_entry *sub_find(struct store *s, int64_t id)
{
	size_t lo = 0, hi = s->nsubs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->subs[mid].id == id)
			return &s->subs[mid];
		if (s->subs[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* ---------- receiver hosts, for the claims' per-host limit (writer thread) ---------- */

/* The slot of key in host_slots: where it is, or the empty one where it would go. */
static size_t host_slot(const struct store *s, const char *key)
{
	size_t mask = s->host_slots_cap - 1;
	size_t i = hash_fnv1a(key) & mask;

	while (s->host_slots[i] >= 0 && strcmp(s->hosts[s->host_slots[i]].key, key) != 0)
		i = (i + 1) & mask;
	return i;
}

/* The index of key in s->hosts, or -1. */
static int host_find(const struct store *s, const char *key)
{
	return s->host_slots_cap ? s->host_slots[host_slot(s, key)] : -1;
}

/* The index of key in s->hosts, added if new; -1 if out of memory. */
static int host_intern(struct store *s, const char *key)
{
	int found = host_find(s, key);

	if (found >= 0)
		return found;
	if (2 * (s->nhosts + 1) > s->host_slots_cap) { /* grow the table and place all again */
		size_t cap = s->host_slots_cap ? s->host_slots_cap * 2 : 64;
		int32_t *slots = malloc(cap * sizeof(*slots));
		if (!slots)
			return -1;
		for (size_t i = 0; i < cap; i++)
			slots[i] = -1;
		free(s->host_slots);
		s->host_slots = slots;
		s->host_slots_cap = cap;
		for (size_t h = 0; h < s->nhosts; h++)
			s->host_slots[host_slot(s, s->hosts[h].key)] = (int32_t)h;
	}
	if (s->nhosts == s->hosts_cap) {
		size_t cap = s->hosts_cap ? s->hosts_cap * 2 : 16;
		struct claim_host *grown = realloc(s->hosts, cap * sizeof(*grown));
		if (!grown)
			return -1;
		s->hosts = grown;
		s->hosts_cap = cap;
	}
	char *copy = strdup(key);
	if (!copy)
		return -1;
	s->hosts[s->nhosts] = (struct claim_host){copy, 0, 0, 0, 0};
	s->host_slots[host_slot(s, key)] = (int32_t)s->nhosts;
	return (int)s->nhosts++;
}

/* The host entry limiting sub in the claim being applied (a->claim's hosts told at its
 * start), or NULL if the claim has no host limit or sub's host is unknown. */
static struct claim_host *claim_host_of(struct store *s, const struct claim_args *a,
                                        const struct sub_entry *sub)
{
	if (a->claim->per_host_max <= 0 || sub->host < 0 || (size_t)sub->host >= s->nhosts)
		return NULL;
	struct claim_host *h = &s->hosts[sub->host];
	if (h->mark != s->claim_no) {
		h->mark = s->claim_no;
		h->room = a->claim->per_host_max;
		h->turn_after = h->last_sub;
	}
	return h;
}

static void sub_entry_clear(struct sub_entry *e)
{
	free(e->url);
	free(e->headers_json);
	for (int i = 0; i < e->nsecrets; i++)
		free(e->secrets[i].secret);
	memset(e, 0, sizeof(*e));
}

/* The quiet bits: a claim sets subs[k]'s when it finds it idle with nothing pending and
 * nothing leased; whatever may make one of its deliveries claimable clears it
 * (sub_ask, account_claimed), and any change to the array's order clears them all. A
 * claim then steps over runs of quiet subscriptions 64 at a time. */
static void quiet_clear_all(struct store *s)
{
	if (s->quiet)
		memset(s->quiet, 0, s->quiet_words * sizeof(*s->quiet));
}

static void quiet_clear(struct store *s, const struct sub_entry *sub)
{
	size_t k = (size_t)(sub - s->subs);
	if (k / 64 < s->quiet_words)
		s->quiet[k / 64] &= ~((uint64_t)1 << (k % 64));
}

/* Sizes the quiet bits to the array. Returns 0, or -1 out of memory (claims then walk
 * every subscription). */
static int quiet_fit(struct store *s)
{
	size_t words = (s->nsubs + 63) / 64;
	if (words <= s->quiet_words)
		return 0;
	words = words < 16 ? 16 : words * 2;
	uint64_t *grown = realloc(s->quiet, words * sizeof(*grown));
	if (!grown)
		return -1;
	memset(grown + s->quiet_words, 0, (words - s->quiet_words) * sizeof(*grown));
	s->quiet = grown;
	s->quiet_words = words;
	return 0;
}

/* Makes the next claim ask the database for sub's due deliveries. */
static void sub_ask(struct store *s, struct sub_entry *sub)
{
	sub->look = 1;
	quiet_clear(s, sub);
}

static void sub_remove(struct store *s, int64_t id)
{
	struct sub_entry *e = sub_find(s, id);
	matcher_remove(s->matcher, id);
	if (!e)
		return;
	sub_entry_clear(e);
	quiet_clear_all(s);
	size_t i = (size_t)(e - s->subs);
	memmove(&s->subs[i], &s->subs[i + 1], (s->nsubs - i - 1) * sizeof(*s->subs));
	s->nsubs--;
}

static char *strdup_or_null(const char *t)
{
	return t ? strdup(t) : NULL;
}

/* FNV-1a (64 bits) of what a claimed job copies from its subscription, and enabled. */
static uint64_t hash_more(uint64_t h, const char *text)
{
	for (const unsigned char *c = (const unsigned char *)(text ? text : ""); *c; c++)
		h = (h ^ *c) * 1099511628211ULL;
	return (h ^ (text ? 0xff : 0xfe)) * 1099511628211ULL; /* ends it; NULL differs from "" */
}

static uint64_t sub_settings_hash(const struct sub_entry *e)
{
	char num[32];
	uint64_t h = 14695981039346656037ULL;

	h = hash_more(h, e->url);
	h = hash_more(h, e->headers_json);
	h = hash_more(h, e->enabled ? "on" : "off");
	for (int i = 0; i < e->nsecrets; i++) {
		snprintf(num, sizeof(num), "%lld", (long long)e->secrets[i].expires_at);
		h = hash_more(hash_more(h, e->secrets[i].secret), num);
	}
	return h;
}

/* What the operator's log says about a subscription's health. */
struct sub_health {
	int known; /* 0: not in the cache before (created, or loaded at start) */
	int enabled;
	int64_t failing_since;
};

#define HEALTH_LOG_LINES 4         /* failing/delivering lines a subscription may have */
#define HEALTH_LOG_MINUTE_MS 60000 /* in each minute from its first */

/* One line on stderr when a reload changes whether a subscription is enabled or failing,
 * after the COMMIT that made it. Disabled and enabled are rare and always logged. Failing
 * and delivering again can flip on every other attempt of a flaky receiver (1,757 lines
 * in 7 s from five of them), so e (the entry, whose counts it keeps) gets at most
 * HEALTH_LOG_LINES of them a minute; the next, or the line health_log_settled writes
 * once the minute is over, says how many changes went unlogged. */
static void log_health_change(struct store *s, struct sub_entry *e, int64_t id,
                              const struct sub_health *was, const struct sub_health *now,
                              const char *disabled_reason)
{
	char since[UTIL_TIME_MAX], unlogged[96] = "";

	if (!was->known)
		return;
	int flip = was->enabled && now->enabled && !was->failing_since != !now->failing_since;
	if (flip && e) {
		int64_t t = clock_mono_ms();
		if (!e->health_log_minute || t - e->health_log_minute >= HEALTH_LOG_MINUTE_MS) {
			e->health_log_minute = t;
			e->health_lines = 0;
		}
		if (e->health_lines == HEALTH_LOG_LINES) {
			if (e->health_unlogged++ == 0 &&
			    util_ids_push(&s->health_held.ids, &s->health_held.n,
			                  &s->health_held.cap, id) != 0)
				e->health_unlogged = 0; /* out of memory: its next line will do */
			return;
		}
		if (e->health_unlogged)
			snprintf(unlogged, sizeof(unlogged),
			         " [%d changes between failing and delivering since the last such"
			         " line]",
			         e->health_unlogged);
		e->health_lines++;
		e->health_unlogged = 0;
	}
	if (was->enabled && !now->enabled) {
		fprintf(stderr, "hookrelay: sub_%lld disabled: %s\n", (long long)id,
		        disabled_reason ? disabled_reason : "no reason recorded");
	} else if (!was->enabled && now->enabled) {
		fprintf(stderr, "hookrelay: sub_%lld enabled again\n", (long long)id);
	} else if (now->enabled && !was->failing_since && now->failing_since) {
		util_format_time(now->failing_since, since);
		fprintf(stderr,
		        "hookrelay: sub_%lld failing: an attempt failed at %s; retrying on"
		        " schedule (GET /v1/deliveries?subscription=sub_%lld says why)%s\n",
		        (long long)id, since, (long long)id, unlogged);
	} else if (now->enabled && was->failing_since && !now->failing_since) {
		util_format_time(was->failing_since, since);
		fprintf(stderr, "hookrelay: sub_%lld delivering again (failing since %s)%s\n",
		        (long long)id, since, unlogged);
	}
}

/* After each COMMIT: a subscription whose health lines were held back, its minute over,
 * gets one line with the state it is in now, so that the log never ends on a state it
 * left (a receiver that flapped and then went down for good). */
static void health_log_settled(struct store *s)
{
	int64_t t = clock_mono_ms();
	char since[UTIL_TIME_MAX];

	for (size_t i = 0; i < s->health_held.n;) {
		int64_t id = s->health_held.ids[i];
		struct sub_entry *e = sub_find(s, id);
		if (e && e->health_unlogged && t - e->health_log_minute < HEALTH_LOG_MINUTE_MS) {
			i++;
			continue;
		}
		if (e && e->health_unlogged && e->enabled) {
			util_format_time(e->failing_since, since);
			fprintf(
			    stderr,
			    "hookrelay: sub_%lld %s%s [%d changes between failing and delivering"
			    " in the last minute not logged]\n",
			    (long long)id, e->failing_since ? "failing since " : "delivering",
			    e->failing_since ? since : "", e->health_unlogged);
			e->health_log_minute = t;
			e->health_lines = 1;
		}
		if (e)
			e->health_unlogged = 0;
		s->health_held.ids[i] = s->health_held.ids[--s->health_held.n];
	}
}

/* The index of id in ids[0..n), or n if it is not there. */
static size_t ids_find(const int64_t *ids, size_t n, int64_t id)
{
	size_t i = 0;
	while (i < n && ids[i] != id)
		i++;
	return i;
}

/* Removes id from ids[0..*n) (the first one), keeping the order. Returns 1 if it was there. */
static int ids_remove(int64_t *ids, size_t *n, int64_t id)
{
	size_t i = ids_find(ids, *n, id);
	if (i == *n)
		return 0;
	memmove(&ids[i], &ids[i + 1], (*n - i - 1) * sizeof(*ids));
	(*n)--;
	return 1;
}

/* Room in s->subs for one more entry (under subs_lock). Returns 0 or -1. */
static int subs_reserve(struct store *s)
{
	if (s->nsubs < s->subs_cap)
		return 0;
	size_t cap = s->subs_cap ? s->subs_cap * 2 : 16;
	struct sub_entry *grown = realloc(s->subs, cap * sizeof(*grown));
	if (!grown)
		return -1;
	s->subs = grown;
	s->subs_cap = cap;
	return 0;
}

/* Marks subscription id disabled by the running batch. The cache changes only after the
 * COMMIT; a claim later in this batch must not send to an endpoint that just answered
 * 410, and a reload after the COMMIT that cannot read the row must still disable it
 * (reload_failed_keep). A rolled-back batch has another number; a call rolled back to
 * its savepoint takes its marks back, see call_disabled: only the first call to disable
 * it in the batch marks it, so a later one's rollback cannot take back a disable that
 * stands. Returns 0, or -1 out of memory. */
static int mark_disabled(struct store *s, int64_t id)
{
	struct sub_entry *cached = sub_find(s, id);

	if (cached && cached->disabled_in_batch != s->batch_no) {
		if (util_ids_push(&s->call_disabled, &s->ncall_disabled, &s->call_disabled_cap,
		                  id) != 0)
			return -1;
		cached->disabled_in_batch = s->batch_no;
	}
	return 0;
}

/* When a reload cannot read the row: the entry keeps its settings (url, secrets,
 * patterns) until a retry can, but takes what the batch just committed is known to
 * have done to it (writer thread, right after that COMMIT, so batch_no is still the
 * batch's): deleted (its id is in the sweep list), disabled, failing or healthy again.
 * Kept as it was instead, a subscription disabled by a 410 went on being sent its
 * backlog (each one failed for good), and a success did not clear failing_since. */
static void reload_failed_keep(struct store *s, int64_t id)
{
	pthread_mutex_lock(&s->subs_lock);
	struct sub_entry *e = sub_find(s, id);
	if (e && ids_find(s->sweep.ids, s->sweep.n, id) < s->sweep.n) {
		sub_remove(s, id);
	} else if (e) {
		struct sub_health was = {1, e->enabled, e->failing_since};
		if (e->health_batch == s->batch_no)
			e->failing_since = e->batch_failing_since;
		if (e->enabled && e->disabled_in_batch == s->batch_no) {
			e->enabled = 0; /* its jobs not yet sent are not current any more */
			matcher_remove(s->matcher, id);
		}
		log_health_change(s, e, id, &was,
		                  &(struct sub_health){1, e->enabled, e->failing_since},
		                  "its reason is in the database");
	}
	pthread_mutex_unlock(&s->subs_lock);
}

/* Reads subscription `id` from wdb into the cache and the matcher, or removes it if it
 * is gone. Returns 0; or -1 when it could not be read (a read error, out of memory):
 * the entry then keeps its settings (see reload_failed_keep), and the id waits in
 * s->reload_retry, read again after each COMMIT until it can be (said on stderr once
 * when it fails, once when it is read). Removing the entry before reading, a single
 * failed read dropped a live subscription until a restart: its events got no
 * deliveries, its retries were never claimed, its results in flight ended failed. */
static int reload_subscription(struct store *s, int64_t id)
{
	sqlite3_stmt *st = NULL;
	struct sub_entry fresh;
	json_t *patterns = NULL;
	const char **pats = NULL;
	char *disabled_reason = NULL;
	char why[160] = "out of memory";
	int rc = -1, step, err = SQLITE_OK;

	memset(&fresh, 0, sizeof(fresh));
	struct sub_health was = {0};
	uint64_t old_version = 0, old_hash = 0;
	{
		const struct sub_entry *old = sub_find(s, id);
		if (old) {
			old_version = old->version;
			old_hash = old->settings_hash;
		}
		fresh.leased = old ? old->leased : 0; /* leases outlive a change of settings */
		fresh.health_log_minute = old ? old->health_log_minute : 0;
		fresh.health_lines = old ? old->health_lines : 0;
		fresh.health_unlogged = old ? old->health_unlogged : 0;
		fresh.newest_seq = old ? old->newest_seq : 0;
		fresh.look = 1; /* enabled again, or new settings: ask */
		fresh.bucket =
		    old ? old->bucket : (struct rate_bucket){0}; /* a PATCH is no refill */
		if (old)
			was = (struct sub_health){1, old->enabled, old->failing_since};
	}
	if ((err = sqlite3_prepare_v2(s->wdb,
	                              "SELECT url, headers, enabled, event_types, max_in_flight,"
	                              " coalesce(failing_since, 0), disabled_reason,"
	                              " coalesce(rate_limit, 0) FROM subscriptions"
	                              " WHERE id = ?1 AND deleted_at IS NULL",
	                              -1, &st, NULL)) != SQLITE_OK)
		goto read_failed;
	sqlite3_bind_int64(st, 1, id);
	step = err = sqlite3_step(st);
	if (step == SQLITE_DONE) { /* deleted */
		pthread_mutex_lock(&s->subs_lock);
		sub_remove(s, id);
		pthread_mutex_unlock(&s->subs_lock);
		rc = 0;
		goto out;
	}
	if (step != SQLITE_ROW)
		goto read_failed;
	fresh.id = id;
	fresh.url = strdup_or_null(column_text(st, 0));
	fresh.host = -1;
	if (fresh.url) {
		char key[TARGET_HOST_KEY_MAX];
		target_host_key(fresh.url, key);
		fresh.host = host_intern(s, key); /* -1 (out of memory): no host limit for it */
	}
	fresh.headers_json = strdup_or_null(column_text(st, 1));
	fresh.enabled = sqlite3_column_int(st, 2);
	fresh.max_in_flight = sqlite3_column_int(st, 4);
	fresh.failing_since = sqlite3_column_int64(st, 5);
	fresh.rate_limit = sqlite3_column_int(st, 7);
	disabled_reason = strdup_or_null(column_text(st, 6));
	patterns = json_loads(column_text(st, 3) ? column_text(st, 3) : "[]", 0, NULL);
	if (!json_is_array(patterns))
		snprintf(why, sizeof(why), "its event_types could not be parsed");
	if (!fresh.url || (column_text(st, 1) && !fresh.headers_json) ||
	    (column_text(st, 6) && !disabled_reason) || !json_is_array(patterns))
		goto out;
	sqlite3_finalize(st);
	st = NULL;

	if ((err = sqlite3_prepare_v2(s->wdb,
	                              "SELECT secret, coalesce(expires_at, 0) FROM"
	                              " subscription_secrets WHERE subscription_id = ?1"
	                              " ORDER BY id DESC LIMIT 11",
	                              -1, &st, NULL)) != SQLITE_OK)
		goto read_failed;
	sqlite3_bind_int64(st, 1, id);
	while ((step = err = sqlite3_step(st)) == SQLITE_ROW && fresh.nsecrets < SECRETS_MAX) {
		struct sub_secret *sec = &fresh.secrets[fresh.nsecrets];
		sec->secret = strdup_or_null(column_text(st, 0));
		sec->expires_at = sqlite3_column_int64(st, 1);
		if (!sec->secret)
			goto out;
		fresh.nsecrets++;
	}
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		goto read_failed; /* a failed read must not pass for fewer secrets */

	if (fresh.enabled) {
		size_t n = json_array_size(patterns);
		pats = calloc(n ? n : 1, sizeof(*pats));
		if (!pats)
			goto out;
		for (size_t i = 0; i < n; i++)
			pats[i] = json_string_value(json_array_get(patterns, i));
	}
	/* A reload for its health alone (failing_since) keeps the version: the jobs claimed
	 * beside the results that changed it are as good as before. */
	fresh.settings_hash = sub_settings_hash(&fresh);
	fresh.version =
	    old_version && fresh.settings_hash == old_hash ? old_version : ++s->last_sub_version;
	{
		const struct sub_entry *old = sub_find(s, id); /* (before subs_reserve moves it) */
		fresh.url_version = old && old->url && strcmp(old->url, fresh.url) == 0
		                        ? old->url_version
		                        : fresh.version;
	}
	/* What can fail comes before the matcher changes: room for a new entry, then the
	 * matcher (which keeps the old patterns when it fails). */
	pthread_mutex_lock(&s->subs_lock);
	int room = sub_find(s, id) ? 0 : subs_reserve(s);
	pthread_mutex_unlock(&s->subs_lock);
	if (room != 0)
		goto out;
	if (fresh.enabled) {
		if (matcher_set(s->matcher, id, pats, json_array_size(patterns)) != 0)
			goto out;
	} else {
		matcher_remove(s->matcher, id);
	}
	pthread_mutex_lock(&s->subs_lock);
	struct sub_entry *old = sub_find(s, id);
	if (old) {
		sub_entry_clear(old);
		*old = fresh;
	} else {
		size_t at = s->nsubs;
		while (at > 0 && s->subs[at - 1].id > id)
			at--;
		memmove(&s->subs[at + 1], &s->subs[at], (s->nsubs - at) * sizeof(*s->subs));
		s->subs[at] = fresh;
		s->nsubs++;
	}
	quiet_clear_all(s);
	pthread_mutex_unlock(&s->subs_lock);
	log_health_change(s, sub_find(s, id), id, &was,
	                  &(struct sub_health){1, fresh.enabled, fresh.failing_since},
	                  disabled_reason);
	memset(&fresh, 0, sizeof(fresh));
	rc = 0;
	goto out;
read_failed:
	snprintf(why, sizeof(why), "%s", sqlite3_errstr(err));
out:
	if (rc == 0 && ids_remove(s->reload_retry.ids, &s->reload_retry.n, id))
		fprintf(stderr, "hookrelay: sub_%lld: its settings are read again\n",
		        (long long)id);
	int queued = ids_find(s->reload_retry.ids, s->reload_retry.n, id) < s->reload_retry.n;
	if (rc != 0)
		reload_failed_keep(s, id);
	if (rc != 0 && !queued) { /* (a retry that fails again says nothing more) */
		if (util_ids_push(&s->reload_retry.ids, &s->reload_retry.n, &s->reload_retry.cap,
		                  id) != 0)
			fprintf(stderr,
			        "hookrelay: sub_%lld: reading its settings after a change failed"
			        " (%s), and there is no memory to try again: it keeps the ones"
			        " it had until the next change to it or a restart\n",
			        (long long)id, why);
		else
			fprintf(stderr,
			        "hookrelay: sub_%lld: reading its settings after a change failed"
			        " (%s); it keeps the ones it had, and the read is tried again"
			        " after each write\n",
			        (long long)id, why);
	}
	sub_entry_clear(&fresh);
	free(pats);
	free(disabled_reason);
	json_decref(patterns);
	sqlite3_finalize(st);
	return rc;
}

/* After a COMMIT: the subscriptions it changed into the cache, then those whose reload
 * failed after an earlier COMMIT, each once (the retry list is short, and empty unless
 * reads fail). A changed id already waiting for a retry is read in the second pass. */
static void reload_changed(struct store *s, const int64_t *changed, size_t nchanged)
{
	size_t waiting = s->reload_retry.n; /* those a failure in the first pass adds wait */

	for (size_t i = 0; i < nchanged; i++) {
		if (changed[i] && ids_find(s->reload_retry.ids, waiting, changed[i]) == waiting)
			reload_subscription(s, changed[i]);
	}
	/* backwards: a read that succeeds takes its id (at i) off the list; one that fails
	 * again adds nothing */
	for (size_t i = waiting; i-- > 0;)
		reload_subscription(s, s->reload_retry.ids[i]);
}

/* At open: the newest event is committed, and on disk once the WAL a crashed process
 * left (its last frames perhaps only in the page cache) has been synced. */
static int init_seqs(struct store *s, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (s->wal_fd >= 0 && fdatasync(s->wal_fd) != 0) {
		snprintf(err, errlen, "syncing the WAL: %s", strerror(errno));
		return -1;
	}

	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT coalesce(max(seq), 0), (SELECT coalesce(max(id), 0)"
	                       " FROM deliveries) FROM events",
	                       -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		atomic_store(&s->committed_seq, sqlite3_column_int64(st, 0));
		atomic_store(&s->synced_seq, sqlite3_column_int64(st, 0));
		atomic_store(&s->committed_delivery, sqlite3_column_int64(st, 1));
		atomic_store(&s->synced_delivery, sqlite3_column_int64(st, 1));
		rc = 0;
	} else {
		snprintf(err, errlen, "reading the newest event: %s", sqlite3_errmsg(s->wdb));
	}
	sqlite3_finalize(st);
	return rc;
}

/* At open: the pending deliveries, counted once; each COMMIT moves the count after. */
static int init_pending(struct store *s, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(s->wdb, "SELECT count(*) FROM deliveries WHERE state = 0", -1, &st,
	                       NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		atomic_store(&s->counters.pending, sqlite3_column_int64(st, 0));
		rc = 0;
	} else {
		snprintf(err, errlen, "counting the pending deliveries: %s",
		         sqlite3_errmsg(s->wdb));
	}
	sqlite3_finalize(st);
	return rc;
}

/* Calls fn(s, id) for each id the query returns (at open), stopping at the first error. */
static int for_each_id(struct store *s, const char *sql, int (*fn)(struct store *, int64_t))
{
	sqlite3_stmt *st = NULL;
	int rc = -1, step;

	if (sqlite3_prepare_v2(s->wdb, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		if (fn(s, sqlite3_column_int64(st, 0)) != 0)
			goto out;
	}
	rc = step == SQLITE_DONE ? 0 : -1;
out:
	sqlite3_finalize(st);
	return rc;
}

/* The signing secrets still in force at now_ms, newest first, space-separated. */
static char *sub_secrets_text(const struct sub_entry *e, int64_t now_ms)
{
	size_t len = 0, off = 0;
	char *out;

	for (int i = 0; i < e->nsecrets; i++)
		len += strlen(e->secrets[i].secret) + 1;
	out = malloc(len + 1);
	if (!out)
		return NULL;
	for (int i = 0; i < e->nsecrets; i++) {
		const struct sub_secret *sec = &e->secrets[i];
		if (sec->expires_at != 0 && sec->expires_at <= now_ms)
			continue;
		size_t l = strlen(sec->secret);
		if (off)
			out[off++] = ' ';
		memcpy(out + off, sec->secret, l);
		off += l;
	}
	out[off] = '\0';
	return out;
}

/* ---------- the writer's calls ---------- */

/* Sets call->why from the write connection's last error. */
/* The write connection's last error message, or NULL where it says "not an error": a
 * ROLLBACK resets it so, and so does a step failed outside SQLite's knowledge (as the
 * tests' fault shim fails one). */
static const char *write_error(struct store *s)
{
	const char *msg = sqlite3_errmsg(s->wdb);
	return strcmp(msg, sqlite3_errstr(SQLITE_OK)) == 0 ? NULL : msg;
}

static enum store_rc fail_storage(struct store *s, struct store_call *call)
{
	const char *msg = write_error(s);

	snprintf(call->why, sizeof(call->why), "storage error: %s",
	         msg ? msg : "a statement failed");
	return STORE_ERR;
}

static enum store_rc apply_ingest(struct store *s, struct store_call *call, int *made_due)
{
	int64_t now = clock_now_ms();

	for (size_t i = 0; i < call->nevents; i++) {
		struct store_event *ev = &call->events[i];
		int n;

		if (ev->idempotency_key) {
			sqlite3_stmt *st = s->st[ST_IDEM_LOOKUP];
			sqlite3_bind_text(st, 1, ev->idempotency_key, -1, SQLITE_STATIC);
			int step = sqlite3_step(st);
			if (step == SQLITE_ROW) {
				const char *stored = column_text(st, 0);
				if (!stored)
					step = SQLITE_NOMEM;
				else
					snprintf(ev->id, sizeof(ev->id), "%s", stored);
				ev->deliveries = sqlite3_column_int(st, 1);
				ev->replayed = 1;
			}
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			if (step == SQLITE_ROW)
				continue;
			if (step != SQLITE_DONE)
				goto fail;
		}

		sqlite3_stmt *ins = s->st[ST_EVENT_INSERT];
		sqlite3_bind_text(ins, 1, ev->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 2, ev->type, -1, SQLITE_STATIC);
		bind_text_or_null(ins, 3, ev->key);
		bind_text_or_null(ins, 4, ev->idempotency_key);
		sqlite3_bind_int64(ins, 5, ev->created_at_ms);
		sqlite3_bind_blob(ins, 6, ev->envelope, (int)ev->envelope_len, SQLITE_STATIC);
		if (step_done(ins) != 0)
			goto fail;
		int64_t seq = sqlite3_last_insert_rowid(s->wdb);
		if (seq > s->batch_top_seq)
			s->batch_top_seq = seq;
		s->batch_new_events++;

		n = matcher_match(s->matcher, ev->type, &s->match_ids, &s->match_cap);
		if (n < 0)
			goto fail;
		sqlite3_stmt *dl = s->st[ST_DELIVERY_INSERT];
		int made = 0;
		for (int k = 0; k < n; k++) {
			struct sub_entry *sub = sub_find(s, s->match_ids[k]);
			/* disabled by a result earlier in this batch: the matcher learns after
			 * the COMMIT, and a disabled subscription gets no new deliveries */
			if (sub && sub->disabled_in_batch == s->batch_no)
				continue;
			made++;
			sqlite3_bind_int64(dl, 1, seq);
			sqlite3_bind_int64(dl, 2, s->match_ids[k]);
			sqlite3_bind_int64(dl, 3, now);
			if (step_done(dl) != 0)
				goto fail;
			s->batch_top_delivery = sqlite3_last_insert_rowid(s->wdb);
			/* A subscription at its max_in_flight gets no claim now: the completion
			 * that gives it room wakes the dispatcher. Under a backlog that spares a
			 * claim and a wake-up per event. */
			if (!sub || sub->leased < sub->max_in_flight)
				*made_due = 1;
			if (sub && seq > sub->newest_seq)
				sub->newest_seq = seq;
			if (sub)
				sub_ask(s, sub);
		}
		ev->deliveries = made;
		ev->replayed = 0;
		s->batch_pending += made;
	}
	return STORE_OK;
fail:
	return fail_storage(s, call);
}

/* Binds a JSON value as text (compact) or NULL. */
static void bind_json_or_null(sqlite3_stmt *st, int i, json_t *v)
{
	char *text = (v && !json_is_null(v)) ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	bind_text_or_null(st, i, text);
	free(text);
}

static int insert_secret(struct store *s, int64_t sub_id, const char *secret, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;
	if (sqlite3_prepare_v2(s->wdb,
	                       "INSERT INTO subscription_secrets(subscription_id, secret, created_at)"
	                       " VALUES (?1, ?2, ?3)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, sub_id);
	sqlite3_bind_text(st, 2, secret, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now);
	rc = step_done(st);
out:
	sqlite3_finalize(st);
	return rc;
}

/* Runs one parameterless-but-id statement: "... WHERE subscription_id = ?1" style. */
static int exec_with_id_time(struct store *s, const char *sql, int64_t id, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;
	if (sqlite3_prepare_v2(s->wdb, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_bind_parameter_count(st) >= 2)
		sqlite3_bind_int64(st, 2, now);
	rc = step_done(st);
out:
	sqlite3_finalize(st);
	return rc;
}

static int subscription_exists(struct store *s, int64_t id)
{
	sqlite3_stmt *st = NULL;
	int found = -1;
	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT 1 FROM subscriptions WHERE id = ?1 AND deleted_at IS NULL", -1,
	                       &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	int step = sqlite3_step(st);
	found = step == SQLITE_ROW ? 1 : step == SQLITE_DONE ? 0 : -1;
out:
	sqlite3_finalize(st);
	return found;
}

/* After create and rotate the caller sees an HMAC secret once; an ed25519 private key
 * never (its public half is in the object already). */
static void show_secret(json_t *result, json_t *fields)
{
	const char *secret = json_string_value(json_object_get(fields, "secret"));
	if (secret && strncmp(secret, "whsec_", 6) == 0)
		json_object_set_new(result, "secret", json_string(secret));
}

static enum store_rc apply_sub_create(struct store *s, struct store_call *call, int64_t *changed)
{
	sqlite3_stmt *st = NULL;
	enum store_rc rc = STORE_ERR;
	int64_t now = clock_now_ms(), id;
	json_t *f = call->fields;
	json_t *enabled = json_object_get(f, "enabled");

	if (sqlite3_prepare_v2(s->wdb,
	                       "INSERT INTO subscriptions(url, event_types, description, headers,"
	                       " enabled, created_at, updated_at, max_in_flight, rate_limit)"
	                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, coalesce(?7, 16), ?8)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, json_string_value(json_object_get(f, "url")), -1, SQLITE_STATIC);
	bind_json_or_null(st, 2, json_object_get(f, "event_types"));
	bind_text_or_null(st, 3, json_string_value(json_object_get(f, "description")));
	bind_json_or_null(st, 4, json_object_get(f, "headers"));
	sqlite3_bind_int(st, 5, enabled ? json_is_true(enabled) : 1);
	sqlite3_bind_int64(st, 6, now);
	if (json_is_integer(json_object_get(f, "max_in_flight")))
		sqlite3_bind_int64(st, 7, json_integer_value(json_object_get(f, "max_in_flight")));
	if (json_is_integer(json_object_get(f, "rate_limit")))
		sqlite3_bind_int64(st, 8, json_integer_value(json_object_get(f, "rate_limit")));
	if (step_done(st) != 0)
		goto out;
	id = sqlite3_last_insert_rowid(s->wdb);
	if (insert_secret(s, id, json_string_value(json_object_get(f, "secret")), now) != 0)
		goto out;
	if (load_subscription_json(s->wdb, id, &call->result) != STORE_OK)
		goto out;
	show_secret(call->result, f);
	*changed = id;
	rc = STORE_OK;
out:
	sqlite3_finalize(st);
	return rc == STORE_OK ? rc : fail_storage(s, call);
}

static enum store_rc apply_sub_update(struct store *s, struct store_call *call, int64_t *changed,
                                      int *made_due)
{
	sqlite3_stmt *st = NULL;
	json_t *f = call->fields;
	json_t *v;
	int64_t now = clock_now_ms();
	int found = subscription_exists(s, call->id);

	if (found <= 0)
		return found == 0 ? STORE_NOTFOUND : fail_storage(s, call);
	/* One statement per field keeps each one simple and every value bound. */
	static const struct {
		const char *field;
		const char *sql;
		int is_json; /* 0 text, 1 JSON, 2 integer or null */
	} setters[] = {
	    /* a new url is a new receiver: the old one's failures do not count toward
	     * --disable-after (its first blip disabled the subscription at once) */
	    {"url",
	     "UPDATE subscriptions SET url = ?2, updated_at = ?3, failing_since = CASE"
	     " WHEN url = ?2 THEN failing_since END WHERE id = ?1",
	     0},
	    {"event_types",
	     "UPDATE subscriptions SET event_types = ?2, updated_at = ?3 WHERE id = ?1", 1},
	    {"description",
	     "UPDATE subscriptions SET description = ?2, updated_at = ?3 WHERE id = ?1", 0},
	    {"headers", "UPDATE subscriptions SET headers = ?2, updated_at = ?3 WHERE id = ?1", 1},
	    {"max_in_flight",
	     "UPDATE subscriptions SET max_in_flight = ?2, updated_at = ?3 WHERE id = ?1", 2},
	    {"rate_limit",
	     "UPDATE subscriptions SET rate_limit = ?2, updated_at = ?3 WHERE id = ?1", 2},
	};
	for (size_t i = 0; i < sizeof(setters) / sizeof(setters[0]); i++) {
		v = json_object_get(f, setters[i].field);
		if (!v)
			continue;
		if (sqlite3_prepare_v2(s->wdb, setters[i].sql, -1, &st, NULL) != SQLITE_OK)
			goto fail;
		sqlite3_bind_int64(st, 1, call->id);
		if (setters[i].is_json == 2 && json_is_integer(v))
			sqlite3_bind_int64(st, 2, json_integer_value(v));
		else if (setters[i].is_json == 2)
			sqlite3_bind_null(st, 2);
		else if (setters[i].is_json)
			bind_json_or_null(st, 2, v);
		else
			bind_text_or_null(st, 2, json_string_value(v));
		sqlite3_bind_int64(st, 3, now);
		if (step_done(st) != 0)
			goto fail;
		sqlite3_finalize(st);
		st = NULL;
	}
	if (json_object_get(f, "max_in_flight") || json_object_get(f, "rate_limit"))
		*made_due = 1; /* more room, or a higher rate: its backlog may go out now */
	v = json_object_get(f, "enabled");
	if (v) {
		int on = json_is_true(v);
		if (exec_with_id_time(
		        s,
		        on ? "UPDATE subscriptions SET enabled = 1, disabled_reason = NULL,"
		             " failing_since = NULL, updated_at = ?2 WHERE id = ?1"
		             " AND enabled = 0"
		           : "UPDATE subscriptions SET enabled = 0, disabled_reason ="
		             " coalesce(disabled_reason, 'disabled through the API'),"
		             " updated_at = ?2 WHERE id = ?1 AND enabled = 1",
		        call->id, now) != 0)
			goto fail;
		if (!on && sqlite3_changes(s->wdb) > 0 && mark_disabled(s, call->id) != 0)
			goto fail;
		/* Nothing to move: claims skip a disabled subscription, so its pending rows
		 * wait where they are and go out as soon as it is enabled again. */
		if (on)
			*made_due = 1;
	}
	if (load_subscription_json(s->wdb, call->id, &call->result) != STORE_OK)
		goto fail;
	*changed = call->id;
	return STORE_OK;
fail:
	sqlite3_finalize(st);
	return fail_storage(s, call);
}

/* Fails up to SWEEP_CHUNK pending deliveries of deleted subscription `id` that are not
 * in flight (those fail when their attempt completes). Returns the rows failed, or -1. */
static int sweep_chunk(struct store *s, int64_t id, int64_t now)
{
	sqlite3_stmt *st = s->st[ST_SWEEP];

	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int(st, 3, SWEEP_CHUNK);
	if (step_done(st) != 0)
		return -1;
	int swept = sqlite3_changes(s->wdb);
	s->batch_pending -= swept;
	return swept;
}

static enum store_rc apply_sub_delete(struct store *s, struct store_call *call, int64_t *changed)
{
	int64_t now = clock_now_ms();
	int found = subscription_exists(s, call->id);

	if (found <= 0)
		return found == 0 ? STORE_NOTFOUND : fail_storage(s, call);
	/* Its secrets sign nothing from here on (a retry or replay of a deleted subscription is
	 * refused), so they do not stay in the file and its backups either. The first chunk
	 * of its backlog now, so that a small one is failed by the time we answer; the rest
	 * in STORE_SWEEP calls after the COMMIT (sweep_add). */
	if (exec_with_id_time(
	        s,
	        "UPDATE subscriptions SET deleted_at = ?2, enabled = 0, updated_at = ?2"
	        " WHERE id = ?1",
	        call->id, now) != 0 ||
	    exec_with_id_time(s, "DELETE FROM subscription_secrets WHERE subscription_id = ?1",
	                      call->id, now) != 0 ||
	    sweep_chunk(s, call->id, now) < 0)
		return fail_storage(s, call);
	*changed = call->id;
	return STORE_OK;
}

/* One chunk of the oldest deleted subscription still listed. */
static enum store_rc apply_sweep(struct store *s, struct store_call *call)
{
	int swept;

	s->sweep.finished = 0;
	if (s->sweep.n == 0)
		return STORE_OK;
	swept = sweep_chunk(s, s->sweep.ids[0], clock_now_ms());
	if (swept < 0)
		return fail_storage(s, call);
	if (swept < SWEEP_CHUNK)
		s->sweep.finished = s->sweep.ids[0]; /* dropped from the list after COMMIT */
	return STORE_OK;
}

/* Queues one of the store's own calls (writer thread, or store_open before any call)
 * unless *queued says it is in the queue already. must: internal work is not refused
 * for a full queue. */
static void queue_own_call(struct store *s, struct store_call *c, enum store_call_kind kind,
                           void (*done)(struct store_call *), int *queued)
{
	if (*queued || !s->writer)
		return;
	memset(c, 0, sizeof(*c));
	c->kind = kind;
	c->done = done;
	c->arg = s;
	/* Set first: the writer may run the call and its done() before submit returns. */
	*queued = 1;
	if (writer_submit(s->writer, c, 1) != 0)
		*queued = 0; /* fails only while stopping: the next start does the work */
}

static void sweep_done(struct store_call *call);

/* Queues the sweep call if there is work. */
static void sweep_schedule(struct store *s)
{
	if (s->sweep.n > 0)
		queue_own_call(s, &s->sweep.call, STORE_SWEEP, sweep_done, &s->sweep.queued);
}

/* The sweep call's done(): writer thread, after its batch ended either way. */
static void sweep_done(struct store_call *call)
{
	struct store *s = call->arg;

	s->sweep.queued = 0;
	if (call->rc == STORE_OK) {
		sweep_schedule(s);
		return;
	}
	/* Not again at once, which would spin on a statement that keeps failing: the next
	 * batch that commits queues it (the dispatcher claims at least once a second). */
	fprintf(stderr, "hookrelay: failing a deleted subscription's pending deliveries: %s; "
	                "will try again\n", call->why[0] ? call->why : "storage error");
}

/* Deletes one event past the retention with its deliveries and attempts, unless one of
 * its deliveries is pending or it is one of the two events in `never`. Returns the rows
 * deleted (> 0), 0 if it was kept, -1 on error. */
static int prune_event(struct store *s, int64_t seq, const int64_t never[2])
{
	sqlite3_stmt *pending = s->st[ST_PRUNE_PENDING];
	static const int deletes[] = {ST_PRUNE_ATTEMPTS, ST_PRUNE_DELIVERIES, ST_PRUNE_EVENT};
	int step, rows = 0;

	if (seq == never[0] || seq == never[1])
		return 0;
	sqlite3_bind_int64(pending, 1, seq);
	step = sqlite3_step(pending);
	sqlite3_reset(pending);
	if (step == SQLITE_ROW)
		return 0; /* kept: still to be delivered */
	if (step != SQLITE_DONE)
		return -1;
	for (size_t i = 0; i < sizeof(deletes) / sizeof(deletes[0]); i++) {
		sqlite3_bind_int64(s->st[deletes[i]], 1, seq);
		if (step_done(s->st[deletes[i]]) != 0)
			return -1;
		rows += sqlite3_changes(s->wdb);
	}
	return rows > 0 ? rows : 1;
}

/* The events prune never deletes: the newest, and the one holding the newest delivery.
 * SQLite gives a new row the largest id in its table plus one, so deleting either would
 * hand out an event seq or a dlv_ id a second time (a client holding dlv_N would then
 * read another delivery, and the pass would skip the new events). */
static int prune_newest(struct store *s, int64_t never[2])
{
	sqlite3_stmt *st = s->st[ST_PRUNE_NEWEST];
	int step = sqlite3_step(st);

	never[0] = step == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	never[1] = step == SQLITE_ROW ? sqlite3_column_int64(st, 1) : 0;
	sqlite3_reset(st);
	return step == SQLITE_ROW ? 0 : -1;
}

/* The next events after pass.pos, up to PRUNE_CHUNK of them or PRUNE_ROWS rows deleted,
 * stopping at the first one inside the retention (events are in time order, give or
 * take a clock step). One stamped more than PRUNE_AHEAD_MS after now was published
 * while the clock was ahead (a VM booted before NTP set it): it is kept like one with a
 * delivery pending, and the pass goes on past it. Stopping there, the prune deleted
 * nothing newer until the clock caught up with it (a day ahead, a day). Every
 * PRUNE_REVISIT_MS (plus 1 ms per event it kept last time) the
 * scan goes back to pass.start, so that an event kept while a delivery was pending goes
 * once that delivery has ended; in between, kept events are not looked at again. */
static enum store_rc apply_prune(struct store *s, struct store_call *call)
{
	sqlite3_stmt *next = s->st[ST_PRUNE_NEXT];
	int64_t now = clock_now_ms(), cutoff = now - s->retention_ms;
	int64_t seqs[PRUNE_CHUNK], never[2];
	unsigned char ahead[PRUNE_CHUNK]; /* seqs[i] was stamped with the clock ahead */
	struct prune_pass *p = &s->prune.next;
	int n = 0, done = 0, rows = 0, step;

	*p = s->prune.pass;
	if (!p->more && !p->revisiting && now >= p->revisit_at) {
		p->pos = p->start;
		p->first_kept = 0;
		p->kept = 0;
		p->revisiting = 1;
	}
	p->more = 0;
	if (prune_newest(s, never) != 0)
		return fail_storage(s, call);
	/* Collected first, so that nothing is deleted under the running SELECT. */
	sqlite3_bind_int64(next, 1, p->pos);
	sqlite3_bind_int(next, 2, PRUNE_CHUNK);
	while ((step = sqlite3_step(next)) == SQLITE_ROW) {
		int64_t created = sqlite3_column_int64(next, 1);
		if (created >= cutoff && created <= now + PRUNE_AHEAD_MS)
			break;
		ahead[n] = created >= cutoff;
		seqs[n++] = sqlite3_column_int64(next, 0);
	}
	sqlite3_reset(next);
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		return fail_storage(s, call);
	while (done < n && rows < PRUNE_ROWS) {
		int r = ahead[done] ? 0 : prune_event(s, seqs[done], never);
		if (r < 0)
			return fail_storage(s, call);
		if (r == 0 && !p->first_kept)
			p->first_kept = seqs[done];
		p->kept += r == 0;
		rows += r;
		done++;
	}
	if (done > 0)
		p->pos = seqs[done - 1];
	if (done == PRUNE_CHUNK || done < n)
		p->more = 1;
	else /* caught up with the retention: all up to pos is gone but what was kept */
		p->start = p->first_kept ? p->first_kept - 1 : p->pos;
	if (!p->more && p->revisiting) {
		/* The next revisit in a minute (as often as a shorter retention is long), and
		 * a millisecond later per event kept: a long-disabled subscription holding
		 * millions of old deliveries costs a walk of ~2 µs each, at most ~0.2% of the
		 * writer's time. */
		int64_t every = s->retention_ms < PRUNE_REVISIT_MS ? s->retention_ms : PRUNE_REVISIT_MS;
		p->revisit_at = now + every + p->kept;
		p->revisiting = 0;
	}
	return STORE_OK;
}

static void prune_done(struct store_call *call);

/* After a COMMIT (and at open): queues a prune once it is time. */
static void prune_schedule(struct store *s)
{
	/* A catch-up (prunes back to back, retention first turned on over a long history)
	 * gave the checkpointer no gap in which to catch up, so the WAL never restarted and
	 * grew to several times the database (409 MB beside 64). Past CHECKPOINT_PAGES the
	 * next chunk waits for a checkpoint that copies every frame (the checkpointer then
	 * wakes us with a STORE_WAKE); its own transaction then restarts the WAL. */
	if (s->prune.wal_wait && atomic_load(&s->ckpt_caught_up) == s->prune.wal_gen)
		return;
	if (s->prune.wal_wait) /* (a checkpoint came before the ask: no retries for it) */
		atomic_store(&s->wake_wanted, 0);
	s->prune.wal_wait = 0;
	if (s->retention_ms > 0 && clock_now_ms() >= s->prune.next_at)
		queue_own_call(s, &s->prune.call, STORE_PRUNE, prune_done, &s->prune.queued);
}

/* The prune call's done(): writer thread. Straight on while a chunk came back full. */
static void prune_done(struct store_call *call)
{
	struct store *s = call->arg;

	s->prune.queued = 0;
	/* Once a streak: with the disk full every batch fails, the prune's with the rest
	 * (hookrelay_store_write_failures_total counts them), once a second. */
	if (call->rc != STORE_OK && !s->prune.failing)
		fprintf(stderr,
		        "hookrelay: deleting events past the retention: %s; will try again (said "
		        "once until it succeeds)\n",
		        call->why[0] ? call->why : "storage error");
	s->prune.failing = call->rc != STORE_OK;
	if (call->rc == STORE_OK && s->prune.pass.more) {
		s->prune.next_at = 0;
		if (s->checkpointer_running && s->wal_last_frames >= CHECKPOINT_PAGES) {
			/* the count first: the checkpointer then runs at least once more, until
			 * one checkpoint copies every frame, and only then wakes us */
			s->prune.wal_gen = atomic_load(&s->ckpt_caught_up);
			s->prune.wal_wait = 1;
			pthread_mutex_lock(&s->ckpt_lock);
			atomic_store(&s->wake_wanted, 1);
			pthread_cond_signal(&s->ckpt_wake);
			pthread_mutex_unlock(&s->ckpt_lock);
		}
	} else
		s->prune.next_at = clock_now_ms() + PRUNE_EVERY_MS;
	prune_schedule(s);
}

/* After the COMMIT of a delete: the subscription may have pending rows left. Returns
 * -1 out of memory: its rows stay pending (held) until the next start. */
static int sweep_add(struct store *s, int64_t id)
{
	return util_ids_push(&s->sweep.ids, &s->sweep.n, &s->sweep.cap, id);
}

static void sweep_remove(struct store *s, int64_t id)
{
	ids_remove(s->sweep.ids, &s->sweep.n, id);
}

static enum store_rc apply_sub_rotate(struct store *s, struct store_call *call, int64_t *changed)
{
	int64_t now = clock_now_ms();
	json_t *f = call->fields;
	int64_t grace_ms = json_integer_value(json_object_get(f, "grace_ms"));
	sqlite3_stmt *st = NULL;
	int found = subscription_exists(s, call->id);

	if (found <= 0)
		return found == 0 ? STORE_NOTFOUND : fail_storage(s, call);
	/* A rotation "to" the secret in use (a pasted value) would keep a leaked secret
	 * current with no end, and send its signature twice. */
	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT 1 FROM subscription_secrets WHERE subscription_id = ?1"
	                       " AND secret = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, call->id);
	sqlite3_bind_text(st, 2, json_string_value(json_object_get(f, "secret")), -1,
	                  SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now);
	int step = sqlite3_step(st);
	sqlite3_finalize(st);
	st = NULL;
	if (step == SQLITE_ROW) {
		snprintf(call->why, sizeof(call->why),
		         "that secret is already this subscription's (current or in its grace);"
		         " rotate to a new one");
		return STORE_CONFLICT;
	}
	if (step != SQLITE_DONE)
		goto fail;
	/* The current secret signs until the grace ends, and no older one signs longer: a
	 * rotation with no grace stops every old secret at once (an emergency rotation left
	 * the ones earlier rotations had in grace signing for up to 30 days). */
	if (sqlite3_prepare_v2(
	        s->wdb,
	        "UPDATE subscription_secrets SET expires_at = ?2"
	        " WHERE subscription_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
	        -1, &st, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, call->id);
	sqlite3_bind_int64(st, 2, now + grace_ms);
	if (step_done(st) != 0)
		goto fail;
	if (insert_secret(s, call->id, json_string_value(json_object_get(f, "secret")), now) != 0)
		goto fail;
	/* Keep the current secret and at most 10 old ones still in their grace. */
	if (exec_with_id_time(s,
	                      "DELETE FROM subscription_secrets WHERE subscription_id = ?1 AND"
	                      " ((expires_at IS NOT NULL AND expires_at <= ?2) OR id NOT IN"
	                      " (SELECT id FROM subscription_secrets WHERE subscription_id = ?1"
	                      " ORDER BY id DESC LIMIT 11))",
	                      call->id, now) != 0)
		goto fail;
	if (exec_with_id_time(s, "UPDATE subscriptions SET updated_at = ?2 WHERE id = ?1", call->id,
	                      now) != 0)
		goto fail;
	if (load_subscription_json(s->wdb, call->id, &call->result) != STORE_OK)
		goto fail;
	show_secret(call->result, f);
	sqlite3_finalize(st);
	*changed = call->id;
	return STORE_OK;
fail:
	sqlite3_finalize(st);
	return fail_storage(s, call);
}

static enum store_rc apply_delivery_retry(struct store *s, struct store_call *call, int *made_due)
{
	sqlite3_stmt *st = NULL;
	enum store_rc rc = STORE_ERR;
	int64_t now = clock_now_ms();

	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT subscription_id, state FROM deliveries WHERE id = ?1", -1,
	                       &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, call->id);
	int step = sqlite3_step(st);
	if (step == SQLITE_DONE) {
		rc = STORE_NOTFOUND;
		goto out;
	}
	if (step != SQLITE_ROW)
		goto out;
	int was_pending = sqlite3_column_int(st, 1) == STATE_PENDING;
	if (lease_held(s, call->id)) {
		snprintf(call->why, sizeof(call->why), "the delivery is being attempted right now");
		rc = STORE_CONFLICT;
		goto out;
	}
	struct sub_entry *sub = sub_find(s, sqlite3_column_int64(st, 0));
	if (!sub) {
		snprintf(call->why, sizeof(call->why), "its subscription was deleted");
		rc = STORE_CONFLICT;
		goto out;
	}
	sub_ask(s, sub);
	if (exec_with_id_time(s,
	                      "UPDATE deliveries SET state = 0, next_attempt_at = ?2, updated_at = ?2"
	                      " WHERE id = ?1",
	                      call->id, now) != 0)
		goto out;
	if (load_delivery_json(s->wdb, call->id, &call->result) != STORE_OK)
		goto out;
	if (!was_pending)
		s->batch_pending++;
	*made_due = 1;
	rc = STORE_OK;
out:
	sqlite3_finalize(st);
	return rc == STORE_ERR ? fail_storage(s, call) : rc;
}

/* Re-queues a subscription's failed deliveries created since `since_ms`, at most
 * RECOVER_MAX per call; running it again re-queues nothing already pending. */
static enum store_rc apply_sub_recover(struct store *s, struct store_call *call, int *made_due)
{
	sqlite3_stmt *st = NULL;
	int64_t now = clock_now_ms();
	struct sub_entry *sub = sub_find(s, call->id);
	int requeued;

	if (!sub)
		return subscription_exists(s, call->id) < 0 ? fail_storage(s, call) : STORE_NOTFOUND;
	if (sqlite3_prepare_v2(s->wdb,
	                       "UPDATE deliveries SET state = 0, next_attempt_at = ?3, updated_at = ?4"
	                       " WHERE id IN (SELECT id FROM deliveries WHERE subscription_id = ?1"
	                       " AND state = 2 AND created_at >= ?2 ORDER BY id LIMIT ?5)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, call->id);
	sqlite3_bind_int64(st, 2, json_integer_value(json_object_get(call->fields, "since_ms")));
	sqlite3_bind_int64(st, 3, now); /* held while the subscription is disabled */
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_int(st, 5, RECOVER_MAX);
	if (step_done(st) != 0)
		goto fail;
	requeued = sqlite3_changes(s->wdb);
	s->batch_pending += requeued;
	sub_ask(s, sub);
	sqlite3_finalize(st);
	call->result = json_pack("{s:i}", "requeued", requeued);
	if (requeued > 0)
		*made_due = 1;
	return STORE_OK;
fail:
	sqlite3_finalize(st);
	return fail_storage(s, call);
}

/* The subscription's patterns, read from its row (a disabled subscription is not in the
 * matcher). Returns a new array of borrowed strings (free it, and decref *patterns) with
 * *n set, or NULL on a storage error or out of memory. */
static const char **sub_patterns(struct store *s, int64_t id, json_t **patterns, size_t *n)
{
	sqlite3_stmt *st = NULL;
	const char **pats = NULL;

	*patterns = NULL;
	if (sqlite3_prepare_v2(s->wdb, "SELECT event_types FROM subscriptions WHERE id = ?1", -1,
	                       &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) != SQLITE_ROW || !column_text(st, 0))
		goto out;
	*patterns = json_loads(column_text(st, 0), 0, NULL);
	if (!json_is_array(*patterns))
		goto out;
	*n = json_array_size(*patterns);
	pats = calloc(*n ? *n : 1, sizeof(*pats));
	for (size_t i = 0; pats && i < *n; i++)
		pats[i] = json_string_value(json_array_get(*patterns, i));
out:
	sqlite3_finalize(st);
	return pats;
}

static int patterns_match(const char *const *pats, size_t n, const char *type)
{
	for (size_t i = 0; i < n; i++)
		if (pats[i] && pattern_match(pats[i], type))
			return 1;
	return 0;
}

static int cmp_int64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* One millisecond's matching events of a replay, gathered to go out in store order. */
struct replay_ms {
	int64_t *seqs;
	size_t n, cap;
};

/* Gives each gathered event that has no delivery for the subscription one, due at
 * `now`, in seq order; empties m. Returns the number made, or -1 on a storage error. */
static int replay_ms_flush(struct store *s, struct replay_ms *m, sqlite3_stmt *has,
                           struct sub_entry *sub, int64_t now)
{
	sqlite3_stmt *ins = s->st[ST_DELIVERY_INSERT];
	int made = 0;

	if (m->n == 0)
		return 0; /* (qsort takes no NULL, even for nothing) */
	qsort(m->seqs, m->n, sizeof(*m->seqs), cmp_int64);
	for (size_t i = 0; i < m->n; i++) {
		int64_t seq = m->seqs[i];
		sqlite3_bind_int64(has, 1, seq);
		int found = sqlite3_step(has);
		sqlite3_reset(has);
		if (found == SQLITE_ROW)
			continue;
		if (found != SQLITE_DONE)
			return -1;
		sqlite3_bind_int64(ins, 1, seq);
		sqlite3_bind_int64(ins, 2, sub->id);
		sqlite3_bind_int64(ins, 3, now); /* held while the subscription is disabled */
		if (step_done(ins) != 0)
			return -1;
		s->batch_top_delivery = sqlite3_last_insert_rowid(s->wdb);
		made++;
		if (seq > sub->newest_seq)
			sub->newest_seq = seq;
		sub_ask(s, sub);
	}
	m->n = 0;
	return made;
}

/* Gives the subscription a delivery, pending and due now, of each stored event of
 * [since_ms, until_ms) that its patterns match and that has none for it yet (published
 * before it existed, while it was disabled, or before its patterns took the type).
 * Event ids begin with their millisecond, so the walk is a range of the id index; within
 * a millisecond (a batch shares one) ids are random, so each millisecond's events are
 * sorted back into store order: deliveries are made, and go out, in publish order. One
 * call looks at REPLAY_SCAN events and on to the end of that millisecond; "next" is then
 * the since to send for the rest, else null. Running it again makes no second delivery
 * of an event. */
static enum store_rc apply_sub_replay(struct store *s, struct store_call *call, int *made_due)
{
	sqlite3_stmt *scan = NULL, *has = NULL;
	json_t *patterns = NULL, *until = json_object_get(call->fields, "until_ms");
	const char **pats = NULL;
	size_t npats = 0;
	int64_t now = clock_now_ms(), next_ms = -1, cur_ms = -1;
	char lo[UTIL_ID_MAX], hi[UTIL_ID_MAX];
	struct replay_ms ms = {0};
	int seen = 0, made = 0, step, n;
	struct sub_entry *sub = sub_find(s, call->id);
	enum store_rc rc = STORE_ERR;

	if (!sub)
		return subscription_exists(s, call->id) < 0 ? fail_storage(s, call)
		                                            : STORE_NOTFOUND;
	pats = sub_patterns(s, call->id, &patterns, &npats);
	if (!pats) {
		snprintf(call->why, sizeof(call->why),
		         "reading the subscription's patterns failed");
		goto out;
	}
	util_event_id_floor(json_integer_value(json_object_get(call->fields, "since_ms")), lo);
	if (until)
		util_event_id_floor(json_integer_value(until), hi);
	else
		snprintf(hi, sizeof(hi), "evt_~"); /* above every id: '~' sorts after base32 */
	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT seq, type, created_at FROM events"
	                       " WHERE id >= ?1 AND id < ?2 ORDER BY id",
	                       -1, &scan, NULL) != SQLITE_OK ||
	    /* the event's few deliveries, not the subscription's many: `+` keeps SQLite
	     * (without statistics) off deliveries_by_sub */
	    sqlite3_prepare_v2(
	        s->wdb, "SELECT 1 FROM deliveries WHERE event_seq = ?1 AND +subscription_id = ?2",
	        -1, &has, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_bind_text(scan, 1, lo, -1, SQLITE_STATIC);
	sqlite3_bind_text(scan, 2, hi, -1, SQLITE_STATIC);
	sqlite3_bind_int64(has, 2, call->id);
	while ((step = sqlite3_step(scan)) == SQLITE_ROW) {
		int64_t created = sqlite3_column_int64(scan, 2);
		const char *type = column_text(scan, 1);

		if (created != cur_ms) {
			if ((n = replay_ms_flush(s, &ms, has, sub, now)) < 0)
				goto fail;
			made += n;
			if (seen >= REPLAY_SCAN) {
				next_ms = created;
				break;
			}
			cur_ms = created;
		}
		seen++;
		if (type && patterns_match(pats, npats, type) &&
		    util_ids_push(&ms.seqs, &ms.n, &ms.cap, sqlite3_column_int64(scan, 0)) != 0) {
			snprintf(call->why, sizeof(call->why), "out of memory");
			goto out;
		}
	}
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		goto fail;
	if ((n = replay_ms_flush(s, &ms, has, sub, now)) < 0)
		goto fail;
	made += n;
	s->batch_pending += made;
	if (made > 0)
		*made_due = 1;
	if (next_ms >= 0) {
		char next[UTIL_TIME_MAX];
		util_format_time(next_ms, next);
		call->result = json_pack("{s:i,s:s}", "replayed", made, "next", next);
	} else {
		call->result = json_pack("{s:i,s:n}", "replayed", made, "next");
	}
	if (call->result)
		rc = STORE_OK;
	else
		snprintf(call->why, sizeof(call->why), "out of memory");
	goto out;
fail:
	rc = fail_storage(s, call);
out:
	sqlite3_finalize(scan);
	sqlite3_finalize(has);
	free(ms.seqs);
	free(pats);
	json_decref(patterns);
	return rc;
}

/* Copies one claimed row into a job: the subscription from the cache, the envelope. */
static struct delivery_job *claim_job(struct store *s, sqlite3_stmt *row, const struct sub_entry *sub,
                                      int64_t now_ms)
{
	sqlite3_stmt *env = s->st[ST_ENVELOPE];
	struct delivery_job *job = calloc(1, sizeof(*job));

	if (!job)
		return NULL;
	job->delivery_id = sqlite3_column_int64(row, 0);
	job->subscription_id = sqlite3_column_int64(row, 2);
	job->attempt = sqlite3_column_int(row, 3) + 1;
	job->url = strdup(sub->url);
	job->headers_json = strdup_or_null(sub->headers_json);
	job->secrets = sub_secrets_text(sub, now_ms);
	job->subscription_version = sub->version;
	sqlite3_bind_int64(env, 1, sqlite3_column_int64(row, 1));
	int step = sqlite3_step(env);
	if (step == SQLITE_ROW) {
		int len = sqlite3_column_bytes(env, 1);
		job->event_id = strdup_or_null(column_text(env, 0));
		job->published_at_ms = sqlite3_column_int64(env, 2);
		job->body = malloc((size_t)len + 1);
		if (job->body) {
			memcpy(job->body, sqlite3_column_blob(env, 1), (size_t)len);
			job->body[len] = '\0';
			job->body_len = (size_t)len;
		}
	}
	sqlite3_reset(env);
	/* A failed read, or a part that memory ran out for, fails the claim (retried), not
	 * an attempt: sent without its body, a job was signed over "" and a 2xx marked it
	 * delivered. */
	if ((step != SQLITE_ROW && step != SQLITE_DONE) || !job->url || !job->secrets ||
	    (sub->headers_json && !job->headers_json) ||
	    (step == SQLITE_ROW && (!job->event_id || !job->body))) {
		delivery_job_free(job);
		return NULL;
	}
	/* Its event pruned (no row): no event id, and the sender fails the attempt with a
	 * clear error. */
	return job;
}

/*
 * A claim that runs while events are written but not yet on disk cannot send their
 * deliveries, and when their subscriptions looked full at ingest nothing else wakes the
 * dispatcher once they are synced: without this it found them only on its one-second
 * timer. The claim asks for a wake (wish_wake_when_synced); whoever raises synced_seq
 * past it takes the wish and wakes (take_wake_wish). The claim stores its wish before it
 * reads synced_seq again, and a sync stores synced_seq before it looks for a wish (all
 * seq_cst): either the claim sees that sync, or the sync sees the wish. A wish left over
 * only costs one more claim.
 */
static int64_t wish_wake_when_synced(struct store *s, int64_t written)
{
	int64_t cur = atomic_load(&s->wake_when_synced);

	while (cur < written && !atomic_compare_exchange_weak(&s->wake_when_synced, &cur, written))
		;
	return atomic_load(&s->synced_seq);
}

/* 1 if a wish waited for events up to `synced` (now on disk); it is taken. */
static int take_wake_wish(struct store *s, int64_t synced)
{
	int64_t w = atomic_load(&s->wake_when_synced);

	while (w != 0 && w <= synced) {
		if (atomic_compare_exchange_weak(&s->wake_when_synced, &w, 0))
			return 1;
	}
	return 0;
}

static void call_due_hook(struct store *s);

/* After the whole batch rolled back: what a claim in it learned of due deliveries (and
 * the jobs it took and gave back) is no longer known to be true. */
static void subs_look_all(struct store *s)
{
	for (size_t k = 0; k < s->nsubs; k++)
		s->subs[k].look = 1;
	quiet_clear_all(s);
}

/* A claim of a batch that rolled back may have wished for events that never were: no
 * sync would pass that wish, and smaller ones would be absorbed by it. */
static void forget_rolled_back_wish(struct store *s)
{
	int64_t committed = atomic_load(&s->committed_seq);
	int64_t w = atomic_load(&s->wake_when_synced);

	while (w > committed && !atomic_compare_exchange_weak(&s->wake_when_synced, &w, committed))
		;
	if (take_wake_wish(s, atomic_load(&s->synced_seq)))
		call_due_hook(s);
}

/* The slots kept back from subscriptions with requests in flight (or failing), of a
 * cap of `max`: an eighth, at least one from a cap of 4 up (see apply_claim). */
static int claim_reserve(int max)
{
	return max < 4 ? 0 : max / 8 > 1 ? max / 8 : 1;
}

/* How many of `free` slots a subscription may take when `reserve` of them are kept:
 * those above it, or, for a fresh one (nothing in flight, not failing), one more. */
static int claim_limit(int free, int reserve, int fresh)
{
	if (free - reserve > 0)
		return free - reserve;
	return fresh && free > 0 ? 1 : 0;
}

/*
 * Leases due jobs, subscription by subscription, round-robin from where the last claim
 * stopped, each subscription up to its max_in_flight and what its rate_limit has left:
 * one slow or dead receiver cannot take every slot. next_due is the earliest time one of
 * the subscriptions with room has a job due (and, if it is rate limited, a token).
 * A claim whose batch fails keeps the tokens it took: the limit errs on the slow side.
 */
static enum store_rc apply_claim(struct store *s, struct store_call *call)
{
	struct claim_args *a = call->internal;
	sqlite3_stmt *st = s->st[ST_CLAIM];
	sqlite3_stmt *nd = s->st[ST_NEXT_DUE];
	size_t nsubs = s->nsubs;
	/* Only what is on disk goes out: a receiver must never see an event that a power
	 * cut could still take back (its publisher, with no 202, would publish it again). */
	int64_t synced = atomic_load(&s->synced_seq);
	int64_t written = atomic_load(&s->committed_seq);
	int64_t missed = 0;

	if (s->batch_top_seq > written)
		written = s->batch_top_seq; /* this batch's own, not committed yet */
	/* Deliveries this claim cannot take yet, of subscriptions it could give them to (a
	 * subscription at its max_in_flight gets its wake from a completion instead; one at
	 * its share, from any request's end: see host_full below). */
	for (size_t k = 0; k < nsubs && written > synced; k++) {
		const struct sub_entry *sub = &s->subs[k];
		int64_t newest = sub->newest_seq < written ? sub->newest_seq : written;
		if (sub->enabled && sub->disabled_in_batch != s->batch_no &&
		    sub->leased < sub->max_in_flight && newest > missed)
			missed = newest;
	}
	if (missed > synced)
		synced = wish_wake_when_synced(s, missed);
	a->next_due_ms = INT64_MAX;
	a->host_full = 0;
	a->sub_full = 0;
	size_t filled_at = SIZE_MAX; /* k of the subscription whose jobs filled the claim */
	a->jobs = calloc((size_t)a->max, sizeof(*a->jobs));
	if (!a->jobs)
		return STORE_ERR;
	/* What the hosts with requests already hold (the rest start with per_host_max). */
	s->claim_no++;
	for (int i = 0; a->claim->per_host_max > 0 && i < a->claim->nhosts; i++) {
		int h = host_find(s, a->claim->hosts[i].key);
		if (h >= 0) {
			s->hosts[h].mark = s->claim_no;
			s->hosts[h].room = a->claim->hosts[i].room;
			s->hosts[h].turn_after = s->hosts[h].last_sub;
		}
	}
	/* While many subscriptions have work due, each is held to its share of the
	 * dispatcher's max_in_flight, so that each keeps about that many requests going to
	 * its receiver. Taking its whole max_in_flight at its turn instead, a subscription's
	 * requests came in waves (0, then 16, then 0 as the next ones had their turn), each
	 * wave needing new connections: 50 backlogged receivers got 9,837 connections for
	 * 10,000 deliveries (each a TLS handshake over https). The busy count is the last
	 * claim's, as this one's is known only at its end. A share some cannot use (a
	 * smaller max_in_flight, a rate limit, a full host) is not lost: what the claim has
	 * left after the first two passes goes, in a third, to those the share held back. */
	const int reserve = claim_reserve(a->claim->in_flight_max);
	const int host_reserve = claim_reserve(a->claim->per_host_max);
	/* shares of what busy subscriptions may use: the reserve is not theirs (shares of
	 * all 256 left the last in the round one request each, from the reserve) */
	int share = INT_MAX;
	int busy = 0, held = 0;
	if (a->claim->in_flight_max > 0 && s->claim_busy_subs > 0)
		share = (a->claim->in_flight_max - reserve + s->claim_busy_subs - 1) /
		        s->claim_busy_subs;
	/* Two passes: a subscription whose host it is not the turn of (its id is not above
	 * the host's last served) waits for the second, so that subscriptions sharing a full
	 * host take turns at its room. Each subscription is looked at in one of them only. */
	const uint64_t *quiet = quiet_fit(s) == 0 ? s->quiet : NULL;
	for (int pass = 0; pass < 3; pass++)
	for (size_t k = 0; k < nsubs; k++) {
		if (pass == 2 && (held == 0 || a->njobs == a->max))
			break;
		size_t at = (s->claim_cursor + k) % nsubs;
		if (quiet && (quiet[at / 64] >> (at % 64) & 1)) {
			/* Quiet: nothing to ask, nothing to count. Walked one by one (a cache
			 * line each), 10,000 idle ones cost `make bench` row 4e's writer 22-29
			 * µs a delivery, against 18-20 stepped over. */
			if (at % 64 == 0 && quiet[at / 64] == UINT64_MAX && at + 64 <= nsubs &&
			    k + 64 <= nsubs)
				k += 63;
			continue;
		}
		struct sub_entry *sub = &s->subs[at];
		if (!sub->look && sub->due_hint_ms > a->now_ms) {
			/* Nothing due: an earlier claim asked, and nothing has made a delivery
			 * of it pending since. Asking every subscription (two queries each) cost
			 * 10,000 idle ones ~1.2 ms of writer time per delivery for the others. */
			if (pass == 0 && sub->enabled && sub->disabled_in_batch != s->batch_no) {
				int64_t due = sub->due_hint_ms;
				if (due <
				    a->next_due_ms) { /* none due (INT64_MAX) needs no token */
					int64_t token = rate_limit_next_ms(
					    &sub->bucket, sub->rate_limit, a->now_ms);
					if (due < token)
						due = token;
					if (due < a->next_due_ms)
						a->next_due_ms = due;
				}
				busy += sub->leased > 0;
				if (quiet && sub->due_hint_ms == INT64_MAX && sub->leased == 0)
					s->quiet[at / 64] |= (uint64_t)1 << (at % 64);
			}
			continue;
		}
		struct claim_host *host = claim_host_of(s, a, sub);
		if (pass < 2 && (host && host->turn_after >= sub->id) != pass)
			continue;
		if (sub->claim_no != s->claim_no) {
			sub->claim_no = s->claim_no;
			sub->claimed = 0;
		}
		int cap = pass < 2 && share < sub->max_in_flight ? share : sub->max_in_flight;
		int room = cap - sub->leased - sub->claimed;
		int want = room < a->max - a->njobs ? room : a->max - a->njobs;
		int step, before = a->njobs, more_due = 0;

		if (!sub->enabled || sub->disabled_in_batch == s->batch_no)
			continue; /* disabled: held */
		if (room <= 0) {
			a->sub_full = 1;
			if (pass < 2) {
				busy += sub->leased > 0;
				held += cap < sub->max_in_flight;
			}
			continue; /* full: its completions wake the dispatcher */
		}
		/* The last of the slots and of a host's room are kept for subscriptions with
		 * nothing in flight that are not failing: 16 dead receivers at max_in_flight
		 * 16 held all 256 slots (two held a host's 32), and each event of a healthy
		 * subscription waited for their timeouts, ~15 s. Such a one takes one there. */
		int fresh = sub->leased + sub->claimed == 0 && sub->failing_since == 0;
		int limit = claim_limit(a->max - a->njobs, reserve, fresh);
		int reserve_cut = want > limit;
		if (reserve_cut)
			want = limit;
		int host_cut = 0;
		if (host) {
			limit = claim_limit(host->room, host_reserve, fresh);
			host_cut = want > limit;
			if (host_cut)
				want = limit;
		}
		want = rate_limit_allow(&sub->bucket, sub->rate_limit, a->now_ms, want);
		if (want > 0) {
			sqlite3_bind_int64(st, 1, a->now_ms);
			sqlite3_bind_int(st, 2, want);
			sqlite3_bind_int64(st, 3, sub->id);
			sqlite3_bind_int64(st, 4, synced);
			while ((step = sqlite3_step(st)) == SQLITE_ROW) {
				struct delivery_job *job = claim_job(s, st, sub, a->now_ms);
				if (!job || a->njobs == a->max || lease_add(s, job->delivery_id) != 0) {
					delivery_job_free(job);
					step = SQLITE_NOMEM;
					break;
				}
				a->jobs[a->njobs++] = job;
			}
			sqlite3_reset(st);
			sub->claimed += a->njobs - before;
			if (sub->leased + sub->claimed >= sub->max_in_flight)
				for (int j = before; j < a->njobs; j++)
					a->jobs[j]->fills_subscription = 1;
			rate_limit_take(&sub->bucket, sub->rate_limit, a->njobs - before);
			if (host && a->njobs > before) {
				host->room -= a->njobs - before;
				host->last_sub = sub->id;
			}
			if (step != SQLITE_DONE)
				return STORE_ERR;
			/* full, or full up to the reserve: the next claim starts after it (else,
			 * the cursor still, each freed slot went to the first in the round) */
			if (a->max - a->njobs <= reserve && filled_at == SIZE_MAX)
				filled_at = k;
		}
		if (pass == 2)
			continue; /* its next due and count come from its first look */
		sqlite3_bind_int64(nd, 1, sub->id);
		sqlite3_bind_int64(nd, 2, synced);
		/* Until something makes one of its deliveries pending, or that time comes, the
		 * next claims need not ask again: unless some are not on disk yet (beyond
		 * synced, which neither query sees). */
		int nd_step = sqlite3_step(nd);
		sub->look = nd_step != SQLITE_ROW || sub->newest_seq > synced; /* a failed query
		                                                                 learned nothing */
		sub->due_hint_ms = INT64_MAX;
		if (nd_step == SQLITE_ROW && sqlite3_column_type(nd, 0) != SQLITE_NULL) {
			int64_t due = sqlite3_column_int64(nd, 0);
			sub->due_hint_ms = due;
			int64_t token =
			    rate_limit_next_ms(&sub->bucket, sub->rate_limit, a->now_ms);
			if (due < token)
				due = token; /* due, but its rate_limit lets it start only then */
			/* Due now but its host (or what is not kept back) is full: the
			 * dispatcher claims again when a request ends (a next_due would spin). */
			if ((host_cut || reserve_cut) && due <= a->now_ms)
				a->host_full = 1;
			else if (due < a->next_due_ms)
				a->next_due_ms = due;
			more_due = due <= a->now_ms;
			if (more_due)
				a->sub_full = 1;
		}
		sqlite3_reset(nd);
		busy += more_due || a->njobs > before || sub->leased > 0;
		held += more_due && cap < sub->max_in_flight; /* more due than its share took */
	}
	s->claim_busy_subs = busy > 0 ? busy : 1;
	/* One the share held back is woken by no completion of its own (those wake only a
	 * subscription at its max_in_flight), and a next due would spin: the dispatcher
	 * claims again when any request ends, as for a full host. Without this a draining
	 * backlog stalled for the dispatcher's 1 s reclaim timer. */
	if (held > 0)
		a->host_full = 1;
	/* A full claim: the next one starts after the subscription that filled it. */
	if (filled_at != SIZE_MAX)
		s->claim_cursor = (s->claim_cursor + filled_at + 1) % nsubs;
	return STORE_OK;
}

/* After COMMIT: the attempts a completion recorded, and the leases it ended. */
static void count_results(struct store *s, const struct store_call *c)
{
	const struct complete_args *a = c->internal;

	for (int i = 0; i < a->n; i++) {
		lease_drop(s, a->results[i]->delivery_id);
		/* A retry or a job put back is claimable only now, with its lease gone: a
		 * claim in the same batch did not see it (NOT in_flight) and may have found
		 * nothing due. */
		struct sub_entry *sub = sub_find(s, a->results[i]->subscription_id);
		if (sub)
			sub_ask(s, sub);
	}
	/* The counters before the histograms, and store_stats reads them the other way
	 * round (seq_cst): a scrape never shows a histogram's _count ahead of them. */
	atomic_fetch_add(&s->counters.delivered, a->ended[STATE_DELIVERED]);
	atomic_fetch_add(&s->counters.retry, a->ended[STATE_PENDING]);
	atomic_fetch_add(&s->counters.failed, a->ended[STATE_FAILED]);
	atomic_fetch_sub_explicit(&s->counters.in_flight, a->n, memory_order_relaxed);
	for (int i = 0; i < a->n; i++) {
		const struct delivery_result *r = a->results[i];
		if (r->outcome == DELIVERY_RELEASED)
			continue; /* not sent */
		histogram_observe(&s->counters.attempt_duration, r->duration_us);
		if (r->outcome == DELIVERY_DELIVERED)
			histogram_observe(&s->counters.delivery_latency,
			                  (r->started_at_ms + r->duration_ms - r->published_at_ms) *
			                      1000);
	}
}

/* After COMMIT: the leases a claim took, per subscription. */
static void account_claimed(struct store *s, struct store_call *c)
{
	struct claim_args *a = c->internal;

	for (int i = 0; i < a->njobs; i++) {
		struct sub_entry *sub = sub_find(s, a->jobs[i]->subscription_id);
		if (sub) {
			sub->leased++;
			quiet_clear(s, sub);
		}
	}
	atomic_fetch_add_explicit(&s->counters.in_flight, a->njobs, memory_order_relaxed);
}

/* As soon as a completion is applied, before COMMIT: its requests have ended, so a claim
 * later in the same batch may use the room (that is what lets the dispatcher ask for
 * new jobs right behind its results). Only once per completion: a completion whose batch
 * failed is applied again. Sets *made_due if a full subscription has room again. */
static void return_leases(struct store *s, struct complete_args *a, int *made_due)
{
	if (!a->leases_returned) {
		a->leases_returned = 1;
		for (int i = 0; i < a->n; i++) {
			struct sub_entry *sub = sub_find(s, a->results[i]->subscription_id);
			if (sub)
				sub_ask(s, sub); /* a retry, or a job put back, is pending again */
			if (sub && sub->leased > 0) {
				if (sub->leased >= sub->max_in_flight)
					a->room_freed = 1;
				sub->leased--;
			}
		}
	}
	if (a->room_freed)
		*made_due = 1; /* again on a retried batch: the failed one woke nobody */
}

static int disable_subscription(struct store *s, int64_t id, const char *reason, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (mark_disabled(s, id) != 0)
		return -1;
	if (sqlite3_prepare_v2(s->wdb,
	                       "UPDATE subscriptions SET enabled = 0, disabled_reason = ?2,"
	                       " updated_at = ?3 WHERE id = ?1",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now);
	if (step_done(st) != 0)
		goto out;
	rc = 0;
out:
	sqlite3_finalize(st);
	return rc;
}

/*
 * A subscription's health after one attempt: a success clears failing_since; a failure
 * starts it; failing for longer than --disable-after, or a 410, disables it. Writes only
 * on a change, and asks for a reload when it writes. What is committed is in the cache;
 * what the running batch wrote is in batch_failing_since (health_batch says which
 * batch; health_reread puts it right when a call rolls back). Reading the cache alone,
 * a failure and then a success in one batch left failing_since set, and the next
 * failure, days later, disabled the subscription as failing all that time.
 */
static int track_health(struct store *s, struct sub_entry *sub, const struct delivery_result *r,
                        int64_t now, int64_t *changed)
{
	char reason[160], since_text[UTIL_TIME_MAX];
	int64_t failing =
	    sub->health_batch == s->batch_no ? sub->batch_failing_since : sub->failing_since;

	if (r->outcome == DELIVERY_DELIVERED) {
		if (!failing)
			return 0;
		*changed = sub->id;
		sub->health_batch = s->batch_no;
		sub->batch_failing_since = 0;
		return exec_with_id_time(s, "UPDATE subscriptions SET failing_since = NULL WHERE id = ?1"
		                            " AND ?2 IS NOT NULL", sub->id, now);
	}
	int64_t since = failing ? failing : r->started_at_ms;
	if (!failing) {
		*changed = sub->id;
		sub->health_batch = s->batch_no;
		sub->batch_failing_since = since;
		if (exec_with_id_time(s, "UPDATE subscriptions SET failing_since = ?2 WHERE id = ?1"
		                         " AND failing_since IS NULL", sub->id, since) != 0)
			return -1;
	}
	if (!sub->enabled || sub->disabled_in_batch == s->batch_no)
		return 0; /* disabled, perhaps by an earlier result of this batch */
	if (r->outcome == DELIVERY_GONE) {
		*changed = sub->id;
		return disable_subscription(s, sub->id, "the endpoint answered 410 Gone", now);
	}
	if (s->disable_after_ms > 0 && now - since >= s->disable_after_ms) {
		util_format_time(since, since_text);
		snprintf(reason, sizeof(reason), "every delivery failed since %s (--disable-after %llds)",
		         since_text, (long long)(s->disable_after_ms / 1000));
		*changed = sub->id;
		return disable_subscription(s, sub->id, reason, now);
	}
	return 0;
}

/* After a completion rolled back to its savepoint: what this batch wrote of its
 * subscriptions' health is what the database holds now. */
static int health_reread(struct store *s, const struct complete_args *a)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT coalesce(failing_since, 0) FROM subscriptions WHERE id = ?1",
	                       -1, &st, NULL) != SQLITE_OK)
		return -1;
	for (int i = 0; i < a->n; i++) {
		struct sub_entry *sub = sub_find(s, a->results[i]->subscription_id);
		if (!sub || sub->health_batch != s->batch_no)
			continue;
		sqlite3_bind_int64(st, 1, sub->id);
		int step = sqlite3_step(st);
		if (step != SQLITE_ROW && step != SQLITE_DONE)
			goto out;
		sub->batch_failing_since = step == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
		sqlite3_reset(st);
	}
	rc = 0;
out:
	sqlite3_finalize(st);
	return rc;
}

static const enum delivery_state outcome_state[] = {
	[DELIVERY_DELIVERED] = STATE_DELIVERED, [DELIVERY_RETRY] = STATE_PENDING,
	[DELIVERY_FAILED] = STATE_FAILED,       [DELIVERY_GONE] = STATE_FAILED,
	[DELIVERY_RELEASED] = STATE_PENDING,
};

static enum store_rc apply_complete(struct store *s, struct store_call *call, int64_t *changed,
                                    int *made_due)
{
	struct complete_args *a = call->internal;
	int64_t now = clock_now_ms();

	memset(a->ended, 0, sizeof(a->ended)); /* applied again if a batch failed */
	for (int i = 0; i < a->n; i++) {
		const struct delivery_result *r = a->results[i];
		struct sub_entry *sub = sub_find(s, r->subscription_id);

		if (r->outcome == DELIVERY_RELEASED) {
			/* Unsent. Due again now, or, if its subscription is gone, failed as the
			 * deletion's sweep would have (it skipped it while it was leased). */
			sqlite3_stmt *rel = s->st[sub ? ST_DELIVERY_RELEASE : ST_DELIVERY_ORPHANED];
			sqlite3_bind_int64(rel, 1, r->delivery_id);
			sqlite3_bind_int64(rel, 2, now);
			if (step_done(rel) != 0)
				return fail_storage(s, call);
			if (sub)
				*made_due = 1;
			else if (sqlite3_changes(s->wdb) > 0)
				s->batch_pending--; /* the pending gauge: one fewer */
			continue;
		}

		sqlite3_stmt *at = s->st[ST_ATTEMPT_INSERT];
		sqlite3_bind_int64(at, 1, r->delivery_id);
		sqlite3_bind_int(at, 2, r->attempt);
		sqlite3_bind_int64(at, 3, r->started_at_ms);
		sqlite3_bind_int(at, 4, r->duration_ms);
		sqlite3_bind_int(at, 5, r->http_status);
		bind_text_or_null(at, 6, r->error[0] ? r->error : NULL);
		if (r->response_snippet)
			sqlite3_bind_blob(at, 7, r->response_snippet, (int)r->snippet_len, SQLITE_STATIC);
		else
			sqlite3_bind_null(at, 7);
		if (step_done(at) != 0)
			return fail_storage(s, call);

		enum delivery_state state = outcome_state[r->outcome];
		const char *error = r->error[0] ? r->error : NULL;
		if (state == STATE_PENDING && !sub) {
			state = STATE_FAILED; /* deleted while in flight */
			error = "subscription deleted";
		}
		a->ended[state]++;
		if (state != STATE_PENDING)
			s->batch_pending--;
		sqlite3_stmt *fin = s->st[ST_DELIVERY_FINISH];
		sqlite3_bind_int64(fin, 1, r->delivery_id);
		sqlite3_bind_int(fin, 2, (int)state);
		sqlite3_bind_int(fin, 3, r->attempt);
		if (state == STATE_PENDING)
			sqlite3_bind_int64(fin, 4, r->next_attempt_at_ms);
		else
			sqlite3_bind_null(fin, 4);
		if (r->http_status)
			sqlite3_bind_int(fin, 5, r->http_status);
		else
			sqlite3_bind_null(fin, 5);
		bind_text_or_null(fin, 6, error);
		sqlite3_bind_int64(fin, 7, now);
		if (step_done(fin) != 0)
			return fail_storage(s, call);

		if (sub && r->subscription_version >= sub->url_version &&
		    track_health(s, sub, r, now, &changed[i]) != 0)
			return fail_storage(s, call);
	}
	return_leases(s, a, made_due);
	return STORE_OK;
}

static int set_journal_limit(struct store *s, int64_t bytes, char *err, size_t errlen)
{
	char sql[64];
	snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit=%lld", (long long)bytes);
	if (exec_sql(s->wdb, sql, err, errlen) != 0)
		return -1;
	s->wal_limit_set = bytes;
	return 0;
}

/* Before a batch: the next restart cuts the WAL by WAL_CUT_STEP at most. */
static void set_wal_limit(struct store *s)
{
	if (s->wal_frame_bytes <= 0)
		return;
	int64_t want = s->wal_file_bytes - WAL_CUT_STEP;
	if (want < WAL_SIZE_LIMIT)
		want = WAL_SIZE_LIMIT;
	if (want != s->wal_limit_set)
		set_journal_limit(s, want, NULL, 0); /* failed: tried again next batch */
}

static void set_sync(struct store *s, int durable)
{
	if (s->wal_fd >= 0)
		return; /* NORMAL throughout: the syncer makes durable batches durable */
	if (s->sync_now == durable)
		return;
	exec_sql(s->wdb,
	         durable && s->synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
	         NULL, 0);
	s->sync_now = durable;
}

/* Frees the jobs a claim still holds; with s, also ends their leases (a claim that
 * rolled back): its subscriptions have those deliveries due again, which the claim's
 * own look may have counted as taken. */
static void free_claim_jobs(struct store *s, struct claim_args *a)
{
	for (int i = 0; i < a->njobs; i++) {
		if (s) {
			struct sub_entry *sub = sub_find(s, a->jobs[i]->subscription_id);
			if (sub)
				sub_ask(s, sub);
			lease_drop(s, a->jobs[i]->delivery_id);
		}
		delivery_job_free(a->jobs[i]);
	}
	free(a->jobs);
	a->jobs = NULL;
	a->njobs = 0;
}

/* Wakes the dispatcher (under the lock, so that store_set_due_hook(NULL) returns only
 * once no call into the old target can still be running). */
static void call_due_hook(struct store *s)
{
	pthread_mutex_lock(&s->hook_lock);
	if (s->due_hook)
		s->due_hook(s->due_arg);
	pthread_mutex_unlock(&s->hook_lock);
}

/*
 * The writer's batch: everything in one transaction. Each call but an ingest runs
 * inside its own SAVEPOINT so a failing call leaves the others intact; if COMMIT itself
 * fails, every call fails. The cache and the matcher follow only committed rows. A
 * batch of claims (which write nothing) and attempt results only is not synced: a lost
 * result means one more attempt, which at-least-once allows. Returns 1 if the writer
 * must have the syncer sync before the durable calls are answered (the WAL is written,
 * not yet synced).
 */
/* Keeps SQLite's reason for a failed batch in why (once: the first failure says most),
 * unless its message is no error (the failure was a call's, which has its own why). */
static void batch_reason(struct store *s, const int64_t *changed, char *why, size_t size)
{
	const char *msg = changed ? write_error(s) : "out of memory";

	if (!why[0] && msg)
		snprintf(why, size, "%s", msg);
}

static int store_run_batch(void *ctx, struct store_call **calls, size_t n)
{
	struct store *s = ctx;
	int durable = 0, made_due = 0, committed = 0, writes = 0, storage_failed = 0;
	int64_t *changed = NULL; /* subscriptions to reload after COMMIT */
	char batch_why[160] = ""; /* SQLite's reason the batch failed, kept before a ROLLBACK
	                             turns its message into "not an error" */
	size_t nchanged = 0, changed_cap = 0;

	for (size_t i = 0; i < n; i++) {
		/* Only what we promised the caller must reach the disk before we answer. */
		if (store_call_durable(calls[i]->kind))
			durable = 1;
		if (calls[i]->kind != STORE_CLAIM)
			writes = 1;
		if (calls[i]->kind == STORE_COMPLETE)
			changed_cap += (size_t)((struct complete_args *)calls[i]->internal)->n;
		else
			changed_cap++;
	}
	changed = calloc(changed_cap ? changed_cap : 1, sizeof(*changed));
	s->batch_no++;
	s->batch_top_seq = 0;
	s->batch_top_delivery = 0;
	s->batch_new_events = 0;
	s->batch_pending = 0;
	if (s->last_batch_failed)
		usleep(100 * 1000); /* storage was failing: do not spin */
	/* The lock wait is for a passing holder. Once a batch has failed (another process
	 * holds the lock, say), each batch queued behind it waits only briefly: else the
	 * n-th queued write got its 503 after n times the wait, and a stop took as long. */
	int lock_wait = s->last_batch_failed ? STORE_LOCK_RETRY_MS : STORE_LOCK_WAIT_MS;
	if (lock_wait != s->lock_wait_ms) {
		sqlite3_busy_timeout(s->wdb, lock_wait);
		s->lock_wait_ms = lock_wait;
	}
	set_sync(s, durable);
	set_wal_limit(s);
	if (!changed || step_done(s->st[ST_BEGIN]) != 0)
		goto finish;
	int spill_now = 0, spill_high = 0; /* pages a call spilled to the WAL (see below) */

	for (size_t i = 0; i < n; i++) {
		struct store_call *c = calls[i];
		int64_t *slot = &changed[nchanged];
		/* An ingest call fails only when storage does (event ids are fresh, idempotency
		 * keys are looked up first), and then the whole batch fails with it. So it skips
		 * the per-call SAVEPOINT, whose statement journal copies every page it touches:
		 * that copy was half the writer's time per event. */
		int guarded = c->kind != STORE_INGEST;
		int64_t pending_before = s->batch_pending;
		int64_t top_delivery_before = s->batch_top_delivery;
		size_t span = c->kind == STORE_COMPLETE
		                  ? (size_t)((struct complete_args *)c->internal)->n
		                  : 1; /* its entries in changed[] */
		/* A savepoint that cannot be taken, rolled back to or released (the disk, say)
		 * fails the whole batch: else a failed call's writes could be committed. */
		if (guarded && step_done(s->st[ST_SAVEPOINT]) != 0) {
			c->rc = STORE_OK; /* not run: answered "storage unavailable" below */
			goto abandon;
		}
		if (guarded) /* from 0 at each call */
			sqlite3_db_status(s->wdb, SQLITE_DBSTATUS_CACHE_SPILL, &spill_now,
			                  &spill_high, 1);
		s->ncall_disabled = 0;
		switch (c->kind) {
		case STORE_INGEST:
			c->rc = apply_ingest(s, c, &made_due);
			break;
		case STORE_SUB_CREATE:
			c->rc = apply_sub_create(s, c, slot);
			break;
		case STORE_SUB_UPDATE:
			c->rc = apply_sub_update(s, c, slot, &made_due);
			break;
		case STORE_SUB_DELETE:
			c->rc = apply_sub_delete(s, c, slot);
			break;
		case STORE_SUB_ROTATE:
			c->rc = apply_sub_rotate(s, c, slot);
			break;
		case STORE_SUB_RECOVER:
			c->rc = apply_sub_recover(s, c, &made_due);
			break;
		case STORE_SUB_REPLAY:
			c->rc = apply_sub_replay(s, c, &made_due);
			break;
		case STORE_DELIVERY_RETRY:
			c->rc = apply_delivery_retry(s, c, &made_due);
			break;
		case STORE_CLAIM:
			c->rc = apply_claim(s, c);
			break;
		case STORE_COMPLETE:
			c->rc = apply_complete(s, c, slot, &made_due);
			break;
		case STORE_SWEEP:
			c->rc = apply_sweep(s, c);
			break;
		case STORE_PRUNE:
			c->rc = apply_prune(s, c);
			break;
		case STORE_WAKE:
			c->rc = STORE_OK;
			break;
		}
		if (c->rc == STORE_OK) {
			nchanged += span;
		} else if (!guarded) {
			goto abandon;
		} else {
			if (c->rc == STORE_ERR)
				storage_failed = 1;
			memset(slot, 0, span * sizeof(*slot));
			/* Only reads and in-memory marks are undone by hand: a claim's
			 * conclusions came from reads that still hold, but for the jobs it
			 * gives back (free_claim_jobs); and the calls after this one see what
			 * it rolled back to. Asking every subscription again instead, a
			 * stream of PATCHes to an unknown id (~290 404s a second) made 2,000
			 * deliveries beside 3,000 idle subscriptions take 1.6-1.8 s, not 0.3. */
			/* SQLite 3.40 (Debian 12's) leaves the WAL's checksums broken on disk
			 * when a ROLLBACK TO goes back past a page the transaction spilled and
			 * then rewrote in place (fixed upstream in sqlite3WalSavepointUndo):
			 * COMMIT succeeds, readers see it all, and recovery after a crash
			 * stops at the first bad frame, losing this batch and every commit
			 * after it until the WAL restarts. A failed call that spilled pages to
			 * the WAL (the batch past cache_size of dirty pages) fails the whole
			 * batch instead; one that wrote none there changed nothing the
			 * rollback could get wrong (a 404, say). */
			if (sqlite3_db_status(s->wdb, SQLITE_DBSTATUS_CACHE_SPILL, &spill_now,
			                      &spill_high, 0) != SQLITE_OK ||
			    spill_now > 0)
				goto abandon;
			if (step_done(s->st[ST_ROLLBACK_TO]) != 0)
				goto abandon;
			if (c->kind == STORE_COMPLETE && health_reread(s, c->internal) != 0)
				goto abandon; /* its health writes went too */
			for (size_t k = 0; k < s->ncall_disabled; k++) { /* the disables went too */
				struct sub_entry *e = sub_find(s, s->call_disabled[k]);
				if (e)
					e->disabled_in_batch = 0;
			}
			s->batch_pending = pending_before;
			s->batch_top_delivery = top_delivery_before; /* its ids are free again */
			json_decref(c->result);
			c->result = NULL;
			if (c->kind == STORE_CLAIM)
				free_claim_jobs(s, c->internal);
		}
		if (guarded && step_done(s->st[ST_RELEASE]) != 0)
			goto abandon;
		if (sqlite3_get_autocommit(s->wdb)) {
			/* SQLite rolled the whole transaction back itself (disk full, I/O
			 * error): nothing of this batch is kept, so every call fails. */
			goto finish;
		}
	}
	if (step_done(s->st[ST_COMMIT]) == 0) {
		committed = 1;
		goto finish;
	}
abandon: /* nothing of this batch is kept */
	batch_reason(s, changed, batch_why, sizeof(batch_why));
	if (!sqlite3_get_autocommit(s->wdb))
		exec_sql(s->wdb, "ROLLBACK", NULL, 0);
finish:
	if (!committed)
		batch_reason(s, changed, batch_why, sizeof(batch_why)); /* BEGIN failed, say */
	s->last_batch_failed = !committed;
	if ((writes && !committed) || storage_failed)
		atomic_fetch_add(&s->write_failures, 1);
	if (!committed) {
		for (size_t i = 0; i < n; i++) {
			struct store_call *c = calls[i];
			/* and a call that never ran (BEGIN failed: "database is locked") says
			 * why too, not only "the store failed" */
			if (c->rc == STORE_OK || c->rc == STORE_NOTFOUND ||
			    c->rc == STORE_CONFLICT || !c->why[0]) {
				snprintf(c->why, sizeof(c->why), "storage unavailable: %.120s",
				         batch_why[0] ? batch_why : "its batch failed");
				c->rc = STORE_ERR;
			}
			json_decref(c->result);
			c->result = NULL;
			if (c->kind == STORE_CLAIM)
				free_claim_jobs(s, c->internal);
		}
		free(changed);
		forget_rolled_back_wish(s);
		subs_look_all(s);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (calls[i]->rc != STORE_OK)
			continue;
		switch (calls[i]->kind) {
		case STORE_COMPLETE:
			count_results(s, calls[i]);
			break;
		case STORE_CLAIM:
			account_claimed(s, calls[i]);
			break;
		case STORE_SUB_DELETE: /* the first sweep finds out if any are left */
			if (sweep_add(s, calls[i]->id) != 0)
				fprintf(stderr, "hookrelay: out of memory: subscription %lld's pending"
				                " deliveries stay pending (held) until the next start\n",
				        (long long)calls[i]->id);
			break;
		case STORE_SWEEP:
			if (s->sweep.finished)
				sweep_remove(s, s->sweep.finished);
			break;
		case STORE_PRUNE:
			s->prune.pass = s->prune.next;
			break;
		default:
			break;
		}
	}
	sweep_schedule(s);
	prune_schedule(s);
	reload_changed(s, changed, nchanged);
	health_log_settled(s);
	free(changed);
	int needs_sync = durable && s->synchronous_full && s->wal_fd >= 0;
	/* An ingest that fails rolls the whole batch back, so these count only what was kept
	 * (an idempotent replay stores nothing). */
	atomic_fetch_add_explicit(&s->counters.events, s->batch_new_events, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->counters.pending, s->batch_pending, memory_order_relaxed);
	/* deliveries first: a reader that sees an event sees its deliveries */
	if (s->batch_top_delivery > 0) {
		atomic_store(&s->committed_delivery, s->batch_top_delivery);
		if (!needs_sync) /* on disk already (SQLite synced), or durability is off */
			atomic_store(&s->synced_delivery, s->batch_top_delivery);
	}
	if (s->batch_top_seq > 0) {
		atomic_store(&s->committed_seq, s->batch_top_seq);
		if (!needs_sync)
			atomic_store(&s->synced_seq, s->batch_top_seq);
	}
	/* Send nothing that is not on disk yet: deliveries made due wake the dispatcher after
	 * their sync. Those of subscriptions that looked full are left to the completion that
	 * gives them room; if its claim comes before their sync, it asks for a wake then. */
	if (needs_sync && made_due)
		atomic_store(&s->due_after_sync, 1);
	else if (made_due || take_wake_wish(s, atomic_load(&s->synced_seq)))
		call_due_hook(s);
	return needs_sync;
}

/* The syncer's half of a durable batch (syncer thread): every commit written to the
 * WAL so far reaches the disk. */
static void store_sync(void *ctx)
{
	struct store *s = ctx;
	/* Taken before the sync: a batch committed during it is not covered by it. */
	int wake = atomic_exchange(&s->due_after_sync, 0);
	/* the reverse of the writer's stores (deliveries, then the event): an event seen
	 * here has its deliveries in the second load */
	int64_t upto = atomic_load(&s->committed_seq);
	int64_t upto_delivery = atomic_load(&s->committed_delivery);
	int64_t started_us = clock_mono_us();

	if (fdatasync(s->wal_fd) != 0) {
		/* The batch is committed and visible, and after a failed fdatasync Linux may
		 * drop the dirty pages and report the next one clean: nothing said from here
		 * on could be trusted. Stop; at start-up SQLite recovers what reached the
		 * disk, and every unanswered publisher retries. */
		fprintf(stderr, "hookrelay: fatal: syncing the WAL failed (%s); stopping so that "
		                "recovery decides what was kept\n", strerror(errno));
		/* Linux keeps the pages that failed to write in its cache, marked clean: a
		 * restart within this boot would read them back and trust them. Dropped,
		 * they are read from the disk, as it is. */
		posix_fadvise(s->wal_fd, 0, 0, POSIX_FADV_DONTNEED);
		abort();
	}
	histogram_observe(&s->counters.wal_sync, clock_mono_us() - started_us);
	atomic_store(&s->synced_delivery, upto_delivery); /* first: see store_run_batch */
	atomic_store(&s->synced_seq, upto); /* before the wake: claims may take them now */
	if (take_wake_wish(s, upto))
		wake = 1;
	if (wake)
		call_due_hook(s);
}

/* What on_wal_commit needs to follow the WAL's length: its frame size, and the length
 * of the file as it is now (a previous run's WAL may be longer than the limit). */
static void measure_wal(struct store *s)
{
	sqlite3_stmt *st = NULL;
	const char *wal = sqlite3_filename_wal(sqlite3_db_filename(s->wdb, "main"));
	struct stat sb;

	if (sqlite3_prepare_v2(s->wdb, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0)
		s->wal_frame_bytes = sqlite3_column_int64(st, 0) + 24;
	sqlite3_finalize(st);
	if (wal && stat(wal, &sb) == 0)
		s->wal_file_bytes = sb.st_size;
}

/* Opens the WAL for the syncer and makes its directory entry durable (SQLite would sync
 * the directory on a new WAL's first sync). Returns the fd, or -1: SQLite then syncs
 * in the writer (synchronous=FULL), which is as safe and only slower. */
static int open_wal_for_sync(struct store *s)
{
	const char *wal = sqlite3_filename_wal(sqlite3_db_filename(s->wdb, "main"));
	/* The WAL's own directory: SQLite resolves a symlinked db path to its target's. */
	char *dir = wal ? strdup(wal) : NULL;
	int fd = wal ? open(wal, O_RDONLY | O_CLOEXEC) : -1;

	if (fd >= 0 && !dir) {
		close(fd);
		fd = -1;
	}
	if (fd >= 0) {
		char *slash = strrchr(dir, '/');
		int dfd;
		if (slash == dir)
			slash[1] = '\0';
		else if (slash)
			*slash = '\0';
		dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || fsync(dfd) != 0) {
			close(fd);
			fd = -1;
		}
		if (dfd >= 0)
			close(dfd);
	}
	free(dir);
	return fd;
}

int store_submit(struct store *s, struct store_call *call)
{
	call->rc = STORE_ERR;
	call->result = NULL;
	call->why[0] = '\0';
	return writer_submit(s->writer, call, 0);
}

/* ---------- the delivery_store for the dispatcher ---------- */

/* Answers the dispatcher's claim (writer thread, after the batch ended). */
static void claim_done(struct store_call *call)
{
	struct claim_args *a = call->internal;
	struct delivery_claim *claim = a->claim;

	if (call->rc == STORE_OK) {
		claim->count = a->njobs;
		claim->jobs = a->jobs;
		claim->next_due_ms = a->next_due_ms;
		claim->host_full = a->host_full;
		claim->sub_full = a->sub_full;
		a->jobs = NULL; /* handed over */
		a->njobs = 0;
	} else {
		claim->count = -1;
	}
	free_claim_jobs(NULL, a); /* none left: a failed batch freed them, leases and all */
	free(a);
	free(call);
	claim->done(claim); /* last: the claim is the dispatcher's again */
}

/* The dispatcher's check before it sends a job (any thread but the writer's). */
static int source_current(void *ctx, int64_t subscription_id, uint64_t subscription_version)
{
	struct store *s = ctx;
	int current;

	pthread_mutex_lock(&s->subs_lock);
	const struct sub_entry *sub = sub_find(s, subscription_id);
	current = sub && sub->enabled && sub->version == subscription_version;
	pthread_mutex_unlock(&s->subs_lock);
	return current;
}

static int source_claim(void *ctx, struct delivery_claim *claim)
{
	struct store *s = ctx;
	struct store_call *call = calloc(1, sizeof(*call));
	struct claim_args *a = calloc(1, sizeof(*a));

	if (!call || !a)
		goto fail;
	a->claim = claim;
	a->now_ms = claim->now_ms;
	a->max = claim->max > 0 ? claim->max : 1;
	call->kind = STORE_CLAIM;
	call->internal = a;
	call->done = claim_done;
	if (writer_submit(s->writer, call, 1) != 0)
		goto fail;
	return 0;
fail:
	free(a);
	free(call);
	return -1;
}

static void complete_done(struct store_call *call)
{
	struct complete_args *a = call->internal;
	struct store *s = call->arg;

	if (call->rc != STORE_OK && writer_submit(s->writer, call, 1) == 0)
		return; /* storage failed: keep the results and try again next batch */
	for (int i = 0; i < a->n; i++)
		delivery_result_free(a->results[i]);
	free(a->results);
	free(a);
	free(call);
}

static int source_complete(void *ctx, struct delivery_result **results, int n)
{
	struct store *s = ctx;
	struct store_call *call = NULL;
	struct complete_args *a = NULL;
	struct delivery_result **copy = NULL;

	if (n <= 0)
		return 0;
	call = calloc(1, sizeof(*call));
	a = calloc(1, sizeof(*a));
	copy = calloc((size_t)n, sizeof(*copy));
	if (!call || !a || !copy) {
		/* Out of memory: the dispatcher keeps the results and hands them over again.
		 * Dropped here, their leases stayed held until a restart: pending with no
		 * end, and their subscriptions' slots lost. */
		free(call);
		free(a);
		free(copy);
		return -1;
	}
	memcpy(copy, results, (size_t)n * sizeof(*copy));
	a->results = copy;
	a->n = n;
	call->kind = STORE_COMPLETE;
	call->internal = a;
	call->arg = s;
	call->done = complete_done;
	if (writer_submit(s->writer, call, 1) != 0) {
		call->rc = STORE_OK; /* writer stopping: free without resubmitting */
		complete_done(call);
	}
	return 0;
}

const struct delivery_store *store_delivery_source(struct store *s)
{
	return &s->source;
}

void store_set_due_hook(struct store *s, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&s->hook_lock);
	s->due_hook = fn;
	s->due_arg = arg;
	pthread_mutex_unlock(&s->hook_lock);
}

/* ---------- the checkpointer ---------- */

/*
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, so
 * the writer (and every request waiting on it) would stall while pages are copied and
 * the database file is fsynced. Instead the writer's WAL hook only wakes this thread,
 * which checkpoints PASSIVE on its own connection: it never blocks the writer, and the
 * writer restarts the WAL from the top once a checkpoint has caught up.
 */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct store *s = arg;
	(void)db;
	(void)name;
	if (s->wal_frame_bytes > 0) {
		int64_t needed = 32 + (int64_t)pages * s->wal_frame_bytes;
		if (pages < s->wal_last_frames && s->wal_file_bytes > s->wal_limit_set)
			s->wal_file_bytes = s->wal_limit_set; /* restarted: this commit cut it */
		if (needed > s->wal_file_bytes)
			s->wal_file_bytes = needed;
		s->wal_last_frames = pages;
	}
	/* While the file is longer than the limit, checkpoint early so that restarts (each
	 * a cut) keep coming: waiting for CHECKPOINT_PAGES, 20 events/s took ~26 s a step. */
	if (pages >= CHECKPOINT_PAGES ||
	    (s->wal_file_bytes > WAL_SIZE_LIMIT && pages >= CHECKPOINT_SHRINK_PAGES)) {
		pthread_mutex_lock(&s->ckpt_lock);
		s->ckpt_wanted = 1;
		pthread_cond_signal(&s->ckpt_wake);
		pthread_mutex_unlock(&s->ckpt_lock);
	}
	return SQLITE_OK;
}

static void wake_done(struct store_call *call)
{
	struct store *s = call->arg;

	atomic_store(&s->wake_queued, 0);
	prune_schedule(s);
}

/* The checkpointer thread: makes the writer run prune_schedule soon (one STORE_WAKE at a
 * time; none once store_close has begun to stop the writer). */
static void wake_writer(struct store *s)
{
	pthread_mutex_lock(&s->ckpt_lock);
	if (!s->wake_off && !atomic_exchange(&s->wake_queued, 1)) {
		memset(&s->wake_call, 0, sizeof(s->wake_call));
		s->wake_call.kind = STORE_WAKE;
		s->wake_call.done = wake_done;
		s->wake_call.arg = s;
		if (writer_submit(s->writer, &s->wake_call, 1) != 0)
			atomic_store(&s->wake_queued, 0); /* stopping */
	}
	pthread_mutex_unlock(&s->ckpt_lock);
}

static void *checkpointer_main(void *arg)
{
	struct store *s = arg;
	sqlite3 *db = s->ckpt_db;
	int retry = 0; /* the last checkpoint left frames while a prune waits */

	for (;;) {
		pthread_mutex_lock(&s->ckpt_lock);
		while (!s->ckpt_wanted && !s->ckpt_stop && !atomic_load(&s->wake_wanted))
			pthread_cond_wait(&s->ckpt_wake, &s->ckpt_lock);
		if (retry && !s->ckpt_wanted && !s->ckpt_stop) {
			/* a reader held frames back: try again in a while, not in a spin */
			struct timespec until; /* (ckpt_wake waits on the monotonic clock) */
			clock_gettime(CLOCK_MONOTONIC, &until);
			until.tv_nsec += CHECKPOINT_RETRY_MS * 1000000L;
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&s->ckpt_wake, &s->ckpt_lock, &until);
		}
		int stop = s->ckpt_stop;
		s->ckpt_wanted = 0;
		pthread_mutex_unlock(&s->ckpt_lock);
		if (stop)
			break;
		int frames = -1, copied = -2;
		int full = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames,
		                                     &copied) == SQLITE_OK &&
		           frames == copied;
		if (full) {
			atomic_fetch_add(&s->ckpt_caught_up, 1);
			if (atomic_exchange(&s->wake_wanted, 0))
				wake_writer(s);
		}
		retry = !full && atomic_load(&s->wake_wanted);
	}
	return NULL;
}

/* ---------- open / close ---------- */

/* Reads one integer (the first column of the first row of sql) into *out. */
static int read_int(sqlite3 *db, const char *sql, int *out, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int step;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s", sqlite3_errmsg(db));
		return -1;
	}
	step = sqlite3_step(st);
	if (step == SQLITE_ROW)
		*out = sqlite3_column_int(st, 0);
	else
		snprintf(err, errlen, "%s: %s", sql,
		         step == SQLITE_DONE ? "no answer" : sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return step == SQLITE_ROW ? 0 : -1;
}

/*
 * Refuses, before anything is written to it (the switch to WAL is a write), a file that
 * is not a hookrelay database: a typo in --db must not turn another program's SQLite
 * file into ours. Ours is empty (new), or has a schema version this build knows and
 * our tables.
 */
static int check_ours(sqlite3 *db, char *err, size_t errlen)
{
	int version = 0, tables = 0, ours = 0;

	if (read_int(db, "PRAGMA user_version", &version, err, errlen) != 0 ||
	    read_int(db, "SELECT count(*) FROM sqlite_master", &tables, err, errlen) != 0 ||
	    read_int(db,
	             "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN"
	             " ('subscriptions', 'events', 'deliveries', 'attempts')",
	             &ours, err, errlen) != 0)
		return -1;
	if (version > schema_migration_count) {
		snprintf(err, errlen,
		         "database schema version %d is newer than this hookrelay knows (%d)", version,
		         schema_migration_count);
		return -1;
	}
	if (version == 0 && ours == 4) { /* sqlite3's .dump keeps no user_version */
		snprintf(err, errlen,
		         "has hookrelay's tables but no schema version (restored from sqlite3's"
		         " .dump, which drops it?); restore with .backup or VACUUM INTO, or set"
		         " PRAGMA user_version to the version it was made with; nothing in it was"
		         " changed");
		return -1;
	}
	if ((version == 0 && tables > 0) || (version > 0 && ours < 4)) {
		snprintf(err, errlen,
		         "not a hookrelay database (it holds %d schema object%s, and %s); nothing"
		         " in it was changed",
		         tables, tables == 1 ? "" : "s",
		         version == 0 ? "no hookrelay schema version" : "not hookrelay's tables");
		return -1;
	}
	return 0;
}

/* Brings the schema to this build's version, one migration per transaction. The version
 * is read inside each one's write lock, so two processes cannot both apply a step. */
static int migrate(sqlite3 *db, char *err, size_t errlen)
{
	for (;;) {
		int version = 0;
		char bump[64];

		if (exec_sql(db, "BEGIN IMMEDIATE", err, errlen) != 0)
			return -1;
		if (read_int(db, "PRAGMA user_version", &version, err, errlen) != 0)
			goto fail;
		if (version >= schema_migration_count)
			break;
		snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", version + 1);
		if (exec_sql(db, schema_migrations[version], err, errlen) != 0 ||
		    exec_sql(db, bump, err, errlen) != 0 ||
		    exec_sql(db, "COMMIT", err, errlen) != 0)
			goto fail;
	}
	return exec_sql(db, "COMMIT", err, errlen);
fail:
	exec_sql(db, "ROLLBACK", NULL, 0);
	return -1;
}

/*
 * SQLite's error log, for what no answer explains: a damaged page found by some read
 * (the client gets a 503 and would retry for ever; the operator must hear of it). At
 * most one line a minute, saying how many were left out. Any thread.
 */
static atomic_int sqlite_log_on; /* from the end of store_open: before, its error says it */

static void sqlite_log(void *arg, int code, const char *msg)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static int64_t said_at = INT64_MIN / 2;
	static long unsaid;
	(void)arg;

	if (!atomic_load(&sqlite_log_on) ||
	    ((code & 0xff) != SQLITE_CORRUPT && (code & 0xff) != SQLITE_NOTADB))
		return;
	pthread_mutex_lock(&lock);
	int64_t now = clock_mono_ms();
	if (now - said_at >= 60000) {
		char more[64] = "";
		if (unsaid)
			snprintf(more, sizeof more, " [%ld more since the last such line]", unsaid);
		fprintf(stderr,
		        "hookrelay: the database file is damaged: %s (SQLite: %s); reads or writes"
		        " that touch the damage fail with 503. Stop the relay, keep a copy, and see"
		        " sqlite3's .recover%s\n",
		        sqlite3_errstr(code), msg, more);
		said_at = now;
		unsaid = 0;
	} else {
		unsaid++;
	}
	pthread_mutex_unlock(&lock);
}

struct store *store_open(const struct store_options *opts, char *err, size_t errlen)
{
	struct store *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	/* No allocation statistics: they take a global mutex on every malloc of every
	 * connection. Only possible before SQLite initializes; later calls change nothing. */
	sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	sqlite3_config(SQLITE_CONFIG_LOG, sqlite_log, NULL);
	pthread_mutex_init(&s->readers_lock, NULL);
	pthread_mutex_init(&s->hook_lock, NULL);
	pthread_mutex_init(&s->subs_lock, NULL);
	s->synchronous_full = opts->synchronous_full;
	s->disable_after_ms = opts->disable_after_ms;
	s->retention_ms = opts->retention_ms;
	s->sync_now = 1;
	s->wal_fd = -1;
	histogram_init(&s->counters.attempt_duration, &histogram_scale_delivery);
	histogram_init(&s->counters.delivery_latency, &histogram_scale_delivery);
	histogram_init(&s->counters.wal_sync, &histogram_scale_disk);
	s->path = strdup(opts->path);
	s->matcher = matcher_new();
	if (!s->path || !s->matcher) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	/* The writer's commits go to the WAL in few writes (wal_vfs.h). */
	const char *vfs = wal_vfs_register() == 0 ? WAL_VFS_NAME : NULL;
	if (sqlite3_open_v2(opts->path, &s->wdb,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    vfs) != SQLITE_OK) {
		snprintf(err, errlen, "cannot open: %s",
		         s->wdb ? sqlite3_errmsg(s->wdb) : "out of memory");
		goto fail;
	}
	/* a rollback makes the frames the WAL held back garbage (wal_vfs.h) */
	sqlite3_rollback_hook(s->wdb, wal_vfs_rolled_back, s->wdb);
	sqlite3_busy_timeout(s->wdb, STORE_LOCK_WAIT_MS);
	s->lock_wait_ms = STORE_LOCK_WAIT_MS;
	sqlite3_extended_result_codes(s->wdb, 1);
	if (check_ours(s->wdb, err, errlen) != 0 ||
	    exec_sql(s->wdb, "PRAGMA journal_mode=WAL", err, errlen) != 0 ||
	    exec_sql(s->wdb,
	             s->synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
	             err, errlen) != 0 ||
	    exec_sql(s->wdb, "PRAGMA cache_size=-16000", err, errlen) != 0 ||
	    exec_sql(s->wdb, "PRAGMA temp_store=MEMORY", err, errlen) != 0 ||
	    /* a deleted secret is overwritten, not left in a free page (Debian's SQLite does
	     * this by default; others do not) */
	    exec_sql(s->wdb, "PRAGMA secure_delete=ON", err, errlen) != 0 ||
	    /* A burst can outrun the checkpointer and grow the WAL far past CHECKPOINT_PAGES;
	     * without a limit the file keeps that size on disk after it is reset. */
	    set_journal_limit(s, WAL_SIZE_LIMIT, err, errlen) != 0 ||
	    migrate(s->wdb, err, errlen) != 0)
		goto fail;
	/* Older versions kept leases in the rows: what was in flight when one stopped is due
	 * again now. And secrets that sign nothing any more leave the file: those of
	 * subscriptions deleted before a delete took them along, and those past their
	 * grace (a rotation deletes them too, but there may be none for a long time). */
	if (exec_sql(s->wdb, "UPDATE deliveries SET leased = 0 WHERE state = 0 AND leased = 1", err,
	             errlen) != 0)
		goto fail;
	if (exec_with_id_time(s,
	                      "DELETE FROM subscription_secrets WHERE (expires_at IS NOT"
	                      " NULL AND expires_at <= ?2) OR subscription_id IN (SELECT id FROM"
	                      " subscriptions WHERE deleted_at IS NOT NULL)",
	                      0, clock_now_ms()) != 0) {
		snprintf(err, errlen, "deleting secrets that sign nothing: %s",
		         sqlite3_errmsg(s->wdb));
		goto fail;
	}
	if (sqlite3_create_function_v2(s->wdb, "in_flight", 1, SQLITE_UTF8 | SQLITE_DIRECTONLY, s,
	                               sql_in_flight, NULL, NULL, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "registering in_flight(): %s", sqlite3_errmsg(s->wdb));
		goto fail;
	}
	for (int i = 0; i < ST_COUNT; i++) {
		if (sqlite3_prepare_v3(s->wdb, writer_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
		                       NULL) != SQLITE_OK) {
			snprintf(err, errlen, "preparing statement %d: %s", i, sqlite3_errmsg(s->wdb));
			goto fail;
		}
	}
	if (for_each_id(s, "SELECT id FROM subscriptions WHERE deleted_at IS NULL",
	                reload_subscription) != 0) {
		snprintf(err, errlen, "loading subscriptions: %s", sqlite3_errmsg(s->wdb));
		goto fail;
	}
	if (s->synchronous_full) {
		s->wal_fd = open_wal_for_sync(s);
		if (s->wal_fd >= 0 && exec_sql(s->wdb, "PRAGMA synchronous=NORMAL", err, errlen) != 0)
			goto fail;
	}
	if (init_seqs(s, err, errlen) != 0 || init_pending(s, err, errlen) != 0)
		goto fail;
	/* Deleted subscriptions whose sweep a stop or crash cut short. */
	if (for_each_id(s,
	                "SELECT id FROM subscriptions s WHERE deleted_at IS NOT NULL AND EXISTS"
	                " (SELECT 1 FROM deliveries WHERE subscription_id = s.id AND state = 0"
	                " AND leased = 0) ORDER BY id",
	                sweep_add) != 0) {
		snprintf(err, errlen, "finding deleted subscriptions' pending deliveries: %s",
		         sqlite3_errmsg(s->wdb));
		goto fail;
	}
	pthread_mutex_init(&s->ckpt_lock, NULL);
	pthread_condattr_t monotonic;
	pthread_condattr_init(&monotonic);
	pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
	pthread_cond_init(&s->ckpt_wake, &monotonic);
	pthread_condattr_destroy(&monotonic);
	/* The checkpointer's connection is opened here: without it the WAL hook is not
	 * installed, and SQLite checkpoints inside the writer's commits as it would. */
	if (sqlite3_open_v2(s->path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		fprintf(stderr,
		        "hookrelay: checkpointer cannot open %s (%s); SQLite will checkpoint"
		        " in the writer\n",
		        s->path, s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : "out of memory");
		sqlite3_close(s->ckpt_db);
		s->ckpt_db = NULL;
	} else {
		sqlite3_busy_timeout(s->ckpt_db, 1000);
		/* A fresh connection knows the file is in WAL mode only once it has read it. */
		exec_sql(s->ckpt_db, "PRAGMA journal_mode=WAL", NULL, 0);
	}
	if (s->ckpt_db && pthread_create(&s->checkpointer, NULL, checkpointer_main, s) == 0) {
		pthread_setname_np(s->checkpointer, "hr-checkpoint");
		s->checkpointer_running = 1;
		measure_wal(s); /* without the hook the limit stays WAL_SIZE_LIMIT */
		sqlite3_wal_hook(s->wdb, on_wal_commit, s); /* replaces the automatic checkpoint */
	} else if (s->ckpt_db) {
		sqlite3_close(s->ckpt_db);
		s->ckpt_db = NULL;
	}
	s->source.ctx = s;
	s->source.claim = source_claim;
	s->source.complete = source_complete;
	s->source.current = source_current;
	s->writer = writer_start(store_run_batch, store_sync, s,
	                         opts->max_queue ? opts->max_queue : 8192, WRITER_BATCH_MAX);
	if (!s->writer) {
		snprintf(err, errlen, "cannot start the writer thread");
		goto fail;
	}
	sweep_schedule(s);
	prune_schedule(s);
	atomic_store(&sqlite_log_on, 1);
	return s;
fail:
	if (s->wdb && ((sqlite3_errcode(s->wdb) & 0xff) == SQLITE_READONLY ||
	               (sqlite3_errcode(s->wdb) & 0xff) == SQLITE_CANTOPEN)) {
		/* SQLite says "readonly database" when it is the directory that is read-only */
		char dir[PATH_MAX];
		snprintf(dir, sizeof dir, "%s", opts->path);
		char *slash = strrchr(dir, '/');
		if (!slash)
			snprintf(dir, sizeof dir, ".");
		else
			slash[slash == dir ? 1 : 0] = '\0';
		size_t used = strlen(err);
		if (access(dir, W_OK) != 0 && used < errlen)
			snprintf(err + used, errlen - used,
			         " (the directory %s is not writable: SQLite creates the database's"
			         " -wal and -shm files there)",
			         dir);
	}
	store_close(s);
	return NULL;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->checkpointer_running) { /* no STORE_WAKE from here on */
		pthread_mutex_lock(&s->ckpt_lock);
		s->wake_off = 1;
		pthread_mutex_unlock(&s->ckpt_lock);
	}
	writer_stop(s->writer);
	if (s->checkpointer_running) {
		pthread_mutex_lock(&s->ckpt_lock);
		s->ckpt_stop = 1;
		pthread_cond_signal(&s->ckpt_wake);
		pthread_mutex_unlock(&s->ckpt_lock);
		pthread_join(s->checkpointer, NULL);
		sqlite3_close(s->ckpt_db);
		pthread_cond_destroy(&s->ckpt_wake);
		pthread_mutex_destroy(&s->ckpt_lock);
	}
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(s->st[i]);
	for (int i = 0; i < s->nreaders; i++)
		sqlite3_close(s->readers[i]);
	for (size_t i = 0; i < s->nsubs; i++)
		sub_entry_clear(&s->subs[i]);
	free(s->subs);
	free(s->quiet);
	for (size_t i = 0; i < s->nhosts; i++)
		free(s->hosts[i].key);
	free(s->hosts);
	free(s->host_slots);
	free(s->sweep.ids);
	free(s->health_held.ids);
	free(s->leases.ids);
	free(s->reload_retry.ids);
	free(s->match_ids);
	free(s->call_disabled);
	matcher_free(s->matcher);
	if (s->wdb) {
		/* A clean close checkpoints the WAL into the main file. */
		sqlite3_close(s->wdb);
	}
	if (s->wal_fd >= 0)
		close(s->wal_fd);
	pthread_mutex_destroy(&s->readers_lock);
	pthread_mutex_destroy(&s->hook_lock);
	pthread_mutex_destroy(&s->subs_lock);
	free(s->path);
	free(s);
}

/* ---------- reads ---------- */

static sqlite3 *reader_acquire(struct store *s)
{
	sqlite3 *db = NULL;

	pthread_mutex_lock(&s->readers_lock);
	if (s->nreaders > 0)
		db = s->readers[--s->nreaders];
	pthread_mutex_unlock(&s->readers_lock);
	if (db)
		return db;
	if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK) {
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static void reader_release(struct store *s, sqlite3 *db)
{
	/* one left inside a read transaction (its ROLLBACK failed, out of memory) would
	 * hold the WAL at its snapshot and answer stale: closed instead */
	if (!sqlite3_get_autocommit(db)) {
		sqlite3_close(db);
		return;
	}
	pthread_mutex_lock(&s->readers_lock);
	if (s->nreaders < READERS_MAX) {
		s->readers[s->nreaders++] = db;
		db = NULL;
	}
	pthread_mutex_unlock(&s->readers_lock);
	sqlite3_close(db);
}

enum store_rc store_health(struct store *s)
{
	sqlite3 *db = reader_acquire(s);
	enum store_rc rc = STORE_ERR;
	if (db && exec_sql(db, "SELECT 1 FROM events LIMIT 1", NULL, 0) == 0)
		rc = STORE_OK;
	if (db)
		reader_release(s, db);
	return rc;
}

enum store_rc store_stats(struct store *s, struct store_stats *out)
{
	sqlite3 *db = reader_acquire(s);
	sqlite3_stmt *st = NULL;
	enum store_rc rc = STORE_ERR;

	memset(out, 0, sizeof(*out));
	histogram_read(&s->counters.attempt_duration, &out->attempt_duration); /* first */
	histogram_read(&s->counters.delivery_latency, &out->delivery_latency);
	histogram_read(&s->counters.wal_sync, &out->wal_sync);
	out->events_published = atomic_load_explicit(&s->counters.events, memory_order_relaxed);
	out->attempts_delivered = atomic_load(&s->counters.delivered);
	out->attempts_retry = atomic_load(&s->counters.retry);
	out->attempts_failed = atomic_load(&s->counters.failed);
	out->deliveries_in_flight = atomic_load_explicit(&s->counters.in_flight, memory_order_relaxed);
	out->deliveries_pending = atomic_load_explicit(&s->counters.pending, memory_order_relaxed);
	out->write_failures = atomic_load(&s->write_failures);
	out->writer_queue = (int64_t)writer_queued(s->writer);
	if (db &&
	    sqlite3_prepare_v2(db,
	                       "SELECT (SELECT count(*) FROM subscriptions WHERE deleted_at IS NULL"
	                       " AND enabled = 1), (SELECT count(*) FROM subscriptions"
	                       " WHERE deleted_at IS NULL AND enabled = 0), (SELECT count(*)"
	                       " FROM subscriptions WHERE deleted_at IS NULL AND enabled = 1"
	                       " AND failing_since IS NOT NULL)",
	                       -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		out->subscriptions_enabled = sqlite3_column_int64(st, 0);
		out->subscriptions_disabled = sqlite3_column_int64(st, 1);
		out->subscriptions_failing = sqlite3_column_int64(st, 2);
		rc = STORE_OK;
	}
	sqlite3_finalize(st);
	if (db)
		reader_release(s, db);
	return rc;
}

/* Runs `sql` (?1 = key) on db and sets the rows, built with `row`, as parent[name].
 * Returns 0 or -1. */
static int attach_rows(sqlite3 *db, const char *sql, int64_t key, json_t *(*row)(sqlite3_stmt *),
                       json_t *parent, const char *name)
{
	sqlite3_stmt *st = NULL;
	json_t *rows = NULL;
	int more;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, key);
		rows = rows_json(st, row, 0, NULL, &more);
	}
	sqlite3_finalize(st);
	if (!rows)
		return -1;
	json_object_set_new(parent, name, rows);
	return 0;
}

/* Wraps rows into {"data": [...], "next": cursor|null}. */
static json_t *page_json(json_t *rows, int more, int64_t last_key)
{
	char cursor[UTIL_ID_MAX];
	json_t *next = json_null();
	if (more) {
		util_format_id("", last_key, cursor);
		next = json_string(cursor);
	}
	return json_pack("{s:o, s:o}", "data", rows, "next", next);
}

/* Runs a list query (sql ends in "LIMIT ?n" = limit + 1) with text/int binds. */
struct bind {
	const char *text;
	int64_t num;
	int is_text;
};

/* Prepares sql on db with its binds; NULL on error. */
static sqlite3_stmt *prepare_bound(sqlite3 *db, const char *sql, const struct bind *binds,
                                   int nbinds)
{
	sqlite3_stmt *st = NULL;

	if (!db || sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return NULL;
	for (int i = 0; i < nbinds; i++) {
		if (binds[i].is_text)
			sqlite3_bind_text(st, i + 1, binds[i].text, -1, SQLITE_STATIC);
		else
			sqlite3_bind_int64(st, i + 1, binds[i].num);
	}
	return st;
}

static enum store_rc run_list(struct store *s, const char *sql, const struct bind *binds,
                              int nbinds, json_t *(*row)(sqlite3_stmt *), int limit, json_t **out)
{
	sqlite3 *db = reader_acquire(s);
	sqlite3_stmt *st = prepare_bound(db, sql, binds, nbinds);
	enum store_rc rc = STORE_ERR;
	json_t *rows;
	int more = 0;
	int64_t last = 0;

	if (!st)
		goto out;
	rows = rows_json(st, row, limit, &last, &more);
	if (!rows)
		goto out;
	*out = page_json(rows, more, last);
	rc = STORE_OK;
out:
	sqlite3_finalize(st);
	if (db)
		reader_release(s, db);
	return rc;
}

/* Closes the memstream f and hands its text to *out, or frees it: STORE_OK or STORE_ERR. */
static enum store_rc memstream_take(FILE *f, char **text, int failed, char **out)
{
	if (fclose(f) != 0 || failed) {
		free(*text);
		return STORE_ERR;
	}
	*out = *text;
	return STORE_OK;
}

/* Writes the rows of a prepared SELECT as a JSON array, each with `row`, stopping after
 * `limit` (0: none), or once the text passed max_bytes (0: never): the row it stopped
 * at is left as the step's answer. Returns the last sqlite3_step code: SQLITE_ROW when
 * rows remain, SQLITE_DONE at the end, else an error. */
static int rows_text(FILE *f, sqlite3_stmt *st, void (*row)(FILE *, sqlite3_stmt *), int limit,
                     long max_bytes, int64_t *last_key)
{
	int step, n = 0;

	fputc_unlocked('[', f);
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		if ((limit > 0 && n == limit) || (n > 0 && max_bytes > 0 && ftell(f) >= max_bytes))
			break;
		if (n++)
			fputc_unlocked(',', f);
		row(f, st);
		*last_key = sqlite3_column_int64(st, 0);
	}
	fputc_unlocked(']', f);
	return step;
}

/* Runs a list query (sql ends in "LIMIT ?n" = limit + 1) into {"data": [...], "next":
 * cursor|null} text, the rows written with `row`. */
static enum store_rc run_text_list(struct store *s, const char *sql, const struct bind *binds,
                                   int nbinds, void (*row)(FILE *, sqlite3_stmt *), int limit,
                                   long max_bytes, char **out)
{
	sqlite3 *db = reader_acquire(s);
	sqlite3_stmt *st = prepare_bound(db, sql, binds, nbinds);
	enum store_rc rc = STORE_ERR;
	char *text = NULL, cursor[UTIL_ID_MAX];
	size_t len = 0;
	int64_t last = 0;
	FILE *f = st ? open_memstream(&text, &len) : NULL;

	if (!f)
		goto out;
	fputs_unlocked("{\"data\":", f);
	int step = rows_text(f, st, row, limit, max_bytes, &last);
	if (step == SQLITE_ROW) { /* the limit + 1st row, or one past the size: a next page */
		util_format_id("", last, cursor);
		fprintf(f, ",\"next\":\"%s\"}", cursor);
	} else {
		fputs_unlocked(",\"next\":null}", f);
	}
	rc = memstream_take(f, &text, step != SQLITE_ROW && step != SQLITE_DONE, out);
out:
	sqlite3_finalize(st);
	if (db)
		reader_release(s, db);
	return rc;
}

/* Events may be 1 MiB each: a page of them ends once it is this long, rather than build
 * a gigabyte (`next` continues it). */
#define EVENTS_PAGE_BYTES (4L << 20)

/* A list page's keys stay below this: the cursor `after` (0: none), and nothing newer
 * than `synced`, what the disk has (see synced_seq). */
static int64_t list_below(int64_t after, int64_t synced)
{
	return after && after <= synced ? after : synced + 1;
}

enum store_rc store_events_list(struct store *s, const struct store_list_query *q, char **out)
{
	char sql[512];
	struct bind b[3];
	int nb = 0;
	int64_t below = list_below(q->after, atomic_load(&s->synced_seq));

	snprintf(sql, sizeof(sql),
	         "SELECT " EVENT_COLUMNS
	         " FROM events WHERE %sseq < ?%d ORDER BY seq DESC LIMIT ?%d",
	         q->type ? "type = ?1 AND " : "", 1 + (q->type != NULL), 2 + (q->type != NULL));
	if (q->type)
		b[nb++] = (struct bind){.text = q->type, .is_text = 1};
	b[nb++] = (struct bind){.num = below};
	b[nb++] = (struct bind){.num = q->limit + 1};
	return run_text_list(s, sql, b, nb, event_text, q->limit, EVENTS_PAGE_BYTES, out);
}

enum store_rc store_event_get(struct store *s, const char *id, char **out)
{
	sqlite3 *db = reader_acquire(s);
	sqlite3_stmt *st = NULL, *dst = NULL;
	enum store_rc rc = STORE_ERR;
	char *text = NULL;
	size_t len = 0;
	int64_t last;
	FILE *f;

	if (!db ||
	    sqlite3_prepare_v2(db,
	                       "SELECT " EVENT_COLUMNS " FROM events WHERE id = ?1 AND seq <= ?2",
	                       -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db,
	                       "SELECT " DELIVERY_COLUMNS DELIVERY_FROM
	                       " WHERE d.event_seq = ?1 AND d.id <= ?2 ORDER BY d.id",
	                       -1, &dst, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, atomic_load(&s->synced_seq));
	sqlite3_bind_int64(dst, 2, atomic_load(&s->synced_delivery));
	int step = sqlite3_step(st);
	if (step != SQLITE_ROW) {
		rc = step == SQLITE_DONE ? STORE_NOTFOUND : STORE_ERR;
		goto out;
	}
	sqlite3_bind_int64(dst, 1, sqlite3_column_int64(st, 0));
	f = open_memstream(&text, &len);
	if (!f)
		goto out;
	event_text_open(f, st);
	json_text_key(f, "deliveries", 0);
	step = rows_text(f, dst, delivery_text, 0, 0, &last);
	fputc_unlocked('}', f);
	rc = memstream_take(f, &text, step != SQLITE_DONE, out);
out:
	sqlite3_finalize(dst);
	sqlite3_finalize(st);
	if (db)
		reader_release(s, db);
	return rc;
}

enum store_rc store_subscription_get(struct store *s, int64_t id, json_t **out)
{
	sqlite3 *db = reader_acquire(s);
	enum store_rc rc = db ? load_subscription_json(db, id, out) : STORE_ERR;
	if (db)
		reader_release(s, db);
	return rc;
}

/* Counts through the per-subscription partial indexes (its pending, its failed), so the
 * cost is its own backlog's, not the history's; leased is 0 in every row now (leases are
 * the writer's memory), which lets deliveries_due_by_sub serve the pending ones. */
enum store_rc store_subscription_stats(struct store *s, int64_t id, json_t **out)
{
	static const char sql[] =
	    "SELECT id,"
	    " (SELECT count(*) FROM deliveries WHERE subscription_id = ?1"
	    " AND state = 0 AND leased = 0),"
	    " (SELECT count(*) FROM deliveries WHERE subscription_id = ?1 AND state = 2),"
	    " (SELECT min(next_attempt_at) FROM deliveries WHERE subscription_id = ?1"
	    " AND state = 0 AND leased = 0)"
	    " FROM subscriptions WHERE id = ?1 AND deleted_at IS NULL";
	sqlite3 *db = reader_acquire(s);
	if (!db)
		return STORE_ERR;
	enum store_rc rc = load_one(db, sql, id, subscription_stats_json, out);
	reader_release(s, db);
	return rc;
}

enum store_rc store_subscriptions_list(struct store *s, const struct store_list_query *q,
                                       json_t **out)
{
	struct bind b[2];
	int nb = 0;
	const char *sql = q->after ? "SELECT " SUB_COLUMNS " FROM subscriptions WHERE deleted_at IS NULL"
	                             " AND id < ?1 ORDER BY id DESC LIMIT ?2"
	                           : "SELECT " SUB_COLUMNS " FROM subscriptions WHERE deleted_at IS NULL"
	                             " ORDER BY id DESC LIMIT ?1";
	if (q->after)
		b[nb++] = (struct bind){.num = q->after};
	b[nb++] = (struct bind){.num = q->limit + 1};
	return run_list(s, sql, b, nb, subscription_json, q->limit, out);
}

static json_t *attempt_json(sqlite3_stmt *st)
{
	json_t *o = json_object();
	json_object_set_new(o, "attempt", json_integer(sqlite3_column_int(st, 0)));
	json_object_set_new(o, "started_at", json_time_or_null(st, 1));
	json_object_set_new(o, "duration_ms", json_integer(sqlite3_column_int(st, 2)));
	json_object_set_new(o, "http_status", json_integer(sqlite3_column_int(st, 3)));
	json_object_set_new(o, "error", json_text_or_null(st, 4));
	/* The receiver's bytes as they came (cut at 4 KiB, perhaps mid-character, perhaps
	 * not text at all): shown as UTF-8, anything else as '?'. */
	int is_null = sqlite3_column_type(st, 5) == SQLITE_NULL; /* before any conversion */
	const void *body = sqlite3_column_blob(st, 5);
	size_t len = (size_t)sqlite3_column_bytes(st, 5);
	char *text = is_null ? NULL : malloc(len + 1);
	if (text) {
		if (len)
			memcpy(text, body, len);
		json_utf8_repair(text, len);
		json_object_set_new(o, "response_body", json_stringn_nocheck(text, len));
		free(text);
	} else {
		json_object_set_new(o, "response_body", json_null());
	}
	return o;
}

enum store_rc store_delivery_get(struct store *s, int64_t id, json_t **out)
{
	sqlite3 *db = reader_acquire(s);
	enum store_rc rc = STORE_ERR;
	json_t *delivery = NULL;
	int reading = 0;

	if (!db)
		goto out;
	if (id > atomic_load(&s->synced_delivery)) { /* not on disk yet: see synced_delivery */
		rc = STORE_NOTFOUND;
		goto out;
	}
	/* one snapshot for the row and its attempts: else a result committed between them
	 * showed attempt_count 28 beside 29 attempts */
	if (exec_sql(db, "BEGIN", NULL, 0) != 0)
		goto out;
	reading = 1;
	rc = load_delivery_json(db, id, &delivery);
	if (rc != STORE_OK)
		goto out;
	rc = STORE_ERR;
	if (attach_rows(db,
	                "SELECT attempt, started_at, duration_ms, http_status, error, response_body"
	                " FROM attempts WHERE delivery_id = ?1 ORDER BY attempt, id",
	                id, attempt_json, delivery, "attempts") != 0)
		goto out;
	*out = delivery;
	delivery = NULL;
	rc = STORE_OK;
out:
	if (reading)
		exec_sql(db, "ROLLBACK", NULL, 0); /* a read: nothing to keep */
	json_decref(delivery);
	if (db)
		reader_release(s, db);
	return rc;
}

enum store_rc store_deliveries_list(struct store *s, const struct store_list_query *q, char **out)
{
	char sql[768];
	size_t off;
	struct bind b[5];
	int nb = 0;

	off = (size_t)snprintf(sql, sizeof(sql), "SELECT " DELIVERY_COLUMNS DELIVERY_FROM " WHERE 1");
	if (q->subscription) {
		b[nb++] = (struct bind){.num = q->subscription};
		off += (size_t)snprintf(sql + off, sizeof(sql) - off, " AND d.subscription_id = ?%d", nb);
	}
	if (q->event) {
		b[nb++] = (struct bind){.text = q->event, .is_text = 1};
		off += (size_t)snprintf(sql + off, sizeof(sql) - off,
		                        " AND d.event_seq = (SELECT seq FROM events WHERE id = ?%d)", nb);
	}
	if (q->status >= 0) {
		/* A literal, not a parameter, so that SQLite can use the partial indexes on
		 * pending and failed rows (q->status is 0, 1 or 2). */
		off += (size_t)snprintf(sql + off, sizeof(sql) - off, " AND d.state = %d", q->status);
	}
	b[nb++] = (struct bind){.num = list_below(q->after, atomic_load(&s->synced_delivery))};
	off += (size_t)snprintf(sql + off, sizeof(sql) - off, " AND d.id < ?%d", nb);
	b[nb++] = (struct bind){.num = q->limit + 1};
	snprintf(sql + off, sizeof(sql) - off, " ORDER BY d.id DESC LIMIT ?%d", nb);
	return run_text_list(s, sql, b, nb, delivery_text, q->limit, 0, out);
}
