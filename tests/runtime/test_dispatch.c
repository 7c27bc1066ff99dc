/* Dispatch end to end: real server, real Lua states, real dlopen of real plugins. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static char dir[256], out[16384];
static struct wh_proc srv;
static struct resp r;

static char *in_dir(const char *name)
{
    return (char *)path_in(dir, name);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = calloc(1, (size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    return buf;
}

static const char *scripts[][2] = {
    {"ok.lua", "function handle(e) if e.payload.fail then return false, 'asked to fail' end end\n"},
    {"raise.lua", "function handle(e)\n  error('boom from ' .. e.type)\nend\n"},
    {"loop.lua",
     "function handle(e) while true do pcall(function() while true do end end) end end\n"},
    /* one MiB made once, then a copy per step: memory, not time, is what runs out (a rep per
     * step took most of the budget under AddressSanitizer) */
    {"alloc.lua", "function handle(e) local s, t = ('x'):rep(1 << 20), {} for i = 1, 1e9 do t[i] = "
                  "s .. i end end\n"},
    /* a script that logs bytes that are not UTF-8, through every way it has */
    {"binary.lua", "function handle(e)\n  wapphook.log('warn', '\\xff\\xfe\\xc0\\xaf "
                   "\\xed\\xa0\\x80 ' .. e.body)\n"
                   "  print('\\x80', 1, '\\xf5')\n  error('\\xff in an error')\nend\n"},
};

static int setup(void **state)
{
    char manifest[8192], path[600];
    (void)state;
    tmpdir_make(dir);
    for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++)
        file_write(dir, scripts[i][0], scripts[i][1]);
    snprintf(manifest, sizeof manifest,
             "server:\n"
             "  listen: [http://127.0.0.1:0]\n"
             "  threads: 12\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "lua:\n"
             "  timeout_ms: 300\n"
             "  memory_limit_mb: 16\n"
             "hooks:\n"
             "  ok:\n"
             "    - lua: ok.lua\n"
             "  raise:\n"
             "    - lua: raise.lua\n"
             "  loop:\n"
             "    - lua: loop.lua\n"
             "  alloc:\n"
             "    - lua: alloc.lua\n"
             "      timeout_ms: 10000\n" /* memory is what must end it, however slow the build */
             "  binary:\n"
             "    - lua: binary.lua\n"
             "  ordered:\n"
             "    - plugin: %s/test_plugin.so\n"
             "      config: {tag: A, append: %s}\n"
             "    - lua: ok.lua\n"
             "    - plugin: %s/test_plugin.so\n"
             "      config: {tag: B, append: %s}\n"
             "  both:\n"
             "    - plugin: %s/test_plugin.so\n"
             "      config: {fail_type: both}\n"
             "    - plugin: %s/test_plugin.so\n"
             "      config: {tag: C, append: %s}\n"
             "  sink:\n"
             "    - plugin: %s/file_sink.so\n"
             "      config: {path: %s, fsync: true}\n"
             "  abi:\n" /* plugins built against ABI 1.0 and 1.1 side by side */
             "    - plugin: %s/test_plugin_abi10.so\n"
             "      config: {tag: OLD, show_id: true}\n"
             "    - plugin: %s/test_plugin.so\n"
             "      config: {tag: NEW, show_id: true}\n"
             "      timeout_ms: 750\n"
             "  bare:\n" /* a shipped plugin by name: build/plugins/, beside the binary */
             "    - plugin: file_sink\n"
             "      config: {path: %s}\n"
             "  \"*\":\n"
             "    - plugin: %s/test_plugin.so\n"
             "      config: {tag: STAR, append: %s}\n",
             TEST_PLUGINS, in_dir("order.txt"), TEST_PLUGINS, in_dir("order.txt"), TEST_PLUGINS,
             TEST_PLUGINS, in_dir("order.txt"), SHIPPED_PLUGINS, in_dir("events.ndjson"),
             TEST_PLUGINS, TEST_PLUGINS, in_dir("bare.ndjson"), TEST_PLUGINS, in_dir("order.txt"));
    file_write(dir, "hooks.yaml", manifest);
    snprintf(path, sizeof path, "%s/hooks.yaml", dir);
    return proc_start(&srv, path, NULL, 1);
}

static int teardown(void **state)
{
    (void)state;
    return proc_stop(&srv) == 0 ? 0 : -1;
}

static long post_h(const char *event, const char *body, const char *extra)
{
    char sig[80], sh[120], eh[120];
    const char *h[5] = {sh, eh, "Content-Type: application/json", extra, NULL};
    sign(TEST_SECRET, body, strlen(body), sig);
    snprintf(sh, sizeof sh, "X-Wappcloud-Signature: %s", sig);
    snprintf(eh, sizeof eh, "X-Wappcloud-Event: %s", event);
    return http_request("POST", srv.http, h, body, (long)strlen(body), NULL, &r);
}

static long post(const char *event, const char *body)
{
    return post_h(event, body, NULL);
}

static void log_has(const char *a, const char *b)
{
    if (!proc_wait_log(&srv, a, b, 5000)) {
        char *log = proc_log(&srv);
        size_t n = strlen(log);
        fprintf(stderr, "server log (end):\n%s\n", log + (n > 3000 ? n - 3000 : 0));
        free(log);
        fail_msg("no log line with \"%s\" and \"%s\"", a, b);
    }
}

static void lua_success_and_failure(void **state)
{
    (void)state;
    assert_int_equal(post("ok", "{\"fail\":false}"), 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_int_equal(post("ok", "{\"fail\":true}"), 500);
    assert_string_equal(r.body, "{\"error\":\"handler failed\"}");
    log_has("\"handler failed\"", "asked to fail");
    assert_int_equal(post("raise", "{}"), 500);
    log_has("\"handler failed\"", "raise.lua:2: boom from raise");
}

static void runaway_lua_is_stopped_and_the_server_serves(void **state)
{
    long long t0 = now_ms();
    (void)state;
    assert_int_equal(post("loop", "{}"), 500);
    assert_true(now_ms() - t0 < 3000);
    log_has("\"outcome\":\"timeout\"", "loop.lua");
    assert_int_equal(post("alloc", "{}"), 500);
    log_has("\"outcome\":\"memory limit\"", "alloc.lua");
    assert_int_equal(post("ok", "{}"), 200);
    assert_int_equal(post("loop", "{}"), 500); /* the rebuilt state is stopped again */
    assert_int_equal(post("ok", "{}"), 200);
}

static void handlers_run_in_order_then_star(void **state)
{
    char *order;
    (void)state;
    assert_int_equal(truncate(in_dir("order.txt"), 0), 0); /* the plugins hold it open */
    assert_int_equal(post_h("ordered", "{}", "X-Test-Header: hv"), 200);
    order = read_file(in_dir("order.txt"));
    assert_string_equal(order, "A ordered hv\nB ordered hv\nSTAR ordered hv\n");
    free(order);
}

static void every_handler_runs_after_a_failure(void **state)
{
    char *order;
    (void)state;
    assert_int_equal(truncate(in_dir("order.txt"), 0), 0); /* the plugins hold it open */
    assert_int_equal(post("both", "{}"), 500);
    order = read_file(in_dir("order.txt"));
    assert_string_equal(order, "C both -\nSTAR both -\n");
    free(order);
    log_has("told to fail on both", "plugin:test_plugin");
}

static void unrouted_types_run_only_star(void **state)
{
    char *order;
    (void)state;
    assert_int_equal(truncate(in_dir("order.txt"), 0), 0); /* the plugins hold it open */
    assert_int_equal(post("nobody_listens", "{}"), 200);
    order = read_file(in_dir("order.txt"));
    assert_string_equal(order, "STAR nobody_listens -\n");
    free(order);
}

#define CLIENTS 8
#define EACH 50

static long sink_client(long id)
{
    long ok = 0;
    for (int i = 0; i < EACH; i++) {
        char body[200], sig[80], sh[120];
        struct resp *rr = malloc(sizeof *rr);
        const char *h[4] = {sh, "X-Wappcloud-Event: sink", "Content-Type: application/json", NULL};
        /* pretty-printed on purpose: the sink must still write one line per event */
        snprintf(body, sizeof body, "{\n  \"id\": %ld,\n  \"text\": \"line\\nbreak\"\n}",
                 id * 1000 + i);
        sign(TEST_SECRET, body, strlen(body), sig);
        snprintf(sh, sizeof sh, "X-Wappcloud-Signature: %s", sig);
        if (http_request("POST", srv.http, h, body, (long)strlen(body), NULL, rr) == 200) ok++;
        free(rr);
    }
    return ok;
}

static void file_sink_keeps_lines_whole_under_concurrency(void **state)
{
    char *data, *save = NULL;
    int lines = 0;
    char seen[CLIENTS * 1000] = {0};
    (void)state;
    assert_int_equal(run_parallel(CLIENTS, sink_client), CLIENTS * EACH);
    data = read_file(in_dir("events.ndjson"));
    for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t je;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &je);
        long id;
        if (!j) fail_msg("line %d is not JSON: %s", lines + 1, line);
        assert_string_equal(json_string_value(json_object_get(j, "type")), "sink");
        assert_true(json_is_real(json_object_get(j, "received_at")));
        id = (long)json_integer_value(json_object_get(json_object_get(j, "payload"), "id"));
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(j, "payload"), "text")),
            "line\nbreak");
        assert_true(id >= 0 && id < CLIENTS * 1000);
        assert_int_equal(seen[id], 0);
        seen[id] = 1;
        lines++;
        json_decref(j);
    }
    assert_int_equal(lines, CLIENTS * EACH);
    free(data);
}

static long lua_client(long client)
{
    long ok = 0;
    (void)client;
    for (int i = 0; i < EACH; i++) {
        struct resp *rr = malloc(sizeof *rr);
        if (post_signed(srv.http, "ok", "{\"fail\":false}", NULL, rr) == 200) ok++;
        free(rr);
    }
    return ok;
}

static void one_lua_handler_many_clients(void **state)
{
    (void)state;
    assert_int_equal(run_parallel(CLIENTS, lua_client), CLIENTS * EACH);
}

static void ack_mode_answers_200_and_logs(void **state)
{
    struct wh_proc ack;
    char manifest[2048], path[600];
    char sig[80], sh[120];
    const char *body = "{}";
    const char *h[4] = {sh, "X-Wappcloud-Event: raise", "Content-Type: application/json", NULL};
    char *log;
    (void)state;
    snprintf(manifest, sizeof manifest,
             "server: {listen: [http://127.0.0.1:0]}\nsecrets: [{value: \"" TEST_SECRET "\"}]\n"
             "delivery: {on_handler_error: ack}\nhooks:\n  raise:\n    - lua: raise.lua\n");
    file_write(dir, "ack.yaml", manifest);
    snprintf(path, sizeof path, "%s/ack.yaml", dir);
    assert_int_equal(proc_start(&ack, path, NULL, 1), 0);
    sign(TEST_SECRET, body, 2, sig);
    snprintf(sh, sizeof sh, "X-Wappcloud-Signature: %s", sig);
    assert_int_equal(http_request("POST", ack.http, h, body, 2, NULL, &r), 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    assert_true(proc_wait_log(&ack, "handler failed", "boom from raise", 5000));
    (void)log;
    assert_int_equal(proc_stop(&ack), 0);
}

/* --- load-time refusals: check and serve say FILE:LINE and exit 1 ------------------------ */

static void refused(const char *hooks, int line, const char *what)
{
    char manifest[2048], want[800];
    char *argv[] = {(char *)WAPPHOOK_BIN, "check", "-c", in_dir("bad.yaml"), NULL};
    snprintf(manifest, sizeof manifest, "secrets: [{value: s}]\nhooks:\n%s", hooks);
    file_write(dir, "bad.yaml", manifest);
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 1);
    snprintf(want, sizeof want, "%s:%d: ", in_dir("bad.yaml"), line);
    if (!strstr(out, want) || !strstr(out, what))
        fail_msg("expected \"%s...%s\", got: %s", want, what, out);
}

static void load_errors_are_refused_with_file_and_line(void **state)
{
    char hooks[1024];
    (void)state;
    file_write(dir, "syntax.lua", "function handle(e)\n  if then\nend\n");
    file_write(dir, "toplevel.lua", "local x = 1\nerror('no config')\n");
    file_write(dir, "nofn.lua", "function other(e) end\n");
    file_write(dir, "notelf.so", "this is not a shared object\n");
    refused("  t:\n    - lua: syntax.lua\n", 4, "syntax.lua:2:");
    refused("  t:\n    - lua: toplevel.lua\n", 4, "toplevel.lua:2: no config");
    refused("  t:\n    - lua: nofn.lua\n", 4, "defines no function handle()");
    refused("  t:\n    - lua: ok.lua\n    - lua: nofn.lua\n      function: on_x\n", 5,
            "defines no function on_x()");
    refused("  t:\n    - lua: missing.lua\n", 4, "No such file");
    refused("  t:\n    - plugin: notelf.so\n", 4, "cannot load");
    snprintf(hooks, sizeof hooks, "  t:\n    - plugin: %s/test_no_entry.so\n", TEST_PLUGINS);
    refused(hooks, 4, "no entry symbol wapphook_plugin_entry");
    snprintf(hooks, sizeof hooks, "  t:\n    - plugin: %s/test_bad_abi.so\n", TEST_PLUGINS);
    refused(hooks, 4, "built for plugin ABI 99.1, this wapphook speaks 1.1");
    snprintf(hooks, sizeof hooks, "  t:\n    - plugin: %s/test_small_struct.so\n", TEST_PLUGINS);
    refused(hooks, 4, "struct wapphook_plugin is 16 bytes");
    snprintf(hooks, sizeof hooks,
             "  t:\n    - lua: ok.lua\n  u:\n    - plugin: %s/test_plugin.so\n"
             "      config: {fail_create: true}\n",
             TEST_PLUGINS);
    refused(hooks, 6, "create failed: told to fail in create");
    snprintf(hooks, sizeof hooks, "  t:\n    - plugin: %s/file_sink.so\n      config: {fsync: 1}\n",
             SHIPPED_PLUGINS);
    refused(hooks, 4, "config needs path");
    refused("  t:\n    - plugin: no_such_plugin\n", 4,
            "plugin no_such_plugin: no no_such_plugin.so in ");
}

/* The id in a "sees id=<id> ..." line. */
static const char *id_in(const char *line)
{
    static char id[128];
    const char *p = strstr(line, "id=") + 3;
    snprintf(id, sizeof id, "%.*s", (int)strcspn(p, " "), p);
    return id;
}

/* A plugin built against ABI 1.0 runs beside a 1.1 one, which sees the event's id, attempt
 * and budget; a shipped plugin is found by its bare name. */
static void plugins_of_both_abi_versions_and_bare_names(void **state)
{
    char line[512], first[128];
    size_t mark = proc_log_mark(&srv);
    FILE *f;
    (void)state;
    assert_int_equal(post("abi", "{}"), 200);
    assert_true(proc_wait_log_since(&srv, mark, "OLD built against ABI 1.0", NULL, 5000));
    assert_true(proc_wait_line_since(&srv, mark, "NEW sees id=sync-", "attempt=1 budget=750", 5000,
                                     line, sizeof line));
    snprintf(first, sizeof first, "%s", id_in(line));
    mark = proc_log_mark(&srv);
    assert_int_equal(post("abi", "{}"), 200);
    assert_true(
        proc_wait_line_since(&srv, mark, "NEW sees id=sync-", NULL, 5000, line, sizeof line));
    assert_string_not_equal(first, id_in(line)); /* a new event, a new id */
    assert_int_equal(post("bare", "{\"b\":1}"), 200);
    f = fopen(in_dir("bare.ndjson"), "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_non_null(strstr(line, "\"payload\":{\"b\":1}"));
}

static void serve_refuses_what_check_refuses(void **state)
{
    char *argv[] = {(char *)WAPPHOOK_BIN, "serve", "-c", in_dir("bad.yaml"), NULL};
    (void)state;
    file_write(dir, "bad.yaml", "secrets: [{value: s}]\nhooks:\n  t:\n    - lua: toplevel.lua\n");
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 1);
    assert_non_null(strstr(out, "toplevel.lua:2: no config"));
}

static void check_lists_what_it_loaded(void **state)
{
    char *argv[] = {(char *)WAPPHOOK_BIN, "check", "-c", in_dir("hooks.yaml"), NULL};
    (void)state;
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 0);
    assert_non_null(
        strstr(out, "hook    ordered: plugin:test_plugin lua:ok.lua:handle plugin:test_plugin"));
    assert_non_null(strstr(out, "hook    sink: plugin:file_sink"));
}

/* Whatever bytes a script logs, prints or raises, every log line is JSON and UTF-8. */
static void a_script_cannot_break_the_log(void **state)
{
    size_t mark = proc_log_mark(&srv), lines = 0;
    char *log, *line, *save = NULL;
    (void)state;
    assert_int_equal(post_signed(srv.http, "binary", "{\"b\":\"\\u00e9\"}", NULL, &r), 500);
    assert_true(
        proc_wait_log_since(&srv, mark, "\"msg\":\"request\"", "\"event\":\"binary\"", 5000));
    log = proc_log(&srv);
    assert_non_null(
        strstr(log + mark, "\\\\xff\\\\xfe\\\\xc0\\\\xaf \\\\xed\\\\xa0\\\\x80 {\\\"b\\\":"));
    for (line = strtok_r(log + mark, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t e;
        json_t *j = json_loads(line, 0, &e);
        if (!j) fail_msg("not a JSON line (%s): %s", e.text, line);
        json_decref(j);
        lines++;
    }
    free(log);
    assert_true(lines >= 3); /* the log line, the print, the failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lua_success_and_failure),
        cmocka_unit_test(runaway_lua_is_stopped_and_the_server_serves),
        cmocka_unit_test(handlers_run_in_order_then_star),
        cmocka_unit_test(every_handler_runs_after_a_failure),
        cmocka_unit_test(unrouted_types_run_only_star),
        cmocka_unit_test(file_sink_keeps_lines_whole_under_concurrency),
        cmocka_unit_test(one_lua_handler_many_clients),
        cmocka_unit_test(ack_mode_answers_200_and_logs),
        cmocka_unit_test(load_errors_are_refused_with_file_and_line),
        cmocka_unit_test(plugins_of_both_abi_versions_and_bare_names),
        cmocka_unit_test(serve_refuses_what_check_refuses),
        cmocka_unit_test(check_lists_what_it_loaded),
        cmocka_unit_test(a_script_cannot_break_the_log),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
