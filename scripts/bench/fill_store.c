/*
 * fill_store.c - grows a stopped relay's database for `make bench` (section "stored"):
 * N old events, each with one delivered delivery per subscription that exists, written
 * straight into the relay's own schema so the relay's indexes are as deep as they would
 * be after N events of real traffic. Old events get ids that sort before any real one
 * ("evt_0..."), old timestamps, and a short envelope (the row count is what deepens the
 * indexes; the bytes would only cost disk and time).
 *
 *   fill_store --db PATH --events N
 *
 * The relay must not be running. Prints "events=N deliveries=M seconds=T".
 */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK 250000 /* events per transaction */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(sqlite3 *db, const char *what)
{
	fprintf(stderr, "fill_store: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
	sqlite3_close(db);
	exit(1);
}

static void exec(sqlite3 *db, const char *sql)
{
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
		die(db, sql);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	long long events = 0, done = 0, deliveries = 0;
	sqlite3 *db = NULL;
	sqlite3_stmt *ev = NULL, *dl = NULL;
	double t0 = now_s();

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--db") == 0)
			path = argv[i + 1];
		else if (strcmp(argv[i], "--events") == 0)
			events = atoll(argv[i + 1]);
	}
	if (!path || events <= 0) {
		fprintf(stderr, "usage: fill_store --db PATH --events N\n");
		return 2;
	}
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
		die(db, "open");
	exec(db, "PRAGMA synchronous=OFF");
	exec(db, "PRAGMA cache_size=-262144");
	/* ids and timestamps of old events: before anything the relay will write */
	if (sqlite3_prepare_v2(db,
	                       "INSERT INTO events(id, type, key, idempotency_key, created_at, envelope)"
	                       " VALUES (printf('evt_0%025d', ?1), 'order.created', NULL, NULL,"
	                       " 1600000000000 + ?1, '{\"old\":true}')",
	                       -1, &ev, NULL) != SQLITE_OK)
		die(db, "prepare events");
	if (sqlite3_prepare_v2(db,
	                       "INSERT INTO deliveries(event_seq, subscription_id, state, attempt_count,"
	                       " next_attempt_at, leased, last_http_status, created_at, updated_at)"
	                       " SELECT ?1, id, 1, 1, NULL, 0, 200, ?2, ?2 FROM subscriptions"
	                       " WHERE deleted_at IS NULL",
	                       -1, &dl, NULL) != SQLITE_OK)
		die(db, "prepare deliveries");
	while (done < events) {
		exec(db, "BEGIN");
		for (long long k = 0; k < CHUNK && done < events; k++, done++) {
			sqlite3_bind_int64(ev, 1, done);
			if (sqlite3_step(ev) != SQLITE_DONE)
				die(db, "insert event");
			sqlite3_reset(ev);
			sqlite3_bind_int64(dl, 1, sqlite3_last_insert_rowid(db));
			sqlite3_bind_int64(dl, 2, 1600000000000LL + done);
			if (sqlite3_step(dl) != SQLITE_DONE)
				die(db, "insert deliveries");
			deliveries += sqlite3_changes(db);
			sqlite3_reset(dl);
		}
		exec(db, "COMMIT");
	}
	exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
	sqlite3_finalize(ev);
	sqlite3_finalize(dl);
	sqlite3_close(db);
	printf("events=%lld deliveries=%lld seconds=%.1f\n", done, deliveries, now_s() - t0);
	return 0;
}
