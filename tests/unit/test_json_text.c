/*
 * test_json_text.c - json_text's strings and integers are what jansson writes for the
 * same values (json_dumps, JSON_COMPACT), so that a page of deliveries written as text
 * reads the same as one built as a tree: quotes, backslashes and control characters
 * escaped, '/' and UTF-8 kept, bytes that are not UTF-8 shown as '?'. Random strings
 * weighted towards the bytes that need care, plus the edge integers.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json_check.h"
#include "json_text.h"

/* Runs write(f) on a memstream and returns the text (caller frees). */
static char *written(void (*write)(FILE *, const void *), const void *arg)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	write(f, arg);
	fclose(f);
	return text;
}

struct bytes {
	const char *p;
	size_t len;
};

static void write_bytes(FILE *f, const void *arg)
{
	const struct bytes *b = arg;
	json_text_string(f, b->p, b->len);
}

static void write_int(FILE *f, const void *arg)
{
	json_text_int(f, *(const int64_t *)arg);
}

/* What jansson writes for the string, after the repair the read routes used before. */
static char *jansson_text(const char *p, size_t len)
{
	char *copy = malloc(len + 1);
	memcpy(copy, p, len);
	json_utf8_repair(copy, len);
	json_t *s = json_stringn(copy, len);
	char *text = s ? json_dumps(s, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	json_decref(s);
	free(copy);
	return text;
}

static int same_as_jansson(const char *p, size_t len)
{
	struct bytes b = {p, len};
	char *ours = written(write_bytes, &b), *theirs = jansson_text(p, len);
	int same = ours && theirs && strcmp(ours, theirs) == 0;
	if (!same)
		fprintf(stderr, "  ours:    %s\n  jansson: %s\n", ours ? ours : "(null)",
		        theirs ? theirs : "(null)");
	free(ours);
	free(theirs);
	return same;
}

static void test_fixed_strings(void)
{
	static const char *const cases[] = {
	    "",
	    "plain",
	    "quote \" backslash \\ slash /",
	    "\b\f\n\r\t\x01\x1f\x7f",
	    "caf\xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80", /* é, U+2028, an emoji */
	    "\xff\xfe lone bytes \x80 \xc3",             /* not UTF-8 */
	    "\xed\xa0\x80 surrogate, \xc0\xaf overlong", /* forms UTF-8 forbids */
	    "\xf0\x9f\x98",                              /* a sequence cut short */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK(same_as_jansson(cases[i], strlen(cases[i])));

	/* NUL inside: kept as \u0000, as jansson keeps it with json_stringn. */
	CHECK(same_as_jansson("a\0b", 3));
}

static void test_random_strings(void)
{
	static const unsigned char pool[] = {'a',  'z',  ' ',  '"',  '\\', '/',  0,    '\n', 0x1f,
	                                     0x7f, 0x80, 0xbf, 0xc2, 0xc3, 0xa9, 0xe2, 0x82, 0xac,
	                                     0xed, 0xa0, 0xf0, 0x9f, 0x98, 0xf4, 0x90, 0xff};
	unsigned seed = 12345;
	int failed = 0;

	for (int n = 0; n < 20000 && failed < 5; n++) {
		char buf[24];
		size_t len = (size_t)(rand_r(&seed) % (int)sizeof(buf));
		for (size_t i = 0; i < len; i++)
			buf[i] = (char)pool[rand_r(&seed) % (int)sizeof(pool)];
		if (!same_as_jansson(buf, len))
			failed++;
	}
	CHECK(failed == 0);
}

static void test_or_null(void)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	json_text_string_or_null(f, NULL);
	fputc(' ', f);
	json_text_string_or_null(f, "x");
	fputc(' ', f);
	json_text_key(f, "a", 1);
	json_text_key(f, "b", 0);
	fclose(f);
	CHECK(strcmp(text, "null \"x\" \"a\":,\"b\":") == 0);
	free(text);
}

static void test_ints(void)
{
	static const int64_t cases[] = {
	    0, 1, -1, 9, 10, -10, 200, 1795478400123, INT64_MAX, INT64_MIN, INT64_MIN + 1};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char expect[32];
		snprintf(expect, sizeof(expect), "%" PRId64, cases[i]);
		char *text = written(write_int, &cases[i]);
		CHECK(text && strcmp(text, expect) == 0);
		free(text);
	}
}

int main(void)
{
	test_fixed_strings();
	test_random_strings();
	test_or_null();
	test_ints();
	return CHECK_DONE();
}
