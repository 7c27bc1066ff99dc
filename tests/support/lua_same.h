/* Deep equality of two Lua values, for the tests that compare Lua tables built two ways
 * (tests/unit/test_json_text.c, tests/fuzz/fuzz_lua_json.c). Header-only: the fuzz targets
 * do not link the harness. */
#ifndef WH_LUA_SAME_H
#define WH_LUA_SAME_H

#include <lauxlib.h>
#include <lua.h>

/* 1 if the values at absolute indices a and b are equal: same type, integers and floats kept
 * apart, tables with the same keys holding equal values. */
static inline int lua_same(lua_State *L, int a, int b)
{
    int n = 0;

    if (lua_type(L, a) != lua_type(L, b) ||
        (lua_type(L, a) == LUA_TNUMBER && lua_isinteger(L, a) != lua_isinteger(L, b)))
        return 0;
    if (lua_type(L, a) != LUA_TTABLE) return lua_rawequal(L, a, b);
    luaL_checkstack(L, 6, "tables nested too deeply to compare");
    lua_pushnil(L);
    while (lua_next(L, a)) {
        int top = lua_gettop(L), eq;
        lua_pushvalue(L, top - 1);
        lua_rawget(L, b);
        eq = lua_same(L, top, top + 1);
        lua_pop(L, 2);
        if (!eq) {
            lua_pop(L, 1);
            return 0;
        }
        n++;
    }
    lua_pushnil(L);
    while (lua_next(L, b)) {
        lua_pop(L, 1);
        n--;
    }
    return n == 0;
}

#endif
