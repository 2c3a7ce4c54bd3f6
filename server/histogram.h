/*
 * histogram.h - a Prometheus histogram of durations, counted with atomics: observed on
 * one thread (the writer, the syncer), read by /metrics on any other. Each histogram has
 * a fixed scale of bucket bounds, set once before the first observation:
 * - histogram_scale_delivery, 5 ms to a day: a receiver's answer (under a second, up to
 *   --delivery-timeout) and a delivery that waited out retries (minutes to hours);
 * - histogram_scale_disk, 100 µs to 10 s: an fdatasync, normally well under a
 *   millisecond, and a disk that stalls.
 */
#ifndef HOOKRELAY_HISTOGRAM_H
#define HOOKRELAY_HISTOGRAM_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define HISTOGRAM_MAX_BOUNDS 17 /* upper bounds; the +Inf bucket is one more */

struct histogram_scale {
	int bounds;                                   /* <= HISTOGRAM_MAX_BOUNDS, rising */
	int64_t bound_us[HISTOGRAM_MAX_BOUNDS];       /* inclusive, as Prometheus' le */
	const char *bound_text[HISTOGRAM_MAX_BOUNDS]; /* the same in seconds */
};
extern const struct histogram_scale histogram_scale_delivery;
extern const struct histogram_scale histogram_scale_disk;

struct histogram {
	const struct histogram_scale *scale;
	atomic_llong bucket[HISTOGRAM_MAX_BOUNDS + 1]; /* per bucket, not cumulative */
	_Atomic double sum_us; /* a double, as Prometheus' own: it cannot wrap */
};

/* A copy of the counts at one moment (each count read on its own: a scrape during an
 * observation may see it in the bucket and not yet in the sum, as Prometheus allows). */
struct histogram_counts {
	const struct histogram_scale *scale;
	int64_t bucket[HISTOGRAM_MAX_BOUNDS + 1];
	double sum_us;
};

/* Empties h and gives it its scale; before any other use. */
void histogram_init(struct histogram *h, const struct histogram_scale *scale);

/* Counts one duration; a negative one (a clock stepped back) as 0. */
void histogram_observe(struct histogram *h, int64_t us);

void histogram_read(struct histogram *h, struct histogram_counts *out);

/* Writes the # HELP and # TYPE lines and the samples of `name` (cumulative _bucket with
 * le in seconds, _sum in seconds, _count). Returns what fprintf returned last: < 0 on
 * error. */
int histogram_write(FILE *f, const char *name, const char *help, const struct histogram_counts *c);

#endif
