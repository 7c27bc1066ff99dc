/* secrets: a list of {env|file|value: ...}, read now (unless the load leaves them unread). */
#include "parse.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET_FILE_MAX (64 * 1024)

static int read_secret_file(struct ctx *c, yaml_node_t *v, const char *path,
                            struct wh_secret_src *s)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    size_t n;

    if (!f) return fail(c, v, "secret file %s: %s", path, strerror(errno));
    buf = conf_alloc(c, SECRET_FILE_MAX + 1, 1);
    if (!buf) {
        fclose(f);
        return -1;
    }
    n = fread(buf, 1, SECRET_FILE_MAX + 1, f);
    fclose(f);
    if (n > SECRET_FILE_MAX) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        return fail(c, v, "secret file %s is larger than %d bytes", path, SECRET_FILE_MAX);
    }
    if (n > 0 && buf[n - 1] == '\n') n--;
    if (n == 0) {
        free(buf);
        return fail(c, v, "secret file %s is empty", path);
    }
    s->key = buf;
    s->len = n;
    return 0;
}

/* s->source = "KIND WHAT" (never the secret itself) */
static int set_source(struct ctx *c, struct wh_secret_src *s, const char *kind, const char *what)
{
    size_t len = strlen(kind) + strlen(what) + 2;

    if (!(s->source = conf_alloc(c, len, 1))) return -1;
    snprintf(s->source, len, "%s %s", kind, what);
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
        return fail(c, item,
                    "each secret must be a mapping with exactly one of env, file "
                    "or value");
    p = item->data.mapping.pairs.start;
    k = node(c, p->key);
    v = node(c, p->value);
    key = scalar(k);
    val = scalar(v);
    if (!key || (strcmp(key, "env") && strcmp(key, "file") && strcmp(key, "value")))
        return fail(c, k, "unknown key '%s' in secret (expected env, file or value)",
                    key ? key : "?");
    if (!val || !*val) return fail(c, v, "secret %s must be a non-empty string", key);
    if (c->no_secrets) return (s->source = conf_strdup(c, key)) ? 0 : -1;
    if (strcmp(key, "env") == 0) {
        const char *e = getenv(val);
        if (!e || !*e)
            return fail(c, v, "secret from environment variable %s: unset or empty", val);
        if (!(s->key = (unsigned char *)conf_strdup(c, e))) return -1;
        s->len = strlen(e);
        return set_source(c, s, "env", val);
    }
    if (strcmp(key, "file") == 0) {
        if (!(path = resolve(c, val))) return -1;
        r = read_secret_file(c, v, path, s);
        if (r == 0) r = set_source(c, s, "file", path);
        free(path);
        return r;
    }
    if (!(s->key = (unsigned char *)conf_strdup(c, val))) return -1;
    s->len = strlen(val);
    return (s->source = conf_strdup(c, "value")) ? 0 : -1;
}

int secrets_parse(struct ctx *c, yaml_node_t *v)
{
    size_t n;

    if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "secrets must be a list of {env|file|value: ...}");
    n = seq_len(v);
    if (n == 0) return fail(c, v, "secrets must list at least one secret");
    if (!(c->cfg->secrets = conf_alloc(c, n, sizeof *c->cfg->secrets))) return -1;
    for (size_t i = 0; i < n; i++) {
        c->cfg->n_secrets = i + 1;
        if (parse_secret(c, seq_item(c, v, i), &c->cfg->secrets[i])) return -1;
    }
    return 0;
}
