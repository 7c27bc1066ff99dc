/*
 * counter: a starting point for your own plugin. Counts events, logs a line every
 * `every` events and a total when the configuration is retired, and refuses events
 * whose type is listed in `reject` (to show how a failure reaches the sender).
 *
 * config (all optional):
 *     every:  log every N events (default 1000)
 *     reject: [event types to fail]
 *
 * Build it out of tree:
 *     cc -shared -fPIC $(pkg-config --cflags wapphook-plugin) -o counter.so counter.c -ljansson
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wapphook/plugin.h>

struct counter {
    const struct wapphook_host *host; /* valid until destroy() */
    long every;
    json_t *reject;   /* array of strings; read-only after create, so safe to share */
    long long events; /* updated from many threads: atomics only */
};

static int counter_create(const struct wapphook_host *host, const char *config_json, void **state,
                          char *err, size_t err_len)
{
    json_t *cfg = json_loads(config_json, 0, NULL);
    json_t *every = json_object_get(cfg, "every");
    json_t *reject = json_object_get(cfg, "reject");
    struct counter *c;

    if ((every && (!json_is_integer(every) || json_integer_value(every) < 1)) ||
        (reject && !json_is_array(reject))) {
        snprintf(err, err_len, "every must be a positive integer, reject a list of types");
        json_decref(cfg);
        return WAPPHOOK_ERR;
    }
    c = calloc(1, sizeof *c);
    c->host = host;
    c->every = every ? (long)json_integer_value(every) : 1000;
    c->reject = reject ? json_incref(reject) : json_array();
    json_decref(cfg);
    *state = c;
    return WAPPHOOK_OK;
}

static int counter_handle(void *state, const struct wapphook_event *ev, char *err, size_t err_len)
{
    struct counter *c = state;
    long long n = __atomic_add_fetch(&c->events, 1, __ATOMIC_RELAXED);
    size_t i;
    json_t *t;

    json_array_foreach(c->reject, i, t)
    {
        if (json_is_string(t) && strcmp(json_string_value(t), ev->type) == 0) {
            snprintf(err, err_len, "events of type %s are rejected by configuration", ev->type);
            return WAPPHOOK_ERR;
        }
    }
    if (n % c->every == 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "counter: %lld events so far", n);
        c->host->log(c->host, WAPPHOOK_LOG_INFO, msg);
    }
    return WAPPHOOK_OK;
}

static void counter_destroy(void *state)
{
    struct counter *c = state;
    char msg[128];

    snprintf(msg, sizeof msg, "counter: %lld events in this configuration", c->events);
    c->host->log(c->host, WAPPHOOK_LOG_INFO, msg);
    json_decref(c->reject);
    free(c);
}

static const struct wapphook_plugin counter = {
    WAPPHOOK_PLUGIN_HEADER,   .name = "counter",        .version = "1.0.0",
    .create = counter_create, .handle = counter_handle, .destroy = counter_destroy,
};

const struct wapphook_plugin *wapphook_plugin_entry(void)
{
    return &counter;
}
