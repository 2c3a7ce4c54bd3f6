/*
 * fuzz_url.c - libFuzzer target for the SSRF guard (delivery/target.h): the input, cut
 * at its first NUL, is a subscription URL checked by target_url_check() under three
 * policies (the default, an allow-list, allow-private); its first bytes are also read as
 * raw IPv4/IPv6 addresses for target_address_allowed().
 *
 * Invariants (a violation is __builtin_trap()):
 * - a refusal sets *why to a non-empty reason;
 * - an accepted URL is at most TARGET_URL_MAX bytes, has no space or control byte, and
 *   starts with http:// or https:// (any case);
 * - policies only widen: accepted by default => accepted with the allow-list =>
 *   accepted with allow-private (likewise for addresses);
 * - a URL accepted by default whose host is a numeric address (as getaddrinfo with
 *   AI_NUMERICHOST reads it, i.e. as the resolver would connect) names an address
 *   target_address_allowed() also allows: no spelling of a blocked IP slips through;
 * - an IPv4 address blocked by default is also blocked as ::ffff:a.b.c.d.
 *
 * Single-threaded, like every libFuzzer target.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "target.h"

#define ALLOW_LIST "127.0.0.0/8, 10.0.0.0/8, fd00::/8, 192.168.1.1"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                                              \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

static struct target_policy listed;  /* ALLOW_LIST, set once */
static struct target_policy anyaddr; /* allow_private */
static int policies_ready;

static void policies_init(void)
{
	char why[TARGET_WHY_MAX];

	if (policies_ready)
		return;
	REQUIRE(target_policy_parse(ALLOW_LIST, 0, &listed, why, sizeof(why)) == 0);
	REQUIRE(target_policy_parse(NULL, 1, &anyaddr, why, sizeof(why)) == 0);
	policies_ready = 1;
}

static void check_syntax(const char *url)
{
	size_t len = strlen(url);

	REQUIRE(len <= TARGET_URL_MAX);
	for (size_t i = 0; i < len; i++)
		REQUIRE((unsigned char)url[i] > 0x20 && (unsigned char)url[i] != 0x7f);
	REQUIRE(strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0);
}

/* Returns 1 if the policy accepts url; checks why on refusal. */
static int url_ok(const char *url, const struct target_policy *policy)
{
	const char *why = NULL;
	int ok = target_url_check(url, policy, &why) == 0;

	if (ok)
		check_syntax(url);
	else
		REQUIRE(why != NULL && why[0] != '\0');
	return ok;
}

static int addr_ok(const struct target_policy *policy, const struct sockaddr *sa)
{
	const char *why = NULL;
	int ok = target_address_allowed(policy, sa, &why);

	REQUIRE(ok == 0 || ok == 1);
	REQUIRE(ok || (why != NULL && why[0] != '\0'));
	return ok;
}

/* The URL's host, if numeric, must be an allowed address (default policy). */
static void check_numeric_host(const char *url)
{
	CURLU *u = NULL;
	char *host = NULL;
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	char *h;
	size_t len;

	u = curl_url();
	if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		goto out;
	h = host;
	len = strlen(h);
	if (len >= 2 && h[0] == '[' && h[len - 1] == ']') {
		h[len - 1] = '\0';
		h++;
		h[strcspn(h, "%")] = '\0'; /* an IPv6 zone id */
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_NUMERICHOST;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(h, NULL, &hints, &res) != 0)
		goto out;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
		REQUIRE(addr_ok(NULL, ai->ai_addr));
out:
	if (res)
		freeaddrinfo(res);
	curl_free(host);
	curl_url_cleanup(u);
}

/* The input's first bytes as an IPv4 and an IPv6 address. */
static void check_addresses(const uint8_t *data, size_t size)
{
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
	struct sockaddr_in6 mapped;

	memset(&v4, 0, sizeof(v4));
	memset(&v6, 0, sizeof(v6));
	memset(&mapped, 0, sizeof(mapped));
	v4.sin_family = AF_INET;
	v6.sin6_family = AF_INET6;
	mapped.sin6_family = AF_INET6;
	memcpy(&v4.sin_addr, data, size < 4 ? size : 4);
	memcpy(&v6.sin6_addr, data, size < 16 ? size : 16);
	mapped.sin6_addr.s6_addr[10] = 0xff;
	mapped.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&mapped.sin6_addr.s6_addr[12], &v4.sin_addr, 4);

	REQUIRE(addr_ok(&anyaddr, (const struct sockaddr *)&v4));
	REQUIRE(addr_ok(&anyaddr, (const struct sockaddr *)&v6));
	if (addr_ok(NULL, (const struct sockaddr *)&v4))
		REQUIRE(addr_ok(&listed, (const struct sockaddr *)&v4));
	else
		REQUIRE(!addr_ok(NULL, (const struct sockaddr *)&mapped));
	if (addr_ok(NULL, (const struct sockaddr *)&v6))
		REQUIRE(addr_ok(&listed, (const struct sockaddr *)&v6));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *url = NULL;
	int by_default;

	policies_init();
	/* Sized to the input, so ASan sees any read past the string's end. */
	url = malloc(size + 1);
	if (!url)
		goto out;
	memcpy(url, data, size);
	url[size] = '\0';

	by_default = url_ok(url, NULL);
	if (by_default)
		REQUIRE(url_ok(url, &listed));
	if (url_ok(url, &listed))
		REQUIRE(url_ok(url, &anyaddr));
	if (by_default)
		check_numeric_host(url);
	check_addresses(data, size);
out:
	free(url);
	return 0;
}
