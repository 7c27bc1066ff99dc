/*
 * hooks.yaml -> an immutable struct wh_config (libyaml document API). Every key of the
 * manifest is known here: an unknown key, a wrong type or a bad value is refused with
 * "FILE:LINE: reason". Relative paths are resolved against the manifest's folder.
 * manifest_load() returns a config that owns all its memory; manifest_free() releases it
 * (and wipes the secrets).
 */
#ifndef WH_CONF_H
#define WH_CONF_H

#include "base/base.h"

#include <stdbool.h>
#include <stddef.h>

#define WH_ERR_LEN 1024

struct wh_listener {
    bool tls;
    char *host; /* literal address: "127.0.0.1", "0.0.0.0", "::1" */
    int port;   /* 0 picks a free port (tests); the chosen one is logged */
    char *url;  /* as written, for logs */
    int line;
};

struct wh_secret_src {
    char *source; /* "env WAPPCLOUD_SECRET", "file /x/y.key", "value": never the secret */
    unsigned char *key;
    size_t len;
    int line;
};

enum wh_handler_kind { WH_HANDLER_LUA, WH_HANDLER_PLUGIN, WH_HANDLER_EXEC };

struct wh_handler {
    enum wh_handler_kind kind;
    char *path;         /* absolute or relative to the working folder, resolved */
    char *display;      /* as written in the manifest, for logs */
    char *function;     /* Lua: the global to call ("handle" unless set) */
    char *config;       /* plugin: config mapping as JSON text ("{}" when absent) */
    int timeout_ms;     /* its own budget (timeout_ms:), or 0 for lua.timeout_ms */
    int max_concurrent; /* sync mode: calls at once, past it 503 (0: no cap) */
    char **argv;        /* exec: the command (argv[0] resolved, in exec.allow), NULL-terminated */
    int line;
};

struct wh_shared_dict {
    char *name; /* a Lua identifier: wapphook.shared.NAME */
    int size_mb;
    int line;
};

struct wh_hook {
    char *type; /* event type, or "*" */
    struct wh_handler *handlers;
    size_t n_handlers;
    int line;
};

enum wh_on_error { WH_ON_ERROR_RETRY, WH_ON_ERROR_ACK };
enum wh_delivery_mode { WH_DELIVERY_SYNC, WH_DELIVERY_DURABLE };

/* TLS 1.2 suites by default: ECDHE key exchange with AEAD ciphers only (Mozilla's intermediate
 * profile): no CBC (LUCKY13), no static RSA key exchange. TLS 1.3's suites are all AEAD. */
#define WH_TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

struct wh_config {
    char *file; /* the manifest's path as given */
    char *dir;  /* its folder, for relative paths */

    struct wh_listener *listeners;
    size_t n_listeners;
    char *tls_certificate; /* NULL unless set */
    int tls_certificate_line;
    int tls_min_version; /* 12 or 13 */
    char *tls_ciphers;   /* TLS 1.2 suites, OpenSSL's syntax (WH_TLS12_CIPHERS by default) */
    int tls_ciphers_line;
    char *path;
    int threads;
    long long max_body_bytes;
    int request_timeout_ms;
    int shutdown_timeout_ms; /* SIGTERM: how long requests in flight may take to finish */
    /* hostile clients and overload (docs/security.md, "Hostile clients and overload"); all but
     * header_timeout_ms apply on reload */
    int header_timeout_ms;
    int max_connections_per_client; /* 0: no cap */
    struct cidr *trusted_proxies;
    size_t n_trusted_proxies;
    struct cidr *allow_from; /* NULL: every client may POST */
    size_t n_allow_from;
    int max_inflight; /* sync mode: POSTs handled at once (0: no cap; -1, unset: 3/4 of
                       * threads) */
    char *admin;      /* "host:port" or NULL */
    int admin_line;

    /* the console on the admin listener (docs/operations.md, "The console") */
    bool console_enabled;
    char *console_token_env, *console_token_file;
    int console_token_line;       /* of token_file or token_env, when given */
    char *console_token;          /* read at load (NULL: none, or a load without secrets) */
    int console_history;          /* sync mode: events kept in memory */
    long long history_body_bytes; /* of each one's body; past it the body is kept cut */

    struct wh_secret_src *secrets;
    size_t n_secrets;

    char *event_header;
    char *signature_header;

    int lua_timeout_ms;
    int lua_memory_limit_mb;
    bool lua_sandbox;
    char *lua_path;
    struct wh_shared_dict *shared; /* lua.shared */
    size_t n_shared;

    enum wh_on_error on_handler_error;
    enum wh_delivery_mode delivery_mode;
    int delivery_mode_line;
    char *spool;
    int spool_line; /* of delivery.spool, or of delivery.mode where the default applies */
    long long max_spool_mb;
    long long keep_delivered_s; /* delivered events leave the spool this long after arrival */
    int delivery_workers;
    int lease_s;     /* a shared spool: how long a delivery is an instance's alone */
    char *pg_schema; /* a shared spool: the PostgreSQL schema its tables live in */
    int retry_max_attempts;
    long long retry_initial_backoff_ms;
    long long retry_max_backoff_ms;
    char *dedupe_key;
    long long dedupe_window_s;

    struct http_allow *http_allow; /* http.allow */
    size_t n_http_allow;
    bool has_http_allow; /* present (even empty): only what it names */
    bool http_allow_private;
    int http_timeout_ms;
    long long http_max_response_bytes;

    char **exec_allow; /* resolved paths */
    size_t n_exec_allow;
    int exec_max_concurrent;
    long long exec_max_output_bytes;

    struct wh_hook *hooks;
    size_t n_hooks;
};

/* 0 and *out, or -1 with "FILE:LINE: reason" (or "FILE: reason") in err. Secrets are read
 * from the environment and files now; an empty or missing one is an error. */
int manifest_load(const char *file, struct wh_config **out, char *err, size_t err_len);
/* The same without reading the secrets (their entries are still checked): for tools that
 * need the rest of the manifest only, such as `wapphook spool`. */
int manifest_load_no_secrets(const char *file, struct wh_config **out, char *err, size_t err_len);
void manifest_free(struct wh_config *cfg);

/* The budget of one call of h (docs/handlers.md, "Limits"): its own timeout_ms, else
 * lua.timeout_ms. */
static inline int wh_handler_budget_ms(const struct wh_config *cfg, const struct wh_handler *h)
{
    return h->timeout_ms ? h->timeout_ms : cfg->lua_timeout_ms;
}

/* The hook registered for an event type, or NULL. */
const struct wh_hook *manifest_find_hook(const struct wh_config *cfg, const char *type);
/* Is path (a resolved program) in cfg's exec.allow? */
bool manifest_exec_allowed(const struct wh_config *cfg, const char *path);

/* Names the settings that differ between a and b and apply only on a restart (server.*,
 * delivery.mode, and delivery.spool and delivery.workers in durable mode), comma-separated in
 * out; returns how many. */
int manifest_server_diff(const struct wh_config *a, const struct wh_config *b, char *out,
                         size_t out_len);

/* 1 if type matches [A-Za-z0-9_.:-]{1,64}. */
int manifest_event_type_valid(const char *type, size_t len);

#endif
