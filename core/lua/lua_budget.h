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
#include <stddef.h>

typedef void (*lua_budget)(lua_State *L);

#define LUA_BUDGET_CHECK_EVERY 4096

/* A C loop's step counter: the budget is called every LUA_BUDGET_CHECK_EVERY steps. */
struct lua_steps {
    lua_State *L;
    lua_budget budget;
    unsigned left;
};

/* For a function that has its budget as upvalue 1. */
static inline struct lua_steps lua_steps_start(lua_State *L)
{
    struct lua_steps s = {L, (lua_budget)lua_touserdata(L, lua_upvalueindex(1)),
                          LUA_BUDGET_CHECK_EVERY};
    return s;
}

/* n steps at once (a linear scan whose length is bounded by memory counts as its length). */
static inline void lua_steps_take(struct lua_steps *s, size_t n)
{
    if (__builtin_expect(n >= s->left, 0)) {
        s->left = LUA_BUDGET_CHECK_EVERY;
        s->budget(s->L);
    } else {
        s->left -= (unsigned)n;
    }
}

static inline void lua_step(struct lua_steps *s)
{
    if (__builtin_expect(--s->left == 0, 0)) {
        s->left = LUA_BUDGET_CHECK_EVERY;
        s->budget(s->L);
    }
}

/* The memory side: bytes held in C memory (a JSON text, a shared value) go into the state
 * protected, so that running out of memory returns an error (its message left on the stack)
 * instead of raising it past the caller, who frees the bytes and then raises it. */
static inline int lua_budget_push_bytes_(lua_State *L)
{
    lua_pushlstring(L, (const char *)lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
    return 1;
}

static inline int lua_budget_push_bytes(lua_State *L, const void *p, size_t n)
{
    lua_pushcfunction(L, lua_budget_push_bytes_);
    lua_pushlightuserdata(L, (void *)p);
    lua_pushinteger(L, (lua_Integer)n);
    return lua_pcall(L, 2, 1, 0);
}

#endif
