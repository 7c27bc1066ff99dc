/* hooks: event type -> handlers (lua:, plugin: or exec:), each checked now: the file is
 * readable, the command executable, a plugin's config: turned into JSON text. */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONFIG_MAX_DEPTH 64

int manifest_event_type_valid(const char *type, size_t len)
{
    if (len == 0 || len > 64) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)type[i];
        if (!isalnum(ch) && ch != '_' && ch != '.' && ch != ':' && ch != '-') return 0;
    }
    return 1;
}

/* `plugin: redis_stream`: a name, not a path (no '/', no ".so"). */
static int is_bare_name(const char *s)
{
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-') return 0;
    return 1;
}

/* A plugin given by name is <name>.so in the plugins/ folder beside the binary (a build
 * tree: build/wapphook and build/plugins/), else in the installed plugin folder. */
static int find_shipped_plugin(struct ctx *c, yaml_node_t *n, char **out)
{
    const char *name = scalar(n);
    char exe[4096], dirs[2][4200], path[4400];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash;

    dirs[0][0] = '\0';
    if (len > 0) {
        exe[len] = '\0';
        if ((slash = strrchr(exe, '/')) != NULL) {
            *slash = '\0';
            snprintf(dirs[0], sizeof dirs[0], "%s/plugins", exe);
        }
    }
    snprintf(dirs[1], sizeof dirs[1], "%s", WH_PLUGIN_DIR);
    for (int i = 0; i < 2; i++) {
        if (!dirs[i][0]) continue;
        if (snprintf(path, sizeof path, "%.4200s/%.128s.so", dirs[i], name) >= (int)sizeof path)
            continue;
        if (access(path, F_OK) == 0) {
            *out = conf_strdup(c, path);
            return *out ? 0 : -1;
        }
    }
    return fail(c, n, "plugin %s: no %s.so in %s%s%s (give a path to load another)", name, name,
                dirs[0][0] ? dirs[0] : "", dirs[0][0] ? " or " : "", dirs[1]);
}

static json_t *scalar_to_json(yaml_node_t *n)
{
    const char *s = scalar(n);
    char *end;

    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return json_string(s);
    if (!*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0) return json_null();
    if (strcmp(s, "true") == 0) return json_true();
    if (strcmp(s, "false") == 0) return json_false();
    if (isdigit((unsigned char)s[0]) ||
        ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1]))) {
        long long i;
        double d;

        errno = 0;
        i = strtoll(s, &end, 10);
        if (!*end && !errno) return json_integer(i);
        errno = 0;
        d = strtod(s, &end);
        if (!*end && !errno) return json_real(d);
    }
    return json_string(s);
}

/* Drops j (or NULL) and returns NULL, saying "out of memory" if the reason is that. */
static json_t *dropped(struct ctx *c, json_t *j, bool oom)
{
    if (oom) fail(c, NULL, "out of memory");
    json_decref(j);
    return NULL;
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
        if (!j && !utf8_valid(scalar(n), strlen(scalar(n))))
            fail(c, n, "plugin config: string is not valid UTF-8");
        else if (!j)
            fail(c, NULL, "out of memory");
        return j;
    case YAML_SEQUENCE_NODE:
        if (!(j = json_array())) return dropped(c, NULL, true);
        for (size_t i = 0; i < seq_len(n); i++) {
            json_t *e = to_json(c, seq_item(c, n, i), depth + 1);
            if (!e || json_array_append_new(j, e)) /* appended or freed */
                return dropped(c, j, e != NULL);
        }
        return j;
    case YAML_MAPPING_NODE:
        if (!(j = json_object())) return dropped(c, NULL, true);
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            yaml_node_t *k = node(c, p->key);
            const char *key = scalar(k);
            json_t *e;

            if (!key) {
                fail(c, k, "plugin config keys must be strings");
                return dropped(c, j, false);
            }
            if (json_object_get(j, key)) {
                fail(c, k, "plugin config: duplicate key '%s'", key);
                return dropped(c, j, false);
            }
            e = to_json(c, node(c, p->value), depth + 1);
            if (!e || json_object_set_new(j, key, e)) /* set or freed */
                return dropped(c, j, e != NULL);
        }
        return j;
    default:
        fail(c, n, "plugin config: unsupported YAML node");
        return NULL;
    }
}

int valid_lua_name(const char *s)
{
    if (!isalpha((unsigned char)*s) && *s != '_') return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_') return 0;
    return 1;
}

static int parse_handler(struct ctx *c, const char *type, yaml_node_t *item, struct wh_handler *h)
{
    yaml_node_t *file_node = NULL, *fn_node = NULL, *config_node = NULL, *exec_node = NULL;
    int kinds = 0;
    char what[80];

    h->line = line_of(item);
    if (item->type != YAML_MAPPING_NODE)
        return fail(c, item, "hooks.%s: each handler must be a mapping with lua: or plugin:", type);
    snprintf(what, sizeof what, "hooks.%s", type);
    for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = node(c, p->key);
        yaml_node_t *v = node(c, p->value);
        const char *key = pair_key(c, item, p, what);

        if (!key) return -1;
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
            if (get_int32(c, v, "timeout_ms", 1, 3600000, &h->timeout_ms)) return -1;
        } else if (strcmp(key, "max_concurrent") == 0) {
            if (get_int32(c, v, "max_concurrent", 1, 1000000, &h->max_concurrent)) return -1;
        } else {
            return fail(c, k,
                        "unknown key '%s' in a handler of hooks.%s (expected lua, plugin, "
                        "exec, function, config, timeout_ms, max_concurrent)",
                        key, type);
        }
    }
    if (kinds != 1)
        return fail(c, item,
                    "hooks.%s: a handler needs exactly one of lua:, plugin: or exec:", type);
    if (exec_node) {
        size_t n;
        if (fn_node || config_node)
            return fail(c, fn_node ? fn_node : config_node,
                        "function: and config: do not apply to exec handlers");
        if (exec_node->type != YAML_SEQUENCE_NODE || !(n = seq_len(exec_node)))
            return fail(c, exec_node, "exec: must be a list: [command, arguments...]");
        if (!(h->argv = conf_alloc(c, n + 1, sizeof *h->argv))) return -1;
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *a = seq_item(c, exec_node, i);
            if (i == 0 ? get_command(c, a, "exec: command", &h->argv[0])
                       : get_str(c, a, "exec: argument", &h->argv[i]))
                return -1;
        }
        if (!(h->path = conf_strdup(c, h->argv[0])) ||
            !(h->display = conf_strdup(c, scalar(seq_item(c, exec_node, 0)))))
            return -1;
        return 0;
    }
    if ((h->kind == WH_HANDLER_PLUGIN && is_bare_name(scalar(file_node))
             ? find_shipped_plugin(c, file_node, &h->path)
             : get_path(c, file_node, "handler file", &h->path)) ||
        !(h->display = conf_strdup(c, scalar(file_node))))
        return -1;
    if (access(h->path, R_OK) != 0)
        return fail(c, file_node, "%s %s: %s", h->kind == WH_HANDLER_LUA ? "script" : "plugin",
                    h->path, strerror(errno));
    if (fn_node) {
        if (h->kind != WH_HANDLER_LUA)
            return fail(c, fn_node, "function: applies to lua handlers only");
        if (get_str(c, fn_node, "function", &h->function)) return -1;
        if (!valid_lua_name(h->function))
            return fail(c, fn_node, "function '%s' is not a Lua identifier", h->function);
    } else if (h->kind == WH_HANDLER_LUA && !(h->function = conf_strdup(c, "handle"))) {
        return -1;
    }
    if (config_node && h->kind != WH_HANDLER_PLUGIN)
        return fail(c, config_node, "config: applies to plugin handlers only");
    if (h->kind == WH_HANDLER_PLUGIN) {
        json_t *j;

        if (config_node && config_node->type != YAML_MAPPING_NODE)
            return fail(c, config_node, "config must be a mapping");
        if (config_node)
            j = to_json(c, config_node, 0);
        else if (!(j = json_object()))
            fail(c, NULL, "out of memory");
        if (!j) return -1;
        h->config = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        if (!h->config) return fail(c, NULL, "out of memory");
    }
    return 0;
}

static int hooks_key(struct ctx *c, const char *key, yaml_node_t *k, yaml_node_t *v,
                     const void *arg)
{
    struct wh_config *cfg = c->cfg;
    struct wh_hook *hook;
    size_t n;

    (void)arg;
    if (strcmp(key, "*") != 0 && !manifest_event_type_valid(key, strlen(key)))
        return fail(c, k, "hooks: '%s' is not an event type ([A-Za-z0-9_.:-]{1,64}) or \"*\"", key);
    if (v->type == YAML_SCALAR_NODE && !*scalar(v) &&
        v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
        n = 0; /* "type:" with nothing after it: like [] */
    else if (v->type != YAML_SEQUENCE_NODE)
        return fail(c, v, "hooks.%s must be a list of handlers", key);
    else
        n = seq_len(v);
    hook = &cfg->hooks[cfg->n_hooks++];
    hook->line = line_of(k);
    if (!(hook->type = conf_strdup(c, key)) ||
        !(hook->handlers = conf_alloc(c, n, sizeof *hook->handlers)))
        return -1;
    for (size_t i = 0; i < n; i++) {
        hook->n_handlers = i + 1;
        if (parse_handler(c, key, seq_item(c, v, i), &hook->handlers[i])) return -1;
    }
    return 0;
}

int hooks_parse(struct ctx *c, yaml_node_t *v)
{
    if (v->type == YAML_SCALAR_NODE && !*scalar(v) &&
        v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
        return 0; /* "hooks:" with nothing after it: no hooks */
    if (v->type == YAML_MAPPING_NODE &&
        !(c->cfg->hooks =
              conf_alloc(c, (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start) + 1,
                         sizeof *c->cfg->hooks)))
        return -1;
    return each_pair(c, v, "hooks", "event types or \"*\"", hooks_key, NULL);
}
