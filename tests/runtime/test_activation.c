/* Socket activation (docs/operations.md, "Restarts and upgrades that refuse no connection"): the
 * test holds the listening socket itself, as systemd does, and hands it to wapphook as descriptor 3
 * with LISTEN_FDS / LISTEN_PID. While four clients send signed POSTs continuously, the process is
 * replaced again and again — stopped and then started, or started and then stopped (a binary
 * upgrade) — with a slow request in flight across the stops: not one request may fail. A socket
 * that matches no listener is reported and closed. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static char dir[256], url[300];
static int listener = -1, port;
static struct wh_proc procs[2];
static bool running[2]; /* procs[i] started and not stopped */

static int setup(void **state)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    char m[2048];
    (void)state;
    tmpdir_make(dir);
    /* the supervisor's socket: bound and listening before any wapphook runs */
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) || listen(listener, 1024) ||
        getsockname(listener, (struct sockaddr *)&a, &len))
        return -1;
    port = ntohs(a.sin_port);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/webhook", port);
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:%d]\n  shutdown_timeout_ms: 10000\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "hooks:\n  t: []\n"
             "  slow:\n    - plugin: %s/test_plugin.so\n      config: {tag: S, sleep_ms: 700}\n",
             port, TEST_PLUGINS);
    file_write(dir, "hooks.yaml", m);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    close(listener);
    return 0;
}

/* --- continuous senders -------------------------------------------------------------------- */

static int senders_stop;
static long sent, failed;

static void *sender(void *arg)
{
    struct resp *r = malloc(sizeof *r);
    (void)arg;
    while (!__atomic_load_n(&senders_stop, __ATOMIC_ACQUIRE)) {
        /* a fresh connection each time, the way most webhook senders post */
        long st = post_signed(url, "t", "{\"n\":1}", NULL, r);
        if (st != 200) {
            printf("a request failed: status %ld, curl %d\n", st, r->curl_code);
            __atomic_add_fetch(&failed, 1, __ATOMIC_RELAXED);
        }
        __atomic_add_fetch(&sent, 1, __ATOMIC_RELAXED);
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL); /* the senders' pace (a few hundred a second each): ephemeral
                               * ports are not the subject here */
    }
    free(r);
    return NULL;
}

/* Until the senders have made n more requests. */
static void traffic_for(long n)
{
    assert_true(wait_count(&sent, __atomic_load_n(&sent, __ATOMIC_RELAXED) + n, 20000));
}

static long slow_status;
static void *slow_request(void *arg)
{
    struct resp r;
    (void)arg;
    slow_status = post_signed(url, "slow", "{\"n\":2}", NULL, &r);
    return NULL;
}

static void start_on_the_socket(struct wh_proc *p)
{
    running[p - procs] = true;
    assert_int_equal(proc_start_on(p, path_in(dir, "hooks.yaml"), NULL, 1, listener), 0);
    assert_int_equal(proc_wait_log(p, "listener handed over", NULL, 1000), 1);
    assert_int_equal(p->http_port, port);
}

#define REPLACEMENTS 6

static void stop_one(struct wh_proc *p)
{
    running[p - procs] = false;
    assert_int_equal(proc_stop(p), 0);
}

/* After the test, passed or not: a server left running would keep ctest waiting. */
static int stop_running(void **state)
{
    (void)state;
    __atomic_store_n(&senders_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2; i++)
        if (running[i]) {
            running[i] = false;
            proc_stop(&procs[i]);
        }
    return 0;
}

static void replacing_the_process_fails_no_request(void **state)
{
    pthread_t th[4], slow;
    int cur = 0, overlapped = 0, sequential = 0;
    (void)state;
    start_on_the_socket(&procs[cur]);
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, sender, NULL);
    traffic_for(100);
    for (int round = 0; round < REPLACEMENTS; round++) {
        struct wh_proc *old = &procs[cur], *next = &procs[1 - cur];
        size_t mark = proc_log_mark(old);

        /* a request in flight when the stop comes: it is answered, not dropped */
        pthread_create(&slow, NULL, slow_request, NULL);
        assert_int_equal(proc_wait_log_since(old, mark, "handling S", NULL, 5000), 1);
        if (round % 2) {
            /* a binary upgrade: the new process first, both accept, then the old stops */
            start_on_the_socket(next);
            stop_one(old);
            overlapped++;
        } else {
            /* systemctl restart: stop, then start; connections wait in the kernel's queue */
            stop_one(old);
            start_on_the_socket(next);
            sequential++;
        }
        pthread_join(slow, NULL);
        assert_int_equal(slow_status, 200);
        cur = 1 - cur;
        traffic_for(100);
    }
    __atomic_store_n(&senders_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    printf("socket activation: %d restarts and %d upgrades under 4 senders: %ld requests, "
           "%ld failed\n",
           sequential, overlapped, sent, failed);
    assert_int_equal(failed, 0);
    stop_one(&procs[cur]);
}

/* A socket for an address no listener names: reported, closed, and the listener binds its
 * own address as usual. */
static void a_socket_matching_no_listener_is_reported(void **state)
{
    struct wh_proc p;
    char m[512], u[300];
    struct resp r;
    (void)state;
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\nsecrets: [{value: \"" TEST_SECRET "\"}]\n"
             "hooks: {}\n");
    file_write(dir, "other.yaml", m);
    assert_int_equal(proc_start_on(&p, path_in(dir, "other.yaml"), NULL, 1, listener), 0);
    assert_int_equal(proc_wait_log(&p, "matches no listener", NULL, 1000), 1);
    assert_true(p.http_port != port);
    snprintf(u, sizeof u, "%s?challenge=own", p.http);
    assert_int_equal(http_request("GET", u, NULL, NULL, 0, NULL, &r), 200);
    assert_int_equal(proc_stop(&p), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(replacing_the_process_fails_no_request, stop_running),
        cmocka_unit_test(a_socket_matching_no_listener_is_reported),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
