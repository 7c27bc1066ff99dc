/* Handlers that act (docs/handlers.md, "Handlers that act"), over real HTTP: a shared dictionary
 * counts exactly across worker threads, keeps its contents through SIGHUP, shows in /metrics, and
 * goes once a reloaded manifest no longer names it; exec: handlers and check's refusals. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static char dir[256];
static struct wh_proc srv;

static void manifest(const char *lua_extra)
{
    char m[2048];
    /* 16 clients queue for 4 workers here (max_inflight would shed the rest with 503) */
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n  threads: 4\n"
             "  max_inflight: 0\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "lua:\n  timeout_ms: 2000\n%s"
             "hooks:\n  count:\n    - lua: count.lua\n  check:\n    - lua: check.lua\n",
             lua_extra);
    file_write(dir, "hooks.yaml", m);
}

static long post(const char *event, const char *body)
{
    static __thread struct resp r;
    return post_signed(srv.http, event, body, NULL, &r);
}

static long count_one(long i)
{
    (void)i;
    return post("count", "{}") == 200;
}

static char *metrics(void)
{
    static struct resp r;
    char url[300];
    snprintf(url, sizeof url, "%s/metrics", srv.admin);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &r), 200);
    return r.body;
}

static void reload(void)
{
    size_t mark = proc_log_mark(&srv);
    kill(srv.pid, SIGHUP);
    assert_true(proc_wait_log_since(&srv, mark, "\"msg\":\"reloaded\"", NULL, 20000));
}

static void shared_dictionary_across_threads_and_reloads(void **state)
{
    long long deadline;
    char body[64];

    (void)state;
    tmpdir_make(dir);
    file_write(dir, "count.lua", "function handle(e) wapphook.shared.seen:incr('n', 1, 0) end\n");
    file_write(dir, "check.lua",
               "function handle(e) return wapphook.shared.seen:get('n') == e.payload.n,\n"
               "  'n is ' .. tostring(wapphook.shared.seen:get('n')) end\n");
    manifest("  shared: {seen: 1}\n");
    assert_int_equal(proc_start(&srv, path_in(dir, "hooks.yaml"), NULL, 2), 0);
    /* 64 increments from 16 clients on 4 threads, each with its own Lua states */
    assert_int_equal(run_parallel(16, count_one) + run_parallel(16, count_one) +
                         run_parallel(16, count_one) + run_parallel(16, count_one),
                     64);
    assert_int_equal(post("check", "{\"n\":64}"), 200);
    assert_non_null(strstr(metrics(), "wapphook_shared_bytes{dict=\"seen\"} "));
    /* a reload (new script code) keeps the contents */
    file_write(dir, "count.lua", "function handle(e) wapphook.shared.seen:incr('n', 10, 0) end\n");
    reload();
    assert_int_equal(post("count", "{}"), 200);
    snprintf(body, sizeof body, "{\"n\":%d}", 74);
    assert_int_equal(post("check", body), 200);
    /* a manifest that no longer names it: the dictionary goes with the old generation */
    file_write(dir, "count.lua", "function handle(e) end\n");
    file_write(dir, "check.lua", "function handle(e) return wapphook.shared.seen == nil end\n");
    manifest("");
    reload();
    assert_int_equal(post("check", "{}"), 500); /* no such dictionary: an error, not nil */
    for (deadline = now_ms() + 10000; now_ms() < deadline; usleep(20000))
        if (!strstr(metrics(), "dict=\"seen\"")) break;
    assert_null(strstr(metrics(), "dict=\"seen\""));
    assert_int_equal(proc_stop(&srv), 0);
}

/* The whole file, NUL-terminated (caller frees); "" if it cannot be read. */
static char *file_read(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = calloc(1, 65536);
    size_t n = f ? fread(buf, 1, 65535, f) : 0;

    if (f) fclose(f);
    buf[n] = '\0';
    return buf;
}

static void exe(const char *name, const char *content)
{
    file_write(dir, name, content);
    assert_int_equal(chmod(path_in(dir, name), 0755), 0);
}

static int processes_named(const char *pattern)
{
    char cmd[300], out[64] = "";
    FILE *f;
    snprintf(cmd, sizeof cmd, "pgrep -fc '%s'", pattern);
    f = popen(cmd, "r");
    if (!f) return -1;
    if (!fgets(out, sizeof out, f)) out[0] = '\0';
    pclose(f);
    return atoi(out);
}

static long post_slow(long i)
{
    (void)i;
    return post("slow", "{}");
}

/* exec: handlers, as an adnanh/webhook user would use them: the body on stdin, the event
 * in the environment and nothing of the server's, failures with their stderr, a command
 * past its budget ended with everything it started, exec.max_concurrent answered at once. */
static void exec_handlers(void **state)
{
    char m[2048], *body, *got;
    long long t0, deadline;
    long codes;
    char *env[] = {"SERVER_ONLY_SECRET=do-not-pass", NULL};

    (void)state;
    tmpdir_make(dir);
    exe("record.sh", "#!/bin/sh\ncat > \"$1.body\"\nenv | sort > \"$1.env\"\n");
    exe("fail.sh", "#!/bin/sh\necho 'first line of trouble' >&2\necho second >&2\nexit 3\n");
    exe("hang.sh", "#!/bin/sh\nsleep 31.7 &\nsleep 31.7\n");
    exe("slow.sh", "#!/bin/sh\nsleep 2\n"); /* long enough for both requests to meet */
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n  threads: 4\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "exec:\n  allow: [record.sh, fail.sh, hang.sh, slow.sh]\n  max_concurrent: 1\n"
             "hooks:\n"
             "  record:\n    - exec: [record.sh, %s/out]\n"
             "  fail:\n    - exec: [fail.sh]\n"
             "  hang:\n    - exec: [hang.sh]\n      timeout_ms: 300\n"
             "  slow:\n    - exec: [slow.sh]\n      timeout_ms: 10000\n",
             dir);
    file_write(dir, "hooks.yaml", m);
    assert_int_equal(proc_start(&srv, path_in(dir, "hooks.yaml"), env, 2), 0);
    assert_int_equal(post("record", "{\"data\":{\"text\":\"hello\"}}"), 200);
    got = file_read(path_in(dir, "out.body"));
    assert_string_equal(got, "{\"data\":{\"text\":\"hello\"}}");
    free(got);
    got = file_read(path_in(dir, "out.env"));
    if (!strstr(got, "WAPPHOOK_EVENT_TYPE=record\n") || !strstr(got, "WAPPHOOK_EVENT_ID=sync-") ||
        !strstr(got, "WAPPHOOK_RECEIVED_AT=") || strstr(got, "SERVER_ONLY_SECRET"))
        fail_msg("the command's environment: %s", got);
    free(got);
    assert_int_equal(post("fail", "{}"), 500);
    assert_true(proc_wait_log(&srv, "exit code 3: first line of trouble", "exec:fail.sh", 5000));
    t0 = now_ms();
    assert_int_equal(post("hang", "{}"), 500);
    assert_true(now_ms() - t0 < 3000);
    assert_true(proc_wait_log(&srv, "\"outcome\":\"timeout\"", "exec:hang.sh", 5000));
    for (deadline = now_ms() + 5000; processes_named("sleep 31[.]7") > 0 && now_ms() < deadline;)
        usleep(20000);
    assert_int_equal(processes_named("sleep 31[.]7"), 0); /* both sleeps: the whole group */
    /* two at once with max_concurrent 1: one runs, one is refused at once */
    codes = run_parallel(2, post_slow);
    assert_int_equal(codes, 200 + 500);
    assert_true(proc_wait_log(&srv, "busy: exec.max_concurrent", NULL, 5000));
    body = metrics();
    assert_non_null(
        strstr(body, "wapphook_exec_total{handler=\"exec:fail.sh\",result=\"failed\"} 1"));
    assert_non_null(
        strstr(body, "wapphook_exec_total{handler=\"exec:hang.sh\",result=\"timeout\"} 1"));
    assert_non_null(
        strstr(body, "wapphook_exec_total{handler=\"exec:slow.sh\",result=\"busy\"} 1"));
    /* the command's timeout is the exec result's, not a Lua one (no Lua handler ran) */
    assert_non_null(strstr(body, "\nwapphook_lua_timeouts_total 0\n"));
    assert_int_equal(proc_stop(&srv), 0);
}

/* check refuses what exec: cannot run, with FILE:LINE. */
static void check_refuses_bad_commands(void **state)
{
    static const struct {
        const char *yaml, *want;
    } cases[] = {
        {"exec: {allow: [ok.sh]}\nhooks:\n  t:\n    - exec: [other.sh]\n", ":6: exec: command"},
        {"exec: {allow: [ok.sh]}\nhooks:\n  t:\n    - exec: [ok.sh]\n  u:\n    - exec: "
         "[plain.txt]\n",
         "plain.txt: not executable"},
        {"exec: {allow: [missing.sh]}\nhooks: {}\n", ":3: exec.allow: command"},
        {"exec: {allow: [ok.sh]}\nhooks:\n  t:\n    - exec: ok.sh\n", "must be a list"},
    };
    char out[4096];
    char *argv[] = {(char *)WAPPHOOK_BIN, "check", "-c", NULL, NULL};

    (void)state;
    tmpdir_make(dir);
    exe("ok.sh", "#!/bin/sh\n");
    exe("other.sh", "#!/bin/sh\n");
    file_write(dir, "plain.txt", "not a program");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char m[1024];
        snprintf(m, sizeof m, "secrets: [{value: s}]\nlua: {}\n%s", cases[i].yaml);
        file_write(dir, "bad.yaml", m);
        argv[3] = (char *)path_in(dir, "bad.yaml");
        assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 1);
        if (!strstr(out, cases[i].want)) fail_msg("case %zu: %s", i, out);
    }
}

/* The shipped examples with make run's settings, against a real upstream as the messaging
 * API: incoming_message.lua answers through it with the token, status_update.lua ignores an
 * out-of-order update through its shared dictionary, notify.sh as an exec: handler, and an
 * API that fails makes the handler fail (the sender, or the spool, retries). */
static void the_examples_work(void **state)
{
    char m[4096], url[256], token[] = "WAPPCLOUD_API_TOKEN=tok-123", seen[65536], *got;
    char *env[] = {url, token, NULL};
    const char *src = PROJECT_SOURCE_DIR "/scripts";
    int port = upstream_start();

    (void)state;
    tmpdir_make(dir);
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  threads: 4\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "lua:\n  shared: {replies: 1, statuses: 1}\n"
             "http:\n  allow: [127.0.0.1/32]\n"
             "exec:\n  allow: [%s/notify.sh]\n"
             "hooks:\n"
             "  incoming_message:\n    - lua: %s/incoming_message.lua\n"
             "  status_update:\n    - lua: %s/status_update.lua\n      function: on_status\n"
             "  deploy:\n    - exec: [%s/notify.sh, %s/deploys.log]\n",
             src, src, src, src, dir);
    file_write(dir, "hooks.yaml", m);
    snprintf(url, sizeof url, "WAPPCLOUD_API_URL=http://127.0.0.1:%d/v1/messages", port);
    assert_int_equal(proc_start(&srv, path_in(dir, "hooks.yaml"), env, 1), 0);
    assert_int_equal(post("incoming_message", "{\"data\":{\"message_id\":\"m1\",\"from\":"
                                              "{\"phone\":\"+15550100\",\"name\":\"Ana\"},"
                                              "\"text\":{\"body\":\"hi\"}}}"),
                     200);
    upstream_last_request(seen, sizeof seen);
    if (!strstr(seen, "POST /v1/messages ") || !strcasestr(seen, "authorization: Bearer tok-123") ||
        !strstr(seen, "\"to\":\"+15550100\"") || !strstr(seen, "Thanks, Ana"))
        fail_msg("the API saw: %s", seen);
    assert_int_equal(
        post("status_update", "{\"data\":{\"message_id\":\"m1\",\"status\":\"read\"}}"), 200);
    assert_int_equal(
        post("status_update", "{\"data\":{\"message_id\":\"m1\",\"status\":\"delivered\"}}"), 200);
    assert_true(proc_wait_log(&srv, "m1: delivered after read, ignored", NULL, 5000));
    assert_int_equal(post("deploy", "{\"ref\":\"main\"}"), 200);
    got = file_read(path_in(dir, "deploys.log"));
    if (!strstr(got, " deploy bytes=14")) fail_msg("deploys.log: %s", got);
    free(got);
    assert_int_equal(proc_stop(&srv), 0);
    /* an API that fails: the handler fails, so the event is delivered again */
    snprintf(url, sizeof url, "WAPPCLOUD_API_URL=http://127.0.0.1:%d/fail", port);
    assert_int_equal(proc_start(&srv, path_in(dir, "hooks.yaml"), env, 1), 0);
    assert_int_equal(post("incoming_message", "{\"data\":{\"message_id\":\"m2\",\"from\":\"+1\","
                                              "\"text\":\"x\"}}"),
                     500);
    assert_true(proc_wait_log(&srv, "reply refused: HTTP 500", NULL, 5000));
    assert_int_equal(proc_stop(&srv), 0);
}

/* After each test: a server a failed assertion left running is killed. */
static int kill_leftover(void **state)
{
    (void)state;
    if (srv.mu) proc_kill9(&srv);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(shared_dictionary_across_threads_and_reloads, kill_leftover),
        cmocka_unit_test_teardown(exec_handlers, kill_leftover),
        cmocka_unit_test_teardown(check_refuses_bad_commands, kill_leftover),
        cmocka_unit_test_teardown(the_examples_work, kill_leftover),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
