/* Shedding: refusals counted by reason, one log line when an episode starts and one when it
 * has been quiet for SHED_QUIET_MS, with the counts of the episode: never a line per
 * refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "base/base.h"

static char lines[8192];
static size_t len;

static int count(const char *what)
{
    int n = 0;

    for (const char *p = lines; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

static void one_line_per_episode(void **state)
{
    long long now;

    (void)state;
    log_capture(lines, sizeof lines, &len);
    for (int i = 0; i < 1000; i++)
        shed_note(REJECT_OVERLOADED);
    shed_note(REJECT_FORBIDDEN);
    shed_note(REJECT_HEADER_TIMEOUT);
    shed_note(REJECT_HEADER_TIMEOUT);
    now = wh_mono_ms();
    assert_int_equal(count("shedding: refusing clients"), 1);
    assert_non_null(strstr(lines, "\"reason\":\"overloaded\""));
    shed_tick(now + SHED_QUIET_MS - 100); /* not quiet long enough yet */
    assert_int_equal(count("shedding stopped"), 0);
    shed_tick(now + SHED_QUIET_MS + 100);
    assert_int_equal(count("shedding stopped"), 1);
    assert_non_null(strstr(lines, "\"overloaded\":1000,\"client_cap\":0,\"forbidden\":1,"
                                  "\"header_timeout\":2"));
    shed_tick(now + 2 * SHED_QUIET_MS); /* over: said once */
    assert_int_equal(count("shedding stopped"), 1);
    log_capture(NULL, 0, NULL);
    assert_int_equal(shed_count(REJECT_OVERLOADED), 1000);
    assert_int_equal(shed_count(REJECT_CLIENT_CAP), 0);
}

static void the_next_episode_counts_from_its_start(void **state)
{
    long long now;

    (void)state;
    len = 0;
    lines[0] = '\0';
    log_capture(lines, sizeof lines, &len);
    shed_note(REJECT_CLIENT_CAP);
    now = wh_mono_ms();
    assert_int_equal(count("shedding: refusing clients"), 1);
    assert_non_null(strstr(lines, "\"reason\":\"client_cap\""));
    shed_tick(now + SHED_QUIET_MS + 100);
    /* totals keep counting; the episode's line counts only its own refusals */
    assert_non_null(strstr(lines, "\"overloaded\":0,\"client_cap\":1,\"forbidden\":0,"
                                  "\"header_timeout\":0"));
    log_capture(NULL, 0, NULL);
    assert_int_equal(shed_count(REJECT_OVERLOADED), 1000);
    assert_int_equal(shed_count(REJECT_CLIENT_CAP), 1);
    assert_string_equal(shed_reason_name(REJECT_HEADER_TIMEOUT), "header_timeout");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_line_per_episode),
        cmocka_unit_test(the_next_episode_counts_from_its_start),
    };
    log_setup(LOG_JSON, LOG_INFO);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
