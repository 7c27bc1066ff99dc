/* file_sink through the real loader: config refusals, one whole line per event from many
 * threads, newlines in the body folded, fsync mode. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/plugin_loader.h"

static char dir[256], path[300], err[1024];

static struct plugin *load(const char *config)
{
    struct plugin *p = NULL;
    if (plugin_load(PLUGIN, config, "hooks.yaml:3", &p, err, sizeof err)) return NULL;
    return p;
}

static void refuses_bad_config(void **state)
{
    (void)state;
    assert_null(load("{}"));
    assert_non_null(strstr(err, "hooks.yaml:3: plugin"));
    assert_non_null(strstr(err, "create failed: config needs path"));
    assert_null(load("{\"path\":\"/tmp/x\",\"fsync\":\"yes\"}"));
    assert_null(load("{\"path\":\"/nonexistent-dir/x.ndjson\"}"));
    assert_non_null(strstr(err, "cannot open /nonexistent-dir/x.ndjson"));
}

static struct plugin *shared;

static void *writer(void *arg)
{
    long id = (long)arg;
    char body[128], e[256];
    for (int i = 0; i < 500; i++) {
        struct wh_event ev = {.type = "t", .received_at = 12.5};
        snprintf(body, sizeof body, "{\"w\":%ld,\n\"i\":%d}", id, i);
        ev.body = body;
        ev.body_len = strlen(body);
        if (plugin_handle(shared, &ev, 1000, e, sizeof e) != 0) return (void *)1;
    }
    return NULL;
}

static void whole_lines_from_many_threads(void **state)
{
    char config[400], line[512];
    pthread_t th[8];
    int count[8] = {0}, lines = 0;
    FILE *f;
    (void)state;
    snprintf(config, sizeof config, "{\"path\":\"%s\"}", path);
    shared = load(config);
    assert_non_null(shared);
    assert_string_equal(plugin_name(shared), "file_sink");
    for (long i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, writer, (void *)i);
    for (int i = 0; i < 8; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    plugin_unload(shared);
    f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *p;
        if (!j) fail_msg("not a JSON line: %s", line);
        assert_string_equal(json_string_value(json_object_get(j, "type")), "t");
        assert_true(json_real_value(json_object_get(j, "received_at")) == 12.5);
        p = json_object_get(j, "payload");
        count[json_integer_value(json_object_get(p, "w"))]++;
        lines++;
        json_decref(j);
    }
    fclose(f);
    assert_int_equal(lines, 8 * 500);
    for (int i = 0; i < 8; i++)
        assert_int_equal(count[i], 500);
}

static void fsync_mode_writes_too(void **state)
{
    char config[400], buf[256] = "";
    struct plugin *p;
    struct wh_event ev = {.type = "x", .body = "{}", .body_len = 2, .received_at = 1};
    FILE *f;
    (void)state;
    unlink(path);
    snprintf(config, sizeof config, "{\"path\":\"%s\",\"fsync\":true}", path);
    p = load(config);
    assert_non_null(p);
    assert_int_equal(plugin_handle(p, &ev, 1000, err, sizeof err), 0);
    plugin_unload(p);
    f = fopen(path, "r");
    assert_non_null(fgets(buf, sizeof buf, f));
    fclose(f);
    assert_string_equal(buf, "{\"type\":\"x\",\"received_at\":1.000000,\"payload\":{}}\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refuses_bad_config),
        cmocka_unit_test(whole_lines_from_many_threads),
        cmocka_unit_test(fsync_mode_writes_too),
    };
    snprintf(dir, sizeof dir, "/tmp/wapphook-sink-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    snprintf(path, sizeof path, "%s/events.ndjson", dir);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
