/*
 * The table of keys, in the manner of nginx's ngx_command_t: every key of every section but
 * secrets: and hooks: (secrets.c, hooks.c) is one entry {section, name, type, field, min,
 * max, default}, with a parse function where its value needs more than its type's check.
 * The table gives the defaults (keys_defaults), parses each section (one walk, by name) and
 * writes the "expected ..." list of an unknown key's refusal, in table order.
 */
#include "parse.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum key_type {
    KEY_INT,     /* int or long long (by the field's size), from min to max */
    KEY_BOOL,    /* bool: true or false */
    KEY_STR,     /* char *: a non-empty string (a default of NULL: unset) */
    KEY_PATH,    /* char *: a path, made absolute against the manifest's folder (so is the
                  * default) */
    KEY_ENUM,    /* an enum or int field: one of names */
    KEY_LISTEN,  /* the listeners: a list of URLs (the default: one URL) */
    KEY_SECTION, /* a mapping of the keys whose section is this one's SECTION.NAME */
    KEY_OTHER,   /* parse does it all; the fields it sets start as zeros */
};

struct key_name {
    const char *name;
    int value;
};

struct key {
    const char *section; /* "" for the top level */
    const char *name;
    enum key_type type;
    size_t offset, size; /* the field in struct wh_config: F(field) */
    long long min, max;  /* KEY_INT */
    long long def;       /* KEY_INT, KEY_BOOL, KEY_ENUM */
    const char *def_str; /* KEY_STR, KEY_PATH, KEY_LISTEN */
    /* where the line of the value is kept: L(field), or 0 (offset 0 is cfg->file, no line) */
    size_t line_at;
    /* instead of the type's parse (which it may call: key_plain) */
    int (*parse)(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what);
    const struct key_name *names; /* KEY_ENUM, ended by {NULL} */
};

static int key_plain(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what);

static void *field(struct ctx *c, const struct key *k)
{
    return (char *)c->cfg + k->offset;
}

/* The string of a KEY_STR key as its type reads it, or NULL (refused). */
static const char *plain_text(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    return key_plain(c, k, v, what) ? NULL : *(char **)field(c, k);
}

static void store_int(struct ctx *c, const struct key *k, long long v)
{
    if (k->size == sizeof(long long))
        *(long long *)field(c, k) = v;
    else
        *(int *)field(c, k) = (int)v; /* int, or an enum of int's size */
}

/* --- server -------------------------------------------------------------------------- */

/* "ADDRESS:PORT" with a literal address ([v6], v4 or localhost): 0, the address and port. */
static int parse_hostport(const char *s, char host[64], int *port)
{
    const char *colon;
    char *end;
    long p;
    unsigned char addr[16];
    size_t hl;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return -1;
        hl = (size_t)(close - s - 1);
        if (hl >= 64) return -1;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        colon = close + 1;
        if (inet_pton(AF_INET6, host, addr) != 1) return -1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return -1;
        hl = (size_t)(colon - s);
        if (hl >= 64) return -1;
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
        if (inet_pton(AF_INET, host, addr) != 1) return -1;
    }
    if (!isdigit((unsigned char)colon[1])) return -1;
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (*end || errno || p < 0 || p > 65535) return -1;
    *port = (int)p;
    return 0;
}

/* One listen URL into l (n: its node, or NULL for the default). */
static int listen_url(struct ctx *c, const yaml_node_t *n, const char *s, struct wh_listener *l)
{
    char host[64];
    const char *rest;

    if (strncmp(s, "http://", 7) == 0) {
        rest = s + 7;
    } else if (strncmp(s, "https://", 8) == 0) {
        rest = s + 8;
        l->tls = true;
    } else {
        return fail(c, n, "listen URL '%s' must start with http:// or https://", s);
    }
    if (parse_hostport(rest, host, &l->port))
        return fail(c, n,
                    "listen URL '%s' must be scheme://ADDRESS:PORT with an IP address "
                    "(or localhost) and a port from 0 to 65535, and no path",
                    s);
    l->line = n ? line_of(n) : 0;
    if (!(l->host = conf_strdup(c, host)) || !(l->url = conf_strdup(c, s))) return -1;
    return 0;
}

/* Replaces the listeners with n empty ones (the count covers them: manifest_free frees). */
static int listeners_new(struct ctx *c, size_t n)
{
    struct wh_config *cfg = c->cfg;

    for (size_t i = 0; i < cfg->n_listeners; i++) {
        free(cfg->listeners[i].host);
        free(cfg->listeners[i].url);
    }
    free(cfg->listeners);
    cfg->n_listeners = 0;
    if (!(cfg->listeners = conf_alloc(c, n, sizeof *cfg->listeners))) return -1;
    cfg->n_listeners = n;
    return 0;
}

static int parse_listen(struct ctx *c, yaml_node_t *v, const char *what)
{
    size_t n;

    if (v->type != YAML_SEQUENCE_NODE) return fail(c, v, "%s must be a list of URLs", what);
    n = seq_len(v);
    if (n == 0) return fail(c, v, "%s must name at least one URL", what);
    if (listeners_new(c, n)) return -1;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = seq_item(c, v, i);
        const char *s = scalar(item);

        if (!s) return fail(c, item, "%s entries must be URLs", what);
        if (listen_url(c, item, s, &c->cfg->listeners[i])) return -1;
    }
    return 0;
}

static int url_path(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    const char *p = plain_text(c, k, v, what);

    if (!p) return -1;
    if (p[0] != '/') goto bad;
    for (; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#' || ch == '%' || ch == '\\') goto bad;
    }
    return 0;
bad:
    return fail(c, v, "%s must start with '/' and contain no spaces, '?', '#', '%%' or '\\'", what);
}

/* A list of CIDRs (or bare addresses). */
static int get_cidrs(struct ctx *c, yaml_node_t *v, const char *what, struct cidr **out,
                     size_t *n_out)
{
    size_t n;

    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "%s must be a list of CIDRs, such as [203.0.113.0/24]", what);
    n = seq_len(v);
    free(*out);
    *n_out = 0;
    if (!(*out = conf_alloc(c, n, sizeof **out))) return -1;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *e = seq_item(c, v, i);
        const char *text = scalar(e);
        if (!text || address_cidr_parse(text, &(*out)[i]) != 0)
            return fail(c, e, "%s: '%s' is not a CIDR (ADDRESS/PREFIX) or an IP address", what,
                        text ? text : "");
        *n_out = i + 1;
    }
    return 0;
}

static int proxy_cidrs(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    (void)k;
    return get_cidrs(c, v, what, &c->cfg->trusted_proxies, &c->cfg->n_trusted_proxies);
}

static int client_cidrs(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    (void)k;
    if (get_cidrs(c, v, what, &c->cfg->allow_from, &c->cfg->n_allow_from)) return -1;
    if (!c->cfg->n_allow_from)
        return fail(c, v,
                    "%s is empty: no client could POST (leave it out to let every "
                    "client in)",
                    what);
    return 0;
}

static int host_port(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    const char *s = plain_text(c, k, v, what);
    char host[64];
    int port;

    if (!s) return -1;
    if (parse_hostport(s, host, &port))
        return fail(c, v, "%s must be ADDRESS:PORT, not '%s'", what, s);
    return 0;
}

/* --- headers, lua, http, exec -------------------------------------------------------- */

static int header_name(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    const char *s = plain_text(c, k, v, what);

    if (!s) return -1;
    if (strlen(s) > 128) goto bad;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p)) goto bad;
    return 0;
bad:
    return fail(c, v, "%s must be an HTTP header name, not '%s'", what, s);
}

/* a ';'-separated list of templates, each resolved against the manifest's folder */
static int lua_templates(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    char *raw = NULL, *save = NULL, *out, **dst = field(c, k);
    size_t cap;

    if (get_str(c, v, what, &raw)) return -1;
    cap = strlen(raw) * 2 + strlen(c->cfg->dir) * (strlen(raw) + 1) + 1;
    if (!(out = conf_alloc(c, cap, 1))) {
        free(raw);
        return -1;
    }
    for (char *t = strtok_r(raw, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
        char *r = NULL;
        if (!strchr(t, '?'))
            fail(c, v, "%s entry '%s' must contain '?'", what, t);
        else
            r = resolve(c, t);
        if (!r) {
            free(out);
            free(raw);
            return -1;
        }
        if (*out) strcat(out, ";");
        strcat(out, r);
        free(r);
    }
    free(raw);
    free(*dst);
    *dst = out;
    return 0;
}

/* lua.shared: NAME -> size in MiB, one dictionary each */
static int shared_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v,
                      const void *arg)
{
    struct wh_config *cfg = c->cfg;
    struct wh_shared_dict *grown, *d;

    (void)arg;
    if (!valid_lua_name(key)) return fail(c, k, "lua.shared: '%s' is not a Lua identifier", key);
    grown = realloc(cfg->shared, (cfg->n_shared + 1) * sizeof *cfg->shared);
    if (!grown) return fail(c, NULL, "out of memory");
    cfg->shared = grown;
    d = &cfg->shared[cfg->n_shared];
    d->name = NULL;
    d->line = line_of(k);
    if (get_int32(c, v, "lua.shared size (MiB)", 1, 4096, &d->size_mb)) return -1;
    if (!(d->name = conf_strdup(c, key))) return -1;
    cfg->n_shared++;
    return 0;
}

static int shared_dicts(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    (void)k;
    return each_pair(c, v, what, "dictionary names", shared_key, NULL);
}

static int http_allow_list(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    struct wh_config *cfg = c->cfg;
    size_t n;

    (void)k;
    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "%s must be a list of hosts and CIDRs", what);
    n = seq_len(v);
    cfg->has_http_allow = true;
    if (!(cfg->http_allow = conf_alloc(c, n, sizeof *cfg->http_allow))) return -1;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *e = seq_item(c, v, i);
        const char *text = scalar(e);
        if (!text || http_policy_allow_parse(text, &cfg->http_allow[i]) != 0)
            return fail(c, e, "%s: '%s' is neither a host (or *.domain) nor a CIDR", what,
                        text ? text : "");
        cfg->n_http_allow = i + 1;
    }
    return 0;
}

static int exec_commands(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    struct wh_config *cfg = c->cfg;
    char label[96];
    size_t n;

    (void)k;
    if (v->type != YAML_SEQUENCE_NODE) return fail(c, v, "%s must be a list of commands", what);
    n = seq_len(v);
    if (!(cfg->exec_allow = conf_alloc(c, n, sizeof *cfg->exec_allow))) return -1;
    snprintf(label, sizeof label, "%s: command", what);
    for (size_t i = 0; i < n; i++) {
        cfg->n_exec_allow = i + 1;
        if (get_command(c, seq_item(c, v, i), label, &cfg->exec_allow[i])) return -1;
    }
    return 0;
}

/* --- delivery ------------------------------------------------------------------------ */

static int spool_location(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    char *raw = NULL, **dst = field(c, k);

    if (get_str(c, v, what, &raw)) return -1;
    if (!strncmp(raw, "postgresql://", 13) || !strncmp(raw, "postgres://", 11)) {
        free(*dst); /* a libpq URI, kept as written */
        *dst = raw;
        return 0;
    }
    free(raw);
    return get_path(c, v, what, dst);
}

static int schema_name(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    const char *name = scalar(v);
    size_t n = name ? strlen(name) : 0;
    int ok = n > 0 && n <= 48 && (islower((unsigned char)name[0]) || name[0] == '_');

    for (size_t i = 0; ok && i < n; i++)
        ok = islower((unsigned char)name[i]) || isdigit((unsigned char)name[i]) || name[i] == '_';
    if (!ok)
        return fail(c, v, "%s must be 1 to 48 of a-z, 0-9 and _, not starting with a digit", what);
    return key_plain(c, k, v, what);
}

/* a dot path of keys: "data.message_id"; no empty segment */
static int dot_path(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    const char *s = scalar(v);

    if (s && (*s == '.' || strstr(s, "..") || (*s && s[strlen(s) - 1] == '.')))
        return fail(c, v, "%s must be a dot path such as data.message_id, not '%s'", what, s);
    return key_plain(c, k, v, what);
}

static int dedupe_with_key(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    if (key_plain(c, k, v, what)) return -1;
    if (!c->cfg->dedupe_key) return fail(c, v, "%s needs a key", what);
    return 0;
}

/* --- the top level: secrets.c and hooks.c -------------------------------------------- */

static int top_secrets(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    (void)k, (void)what;
    return secrets_parse(c, v);
}

static int top_hooks(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    (void)k, (void)what;
    return hooks_parse(c, v);
}

/* --- the table ----------------------------------------------------------------------- */

static const struct key_name on_error_names[] = {
    {"retry", WH_ON_ERROR_RETRY}, {"ack", WH_ON_ERROR_ACK}, {NULL, 0}};
static const struct key_name mode_names[] = {
    {"sync", WH_DELIVERY_SYNC}, {"durable", WH_DELIVERY_DURABLE}, {NULL, 0}};
static const struct key_name tls_versions[] = {{"1.2", 12}, {"1.3", 13}, {NULL, 0}};

/* One entry a key, by type: the field in struct wh_config, then min, max and the default.
 * What a key needs besides (.parse, L(line field)) follows its default. */
/* clang-format off */
#define F(f) .offset = offsetof(struct wh_config, f), .size = sizeof(((struct wh_config *)0)->f)
#define L(f) .line_at = offsetof(struct wh_config, f)
#define KEY(sec, key, t) .section = sec, .name = key, .type = KEY_##t
#define INT(sec, key, f, lo, hi, d, ...) \
    {KEY(sec, key, INT), F(f), .min = lo, .max = hi, .def = d, __VA_ARGS__}
#define BOOL(sec, key, f, d, ...) {KEY(sec, key, BOOL), F(f), .def = d, __VA_ARGS__}
#define STR(sec, key, f, d, ...) {KEY(sec, key, STR), F(f), .def_str = d, __VA_ARGS__}
#define PATH(sec, key, f, d, ...) {KEY(sec, key, PATH), F(f), .def_str = d, __VA_ARGS__}
#define ENUM(sec, key, f, d, list, ...) \
    {KEY(sec, key, ENUM), F(f), .def = d, .names = list, __VA_ARGS__}
#define LISTEN(sec, key, d) {KEY(sec, key, LISTEN), .def_str = d}
#define SECTION(sec, key, ...) {KEY(sec, key, SECTION), __VA_ARGS__}
#define OTHER(sec, key, fn) {KEY(sec, key, OTHER), .parse = fn}

/* Each section's keys in the order its "expected ..." list names them. */
static const struct key keys[] = {
    SECTION("", "server"),
    OTHER("", "secrets", top_secrets),
    SECTION("", "headers"),
    SECTION("", "lua"),
    SECTION("", "http"),
    SECTION("", "exec"),
    SECTION("", "delivery"),
    SECTION("", "console"),
    OTHER("", "hooks", top_hooks),

    LISTEN("server", "listen", "http://127.0.0.1:8080"),
    SECTION("server", "tls"),
    STR("server", "path", path, "/webhook", .parse = url_path),
    /* docs/security.md, "Hostile clients": the cap below must leave workers free */
    INT("server", "threads",                    threads,                    1,  1024,      128),
    INT("server", "max_body_bytes",             max_body_bytes,             1,  1LL << 30, 1048576),
    INT("server", "request_timeout_ms",         request_timeout_ms,         10, 3600000,   5000),
    INT("server", "header_timeout_ms",          header_timeout_ms,          10, 3600000,   2000),
    INT("server", "shutdown_timeout_ms",        shutdown_timeout_ms,        0,  3600000,   10000),
    INT("server", "max_connections_per_client", max_connections_per_client, 0,  1000000,   64),
    OTHER("server", "trusted_proxies", proxy_cidrs),
    OTHER("server", "allow_from", client_cidrs),
    /* -1, unset: from the running server's threads (http/pipeline.c) */
    INT("server", "max_inflight",               max_inflight,               0,  1000000,   -1),
    STR("server", "admin", admin, NULL, L(admin_line), .parse = host_port),

    PATH("server.tls", "certificate", tls_certificate, NULL, L(tls_certificate_line)),
    ENUM("server.tls", "min_version", tls_min_version, 12, tls_versions),
    /* checked against OpenSSL where the TLS material is loaded (server_preflight) */
    STR("server.tls", "ciphers", tls_ciphers, WH_TLS12_CIPHERS, L(tls_ciphers_line)),

    STR("headers", "event",     event_header,     "X-Wappcloud-Event",     .parse = header_name),
    STR("headers", "signature", signature_header, "X-Wappcloud-Signature", .parse = header_name),

    INT("lua", "timeout_ms",      lua_timeout_ms,      1, 3600000, 1000),
    INT("lua", "memory_limit_mb", lua_memory_limit_mb, 1, 65536,   64),
    BOOL("lua", "sandbox", lua_sandbox, true),
    PATH("lua", "path", lua_path, "scripts/?.lua", .parse = lua_templates),
    OTHER("lua", "shared", shared_dicts),

    OTHER("http", "allow", http_allow_list),
    BOOL("http", "allow_private", http_allow_private, false),
    INT("http", "timeout_ms",         http_timeout_ms,         1, 3600000,   5000),
    INT("http", "max_response_bytes", http_max_response_bytes, 1, 1LL << 30, 1 << 20),

    OTHER("exec", "allow", exec_commands),
    INT("exec", "max_concurrent",   exec_max_concurrent,   1, 1024,       8),
    INT("exec", "max_output_bytes", exec_max_output_bytes, 1, 64LL << 20, 65536),

    ENUM("delivery", "on_handler_error", on_handler_error, WH_ON_ERROR_RETRY, on_error_names),
    ENUM("delivery", "mode", delivery_mode, WH_DELIVERY_SYNC, mode_names, L(delivery_mode_line)),
    /* absent: its line is delivery.mode's (keys_finish) */
    PATH("delivery", "spool", spool, "var/spool.db", L(spool_line), .parse = spool_location),
    INT("delivery", "max_spool_mb",     max_spool_mb,     1, 1LL << 30,           1024),
    INT("delivery", "keep_delivered_s", keep_delivered_s, 0, 100 * 365 * 86400LL, 7 * 86400),
    INT("delivery", "workers",          delivery_workers, 1, 256,                 4),
    INT("delivery", "lease_s",          lease_s,          2, 86400,               30),
    STR("delivery", "pg_schema", pg_schema, "wapphook", .parse = schema_name),
    SECTION("delivery", "retry"),
    SECTION("delivery", "dedupe", .parse = dedupe_with_key),

    INT("delivery.retry", "max_attempts", retry_max_attempts, 1, 1000, 8),
    INT("delivery.retry", "initial_backoff_ms", retry_initial_backoff_ms, 1, 86400000LL, 500),
    INT("delivery.retry", "max_backoff_ms", retry_max_backoff_ms, 1, 7 * 86400000LL, 300000),

    STR("delivery.dedupe", "key", dedupe_key, NULL, .parse = dot_path),
    INT("delivery.dedupe", "window_s", dedupe_window_s, 1, 365 * 86400LL, 86400),

    BOOL("console", "enabled", console_enabled, true),
    STR("console", "token_env", console_token_env, "WAPPHOOK_ADMIN_TOKEN", L(console_token_line)),
    PATH("console", "token_file", console_token_file, NULL, L(console_token_line)),
    INT("console", "history",            console_history,    0, 1000000,  1000),
    INT("console", "history_body_bytes", history_body_bytes, 0, 16 << 20, 65536),
};
/* clang-format on */

#define N_KEYS (sizeof keys / sizeof keys[0])

/* --- the walk ------------------------------------------------------------------------ */

/* "SECTION.NAME", or NAME at the top level */
static void key_path(char *out, size_t len, const char *section, const char *name)
{
    snprintf(out, len, "%s%s%s", section, *section ? "." : "", name);
}

static int section_key(struct ctx *c, const char *key, yaml_node_t *kn, yaml_node_t *v,
                       const void *arg)
{
    const char *section = arg;
    char what[96];

    (void)kn;
    for (const struct key *k = keys; k < keys + N_KEYS; k++) {
        if (strcmp(k->section, section) != 0 || strcmp(k->name, key) != 0) continue;
        key_path(what, sizeof what, section, key);
        if (k->line_at) *(int *)((char *)c->cfg + k->line_at) = line_of(v);
        return k->parse ? k->parse(c, k, v, what) : key_plain(c, k, v, what);
    }
    return 1;
}

/* A section's mapping: "server", "delivery.retry"..., or "" for the manifest itself. */
static int parse_section(struct ctx *c, yaml_node_t *map, const char *section)
{
    char known[512] = "";
    size_t used = 0;

    for (const struct key *k = keys; k < keys + N_KEYS; k++) {
        if (strcmp(k->section, section) != 0 || used >= sizeof known) continue;
        used +=
            (size_t)snprintf(known + used, sizeof known - used, "%s%s", used ? ", " : "", k->name);
    }
    return each_pair(c, map, *section ? section : "the manifest", known, section_key, section);
}

/* KEY_ENUM: one of the names; the refusal lists them ("a, b or c"), a name YAML would read
 * as a number in quotes, as the manifest must write it ("1.2"). */
static int get_enum(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    const char *s = scalar(v);
    char list[256] = "";
    size_t used = 0;

    for (const struct key_name *e = k->names; e->name; e++) {
        if (s && strcmp(s, e->name) == 0) {
            store_int(c, k, e->value);
            return 0;
        }
    }
    for (const struct key_name *e = k->names; e->name && used < sizeof list; e++) {
        const char *q = isdigit((unsigned char)e->name[0]) ? "\"" : "";
        const char *sep = ", ";

        if (e == k->names)
            sep = "";
        else if (!e[1].name)
            sep = " or ";
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s%s%s", sep, q, e->name, q);
    }
    return fail(c, v, "%s must be %s", what, list);
}

/* The value of k as its type reads it. */
static int key_plain(struct ctx *c, const struct key *k, yaml_node_t *v, const char *what)
{
    long long n;

    switch (k->type) {
    case KEY_INT:
        if (get_int(c, v, what, k->min, k->max, &n)) return -1;
        store_int(c, k, n);
        return 0;
    case KEY_BOOL:
        return get_bool(c, v, what, field(c, k));
    case KEY_STR:
        return get_str(c, v, what, field(c, k));
    case KEY_PATH:
        return get_path(c, v, what, field(c, k));
    case KEY_ENUM:
        return get_enum(c, k, v, what);
    case KEY_LISTEN:
        return parse_listen(c, v, what);
    case KEY_SECTION:
        return parse_section(c, v, what);
    case KEY_OTHER:
        break;
    }
    return 1;
}

/* --- what manifest.c calls ----------------------------------------------------------- */

int keys_defaults(struct ctx *c)
{
    for (const struct key *k = keys; k < keys + N_KEYS; k++) {
        char **str = field(c, k);

        switch (k->type) {
        case KEY_INT:
        case KEY_ENUM:
            store_int(c, k, k->def);
            break;
        case KEY_BOOL:
            *(bool *)field(c, k) = k->def != 0;
            break;
        case KEY_STR:
            if (k->def_str && !(*str = conf_strdup(c, k->def_str))) return -1;
            break;
        case KEY_PATH:
            if (k->def_str && !(*str = resolve(c, k->def_str))) return -1;
            break;
        case KEY_LISTEN:
            if (listeners_new(c, 1) || listen_url(c, NULL, k->def_str, &c->cfg->listeners[0]))
                return -1;
            break;
        case KEY_SECTION:
        case KEY_OTHER:
            break;
        }
    }
    return 0;
}

int keys_parse_root(struct ctx *c, yaml_node_t *root)
{
    return parse_section(c, root, "");
}

/* The console's token, from its file (one line; a last newline is not part of it) or its
 * environment variable. 0 (none is fine here), or -1. */
static int console_token(struct ctx *c)
{
    struct wh_config *cfg = c->cfg;
    char buf[4097];
    size_t n;
    FILE *f;

    if (!cfg->console_token_file) {
        const char *v = getenv(cfg->console_token_env);
        if (v && *v && !(cfg->console_token = strdup(v))) return fail(c, NULL, "out of memory");
        return 0;
    }
    if (!(f = fopen(cfg->console_token_file, "rb"))) {
        snprintf(c->err, c->err_len, "%s:%d: console.token_file %s: %s", c->file,
                 cfg->console_token_line, cfg->console_token_file, strerror(errno));
        return -1;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (!n || strlen(buf) != n || n == sizeof buf - 1) {
        snprintf(c->err, c->err_len, "%s:%d: console.token_file %s: %s", c->file,
                 cfg->console_token_line, cfg->console_token_file,
                 n == sizeof buf - 1 ? "longer than 4096 bytes" : "empty, or holds a NUL byte");
        explicit_bzero(buf, sizeof buf);
        return -1;
    }
    cfg->console_token = strdup(buf);
    explicit_bzero(buf, sizeof buf);
    return cfg->console_token ? 0 : fail(c, NULL, "out of memory");
}

int keys_finish(struct ctx *c)
{
    struct wh_config *cfg = c->cfg;

    if (!cfg->spool_line) cfg->spool_line = cfg->delivery_mode_line;
    if (c->no_secrets || !cfg->admin || !cfg->console_enabled) return 0;
    if (console_token(c)) return -1;
    if (!cfg->console_token && !address_is_loopback_host(cfg->admin)) {
        snprintf(c->err, c->err_len,
                 "%s:%d: server.admin %s is not a loopback address and the console has no "
                 "token: set %s (console.token_env) or console.token_file, or console.enabled: "
                 "false",
                 c->file, cfg->admin_line, cfg->admin, cfg->console_token_env);
        return -1;
    }
    return 0;
}
