/*
 * The endpoint's pipeline (docs/security.md, "What it answers"): framing, path,
 * client caps, method; for a POST its body under the request deadline, then signature,
 * Content-Type, event type, JSON, and dispatch (sync mode) or the spool (durable mode).
 */
#define _GNU_SOURCE
#include "server.h"

#include "clients.h"
#include "request.h"
#include "reply.h"

#include <civetweb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    int n = request_challenge_body(ri->query_string, body, sizeof body, &why);

    if (n < 0) return reply_error(c, 400, why, close);
    return reply(c, 200, body, (size_t)n, close, NULL);
}

enum body_result {
    BODY_OK = 0,
    BODY_TOO_LARGE = 413,
    BODY_TIMEOUT = 408,
    BODY_BAD = 400,
    BODY_SHORT = 1
};

/* Reads the whole body, never more than max bytes (a chunked body is cut at max + 1).
 * *last_wait_ms: how long the last read took (a short body after a long wait was a pause
 * past civetweb's per-wait bound, not the client closing). */
static enum body_result read_all(struct mg_connection *c, long long content_length, long long max,
                                 char **out, size_t *len, long long *last_wait_ms)
{
    size_t cap = content_length >= 0 ? (size_t)content_length + 1 : 16384;
    size_t got = 0;
    size_t limit = content_length >= 0 ? (size_t)content_length : (size_t)max + 1;
    char *buf = malloc(cap);

    if (!buf) return BODY_BAD;
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
        if (n == 0) break;
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

/* read_all under the request's deadline: civetweb bounds each wait for data, the body-deadline
 * thread bounds their sum (see body_deadline.h). */
static enum body_result read_body(struct server *s, struct mg_connection *c,
                                  const struct mg_request_info *ri, long long content_length,
                                  long long deadline, char **out, size_t *len)
{
    int slot = body_deadline_arm(s->deadlines, deadline, ri->remote_addr, ri->remote_port,
                                 ri->server_port);
    long long waited = 0;
    enum body_result r = read_all(c, content_length, s->cfg->max_body_bytes, out, len, &waited);

    if (body_deadline_disarm(s->deadlines, slot) || wh_mono_ms() > deadline) {
        if (r == BODY_OK) free(*out);
        return BODY_TIMEOUT;
    }
    if (r == BODY_SHORT) /* a pause of header_timeout_ms (see arm_headers), or the end */
        return waited >= s->cfg->header_timeout_ms - 20 ? BODY_TIMEOUT : BODY_BAD;
    return r;
}

/* Durable mode: 200 only once the event is in the spool, on disk. */
static int reply_stored(struct mg_connection *c, enum spool_result r)
{
    switch (r) {
    case SPOOL_STORED:
    case SPOOL_DUPLICATE:
        return REPLY_LITERAL(c, 200, "{\"status\":\"ok\"}", false, NULL);
    case SPOOL_FULL:
        return REPLY_LITERAL(c, 503, "{\"error\":\"spool full\"}", false, "Retry-After: 5\r\n");
    default:
        return REPLY_LITERAL(c, 503, "{\"error\":\"spool unavailable\"}", false,
                             "Retry-After: 1\r\n");
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
    return REPLY_LITERAL(c, 503, "{\"error\":\"overloaded\"}", close, "Retry-After: 1\r\n");
}

static int on_post(struct server *s, const struct generation *g, struct mg_connection *c,
                   const struct mg_request_info *ri, long long started, struct post_ctx *pc)
{
    const struct wh_config *cfg = s->cfg;  /* limits: server.* */
    const struct wh_config *gcfg = g->cfg; /* secrets, headers, delivery: this generation */
    struct wh_header h[64] = {{0}};        /* gcc 12 cannot see copy_headers fill it */
    int nh = copy_headers(ri, h);
    const char *cl, *te, *expect, *sig, *ctype, *event;
    int n_cl = wh_header_find(h, nh, "Content-Length", &cl);
    int n_te = wh_header_find(h, nh, "Transfer-Encoding", &te);
    unsigned char mac[WH_MAC_LEN];
    char *body = NULL;
    size_t body_len = 0;
    enum json_text_kind kind;
    enum body_result br;
    int status, n_sig;

    /* framing: refuse every shape that two parsers could read differently */
    if (n_cl && n_te) return reply_error(c, 400, "both Content-Length and Transfer-Encoding", true);
    for (int i = 0; i < nh && n_cl > 1; i++)
        if (strcasecmp(h[i].name, "Content-Length") == 0 && strcmp(h[i].value, cl) != 0)
            return reply_error(c, 400, "conflicting Content-Length headers", true);
    if (n_te > 1 || (n_te && strcasecmp(te, "chunked") != 0))
        return reply_error(c, 400, "unsupported Transfer-Encoding", true);
    if (ri->content_length > cfg->max_body_bytes)
        return reply_error(c, 413, "body larger than server.max_body_bytes", true);

    if (n_cl || n_te) {
        if (wh_header_find(h, nh, "Expect", &expect) && strcasecmp(expect, "100-continue") == 0) {
            static const char go_on[] = "HTTP/1.1 100 Continue\r\n\r\n";
            mg_write(c, go_on, sizeof go_on - 1);
        }
        br = read_body(s, c, ri, n_cl ? ri->content_length : -1, started + cfg->request_timeout_ms,
                       &body, &body_len);
        if (br == BODY_TOO_LARGE)
            return reply_error(c, 413, "body larger than server.max_body_bytes", true);
        if (br == BODY_TIMEOUT)
            return reply_error(c, 408, "request body not received in time", true);
        if (br != BODY_OK) return reply_error(c, 400, "incomplete or malformed request body", true);
    } else {
        body = wh_xstrdup(""); /* no framing at all: an empty body, and no keep-alive after it */
        mg_disable_connection_keep_alive(c);
    }

    n_sig = wh_header_find(h, nh, gcfg->signature_header, &sig);
    if (n_sig != 1 || signature_parse(sig, strlen(sig), mac) != 0 ||
        signature_check(g->verifier, mac, body, body_len) != 0) {
        log_msg(LOG_WARN, "signature check failed", LOG_S("remote", pc->client),
                LOG_S("reason", n_sig == 0                               ? "missing"
                                : n_sig > 1                              ? "repeated header"
                                : signature_parse(sig, strlen(sig), mac) ? "malformed"
                                                                         : "no secret matches"));
        metrics_signature_failure();
        status = reply_error(c, 401, "invalid signature", false);
        goto done;
    }
    if (wh_header_find(h, nh, "Content-Type", &ctype) != 1 ||
        !request_content_type_is_json(ctype)) {
        status = reply_error(c, 415, "Content-Type must be application/json", false);
        goto done;
    }
    if (wh_header_find(h, nh, gcfg->event_header, &event) != 1) {
        status = reply_error(c, 400, "missing or repeated event type header", false);
        goto done;
    }
    if (!manifest_event_type_valid(event, strlen(event))) {
        status = reply_error(c, 400, "invalid event type", false);
        goto done;
    }
    pc->event_type = event;
    kind = json_text_check(body, body_len);
    if (kind != JSON_TEXT_OBJECT) {
        status = reply_error(
            c, 400, kind == JSON_TEXT_OTHER ? "body is not a JSON object" : "invalid JSON", false);
        goto done;
    }
    {
        struct wh_event ev = {.type = event,
                              .body = body,
                              .body_len = body_len,
                              .received_at = wh_now_s(),
                              .headers = h,
                              .n_headers = nh};

        struct dispatch_result res = {0};

        if (s->spool) {
            status = reply_stored(c, durable_store(s->spool, g, &ev));
        } else if (dispatch_reserve(g, event) != 0) {
            status = reply_overloaded(c, REJECT_OVERLOADED, false); /* at max_concurrent */
        } else {
            long long hid;
            int failed;
            ev.seq = wh_event_next_seq(); /* its id (durable mode's is the spool's) */
            /* the console's history keeps it, with each handler's attempt */
            hid = history_begin(g, &ev);
            res.attempt = hid ? history_attempt : NULL;
            res.arg = &hid;
            failed = dispatch_event(g, &ev, &res) != 0;
            history_end(hid);
            dispatch_unreserve(g, event);
            if (!failed || gcfg->on_handler_error == WH_ON_ERROR_ACK)
                status = REPLY_LITERAL(c, 200, "{\"status\":\"ok\"}", false, NULL);
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

    if (gcfg->max_inflight >= 0) return gcfg->max_inflight;
    return derived > 0 ? derived : 1;
}

/* Who sent the request: the peer, or the client a trusted proxy names. */
static bool identify(const struct wh_config *gcfg, const struct mg_request_info *ri,
                     struct client_key *client)
{
    struct client_key peer;
    const char *xff[64];
    size_t n = 0;

    if (address_parse(ri->remote_addr, &peer) != 0) {
        memset(client, 0, sizeof *client);
        return false;
    }
    if (!gcfg->n_trusted_proxies ||
        !address_cidr_list_has(gcfg->trusted_proxies, gcfg->n_trusted_proxies, &peer)) {
        *client = peer;
        return false;
    }
    for (int i = 0; i < ri->num_headers && n < 64; i++)
        if (strcasecmp(ri->http_headers[i].name, "X-Forwarded-For") == 0)
            xff[n++] = ri->http_headers[i].value;
    return address_identify_client(&peer, xff, n, gcfg->trusted_proxies, gcfg->n_trusted_proxies,
                                   client);
}

/* What a request holds while it is handled, given back just before its answer is written
 * (reply.h), so that the sender's next request never finds it still taken. */
struct held {
    struct server *s;
    bool post;   /* a place under max_inflight */
    bool client; /* a place under the proxied client's cap */
    struct client_key key;
};

static void give_back_held(void *arg)
{
    struct held *h = arg;

    if (h->post) __atomic_sub_fetch(&h->s->posts, 1, __ATOMIC_ACQ_REL);
    if (h->client) clients_leave(&h->key);
    h->post = h->client = false;
}

int pipeline_request(struct mg_connection *c, void *arg)
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
    g = generation_slot_get(&s->current);
    proxied = identify(g->cfg, ri, &client);
    if (proxied) /* else the client is the peer, whose address civetweb has as text */
        address_format(&client, client_text, sizeof client_text);
    pc.client = proxied ? client_text : ri->remote_addr;
    held.key = client;
    reply_release_next(give_back_held, &held);

    if ((status = reply_if_malformed(c)) != 0) {
        ; /* answered: 400 or 431, connection closed */
    } else if (!reply_request_path_matches(c, s->cfg->path)) {
        status = reply_error(c, 404, "not found", reply_request_has_body(c));
    } else if (proxied &&
               !(held.client = clients_enter(&client, g->cfg->max_connections_per_client) == 0)) {
        /* the cap a direct client meets at accept(), met here by a client behind a proxy */
        status = reply_overloaded(c, REJECT_CLIENT_CAP, reply_request_has_body(c));
    } else if (strcmp(ri->request_method, "POST") == 0) {
        if (g->cfg->allow_from &&
            !address_cidr_list_has(g->cfg->allow_from, g->cfg->n_allow_from, &client)) {
            shed_note(REJECT_FORBIDDEN);
            status = reply_error(c, 403, "forbidden", reply_request_has_body(c)); /* body unread */
        } else {
            /* durable mode stores and answers: its admission is the spool's (503 when full) */
            int cap = s->spool ? 0 : max_inflight(s, g->cfg);
            int n = __atomic_add_fetch(&s->posts, 1, __ATOMIC_ACQ_REL);
            held.post = true;
            status = cap > 0 && n > cap
                         ? reply_overloaded(c, REJECT_OVERLOADED, reply_request_has_body(c))
                         : on_post(s, g, c, ri, started, &pc);
        }
    } else if (strcmp(ri->request_method, "GET") == 0) {
        status = on_get(c, ri, reply_request_has_body(c));
    } else {
        status = REPLY_LITERAL(c, 405, "{\"error\":\"method not allowed\"}",
                               reply_request_has_body(c), "Allow: GET, POST\r\n");
    }
    reply_release_now(); /* if no answer was written */
    if (proxied)
        log_msg(LOG_INFO, "request", LOG_S("method", ri->request_method),
                LOG_S("path", ri->local_uri ? ri->local_uri : ri->request_uri),
                LOG_I("status", status), LOG_S("remote", pc.client), LOG_S("peer", ri->remote_addr),
                LOG_S("event", pc.event_type ? pc.event_type : ""),
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
