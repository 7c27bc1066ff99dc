/*
 * wapphook plugin ABI: the whole contract between wapphook and a C plugin.
 *
 * A plugin is a shared object that exports exactly one symbol, wapphook_plugin_entry(),
 * returning a pointer to a static struct wapphook_plugin. Every struct here starts with its
 * size and only ever grows at the end (new fields bump WAPPHOOK_PLUGIN_ABI_MINOR), so a
 * plugin built against an older minor version keeps loading. A different MAJOR version is
 * refused at load time.
 *
 * Ownership, in one sentence each:
 *  - Everything the host passes in (host, config_json, event and the strings it points to)
 *    is owned by the host and valid only for the duration of the call that received it.
 *  - The state a plugin creates is the plugin's; the host hands it back to handle() and
 *    passes it to destroy() exactly once, after the last handle() call has returned.
 *  - Error messages go into the caller's buffer err[0..err_len), NUL-terminated.
 *
 * Threads: create() and destroy() are called from one thread; handle() is called from many
 * threads at once, with the same state, and must be thread-safe.
 *
 * Build an out-of-tree plugin:
 *     cc -shared -fPIC $(pkg-config --cflags wapphook-plugin) -o my.so my.c
 */
#ifndef WAPPHOOK_PLUGIN_H
#define WAPPHOOK_PLUGIN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WAPPHOOK_PLUGIN_ABI_MAJOR 1
#define WAPPHOOK_PLUGIN_ABI_MINOR 1

/* Return codes of create() and handle(): WAPPHOOK_OK, or anything else for failure. */
#define WAPPHOOK_OK 0
#define WAPPHOOK_ERR 1

enum wapphook_log_level {
    WAPPHOOK_LOG_DEBUG = 0,
    WAPPHOOK_LOG_INFO = 1,
    WAPPHOOK_LOG_WARN = 2,
    WAPPHOOK_LOG_ERROR = 3
};

/* What the host offers a plugin. One per loaded plugin (its log lines carry its name). */
struct wapphook_host {
    size_t struct_size; /* sizeof(struct wapphook_host) of the host */
    unsigned abi_major; /* the host's WAPPHOOK_PLUGIN_ABI_MAJOR */
    unsigned abi_minor; /* the host's WAPPHOOK_PLUGIN_ABI_MINOR */
    /* Writes one log line (message is copied; any thread may call it). */
    void (*log)(const struct wapphook_host *host, enum wapphook_log_level level,
                const char *message);
    void *host_private; /* the host's; do not touch */
};

/* One verified event: its signature, content type, event type and JSON were all checked
 * before any plugin sees it. */
struct wapphook_event {
    size_t struct_size; /* sizeof(struct wapphook_event) of the host */
    const char *type;   /* event type, NUL-terminated, matches [A-Za-z0-9_.:-]{1,64} */
    const char *body;   /* the raw body, exactly the bytes that were signed: a JSON object */
    size_t body_len;    /* body is also NUL-terminated at body[body_len] */
    double received_at; /* Unix time in seconds */
    /* Value of a request header (name in any case), or NULL if absent. */
    const char *(*header)(const struct wapphook_event *event, const char *name);
    const void *host_private; /* the host's; do not touch */

    /* Since ABI 1.1: read them only when WAPPHOOK_EVENT_HAS(event, field) says the host
     * passed them (a 1.0 host's struct ends above). */
    /* The event's id, NUL-terminated: in durable mode the spool's event id ("42"), the same
     * on every retry, replay and instance sharing the spool; in sync mode a unique id
     * ("sync-5f0c2a9e1b7d-17"). Equal ids are one event: a destination dedupes on it. */
    const char *id;
    unsigned attempt; /* 1 on the first delivery of this event to this handler, then 2, ... */
    /* The handler's budget for this call (its timeout_ms:, else lua.timeout_ms), in ms:
     * handle() must return within it. The host does not interrupt a plugin. */
    int timeout_ms;
};

/* Whether the host's event carries field (a plugin built against a newer minor version than
 * the host's must not read past the host's struct). */
#define WAPPHOOK_EVENT_HAS(event, field)                                                           \
    ((event)->struct_size >=                                                                       \
     offsetof(struct wapphook_event, field) + sizeof(((struct wapphook_event *)0)->field))

struct wapphook_plugin {
    size_t struct_size;  /* sizeof(struct wapphook_plugin) the plugin was built with */
    unsigned abi_major;  /* WAPPHOOK_PLUGIN_ABI_MAJOR the plugin was built with */
    unsigned abi_minor;  /* WAPPHOOK_PLUGIN_ABI_MINOR the plugin was built with */
    const char *name;    /* short name for logs, e.g. "file_sink" */
    const char *version; /* the plugin's own version, e.g. "1.0.0" */

    /* Once per loaded configuration. config_json is the handler's `config:` mapping as JSON
     * text ("{}" when absent). Sets *state (may be NULL). Returns WAPPHOOK_OK, or fails the
     * load with a message in err. */
    int (*create)(const struct wapphook_host *host, const char *config_json, void **state,
                  char *err, size_t err_len);
    /* Once per event, from many threads at once. Returns WAPPHOOK_OK, or fails this event
     * (the sender is told to retry, per delivery.on_handler_error) with a message in err. */
    int (*handle)(void *state, const struct wapphook_event *event, char *err, size_t err_len);
    /* Once, after the last handle() has returned; may be NULL. */
    void (*destroy)(void *state);
};

/* The one exported symbol (visible even when the plugin is built with -fvisibility=hidden). */
#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
const struct wapphook_plugin *
wapphook_plugin_entry(void);

/* Fills the version fields of a struct wapphook_plugin initialiser. */
#define WAPPHOOK_PLUGIN_HEADER                                                                     \
    .struct_size = sizeof(struct wapphook_plugin), .abi_major = WAPPHOOK_PLUGIN_ABI_MAJOR,         \
    .abi_minor = WAPPHOOK_PLUGIN_ABI_MINOR

#ifdef __cplusplus
}
#endif

#endif
