/* Fuzz target: JSON text -> jansson -> Lua tables, in a sandboxed state, walked and encoded
 * back by a script: whatever jansson accepts converts without crashing, and the round trip
 * through wapphook.json.encode/decode gives an equal document. */
#include "dispatch.h"
#include "lua_runtime.h"
#include "manifest.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct wh_config *cfg;
static struct lua_runtime *rt;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/wapphook-fuzz-lua-XXXXXX", p[128], err[2048];
    FILE *f;

    (void)argc;
    (void)argv;
    if (!mkdtemp(dir))
        abort();
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
          "end\n", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/hooks.yaml", dir);
    f = fopen(p, "w");
    fputs("secrets: [{value: s}]\nlua: {timeout_ms: 2000, memory_limit_mb: 256}\n"
          "hooks:\n  t:\n    - lua: walk.lua\n", f);
    fclose(f);
    if (manifest_load(p, &cfg, err, sizeof err) || lua_runtime_new(cfg, &rt, err, sizeof err)) {
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
    enum lua_outcome o;

    if (!j || !json_is_object(j)) {
        json_decref(j);
        return 0;
    }
    ev.payload = j;
    o = lua_runtime_call(rt, 0, "handle", &ev, err, sizeof err);
    /* a failure must be a limit, never a broken conversion */
    if (o == LUA_CALL_FAILED && !strstr(err, "memory") && !strstr(err, "stack overflow") &&
        !strstr(err, "nested") && !strstr(err, "C stack"))
        __builtin_trap();
    json_decref(j);
    return 0;
}
