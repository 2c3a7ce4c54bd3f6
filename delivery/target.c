/*
 * target.c - subscription URL rules, parsed with libcurl's own URL parser so that what
 * we accept is exactly what the sender will connect to.
 */
#include "target.h"

#include <curl/curl.h>
#include <string.h>
#include <strings.h>

int target_url_check(const char *url, const char **why)
{
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL, *fragment = NULL;
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
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
	    curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK) {
		*why = "url must not contain credentials; use custom headers for authentication";
		goto out;
	}
	if (curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK) {
		*why = "url must not contain a #fragment";
		goto out;
	}
	rc = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(password);
	curl_free(fragment);
	curl_url_cleanup(u);
	return rc;
}
