/*
 * Inside the Lua runtime: the types its three files share (runtime.c: states, the sandbox, the
 * event, calls; limits.c: the memory cap, the budget, the kicker, coroutines; module.c: the
 * wapphook module) and the functions each gives the others. Not a door: only lua/ includes it.
 */
#ifndef WH_LUA_STATE_H
#define WH_LUA_STATE_H

#include "wl.h"

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#define HOOK_EVERY 1000 /* instructions between two clock reads */
#define SCRIPT_MAX_BYTES (8 << 20)
#define SPARE_THREAD_SLOTS 16

struct script {
    char *path;    /* resolved */
    char *display; /* as written in the manifest */
    char *source;
    size_t source_len;
    int line; /* manifest line of its first use */
};

enum kill_reason { KILL_NONE, KILL_TIMEOUT, KILL_MEMORY, KILL_STACK };

/* Per state, reachable from every coroutine through the extra space. */
struct lctx {
    const struct wl_runtime *rt;
    const struct script *script;
    size_t used, limit;
    long long deadline_ns; /* 0 outside a call */
    int budget_ms;         /* of the call under way, for its message */
    enum kill_reason killed;
};

struct lstate {
    lua_State *L;
    struct lctx ctx;
};

struct wl_runtime {
    const struct wh_config *cfg;
    struct script *scripts;
    int n_scripts;
    int n_slots;                /* thread slots */
    struct lstate **states;     /* [slot * n_scripts + script], NULL until first use */
    struct shared_dict **dicts; /* lua.shared, one reference each */
    int n_dicts;
};

static inline struct lctx *ctx_of(lua_State *L)
{
    return *(struct lctx **)lua_getextraspace(L);
}

/* limits.c: the byte-counting allocator, the stop's reason, the budget check and hook, the
 * kicker around a call, the coroutine library's replacements, the traceback handler */
void *wl_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
const char *wl_stop_reason(const struct lctx *c);
void wl_budget_check(lua_State *L);
void wl_hook(lua_State *L, lua_Debug *ar);
void wl_kick_call(lua_State *L, long long deadline);
int wl_co_resume_raw(lua_State *L, lua_State *co, int narg);
int wl_co_resume(lua_State *L);
int wl_co_close(lua_State *L);
int wl_co_wrap(lua_State *L);
int wl_traceback(lua_State *L);

/* module.c: print() as a log line; the wapphook table for rt */
int wl_print(lua_State *L);
void wl_push_module(lua_State *L, const struct wl_runtime *rt);

/* limits.c: the calibration of the C stack and the kicker thread, once per process: 0, or -1 when
 * the kicker could not start (no Lua call may run without it). */
int wl_limits_start(void);

#endif
