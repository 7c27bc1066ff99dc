#include "yaml_access.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int line_of(const yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

int fail(struct ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    int off;

    if (n)
        off = snprintf(c->err, c->err_len, "%s:%d: ", c->file, line_of(n));
    else
        off = snprintf(c->err, c->err_len, "%s: ", c->file);
    if (off < 0 || (size_t)off >= c->err_len) return -1;
    va_start(ap, fmt);
    vsnprintf(c->err + off, c->err_len - (size_t)off, fmt, ap);
    va_end(ap);
    return -1;
}

yaml_node_t *node(struct ctx *c, int idx)
{
    return yaml_document_get_node(c->doc, idx);
}

const char *scalar(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

yaml_node_t *seq_item(struct ctx *c, const yaml_node_t *n, size_t i)
{
    return node(c, n->data.sequence.items.start[i]);
}

/* --- memory: the load fails, the process goes on --------------------------------------- */

void *conf_alloc(struct ctx *c, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);

    if (!p) fail(c, NULL, "out of memory");
    return p;
}

char *conf_strdup(struct ctx *c, const char *s)
{
    char *d = strdup(s);

    if (!d) fail(c, NULL, "out of memory");
    return d;
}

/* --- typed values ---------------------------------------------------------------------- */

int get_str(struct ctx *c, const yaml_node_t *n, const char *what, char **out)
{
    const char *s = scalar(n);
    char *d;

    if (!s) return fail(c, n, "%s must be a string", what);
    if (!*s) return fail(c, n, "%s must not be empty", what);
    if (!(d = conf_strdup(c, s))) return -1;
    free(*out);
    *out = d;
    return 0;
}

int get_int(struct ctx *c, const yaml_node_t *n, const char *what, long long min, long long max,
            long long *out)
{
    const char *s = scalar(n);
    char *end;
    long long v;

    if (!s || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !*s)
        return fail(c, n, "%s must be an integer", what);
    errno = 0;
    v = strtoll(s, &end, 10);
    if (*end || errno) return fail(c, n, "%s must be an integer, not '%s'", what, s);
    if (v < min || v > max)
        return fail(c, n, "%s must be between %lld and %lld, not %lld", what, min, max, v);
    *out = v;
    return 0;
}

int get_int32(struct ctx *c, const yaml_node_t *n, const char *what, int min, int max, int *out)
{
    long long v = 0;

    if (get_int(c, n, what, min, max, &v)) return -1;
    *out = (int)v;
    return 0;
}

int get_bool(struct ctx *c, const yaml_node_t *n, const char *what, bool *out)
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

char *resolve(struct ctx *c, const char *p)
{
    size_t len;
    char *out;

    if (p[0] == '/') return conf_strdup(c, p);
    len = strlen(c->cfg->dir) + strlen(p) + 2;
    if (!(out = conf_alloc(c, len, 1))) return NULL;
    snprintf(out, len, "%s/%s", c->cfg->dir, p);
    return out;
}

int get_path(struct ctx *c, const yaml_node_t *n, const char *what, char **out)
{
    char *raw = NULL, *path;

    if (get_str(c, n, what, &raw)) return -1;
    path = resolve(c, raw);
    free(raw);
    if (!path) return -1;
    free(*out);
    *out = path;
    return 0;
}

int get_command(struct ctx *c, const yaml_node_t *n, const char *what, char **out)
{
    if (get_path(c, n, what, out)) return -1;
    if (access(*out, X_OK) != 0)
        return fail(c, n, "%s %s: %s", what, *out,
                    errno == EACCES ? "not executable" : strerror(errno));
    return 0;
}

/* --- mappings -------------------------------------------------------------------------- */

const char *pair_key(struct ctx *c, const yaml_node_t *map, const yaml_node_pair_t *p,
                     const char *what)
{
    yaml_node_t *k = node(c, p->key);
    const char *key = scalar(k);

    if (!key) {
        fail(c, k, "%s: keys must be strings", what);
        return NULL;
    }
    for (const yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
        const char *prev = scalar(node(c, q->key));
        if (prev && strcmp(prev, key) == 0) {
            fail(c, k, "%s: duplicate key '%s'", what, key);
            return NULL;
        }
    }
    return key;
}

int each_pair(struct ctx *c, yaml_node_t *map, const char *what, const char *known, key_fn fn,
              const void *arg)
{
    if (map->type != YAML_MAPPING_NODE) return fail(c, map, "%s must be a mapping", what);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node(c, p->key);
        const char *key = pair_key(c, map, p, what);
        int r;

        if (!key) return -1;
        r = fn(c, key, k, node(c, p->value), arg);
        if (r < 0) return -1;
        if (r > 0) return fail(c, k, "unknown key '%s' in %s (expected %s)", key, what, known);
    }
    return 0;
}
