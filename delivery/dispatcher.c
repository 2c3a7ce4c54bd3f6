/*
 * dispatcher.c - the delivery engine: one thread that claims due jobs from the store,
 * runs them through the curl-multi sender, decides each outcome and hands the results
 * back to the store in batches.
 *
 * One turn of the loop:
 *   1. take    if the store has answered our claim, start every job it leased; a full
 *              claim means more may be waiting, so the next claim is due at once;
 *   2. perform move every transfer forward (curl_multi_perform);
 *   3. collect turn each finished transfer into a result (outcome decided here) and
 *              hand them all to store->complete in ONE call. While no work is known to
 *              be due (a trickle of events, each claimed as it comes), the results wait
 *              to go with the next claim, in its writer batch, or until the oldest has
 *              waited DISPATCH_RESULT_HOLD_MS: sent each turn, they cost the writer a
 *              transaction of their own. Under a backlog, or while the last claim
 *              found a subscription without room, they go at once: the writer applies
 *              them while a claim is out (rather than in front of the next one), and
 *              wakes us for the room they free (held, a full subscription waited
 *              for the hold: row 4 lost ~10%). So does the result of a job that left
 *              its subscription full (max_in_flight 1, say): an event published
 *              meanwhile wakes nobody, and waited for the hold (~12 ms against 1.5);
 *   4. claim   if no claim is out, there is room (in flight < max_in_flight) and work
 *              may be due (dispatcher_wake() was called, or now >= next_due), ask the
 *              store for up to the room. The claim is queued behind the completions
 *              just handed over, so it sees the room they gave back; its answer arrives
 *              on the writer thread and wakes us, and we do not wait for it;
 *   5. wait    curl_multi_poll until a socket is ready, a wake, curl's own timer,
 *              next_due, or DISPATCH_WAIT_MAX_MS, whichever is first.
 *
 * Invariants:
 * - The dispatcher thread is the only thread that touches the sender and so any curl
 *   handle, except dispatcher_wake() and on_claimed() (curl_multi_wakeup is
 *   thread-safe; the loop ends only after on_claimed has returned), and the main
 *   thread creating the sender before pthread_create and freeing it after pthread_join.
 * - Every job claimed yields exactly one result passed to complete(), including at
 *   shutdown (DELIVERY_RELEASED), so the store never keeps a lease we forgot. Results
 *   the store cannot take (complete() says -1, out of memory) are held and handed over
 *   again; only at the very end of a stop are they dropped, as the leases end there.
 * - next_due is never more than DISPATCH_RECLAIM_MS ahead: the store's next_due only
 *   knows what it had committed at claim time (results we complete are written later
 *   by the writer), so an idle dispatcher still looks again once a second.
 * - After a claim error no claim is made before claim_retry_at (200 ms doubling to 5 s).
 * - At most one claim is out at a time, asked for no more than the room at the time;
 *   transfers only finish while it is out, so its jobs always fit. d->claim belongs to
 *   the store from claim() until done() sets claim_answered, then to us again.
 * - The loop does not end while a claim is out: its jobs are started (and released at
 *   the deadline) like any others.
 * - claim_cb_done is 0 only from ask_claim until the on_claimed of that same claim has
 *   returned: take_claim waits for it (on_claimed is then between its last two lines,
 *   microseconds) before the claim is ours, so a claim asked right after can never
 *   have its flag set by the one before, and the loop ending after the last claim is
 *   taken never frees d under an on_claimed still running.
 *
 * The thread runs opts.nice lower in CPU priority than the rest of the process. Events
 * are accepted on other threads, and a publisher waits for its answer while a delivery
 * can wait: on a machine with no CPU to spare, publishing took 31,300 events/s beside
 * deliveries at equal priority and 35,900 at nice +10 (averages of three runs); deliveries
 * catch up once the CPU is free, and on a machine with CPU to spare nothing changes.
 *
 * Threads: dispatcher_start and the stop (dispatcher_stop, _stop_for, _hurry) on the
 * main thread; dispatcher_wake and the
 * claim's done() on any thread (atomics and curl_multi_wakeup only); everything else on
 * the dispatcher thread.
 */
#include "dispatcher.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "clock.h"
#include "sender.h"

#define DISPATCH_WAIT_MAX_MS 1000       /* longest single curl_multi_poll */
#define DISPATCH_RECLAIM_MS 1000        /* longest time between claims while there is room */
#define DISPATCH_CLAIM_BACKOFF_MIN 200  /* ms after the first failed claim */
#define DISPATCH_CLAIM_BACKOFF_MAX 5000 /* ms between claims while the store keeps failing */
#define DISPATCH_ERROR_PAUSE_MS 100     /* ms to sleep when curl_multi_poll itself fails */
#define DISPATCH_RESULT_HOLD_MS 10      /* longest a result waits to go with a claim */

struct dispatcher {
	struct dispatcher_options opts;     /* copy; the pointers inside are borrowed */
	const struct delivery_store *store; /* borrowed */
	struct sender *sender;              /* dispatcher thread only (see invariants) */
	struct delivery_result **batch;     /* max_in_flight slots: one turn's results */
	pthread_t thread;
	struct delivery_claim claim;     /* the claim request (see invariants) */
	atomic_int claim_answered;       /* 1 once the store has filled in d->claim */
	atomic_int claim_cb_done;        /* 0 while on_claimed may still touch d */
	atomic_int woken;                /* 1 after dispatcher_wake(), until the next claim */
	atomic_int stopping;             /* 1 once the stop has begun */
	_Atomic int64_t stop_at_mono_ms; /* monotonic ms: in-flight transfers end by then */
	uint64_t rng;                    /* xorshift64* state; dispatcher thread only */
	/* The hosts a claim is told about (claim.hosts points here until it is answered);
	 * their keys live one after another in host_keys. */
	struct delivery_host_room *host_rooms;
	int host_rooms_cap;
	char *host_keys;
	size_t host_keys_len, host_keys_cap;
	int host_keys_short; /* 1 if memory ran out while they were listed */
};

/* State of the loop, all on the dispatcher thread. */
struct loop {
	int64_t next_due;       /* unix ms: claim once now >= next_due and there is room */
	int64_t retry_due;      /* unix ms: earliest retry collected since the last claim was
	                           taken; INT64_MAX if none (see take_claim) */
	int64_t claim_retry_at; /* monotonic ms: no claim before this after a claim error */
	int claim_backoff;      /* ms; 0 while claims succeed */
	int n;                  /* results in d->batch not yet handed to the store; with
	                           the transfers in flight, never more than max_in_flight */
	int64_t held_since;     /* monotonic ms the oldest of those n was collected */
	int claim_out;          /* a claim was asked for and its answer not yet taken */
	int host_full;          /* the last claim left due work for want of host room:
	                           claim again once a request ends */
	int sub_full;           /* the last claim found a subscription without room, or
	                           left due work: results go to the store at once */
	int frees_full;         /* a result held frees room of a subscription that was at
	                           its max_in_flight: it goes to the store at once */
	int ended_meanwhile;    /* a request ended while the claim out was being answered
	                           (the room it gave a host is not in that answer) */
	int complete_failing;   /* the store could not take the last results (out of
	                           memory): they are held, and go again at complete_retry_at */
	int64_t complete_retry_at; /* monotonic ms */
};

static uint64_t rng_next(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void rng_seed(struct dispatcher *d)
{
	uint64_t seed = 0;

	if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
		seed = (uint64_t)clock_mono_ms() ^ (uint64_t)(uintptr_t)d;
	d->rng = seed ? seed : 0x9E3779B97F4A7C15ULL; /* xorshift must not start at 0 */
}

static void pause_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Sets outcome, error text and next attempt time for one finished transfer. */
static void decide(struct dispatcher *d, const struct sender_done *done)
{
	struct delivery_result *r = done->result;
	int status = r->http_status;
	int64_t delay, next;

	if (done->complete && status >= 200 && status <= 299) {
		/* Delivered. The sender's note, if any, stays in the log: a body cut short or
		 * over 1 MiB is worth knowing about even when the status says yes. */
		r->outcome = DELIVERY_DELIVERED;
		return;
	}
	delay = backoff_delay_ms(d->opts.retry_schedule, d->opts.retry_count, r->attempt,
	                         rng_next(&d->rng));
	/* Counted from the end of the failed attempt: a slow failure must not eat the wait. */
	next = delay < 0 ? -1 : r->started_at_ms + r->duration_ms + delay;
	r->schedule_next_ms = next;
	if (done->complete && status == 410) {
		r->outcome = DELIVERY_GONE;
		snprintf(r->error, sizeof r->error, "HTTP 410: receiver says gone");
		return;
	}
	if (r->error[0] == '\0') { /* a whole response, but not one we accept */
		if (status >= 300 && status <= 399)
			snprintf(r->error, sizeof r->error, "redirect not followed (HTTP %d)",
			         status);
		else if (status > 0)
			snprintf(r->error, sizeof r->error, "HTTP %d", status);
		else
			snprintf(r->error, sizeof r->error, "no response");
	}
	if (delay < 0) {
		r->outcome = DELIVERY_FAILED;
		return;
	}
	if ((status == 429 || status == 503) && done->retry_after_ms > next)
		next = done->retry_after_ms;
	r->outcome = DELIVERY_RETRY;
	r->next_attempt_at_ms = next;
}

/* Hands the results held to the store. If it cannot take them (out of memory), they stay
 * held, leases and all, and go again DISPATCH_ERROR_PAUSE_MS later; meanwhile collect
 * takes no more than the batch holds, so the rest wait in the sender. Returns 0 when
 * none are held after. */
static int batch_flush(struct dispatcher *d, struct loop *lp)
{
	int64_t mono;

	if (lp->n == 0) {
		lp->frees_full = 0;
		return 0;
	}
	mono = clock_mono_ms();
	if (lp->complete_failing && mono < lp->complete_retry_at)
		return -1;
	if (d->store->complete(d->store->ctx, d->batch, lp->n) != 0) {
		if (!lp->complete_failing)
			fprintf(stderr,
			        "hookrelay: dispatcher: the store cannot take %d results (out of "
			        "memory); "
			        "they are held and handed over again\n",
			        lp->n);
		lp->complete_failing = 1;
		lp->complete_retry_at = mono + DISPATCH_ERROR_PAUSE_MS;
		return -1;
	}
	if (lp->complete_failing)
		fprintf(stderr, "hookrelay: dispatcher: the store takes results again\n");
	lp->complete_failing = 0;
	lp->frees_full = 0;
	lp->n = 0;
	return 0;
}

/* At the stop: results the store cannot take are dropped. Their leases end with the
 * process, and the next start sends those deliveries again (at least once). */
static void batch_flush_or_drop(struct dispatcher *d, struct loop *lp)
{
	lp->complete_retry_at = 0; /* one more try now */
	if (batch_flush(d, lp) == 0)
		return;
	fprintf(stderr,
	        "hookrelay: dispatcher: stopping with %d results the store could not take; their "
	        "deliveries are sent again after the restart\n",
	        lp->n);
	for (int i = 0; i < lp->n; i++)
		delivery_result_free(d->batch[i]);
	lp->n = 0;
}

/* Moves finished transfers into the batch until none is left or the batch is full.
 * Returns 1 if finished transfers may remain (batch full), else 0. */
static int collect(struct dispatcher *d, struct loop *lp)
{
	struct sender_done done;

	while (lp->n < d->opts.max_in_flight) {
		if (!sender_next(d->sender, &done))
			return 0;
		if (lp->n == 0)
			lp->held_since = clock_mono_ms();
		if (lp->host_full)
			lp->next_due = 0; /* a host has room again: what waited for it may go */
		if (lp->claim_out)
			lp->ended_meanwhile = 1;
		/* unsent: its subscription changed while it waited, or an earlier request of
		 * it got no 2xx */
		if (done.released) {
			done.result->outcome = DELIVERY_RELEASED;
			done.result->next_attempt_at_ms = 0;
			delivery_job_free(done.job);
			d->batch[lp->n++] = done.result;
			continue;
		}
		decide(d, &done);
		if (done.job->fills_subscription)
			lp->frees_full = 1; /* an event published meanwhile waits for this room */
		/* A retry due sooner than our next look must not wait for it. The store makes
		 * a 410 or a Retry-After from a url the subscription has left a retry on the
		 * plain schedule instead: for a job whose subscription changed since, look
		 * then too (only then: a Retry-After heeded would bring a look for nothing; a
		 * change landing after this is met by the once-a-second look). */
		const struct delivery_result *r = done.result;
		int64_t at = r->outcome == DELIVERY_RETRY ? r->next_attempt_at_ms : INT64_MAX;
		if ((r->outcome == DELIVERY_RETRY || r->outcome == DELIVERY_GONE) &&
		    r->schedule_next_ms >= 0 && r->schedule_next_ms < at &&
		    !d->store->current(d->store->ctx, r->subscription_id, r->subscription_version))
			at = r->schedule_next_ms;
		if (at != INT64_MAX) {
			if (at < lp->next_due)
				lp->next_due = at;
			if (at < lp->retry_due)
				lp->retry_due = at;
		}
		delivery_job_free(done.job);
		d->batch[lp->n++] = done.result;
	}
	return 1;
}

/* The sender's still_wanted: a job made before its subscription changed is not sent. */
static int job_still_wanted(void *arg, const struct delivery_job *job)
{
	const struct delivery_store *store = arg;

	return store->current(store->ctx, job->subscription_id, job->subscription_version);
}

/* At the deadline: reports what finished, then every transfer left as RELEASED. */
static void release_all(struct dispatcher *d, struct loop *lp)
{
	struct sender_done done;

	while (collect(d, lp))
		batch_flush_or_drop(d, lp);
	for (;;) {
		if (lp->n == d->opts.max_in_flight)
			batch_flush_or_drop(d, lp);
		if (!sender_release(d->sender, &done))
			break;
		done.result->outcome = DELIVERY_RELEASED;
		done.result->next_attempt_at_ms = 0;
		delivery_job_free(done.job);
		d->batch[lp->n++] = done.result;
	}
	batch_flush_or_drop(d, lp);
}

static void claim_failed(struct loop *lp, int64_t mono, const char *why)
{
	if (lp->claim_backoff == 0)
		lp->claim_backoff = DISPATCH_CLAIM_BACKOFF_MIN;
	else if (lp->claim_backoff < DISPATCH_CLAIM_BACKOFF_MAX / 2)
		lp->claim_backoff *= 2;
	else
		lp->claim_backoff = DISPATCH_CLAIM_BACKOFF_MAX;
	lp->claim_retry_at = mono + lp->claim_backoff;
	fprintf(stderr, "hookrelay: dispatcher: %s; next claim in %d ms\n", why, lp->claim_backoff);
}

/* The store's done(): runs on the writer thread. */
static void on_claimed(struct delivery_claim *claim)
{
	struct dispatcher *d = claim->arg;

	atomic_store_explicit(&d->claim_answered, 1, memory_order_release);
	sender_wakeup(d->sender);
	atomic_store_explicit(&d->claim_cb_done, 1, memory_order_release); /* d is ours now */
}

/* sender_each_host's callback: one host for the claim (keys stored as offsets until the
 * list is complete, as the buffer may move while it grows). */
static void note_host(void *arg, const char *key, int used)
{
	struct dispatcher *d = arg;
	size_t len = strlen(key) + 1;
	int n = d->claim.nhosts;

	if (n == d->host_rooms_cap) {
		int cap = d->host_rooms_cap ? d->host_rooms_cap * 2 : 16;
		struct delivery_host_room *grown =
		    realloc(d->host_rooms, (size_t)cap * sizeof *grown);
		if (!grown) {
			d->host_keys_short = 1;
			return;
		}
		d->host_rooms = grown;
		d->host_rooms_cap = cap;
	}
	if (d->host_keys_len + len > d->host_keys_cap) {
		size_t cap = (d->host_keys_len + len) * 2;
		char *grown = realloc(d->host_keys, cap);
		if (!grown) {
			d->host_keys_short = 1;
			return;
		}
		d->host_keys = grown;
		d->host_keys_cap = cap;
	}
	memcpy(d->host_keys + d->host_keys_len, key, len);
	d->host_rooms[n].key = (const char *)(uintptr_t)d->host_keys_len;
	d->host_rooms[n].room = d->opts.max_per_host - used;
	d->host_keys_len += len;
	d->claim.nhosts = n + 1;
}

/* Tells the claim how much room each host with requests has left, so that the store
 * leases no more than a host can take: jobs beyond it would wait here holding slots of
 * max_in_flight, and one dead receiver could starve every other. Without the list (out
 * of memory) the claim has no host limit, as before. */
static void list_host_rooms(struct dispatcher *d, struct delivery_claim *c)
{
	d->host_keys_len = 0;
	d->host_keys_short = 0;
	c->nhosts = 0;
	sender_each_host(d->sender, note_host, d);
	if (d->host_keys_short) {
		c->nhosts = 0;
		return;
	}
	for (int i = 0; i < c->nhosts; i++)
		d->host_rooms[i].key = d->host_keys + (uintptr_t)d->host_rooms[i].key;
	c->hosts = d->host_rooms;
	c->per_host_max = d->opts.max_per_host;
}

static void ask_claim(struct dispatcher *d, struct loop *lp, int64_t now, int64_t mono)
{
	struct delivery_claim *c = &d->claim;

	memset(c, 0, sizeof(*c));
	c->now_ms = now;
	c->max = d->opts.max_in_flight - sender_in_flight(d->sender);
	c->in_flight_max = d->opts.max_in_flight;
	list_host_rooms(d, c);
	c->done = on_claimed;
	c->arg = d;
	c->count = -1;
	c->next_due_ms = INT64_MAX;
	atomic_store(&d->claim_answered, 0);
	atomic_store(&d->claim_cb_done, 0);
	atomic_store(&d->woken, 0); /* this claim sees everything committed before it */
	lp->claim_out = 1;
	if (d->store->claim(d->store->ctx, c) != 0) {
		atomic_store(&d->claim_cb_done, 1);
		lp->claim_out = 0;
		claim_failed(lp, mono, "claim could not be queued");
	}
}

/* A job the sender could not start (out of memory) goes back unsent, as at a stop: its
 * result ends the lease and the job is claimed again. Dropped without one, it stayed
 * leased until a restart: pending with no attempt, a manual retry answered 409, and its
 * subscription had one request fewer to send for good (at max_in_flight 1, none). There
 * is a slot in the batch: results held and requests in flight never pass max_in_flight,
 * and this job is neither. Only if even the result cannot be allocated does the lease
 * stay until restart. */
static void release_unstarted(struct dispatcher *d, struct loop *lp, struct delivery_job *job)
{
	struct delivery_result *r = lp->n < d->opts.max_in_flight ? calloc(1, sizeof(*r)) : NULL;

	if (r) {
		r->delivery_id = job->delivery_id;
		r->subscription_id = job->subscription_id;
		r->attempt = job->attempt;
		r->published_at_ms = job->published_at_ms;
		r->subscription_version = job->subscription_version;
		r->outcome = DELIVERY_RELEASED; /* no attempt is recorded */
		if (lp->n == 0)
			lp->held_since = clock_mono_ms();
		d->batch[lp->n++] = r;
	}
	delivery_job_free(job);
}

/* Starts the jobs of an answered claim. */
static void take_claim(struct dispatcher *d, struct loop *lp, int64_t now, int64_t mono)
{
	struct delivery_claim *c = &d->claim;
	int lost = 0;

	if (!lp->claim_out || !atomic_load_explicit(&d->claim_answered, memory_order_acquire))
		return;
	while (!atomic_load_explicit(&d->claim_cb_done, memory_order_acquire))
		sched_yield(); /* on_claimed still touches d: see the invariants */
	lp->claim_out = 0;
	lp->host_full = c->count >= 0 && c->host_full;
	lp->sub_full = c->count < 0 || c->sub_full;
	if (c->count < 0) {
		claim_failed(lp, mono, "claim failed (storage error)");
		return;
	}
	lp->claim_backoff = 0;
	for (int i = 0; i < c->count; i++) {
		if (!c->jobs[i])
			continue;
		if (sender_start(d->sender, c->jobs[i]) != 0) {
			release_unstarted(d, lp, c->jobs[i]);
			lost++;
		}
	}
	free(c->jobs);
	c->jobs = NULL;
	if (lost > 0)
		claim_failed(lp, mono, "out of memory starting transfers");
	/* A full claim means more may be waiting: look again as soon as there is room. The
	 * store's next_due leaves out a retry whose result shares the claim's batch (it is
	 * in flight until that batch commits), so the retries collected since the last
	 * claim count too. */
	lp->next_due = c->count >= c->max ? now : c->next_due_ms;
	if (lp->host_full && lp->ended_meanwhile)
		lp->next_due = now; /* the answer predates room a request gave back */
	lp->ended_meanwhile = 0;
	if (lp->retry_due < lp->next_due)
		lp->next_due = lp->retry_due;
	lp->retry_due = INT64_MAX;
	if (lp->next_due > now + DISPATCH_RECLAIM_MS)
		lp->next_due = now + DISPATCH_RECLAIM_MS;
}

static int wait_ms(struct dispatcher *d, const struct loop *lp, int stopping, int64_t now,
                   int64_t mono)
{
	int64_t t = DISPATCH_WAIT_MAX_MS;
	int64_t until;

	if (!stopping && !lp->claim_out && sender_in_flight(d->sender) < d->opts.max_in_flight) {
		until = lp->next_due - now;
		if (lp->claim_retry_at - mono > until)
			until = lp->claim_retry_at - mono;
		if (until < t)
			t = until;
	}
	if (stopping && atomic_load(&d->stop_at_mono_ms) - mono < t)
		t = atomic_load(&d->stop_at_mono_ms) - mono;
	if (stopping && lp->claim_out && sender_in_flight(d->sender) == 0)
		t = DISPATCH_WAIT_MAX_MS; /* only the claim's answer is left, and it wakes us */
	if (lp->n > 0) {
		int64_t flush_at = lp->complete_failing ? lp->complete_retry_at
		                                        : lp->held_since + DISPATCH_RESULT_HOLD_MS;
		if (flush_at - mono < t)
			t = flush_at - mono;
	}
	return t < 0 ? 0 : (int)t;
}

/* Adds nice to this thread's nice value (on Linux a thread's own; 19 at most). A
 * failure only costs the priority, and is said once. */
static void lower_priority(int nice)
{
	id_t tid = (id_t)syscall(SYS_gettid);
	int now;

	if (nice <= 0)
		return;
	errno = 0;
	now = getpriority(PRIO_PROCESS, tid);
	if (now == -1 && errno != 0)
		now = 0;
	if (setpriority(PRIO_PROCESS, tid, now + nice > 19 ? 19 : now + nice) != 0)
		fprintf(stderr,
		        "hookrelay: dispatcher: could not lower its CPU priority by %d: %s\n", nice,
		        strerror(errno));
}

static void *dispatcher_main(void *arg)
{
	struct dispatcher *d = arg;
	struct loop lp = {.retry_due = INT64_MAX};
	int more, stopping, claim_now, poll_failed = 0;
	int64_t now, mono;

	rng_seed(d);
	lower_priority(d->opts.nice);
	for (;;) {
		now = clock_now_ms();
		mono = clock_mono_ms();
		stopping = atomic_load(&d->stopping);

		take_claim(d, &lp, now, mono);
		/* A wake while a claim is out stays set: that claim may not have seen it. */
		if (!stopping && !lp.claim_out && atomic_load(&d->woken))
			lp.next_due = now;
		if (lp.next_due > now + DISPATCH_RECLAIM_MS) /* the wall clock went back */
			lp.next_due = now + DISPATCH_RECLAIM_MS;
		/* Past the stop's deadline, jobs a late claim just started are put back before
		 * curl sends a byte of them. */
		if (stopping && mono >= atomic_load(&d->stop_at_mono_ms))
			release_all(d, &lp);

		sender_perform(d->sender); /* a failure here shows up again in sender_wait */
		more = collect(d, &lp);

		claim_now = !stopping && !lp.claim_out &&
		            sender_in_flight(d->sender) < d->opts.max_in_flight &&
		            now >= lp.next_due && mono >= lp.claim_retry_at;
		/* now >= next_due covers a claim made now: its results go in front of it */
		if (more || stopping || now >= lp.next_due || lp.sub_full || lp.frees_full ||
		    (lp.n > 0 && clock_mono_ms() - lp.held_since >= DISPATCH_RESULT_HOLD_MS))
			batch_flush(d, &lp);
		if (claim_now)
			ask_claim(d, &lp, now, mono);

		if (stopping) {
			if (mono >= atomic_load(&d->stop_at_mono_ms))
				release_all(d, &lp);
			if (sender_in_flight(d->sender) == 0 && !lp.claim_out) {
				batch_flush_or_drop(d, &lp);
				break; /* every claim is taken, and its on_claimed has returned */
			}
		}
		if (more && lp.n < d->opts.max_in_flight)
			continue; /* more finished transfers wait (unless the store took none) */
		if (sender_wait(d->sender,
		                wait_ms(d, &lp, stopping, clock_now_ms(), clock_mono_ms())) != 0) {
			if (!poll_failed)
				fprintf(stderr, "hookrelay: dispatcher: curl_multi_poll failed\n");
			poll_failed = 1;
			pause_ms(DISPATCH_ERROR_PAUSE_MS);
		} else {
			poll_failed = 0;
		}
	}
	return NULL;
}

static void dispatcher_free(struct dispatcher *d)
{
	if (!d)
		return;
	sender_free(d->sender);
	free(d->batch);
	free(d->host_rooms);
	free(d->host_keys);
	free(d);
}

struct dispatcher *dispatcher_start(const struct dispatcher_options *opts,
                                    const struct delivery_store *store)
{
	struct dispatcher *d = NULL;
	struct dispatcher *ret = NULL;
	struct sender_options so;
	int err;

	if (opts->max_in_flight < 1 || opts->max_per_host < 1 || opts->timeout_ms < 1 ||
	    opts->retry_count < 0 || (opts->retry_count > 0 && !opts->retry_schedule) ||
	    !opts->user_agent || !store || !store->claim || !store->complete) {
		fprintf(stderr, "hookrelay: dispatcher: invalid options\n");
		goto out;
	}
	d = calloc(1, sizeof *d);
	if (d)
		d->batch = calloc((size_t)opts->max_in_flight, sizeof *d->batch);
	if (!d || !d->batch) {
		fprintf(stderr, "hookrelay: dispatcher: out of memory\n");
		goto out;
	}
	d->opts = *opts;
	d->store = store;
	atomic_init(&d->woken, 0);
	atomic_init(&d->claim_answered, 0);
	atomic_init(&d->claim_cb_done, 1);
	atomic_init(&d->stopping, 0);
	atomic_init(&d->stop_at_mono_ms, INT64_MAX);
	memset(&so, 0, sizeof so);
	/* Connections: those in flight, and idle ones kept for the next requests to their
	 * receivers. With none idle while every slot is busy, a request to a receiver other
	 * than the one just answered closed that one's connection to open its own: with the
	 * claim's shares, 50 backlogged receivers got 5,053 connections for 10,000
	 * deliveries, and with max_in_flight idle, 518 for 20,000. Receivers taking turns
	 * need one each: 600 of them with max_in_flight (256) idle opened one per delivery
	 * (2,400 of 2,400, a TLS handshake each over https), with 1,024 idle, 600. */
	so.max_total = opts->max_in_flight + opts->max_idle_connections;
	so.max_per_host = opts->max_per_host;
	so.timeout_ms = opts->timeout_ms;
	so.user_agent = opts->user_agent;
	so.ca_file = opts->ca_file;
	so.targets = opts->targets;
	if (store->current) {
		so.still_wanted = job_still_wanted;
		so.still_wanted_arg = (void *)store;
	}
	d->sender = sender_new(&so);
	if (!d->sender)
		goto out; /* sender_new said why */
	err = pthread_create(&d->thread, NULL, dispatcher_main, d);
	if (err != 0) {
		fprintf(stderr, "hookrelay: dispatcher: cannot start thread: %s\n", strerror(err));
		goto out;
	}
	pthread_setname_np(d->thread, "hr-dispatch");
	ret = d;
	d = NULL;
out:
	dispatcher_free(d);
	return ret;
}

void dispatcher_wake(struct dispatcher *d)
{
	atomic_store(&d->woken, 1);
	sender_wakeup(d->sender);
}

/* ThreadSanitizer does not intercept pthread_clockjoin_np: it would never see the join,
 * and report every access after it (dispatcher_free) as a race. Its build (make tsan)
 * joins by the wall clock with pthread_timedjoin_np, which it does see. */
#if defined(__SANITIZE_THREAD__)
#define STOP_JOIN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define STOP_JOIN_TSAN 1
#endif
#endif
#ifdef STOP_JOIN_TSAN
#define STOP_JOIN_CLOCK CLOCK_REALTIME
#define stop_join(thread, until) pthread_timedjoin_np((thread), NULL, (until))
#else
#define STOP_JOIN_CLOCK CLOCK_MONOTONIC /* a step of the wall clock does not move it */
#define stop_join(thread, until) pthread_clockjoin_np((thread), NULL, CLOCK_MONOTONIC, (until))
#endif

int dispatcher_stop_for(struct dispatcher *d, int deadline_ms, int wait_ms)
{
	struct timespec until;

	if (!atomic_load(&d->stopping)) {
		atomic_store(&d->stop_at_mono_ms,
		             clock_mono_ms() + (deadline_ms > 0 ? deadline_ms : 0));
		atomic_store(&d->stopping, 1);
		sender_wakeup(d->sender);
	}
	clock_gettime(STOP_JOIN_CLOCK, &until);
	until.tv_sec += wait_ms / 1000;
	until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	if (stop_join(d->thread, &until) != 0)
		return 0;
	dispatcher_free(d);
	return 1;
}

void dispatcher_hurry(struct dispatcher *d)
{
	int64_t now = clock_mono_ms();
	if (atomic_load(&d->stop_at_mono_ms) > now) /* only ever earlier */
		atomic_store(&d->stop_at_mono_ms, now);
	sender_wakeup(d->sender);
}

void dispatcher_stop(struct dispatcher *d, int deadline_ms)
{
	if (!d)
		return;
	while (!dispatcher_stop_for(d, deadline_ms, 1000))
		;
}
