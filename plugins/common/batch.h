/*
 * batch.h: concurrent calls to one plugin instance combined into one round trip.
 *
 * wapphook calls a plugin's handle() from several threads at once (durable mode's
 * delivery.workers, sync mode's server threads). A destination answers a pipeline of N writes
 * for little more than the cost of one, so the calls that arrive while a round trip is under
 * way wait for it to end and then go together: the first of them sends them all (its own and
 * the others'), and each caller returns its own result. One batch is in flight at a time.
 *
 * Every caller keeps to its own budget: one still waiting at its deadline leaves the queue and
 * fails; a batch is sent with the earliest deadline among its calls. A plugin fills in the
 * caller's job (the event, where its error goes, its deadline and data of its own), and gives
 * batch_submit the function that sends a batch and sets each job's rc and err.
 *
 * Header-only, shared by the redis_stream and postgres plugins. (nats does without it: one
 * connection already carries concurrent requests, and libnats's asynchronous publishes measured
 * no faster than its synchronous ones; see docs/performance.md.)
 */
#ifndef WAPPHOOK_PLUGINS_BATCH_H
#define WAPPHOOK_PLUGINS_BATCH_H

#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <wapphook/plugin.h>

#define BATCH_MAX 64 /* calls per round trip at most */

struct batch_job {
    const struct wapphook_event *ev;
    char *err;
    size_t err_len;
    long long deadline_ms; /* CLOCK_MONOTONIC */
    void *data;            /* the plugin's own, prepared by the caller */
    int rc;                /* set by the batch's sender: WAPPHOOK_OK or WAPPHOOK_ERR */
    int state;             /* queued, taken, done */
    struct batch_job *next;
};

struct batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct batch_job *head, **tail;
    int sending;
};

enum { BATCH_QUEUED, BATCH_TAKEN, BATCH_DONE };

/* Sends jobs[0..n) in one round trip and sets every job's rc (and err when it fails). */
typedef void batch_send_fn(void *state, struct batch_job **jobs, int n, long long deadline_ms);

static inline long long batch_now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static inline void batch_init(struct batch *b)
{
    pthread_condattr_t a;

    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &a);
    pthread_condattr_destroy(&a);
    b->head = NULL;
    b->tail = &b->head;
    b->sending = 0;
}

static inline void batch_destroy(struct batch *b)
{
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
}

/* Fails jobs[0..n) with one message (say, no connection to send them on). */
static inline void batch_fail(struct batch_job **jobs, int n, const char *msg)
{
    for (int i = 0; i < n; i++) {
        snprintf(jobs[i]->err, jobs[i]->err_len, "%s", msg);
        jobs[i]->rc = WAPPHOOK_ERR;
    }
}

/* With mu held: a job whose deadline passed before any batch took it. */
static inline void batch_expire(struct batch_job *j)
{
    snprintf(j->err, j->err_len,
             "timed out (the handler's timeout_ms) waiting for the destination's previous round "
             "trip");
    j->rc = WAPPHOOK_ERR;
    j->state = BATCH_DONE;
}

/* With mu held: takes job j out of the queue. */
static inline void batch_unlink(struct batch *b, struct batch_job *j)
{
    struct batch_job **p = &b->head;

    while (*p != j)
        p = &(*p)->next;
    *p = j->next;
    if (b->tail == &j->next) b->tail = p;
}

/* Queues j and returns its rc once a batch that holds it was sent (by this thread or by
 * another), or WAPPHOOK_ERR when its deadline passes before any batch took it. */
static inline int batch_submit(struct batch *b, struct batch_job *j, batch_send_fn *send,
                               void *state)
{
    pthread_mutex_lock(&b->mu);
    j->state = BATCH_QUEUED;
    j->next = NULL;
    *b->tail = j;
    b->tail = &j->next;
    while (j->state != BATCH_DONE) {
        long long now = batch_now_ms();
        if (j->state == BATCH_QUEUED && now >= j->deadline_ms) {
            batch_unlink(b, j);
            batch_expire(j);
            break;
        }
        if (!b->sending && j->state == BATCH_QUEUED) {
            /* this thread sends the batch: every queued job with time left, up to BATCH_MAX;
             * one past its deadline fails here rather than shorten the others' budget */
            struct batch_job *jobs[BATCH_MAX];
            long long deadline = 0;
            int n = 0;

            while (b->head && n < BATCH_MAX) {
                struct batch_job *x = b->head;
                b->head = x->next;
                if (now >= x->deadline_ms) {
                    batch_expire(x);
                    continue;
                }
                x->state = BATCH_TAKEN;
                if (!n || x->deadline_ms < deadline) deadline = x->deadline_ms;
                jobs[n++] = x;
            }
            if (!b->head) b->tail = &b->head;
            b->sending = 1;
            pthread_mutex_unlock(&b->mu);
            if (n) send(state, jobs, n, deadline);
            pthread_mutex_lock(&b->mu);
            for (int i = 0; i < n; i++)
                jobs[i]->state = BATCH_DONE;
            b->sending = 0;
            pthread_cond_broadcast(&b->cv);
            continue;
        }
        if (j->state == BATCH_QUEUED) {
            struct timespec until = {.tv_sec = j->deadline_ms / 1000,
                                     .tv_nsec = (j->deadline_ms % 1000) * 1000000};
            pthread_cond_timedwait(&b->cv, &b->mu, &until);
        } else {
            pthread_cond_wait(&b->cv, &b->mu); /* taken: the sender keeps to its deadline */
        }
    }
    pthread_mutex_unlock(&b->mu);
    return j->rc;
}

#endif
