/*
 * bare_curl.c - the delivery ceiling for `make bench` (row 1c).
 *
 * Measures how many POST requests per second one thread driving a libcurl multi handle
 * can complete against a fast local receiver: the same ~600-byte body every time,
 * --inflight transfers in flight (keep-alive, connections reused from the multi handle's
 * pool), no signing and no storage. This is what hookrelay's sender could reach if
 * everything around it were free.
 *
 *   bare_curl --url URL --body FILE [--requests N] [--inflight M] [--seconds S]
 *
 * Stops after N requests (default 200000) or S seconds (default 5), whichever is first,
 * and prints "requests=N ok=K seconds=T requests_per_s=R cpu_us=C" (ok = 2xx answers;
 * C = the process's user + system CPU time, set-up included).
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
	(void)p;
	(void)ud;
	return size * n;
}

int main(int argc, char **argv)
{
	const char *url = NULL, *body_path = NULL;
	long requests = 200000, inflight = 128;
	double seconds = 5;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--url") == 0)
			url = argv[i + 1];
		else if (strcmp(argv[i], "--body") == 0)
			body_path = argv[i + 1];
		else if (strcmp(argv[i], "--requests") == 0)
			requests = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--inflight") == 0)
			inflight = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--seconds") == 0)
			seconds = atof(argv[i + 1]);
	}
	if (!url || !body_path || requests <= 0 || inflight <= 0 || inflight > 4096) {
		fprintf(stderr, "usage: bare_curl --url URL --body FILE [--requests N] "
		                "[--inflight M] [--seconds S]\n");
		return 2;
	}
	static char body[1 << 20];
	FILE *f = fopen(body_path, "rb");
	if (!f) {
		perror(body_path);
		return 1;
	}
	size_t body_len = fread(body, 1, sizeof body, f);
	fclose(f);

	curl_global_init(CURL_GLOBAL_DEFAULT);
	CURLM *multi = curl_multi_init();
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, inflight);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, inflight);
	struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, "Expect:");

	CURL **easy = calloc((size_t)inflight, sizeof *easy);
	if (!easy)
		return 1;
	long started = 0, finished = 0, ok = 0;
	double t0 = now_s(), t = t0;
	for (long i = 0; i < inflight && started < requests; i++, started++) {
		easy[i] = curl_easy_init();
		curl_easy_setopt(easy[i], CURLOPT_URL, url);
		curl_easy_setopt(easy[i], CURLOPT_PROXY, ""); /* loopback only, whatever http_proxy says */
		curl_easy_setopt(easy[i], CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(easy[i], CURLOPT_POSTFIELDSIZE, (long)body_len);
		curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, discard);
		curl_easy_setopt(easy[i], CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(easy[i], CURLOPT_TIMEOUT_MS, 15000L);
		curl_multi_add_handle(multi, easy[i]);
	}
	int running = 1;
	/* bounded: every turn either finishes transfers or waits at most 100 ms, and the
	 * loop ends at the request count or the time limit (plus one timeout to drain) */
	while (finished < started && t - t0 < seconds + 16) {
		curl_multi_perform(multi, &running);
		CURLMsg *m;
		int left;
		while ((m = curl_multi_info_read(multi, &left))) {
			if (m->msg != CURLMSG_DONE)
				continue;
			CURL *e = m->easy_handle;
			long status = 0;
			curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
			finished++;
			if (m->data.result == CURLE_OK && status >= 200 && status < 300)
				ok++;
			curl_multi_remove_handle(multi, e);
			if (started < requests && t - t0 < seconds) {
				started++;
				curl_multi_add_handle(multi, e);
			}
		}
		if (finished < started)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
		t = now_s();
	}
	double el = t - t0;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	long long cpu_us = (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
	                   ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
	printf("requests=%ld ok=%ld seconds=%.3f requests_per_s=%.0f cpu_us=%lld\n", finished, ok,
	       el, el > 0 ? ok / el : 0, cpu_us);
	for (long i = 0; i < inflight; i++)
		if (easy[i]) {
			curl_multi_remove_handle(multi, easy[i]);
			curl_easy_cleanup(easy[i]);
		}
	free(easy);
	curl_slist_free_all(hdrs);
	curl_multi_cleanup(multi);
	curl_global_cleanup();
	return 0;
}
