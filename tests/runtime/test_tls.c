/* HTTPS on Debian's civetweb: handshake with certificate verification, GET, signed POST, many
 * parallel clients, TLS below 1.2 refused, min_version "1.3" honoured. A regression in the
 * compatibility shims (core/compat) crashes the server here. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

static char dir[256], ca[512];

static int start(struct wh_proc *p, const char *name, const char *min_version)
{
    char manifest[2048], path[512];
    snprintf(manifest, sizeof manifest,
             "server:\n"
             "  listen: [https://127.0.0.1:0, http://127.0.0.1:0]\n"
             "  tls:\n"
             "    certificate: server.pem\n"
             "    min_version: \"%s\"\n"
             "  threads: 24\n" /* max_inflight (3/4 of it) above the 16 clients */
             "secrets:\n"
             "  - value: \"" TEST_SECRET "\"\n"
             "hooks: {}\n",
             min_version);
    file_write(dir, name, manifest);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return proc_start(p, path, NULL, 2);
}

static struct wh_proc srv12;

static int setup(void **state)
{
    char pem[512];
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    tmpdir_make(dir);
    snprintf(pem, sizeof pem, "%s/server.pem", dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    cert_make(pem, ca);
    return start(&srv12, "hooks.yaml", "1.2");
}

static int teardown(void **state)
{
    (void)state;
    return proc_stop(&srv12) == 0 ? 0 : -1;
}

static void get_over_https(void **state)
{
    struct resp r;
    char url[400];
    (void)state;
    snprintf(url, sizeof url, "%s?challenge=tls", srv12.https);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, ca, &r), 200);
    assert_string_equal(r.body, "{\"challenge\":\"tls\"}");
}

static void signed_post_over_https(void **state)
{
    struct resp r;
    (void)state;
    assert_int_equal(post_signed(srv12.https, "incoming_message", "{\"a\":1}", ca, &r), 200);
    assert_string_equal(r.body, "{\"status\":\"ok\"}");
    r.status = 0;
    assert_int_equal(post_signed(srv12.https, "incoming_message", "{\"a\":1}", NULL, &r), 0);
    /* without trusting the certificate the client refuses: verification is real */
    assert_int_equal(r.curl_code, CURLE_PEER_FAILED_VERIFICATION);
}

#define CLIENTS 16
#define PER_CLIENT 25

static long client_main(long client)
{
    long ok = 0;
    (void)client;
    for (int i = 0; i < PER_CLIENT; i++) {
        struct resp *r = malloc(sizeof *r);
        /* a fresh connection each time: many full handshakes at once */
        if (post_signed(srv12.https, "incoming_message", "{\"n\":1}", ca, r) == 200)
            ok++;
        free(r);
    }
    return ok;
}

static void many_parallel_clients(void **state)
{
    (void)state;
    assert_int_equal(run_parallel(CLIENTS, client_main), CLIENTS * PER_CLIENT);
}

/* Handshakes with exactly [min, max]; returns the negotiated version, or 0 and the
 * OpenSSL reason of the failure in *reason. */
static int handshake(int port, int min, int max, int *reason)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl;
    int fd, version = 0;

    *reason = 0;
    SSL_CTX_set_security_level(ctx, 0); /* let the client really offer old versions */
    SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0");
    SSL_CTX_set_min_proto_version(ctx, min);
    SSL_CTX_set_max_proto_version(ctx, max);
    fd = raw_connect(port);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    ERR_clear_error();
    if (SSL_connect(ssl) == 1) {
        char out[1024];
        const char *req = "GET /webhook?challenge=v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        int n;
        version = SSL_version(ssl);
        /* the connection really serves: a request through it answers */
        SSL_write(ssl, req, (int)strlen(req));
        n = SSL_read(ssl, out, sizeof out - 1);
        out[n > 0 ? n : 0] = '\0';
        if (raw_status(out) != 200)
            version = -1;
    } else {
        *reason = ERR_GET_REASON(ERR_peek_error());
    }
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    return version;
}

static void old_tls_is_refused(void **state)
{
    int reason;
    (void)state;
    assert_int_equal(handshake(srv12.https_port, TLS1_2_VERSION, TLS1_2_VERSION, &reason),
                     TLS1_2_VERSION);
    assert_int_equal(handshake(srv12.https_port, TLS1_3_VERSION, TLS1_3_VERSION, &reason),
                     TLS1_3_VERSION);
    /* the client offers TLS 1.1 and 1.0; the server answers with a protocol_version alert */
    assert_int_equal(handshake(srv12.https_port, TLS1_1_VERSION, TLS1_1_VERSION, &reason), 0);
    assert_int_equal(reason, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION);
    assert_int_equal(handshake(srv12.https_port, TLS1_VERSION, TLS1_VERSION, &reason), 0);
    assert_int_equal(reason, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION);
}

static void min_version_1_3_is_honoured(void **state)
{
    struct wh_proc srv13;
    int reason;
    (void)state;
    assert_int_equal(start(&srv13, "hooks13.yaml", "1.3"), 0);
    assert_int_equal(handshake(srv13.https_port, TLS1_3_VERSION, TLS1_3_VERSION, &reason),
                     TLS1_3_VERSION);
    assert_int_equal(handshake(srv13.https_port, TLS1_2_VERSION, TLS1_2_VERSION, &reason), 0);
    assert_int_equal(reason, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION);
    assert_int_equal(proc_stop(&srv13), 0);
}

static void plain_http_on_the_tls_port_is_harmless(void **state)
{
    char out[1024];
    bool closed;
    struct resp r;
    char url[400];
    const char *req = "GET /webhook?challenge=x HTTP/1.1\r\nHost: x\r\n\r\n";
    (void)state;
    raw_exchange(srv12.https_port, req, strlen(req), out, sizeof out, 3000, &closed);
    assert_null(strstr(out, "{\"challenge\":\"x\"}"));
    snprintf(url, sizeof url, "%s?challenge=after", srv12.https);
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, ca, &r), 200);
}

/* A handshake that starts and stalls holds a worker no longer than the header deadline
 * (server.header_timeout_ms, 2 s by default): civetweb bounds SSL_accept by it. */
static void a_stalled_handshake_is_cut_at_the_header_deadline(void **state)
{
    char out[64];
    bool closed;
    long long t0, took;
    int fd = raw_connect(srv12.https_port);
    (void)state;
    /* a handshake record announcing 256 bytes, of which none follow */
    assert_int_equal(send(fd, "\x16\x03\x01\x01\x00", 5, MSG_NOSIGNAL), 5);
    t0 = now_ms();
    raw_read(fd, out, sizeof out, 8000, &closed);
    took = now_ms() - t0;
    close(fd);
    printf("stalled TLS handshake: closed after %lld ms\n", took);
    assert_true(closed);
    assert_true(took >= 1500 && took <= 4500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(get_over_https),
        cmocka_unit_test(signed_post_over_https),
        cmocka_unit_test(many_parallel_clients),
        cmocka_unit_test(old_tls_is_refused),
        cmocka_unit_test(min_version_1_3_is_honoured),
        cmocka_unit_test(plain_http_on_the_tls_port_is_harmless),
        cmocka_unit_test(a_stalled_handshake_is_cut_at_the_header_deadline),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
