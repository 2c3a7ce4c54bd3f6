/*
 * test_histogram.c - the /metrics histograms: a duration lands in the first bucket whose
 * bound it does not pass (a bound is inclusive, as Prometheus' le), the text is
 * cumulative with +Inf equal to _count, the sum is written in seconds to the µs (and
 * stays a number past 2^63 µs), and each scale writes its own bounds.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "histogram.h"

static char *written(const struct histogram_counts *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	histogram_write(f, "t_seconds", "A test.", c);
	fclose(f);
	return text;
}

/* The cumulative count written for bound le, or -1. */
static long long cumulative(const char *text, const char *le)
{
	char key[64];
	snprintf(key, sizeof(key), "t_seconds_bucket{le=\"%s\"} ", le);
	const char *p = strstr(text, key);
	return p ? atoll(p + strlen(key)) : -1;
}

int main(void)
{
	static struct histogram h;
	struct histogram_counts c;

	histogram_init(&h, &histogram_scale_delivery);
	histogram_read(&h, &c);
	char *text = written(&c);
	CHECK(text &&
	      strstr(text, "# HELP t_seconds A test.\n# TYPE t_seconds histogram\n") == text);
	CHECK(text && cumulative(text, "+Inf") == 0);
	CHECK(text && strstr(text, "\nt_seconds_sum 0.000000\nt_seconds_count 0\n"));
	free(text);

	histogram_observe(&h, 5000);        /* on the first bound (5 ms): in it */
	histogram_observe(&h, 5001);        /* just past it: the next */
	histogram_observe(&h, -3);          /* a clock stepped back: 0 */
	histogram_observe(&h, 1000000);     /* 1 s */
	histogram_observe(&h, 86400000001); /* past a day: +Inf only */
	histogram_read(&h, &c);
	text = written(&c);
	CHECK(text != NULL);
	if (text) {
		CHECK(cumulative(text, "0.005") == 2);
		CHECK(cumulative(text, "0.01") == 3);
		CHECK(cumulative(text, "0.5") == 3);
		CHECK(cumulative(text, "1") == 4);
		CHECK(cumulative(text, "86400") == 4);
		CHECK(cumulative(text, "+Inf") == 5);
		CHECK(strstr(text, "\nt_seconds_sum 86401.010002\nt_seconds_count 5\n") != NULL);
		/* cumulative: never falls from one bucket to the next */
		long long last = 0;
		int monotone = 1, lines = 0;
		for (const char *p = strstr(text, "_bucket{"); p; p = strstr(p + 1, "_bucket{")) {
			long long v = atoll(strchr(p, '}') + 2);
			monotone &= v >= last;
			last = v;
			lines++;
		}
		CHECK(monotone && lines == histogram_scale_delivery.bounds + 1);
	}
	free(text);

	/* The disk scale: sub-millisecond bounds, and a stall of seconds still counted
	 * apart from +Inf. */
	histogram_init(&h, &histogram_scale_disk);
	histogram_observe(&h, 80);      /* 80 µs: the first bucket, 100 µs */
	histogram_observe(&h, 300);     /* 0.5 ms */
	histogram_observe(&h, 2000000); /* a 2 s stall */
	histogram_read(&h, &c);
	text = written(&c);
	CHECK(text != NULL);
	if (text) {
		CHECK(cumulative(text, "0.0001") == 1);
		CHECK(cumulative(text, "0.00025") == 1);
		CHECK(cumulative(text, "0.0005") == 2);
		CHECK(cumulative(text, "1") == 2);
		CHECK(cumulative(text, "2.5") == 3);
		CHECK(cumulative(text, "0.005") == 2); /* not the delivery scale's first bound */
		CHECK(cumulative(text, "86400") == -1);
		CHECK(strstr(text, "\nt_seconds_sum 2.000380\nt_seconds_count 3\n") != NULL);
	}
	free(text);

	/* A sum past 2^63 µs (~292,000 years): a replay of 3.6M events 30 days old. It
	 * wrapped to a negative, written as "-9115544073709.-551616", which is no number:
	 * Prometheus refused the whole scrape. */
	histogram_init(&h, &histogram_scale_delivery);
	const int64_t month_us = 30LL * 86400 * 1000000;
	for (int i = 0; i < 3600000; i++)
		histogram_observe(&h, month_us);
	histogram_read(&h, &c);
	text = written(&c);
	CHECK(text != NULL);
	if (text) {
		const char *p = strstr(text, "\nt_seconds_sum ");
		char *end = NULL;
		double sum = p ? strtod(p + strlen("\nt_seconds_sum "), &end) : -1;
		CHECK(end && *end == '\n');                /* one number, the whole value */
		CHECK(sum > 9.3311e12 && sum < 9.3313e12); /* 3.6e6 x 2,592,000 s */
		CHECK(cumulative(text, "+Inf") == 3600000);
	}
	free(text);
	return CHECK_DONE();
}
