/*
 * store_subs.c - the subscription cache (writer thread; the dispatcher reads it under
 * subs_lock), and the writer's calls that change subscriptions: create, update, delete
 * and its sweep, rotate, recover, replay, and a delivery's retry.
 *
 * Invariants:
 * - the cache holds every subscription not deleted; the matcher holds the enabled ones;
 *   both change only after the COMMIT that changed the row (store_reload_subscription; one
 *   that cannot read the row keeps the entry as it was and is tried again after the next
 *   COMMIT), except a subscription's lease count, which a completion lowers when it is
 *   applied (return_leases, store_claim.c) so that a claim in the same batch can use the
 *   room.
 * - a deleted subscription's pending deliveries are failed SWEEP_CHUNK rows per batch
 *   (the delete does the first chunk, STORE_SWEEP calls the rest, one at a time in the
 *   queue), so that deleting a subscription with a million pending rows neither holds
 *   the writer for seconds nor journals them all in memory. sweep.ids lists the deleted
 *   subscriptions that may have some left; it is rebuilt at open.
 */

#include "store_internal.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "matcher.h"
#include "sign.h"
#include "target.h"
#include "util.h"

#define RECOVER_MAX 10000       /* deliveries one recover call re-queues */
#define REPLAY_SCAN 2000        /* events a replay call looks at (~30 ms of writes) */
#define SWEEP_CHUNK 1000        /* pending deliveries of a deleted subscription failed per
                                   batch (~3 ms of writer time) */

/* ---------- the subscription cache (writer thread) ---------- */

struct sub_entry *store_sub_find(struct store *s, int64_t id)
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

void store_sub_entry_clear(struct sub_entry *e)
{
	free(e->url);
	free(e->headers_json);
	for (int i = 0; i < e->nsecrets; i++)
		free(e->secrets[i].secret);
	memset(e, 0, sizeof(*e));
}

/* The quiet bits: a claim sets subs[k]'s when it finds it idle with nothing pending and
 * nothing leased; whatever may make one of its deliveries claimable clears it
 * (store_sub_ask, store_account_claimed), and any change to the array's order clears
 * them all. A claim then steps over runs of quiet subscriptions 64 at a time. */
void store_quiet_clear_all(struct store *s)
{
	if (s->quiet)
		memset(s->quiet, 0, s->quiet_words * sizeof(*s->quiet));
}

void store_quiet_clear(struct store *s, const struct sub_entry *sub)
{
	size_t k = (size_t)(sub - s->subs);
	if (k / 64 < s->quiet_words)
		s->quiet[k / 64] &= ~((uint64_t)1 << (k % 64));
}

/* Makes the next claim ask the database for sub's due deliveries. */
void store_sub_ask(struct store *s, struct sub_entry *sub)
{
	sub->look = 1;
	store_quiet_clear(s, sub);
}

static void sub_remove(struct store *s, int64_t id)
{
	struct sub_entry *e = store_sub_find(s, id);
	matcher_remove(s->matcher, id);
	if (!e)
		return;
	store_sub_entry_clear(e);
	store_quiet_clear_all(s);
	size_t i = (size_t)(e - s->subs);
	/* The shorter side moves: moving all after it, deleting 10,000 subscriptions oldest
	 * first took 4.7 s, not 2.7 (13.8 s, not 5.3, under ASan): ~3 MB moved a delete. */
	if (i < s->nsubs / 2) {
		memmove(&s->subs[1], &s->subs[0], i * sizeof(*s->subs));
		s->subs++;
		s->subs_skip++;
	} else {
		memmove(&s->subs[i], &s->subs[i + 1], (s->nsubs - i - 1) * sizeof(*s->subs));
	}
	s->nsubs--;
}

char *store_strdup_or_null(const char *t)
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
	/* max_in_flight and rate_limit too: jobs claimed (and leased ahead) under the old
	 * ones must not go out after a PATCH changing them has been answered */
	snprintf(num, sizeof(num), "%d/%d", e->max_in_flight, e->rate_limit);
	h = hash_more(h, num);
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
 * HEALTH_LOG_LINES of them a minute; the next, or the line store_health_log_settled writes
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
void store_health_log_settled(struct store *s)
{
	int64_t t = clock_mono_ms();
	char since[UTIL_TIME_MAX];

	for (size_t i = 0; i < s->health_held.n;) {
		int64_t id = s->health_held.ids[i];
		struct sub_entry *e = store_sub_find(s, id);
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
	if (s->subs_skip + s->nsubs < s->subs_cap)
		return 0;
	if (s->subs_skip > 0 && s->subs_skip >= s->nsubs) { /* as many removals paid for it */
		memmove(s->subs - s->subs_skip, s->subs, s->nsubs * sizeof(*s->subs));
		s->subs -= s->subs_skip;
		s->subs_skip = 0;
		return 0;
	}
	size_t cap = s->subs_cap ? s->subs_cap * 2 : 16;
	struct sub_entry *grown =
	    realloc(s->subs ? s->subs - s->subs_skip : NULL, cap * sizeof(*grown));
	if (!grown)
		return -1;
	s->subs = grown + s->subs_skip;
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
int store_mark_disabled(struct store *s, int64_t id)
{
	struct sub_entry *cached = store_sub_find(s, id);

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
	struct sub_entry *e = store_sub_find(s, id);
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
int store_reload_subscription(struct store *s, int64_t id)
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
		const struct sub_entry *old = store_sub_find(s, id);
		if (old) {
			old_version = old->version;
			old_hash = old->settings_hash;
		}
		fresh.leased = old ? old->leased : 0; /* leases outlive a change of settings */
		fresh.releasing = old ? old->releasing : 0;
		fresh.health_log_minute = old ? old->health_log_minute : 0;
		fresh.health_lines = old ? old->health_lines : 0;
		fresh.health_unlogged = old ? old->health_unlogged : 0;
		fresh.newest_seq = old ? old->newest_seq : 0;
		fresh.answered_ms = old ? old->answered_ms : 0;
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
	fresh.url = store_strdup_or_null(store_column_text(st, 0));
	fresh.host = -1;
	if (fresh.url) {
		char key[TARGET_HOST_KEY_MAX];
		target_host_key(fresh.url, key);
		/* -1 (out of memory): no host limit for it */
		fresh.host = store_host_intern(s, key);
	}
	fresh.headers_json = store_strdup_or_null(store_column_text(st, 1));
	fresh.enabled = sqlite3_column_int(st, 2);
	fresh.max_in_flight = sqlite3_column_int(st, 4);
	fresh.failing_since = sqlite3_column_int64(st, 5);
	fresh.rate_limit = sqlite3_column_int(st, 7);
	disabled_reason = store_strdup_or_null(store_column_text(st, 6));
	patterns = json_loads(store_column_text(st, 3) ? store_column_text(st, 3) : "[]", 0, NULL);
	if (!json_is_array(patterns))
		snprintf(why, sizeof(why), "its event_types could not be parsed");
	if (!fresh.url || (store_column_text(st, 1) && !fresh.headers_json) ||
	    (store_column_text(st, 6) && !disabled_reason) || !json_is_array(patterns))
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
		sec->secret = store_strdup_or_null(store_column_text(st, 0));
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
		/* (before subs_reserve moves it) */
		const struct sub_entry *old = store_sub_find(s, id);
		int same_url = old && old->url && strcmp(old->url, fresh.url) == 0;
		fresh.url_version = same_url ? old->url_version : fresh.version;
		/* a new url's receiver has answered nothing yet: no lead for it, so that the
		 * requests still running at the old url and the new ones together stay within
		 * max_in_flight (only on a change: a reload for its health keeps the url) */
		if (old && !same_url)
			fresh.answered_ms = 0;
	}
	/* What can fail comes before the matcher changes: room for a new entry, then the
	 * matcher (which keeps the old patterns when it fails). */
	pthread_mutex_lock(&s->subs_lock);
	int room = store_sub_find(s, id) ? 0 : subs_reserve(s);
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
	struct sub_entry *old = store_sub_find(s, id);
	if (old) {
		store_sub_entry_clear(old);
		*old = fresh;
	} else {
		size_t at = s->nsubs;
		while (at > 0 && s->subs[at - 1].id > id)
			at--;
		memmove(&s->subs[at + 1], &s->subs[at], (s->nsubs - at) * sizeof(*s->subs));
		s->subs[at] = fresh;
		s->nsubs++;
	}
	store_quiet_clear_all(s);
	pthread_mutex_unlock(&s->subs_lock);
	log_health_change(s, store_sub_find(s, id), id, &was,
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
	store_sub_entry_clear(&fresh);
	free(pats);
	free(disabled_reason);
	json_decref(patterns);
	sqlite3_finalize(st);
	return rc;
}

/* After a COMMIT: the subscriptions it changed into the cache, then those whose reload
 * failed after an earlier COMMIT, each once (the retry list is short, and empty unless
 * reads fail). A changed id already waiting for a retry is read in the second pass. */
void store_reload_changed(struct store *s, const int64_t *changed, size_t nchanged)
{
	size_t waiting = s->reload_retry.n; /* those a failure in the first pass adds wait */

	for (size_t i = 0; i < nchanged; i++) {
		if (changed[i] && ids_find(s->reload_retry.ids, waiting, changed[i]) == waiting)
			store_reload_subscription(s, changed[i]);
	}
	/* backwards: a read that succeeds takes its id (at i) off the list; one that fails
	 * again adds nothing */
	for (size_t i = waiting; i-- > 0;)
		store_reload_subscription(s, s->reload_retry.ids[i]);
}

/* ---------- the writer's calls on subscriptions ---------- */

/* Binds a JSON value as text (compact) or NULL. */
static void bind_json_or_null(sqlite3_stmt *st, int i, json_t *v)
{
	char *text = (v && !json_is_null(v)) ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	store_bind_text_or_null(st, i, text);
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
	rc = store_step_done(st);
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

enum store_rc store_apply_sub_create(struct store *s, struct store_call *call, int64_t *changed)
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
	store_bind_text_or_null(st, 3, json_string_value(json_object_get(f, "description")));
	bind_json_or_null(st, 4, json_object_get(f, "headers"));
	sqlite3_bind_int(st, 5, enabled ? json_is_true(enabled) : 1);
	sqlite3_bind_int64(st, 6, now);
	if (json_is_integer(json_object_get(f, "max_in_flight")))
		sqlite3_bind_int64(st, 7, json_integer_value(json_object_get(f, "max_in_flight")));
	if (json_is_integer(json_object_get(f, "rate_limit")))
		sqlite3_bind_int64(st, 8, json_integer_value(json_object_get(f, "rate_limit")));
	if (store_step_done(st) != 0)
		goto out;
	id = sqlite3_last_insert_rowid(s->wdb);
	if (insert_secret(s, id, json_string_value(json_object_get(f, "secret")), now) != 0)
		goto out;
	if (store_load_subscription_json(s->wdb, id, &call->result) != STORE_OK)
		goto out;
	show_secret(call->result, f);
	*changed = id;
	rc = STORE_OK;
out:
	sqlite3_finalize(st);
	return rc == STORE_OK ? rc : store_fail_storage(s, call);
}

enum store_rc store_apply_sub_update(struct store *s, struct store_call *call, int64_t *changed,
                                     int *made_due)
{
	sqlite3_stmt *st = NULL;
	json_t *f = call->fields;
	json_t *v;
	int64_t now = clock_now_ms();
	int found = subscription_exists(s, call->id);

	if (found <= 0)
		return found == 0 ? STORE_NOTFOUND : store_fail_storage(s, call);
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
			store_bind_text_or_null(st, 2, json_string_value(v));
		sqlite3_bind_int64(st, 3, now);
		if (store_step_done(st) != 0)
			goto fail;
		sqlite3_finalize(st);
		st = NULL;
	}
	if (json_object_get(f, "max_in_flight") || json_object_get(f, "rate_limit"))
		*made_due = 1; /* more room, or a higher rate: its backlog may go out now */
	v = json_object_get(f, "enabled");
	if (v) {
		int on = json_is_true(v);
		if (store_exec_with_id_time(
		        s,
		        on ? "UPDATE subscriptions SET enabled = 1, disabled_reason = NULL,"
		             " failing_since = NULL, updated_at = ?2 WHERE id = ?1"
		             " AND enabled = 0"
		           : "UPDATE subscriptions SET enabled = 0, disabled_reason ="
		             " coalesce(disabled_reason, 'disabled through the API'),"
		             " updated_at = ?2 WHERE id = ?1 AND enabled = 1",
		        call->id, now) != 0)
			goto fail;
		if (!on && sqlite3_changes(s->wdb) > 0 && store_mark_disabled(s, call->id) != 0)
			goto fail;
		/* Nothing to move: claims skip a disabled subscription, so its pending rows
		 * wait where they are and go out as soon as it is enabled again. */
		if (on)
			*made_due = 1;
	}
	if (store_load_subscription_json(s->wdb, call->id, &call->result) != STORE_OK)
		goto fail;
	*changed = call->id;
	return STORE_OK;
fail:
	sqlite3_finalize(st);
	return store_fail_storage(s, call);
}

/* Fails up to SWEEP_CHUNK pending deliveries of deleted subscription `id` that are not
 * in flight (those fail when their attempt completes). Returns the rows failed, or -1. */
static int sweep_chunk(struct store *s, int64_t id, int64_t now)
{
	sqlite3_stmt *st = s->st[ST_SWEEP];

	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int(st, 3, SWEEP_CHUNK);
	if (store_step_done(st) != 0)
		return -1;
	int swept = sqlite3_changes(s->wdb);
	s->batch_pending -= swept;
	return swept;
}

enum store_rc store_apply_sub_delete(struct store *s, struct store_call *call, int64_t *changed)
{
	int64_t now = clock_now_ms();
	int found = subscription_exists(s, call->id);

	if (found <= 0)
		return found == 0 ? STORE_NOTFOUND : store_fail_storage(s, call);
	/* Its secrets sign nothing from here on (a retry or replay of a deleted subscription is
	 * refused), so they do not stay in the file and its backups either. The first chunk
	 * of its backlog now, so that a small one is failed by the time we answer; the rest
	 * in STORE_SWEEP calls after the COMMIT (store_sweep_add). */
	if (store_exec_with_id_time(
	        s,
	        "UPDATE subscriptions SET deleted_at = ?2, enabled = 0, updated_at = ?2"
	        " WHERE id = ?1",
	        call->id, now) != 0 ||
	    store_exec_with_id_time(s,
	                            "DELETE FROM subscription_secrets WHERE subscription_id = ?1",
	                            call->id, now) != 0 ||
	    sweep_chunk(s, call->id, now) < 0)
		return store_fail_storage(s, call);
	*changed = call->id;
	return STORE_OK;
}

/* One chunk of the oldest deleted subscription still listed. */
enum store_rc store_apply_sweep(struct store *s, struct store_call *call)
{
	int swept;

	s->sweep.finished = 0;
	if (s->sweep.n == 0)
		return STORE_OK;
	swept = sweep_chunk(s, s->sweep.ids[0], clock_now_ms());
	if (swept < 0)
		return store_fail_storage(s, call);
	if (swept < SWEEP_CHUNK)
		s->sweep.finished = s->sweep.ids[0]; /* dropped from the list after COMMIT */
	return STORE_OK;
}

static void sweep_done(struct store_call *call);

/* Queues the sweep call if there is work. */
void store_sweep_schedule(struct store *s)
{
	if (s->sweep.n > 0)
		store_queue_own_call(s, &s->sweep.call, STORE_SWEEP, sweep_done, &s->sweep.queued);
}

/* The sweep call's done(): writer thread, after its batch ended either way. */
static void sweep_done(struct store_call *call)
{
	struct store *s = call->arg;

	s->sweep.queued = 0;
	if (call->rc == STORE_OK) {
		store_sweep_schedule(s);
		return;
	}
	/* Not again at once, which would spin on a statement that keeps failing: the next
	 * batch that commits queues it (the dispatcher claims at least once a second). */
	fprintf(stderr, "hookrelay: failing a deleted subscription's pending deliveries: %s; "
	                "will try again\n", call->why[0] ? call->why : "storage error");
}

/* After the COMMIT of a delete: the subscription may have pending rows left. Returns
 * -1 out of memory: its rows stay pending (held) until the next start. */
int store_sweep_add(struct store *s, int64_t id)
{
	return util_ids_push(&s->sweep.ids, &s->sweep.n, &s->sweep.cap, id);
}

void store_sweep_remove(struct store *s, int64_t id)
{
	ids_remove(s->sweep.ids, &s->sweep.n, id);
}

enum store_rc store_apply_sub_rotate(struct store *s, struct store_call *call, int64_t *changed)
{
	int64_t now = clock_now_ms();
	json_t *f = call->fields;
	int64_t grace_ms = json_integer_value(json_object_get(f, "grace_ms"));
	sqlite3_stmt *st = NULL;
	int found = subscription_exists(s, call->id);

	if (found <= 0)
		return found == 0 ? STORE_NOTFOUND : store_fail_storage(s, call);
	/* A rotation "to" the secret in use (a pasted value) would keep a leaked secret
	 * current with no end, and send its signature twice. Compared as keys: base64 spells
	 * one key several ways (the unused low bits of its last character). */
	if (sqlite3_prepare_v2(s->wdb,
	                       "SELECT secret FROM subscription_secrets WHERE subscription_id = ?1"
	                       " AND (expires_at IS NULL OR expires_at > ?2)",
	                       -1, &st, NULL) != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, call->id);
	sqlite3_bind_int64(st, 2, now);
	int step, in_use = 0;
	while (!in_use && (step = sqlite3_step(st)) == SQLITE_ROW)
		in_use = sign_secret_same(store_column_text(st, 0),
		                          json_string_value(json_object_get(f, "secret")));
	sqlite3_finalize(st);
	st = NULL;
	if (in_use) {
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
	if (store_step_done(st) != 0)
		goto fail;
	if (insert_secret(s, call->id, json_string_value(json_object_get(f, "secret")), now) != 0)
		goto fail;
	/* Keep the current secret and at most 10 old ones still in their grace. */
	if (store_exec_with_id_time(
	        s,
	        "DELETE FROM subscription_secrets WHERE subscription_id = ?1 AND"
	        " ((expires_at IS NOT NULL AND expires_at <= ?2) OR id NOT IN"
	        " (SELECT id FROM subscription_secrets WHERE subscription_id = ?1"
	        " ORDER BY id DESC LIMIT 11))",
	        call->id, now) != 0)
		goto fail;
	if (store_exec_with_id_time(s, "UPDATE subscriptions SET updated_at = ?2 WHERE id = ?1",
	                            call->id, now) != 0)
		goto fail;
	if (store_load_subscription_json(s->wdb, call->id, &call->result) != STORE_OK)
		goto fail;
	show_secret(call->result, f);
	sqlite3_finalize(st);
	*changed = call->id;
	return STORE_OK;
fail:
	sqlite3_finalize(st);
	return store_fail_storage(s, call);
}

enum store_rc store_apply_delivery_retry(struct store *s, struct store_call *call, int *made_due)
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
	if (store_lease_held(s, call->id)) {
		snprintf(call->why, sizeof(call->why), "the delivery is being attempted right now");
		rc = STORE_CONFLICT;
		goto out;
	}
	struct sub_entry *sub = store_sub_find(s, sqlite3_column_int64(st, 0));
	if (!sub) {
		snprintf(call->why, sizeof(call->why), "its subscription was deleted");
		rc = STORE_CONFLICT;
		goto out;
	}
	store_sub_ask(s, sub);
	if (store_exec_with_id_time(
	        s,
	        "UPDATE deliveries SET state = 0, next_attempt_at = ?2, updated_at = ?2"
	        " WHERE id = ?1",
	        call->id, now) != 0)
		goto out;
	if (store_load_delivery_json(s->wdb, call->id, &call->result) != STORE_OK)
		goto out;
	if (!was_pending)
		s->batch_pending++;
	*made_due = 1;
	rc = STORE_OK;
out:
	sqlite3_finalize(st);
	return rc == STORE_ERR ? store_fail_storage(s, call) : rc;
}

/* Re-queues a subscription's failed deliveries created since `since_ms`, at most
 * RECOVER_MAX per call; running it again re-queues nothing already pending. */
enum store_rc store_apply_sub_recover(struct store *s, struct store_call *call, int *made_due)
{
	sqlite3_stmt *st = NULL;
	int64_t now = clock_now_ms();
	struct sub_entry *sub = store_sub_find(s, call->id);
	int requeued;

	if (!sub)
		return subscription_exists(s, call->id) < 0 ? store_fail_storage(s, call)
		                                            : STORE_NOTFOUND;
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
	if (store_step_done(st) != 0)
		goto fail;
	requeued = sqlite3_changes(s->wdb);
	s->batch_pending += requeued;
	store_sub_ask(s, sub);
	sqlite3_finalize(st);
	call->result = json_pack("{s:i}", "requeued", requeued);
	if (requeued > 0)
		*made_due = 1;
	return STORE_OK;
fail:
	sqlite3_finalize(st);
	return store_fail_storage(s, call);
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
	if (sqlite3_step(st) != SQLITE_ROW || !store_column_text(st, 0))
		goto out;
	*patterns = json_loads(store_column_text(st, 0), 0, NULL);
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
		if (store_step_done(ins) != 0)
			return -1;
		s->batch_top_delivery = sqlite3_last_insert_rowid(s->wdb);
		made++;
		if (seq > sub->newest_seq)
			sub->newest_seq = seq;
		store_sub_ask(s, sub);
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
enum store_rc store_apply_sub_replay(struct store *s, struct store_call *call, int *made_due)
{
	sqlite3_stmt *scan = NULL, *has = NULL;
	json_t *patterns = NULL, *until = json_object_get(call->fields, "until_ms");
	const char **pats = NULL;
	size_t npats = 0;
	int64_t now = clock_now_ms(), next_ms = -1, cur_ms = -1;
	char lo[UTIL_ID_MAX], hi[UTIL_ID_MAX];
	struct replay_ms ms = {0};
	int seen = 0, made = 0, step, n;
	struct sub_entry *sub = store_sub_find(s, call->id);
	enum store_rc rc = STORE_ERR;

	if (!sub)
		return subscription_exists(s, call->id) < 0 ? store_fail_storage(s, call)
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
		const char *type = store_column_text(scan, 1);

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
	rc = store_fail_storage(s, call);
out:
	sqlite3_finalize(scan);
	sqlite3_finalize(has);
	free(ms.seqs);
	free(pats);
	json_decref(patterns);
	return rc;
}
