/*
 * wapphook.http for Lua (docs/handlers.md, "Handlers that act"): request, get and post on libcurl,
 * one easy handle per thread (its connections kept alive), inside the call's budget: the transfer's
 * timeout is the sooner of the request's, http.timeout_ms and what is left of the budget, DNS,
 * connect and TLS included (the threaded resolver; no signals). Only http and https, TLS
 * verified, no redirects followed, no proxy, the response capped at http.max_response_bytes,
 * and every address connected to, fresh or reused, checked by http_policy.h. Errors are
 * nil, "word: detail". Nothing of libcurl's runs while Lua can raise: results are built in C
 * memory and pushed protected.
 */
#ifndef WH_OUTBOUND_HTTP_H
#define WH_OUTBOUND_HTTP_H

#include "budget.h"

struct wh_config;

/* What a call of the runtime tells the client (functions of the runtime's, for any state). */
struct wl_http_host {
    const struct wh_config *(*config)(lua_State *L);
    long long (*deadline_ns)(lua_State *L); /* the running call's, wh_mono_ns() clock */
    wl_budget budget;
};

/* Pushes the wapphook.http table; host must outlive the state (a static). */
void wl_http_push(lua_State *L, const struct wl_http_host *host);

#endif
