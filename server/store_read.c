/*
 * store_read.c - the read routes' queries, and the JSON and text of rows (shared by the
 * writer and the read routes).
 *
 * Threads and connections:
 * - Read routes borrow a read-only connection from `readers` (mutex-guarded stack);
 *   one connection is used by one thread at a time.
 * Durability:
 *   Reads show events up to synced_seq and deliveries up to synced_delivery, as claims
 *   take them (store_claim.c): none is shown that a power cut could take back (SQLite
 *   would give its id again).
 */

#include "store_internal.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_check.h"
#include "json_text.h"
#include "histogram.h"
#include "sign.h"
#include "util.h"
#include "writer.h"

static const char *const state_names[] = {"pending", "delivered", "failed"};

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
	const char *t = store_column_text(st, i);
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
	const char *t = store_column_text(st, i);
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
	const char *secret = store_column_text(st, 11);
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
	json_text_string_or_null(f, store_column_text(st, 1));
	json_text_key(f, "subscription_id", 0);
	text_id(f, "sub_", sqlite3_column_int64(st, 2));
	json_text_key(f, "event_type", 0);
	json_text_string_or_null(f, store_column_text(st, 3));
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
	json_text_string_or_null(f, store_column_text(st, 8));
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
		json_text_string_or_null(f, store_column_text(st, 2));
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
enum store_rc store_load_subscription_json(sqlite3 *db, int64_t id, json_t **out)
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

enum store_rc store_load_delivery_json(sqlite3 *db, int64_t id, json_t **out)
{
	return load_one(db, "SELECT " DELIVERY_COLUMNS DELIVERY_FROM " WHERE d.id = ?1", id,
	                delivery_json, out);
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
	sqlite3_stmt *st = NULL;
	enum store_rc rc = STORE_ERR;
	/* prepared and stepped, not sqlite3_exec: the tests' fault shim fails a step */
	if (db &&
	    sqlite3_prepare_v2(db, "SELECT 1 FROM events LIMIT 1", -1, &st, NULL) == SQLITE_OK) {
		int step = sqlite3_step(st);
		if (step == SQLITE_ROW || step == SQLITE_DONE)
			rc = STORE_OK;
	}
	sqlite3_finalize(st);
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
	enum store_rc rc = db ? store_load_subscription_json(db, id, out) : STORE_ERR;
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
	if (store_exec_sql(db, "BEGIN", NULL, 0) != 0)
		goto out;
	reading = 1;
	rc = store_load_delivery_json(db, id, &delivery);
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
		store_exec_sql(db, "ROLLBACK", NULL, 0); /* a read: nothing to keep */
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
