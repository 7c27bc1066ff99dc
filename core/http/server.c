#define _GNU_SOURCE
#include "server.h"

#include "base/base.h"

#include "clients.h"
#include "runtime/runtime.h"
#include "request.h"
#include "reply.h"
#include "activation.h"
#include "socket_table.h"
#include "spool/spool.h"
#include "body_deadline.h"

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
        if (!s->first_error[0]) snprintf(s->first_error, sizeof s->first_error, "%s", message);
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

/* Every handshake takes the current generation's TLS material (SIGHUP loads it anew): its
 * minimum version and TLS 1.2 suites before either is chosen (the ClientHello callback), its
 * certificate and key where the server name is settled (civetweb's own server-name callback, which
 * would put back the pair loaded at start, is replaced: there is one domain). SSL_set_SSL_CTX takes
 * a reference, so a handshake keeps the pair it started with across reloads. */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    struct generation *g = generation_slot_get(&((struct server *)arg)->current);

    (void)alert;
    SSL_set_min_proto_version(ssl, g->cfg->tls_min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_set_cipher_list(ssl, g->cfg->tls_ciphers); /* checked when the generation loaded */
    generation_release(g);
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    struct generation *g = generation_slot_get(&((struct server *)arg)->current);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

    (void)alert;
    if (g->tls) SSL_set_SSL_CTX(ssl, g->tls);
    generation_release(g);
    return name && *name ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_NOACK;
}

/* Header deadlines (server.header_timeout_ms). civetweb 1.15 bounds the headers of a
 * connection's first request itself: its request_timeout_ms, which wapphook sets to
 * header_timeout_ms, bounds their sum (checked after each wait, and each wait by the same
 * value: a drip is cut within two header timeouts, a pause at one), the TLS handshake
 * before them, and each pause inside a body. A request on a kept-alive connection gets only
 * civetweb's per-wait bound, so the body-deadline thread (which also bounds body reads) is armed
 * after each answer until the next request's headers are complete (begin_request). */
static void arm_headers(const struct mg_connection *c, long long extra_ms)
{
    struct server *s = mg_get_user_data(mg_get_context(c));
    const struct mg_request_info *ri = mg_get_request_info(c);

    if (!s || !ri) return;
    body_deadline_arm(s->deadlines, wh_mono_ms() + extra_ms + s->cfg->header_timeout_ms,
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

static int on_begin_request(struct mg_connection *c)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    if (s && body_deadline_disarm_mine(s->deadlines)) {
        mg_disable_connection_keep_alive(c); /* cut: nothing more will be read from it */
        return reply_error(c, 408, "request headers not received in time", true);
    }
    /* civetweb accepts from mg_start on, and the handler can only be set after it: a
     * handed-over socket (socket activation) has connections queued by then, which would
     * get civetweb's own 404. Until the handler is in place, requests are served here. */
    if (s && !__atomic_load_n(&s->routed, __ATOMIC_ACQUIRE)) return pipeline_request(c, s);
    return 0; /* civetweb goes on to our handler */
}

static void on_connection_close(const struct mg_connection *c)
{
    struct server *s = mg_get_user_data(mg_get_context(c));

    if (s) body_deadline_disarm_mine(s->deadlines);
}

/* A worker leaves: free what it cached (its HMAC contexts). */
static void on_exit_thread(const struct mg_context *ctx, int thread_type, void *thread_pointer)
{
    (void)ctx;
    (void)thread_type;
    (void)thread_pointer;
    signature_thread_cleanup();
}

/* civetweb calls this with its fresh SSL_CTX; returning 1 means "fully set up". */
static int on_init_ssl(void *ssl_ctx, void *user_data)
{
    struct server *s = user_data;
    char err[WH_ERR_LEN];

    if (tls_material_apply(ssl_ctx, s->cfg, err, sizeof err)) {
        log_msg(LOG_ERROR, "TLS set-up failed", LOG_S("error", err));
        return -1;
    }
    SSL_CTX_set_client_hello_cb(ssl_ctx, on_client_hello, s);
    SSL_CTX_set_tlsext_servername_callback(ssl_ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ssl_ctx, s);
    return 1;
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

    if (d->done < 64 && socket_table_listening_on(fd, local, d->ports, d->n) &&
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

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
        struct rlimit up = {.rlim_cur = want > rl.rlim_cur ? want : rl.rlim_cur,
                            .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0) rl = up;
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
    struct server *s = wh_xcalloc(1, sizeof *s);
    const struct wh_config *cfg = gen->cfg;
    struct mg_callbacks cb;
    char ports[2048] = "", threads[16], timeout[16], keepalive[16], *p = ports;
    const char *opts[32];
    int o = 0;
    struct mg_server_port sp[64];
    int nsp;

    if (!s) return -1;
    pthread_mutex_init(&s->err_lock, NULL);
    pthread_mutex_init(&s->drain_mu, NULL);
    wh_cond_init(&s->drain_cv);
    s->cfg = cfg;
    generation_pin_config(gen); /* start_gen: its server.* settings, for good */
    generation_slot_init(&s->current, gen);
    s->start_gen = gen;
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
    s->deadlines = body_deadline_start(cfg->threads);
    if (!s->deadlines) {
        snprintf(err, err_len, "cannot start the body-deadline thread");
        goto fail;
    }
    /* durable mode: the spool is ready before the first connection is accepted */
    if (cfg->delivery_mode == WH_DELIVERY_DURABLE) {
        struct spool_hooks hooks = durable_hooks(&s->current);
        if (spool_open(cfg, &hooks, &s->spool, err, err_len)) goto fail;
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
    if (tls_material_needed(cfg)) {
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
    mg_set_request_handler(s->ctx, "**", pipeline_request, s);
    mg_set_auth_handler(s->ctx, "**", reply_authorize_all, NULL);
    __atomic_store_n(&s->routed, 1, __ATOMIC_RELEASE);
    {
        struct defer d = {.seconds = DEFER_ACCEPT_S};
        struct mg_server_port dp[64];

        d.n = mg_get_server_ports(s->ctx, 64, dp);
        for (int i = 0; i < d.n; i++)
            d.ports[i] = dp[i].port;
        socket_table_foreach(defer_accept, &d);
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
    body_deadline_stop(s->deadlines);
    generation_slot_destroy(&s->current);
    generation_unpin_config(s->start_gen);
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

void server_set_generation(struct server *s, struct generation *g)
{
    generation_slot_set(&s->current, g); /* the old one ends with its last request */
    metrics_set_generation(g->id);
    apply_client_policy(g->cfg);
}

/* Stopping, in the only order civetweb 1.15 allows: its writes fail once its stop flag is
 * set, so every request in flight must have answered before mg_stop().
 *   1. Stop accepting: each listening descriptor is replaced by a stand-in (socket_table.h). The
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
    socket_table_stand_in(ports, n_ports, activation_shared, &ls);
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
    if (left > 0) return -1; /* requests still running: the caller exits without tearing down */

    socket_table_stop_waking(&ls, stop_civetweb, s->ctx);
    /* after the last request: dispatchers finish, results are written */
    if (spool_close(s->spool, &until) != 0)
        return -2; /* deliveries still running: the caller exits without tearing down */
    body_deadline_stop(s->deadlines);
    generation_slot_destroy(&s->current);
    generation_unpin_config(s->start_gen);
    pthread_mutex_destroy(&s->drain_mu);
    pthread_cond_destroy(&s->drain_cv);
    pthread_mutex_destroy(&s->err_lock);
    free(s);
    return 0;
}
