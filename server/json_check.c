/*
 * json_check.c - one pass over the bytes, an explicit stack of open containers (at most
 * max_depth, itself bounded by JSON_CHECK_STACK), no allocation. tests/fuzz/fuzz_ingest.c
 * holds it to jansson's verdict on the same bytes.
 */
#include "json_check.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define JSON_CHECK_STACK 256 /* deepest max_depth honoured */

struct scan {
	const unsigned char *p, *end, *start;
	const char *reason;
};

static int fail(struct scan *s, const char *reason)
{
	s->reason = reason;
	return -1;
}

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int hex4(struct scan *s, unsigned int *out)
{
	unsigned int v = 0;
	if (s->end - s->p < 4)
		return fail(s, "truncated \\u escape");
	for (int i = 0; i < 4; i++) {
		unsigned char c = s->p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned int)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned int)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned int)(c - 'A' + 10);
		else
			return fail(s, "invalid \\u escape");
	}
	s->p += 4;
	*out = v;
	return 0;
}

size_t json_utf8_seq(const unsigned char *p, size_t left)
{
	unsigned char c, lo = 0x80, hi = 0xBF;
	size_t n;

	if (left == 0)
		return 0;
	c = p[0];
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		n = 1;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
	else
		return 0;
	if (left < n + 1 || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i <= n; i++) {
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	}
	return n + 1;
}

void json_utf8_repair(char *s, size_t len)
{
	unsigned char *p = (unsigned char *)s;

	while (len > 0) {
		size_t n = json_utf8_seq(p, len);
		if (n == 0) {
			*p = '?';
			n = 1;
		}
		p += n;
		len -= n;
	}
}

/* One UTF-8 sequence starting at a byte >= 0x80. */
static int utf8(struct scan *s)
{
	size_t n = json_utf8_seq(s->p, (size_t)(s->end - s->p));

	if (n == 0)
		return fail(s, "invalid UTF-8");
	s->p += n;
	return 0;
}

static int string(struct scan *s)
{
	s->p++; /* the opening quote */
	while (s->p < s->end) {
		unsigned char c = *s->p;
		if (c == '"') {
			s->p++;
			return 0;
		}
		if (c < 0x20)
			return fail(s, "control character in a string (escape it)");
		if (c >= 0x80) {
			if (utf8(s) != 0)
				return -1;
			continue;
		}
		s->p++;
		if (c != '\\')
			continue;
		if (s->p >= s->end)
			break;
		c = *s->p++;
		if (c == 'u') {
			unsigned int u, low;
			if (hex4(s, &u) != 0)
				return -1;
			if (u >= 0xDC00 && u <= 0xDFFF)
				return fail(s, "lone low surrogate in \\u escape");
			if (u >= 0xD800 && u <= 0xDBFF) {
				if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
					return fail(s, "high surrogate without its low half");
				s->p += 2;
				if (hex4(s, &low) != 0)
					return -1;
				if (low < 0xDC00 || low > 0xDFFF)
					return fail(s, "high surrogate without its low half");
			}
		} else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
			return fail(s, "invalid escape in a string");
		}
	}
	return fail(s, "unterminated string");
}

static int digits(struct scan *s)
{
	const unsigned char *from = s->p;
	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		s->p++;
	return s->p > from ? 0 : fail(s, "invalid number");
}

/* Refuses a number whose magnitude a double cannot hold (1e400): receivers would read it
 * as infinity or fail. Underflow (1e-400) is fine: it is just 0. The number is already
 * valid JSON. Its magnitude is worked out from where its first significant digit sits
 * (0.001e310 is 1e307), and one near the limit is rewritten as 0.<digits>e<exponent>
 * for strtod, so no length of digits hides its exponent. strtod gets the first
 * KEEP_DIGITS significant digits: where it turns to infinity (DBL_MAX + half an ulp,
 * 2^1024 - 2^970) has 309, so a number is at or past it exactly when those digits are
 * (with 120, that point itself passed as finite). The exponent is read on far past
 * any body's length of digits, so that 0.<a million zeros>1e1000400 (1e399) is not
 * taken for small, nor 1<a million zeros>e-1000000 (10) for large. */
#define KEEP_DIGITS 330 /* significant digits handed to strtod, past the 309 needed */

static int in_range(struct scan *s, const unsigned char *from)
{
	const unsigned char *q = from;
	long mag = 0, exp = 0; /* value = 0.<significant digits> x 10^(mag + exp) */
	int seen = 0;          /* a significant (non-zero-led) digit */
	char buf[KEEP_DIGITS];
	size_t n = 0;

	if (*q == '-')
		q++;
	for (; q < s->p && *q >= '0' && *q <= '9'; q++) { /* integer part */
		seen |= *q != '0';
		if (seen) {
			mag++;
			if (n < KEEP_DIGITS)
				buf[n++] = (char)*q;
		}
	}
	if (q < s->p && *q == '.') {
		for (q++; q < s->p && *q >= '0' && *q <= '9'; q++) { /* fraction */
			if (!seen && *q == '0') {
				mag--;
				continue;
			}
			seen = 1;
			if (n < KEEP_DIGITS)
				buf[n++] = (char)*q;
		}
	}
	if (!seen)
		return 0; /* zero, however spelt */
	if (q < s->p && (*q == 'e' || *q == 'E')) {
		q++;
		int neg = *q == '-';
		if (*q == '-' || *q == '+')
			q++;
		for (; q < s->p && exp < 1000000000L; q++)
			exp = exp * 10 + (*q - '0');
		if (neg)
			exp = -exp;
	}
	if (mag + exp < 300)
		return 0;
	if (mag + exp > 310)
		return fail(s, "number out of range");
	char number[sizeof(buf) + 16];
	snprintf(number, sizeof(number), "0.%.*se%ld", (int)n, buf, mag + exp);
	return isinf(strtod(number, NULL)) ? fail(s, "number out of range") : 0;
}

static int number(struct scan *s)
{
	const unsigned char *from = s->p;
	if (*s->p == '-')
		s->p++;
	if (s->p < s->end && *s->p == '0')
		s->p++;
	else if (digits(s) != 0)
		return -1;
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		if (digits(s) != 0)
			return -1;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		s->p++;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		if (digits(s) != 0)
			return -1;
	}
	return in_range(s, from);
}

static int literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return fail(s, "invalid literal");
	s->p += n;
	return 0;
}

/* A scalar value at s->p (string, number, true/false/null). */
static int scalar(struct scan *s)
{
	switch (*s->p) {
	case '"':
		return string(s);
	case 't':
		return literal(s, "true");
	case 'f':
		return literal(s, "false");
	case 'n':
		return literal(s, "null");
	default:
		if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))
			return number(s);
		return fail(s, "unexpected character");
	}
}

static int check(struct scan *s, int max_depth, int *too_deep)
{
	char stack[JSON_CHECK_STACK]; /* '{' or '[' per open container */
	int depth = 0;

	if (max_depth > JSON_CHECK_STACK)
		max_depth = JSON_CHECK_STACK;
	skip_ws(s);
	for (;;) {
		/* Expecting a value. */
		if (s->p >= s->end)
			return fail(s, "unexpected end of input");
		if (*s->p == '{' || *s->p == '[') {
			if (depth == max_depth) {
				*too_deep = 1;
				return fail(s, "nesting too deep");
			}
			stack[depth++] = (char)*s->p;
			s->p++;
			skip_ws(s);
			if (s->p < s->end && (*s->p == '}' || *s->p == ']')) {
				if ((*s->p == '}') != (stack[depth - 1] == '{'))
					return fail(s, "mismatched bracket");
				s->p++;
				depth--;
				goto after_value;
			}
			if (stack[depth - 1] == '{')
				goto member_key;
			continue;
		}
		if (scalar(s) != 0)
			return -1;
	after_value:
		skip_ws(s);
		if (depth == 0)
			return s->p == s->end ? 0 : fail(s, "text after the JSON value");
		if (s->p >= s->end)
			return fail(s, "unexpected end of input");
		if (*s->p == ',') {
			s->p++;
			skip_ws(s);
			if (stack[depth - 1] == '{')
				goto member_key;
			continue;
		}
		if (*s->p == (stack[depth - 1] == '{' ? '}' : ']')) {
			s->p++;
			depth--;
			goto after_value;
		}
		return fail(s, stack[depth - 1] == '{' ? "expected , or } in an object"
		                                        : "expected , or ] in an array");
	member_key:
		if (s->p >= s->end || *s->p != '"')
			return fail(s, "expected a string key");
		if (string(s) != 0)
			return -1;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return fail(s, "expected : after a key");
		s->p++;
		skip_ws(s);
	}
}

int json_check(const char *p, size_t len, int max_depth, struct json_check_error *err)
{
	struct scan s = {(const unsigned char *)p, (const unsigned char *)p + len,
	                 (const unsigned char *)p, NULL};
	int too_deep = 0;

	if (check(&s, max_depth, &too_deep) == 0)
		return 0;
	err->offset = (size_t)(s.p - s.start);
	err->reason = s.reason;
	err->too_deep = too_deep;
	err->line = 1;
	err->column = 1;
	for (const unsigned char *q = s.start; q < s.p; q++) {
		if (*q == '\n') {
			err->line++;
			err->column = 1;
		} else {
			err->column++;
		}
	}
	return -1;
}
