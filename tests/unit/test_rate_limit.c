/*
 * test_rate_limit.c - the token bucket behind rate_limit: burst size, steady rate,
 * when the next delivery may start, a clock going back, a limit lowered, no limit.
 */
#include "check.h"
#include "rate_limit.h"

#define T0 INT64_C(1800000000000) /* some unix ms */

/* Starts as many as the bucket allows at `now`, out of `want`; returns how many. */
static int start(struct rate_bucket *b, int per_second, int64_t now, int want)
{
	int n = rate_limit_allow(b, per_second, now, want);
	rate_limit_take(b, per_second, n);
	return n;
}

static void test_burst_then_steady(void)
{
	struct rate_bucket b = {0};

	/* 5/s: a burst of one, then one every 200 ms */
	CHECK(start(&b, 5, T0, 100) == 1);
	CHECK(start(&b, 5, T0, 100) == 0);
	CHECK(rate_limit_next_ms(&b, 5, T0) == T0 + 200);
	CHECK(start(&b, 5, T0 + 199, 100) == 0);
	CHECK(start(&b, 5, T0 + 200, 100) == 1);
	CHECK(rate_limit_next_ms(&b, 5, T0 + 200) == T0 + 400);

	/* 3/s: a token every 333.3 ms; the next start is promised at the first ms that
	 * holds a whole token (334), not a ms early when the bucket still has 999/1000 */
	struct rate_bucket third = {0};
	CHECK(start(&third, 3, T0, 100) == 1);
	CHECK(rate_limit_next_ms(&third, 3, T0) == T0 + 334);
	CHECK(start(&third, 3, T0 + 333, 100) == 0);
	CHECK(start(&third, 3, T0 + 334, 100) == 1);

	/* 1000/s: a burst of 100 (a tenth of a second's worth), then one a ms */
	struct rate_bucket fast = {0};
	CHECK(start(&fast, 1000, T0, 5000) == 100);
	CHECK(start(&fast, 1000, T0, 5000) == 0);
	CHECK(start(&fast, 1000, T0 + 1, 5000) == 1);
	CHECK(start(&fast, 1000, T0 + 11, 5000) == 10);
	/* an idle gap fills it back to the burst, no further */
	CHECK(start(&fast, 1000, T0 + 60000, 5000) == 100);
}

/* Over any one second no more than per_second + burst start; over ten, the rate. */
static void test_window(void)
{
	struct rate_bucket b = {0};
	int started[20001] = {0};
	int per_second = 30; /* burst 3 */

	for (int ms = 0; ms <= 20000; ms++)
		started[ms] = start(&b, per_second, T0 + ms, 1000);
	int worst = 0;
	for (int from = 0; from + 1000 <= 20001; from += 7) {
		int n = 0;
		for (int ms = from; ms < from + 1000; ms++)
			n += started[ms];
		if (n > worst)
			worst = n;
	}
	CHECK(worst <= per_second + RATE_LIMIT_BURST(per_second));
	int total = 0;
	for (int ms = 0; ms <= 20000; ms++)
		total += started[ms];
	CHECK(total == 3 + 20 * per_second); /* the burst, then exactly the rate */
}

static void test_odd_clocks_and_limits(void)
{
	struct rate_bucket b = {0};

	CHECK(start(&b, 2, T0, 10) == 1);
	/* the clock goes back an hour: nothing refills, and the next token is due half a
	 * second from the new now, not an hour and a half second */
	CHECK(start(&b, 2, T0 - 3600000, 10) == 0);
	CHECK(rate_limit_next_ms(&b, 2, T0 - 3600000) == T0 - 3600000 + 500);
	CHECK(start(&b, 2, T0 - 3600000 + 500, 10) == 1);
	/* asked when the clock has gone back since the last start, before any refill */
	CHECK(rate_limit_next_ms(&b, 2, T0 - 7200000) == T0 - 7200000 + 500);

	/* a limit lowered from 1000/s: the bucket holds at most the new burst */
	struct rate_bucket c = {0};
	CHECK(start(&c, 1000, T0, 10) == 10);
	CHECK(start(&c, 1, T0 + 1, 10) == 1);
	CHECK(start(&c, 1, T0 + 2, 10) == 0);

	/* no limit: everything, and the next start is now */
	struct rate_bucket d = {0};
	CHECK(start(&d, 0, T0, 12345) == 12345);
	CHECK(rate_limit_next_ms(&d, 0, T0) == T0);
	CHECK(rate_limit_allow(&d, 5, T0, 0) == 0);

	/* the largest limit and a long gap do not overflow */
	struct rate_bucket e = {0};
	CHECK(start(&e, RATE_LIMIT_MAX, T0, 1000000) == RATE_LIMIT_MAX / 10);
	CHECK(start(&e, RATE_LIMIT_MAX, T0 + INT64_C(86400000) * 365, 1000000) ==
	      RATE_LIMIT_MAX / 10);
}

int main(void)
{
	test_burst_then_steady();
	test_window();
	test_odd_clocks_and_limits();
	return CHECK_DONE();
}
