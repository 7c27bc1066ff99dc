/* Limits no handler escapes (docs/handlers.md, "Limits"), over real HTTP on a small thread pool:
 * every escape route fails its request within the budget and leaves every worker serving (the
 * routes that need one thread's state twice are in tests/unit/test_lua.c); many
 * hostile handlers at once do not starve ordinary requests; a script whose top level arms a
 * finalizer is refused at reload with file:line, one that only tries still reloads and its
 * old generation retires; `check` bounds top-level code; a C plugin that never returns turns
 * /healthz to 503 and the stuck gauge to 1 while everything else is served. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define BUDGET_MS 300
#define THREADS 2
/* a request whose handler was stopped answers well inside this, sanitizers included */
#define ANSWER_WITHIN_MS 3000

static char dir[256];
static struct wh_proc srv;

static const char *in(const char *name)
{
    return path_in(dir, name);
}

/* One event type per escape route, each calling a function of hostile.lua. */
static const char *const routes[] = {
    "resume_catches", "close_catches", "tostring_result", "tostring_error", "gc_finalizer",
    "backtracking",   "move_nothing",  "sort_lying_len",  "grow_memory",
};

static const char hostile_lua[] =
    "local co = coroutine.create(function() while true do end end)\n"
    "function resume_catches(e) coroutine.resume(co) return true end\n"
    "function close_catches(e)\n"
    "  local guard <close> = setmetatable({}, {__close = function() return true end})\n"
    "  while true do end\n"
    "end\n"
    "local looping = {__tostring = function() while true do end end}\n"
    "function tostring_result(e) return false, setmetatable({}, looping) end\n"
    "function tostring_error(e) error(setmetatable({}, looping)) end\n"
    "function gc_finalizer(e) local t = setmetatable({}, {__gc = function() while true do end "
    "end}) while true do end end\n"
    "function backtracking(e) return ('a'):rep(40):find('a*a*a*a*a*a*a*a*a*a*a*a*b') end\n"
    "function move_nothing(e) table.move({}, 1, 1e15, 1, {}) end\n"
    "function sort_lying_len(e)\n"
    "  table.sort(setmetatable({}, {__len = function() return 2147483646 end, __index = rawlen,\n"
    "                               __newindex = rawequal}))\n"
    "end\n"
    "function grow_memory(e) local s, t = ('x'):rep(1024):rep(4096), {} while true do t[#t + 1] = "
    "s .. #t end end\n";

static void write_manifest(const char *extra_hooks)
{
    char m[8192];
    int n = snprintf(m, sizeof m,
                     "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n"
                     "  threads: %d\n  shutdown_timeout_ms: 2000\n"
                     "secrets: [{value: \"" TEST_SECRET "\"}]\n"
                     "lua:\n  timeout_ms: %d\n  memory_limit_mb: 16\n"
                     "hooks:\n  ok:\n    - lua: ok.lua\n",
                     THREADS, BUDGET_MS);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        n += snprintf(m + n, sizeof m - (size_t)n,
                      "  %s:\n    - lua: hostile.lua\n      function: %s\n%s", routes[i], routes[i],
                      /* memory must be what stops it, however slow the build (ThreadSanitizer
                       * took longer than the budget to fill 16 MiB under load) */
                      strcmp(routes[i], "grow_memory") == 0 ? "      timeout_ms: 10000\n" : "");
    snprintf(m + n, sizeof m - (size_t)n, "%s", extra_hooks ? extra_hooks : "");
    file_write(dir, "hooks.yaml", m);
}

static int setup(void **state)
{
    (void)state;
    tmpdir_make(dir);
    return 0;
}

/* Before each test: the scripts as the manifest expects them. */
static int fresh_scripts(void **state)
{
    (void)state;
    file_write(dir, "ok.lua", "function handle(e) return e.payload.n ~= nil end\n");
    file_write(dir, "hostile.lua", hostile_lua);
    return 0;
}

/* After each: a server a failed assertion left running is killed. */
static int kill_leftover(void **state)
{
    (void)state;
    if (srv.mu) proc_kill9(&srv);
    return 0;
}

static void start(const char *extra_hooks)
{
    write_manifest(extra_hooks);
    if (proc_start(&srv, in("hooks.yaml"), NULL, 2) != 0) {
        fprintf(stderr, "%s\n", srv.log ? srv.log : "");
        fail_msg("server did not start");
    }
}

static long post(const char *event, long long *took_ms)
{
    static __thread struct resp r;
    long long t0 = now_ms();
    long st = post_signed(srv.http, event, "{\"n\":1}", NULL, &r);

    if (took_ms) *took_ms = now_ms() - t0;
    return st;
}

static long ok_request(long i)
{
    (void)i;
    return post("ok", NULL) == 200;
}

/* Every worker serves: more ordinary requests at once than there are threads. */
static void all_workers_serve(const char *after)
{
    long served = run_parallel(4 * THREADS, ok_request);
    if (served != 4 * THREADS)
        fail_msg("after %s: %ld of %d ordinary requests answered 200", after, served, 4 * THREADS);
}

static long admin_get(const char *path, struct resp *r)
{
    char url[300];
    snprintf(url, sizeof url, "%s%s", srv.admin, path);
    return http_request("GET", url, NULL, NULL, 0, NULL, r);
}

static void escape_routes_fail_within_the_budget(void **state)
{
    (void)state;
    start(NULL);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        long long took;
        long st = post(routes[i], &took);
        if (st != 500) fail_msg("%s: status %ld, want 500", routes[i], st);
        if (took > ANSWER_WITHIN_MS)
            fail_msg("%s: answered after %lld ms on a %d ms budget", routes[i], took, BUDGET_MS);
        all_workers_serve(routes[i]);
    }
    assert_true(proc_wait_log(&srv, "\"outcome\":\"timeout\"", "resume_catches", 5000));
    assert_true(proc_wait_log(&srv, "\"outcome\":\"memory limit\"", "grow_memory", 5000));
    assert_true(proc_wait_log(&srv, "a metatable with __gc is not allowed", NULL, 5000));
    assert_true(proc_wait_log(&srv, "returned false: (a table value)", NULL, 5000));
    all_workers_serve("every route");
    assert_int_equal(proc_stop(&srv), 0);
}

static long hostile_request(long i)
{
    return post(routes[i % (sizeof routes / sizeof routes[0])], NULL) == 500;
}

static void chaos_then_ordinary_requests_succeed(void **state)
{
    struct resp r;
    long failed_as_they_should;

    (void)state;
    start(NULL);
    /* 3 of every hostile handler at once on 2 threads */
    failed_as_they_should =
        run_parallel(3 * (int)(sizeof routes / sizeof routes[0]), hostile_request);
    assert_int_equal(failed_as_they_should, 3 * (long)(sizeof routes / sizeof routes[0]));
    for (int round = 0; round < 5; round++)
        all_workers_serve("the chaos");
    assert_int_equal(admin_get("/healthz", &r), 200);
    assert_int_equal(proc_stop(&srv), 0);
}

/* SIGHUP, and the first reload outcome logged after it. */
static int reload(const char *why_refused)
{
    size_t mark = proc_log_mark(&srv);

    kill(srv.pid, SIGHUP);
    if (why_refused) return proc_wait_log_since(&srv, mark, "reload refused", why_refused, 20000);
    return proc_wait_log_since(&srv, mark, "\"msg\":\"reloaded\"", NULL, 20000);
}

static void reload_with_a_top_level_finalizer(void **state)
{
    long long t0;

    (void)state;
    start(NULL);
    /* armed at the top level: refused with file:line, the old generation serves on */
    file_write(dir, "ok.lua",
               "local keep = setmetatable({}, {__gc = function() while true do end end})\n"
               "function handle(e) return false end\n");
    assert_true(reload("ok.lua:1: setmetatable: a metatable with __gc is not allowed"));
    assert_int_equal(post("ok", NULL), 200);
    /* tried and caught at the top level: loads; the new code answers */
    file_write(dir, "ok.lua",
               "local armed = pcall(setmetatable, {}, {__gc = function() while true do end end})\n"
               "function handle(e) return not armed and e.payload.n == 1 and false end\n");
    assert_true(reload(NULL));
    assert_int_equal(post("ok", NULL), 500); /* v2 answers false on purpose */
    file_write(dir, "ok.lua", "function handle(e) return true end\n");
    assert_true(reload(NULL));
    assert_int_equal(post("ok", NULL), 200);
    /* every retired generation closed its states: the stop does not hang on one */
    t0 = now_ms();
    assert_int_equal(proc_stop(&srv), 0);
    assert_true(now_ms() - t0 < 5000);
}

static void check_bounds_the_top_level(void **state)
{
    char out[8192];
    char *argv[] = {(char *)WAPPHOOK_BIN, "check", "-c", (char *)in("hooks.yaml"), NULL};
    long long t0;
    (void)state;
    write_manifest(NULL);
    file_write(dir, "ok.lua",
               "local found = ('a'):rep(40):find('a*a*a*a*a*a*a*a*a*a*a*a*b')\n"
               "function handle(e) end\n");
    t0 = now_ms();
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 1);
    assert_true(now_ms() - t0 < 10000);
    if (!strstr(out, "hooks.yaml:") || !strstr(out, "ok.lua") || !strstr(out, "timeout"))
        fail_msg("check said: %s", out);
    fresh_scripts(NULL);
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 0);
}

/* timeout_ms: on a handler is its whole budget, for Lua (shorter or longer than lua.timeout_ms)
 * and for the stuck monitor alike. */
static void a_handler_has_its_own_budget(void **state)
{
    char hooks[1024];
    long long took;

    (void)state;
    file_write(dir, "busy.lua",
               "function handle(e) local t = os.clock() while os.clock() - t < 0.8 do end end\n"
               "function spin(e) while true do end end\n");
    snprintf(hooks, sizeof hooks,
             "  long:\n    - lua: busy.lua\n      timeout_ms: 5000\n"
             "  short:\n    - lua: busy.lua\n      function: spin\n      timeout_ms: 100\n"
             "  slow:\n    - plugin: %s/test_plugin.so\n      config: {sleep_ms: 1500, tag: S}\n"
             "      timeout_ms: 2000\n",
             TEST_PLUGINS);
    start(hooks);
    assert_int_equal(post("long", &took), 200); /* 800 ms of work on a 300 ms lua.timeout_ms */
    assert_int_equal(post("short", &took), 500);
    assert_true(proc_wait_log(&srv, "\"outcome\":\"timeout\"", "budget (100 ms)", 5000));
    assert_int_equal(post("slow", &took), 200);
    assert_true(took >= 1500);
    /* 1.5 s on a 2 s budget: never reported stuck */
    assert_false(proc_wait_log(&srv, "handler stuck", "\"event\":\"slow\"", 200));
    assert_int_equal(proc_stop(&srv), 0);
}

static long blocked_status;
static void *post_blocked(void *arg)
{
    (void)arg;
    blocked_status = post("hang", NULL);
    return NULL;
}

static void stuck_plugin_turns_healthz_to_503(void **state)
{
    char hooks[1024];
    struct resp r;
    pthread_t t;
    long long deadline;
    long st = 0;

    (void)state;
    snprintf(hooks, sizeof hooks,
             "  hang:\n    - plugin: %s/test_plugin.so\n      config: {block: true, tag: H}\n"
             "  slow:\n    - plugin: %s/test_plugin.so\n      config: {sleep_ms: 1500, tag: S}\n",
             TEST_PLUGINS, TEST_PLUGINS);
    start(hooks);
    assert_int_equal(admin_get("/healthz", &r), 200);
    pthread_create(&t, NULL, post_blocked, NULL);
    /* readiness, not a sleep: poll until the monitor reports it (2 x 300 ms + a tick) */
    for (deadline = now_ms() + 10000; now_ms() < deadline;) {
        st = admin_get("/healthz", &r);
        if (st == 503) break;
        usleep(20000);
    }
    assert_int_equal(st, 503);
    if (!strstr(r.body, "\"status\":\"degraded\"") || !strstr(r.body, "\"handler\":\"plugin:") ||
        !strstr(r.body, "\"event\":\"hang\"") || !strstr(r.body, "\"running_ms\":"))
        fail_msg("healthz said: %s", r.body);
    assert_true(proc_wait_log(&srv, "handler stuck", "\"event\":\"hang\"", 5000));
    assert_int_equal(admin_get("/metrics", &r), 200);
    assert_non_null(strstr(r.body, "\nwapphook_stuck_handlers 1\n"));
    /* one thread is gone for good; the other still serves, the challenge too */
    for (int i = 0; i < 5; i++)
        assert_int_equal(post("ok", NULL), 200);
    /* a slow call that does return is reported, then cleared */
    assert_int_equal(post("slow", NULL), 200);
    assert_true(proc_wait_log(&srv, "handler stuck", "\"event\":\"slow\"", 5000));
    assert_true(proc_wait_log(&srv, "stuck handler returned", "\"event\":\"slow\"", 5000));
    assert_int_equal(admin_get("/metrics", &r), 200);
    assert_non_null(strstr(r.body, "\nwapphook_stuck_handlers 1\n")); /* the blocked one */
    proc_kill9(&srv);      /* it never returns: a supervisor would restart the process */
    pthread_join(t, NULL); /* its request ends with the connection */
    assert_int_equal(blocked_status, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(escape_routes_fail_within_the_budget, fresh_scripts,
                                        kill_leftover),
        cmocka_unit_test_setup_teardown(chaos_then_ordinary_requests_succeed, fresh_scripts,
                                        kill_leftover),
        cmocka_unit_test_setup_teardown(reload_with_a_top_level_finalizer, fresh_scripts,
                                        kill_leftover),
        cmocka_unit_test_setup_teardown(check_bounds_the_top_level, fresh_scripts, kill_leftover),
        cmocka_unit_test_setup_teardown(a_handler_has_its_own_budget, fresh_scripts, kill_leftover),
        cmocka_unit_test_setup_teardown(stuck_plugin_turns_healthz_to_503, fresh_scripts,
                                        kill_leftover),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
