#include "plugin_loader.h"

#include "log.h"

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wapphook/plugin.h>

/* The smallest plugin struct this host understands: version 1.0 ends with destroy. */
#define PLUGIN_STRUCT_MIN (offsetof(struct wapphook_plugin, destroy) + sizeof(void (*)(void *)))

struct plugin {
    void *dl;
    const struct wapphook_plugin *def;
    void *state;
    int created; /* create() succeeded: destroy() is owed */
    char *name; /* "file_sink" (from the plugin), for logs */
    struct wapphook_host host;
};

static void host_log(const struct wapphook_host *host, enum wapphook_log_level level,
                     const char *message)
{
    const struct plugin *p = host->host_private;
    enum log_level l = level <= WAPPHOOK_LOG_DEBUG  ? LOG_DEBUG
                       : level == WAPPHOOK_LOG_INFO ? LOG_INFO
                       : level == WAPPHOOK_LOG_WARN ? LOG_WARN
                                                    : LOG_ERROR;

    log_msg(l, message ? message : "", LOG_S("plugin", p->name));
}

static const char *event_header(const struct wapphook_event *e, const char *name)
{
    const struct wh_event *ev = e->host_private;
    const char *v;

    header_find(ev->headers, ev->n_headers, name, &v);
    return v;
}

int plugin_load(const char *path, const char *config_json, const char *where,
                struct plugin **out, char *err, size_t err_len)
{
    const struct wapphook_plugin *(*entry)(void);
    struct plugin *p = calloc(1, sizeof *p);
    char perr[512] = "";

    if (!p)
        return -1;
    p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        snprintf(err, err_len, "%s: plugin %s: cannot load: %s", where, path, dlerror());
        goto fail;
    }
    *(void **)&entry = dlsym(p->dl, "wapphook_plugin_entry");
    if (!entry) {
        snprintf(err, err_len, "%s: plugin %s: no entry symbol wapphook_plugin_entry", where,
                 path);
        goto fail;
    }
    p->def = entry();
    if (!p->def) {
        snprintf(err, err_len, "%s: plugin %s: wapphook_plugin_entry() returned NULL", where,
                 path);
        goto fail;
    }
    if (p->def->struct_size < PLUGIN_STRUCT_MIN) {
        snprintf(err, err_len, "%s: plugin %s: struct wapphook_plugin is %zu bytes, at least %zu "
                               "expected (built against a broken header?)",
                 where, path, p->def->struct_size, PLUGIN_STRUCT_MIN);
        goto fail;
    }
    if (p->def->abi_major != WAPPHOOK_PLUGIN_ABI_MAJOR) {
        snprintf(err, err_len, "%s: plugin %s: built for plugin ABI %u.%u, this wapphook speaks "
                               "%u.%u: rebuild it against this wapphook's plugin.h",
                 where, path, p->def->abi_major, p->def->abi_minor, WAPPHOOK_PLUGIN_ABI_MAJOR,
                 WAPPHOOK_PLUGIN_ABI_MINOR);
        goto fail;
    }
    if (!p->def->create || !p->def->handle) {
        snprintf(err, err_len, "%s: plugin %s: create and handle are required", where, path);
        goto fail;
    }
    p->name = strdup(p->def->name && *p->def->name ? p->def->name : path);
    p->host.struct_size = sizeof p->host;
    p->host.abi_major = WAPPHOOK_PLUGIN_ABI_MAJOR;
    p->host.abi_minor = WAPPHOOK_PLUGIN_ABI_MINOR;
    p->host.log = host_log;
    p->host.host_private = p;
    if (p->def->create(&p->host, config_json, &p->state, perr, sizeof perr) != WAPPHOOK_OK) {
        perr[sizeof perr - 1] = '\0';
        snprintf(err, err_len, "%s: plugin %s: create failed: %s", where, path,
                 perr[0] ? perr : "(no message)");
        goto fail;
    }
    p->created = 1;
    *out = p;
    return 0;
fail:
    plugin_unload(p);
    return -1;
}

void plugin_unload(struct plugin *p)
{
    if (!p)
        return;
    if (p->created && p->def->destroy)
        p->def->destroy(p->state);
    if (p->dl)
        dlclose(p->dl);
    free(p->name);
    free(p);
}

const char *plugin_name(const struct plugin *p)
{
    return p->name;
}

int plugin_handle(const struct plugin *p, const struct wh_event *ev, char *err, size_t err_len)
{
    struct wapphook_event e = {
        .struct_size = sizeof e,
        .type = ev->type,
        .body = ev->body,
        .body_len = ev->body_len,
        .received_at = ev->received_at,
        .header = event_header,
        .host_private = ev,
    };

    err[0] = '\0';
    if (p->def->handle(p->state, &e, err, err_len) == WAPPHOOK_OK)
        return 0;
    err[err_len - 1] = '\0';
    if (!err[0])
        snprintf(err, err_len, "handle failed (no message)");
    return -1;
}
