/* The Lua runtime with real Lua states: event conversion, the wapphook module, the
 * sandbox, time and memory limits that pcall, xpcall and coroutines cannot swallow, state
 * rebuild after a kill, load-time errors with FILE:LINE, and the measured cost of a call. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include "base/json_text.h"
#include "lua/wl.h"
#include "harness.h"
#include "conf/conf.h"

static char dir[256], file[512];
static struct wh_config *cfg;
static struct wl_runtime *rt;
static char err[8192];

static void put(const char *name, const char *content)
{
    file_write(dir, name, content);
}

/* Loads a manifest whose single hook "t" runs script.lua's `fn`. 0, or -1 with err. */
/* A call's budget: 200 ms; the sanitizers run C code several times slower, and a case that
 * must finish (a plain find of 2^40 compares) needs more under them. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BUDGET_MS 1500 /* ThreadSanitizer under a loaded machine: 600 ms was not enough */
#else
#define BUDGET_MS 200
#endif
#define WH_STR_(x) #x
#define WH_STR(x) WH_STR_(x)

static int load(const char *script, const char *fn, const char *lua_opts)
{
    char yaml[1024];
    wl_runtime_free(rt);
    manifest_free(cfg);
    rt = NULL;
    cfg = NULL;
    put("script.lua", script);
    /* lua_opts may set its own timeout_ms; otherwise calls get BUDGET_MS */
    snprintf(yaml, sizeof yaml,
             "secrets: [{value: s}]\nlua:\n%s  memory_limit_mb: 8\n%s"
             "hooks:\n  t:\n    - lua: script.lua\n      function: %s\n",
             lua_opts && strstr(lua_opts, "timeout_ms") ? ""
                                                        : "  timeout_ms: " WH_STR(BUDGET_MS) "\n",
             lua_opts ? lua_opts : "", fn);
    put("hooks.yaml", yaml);
    if (manifest_load(file, &cfg, err, sizeof err)) fail_msg("manifest: %s", err);
    return wl_runtime_new(cfg, &rt, err, sizeof err);
}

static enum wh_outcome call_json(const char *fn, const char *body)
{
    struct wh_header h[] = {{"X-Wappcloud-Event", "t"},
                            {"Content-Type", "application/json"},
                            {"X-Custom", "first"},
                            {"x-custom", "second"}};
    struct wh_event ev = {.type = "t",
                          .body = body,
                          .body_len = strlen(body),
                          .received_at = 1795741200.5,
                          .headers = h,
                          .n_headers = 4};
    enum wh_outcome o;

    assert_int_equal(json_text_check(body, strlen(body)), JSON_TEXT_OBJECT);
    err[0] = '\0';
    o = wl_runtime_call(rt, 0, fn, wh_handler_budget_ms(cfg, &cfg->hooks[0].handlers[0]), &ev, err,
                        sizeof err);
    return o;
}

static enum wh_outcome call(const char *fn)
{
    return call_json(fn, "{\"a\":1}");
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/wapphook-lua-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    snprintf(file, sizeof file, "%s/hooks.yaml", dir);
    mkdir(strcat(strcpy(err, dir), "/scripts"), 0755);
    return 0;
}

static struct wh_proc tls_upstream; /* http_from_lua's HTTPS server: stopped even if it fails */

static int teardown(void **state)
{
    (void)state;
    if (tls_upstream.mu) /* a failed case left it running: it would hold ctest's pipe */
        proc_stop(&tls_upstream);
    wl_runtime_free(rt);
    manifest_free(cfg);
    return 0;
}

#define OK(fn)                                                                                     \
    do {                                                                                           \
        enum wh_outcome o_ = call(fn);                                                             \
        if (o_ != WH_OUTCOME_OK) fail_msg("%s: outcome %d: %s", fn, o_, err);                      \
    } while (0)

static void event_fields_and_payload(void **state)
{
    const char *body = "{\"s\":\"h\\u00e9\",\"i\":9007199254740993,\"neg\":-5,\"f\":1.5,"
                       "\"t\":true,\"n\":null,\"arr\":[10,20,30],\"obj\":{\"deep\":[{\"x\":1}]},"
                       "\"empty\":{},\"ea\":[]}";
    (void)state;
    assert_int_equal(
        load("function check(e)\n"
             "  assert(e.type == 't', 'type')\n"
             "  assert(e.body == [["
             "{\"s\":\"h\\u00e9\",\"i\":9007199254740993,\"neg\":-5,\"f\":1.5,"
             "\"t\":true,\"n\":null,\"arr\":[10,20,30],\"obj\":{\"deep\":[{\"x\":1}]},\"empty\":{},"
             "\"ea\":[]}"
             "]], 'body')\n"
             "  assert(e.received_at == 1795741200.5, 'received_at')\n"
             "  local p = e.payload\n"
             "  assert(p.s == 'h\\u{e9}', 's')\n"
             "  assert(math.type(p.i) == 'integer' and p.i == 9007199254740993, 'i is a 64-bit "
             "integer')\n"
             "  assert(p.neg == -5 and math.type(p.f) == 'float' and p.f == 1.5, 'numbers')\n"
             "  assert(p.t == true and p.n == wapphook.null and p.n == wapphook.json.null, "
             "'true/null')\n"
             "  assert(#p.arr == 3 and p.arr[1] == 10 and p.arr[3] == 30, 'arrays are 1-based')\n"
             "  assert(p.obj.deep[1].x == 1, 'nested')\n"
             "  assert(next(p.empty) == nil and #p.ea == 0, 'empties')\n"
             "  assert(e.payload == p, 'converted once, then cached')\n"
             "  assert(e.headers['x-wappcloud-event'] == 't', 'headers lower-cased')\n"
             "  assert(e.headers['x-custom'] == 'first', 'first of a repeated header')\n"
             "  assert(e.headers['X-Custom'] == nil, 'only lower-case names')\n"
             "end\n",
             "check", NULL),
        0);
    if (call_json("check", body) != WH_OUTCOME_OK) fail_msg("%s", err);
}

static void wapphook_module(void **state)
{
    (void)state;
    setenv("WH_LUA_TEST_ENV", "value", 1);
    assert_int_equal(
        load("local w = require 'wapphook'\n"
             "function check(e)\n"
             "  assert(w == wapphook, 'require returns the global')\n"
             "  assert(wapphook.hmac_sha256(\"It's a Secret to Everybody\", 'Hello, World!') ==\n"
             "    '757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17', 'hmac')\n"
             "  assert(wapphook.env('WH_LUA_TEST_ENV') == 'value' and wapphook.env('WH_NOPE') == "
             "nil, 'env')\n"
             "  assert(math.abs(wapphook.now() - os.time()) < 5, 'now')\n"
             "  local s = wapphook.json.encode({a = {1, 2, 3}, b = wapphook.null, c = 'x'})\n"
             "  local back = wapphook.json.decode(s)\n"
             "  assert(back.a[3] == 3 and back.b == wapphook.null and back.c == 'x', 'json round "
             "trip')\n"
             "  assert(wapphook.json.encode({1, 2}) == '[1,2]', 'array')\n"
             "  assert(wapphook.json.encode(42) == '42', 'scalar')\n"
             "  local v, msg = wapphook.json.decode('{bad')\n"
             "  assert(v == nil and msg:find('invalid JSON'), 'decode error')\n"
             "  assert(not pcall(wapphook.json.encode, {[1] = 1, x = 2}), 'mixed table refused')\n"
             "  assert(not pcall(wapphook.json.encode, 0/0), 'NaN refused')\n"
             "  local cyc = {} cyc.self = cyc\n"
             "  assert(not pcall(wapphook.json.encode, cyc), 'cycle refused')\n"
             "  assert(not pcall(wapphook.json.encode, '\\xff'), 'invalid UTF-8 refused')\n"
             "  wapphook.log('info', 'hello from a test')\n"
             "  assert(not pcall(wapphook.log, 'loud', 'x'), 'unknown level refused')\n"
             "  print('print goes to the log', 1, true)\n"
             "end\n",
             "check", NULL),
        0);
    OK("check");
}

static void sandbox(void **state)
{
    (void)state;
    put("scripts/helper.lua", "return { twice = function(x) return 2 * x end }\n");
    assert_int_equal(
        load("local helper = require 'helper'\n"
             "function check(e)\n"
             "  assert(helper.twice(21) == 42, 'require from lua.path')\n"
             "  assert(require('helper') == helper, 'modules are cached')\n"
             "  assert(io == nil and debug == nil and package == nil, 'io, debug, package')\n"
             "  assert(dofile == nil and loadfile == nil and collectgarbage == nil, 'base')\n"
             "  assert(os.execute == nil and os.exit == nil and os.getenv == nil and os.remove == "
             "nil, 'os')\n"
             "  assert(type(os.time()) == 'number' and os.date('%Y') and os.clock(), 'os kept')\n"
             "  assert(string.dump == nil and ('x').dump == nil, 'string.dump')\n"
             "  assert(table.concat and math.floor and utf8.char and coroutine.wrap, 'libs')\n"
             "  assert(load('return 1 + 1')() == 2, 'text chunks load')\n"
             "  local f, msg = load('\\27Lua binary')\n"
             "  assert(f == nil and msg:find('binary'), 'binary chunks refused: ' .. "
             "tostring(msg))\n"
             "  local ok, m = pcall(require, 'os')\n"
             "  assert(not ok and m:find('not found'), 'require of a library')\n"
             "  ok, m = pcall(require, '../etc/passwd')\n"
             "  assert(not ok and m:find('invalid name'), 'path in a module name')\n"
             "end\n",
             "check", "  path: scripts/?.lua\n"),
        0);
    OK("check");
}

static void no_sandbox_gives_the_standard_libraries(void **state)
{
    (void)state;
    assert_int_equal(
        load("function check(e) assert(io and io.open and debug and os.getenv "
             "and package and collectgarbage) assert(require('wapphook') == wapphook) end\n",
             "check", "  sandbox: false\n"),
        0);
    OK("check");
}

static void results(void **state)
{
    (void)state;
    assert_int_equal(load("function ok_nothing(e) end\n"
                          "function ok_true(e) return true end\n"
                          "function no(e) return false, 'not today' end\n"
                          "function no_plain(e) return false end\n"
                          "function nil_err(e) return nil, 'classic' end\n"
                          "function boom(e)\n  local x = nil\n  error('boom ' .. e.type)\nend\n"
                          "function bad_index(e) return e.payload.nope.deeper end\n",
                          "ok_nothing", NULL),
                     0);
    OK("ok_nothing");
    OK("ok_true");
    assert_int_equal(call("no"), WH_OUTCOME_FAILED);
    assert_string_equal(err, "no() returned false: not today");
    assert_int_equal(call("no_plain"), WH_OUTCOME_FAILED);
    assert_int_equal(call("nil_err"), WH_OUTCOME_FAILED);
    assert_non_null(strstr(err, "classic"));
    assert_int_equal(call("boom"), WH_OUTCOME_FAILED);
    assert_non_null(strstr(err, "script.lua:8: boom t"));
    assert_non_null(strstr(err, "stack traceback"));
    assert_int_equal(call("bad_index"), WH_OUTCOME_FAILED);
    assert_non_null(strstr(err, "script.lua:10:"));
    assert_int_equal(call("missing_function"), WH_OUTCOME_FAILED);
}

static void timeouts_cannot_be_swallowed(void **state)
{
    const char *fns[] = {"plain", "in_pcall", "in_xpcall", "in_coroutine", "pcall_retry"};
    (void)state;
    assert_int_equal(
        load(
            "n = 0\n"
            "function count(e) n = n + 1 if n ~= e.payload.a then return false, 'n=' .. n end end\n"
            "function plain(e) while true do end end\n"
            "function in_pcall(e) while true do pcall(function() while true do end end) end end\n"
            "function in_xpcall(e) while true do xpcall(function() while true do end end, "
            "function() end) end end\n"
            "function in_coroutine(e)\n"
            "  local co = coroutine.wrap(function() while true do end end)\n"
            "  while true do pcall(co) end\n"
            "end\n"
            "function pcall_retry(e) for i = 1, 1e12 do pcall(error, 'x') end end\n",
            "plain", NULL),
        0);
    assert_int_equal(call_json("count", "{\"a\":1}"), WH_OUTCOME_OK);
    assert_int_equal(call_json("count", "{\"a\":2}"), WH_OUTCOME_OK); /* globals persist */
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        long long t0 = now_ms();
        enum wh_outcome o = call(fns[i]);
        long long took = now_ms() - t0;
        if (o != WH_OUTCOME_TIMEOUT) fail_msg("%s: outcome %d (%s)", fns[i], o, err);
        assert_non_null(strstr(err, "timeout"));
        assert_true(took >= 190 && took < 2000);
        /* the killed state was rebuilt: globals start over */
        if (call_json("count", "{\"a\":1}") != WH_OUTCOME_OK) fail_msg("after %s: %s", fns[i], err);
    }
}

static void memory_limit_cannot_be_swallowed(void **state)
{
    (void)state;
    assert_int_equal(
        load(
            "function grow(e) local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(65536) .. i end end\n"
            "function grow_pcall(e)\n"
            "  local keep = {}\n"
            "  while true do pcall(function() for i = 1, 1e9 do keep[#keep + 1] = ('y'):rep(65536) "
            ".. i end end) end\n"
            "end\n"
            "function big_string(e) local s = ('x'):rep(64 * 1024 * 1024) end\n"
            "function ok(e) local t = {} for i = 1, 1000 do t[i] = i end end\n",
            /* a budget the memory cap always beats, even under sanitizers */
            "ok", "  timeout_ms: 60000\n"),
        0);
    assert_int_equal(call("grow"), WH_OUTCOME_MEMORY);
    assert_non_null(strstr(err, "memory"));
    OK("ok");
    assert_int_equal(call("grow_pcall"), WH_OUTCOME_MEMORY);
    OK("ok");
    assert_int_equal(call("big_string"), WH_OUTCOME_MEMORY);
    OK("ok");
}

/* Every route out of the budget that a script has found (docs/handlers.md, "Limits"): each call
 * must end within its budget (generous margins: sanitizer builds are slow) with the outcome given,
 * and the next ordinary call must succeed. */
struct escape {
    const char *fn;
    enum wh_outcome want; /* STOPPED: either limit (which comes first depends on speed) */
    const char *in_err;   /* in the message, or NULL */
};
#define STOPPED ((enum wh_outcome) - 1)

static const char escapes_script[] =
    "function ok(e) return true end\n"
    /* a stop caught by coroutine.resume on a coroutine made at the top level */
    "local co = coroutine.create(function() while true do end end)\n"
    "function resume_catches(e) coroutine.resume(co) return true end\n"
    "function wrap_in_pcall(e) pcall(coroutine.wrap(function() while true do end end)) return true "
    "end\n"
    "function close_catches(e)\n"
    "  local guard <close> = setmetatable({}, {__close = function() return true end})\n"
    "  while true do end\n"
    "end\n"
    "function xpcall_handler_returns(e) xpcall(function() while true do end end, function() return "
    "'fine' end) return true end\n"
    /* messages and error values whose conversion would run script code */
    "local looping = {__tostring = function() while true do end end, __name = 'x'}\n"
    "function false_with_object(e) return false, setmetatable({}, looping) end\n"
    "function nil_with_object(e) return nil, setmetatable({}, looping) end\n"
    "function error_object(e) error(setmetatable({}, looping)) end\n"
    /* finalizers: refused */
    "function gc_metatable(e) setmetatable({}, {__gc = function() while true do end end}) end\n"
    "function event_metatable(e)\n"
    "  assert(getmetatable(e) == 'wapphook.event', 'hidden')\n"
    "  assert(not pcall(setmetatable, e, {}), 'protected')\n"
    "end\n"
    /* C loops */
    "function backtracking_find(e) return ('a'):rep(40):find('a*a*a*a*a*a*a*a*a*a*a*a*b') end\n"
    "function backtracking_match(e) return "
    "('a'):rep(40):match('(a*)(a*)(a*)(a*)(a*)(a*)(a*)(a*)(a*)(a*)b') end\n"
    "function backtracking_gsub(e) return (('a'):rep(40)):gsub('a-a-a-a-a-a-a-a-a-a-a-a-b', '') "
    "end\n"
    "function backtracking_gmatch(e) for x in (('a'):rep(40)):gmatch('a*a*a*a*a*a*a*a*a*a*a*c') do "
    "end end\n"
    "function backtracking_in_pcall(e) pcall(string.find, ('a'):rep(40), "
    "'a*a*a*a*a*a*a*a*a*a*a*a*b') return true end\n"
    "function plain_find(e)\n"
    "  local s = ('a'):rep(1 << 21)\n"
    "  assert(s:find(('a'):rep(1 << 20) .. 'b', 1, true) == nil)\n"
    "  assert(s:find(('a'):rep(1 << 20), 5, true) == 5)\n"
    "end\n"
    "function rep_of_nothing(e) assert(('').rep('', math.maxinteger) == '') assert(('').rep('', 3, "
    "'') == '') end\n"
    "function move_nothing(e) table.move({}, 1, 1e15, 1, {}) end\n"
    "local lying = {__len = function() return math.maxinteger - 1 end, __index = rawlen,\n"
    "               __newindex = rawequal}\n"
    "function insert_lying_len(e) table.insert(setmetatable({}, lying), 1, 'x') end\n"
    "function remove_lying_len(e) table.remove(setmetatable({}, lying), 1) end\n"
    "local lying_int = {__len = function() return 2147483646 end, __index = rawlen, __newindex = "
    "rawequal}\n"
    "function sort_lying_len(e) table.sort(setmetatable({}, lying_int)) end\n"
    "function concat_lying_len(e) table.concat(setmetatable({}, {__len = lying.__len, __index = "
    "type})) end\n"
    "function load_c_reader(e) load(os.time) end\n"
    /* memory outside the state: JSON built in C on the script's behalf */
    "function decode_huge(e) wapphook.json.decode('[' .. ('[],'):rep(1000000) .. '[]]') end\n"
    "function encode_amplified(e)\n"
    "  local s, t = ('x'):rep(60000), {}\n"
    "  for i = 1, 200 do t[i] = s end\n"
    "  return wapphook.json.encode(t)\n"
    "end\n"
    /* the host reads globals raw: an __index on _G runs nothing outside a call */
    "function hide_handler(e) hidden = nil setmetatable(_G, {__index = function() while true do "
    "end end}) end\n"
    "function hidden(e) end\n";

static void escapes_end_within_the_budget(void **state)
{
    static const struct escape cases[] = {
        {"resume_catches", WH_OUTCOME_TIMEOUT,
         "timeout"}, /* caught, or an allocation refused after */
        {"wrap_in_pcall", WH_OUTCOME_TIMEOUT, "timeout"},
        {"close_catches", WH_OUTCOME_TIMEOUT, "timeout"},
        {"xpcall_handler_returns", WH_OUTCOME_TIMEOUT, "timeout"},
        {"false_with_object", WH_OUTCOME_FAILED, "returned false: (a table value)"},
        {"nil_with_object", WH_OUTCOME_FAILED, "returned nil, (a table value)"},
        {"error_object", WH_OUTCOME_FAILED, "(error object is a table value)"},
        {"gc_metatable", WH_OUTCOME_FAILED, "a metatable with __gc is not allowed"},
        {"event_metatable", WH_OUTCOME_OK, NULL},
        {"backtracking_find", WH_OUTCOME_TIMEOUT, "timeout"},
        {"backtracking_match", WH_OUTCOME_TIMEOUT, "timeout"},
        {"backtracking_gsub", WH_OUTCOME_TIMEOUT, "timeout"},
        {"backtracking_gmatch", WH_OUTCOME_TIMEOUT, "timeout"},
        {"backtracking_in_pcall", WH_OUTCOME_TIMEOUT, "timeout"},
        {"plain_find", WH_OUTCOME_OK, NULL}, /* stock: 2^40 byte compares */
        {"rep_of_nothing", WH_OUTCOME_OK, NULL},
        {"move_nothing", WH_OUTCOME_TIMEOUT, "timeout"},
        {"insert_lying_len", WH_OUTCOME_TIMEOUT, "timeout"},
        {"remove_lying_len", WH_OUTCOME_TIMEOUT, "timeout"},
        {"sort_lying_len", WH_OUTCOME_TIMEOUT, "timeout"},
        {"concat_lying_len", STOPPED, NULL},
        {"load_c_reader", STOPPED, NULL},
        {"decode_huge", WH_OUTCOME_MEMORY, "memory"},
        {"encode_amplified", WH_OUTCOME_MEMORY, "memory limit"}, /* the text counts in the state */
        {"hide_handler", WH_OUTCOME_OK, NULL},
        {"hidden", WH_OUTCOME_FAILED, "attempt to call a nil value"},
    };
    (void)state;
    assert_int_equal(load(escapes_script, "ok", NULL), 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long long t0 = now_ms();
        enum wh_outcome o = call(cases[i].fn);
        long long took = now_ms() - t0;

        if (cases[i].want == STOPPED ? o != WH_OUTCOME_TIMEOUT && o != WH_OUTCOME_MEMORY
                                     : o != cases[i].want)
            fail_msg("%s: outcome %d, want %d (%s)", cases[i].fn, o, cases[i].want, err);
        if (cases[i].in_err && !strstr(err, cases[i].in_err))
            fail_msg("%s: message %s", cases[i].fn, err);
        if (took > 2000 + BUDGET_MS)
            fail_msg("%s: took %lld ms on a %d ms budget", cases[i].fn, took, BUDGET_MS);
        if (strcmp(cases[i].fn, "hide_handler") != 0 && call("ok") != WH_OUTCOME_OK)
            fail_msg("after %s: %s", cases[i].fn, err);
    }
}

/* The sandbox's setmetatable and top-level code: a script whose top level arms a finalizer,
 * loops or backtracks does not load, and says why. */
static void top_level_is_bounded(void **state)
{
    (void)state;
    assert_int_equal(load("x = setmetatable({}, {__gc = function() while true do end end})\n"
                          "function f(e) end\n",
                          "f", NULL),
                     -1);
    assert_non_null(
        strstr(err, "script.lua:1: setmetatable: a metatable with __gc is not allowed"));
    assert_int_equal(load("local s = ('a'):rep(40):find('a*a*a*a*a*a*a*a*a*a*a*a*b')\n"
                          "function f(e) end\n",
                          "f", NULL),
                     -1);
    assert_non_null(strstr(err, "timeout"));
    assert_int_equal(
        load("pcall(function() while true do end end)\nfunction f(e) end\n", "f", NULL), -1);
    assert_non_null(strstr(err, "timeout"));
    assert_int_equal(load("coroutine.resume(coroutine.create(function() while true do end end))\n"
                          "function f(e) end\n",
                          "f", NULL),
                     -1);
    /* "caught the stop", or the definition after it refused (allocations stop at the deadline) */
    assert_non_null(strstr(err, "timeout"));
    /* a __gc added to a metatable after use is never called, and later uses are refused */
    assert_int_equal(
        load("local mt = {}\nlocal t = setmetatable({}, mt)\nmt.__gc = function() end\n"
             "function f(e) return not pcall(setmetatable, {}, mt) end\n",
             "f", NULL),
        0);
    OK("f");
}

/* os.date over a long format runs in pieces (each a budget step) and gives what one call
 * gives: conversions cut at no boundary, "!" (UTC) kept for every piece, one time for all. */
static void long_date_formats_are_whole(void **state)
{
    (void)state;
    assert_int_equal(
        load("function f(e)\n"
             "  local t = 1795741200\n"
             "  local unit = '%Y-%m-%d %H:%M:%S %Ey %Od|'\n"
             "  assert(os.date(unit:rep(3000), t) == os.date(unit, t):rep(3000), 'local')\n"
             "  assert(os.date('!' .. unit:rep(3000), t) == os.date('!' .. unit, t):rep(3000), "
             "'utc')\n"
             "  assert(os.date(('x'):rep(4095) .. '%Y', t) == ('x'):rep(4095) .. os.date('%Y', t), "
             "'edge')\n"
             "  assert(#os.date(('%n'):rep(100000)) == 100000, 'no time given')\n"
             "  assert(not pcall(os.date, ('%Y'):rep(3000) .. '%Q', t), 'bad conversion')\n"
             "  assert(os.date('!*t', t).year == 2026, 'table form')\n"
             "end\n",
             "f", "  timeout_ms: 20000\n"),
        0); /* sanitizers are slow */
    OK("f");
}

/* wapphook.shared.NAME from Lua (docs/handlers.md, "Handlers that act"): both call forms, every
 * operation and its answers, refused values, and the same dictionary seen from a rebuilt state. */
static void shared_dictionaries(void **state)
{
    (void)state;
    assert_int_equal(
        load("local seen = wapphook.shared.seen\n"
             "function f(e)\n"
             "  assert(seen:set('s', 'v') == true)\n"
             "  assert(seen.get('s') == 'v' and seen:get('s') == 'v', 'both forms')\n"
             "  seen:set('i', 9007199254740993) seen:set('f', 0.5) seen:set('b', false)\n"
             "  assert(seen:get('i') == 9007199254740993 and math.type(seen:get('i')) == "
             "'integer')\n"
             "  assert(seen:get('f') == 0.5 and seen:get('b') == false)\n"
             "  assert(seen:get('nope') == nil)\n"
             "  local ok, why = seen:add('s', 'again')\n"
             "  assert(ok == false and why == 'exists', 'add')\n"
             "  assert(seen:incr('n', 2, 40) == 42 and seen:incr('n', 1) == 43, 'incr')\n"
             "  local v, err = seen:incr('s', 1)\n"
             "  assert(v == nil and err == 'not an integer')\n"
             "  v, err = seen:incr('absent', 1)\n"
             "  assert(v == nil and err == 'not found')\n"
             "  assert(seen:set('t', 1, 60) and seen:ttl('t') > 59 and seen:ttl('s') == 0)\n"
             "  assert(select(2, seen:ttl('absent')) == 'not found')\n"
             "  assert(not pcall(seen.set, 'x', {}), 'tables refused')\n"
             "  assert(not pcall(seen.set, 'x', 1, -1), 'negative ttl refused')\n"
             "  seen:set('s', nil) assert(seen:get('s') == nil, 'set nil deletes')\n"
             "  assert(seen:delete('n') and seen:get('n') == nil)\n"
             "  assert(not pcall(function() return wapphook.shared.other end), 'unknown')\n"
             "  seen:incr('calls', 1, 0)\n"
             "end\n"
             "function calls(e) return wapphook.shared.seen:get('calls') == e.payload.a end\n"
             "function spin(e) while true do end end\n",
             "f", "  shared: {seen: 1}\n"),
        0);
    OK("f");
    assert_int_equal(call("spin"), WH_OUTCOME_TIMEOUT); /* the state is rebuilt ... */
    assert_int_equal(call_json("calls", "{\"a\":1}"),
                     WH_OUTCOME_OK); /* ... the dictionary is not */
}

static void put_exe(const char *name, const char *content)
{
    char p[600];
    put(name, content);
    snprintf(p, sizeof p, "%s/%s", dir, name);
    chmod(p, 0755);
}

/* wapphook.exec (docs/handlers.md, "Handlers that act"): arguments as given (no shell), stdin fed
 * and both outputs drained at once (1 MiB through cat), a clean environment, output capped, its own
 * timeout, the call's budget ending inside it, and commands outside exec.allow refused. */
static void exec_from_lua(void **state)
{
    (void)state;
    setenv("WAPPCLOUD_SECRET", "must-not-reach-commands", 1);
    put_exe("echo.sh",
            "#!/bin/sh\nprintf '%s|%s|' \"$1\" \"$2\"; cat; "
            "printf '|%s|%s|%s' \"$K\" \"${WAPPCLOUD_SECRET:-none}\" \"$PATH\"; echo oops >&2\n");
    put_exe("cat.sh", "#!/bin/sh\nexec cat\n");
    put_exe("loud.sh", "#!/bin/sh\nhead -c 5000 /dev/zero\n");
    put_exe("sleepy.sh", "#!/bin/sh\nsleep 30\n");
    assert_int_equal(
        load("function f(e)\n"
             "  local r = assert(wapphook.exec{argv = {'echo.sh', 'a b', '$HOME;'}, stdin = 'in',\n"
             "                                 env = {K = 'v'}})\n"
             "  assert(r.code == 0 and r.signal == nil and not r.timed_out and not r.truncated)\n"
             "  assert(r.stdout:match('^a b|%$HOME;|in|v|none|.+$'), r.stdout)\n"
             "  assert(r.stderr == 'oops\\n', r.stderr)\n"
             "  local big = ('x'):rep(1 << 20)\n"
             "  r = wapphook.exec{argv = {'cat.sh'}, stdin = big}\n"
             "  assert(r.stdout == big, 'a MiB through cat: ' .. #r.stdout)\n"
             "  local t0 = wapphook.now()\n"
             "  r = wapphook.exec{argv = {'sleepy.sh'}, timeout_ms = 100}\n"
             "  assert(r.timed_out and r.signal == 15 and wapphook.now() - t0 < 5, 'own timeout')\n"
             "  local v, err = wapphook.exec{argv = {'/bin/sh', '-c', 'id'}}\n"
             "  assert(v == nil and err:find('^not allowed'), err)\n"
             "  assert(not pcall(wapphook.exec, {argv = {}}), 'empty argv')\n"
             "  assert(not pcall(wapphook.exec, {argv = {'echo.sh'}, env = {['A=B'] = 'x'}}))\n"
             "end\n",
             "f",
             "  timeout_ms: 20000\nexec:\n  max_output_bytes: 1048576\n"
             "  allow: [echo.sh, cat.sh, sleepy.sh]\n"),
        0);
    OK("f");
    /* a 1,000-byte cap, and a call whose 300 ms budget ends inside the command */
    assert_int_equal(
        load("function f(e)\n"
             "  local r = wapphook.exec{argv = {'loud.sh'}}\n"
             "  assert(r.truncated and #r.stdout == 1000, 'capped: ' .. #r.stdout)\n"
             "end\n"
             "function budget(e) wapphook.exec{argv = {'sleepy.sh'}} return true end\n",
             "f",
             "  timeout_ms: 300\nexec:\n  max_output_bytes: 1000\n"
             "  allow: [loud.sh, sleepy.sh]\n"),
        0);
    OK("f");
    {
        long long t0 = now_ms();
        assert_int_equal(call("budget"), WH_OUTCOME_TIMEOUT); /* the call's budget ended in it */
        assert_true(now_ms() - t0 < 3000);
    }
    unsetenv("WAPPCLOUD_SECRET");
}

/* wapphook.http (docs/handlers.md, "Handlers that act") against the real server above: results,
 * headers, methods, bodies, no redirects, the size cap on a chunked body, the request's own timeout
 * and the call's budget ending inside a transfer, and the address policy refusing loopback before
 * any connection unless http.allow names it. */
static void http_from_lua(void **state)
{
    char script[4096], opts[512];
    int before, upstream_port;

    (void)state;
    upstream_port = upstream_start();
    snprintf(
        script, sizeof script,
        "local base = 'http://127.0.0.1:%d'\n"
        "function f(e)\n"
        "  local r = assert(wapphook.http.request{url = base .. '/echo', method = 'PUT',\n"
        "                  headers = {['X-In'] = 'given'}, body = 'payload'})\n"
        "  assert(r.status == 201 and r.body == 'PUT given payload', r.body)\n"
        "  assert(r.headers['x-out'] == 'twice' and r.headers['content-length'] == '17')\n"
        "  r = assert(wapphook.http.get(base .. '/echo'))\n"
        "  assert(r.body == 'GET  ', r.body)\n"
        "  r = assert(wapphook.http.post(base .. '/echo', 'b', {headers = {['X-In'] = 'p'}}))\n"
        "  assert(r.body == 'POST p b', r.body)\n"
        "  r = assert(wapphook.http.get(base .. '/redirect'))\n"
        "  assert(r.status == 302 and r.headers.location, 'a 3xx is a response')\n"
        "  local v, err = wapphook.http.get(base .. '/big')\n"
        "  assert(v == nil and err:find('^too large'), err)\n"
        "  local t0 = wapphook.now()\n"
        "  v, err = wapphook.http.get(base .. '/slow', {timeout_ms = 100})\n"
        "  assert(v == nil and err:find('^timeout') and wapphook.now() - t0 < 1.5, err)\n"
        "  v, err = wapphook.http.get('ftp://127.0.0.1/x')\n"
        "  assert(v == nil and err:find('^not allowed'), err)\n"
        "  v, err = wapphook.http.get('http://[::1' )\n"
        "  assert(v == nil and err:find('^protocol'), err)\n"
        "  assert(not pcall(wapphook.http.request, {url = base, headers = {X = 'a\\r\\nB: c'}}))\n"
        "end\n"
        "function budget(e) wapphook.http.get(base .. '/slow') return true end\n"
        "function three(e)\n"
        "  for i = 1, 3 do assert(wapphook.http.get(base .. '/echo').status == 201) end\n"
        "end\n"
        "function refused(e)\n"
        "  local v, err = wapphook.http.get(base .. '/echo')\n"
        "  assert(v == nil and err:find('^refused address: 127.0.0.1'), err)\n"
        "  v, err = wapphook.http.get('http://localhost:%d/echo')\n"
        "  assert(v == nil and err:find('^refused address'), err)\n"
        "end\n",
        upstream_port, upstream_port);
    snprintf(opts, sizeof opts,
             "  timeout_ms: 600\nhttp:\n  allow: [127.0.0.1/32]\n"
             "  max_response_bytes: 100000\n");
    assert_int_equal(load(script, "f", opts), 0);
    OK("f");
    {
        long long t0 = now_ms();
        assert_int_equal(call("budget"), WH_OUTCOME_TIMEOUT); /* the budget ended in the transfer */
        assert_true(now_ms() - t0 < 3000);
    }
    /* keep-alive: three requests from one thread, one connection */
    assert_int_equal(load(script, "three", opts), 0);
    before = upstream_connections();
    OK("three");
    assert_true(upstream_connections() - before <= 1); /* 3 requests: reused */
    /* TLS: a real HTTPS server (wapphook itself) with a self-signed certificate */
    {
        struct wh_proc *up = &tls_upstream;
        char m[1024], tls_script[1024];
        cert_make(path_in(dir, "self.pem"), NULL);
        snprintf(m, sizeof m,
                 "server:\n  listen: [https://127.0.0.1:0]\n  tls: {certificate: self.pem}\n"
                 "secrets: [{value: s}]\nhooks: {}\n");
        file_write(dir, "tls.yaml", m);
        assert_int_equal(proc_start(up, path_in(dir, "tls.yaml"), NULL, 1), 0);
        snprintf(tls_script, sizeof tls_script,
                 "function tls(e)\n"
                 "  local v, err = wapphook.http.get('%s?challenge=x')\n"
                 "  assert(v == nil and err:find('^tls: '), tostring(err))\n"
                 "end\n",
                 up->https);
        /* a budget for a handshake under ThreadSanitizer on a loaded machine (600 ms
         * was seen to run out), not the 600 ms the budget case above needs */
        assert_int_equal(
            load(tls_script, "tls", "  timeout_ms: 20000\nhttp:\n  allow: [127.0.0.1/32]\n"), 0);
        OK("tls");
        assert_int_equal(proc_stop(up), 0);
    }
    /* the default policy: loopback is not public; refused before connecting */
    assert_int_equal(load(script, "refused", "  timeout_ms: 2000\n"), 0);
    before = upstream_connections();
    OK("refused");
    assert_int_equal(upstream_connections(), before);
}

/* Without the sandbox the limits still use the hook: a script may not take it away. */
static void no_sandbox_keeps_the_hook(void **state)
{
    (void)state;
    assert_int_equal(
        load("function f(e) debug.sethook() while true do end end\n"
             "function g(e) pcall(debug.sethook) while true do end end\n"
             "function p(e) return ('a'):rep(40):find('a*a*a*a*a*a*a*a*a*a*a*a*b') end\n",
             "f", "  sandbox: false\n"),
        0);
    assert_int_equal(call("f"), WH_OUTCOME_FAILED);
    assert_non_null(strstr(err, "debug.sethook is not available"));
    assert_int_equal(call("g"), WH_OUTCOME_TIMEOUT);
    assert_int_equal(call("p"), WH_OUTCOME_TIMEOUT);
}

static void kept_event_is_voided(void **state)
{
    (void)state;
    assert_int_equal(load("local kept\n"
                          "function keep(e) kept = e end\n"
                          "function use(e) return kept.payload end\n",
                          "keep", NULL),
                     0);
    OK("keep");
    assert_int_equal(call("use"), WH_OUTCOME_FAILED);
    assert_non_null(strstr(err, "only available while the handler runs"));
}

static void load_time_errors_name_file_and_line(void **state)
{
    char want[600];
    (void)state;
    snprintf(want, sizeof want, "%s:7: script script.lua: script.lua:2:", file);
    assert_int_equal(load("function f(e)\n  return = 1\nend\n", "f", NULL), -1);
    if (!strstr(err, want)) fail_msg("got %s", err);
    assert_int_equal(load("local x = 1\nerror('top level fails')\n", "f", NULL), -1);
    assert_non_null(strstr(err, "script.lua:2: top level fails"));
    assert_int_equal(load("function other(e) end\n", "f", NULL), -1);
    assert_non_null(strstr(err, "defines no function f()"));
    assert_int_equal(load("while true do end\n", "f", NULL), -1);
    assert_non_null(strstr(err, "timeout"));
    assert_int_equal(load("\x1bLua", "f", NULL), -1);
    assert_non_null(strstr(err, "binary"));
}

static void measured_cost_of_a_call(void **state)
{
    /* not a timed assertion: the figure is printed for docs/handlers.md and the issue note */
    char body[2048];
    struct wh_event ev = {.type = "t", .received_at = 1.0};
    long long t0;
    const int n = 20000;
    FILE *f = fopen(PROJECT_SOURCE_DIR "/bench/event.json", "rb");
    size_t len;
    (void)state;
    assert_non_null(f);
    len = fread(body, 1, sizeof body - 1, f);
    fclose(f);
    body[len] = '\0';
    assert_int_equal(load("function read(e) local d = e.payload.data\n"
                          "  if not d.from.phone or not d.text.body then return false end end\n"
                          "function ignore(e) end\n",
                          "read", NULL),
                     0);
    ev.body = body;
    ev.body_len = len;
    assert_int_equal(json_text_check(body, len), JSON_TEXT_OBJECT);
    for (int pass = 0; pass < 2; pass++) {
        const char *fn = pass ? "ignore" : "read";
        t0 = now_ms();
        for (int i = 0; i < n; i++)
            if (wl_runtime_call(rt, 0, fn, wh_handler_budget_ms(cfg, &cfg->hooks[0].handlers[0]),
                                &ev, err, sizeof err) != WH_OUTCOME_OK)
                fail_msg("%s", err);
        printf("lua call, %zu-byte event, %s: %.2f us per call\n", len,
               pass ? "payload not read" : "payload read", (double)(now_ms() - t0) * 1000.0 / n);
    }
}

/* coroutine.resume, wrap and close are the runtime's own (the kick chain, the stop): the same
 * script, run by stock Lua and by the runtime, must leave the same trace. Every path of
 * lcorolib's: values both ways, yields, errors with and without positions, dead and running
 * coroutines, __close handlers and their errors, non-string errors, wrap's propagation. */
static const char coroutine_trace[] =
    "local out = {}\n"
    "local function log(...) local t = table.pack(...) for i = 1, t.n do local v = t[i] out[#out + "
    "1] = type(v) == 'string' and v:gsub('^[^:]*:%d+: ', '') or type(v) == 'table' and 'table' or "
    "tostring(v) end out[#out + 1] = '|' end\n"
    "local co = coroutine.create(function(a, b) log('in', a, b) local c = coroutine.yield(a + b) "
    "log('got', c) return 'done', c * 2 end)\n"
    "log(coroutine.resume(co, 1, 2)) log(coroutine.status(co)) log(coroutine.resume(co, 10))\n"
    "log(coroutine.resume(co)) log(coroutine.status(co))\n"
    "log(coroutine.resume(coroutine.create(function() error('boom') end)))\n"
    "log(coroutine.resume(coroutine.create(function() error({code = 7}) end)))\n"
    "log(coroutine.resume(coroutine.create(function() error('nopos', 0) end)))\n"
    "log(pcall(coroutine.resume, 42))\n"
    "local w = coroutine.wrap(function(x) local y = coroutine.yield(x * 3) return y, 'end' end)\n"
    "log(w(5)) log(w('y')) log(pcall(w))\n"
    "log(pcall(coroutine.wrap(function() error('wrapped') end)))\n"
    "log(pcall(coroutine.wrap(function() error('wrapped0', 0) end)))\n"
    "log(pcall(coroutine.wrap(function() error(setmetatable({}, {__tostring = function() return "
    "'obj' end})) end)))\n"
    "log(pcall(coroutine.wrap, 1))\n"
    "local inner\n"
    "local outer = coroutine.create(function() log(coroutine.resume(inner)) "
    "log(coroutine.resume(coroutine.running())) return 'o' end)\n"
    "inner = coroutine.create(function() log(coroutine.resume(outer)) return 'i' end)\n"
    "log(coroutine.resume(outer))\n"
    "local cl = coroutine.create(function() local x <close> = setmetatable({}, {__close = "
    "function(_, e) log('closing', e) end}) coroutine.yield(1) end)\n"
    "log(coroutine.resume(cl)) log(coroutine.close(cl)) log(coroutine.status(cl)) "
    "log(coroutine.close(cl))\n"
    "local ce = coroutine.create(function() local x <close> = setmetatable({}, {__close = "
    "function() error('in close') end}) coroutine.yield() end)\n"
    "coroutine.resume(ce) log(coroutine.close(ce))\n"
    "local ew = coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() "
    "error('close err') end}) error('body err') end)\n"
    "log(pcall(ew))\n"
    "log(pcall(coroutine.close, coroutine.running()))\n"
    "local me\n"
    "me = coroutine.create(function() log(pcall(coroutine.close, me)) end) coroutine.resume(me)\n"
    "log(coroutine.isyieldable(), select('#', coroutine.resume(coroutine.create(function() return "
    "end))))\n"
    "local selfw\nselfw = coroutine.wrap(function() return pcall(selfw) end)\nlog(selfw())\n"
    "local o2, i2\n"
    "o2 = coroutine.create(function() coroutine.resume(i2) end)\n"
    "i2 = coroutine.create(function() log(pcall(coroutine.close, o2)) log(coroutine.resume(o2)) "
    "end)\n"
    "coroutine.resume(o2)\n"
    "log(coroutine.close(coroutine.create(print)))\n"
    "local many = coroutine.create(function(...) return select('#', ...), ... end)\n"
    "log(select('#', coroutine.resume(many, table.unpack({}, 1, 200))))\n"
    "return table.concat(out, ' ')\n";

static void coroutines_behave_as_stock_lua(void **state)
{
    lua_State *L = luaL_newstate();
    char script[12288], *ours;
    const char *stock;
    (void)state;
    luaL_openlibs(L);
    if (luaL_dostring(L, coroutine_trace) != LUA_OK) fail_msg("stock Lua: %s", lua_tostring(L, -1));
    stock = lua_tostring(L, -1);
    snprintf(script, sizeof script,
             "function f(e)\n  local trace = (function()\n%s\n  end)()\n"
             "  local f = assert(io.open('%s/trace.txt', 'w'))\n"
             "  f:write(trace) f:close()\nend\n",
             coroutine_trace, dir);
    assert_int_equal(load(script, "f", "  timeout_ms: 2000\n  sandbox: false\n"), 0);
    OK("f");
    {
        char path[600];
        FILE *f;
        snprintf(path, sizeof path, "%s/trace.txt", dir);
        f = fopen(path, "r");
        assert_non_null(f);
        ours = calloc(1, 65536);
        assert_true(fread(ours, 1, 65535, f) > 0);
        fclose(f);
    }
    if (strcmp(ours, stock) != 0) fail_msg("traces differ:\n stock: %s\n ours:  %s", stock, ours);
    printf("coroutine trace, equal to stock Lua's: %.200s...\n", ours);
    free(ours);
    lua_close(L);
}

/* The stack cap that stops a chain of __call tables leaves ordinary recursion alone: 1,500
 * nested calls (a walk of JSON nested 1,500 deep) work; 100,000 are stopped with the reason. */
static void recursion_under_the_stack_cap(void **state)
{
    (void)state;
    assert_int_equal(
        load("local function depth(n) if n == 0 then return 0 end return 1 + depth(n - 1) end\n"
             "function ok(e) assert(depth(1500) == 1500) end\n"
             "function deep(e) return depth(100000) end\n"
             "local function nest(n) local s = '' for i = 1, n do s = s .. '[' end\n"
             "  for i = 1, n do s = s .. ']' end return s end\n"
             "local function walk(v) local d = 0 for _, x in ipairs(v) do d = math.max(d, walk(x)) "
             "end return d + 1 end\n"
             "function json(e) assert(walk(wapphook.json.decode(nest(1500))) == 1500) end\n",
             "ok", NULL),
        0);
    OK("ok");
    OK("json");
    assert_int_equal(call("deep"), WH_OUTCOME_MEMORY);
    assert_non_null(strstr(err, "the Lua stack grew past 20480 slots"));
    OK("ok"); /* the state was rebuilt */
}

int main(void)
{
    /* as wapphook's main does for the commands that run handlers: the HTTPS and exec
     * cases write to peers that may be gone (seen: this suite ended by SIGPIPE in
     * http_from_lua) */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(event_fields_and_payload),
        cmocka_unit_test(wapphook_module),
        cmocka_unit_test(sandbox),
        cmocka_unit_test(no_sandbox_gives_the_standard_libraries),
        cmocka_unit_test(results),
        cmocka_unit_test(timeouts_cannot_be_swallowed),
        cmocka_unit_test(memory_limit_cannot_be_swallowed),
        cmocka_unit_test(escapes_end_within_the_budget),
        cmocka_unit_test(top_level_is_bounded),
        cmocka_unit_test(long_date_formats_are_whole),
        cmocka_unit_test(shared_dictionaries),
        cmocka_unit_test(exec_from_lua),
        cmocka_unit_test(http_from_lua),
        cmocka_unit_test(no_sandbox_keeps_the_hook),
        cmocka_unit_test(kept_event_is_voided),
        cmocka_unit_test(load_time_errors_name_file_and_line),
        cmocka_unit_test(coroutines_behave_as_stock_lua),
        cmocka_unit_test(recursion_under_the_stack_cap),
        cmocka_unit_test(measured_cost_of_a_call),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
