/*
 * json_check.h - strict JSON validation without building a tree (RFC 8259: grammar,
 * UTF-8 with no overlong forms or surrogates, \u escapes with paired surrogates, a
 * nesting limit). For the ingest hot path, where the bytes are kept, not parsed:
 * allocation-free, pure, thread-safe. \u0000 is allowed inside strings. Numbers too large
 * for a double (1e400) are refused, as jansson refuses them: receivers could not read them.
 */
#ifndef HOOKRELAY_JSON_CHECK_H
#define HOOKRELAY_JSON_CHECK_H

#include <stddef.h>

struct json_check_error {
	size_t offset;      /* byte where the problem is */
	int line, column;   /* 1-based, column in bytes */
	const char *reason; /* literal */
	int too_deep;       /* 1 if the only problem is nesting past max_depth */
};

/* Returns 0 if p[0..len) is exactly one JSON value (white space around it allowed) with
 * arrays/objects nested at most max_depth deep; else -1 with *err filled. */
int json_check(const char *p, size_t len, int max_depth, struct json_check_error *err);

/* The length (1-4) of the one well-formed UTF-8 sequence starting at p, with left bytes
 * available (Unicode 15, table 3-7: no overlong forms, no surrogates), or 0 if there is
 * none. */
size_t json_utf8_seq(const unsigned char *p, size_t left);

/* Replaces, in place, every byte of s[0..len) that does not begin a well-formed UTF-8
 * sequence with '?', so that the text can be a JSON string: a message quoting what a
 * client sent, a receiver's response body in the delivery log. */
void json_utf8_repair(char *s, size_t len);

#endif
