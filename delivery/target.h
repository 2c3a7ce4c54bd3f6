/*
 * target.h - which URLs hookrelay may deliver to. Syntax checks for registration;
 * thread-safe, no state.
 */
#ifndef HOOKRELAY_TARGET_H
#define HOOKRELAY_TARGET_H

#define TARGET_URL_MAX 2048 /* bytes in a subscription URL */

/* Checks that `url` is an absolute http(s) URL with a host, no credentials, no
 * fragment, at most TARGET_URL_MAX bytes, and no control or space characters.
 * Returns 0, or -1 with *why a literal reason. */
int target_url_check(const char *url, const char **why);

#endif
