/* Durable delivery (delivery.mode: durable) against the real server and a real spool: SQLite
 * (`test_durable`), or PostgreSQL (`test_durable postgresql`: a throwaway cluster, the same
 * suite, then several instances sharing one spool). The suite:
 * retries with backoff, dead letters and replay (a sibling that succeeded is not re-run),
 * dedupe inside and after the window, restart resuming pending deliveries, kill -9 at 20
 * random moments under 16 clients (no acknowledged event lost), an fsync failure (no 200,
 * non-zero exit, nothing acknowledged lost), a full spool (503, then service again), delivered
 * events leaving the spool after keep_delivered_s, max_spool_mb on reload, `spool list`
 * blocked on its output without pinning the WAL, a stop deadline with a handler still
 * running, and a full disk (a loop-mounted filesystem: 503, results kept until there is
 * room, nothing lost); the upgrade of a schema-1 spool in place, kill -9 with delivery outcomes
 * still in memory (each handler runs once more, none skipped), and a reload that adds a handler
 * in front while events wait. Metrics: events_total and deliveries_total follow. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "pg_cluster.h"

static char dir[256], out[65536];
static struct wh_proc srv;
static struct resp r;

static const char *in(const char *name)
{
    return path_in(dir, name);
}

/* The backend under test: PostgreSQL when pg is set, in the cluster the suite started. */
static int pg;
static struct pg_cluster cluster;
#define LEASE_S 3 /* short, so that a dead instance's deliveries are taken over in seconds */
static int lease_s = LEASE_S; /* what spool_at writes (a test may want a long one) */
static int workers = 4;       /* what manifest_with writes */
#define PG_PASSWORD "pw-not-for-logs"

/* The spool a manifest names, by file name: that SQLite file, or (PostgreSQL) a schema of
 * its own ("spool.db" -> s_spool), written as the value of delivery.spool and its siblings. */
static const char *spool_at(const char *name)
{
    static char v[8][1024];
    static int k;
    char *o = v[k++ % 8];
    if (!pg) return strcpy(o, in(name));
    /* with a password (trust authentication ignores it): no log line may show it */
    snprintf(o, 1024,
             "\"postgresql://postgres:" PG_PASSWORD "@/postgres?host=%s/sock&port=%d\"\n"
             "  pg_schema: s_%.*s\n  lease_s: %d",
             cluster.dir, cluster.port, (int)strcspn(name, "."), name, lease_s);
    return o;
}

/* An empty spool of that name. */
static void spool_reset(const char *name)
{
    char sql[256];
    if (!pg) {
        snprintf(sql, sizeof sql, "%s-wal", name);
        unlink(in(name));
        unlink(in(sql));
        snprintf(sql, sizeof sql, "%s-shm", name);
        unlink(in(sql));
        return;
    }
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS s_%.*s CASCADE", (int)strcspn(name, "."),
             name);
    assert_int_equal(pg_cluster_sql(&cluster, sql), 0);
}

/* Does that spool exist yet? */
static int spool_exists(const char *name)
{
    char sql[256];
    if (!pg) return access(in(name), F_OK) == 0;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_namespace WHERE nspname = 's_%.*s'",
             (int)strcspn(name, "."), name);
    return pg_cluster_sql(&cluster, sql) > 0;
}

/* The tests that look into SQLite's own files (WAL, fsync, an old schema, a full disk). */
#define SQLITE_ONLY()                                                                              \
    do {                                                                                           \
        if (pg) {                                                                                  \
            printf("skipped: SQLite's own files\n");                                               \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* A manifest: a Lua handler then a file_sink (server_opts, lua_opts: more of those mappings,
 * each starting with ", "). */
static void manifest_with(const char *name, const char *spool, const char *script,
                          const char *server_opts, const char *lua_opts, const char *delivery_extra,
                          const char *sink)
{
    char m[4096];
    snprintf(m, sizeof m,
             "server: {listen: [http://127.0.0.1:0], threads: 24, admin: 127.0.0.1:0%s}\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "lua: {sandbox: false%s}\n"
             "delivery:\n  mode: durable\n  spool: %s\n  workers: %d\n%s"
             "hooks:\n  t:\n    - lua: %s\n    - plugin: %s/file_sink.so\n"
             "      config: {path: %s}\n",
             server_opts, lua_opts, spool, workers, delivery_extra, script, SHIPPED_PLUGINS,
             in(sink));
    file_write(dir, name, m);
}

/* The usual one: the flaky Lua handler (fails while `flag` exists). */
static void manifest(const char *name, const char *delivery_extra, const char *sink)
{
    manifest_with(name, spool_at("spool.db"), "flaky.lua", "", "", delivery_extra, sink);
}

static int setup(void **state)
{
    char flaky[600], hold[600];
    (void)state;
    tmpdir_make(dir);
    snprintf(flaky, sizeof flaky,
             "function handle(e)\n"
             "  local f = io.open('%s/flag')\n"
             "  if f then f:close() return false, 'flag present' end\n"
             "end\n",
             dir);
    file_write(dir, "flaky.lua", flaky);
    /* hold.lua runs until the file `hold` goes away: a delivery in flight on demand */
    snprintf(hold, sizeof hold,
             "function handle(e)\n"
             "  while true do\n"
             "    local f = io.open('%s/hold')\n"
             "    if not f then return true end\n"
             "    f:close()\n"
             "    os.execute('sleep 0.02')\n"
             "  end\n"
             "end\n",
             dir);
    file_write(dir, "hold.lua", hold);
    manifest("hooks.yaml",
             "  retry: {max_attempts: 3, initial_backoff_ms: 20, max_backoff_ms: 50}\n"
             "  dedupe: {key: data.id, window_s: 1}\n",
             "sink.ndjson");
    return proc_start(&srv, in("hooks.yaml"), NULL, 2);
}

static void unmount_small_fs(void);

/* Before each case: the shared server running. Cases stop and start it; one that fails
 * half-way may leave it stopped, and the next case must then fail (or pass) on its own,
 * not crash on a server that is not there. */
static int srv_ready(void **state)
{
    (void)state;
    if (proc_running(&srv)) return 0;
    if (srv.mu) proc_wait_exit(&srv, 0); /* reap what is left of it */
    return proc_start(&srv, in("hooks.yaml"), NULL, 2);
}

static int teardown(void **state)
{
    int rc;
    (void)state;
    rc = srv.mu ? (proc_stop(&srv) == 0 ? 0 : -1) : 0;
    unmount_small_fs(); /* if a_full_disk_answers_503_then_recovers stopped half-way */
    return rc;
}

static long post(struct wh_proc *p, const char *body)
{
    return post_signed(p->http, "t", body, NULL, &r);
}

/* Posts body until it is answered 200, up to 100 tries 50 ms apart (each a real request):
 * the server notices room again within its size poll. Returns the last status. */
static long post_until_200(const char *body)
{
    for (int tries = 0; tries < 100; tries++) {
        if (post(&srv, body) == 200) break;
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    }
    return r.status;
}

/* The value of one series in /metrics, labels as the server writes them; -1 if absent. */
static long long metric(const char *series)
{
    struct resp m;
    char url[400], want[300];
    const char *p;
    snprintf(url, sizeof url, "%s/metrics", srv.admin);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &m), 200);
    snprintf(want, sizeof want, "\n%s ", series);
    p = strstr(m.body, want);
    return p ? atoll(p + strlen(want)) : -1;
}

/* Lines of the sink file that contain `needle`. */
static int sink_count(const char *sink, const char *needle)
{
    FILE *f = fopen(in(sink), "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f) fclose(f);
    return n;
}

/* `wapphook spool a [b] -c <manifest>`, output in out. */
static int cli_on(const char *manifest_name, const char *a, const char *b)
{
    char *argv[8] = {(char *)WAPPHOOK_BIN, "spool", (char *)a, NULL, NULL, NULL, NULL, NULL};
    int n = 3;
    if (b) argv[n++] = (char *)b;
    argv[n++] = "-c";
    argv[n++] = (char *)in(manifest_name);
    return run_cli(argv, NULL, NULL, out, sizeof out);
}

static void retries_dead_letter_and_replay(void **state)
{
    size_t mark = proc_log_mark(&srv);
    (void)state;
    file_write(dir, "flag", "");
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"r1\"}}"), 200); /* on disk, not yet run */
    /* three attempts with backoff, then a dead letter */
    assert_true(
        proc_wait_log_since(&srv, mark, "\"attempt\":1,\"result\":\"retry\"", "flaky.lua", 10000));
    assert_true(
        proc_wait_log_since(&srv, mark, "\"attempt\":2,\"result\":\"retry\"", "flaky.lua", 10000));
    assert_true(
        proc_wait_log_since(&srv, mark, "\"attempt\":3,\"result\":\"dead\"", "flaky.lua", 10000));
    assert_int_equal(sink_count("sink.ndjson", "\"r1\""), 1); /* the sibling ran once */
    /* the log line comes before the result is written: look until the spool has it */
    for (int tries = 0; tries < 100; tries++) {
        assert_int_equal(cli_on("hooks.yaml", "list", "--dead"), 0);
        if (strstr(out, "lua:flaky.lua:handle")) break;
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    }
    assert_non_null(strstr(out, "lua:flaky.lua:handle"));
    assert_non_null(strstr(out, "flag present"));
    assert_null(strstr(out, "plugin:file_sink"));
    assert_int_equal(cli_on("hooks.yaml", "stats", NULL), 0);
    assert_non_null(strstr(out, "dead 1"));
    {
        /* and the metrics say the same */
        struct resp m;
        char url[400];
        snprintf(url, sizeof url, "%s/metrics", srv.admin);
        for (int tries = 0; tries < 50; tries++) { /* the gauges follow the writer's commits */
            assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &m), 200);
            if (strstr(m.body, "wapphook_spool_dead 1")) break;
            proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
        }
        assert_non_null(strstr(m.body, "wapphook_spool_dead 1"));
        assert_non_null(strstr(
            m.body,
            "wapphook_deliveries_total{handler=\"lua:flaky.lua:handle\",result=\"dead\"} 1"));
        assert_non_null(strstr(
            m.body,
            "wapphook_deliveries_total{handler=\"lua:flaky.lua:handle\",result=\"failed\"} 2"));
        assert_non_null(strstr(m.body, "wapphook_spool_commit_seconds_count"));
    }
    /* fixed: replay delivers it exactly once more, and does not re-run the sibling */
    unlink(in("flag"));
    mark = proc_log_mark(&srv);
    assert_int_equal(cli_on("hooks.yaml", "replay", "--dead"), 0);
    assert_non_null(strstr(out, "replayed: 1"));
    assert_true(
        proc_wait_log_since(&srv, mark, "\"attempt\":1,\"result\":\"ok\"", "flaky.lua", 10000));
    for (int tries = 0; tries < 100; tries++) {
        assert_int_equal(cli_on("hooks.yaml", "stats", NULL), 0);
        if (strstr(out, "dead 0")) break;
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    }
    assert_non_null(strstr(out, "dead 0"));
    assert_int_equal(sink_count("sink.ndjson", "\"r1\""), 1);
}

static void duplicates_inside_the_window_are_dropped(void **state)
{
    size_t mark = proc_log_mark(&srv);
    const char *accepted = "wapphook_events_total{type=\"t\",result=\"ok\"}";
    const char *unrouted = "wapphook_events_total{type=\"other\",result=\"unrouted\"}";
    long long accepted0 = metric(accepted), unrouted0 = metric(unrouted);
    (void)state;
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"d1\"},\"n\":1}"), 200);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"d1\"},\"n\":2}"),
                     200); /* acknowledged, dropped */
    assert_true(proc_wait_log_since(&srv, mark, "plugin:file_sink", "\"result\":\"ok\"", 10000));
    /* past the 1 s window the same key is a new event (the wait is the window itself) */
    usleep(1300 * 1000);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"d1\"},\"n\":3}"), 200);
    assert_true(proc_wait_log_since(&srv, mark, "\"event_id\"", NULL, 100));
    for (int tries = 0; tries < 100 && sink_count("sink.ndjson", "\"n\":3") == 0; tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "plugin:file_sink", NULL, 100);
    assert_int_equal(sink_count("sink.ndjson", "\"n\":1"), 1);
    assert_int_equal(sink_count("sink.ndjson", "\"n\":2"), 0);
    assert_int_equal(sink_count("sink.ndjson", "\"n\":3"), 1);
    {
        struct resp m;
        char url[400];
        snprintf(url, sizeof url, "%s/metrics", srv.admin);
        assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &m), 200);
        assert_non_null(strstr(m.body, "wapphook_duplicates_total 1"));
    }
    /* events_total counts what was accepted (a duplicate too), and a type nobody handles */
    assert_int_equal(post_signed(srv.http, "nobody_handles_this", "{}", NULL, &r), 200);
    assert_int_equal(metric(accepted), accepted0 + 3);
    assert_int_equal(metric(unrouted), unrouted0 + 1);
}

static void restart_resumes_pending_deliveries(void **state)
{
    (void)state;
    manifest("slow.yaml",
             "  retry: {max_attempts: 100, initial_backoff_ms: 50, max_backoff_ms: 100}\n",
             "sink.ndjson");
    assert_int_equal(proc_stop(&srv), 0);
    file_write(dir, "flag", "");
    assert_int_equal(proc_start(&srv, in("slow.yaml"), NULL, 2), 0);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"p1\"}}"), 200);
    assert_true(proc_wait_log(&srv, "\"result\":\"retry\"", "flaky.lua", 10000));
    assert_int_equal(proc_stop(&srv), 0); /* stopped with the delivery pending */
    unlink(in("flag"));
    assert_int_equal(proc_start(&srv, in("slow.yaml"), NULL, 2), 0);
    assert_true(proc_wait_log(&srv, "\"result\":\"ok\"", "flaky.lua", 10000));
}

/* A handler run from the spool sees the request's headers as a synchronous one would: names
 * in lower case, the first of a repeated name, values escaped and restored exactly. */
static void headers_survive_the_spool(void **state)
{
    char m[2048], sig[80], sig_h[120];
    const char *body = "{\"h\":1}";
    const char *h[] = {sig_h,
                       "X-Wappcloud-Event: t",
                       "Content-Type: application/json",
                       "X-Custom: a \"quoted\" \\ </value>",
                       "x-custom: second",
                       NULL};
    (void)state;
    file_write(
        dir, "hdr.lua",
        "function handle(e)\n"
        "  local h = e.headers\n"
        "  if h['x-custom'] ~= 'a \"quoted\" \\\\ </value>' then\n"
        "    return false, 'x-custom is ' .. tostring(h['x-custom']) end\n"
        "  if h['x-wappcloud-event'] ~= 't' or h['content-type'] ~= 'application/json' then\n"
        "    return false, 'headers lost' end\n"
        "  if h['X-Custom'] ~= nil then return false, 'names must be lower case' end\n"
        "  if e.payload.h ~= 1 then return false, 'payload lost' end\n"
        "end\n");
    snprintf(m, sizeof m,
             "server: {listen: [http://127.0.0.1:0], threads: 4}\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "delivery:\n  mode: durable\n  spool: %s\n"
             "  retry: {max_attempts: 1}\n"
             "hooks:\n  t:\n    - lua: hdr.lua\n",
             spool_at("hdr.db"));
    file_write(dir, "hdr.yaml", m);
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hdr.yaml"), NULL, 1), 0);
    sign(TEST_SECRET, body, strlen(body), sig);
    snprintf(sig_h, sizeof sig_h, "X-Wappcloud-Signature: %s", sig);
    assert_int_equal(http_request("POST", srv.http, h, body, (long)strlen(body), NULL, &r), 200);
    assert_true(proc_wait_log(&srv, "\"handler\":\"lua:hdr.lua:handle\"", "\"result\"", 10000));
    assert_true(
        proc_wait_log(&srv, "\"handler\":\"lua:hdr.lua:handle\"", "\"result\":\"ok\"", 100));
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* A spool written by wapphook 0.1.0 (deliveries with a rowid): its pending delivery runs after
 * the upgrade, the one already delivered does not run again, and the table has the new shape. */
static void a_spool_from_0_1_is_upgraded(void **state)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    (void)state;
    SQLITE_ONLY();
    char sql[2048];
    /* received an hour ago: inside keep_delivered_s whatever the date (an event stamped with
     * a fixed date was removed by retention once that date was a week old) */
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL;"
             "CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL,"
             "  body BLOB NOT NULL, headers TEXT NOT NULL, received_at REAL NOT NULL);"
             "CREATE TABLE deliveries (event_id INTEGER NOT NULL REFERENCES events(id),"
             "  handler TEXT NOT NULL, state INTEGER NOT NULL DEFAULT 0,"
             "  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,"
             "  PRIMARY KEY (event_id, handler));"
             "CREATE INDEX deliveries_due ON deliveries(state, next_at);"
             "CREATE TABLE dedupe (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);"
             "INSERT INTO events VALUES (7, 't', '{\"data\":{\"id\":\"upgraded\"}}',"
             "  '{\"x-wappcloud-event\":\"t\"}', %lld);"
             "INSERT INTO deliveries VALUES (7, 'plugin:file_sink', 0, 0, 0, NULL);"
             "INSERT INTO deliveries VALUES (7, 'lua:flaky.lua:handle', 1, 1, 0, NULL);",
             (long long)time(NULL) - 3600);
    assert_int_equal(sqlite3_open(in("old.db"), &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    manifest_with("old.yaml", in("old.db"), "flaky.lua", "", "", "", "old.ndjson");
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("old.yaml"), NULL, 2), 0);
    assert_true(proc_wait_log(&srv, "spool upgraded", NULL, 100));
    assert_true(proc_wait_log(&srv, "\"event_id\":7", "plugin:file_sink", 10000));
    assert_int_equal(sink_count("old.ndjson", "upgraded"), 1);
    assert_false(proc_wait_log(&srv, "\"event_id\":7", "flaky.lua", 300)); /* done in 0.1 */
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(sqlite3_open(in("old.db"), &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db,
                           "SELECT sql LIKE '%WITHOUT ROWID%', (SELECT count(*) "
                           "FROM deliveries) FROM sqlite_master WHERE name = 'deliveries'",
                           -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    assert_int_equal(sqlite3_column_int(st, 1), 2);
    sqlite3_finalize(st);
    sqlite3_close(db);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

static int stats_say(const char *manifest_name, const char *what);
static int spool_drained(const char *manifest_name);
static void reload_and_wait(void);

/* A spool written by the version before events carried their handlers (schema 1: a delivery
 * row per handler from the start): upgraded in place on the first start. A pending delivery
 * runs, delivered ones do not run again, a dead letter stays one (and replays), a live dedupe
 * key still drops its duplicate; new events are written the new way beside the old ones. */
/* The rows schema 1 had for the upgrade case (%1$s: "" or the PostgreSQL schema and a dot):
 * a pending delivery, a delivered event, a dead letter, a live dedupe key; received an hour
 * ago (%2$lld), inside keep_delivered_s whatever the date; %4$s: the function of a code point
 * (chr, char). */
#define V1_ROWS                                                                                    \
    "INSERT INTO %1$sevents VALUES (7, 't', '{\"data\":{\"id\":\"v1-pending\"}}',"                 \
    "  '{\"x-wappcloud-event\":\"t\"}', %2$lld);"                                                  \
    "INSERT INTO %1$sevents VALUES (8, 't', '{\"data\":{\"id\":\"v1-done\"}}', '{}', %2$lld);"     \
    "INSERT INTO %1$sevents VALUES (9, 't', '{\"data\":{\"id\":\"v1-dead\"}}', '{}', %2$lld);"     \
    "INSERT INTO %1$sdedupe VALUES ('t' || %4$s(10) || 'v1-done', %3$lld);"

static void a_spool_of_schema_1_is_upgraded_in_place(void **state)
{
    char sql[6000];
    long long now = (long long)time(NULL);
    (void)state;
    spool_reset("v1.db");
    if (pg) { /* the tables and rows as version 1 made them, then its version in meta */
        snprintf(sql, sizeof sql,
                 "CREATE SCHEMA s_v1;"
                 "CREATE TABLE s_v1.meta (key text PRIMARY KEY, value text NOT NULL);"
                 "INSERT INTO s_v1.meta VALUES ('schema_version', '1');"
                 "CREATE TABLE s_v1.events (id bigserial PRIMARY KEY, type text NOT NULL,"
                 "  body bytea NOT NULL, headers text NOT NULL,"
                 "  received_at double precision NOT NULL);"
                 "CREATE TABLE s_v1.deliveries (event_id bigint NOT NULL, handler text NOT NULL,"
                 "  state smallint NOT NULL DEFAULT 0, attempts integer NOT NULL DEFAULT 0,"
                 "  next_at timestamptz NOT NULL, last_error text, lease_owner text,"
                 "  lease_token bigint NOT NULL DEFAULT 0, PRIMARY KEY (event_id, handler));"
                 "CREATE INDEX ON s_v1.deliveries (next_at) WHERE state = 0;"
                 "CREATE INDEX ON s_v1.deliveries (event_id) WHERE state = 2;"
                 "CREATE TABLE s_v1.dedupe (key text PRIMARY KEY,"
                 "  expires_at double precision NOT NULL);"
                 "CREATE INDEX ON s_v1.dedupe (expires_at);"
                 "CREATE TABLE s_v1.spool_bytes (owner text PRIMARY KEY, bytes bigint NOT NULL);"
                 "SELECT setval('s_v1.events_id_seq', 9);" V1_ROWS
                 "INSERT INTO s_v1.deliveries VALUES (7, 'plugin:file_sink', 0, 0, now(), NULL,"
                 "  NULL, 0), (7, 'lua:flaky.lua:handle', 1, 1, now(), NULL, NULL, 0),"
                 "  (8, 'plugin:file_sink', 1, 1, now(), NULL, NULL, 0),"
                 "  (8, 'lua:flaky.lua:handle', 1, 1, now(), NULL, NULL, 0),"
                 "  (9, 'plugin:file_sink', 1, 1, now(), NULL, NULL, 0),"
                 "  (9, 'lua:flaky.lua:handle', 2, 3, now(), 'was broken', NULL, 0);",
                 "s_v1.", now - 3600, now + 3600, "chr");
        assert_int_equal(pg_cluster_sql(&cluster, sql), 0);
    } else {
        sqlite3 *db;
        snprintf(sql, sizeof sql,
                 "PRAGMA journal_mode=WAL;"
                 "CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT NOT NULL,"
                 "  body BLOB NOT NULL, headers TEXT NOT NULL, received_at REAL NOT NULL);"
                 "CREATE TABLE deliveries (event_id INTEGER NOT NULL REFERENCES events(id),"
                 "  handler TEXT NOT NULL, state INTEGER NOT NULL DEFAULT 0,"
                 "  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,"
                 "  PRIMARY KEY (event_id, handler)) WITHOUT ROWID;"
                 "CREATE INDEX deliveries_next ON deliveries(state, next_at, event_id, handler);"
                 "CREATE TABLE dedupe (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);" V1_ROWS
                 "INSERT INTO deliveries VALUES (7, 'plugin:file_sink', 0, 0, 0, NULL),"
                 "  (7, 'lua:flaky.lua:handle', 1, 1, 0, NULL),"
                 "  (8, 'plugin:file_sink', 1, 1, 0, NULL),"
                 "  (8, 'lua:flaky.lua:handle', 1, 1, 0, NULL),"
                 "  (9, 'plugin:file_sink', 1, 1, 0, NULL),"
                 "  (9, 'lua:flaky.lua:handle', 2, 3, 0, 'was broken');",
                 "", now - 3600, now + 3600, "char");
        assert_int_equal(sqlite3_open(in("v1.db"), &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
    }
    manifest_with("v1.yaml", spool_at("v1.db"), "flaky.lua", "", "",
                  "  dedupe: {key: data.id, window_s: 3600}\n", "v1.ndjson");
    unlink(in("v1.ndjson"));
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("v1.yaml"), NULL, 2), 0);
    assert_true(pg ? proc_wait_log(&srv, "spool schema migrated", "\"version\":2", 100)
                   : proc_wait_log(&srv, "spool upgraded: events carry their handlers", NULL, 100));
    assert_true(proc_wait_log(&srv, "\"event_id\":7", "plugin:file_sink", 10000));
    assert_int_equal(sink_count("v1.ndjson", "v1-pending"), 1);
    /* the key the old spool kept still drops its duplicate; a new event goes the new way */
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"v1-done\"}}"), 200);
    assert_int_equal(metric("wapphook_duplicates_total"), 1);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"v2-new\"}}"), 200);
    assert_true(proc_wait_log(&srv, "flaky.lua", "\"result\":\"ok\"", 10000));
    for (int tries = 0; tries < 100 && sink_count("v1.ndjson", "v2-new") == 0; tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    assert_int_equal(sink_count("v1.ndjson", "v2-new"), 1);
    assert_int_equal(sink_count("v1.ndjson", "v1-done"), 0); /* delivered before, a duplicate now */
    assert_int_equal(sink_count("v1.ndjson", "v1-dead"), 0);
    assert_false(proc_wait_log(&srv, "\"event_id\":8", NULL, 300));
    /* what the old rows said, and the new event's deliveries, counted together */
    for (int tries = 0; tries < 100 && !stats_say("v1.yaml", "pending 0 delivered 7 dead 1");
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    assert_non_null(strstr(out, "pending 0 delivered 7 dead 1"));
    assert_non_null(strstr(out, "events: 4\n"));
    assert_int_equal(cli_on("v1.yaml", "list", "--dead"), 0);
    assert_non_null(strstr(out, "was broken"));
    assert_int_equal(cli_on("v1.yaml", "replay", "--dead"), 0);
    assert_non_null(strstr(out, "replayed: 1"));
    assert_true(proc_wait_log(&srv, "\"event_id\":9", "\"result\":\"ok\"", 10000));
    assert_int_equal(sink_count("v1.ndjson", "v1-dead"), 0); /* its sink did not run again */
    assert_int_equal(proc_stop(&srv), 0);
    if (pg) {
        /* version 3 keeps each attempt (the console's), from the upgrade on */
        assert_int_equal(pg_cluster_sql(&cluster, "SELECT value FROM s_v1.meta"
                                                  " WHERE key = 'schema_version'"),
                         3);
        assert_true(pg_cluster_sql(&cluster, "SELECT count(*) FROM s_v1.attempts") >= 2);
    } else {
        sqlite3 *db;
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_open(in("v1.db"), &db), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), 2);
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* Lines in a file of the test's folder (0 if it is not there). */
static int count_lines(const char *name)
{
    return sink_count(name, "\n");
}

/* `wapphook spool events <args...> -c <manifest>` (up to 6 args), output in out. */
static int events_on(const char *manifest_name, const char *const *args)
{
    char *argv[12] = {(char *)WAPPHOOK_BIN, "spool", "events"};
    int n = 3;
    for (; args && *args && n < 9; args++)
        argv[n++] = (char *)*args;
    argv[n++] = "-c";
    argv[n++] = (char *)in(manifest_name);
    argv[n] = NULL;
    return run_cli(argv, NULL, NULL, out, sizeof out);
}

/* The console's questions from a shell: newest first with each handler's outcome, by state,
 * by type, by an id, by a dedupe key's value (its event, whatever its type; on PostgreSQL, as
 * text of the body), by text, a page at a time; a bad filter is refused with the usage. */
static void spool_events_answers_newest_first_by_state_type_id_key_and_text(void **state)
{
    char id_dead[32], line[256];
    (void)state;
    spool_reset("events.db");
    manifest_with("events.yaml", spool_at("events.db"), "flaky.lua", "", "",
                  "  retry: {max_attempts: 1}\n  dedupe: {key: data.id, window_s: 3600}\n",
                  "events.ndjson");
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("events.yaml"), NULL, 2), 0);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"first-msg\"},\"note\":\"needle-in-body\"}"),
                     200);
    assert_true(proc_wait_log(&srv, "\"result\":\"ok\"", "flaky.lua", 10000));
    file_write(dir, "flag", ""); /* flaky.lua fails: one attempt, then a dead letter */
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"dead-msg\"}}"), 200);
    assert_true(proc_wait_log(&srv, "\"result\":\"dead\"", "flaky.lua", 10000));
    unlink(in("flag"));
    {
        size_t mark = proc_log_mark(&srv);
        assert_int_equal(post(&srv, "{\"data\":{\"id\":\"last-msg\"}}"), 200);
        assert_true(proc_wait_log_since(&srv, mark, "\"result\":\"ok\"", "flaky.lua", 10000));
    }
    for (int tries = 0; tries < 100 && !stats_say("events.yaml", "pending 0 delivered 5 dead 1");
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    /* newest first: last, dead, first; each with its handlers' outcomes */
    assert_int_equal(events_on("events.yaml", NULL), 0);
    {
        const char *a = strstr(out, " ok "), *d = strstr(out, " dead "), *l2 = strchr(out, '\n');
        long long first, second, third;
        assert_non_null(a);
        assert_non_null(d);
        assert_true(a < d); /* the newest (ok) before the dead one */
        assert_int_equal(sscanf(out, "%lld", &first), 1);
        assert_int_equal(sscanf(l2 + 1, "%lld", &second), 1);
        assert_int_equal(sscanf(strchr(l2 + 1, '\n') + 1, "%lld", &third), 1);
        assert_true(first > second && second > third); /* newest first */
        assert_non_null(strstr(out, "lua:flaky.lua:handle=dead/1"));
        assert_non_null(strstr(out, "plugin:file_sink=ok/1"));
        assert_null(strstr(out, "next:"));
    }
    /* by state: the dead one only, whose id the others use */
    assert_int_equal(events_on("events.yaml", (const char *[]){"--state", "dead", NULL}), 0);
    assert_int_equal(sscanf(out, "%31s", id_dead), 1);
    assert_null(strchr(strchr(out, '\n') + 1, ' ')); /* one line */
    assert_int_equal(events_on("events.yaml", (const char *[]){"--state", "pending", NULL}), 0);
    assert_string_equal(out, "");
    /* by its id, and by its dedupe key's value: that event alone */
    assert_int_equal(events_on("events.yaml", (const char *[]){"--q", id_dead, NULL}), 0);
    assert_int_equal(sscanf(out, "%255[^\n]", line), 1);
    assert_true(strncmp(line, id_dead, strlen(id_dead)) == 0 && strstr(line, " dead "));
    assert_int_equal(events_on("events.yaml", (const char *[]){"--q", "first-msg", NULL}), 0);
    assert_non_null(strstr(out, " ok "));
    assert_null(strchr(strchr(out, '\n') + 1, ' '));
    /* by text in the body; by type */
    assert_int_equal(events_on("events.yaml", (const char *[]){"--q", "needle-in-body", NULL}), 0);
    assert_non_null(strstr(out, " t "));
    assert_null(strchr(strchr(out, '\n') + 1, ' '));
    assert_int_equal(events_on("events.yaml", (const char *[]){"--type", "nope", NULL}), 0);
    assert_string_equal(out, "");
    /* a page at a time: one, then the next from where it said */
    assert_int_equal(events_on("events.yaml", (const char *[]){"--limit", "1", NULL}), 0);
    {
        char *next = strstr(out, "next: --before ");
        char before[32];
        assert_non_null(next);
        snprintf(before, sizeof before, "%lld", atoll(next + strlen("next: --before ")));
        assert_int_equal(
            events_on("events.yaml", (const char *[]){"--limit", "1", "--before", before, NULL}),
            0);
        assert_true(strncmp(out, id_dead, strlen(id_dead)) == 0); /* the second newest */
    }
    /* a filter it does not know: the usage, exit 2 */
    assert_int_equal(events_on("events.yaml", (const char *[]){"--state", "lost", NULL}), 2);
    assert_non_null(strstr(out, "usage: wapphook spool"));
    assert_int_equal(events_on("events.yaml", (const char *[]){"--limit", "0", NULL}), 2);
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* Runs of a handler per event: `runs.txt` holds a line "<id>" per run of count.lua. */
static int runs_of(const char *file, const char *id)
{
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\"", id);
    return sink_count(file, needle);
}

/* kill -9 while delivery outcomes are still in memory: the handlers ran, but the spool could
 * not take their outcomes (SQLite: another connection holds the write lock; PostgreSQL: the
 * database is stopped). After the restart each of those deliveries runs exactly once more
 * (again at most once for the crash), and none is skipped. */
static void kill9_with_outcomes_in_memory_runs_each_handler_at_most_once_more(void **state)
{
    char script[1024], id[32];
    sqlite3 *db = NULL;
    int sink_twice = 0, n = 20;
    (void)state;
    /* count.lua: a line per run; it waits while `gate` exists */
    snprintf(script, sizeof script,
             "function handle(e)\n"
             "  while io.open('%s/gate') do os.execute('sleep 0.02') end\n"
             "  local f = io.open('%s/runs.txt', 'a') f:write('\"', e.payload.data.id, '\"\\n')\n"
             "  f:close()\n"
             "end\n",
             dir, dir);
    file_write(dir, "count.lua", script);
    spool_reset("outcomes.db");
    unlink(in("runs.txt"));
    unlink(in("outcomes.ndjson"));
    manifest_with("outcomes.yaml", spool_at("outcomes.db"), "count.lua", "", ", timeout_ms: 60000",
                  "", "outcomes.ndjson");
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("outcomes.yaml"), NULL, 2), 0);
    file_write(dir, "gate", "");
    for (int i = 0; i < n; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"data\":{\"id\":\"o%d\"}}", i);
        assert_int_equal(post(&srv, body), 200);
    }
    /* from here the spool takes no outcome */
    if (pg) {
        assert_int_equal(pg_cluster_stop(&cluster), 0);
    } else {
        assert_int_equal(sqlite3_open(in("outcomes.db"), &db), SQLITE_OK);
        sqlite3_busy_timeout(db, 10000);
        assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    }
    unlink(in("gate"));
    for (int tries = 0;
         tries < 400 && !(count_lines("runs.txt") >= n && count_lines("outcomes.ndjson") >= n);
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 50);
    assert_int_equal(count_lines("runs.txt"), n);
    proc_kill9(&srv);
    if (pg) {
        assert_int_equal(pg_cluster_start(&cluster), 0);
    } else {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(db);
    }
    assert_int_equal(proc_start(&srv, in("outcomes.yaml"), NULL, 2), 0);
    for (int tries = 0;
         tries < 300 && !(count_lines("runs.txt") >= 2 * n && spool_drained("outcomes.yaml"));
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 100);
    assert_true(spool_drained("outcomes.yaml"));
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "o%d", i);
        assert_int_equal(runs_of("runs.txt", id), 2); /* its outcome was lost: once more */
        assert_in_range(runs_of("outcomes.ndjson", id), 1, 2);
        sink_twice += runs_of("outcomes.ndjson", id) == 2;
    }
    printf("kill -9 with %d outcomes in memory: each of those handlers ran once more, no more, "
           "none skipped (%d sink deliveries also in memory ran twice)\n",
           n, sink_twice);
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* A reload that puts a new handler in front of the list while events wait in the spool, then
 * a crash: the waiting events still run the handlers they were accepted for, each once, and
 * not the new one; events accepted after the reload run all three. (The spool names each
 * event's handlers; nothing is matched by position in the running list.) */
static void a_handler_added_by_reload_runs_for_new_events_only(void **state)
{
    char script[512], lua_first[64];
    (void)state;
    snprintf(script, sizeof script,
             "function handle(e)\n"
             "  local f = io.open('%s/added.txt', 'a') f:write('\"', e.payload.data.id, '\"\\n')\n"
             "  f:close()\n"
             "end\n",
             dir);
    file_write(dir, "added.lua", script);
    unlink(in("added.txt"));
    unlink(in("reorder.ndjson"));
    unlink(in("hold.log"));
    spool_reset("reorder.db");
    workers = 1; /* one dispatcher: held by the first event, the others wait */
    manifest_with("reorder.yaml", spool_at("reorder.db"), "hold.lua", "", "", "", "reorder.ndjson");
    workers = 4;
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("reorder.yaml"), NULL, 2), 0);
    file_write(dir, "hold", "");
    for (int i = 0; i < 5; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"data\":{\"id\":\"w%d\"}}", i);
        assert_int_equal(post(&srv, body), 200);
    }
    /* the new handler first: every position of the old list moves by one */
    snprintf(lua_first, sizeof lua_first, "added.lua\n    - lua: hold.lua");
    workers = 1;
    manifest_with("reorder.yaml", spool_at("reorder.db"), lua_first, "", "", "", "reorder.ndjson");
    workers = 4;
    reload_and_wait();
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"after\"}}"), 200);
    /* and a crash: what waits is read back from the spool, each delivery by its handler's
     * name, not from memory (the first event's hold.lua, cut short, runs again) */
    proc_kill9(&srv);
    assert_int_equal(proc_start(&srv, in("reorder.yaml"), NULL, 2), 0);
    unlink(in("hold"));
    for (int tries = 0; tries < 200 && sink_count("reorder.ndjson", "\"after\"") == 0; tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 50);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "w%d", i);
        assert_int_equal(runs_of("reorder.ndjson", id), 1);
        assert_int_equal(runs_of("added.txt", id), 0);
    }
    assert_int_equal(runs_of("reorder.ndjson", "after"), 1);
    assert_int_equal(runs_of("added.txt", "after"), 1);
    for (int tries = 0; tries < 100 && !stats_say("reorder.yaml", "pending 0 delivered 13 dead 0");
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    assert_non_null(strstr(out, "pending 0 delivered 13 dead 0"));
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* Seventy handlers for one event type: the first 63 are followed by the event's bitmask, the
 * rest by rows of their own from the start. Nothing runs before a crash (a gate holds every
 * handler); after the restart every handler runs exactly once for each event. */
static void seventy_handlers_each_run_once_after_a_crash(void **state)
{
    char script[1024], m[16384];
    int n = 0, wrong = 0;
    (void)state;
    snprintf(script, sizeof script,
             "for i = 1, 70 do\n"
             "  _G['h' .. i] = function(e)\n"
             "    while io.open('%s/gate') do os.execute('sleep 0.02') end\n"
             "    local f = io.open('%s/many.txt', 'a')\n"
             "    f:write('\"', e.payload.data.id, ':h', i, '\"\\n') f:close()\n"
             "  end\n"
             "end\n",
             dir, dir);
    file_write(dir, "many.lua", script);
    unlink(in("many.txt"));
    spool_reset("many.db");
    n = snprintf(m, sizeof m,
                 "server: {listen: [http://127.0.0.1:0], admin: 127.0.0.1:0}\n"
                 "secrets: [{value: \"" TEST_SECRET "\"}]\n"
                 "lua: {sandbox: false, timeout_ms: 60000}\n"
                 "delivery:\n  mode: durable\n  spool: %s\n  workers: 4\n"
                 "hooks:\n  t:\n",
                 spool_at("many.db"));
    for (int i = 1; i <= 70; i++)
        n += snprintf(m + n, sizeof m - (size_t)n, "    - {lua: many.lua, function: h%d}\n", i);
    file_write(dir, "many.yaml", m);
    file_write(dir, "gate", "");
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("many.yaml"), NULL, 2), 0);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"e1\"}}"), 200);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"e2\"}}"), 200);
    proc_kill9(&srv);
    assert_int_equal(count_lines("many.txt"), 0); /* the gate held them all */
    assert_int_equal(proc_start(&srv, in("many.yaml"), NULL, 2), 0);
    unlink(in("gate"));
    for (int tries = 0; tries < 300 && !(count_lines("many.txt") >= 140 &&
                                         stats_say("many.yaml", "pending 0 delivered 140 dead 0"));
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 100);
    assert_non_null(strstr(out, "pending 0 delivered 140 dead 0"));
    for (int e = 1; e <= 2; e++)
        for (int i = 1; i <= 70; i++) {
            char needle[32];
            snprintf(needle, sizeof needle, "e%d:h%d", e, i);
            wrong += runs_of("many.txt", needle) != 1;
        }
    assert_int_equal(wrong, 0);
    assert_int_equal(count_lines("many.txt"), 140);
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* Handlers slower than the senders: more deliveries wait than the dispatchers' in-memory queue
 * holds (8192), so the rest wait in the spool for the poller. When the handler catches up,
 * every event is delivered exactly once. */
#define BACKLOG 8400
static struct wh_proc *backlog_srv;

static long backlog_client(long c)
{
    struct resp rr;
    for (long i = c; i < BACKLOG; i += 16) {
        char body[64];
        snprintf(body, sizeof body, "{\"id\":%ld}", i);
        if (post_signed(backlog_srv->http, "t", body, NULL, &rr) != 200) return -1;
    }
    return 0;
}

static void a_backlog_past_the_queue_is_delivered_once(void **state)
{
    char m[2048], script[1024], line[64];
    static unsigned char seen[BACKLOG];
    FILE *f;
    int once = 0, twice = 0;
    (void)state;
    snprintf(script, sizeof script,
             "local function gated()\n"
             "  local g = io.open('%s/gate') if g then g:close() return true end\n"
             "end\n"
             "function handle(e)\n"
             "  while gated() do os.execute('sleep 0.02') end\n"
             "  local f = io.open('%s/backlog.txt', 'a')\n"
             "  f:write(e.payload.id, '\\n') f:close()\n"
             "end\n",
             dir, dir);
    file_write(dir, "gated.lua", script);
    snprintf(m, sizeof m,
             "server: {listen: [http://127.0.0.1:0], threads: 16}\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "lua: {sandbox: false, timeout_ms: 600000}\n"
             "delivery:\n  mode: durable\n  spool: %s\n  workers: 2\n"
             "hooks:\n  t:\n    - lua: gated.lua\n",
             spool_at("backlog.db"));
    file_write(dir, "backlog.yaml", m);
    file_write(dir, "gate", "");
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("backlog.yaml"), NULL, 1), 0);
    backlog_srv = &srv;
    assert_int_equal(run_parallel(16, backlog_client), 0); /* all acknowledged, gate closed */
    assert_true(proc_wait_log(&srv, "dispatch queue full", NULL, 100));
    unlink(in("gate"));
    for (time_t until = time(NULL) + 60; once < BACKLOG && time(NULL) < until;) {
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 100);
        once = 0;
        if ((f = fopen(in("backlog.txt"), "r"))) {
            while (fgets(line, sizeof line, f))
                once++;
            fclose(f);
        }
    }
    memset(seen, 0, sizeof seen);
    once = 0;
    assert_non_null(f = fopen(in("backlog.txt"), "r"));
    while (fgets(line, sizeof line, f)) {
        long id = atol(line);
        assert_true(id >= 0 && id < BACKLOG);
        if (seen[id]++)
            twice++;
        else
            once++;
    }
    fclose(f);
    printf("backlog of %d events past the in-memory queue: %d delivered once, %d twice\n", BACKLOG,
           once, twice);
    assert_int_equal(once, BACKLOG);
    assert_int_equal(twice, 0);
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, in("hooks.yaml"), NULL, 2), 0);
}

/* --- kill -9 ------------------------------------------------------------------------------- */

#define CLIENTS 16
static volatile int clients_stop;
static struct wh_proc *victim;
static pthread_mutex_t acked_mu = PTHREAD_MUTEX_INITIALIZER;
static json_t *acked; /* ids answered 200 */
static long round_no;

/* Where the senders post: client id to targets[id % n_targets]. */
static struct wh_proc *targets[2];
static int n_targets = 1;

static long crash_client(long id)
{
    long n = 0;
    struct resp *rr = malloc(sizeof *rr);
    struct wh_proc *to = n_targets > 1 ? targets[id % n_targets] : victim;
    while (!__atomic_load_n(&clients_stop, __ATOMIC_ACQUIRE)) {
        char body[128], key[64];
        snprintf(key, sizeof key, "k%ld-%ld-%ld-%d", round_no, id, n++, n_targets);
        snprintf(body, sizeof body, "{\"data\":{\"id\":\"%s\"}}", key);
        if (post_signed(to->http, "t", body, NULL, rr) == 200) {
            pthread_mutex_lock(&acked_mu);
            json_array_append_new(acked, json_string(key));
            pthread_mutex_unlock(&acked_mu);
        }
    }
    free(rr);
    return 0;
}

static void *crash_client_main(void *arg)
{
    crash_client((long)arg);
    return NULL;
}

/* `spool stats` on that manifest's spool says `what` (the output stays in out). */
static int stats_say(const char *manifest_name, const char *what)
{
    return cli_on(manifest_name, "stats", NULL) == 0 && strstr(out, what);
}

static int spool_drained(const char *manifest_name)
{
    return stats_say(manifest_name, "pending 0");
}

static void kill9_at_random_moments_loses_nothing_acknowledged(void **state)
{
    size_t i;
    json_t *v;
    int missing = 0;
    (void)state;
    assert_int_equal(proc_stop(&srv), 0);
    manifest("crash.yaml", "", "crash.ndjson");
    acked = json_array();
    srandom((unsigned)getpid());
    for (round_no = 0; round_no < 20; round_no++) {
        pthread_t th[CLIENTS];
        struct timespec ts = {0, (100 + random() % 400) * 1000000L};
        assert_int_equal(proc_start(&srv, in("crash.yaml"), NULL, 2), 0);
        victim = &srv;
        __atomic_store_n(&clients_stop, 0, __ATOMIC_RELEASE);
        for (long c = 0; c < CLIENTS; c++)
            pthread_create(&th[c], NULL, crash_client_main, (void *)c);
        nanosleep(&ts, NULL); /* the random moment of the crash */
        proc_kill9(&srv);
        __atomic_store_n(&clients_stop, 1, __ATOMIC_RELEASE);
        for (int c = 0; c < CLIENTS; c++)
            pthread_join(th[c], NULL);
    }
    /* after the last restart, every acknowledged event gets delivered */
    assert_int_equal(proc_start(&srv, in("crash.yaml"), NULL, 2), 0);
    for (int tries = 0; tries < 300 && !spool_drained("crash.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 100);
    assert_true(spool_drained("crash.yaml"));
    json_array_foreach(acked, i, v)
    {
        char needle[80];
        snprintf(needle, sizeof needle, "\"%s\"", json_string_value(v));
        if (sink_count("crash.ndjson", needle) == 0) missing++;
    }
    printf("kill -9 at 20 random moments under %d clients: %zu events acknowledged, %d lost\n",
           CLIENTS, json_array_size(acked), missing);
    assert_true(json_array_size(acked) > 100);
    assert_int_equal(missing, 0);
    json_decref(acked);
}

/* --- fsync failure -------------------------------------------------------------------------- */

static void failed_fsync_is_never_acknowledged(void **state)
{
    char preload[600], trigger[600], asan[700];
    const char *old_asan = getenv("ASAN_OPTIONS");
    char *env[] = {preload, trigger, asan, NULL};
    long st;
    (void)state;
    SQLITE_ONLY();
#if defined(__SANITIZE_THREAD__)
    /* a preloaded, uninstrumented libc wrapper and ThreadSanitizer's runtime do not mix;
     * this test runs in the Release and the ASan+UBSan builds */
    skip();
#endif
    assert_int_equal(proc_stop(&srv), 0);
    manifest("fsync.yaml", "", "fsync.ndjson");
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s", FAILSYNC_LIB);
    snprintf(trigger, sizeof trigger, "FAILSYNC=%s", in("failsync"));
    /* under AddressSanitizer, a preloaded library comes before its runtime: allow it */
    snprintf(asan, sizeof asan, "ASAN_OPTIONS=%s%sverify_asan_link_order=0",
             old_asan ? old_asan : "", old_asan ? ":" : "");
    assert_int_equal(proc_start(&srv, in("fsync.yaml"), env, 2), 0);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"before\"}}"), 200);
    file_write(dir, "failsync", ""); /* from now on the disk "fails" every sync */
    st = post(&srv, "{\"data\":{\"id\":\"during\"}}");
    assert_true(st != 200);                           /* never acknowledged */
    assert_int_equal(proc_wait_exit(&srv, 10000), 3); /* and the process does not go on */
    unlink(in("failsync"));
    assert_int_equal(proc_start(&srv, in("fsync.yaml"), NULL, 2), 0);
    for (int tries = 0; tries < 100 && sink_count("fsync.ndjson", "\"before\"") == 0; tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 100);
    /* nothing acknowledged is lost; it may run twice (at least once: the process died before
     * writing that its delivery had succeeded) */
    assert_true(sink_count("fsync.ndjson", "\"before\"") >= 1);
}

/* --- a full spool ----------------------------------------------------------------------------- */

static void a_full_spool_answers_503_then_recovers(void **state)
{
    static char body[300000];
    int got503 = 0;
    (void)state;
    assert_int_equal(proc_stop(&srv), 0);
    spool_reset("spool.db");
    manifest("full.yaml", "  max_spool_mb: 1\n", "full.ndjson");
    assert_int_equal(proc_start(&srv, in("full.yaml"), NULL, 2), 0);
    for (int i = 0; i < 30 && !got503; i++) {
        int n = snprintf(body, sizeof body, "{\"data\":{\"id\":\"f%d\"},\"pad\":\"", i);
        memset(body + n, 'x', 250000);
        strcpy(body + n + 250000, "\"}");
        if (post(&srv, body) == 503) {
            got503 = 1;
            assert_non_null(strcasestr(r.headers, "Retry-After:"));
            assert_string_equal(r.body, "{\"error\":\"spool full\"}");
        }
    }
    assert_true(got503);
    assert_true(metric("wapphook_events_total{type=\"t\",result=\"failed\"}") >= 1);
    /* everything stored was delivered; purging it frees the space */
    for (int tries = 0; tries < 100 && !spool_drained("full.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "\"msg\":\"delivery\"", NULL, 100);
    {
        char *argv[] = {(char *)WAPPHOOK_BIN,    "spool", "purge", "--delivered", "-c",
                        (char *)in("full.yaml"), NULL};
        assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 0);
        assert_non_null(strstr(out, "purged events"));
        assert_null(strstr(out, "purged events: 0"));
    }
    assert_int_equal(post_until_200("{\"data\":{\"id\":\"after\"}}"), 200);
}

/* --- retention -------------------------------------------------------------------------------- */

/* Delivered events leave the spool after delivery.keep_delivered_s (here 0: at the next
 * retention step); dead letters stay for replay, and dedupe still knows a removed event. */
static void delivered_events_leave_the_spool_after_keep_delivered_s(void **state)
{
    size_t mark;
    (void)state;
    assert_int_equal(proc_stop(&srv), 0);
    manifest_with("keep.yaml", spool_at("keep.db"), "flaky.lua", "", "",
                  "  keep_delivered_s: 0\n"
                  "  retry: {max_attempts: 2, initial_backoff_ms: 20, max_backoff_ms: 50}\n"
                  "  dedupe: {key: data.id, window_s: 600}\n",
                  "keep.ndjson");
    assert_int_equal(proc_start(&srv, in("keep.yaml"), NULL, 2), 0);
    for (int i = 0; i < 3; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"data\":{\"id\":\"keep%d\"}}", i);
        assert_int_equal(post(&srv, body), 200);
    }
    /* delivered (and perhaps removed already) before the flag is up: else one dies too */
    for (int tries = 0; tries < 300 && !spool_drained("keep.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    assert_non_null(strstr(out, "pending 0 "));
    assert_non_null(strstr(out, " dead 0\n"));
    file_write(dir, "flag", ""); /* flaky.lua fails twice: a dead letter */
    mark = proc_log_mark(&srv);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"dead\"}}"), 200);
    assert_true(proc_wait_log_since(&srv, mark, "\"attempt\":2,\"result\":\"dead\"", NULL, 10000));
    unlink(in("flag"));
    /* the dead event's other delivery (file_sink) may still be on its way */
    for (int tries = 0; tries < 300 && !(stats_say("keep.yaml", "events: 1\n") &&
                                         strstr(out, "pending 0 delivered 1 dead 1"));
         tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    if (!strstr(out, "events: 1\n") || !strstr(out, "pending 0 delivered 1 dead 1"))
        printf("spool stats:\n%s", out);
    assert_non_null(strstr(out, "events: 1\n")); /* the three delivered ones are gone */
    assert_non_null(strstr(out, "pending 0 delivered 1 dead 1"));
    assert_int_equal(cli_on("keep.yaml", "list", "--dead"), 0);
    assert_non_null(strstr(out, "lua:flaky.lua:handle"));
    /* keep0 again: a duplicate although its event is gone; a new one after it is delivered */
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"keep0\"}}"), 200);
    mark = proc_log_mark(&srv);
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"later\"}}"), 200);
    assert_true(proc_wait_log_since(&srv, mark, "plugin:file_sink", "\"result\":\"ok\"", 10000));
    for (int tries = 0; tries < 100 && !spool_drained("keep.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    assert_int_equal(sink_count("keep.ndjson", "\"later\""), 1);
    assert_int_equal(sink_count("keep.ndjson", "\"keep0\""), 1);
}

/* --- reload ----------------------------------------------------------------------------------- */

/* Sends SIGHUP and waits for the reload to be logged. */
static void reload_and_wait(void)
{
    size_t mark = proc_log_mark(&srv);
    kill(srv.pid, SIGHUP);
    assert_true(proc_wait_log_since(&srv, mark, "\"msg\":\"reloaded\"", NULL, 10000));
}

/* max_spool_mb applies on reload; the spool's path applies after a restart, and says so. */
static void a_reload_applies_the_spool_limit_and_names_what_needs_a_restart(void **state)
{
    static char body[300000];
    size_t mark;
    (void)state;
    assert_int_equal(proc_stop(&srv), 0);
    manifest_with("reload.yaml", spool_at("reload.db"), "flaky.lua", "", "", "", "reload.ndjson");
    assert_int_equal(proc_start(&srv, in("reload.yaml"), NULL, 2), 0);
    for (int i = 0; i < 6; i++) { /* 1.5 MB in the spool */
        int n = snprintf(body, sizeof body, "{\"data\":{\"id\":\"big%d\"},\"pad\":\"", i);
        memset(body + n, 'x', 250000);
        strcpy(body + n + 250000, "\"}");
        assert_int_equal(post(&srv, body), 200);
    }
    /* a lower limit, by reload: the next event is refused */
    manifest_with("reload.yaml", spool_at("reload.db"), "flaky.lua", "", "", "  max_spool_mb: 1\n",
                  "reload.ndjson");
    reload_and_wait();
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"over\"}}"), 503);
    assert_string_equal(r.body, "{\"error\":\"spool full\"}");
    /* the limit back up, and another spool path: that one waits for a restart */
    manifest_with("reload.yaml", spool_at("other.db"), "flaky.lua", "", "", "", "reload.ndjson");
    mark = proc_log_mark(&srv);
    reload_and_wait();
    assert_true(proc_wait_log_since(
        &srv, mark, "settings changed: they apply after a restart",
        pg ? "\"keys\":\"delivery.pg_schema\"" : "\"keys\":\"delivery.spool\"", 1000));
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"under\"}}"), 200);
    assert_false(spool_exists("other.db")); /* still the spool it started with */
}

/* --- the CLI beside a running server -----------------------------------------------------------
 */

/* `spool list | less`, left open: the listing reads a page at a time, so a reader blocked on its
 * output holds no snapshot, and the server's WAL can still be checkpointed past it. Then
 * `spool purge` removes thousands of events in short transactions while the server answers. */
static void a_blocked_listing_does_not_pin_the_wal(void **state)
{
    sqlite3 *db;
    char cmd[1200], line[256];
    FILE *listing;
    int lines = 0, caught_up = 0;
    (void)state;
    SQLITE_ONLY();
    assert_int_equal(proc_stop(&srv), 0);
    manifest_with("list.yaml", in("list.db"), "flaky.lua", "", "", "", "list.ndjson");
    assert_int_equal(proc_start(&srv, in("list.yaml"), NULL, 2), 0);
    /* 3,000 delivered events, written beside the server: ~300 KB of listing */
    assert_int_equal(sqlite3_open(in("list.db"), &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    assert_int_equal(
        sqlite3_exec(
            db,
            "BEGIN IMMEDIATE;"
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)"
            " INSERT INTO events(type, body, headers, received_at)"
            " SELECT 't', '{\"n\":' || i || '}', '{}', unixepoch() FROM n;"
            "INSERT INTO deliveries(event_id, handler, state, attempts, next_at)"
            " SELECT id, 'plugin:file_sink', 1, 1, 0 FROM events;"
            "COMMIT;",
            NULL, NULL, NULL),
        SQLITE_OK);

    snprintf(cmd, sizeof cmd, "%s spool list -c %s", WAPPHOOK_BIN, in("list.yaml"));
    listing = popen(cmd, "r");
    assert_non_null(listing);
    assert_non_null(fgets(line, sizeof line, listing)); /* started; then nobody reads: it blocks */
    lines++;
    for (int i = 0; i < 5; i++) /* the server writes on */
        assert_int_equal(post(&srv, "{\"data\":{\"id\":\"while-listing\"}}"), 200);
    for (int tries = 0; tries < 40 && !caught_up; tries++) {
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(PASSIVE)", -1, &st, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        /* (busy, frames in the WAL, frames checkpointed): all of them, no reader in the way */
        caught_up =
            sqlite3_column_int(st, 1) > 0 && sqlite3_column_int(st, 1) == sqlite3_column_int(st, 2);
        sqlite3_finalize(st);
        if (!caught_up) proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    }
    assert_true(caught_up);
    while (fgets(line, sizeof line, listing))
        lines++;
    assert_int_equal(pclose(listing), 0);
    assert_true(lines >= 1 + 3000 + 5); /* the header, the 3,000, the new ones as far as listed */
    sqlite3_close(db);

    /* the whole lot purged while the server keeps answering 200 */
    for (int tries = 0; tries < 100 && !spool_drained("list.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    assert_true(spool_drained("list.yaml"));
    assert_int_equal(cli_on("list.yaml", "purge", "--delivered"), 0);
    assert_non_null(strstr(out, "purged events: 3005\n")); /* the 3,000 and the 5 posted */
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"after-purge\"}}"), 200);
}

/* --- stop --------------------------------------------------------------------------------------
 */

/* SIGTERM waits for a running delivery no longer than server.shutdown_timeout_ms: the process
 * exits 1, and the delivery, still pending in the spool, runs after the restart. */
static void a_stop_leaves_a_running_delivery_pending(void **state)
{
    (void)state;
    assert_int_equal(proc_stop(&srv), 0);
    manifest_with("stop.yaml", spool_at("stop.db"), "hold.lua", ", shutdown_timeout_ms: 300",
                  ", timeout_ms: 60000", "", "stop.ndjson");
    assert_int_equal(proc_start(&srv, in("stop.yaml"), NULL, 2), 0);
    file_write(dir, "hold", "");
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"s1\"}}"), 200);
    assert_true(
        proc_wait_log(&srv, "\"handler\":\"plugin:file_sink\"", "\"result\":\"ok\"", 10000));
    kill(srv.pid, SIGTERM); /* hold.lua is still running, and would for a minute */
    assert_true(proc_wait_log(&srv, "deliveries still running after server.shutdown_timeout_ms",
                              NULL, 10000));
    assert_int_equal(proc_wait_exit(&srv, 10000), 1);
    unlink(in("hold"));
    assert_int_equal(proc_start(&srv, in("stop.yaml"), NULL, 2), 0);
    assert_true(
        proc_wait_log(&srv, "\"handler\":\"lua:hold.lua:handle\"", "\"result\":\"ok\"", 10000));
    for (int tries = 0; tries < 100 && !spool_drained("stop.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    assert_true(spool_drained("stop.yaml"));
    assert_int_equal(sink_count("stop.ndjson", "\"s1\""), 1); /* its sibling had finished */
}

/* --- a full disk ------------------------------------------------------------------------------ */

static int mounted; /* the small filesystem below, unmounted by the test or the teardown */

static void unmount_small_fs(void)
{
    char cmd[600];
    if (!mounted) return;
    snprintf(cmd, sizeof cmd, "umount %s", in("small"));
    mounted = system(cmd) != 0;
}

/* Writes zeros into `path` until the filesystem has no block left. */
static void fill_until_enospc(const char *path)
{
    static char zeros[65536];
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    setvbuf(f, NULL, _IONBF, 0);
    while (fwrite(zeros, 1, sizeof zeros, f) == sizeof zeros)
        ;
    while (fwrite(zeros, 1, 512, f) == 512) /* the last partial chunk */
        ;
    fclose(f);
}

/* The spool on a real 4 MiB ext4 filesystem (a loop-mounted image) that runs out of blocks:
 * SQLite's own ENOSPC, not max_spool_mb. A delivery that finishes while the disk is full keeps
 * its result until the disk has room (it is neither lost nor run twice), and nothing
 * acknowledged is lost. Needs root and loop devices; skipped (and says so) where the machine
 * has neither, a_full_spool_answers_503_then_recovers covers the limit in either case. */
static void a_full_disk_answers_503_then_recovers(void **state)
{
    char cmd[1400], id[48];
    int acked_ids[64];
    int n_acked = 0;
    size_t mark;
    (void)state;
    SQLITE_ONLY();
    snprintf(cmd, sizeof cmd,
             "truncate -s 4M %s && mkfs.ext4 -q -F %s >/dev/null 2>&1 && mkdir -p %s && "
             "mount -o loop %s %s 2>/dev/null",
             in("small.img"), in("small.img"), in("small"), in("small.img"), in("small"));
    if (getuid() != 0 || system(cmd) != 0) {
        printf("skipped: no loop-mounted filesystem here (needs root and loop devices)\n");
        skip();
    }
    mounted = 1;
    assert_int_equal(proc_stop(&srv), 0);
    manifest_with("disk.yaml", in("small/spool.db"), "hold.lua", "", ", timeout_ms: 60000", "",
                  "disk.ndjson");
    assert_int_equal(proc_start(&srv, in("disk.yaml"), NULL, 2), 0);
    file_write(dir, "hold", "");
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"h1\"}}"), 200); /* its hold.lua runs on */
    /* a slow handler holds up no other delivery: h1's file_sink runs meanwhile */
    assert_true(
        proc_wait_log(&srv, "\"handler\":\"plugin:file_sink\"", "\"result\":\"ok\"", 10000));

    /* more events, each answered 200 once stored; their hold.lua deliveries wait as well */
    for (int i = 0; i < 8; i++) {
        char body[2100];
        int n = snprintf(body, sizeof body, "{\"data\":{\"id\":\"k%d\"},\"pad\":\"", i);
        memset(body + n, 'x', 2000);
        strcpy(body + n + 2000, "\"}");
        assert_int_equal(post(&srv, body), 200);
        acked_ids[n_acked++] = i;
    }
    /* the disk fills up: the next event is refused, and nothing of it is kept */
    fill_until_enospc(in("small/filler"));
    assert_int_equal(post(&srv, "{\"data\":{\"id\":\"refused\"}}"), 503);
    assert_non_null(strcasestr(r.headers, "Retry-After:"));
    assert_string_equal(r.body, "{\"error\":\"spool unavailable\"}");

    /* the held deliveries finish now: writing their results fails too; they are kept, and
     * neither lost nor run again */
    mark = proc_log_mark(&srv);
    unlink(in("hold"));
    assert_true(proc_wait_log_since(&srv, mark, "\"handler\":\"lua:hold.lua:handle\"",
                                    "\"result\":\"ok\"", 10000));
    assert_true(
        proc_wait_log_since(&srv, mark, "delivery results not written", "disk is full", 10000));

    /* space returns: service resumes, and everything is delivered exactly once */
    unlink(in("small/filler"));
    assert_int_equal(post_until_200("{\"data\":{\"id\":\"after\"}}"), 200);
    /* "pending 0" within seconds: h1's delivery was not left for the poller to run again */
    for (int tries = 0; tries < 50 && !spool_drained("disk.yaml"); tries++)
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 100);
    assert_true(spool_drained("disk.yaml"));
    assert_int_equal(proc_stop(&srv), 0); /* a restart re-runs nothing and finds everything */
    assert_int_equal(proc_start(&srv, in("disk.yaml"), NULL, 2), 0);
    assert_true(spool_drained("disk.yaml"));
    assert_non_null(strstr(out, "dead 0"));
    assert_int_equal(sink_count("disk.ndjson", "\"h1\""), 1);
    assert_int_equal(sink_count("disk.ndjson", "\"after\""), 1);
    assert_int_equal(sink_count("disk.ndjson", "\"refused\""), 0);
    for (int i = 0; i < n_acked; i++) {
        snprintf(id, sizeof id, "\"k%d\"", acked_ids[i]);
        assert_int_equal(sink_count("disk.ndjson", id), 1);
    }
    {
        char *log = proc_log(&srv);
        int runs = 0;
        for (const char *q = log; (q = strstr(q, "\"handler\":\"lua:hold.lua:handle\"")); q++)
            runs++;
        free(log);
        assert_int_equal(runs, 0); /* nothing left to run after the restart */
    }
    printf("full disk: %d events acknowledged before the 503, each delivered once\n", n_acked + 1);
    assert_int_equal(proc_stop(&srv), 0);
    unmount_small_fs();
    assert_false(mounted);
}

/* --- several instances, one PostgreSQL spool ---------------------------------------------------
 */

#define INSTANCES 2
static struct wh_proc inst[INSTANCES];

/* Waits until the log of any instance, after its mark, has a line with a and b. */
static int any_log(size_t marks[INSTANCES], const char *a, const char *b, int timeout_ms)
{
    long long until = now_ms() + timeout_ms;
    do {
        for (int i = 0; i < INSTANCES; i++)
            if (inst[i].mu && proc_wait_log_since(&inst[i], marks[i], a, b, 20)) return 1;
    } while (now_ms() < until);
    return 0;
}

static void mark_all(size_t marks[INSTANCES])
{
    for (int i = 0; i < INSTANCES; i++)
        marks[i] = inst[i].mu ? proc_log_mark(&inst[i]) : 0;
}

static long long metric_of(struct wh_proc *p, const char *series)
{
    struct resp m;
    char url[400], want[300];
    const char *q;
    snprintf(url, sizeof url, "%s/metrics", p->admin);
    if (http_request("GET", url, NULL, NULL, 0, NULL, &m) != 200) return -1;
    snprintf(want, sizeof want, "\n%s ", series);
    q = strstr(m.body, want);
    return q ? atoll(q + strlen(want)) : 0;
}

static int shared_setup(void **state)
{
    (void)state;
    if (srv.mu && proc_stop(&srv) != 0) return -1;
    spool_reset("shared.db");
    manifest_with("shared.yaml", spool_at("shared.db"), "flaky.lua", "", "",
                  "  retry: {max_attempts: 3, initial_backoff_ms: 20, max_backoff_ms: 50}\n"
                  "  dedupe: {key: data.id, window_s: 600}\n",
                  "shared.ndjson");
    for (int i = 0; i < INSTANCES; i++)
        if (proc_start(&inst[i], in("shared.yaml"), NULL, 2) != 0) return -1;
    return 0;
}

/* Before each case of the shared group: every instance running (as srv_ready). */
static int instances_ready(void **state)
{
    (void)state;
    for (int i = 0; i < INSTANCES; i++) {
        if (proc_running(&inst[i])) continue;
        if (inst[i].mu) proc_wait_exit(&inst[i], 0);
        if (proc_start(&inst[i], in("shared.yaml"), NULL, 2) != 0) return -1;
    }
    return 0;
}

static int shared_teardown(void **state)
{
    int rc = 0;
    (void)state;
    for (int i = 0; i < INSTANCES; i++)
        if (inst[i].mu && inst[i].pid > 0) rc |= proc_stop(&inst[i]) == 0 ? 0 : -1;
    return rc;
}

static long same_key_client(long i)
{
    struct resp *rr = malloc(sizeof *rr);
    long st = post_signed(inst[i % INSTANCES].http, "t", "{\"data\":{\"id\":\"same\"}}", NULL, rr);
    free(rr);
    return st == 200 ? 0 : 1;
}

/* The same dedupe key sent to both instances at once, 16 times: every request is answered
 * 200, the event is stored once and delivered once, and the other 15 count as duplicates. */
static void dedupe_holds_across_instances(void **state)
{
    long long dups = 0;
    (void)state;
    assert_int_equal(run_parallel(16, same_key_client), 0);
    for (int tries = 0; tries < 100 && sink_count("shared.ndjson", "\"same\"") == 0; tries++)
        proc_wait_log_since(&inst[0], proc_log_mark(&inst[0]), "never logged", NULL, 50);
    for (int tries = 0; tries < 100 && !spool_drained("shared.yaml"); tries++)
        proc_wait_log_since(&inst[0], proc_log_mark(&inst[0]), "never logged", NULL, 50);
    assert_true(spool_drained("shared.yaml"));
    assert_non_null(strstr(out, "events: 1\n"));
    assert_int_equal(sink_count("shared.ndjson", "\"same\""), 1);
    for (int i = 0; i < INSTANCES; i++)
        dups += metric_of(&inst[i], "wapphook_duplicates_total");
    assert_int_equal(dups, 15);
}

/* A delivery fails on whichever instance runs it, is retried (by either), dead-lettered;
 * `spool replay` from the CLI wakes the instances (NOTIFY) and one of them delivers it once. */
static void retries_dead_letters_and_replay_across_instances(void **state)
{
    size_t marks[INSTANCES];
    (void)state;
    mark_all(marks);
    file_write(dir, "flag", "");
    assert_int_equal(post(&inst[0], "{\"data\":{\"id\":\"x1\"}}"), 200);
    assert_true(any_log(marks, "\"attempt\":1,\"result\":\"retry\"", "flaky.lua", 10000));
    assert_true(any_log(marks, "\"attempt\":3,\"result\":\"dead\"", "flaky.lua", 10000));
    for (int tries = 0; tries < 100 && !stats_say("shared.yaml", "dead 1"); tries++)
        proc_wait_log_since(&inst[0], proc_log_mark(&inst[0]), "never logged", NULL, 50);
    assert_non_null(strstr(out, "dead 1"));
    assert_int_equal(cli_on("shared.yaml", "list", "--dead"), 0);
    assert_non_null(strstr(out, "lua:flaky.lua:handle"));
    assert_non_null(strstr(out, "flag present"));
    unlink(in("flag"));
    mark_all(marks);
    assert_int_equal(cli_on("shared.yaml", "replay", "--dead"), 0);
    assert_non_null(strstr(out, "replayed: 1"));
    assert_true(any_log(marks, "\"attempt\":1,\"result\":\"ok\"", "flaky.lua", 10000));
    /* "dead 0" holds as soon as the replay made it pending: wait for nothing pending */
    for (int tries = 0; tries < 100 && !stats_say("shared.yaml", "pending 0"); tries++)
        proc_wait_log_since(&inst[0], proc_log_mark(&inst[0]), "never logged", NULL, 50);
    assert_non_null(strstr(out, "pending 0"));
    assert_non_null(strstr(out, "dead 0"));
    assert_int_equal(sink_count("shared.ndjson", "\"x1\""), 1); /* the sibling, once */
}

/* 16 senders spread over two instances; one is killed -9 at a random moment, three times
 * (restarted between rounds, not after the last): the survivor takes over the dead one's
 * leased deliveries once their lease ends, and every event either answered 200 is delivered. */
static void kill9_of_one_instance_loses_nothing_acknowledged(void **state)
{
    size_t i;
    json_t *v;
    int missing = 0, victim_i = 0;
    long long killed_at = 0, drained_at = 0;
    (void)state;
    acked = json_array();
    srandom((unsigned)getpid());
    for (int k = 0; k < INSTANCES; k++)
        targets[k] = &inst[k];
    n_targets = INSTANCES;
    for (round_no = 0; round_no < 3; round_no++) {
        pthread_t th[CLIENTS];
        struct timespec ts = {0, (200 + random() % 600) * 1000000L};
        victim_i = (int)(round_no % INSTANCES);
        __atomic_store_n(&clients_stop, 0, __ATOMIC_RELEASE);
        for (long c = 0; c < CLIENTS; c++)
            pthread_create(&th[c], NULL, crash_client_main, (void *)c);
        nanosleep(&ts, NULL); /* the random moment of the crash */
        proc_kill9(&inst[victim_i]);
        killed_at = now_ms();
        ts.tv_nsec = 300 * 1000000L; /* the survivor goes on taking events */
        nanosleep(&ts, NULL);
        __atomic_store_n(&clients_stop, 1, __ATOMIC_RELEASE);
        for (int c = 0; c < CLIENTS; c++)
            pthread_join(th[c], NULL);
        if (round_no < 2)
            assert_int_equal(proc_start(&inst[victim_i], in("shared.yaml"), NULL, 2), 0);
    }
    /* the victim stays dead: the survivor delivers everything, its leases included */
    for (int tries = 0; tries < 300 && !spool_drained("shared.yaml"); tries++)
        proc_wait_log_since(&inst[1 - victim_i], proc_log_mark(&inst[1 - victim_i]),
                            "\"msg\":\"delivery\"", NULL, 100);
    drained_at = now_ms();
    assert_true(spool_drained("shared.yaml"));
    json_array_foreach(acked, i, v)
    {
        char needle[80];
        snprintf(needle, sizeof needle, "\"%s\"", json_string_value(v));
        if (sink_count("shared.ndjson", needle) == 0) missing++;
    }
    printf("kill -9 of one of %d instances, 3 rounds, %d senders: %zu events acknowledged, "
           "%d lost; the survivor drained the spool %lld ms after the last kill (lease %d s)\n",
           INSTANCES, CLIENTS, json_array_size(acked), missing, drained_at - killed_at, LEASE_S);
    assert_true(json_array_size(acked) > 100);
    assert_int_equal(missing, 0);
    json_decref(acked);
    n_targets = 1;
    assert_int_equal(proc_start(&inst[victim_i], in("shared.yaml"), NULL, 2), 0);
}

/* The database stops: both instances answer 503 with Retry-After within seconds, never 200;
 * it comes back: they reconnect by themselves and deliver what they accept. */
static void a_stopped_database_answers_503_then_the_instances_recover(void **state)
{
    size_t marks[INSTANCES];
    long long t0, worst = 0;
    (void)state;
    assert_int_equal(post(&inst[0], "{\"data\":{\"id\":\"before-down\"}}"), 200);
    assert_int_equal(pg_cluster_stop(&cluster), 0);
    for (int k = 0; k < 6; k++) {
        struct wh_proc *p = &inst[k % INSTANCES];
        char body[64];
        snprintf(body, sizeof body, "{\"data\":{\"id\":\"down%d\"}}", k);
        t0 = now_ms();
        assert_int_equal(post(p, body), 503);
        if (now_ms() - t0 > worst) worst = now_ms() - t0;
        assert_non_null(strcasestr(r.headers, "Retry-After:"));
        assert_string_equal(r.body, "{\"error\":\"spool unavailable\"}");
    }
    printf("database stopped: 503 with Retry-After, slowest answer %lld ms\n", worst);
    assert_true(worst < 5000);
    mark_all(marks);
    assert_int_equal(pg_cluster_start(&cluster), 0);
    t0 = now_ms();
    for (int i = 0; i < INSTANCES; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"data\":{\"id\":\"back%d\"}}", i);
        for (int tries = 0; tries < 200; tries++) {
            if (post(&inst[i], body) == 200) break;
            proc_wait_log_since(&inst[i], proc_log_mark(&inst[i]), "never logged", NULL, 50);
        }
        assert_int_equal(r.status, 200);
    }
    printf("database back: both instances answer 200 again after %lld ms\n", now_ms() - t0);
    for (int tries = 0; tries < 200 && !(sink_count("shared.ndjson", "\"back0\"") &&
                                         sink_count("shared.ndjson", "\"back1\""));
         tries++)
        proc_wait_log_since(&inst[0], proc_log_mark(&inst[0]), "never logged", NULL, 50);
    assert_int_equal(sink_count("shared.ndjson", "\"back0\""), 1);
    assert_int_equal(sink_count("shared.ndjson", "\"back1\""), 1);
    assert_int_equal(sink_count("shared.ndjson", "\"before-down\""), 1);
    for (int k = 0; k < 6; k++) {
        char needle[32];
        snprintf(needle, sizeof needle, "\"down%d\"", k);
        assert_int_equal(sink_count("shared.ndjson", needle), 0); /* refused: nothing kept */
    }
    for (int i = 0; i < INSTANCES;
         i++) { /* connection lost, back: the URI shown, not its password */
        char *log = proc_log(&inst[i]);
        assert_non_null(strstr(log, "spool connection lost"));
        assert_non_null(strstr(log, "postgresql://postgres:***@"));
        assert_null(strstr(log, PG_PASSWORD));
        free(log);
    }
}

/* The lease of the delivery a handler runs (hold.lua, here) on the query's behalf. */
static long long hold_lease_token(void)
{
    return pg_cluster_sql(&cluster,
                          "SELECT lease_token FROM s_long.deliveries d JOIN "
                          "s_long.events e ON e.id = d.event_id WHERE d.handler "
                          "LIKE 'lua:hold.lua%' AND convert_from(e.body, 'UTF8') LIKE '%long1%'");
}

/* A handler running three leases long keeps its delivery (the lease is renewed: the other
 * instance does not take it). Then its instance freezes (SIGSTOP) past the lease: the other
 * takes the delivery over and delivers it; the frozen one, thawed, finishes too, and its
 * late result is refused by the fence (the lease is no longer its), not written over. */
static void a_long_delivery_keeps_its_lease_and_a_frozen_instance_is_fenced(void **state)
{
    size_t mark;
    (void)state;
    for (int i = 0; i < INSTANCES; i++)
        assert_int_equal(proc_stop(&inst[i]), 0);
    spool_reset("long.db");
    manifest_with("hold-shared.yaml", spool_at("long.db"), "hold.lua", "", ", timeout_ms: 60000",
                  "", "shared.ndjson");
    for (int i = 0; i < INSTANCES; i++)
        assert_int_equal(proc_start(&inst[i], in("hold-shared.yaml"), NULL, 2), 0);
    file_write(dir, "hold", "");
    assert_int_equal(post(&inst[0], "{\"data\":{\"id\":\"long1\"}}"), 200);
    /* its sibling ran at once, on the instance that took the event */
    assert_true(
        proc_wait_log(&inst[0], "\"handler\":\"plugin:file_sink\"", "\"result\":\"ok\"", 10000));
    assert_int_equal(hold_lease_token(), 1);
    assert_int_equal(cli_on("hold-shared.yaml", "list", NULL), 0); /* and who holds it */
    assert_non_null(strstr(out, "[leased by "));
    /* three leases later, still the first lease: renewed, never taken over */
    assert_false(proc_wait_log(&inst[1], "lua:hold.lua", NULL, 3 * LEASE_S * 1000));
    assert_int_equal(hold_lease_token(), 1);

    kill(inst[0].pid, SIGSTOP); /* frozen: no renewal, no result */
    for (int tries = 0; tries < 200 && hold_lease_token() < 2; tries++)
        proc_wait_log_since(&inst[1], proc_log_mark(&inst[1]), "never logged", NULL, 50);
    assert_int_equal(hold_lease_token(), 2); /* the other instance holds it now */
    mark = proc_log_mark(&inst[1]);
    unlink(in("hold"));
    assert_true(proc_wait_log_since(&inst[1], mark, "\"handler\":\"lua:hold.lua:handle\"",
                                    "\"result\":\"ok\"", 10000));
    mark = proc_log_mark(&inst[0]);
    kill(inst[0].pid, SIGCONT);
    assert_true(proc_wait_log_since(&inst[0], mark, "lease passed to another instance",
                                    "lua:hold.lua", 10000));
    /* the survivor's result (logged just before it is committed) is the one in the spool: a
     * first attempt that succeeded, under the second lease, whose row is then gone */
    for (int tries = 0; tries < 100 && !stats_say("hold-shared.yaml", "pending 0"); tries++)
        proc_wait_log_since(&inst[1], proc_log_mark(&inst[1]), "never logged", NULL, 50);
    assert_non_null(strstr(out, "pending 0 delivered 2 dead 0"));
    assert_int_equal(pg_cluster_sql(&cluster, "SELECT count(*) FROM s_long.deliveries WHERE "
                                              "handler LIKE 'lua:hold.lua%'"),
                     0);
    assert_int_equal(sink_count("shared.ndjson", "\"long1\""), 1);
}

/* SIGTERM hands back what an instance queued and never ran: the other instance delivers it
 * at once, not a lease later. One worker, held on the first event; a lease of 60 s. */
static void a_stopped_instance_hands_back_what_it_queued(void **state)
{
    char script[600];
    long long t0;
    (void)state;
    for (int i = 0; i < INSTANCES; i++)
        assert_int_equal(proc_stop(&inst[i]), 0);
    snprintf(script, sizeof script,
             "function handle(e)\n"
             "  while e.payload.data.id == 'first' do\n"
             "    local f = io.open('%s/hold') if not f then return true end f:close()\n"
             "    os.execute('sleep 0.02')\n"
             "  end\n"
             "end\n",
             dir);
    file_write(dir, "hold1.lua", script);
    spool_reset("back.db");
    lease_s = 60;
    workers = 1;
    manifest_with("back.yaml", spool_at("back.db"), "hold1.lua", ", shutdown_timeout_ms: 300",
                  ", timeout_ms: 60000", "", "back.ndjson");
    lease_s = LEASE_S;
    workers = 4;
    for (int i = 0; i < INSTANCES; i++)
        assert_int_equal(proc_start(&inst[i], in("back.yaml"), NULL, 2), 0);
    file_write(dir, "hold", "");
    assert_int_equal(post(&inst[0], "{\"data\":{\"id\":\"first\"}}"), 200);  /* runs, held */
    assert_int_equal(post(&inst[0], "{\"data\":{\"id\":\"second\"}}"), 200); /* queued */
    assert_int_equal(post(&inst[0], "{\"data\":{\"id\":\"third\"}}"), 200);
    /* queued behind "first" on the only worker, leased to this instance for a minute */
    assert_true(proc_wait_log(&inst[0], "\"handler\":\"lua:hold1.lua:handle\"", NULL, 300) == 0);
    assert_int_equal(sink_count("back.ndjson", "\"second\""), 0);
    assert_int_equal(sink_count("back.ndjson", "\"third\""), 0);
    kill(inst[0].pid, SIGTERM);
    assert_int_equal(proc_wait_exit(&inst[0], 10000),
                     1); /* "first" still running at the deadline */
    t0 = now_ms();
    for (int tries = 0; tries < 200 && !(sink_count("back.ndjson", "\"second\"") &&
                                         sink_count("back.ndjson", "\"third\""));
         tries++)
        proc_wait_log_since(&inst[1], proc_log_mark(&inst[1]), "never logged", NULL, 50);
    printf("handed back on SIGTERM: delivered by the other instance %lld ms after the stop "
           "(lease 60 s)\n",
           now_ms() - t0);
    assert_int_equal(sink_count("back.ndjson", "\"second\""), 1);
    assert_int_equal(sink_count("back.ndjson", "\"third\""), 1);
    assert_true(now_ms() - t0 < 10000); /* released, not expired */
    unlink(in("hold"));
    assert_int_equal(proc_start(&inst[0], in("back.yaml"), NULL, 2), 0);
}

int main(int argc, char **argv)
{
    int rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(retries_dead_letter_and_replay, srv_ready),
        cmocka_unit_test_setup(duplicates_inside_the_window_are_dropped, srv_ready),
        cmocka_unit_test_setup(restart_resumes_pending_deliveries, srv_ready),
        cmocka_unit_test_setup(headers_survive_the_spool, srv_ready),
        cmocka_unit_test_setup(a_spool_from_0_1_is_upgraded, srv_ready),
        cmocka_unit_test_setup(a_spool_of_schema_1_is_upgraded_in_place, srv_ready),
        cmocka_unit_test_setup(a_backlog_past_the_queue_is_delivered_once, srv_ready),
        cmocka_unit_test_setup(kill9_at_random_moments_loses_nothing_acknowledged, srv_ready),
        cmocka_unit_test_setup(kill9_with_outcomes_in_memory_runs_each_handler_at_most_once_more,
                               srv_ready),
        cmocka_unit_test_setup(a_handler_added_by_reload_runs_for_new_events_only, srv_ready),
        cmocka_unit_test_setup(seventy_handlers_each_run_once_after_a_crash, srv_ready),
        cmocka_unit_test_setup(spool_events_answers_newest_first_by_state_type_id_key_and_text,
                               srv_ready),
        cmocka_unit_test_setup(failed_fsync_is_never_acknowledged, srv_ready),
        cmocka_unit_test_setup(a_full_spool_answers_503_then_recovers, srv_ready),
        cmocka_unit_test_setup(delivered_events_leave_the_spool_after_keep_delivered_s, srv_ready),
        cmocka_unit_test_setup(a_reload_applies_the_spool_limit_and_names_what_needs_a_restart,
                               srv_ready),
        cmocka_unit_test_setup(a_blocked_listing_does_not_pin_the_wal, srv_ready),
        cmocka_unit_test_setup(a_stop_leaves_a_running_delivery_pending, srv_ready),
        cmocka_unit_test_setup(a_full_disk_answers_503_then_recovers,
                               srv_ready), /* last: it stops the server */
    };
    const struct CMUnitTest shared[] = {
        cmocka_unit_test_setup(dedupe_holds_across_instances, instances_ready),
        cmocka_unit_test_setup(retries_dead_letters_and_replay_across_instances, instances_ready),
        cmocka_unit_test_setup(kill9_of_one_instance_loses_nothing_acknowledged, instances_ready),
        cmocka_unit_test_setup(a_stopped_database_answers_503_then_the_instances_recover,
                               instances_ready),
        cmocka_unit_test_setup(a_long_delivery_keeps_its_lease_and_a_frozen_instance_is_fenced,
                               instances_ready),
        cmocka_unit_test_setup(a_stopped_instance_hands_back_what_it_queued, instances_ready),
    };
    pg = argc > 1 && !strcmp(argv[1], "postgresql");
    if (pg && pg_cluster_create(&cluster) != 0) {
        pg_cluster_destroy(&cluster);
        return 1;
    }
    rc = cmocka_run_group_tests(tests, setup, teardown);
    if (pg) rc |= cmocka_run_group_tests(shared, shared_setup, shared_teardown);
    pg_cluster_destroy(&cluster);
    return rc;
}
