/* batch.h, the combiner the destinations share, driven step by step: calls made while a round
 * trip is under way go together in the next one, each with its own result; a call whose
 * deadline passes while it waits leaves the queue with an error and is never sent; one sender
 * at a time; no more than BATCH_MAX calls in one round trip. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "batch.h"

/* The destination: send() records each batch, and the first one waits for the test's go. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int hold, in_send, sending_now, overlap;
    int sizes[16], n_sends;
    const char *sent[256];
    int n_sent;
} dst = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void send_fn(void *state, struct batch_job **jobs, int n, long long deadline)
{
    (void)state, (void)deadline;
    pthread_mutex_lock(&dst.mu);
    if (dst.sending_now++) dst.overlap = 1;
    dst.in_send++;
    pthread_cond_broadcast(&dst.cv);
    while (dst.hold)
        pthread_cond_wait(&dst.cv, &dst.mu);
    if (dst.n_sends < 16) dst.sizes[dst.n_sends] = n;
    dst.n_sends++;
    for (int i = 0; i < n; i++) {
        dst.sent[dst.n_sent++] = jobs[i]->ev->id;
        /* odd ids fail, with their own message */
        jobs[i]->rc =
            (jobs[i]->ev->id[strlen(jobs[i]->ev->id) - 1] - '0') % 2 ? WAPPHOOK_ERR : WAPPHOOK_OK;
        if (jobs[i]->rc) snprintf(jobs[i]->err, jobs[i]->err_len, "refused %s", jobs[i]->ev->id);
    }
    dst.sending_now--;
    pthread_mutex_unlock(&dst.mu);
}

static struct batch b;

struct caller {
    pthread_t t;
    struct wapphook_event ev;
    char id[16], err[128];
    int timeout_ms, rc;
};

static void *call(void *arg)
{
    struct caller *c = arg;
    struct batch_job j = {.ev = &c->ev, .err = c->err, .err_len = sizeof c->err};
    j.deadline_ms = batch_now_ms() + c->timeout_ms;
    c->rc = batch_submit(&b, &j, send_fn, NULL);
    return NULL;
}

static void start(struct caller *c, int n, int timeout_ms)
{
    snprintf(c->id, sizeof c->id, "e%d", n);
    c->ev.id = c->id;
    c->timeout_ms = timeout_ms;
    c->err[0] = 0;
    assert_int_equal(pthread_create(&c->t, NULL, call, c), 0);
}

static int queued(void)
{
    int n = 0;
    pthread_mutex_lock(&b.mu);
    for (struct batch_job *j = b.head; j; j = j->next)
        n++;
    pthread_mutex_unlock(&b.mu);
    return n;
}

static void wait_until_queued(int want)
{
    long long end = batch_now_ms() + 10000;
    while (queued() != want && batch_now_ms() < end)
        sched_yield();
    assert_int_equal(queued(), want);
}

static void hold_first_send(void)
{
    pthread_mutex_lock(&dst.mu);
    dst.hold = 1, dst.in_send = 0, dst.n_sends = 0, dst.n_sent = 0, dst.overlap = 0;
    pthread_mutex_unlock(&dst.mu);
}

static void wait_in_send(int want)
{
    pthread_mutex_lock(&dst.mu);
    while (dst.in_send < want)
        pthread_cond_wait(&dst.cv, &dst.mu);
    pthread_mutex_unlock(&dst.mu);
}

static void release(void)
{
    pthread_mutex_lock(&dst.mu);
    dst.hold = 0;
    pthread_cond_broadcast(&dst.cv);
    pthread_mutex_unlock(&dst.mu);
}

static int setup(void **s)
{
    (void)s;
    batch_init(&b);
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    batch_destroy(&b);
    return 0;
}

/* One call in flight, five more arrive: they go together in the second round trip, each
 * with its own result and message. */
static void waiting_calls_go_together(void **s)
{
    struct caller c[6];
    (void)s;
    hold_first_send();
    start(&c[0], 10, 10000);
    wait_in_send(1);
    for (int i = 1; i < 6; i++)
        start(&c[i], 10 + i, 10000);
    wait_until_queued(5);
    release();
    for (int i = 0; i < 6; i++)
        pthread_join(c[i].t, NULL);
    assert_int_equal(dst.n_sends, 2);
    assert_int_equal(dst.sizes[0], 1);
    assert_int_equal(dst.sizes[1], 5);
    assert_int_equal(dst.n_sent, 6);
    assert_false(dst.overlap);
    for (int i = 0; i < 6; i++) {
        char want[32];
        snprintf(want, sizeof want, "refused e%d", 10 + i);
        assert_int_equal(c[i].rc, i % 2 ? WAPPHOOK_ERR : WAPPHOOK_OK);
        if (i % 2) assert_string_equal(c[i].err, want);
    }
    assert_int_equal(queued(), 0);
}

/* A call whose budget ends while the round trip before it is still under way fails with
 * a readable message and is not sent later; the one with time left is. */
static void a_call_past_its_deadline_leaves_the_queue(void **s)
{
    struct caller first, late, patient;
    (void)s;
    hold_first_send();
    start(&first, 20, 10000);
    wait_in_send(1);
    start(&late, 22, 50);
    start(&patient, 24, 10000);
    pthread_join(late.t, NULL); /* returns while the first round trip is still held */
    assert_int_equal(late.rc, WAPPHOOK_ERR);
    assert_non_null(strstr(late.err, "timed out (the handler's timeout_ms)"));
    wait_until_queued(1);
    release();
    pthread_join(first.t, NULL);
    pthread_join(patient.t, NULL);
    assert_int_equal(first.rc, WAPPHOOK_OK);
    assert_int_equal(patient.rc, WAPPHOOK_OK);
    assert_int_equal(dst.n_sent, 2);
    for (int i = 0; i < dst.n_sent; i++)
        assert_string_not_equal(dst.sent[i], "e22");
}

/* More calls waiting than one round trip takes: BATCH_MAX, then the rest. */
static void at_most_batch_max_in_one_round_trip(void **s)
{
    enum { N = BATCH_MAX + 6 };
    static struct caller c[N + 1];
    (void)s;
    hold_first_send();
    start(&c[0], 100, 10000);
    wait_in_send(1);
    for (int i = 1; i <= N; i++)
        start(&c[i], 100 + 2 * i, 10000);
    wait_until_queued(N);
    release();
    for (int i = 0; i <= N; i++) {
        pthread_join(c[i].t, NULL);
        assert_int_equal(c[i].rc, WAPPHOOK_OK);
    }
    assert_int_equal(dst.n_sends, 3);
    assert_int_equal(dst.sizes[1], BATCH_MAX);
    assert_int_equal(dst.sizes[2], 6);
    assert_false(dst.overlap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(waiting_calls_go_together),
        cmocka_unit_test(a_call_past_its_deadline_leaves_the_queue),
        cmocka_unit_test(at_most_batch_max_in_one_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
