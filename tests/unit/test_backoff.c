/* The retry delay of durable mode: doubling from the initial backoff, the cap, and a jitter
 * that stays between half and all of the delay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "spool/backoff.h"

static void doubles_from_the_initial_delay(void **state)
{
    (void)state;
    /* r = 1: the whole delay */
    assert_true(backoff_delay_ms(500, 300000, 1, 1.0) == 500);
    assert_true(backoff_delay_ms(500, 300000, 2, 1.0) == 1000);
    assert_true(backoff_delay_ms(500, 300000, 3, 1.0) == 2000);
    assert_true(backoff_delay_ms(500, 300000, 10, 1.0) == 256000);
}

static void stops_at_the_cap(void **state)
{
    (void)state;
    assert_true(backoff_delay_ms(500, 300000, 11, 1.0) == 300000);   /* 512,000 capped */
    assert_true(backoff_delay_ms(500, 300000, 1000, 1.0) == 300000); /* 2^999: no overflow */
    assert_true(backoff_delay_ms(7 * 86400000LL, 7 * 86400000LL, 1000, 1.0) == 7 * 86400000.0);
    assert_true(backoff_delay_ms(1000, 10, 1, 1.0) == 10); /* a cap below the first delay */
}

static void jitter_between_half_and_all(void **state)
{
    double lo = 1e300, hi = 0;

    (void)state;
    assert_true(backoff_delay_ms(800, 300000, 1, 0.0) == 400);
    assert_true(backoff_delay_ms(800, 300000, 1, 0.5) == 600);
    assert_true(backoff_delay_ms(800, 300000, 1, -3) == 400); /* r clamped to [0, 1] */
    assert_true(backoff_delay_ms(800, 300000, 1, 7) == 800);
    srandom(7);
    for (int i = 0; i < 10000; i++) {
        double d = backoff_delay_ms(800, 300000, 4, (double)random() / RAND_MAX);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    assert_true(lo >= 3200 && hi <= 6400);
    assert_true(lo < 3300 && hi > 6300); /* the draws do spread over the whole range */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(doubles_from_the_initial_delay),
        cmocka_unit_test(stops_at_the_cap),
        cmocka_unit_test(jitter_between_half_and_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
