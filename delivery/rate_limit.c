/*
 * rate_limit.c - the token bucket behind a subscription's rate_limit (see rate_limit.h).
 * Invariant: 0 <= milli <= 1000 * RATE_LIMIT_BURST(per_second) after every refill; a
 * clock that goes back refills nothing, and counts on from where it is now (else a step
 * back of an hour would stop the subscription for that hour).
 */
#include "rate_limit.h"

static void refill(struct rate_bucket *b, int per_second, int64_t now_ms)
{
	int64_t full = (int64_t)RATE_LIMIT_BURST(per_second) * 1000;

	if (b->at_ms == 0) { /* first use: a full bucket */
		b->milli = full;
		b->at_ms = now_ms;
		return;
	}
	if (now_ms > b->at_ms) {
		int64_t gap = now_ms - b->at_ms;
		/* a long idle gap fills the bucket; capping first keeps the product small */
		b->milli = gap >= 1000 * 1000 ? full : b->milli + gap * per_second;
	}
	b->at_ms = now_ms;
	if (b->milli > full) /* also when the limit was lowered */
		b->milli = full;
}

int rate_limit_allow(struct rate_bucket *b, int per_second, int64_t now_ms, int want)
{
	if (per_second <= 0 || want <= 0)
		return want;
	refill(b, per_second, now_ms);
	int64_t whole = b->milli / 1000;
	return whole < want ? (int)whole : want;
}

void rate_limit_take(struct rate_bucket *b, int per_second, int n)
{
	if (per_second <= 0 || n <= 0)
		return;
	b->milli -= (int64_t)n * 1000;
	if (b->milli < 0)
		b->milli = 0;
}

int64_t rate_limit_next_ms(const struct rate_bucket *b, int per_second, int64_t now_ms)
{
	if (per_second <= 0 || b->at_ms == 0 || b->milli >= 1000)
		return now_ms;
	/* counted from now if the clock went back since the bucket was last used (as the
	 * next refill will); rounded up: at that ms the bucket holds a whole token */
	int64_t from = b->at_ms > now_ms ? now_ms : b->at_ms;
	int64_t at = from + (1000 - b->milli + per_second - 1) / per_second;
	return at > now_ms ? at : now_ms;
}
