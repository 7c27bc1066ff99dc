#define _GNU_SOURCE
#include "wl.h"

#include "base/base.h"

#include "bounded.h"
#include "budget.h"
#include "json.h"
#include "patterns.h"
#include "outbound_http.h"
#include "shared.h"

#include <ctype.h>
#include <execinfo.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    int n_slots;            /* thread slots */
    struct lstate **states; /* [slot * n_scripts + script], NULL until first use */
    struct shared_dict **dicts; /* lua.shared, one reference each */
    int n_dicts;
};

static struct lctx *ctx_of(lua_State *L)
{
    return *(struct lctx **)lua_getextraspace(L);
}

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
    if (!(L = lua_newstate(calib_alloc, NULL)))
        return;
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
        if (!shared)
            stack_sites[n_stack_sites++] = growth[i];
    }
}

/* Is this allocation luaD_reallocstack's? */
static bool growing_a_stack(void)
{
    void *frames[SITE_FRAMES + 2];
    int n = backtrace(frames, SITE_FRAMES + 2);

    for (int i = 0; i < n; i++)
        for (int j = 0; j < n_stack_sites; j++)
            if (frames[i] == stack_sites[j])
                return true;
    return false;
}

static void kick_self(void);
static bool kick_expired(long long deadline);

/* A stop the allocator found: the very next instruction raises it (see l_hook). */
static void *stop_here(struct lctx *c, enum kill_reason why)
{
    if (c->deadline_ns && !c->killed) {
        c->killed = why;
        kick_self();
    }
    return NULL;
}

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
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
        if (!c->killed)
            c->killed = KILL_TIMEOUT;
        return NULL;
    }
    if (!ptr && osize == 0 && stack_slots_of(nsize) > STACK_MAX_SLOTS && growing_a_stack())
        return stop_here(c, KILL_STACK);
    if (nsize > old && c->used + (nsize - old) > c->limit)
        return stop_here(c, KILL_MEMORY); /* a pcall cannot catch it: see l_hook */
    p = realloc(ptr, nsize);
    if (!p)
        return NULL;
    c->used = c->used - old + nsize;
    return p;
}

/* Why a call was stopped, for its log line when the script caught the stop or another error
 * came out instead of it: in a thread-local buffer, until the next call. */
static const char *stop_reason(const struct lctx *c)
{
    static __thread char why[200];

    switch (c->killed) {
    case KILL_TIMEOUT:
        snprintf(why, sizeof why, "timeout: the handler ran longer than its budget (%d ms)",
                 c->budget_ms);
        return why;
    case KILL_STACK: return "memory limit: the Lua stack grew past " WH_LUA_STR(STACK_MAX_SLOTS)
                            " slots (calls nested too deeply, or a chain of __call tables)";
    default:
        snprintf(why, sizeof why, "memory limit: the state grew past lua.memory_limit_mb (%d MiB)",
                 c->rt->cfg->lua_memory_limit_mb);
        return why;
    }
}

static void l_hook(lua_State *L, lua_Debug *ar);

/* Raises the stop of a killed call. From here on every instruction of every coroutine and
 * every budget check raises it again, so no pcall, coroutine or __close can get past it;
 * and wl_runtime_call() fails the call whatever it returns. */
static void raise_stop(lua_State *L, const struct lctx *c)
{
    lua_sethook(L, l_hook, LUA_MASKCOUNT, 1); /* this coroutine: on the very next instruction */
    luaL_error(L, "%s", stop_reason(c));
}

/* The budget check, for Lua code (the hook) and for C loops (wl_budget.h) alike. */
static void budget_check(lua_State *L)
{
    struct lctx *c = ctx_of(L);

    if (!c->deadline_ns)
        return;
    if (!c->killed && wh_mono_ns() > c->deadline_ns)
        c->killed = KILL_TIMEOUT;
    if (c->killed)
        raise_stop(L, c);
}

static void l_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    budget_check(L);
    if (lua_gethookcount(L) != HOOK_EVERY) /* a kick that came too early (or too late) */
        lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
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
    long long deadline_ns;   /* of the call in flight on that thread, 0 when none (atomic) */
    long long kicked_ns;     /* the deadline already kicked for (kicker only) */
    long long expired;       /* the deadline the kicker saw pass (atomic): when it is the
                              * running call's, its allocations are refused */
    lua_State *chain[KICK_CHAIN];
    int n_chain;             /* entries in use (atomic; a signal handler reads it) */
};

static struct kick_slot *kick_slots[KICK_MAX_THREADS];
static int kick_used;
static __thread struct kick_slot *my_kick;

static void on_kick(int sig)
{
    struct kick_slot *k = my_kick;
    int n;

    (void)sig;
    if (!k)
        return;
    n = __atomic_load_n(&k->n_chain, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n && i < KICK_CHAIN; i++)
        lua_sethook(k->chain[i], l_hook, LUA_MASKCOUNT, 1);
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
            if (!d)
                continue;
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

    if (my_kick)
        return my_kick;
    pthread_once(&kicker_once, kicker_start);
    k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
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

    if (!k)
        return;
    n = __atomic_load_n(&k->n_chain, __ATOMIC_RELAXED);
    if (n < KICK_CHAIN)
        k->chain[n] = co;
    __atomic_store_n(&k->n_chain, n + 1, __ATOMIC_RELEASE);
}

static void kick_leave(void)
{
    struct kick_slot *k = my_kick;

    if (k)
        __atomic_sub_fetch(&k->n_chain, 1, __ATOMIC_RELEASE);
}

/* A call begins (or ends, deadline 0) on this thread. */
static void kick_call(lua_State *L, long long deadline)
{
    struct kick_slot *k = deadline ? kick_mine() : my_kick;

    if (!k)
        return;
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
static int co_resume_(lua_State *L, lua_State *co, int narg)
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

static int co_resume(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    int r;

    luaL_argexpected(L, co, 1, "thread");
    budget_check(L);
    r = co_resume_(L, co, lua_gettop(L) - 1);
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

    budget_check(L);
    r = co_resume_(L, co, lua_gettop(L));
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
static int co_close(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    lua_Debug ar;
    int st;

    luaL_argexpected(L, co, 1, "thread");
    budget_check(L);
    /* running or normal, as lcorolib tells them: itself, or active with frames on it */
    if (co == L)
        return luaL_error(L, "cannot close a running coroutine");
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

static int co_wrap(lua_State *L)
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
static int traceback(lua_State *L)
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

/* --- the wapphook module ---------------------------------------------------------------- */

static int w_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    struct lctx *c = ctx_of(L);
    const char *msg;
    size_t len;
    int level;

    budget_check(L); /* a stopped call does nothing more, logging included */
    level = luaL_checkoption(L, 1, NULL, levels);
    msg = luaL_checklstring(L, 2, &len);

    log_msg((enum log_level)level, "script", LOG_SN("message", msg, len),
            LOG_S("script", c->script->display));
    return 0;
}

static int w_print(lua_State *L)
{
    luaL_Buffer b;
    int n = lua_gettop(L);
    struct lctx *c = ctx_of(L);

    budget_check(L);
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
        if (i < n)
            luaL_addchar(&b, '\t');
    }
    luaL_pushresult(&b);
    log_msg(LOG_INFO, "script", LOG_S("message", lua_tostring(L, -1)),
            LOG_S("script", c->script->display));
    return 0;
}

/* Encoding and decoding keep to the state's memory: the text is built without a jansson
 * tree (at most one copy outside the state, capped at lua.memory_limit_mb), and decoding
 * builds the tables straight from checked text, so every byte is counted and a memory
 * error mid-way leaks nothing. */
static int w_json_encode(lua_State *L)
{
    char err[256] = "";
    size_t len;
    char *s;
    int rc;

    budget_check(L);
    luaL_checkany(L, 1);
    s = wl_to_json_text(L, 1, ctx_of(L)->limit, &len, err);
    if (!s)
        return luaL_error(L, "wapphook.json.encode: %s", err);
    rc = wl_budget_push_bytes(L, s, len);
    wl_json_text_free(L, s, len);
    if (rc != LUA_OK)
        return lua_error(L);
    return 1;
}

static int w_json_decode(lua_State *L)
{
    size_t len;
    const char *s;
    struct json_text_alloc a;
    struct json_text_error e;
    int line, column;

    budget_check(L);
    s = luaL_checklstring(L, 1, &len);
    /* the duplicate-key table, and the tables it builds, in the state's own memory */
    a.fn = (void *(*)(void *, void *, size_t, size_t))lua_getallocf(L, &a.ud);
    if (json_text_check_ex(s, len, &a, &e) != JSON_TEXT_INVALID) {
        wl_push_json_text(L, s, len);
        return 1;
    }
    budget_check(L); /* out of memory on the way: the stop, not a message */
    json_text_where(s, e.offset, &line, &column);
    lua_pushnil(L);
    lua_pushfstring(L, "invalid JSON at line %d, column %d: %s", line, column, e.reason);
    return 2;
}

static int w_hmac(lua_State *L)
{
    size_t kl, dl;
    const char *k, *d;
    char hex[2 * WH_MAC_LEN + 1];

    budget_check(L);
    k = luaL_checklstring(L, 1, &kl);
    d = luaL_checklstring(L, 2, &dl);

    if (signature_hmac_hex(k, kl, d, dl, hex))
        return luaL_error(L, "wapphook.hmac_sha256: OpenSSL failed");
    lua_pushstring(L, hex);
    return 1;
}

/* The result table of wapphook.exec from a struct exec_result (argument 1): run protected,
 * so a memory error cannot leak the outputs held in C memory. */
static int push_exec_result(lua_State *L)
{
    const struct exec_result *r = lua_touserdata(L, 1);

    lua_createtable(L, 0, 6);
    lua_pushlstring(L, r->out, r->out_len);
    lua_setfield(L, -2, "stdout");
    lua_pushlstring(L, r->err, r->err_len);
    lua_setfield(L, -2, "stderr");
    if (r->exited) {
        lua_pushinteger(L, r->code);
        lua_setfield(L, -2, "code");
    }
    if (r->signal) {
        lua_pushinteger(L, r->signal);
        lua_setfield(L, -2, "signal");
    }
    lua_pushboolean(L, r->timed_out);
    lua_setfield(L, -2, "timed_out");
    lua_pushboolean(L, r->truncated);
    lua_setfield(L, -2, "truncated");
    return 1;
}

/* wapphook.exec{argv=, stdin=, env=, timeout_ms=} (docs/handlers.md, "Handlers that act"). Its deadline is the
 * sooner of timeout_ms and the call's own; a call whose budget ran out in it has timed out. */
#define EXEC_MAX_ARGS 256
static int w_exec(lua_State *L)
{
    struct lctx *c = ctx_of(L);
    const struct wh_config *cfg = c->rt->cfg;
    const char *argv[EXEC_MAX_ARGS + 1], *env[60];
    char path[4096], why[512];
    struct exec_request rq = {0};
    struct exec_result r;
    enum exec_status st;
    int n = 0, ne = 0, rc;
    lua_Integer timeout;

    budget_check(L); /* after a stop, no command runs */
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getfield(L, 1, "argv") != LUA_TTABLE)
        return luaL_error(L, "wapphook.exec: argv must be a list {path, args...}");
    /* every argument stays on the stack while the command runs, then the env strings: room
     * for all of them (a C function is promised 20 slots, no more) */
    luaL_checkstack(L, EXEC_MAX_ARGS + 80, "wapphook.exec");
    for (;; n++) {
        if (lua_rawgeti(L, -1 - n, n + 1) == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        if (n == EXEC_MAX_ARGS)
            return luaL_error(L, "wapphook.exec: argv has more than %d entries", EXEC_MAX_ARGS);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "wapphook.exec: argv[%d] is not a string", n + 1);
        argv[n] = lua_tostring(L, -1); /* kept on the stack while the command runs */
    }
    if (n == 0)
        return luaL_error(L, "wapphook.exec: argv is empty");
    argv[n] = NULL;
    snprintf(path, sizeof path, "%s%s%s", argv[0][0] == '/' ? "" : cfg->dir,
             argv[0][0] == '/' ? "" : "/", argv[0]);
    argv[0] = path;
    if (!manifest_exec_allowed(cfg, path)) {
        metrics_exec(MX_NOT_ALLOWED);
        lua_pushnil(L);
        lua_pushfstring(L, "not allowed: %s is not in exec.allow", path);
        return 2;
    }
    if (lua_getfield(L, 1, "stdin") != LUA_TNIL)
        rq.stdin_data = luaL_checklstring(L, -1, &rq.stdin_len);
    if (lua_getfield(L, 1, "env") == LUA_TTABLE) {
        int et = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, et)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            int ok = k && (isalpha((unsigned char)*k) || *k == '_');
            for (const char *q = k; ok && *q; q++)
                ok = isalnum((unsigned char)*q) || *q == '_';
            if (!ok || lua_type(L, -1) != LUA_TSTRING || ne == 59)
                return luaL_error(L, "wapphook.exec: env must map names to strings (at most 59)");
            env[ne++] = lua_pushfstring(L, "%s=%s", k, lua_tostring(L, -1));
            lua_insert(L, -3); /* below key and value: it stays on the stack */
            lua_pop(L, 1);
        }
    }
    env[ne] = NULL;
    lua_getfield(L, 1, "timeout_ms");
    timeout = luaL_optinteger(L, -1, 0);
    if (timeout < 0)
        return luaL_error(L, "wapphook.exec: timeout_ms must be positive");
    rq.argv = argv;
    rq.env = env;
    rq.max_output = (size_t)cfg->exec_max_output_bytes;
    rq.deadline_ns = rq.return_by_ns = c->deadline_ns;
    if (timeout && wh_mono_ns() + timeout * 1000000LL < rq.deadline_ns)
        rq.deadline_ns = wh_mono_ns() + timeout * 1000000LL;
    st = exec_run(&rq, &r, why, sizeof why);
    if (st != EXEC_RAN) {
        metrics_exec(st == EXEC_BUSY ? MX_BUSY : MX_SPAWN);
        budget_check(L);
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    metrics_exec(r.timed_out ? MX_TIMEOUT : r.exited && r.code == 0 ? MX_OK : MX_FAILED);
    lua_pushcfunction(L, push_exec_result);
    lua_pushlightuserdata(L, &r);
    rc = lua_pcall(L, 1, 1, 0);
    exec_result_free(&r);
    if (rc != LUA_OK)
        return lua_error(L);
    budget_check(L); /* the call's own budget ended in the command: the call has timed out */
    return 1;
}

static int w_env(lua_State *L)
{
    const char *v;

    budget_check(L);
    v = getenv(luaL_checkstring(L, 1));

    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int w_now(lua_State *L)
{
    struct timespec ts;

    budget_check(L);
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static const struct wh_config *http_config(lua_State *L)
{
    return ctx_of(L)->rt->cfg;
}

static long long http_deadline(lua_State *L)
{
    return ctx_of(L)->deadline_ns;
}

static const struct wl_http_host http_host = {http_config, http_deadline, budget_check};

static void push_module(lua_State *L, const struct wl_runtime *rt)
{
    static const luaL_Reg fns[] = {{"log", w_log},   {"hmac_sha256", w_hmac},
                                   {"env", w_env},   {"now", w_now},
                                   {"exec", w_exec}, {NULL, NULL}};
    static const luaL_Reg json_fns[] = {{"encode", w_json_encode},
                                        {"decode", w_json_decode},
                                        {NULL, NULL}};

    luaL_newlib(L, fns);
    luaL_newlib(L, json_fns);
    wl_push_json_null(L);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
    wl_push_json_null(L);
    lua_setfield(L, -2, "null");
    wl_shared_push(L, rt->dicts, rt->n_dicts, budget_check);
    lua_setfield(L, -2, "shared");
    wl_http_push(L, &http_host);
    lua_setfield(L, -2, "http");
}

/* --- the sandbox ----------------------------------------------------------------------- */

/* load() in text mode only: a binary chunk can crash the VM. */
static int safe_load(lua_State *L)
{
    /* load(chunk [, chunkname [, mode [, env]]]): mode forced to "t"; an env given stays
     * (even nil), an env not given stays absent */
    int nargs = lua_gettop(L) >= 4 ? 4 : 3;

    lua_settop(L, nargs);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    return lua_gettop(L);
}

/* require() limited to lua.path, text only, results cached per state. */
static int safe_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    struct lctx *c = ctx_of(L);
    const char *templates = c->rt->cfg->lua_path;
    luaL_Buffer tried;
    char modpath[512];

    lua_getfield(L, LUA_REGISTRYINDEX, "wapphook.loaded");
    lua_getfield(L, -1, name);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            return luaL_error(L, "module '%s': invalid name", name);
    snprintf(modpath, sizeof modpath, "%s", name);
    for (char *p = modpath; *p; p++)
        if (*p == '.')
            *p = '/';
    luaL_buffinit(L, &tried);
    for (const char *t = templates; t && *t;) {
        const char *end = strchr(t, ';');
        size_t tl = end ? (size_t)(end - t) : strlen(t);
        char file[1024];
        size_t fl = 0;
        FILE *f;

        for (size_t i = 0; i < tl && fl + strlen(modpath) + 1 < sizeof file; i++) {
            if (t[i] == '?') {
                memcpy(file + fl, modpath, strlen(modpath));
                fl += strlen(modpath);
            } else {
                file[fl++] = t[i];
            }
        }
        file[fl] = '\0';
        t = end ? end + 1 : NULL;
        f = fopen(file, "rb");
        if (!f) {
            luaL_addstring(&tried, "\n\tno file '");
            luaL_addstring(&tried, file);
            luaL_addstring(&tried, "'");
            continue;
        }
        {
            char *buf = malloc(SCRIPT_MAX_BYTES);
            size_t n = buf ? fread(buf, 1, SCRIPT_MAX_BYTES, f) : 0;
            int rc;

            fclose(f);
            lua_pushfstring(L, "@%s", file);
            rc = buf ? luaL_loadbufferx(L, buf, n, lua_tostring(L, -1), "t") : LUA_ERRMEM;
            free(buf);
            if (rc != LUA_OK)
                return lua_error(L);
            lua_pushstring(L, name);
            lua_call(L, 1, 1);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                lua_pushboolean(L, 1);
            }
            lua_pushvalue(L, -1);
            lua_setfield(L, 2, name); /* wapphook.loaded[name]; 2: see the top */
            return 1;
        }
    }
    luaL_pushresult(&tried);
    return luaL_error(L, "module '%s' not found in lua.path:%s", name, lua_tostring(L, -1));
}

/* setmetatable() refusing metatables with a __gc field: Lua runs finalizers with hooks
 * off (at any collection, and in lua_close), so no limit could stop one. Lua marks an
 * object for finalization only when its metatable has __gc at this moment, so a __gc
 * added to the metatable later is never called. */
static int safe_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: a metatable with __gc is not allowed "
                                 "(finalizers run outside the handler's limits)");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static void open_sandbox(lua_State *L)
{
    static const char *const removed[] = {"dofile", "loadfile", "collectgarbage", NULL};
    static const char *const os_kept[] = {"time", "clock", "date", NULL};
    static const struct {
        const char *name;
        lua_CFunction open;
    } libs[] = {{LUA_GNAME, luaopen_base},         {LUA_STRLIBNAME, luaopen_string},
                {LUA_TABLIBNAME, luaopen_table},   {LUA_MATHLIBNAME, luaopen_math},
                {LUA_UTF8LIBNAME, luaopen_utf8},   {LUA_COLIBNAME, luaopen_coroutine}};

    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        luaL_requiref(L, libs[i].name, libs[i].open, 1);
        lua_pop(L, 1);
    }
    for (int i = 0; removed[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, removed[i]);
    }
    lua_getglobal(L, "load");
    lua_pushcclosure(L, safe_load, 1);
    lua_setglobal(L, "load");
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, safe_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    /* os with time, clock and date only */
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);
    lua_newtable(L);
    for (int i = 0; os_kept[i]; i++) {
        lua_getfield(L, -2, os_kept[i]);
        lua_setfield(L, -2, os_kept[i]);
    }
    lua_setglobal(L, "os");
    lua_pop(L, 1);
    lua_pushcfunction(L, safe_require);
    lua_setglobal(L, "require");
}

/* --- states --------------------------------------------------------------------------- */

static void push_event_meta(lua_State *L);

static int refuse_sethook(lua_State *L)
{
    return luaL_error(L, "debug.sethook is not available: wapphook's time limit uses the hook");
}

/* Without the sandbox the debug library stays, but not the parts that reach the host's own
 * values: the registry, a C function's upvalues (pointers the host dereferences), a
 * userdata's metatable or user value, a C frame's locals. Each refused with a clear error;
 * the rest (traceback, getinfo, a Lua function's locals and upvalues) works as usual. */
static int refuse_debug(lua_State *L)
{
    return luaL_error(L, "debug.%s is not available: it reaches wapphook's own values",
                      lua_tostring(L, lua_upvalueindex(1)));
}

/* upvalue 1: the name; 2: the function wrapped; 3: which argument may not be a C function
 * or a userdata (0: a stack level, whose frame may not be C) */
static int guarded_debug(lua_State *L)
{
    int arg = (int)lua_tointeger(L, lua_upvalueindex(3));
    bool host = false;

    for (int a = arg; a > 0 && a <= 3; a += 2) { /* upvaluejoin: arguments 1 and 3 */
        int t = lua_type(L, a);
        host |= lua_iscfunction(L, a) || t == LUA_TUSERDATA || t == LUA_TLIGHTUSERDATA;
        if (strcmp(lua_tostring(L, lua_upvalueindex(1)), "upvaluejoin") != 0)
            break;
    }
    if (arg == 0 && lua_type(L, 1) == LUA_TNUMBER) { /* getlocal/setlocal(level, n) */
        lua_Debug ar;
        if (lua_getstack(L, (int)lua_tointeger(L, 1), &ar) && lua_getinfo(L, "S", &ar))
            host = ar.what[0] == 'C';
    }
    if (host)
        return luaL_error(L, "debug.%s: not on wapphook's own functions or values",
                          lua_tostring(L, lua_upvalueindex(1)));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static void guard_debug(lua_State *L)
{
    static const char *const refused[] = {"getregistry", "getuservalue", "setuservalue", NULL};
    static const struct {
        const char *name;
        int arg;
    } guarded[] = {{"getupvalue", 1}, {"setupvalue", 1},    {"upvalueid", 1},
                   {"upvaluejoin", 1}, {"getmetatable", 1}, {"setmetatable", 1},
                   {"getlocal", 0},    {"setlocal", 0}};

    if (lua_getglobal(L, "debug") != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    for (int i = 0; refused[i]; i++) {
        lua_pushstring(L, refused[i]);
        lua_pushcclosure(L, refuse_debug, 1);
        lua_setfield(L, -2, refused[i]);
    }
    for (size_t i = 0; i < sizeof guarded / sizeof guarded[0]; i++) {
        lua_pushstring(L, guarded[i].name);
        lua_getfield(L, -2, guarded[i].name);
        lua_pushinteger(L, guarded[i].arg);
        lua_pushcclosure(L, guarded_debug, 3);
        lua_setfield(L, -2, guarded[i].name);
    }
    lua_pop(L, 1);
}

/* Libraries, sandbox, the wapphook module, print, the event metatable. */
static int setup_state(lua_State *L)
{
    const struct wl_runtime *rt = lua_touserdata(L, 1);

    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "wapphook.loaded");
    if (rt->cfg->lua_sandbox) {
        open_sandbox(L);
    } else {
        luaL_openlibs(L);
        lua_getglobal(L, "package");
        lua_pushstring(L, rt->cfg->lua_path);
        lua_setfield(L, -2, "path");
        lua_getfield(L, -1, "loaded");
        lua_setfield(L, LUA_REGISTRYINDEX, "wapphook.loaded"); /* one cache for require */
        lua_pop(L, 1);
        /* the count hook is the time limit: a script may not remove it */
        lua_getglobal(L, "debug");
        lua_pushcfunction(L, refuse_sethook);
        lua_setfield(L, -2, "sethook");
        lua_pop(L, 1);
        guard_debug(L);
    }
    /* lua_resume's own refusals, kept interned so that making them allocates nothing: an
     * allocation failing there would unwind past co_resume_ and leave the kick chain long */
    lua_createtable(L, 2, 0);
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    lua_rawseti(L, -2, 1);
    lua_pushliteral(L, "cannot resume dead coroutine");
    lua_rawseti(L, -2, 2);
    lua_setfield(L, LUA_REGISTRYINDEX, "wapphook.resume errors");
    /* resuming, wrapping and closing coroutines through the kick chain */
    if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
        lua_pushcfunction(L, co_resume);
        lua_setfield(L, -2, "resume");
        lua_pushcfunction(L, co_wrap);
        lua_setfield(L, -2, "wrap");
        lua_pushcfunction(L, co_close);
        lua_setfield(L, -2, "close");
    }
    lua_pop(L, 1);
    /* the C loops a script controls, on the call's budget */
    lua_getglobal(L, "string");
    wl_patterns_install(L, -1, budget_check);
    lua_pop(L, 1);
    wl_bounded_install(L, budget_check);
    lua_getfield(L, LUA_REGISTRYINDEX, "wapphook.loaded");
    push_module(L, rt);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "wapphook");
    lua_setfield(L, -2, "wapphook");
    lua_pop(L, 1);
    lua_pushcfunction(L, w_print);
    lua_setglobal(L, "print");
    push_event_meta(L);
    lua_pop(L, 1);
    return 0;
}

/* Pushes global `name` without metamethods: a script may give _G an __index, and the
 * host must run no script code outside a call. */
static int push_raw_global(lua_State *L, const char *name)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    lua_pushstring(L, name);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return lua_type(L, -1);
}

/* The type of global `name` (a light userdata), read raw: for a protected call. */
static int raw_global_type(lua_State *L)
{
    lua_pushinteger(L, push_raw_global(L, lua_touserdata(L, 1)));
    return 1;
}

/* Makes a state for script s and runs its top level, which must end by deadline_ns; checks
 * that `function` (if not NULL) exists. NULL with a message in err. */
static struct lstate *state_new(struct wl_runtime *rt, const struct script *s,
                                const char *function, int budget_ms, long long deadline_ns,
                                char *err, size_t err_len)
{
    struct lstate *st = calloc(1, sizeof *st);
    lua_State *L;
    char chunk[1100];
    int rc;

    if (!st)
        return NULL;
    st->ctx.rt = rt;
    st->ctx.script = s;
    st->ctx.limit = (size_t)rt->cfg->lua_memory_limit_mb << 20;
    L = st->L = lua_newstate(l_alloc, &st->ctx);
    if (!L) {
        snprintf(err, err_len, "cannot create a Lua state within lua.memory_limit_mb");
        free(st);
        return NULL;
    }
    *(struct lctx **)lua_getextraspace(L) = &st->ctx;
    lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
    /* protected: running out of memory here must be an error, not a panic */
    lua_pushcfunction(L, setup_state);
    lua_pushlightuserdata(L, rt);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        snprintf(err, err_len, "cannot set up a Lua state: %s", lua_tostring(L, -1));
        goto fail;
    }

    /* the script's top level, under the same limits as a call */
    lua_pushcfunction(L, traceback);
    snprintf(chunk, sizeof chunk, "@%s", s->display);
    rc = luaL_loadbufferx(L, s->source, s->source_len, chunk, "t");
    if (rc == LUA_OK) {
        st->ctx.killed = KILL_NONE;
        st->ctx.budget_ms = budget_ms;
        st->ctx.deadline_ns = deadline_ns;
        kick_call(L, deadline_ns);
        rc = lua_pcall(L, 0, 0, -2);
        kick_call(L, 0);
        st->ctx.deadline_ns = 0;
    }
    if (st->ctx.killed && rc == LUA_OK) {
        snprintf(err, err_len, "top level: %s (the script caught the stop)",
                 stop_reason(&st->ctx));
        goto fail;
    }
    if (rc != LUA_OK) {
        const char *m = lua_tostring(L, -1) ? lua_tostring(L, -1) : "error";
        if (st->ctx.killed && !strstr(m, "timeout: ") && !strstr(m, "memory limit: "))
            snprintf(err, err_len, "top level: %s (stopped: %s)", stop_reason(&st->ctx), m);
        else
            snprintf(err, err_len, "%s", m);
        goto fail;
    }
    lua_pop(L, 1);
    if (function) { /* looked up protected: the state may be full after its top level */
        int type;
        lua_pushcfunction(L, raw_global_type);
        lua_pushlightuserdata(L, (void *)function);
        type = lua_pcall(L, 1, 1, 0) == LUA_OK ? (int)lua_tointeger(L, -1) : LUA_TNONE;
        if (type != LUA_TFUNCTION) {
            snprintf(err, err_len, "defines no function %s() (it is %s)", function,
                     lua_typename(L, type));
            goto fail;
        }
        lua_pop(L, 1);
    }
    lua_gc(L, LUA_GCGEN, 0, 0); /* generational: short-lived event tables are cheap */
    return st;
fail:
    lua_close(L);
    free(st);
    return NULL;
}

static void state_free(struct lstate *st)
{
    if (!st)
        return;
    lua_close(st->L);
    free(st);
}

/* --- the event table ---------------------------------------------------------------------- */

/* The event's C side (a box) is kept in the registry, keyed by the event table (weak keys):
 * nothing of it is in the table, so next(event) finds only the fields, and no script can
 * put a value of its choosing where the host reads the event. */
#define EVENTS_KEY "wapphook.events"
#define BOX_TYPE "wapphook.event box"
static const char box_held = 0; /* registry key: the box of the call under way */

struct event_box {
    const struct wh_event *ev; /* NULL once the call has returned */
};

static int event_index(lua_State *L)
{
    const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    struct event_box *box;

    if (!k || (strcmp(k, "payload") != 0 && strcmp(k, "headers") != 0))
        return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, EVENTS_KEY);
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    box = luaL_testudata(L, -1, BOX_TYPE);
    if (!box || !box->ev)
        return luaL_error(L, "event.%s is only available while the handler runs", k);
    if (k[0] == 'p') {
        /* converted on first access only: handlers that never read it pay nothing */
        wl_push_json_text(L, box->ev->body, box->ev->body_len);
    } else {
        char name[256];
        lua_createtable(L, 0, box->ev->n_headers);
        for (int i = box->ev->n_headers - 1; i >= 0; i--) { /* first occurrence wins */
            size_t n = strlen(box->ev->headers[i].name);
            if (n >= sizeof name)
                continue;
            for (size_t j = 0; j <= n; j++)
                name[j] = (char)tolower((unsigned char)box->ev->headers[i].name[j]);
            lua_pushstring(L, box->ev->headers[i].value);
            lua_setfield(L, -2, name);
        }
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, k); /* cache: later reads are plain field reads */
    return 1;
}

static void push_event_meta(lua_State *L)
{
    if (luaL_newmetatable(L, BOX_TYPE)) {
        lua_pushliteral(L, "wapphook.event");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    lua_newtable(L); /* the boxes, by event table */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, EVENTS_KEY);
    if (luaL_newmetatable(L, "wapphook.event")) {
        lua_pushcfunction(L, event_index);
        lua_setfield(L, -2, "__index");
        /* hidden from getmetatable: a script that could reach it could add a __gc that
         * luaL_setmetatable would then arm on the next event */
        lua_pushliteral(L, "wapphook.event");
        lua_setfield(L, -2, "__metatable");
    }
}

static struct event_box *push_event(lua_State *L, const struct wh_event *ev)
{
    struct event_box *box;

    lua_createtable(L, 0, 6);
    lua_pushstring(L, ev->type);
    lua_setfield(L, -2, "type");
    lua_pushlstring(L, ev->body, ev->body_len);
    lua_setfield(L, -2, "body");
    lua_pushnumber(L, ev->received_at);
    lua_setfield(L, -2, "received_at");
    luaL_setmetatable(L, "wapphook.event");
    lua_getfield(L, LUA_REGISTRYINDEX, EVENTS_KEY);
    lua_pushvalue(L, -2);
    box = lua_newuserdatauv(L, sizeof *box, 0);
    box->ev = ev;
    luaL_setmetatable(L, BOX_TYPE);
    /* held while the call runs, whatever becomes of the event table (the host clears it
     * after the call) */
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &box_held);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return box;
}

/* --- the runtime ---------------------------------------------------------------------------- */

static int read_script(struct script *s, char *err, size_t err_len)
{
    FILE *f = fopen(s->path, "rb");

    if (!f) {
        snprintf(err, err_len, "%s", strerror(errno));
        return -1;
    }
    s->source = malloc(SCRIPT_MAX_BYTES + 1);
    s->source_len = s->source ? fread(s->source, 1, SCRIPT_MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (!s->source || s->source_len > SCRIPT_MAX_BYTES) {
        snprintf(err, err_len, "larger than %d bytes", SCRIPT_MAX_BYTES);
        return -1;
    }
    return 0;
}

int wl_runtime_script(const struct wl_runtime *rt, const char *path)
{
    for (int i = 0; i < rt->n_scripts; i++)
        if (strcmp(rt->scripts[i].path, path) == 0)
            return i;
    return -1;
}

int wl_runtime_new(const struct wh_config *cfg, struct wl_runtime **out, char *err,
                    size_t err_len)
{
    static pthread_once_t calibrated = PTHREAD_ONCE_INIT;
    struct wl_runtime *rt = wh_xcalloc(1, sizeof *rt);
    size_t max = 0;
    char why[2048];

    pthread_once(&calibrated, calibrate);
    pthread_once(&kicker_once, kicker_start);
    rt->cfg = cfg;
    if (!__atomic_load_n(&kicker_running, __ATOMIC_ACQUIRE)) {
        snprintf(err, err_len, "cannot start the thread that stops Lua calls at their budget");
        free(rt);
        return -1;
    }
    /* the shared dictionaries first: scripts may use them at their top level */
    rt->dicts = wh_xcalloc(cfg->n_shared, sizeof *rt->dicts);
    for (size_t i = 0; i < cfg->n_shared; i++)
        if ((rt->dicts[rt->n_dicts] = shared_dict_open(cfg->shared[i].name, cfg->shared[i].size_mb)))
            rt->n_dicts++;
    for (size_t i = 0; i < cfg->n_hooks; i++)
        max += cfg->hooks[i].n_handlers;
    rt->scripts = wh_xcalloc(max, sizeof *rt->scripts);
    /* one script per distinct file, read once */
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            struct script *s;

            if (h->kind != WH_HANDLER_LUA || wl_runtime_script(rt, h->path) >= 0)
                continue;
            s = &rt->scripts[rt->n_scripts++];
            s->path = wh_xstrdup(h->path);
            s->display = wh_xstrdup(h->display);
            s->line = h->line;
            if (read_script(s, why, sizeof why)) {
                snprintf(err, err_len, "%s:%d: script %s: %s", cfg->file, h->line, h->display,
                         why);
                goto fail;
            }
        }
    }
    /* prove each (script, function) in a fresh state, as serve would run it */
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            struct lstate *st;

            if (h->kind != WH_HANDLER_LUA)
                continue;
            int budget = wh_handler_budget_ms(cfg, h);
            st = state_new(rt, &rt->scripts[wl_runtime_script(rt, h->path)], h->function,
                           budget, wh_mono_ns() + (long long)budget * 1000000LL, why,
                           sizeof why);
            if (!st) {
                snprintf(err, err_len, "%s:%d: script %s: %s", cfg->file, h->line, h->display,
                         why);
                goto fail;
            }
            state_free(st);
        }
    }
    rt->n_slots = cfg->threads + SPARE_THREAD_SLOTS;
    rt->states = wh_xcalloc((size_t)rt->n_slots * (size_t)(rt->n_scripts ? rt->n_scripts : 1),
                        sizeof *rt->states);
    *out = rt;
    return 0;
fail:
    wl_runtime_free(rt);
    return -1;
}

void wl_runtime_free(struct wl_runtime *rt)
{
    if (!rt)
        return;
    if (rt->states)
        for (int i = 0; i < rt->n_slots * rt->n_scripts; i++)
            state_free(rt->states[i]);
    free(rt->states);
    for (int i = 0; i < rt->n_scripts; i++) {
        free(rt->scripts[i].path);
        free(rt->scripts[i].display);
        free(rt->scripts[i].source);
    }
    free(rt->scripts);
    for (int i = 0; i < rt->n_dicts; i++) /* after the states: none can reach them now */
        shared_dict_release(rt->dicts[i]);
    free(rt->dicts);
    free(rt);
}

/* A small, stable number per thread: the index of its states in every runtime. */
static int thread_index(void)
{
    static int next;
    static __thread int mine = -1;

    if (mine < 0)
        mine = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
    return mine;
}

/* A returned or raised message: used only if it is a string (no __tostring, no __name). */
/* Allocates nothing (it runs outside any protected call, where an allocation failing would
 * end the process): buf holds the text for a value that is not a string. */
static const char *message_of(lua_State *L, int idx, char *buf, size_t len)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tostring(L, idx);
    snprintf(buf, len, "(a %s value)", luaL_typename(L, idx));
    return buf;
}

/* The handler and its event, pushed inside a protected call: out of memory here is an error
 * the call reports, not a panic that ends the process. */
struct prepared {
    const char *function;
    const struct wh_event *ev;
    struct event_box *box;
};

static int prepare_call(lua_State *L)
{
    struct prepared *p = lua_touserdata(L, 1);

    push_raw_global(L, p->function);
    p->box = push_event(L, p->ev);
    return 2;
}

enum wh_outcome wl_runtime_call(struct wl_runtime *rt, int idx, const char *function,
                                  int budget_ms, const struct wh_event *ev, char *err,
                                  size_t err_len)
{
    int slot = thread_index();
    struct lstate **where = slot < rt->n_slots ? &rt->states[slot * rt->n_scripts + idx] : NULL;
    struct lstate *st = where ? *where : NULL;
    /* one budget covers everything the call runs, a first call's top level included */
    long long deadline = wh_mono_ns() + (long long)budget_ms * 1000000LL;
    struct prepared prep = {function, ev, NULL};
    enum wh_outcome out = WH_OUTCOME_OK;
    char mbuf[2][64];
    lua_State *L;
    int base, rc;

    if (!st) {
        st = state_new(rt, &rt->scripts[idx], NULL, budget_ms, deadline, err, err_len);
        if (!st)
            return WH_OUTCOME_FAILED;
        if (where)
            *where = st;
    }
    L = st->L;
    base = lua_gettop(L);
    lua_pushcfunction(L, traceback); /* a light C function: nothing allocated */
    lua_pushcfunction(L, prepare_call);
    lua_pushlightuserdata(L, &prep);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) { /* the state is full: start afresh next time */
        snprintf(err, err_len, "memory limit: no room in the state for the event (%s)",
                 message_of(L, -1, mbuf[0], sizeof mbuf[0]));
        lua_settop(L, base);
        state_free(st);
        if (where)
            *where = NULL;
        return WH_OUTCOME_MEMORY;
    }
    st->ctx.killed = KILL_NONE;
    st->ctx.budget_ms = budget_ms;
    st->ctx.deadline_ns = deadline;
    lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
    kick_call(L, deadline);
    rc = lua_pcall(L, 1, 2, base + 1);
    kick_call(L, 0);
    st->ctx.deadline_ns = 0;
    prep.box->ev = NULL; /* a script that kept the event can no longer reach freed memory */
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &box_held); /* an existing key: nothing allocated */
    if (st->ctx.killed) {
        /* final, whatever the script returned after catching it */
        const char *m = rc != LUA_OK ? message_of(L, -1, mbuf[0], sizeof mbuf[0]) : "";
        out = st->ctx.killed == KILL_TIMEOUT ? WH_OUTCOME_TIMEOUT : WH_OUTCOME_MEMORY;
        if (rc != LUA_OK && (strstr(m, "timeout: ") || strstr(m, "memory limit: ")))
            snprintf(err, err_len, "%s", m); /* the stop itself, with where it struck */
        else if (rc != LUA_OK) /* another error on the way out (an allocation refused...) */
            snprintf(err, err_len, "%s (stopped: %s)", stop_reason(&st->ctx), m);
        else
            snprintf(err, err_len, "%s (the script caught the stop; the call failed anyway)",
                     stop_reason(&st->ctx));
    } else if (rc != LUA_OK) {
        snprintf(err, err_len, "%s", message_of(L, -1, mbuf[0], sizeof mbuf[0]));
        out = rc == LUA_ERRMEM ? WH_OUTCOME_MEMORY : WH_OUTCOME_FAILED;
    } else if (lua_type(L, base + 2) == LUA_TBOOLEAN && !lua_toboolean(L, base + 2)) {
        snprintf(err, err_len, "%s() returned false%s%s", function,
                 lua_isnoneornil(L, base + 3) ? "" : ": ",
                 lua_isnoneornil(L, base + 3) ? "" : message_of(L, base + 3, mbuf[1], sizeof mbuf[1]));
        out = WH_OUTCOME_FAILED;
    } else if (lua_isnil(L, base + 2) && !lua_isnoneornil(L, base + 3)) {
        snprintf(err, err_len, "%s() returned nil, %s", function,
                 message_of(L, base + 3, mbuf[1], sizeof mbuf[1]));
        out = WH_OUTCOME_FAILED;
    }
    lua_settop(L, base);
    if (out == WH_OUTCOME_TIMEOUT || out == WH_OUTCOME_MEMORY || !where) {
        /* the script was stopped anywhere: its globals may be half-updated; start afresh */
        state_free(st);
        if (where)
            *where = NULL;
    }
    return out;
}
