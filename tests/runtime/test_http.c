/* Every row of docs/security.md's "What it answers" over plain HTTP, against the real server: one
 * server for the group, started on a free port; after each bad request the server must still
 * answer. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#define MAX_BODY 4096
#define TIMEOUT_MS 1000

static struct wh_proc srv;
static char dir[256];
static struct resp r;

static int setup(void **state)
{
    char manifest[2048], path[512];
    char *env[] = {"WH_TEST_SECRET=" TEST_SECRET, NULL};
    (void)state;
    tmpdir_make(dir);
    file_write(dir, "rotated.key", TEST_SECRET2 "\n");
    snprintf(manifest, sizeof manifest,
             "server:\n"
             "  listen: [http://127.0.0.1:0]\n"
             "  threads: 8\n"
             "  max_body_bytes: %d\n"
             "  request_timeout_ms: %d\n"
             "secrets:\n"
             "  - env: WH_TEST_SECRET\n"
             "  - file: rotated.key\n"
             "hooks:\n"
             "  incoming_message: []\n",
             MAX_BODY, TIMEOUT_MS);
    file_write(dir, "hooks.yaml", manifest);
    snprintf(path, sizeof path, "%s/hooks.yaml", dir);
    return proc_start(&srv, path, env, 1);
}

static int teardown(void **state)
{
    (void)state;
    return proc_stop(&srv) == 0 ? 0 : -1;
}

static void assert_alive(void)
{
    struct resp a;
    char url[400];
    snprintf(url, sizeof url, "%s?challenge=alive", srv.http);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &a), 200);
    assert_string_equal(a.body, "{\"challenge\":\"alive\"}");
}

static void assert_json_error(int status, const char *body)
{
    assert_int_equal(r.status, status);
    assert_string_equal(r.body, body);
    assert_non_null(strcasestr(r.headers, "Content-Type: application/json"));
}

static long get(const char *query)
{
    char url[4096];
    snprintf(url, sizeof url, "%s%s", srv.http, query);
    return http_request("GET", url, NULL, NULL, 0, NULL, &r);
}

/* --- GET ------------------------------------------------------------------------------- */

static void challenge_is_echoed(void **state)
{
    (void)state;
    assert_int_equal(get("?challenge=abc123"), 200);
    assert_string_equal(r.body, "{\"challenge\":\"abc123\"}");
    assert_non_null(strcasestr(r.headers, "Content-Type: application/json"));
    assert_non_null(strcasestr(r.headers, "X-Content-Type-Options: nosniff"));
    assert_null(strcasestr(r.headers, "Access-Control-Allow-Origin"));
}

static void challenge_is_escaped(void **state)
{
    (void)state;
    assert_int_equal(get("?challenge=%3C%2Fscript%3E%22%5C%0A%01"), 200);
    assert_string_equal(r.body, "{\"challenge\":\"<\\/script>\\\"\\\\\\n\\u0001\"}");
    assert_int_equal(get("?challenge=%C3%A9t%C3%A9"), 200);
    assert_string_equal(r.body, "{\"challenge\":\"\xC3\xA9t\xC3\xA9\"}");
}

static void challenge_refusals(void **state)
{
    char q[1200] = "?challenge=";
    (void)state;
    assert_int_equal(get(""), 400);
    assert_json_error(400, "{\"error\":\"missing challenge\"}");
    assert_int_equal(get("?challenge="), 400);
    assert_json_error(400, "{\"error\":\"empty challenge\"}");
    assert_int_equal(get("?challenge=%FF%FE"), 400);
    assert_json_error(400, "{\"error\":\"challenge is not valid UTF-8\"}");
    memset(q + 11, 'a', 1024);
    q[11 + 1024] = '\0';
    assert_int_equal(get(q), 200);
    strcat(q, "a");
    assert_int_equal(get(q), 400);
    assert_json_error(400, "{\"error\":\"challenge longer than 1024 bytes\"}");
    assert_alive();
}

/* --- routing and methods ------------------------------------------------------------------ */

static void other_paths_are_404(void **state)
{
    char url[400];
    const char *paths[] = {"/", "/other", "/webhook/x", "/webhook/", "/webhookx", "/Webhook"};
    (void)state;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        snprintf(url, sizeof url, "http://127.0.0.1:%d%s?challenge=x", srv.http_port, paths[i]);
        assert_int_equal(http_request("GET", url, NULL, NULL, 0, NULL, &r), 404);
        assert_json_error(404, "{\"error\":\"not found\"}");
    }
    assert_alive();
}

static void other_methods_are_405(void **state)
{
    const char *methods[] = {"PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
    (void)state;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        assert_int_equal(http_request(methods[i], srv.http, NULL, NULL, 0, NULL, &r), 405);
        assert_non_null(strcasestr(r.headers, "Allow: GET, POST"));
        if (strcmp(methods[i], "HEAD") != 0)
            assert_json_error(405, "{\"error\":\"method not allowed\"}");
    }
    assert_alive();
}

/* --- signed POST ------------------------------------------------------------------------------ */

static const char *EVENT = "{\"data\":{\"message_id\":\"m1\",\"text\":\"hi\"}}";

static void signed_post_is_accepted(void **state)
{
    (void)state;
    assert_int_equal(post_signed(srv.http, "incoming_message", EVENT, NULL, &r), 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    /* no handler registered for this type: still 200 */
    assert_int_equal(post_signed(srv.http, "status_update", EVENT, NULL, &r), 200);
}

static long post(const char *sig, const char *event, const char *ctype, const char *body)
{
    char h1[200], h2[200], h3[200];
    const char *h[4] = {NULL};
    int n = 0;
    if (sig) {
        snprintf(h1, sizeof h1, "X-Wappcloud-Signature: %s", sig);
        h[n++] = h1;
    }
    if (event) {
        snprintf(h2, sizeof h2, "X-Wappcloud-Event: %s", event);
        h[n++] = h2;
    }
    if (ctype) {
        snprintf(h3, sizeof h3, "Content-Type: %s", ctype);
        h[n++] = h3;
    }
    return http_request("POST", srv.http, h, body, (long)strlen(body), NULL, &r);
}

static void every_secret_is_accepted(void **state)
{
    char sig[80];
    (void)state;
    sign(TEST_SECRET2, EVENT, strlen(EVENT), sig);
    assert_int_equal(post(sig, "incoming_message", "application/json", EVENT), 200);
    sign(TEST_SECRET, EVENT, strlen(EVENT), sig);
    assert_int_equal(post(sig, "incoming_message", "application/json", EVENT), 200);
    sign("some other secret", EVENT, strlen(EVENT), sig);
    assert_int_equal(post(sig, "incoming_message", "application/json", EVENT), 401);
}

static void upper_case_hex_is_accepted(void **state)
{
    char sig[80];
    (void)state;
    sign(TEST_SECRET, EVENT, strlen(EVENT), sig);
    for (char *p = sig + 7; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p -= 32;
    assert_int_equal(post(sig, "incoming_message", "application/json", EVENT), 200);
}

static void every_signature_failure_is_the_same_401(void **state)
{
    char good[80], bad[100];
    const char *h2[5];
    char s1[120], s2[120];
    (void)state;
    sign(TEST_SECRET, EVENT, strlen(EVENT), good);
    const char *sigs[] = {
        NULL,         /* missing */
        good + 7,     /* no prefix */
        "sha256=",    /* empty */
        "sha256=abc", /* short */
        "sha1=757107ea0eb2509fc211221cce984b8a37570b6d",
    };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        assert_int_equal(post(sigs[i], "incoming_message", "application/json", EVENT), 401);
        assert_json_error(401, "{\"error\":\"invalid signature\"}");
    }
    /* 63 and 65 hex digits */
    snprintf(bad, sizeof bad, "%.70s", good);
    assert_int_equal(post(bad, "incoming_message", "application/json", EVENT), 401);
    snprintf(bad, sizeof bad, "%s0", good);
    assert_int_equal(post(bad, "incoming_message", "application/json", EVENT), 401);
    /* right signature, body changed by one byte */
    assert_int_equal(post(good, "incoming_message", "application/json",
                          "{\"data\":{\"message_id\":\"m2\",\"text\":\"hi\"}}"),
                     401);
    assert_json_error(401, "{\"error\":\"invalid signature\"}");
    /* the header twice, even with the right value twice */
    snprintf(s1, sizeof s1, "X-Wappcloud-Signature: %s", good);
    snprintf(s2, sizeof s2, "X-Wappcloud-Signature: %s", good);
    h2[0] = s1;
    h2[1] = s2;
    h2[2] = "X-Wappcloud-Event: incoming_message";
    h2[3] = "Content-Type: application/json";
    h2[4] = NULL;
    assert_int_equal(http_request("POST", srv.http, h2, EVENT, (long)strlen(EVENT), NULL, &r), 401);
    assert_json_error(401, "{\"error\":\"invalid signature\"}");
    /* the expected value never leaks */
    assert_null(strstr(r.body, good + 7));
    assert_alive();
}

static void content_type_is_checked_after_the_signature(void **state)
{
    char sig[80];
    (void)state;
    sign(TEST_SECRET, EVENT, strlen(EVENT), sig);
    assert_int_equal(post(sig, "incoming_message", "text/plain", EVENT), 415);
    assert_json_error(415, "{\"error\":\"Content-Type must be application/json\"}");
    assert_int_equal(post(sig, "incoming_message", NULL, EVENT), 415);
    assert_int_equal(post(sig, "incoming_message", "application/json; charset=utf-8", EVENT), 200);
    /* unsigned: the signature answers first */
    assert_int_equal(post(NULL, "incoming_message", "text/plain", EVENT), 401);
}

static void event_header_is_checked(void **state)
{
    char sig[80], long_type[80];
    (void)state;
    sign(TEST_SECRET, EVENT, strlen(EVENT), sig);
    assert_int_equal(post(sig, NULL, "application/json", EVENT), 400);
    assert_json_error(400, "{\"error\":\"missing or repeated event type header\"}");
    assert_int_equal(post(sig, "bad type", "application/json", EVENT), 400);
    assert_json_error(400, "{\"error\":\"invalid event type\"}");
    assert_int_equal(post(sig, "a/b", "application/json", EVENT), 400);
    memset(long_type, 'a', 65);
    long_type[65] = '\0';
    assert_int_equal(post(sig, long_type, "application/json", EVENT), 400);
    long_type[64] = '\0';
    assert_int_equal(post(sig, long_type, "application/json", EVENT), 200);
    assert_int_equal(post(sig, "a.b:c-d_E", "application/json", EVENT), 200);
    /* wrong content type and no event: 415 comes first */
    assert_int_equal(post(sig, NULL, "text/plain", EVENT), 415);
}

static void body_must_be_a_json_object(void **state)
{
    const char *bodies[] = {"",
                            "not json",
                            "[1,2]",
                            "\"s\"",
                            "42",
                            "null",
                            "{\"a\":1,\"a\":2}",
                            "{\"a\":1} trailing",
                            "{\"a\":"};
    const char *want[] = {"invalid JSON",
                          "invalid JSON",
                          "body is not a JSON object",
                          "body is not a JSON object",
                          "body is not a JSON object",
                          "body is not a JSON object",
                          "invalid JSON",
                          "invalid JSON",
                          "invalid JSON"};
    char sig[80], expect[100];
    (void)state;
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        sign(TEST_SECRET, bodies[i], strlen(bodies[i]), sig);
        assert_int_equal(post(sig, "incoming_message", "application/json", bodies[i]), 400);
        snprintf(expect, sizeof expect, "{\"error\":\"%s\"}", want[i]);
        assert_json_error(400, expect);
    }
    assert_alive();
}

/* --- body size, framing, timeouts (raw sockets) ------------------------------------------------
 */

static void oversized_content_length_is_413_without_reading(void **state)
{
    char req[512], out[4096];
    bool closed;
    long long t0 = now_ms();
    size_t n;
    (void)state;
    /* announce 100 MB, send nothing: the answer must come at once and close */
    snprintf(req, sizeof req,
             "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n"
             "Content-Type: application/json\r\n\r\n");
    n = raw_exchange(srv.http_port, req, strlen(req), out, sizeof out, 5000, &closed);
    assert_true(n > 0);
    assert_int_equal(raw_status(out), 413);
    assert_non_null(strstr(out, "{\"error\":\"body larger than server.max_body_bytes\"}"));
    assert_true(closed);
    assert_true(now_ms() - t0 < TIMEOUT_MS / 2);
    /* one byte over the limit, unsigned: 413, not 401 */
    snprintf(req, sizeof req, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
             MAX_BODY + 1);
    raw_exchange(srv.http_port, req, strlen(req), out, sizeof out, 5000, &closed);
    assert_int_equal(raw_status(out), 413);
    assert_alive();
}

static void body_at_the_limit_is_accepted(void **state)
{
    char body[MAX_BODY + 1];
    (void)state;
    memset(body, ' ', MAX_BODY);
    body[0] = '{';
    body[MAX_BODY - 1] = '}';
    body[MAX_BODY] = '\0';
    assert_int_equal(post_signed(srv.http, "incoming_message", body, NULL, &r), 200);
}

static void chunked_body_past_the_limit_is_413(void **state)
{
    char chunk[1100], out[4096];
    int fd = raw_connect(srv.http_port);
    bool closed;
    const char *head = "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       "Content-Type: application/json\r\n\r\n";
    (void)state;
    assert_int_equal(send(fd, head, strlen(head), MSG_NOSIGNAL), (ssize_t)strlen(head));
    memset(chunk, 'a', sizeof chunk);
    /* 5 chunks of 1 KiB: past the 4 KiB limit; the server stops reading and answers */
    for (int i = 0; i < 5; i++) {
        char size[16];
        snprintf(size, sizeof size, "400\r\n");
        if (send(fd, size, strlen(size), MSG_NOSIGNAL) < 0 ||
            send(fd, chunk, 1024, MSG_NOSIGNAL) < 0 || send(fd, "\r\n", 2, MSG_NOSIGNAL) < 0)
            break; /* the server may already have answered and closed */
    }
    raw_read(fd, out, sizeof out, 5000, &closed);
    close(fd);
    assert_int_equal(raw_status(out), 413);
    assert_true(closed);
    assert_alive();
}

static void chunked_body_within_the_limit_is_accepted(void **state)
{
    char sig[80], req[2048], out[4096];
    bool closed;
    const char *body = "{\"chunked\":true}";
    (void)state;
    sign(TEST_SECRET, body, strlen(body), sig);
    snprintf(req, sizeof req,
             "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
             "Content-Type: application/json\r\nX-Wappcloud-Event: incoming_message\r\n"
             "X-Wappcloud-Signature: %s\r\nConnection: close\r\n\r\n"
             "6\r\n{\"chun\r\n%zx\r\n%s\r\n0\r\n\r\n",
             sig, strlen(body) - 6, body + 6);
    raw_exchange(srv.http_port, req, strlen(req), out, sizeof out, 5000, &closed);
    assert_int_equal(raw_status(out), 200);
    assert_non_null(strstr(out, "{\"status\":\"ok\"}"));
}

static void smuggling_shapes_are_400_and_closed(void **state)
{
    char out[4096];
    bool closed;
    const char *reqs[] = {
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Content-Length: 5\r\n\r\n0\r\n\r\n",
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    };
    (void)state;
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        raw_exchange(srv.http_port, reqs[i], strlen(reqs[i]), out, sizeof out, 5000, &closed);
        if (raw_status(out) != 400 || !closed) fail_msg("request %zu: got %s", i, out);
        assert_non_null(strstr(out, "Content-Type: application/json"));
    }
    assert_alive();
}

static void dripped_body_is_cut_at_the_deadline(void **state)
{
    char out[4096];
    int fd = raw_connect(srv.http_port);
    bool closed = false;
    long long t0 = now_ms();
    const char *head = "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                       "Content-Type: application/json\r\n\r\n{";
    size_t n = 0;
    (void)state;
    assert_true(send(fd, head, strlen(head), MSG_NOSIGNAL) > 0);
    /* one byte every 100 ms: each read succeeds, the whole never completes */
    while (now_ms() - t0 < 4 * TIMEOUT_MS) {
        n = raw_read(fd, out, sizeof out, 100, &closed);
        if (n > 0 || closed) break;
        if (send(fd, " ", 1, MSG_NOSIGNAL) < 0) break;
    }
    if (!n && !closed) n = raw_read(fd, out, sizeof out, 1000, &closed);
    close(fd);
    assert_int_equal(raw_status(out), 408);
    assert_true(now_ms() - t0 <= 2 * TIMEOUT_MS + 200);
    assert_alive();
}

static void truncated_body_is_refused(void **state)
{
    char out[4096];
    bool closed;
    long long t0 = now_ms();
    int fd = raw_connect(srv.http_port);
    const char *req = "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":";
    (void)state;
    assert_true(send(fd, req, strlen(req), MSG_NOSIGNAL) > 0);
    shutdown(fd, SHUT_WR); /* the client gives up half-way */
    raw_read(fd, out, sizeof out, 5000, &closed);
    close(fd);
    assert_int_equal(raw_status(out), 400);
    assert_non_null(strstr(out, "incomplete or malformed request body"));
    assert_true(now_ms() - t0 < TIMEOUT_MS + 500);
}

static void keep_alive_survives_errors(void **state)
{
    /* two requests on one connection: a 401 and then a 200 */
    char sig[80], req[2048], out[8192];
    bool closed;
    const char *body = "{}";
    (void)state;
    sign(TEST_SECRET, body, 2, sig);
    snprintf(req, sizeof req,
             "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
             "Content-Type: application/json\r\nX-Wappcloud-Event: e\r\n"
             "X-Wappcloud-Signature: sha256=00\r\n\r\n{}"
             "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
             "Content-Type: application/json\r\nX-Wappcloud-Event: e\r\n"
             "X-Wappcloud-Signature: %s\r\nConnection: close\r\n\r\n{}",
             sig);
    raw_exchange(srv.http_port, req, strlen(req), out, sizeof out, 5000, &closed);
    assert_int_equal(raw_status(out), 401);
    assert_non_null(strstr(out, "HTTP/1.1 200 OK"));
}

static void expect_100_continue_is_answered(void **state)
{
    char sig[80], req[1024], out[4096];
    const char *body = "{\"x\":1}";
    int fd = raw_connect(srv.http_port);
    bool closed;
    (void)state;
    sign(TEST_SECRET, body, strlen(body), sig);
    snprintf(req, sizeof req,
             "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\nExpect: 100-continue\r\n"
             "Content-Type: application/json\r\nX-Wappcloud-Event: e\r\n"
             "X-Wappcloud-Signature: %s\r\nConnection: close\r\n\r\n",
             strlen(body), sig);
    assert_true(send(fd, req, strlen(req), MSG_NOSIGNAL) > 0);
    raw_read_until(fd, out, sizeof out, 2000, "\r\n\r\n");
    assert_non_null(strstr(out, "HTTP/1.1 100 Continue"));
    assert_true(send(fd, body, strlen(body), MSG_NOSIGNAL) > 0);
    raw_read(fd, out, sizeof out, 5000, &closed);
    close(fd);
    assert_int_equal(raw_status(out), 200);
}

static void malformed_requests_get_json_errors(void **state)
{
    char out[4096];
    bool closed;
    const char *reqs[] = {"GARBAGE\r\n\r\n", "GET /webhook HTTP/9.9\r\n\r\n"};
    (void)state;
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        raw_exchange(srv.http_port, reqs[i], strlen(reqs[i]), out, sizeof out, 5000, &closed);
        assert_true(raw_status(out) >= 400 && raw_status(out) < 600);
        assert_non_null(strstr(out, "Content-Type: application/json"));
        assert_non_null(strstr(out, "{\"error\":"));
    }
    assert_alive();
}

/* --- framing as RFC 9112 says (civetweb 1.15 accepts each of these) --------------------------- */

/* Sends one raw request followed by a second, pipelined GET: the first must be answered with
 * `want` and the connection closed, so the second is never read (a smuggled request). */
static void refused_and_closed(const char *what, const char *head, int want)
{
    char req[16384], out[16384];
    bool closed;
    int n = snprintf(req, sizeof req,
                     "%sGET /webhook?challenge=smuggled HTTP/1.1\r\nHost: x\r\n\r\n", head);

    raw_exchange(srv.http_port, req, (size_t)n, out, sizeof out, 5000, &closed);
    if (raw_status(out) != want || !closed || strstr(out, "smuggled"))
        fail_msg("%s: expected %d and a close, got%s:\n%s", what, want, closed ? "" : " (open)",
                 out);
    assert_non_null(strstr(out, "Content-Type: application/json"));
    assert_non_null(strstr(out, "{\"error\":"));
}

static void content_length_is_1_digit_or_400(void **state)
{
    const char *values[] = {"+16", "16abc", "0x10", "-0", "0 1", "1,1", "16.0", "1\t2"};
    char head[512];
    (void)state;
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        snprintf(head, sizeof head,
                 "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n"
                 "{\"a\":1}",
                 values[i]);
        refused_and_closed(values[i], head, 400);
    }
    refused_and_closed("space before the colon",
                       "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length : 16\r\n\r\n", 400);
    refused_and_closed("space before the colon, GET",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost : x\r\n\r\n", 400);
    refused_and_closed("not a token",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\nX(y): 1\r\n\r\n", 400);
    /* a plain length, with trailing whitespace (OWS), is fine */
    {
        char out[4096];
        bool closed;
        const char *ok =
            "GET /webhook?challenge=ok HTTP/1.1\r\nHost: x\r\nContent-Length: 0 \r\n\r\n";
        raw_exchange(srv.http_port, ok, strlen(ok), out, sizeof out, 5000, &closed);
        assert_int_equal(raw_status(out), 200);
    }
    assert_alive();
}

static void folded_or_whitespace_led_lines_are_400(void **state)
{
    (void)state;
    refused_and_closed("obs-fold (space)",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
                       400);
    refused_and_closed("obs-fold (tab)",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tfolded\r\n\r\n",
                       400);
    refused_and_closed("obs-fold hiding a header",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n",
                       400);
    refused_and_closed("whitespace-led first line",
                       "GET /webhook?challenge=a HTTP/1.1\r\n  Host: x\r\n\r\n", 400);
    refused_and_closed("a CR-led line",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\n\r X: y\r\n\r\n", 400);
    refused_and_closed("bare LF", "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
                       400);
    assert_alive();
}

/* civetweb keeps 64 header lines and drops the rest without a word: a Transfer-Encoding or a
 * second signature placed after them was never seen, and the request handled without them. */
static void headers_past_the_parsers_limit_are_431(void **state)
{
    char head[8192], sig[80];
    size_t n;
    (void)state;
    sign(TEST_SECRET, "{}", 2, sig);
    n = (size_t)snprintf(head, sizeof head,
                         "POST /webhook HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/json\r\nX-Wappcloud-Event: t\r\n"
                         "X-Wappcloud-Signature: %s\r\nContent-Length: 2\r\n",
                         sig);
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(head + n, sizeof head - n, "X-Pad-%d: v\r\n", i);
    snprintf(head + n, sizeof head - n, "X-Wappcloud-Signature: sha256=%064d\r\n\r\n{}", 0);
    refused_and_closed("a second signature past the 64th line", head, 431);
    /* 64 lines in all are read: the request is handled (a 200 for a signed, valid POST) */
    {
        char out[4096];
        bool closed;
        n = (size_t)snprintf(head, sizeof head,
                             "POST /webhook HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nX-Wappcloud-Event: t\r\n"
                             "X-Wappcloud-Signature: %s\r\nContent-Length: 2\r\n",
                             sig);
        for (int i = 0; i < 59; i++)
            n += (size_t)snprintf(head + n, sizeof head - n, "X-Pad-%d: v\r\n", i);
        snprintf(head + n, sizeof head - n, "\r\n{}");
        raw_exchange(srv.http_port, head, strlen(head), out, sizeof out, 5000, &closed);
        if (raw_status(out) != 200) fail_msg("64 header lines: %s", out);
    }
    assert_alive();
}

static void host_must_be_there_once(void **state)
{
    char out[4096];
    bool closed;
    const char *ten = "GET /webhook?challenge=ten HTTP/1.0\r\n\r\n";
    (void)state;
    refused_and_closed("no Host", "GET /webhook?challenge=a HTTP/1.1\r\nX: 1\r\n\r\n", 400);
    refused_and_closed("no header at all", "GET /webhook?challenge=a HTTP/1.1\r\n\r\n", 400);
    refused_and_closed("two Hosts",
                       "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n", 400);
    refused_and_closed("two Hosts, HTTP/1.0",
                       "GET /webhook?challenge=a HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n", 400);
    raw_exchange(srv.http_port, ten, strlen(ten), out, sizeof out, 5000, &closed);
    assert_int_equal(raw_status(out), 200); /* HTTP/1.0 needs none */
    assert_alive();
}

/* A response to HEAD carries no body: its bytes would be read as the next response's start. */
static void head_is_answered_without_a_body(void **state)
{
    char out[8192];
    const char *two = "HEAD /webhook HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /webhook?challenge=next HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *second;
    int fd = raw_connect(srv.http_port);
    (void)state;
    assert_true(write(fd, two, strlen(two)) == (ssize_t)strlen(two));
    raw_read_until(fd, out, sizeof out, 5000, "{\"challenge\":\"next\"}");
    close(fd);
    assert_int_equal(raw_status(out), 405);
    assert_non_null(strstr(out, "Allow: GET, POST"));
    /* the head of the second response right after the first's blank line */
    second = strstr(out, "\r\n\r\n");
    assert_non_null(second);
    if (strncmp(second + 4, "HTTP/1.1 200 ", 13) != 0)
        fail_msg("after the HEAD response: %s", second + 4);
    assert_null(strstr(out, "method not allowed")); /* no body */
    /* the same on other paths */
    fd = raw_connect(srv.http_port);
    two = "HEAD /other HTTP/1.1\r\nHost: x\r\n\r\nGET /webhook?challenge=next HTTP/1.1\r\nHost: "
          "x\r\n\r\n";
    assert_true(write(fd, two, strlen(two)) == (ssize_t)strlen(two));
    raw_read_until(fd, out, sizeof out, 5000, "{\"challenge\":\"next\"}");
    close(fd);
    assert_int_equal(raw_status(out), 404);
    second = strstr(out, "\r\n\r\n");
    assert_true(second && strncmp(second + 4, "HTTP/1.1 200 ", 13) == 0);
}

/* The path is compared as sent: decoded or cleaned forms of another path are not the endpoint. */
static void paths_are_compared_as_sent(void **state)
{
    const char *targets[] = {"/webhook%00/anything", "//webhook",     "/web%68ook", "/webhook%3f",
                             "/./webhook",           "/x/../webhook", "/webhook%00"};
    char req[512], out[4096];
    bool closed;
    (void)state;
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        snprintf(req, sizeof req, "GET %s?challenge=a HTTP/1.1\r\nHost: x\r\n\r\n", targets[i]);
        raw_exchange(srv.http_port, req, strlen(req), out, sizeof out, 5000, &closed);
        if (raw_status(out) != 404) fail_msg("%s: %s", targets[i], out);
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", targets[i]);
        raw_exchange(srv.http_port, req, strlen(req), out, sizeof out, 5000, &closed);
        if (raw_status(out) != 404) fail_msg("%s without a query: %s", targets[i], out);
    }
    assert_alive();
}

/* Every log line is JSON and UTF-8, whatever bytes a client sent (a collector parses them). */
static void log_lines_stay_json_whatever_the_bytes(void **state)
{
    char out[4096], *log, *line, *save = NULL;
    bool closed;
    size_t mark = proc_log_mark(&srv), lines = 0;
    const char *reqs[] = {
        "GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /\xff\xfe\xc0\xaf HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /%ed%a0%80%22%5c HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /webhook?challenge=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Wappcloud-Event: \xff\xfe\r\nContent-Length: "
        "2\r\n\r\n{}",
    };
    (void)state;
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++)
        raw_exchange(srv.http_port, reqs[i], strlen(reqs[i]), out, sizeof out, 5000, &closed);
    assert_true(proc_wait_log_since(&srv, mark, "\"path\":\"/\\\\xff\\\\xfe\"", NULL, 5000));
    /* each request's line (they are logged by several threads, in any order) */
    for (int tries = 0; tries < 100; tries++) {
        size_t n = 0;
        log = proc_log(&srv);
        for (const char *p = log + mark; (p = strstr(p, "\"msg\":\"request\"")); p++)
            n++;
        free(log);
        if (n >= sizeof reqs / sizeof reqs[0]) break;
        proc_wait_log_since(&srv, proc_log_mark(&srv), "never logged", NULL, 50);
    }
    log = proc_log(&srv);
    for (line = strtok_r(log + mark, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t e;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &e); /* jansson: UTF-8 enforced */
        if (!j) fail_msg("not a JSON line (%s): %s", e.text, line);
        json_decref(j);
        lines++;
    }
    free(log);
    assert_true(lines >= sizeof reqs / sizeof reqs[0]);
}

static void secrets_never_reach_the_log(void **state)
{
    char *log;
    (void)state;
    assert_true(proc_wait_log(&srv, "signature check failed", NULL, 5000)); /* the log is there */
    log = proc_log(&srv);
    assert_non_null(strstr(log, "\"msg\":\"request\""));
    assert_null(strstr(log, TEST_SECRET));
    assert_null(strstr(log, TEST_SECRET2));
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(challenge_is_echoed),
        cmocka_unit_test(challenge_is_escaped),
        cmocka_unit_test(challenge_refusals),
        cmocka_unit_test(other_paths_are_404),
        cmocka_unit_test(other_methods_are_405),
        cmocka_unit_test(signed_post_is_accepted),
        cmocka_unit_test(every_secret_is_accepted),
        cmocka_unit_test(upper_case_hex_is_accepted),
        cmocka_unit_test(every_signature_failure_is_the_same_401),
        cmocka_unit_test(content_type_is_checked_after_the_signature),
        cmocka_unit_test(event_header_is_checked),
        cmocka_unit_test(body_must_be_a_json_object),
        cmocka_unit_test(oversized_content_length_is_413_without_reading),
        cmocka_unit_test(body_at_the_limit_is_accepted),
        cmocka_unit_test(chunked_body_past_the_limit_is_413),
        cmocka_unit_test(chunked_body_within_the_limit_is_accepted),
        cmocka_unit_test(smuggling_shapes_are_400_and_closed),
        cmocka_unit_test(dripped_body_is_cut_at_the_deadline),
        cmocka_unit_test(truncated_body_is_refused),
        cmocka_unit_test(keep_alive_survives_errors),
        cmocka_unit_test(expect_100_continue_is_answered),
        cmocka_unit_test(malformed_requests_get_json_errors),
        cmocka_unit_test(content_length_is_1_digit_or_400),
        cmocka_unit_test(folded_or_whitespace_led_lines_are_400),
        cmocka_unit_test(headers_past_the_parsers_limit_are_431),
        cmocka_unit_test(host_must_be_there_once),
        cmocka_unit_test(head_is_answered_without_a_body),
        cmocka_unit_test(paths_are_compared_as_sent),
        cmocka_unit_test(log_lines_stay_json_whatever_the_bytes),
        cmocka_unit_test(secrets_never_reach_the_log),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
