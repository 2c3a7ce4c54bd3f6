/*
 * json_text.c - see json_text.h. Runs of bytes that need no escape are written with one
 * fwrite; tests/unit/test_json_text.c holds the output to jansson's for the same strings.
 */
#include "json_text.h"

#include "json_check.h"

#include <string.h>

void json_text_string(FILE *f, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF"; /* as jansson spells \u001F */
	static const char letter[0x20] = {
	    ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't'};
	const unsigned char *p = (const unsigned char *)s, *end = p + len, *run = p;

	fputc_unlocked('"', f);
	while (p < end) {
		unsigned char c = *p;
		char esc[6] = {'\\', 0, '0', '0', 0, 0};
		size_t esc_len = 2;

		if (c >= 0x80) {
			size_t n = json_utf8_seq(p, (size_t)(end - p));
			if (n > 0) {
				p += n;
				continue;
			}
			esc[0] = '?', esc_len = 1; /* not UTF-8: the byte becomes '?' */
		} else if (c == '"' || c == '\\') {
			esc[1] = (char)c;
		} else if (c < 0x20 && letter[c]) {
			esc[1] = letter[c];
		} else if (c < 0x20) {
			esc[1] = 'u', esc[4] = hex[c >> 4], esc[5] = hex[c & 15], esc_len = 6;
		} else {
			p++;
			continue;
		}
		fwrite_unlocked(run, 1, (size_t)(p - run), f);
		fwrite_unlocked(esc, 1, esc_len, f);
		run = ++p;
	}
	fwrite_unlocked(run, 1, (size_t)(p - run), f);
	fputc_unlocked('"', f);
}

void json_text_string_or_null(FILE *f, const char *s)
{
	if (s)
		json_text_string(f, s, strlen(s));
	else
		fputs_unlocked("null", f);
}

void json_text_key(FILE *f, const char *name, int first)
{
	if (!first)
		fputc_unlocked(',', f);
	fputc_unlocked('"', f);
	fputs_unlocked(name, f);
	fputs_unlocked("\":", f);
}

void json_text_int(FILE *f, int64_t n)
{
	char buf[24], *p = buf + sizeof(buf);
	uint64_t u = n < 0 ? 0 - (uint64_t)n : (uint64_t)n; /* INT64_MIN too */

	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (n < 0)
		*--p = '-';
	fwrite_unlocked(p, 1, (size_t)(buf + sizeof(buf) - p), f);
}
