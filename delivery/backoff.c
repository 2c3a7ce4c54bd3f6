/*
 * backoff.c - the retry schedule: durations ("250ms", "15s", "5m", "2h", "1d"), the
 * comma-separated schedule, jittered delays and Retry-After.
 *
 * Invariants:
 * - Every duration is 0..BACKOFF_DURATION_MAX ms, so delay arithmetic (base +- 20%) never
 *   overflows int64_t; backoff_delay_ms clamps a schedule entry into that range anyway.
 * - Jitter is a pure function of the `random` argument: the delay is uniform over the
 *   integers [base - base/5, base + base/5], never outside +-20% of base.
 * - Retry-After: delta-seconds or an HTTP-date in any of its three forms (IMF-fixdate,
 *   and the obsolete RFC 850 and asctime ones a recipient must still accept: RFC 9110
 *   sections 10.2.3 and 5.6.7). The time it names is clamped into [now, now + 7 days]:
 *   a date in the past means "now", and a receiver cannot park a delivery for longer
 *   than a week; so can delta-seconds too long to hold. Other syntax is rejected (-1).
 *
 * Threads: no state; every function is safe from any thread.
 */
#include "backoff.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MS_PER_SEC INT64_C(1000)
#define MS_PER_MIN (60 * MS_PER_SEC)
#define MS_PER_HOUR (60 * MS_PER_MIN)
#define MS_PER_DAY (24 * MS_PER_HOUR)
#define BACKOFF_DURATION_MAX (365 * MS_PER_DAY) /* ms */
#define RETRY_AFTER_MAX (7 * MS_PER_DAY)        /* ms */
#define DURATION_TEXT_MAX 32                    /* bytes of one schedule step, NUL included */

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

int backoff_parse_duration(const char *text, int64_t *ms_out)
{
	static const struct {
		const char *suffix;
		int64_t ms;
	} units[] = {
	    {"", MS_PER_SEC},  {"ms", 1},          {"s", MS_PER_SEC},
	    {"m", MS_PER_MIN}, {"h", MS_PER_HOUR}, {"d", MS_PER_DAY},
	};
	char *end = NULL;
	long long n;
	int64_t mult = 0;
	size_t i;
	int rc = -1;

	/* strtoll would accept leading space and a sign: insist on a digit first. */
	if (text == NULL || ms_out == NULL || !is_digit(text[0]))
		goto out;
	errno = 0;
	n = strtoll(text, &end, 10);
	if (errno != 0 || end == text || n < 0)
		goto out;
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].suffix) == 0) {
			mult = units[i].ms;
			break;
		}
	}
	if (mult == 0 || n > BACKOFF_DURATION_MAX / mult)
		goto out;
	*ms_out = (int64_t)n * mult;
	rc = 0;
out:
	return rc;
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t';
}

int backoff_parse_schedule(const char *text, int64_t *out, int max, const char **why)
{
	int64_t steps[BACKOFF_MAX_STEPS];
	char item[DURATION_TEXT_MAX];
	const char *reason = "retry schedule is empty";
	const char *p;
	const char *start;
	const char *stop;
	size_t len;
	int count = 0;
	int limit;
	int rc = -1;

	if (text == NULL)
		goto out;
	reason = "retry schedule has too many steps";
	if (out == NULL || max < 1)
		goto out;
	limit = max < BACKOFF_MAX_STEPS ? max : BACKOFF_MAX_STEPS;
	reason = "retry schedule is empty";
	p = text;
	for (;;) {
		start = p;
		while (*p != ',' && *p != '\0')
			p++;
		stop = p;
		while (start < stop && is_blank(*start))
			start++;
		while (stop > start && is_blank(stop[-1]))
			stop--;
		len = (size_t)(stop - start);
		if (len == 0) {
			if (count != 0 || *p != '\0')
				reason = "retry schedule has an empty step";
			goto out;
		}
		if (count == limit) {
			reason = "retry schedule has too many steps";
			goto out;
		}
		reason = "retry schedule step is not a duration like 250ms, 15s, 5m, 2h or 1d "
		         "(at most 365d)";
		if (len >= sizeof(item))
			goto out;
		memcpy(item, start, len);
		item[len] = '\0';
		if (backoff_parse_duration(item, &steps[count]) != 0)
			goto out;
		count++;
		if (*p == '\0')
			break;
		p++; /* past the comma */
	}
	memcpy(out, steps, (size_t)count * sizeof(steps[0]));
	rc = count;
out:
	if (rc < 0 && why != NULL)
		*why = reason;
	return rc;
}

int64_t backoff_delay_ms(const int64_t *schedule, int count, int attempt, uint64_t random)
{
	int64_t base;
	int64_t lo;
	uint64_t span;
	int64_t delay = -1;

	if (schedule == NULL || count < 1 || attempt < 1 || attempt > count)
		goto out;
	base = schedule[attempt - 1];
	if (base < 0)
		base = 0;
	if (base > BACKOFF_DURATION_MAX)
		base = BACKOFF_DURATION_MAX;
	lo = base - base / 5;
	span = (uint64_t)(2 * (base / 5)) + 1;
	delay = lo + (int64_t)(random % span);
out:
	return delay;
}

/* Parses exactly `width` digits at s into *v. */
static int parse_fixed_digits(const char *s, int width, int *v)
{
	int n = 0;
	int i;

	for (i = 0; i < width; i++) {
		if (!is_digit(s[i]))
			break;
		n = n * 10 + (s[i] - '0');
	}
	*v = n;
	return i == width ? 0 : -1;
}

static int is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (valid date). */
static int64_t days_from_civil(int y, int m, int d)
{
	int64_t era;
	int64_t yoe;
	int64_t doy;
	int64_t doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int month_index(const char *s)
{
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

	for (int i = 0; i < 12; i++) {
		if (memcmp(s, months[i], 3) == 0)
			return i;
	}
	return -1;
}

/* "HH:MM:SS" at s (8 bytes). */
static int parse_clock(const char *s, int *hh, int *mm, int *ss)
{
	if (s[2] != ':' || s[5] != ':' || parse_fixed_digits(s, 2, hh) != 0 ||
	    parse_fixed_digits(s + 3, 2, mm) != 0 || parse_fixed_digits(s + 6, 2, ss) != 0)
		return -1;
	return 0;
}

/* The unix ms of a date and time (month 0-11), if it is a real one from 1970 on. */
static int date_ms(int year, int mon, int day, int hh, int mm, int ss, int64_t *ms_out)
{
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	if (mon < 0 || year < 1970 || day < 1 || day > mdays[mon] + (mon == 1 && is_leap(year)) ||
	    hh > 23 || mm > 59 || ss > 60)
		return -1;
	*ms_out =
	    (((days_from_civil(year, mon + 1, day) * 24 + hh) * 60 + mm) * 60 + ss) * MS_PER_SEC;
	return 0;
}

/* The length of the day name s[0..len) starts with, among the three-letter names or with
 * longform the full ones; 0 if none. */
static size_t weekday_prefix(const char *s, size_t len, int longform)
{
	static const char *const shorts[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
	static const char *const longs[] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
	                                    "Friday", "Saturday", "Sunday"};
	const char *const *names = longform ? longs : shorts;

	for (int i = 0; i < 7; i++) {
		size_t n = strlen(names[i]);
		if (len >= n && memcmp(s, names[i], n) == 0)
			return n;
	}
	return 0;
}

/* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT", exactly 29 bytes. The weekday name must
 * be a real one but is not checked against the date (it carries no information), in
 * this format and the two below. */
static int parse_imf_fixdate(const char *s, size_t len, int64_t *ms_out)
{
	int day, year, hh, mm, ss;

	if (len != 29 || weekday_prefix(s, len, 0) == 0 || memcmp(s + 3, ", ", 2) != 0 ||
	    s[7] != ' ' || s[11] != ' ' || s[16] != ' ' || memcmp(s + 25, " GMT", 4) != 0 ||
	    parse_fixed_digits(s + 5, 2, &day) != 0 || parse_fixed_digits(s + 12, 4, &year) != 0 ||
	    parse_clock(s + 17, &hh, &mm, &ss) != 0)
		return -1;
	return date_ms(year, month_index(s + 8), day, hh, mm, ss, ms_out);
}

/* Obsolete RFC 850 form: "Sunday, 06-Nov-94 08:49:37 GMT". Its two-digit year is the one
 * of this century, or of the last when that would be more than 50 years ahead of now
 * (RFC 9110 section 5.6.7). */
static int parse_rfc850(const char *s, size_t len, int64_t now_ms, int64_t *ms_out)
{
	int day, yy, hh, mm, ss, year, now_year;
	size_t w = weekday_prefix(s, len, 1);

	if (w == 0 || len != w + 24)
		return -1;
	s += w;
	if (memcmp(s, ", ", 2) != 0 || s[4] != '-' || s[8] != '-' || s[11] != ' ' ||
	    memcmp(s + 20, " GMT", 4) != 0 || parse_fixed_digits(s + 2, 2, &day) != 0 ||
	    parse_fixed_digits(s + 9, 2, &yy) != 0 || parse_clock(s + 12, &hh, &mm, &ss) != 0)
		return -1;
	now_year = 1970 + (int)(now_ms / MS_PER_DAY / 366); /* at most the year, then up */
	while (days_from_civil(now_year + 1, 1, 1) * MS_PER_DAY <= now_ms)
		now_year++;
	year = now_year / 100 * 100 + yy;
	if (year > now_year + 50)
		year -= 100;
	return date_ms(year, month_index(s + 5), day, hh, mm, ss, ms_out);
}

/* Obsolete asctime form: "Sun Nov  6 08:49:37 1994" (the day space-padded), 24 bytes. */
static int parse_asctime(const char *s, size_t len, int64_t *ms_out)
{
	int day, year, hh, mm, ss;

	if (len != 24 || weekday_prefix(s, len, 0) == 0 || s[3] != ' ' || s[7] != ' ' ||
	    s[10] != ' ' || s[19] != ' ' || parse_clock(s + 11, &hh, &mm, &ss) != 0 ||
	    parse_fixed_digits(s + 20, 4, &year) != 0)
		return -1;
	if (s[8] == ' ' ? parse_fixed_digits(s + 9, 1, &day) != 0
	                : parse_fixed_digits(s + 8, 2, &day) != 0)
		return -1;
	return date_ms(year, month_index(s + 4), day, hh, mm, ss, ms_out);
}

int64_t backoff_retry_after_ms(const char *value, int64_t now_ms)
{
	const char *start;
	const char *stop;
	size_t len;
	size_t i;
	int64_t secs = 0;
	int64_t at = -1;
	int64_t result = -1;

	if (value == NULL || now_ms < 0 || now_ms > INT64_MAX - RETRY_AFTER_MAX)
		goto out;
	start = value;
	stop = value + strlen(value);
	while (start < stop && is_blank(*start))
		start++;
	while (stop > start && is_blank(stop[-1]))
		stop--;
	len = (size_t)(stop - start);
	if (len == 0)
		goto out;
	if (is_digit(*start)) {
		/* delta-seconds: 1*DIGIT. One too large to hold means "very long" (RFC 9111
		 * section 1.2.2): past 10 significant digits, stop counting; the week's cap
		 * applies. */
		size_t significant = 0;
		for (i = 0; i < len; i++) {
			if (!is_digit(start[i]))
				goto out;
			if (significant > 0 || start[i] != '0')
				significant++;
			if (significant > 0 && significant <= 10)
				secs = secs * 10 + (start[i] - '0');
		}
		at = now_ms + (significant > 10 ? RETRY_AFTER_MAX : secs * MS_PER_SEC);
	} else if (parse_imf_fixdate(start, len, &at) != 0 &&
	           parse_rfc850(start, len, now_ms, &at) != 0 &&
	           parse_asctime(start, len, &at) != 0) {
		goto out;
	}
	if (at < now_ms)
		at = now_ms;
	if (at > now_ms + RETRY_AFTER_MAX)
		at = now_ms + RETRY_AFTER_MAX;
	result = at;
out:
	return result;
}
