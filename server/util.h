/*
 * util.h - small helpers shared by server/: RFC 3339 times, external ids
 * ("sub_12", "dlv_7", "evt_<26 chars>"), growing id arrays. Thread-safe.
 */
#ifndef HOOKRELAY_UTIL_H
#define HOOKRELAY_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define UTIL_TIME_MAX 32 /* bytes for an RFC 3339 time with ms, NUL included */
#define UTIL_ID_MAX 32   /* bytes for any external id, NUL included */

/* Writes unix ms as "2026-11-24T17:00:00.123Z". */
void util_format_time(int64_t ms, char out[UTIL_TIME_MAX]);

/* Parses an RFC 3339 time ("2026-11-24T17:00:00Z", fractional seconds and numeric
 * offsets allowed) into unix ms. Returns 0 or -1. */
int util_parse_time(const char *text, int64_t *ms_out);

/* Writes "<prefix><n>", e.g. ("sub_", 12) -> "sub_12". */
void util_format_id(const char *prefix, int64_t n, char out[UTIL_ID_MAX]);

/* Parses "<prefix><positive decimal>" into *n. Returns 0, or -1 if it is not one. */
int util_parse_id(const char *prefix, const char *text, int64_t *n);

/* Writes a fresh event id: "evt_" + 26 Crockford base32 chars of a ULID (48-bit ms
 * time, 80 random bits), so ids sort by creation time. Returns 0 or -1 (no entropy). */
int util_new_event_id(int64_t now_ms, char out[UTIL_ID_MAX]);

/* 1 if text is an event id as util_new_event_id writes them: "evt_" + 26 of its
 * characters, the first at most '7' (128 bits), else 0. */
int util_is_event_id(const char *text);

/* Writes the lowest event id of millisecond `ms` (clamped to 0..2^48-1): every event
 * created at `ms` or later has an id that sorts at or above it (strcmp), every earlier
 * one below it. */
void util_event_id_floor(int64_t ms, char out[UTIL_ID_MAX]);

/* Parses a decimal in [min, max] from the whole of text. Returns 0 or -1. */
int util_parse_int(const char *text, int64_t min, int64_t max, int64_t *out);

/* Appends id to the growing array *ids (*n used of *cap allocated; NULL and 0 to start),
 * doubling it when full. Returns 0, or -1 out of memory (the array is left as it was). */
int util_ids_push(int64_t **ids, size_t *n, size_t *cap, int64_t id);

#endif
