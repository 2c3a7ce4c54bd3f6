/*
 * histogram.h - a Prometheus histogram of durations, counted with atomics: observed on
 * the writer thread, read by /metrics on any other. Fixed buckets from 5 ms to a day,
 * wide enough for a receiver's answer (under a second, up to --delivery-timeout) and for
 * a delivery that waited out retries (minutes to hours).
 */
#ifndef HOOKRELAY_HISTOGRAM_H
#define HOOKRELAY_HISTOGRAM_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define HISTOGRAM_BOUNDS 17 /* upper bounds, ms; the +Inf bucket is one more */

struct histogram {
	atomic_llong bucket[HISTOGRAM_BOUNDS + 1]; /* per bucket, not cumulative */
	atomic_llong sum_ms;
};

/* A copy of the counts at one moment (each count read on its own: a scrape during an
 * observation may see it in the bucket and not yet in the sum, as Prometheus allows). */
struct histogram_counts {
	int64_t bucket[HISTOGRAM_BOUNDS + 1];
	int64_t sum_ms;
};

/* Counts one duration; a negative one (a clock stepped back) as 0. */
void histogram_observe(struct histogram *h, int64_t ms);

void histogram_read(struct histogram *h, struct histogram_counts *out);

/* Writes the # HELP and # TYPE lines and the samples of `name` (cumulative _bucket with
 * le in seconds, _sum in seconds, _count). Returns what fprintf returned last: < 0 on
 * error. */
int histogram_write(FILE *f, const char *name, const char *help, const struct histogram_counts *c);

#endif
