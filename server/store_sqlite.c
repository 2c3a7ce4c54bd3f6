/*
 * store_sqlite.c - the store on SQLite: open, close and migrations, the writer's batch
 * function (with the ingest it runs most), the syncer's half, and the checkpointer. The
 * rest of the store is in store_read.c (the read routes' queries), store_subs.c (the
 * subscription cache and calls), store_claim.c (the delivery_store the dispatcher claims
 * from) and store_prune.c (retention); store_internal.h is what they share.
 *
 * Threads and connections:
 * - `wdb`, its prepared statements, the subscription cache and the matcher belong to the
 *   writer thread (and to store_open/store_close before/after it runs).
 * - The syncer thread only calls fdatasync on `wal_fd` (its own descriptor of the WAL),
 *   times it into counters.wal_sync, and calls the due hook.
 * Durability: wdb runs with synchronous=NORMAL, so COMMIT writes the WAL without
 *   syncing it; a batch with a durable call is answered only after the syncer's
 *   fdatasync of the WAL that began after that COMMIT (what synchronous=FULL would have
 *   done in the writer, but the writer runs the next batch meanwhile). If the WAL cannot
 *   be opened for that, wdb falls back to synchronous=FULL for durable batches.
 *   wdb writes through wal_vfs.h, so a COMMIT reaches the WAL in one write per 96 KiB,
 *   not two per page; the other connections use the default VFS.
 */

#include "store_internal.h"

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
#include "matcher.h"
#include "histogram.h"
#include "schema.h"
#include "wal_vfs.h"
#include "writer.h"

#define WRITER_BATCH_MAX 4096   /* calls per transaction */

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

#define STORE_LOCK_WAIT_MS 5000 /* the writer waits this long for the database's write lock */
#define STORE_LOCK_RETRY_MS 250 /* ... and this long after a batch has failed */

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

/* ---------- small SQLite helpers ---------- */

int store_exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
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

void store_bind_text_or_null(sqlite3_stmt *st, int i, const char *text)
{
	if (text)
		sqlite3_bind_text(st, i, text, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, i);
}

const char *store_column_text(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

/* Runs a prepared statement that returns no rows to be read; resets it. */
int store_step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/* Runs one parameterless-but-id statement: "... WHERE subscription_id = ?1" style. */
int store_exec_with_id_time(struct store *s, const char *sql, int64_t id, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;
	if (sqlite3_prepare_v2(s->wdb, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_bind_parameter_count(st) >= 2)
		sqlite3_bind_int64(st, 2, now);
	rc = store_step_done(st);
out:
	sqlite3_finalize(st);
	return rc;
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

enum store_rc store_fail_storage(struct store *s, struct store_call *call)
{
	const char *msg = write_error(s);

	snprintf(call->why, sizeof(call->why), "storage error: %s",
	         msg ? msg : "a statement failed");
	return STORE_ERR;
}

/* The statement of k of kind's rows (1 <= k <= STORE_ROWS_MAX), from cache[k - 1] or
 * prepared into it. NULL if SQLite cannot prepare it. */
static sqlite3_stmt *rows_stmt(struct store *s, sqlite3_stmt **cache, const struct store_rows *kind,
                               int k)
{
	if (cache[k - 1])
		return cache[k - 1];
	size_t head_len = strlen(kind->head), row_len = strlen(kind->row);
	char *sql = malloc(head_len + (size_t)k * (row_len + 2) + 1);
	if (!sql)
		return NULL;
	char *at = sql;
	memcpy(at, kind->head, head_len);
	at += head_len;
	for (int i = 0; i < k; i++) {
		if (i > 0) {
			*at++ = ',';
			*at++ = ' ';
		}
		memcpy(at, kind->row, row_len);
		at += row_len;
	}
	*at = '\0';
	if (sqlite3_prepare_v3(s->wdb, sql, -1, SQLITE_PREPARE_PERSISTENT, &cache[k - 1], NULL) !=
	    SQLITE_OK)
		cache[k - 1] = NULL;
	free(sql);
	return cache[k - 1];
}

int store_rows_insert(struct store *s, sqlite3_stmt **cache, const struct store_rows *kind, int n,
                      void *arg)
{
	for (int done = 0; done < n;) {
		int k = n - done; /* all up to 8, else 64, 32, 16 or 8: at most 11 statements */
		if (k > 8)
			k = k >= 64 ? 64 : k >= 32 ? 32 : k >= 16 ? 16 : 8;
		sqlite3_stmt *st = rows_stmt(s, cache, kind, k);
		if (!st)
			return -1;
		for (int i = 0; i < k; i++)
			kind->bind(st, i * kind->params, done + i, arg);
		if (store_step_done(st) != 0)
			return -1;
		done += k;
	}
	return 0;
}

static void rows_finalize(sqlite3_stmt **cache)
{
	for (int i = 0; i < STORE_ROWS_MAX; i++)
		sqlite3_finalize(cache[i]);
}

/* A delivery row apply_ingest gathered: event seq, subscription id, and when it was
 * made (due then). */
static void bind_delivery_row(sqlite3_stmt *st, int p, int i, void *arg)
{
	const int64_t *row = ((const struct store *)arg)->rows_pending + 3 * i;
	sqlite3_bind_int64(st, p + 1, row[0]);
	sqlite3_bind_int64(st, p + 2, row[1]);
	for (int j = 3; j <= 5; j++)
		sqlite3_bind_int64(st, p + j, row[2]);
}

static const struct store_rows delivery_rows = {
    .head = "INSERT OR FAIL INTO deliveries(event_seq, subscription_id, state, attempt_count,"
            " next_attempt_at, created_at, updated_at) VALUES ",
    .row = "(?, ?, 0, 0, ?, ?, ?)",
    .params = 5,
    .bind = bind_delivery_row,
};

/* Inserts the delivery rows apply_ingest has gathered. 0, or -1 on a storage error (the
 * rows are dropped either way: their batch fails with them). */
static int rows_flush(struct store *s)
{
	int n = s->nrows_pending;

	s->nrows_pending = 0;
	if (n == 0)
		return 0;
	if (store_rows_insert(s, s->delivery_rows, &delivery_rows, n, s) != 0)
		return -1;
	s->batch_top_delivery = sqlite3_last_insert_rowid(s->wdb);
	return 0;
}

/* Looks ev's idempotency key up: SQLITE_ROW with ev's id, deliveries and replayed set
 * to the stored event's, SQLITE_DONE if none has it, or an error. */
static int idem_lookup(struct store *s, struct store_event *ev)
{
	sqlite3_stmt *st = s->st[ST_IDEM_LOOKUP];
	sqlite3_bind_text(st, 1, ev->idempotency_key, -1, SQLITE_STATIC);
	int step = sqlite3_step(st);
	if (step == SQLITE_ROW) {
		const char *stored = store_column_text(st, 0);
		if (!stored)
			step = SQLITE_NOMEM;
		else
			snprintf(ev->id, sizeof(ev->id), "%s", stored);
		ev->deliveries = sqlite3_column_int(st, 1);
		ev->replayed = 1;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return step;
}

static enum store_rc apply_ingest(struct store *s, struct store_call *call, int *made_due)
{
	int64_t now = clock_now_ms();

	for (size_t i = 0; i < call->nevents; i++) {
		struct store_event *ev = &call->events[i];
		int n;

		if (ev->idempotency_key) {
			int step = idem_lookup(s, ev);
			/* It counted a stored event's deliveries, and an earlier call of this batch
			 * may have made that event (a batch's own ids differ, ingest.c) with rows
			 * not inserted yet: count again after they are. Flushing before every
			 * lookup gave a batch whose items all have ids a statement per event. */
			if (step == SQLITE_ROW && s->nrows_pending > 0) {
				if (rows_flush(s) != 0)
					goto fail;
				step = idem_lookup(s, ev);
			}
			if (step == SQLITE_ROW)
				continue;
			if (step != SQLITE_DONE)
				goto fail;
		}

		sqlite3_stmt *ins = s->st[ST_EVENT_INSERT];
		sqlite3_bind_text(ins, 1, ev->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 2, ev->type, -1, SQLITE_STATIC);
		store_bind_text_or_null(ins, 3, ev->key);
		store_bind_text_or_null(ins, 4, ev->idempotency_key);
		sqlite3_bind_int64(ins, 5, ev->created_at_ms);
		sqlite3_bind_blob(ins, 6, ev->envelope, (int)ev->envelope_len, SQLITE_STATIC);
		if (store_step_done(ins) != 0)
			goto fail;
		int64_t seq = sqlite3_last_insert_rowid(s->wdb);
		if (seq > s->batch_top_seq)
			s->batch_top_seq = seq;
		s->batch_new_events++;

		n = matcher_match(s->matcher, ev->type, &s->match_ids, &s->match_cap);
		if (n < 0)
			goto fail;
		int made = 0;
		for (int k = 0; k < n; k++) {
			struct sub_entry *sub = store_sub_find(s, s->match_ids[k]);
			/* disabled by a result earlier in this batch: the matcher learns after
			 * the COMMIT, and a disabled subscription gets no new deliveries */
			if (sub && sub->disabled_in_batch == s->batch_no)
				continue;
			made++;
			if (s->nrows_pending == STORE_ROWS_MAX && rows_flush(s) != 0)
				goto fail;
			int64_t *row = s->rows_pending + 3 * s->nrows_pending++;
			row[0] = seq;
			row[1] = s->match_ids[k];
			row[2] = now;
			/* A subscription with all the leases it may hold gets no claim now: the
			 * completion that gives it room wakes the dispatcher. Under a backlog
			 * that spares a claim and a wake-up per event. */
			if (!sub || sub->leased < store_sub_lease_max(sub, now))
				*made_due = 1;
			if (sub && seq > sub->newest_seq)
				sub->newest_seq = seq;
			if (sub)
				store_sub_ask(s, sub);
		}
		ev->deliveries = made;
		ev->replayed = 0;
		s->batch_pending += made;
	}
	return STORE_OK;
fail:
	return store_fail_storage(s, call);
}

/* Queues one of the store's own calls (writer thread, or store_open before any call)
 * unless *queued says it is in the queue already. must: internal work is not refused
 * for a full queue. */
void store_queue_own_call(struct store *s, struct store_call *c, enum store_call_kind kind,
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

static void call_due_hook(struct store *s);

/* After the whole batch rolled back: what a claim in it learned of due deliveries (and
 * the jobs it took and gave back) is no longer known to be true. */
static void subs_look_all(struct store *s)
{
	for (size_t k = 0; k < s->nsubs; k++)
		s->subs[k].look = 1;
	store_quiet_clear_all(s);
}

/* A claim of a batch that rolled back may have wished for events that never were: no
 * sync would pass that wish, and smaller ones would be absorbed by it. */
static void forget_rolled_back_wish(struct store *s)
{
	int64_t committed = atomic_load(&s->committed_seq);
	int64_t w = atomic_load(&s->wake_when_synced);

	while (w > committed && !atomic_compare_exchange_weak(&s->wake_when_synced, &w, committed))
		;
	if (store_take_wake_wish(s, atomic_load(&s->synced_seq)))
		call_due_hook(s);
}

static int set_journal_limit(struct store *s, int64_t bytes, char *err, size_t errlen)
{
	char sql[64];
	snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit=%lld", (long long)bytes);
	if (store_exec_sql(s->wdb, sql, err, errlen) != 0)
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
	store_exec_sql(s->wdb,
	               durable && s->synchronous_full ? "PRAGMA synchronous=FULL"
	                                              : "PRAGMA synchronous=NORMAL",
	               NULL, 0);
	s->sync_now = durable;
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
		usleep(STORE_RETRY_PAUSE_MS * 1000); /* storage was failing: do not spin */
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
	if (!changed || store_step_done(s->st[ST_BEGIN]) != 0)
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
		/* The delivery rows of the ingest calls before this one go in first: this call
		 * may read deliveries, and its savepoint must not take them back. Rows or a
		 * savepoint that cannot be written, rolled back to or released (the disk, say)
		 * fail the whole batch: else a failed call's writes could be committed. */
		if (guarded && (rows_flush(s) != 0 || store_step_done(s->st[ST_SAVEPOINT]) != 0)) {
			c->rc = STORE_OK; /* not run: answered "storage unavailable" below */
			goto abandon;
		}
		int64_t pending_before = s->batch_pending;
		int64_t top_delivery_before = s->batch_top_delivery;
		size_t span = c->kind == STORE_COMPLETE
		                  ? (size_t)((struct complete_args *)c->internal)->n
		                  : 1; /* its entries in changed[] */
		if (guarded) /* from 0 at each call */
			sqlite3_db_status(s->wdb, SQLITE_DBSTATUS_CACHE_SPILL, &spill_now,
			                  &spill_high, 1);
		s->ncall_disabled = 0;
		switch (c->kind) {
		case STORE_INGEST:
			c->rc = apply_ingest(s, c, &made_due);
			break;
		case STORE_SUB_CREATE:
			c->rc = store_apply_sub_create(s, c, slot);
			break;
		case STORE_SUB_UPDATE:
			c->rc = store_apply_sub_update(s, c, slot, &made_due);
			break;
		case STORE_SUB_DELETE:
			c->rc = store_apply_sub_delete(s, c, slot);
			break;
		case STORE_SUB_ROTATE:
			c->rc = store_apply_sub_rotate(s, c, slot);
			break;
		case STORE_SUB_RECOVER:
			c->rc = store_apply_sub_recover(s, c, &made_due);
			break;
		case STORE_SUB_REPLAY:
			c->rc = store_apply_sub_replay(s, c, &made_due);
			break;
		case STORE_DELIVERY_RETRY:
			c->rc = store_apply_delivery_retry(s, c, &made_due);
			break;
		case STORE_CLAIM:
			c->rc = store_apply_claim(s, c);
			break;
		case STORE_COMPLETE:
			c->rc = store_apply_complete(s, c, slot, &made_due);
			break;
		case STORE_SWEEP:
			c->rc = store_apply_sweep(s, c);
			break;
		case STORE_PRUNE:
			c->rc = store_apply_prune(s, c);
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
			 * gives back (store_free_claim_jobs); and the calls after this one see what
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
			if (store_step_done(s->st[ST_ROLLBACK_TO]) != 0)
				goto abandon;
			if (c->kind == STORE_COMPLETE && store_health_reread(s, c->internal) != 0)
				goto abandon; /* its health writes went too */
			for (size_t k = 0; k < s->ncall_disabled; k++) { /* the disables went too */
				struct sub_entry *e = store_sub_find(s, s->call_disabled[k]);
				if (e)
					e->disabled_in_batch = 0;
			}
			s->batch_pending = pending_before;
			s->batch_top_delivery = top_delivery_before; /* its ids are free again */
			json_decref(c->result);
			c->result = NULL;
			if (c->kind == STORE_CLAIM)
				store_free_claim_jobs(s, c->internal);
		}
		if (guarded && store_step_done(s->st[ST_RELEASE]) != 0)
			goto abandon;
		if (sqlite3_get_autocommit(s->wdb)) {
			/* SQLite rolled the whole transaction back itself (disk full, I/O
			 * error): nothing of this batch is kept, so every call fails. */
			goto finish;
		}
	}
	if (rows_flush(s) == 0 && store_step_done(s->st[ST_COMMIT]) == 0) {
		committed = 1;
		goto finish;
	}
abandon: /* nothing of this batch is kept */
	batch_reason(s, changed, batch_why, sizeof(batch_why));
	if (!sqlite3_get_autocommit(s->wdb))
		store_exec_sql(s->wdb, "ROLLBACK", NULL, 0);
finish:
	s->nrows_pending = 0; /* the rows of a batch that failed went with it */
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
				store_free_claim_jobs(s, c->internal);
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
			store_count_results(s, calls[i]);
			break;
		case STORE_CLAIM:
			store_account_claimed(s, calls[i]);
			break;
		case STORE_SUB_DELETE: /* the first sweep finds out if any are left */
			if (store_sweep_add(s, calls[i]->id) != 0)
				fprintf(stderr, "hookrelay: out of memory: subscription %lld's pending"
				                " deliveries stay pending (held) until the next start\n",
				        (long long)calls[i]->id);
			break;
		case STORE_SWEEP:
			if (s->sweep.finished)
				store_sweep_remove(s, s->sweep.finished);
			break;
		case STORE_PRUNE:
			s->prune.pass = s->prune.next;
			break;
		default:
			break;
		}
	}
	store_sweep_schedule(s);
	store_prune_schedule(s);
	store_reload_changed(s, changed, nchanged);
	store_health_log_settled(s);
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
	else if (made_due || store_take_wake_wish(s, atomic_load(&s->synced_seq)))
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
	if (store_take_wake_wish(s, upto))
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
	store_prune_schedule(s);
}

/* The checkpointer thread, and store_open: makes the writer run store_prune_schedule soon
 * (one STORE_WAKE at a time; none once store_close has begun to stop the writer). */
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

		if (store_exec_sql(db, "BEGIN IMMEDIATE", err, errlen) != 0)
			return -1;
		if (read_int(db, "PRAGMA user_version", &version, err, errlen) != 0)
			goto fail;
		if (version >= schema_migration_count)
			break;
		snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", version + 1);
		if (store_exec_sql(db, schema_migrations[version], err, errlen) != 0 ||
		    store_exec_sql(db, bump, err, errlen) != 0 ||
		    store_exec_sql(db, "COMMIT", err, errlen) != 0)
			goto fail;
	}
	return store_exec_sql(db, "COMMIT", err, errlen);
fail:
	store_exec_sql(db, "ROLLBACK", NULL, 0);
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
	    store_exec_sql(s->wdb, "PRAGMA journal_mode=WAL", err, errlen) != 0 ||
	    store_exec_sql(s->wdb,
	                   s->synchronous_full ? "PRAGMA synchronous=FULL"
	                                       : "PRAGMA synchronous=NORMAL",
	                   err, errlen) != 0 ||
	    store_exec_sql(s->wdb, "PRAGMA cache_size=-16000", err, errlen) != 0 ||
	    store_exec_sql(s->wdb, "PRAGMA temp_store=MEMORY", err, errlen) != 0 ||
	    /* a deleted secret is overwritten, not left in a free page (Debian's SQLite does
	     * this by default; others do not) */
	    store_exec_sql(s->wdb, "PRAGMA secure_delete=ON", err, errlen) != 0 ||
	    /* A burst can outrun the checkpointer and grow the WAL far past CHECKPOINT_PAGES;
	     * without a limit the file keeps that size on disk after it is reset. */
	    set_journal_limit(s, WAL_SIZE_LIMIT, err, errlen) != 0 ||
	    migrate(s->wdb, err, errlen) != 0)
		goto fail;
	/* Older versions kept leases in the rows: what was in flight when one stopped is due
	 * again now. And secrets that sign nothing any more leave the file: those of
	 * subscriptions deleted before a delete took them along, and those past their
	 * grace (a rotation deletes them too, but there may be none for a long time). */
	if (store_exec_sql(s->wdb,
	                   "UPDATE deliveries SET leased = 0 WHERE state = 0 AND leased = 1", err,
	                   errlen) != 0)
		goto fail;
	if (store_exec_with_id_time(
	        s,
	        "DELETE FROM subscription_secrets WHERE (expires_at IS NOT"
	        " NULL AND expires_at <= ?2) OR subscription_id IN (SELECT id FROM"
	        " subscriptions WHERE deleted_at IS NOT NULL)",
	        0, clock_now_ms()) != 0) {
		snprintf(err, errlen, "deleting secrets that sign nothing: %s",
		         sqlite3_errmsg(s->wdb));
		goto fail;
	}
	if (sqlite3_create_function_v2(s->wdb, "in_flight", 1, SQLITE_UTF8 | SQLITE_DIRECTONLY, s,
	                               store_sql_in_flight, NULL, NULL, NULL) != SQLITE_OK) {
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
	                store_reload_subscription) != 0) {
		snprintf(err, errlen, "loading subscriptions: %s", sqlite3_errmsg(s->wdb));
		goto fail;
	}
	if (s->synchronous_full) {
		s->wal_fd = open_wal_for_sync(s);
		if (s->wal_fd >= 0 &&
		    store_exec_sql(s->wdb, "PRAGMA synchronous=NORMAL", err, errlen) != 0)
			goto fail;
	}
	if (init_seqs(s, err, errlen) != 0 || init_pending(s, err, errlen) != 0)
		goto fail;
	/* Deleted subscriptions whose sweep a stop or crash cut short. */
	if (for_each_id(s,
	                "SELECT id FROM subscriptions s WHERE deleted_at IS NOT NULL AND EXISTS"
	                " (SELECT 1 FROM deliveries WHERE subscription_id = s.id AND state = 0"
	                " AND leased = 0) ORDER BY id",
	                store_sweep_add) != 0) {
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
		store_exec_sql(s->ckpt_db, "PRAGMA journal_mode=WAL", NULL, 0);
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
	s->source.claim = store_source_claim;
	s->source.complete = store_source_complete;
	s->source.current = store_source_current;
	s->writer = writer_start(store_run_batch, store_sync, s,
	                         opts->max_queue ? opts->max_queue : 8192, WRITER_BATCH_MAX);
	if (!s->writer) {
		snprintf(err, errlen, "cannot start the writer thread");
		goto fail;
	}
	/* The sweep and prune due at open are queued by the end of this call's batch, on the
	 * writer thread: from here they raced the writer's own queuing after a batch the
	 * sweep had started (ThreadSanitizer, a restart after a DELETE with --retention). */
	wake_writer(s);
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
	rows_finalize(s->delivery_rows);
	rows_finalize(s->attempt_rows);
	for (int i = 0; i < s->nreaders; i++)
		sqlite3_close(s->readers[i]);
	for (size_t i = 0; i < s->nsubs; i++)
		store_sub_entry_clear(&s->subs[i]);
	if (s->subs)
		free(s->subs - s->subs_skip);
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
