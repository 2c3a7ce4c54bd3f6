/*
 * bare_sqlite.c - the storage ceiling for `make bench` (row 1b).
 *
 * Measures how many events per second raw SQLite can make durable the way hookrelay's
 * writer does: per event one INSERT into events (the ~600-byte body stored as is) and
 * three INSERTs into deliveries (one per matching subscription), WAL, synchronous=FULL,
 * 100 events per transaction (group commit, one fsync per COMMIT), prepared statements,
 * one connection on one thread. The schema mirrors what a relay needs: a text primary key
 * on events, an index on deliveries (status, next_attempt_at) for the dispatcher's claim.
 *
 *   bare_sqlite --db PATH --body FILE [--events N] [--seconds S] [--per-tx K]
 *
 * Stops after N events (default 200000) or S seconds (default 5), whichever is first,
 * and prints "events=N seconds=T events_per_s=R".
 */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(sqlite3 *db, const char *what)
{
	fprintf(stderr, "bare_sqlite: %s: %s\n", what, db ? sqlite3_errmsg(db) : "?");
	exit(1);
}

static void exec(sqlite3 *db, const char *sql)
{
	char *err = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		fprintf(stderr, "bare_sqlite: %s: %s\n", sql, err ? err : "?");
		exit(1);
	}
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(1);
	}
	char *buf = malloc(1 << 20);
	if (!buf)
		exit(1);
	*len = fread(buf, 1, (1 << 20) - 1, f);
	fclose(f);
	return buf;
}

int main(int argc, char **argv)
{
	const char *db_path = NULL, *body_path = NULL;
	long events = 200000, per_tx = 100;
	double seconds = 5;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--db") == 0)
			db_path = argv[i + 1];
		else if (strcmp(argv[i], "--body") == 0)
			body_path = argv[i + 1];
		else if (strcmp(argv[i], "--events") == 0)
			events = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--seconds") == 0)
			seconds = atof(argv[i + 1]);
		else if (strcmp(argv[i], "--per-tx") == 0)
			per_tx = atol(argv[i + 1]);
	}
	if (!db_path || !body_path || events <= 0 || per_tx <= 0) {
		fprintf(stderr, "usage: bare_sqlite --db PATH --body FILE [--events N] "
		                "[--seconds S] [--per-tx K]\n");
		return 2;
	}
	size_t body_len;
	char *body = slurp(body_path, &body_len);

	sqlite3 *db;
	if (sqlite3_open(db_path, &db) != SQLITE_OK)
		die(db, "open");
	exec(db, "PRAGMA journal_mode=WAL");
	exec(db, "PRAGMA synchronous=FULL");
	exec(db, "CREATE TABLE IF NOT EXISTS events ("
	         " id TEXT PRIMARY KEY, type TEXT NOT NULL, key TEXT, idempotency_key TEXT,"
	         " created_at INTEGER NOT NULL, body BLOB NOT NULL)");
	exec(db, "CREATE UNIQUE INDEX IF NOT EXISTS events_idem ON events(idempotency_key)"
	         " WHERE idempotency_key IS NOT NULL");
	exec(db, "CREATE TABLE IF NOT EXISTS deliveries ("
	         " id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, subscription_id INTEGER NOT NULL,"
	         " status INTEGER NOT NULL, attempt_count INTEGER NOT NULL DEFAULT 0,"
	         " next_attempt_at INTEGER, last_http_status INTEGER, last_error TEXT,"
	         " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)");
	exec(db, "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at)");

	sqlite3_stmt *ins_evt, *ins_dlv, *begin, *commit;
	if (sqlite3_prepare_v2(db,
	                       "INSERT INTO events(id, type, key, created_at, body)"
	                       " VALUES (?1, 'order.updated', 'order-42', ?2, ?3)",
	                       -1, &ins_evt, NULL) != SQLITE_OK)
		die(db, "prepare events");
	if (sqlite3_prepare_v2(db,
	                       "INSERT INTO deliveries(event_id, subscription_id, status,"
	                       " next_attempt_at, created_at, updated_at)"
	                       " VALUES (?1, ?2, 0, ?3, ?3, ?3)",
	                       -1, &ins_dlv, NULL) != SQLITE_OK)
		die(db, "prepare deliveries");
	if (sqlite3_prepare_v2(db, "BEGIN", -1, &begin, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL) != SQLITE_OK)
		die(db, "prepare tx");

	double t0 = now_s(), t = t0;
	long done = 0;
	unsigned seed = (unsigned)time(NULL);
	while (done < events && t - t0 < seconds) {
		if (sqlite3_step(begin) != SQLITE_DONE)
			die(db, "begin");
		sqlite3_reset(begin);
		for (long k = 0; k < per_tx && done < events; k++, done++) {
			char id[40];
			int64_t ms = now_ms();
			/* time-ordered like evt_ + 26 chars: 13 hex digits of ms + 13 of counter/seed */
			snprintf(id, sizeof id, "evt_%013llx%05x%08lx", (unsigned long long)ms,
			         seed & 0xfffff, (unsigned long)done);
			sqlite3_bind_text(ins_evt, 1, id, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int64(ins_evt, 2, ms);
			sqlite3_bind_blob(ins_evt, 3, body, (int)body_len, SQLITE_STATIC);
			if (sqlite3_step(ins_evt) != SQLITE_DONE)
				die(db, "insert event");
			sqlite3_reset(ins_evt);
			for (int s = 1; s <= 3; s++) {
				sqlite3_bind_text(ins_dlv, 1, id, -1, SQLITE_TRANSIENT);
				sqlite3_bind_int(ins_dlv, 2, s);
				sqlite3_bind_int64(ins_dlv, 3, ms);
				if (sqlite3_step(ins_dlv) != SQLITE_DONE)
					die(db, "insert delivery");
				sqlite3_reset(ins_dlv);
			}
		}
		if (sqlite3_step(commit) != SQLITE_DONE)
			die(db, "commit");
		sqlite3_reset(commit);
		t = now_s();
	}
	double el = t - t0;
	printf("events=%ld seconds=%.3f events_per_s=%.0f\n", done, el, el > 0 ? done / el : 0);
	sqlite3_finalize(ins_evt);
	sqlite3_finalize(ins_dlv);
	sqlite3_finalize(begin);
	sqlite3_finalize(commit);
	sqlite3_close(db);
	free(body);
	return 0;
}
