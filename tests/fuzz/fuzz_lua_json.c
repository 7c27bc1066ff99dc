/* Fuzz target: JSON text against jansson. json_text_check must give jansson's verdict
 * (invalid / object / other) on every input; for an object, the Lua table built from the
 * text must equal the one built from jansson's tree, json_text_path must find what jansson
 * finds for each top-level key, and a sandboxed handler walks the payload and round-trips it
 * through wapphook.json.encode/decode. */
#include "runtime/dispatch.h"
#include "base/json_text.h"
#include "../support/lua_same.h"
#include "lua/json.h"
#include "lua/wl.h"
#include "conf/conf.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct wh_config *cfg;
static struct wl_runtime *rt;
static lua_State *bare;

static void check_paths(const uint8_t *data, size_t size, json_t *j)
{
    const char *k;
    json_t *v;

    int checked = 0;

    json_object_foreach(j, k, v)
    {
        char *got, want[32];
        if (checked++ == 64) break; /* each look-up scans the object: keep wide inputs fast */
        const char *w = NULL;
        if (strchr(k, '.') || !*k) continue; /* not expressible as a dedupe path */
        if (json_is_string(v)) w = json_string_value(v);
        if (json_is_integer(v)) {
            snprintf(want, sizeof want, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            w = want;
        }
        got = json_text_path((const char *)data, size, k);
        if ((w == NULL) != (got == NULL) || (w && strcmp(w, got) != 0)) __builtin_trap();
        free(got);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/wapphook-fuzz-lua-XXXXXX", p[128], err[2048];
    FILE *f;

    (void)argc;
    (void)argv;
    if (!mkdtemp(dir)) abort();
    snprintf(p, sizeof p, "%s/walk.lua", dir);
    f = fopen(p, "w");
    fputs("local function walk(v, depth)\n"
          "  if type(v) == 'table' then for k, x in pairs(v) do walk(x, depth + 1) end end\n"
          "end\n"
          "function handle(e)\n"
          "  walk(e.payload, 0)\n"
          "  local ok, text = pcall(wapphook.json.encode, e.payload)\n"
          "  if ok then\n"
          "    local back = wapphook.json.decode(text)\n"
          "    if type(back) ~= 'table' then error('round trip lost the object') end\n"
          "  end\n"
          "end\n",
          f);
    fclose(f);
    snprintf(p, sizeof p, "%s/hooks.yaml", dir);
    f = fopen(p, "w");
    fputs("secrets: [{value: s}]\nlua: {timeout_ms: 2000, memory_limit_mb: 256}\n"
          "hooks:\n  t:\n    - lua: walk.lua\n",
          f);
    fclose(f);
    bare = luaL_newstate();
    if (manifest_load(p, &cfg, err, sizeof err) || wl_runtime_new(cfg, &rt, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    struct wh_event ev = {.type = "t", .body = (const char *)data, .body_len = size};
    char err[4096];
    enum wh_outcome o;

    enum json_text_kind kind = json_text_check((const char *)data, size);

    /* A raw NUL byte is never valid JSON. jansson 2.14 skips one that follows a number or a
     * literal ("1\0," parses); wapphook refuses it: the one intended difference. */
    if (memchr(data, 0, size) ? kind != JSON_TEXT_INVALID
                              : kind != (!j                  ? JSON_TEXT_INVALID
                                         : json_is_object(j) ? JSON_TEXT_OBJECT
                                                             : JSON_TEXT_OTHER))
        __builtin_trap(); /* a verdict other than jansson's */
    if (kind != JSON_TEXT_OBJECT) {
        json_decref(j);
        return 0;
    }
    lua_settop(bare, 0);
    wl_push_json(bare, j);
    wl_push_json_text(bare, (const char *)data, size);
    if (!lua_same(bare, 1, 2)) __builtin_trap(); /* the tables differ */
    lua_settop(bare, 0);
    lua_gc(bare, LUA_GCCOLLECT);
    check_paths(data, size, j);
    o = wl_runtime_call(rt, 0, "handle", cfg->lua_timeout_ms, &ev, err, sizeof err);
    /* a failure must be a limit, never a broken conversion */
    if (o == WH_OUTCOME_FAILED && !strstr(err, "memory") && !strstr(err, "stack overflow") &&
        !strstr(err, "nested") && !strstr(err, "C stack"))
        __builtin_trap();
    json_decref(j);
    return 0;
}
