/*
 * verify.c - `hookrelay verify`: a receiver's debugging aid for Standard Webhooks v1
 * signatures. Given the secret, the three webhook-* header values (or a file of raw
 * headers) and the body file, it either confirms the signature or names the problem:
 * the secret's form, the header's form, the timestamp window, or, on a mismatch, the
 * exact signed content, the expected signature, and which common mistake (re-serialized
 * body, trailing newline, wrong or un-decoded secret) reproduces the received one.
 *
 * Every signature is computed by delivery/sign (sign_one / sign_verify); this file
 * only builds the variants to try. Mistake detection signs variants of the inputs: a
 * sender that used the secret's text as the HMAC key is reproduced by signing with
 * "whsec_" + base64(that text).
 *
 * Single-threaded; everything it allocates is freed before verify_main returns.
 */
#include "verify.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sign.h"
#include "util.h"

/* bytes read from --body / --headers: the largest envelope, --max-body's 64 MiB of data
 * and the rest of the envelope around it */
#define VERIFY_FILE_MAX ((64u << 20) + (64u << 10))
#define VERIFY_SECRET_FILE_MAX 4096       /* bytes of a --secret-file */
#define VERIFY_SHOW_MAX 200               /* body bytes shown escaped on a mismatch */
#define VERIFY_TOLERANCE 300              /* seconds, the Standard Webhooks default */
#define VERIFY_KEY_MIN 24                 /* bytes in a v1 key */
#define VERIFY_KEY_MAX 64                 /* bytes in a v1 key */
#define VERIFY_SECONDS_MAX 100000000000LL /* past this a timestamp looks like ms */

enum { VERIFY_VALID = 0, VERIFY_INVALID = 1, VERIFY_USAGE = 2 };

struct verify_args {
	const char *secret;
	const char *id;
	const char *timestamp; /* text as received */
	const char *signature; /* the whole webhook-signature value */
	const char *body_path;
	const char *headers_path;
	const char *secret_path; /* --secret-file: the secret kept off the command line */
	int64_t tolerance; /* seconds */
	int64_t now;       /* unix seconds: --now, else the clock */
	int have_now;
};

static const char verify_usage[] =
    "usage: hookrelay verify (--secret whsec_...|whpk_... | --secret-file FILE) --body FILE\n"
    "                        (--id ID --timestamp TS --signature 'v1,...' | --headers FILE)\n"
    "                        [--tolerance SECONDS] [--now UNIX_SECONDS]\n"
    "\n"
    "Checks a received webhook's Standard Webhooks signature and says why it does not\n"
    "match: v1 (HMAC-SHA256) with the whsec_ secret, or v1a (ed25519) with the whpk_\n"
    "public key. --body is the raw request body, byte for byte. --headers is a file of raw\n"
    "'name: value' lines holding webhook-id, webhook-timestamp and webhook-signature (flags\n"
    "given as well win). --tolerance is how far the timestamp may be from now (default\n"
    "300 s); --now replaces the clock, e.g. to check a captured request later.\n"
    "--secret-file reads the secret from the first line of FILE, keeping it out of ps and\n"
    "the shell's history.\n"
    "Exit status: 0 valid, 1 not valid, 2 usage error.\n";

/* Reads a whole file of at most max bytes into a malloc'd buffer with a NUL after its
 * len bytes. A secret's file is read unbuffered, so that no copy stays in stdio's. */
static char *read_file(const char *path, size_t *len, const char *what, size_t max)
{
	FILE *f = NULL;
	char *buf = NULL;
	char *grown;
	size_t cap = 4096;
	size_t used = 0;
	size_t n;
	char *result = NULL;

	f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "hookrelay verify: cannot read %s file %s\n", what, path);
		goto out;
	}
	if (max < VERIFY_FILE_MAX)
		setvbuf(f, NULL, _IONBF, 0);
	buf = malloc(cap);
	if (!buf)
		goto nomem;
	for (;;) {
		if (cap - used < 2) { /* room for the byte past the limit, and a NUL */
			size_t want = cap * 2 < max + 2 ? cap * 2 : max + 2;
			grown = realloc(buf, want);
			if (!grown)
				goto nomem;
			buf = grown;
			cap = want;
		}
		n = fread(buf + used, 1, cap - used - 1, f);
		used += n;
		if (used > max) {
			fprintf(stderr, "hookrelay verify: %s file %s is over %zu bytes%s\n", what,
			        path, max,
			        max == VERIFY_FILE_MAX
			            ? " (64 MiB and 64 KiB: no envelope is larger)"
			            : "");
			goto out;
		}
		if (n == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "hookrelay verify: error reading %s file %s\n", what, path);
		goto out;
	}
	buf[used] = '\0';
	*len = used;
	result = buf;
	buf = NULL;
	goto out;
nomem:
	fprintf(stderr, "hookrelay verify: out of memory\n");
out:
	if (f)
		fclose(f);
	free(buf);
	return result;
}

static char *trim(char *s)
{
	size_t len;

	while (*s == ' ' || *s == '\t')
		s++;
	len = strlen(s);
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' ||
	                   s[len - 1] == '\n'))
		s[--len] = '\0';
	return s;
}

/* Takes webhook-id/-timestamp/-signature from raw header lines (text is modified and
 * must outlive args); a flag given on the command line wins. */
static void apply_headers(char *text, struct verify_args *args)
{
	char *line = text;

	while (line && *line) {
		char *next = strchr(line, '\n');
		char *colon;

		if (next)
			*next++ = '\0';
		colon = strchr(line, ':');
		if (colon) {
			char *value;

			*colon = '\0';
			value = trim(colon + 1);
			line = trim(line);
			if (strcasecmp(line, "webhook-id") == 0 && !args->id)
				args->id = value;
			else if (strcasecmp(line, "webhook-timestamp") == 0 && !args->timestamp)
				args->timestamp = value;
			else if (strcasecmp(line, "webhook-signature") == 0 && !args->signature)
				args->signature = value;
		}
		line = next;
	}
}

/* Parses flags (--name value or --name=value). Returns 0, 1 after printing --help, or
 * -1 after a message. */
static int parse_args(int argc, char **argv, struct verify_args *args)
{
	int rc = -1;

	memset(args, 0, sizeof(*args));
	args->tolerance = VERIFY_TOLERANCE;
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *eq = strchr(arg, '=');
		size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
		const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
		const char **slot = NULL;

#define FLAG_IS(name) (nlen == strlen(name) && strncmp(arg, name, nlen) == 0)
		if (FLAG_IS("--help") || FLAG_IS("-h")) {
			fputs(verify_usage, stdout);
			rc = 1;
			goto out;
		}
		if (FLAG_IS("--secret"))
			slot = &args->secret;
		else if (FLAG_IS("--id"))
			slot = &args->id;
		else if (FLAG_IS("--timestamp"))
			slot = &args->timestamp;
		else if (FLAG_IS("--signature"))
			slot = &args->signature;
		else if (FLAG_IS("--secret-file"))
			slot = &args->secret_path;
		else if (FLAG_IS("--body"))
			slot = &args->body_path;
		else if (FLAG_IS("--headers"))
			slot = &args->headers_path;
		else if (!FLAG_IS("--tolerance") && !FLAG_IS("--now")) {
			fprintf(stderr, "hookrelay verify: unknown argument '%s'\n\n%s", arg,
			        verify_usage);
			goto out;
		}
		if (!value) {
			fprintf(stderr, "hookrelay verify: %.*s needs a value\n", (int)nlen, arg);
			goto out;
		}
		if (slot) {
			*slot = value;
		} else if (FLAG_IS("--tolerance")) {
			if (util_parse_int(value, 0, INT64_C(1) << 40, &args->tolerance) != 0) {
				fprintf(
				    stderr,
				    "hookrelay verify: --tolerance wants whole seconds, not '%s'\n",
				    value);
				goto out;
			}
		} else {
			if (util_parse_int(value, 0, INT64_MAX, &args->now) != 0) {
				fprintf(stderr,
				        "hookrelay verify: --now wants unix seconds, not '%s'\n",
				        value);
				goto out;
			}
			args->have_now = 1;
		}
#undef FLAG_IS
		if (!eq)
			i++;
	}
	if (args->secret && args->secret_path) {
		fprintf(stderr, "hookrelay verify: --secret and --secret-file: give one\n");
		goto out;
	}
	if ((!args->secret && !args->secret_path) || !args->body_path) {
		fprintf(
		    stderr,
		    "hookrelay verify: --secret (or --secret-file) and --body are required\n\n%s",
		    verify_usage);
		goto out;
	}
	rc = 0;
out:
	return rc;
}

/* Prints a missing-input message. Returns 0 if id, timestamp and signature are set. */
static int check_present(const struct verify_args *args)
{
	int rc = 0;

	/* empty is missing, as the standardwebhooks libraries say ("Missing required
	 * headers"): a signature over an empty id proves nothing about which message */
	if (!args->id || !*args->id || !args->timestamp || !*args->timestamp || !args->signature ||
	    !*args->signature) {
		fprintf(
		    stderr,
		    "hookrelay verify: missing%s%s%s: pass --id, --timestamp and --signature, or\n"
		    "  --headers FILE with 'webhook-id:', 'webhook-timestamp:' and "
		    "'webhook-signature:' lines\n",
		    args->id && *args->id ? "" : " webhook-id",
		    args->timestamp && *args->timestamp ? "" : " webhook-timestamp",
		    args->signature && *args->signature ? "" : " webhook-signature");
		rc = -1;
	}
	return rc;
}

/* 1 if some v1 entry of the header is HMAC-SHA256 of the signed content keyed with
 * these bytes as they are: the key a careless sender uses, of any length. */
static int signed_with_raw_key(const void *key, size_t key_len, const struct verify_args *a,
                               int64_t ts, const unsigned char *body, size_t len)
{
	return sign_verify_hmac_key(key, key_len, a->id, ts, body, len, a->signature) == 0;
}

static int is_b64(const char *s, const char *alphabet_extra)
{
	size_t len = strlen(s);

	if (len == 0)
		return 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '=' || strchr(alphabet_extra, c)))
			return 0;
	}
	return 1;
}

/* Explains a secret sign_secret_check refused. */
static void explain_secret(const char *secret, const char *why)
{
	char prefixed[SIGN_SECRET_MAX];
	const char *b64 = strncmp(secret, "whsec_", 6) == 0 ? secret + 6 : NULL;
	int bare_key = 0;

	if (!b64 && strlen(secret) + 7 <= sizeof(prefixed)) {
		snprintf(prefixed, sizeof(prefixed), "whsec_%s", secret);
		bare_key = sign_secret_check(prefixed, NULL) == 0;
	}

	printf("invalid: the secret is not a Standard Webhooks v1 secret: %s\n", why);
	printf("  a v1 secret is 'whsec_' followed by standard base64 of %d to %d bytes\n",
	       VERIFY_KEY_MIN, VERIFY_KEY_MAX);
	if (!b64) {
		if (bare_key)
			printf("  hint: this looks like the base64 part alone; pass it with its "
			       "prefix: --secret 'whsec_%s'\n",
			       secret);
		else
			printf(
			    "  hint: pass the secret exactly as hookrelay returned it, including "
			    "'whsec_'\n");
	} else if (strpbrk(b64, " \t\r\n")) {
		printf(
		    "  hint: the secret contains white space or a line break; copy it without\n");
	} else if (is_b64(b64, "-_") && strpbrk(b64, "-_")) {
		printf("  hint: it uses URL-safe base64 (- and _); secrets use standard base64 "
		       "(+ and /)\n");
	} else if (is_b64(b64, "+/") && strlen(b64) % 4 == 0) {
		size_t pad = (b64[strlen(b64) - 1] == '=') +
		             (strlen(b64) > 1 && b64[strlen(b64) - 2] == '=');
		printf("  it decodes to %zu bytes\n", strlen(b64) / 4 * 3 - pad);
	} else if (is_b64(b64, "+/")) {
		printf("  hint: its base64 is %zu characters, not a multiple of 4: truncated or "
		       "missing '=' padding?\n",
		       strlen(b64));
	}
}

/* Counts the header's "v1," entries; *others counts the rest. */
static int count_v1(const char *header, int *others)
{
	const char *p = header;
	int n = 0;

	*others = 0;
	while (*p) {
		size_t len;

		while (*p == ' ')
			p++;
		len = strcspn(p, " ");
		if (len == 0)
			break;
		if (len > 3 && strncmp(p, "v1,", 3) == 0)
			n++;
		else
			(*others)++;
		p += len;
	}
	return n;
}

static void explain_header(const char *header)
{
	printf("invalid: the webhook-signature header is malformed: it has no 'v1,<base64>' "
	       "entries\n");
	printf("  received: '%s'\n", header);
	printf("  expected: space-separated entries like "
	       "'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='\n");
	if (strncmp(header, "v1a,", 4) == 0 || strstr(header, " v1a,"))
		printf("  hint: v1a entries are ed25519 signatures: check them with the "
		       "subscription's\n  public key, --secret whpk_... (a whsec_ secret checks v1 "
		       "entries only)\n");
	else if (strncmp(header, "sha256=", 7) == 0 || strncmp(header, "v1=", 3) == 0)
		printf("  hint: that is another provider's format; Standard Webhooks uses 'v1,'\n");
	else if (header[0] && is_b64(header, "+/"))
		printf("  hint: it looks like a bare signature; the header value keeps its 'v1,' "
		       "prefix\n");
}

/* Prints n bytes C-escaped, in double quotes. */
static void print_escaped(const unsigned char *p, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];
		if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\r')
			fputs("\\r", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static int signed_by(const char *secret, const struct verify_args *a, int64_t ts,
                     const unsigned char *body, size_t len)
{
	return sign_verify(secret, a->id, ts, body, len, a->signature) == 0;
}

/* Re-serializations a parser would produce; any that differs from the raw bytes means
 * a verifier fed a parsed body would fail. Reports a form that reproduces the
 * signature. Returns 1 if the body is JSON that re-serializes differently. */
static int hint_reserialized(const struct verify_args *a, int64_t ts, const char *body, size_t len,
                             int *explained)
{
	static const struct {
		size_t flags;
		const char *name;
	} forms[] = {
	    {JSON_COMPACT, "compact"},
	    {JSON_COMPACT | JSON_SORT_KEYS, "compact with sorted keys"},
	    {JSON_INDENT(2), "pretty-printed"},
	    {JSON_INDENT(2) | JSON_SORT_KEYS, "pretty-printed with sorted keys"},
	    {0, "with ', ' and ': ' separators"},
	};
	json_error_t error;
	json_t *root = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
	int differs = 0;

	/* The relay sends what its parser took: integers past 64 bits, say, that jansson
	 * here refuses. Not JSON at all needs no line. */
	if (!root && len > 0 &&
	    (body[strspn(body, " \t\r\n")] == '{' || body[strspn(body, " \t\r\n")] == '['))
		printf("  - (the body was not compared with its re-serialized forms: %s)\n",
		       error.text);

	for (size_t i = 0; root && i < sizeof(forms) / sizeof(forms[0]); i++) {
		char *text = json_dumps(root, forms[i].flags | JSON_ENCODE_ANY);
		if (!text)
			continue;
		if (strlen(text) != len || memcmp(text, body, len) != 0) {
			differs = 1;
			if (!*explained && signed_by(a->secret, a, ts, (const unsigned char *)text,
			                             strlen(text))) {
				printf("  - FOUND: the signature matches this body re-serialized "
				       "%s: the\n"
				       "    body you are checking is not the one that was signed, "
				       "byte for "
				       "byte\n",
				       forms[i].name);
				*explained = 1;
			}
		}
		free(text);
	}
	if (differs)
		printf(
		    "  - the body is JSON that a parser re-serializes differently: verify against "
		    "the raw\n    request bytes, not a parsed-and-re-serialized body\n");
	json_decref(root);
	return differs;
}

/* Trailing-newline variants of the body. */
static void hint_newline(const struct verify_args *a, int64_t ts, const unsigned char *body,
                         size_t len, int *explained)
{
	unsigned char *plus = NULL;
	size_t stripped = len;

	while (stripped > 0 && (body[stripped - 1] == '\n' || body[stripped - 1] == '\r'))
		stripped--;
	if (stripped != len) {
		if (!*explained && signed_by(a->secret, a, ts, body, stripped)) {
			printf("  - FOUND: the signature matches without the body file's trailing "
			       "newline:\n    the file has a line break the request did not "
			       "(editors and "
			       "'echo' add one)\n");
			*explained = 1;
		} else {
			printf(
			    "  - the body file ends with a newline; make sure the request body did "
			    "too\n");
		}
		goto out;
	}
	plus = malloc(len + 1);
	if (!plus)
		goto out;
	if (len)
		memcpy(plus, body, len);
	plus[len] = '\n';
	if (!*explained && signed_by(a->secret, a, ts, plus, len + 1)) {
		printf("  - FOUND: the signature matches the body plus a trailing newline: the "
		       "request body\n    ended with a line break your file lacks\n");
		*explained = 1;
	}
out:
	free(plus);
}

/* Senders that HMAC with the secret's text instead of its decoded bytes. */
static void hint_key(const struct verify_args *a, int64_t ts, const unsigned char *body, size_t len,
                     int *explained)
{
	const char *b64 = a->secret + strlen("whsec_");

	if (!*explained && signed_with_raw_key(a->secret, strlen(a->secret), a, ts, body, len)) {
		printf(
		    "  - FOUND: the signature was made with the secret's text, 'whsec_' included, "
		    "as the\n    HMAC key; the key is base64-decode(secret without 'whsec_')\n");
		*explained = 1;
	}
	if (!*explained && signed_with_raw_key(b64, strlen(b64), a, ts, body, len)) {
		printf("  - FOUND: the signature was made with the secret's base64 text (without "
		       "'whsec_')\n    as the HMAC key, not decoded; the key is "
		       "base64-decode(secret without 'whsec_')\n");
		*explained = 1;
	}
	if (!*explained)
		printf(
		    "  - the key is base64-decode(secret without 'whsec_'): not the text, and not "
		    "with\n    the prefix; check the other side does the same\n");
}

static void explain_mismatch(const struct verify_args *a, int64_t ts, const char *body, size_t len,
                             int nv1)
{
	char expected[SIGN_ONE_MAX];
	const unsigned char *ubody = (const unsigned char *)body;
	int explained = 0;

	if (sign_one(a->secret, a->id, ts, ubody, len, expected, sizeof(expected)) != 0)
		expected[0] = '\0';
	printf("invalid: signature mismatch: no v1 signature matched (%d in the header)\n", nv1);
	printf("signed content is <id>.<timestamp>.<body>:\n");
	printf("  id:        ");
	print_escaped((const unsigned char *)a->id, strlen(a->id));
	printf(" (%zu bytes)\n", strlen(a->id));
	printf("  timestamp: %" PRId64 "\n", ts);
	printf("  body:      %zu bytes: ", len);
	print_escaped(ubody, len < VERIFY_SHOW_MAX ? len : VERIFY_SHOW_MAX);
	if (len > VERIFY_SHOW_MAX)
		printf(" ... (%zu more bytes)", len - VERIFY_SHOW_MAX);
	printf("\n");
	printf("expected signature: %s\n", expected);
	printf("received header:    %s\n", a->signature);
	printf("hints:\n");
	hint_newline(a, ts, ubody, len, &explained);
	hint_reserialized(a, ts, body, len, &explained);
	hint_key(a, ts, ubody, len, &explained);
	if (!explained)
		printf("  - a wrong secret: after a rotation the sender signs with the new and the "
		       "old\n    secret during the grace period; check you have the current one\n");
}

/* Checks the timestamp's form and window. Returns 0, or -1 after explaining. */
static int is_public_key(const char *key)
{
	return strncmp(key, "whpk_", 5) == 0;
}

/* 1 if some entry of the header verifies for this timestamp, with the v1 secret or the
 * v1a public key. */
static int signature_matches(const struct verify_args *a, int64_t ts, const char *body, size_t len)
{
	int entries;
	if (is_public_key(a->secret))
		return sign_verify_v1a(a->secret, a->id, ts, (const unsigned char *)body, len,
		                       a->signature, &entries) > 0;
	return sign_verify(a->secret, a->id, ts, (const unsigned char *)body, len, a->signature) ==
	       0;
}

static int check_timestamp(const struct verify_args *a, int64_t *ts, const char *body, size_t len)
{
	int64_t now = a->have_now ? a->now : (int64_t)time(NULL);
	int64_t off;
	int rc = -1;

	if (util_parse_int(a->timestamp, 0, INT64_MAX / 2, ts) != 0 &&
	    a->timestamp[strspn(a->timestamp, "0123456789")] == '\0') {
		printf("invalid: the timestamp '%s' is out of range: webhook-timestamp is whole "
		       "unix seconds,\n  e.g. 1614265330\n",
		       a->timestamp);
		goto out;
	}
	if (util_parse_int(a->timestamp, 0, INT64_MAX / 2, ts) != 0) {
		printf(
		    "invalid: the timestamp '%s' is not a number: webhook-timestamp is whole unix "
		    "seconds,\n  e.g. 1614265330\n",
		    a->timestamp);
		goto out;
	}
	/* The signed content holds the header's text: "01614265330" signs differently from
	 * 1614265330, and receivers check what they got. */
	char canonical[24];
	snprintf(canonical, sizeof(canonical), "%" PRId64, *ts);
	if (strcmp(canonical, a->timestamp) != 0) {
		printf("invalid: the timestamp '%s' is not written as a plain number (%s): "
		       "webhook-timestamp\n  is whole unix seconds in decimal, no sign or leading "
		       "zeros\n",
		       a->timestamp, canonical);
		goto out;
	}
	off = now - *ts;
	if (off > a->tolerance || -off > a->tolerance) {
		printf(
		    "invalid: the timestamp is %" PRId64 " seconds %s (tolerance %" PRId64 " s)\n",
		    off > 0 ? off : -off, off > 0 ? "in the past" : "in the future", a->tolerance);
		printf(
		    "  the tolerance protects against replays: a captured request cannot be sent "
		    "again later\n");
		if (*ts > VERIFY_SECONDS_MAX)
			printf("  hint: it looks like milliseconds; webhook-timestamp is in "
			       "seconds\n");
		else
			printf("  hint: check the clocks; to check a captured request, pass --now "
			       "%" PRId64 "\n  or a larger --tolerance\n",
			       *ts);
		printf("  (the signature itself %s for this timestamp)\n",
		       signature_matches(a, *ts, body, len) ? "is valid" : "does not match either");
		goto out;
	}
	rc = 0;
out:
	return rc;
}

/* Index (1-based) of the first v1 entry that verifies, or 0. */
static int matching_entry(const struct verify_args *a, int64_t ts, const char *body, size_t len)
{
	const char *p = a->signature;
	char one[SIGN_ONE_MAX];
	int index = 0;
	int found = 0;

	while (*p && !found) {
		size_t tok;

		while (*p == ' ')
			p++;
		tok = strcspn(p, " ");
		if (tok == 0)
			break;
		if (tok > 3 && strncmp(p, "v1,", 3) == 0) {
			index++;
			if (tok < sizeof(one)) {
				memcpy(one, p, tok);
				one[tok] = '\0';
				if (sign_verify(a->secret, a->id, ts, (const unsigned char *)body,
				                len, one) == 0)
					found = index;
			}
		}
		p += tok;
	}
	return found;
}

/* The v1a (ed25519) check: fewer ways to go wrong than v1 (no key text to misuse),
 * the same timestamp rules. */
static int verify_v1a(const struct verify_args *a, const char *body, size_t body_len)
{
	int64_t ts = 0;
	int entries = 0, match;

	/* the key first, as v1 checks its secret first: no header entry, only the key */
	match = sign_verify_v1a(a->secret, a->id, 0, (const unsigned char *)"", 0, NULL, &entries);
	if (match >= 0 && check_timestamp(a, &ts, body, body_len) != 0)
		return VERIFY_INVALID;
	if (match >= 0)
		match = sign_verify_v1a(a->secret, a->id, ts, (const unsigned char *)body, body_len,
		                        a->signature, &entries);
	if (match < 0) {
		printf("invalid: the public key is not a Standard Webhooks ed25519 key: 'whpk_'\n"
		       "  followed by standard base64 of 32 bytes, as hookrelay returned it\n");
		return VERIFY_INVALID;
	}
	if (entries == 0) {
		printf("invalid: the webhook-signature header has no 'v1a,<base64>' entry;\n"
		       "  an ed25519 subscription signs with v1a (space-separated entries)\n");
		return VERIFY_INVALID;
	}
	if (match == 0) {
		printf(
		    "invalid: signature mismatch: no v1a signature verified (%d in the header)\n"
		    "  the signed content is webhook-id.webhook-timestamp.body, the body as the\n"
		    "  raw bytes received (not parsed and serialized again, no newline added)\n",
		    entries);
		return VERIFY_INVALID;
	}
	printf("valid (signature %d of %d matched, v1a)\n", match, entries);
	return VERIFY_VALID;
}

int verify_main(int argc, char **argv)
{
	struct verify_args args;
	char *body = NULL;
	char *headers = NULL;
	size_t body_len = 0;
	size_t headers_len = 0;
	char *secret = NULL; /* --secret-file's text */
	size_t secret_len = 0;
	const char *why = NULL;
	int64_t ts = 0;
	int nv1, others, match;
	int rc = VERIFY_USAGE;

	switch (parse_args(argc, argv, &args)) {
	case 0:
		break;
	case 1:
		rc = VERIFY_VALID; /* --help */
		goto out;
	default:
		goto out;
	}
	if (args.secret_path) {
		secret = read_file(args.secret_path, &secret_len, "secret", VERIFY_SECRET_FILE_MAX);
		if (!secret)
			goto out;
		size_t len = 0; /* its first line, white space dropped */
		size_t skip = 0; /* a UTF-8 byte order mark some editors write, as --api-key-file */
		if (secret_len >= 3 && memcmp(secret, "\xef\xbb\xbf", 3) == 0)
			skip = len = 3;
		while (len < secret_len && secret[len] != '\r' && secret[len] != '\n')
			len++;
		if (memchr(secret, '\0', len)) {
			fprintf(stderr, "hookrelay verify: secret file %s holds a NUL byte\n",
			        args.secret_path);
			goto out;
		}
		while (len > 0 && (secret[len - 1] == ' ' || secret[len - 1] == '\t'))
			len--;
		secret[len] = '\0';
		args.secret = secret + skip + strspn(secret + skip, " \t");
	}
	if (args.headers_path) {
		headers = read_file(args.headers_path, &headers_len, "headers", VERIFY_FILE_MAX);
		if (!headers)
			goto out;
		apply_headers(headers, &args);
	}
	if (check_present(&args) != 0)
		goto out;
	body = read_file(args.body_path, &body_len, "body", VERIFY_FILE_MAX);
	if (!body)
		goto out;

	rc = VERIFY_INVALID;
	if (strncmp(args.secret, "whsk_", 5) == 0) {
		/* not a bad secret: the wrong half of the pair */
		fprintf(stderr, "hookrelay verify: whsk_ is an ed25519 private key; v1a signatures "
		                "are checked with the subscription's whpk_ public key\n");
		rc = VERIFY_USAGE;
		goto out;
	}
	if (is_public_key(args.secret)) {
		rc = verify_v1a(&args, body, body_len);
		goto out;
	}
	if (sign_secret_check(args.secret, &why) != 0) {
		explain_secret(args.secret, why);
		goto out;
	}
	nv1 = count_v1(args.signature, &others);
	if (nv1 == 0) {
		explain_header(args.signature);
		goto out;
	}
	if (check_timestamp(&args, &ts, body, body_len) != 0)
		goto out;
	match = matching_entry(&args, ts, body, body_len);
	if (!match) {
		explain_mismatch(&args, ts, body, body_len, nv1);
		goto out;
	}
	printf("valid (signature %d of %d matched, v1)\n", match, nv1);
	if (others)
		printf("  (%d other entr%s in the header ignored: not v1)\n", others,
		       others == 1 ? "y" : "ies");
	rc = VERIFY_VALID;
out:
	fflush(stdout);
	free(body);
	free(headers);
	if (secret)
		OPENSSL_cleanse(secret, secret_len);
	free(secret);
	return rc;
}
