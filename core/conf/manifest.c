#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#define SECRET_FILE_MAX (64 * 1024)
#define CONFIG_MAX_DEPTH 64
#define CONFIG_MAX_NODES 100000

struct ctx {
    const char *file;
    yaml_document_t *doc;
    struct wh_config *cfg;
    char *err;
    size_t err_len;
    size_t nodes_left; /* budget for plugin configs: aliases can make a small file huge */
    bool no_secrets;   /* check secret entries, do not read their values */
};

static int line_of(const yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

__attribute__((format(printf, 3, 4))) static int fail(struct ctx *c, const yaml_node_t *n,
                                                      const char *fmt, ...)
{
    va_list ap;
    int off;

    if (n)
        off = snprintf(c->err, c->err_len, "%s:%d: ", c->file, line_of(n));
    else
        off = snprintf(c->err, c->err_len, "%s: ", c->file);
    if (off < 0 || (size_t)off >= c->err_len)
        return -1;
    va_start(ap, fmt);
    vsnprintf(c->err + off, c->err_len - (size_t)off, fmt, ap);
    va_end(ap);
    return -1;
}

static yaml_node_t *node(struct ctx *c, int idx)
{
    return yaml_document_get_node(c->doc, idx);
}

static const char *scalar(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);

    if (!d) {
        fprintf(stderr, "wapphook: out of memory\n");
        abort();
    }
    return d;
}

/* --- typed values ------------------------------------------------------------------- */

static int get_str(struct ctx *c, const yaml_node_t *n, const char *what, char **out)
{
    const char *s = scalar(n);

    if (!s)
        return fail(c, n, "%s must be a string", what);
    if (!*s)
        return fail(c, n, "%s must not be empty", what);
    free(*out);
    *out = xstrdup(s);
    return 0;
}

static int get_int(struct ctx *c, const yaml_node_t *n, const char *what, long long min,
                   long long max, long long *out)
{
    const char *s = scalar(n);
    char *end;
    long long v;

    if (!s || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !*s)
        return fail(c, n, "%s must be an integer", what);
    errno = 0;
    v = strtoll(s, &end, 10);
    if (*end || errno)
        return fail(c, n, "%s must be an integer, not '%s'", what, s);
    if (v < min || v > max)
        return fail(c, n, "%s must be between %lld and %lld, not %lld", what, min, max, v);
    *out = v;
    return 0;
}

static int get_int32(struct ctx *c, const yaml_node_t *n, const char *what, int min, int max,
                     int *out)
{
    long long v;

    if (get_int(c, n, what, min, max, &v))
        return -1;
    *out = (int)v;
    return 0;
}

static int get_bool(struct ctx *c, const yaml_node_t *n, const char *what, bool *out)
{
    const char *s = scalar(n);

    if (s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        if (strcmp(s, "true") == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, "false") == 0) {
            *out = false;
            return 0;
        }
    }
    return fail(c, n, "%s must be true or false", what);
}

static char *resolve(struct ctx *c, const char *p)
{
    char *out;

    if (p[0] == '/')
        return xstrdup(p);
    out = malloc(strlen(c->cfg->dir) + strlen(p) + 2);
    if (!out)
        abort();
    sprintf(out, "%s/%s", c->cfg->dir, p);
    return out;
}

static int get_path(struct ctx *c, const yaml_node_t *n, const char *what, char **out)
{
    char *raw = NULL;

    if (get_str(c, n, what, &raw))
        return -1;
    free(*out);
    *out = resolve(c, raw);
    free(raw);
    return 0;
}

/* --- mappings ----------------------------------------------------------------------- */

typedef int (*key_fn)(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v);

/* Walks a mapping: refuses non-string and duplicate keys, hands each pair to fn, which
 * returns 1 for a key it does not know. `known` lists the keys for the error message. */
static int each_pair(struct ctx *c, yaml_node_t *map, const char *what, const char *known,
                     key_fn fn)
{
    if (map->type != YAML_MAPPING_NODE)
        return fail(c, map, "%s must be a mapping", what);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node(c, p->key);
        yaml_node_t *v = node(c, p->value);
        const char *key = scalar(k);
        int r;

        if (!key)
            return fail(c, k, "%s: keys must be strings", what);
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
            const char *prev = scalar(node(c, q->key));
            if (prev && strcmp(prev, key) == 0)
                return fail(c, k, "%s: duplicate key '%s'", what, key);
        }
        r = fn(c, key, k, v);
        if (r < 0)
            return -1;
        if (r > 0)
            return fail(c, k, "unknown key '%s' in %s (expected %s)", key, what, known);
    }
    return 0;
}

/* --- server ------------------------------------------------------------------------- */

static int parse_hostport(const char *s, char **host, int *port)
{
    const char *colon;
    char buf[64];
    char *end;
    long p;
    unsigned char addr[16];
    size_t hl;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        hl = (size_t)(close - s - 1);
        if (hl >= sizeof buf)
            return -1;
        memcpy(buf, s + 1, hl);
        buf[hl] = '\0';
        colon = close + 1;
        if (inet_pton(AF_INET6, buf, addr) != 1)
            return -1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - s);
        if (hl >= sizeof buf)
            return -1;
        memcpy(buf, s, hl);
        buf[hl] = '\0';
        if (strcmp(buf, "localhost") == 0)
            strcpy(buf, "127.0.0.1");
        if (inet_pton(AF_INET, buf, addr) != 1)
            return -1;
    }
    if (!isdigit((unsigned char)colon[1]))
        return -1;
    errno = 0;
    p = strtol(colon + 1, &end, 10);
    if (*end || errno || p < 0 || p > 65535)
        return -1;
    *host = xstrdup(buf);
    *port = (int)p;
    return 0;
}

static int parse_listen(struct ctx *c, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;
    size_t n;

    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "server.listen must be a list of URLs");
    n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n == 0)
        return fail(c, v, "server.listen must name at least one URL");
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        free(cfg->listeners[i].host);
        free(cfg->listeners[i].url);
    }
    free(cfg->listeners);
    cfg->listeners = calloc(n, sizeof *cfg->listeners);
    cfg->n_listeners = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node(c, v->data.sequence.items.start[i]);
        struct wh_listener *l = &cfg->listeners[i];
        const char *s = scalar(item);
        const char *rest;

        if (!s)
            return fail(c, item, "server.listen entries must be URLs");
        if (strncmp(s, "http://", 7) == 0) {
            rest = s + 7;
        } else if (strncmp(s, "https://", 8) == 0) {
            rest = s + 8;
            l->tls = true;
        } else {
            return fail(c, item, "listen URL '%s' must start with http:// or https://", s);
        }
        if (parse_hostport(rest, &l->host, &l->port))
            return fail(c, item,
                        "listen URL '%s' must be scheme://ADDRESS:PORT with an IP address "
                        "(or localhost) and a port from 0 to 65535, and no path",
                        s);
        l->url = xstrdup(s);
        l->line = line_of(item);
        cfg->n_listeners = i + 1;
    }
    return 0;
}

static int tls_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    (void)k;
    if (strcmp(key, "certificate") == 0) {
        c->cfg->tls_certificate_line = line_of(v);
        return get_path(c, v, "server.tls.certificate", &c->cfg->tls_certificate);
    }
    if (strcmp(key, "ciphers") == 0) {
        /* checked against OpenSSL where the TLS material is loaded (server_preflight) */
        c->cfg->tls_ciphers_line = line_of(v);
        return get_str(c, v, "server.tls.ciphers", &c->cfg->tls_ciphers);
    }
    if (strcmp(key, "min_version") == 0) {
        const char *s = scalar(v);
        if (s && strcmp(s, "1.2") == 0)
            c->cfg->tls_min_version = 12;
        else if (s && strcmp(s, "1.3") == 0)
            c->cfg->tls_min_version = 13;
        else
            return fail(c, v, "server.tls.min_version must be \"1.2\" or \"1.3\"");
        return 0;
    }
    return 1;
}

static int valid_url_path(const char *p)
{
    if (p[0] != '/')
        return 0;
    for (; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#' || ch == '%' || ch == '\\')
            return 0;
    }
    return 1;
}

/* A list of CIDRs (or bare addresses). */
static int get_cidrs(struct ctx *c, yaml_node_t *v, const char *what, struct cidr **out,
                     size_t *n_out)
{
    size_t n;

    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "%s must be a list of CIDRs, such as [203.0.113.0/24]", what);
    n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    free(*out);
    *out = calloc(n ? n : 1, sizeof **out);
    *n_out = 0;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *e = node(c, v->data.sequence.items.start[i]);
        const char *text = scalar(e);
        if (!text || address_cidr_parse(text, &(*out)[i]) != 0)
            return fail(c, e, "%s: '%s' is not a CIDR (ADDRESS/PREFIX) or an IP address", what,
                        text ? text : "");
        *n_out = i + 1;
    }
    return 0;
}

static int server_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;

    (void)k;
    if (strcmp(key, "listen") == 0)
        return parse_listen(c, v);
    if (strcmp(key, "tls") == 0)
        return each_pair(c, v, "server.tls", "certificate, min_version, ciphers", tls_key);
    if (strcmp(key, "path") == 0) {
        if (get_str(c, v, "server.path", &cfg->path))
            return -1;
        if (!valid_url_path(cfg->path))
            return fail(c, v, "server.path must start with '/' and contain no spaces, "
                              "'?', '#', '%%' or '\\'");
        return 0;
    }
    if (strcmp(key, "threads") == 0)
        return get_int32(c, v, "server.threads", 1, 1024, &cfg->threads);
    if (strcmp(key, "max_body_bytes") == 0)
        return get_int(c, v, "server.max_body_bytes", 1, 1LL << 30, &cfg->max_body_bytes);
    if (strcmp(key, "request_timeout_ms") == 0)
        return get_int32(c, v, "server.request_timeout_ms", 10, 3600000,
                         &cfg->request_timeout_ms);
    if (strcmp(key, "shutdown_timeout_ms") == 0)
        return get_int32(c, v, "server.shutdown_timeout_ms", 0, 3600000,
                         &cfg->shutdown_timeout_ms);
    if (strcmp(key, "header_timeout_ms") == 0)
        return get_int32(c, v, "server.header_timeout_ms", 10, 3600000, &cfg->header_timeout_ms);
    if (strcmp(key, "max_connections_per_client") == 0)
        return get_int32(c, v, "server.max_connections_per_client", 0, 1000000,
                         &cfg->max_connections_per_client);
    if (strcmp(key, "max_inflight") == 0)
        return get_int32(c, v, "server.max_inflight", 0, 1000000, &cfg->max_inflight);
    if (strcmp(key, "trusted_proxies") == 0)
        return get_cidrs(c, v, "server.trusted_proxies", &cfg->trusted_proxies,
                         &cfg->n_trusted_proxies);
    if (strcmp(key, "allow_from") == 0) {
        if (get_cidrs(c, v, "server.allow_from", &cfg->allow_from, &cfg->n_allow_from))
            return -1;
        if (!cfg->n_allow_from)
            return fail(c, v, "server.allow_from is empty: no client could POST (leave it out "
                              "to let every client in)");
        return 0;
    }
    if (strcmp(key, "admin") == 0) {
        char *host = NULL;
        int port;
        if (get_str(c, v, "server.admin", &cfg->admin))
            return -1;
        if (parse_hostport(cfg->admin, &host, &port))
            return fail(c, v, "server.admin must be ADDRESS:PORT, not '%s'", cfg->admin);
        free(host);
        cfg->admin_line = line_of(v);
        return 0;
    }
    return 1;
}

/* --- secrets ------------------------------------------------------------------------ */

static int read_secret_file(struct ctx *c, yaml_node_t *v, const char *path,
                            struct wh_secret_src *s)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    size_t n;

    if (!f)
        return fail(c, v, "secret file %s: %s", path, strerror(errno));
    buf = malloc(SECRET_FILE_MAX + 1);
    if (!buf)
        abort();
    n = fread(buf, 1, SECRET_FILE_MAX + 1, f);
    fclose(f);
    if (n > SECRET_FILE_MAX) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        return fail(c, v, "secret file %s is larger than %d bytes", path, SECRET_FILE_MAX);
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n == 0) {
        free(buf);
        return fail(c, v, "secret file %s is empty", path);
    }
    s->key = buf;
    s->len = n;
    return 0;
}

static int parse_secret(struct ctx *c, yaml_node_t *item, struct wh_secret_src *s)
{
    yaml_node_pair_t *p;
    yaml_node_t *k, *v;
    const char *key, *val;
    char *path;
    int r;

    s->line = line_of(item);
    if (item->type != YAML_MAPPING_NODE ||
        item->data.mapping.pairs.top - item->data.mapping.pairs.start != 1)
        return fail(c, item, "each secret must be a mapping with exactly one of env, file "
                             "or value");
    p = item->data.mapping.pairs.start;
    k = node(c, p->key);
    v = node(c, p->value);
    key = scalar(k);
    val = scalar(v);
    if (!key || (strcmp(key, "env") && strcmp(key, "file") && strcmp(key, "value")))
        return fail(c, k, "unknown key '%s' in secret (expected env, file or value)",
                    key ? key : "?");
    if (!val || !*val)
        return fail(c, v, "secret %s must be a non-empty string", key);
    if (c->no_secrets) {
        s->source = xstrdup(key);
        return 0;
    }
    if (strcmp(key, "env") == 0) {
        const char *e = getenv(val);
        if (!e || !*e)
            return fail(c, v, "secret from environment variable %s: unset or empty", val);
        s->len = strlen(e);
        s->key = (unsigned char *)xstrdup(e);
        s->source = malloc(strlen(val) + 5);
        sprintf(s->source, "env %s", val);
        return 0;
    }
    if (strcmp(key, "file") == 0) {
        path = resolve(c, val);
        r = read_secret_file(c, v, path, s);
        if (r == 0) {
            s->source = malloc(strlen(path) + 6);
            sprintf(s->source, "file %s", path);
        }
        free(path);
        return r;
    }
    s->len = strlen(val);
    s->key = (unsigned char *)xstrdup(val);
    s->source = xstrdup("value");
    return 0;
}

static int parse_secrets(struct ctx *c, yaml_node_t *v)
{
    size_t n;

    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "secrets must be a list of {env|file|value: ...}");
    n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n == 0)
        return fail(c, v, "secrets must list at least one secret");
    c->cfg->secrets = calloc(n, sizeof *c->cfg->secrets);
    for (size_t i = 0; i < n; i++) {
        c->cfg->n_secrets = i + 1;
        if (parse_secret(c, node(c, v->data.sequence.items.start[i]), &c->cfg->secrets[i]))
            return -1;
    }
    return 0;
}

/* --- headers, lua, delivery --------------------------------------------------------- */

static int valid_header_name(const char *s)
{
    if (!*s || strlen(s) > 128)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return 0;
    return 1;
}

static int header_name(struct ctx *c, yaml_node_t *v, const char *what, char **out)
{
    if (get_str(c, v, what, out))
        return -1;
    if (!valid_header_name(*out))
        return fail(c, v, "%s must be an HTTP header name, not '%s'", what, *out);
    return 0;
}

static int headers_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    (void)k;
    if (strcmp(key, "event") == 0)
        return header_name(c, v, "headers.event", &c->cfg->event_header);
    if (strcmp(key, "signature") == 0)
        return header_name(c, v, "headers.signature", &c->cfg->signature_header);
    return 1;
}

static int valid_lua_name(const char *s);

/* A command wapphook may run: it must exist and be executable now. */
static int command_path(struct ctx *c, yaml_node_t *v, const char *what, char **out)
{
    if (get_path(c, v, what, out))
        return -1;
    if (access(*out, X_OK) != 0)
        return fail(c, v, "%s %s: %s", what, *out,
                    errno == EACCES ? "not executable" : strerror(errno));
    return 0;
}

static int http_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;

    (void)k;
    if (strcmp(key, "allow") == 0) {
        size_t n;
        if (v->type != YAML_SEQUENCE_NODE)
            return fail(c, v, "http.allow must be a list of hosts and CIDRs");
        n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        cfg->has_http_allow = true;
        cfg->http_allow = calloc(n ? n : 1, sizeof *cfg->http_allow);
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *e = node(c, v->data.sequence.items.start[i]);
            const char *text = scalar(e);
            if (!text || http_policy_allow_parse(text, &cfg->http_allow[i]) != 0)
                return fail(c, e, "http.allow: '%s' is neither a host (or *.domain) nor a CIDR",
                            text ? text : "");
            cfg->n_http_allow = i + 1;
        }
        return 0;
    }
    if (strcmp(key, "allow_private") == 0)
        return get_bool(c, v, "http.allow_private", &cfg->http_allow_private);
    if (strcmp(key, "timeout_ms") == 0)
        return get_int32(c, v, "http.timeout_ms", 1, 3600000, &cfg->http_timeout_ms);
    if (strcmp(key, "max_response_bytes") == 0)
        return get_int(c, v, "http.max_response_bytes", 1, 1LL << 30,
                       &cfg->http_max_response_bytes);
    return 1;
}

static int exec_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;

    (void)k;
    if (strcmp(key, "allow") == 0) {
        size_t n;
        if (v->type != YAML_SEQUENCE_NODE)
            return fail(c, v, "exec.allow must be a list of commands");
        n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        cfg->exec_allow = calloc(n ? n : 1, sizeof *cfg->exec_allow);
        for (size_t i = 0; i < n; i++) {
            if (command_path(c, node(c, v->data.sequence.items.start[i]), "exec.allow: command",
                             &cfg->exec_allow[i]))
                return -1;
            cfg->n_exec_allow = i + 1;
        }
        return 0;
    }
    if (strcmp(key, "max_concurrent") == 0)
        return get_int32(c, v, "exec.max_concurrent", 1, 1024, &cfg->exec_max_concurrent);
    if (strcmp(key, "max_output_bytes") == 0)
        return get_int(c, v, "exec.max_output_bytes", 1, 64LL << 20, &cfg->exec_max_output_bytes);
    return 1;
}

/* lua.shared: NAME -> size in MiB, one dictionary each */
static int shared_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;
    struct wh_shared_dict *d;

    if (!valid_lua_name(key))
        return fail(c, k, "lua.shared: '%s' is not a Lua identifier", key);
    cfg->shared = realloc(cfg->shared, (cfg->n_shared + 1) * sizeof *cfg->shared);
    if (!cfg->shared)
        abort();
    d = &cfg->shared[cfg->n_shared];
    d->name = NULL;
    d->line = line_of(k);
    if (get_int32(c, v, "lua.shared size (MiB)", 1, 4096, &d->size_mb))
        return -1;
    d->name = xstrdup(key);
    cfg->n_shared++;
    return 0;
}

static int lua_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;

    (void)k;
    if (strcmp(key, "timeout_ms") == 0)
        return get_int32(c, v, "lua.timeout_ms", 1, 3600000, &cfg->lua_timeout_ms);
    if (strcmp(key, "memory_limit_mb") == 0)
        return get_int32(c, v, "lua.memory_limit_mb", 1, 65536, &cfg->lua_memory_limit_mb);
    if (strcmp(key, "sandbox") == 0)
        return get_bool(c, v, "lua.sandbox", &cfg->lua_sandbox);
    if (strcmp(key, "shared") == 0)
        return each_pair(c, v, "lua.shared", "dictionary names", shared_key);
    if (strcmp(key, "path") == 0) {
        /* a ';'-separated list of templates, each resolved against the manifest's folder */
        char *raw = NULL, *save = NULL, *out;
        size_t cap;

        if (get_str(c, v, "lua.path", &raw))
            return -1;
        cap = strlen(raw) * 2 + strlen(cfg->dir) * (strlen(raw) + 1) + 1;
        out = calloc(1, cap);
        for (char *t = strtok_r(raw, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
            char *r;
            if (!strchr(t, '?')) {
                fail(c, v, "lua.path entry '%s' must contain '?'", t);
                free(out);
                free(raw);
                return -1;
            }
            r = resolve(c, t);
            if (*out)
                strcat(out, ";");
            strcat(out, r);
            free(r);
        }
        free(raw);
        free(cfg->lua_path);
        cfg->lua_path = out;
        return 0;
    }
    return 1;
}

static int retry_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;

    (void)k;
    if (strcmp(key, "max_attempts") == 0)
        return get_int32(c, v, "delivery.retry.max_attempts", 1, 1000,
                         &cfg->retry_max_attempts);
    if (strcmp(key, "initial_backoff_ms") == 0)
        return get_int(c, v, "delivery.retry.initial_backoff_ms", 1, 86400000LL,
                       &cfg->retry_initial_backoff_ms);
    if (strcmp(key, "max_backoff_ms") == 0)
        return get_int(c, v, "delivery.retry.max_backoff_ms", 1, 7 * 86400000LL,
                       &cfg->retry_max_backoff_ms);
    return 1;
}

static int dedupe_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    (void)k;
    if (strcmp(key, "key") == 0) {
        const char *s = scalar(v);
        /* a dot path of keys: "data.message_id"; no empty segment */
        if (s && (*s == '.' || strstr(s, "..") || (*s && s[strlen(s) - 1] == '.')))
            return fail(c, v, "delivery.dedupe.key must be a dot path such as data.message_id, "
                              "not '%s'", s);
        return get_str(c, v, "delivery.dedupe.key", &c->cfg->dedupe_key);
    }
    if (strcmp(key, "window_s") == 0)
        return get_int(c, v, "delivery.dedupe.window_s", 1, 365 * 86400LL,
                       &c->cfg->dedupe_window_s);
    return 1;
}

static int delivery_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;
    const char *s = scalar(v);

    (void)k;
    if (strcmp(key, "on_handler_error") == 0) {
        if (s && strcmp(s, "retry") == 0)
            cfg->on_handler_error = WH_ON_ERROR_RETRY;
        else if (s && strcmp(s, "ack") == 0)
            cfg->on_handler_error = WH_ON_ERROR_ACK;
        else
            return fail(c, v, "delivery.on_handler_error must be retry or ack");
        return 0;
    }
    if (strcmp(key, "mode") == 0) {
        cfg->delivery_mode_line = line_of(v);
        if (s && strcmp(s, "sync") == 0)
            cfg->delivery_mode = WH_DELIVERY_SYNC;
        else if (s && strcmp(s, "durable") == 0)
            cfg->delivery_mode = WH_DELIVERY_DURABLE;
        else
            return fail(c, v, "delivery.mode must be sync or durable");
        return 0;
    }
    if (strcmp(key, "spool") == 0) {
        char *raw = NULL;
        cfg->spool_line = line_of(v);
        if (get_str(c, v, "delivery.spool", &raw))
            return -1;
        if (!strncmp(raw, "postgresql://", 13) || !strncmp(raw, "postgres://", 11)) {
            free(cfg->spool); /* a libpq URI, kept as written */
            cfg->spool = raw;
            return 0;
        }
        free(raw);
        return get_path(c, v, "delivery.spool", &cfg->spool);
    }
    if (strcmp(key, "lease_s") == 0)
        return get_int32(c, v, "delivery.lease_s", 2, 86400, &cfg->lease_s);
    if (strcmp(key, "pg_schema") == 0) {
        const char *name = scalar(v);
        size_t n = name ? strlen(name) : 0;
        int ok = n > 0 && n <= 48 && (islower((unsigned char)name[0]) || name[0] == '_');
        for (size_t i = 0; ok && i < n; i++)
            ok = islower((unsigned char)name[i]) || isdigit((unsigned char)name[i]) ||
                 name[i] == '_';
        if (!ok)
            return fail(c, v, "delivery.pg_schema must be 1 to 48 of a-z, 0-9 and _, not "
                              "starting with a digit");
        free(cfg->pg_schema);
        cfg->pg_schema = xstrdup(name);
        return 0;
    }
    if (strcmp(key, "max_spool_mb") == 0)
        return get_int(c, v, "delivery.max_spool_mb", 1, 1LL << 30, &cfg->max_spool_mb);
    if (strcmp(key, "keep_delivered_s") == 0)
        return get_int(c, v, "delivery.keep_delivered_s", 0, 100 * 365 * 86400LL,
                       &cfg->keep_delivered_s);
    if (strcmp(key, "workers") == 0)
        return get_int32(c, v, "delivery.workers", 1, 256, &cfg->delivery_workers);
    if (strcmp(key, "retry") == 0)
        return each_pair(c, v, "delivery.retry",
                         "max_attempts, initial_backoff_ms, max_backoff_ms", retry_key);
    if (strcmp(key, "dedupe") == 0) {
        if (each_pair(c, v, "delivery.dedupe", "key, window_s", dedupe_key))
            return -1;
        if (!cfg->dedupe_key)
            return fail(c, v, "delivery.dedupe needs a key");
        return 0;
    }
    return 1;
}

/* --- hooks -------------------------------------------------------------------------- */

int event_type_valid(const char *type, size_t len)
{
    if (len == 0 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)type[i];
        if (!isalnum(ch) && ch != '_' && ch != '.' && ch != ':' && ch != '-')
            return 0;
    }
    return 1;
}

static json_t *to_json(struct ctx *c, yaml_node_t *n, int depth);

static json_t *scalar_to_json(yaml_node_t *n)
{
    const char *s = scalar(n);
    char *end;

    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return json_string(s);
    if (!*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0)
        return json_null();
    if (strcmp(s, "true") == 0)
        return json_true();
    if (strcmp(s, "false") == 0)
        return json_false();
    if (isdigit((unsigned char)s[0]) || ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1]))) {
        long long i;
        double d;

        errno = 0;
        i = strtoll(s, &end, 10);
        if (!*end && !errno)
            return json_integer(i);
        errno = 0;
        d = strtod(s, &end);
        if (!*end && !errno)
            return json_real(d);
    }
    return json_string(s);
}

static json_t *to_json(struct ctx *c, yaml_node_t *n, int depth)
{
    json_t *j;

    if (depth > CONFIG_MAX_DEPTH || c->nodes_left == 0) {
        fail(c, n, "plugin config is nested too deeply or too large");
        return NULL;
    }
    c->nodes_left--;
    switch (n->type) {
    case YAML_SCALAR_NODE:
        j = scalar_to_json(n);
        if (!j)
            fail(c, n, "plugin config: string is not valid UTF-8");
        return j;
    case YAML_SEQUENCE_NODE:
        j = json_array();
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
             it++) {
            json_t *e = to_json(c, node(c, *it), depth + 1);
            if (!e) {
                json_decref(j);
                return NULL;
            }
            json_array_append_new(j, e);
        }
        return j;
    case YAML_MAPPING_NODE:
        j = json_object();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            yaml_node_t *k = node(c, p->key);
            const char *key = scalar(k);
            json_t *e;

            if (!key) {
                fail(c, k, "plugin config keys must be strings");
                json_decref(j);
                return NULL;
            }
            if (json_object_get(j, key)) {
                fail(c, k, "plugin config: duplicate key '%s'", key);
                json_decref(j);
                return NULL;
            }
            e = to_json(c, node(c, p->value), depth + 1);
            if (!e || json_object_set_new(j, key, e)) {
                json_decref(j);
                return NULL;
            }
        }
        return j;
    default:
        fail(c, n, "plugin config: unsupported YAML node");
        return NULL;
    }
}

static int valid_lua_name(const char *s)
{
    if (!isalpha((unsigned char)*s) && *s != '_')
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return 0;
    return 1;
}

static int parse_handler(struct ctx *c, const char *type, yaml_node_t *item, struct wh_handler *h)
{
    yaml_node_t *file_node = NULL, *fn_node = NULL, *config_node = NULL, *exec_node = NULL;
    int kinds = 0;

    h->line = line_of(item);
    if (item->type != YAML_MAPPING_NODE)
        return fail(c, item, "hooks.%s: each handler must be a mapping with lua: or plugin:",
                    type);
    for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node(c, p->key);
        yaml_node_t *v = node(c, p->value);
        const char *key = scalar(k);

        if (!key)
            return fail(c, k, "hooks.%s: keys must be strings", type);
        for (yaml_node_pair_t *q = item->data.mapping.pairs.start; q < p; q++) {
            const char *prev = scalar(node(c, q->key));
            if (prev && strcmp(prev, key) == 0)
                return fail(c, k, "hooks.%s: duplicate key '%s'", type, key);
        }
        if (strcmp(key, "lua") == 0 || strcmp(key, "plugin") == 0) {
            h->kind = key[0] == 'l' ? WH_HANDLER_LUA : WH_HANDLER_PLUGIN;
            file_node = v;
            kinds++;
        } else if (strcmp(key, "exec") == 0) {
            h->kind = WH_HANDLER_EXEC;
            exec_node = v;
            kinds++;
        } else if (strcmp(key, "function") == 0) {
            fn_node = v;
        } else if (strcmp(key, "config") == 0) {
            config_node = v;
        } else if (strcmp(key, "timeout_ms") == 0) {
            if (get_int32(c, v, "timeout_ms", 1, 3600000, &h->timeout_ms))
                return -1;
        } else if (strcmp(key, "max_concurrent") == 0) {
            if (get_int32(c, v, "max_concurrent", 1, 1000000, &h->max_concurrent))
                return -1;
        } else {
            return fail(c, k, "unknown key '%s' in a handler of hooks.%s (expected lua, plugin, "
                              "exec, function, config, timeout_ms, max_concurrent)",
                        key, type);
        }
    }
    if (kinds != 1)
        return fail(c, item, "hooks.%s: a handler needs exactly one of lua:, plugin: or exec:",
                    type);
    if (exec_node) {
        size_t n;
        if (fn_node || config_node)
            return fail(c, fn_node ? fn_node : config_node,
                        "function: and config: do not apply to exec handlers");
        if (exec_node->type != YAML_SEQUENCE_NODE ||
            !(n = (size_t)(exec_node->data.sequence.items.top - exec_node->data.sequence.items.start)))
            return fail(c, exec_node, "exec: must be a list: [command, arguments...]");
        h->argv = calloc(n + 1, sizeof *h->argv);
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *a = node(c, exec_node->data.sequence.items.start[i]);
            if (i == 0 ? command_path(c, a, "exec: command", &h->argv[0])
                       : get_str(c, a, "exec: argument", &h->argv[i]))
                return -1;
        }
        h->path = xstrdup(h->argv[0]);
        h->display = xstrdup(scalar(node(c, exec_node->data.sequence.items.start[0])));
        return 0;
    }
    if (get_path(c, file_node, "handler file", &h->path))
        return -1;
    h->display = xstrdup(scalar(file_node));
    if (access(h->path, R_OK) != 0)
        return fail(c, file_node, "%s %s: %s", h->kind == WH_HANDLER_LUA ? "script" : "plugin",
                    h->path, strerror(errno));
    if (fn_node) {
        if (h->kind != WH_HANDLER_LUA)
            return fail(c, fn_node, "function: applies to lua handlers only");
        if (get_str(c, fn_node, "function", &h->function))
            return -1;
        if (!valid_lua_name(h->function))
            return fail(c, fn_node, "function '%s' is not a Lua identifier", h->function);
    } else if (h->kind == WH_HANDLER_LUA) {
        h->function = xstrdup("handle");
    }
    if (config_node && h->kind != WH_HANDLER_PLUGIN)
        return fail(c, config_node, "config: applies to plugin handlers only");
    if (h->kind == WH_HANDLER_PLUGIN) {
        json_t *j;

        if (config_node && config_node->type != YAML_MAPPING_NODE)
            return fail(c, config_node, "config must be a mapping");
        j = config_node ? to_json(c, config_node, 0) : json_object();
        if (!j)
            return -1;
        h->config = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        if (!h->config)
            abort();
    }
    return 0;
}

static int hooks_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    struct wh_config *cfg = c->cfg;
    struct wh_hook *hook;
    size_t n;

    if (strcmp(key, "*") != 0 && !event_type_valid(key, strlen(key)))
        return fail(c, k, "hooks: '%s' is not an event type ([A-Za-z0-9_.:-]{1,64}) or \"*\"",
                    key);
    if (v->type == YAML_SCALAR_NODE && !*scalar(v) &&
        v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
        n = 0; /* "type:" with nothing after it: like [] */
    else if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "hooks.%s must be a list of handlers", key);
    else
        n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    hook = &cfg->hooks[cfg->n_hooks++];
    hook->type = xstrdup(key);
    hook->line = line_of(k);
    hook->handlers = calloc(n ? n : 1, sizeof *hook->handlers);
    for (size_t i = 0; i < n; i++) {
        hook->n_handlers = i + 1;
        if (parse_handler(c, key, node(c, v->data.sequence.items.start[i]), &hook->handlers[i]))
            return -1;
    }
    return 0;
}

static int parse_hooks(struct ctx *c, yaml_node_t *v)
{
    if (v->type == YAML_SCALAR_NODE && !*scalar(v) &&
        v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
        return 0; /* "hooks:" with nothing after it: no hooks */
    if (v->type == YAML_MAPPING_NODE)
        c->cfg->hooks = calloc((size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start) + 1,
                               sizeof *c->cfg->hooks);
    return each_pair(c, v, "hooks", "event types or \"*\"", hooks_key);
}

/* --- top level ---------------------------------------------------------------------- */

static int top_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v)
{
    (void)k;
    if (strcmp(key, "server") == 0)
        return each_pair(c, v, "server",
                         "listen, tls, path, threads, max_body_bytes, request_timeout_ms, "
                         "header_timeout_ms, shutdown_timeout_ms, max_connections_per_client, "
                         "trusted_proxies, allow_from, max_inflight, admin",
                         server_key);
    if (strcmp(key, "secrets") == 0)
        return parse_secrets(c, v);
    if (strcmp(key, "headers") == 0)
        return each_pair(c, v, "headers", "event, signature", headers_key);
    if (strcmp(key, "exec") == 0)
        return each_pair(c, v, "exec", "allow, max_concurrent, max_output_bytes", exec_key);
    if (strcmp(key, "http") == 0)
        return each_pair(c, v, "http", "allow, allow_private, timeout_ms, max_response_bytes",
                         http_key);
    if (strcmp(key, "lua") == 0)
        return each_pair(c, v, "lua", "timeout_ms, memory_limit_mb, sandbox, path, shared",
                         lua_key);
    if (strcmp(key, "delivery") == 0)
        return each_pair(c, v, "delivery",
                         "on_handler_error, mode, spool, max_spool_mb, keep_delivered_s, workers, "
                         "lease_s, pg_schema, retry, dedupe",
                         delivery_key);
    if (strcmp(key, "hooks") == 0)
        return parse_hooks(c, v);
    return 1;
}

static void set_defaults(struct wh_config *cfg, const char *file)
{
    const char *slash = strrchr(file, '/');

    cfg->file = xstrdup(file);
    if (!slash) {
        cfg->dir = xstrdup(".");
    } else if (slash == file) {
        cfg->dir = xstrdup("/");
    } else {
        cfg->dir = strndup(file, (size_t)(slash - file));
    }
    cfg->tls_min_version = 12;
    cfg->tls_ciphers = xstrdup(WH_TLS12_CIPHERS);
    cfg->path = xstrdup("/webhook");
    cfg->threads = 128; /* docs/security.md, "Hostile clients": the cap below must leave workers free */
    cfg->max_body_bytes = 1048576;
    cfg->request_timeout_ms = 5000;
    cfg->header_timeout_ms = 2000;
    cfg->max_connections_per_client = 64;
    cfg->max_inflight = -1; /* from the running server's threads (http/pipeline.c) */
    cfg->shutdown_timeout_ms = 10000;
    cfg->event_header = xstrdup("X-Wappcloud-Event");
    cfg->signature_header = xstrdup("X-Wappcloud-Signature");
    cfg->lua_timeout_ms = 1000;
    cfg->exec_max_concurrent = 8;
    cfg->http_timeout_ms = 5000;
    cfg->http_max_response_bytes = 1 << 20;
    cfg->exec_max_output_bytes = 65536;
    cfg->lua_memory_limit_mb = 64;
    cfg->lua_sandbox = true;
    cfg->on_handler_error = WH_ON_ERROR_RETRY;
    cfg->delivery_mode = WH_DELIVERY_SYNC;
    cfg->max_spool_mb = 1024;
    cfg->keep_delivered_s = 7 * 86400;
    cfg->delivery_workers = 4;
    cfg->lease_s = 30;
    cfg->retry_max_attempts = 8;
    cfg->retry_initial_backoff_ms = 500;
    cfg->retry_max_backoff_ms = 300000;
    cfg->dedupe_window_s = 86400;
}

/* Defaults that depend on the manifest's folder, applied after parsing. */
static void set_path_defaults(struct ctx *c)
{
    struct wh_config *cfg = c->cfg;

    if (!cfg->lua_path)
        cfg->lua_path = resolve(c, "scripts/?.lua");
    if (!cfg->spool) {
        cfg->spool = resolve(c, "var/spool.db");
        cfg->spool_line = cfg->delivery_mode_line;
    }
    if (!cfg->pg_schema)
        cfg->pg_schema = xstrdup("wapphook");
    if (!cfg->listeners) {
        cfg->listeners = calloc(1, sizeof *cfg->listeners);
        cfg->listeners[0].host = xstrdup("127.0.0.1");
        cfg->listeners[0].port = 8080;
        cfg->listeners[0].url = xstrdup("http://127.0.0.1:8080");
        cfg->n_listeners = 1;
    }
}

static int check_whole(struct ctx *c, yaml_node_t *root, bool have_secrets, bool have_hooks)
{
    struct wh_config *cfg = c->cfg;

    if (!have_secrets)
        return fail(c, root, "secrets: missing (at least one secret is required)");
    if (!have_hooks)
        return fail(c, root, "hooks: missing (write 'hooks: {}' for none)");
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            int allowed = 0;
            if (h->kind != WH_HANDLER_EXEC)
                continue;
            for (size_t a = 0; a < cfg->n_exec_allow; a++)
                allowed |= strcmp(cfg->exec_allow[a], h->argv[0]) == 0;
            if (!allowed) {
                snprintf(c->err, c->err_len, "%s:%d: exec: command %s is not in exec.allow",
                         c->file, h->line, h->display);
                return -1;
            }
        }
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        if (cfg->listeners[i].tls && !cfg->tls_certificate) {
            snprintf(c->err, c->err_len, "%s:%d: %s needs server.tls.certificate", c->file,
                     cfg->listeners[i].line, cfg->listeners[i].url);
            return -1;
        }
    }
    return 0;
}

static int load(const char *file, bool no_secrets, struct wh_config **out, char *err,
                size_t err_len)
{
    struct ctx c = {.file = file, .err = err, .err_len = err_len, .nodes_left = CONFIG_MAX_NODES,
                    .no_secrets = no_secrets};
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;
    FILE *f;
    int rc = -1;

    *out = NULL;
    f = fopen(file, "rb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot open: %s", file, strerror(errno));
        return -1;
    }
    c.cfg = calloc(1, sizeof *c.cfg);
    set_defaults(c.cfg, file);
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, err_len, "%s:%zu: YAML: %s%s%s", file, parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "syntax error",
                 parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        fclose(f);
        manifest_free(c.cfg);
        return -1;
    }
    c.doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (!root) {
        snprintf(err, err_len, "%s: empty manifest", file);
    } else if (root->type != YAML_MAPPING_NODE) {
        fail(&c, root, "the manifest must be a mapping (server:, secrets:, hooks: ...)");
    } else {
        bool have_secrets = false, have_hooks = false;

        for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
             p < root->data.mapping.pairs.top; p++) {
            const char *key = scalar(node(&c, p->key));
            have_secrets |= key && strcmp(key, "secrets") == 0;
            have_hooks |= key && strcmp(key, "hooks") == 0;
        }
        if (each_pair(&c, root, "the manifest",
                      "server, secrets, headers, lua, http, exec, delivery, hooks", top_key) == 0 &&
            check_whole(&c, root, have_secrets, have_hooks) == 0) {
            set_path_defaults(&c);
            rc = 0;
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    if (rc == 0)
        *out = c.cfg;
    else
        manifest_free(c.cfg);
    return rc;
}

int manifest_load(const char *file, struct wh_config **out, char *err, size_t err_len)
{
    return load(file, false, out, err, err_len);
}

int manifest_load_no_secrets(const char *file, struct wh_config **out, char *err, size_t err_len)
{
    return load(file, true, out, err, err_len);
}

void manifest_free(struct wh_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        free(cfg->listeners[i].host);
        free(cfg->listeners[i].url);
    }
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->n_secrets; i++) {
        if (cfg->secrets[i].key)
            OPENSSL_cleanse(cfg->secrets[i].key, cfg->secrets[i].len);
        free(cfg->secrets[i].key);
        free(cfg->secrets[i].source);
    }
    free(cfg->secrets);
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            free(cfg->hooks[i].handlers[j].path);
            free(cfg->hooks[i].handlers[j].display);
            free(cfg->hooks[i].handlers[j].function);
            free(cfg->hooks[i].handlers[j].config);
            for (char **a = cfg->hooks[i].handlers[j].argv; a && *a; a++)
                free(*a);
            free(cfg->hooks[i].handlers[j].argv);
        }
        free(cfg->hooks[i].handlers);
        free(cfg->hooks[i].type);
    }
    free(cfg->hooks);
    for (size_t i = 0; i < cfg->n_shared; i++)
        free(cfg->shared[i].name);
    for (size_t i = 0; i < cfg->n_http_allow; i++)
        free(cfg->http_allow[i].host);
    free(cfg->http_allow);
    free(cfg->trusted_proxies);
    free(cfg->allow_from);
    for (size_t i = 0; i < cfg->n_exec_allow; i++)
        free(cfg->exec_allow[i]);
    free(cfg->exec_allow);
    free(cfg->shared);
    free(cfg->file);
    free(cfg->dir);
    free(cfg->tls_certificate);
    free(cfg->tls_ciphers);
    free(cfg->path);
    free(cfg->admin);
    free(cfg->event_header);
    free(cfg->signature_header);
    free(cfg->lua_path);
    free(cfg->spool);
    free(cfg->pg_schema);
    free(cfg->dedupe_key);
    free(cfg);
}

const struct wh_hook *manifest_find_hook(const struct wh_config *cfg, const char *type)
{
    for (size_t i = 0; i < cfg->n_hooks; i++)
        if (strcmp(cfg->hooks[i].type, type) == 0)
            return &cfg->hooks[i];
    return NULL;
}

static int str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static void note(char *out, size_t out_len, int *n, const char *what)
{
    size_t used = strlen(out);

    snprintf(out + used, out_len - used, "%s%s", (*n)++ ? ", " : "", what);
}

int manifest_server_diff(const struct wh_config *a, const struct wh_config *b, char *out,
                         size_t out_len)
{
    int n = 0;
    bool listen = a->n_listeners != b->n_listeners;

    out[0] = '\0';
    for (size_t i = 0; !listen && i < a->n_listeners; i++)
        listen = a->listeners[i].tls != b->listeners[i].tls ||
                 a->listeners[i].port != b->listeners[i].port ||
                 strcmp(a->listeners[i].host, b->listeners[i].host) != 0;
    if (listen)
        note(out, out_len, &n, "server.listen");
    /* server.tls applies on reload: each handshake takes the current generation's pair */
    if (strcmp(a->path, b->path) != 0)
        note(out, out_len, &n, "server.path");
    if (a->threads != b->threads)
        note(out, out_len, &n, "server.threads");
    if (a->max_body_bytes != b->max_body_bytes)
        note(out, out_len, &n, "server.max_body_bytes");
    if (a->request_timeout_ms != b->request_timeout_ms)
        note(out, out_len, &n, "server.request_timeout_ms");
    if (a->shutdown_timeout_ms != b->shutdown_timeout_ms)
        note(out, out_len, &n, "server.shutdown_timeout_ms");
    if (a->header_timeout_ms != b->header_timeout_ms) /* civetweb's own, set at start */
        note(out, out_len, &n, "server.header_timeout_ms");
    if (str_differs(a->admin, b->admin))
        note(out, out_len, &n, "server.admin");
    /* the spool and its threads are opened once, at start */
    if (a->delivery_mode != b->delivery_mode)
        note(out, out_len, &n, "delivery.mode");
    if (a->delivery_mode == WH_DELIVERY_DURABLE && b->delivery_mode == WH_DELIVERY_DURABLE &&
        str_differs(a->spool, b->spool))
        note(out, out_len, &n, "delivery.spool");
    if (a->delivery_mode == WH_DELIVERY_DURABLE && str_differs(a->pg_schema, b->pg_schema))
        note(out, out_len, &n, "delivery.pg_schema");
    if (a->delivery_mode == WH_DELIVERY_DURABLE && a->lease_s != b->lease_s)
        note(out, out_len, &n, "delivery.lease_s");
    if (a->delivery_mode == WH_DELIVERY_DURABLE && a->delivery_workers != b->delivery_workers)
        note(out, out_len, &n, "delivery.workers");
    return n;
}

bool manifest_exec_allowed(const struct wh_config *cfg, const char *path)
{
    for (size_t i = 0; i < cfg->n_exec_allow; i++)
        if (strcmp(cfg->exec_allow[i], path) == 0)
            return true;
    return false;
}
