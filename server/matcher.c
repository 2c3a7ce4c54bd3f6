/*
 * matcher.c - event type and pattern validation, RabbitMQ-topic matching, and the
 * in-memory index from an event type to the subscriptions whose patterns match it.
 *
 * Matching is a dynamic programme over (pattern word, type word) positions, at most
 * 17 x 17 cells, so "#.#.#..." patterns cost the same as any other: no recursion, no
 * backtracking.
 *
 * Invariants:
 * - struct matcher keeps entries sorted by strictly ascending id, so matcher_match
 *   returns ascending, unique ids in one scan.
 * - Every stored pattern is pre-split into word spans over its own copy of the text.
 *   A pattern that fails pattern_check is kept (matcher_set only fails on out of memory)
 *   but marked as matching nothing.
 * - matcher_set builds the new entry completely before touching the table, so on
 *   failure the old entry is left as it was.
 *
 * Threads: the free functions keep no state and are thread-safe. A struct matcher is
 * owned by one thread (the writer) and is not locked.
 */
#include "matcher.h"

#include <stdlib.h>
#include <string.h>

#define WORDS_MAX 16    /* words in a type or pattern */
#define WORD_LEN_MAX 64 /* bytes in one word */

struct span {
	uint8_t off; /* byte offset of the word in its text (text is <= 255 bytes) */
	uint8_t len; /* bytes, 1..WORD_LEN_MAX */
};

struct split {
	const char *text;
	int n; /* words, 1..WORDS_MAX, or -1 when the text is invalid */
	struct span w[WORDS_MAX];
};

struct matcher_entry {
	int64_t id;
	size_t n;               /* patterns, >= 1 */
	struct split *patterns; /* n pre-split patterns; texts point into blob */
	char *blob;             /* the NUL-terminated pattern texts, back to back */
};

struct matcher {
	struct matcher_entry *entries; /* sorted by ascending id, ids unique */
	size_t count;                  /* entries in use */
	size_t cap;                    /* entries allocated */
};

enum text_kind { KIND_TYPE, KIND_PATTERN };

enum why_code {
	WHY_EMPTY,
	WHY_TOO_LONG,
	WHY_EMPTY_WORD,
	WHY_LONG_WORD,
	WHY_TOO_MANY_WORDS,
	WHY_BAD_CHAR,
	WHY_WILDCARD,
	WHY_COUNT
};

static const char *const why_text[2][WHY_COUNT] = {
    [KIND_TYPE] =
        {
            [WHY_EMPTY] = "event type is empty",
            [WHY_TOO_LONG] = "event type is longer than 255 bytes",
            [WHY_EMPTY_WORD] = "event type has an empty word (leading, trailing or double dot)",
            [WHY_LONG_WORD] = "event type has a word longer than 64 characters",
            [WHY_TOO_MANY_WORDS] = "event type has more than 16 words",
            [WHY_BAD_CHAR] = "event type may only use A-Z a-z 0-9 _ - and dots",
            [WHY_WILDCARD] = "event type may not contain * or #",
        },
    [KIND_PATTERN] =
        {
            [WHY_EMPTY] = "pattern is empty",
            [WHY_TOO_LONG] = "pattern is longer than 255 bytes",
            [WHY_EMPTY_WORD] = "pattern has an empty word (leading, trailing or double dot)",
            [WHY_LONG_WORD] = "pattern has a word longer than 64 characters",
            [WHY_TOO_MANY_WORDS] = "pattern has more than 16 words",
            [WHY_BAD_CHAR] = "pattern may only use A-Z a-z 0-9 _ - * # and dots",
            [WHY_WILDCARD] = "pattern wildcards * and # must be whole words, like a.*.c",
        },
};

static int word_char_ok(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-';
}

/* Splits text into words, checking every rule for `kind`. Fills sp (sp->n = -1 on
 * failure). Returns 0, or -1 with *why set to the reason code. */
static int split_check(const char *text, enum text_kind kind, struct split *sp, enum why_code *why)
{
	size_t len;
	size_t i;
	size_t start = 0;
	int wild;
	int n = 0;
	int rc = -1;

	sp->text = text;
	sp->n = -1;
	*why = WHY_EMPTY;
	if (text == NULL || text[0] == '\0')
		goto out;
	len = strnlen(text, MATCHER_TYPE_MAX + 1);
	*why = WHY_TOO_LONG;
	if (len > MATCHER_TYPE_MAX)
		goto out;
	for (i = 0; i <= len; i++) {
		unsigned char c = (unsigned char)text[i];

		if (c != '.' && c != '\0') {
			if (c == '*' || c == '#')
				continue; /* checked as a whole word below */
			*why = WHY_BAD_CHAR;
			if (!word_char_ok(c))
				goto out;
			continue;
		}
		/* End of the word [start, i). */
		*why = WHY_EMPTY_WORD;
		if (i == start)
			goto out;
		*why = WHY_LONG_WORD;
		if (i - start > WORD_LEN_MAX)
			goto out;
		*why = WHY_TOO_MANY_WORDS;
		if (n == WORDS_MAX)
			goto out;
		wild = memchr(text + start, '*', i - start) != NULL ||
		       memchr(text + start, '#', i - start) != NULL;
		*why = WHY_WILDCARD;
		if (wild && (kind == KIND_TYPE || i - start != 1))
			goto out;
		sp->w[n].off = (uint8_t)start;
		sp->w[n].len = (uint8_t)(i - start);
		n++;
		start = i + 1;
	}
	sp->n = n;
	rc = 0;
out:
	return rc;
}

static int text_check(const char *text, enum text_kind kind, const char **why)
{
	struct split sp;
	enum why_code code;
	int rc;

	rc = split_check(text, kind, &sp, &code);
	if (rc != 0 && why != NULL)
		*why = why_text[kind][code];
	return rc;
}

int event_type_check(const char *type, const char **why)
{
	return text_check(type, KIND_TYPE, why);
}

int pattern_check(const char *pattern, const char **why)
{
	return text_check(pattern, KIND_PATTERN, why);
}

static int word_is(const struct split *sp, int i, char c)
{
	return sp->w[i].len == 1 && sp->text[sp->w[i].off] == c;
}

static int word_eq(const struct split *a, int i, const struct split *b, int j)
{
	return a->w[i].len == b->w[j].len &&
	       memcmp(a->text + a->w[i].off, b->text + b->w[j].off, a->w[i].len) == 0;
}

/* m[i][j] = 1 when pattern words i.. match type words j.. . Filled from the end. */
static int match_split(const struct split *p, const struct split *t)
{
	unsigned char m[WORDS_MAX + 1][WORDS_MAX + 1];
	int np = p->n;
	int nt = t->n;
	int i;
	int j;
	int matched = 0;

	if (np < 1 || nt < 1)
		goto out;
	memset(m, 0, sizeof(m));
	m[np][nt] = 1;
	for (i = np - 1; i >= 0; i--) {
		for (j = nt; j >= 0; j--) {
			if (word_is(p, i, '#'))
				m[i][j] = m[i + 1][j] || (j < nt && m[i][j + 1]);
			else if (j == nt)
				m[i][j] = 0;
			else if (word_is(p, i, '*'))
				m[i][j] = m[i + 1][j + 1];
			else
				m[i][j] = word_eq(p, i, t, j) && m[i + 1][j + 1];
		}
	}
	matched = m[0][0];
out:
	return matched;
}

int pattern_match(const char *pattern, const char *type)
{
	struct split p;
	struct split t;
	enum why_code code;
	int matched = 0;

	if (split_check(pattern, KIND_PATTERN, &p, &code) != 0)
		goto out;
	if (split_check(type, KIND_TYPE, &t, &code) != 0)
		goto out;
	matched = match_split(&p, &t);
out:
	return matched;
}

struct matcher *matcher_new(void)
{
	return calloc(1, sizeof(struct matcher));
}

static void entry_cleanup(struct matcher_entry *e)
{
	free(e->patterns);
	free(e->blob);
	e->patterns = NULL;
	e->blob = NULL;
	e->n = 0;
}

void matcher_free(struct matcher *m)
{
	size_t i;

	if (m == NULL)
		return;
	for (i = 0; i < m->count; i++)
		entry_cleanup(&m->entries[i]);
	free(m->entries);
	free(m);
}

/* Index of the first entry with id >= `id` (binary search). */
static size_t lower_bound(const struct matcher *m, int64_t id)
{
	size_t lo = 0;
	size_t hi = m->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (m->entries[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Copies and pre-splits patterns into e. Returns 0, or -1 on out of memory. */
static int entry_build(struct matcher_entry *e, int64_t id, const char *const *patterns, size_t n)
{
	enum why_code code;
	size_t total = 0;
	size_t off = 0;
	size_t len;
	size_t i;
	int rc = -1;

	memset(e, 0, sizeof(*e));
	e->id = id;
	for (i = 0; i < n; i++) {
		len = patterns[i] != NULL ? strlen(patterns[i]) : 0;
		if (len > SIZE_MAX - total - 1)
			goto out;
		total += len + 1;
	}
	if (n > SIZE_MAX / sizeof(struct split))
		goto out;
	e->patterns = calloc(n, sizeof(struct split));
	e->blob = malloc(total);
	if (e->patterns == NULL || e->blob == NULL)
		goto out;
	for (i = 0; i < n; i++) {
		len = patterns[i] != NULL ? strlen(patterns[i]) : 0;
		if (len != 0)
			memcpy(e->blob + off, patterns[i], len);
		e->blob[off + len] = '\0';
		/* An invalid pattern keeps n = -1 and so matches nothing. */
		split_check(e->blob + off, KIND_PATTERN, &e->patterns[i], &code);
		off += len + 1;
	}
	e->n = n;
	rc = 0;
out:
	if (rc != 0)
		entry_cleanup(e);
	return rc;
}

int matcher_set(struct matcher *m, int64_t id, const char *const *patterns, size_t n)
{
	struct matcher_entry e;
	struct matcher_entry *grown;
	size_t pos;
	size_t cap;
	int rc = -1;

	memset(&e, 0, sizeof(e));
	if (m == NULL || (n != 0 && patterns == NULL))
		goto out;
	if (n == 0) {
		matcher_remove(m, id);
		rc = 0;
		goto out;
	}
	if (entry_build(&e, id, patterns, n) != 0)
		goto out;
	pos = lower_bound(m, id);
	if (pos < m->count && m->entries[pos].id == id) {
		entry_cleanup(&m->entries[pos]);
		m->entries[pos] = e;
		memset(&e, 0, sizeof(e));
		rc = 0;
		goto out;
	}
	if (m->count == m->cap) {
		cap = m->cap ? m->cap * 2 : 16;
		if (cap > SIZE_MAX / sizeof(*grown))
			goto out;
		grown = realloc(m->entries, cap * sizeof(*grown));
		if (grown == NULL)
			goto out;
		m->entries = grown;
		m->cap = cap;
	}
	memmove(&m->entries[pos + 1], &m->entries[pos], (m->count - pos) * sizeof(m->entries[0]));
	m->entries[pos] = e;
	m->count++;
	memset(&e, 0, sizeof(e));
	rc = 0;
out:
	entry_cleanup(&e);
	return rc;
}

void matcher_remove(struct matcher *m, int64_t id)
{
	size_t pos;

	if (m == NULL)
		return;
	pos = lower_bound(m, id);
	if (pos < m->count && m->entries[pos].id == id) {
		entry_cleanup(&m->entries[pos]);
		memmove(&m->entries[pos], &m->entries[pos + 1],
		        (m->count - pos - 1) * sizeof(m->entries[0]));
		m->count--;
	}
}

int matcher_match(const struct matcher *m, const char *type, int64_t **ids_out, size_t *cap)
{
	struct split t;
	enum why_code code;
	const struct matcher_entry *e;
	int64_t *grown;
	size_t newcap;
	size_t count = 0;
	size_t i;
	size_t k;
	int rc = -1;

	if (ids_out == NULL || cap == NULL)
		goto out;
	if (m == NULL || split_check(type, KIND_TYPE, &t, &code) != 0) {
		rc = 0; /* nothing matches an invalid type */
		goto out;
	}
	for (i = 0; i < m->count; i++) {
		e = &m->entries[i];
		for (k = 0; k < e->n; k++) {
			if (match_split(&e->patterns[k], &t))
				break;
		}
		if (k == e->n)
			continue;
		if (count == (size_t)INT32_MAX)
			goto out;
		if (*ids_out == NULL || count == *cap) {
			newcap = *ids_out != NULL && *cap != 0 ? *cap * 2 : 16;
			if (newcap > SIZE_MAX / sizeof(**ids_out))
				goto out;
			grown = realloc(*ids_out, newcap * sizeof(**ids_out));
			if (grown == NULL)
				goto out;
			*ids_out = grown;
			*cap = newcap;
		}
		(*ids_out)[count++] = e->id;
	}
	rc = (int)count;
out:
	return rc;
}
