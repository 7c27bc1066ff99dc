/*
 * The destinations (docs/destinations.md) through the real server, against real servers the
 * test starts: `test_destinations redis` (redis-server), `postgres` (a throwaway PostgreSQL
 * cluster), `nats` (nats-server -js). For each: events arrive with their id, type and body;
 * a retried delivery and a replay add nothing; the destination stopped for 10 s under load in
 * durable mode, then started again, holds every acknowledged event exactly once; a refusal
 * (wrong password, no such table or stream) is a readable error; 1,000 reloads under load
 * leave no connection and no memory behind.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dest_servers.h"
#include "harness.h"
#include "pg_cluster.h"

#ifdef __SANITIZE_ADDRESS__
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

enum kind { REDIS, POSTGRES, NATS };
static enum kind kind;
static const char *kind_name;

static char dir[256], out[65536];
static struct wh_proc srv;
static struct dest_server ds;     /* redis or nats */
static struct pg_cluster cluster; /* postgres */
static int spools;                /* a fresh spool per manifest: event ids from 1 */

/* One entry as the destination holds it. */
struct entry {
    char id[64], type[80];
    long long n; /* the body's "n" */
};

static const char *in(const char *name)
{
    return path_in(dir, name);
}

/* --- the destination: start, stop, read back ------------------------------------------------ */

static natsConnection *nc;
static jsCtx *js;

static int dest_up(void)
{
    return kind == POSTGRES ? pg_cluster_start(&cluster) : dest_server_start(&ds);
}

static int dest_down(void)
{
    return kind == POSTGRES ? pg_cluster_stop(&cluster) : dest_server_stop(&ds);
}

/* The handler's lines in a manifest (its timeout_ms included). */
static const char *handler_yaml(void)
{
    static char h[1024];
    switch (kind) {
    case REDIS:
        snprintf(h, sizeof h,
                 "    - plugin: redis_stream\n"
                 "      config: {url: \"%s\", stream: \"wappcloud:{type}\", maxlen: 1000000}\n"
                 "      timeout_ms: 1000\n",
                 ds.url);
        break;
    case POSTGRES:
        snprintf(h, sizeof h,
                 "    - plugin: postgres\n"
                 "      config: {conninfo: \"%s\", table: wappcloud_events, create: true}\n"
                 "      timeout_ms: 1000\n",
                 cluster.uri);
        break;
    case NATS:
        snprintf(h, sizeof h,
                 "    - plugin: nats\n"
                 "      config: {url: \"%s\", subject: \"wappcloud.{type}\", jetstream: true}\n"
                 "      timeout_ms: 1000\n",
                 ds.url);
        break;
    }
    return h;
}

static int add_entry(struct entry **all, int *n, int *cap, const char *id, const char *type,
                     const char *body, size_t body_len)
{
    json_t *j = json_loadb(body, body_len, 0, NULL);
    struct entry *e;
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 1024;
        *all = realloc(*all, (size_t)*cap * sizeof **all);
    }
    e = &(*all)[(*n)++];
    snprintf(e->id, sizeof e->id, "%s", id ? id : "");
    snprintf(e->type, sizeof e->type, "%s", type ? type : "");
    e->n = j ? json_integer_value(json_object_get(j, "n")) : -1;
    json_decref(j);
    return 0;
}

static redisContext *redis_client(void)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", ds.port, tv);
    assert_true(c && !c->err);
    return c;
}

/* Every entry the destination holds now (caller frees). */
static int read_all(struct entry **all)
{
    int n = 0, cap = 0;
    *all = NULL;
    if (kind == REDIS) {
        redisContext *c = redis_client();
        redisReply *keys = redisCommand(c, "KEYS wappcloud:*");
        assert_non_null(keys);
        for (size_t k = 0; k < keys->elements; k++) {
            const char *key = keys->element[k]->str;
            redisReply *r;
            if (strstr(key, ":wapphook-seen:")) continue;
            r = redisCommand(c, "XRANGE %s - +", key);
            assert_int_equal(r->type, REDIS_REPLY_ARRAY);
            for (size_t i = 0; i < r->elements; i++) {
                redisReply *f = r->element[i]->element[1];
                const char *id = NULL, *type = NULL, *body = NULL;
                size_t body_len = 0;
                for (size_t x = 0; x + 1 < f->elements; x += 2) {
                    const char *name = f->element[x]->str;
                    if (!strcmp(name, "id")) id = f->element[x + 1]->str;
                    if (!strcmp(name, "type")) type = f->element[x + 1]->str;
                    if (!strcmp(name, "body")) {
                        body = f->element[x + 1]->str;
                        body_len = f->element[x + 1]->len;
                    }
                }
                add_entry(all, &n, &cap, id, type, body ? body : "", body_len);
            }
            freeReplyObject(r);
        }
        freeReplyObject(keys);
        redisFree(c);
    } else if (kind == POSTGRES) {
        PGconn *c = PQconnectdb(cluster.uri);
        PGresult *r = PQexec(c, "SELECT event_id, type, payload::text FROM wappcloud_events");
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            for (int i = 0; i < PQntuples(r); i++)
                add_entry(all, &n, &cap, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                          PQgetvalue(r, i, 2), strlen(PQgetvalue(r, i, 2)));
        PQclear(r);
        PQfinish(c);
    } else {
        jsStreamInfo *si = NULL;
        jsErrCode je = 0;
        assert_int_equal(js_GetStreamInfo(&si, js, "WAPPCLOUD", NULL, &je), NATS_OK);
        for (uint64_t seq = si->State.FirstSeq; si->State.Msgs && seq <= si->State.LastSeq; seq++) {
            natsMsg *m = NULL;
            const char *id = NULL, *type = NULL;
            if (js_GetMsg(&m, js, "WAPPCLOUD", seq, NULL, &je) != NATS_OK) continue;
            natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
            natsMsgHeader_Get(m, "Wappcloud-Event", &type);
            add_entry(all, &n, &cap, id, type, natsMsg_GetData(m),
                      (size_t)natsMsg_GetDataLength(m));
            natsMsg_Destroy(m);
        }
        jsStreamInfo_Destroy(si);
    }
    return n;
}

/* Empties the destination between cases. */
static void dest_clear(void)
{
    if (kind == REDIS) {
        redisContext *c = redis_client();
        freeReplyObject(redisCommand(c, "FLUSHALL"));
        redisFree(c);
    } else if (kind == POSTGRES) {
        pg_cluster_sql(&cluster, "DROP TABLE IF EXISTS wappcloud_events");
    } else {
        jsStreamConfig sc;
        const char *subjects[] = {"wappcloud.>"};
        jsErrCode je = 0;
        js_DeleteStream(js, "WAPPCLOUD", NULL, &je);
        jsStreamConfig_Init(&sc);
        sc.Name = "WAPPCLOUD";
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        assert_int_equal(js_AddStream(NULL, js, &sc, NULL, &je), NATS_OK);
    }
}

/* Client connections the destination holds now (the test's own not counted). */
static int dest_clients(void)
{
    if (kind == POSTGRES)
        return (int)pg_cluster_sql(
            &cluster, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wapphook'");
    return dest_server_clients(&ds) - (kind == NATS); /* nats: the test's own connection */
}

/* --- the server ------------------------------------------------------------------------------- */

/* A manifest: durable (a fresh SQLite spool) or sync, the destination for every type, and
 * extra handler lines after it. */
static void start(int durable, const char *extra_handlers)
{
    char m[4096], spool[400] = "";
    if (durable) snprintf(spool, sizeof spool, "  spool: %s/spool-%d.db\n", dir, ++spools);
    snprintf(m, sizeof m,
             "server: {listen: [http://127.0.0.1:0], threads: 16, admin: 127.0.0.1:0}\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "delivery:\n"
             "  mode: %s\n%s"
             "  workers: 4\n"
             "  retry: {max_attempts: 1000, initial_backoff_ms: 100, max_backoff_ms: 2000}\n"
             "hooks:\n"
             "  \"*\":\n%s%s",
             durable ? "durable" : "sync", spool, handler_yaml(),
             extra_handlers ? extra_handlers : "");
    file_write(dir, "hooks.yaml", m);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

static void stop(void)
{
    assert_int_equal(proc_stop(&srv), 0); /* under ASan: no leak at exit either */
}

static long post(const char *type, const char *body)
{
    struct resp r;
    return post_signed(srv.http, type, body, NULL, &r);
}

/* Waits (up to timeout_ms) until the destination holds `want` entries; returns them. */
static int wait_entries(int want, struct entry **all, int timeout_ms)
{
    long long end = now_ms() + timeout_ms;
    int n;
    for (;;) {
        n = read_all(all);
        if (n >= want || now_ms() > end) return n;
        free(*all);
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    }
}

/* Waits until the spool owes nothing (nothing pending, nothing dead). */
static void wait_spool_drained(int timeout_ms)
{
    char *argv[] = {(char *)WAPPHOOK_BIN, "spool", "stats", "-c", (char *)in("hooks.yaml"), NULL};
    long long end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 0);
        if (strstr(out, "pending 0 ") && strstr(out, "dead 0\n")) return;
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 200);
    }
    fail_msg("the spool still owes deliveries: %s", out);
}

/* --- the cases ----------------------------------------------------------------------------------
 */

static int entry_by_n(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    return x->n < y->n ? -1 : x->n > y->n;
}

/* Durable mode: each event arrives with the spool's id, its type and its body; a plugin of
 * the same manifest that fails once sees the same id on its retry, as attempt 2. */
static void events_arrive_with_id_type_and_body(void **state)
{
    char extra[512], body[64];
    struct entry *all;
    int n;
    (void)state;
    dest_clear();
    snprintf(extra, sizeof extra,
             "    - plugin: %s/test_plugin.so\n"
             "      config: {tag: ONCE, show_id: true, fail_type: b}\n",
             TEST_PLUGINS);
    start(1, extra);
    for (int i = 1; i <= 3; i++) {
        snprintf(body, sizeof body, "{\"n\":%d,\"text\":\"caf\\u00e9 %d\"}", i, i);
        assert_int_equal(post(i == 2 ? "b" : "a", body), 200);
    }
    n = wait_entries(3, &all, 20000);
    assert_int_equal(n, 3);
    qsort(all, (size_t)n, sizeof *all, entry_by_n);
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i + 1); /* a fresh spool: the ids are 1, 2, 3 */
        assert_int_equal(all[i].n, i + 1);
        assert_string_equal(all[i].id, id);
        assert_string_equal(all[i].type, i == 1 ? "b" : "a");
    }
    free(all);
    /* the retried plugin: the same id, attempt 1 then 2 */
    assert_true(proc_wait_log(&srv, "ONCE sees id=2 attempt=1", NULL, 10000));
    assert_true(proc_wait_log(&srv, "ONCE sees id=2 attempt=2", NULL, 10000));
    stop();
}

/* A delivery of an event already there adds nothing: a replay from the console runs the
 * destination again (same id), and the destination keeps one entry. */
static void a_replayed_delivery_adds_nothing(void **state)
{
    struct entry *all;
    char url[512];
    struct resp r;
    int n;
    (void)state;
    dest_clear();
    start(1, NULL);
    assert_int_equal(post("t", "{\"n\":7}"), 200);
    assert_int_equal(wait_entries(1, &all, 20000), 1);
    free(all);
    wait_spool_drained(20000);
    for (int i = 0; i < 3; i++) {
        size_t mark = proc_log_mark(&srv);
        snprintf(url, sizeof url, "%s/api/events/1/replay", srv.admin);
        assert_int_equal(http_request("POST", url, NULL, "{}", 2, NULL, &r), 202);
        assert_non_null(strstr(r.body, "\"replayed\":1"));
        assert_true(proc_wait_log_since(&srv, mark, "\"result\":\"ok\"", NULL, 10000));
        wait_spool_drained(20000); /* its result written: the next replay may begin */
    }
    n = read_all(&all);
    assert_int_equal(n, 1);
    assert_string_equal(all[0].id, "1");
    free(all);
    stop();
}

/* --- under load ---------------------------------------------------------------------------------
 */

#define CLIENTS 4
#define MAX_PER_CLIENT 20000

static volatile int load_stop;
static long load_gap_ms; /* between one client's posts */
static long acked[CLIENTS][MAX_PER_CLIENT];
static int n_acked[CLIENTS], n_refused[CLIENTS];
static long acked_all; /* every client's 200s (atomic) */

/* Posts {"n": unique} until told to stop, load_gap_ms apart: each 200 is remembered. */
static long client(long id)
{
    struct resp *r = malloc(sizeof *r);
    char body[64];
    n_acked[id] = n_refused[id] = 0;
    for (long i = 0; !__atomic_load_n(&load_stop, __ATOMIC_ACQUIRE) && i < MAX_PER_CLIENT; i++) {
        long n = id * 1000000 + i, st;
        struct timespec gap = {0, load_gap_ms * 1000000L};
        snprintf(body, sizeof body, "{\"n\":%ld}", n);
        st = post_signed(srv.http, "load", body, NULL, r);
        if (st == 200) {
            acked[id][n_acked[id]++] = n;
            __atomic_add_fetch(&acked_all, 1, __ATOMIC_RELEASE);
        } else
            n_refused[id]++;
        if (load_gap_ms) nanosleep(&gap, NULL); /* a rate, not a wait for anything */
    }
    free(r);
    return 0;
}

static pthread_t load_threads[CLIENTS]; /* zero while no load runs */

static void *client_main(void *arg)
{
    client((long)arg);
    return NULL;
}

static void load_start(long gap_ms)
{
    load_gap_ms = gap_ms;
    __atomic_store_n(&load_stop, 0, __ATOMIC_RELEASE);
    for (long i = 0; i < CLIENTS; i++)
        pthread_create(&load_threads[i], NULL, client_main, (void *)i);
}

static int load_end(void)
{
    int total = 0;
    __atomic_store_n(&load_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(load_threads[i], NULL);
        total += n_acked[i];
    }
    return total;
}

/* Lets the load run for ms (the server's log is what the test waits on: nothing comes). */
static void run_for(int ms)
{
    proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, ms);
}

static void an_outage_under_load_loses_nothing_and_duplicates_nothing(void **state)
{
    struct entry *all;
    int n, acked_total, present = 0, duplicated = 0, lost = 0, refused = 0;
    (void)state;
    dest_clear();
    start(1, NULL);
    load_start(20); /* about 200 events/s in all */
    run_for(2000);
    assert_int_equal(dest_down(), 0);
    run_for(10000); /* 10 s without the destination: the spool keeps what it acknowledged */
    assert_int_equal(dest_up(), 0);
    run_for(2000);
    acked_total = load_end();
    memset(load_threads, 0, sizeof load_threads);
    for (int i = 0; i < CLIENTS; i++)
        refused += n_refused[i];
    wait_spool_drained(120000);
    n = wait_entries(acked_total, &all, 60000);
    qsort(all, (size_t)n, sizeof *all, entry_by_n);
    for (int i = 0; i < n; i++)
        if (i && all[i].n == all[i - 1].n) duplicated++;
    for (int c = 0; c < CLIENTS; c++)
        for (int i = 0; i < n_acked[c]; i++) {
            struct entry key = {.n = acked[c][i]};
            if (bsearch(&key, all, (size_t)n, sizeof *all, entry_by_n))
                present++;
            else
                lost++;
        }
    printf("%s outage of 10 s under load: acknowledged %d, present %d, duplicated %d, lost %d "
           "(refused with a non-200: %d; entries %d)\n",
           kind_name, acked_total, present, duplicated, lost, refused, n);
    free(all);
    assert_true(acked_total > 200); /* a sanitizer on a busy machine slows the senders */
    assert_int_equal(lost, 0);
    assert_int_equal(duplicated, 0);
    assert_int_equal(present, acked_total);
    assert_true(proc_wait_log(&srv, "\"result\":\"retry\"", NULL, 1000)); /* it was down */
    stop();
}

/* A destination that refuses (a wrong password, no such table or stream): the sync-mode
 * sender is told 500 and the log says why. */
static void a_refusal_is_a_readable_error(void **state)
{
    char m[2048], handler[800];
    const char *want;
    struct dest_server locked = {0};
    (void)state;
    switch (kind) {
    case REDIS:
        assert_int_equal(redis_server_start(&locked, "the-right-one"), 0);
        snprintf(handler, sizeof handler,
                 "    - plugin: redis_stream\n"
                 "      config: {url: \"%s\", stream: s, password_env: DEST_PASSWORD}\n",
                 locked.url);
        want = "WRONGPASS";
        break;
    case POSTGRES:
        snprintf(handler, sizeof handler,
                 "    - plugin: postgres\n"
                 "      config: {conninfo: \"%s\", table: no_such_table}\n",
                 cluster.uri);
        want = "no_such_table";
        break;
    case NATS:
    default:
        snprintf(handler, sizeof handler,
                 "    - plugin: nats\n"
                 "      config: {url: \"%s\", subject: \"nowhere.{type}\", jetstream: true}\n",
                 ds.url);
        want = "nowhere.t";
        break;
    }
    snprintf(m, sizeof m,
             "server: {listen: [http://127.0.0.1:0]}\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "hooks:\n  t:\n%s",
             handler);
    file_write(dir, "refused.yaml", m);
    {
        char *env[] = {"DEST_PASSWORD=not-the-right-one", NULL};
        char line[4096];
        size_t mark;
        assert_int_equal(proc_start(&srv, in("refused.yaml"), env, 1), 0);
        mark = proc_log_mark(&srv);
        assert_int_equal(post("t", "{\"n\":1}"), 500);
        assert_true(
            proc_wait_line_since(&srv, mark, "handler failed", want, 10000, line, sizeof line));
        printf("%s refusal: %s\n", kind_name, strstr(line, "\"error\""));
        assert_null(strstr(line, "not-the-right-one")); /* never the password */
    }
    stop();
    if (locked.dir[0]) dest_server_destroy(&locked);
}

static void reload_and_wait(void)
{
    size_t mark = proc_log_mark(&srv);
    kill(srv.pid, SIGHUP);
    if (!proc_wait_log_since(&srv, mark, "\"msg\":\"reloaded\"", NULL, 20000))
        fail_msg("no reload seen");
}

/* 1,000 reloads (200 under a sanitizer) while events flow, each generation serving some:
 * every reload makes a new pool and retires the old; at the end the destination holds no connection
 * of a retired one, and memory is flat. */
static void a_thousand_reloads_under_load_leave_nothing_behind(void **state)
{
    const int total = SANITIZED ? 200 : 1000;
    long warm = 0, end;
    int clients, acked_total, refused = 0;
    struct entry *all;
    (void)state;
    dest_clear();
    start(0, NULL);
    load_start(0); /* as fast as they are answered */
    for (int i = 0; i < total; i++) {
        long before = __atomic_load_n(&acked_all, __ATOMIC_ACQUIRE);
        reload_and_wait();
        /* events through each new generation: its pool is made, used, then retired */
        assert_true(wait_count(&acked_all, before + 2, 10000));
        if (i == 100) warm = proc_rss_kib(srv.pid);
    }
    acked_total = load_end();
    memset(load_threads, 0, sizeof load_threads);
    for (int i = 0; i < CLIENTS; i++)
        refused += n_refused[i];
    end = proc_rss_kib(srv.pid);
    assert_int_equal(post("t", "{\"n\":-1}"), 200); /* the newest pool: one connection */
    /* the retired pools' closes reach the server a moment later: look until they have */
    for (long long until = now_ms() + 10000;
         (clients = dest_clients()) > (kind == NATS ? 1 : CLIENTS + 1) && now_ms() < until;)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    printf("%s: %d reloads under load, %d events acknowledged, %d refused; destination "
           "connections after: %d; RSS %ld KiB after 100 reloads, %ld KiB after %d\n",
           kind_name, total, acked_total, refused, clients, warm, end, total);
    assert_true(acked_total > 0);
    assert_int_equal(refused, 0);
    assert_true(clients >= 1 && clients <= (kind == NATS ? 1 : CLIENTS + 1));
    if (!SANITIZED) assert_true(end - warm < 8192);
    assert_true(read_all(&all) >= acked_total);
    free(all);
    stop(); /* LeakSanitizer's check at exit, under ASan */
}

/* A case that failed half-way leaves its load running, its server up or its destination
 * down: the next one starts clean. */
static int teardown(void **state)
{
    (void)state;
    if (load_threads[0]) load_end();
    memset(load_threads, 0, sizeof load_threads);
    if (proc_running(&srv)) proc_stop(&srv);
    if (kind == POSTGRES ? !cluster.running : !ds.pid) dest_up();
    return 0;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(events_arrive_with_id_type_and_body, teardown),
        cmocka_unit_test_teardown(a_replayed_delivery_adds_nothing, teardown),
        cmocka_unit_test_teardown(a_refusal_is_a_readable_error, teardown),
        cmocka_unit_test_teardown(an_outage_under_load_loses_nothing_and_duplicates_nothing,
                                  teardown),
        cmocka_unit_test_teardown(a_thousand_reloads_under_load_leave_nothing_behind, teardown),
    };
    int rc;
    kind_name = argc > 1 ? argv[1] : "redis";
    kind = !strcmp(kind_name, "postgres") ? POSTGRES : !strcmp(kind_name, "nats") ? NATS : REDIS;
    tmpdir_make(dir);
    if (kind == POSTGRES ? pg_cluster_create(&cluster)
        : kind == NATS   ? nats_server_start(&ds, 1, NULL)
                         : redis_server_start(&ds, NULL))
        return 1;
    if (kind == NATS && (natsConnection_ConnectTo(&nc, ds.url) != NATS_OK ||
                         natsConnection_JetStream(&js, nc, NULL) != NATS_OK))
        return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (js) jsCtx_Destroy(js);
    if (nc) natsConnection_Destroy(nc);
    if (kind == POSTGRES)
        pg_cluster_destroy(&cluster);
    else
        dest_server_destroy(&ds);
    return rc;
}
