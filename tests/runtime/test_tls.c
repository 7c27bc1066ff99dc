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
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

static char dir[256], ca[512];

/* tls_extra: more of server.tls ("" for none) */
static int start_with(struct wh_proc *p, const char *name, const char *min_version,
                      const char *tls_extra)
{
    char manifest[2048], path[512];
    snprintf(manifest, sizeof manifest,
             "server:\n"
             "  listen: [https://127.0.0.1:0, http://127.0.0.1:0]\n"
             "  tls:\n"
             "    certificate: server.pem\n"
             "%s"
             "    min_version: \"%s\"\n"
             "  threads: 24\n" /* max_inflight (3/4 of it) above the 16 clients */
             "secrets:\n"
             "  - value: \"" TEST_SECRET "\"\n"
             "hooks: {}\n",
             tls_extra, min_version);
    file_write(dir, name, manifest);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return proc_start(p, path, NULL, 2);
}

static int start(struct wh_proc *p, const char *name, const char *min_version)
{
    return start_with(p, name, min_version, "");
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
        if (post_signed(srv12.https, "incoming_message", "{\"n\":1}", ca, r) == 200) ok++;
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
        const char *req =
            "GET /webhook?challenge=v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        int n;
        version = SSL_version(ssl);
        /* the connection really serves: a request through it answers */
        SSL_write(ssl, req, (int)strlen(req));
        n = SSL_read(ssl, out, sizeof out - 1);
        out[n > 0 ? n : 0] = '\0';
        if (raw_status(out) != 200) version = -1;
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

/* One TLS 1.2 connection offering only `cipher` (OpenSSL's name); sends req if the handshake
 * succeeds and reads the answer into out. Returns 1 if the handshake succeeded. */
static int tls12_with(int port, const char *cipher, const char *req, char *out, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl;
    int fd, ok;

    SSL_CTX_set_security_level(ctx, 0);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_set_cipher_list(ctx, cipher) != 1)
        fail_msg("the client knows no cipher %s", cipher);
    fd = raw_connect(port);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    ok = SSL_connect(ssl) == 1;
    if (out) out[0] = '\0';
    if (ok && req) {
        size_t got = 0;
        int n;
        SSL_write(ssl, req, (int)strlen(req));
        while (got < cap - 1 && (n = SSL_read(ssl, out + got, (int)(cap - 1 - got))) > 0)
            got += (size_t)n;
        out[got] = '\0';
    }
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* Every TLS 1.2 suite this OpenSSL knows for an ECDSA key, offered one at a time: the server
 * accepts exactly those the list names (by default ECDHE with AES-GCM or ChaCha20-Poly1305:
 * no CBC, which testssl.sh flags for LUCKY13). */
static void accepted_tls12_suites(int port, char *accepted, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    STACK_OF(SSL_CIPHER) * all;

    SSL_CTX_set_security_level(ctx, 0);
    SSL_CTX_set_cipher_list(ctx, "ALL:COMPLEMENTOFALL:@SECLEVEL=0");
    all = SSL_CTX_get_ciphers(ctx);
    accepted[0] = '\0';
    for (int i = 0; i < sk_SSL_CIPHER_num(all); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(all, i);
        const char *name = SSL_CIPHER_get_name(c);
        if (SSL_CIPHER_get_auth_nid(c) == NID_auth_rsa || SSL_CIPHER_is_aead(c) < 0 ||
            !strncmp(name, "TLS_", 4))
            continue;
        if (tls12_with(port, name, NULL, NULL, 0)) {
            strncat(accepted, name, cap - strlen(accepted) - 2);
            strcat(accepted, " ");
        }
    }
    SSL_CTX_free(ctx);
}

static void tls12_offers_ecdhe_with_aead_only(void **state)
{
    char accepted[4096], out[4096];
    (void)state;
    accepted_tls12_suites(srv12.https_port, accepted, sizeof accepted);
    printf("TLS 1.2 suites accepted by default: %s\n", accepted);
    assert_string_equal(accepted, "ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-ECDSA-CHACHA20-POLY1305 "
                                  "ECDHE-ECDSA-AES128-GCM-SHA256 ");
    /* the ones testssl.sh flagged */
    assert_false(tls12_with(srv12.https_port, "ECDHE-ECDSA-AES128-SHA", NULL, NULL, 0));
    assert_false(tls12_with(srv12.https_port, "ECDHE-ECDSA-AES256-SHA384", NULL, NULL, 0));
    assert_true(
        tls12_with(srv12.https_port, "ECDHE-ECDSA-AES128-GCM-SHA256",
                   "GET /webhook?challenge=aead HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                   out, sizeof out));
    assert_non_null(strstr(out, "{\"challenge\":\"aead\"}"));
}

/* server.tls.ciphers replaces the list (and a reload applies it); one OpenSSL does not know
 * is refused by check with FILE:LINE. */
static void tls_ciphers_are_configurable_and_checked(void **state)
{
    struct wh_proc p;
    char accepted[4096], out[8192], path[512];
    char *argv[] = {(char *)WAPPHOOK_BIN, "check", "-c", path, NULL};
    (void)state;
    assert_int_equal(
        start_with(&p, "one.yaml", "1.2", "    ciphers: \"ECDHE-ECDSA-AES256-GCM-SHA384\"\n"), 0);
    accepted_tls12_suites(p.https_port, accepted, sizeof accepted);
    assert_string_equal(accepted, "ECDHE-ECDSA-AES256-GCM-SHA384 ");
    assert_int_equal(proc_stop(&p), 0);

    assert_int_equal(start_with(&p, "bad.yaml", "1.2", "    ciphers: \"NO-SUCH-CIPHER\"\n"), -1);
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 1);
    if (!strstr(out, "bad.yaml:5: server.tls.ciphers \"NO-SUCH-CIPHER\""))
        fail_msg("check said: %s", out);
}

/* The framing checks hold over TLS too (the same parser, fed by SSL_read). */
static void framing_is_checked_over_tls(void **state)
{
    char out[4096];
    (void)state;
    assert_true(tls12_with(srv12.https_port, "ECDHE-ECDSA-AES128-GCM-SHA256",
                           "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n"
                           "GET /webhook?challenge=smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                           out, sizeof out));
    assert_int_equal(raw_status(out), 400);
    assert_null(strstr(out, "smuggled"));
    assert_true(
        tls12_with(srv12.https_port, "ECDHE-ECDSA-AES128-GCM-SHA256",
                   "GET /webhook?challenge=a HTTP/1.1\r\nHost: x\r\nX: 1\r\n folded\r\n\r\n", out,
                   sizeof out));
    assert_int_equal(raw_status(out), 400);
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

/* --- certificates reloaded on SIGHUP -------------------------------------------------------- */

static void hex_digest(X509 *x, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    X509_digest(x, EVP_sha256(), md, &n);
    for (unsigned int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* SHA-256 of the certificate a fresh handshake is given. */
static void served_fingerprint(int port, char out[65])
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    int fd = raw_connect(port);
    X509 *x;
    SSL_set_fd(ssl, fd);
    out[0] = '\0';
    if (SSL_connect(ssl) == 1 && (x = SSL_get1_peer_certificate(ssl))) {
        hex_digest(x, out);
        X509_free(x);
    }
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
}

static void file_fingerprint(const char *pem, char out[65])
{
    FILE *f = fopen(pem, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    assert_non_null(x);
    hex_digest(x, out);
    X509_free(x);
    fclose(f);
}

static volatile int reload_clients_stop;
static long reload_requests; /* all clients' so far */

/* Until the clients have made n more requests (each one a full handshake). */
static void traffic_for(long n)
{
    wait_count(&reload_requests, __atomic_load_n(&reload_requests, __ATOMIC_RELAXED) + n, 20000);
}

static char both[512]; /* every certificate: clients trust the old and the new ones */

static long reload_client(long i)
{
    long failed = 0, n = 0;
    (void)i;
    while (!__atomic_load_n(&reload_clients_stop, __ATOMIC_ACQUIRE)) {
        struct resp *r = malloc(sizeof *r);
        /* a fresh connection each time: every request is a new handshake */
        if (post_signed(srv12.https, "incoming_message", "{\"n\":1}", both, r) != 200) failed++;
        n++;
        __atomic_add_fetch(&reload_requests, 1, __ATOMIC_RELAXED);
        free(r);
    }
    return failed * 1000000 + n; /* both counts in one: failures, requests */
}

static long long reload_totals;
static void *reload_client_thread(void *arg)
{
    long v = reload_client((long)arg);
    __atomic_add_fetch(&reload_totals, v, __ATOMIC_RELAXED);
    return NULL;
}

static void reload_and_wait(const char *expect)
{
    size_t mark = proc_log_mark(&srv12);
    kill(srv12.pid, SIGHUP);
    assert_int_equal(proc_wait_log_since(&srv12, mark, expect, NULL, 10000), 1);
}

#define RENEWALS 5

static void append_file(FILE *to, const char *path)
{
    char buf[8192];
    size_t n;
    FILE *from = fopen(path, "r");
    while ((n = fread(buf, 1, sizeof buf, from)) > 0)
        fwrite(buf, 1, n, to);
    fclose(from);
}

static void a_renewed_certificate_is_served_after_sighup(void **state)
{
    char fp[RENEWALS][65], first[65], now[65], pem[512], fresh[RENEWALS][512], out[8192];
    char *argv[] = {WAPPHOOK_BIN, "check", "-c", (char *)path_in(dir, "hooks.yaml"), NULL};
    pthread_t th[4];
    FILE *f;
    int reason;
    (void)state;
    snprintf(pem, sizeof pem, "%s/server.pem", dir);
    snprintf(both, sizeof both, "%s/all.pem", dir);
    f = fopen(both, "w");
    append_file(f, ca);
    for (int i = 0; i < RENEWALS; i++) {
        char cert_only[512];
        snprintf(fresh[i], sizeof fresh[i], "%s/renewed-%d.pem", dir, i);
        snprintf(cert_only, sizeof cert_only, "%s/renewed-%d-ca.pem", dir, i);
        cert_make(fresh[i], cert_only);
        file_fingerprint(cert_only, fp[i]);
        append_file(f, cert_only);
    }
    fclose(f);
    file_fingerprint(ca, first);
    served_fingerprint(srv12.https_port, now);
    assert_string_equal(now, first);

    /* HTTPS clients keep sending while the pair is replaced the way certbot does it: a new
     * file renamed over the old one, then SIGHUP */
    __atomic_store_n(&reload_clients_stop, 0, __ATOMIC_RELEASE);
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, reload_client_thread, (void *)i);
    for (int i = 0; i < RENEWALS; i++) {
        assert_int_equal(rename(fresh[i], pem), 0);
        reload_and_wait("\"msg\":\"reloaded\"");
        served_fingerprint(srv12.https_port, now);
        assert_string_equal(now, fp[i]); /* new handshakes: the renewed certificate */
        traffic_for(100);
    }

    /* a broken file: the reload is refused with its name, and the pair in use stays */
    file_write(dir, "server.pem", "-----BEGIN CERTIFICATE-----\nnot one\n");
    reload_and_wait("reload refused");
    assert_int_equal(proc_wait_log(&srv12, "reload refused", "server.pem", 1000), 1);
    traffic_for(100);
    served_fingerprint(srv12.https_port, now);
    assert_string_equal(now, fp[RENEWALS - 1]);
    assert_int_equal(run_cli(argv, NULL, NULL, out, sizeof out), 1);
    assert_non_null(strstr(out, "server.tls.certificate"));
    assert_non_null(strstr(out, "server.pem"));
    __atomic_store_n(&reload_clients_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    printf("certificate replaced %d times and reloaded under 4 HTTPS clients: %lld requests "
           "(each a new handshake), %lld failed\n",
           RENEWALS, reload_totals % 1000000, reload_totals / 1000000);
    assert_true(reload_totals % 1000000 > 0);
    assert_int_equal(reload_totals / 1000000, 0);

    /* min_version applies on reload too */
    cert_make(pem, NULL);
    {
        char m[1024];
        snprintf(m, sizeof m,
                 "server:\n  listen: [https://127.0.0.1:%d, http://127.0.0.1:%d]\n"
                 "  tls:\n    certificate: server.pem\n    min_version: \"1.3\"\n"
                 "  threads: 24\nsecrets:\n  - value: \"" TEST_SECRET "\"\nhooks: {}\n",
                 srv12.https_port, srv12.http_port);
        file_write(dir, "hooks.yaml", m);
    }
    reload_and_wait("\"msg\":\"reloaded\"");
    assert_int_equal(handshake(srv12.https_port, TLS1_2_VERSION, TLS1_2_VERSION, &reason), 0);
    assert_int_equal(handshake(srv12.https_port, TLS1_3_VERSION, TLS1_3_VERSION, &reason),
                     TLS1_3_VERSION);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(get_over_https),
        cmocka_unit_test(signed_post_over_https),
        cmocka_unit_test(many_parallel_clients),
        cmocka_unit_test(old_tls_is_refused),
        cmocka_unit_test(tls12_offers_ecdhe_with_aead_only),
        cmocka_unit_test(tls_ciphers_are_configurable_and_checked),
        cmocka_unit_test(framing_is_checked_over_tls),
        cmocka_unit_test(min_version_1_3_is_honoured),
        cmocka_unit_test(plain_http_on_the_tls_port_is_harmless),
        cmocka_unit_test(a_stalled_handshake_is_cut_at_the_header_deadline),
        cmocka_unit_test(a_renewed_certificate_is_served_after_sighup), /* last: it renews */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
