#define _GNU_SOURCE
#include "state.h"

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
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            return luaL_error(L, "module '%s': invalid name", name);
    snprintf(modpath, sizeof modpath, "%s", name);
    for (char *p = modpath; *p; p++)
        if (*p == '.') *p = '/';
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
            if (rc != LUA_OK) return lua_error(L);
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
    } libs[] = {{LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
                {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
                {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine}};

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
        if (strcmp(lua_tostring(L, lua_upvalueindex(1)), "upvaluejoin") != 0) break;
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
    } guarded[] = {{"getupvalue", 1},   {"setupvalue", 1},   {"upvalueid", 1}, {"upvaluejoin", 1},
                   {"getmetatable", 1}, {"setmetatable", 1}, {"getlocal", 0},  {"setlocal", 0}};

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
     * allocation failing there would unwind past wl_co_resume_raw and leave the kick chain long */
    lua_createtable(L, 2, 0);
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    lua_rawseti(L, -2, 1);
    lua_pushliteral(L, "cannot resume dead coroutine");
    lua_rawseti(L, -2, 2);
    lua_setfield(L, LUA_REGISTRYINDEX, "wapphook.resume errors");
    /* resuming, wrapping and closing coroutines through the kick chain */
    if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
        lua_pushcfunction(L, wl_co_resume);
        lua_setfield(L, -2, "resume");
        lua_pushcfunction(L, wl_co_wrap);
        lua_setfield(L, -2, "wrap");
        lua_pushcfunction(L, wl_co_close);
        lua_setfield(L, -2, "close");
    }
    lua_pop(L, 1);
    /* the C loops a script controls, on the call's budget */
    lua_getglobal(L, "string");
    wl_patterns_install(L, -1, wl_budget_check);
    lua_pop(L, 1);
    wl_bounded_install(L, wl_budget_check);
    lua_getfield(L, LUA_REGISTRYINDEX, "wapphook.loaded");
    wl_push_module(L, rt);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "wapphook");
    lua_setfield(L, -2, "wapphook");
    lua_pop(L, 1);
    lua_pushcfunction(L, wl_print);
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
static struct lstate *state_new(struct wl_runtime *rt, const struct script *s, const char *function,
                                int budget_ms, long long deadline_ns, char *err, size_t err_len)
{
    struct lstate *st = calloc(1, sizeof *st);
    lua_State *L;
    char chunk[1100];
    int rc;

    if (!st) return NULL;
    st->ctx.rt = rt;
    st->ctx.script = s;
    st->ctx.limit = (size_t)rt->cfg->lua_memory_limit_mb << 20;
    L = st->L = lua_newstate(wl_alloc, &st->ctx);
    if (!L) {
        snprintf(err, err_len, "cannot create a Lua state within lua.memory_limit_mb");
        free(st);
        return NULL;
    }
    *(struct lctx **)lua_getextraspace(L) = &st->ctx;
    lua_sethook(L, wl_hook, LUA_MASKCOUNT, HOOK_EVERY);
    /* protected: running out of memory here must be an error, not a panic */
    lua_pushcfunction(L, setup_state);
    lua_pushlightuserdata(L, rt);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        snprintf(err, err_len, "cannot set up a Lua state: %s", lua_tostring(L, -1));
        goto fail;
    }

    /* the script's top level, under the same limits as a call */
    lua_pushcfunction(L, wl_traceback);
    snprintf(chunk, sizeof chunk, "@%s", s->display);
    rc = luaL_loadbufferx(L, s->source, s->source_len, chunk, "t");
    if (rc == LUA_OK) {
        st->ctx.killed = KILL_NONE;
        st->ctx.budget_ms = budget_ms;
        st->ctx.deadline_ns = deadline_ns;
        wl_kick_call(L, deadline_ns);
        rc = lua_pcall(L, 0, 0, -2);
        wl_kick_call(L, 0);
        st->ctx.deadline_ns = 0;
    }
    if (st->ctx.killed && rc == LUA_OK) {
        snprintf(err, err_len, "top level: %s (the script caught the stop)",
                 wl_stop_reason(&st->ctx));
        goto fail;
    }
    if (rc != LUA_OK) {
        const char *m = lua_tostring(L, -1) ? lua_tostring(L, -1) : "error";
        if (st->ctx.killed && !strstr(m, "timeout: ") && !strstr(m, "memory limit: "))
            snprintf(err, err_len, "top level: %s (stopped: %s)", wl_stop_reason(&st->ctx), m);
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
    if (!st) return;
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

    if (!k || (strcmp(k, "payload") != 0 && strcmp(k, "headers") != 0)) return 0;
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
            if (n >= sizeof name) continue;
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
        if (strcmp(rt->scripts[i].path, path) == 0) return i;
    return -1;
}

int wl_runtime_new(const struct wh_config *cfg, struct wl_runtime **out, char *err, size_t err_len)
{
    struct wl_runtime *rt = wh_xcalloc(1, sizeof *rt);
    size_t max = 0;
    char why[2048];

    rt->cfg = cfg;
    if (wl_limits_start() != 0) {
        snprintf(err, err_len, "cannot start the thread that stops Lua calls at their budget");
        free(rt);
        return -1;
    }
    /* the shared dictionaries first: scripts may use them at their top level */
    rt->dicts = wh_xcalloc(cfg->n_shared, sizeof *rt->dicts);
    for (size_t i = 0; i < cfg->n_shared; i++)
        if ((rt->dicts[rt->n_dicts] =
                 shared_dict_open(cfg->shared[i].name, cfg->shared[i].size_mb)))
            rt->n_dicts++;
    for (size_t i = 0; i < cfg->n_hooks; i++)
        max += cfg->hooks[i].n_handlers;
    rt->scripts = wh_xcalloc(max, sizeof *rt->scripts);
    /* one script per distinct file, read once */
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            struct script *s;

            if (h->kind != WH_HANDLER_LUA || wl_runtime_script(rt, h->path) >= 0) continue;
            s = &rt->scripts[rt->n_scripts++];
            s->path = wh_xstrdup(h->path);
            s->display = wh_xstrdup(h->display);
            s->line = h->line;
            if (read_script(s, why, sizeof why)) {
                snprintf(err, err_len, "%s:%d: script %s: %s", cfg->file, h->line, h->display, why);
                goto fail;
            }
        }
    }
    /* prove each (script, function) in a fresh state, as serve would run it */
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            struct lstate *st;

            if (h->kind != WH_HANDLER_LUA) continue;
            int budget = wh_handler_budget_ms(cfg, h);
            st = state_new(rt, &rt->scripts[wl_runtime_script(rt, h->path)], h->function, budget,
                           wh_mono_ns() + (long long)budget * 1000000LL, why, sizeof why);
            if (!st) {
                snprintf(err, err_len, "%s:%d: script %s: %s", cfg->file, h->line, h->display, why);
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
    if (!rt) return;
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

    if (mine < 0) mine = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
    return mine;
}

/* A returned or raised message: used only if it is a string (no __tostring, no __name). */
/* Allocates nothing (it runs outside any protected call, where an allocation failing would
 * end the process): buf holds the text for a value that is not a string. */
static const char *message_of(lua_State *L, int idx, char *buf, size_t len)
{
    if (lua_type(L, idx) == LUA_TSTRING) return lua_tostring(L, idx);
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

enum wh_outcome wl_runtime_call(struct wl_runtime *rt, int idx, const char *function, int budget_ms,
                                const struct wh_event *ev, char *err, size_t err_len)
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
        if (!st) return WH_OUTCOME_FAILED;
        if (where) *where = st;
    }
    L = st->L;
    base = lua_gettop(L);
    lua_pushcfunction(L, wl_traceback); /* a light C function: nothing allocated */
    lua_pushcfunction(L, prepare_call);
    lua_pushlightuserdata(L, &prep);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) { /* the state is full: start afresh next time */
        snprintf(err, err_len, "memory limit: no room in the state for the event (%s)",
                 message_of(L, -1, mbuf[0], sizeof mbuf[0]));
        lua_settop(L, base);
        state_free(st);
        if (where) *where = NULL;
        return WH_OUTCOME_MEMORY;
    }
    st->ctx.killed = KILL_NONE;
    st->ctx.budget_ms = budget_ms;
    st->ctx.deadline_ns = deadline;
    lua_sethook(L, wl_hook, LUA_MASKCOUNT, HOOK_EVERY);
    wl_kick_call(L, deadline);
    rc = lua_pcall(L, 1, 2, base + 1);
    wl_kick_call(L, 0);
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
            snprintf(err, err_len, "%s (stopped: %s)", wl_stop_reason(&st->ctx), m);
        else
            snprintf(err, err_len, "%s (the script caught the stop; the call failed anyway)",
                     wl_stop_reason(&st->ctx));
    } else if (rc != LUA_OK) {
        snprintf(err, err_len, "%s", message_of(L, -1, mbuf[0], sizeof mbuf[0]));
        out = rc == LUA_ERRMEM ? WH_OUTCOME_MEMORY : WH_OUTCOME_FAILED;
    } else if (lua_type(L, base + 2) == LUA_TBOOLEAN && !lua_toboolean(L, base + 2)) {
        snprintf(err, err_len, "%s() returned false%s%s", function,
                 lua_isnoneornil(L, base + 3) ? "" : ": ",
                 lua_isnoneornil(L, base + 3) ? ""
                                              : message_of(L, base + 3, mbuf[1], sizeof mbuf[1]));
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
        if (where) *where = NULL;
    }
    return out;
}
