/* Fuzz target: wapphook's stoppable pattern matcher (core/lua/lua_patterns.c) against stock
 * Lua 5.4. Each input is one call of string.find, match, gmatch or gsub with a fuzzed subject,
 * pattern, start position, plain flag, replacement (string, number, table or function) and
 * replacement limit. It runs in two Lua states, one with the stock string library and one
 * with the matcher installed over it; every result (types, values, count) and every error
 * message must be the same, or the target traps. A call that needs more than STEP_LIMIT
 * steps of the matcher is not compared (stock Lua would take as long, for nothing).
 *
 * Input: [op][init][max][pattern length][pattern][replacement length][replacement][subject]
 *   op bits 0-1: find, match, gmatch, gsub; bit 2: pass init; bit 3: pass plain (find) or
 *   max (gsub); bits 4-5: replacement kind: string, number, table, function. */
#include "lua/patterns.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEP_LIMIT (1 << 16)
#define GMATCH_MAX 200

static lua_State *stock, *mine;
static long steps;
static const char budget_marker[] = "fuzz: step limit";

static void count_steps(lua_State *L)
{
    steps += WL_BUDGET_CHECK_EVERY;
    if (steps > STEP_LIMIT) {
        lua_pushstring(L, budget_marker);
        lua_error(L);
    }
}

static const char setup_code[] =
    "repl_table = {a = '<A>', b = false, ['1'] = 7, ab = {}, [''] = 'E', [1] = 'one', [2] = true}\n"
    "function repl_fn(...)\n"
    "  local n, a = select('#', ...), ...\n"
    "  if a == 'x' then return false end\n"
    "  if a == 't' then return {} end\n"
    "  if n > 1 then return n end\n"
    "  return '[' .. tostring(a) .. ']'\n"
    "end\n";

static lua_State *new_state(int with_matcher)
{
    lua_State *L = luaL_newstate();

    luaL_openlibs(L);
    if (with_matcher) {
        lua_getglobal(L, "string");
        wl_patterns_install(L, -1, count_steps);
        lua_pop(L, 1);
    }
    if (luaL_dostring(L, setup_code) != LUA_OK) abort();
    return L;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    stock = new_state(0);
    mine = new_state(1);
    return 0;
}

struct out {
    char buf[1 << 16];
    size_t len;
};

static void put(struct out *o, const void *p, size_t n)
{
    if (n > sizeof o->buf - o->len) n = sizeof o->buf - o->len;
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}

/* Appends values from..top of the stack, typed, then pops them. */
static void put_values(lua_State *L, int from, struct out *o)
{
    char tmp[64];
    int top = lua_gettop(L);

    snprintf(tmp, sizeof tmp, "%d values:", top - from + 1);
    put(o, tmp, strlen(tmp));
    for (int i = from; i <= top; i++) {
        size_t n;
        const char *s;
        switch (lua_type(L, i)) {
        case LUA_TSTRING:
            s = lua_tolstring(L, i, &n);
            snprintf(tmp, sizeof tmp, " s%zu:", n);
            put(o, tmp, strlen(tmp));
            put(o, s, n);
            break;
        case LUA_TNUMBER:
            if (lua_isinteger(L, i))
                snprintf(tmp, sizeof tmp, " i%lld", (long long)lua_tointeger(L, i));
            else
                snprintf(tmp, sizeof tmp, " f%a", (double)lua_tonumber(L, i));
            put(o, tmp, strlen(tmp));
            break;
        default:
            snprintf(tmp, sizeof tmp, " %s", luaL_typename(L, i));
            put(o, tmp, strlen(tmp));
            break;
        }
    }
    lua_settop(L, from - 1);
}

struct call {
    int op, has_init, flag, kind;
    lua_Integer init, max;
    const char *pattern, *repl, *subject;
    size_t pattern_len, repl_len, subject_len;
};

/* Runs the call in L; its results or error, serialised into o. Returns 1 if the matcher's
 * step limit stopped it (nothing to compare). */
static int run(lua_State *L, const struct call *c, struct out *o)
{
    static const char *const ops[] = {"find", "match", "gmatch", "gsub"};
    int nargs = 2, rc;

    o->len = 0;
    steps = 0;
    lua_settop(L, 0);
    lua_getglobal(L, "string");
    lua_getfield(L, 1, ops[c->op]);
    lua_remove(L, 1);
    lua_pushlstring(L, c->subject, c->subject_len);
    lua_pushlstring(L, c->pattern, c->pattern_len);
    if (c->op == 3) {
        switch (c->kind) {
        case 0:
            lua_pushlstring(L, c->repl, c->repl_len);
            break;
        case 1:
            lua_pushinteger(L, (lua_Integer)c->repl_len - 3);
            break;
        case 2:
            lua_getglobal(L, "repl_table");
            break;
        default:
            lua_getglobal(L, "repl_fn");
            break;
        }
        nargs++;
        if (c->flag) {
            lua_pushinteger(L, c->max);
            nargs++;
        }
    } else if (c->has_init || c->flag) {
        lua_pushinteger(L, c->init);
        nargs++;
        if (c->op == 0 && c->flag) {
            lua_pushboolean(L, c->repl_len & 1);
            nargs++;
        }
    }
    rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
    if (rc == LUA_OK && c->op == 2) {
        /* the iterator: call it until it ends (or GMATCH_MAX times) */
        int iter = lua_gettop(L);
        for (int i = 0; i < GMATCH_MAX && rc == LUA_OK; i++) {
            int base = lua_gettop(L);
            lua_pushvalue(L, iter);
            rc = lua_pcall(L, 0, LUA_MULTRET, 0);
            if (rc != LUA_OK) break;
            if (lua_gettop(L) == base || lua_isnil(L, base + 1)) {
                lua_settop(L, base);
                break;
            }
            put_values(L, base + 1, o);
        }
        if (rc == LUA_OK) lua_settop(L, 0);
    }
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        if (msg && strcmp(msg, budget_marker) == 0) return 1;
        put(o, "error:", 6);
        put(o, msg ? msg : "?", msg ? strlen(msg) : 1);
        lua_settop(L, 0);
        return 0;
    }
    put_values(L, 1, o);
    return 0;
}

static size_t take(const uint8_t **p, size_t *left, size_t want, const char **out)
{
    if (want > *left) want = *left;
    *out = (const char *)*p;
    *p += want;
    *left -= want;
    return want;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct out a, b;
    struct call c;
    const uint8_t *p = data;
    size_t left = size;

    if (size < 4) return 0;
    c.op = data[0] & 3;
    c.has_init = (data[0] >> 2) & 1;
    c.flag = (data[0] >> 3) & 1;
    c.kind = (data[0] >> 4) & 3;
    c.init = (int8_t)data[1];
    c.max = (int8_t)data[2];
    p += 4;
    left -= 4;
    c.pattern_len = take(&p, &left, data[3], &c.pattern);
    {
        const char *len_byte;
        size_t got = take(&p, &left, 1, &len_byte);
        c.repl_len = take(&p, &left, got ? (uint8_t)*len_byte : 0, &c.repl);
    }
    c.subject_len = take(&p, &left, left, &c.subject);
    if (run(mine, &c, &a)) return 0;
    run(stock, &c, &b);
    if (a.len != b.len || memcmp(a.buf, b.buf, a.len) != 0) {
        fprintf(
            stderr,
            "difference on op %d, pattern [%.*s], subject [%.*s]\n  mine:  %.*s\n  stock: %.*s\n",
            c.op, (int)c.pattern_len, c.pattern, (int)c.subject_len, c.subject, (int)a.len, a.buf,
            (int)b.len, b.buf);
        __builtin_trap();
    }
    return 0;
}
