/* clock.h - wall-clock and monotonic time (ms; µs for short waits). Thread-safe. */
#ifndef HOOKRELAY_CLOCK_H
#define HOOKRELAY_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Unix time in ms (CLOCK_REALTIME): what is stored and shown to users. */
static inline int64_t clock_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic ms: for measuring durations and deadlines only. */
static inline int64_t clock_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic µs: for timing what takes under a millisecond (an fdatasync). */
static inline int64_t clock_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
