/*
 * wal_vfs.h - a SQLite VFS that writes a WAL commit in one call per 96 KiB.
 *
 * SQLite writes every WAL frame as two writes (its 24-byte header, then its page), so
 * a commit of 25 pages cost the writer thread 50 pwrite calls, about a tenth of its CPU
 * per published event. This VFS wraps the default one and gathers a WAL's writes that
 * follow each other until the commit frame's page is in. Open the connection that
 * writes with WAL_VFS_NAME, with wal_vfs_rolled_back as its rollback hook; other
 * connections may use the default VFS on the same file (locking is the default VFS's).
 *
 * Threads: wal_vfs_register from any thread, as often as liked.
 */
#ifndef HOOKRELAY_WAL_VFS_H
#define HOOKRELAY_WAL_VFS_H

#define WAL_VFS_NAME "hookrelay-wal"

/* Registers the VFS (not as the default) once. Returns 0, or -1 if SQLite has no
 * default VFS to wrap or would not register it. */
int wal_vfs_register(void);

/* Drops the frames the WAL of db (a sqlite3 *) still holds back, which a rollback has
 * just made garbage: written later they could land on frames another connection
 * committed meanwhile. Its type is a rollback hook's: pass it to sqlite3_rollback_hook
 * with db as the argument. Does nothing for a connection not on this VFS. */
void wal_vfs_rolled_back(void *db);

#endif
