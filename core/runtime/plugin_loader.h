/*
 * Loads C plugins (include/wapphook/plugin.h): dlopen, ABI checks, create/handle/destroy.
 * A struct plugin owns its dlopen handle and the plugin's state; plugin_unload() calls
 * destroy() and dlclose()s, and must only run once no handle() call is in flight.
 */
#ifndef WH_PLUGIN_LOADER_H
#define WH_PLUGIN_LOADER_H

#include "dispatch.h"

#include <stddef.h>

struct plugin;

/* Opens path, checks the entry and its ABI, calls create() with config_json. where is
 * the "FILE:LINE" to blame in err. 0 and *out, or -1 with the reason in err. */
int plugin_load(const char *path, const char *config_json, const char *where, struct plugin **out,
                char *err, size_t err_len);
void plugin_unload(struct plugin *p);

const char *plugin_name(const struct plugin *p);

/* 0 if the plugin handled the event, -1 with its message in err. timeout_ms: the budget it
 * is told. Thread-safe. */
int plugin_handle(const struct plugin *p, const struct wh_event *ev, int timeout_ms, char *err,
                  size_t err_len);

#endif
