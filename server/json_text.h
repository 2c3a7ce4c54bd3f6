/*
 * json_text.h - JSON text written straight to a stream, with no tree: for the read
 * routes, where a page of a thousand rows built as jansson objects cost more in malloc
 * than the query. The text is what json_dumps(JSON_COMPACT) gives for the same values:
 * UTF-8 kept as is, '"' '\\' and control characters escaped, '/' not.
 *
 * Pure and thread-safe; the stream is the caller's (written with the _unlocked calls,
 * so it must not be shared between threads while written).
 */
#ifndef HOOKRELAY_JSON_TEXT_H
#define HOOKRELAY_JSON_TEXT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Writes s[0..len) as a JSON string, quotes included. A byte that does not begin a
 * well-formed UTF-8 sequence is written as '?' (as json_utf8_repair would). */
void json_text_string(FILE *f, const char *s, size_t len);

/* A NUL-terminated string as json_text_string, or null for NULL. */
void json_text_string_or_null(FILE *f, const char *s);

/* Writes "name": with the name as given (a literal of ours: no escaping), after a comma
 * unless first. */
void json_text_key(FILE *f, const char *name, int first);

/* Writes n in decimal. */
void json_text_int(FILE *f, int64_t n);

#endif
