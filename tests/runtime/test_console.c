/* The console's API against the real server (docs/operations.md, "The console"), in sync mode
 * (the in-memory history) or, with the argument "durable", on a SQLite spool, or with
 * "postgresql" on a PostgreSQL spool (a throwaway cluster): filters and
 * paging, an event's detail with the lines its handler logged, replay (a dead letter becomes
 * delivered after the script is fixed and reloaded), the event stream within a second, a slow
 * stream reader disconnected while requests keep going, access control, and the signature's
 * value never in any answer. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "pg_cluster.h"

#define TOKEN "console-test-token"

static char dir[256];
static int durable, pg; /* pg: durable on a PostgreSQL spool */
static struct pg_cluster cluster;
static struct wh_proc srv;
static char seen[1 << 20]; /* every answer of the API this suite read, for the last case */
static size_t seen_len;

static void remember(const char *s, size_t n)
{
    if (seen_len + n < sizeof seen) {
        memcpy(seen + seen_len, s, n);
        seen_len += n;
        seen[seen_len] = '\0';
    }
}

static void write_flaky(int fixed)
{
    file_write(dir, "flaky.lua",
               fixed ? "function handle(e) wapphook.log('info', 'flaky fixed') end\n"
                     : "function handle(e) wapphook.log('warn', 'flaky broken') "
                       "error('still broken') end\n");
}

/* flaky.lua broken or fixed, and the server reloaded with it. */
static void reload_flaky(int fixed);

static void manifest(const char *name, const char *admin_extra)
{
    char m[4096], delivery[1024] = "";
    if (pg)
        snprintf(delivery, sizeof delivery,
                 "delivery:\n  mode: durable\n  spool: \"%s\"\n  retry: {max_attempts: 2, "
                 "initial_backoff_ms: 20, max_backoff_ms: 40}\n",
                 cluster.uri);
    else if (durable)
        snprintf(delivery, sizeof delivery,
                 "delivery:\n  mode: durable\n  spool: %s/spool.db\n  retry: {max_attempts: 2, "
                 "initial_backoff_ms: 20, max_backoff_ms: 40}\n",
                 dir);
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n%s"
             "console:\n  history: 40\n  history_body_bytes: 2048\n%s"
             "hooks:\n  a:\n    - lua: a.lua\n  b:\n    - lua: b.lua\n"
             "  flaky:\n    - lua: flaky.lua\n",
             delivery, admin_extra);
    file_write(dir, name, m);
}

static int start(void)
{
    return proc_start(&srv, path_in(dir, "hooks.yaml"), NULL, 2);
}

static int setup(void **state)
{
    (void)state;
    tmpdir_make(dir);
    file_write(dir, "a.lua",
               "function handle(e) wapphook.log('info', 'a handled ' .. "
               "tostring(e.payload.n)) print('second', 'line') end\n");
    file_write(dir, "b.lua",
               "function handle(e) wapphook.log('warn', 'b failing') return false, "
               "'b always fails' end\n");
    write_flaky(0);
    manifest("hooks.yaml", "");
    return start();
}

static int teardown(void **state)
{
    (void)state;
    if (proc_running(&srv)) proc_stop(&srv);
    return 0;
}

/* Each case starts with the server up, whatever an earlier one left. */
static int ready(void **state)
{
    (void)state;
    if (proc_running(&srv)) return 0;
    manifest("hooks.yaml", "");
    return start();
}

static void reload_flaky(int fixed)
{
    size_t mark = proc_log_mark(&srv);
    write_flaky(fixed);
    kill(srv.pid, SIGHUP);
    assert_true(proc_wait_log_since(&srv, mark, "reloaded", NULL, 10000));
}

/* GET (or POST with body) on the admin listener; the parsed JSON answer (NULL if none). */
static json_t *api(const char *method, const char *path, const char *body, long *status,
                   const char *const headers[])
{
    static struct resp r;
    char url[512];
    json_t *j;

    snprintf(url, sizeof url, "%s%s", srv.admin, path);
    *status = http_request(method, url, headers, body, body ? (long)strlen(body) : -1, NULL, &r);
    remember(r.body, r.body_len);
    remember(r.headers, strlen(r.headers));
    j = json_loadb(r.body, r.body_len, 0, NULL);
    return j;
}

static json_t *get(const char *path)
{
    long st;
    json_t *j = api("GET", path, NULL, &st, NULL);
    if (st != 200) fail_msg("GET %s: %ld", path, st);
    return j;
}

/* One request whose status must be `want` (its answer is not needed). */
static void expect(long want, const char *method, const char *path, const char *body,
                   const char *const headers[])
{
    long st;
    json_decref(api(method, path, body, &st, headers));
    if (st != want) fail_msg("%s %s: %ld, not %ld", method, path, st, want);
}

static long post(const char *type, const char *body)
{
    struct resp r;
    return post_signed(srv.http, type, body, NULL, &r);
}

/* The id of the newest event of this type. */
static char *newest(const char *type)
{
    char path[128];
    json_t *j;
    char *id;
    snprintf(path, sizeof path, "/api/events?type=%s&limit=1", type);
    j = get(path);
    id = strdup(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "events"), 0), "id")));
    json_decref(j);
    return id;
}

/* Waits (up to 10 s) until event id's state is `state`; returns its detail. */
static json_t *wait_state(const char *id, const char *state)
{
    char path[128];
    snprintf(path, sizeof path, "/api/events/%s", id);
    for (int i = 0; i < 1000; i++) {
        json_t *j = get(path);
        if (!strcmp(json_string_value(json_object_get(j, "state")), state)) return j;
        json_decref(j);
        usleep(10000); /* polling the API is the only way to see it */
    }
    fail_msg("event %s never became %s", id, state);
    return NULL;
}

static void list_filters_and_paging(void **state)
{
    char body[128], path[256];
    json_t *page, *ev;
    int total = 0, pages = 0;
    (void)state;
    for (int i = 0; i < 7; i++) {
        snprintf(body, sizeof body, "{\"n\":%d,\"marker\":\"paging-%d\"}", i, i);
        assert_int_equal(post("paged", body), 200); /* no handler: unrouted */
    }
    /* newest first, 3 a page, next until the last */
    snprintf(path, sizeof path, "/api/events?type=paged&limit=3");
    for (long long last = 1LL << 62;;) {
        page = get(path);
        ev = json_object_get(page, "events");
        pages++;
        for (size_t i = 0; i < json_array_size(ev); i++) {
            json_t *e = json_array_get(ev, i);
            long long id = atoll(json_string_value(json_object_get(e, "id")));
            assert_true(id < last);
            last = id;
            assert_string_equal(json_string_value(json_object_get(e, "type")), "paged");
            assert_string_equal(json_string_value(json_object_get(e, "state")), "unrouted");
            total++;
        }
        if (json_is_null(json_object_get(page, "next"))) {
            json_decref(page);
            break;
        }
        assert_int_equal(json_array_size(ev), 3);
        snprintf(path, sizeof path, "/api/events?type=paged&limit=3&before=%s",
                 json_string_value(json_object_get(page, "next")));
        json_decref(page);
    }
    assert_int_equal(total, 7);
    assert_int_equal(pages, 3);

    /* text, state and type filters */
    page = get("/api/events?q=paging-4");
    assert_int_equal(json_array_size(json_object_get(page, "events")), 1);
    json_decref(page);
    assert_int_equal(post("a", "{\"n\":1}"), 200);
    assert_int_equal(post("b", "{\"n\":2}"), durable ? 200 : 500);
    {
        char *b = newest("b");
        json_decref(wait_state(b, durable ? "dead" : "failed"));
        snprintf(path, sizeof path, "/api/events?state=%s", durable ? "dead" : "failed");
        page = get(path);
        ev = json_object_get(page, "events");
        assert_true(json_array_size(ev) >= 1);
        for (size_t i = 0; i < json_array_size(ev); i++)
            assert_string_equal(json_string_value(json_object_get(json_array_get(ev, i), "type")),
                                "b");
        assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 0), "id")), b);
        json_decref(page);
        /* by id */
        snprintf(path, sizeof path, "/api/events?q=%s", b);
        page = get(path);
        assert_string_equal(json_string_value(json_object_get(
                                json_array_get(json_object_get(page, "events"), 0), "id")),
                            b);
        json_decref(page);
        free(b);
    }
    page = get("/api/events?type=a&state=ok");
    ev = json_object_get(page, "events");
    assert_true(json_array_size(ev) >= 1);
    {
        json_t *h = json_array_get(json_object_get(json_array_get(ev, 0), "handlers"), 0);
        assert_string_equal(json_string_value(json_object_get(h, "handler")), "lua:a.lua:handle");
        assert_string_equal(json_string_value(json_object_get(h, "state")), "ok");
        assert_int_equal(json_integer_value(json_object_get(h, "attempts")), 1);
        assert_true(json_number_value(json_object_get(h, "duration_ms")) > 0);
    }
    json_decref(page);
    /* bad questions get clear answers */
    {
        expect(400, "GET", "/api/events?state=weird", NULL, NULL);
        expect(400, "GET", "/api/events?limit=0", NULL, NULL);
        expect(400, "GET", "/api/events?limit=201", NULL, NULL);
        expect(400, "GET", "/api/events?before=x", NULL, NULL);
        expect(405, "DELETE", "/api/events", NULL, NULL);
        expect(404, "GET", "/api/nothing", NULL, NULL);
    }
}

static void detail_has_payload_headers_and_log_lines(void **state)
{
    char path[128];
    json_t *d, *att, *log;
    char *id;
    (void)state;
    assert_int_equal(post("a", "{\"n\":\"detail-42\",\"nested\":{\"k\":[1,2]}}"), 200);
    id = newest("a");
    d = wait_state(id, "ok");
    assert_true(json_is_array(
        json_object_get(json_object_get(json_object_get(d, "payload"), "nested"), "k")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "payload"), "n")),
                        "detail-42");
    assert_false(json_is_true(json_object_get(d, "body_cut")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(d, "headers"), "x-wappcloud-signature")),
        "redacted");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(d, "headers"), "x-wappcloud-event")),
        "a");
    att = json_object_get(d, "attempts");
    assert_int_equal(json_array_size(att), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(att, 0), "outcome")),
                        "ok");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(att, 0), "attempt")), 1);
    log = json_object_get(json_array_get(att, 0), "log");
    assert_int_equal(json_array_size(log), 2);
    assert_string_equal(json_string_value(json_array_get(log, 0)), "info: a handled detail-42");
    assert_string_equal(json_string_value(json_array_get(log, 1)), "info: second\tline");
    json_decref(d);
    free(id);

    /* a failing handler: its error and its line, per attempt */
    assert_int_equal(post("b", "{\"n\":3}"), durable ? 200 : 500);
    id = newest("b");
    d = wait_state(id, durable ? "dead" : "failed");
    att = json_object_get(d, "attempts");
    assert_int_equal(json_array_size(att), durable ? 2 : 1);
    for (size_t i = 0; i < json_array_size(att); i++) {
        json_t *a = json_array_get(att, i);
        assert_int_equal(json_integer_value(json_object_get(a, "attempt")), (long long)i + 1);
        assert_non_null(strstr(json_string_value(json_object_get(a, "error")), "b always fails"));
        assert_string_equal(json_string_value(json_array_get(json_object_get(a, "log"), 0)),
                            "warn: b failing");
    }
    if (durable)
        assert_string_equal(json_string_value(json_object_get(json_array_get(att, 1), "outcome")),
                            "dead");
    json_decref(d);
    free(id);

    expect(404, "GET", "/api/events/999999", NULL, NULL);
    expect(404, "GET", "/api/events/abc", NULL, NULL);
    snprintf(path, sizeof path, "/api/events/1");
    expect(405, "POST", path, "{}", NULL);
}

/* The loop the console is for: a failure seen, the script fixed, reloaded, the event
 * replayed, delivered. */
static void replay_after_a_fix_delivers_the_event(void **state)
{
    char path[128], body[128];
    json_t *d, *att;
    long st;
    char *id;
    (void)state;
    reload_flaky(0);
    assert_int_equal(post("flaky", "{\"n\":\"replay-me\"}"), durable ? 200 : 500);
    id = newest("flaky");
    json_decref(wait_state(id, durable ? "dead" : "failed"));
    reload_flaky(1);
    snprintf(path, sizeof path, "/api/events/%s/replay", id);
    {
        json_t *r = api("POST", path, "{\"handler\":\"lua:flaky.lua:handle\"}", &st, NULL);
        assert_int_equal(st, 202);
        assert_int_equal(json_integer_value(json_object_get(r, "replayed")), 1);
        json_decref(r);
    }
    d = wait_state(id, "ok");
    att = json_object_get(d, "attempts");
    {
        json_t *last = json_array_get(att, json_array_size(att) - 1);
        assert_string_equal(json_string_value(json_object_get(last, "outcome")), "ok");
        assert_string_equal(json_string_value(json_array_get(json_object_get(last, "log"), 0)),
                            "info: flaky fixed");
        assert_int_equal(json_integer_value(json_object_get(last, "attempt")),
                         (long long)json_array_size(att));
    }
    json_decref(d);

    /* a handler the event does not have, an event that is not there */
    expect(404, "POST", path, "{\"handler\":\"lua:nope.lua:handle\"}", NULL);
    expect(400, "POST", path, "{\"handler\":7}", NULL);
    expect(404, "POST", "/api/events/999999/replay", "{}", NULL);
    free(id);

    /* every dead letter at once (durable mode; sync mode has none) */
    reload_flaky(0);
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"n\":\"dead-%d\"}", i);
        post("flaky", body);
    }
    id = newest("flaky");
    json_decref(wait_state(id, durable ? "dead" : "failed"));
    reload_flaky(1);
    {
        json_t *r = api("POST", "/api/dead/replay", NULL, &st, NULL);
        assert_int_equal(st, 202);
        assert_true(json_integer_value(json_object_get(r, "replayed")) >= (durable ? 3 : 0));
        json_decref(r);
    }
    if (durable) json_decref(wait_state(id, "ok"));
    free(id);

    /* sync mode: a body kept cut cannot run again */
    if (!durable) {
        char big[4096];
        memset(big, 'x', sizeof big);
        memcpy(big, "{\"n\":\"", 6);
        memcpy(big + sizeof big - 3, "\"}", 3);
        assert_int_equal(post("a", big), 200);
        id = newest("a");
        snprintf(path, sizeof path, "/api/events/%s", id);
        d = get(path);
        assert_true(json_is_true(json_object_get(d, "body_cut")));
        assert_int_equal(strlen(json_string_value(json_object_get(d, "payload"))), 2048);
        json_decref(d);
        snprintf(path, sizeof path, "/api/events/%s/replay", id);
        expect(409, "POST", path, "{}", NULL);
        free(id);
    }
}

/* Reads the stream on fd until `needle` arrives after a POST; the time it took (ms). */
static long long stream_wait(int fd, char *buf, size_t cap, size_t *len, const char *needle,
                             long long since)
{
    while (!strstr(buf, needle)) {
        size_t n = raw_read_until(fd, buf + *len, cap - *len - 1, 2000, "\n\n");
        if (n == 0) return -1;
        *len += n;
        buf[*len] = '\0';
        remember(buf, *len);
    }
    return now_ms() - since;
}

static int stream_open_with(int rcvbuf, const char *header);

static int stream_open(int rcvbuf)
{
    return stream_open_with(rcvbuf, NULL);
}

/* A stream on a raw connection (header: one more request header line, or NULL). */
static int stream_open_with(int rcvbuf, const char *header)
{
    char req[256], head[2048];
    int port = atoi(strrchr(srv.admin, ':') + 1), fd;
    if (rcvbuf) {
        /* a small window: the server's writes block soon (the reader reads nothing) */
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        a.sin_addr.s_addr = htonl(0x7f000001);
        if (connect(fd, (struct sockaddr *)&a, sizeof a)) fail_msg("connect");
    } else {
        fd = raw_connect(port);
    }
    snprintf(req, sizeof req, "GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s%s\r\n", port,
             header ? header : "", header ? "\r\n" : "");
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    assert_true(raw_read_until(fd, head, sizeof head, 5000, ": wapphook\n\n") > 0);
    assert_non_null(strstr(head, "200 OK"));
    assert_non_null(strstr(head, "text/event-stream"));
    return fd;
}

static void stream_delivers_received_and_outcome_within_a_second(void **state)
{
    static char buf[65536];
    size_t len = 0;
    char want[128], body[64];
    long long t0, received, outcome;
    int fd = stream_open(0);
    char *id;
    (void)state;
    buf[0] = '\0';
    snprintf(body, sizeof body, "{\"n\":\"streamed\"}");
    t0 = now_ms();
    assert_int_equal(post("a", body), 200);
    id = newest("a");
    snprintf(want, sizeof want, "event: received\ndata: {\"id\":\"%s\"", id);
    received = stream_wait(fd, buf, sizeof buf, &len, want, t0);
    snprintf(want, sizeof want, "event: outcome\ndata: {\"id\":\"%s\"", id);
    outcome = stream_wait(fd, buf, sizeof buf, &len, want, t0);
    print_message("stream: received after %lld ms, outcome after %lld ms\n", received, outcome);
    assert_true(received >= 0 && received < 1000);
    assert_true(outcome >= 0 && outcome < 1000);
    {
        /* the outcome's E says how it ended */
        const char *o = strstr(buf, want);
        assert_non_null(strstr(o, "\"state\":\"ok\""));
    }
    close(fd);
    free(id);
}

static long slow_posts_ok, slow_post_max_ms;

static long slow_poster(long i)
{
    for (int k = 0; k < 300; k++) {
        char body[160];
        long long t0 = now_ms(), took;
        snprintf(body, sizeof body, "{\"n\":\"slow-%ld-%d\",\"pad\":\"%080d\"}", i, k, 0);
        if (post("a", body) == 200) __atomic_add_fetch(&slow_posts_ok, 1, __ATOMIC_RELAXED);
        took = now_ms() - t0;
        for (long m = __atomic_load_n(&slow_post_max_ms, __ATOMIC_RELAXED); took > m;)
            if (__atomic_compare_exchange_n(&slow_post_max_ms, &m, took, 0, __ATOMIC_RELAXED,
                                            __ATOMIC_RELAXED))
                break;
    }
    return 0;
}

static void a_slow_stream_reader_is_disconnected_and_requests_go_on(void **state)
{
    static char buf[1 << 16];
    size_t mark = proc_log_mark(&srv);
    int fd = stream_open(2048);
    bool closed = false;
    (void)state;
    slow_posts_ok = slow_post_max_ms = 0;
    /* 8 x 300 events: 4,800 notices, more than the 4,096 a reader may fall behind by */
    run_parallel(8, slow_poster);
    print_message("2,400 posts with a stalled stream reader: slowest %ld ms\n", slow_post_max_ms);
    assert_int_equal(slow_posts_ok, 2400);
    /* a stalled reader never holds a request up: none waited for the stream */
    assert_true(slow_post_max_ms < 2000);
    /* it reads again: it gets what was sent, then the end */
    while (!closed) {
        size_t n = raw_read(fd, buf, sizeof buf, 15000, &closed);
        if (n == 0 && !closed) break;
    }
    assert_true(closed);
    assert_true(proc_wait_log_since(&srv, mark, "console stream reader disconnected", NULL, 10000));
    close(fd);
    /* and the stream still works for the next reader */
    fd = stream_open(0);
    close(fd);
}

static void access_needs_the_token_and_refuses_other_origins(void **state)
{
    char *env[] = {"WAPPHOOK_ADMIN_TOKEN=" TOKEN, NULL};
    const char *bearer[] = {"Authorization: Bearer " TOKEN, NULL};
    const char *wrong[] = {"Authorization: Bearer not-it", NULL};
    char cookie[200], csrf[120], hdr[200];
    json_t *j;
    (void)state;
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, path_in(dir, "hooks.yaml"), env, 2), 0);

    expect(401, "GET", "/api/events", NULL, NULL);
    expect(401, "GET", "/api/stream", NULL, NULL);
    expect(401, "GET", "/api/events", NULL, wrong);
    expect(200, "GET", "/api/events", NULL, bearer);
    /* the page itself is served, with nothing in it but the sign-in */
    {
        static struct resp r;
        char url[300];
        snprintf(url, sizeof url, "%s/", srv.admin);
        assert_int_equal(http_request("GET", url, NULL, NULL, -1, NULL, &r), 200);
        assert_non_null(strstr(r.body, "id=\"signin\""));
        assert_non_null(strstr(r.headers, "Content-Security-Policy: default-src 'self'"));
        assert_non_null(strstr(r.headers, "X-Frame-Options: DENY"));
        assert_non_null(strstr(r.headers, "X-Content-Type-Options: nosniff"));
        assert_null(strstr(r.body, "<script>")); /* no inline script: the CSP allows none */
        snprintf(url, sizeof url, "%s/console.js", srv.admin);
        assert_int_equal(http_request("GET", url, NULL, NULL, -1, NULL, &r), 200);
        assert_non_null(strstr(r.headers, "text/javascript"));
    }
    /* sign in: a wrong token, then the right one */
    expect(401, "POST", "/api/session", "{\"token\":\"nope\"}", NULL);
    {
        static struct resp r;
        char url[300];
        const char *set;
        snprintf(url, sizeof url, "%s/api/session", srv.admin);
        assert_int_equal(http_request("POST", url, NULL, "{\"token\":\"" TOKEN "\"}", -1, NULL, &r),
                         200);
        set = strstr(r.headers, "Set-Cookie: wapphook_session=");
        assert_non_null(set);
        assert_non_null(strstr(set, "HttpOnly"));
        assert_non_null(strstr(set, "SameSite=Strict"));
        snprintf(cookie, sizeof cookie, "Cookie: %.*s", (int)strcspn(set + 12, ";"), set + 12);
        j = json_loadb(r.body, r.body_len, 0, NULL);
        snprintf(csrf, sizeof csrf, "X-CSRF-Token: %s",
                 json_string_value(json_object_get(j, "csrf")));
        json_decref(j);
    }
    {
        const char *with_cookie[] = {cookie, NULL};
        const char *with_both[] = {cookie, csrf, NULL};
        const char *foreign[] = {cookie, csrf, "Origin: http://evil.example", NULL};
        const char *foreign_bearer[] = {"Authorization: Bearer " TOKEN,
                                        "Origin: http://evil.example", NULL};
        const char *own_origin[] = {cookie, csrf, hdr, NULL};
        expect(200, "GET", "/api/events", NULL, with_cookie);
        /* a POST with the cookie needs the CSRF token */
        expect(403, "POST", "/api/dead/replay", NULL, with_cookie);
        expect(202, "POST", "/api/dead/replay", NULL, with_both);
        /* a page of another origin is refused, whatever it carries */
        expect(403, "POST", "/api/dead/replay", NULL, foreign);
        expect(403, "POST", "/api/dead/replay", NULL, foreign_bearer);
        expect(403, "POST", "/api/session", "{\"token\":\"" TOKEN "\"}", foreign + 2);
        snprintf(hdr, sizeof hdr, "Origin: http://127.0.0.1:%s", strrchr(srv.admin, ':') + 1);
        expect(202, "POST", "/api/dead/replay", NULL, own_origin);
        /* signed out: the cookie no longer works, and its stream ends */
        {
            int fd = stream_open_with(0, cookie);
            char buf[4096];
            bool closed = false;
            size_t n;
            expect(200, "POST", "/api/session/end", NULL, with_both);
            n = raw_read(fd, buf, sizeof buf - 1, 5000, &closed);
            buf[n] = '\0';
            assert_true(closed);
            assert_non_null(strstr(buf, "event: signed-out"));
            close(fd);
        }
        expect(401, "GET", "/api/events", NULL, with_cookie);
    }
    /* /healthz and /metrics need no token */
    expect(200, "GET", "/healthz", NULL, NULL);
    assert_int_equal(proc_stop(&srv), 0);

    /* without a token: loopback names only (another name may be a DNS rebinding) */
    assert_int_equal(start(), 0);
    {
        const char *rebound[] = {"Host: attacker.example:9090", NULL};
        const char *lookalike[] = {"Host: 127.attacker.example:9090", NULL};
        expect(403, "GET", "/api/events", NULL, rebound);
        expect(403, "GET", "/api/events", NULL, lookalike);
        expect(200, "GET", "/api/events", NULL, NULL);
    }
}

/* A listener others can reach stays closed without a token, even after a reload that took the
 * token away (with server.admin moved to loopback, which applies only at a restart). */
static void a_reload_cannot_open_a_public_console(void **state)
{
    char *env[] = {"WAPPHOOK_ADMIN_TOKEN=" TOKEN, NULL};
    const char *as_loopback[] = {"Host: 127.0.0.1", NULL};
    const char *bearer[] = {"Authorization: Bearer " TOKEN, "Host: 127.0.0.1", NULL};
    char m[512];
    size_t mark;
    (void)state;
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 0.0.0.0:0\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\nhooks: {}\n");
    file_write(dir, "public.yaml", m);
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(proc_start(&srv, path_in(dir, "public.yaml"), env, 2), 0);
    expect(401, "GET", "/api/events", NULL, as_loopback);
    expect(200, "GET", "/api/events", NULL, bearer);
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  admin: 127.0.0.1:0\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\nconsole: {token_env: WH_NO_SUCH_VAR}\n"
             "hooks: {}\n");
    file_write(dir, "public.yaml", m);
    mark = proc_log_mark(&srv);
    kill(srv.pid, SIGHUP);
    assert_true(proc_wait_log_since(&srv, mark, "reloaded", NULL, 10000));
    expect(401, "GET", "/api/events", NULL, as_loopback); /* still on 0.0.0.0: still closed */
    expect(401, "GET", "/api/events", NULL, bearer);      /* and the old token is gone */
    assert_int_equal(proc_stop(&srv), 0);
    assert_int_equal(start(), 0);
}

static void the_history_is_bounded_and_measured(void **state)
{
    json_t *page;
    char *first, *last, path[128];
    (void)state;
    if (durable) skip();
    assert_int_equal(post("a", "{\"n\":\"oldest\"}"), 200);
    first = newest("a");
    for (int i = 0; i < 45; i++) /* history: 40 */
        assert_int_equal(post("a", "{\"n\":\"filler\"}"), 200);
    last = newest("a");
    page = get("/api/events?limit=200");
    assert_int_equal(json_array_size(json_object_get(page, "events")), 40);
    json_decref(page);
    snprintf(path, sizeof path, "/api/events/%s", first);
    expect(404, "GET", path, NULL, NULL); /* gone from the ring */
    snprintf(path, sizeof path, "/api/events/%s", last);
    expect(200, "GET", path, NULL, NULL);
    {
        /* replayed again and again, an event keeps its last 32 attempts */
        char replay[160];
        json_t *d;
        snprintf(replay, sizeof replay, "/api/events/%s/replay", last);
        for (int i = 0; i < 40; i++)
            expect(202, "POST", replay, "{}", NULL);
        d = get(path);
        assert_int_equal(json_array_size(json_object_get(d, "attempts")), 32);
        json_decref(d);
    }
    {
        static struct resp r;
        char url[300];
        const char *g;
        long long bytes;
        snprintf(url, sizeof url, "%s/metrics", srv.admin);
        assert_int_equal(http_request("GET", url, NULL, NULL, -1, NULL, &r), 200);
        g = strstr(r.body, "\nwapphook_history_bytes ");
        assert_non_null(g);
        bytes = atoll(g + strlen("\nwapphook_history_bytes "));
        print_message("history of 40 small events: %lld bytes\n", bytes);
        assert_true(bytes > 40 * 100 && bytes < 40 * (2048 + 8192));
    }
    free(first);
    free(last);
}

static void stats_count_by_type_and_handler(void **state)
{
    json_t *s, *t;
    int found = 0;
    (void)state;
    assert_int_equal(post("a", "{\"n\":\"stats\"}"), 200);
    s = get("/api/stats?window_s=900");
    assert_int_equal(json_integer_value(json_object_get(s, "window_s")), 900);
    assert_int_equal(json_array_size(json_object_get(s, "buckets")), 90);
    t = json_object_get(s, "handlers");
    for (size_t i = 0; i < json_array_size(t); i++) {
        json_t *h = json_array_get(t, i);
        if (strcmp(json_string_value(json_object_get(h, "handler")), "lua:a.lua:handle")) continue;
        found = 1;
        assert_true(json_integer_value(json_object_get(h, "ok")) >= 1);
        assert_true(json_number_value(json_object_get(h, "p50_ms")) > 0);
        assert_true(json_number_value(json_object_get(h, "p99_ms")) >=
                    json_number_value(json_object_get(h, "p50_ms")));
    }
    assert_true(found);
    {
        long long events = 0;
        json_t *b = json_object_get(s, "buckets");
        for (size_t i = 0; i < json_array_size(b); i++)
            events += json_integer_value(json_object_get(json_array_get(b, i), "events"));
        assert_true(events >= 1);
    }
    json_decref(s);
    {
        expect(400, "GET", "/api/stats?window_s=0", NULL, NULL);
    }
}

static void try_runs_the_current_handlers_on_a_stored_event(void **state)
{
    char out[8192], *id;
    int rc;
    (void)state;
    if (!durable) skip();
    assert_int_equal(post("a", "{\"n\":\"try-me\"}"), 200);
    id = newest("a");
    {
        char *argv[] = {WAPPHOOK_BIN, "try", "-c", (char *)path_in(dir, "hooks.yaml"),
                        "--event",    id,    NULL};
        rc = run_cli(argv, NULL, NULL, out, sizeof out);
    }
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "lua:a.lua:handle  ok"));
    assert_non_null(strstr(out, "a handled try-me"));
    {
        char *argv[] = {WAPPHOOK_BIN, "try",    "-c", (char *)path_in(dir, "hooks.yaml"),
                        "--event",    "999999", NULL};
        assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 2);
        assert_non_null(strstr(out, "no event 999999"));
    }
    free(id);
}

/* A stop with a stream open: the stream ends, the console outlives the server's parts it
 * used (it holds its own generation), and the process exits 0 (under ASan: nothing freed
 * twice or read after its free). */
static void a_stop_with_a_stream_open_is_clean(void **state)
{
    int fd = stream_open(0);
    (void)state;
    assert_int_equal(post("a", "{\"n\":\"before the stop\"}"), 200);
    assert_int_equal(proc_stop(&srv), 0);
    close(fd);
    assert_int_equal(start(), 0);
}

/* Last: everything the API answered in this suite, the stream included. */
static void the_signature_is_never_in_an_answer(void **state)
{
    char sig[80];
    const char *bodies[] = {"{\"n\":1}",
                            "{\"n\":2}",
                            "{\"n\":3}",
                            "{\"n\":\"detail-42\",\"nested\":{\"k\":[1,2]}}",
                            "{\"n\":\"streamed\"}",
                            "{\"n\":\"try-me\"}",
                            "{\"n\":\"stats\"}"};
    (void)state;
    assert_true(seen_len > 10000); /* the suite did read answers */
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        sign(TEST_SECRET, bodies[i], strlen(bodies[i]), sig);
        assert_null(strstr(seen, sig + strlen("sha256=")));
    }
    assert_null(strstr(seen, TEST_SECRET));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(list_filters_and_paging, ready),
        cmocka_unit_test_setup(detail_has_payload_headers_and_log_lines, ready),
        cmocka_unit_test_setup(replay_after_a_fix_delivers_the_event, ready),
        cmocka_unit_test_setup(stream_delivers_received_and_outcome_within_a_second, ready),
        cmocka_unit_test_setup(a_slow_stream_reader_is_disconnected_and_requests_go_on, ready),
        cmocka_unit_test_setup(the_history_is_bounded_and_measured, ready),
        cmocka_unit_test_setup(stats_count_by_type_and_handler, ready),
        cmocka_unit_test_setup(try_runs_the_current_handlers_on_a_stored_event, ready),
        cmocka_unit_test_setup(access_needs_the_token_and_refuses_other_origins, ready),
        cmocka_unit_test_setup(a_reload_cannot_open_a_public_console, ready),
        cmocka_unit_test_setup(a_stop_with_a_stream_open_is_clean, ready),
        cmocka_unit_test_setup(the_signature_is_never_in_an_answer, ready),
    };
    int rc;
    pg = argc > 1 && !strcmp(argv[1], "postgresql");
    durable = pg || (argc > 1 && !strcmp(argv[1], "durable"));
    if (pg && pg_cluster_create(&cluster) != 0) {
        pg_cluster_destroy(&cluster);
        return 1;
    }
    rc = cmocka_run_group_tests(tests, setup, teardown);
    pg_cluster_destroy(&cluster);
    return rc;
}
