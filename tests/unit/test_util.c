/*
 * test_util.c - util_parse_time, the RFC 3339 reader behind the recover route's "since":
 * real dates only (no 31 February, 29 February only in leap years), offsets within a day,
 * and the instant each spelling names; util_parse_id: one spelling per id.
 */
#include <stdint.h>

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

int main(void)
{
	test_parse_time();
	test_parse_id();
	return CHECK_DONE();
}
