/*
 * test_backoff.c - durations, schedules, jitter bounds and Retry-After parsing.
 */
#include "backoff.h"
#include "check.h"

#include <string.h>

#define SEC INT64_C(1000)
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static void test_duration(void)
{
	static const struct {
		const char *text;
		int rc;
		int64_t ms;
	} cases[] = {
	    {"250ms", 0, 250},
	    {"15s", 0, 15 * SEC},
	    {"5m", 0, 5 * MIN},
	    {"2h", 0, 2 * HOUR},
	    {"1d", 0, DAY},
	    {"10", 0, 10 * SEC},
	    {"0", 0, 0},
	    {"0ms", 0, 0},
	    {"007s", 0, 7 * SEC},
	    {"365d", 0, 365 * DAY},
	    {"8760h", 0, 365 * DAY},
	    {"31536000", 0, 365 * DAY},
	    {"31536000000ms", 0, 365 * DAY},
	    {"366d", -1, 0},
	    {"8761h", -1, 0},
	    {"31536001", -1, 0},
	    {"31536000001ms", -1, 0},
	    {"99999999999999999999s", -1, 0},
	    {"9223372036854775807ms", -1, 0},
	    {NULL, -1, 0},
	    {"", -1, 0},
	    {"-1s", -1, 0},
	    {"+1s", -1, 0},
	    {" 1s", -1, 0},
	    {"1s ", -1, 0},
	    {"1 s", -1, 0},
	    {"1.5s", -1, 0},
	    {"1S", -1, 0},
	    {"1sec", -1, 0},
	    {"1ms5", -1, 0},
	    {"ms", -1, 0},
	    {"s", -1, 0},
	    {"1e3", -1, 0},
	    {"0x10", -1, 0},
	    {"1w", -1, 0},
	    {"1\xc2\xb5s", -1, 0},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t ms = -12345;
		int rc = backoff_parse_duration(cases[i].text, &ms);

		CHECK(rc == cases[i].rc);
		if (rc == 0)
			CHECK(ms == cases[i].ms);
		else
			CHECK(ms == -12345); /* untouched on failure */
		if (rc != cases[i].rc)
			fprintf(stderr, "  case %zu: %s\n", i,
			        cases[i].text ? cases[i].text : "(null)");
	}
	CHECK(backoff_parse_duration("1s", NULL) == -1);
}

static void test_schedule(void)
{
	static const struct {
		const char *text;
		int rc;
		const char *why;
	} bad[] = {
	    {NULL, -1, "retry schedule is empty"},
	    {"", -1, "retry schedule is empty"},
	    {"   ", -1, "retry schedule is empty"},
	    {",", -1, "retry schedule has an empty step"},
	    {"1s,", -1, "retry schedule has an empty step"},
	    {",1s", -1, "retry schedule has an empty step"},
	    {"1s,,2s", -1, "retry schedule has an empty step"},
	    {"1s, ,2s", -1, "retry schedule has an empty step"},
	    {"1s,x", -1, NULL},
	    {"1s;2s", -1, NULL},
	    {"1s 2s", -1, NULL},
	    {"1s,-2s", -1, NULL},
	    {"1s,400d", -1, NULL},
	    {"1s,0000000000000000000000000000000001s", -1, NULL},
	};
	int64_t out[BACKOFF_MAX_STEPS + 1];
	int64_t def[] = {5 * SEC, 5 * MIN, 30 * MIN, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR};
	char text[BACKOFF_MAX_STEPS * 4 + 8];
	const char *why;
	size_t i;
	int n;

	n = backoff_parse_schedule(BACKOFF_DEFAULT, out, BACKOFF_MAX_STEPS, &why);
	CHECK(n == 7);
	CHECK(n == 7 && memcmp(out, def, sizeof(def)) == 0);

	n = backoff_parse_schedule("1s,2s,4s", out, BACKOFF_MAX_STEPS, &why);
	CHECK(n == 3 && out[0] == SEC && out[1] == 2 * SEC && out[2] == 4 * SEC);
	n = backoff_parse_schedule(" 250ms ,\t1m ", out, BACKOFF_MAX_STEPS, &why);
	CHECK(n == 2 && out[0] == 250 && out[1] == MIN);
	n = backoff_parse_schedule("30", out, 1, &why);
	CHECK(n == 1 && out[0] == 30 * SEC);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		out[0] = -7;
		why = NULL;
		n = backoff_parse_schedule(bad[i].text, out, BACKOFF_MAX_STEPS, &why);
		CHECK(n == -1);
		CHECK(why != NULL);
		CHECK(out[0] == -7); /* out untouched on failure */
		if (bad[i].why != NULL)
			CHECK(why != NULL && strcmp(why, bad[i].why) == 0);
		if (n != -1 || why == NULL)
			fprintf(stderr, "  case %zu: %s\n", i,
			        bad[i].text ? bad[i].text : "(null)");
	}
	why = NULL;
	{
		static const char prefix[] = "retry schedule step is not a duration";

		CHECK(backoff_parse_schedule("1s,x", out, BACKOFF_MAX_STEPS, &why) == -1 && why &&
		      strncmp(why, prefix, strlen(prefix)) == 0);
	}

	/* Exactly BACKOFF_MAX_STEPS steps fit; one more does not. */
	text[0] = '\0';
	for (i = 0; i < BACKOFF_MAX_STEPS; i++)
		strncat(text, i ? ",1s" : "1s", sizeof(text) - strlen(text) - 1);
	CHECK(backoff_parse_schedule(text, out, BACKOFF_MAX_STEPS, &why) == BACKOFF_MAX_STEPS);
	/* A larger max than BACKOFF_MAX_STEPS is capped at it. */
	strncat(text, ",1s", sizeof(text) - strlen(text) - 1);
	why = NULL;
	CHECK(backoff_parse_schedule(text, out, BACKOFF_MAX_STEPS + 1, &why) == -1);
	CHECK(why != NULL && strcmp(why, "retry schedule has too many steps") == 0);
	/* The caller's max is honoured. */
	why = NULL;
	CHECK(backoff_parse_schedule("1s,2s,3s", out, 2, &why) == -1);
	CHECK(why != NULL && strcmp(why, "retry schedule has too many steps") == 0);
	CHECK(backoff_parse_schedule("1s", out, 0, &why) == -1);
	CHECK(backoff_parse_schedule("1s", NULL, 4, &why) == -1);
	CHECK(backoff_parse_schedule("x", out, 4, NULL) == -1); /* why may be NULL */
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void test_delay(void)
{
	static const int64_t sched[] = {5 * SEC, 5 * MIN, 30 * MIN, 2 * HOUR, 365 * DAY,
	                                1,       0,       4,        5,        7};
	const int count = (int)(sizeof(sched) / sizeof(sched[0]));
	uint64_t seed = 0x9E3779B97F4A7C15u;
	int attempt;
	int i;

	CHECK(backoff_delay_ms(sched, count, 0, 0) == -1);
	CHECK(backoff_delay_ms(sched, count, -1, 0) == -1);
	CHECK(backoff_delay_ms(sched, count, count + 1, 0) == -1);
	CHECK(backoff_delay_ms(sched, count, 1000, 0) == -1);
	CHECK(backoff_delay_ms(sched, 0, 1, 0) == -1);
	CHECK(backoff_delay_ms(NULL, 3, 1, 0) == -1);
	CHECK(backoff_delay_ms(sched, count, count, 0) >= 0);

	for (attempt = 1; attempt <= count; attempt++) {
		int64_t base = sched[attempt - 1];
		int64_t lo = INT64_MAX;
		int64_t hi = INT64_MIN;
		int out_of_bounds = 0;

		for (i = 0; i < 20000; i++) {
			int64_t d = backoff_delay_ms(sched, count, attempt, xorshift(&seed));

			if (d * 5 < base * 4 || d * 5 > base * 6)
				out_of_bounds++;
			if (d < lo)
				lo = d;
			if (d > hi)
				hi = d;
		}
		CHECK(out_of_bounds == 0);
		/* The whole +-20% band is used, not just the middle. */
		if (base >= 1000) {
			CHECK(lo * 100 < base * 81);
			CHECK(hi * 100 > base * 119);
		}
		/* Extremes of the random argument stay in bounds. */
		CHECK(backoff_delay_ms(sched, count, attempt, 0) * 5 >= base * 4);
		CHECK(backoff_delay_ms(sched, count, attempt, UINT64_MAX) * 5 <= base * 6);
		CHECK(backoff_delay_ms(sched, count, attempt, UINT64_MAX) * 5 >= base * 4);
	}
	/* Deterministic in `random`. */
	CHECK(backoff_delay_ms(sched, count, 2, 42) == backoff_delay_ms(sched, count, 2, 42));
	/* Exact ends: 5000 ms -> [4000, 6000] over 2001 values. */
	CHECK(backoff_delay_ms(sched, count, 1, 0) == 4000);
	CHECK(backoff_delay_ms(sched, count, 1, 2000) == 6000);
	CHECK(backoff_delay_ms(sched, count, 1, 2001) == 4000);
	CHECK(backoff_delay_ms(sched, count, 1, 1000) == 5000);
	/* Tiny bases: 0 stays 0, 1..4 have no room for jitter, 5 may move by 1. */
	CHECK(backoff_delay_ms(sched, count, 7, 12345) == 0);
	CHECK(backoff_delay_ms(sched, count, 6, 12345) == 1);
	CHECK(backoff_delay_ms(sched, count, 8, 12345) == 4);
	CHECK(backoff_delay_ms(sched, count, 9, 0) == 4 &&
	      backoff_delay_ms(sched, count, 9, 2) == 6);
	/* A hostile schedule entry does not overflow. */
	{
		const int64_t huge[] = {INT64_MAX, -5};

		CHECK(backoff_delay_ms(huge, 2, 1, UINT64_MAX) <= 365 * DAY * 6 / 5);
		CHECK(backoff_delay_ms(huge, 2, 2, 7) == 0);
	}
}

static void test_retry_after(void)
{
	const int64_t now = INT64_C(1735689600000); /* Wed, 01 Jan 2025 00:00:00 GMT */
	static const struct {
		const char *value;
		int64_t delta; /* expected result - now, or -1 for rejected */
	} cases[] = {
	    {"120", 120 * SEC},
	    {"0", 0},
	    {"00", 0},
	    {" 5 ", 5 * SEC},
	    {"\t5", 5 * SEC},
	    {"604800", 7 * DAY},
	    {"604801", 7 * DAY},      /* capped at 7 days */
	    {"9999999999", 7 * DAY},  /* capped */
	    {"99999999999", 7 * DAY}, /* too long to hold: "very long", so capped */
	    {"99999999999999999999999", 7 * DAY},
	    {"99999999999x", -1},
	    {"00000000000005", 5 * SEC}, /* leading zeros are not "long" */
	    {NULL, -1},
	    {"", -1},
	    {"   ", -1},
	    {"-5", -1},
	    {"+5", -1},
	    {"1.5", -1},
	    {"5s", -1},
	    {"5 5", -1},
	    {"abc", -1},
	    {"0x10", -1},
	    /* IMF-fixdate */
	    {"Wed, 01 Jan 2025 00:00:00 GMT", 0},
	    {"Wed, 01 Jan 2025 00:02:00 GMT", 2 * MIN},
	    {"Thu, 02 Jan 2025 01:00:01 GMT", DAY + HOUR + SEC},
	    {"Wed, 08 Jan 2025 00:00:00 GMT", 7 * DAY},
	    {"Thu, 09 Jan 2025 00:00:00 GMT", 7 * DAY},   /* capped */
	    {"Fri, 31 Dec 9999 23:59:59 GMT", 7 * DAY},   /* capped */
	    {"Sun, 06 Nov 1994 08:49:37 GMT", 0},         /* past: now */
	    {"Thu, 01 Jan 1970 00:00:00 GMT", 0},         /* past: now */
	    {"Tue, 31 Dec 2024 23:59:59 GMT", 0},         /* a second past: now, not before */
	    {"Mon, 01 Jan 2025 00:02:00 GMT", 2 * MIN},   /* weekday name not cross-checked */
	    {" Wed, 01 Jan 2025 00:02:00 GMT ", 2 * MIN}, /* OWS around the value */
	    {"Wed, 01 Jan 2025 00:02:00 UTC", -1},
	    {"wed, 01 Jan 2025 00:02:00 GMT", -1},
	    {"Wed, 01 jan 2025 00:02:00 GMT", -1},
	    {"Xyz, 01 Jan 2025 00:02:00 GMT", -1},
	    {"Wed, 1 Jan 2025 00:02:00 GMT", -1},
	    {"Wed, 01 Jan 25 00:02:00 GMT", -1},
	    {"Wed, 01 Jan 2025 0:02:00 GMT", -1},
	    {"Wed, 01 Jan 2025 00:02:00 GMTx", -1},
	    {"Wed, 01 Jan 2025 00:02:00", -1},
	    {"Wed,  01 Jan 2025 00:02:00 GMT", -1},
	    {"Wed, 01 Jan 2025 24:00:00 GMT", -1},
	    {"Wed, 01 Jan 2025 00:60:00 GMT", -1},
	    {"Wed, 01 Jan 2025 00:00:61 GMT", -1},
	    {"Wed, 00 Jan 2025 00:00:00 GMT", -1},
	    {"Wed, 32 Jan 2025 00:00:00 GMT", -1},
	    {"Sun, 31 Nov 2025 00:00:00 GMT", -1},
	    {"Sat, 29 Feb 2025 00:00:00 GMT", -1},
	    {"Wed, 01 Jan 1969 00:00:00 GMT", -1},
	    {"Wed, 01 Jan 2O25 00:00:00 GMT", -1},
	    {"Wed, 01 Jan 2025 -1:00:00 GMT", -1},
	    /* obsolete RFC 850 form, which recipients must still accept */
	    {"Wednesday, 01-Jan-25 00:02:00 GMT", 2 * MIN},
	    {"Tuesday, 31-Dec-24 23:59:00 GMT", 0},      /* past: now */
	    {"Sunday, 06-Nov-94 08:49:37 GMT", 0},       /* 1994 (2094 is > 50 years ahead) */
	    {"Monday, 01-Jan-74 00:00:00 GMT", 7 * DAY}, /* 2074: within 50 years, capped */
	    {"Monday, 01-Jan-80 00:00:00 GMT", 0},       /* 1980 (2080 is > 50 years ahead) */
	    {"Wed, 01-Jan-25 00:02:00 GMT", -1},
	    {"Wednesday, 01-Jan-2025 00:02:00 GMT", -1},
	    {"Wednesday, 1-Jan-25 00:02:00 GMT", -1},
	    {"Wednesday, 01-Jan-25 00:02:00 UTC", -1},
	    {"Wednesday, 30-Feb-25 00:02:00 GMT", -1},
	    /* obsolete asctime form, also accepted */
	    {"Wed Jan  1 00:02:00 2025", 2 * MIN},
	    {"Wed Jan 01 00:02:00 2025", 2 * MIN},
	    {"Wed Jan 11 00:00:00 2025", 7 * DAY}, /* capped */
	    {"Wed Jan  1 00:02:00 25", -1},
	    {"Wed Jan 1 00:02:00 2025", -1},
	    {"Wed Jan  1 00:02:00 2025 GMT", -1},
	    {"Wed Jan 32 00:02:00 2025", -1},
	    {"Wed Jxn  1 00:02:00 2025", -1},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t got = backoff_retry_after_ms(cases[i].value, now);
		int64_t want = cases[i].delta < 0 ? -1 : now + cases[i].delta;

		CHECK(got == want);
		if (got != want)
			fprintf(stderr, "  case %zu: '%s' got %lld want %lld\n", i,
			        cases[i].value ? cases[i].value : "(null)", (long long)got,
			        (long long)want);
	}

	/* Absolute dates, checked against known unix times (python calendar.timegm). */
	CHECK(backoff_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784111777000 - MIN) ==
	      784111777000);
	CHECK(backoff_retry_after_ms("Thu, 29 Feb 1996 00:00:00 GMT", 825552000000 - MIN) ==
	      825552000000);
	CHECK(backoff_retry_after_ms("Tue, 29 Feb 2000 23:59:59 GMT", 951868799000 - MIN) ==
	      951868799000);
	CHECK(backoff_retry_after_ms("Tue, 19 Jan 2038 03:14:08 GMT", 2147483648000 - MIN) ==
	      2147483648000);
	CHECK(backoff_retry_after_ms("Thu, 01 Jan 1970 00:00:00 GMT", 0) == 0);
	CHECK(backoff_retry_after_ms("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799000 - DAY) ==
	      253402300799000);
	CHECK(backoff_retry_after_ms("Mon, 29 Feb 2100 00:00:00 GMT", 0) == -1); /* not leap */
	/* A nonsense clock is rejected rather than overflowing. */
	/* The RFC 850 century rule counts from the exact year, even on its first second. */
	CHECK(backoff_retry_after_ms("Monday, 01-Jan-74 00:00:00 GMT", INT64_C(1704067200000)) ==
	      INT64_C(1704067200000) + 7 * DAY); /* now 2024-01-01: 2074, capped */
	CHECK(backoff_retry_after_ms("Monday, 01-Jan-75 00:00:00 GMT", INT64_C(1704067200000)) ==
	      INT64_C(1704067200000)); /* 2075 is > 50 years ahead: 1975, past */
	CHECK(backoff_retry_after_ms("5", -1) == -1);
	CHECK(backoff_retry_after_ms("5", INT64_MAX) == -1);
}

int main(void)
{
	test_duration();
	test_schedule();
	test_delay();
	test_retry_after();
	return CHECK_DONE();
}
