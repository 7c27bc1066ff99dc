/* postgres through the real loader against a real PostgreSQL cluster: config refusals, one
 * row per event id however often it comes, a missing table, many threads on one pool, the
 * database stopped and started, a statement behind a lock stopped at its budget (and
 * cancelled on the server), a batch with one event the server refuses, passwords. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pg_cluster.h"
#include "runtime/plugin_loader.h"

static struct pg_cluster cluster;
static char err[1024];

static struct plugin *load(const char *config)
{
    struct plugin *p = NULL;
    if (plugin_load(PLUGIN, config, "hooks.yaml:9", &p, err, sizeof err)) return NULL;
    return p;
}

/* The plugin on the test cluster: table t (created), with more keys in extra. */
static struct plugin *load_on(const char *table, const char *extra)
{
    char config[1200];
    snprintf(config, sizeof config, "{\"conninfo\":\"%s\",\"table\":\"%s\",\"create\":true%s}",
             cluster.uri, table, extra ? extra : "");
    return load(config);
}

static int deliver(struct plugin *p, long long id, int timeout_ms)
{
    char body[64];
    struct wh_header h[] = {{"User-Agent", "Wappcloud/1"}, {"X-Wappcloud-Signature", "sha256=00"}};
    struct wh_event ev = {.type = "incoming_message",
                          .received_at = 1234.5,
                          .id = id,
                          .attempt = 1,
                          .headers = h,
                          .n_headers = 2};
    snprintf(body, sizeof body, "{\"n\":%lld,\"text\":\"caf\\u00e9\"}", id);
    ev.body = body;
    ev.body_len = strlen(body);
    return plugin_handle(p, &ev, timeout_ms, err, sizeof err);
}

static long long count(const char *sql)
{
    return pg_cluster_sql(&cluster, sql);
}

/* A session holding table t locked (in a transaction the caller commits). */
static PGconn *hold_table(const char *t)
{
    char sql[200];
    PGconn *locker = PQconnectdb(cluster.uri);
    PGresult *r;
    assert_int_equal(PQstatus(locker), CONNECTION_OK);
    PQclear(PQexec(locker, "BEGIN"));
    snprintf(sql, sizeof sql, "LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", t);
    r = PQexec(locker, sql);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    return locker;
}

/* The plugin's backends waiting for a lock, once they number want: bounded (~5 s). */
static long long lock_waiters(long long want)
{
    const char *sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                      "'wapphook' AND wait_event_type = 'Lock'";
    long long n = -1;
    for (int i = 0; i < 250 && (n = count(sql)) != want; i++)
        count("SELECT pg_sleep(0.02)");
    return n;
}

static void refuses_bad_config(void **state)
{
    char config[600];
    (void)state;
    assert_null(load("{}"));
    assert_non_null(strstr(err, "hooks.yaml:9: plugin"));
    assert_non_null(strstr(err, "config needs conninfo"));
    assert_null(load("{\"conninfo\":\"dbname=x\",\"table\":\"t; DROP TABLE x\"}"));
    assert_non_null(strstr(err, "is not a name or schema.name"));
    assert_null(load("{\"conninfo\":\"dbname=x\",\"table\":\"a.b.c\"}"));
    assert_null(load("{\"conninfo\":\"dbname=x\",\"table\":\"1t\"}"));
    assert_null(load("{\"conninfo\":\"dbname=x\",\"table\":\"t\",\"create\":\"yes\"}"));
    assert_non_null(strstr(err, "config key create"));
    assert_null(load("{\"conninfo\":\"dbname=x\",\"table\":\"t\",\"tabel\":\"t\"}"));
    assert_non_null(strstr(err, "config key tabel"));
    assert_null(load("{\"conninfo\":\"dbname=x password=hunter2\",\"table\":\"t\"}"));
    assert_non_null(strstr(err, "password_env"));
    assert_null(strstr(err, "hunter2"));
    assert_null(load("{\"conninfo\":\"postgresql://u:hunter2@localhost/x\",\"table\":\"t\"}"));
    assert_non_null(strstr(err, "password_env"));
    assert_null(load("{\"conninfo\":\"no_equals_sign\",\"table\":\"t\"}"));
    assert_non_null(strstr(err, "conninfo:"));
    unsetenv("WH_TEST_NO_SUCH_VAR");
    snprintf(
        config, sizeof config,
        "{\"conninfo\":\"dbname=x\",\"table\":\"t\",\"password_env\":\"WH_TEST_NO_SUCH_VAR\"}");
    assert_null(load(config));
    assert_non_null(strstr(err, "WH_TEST_NO_SUCH_VAR is not set"));
    /* the database is not contacted at load: a wrong one loads, and fails its events */
    {
        struct plugin *p = load("{\"conninfo\":\"host=/nonexistent\",\"table\":\"public.t\"}");
        assert_non_null(p);
        assert_int_equal(deliver(p, 1, 2000), -1);
        assert_non_null(strstr(err, "postgres: cannot connect:"));
        plugin_unload(p);
    }
}

static void inserts_each_event_once(void **state)
{
    struct plugin *p;
    (void)state;
    p = load_on("events", NULL);
    assert_non_null(p);
    assert_string_equal(plugin_name(p), "postgres");
    assert_int_equal(deliver(p, 42, 5000), 0);
    assert_int_equal(deliver(p, 42, 5000), 0); /* a retry: nothing more */
    assert_int_equal(deliver(p, 43, 5000), 0);
    assert_int_equal(count("SELECT count(*) FROM events"), 2);
    assert_int_equal(count("SELECT count(*) FROM events WHERE event_id = '42' AND type = "
                           "'incoming_message' AND payload->>'text' = 'café' AND "
                           "(payload->>'n')::int = 42 AND received_at = to_timestamp(1234.5)"),
                     1);
    /* the headers kept: User-Agent yes, the signature never */
    assert_int_equal(count("SELECT count(*) FROM events WHERE headers->>'User-Agent' = "
                           "'Wappcloud/1' AND NOT headers ? 'X-Wappcloud-Signature'"),
                     2);
    plugin_unload(p);
}

static void a_missing_table_is_a_readable_error(void **state)
{
    char config[800];
    struct plugin *p;
    (void)state;
    snprintf(config, sizeof config, "{\"conninfo\":\"%s\",\"table\":\"nowhere\"}", cluster.uri);
    p = load(config);
    assert_non_null(p);
    assert_int_equal(deliver(p, 1, 5000), -1);
    assert_non_null(strstr(err, "postgres: insert into \"nowhere\" failed:"));
    assert_non_null(strstr(err, "does not exist (set create: true, or create the table)"));
    assert_int_equal(deliver(p, 1, 5000), -1); /* the connection stays usable */
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
        if (plugin_handle(shared, &ev, 10000, e, sizeof e) != 0) {
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
    shared = load_on("threads", NULL);
    assert_non_null(shared);
    for (long i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, writer, (void *)i);
    for (int i = 0; i < 8; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(count("SELECT count(*) FROM threads"), 1600);
    assert_true(count("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                      "'wapphook'") <= 8);
    plugin_unload(shared);
    assert_int_equal(count("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                           "'wapphook'"),
                     0); /* destroy closed them */
}

static void down_then_up_again(void **state)
{
    struct plugin *p;
    long long t0;
    (void)state;
    p = load_on("outage", NULL);
    assert_non_null(p);
    assert_int_equal(deliver(p, 1, 5000), 0); /* an idle connection in the pool */
    assert_int_equal(pg_cluster_stop(&cluster), 0);
    t0 = now_ms();
    assert_int_equal(deliver(p, 2, 1000), -1); /* the pooled connection is dead */
    assert_int_equal(deliver(p, 2, 1000), -1); /* and a new one is refused */
    assert_non_null(strstr(err, "postgres: cannot connect:"));
    assert_true(now_ms() - t0 < 3000);
    assert_int_equal(pg_cluster_start(&cluster), 0);
    assert_int_equal(deliver(p, 2, 5000), 0); /* reconnected by itself */
    assert_int_equal(count("SELECT count(*) FROM outage"), 2);
    plugin_unload(p);
}

static void keeps_to_its_budget_and_cancels(void **state)
{
    struct plugin *p;
    PGconn *locker;
    long long t0, took;
    (void)state;
    p = load_on("locked", NULL);
    assert_non_null(p);
    assert_int_equal(deliver(p, 1, 5000), 0);
    locker = hold_table("locked");
    t0 = now_ms();
    assert_int_equal(deliver(p, 2, 300), -1);
    took = now_ms() - t0;
    assert_non_null(strstr(err, "timed out"));
    assert_true(took >= 250 && took < 1500);
    /* cancelled on the server: no backend of the plugin waits for the lock */
    assert_int_equal(lock_waiters(0), 0); /* the cancel is asynchronous: looked for again */
    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    assert_int_equal(deliver(p, 2, 5000), 0);
    assert_int_equal(count("SELECT count(*) FROM locked"), 2);
    plugin_unload(p);
}

/* Calls that wait behind a held table go in one INSERT; one the server refuses (jsonb takes
 * no \u0000) fails alone, with the server's reason, and the others of its batch go in. */
struct call {
    pthread_t t;
    struct plugin *p;
    long long id;
    const char *body;
    int started, rc;
    char err[512];
};

static void *call_main(void *arg)
{
    struct call *c = arg;
    struct wh_event ev = {.type = "t", .body = c->body, .body_len = strlen(c->body), .id = c->id};
    __atomic_store_n(&c->started, 1, __ATOMIC_RELEASE);
    c->rc = plugin_handle(c->p, &ev, 10000, c->err, sizeof c->err);
    return NULL;
}

static void one_bad_event_fails_alone_in_its_batch(void **state)
{
    static const char *bodies[] = {"{\"n\":1}", "{\"n\":2}", "{\"s\":\"\\u0000\"}", "{\"n\":4}",
                                   "{\"n\":5}"};
    struct call c[5];
    struct plugin *p;
    PGconn *locker;
    (void)state;
    p = load_on("batched", NULL);
    assert_non_null(p);
    assert_int_equal(deliver(p, 99, 5000), 0); /* the table is there */
    locker = hold_table("batched");
    for (int i = 0; i < 5; i++) {
        c[i] = (struct call){.p = p, .id = i + 1, .body = bodies[i]};
        assert_int_equal(pthread_create(&c[i].t, NULL, call_main, &c[i]), 0);
        if (i == 0) /* the first is under way: its INSERT waits for the lock */
            assert_int_equal(lock_waiters(1), 1);
    }
    for (int i = 1; i < 5; i++)
        while (!__atomic_load_n(&c[i].started, __ATOMIC_ACQUIRE))
            sched_yield();
    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    for (int i = 0; i < 5; i++)
        pthread_join(c[i].t, NULL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(c[i].rc, i == 2 ? -1 : 0);
    assert_non_null(strstr(c[2].err, "postgres: insert into \"batched\" failed:"));
    assert_non_null(strstr(c[2].err, "unsupported Unicode escape sequence"));
    assert_int_equal(count("SELECT count(*) FROM batched WHERE event_id IN ('1','2','4','5')"), 4);
    assert_int_equal(count("SELECT count(*) FROM batched WHERE event_id = '3'"), 0);
    plugin_unload(p);
}

static void passwords(void **state)
{
    char config[1200], conninfo[800];
    struct plugin *p;
    (void)state;
    /* a role that must give its password (the cluster trusts every other one) */
    assert_true(count("CREATE ROLE pwuser LOGIN PASSWORD 'the-right-one' SUPERUSER") >= 0);
    {
        char path[600];
        FILE *f;
        char *old;
        long n;
        snprintf(path, sizeof path, "%s/data/pg_hba.conf", cluster.dir);
        f = fopen(path, "r");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        rewind(f);
        old = calloc(1, (size_t)n + 1);
        assert_int_equal(fread(old, 1, (size_t)n, f), (size_t)n);
        fclose(f);
        f = fopen(path, "w");
        fprintf(f, "local all pwuser scram-sha-256\n%s", old);
        fclose(f);
        free(old);
    }
    assert_true(count("SELECT pg_reload_conf()::int") == 1);
    snprintf(conninfo, sizeof conninfo, "%s&user=pwuser", cluster.uri);
    for (char *q = strstr(conninfo, "postgres@"); q; q = NULL)
        memmove(q, q + strlen("postgres@"), strlen(q + strlen("postgres@")) + 1);
    snprintf(config, sizeof config,
             "{\"conninfo\":\"%s\",\"table\":\"pw\",\"create\":true,"
             "\"password_env\":\"WH_TEST_PG_PW\"}",
             conninfo);
    setenv("WH_TEST_PG_PW", "not-the-right-one", 1);
    p = load(config);
    assert_non_null(p);
    assert_int_equal(deliver(p, 1, 5000), -1);
    assert_non_null(strstr(err, "password authentication failed"));
    assert_null(strstr(err, "not-the-right-one"));
    plugin_unload(p);
    setenv("WH_TEST_PG_PW", "the-right-one", 1);
    p = load(config);
    assert_int_equal(deliver(p, 1, 5000), 0);
    plugin_unload(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refuses_bad_config),
        cmocka_unit_test(inserts_each_event_once),
        cmocka_unit_test(a_missing_table_is_a_readable_error),
        cmocka_unit_test(many_threads_one_pool),
        cmocka_unit_test(down_then_up_again),
        cmocka_unit_test(keeps_to_its_budget_and_cancels),
        cmocka_unit_test(one_bad_event_fails_alone_in_its_batch),
        cmocka_unit_test(passwords),
    };
    int rc;
    if (pg_cluster_create(&cluster)) return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    pg_cluster_destroy(&cluster);
    return rc;
}
