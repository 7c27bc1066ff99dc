#include "admin.h"

#include "server.h"

#include "base/base.h"
#include "conf/conf.h"
#include "reply.h"
#include "activation.h"
#include "socket_table.h"
#include "runtime/runtime.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct admin {
    struct mg_context *ctx;
    struct generation_slot current; /* the console's, apart from the server's */
    struct console *console;        /* NULL: console.enabled false */
};

/* Console requests' bodies (a sign-in, a replay's handler) are small. */
#define CONSOLE_BODY_MAX 4096
/* What the kernel may hold for a stream reader: past it, a reader that stopped reading makes
 * its writes wait (5 s at most, request_timeout_ms, then it is disconnected) while the
 * notices it misses pile up (past 4,096 of them it is disconnected too). */
#define STREAM_SNDBUF 65536

/* The stream's socket, found by its peer (civetweb hands out no descriptors). */
struct stream_sock {
    int local_port, peer_port;
    char peer[64];
};

static int small_send_buffer(int fd, const struct sockaddr_storage *local, void *arg)
{
    const struct stream_sock *ss = arg;
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    char addr[64] = "";
    int bytes = STREAM_SNDBUF;

    if (socket_table_port(local) != ss->local_port ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 ||
        socket_table_port(&peer) != ss->peer_port)
        return 0;
    if (peer.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, addr, sizeof addr);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, addr, sizeof addr);
    if (strcmp(addr, ss->peer) != 0) return 0;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    return 1;
}

static int stream_write(void *arg, const char *s, size_t n)
{
    return mg_write(arg, s, n) == (int)n ? 0 : -1;
}

/* The console's page or API: 0 when path is not the console's. */
static int on_console(struct admin *a, struct mg_connection *c)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    struct console_request rq = {.method = ri->request_method,
                                 .path = ri->local_uri,
                                 .query = ri->query_string,
                                 .host = mg_get_header(c, "Host"),
                                 .origin = mg_get_header(c, "Origin"),
                                 .authorization = mg_get_header(c, "Authorization"),
                                 .cookie = mg_get_header(c, "Cookie"),
                                 .csrf = mg_get_header(c, "X-CSRF-Token")};
    struct console_reply r;
    char body[CONSOLE_BODY_MAX + 1], headers[512];
    int st;

    if (ri->content_length > CONSOLE_BODY_MAX)
        return reply_error(c, 413, "body larger than 4096 bytes", true);
    if (ri->content_length > 0) {
        long long got = 0;
        while (got < ri->content_length) {
            int n = mg_read(c, body + got, (size_t)(ri->content_length - got));
            if (n <= 0) break;
            got += n;
        }
        if (got != ri->content_length) return reply_error(c, 400, "body cut short", true);
        body[got] = '\0';
        rq.body = body;
        rq.body_len = (size_t)got;
    } else if (reply_request_has_body(c)) {
        return reply_error(c, 411, "a body needs a Content-Length", true);
    }
    if (!console_handle(a->console, &rq, &r)) return 0;
    snprintf(headers, sizeof headers, "%s" CONSOLE_SECURITY_HEADERS, r.headers);
    if (r.stream) {
        /* no Content-Length: the body lasts as long as the stream; then the connection ends */
        struct stream_sock ss = {.local_port = ri->server_port, .peer_port = ri->remote_port};
        snprintf(ss.peer, sizeof ss.peer, "%s", ri->remote_addr);
        socket_table_foreach(small_send_buffer, &ss);
        mg_disable_connection_keep_alive(c);
        mg_printf(c,
                  "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n%s"
                  "Connection: close\r\n\r\n",
                  headers);
        console_stream(a->console, &r, stream_write, c);
        console_reply_free(&r);
        return 200;
    }
    st = reply_typed(c, r.status, r.content_type, r.data, r.len, false, headers);
    console_reply_free(&r);
    return st;
}

static int on_admin(struct mg_connection *c, void *arg)
{
    struct admin *a = arg;
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *path = ri->local_uri;
    bool body = reply_request_has_body(c);
    int st;

    if ((st = reply_if_malformed(c)) != 0) return st;
    if (!reply_request_path_matches(c, "/healthz") && !reply_request_path_matches(c, "/metrics")) {
        if (a->console && (st = on_console(a, c)) != 0) return st;
        return reply_error(c, 404, "not found", body);
    }
    if (strcmp(ri->request_method, "GET") != 0)
        return REPLY_LITERAL(c, 405, "{\"error\":\"method not allowed\"}", body, "Allow: GET\r\n");
    if (path[1] == 'h') {
        char out[8192], stuck[8000];
        int n;
        if (stuck_count() == 0) {
            n = snprintf(out, sizeof out, "{\"status\":\"ok\",\"generation\":%lu}",
                         metrics_generation());
            return reply(c, 200, out, (size_t)n, false, NULL);
        }
        /* a supervisor restarts on this; in durable mode a restart loses nothing */
        stuck_json(stuck, sizeof stuck);
        n = snprintf(out, sizeof out, "{\"status\":\"degraded\",\"generation\":%lu,\"stuck\":%s}",
                     metrics_generation(), stuck);
        return reply(c, 503, out, (size_t)n, false, NULL);
    } else {
        size_t len;
        char *text = metrics_render(&len);
        if (!text) return reply_error(c, 500, "out of memory", false);
        st =
            reply_typed(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, false, NULL);
        free(text);
        return st;
    }
}

static int on_admin_log(const struct mg_connection *c, const char *message)
{
    (void)c;
    log_msg(LOG_INFO, "civetweb (admin)", LOG_S("detail", message));
    return 1;
}

int admin_start(struct generation *g, struct server *srv, struct admin **out, char *err,
                size_t err_len)
{
    struct admin *a = wh_xcalloc(1, sizeof *a);
    const struct wh_config *cfg = g->cfg;
    const char *hostport = cfg->admin;
    struct mg_callbacks cb;
    struct mg_server_port sp;
    char ports[128], url[160];
    const char *colon = strrchr(hostport, ':');
    const char *opts[] = {"listening_ports", ports, "num_threads",
                          /* the console's streams hold a thread each: room for them and two
                           * more for everything else */
                          cfg->console_enabled ? WH_STR(ACTIVITY_READERS_MAX_PLUS_2) : "2",
                          "request_timeout_ms", "5000", "enable_keep_alive", "yes",
                          "keep_alive_timeout_ms", "2000", "access_control_allow_origin", "",
                          "max_request_size", WH_STR(WH_HEAD_BUF_SIZE), NULL};

    if (!a || !colon) return -1;
    generation_slot_init(&a->current, g);
    if (cfg->console_enabled &&
        console_open(cfg, &a->current, srv->spool != NULL, &a->console, err, err_len)) {
        generation_slot_destroy(&a->current);
        free(a);
        return -1;
    }
    /* "[::1]:9090" is civetweb's form already; "127.0.0.1:9090" too */
    snprintf(ports, sizeof ports, "%s", hostport);
    memset(&cb, 0, sizeof cb);
    cb.http_error = reply_http_error;
    cb.log_message = on_admin_log;
    a->ctx = mg_start(&cb, a, opts);
    if (!a->ctx) {
        snprintf(err, err_len, "cannot start the admin listener on %s (in use?)", hostport);
        console_close(a->console);
        generation_slot_destroy(&a->current);
        free(a);
        return -1;
    }
    mg_set_request_handler(a->ctx, "**", on_admin, a);
    mg_set_auth_handler(a->ctx, "**", reply_authorize_all, NULL);
    if (mg_get_server_ports(a->ctx, 1, &sp) == 1) {
        snprintf(url, sizeof url, "http://%.*s:%d", (int)(colon - hostport), hostport, sp.port);
        log_msg(LOG_INFO, "admin listening", LOG_S("url", url));
    }
    *out = a;
    return 0;
}

static void stop_civetweb(void *ctx)
{
    mg_stop(ctx);
}

void admin_stop(struct admin *a)
{
    struct mg_server_port sp;
    struct listen_stop ls = {.n = 0};

    if (!a) return;
    console_stop_streams(a->console); /* each ends within a second: mg_stop waits for them */
    /* at once, not at civetweb's next 2 s poll (socket_table.h) */
    if (mg_get_server_ports(a->ctx, 1, &sp) == 1)
        socket_table_stand_in(&sp.port, 1, activation_shared, &ls);
    socket_table_stop_waking(&ls, stop_civetweb, a->ctx);
    console_close(a->console);
    generation_slot_destroy(&a->current);
    free(a);
}

void admin_set_generation(struct admin *a, struct generation *g)
{
    if (!a) return;
    generation_slot_set(&a->current, g);
    console_reload(a->console, g->cfg);
}
