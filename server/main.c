/*
 * main.c - hookrelay's entry: flags and HOOKRELAY_* environment, start-up in order
 * (store, dispatcher, HTTP), and a graceful stop on SIGINT/SIGTERM/SIGHUP.
 *
 * Every configuration error exits here with a message; after start-up nothing exits.
 * Signals are blocked in every thread and taken by sigwait() in main, so no handler
 * runs in the middle of anything.
 */
#include <curl/curl.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "backoff.h"
#include "dispatcher.h"
#include "http.h"
#include "sender.h"
#include "store.h"
#include "target.h"
#include "util.h"
#include "verify.h"

#define KEYS_MAX 16
#define STOP_DEADLINE_MS 5000 /* in-flight deliveries get this long to finish on stop */

struct config {
	char listen_host[64];
	int listen_port;
	const char *db_path;
	int http_threads;
	size_t max_body;                       /* bytes */
	int64_t delivery_timeout_ms;
	int max_in_flight;
	int max_per_host;
	int max_idle_connections;                  /* delivery connections kept open beyond those
	                                              in flight */
	int delivery_nice;                         /* the dispatcher's nice above the others' */
	int64_t retry_schedule[BACKOFF_MAX_STEPS]; /* ms */
	int retry_count;
	const char *admin_keys[KEYS_MAX + 1];
	int nadmin;
	char *file_keys[KEYS_MAX]; /* the admin keys read from a file: owned */
	int nfile_keys;
	const char *publish_keys[KEYS_MAX + 1];
	int npublish;
	int allow_private_targets;
	const char *allow_targets;             /* CIDR list, or NULL; parsed in serve() */
	const char *ca_file;                   /* PEM CAs for https receivers, or NULL */
	int synchronous_full;
	size_t max_queue;
	int64_t disable_after_ms;
	int64_t retention_ms;
};

static const char usage[] =
    "usage: hookrelay serve [flags]      run the relay\n"
    "       hookrelay verify [flags]     check a received webhook's signature (verify --help)\n"
    "       hookrelay --help | --version\n"
    "\n"
    "Flags (each also an environment variable HOOKRELAY_<FLAG>, e.g. HOOKRELAY_LISTEN):\n"
    "  --listen ADDR:PORT         where to listen (default 127.0.0.1:8080; port 0 = any free)\n"
    "  --db PATH                  SQLite database file (default ./data/hookrelay.db)\n"
    "  --http-threads N           HTTP worker threads (default: half the cores, at least 1)\n"
    "  --max-body SIZE            largest request body, e.g. 1MiB, 64KiB (default 1MiB)\n"
    "  --delivery-timeout DUR     per-attempt timeout, e.g. 15s, 500ms (default 15s)\n"
    "  --max-in-flight N          deliveries in flight at once (default 256)\n"
    "  --max-per-host N           requests at once per receiver host:port (default 32)\n"
    "  --max-idle-connections N   delivery connections kept open for reuse beyond those\n"
    "                             in flight (default 1024)\n"
    "  --delivery-nice N          how much lower the delivery thread's CPU priority is\n"
    "                             than publishing's, 0..19: on a busy machine publishes\n"
    "                             stay quick and deliveries catch up after (default 10)\n"
    "  --retry-schedule LIST      delays after each failed attempt\n"
    "                             (default " BACKOFF_DEFAULT ")\n"
    "  --api-key KEY              require 'Authorization: Bearer KEY' on /v1 (repeatable)\n"
    "  --api-key-file PATH        read admin keys from a file, one per line\n"
    "  --publish-key KEY          a key that may only POST events (repeatable)\n"
    "  --allow-private-targets    allow subscriptions to loopback/private addresses\n"
    "  --allow-targets CIDR,...   allow just these otherwise blocked networks, e.g.\n"
    "                             127.0.0.1/32,10.20.0.0/16,fd00::/8\n"
    "  --ca-file PATH             trust only the CAs in this PEM file for https\n"
    "                             receivers (default: the system's CAs)\n"
    "  --synchronous full|normal  fsync every commit (full, default) or not (normal)\n"
    "  --max-queue N              writes queued before answering 503 (default 8192)\n"
    "  --disable-after DUR        disable a subscription whose deliveries all failed this\n"
    "                             long, e.g. 5d, 12h; 0 = never (default 5d)\n"
    "  --retention DUR            delete events older than this with their deliveries\n"
    "                             and attempts (not while one is pending), e.g. 90d;\n"
    "                             0 = keep for ever (default 30d)\n"
    "\n"
    "Send SIGINT, SIGTERM or SIGHUP to stop: in-flight deliveries get 5 s to finish, then are put\n"
    "back (sent again after the next start); a second signal puts them back at once.\n";

/* The environment variable the value being applied came from, or NULL for a flag: an
 * error names where the bad value is. */
static const char *config_source;

_Noreturn static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "hookrelay: ");
	fprintf(stderr, fmt, arg);
	if (config_source)
		fprintf(stderr, " (from %s)", config_source);
	fprintf(stderr, "\n");
	exit(2);
}

static int parse_size(const char *text, size_t *out)
{
	char *end = NULL;
	unsigned long long n;
	unsigned long long mult = 1;

	errno = 0;
	if (!text || text[0] < '0' || text[0] > '9')
		return -1;
	n = strtoull(text, &end, 10);
	if (errno)
		return -1;
	if (*end == '\0' || strcasecmp(end, "b") == 0)
		mult = 1;
	else if (strcasecmp(end, "kib") == 0 || strcasecmp(end, "k") == 0 || strcasecmp(end, "kb") == 0)
		mult = 1024;
	else if (strcasecmp(end, "mib") == 0 || strcasecmp(end, "m") == 0 || strcasecmp(end, "mb") == 0)
		mult = 1024 * 1024;
	else
		return -1;
	if (n == 0 || n > (64ULL << 20) / mult)
		return -1; /* 1 byte .. 64 MiB */
	*out = (size_t)(n * mult);
	return 0;
}

static void parse_listen(struct config *c, const char *text)
{
	const char *colon = strrchr(text, ':');
	const char *host = text;
	size_t hlen;
	int64_t port;

	if (!colon || util_parse_int(colon + 1, 0, 65535, &port) != 0)
		die("--listen wants ADDR:PORT, e.g. 127.0.0.1:8080 or [::1]:8080, not '%s'", text);
	hlen = (size_t)(colon - text);
	if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
		host++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof(c->listen_host))
		die("--listen: bad address in '%s'", text);
	memcpy(c->listen_host, host, hlen);
	c->listen_host[hlen] = '\0';
	if (strcmp(c->listen_host, "localhost") == 0)
		memcpy(c->listen_host, "127.0.0.1", sizeof("127.0.0.1"));
	unsigned char addr[16];
	if (inet_pton(strchr(c->listen_host, ':') ? AF_INET6 : AF_INET, c->listen_host, addr) != 1)
		die("--listen: '%s' is not a numeric IPv4 or IPv6 address (or localhost)",
		    c->listen_host);
	c->listen_port = (int)port;
}

static int parse_positive(const char *text, int max, int *out)
{
	int64_t v;
	if (util_parse_int(text, 1, max, &v) != 0)
		return -1;
	*out = (int)v;
	return 0;
}

/* "0" (off) or a duration of at least 1s, in ms. */
/* A duration of at least 1 s, or any spelling of zero (0, 0s, 0d, 00): off. */
static int parse_duration_or_zero(const char *text, int64_t *ms)
{
	if (backoff_parse_duration(text, ms) != 0)
		return -1;
	return *ms == 0 || *ms >= 1000 ? 0 : -1;
}

static void add_key(const char **keys, int *n, const char *key, const char *flag)
{
	if (strlen(key) < 16)
		die("%s: a key must be at least 16 characters", flag);
	for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
		/* A Bearer token carries none; in a key file it is a "key # note" line. */
		if (*p <= ' ' || *p == 0x7f)
			die("%s: a key may not contain white space or control characters "
			    "(a # comment must start its own line)", flag);
	}
	if (*n == KEYS_MAX)
		die("%s: too many keys", flag);
	keys[(*n)++] = key;
}

/* Keys from a file: one per line, white space around a key dropped; blank lines and #
 * comments skipped. A file with no key is an error, not "no authentication": an empty
 * secret mount must not open the API. The copies are c->file_keys, freed by serve(). */
static void add_key_file(struct config *c, const char *path)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	int found = 0;

	if (!f)
		die("--api-key-file: cannot read %s", path);
	for (int first = 1; fgets(line, sizeof(line), f); first = 0) {
		/* A full buffer with no end of line: the line goes on, unless the file ends.
		 * Decided before a BOM is dropped, or a first line 3 bytes too long passed
		 * as two keys. */
		size_t got = strlen(line);
		int cut = got == sizeof(line) - 1 && line[got - 1] != '\n';
		/* a byte-order mark (Windows editors) would become part of the first key */
		if (first && memcmp(line, "\xef\xbb\xbf", 3) == 0)
			memmove(line, line + 3, strlen(line + 3) + 1);
		size_t len = strcspn(line, "\r\n");
		if (cut) {
			int next = getc(f);
			if (next != EOF && next != '\n' && next != '\r')
				die("--api-key-file: a line of %s is over 1,023 bytes", path);
		}
		line[len] = '\0';
		while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
			line[--len] = '\0';
		const char *start = line + strspn(line, " \t");
		if (*start == '\0' || *start == '#')
			continue;
		char *key = strdup(start);
		if (!key)
			die("%s", "out of memory");
		add_key(c->admin_keys, &c->nadmin, key, "--api-key-file");
		c->file_keys[c->nfile_keys++] = key; /* add_key took it: fewer than KEYS_MAX */
		found++;
	}
	fclose(f);
	if (!found)
		die("--api-key-file: %s holds no key", path);
}

/* A switch's value: none (given as a bare flag) or 1/true/yes/on is on, 0/false/no/off
 * off; anything else is an error, so HOOKRELAY_ALLOW_PRIVATE_TARGETS=false is off. */
static int parse_switch(const char *name, const char *value)
{
	static const char *const on[] = {"1", "true", "yes", "on"};
	static const char *const off[] = {"0", "false", "no", "off"};

	if (!value)
		return 1;
	for (size_t i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
		if (strcasecmp(value, on[i]) == 0)
			return 1;
		if (strcasecmp(value, off[i]) == 0)
			return 0;
	}
	die("--%s wants true or false (1/0, yes/no, on/off)", name);
	return 0;
}

/* Every flag of serve (each also read from HOOKRELAY_<NAME>). */
static const char *const env_flags[] = {
    "listen",
    "db",
    "http-threads",
    "max-body",
    "delivery-timeout",
    "max-in-flight",
    "max-per-host",
    "max-idle-connections",
    "retry-schedule",
    "api-key",
    "api-key-file",
    "publish-key",
    "allow-private-targets",
    "allow-targets",
    "ca-file",
    "synchronous",
    "max-queue",
    "disable-after",
    "retention",
    "delivery-nice",
    NULL,
};

/* Applies one flag (name without "--") with its value (NULL for switches). Returns 1 if
 * the flag takes a value, 0 for a switch. */
static int apply_flag(struct config *c, const char *name, const char *value)
{
	const char *why = NULL;
	int64_t ms;

#define NEED_VALUE()                                                   \
	do {                                                           \
		if (!value)                                            \
			die("--%s needs a value (see --help)", name);  \
	} while (0)
	if (strcmp(name, "allow-private-targets") == 0) {
		c->allow_private_targets = parse_switch(name, value);
		return 0;
	}
	size_t known = 0;
	while (env_flags[known] && strcmp(env_flags[known], name) != 0)
		known++;
	if (!env_flags[known]) /* before its value: a last --bogus needs none */
		die("unknown flag --%s (see --help)", name);
	NEED_VALUE();
	if (strcmp(name, "listen") == 0) {
		parse_listen(c, value);
	} else if (strcmp(name, "allow-targets") == 0) {
		c->allow_targets = value;
	} else if (strcmp(name, "ca-file") == 0) {
		char why_not[512];
		if (sender_ca_file_check(value, why_not, sizeof why_not) != 0)
			die("--ca-file: %s", why_not);
		c->ca_file = value;
	} else if (strcmp(name, "db") == 0) {
		/* SQLite would take these for a database in memory, gone at the next start, and
		 * its read connections would each see another one */
		if (!*value || strcmp(value, ":memory:") == 0 || strncmp(value, "file:", 5) == 0)
			die("--db wants the path of a database file, not '%s'", value);
		c->db_path = value;
	} else if (strcmp(name, "http-threads") == 0) {
		if (parse_positive(value, 256, &c->http_threads) != 0)
			die("--http-threads wants 1..256, not '%s'", value);
	} else if (strcmp(name, "max-body") == 0) {
		if (parse_size(value, &c->max_body) != 0)
			die("--max-body wants a size like 1MiB or 65536 (at most 64MiB), not '%s'", value);
	} else if (strcmp(name, "delivery-timeout") == 0) {
		if (backoff_parse_duration(value, &ms) != 0 || ms < 100 || ms > 300000)
			die("--delivery-timeout wants a duration from 100ms to 5m, not '%s'", value);
		c->delivery_timeout_ms = ms;
	} else if (strcmp(name, "max-in-flight") == 0) {
		if (parse_positive(value, 100000, &c->max_in_flight) != 0)
			die("--max-in-flight wants 1..100000, not '%s'", value);
	} else if (strcmp(name, "max-per-host") == 0) {
		if (parse_positive(value, 10000, &c->max_per_host) != 0)
			die("--max-per-host wants 1..10000, not '%s'", value);
	} else if (strcmp(name, "max-idle-connections") == 0) {
		int64_t n;
		if (util_parse_int(value, 0, 100000, &n) != 0)
			die("--max-idle-connections wants 0..100000, not '%s'", value);
		c->max_idle_connections = (int)n;
	} else if (strcmp(name, "delivery-nice") == 0) {
		int64_t n;
		if (util_parse_int(value, 0, 19, &n) != 0)
			die("--delivery-nice wants 0..19, not '%s'", value);
		c->delivery_nice = (int)n;
	} else if (strcmp(name, "retry-schedule") == 0) {
		c->retry_count = backoff_parse_schedule(value, c->retry_schedule, BACKOFF_MAX_STEPS, &why);
		if (c->retry_count < 0)
			die("--retry-schedule: %s", why);
	} else if (strcmp(name, "api-key") == 0) {
		add_key(c->admin_keys, &c->nadmin, value, "--api-key");
	} else if (strcmp(name, "api-key-file") == 0) {
		add_key_file(c, value);
	} else if (strcmp(name, "publish-key") == 0) {
		add_key(c->publish_keys, &c->npublish, value, "--publish-key");
	} else if (strcmp(name, "synchronous") == 0) {
		if (strcmp(value, "full") == 0)
			c->synchronous_full = 1;
		else if (strcmp(value, "normal") == 0)
			c->synchronous_full = 0;
		else
			die("--synchronous wants full or normal, not '%s'", value);
	} else if (strcmp(name, "disable-after") == 0) {
		if (parse_duration_or_zero(value, &c->disable_after_ms) != 0)
			die("--disable-after wants a duration from 1s to 365d (or 0 for never), "
			    "not '%s'",
			    value);
	} else if (strcmp(name, "retention") == 0) {
		if (parse_duration_or_zero(value, &c->retention_ms) != 0)
			die("--retention wants a duration from 1s to 365d (or 0 for ever), "
			    "not '%s'", value);
	} else if (strcmp(name, "max-queue") == 0) {
		int q;
		if (parse_positive(value, 1000000, &q) != 0)
			die("--max-queue wants 1..1000000, not '%s'", value);
		c->max_queue = (size_t)q;
	} else {
		die("unknown flag --%s (see --help)", name); /* a name added above but not here */
	}
	return 1;
#undef NEED_VALUE
}

/* Is --name given on the command line (as --name VALUE, --name=VALUE or a switch)? */
static int flag_given(int argc, char **argv, const char *name)
{
	size_t n = strlen(name);
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i];
		if (strncmp(arg, "--", 2) == 0 && strncmp(arg + 2, name, n) == 0 &&
		    (arg[2 + n] == '\0' || arg[2 + n] == '='))
			return 1;
	}
	return 0;
}

static void load_config(struct config *c, int argc, char **argv)
{
	const char *why;

	memset(c, 0, sizeof(*c));
	parse_listen(c, "127.0.0.1:8080");
	c->db_path = "./data/hookrelay.db";
	/* Requests hand off to the writer; more threads than half the cores only adds
	 * context switches (measured: 1 thread beat 4 by 1.5x on 2 cores). */
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	c->http_threads = cores >= 4 ? (int)(cores / 2) : 1;
	c->max_body = 1024 * 1024;
	c->delivery_timeout_ms = 15000;
	c->max_in_flight = 256;
	c->max_per_host = 32;
	c->max_idle_connections = 1024;
	c->delivery_nice = 10;
	c->synchronous_full = 1;
	c->max_queue = 8192;
	c->disable_after_ms = 5LL * 86400 * 1000;
	c->retention_ms = 30LL * 86400 * 1000;
	c->retry_count = backoff_parse_schedule(BACKOFF_DEFAULT, c->retry_schedule,
	                                        BACKOFF_MAX_STEPS, &why);

	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage, stdout);
			exit(0);
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("hookrelay %s\n", HOOKRELAY_VERSION);
			exit(0);
		}
	}
	/* The environment, name by name, unless the flag is given: a flag replaces its
	 * variable (keys given by flag replace the environment's, not add to them). */
	for (int i = 0; env_flags[i]; i++) {
		char var[64] = "HOOKRELAY_";
		size_t off = strlen(var);
		for (const char *p = env_flags[i]; *p && off < sizeof(var) - 1; p++)
			var[off++] = *p == '-' ? '_' : (char)(*p - ('a' <= *p && *p <= 'z' ? 32 : 0));
		var[off] = '\0';
		const char *value = getenv(var);
		if (!value || !*value || flag_given(argc, argv, env_flags[i]))
			continue;
		/* The admin keys are one setting, whichever way given: --api-key-file on the
		 * command line retires HOOKRELAY_API_KEY too, and --api-key the file's. */
		if ((strcmp(env_flags[i], "api-key") == 0 &&
		     flag_given(argc, argv, "api-key-file")) ||
		    (strcmp(env_flags[i], "api-key-file") == 0 &&
		     flag_given(argc, argv, "api-key")))
			continue;
		config_source = var;
		apply_flag(c, env_flags[i], value);
		config_source = NULL;
	}
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i];
		if (strncmp(arg, "--", 2) != 0)
			die("unexpected argument '%s' (see --help)", arg);
		char name[64];
		const char *eq = strchr(arg + 2, '=');
		size_t nlen = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
		if (nlen >= sizeof(name))
			die("unknown flag %s", arg);
		memcpy(name, arg + 2, nlen);
		name[nlen] = '\0';
		if (eq) {
			apply_flag(c, name, eq + 1);
		} else if (strcmp(name, "allow-private-targets") == 0) {
			apply_flag(c, name, NULL);
		} else {
			apply_flag(c, name, i + 1 < argc ? argv[i + 1] : NULL);
			i++;
		}
	}
	c->admin_keys[c->nadmin] = NULL;
	c->publish_keys[c->npublish] = NULL;
}

static int is_loopback(const char *host)
{
	return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

/* Every client connection and every delivery connection is a descriptor. A shell's soft
 * limit is often 1,024: at that many connections accept() failed and the connections
 * beyond waited unanswered, and a new delivery connection could fail the same way. Raise
 * the soft limit toward the hard one (as far as we need). Idle delivery connections are
 * only a saving, so when even the hard limit is short they are cut to fit, first; say so. */
static void raise_open_file_limit(struct config *c)
{
	/* + a wake-up descriptor per HTTP thread, + the db, WAL, pipes and curl's resolver */
	const rlim_t fixed =
	    HTTP_MAX_CONNECTIONS + (rlim_t)c->max_in_flight + (rlim_t)c->http_threads + 256;
	const rlim_t need = fixed + (rlim_t)c->max_idle_connections;
	struct rlimit rl;
	rlim_t was;
	const char *why = NULL;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
		return;
	was = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need ? rl.rlim_max : need;
	if (rl.rlim_cur > was && setrlimit(RLIMIT_NOFILE, &rl) != 0) {
		why = strerror(errno);
		rl.rlim_cur = was;
	}
	if (rl.rlim_cur >= need)
		return;
	const int idle_wanted = c->max_idle_connections;
	c->max_idle_connections = rl.rlim_cur > fixed ? (int)(rl.rlim_cur - fixed) : 0;
	fprintf(stderr,
	        "hookrelay: warning: the open-file limit is %llu (hard %llu%s%s), below the %llu "
	        "that %u connections, %d deliveries in flight and %d idle delivery connections "
	        "can use; keeping %d idle%s; raise it (ulimit -n, or LimitNOFILE= in a systemd "
	        "unit)%s\n",
	        (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
	        why ? "; raising it failed: " : "", why ? why : "", (unsigned long long)need,
	        HTTP_MAX_CONNECTIONS, c->max_in_flight, idle_wanted, c->max_idle_connections,
	        rl.rlim_cur < fixed ? ", and client connections or deliveries may still fail to "
	                              "open"
	                            : "",
	        rl.rlim_cur < fixed ? " or lower --max-in-flight" : "");
}

/* Creates the database's directory if it is missing (one level, like `make run` needs). */
static void ensure_db_dir(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path || (size_t)(slash - path) >= sizeof(dir))
		return;
	memcpy(dir, path, (size_t)(slash - path));
	dir[slash - path] = '\0';
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		fprintf(stderr, "hookrelay: cannot create %s: %s\n", dir, strerror(errno));
}

/* One relay per database: deliveries in flight are known only to the writer's memory, so
 * a second process on the same file would claim and send them again. An exclusive flock
 * on the database file itself (created empty if missing, which SQLite takes for a new
 * database) refuses it whatever name the second one uses: a symlink, a hard link. On a
 * local Linux file system flock is independent of SQLite's own POSIX locks (NFS emulates
 * flock with them, and SQLite over NFS is unsupported anyway); the descriptor stays open,
 * and so locked, until the process exits, and is never closed while SQLite has the
 * file open (closing another descriptor of the file would drop SQLite's locks). */
/*
 * Whether another process has db_path open through SQLite in WAL mode: 1 (its pid in
 * *pid, or 0 when it is not visible from here, e.g. in another PID namespace), or 0.
 * Every such connection holds a read lock on one byte of the -shm file while it is open
 * (SQLite's unix VFS: byte 128, its "DMS" lock); the -shm file is beside the database's
 * real path, symlinks resolved. A hookrelay from before the flock below took none (nor
 * does another program), and starting beside it would clear the leases of what it is
 * sending and send that again, or migrate the schema under it.
 */
static int shm_held(const char *db_path, long *pid)
{
	char real[PATH_MAX], shm[PATH_MAX + 8];
	struct flock probe = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 128, .l_len = 1};
	int held = 0;

	if (!realpath(db_path, real))
		return 0; /* SQLite will not open it either, and says why */
	snprintf(shm, sizeof shm, "%s-shm", real);
	int fd = open(shm, O_RDONLY | O_CLOEXEC);
	if (fd < 0) /* none: no one has it open in WAL mode (or it cannot be read: SQLite
	               will say so) */
		return 0;
	if (fcntl(fd, F_GETLK, &probe) == 0 && probe.l_type != F_UNLCK) {
		held = 1;
		*pid = (long)probe.l_pid;
	}
	close(fd); /* this process holds no lock on it yet: closing drops none */
	return held;
}

static int lock_database(const char *db_path)
{
	int fd = open(db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0) {
		fprintf(stderr, "hookrelay: %s: cannot open: %s\n", db_path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK)
			fprintf(stderr,
			        "hookrelay: %s is in use by another hookrelay; one relay per "
			        "database\n",
			        db_path);
		else
			fprintf(stderr, "hookrelay: %s: cannot lock: %s\n", db_path,
			        strerror(errno));
		close(fd);
		return -1;
	}
	long holder = 0;
	if (shm_held(db_path, &holder)) {
		char who[64] = "another process";
		if (holder > 0)
			snprintf(who, sizeof who, "process %ld", holder);
		fprintf(stderr,
		        "hookrelay: %s is open in %s (an older hookrelay, or another program using"
		        " it); stop that first: one relay per database\n",
		        db_path, who);
		close(fd);
		return -1;
	}
	return fd;
}

/* Once the database is known to be hookrelay's: one others can read (made before the
 * owner-only umask, say) holds the signing secrets. */
static void warn_if_readable(const char *db_path, int fd)
{
	struct stat st;

	if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0)
		fprintf(stderr,
		        "hookrelay: warning: %s can be read by other users (mode %03o: made by an"
		        " older hookrelay, say); it holds the signing secrets: chmod 600 it and its"
		        " -wal and -shm files\n",
		        db_path, (unsigned)(st.st_mode & 0777));
}

/* Gives deliveries in flight STOP_DEADLINE_MS to finish; says so if they take a while, and
 * a second SIGINT/SIGTERM meanwhile puts them back at once (they are sent again after
 * the next start). */
static void stop_dispatcher(struct dispatcher *d, const sigset_t *stop_signals)
{
	const struct timespec poll = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};

	if (!d || dispatcher_stop_for(d, STOP_DEADLINE_MS, 200))
		return;
	fprintf(stderr,
	        "hookrelay: waiting up to %d s for deliveries in flight; send SIGINT or "
	        "SIGTERM again to stop now (they are sent again after the next start)\n",
	        STOP_DEADLINE_MS / 1000);
	while (!dispatcher_stop_for(d, STOP_DEADLINE_MS, 0)) {
		if (sigtimedwait(stop_signals, NULL, &poll) > 0) {
			fprintf(stderr, "hookrelay: stopping now\n");
			dispatcher_hurry(d);
		}
	}
}

static void wake_dispatcher(void *arg)
{
	dispatcher_wake(arg);
}

static int serve(int argc, char **argv)
{
	struct config cfg;
	struct target_policy targets; /* outlives the dispatcher and the api, which borrow it */
	struct store *store = NULL;
	struct dispatcher *dispatcher = NULL;
	struct api *api = NULL;
	struct http_server *http = NULL;
	char err[512];
	int port = 0, sig = 0, rc = 1;
	sigset_t stop_signals;

	load_config(&cfg, argc, argv);
	if (cfg.npublish > 0 && cfg.nadmin == 0) {
		fprintf(stderr,
		        "hookrelay: --publish-key needs an admin key too (--api-key or "
		        "--api-key-file): once a key is set every /v1 route asks for one, and a "
		        "publish key reaches only POST /v1/events\n");
		return 2;
	}
	if (!is_loopback(cfg.listen_host) && cfg.nadmin == 0) {
		fprintf(stderr,
		        "hookrelay: refusing to listen on %s without an API key.\n"
		        "  Set one with --api-key KEY (or HOOKRELAY_API_KEY, or --api-key-file PATH),\n"
		        "  e.g. --api-key \"$(openssl rand -hex 32)\"; or listen on 127.0.0.1.\n",
		        cfg.listen_host);
		return 2;
	}
	if (target_policy_parse(cfg.allow_targets, cfg.allow_private_targets, &targets, err,
	                        sizeof(err)) != 0)
		die("--allow-targets: %s", err);

	/* glibc gives freed memory back (madvise) as soon as an arena's top passes 128 KiB and
	 * then faults it in again: 12% of the delivery path in perf, 30% more deliveries/s
	 * without it. Keep up to 32 MiB; peak RSS stays what the work needs. */
	mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);

	/* Block the stop signals before any thread starts so every thread inherits it. */
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGHUP); /* a closed terminal, or a "reload" habit: stop cleanly,
	                                     not die with deliveries in flight */
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "hookrelay: curl_global_init failed\n");
		return 1;
	}

	/* Not fatal: a relay whose receivers are all http has no use for one. */
	if (!cfg.ca_file && sender_system_ca_check(err, sizeof(err)) != 0)
		fprintf(
		    stderr,
		    "hookrelay: warning: https receivers will fail: %s (install ca-certificates, "
		    "or give --ca-file)\n",
		    err);
	raise_open_file_limit(&cfg);
	umask(077); /* the database holds the subscriptions' secrets: owner only */
	ensure_db_dir(cfg.db_path);
	int db_fd = lock_database(cfg.db_path);
	if (db_fd < 0)
		goto out;
	struct store_options sopts = {
	    .path = cfg.db_path,
	    .synchronous_full = cfg.synchronous_full,
	    .max_queue = cfg.max_queue,
	    .disable_after_ms = cfg.disable_after_ms,
	    .retention_ms = cfg.retention_ms,
	};
	store = store_open(&sopts, err, sizeof(err));
	if (!store) {
		fprintf(stderr, "hookrelay: %s: %s\n", cfg.db_path, err);
		goto out;
	}
	warn_if_readable(cfg.db_path, db_fd);
	struct api_options aopts = {
	    .admin_keys = cfg.admin_keys,
	    .publish_keys = cfg.publish_keys,
	    .targets = &targets,
	};
	api = api_new(store, &aopts);
	if (!api) {
		fprintf(stderr, "hookrelay: out of memory\n");
		goto out;
	}
	struct http_options hopts = {
	    .host = cfg.listen_host,
	    .port = cfg.listen_port,
	    .threads = cfg.http_threads,
	    .max_body = cfg.max_body,
	};
	http = http_start(&hopts, api, &port, err, sizeof(err));
	if (!http) {
		fprintf(stderr, "hookrelay: %s\n", err);
		goto out;
	}
	/* Only once the address is ours does anything go out: a relay that cannot listen (a
	 * restored backup checked while production holds the port, a restart loop) must not
	 * send the database's pending deliveries. What is published meanwhile waits for the
	 * dispatcher's first claim. */
	struct dispatcher_options dopts = {
	    .max_in_flight = cfg.max_in_flight,
	    .max_per_host = cfg.max_per_host,
	    .max_idle_connections = cfg.max_idle_connections,
	    .nice = cfg.delivery_nice,
	    .timeout_ms = (int)cfg.delivery_timeout_ms,
	    .retry_schedule = cfg.retry_schedule,
	    .retry_count = cfg.retry_count,
	    .user_agent = "hookrelay/" HOOKRELAY_VERSION,
	    .ca_file = cfg.ca_file,
	    .targets = &targets,
	};
	dispatcher = dispatcher_start(&dopts, store_delivery_source(store));
	if (!dispatcher)
		goto out;
	store_set_due_hook(store, wake_dispatcher, dispatcher);
	printf("hookrelay listening on http://%s%s%s:%d\n", strchr(cfg.listen_host, ':') ? "[" : "",
	       cfg.listen_host, strchr(cfg.listen_host, ':') ? "]" : "", port);
	fflush(stdout);
	fprintf(stderr,
	        "hookrelay %s: db %s, %d HTTP thread%s, max %d in flight, "
	        "retry schedule of %d step%s%s%s%s%s%s%s\n",
	        HOOKRELAY_VERSION, cfg.db_path, cfg.http_threads, cfg.http_threads == 1 ? "" : "s",
	        cfg.max_in_flight, cfg.retry_count, cfg.retry_count == 1 ? "" : "s",
	        cfg.nadmin ? ", API keys required" : ", no API key (loopback only)",
	        cfg.allow_private_targets ? ", private targets ALLOWED" : "",
	        targets.ncidrs > 0 ? ", targets allowed in " : "",
	        targets.ncidrs > 0 ? cfg.allow_targets : "",
	        cfg.ca_file ? ", https receivers checked against the CAs in " : "",
	        cfg.ca_file ? cfg.ca_file : "");

	if (sigwait(&stop_signals, &sig) == 0)
		fprintf(stderr, "hookrelay: %s received, stopping\n",
		        sig == SIGINT   ? "SIGINT"
		        : sig == SIGHUP ? "SIGHUP"
		                        : "SIGTERM");
	rc = 0;
out:
	/* Stop in reverse: no new requests, then no new attempts, then drain the writer. */
	http_stop(http);
	if (store)
		store_set_due_hook(store, NULL, NULL); /* the dispatcher is about to go */
	stop_dispatcher(dispatcher, &stop_signals);
	store_close(store);
	api_free(api);
	curl_global_cleanup();
	for (int i = 0; i < cfg.nfile_keys; i++)
		free(cfg.file_keys[i]);
	if (rc == 0)
		fprintf(stderr, "hookrelay: stopped cleanly\n");
	return rc;
}

int main(int argc, char **argv)
{
	/* UTF-8 text, whatever the environment says: libcurl turns a receiver's
	 * internationalized host name (http://bücher.example/) into its punycode form
	 * reading it in this character set, and in the C locale it could not, so every
	 * attempt failed "URL using bad/illegal format". Only LC_CTYPE: numbers are still
	 * written and read with a '.' (LC_NUMERIC stays "C"). */
	setlocale(LC_CTYPE, "C.UTF-8");
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("hookrelay %s\n", HOOKRELAY_VERSION);
		return 0;
	}
	if (strcmp(argv[1], "serve") == 0)
		return serve(argc, argv);
	if (strcmp(argv[1], "verify") == 0)
		return verify_main(argc - 1, argv + 1);
	fprintf(stderr, "hookrelay: unknown command '%s'\n\n%s", argv[1], usage);
	return 2;
}
