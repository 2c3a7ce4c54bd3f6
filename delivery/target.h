/*
 * target.h - which URLs and addresses hookrelay may deliver to (the SSRF guard).
 *
 * Two checks share one policy:
 * - at registration, target_url_check() checks the URL's syntax and, when its host is
 *   an IP literal (in any spelling libc or libcurl accepts) or a localhost name, the
 *   address itself. Other host names are not resolved here: DNS may change later.
 * - at delivery, the sender calls target_address_allowed() on every address libcurl is
 *   about to connect to (CURLOPT_OPENSOCKETFUNCTION), so a name that resolves, or is
 *   rebound, to a blocked address never gets a connection.
 *
 * Blocked unless the policy allows them (see target.c for the exact table): loopback,
 * private, link-local, unspecified, multicast, reserved/broadcast, carrier-grade NAT,
 * and IPv6 wrappers of a blocked IPv4 address (mapped, IPv4-compatible, NAT64, 6to4;
 * local-use NAT64 64:ff9b:1::/48 and Teredo 2001::/32 wholesale).
 *
 * Threads: a struct target_policy is filled once at start-up and read-only afterwards;
 * every function here is thread-safe and keeps no state.
 */
#ifndef HOOKRELAY_TARGET_H
#define HOOKRELAY_TARGET_H

#include <stddef.h>
#include <sys/socket.h>

#define TARGET_URL_MAX 2048 /* bytes in a subscription URL */
#define TARGET_ALLOW_MAX 64 /* CIDRs in an allow-list */
#define TARGET_WHY_MAX 160  /* bytes target_policy_parse() writes to why, NUL included */

/* One allow-listed network. */
struct target_cidr {
	int family;             /* AF_INET or AF_INET6 */
	unsigned char addr[16]; /* network address, network byte order; 4 bytes for v4 */
	int prefix;             /* bits: 0..32 for AF_INET, 0..128 for AF_INET6 */
};

/*
 * What may be delivered to beyond the public internet. A plain value, immutable once
 * parsed; callers keep it for as long as anything borrows it. A NULL policy pointer
 * means the default: nothing non-public is allowed.
 */
struct target_policy {
	int allow_private;                          /* 1: no address is blocked at all */
	int ncidrs;                                 /* entries used in cidrs */
	struct target_cidr cidrs[TARGET_ALLOW_MAX]; /* always allowed, even when blocked */
};

/*
 * Fills *out from allow_private and a comma-separated list of CIDRs (spaces around
 * entries ignored; a bare address means /32 or /128; NULL or "" means none), e.g.
 * "127.0.0.1/32, 10.20.0.0/16, fd00::/8". An entry with bits set past its prefix is an
 * error, not silently widened. Returns 0, or -1 with the reason (naming the entry) in
 * why, a buffer of whylen bytes; *out is then left with no CIDRs.
 */
int target_policy_parse(const char *cidr_list, int allow_private, struct target_policy *out,
                        char *why, size_t whylen);

/*
 * Returns 1 if policy lets hookrelay connect to sa (AF_INET or AF_INET6; the port is
 * ignored), else 0 with *why a literal naming the rule, e.g.
 * "a private address (10.0.0.0/8)". Other address families are never allowed.
 */
int target_address_allowed(const struct target_policy *policy, const struct sockaddr *sa,
                           const char **why);

/*
 * Checks that url is an absolute http(s) URL with a host, no credentials, no fragment,
 * at most TARGET_URL_MAX bytes and no control or space characters; and, under policy,
 * that its host is not a blocked IP literal (decimal, hex, octal and short IPv4
 * spellings included; IPv6 in brackets, zone ids ignored) nor localhost / *.localhost
 * (any case, trailing dots), which counts as 127.0.0.1 and ::1. Returns 0, or -1 with
 * *why a literal reason.
 */
int target_url_check(const char *url, const struct target_policy *policy, const char **why);

#define TARGET_HOST_KEY_MAX (TARGET_URL_MAX + 8) /* bytes target_host_key writes at most */

/*
 * Writes the key the per-host caps count requests under, "host:port", for url: an
 * absolute http(s) URL as target_url_check accepts them (NULL or anything else gives
 * some key, never an error). The host as curl connects to it: lower case, IPv4 in any
 * spelling as a dotted quad, IPv6 compressed and without a zone, %-escapes decoded, no
 * trailing dot; the scheme's port when the URL names none. So two spellings of one
 * receiver share one cap, as they share curl's connection cap (a Unicode host and its
 * punycode still count as two). out holds TARGET_HOST_KEY_MAX bytes; a longer key is
 * cut short. Pure.
 */
void target_host_key(const char *url, char *out);

#endif
