/*
 * The manifest's parts, one file each, as manifest.c's load() calls them: keys.c (the table
 * of keys: every section but secrets and hooks, with ranges and defaults), secrets.c and
 * hooks.c.
 */
#ifndef WH_CONF_PARSE_H
#define WH_CONF_PARSE_H

#include "yaml_access.h"

/* keys.c: every table key's default (c->cfg->dir set); then the root mapping, by the table. */
int keys_defaults(struct ctx *c);
int keys_parse_root(struct ctx *c, yaml_node_t *root);
/* After a successful parse: the defaults that depend on other keys, and the checks across
 * sections (the console's token). 0, or -1 with the error. */
int keys_finish(struct ctx *c);

/* secrets.c: the top-level secrets: list. */
int secrets_parse(struct ctx *c, yaml_node_t *v);

/* hooks.c: the top-level hooks: mapping. */
int hooks_parse(struct ctx *c, yaml_node_t *v);
/* 1 if s is a Lua identifier (function:, lua.shared names). */
int valid_lua_name(const char *s);

#endif
