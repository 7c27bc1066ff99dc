/* counter through the real loader: config, counting, a configured rejection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "runtime/plugin_loader.h"

static void counts_and_rejects(void **state)
{
    struct plugin *p = NULL;
    char err[512];
    struct wh_event ok = {.type = "incoming_message", .body = "{}", .body_len = 2};
    struct wh_event no = {.type = "spam", .body = "{}", .body_len = 2};
    (void)state;
    assert_int_equal(
        plugin_load(PLUGIN, "{\"every\":2,\"reject\":[\"spam\"]}", "m:1", &p, err, sizeof err), 0);
    assert_string_equal(plugin_name(p), "counter");
    for (int i = 0; i < 5; i++)
        assert_int_equal(plugin_handle(p, &ok, 1000, err, sizeof err), 0);
    assert_int_equal(plugin_handle(p, &no, 1000, err, sizeof err), -1);
    assert_string_equal(err, "events of type spam are rejected by configuration");
    plugin_unload(p);
}

static void refuses_bad_config(void **state)
{
    struct plugin *p = NULL;
    char err[512];
    (void)state;
    assert_int_equal(plugin_load(PLUGIN, "{\"every\":0}", "m:7", &p, err, sizeof err), -1);
    assert_non_null(strstr(err, "m:7: plugin"));
    assert_non_null(strstr(err, "every must be a positive integer"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counts_and_rejects),
        cmocka_unit_test(refuses_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
