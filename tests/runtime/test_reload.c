/* SIGHUP reload: new code answers after a reload, every broken variant is refused while the
 * old generation serves, a plugin replaced on disk (even overwritten in place) runs its new
 * code, a request in flight finishes on its own generation which is destroyed only after
 * it, 1000 reloads under continuous traffic fail nothing, and memory stays flat. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

static char dir[256];
static struct wh_proc srv;
static unsigned long generation = 1;

static const char *in(const char *name)
{
    return path_in(dir, name);
}

/* Writes a file the way a careful operator does: a temporary then rename(2). */
static void replace(const char *name, const char *content)
{
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    file_write(dir, tmp, content);
    assert_int_equal(rename(in(tmp), in(name)), 0);
}

static void manifest(const char *hooks)
{
    char m[4096];
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  threads: 8\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\nhooks:\n%s",
             hooks);
    replace("hooks.yaml", m);
}

/* HUP, then wait for a reload to a newer generation. (After a burst of signals a coalesced
 * reload may still be pending; whichever completes first counts, and `generation` follows
 * the log rather than a count of signals.) */
static void reload_ok(void)
{
    char line[512];
    size_t mark = proc_log_mark(&srv);

    kill(srv.pid, SIGHUP);
    /* any reload logged after the mark is newer than the one we knew */
    if (!proc_wait_line_since(&srv, mark, "\"msg\":\"reloaded\"", NULL, 20000, line, sizeof line))
        fail_msg("no reload after generation %lu", generation);
    generation = strtoul(strstr(line, "\"generation\":") + 13, NULL, 10);
}

static void reload_refused(const char *why)
{
    size_t mark = proc_log_mark(&srv);
    kill(srv.pid, SIGHUP);
    if (!proc_wait_log_since(&srv, mark, "reload refused", why, 20000)) {
        char *log = proc_log(&srv);
        size_t n = strlen(log);
        fprintf(stderr, "log (end):\n%s\n", log + (n > 2000 ? n - 2000 : 0));
        free(log);
        fail_msg("no refusal mentioning %s", why);
    }
}

static long post(const char *event)
{
    struct resp *r = malloc(sizeof *r);
    long st = post_signed(srv.http, event, "{}", NULL, r);
    free(r);
    return st;
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    tmpdir_make(dir);
    file_write(dir, "s.lua", "function handle(e) return false, 'version 1' end\n");
    manifest("  t:\n    - lua: s.lua\n");
    return proc_start(&srv, in("hooks.yaml"), NULL, 1);
}

static int teardown(void **state)
{
    (void)state;
    return proc_stop(&srv) == 0 ? 0 : -1;
}

static void new_script_answers_after_reload(void **state)
{
    (void)state;
    assert_int_equal(post("t"), 500); /* version 1 fails on purpose */
    replace("s.lua", "function handle(e) end\n");
    assert_int_equal(post("t"), 500); /* nothing changes before the signal */
    reload_ok();
    assert_int_equal(post("t"), 200);
    assert_int_equal(post("t"), 200);
}

static void broken_configurations_are_refused(void **state)
{
    char hooks[1024];
    (void)state;
    /* each broken variant: refused, and the running generation (s.lua -> 200) still serves */
    replace("bad.lua", "function handle(e)\n  if then\nend\n");
    manifest("  t:\n    - lua: bad.lua\n");
    reload_refused("bad.lua:2:");
    assert_int_equal(post("t"), 200);

    replace("bad.lua", "error('top level says no')\n");
    reload_refused("bad.lua:1: top level says no");
    assert_int_equal(post("t"), 200);

    replace("hooks.yaml", "secrets: [{value: x}]\nhooks: {\n");
    reload_refused("YAML");
    assert_int_equal(post("t"), 200);

    replace("hooks.yaml", "secrets: [{value: x}]\nhooks: {}\nsurprise: 1\n");
    reload_refused("hooks.yaml:3: unknown key 'surprise'");
    assert_int_equal(post("t"), 200);

    manifest("  t:\n    - plugin: missing.so\n");
    reload_refused("missing.so: No such file");
    assert_int_equal(post("t"), 200);

    snprintf(hooks, sizeof hooks,
             "  t:\n    - plugin: %s/test_plugin.so\n      config: {fail_create: true}\n",
             TEST_PLUGINS);
    manifest(hooks);
    reload_refused("create failed: told to fail in create");
    assert_int_equal(post("t"), 200);
    assert_int_equal(kill(srv.pid, 0), 0); /* alive */

    manifest("  t:\n    - lua: s.lua\n");
    reload_ok();
    assert_int_equal(post("t"), 200);
}

static void copy_file(const char *from, const char *to)
{
    /* in place: truncate and rewrite the same inode, what a careless `cp` does */
    FILE *in_f = fopen(from, "rb"), *out_f = fopen(to, "r+b");
    char buf[65536];
    size_t n;
    if (!out_f) out_f = fopen(to, "wb");
    assert_non_null(in_f);
    assert_non_null(out_f);
    assert_int_equal(ftruncate(fileno(out_f), 0), 0);
    while ((n = fread(buf, 1, sizeof buf, in_f)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out_f), n);
    fclose(in_f);
    fclose(out_f);
}

static void replaced_plugin_runs_its_new_code(void **state)
{
    (void)state;
    copy_file(TEST_PLUGINS "/test_plugin.so", in("p.so"));
    manifest("  t:\n    - plugin: p.so\n");
    reload_ok();
    assert_int_equal(post("t"), 200);
    /* the new build fails every event; overwrite the loaded file in place */
    copy_file(TEST_PLUGINS "/test_plugin_v2.so", in("p.so"));
    assert_int_equal(post("t"), 200); /* old code, unharmed by the overwrite */
    reload_ok();
    assert_int_equal(post("t"), 500);
    assert_true(proc_wait_log(&srv, "this build always fails", NULL, 5000));
    copy_file(TEST_PLUGINS "/test_plugin.so", in("p.so"));
    reload_ok();
    assert_int_equal(post("t"), 200);
}

static volatile int inflight_done;
static long inflight_status;

static void *inflight_main(void *arg)
{
    (void)arg;
    inflight_status = post("slow");
    __atomic_store_n(&inflight_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void request_in_flight_finishes_on_its_generation(void **state)
{
    char hooks[1024], *log, *lines;
    pthread_t th;
    unsigned long old_gen;
    char want[100];
    (void)state;
    snprintf(hooks, sizeof hooks,
             "  slow:\n    - plugin: %s/test_plugin.so\n      config: {tag: OLD, sleep_ms: 1500, "
             "append: %s}\n",
             TEST_PLUGINS, in("inflight.txt"));
    manifest(hooks);
    reload_ok();
    old_gen = generation;
    assert_int_equal(pthread_create(&th, NULL, inflight_main, NULL), 0);
    assert_true(proc_wait_log(&srv, "handling OLD", NULL, 10000)); /* it is in flight */

    snprintf(hooks, sizeof hooks,
             "  slow:\n    - plugin: %s/test_plugin.so\n      config: {tag: NEW, append: %s}\n",
             TEST_PLUGINS, in("inflight.txt"));
    manifest(hooks);
    reload_ok();
    /* the new generation serves while the old request is still running */
    assert_int_equal(post("slow"), 200);
    assert_int_equal(__atomic_load_n(&inflight_done, __ATOMIC_ACQUIRE), 0);
    log = proc_log(&srv);
    assert_null(strstr(log, "destroyed OLD")); /* not before its last request ends */
    free(log);
    pthread_join(th, NULL);
    assert_int_equal(inflight_status, 200);
    lines = NULL;
    {
        FILE *f = fopen(in("inflight.txt"), "r");
        char buf[256] = "";
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f) fclose(f);
        buf[n] = '\0';
        lines = strdup(buf);
    }
    /* the old request ran the old configuration, after the new one had answered */
    assert_string_equal(lines, "NEW slow -\nOLD slow -\n");
    free(lines);
    snprintf(want, sizeof want, "\"event\":\"slow\",\"duration_ms\"");
    assert_true(proc_wait_log(&srv, "destroyed OLD", NULL, 10000)); /* and then it is gone */
    snprintf(want, sizeof want, "\"generation\":%lu}", old_gen);
    assert_true(proc_wait_log(&srv, "\"event\":\"slow\"", want, 5000));
}

/* --- 1000 reloads under traffic -------------------------------------------------------- */

static volatile int traffic_stop;
static long failures[8], done_requests[8];

static long traffic(long id)
{
    CURL *c = curl_easy_init(); /* one handle: keep-alive, like a real sender */
    char sig[80], sh[120];
    struct curl_slist *h = NULL;
    const char *body = "{\"n\":1}";
    long n = 0;

    sign(TEST_SECRET, body, strlen(body), sig);
    snprintf(sh, sizeof sh, "X-Wappcloud-Signature: %s", sig);
    h = curl_slist_append(h, sh);
    h = curl_slist_append(h, "X-Wappcloud-Event: t");
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, srv.http);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_MAXCONNECTS, 1L); /* a fresh connection closes the old one */
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fwrite);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, fopen("/dev/null", "w"));
    while (!__atomic_load_n(&traffic_stop, __ATOMIC_ACQUIRE)) {
        long status = 0;
        /* every 10th request on a fresh connection */
        curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, (long)(n % 10 == 0));
        CURLcode rc = curl_easy_perform(c);
        if (rc != CURLE_OK ||
            (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status), status != 200)) {
            printf("traffic %ld: request %ld failed: curl %d, status %ld\n", id, n, (int)rc,
                   status);
            failures[id]++;
        }
        n++;
    }
    done_requests[id] = n;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return 0;
}

static void *traffic_main(void *arg)
{
    traffic((long)arg);
    return NULL;
}

static void thousand_reloads_under_traffic_fail_nothing(void **state)
{
    pthread_t th[4];
    char hooks[1024];
    long total = 0, failed = 0;
    int hups = 0;
    unsigned long before;
    (void)state;
    snprintf(
        hooks, sizeof hooks,
        "  t:\n    - lua: s.lua\n    - plugin: %s/test_plugin.so\n  \"*\":\n    - lua: s.lua\n",
        TEST_PLUGINS);
    manifest(hooks);
    reload_ok();
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, traffic_main, (void *)i);
    /* 500 reloads one after the other, each one a real swap (the script alternates) */
    for (int i = 0; i < 500; i++, hups++) {
        replace("s.lua",
                i % 2 ? "function handle(e) end\n" : "function handle(e) return true end\n");
        reload_ok();
    }
    /* then 10 bursts of 50 signals: coalesced while a build runs, never lost. After each
     * burst the newest files must be live: the burst's script fails events of type "probe"
     * with its own number, which only a reload after the last write can know. */
    before = generation;
    for (int b = 0; b < 10; b++) {
        char script[200], want[64];
        size_t mark = proc_log_mark(&srv);
        snprintf(script, sizeof script,
                 "function handle(e) if e.type == 'probe' then return false, 'burst %d' end end\n",
                 b);
        replace("s.lua", script);
        for (int i = 0; i < 50; i++, hups++)
            kill(srv.pid, SIGHUP);
        snprintf(want, sizeof want, "burst %d", b);
        /* poll by request until the burst's script answers: bounded, and each probe is a
         * real request, not a sleep */
        for (int tries = 0; tries < 2000; tries++) {
            if (post("probe") == 500 && proc_wait_log_since(&srv, mark, want, NULL, 50)) break;
        }
        assert_true(proc_wait_log_since(&srv, mark, want, NULL, 1000));
    }
    reload_ok(); /* and the count of builds so far, from the log */
    __atomic_store_n(&traffic_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += done_requests[i];
        failed += failures[i];
    }
    printf("reload stress: %d SIGHUPs, %lu reloads, %ld requests, %ld failed\n", hups,
           generation - 1, total, failed);
    assert_true(hups >= 1000);
    assert_true(generation - before >= 10 && generation - before <= 10 * 50 + 1);
    assert_true(total > 0);
    assert_int_equal(failed, 0);
}

static void memory_is_flat_over_many_reloads(void **state)
{
    char hooks[1024];
    const int total = SANITIZED ? 1000 : 10000;
    long warm = 0, end;
    (void)state;
    snprintf(
        hooks, sizeof hooks,
        "  t:\n    - lua: s.lua\n    - plugin: %s/test_plugin.so\n    - plugin: %s/file_sink.so\n"
        "      config: {path: %s}\n",
        TEST_PLUGINS, SHIPPED_PLUGINS, in("sink.ndjson"));
    manifest(hooks);
    for (int i = 0; i < total; i++) {
        reload_ok();
        if (i % 50 == 0) assert_int_equal(post("t"), 200); /* states are made, used and retired */
        if (i == 1000) warm = proc_rss_kib(srv.pid);
    }
    end = proc_rss_kib(srv.pid);
    printf("memory over %d reloads: RSS %ld KiB after 1000, %ld KiB after %d\n", total, warm, end,
           total);
    /* under a sanitizer the allocator keeps freed memory on purpose: LeakSanitizer's check
     * at exit (the server must exit 0) is the leak test there */
    if (!SANITIZED) assert_true(end - warm < 4096);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(new_script_answers_after_reload),
        cmocka_unit_test(broken_configurations_are_refused),
        cmocka_unit_test(replaced_plugin_runs_its_new_code),
        cmocka_unit_test(request_in_flight_finishes_on_its_generation),
        cmocka_unit_test(thousand_reloads_under_traffic_fail_nothing),
        cmocka_unit_test(memory_is_flat_over_many_reloads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
