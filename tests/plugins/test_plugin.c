/* A plugin for the tests, compiled several ways (see tests/CMakeLists.txt):
 *   default        config {"fail_create": bool, "fail_type": "t", "append": path, "tag": "A",
 *                          "sleep_ms": n, "block": bool, "show_id": bool}: appends "<tag> <type>
 * <x-test-header>\n" to `append` per event (after sleeping, if asked); logs "handling <tag>" when
 * a call starts (with show_id, then "<tag> sees id=<id> attempt=<n> budget=<ms>") and "destroyed
 * <tag>" from destroy(); with block, a call never returns (a stuck plugin) -DFAIL_ALWAYS
 * the same, but every handle() fails (a "new build" of the plugin) -DNO_ENTRY     exports no entry
 * symbol -DABI_MAJOR=N  claims another major ABI version -DSMALL_STRUCT claims a struct_size too
 * small to hold the callbacks; built against tests/plugins/abi_1_0 (the header of plugin ABI 1.0,
 * kept as it was released): a plugin of the previous minor version */
#define _GNU_SOURCE
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wapphook/plugin.h>

struct st {
    const struct wapphook_host *host;
    char fail_type[80];
    char tag[32];
    int fd;
    long sleep_ms;
    int block, show_id;
};

static int t_create(const struct wapphook_host *host, const char *config, void **state, char *err,
                    size_t err_len)
{
    json_t *c = json_loads(config, 0, NULL);
    struct st *s;
    const char *v;

    if (json_is_true(json_object_get(c, "fail_create"))) {
        snprintf(err, err_len, "told to fail in create");
        json_decref(c);
        return WAPPHOOK_ERR;
    }
    s = calloc(1, sizeof *s);
    s->host = host;
    s->fd = -1;
    if ((v = json_string_value(json_object_get(c, "fail_type"))))
        snprintf(s->fail_type, sizeof s->fail_type, "%s", v);
    snprintf(s->tag, sizeof s->tag, "%s",
             json_string_value(json_object_get(c, "tag"))
                 ? json_string_value(json_object_get(c, "tag"))
                 : "T");
    if ((v = json_string_value(json_object_get(c, "append"))))
        s->fd = open(v, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    s->sleep_ms = (long)json_integer_value(json_object_get(c, "sleep_ms"));
    s->block = json_is_true(json_object_get(c, "block"));
    s->show_id = json_is_true(json_object_get(c, "show_id"));
    json_decref(c);
    *state = s;
    return WAPPHOOK_OK;
}

static int t_handle(void *state, const struct wapphook_event *ev, char *err, size_t err_len)
{
    struct st *s = state;
    char line[160];
    const char *h = ev->header(ev, "x-test-header");

    snprintf(line, sizeof line, "handling %s", s->tag);
    s->host->log(s->host, WAPPHOOK_LOG_INFO, line);
    if (s->show_id) {
#ifdef WAPPHOOK_EVENT_HAS /* built against ABI 1.1 or later */
        if (WAPPHOOK_EVENT_HAS(ev, timeout_ms))
            snprintf(line, sizeof line, "%s sees id=%s attempt=%u budget=%d", s->tag, ev->id,
                     ev->attempt, ev->timeout_ms);
        else
            snprintf(line, sizeof line, "%s sees an ABI 1.0 host", s->tag);
#else
        snprintf(line, sizeof line, "%s built against ABI %d.%d", s->tag, WAPPHOOK_PLUGIN_ABI_MAJOR,
                 WAPPHOOK_PLUGIN_ABI_MINOR);
#endif
        s->host->log(s->host, WAPPHOOK_LOG_INFO, line);
    }
    while (s->block)
        sleep(1); /* C code no budget can stop */
    if (s->sleep_ms) {
        struct timespec ts = {s->sleep_ms / 1000, (s->sleep_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL); /* a slow handler, for in-flight tests */
    }
    if (s->fd >= 0) {
        int n = snprintf(line, sizeof line, "%s %s %s\n", s->tag, ev->type, h ? h : "-");
        if (write(s->fd, line, (size_t)n) != n) return WAPPHOOK_ERR;
    }
    if (strcmp(ev->type, s->fail_type) == 0) {
        snprintf(err, err_len, "told to fail on %s", ev->type);
        return WAPPHOOK_ERR;
    }
#ifdef FAIL_ALWAYS
    snprintf(err, err_len, "this build always fails");
    return WAPPHOOK_ERR;
#endif
    return WAPPHOOK_OK;
}

static void t_destroy(void *state)
{
    struct st *s = state;
    char line[64];

    snprintf(line, sizeof line, "destroyed %s", s->tag);
    s->host->log(s->host, WAPPHOOK_LOG_INFO, line);
    if (s->fd >= 0) close(s->fd);
    free(s);
}

#ifndef ABI_MAJOR
#define ABI_MAJOR WAPPHOOK_PLUGIN_ABI_MAJOR
#endif

static const struct wapphook_plugin def = {
#ifdef SMALL_STRUCT
    .struct_size = 16,
#else
    .struct_size = sizeof(struct wapphook_plugin),
#endif
    .abi_major = ABI_MAJOR,
    .abi_minor = WAPPHOOK_PLUGIN_ABI_MINOR,
    .name = "test_plugin",
    .version = "0",
    .create = t_create,
    .handle = t_handle,
    .destroy = t_destroy,
};

#ifndef NO_ENTRY
const struct wapphook_plugin *wapphook_plugin_entry(void)
{
    return &def;
}
#else
const struct wapphook_plugin *some_other_symbol(void);
const struct wapphook_plugin *some_other_symbol(void)
{
    return &def;
}
#endif
