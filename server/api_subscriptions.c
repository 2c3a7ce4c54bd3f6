/*
 * api_subscriptions.c - /v1/subscriptions routes: validation of url, patterns, custom
 * headers and secrets; create, read, update, delete, rotate-secret.
 *
 * Secrets are returned only by create and rotate-secret, never by reads.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "api.h"
#include "matcher.h"
#include "rate_limit.h"
#include "sender.h"
#include "sign.h"
#include "target.h"
#include "util.h"

#define PATTERNS_MAX 64          /* patterns per subscription */
#define HEADERS_MAX 32           /* custom headers per subscription */
#define HEADER_NAME_MAX 256      /* bytes */
#define HEADER_VALUE_MAX 4096    /* bytes */
#define DESCRIPTION_MAX 1024     /* bytes */
#define GRACE_MAX_SECONDS (30 * 86400)
#define GRACE_DEFAULT_SECONDS 86400
#define IN_FLIGHT_MAX 1000       /* a subscription's max_in_flight */

static int is_token_char(unsigned char c)
{
	return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int check_headers(json_t *headers, char *why, size_t whylen)
{
	const char *name;
	json_t *value;

	if (json_is_null(headers))
		return 0;
	if (!json_is_object(headers)) {
		snprintf(why, whylen, "headers must be an object of header names to string values");
		return -1;
	}
	if (json_object_size(headers) > HEADERS_MAX) {
		snprintf(why, whylen, "headers: at most %d custom headers", HEADERS_MAX);
		return -1;
	}
	json_object_foreach(headers, name, value)
	{
		size_t nlen = strlen(name);
		if (nlen == 0 || nlen > HEADER_NAME_MAX) {
			snprintf(why, whylen, "headers: a name must be 1 to %d bytes", HEADER_NAME_MAX);
			return -1;
		}
		for (size_t i = 0; i < nlen; i++) {
			if (!is_token_char((unsigned char)name[i])) {
				snprintf(why, whylen, "headers: '%.64s' is not a valid header name", name);
				return -1;
			}
		}
		if (sender_header_reserved(name)) {
			if (strncasecmp(name, "webhook-", 8) == 0)
				snprintf(
				    why, whylen,
				    "headers: webhook-* names are hookrelay's (Standard Webhooks)");
			else
				snprintf(why, whylen,
				         "headers: %s is set by hookrelay and cannot be overridden",
				         name);
			return -1;
		}
		if (!json_is_string(value)) {
			snprintf(why, whylen, "headers: the value of %.64s must be a string", name);
			return -1;
		}
		const char *v = json_string_value(value);
		size_t vlen = json_string_length(value);
		if (vlen > HEADER_VALUE_MAX) {
			snprintf(why, whylen, "headers: the value of %.64s is over %d bytes", name,
			         HEADER_VALUE_MAX);
			return -1;
		}
		/* HTTP drops white space around a value, and curl takes "Name:" followed by white
		 * space only as "remove this header": what is stored must be what is sent. */
		if (vlen > 0 &&
		    (v[0] == ' ' || v[0] == '\t' || v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) {
			snprintf(why, whylen,
			         "headers: the value of %.64s begins or ends with white space",
			         name);
			return -1;
		}
		for (size_t i = 0; i < vlen; i++) {
			unsigned char c = (unsigned char)v[i];
			if (c == '\r' || c == '\n' || c == '\0' || (c < 0x20 && c != '\t') || c == 0x7f) {
				snprintf(why, whylen,
				         "headers: the value of %.64s contains CR, LF or control characters", name);
				return -1;
			}
		}
	}
	return 0;
}

static int check_patterns(json_t *patterns, char *why, size_t whylen)
{
	size_t i;
	json_t *p;
	const char *reason;

	if (!json_is_array(patterns) || json_array_size(patterns) == 0 ||
	    json_array_size(patterns) > PATTERNS_MAX) {
		snprintf(why, whylen, "event_types must be an array of 1 to %d patterns", PATTERNS_MAX);
		return -1;
	}
	json_array_foreach(patterns, i, p)
	{
		if (!json_is_string(p)) {
			snprintf(why, whylen, "event_types[%zu] must be a string", i);
			return -1;
		}
		if (pattern_check(json_string_value(p), &reason) != 0) {
			snprintf(why, whylen, "event_types[%zu]: %s", i, reason);
			return -1;
		}
	}
	return 0;
}

/*
 * Validates the fields of a create (all required ones present) or an update (any
 * subset) into `out`, a new object holding only known fields. Returns 0 or -1 with why.
 */
static int check_subscription(const struct api *api, json_t *body, int creating, json_t *out,
                              char *why, size_t whylen)
{
	const char *reason = NULL;
	json_t *v;

	static const char *const known[] = {
	    "url",           "event_types", "description",         "headers", "enabled",
	    "max_in_flight", "rate_limit",  "signature_algorithm", "secret",  NULL};
	if (!json_is_object(body)) {
		snprintf(why, whylen, "the body must be a JSON object");
		return -1;
	}
	if (api_known_fields(body, known, why, whylen) != 0)
		return -1;
	v = json_object_get(body, "url");
	if (v) {
		if (!json_is_string(v)) {
			snprintf(why, whylen, "url must be a string");
			return -1;
		}
		if (target_url_check(json_string_value(v), api_targets(api), &reason) != 0) {
			snprintf(why, whylen, "%s", reason);
			return -1;
		}
		json_object_set(out, "url", v);
	} else if (creating) {
		snprintf(why, whylen, "url is required");
		return -1;
	}
	v = json_object_get(body, "event_types");
	if (v) {
		if (check_patterns(v, why, whylen) != 0)
			return -1;
		json_object_set(out, "event_types", v);
	} else if (creating) {
		snprintf(why, whylen, "event_types is required");
		return -1;
	}
	v = json_object_get(body, "description");
	if (v) {
		if (!json_is_null(v) && (!json_is_string(v) || json_string_length(v) > DESCRIPTION_MAX)) {
			snprintf(why, whylen, "description must be a string of at most %d bytes",
			         DESCRIPTION_MAX);
			return -1;
		}
		json_object_set(out, "description", v);
	}
	v = json_object_get(body, "headers");
	if (v) {
		if (check_headers(v, why, whylen) != 0)
			return -1;
		json_object_set(out, "headers", v);
	}
	v = json_object_get(body, "enabled");
	if (v) {
		if (!json_is_boolean(v)) {
			snprintf(why, whylen, "enabled must be true or false");
			return -1;
		}
		json_object_set(out, "enabled", v);
	}
	v = json_object_get(body, "max_in_flight");
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 ||
		    json_integer_value(v) > IN_FLIGHT_MAX) {
			snprintf(why, whylen, "max_in_flight must be an integer from 1 to %d", IN_FLIGHT_MAX);
			return -1;
		}
		json_object_set(out, "max_in_flight", v);
	}
	v = json_object_get(body, "rate_limit");
	if (v) {
		if (!json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) < 1 ||
		                         json_integer_value(v) > RATE_LIMIT_MAX)) {
			snprintf(why, whylen,
			         "rate_limit must be null (no limit) or an integer from 1 to %d"
			         " (deliveries a second)",
			         RATE_LIMIT_MAX);
			return -1;
		}
		json_object_set(out, "rate_limit", v);
	}
	v = json_object_get(body, "signature_algorithm");
	if (v && !creating) {
		snprintf(why, whylen, "signature_algorithm is chosen at creation");
		return -1;
	}
	if (v && (!json_is_string(v) || (strcmp(json_string_value(v), "hmac-sha256") != 0 &&
	                                 strcmp(json_string_value(v), "ed25519") != 0))) {
		snprintf(why, whylen, "signature_algorithm must be \"hmac-sha256\" or \"ed25519\"");
		return -1;
	}
	v = json_object_get(body, "secret");
	if (v && !creating) {
		snprintf(why, whylen, "secret cannot be changed here; use rotate-secret");
		return -1;
	}
	return 0;
}

/* Puts a valid "secret" into out: for HMAC the one given in body, or a fresh one; for
 * ed25519 always a fresh key pair (the private half never leaves hookrelay). */
static int take_secret(json_t *body, int ed25519, json_t *out, char *why, size_t whylen)
{
	json_t *v = json_object_get(body, "secret");
	const char *reason;
	char fresh[SIGN_SECRET_MAX], public_key[SIGN_SECRET_MAX];

	if (ed25519) {
		if (v && !json_is_null(v)) {
			snprintf(why, whylen, "an ed25519 key pair is generated by hookrelay; omit secret");
			return -1;
		}
		if (sign_keypair_generate(fresh, public_key) != 0) {
			snprintf(why, whylen, "no entropy to generate a key pair");
			return -1;
		}
		json_object_set_new(out, "secret", json_string(fresh));
		OPENSSL_cleanse(fresh, sizeof(fresh));
		return 0;
	}
	if (v && !json_is_null(v)) {
		if (!json_is_string(v)) {
			snprintf(why, whylen, "secret must be a string");
			return -1;
		}
		if (sign_secret_check(json_string_value(v), &reason) != 0) {
			snprintf(why, whylen, "%s", reason);
			return -1;
		}
		json_object_set(out, "secret", v);
		return 0;
	}
	if (sign_secret_generate(fresh, sizeof(fresh)) != 0) {
		snprintf(why, whylen, "no entropy to generate a secret");
		return -1;
	}
	json_object_set_new(out, "secret", json_string(fresh));
	return 0;
}

static int is_ed25519(json_t *algorithm)
{
	return json_is_string(algorithm) && strcmp(json_string_value(algorithm), "ed25519") == 0;
}

/* Submits a write whose input is `fields` (stolen). */
static void submit_fields(struct api *api, struct http_request *req, enum store_call_kind kind,
                          int64_t id, json_t *fields, int status)
{
	struct api_write *w = api_write_new(req, kind);
	if (!w) {
		json_decref(fields);
		return;
	}
	w->body = fields; /* freed with the write */
	w->call.fields = fields;
	w->call.id = id;
	w->what = "subscription";
	w->status = status;
	api_write_submit(api, w);
}

static int path_id(struct http_request *req, int64_t *id)
{
	return api_path_id(req, "sub_", "subscription", id);
}

void api_subscriptions_create(struct api *api, struct http_request *req)
{
	json_t *body = api_parse_body(req);
	json_t *fields = json_object();
	char why[256];

	if (!body || !fields)
		goto out;
	if (check_subscription(api, body, 1, fields, why, sizeof(why)) != 0 ||
	    take_secret(body, is_ed25519(json_object_get(body, "signature_algorithm")), fields, why,
	                sizeof(why)) != 0) {
		http_reply_error(req, 422, "invalid_field", "%s", why);
		goto out;
	}
	submit_fields(api, req, STORE_SUB_CREATE, 0, fields, 201);
	fields = NULL;
out:
	json_decref(fields);
	json_decref(body);
}

void api_subscriptions_update(struct api *api, struct http_request *req)
{
	json_t *body = NULL, *fields = NULL;
	char why[256];
	int64_t id;

	if (path_id(req, &id) != 0)
		return;
	body = api_parse_body(req);
	fields = json_object();
	if (!body || !fields)
		goto out;
	if (check_subscription(api, body, 0, fields, why, sizeof(why)) != 0) {
		http_reply_error(req, 422, "invalid_field", "%s", why);
		goto out;
	}
	submit_fields(api, req, STORE_SUB_UPDATE, id, fields, 200);
	fields = NULL;
out:
	json_decref(fields);
	json_decref(body);
}

void api_subscriptions_delete(struct api *api, struct http_request *req)
{
	int64_t id;
	if (path_id(req, &id) != 0)
		return;
	submit_fields(api, req, STORE_SUB_DELETE, id, NULL, 204);
}

void api_subscriptions_rotate(struct api *api, struct http_request *req)
{
	json_t *body = NULL, *fields = json_object(), *grace, *current = NULL;
	char why[256];
	size_t len;
	int64_t id, grace_s = GRACE_DEFAULT_SECONDS;

	if (!fields || path_id(req, &id) != 0)
		goto out;
	http_body(req, &len);
	if (len > 0) {
		body = api_parse_body(req);
		if (!body)
			goto out;
		static const char *const known[] = {"grace_seconds", "secret", NULL};
		if (!json_is_object(body)) {
			http_reply_error(req, 422, "invalid_field", "the body must be a JSON object");
			goto out;
		}
		if (api_known_fields(body, known, why, sizeof(why)) != 0) {
			http_reply_error(req, 422, "invalid_field", "%s", why);
			goto out;
		}
	} else {
		body = json_object();
	}
	grace = json_object_get(body, "grace_seconds");
	if (grace) {
		if (!json_is_integer(grace) || json_integer_value(grace) < 0 ||
		    json_integer_value(grace) > GRACE_MAX_SECONDS) {
			http_reply_error(req, 422, "invalid_field",
			                 "grace_seconds must be an integer from 0 to %d", GRACE_MAX_SECONDS);
			goto out;
		}
		grace_s = json_integer_value(grace);
	}
	/* A rotation keeps the subscription's algorithm, so it must be read first. */
	switch (store_subscription_get(api_store(api), id, &current)) {
	case STORE_OK:
		break;
	case STORE_NOTFOUND:
		http_reply_error(req, 404, "not_found", "no subscription with that id");
		goto out;
	default: /* not knowing its algorithm, an ed25519 subscription would get an HMAC secret */
		http_reply_error(req, 503, "storage_unavailable", "could not read the subscription");
		goto out;
	}
	if (take_secret(body, is_ed25519(json_object_get(current, "signature_algorithm")), fields, why,
	                sizeof(why)) != 0) {
		http_reply_error(req, 422, "invalid_field", "%s", why);
		goto out;
	}
	json_object_set_new(fields, "grace_ms", json_integer(grace_s * 1000));
	submit_fields(api, req, STORE_SUB_ROTATE, id, fields, 200);
	fields = NULL;
out:
	json_decref(current);
	json_decref(fields);
	json_decref(body);
}

/* Reads the RFC 3339 time body.name into *ms. Returns 0, 1 when it is absent (or
 * null), or -1 when it is not a time. */
static int body_time(const json_t *body, const char *name, int64_t *ms)
{
	const json_t *v = json_object_get(body, name);
	if (!v || json_is_null(v))
		return 1;
	return json_is_string(v) && util_parse_time(json_string_value(v), ms) == 0 ? 0 : -1;
}

/* Parses a {"since", ...} body of recover or replay, with since into *since_ms; answers
 * and returns NULL when it is not one. */
static json_t *since_body(struct http_request *req, const char *const *known, int64_t *since_ms)
{
	json_t *body = api_parse_body(req);
	char why[128];

	if (!body)
		return NULL;
	if (json_is_object(body) && api_known_fields(body, known, why, sizeof(why)) != 0) {
		http_reply_error(req, 422, "invalid_field", "%s", why);
	} else if (!json_is_object(body) || body_time(body, "since", since_ms) != 0) {
		http_reply_error(
		    req, 422, "invalid_field",
		    "send {\"since\": \"<RFC 3339 time>\"}, e.g. \"2026-11-24T00:00:00Z\"");
	} else {
		return body;
	}
	json_decref(body);
	return NULL;
}

void api_subscriptions_recover(struct api *api, struct http_request *req)
{
	static const char *const known[] = {"since", NULL};
	json_t *body, *fields;
	int64_t id, since_ms;

	if (path_id(req, &id) != 0 || !(body = since_body(req, known, &since_ms)))
		return;
	fields = json_pack("{s:I}", "since_ms", (json_int_t)since_ms);
	if (fields)
		submit_fields(api, req, STORE_SUB_RECOVER, id, fields, 202);
	else
		http_reply_error(req, 503, "overloaded", "out of memory");
	json_decref(body);
}

void api_subscriptions_replay(struct api *api, struct http_request *req)
{
	static const char *const known[] = {"since", "until", NULL};
	json_t *body, *fields;
	int64_t id, since_ms, until_ms;

	if (path_id(req, &id) != 0 || !(body = since_body(req, known, &since_ms)))
		return;
	fields = json_pack("{s:I}", "since_ms", (json_int_t)since_ms);
	if (!fields) {
		http_reply_error(req, 503, "overloaded", "out of memory");
		goto out;
	}
	switch (body_time(body, "until", &until_ms)) {
	case -1:
		http_reply_error(req, 422, "invalid_field",
		                 "until must be an RFC 3339 time, e.g. \"2026-11-25T00:00:00Z\"");
		goto out;
	case 0:
		if (until_ms <= since_ms) {
			http_reply_error(req, 422, "invalid_field", "until must be after since");
			goto out;
		}
		if (json_object_set_new(fields, "until_ms", json_integer(until_ms)) != 0) {
			http_reply_error(req, 503, "overloaded", "out of memory");
			goto out;
		}
		break;
	default:
		break;
	}
	submit_fields(api, req, STORE_SUB_REPLAY, id, fields, 202);
	fields = NULL;
out:
	json_decref(fields);
	json_decref(body);
}

static enum store_rc run_subscription_get(struct store *store, struct api_read *r)
{
	return store_subscription_get(store, r->id, &r->json);
}

static enum store_rc run_subscriptions_list(struct store *store, struct api_read *r)
{
	return store_subscriptions_list(store, &r->q, &r->json);
}

static enum store_rc run_subscription_stats(struct store *store, struct api_read *r)
{
	return store_subscription_stats(store, r->id, &r->json);
}

/* A read of the subscription the path names, off the HTTP thread. */
static void read_subscription(struct api *api, struct http_request *req,
                              enum store_rc (*run)(struct store *, struct api_read *))
{
	int64_t id;
	if (path_id(req, &id) != 0)
		return;
	api_read_submit(api, req, &(struct api_read){.run = run, .what = "subscription", .id = id});
}

void api_subscriptions_get(struct api *api, struct http_request *req)
{
	read_subscription(api, req, run_subscription_get);
}

void api_subscriptions_stats(struct api *api, struct http_request *req)
{
	read_subscription(api, req, run_subscription_stats);
}

void api_subscriptions_list(struct api *api, struct http_request *req)
{
	struct store_list_query q;
	static const char *const no_filters[] = {NULL};
	if (api_list_query(req, no_filters, &q) != 0)
		return;
	api_read_submit(
	    api, req,
	    &(struct api_read){.run = run_subscriptions_list, .what = "subscription", .q = q});
}
