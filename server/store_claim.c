/*
 * store_claim.c - the delivery_store for the dispatcher: claims, completions and the
 * subscriptions' health they track, the leases of deliveries in flight, and receiver
 * hosts for the claims' per-host limit. The source_* functions run on the dispatcher's
 * threads and queue calls; the rest runs on the writer thread.
 *
 * Durability:
 *   Claims take only deliveries of events up to synced_seq, which the syncer raises
 *   after each fdatasync: nothing is sent that a power cut could still take back. A
 *   claim that finds newer events asks for a wake after their sync (wake_when_synced).
 * Invariants:
 * - a delivery in the dispatcher's hands (claimed, its result not yet committed) is in
 *   s->leases, in memory only: a claim writes nothing, and a crash or a stop re-sends what
 *   was in flight. An id enters when its claim makes the job (and leaves again if that
 *   claim rolls back) and leaves after the COMMIT of its result, so no claim, sweep or
 *   retry can take a row whose attempt is still running or whose outcome may yet roll
 *   back. SQL sees the set as in_flight(id). The deliveries.leased column is no longer
 *   set (older versions set it; open clears it); it stays in the claim's WHERE because
 *   the partial index deliveries_due_by_sub is defined with it.
 */

#include "store_internal.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>

#include "clock.h"
#include "hash.h"
#include "histogram.h"
#include "rate_limit.h"
#include "util.h"
#include "writer.h"

/* ---------- leases: deliveries in the dispatcher's hands (writer thread) ---------- */

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

int store_lease_held(const struct store *s, int64_t id)
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
void store_sql_in_flight(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const struct store *s = sqlite3_user_data(ctx);

	(void)argc;
	sqlite3_result_int(ctx, store_lease_held(s, sqlite3_value_int64(argv[0])));
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
int store_host_intern(struct store *s, const char *key)
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

/* ---------- claims and completions (writer thread) ---------- */

/* Copies one claimed row into a job: the subscription from the cache, the envelope. */
static struct delivery_job *claim_job(struct store *s, sqlite3_stmt *row, const struct sub_entry *sub,
                                      int64_t now_ms)
{
	sqlite3_stmt *env = s->st[ST_ENVELOPE];
	struct delivery_job *job = NULL;
	char *secrets = sub_secrets_text(sub, now_ms);

	sqlite3_bind_int64(env, 1, sqlite3_column_int64(row, 1));
	int step = sqlite3_step(env);
	/* A failed read, or memory run out, fails the claim (retried), not an attempt: sent
	 * without its body, a job was signed over "" and a 2xx marked it delivered. */
	if (secrets && step == SQLITE_ROW) {
		const char *event_id = store_column_text(env, 0);
		const unsigned char *body = sqlite3_column_blob(env, 1);
		int len = sqlite3_column_bytes(env, 1);
		if (event_id) {
			job = delivery_job_new(sub->url, event_id,
			                       body ? body : (const unsigned char *)"", (size_t)len,
			                       secrets, sub->headers_json);
			if (job)
				job->published_at_ms = sqlite3_column_int64(env, 2);
		}
	} else if (secrets && step == SQLITE_DONE) {
		/* Its event pruned (no row): no event id, and the sender fails the attempt
		 * with a clear error. */
		job = delivery_job_new(sub->url, NULL, NULL, 0, secrets, sub->headers_json);
	}
	sqlite3_reset(env);
	free(secrets);
	if (job) {
		job->delivery_id = sqlite3_column_int64(row, 0);
		job->subscription_id = sqlite3_column_int64(row, 2);
		job->attempt = sqlite3_column_int(row, 3) + 1;
		job->subscription_version = sub->version;
		job->max_in_flight = sub->max_in_flight;
	}
	return job;
}

/*
 * A claim that runs while events are written but not yet on disk cannot send their
 * deliveries, and when their subscriptions looked full at ingest nothing else wakes the
 * dispatcher once they are synced: without this it found them only on its one-second
 * timer. The claim asks for a wake (wish_wake_when_synced); whoever raises synced_seq
 * past it takes the wish and wakes (store_take_wake_wish). The claim stores its wish before it
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
int store_take_wake_wish(struct store *s, int64_t synced)
{
	int64_t w = atomic_load(&s->wake_when_synced);

	while (w != 0 && w <= synced) {
		if (atomic_compare_exchange_weak(&s->wake_when_synced, &w, 0))
			return 1;
	}
	return 0;
}

/* The slots kept back from subscriptions with requests in flight (or failing), of a
 * cap of `max`: an eighth, at least one from a cap of 4 up (see store_apply_claim). */
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
 * stopped, each subscription up to its lease max (store_sub_lease_max: its
 * max_in_flight, or twice that while its receiver answers) and what its rate_limit has
 * left: one slow or dead receiver cannot take every slot. next_due is the earliest time one of
 * the subscriptions with room has a job due (and, if it is rate limited, a token).
 * A claim whose batch fails keeps the tokens it took: the limit errs on the slow side.
 */
enum store_rc store_apply_claim(struct store *s, struct store_call *call)
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
	 * subscription at its lease max gets its wake from a completion instead; one at
	 * its share, from any request's end: see host_full below). */
	for (size_t k = 0; k < nsubs && written > synced; k++) {
		const struct sub_entry *sub = &s->subs[k];
		int64_t newest = sub->newest_seq < written ? sub->newest_seq : written;
		if (sub->enabled && sub->disabled_in_batch != s->batch_no &&
		    sub->leased < store_sub_lease_max(sub, a->now_ms) && newest > missed)
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
		const int lease_max = store_sub_lease_max(sub, a->now_ms);
		int cap = pass < 2 && share < lease_max ? share : lease_max;
		int room = cap - sub->leased - sub->claimed;
		int want = room < a->max - a->njobs ? room : a->max - a->njobs;
		int step, before = a->njobs, more_due = 0;

		if (!sub->enabled || sub->disabled_in_batch == s->batch_no)
			continue; /* disabled: held */
		/* A job of it put back unsent is still leased until its batch commits, and
		 * this claim cannot see it: taking the next ones now sent them first. The
		 * commit wakes the dispatcher (made_due). */
		if (sub->releasing > 0) {
			a->sub_full = 1;
			continue;
		}
		if (room <= 0) {
			a->sub_full = 1;
			if (pass < 2) {
				busy += sub->leased > 0;
				held += cap < lease_max;
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
			if (sub->leased + sub->claimed >= lease_max)
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
		held += more_due && cap < lease_max; /* more due than its share took */
	}
	s->claim_busy_subs = busy > 0 ? busy : 1;
	/* One the share held back is woken by no completion of its own (those wake only a
	 * subscription at its max_in_flight or above), and a next due would spin: the
	 * dispatcher claims again when any request ends, as for a full host. Without this a
	 * draining backlog stalled for the dispatcher's 1 s reclaim timer. */
	if (held > 0)
		a->host_full = 1;
	/* A full claim: the next one starts after the subscription that filled it. */
	if (filled_at != SIZE_MAX)
		s->claim_cursor = (s->claim_cursor + filled_at + 1) % nsubs;
	return STORE_OK;
}

/* After COMMIT: the attempts a completion recorded, and the leases it ended. */
void store_count_results(struct store *s, const struct store_call *c)
{
	const struct complete_args *a = c->internal;

	for (int i = 0; i < a->n; i++) {
		lease_drop(s, a->results[i]->delivery_id);
		/* A retry or a job put back is claimable only now, with its lease gone: a
		 * claim in the same batch did not see it (NOT in_flight) and may have found
		 * nothing due. */
		struct sub_entry *sub = store_sub_find(s, a->results[i]->subscription_id);
		if (sub)
			store_sub_ask(s, sub);
		if (sub && a->results[i]->outcome == DELIVERY_RELEASED && sub->releasing > 0)
			sub->releasing--;
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
void store_account_claimed(struct store *s, struct store_call *c)
{
	struct claim_args *a = c->internal;

	for (int i = 0; i < a->njobs; i++) {
		struct sub_entry *sub = store_sub_find(s, a->jobs[i]->subscription_id);
		if (sub) {
			sub->leased++;
			store_quiet_clear(s, sub);
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
			struct sub_entry *sub = store_sub_find(s, a->results[i]->subscription_id);
			/* a retry, or a job put back, is pending again */
			if (sub)
				store_sub_ask(s, sub);
			if (sub && a->results[i]->outcome == DELIVERY_RELEASED)
				sub->releasing++; /* until its COMMIT: store_count_results */
			if (sub && sub->leased > 0) {
				/* at max_in_flight or above: it may have been at its lease
				 * max, which may be lower now (its lead window ended) */
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

	if (store_mark_disabled(s, id) != 0)
		return -1;
	if (sqlite3_prepare_v2(s->wdb,
	                       "UPDATE subscriptions SET enabled = 0, disabled_reason = ?2,"
	                       " updated_at = ?3 WHERE id = ?1",
	                       -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, now);
	if (store_step_done(st) != 0)
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
 * batch; store_health_reread puts it right when a call rolls back). Reading the cache alone,
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
		return store_exec_with_id_time(
		    s,
		    "UPDATE subscriptions SET failing_since = NULL WHERE id = ?1"
		    " AND ?2 IS NOT NULL",
		    sub->id, now);
	}
	int64_t since = failing ? failing : r->started_at_ms;
	if (!failing) {
		*changed = sub->id;
		sub->health_batch = s->batch_no;
		sub->batch_failing_since = since;
		if (store_exec_with_id_time(
		        s,
		        "UPDATE subscriptions SET failing_since = ?2 WHERE id = ?1"
		        " AND failing_since IS NULL",
		        sub->id, since) != 0)
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
int store_health_reread(struct store *s, const struct complete_args *a)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT coalesce(failing_since, 0) FROM subscriptions WHERE id = ?1",
	                       -1, &st, NULL) != SQLITE_OK)
		return -1;
	for (int i = 0; i < a->n; i++) {
		struct sub_entry *sub = store_sub_find(s, a->results[i]->subscription_id);
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

/* A completion's attempt row: result i of the array arg (its error text and response
 * snippet are the call's until it is answered). */
static void bind_attempt_row(sqlite3_stmt *st, int p, int i, void *arg)
{
	const struct delivery_result *r = ((const struct delivery_result **)arg)[i];
	sqlite3_bind_int64(st, p + 1, r->delivery_id);
	sqlite3_bind_int(st, p + 2, r->attempt);
	sqlite3_bind_int64(st, p + 3, r->started_at_ms);
	sqlite3_bind_int(st, p + 4, r->duration_ms);
	sqlite3_bind_int(st, p + 5, r->http_status);
	store_bind_text_or_null(st, p + 6, r->error[0] ? r->error : NULL);
	if (r->response_snippet)
		sqlite3_bind_blob(st, p + 7, r->response_snippet, (int)r->snippet_len,
		                  SQLITE_STATIC);
	else
		sqlite3_bind_null(st, p + 7);
}

static const struct store_rows attempt_rows = {
    .head = "INSERT OR FAIL INTO attempts(delivery_id, attempt, started_at, duration_ms,"
            " http_status, error, response_body) VALUES ",
    .row = "(?, ?, ?, ?, ?, ?, ?)",
    .params = 7,
    .bind = bind_attempt_row,
};

/* Logs the attempts gathered in r[0..*n) and empties it. 0, or -1 on a storage error. */
static int attempts_flush(struct store *s, const struct delivery_result **r, int *n)
{
	int k = *n;
	*n = 0;
	return store_rows_insert(s, s->attempt_rows, &attempt_rows, k, (void *)r);
}

enum store_rc store_apply_complete(struct store *s, struct store_call *call, int64_t *changed,
                                   int *made_due)
{
	struct complete_args *a = call->internal;
	int64_t now = clock_now_ms();
	const struct delivery_result *attempts[STORE_ROWS_MAX]; /* not inserted yet */
	int nattempts = 0;

	memset(a->ended, 0, sizeof(a->ended)); /* applied again if a batch failed */
	for (int i = 0; i < a->n; i++) {
		const struct delivery_result *r = a->results[i];
		struct sub_entry *sub = store_sub_find(s, r->subscription_id);

		if (r->outcome == DELIVERY_RELEASED) {
			/* Unsent. Due again now, or, if its subscription is gone, failed as the
			 * deletion's sweep would have (it skipped it while it was leased). */
			sqlite3_stmt *rel = s->st[sub ? ST_DELIVERY_RELEASE : ST_DELIVERY_ORPHANED];
			sqlite3_bind_int64(rel, 1, r->delivery_id);
			sqlite3_bind_int64(rel, 2, now);
			if (store_step_done(rel) != 0)
				return store_fail_storage(s, call);
			if (sub)
				*made_due = 1;
			else if (sqlite3_changes(s->wdb) > 0)
				s->batch_pending--; /* the pending gauge: one fewer */
			continue;
		}

		if (nattempts == STORE_ROWS_MAX && attempts_flush(s, attempts, &nattempts) != 0)
			return store_fail_storage(s, call);
		attempts[nattempts++] = r;

		/* An answer from a url the subscription has left since the job was made speaks
		 * for that receiver, not the current one: it counts for neither's health
		 * (below), and its 410 or Retry-After does not decide the delivery, which
		 * goes on by the plain schedule (a 410 failed it for good while the
		 * subscription stayed enabled, and the new url was never tried). */
		int current_url = !sub || r->subscription_version >= sub->url_version;
		enum delivery_outcome outcome = r->outcome;
		int64_t next_attempt_at = r->next_attempt_at_ms;
		if (!current_url && (outcome == DELIVERY_GONE || outcome == DELIVERY_RETRY)) {
			outcome = r->schedule_next_ms >= 0 ? DELIVERY_RETRY : DELIVERY_FAILED;
			next_attempt_at = r->schedule_next_ms;
		}
		if (sub && outcome == DELIVERY_DELIVERED && current_url)
			sub->answered_ms = now; /* its receiver answers: claims may lease ahead */
		enum delivery_state state = outcome_state[outcome];
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
			sqlite3_bind_int64(fin, 4, next_attempt_at);
		else
			sqlite3_bind_null(fin, 4);
		if (r->http_status)
			sqlite3_bind_int(fin, 5, r->http_status);
		else
			sqlite3_bind_null(fin, 5);
		store_bind_text_or_null(fin, 6, error);
		sqlite3_bind_int64(fin, 7, now);
		if (store_step_done(fin) != 0)
			return store_fail_storage(s, call);

		if (sub && current_url && track_health(s, sub, r, now, &changed[i]) != 0)
			return store_fail_storage(s, call);
	}
	if (attempts_flush(s, attempts, &nattempts) != 0)
		return store_fail_storage(s, call);
	return_leases(s, a, made_due);
	return STORE_OK;
}

/* Frees the jobs a claim still holds; with s, also ends their leases (a claim that
 * rolled back): its subscriptions have those deliveries due again, which the claim's
 * own look may have counted as taken. */
void store_free_claim_jobs(struct store *s, struct claim_args *a)
{
	for (int i = 0; i < a->njobs; i++) {
		if (s) {
			struct sub_entry *sub = store_sub_find(s, a->jobs[i]->subscription_id);
			if (sub)
				store_sub_ask(s, sub);
			lease_drop(s, a->jobs[i]->delivery_id);
		}
		delivery_job_free(a->jobs[i]);
	}
	free(a->jobs);
	a->jobs = NULL;
	a->njobs = 0;
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
	store_free_claim_jobs(NULL, a); /* none left: a failed batch freed them, leases and all */
	free(a);
	free(call);
	claim->done(claim); /* last: the claim is the dispatcher's again */
}

/* The dispatcher's check before it sends a job (any thread but the writer's). */
int store_source_current(void *ctx, int64_t subscription_id, uint64_t subscription_version)
{
	struct store *s = ctx;
	int current;

	pthread_mutex_lock(&s->subs_lock);
	const struct sub_entry *sub = store_sub_find(s, subscription_id);
	current = sub && sub->enabled && sub->version == subscription_version;
	pthread_mutex_unlock(&s->subs_lock);
	return current;
}

int store_source_claim(void *ctx, struct delivery_claim *claim)
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

	/* Storage failed: keep the results and apply them again after a pause. Right away,
	 * a write that kept failing while the rest of its batch committed (so the writer
	 * did not pause) was tried tens of thousands of times a second. */
	if (call->rc != STORE_OK && writer_submit_later(s->writer, call, STORE_RETRY_PAUSE_MS) == 0)
		return;
	for (int i = 0; i < a->n; i++)
		delivery_result_free(a->results[i]);
	free(a->results);
	free(a);
	free(call);
}

int store_source_complete(void *ctx, struct delivery_result **results, int n)
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
