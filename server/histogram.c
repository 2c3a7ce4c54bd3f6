/*
 * histogram.c - see histogram.h. Buckets hold their own counts; the cumulative ones
 * Prometheus wants are summed when written, so an observation is one increment.
 */
#include "histogram.h"

static const int64_t bounds_ms[HISTOGRAM_BOUNDS] = {
    5,    10,    25,    50,    100,    250,     500,     1000,     2500,
    5000, 10000, 30000, 60000, 300000, 1800000, 7200000, 86400000,
};
static const char *const bounds_text[HISTOGRAM_BOUNDS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",  "1",     "2.5",
    "5",     "10",   "30",    "60",   "300", "1800", "7200", "86400",
};

void histogram_observe(struct histogram *h, int64_t ms)
{
	int i = 0;

	if (ms < 0)
		ms = 0;
	while (i < HISTOGRAM_BOUNDS && ms > bounds_ms[i])
		i++;
	atomic_fetch_add(&h->bucket[i], 1); /* seq_cst: see count_results */
	atomic_fetch_add(&h->sum_ms, ms);
}

void histogram_read(struct histogram *h, struct histogram_counts *out)
{
	for (int i = 0; i <= HISTOGRAM_BOUNDS; i++)
		out->bucket[i] = atomic_load(&h->bucket[i]);
	out->sum_ms = atomic_load(&h->sum_ms);
}

int histogram_write(FILE *f, const char *name, const char *help, const struct histogram_counts *c)
{
	long long seen = 0;
	int rc = fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);

	for (int i = 0; i <= HISTOGRAM_BOUNDS && rc >= 0; i++) {
		seen += c->bucket[i];
		rc = fprintf(f, "%s_bucket{le=\"%s\"} %lld\n", name,
		             i < HISTOGRAM_BOUNDS ? bounds_text[i] : "+Inf", seen);
	}
	if (rc >= 0)
		rc = fprintf(f, "%s_sum %lld.%03lld\n%s_count %lld\n", name,
		             (long long)(c->sum_ms / 1000), (long long)(c->sum_ms % 1000), name,
		             seen);
	return rc;
}
