/*
 * A generation: everything loaded from one manifest — the config, the signature verifier,
 * the Lua runtime and the plugin instances — built completely or not at all, then shared
 * read-only by every request. It is reference-counted: whoever holds a reference may use
 * it; the last generation_release() destroys it (plugin destroy(), dlclose, Lua states
 * closed). A request takes one reference for its whole life.
 */
#ifndef WH_GENERATION_H
#define WH_GENERATION_H

#include "conf/conf.h"

#include <openssl/types.h>
#include <pthread.h>

#include <stddef.h>

struct event_series;
struct handler_series;
struct wl_runtime;
struct plugin;
struct verifier;

struct bound_handler {
    const struct wh_handler *h;    /* in gen->cfg */
    int script;                    /* Lua: index in gen->lua */
    struct plugin *plugin;         /* plugin: the loaded instance */
    char *name;                    /* for logs: "lua:scripts/a.lua:handle", "plugin:file_sink" */
    struct handler_series *series; /* its latency histogram (metrics.h) */
    int running; /* calls under way, against h->max_concurrent: changed with atomics only,
                  * through the const pointers requests hold */
};

struct bound_hook {
    const char *type;            /* in gen->cfg */
    struct event_series *series; /* events of this type (metrics.h); NULL for "*" */
    struct bound_handler *handlers;
    size_t n;
};

struct generation {
    int refs;  /* users of the whole generation */
    int holds; /* refs + config pins: the struct and its cfg live while any */
    unsigned long id;
    struct wh_config *cfg;
    struct verifier *verifier;
    struct wl_runtime *lua;
    struct bound_hook *hooks;     /* parallel to cfg->hooks */
    const struct bound_hook *any; /* the "*" hook, or NULL */
    SSL_CTX *tls; /* this manifest's TLS material (tls_material.h), or NULL (no https);
                   * new handshakes take it, each keeping its own reference */
};

/* Loads manifest_file and everything it names. 0 with *out (one reference, the caller's),
 * or -1 with "FILE:LINE: reason" in err. */
int generation_build(const char *manifest_file, unsigned long id, struct generation **out,
                     char *err, size_t err_len);

/* The same without reading the secrets and without a verifier: for `wapphook try`, which
 * runs handlers on a body it was given, never on a request. */
int generation_build_no_secrets(const char *manifest_file, struct generation **out, char *err,
                                size_t err_len);

void generation_acquire(struct generation *g);
void generation_release(struct generation *g);
/* Keeps only g->cfg (and g itself) alive: for the server's settings, which come from the
 * first generation, without keeping its plugins, Lua states and dictionaries once it is
 * replaced. */
void generation_pin_config(struct generation *g);
void generation_unpin_config(struct generation *g);

const struct bound_hook *generation_hook(const struct generation *g, const char *type);
/* The handler with this name (bound_handler.name), in any hook, or NULL. */
const struct bound_handler *generation_handler(const struct generation *g, const char *name);

/* The generation new work uses: requests, durable deliveries, TLS handshakes. A reload
 * puts the new one in place; whoever took the old one keeps it until it lets go. */
struct generation_slot {
    pthread_mutex_t lock; /* guards taking a reference to g */
    struct generation *g;
};

/* The slot holds its own reference to g. */
void generation_slot_init(struct generation_slot *slot, struct generation *g);
/* The current generation, with a reference for the caller (generation_release). */
struct generation *generation_slot_get(struct generation_slot *slot);
void generation_slot_set(struct generation_slot *slot, struct generation *g);
void generation_slot_destroy(struct generation_slot *slot);

#endif
