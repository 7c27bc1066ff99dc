#define _GNU_SOURCE
#include "server.h"

#include "clock.h"

#include "clients.h"
#include "dispatch.h"
#include "generation.h"
#include "json_text.h"
#include "jsonesc.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "respond.h"
#include "shed.h"
#include "activation.h"
#include "sockets.h"
#include "spool.h"
#include "tls_compat.h"
#include "verify.h"
#include "watchdog.h"

#include <civetweb.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

struct server {
    struct mg_context *ctx;
    const struct wh_config *cfg; /* the start-up config: server.* applies until restart */
    struct generation *start_gen;
    struct generation *current; /* what new requests use (secrets, headers, hooks ...) */
    pthread_mutex_t gen_lock;   /* guards taking a reference to current */
    struct watchdog *watchdog;
    struct spool *spool;         /* durable mode: where accepted events go; NULL in sync mode */
    int inflight;                /* requests inside on_request (atomic) */
    int posts;                   /* of which POSTs, against server.max_inflight (atomic) */
    int routed;                  /* civetweb has on_request as its handler (atomic) */
    int draining;                /* set by server_stop: finish, close, accept nothing new */
    pthread_mutex_t drain_mu;    /* with drain_cv: server_stop waits for inflight == 0 */
    pthread_cond_t drain_cv;
    pthread_mutex_t err_lock;
    int started;
    char first_error[512]; /* civetweb's first complaint, for start-up failures */
};

/* civetweb gives each connection a worker thread, and an idle keep-alive connection keeps
 * it: hold one for at most 2 s (bursts reuse it) and never past the request timeout. */
static int keepalive_ms(const struct wh_config *cfg)
{
    return cfg->request_timeout_ms < 2000 ? cfg->request_timeout_ms : 2000;
}

static int on_log_message(const struct mg_connection *c, const char *message)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    if (s) {
        /* the first complaint names the cause ("cannot bind to ..."); later ones follow */
        pthread_mutex_lock(&s->err_lock);
        if (!s->first_error[0])
            snprintf(s->first_error, sizeof s->first_error, "%s", message);
        pthread_mutex_unlock(&s->err_lock);
    }
    /* Before start-up completes these explain a failure; afterwards they are per-connection
     * noise (a client dropping mid-handshake), which a scanner could turn into a flood. */
    if (s && __atomic_load_n(&s->started, __ATOMIC_ACQUIRE))
        log_msg(LOG_INFO, "civetweb", LOG_S("detail", message));
    else
        log_msg(LOG_WARN, "civetweb", LOG_S("detail", message));
    return 1;
}

/* --- TLS -------------------------------------------------------------------------------- */

static int load_certificate(SSL_CTX *ctx, const struct wh_config *cfg, char *err,
                            size_t err_len)
{
    int min = cfg->tls_min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    unsigned long e;

    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_certificate) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_certificate, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        e = ERR_peek_last_error();
        snprintf(err, err_len, "%s:%d: server.tls.certificate %s: %s (it must hold the private "
                               "key and the certificate chain, PEM)",
                 cfg->file, cfg->tls_certificate_line, cfg->tls_certificate,
                 e ? ERR_reason_error_string(e) : "unreadable");
        ERR_clear_error();
        return -1;
    }
    if (SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        snprintf(err, err_len, "%s:%d: server.tls.ciphers \"%s\": no cipher suite OpenSSL knows "
                               "matches it",
                 cfg->file, cfg->tls_ciphers_line, cfg->tls_ciphers);
        ERR_clear_error();
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, min);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    return 0;
}

static int uses_tls(const struct wh_config *cfg)
{
    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (cfg->listeners[i].tls)
            return 1;
    return 0;
}

int server_preflight(const struct wh_config *cfg, void **tls, char *err, size_t err_len)
{
    SSL_CTX *ctx;

    *tls = NULL;
    if (!uses_tls(cfg))
        return 0;
    if (tls_compat_check(err, err_len))
        return -1;
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, err_len, "TLS: OpenSSL could not create a context");
        return -1;
    }
    if (load_certificate(ctx, cfg, err, err_len)) {
        SSL_CTX_free(ctx);
        return -1;
    }
    *tls = ctx;
    return 0;
}

void server_tls_free(void *tls)
{
    SSL_CTX_free(tls);
}

/* Every handshake takes the current generation's TLS material (SIGHUP loads it anew): its
 * minimum version and TLS 1.2 suites before either is chosen (the ClientHello callback), its certificate
 * and key where the server name is settled (civetweb's own server-name callback, which would
 * put back the pair loaded at start, is replaced: there is one domain). SSL_set_SSL_CTX
 * takes a reference, so a handshake keeps the pair it started with across reloads. */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    struct generation *g = server_current(arg);

    (void)alert;
    SSL_set_min_proto_version(ssl, g->cfg->tls_min_version == 13 ? TLS1_3_VERSION
                                                               : TLS1_2_VERSION);
    SSL_set_cipher_list(ssl, g->cfg->tls_ciphers); /* checked when the generation loaded */
    generation_release(g);
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    struct generation *g = server_current(arg);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

    (void)alert;
    if (g->tls)
        SSL_set_SSL_CTX(ssl, g->tls);
    generation_release(g);
    return name && *name ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_NOACK;
}

/* Header deadlines (server.header_timeout_ms). civetweb 1.15 bounds the headers of a
 * connection's first request itself: its request_timeout_ms, which wapphook sets to
 * header_timeout_ms, bounds their sum (checked after each wait, and each wait by the same
 * value: a drip is cut within two header timeouts, a pause at one), the TLS handshake
 * before them, and each pause inside a body. A request on a kept-alive connection gets only
 * civetweb's per-wait bound, so the watchdog (which also bounds body reads) is armed after
 * each answer until the next request's headers are complete (begin_request). */
static void arm_headers(const struct mg_connection *c, long long extra_ms)
{
    struct server *s = mg_get_user_data(mg_get_context(c));
    const struct mg_request_info *ri = mg_get_request_info(c);

    if (!s || !ri)
        return;
    watchdog_arm(s->watchdog, wh_mono_ms() + extra_ms + s->cfg->header_timeout_ms,
                 ri->remote_addr, ri->remote_port, ri->server_port);
}

/* When this worker's connection began waiting for a request's headers: a failure to read
 * them that late is the header deadline, not a malformed message (see on_http_error). */
static __thread long long headers_since_ms;

static int on_init_connection(const struct mg_connection *c, void **conn_data)
{
    (void)c;
    (void)conn_data;
    headers_since_ms = wh_mono_ms();
    return 0;
}

/* civetweb's own refusals. It reports headers that never completed as "Malformed message",
 * whether the deadline cut them or the client went away: the time tells them apart. Such a
 * cut is counted, and logged only as part of a shedding episode (shed.h): a slow-header
 * attack must not write a line per connection. */
static int on_http_error(struct mg_connection *c, int status, const char *msg)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    if (s && status == 400 && msg && strcasecmp(msg, "Malformed message") == 0 &&
        wh_mono_ms() - headers_since_ms >= s->cfg->header_timeout_ms - 20) {
        shed_note(REJECT_HEADER_TIMEOUT);
        reply_error(c, 408, "request headers not received in time", true);
        return 0;
    }
    return reply_http_error(c, status, msg);
}

static void on_end_request(const struct mg_connection *c, int status)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    (void)status;
    headers_since_ms = wh_mono_ms();
    /* the next request on this connection: idle up to the keep-alive time, then headers */
    arm_headers(c, s ? keepalive_ms(s->cfg) : 0);
}

static int on_request(struct mg_connection *c, void *arg);

static int on_begin_request(struct mg_connection *c)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    if (s && watchdog_disarm_mine(s->watchdog)) {
        mg_disable_connection_keep_alive(c); /* cut: nothing more will be read from it */
        return reply_error(c, 408, "request headers not received in time", true);
    }
    /* civetweb accepts from mg_start on, and the handler can only be set after it: a
     * handed-over socket (socket activation) has connections queued by then, which would
     * get civetweb's own 404. Until the handler is in place, requests are served here. */
    if (s && !__atomic_load_n(&s->routed, __ATOMIC_ACQUIRE))
        return on_request(c, s);
    return 0; /* civetweb goes on to our handler */
}

static void on_connection_close(const struct mg_connection *c)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    if (s)
        watchdog_disarm_mine(s->watchdog);
}

/* A worker leaves: free what it cached (its HMAC contexts). */
static void on_exit_thread(const struct mg_context *ctx, int thread_type, void *thread_pointer)
{
    (void)ctx;
    (void)thread_type;
    (void)thread_pointer;
    verifier_thread_cleanup();
}

/* civetweb calls this with its fresh SSL_CTX; returning 1 means "fully set up". */
static int on_init_ssl(void *ssl_ctx, void *user_data)
{
    struct server *s = user_data;
    char err[WH_ERR_LEN];

    if (load_certificate(ssl_ctx, s->cfg, err, sizeof err)) {
        log_msg(LOG_ERROR, "TLS set-up failed", LOG_S("error", err));
        return -1;
    }
    SSL_CTX_set_client_hello_cb(ssl_ctx, on_client_hello, s);
    SSL_CTX_set_tlsext_servername_callback(ssl_ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ssl_ctx, s);
    return 1;
}

/* --- the endpoint ------------------------------------------------------------------------ */

/* h holds 64: civetweb's own maximum (MG_MAX_HEADERS) */
static int copy_headers(const struct mg_request_info *ri, struct wh_header h[static 64])
{
    int n = ri->num_headers < 64 ? ri->num_headers : 64;

    for (int i = 0; i < n; i++) {
        h[i].name = ri->http_headers[i].name;
        h[i].value = ri->http_headers[i].value;
    }
    return n;
}

static int on_get(struct mg_connection *c, const struct mg_request_info *ri, bool close)
{
    char body[CHALLENGE_BODY_MAX];
    const char *why = NULL;
    int n = challenge_body(ri->query_string, body, sizeof body, &why);

    if (n < 0)
        return reply_error(c, 400, why, close);
    return reply(c, 200, body, (size_t)n, close, NULL);
}

enum body_result {
    BODY_OK = 0, BODY_TOO_LARGE = 413, BODY_TIMEOUT = 408, BODY_BAD = 400, BODY_SHORT = 1
};

/* Reads the whole body, never more than max bytes (a chunked body is cut at max + 1).
 * *last_wait_ms: how long the last read took (a short body after a long wait was a pause
 * past civetweb's per-wait bound, not the client closing). */
static enum body_result read_all(struct mg_connection *c, long long content_length,
                                 long long max, char **out, size_t *len,
                                 long long *last_wait_ms)
{
    size_t cap = content_length >= 0 ? (size_t)content_length + 1 : 16384;
    size_t got = 0;
    size_t limit = content_length >= 0 ? (size_t)content_length : (size_t)max + 1;
    char *buf = malloc(cap);

    if (!buf)
        return BODY_BAD;
    while (got < limit) {
        size_t want;
        int n;

        if (got + 1 >= cap) {
            char *nb;
            cap = cap * 2 > (size_t)max + 2 ? (size_t)max + 2 : cap * 2;
            nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return BODY_BAD;
            }
            buf = nb;
        }
        want = limit - got < cap - 1 - got ? limit - got : cap - 1 - got;
        *last_wait_ms = wh_mono_ms();
        n = mg_read(c, buf + got, want);
        *last_wait_ms = wh_mono_ms() - *last_wait_ms;
        if (n < 0) { /* a broken chunked body, or the connection failed */
            free(buf);
            return BODY_BAD;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (content_length < 0 && got > (size_t)max) {
        free(buf);
        return BODY_TOO_LARGE;
    }
    if (content_length >= 0 && got < (size_t)content_length) {
        free(buf);
        return BODY_SHORT;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return BODY_OK;
}

/* read_all under the request's deadline: civetweb bounds each wait for data, the watchdog
 * bounds their sum (see watchdog.h). */
static enum body_result read_body(struct server *s, struct mg_connection *c,
                                  const struct mg_request_info *ri, long long content_length,
                                  long long deadline, char **out, size_t *len)
{
    int slot = watchdog_arm(s->watchdog, deadline, ri->remote_addr, ri->remote_port,
                            ri->server_port);
    long long waited = 0;
    enum body_result r = read_all(c, content_length, s->cfg->max_body_bytes, out, len, &waited);

    if (watchdog_disarm(s->watchdog, slot) || wh_mono_ms() > deadline) {
        if (r == BODY_OK)
            free(*out);
        return BODY_TIMEOUT;
    }
    if (r == BODY_SHORT) /* a pause of header_timeout_ms (see arm_headers), or the end */
        return waited >= s->cfg->header_timeout_ms - 20 ? BODY_TIMEOUT : BODY_BAD;
    return r;
}

/* The request's headers as a JSON object for the spool: names in lower case, the first of
 * repeated names, values that are not UTF-8 left out. A new string; NULL if out of memory. */
static char *headers_json(const struct wh_header *h, int n)
{
    size_t cap = 3;
    char *out, *o;
    bool kept[64] = {false};

    n = n < 64 ? n : 64;
    for (int i = 0; i < n; i++)
        cap += JSONESC_MAX(strlen(h[i].name) + strlen(h[i].value)) + 6;
    if (!(o = out = malloc(cap)))
        return NULL;
    *o++ = '{';
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(h[i].name), vl = strlen(h[i].value);
        char *e;
        for (int j = 0; j < i; j++)
            if (kept[j] && strcasecmp(h[j].name, h[i].name) == 0)
                goto next;
        if (!utf8_valid(h[i].name, nl) || !utf8_valid(h[i].value, vl))
            continue;
        kept[i] = true;
        if (o > out + 1)
            *o++ = ',';
        *o++ = '"';
        for (e = o + json_escape(o, h[i].name, nl); o < e; o++)
            if (*o >= 'A' && *o <= 'Z')
                *o += 32;
        memcpy(o, "\":\"", 3);
        o += 3;
        o += json_escape(o, h[i].value, vl);
        *o++ = '"';
    next:;
    }
    *o++ = '}';
    *o = '\0';
    return out;
}

/* --- durable mode: the spool's hooks ------------------------------------------------------- */

static void rules_of(const struct generation *g, struct spool_rules *r)
{
    r->max_attempts = g->cfg->retry_max_attempts;
    r->initial_backoff_ms = g->cfg->retry_initial_backoff_ms;
    r->max_backoff_ms = g->cfg->retry_max_backoff_ms;
    r->keep_delivered_s = g->cfg->keep_delivered_s;
}

static void spool_rules(void *arg, struct spool_rules *r)
{
    struct generation *g = server_current(arg);

    rules_of(g, r);
    generation_release(g);
}

/* A delivery from the spool, run by the current generation's handler of that name. */
static int spool_deliver(void *arg, const struct spool_delivery *d, struct spool_rules *rules,
                         long long *generation, int *give_up, char *err, size_t err_len)
{
    struct generation *g = server_current(arg);
    const struct bound_handler *b = generation_handler(g, d->handler);
    json_t *hdrs = json_loads(d->headers_json, 0, NULL);
    struct wh_header h[64];
    int nh = 0, rc = -1;
    const char *k;
    json_t *v;

    json_object_foreach(hdrs, k, v) {
        if (nh < 64 && json_is_string(v)) {
            h[nh].name = k;
            h[nh++].value = json_string_value(v);
        }
    }
    rules_of(g, rules);
    *generation = (long long)g->id;
    if (!b) {
        snprintf(err, err_len, "handler %s is not in the running configuration", d->handler);
        *give_up = 1; /* nothing to retry with: a dead letter to replay */
    } else if (d->body_checked || json_text_check(d->body, d->body_len) == JSON_TEXT_OBJECT) {
        struct wh_event ev = {.type = d->type, .body = d->body, .body_len = d->body_len,
                              .received_at = d->received_at, .headers = h, .n_headers = nh,
                              .id = d->event_id};
        rc = dispatch_handler(g, b, &ev, err, err_len);
    } else {
        snprintf(err, err_len, "stored body is not JSON");
    }
    json_decref(hdrs);
    generation_release(g);
    return rc;
}

/* Durable mode: 200 only once the event is in the spool, on disk. */
static int store_durably(struct server *s, const struct generation *g, struct mg_connection *c,
                         const struct wh_event *ev)
{
    const struct bound_hook *own = generation_hook(g, ev->type);
    const char *names[256];
    char *key = NULL, *headers = headers_json(ev->headers, ev->n_headers), *value;
    struct spool_event se = {.type = ev->type, .body = ev->body, .body_len = ev->body_len,
                             .received_at = ev->received_at, .handlers = names,
                             .max_bytes = g->cfg->max_spool_mb << 20}; /* reloads apply it */
    enum spool_result r;

    /* the type's own handlers, then the "*" ones: the deliveries dispatch_event would run */
    const struct bound_hook *hooks[2] = {own != g->any ? own : NULL, g->any};

    for (int k = 0; k < 2; k++)
        for (size_t i = 0; hooks[k] && i < hooks[k]->n && se.n_handlers < 256; i++)
            names[se.n_handlers++] = hooks[k]->handlers[i].name;
    se.headers_json = headers ? headers : "{}";
    if (g->cfg->dedupe_key &&
        (value = json_text_path(ev->body, ev->body_len, g->cfg->dedupe_key))) {
        if (asprintf(&key, "%s\n%s", ev->type, value) > 0) {
            se.dedupe_key = key; /* per event type: a status update is not a duplicate message */
            se.dedupe_window_s = g->cfg->dedupe_window_s;
        }
        free(value);
    }
    r = spool_put(s->spool, &se);
    free(headers);
    free(key);
    /* accepted (handlers run later: their outcomes are wapphook_deliveries_total), or not */
    metrics_event(own && own->series ? own->series : metrics_other_events(),
                  r == SPOOL_FULL || r == SPOOL_ERROR ? EVENT_FAILED
                  : se.n_handlers                     ? EVENT_OK
                                                      : EVENT_UNROUTED);
    switch (r) {
    case SPOOL_STORED:
    case SPOOL_DUPLICATE:
        return reply(c, 200, "{\"status\":\"ok\"}", 15, false, NULL);
    case SPOOL_FULL:
        return reply(c, 503, "{\"error\":\"spool full\"}", 22, false, "Retry-After: 5\r\n");
    default:
        return reply(c, 503, "{\"error\":\"spool unavailable\"}", 29, false, "Retry-After: 1\r\n");
    }
}

struct post_ctx {
    const char *event_type; /* for the access log, once known */
    const char *client;     /* who sent it (clients.h), for logs */
};

/* Every refusal for load: answered at once, and the sender told when to come back. */
static int reply_overloaded(struct mg_connection *c, enum reject_reason why, bool close)
{
    shed_note(why);
    return reply(c, 503, "{\"error\":\"overloaded\"}", 22, close, "Retry-After: 1\r\n");
}

static int on_post(struct server *s, const struct generation *g, struct mg_connection *c,
                   const struct mg_request_info *ri, long long started, struct post_ctx *pc)
{
    const struct wh_config *cfg = s->cfg;   /* limits: server.* */
    const struct wh_config *gcfg = g->cfg; /* secrets, headers, delivery: this generation */
    struct wh_header h[64] = {{0}}; /* gcc 12 cannot see copy_headers fill it */
    int nh = copy_headers(ri, h);
    const char *cl, *te, *expect, *sig, *ctype, *event;
    int n_cl = header_find(h, nh, "Content-Length", &cl);
    int n_te = header_find(h, nh, "Transfer-Encoding", &te);
    unsigned char mac[WH_MAC_LEN];
    char *body = NULL;
    size_t body_len = 0;
    enum json_text_kind kind;
    enum body_result br;
    int status, n_sig;

    /* framing: refuse every shape that two parsers could read differently */
    if (n_cl && n_te)
        return reply_error(c, 400, "both Content-Length and Transfer-Encoding", true);
    for (int i = 0; i < nh && n_cl > 1; i++)
        if (strcasecmp(h[i].name, "Content-Length") == 0 && strcmp(h[i].value, cl) != 0)
            return reply_error(c, 400, "conflicting Content-Length headers", true);
    if (n_te > 1 || (n_te && strcasecmp(te, "chunked") != 0))
        return reply_error(c, 400, "unsupported Transfer-Encoding", true);
    if (ri->content_length > cfg->max_body_bytes)
        return reply_error(c, 413, "body larger than server.max_body_bytes", true);

    if (n_cl || n_te) {
        if (header_find(h, nh, "Expect", &expect) && strcasecmp(expect, "100-continue") == 0)
            mg_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        br = read_body(s, c, ri, n_cl ? ri->content_length : -1,
                       started + cfg->request_timeout_ms, &body, &body_len);
        if (br == BODY_TOO_LARGE)
            return reply_error(c, 413, "body larger than server.max_body_bytes", true);
        if (br == BODY_TIMEOUT)
            return reply_error(c, 408, "request body not received in time", true);
        if (br != BODY_OK)
            return reply_error(c, 400, "incomplete or malformed request body", true);
    } else {
        body = strdup(""); /* no framing at all: an empty body, and no keep-alive after it */
        mg_disable_connection_keep_alive(c);
    }

    n_sig = header_find(h, nh, gcfg->signature_header, &sig);
    if (n_sig != 1 || sig_parse(sig, strlen(sig), mac) != 0 ||
        verifier_check(g->verifier, mac, body, body_len) != 0) {
        log_msg(LOG_WARN, "signature check failed", LOG_S("remote", pc->client),
                LOG_S("reason", n_sig == 0   ? "missing"
                                : n_sig > 1 ? "repeated header"
                                : sig_parse(sig, strlen(sig), mac) ? "malformed"
                                            : "no secret matches"));
        metrics_signature_failure();
        status = reply_error(c, 401, "invalid signature", false);
        goto done;
    }
    if (header_find(h, nh, "Content-Type", &ctype) != 1 || !content_type_is_json(ctype)) {
        status = reply_error(c, 415, "Content-Type must be application/json", false);
        goto done;
    }
    if (header_find(h, nh, gcfg->event_header, &event) != 1) {
        status = reply_error(c, 400, "missing or repeated event type header", false);
        goto done;
    }
    if (!event_type_valid(event, strlen(event))) {
        status = reply_error(c, 400, "invalid event type", false);
        goto done;
    }
    pc->event_type = event;
    kind = json_text_check(body, body_len);
    if (kind != JSON_TEXT_OBJECT) {
        status = reply_error(c, 400, kind == JSON_TEXT_OTHER ? "body is not a JSON object"
                                                            : "invalid JSON", false);
        goto done;
    }
    {
        struct wh_event ev = {.type = event,
                              .body = body,
                              .body_len = body_len,
                              .received_at = wh_now_s(),
                              .headers = h,
                              .n_headers = nh};

        struct dispatch_result res;

        if (s->spool) {
            status = store_durably(s, g, c, &ev);
        } else if (dispatch_reserve(g, event) != 0) {
            status = reply_overloaded(c, REJECT_OVERLOADED, false); /* at max_concurrent */
        } else {
            int failed = dispatch_event(g, &ev, &res) != 0;
            dispatch_unreserve(g, event);
            if (!failed || gcfg->on_handler_error == WH_ON_ERROR_ACK)
                status = reply(c, 200, "{\"status\":\"ok\"}", 15, false, NULL);
            else
                status = reply_error(c, 500, "handler failed", false);
        }
    }
done:
    free(body);
    return status;
}

/* The effective server.max_inflight: unset, three quarters of the workers, so that a quarter
 * stays free for challenges and for answering 503 at once. */
static int max_inflight(const struct server *s, const struct wh_config *gcfg)
{
    int derived = s->cfg->threads - s->cfg->threads / 4;

    if (gcfg->max_inflight >= 0)
        return gcfg->max_inflight;
    return derived > 0 ? derived : 1;
}

/* Who sent the request: the peer, or the client a trusted proxy names. */
static bool identify(const struct wh_config *gcfg, const struct mg_request_info *ri,
                     struct client_key *client)
{
    struct client_key peer;
    const char *xff[64];
    size_t n = 0;

    if (client_key_parse(ri->remote_addr, &peer) != 0) {
        memset(client, 0, sizeof *client);
        return false;
    }
    if (!gcfg->n_trusted_proxies || !cidr_list_has(gcfg->trusted_proxies,
                                                   gcfg->n_trusted_proxies, &peer)) {
        *client = peer;
        return false;
    }
    for (int i = 0; i < ri->num_headers && n < 64; i++)
        if (strcasecmp(ri->http_headers[i].name, "X-Forwarded-For") == 0)
            xff[n++] = ri->http_headers[i].value;
    return client_identify(&peer, xff, n, gcfg->trusted_proxies, gcfg->n_trusted_proxies,
                           client);
}

/* What a request holds while it is handled, given back just before its answer is written
 * (respond.h), so that the sender's next request never finds it still taken. */
struct held {
    struct server *s;
    bool post;              /* a place under max_inflight */
    bool client;            /* a place under the proxied client's cap */
    struct client_key key;
};

static void give_back_held(void *arg)
{
    struct held *h = arg;

    if (h->post)
        __atomic_sub_fetch(&h->s->posts, 1, __ATOMIC_ACQ_REL);
    if (h->client)
        clients_leave(&h->key);
    h->post = h->client = false;
}

static int on_request(struct mg_connection *c, void *arg)
{
    struct server *s = arg;
    const struct mg_request_info *ri = mg_get_request_info(c);
    long long started = wh_mono_ms();
    double started_f = wh_mono_ms_f();
    struct post_ctx pc = {0};
    struct generation *g;
    struct client_key client;
    char client_text[INET6_ADDRSTRLEN];
    struct held held = {.s = s};
    bool proxied;
    int status;

    __atomic_add_fetch(&s->inflight, 1, __ATOMIC_ACQ_REL);
    reply_count_next(ri->request_method);
    if (__atomic_load_n(&s->draining, __ATOMIC_ACQUIRE))
        mg_disable_connection_keep_alive(c); /* served, and the sender moves on */
    /* the whole request runs on the generation it started with */
    pthread_mutex_lock(&s->gen_lock);
    g = s->current;
    generation_acquire(g);
    pthread_mutex_unlock(&s->gen_lock);
    proxied = identify(g->cfg, ri, &client);
    if (proxied) /* else the client is the peer, whose address civetweb has as text */
        client_key_format(&client, client_text, sizeof client_text);
    pc.client = proxied ? client_text : ri->remote_addr;
    held.key = client;
    reply_release_next(give_back_held, &held);

    if ((status = reply_if_malformed(c)) != 0) {
        ; /* answered: 400 or 431, connection closed */
    } else if (!request_path_matches(c, s->cfg->path)) {
        status = reply_error(c, 404, "not found", request_has_body(c));
    } else if (proxied && !(held.client = clients_enter(&client,
                                                        g->cfg->max_connections_per_client) ==
                                          0)) {
        /* the cap a direct client meets at accept(), met here by a client behind a proxy */
        status = reply_overloaded(c, REJECT_CLIENT_CAP, request_has_body(c));
    } else if (strcmp(ri->request_method, "POST") == 0) {
        if (g->cfg->allow_from &&
            !cidr_list_has(g->cfg->allow_from, g->cfg->n_allow_from, &client)) {
            shed_note(REJECT_FORBIDDEN);
            status = reply_error(c, 403, "forbidden", request_has_body(c)); /* body unread */
        } else {
            /* durable mode stores and answers: its admission is the spool's (503 when full) */
            int cap = s->spool ? 0 : max_inflight(s, g->cfg);
            int n = __atomic_add_fetch(&s->posts, 1, __ATOMIC_ACQ_REL);
            held.post = true;
            status = cap > 0 && n > cap ? reply_overloaded(c, REJECT_OVERLOADED, request_has_body(c))
                                        : on_post(s, g, c, ri, started, &pc);
        }
    } else if (strcmp(ri->request_method, "GET") == 0) {
        status = on_get(c, ri, request_has_body(c));
    } else {
        status = reply(c, 405, "{\"error\":\"method not allowed\"}", 30, request_has_body(c),
                       "Allow: GET, POST\r\n");
    }
    reply_release_now(); /* if no answer was written */
    if (proxied)
        log_msg(LOG_INFO, "request", LOG_S("method", ri->request_method),
                LOG_S("path", ri->local_uri ? ri->local_uri : ri->request_uri),
                LOG_I("status", status), LOG_S("remote", pc.client),
                LOG_S("peer", ri->remote_addr), LOG_S("event", pc.event_type ? pc.event_type : ""),
                LOG_D("duration_ms", wh_mono_ms_f() - started_f), LOG_I("generation", g->id));
    else
        log_msg(LOG_INFO, "request", LOG_S("method", ri->request_method),
                LOG_S("path", ri->local_uri ? ri->local_uri : ri->request_uri),
                LOG_I("status", status), LOG_S("remote", pc.client),
                LOG_S("event", pc.event_type ? pc.event_type : ""),
                LOG_D("duration_ms", wh_mono_ms_f() - started_f), LOG_I("generation", g->id));
    generation_release(g);
    if (__atomic_sub_fetch(&s->inflight, 1, __ATOMIC_ACQ_REL) == 0 &&
        __atomic_load_n(&s->draining, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&s->drain_mu);
        pthread_cond_broadcast(&s->drain_cv);
        pthread_mutex_unlock(&s->drain_mu);
    }
    return status;
}

/* --- start and stop ------------------------------------------------------------------------ */

/* Deferred accept, as nginx's `listen ... deferred`: the kernel hands a connection over only
 * once it has sent something, so a client that connects and stays silent never occupies
 * one of civetweb's worker threads (each connection holds one). HTTP clients speak first,
 * so a long deferral costs them nothing; 60 s outlasts the kernel's SYN-ACK retries, after
 * which a silent connection is dropped without ever reaching civetweb. */
#define DEFER_ACCEPT_S 60
/* civetweb listens with a small backlog; silent connections waiting out their deferral
 * would fill it, and then new ones (the real senders) are dropped. listen() again on a
 * listening socket just raises it (the kernel caps it at net.core.somaxconn). */
#define LISTEN_BACKLOG 4096
struct defer {
    int ports[64], n, seconds, done;
    int fds[64]; /* the listening descriptors found, for clients_watch */
};

static int defer_accept(int fd, const struct sockaddr_storage *local, void *arg)
{
    struct defer *d = arg;

    if (d->done < 64 && sockets_listening_on(fd, local, d->ports, d->n) &&
        listen(fd, LISTEN_BACKLOG) == 0 &&
        setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &d->seconds, sizeof d->seconds) == 0)
        d->fds[d->done++] = fd;
    return 0;
}

/* Every connection costs a descriptor, the attackers' included: take all the kernel allows
 * (systemd's default soft limit is 1024, its hard one far higher). The limit in force. */
static int raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
        struct rlimit up = {.rlim_cur = want > rl.rlim_cur ? want : rl.rlim_cur,
                            .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
    }
    return rl.rlim_cur > (1u << 20) ? 1 << 20 : (int)rl.rlim_cur;
}

/* The policy a generation sets for connections (clients.h): reloads apply it. */
static void apply_client_policy(const struct wh_config *gcfg)
{
    clients_set_policy(gcfg->max_connections_per_client, gcfg->trusted_proxies,
                       gcfg->n_trusted_proxies);
}

int server_start(struct generation *gen, struct server **out, char *err, size_t err_len)
{
    struct server *s = calloc(1, sizeof *s);
    const struct wh_config *cfg = gen->cfg;
    struct mg_callbacks cb;
    char ports[2048] = "", threads[16], timeout[16], keepalive[16], *p = ports;
    const char *opts[32];
    int o = 0;
    struct mg_server_port sp[64];
    int nsp;

    if (!s)
        return -1;
    pthread_mutex_init(&s->err_lock, NULL);
    pthread_mutex_init(&s->gen_lock, NULL);
    pthread_mutex_init(&s->drain_mu, NULL);
    wh_cond_init(&s->drain_cv);
    s->cfg = cfg;
    generation_pin_config(gen); /* start_gen: its server.* settings, for good */
    generation_acquire(gen);    /* current */
    s->start_gen = s->current = gen;
    metrics_set_generation(gen->id);
    {
        int nofile = raise_nofile();
        if (clients_init(nofile) != 0) {
            snprintf(err, err_len, "out of memory for the connection table");
            goto fail;
        }
        log_msg(LOG_DEBUG, "descriptor limit", LOG_I("nofile", nofile));
    }
    apply_client_policy(cfg);
    s->watchdog = watchdog_start(cfg->threads);
    if (!s->watchdog) {
        snprintf(err, err_len, "cannot start the body-deadline thread");
        goto fail;
    }
    /* durable mode: the spool is ready before the first connection is accepted */
    if (cfg->delivery_mode == WH_DELIVERY_DURABLE) {
        struct spool_hooks hooks = {.arg = s, .deliver = spool_deliver, .rules = spool_rules};
        if (spool_open(cfg, &hooks, &s->spool, err, err_len))
            goto fail;
    }

    for (size_t i = 0; i < cfg->n_listeners && i < 64; i++) {
        const struct wh_listener *l = &cfg->listeners[i];
        bool v6 = strchr(l->host, ':') != NULL;
        p += snprintf(p, sizeof ports - (size_t)(p - ports), "%s%s%s%s:%d%s", i ? "," : "",
                      v6 ? "[" : "", l->host, v6 ? "]" : "", l->port, l->tls ? "s" : "");
    }
    snprintf(threads, sizeof threads, "%d", cfg->threads);
    snprintf(timeout, sizeof timeout, "%d", cfg->header_timeout_ms); /* see arm_headers */
    snprintf(keepalive, sizeof keepalive, "%d", keepalive_ms(cfg));
    opts[o++] = "listening_ports";
    opts[o++] = ports;
    opts[o++] = "num_threads";
    opts[o++] = threads;
    opts[o++] = "request_timeout_ms";
    opts[o++] = timeout;
    opts[o++] = "keep_alive_timeout_ms";
    opts[o++] = keepalive;
    opts[o++] = "enable_keep_alive";
    opts[o++] = "yes";
    opts[o++] = "tcp_nodelay";
    opts[o++] = "1";
    opts[o++] = "access_control_allow_origin";
    opts[o++] = "";
    opts[o++] = "max_request_size"; /* what reply_if_malformed assumes */
    opts[o++] = WH_STR(WH_HEAD_BUF_SIZE);
    if (uses_tls(cfg)) {
        opts[o++] = "ssl_certificate";
        opts[o++] = cfg->tls_certificate;
        opts[o++] = "ssl_protocol_version";
        opts[o++] = "4";
    }
    opts[o] = NULL;

    memset(&cb, 0, sizeof cb);
    cb.http_error = on_http_error;
    cb.init_connection = on_init_connection;
    cb.log_message = on_log_message;
    cb.init_ssl = on_init_ssl;
    cb.exit_thread = on_exit_thread;
    cb.begin_request = on_begin_request;
    cb.end_request = on_end_request;
    cb.connection_close = on_connection_close;
    s->ctx = mg_start(&cb, s, opts);
    if (!s->ctx) {
        snprintf(err, err_len, "cannot start the server: %s",
                 s->first_error[0] ? s->first_error : "civetweb refused its options");
        goto fail;
    }
    mg_set_request_handler(s->ctx, "**", on_request, s);
    mg_set_auth_handler(s->ctx, "**", authorize_all, NULL);
    __atomic_store_n(&s->routed, 1, __ATOMIC_RELEASE);
    {
        struct defer d = {.seconds = DEFER_ACCEPT_S};
        struct mg_server_port dp[64];

        d.n = mg_get_server_ports(s->ctx, 64, dp);
        for (int i = 0; i < d.n; i++)
            d.ports[i] = dp[i].port;
        sockets_foreach(defer_accept, &d);
        clients_watch(d.fds, d.done); /* from now on, connections are counted and capped */
        log_msg(LOG_DEBUG, "deferred accept", LOG_I("listeners", d.done),
                LOG_I("seconds", d.seconds));
    }

    nsp = mg_get_server_ports(s->ctx, 64, sp);
    for (int i = 0; i < nsp && (size_t)i < cfg->n_listeners; i++) {
        const struct wh_listener *l = &cfg->listeners[i];
        bool v6 = strchr(l->host, ':') != NULL;
        char url[128];

        snprintf(url, sizeof url, "%s://%s%s%s:%d%s", sp[i].is_ssl ? "https" : "http",
                 v6 ? "[" : "", l->host, v6 ? "]" : "", sp[i].port, cfg->path);
        log_msg(LOG_INFO, "listening", LOG_S("url", url));
    }
    __atomic_store_n(&s->started, 1, __ATOMIC_RELEASE);
    *out = s;
    return 0;
fail:
    spool_close(s->spool, NULL);
    watchdog_stop(s->watchdog);
    generation_release(s->current);
    generation_unpin_config(s->start_gen);
    pthread_mutex_destroy(&s->gen_lock);
    pthread_mutex_destroy(&s->err_lock);
    free(s);
    return -1;
}

int server_port(const struct server *s, int i)
{
    struct mg_server_port sp[64];
    int n = mg_get_server_ports(s->ctx, 64, sp);

    return i < n ? sp[i].port : -1;
}

struct generation *server_current(void *arg)
{
    struct server *s = arg;
    struct generation *g;

    pthread_mutex_lock(&s->gen_lock);
    g = s->current;
    generation_acquire(g);
    pthread_mutex_unlock(&s->gen_lock);
    return g;
}

void server_set_generation(struct server *s, struct generation *g)
{
    struct generation *old;

    generation_acquire(g);
    pthread_mutex_lock(&s->gen_lock);
    old = s->current;
    s->current = g;
    pthread_mutex_unlock(&s->gen_lock);
    metrics_set_generation(g->id);
    apply_client_policy(g->cfg);
    generation_release(old); /* destroyed when its last request ends */
}

/* Stopping, in the only order civetweb 1.15 allows: its writes fail once its stop flag is
 * set, so every request in flight must have answered before mg_stop().
 *   1. Stop accepting: each listening descriptor is replaced by a stand-in (sockets.h). The
 *      kernel refuses new connections at once, and civetweb's master thread, which polls
 *      that descriptor for input, simply sees none.
 *   2. Wait, at most timeout_ms, for the requests in flight to answer. Requests arriving on
 *      connections already open are served, with Connection: close.
 *   3. mg_stop(), while datagrams to the stand-ins wake the master thread now rather than
 *      at its next 2 s poll. */
static void stop_civetweb(void *ctx)
{
    mg_stop(ctx);
}

int server_stop(struct server *s, int timeout_ms)
{
    struct listen_stop ls;
    struct mg_server_port sp[64];
    int ports[64], n_ports;
    struct timespec until;
    int left;

    if (!s || !s->ctx) /* never started */
        return 0;
    __atomic_store_n(&s->draining, 1, __ATOMIC_RELEASE);
    n_ports = mg_get_server_ports(s->ctx, 64, sp);
    for (int i = 0; i < n_ports; i++)
        ports[i] = sp[i].port;
    clients_watch(NULL, 0); /* the descriptors are about to name stand-ins */
    sockets_stand_in_listeners(ports, n_ports, activation_shared, &ls);
    log_msg(LOG_INFO, "no longer accepting; waiting for requests in flight",
            LOG_I("in_flight", __atomic_load_n(&s->inflight, __ATOMIC_ACQUIRE)),
            LOG_I("listeners", ls.n));

    wh_deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&s->drain_mu);
    while ((left = __atomic_load_n(&s->inflight, __ATOMIC_ACQUIRE)) > 0 &&
           pthread_cond_timedwait(&s->drain_cv, &s->drain_mu, &until) == 0)
        ;
    left = __atomic_load_n(&s->inflight, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&s->drain_mu);
    if (left > 0)
        return -1; /* requests still running: the caller exits without tearing down */

    sockets_stop_waking(&ls, stop_civetweb, s->ctx);
    /* after the last request: dispatchers finish, results are written */
    if (spool_close(s->spool, &until) != 0)
        return -2; /* deliveries still running: the caller exits without tearing down */
    watchdog_stop(s->watchdog);
    generation_release(s->current);
    generation_unpin_config(s->start_gen);
    pthread_mutex_destroy(&s->gen_lock);
    pthread_mutex_destroy(&s->drain_mu);
    pthread_cond_destroy(&s->drain_cv);
    pthread_mutex_destroy(&s->err_lock);
    free(s);
    return 0;
}
