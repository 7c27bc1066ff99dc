#define _GNU_SOURCE
#include "plugin_loader.h"

#include "base/base.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wapphook/plugin.h>

/* The smallest plugin struct this host understands: version 1.0 ends with destroy. */
#define PLUGIN_STRUCT_MIN (offsetof(struct wapphook_plugin, destroy) + sizeof(void (*)(void *)))

struct plugin {
    void *dl;
    int fd; /* the private in-memory copy dl was loaded from; open until dlclose */
    const struct wapphook_plugin *def;
    void *state;
    int created; /* create() succeeded: destroy() is owed */
    char *name;  /* "file_sink" (from the plugin), for logs */
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

    static const char *const names[] = {"debug", "info", "warn", "error"};

    log_tee_line(names[l], message ? message : "", message ? strlen(message) : 0);
    log_msg(l, message ? message : "", LOG_S("plugin", p->name));
}

static const char *event_header(const struct wapphook_event *e, const char *name)
{
    const struct wh_event *ev = e->host_private;
    const char *v;

    wh_header_find(ev->headers, ev->n_headers, name, &v);
    return v;
}

/* dlopen() returns the already-loaded object for a path (or inode) it has seen, so a .so
 * replaced on disk would keep running its old code; and a .so overwritten in place under a
 * running process can crash it. Loading from a private in-memory copy avoids both: every
 * load is a new object, and the file on disk is never mapped. The fd stays open while the
 * object is loaded so that its /proc path is never reused for another copy. */
static int private_copy(const char *path, char *proc_path, size_t len, char *why, size_t why_len)
{
    int in = open(path, O_RDONLY | O_CLOEXEC);
    int fd;
    char buf[65536];
    ssize_t n;

    if (in < 0) {
        snprintf(why, why_len, "%s", strerror(errno));
        return -1;
    }
    fd = memfd_create("wapphook-plugin", MFD_CLOEXEC);
    if (fd < 0) {
        snprintf(why, why_len, "memfd_create: %s", strerror(errno));
        close(in);
        return -1;
    }
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0) {
                snprintf(why, why_len, "copying: %s", strerror(errno));
                close(in);
                close(fd);
                return -1;
            }
            off += w;
        }
    }
    close(in);
    if (n < 0) {
        snprintf(why, why_len, "reading: %s", strerror(errno));
        close(fd);
        return -1;
    }
    snprintf(proc_path, len, "/proc/self/fd/%d", fd);
    return fd;
}

/* dlerror() names the /proc path of the copy; the user knows the file by its own name. */
static const char *dl_reason(const char *proc_path)
{
    const char *e = dlerror();
    size_t pl = strlen(proc_path);

    if (!e) return "unknown error";
    if (strncmp(e, proc_path, pl) == 0 && e[pl] == ':') e += pl + 1;
    while (*e == ' ')
        e++;
    return e;
}

int plugin_load(const char *path, const char *config_json, const char *where, struct plugin **out,
                char *err, size_t err_len)
{
    const struct wapphook_plugin *(*entry)(void);
    struct plugin *p = calloc(1, sizeof *p);
    char perr[512] = "";

    char proc_path[64], why[256];

    if (!p) return -1;
    p->fd = -1;
    p->fd = private_copy(path, proc_path, sizeof proc_path, why, sizeof why);
    if (p->fd < 0) {
        snprintf(err, err_len, "%s: plugin %s: cannot read: %s", where, path, why);
        goto fail;
    }
    p->dl = dlopen(proc_path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        snprintf(err, err_len, "%s: plugin %s: cannot load: %s", where, path, dl_reason(proc_path));
        goto fail;
    }
    *(void **)&entry = dlsym(p->dl, "wapphook_plugin_entry");
    if (!entry) {
        snprintf(err, err_len, "%s: plugin %s: no entry symbol wapphook_plugin_entry", where, path);
        goto fail;
    }
    p->def = entry();
    if (!p->def) {
        snprintf(err, err_len, "%s: plugin %s: wapphook_plugin_entry() returned NULL", where, path);
        goto fail;
    }
    if (p->def->struct_size < PLUGIN_STRUCT_MIN) {
        snprintf(err, err_len,
                 "%s: plugin %s: struct wapphook_plugin is %zu bytes, at least %zu "
                 "expected (built against a broken header?)",
                 where, path, p->def->struct_size, PLUGIN_STRUCT_MIN);
        goto fail;
    }
    if (p->def->abi_major != WAPPHOOK_PLUGIN_ABI_MAJOR) {
        snprintf(err, err_len,
                 "%s: plugin %s: built for plugin ABI %u.%u, this wapphook speaks "
                 "%u.%u: rebuild it against this wapphook's plugin.h",
                 where, path, p->def->abi_major, p->def->abi_minor, WAPPHOOK_PLUGIN_ABI_MAJOR,
                 WAPPHOOK_PLUGIN_ABI_MINOR);
        goto fail;
    }
    if (!p->def->create || !p->def->handle) {
        snprintf(err, err_len, "%s: plugin %s: create and handle are required", where, path);
        goto fail;
    }
    p->name = wh_xstrdup(p->def->name && *p->def->name ? p->def->name : path);
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
    if (!p) return;
    if (p->created && p->def->destroy) p->def->destroy(p->state);
    if (p->dl) dlclose(p->dl);
    if (p->fd >= 0) close(p->fd);
    free(p->name);
    free(p);
}

const char *plugin_name(const struct plugin *p)
{
    return p->name;
}

int plugin_handle(const struct plugin *p, const struct wh_event *ev, int timeout_ms, char *err,
                  size_t err_len)
{
    char id[WH_EVENT_ID_MAX];
    struct wapphook_event e = {
        .struct_size = sizeof e,
        .type = ev->type,
        .body = ev->body,
        .body_len = ev->body_len,
        .received_at = ev->received_at,
        .header = event_header,
        .host_private = ev,
        .id = wh_event_id_text(ev, id),
        .attempt = ev->attempt > 0 ? (unsigned)ev->attempt : 1,
        .timeout_ms = timeout_ms,
    };

    err[0] = '\0';
    if (p->def->handle(p->state, &e, err, err_len) == WAPPHOOK_OK) return 0;
    err[err_len - 1] = '\0';
    if (!err[0]) snprintf(err, err_len, "handle failed (no message)");
    return -1;
}
