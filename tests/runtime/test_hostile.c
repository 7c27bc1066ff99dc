/* Hostile clients against the real server: 500 idle and 50 dripping connections must not
 * keep a signed request waiting past 2 x the header deadline, with the per-client cap off
 * (this measures the thread pool itself; runtime_overload tests the cap); adversarial HTTP
 * gets a 4xx
 * (or a correct answer) and the server keeps serving; adversarial JSON gets a 400 or a
 * correct conversion, never a crash. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#define TIMEOUT_MS 1000

static char dir[256];
static struct wh_proc srv;
static struct resp r;

static int setup(void **state)
{
    char m[2048];
    struct rlimit rl;
    (void)state;
    /* 550 client sockets here */
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 4096 && rl.rlim_max >= 4096) {
        rl.rlim_cur = 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    tmpdir_make(dir);
    file_write(dir, "big.lua",
               "function handle(e)\n"
               "  local p = e.payload\n"
               "  if p.a and #p.a ~= p.n then return false, 'length ' .. #p.a end\n"
               "end\n");
    snprintf(m, sizeof m,
             "server:\n  listen: [http://127.0.0.1:0]\n  threads: 64\n"
             "  max_connections_per_client: 0\n  max_inflight: 0\n"
             "  request_timeout_ms: %d\n  header_timeout_ms: %d\n"
             "secrets: [{value: \"" TEST_SECRET "\"}]\n"
             "hooks:\n  t:\n    - lua: big.lua\n",
             TIMEOUT_MS, TIMEOUT_MS);
    file_write(dir, "hooks.yaml", m);
    return proc_start(&srv, path_in(dir, "hooks.yaml"), NULL, 1);
}

static int teardown(void **state)
{
    (void)state;
    return proc_stop(&srv) == 0 ? 0 : -1;
}

static void assert_alive(void)
{
    char url[400];
    struct resp a;
    snprintf(url, sizeof url, "%s?challenge=alive", srv.http);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &a), 200);
}

/* --- slow clients ------------------------------------------------------------------------ */

#define IDLE 500
#define DRIP_MAX 150

static volatile int drip_stop;
static int drip_n;
static int drip_fds[DRIP_MAX];

static void *dripper(void *arg)
{
    const char *head = "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    (void)arg;
    for (int i = 0; i < drip_n; i++) {
        drip_fds[i] = raw_connect(srv.http_port);
        (void)!send(drip_fds[i], head, strlen(head), MSG_NOSIGNAL);
    }
    /* a byte per connection every 100 ms, for as long as the test runs */
    while (!__atomic_load_n(&drip_stop, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        for (int i = 0; i < drip_n; i++)
            (void)!send(drip_fds[i], "a", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        nanosleep(&ts, NULL); /* the drip rate itself, not a synchronisation */
    }
    return NULL;
}

/* 500 silent connections and `dripping` slow ones; returns the worst time of 5 signed
 * POSTs sent meanwhile (or -1 if one failed). */
static long long under_slow_clients(int dripping)
{
    static int idle[IDLE];
    pthread_t th;
    long long worst = 0;
    int failed = 0;

    drip_n = dripping;
    __atomic_store_n(&drip_stop, 0, __ATOMIC_RELEASE);
    for (int i = 0; i < IDLE; i++)
        idle[i] = raw_connect(srv.http_port); /* connect, then say nothing */
    pthread_create(&th, NULL, dripper, NULL);
    for (int i = 0; i < 5; i++) {
        long long t0 = now_ms(), took;
        failed += post_signed(srv.http, "t", "{\"n\":0}", NULL, &r) != 200;
        took = now_ms() - t0;
        if (took > worst) worst = took;
    }
    /* clean up before any assertion, so a failure does not starve the next tests */
    __atomic_store_n(&drip_stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    for (int i = 0; i < IDLE; i++)
        close(idle[i]);
    for (int i = 0; i < drip_n; i++)
        close(drip_fds[i]);
    printf("64 threads, header_timeout_ms %d, %d silent + %d dripping connections: "
           "worst of 5 signed POSTs %lld ms%s\n",
           TIMEOUT_MS, IDLE, dripping, worst, failed ? " (some failed)" : "");
    return failed ? -1 : worst;
}

static void slow_clients_do_not_starve_a_signed_request(void **state)
{
    long long worst;
    (void)state;
    worst = under_slow_clients(50);
    assert_true(worst >= 0 && worst <= 2 * TIMEOUT_MS);
    assert_alive();
    /* past the thread count: measured and printed (the capacity model in docs/security.md),
     * not asserted */
    under_slow_clients(150);
    assert_alive();
}

static void a_dripped_header_is_cut_at_the_deadline(void **state)
{
    char out[2048];
    bool closed = false;
    int fd = raw_connect(srv.http_port);
    long long t0 = now_ms();
    (void)state;
    (void)!send(fd, "GET /webhook?challenge=x HTTP/1.1\r\nX-A: ", 40, MSG_NOSIGNAL);
    while (!closed && now_ms() - t0 < 4 * TIMEOUT_MS) {
        if (send(fd, "a", 1, MSG_NOSIGNAL) < 0) break;
        raw_read(fd, out, sizeof out, 100, &closed);
    }
    close(fd);
    assert_true(now_ms() - t0 <= 2 * TIMEOUT_MS + 300);
}

/* --- adversarial HTTP ---------------------------------------------------------------------- */

struct hostile {
    const char *name;
    const char *bytes;
    size_t len; /* 0: strlen */
    int lo, hi; /* acceptable status range; 0, 0: no answer is acceptable too */
};

static void adversarial_http(void **state)
{
    static char huge_header[40000], many_headers[20000], long_url[70000];
    char out[8192];
    bool closed;
    size_t n;
    (void)state;
    snprintf(huge_header, sizeof huge_header,
             "GET /webhook?challenge=x HTTP/1.1\r\nX-Big: %0*d\r\n\r\n", 30000, 0);
    strcpy(many_headers, "GET /webhook?challenge=x HTTP/1.1\r\n");
    for (int i = 0; i < 200; i++)
        sprintf(many_headers + strlen(many_headers), "X-H%d: v\r\n", i);
    strcat(many_headers, "\r\n");
    snprintf(long_url, sizeof long_url,
             "GET /webhook?challenge=x&pad=%0*d HTTP/1.1\r\nHost: x\r\n\r\n", 60000, 0);
    const struct hostile cases[] = {
        {"chunk size overflow",
         "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
         "chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n",
         0, 400, 413},
        {"negative chunk size",
         "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
         "chunked\r\n\r\n-5\r\nxxxxx\r\n0\r\n\r\n",
         0, 400, 401},
        /* civetweb 1.15 refuses chunk extensions: a 400, or a 401 if it ever reads them */
        {"chunk extension",
         "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
         "chunked\r\n\r\n2;ext=1\r\n{}\r\n0\r\n\r\n",
         0, 400, 401},
        {"content-length not a number",
         "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n", 0, 400, 413},
        {"negative content-length",
         "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 0, 400, 413},
        {"huge content-length",
         "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 0,
         400, 413},
        {"oversized header", huge_header, 0, 400, 431},
        {"200 headers", many_headers, 0, 200, 431},
        {"header name with a space", "GET /webhook?challenge=x HTTP/1.1\r\nBad Name: v\r\n\r\n", 0,
         200, 400},
        {"bare LF line endings", "GET /webhook?challenge=lf HTTP/1.1\nHost: x\n\n", 0, 200, 400},
        {"NUL in a header", "GET /webhook?challenge=x HTTP/1.1\r\nX: a\0b\r\n\r\n", 44, 200, 400},
        {"NUL in the request line", "GET /web\0hook HTTP/1.1\r\n\r\n", 26, 400, 404},
        {"not HTTP at all", "\x01\x02\x03 hello there\r\n\r\n", 0, 400, 400},
        {"TLS ClientHello on the plain port",
         "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
         "0123456789012345678901234567890123456789\r\n\r\n",
         0, 400, 400},
        {"HTTP/1.0 without keep-alive", "GET /webhook?challenge=ten HTTP/1.0\r\n\r\n", 0, 200, 200},
        {"absurd URL", long_url, 0, 400, 431},
        {"bad percent-encoding", "GET /web%zzhook?challenge=%zz HTTP/1.1\r\nHost: x\r\n\r\n", 0,
         400, 404},
        {"dot segments", "GET /x/../webhook/./?challenge=a HTTP/1.1\r\nHost: x\r\n\r\n", 0, 200,
         404},
        /* civetweb 1.15 closes these without an answer, before any handler runs */
        {"absolute-form URI",
         "GET http://evil.example/webhook?challenge=a HTTP/1.1\r\nHost: x\r\n\r\n", 0, 0, 0},
        {"CONNECT", "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, 405},
        {"TRACE", "TRACE /webhook HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, 405},
        {"lowercase method", "get /webhook?challenge=a HTTP/1.1\r\nHost: x\r\n\r\n", 0, 400, 405},
        {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0, 400, 505},
        {"empty", "\r\n\r\n", 0, 0, 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct hostile *c = &cases[i];
        int st;
        n = raw_exchange(srv.http_port, c->bytes, c->len ? c->len : strlen(c->bytes), out,
                         sizeof out, 3000, &closed);
        st = raw_status(out);
        /* lo == 0: closing without an answer is acceptable (if hi == 0, it is required) */
        if (!(st >= c->lo && st <= c->hi && st != 0) && !(c->lo == 0 && n == 0))
            fail_msg("%s: status %d (want %d..%d): %.200s", c->name, st, c->lo, c->hi, out);
        if (st >= 400 && !strstr(out, "Content-Type: application/json"))
            fail_msg("%s: an error without a JSON body: %.300s", c->name, out);
        assert_alive();
    }
}

/* --- adversarial JSON ------------------------------------------------------------------------ */

static long post_body(const char *body, size_t len)
{
    char sig[80], sh[120];
    const char *h[4] = {sh, "X-Wappcloud-Event: t", "Content-Type: application/json", NULL};
    sign(TEST_SECRET, body, len, sig);
    snprintf(sh, sizeof sh, "X-Wappcloud-Signature: %s", sig);
    return http_request("POST", srv.http, h, body, (long)len, NULL, &r);
}

static void adversarial_json(void **state)
{
    static char buf[1 << 20];
    size_t n = 0;
    (void)state;
    /* 5000-deep nesting: past jansson's depth limit */
    n = (size_t)sprintf(buf, "{\"a\":");
    for (int i = 0; i < 5000; i++)
        buf[n++] = '[';
    for (int i = 0; i < 5000; i++)
        buf[n++] = ']';
    buf[n++] = '}';
    assert_int_equal(post_body(buf, n), 400);
    assert_string_equal(r.body, "{\"error\":\"invalid JSON\"}");
    /* 1000-deep: allowed, converted */
    n = (size_t)sprintf(buf, "{\"d\":");
    for (int i = 0; i < 1000; i++)
        buf[n++] = '[';
    for (int i = 0; i < 1000; i++)
        buf[n++] = ']';
    buf[n++] = '}';
    assert_int_equal(post_body(buf, n), 200);
    /* a 100,000-element array within the 1 MiB limit, counted by the Lua handler */
    n = (size_t)sprintf(buf, "{\"n\":100000,\"a\":[");
    for (int i = 0; i < 100000; i++)
        n += (size_t)sprintf(buf + n, "%s%d", i ? "," : "", i % 10);
    n += (size_t)sprintf(buf + n, "]}");
    assert_int_equal(post_body(buf, n), 200);
    /* 20,000 keys */
    n = (size_t)sprintf(buf, "{");
    for (int i = 0; i < 20000; i++)
        n += (size_t)sprintf(buf + n, "%s\"k%d\":%d", i ? "," : "", i, i);
    buf[n++] = '}';
    assert_int_equal(post_body(buf, n), 200);
    const char *bad[] = {
        "{\"i\":18446744073709551616}", /* beyond 64 bits */
        "{\"i\":-9223372036854775809}",
        "{\"f\":1e999}",        /* a real that overflows */
        "{\"s\":\"\xff\xfe\"}", /* invalid UTF-8 */
        "{\"s\":\"\xc0\xaf\"}", /* overlong */
        "{\"s\":\"\\ud800\"}",  /* a lone surrogate */
        "{\"s\":\"\\udc00\\ud800\"}",
        "{\"s\":\"a\\u0000b\"}", /* NUL inside a string */
        "{\"k\":1,\"k\":2}",     /* duplicate key */
        "{\"a\":[1,2,]}",
        "{'a':1}",
        "{\"a\":NaN}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (post_body(bad[i], strlen(bad[i])) != 400) fail_msg("accepted: %s", bad[i]);
        assert_string_equal(r.body, "{\"error\":\"invalid JSON\"}");
    }
    /* the extremes that are valid convert exactly */
    {
        const char *edge = "{\"i\":9223372036854775807,\"j\":-9223372036854775808,"
                           "\"e\":\"\\ud83d\\ude00\"}";
        assert_int_equal(post_body(edge, strlen(edge)), 200);
    }
    assert_alive();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(slow_clients_do_not_starve_a_signed_request),
        cmocka_unit_test(a_dripped_header_is_cut_at_the_deadline),
        cmocka_unit_test(adversarial_http),
        cmocka_unit_test(adversarial_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
