/*
 * rate_limit.h - a subscription's `rate_limit`: a token bucket over deliveries started.
 * Pure functions over a small value struct (it lives inside the store's per-subscription
 * cache, which is an array moved with memmove), so no allocation and no locking: the
 * caller owns the bucket and uses it from one thread.
 *
 * A bucket refills at `per_second` tokens a second and holds at most
 * RATE_LIMIT_BURST(per_second) (a tenth of a second's worth, at least one). Starting a
 * delivery takes a token. So over any one second at most per_second + burst start, and
 * over a longer span the average is per_second.
 */
#ifndef HOOKRELAY_RATE_LIMIT_H
#define HOOKRELAY_RATE_LIMIT_H

#include <stdint.h>

#define RATE_LIMIT_MAX 100000 /* the largest rate_limit a subscription may set */
#define RATE_LIMIT_BURST(per_second) ((per_second) >= 20 ? (per_second) / 10 : 1)

struct rate_bucket {
	int64_t milli; /* thousandths of a token held at at_ms (integers keep it exact: a
	                  ms at per_second tokens a second adds per_second of them) */
	int64_t at_ms; /* unix ms the tokens were counted at; 0 = never used (full) */
};

/* How many of `want` may start at now_ms (refills first; takes nothing). per_second <= 0
 * means no limit: all of them. */
int rate_limit_allow(struct rate_bucket *b, int per_second, int64_t now_ms, int want);

/* Takes n tokens for n deliveries started (after rate_limit_allow said they may). */
void rate_limit_take(struct rate_bucket *b, int per_second, int n);

/* The unix ms from which one more delivery may start (now_ms if one may already). */
int64_t rate_limit_next_ms(const struct rate_bucket *b, int per_second, int64_t now_ms);

#endif
