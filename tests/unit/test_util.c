/*
 * test_util.c - util_parse_time, the RFC 3339 reader behind the recover route's "since":
 * real dates only (no 31 February, 29 February only in leap years, no day, month, minute or
 * second past its range), offsets within a day,
 * and the instant each spelling names; util_format_time: the libc spelling, from arithmetic,
 * read back to the same instant; util_parse_id: one spelling per id; event ids: fresh ones
 * sort by their millisecond, and util_event_id_floor sits between one millisecond's ids
 * and the one before's.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "util.h"

static void test_parse_time(void)
{
	static const struct {
		const char *text;
		int ok;
		int64_t ms; /* when ok */
	} cases[] = {
	    {"2026-11-24T00:00:00Z", 1, 1795478400000},
	    {"2026-11-24T00:00:00.123Z", 1, 1795478400123},
	    {"2026-11-24t00:00:00z", 1, 1795478400000},   /* RFC 3339 5.6: t and z too */
	    {"2026-11-24T00:00:00.5Z", 1, 1795478400500},  /* one digit: tenths */
	    {"2026-11-24T00:00:00.123999Z", 1, 1795478400123}, /* past ms: cut, not rounded */
	    {"2026-11-24T00:00:00.Z", 0, 0},               /* a dot needs a digit */
	    {"2026-11-24T00:00:00x", 0, 0},
	    {"2026-11-24T01:30:00+01:30", 1, 1795478400000},
	    {"2026-11-23T23:00:00-01:00", 1, 1795478400000},
	    {"2024-02-29T00:00:00Z", 1, 1709164800000}, /* leap year */
	    {"2000-02-29T00:00:00Z", 1, 951782400000},  /* divisible by 400 */
	    {"2026-12-31T23:59:60Z", 1, 1798761600000}, /* leap second: the next instant */
	    {"2026-02-31T00:00:00Z", 0, 0},
	    {"2026-04-31T00:00:00Z", 0, 0},
	    {"2023-02-29T00:00:00Z", 0, 0},
	    {"1900-02-29T00:00:00Z", 0, 0}, /* divisible by 100, not 400 */
	    {"2026-11-24T00:00:00+24:00", 0, 0},
	    {"2026-11-24T00:00:00+23:60", 0, 0},
	    {"2026-13-01T00:00:00Z", 0, 0},
	    {"2026-11-24T24:00:00Z", 0, 0},
	    /* each field's first value out of range, beside its last one in range: a 0 day
	     * or month (month_days[-1]), minute 60 or second 61 read as a real time
	     * shifts a since or until instead of a 422 */
	    {"2026-01-01T00:00:00Z", 1, 1767225600000},
	    {"2026-11-30T23:59:59.999Z", 1, 1796083199999},
	    {"2026-12-01T00:59:00Z", 1, 1796086740000},
	    {"2026-11-00T00:00:00Z", 0, 0},
	    {"2026-00-10T00:00:00Z", 0, 0},
	    {"2026-11-24T00:60:00Z", 0, 0},
	    {"2026-11-24T00:00:61Z", 0, 0},
	    {"2026-11-24T00:00:00Z ", 0, 0},
	    {"2026-11-24T00:00:00+01:00:00", 0, 0},
	    {"2026-11-24T00:00:00", 0, 0}, /* no offset */
	    {"2026-11-24", 0, 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t ms = -1;
		int rc = util_parse_time(cases[i].text, &ms);
		if (cases[i].ok) {
			CHECK(rc == 0);
			CHECK(ms == cases[i].ms);
			if (rc != 0 || ms != cases[i].ms)
				fprintf(stderr, "  %s -> rc %d, %lld\n", cases[i].text, rc,
				        (long long)ms);
		} else {
			CHECK(rc != 0);
			if (rc == 0)
				fprintf(stderr, "  %s accepted\n", cases[i].text);
		}
	}
}

static void test_parse_id(void)
{
	static const struct {
		const char *text;
		int64_t want; /* 0: refused */
	} cases[] = {
	    {"sub_1", 1},   {"sub_42", 42}, {"sub_9223372036854775807", INT64_MAX},
	    {"sub_01", 0},  {"sub_0", 0},   {"sub_-1", 0},
	    {"sub_+1", 0},  {"sub_ 1", 0},  {"sub_1 ", 0},
	    {"sub_", 0},    {"sub1", 0},    {"dlv_1", 0},
	    {"sub_1x", 0},  {"sub_9223372036854775808", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t n = 0;
		int rc = util_parse_id("sub_", cases[i].text, &n);
		CHECK(cases[i].want ? rc == 0 && n == cases[i].want : rc == -1);
		if (cases[i].want ? rc != 0 || n != cases[i].want : rc != -1)
			fprintf(stderr, "  util_parse_id(\"sub_\", \"%s\") = %d, %lld\n", cases[i].text,
			        rc, (long long)n);
	}
}

/* The libc spelling util_format_time must match. */
static void reference_time(int64_t ms, char out[UTIL_TIME_MAX])
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	size_t len = strftime(out, UTIL_TIME_MAX, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + len, UTIL_TIME_MAX - len, ".%03dZ", (int)(ms % 1000));
}

static int formats_as_libc(int64_t ms)
{
	char ours[UTIL_TIME_MAX], libc[UTIL_TIME_MAX];
	int64_t back = -1;
	util_format_time(ms, ours);
	reference_time(ms, libc);
	if (strcmp(ours, libc) != 0 || util_parse_time(ours, &back) != 0 || back != ms) {
		fprintf(stderr, "  %" PRId64 ": %s, libc %s, read back %" PRId64 "\n", ms, ours,
		        libc, back);
		return 0;
	}
	return 1;
}

static void test_format_time(void)
{
	static const int64_t cases[] = {
	    0,
	    999,
	    1000,
	    86399999,
	    86400000,
	    951782400000,    /* 2000-02-29, a leap day in a year divisible by 400 */
	    951868800000,    /* 2000-03-01 */
	    1709164800000,   /* 2024-02-29 */
	    1795478400123,   /* 2026-11-24T00:00:00.123Z */
	    1798761599999,   /* 2026-12-31T23:59:59.999Z */
	    4107542400000,   /* 2100-03-01: 2100 is no leap year */
	    253402300799999, /* 9999-12-31T23:59:59.999Z, the last the fast way writes */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK(formats_as_libc(cases[i]));

	unsigned seed = 7;
	int failed = 0;
	for (int n = 0; n < 200000 && failed < 5; n++) {
		int64_t ms = ((int64_t)rand_r(&seed) << 31 | rand_r(&seed)) % 253402300800000LL;
		failed += !formats_as_libc(ms);
	}
	CHECK(failed == 0);

	char out[UTIL_TIME_MAX];
	util_format_time(253402300800000LL, out); /* year 10000: the libc way, five digits */
	CHECK(strcmp(out, "10000-01-01T00:00:00.000Z") == 0);
	util_format_time(-1, out); /* before 1970: the libc way, seconds rounded down */
	CHECK(strcmp(out, "1969-12-31T23:59:59.999Z") == 0);
	util_format_time(-1000, out);
	CHECK(strcmp(out, "1969-12-31T23:59:59.000Z") == 0);
	util_format_time(-86400001, out);
	CHECK(strcmp(out, "1969-12-30T23:59:59.999Z") == 0);
}

static void test_event_ids(void)
{
	char a[UTIL_ID_MAX], b[UTIL_ID_MAX], floor[UTIL_ID_MAX], next_floor[UTIL_ID_MAX];
	static const int64_t times[] = {0, 1, 1795478400123, 253402300799999};

	for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
		int64_t ms = times[i];
		util_event_id_floor(ms, floor);
		util_event_id_floor(ms + 1, next_floor);
		CHECK(strlen(floor) == 30 && strncmp(floor, "evt_", 4) == 0);
		CHECK(strcmp(floor, next_floor) < 0);
		for (int n = 0; n < 1000; n++) {
			CHECK(util_new_event_id(ms, a) == 0);
			CHECK(strlen(a) == 30);
			CHECK(util_is_event_id(a));
			CHECK(strcmp(a, floor) >= 0);
			CHECK(strcmp(a, next_floor) < 0);
		}
	}
	CHECK(util_new_event_id(1795478400123, a) == 0);
	CHECK(util_new_event_id(1795478400123, b) == 0);
	CHECK(strcmp(a, b) != 0); /* 80 random bits */
	/* the Crockford spelling of the ULID of (1795478400123, zero bits) */
	util_event_id_floor(1795478400123, floor);
	CHECK(strcmp(floor, "evt_01M85DMB3V0000000000000000") == 0);
	/* out of the 48-bit range: clamped, not wrapped */
	util_event_id_floor(-5, a);
	util_event_id_floor(0, b);
	CHECK(strcmp(a, b) == 0);
	util_event_id_floor(INT64_MAX, a);
	CHECK(strcmp(a, "evt_7ZZZZZZZZZ0000000000000000") == 0);
	CHECK(util_is_event_id(a));
	/* what ?event= refuses: another length, a letter out of the alphabet, lower case,
	 * a first char past 128 bits, another prefix */
	static const char *const not_ids[] = {"evt_",
	                                      "evt_zzz",
	                                      "evt_01M85DMB3V000000000000000",
	                                      "evt_01M85DMB3V00000000000000000",
	                                      "evt_01M85DMB3V000000000000000U",
	                                      "evt_01m85dmb3v0000000000000000",
	                                      "evt_81M85DMB3V0000000000000000",
	                                      "sub_01M85DMB3V0000000000000000"};
	for (size_t i = 0; i < sizeof(not_ids) / sizeof(not_ids[0]); i++)
		CHECK(!util_is_event_id(not_ids[i]));
}

/* An id array grown from nothing keeps every id in order, and its count within cap. */
static void test_ids_push(void)
{
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	int ok = 1;

	for (int64_t id = 1; id <= 1000; id++)
		CHECK(util_ids_push(&ids, &n, &cap, id * 3) == 0);
	CHECK(n == 1000 && cap >= n);
	for (size_t i = 0; i < n; i++)
		ok &= ids[i] == (int64_t)(i + 1) * 3;
	CHECK(ok);
	free(ids);
}

int main(void)
{
	test_ids_push();
	test_parse_time();
	test_event_ids();
	test_format_time();
	test_parse_id();
	return CHECK_DONE();
}
