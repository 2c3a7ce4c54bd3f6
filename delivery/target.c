/*
 * target.c - the SSRF guard: subscription URL rules, parsed with libcurl's own URL parser
 * so that what we accept is exactly what the sender will connect to, and the table of
 * address ranges hookrelay refuses to connect to unless the policy allows them.
 *
 * Invariants:
 * - rules[] is checked in order and the first matching rule decides. Exact IPv6 rules
 *   (::, ::1) come before the ::/96 wrapper that contains them.
 * - A wrapper rule (embed >= 0) blocks only when the IPv4 address embedded at that byte
 *   offset is itself blocked under the same policy, allow-list included; a plain rule
 *   (embed < 0) blocks everything it covers.
 * - An address on the allow-list is allowed whatever rule covers it; allow_private
 *   allows every address.
 * - Every `why` handed out is a string literal: callers may keep it without copying.
 *
 * Threads: no state; everything is safe from any thread.
 */
#include "target.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define TARGET_HINT "; use --allow-private-targets or --allow-targets for local testing"
#define TARGET_ENTRY_MAX 64 /* bytes in one allow-list entry, NUL included */

struct target_rule {
	int family;            /* AF_INET or AF_INET6 */
	int prefix;            /* bits */
	int embed;             /* byte offset of an embedded IPv4 address, or -1 */
	const char *what;      /* "a private address (10.0.0.0/8)" */
	const char *url_why;   /* the registration error for a literal in this range */
	unsigned char net[16]; /* network address, network byte order */
};

/* clang-format off */
#define RULE(fam, prefix, embed, what, ...) \
	{fam, prefix, embed, what, "url points at " what TARGET_HINT, {__VA_ARGS__}}
/* clang-format on */

static const struct target_rule target_rules[] = {
    RULE(AF_INET, 8, -1, "an unspecified address (0.0.0.0/8)", 0),
    RULE(AF_INET, 8, -1, "a private address (10.0.0.0/8)", 10),
    RULE(AF_INET, 10, -1, "a carrier-grade NAT address (100.64.0.0/10)", 100, 64),
    RULE(AF_INET, 8, -1, "a loopback address (127.0.0.0/8)", 127),
    RULE(AF_INET, 16, -1, "a link-local address (169.254.0.0/16)", 169, 254),
    RULE(AF_INET, 12, -1, "a private address (172.16.0.0/12)", 172, 16),
    /* Oracle Cloud's metadata service is 192.0.0.192 */
    RULE(AF_INET, 24, -1, "an IETF protocol assignment address (192.0.0.0/24)", 192, 0, 0),
    RULE(AF_INET, 24, -1, "a documentation address (192.0.2.0/24)", 192, 0, 2),
    RULE(AF_INET, 24, -1, "a 6to4 relay anycast address (192.88.99.0/24)", 192, 88, 99),
    RULE(AF_INET, 16, -1, "a private address (192.168.0.0/16)", 192, 168),
    RULE(AF_INET, 15, -1, "a benchmarking address (198.18.0.0/15)", 198, 18),
    RULE(AF_INET, 24, -1, "a documentation address (198.51.100.0/24)", 198, 51, 100),
    RULE(AF_INET, 24, -1, "a documentation address (203.0.113.0/24)", 203, 0, 113),
    RULE(AF_INET, 4, -1, "a multicast address (224.0.0.0/4)", 224),
    RULE(AF_INET, 4, -1, "a reserved or broadcast address (240.0.0.0/4)", 240),

    RULE(AF_INET6, 128, -1, "an unspecified address (::)", 0),
    RULE(AF_INET6, 128, -1, "a loopback address (::1)", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
         1),
    RULE(AF_INET6, 96, 12, "an IPv4-mapped address (::ffff:0:0/96) of a blocked IPv4 address", 0, 0,
         0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff),
    RULE(AF_INET6, 96, 12, "an IPv4-translated address (::ffff:0:0:0/96) of a blocked IPv4 address",
         0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0),
    RULE(AF_INET6, 96, 12, "an IPv4-compatible address (::/96) of a blocked IPv4 address", 0),
    RULE(AF_INET6, 96, 12, "a NAT64 address (64:ff9b::/96) of a blocked IPv4 address", 0, 0x64,
         0xff, 0x9b),
    RULE(AF_INET6, 48, -1, "a local-use NAT64 address (64:ff9b:1::/48)", 0, 0x64, 0xff, 0x9b, 0, 1),
    RULE(AF_INET6, 16, 2, "a 6to4 address (2002::/16) of a blocked IPv4 address", 0x20, 0x02),
    RULE(AF_INET6, 32, -1, "a Teredo address (2001::/32)", 0x20, 0x01, 0, 0),
    RULE(AF_INET6, 48, -1, "a benchmarking address (2001:2::/48)", 0x20, 0x01, 0, 0x02, 0, 0),
    RULE(AF_INET6, 28, -1, "an ORCHID address (2001:10::/28)", 0x20, 0x01, 0, 0x10),
    RULE(AF_INET6, 32, -1, "a documentation address (2001:db8::/32)", 0x20, 0x01, 0x0d, 0xb8),
    RULE(AF_INET6, 20, -1, "a documentation address (3fff::/20)", 0x3f, 0xff, 0),
    RULE(AF_INET6, 64, -1, "a discard-only address (100::/64)", 0x01, 0x00),
    RULE(AF_INET6, 7, -1, "a private address (fc00::/7)", 0xfc),
    RULE(AF_INET6, 10, -1, "a link-local address (fe80::/10)", 0xfe, 0x80),
    RULE(AF_INET6, 10, -1, "a site-local address (fec0::/10)", 0xfe, 0xc0),
    RULE(AF_INET6, 8, -1, "a multicast address (ff00::/8)", 0xff),
};

#undef RULE

static const char target_localhost_why[] =
    "url points at localhost (a loopback address, 127.0.0.0/8 and ::1)" TARGET_HINT;
static const char target_address_as_name_why[] =
    "url has an IPv4 address with a trailing dot, which would be looked up as a host name;"
    " write the address without the dot";

/* 1 if the first `bits` bits of a and b are equal. */
static int prefix_match(const unsigned char *a, const unsigned char *b, int bits)
{
	int whole = bits / 8;
	int rest = bits % 8;
	unsigned char mask;

	if (memcmp(a, b, (size_t)whole) != 0)
		return 0;
	if (rest == 0)
		return 1;
	mask = (unsigned char)(0xff << (8 - rest));
	return (a[whole] & mask) == (b[whole] & mask);
}

static int allow_listed(const struct target_policy *policy, int family, const unsigned char *addr)
{
	if (!policy)
		return 0;
	for (int i = 0; i < policy->ncidrs; i++) {
		const struct target_cidr *c = &policy->cidrs[i];
		if (c->family == family && prefix_match(c->addr, addr, c->prefix))
			return 1;
	}
	return 0;
}

/* The rule that blocks addr (4 bytes for AF_INET, 16 for AF_INET6), or NULL. */
static const struct target_rule *blocking_rule(const struct target_policy *policy, int family,
                                               const unsigned char *addr)
{
	if (policy && policy->allow_private)
		return NULL;
	if (allow_listed(policy, family, addr))
		return NULL;
	for (size_t i = 0; i < sizeof target_rules / sizeof target_rules[0]; i++) {
		const struct target_rule *r = &target_rules[i];
		if (r->family != family || !prefix_match(r->net, addr, r->prefix))
			continue;
		if (r->embed < 0)
			return r;
		return blocking_rule(policy, AF_INET, addr + r->embed) ? r : NULL;
	}
	return NULL;
}

/* The rule that blocks sa, NULL if it is allowed; *other is set for a non-IP family. */
static const struct target_rule *sockaddr_rule(const struct target_policy *policy,
                                               const struct sockaddr *sa, int *other)
{
	unsigned char addr[16];

	*other = 0;
	if (sa->sa_family == AF_INET) {
		memcpy(addr, (const char *)sa + offsetof(struct sockaddr_in, sin_addr), 4);
		return blocking_rule(policy, AF_INET, addr);
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(addr, (const char *)sa + offsetof(struct sockaddr_in6, sin6_addr), 16);
		return blocking_rule(policy, AF_INET6, addr);
	}
	*other = 1;
	return NULL;
}

int target_address_allowed(const struct target_policy *policy, const struct sockaddr *sa,
                           const char **why)
{
	int other = 0;
	const struct target_rule *r = sockaddr_rule(policy, sa, &other);

	if (other) {
		*why = "not an IPv4 or IPv6 address";
		return 0;
	}
	if (r) {
		*why = r->what;
		return 0;
	}
	return 1;
}

/* Parses "ADDR" or "ADDR/BITS" into *c. Returns 0 or -1 with why filled. */
static int cidr_parse(const char *entry, struct target_cidr *c, char *why, size_t whylen)
{
	int rc = -1;
	char text[TARGET_ENTRY_MAX];
	char *slash;
	int max, bits = -1;
	unsigned char full[16];

	if (strlen(entry) >= sizeof text) {
		snprintf(why, whylen, "'%.40s...' is too long for an address", entry);
		goto out;
	}
	snprintf(text, sizeof text, "%s", entry);
	slash = strchr(text, '/');
	if (slash) {
		*slash = '\0';
		const char *p = slash + 1;
		if (*p == '\0' || strlen(p) > 3) {
			snprintf(why, whylen, "'%s' has a bad prefix length", entry);
			goto out;
		}
		bits = 0;
		for (; *p; p++) {
			if (*p < '0' || *p > '9') {
				snprintf(why, whylen, "'%s' has a bad prefix length", entry);
				goto out;
			}
			bits = bits * 10 + (*p - '0');
		}
	}
	memset(c, 0, sizeof *c);
	if (strchr(text, ':')) {
		c->family = AF_INET6;
		max = 128;
	} else {
		c->family = AF_INET;
		max = 32;
	}
	if (inet_pton(c->family, text, c->addr) != 1) {
		snprintf(why, whylen, "'%s' is not an IPv4 or IPv6 address or CIDR", entry);
		goto out;
	}
	if (bits > max) {
		snprintf(why, whylen, "'%s': the prefix length must be 0..%d", entry, max);
		goto out;
	}
	c->prefix = bits < 0 ? max : bits;
	/* Host bits set past the prefix are almost always a typo: refuse, don't widen. */
	memset(full, 0, sizeof full);
	for (int i = 0; i < c->prefix; i++)
		full[i / 8] |= (unsigned char)(0x80 >> (i % 8));
	for (int i = 0; i < max / 8; i++) {
		if (c->addr[i] & (unsigned char)~full[i]) {
			snprintf(why, whylen, "'%s' has bits set past its /%d prefix", entry,
			         c->prefix);
			goto out;
		}
	}
	rc = 0;
out:
	return rc;
}

int target_policy_parse(const char *cidr_list, int allow_private, struct target_policy *out,
                        char *why, size_t whylen)
{
	int rc = -1;
	char entry[TARGET_ENTRY_MAX];
	const char *p = cidr_list;

	memset(out, 0, sizeof *out);
	out->allow_private = allow_private ? 1 : 0;
	if (!p) {
		rc = 0;
		goto out;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0') {
		rc = 0;
		goto out;
	}
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		while (len > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			len--;
		}
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len == 0) {
			snprintf(why, whylen, "empty entry in the CIDR list");
			goto out;
		}
		if (len >= sizeof entry) {
			snprintf(why, whylen, "'%.40s...' is too long for an address", p);
			goto out;
		}
		memcpy(entry, p, len);
		entry[len] = '\0';
		if (out->ncidrs == TARGET_ALLOW_MAX) {
			snprintf(why, whylen, "more than %d CIDRs", TARGET_ALLOW_MAX);
			goto out;
		}
		if (cidr_parse(entry, &out->cidrs[out->ncidrs], why, whylen) != 0)
			goto out;
		out->ncidrs++;
		if (!end)
			break;
		p = end + 1;
	}
	rc = 0;
out:
	if (rc != 0)
		out->ncidrs = 0;
	return rc;
}

static int is_localhost_name(const char *host, size_t len)
{
	static const char suffix[] = ".localhost";
	size_t slen = sizeof suffix - 1;

	if (len == slen - 1 && strncasecmp(host, suffix + 1, len) == 0)
		return 1;
	return len > slen && strncasecmp(host + len - slen, suffix, slen) == 0;
}

/*
 * Checks the host part as libcurl returned it (modified in place: brackets, zone and
 * trailing dots removed). IP literals are checked as addresses; libcurl already turns
 * decimal, hex, octal and short IPv4 forms into dotted quads, and inet_aton() catches
 * any it leaves (e.g. with a trailing dot), the same way the libc resolver reads them.
 */
static int host_check(char *host, const struct target_policy *policy, const char **why)
{
	int rc = -1;
	size_t len = strlen(host);
	unsigned char addr[16];
	struct in_addr v4;
	const struct target_rule *r;

	if (host[0] == '[') {
		char *zone;
		if (len < 3 || host[len - 1] != ']') {
			*why = "url has a malformed IPv6 address";
			goto out;
		}
		host[len - 1] = '\0';
		zone = strchr(host, '%');
		if (zone)
			*zone = '\0';
		if (inet_pton(AF_INET6, host + 1, addr) != 1) {
			*why = "url has a malformed IPv6 address";
			goto out;
		}
		r = blocking_rule(policy, AF_INET6, addr);
		if (r) {
			*why = r->url_why;
			goto out;
		}
		rc = 0;
		goto out;
	}
	size_t written_len = len;
	while (len > 0 && host[len - 1] == '.')
		host[--len] = '\0';
	if (len == 0) {
		*why = "url has no host";
		goto out;
	}
	if (is_localhost_name(host, len)) {
		static const unsigned char lo4[4] = {127, 0, 0, 1};
		static const unsigned char lo6[16] = {[15] = 1};
		if (blocking_rule(policy, AF_INET, lo4) && blocking_rule(policy, AF_INET6, lo6)) {
			*why = target_localhost_why;
			goto out;
		}
		rc = 0;
		goto out;
	}
	int dotted_quad = inet_pton(AF_INET, host, addr) == 1;
	if (!dotted_quad) {
		if (inet_aton(host, &v4) == 0) {
			rc = 0; /* a name: resolved and checked at delivery, not now */
			goto out;
		}
		memcpy(addr, &v4.s_addr, 4);
	}
	r = blocking_rule(policy, AF_INET, addr);
	if (r) {
		*why = r->url_why;
		goto out;
	}
	/* libcurl connects to an IPv4 literal only as a plain dotted quad; "127.0.0.1." (or
	 * any form libcurl left as it was) it takes for a name and asks the resolver about,
	 * which fails at every attempt after sending a query off the machine */
	if (!dotted_quad || written_len != len) {
		*why = target_address_as_name_why;
		goto out;
	}
	rc = 0;
out:
	return rc;
}

static int ascii_only(const char *text)
{
	for (const unsigned char *c = (const unsigned char *)text; *c; c++)
		if (*c >= 0x80)
			return 0;
	return 1;
}

int target_url_check(const char *url, const struct target_policy *policy, const char **why)
{
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL, *fragment = NULL;
	char *port = NULL;
	int rc = -1;

	if (strlen(url) > TARGET_URL_MAX) {
		*why = "url is longer than 2048 bytes";
		goto out;
	}
	for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
		if (*p <= 0x20 || *p == 0x7f) {
			*why = "url contains spaces or control characters";
			goto out;
		}
	}
	if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0) {
		*why = "url must be an absolute http:// or https:// URL";
		goto out;
	}
	/* libcurl reads "http:///a" as host "a", as browsers do; a URL with an empty
	 * authority is a typo, not a host */
	const char *authority = url + (url[4] == ':' ? 7 : 8);
	if (*authority == '/' || *authority == '?' || *authority == '\0') {
		*why = "url has no host";
		goto out;
	}
	u = curl_url();
	if (!u) {
		*why = "out of memory";
		goto out;
	}
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
		*why = "url is not a valid URL";
		goto out;
	}
	if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
		*why = "url must be an absolute http:// or https:// URL";
		goto out;
	}
	if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0') {
		*why = "url has no host";
		goto out;
	}
	/* A Unicode name is checked as the ASCII name libcurl connects to (IDNA, which
	 * needs a UTF-8 LC_CTYPE, as main sets): "１２７.0.0.1" is 127.0.0.1 and
	 * "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ" localhost, and a name IDNA refuses could never be reached. */
	if (!ascii_only(host)) {
		curl_free(host);
		host = NULL;
		if (curl_url_get(u, CURLUPART_HOST, &host, CURLU_PUNYCODE) != CURLUE_OK ||
		    !ascii_only(host)) {
			*why = "url has a host name that is not a valid international domain name";
			goto out;
		}
	}
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
	    curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK) {
		*why = "url must not contain credentials; use custom headers for authentication";
		goto out;
	}
	/* (curl 7.88 reports no fragment for a bare "#": '#' can only start one) */
	if (curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK || strchr(url, '#')) {
		*why = "url must not contain a #fragment";
		goto out;
	}
	/* nothing listens on port 0: every attempt would fail to connect */
	if (curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK && strtol(port, NULL, 10) == 0) {
		*why = "url has port 0";
		goto out;
	}
	if (host_check(host, policy, why) != 0)
		goto out;
	rc = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(password);
	curl_free(fragment);
	curl_free(port);
	curl_url_cleanup(u);
	return rc;
}

/* The key from the URL's text: host as written (ASCII lower-cased), port as a number. */
static void host_key_from_text(const char *url, char *out)
{
	const size_t cap = TARGET_HOST_KEY_MAX;
	const char *p, *end, *host_end;
	long port;
	size_t n = 0;

	port = strncasecmp(url, "https:", 6) == 0 ? 443 : 80;
	p = strstr(url, "://");
	p = p ? p + 3 : url;
	end = p + strcspn(p, "/?#");
	for (const char *at = p; at < end; at++) /* no userinfo is accepted; skip it anyway */
		if (*at == '@')
			p = at + 1;
	if (*p == '[') { /* IPv6 literal: its colons are not the port's */
		host_end = memchr(p, ']', (size_t)(end - p));
		host_end = host_end ? host_end + 1 : end;
	} else {
		host_end = memchr(p, ':', (size_t)(end - p));
		if (!host_end)
			host_end = end;
	}
	if (host_end + 1 < end && *host_end == ':')
		port =
		    strtol(host_end + 1, NULL, 10); /* as a number, as curl keeps it: 080 is 80 */
	for (const char *c = p; c < host_end && n + 1 < cap; c++)
		out[n++] = (*c >= 'A' && *c <= 'Z') ? (char)(*c - 'A' + 'a') : *c;
	snprintf(out + n, cap - n, ":%ld", port);
}

/* 1 if the URL's host is written the one way curl writes it too: a DNS name of ASCII
 * letters, digits, '-' and '.' whose last label starts with a letter (so no IPv4
 * number), with no trailing dot; or a dotted quad of four decimal bytes without leading
 * zeros. Anything else (IPv6, other IPv4 spellings, %-escapes, trailing dots, non-ASCII)
 * is for curl's parser. */
static int host_written_plainly(const char *url)
{
	const char *p = strstr(url, "://");
	const char *h, *last;
	int parts = 1, digits = 0, value = 0, numeric = 1;

	if (!p)
		return 0;
	h = p + 3;
	last = h;
	for (p = h; *p && !strchr(":/?#", *p); p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '.') {
			if (digits == 0 || (digits > 1 && *(p - digits) == '0') || value > 255)
				numeric = 0;
			parts++;
			digits = value = 0;
			last = p + 1;
		} else if (c >= '0' && c <= '9') {
			digits++;
			value = value * 10 + (c - '0');
			if (value > 255)
				value = 256;
		} else if (isalpha(c) || c == '-') {
			numeric = 0;
		} else {
			return 0;
		}
	}
	if (p == h || p[-1] == '.')
		return 0;
	if (isalpha((unsigned char)*last))
		return 1;
	return numeric && parts == 4 && !(digits > 1 && *(p - digits) == '0') && value <= 255;
}

void target_host_key(const char *url, char *out)
{
	CURLU *u = NULL;
	char *host = NULL, *port = NULL;

	if (!url)
		url = "";
	if (host_written_plainly(url)) {
		host_key_from_text(url, out);
		return;
	}
	/* curl's own reading, the host it connects to and counts connections under: IPv4 in
	 * any spelling as a dotted quad, IPv6 compressed and without its zone, %-escapes
	 * decoded, a Unicode name as its punycode (IDNA, in the UTF-8 LC_CTYPE main sets;
	 * left as written if IDNA refuses it, as no attempt reaches it then). */
	u = curl_url();
	if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, CURLU_URLDECODE) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
		char *ascii = NULL;
		if (!ascii_only(host) &&
		    curl_url_get(u, CURLUPART_HOST, &ascii, CURLU_PUNYCODE) == CURLUE_OK) {
			curl_free(host);
			host = ascii;
		}
		size_t n = strlen(host);
		while (n > 0 && host[n - 1] == '.') /* example.com. is example.com */
			n--;
		for (size_t i = 0; i < n; i++)
			if (host[i] >= 'A' && host[i] <= 'Z')
				host[i] = (char)(host[i] - 'A' + 'a');
		snprintf(out, TARGET_HOST_KEY_MAX, "%.*s:%ld", (int)n, host,
		         strtol(port, NULL, 10));
	} else {
		host_key_from_text(url, out);
	}
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
}
