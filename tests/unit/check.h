/*
 * check.h - the unit-test harness: CHECK() records a failure with file:line and goes on;
 * CHECK_DONE() prints "N passed, N failed" and returns the exit status from main.
 */
#ifndef HOOKRELAY_CHECK_H
#define HOOKRELAY_CHECK_H

#include <stdio.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (cond) {                                                              \
			check_passed++;                                                  \
		} else {                                                                 \
			check_failed++;                                                  \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
		}                                                                        \
	} while (0)

#define CHECK_DONE()                                                                     \
	(printf("%s: %d passed, %d failed\n", __FILE__, check_passed, check_failed),     \
	 fflush(stdout), check_failed ? 1 : 0)

#endif
