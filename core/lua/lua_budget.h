/*
 * The budget of one handler call as C code sees it. Lua code is stopped by a count hook,
 * but a hook never fires inside a C function, so every C loop the runtime offers scripts
 * whose length the script controls (pattern matching, table.sort, table.move...) calls a
 * lua_budget function every LUA_BUDGET_CHECK_EVERY steps; past the deadline, or once the
 * call was stopped, that function raises the stop as a Lua error and does not return.
 */
#ifndef WH_LUA_BUDGET_H
#define WH_LUA_BUDGET_H

#include <lua.h>

typedef void (*lua_budget)(lua_State *L);

#define LUA_BUDGET_CHECK_EVERY 4096

#endif
