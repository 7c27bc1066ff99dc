/* wapphook's stoppable pattern matcher against stock Lua 5.4 on ordinary patterns: the same
 * Lua code in two states, one with the stock string library and one with the matcher
 * installed (checking the clock every 4096 steps, as in a handler call). Prints ns per call
 * of each workload and the ratio ours / stock (the target is at most 1.5).
 * Usage: bench_patterns [ROUNDS]   (best of ROUNDS runs per workload, default 5) */
#include "lua/patterns.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void clock_budget(lua_State *L)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (ts.tv_sec < 0) /* never: the read is the cost being measured */
        luaL_error(L, "timeout");
}

static const char workloads[] =
    "local body = "
    "[[{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"102290129340398\","
    "\"changes\":[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_"
    "number\":"
    "\"15550783881\",\"phone_number_id\":\"106540352242922\"},\"contacts\":[{\"profile\":{\"name\":"
    "\"Sheena Nelson\"},\"wa_id\":\"16505551234\"}],\"messages\":[{\"from\":\"16505551234\",\"id\":"
    "\"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=\",\"timestamp\":"
    "\"1749416383\","
    "\"type\":\"text\",\"text\":{\"body\":\"Does it come in another "
    "color?\"}}]},\"field\":\"messages\"}]}]}]]\n"
    "local text = ('The quick  brown fox\\tjumps over   the lazy dog. '):rep(20)\n"
    "local csv = ('alpha,beta,gamma,delta,'):rep(25)\n"
    "local tmpl = ('Hello $name, your order $order ships on $date. '):rep(8)\n"
    "local vars = {name = 'Ana', order = '#4711', date = '2026-12-01'}\n"
    "workloads = {\n"
    "  {'find %d+ in a JSON body', function() return body:find('\"timestamp\":\"(%d+)\"') end},\n"
    "  {'match an e-mail address', function() return "
    "('sheena.nelson@example.com'):match('^([%w%.]+)@([%w%.]+)%.(%a+)$') end},\n"
    "  {'match a date', function() return ('on 2026-12-01 at noon'):match('(%d+)-(%d+)-(%d+)') "
    "end},\n"
    "  {'gmatch fields of a CSV', function() local n = 0 for f in csv:gmatch('[^,]+') do n = n + 1 "
    "end return n end},\n"
    "  {'gmatch words (%f)', function() local n = 0 for w in text:gmatch('%f[%w]%w+') do n = n + 1 "
    "end return n end},\n"
    "  {'gsub runs of spaces', function() return (text:gsub('%s+', ' ')) end},\n"
    "  {'gsub a template (table)', function() return (tmpl:gsub('%$(%w+)', vars)) end},\n"
    "  {'gsub trim', function() return (('   padded value   '):gsub('^%s*(.-)%s*$', '%1')) end},\n"
    "  {'find %b() balanced', function() return ('f(a, g(b, c), d) + 1'):find('%b()') end},\n"
    "}\n"
    "function run(i, n)\n"
    "  local f = workloads[i][2]\n"
    "  local t0 = os.clock()\n"
    "  for _ = 1, n do f() end\n"
    "  return (os.clock() - t0) / n * 1e9\n"
    "end\n";

static lua_State *state(int ours)
{
    lua_State *L = luaL_newstate();

    luaL_openlibs(L);
    if (ours) {
        lua_getglobal(L, "string");
        wl_patterns_install(L, -1, clock_budget);
        lua_pop(L, 1);
    }
    if (luaL_dostring(L, workloads) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        exit(1);
    }
    return L;
}

static double best_ns(lua_State *L, int i, int rounds)
{
    double best = INFINITY;

    for (int r = 0; r < rounds; r++) {
        double ns;
        lua_getglobal(L, "run");
        lua_pushinteger(L, i);
        lua_pushinteger(L, 20000);
        lua_call(L, 2, 1);
        ns = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (ns < best) best = ns;
    }
    return best;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    lua_State *stock = state(0), *ours = state(1);
    double log_sum = 0, worst = 0;
    int n;

    lua_getglobal(stock, "workloads");
    n = (int)luaL_len(stock, -1);
    printf("\npattern matching, ns per call (best of %d x 20000), ours vs stock Lua 5.4:\n",
           rounds);
    for (int i = 1; i <= n; i++) {
        double s, o;
        lua_rawgeti(stock, -1, i);
        lua_rawgeti(stock, -1, 1);
        /* alternate which state runs first, so neither always has the warm cache */
        if (i % 2) {
            s = best_ns(stock, i, rounds);
            o = best_ns(ours, i, rounds);
        } else {
            o = best_ns(ours, i, rounds);
            s = best_ns(stock, i, rounds);
        }
        printf("  %-28s %9.0f %9.0f  %5.2fx\n", lua_tostring(stock, -1), o, s, o / s);
        lua_pop(stock, 2);
        log_sum += log(o / s);
        if (o / s > worst) worst = o / s;
    }
    printf("  geometric mean %.2fx, worst %.2fx (target: at most 1.5x)\n", exp(log_sum / n), worst);
    lua_close(stock);
    lua_close(ours);
    return 0;
}
