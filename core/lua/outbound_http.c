#define _GNU_SOURCE
#include "outbound_http.h"

#include "wl.h"

#include "base/base.h"
#include "conf/conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <lauxlib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_HEADER_BYTES (64 << 10)

int wl_http_global_init(char *why, size_t why_len)
{
    const curl_version_info_data *v;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    v = curl_version_info(CURLVERSION_NOW);
    if (!(v->features & CURL_VERSION_ASYNCHDNS)) {
        snprintf(why, why_len,
                 "libcurl %s has no threaded resolver: DNS lookups of "
                 "wapphook.http cannot end at the deadline",
                 v->version);
        return -1;
    }
    return 0;
}

/* One transfer: what the callbacks see (never the Lua state). */
struct transfer {
    const struct wh_config *cfg;
    char host[256];
    enum http_verdict refused;
    char why[256];
    struct wh_buf body, headers;
};

static enum http_verdict check(struct transfer *t, const struct sockaddr *a)
{
    enum http_verdict v =
        http_policy_check(t->cfg->http_allow, t->cfg->n_http_allow, t->cfg->has_http_allow,
                          t->cfg->http_allow_private, t->host, a, t->why, sizeof t->why);
    if (v != HTTP_OK) t->refused = v;
    return v;
}

/* Every address curl is about to connect to. */
static curl_socket_t open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)purpose;
    if (check(arg, &a->addr) != HTTP_OK) return CURL_SOCKET_BAD;
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* Every transfer, on the connection it got (a reused one too). */
static int before_request(void *arg, char *ip, char *local_ip, int port, int local_port)
{
    struct sockaddr_storage ss;

    (void)local_ip;
    (void)port;
    (void)local_port;
    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    return check(arg, (struct sockaddr *)&ss) == HTTP_OK ? CURL_PREREQFUNC_OK
                                                         : CURL_PREREQFUNC_ABORT;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct transfer *t = arg;
    return buf_add(&t->body, p, size * n) == 0 ? size * n : 0;
}

/* Header lines, as "name: value\n" with the name lower-cased; a new status line (after a
 * 1xx) starts over. */
static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct transfer *t = arg;
    size_t len = size * n, colon;

    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        t->headers.len = 0;
        t->headers.failed = 0;
        if (t->headers.p) t->headers.p[0] = '\0';
        return len;
    }
    for (colon = 0; colon < len && p[colon] != ':'; colon++)
        p[colon] = (char)tolower((unsigned char)p[colon]);
    if (colon < len) buf_add(&t->headers, p, len); /* past 64 KiB: later headers are dropped */
    return len;
}

/* The response table: built protected (see wl_http_push), so a memory error cannot leak. */
static int push_response(lua_State *L)
{
    struct transfer *t = lua_touserdata(L, 1);
    long status = (long)lua_tointeger(L, 2);

    lua_createtable(L, 0, 3);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, t->body.p ? t->body.p : "", t->body.len);
    lua_setfield(L, -2, "body");
    lua_newtable(L);
    for (char *line = t->headers.p; line && *line;) {
        char *end = strchr(line, '\n'), *colon = strchr(line, ':');
        char *v, *ve;
        if (!end) end = line + strlen(line);
        if (colon && colon < end) {
            for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++)
                ;
            for (ve = end; ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'); ve--)
                ;
            lua_pushlstring(L, line, (size_t)(colon - line));
            lua_pushlstring(L, v, (size_t)(ve - v));
            lua_settable(L, -3); /* a repeated header: the last one */
        }
        line = *end ? end + 1 : end;
    }
    lua_setfield(L, -2, "headers");
    return 1;
}

static const char *error_word(CURLcode rc, const struct transfer *t)
{
    if (t->refused == HTTP_NOT_ALLOWED) return "not allowed";
    if (t->refused == HTTP_REFUSED_ADDRESS) return "refused address";
    if (t->body.failed == WH_BUF_OVER) return "too large";
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
        return "dns";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        return "tls";
    default:
        return "protocol";
    }
}

static int http_result(const char *word)
{
    static const char *const words[] = {"timeout",   "refused address", "not allowed",
                                        "dns",       "connect",         "tls",
                                        "too large", "protocol"};
    for (int i = 0; i < 8; i++)
        if (strcmp(word, words[i]) == 0) return MH_TIMEOUT + i;
    return MH_PROTOCOL;
}

/* Each thread's handle, closed (with its connections) when the thread ends. */
static pthread_key_t handle_key;
static pthread_once_t handle_once = PTHREAD_ONCE_INIT;

static void handle_free(void *easy)
{
    curl_easy_cleanup(easy);
}

static void handle_key_make(void)
{
    pthread_key_create(&handle_key, handle_free);
}

static CURL *thread_handle(void)
{
    CURL *easy;

    pthread_once(&handle_once, handle_key_make);
    easy = pthread_getspecific(handle_key);
    if (!easy) {
        easy = curl_easy_init();
        pthread_setspecific(handle_key, easy);
    } else {
        curl_easy_reset(easy); /* keeps its connections */
    }
    return easy;
}

void wl_http_global_cleanup(void)
{
    pthread_once(&handle_once, handle_key_make);
    handle_free(pthread_getspecific(handle_key)); /* the calling thread's: no destructor runs */
    pthread_setspecific(handle_key, NULL);
    curl_global_cleanup();
}

#define HTTP_MAX_HEADERS 100
#define HTTP_MAX_HEADER_BYTES 65536

/* request(opts): opts at index 1 (a table) */
static int h_request(lua_State *L)
{
    const struct wl_http_host *host = lua_touserdata(L, lua_upvalueindex(1));
    const struct wh_config *cfg = host->config(L);
    struct transfer t = {.cfg = cfg};
    struct curl_slist *hdrs = NULL;
    const char *url, *method, *body = NULL;
    size_t body_len = 0;
    long long left_ms, timeout;
    char errbuf[CURL_ERROR_SIZE] = "", *scheme = NULL, *hostname = NULL;
    CURLU *u;
    CURL *c;
    CURLcode rc;
    long status = 0;
    int prc, n_hdrs = 0;
    size_t hdr_bytes = 0;

    host->budget(L); /* a stopped call sends nothing */
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "url");
    url = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "method");
    method = luaL_optstring(L, -1, "GET");
    for (const char *m = method; *m; m++)
        if (!isupper((unsigned char)*m))
            return luaL_error(L, "wapphook.http: method '%s' is not an HTTP method", method);
    if (lua_getfield(L, 1, "body") != LUA_TNIL) body = luaL_checklstring(L, -1, &body_len);
    lua_getfield(L, 1, "timeout_ms");
    timeout = luaL_optinteger(L, -1, cfg->http_timeout_ms);
    if (timeout <= 0) return luaL_error(L, "wapphook.http: timeout_ms must be positive");
    if (timeout > cfg->http_timeout_ms) timeout = cfg->http_timeout_ms;
    /* request headers: CR and LF refused, so nothing can be injected */
    if (lua_getfield(L, 1, "headers") == LUA_TTABLE) {
        int ht = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, ht)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            char line[8192];
            struct curl_slist *more;
            if (!k || !v || !*k || strpbrk(k, "\r\n: ") || strpbrk(v, "\r\n") ||
                strlen(k) + strlen(v) + 3 > sizeof line) {
                curl_slist_free_all(hdrs);
                return luaL_error(L, "wapphook.http: headers must map names to one-line values");
            }
            /* they are copied into C memory for curl: bounded, not counted in the state */
            hdr_bytes += strlen(k) + strlen(v) + 3;
            if (++n_hdrs > HTTP_MAX_HEADERS || hdr_bytes > HTTP_MAX_HEADER_BYTES) {
                curl_slist_free_all(hdrs);
                return luaL_error(L, "wapphook.http: at most %d request headers, %d bytes in all",
                                  HTTP_MAX_HEADERS, HTTP_MAX_HEADER_BYTES);
            }
            memcpy(line, k, strlen(k)); /* fits: checked above */
            memcpy(line + strlen(k), ": ", 2);
            memcpy(line + strlen(k) + 2, v, strlen(v) + 1);
            if (!(more = curl_slist_append(hdrs, line))) {
                curl_slist_free_all(hdrs);
                return luaL_error(L, "wapphook.http: out of memory");
            }
            hdrs = more;
            lua_pop(L, 1);
        }
    }
    /* the scheme and host, as curl will read them */
    u = curl_url();
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &hostname, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        curl_slist_free_all(hdrs);
        metrics_http(MH_PROTOCOL);
        lua_pushnil(L);
        lua_pushfstring(L, "protocol: not a URL: %s", url);
        return 2;
    }
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "not allowed: only http and https, not %s", scheme);
        curl_free(scheme);
        curl_free(hostname);
        curl_url_cleanup(u);
        curl_slist_free_all(hdrs);
        metrics_http(MH_NOT_ALLOWED);
        return 2;
    }
    snprintf(t.host, sizeof t.host, "%s", hostname[0] == '[' ? hostname + 1 : hostname);
    if (t.host[0] && t.host[strlen(t.host) - 1] == ']') t.host[strlen(t.host) - 1] = '\0';
    for (char *p = t.host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    curl_free(scheme);
    curl_free(hostname);
    curl_url_cleanup(u);

    /* the transfer ends by the budget's deadline, whatever it is doing */
    /* rounded up, and a millisecond more: a transfer the budget ends finds it spent */
    left_ms = (host->deadline_ns(L) - wh_mono_ns() + 999999) / 1000000 + 1;
    if (left_ms <= 1) {
        curl_slist_free_all(hdrs);
        host->budget(L); /* the budget is spent: this raises the stop */
        lua_pushnil(L);
        lua_pushliteral(L, "timeout: no budget left");
        return 2;
    }
    if (timeout > left_ms) timeout = left_ms;
    t.body.max = (size_t)cfg->http_max_response_bytes;
    t.headers.max = MAX_HEADER_BYTES;
    c = thread_handle();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "wapphook/" WAPPHOOK_VERSION);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &t);
    curl_easy_setopt(c, CURLOPT_PREREQFUNCTION, before_request);
    curl_easy_setopt(c, CURLOPT_PREREQDATA, &t);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, body ? "POST" : "GET") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    rc = curl_easy_perform(c);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    if (rc == CURLE_OK && !t.refused) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        lua_pushcfunction(L, push_response);
        lua_pushlightuserdata(L, &t);
        lua_pushinteger(L, status);
        prc = lua_pcall(L, 2, 1, 0);
        buf_free(&t.body);
        buf_free(&t.headers);
        if (prc != LUA_OK) return lua_error(L);
        metrics_http(status >= 100 && status < 600 ? (int)(status / 100) - 1 : MH_PROTOCOL);
        return 1;
    }
    {
        const char *word = error_word(rc, &t);
        buf_free(&t.body);
        buf_free(&t.headers);
        metrics_http(http_result(word));
        host->budget(L); /* the budget ran out in the transfer: the call has timed out */
        lua_pushnil(L);
        if (t.refused)
            lua_pushstring(L, t.why);
        else
            lua_pushfstring(L, "%s: %s", word, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    return 2;
}

/* get(url [, opts]) and post(url, body [, opts]): request with those fields set. */
static int shorthand(lua_State *L, const char *method, int body)
{
    const struct wl_http_host *host = lua_touserdata(L, lua_upvalueindex(1));
    int opts = body ? 3 : 2;

    host->budget(L);
    luaL_checkstring(L, 1);
    if (body) luaL_checkstring(L, 2);
    lua_newtable(L);
    if (lua_type(L, opts) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, opts)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_settable(L, -4);
        }
    }
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "url");
    lua_pushstring(L, method);
    lua_setfield(L, -2, "method");
    if (body) {
        lua_pushvalue(L, 2);
        lua_setfield(L, -2, "body");
    }
    lua_replace(L, 1);
    lua_settop(L, 1);
    return h_request(L);
}

static int h_get(lua_State *L)
{
    return shorthand(L, "GET", 0);
}

static int h_post(lua_State *L)
{
    return shorthand(L, "POST", 1);
}

void wl_http_push(lua_State *L, const struct wl_http_host *host)
{
    static const luaL_Reg fns[] = {
        {"request", h_request}, {"get", h_get}, {"post", h_post}, {NULL, NULL}};

    lua_createtable(L, 0, 3);
    lua_pushlightuserdata(L, (void *)host);
    luaL_setfuncs(L, fns, 1);
}
