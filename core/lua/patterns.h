/*
 * string.find, string.match, string.gmatch and string.gsub with Lua 5.4's pattern semantics,
 * on a matcher that can be stopped: stock Lua's matcher is C recursion with backtracking,
 * bounded in depth but not in time, so a pattern like ("a"):rep(40):find("a*a*a*...b")
 * runs for hours where no count hook can reach it. This one calls a budget function every
 * WL_BUDGET_CHECK_EVERY steps; the function raises a Lua error to stop the match. Results and error
 * messages are those of stock Lua 5.4 (tests/fuzz/fuzz_patterns.c compares them). Nothing
 * here allocates outside the Lua state.
 */
#ifndef WH_LUA_PATTERNS_H
#define WH_LUA_PATTERNS_H

#include "budget.h"

/* Replaces find, match, gmatch and gsub in the table at index `string_table` (the string
 * library, which is also the strings' metatable __index) with the stoppable versions. */
void wl_patterns_install(lua_State *L, int string_table, wl_budget budget);

#endif
