/*
 * test_json_check.c - json_check against a table of cases, and against jansson's verdict
 * on 300k byte-level mutations of valid documents (jansson is the oracle).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json_check.h"

static int ok(const char *text)
{
	struct json_check_error e;
	return json_check(text, strlen(text), 64, &e) == 0;
}

static void test_table(void)
{
	static const char *const good[] = {
	    "0", "-0", "1.5e-3", "-12E+2", "\"\"", "\"\\u00e9\\ud83d\\ude00\\n\"", "\"\xc3\xa9\xf0\x9f\x98\x80\"",
	    "[]", "{}", " [1, {\"a\": [null, true, false]}] ", "{\"a\":{\"b\":{}}}", "\"\\u0000\"",
	    "123456789012345678901234567890", "1e-400", "1.7976931348623157e308", "-1e308",
	    "0.00000000000001e311", "0e400", "-0.000e99999", "0.1e309", "100e306",
	    "1e+308", "1E+2", "1e-0400", "1e+000308", "-1.5E+307", "0e+400",
	};
	static const char *const bad[] = {
	    "", " ", "01", "1.", ".5", "-", "1e", "+1", "[1,]", "{\"a\":1,}", "{\"a\"}", "{a:1}",
	    "[1 2]", "\"abc", "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"",
	    "\"\x01\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\"",
	    "tru", "nul", "[", "]", "{]", "[}", "1 2", "{\"a\":1}}", "NaN", "\"\\u12G4\"",
	    "1e400", "-1e309", "2e308", "1000000000000000000000000000000e290", "0.18e310",
	    "1.8e308",
	    /* the exponent's sign may be written: a '+' read as a digit makes 1e+400 small */
	    "1e+400", "1E+309", "-1e+309", "0.1e+310", "1e+0309", "2E+308",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK(ok(good[i]));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!ok(bad[i]));

	/* Long spellings: the magnitude is where the first significant digit sits, however
	 * many digits come before the exponent. */
	char big[700];
	snprintf(big, sizeof(big), "1%0299de%d", 0, 9); /* 1e308 */
	CHECK(ok(big));
	snprintf(big, sizeof(big), "1%0299d.%0200de10", 0, 0); /* 1e309 */
	CHECK(!ok(big));
	snprintf(big, sizeof(big), "1%0299d.%0200de-10", 0, 0); /* 1e289 */
	CHECK(ok(big));
	snprintf(big, sizeof(big), "0.%0400d1e400", 0); /* 1e-1 */
	CHECK(ok(big));
	snprintf(big, sizeof(big), "0.%0400d1e710", 0); /* 1e309 */
	CHECK(!ok(big));

	/* Where strtod turns to infinity, 2^1024 - 2^970, has 309 digits: it is refused,
	 * one less is DBL_MAX. (Cut to 120 digits, both passed.) */
	static const char limit[] =
	    "17976931348623158079372897140530341507993413271003782693617377898044496829276475094664"
	    "90179775872070963302864166928879109465555478519404026306574886715058206819089020007083"
	    "83676273854845817711531764475730270069855571366959622842914819860834936475292719074168"
	    "444365510704342711559699508093042880177904174497792";
	CHECK(!ok(limit));
	snprintf(big, sizeof(big), "%.308s1", limit); /* it ends in 2 */
	CHECK(ok(big));
	snprintf(big, sizeof(big), "%.308s1.%0300d9", limit, 0);
	CHECK(ok(big));

	/* The exponent counts however long the digits before it run. */
	size_t huge_len = 1100000;
	char *huge = malloc(huge_len);
	CHECK(huge != NULL);
	if (huge) {
		memset(huge, '0', huge_len);
		memcpy(huge, "0.", 2); /* 0.<1,000,000 zeros>1e1000400 is 1e399 */
		snprintf(huge + 2 + 1000000, huge_len - 2 - 1000000, "1e1000400");
		CHECK(!ok(huge));
		memset(huge, '0', huge_len); /* 1<1,000,001 zeros>e-1000000 is 10 */
		huge[0] = '1';
		snprintf(huge + 1 + 1000001, huge_len - 1 - 1000001, "e-1000000");
		CHECK(ok(huge));
		free(huge);
	}

	struct json_check_error e;
	CHECK(json_check("[[[]]]", 6, 3, &e) == 0);
	CHECK(json_check("[[[[]]]]", 8, 3, &e) == -1 && e.too_deep == 1);
	/* Objects count as arrays do, alone or mixed with them: a limit kept for arrays only
	 * let {"a":{"a":...}} past the event's 64 levels, and, deeper than the stack of open
	 * containers, write past it. */
	static const char *const at_limit[] = {"{\"a\":{\"a\":{}}}", "[{\"a\":[]}]",
	                                       "{\"a\":[{}]}"};
	static const char *const past_limit[] = {"{\"a\":{\"a\":{\"a\":{}}}}",
	                                         "[{\"a\":[{}]}]", "{\"a\":[{\"b\":[]}]}",
	                                         "[[[{}]]]"};
	for (size_t i = 0; i < sizeof(at_limit) / sizeof(at_limit[0]); i++)
		CHECK(json_check(at_limit[i], strlen(at_limit[i]), 3, &e) == 0);
	for (size_t i = 0; i < sizeof(past_limit) / sizeof(past_limit[0]); i++)
		CHECK(json_check(past_limit[i], strlen(past_limit[i]), 3, &e) == -1 &&
		      e.too_deep == 1);
	/* deeper than any limit honoured: refused as too deep, nothing written past */
	char *objects = malloc(6 * 1000 + 1000 + 1);
	CHECK(objects != NULL);
	if (objects) {
		size_t n = 0;
		for (int i = 0; i < 1000; i++) {
			memcpy(objects + n, "{\"a\":", 5);
			n += 5;
		}
		objects[n++] = '1';
		memset(objects + n, '}', 1000);
		n += 1000;
		CHECK(json_check(objects, n, 64, &e) == -1 && e.too_deep == 1);
		CHECK(json_check(objects, n, 100000, &e) == -1 && e.too_deep == 1);
		free(objects);
	}
	CHECK(json_check("{\n \"a\": x}", 10, 64, &e) == -1 && e.line == 2 && e.column == 7 &&
	      !e.too_deep);
}

/* Each byte after a backslash, NUL among them: only " \\ / b f n r t and u (with four hex
 * digits) make an escape. The table above goes through strlen, so it cannot hold a NUL,
 * and the jansson comparison's alphabet has none: a backslash before a raw NUL byte, let
 * through, put a string into the stored data that ends the envelope early (it is kept
 * as a C string), and every subscriber got invalid JSON. */
static void test_escapes(void)
{
	int wrong = 0;

	for (int c = 0; c < 256; c++) {
		char text[8] = {'"', '\\', (char)c, '0', '0', '4', '1', '"'};
		struct json_check_error e;
		int want = c != 0 && strchr("\"\\/bfnrtu", c) != NULL;
		/* "\c0041": an escape and four digits, or four digits after a \u */
		int got = json_check(text, sizeof(text), 64, &e) == 0;
		if (got != want && wrong++ < 5)
			fprintf(stderr, "  escape byte 0x%02x: %s\n", c, got ? "accepted" : "refused");
	}
	CHECK(wrong == 0);
	/* and as an event's data, the way ingest meets it */
	static const char nul_escape[] = "{\"type\":\"a\",\"data\":\"x\\\0\"}";
	struct json_check_error e;
	CHECK(json_check(nul_escape, sizeof(nul_escape) - 1, 64, &e) == -1 &&
	      strcmp(e.reason, "invalid escape in a string") == 0);
}

/* Each byte below 0x20 raw in a string is refused (RFC 8259 7: escape it); 0x20 and DEL
 * are not control characters to JSON. The table held only 0x01, the jansson comparison's
 * alphabet 0x01 and nothing else below 0x20: a raw 0x1f let through reached subscribers
 * whose strict parsers refuse it. */
static void test_control_bytes(void)
{
	int wrong = 0;

	for (int c = 0; c <= 0x7f; c++) {
		char text[5] = {'"', 'a', (char)c, 'x', '"'}; /* backslash-x: no escape */
		struct json_check_error e;
		int want = c >= 0x20 && c != '"' && c != '\\';
		int got = json_check(text, sizeof(text), 64, &e) == 0;
		if (got != want && wrong++ < 5)
			fprintf(stderr, "  raw byte 0x%02x in a string: %s\n", c,
			        got ? "accepted" : "refused");
	}
	CHECK(wrong == 0);
}

/* A \u escape takes four hex digits in either case and nothing else, at each of the
 * four places: the table tried only G, the jansson comparison's alphabet only a-f and
 * A-F, so a lax digit test ("\u00g0" taken) went unseen, and the event it let in reached
 * subscribers as JSON their parsers refuse. */
static void test_hex_digits(void)
{
	int wrong = 0;

	for (int at = 0; at < 4; at++) {
		for (int c = 0; c < 256; c++) {
			char text[8] = {'"', '\\', 'u', '0', '0', '0', '0', '"'};
			struct json_check_error e;
			int want = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			           (c >= 'A' && c <= 'F'); /* \ud000 and the like: no surrogates */
			text[3 + at] = (char)c;
			int got = json_check(text, sizeof(text), 64, &e) == 0;
			if (got != want && wrong++ < 5)
				fprintf(stderr, "  byte 0x%02x as \\u digit %d: %s\n", c, at + 1,
				        got ? "accepted" : "refused");
		}
	}
	CHECK(wrong == 0);
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void test_against_jansson(void)
{
	static const char *const seeds[] = {
	    "{\"type\":\"order.updated\",\"data\":{\"n\":[1,2.5e3,-0.1],\"s\":\"\\u00e9x\\n\",\"t\":true}}",
	    "[{\"a\":null},{\"b\":\"\xc3\xa9\"},[],{}]",
	    "\"\\ud83d\\ude00 \xf0\x9f\x98\x80\"",
	};
	static const char alphabet[] = "{}[]\",:\\ u0123456789abcdefABCDEF.eE+-tnrl\xc3\xa9\xed\xf0\x80\x01";
	char buf[256];
	int disagreements = 0, checked = 0;

	for (int iter = 0; iter < 300000; iter++) {
		const char *seed = seeds[next() % 3];
		size_t len = strlen(seed);
		memcpy(buf, seed, len);
		int edits = 1 + (int)(next() % 3);
		for (int k = 0; k < edits; k++) {
			size_t at = next() % len;
			switch (next() % 3) {
			case 0: /* replace */
				buf[at] = alphabet[next() % (sizeof(alphabet) - 1)];
				break;
			case 1: /* delete */
				memmove(buf + at, buf + at + 1, len - at - 1);
				len--;
				break;
			default: /* insert */
				if (len + 1 < sizeof(buf)) {
					memmove(buf + at + 1, buf + at, len - at);
					buf[at] = alphabet[next() % (sizeof(alphabet) - 1)];
					len++;
				}
			}
			if (len == 0)
				break;
		}
		json_error_t jerr;
		json_t *v = json_loadb(buf, len, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL,
		                       &jerr);
		struct json_check_error e;
		int ours = json_check(buf, len, 64, &e) == 0;
		checked++;
		if (ours != (v != NULL)) {
			if (disagreements++ < 5)
				fprintf(stderr, "disagree (ours %d, jansson %d): %.*s\n", ours, v != NULL,
				        (int)len, buf);
		}
		json_decref(v);
	}
	CHECK(disagreements == 0);
	CHECK(checked > 250000);
}

/* The UTF-8 step json_check uses, on its own (the HTTP layer repairs error texts with
 * it): lengths of well-formed sequences, 0 for everything else. */
static void test_utf8_seq(void)
{
	static const struct {
		const char *bytes;
		size_t len, want;
	} cases[] = {
	    {"a", 1, 1},
	    {"\xc3\xa9", 2, 2},         /* é */
	    {"\xe2\x82\xac", 3, 3},     /* € */
	    {"\xf0\x9f\x98\x80", 4, 4}, /* 😀 */
	    {"\xc3", 1, 0},             /* cut short */
	    {"\xe2\x82", 2, 0},         /* cut short */
	    {"\xff", 1, 0},             /* never in UTF-8 */
	    {"\x80", 1, 0},             /* a continuation byte alone */
	    {"\xc0\xaf", 2, 0},         /* overlong '/' */
	    {"\xed\xa0\x80", 3, 0},     /* a surrogate */
	    {"\xf4\x90\x80\x80", 4, 0}, /* past U+10FFFF */
	    {"", 0, 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK(json_utf8_seq((const unsigned char *)cases[i].bytes, cases[i].len) ==
		      cases[i].want);
}

/* The repair built on it: each byte that starts no well-formed sequence becomes '?', in
 * place; good sequences, NULs included, are kept; the result is valid UTF-8. */
static void test_utf8_repair(void)
{
	static const struct {
		const char *in, *want;
		size_t len;
	} cases[] = {
	    {"caf\xe9", "caf?", 4},                 /* Latin-1 */
	    {"a\0b", "a\0b", 3},                    /* NUL is UTF-8 */
	    {"\xc3\xa9\xc3", "\xc3\xa9?", 3},        /* cut inside the last character */
	    {"\xe2\x82\xac\xe2\x82", "\xe2\x82\xac?" "?", 5},
	    {"\xc0\xaf/", "?" "?/", 3},             /* overlong: both bytes ("??/" is a trigraph) */
	    {"\xf0\x9f\x98\x80\xff", "\xf0\x9f\x98\x80?", 5},
	    {"", "", 0},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[16];
		memcpy(buf, cases[i].in, cases[i].len);
		json_utf8_repair(buf, cases[i].len);
		CHECK(memcmp(buf, cases[i].want, cases[i].len) == 0);
		json_t *v = json_stringn(buf, cases[i].len); /* NULL unless valid UTF-8 */
		CHECK(v != NULL);
		json_decref(v);
	}
}

int main(void)
{
	test_table();
	test_escapes();
	test_control_bytes();
	test_hex_digits();
	test_utf8_seq();
	test_utf8_repair();
	test_against_jansson();
	return CHECK_DONE();
}
