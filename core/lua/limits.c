#define _GNU_SOURCE
#include "state.h"

#include "base/base.h"

#include "budget.h"

#include <execinfo.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- limits --------------------------------------------------------------------------- */

/* Lua 5.4.4 grows a thread's stack in luaD_reallocstack, which allocates a new block of
 * S + EXTRA_STACK (5) slots of 16 bytes (no type tag) and frees the old one. A chain of
 * __call tables (getmetatable(t).__call = t; t()) grows it one slot per step inside ldo.c's
 * C loop, moving every slot each time: quadratic, with no hook on the way (1.1 s at 2 MiB,
 * minutes at 64). A stack is capped at STACK_MAX_SLOTS (about 2,000 nested Lua calls, or
 * 20,000 values unpacked at once), which bounds such a chain to ~0.07 s of CPU: the
 * allocator refuses a block of that shape and size when it is asked for by
 * luaD_reallocstack. That function is internal to liblua, so it is found by calibration:
 * the return addresses seen when a throwaway state grows its stack, less those seen when it
 * makes a table of the same shape, are the stack's own call site. Only blocks of a stack's
 * shape past the cap (327 KiB and more) pay for the look (backtrace). */
#define STACK_MAX_SLOTS 20480
#define WH_LUA_STR_(x) #x
#define WH_LUA_STR(x) WH_LUA_STR_(x)
#define SITE_FRAMES 8

static void *stack_sites[SITE_FRAMES]; /* return addresses only stack growth passes */
static int n_stack_sites;

static int stack_slots_of(size_t bytes)
{
    return bytes % 16 == 0 && bytes / 16 > 5 ? (int)(bytes / 16 - 5) : 0;
}

static struct {
    int slots; /* the block to look for: of a stack's shape, at least this many slots */
    void *frames[SITE_FRAMES];
    int n;
} calib;

static void *calib_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (!ptr && osize == 0 && calib.slots && stack_slots_of(nsize) >= calib.slots)
        calib.n = backtrace(calib.frames, SITE_FRAMES);
    return realloc(ptr, nsize);
}

/* Once per process, before any state: the stack's call site (see above). */
static void calibrate(void)
{
    void *growth[SITE_FRAMES], *table[SITE_FRAMES];
    int ng = 0, nt;
    lua_State *L;

    backtrace(growth, 1); /* loads the unwinder now, not inside an allocator later */
    if (!(L = lua_newstate(calib_alloc, NULL))) return;
    calib.n = 0;
    calib.slots = 50000; /* a stack of that many slots... */
    if (lua_checkstack(L, 60000 - 100) && calib.n) {
        ng = calib.n;
        memcpy(growth, calib.frames, sizeof growth);
    }
    lua_settop(L, 0);
    calib.n = 0;
    calib.slots = 50000; /* ...and a table array of the same shape */
    lua_createtable(L, 70005, 0);
    nt = calib.n;
    memcpy(table, calib.frames, sizeof table);
    calib.slots = 0;
    lua_close(L);
    for (int i = 1; i < ng; i++) { /* frame 0 is calib_alloc itself */
        bool shared = false;
        for (int j = 0; j < nt; j++)
            shared |= growth[i] == table[j];
        if (!shared) stack_sites[n_stack_sites++] = growth[i];
    }
}

/* Is this allocation luaD_reallocstack's? */
static bool growing_a_stack(void)
{
    void *frames[SITE_FRAMES + 2];
    int n = backtrace(frames, SITE_FRAMES + 2);

    for (int i = 0; i < n; i++)
        for (int j = 0; j < n_stack_sites; j++)
            if (frames[i] == stack_sites[j]) return true;
    return false;
}

static void kick_self(void);
static bool kick_expired(long long deadline);

/* A stop the allocator found: the very next instruction raises it (see wl_hook). */
static void *stop_here(struct lctx *c, enum kill_reason why)
{
    if (c->deadline_ns && !c->killed) {
        c->killed = why;
        kick_self();
    }
    return NULL;
}

void *wl_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct lctx *c = ud;
    size_t old = ptr ? osize : 0; /* with ptr NULL, osize is a type tag, not a size */
    void *p;

    if (nsize == 0) {
        free(ptr);
        c->used -= old;
        return NULL;
    }
    if (c->deadline_ns && kick_expired(c->deadline_ns)) {
        /* past the deadline: nothing more is built (a long parse, a long C loop that
         * allocates), and every instruction raises the stop */
        if (!c->killed) c->killed = KILL_TIMEOUT;
        return NULL;
    }
    if (!ptr && osize == 0 && stack_slots_of(nsize) > STACK_MAX_SLOTS && growing_a_stack())
        return stop_here(c, KILL_STACK);
    if (nsize > old && c->used + (nsize - old) > c->limit)
        return stop_here(c, KILL_MEMORY); /* a pcall cannot catch it: see wl_hook */
    p = realloc(ptr, nsize);
    if (!p) return NULL;
    c->used = c->used - old + nsize;
    return p;
}

/* Why a call was stopped, for its log line when the script caught the stop or another error
 * came out instead of it: in a thread-local buffer, until the next call. */
const char *wl_stop_reason(const struct lctx *c)
{
    static __thread char why[200];

    switch (c->killed) {
    case KILL_TIMEOUT:
        snprintf(why, sizeof why, "timeout: the handler ran longer than its budget (%d ms)",
                 c->budget_ms);
        return why;
    case KILL_STACK:
        return "memory limit: the Lua stack grew past " WH_LUA_STR(
            STACK_MAX_SLOTS) " slots (calls nested too deeply, or a chain of __call tables)";
    default:
        snprintf(why, sizeof why, "memory limit: the state grew past lua.memory_limit_mb (%d MiB)",
                 c->rt->cfg->lua_memory_limit_mb);
        return why;
    }
}

void wl_hook(lua_State *L, lua_Debug *ar);

/* Raises the stop of a killed call. From here on every instruction of every coroutine and
 * every budget check raises it again, so no pcall, coroutine or __close can get past it;
 * and wl_runtime_call() fails the call whatever it returns. */
static void raise_stop(lua_State *L, const struct lctx *c)
{
    lua_sethook(L, wl_hook, LUA_MASKCOUNT, 1); /* this coroutine: on the very next instruction */
    luaL_error(L, "%s", wl_stop_reason(c));
}

/* The budget check, for Lua code (the hook) and for C loops (wl_budget.h) alike. */
void wl_budget_check(lua_State *L)
{
    struct lctx *c = ctx_of(L);

    if (!c->deadline_ns) return;
    if (!c->killed && wh_mono_ns() > c->deadline_ns) c->killed = KILL_TIMEOUT;
    if (c->killed) raise_stop(L, c);
}

void wl_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    wl_budget_check(L);
    if (lua_gethookcount(L) != HOOK_EVERY) /* a kick that came too early (or too late) */
        lua_sethook(L, wl_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

/* --- the kicker ----------------------------------------------------------------------------
 *
 * The count hook reads the clock every HOOK_EVERY instructions, but one instruction can take
 * long: a comparison of two long strings, utf8.len of a large one, any C function. A thread
 * (the kicker) looks at every call in flight every few milliseconds; once one is past its
 * deadline it marks the state expired (the allocator then refuses everything) and sends the
 * worker a signal whose handler sets the hook to fire on the very next instruction of every
 * coroutine the call is running (lua_sethook is safe in a signal handler: lua.c does it for
 * SIGINT). So no instruction boundary is crossed after the deadline without the check. */
#define KICK_SIGNAL (SIGRTMIN + 3)
#define KICK_TICK_MS 5
#define KICK_IDLE_MS 50
#define KICK_MAX_THREADS 4096
#define KICK_CHAIN 256 /* coroutines resumed inside one another (C calls stop at 200) */

struct kick_slot {
    pthread_t thread;
    long long deadline_ns; /* of the call in flight on that thread, 0 when none (atomic) */
    long long kicked_ns;   /* the deadline already kicked for (kicker only) */
    long long expired;     /* the deadline the kicker saw pass (atomic): when it is the
                            * running call's, its allocations are refused */
    lua_State *chain[KICK_CHAIN];
    int n_chain; /* entries in use (atomic; a signal handler reads it) */
};

static struct kick_slot *kick_slots[KICK_MAX_THREADS];
static int kick_used;
static __thread struct kick_slot *my_kick;

static void on_kick(int sig)
{
    struct kick_slot *k = my_kick;
    int n;

    (void)sig;
    if (!k) return;
    n = __atomic_load_n(&k->n_chain, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n && i < KICK_CHAIN; i++)
        lua_sethook(k->chain[i], wl_hook, LUA_MASKCOUNT, 1);
}

/* Did the kicker see this thread's call with that deadline pass it? */
static bool kick_expired(long long deadline)
{
    return my_kick && __atomic_load_n(&my_kick->expired, __ATOMIC_ACQUIRE) == deadline;
}

/* The same from the thread itself (the allocator stopped the call). */
static void kick_self(void)
{
    on_kick(KICK_SIGNAL);
}

static void *kicker_main(void *arg)
{
    (void)arg;
    for (;;) {
        int used = __atomic_load_n(&kick_used, __ATOMIC_ACQUIRE), busy = 0;
        long long now = wh_mono_ns();
        struct timespec ts;

        for (int i = 0; i < used; i++) {
            struct kick_slot *k = __atomic_load_n(&kick_slots[i], __ATOMIC_ACQUIRE);
            long long d = k ? __atomic_load_n(&k->deadline_ns, __ATOMIC_ACQUIRE) : 0;
            if (!d) continue;
            busy = 1;
            if (now > d && k->kicked_ns != d) {
                k->kicked_ns = d;
                /* names the deadline: a later call on that thread is not touched */
                __atomic_store_n(&k->expired, d, __ATOMIC_RELEASE);
                pthread_kill(k->thread, KICK_SIGNAL);
            }
        }
        ts.tv_sec = 0;
        ts.tv_nsec = (busy ? KICK_TICK_MS : KICK_IDLE_MS) * 1000000L;
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static pthread_once_t kicker_once = PTHREAD_ONCE_INIT;
static pthread_once_t calibrated = PTHREAD_ONCE_INIT;
static int kicker_running; /* set once by kicker_start */

static void kicker_start(void)
{
    struct sigaction sa;
    pthread_t th;
    pthread_attr_t at;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_kick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(KICK_SIGNAL, &sa, NULL);
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, kicker_main, NULL) == 0) {
        pthread_setname_np(th, "lua-kicker");
        __atomic_store_n(&kicker_running, 1, __ATOMIC_RELEASE);
    }
    pthread_attr_destroy(&at);
}

/* This thread's slot (made on its first call; a slot lives as long as the process). */
static struct kick_slot *kick_mine(void)
{
    struct kick_slot *k;
    int i;

    if (my_kick) return my_kick;
    pthread_once(&kicker_once, kicker_start);
    k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->thread = pthread_self();
    i = __atomic_fetch_add(&kick_used, 0, __ATOMIC_ACQUIRE);
    for (;;) { /* claim the next index */
        if (i >= KICK_MAX_THREADS) {
            free(k);
            return NULL;
        }
        if (__atomic_compare_exchange_n(&kick_used, &i, i + 1, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            break;
    }
    __atomic_store_n(&kick_slots[i], k, __ATOMIC_RELEASE);
    my_kick = k;
    return k;
}

/* The coroutine now running on this thread, for the kick (kick_leave when it stops). */
static void kick_enter(lua_State *co)
{
    struct kick_slot *k = my_kick;
    int n;

    if (!k) return;
    n = __atomic_load_n(&k->n_chain, __ATOMIC_RELAXED);
    if (n < KICK_CHAIN) k->chain[n] = co;
    __atomic_store_n(&k->n_chain, n + 1, __ATOMIC_RELEASE);
}

static void kick_leave(void)
{
    struct kick_slot *k = my_kick;

    if (k) __atomic_sub_fetch(&k->n_chain, 1, __ATOMIC_RELEASE);
}

/* A call begins (or ends, deadline 0) on this thread. */
void wl_kick_call(lua_State *L, long long deadline)
{
    struct kick_slot *k = deadline ? kick_mine() : my_kick;

    if (!k) return;
    if (deadline) {
        __atomic_store_n(&k->n_chain, 0, __ATOMIC_RELAXED);
        kick_enter(L);
        __atomic_store_n(&k->deadline_ns, deadline, __ATOMIC_RELEASE);
    } else {
        __atomic_store_n(&k->deadline_ns, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&k->n_chain, 0, __ATOMIC_RELEASE);
    }
}

/* coroutine.resume and the functions coroutine.wrap makes: as the library's, but the
 * coroutine is on the kick chain while it runs, and a stopped call resumes nothing. */
int wl_co_resume_raw(lua_State *L, lua_State *co, int narg)
{
    int status, nres;

    struct kick_slot *k = my_kick;
    int depth = k ? __atomic_load_n(&k->n_chain, __ATOMIC_RELAXED) : 0;

    if (!lua_checkstack(co, narg)) {
        lua_pushliteral(L, "too many arguments to resume");
        return -1;
    }
    lua_xmove(L, co, narg);
    kick_enter(co);
    status = lua_resume(co, L, narg, &nres); /* dead or running: its own error, as stock */
    if (k) /* back to where it was (lua_resume may have unwound past a resume inside) */
        __atomic_store_n(&k->n_chain, depth, __ATOMIC_RELEASE);
    if (status == LUA_OK || status == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1)) {
            lua_pop(co, nres);
            lua_pushliteral(L, "too many results to resume");
            return -1;
        }
        lua_xmove(co, L, nres);
        return nres;
    }
    lua_xmove(co, L, 1); /* the error object */
    return -1;
}

int wl_co_resume(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    int r;

    luaL_argexpected(L, co, 1, "thread");
    wl_budget_check(L);
    r = wl_co_resume_raw(L, co, lua_gettop(L) - 1);
    if (r < 0) {
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
}

static int co_wrapped(lua_State *L)
{
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int r;

    wl_budget_check(L);
    r = wl_co_resume_raw(L, co, lua_gettop(L));
    if (r < 0) { /* the error goes on, the coroutine is closed (as lcorolib's auxwrap) */
        int st = lua_status(co);
        if (st != LUA_OK && st != LUA_YIELD) {
            kick_enter(co); /* its __close handlers run now */
            st = lua_resetthread(co);
            kick_leave();
            lua_xmove(co, L, 1);
        }
        if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
            luaL_where(L, 1);
            lua_insert(L, -2);
            lua_concat(L, 2);
        }
        return lua_error(L);
    }
    return r;
}

/* coroutine.close: its __close handlers run on that coroutine, so it is on the chain too. */
int wl_co_close(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    lua_Debug ar;
    int st;

    luaL_argexpected(L, co, 1, "thread");
    wl_budget_check(L);
    /* running or normal, as lcorolib tells them: itself, or active with frames on it */
    if (co == L) return luaL_error(L, "cannot close a running coroutine");
    if (lua_status(co) == LUA_OK && lua_getstack(co, 0, &ar))
        return luaL_error(L, "cannot close a normal coroutine");
    kick_enter(co);
    st = lua_resetthread(co);
    kick_leave();
    if (st == LUA_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_xmove(co, L, 1);
    return 2;
}

int wl_co_wrap(lua_State *L)
{
    lua_State *co;

    luaL_checktype(L, 1, LUA_TFUNCTION);
    co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushcclosure(L, co_wrapped, 1);
    return 1;
}

/* The message handler of every call: the message (a string error value only: anything else
 * is named by its type, so no __tostring or __name runs) and a traceback. Stock
 * luaL_traceback searches every loaded module for each frame's function name, a walk over
 * as many globals as the script made; this names functions from the calling code only. */
#define TRACEBACK_LEVELS 12
int wl_traceback(lua_State *L)
{
    luaL_Buffer b;
    lua_Debug ar;

    luaL_buffinit(L, &b);
    if (lua_type(L, 1) == LUA_TSTRING) {
        lua_pushvalue(L, 1);
        luaL_addvalue(&b);
    } else {
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, "\nstack traceback:");
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (level > TRACEBACK_LEVELS) {
            luaL_addstring(&b, "\n\t...");
            break;
        }
        lua_getinfo(L, "Sln", &ar);
        if (*ar.what == 'C')
            lua_pushfstring(L, "\n\t[C]: in %s%s%s", ar.name ? "function '" : "?",
                            ar.name ? ar.name : "", ar.name ? "'" : "");
        else if (*ar.what == 'm')
            lua_pushfstring(L, "\n\t%s:%d: in main chunk", ar.short_src, ar.currentline);
        else if (ar.name)
            lua_pushfstring(L, "\n\t%s:%d: in function '%s'", ar.short_src, ar.currentline,
                            ar.name);
        else
            lua_pushfstring(L, "\n\t%s:%d: in function <%s:%d>", ar.short_src, ar.currentline,
                            ar.short_src, ar.linedefined);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    return 1;
}

int wl_limits_start(void)
{
    pthread_once(&calibrated, calibrate);
    pthread_once(&kicker_once, kicker_start);
    return __atomic_load_n(&kicker_running, __ATOMIC_ACQUIRE) ? 0 : -1;
}
