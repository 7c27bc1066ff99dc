#define _GNU_SOURCE
#include "state.h"

#include "base/base.h"

#include "json.h"
#include "outbound_http.h"
#include "shared.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the wapphook module ---------------------------------------------------------------- */

static int w_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    struct lctx *c = ctx_of(L);
    const char *msg;
    size_t len;
    int level;

    wl_budget_check(L); /* a stopped call does nothing more, logging included */
    level = luaL_checkoption(L, 1, NULL, levels);
    msg = luaL_checklstring(L, 2, &len);

    log_tee_line(levels[level], msg, len); /* the console's record of this call */
    log_msg((enum log_level)level, "script", LOG_SN("message", msg, len),
            LOG_S("script", c->script->display));
    return 0;
}

int wl_print(lua_State *L)
{
    luaL_Buffer b;
    int n = lua_gettop(L);
    struct lctx *c = ctx_of(L);

    wl_budget_check(L);
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
        if (i < n) luaL_addchar(&b, '\t');
    }
    luaL_pushresult(&b);
    log_tee_line("info", lua_tostring(L, -1), lua_rawlen(L, -1));
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

    wl_budget_check(L);
    luaL_checkany(L, 1);
    s = wl_to_json_text(L, 1, ctx_of(L)->limit, &len, err);
    if (!s) return luaL_error(L, "wapphook.json.encode: %s", err);
    rc = wl_budget_push_bytes(L, s, len);
    wl_json_text_free(L, s, len);
    if (rc != LUA_OK) return lua_error(L);
    return 1;
}

static int w_json_decode(lua_State *L)
{
    size_t len;
    const char *s;
    struct json_text_alloc a;
    struct json_text_error e;
    int line, column;

    wl_budget_check(L);
    s = luaL_checklstring(L, 1, &len);
    /* the duplicate-key table, and the tables it builds, in the state's own memory */
    a.fn = (void *(*)(void *, void *, size_t, size_t))lua_getallocf(L, &a.ud);
    if (json_text_check_ex(s, len, &a, &e) != JSON_TEXT_INVALID) {
        wl_push_json_text(L, s, len);
        return 1;
    }
    wl_budget_check(L); /* out of memory on the way: the stop, not a message */
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

    wl_budget_check(L);
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

/* wapphook.exec{argv=, stdin=, env=, timeout_ms=} (docs/handlers.md, "Handlers that act"). Its
 * deadline is the sooner of timeout_ms and the call's own; a call whose budget ran out in it has
 * timed out. */
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

    wl_budget_check(L); /* after a stop, no command runs */
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
    if (n == 0) return luaL_error(L, "wapphook.exec: argv is empty");
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
    if (timeout < 0) return luaL_error(L, "wapphook.exec: timeout_ms must be positive");
    rq.argv = argv;
    rq.env = env;
    rq.max_output = (size_t)cfg->exec_max_output_bytes;
    rq.deadline_ns = rq.return_by_ns = c->deadline_ns;
    if (timeout && wh_mono_ns() + timeout * 1000000LL < rq.deadline_ns)
        rq.deadline_ns = wh_mono_ns() + timeout * 1000000LL;
    st = exec_run(&rq, &r, why, sizeof why);
    if (st != EXEC_RAN) {
        metrics_exec(st == EXEC_BUSY ? MX_BUSY : MX_SPAWN);
        wl_budget_check(L);
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    metrics_exec(r.timed_out ? MX_TIMEOUT : r.exited && r.code == 0 ? MX_OK : MX_FAILED);
    lua_pushcfunction(L, push_exec_result);
    lua_pushlightuserdata(L, &r);
    rc = lua_pcall(L, 1, 1, 0);
    exec_result_free(&r);
    if (rc != LUA_OK) return lua_error(L);
    wl_budget_check(L); /* the call's own budget ended in the command: the call has timed out */
    return 1;
}

static int w_env(lua_State *L)
{
    const char *v;

    wl_budget_check(L);
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

    wl_budget_check(L);
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

static const struct wl_http_host http_host = {http_config, http_deadline, wl_budget_check};

void wl_push_module(lua_State *L, const struct wl_runtime *rt)
{
    static const luaL_Reg fns[] = {{"log", w_log}, {"hmac_sha256", w_hmac}, {"env", w_env},
                                   {"now", w_now}, {"exec", w_exec},        {NULL, NULL}};
    static const luaL_Reg json_fns[] = {
        {"encode", w_json_encode}, {"decode", w_json_decode}, {NULL, NULL}};

    luaL_newlib(L, fns);
    luaL_newlib(L, json_fns);
    wl_push_json_null(L);
    lua_setfield(L, -2, "null");
    lua_setfield(L, -2, "json");
    wl_push_json_null(L);
    lua_setfield(L, -2, "null");
    wl_shared_push(L, rt->dicts, rt->n_dicts, wl_budget_check);
    lua_setfield(L, -2, "shared");
    wl_http_push(L, &http_host);
    lua_setfield(L, -2, "http");
}
