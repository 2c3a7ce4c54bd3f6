/*
 * matcher.h - event types, subscription patterns (RabbitMQ topic semantics) and the
 * in-memory index from an event type to the subscriptions that want it.
 *
 * Types and patterns are dot-separated words; a word is 1..64 of [A-Za-z0-9_-]; at most
 * 16 words and 255 bytes. In a pattern, "*" matches exactly one word, "#" zero or more.
 *
 * Threads: the free functions are pure and thread-safe. A struct matcher is owned by
 * one thread (the writer) and is not locked.
 */
#ifndef HOOKRELAY_MATCHER_H
#define HOOKRELAY_MATCHER_H

#include <stddef.h>
#include <stdint.h>

#define MATCHER_TYPE_MAX 255 /* bytes in an event type or pattern */

/* Returns 0 if `type` is a valid event type, else -1 with *why a literal reason. */
int event_type_check(const char *type, const char **why);

/* Returns 0 if `pattern` is a valid pattern, else -1 with *why a literal reason. */
int pattern_check(const char *pattern, const char **why);

/* Returns 1 if the valid pattern matches the valid event type, else 0. */
int pattern_match(const char *pattern, const char *type);

struct matcher;

struct matcher *matcher_new(void);          /* NULL on out of memory */
void matcher_free(struct matcher *m);       /* accepts NULL */

/* Sets (replaces) the patterns of subscription `id`; n == 0 removes it. Patterns are
 * copied. Returns 0, or -1 on out of memory (the old entry is then left as it was). */
int matcher_set(struct matcher *m, int64_t id, const char *const *patterns, size_t n);

/* Removes subscription `id` if present. */
void matcher_remove(struct matcher *m, int64_t id);

/* Collects the ids of subscriptions with at least one pattern matching `type`, each
 * once, in ascending id order, into *ids_out (grown with realloc; caller keeps and
 * reuses it, frees it with free()); *cap tracks its capacity. Returns the count or -1
 * on out of memory. The first call after a change rebuilds the matcher's index (not
 * const: it also marks what a walk has visited). */
int matcher_match(struct matcher *m, const char *type, int64_t **ids_out, size_t *cap);

/* How many times the index was built so far: a set that changed no pattern (the same
 * ones again) does not make the next match build it. For tests. */
uint64_t matcher_builds(const struct matcher *m);

#endif
