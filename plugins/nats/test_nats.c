/* nats through the real loader against a real nats-server -js: config refusals, a server
 * down at load, core publish with both headers, one stream message per event id however often
 * it comes, no stream for the subject, many threads on one connection, the server stopped and
 * started, passwords, and 200 loads and unloads of the plugin (libnats stays pinned). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dest_servers.h"
#include "harness.h"
#include "runtime/plugin_loader.h"

static struct dest_server srv, locked;
static natsConnection *nc;
static jsCtx *js;
static char err[1024];

static struct plugin *load(const char *config)
{
    struct plugin *p = NULL;
    if (plugin_load(PLUGIN, config, "hooks.yaml:5", &p, err, sizeof err)) return NULL;
    return p;
}

static struct plugin *load_on(const struct dest_server *s, const char *subject, int jetstream,
                              const char *extra)
{
    char config[800];
    snprintf(config, sizeof config, "{\"url\":\"%s\",\"subject\":\"%s\",\"jetstream\":%s%s}",
             s->url, subject, jetstream ? "true" : "false", extra ? extra : "");
    return load(config);
}

static int deliver(struct plugin *p, const char *type, long long id, int timeout_ms)
{
    char body[64];
    struct wh_event ev = {.type = type, .received_at = 1.5, .id = id, .attempt = 1};
    snprintf(body, sizeof body, "{\"n\":%lld}", id);
    ev.body = body;
    ev.body_len = strlen(body);
    return plugin_handle(p, &ev, timeout_ms, err, sizeof err);
}

/* Calls until one succeeds (the connection comes back in the background): bounded. */
static int deliver_once_connected(struct plugin *p, const char *type, long long id)
{
    long long end = now_ms() + 15000;
    while (now_ms() < end) {
        if (deliver(p, type, id, 2000) == 0) return 0;
        nats_Sleep(50); /* the reconnect runs on libnats's thread: look again */
    }
    return -1;
}

/* The server's count of client connections once it reaches want (a close is seen by the server
 * a moment after the client made it): bounded. */
static int clients_settle(int want)
{
    long long end = now_ms() + 10000;
    int n;
    while ((n = dest_server_clients(&srv)) != want && now_ms() < end)
        nats_Sleep(20);
    return n;
}

static uint64_t stream_msgs(const char *stream)
{
    jsStreamInfo *si = NULL;
    jsErrCode je = 0;
    uint64_t n;
    assert_int_equal(js_GetStreamInfo(&si, js, stream, NULL, &je), NATS_OK);
    n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

static void add_stream(const char *name, const char *subject)
{
    jsStreamConfig sc;
    const char *subjects[] = {subject};
    jsErrCode je = 0;
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    assert_int_equal(js_AddStream(NULL, js, &sc, NULL, &je), NATS_OK);
}

static void refuses_bad_config(void **state)
{
    (void)state;
    assert_null(load("{}"));
    assert_non_null(strstr(err, "hooks.yaml:5: plugin"));
    assert_non_null(strstr(err, "config needs url"));
    assert_null(load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a.*\"}"));
    assert_non_null(strstr(err, "config key subject"));
    assert_null(load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a b\"}"));
    assert_null(load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a\",\"jetstream\":1}"));
    assert_non_null(strstr(err, "config key jetstream"));
    assert_null(load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a\",\"subjekt\":\"a\"}"));
    assert_non_null(strstr(err, "config key subjekt"));
    assert_null(load("{\"url\":\"nats://u:hunter2@127.0.0.1:1\",\"subject\":\"a\"}"));
    assert_non_null(strstr(err, "password_env"));
    assert_null(strstr(err, "hunter2"));
    unsetenv("WH_TEST_NO_SUCH_VAR");
    assert_null(load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a\",\"user\":\"u\","
                     "\"password_env\":\"WH_TEST_NO_SUCH_VAR\"}"));
    assert_non_null(strstr(err, "WH_TEST_NO_SUCH_VAR is not set"));
    setenv("WH_TEST_NATS_PW", "x", 1);
    assert_null(load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a\","
                     "\"password_env\":\"WH_TEST_NATS_PW\"}"));
    assert_non_null(strstr(err, "password_env needs user"));
}

static void loads_while_the_server_is_down(void **state)
{
    struct plugin *p;
    long long t0;
    (void)state;
    /* nothing listens on port 1: the load succeeds, each event fails at once */
    p = load("{\"url\":\"nats://127.0.0.1:1\",\"subject\":\"a\",\"jetstream\":true}");
    assert_non_null(p);
    t0 = now_ms();
    assert_int_equal(deliver(p, "t", 1, 1000), -1);
    assert_non_null(strstr(err, "nats: cannot connect to nats://127.0.0.1:1"));
    assert_true(now_ms() - t0 < 500);
    plugin_unload(p);
}

static void core_publish_carries_body_and_headers(void **state)
{
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    const char *v = NULL;
    struct plugin *p;
    (void)state;
    assert_int_equal(natsConnection_SubscribeSync(&sub, nc, "core.>"), NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
    p = load_on(&srv, "core.{type}", 0, NULL);
    assert_non_null(p);
    assert_string_equal(plugin_name(p), "nats");
    assert_int_equal(deliver(p, "incoming_message", 42, 2000), 0);
    assert_int_equal(natsSubscription_NextMsg(&m, sub, 5000), NATS_OK);
    assert_string_equal(natsMsg_GetSubject(m), "core.incoming_message");
    assert_string_equal(natsMsg_GetData(m), "{\"n\":42}");
    assert_int_equal(natsMsgHeader_Get(m, "Wappcloud-Event", &v), NATS_OK);
    assert_string_equal(v, "incoming_message");
    assert_int_equal(natsMsgHeader_Get(m, "Nats-Msg-Id", &v), NATS_OK);
    assert_string_equal(v, "42");
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    plugin_unload(p);
}

static void jetstream_keeps_each_event_once(void **state)
{
    struct plugin *p;
    (void)state;
    add_stream("ONCE", "once.>");
    p = load_on(&srv, "once.{type}", 1, NULL);
    assert_non_null(p);
    assert_int_equal(deliver(p, "t", 42, 2000), 0);
    assert_int_equal(deliver(p, "t", 42, 2000), 0); /* a retry: the stream drops it */
    assert_int_equal(deliver(p, "t", 43, 2000), 0);
    assert_int_equal(stream_msgs("ONCE"), 2);
    {
        natsMsg *m = NULL;
        const char *v = NULL;
        jsErrCode je = 0;
        assert_int_equal(js_GetMsg(&m, js, "ONCE", 1, NULL, &je), NATS_OK);
        assert_int_equal(natsMsgHeader_Get(m, "Nats-Msg-Id", &v), NATS_OK);
        assert_string_equal(v, "42");
        natsMsg_Destroy(m);
    }
    /* no stream takes the subject: a readable error */
    plugin_unload(p);
    p = load_on(&srv, "nowhere.{type}", 1, NULL);
    assert_int_equal(deliver(p, "t", 1, 2000), -1);
    assert_string_equal(err, "nats: no JetStream stream takes subject nowhere.t (no responders)");
    plugin_unload(p);
}

static struct plugin *shared;

static void *writer(void *arg)
{
    long t = (long)arg;
    for (int i = 0; i < 200; i++) {
        char e[512], body[32];
        struct wh_event ev = {.type = "t", .id = 100000 + t * 1000 + i};
        snprintf(body, sizeof body, "{}");
        ev.body = body;
        ev.body_len = 2;
        if (plugin_handle(shared, &ev, 5000, e, sizeof e) != 0) {
            fprintf(stderr, "writer %ld: %s\n", t, e);
            return (void *)1;
        }
    }
    return NULL;
}

static void many_threads_one_connection(void **state)
{
    pthread_t th[8];
    (void)state;
    add_stream("MANY", "many.>");
    shared = load_on(&srv, "many.{type}", 1, NULL);
    assert_non_null(shared);
    for (long i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, writer, (void *)i);
    for (int i = 0; i < 8; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(stream_msgs("MANY"), 1600);
    assert_int_equal(dest_server_clients(&srv), 2); /* the test's and the plugin's */
    plugin_unload(shared);
    assert_int_equal(clients_settle(1), 1); /* destroy closed it */
}

static void down_then_up_again(void **state)
{
    struct plugin *p;
    long long t0;
    (void)state;
    add_stream("OUTAGE", "outage.>");
    p = load_on(&srv, "outage.{type}", 1, NULL);
    assert_int_equal(deliver(p, "t", 1, 2000), 0);
    assert_int_equal(dest_server_stop(&srv), 0);
    t0 = now_ms();
    assert_int_equal(deliver(p, "t", 2, 500), -1);
    assert_true(now_ms() - t0 < 1500);
    assert_int_equal(dest_server_start(&srv), 0);
    assert_int_equal(deliver_once_connected(p, "t", 2), 0); /* reconnected by itself */
    assert_int_equal(deliver_once_connected(p, "t", 2), 0); /* and a retry adds nothing */
    /* the test's own connection reconnects too before it asks */
    for (long long end = now_ms() + 15000;
         natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED && now_ms() < end;)
        nats_Sleep(50);
    assert_int_equal(stream_msgs("OUTAGE"), 2);
    plugin_unload(p);
}

static void passwords(void **state)
{
    struct plugin *p;
    (void)state;
    setenv("WH_TEST_NATS_PW", "not-the-right-one", 1);
    p = load_on(&locked, "pw", 0, ",\"user\":\"wapphook\",\"password_env\":\"WH_TEST_NATS_PW\"");
    assert_non_null(p);
    assert_int_equal(deliver(p, "t", 1, 1000), -1);
    printf("a wrong password: %s\n", err);
    assert_non_null(strstr(err, "nats: cannot connect to"));
    assert_non_null(strstr(err, "uthorization"));
    assert_null(strstr(err, "not-the-right-one"));
    plugin_unload(p);
    setenv("WH_TEST_NATS_PW", locked.password, 1);
    p = load_on(&locked, "pw", 0, ",\"user\":\"wapphook\",\"password_env\":\"WH_TEST_NATS_PW\"");
    assert_int_equal(deliver_once_connected(p, "t", 1), 0);
    plugin_unload(p);
}

static void loads_and_unloads_many_times(void **state)
{
    (void)state;
    add_stream("CYCLE", "cycle.>");
    for (int i = 0; i < 200; i++) {
        struct plugin *p = load_on(&srv, "cycle.{type}", 1, NULL);
        assert_non_null(p);
        assert_int_equal(deliver_once_connected(p, "t", i + 1), 0);
        plugin_unload(p);
    }
    assert_int_equal(stream_msgs("CYCLE"), 200);
    assert_int_equal(clients_settle(1), 1); /* the test's own */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refuses_bad_config),
        cmocka_unit_test(loads_while_the_server_is_down),
        cmocka_unit_test(core_publish_carries_body_and_headers),
        cmocka_unit_test(jetstream_keeps_each_event_once),
        cmocka_unit_test(many_threads_one_connection),
        cmocka_unit_test(down_then_up_again),
        cmocka_unit_test(passwords),
        cmocka_unit_test(loads_and_unloads_many_times),
    };
    int rc;
    if (nats_server_start(&srv, 1, NULL) || nats_server_start(&locked, 0, "s3cret-pw")) return 1;
    if (natsConnection_ConnectTo(&nc, srv.url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    dest_server_destroy(&srv);
    dest_server_destroy(&locked);
    return rc;
}
