/*
 * delivery.c - frees the job and result records that cross the delivery/ <-> store
 * boundary (delivery.h).
 *
 * Invariants: a job owns url, event_id, body, secrets and headers_json; a result owns
 * response_snippet; each is malloc'd or NULL. Both free functions accept NULL.
 * Threads: called by whichever thread owns the record at that moment.
 */
#include "delivery.h"

#include <stdlib.h>

void delivery_job_free(struct delivery_job *job)
{
	if (job == NULL)
		return;
	free(job->url);
	free(job->event_id);
	free(job->body);
	free(job->secrets);
	free(job->headers_json);
	free(job);
}

void delivery_result_free(struct delivery_result *res)
{
	if (res == NULL)
		return;
	free(res->response_snippet);
	free(res);
}
