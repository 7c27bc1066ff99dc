/*
 * nats: publishes every event to a NATS subject; with JetStream, waits for the stream's ack.
 *
 * config:
 *     url:          nats://host:port (or tls://), several separated by commas (required);
 *                   no user:password in it
 *     subject:      the subject; {type} becomes the event type (required)
 *     jetstream:    true to publish to JetStream and wait for the stream's ack (default false)
 *     user:         the user to log in as (optional; with password_env)
 *     password_env: the environment variable that holds the password (optional)
 *     token_env:    the environment variable that holds a token (optional)
 *
 * The message is the raw body (the bytes that were signed) with the headers Wappcloud-Event
 * (the type) and Nats-Msg-Id (the event id): a stream drops a message whose id it saw within
 * its duplicate window, so a retried delivery adds nothing. Without JetStream the publish is
 * flushed, and nothing acknowledges or dedupes it.
 *
 * One connection per loaded configuration (a NATS connection serves many threads at once),
 * made by the first event (the server may be down at load) and then reconnected by libnats
 * by itself. While it is not connected a call fails at once, so the spool retries it later.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wapphook/plugin.h>

struct dest {
    pthread_mutex_t mu; /* for the first connection */
    natsOptions *opts;
    natsConnection *nc;
    jsCtx *js;
    char subject[256], url[512];
    int jetstream;
};

/* wapphook loads a fresh copy of this plugin at every reload and unloads the old one. libnats
 * keeps threads of its own for the whole process: unloading it with the plugin would pull the
 * code from under them. So it is pinned, once, for the life of the process. */
static void pin_libnats(void)
{
    static void *pinned;

    if (!pinned) pinned = dlopen("libnats.so.3.4", RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void nats_destroy(void *state)
{
    struct dest *d = state;

    if (d->js) jsCtx_Destroy(d->js);
    if (d->nc) natsConnection_Destroy(d->nc); /* closes it: no message in flight after */
    if (d->opts) natsOptions_Destroy(d->opts);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

static int refuse(struct dest *d, json_t *cfg, char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int refuse(struct dest *d, json_t *cfg, char *err, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    json_decref(cfg);
    nats_destroy(d);
    return WAPPHOOK_ERR;
}

static int nats_create(const struct wapphook_host *host, const char *config_json, void **state,
                       char *err, size_t err_len)
{
    json_t *cfg = json_loads(config_json, 0, NULL), *v;
    const char *key, *user = NULL, *password = NULL, *token = NULL;
    struct dest *d = calloc(1, sizeof *d);
    natsStatus s;

    (void)host;
    pin_libnats();
    json_object_foreach(cfg, key, v)
    {
        const char *env;
        if (!strcmp(key, "url") && json_is_string(v) && json_string_length(v) < sizeof d->url) {
            snprintf(d->url, sizeof d->url, "%s", json_string_value(v));
        } else if (!strcmp(key, "subject") && json_is_string(v) && json_string_length(v) &&
                   json_string_length(v) < 200 && !strpbrk(json_string_value(v), " \t\r\n*>")) {
            snprintf(d->subject, sizeof d->subject, "%s", json_string_value(v));
        } else if (!strcmp(key, "jetstream") && json_is_boolean(v)) {
            d->jetstream = json_is_true(v);
        } else if (!strcmp(key, "user") && json_is_string(v)) {
            user = json_string_value(v);
        } else if ((!strcmp(key, "password_env") || !strcmp(key, "token_env")) &&
                   json_is_string(v)) {
            if (!(env = getenv(json_string_value(v))) || !*env)
                return refuse(d, cfg, err, err_len,
                              "%s: the environment variable %s is not set or empty", key,
                              json_string_value(v));
            *(key[0] == 'p' ? &password : &token) = env;
        } else {
            return refuse(d, cfg, err, err_len,
                          "config key %s: unknown, or not the right type (url, user, "
                          "password_env, token_env: strings; subject: a subject without spaces "
                          "or wildcards; jetstream: true/false)",
                          key);
        }
    }
    if (!d->url[0] || !d->subject[0])
        return refuse(d, cfg, err, err_len, "config needs url (nats://host:port) and subject");
    for (const char *u = d->url; (u = strstr(u, "://")) != NULL; u += 3) {
        const char *at = strchr(u + 3, '@'), *end = u + 3 + strcspn(u + 3, ",/");
        if (at && at < end)
            return refuse(d, cfg, err, err_len,
                          "url: credentials in the url would end in logs: put the password in "
                          "an environment variable and name it in password_env");
    }
    if (password && !user) return refuse(d, cfg, err, err_len, "password_env needs user");
    if ((s = natsOptions_Create(&d->opts)) != NATS_OK ||
        (s = natsOptions_SetURL(d->opts, d->url)) != NATS_OK ||
        (s = natsOptions_SetName(d->opts, "wapphook")) != NATS_OK ||
        (s = natsOptions_SetTimeout(d->opts, 2000)) != NATS_OK ||
        (s = natsOptions_SetMaxReconnect(d->opts, -1)) != NATS_OK ||
        (s = natsOptions_SetReconnectWait(d->opts, 250)) != NATS_OK ||
        (user && (s = natsOptions_SetUserInfo(d->opts, user, password)) != NATS_OK) ||
        (token && (s = natsOptions_SetToken(d->opts, token)) != NATS_OK))
        return refuse(d, cfg, err, err_len, "options: %s", natsStatus_GetText(s));
    json_decref(cfg);
    pthread_mutex_init(&d->mu, NULL);
    *state = d;
    return WAPPHOOK_OK;
}

/* The subject: {type} replaced by the event type. */
static void subject_of(const struct dest *d, const char *type, char *out, size_t cap)
{
    const char *s = d->subject, *t;
    size_t n = 0;

    while ((t = strstr(s, "{type}")) != NULL && n < cap) {
        n += (size_t)snprintf(out + n, cap - n, "%.*s%s", (int)(t - s), s, type);
        s = t + 6;
    }
    if (n < cap) snprintf(out + n, cap - n, "%s", s);
}

/* The connection, made by the first call that finds none (the server may have been down at
 * load); once made, libnats keeps it and reconnects by itself. 0, or -1 with err. */
static int connect_once(struct dest *d, int timeout_ms, char *err, size_t len)
{
    natsStatus s = NATS_OK;

    pthread_mutex_lock(&d->mu);
    if (!d->nc) {
        natsOptions_SetTimeout(d->opts, timeout_ms);
        s = natsConnection_Connect(&d->nc, d->opts);
        if (s == NATS_OK && d->jetstream) s = natsConnection_JetStream(&d->js, d->nc, NULL);
        if (s != NATS_OK) {
            snprintf(err, len, "nats: cannot connect to %s: %s", d->url,
                     nats_GetLastError(NULL) ? nats_GetLastError(NULL) : natsStatus_GetText(s));
            if (d->nc) natsConnection_Destroy(d->nc);
            d->nc = NULL;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return s == NATS_OK ? 0 : -1;
}

static int nats_handle(void *state, const struct wapphook_event *ev, char *err, size_t err_len)
{
    struct dest *d = state;
    char subject[600];
    natsMsg *m = NULL;
    natsStatus s;
    const char *why = NULL;

    if (!WAPPHOOK_EVENT_HAS(ev, timeout_ms)) {
        snprintf(err, err_len, "this plugin needs wapphook with plugin ABI 1.1 or later");
        return WAPPHOOK_ERR;
    }
    if (connect_once(d, ev->timeout_ms, err, err_len)) return WAPPHOOK_ERR;
    if (natsConnection_Status(d->nc) != NATS_CONN_STATUS_CONNECTED) {
        natsConnection_GetLastError(d->nc, &why);
        snprintf(err, err_len, "nats: not connected to %s (reconnecting)%s%s", d->url,
                 why && *why ? ": " : "", why && *why ? why : "");
        return WAPPHOOK_ERR;
    }
    subject_of(d, ev->type, subject, sizeof subject);
    if ((s = natsMsg_Create(&m, subject, NULL, ev->body, (int)ev->body_len)) != NATS_OK ||
        (s = natsMsgHeader_Set(m, "Wappcloud-Event", ev->type)) != NATS_OK ||
        (s = natsMsgHeader_Set(m, "Nats-Msg-Id", ev->id)) != NATS_OK) {
        snprintf(err, err_len, "nats: %s", natsStatus_GetText(s));
        natsMsg_Destroy(m);
        return WAPPHOOK_ERR;
    }
    if (d->jetstream) {
        jsPubOptions o;
        jsPubAck *ack = NULL;
        jsErrCode code = 0;

        jsPubOptions_Init(&o);
        o.MaxWait = ev->timeout_ms;
        s = js_PublishMsg(&ack, d->js, m, &o, &code);
        jsPubAck_Destroy(ack); /* ack->Duplicate: the stream had it already, which is success */
        if (s == NATS_NO_RESPONDERS)
            snprintf(err, err_len, "nats: no JetStream stream takes subject %s (no responders)",
                     subject);
        else if (s == NATS_TIMEOUT)
            snprintf(err, err_len,
                     "nats: no ack from the stream for %s within %d ms (the handler's "
                     "timeout_ms)",
                     subject, ev->timeout_ms);
        else if (s != NATS_OK)
            snprintf(err, err_len, "nats: publish to %s failed: %s (JetStream error %d)", subject,
                     nats_GetLastError(NULL), (int)code);
    } else {
        s = natsConnection_PublishMsg(d->nc, m);
        if (s == NATS_OK) s = natsConnection_FlushTimeout(d->nc, ev->timeout_ms);
        if (s != NATS_OK)
            snprintf(err, err_len, "nats: publish to %s failed: %s", subject,
                     natsStatus_GetText(s));
    }
    natsMsg_Destroy(m);
    return s == NATS_OK ? WAPPHOOK_OK : WAPPHOOK_ERR;
}

static const struct wapphook_plugin nats = {
    WAPPHOOK_PLUGIN_HEADER, .name = "nats",        .version = "1.0.0",
    .create = nats_create,  .handle = nats_handle, .destroy = nats_destroy,
};

const struct wapphook_plugin *wapphook_plugin_entry(void)
{
    return &nats;
}
