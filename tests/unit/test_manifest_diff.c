/* What a reload cannot apply: manifest_server_diff names every setting that differs and needs
 * a restart (server.*, delivery.mode; delivery.spool, .pg_schema, .lease_s and .workers in
 * durable mode), and nothing else (hooks, secrets, lua.*, TLS material, retry policy). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "conf/conf.h"
#include "harness.h"

static char dir[256];

static struct wh_config *load(const char *name, const char *text)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN];

    file_write(dir, name, text);
    if (manifest_load_no_secrets(path_in(dir, name), &cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    return cfg;
}

/* The names manifest_server_diff gives for base -> changed. */
static int diff(const char *base, const char *changed, char *out, size_t out_len)
{
    struct wh_config *a = load("a.yaml", base), *b = load("b.yaml", changed);
    int n = manifest_server_diff(a, b, out, out_len);

    manifest_free(a);
    manifest_free(b);
    return n;
}

#define HOOKS "secrets: [{value: s}]\nhooks:\n  t:\n    - lua: s.lua\n      function: f\n"

static void what_a_reload_applies_is_not_named(void **state)
{
    char out[512];

    (void)state;
    assert_int_equal(diff(HOOKS,
                          "secrets: [{value: b}]\nlua: {timeout_ms: 50, memory_limit_mb: 8}\n"
                          "delivery: {on_handler_error: ack, retry: {max_attempts: 3}}\n"
                          "server: {max_inflight: 3, max_connections_per_client: 2}\n"
                          "hooks:\n  u:\n    - lua: s.lua\n      function: f\n",
                          out, sizeof out),
                     0);
    assert_string_equal(out, "");
}

static void every_restart_setting_is_named(void **state)
{
    char out[512];

    (void)state;
    assert_int_equal(diff("server: {listen: [http://127.0.0.1:8080]}\n" HOOKS,
                          "server:\n  listen: [http://127.0.0.1:8081]\n  path: /hook\n"
                          "  threads: 9\n  max_body_bytes: 10\n  request_timeout_ms: 100\n"
                          "  shutdown_timeout_ms: 100\n  header_timeout_ms: 100\n"
                          "  admin: 127.0.0.1:9\n"
                          "delivery: {mode: durable}\n" HOOKS,
                          out, sizeof out),
                     9);
    assert_string_equal(out, "server.listen, server.path, server.threads, server.max_body_bytes, "
                             "server.request_timeout_ms, server.shutdown_timeout_ms, "
                             "server.header_timeout_ms, server.admin, delivery.mode");
}

static void durable_settings_count_in_durable_mode_only(void **state)
{
    char out[512];

    (void)state;
    assert_int_equal(diff("delivery: {mode: durable, spool: a.db}\n" HOOKS,
                          "delivery: {mode: durable, spool: b.db, pg_schema: other, lease_s: 9, "
                          "workers: 2}\n" HOOKS,
                          out, sizeof out),
                     4);
    assert_string_equal(out, "delivery.spool, delivery.pg_schema, delivery.lease_s, "
                             "delivery.workers");
    /* sync mode opens no spool: the same changes need no restart */
    assert_int_equal(diff("delivery: {spool: a.db}\n" HOOKS,
                          "delivery: {spool: b.db, lease_s: 9, workers: 2}\n" HOOKS, out,
                          sizeof out),
                     0);
}

static int setup(void **state)
{
    (void)state;
    tmpdir_make(dir);
    file_write(dir, "s.lua", "function f() end\n");
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(what_a_reload_applies_is_not_named),
        cmocka_unit_test(every_restart_setting_is_named),
        cmocka_unit_test(durable_settings_count_in_durable_mode_only),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
