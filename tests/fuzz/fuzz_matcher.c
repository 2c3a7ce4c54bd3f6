/*
 * fuzz_matcher.c - libFuzzer target for event types, patterns and the subscription
 * index (server/matcher.h).
 *
 * Input layout: lines split at '\n' (at most PIECES_MAX). Line 0 is an event type,
 * every line (line 0 included) is also tried as a pattern.
 *
 * Invariants (a violation is __builtin_trap()):
 * - a failed check sets *why; pattern_match is 0 unless both sides are valid;
 * - "#" matches every valid type; a valid type is a valid pattern and matches itself;
 * - pattern_match agrees with a slow reference matcher written here (RabbitMQ topic
 *   semantics: "*" one word, "#" zero or more, tried by brute force with memo);
 * - matcher_set / matcher_match / matcher_remove / matcher_free round trip: the ids
 *   matcher_match returns are ascending, unique, and exactly the subscriptions with a
 *   pattern that pattern_match accepts; LeakSanitizer checks matcher_free.
 *
 * Single-threaded, like every libFuzzer target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "matcher.h"

#define PIECES_MAX 16 /* lines used from one input */
#define SUBS 5        /* subscription ids the lines are spread over */
#define REF_WORDS 16  /* words in a valid type or pattern */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

struct words {
	int n;
	const char *w[REF_WORDS];
	size_t len[REF_WORDS];
};

/* Splits an already-validated text at dots. */
static void ref_split(const char *text, struct words *out)
{
	const char *p = text;

	out->n = 0;
	for (;;) {
		const char *dot = strchr(p, '.');
		size_t len = dot ? (size_t)(dot - p) : strlen(p);

		REQUIRE(out->n < REF_WORDS);
		out->w[out->n] = p;
		out->len[out->n] = len;
		out->n++;
		if (!dot)
			break;
		p = dot + 1;
	}
}

static int ref_is(const struct words *w, int i, char c)
{
	return w->len[i] == 1 && w->w[i][0] == c;
}

/* memo: 0 unknown, 1 no, 2 yes. "#" tries every count of words it could take. */
static int ref_match_at(const struct words *p, int i, const struct words *t, int j,
                        unsigned char memo[REF_WORDS + 1][REF_WORDS + 1])
{
	int result = 0;

	if (memo[i][j]) {
		result = memo[i][j] == 2;
	} else if (i == p->n) {
		result = j == t->n;
	} else if (ref_is(p, i, '#')) {
		for (int k = j; k <= t->n && !result; k++)
			result = ref_match_at(p, i + 1, t, k, memo);
	} else if (j < t->n) {
		if (ref_is(p, i, '*') ||
		    (p->len[i] == t->len[j] && memcmp(p->w[i], t->w[j], p->len[i]) == 0))
			result = ref_match_at(p, i + 1, t, j + 1, memo);
	}
	memo[i][j] = result ? 2 : 1;
	return result;
}

static int ref_match(const char *pattern, const char *type)
{
	unsigned char memo[REF_WORDS + 1][REF_WORDS + 1];
	struct words p;
	struct words t;

	memset(memo, 0, sizeof(memo));
	ref_split(pattern, &p);
	ref_split(type, &t);
	return ref_match_at(&p, 0, &t, 0, memo);
}

/* The pure functions on one (pattern, type) pair. */
static void check_pair(const char *pattern, const char *type)
{
	const char *why = NULL;
	int type_ok;
	int pattern_ok;
	int m;

	type_ok = event_type_check(type, &why) == 0;
	REQUIRE(type_ok || why != NULL);
	why = NULL;
	pattern_ok = pattern_check(pattern, &why) == 0;
	REQUIRE(pattern_ok || why != NULL);

	m = pattern_match(pattern, type);
	REQUIRE(m == 0 || m == 1);
	if (!type_ok || !pattern_ok) {
		REQUIRE(m == 0);
	} else {
		REQUIRE(m == ref_match(pattern, type));
		REQUIRE(pattern_match("#", type) == 1);
		REQUIRE(pattern_check(type, NULL) == 0);
		REQUIRE(pattern_match(type, type) == 1);
	}
}

/* Fills the matcher, then compares matcher_match with pattern_match. */
static void check_matcher(const char *const *pieces, size_t n)
{
	const char *subs[SUBS][PIECES_MAX];
	size_t nsubs[SUBS] = {0};
	int expect[SUBS] = {0};
	struct matcher *m = NULL;
	int64_t *ids = NULL;
	size_t cap = 0;
	int got;
	int want;

	m = matcher_new();
	REQUIRE(m != NULL);
	/* Line i goes to subscription (i * 3) % SUBS, set in a scrambled id order. */
	for (size_t i = 0; i < n; i++) {
		size_t s = (i * 3) % SUBS;
		subs[s][nsubs[s]++] = pieces[i];
	}
	for (int s = SUBS - 1; s >= 0; s--)
		REQUIRE(matcher_set(m, (int64_t)s * 1000 - 2000, subs[s], nsubs[s]) == 0);
	/* Replace subscription 1 by its first pattern only, and drop subscription 2. */
	if (nsubs[1] > 1) {
		nsubs[1] = 1;
		REQUIRE(matcher_set(m, -1000, subs[1], 1) == 0);
	}
	matcher_remove(m, 0);
	nsubs[2] = 0;

	want = 0;
	for (int s = 0; s < SUBS; s++) {
		for (size_t k = 0; k < nsubs[s] && !expect[s]; k++)
			expect[s] = pattern_match(subs[s][k], pieces[0]);
		want += expect[s];
	}
	got = matcher_match(m, pieces[0], &ids, &cap);
	REQUIRE(got == want);
	for (int k = 0, s = 0; s < SUBS; s++) {
		if (expect[s])
			REQUIRE(ids[k++] == (int64_t)s * 1000 - 2000);
	}

	/* n == 0 removes; then nothing matches. */
	for (int s = 0; s < SUBS; s++)
		REQUIRE(matcher_set(m, (int64_t)s * 1000 - 2000, NULL, 0) == 0);
	REQUIRE(matcher_match(m, pieces[0], &ids, &cap) == 0);
	free(ids);
	matcher_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *pieces[PIECES_MAX];
	char *text = NULL;
	size_t n = 0;
	char *p;

	/* A copy sized to the input, so ASan sees any read past a string's end. */
	text = malloc(size + 1);
	if (!text)
		goto out;
	memcpy(text, data, size);
	text[size] = '\0';
	p = text;
	while (n < PIECES_MAX) {
		char *nl = strchr(p, '\n');

		pieces[n++] = p;
		if (!nl)
			break;
		*nl = '\0';
		p = nl + 1;
	}
	for (size_t i = 0; i < n; i++)
		check_pair(pieces[i], pieces[0]);
	check_pair("#", pieces[0]);
	check_pair("*", pieces[0]);
	check_matcher(pieces, n);
out:
	free(text);
	return 0;
}
