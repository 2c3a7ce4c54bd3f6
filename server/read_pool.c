/*
 * read_pool.c - the threads that run the API's reads (see read_pool.h).
 *
 * Invariants: the queue (a FIFO through next) holds `queued` jobs, at most
 * READ_POOL_QUEUE_MAX, and is touched only under lock; once `stopping` is set no job is
 * added, and the threads leave only when the queue is empty, so every job queued runs.
 */
#include "read_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define READ_POOL_THREADS_MAX 16

struct read_job {
	void (*work)(void *arg);
	void *arg;
	struct read_job *next;
};

struct read_pool {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct read_job *head, *tail;
	int queued;
	int stopping;
	pthread_t threads[READ_POOL_THREADS_MAX];
	int nthreads;
};

/* Reads run this much nicer than the rest of the relay: when the cores are busy, ingest
 * and delivery go first, and a dashboard paging the log slows down instead of them.
 * Linux keeps a nice value per thread; raising one's own needs no privilege. */
#define READ_POOL_NICE 10

static void lower_own_priority(void)
{
	id_t tid = (id_t)syscall(SYS_gettid);
	errno = 0;
	int prio = getpriority(PRIO_PROCESS, tid);
	if (prio == -1 && errno != 0)
		return;
	prio += READ_POOL_NICE;
	setpriority(PRIO_PROCESS, tid, prio > 19 ? 19 : prio); /* best effort */
}

static void *read_main(void *arg)
{
	struct read_pool *p = arg;

	lower_own_priority();
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->head && !p->stopping)
			pthread_cond_wait(&p->wake, &p->lock);
		struct read_job *job = p->head;
		if (!job)
			break; /* stopping, and nothing left */
		p->head = job->next;
		if (!p->head)
			p->tail = NULL;
		p->queued--;
		pthread_mutex_unlock(&p->lock);
		job->work(job->arg);
		free(job);
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

struct read_pool *read_pool_start(int threads)
{
	struct read_pool *p = calloc(1, sizeof(*p));

	if (!p) {
		fprintf(stderr, "hookrelay: read pool: out of memory\n");
		return NULL;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wake, NULL);
	if (threads > READ_POOL_THREADS_MAX)
		threads = READ_POOL_THREADS_MAX;
	for (int i = 0; i < threads; i++) {
		if (pthread_create(&p->threads[p->nthreads], NULL, read_main, p) != 0)
			break;
		pthread_setname_np(p->threads[p->nthreads], "hr-read");
		p->nthreads++;
	}
	if (p->nthreads == 0) {
		fprintf(stderr, "hookrelay: read pool: cannot start a thread\n");
		read_pool_stop(p);
		return NULL;
	}
	return p;
}

int read_pool_submit(struct read_pool *p, void (*work)(void *arg), void *arg)
{
	struct read_job *job = malloc(sizeof(*job));

	if (!job)
		return -1;
	*job = (struct read_job){work, arg, NULL};
	pthread_mutex_lock(&p->lock);
	if (p->stopping || p->queued >= READ_POOL_QUEUE_MAX) {
		pthread_mutex_unlock(&p->lock);
		free(job);
		return -1;
	}
	if (p->tail)
		p->tail->next = job;
	else
		p->head = job;
	p->tail = job;
	p->queued++;
	pthread_cond_signal(&p->wake);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

void read_pool_stop(struct read_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = 1;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->wake);
	pthread_mutex_destroy(&p->lock);
	free(p);
}
