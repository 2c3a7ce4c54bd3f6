/*
 * backoff.h - the retry schedule: parsing "5s,5m,30m" and picking the next attempt time
 * with +-20% jitter. Pure functions, thread-safe.
 */
#ifndef HOOKRELAY_BACKOFF_H
#define HOOKRELAY_BACKOFF_H

#include <stdint.h>

#define BACKOFF_MAX_STEPS 64

/* Default schedule after the first attempt: 5s, 5m, 30m, 2h, 5h, 10h, 10h. */
#define BACKOFF_DEFAULT "5s,5m,30m,2h,5h,10h,10h"

/* Parses a duration "250ms", "15s", "5m", "2h", "1d" (a bare number is seconds) into ms.
 * Returns 0, or -1 if malformed, negative or over 365 days. */
int backoff_parse_duration(const char *text, int64_t *ms_out);

/* Parses a comma-separated schedule into out[] (at most BACKOFF_MAX_STEPS entries).
 * Returns the count (>= 1), or -1 with *why set to a literal reason. */
int backoff_parse_schedule(const char *text, int64_t *out, int max, const char **why);

/* Delay in ms before the attempt after `attempt` (1-based number of the attempt that
 * just failed), with +-20% jitter drawn from `random`; -1 when the schedule is used up,
 * i.e. attempt > count. */
int64_t backoff_delay_ms(const int64_t *schedule, int count, int attempt, uint64_t random);

/* Parses a Retry-After header value (delta-seconds or HTTP-date) relative to now_ms;
 * returns the unix ms it names, or -1 if absent or malformed. */
int64_t backoff_retry_after_ms(const char *value, int64_t now_ms);

#endif
