#include "shared.h"

#include "budget.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_VALUE 4096

/* Each method has its dictionary (owned by the runtime, which outlives its states) as
 * upvalue 1, the dictionary's table as upvalue 2 (so dict:get(k) and dict.get(k) both work,
 * with nothing of the host's in the table) and the call's budget check as upvalue 3: a call
 * that was stopped reads and writes nothing more. */
static struct shared_dict *self(lua_State *L, int *first_arg)
{
    struct shared_dict *d = lua_touserdata(L, lua_upvalueindex(1));
    wl_budget budget = (wl_budget)lua_touserdata(L, lua_upvalueindex(3));

    budget(L);
    *first_arg = lua_rawequal(L, 1, lua_upvalueindex(2)) ? 2 : 1;
    return d;
}

static long long ttl_arg(lua_State *L, int idx)
{
    lua_Number s = luaL_optnumber(L, idx, 0);

    luaL_argcheck(L, s >= 0 && s < 1e9, idx, "ttl must be 0 (none) or a number of seconds");
    return (long long)ceil(s * 1000.0);
}

static void value_arg(lua_State *L, int idx, struct shared_value *v)
{
    memset(v, 0, sizeof *v);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        v->type = SHARED_STRING;
        v->s = lua_tolstring(L, idx, &v->len);
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            v->type = SHARED_INTEGER;
            v->i = (long long)lua_tointeger(L, idx);
        } else {
            v->type = SHARED_FLOAT;
            v->d = (double)lua_tonumber(L, idx);
        }
        return;
    case LUA_TBOOLEAN:
        v->type = SHARED_BOOLEAN;
        v->b = lua_toboolean(L, idx);
        return;
    default:
        luaL_error(L, "wapphook.shared: values are strings, numbers or booleans (got %s)",
                   luaL_typename(L, idx));
    }
}

static int d_get(lua_State *L)
{
    int a;
    struct shared_dict *d = self(L, &a);
    size_t klen;
    const char *k = luaL_checklstring(L, a, &klen);
    char small[SMALL_VALUE], *buf = small;
    size_t cap = sizeof small;
    struct shared_value v;

    /* a large string: copy it out in C memory of its size, and retry if it grew meanwhile */
    while (shared_dict_get(d, k, klen, &v, buf, cap, NULL)) {
        int rc;
        if (v.type != SHARED_STRING || v.len <= cap) {
            switch (v.type) {
            case SHARED_INTEGER:
                lua_pushinteger(L, (lua_Integer)v.i);
                break;
            case SHARED_FLOAT:
                lua_pushnumber(L, (lua_Number)v.d);
                break;
            case SHARED_BOOLEAN:
                lua_pushboolean(L, v.b);
                break;
            default:
                rc = wl_budget_push_bytes(L, buf, v.len);
                if (buf != small) free(buf);
                if (rc != LUA_OK) return lua_error(L);
                return 1;
            }
            if (buf != small) free(buf);
            return 1;
        }
        if (buf != small) free(buf);
        cap = v.len;
        if (!(buf = malloc(cap))) return luaL_error(L, "wapphook.shared: out of memory");
    }
    if (buf != small) free(buf);
    lua_pushnil(L);
    return 1;
}

/* set and add: true[, nil, forcible], or false, reason */
static int store(lua_State *L, enum shared_mode mode)
{
    int a, rc;
    struct shared_dict *d = self(L, &a);
    size_t klen;
    const char *k = luaL_checklstring(L, a, &klen);
    struct shared_value v;
    long long ttl;

    if (mode == SHARED_SET && lua_isnoneornil(L, a + 1)) {
        shared_dict_delete(d, k, klen);
        lua_pushboolean(L, 1);
        return 1;
    }
    value_arg(L, a + 1, &v);
    ttl = ttl_arg(L, a + 2);
    rc = shared_dict_store(d, k, klen, &v, ttl, mode);
    if (rc < 0) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, rc == -1 ? "exists" : "too large");
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_pushnil(L);
    lua_pushboolean(L, rc == 1);
    return 3;
}

static int d_set(lua_State *L)
{
    return store(L, SHARED_SET);
}

static int d_add(lua_State *L)
{
    return store(L, SHARED_ADD);
}

static int d_incr(lua_State *L)
{
    int a, rc;
    struct shared_dict *d = self(L, &a);
    size_t klen;
    const char *k = luaL_checklstring(L, a, &klen);
    long long n = (long long)luaL_checkinteger(L, a + 1);
    int has_init = !lua_isnoneornil(L, a + 2);
    long long init = has_init ? (long long)luaL_checkinteger(L, a + 2) : 0;
    long long ttl = ttl_arg(L, a + 3), result = 0;

    rc = shared_dict_incr(d, k, klen, n, has_init, init, ttl, &result);
    if (rc == 0) {
        lua_pushinteger(L, (lua_Integer)result);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, rc == -1 ? "not found" : rc == -2 ? "not an integer" : "overflow");
    return 2;
}

static int d_delete(lua_State *L)
{
    int a;
    struct shared_dict *d = self(L, &a);
    size_t klen;
    const char *k = luaL_checklstring(L, a, &klen);

    shared_dict_delete(d, k, klen);
    lua_pushboolean(L, 1);
    return 1;
}

/* seconds left (0: it never expires), or nil, "not found" */
static int d_ttl(lua_State *L)
{
    int a;
    struct shared_dict *d = self(L, &a);
    size_t klen;
    const char *k = luaL_checklstring(L, a, &klen);
    struct shared_value v;
    char buf[1];
    long long left;

    if (!shared_dict_get(d, k, klen, &v, buf, 0, &left)) {
        lua_pushnil(L);
        lua_pushliteral(L, "not found");
        return 2;
    }
    lua_pushnumber(L, left < 0 ? 0 : (lua_Number)left / 1000.0);
    return 1;
}

/* wapphook.shared.NAME: the dictionary's table of methods, made on first use and kept. */
static int shared_index(lua_State *L)
{
    static const luaL_Reg methods[] = {{"get", d_get},   {"set", d_set},       {"add", d_add},
                                       {"incr", d_incr}, {"delete", d_delete}, {"ttl", d_ttl},
                                       {NULL, NULL}};
    const char *name = luaL_checkstring(L, 2);
    struct shared_dict *const *dicts = lua_touserdata(L, lua_upvalueindex(1));
    int n = (int)lua_tointeger(L, lua_upvalueindex(2));

    for (int i = 0; i < n; i++) {
        if (strcmp(shared_dict_name(dicts[i]), name) != 0) continue;
        lua_createtable(L, 0, 6);
        for (const luaL_Reg *m = methods; m->name; m++) {
            lua_pushlightuserdata(L, dicts[i]);
            lua_pushvalue(L, -2);
            lua_pushvalue(L, lua_upvalueindex(3));
            lua_pushcclosure(L, m->func, 3);
            lua_setfield(L, -2, m->name);
        }
        lua_pushvalue(L, 2);
        lua_pushvalue(L, -2);
        lua_rawset(L, 1); /* shared[name] = it: no look-up next time */
        return 1;
    }
    return luaL_error(L, "wapphook.shared.%s: no such dictionary in lua.shared", name);
}

void wl_shared_push(lua_State *L, struct shared_dict *const *dicts, int n, wl_budget budget)
{
    lua_newtable(L);
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)dicts);
    lua_pushinteger(L, n);
    lua_pushlightuserdata(L, (void *)budget);
    lua_pushcclosure(L, shared_index, 3);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "wapphook.shared");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}
