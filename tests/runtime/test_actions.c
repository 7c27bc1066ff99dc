/* Handlers that act (SPEC section 10), over real HTTP: a shared dictionary counts exactly
 * across worker threads, keeps its contents through SIGHUP, shows in /metrics, and goes
 * once a reloaded manifest no longer names it. */
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
#include <unistd.h>

#include "harness.h"

static char dir[256];
static struct wh_proc srv;

static void manifest(const char *lua_extra)
{
    char m[2048];
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n  threads: 4\n"
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
    file_write(dir, "check.lua", "function handle(e) return wapphook.shared.seen:get('n') == e.payload.n,\n"
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
        if (!strstr(metrics(), "dict=\"seen\""))
            break;
    assert_null(strstr(metrics(), "dict=\"seen\""));
    assert_int_equal(proc_stop(&srv), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shared_dictionary_across_threads_and_reloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
