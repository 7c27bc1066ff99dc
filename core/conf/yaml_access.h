/*
 * Reading the manifest's YAML document (libyaml's document API): nodes and their lines,
 * typed values with their ranges, mappings walked with duplicate keys refused, and every
 * refusal written as "FILE:LINE: reason" into the load's error buffer.
 *
 * Out of memory, the manifest's policy: every allocation of a load goes through conf_alloc()
 * or conf_strdup() (or is checked as they check), and a failure fails that load with
 * "FILE: out of memory" like any refusal: at start nothing runs yet, and a reload leaves the
 * running generation serving, where an abort (base/alloc.h's wh_x*) would end every request
 * in flight. Only base's http_policy_allow_parse, called for http.allow, still aborts.
 */
#ifndef WH_CONF_YAML_ACCESS_H
#define WH_CONF_YAML_ACCESS_H

#include "conf.h"

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

/* One load of one manifest. */
struct ctx {
    const char *file;
    yaml_document_t *doc;
    struct wh_config *cfg;
    char *err;
    size_t err_len;
    size_t nodes_left; /* budget for plugin configs: aliases can make a small file huge */
    bool no_secrets;   /* check secret entries, do not read their values */
};

int line_of(const yaml_node_t *n);
/* Writes "FILE:LINE: " (or "FILE: " when n is NULL) and the reason into c->err; returns -1. */
__attribute__((format(printf, 3, 4))) int fail(struct ctx *c, const yaml_node_t *n, const char *fmt,
                                               ...);
yaml_node_t *node(struct ctx *c, int idx);
/* The text of a scalar node, or NULL for a sequence or a mapping. */
const char *scalar(const yaml_node_t *n);
/* The number of items of a sequence node. */
size_t seq_len(const yaml_node_t *n);
yaml_node_t *seq_item(struct ctx *c, const yaml_node_t *n, size_t i);

/* calloc and strdup that fail the load ("FILE: out of memory") and return NULL. */
void *conf_alloc(struct ctx *c, size_t n, size_t size);
char *conf_strdup(struct ctx *c, const char *s);

/* Typed values: 0 and *out, or -1 and "FILE:LINE: WHAT must be ...". */
int get_str(struct ctx *c, const yaml_node_t *n, const char *what, char **out);
int get_int(struct ctx *c, const yaml_node_t *n, const char *what, long long min, long long max,
            long long *out);
int get_int32(struct ctx *c, const yaml_node_t *n, const char *what, int min, int max, int *out);
int get_bool(struct ctx *c, const yaml_node_t *n, const char *what, bool *out);
/* A path made absolute against the manifest's folder (NULL: out of memory, already said). */
char *resolve(struct ctx *c, const char *p);
int get_path(struct ctx *c, const yaml_node_t *n, const char *what, char **out);
/* A command wapphook may run: a path that must exist and be executable now. */
int get_command(struct ctx *c, const yaml_node_t *n, const char *what, char **out);

/* The key of the pair p of map, or NULL if it is refused: not a string ("WHAT: keys must be
 * strings") or an earlier pair's ("WHAT: duplicate key 'K'"). */
const char *pair_key(struct ctx *c, const yaml_node_t *map, const yaml_node_pair_t *p,
                     const char *what);
/* Walks a mapping: refuses a non-mapping ("WHAT must be a mapping"), non-string and
 * duplicate keys, and hands each pair to fn, which returns 0, -1 (refused, err written) or
 * 1 for a key it does not know: "unknown key 'K' in WHAT (expected KNOWN)". */
typedef int (*key_fn)(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v,
                      const void *arg);
int each_pair(struct ctx *c, yaml_node_t *map, const char *what, const char *known, key_fn fn,
              const void *arg);

#endif
