/*
 * test_matcher.c - event type / pattern validation, RabbitMQ topic matching (tables plus
 * an exhaustive cross-check against a naive recursive matcher), and struct matcher.
 */
#include "check.h"
#include "matcher.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Builds "w.w.w..." with `words` copies of `w` into buf. */
static const char *repeat(char *buf, size_t size, const char *w, int words)
{
	int i;

	buf[0] = '\0';
	for (i = 0; i < words; i++) {
		if (i)
			strncat(buf, ".", size - strlen(buf) - 1);
		strncat(buf, w, size - strlen(buf) - 1);
	}
	return buf;
}

/* A run of `n` copies of character c. */
static const char *run(char *buf, char c, size_t n)
{
	memset(buf, c, n);
	buf[n] = '\0';
	return buf;
}

struct check_case {
	const char *text;
	int ok;
	const char *why; /* expected reason, or NULL to only require one */
};

static void run_checks(const struct check_case *cases, size_t n, int is_pattern)
{
	size_t i;

	for (i = 0; i < n; i++) {
		const char *why = NULL;
		int rc = is_pattern ? pattern_check(cases[i].text, &why)
		                    : event_type_check(cases[i].text, &why);

		CHECK(rc == (cases[i].ok ? 0 : -1));
		if (!cases[i].ok)
			CHECK(why != NULL);
		if (cases[i].why != NULL)
			CHECK(why != NULL && strcmp(why, cases[i].why) == 0);
		if (rc != (cases[i].ok ? 0 : -1) ||
		    (cases[i].why != NULL && (why == NULL || strcmp(why, cases[i].why) != 0)))
			fprintf(stderr, "  %s case %zu: '%.40s' rc=%d why=%s\n",
			        is_pattern ? "pattern" : "type", i,
			        cases[i].text ? cases[i].text : "(null)", rc, why ? why : "(null)");
	}
}

static void test_checks(void)
{
	char w64[65], w65[66], b255[256], b256[257], w16[64], w17[64], p16[64], p17[64];
	char a63[64];

	run(w64, 'x', 64);
	run(w65, 'x', 65);
	/* 255 bytes: four words of 63 plus three dots; 256: one more byte. */
	repeat(b255, sizeof(b255), run(a63, 'a', 63), 4);
	repeat(b256, sizeof(b256), a63, 4);
	strncat(b256, "b", sizeof(b256) - strlen(b256) - 1);
	repeat(w16, sizeof(w16), "a", 16);
	repeat(w17, sizeof(w17), "a", 17);
	repeat(p16, sizeof(p16), "*", 16);
	repeat(p17, sizeof(p17), "#", 17);
	CHECK(strlen(b255) == 255 && strlen(b256) == 256);

	{
		const struct check_case types[] = {
		    {"a", 1, NULL},
		    {"order.updated", 1, NULL},
		    {"A-b_c.9.Z-", 1, NULL},
		    {"-", 1, NULL},
		    {"_._", 1, NULL},
		    {w64, 1, NULL},
		    {w16, 1, NULL},
		    {b255, 1, NULL},
		    {NULL, 0, "event type is empty"},
		    {"", 0, "event type is empty"},
		    {".", 0, "event type has an empty word (leading, trailing or double dot)"},
		    {"a.", 0, "event type has an empty word (leading, trailing or double dot)"},
		    {".a", 0, "event type has an empty word (leading, trailing or double dot)"},
		    {"a..b", 0, "event type has an empty word (leading, trailing or double dot)"},
		    {w65, 0, "event type has a word longer than 64 characters"},
		    {w17, 0, "event type has more than 16 words"},
		    {b256, 0, "event type is longer than 255 bytes"},
		    {"*", 0, "event type may not contain * or #"},
		    {"#", 0, "event type may not contain * or #"},
		    {"a.*", 0, "event type may not contain * or #"},
		    {"a#", 0, "event type may not contain * or #"},
		    {"#.#", 0, "event type may not contain * or #"},
		    {"a b", 0, "event type may only use A-Z a-z 0-9 _ - and dots"},
		    {"a/b", 0, "event type may only use A-Z a-z 0-9 _ - and dots"},
		    {"caf\xc3\xa9", 0, "event type may only use A-Z a-z 0-9 _ - and dots"},
		    {"\xff", 0, "event type may only use A-Z a-z 0-9 _ - and dots"},
		    {"a\x01", 0, NULL},
		    {"a.b\t", 0, NULL},
		    {" a", 0, NULL},
		    {"a$", 0, NULL},
		};
		run_checks(types, sizeof(types) / sizeof(types[0]), 0);
	}
	{
		const struct check_case patterns[] = {
		    {"*", 1, NULL},
		    {"#", 1, NULL},
		    {"#.#", 1, NULL},
		    {"*.#.*", 1, NULL},
		    {"a.*.c", 1, NULL},
		    {"a.#", 1, NULL},
		    {"#.b", 1, NULL},
		    {"order.updated", 1, NULL},
		    {w64, 1, NULL},
		    {p16, 1, NULL},
		    {b255, 1, NULL},
		    {NULL, 0, "pattern is empty"},
		    {"", 0, "pattern is empty"},
		    {".", 0, "pattern has an empty word (leading, trailing or double dot)"},
		    {"*.", 0, "pattern has an empty word (leading, trailing or double dot)"},
		    {".#", 0, "pattern has an empty word (leading, trailing or double dot)"},
		    {"a..*", 0, "pattern has an empty word (leading, trailing or double dot)"},
		    {"a*", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {"*a", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {"**", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {"##", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {"*#", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {"a.b*", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {"order.#x", 0, "pattern wildcards * and # must be whole words, like a.*.c"},
		    {w65, 0, "pattern has a word longer than 64 characters"},
		    {p17, 0, "pattern has more than 16 words"},
		    {b256, 0, "pattern is longer than 255 bytes"},
		    {"a b", 0, "pattern may only use A-Z a-z 0-9 _ - * # and dots"},
		    {"a.?", 0, "pattern may only use A-Z a-z 0-9 _ - * # and dots"},
		    {"caf\xc3\xa9.*", 0, "pattern may only use A-Z a-z 0-9 _ - * # and dots"},
		    {"a.>", 0, NULL},
		};
		run_checks(patterns, sizeof(patterns) / sizeof(patterns[0]), 1);
	}
	/* why may be NULL */
	CHECK(event_type_check("", NULL) == -1);
	CHECK(pattern_check("", NULL) == -1);
}

static void test_match_table(void)
{
	static const struct {
		const char *pattern;
		const char *type;
		int match;
	} cases[] = {
	    {"#", "a", 1},
	    {"#", "a.b.c", 1},
	    {"#.#", "a", 1},
	    {"#.#", "a.b", 1},
	    {"#.#.#", "a.b.c.d", 1},
	    {"*", "a", 1},
	    {"*", "a.b", 0},
	    {"*.*", "a", 0},
	    {"*.*", "a.b", 1},
	    {"a.#", "a", 1},
	    {"a.#", "a.b", 1},
	    {"a.#", "a.b.c", 1},
	    {"a.#", "b", 0},
	    {"a.#", "ab", 0},
	    {"a.#", "b.a", 0},
	    {"#.b", "b", 1},
	    {"#.b", "x.y.b", 1},
	    {"#.b", "b.x", 0},
	    {"#.b", "bb", 0},
	    {"a.*.c", "a.b.c", 1},
	    {"a.*.c", "a.c", 0},
	    {"a.*.c", "a.b.b.c", 0},
	    {"a.*.c", "a.b.d", 0},
	    {"*.#.*", "a", 0},
	    {"*.#.*", "a.b", 1},
	    {"*.#.*", "a.b.c.d", 1},
	    {"a.#.c", "a.c", 1},
	    {"a.#.c", "a.b.c", 1},
	    {"a.#.c", "a.b.x.c", 1},
	    {"a.#.c", "a.b.x", 0},
	    {"a.#.c", "a.c.c.c", 1},
	    {"#.a.#", "a", 1},
	    {"#.a.#", "x.a.y", 1},
	    {"#.a.#", "x.y", 0},
	    {"#.*", "a", 1},
	    {"#.*", "a.b.c", 1},
	    {"*.#", "a", 1},
	    {"#.*.#", "a", 1},
	    {"#.*.*.#", "a", 0},
	    {"order.*", "order.updated", 1},
	    {"order.*", "order", 0},
	    {"order.*", "order.updated.v2", 0},
	    {"order.*", "orders.updated", 0},
	    {"invoice.#", "invoice", 1},
	    {"invoice.#", "invoice.paid.late", 1},
	    {"a.b", "a.b", 1},
	    {"a.b", "a.B", 0}, /* case-sensitive */
	    {"a.b", "a.b.c", 0},
	    {"a.b", "a", 0},
	    {"a.b", "a.bc", 0},
	    {"a-b", "a_b", 0},
	    /* a literal word that looks like a prefix of another */
	    {"order.update", "order.updated", 0},
	    /* invalid input never matches */
	    {"a*", "a", 0},
	    {"a*", "ab", 0},
	    {"#", "", 0},
	    {"", "a", 0},
	    {"", "", 0},
	    {"#", "a..b", 0},
	    {"#", ".a", 0},
	    {"#", "a.", 0},
	    {"#", "a.*", 0},
	    {"*", "*", 0},
	    {"#", "#", 0},
	    {"a.#", "a.#", 0},
	    {"#", "caf\xc3\xa9", 0},
	    {"#.", "a", 0},
	    {NULL, "a", 0},
	    {"#", NULL, 0},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int got = pattern_match(cases[i].pattern, cases[i].type);

		CHECK(got == cases[i].match);
		if (got != cases[i].match)
			fprintf(stderr, "  case %zu: '%s' vs '%s' got %d\n", i,
			        cases[i].pattern ? cases[i].pattern : "(null)",
			        cases[i].type ? cases[i].type : "(null)", got);
	}
}

static void test_match_limits(void)
{
	char t16[64], t17[64], h16[64], s16[64], p[128], b255[256], a63[64];

	repeat(t16, sizeof(t16), "a", 16);
	repeat(t17, sizeof(t17), "a", 17);
	repeat(h16, sizeof(h16), "#", 16);
	repeat(s16, sizeof(s16), "*", 16);
	CHECK(pattern_match(h16, t16) == 1);
	CHECK(pattern_match(s16, t16) == 1);
	CHECK(pattern_match("#", t16) == 1);
	CHECK(pattern_match("#", t17) == 0); /* 17 words is not a type */
	CHECK(pattern_match(h16, "a") == 1);
	CHECK(pattern_match(s16, "a") == 0);
	/* Fifteen #s and a word that never appears: the DP answers without blowing up. */
	snprintf(p, sizeof(p), "%s.x", repeat(h16, sizeof(h16), "#", 15));
	CHECK(pattern_match(p, t16) == 0);
	snprintf(p, sizeof(p), "%s.a", repeat(h16, sizeof(h16), "#", 15));
	CHECK(pattern_match(p, t16) == 1);
	/* 255 bytes matches itself and "#"; 64-char words compare whole. */
	repeat(b255, sizeof(b255), run(a63, 'a', 63), 4);
	CHECK(pattern_match(b255, b255) == 1);
	CHECK(pattern_match("#", b255) == 1);
	CHECK(pattern_match("*.*.*.*", b255) == 1);
	CHECK(pattern_match("*.*.*", b255) == 0);
}

/* Naive reference: straight from the definition, exponential but fine for tiny inputs.
 * Words are single characters here; the strings have no dots. */
static int ref_match(const char *p, const char *t)
{
	if (*p == '\0')
		return *t == '\0';
	if (*p == '#')
		return ref_match(p + 1, t) || (*t != '\0' && ref_match(p, t + 1));
	if (*t == '\0')
		return 0;
	if (*p == '*' || *p == *t)
		return ref_match(p + 1, t + 1);
	return 0;
}

/* "ab#" -> "a.b.#" */
static void dotted(const char *w, char *out)
{
	size_t i;
	size_t o = 0;

	for (i = 0; w[i] != '\0'; i++) {
		if (i)
			out[o++] = '.';
		out[o++] = w[i];
	}
	out[o] = '\0';
}

/* Every pattern over {a, b, *, #} of 1..6 words against every type over {a, b} of 1..6
 * words. */
static void test_match_exhaustive(void)
{
	static const char pal[] = "ab*#";
	char pw[8], tw[8], ps[16], ts[16];
	int plen, tlen;
	long pi, ti, pn, tn, x;
	int k;
	long mismatches = 0;
	long total = 0;

	for (plen = 1; plen <= 6; plen++) {
		for (pn = 1, k = 0; k < plen; k++)
			pn *= 4;
		for (pi = 0; pi < pn; pi++) {
			for (x = pi, k = 0; k < plen; k++, x /= 4)
				pw[k] = pal[x % 4];
			pw[plen] = '\0';
			dotted(pw, ps);
			for (tlen = 1; tlen <= 6; tlen++) {
				for (tn = 1, k = 0; k < tlen; k++)
					tn *= 2;
				for (ti = 0; ti < tn; ti++) {
					for (x = ti, k = 0; k < tlen; k++, x /= 2)
						tw[k] = pal[x % 2];
					tw[tlen] = '\0';
					dotted(tw, ts);
					total++;
					if (pattern_match(ps, ts) != ref_match(pw, tw)) {
						if (mismatches < 5)
							fprintf(stderr, "  mismatch '%s' vs '%s'\n",
							        ps, ts);
						mismatches++;
					}
				}
			}
		}
	}
	CHECK(mismatches == 0);
	CHECK(total > 500000);
}

static int ids_equal(const int64_t *got, int n, const int64_t *want, int wn)
{
	return n == wn && (n == 0 || memcmp(got, want, (size_t)n * sizeof(*got)) == 0);
}

static void test_matcher(void)
{
	struct matcher *m = matcher_new();
	int64_t *ids = NULL;
	size_t cap = 0;
	int n;
	size_t i;

	CHECK(m != NULL);
	if (m == NULL)
		return;
	CHECK(matcher_match(m, "order.created", &ids, &cap) == 0);

	{
		const char *p5[] = {"order.*"};
		const char *p1[] = {"#"};
		const char *p3[] = {"invoice.#", "order.created", "#.created"};
		const char *p2[] = {"a.b"};
		const int64_t w1[] = {1, 3, 5};
		const int64_t w2[] = {1, 3};
		const int64_t w3[] = {1, 2};
		const int64_t w4[] = {3};

		CHECK(matcher_set(m, 5, p5, 1) == 0);
		CHECK(matcher_set(m, 1, p1, 1) == 0);
		CHECK(matcher_set(m, 3, p3, 3) == 0);
		CHECK(matcher_set(m, 2, p2, 1) == 0);
		n = matcher_match(m, "order.created", &ids, &cap);
		CHECK(ids_equal(ids, n, w1, 3)); /* 3 matches twice, listed once */
		CHECK(cap >= 3);

		/* Replace 5: it no longer wants orders. */
		{
			const char *np[] = {"invoice.paid"};

			CHECK(matcher_set(m, 5, np, 1) == 0);
		}
		n = matcher_match(m, "order.created", &ids, &cap);
		CHECK(ids_equal(ids, n, w2, 2));
		n = matcher_match(m, "a.b", &ids, &cap);
		CHECK(ids_equal(ids, n, w3, 2));

		/* n == 0 removes; removing twice or an unknown id is harmless. */
		CHECK(matcher_set(m, 1, NULL, 0) == 0);
		matcher_remove(m, 1);
		matcher_remove(m, 999);
		n = matcher_match(m, "order.created", &ids, &cap);
		CHECK(ids_equal(ids, n, w4, 1));
		matcher_remove(m, 3);
		n = matcher_match(m, "order.created", &ids, &cap);
		CHECK(n == 0);

		/* Invalid types match nothing, and do not fail. */
		CHECK(matcher_match(m, "", &ids, &cap) == 0);
		CHECK(matcher_match(m, "a.*", &ids, &cap) == 0);
		CHECK(matcher_match(m, NULL, &ids, &cap) == 0);
	}

	/* Patterns are copied: the caller's buffer may change afterwards. */
	{
		char buf[32];
		const char *pp[] = {buf};
		const int64_t w[] = {7};

		snprintf(buf, sizeof(buf), "copy.*");
		CHECK(matcher_set(m, 7, pp, 1) == 0);
		snprintf(buf, sizeof(buf), "zzzz.#");
		n = matcher_match(m, "copy.me", &ids, &cap);
		CHECK(ids_equal(ids, n, w, 1));
		n = matcher_match(m, "zzzz.me", &ids, &cap);
		CHECK(n == 0);
		matcher_remove(m, 7);
	}

	/* An invalid or NULL pattern is stored but matches nothing; its siblings still do. */
	{
		const char *pp[] = {"a*", NULL, "", "ok.#"};
		const int64_t w[] = {8};

		CHECK(matcher_set(m, 8, pp, 4) == 0);
		n = matcher_match(m, "a", &ids, &cap);
		CHECK(n == 0);
		n = matcher_match(m, "ok", &ids, &cap);
		CHECK(ids_equal(ids, n, w, 1));
		matcher_remove(m, 8);
	}

	/* Extreme ids sort correctly. */
	{
		const char *pp[] = {"#"};
		const int64_t w[] = {INT64_MIN, -1, 0, INT64_MAX};

		CHECK(matcher_set(m, INT64_MAX, pp, 1) == 0);
		CHECK(matcher_set(m, 0, pp, 1) == 0);
		CHECK(matcher_set(m, INT64_MIN, pp, 1) == 0);
		CHECK(matcher_set(m, -1, pp, 1) == 0);
		n = matcher_match(m, "x", &ids, &cap);
		CHECK(ids_equal(ids, n, w, 4));
		for (i = 0; i < 4; i++)
			matcher_remove(m, w[i]);
		CHECK(matcher_match(m, "x", &ids, &cap) == 0);
	}

	/* Many subscriptions inserted out of order: ascending, unique, buffer grows and is
	 * reused. Even ids want "ev.*", multiples of 3 want "#", the rest want "other". */
	{
		const char *even[] = {"ev.*", "ev.*"};
		const char *three[] = {"#"};
		const char *rest[] = {"other"};
		int64_t id;
		int ok = 1;
		int expect = 0;
		int k;

		for (k = 0; k < 3000; k++) {
			id = (int64_t)((k * 7919) % 3000); /* a permutation of 0..2999 */
			if (id % 2 == 0)
				CHECK(matcher_set(m, id, even, 2) == 0);
			else if (id % 3 == 0)
				CHECK(matcher_set(m, id, three, 1) == 0);
			else
				CHECK(matcher_set(m, id, rest, 1) == 0);
		}
		for (k = 0; k < 3000; k++)
			expect += k % 2 == 0 || k % 3 == 0;
		n = matcher_match(m, "ev.x", &ids, &cap);
		CHECK(n == expect);
		for (k = 1; k < n; k++)
			ok &= ids[k - 1] < ids[k];
		CHECK(ok);
		CHECK(cap >= (size_t)n);
		n = matcher_match(m, "other", &ids, &cap);
		CHECK(n == 1500); /* odd ids: 500 multiples of 3 ("#") + 1000 others */
		for (k = 0; k < 3000; k += 2)
			matcher_remove(m, k);
		n = matcher_match(m, "ev.x", &ids, &cap);
		CHECK(n == 500); /* odd multiples of 3 */
	}

	CHECK(matcher_match(m, "x", NULL, &cap) == -1);
	CHECK(matcher_match(NULL, "x", &ids, &cap) == 0);
	free(ids);
	matcher_free(m);
	matcher_free(NULL);
}

/* A tiny deterministic generator, so a failure repeats. */
static uint32_t rnd(uint32_t *state)
{
	*state = *state * 1103515245u + 12345u;
	return (*state >> 8) & 0xffffff;
}

/* A random dotted text of 1..max_words words from `vocab` (words separated by '|'). */
static void random_text(char *buf, size_t size, const char *const *vocab, size_t nvocab,
                        int max_words, uint32_t *state)
{
	int n = 1 + (int)(rnd(state) % (uint32_t)max_words);
	buf[0] = '\0';
	for (int i = 0; i < n; i++) {
		if (i)
			strncat(buf, ".", size - strlen(buf) - 1);
		strncat(buf, vocab[rnd(state) % nvocab], size - strlen(buf) - 1);
	}
}

/* The index (a trie, rebuilt after changes) against a brute-force answer: every
 * subscription's patterns checked with pattern_match. Random subscriptions with 1..3
 * patterns over a small vocabulary (so that they overlap, share prefixes and repeat),
 * some invalid, changed and removed between rounds of random types. */
static void test_matcher_index_random(void)
{
	static const char *const pattern_words[] = {"a", "b", "c", "order", "*",
	                                            "#", "#", "*", "a*",    ""};
	static const char *const type_words[] = {"a", "b", "c", "order", "x"};
	enum { SUBS = 300, ROUNDS = 40, TYPES = 200, PMAX = 3 };
	char pats[SUBS][PMAX][80];
	int npats[SUBS] = {0}; /* 0: not in the matcher */
	struct matcher *m = matcher_new();
	int64_t *ids = NULL;
	size_t cap = 0;
	uint32_t state = 12345;
	long compared = 0, mismatches = 0, hits = 0;

	CHECK(m != NULL);
	if (!m)
		return;
	for (int round = 0; round < ROUNDS; round++) {
		/* change a random tenth of the subscriptions (a third of those: removed) */
		for (int c = 0; c < SUBS / 10 + (round == 0 ? SUBS : 0); c++) {
			int id = (int)(rnd(&state) % SUBS);
			const char *list[PMAX];
			if (round > 0 && rnd(&state) % 3 == 0) {
				CHECK(matcher_set(m, id + 1, NULL, 0) == 0);
				npats[id] = 0;
				continue;
			}
			npats[id] = 1 + (int)(rnd(&state) % PMAX);
			for (int k = 0; k < npats[id]; k++) {
				random_text(pats[id][k], sizeof pats[id][k], pattern_words,
				            sizeof pattern_words / sizeof *pattern_words, 5,
				            &state);
				list[k] = pats[id][k];
			}
			CHECK(matcher_set(m, id + 1, list, (size_t)npats[id]) == 0);
		}
		for (int q = 0; q < TYPES; q++) {
			char type[80];
			int64_t want[SUBS];
			int nwant = 0;
			random_text(type, sizeof type, type_words,
			            sizeof type_words / sizeof *type_words, 6, &state);
			for (int id = 0; id < SUBS; id++) {
				int hit = 0;
				for (int k = 0; k < npats[id] && !hit; k++)
					hit = pattern_match(pats[id][k], type);
				if (hit)
					want[nwant++] = id + 1;
			}
			int n = matcher_match(m, type, &ids, &cap);
			compared++;
			hits += nwant;
			if (!ids_equal(ids, n, want, nwant)) {
				if (mismatches < 3)
					fprintf(stderr,
					        "  index: '%s' matched %d, brute force %d\n", type,
					        n, nwant);
				mismatches++;
			}
		}
	}
	CHECK(mismatches == 0);
	CHECK(compared == ROUNDS * TYPES);
	CHECK(hits > compared); /* the types do match things: not a vacuous comparison */
	free(ids);
	matcher_free(m);
}

/* Many subscriptions of other types, and one for everything: a match finds just its
 * own and that one. (Its speed is `make bench`'s row 3b.) */
static void test_matcher_index_many(void)
{
	enum { SUBS = 20000 };
	struct matcher *m = matcher_new();
	int64_t *ids = NULL;
	size_t cap = 0;
	char a[64], b[64];
	int ok = 1;

	CHECK(m != NULL);
	if (!m)
		return;
	for (int i = 1; i <= SUBS && ok; i++) {
		snprintf(a, sizeof a, "tenant%d.order.*", i);
		snprintf(b, sizeof b, "tenant%d.invoice.#", i);
		const char *list[] = {a, b};
		ok = matcher_set(m, i, list, 2) == 0;
	}
	const char *all[] = {"#"};
	CHECK(ok && matcher_set(m, SUBS + 1, all, 1) == 0);
	int n = matcher_match(m, "tenant777.invoice.paid.late", &ids, &cap);
	CHECK(n == 2 && ids[0] == 777 && ids[1] == SUBS + 1);
	n = matcher_match(m, "tenant19999.order.created", &ids, &cap);
	CHECK(n == 2 && ids[0] == 19999 && ids[1] == SUBS + 1);
	CHECK(matcher_match(m, "tenant5.order.created.extra", &ids, &cap) == 1);
	free(ids);
	matcher_free(m);
}

/* Setting a subscription's patterns to what they are (its url, secret or health changed:
 * the store reloads it whole) keeps the index; a real change rebuilds it. */
static void test_matcher_unchanged_keeps_index(void)
{
	struct matcher *m = matcher_new();
	int64_t *ids = NULL;
	size_t cap = 0;
	const char *one[] = {"order.*", "invoice.#"};
	const char *same[] = {"order.*", "invoice.#"};
	const char *reordered[] = {"invoice.#", "order.*"};
	const char *fewer[] = {"order.*"};
	const char *longer[] = {"order.*", "invoice.#.x"};

	CHECK(m != NULL);
	if (!m)
		return;
	CHECK(matcher_set(m, 1, one, 2) == 0 && matcher_set(m, 2, fewer, 1) == 0);
	CHECK(matcher_match(m, "order.created", &ids, &cap) == 2 && matcher_builds(m) == 1);
	CHECK(matcher_set(m, 1, same, 2) == 0);
	CHECK(matcher_match(m, "invoice.paid", &ids, &cap) == 1 && matcher_builds(m) == 1);
	CHECK(matcher_set(m, 1, reordered, 2) == 0);
	CHECK(matcher_match(m, "invoice.paid", &ids, &cap) == 1 && matcher_builds(m) == 2);
	CHECK(matcher_set(m, 1, fewer, 1) == 0);
	CHECK(matcher_match(m, "invoice.paid", &ids, &cap) == 0 && matcher_builds(m) == 3);
	CHECK(matcher_set(m, 1, longer, 2) == 0);
	CHECK(matcher_match(m, "invoice.paid.x", &ids, &cap) == 1 && matcher_builds(m) == 4);
	CHECK(matcher_match(m, "invoice.paid", &ids, &cap) == 0 && matcher_builds(m) == 4);
	free(ids);
	matcher_free(m);
}

static int cmp_id(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* Subscriptions added one by one between matches join the index as it is (no rebuild),
 * through many growths of its arrays and edge table, and it answers as brute force does;
 * a removal or a change of patterns still rebuilds it. */
static void test_matcher_adds_keep_index(void)
{
	static const char *const pattern_words[] = {"a", "b", "c", "order", "*", "#", "a*", ""};
	static const char *const type_words[] = {"a", "b", "c", "order", "x"};
	enum { SUBS = 3000, PMAX = 3, TYPES = 40 };
	static char pats[SUBS][PMAX][80];
	int npats[SUBS] = {0};
	struct matcher *m = matcher_new();
	int64_t *ids = NULL;
	size_t cap = 0;
	uint32_t state = 777;
	long mismatches = 0, hits = 0;

	CHECK(m != NULL);
	if (!m)
		return;
	const char *first[] = {"order.#"};
	CHECK(matcher_set(m, 100000, first, 1) == 0);
	CHECK(matcher_match(m, "order.created", &ids, &cap) == 1 && matcher_builds(m) == 1);
	for (int id = 0; id < SUBS; id++) {
		const char *list[PMAX];
		npats[id] = 1 + (int)(rnd(&state) % PMAX);
		for (int k = 0; k < npats[id]; k++) {
			random_text(pats[id][k], sizeof pats[id][k], pattern_words,
			            sizeof pattern_words / sizeof *pattern_words, 5, &state);
			list[k] = pats[id][k];
		}
		/* ids out of order too: the entries move, their blobs do not */
		int64_t sid = id % 2 ? id + 1 : 50000 - id;
		CHECK(matcher_set(m, sid, list, (size_t)npats[id]) == 0);
		if (id % 97 != 0 && id != SUBS - 1)
			continue;
		for (int q = 0; q < TYPES; q++) {
			char type[80];
			int64_t want[SUBS + 1];
			int nwant = 0;
			random_text(type, sizeof type, type_words,
			            sizeof type_words / sizeof *type_words, 6, &state);
			for (int j = 0; j <= id; j++) {
				int hit = 0;
				for (int k = 0; k < npats[j] && !hit; k++)
					hit = pattern_match(pats[j][k], type);
				if (hit)
					want[nwant++] = j % 2 ? j + 1 : 50000 - j;
			}
			if (pattern_match("order.#", type))
				want[nwant++] = 100000;
			qsort(want, (size_t)nwant, sizeof *want, cmp_id);
			int n = matcher_match(m, type, &ids, &cap);
			hits += nwant;
			if (!ids_equal(ids, n, want, nwant) && mismatches++ < 3)
				fprintf(stderr, "  adds: '%s' matched %d, brute force %d\n", type,
				        n, nwant);
		}
	}
	CHECK(mismatches == 0);
	CHECK(hits > 1000); /* not a vacuous comparison */
	CHECK(matcher_builds(m) == 1);
	/* a removal, or new patterns for one that exists, rebuilds */
	matcher_remove(m, 100000);
	CHECK(matcher_match(m, "order", &ids, &cap) >= 0 && matcher_builds(m) == 2);
	const char *other[] = {"zzz.*"};
	CHECK(matcher_set(m, 2, other, 1) == 0); /* sub 2 exists (id 1 above) */
	int n = matcher_match(m, "zzz.top", &ids, &cap);
	CHECK(n >= 1 && matcher_builds(m) == 3);
	int found = 0;
	for (int i = 0; i < n; i++)
		found |= ids[i] == 2;
	CHECK(found);
	const char *mine[] = {"qqq.only"};
	CHECK(matcher_set(m, 1, mine, 1) == 0); /* new: joins without a rebuild */
	n = matcher_match(m, "qqq.only", &ids, &cap);
	found = 0;
	for (int i = 0; i < n; i++)
		found |= ids[i] == 1;
	CHECK(found && matcher_builds(m) == 3);
	free(ids);
	matcher_free(m);
}

int main(void)
{
	test_checks();
	test_match_table();
	test_match_limits();
	test_match_exhaustive();
	test_matcher();
	test_matcher_index_random();
	test_matcher_index_many();
	test_matcher_unchanged_keeps_index();
	test_matcher_adds_keep_index();
	return CHECK_DONE();
}
