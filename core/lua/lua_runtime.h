/*
 * Lua 5.4 handlers. A runtime holds every script of one configuration (its source, read
 * once) and the Lua states running them: one state per (worker thread, script), made on
 * that thread's first call and reused, so globals persist per thread and nothing is shared
 * between threads (no Lua lock). Each call runs under a wall-clock budget (an instruction
 * hook that, once the time is up, fires on every instruction so pcall cannot swallow it)
 * and a per-state memory cap (a byte-counting allocator); a state that hit either is closed
 * and rebuilt on its next call. The runtime owns its states; lua_runtime_free() closes them
 * and must only run once no call is in flight.
 */
#ifndef WH_LUA_RUNTIME_H
#define WH_LUA_RUNTIME_H

#include "dispatch.h"
#include "manifest.h"

#include <stddef.h>

struct lua_runtime;

enum lua_outcome { LUA_CALL_OK, LUA_CALL_FAILED, LUA_CALL_TIMEOUT, LUA_CALL_MEMORY };

/* Reads every script the config's hooks name, and proves each one: loads it (text only)
 * into a fresh state, runs its top level under the limits, and checks that every function
 * the manifest names exists. 0 and *out, or -1 with "FILE:LINE: script X: reason". */
int lua_runtime_new(const struct wh_config *cfg, struct lua_runtime **out, char *err,
                    size_t err_len);
void lua_runtime_free(struct lua_runtime *rt);

/* The index of a handler's script in rt (by path), or -1. */
int lua_runtime_script(const struct lua_runtime *rt, const char *path);

/* Calls function(event) of script idx on the calling thread's state, within budget_ms (the
 * handler's, wh_handler_budget_ms()). On failure err holds the message with script:line and
 * a traceback. */
enum lua_outcome lua_runtime_call(struct lua_runtime *rt, int idx, const char *function,
                                  int budget_ms, const struct wh_event *ev, char *err,
                                  size_t err_len);

#endif
