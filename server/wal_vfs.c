/*
 * wal_vfs.c - the VFS of wal_vfs.h: a WAL file that gathers a commit's writes.
 *
 * Files other than a WAL are the default VFS's own files, opened in place: only their
 * size in memory differs. A WAL file is a struct gather_file with the default VFS's file
 * behind it.
 *
 * Which writes wait: only one that continues the write before it (off == tail), once the
 * frame size is known (from the WAL header, written or read). SQLite appends frames that
 * way; everything else it writes to a WAL (the WAL header after a restart, a page of this
 * transaction rewritten in place, the frame headers whose checksums walRewriteChecksums
 * redoes after such a rewrite, the last of them being the commit frame's) lands
 * elsewhere and goes to the file at once, after what waits.
 * A frame header is a 24-byte write at a frame's start: a piece of a page that SQLite
 * split around a sync can be 24 bytes long too. From a commit frame's header on, until
 * the next frame's header, every write goes to the file before xWrite returns, with what
 * waits before it: so the commit frame's page and the padding frames SQLite may add after
 * it for a sector (synchronous=FULL on a disk without powersafe overwrite) are in the
 * file when COMMIT returns.
 *
 * Invariants of a gather_file:
 * - buf holds bytes this connection wrote that follow each other (file offsets buf_off ..
 *   buf_off + len) and are not yet in the file. They belong to frames of a
 *   transaction not yet committed, which no other connection reads (readers look only at
 *   frames a commit has listed in the wal-index) and the syncer need not sync.
 * - after a rollback they are garbage, and the connection no longer holds the WAL's write
 *   lock: another connection may restart the WAL and commit over their offsets. The
 *   rollback hook (wal_vfs_rolled_back) drops them, and so does close.
 * - every other method but xClose, xSectorSize and xDeviceCharacteristics empties the
 *   buffer into the file first, so this connection's reads, syncs, truncations and locks
 *   see the file as SQLite wrote it.
 * - a failed flush fails the call that flushed it and keeps what did not reach the file
 *   waiting (buf_off moves past what did): SQLite may roll back only the statement and
 *   commit the transaction later, with those frames listed in its wal-index. Except at
 *   the commit frame: that COMMIT fails and SQLite rolls the whole transaction back, so
 *   what waits is dropped (kept, the rollback's next read wrote it out, commit frame
 *   and all, and a crash brought back a transaction answered as failed).
 */
#include "wal_vfs.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WAL_HEADER 32            /* the WAL's own header: magic, version, page size, ... */
#define FRAME_HEADER 24          /* WAL frame header: page number, commit size, ... */
#define GATHER_MIN (64 * 1024)   /* first buffer */
#define GATHER_MAX (1024 * 1024) /* a buffer this full is written without waiting */
/* The unix VFS keeps only the low 17 bits of a write's length (seekAndWriteFd), so a
 * write of 128 KiB or more comes out short and is reported as a full disk: the buffer
 * goes out in pieces this long. */
#define WRITE_MAX ((size_t)96 * 1024)

struct gather_file {
	sqlite3_file base;  /* pMethods = &gather_methods */
	sqlite3_file *real; /* the default VFS's file, right behind this struct */
	unsigned char *buf;
	size_t len, cap;
	sqlite3_int64 buf_off;
	sqlite3_int64 tail;       /* where the last write ended; -1 unknown */
	sqlite3_int64 frame_size; /* 24 + the page size, from the WAL header; 0 unknown */
	int in_commit_frame;      /* the last frame header written was a commit frame's */
};

/* The file behind, aligned as SQLite aligns its own (8). */
#define GATHER_SIZE ((sizeof(struct gather_file) + 7) & ~(size_t)7)

static sqlite3_vfs *default_vfs;
static sqlite3_vfs gather_vfs;
static sqlite3_io_methods gather_methods;
static int registered_rc = -1;
static pthread_once_t register_once = PTHREAD_ONCE_INIT;

/* Writes what waits. On a failure what did not reach the file keeps waiting: the
 * transaction may go on (SQLite rolls back only the statement after some errors) and
 * write it at its COMMIT; a rollback drops it. */
static int flush(struct gather_file *f)
{
	int rc = SQLITE_OK;
	size_t done = 0;
	while (done < f->len) {
		size_t n = f->len - done < WRITE_MAX ? f->len - done : WRITE_MAX;
		rc = f->real->pMethods->xWrite(f->real, f->buf + done, (int)n,
		                               f->buf_off + (sqlite3_int64)done);
		if (rc != SQLITE_OK)
			break;
		done += n;
	}
	if (done > 0 && done < f->len)
		memmove(f->buf, f->buf + done, f->len - done);
	f->len -= done;
	f->buf_off += (sqlite3_int64)done;
	return rc;
}

/* Room for n more bytes; 0 if the buffer cannot take them (the caller writes them
 * through instead). */
static int make_room(struct gather_file *f, size_t n)
{
	if (f->len + n <= f->cap)
		return 1;
	if (f->len + n > GATHER_MAX)
		return 0;
	size_t cap = f->cap ? f->cap : GATHER_MIN;
	while (cap < f->len + n)
		cap *= 2;
	unsigned char *buf = realloc(f->buf, cap);
	if (!buf)
		return 0;
	f->buf = buf;
	f->cap = cap;
	return 1;
}

/* The frame size (24 + the page size) a WAL header (its first 32 bytes) names; 0 if it
 * is not one. */
static sqlite3_int64 header_frame_size(const unsigned char *h)
{
	uint32_t page = (uint32_t)h[8] << 24 | (uint32_t)h[9] << 16 | (uint32_t)h[10] << 8 | h[11];
	if (page == 1)
		page = 65536; /* how the header writes 64 KiB */
	return page >= 512 && page <= 65536 && (page & (page - 1)) == 0 ? page + FRAME_HEADER : 0;
}

/* Learns the frame size from the WAL header already in the file. */
static void read_frame_size(struct gather_file *f)
{
	unsigned char h[WAL_HEADER];
	if (flush(f) == SQLITE_OK &&
	    f->real->pMethods->xRead(f->real, h, (int)sizeof(h), 0) == SQLITE_OK)
		f->frame_size = header_frame_size(h);
}

static int gather_write(sqlite3_file *file, const void *data, int amount, sqlite3_int64 off)
{
	struct gather_file *f = (struct gather_file *)file;
	const unsigned char *bytes = data;
	size_t n = (size_t)amount;
	int rc;

	if (off == 0 && n == WAL_HEADER) /* a new WAL, or a restart */
		f->frame_size = header_frame_size(bytes);
	else if (f->frame_size == 0)
		read_frame_size(f);
	/* A frame header is 24 bytes at a frame's start (a piece of a page that SQLite split
	 * around a sync may be 24 bytes too); its second word is the database size after a
	 * commit, 0 otherwise. */
	int header = n == FRAME_HEADER && f->frame_size && off >= WAL_HEADER &&
	             (off - WAL_HEADER) % f->frame_size == 0;
	if (header)
		f->in_commit_frame = (bytes[4] | bytes[5] | bytes[6] | bytes[7]) != 0;
	/* Without the frame size no write can be told from a header: none waits. */
	sqlite3_int64 end = f->len ? f->buf_off + (sqlite3_int64)f->len : f->tail;
	int appends = off == end && f->frame_size;
	f->tail = -1; /* until this write is in the buffer or the file */
	if (!appends || !make_room(f, n)) {
		if ((rc = flush(f)) != SQLITE_OK)
			return rc;
		if (!appends || !make_room(f, n)) { /* not an append, or no memory */
			rc = f->real->pMethods->xWrite(f->real, data, amount, off);
			if (rc == SQLITE_OK)
				f->tail = off + amount;
			return rc;
		}
	}
	f->tail = off + amount;
	if (f->len == 0)
		f->buf_off = off;
	memcpy(f->buf + f->len, data, n);
	f->len += n;
	if (!f->in_commit_frame || header)
		return SQLITE_OK;
	rc = flush(f);
	if (rc != SQLITE_OK) {
		/* COMMIT fails and SQLite rolls the whole transaction back. Kept, the rest
		 * went to the file on the rollback's next read (of a page it keeps in the
		 * WAL), commit frame and all: a valid commit past the WAL's end that the next
		 * write covers, but that a crash before it brought back, so a batch answered
		 * 503 was there after a restart. */
		f->len = 0;
		f->tail = -1;
	}
	return rc;
}

/* What still waits at close belongs to a transaction that did not commit (a commit
 * leaves nothing waiting): it is dropped, not written. */
static int gather_close(sqlite3_file *file)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = f->real->pMethods->xClose(f->real);
	free(f->buf);
	f->buf = NULL;
	f->len = f->cap = 0;
	return rc;
}

/* Each of the rest empties the buffer, then asks the file behind. */

static int gather_read(sqlite3_file *file, void *data, int amount, sqlite3_int64 off)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, data, amount, off);
}

static int gather_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	f->tail = -1;
	return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int gather_sync(sqlite3_file *file, int flags)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int gather_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int gather_lock(sqlite3_file *file, int level)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xLock(f->real, level);
}

static int gather_unlock(sqlite3_file *file, int level)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xUnlock(f->real, level);
}

static int gather_check_reserved(sqlite3_file *file, int *out)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int gather_file_control(sqlite3_file *file, int op, void *arg)
{
	struct gather_file *f = (struct gather_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

static int gather_sector_size(sqlite3_file *file)
{
	struct gather_file *f = (struct gather_file *)file;
	return f->real->pMethods->xSectorSize(f->real);
}

static int gather_device_characteristics(sqlite3_file *file)
{
	struct gather_file *f = (struct gather_file *)file;
	return f->real->pMethods->xDeviceCharacteristics(f->real);
}

static int gather_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags,
                       int *out_flags)
{
	(void)vfs;
	if (!(flags & SQLITE_OPEN_WAL)) /* the default VFS's file, in place */
		return default_vfs->xOpen(default_vfs, name, file, flags, out_flags);

	struct gather_file *f = (struct gather_file *)file;
	memset(f, 0, sizeof(*f));
	f->tail = -1;
	f->real = (sqlite3_file *)((char *)file + GATHER_SIZE);
	int rc = default_vfs->xOpen(default_vfs, name, f->real, flags, out_flags);
	/* SQLite calls xClose only on a file whose pMethods is set. */
	f->base.pMethods = rc == SQLITE_OK && f->real->pMethods ? &gather_methods : NULL;
	if (rc == SQLITE_OK && !f->real->pMethods)
		rc = SQLITE_CANTOPEN;
	return rc;
}

/* The rest of the VFS is the default one's. */
static int vfs_delete(sqlite3_vfs *v, const char *name, int sync_dir)
{
	(void)v;
	return default_vfs->xDelete(default_vfs, name, sync_dir);
}

static int vfs_access(sqlite3_vfs *v, const char *name, int flags, int *out)
{
	(void)v;
	return default_vfs->xAccess(default_vfs, name, flags, out);
}

static int vfs_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out)
{
	(void)v;
	return default_vfs->xFullPathname(default_vfs, name, n, out);
}

static void *vfs_dl_open(sqlite3_vfs *v, const char *name)
{
	(void)v;
	return default_vfs->xDlOpen(default_vfs, name);
}

static void vfs_dl_error(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	default_vfs->xDlError(default_vfs, n, out);
}

static void (*vfs_dl_sym(sqlite3_vfs *v, void *handle, const char *sym))(void)
{
	(void)v;
	return default_vfs->xDlSym(default_vfs, handle, sym);
}

static void vfs_dl_close(sqlite3_vfs *v, void *handle)
{
	(void)v;
	default_vfs->xDlClose(default_vfs, handle);
}

static int vfs_randomness(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return default_vfs->xRandomness(default_vfs, n, out);
}

static int vfs_sleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return default_vfs->xSleep(default_vfs, us);
}

static int vfs_current_time(sqlite3_vfs *v, double *out)
{
	(void)v;
	return default_vfs->xCurrentTime(default_vfs, out);
}

static int vfs_last_error(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return default_vfs->xGetLastError(default_vfs, n, out);
}

static int vfs_current_time_int64(sqlite3_vfs *v, sqlite3_int64 *out)
{
	(void)v;
	return default_vfs->xCurrentTimeInt64(default_vfs, out);
}

static void register_gather_vfs(void)
{
	default_vfs = sqlite3_vfs_find(NULL);
	/* Version 2 of the VFS (xCurrentTimeInt64): the unix VFS's since SQLite 3.7. */
	if (!default_vfs || default_vfs->iVersion < 2 || !default_vfs->xCurrentTimeInt64)
		return;
	/* Version 1: SQLite maps shared memory and pages through the database file, never
	 * through its WAL. */
	gather_methods = (sqlite3_io_methods){
	    .iVersion = 1,
	    .xClose = gather_close,
	    .xRead = gather_read,
	    .xWrite = gather_write,
	    .xTruncate = gather_truncate,
	    .xSync = gather_sync,
	    .xFileSize = gather_file_size,
	    .xLock = gather_lock,
	    .xUnlock = gather_unlock,
	    .xCheckReservedLock = gather_check_reserved,
	    .xFileControl = gather_file_control,
	    .xSectorSize = gather_sector_size,
	    .xDeviceCharacteristics = gather_device_characteristics,
	};
	gather_vfs = (sqlite3_vfs){
	    .iVersion = 2,
	    .szOsFile = (int)GATHER_SIZE + default_vfs->szOsFile,
	    .mxPathname = default_vfs->mxPathname,
	    .zName = WAL_VFS_NAME,
	    .xOpen = gather_open,
	    .xDelete = vfs_delete,
	    .xAccess = vfs_access,
	    .xFullPathname = vfs_full_pathname,
	    .xDlOpen = vfs_dl_open,
	    .xDlError = vfs_dl_error,
	    .xDlSym = vfs_dl_sym,
	    .xDlClose = vfs_dl_close,
	    .xRandomness = vfs_randomness,
	    .xSleep = vfs_sleep,
	    .xCurrentTime = vfs_current_time,
	    .xGetLastError = vfs_last_error,
	    .xCurrentTimeInt64 = vfs_current_time_int64,
	};
	if (sqlite3_vfs_register(&gather_vfs, 0) == SQLITE_OK)
		registered_rc = 0;
}

void wal_vfs_rolled_back(void *db)
{
	sqlite3_file *file = NULL;
	if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &file) != SQLITE_OK ||
	    !file || file->pMethods != &gather_methods)
		return;
	struct gather_file *f = (struct gather_file *)file;
	f->len = 0;
	f->tail = -1;
}

int wal_vfs_register(void)
{
	pthread_once(&register_once, register_gather_vfs);
	return registered_rc;
}
