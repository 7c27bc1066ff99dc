#define _GNU_SOURCE
#include "lua_runtime.h"

#include "clock.h"

#include "exec.h"
#include "metrics.h"

#include "log.h"
#include "json_text.h"
#include "lua_bounded.h"
#include "lua_budget.h"
#include "lua_json.h"
#include "lua_patterns.h"
#include "lua_http.h"
#include "lua_shared.h"
#include "verify.h"

#include <ctype.h>
#include <errno.h>
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

enum kill_reason { KILL_NONE, KILL_TIMEOUT, KILL_MEMORY };

/* Per state, reachable from every coroutine through the extra space. */
struct lctx {
    const struct lua_runtime *rt;
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

struct lua_runtime {
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
    if (nsize > old && c->used + (nsize - old) > c->limit) {
        /* From here every instruction raises (see l_hook): a pcall cannot catch it. */
        if (c->deadline_ns)
            c->killed = KILL_MEMORY;
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (!p)
        return NULL;
    c->used = c->used - old + nsize;
    return p;
}

static void l_hook(lua_State *L, lua_Debug *ar);

/* Raises the stop of a killed call. From here on every instruction of every coroutine and
 * every budget check raises it again, so no pcall, coroutine or __close can get past it;
 * and lua_runtime_call() fails the call whatever it returns. */
static void raise_stop(lua_State *L, const struct lctx *c)
{
    lua_sethook(L, l_hook, LUA_MASKCOUNT, 1); /* this coroutine: on the very next instruction */
    if (c->killed == KILL_TIMEOUT)
        luaL_error(L, "timeout: the handler ran longer than its budget (%d ms)", c->budget_ms);
    luaL_error(L, "memory limit: the state grew past lua.memory_limit_mb (%d MiB)",
               c->rt->cfg->lua_memory_limit_mb);
}

/* The budget check, for Lua code (the hook) and for C loops (lua_budget.h) alike. */
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
    int level = luaL_checkoption(L, 1, NULL, levels);
    size_t len;
    const char *msg = luaL_checklstring(L, 2, &len);
    struct lctx *c = ctx_of(L);

    log_msg((enum log_level)level, "script", LOG_SN("message", msg, len),
            LOG_S("script", c->script->display));
    return 0;
}

static int w_print(lua_State *L)
{
    luaL_Buffer b;
    int n = lua_gettop(L);
    struct lctx *c = ctx_of(L);

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

    luaL_checkany(L, 1);
    s = lua_to_json_text(L, 1, ctx_of(L)->limit, &len, err);
    if (!s)
        return luaL_error(L, "wapphook.json.encode: %s", err);
    rc = lua_budget_push_bytes(L, s, len);
    free(s);
    if (rc != LUA_OK)
        return lua_error(L);
    return 1;
}

static int w_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    json_error_t e;
    json_t *j;

    if (json_text_check(s, len) != JSON_TEXT_INVALID) {
        lua_push_json_text(L, s, len);
        return 1;
    }
    /* jansson only to say where: it stops at the first fault and frees what it built */
    j = json_loadb(s, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &e);
    lua_pushnil(L);
    if (j) { /* a raw NUL byte jansson skips (README: where it differs from SPEC) */
        json_decref(j);
        lua_pushliteral(L, "invalid JSON: a NUL byte outside a string");
    } else {
        lua_pushfstring(L, "invalid JSON at line %d, column %d: %s", e.line, e.column, e.text);
    }
    return 2;
}

static int w_hmac(lua_State *L)
{
    size_t kl, dl;
    const char *k = luaL_checklstring(L, 1, &kl);
    const char *d = luaL_checklstring(L, 2, &dl);
    char hex[2 * WH_MAC_LEN + 1];

    if (hmac_sha256_hex(k, kl, d, dl, hex))
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

/* wapphook.exec{argv=, stdin=, env=, timeout_ms=}: SPEC section 10. Its deadline is the
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

    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getfield(L, 1, "argv") != LUA_TTABLE)
        return luaL_error(L, "wapphook.exec: argv must be a list {path, args...}");
    for (; n < EXEC_MAX_ARGS; n++) {
        if (lua_rawgeti(L, -1 - n, n + 1) == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
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
    if (!exec_allowed(cfg, path)) {
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
    rq.deadline_ns = c->deadline_ns;
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
    const char *v = getenv(luaL_checkstring(L, 1));

    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int w_now(lua_State *L)
{
    struct timespec ts;

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

static const struct lua_http_host http_host = {http_config, http_deadline, budget_check};

static void push_module(lua_State *L, const struct lua_runtime *rt)
{
    static const luaL_Reg fns[] = {{"log", w_log},   {"hmac_sha256", w_hmac},
                                   {"env", w_env},   {"now", w_now},
                                   {"exec", w_exec}, {NULL, NULL}};
    static const luaL_Reg json_fns[] = {{"encode", w_json_encode},
                                        {"decode", w_json_decode},
                                        {NULL, NULL}};

    luaL_newlib(L, fns);
    luaL_newlib(L, json_fns);
    lua_push_json_null(L);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
    lua_push_json_null(L);
    lua_setfield(L, -2, "null");
    lua_shared_push(L, rt->dicts, rt->n_dicts);
    lua_setfield(L, -2, "shared");
    lua_http_push(L, &http_host);
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

/* Libraries, sandbox, the wapphook module, print, the event metatable. */
static int setup_state(lua_State *L)
{
    const struct lua_runtime *rt = lua_touserdata(L, 1);

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
    }
    /* the C loops a script controls, on the call's budget */
    lua_getglobal(L, "string");
    lua_patterns_install(L, -1, budget_check);
    lua_pop(L, 1);
    lua_bounded_install(L, budget_check);
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

/* Makes a state for script s and runs its top level, which must end by deadline_ns; checks
 * that `function` (if not NULL) exists. NULL with a message in err. */
static struct lstate *state_new(struct lua_runtime *rt, const struct script *s,
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
        rc = lua_pcall(L, 0, 0, -2);
        st->ctx.deadline_ns = 0;
    }
    if (st->ctx.killed && rc == LUA_OK) {
        snprintf(err, err_len, "top level: %s (the script caught the stop)",
                 st->ctx.killed == KILL_TIMEOUT ? "timeout: ran longer than its budget"
                                                : "memory limit: grew past lua.memory_limit_mb");
        goto fail;
    }
    if (rc != LUA_OK) {
        snprintf(err, err_len, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        goto fail;
    }
    lua_pop(L, 1);
    if (function) {
        int type = push_raw_global(L, function);
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

static const char box_key = 0; /* private key of the event table: the box */

struct event_box {
    const struct wh_event *ev; /* NULL once the call has returned */
};

static int event_index(lua_State *L)
{
    const char *k = lua_tostring(L, 2);
    struct event_box *box;

    if (!k || (strcmp(k, "payload") != 0 && strcmp(k, "headers") != 0))
        return 0;
    lua_rawgetp(L, 1, &box_key);
    box = lua_touserdata(L, -1);
    if (!box || !box->ev)
        return luaL_error(L, "event.%s is only available while the handler runs", k);
    if (k[0] == 'p') {
        /* converted on first access only: handlers that never read it pay nothing */
        lua_push_json_text(L, box->ev->body, box->ev->body_len);
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
    box = lua_newuserdatauv(L, sizeof *box, 0);
    box->ev = ev;
    lua_rawsetp(L, -2, &box_key);
    luaL_setmetatable(L, "wapphook.event");
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

int lua_runtime_script(const struct lua_runtime *rt, const char *path)
{
    for (int i = 0; i < rt->n_scripts; i++)
        if (strcmp(rt->scripts[i].path, path) == 0)
            return i;
    return -1;
}

int lua_runtime_new(const struct wh_config *cfg, struct lua_runtime **out, char *err,
                    size_t err_len)
{
    struct lua_runtime *rt = calloc(1, sizeof *rt);
    size_t max = 0;
    char why[2048];

    if (!rt)
        return -1;
    rt->cfg = cfg;
    /* the shared dictionaries first: scripts may use them at their top level */
    rt->dicts = calloc(cfg->n_shared ? cfg->n_shared : 1, sizeof *rt->dicts);
    for (size_t i = 0; rt->dicts && i < cfg->n_shared; i++)
        if ((rt->dicts[rt->n_dicts] = shared_dict_open(cfg->shared[i].name, cfg->shared[i].size_mb)))
            rt->n_dicts++;
    for (size_t i = 0; i < cfg->n_hooks; i++)
        max += cfg->hooks[i].n_handlers;
    rt->scripts = calloc(max ? max : 1, sizeof *rt->scripts);
    /* one script per distinct file, read once */
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            struct script *s;

            if (h->kind != WH_HANDLER_LUA || lua_runtime_script(rt, h->path) >= 0)
                continue;
            s = &rt->scripts[rt->n_scripts++];
            s->path = strdup(h->path);
            s->display = strdup(h->display);
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
            st = state_new(rt, &rt->scripts[lua_runtime_script(rt, h->path)], h->function,
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
    rt->states = calloc((size_t)rt->n_slots * (size_t)(rt->n_scripts ? rt->n_scripts : 1),
                        sizeof *rt->states);
    *out = rt;
    return 0;
fail:
    lua_runtime_free(rt);
    return -1;
}

void lua_runtime_free(struct lua_runtime *rt)
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
static const char *message_of(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tostring(L, idx);
    return lua_pushfstring(L, "(a %s value)", luaL_typename(L, idx));
}

enum lua_outcome lua_runtime_call(struct lua_runtime *rt, int idx, const char *function,
                                  int budget_ms, const struct wh_event *ev, char *err,
                                  size_t err_len)
{
    int slot = thread_index();
    struct lstate **where = slot < rt->n_slots ? &rt->states[slot * rt->n_scripts + idx] : NULL;
    struct lstate *st = where ? *where : NULL;
    /* one budget covers everything the call runs, a first call's top level included */
    long long deadline = wh_mono_ns() + (long long)budget_ms * 1000000LL;
    struct event_box *box;
    enum lua_outcome out = LUA_CALL_OK;
    lua_State *L;
    int base, rc;

    if (!st) {
        st = state_new(rt, &rt->scripts[idx], NULL, budget_ms, deadline, err, err_len);
        if (!st)
            return LUA_CALL_FAILED;
        if (where)
            *where = st;
    }
    L = st->L;
    base = lua_gettop(L);
    lua_pushcfunction(L, traceback);
    push_raw_global(L, function);
    box = push_event(L, ev);
    st->ctx.killed = KILL_NONE;
    st->ctx.budget_ms = budget_ms;
    st->ctx.deadline_ns = deadline;
    lua_sethook(L, l_hook, LUA_MASKCOUNT, HOOK_EVERY);
    rc = lua_pcall(L, 1, 2, base + 1);
    st->ctx.deadline_ns = 0;
    box->ev = NULL; /* a script that kept the event can no longer reach freed memory */
    if (st->ctx.killed) {
        /* final, whatever the script returned after catching it */
        out = st->ctx.killed == KILL_TIMEOUT ? LUA_CALL_TIMEOUT : LUA_CALL_MEMORY;
        if (rc != LUA_OK)
            snprintf(err, err_len, "%s", message_of(L, -1));
        else
            snprintf(err, err_len, "%s (the script caught the stop; the call failed anyway)",
                     out == LUA_CALL_TIMEOUT
                         ? "timeout: the handler ran longer than its budget"
                         : "memory limit: the state grew past lua.memory_limit_mb");
    } else if (rc != LUA_OK) {
        snprintf(err, err_len, "%s", message_of(L, -1));
        out = rc == LUA_ERRMEM ? LUA_CALL_MEMORY : LUA_CALL_FAILED;
    } else if (lua_type(L, base + 2) == LUA_TBOOLEAN && !lua_toboolean(L, base + 2)) {
        snprintf(err, err_len, "%s() returned false%s%s", function,
                 lua_isnoneornil(L, base + 3) ? "" : ": ",
                 lua_isnoneornil(L, base + 3) ? "" : message_of(L, base + 3));
        out = LUA_CALL_FAILED;
    } else if (lua_isnil(L, base + 2) && !lua_isnoneornil(L, base + 3)) {
        snprintf(err, err_len, "%s() returned nil, %s", function, message_of(L, base + 3));
        out = LUA_CALL_FAILED;
    }
    lua_settop(L, base);
    if (out == LUA_CALL_TIMEOUT || out == LUA_CALL_MEMORY || !where) {
        /* the script was stopped anywhere: its globals may be half-updated; start afresh */
        state_free(st);
        if (where)
            *where = NULL;
    }
    return out;
}
