/* Shared dictionaries: values of every type in and out, add/incr/delete semantics, TTLs,
 * LRU eviction within a fixed size (the forcible flag, recently read keys kept), exact
 * atomic counts from many threads, and the registry that keeps contents across reopens. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "base/shared_dict.h"

static struct shared_value str(const char *s)
{
    struct shared_value v = {.type = SHARED_STRING, .s = s, .len = strlen(s)};
    return v;
}

static int get(struct shared_dict *d, const char *k, struct shared_value *v, char *buf)
{
    return shared_dict_get(d, k, strlen(k), v, buf, 256, NULL);
}

static void values_round_trip(void **state)
{
    struct shared_dict *d = shared_dict_open("t_values", 1);
    struct shared_value v, i = {.type = SHARED_INTEGER, .i = -9007199254740993LL},
                           f = {.type = SHARED_FLOAT, .d = 1.5},
                           b = {.type = SHARED_BOOLEAN, .b = true};
    char buf[256];
    (void)state;
    assert_int_equal(get(d, "absent", &v, buf), 0);
    assert_int_equal(
        shared_dict_store(d, "s", 1,
                          &(struct shared_value){.type = SHARED_STRING, .s = "a\0b", .len = 3}, 0,
                          SHARED_SET),
        0);
    assert_int_equal(shared_dict_store(d, "i", 1, &i, 0, SHARED_SET), 0);
    assert_int_equal(shared_dict_store(d, "f", 1, &f, 0, SHARED_SET), 0);
    assert_int_equal(shared_dict_store(d, "b", 1, &b, 0, SHARED_SET), 0);
    assert_int_equal(get(d, "s", &v, buf), 1);
    assert_int_equal(v.type, SHARED_STRING);
    assert_int_equal(v.len, 3);
    assert_memory_equal(v.s, "a\0b", 3);
    assert_int_equal(get(d, "i", &v, buf), 1);
    assert_true(v.type == SHARED_INTEGER && v.i == -9007199254740993LL);
    assert_int_equal(get(d, "f", &v, buf), 1);
    assert_true(v.type == SHARED_FLOAT && v.d == 1.5);
    assert_int_equal(get(d, "b", &v, buf), 1);
    assert_true(v.type == SHARED_BOOLEAN && v.b);
    /* add refuses a present key; set replaces; delete removes */
    v = str("x");
    assert_int_equal(shared_dict_store(d, "s", 1, &v, 0, SHARED_ADD), -1);
    assert_int_equal(shared_dict_store(d, "s", 1, &v, 0, SHARED_SET), 0);
    assert_int_equal(get(d, "s", &v, buf), 1);
    assert_int_equal(v.len, 1);
    assert_int_equal(shared_dict_delete(d, "s", 1), 1);
    assert_int_equal(shared_dict_delete(d, "s", 1), 0);
    assert_int_equal(get(d, "s", &v, buf), 0);
    shared_dict_release(d);
}

static void incr_is_checked(void **state)
{
    struct shared_dict *d = shared_dict_open("t_incr", 1);
    struct shared_value v = str("text"), big = {.type = SHARED_INTEGER, .i = INT64_MAX - 1};
    long long r = 0;
    char buf[256];
    (void)state;
    assert_int_equal(shared_dict_incr(d, "n", 1, 5, false, 0, 0, &r), -1); /* absent, no init */
    assert_int_equal(shared_dict_incr(d, "n", 1, 5, true, 10, 0, &r), 0);
    assert_int_equal(r, 15);
    assert_int_equal(shared_dict_incr(d, "n", 1, -20, false, 0, 0, &r), 0);
    assert_int_equal(r, -5);
    shared_dict_store(d, "s", 1, &v, 0, SHARED_SET);
    assert_int_equal(shared_dict_incr(d, "s", 1, 1, true, 0, 0, &r), -2);
    shared_dict_store(d, "big", 3, &big, 0, SHARED_SET);
    assert_int_equal(shared_dict_incr(d, "big", 3, 2, false, 0, 0, &r), -3);
    assert_int_equal(get(d, "big", &v, buf), 1);
    assert_true(v.i == INT64_MAX - 1); /* unchanged by the overflow */
    shared_dict_release(d);
}

static void ttls_expire(void **state)
{
    struct shared_dict *d = shared_dict_open("t_ttl", 1);
    struct shared_value v = str("soon");
    struct timespec wait = {0, 120 * 1000000L};
    long long left;
    char buf[256];
    (void)state;
    assert_int_equal(shared_dict_store(d, "k", 1, &v, 60, SHARED_SET), 0);
    assert_int_equal(shared_dict_store(d, "forever", 7, &v, 0, SHARED_SET), 0);
    assert_int_equal(shared_dict_get(d, "k", 1, &v, buf, sizeof buf, &left), 1);
    assert_true(left > 0 && left <= 60);
    assert_int_equal(shared_dict_get(d, "forever", 7, &v, buf, sizeof buf, &left), 1);
    assert_int_equal(left, -1);
    nanosleep(&wait, NULL); /* the time a TTL measures has to pass */
    assert_int_equal(get(d, "k", &v, buf), 0);
    /* an expired key is absent for add and incr too */
    assert_int_equal(shared_dict_store(d, "k", 1, &v, 0, SHARED_ADD), 0);
    shared_dict_release(d);
}

static void full_dictionaries_evict_the_least_recently_used(void **state)
{
    struct shared_dict *d = shared_dict_open("t_lru", 1); /* 16 stripes of 64 KiB */
    char value[1000], key[32], buf[256];
    struct shared_value v = {.type = SHARED_STRING, .s = value, .len = sizeof value};
    int forcible = 0, kept = 1;
    (void)state;
    memset(value, 'v', sizeof value);
    assert_int_equal(shared_dict_store(d, "hot", 3, &v, 0, SHARED_SET), 0);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        forcible |= shared_dict_store(d, key, strlen(key), &v, 0, SHARED_SET) == 1;
        kept &= shared_dict_get(d, "hot", 3, &v, buf, sizeof buf, NULL); /* read: stays new */
        v.s = value;
    }
    assert_true(forcible);
    assert_true(kept);
    assert_int_equal(get(d, "k0", &v, buf), 0); /* the oldest went */
    {
        static char huge[70000];
        struct shared_value h = {.type = SHARED_STRING, .s = huge, .len = sizeof huge};
        assert_int_equal(shared_dict_store(d, "huge", 4, &h, 0, SHARED_SET), -2);
    }
    shared_dict_release(d);
}

static struct shared_dict *shared_counter;
static void *count_up(void *arg)
{
    long long r;
    char key[32];
    snprintf(key, sizeof key, "own%ld", (long)(intptr_t)arg);
    for (int i = 0; i < 20000; i++) {
        shared_dict_incr(shared_counter, "all", 3, 1, true, 0, 0, &r);
        shared_dict_incr(shared_counter, key, strlen(key), 2, true, 0, 0, &r);
    }
    return NULL;
}

static void incr_is_atomic_across_threads(void **state)
{
    pthread_t t[8];
    struct shared_value v;
    char buf[256], key[32];
    (void)state;
    shared_counter = shared_dict_open("t_atomic", 1);
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, count_up, (void *)(intptr_t)i);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(get(shared_counter, "all", &v, buf), 1);
    assert_int_equal(v.i, 8 * 20000);
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof key, "own%d", i);
        assert_int_equal(get(shared_counter, key, &v, buf), 1);
        assert_int_equal(v.i, 2 * 20000);
    }
    shared_dict_release(shared_counter);
}

static void the_registry_keeps_contents_while_referenced(void **state)
{
    struct shared_dict *a = shared_dict_open("t_reg", 1), *b;
    struct shared_value v = str("kept");
    char buf[256];
    (void)state;
    shared_dict_store(a, "k", 1, &v, 0, SHARED_SET);
    b = shared_dict_open("t_reg", 64); /* a reload naming it again: the same, its size kept */
    assert_ptr_equal(a, b);
    shared_dict_release(a);
    assert_int_equal(get(b, "k", &v, buf), 1);
    shared_dict_release(b); /* the last reference: gone */
    a = shared_dict_open("t_reg", 1);
    assert_int_equal(get(a, "k", &v, buf), 0);
    shared_dict_release(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(values_round_trip),
        cmocka_unit_test(incr_is_checked),
        cmocka_unit_test(ttls_expire),
        cmocka_unit_test(full_dictionaries_evict_the_least_recently_used),
        cmocka_unit_test(incr_is_atomic_across_threads),
        cmocka_unit_test(the_registry_keeps_contents_while_referenced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
