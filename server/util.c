/*
 * util.c - RFC 3339 times, external ids, growing id arrays. Only util_ids_push
 * allocates.
 */
#include "util.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Writes v as exactly `width` digits at p. */
static void put_digits(char *p, unsigned int v, int width)
{
	for (int i = width - 1; i >= 0; i--, v /= 10)
		p[i] = (char)('0' + v % 10);
}

/* Times are written for every row of the delivery log and every event published:
 * arithmetic here (the civil-from-days algorithm of H. Hinnant's chrono paper) instead of
 * gmtime_r and strftime, which took a sixth of a page of deliveries. Years 1970-9999
 * (all the relay writes); anything else goes the libc way. */
#define UTIL_MS_YEAR_10000 253402300800000LL

void util_format_time(int64_t ms, char out[UTIL_TIME_MAX])
{
	if (ms >= 0 && ms < UTIL_MS_YEAR_10000) {
		int64_t secs = ms / 1000;
		unsigned int day_secs = (unsigned int)(secs % 86400);
		unsigned int days = (unsigned int)(secs / 86400) + 719468; /* from 0000-03-01 */
		unsigned int era = days / 146097, doe = days % 146097;
		unsigned int yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
		unsigned int doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
		unsigned int mp = (5 * doy + 2) / 153;
		unsigned int day = doy - (153 * mp + 2) / 5 + 1;
		unsigned int month = mp < 10 ? mp + 3 : mp - 9;
		unsigned int year = yoe + era * 400 + (month <= 2);

		memcpy(out, "0000-00-00T00:00:00.000Z", 25);
		put_digits(out, year, 4);
		put_digits(out + 5, month, 2);
		put_digits(out + 8, day, 2);
		put_digits(out + 11, day_secs / 3600, 2);
		put_digits(out + 14, day_secs / 60 % 60, 2);
		put_digits(out + 17, day_secs % 60, 2);
		put_digits(out + 20, (unsigned int)(ms % 1000), 3);
		return;
	}

	/* floor division: -1 ms is 1969-12-31T23:59:59.999Z, not 1970-01-01T00:00:00.999Z */
	time_t secs = (time_t)(ms / 1000 - (ms % 1000 < 0));
	unsigned int millis = (unsigned int)(((ms % 1000) + 1000) % 1000);
	struct tm tm;
	size_t len;

	gmtime_r(&secs, &tm);
	len = strftime(out, UTIL_TIME_MAX, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + len, UTIL_TIME_MAX - len, ".%03uZ", millis % 1000u);
}

static int parse_digits(const char **p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if ((*p)[i] < '0' || (*p)[i] > '9')
			return -1;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

int util_parse_time(const char *text, int64_t *ms_out)
{
	const char *p = text;
	int year, mon, day, hour, min, sec, frac_ms = 0, offset_min = 0;
	struct tm tm;

	if (parse_digits(&p, 4, &year) || *p++ != '-' || parse_digits(&p, 2, &mon) ||
	    *p++ != '-' || parse_digits(&p, 2, &day) || (*p != 'T' && *p != 't'))
		return -1;
	p++;
	if (parse_digits(&p, 2, &hour) || *p++ != ':' || parse_digits(&p, 2, &min) ||
	    *p++ != ':' || parse_digits(&p, 2, &sec))
		return -1;
	if (*p == '.') {
		int scale = 100;
		p++;
		if (*p < '0' || *p > '9')
			return -1;
		while (*p >= '0' && *p <= '9') {
			frac_ms += (*p - '0') * scale;
			scale /= 10;
			p++;
		}
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p == '-' ? -1 : 1, oh, om;
		p++;
		if (parse_digits(&p, 2, &oh) || *p++ != ':' || parse_digits(&p, 2, &om) ||
		    oh > 23 || om > 59)
			return -1;
		offset_min = sign * (oh * 60 + om);
	} else {
		return -1;
	}
	static const int month_days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	if (*p != '\0' || mon < 1 || mon > 12 || day < 1 || day > month_days[mon - 1] ||
	    (mon == 2 && day == 29 && !leap) || hour > 23 || min > 59 || sec > 60)
		return -1;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = year - 1900;
	tm.tm_mon = mon - 1;
	tm.tm_mday = day;
	tm.tm_hour = hour;
	tm.tm_min = min;
	tm.tm_sec = sec;
	*ms_out = ((int64_t)timegm(&tm) - (int64_t)offset_min * 60) * 1000 + frac_ms;
	return 0;
}

void util_format_id(const char *prefix, int64_t n, char out[UTIL_ID_MAX])
{
	snprintf(out, UTIL_ID_MAX, "%s%lld", prefix, (long long)n);
}

int util_parse_int(const char *text, int64_t min, int64_t max, int64_t *out)
{
	char *end = NULL;
	long long v;

	if (!text || !*text || (*text != '-' && (*text < '0' || *text > '9')))
		return -1;
	errno = 0;
	v = strtoll(text, &end, 10);
	if (errno || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int util_parse_id(const char *prefix, const char *text, int64_t *n)
{
	size_t plen = strlen(prefix);

	/* one spelling per id: sub_01 is not sub_1 (nor is sub_-1, sub_+1 or sub_ 1) */
	if (!text || strncmp(text, prefix, plen) != 0 || text[plen] < '1' || text[plen] > '9')
		return -1;
	return util_parse_int(text + plen, 1, INT64_MAX, n);
}

/* Draws from a per-thread buffer refilled from RAND_bytes 4 KiB at a time: one call into
 * OpenSSL (and its fork check) per ~400 ids instead of one per id. */
static int random_bytes(unsigned char *out, size_t n)
{
	static _Thread_local unsigned char pool[4096];
	static _Thread_local size_t left;

	if (n > sizeof(pool))
		return RAND_bytes(out, (int)n) == 1 ? 0 : -1;
	if (left < n) {
		if (RAND_bytes(pool, (int)sizeof(pool)) != 1)
			return -1;
		left = sizeof(pool);
	}
	memcpy(out, pool + sizeof(pool) - left, n);
	OPENSSL_cleanse(pool + sizeof(pool) - left, n);
	left -= n;
	return 0;
}

/* Writes "evt_" + 26 Crockford base32 chars of 128 bits: 48-bit big-endian `ms`, then
 * the 80 bits of `random` (10 bytes). */
static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static void format_event_id(int64_t ms, const unsigned char random[10], char out[UTIL_ID_MAX])
{
	unsigned char bytes[16];
	char *p = out;

	for (int i = 0; i < 6; i++)
		bytes[i] = (unsigned char)((uint64_t)ms >> (40 - 8 * i));
	memcpy(bytes + 6, random, 10);
	memcpy(p, "evt_", 4);
	p += 4;
	/* 130 bits of output for 128 bits of input: the first char carries 3 bits. */
	unsigned int acc = 0;
	int bits = 2; /* two leading zero bits pad 128 to 130 */
	size_t in = 0;
	for (int c = 0; c < 26; c++) {
		while (bits < 5) {
			acc = (acc << 8) | bytes[in++];
			bits += 8;
		}
		*p++ = crockford[(acc >> (bits - 5)) & 31];
		bits -= 5;
		acc &= (1u << bits) - 1;
	}
	*p = '\0';
}

int util_new_event_id(int64_t now_ms, char out[UTIL_ID_MAX])
{
	unsigned char random[10];

	if (random_bytes(random, sizeof(random)) != 0)
		return -1;
	format_event_id(now_ms, random, out);
	return 0;
}

int util_is_event_id(const char *text)
{
	if (strncmp(text, "evt_", 4) != 0 || strlen(text) != 4 + 26 || text[4] > '7')
		return 0;
	for (const char *p = text + 4; *p; p++) {
		if (!strchr(crockford, *p))
			return 0;
	}
	return 1;
}

void util_event_id_floor(int64_t ms, char out[UTIL_ID_MAX])
{
	static const unsigned char zero[10];
	const int64_t max_ms = ((int64_t)1 << 48) - 1;

	format_event_id(ms < 0 ? 0 : ms > max_ms ? max_ms : ms, zero, out);
}

int util_ids_push(int64_t **ids, size_t *n, size_t *cap, int64_t id)
{
	if (*n == *cap) {
		size_t grown_cap = *cap ? *cap * 2 : 16;
		int64_t *grown;

		if (grown_cap > SIZE_MAX / sizeof(*grown))
			return -1;
		grown = realloc(*ids, grown_cap * sizeof(*grown));
		if (!grown)
			return -1;
		*ids = grown;
		*cap = grown_cap;
	}
	(*ids)[(*n)++] = id;
	return 0;
}
