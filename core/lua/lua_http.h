/*
 * wapphook.http for Lua (SPEC section 10): request, get and post on libcurl, one easy handle
 * per thread (its connections kept alive), inside the call's budget: the transfer's timeout
 * is the sooner of the request's, http.timeout_ms and what is left of the budget, DNS,
 * connect and TLS included (the threaded resolver; no signals). Only http and https, TLS
 * verified, no redirects followed, no proxy, the response capped at http.max_response_bytes,
 * and every address connected to, fresh or reused, checked by http_policy.h. Errors are
 * nil, "word: detail". Nothing of libcurl's runs while Lua can raise: results are built in C
 * memory and pushed protected.
 */
#ifndef WH_LUA_HTTP_H
#define WH_LUA_HTTP_H

#include "lua_budget.h"

struct wh_config;

/* What a call of the runtime tells the client (functions of the runtime's, for any state). */
struct lua_http_host {
    const struct wh_config *(*config)(lua_State *L);
    long long (*deadline_ns)(lua_State *L); /* the running call's, wh_mono_ns() clock */
    lua_budget budget;
};

/* Once per process, before threads: libcurl's global set-up. Returns 0, or -1 with why when
 * its resolver is not the threaded one (lookups could not be bounded). */
int lua_http_global_init(char *why, size_t why_len);

/* At exit, after every other thread ended: the calling thread's handle, libcurl's state. */
void lua_http_global_cleanup(void);

/* Pushes the wapphook.http table; host must outlive the state (a static). */
void lua_http_push(lua_State *L, const struct lua_http_host *host);

#endif
