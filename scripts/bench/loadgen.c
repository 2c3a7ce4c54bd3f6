/*
 * loadgen.c - paced (open-loop) and counted POST load for `make bench` (rows 4, 5, 6).
 *
 * Measures the answers hookrelay gives to a load we choose: with --rate R it sends
 * request i at t0 + i/R whatever the earlier answers did (no coordinated omission: the
 * reported latency runs from the scheduled send time to the answer), which is the fixed
 * 1,000 events/s of the end-to-end row; with --rate 0 it keeps --inflight requests busy
 * until --requests are done, which fills a delivery backlog through the batch route.
 * With --stamp, the 19 digits after "sent_at_ns": in the body are overwritten with the
 * unix time in ns just before each send, so a receiver can time the whole path.
 *
 *   loadgen --url URL --body FILE [--requests N] [--rate R] [--inflight M]
 *           [--seconds S] [--stamp]
 *
 * Stops after N requests (default 10000) or S seconds of sending (default 10), then
 * waits up to 20 s for the answers in flight. Prints
 * "sent=N ok=K non2xx=X errors=E seconds=T rate=R p50_us=.. p99_us=.. max_us=.." and,
 * for each non-2xx status seen, "status_NNN=count".
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STAMP_KEY "\"sent_at_ns\":"
#define STAMP_DIGITS 19

struct slot {
	CURL *easy;
	char *body;
	double scheduled; /* monotonic seconds this request was due */
	int busy;
};

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long real_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
	(void)p;
	(void)ud;
	return size * n;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	const char *url = NULL, *body_path = NULL;
	long requests = 10000, inflight = 64;
	double rate = 0, seconds = 10;
	int stamp = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--stamp") == 0)
			stamp = 1;
		else if (i + 1 >= argc)
			break;
		else if (strcmp(argv[i], "--url") == 0)
			url = argv[++i];
		else if (strcmp(argv[i], "--body") == 0)
			body_path = argv[++i];
		else if (strcmp(argv[i], "--requests") == 0)
			requests = atol(argv[++i]);
		else if (strcmp(argv[i], "--inflight") == 0)
			inflight = atol(argv[++i]);
		else if (strcmp(argv[i], "--rate") == 0)
			rate = atof(argv[++i]);
		else if (strcmp(argv[i], "--seconds") == 0)
			seconds = atof(argv[++i]);
	}
	if (!url || !body_path || requests <= 0 || inflight <= 0 || inflight > 4096 || rate < 0) {
		fprintf(stderr, "usage: loadgen --url URL --body FILE [--requests N] [--rate R] "
		                "[--inflight M] [--seconds S] [--stamp]\n");
		return 2;
	}
	FILE *f = fopen(body_path, "rb");
	if (!f) {
		perror(body_path);
		return 1;
	}
	size_t cap = 16 << 20;
	char *tmpl = malloc(cap);
	if (!tmpl)
		return 1;
	size_t body_len = fread(tmpl, 1, cap, f);
	fclose(f);
	while (body_len > 0 && (tmpl[body_len - 1] == '\n' || tmpl[body_len - 1] == ' '))
		body_len--;
	long stamp_at = -1;
	if (stamp) {
		char *p = memmem(tmpl, body_len, STAMP_KEY, sizeof STAMP_KEY - 1);
		if (!p || (size_t)(p - tmpl) + sizeof STAMP_KEY - 1 + STAMP_DIGITS > body_len) {
			fprintf(stderr, "loadgen: --stamp but no %s<19 digits> in body\n", STAMP_KEY);
			return 2;
		}
		stamp_at = (long)(p - tmpl) + (long)sizeof STAMP_KEY - 1;
	}

	curl_global_init(CURL_GLOBAL_DEFAULT);
	CURLM *multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, inflight);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, inflight);
	struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, "Expect:");

	struct slot *slots = calloc((size_t)inflight, sizeof *slots);
	double *lat = malloc((size_t)requests * sizeof *lat);
	if (!slots || !lat)
		return 1;
	for (long i = 0; i < inflight; i++) {
		slots[i].body = malloc(body_len + 1);
		if (!slots[i].body)
			return 1;
		memcpy(slots[i].body, tmpl, body_len);
		CURL *e = slots[i].easy = curl_easy_init();
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_PROXY, ""); /* loopback only, whatever http_proxy says */
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, slots[i].body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
		curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 20000L);
		curl_easy_setopt(e, CURLOPT_PRIVATE, &slots[i]);
	}

	long sent = 0, done = 0, ok = 0, non2xx = 0, errors = 0, n_lat = 0;
	long status_count[600] = {0};
	double t0 = mono_s(), t = t0;
	int running = 0;
	/* bounded: sending stops at the count or the time limit; draining stops 20 s later */
	while (t - t0 < seconds + 20) {
		int may_send = sent < requests && t - t0 < seconds;
		if (!may_send && done == sent)
			break;
		for (long i = 0; may_send && i < inflight; i++) {
			double due = rate > 0 ? t0 + (double)sent / rate : t;
			if (due > t || sent >= requests)
				break;
			if (slots[i].busy)
				continue;
			struct slot *s = &slots[i];
			if (stamp_at >= 0) {
				char digits[32];
				snprintf(digits, sizeof digits, "%019lld", real_ns());
				memcpy(s->body + stamp_at, digits, STAMP_DIGITS);
			}
			s->scheduled = due;
			s->busy = 1;
			curl_multi_add_handle(multi, s->easy);
			sent++;
		}
		curl_multi_perform(multi, &running);
		CURLMsg *m;
		int left;
		long done_before = done;
		while ((m = curl_multi_info_read(multi, &left))) {
			if (m->msg != CURLMSG_DONE)
				continue;
			struct slot *s = NULL;
			long status = 0;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
			curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
			double now = mono_s();
			if (m->data.result != CURLE_OK)
				errors++;
			else if (status >= 200 && status < 300)
				ok++;
			else {
				non2xx++;
				if (status > 0 && status < 600)
					status_count[status]++;
			}
			if (n_lat < requests)
				lat[n_lat++] = now - s->scheduled;
			curl_multi_remove_handle(multi, m->easy_handle);
			s->busy = 0;
			done++;
		}
		/* wait for socket activity unless slots just came free; at most 1 ms when pacing
		 * so that sends go out on time */
		if (done == done_before)
			curl_multi_poll(multi, NULL, 0, rate > 0 ? 1 : 50, NULL);
		t = mono_s();
	}
	qsort(lat, (size_t)n_lat, sizeof *lat, cmp_d);
	double p50 = n_lat ? lat[(n_lat - 1) * 50 / 100] : 0;
	double p99 = n_lat ? lat[(n_lat - 1) * 99 / 100] : 0;
	double max = n_lat ? lat[n_lat - 1] : 0;
	printf("sent=%ld ok=%ld non2xx=%ld errors=%ld unanswered=%ld seconds=%.3f rate=%.1f "
	       "p50_us=%.0f p99_us=%.0f max_us=%.0f",
	       sent, ok, non2xx, errors, sent - done, t - t0, (t - t0) > 0 ? ok / (t - t0) : 0,
	       p50 * 1e6, p99 * 1e6, max * 1e6);
	for (int c = 0; c < 600; c++)
		if (status_count[c])
			printf(" status_%d=%ld", c, status_count[c]);
	printf("\n");
	for (long i = 0; i < inflight; i++) {
		if (slots[i].busy)
			curl_multi_remove_handle(multi, slots[i].easy);
		curl_easy_cleanup(slots[i].easy);
		free(slots[i].body);
	}
	free(slots);
	free(lat);
	free(tmpl);
	curl_slist_free_all(hdrs);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return 0;
}
