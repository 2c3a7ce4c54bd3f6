/*
 * delivery.c - frees the job and result records that cross the delivery/ <-> store
 * boundary (delivery.h).
 *
 * Invariants: a job is one allocation, its strings and body after the struct
 * (delivery_job_new is the only way to make one); a result owns response_snippet,
 * malloc'd or NULL. Both free functions accept NULL.
 * Threads: called by whichever thread owns the record at that moment.
 */
#include "delivery.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Copies len bytes of src and a NUL to *at, moves *at past them, returns the copy. */
static char *copy_in(char **at, const void *src, size_t len)
{
	char *copy = *at;

	memcpy(copy, src, len);
	copy[len] = '\0';
	*at += len + 1;
	return copy;
}

struct delivery_job *delivery_job_new(const char *url, const char *event_id,
                                      const unsigned char *body, size_t body_len,
                                      const char *secrets, const char *headers_json)
{
	size_t url_len = strlen(url), secrets_len = strlen(secrets);
	size_t id_len = event_id ? strlen(event_id) : 0;
	size_t headers_len = headers_json ? strlen(headers_json) : 0;
	size_t fixed =
	    sizeof(struct delivery_job) + url_len + secrets_len + id_len + headers_len + 4;

	if (body_len > SIZE_MAX - fixed - 1)
		return NULL;
	struct delivery_job *job = calloc(1, fixed + (body ? body_len + 1 : 0));
	if (!job)
		return NULL;
	char *at = (char *)(job + 1);
	job->url = copy_in(&at, url, url_len);
	job->secrets = copy_in(&at, secrets, secrets_len);
	if (event_id)
		job->event_id = copy_in(&at, event_id, id_len);
	if (headers_json)
		job->headers_json = copy_in(&at, headers_json, headers_len);
	if (body) {
		job->body = (unsigned char *)copy_in(&at, body, body_len);
		job->body_len = body_len;
	}
	return job;
}

void delivery_job_free(struct delivery_job *job)
{
	free(job);
}

void delivery_result_free(struct delivery_result *res)
{
	if (res == NULL)
		return;
	free(res->response_snippet);
	free(res);
}
