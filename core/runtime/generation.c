#include "generation.h"

#include "base/base.h"

#include "lua/wl.h"
#include "plugin_loader.h"
#include "tls_material.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What requests use: plugins (destroy, dlclose), Lua states, shared dictionaries, the
 * verifier. The config may stay pinned after this (generation_pin_config). */
static void destroy_runtime(struct generation *g)
{
    for (size_t i = 0; g->hooks && i < g->cfg->n_hooks; i++) {
        for (size_t j = 0; j < g->hooks[i].n; j++) {
            plugin_unload(g->hooks[i].handlers[j].plugin);
            free(g->hooks[i].handlers[j].name);
        }
        free(g->hooks[i].handlers);
    }
    free(g->hooks);
    g->hooks = NULL;
    wl_runtime_free(g->lua);
    g->lua = NULL;
    signature_verifier_free(g->verifier);
    g->verifier = NULL;
    tls_material_free(g->tls); /* handshakes that took it keep their own reference */
    g->tls = NULL;
}

static void destroy(struct generation *g)
{
    if (!g) return;
    destroy_runtime(g);
    manifest_free(g->cfg);
    free(g);
}

static int bind_handlers(struct generation *g, char *err, size_t err_len)
{
    const struct wh_config *cfg = g->cfg;

    g->hooks = wh_xcalloc(cfg->n_hooks, sizeof *g->hooks);
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        const struct wh_hook *hook = &cfg->hooks[i];
        struct bound_hook *bh = &g->hooks[i];

        bh->type = hook->type;
        bh->handlers = wh_xcalloc(hook->n_handlers, sizeof *bh->handlers);
        for (size_t j = 0; j < hook->n_handlers; j++) {
            const struct wh_handler *h = &hook->handlers[j];
            struct bound_handler *b = &bh->handlers[j];
            char name[600];

            b->h = h;
            bh->n = j + 1;
            if (h->kind == WH_HANDLER_LUA) {
                b->script = wl_runtime_script(g->lua, h->path);
                snprintf(name, sizeof name, "lua:%s:%s", h->display, h->function);
            } else if (h->kind == WH_HANDLER_EXEC) {
                snprintf(name, sizeof name, "exec:%s", h->display);
            } else {
                char where[600];

                snprintf(where, sizeof where, "%s:%d", cfg->file, h->line);
                if (plugin_load(h->path, h->config, where, &b->plugin, err, err_len)) return -1;
                snprintf(name, sizeof name, "plugin:%s", plugin_name(b->plugin));
            }
            b->name = wh_xstrdup(name);
            b->series = metrics_handler_series(name);
            if (h->max_concurrent && cfg->delivery_mode == WH_DELIVERY_DURABLE)
                log_msg(LOG_WARN,
                        "max_concurrent has no effect in durable mode: deliveries "
                        "are bounded by delivery.workers",
                        LOG_S("handler", name), LOG_S("file", cfg->file), LOG_I("line", h->line));
        }
        if (strcmp(hook->type, "*") == 0)
            g->any = bh;
        else
            bh->series = metrics_event_series(hook->type);
    }
    return 0;
}

static int build(const char *manifest_file, unsigned long id, bool secrets, struct generation **out,
                 char *err, size_t err_len);

int generation_build(const char *manifest_file, unsigned long id, struct generation **out,
                     char *err, size_t err_len)
{
    return build(manifest_file, id, true, out, err, err_len);
}

int generation_build_no_secrets(const char *manifest_file, struct generation **out, char *err,
                                size_t err_len)
{
    return build(manifest_file, 1, false, out, err, err_len);
}

static int build(const char *manifest_file, unsigned long id, bool secrets, struct generation **out,
                 char *err, size_t err_len)
{
    struct generation *g = calloc(1, sizeof *g);
    struct wh_secret *keys = NULL;

    if (!g) return -1;
    g->refs = 1;
    g->holds = 1;
    g->id = id;
    /* without secrets (try) there is no HTTP either: no TLS material to load */
    if ((secrets ? manifest_load(manifest_file, &g->cfg, err, err_len)
                 : manifest_load_no_secrets(manifest_file, &g->cfg, err, err_len)) ||
        (secrets && tls_material_load(g->cfg, &g->tls, err, err_len)))
        goto fail;
    if (!secrets) goto runtime; /* nothing to verify: no verifier */
    keys = wh_xcalloc(g->cfg->n_secrets, sizeof *keys);
    for (size_t i = 0; i < g->cfg->n_secrets; i++) {
        keys[i].key = g->cfg->secrets[i].key;
        keys[i].len = g->cfg->secrets[i].len;
    }
    if (signature_verifier_new(keys, g->cfg->n_secrets, &g->verifier, err, err_len)) goto fail;
    free(keys);
    keys = NULL;
runtime:
    if (wl_runtime_new(g->cfg, &g->lua, err, err_len) || bind_handlers(g, err, err_len)) goto fail;
    exec_set_limit(g->cfg->exec_max_concurrent); /* every build that succeeds is installed */
    *out = g;
    return 0;
fail:
    free(keys);
    destroy(g);
    return -1;
}

void generation_acquire(struct generation *g)
{
    __atomic_add_fetch(&g->holds, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED);
}

/* The last reference ends the runtime; the last hold of any kind frees the rest. The runtime
 * is gone before this thread gives up its hold, so whoever frees finds it ended. */
void generation_release(struct generation *g)
{
    if (!g) return;
    if (__atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) == 0) destroy_runtime(g);
    if (__atomic_sub_fetch(&g->holds, 1, __ATOMIC_ACQ_REL) == 0) destroy(g);
}

void generation_pin_config(struct generation *g)
{
    __atomic_add_fetch(&g->holds, 1, __ATOMIC_RELAXED);
}

void generation_unpin_config(struct generation *g)
{
    if (g && __atomic_sub_fetch(&g->holds, 1, __ATOMIC_ACQ_REL) == 0) destroy(g);
}

const struct bound_hook *generation_hook(const struct generation *g, const char *type)
{
    for (size_t i = 0; i < g->cfg->n_hooks; i++)
        if (strcmp(g->hooks[i].type, type) == 0) return &g->hooks[i];
    return NULL;
}

const struct bound_handler *generation_handler(const struct generation *g, const char *name)
{
    for (size_t i = 0; i < g->cfg->n_hooks; i++)
        for (size_t j = 0; j < g->hooks[i].n; j++)
            if (strcmp(g->hooks[i].handlers[j].name, name) == 0) return &g->hooks[i].handlers[j];
    return NULL;
}

/* --- the current generation ---------------------------------------------------------------- */

void generation_slot_init(struct generation_slot *slot, struct generation *g)
{
    pthread_mutex_init(&slot->lock, NULL);
    generation_acquire(g);
    slot->g = g;
}

struct generation *generation_slot_get(struct generation_slot *slot)
{
    struct generation *g;

    pthread_mutex_lock(&slot->lock);
    g = slot->g;
    generation_acquire(g);
    pthread_mutex_unlock(&slot->lock);
    return g;
}

void generation_slot_set(struct generation_slot *slot, struct generation *g)
{
    struct generation *old;

    generation_acquire(g);
    pthread_mutex_lock(&slot->lock);
    old = slot->g;
    slot->g = g;
    pthread_mutex_unlock(&slot->lock);
    generation_release(old); /* destroyed when its last user lets go */
}

void generation_slot_destroy(struct generation_slot *slot)
{
    generation_release(slot->g);
    slot->g = NULL;
    pthread_mutex_destroy(&slot->lock);
}
