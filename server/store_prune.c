/*
 * store_prune.c - retention: events past it deleted with their deliveries and attempts,
 * by STORE_PRUNE calls on the writer thread.
 *
 * Invariants:
 * - with a retention, events older than it are deleted PRUNE_CHUNK per STORE_PRUNE call,
 *   oldest first, with their deliveries and attempts; an event with a pending delivery
 *   (in flight, retrying or held) is kept, and looked at again a minute later. The
 *   newest event and the one holding the newest delivery are never deleted, so that no
 *   id is handed out twice (prune_newest). A prune is queued after a COMMIT once
 *   prune.next_at has passed; the dispatcher's claims commit at least once a second, so
 *   an idle relay prunes too.
 */

#include "store_internal.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>

#include "clock.h"

#define PRUNE_CHUNK 200         /* events (with their deliveries and attempts) deleted per
                                   batch, at most */
#define PRUNE_ROWS 4000         /* rows deleted per batch, about (a chunk stops past it) */
#define PRUNE_EVERY_MS 1000     /* how often to look for events past the retention */
#define PRUNE_REVISIT_MS 60000  /* how often to look again at the events kept (or once
                                   per retention, if that is shorter) */
#define PRUNE_AHEAD_MS 60000    /* an event stamped more than this after now was stamped
                                   with the clock ahead: kept, and looked past */

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
		if (store_step_done(s->st[deletes[i]]) != 0)
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
enum store_rc store_apply_prune(struct store *s, struct store_call *call)
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
		return store_fail_storage(s, call);
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
		return store_fail_storage(s, call);
	while (done < n && rows < PRUNE_ROWS) {
		int r = ahead[done] ? 0 : prune_event(s, seqs[done], never);
		if (r < 0)
			return store_fail_storage(s, call);
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
void store_prune_schedule(struct store *s)
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
		store_queue_own_call(s, &s->prune.call, STORE_PRUNE, prune_done, &s->prune.queued);
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
	store_prune_schedule(s);
}
