/*
 * Stock library functions whose C loops a script can make as long as it likes without
 * growing memory, redone so that they call the budget (wl_budget.h) as they go:
 *   table.insert, table.remove, table.move  a __len that lies, or just move(t, 1, 1e15, 2):
 *                                           up to 2^63 steps of lua_geti/lua_seti in C
 *   table.sort                              n log n comparisons of up to INT_MAX elements
 *   table.concat                            the same walk as move, with a lying __len
 *   string.rep                              rep("", 2^62) copies nothing 2^62 times
 *   load(reader)                            a C reader (os.clock) feeds the parser forever
 *   os.date                                 one strftime per conversion: seconds for a
 *                                           format of tens of MiB
 * Results and errors are those of Lua 5.4, except that table.sort is a heap sort: it never
 * reports "invalid order function for sorting" (an inconsistent comparator gives some
 * order instead). The functions keep the budget as an upvalue; nothing is global.
 */
#ifndef WH_LUA_BOUNDED_H
#define WH_LUA_BOUNDED_H

#include "budget.h"

/* Replaces those functions in the state's table, string and os libraries, and wraps its global
 * `load` (whatever it is at the time: the sandbox's text-only load, or the stock one). */
void wl_bounded_install(lua_State *L, wl_budget budget);

#endif
