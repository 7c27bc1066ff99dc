#include "admin.h"

#include "base/base.h"
#include "conf/conf.h"
#include "reply.h"
#include "activation.h"
#include "socket_table.h"
#include "runtime/runtime.h"

#include <civetweb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct admin {
    struct mg_context *ctx;
};

static int on_admin(struct mg_connection *c, void *arg)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *path = ri->local_uri;
    bool body = reply_request_has_body(c);
    int st;

    (void)arg;
    if ((st = reply_if_malformed(c)) != 0) return st;
    if (!reply_request_path_matches(c, "/healthz") && !reply_request_path_matches(c, "/metrics"))
        return reply_error(c, 404, "not found", body);
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

int admin_start(const char *hostport, struct admin **out, char *err, size_t err_len)
{
    struct admin *a = wh_xcalloc(1, sizeof *a);
    struct mg_callbacks cb;
    struct mg_server_port sp;
    char ports[128], url[160];
    const char *colon = strrchr(hostport, ':');
    const char *opts[] = {"listening_ports",
                          ports,
                          "num_threads",
                          "2",
                          "request_timeout_ms",
                          "5000",
                          "enable_keep_alive",
                          "yes",
                          "keep_alive_timeout_ms",
                          "2000",
                          "access_control_allow_origin",
                          "",
                          "max_request_size",
                          WH_STR(WH_HEAD_BUF_SIZE),
                          NULL};

    if (!a || !colon) return -1;
    /* "[::1]:9090" is civetweb's form already; "127.0.0.1:9090" too */
    snprintf(ports, sizeof ports, "%s", hostport);
    memset(&cb, 0, sizeof cb);
    cb.http_error = reply_http_error;
    cb.log_message = on_admin_log;
    a->ctx = mg_start(&cb, a, opts);
    if (!a->ctx) {
        snprintf(err, err_len, "cannot start the admin listener on %s (in use?)", hostport);
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
    /* at once, not at civetweb's next 2 s poll (socket_table.h) */
    if (mg_get_server_ports(a->ctx, 1, &sp) == 1)
        socket_table_stand_in(&sp.port, 1, activation_shared, &ls);
    socket_table_stop_waking(&ls, stop_civetweb, a->ctx);
    free(a);
}
