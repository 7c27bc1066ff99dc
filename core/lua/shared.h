/*
 * wapphook.shared.NAME for Lua: get, set, add, incr, delete and ttl on the process's shared
 * dictionaries (shared_dict.h). The dictionaries belong to the Lua runtime, which keeps the
 * array it passes here alive for as long as any of its states.
 */
#ifndef WH_LUA_SHARED_H
#define WH_LUA_SHARED_H

#include "budget.h"
#include "base/base.h"

#include <lua.h>

/* Pushes the wapphook.shared table over dicts[0..n). */
/* wapphook.shared: a table whose fields are the dictionaries' method tables, made on first
 * use; every method first calls budget (which raises once the call was stopped). */
void wl_shared_push(lua_State *L, struct shared_dict *const *dicts, int n, wl_budget budget);

#endif
