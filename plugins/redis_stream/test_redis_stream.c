/* redis_stream through the real loader against a real redis-server: config refusals, one
 * entry per event id however often it comes, trimming, many threads on one pool, a server
 * stopped and started, a paused one (the budget holds), passwords. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest_servers.h"
#include "harness.h"
#include "runtime/plugin_loader.h"

static struct dest_server srv, locked;
static char err[1024];

static struct plugin *load(const char *config)
{
    struct plugin *p = NULL;
    if (plugin_load(PLUGIN, config, "hooks.yaml:7", &p, err, sizeof err)) return NULL;
    return p;
}

static struct plugin *load_on(const struct dest_server *s, const char *extra)
{
    char config[800];
    snprintf(config, sizeof config, "{\"url\":\"%s\",\"stream\":\"ev:{type}\"%s}", s->url,
             extra ? extra : "");
    return load(config);
}

static int deliver(struct plugin *p, long long id, int attempt, int timeout_ms)
{
    char body[64];
    struct wh_event ev = {
        .type = "incoming_message", .received_at = 1234.5, .id = id, .attempt = attempt};
    snprintf(body, sizeof body, "{\"n\":%lld,\n\"text\":\"h\\u00e9\"}", id);
    ev.body = body;
    ev.body_len = strlen(body);
    return plugin_handle(p, &ev, timeout_ms, err, sizeof err);
}

/* One command's reply (caller frees), on a fresh connection to s. */
static redisReply *ask(const struct dest_server *s, const char *fmt, ...)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    redisReply *r;
    va_list ap;
    assert_true(c && !c->err);
    if (s->password[0]) freeReplyObject(redisCommand(c, "AUTH %s", s->password));
    va_start(ap, fmt);
    r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    assert_non_null(r);
    return r;
}

static long long ask_int(const struct dest_server *s, const char *fmt, const char *arg)
{
    redisReply *r = ask(s, fmt, arg);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static void refuses_bad_config(void **state)
{
    (void)state;
    assert_null(load("{}"));
    assert_non_null(strstr(err, "hooks.yaml:7: plugin"));
    assert_non_null(strstr(err, "config needs url"));
    assert_null(load("{\"url\":\"redis://127.0.0.1:1/0\"}"));
    assert_non_null(strstr(err, "config needs stream"));
    assert_null(load("{\"url\":\"http://x\",\"stream\":\"s\"}"));
    assert_non_null(strstr(err, "url must start with redis://"));
    assert_null(load("{\"url\":\"redis://u:hunter2@127.0.0.1/0\",\"stream\":\"s\"}"));
    assert_non_null(strstr(err, "password_env"));
    assert_null(strstr(err, "hunter2"));
    assert_null(load("{\"url\":\"redis://127.0.0.1:99999\",\"stream\":\"s\"}"));
    assert_non_null(strstr(err, "bad port"));
    assert_null(load("{\"url\":\"redis://127.0.0.1/x\",\"stream\":\"s\"}"));
    assert_non_null(strstr(err, "database number"));
    assert_null(load("{\"url\":\"redis://127.0.0.1\",\"stream\":\"s\",\"maxlen\":-1}"));
    assert_non_null(strstr(err, "config key maxlen"));
    assert_null(load("{\"url\":\"redis://127.0.0.1\",\"stream\":\"s\",\"strem\":\"s\"}"));
    assert_non_null(strstr(err, "config key strem"));
    unsetenv("WH_TEST_NO_SUCH_VAR");
    assert_null(load("{\"url\":\"redis://127.0.0.1\",\"stream\":\"s\","
                     "\"password_env\":\"WH_TEST_NO_SUCH_VAR\"}"));
    assert_non_null(strstr(err, "WH_TEST_NO_SUCH_VAR is not set"));
}

static void adds_each_event_once(void **state)
{
    struct plugin *p;
    redisReply *r;
    (void)state;
    p = load_on(&srv, NULL);
    assert_non_null(p);
    assert_string_equal(plugin_name(p), "redis_stream");
    assert_int_equal(deliver(p, 42, 1, 2000), 0);
    assert_int_equal(deliver(p, 42, 2, 2000), 0); /* a retry: nothing more */
    freeReplyObject(ask(&srv, "SCRIPT FLUSH"));   /* EVALSHA's NOSCRIPT: sent whole again */
    assert_int_equal(deliver(p, 43, 1, 2000), 0);
    assert_int_equal(ask_int(&srv, "XLEN %s", "ev:incoming_message"), 2);
    r = ask(&srv, "XRANGE ev:incoming_message - + COUNT 1");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->element[0]->element[1]->elements, 8);
    {
        redisReply *f = r->element[0]->element[1];
        const char *want[] = {
            "id",          "42",          "type", "incoming_message",
            "received_at", "1234.500000", "body", "{\"n\":42,\n\"text\":\"h\\u00e9\"}"};
        for (int i = 0; i < 8; i++)
            assert_string_equal(f->element[i]->str, want[i]);
    }
    freeReplyObject(r);
    /* the id is remembered for dedupe_ttl_s (default a day) */
    {
        long long ttl = ask_int(&srv, "TTL %s", "ev:incoming_message:wapphook-seen:42");
        assert_true(ttl > 86000 && ttl <= 86400);
    }
    plugin_unload(p);
}

static void trims_to_maxlen(void **state)
{
    struct plugin *p;
    (void)state;
    p = load_on(&srv, ",\"stream\":\"trim\",\"maxlen\":10,\"dedupe_ttl_s\":60");
    assert_non_null(p);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(deliver(p, 1000 + i, 1, 2000), 0);
    /* MAXLEN ~ trims whole nodes (100 entries each by default): about, never far over */
    assert_true(ask_int(&srv, "XLEN %s", "trim") < 200);
    assert_true(ask_int(&srv, "TTL %s", "trim:wapphook-seen:1999") <= 60);
    plugin_unload(p);
}

static struct plugin *shared;

static void *writer(void *arg)
{
    long t = (long)arg;
    char e[512];
    for (int i = 0; i < 200; i++) {
        struct wh_event ev = {
            .type = "t", .body = "{}", .body_len = 2, .id = 100000 + t * 1000 + i};
        if (plugin_handle(shared, &ev, 5000, e, sizeof e) != 0) {
            fprintf(stderr, "writer %ld: %s\n", t, e);
            return (void *)1;
        }
    }
    return NULL;
}

static void many_threads_one_pool(void **state)
{
    pthread_t th[8];
    (void)state;
    shared = load_on(&srv, NULL);
    assert_non_null(shared);
    for (long i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, writer, (void *)i);
    for (int i = 0; i < 8; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(ask_int(&srv, "XLEN %s", "ev:t"), 1600);
    assert_true(dest_server_clients(&srv) <= 8); /* at most one per thread, kept idle */
    plugin_unload(shared);
    /* destroy closed them (the server sees each close a moment later: look until it does) */
    for (long long end = now_ms() + 10000; dest_server_clients(&srv) != 0 && now_ms() < end;)
        ;
    assert_int_equal(dest_server_clients(&srv), 0);
}

static void down_then_up_again(void **state)
{
    struct plugin *p;
    long long t0;
    (void)state;
    p = load_on(&srv, ",\"stream\":\"outage\"");
    assert_non_null(p);
    assert_int_equal(deliver(p, 1, 1, 2000), 0); /* an idle connection in the pool */
    assert_int_equal(dest_server_stop(&srv), 0);
    t0 = now_ms();
    assert_int_equal(deliver(p, 2, 1, 500), -1); /* the pooled connection is dead */
    assert_int_equal(deliver(p, 2, 2, 500), -1); /* and a new one is refused */
    assert_non_null(strstr(err, "redis: cannot connect to 127.0.0.1"));
    assert_true(now_ms() - t0 < 2000);
    assert_int_equal(dest_server_start(&srv), 0);
    assert_int_equal(deliver(p, 2, 3, 2000), 0); /* reconnected by itself */
    assert_int_equal(ask_int(&srv, "XLEN %s", "outage"), 2);
    plugin_unload(p);
}

static void keeps_to_its_budget(void **state)
{
    struct plugin *p;
    long long t0, took;
    redisReply *r;
    (void)state;
    p = load_on(&srv, ",\"stream\":\"paused\"");
    assert_non_null(p);
    assert_int_equal(deliver(p, 7, 1, 2000), 0);
    r = ask(&srv, "CLIENT PAUSE 1500 WRITE"); /* a slow Redis: writes wait */
    freeReplyObject(r);
    t0 = now_ms();
    assert_int_equal(deliver(p, 8, 1, 300), -1);
    took = now_ms() - t0;
    assert_non_null(strstr(err, "timed out"));
    assert_true(took >= 250 && took < 1000);
    /* the paused script runs when the pause ends; the retry then adds nothing more */
    for (int i = 0; i < 100 && deliver(p, 8, 2, 3000) != 0; i++)
        ;
    assert_int_equal(ask_int(&srv, "XLEN %s", "paused"), 2);
    plugin_unload(p);
}

static void refusing_redis_is_a_readable_error(void **state)
{
    struct plugin *p;
    redisReply *r;
    (void)state;
    r = ask(&srv, "SET %s %s", "ev:incoming_message_not_a_stream", "x");
    freeReplyObject(r);
    p = load_on(&srv, ",\"stream\":\"ev:{type}_not_a_stream\"");
    assert_non_null(p);
    assert_int_equal(deliver(p, 9, 1, 2000), -1);
    assert_non_null(strstr(err, "redis: XADD to ev:incoming_message_not_a_stream failed:"));
    assert_non_null(strstr(err, "WRONGTYPE"));
    plugin_unload(p);
}

static void passwords(void **state)
{
    char extra[200];
    struct plugin *p;
    (void)state;
    snprintf(extra, sizeof extra, ",\"password_env\":\"WH_TEST_REDIS_PW\"");
    setenv("WH_TEST_REDIS_PW", "not-the-password", 1);
    p = load_on(&locked, extra);
    assert_non_null(p);
    assert_int_equal(deliver(p, 1, 1, 2000), -1);
    assert_non_null(strstr(err, "redis: AUTH failed:"));
    assert_non_null(strstr(err, "WRONGPASS"));
    assert_null(strstr(err, "not-the-password"));
    plugin_unload(p);
    setenv("WH_TEST_REDIS_PW", locked.password, 1);
    p = load_on(&locked, extra);
    assert_int_equal(deliver(p, 1, 1, 2000), 0);
    plugin_unload(p);
    p = load_on(&locked, NULL); /* none at all */
    assert_int_equal(deliver(p, 2, 1, 2000), -1);
    assert_non_null(strstr(err, "redis: PING (set password_env if the server wants one) failed"));
    assert_non_null(strstr(err, "NOAUTH"));
    plugin_unload(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refuses_bad_config),
        cmocka_unit_test(adds_each_event_once),
        cmocka_unit_test(trims_to_maxlen),
        cmocka_unit_test(many_threads_one_pool),
        cmocka_unit_test(down_then_up_again),
        cmocka_unit_test(keeps_to_its_budget),
        cmocka_unit_test(refusing_redis_is_a_readable_error),
        cmocka_unit_test(passwords),
    };
    int rc;
    if (redis_server_start(&srv, NULL) || redis_server_start(&locked, "s3cret-pw")) return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    dest_server_destroy(&srv);
    dest_server_destroy(&locked);
    return rc;
}
