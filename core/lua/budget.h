/*
 * The budget of one handler call as C code sees it. Lua code is stopped by a count hook,
 * but a hook never fires inside a C function, so every C loop the runtime offers scripts
 * whose length the script controls (pattern matching, table.sort, table.move...) calls a
 * wl_budget function every WL_BUDGET_CHECK_EVERY steps; past the deadline, or once the
 * call was stopped, that function raises the stop as a Lua error and does not return.
 */
#ifndef WH_LUA_BUDGET_H
#define WH_LUA_BUDGET_H

#include <lua.h>
#include <stddef.h>

typedef void (*wl_budget)(lua_State *L);

#define WL_BUDGET_CHECK_EVERY 4096

/* A C loop's step counter: the budget is called every WL_BUDGET_CHECK_EVERY steps. */
struct wl_steps {
    lua_State *L;
    wl_budget budget;
    unsigned left;
};

/* For a function that has its budget as upvalue 1. */
static inline struct wl_steps wl_steps_start(lua_State *L)
{
    struct wl_steps s = {L, (wl_budget)lua_touserdata(L, lua_upvalueindex(1)),
                         WL_BUDGET_CHECK_EVERY};
    return s;
}

/* n steps at once (a linear scan whose length is bounded by memory counts as its length). */
static inline void wl_steps_take(struct wl_steps *s, size_t n)
{
    if (__builtin_expect(n >= s->left, 0)) {
        s->left = WL_BUDGET_CHECK_EVERY;
        s->budget(s->L);
    } else {
        s->left -= (unsigned)n;
    }
}

static inline void wl_step(struct wl_steps *s)
{
    if (__builtin_expect(--s->left == 0, 0)) {
        s->left = WL_BUDGET_CHECK_EVERY;
        s->budget(s->L);
    }
}

/* The memory side: bytes held in C memory (a JSON text, a shared value) go into the state
 * protected, so that running out of memory returns an error (its message left on the stack)
 * instead of raising it past the caller, who frees the bytes and then raises it. */
static inline int wl_budget_push_bytes_(lua_State *L)
{
    lua_pushlstring(L, (const char *)lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
    return 1;
}

static inline int wl_budget_push_bytes(lua_State *L, const void *p, size_t n)
{
    lua_pushcfunction(L, wl_budget_push_bytes_);
    lua_pushlightuserdata(L, (void *)p);
    lua_pushinteger(L, (lua_Integer)n);
    return lua_pcall(L, 2, 1, 0);
}

#endif
