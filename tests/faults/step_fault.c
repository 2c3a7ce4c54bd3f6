/*
 * step_fault.c - an LD_PRELOAD shim for tests: makes sqlite3_step fail with SQLITE_IOERR,
 * as a failing disk would, for chosen statements, at random, while a flag file exists;
 * or makes every fdatasync stall first, as a disk with a slow flush would; or makes
 * curl_easy_init fail, as it does out of memory.
 *
 *   FAULT_STEP_SQL   '|'-separated prefixes of the statements' SQL text to fail, each
 *                    optionally followed by "@P", its own probability
 *   FAULT_STEP_P     probability of failing each matching step otherwise (default 0.02)
 *   FAULT_STEP_FLAG  faults happen only while this file exists (so a relay can start and
 *                    be set up cleanly, then have faults, then none)
 *   FAULT_FSYNC_MS   while the flag file exists, each fdatasync sleeps this long first
 *   FAULT_STEP_STALL_MS  set: a statement chosen by FAULT_STEP_SQL sleeps this long at
 *                    its first step and then runs, instead of failing (a reader held
 *                    between two statements)
 *   FAULT_CURL_INIT  set (to anything): while the flag file exists, curl_easy_init returns
 *                    NULL, as it does out of memory (the sender cannot start a request)
 *
 * The stall hits every fdatasync of the process, SQLite's own (checkpoints) as well as
 * the relay's syncer. Every other call goes to SQLite, libcurl or libc untouched. The random
 * sequence is fixed (erand48 with a constant seed) and shared by the threads under a lock.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int (*real_step)(sqlite3_stmt *);
static int (*real_fdatasync)(int);
static void *(*real_curl_easy_init)(void);
static int fail_curl_init;
static long fsync_stall_ms, step_stall_ms;
static const char *prefixes, *flag;
static double probability = 0.02;
static unsigned short seed[3] = {0x1234, 0x5678, 0x9abc};
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t seed_lock = PTHREAD_MUTEX_INITIALIZER;

static void setup(void)
{
	const char *p = getenv("FAULT_STEP_P");
	const char *stall = getenv("FAULT_FSYNC_MS");
	const char *step_stall = getenv("FAULT_STEP_STALL_MS");

	real_step = (int (*)(sqlite3_stmt *))dlsym(RTLD_NEXT, "sqlite3_step");
	real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	real_curl_easy_init = (void *(*)(void))dlsym(RTLD_NEXT, "curl_easy_init");
	fail_curl_init = getenv("FAULT_CURL_INIT") != NULL;
	if (stall)
		fsync_stall_ms = atol(stall);
	if (step_stall)
		step_stall_ms = atol(step_stall);
	prefixes = getenv("FAULT_STEP_SQL");
	flag = getenv("FAULT_STEP_FLAG");
	if (p)
		probability = atof(p);
}

/* The probability of failing a step of sql: that of the first prefix it starts with, or 0. */
static double chance(const char *sql)
{
	for (const char *q = prefixes; q && *q;) {
		const char *bar = strchr(q, '|');
		size_t n = bar ? (size_t)(bar - q) : strlen(q);
		const char *at = memchr(q, '@', n);
		size_t len = at ? (size_t)(at - q) : n;
		if (len > 0 && strncmp(sql, q, len) == 0)
			return at ? atof(at + 1) : probability;
		if (!bar)
			break;
		q = bar + 1;
	}
	return 0;
}

static int roll(double p)
{
	pthread_mutex_lock(&seed_lock);
	double r = erand48(seed);
	pthread_mutex_unlock(&seed_lock);
	return r < p;
}

static void stall_ms(long ms)
{
	struct timespec stall = {ms / 1000, ms % 1000 * 1000000};
	nanosleep(&stall, NULL);
}

int sqlite3_step(sqlite3_stmt *st)
{
	const char *sql;

	pthread_once(&once, setup);
	sql = sqlite3_sql(st);
	double p = sql && flag ? chance(sql) : 0;
	if (p > 0 && access(flag, F_OK) == 0 && roll(p)) {
		if (step_stall_ms <= 0)
			return SQLITE_IOERR;
		if (!sqlite3_stmt_busy(st)) /* its first step only, not each row's */
			stall_ms(step_stall_ms);
	}
	return real_step(st);
}

int fdatasync(int fd)
{
	pthread_once(&once, setup);
	if (fsync_stall_ms > 0 && flag && access(flag, F_OK) == 0)
		stall_ms(fsync_stall_ms);
	return real_fdatasync(fd);
}

/* (void *: the shim does not include curl.h; CURL is an opaque struct to the caller) */
void *curl_easy_init(void);
void *curl_easy_init(void)
{
	pthread_once(&once, setup);
	if (fail_curl_init && flag && access(flag, F_OK) == 0)
		return NULL;
	return real_curl_easy_init ? real_curl_easy_init() : NULL;
}
