/*
 * Lua 5.4 handlers. A runtime holds every script of one configuration (its source, read
 * once) and the Lua states running them: one state per (worker thread, script), made on
 * that thread's first call and reused, so globals persist per thread and nothing is shared
 * between threads (no Lua lock). Each call runs under a wall-clock budget (an instruction
 * hook that, once the time is up, fires on every instruction so pcall cannot swallow it)
 * and a per-state memory cap (a byte-counting allocator); a state that hit either is closed
 * and rebuilt on its next call. The runtime owns its states; wl_runtime_free() closes them
 * and must only run once no call is in flight.
 */
#ifndef WH_WL_H
#define WH_WL_H

#include "base/base.h"
#include "conf/conf.h"

#include <stddef.h>

struct wl_runtime;

/* Reads every script the config's hooks name, and proves each one: loads it (text only)
 * into a fresh state, runs its top level under the limits, and checks that every function
 * the manifest names exists. 0 and *out, or -1 with "FILE:LINE: script X: reason". */
int wl_runtime_new(const struct wh_config *cfg, struct wl_runtime **out, char *err, size_t err_len);
void wl_runtime_free(struct wl_runtime *rt);

/* The index of a handler's script in rt (by path), or -1. */
int wl_runtime_script(const struct wl_runtime *rt, const char *path);

/* Calls function(event) of script idx on the calling thread's state, within budget_ms (the
 * handler's, wh_handler_budget_ms()). On failure err holds the message with script:line and
 * a traceback. */
enum wh_outcome wl_runtime_call(struct wl_runtime *rt, int idx, const char *function, int budget_ms,
                                const struct wh_event *ev, char *err, size_t err_len);

/* wapphook.http's process-wide set-up and tear-down (lua/http.c). */
/* Once per process, before threads: libcurl's global set-up. Returns 0, or -1 with why when
 * its resolver is not the threaded one (lookups could not be bounded). */
int wl_http_global_init(char *why, size_t why_len);

/* At exit, after every other thread ended: the calling thread's handle, libcurl's state. */
void wl_http_global_cleanup(void);

#endif
