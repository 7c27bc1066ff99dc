/*
 * manifest_load(): hooks.yaml -> struct wh_config. The parts are parsed elsewhere in this
 * folder (parse.h); here: the file, the document, the checks that span sections, and what
 * the rest of wapphook asks of a loaded config.
 * Out of memory fails the load ("FILE: out of memory"): the policy is in yaml_access.h.
 */
#include "parse.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_NODES 100000

static int check_whole(struct ctx *c, yaml_node_t *root, bool have_secrets, bool have_hooks)
{
    struct wh_config *cfg = c->cfg;

    if (!have_secrets) return fail(c, root, "secrets: missing (at least one secret is required)");
    if (!have_hooks) return fail(c, root, "hooks: missing (write 'hooks: {}' for none)");
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        for (size_t j = 0; j < cfg->hooks[i].n_handlers; j++) {
            const struct wh_handler *h = &cfg->hooks[i].handlers[j];
            if (h->kind == WH_HANDLER_EXEC && !manifest_exec_allowed(cfg, h->argv[0])) {
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

/* c->cfg: the file, its folder and every default; 0, or -1 (out of memory). */
static int config_new(struct ctx *c, const char *file)
{
    const char *slash = strrchr(file, '/');
    struct wh_config *cfg;

    if (!(c->cfg = cfg = conf_alloc(c, 1, sizeof *cfg)) || !(cfg->file = conf_strdup(c, file)))
        return -1;
    if (!slash)
        cfg->dir = conf_strdup(c, ".");
    else if (slash == file)
        cfg->dir = conf_strdup(c, "/");
    else if ((cfg->dir = strndup(file, (size_t)(slash - file))) == NULL)
        fail(c, NULL, "out of memory");
    if (!cfg->dir) return -1;
    return keys_defaults(c);
}

static int load(const char *file, bool no_secrets, struct wh_config **out, char *err,
                size_t err_len)
{
    struct ctx c = {.file = file,
                    .err = err,
                    .err_len = err_len,
                    .nodes_left = CONFIG_MAX_NODES,
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
    if (config_new(&c, file)) goto out_file;
    if (!yaml_parser_initialize(&parser)) {
        fail(&c, NULL, "out of memory");
        goto out_file;
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, err_len, "%s:%zu: YAML: %s%s%s", file, parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "syntax error", parser.context ? " " : "",
                 parser.context ? parser.context : "");
        goto out_parser;
    }
    c.doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (!root) {
        snprintf(err, err_len, "%s: empty manifest", file);
    } else if (root->type != YAML_MAPPING_NODE) {
        fail(&c, root, "the manifest must be a mapping (server:, secrets:, hooks: ...)");
    } else {
        bool have_secrets = false, have_hooks = false;

        for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
             p++) {
            const char *key = scalar(node(&c, p->key));
            have_secrets |= key && strcmp(key, "secrets") == 0;
            have_hooks |= key && strcmp(key, "hooks") == 0;
        }
        if (keys_parse_root(&c, root) == 0 &&
            check_whole(&c, root, have_secrets, have_hooks) == 0) {
            rc = keys_finish(&c);
        }
    }
    yaml_document_delete(&doc);
out_parser:
    yaml_parser_delete(&parser);
out_file:
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
    if (!cfg) return;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        free(cfg->listeners[i].host);
        free(cfg->listeners[i].url);
    }
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->n_secrets; i++) {
        if (cfg->secrets[i].key) OPENSSL_cleanse(cfg->secrets[i].key, cfg->secrets[i].len);
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
    free(cfg->console_token_env);
    free(cfg->console_token_file);
    if (cfg->console_token) { /* a secret: not left in freed memory */
        explicit_bzero(cfg->console_token, strlen(cfg->console_token));
        free(cfg->console_token);
    }
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
        if (strcmp(cfg->hooks[i].type, type) == 0) return &cfg->hooks[i];
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
    if (listen) note(out, out_len, &n, "server.listen");
    /* server.tls applies on reload: each handshake takes the current generation's pair */
    if (strcmp(a->path, b->path) != 0) note(out, out_len, &n, "server.path");
    if (a->threads != b->threads) note(out, out_len, &n, "server.threads");
    if (a->max_body_bytes != b->max_body_bytes) note(out, out_len, &n, "server.max_body_bytes");
    if (a->request_timeout_ms != b->request_timeout_ms)
        note(out, out_len, &n, "server.request_timeout_ms");
    if (a->shutdown_timeout_ms != b->shutdown_timeout_ms)
        note(out, out_len, &n, "server.shutdown_timeout_ms");
    if (a->header_timeout_ms != b->header_timeout_ms) /* civetweb's own, set at start */
        note(out, out_len, &n, "server.header_timeout_ms");
    if (str_differs(a->admin, b->admin)) note(out, out_len, &n, "server.admin");
    /* the spool and its threads are opened once, at start */
    if (a->delivery_mode != b->delivery_mode) note(out, out_len, &n, "delivery.mode");
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
        if (strcmp(cfg->exec_allow[i], path) == 0) return true;
    return false;
}
