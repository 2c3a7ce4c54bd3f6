/*
 * histogram.c - see histogram.h. Buckets hold their own counts; the cumulative ones
 * Prometheus wants are summed when written, so an observation is one increment.
 */
#include "histogram.h"

#include <string.h>

const struct histogram_scale histogram_scale_delivery = {
    17,
    {5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
     30000000, 60000000, 300000000, 1800000000, 7200000000, 86400000000},
    {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
     "300", "1800", "7200", "86400"},
};

const struct histogram_scale histogram_scale_disk = {
    16,
    {100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
     5000000, 10000000},
    {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
     "0.25", "0.5", "1", "2.5", "5", "10"},
};

void histogram_init(struct histogram *h, const struct histogram_scale *scale)
{
	memset(h, 0, sizeof(*h));
	h->scale = scale;
}

void histogram_observe(struct histogram *h, int64_t us)
{
	const struct histogram_scale *sc = h->scale;
	int i = 0;

	if (us < 0)
		us = 0;
	while (i < sc->bounds && us > sc->bound_us[i])
		i++;
	atomic_fetch_add(&h->bucket[i], 1); /* seq_cst: see store_count_results */
	/* no atomic add for a double in C11: one thread observes, so this rarely loops */
	double sum = atomic_load(&h->sum_us);
	while (!atomic_compare_exchange_weak(&h->sum_us, &sum, sum + (double)us))
		;
}

void histogram_read(struct histogram *h, struct histogram_counts *out)
{
	out->scale = h->scale;
	for (int i = 0; i <= HISTOGRAM_MAX_BOUNDS; i++)
		out->bucket[i] = atomic_load(&h->bucket[i]);
	out->sum_us = atomic_load(&h->sum_us);
}

int histogram_write(FILE *f, const char *name, const char *help, const struct histogram_counts *c)
{
	const struct histogram_scale *sc = c->scale;
	long long seen = 0;
	int rc = fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);

	for (int i = 0; i <= sc->bounds && rc >= 0; i++) {
		seen += c->bucket[i];
		rc = fprintf(f, "%s_bucket{le=\"%s\"} %lld\n", name,
		             i < sc->bounds ? sc->bound_text[i] : "+Inf", seen);
	}
	if (rc >= 0)
		rc = fprintf(f, "%s_sum %.6f\n%s_count %lld\n", name, c->sum_us / 1e6, name, seen);
	return rc;
}
