/*
 * bare_mhd.c - the HTTP ceiling and the fast receiver for `make bench`.
 *
 * Measures nothing by itself: it is the smallest libmicrohttpd server that reads a whole
 * POST body and answers, so that wrk against it gives the HTTP ceiling that hookrelay's
 * ingest is compared with (bench row 1a), and so that the relay's deliveries have a
 * receiver that is not the bottleneck (rows 1c, 4, 5).
 *
 *   bare_mhd [--status 202|200] [--threads N] [--max-seconds S] [--latency] [--hold]
 *            [--listeners N] [--tls CERT.pem KEY.pem]
 *
 * Listens on 127.0.0.1, port chosen by the kernel, and prints "PORT\n" on stdout. With
 * --listeners N (rows 4c and 4d's many receivers), N servers, each its own port and --threads,
 * sharing the counts; their ports are printed on one line, separated by spaces. With
 * --tls they speak https (libmicrohttpd's GnuTLS) with that certificate and key.
 * GET /connections answers how many connections were accepted, all listeners together.
 * MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL with a pool of --threads (default 2): poll
 * as in the relay (server/http.c says why not epoll; with epoll, 128 connections stalled).
 * Every POST (any path) is read to the end and answered with --status and an empty body,
 * and counted. GET /count answers the count of POSTs as a decimal number, GET /last the
 * wall-clock time of the last one in ns (so a drain's end is not a poll's).
 * With --latency, each POST body is searched for "sent_at_ns":<int> (unix ns, taken by
 * the load generator just before sending) and now - sent_at_ns is recorded; GET /stats
 * answers "count=N with_stamp=M p50_us=.. p90_us=.. p99_us=.. max_us=..".
 * With --hold, POSTs are read but left unanswered (connection suspended) until
 * GET /release; from then on it answers at once. The bench uses this to let the relay
 * build a backlog of pending deliveries: its sender stalls on the held requests.
 * Stops on SIGINT/SIGTERM or after --max-seconds (default 600) so it can never linger.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BODY_MAX (1024 * 1024)      /* bytes kept per request in --latency mode */
#define LAT_MAX (4 * 1024 * 1024)   /* latency samples kept */
#define HELD_MAX 65536              /* connections held at once in --hold mode */

static unsigned int g_status = 202;
static int g_latency;
static atomic_ullong g_count;
static atomic_llong g_last_ns; /* CLOCK_REALTIME of the last POST counted */
static atomic_ullong g_connections;
static atomic_ullong g_lat_n;
static int64_t *g_lat;
static struct MHD_Response *g_empty;
static pthread_mutex_t g_hold_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_holding; /* under g_hold_mu */
static struct MHD_Connection **g_held;
static size_t g_held_n;

struct req {
	char *buf;
	size_t len, cap;
	int held;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void record_latency(const char *body, size_t len, int64_t arrived)
{
	static const char key[] = "\"sent_at_ns\":";
	const char *p = memmem(body, len, key, sizeof key - 1);
	if (!p)
		return;
	p += sizeof key - 1;
	int64_t sent = strtoll(p, NULL, 10);
	if (sent <= 0)
		return;
	unsigned long long i = atomic_fetch_add(&g_lat_n, 1);
	if (i < LAT_MAX)
		g_lat[i] = arrived - sent;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static enum MHD_Result answer_text(struct MHD_Connection *c, const char *text)
{
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	enum MHD_Result ret = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result stats(struct MHD_Connection *c)
{
	char text[320];
	unsigned long long n = atomic_load(&g_lat_n);
	if (n > LAT_MAX)
		n = LAT_MAX;
	int64_t p50 = 0, p90 = 0, p99 = 0, max = 0;
	if (n > 0) {
		int64_t *copy = malloc(n * sizeof *copy);
		if (!copy)
			return MHD_NO;
		memcpy(copy, g_lat, n * sizeof *copy);
		qsort(copy, n, sizeof *copy, cmp_i64);
		p50 = copy[(n - 1) * 50 / 100];
		p90 = copy[(n - 1) * 90 / 100];
		p99 = copy[(n - 1) * 99 / 100];
		max = copy[n - 1];
		free(copy);
	}
	snprintf(text, sizeof text, "count=%llu with_stamp=%llu p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f\n",
	         (unsigned long long)atomic_load(&g_count), n, p50 / 1e3, p90 / 1e3, p99 / 1e3,
	         max / 1e3);
	return answer_text(c, text);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version,
                               const char *upload_data, size_t *upload_data_size,
                               void **con_cls)
{
	(void)cls;
	(void)version;
	if (strcmp(method, "POST") != 0) {
		char text[32];
		if (strcmp(url, "/stats") == 0)
			return stats(c);
		if (strcmp(url, "/release") == 0) {
			pthread_mutex_lock(&g_hold_mu);
			size_t n = g_held_n;
			g_holding = 0;
			for (size_t i = 0; i < g_held_n; i++)
				MHD_resume_connection(g_held[i]);
			g_held_n = 0;
			pthread_mutex_unlock(&g_hold_mu);
			snprintf(text, sizeof text, "released %zu\n", n);
			return answer_text(c, text);
		}
		if (strcmp(url, "/connections") == 0) {
			snprintf(text, sizeof text, "%llu\n",
			         (unsigned long long)atomic_load(&g_connections));
			return answer_text(c, text);
		}
		if (strcmp(url, "/last") == 0) {
			snprintf(text, sizeof text, "%lld\n", (long long)atomic_load(&g_last_ns));
			return answer_text(c, text);
		}
		snprintf(text, sizeof text, "%llu\n", (unsigned long long)atomic_load(&g_count));
		return answer_text(c, text);
	}
	if (*con_cls == NULL) {
		struct req *r = calloc(1, sizeof *r);
		if (!r)
			return MHD_NO;
		*con_cls = r;
		return MHD_YES;
	}
	struct req *r = *con_cls;
	if (*upload_data_size > 0) {
		if (g_latency && r->len + *upload_data_size <= BODY_MAX) {
			if (r->len + *upload_data_size > r->cap) {
				size_t cap = r->cap ? r->cap : 4096;
				while (cap < r->len + *upload_data_size)
					cap *= 2;
				char *nb = realloc(r->buf, cap);
				if (!nb)
					return MHD_NO;
				r->buf = nb;
				r->cap = cap;
			}
			memcpy(r->buf + r->len, upload_data, *upload_data_size);
			r->len += *upload_data_size;
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (g_held && !r->held) {
		/* suspend under the lock so /release cannot miss this connection */
		pthread_mutex_lock(&g_hold_mu);
		if (g_holding && g_held_n < HELD_MAX) {
			r->held = 1;
			g_held[g_held_n++] = c;
			MHD_suspend_connection(c);
			pthread_mutex_unlock(&g_hold_mu);
			return MHD_YES; /* called again with no data once resumed */
		}
		pthread_mutex_unlock(&g_hold_mu);
	}
	if (g_latency)
		record_latency(r->buf ? r->buf : "", r->len, now_ns());
	atomic_fetch_add(&g_count, 1);
	atomic_store(&g_last_ns, now_ns());
	return MHD_queue_response(c, g_status, g_empty);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)c;
	(void)toe;
	struct req *r = *con_cls;
	if (r) {
		free(r->buf);
		free(r);
		*con_cls = NULL;
	}
}

static void connection_notice(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode code)
{
	(void)cls;
	(void)c;
	(void)socket_context;
	if (code == MHD_CONNECTION_NOTIFY_STARTED)
		atomic_fetch_add(&g_connections, 1);
}

/* The whole file, NUL-terminated, or NULL. */
static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n)
		buf[n] = '\0';
	else {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

#define LISTENERS_MAX 1024

int main(int argc, char **argv)
{
	unsigned int listeners = 1;
	const char *tls_cert = NULL, *tls_key = NULL;
	char *cert = NULL, *key = NULL;
	struct MHD_Daemon *daemons[LISTENERS_MAX] = {0};
	unsigned int threads = 2;
	long max_seconds = 600;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--status") == 0 && i + 1 < argc)
			g_status = (unsigned int)atoi(argv[++i]);
		else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
			threads = (unsigned int)atoi(argv[++i]);
		else if (strcmp(argv[i], "--max-seconds") == 0 && i + 1 < argc)
			max_seconds = atol(argv[++i]);
		else if (strcmp(argv[i], "--latency") == 0)
			g_latency = 1;
		else if (strcmp(argv[i], "--hold") == 0)
			g_holding = 1;
		else if (strcmp(argv[i], "--listeners") == 0 && i + 1 < argc)
			listeners = (unsigned int)atoi(argv[++i]);
		else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
			tls_cert = argv[++i];
			tls_key = argv[++i];
		} else {
			fprintf(stderr, "usage: bare_mhd [--status N] [--threads N] "
			                "[--max-seconds S] [--latency] [--hold] [--listeners N] "
			                "[--tls CERT KEY]\n");
			return 2;
		}
	}
	if (listeners < 1 || listeners > LISTENERS_MAX) {
		fprintf(stderr, "bare_mhd: --listeners wants 1..%d\n", LISTENERS_MAX);
		return 2;
	}
	/* A listener and the relay's connections to it (in flight and idle) each take a
	 * descriptor: 600 listeners and their connections pass a shell's usual 1,024. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (tls_cert && (!(cert = read_file(tls_cert)) || !(key = read_file(tls_key)))) {
		fprintf(stderr, "bare_mhd: cannot read %s or %s\n", tls_cert, tls_key);
		return 1;
	}
	if (g_latency && !(g_lat = malloc(LAT_MAX * sizeof *g_lat))) {
		perror("malloc");
		return 1;
	}
	if (g_holding && !(g_held = calloc(HELD_MAX, sizeof *g_held))) {
		perror("calloc");
		return 1;
	}
	g_empty = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	if (!g_empty)
		return 1;

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* MHD threads inherit the mask */

	struct sockaddr_in addr = {0};
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = 0;
	/* a pool of 1 is no pool: ask for none (0) and MHD uses its polling thread alone */
	struct MHD_OptionItem tls_opts[] = {
	    {MHD_OPTION_HTTPS_MEM_CERT, 0, cert},
	    {MHD_OPTION_HTTPS_MEM_KEY, 0, key},
	    {MHD_OPTION_END, 0, NULL},
	};
	for (unsigned int l = 0; l < listeners; l++) {
		daemons[l] = MHD_start_daemon(
		    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
		        (cert ? MHD_USE_TLS : 0),
		    0, NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&addr,
		    MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_NOTIFY_CONNECTION,
		    connection_notice, NULL, MHD_OPTION_CONNECTION_LIMIT, 4096u,
		    MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_THREAD_POOL_SIZE,
		    threads > 1 ? threads : 0u, MHD_OPTION_ARRAY, cert ? tls_opts : tls_opts + 2,
		    MHD_OPTION_END);
		if (!daemons[l]) {
			fprintf(stderr, "bare_mhd: MHD_start_daemon failed\n");
			return 1;
		}
		const union MHD_DaemonInfo *info =
		    MHD_get_daemon_info(daemons[l], MHD_DAEMON_INFO_BIND_PORT);
		printf("%s%u", l ? " " : "", info ? (unsigned)info->port : 0u);
	}
	printf("\n");
	fflush(stdout);

	struct timespec limit = {.tv_sec = max_seconds, .tv_nsec = 0};
	siginfo_t si;
	sigtimedwait(&set, &si, &limit); /* a signal or the time limit, whichever first */

	pthread_mutex_lock(&g_hold_mu); /* MHD must not stop with suspended connections */
	g_holding = 0;
	for (size_t i = 0; i < g_held_n; i++)
		MHD_resume_connection(g_held[i]);
	g_held_n = 0;
	pthread_mutex_unlock(&g_hold_mu);
	for (unsigned int l = 0; l < listeners; l++)
		MHD_stop_daemon(daemons[l]);
	MHD_destroy_response(g_empty);
	free(cert);
	free(key);
	free(g_lat);
	free(g_held);
	return 0;
}
