/*
 * file_sink: appends one JSON line per event to a file:
 *     {"type":"incoming_message","received_at":1795741200.123456,"payload":{...}}
 *
 * config:
 *     path:  the file (required; created 0640 if missing)
 *     fsync: true to fdatasync() after every line (default false)
 *
 * Lines stay whole with any number of threads: each line is built in memory and written
 * with one write() to a file opened O_APPEND, which the kernel applies atomically to a
 * regular file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wapphook/plugin.h>

struct sink {
    int fd;
    int fsync;
};

static int sink_create(const struct wapphook_host *host, const char *config_json, void **state,
                       char *err, size_t err_len)
{
    json_error_t je;
    json_t *cfg = json_loads(config_json, 0, &je);
    const char *path = cfg ? json_string_value(json_object_get(cfg, "path")) : NULL;
    json_t *fs = cfg ? json_object_get(cfg, "fsync") : NULL;
    struct sink *s;

    if (!path || (fs && !json_is_boolean(fs))) {
        snprintf(err, err_len, "config needs path (a string) and optionally fsync (true/false)");
        json_decref(cfg);
        return WAPPHOOK_ERR;
    }
    s = calloc(1, sizeof *s);
    s->fsync = fs && json_is_true(fs);
    s->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (s->fd < 0) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        free(s);
        json_decref(cfg);
        return WAPPHOOK_ERR;
    }
    host->log(host, WAPPHOOK_LOG_DEBUG, "file_sink ready");
    json_decref(cfg);
    *state = s;
    return WAPPHOOK_OK;
}

static int sink_handle(void *state, const struct wapphook_event *ev, char *err, size_t err_len)
{
    struct sink *s = state;
    size_t cap = ev->body_len + strlen(ev->type) + 96, len;
    char *line = malloc(cap);
    ssize_t n;

    if (!line) {
        snprintf(err, err_len, "out of memory");
        return WAPPHOOK_ERR;
    }
    /* The body is a verified JSON object; raw newlines can only be whitespace between its
     * tokens (JSON strings escape them), so turning them into spaces keeps one line. */
    len = (size_t)snprintf(
        line, cap, "{\"type\":\"%s\",\"received_at\":%.6f,\"payload\":", ev->type, ev->received_at);
    for (size_t i = 0; i < ev->body_len; i++)
        line[len++] = ev->body[i] == '\n' || ev->body[i] == '\r' ? ' ' : ev->body[i];
    line[len++] = '}';
    line[len++] = '\n';
    n = write(s->fd, line, len);
    free(line);
    if (n != (ssize_t)len) {
        snprintf(err, err_len, "write failed: %s", n < 0 ? strerror(errno) : "short write");
        return WAPPHOOK_ERR;
    }
    if (s->fsync && fdatasync(s->fd) != 0) {
        snprintf(err, err_len, "fdatasync failed: %s", strerror(errno));
        return WAPPHOOK_ERR;
    }
    return WAPPHOOK_OK;
}

static void sink_destroy(void *state)
{
    struct sink *s = state;

    close(s->fd);
    free(s);
}

static const struct wapphook_plugin file_sink = {
    WAPPHOOK_PLUGIN_HEADER, .name = "file_sink",   .version = "1.0.0",
    .create = sink_create,  .handle = sink_handle, .destroy = sink_destroy,
};

const struct wapphook_plugin *wapphook_plugin_entry(void)
{
    return &file_sink;
}
