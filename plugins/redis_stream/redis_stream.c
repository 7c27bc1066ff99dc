/*
 * redis_stream: adds every event to a Redis stream, once per event id.
 *
 * config:
 *     url:          redis://host[:port][/db] or unix:///path/redis.sock[?db=N] (required)
 *     stream:       the stream's key; {type} becomes the event type (required)
 *     maxlen:       trim the stream to about this many entries (XADD MAXLEN ~); 0: never
 *                   (default 1000000)
 *     dedupe_ttl_s: how long an event id is remembered against a second entry, in seconds
 *                   (default 86400)
 *     user:         the ACL user to log in as (optional)
 *     password_env: the environment variable that holds the password (optional); a
 *                   password written in the url is refused, so that none ends in a log
 *
 * Each entry has the fields id, type, received_at and body (the raw signed bytes). One
 * server-side script checks the event's dedupe key, adds the entry and sets the key: Redis
 * runs it whole, so a retried delivery (durable mode, a replay, another instance) adds no
 * second entry, even when the first attempt's answer was lost to a timeout.
 *
 * Calls made while another is on its way to Redis wait for it and then go together, in one
 * pipeline (../common/batch.h): a round trip for several events instead of one each.
 * Connections are pooled per loaded configuration: a batch takes an idle one or connects, and
 * gives it back when it is still sound, so a restarted Redis costs one failed batch per idle
 * connection at most. Every call keeps to the handler's budget (event->timeout_ms).
 */
#define _GNU_SOURCE
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wapphook/plugin.h>

#include "../common/batch.h"

#define MAX_IDLE 16

/* KEYS: the stream, the event's dedupe key. ARGV: ttl, maxlen, id, type, received_at, body.
 * Returns 1 when it added the entry, 0 when the event was already there. */
static const char script[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
    "if ARGV[2] ~= '0' then\n"
    "  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[3], 'type', ARGV[4],\n"
    "             'received_at', ARGV[5], 'body', ARGV[6])\n"
    "else\n"
    "  redis.call('XADD', KEYS[1], '*', 'id', ARGV[3], 'type', ARGV[4],\n"
    "             'received_at', ARGV[5], 'body', ARGV[6])\n"
    "end\n"
    "redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])\n"
    "return 1\n";

struct dest {
    const struct wapphook_host *host;
    char host_name[256], socket_path[256], user[128], password[256], stream[256];
    int port, db;
    long long maxlen, ttl;
    char maxlen_arg[24], ttl_arg[24]; /* the two as the script's arguments, made once */
    pthread_mutex_t mu;
    char sha[48]; /* the script's SHA1 once loaded (EVALSHA: the script is not resent) */
    redisContext *idle[MAX_IDLE];
    int n_idle;
    struct batch batch; /* concurrent calls, sent together */
};

/* --- config ------------------------------------------------------------------------------- */

static int bad(char *err, size_t len, const char *what)
{
    snprintf(err, len, "%s", what);
    return WAPPHOOK_ERR;
}

/* redis://[user@]host[:port][/db] or unix:///path[?db=N]; a password in it is refused. */
static int parse_url(struct dest *d, const char *url, char *err, size_t len)
{
    const char *p, *at, *end;

    if (strncmp(url, "unix://", 7) == 0) {
        const char *q = strchr(url + 7, '?');
        size_t n = q ? (size_t)(q - url - 7) : strlen(url + 7);
        if (n == 0 || n >= sizeof d->socket_path || url[7] != '/')
            return bad(err, len, "url: unix:// needs an absolute socket path");
        memcpy(d->socket_path, url + 7, n);
        if (q && sscanf(q, "?db=%d", &d->db) != 1)
            return bad(err, len, "url: the only unix:// option is ?db=N");
        return WAPPHOOK_OK;
    }
    if (strncmp(url, "redis://", 8) != 0)
        return bad(err, len, "url must start with redis:// or unix:// (TLS is not supported)");
    p = url + 8;
    end = p + strcspn(p, "/");
    if ((at = memchr(p, '@', (size_t)(end - p))) != NULL) {
        if (memchr(p, ':', (size_t)(at - p)))
            return bad(err, len,
                       "url: a password in the url would end in logs: put it in an environment "
                       "variable and name it in password_env");
        if (at - p > 0) snprintf(d->user, sizeof d->user, "%.*s", (int)(at - p), p);
        p = at + 1;
    }
    d->port = 6379;
    {
        const char *colon = *p == '[' ? strchr(p, ']') : p; /* [::1]:6379 */
        colon = colon ? memchr(colon, ':', (size_t)(end - colon)) : NULL;
        size_t n = (size_t)((colon ? colon : end) - p);
        if (*p == '[' && n >= 2) p++, n -= 2;
        if (n == 0 || n >= sizeof d->host_name) return bad(err, len, "url: no host");
        memcpy(d->host_name, p, n);
        if (colon && (sscanf(colon + 1, "%d", &d->port) != 1 || d->port < 1 || d->port > 65535))
            return bad(err, len, "url: bad port");
    }
    if (*end == '/' && end[1] && (sscanf(end + 1, "%d", &d->db) != 1 || d->db < 0))
        return bad(err, len, "url: the path must be a database number");
    return WAPPHOOK_OK;
}

static int rs_create(const struct wapphook_host *host, const char *config_json, void **state,
                     char *err, size_t err_len)
{
    json_t *cfg = json_loads(config_json, 0, NULL), *v;
    const char *key;
    struct dest *d = calloc(1, sizeof *d);
    int rc = WAPPHOOK_ERR;

    if (!d || !cfg) goto out;
    d->host = host;
    d->maxlen = 1000000;
    d->ttl = 86400;
    json_object_foreach(cfg, key, v)
    {
        if (!strcmp(key, "url") && json_is_string(v)) {
            if (parse_url(d, json_string_value(v), err, err_len)) goto out;
        } else if (!strcmp(key, "stream") && json_is_string(v) && json_string_length(v) &&
                   json_string_length(v) < 200) {
            snprintf(d->stream, sizeof d->stream, "%s", json_string_value(v));
        } else if (!strcmp(key, "maxlen") && json_is_integer(v) && json_integer_value(v) >= 0) {
            d->maxlen = json_integer_value(v);
        } else if (!strcmp(key, "dedupe_ttl_s") && json_is_integer(v) &&
                   json_integer_value(v) > 0) {
            d->ttl = json_integer_value(v);
        } else if (!strcmp(key, "user") && json_is_string(v)) {
            snprintf(d->user, sizeof d->user, "%s", json_string_value(v));
        } else if (!strcmp(key, "password_env") && json_is_string(v)) {
            const char *pw = getenv(json_string_value(v));
            if (!pw || !*pw) {
                snprintf(err, err_len, "password_env: the environment variable %s is not set",
                         json_string_value(v));
                goto out;
            }
            snprintf(d->password, sizeof d->password, "%s", pw);
        } else {
            snprintf(err, err_len,
                     "config key %s: unknown, or not the right type (url and stream: strings, "
                     "maxlen: an integer >= 0, dedupe_ttl_s: an integer > 0, user and "
                     "password_env: strings)",
                     key);
            goto out;
        }
    }
    if (!d->host_name[0] && !d->socket_path[0]) {
        snprintf(err, err_len, "config needs url (redis://host:port/db) and stream");
        goto out;
    }
    if (!d->stream[0]) {
        snprintf(err, err_len, "config needs stream (a key name; {type} becomes the event type)");
        goto out;
    }
    snprintf(d->ttl_arg, sizeof d->ttl_arg, "%lld", d->ttl);
    snprintf(d->maxlen_arg, sizeof d->maxlen_arg, "%lld", d->maxlen);
    pthread_mutex_init(&d->mu, NULL);
    batch_init(&d->batch);
    *state = d; /* no connection yet: Redis may be down now, and up by the first event */
    rc = WAPPHOOK_OK;
out:
    json_decref(cfg);
    if (rc != WAPPHOOK_OK) free(d);
    return rc;
}

/* --- connections ---------------------------------------------------------------------------- */

static struct timeval tv_ms(long long ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* An error reply to a setup command: its text, and the connection is given up. */
static redisContext *setup_failed(redisContext *c, redisReply *r, const char *what, char *err,
                                  size_t len)
{
    snprintf(err, len, "redis: %s failed: %s", what, r ? r->str : c->errstr);
    if (r) freeReplyObject(r);
    redisFree(c);
    return NULL;
}

/* A new connection, logged in and on its database, within ms. */
static redisContext *connect_one(struct dest *d, long long ms, char *err, size_t len)
{
    redisContext *c = d->socket_path[0] ? redisConnectUnixWithTimeout(d->socket_path, tv_ms(ms))
                                        : redisConnectWithTimeout(d->host_name, d->port, tv_ms(ms));
    redisReply *r;
    char msg[400];

    if (!c || c->err) {
        snprintf(err, len, "redis: cannot connect to %s:%d: %s",
                 d->socket_path[0] ? d->socket_path : d->host_name, d->socket_path[0] ? 0 : d->port,
                 c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv_ms(ms));
    /* AUTH, or a PING: a server that wants a password says so here, not later in a cryptic
     * refusal of the script */
    r = !d->password[0] ? redisCommand(c, "PING")
        : d->user[0]    ? redisCommand(c, "AUTH %s %s", d->user, d->password)
                        : redisCommand(c, "AUTH %s", d->password);
    if (!r || r->type == REDIS_REPLY_ERROR)
        return setup_failed(
            c, r, d->password[0] ? "AUTH" : "PING (set password_env if the server wants one)", err,
            len);
    freeReplyObject(r);
    if (d->db) {
        r = redisCommand(c, "SELECT %d", d->db);
        if (!r || r->type == REDIS_REPLY_ERROR) return setup_failed(c, r, "SELECT", err, len);
        freeReplyObject(r);
    }
    r = redisCommand(c, "SCRIPT LOAD %s", script);
    if (r && r->type == REDIS_REPLY_STRING && r->len < sizeof d->sha) {
        pthread_mutex_lock(&d->mu);
        memcpy(d->sha, r->str, r->len + 1);
        pthread_mutex_unlock(&d->mu);
    }
    if (r) freeReplyObject(r); /* without it, EVAL sends the script each time */
    snprintf(msg, sizeof msg, "connected to redis %s:%d db %d",
             d->socket_path[0] ? d->socket_path : d->host_name, d->socket_path[0] ? 0 : d->port,
             d->db);
    d->host->log(d->host, WAPPHOOK_LOG_INFO, msg);
    return c;
}

static redisContext *take(struct dest *d, long long ms, char *err, size_t len)
{
    redisContext *c = NULL;

    pthread_mutex_lock(&d->mu);
    if (d->n_idle) c = d->idle[--d->n_idle];
    pthread_mutex_unlock(&d->mu);
    return c ? c : connect_one(d, ms, err, len);
}

static void give_back(struct dest *d, redisContext *c)
{
    pthread_mutex_lock(&d->mu);
    if (d->n_idle < MAX_IDLE) {
        d->idle[d->n_idle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&d->mu);
    if (c) redisFree(c);
}

/* --- events --------------------------------------------------------------------------------- */

/* The stream's key: {type} replaced by the event type. */
static void stream_of(const struct dest *d, const char *type, char *out, size_t cap)
{
    const char *s = d->stream, *t;
    size_t n = 0;

    while ((t = strstr(s, "{type}")) != NULL && n < cap) {
        n += (size_t)snprintf(out + n, cap - n, "%.*s%s", (int)(t - s), s, type);
        s = t + 6;
    }
    if (n < cap) snprintf(out + n, cap - n, "%s", s);
}

/* One event's command: EVALSHA sha 2 stream seen ttl maxlen id type received_at body. */
struct call {
    const char *argv[11];
    size_t argl[11];
    char stream[600], seen[800], at[40];
};

/* Sends a batch's commands in one pipeline, the script by its SHA1 (or whole when Redis lost
 * it), and gives each call its own reply. */
static void rs_send(void *state, struct batch_job **jobs, int n, long long deadline)
{
    struct dest *d = state;
    char sha[48], errbuf[1024];
    redisContext *c;
    redisReply *r;
    int whole, redo, i;
    long long left;

    if ((left = deadline - batch_now_ms()) < 1) left = 1;
    if (!(c = take(d, left, errbuf, sizeof errbuf))) goto fail_all;
    pthread_mutex_lock(&d->mu);
    memcpy(sha, d->sha, sizeof sha); /* loaded by the first connection */
    pthread_mutex_unlock(&d->mu);
    whole = !sha[0]; /* SCRIPT LOAD failed: the script itself each time */
    for (redo = 0; redo < 2; redo++) {
        int noscript = 0;
        if ((left = deadline - batch_now_ms()) < 1) left = 1;
        redisSetTimeout(c, tv_ms(left));
        for (i = 0; i < n; i++) {
            struct call *k = jobs[i]->data;
            k->argv[0] = whole ? "EVAL" : "EVALSHA", k->argv[1] = whole ? script : sha;
            k->argl[0] = strlen(k->argv[0]), k->argl[1] = strlen(k->argv[1]);
            if (redisAppendCommandArgv(c, 11, k->argv, k->argl) != REDIS_OK) break;
        }
        if (i < n) { /* out of memory: the replies would not match the calls */
            snprintf(errbuf, sizeof errbuf, "redis: out of memory building the pipeline");
            redisFree(c);
            goto fail_all;
        }
        for (i = 0; i < n; i++) {
            struct call *k = jobs[i]->data;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) {
                /* gone or timed out: the scripts may have run all the same; a retry is safe */
                snprintf(errbuf, sizeof errbuf, "%s",
                         c->err == REDIS_ERR_IO && batch_now_ms() >= deadline - 1
                             ? "timed out (the handler's timeout_ms)"
                             : c->errstr);
                redisFree(c);
                for (; i < n; i++) {
                    k = jobs[i]->data;
                    snprintf(jobs[i]->err, jobs[i]->err_len, "redis: XADD to %s: %s", k->stream,
                             errbuf);
                    jobs[i]->rc = WAPPHOOK_ERR;
                }
                return;
            }
            jobs[i]->rc = r->type == REDIS_REPLY_INTEGER ? WAPPHOOK_OK : WAPPHOOK_ERR;
            if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) noscript = 1;
            if (jobs[i]->rc != WAPPHOOK_OK)
                snprintf(jobs[i]->err, jobs[i]->err_len, "redis: XADD to %s failed: %s", k->stream,
                         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
        }
        if (!noscript || whole) break;
        whole = 1; /* Redis restarted or its scripts were flushed: EVAL caches it again */
    }
    give_back(d, c); /* an error reply leaves the connection sound */
    return;
fail_all:
    batch_fail(jobs, n, errbuf);
}

static int rs_handle(void *state, const struct wapphook_event *ev, char *err, size_t err_len)
{
    struct dest *d = state;
    struct call k;
    struct batch_job job = {.ev = ev, .err = err, .err_len = err_len, .data = &k};

    if (!WAPPHOOK_EVENT_HAS(ev, timeout_ms))
        return bad(err, err_len, "this plugin needs wapphook with plugin ABI 1.1 or later");
    job.deadline_ms = batch_now_ms() + ev->timeout_ms;
    stream_of(d, ev->type, k.stream, sizeof k.stream);
    snprintf(k.seen, sizeof k.seen, "%s:wapphook-seen:%s", k.stream, ev->id);
    snprintf(k.at, sizeof k.at, "%.6f", ev->received_at);
    k.argv[2] = "2", k.argv[3] = k.stream, k.argv[4] = k.seen, k.argv[5] = d->ttl_arg;
    k.argv[6] = d->maxlen_arg, k.argv[7] = ev->id, k.argv[8] = ev->type, k.argv[9] = k.at;
    for (int i = 2; i < 10; i++)
        k.argl[i] = strlen(k.argv[i]);
    k.argv[10] = ev->body, k.argl[10] = ev->body_len;
    /* calls made while another is under way go together in its successor's pipeline */
    return batch_submit(&d->batch, &job, rs_send, d);
}

static void rs_destroy(void *state)
{
    struct dest *d = state;

    for (int i = 0; i < d->n_idle; i++)
        redisFree(d->idle[i]);
    pthread_mutex_destroy(&d->mu);
    batch_destroy(&d->batch);
    free(d);
}

static const struct wapphook_plugin redis_stream = {
    WAPPHOOK_PLUGIN_HEADER, .name = "redis_stream", .version = "1.0.0",
    .create = rs_create,    .handle = rs_handle,    .destroy = rs_destroy,
};

const struct wapphook_plugin *wapphook_plugin_entry(void)
{
    return &redis_stream;
}
