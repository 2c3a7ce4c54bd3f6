/*
 * test_wal_vfs.c - the WAL-gathering VFS on real SQLite files: a commit reaches the WAL
 * in a few writes (not two per page), whole, and is readable by another connection as
 * soon as COMMIT returns, and recoverable from the files as a crash would leave them,
 * also when SQLite rewrote frames of the transaction in place (a spill) or padded the
 * commit to a sector; a failed write fails the COMMIT and loses nothing committed before;
 * frames a rollback left are never written over another connection's commit, and frames
 * a failed write held back still go out with a later COMMIT.
 *
 * The writes are watched through the unix VFS's own hook for tests (xSetSystemCall):
 * its pwrite64 is replaced by one that counts the writes to a file ending in "-wal",
 * and fails them with ENOSPC while `fail_wal` is set.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "check.h"
#include "wal_vfs.h"

typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off_t);
static pwrite64_fn real_pwrite64;
static int wal_writes, fail_wal;
static int fail_wal_nth; /* > 0: the WAL write this many from now fails, once */
static size_t wal_bytes;

static int is_wal(int fd)
{
	char link[64], target[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n < 4)
		return 0;
	target[n] = '\0';
	return strcmp(target + n - 4, "-wal") == 0;
}

static ssize_t watched_pwrite64(int fd, const void *buf, size_t n, off_t off)
{
	if (is_wal(fd)) {
		if (fail_wal || (fail_wal_nth > 0 && --fail_wal_nth == 0)) {
			errno = ENOSPC;
			return -1;
		}
		wal_writes++;
		wal_bytes += n;
	}
	return real_pwrite64(fd, buf, n, off);
}

static void reset_counts(void)
{
	wal_writes = 0;
	wal_bytes = 0;
}

static sqlite3 *open_db(const char *path, const char *vfs)
{
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
	                    vfs) != SQLITE_OK) {
		fprintf(stderr, "open %s: %s\n", path, db ? sqlite3_errmsg(db) : "no memory");
		exit(1);
	}
	return db;
}

static int exec(sqlite3 *db, const char *sql)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK && rc != SQLITE_FULL)
		fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
	return rc;
}

static long long count_rows(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	long long n = -1;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* Inserts `rows` rows of about 3 KiB (each on a page of its own, mostly) into t. */
static int insert_rows_in_tx(sqlite3 *db, int rows)
{
	char sql[160];
	snprintf(sql, sizeof(sql),
	         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %d)"
	         " INSERT INTO t(v) SELECT randomblob(3000) FROM n",
	         rows);
	return exec(db, sql);
}

/* The same in a transaction of its own; returns its COMMIT's result. */
static int insert_rows(sqlite3 *db, int rows)
{
	if (exec(db, "BEGIN") != SQLITE_OK)
		return SQLITE_ERROR;
	if (insert_rows_in_tx(db, rows) != SQLITE_OK) {
		exec(db, "ROLLBACK");
		return SQLITE_ERROR;
	}
	int rc = exec(db, "COMMIT");
	if (rc != SQLITE_OK && !sqlite3_get_autocommit(db))
		exec(db, "ROLLBACK");
	return rc;
}

static long long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* The WAL holds its 32-byte header and whole frames of `page` bytes, nothing partial. */
static int wal_whole_of(const char *db_path, int page)
{
	char wal[96];
	snprintf(wal, sizeof(wal), "%s-wal", db_path);
	long long n = file_size(wal);
	return n >= 32 && (n - 32) % (page + 24) == 0;
}

static int wal_whole(const char *db_path)
{
	return wal_whole_of(db_path, 4096);
}

static void remove_db(const char *db_path)
{
	char side[96];
	snprintf(side, sizeof(side), "%s-wal", db_path);
	unlink(side);
	snprintf(side, sizeof(side), "%s-shm", db_path);
	unlink(side);
	unlink(db_path);
}

/* Reads every byte of t; 0 if the read fails (a short frame, say). */
static int all_readable(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int ok = sqlite3_prepare_v2(db, "SELECT sum(length(v)), max(hex(v)) FROM t", -1, &st,
	                            NULL) == SQLITE_OK &&
	         sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return ok;
}

static int copy_file(const char *from, const char *to)
{
	char buf[65536];
	int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ssize_t n = 0;
	while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, (size_t)n) != n)
			n = -1;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return in >= 0 && out >= 0 && n == 0 ? 0 : -1;
}

/* What a crash right now would leave: the database and its WAL as they are in the file
 * system (no wal-index), opened fresh, so that SQLite recovers the WAL by its checksums.
 * Returns the rows of t found there, -1 if it cannot be read. */
static long long rows_after_crash(const char *db_path, const char *dir)
{
	char wal[96], copy[64], copy_wal[80], copy_shm[80];
	snprintf(wal, sizeof(wal), "%s-wal", db_path);
	snprintf(copy, sizeof(copy), "%s/crash.db", dir);
	snprintf(copy_wal, sizeof(copy_wal), "%s-wal", copy);
	snprintf(copy_shm, sizeof(copy_shm), "%s-shm", copy);
	unlink(copy_shm);
	if (copy_file(db_path, copy) != 0 || copy_file(wal, copy_wal) != 0)
		return -1;
	sqlite3 *db = open_db(copy, NULL);
	long long n = count_rows(db);
	sqlite3_close(db);
	unlink(copy_wal);
	unlink(copy_shm);
	unlink(copy);
	return n;
}

static int integrity_ok(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int ok = 0;
	if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		ok = strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
	sqlite3_finalize(st);
	return ok;
}

/* synchronous=FULL on a disk without powersafe overwrite: SQLite pads each commit with
 * copies of its commit frame up to a sector boundary, syncing in the middle of one and
 * splitting that write in two, either of which may be 24 bytes long (a frame header's
 * length) with small pages. The padding counts as committed, so it must be in the file,
 * whole, when COMMIT returns, or a reader fails on a short frame. `value` is the SQL of
 * each row's v. Returns the commits after which something was wrong. */
static int padded_commits_wrong(const char *dir, int page, int commits, const char *value)
{
	char path[64], uri[96], sql[160];
	snprintf(path, sizeof(path), "%s/padded-%d.db", dir, page);
	snprintf(uri, sizeof(uri), "file:%s?psow=0", path);
	sqlite3 *w = open_db(uri, WAL_VFS_NAME);
	snprintf(sql, sizeof(sql),
	         "PRAGMA page_size=%d; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
	         " PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
	         page);
	int wrong = exec(w, sql) == SQLITE_OK ? 0 : commits;
	sqlite3 *r = open_db(uri, NULL);
	snprintf(sql, sizeof(sql), "INSERT INTO t(v) VALUES (%s)", value);
	for (int i = 1; i <= commits && !wrong; i++) {
		if (exec(w, sql) != SQLITE_OK || !wal_whole_of(path, page) || !all_readable(r) ||
		    count_rows(r) != i)
			wrong++;
	}
	sqlite3_close(r);
	sqlite3_close(w);
	remove_db(path);
	return wrong;
}

/* A transaction that spilled frames and rolled back leaves them waiting; another
 * connection then restarts the WAL from the top and commits. What waited must never be
 * written over that (the store's rollback hook drops it; close drops it too). */
static void rolled_back_spill(const char *dir, int close_after)
{
	char path[64];
	snprintf(path, sizeof(path), "%s/rollback.db", dir);
	sqlite3 *a = open_db(path, WAL_VFS_NAME);
	sqlite3_rollback_hook(a, wal_vfs_rolled_back, a);
	CHECK(
	    exec(a,
	         "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
	         " PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=20;"
	         " CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (1)") ==
	    SQLITE_OK);
	sqlite3 *b = open_db(path, NULL);
	CHECK(count_rows(b) == 1);
	CHECK(sqlite3_wal_checkpoint_v2(b, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) ==
	      SQLITE_OK);
	CHECK(exec(a, "BEGIN") == SQLITE_OK);
	CHECK(insert_rows_in_tx(a, 100) == SQLITE_OK); /* spills: the cache holds 20 pages */
	CHECK(exec(a, "ROLLBACK") == SQLITE_OK);
	CHECK(insert_rows(b, 20) == SQLITE_OK); /* restarts the WAL: the checkpoint caught up */
	if (close_after)
		sqlite3_close(a);
	else
		CHECK(exec(a, "INSERT INTO t(v) VALUES (2)") == SQLITE_OK);
	sqlite3 *c = open_db(path, NULL);
	CHECK(count_rows(c) == (close_after ? 21 : 22));
	CHECK(integrity_ok(c));
	sqlite3_close(c);
	CHECK(rows_after_crash(path, dir) == (close_after ? 21 : 22));
	sqlite3_close(b);
	if (!close_after)
		sqlite3_close(a);
	remove_db(path);
}

/* A write that fails while a read empties the buffer (the disk is full) fails only the
 * statement when it has a statement journal: the transaction goes on, and its COMMIT
 * lists the spilled frames that were held back. They must still reach the file then.
 * nth 0: every WAL write fails meanwhile; else only the nth from the statement's start,
 * once: with 2, the first 96 KiB piece of the held frames reaches the file and the rest
 * keeps waiting (moved to the buffer's front: written from where it was, the COMMIT
 * wrote the first piece's bytes again over the frames after it). */
static void read_flush_fails(const char *dir, int nth)
{
	char path[64];
	snprintf(path, sizeof(path), "%s/readfail.db", dir);
	sqlite3 *w = open_db(path, WAL_VFS_NAME);
	sqlite3_rollback_hook(w, wal_vfs_rolled_back, w);
	CHECK(exec(w,
	           "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
	           " PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=10;"
	           " CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER UNIQUE, v BLOB);"
	           " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)"
	           " INSERT INTO t SELECT i, i, randomblob(900) FROM n;"
	           " PRAGMA wal_checkpoint(TRUNCATE)") == SQLITE_OK);
	CHECK(exec(w, "BEGIN; UPDATE t SET v = randomblob(900) WHERE id <= 300") == SQLITE_OK);
	fail_wal = nth == 0;
	fail_wal_nth = nth;
	int rc = exec(w, "INSERT INTO t(u, v) SELECT u + 100000, v FROM t WHERE id <= 300");
	fail_wal = 0;
	fail_wal_nth = 0;
	CHECK(rc == SQLITE_FULL);
	if (!sqlite3_get_autocommit(w))
		CHECK(exec(w, "COMMIT") == SQLITE_OK);
	sqlite3 *r = open_db(path, NULL);
	CHECK(count_rows(r) == 400);
	CHECK(all_readable(r));
	CHECK(integrity_ok(r));
	sqlite3_close(r);
	CHECK(rows_after_crash(path, dir) == 400);
	sqlite3_close(w);
	remove_db(path);
}

int main(void)
{
	char dir[] = "/tmp/hookrelay-walvfs-XXXXXX", path[64];
	if (!mkdtemp(dir))
		return 1;
	snprintf(path, sizeof(path), "%s/t.db", dir);

	sqlite3_vfs *unix_vfs = sqlite3_vfs_find(NULL);
	real_pwrite64 = (pwrite64_fn)unix_vfs->xGetSystemCall(unix_vfs, "pwrite64");
	CHECK(real_pwrite64 != NULL);
	if (!real_pwrite64)
		return CHECK_DONE();
	unix_vfs->xSetSystemCall(unix_vfs, "pwrite64", (sqlite3_syscall_ptr)watched_pwrite64);
	CHECK(wal_vfs_register() == 0);
	CHECK(wal_vfs_register() == 0); /* again: the same VFS, still registered */
	CHECK(sqlite3_vfs_find(WAL_VFS_NAME) != NULL);
	CHECK(sqlite3_vfs_find(NULL) == unix_vfs); /* not made the default */

	sqlite3 *w = open_db(path, WAL_VFS_NAME);
	sqlite3 *r = open_db(path, NULL); /* a reader on the default VFS, as the API's are */
	CHECK(exec(w, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
	              " PRAGMA wal_autocheckpoint=0;"
	              " CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)") == SQLITE_OK);

	/* The default VFS writes a frame as two writes: the measure to compare with. */
	sqlite3 *plain = open_db(path, NULL);
	reset_counts();
	CHECK(insert_rows(plain, 20) == SQLITE_OK);
	int plain_writes = wal_writes;
	CHECK(plain_writes >= 40);
	sqlite3_close(plain);

	/* Twenty pages and more in one commit: a write or two, no write past the unix VFS's
	 * limit, every byte there, and the reader sees the rows once COMMIT returns. */
	reset_counts();
	CHECK(insert_rows(w, 20) == SQLITE_OK);
	CHECK(wal_bytes >= 20 * 4096);
	CHECK(wal_writes >= 1 && wal_writes <= 2);
	CHECK(count_rows(r) == 40);
	CHECK(wal_whole(path));
	CHECK(rows_after_crash(path, dir) == 40);

	/* 3 MiB in one transaction: past the buffer's cap, so it goes out before the
	 * commit, in pieces the unix VFS writes whole (one of 128 KiB or more would come
	 * back as a full disk). */
	reset_counts();
	CHECK(insert_rows(w, 1000) == SQLITE_OK);
	CHECK(wal_bytes >= (size_t)1000 * 3000);
	CHECK(wal_writes >= 30 && wal_writes < 1000);
	CHECK(count_rows(r) == 1040);
	CHECK(wal_whole(path));

	/* A transaction bigger than the page cache spills frames to the WAL early; pages it
	 * changes again are rewritten in place, and SQLite then rewrites the checksums of
	 * every frame from there to the commit frame, header by header. Those headers must
	 * reach the file with the COMMIT, or recovery stops at the first bad checksum and
	 * the whole transaction is gone after a crash. */
	CHECK(exec(w, "PRAGMA cache_size=10") == SQLITE_OK);
	CHECK(exec(w, "BEGIN") == SQLITE_OK);
	CHECK(insert_rows_in_tx(w, 200) == SQLITE_OK);
	CHECK(exec(w, "UPDATE t SET v = randomblob(3000) WHERE id <= 1050") == SQLITE_OK);
	CHECK(exec(w, "COMMIT") == SQLITE_OK);
	CHECK(exec(w, "PRAGMA cache_size=-2000") == SQLITE_OK);
	CHECK(count_rows(r) == 1240);
	CHECK(wal_whole(path));
	CHECK(rows_after_crash(path, dir) == 1240);

	/* The disk fills: COMMIT fails, none of its rows are seen, and what was committed
	 * before is intact. With room again the next commit goes through. */
	fail_wal = 1;
	int rc = insert_rows(w, 20);
	fail_wal = 0;
	CHECK(rc == SQLITE_FULL);
	CHECK(count_rows(w) == 1240);
	CHECK(count_rows(r) == 1240);
	CHECK(insert_rows(w, 5) == SQLITE_OK);
	CHECK(count_rows(r) == 1245);
	CHECK(integrity_ok(r));
	CHECK(rows_after_crash(path, dir) == 1245);

	/* Only the second piece of a COMMIT's write fails (120 KB of frames go out in 96 KiB
	 * pieces): COMMIT fails, and what waited is dropped. Kept, it went to the file on
	 * the rollback's next read, commit frame and all, and a crash brought it back. */
	fail_wal_nth = 2;
	rc = insert_rows(w, 40);
	fail_wal_nth = 0;
	CHECK(rc == SQLITE_FULL);
	CHECK(count_rows(w) == 1245);
	CHECK(rows_after_crash(path, dir) == 1245);
	CHECK(insert_rows(w, 5) == SQLITE_OK);
	CHECK(rows_after_crash(path, dir) == 1250);

	/* A checkpoint (through the reader's connection) copies what the writer's
	 * connection wrote: the database file alone holds every row. */
	CHECK(exec(r, "PRAGMA wal_checkpoint(TRUNCATE)") == SQLITE_OK);
	sqlite3_close(r);
	sqlite3_close(w);
	sqlite3 *again = open_db(path, NULL);
	CHECK(count_rows(again) == 1250);
	CHECK(integrity_ok(again));
	sqlite3_close(again);

	CHECK(padded_commits_wrong(dir, 4096, 3, "randomblob(100)") == 0);
	CHECK(padded_commits_wrong(dir, 512, 400, "randomblob(50 + abs(random()) % 300)") == 0);
	CHECK(padded_commits_wrong(dir, 1024, 400, "randomblob(50 + abs(random()) % 300)") == 0);
	/* a last page whose second word is 0, as a frame header of no commit has */
	CHECK(padded_commits_wrong(dir, 4096, 30, "zeroblob(3 * 4096)") == 0);

	rolled_back_spill(dir, 0);
	rolled_back_spill(dir, 1);
	read_flush_fails(dir, 0);
	read_flush_fails(dir, 2);

	unix_vfs->xSetSystemCall(unix_vfs, "pwrite64", NULL);
	remove_db(path);
	rmdir(dir);
	return CHECK_DONE();
}
