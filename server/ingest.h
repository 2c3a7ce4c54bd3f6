/*
 * ingest.h - turning a published body into events ready to store: parse, validate, and
 * build each envelope {"id","type","key","timestamp","data"} once, as compact JSON in
 * which `data` keeps the publisher's own bytes (insignificant white space removed), so
 * numbers are never rewritten. Pure: no I/O, no shared state; thread-safe.
 *
 * Limits (each refused with a reason): body nesting deeper than INGEST_DEPTH_MAX,
 * more than INGEST_BATCH_MAX events, type/key/id over their sizes.
 */
#ifndef HOOKRELAY_INGEST_H
#define HOOKRELAY_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define INGEST_BATCH_MAX 1000 /* events in one batch call */
#define INGEST_DEPTH_MAX 64   /* nesting of arrays/objects in a body */
#define INGEST_KEY_MAX 255    /* bytes in "key", "id" and Idempotency-Key */

enum ingest_rc {
	INGEST_OK,
	INGEST_MALFORMED, /* not JSON: 400 malformed_json */
	INGEST_INVALID,   /* JSON, but not a valid event (or batch): 422 invalid_field */
	INGEST_NOMEM      /* 503 */
};

struct ingest;

/*
 * Parses `body` (len bytes, need not be NUL-terminated): one event object, or with
 * batch = 1 an array of 1..INGEST_BATCH_MAX of them. idempotency_key (the header, or
 * NULL) applies to a single event without its own "id"; a batch with one is refused (its
 * items carry their own "id"s, which must differ). now_ms stamps the events.
 * On INGEST_OK *out is set (free with ingest_free); otherwise why holds the reason
 * (naming the item, e.g. "items[3].type: ...").
 */
enum ingest_rc ingest_parse(const char *body, size_t len, int batch, const char *idempotency_key,
                            int64_t now_ms, struct ingest **out, char *why, size_t whylen);

size_t ingest_count(const struct ingest *in);

/* The events, in body order, for a STORE_INGEST call; owned by `in`. */
struct store_event *ingest_events(struct ingest *in);

void ingest_free(struct ingest *in); /* accepts NULL */

#endif
