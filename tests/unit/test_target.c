/*
 * test_target.c - the SSRF guard (delivery/target.c) and its hook in the sender.
 *
 * Tables drive the address rules (every blocked range, both edges where it matters,
 * IPv6 wrappers of IPv4), the allow-list, policy parse errors, and target_url_check
 * over IPv4 spellings, IPv6 literals and localhost names. A libcurl check pins what
 * this machine's libcurl does with numeric IPv4 hosts, which target.c relies on.
 *
 * The delivery-time hook is proved on a real socket: a listening TCP socket on
 * 127.0.0.1, port 0, that nobody accepts on. With a policy that blocks loopback the
 * sender must fail the job with "blocked: ..." and the socket's accept queue must stay
 * empty (a loopback connect() would sit there even unaccepted). With an allow-list
 * entry for it, the same job reaches it and gets its 204.
 *
 * Threads: one; the test drives the sender and plays the receiver in the same loop.
 * Traffic: only ever to 127.0.0.1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <curl/curl.h>

#include "check.h"
#include "clock.h"
#include "delivery.h"
#include "sender.h"
#include "target.h"

#define TEST_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define TEST_BODY "{\"test\":2432232314}"

/* ---- helpers ----------------------------------------------------------------------- */

/* Fills ss from an address literal; returns 0, or -1 if text is not one. */
static int test_sockaddr(const char *text, struct sockaddr_storage *ss)
{
	struct sockaddr_in *v4 = (struct sockaddr_in *)(void *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)(void *)ss;

	memset(ss, 0, sizeof *ss);
	if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(80);
		return 0;
	}
	if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(443);
		return 0;
	}
	return -1;
}

/* 1 if policy allows text; *why as target_address_allowed left it. */
static int test_allowed(const struct target_policy *policy, const char *text, const char **why)
{
	struct sockaddr_storage ss;

	*why = NULL;
	if (test_sockaddr(text, &ss) != 0) {
		fprintf(stderr, "test bug: '%s' is not an address\n", text);
		return -1;
	}
	return target_address_allowed(policy, (const struct sockaddr *)(void *)&ss, why);
}

/* ---- the address table ------------------------------------------------------------- */

struct test_addr {
	const char *addr;
	const char *rule; /* substring of why when blocked; NULL: allowed */
};

static const struct test_addr test_addrs[] = {
    /* IPv4: each range and its neighbours */
    {"0.0.0.0", "unspecified address (0.0.0.0/8)"},
    {"0.255.255.255", "(0.0.0.0/8)"},
    {"1.0.0.0", NULL},
    {"9.255.255.255", NULL},
    {"10.0.0.0", "a private address (10.0.0.0/8)"},
    {"10.1.2.3", "a private address (10.0.0.0/8)"},
    {"10.255.255.255", "(10.0.0.0/8)"},
    {"11.0.0.0", NULL},
    {"100.63.255.255", NULL},
    {"100.64.0.0", "carrier-grade NAT address (100.64.0.0/10)"},
    {"100.127.255.255", "(100.64.0.0/10)"},
    {"100.128.0.0", NULL},
    {"126.255.255.255", NULL},
    {"127.0.0.1", "a loopback address (127.0.0.0/8)"},
    {"127.0.0.2", "(127.0.0.0/8)"},
    {"127.255.255.255", "(127.0.0.0/8)"},
    {"128.0.0.0", NULL},
    {"169.253.255.255", NULL},
    {"169.254.0.1", "a link-local address (169.254.0.0/16)"},
    {"169.254.169.254", "a link-local address (169.254.0.0/16)"},
    {"169.255.0.0", NULL},
    {"172.15.255.255", NULL},
    {"172.16.0.0", "a private address (172.16.0.0/12)"},
    {"172.31.255.255", "(172.16.0.0/12)"},
    {"172.32.0.0", NULL},
    {"192.167.255.255", NULL},
    {"192.168.0.1", "a private address (192.168.0.0/16)"},
    {"192.168.255.255", "(192.168.0.0/16)"},
    {"192.169.0.0", NULL},
    {"191.255.255.255", NULL},
    {"192.0.0.192", "an IETF protocol assignment address (192.0.0.0/24)"},
    {"192.0.1.1", NULL},
    {"192.0.2.255", "a documentation address (192.0.2.0/24)"},
    {"198.17.255.255", NULL},
    {"198.18.0.0", "a benchmarking address (198.18.0.0/15)"},
    {"198.19.255.255", "(198.18.0.0/15)"},
    {"198.20.0.0", NULL},
    {"198.51.100.1", "a documentation address (198.51.100.0/24)"},
    {"203.0.113.255", "a documentation address (203.0.113.0/24)"},
    {"203.0.114.0", NULL},
    {"64:ff9b::192.0.0.192", "(64:ff9b::/96)"},
    {"223.255.255.255", NULL},
    {"224.0.0.1", "a multicast address (224.0.0.0/4)"},
    {"239.255.255.250", "(224.0.0.0/4)"},
    {"240.0.0.1", "a reserved or broadcast address (240.0.0.0/4)"},
    {"255.255.255.255", "(240.0.0.0/4)"},
    {"8.8.8.8", NULL},
    {"93.184.216.34", NULL},

    /* IPv6 */
    {"::", "an unspecified address (::)"},
    {"::1", "a loopback address (::1)"},
    {"fc00::1", "a private address (fc00::/7)"},
    {"fd12:3456:789a::1", "(fc00::/7)"},
    {"fbff:ffff::1", NULL},
    {"fe80::1", "a link-local address (fe80::/10)"},
    {"febf:ffff::1", "(fe80::/10)"},
    {"fec0::1", "a site-local address (fec0::/10)"},
    {"ff02::1", "a multicast address (ff00::/8)"},
    {"ff0e::1", "(ff00::/8)"},
    {"2606:4700:4700::1111", NULL},
    {"2001:4860:4860::8888", NULL},
    {"2001:db8::1", "a documentation address (2001:db8::/32)"},
    {"3fff:1::1", "a documentation address (3fff::/20)"},
    {"4000::1", NULL},
    {"2001:2::1", "a benchmarking address (2001:2::/48)"},
    {"2001:2:1::1", NULL},
    {"2001:10::1", "an ORCHID address (2001:10::/28)"},
    {"192.88.99.1", "a 6to4 relay anycast address (192.88.99.0/24)"},
    {"192.88.98.1", NULL},
    {"2001:db9::1", NULL},
    {"100::1", "a discard-only address (100::/64)"},
    {"100:0:0:1::1", NULL},

    /* IPv4 hidden in IPv6: blocked exactly when the embedded IPv4 is */
    {"::ffff:127.0.0.1", "IPv4-mapped address (::ffff:0:0/96)"},
    {"::ffff:7f00:2", "(::ffff:0:0/96)"},
    {"::ffff:10.0.0.1", "(::ffff:0:0/96)"},
    {"::ffff:169.254.169.254", "(::ffff:0:0/96)"},
    {"::ffff:0.0.0.0", "(::ffff:0:0/96)"},
    {"::ffff:8.8.8.8", NULL},
    {"::ffff:0:127.0.0.1", "IPv4-translated address (::ffff:0:0:0/96)"},
    {"::ffff:0:a00:1", "(::ffff:0:0:0/96)"},
    {"::ffff:0:8.8.8.8", NULL},
    {"::127.0.0.1", "IPv4-compatible address (::/96)"},
    {"::10.0.0.1", "(::/96)"},
    {"::2", "(::/96)"}, /* 0.0.0.2 */
    {"::8.8.8.8", NULL},
    {"64:ff9b::127.0.0.1", "a NAT64 address (64:ff9b::/96)"},
    {"64:ff9b::a9fe:a9fe", "(64:ff9b::/96)"},
    {"64:ff9b::8.8.8.8", NULL},
    {"64:ff9b:1::8.8.8.8", "local-use NAT64 address (64:ff9b:1::/48)"},
    {"64:ff9b:1:ffff::1", "(64:ff9b:1::/48)"},
    {"2002:7f00:1::", "a 6to4 address (2002::/16)"},
    {"2002:a9fe:a9fe::1", "(2002::/16)"},
    {"2002:c0a8:101::1", "(2002::/16)"},
    {"2002:808:808::1", NULL},
    {"2001::1", "a Teredo address (2001::/32)"},
    {"2001:0:4136:e378:8000:63bf:3fff:fdd2", "(2001::/32)"},
};

static void test_default_rules(void)
{
	for (size_t i = 0; i < sizeof test_addrs / sizeof test_addrs[0]; i++) {
		const struct test_addr *t = &test_addrs[i];
		const char *why = NULL;
		int ok = test_allowed(NULL, t->addr, &why);
		int good = t->rule ? ok == 0 && why && strstr(why, t->rule) != NULL : ok == 1;

		if (!good)
			fprintf(stderr, "  address %s: allowed=%d why=%s (want %s)\n", t->addr, ok,
			        why ? why : "-", t->rule ? t->rule : "allowed");
		CHECK(good);
	}
}

static void test_allow_private_allows_all(void)
{
	struct target_policy p;
	char why[TARGET_WHY_MAX];
	const char *w;

	CHECK(target_policy_parse(NULL, 1, &p, why, sizeof why) == 0);
	for (size_t i = 0; i < sizeof test_addrs / sizeof test_addrs[0]; i++)
		CHECK(test_allowed(&p, test_addrs[i].addr, &w) == 1);
}

static void test_other_family(void)
{
	struct sockaddr_un un;
	const char *why = NULL;

	memset(&un, 0, sizeof un);
	un.sun_family = AF_UNIX;
	snprintf(un.sun_path, sizeof un.sun_path, "/tmp/x");
	CHECK(target_address_allowed(NULL, (const struct sockaddr *)(void *)&un, &why) == 0);
	CHECK(why && strstr(why, "not an IPv4 or IPv6") != NULL);
}

/* ---- allow-lists ------------------------------------------------------------------- */

struct test_allow {
	const char *addr;
	int allowed;
};

static void test_allow_list(void)
{
	static const struct test_allow cases[] = {
	    {"127.0.0.1", 1},        {"127.0.0.2", 0},        {"10.20.0.1", 1},
	    {"10.20.255.255", 1},    {"10.21.0.0", 0},        {"10.19.255.255", 0},
	    {"192.168.1.5", 1},      {"192.168.1.6", 0},      {"fd00::1", 1},
	    {"fdff:ffff::1", 1},     {"fc00::1", 0},          {"::1", 0},
	    {"::ffff:127.0.0.1", 1}, {"::ffff:127.0.0.2", 0}, {"64:ff9b::a14:1", 1},
	    {"2002:a14:5::1", 1},    {"169.254.169.254", 0},  {"fe80::1", 1},
	    {"fe80::2", 0},          {"8.8.8.8", 1},          {"64:ff9b:1::1", 0},
	};
	struct target_policy p;
	char why[TARGET_WHY_MAX] = "";
	const char *w;

	CHECK(target_policy_parse(" 127.0.0.1/32, 10.20.0.0/16,192.168.1.5 ,fd00::/8,fe80::1", 0,
	                          &p, why, sizeof why) == 0);
	CHECK(p.ncidrs == 5 && p.allow_private == 0);
	CHECK(p.cidrs[2].family == AF_INET && p.cidrs[2].prefix == 32);
	CHECK(p.cidrs[4].family == AF_INET6 && p.cidrs[4].prefix == 128);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int ok = test_allowed(&p, cases[i].addr, &w);
		if (ok != cases[i].allowed)
			fprintf(stderr, "  allow-list %s: allowed=%d, want %d\n", cases[i].addr, ok,
			        cases[i].allowed);
		CHECK(ok == cases[i].allowed);
	}

	/* /0 entries and the empty list */
	CHECK(target_policy_parse("0.0.0.0/0", 0, &p, why, sizeof why) == 0);
	CHECK(test_allowed(&p, "127.0.0.1", &w) == 1 && test_allowed(&p, "::1", &w) == 0);
	CHECK(target_policy_parse("::/0", 0, &p, why, sizeof why) == 0);
	CHECK(test_allowed(&p, "::1", &w) == 1 && test_allowed(&p, "10.0.0.1", &w) == 0);
	CHECK(target_policy_parse("", 0, &p, why, sizeof why) == 0 && p.ncidrs == 0);
	CHECK(target_policy_parse("   ", 0, &p, why, sizeof why) == 0 && p.ncidrs == 0);
	CHECK(target_policy_parse(NULL, 0, &p, why, sizeof why) == 0 && p.ncidrs == 0);
}

static void test_policy_parse_errors(void)
{
	static const struct {
		const char *list;
		const char *why; /* substring */
	} cases[] = {
	    {"10.0.0.0/33", "'10.0.0.0/33'"},
	    {"::/129", "0..128"},
	    {"10.0.0.1/8", "bits set past its /8 prefix"},
	    {"fd00::1/8", "bits set past"},
	    {"127.0.0.1/0", "bits set past"},
	    {"banana", "'banana' is not an IPv4 or IPv6 address"},
	    {"10.0.0.0/", "bad prefix length"},
	    {"10.0.0.0/-1", "bad prefix length"},
	    {"10.0.0.0/8x", "bad prefix length"},
	    {"10.0.0.0/0008", "bad prefix length"},
	    {"10.0.0.0/8,,127.0.0.1", "empty entry"},
	    {",", "empty entry"},
	    {"10.0.0.0/8,", "empty entry"},
	    {"0x7f000001", "not an IPv4 or IPv6"}, /* only dotted quads in config */
	    {"127.1", "not an IPv4 or IPv6"},
	    {"0177.0.0.1", "not an IPv4 or IPv6"},
	    {"fe80::1%eth0", "not an IPv4 or IPv6"},
	    {"[::1]", "not an IPv4 or IPv6"},
	    {"10.0.0.0 /8", "not an IPv4 or IPv6"},
	    {"1234567890123456789012345678901234567890123456789012345678901234567890", "too long"},
	};
	struct target_policy p;
	char why[TARGET_WHY_MAX];
	char many[TARGET_ALLOW_MAX * 16 + 32];
	size_t off = 0;

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int rc;

		why[0] = '\0';
		rc = target_policy_parse(cases[i].list, 0, &p, why, sizeof why);
		if (rc != -1 || !strstr(why, cases[i].why))
			fprintf(stderr, "  parse '%s': rc=%d why='%s' (want '%s')\n", cases[i].list,
			        rc, why, cases[i].why);
		CHECK(rc == -1 && strstr(why, cases[i].why) != NULL);
		CHECK(p.ncidrs == 0);
	}
	/* one entry more than fits */
	for (int i = 0; i <= TARGET_ALLOW_MAX; i++)
		off += (size_t)snprintf(many + off, sizeof many - off, "%s10.0.%d.0/24",
		                        i ? "," : "", i);
	CHECK(target_policy_parse(many, 0, &p, why, sizeof why) == -1);
	CHECK(strstr(why, "more than") != NULL && p.ncidrs == 0);
	*strrchr(many, ',') = '\0'; /* exactly TARGET_ALLOW_MAX */
	CHECK(target_policy_parse(many, 0, &p, why, sizeof why) == 0 &&
	      p.ncidrs == TARGET_ALLOW_MAX);
}

/* ---- libcurl's URL parser on numeric IPv4 hosts ------------------------------------ */

/* target.c relies on libcurl turning these into dotted quads (and on inet_aton for what
 * it leaves). This pins the behaviour of the libcurl we build against. */
static void test_curl_normalizes_ipv4(void)
{
	static const struct {
		const char *url;
		const char *host;
	} cases[] = {
	    {"http://2130706433/", "127.0.0.1"},
	    {"http://0x7f000001/", "127.0.0.1"},
	    {"http://0177.0.0.1/", "127.0.0.1"},
	    {"http://127.1/", "127.0.0.1"},
	    {"http://0x7f.1/", "127.0.0.1"},
	    {"http://0x7f.0x0.0x0.0x1/", "127.0.0.1"},
	    {"http://0/", "0.0.0.0"},
	    {"http://017700000001/", "127.0.0.1"},
	    {"http://3232235777/", "192.168.1.1"},
	    {"http://%6cocalhost/", "localhost"},
	    {"http://[0:0:0:0:0:ffff:127.0.0.1]/", "[::ffff:127.0.0.1]"},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		CURLU *u = curl_url();
		char *host = NULL;
		int ok = u && curl_url_set(u, CURLUPART_URL, cases[i].url, 0) == CURLUE_OK &&
		         curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		         strcmp(host, cases[i].host) == 0;

		if (!ok)
			fprintf(stderr, "  libcurl host of %s: %s (want %s)\n", cases[i].url,
			        host ? host : "-", cases[i].host);
		CHECK(ok);
		curl_free(host);
		curl_url_cleanup(u);
	}
}

/* ---- target_url_check -------------------------------------------------------------- */

enum test_policy_kind { TP_DEFAULT, TP_LOOPBACK4, TP_PRIVATE };

struct test_url {
	enum test_policy_kind policy;
	const char *url;
	const char *why; /* substring of the refusal ("" for any); NULL: accepted */
};

#define HINT "use --allow-private-targets or --allow-targets for local testing"

static const struct test_url test_urls[] = {
    /* IPv4 in every spelling */
    {TP_DEFAULT, "http://127.0.0.1/", "url points at a loopback address (127.0.0.0/8); " HINT},
    {TP_DEFAULT, "http://127.0.0.1:8080/hook?x=1", "(127.0.0.0/8)"},
    /* port 0: nothing listens there */
    {TP_PRIVATE, "http://127.0.0.1:0/ok", "url has port 0"},
    {TP_PRIVATE, "http://127.0.0.1:00/ok", "url has port 0"},
    {TP_PRIVATE, "http://127.0.0.1:1/ok", NULL},
    {TP_PRIVATE, "http://127.0.0.1:65535/ok", NULL},
    {TP_DEFAULT, "https://127.255.0.1/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://2130706433/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://0x7f000001/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://0X7F000001/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://0177.0.0.1/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://017700000001/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://127.1/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://127.0.1/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://0x7f.1/", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://127.0.0.1./", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://0x7f.1./", "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://2130706433./", "(127.0.0.0/8)"},
    /* allowed addresses, but libcurl would resolve these as names, and fail */
    {TP_PRIVATE, "http://127.0.0.1.:8080/hook", "IPv4 address with a trailing dot"},
    {TP_PRIVATE, "http://0x7f.1./", "IPv4 address with a trailing dot"},
    {TP_PRIVATE, "http://2130706433../", "IPv4 address with a trailing dot"},
    {TP_DEFAULT, "http://8.8.8.8./", "IPv4 address with a trailing dot"},
    {TP_DEFAULT, "http://example.com./", NULL}, /* a name's trailing dot is its own */
    {TP_PRIVATE, "http://localhost./", NULL},
    {TP_DEFAULT, "http://0/", "an unspecified address (0.0.0.0/8)"},
    {TP_DEFAULT, "http://0.0.0.0:9000/", "(0.0.0.0/8)"},
    {TP_DEFAULT, "http://10.1.2.3/", "url points at a private address (10.0.0.0/8); " HINT},
    {TP_DEFAULT, "http://167837953/", "(10.0.0.0/8)"}, /* 10.1.1.1 */
    {TP_DEFAULT, "http://172.20.1.1/", "(172.16.0.0/12)"},
    {TP_DEFAULT, "http://192.168.0.1/", "(192.168.0.0/16)"},
    {TP_DEFAULT, "http://3232235777/", "(192.168.0.0/16)"},
    {TP_DEFAULT, "http://0xc0.0xa8.1.1/", "(192.168.0.0/16)"},
    {TP_DEFAULT, "http://169.254.169.254/latest/meta-data/", "link-local address (169.254.0.0/16)"},
    {TP_DEFAULT, "http://2852039166/", "(169.254.0.0/16)"},
    {TP_DEFAULT, "http://100.64.1.1/", "carrier-grade NAT address (100.64.0.0/10)"},
    {TP_DEFAULT, "http://224.0.0.251/", "multicast address (224.0.0.0/4)"},
    {TP_DEFAULT, "http://255.255.255.255/", "(240.0.0.0/4)"},
    {TP_DEFAULT, "http://4294967295/", "(240.0.0.0/4)"},

    /* IPv6 literals */
    {TP_DEFAULT, "http://[::1]/", "url points at a loopback address (::1); " HINT},
    {TP_DEFAULT, "http://[::1]:8080/hook", "(::1)"},
    {TP_DEFAULT, "http://[0:0:0:0:0:0:0:1]/", "(::1)"},
    {TP_DEFAULT, "http://[::]/", "unspecified address (::)"},
    {TP_DEFAULT, "http://[fe80::1%25eth0]/", "link-local address (fe80::/10)"},
    {TP_DEFAULT, "http://[fe80::1%25lo]:80/", "(fe80::/10)"},
    {TP_DEFAULT, "http://[FD00::ABCD]/", "private address (fc00::/7)"},
    {TP_DEFAULT, "http://[ff02::1]/", "multicast address (ff00::/8)"},
    {TP_DEFAULT, "http://[::ffff:127.0.0.1]/", "IPv4-mapped address (::ffff:0:0/96)"},
    {TP_DEFAULT, "http://[::ffff:7f00:1]/", "(::ffff:0:0/96)"},
    {TP_DEFAULT, "http://[0:0:0:0:0:ffff:a9fe:a9fe]/", "(::ffff:0:0/96)"},
    {TP_DEFAULT, "http://[::127.0.0.1]/", "IPv4-compatible address (::/96)"},
    {TP_DEFAULT, "http://[64:ff9b::7f00:1]/", "NAT64 address (64:ff9b::/96)"},
    {TP_DEFAULT, "http://[64:ff9b::10.0.0.1]/", "(64:ff9b::/96)"},
    {TP_DEFAULT, "http://[64:ff9b:1::808:808]/", "local-use NAT64 address (64:ff9b:1::/48)"},
    {TP_DEFAULT, "http://[2002:7f00:1::1]/", "6to4 address (2002::/16)"},
    {TP_DEFAULT, "http://[2002:a9fe:a9fe::]/", "(2002::/16)"},
    {TP_DEFAULT, "http://[2001::1]/", "Teredo address (2001::/32)"},
    {TP_DEFAULT, "http://192.0.0.192/", "IETF protocol assignment address (192.0.0.0/24)"},
    {TP_DEFAULT, "http://192.0.2.1/", "documentation address (192.0.2.0/24)"},
    {TP_DEFAULT, "http://198.18.0.1/", "benchmarking address (198.18.0.0/15)"},
    {TP_DEFAULT, "http://198.19.255.255/", "(198.18.0.0/15)"},
    {TP_DEFAULT, "http://198.51.100.7/", "documentation address (198.51.100.0/24)"},
    {TP_DEFAULT, "http://203.0.113.9/", "documentation address (203.0.113.0/24)"},
    {TP_DEFAULT, "http://[2001:db8::1]/", "documentation address (2001:db8::/32)"},
    {TP_DEFAULT, "http://[100::1]/", "discard-only address (100::/64)"},
    {TP_DEFAULT, "http://[::ffff:192.0.0.192]/", "(::ffff:0:0/96)"},
    {TP_DEFAULT, "http://[::ffff:0:7f00:1]/", "IPv4-translated address (::ffff:0:0:0/96)"},
    {TP_DEFAULT, "http://[::ffff:0:808:808]/", NULL},

    /* a Unicode host is checked as the name libcurl's IDNA makes of it */
    {TP_DEFAULT, "http://\xef\xbc\x91\xef\xbc\x92\xef\xbc\x97.0.0.1:18917/", "(127.0.0.0/8)"},
    {TP_DEFAULT,
     "http://127\xe3\x80\x82"
     "0\xe3\x80\x82"
     "0\xe3\x80\x82"
     "1/",
     "(127.0.0.0/8)"},
    {TP_DEFAULT, "http://\xef\xbc\x91\xef\xbc\x90.0.0.1/", "(10.0.0.0/8)"},
    {TP_DEFAULT,
     "http://\xe2\x93\x9b\xe2\x93\x9e\xe2\x93\x92\xe2\x93\x90\xe2\x93\x9b"
     "\xe2\x93\x97\xe2\x93\x9e\xe2\x93\xa2\xe2\x93\xa3/",
     "url points at localhost"},
    {TP_PRIVATE, "http://\xef\xbc\x91\xef\xbc\x92\xef\xbc\x97.0.0.1:18917/", NULL},
    {TP_DEFAULT,
     "http://b\xc3\xbc"
     "cher.example/",
     NULL},
    {TP_DEFAULT,
     "http://b%C3%BC"
     "cher.example/",
     NULL},
    {TP_DEFAULT,
     "http://a\xe2\x80\x8f"
     "b.example/",
     "not a valid international domain name"},
    {TP_DEFAULT, "http://xn--bcher-kva.example/", NULL},
    {TP_DEFAULT,
     "http://example.com/b\xc3\xbc"
     "cher?q=\xc3\xbc",
     NULL}, /* only the host */

    /* localhost names */
    {TP_DEFAULT, "http://localhost/", "url points at localhost"},
    {TP_DEFAULT, "http://localhost:8080/hook", "localhost (a loopback address"},
    {TP_DEFAULT, "http://LocalHost/", "localhost"},
    {TP_DEFAULT, "http://LOCALHOST./", "localhost"},
    {TP_DEFAULT, "http://localhost../", "localhost"},
    {TP_DEFAULT, "http://api.localhost/", "localhost"},
    {TP_DEFAULT, "http://a.b.LocalHost./x", "localhost"},
    {TP_DEFAULT, "http://%6cocalhost/", "localhost"},
    {TP_DEFAULT, "http://%4C%4F%43%41%4C%48%4F%53%54/", "localhost"},

    /* public addresses and names are fine; names are not resolved here */
    {TP_DEFAULT, "http://example.com/hook", NULL},
    {TP_DEFAULT, "https://8.8.8.8/", NULL},
    {TP_DEFAULT, "http://134744072/", NULL}, /* 8.8.8.8 */
    {TP_DEFAULT, "https://[2606:4700:4700::1111]/", NULL},
    {TP_DEFAULT, "http://[::ffff:8.8.8.8]/", NULL},
    {TP_DEFAULT, "http://[64:ff9b::808:808]/", NULL},
    {TP_DEFAULT, "http://[2002:808:808::1]/", NULL},
    {TP_DEFAULT, "http://localhost.example.com/", NULL},
    {TP_DEFAULT, "http://mylocalhost/", NULL},
    {TP_DEFAULT, "http://localhostx/", NULL},
    {TP_DEFAULT, "http://10.example.com/", NULL},
    {TP_DEFAULT, "http://0x7f.example/", NULL},
    {TP_DEFAULT, "http://192.0.3.1/", NULL},
    {TP_DEFAULT, "http://198.20.0.1/", NULL},
    {TP_DEFAULT, "http://198.51.101.1/", NULL},
    {TP_DEFAULT, "http://[2001:db9::1]/", NULL},

    /* the syntax rules still come first */
    {TP_DEFAULT, "ftp://127.0.0.1/", "absolute http:// or https://"},
    {TP_DEFAULT, "http://user:pw@example.com/", "credentials"},
    {TP_DEFAULT, "http://example.com/#frag", "fragment"},
    {TP_DEFAULT, "http://example.com/hook#", "fragment"},
    {TP_DEFAULT, "http://example.com#", "fragment"},
    {TP_DEFAULT, "http://exa mple.com/", "spaces"},
    {TP_DEFAULT, "http://:8080/", ""},
    {TP_DEFAULT, "http:///a", "url has no host"},
    {TP_DEFAULT, "https:///example.com/hook", "url has no host"},
    {TP_DEFAULT, "http://?x=1", "url has no host"},
    {TP_DEFAULT, "http://", "url has no host"},

    /* --allow-targets 127.0.0.1/32 */
    {TP_LOOPBACK4, "http://127.0.0.1:9000/", NULL},
    {TP_LOOPBACK4, "http://2130706433/", NULL},
    {TP_LOOPBACK4, "http://127.1/", NULL},
    {TP_LOOPBACK4, "http://[::ffff:127.0.0.1]/", NULL},
    {TP_LOOPBACK4, "http://localhost:9000/", NULL},
    {TP_LOOPBACK4, "http://127.0.0.2/", "(127.0.0.0/8)"},
    {TP_LOOPBACK4, "http://[::1]/", "(::1)"},
    {TP_LOOPBACK4, "http://10.0.0.1/", "(10.0.0.0/8)"},

    /* --allow-private-targets */
    {TP_PRIVATE, "http://127.0.0.1/", NULL},
    {TP_PRIVATE, "http://localhost/", NULL},
    {TP_PRIVATE, "http://[::1]/", NULL},
    {TP_PRIVATE, "http://169.254.169.254/", NULL},
    {TP_PRIVATE, "http://[fe80::1%25eth0]/", NULL},
    {TP_PRIVATE, "http://user:pw@127.0.0.1/", "credentials"},
};

static void test_url_check(void)
{
	struct target_policy loop4, priv;
	const struct target_policy *pick[3];
	char why[TARGET_WHY_MAX];

	CHECK(target_policy_parse("127.0.0.1/32", 0, &loop4, why, sizeof why) == 0);
	CHECK(target_policy_parse(NULL, 1, &priv, why, sizeof why) == 0);
	pick[TP_DEFAULT] = NULL;
	pick[TP_LOOPBACK4] = &loop4;
	pick[TP_PRIVATE] = &priv;

	for (size_t i = 0; i < sizeof test_urls / sizeof test_urls[0]; i++) {
		const struct test_url *t = &test_urls[i];
		const char *reason = NULL;
		int rc = target_url_check(t->url, pick[t->policy], &reason);
		int good = t->why ? rc == -1 && reason && strstr(reason, t->why) != NULL : rc == 0;

		if (!good)
			fprintf(stderr, "  url %s (policy %d): rc=%d why=%s (want %s)\n", t->url,
			        (int)t->policy, rc, reason ? reason : "-",
			        t->why ? t->why : "accepted");
		CHECK(good);
	}
}

/* An explicit default policy (parsed from nothing) behaves like NULL. */
static void test_empty_policy_is_default(void)
{
	struct target_policy p;
	char why[TARGET_WHY_MAX];
	const char *reason = NULL;

	CHECK(target_policy_parse(NULL, 0, &p, why, sizeof why) == 0);
	CHECK(target_url_check("http://10.0.0.1/", &p, &reason) == -1);
	CHECK(target_url_check("http://localhost/", &p, &reason) == -1);
	CHECK(target_url_check("http://example.com/", &p, &reason) == 0);
}

/* ---- the delivery-time hook -------------------------------------------------------- */

struct test_listener {
	int fd; /* listening, non-blocking, on 127.0.0.1 */
	int port;
};

static int test_listen(struct test_listener *l)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof sin;

	l->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0)
		return -1;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(l->fd, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(l->fd, 16) != 0 ||
	    getsockname(l->fd, (struct sockaddr *)&sin, &len) != 0) {
		close(l->fd);
		l->fd = -1;
		return -1;
	}
	l->port = ntohs(sin.sin_port);
	return 0;
}

/* 1 if a connection is waiting in the accept queue (or was accepted into *conn). */
static int test_pending(struct test_listener *l, int *conn)
{
	int c = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (c < 0)
		return 0;
	if (conn)
		*conn = c;
	else
		close(c);
	return 1;
}

static struct delivery_job *test_job(const char *url)
{
	struct delivery_job *job =
	    delivery_job_new(url, "evt_ssrf_1", (const unsigned char *)TEST_BODY,
	                     sizeof TEST_BODY - 1, TEST_SECRET, NULL);
	if (!job)
		return NULL;
	job->delivery_id = 1;
	job->subscription_id = 1;
	job->attempt = 1;
	return job;
}

/*
 * Runs one job through a sender with `targets` until it finishes (or 5 s pass). While
 * it runs, plays a minimal receiver on l: any connection that arrives is counted and,
 * once the request body is in, answered 204. Returns 1 with *done filled, else 0.
 */
static int test_send(const struct target_policy *targets, const char *url, struct test_listener *l,
                     int *connections, struct sender_done *done)
{
	struct sender_options so = {.max_total = 4,
	                            .max_per_host = 4,
	                            .timeout_ms = 3000,
	                            .user_agent = "hookrelay-test",
	                            .targets = targets};
	struct sender *s = sender_new(&so);
	struct delivery_job *job = test_job(url);
	int64_t deadline = clock_mono_ms() + 5000;
	int conn = -1, got = 0, answered = 0;
	char req[8192];
	size_t req_len = 0;

	*connections = 0;
	memset(done, 0, sizeof *done);
	if (!s || !job || sender_start(s, job) != 0) {
		delivery_job_free(job);
		goto out;
	}
	while (clock_mono_ms() < deadline) {
		sender_perform(s);
		if (sender_next(s, done)) {
			got = 1;
			break;
		}
		if (conn < 0 && test_pending(l, &conn))
			(*connections)++;
		if (conn >= 0 && !answered) {
			ssize_t n = read(conn, req + req_len, sizeof req - 1 - req_len);
			if (n > 0) {
				req_len += (size_t)n;
				req[req_len] = '\0';
			}
			if (strstr(req, TEST_BODY)) {
				static const char resp[] =
				    "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
				answered =
				    write(conn, resp, sizeof resp - 1) == (ssize_t)sizeof resp - 1;
			}
		}
		sender_wait(s, 20);
	}
out:
	if (conn >= 0)
		close(conn);
	sender_free(s);
	return got;
}

static void test_done_free(struct sender_done *done)
{
	delivery_job_free(done->job);
	delivery_result_free(done->result);
	memset(done, 0, sizeof *done);
}

static void test_hook_blocks(void)
{
	struct test_listener l = {-1, 0};
	struct target_policy strict, other;
	struct sender_done done;
	char why[TARGET_WHY_MAX], url[128];
	int connections = 0;

	CHECK(test_listen(&l) == 0);
	if (l.fd < 0)
		return;
	CHECK(target_policy_parse(NULL, 0, &strict, why, sizeof why) == 0);
	CHECK(target_policy_parse("127.0.0.2/32,::1", 0, &other, why, sizeof why) == 0);

	/* A literal loopback URL (registration would refuse it; the sender must too). */
	snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", l.port);
	CHECK(test_send(&strict, url, &l, &connections, &done));
	CHECK(done.result && done.complete == 0 && done.result->http_status == 0);
	CHECK(done.result && strcmp(done.result->error,
	                            "blocked: 127.0.0.1 is a loopback address (127.0.0.0/8)") == 0);
	if (done.result)
		fprintf(stderr, "  blocked literal: %s\n", done.result->error);
	CHECK(connections == 0);
	test_done_free(&done);

	/* An allow-list that covers other loopback addresses does not cover this one. */
	CHECK(test_send(&other, url, &l, &connections, &done));
	CHECK(done.result && done.complete == 0 &&
	      strncmp(done.result->error, "blocked: 127.0.0.1 is ", 22) == 0);
	CHECK(connections == 0);
	test_done_free(&done);

	/* A name: resolved by curl, every address it yields checked before connect. */
	snprintf(url, sizeof url, "http://localhost:%d/hook", l.port);
	CHECK(test_send(&strict, url, &l, &connections, &done));
	CHECK(done.result && done.complete == 0 &&
	      strncmp(done.result->error, "blocked: ", 9) == 0 &&
	      strstr(done.result->error, "loopback address") != NULL);
	if (done.result)
		fprintf(stderr, "  blocked name: %s\n", done.result->error);
	CHECK(connections == 0);
	test_done_free(&done);

	/* Nothing ever reached the socket, not even a connect left unaccepted. */
	CHECK(!test_pending(&l, NULL));

	/* Control: allow-listed, the same job is delivered. A blocked ::1 for "localhost"
	 * does not spoil the allowed 127.0.0.1. */
	CHECK(target_policy_parse("127.0.0.1/32", 0, &other, why, sizeof why) == 0);
	snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", l.port);
	CHECK(test_send(&other, url, &l, &connections, &done));
	CHECK(done.result && done.complete == 1 && done.result->http_status == 204 &&
	      done.result->error[0] == '\0');
	CHECK(connections == 1);
	test_done_free(&done);
	snprintf(url, sizeof url, "http://localhost:%d/hook", l.port);
	CHECK(test_send(&other, url, &l, &connections, &done));
	CHECK(done.result && done.complete == 1 && done.result->http_status == 204 &&
	      done.result->error[0] == '\0');
	CHECK(connections == 1);
	test_done_free(&done);

	/* And with no policy at all (the sender's test mode) nothing is checked. */
	snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", l.port);
	CHECK(test_send(NULL, url, &l, &connections, &done));
	CHECK(done.result && done.complete == 1 && done.result->error[0] == '\0');
	CHECK(connections == 1);
	test_done_free(&done);

	close(l.fd);
}

/* The key the per-host caps count under: the sender's queue and the store's claims must
 * agree on it, so one spelling of a host is one host. */
static void test_host_key(void)
{
	static const struct {
		const char *url, *key;
	} cases[] = {
	    {"https://Example.COM/hooks?x=1", "example.com:443"},
	    {"http://example.com", "example.com:80"},
	    {"http://example.com:8080/a#b", "example.com:8080"},
	    {"http://example.com:080/", "example.com:80"},
	    {"http://[::1]:9000/x", "[::1]:9000"},
	    {"http://[2001:DB8::1]/", "[2001:db8::1]:80"},
	    {"HTTPS://h.example:443", "h.example:443"},
	    {"http://10.0.0.7:8080/", "10.0.0.7:8080"},
	    /* spellings curl connects to as one host must share its key */
	    {"http://127.1:8080/", "127.0.0.1:8080"},
	    {"http://0x7f000001/", "127.0.0.1:80"},
	    {"http://2130706433/", "127.0.0.1:80"},
	    {"http://0177.0.0.01/", "127.0.0.1:80"},
	    {"http://[2606:4700:0:0::1]/", "[2606:4700::1]:80"},
	    {"http://[FE80::1%25eth0]:81/", "[fe80::1]:81"},
	    {"http://ex%41mple.com/", "example.com:80"},
	    {"http://Example.COM.:8080/", "example.com:8080"},
	    {"https://EXAMPLE.com:0443/", "example.com:443"},
	    {"http://a-b.example/", "a-b.example:80"},
	    /* curl connects to a Unicode name as its punycode */
	    {"http://B\xc3\xbc"
	     "cher.example/",
	     "xn--bcher-kva.example:80"},
	    {"http://xn--bcher-kva.example/", "xn--bcher-kva.example:80"},
	    {"http://\xef\xbc\x91\xef\xbc\x92\xef\xbc\x97.0.0.1:81/", "127.0.0.1:81"},
	    {NULL, ":80"},
	};
	char key[TARGET_HOST_KEY_MAX];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		target_host_key(cases[i].url, key);
		CHECK(strcmp(key, cases[i].key) == 0);
		if (strcmp(key, cases[i].key) != 0)
			fprintf(stderr, "  %s -> %s, not %s\n",
			        cases[i].url ? cases[i].url : "(null)", key, cases[i].key);
	}
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	setlocale(LC_CTYPE, "C.UTF-8"); /* as main: libcurl reads a Unicode host as UTF-8 */
	/* Loopback only: an inherited proxy must not get between us and the socket (the
	 * sender ignores proxies anyway; this keeps the curl_url checks plain too). */
	unsetenv("http_proxy");
	unsetenv("HTTP_PROXY");
	unsetenv("all_proxy");
	unsetenv("ALL_PROXY");
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "curl_global_init failed\n");
		return 1;
	}
	test_host_key();
	test_default_rules();
	test_allow_private_allows_all();
	test_other_family();
	test_allow_list();
	test_policy_parse_errors();
	test_curl_normalizes_ipv4();
	test_url_check();
	test_empty_policy_is_default();
	test_hook_blocks();
	curl_global_cleanup();
	return CHECK_DONE();
}
