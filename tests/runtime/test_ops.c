/* Operating wapphook: the admin listener (healthz, metrics that move with traffic and parse
 * with Prometheus' own parser, bounded labels), JSON logs, systemd notifications, graceful
 * stop with a request in flight, and the stop timeout. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/clock.h"
#include "harness.h"

static char dir[256], notify_env[400];
static struct wh_proc srv, *cur = &srv; /* cur: the server the helpers talk to */
static int notify_fd = -1;
/* Every sd_notify datagram received, one per line. A thread reads the socket all the time,
 * as systemd does: the kernel queues only net.unix.max_dgram_qlen (10) datagrams, and a
 * sender past that blocks, so a test that read only when it looked would stall the
 * server's signal thread and stuck monitor in sd_notify (seen: a reload that never
 * finished after 3.4 s of unread watchdog pings). */
static char notes[65536];
static pthread_mutex_t notes_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notes_cv; /* monotonic: made by setup with wh_cond_init */
static pthread_t notes_reader;

static void *read_notes(void *arg)
{
    (void)arg;
    for (;;) {
        char d[512];
        ssize_t n = recv(notify_fd, d, sizeof d - 1, 0);
        if (n <= 0) return NULL; /* shut down by the teardown (sd_notify sends no empty datagram) */
        d[n] = '\0';
        pthread_mutex_lock(&notes_mu);
        strncat(notes, d, sizeof notes - strlen(notes) - 2);
        strcat(notes, "\n");
        pthread_cond_broadcast(&notes_cv);
        pthread_mutex_unlock(&notes_mu);
    }
}

/* A datagram socket bound to dir/name, as systemd's notify socket is; its path in *a. */
static int notify_socket_in_dir(const char *name, struct sockaddr_un *a)
{
    int fd;
    size_t d = strlen(dir), n = strlen(name);

    *a = (struct sockaddr_un){.sun_family = AF_UNIX};
    if (d + 1 + n >= sizeof a->sun_path) return -1;
    memcpy(a->sun_path, dir, d);
    a->sun_path[d] = '/';
    memcpy(a->sun_path + d + 1, name, n + 1);
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && bind(fd, (struct sockaddr *)a, sizeof *a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void manifest(const char *name, const char *server_extra, const char *hooks)
{
    char m[4096];
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n%s"
             "secrets: [{value: \"" TEST_SECRET "\"}]\nlua: {timeout_ms: 200}\nhooks:\n%s",
             server_extra, hooks);
    file_write(dir, name, m);
}

static int setup(void **state)
{
    struct sockaddr_un a;
    char hooks[2048];
    char *env[] = {notify_env, "WATCHDOG_USEC=600000", NULL};
    (void)state;
    wh_cond_init(&notes_cv);
    tmpdir_make(dir);
    if ((notify_fd = notify_socket_in_dir("notify.sock", &a)) < 0) return -1;
    snprintf(notify_env, sizeof notify_env, "NOTIFY_SOCKET=%s", a.sun_path);
    if (pthread_create(&notes_reader, NULL, read_notes, NULL)) return -1;
    file_write(dir, "ok.lua", "function handle(e) end\n");
    file_write(dir, "fail.lua", "function handle(e) return false, 'no' end\n");
    file_write(dir, "loop.lua", "function handle(e) while true do end end\n");
    snprintf(
        hooks, sizeof hooks,
        "  ok:\n    - lua: ok.lua\n  fail:\n    - lua: fail.lua\n  loop:\n    - lua: loop.lua\n"
        "  quiet: []\n  slow:\n    - plugin: %s/test_plugin.so\n      config: {sleep_ms: 1500}\n"
        "  stuck:\n    - plugin: %s/test_plugin.so\n      config: {sleep_ms: 4000}\n",
        TEST_PLUGINS, TEST_PLUGINS);
    manifest("hooks.yaml", "", hooks);
    return proc_start(&srv, path_in(dir, "hooks.yaml"), env, 2);
}

static int teardown(void **state)
{
    (void)state;
    if (srv.mu) /* not stopped by a test */
        proc_stop(&srv);
    shutdown(notify_fd, SHUT_RDWR); /* ends the reader's recv */
    pthread_join(notes_reader, NULL);
    close(notify_fd);
    return 0;
}

/* Waits until `want` has been received, or timeout. */
static int notified(const char *want, int timeout_ms)
{
    struct timespec until;
    int seen;

    wh_deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&notes_mu);
    while (!strstr(notes, want) && pthread_cond_timedwait(&notes_cv, &notes_mu, &until) == 0)
        ;
    seen = strstr(notes, want) != NULL;
    pthread_mutex_unlock(&notes_mu);
    return seen;
}

static void notes_clear(void)
{
    pthread_mutex_lock(&notes_mu);
    notes[0] = '\0';
    pthread_mutex_unlock(&notes_mu);
}

static char *get_admin(const char *path, long *status)
{
    static struct resp r;
    char url[400];
    snprintf(url, sizeof url, "%s%s", srv.admin, path);
    *status = http_request("GET", url, NULL, NULL, 0, NULL, &r);
    return r.body;
}

/* Fetches /metrics, validates it with Prometheus' parser; returns the parsed samples. */
static char *scrape(void)
{
    static char out[65536];
    long st;
    char *text = get_admin("/metrics", &st);
    char *argv[] = {"/usr/bin/python3", CHECK_METRICS, (char *)path_in(dir, "metrics.txt"), NULL};
    assert_int_equal(st, 200);
    file_write(dir, "metrics.txt", text);
    if (run_cli(argv, NULL, NULL, out, sizeof out) != 0)
        fail_msg("/metrics does not parse:\n%s\n--- text:\n%s", out, text);
    return out;
}

/* The value of one parsed sample line, e.g. sample(s, "wapphook_signature_failures_total{}"). */
static double sample(const char *samples, const char *series)
{
    char want[512];
    const char *p;
    snprintf(want, sizeof want, "\n%s ", series);
    p = strstr(samples, want);
    if (!p && strncmp(samples, want + 1, strlen(want + 1)) == 0) p = samples - 1;
    if (!p) return -1;
    return atof(p + strlen(want));
}

static void healthz_and_ready(void **state)
{
    long st;
    char *body;
    (void)state;
    assert_true(notified("READY=1", 5000));
    body = get_admin("/healthz", &st);
    assert_int_equal(st, 200);
    assert_string_equal(body, "{\"status\":\"ok\",\"generation\":1}");
    get_admin("/nope", &st);
    assert_int_equal(st, 404);
}

static void public_port_serves_no_admin_paths(void **state)
{
    struct resp r;
    char url[400];
    (void)state;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", srv.http_port);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &r), 404);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", srv.http_port);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &r), 404);
    snprintf(url, sizeof url, "%s/metrics", srv.admin);
    assert_int_equal(http_request("POST", url, NULL, "x", 1, NULL, &r), 405);
}

static long post_sig(const char *event, const char *sig_header)
{
    struct resp *r = malloc(sizeof *r);
    const char *h[4] = {sig_header, "Content-Type: application/json", NULL, NULL};
    char eh[100];
    long st;
    snprintf(eh, sizeof eh, "X-Wappcloud-Event: %s", event);
    h[2] = eh;
    st = http_request("POST", cur->http, h, "{}", 2, NULL, r);
    free(r);
    return st;
}

static long post_ok(const char *event)
{
    struct resp *r = malloc(sizeof *r);
    long st = post_signed(cur->http, event, "{}", NULL, r);
    free(r);
    return st;
}

static void metrics_follow_the_traffic(void **state)
{
    char *before, *after;
    const char *h_ok = "wapphook_handler_duration_seconds_count{handler=\"lua:ok.lua:handle\"}";
    (void)state;
    before = strdup(scrape());
    assert_int_equal(post_sig("ok", "X-Wappcloud-Signature: sha256=00"), 401);
    assert_int_equal(post_sig("ok", NULL), 401);
    assert_int_equal(post_ok("ok"), 200);
    assert_int_equal(post_ok("ok"), 200);
    assert_int_equal(post_ok("fail"), 500);
    assert_int_equal(post_ok("loop"), 500);
    assert_int_equal(post_ok("quiet"), 200);
    assert_int_equal(post_ok("never_configured"), 200);
#define DELTA(series)                                                                              \
    (sample(after, series) - (sample(before, series) < 0 ? 0 : sample(before, series)))
    after = scrape(); /* every answer was counted before it was sent */
    assert_true(DELTA("wapphook_signature_failures_total{}") == 2);
    assert_true(DELTA("wapphook_requests_total{code=\"401\",method=\"POST\"}") == 2);
    assert_true(DELTA("wapphook_requests_total{code=\"200\",method=\"POST\"}") == 4);
    assert_true(DELTA("wapphook_requests_total{code=\"500\",method=\"POST\"}") == 2);
    assert_true(DELTA("wapphook_events_total{result=\"ok\",type=\"ok\"}") == 2);
    assert_true(DELTA("wapphook_events_total{result=\"failed\",type=\"fail\"}") == 1);
    assert_true(DELTA("wapphook_events_total{result=\"failed\",type=\"loop\"}") == 1);
    assert_true(DELTA("wapphook_events_total{result=\"unrouted\",type=\"quiet\"}") == 1);
    assert_true(DELTA("wapphook_events_total{result=\"unrouted\",type=\"other\"}") == 1);
    assert_true(DELTA(h_ok) == 2);
    assert_true(DELTA("wapphook_handler_failures_total{handler=\"lua:fail.lua:handle\"}") == 1);
    assert_true(DELTA("wapphook_lua_timeouts_total{}") == 1);
    /* the loop ran about 200 ms: in the (0.1, 0.25] bucket, not in the 0.1 one */
    assert_true(sample(after, "wapphook_handler_duration_seconds_bucket{handler=\"lua:loop.lua:"
                              "handle\",le=\"0.1\"}") == 0);
    assert_true(sample(after, "wapphook_handler_duration_seconds_bucket{handler=\"lua:loop.lua:"
                              "handle\",le=\"0.5\"}") == 1);
    assert_true(sample(after, "wapphook_config_generation{}") == 1);
    free(before);
}

static void labels_are_bounded_and_secret_free(void **state)
{
    long st;
    char *text;
    (void)state;
    for (int i = 0; i < 30; i++) {
        char type[40];
        snprintf(type, sizeof type, "made_up_%d", i);
        assert_int_equal(post_ok(type), 200);
    }
    text = get_admin("/metrics", &st);
    assert_null(strstr(text, "made_up_"));
    assert_null(strstr(text, TEST_SECRET));
    assert_true(sample(scrape(), "wapphook_events_total{result=\"unrouted\",type=\"other\"}") >=
                30);
}

static void reloads_are_counted_and_notified(void **state)
{
    char *m;
    long st;
    size_t mark = proc_log_mark(&srv);
    (void)state;
    kill(srv.pid, SIGHUP);
    assert_true(proc_wait_log_since(&srv, mark, "\"msg\":\"reloaded\"", NULL, 10000));
    assert_true(notified("RELOADING=1", 5000));
    m = scrape();
    assert_true(sample(m, "wapphook_reloads_total{result=\"ok\"}") == 1);
    assert_true(sample(m, "wapphook_config_generation{}") == 2);
    assert_string_equal(get_admin("/healthz", &st), "{\"status\":\"ok\",\"generation\":2}");
    file_write(dir, "ok.lua", "function handle(e)\n  if then\nend\n");
    mark = proc_log_mark(&srv);
    kill(srv.pid, SIGHUP);
    assert_true(proc_wait_log_since(&srv, mark, "reload refused", NULL, 10000));
    assert_true(sample(scrape(), "wapphook_reloads_total{result=\"failed\"}") == 1);
    file_write(dir, "ok.lua", "function handle(e) end\n");
}

static void logs_are_json_lines(void **state)
{
    char *log = proc_log(&srv), *save = NULL;
    regex_t ts;
    int lines = 0;
    (void)state;
    assert_int_equal(regcomp(&ts,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    for (char *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t e;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &e);
        const char *lvl;
        if (!j || !json_is_object(j)) fail_msg("not a JSON object: %s", line);
        assert_int_equal(regexec(&ts, json_string_value(json_object_get(j, "ts")), 0, NULL, 0), 0);
        lvl = json_string_value(json_object_get(j, "level"));
        assert_true(lvl && (!strcmp(lvl, "debug") || !strcmp(lvl, "info") || !strcmp(lvl, "warn") ||
                            !strcmp(lvl, "error")));
        assert_non_null(json_string_value(json_object_get(j, "msg")));
        json_decref(j);
        lines++;
    }
    regfree(&ts);
    free(log);
    assert_true(lines > 20);
    /* and the access log has what an operator filters on */
    assert_true(proc_wait_log(&srv, "\"msg\":\"request\"", "\"event\":\"ok\"", 1000));
    assert_true(proc_wait_log(&srv, "\"remote\":\"127.0.0.1\"", "\"generation\":", 1000));
}

static long slow_status;

static void *slow_main(void *arg)
{
    (void)arg;
    slow_status = post_ok("slow");
    return NULL;
}

static long stuck_status;
static void *stuck_main(void *arg)
{
    (void)arg;
    stuck_status = post_ok("stuck");
    return NULL;
}

/* Under WatchdogSec= (WATCHDOG_USEC), wapphook pings while healthy and stops while a handler
 * is stuck (here: a 4 s plugin on a 200 ms budget), so systemd restarts a stuck process. */
static void watchdog_pings_stop_while_a_handler_is_stuck(void **state)
{
    pthread_t th;
    size_t mark = proc_log_mark(&srv);
    long st;

    (void)state;
    assert_true(notified("WATCHDOG=1", 5000));
    assert_int_equal(pthread_create(&th, NULL, stuck_main, NULL), 0);
    assert_true(proc_wait_log_since(&srv, mark, "handler stuck", "\"event\":\"stuck\"", 5000));
    notified("(nothing: let what is on its way arrive)", 50);
    notes_clear();
    assert_false(notified("WATCHDOG=1", 500)); /* 300 ms is the interval */
    assert_non_null(strstr(get_admin("/healthz", &st), "\"status\":\"degraded\""));
    assert_int_equal(st, 503);
    assert_true(
        proc_wait_log_since(&srv, mark, "stuck handler returned", "\"event\":\"stuck\"", 8000));
    pthread_join(th, NULL);
    assert_int_equal(stuck_status, 200);
    assert_true(notified("WATCHDOG=1", 2000));
    assert_non_null(strstr(get_admin("/healthz", &st), "\"status\":\"ok\""));
    assert_int_equal(st, 200);
}

static void sigterm_finishes_the_request_in_flight(void **state)
{
    pthread_t th;
    long long t0;
    size_t mark = proc_log_mark(&srv);
    (void)state;
    assert_int_equal(pthread_create(&th, NULL, slow_main, NULL), 0);
    assert_true(proc_wait_log_since(&srv, mark, "handling T", NULL, 10000)); /* in flight */
    t0 = now_ms();
    kill(srv.pid, SIGTERM);
    assert_true(proc_wait_log_since(&srv, mark, "no longer accepting", "\"in_flight\":1", 5000));
    {
        /* no new connection is accepted any more: refused by the kernel, at once */
        struct resp r;
        char url[400];
        long long t1 = now_ms();
        snprintf(url, sizeof url, "%s?challenge=late", srv.http);
        assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &r), 0);
        assert_int_equal(r.curl_code, 7); /* CURLE_COULDNT_CONNECT, not accepted then reset */
        assert_true(now_ms() - t1 < 500);
    }
    pthread_join(th, NULL);
    assert_int_equal(slow_status, 200);
    assert_int_equal(proc_stop(&srv), 0); /* exit status 0 */
    assert_true(now_ms() - t0 < 5000);
    assert_true(notified("STOPPING=1", 1000));
}

static void stop_timeout_is_enforced(void **state)
{
    struct wh_proc p2;
    char hooks[1024];
    pthread_t th;
    long long t0;
    (void)state;
    snprintf(hooks, sizeof hooks,
             "  slow:\n    - plugin: %s/test_plugin.so\n      config: {sleep_ms: 3000}\n",
             TEST_PLUGINS);
    manifest("short.yaml", "  shutdown_timeout_ms: 300\n", hooks);
    assert_int_equal(proc_start(&p2, path_in(dir, "short.yaml"), NULL, 2), 0);
    cur = &p2;
    assert_int_equal(pthread_create(&th, NULL, slow_main, NULL), 0);
    assert_true(proc_wait_log(&p2, "handling T", NULL, 10000));
    t0 = now_ms();
    assert_int_equal(proc_stop(&p2), 1); /* the bound was hit: exit 1, promptly */
    assert_true(now_ms() - t0 < 2500);
    pthread_join(th, NULL);
    assert_int_equal(slow_status, 0); /* that request was cut, and the sender will retry */
    cur = &srv;
}

/* systemd that does not read (its queue full): reloads and stops still happen, each
 * notification given up after a bounded wait with a warning, never a hang. */
static void an_unread_notify_socket_holds_nothing_up(void **state)
{
    struct wh_proc p3;
    struct sockaddr_un a;
    char env_sock[400], *env[] = {env_sock, "WATCHDOG_USEC=600000", NULL};
    int rx, tx, queued = 0;
    long long t0;
    size_t mark;
    (void)state;
    assert_true((rx = notify_socket_in_dir("deaf.sock", &a)) >= 0);
    snprintf(env_sock, sizeof env_sock, "NOTIFY_SOCKET=%s", a.sun_path);
    manifest("deaf.yaml", "", "  ok:\n    - lua: ok.lua\n");
    assert_int_equal(proc_start(&p3, path_in(dir, "deaf.yaml"), env, 2), 0);
    /* fill the receiver's queue, as a systemd that stopped reading would have it */
    tx = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_int_equal(connect(tx, (struct sockaddr *)&a, sizeof a), 0);
    while (send(tx, "X=1", 3, 0) == 3)
        queued++;
    assert_true(errno == EAGAIN && queued > 0);
    mark = proc_log_mark(&p3);
    t0 = now_ms();
    kill(p3.pid, SIGHUP);
    assert_true(proc_wait_log_since(&p3, mark, "\"msg\":\"reloaded\"", NULL, 5000));
    assert_true(proc_wait_log_since(&p3, mark, "notification not delivered", "RELOADING=1", 100));
    assert_int_equal(proc_stop(&p3), 0);
    assert_true(now_ms() - t0 < 5000); /* two waits of 1 s for the reload, one for the stop */
    close(tx);
    close(rx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(healthz_and_ready),
        cmocka_unit_test(public_port_serves_no_admin_paths),
        cmocka_unit_test(metrics_follow_the_traffic),
        cmocka_unit_test(labels_are_bounded_and_secret_free),
        cmocka_unit_test(reloads_are_counted_and_notified),
        cmocka_unit_test(logs_are_json_lines),
        cmocka_unit_test(watchdog_pings_stop_while_a_handler_is_stuck),
        cmocka_unit_test(sigterm_finishes_the_request_in_flight),
        cmocka_unit_test(stop_timeout_is_enforced),
        cmocka_unit_test(an_unread_notify_socket_holds_nothing_up),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
