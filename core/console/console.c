#define _GNU_SOURCE
#include "console.h"

#include "json_out.h"

#include <ctype.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define SESSIONS 32
#define SESSION_S (12 * 3600) /* a sign-in lasts this long */
#define COOKIE "wapphook_session"

struct session {
    char id[65], csrf[65];
    double expires;
};

struct console {
    struct generation_slot *slot;
    int public;                /* the listener is not on loopback: a token, always */
    char *session_token;       /* the token the sessions were made with (with mu) */
    struct spool_admin *spool; /* durable mode */
    int stopping;              /* atomic: streams end */
    pthread_mutex_t mu;        /* sessions */
    struct session sessions[SESSIONS];
};

int console_open(const struct wh_config *cfg, struct generation_slot *slot, int durable,
                 struct console **out, char *err, size_t err_len)
{
    struct console *k = wh_xcalloc(1, sizeof *k);

    k->slot = slot;
    k->public = !address_is_loopback_host(cfg->admin);
    if (durable && spool_admin_open(cfg, &k->spool, err, err_len)) {
        free(k);
        return -1;
    }
    if (!durable) history_configure(cfg->console_history, cfg->history_body_bytes);
    pthread_mutex_init(&k->mu, NULL);
    *out = k;
    return 0;
}

void console_reload(struct console *k, const struct wh_config *cfg)
{
    if (k && !k->spool) history_configure(cfg->console_history, cfg->history_body_bytes);
}

void console_stop_streams(struct console *k)
{
    if (k) __atomic_store_n(&k->stopping, 1, __ATOMIC_RELAXED);
}

void console_close(struct console *k)
{
    if (!k) return;
    spool_admin_close(k->spool);
    pthread_mutex_destroy(&k->mu);
    if (k->session_token) {
        explicit_bzero(k->session_token, strlen(k->session_token));
        free(k->session_token);
    }
    explicit_bzero(k->sessions, sizeof k->sessions);
    free(k);
}

void console_reply_free(struct console_reply *r)
{
    buf_free(&r->body);
    if (r->stream_bearer) {
        explicit_bzero(r->stream_bearer, strlen(r->stream_bearer));
        free(r->stream_bearer);
        r->stream_bearer = NULL;
    }
}

/* --- replies ---------------------------------------------------------------------------------- */

static int json_reply(struct console_reply *r, int status)
{
    r->status = status;
    r->content_type = "application/json";
    if (r->body.failed) {
        buf_free(&r->body);
        memset(&r->body, 0, sizeof r->body);
        r->status = 500;
        buf_str(&r->body, "{\"error\":\"out of memory\"}");
    }
    r->data = r->body.p ? r->body.p : "";
    r->len = r->body.len;
    return 1;
}

static int error_reply(struct console_reply *r, int status, const char *msg)
{
    r->body.len = 0;
    buf_str(&r->body, "{\"error\":");
    json_out_str(&r->body, msg, strlen(msg));
    buf_str(&r->body, "}");
    return json_reply(r, status);
}

/* --- requests --------------------------------------------------------------------------------- */

/* The value of query parameter name, %-decoded into out: 1, or 0 when absent. */
static int query_get(const char *q, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);

    for (const char *p = q; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        size_t o = 0;
        if (strncmp(p, name, nl) || p[nl] != '=') continue;
        for (p += nl + 1; *p && *p != '&' && o + 1 < cap; p++) {
            if (*p == '+') {
                out[o++] = ' ';
            } else if (*p == '%' && isxdigit((unsigned char)p[1]) &&
                       isxdigit((unsigned char)p[2])) {
                char hex[3] = {p[1], p[2], 0};
                out[o++] = (char)strtol(hex, NULL, 16);
                p += 2;
            } else {
                out[o++] = *p;
            }
        }
        out[o] = '\0';
        return 1;
    }
    return 0;
}

/* Compares without an early exit (a token's bytes are not revealed by timing). */
static int same_secret(const char *a, size_t an, const char *b)
{
    size_t bn = strlen(b);
    unsigned char d = an != bn;

    for (size_t i = 0; i < an; i++)
        d |= (unsigned char)(a[i] ^ b[i % (bn ? bn : 1)]);
    return d == 0;
}

static void random_hex(char out[65])
{
    unsigned char raw[32];

    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) abort(); /* never on Linux >= 3.17 */
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
}

/* With k->mu: sessions made with another token (a reload changed it) end. */
static void sessions_follow(struct console *k, const char *token)
{
    if (k->session_token && token && strcmp(k->session_token, token) == 0) return;
    explicit_bzero(k->sessions, sizeof k->sessions);
    if (k->session_token) {
        explicit_bzero(k->session_token, strlen(k->session_token));
        free(k->session_token);
    }
    k->session_token = token ? strdup(token) : NULL;
}

/* The session the request's cookie names, copied into *out: 1, or 0. */
static int session_of(struct console *k, const char *token, const char *cookie, struct session *out)
{
    const char *p = cookie ? strstr(cookie, COOKIE "=") : NULL;
    char id[65];
    size_t n;
    int found = 0;

    if (!p || (p != cookie && p[-1] != ' ' && p[-1] != ';')) return 0;
    p += sizeof COOKIE;
    n = strcspn(p, "; ");
    if (n != 64) return 0;
    memcpy(id, p, 64);
    id[64] = '\0';
    pthread_mutex_lock(&k->mu);
    sessions_follow(k, token);
    for (int i = 0; i < SESSIONS && !found; i++)
        if (k->sessions[i].expires > wh_now_s() && same_secret(id, 64, k->sessions[i].id)) {
            *out = k->sessions[i];
            found = 1;
        }
    pthread_mutex_unlock(&k->mu);
    return found;
}

static void session_new(struct console *k, const char *token, struct session *out)
{
    int oldest = 0;

    random_hex(out->id);
    random_hex(out->csrf);
    out->expires = wh_now_s() + SESSION_S;
    pthread_mutex_lock(&k->mu);
    sessions_follow(k, token);
    for (int i = 1; i < SESSIONS; i++)
        if (k->sessions[i].expires < k->sessions[oldest].expires) oldest = i;
    k->sessions[oldest] = *out;
    pthread_mutex_unlock(&k->mu);
}

static void session_end(struct console *k, const struct session *s)
{
    pthread_mutex_lock(&k->mu);
    for (int i = 0; i < SESSIONS; i++)
        if (strcmp(k->sessions[i].id, s->id) == 0) memset(&k->sessions[i], 0, sizeof *s);
    pthread_mutex_unlock(&k->mu);
}

/* An Origin that is not the listener's own ("http://" and the Host asked for). */
static int foreign_origin(const struct console_request *rq)
{
    return rq->origin &&
           (!rq->host || strncmp(rq->origin, "http://", 7) || strcmp(rq->origin + 7, rq->host));
}

enum access { DENIED, OPEN, BEARER, SESSION };

/* Who is asking: 401/403 written into r when no one allowed. */
static enum access check_access(struct console *k, const struct wh_config *cfg,
                                const struct console_request *rq, int post, struct session *s,
                                struct console_reply *r)
{
    const char *token = cfg->console_token;

    /* on every POST, whatever its credentials: a page of another origin cannot post here */
    if (post && foreign_origin(rq)) {
        error_reply(r, 403, "cross-origin request refused");
        return DENIED;
    }
    if (!token) {
        /* a name other than a loopback one may be a DNS rebinding of loopback by a web page
         * elsewhere; and a listener others can reach never opens without a token, even when
         * a reload took it away (the listener's address changes only at a restart) */
        if (k->public) {
            error_reply(r, 401, "unauthorized");
            return DENIED;
        }
        if (!address_is_loopback_host(rq->host)) {
            error_reply(r, 403, "the console without a token answers loopback names only");
            return DENIED;
        }
        return OPEN;
    }
    if (rq->authorization && !strncasecmp(rq->authorization, "Bearer ", 7) &&
        same_secret(rq->authorization + 7, strlen(rq->authorization + 7), token))
        return BEARER;
    if (session_of(k, token, rq->cookie, s)) {
        if (post && (!rq->csrf || !same_secret(rq->csrf, strlen(rq->csrf), s->csrf))) {
            error_reply(r, 403, "missing or wrong X-CSRF-Token");
            return DENIED;
        }
        return SESSION;
    }
    error_reply(r, 401, "unauthorized");
    return DENIED;
}

/* --- the API ---------------------------------------------------------------------------------- */

static void session_json(const struct wh_config *cfg, struct spool_admin *spool, const char *auth,
                         const char *csrf, struct wh_buf *b)
{
    buf_printf(b, "{\"auth\":\"%s\",\"csrf\":\"%s\",\"mode\":\"%s\",\"kept\":\"%s\",", auth, csrf,
               spool ? "durable" : "sync", spool ? "spool" : "memory");
    buf_printf(b, "\"history\":%d,\"keep_delivered_s\":%lld,\"generation\":%lu}",
               spool ? 0 : cfg->console_history, cfg->keep_delivered_s, metrics_generation());
}

static int api_session(struct console *k, const struct wh_config *cfg,
                       const struct console_request *rq, struct console_reply *r)
{
    struct session s;
    int post = !strcmp(rq->method, "POST");

    if (!strcmp(rq->path, "/api/session/end")) {
        if (!post) return error_reply(r, 405, "method not allowed");
        if (check_access(k, cfg, rq, 1, &s, r) == DENIED) return 1;
        if (session_of(k, cfg->console_token, rq->cookie, &s)) session_end(k, &s);
        snprintf(r->headers, sizeof r->headers,
                 "Set-Cookie: " COOKIE "=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict\r\n");
        buf_str(&r->body, "{\"auth\":\"signed out\"}");
        return json_reply(r, 200);
    }
    if (!post) { /* who am I: the page asks this first */
        enum access a = check_access(k, cfg, rq, 0, &s, r);
        if (a == DENIED) return 1;
        session_json(cfg, k->spool,
                     a == OPEN     ? "none"
                     : a == BEARER ? "bearer"
                                   : "session",
                     a == SESSION ? s.csrf : "", &r->body);
        return json_reply(r, 200);
    }
    /* sign in: {"token": "..."} */
    if (foreign_origin(rq)) return error_reply(r, 403, "cross-origin request refused");
    {
        json_t *j = json_loadb(rq->body ? rq->body : "", rq->body_len, 0, NULL);
        const char *t = json_string_value(json_object_get(j, "token"));
        int ok =
            t && cfg->console_token &&
            same_secret(t, json_string_length(json_object_get(j, "token")), cfg->console_token);
        json_decref(j);
        if (!cfg->console_token) return error_reply(r, 400, "no token is configured");
        if (!ok) return error_reply(r, 401, "unauthorized");
    }
    session_new(k, cfg->console_token, &s);
    snprintf(r->headers, sizeof r->headers,
             "Set-Cookie: " COOKIE "=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Strict\r\n", s.id,
             SESSION_S);
    session_json(cfg, k->spool, "session", s.csrf, &r->body);
    return json_reply(r, 200);
}

struct events_out {
    struct wh_buf *b;
    int n;
};

static void event_row(void *arg, const struct store_event *e)
{
    struct events_out *o = arg;

    if (o->n++) buf_str(o->b, ",");
    json_out_event(o->b, e);
    buf_str(o->b, "}");
}

static int api_events(struct console *k, const struct wh_config *cfg,
                      const struct console_request *rq, struct console_reply *r)
{
    char type[80], state[16], text[512], before[32], limit[16];
    struct store_query q = {.state = -1, .limit = 50};

    if (query_get(rq->query, "type", type, sizeof type) && *type) q.type = type;
    if (query_get(rq->query, "q", text, sizeof text) && *text) q.q = text;
    if (query_get(rq->query, "state", state, sizeof state) && *state) {
        for (int i = 0; i < EV_STATES; i++)
            if (!strcmp(state, store_event_states[i])) q.state = i;
        if (q.state < 0)
            return error_reply(r, 400, "state must be ok, pending, failed, dead or unrouted");
    }
    if (query_get(rq->query, "before", before, sizeof before) && *before) {
        char *end;
        q.before = strtoll(before, &end, 10);
        if (*end || q.before <= 0) return error_reply(r, 400, "before must be an event id");
    }
    if (query_get(rq->query, "limit", limit, sizeof limit)) {
        char *end;
        long n = strtol(limit, &end, 10);
        if (*end || n < 1 || n > 200) return error_reply(r, 400, "limit must be 1 to 200");
        q.limit = (int)n;
    }
    if (!k->spool) {
        history_events_json(&q, cfg->signature_header, &r->body);
        return json_reply(r, 200);
    }
    {
        struct events_out o = {.b = &r->body};
        long long next = 0;
        int rc;
        buf_str(&r->body, "{\"events\":[");
        rc = spool_admin_events(k->spool, &q, event_row, &o, &next);
        if (rc == -2) return error_reply(r, 501, "not available on this spool");
        if (rc < 0) return error_reply(r, 503, "spool read failed");
        if (next)
            buf_printf(&r->body, "],\"next\":\"%lld\"}", next);
        else
            buf_str(&r->body, "],\"next\":null}");
        return json_reply(r, 200);
    }
}

struct detail_out {
    struct wh_buf *b;
    const char *signature;
    int detail;
};

static void detail_json(void *arg, const struct store_detail *d)
{
    struct detail_out *o = arg;

    json_out_event(o->b, &d->e);
    if (!o->detail) {
        buf_str(o->b, "}");
        return;
    }
    buf_str(o->b, ",\"headers\":");
    json_out_headers(o->b, d->headers_json, o->signature);
    buf_str(o->b, ",\"body_cut\":false,\"kept\":\"spool\",\"payload\":");
    json_out_payload(o->b, d->body, d->body_len, 0);
    buf_str(o->b, ",\"attempts\":[");
    for (int i = 0; i < d->n_attempts; i++) {
        int nth = 1;
        for (int j = 0; j < i; j++)
            nth += strcmp(d->attempts[j].handler, d->attempts[i].handler) == 0;
        if (i) buf_str(o->b, ",");
        json_out_attempt(o->b, &d->attempts[i], nth);
    }
    buf_str(o->b, "]}");
}

static void event_only(void *arg, const struct store_event *e)
{
    json_out_event(arg, e);
    buf_str(arg, "}");
}

/* E of event id (with its detail or not) into b: 1, 0 when unknown, -1/-2 on spool errors. */
static int event_json(struct console *k, const char *signature, long long id, int detail,
                      struct wh_buf *b)
{
    struct detail_out o = {.b = b, .signature = signature, .detail = detail};

    if (!k->spool) return history_event_json(id, detail, b);
    if (!detail) return spool_admin_event(k->spool, id, event_only, b); /* no body read */
    return spool_admin_detail(k->spool, id, detail_json, &o);
}

/* Sync mode: the kept event's handlers (or the one named) again, now, in this thread. */
static long long replay_sync(struct console *k, long long id, const char *handler, int *status)
{
    struct history_copy c;
    struct generation *g;
    struct wh_header h[64];
    json_t *kept, *hdrs;
    long long n = 0;
    int rc = history_copy(id, &c);

    if (rc <= 0) {
        *status = rc < 0 ? 409 : 404;
        return 0;
    }
    g = generation_slot_get(k->slot);
    {
        struct wh_buf b = {0};
        const char *key;
        json_t *v;
        int nh = 0;
        history_event_json(id, 1, &b); /* its headers, as kept (the signature redacted) */
        kept = json_loads(b.p ? b.p : "{}", 0, NULL);
        hdrs = json_object_get(kept, "headers");
        buf_free(&b);
        json_object_foreach(hdrs, key, v) if (nh < 64 && json_is_string(v))
        {
            h[nh].name = key;
            h[nh++].value = json_string_value(v);
        }
        for (int i = 0; i < c.n_handlers; i++) {
            const struct bound_handler *bh;
            struct wh_event ev = {.type = c.type,
                                  .body = c.body,
                                  .body_len = c.body_len,
                                  .received_at = c.received_at,
                                  .headers = h,
                                  .n_headers = nh,
                                  .seq = c.seq,
                                  .attempt = c.attempts[i] + 1};
            struct dispatch_attempt att = {.at = wh_now_s()};
            char err[4096] = "";
            if (handler && strcmp(handler, c.handlers[i])) continue;
            n++;
            if (!(bh = generation_handler(g, c.handlers[i]))) {
                struct bound_handler gone = {.name = c.handlers[i]};
                att.outcome = WH_OUTCOME_FAILED;
                snprintf(err, sizeof err, "handler %s is not in the running configuration",
                         c.handlers[i]);
                history_attempt(&id, &gone, &att, err);
                continue;
            }
            dispatch_handler(g, bh, &ev, err, sizeof err, &att);
            history_attempt(&id, bh, &att, err);
        }
    }
    json_decref(kept); /* hdrs with it */
    generation_release(g);
    history_copy_free(&c);
    history_end(id);
    *status = n || !handler ? 202 : 404;
    return n;
}

static int api_event(struct console *k, const struct wh_config *cfg,
                     const struct console_request *rq, struct console_reply *r, int post)
{
    const char *p = rq->path + strlen("/api/events/");
    char *end;
    long long id = strtoll(p, &end, 10);
    int replay = !strcmp(end, "/replay");

    if (id <= 0 || end == p || (*end && !replay)) return error_reply(r, 404, "not found");
    if (post != replay) return error_reply(r, 405, "method not allowed");
    if (!replay) {
        int rc = event_json(k, cfg->signature_header, id, 1, &r->body);
        if (rc == -2) return error_reply(r, 501, "not available on this spool");
        if (rc < 0) return error_reply(r, 503, "spool read failed");
        if (rc == 0) return error_reply(r, 404, "no such event");
        return json_reply(r, 200);
    } else {
        char handler[128] = "";
        long long n;
        int status = 202;
        if (rq->body_len) {
            json_t *j = json_loadb(rq->body, rq->body_len, 0, NULL);
            json_t *h = json_object_get(j, "handler");
            if (!json_is_object(j) || (h && !json_is_string(h))) {
                json_decref(j);
                return error_reply(r, 400, "the body must be {} or {\"handler\": NAME}");
            }
            if (h) snprintf(handler, sizeof handler, "%s", json_string_value(h));
            json_decref(j);
        }
        if (!k->spool) {
            n = replay_sync(k, id, *handler ? handler : NULL, &status);
            if (status == 409) return error_reply(r, 409, "its body was kept cut: not replayable");
            if (status == 404) return error_reply(r, 404, "no such event or handler");
            log_msg(LOG_INFO, "console replay", LOG_I("event_id", id),
                    LOG_S("handler", *handler ? handler : "*"), LOG_I("replayed", n));
        } else {
            n = spool_admin_replay_event(k->spool, id, *handler ? handler : NULL);
            if (n == -3) return error_reply(r, 404, "no such event or handler");
            if (n == -2) return error_reply(r, 501, "not available on this spool");
            if (n < 0) return error_reply(r, 503, "spool write failed");
            if (n == 0) {
                struct wh_buf probe = {0};
                int rc = event_json(k, cfg->signature_header, id, 0, &probe);
                buf_free(&probe);
                if (rc == 0) return error_reply(r, 404, "no such event");
            }
            log_msg(LOG_INFO, "console replay", LOG_I("event_id", id),
                    LOG_S("handler", *handler ? handler : "*"), LOG_I("replayed", n));
        }
        buf_printf(&r->body, "{\"replayed\":%lld}", n);
        return json_reply(r, 202);
    }
}

static int api(struct console *k, const struct wh_config *cfg, const struct console_request *rq,
               struct console_reply *r)
{
    struct session s;
    int post = !strcmp(rq->method, "POST");
    enum access acc;

    if (!post && strcmp(rq->method, "GET")) return error_reply(r, 405, "method not allowed");
    if (!strncmp(rq->path, "/api/session", 12) && (!rq->path[12] || !strcmp(rq->path + 12, "/end")))
        return api_session(k, cfg, rq, r);
    if ((acc = check_access(k, cfg, rq, post, &s, r)) == DENIED) return 1;
    if (!strcmp(rq->path, "/api/events"))
        return post ? error_reply(r, 405, "method not allowed") : api_events(k, cfg, rq, r);
    if (!strncmp(rq->path, "/api/events/", 12)) return api_event(k, cfg, rq, r, post);
    if (!strcmp(rq->path, "/api/dead/replay")) {
        long long n = 0;
        if (!post) return error_reply(r, 405, "method not allowed");
        if (k->spool && (n = spool_admin_replay_dead(k->spool)) < 0)
            return error_reply(r, 503, "spool write failed");
        log_msg(LOG_INFO, "console replay of dead letters", LOG_I("replayed", n));
        buf_printf(&r->body, "{\"replayed\":%lld}", n);
        return json_reply(r, 202);
    }
    if (!strcmp(rq->path, "/api/stats")) {
        char w[24];
        long long window = 900;
        if (post) return error_reply(r, 405, "method not allowed");
        if (query_get(rq->query, "window_s", w, sizeof w)) {
            char *end;
            window = strtoll(w, &end, 10);
            if (*end || window < 1 || window > ACTIVITY_WINDOW_MAX_S)
                return error_reply(r, 400, "window_s must be 1 to 86400");
        }
        activity_stats_json(window, &r->body);
        return json_reply(r, 200);
    }
    if (!strcmp(rq->path, "/api/stream")) {
        if (post) return error_reply(r, 405, "method not allowed");
        /* what let it in, checked again while it streams: a sign-out, an expired session or a
         * token changed by a reload ends it */
        r->stream = 1;
        r->status = 200;
        r->content_type = "text/event-stream";
        r->stream_access = (int)acc;
        if (acc == SESSION) snprintf(r->stream_session, sizeof r->stream_session, "%s", s.id);
        if (acc == BEARER && !(r->stream_bearer = strdup(rq->authorization + 7)))
            return error_reply(r, 503, "out of memory");
        return 1;
    }
    return error_reply(r, 404, "not found");
}

int console_handle(struct console *k, const struct console_request *rq, struct console_reply *r)
{
    const struct console_asset *asset;
    struct generation *g;
    int rc;

    memset(r, 0, sizeof *r);
    if (strncmp(rq->path, "/api/", 5) && strcmp(rq->path, "/api")) {
        if (!(asset = console_asset(rq->path))) return 0;
        if (strcmp(rq->method, "GET") && strcmp(rq->method, "HEAD"))
            return error_reply(r, 405, "method not allowed");
        r->status = 200;
        r->content_type = asset->content_type;
        r->data = asset->data;
        r->len = asset->len;
        return 1;
    }
    g = generation_slot_get(k->slot);
    rc = api(k, g->cfg, rq, r);
    generation_release(g);
    return rc;
}

/* --- the stream ------------------------------------------------------------------------------- */

/* Is the stream's reader still let in, by what let it in? */
static int still_allowed(struct console *k, const struct console_reply *r)
{
    struct generation *g = generation_slot_get(k->slot);
    const char *token = g->cfg->console_token;
    struct session s;
    char cookie[sizeof COOKIE + 70];
    int ok;

    switch (r->stream_access) {
    case OPEN:
        ok = !token && !k->public;
        break;
    case BEARER:
        ok = token && r->stream_bearer &&
             same_secret(r->stream_bearer, strlen(r->stream_bearer), token);
        break;
    default:
        snprintf(cookie, sizeof cookie, COOKIE "=%s", r->stream_session);
        ok = token && session_of(k, token, cookie, &s);
    }
    generation_release(g);
    return ok;
}

void console_stream(struct console *k, const struct console_reply *r,
                    int (*write)(void *arg, const char *s, size_t n), void *arg)
{
    unsigned long long seq;
    unsigned checked = 0; /* its credentials again: each quiet second, each 256 events */
    int quiet_s = 0;
    char signature[128];

    {
        struct generation *g = generation_slot_get(k->slot);
        snprintf(signature, sizeof signature, "%s", g->cfg->signature_header);
        generation_release(g);
    }
    if (activity_reader_join(&seq) != 0) {
        write(arg, "event: busy\ndata: {\"error\":\"too many streams\"}\n\n", 49);
        return;
    }
    if (write(arg, ": wapphook\n\n", 12) == 0) /* the head goes out now, not at the first event */
        while (!__atomic_load_n(&k->stopping, __ATOMIC_RELAXED)) {
            enum activity_kind kind;
            long long id;
            int rc = activity_next(&seq, 1000, &kind, &id);
            if ((rc == 0 || ++checked % 256 == 0) && !still_allowed(k, r)) {
                write(arg, "event: signed-out\ndata: {}\n\n", 29);
                break;
            }
            if (rc < 0) {
                log_msg(LOG_WARN, "console stream reader disconnected",
                        LOG_S("reason", "fell behind by more than the notices kept"));
                break;
            }
            if (rc == 0) {
                if (++quiet_s == 15 && write(arg, ": idle\n\n", 8)) break; /* dead readers */
                quiet_s %= 15;
                continue;
            }
            quiet_s = 0;
            {
                struct wh_buf b = {0};
                int ok = 0;
                buf_str(&b, kind == ACTIVITY_RECEIVED ? "event: received\ndata: "
                                                      : "event: outcome\ndata: ");
                if (event_json(k, signature, id, 0, &b) == 1) {
                    buf_str(&b, "\n\n");
                    ok = !b.failed;
                }
                rc = ok ? write(arg, b.p, b.len) : 0;
                buf_free(&b);
                if (rc) {
                    log_msg(LOG_INFO, "console stream reader disconnected",
                            LOG_S("reason", "gone, or stopped reading for 5 s"));
                    break;
                }
            }
        }
    activity_reader_leave();
}
