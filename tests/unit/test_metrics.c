/* Metrics as Prometheus reads them: label values escaped as its text format requires
 * (backslash, double quote, newline), whatever a manifest names; an exec timeout counted as
 * the handler's exec result, not as a Lua timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

static char *render(void)
{
    size_t len;
    char *text = metrics_render(&len);

    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

static void expect_line(const char *text, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = text; (p = strstr(p, line)); p += n)
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return;
    fail_msg("no line \"%s\" in:\n%s", line, text);
}

static void label_values_are_escaped(void **state)
{
    struct handler_series *h = metrics_handler_series("lua:a\\b.lua:\"f\"\nx");
    struct event_series *e = metrics_event_series("t\"y\\p\ne");
    char *text;

    (void)state;
    metrics_handler(h, 0.002, 0);
    metrics_event(e, EVENT_UNROUTED);
    text = render();
    expect_line(text,
                "wapphook_handler_failures_total{handler=\"lua:a\\\\b.lua:\\\"f\\\"\\nx\"} 1");
    expect_line(text, "wapphook_events_total{type=\"t\\\"y\\\\p\\ne\",result=\"unrouted\"} 1");
    expect_line(
        text,
        "wapphook_handler_duration_seconds_count{handler=\"lua:a\\\\b.lua:\\\"f\\\"\\nx\"} 1");
    /* no raw newline inside a label: every line starts with a metric name or # */
    for (const char *l = text; *l; l = strchr(l, '\n') + 1)
        if (*l != '#' && strncmp(l, "wapphook_", 9) != 0)
            fail_msg("a line that is not a sample: %.60s", l);
    free(text);
}

static void an_exec_timeout_is_not_a_lua_timeout(void **state)
{
    struct handler_series *h = metrics_handler_series("exec:/bin/sleep");
    char *text;

    (void)state;
    metrics_set_current_handler(h);
    metrics_exec(MX_TIMEOUT);
    metrics_set_current_handler(NULL);
    text = render();
    expect_line(text, "wapphook_exec_total{handler=\"exec:/bin/sleep\",result=\"timeout\"} 1");
    expect_line(text, "wapphook_lua_timeouts_total 0");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(label_values_are_escaped),
        cmocka_unit_test(an_exec_timeout_is_not_a_lua_timeout),
    };
    metrics_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
