/* The manifest loader: defaults, every key, relative paths, and every refusal with its
 * FILE:LINE. Each case writes a real hooks.yaml into a temporary folder. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "conf/conf.h"

static char dir[256];
static char file[512];

static void put(const char *name, const char *content)
{
    file_write(dir, name, content);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/wapphook-manifest-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) return -1;
    snprintf(file, sizeof file, "%s/hooks.yaml", dir);
    put("a.lua", "function handle(e) end\n");
    put("p.so", "not really a plugin, but readable\n");
    put("secret.key", "from-file\n");
    put("empty.key", "\n");
    setenv("WH_TEST_SECRET", "from-env", 1);
    unsetenv("WH_TEST_UNSET");
    return 0;
}

static struct wh_config *load_ok(const char *yaml)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN] = "";
    put("hooks.yaml", yaml);
    if (manifest_load(file, &cfg, err, sizeof err) != 0) fail_msg("refused: %s", err);
    return cfg;
}

/* Expects a refusal whose message starts with "<file>:<line>: " and contains `what`. */
static void refused_at(const char *yaml, int line, const char *what)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN] = "", prefix[600];
    put("hooks.yaml", yaml);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), -1);
    assert_null(cfg);
    if (line > 0)
        snprintf(prefix, sizeof prefix, "%s:%d: ", file, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", file);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, what))
        fail_msg("expected \"%s...%s\", got \"%s\"", prefix, what, err);
}

/* Expects a refusal whose whole message is "<file>:<line>: " and then `what`. */
static void refused_exactly(const char *yaml, int line, const char *what)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN] = "", want[WH_ERR_LEN + 600];
    put("hooks.yaml", yaml);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), -1);
    assert_null(cfg);
    snprintf(want, sizeof want, "%s:%d: %s", file, line, what);
    assert_string_equal(err, want);
}

#define MIN "secrets:\n  - value: s\nhooks: {}\n"

static void defaults(void **state)
{
    struct wh_config *c = load_ok(MIN);
    char want[600];
    (void)state;
    assert_int_equal(c->n_listeners, 1);
    assert_string_equal(c->listeners[0].host, "127.0.0.1");
    assert_int_equal(c->listeners[0].port, 8080);
    assert_false(c->listeners[0].tls);
    assert_null(c->tls_certificate);
    assert_int_equal(c->tls_min_version, 12);
    assert_string_equal(c->tls_ciphers, "ECDHE+AESGCM:ECDHE+CHACHA20");
    assert_string_equal(c->path, "/webhook");
    assert_int_equal(c->threads, 128);
    assert_int_equal(c->max_body_bytes, 1048576);
    assert_int_equal(c->request_timeout_ms, 5000);
    assert_int_equal(c->header_timeout_ms, 2000);
    assert_int_equal(c->max_connections_per_client, 64);
    assert_int_equal(c->max_inflight, -1); /* three quarters of the threads, in http/pipeline.c */
    assert_int_equal(c->n_trusted_proxies, 0);
    assert_null(c->allow_from);
    assert_null(c->admin);
    assert_string_equal(c->event_header, "X-Wappcloud-Event");
    assert_string_equal(c->signature_header, "X-Wappcloud-Signature");
    assert_int_equal(c->lua_timeout_ms, 1000);
    assert_int_equal(c->lua_memory_limit_mb, 64);
    assert_true(c->lua_sandbox);
    snprintf(want, sizeof want, "%s/scripts/?.lua", dir);
    assert_string_equal(c->lua_path, want);
    assert_int_equal(c->on_handler_error, WH_ON_ERROR_RETRY);
    assert_int_equal(c->delivery_mode, WH_DELIVERY_SYNC);
    assert_int_equal(c->max_spool_mb, 1024);
    assert_int_equal(c->keep_delivered_s, 7 * 86400);
    assert_int_equal(c->lease_s, 30);
    assert_string_equal(c->pg_schema, "wapphook");
    assert_int_equal(c->n_secrets, 1);
    assert_int_equal(c->secrets[0].len, 1);
    assert_memory_equal(c->secrets[0].key, "s", 1);
    assert_int_equal(c->n_hooks, 0);
    manifest_free(c);
}

/* The defaults docs/configuration.md shows (written as it writes them), for keys the test above
 * leaves out. */
static void defaults_are_the_documented_ones(void **state)
{
    struct wh_config *c = load_ok(MIN);
    char got[1024], want[600];

    (void)state;
    snprintf(got, sizeof got,
             "server: {listen: [%s], shutdown_timeout_ms: %d}\n"
             "http: {allow_private: %s, timeout_ms: %d, max_response_bytes: %lld}\n"
             "exec: {max_concurrent: %d, max_output_bytes: %lld}\n"
             "delivery: {keep_delivered_s: %lld, workers: %d}\n"
             "retry: {max_attempts: %d, initial_backoff_ms: %lld, max_backoff_ms: %lld}\n"
             "dedupe: {window_s: %lld}\n",
             c->listeners[0].url, c->shutdown_timeout_ms, c->http_allow_private ? "true" : "false",
             c->http_timeout_ms, c->http_max_response_bytes, c->exec_max_concurrent,
             c->exec_max_output_bytes, c->keep_delivered_s, c->delivery_workers,
             c->retry_max_attempts, c->retry_initial_backoff_ms, c->retry_max_backoff_ms,
             c->dedupe_window_s);
    assert_string_equal(
        got, "server: {listen: [http://127.0.0.1:8080], shutdown_timeout_ms: 10000}\n"
             "http: {allow_private: false, timeout_ms: 5000, max_response_bytes: 1048576}\n"
             "exec: {max_concurrent: 8, max_output_bytes: 65536}\n"
             "delivery: {keep_delivered_s: 604800, workers: 4}\n"
             "retry: {max_attempts: 8, initial_backoff_ms: 500, max_backoff_ms: 300000}\n"
             "dedupe: {window_s: 86400}\n");
    assert_false(c->has_http_allow);
    assert_int_equal(c->n_exec_allow, 0);
    assert_null(c->dedupe_key);
    snprintf(want, sizeof want, "%s/var/spool.db", dir);
    assert_string_equal(c->spool, want);
    assert_int_equal(c->spool_line, 0);
    manifest_free(c);
    /* an absent delivery.spool takes delivery.mode's line */
    c = load_ok(MIN "delivery:\n  workers: 2\n  mode: durable\n");
    assert_int_equal(c->delivery_mode, WH_DELIVERY_DURABLE);
    assert_int_equal(c->spool_line, 6);
    manifest_free(c);
}

static void out_of_range_values_name_the_range(void **state)
{
    (void)state;
    refused_exactly("server:\n  threads: 1025\n" MIN, 2,
                    "server.threads must be between 1 and 1024, not 1025");
    refused_exactly("server:\n  max_body_bytes: 1073741825\n" MIN, 2,
                    "server.max_body_bytes must be between 1 and 1073741824, not 1073741825");
    refused_exactly(MIN "delivery:\n  retry:\n    max_attempts: 0\n", 6,
                    "delivery.retry.max_attempts must be between 1 and 1000, not 0");
    refused_exactly(MIN "delivery:\n  keep_delivered_s: -1\n", 5,
                    "delivery.keep_delivered_s must be between 0 and 3153600000, not -1");
    refused_exactly("exec:\n  max_output_bytes: 67108865\n" MIN, 2,
                    "exec.max_output_bytes must be between 1 and 67108864, not 67108865");
}

/* The "expected" list of an unknown key names a section's keys in the order the docs do. */
static void unknown_keys_list_the_known_ones_in_order(void **state)
{
    (void)state;
    refused_exactly(
        "server:\n  port: 1\n" MIN, 2,
        "unknown key 'port' in server (expected listen, tls, path, threads, "
        "max_body_bytes, request_timeout_ms, header_timeout_ms, shutdown_timeout_ms, "
        "max_connections_per_client, trusted_proxies, allow_from, max_inflight, admin)");
    refused_exactly("delivery:\n  queue: x\n" MIN, 2,
                    "unknown key 'queue' in delivery (expected on_handler_error, mode, spool, "
                    "max_spool_mb, keep_delivered_s, workers, lease_s, pg_schema, retry, dedupe)");
    refused_exactly("server:\n  tls:\n    key: k.pem\n" MIN, 3,
                    "unknown key 'key' in server.tls (expected certificate, min_version, ciphers)");
    refused_exactly(MIN "tls: {}\n", 4,
                    "unknown key 'tls' in the manifest (expected server, secrets, headers, lua, "
                    "http, exec, delivery, console, hooks)");
    refused_exactly("console:\n  tokens: x\n" MIN, 2,
                    "unknown key 'tokens' in console (expected enabled, token_env, token_file, "
                    "history, history_body_bytes)");
}

/* The console: no token and an admin listener others can reach is refused at its line; a
 * token from the environment or a file lets it start; loopback needs none. */
static void console_token_rules(void **state)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN] = "";
    (void)state;
    unsetenv("WH_TEST_CONSOLE_TOKEN");
    refused_exactly(
        "server:\n  admin: 0.0.0.0:9090\nconsole:\n  token_env: WH_TEST_CONSOLE_TOKEN\n" MIN, 2,
        "server.admin 0.0.0.0:9090 is not a loopback address and the console has no "
        "token: set WH_TEST_CONSOLE_TOKEN (console.token_env) or console.token_file, "
        "or console.enabled: false");
    refused_at("server:\n  admin: 0.0.0.0:9090\nconsole:\n  token_file: /nonexistent/token\n" MIN,
               4, "console.token_file /nonexistent/token: No such file or directory");
    put("token", "t0ken\n");
    put("hooks.yaml", "server:\n  admin: 0.0.0.0:9090\nconsole:\n  token_file: token\n" MIN);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), 0);
    assert_string_equal(cfg->console_token, "t0ken"); /* the last newline is not part of it */
    manifest_free(cfg);
    setenv("WH_TEST_CONSOLE_TOKEN", "from-env", 1);
    put("hooks.yaml",
        "server:\n  admin: '[::]:9090'\nconsole:\n  token_env: WH_TEST_CONSOLE_TOKEN\n" MIN);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), 0);
    assert_string_equal(cfg->console_token, "from-env");
    manifest_free(cfg);
    unsetenv("WH_TEST_CONSOLE_TOKEN");
    put("hooks.yaml",
        "server:\n  admin: 127.0.0.1:9090\nconsole:\n  token_env: WH_TEST_CONSOLE_TOKEN\n" MIN);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), 0);
    assert_null(cfg->console_token);
    assert_int_equal(cfg->console_history, 1000);
    assert_int_equal(cfg->history_body_bytes, 65536);
    manifest_free(cfg);
    put("hooks.yaml", "server:\n  admin: 0.0.0.0:9090\nconsole:\n  enabled: false\n" MIN);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), 0);
    manifest_free(cfg);
    refused_at("console:\n  history: -1\n" MIN, 2, "console.history");
}

static void every_key(void **state)
{
    char want[600];
    struct wh_config *c;
    (void)state;
    put("cert.pem", "x");
    c = load_ok("server:\n"
                "  listen:\n"
                "    - http://127.0.0.1:0\n"
                "    - https://0.0.0.0:8443\n"
                "    - http://[::1]:9000\n"
                "    - http://localhost:81\n"
                "  tls:\n"
                "    certificate: cert.pem\n"
                "    min_version: \"1.3\"\n"
                "    ciphers: ECDHE+AESGCM\n"
                "  path: /hooks/wapp\n"
                "  threads: 4\n"
                "  max_body_bytes: 4096\n"
                "  request_timeout_ms: 250\n"
                "  header_timeout_ms: 300\n"
                "  max_connections_per_client: 0\n"
                "  trusted_proxies: [10.0.0.0/8, \"2001:db8::/32\", 192.0.2.7]\n"
                "  allow_from: [203.0.113.0/24]\n"
                "  max_inflight: 7\n"
                "  admin: 127.0.0.1:9090\n"
                "secrets:\n"
                "  - env: WH_TEST_SECRET\n"
                "  - file: secret.key\n"
                "  - value: \"lit eral\"\n"
                "headers:\n"
                "  event: X-Event\n"
                "  signature: X-Sig\n"
                "lua:\n"
                "  timeout_ms: 20\n"
                "  memory_limit_mb: 8\n"
                "  sandbox: false\n"
                "  path: lib/?.lua;/abs/?/init.lua\n"
                "delivery:\n"
                "  on_handler_error: ack\n"
                "  mode: sync\n"
                "  spool: var/x.db\n"
                "  max_spool_mb: 10\n"
                "  keep_delivered_s: 0\n"
                "  workers: 2\n"
                "  retry: {max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 100}\n"
                "  dedupe: {key: data.message_id, window_s: 60}\n"
                "hooks:\n"
                "  incoming_message:\n"
                "    - lua: a.lua\n"
                "    - plugin: p.so\n"
                "      config:\n"
                "        path: /tmp/x\n"
                "        fsync: true\n"
                "        n: 3\n"
                "        r: 1.5\n"
                "        s: \"3\"\n"
                "        none: ~\n"
                "        list: [a, 1]\n"
                "  status_update:\n"
                "    - lua: a.lua\n"
                "      function: on_status\n"
                "      max_concurrent: 3\n"
                "  quiet: []\n"
                "  \"*\":\n"
                "    - lua: a.lua\n");
    assert_int_equal(c->n_listeners, 4);
    assert_int_equal(c->listeners[0].port, 0);
    assert_true(c->listeners[1].tls);
    assert_string_equal(c->listeners[1].host, "0.0.0.0");
    assert_string_equal(c->listeners[2].host, "::1");
    assert_string_equal(c->listeners[3].host, "127.0.0.1");
    snprintf(want, sizeof want, "%s/cert.pem", dir);
    assert_string_equal(c->tls_certificate, want);
    assert_int_equal(c->tls_min_version, 13);
    assert_string_equal(c->tls_ciphers, "ECDHE+AESGCM");
    assert_string_equal(c->path, "/hooks/wapp");
    assert_int_equal(c->threads, 4);
    assert_int_equal(c->max_body_bytes, 4096);
    assert_int_equal(c->request_timeout_ms, 250);
    assert_string_equal(c->admin, "127.0.0.1:9090");
    assert_int_equal(c->header_timeout_ms, 300);
    assert_int_equal(c->max_connections_per_client, 0);
    assert_int_equal(c->n_trusted_proxies, 3);
    assert_int_equal(c->trusted_proxies[0].prefix, 96 + 8);
    assert_int_equal(c->trusted_proxies[1].prefix, 32);
    assert_int_equal(c->trusted_proxies[2].prefix, 128);
    assert_int_equal(c->n_allow_from, 1);
    assert_int_equal(c->max_inflight, 7);
    assert_int_equal(c->n_secrets, 3);
    assert_memory_equal(c->secrets[0].key, "from-env", 8);
    assert_int_equal(c->secrets[1].len, 9); /* trailing newline stripped */
    assert_memory_equal(c->secrets[1].key, "from-file", 9);
    assert_memory_equal(c->secrets[2].key, "lit eral", 8);
    assert_null(strstr(c->secrets[0].source, "from-env"));
    assert_string_equal(c->event_header, "X-Event");
    assert_string_equal(c->signature_header, "X-Sig");
    assert_int_equal(c->lua_timeout_ms, 20);
    assert_int_equal(c->lua_memory_limit_mb, 8);
    assert_false(c->lua_sandbox);
    snprintf(want, sizeof want, "%s/lib/?.lua;/abs/?/init.lua", dir);
    assert_string_equal(c->lua_path, want);
    assert_int_equal(c->on_handler_error, WH_ON_ERROR_ACK);
    assert_int_equal(c->max_spool_mb, 10);
    assert_int_equal(c->keep_delivered_s, 0);
    assert_int_equal(c->delivery_workers, 2);
    assert_int_equal(c->retry_max_attempts, 3);
    assert_int_equal(c->retry_initial_backoff_ms, 10);
    assert_int_equal(c->retry_max_backoff_ms, 100);
    assert_string_equal(c->dedupe_key, "data.message_id");
    assert_int_equal(c->dedupe_window_s, 60);
    assert_int_equal(c->n_hooks, 4);
    assert_string_equal(c->hooks[0].type, "incoming_message");
    assert_int_equal(c->hooks[0].n_handlers, 2);
    assert_int_equal(c->hooks[0].handlers[0].kind, WH_HANDLER_LUA);
    assert_string_equal(c->hooks[0].handlers[0].function, "handle");
    snprintf(want, sizeof want, "%s/a.lua", dir);
    assert_string_equal(c->hooks[0].handlers[0].path, want);
    assert_int_equal(c->hooks[0].handlers[1].kind, WH_HANDLER_PLUGIN);
    assert_string_equal(c->hooks[0].handlers[1].config,
                        "{\"path\":\"/tmp/x\",\"fsync\":true,\"n\":3,\"r\":1.5,\"s\":\"3\","
                        "\"none\":null,\"list\":[\"a\",1]}");
    assert_string_equal(c->hooks[1].handlers[0].function, "on_status");
    assert_int_equal(c->hooks[1].handlers[0].max_concurrent, 3);
    assert_int_equal(c->hooks[0].handlers[0].max_concurrent, 0);
    assert_int_equal(c->hooks[2].n_handlers, 0);
    assert_non_null(manifest_find_hook(c, "*"));
    assert_null(manifest_find_hook(c, "nope"));
    manifest_free(c);
}

/* A handler's own budget (docs/handlers.md, "Handlers that act"), else lua.timeout_ms, in either
 * key order. */
static void handler_timeout_overrides_the_lua_one(void **state)
{
    struct wh_config *c = load_ok("secrets: [{value: s}]\nhooks:\n  t:\n    - lua: a.lua\n"
                                  "      timeout_ms: 10000\n    - plugin: p.so\n"
                                  "lua: {timeout_ms: 250}\n");
    (void)state;
    assert_int_equal(c->hooks[0].handlers[0].timeout_ms, 10000);
    assert_int_equal(wh_handler_budget_ms(c, &c->hooks[0].handlers[0]), 10000);
    assert_int_equal(wh_handler_budget_ms(c, &c->hooks[0].handlers[1]), 250);
    manifest_free(c);
    c = load_ok("secrets: [{value: s}]\nhooks: {}\nlua: {shared: {seen: 8, counts: 1}}\n");
    assert_int_equal(c->n_shared, 2);
    assert_string_equal(c->shared[0].name, "seen");
    assert_int_equal(c->shared[0].size_mb, 8);
    assert_int_equal(c->shared[1].line, 3);
    manifest_free(c);
}

static void plugin_config_defaults_to_empty_object(void **state)
{
    struct wh_config *c = load_ok("secrets: [{value: s}]\nhooks:\n  t:\n    - plugin: p.so\n");
    (void)state;
    assert_string_equal(c->hooks[0].handlers[0].config, "{}");
    assert_null(c->hooks[0].handlers[0].function);
    manifest_free(c);
}

static void refusals_top_level(void **state)
{
    (void)state;
    refused_at(MIN "bogus: 1\n", 4, "unknown key 'bogus' in the manifest");
    refused_at("hooks: {}\n", 1, "secrets: missing");
    refused_at("secrets: [{value: s}]\n", 1, "hooks: missing");
    refused_at("- a\n- b\n", 1, "must be a mapping");
    refused_at("", 0, "empty manifest");
    refused_at("secrets: [{value: s}]\nhooks: {}\nhooks: {}\n", 3, "duplicate key 'hooks'");
    refused_at("secrets: [{value: s}]\nhooks: {\n", 3, "YAML:");
    refused_at("secrets:\n  - value: s\n   bad indent: x\nhooks: {}\n", 3, "YAML:");
}

static void refusals_server(void **state)
{
    (void)state;
    refused_at("server:\n  port: 1\n" MIN, 2, "unknown key 'port' in server");
    refused_at("server:\n  threads: many\n" MIN, 2, "server.threads must be an integer");
    refused_at("server:\n  threads: 0\n" MIN, 2, "between 1 and 1024");
    refused_at("server:\n  threads: \"4\"\n" MIN, 2, "must be an integer");
    refused_at("server:\n  max_body_bytes: -5\n" MIN, 2, "server.max_body_bytes must be between");
    refused_at("server:\n  request_timeout_ms: [1]\n" MIN, 2, "must be an integer");
    refused_at("server:\n  listen: http://127.0.0.1:1\n" MIN, 2, "must be a list");
    refused_at("server:\n  listen: []\n" MIN, 2, "at least one");
    refused_at("server:\n  listen:\n    - ftp://127.0.0.1:1\n" MIN, 3, "http:// or https://");
    refused_at("server:\n  listen:\n    - http://example.com:80\n" MIN, 3, "IP address");
    refused_at("server:\n  listen:\n    - http://127.0.0.1:70000\n" MIN, 3, "port from 0 to 65535");
    refused_at("server:\n  listen:\n    - http://127.0.0.1\n" MIN, 3, "scheme://ADDRESS:PORT");
    refused_at("server:\n  listen:\n    - http://127.0.0.1:80/x\n" MIN, 3, "no path");
    refused_at("server:\n  listen:\n    - http://127.0.0.1:1\n    - https://127.0.0.1:2\n" MIN, 4,
               "needs server.tls.certificate");
    refused_at("server:\n  tls:\n    min_version: \"1.1\"\n" MIN, 3, "\"1.2\" or \"1.3\"");
    refused_at("server:\n  tls:\n    certificate: \"\"\n" MIN, 3, "must not be empty");
    refused_at("server:\n  tls:\n    ciphers: \"\"\n" MIN, 3,
               "server.tls.ciphers must not be empty");
    refused_at("server:\n  tls:\n    ciphers: [a]\n" MIN, 3, "server.tls.ciphers must be a string");
    refused_at("server:\n  tls:\n    cipher: x\n" MIN, 3, "unknown key 'cipher' in server.tls");
    refused_at("server:\n  path: webhook\n" MIN, 2, "must start with '/'");
    refused_at("server:\n  path: /a b\n" MIN, 2, "must start with '/'");
    refused_at("server:\n  path: /a?b\n" MIN, 2, "must start with '/'");
    refused_at("server:\n  admin: 9090\n" MIN, 2, "ADDRESS:PORT");
    refused_at("server:\n  header_timeout_ms: 0\n" MIN, 2, "server.header_timeout_ms");
    refused_at("server:\n  max_connections_per_client: -1\n" MIN, 2,
               "server.max_connections_per_client");
    refused_at("server:\n  max_inflight: lots\n" MIN, 2, "server.max_inflight");
    refused_at("server:\n  allow_from: 10.0.0.0/8\n" MIN, 2, "must be a list of CIDRs");
    refused_at("server:\n  allow_from: []\n" MIN, 2, "no client could POST");
    refused_at("server:\n  allow_from:\n    - 10.0.0.0/8\n    - 10.0.0.0/33\n" MIN, 4,
               "server.allow_from: '10.0.0.0/33' is not a CIDR");
    refused_at("server:\n  trusted_proxies: [proxy.example.com]\n" MIN, 2,
               "server.trusted_proxies: 'proxy.example.com' is not a CIDR");
}

static void refusals_secrets(void **state)
{
    (void)state;
    refused_at("secrets: []\nhooks: {}\n", 1, "at least one");
    refused_at("secrets: x\nhooks: {}\n", 1, "must be a list");
    refused_at("secrets:\n  - env: WH_TEST_UNSET\nhooks: {}\n", 2,
               "environment variable WH_TEST_UNSET: unset or empty");
    setenv("WH_TEST_EMPTY", "", 1);
    refused_at("secrets:\n  - env: WH_TEST_EMPTY\nhooks: {}\n", 2, "unset or empty");
    refused_at("secrets:\n  - file: missing.key\nhooks: {}\n", 2, "No such file");
    refused_at("secrets:\n  - file: empty.key\nhooks: {}\n", 2, "is empty");
    refused_at("secrets:\n  - value: \"\"\nhooks: {}\n", 2, "non-empty string");
    refused_at("secrets:\n  - env: A\n    value: b\nhooks: {}\n", 2, "exactly one of");
    refused_at("secrets:\n  - vault: x\nhooks: {}\n", 2, "unknown key 'vault' in secret");
    refused_at("secrets:\n  - s\nhooks: {}\n", 2, "exactly one of");
}

static void refusals_headers_lua_delivery(void **state)
{
    (void)state;
    refused_at("headers:\n  event: \"X Event\"\n" MIN, 2, "HTTP header name");
    refused_at("headers:\n  id: X-Id\n" MIN, 2, "unknown key 'id' in headers");
    refused_at("lua:\n  sandbox: maybe\n" MIN, 2, "true or false");
    refused_at("lua:\n  timeout_ms: 0\n" MIN, 2, "lua.timeout_ms must be between");
    refused_at("lua:\n  path: scripts/x.lua\n" MIN, 2, "must contain '?'");
    refused_at("lua:\n  jit: on\n" MIN, 2, "unknown key 'jit' in lua");
    refused_at("delivery:\n  on_handler_error: ignore\n" MIN, 2, "retry or ack");
    refused_at("delivery:\n  mode: async\n" MIN, 2, "sync or durable");
    refused_at("delivery:\n  retry:\n    tries: 3\n" MIN, 3,
               "unknown key 'tries' in delivery.retry");
    refused_at("delivery:\n  dedupe:\n    window_s: 5\n" MIN, 3, "needs a key");
    refused_at("delivery:\n  dedupe:\n    key: data..id\n" MIN, 3, "dot path such as");
    refused_at("delivery:\n  dedupe:\n    key: .id\n" MIN, 3, "dot path such as");
    refused_at("delivery:\n  dedupe:\n    key: data.\n" MIN, 3, "dot path such as");
    refused_at("delivery:\n  workers: 0\n" MIN, 2, "delivery.workers must be between");
    refused_at("delivery:\n  keep_delivered_s: -1\n" MIN, 2,
               "delivery.keep_delivered_s must be between");
    refused_at("delivery:\n  lease_s: 1\n" MIN, 2, "delivery.lease_s must be between");
    refused_at("delivery:\n  pg_schema: Public\n" MIN, 2, "delivery.pg_schema must be");
    refused_at("delivery:\n  pg_schema: 1st\n" MIN, 2, "delivery.pg_schema must be");
    refused_at("delivery:\n  pg_schema: \"a;drop\"\n" MIN, 2, "delivery.pg_schema must be");
}

/* A postgresql:// spool is a libpq URI, kept as written (a path would be made absolute). */
static void a_shared_spool_is_a_uri(void **state)
{
    struct wh_config *c;
    (void)state;
    c = load_ok(MIN "delivery:\n  mode: durable\n"
                    "  spool: postgres://app@db.internal/hooks?sslmode=require\n"
                    "  lease_s: 10\n  pg_schema: hooks_2\n");
    assert_string_equal(c->spool, "postgres://app@db.internal/hooks?sslmode=require");
    assert_int_equal(c->lease_s, 10);
    assert_string_equal(c->pg_schema, "hooks_2");
    manifest_free(c);
}

#define SEC "secrets: [{value: s}]\n"

static void refusals_hooks(void **state)
{
    (void)state;
    refused_at(SEC "hooks:\n  \"bad type\": []\n", 3, "is not an event type");
    refused_at(SEC "hooks:\n  t: a.lua\n", 3, "must be a list of handlers");
    refused_at(SEC "hooks:\n  t:\n    - a.lua\n", 4, "must be a mapping with lua: or plugin:");
    refused_at(SEC "hooks:\n  t:\n    - function: f\n", 4, "exactly one of lua:, plugin: or exec:");
    refused_at(SEC "hooks:\n  t:\n    - lua: a.lua\n      plugin: p.so\n", 4, "exactly one of");
    refused_at(SEC "hooks:\n  t:\n    - lua: missing.lua\n", 4, "missing.lua: No such file");
    refused_at(SEC "hooks:\n  t:\n    - plugin: missing.so\n", 4, "plugin");
    refused_at(SEC "hooks:\n  t:\n    - plugin: p.so\n      function: f\n", 5,
               "function: applies to lua handlers only");
    refused_at(SEC "hooks:\n  t:\n    - lua: a.lua\n      config: {}\n", 5,
               "config: applies to plugin handlers only");
    refused_at(SEC "hooks:\n  t:\n    - plugin: p.so\n      config: [1]\n", 5,
               "config must be a mapping");
    refused_at(SEC "hooks:\n  t:\n    - lua: a.lua\n      function: \"not-a-name\"\n", 5,
               "not a Lua identifier");
    refused_at(SEC "hooks:\n  t:\n    - lua: a.lua\n      timeout_ms: 0\n", 5, "timeout_ms");
    refused_at(SEC "hooks:\n  t:\n    - lua: a.lua\n      max_concurrent: 0\n", 5,
               "max_concurrent must be between 1 and");
    refused_at("http:\n  allow: [\"not a host\"]\n" MIN, 2, "http.allow: 'not a host' is neither");
    refused_at("http:\n  allow:\n    - 10.0.0.0/8\n    - 10.0.0.0/40\n" MIN, 4, "neither a host");
    refused_at("http:\n  timeout_ms: 0\n" MIN, 2, "http.timeout_ms");
    refused_at("http:\n  proxy: x\n" MIN, 2, "unknown key 'proxy' in http");
    refused_at("exec:\n  max_concurrent: 0\n" MIN, 2, "exec.max_concurrent");
    refused_at("lua:\n  shared:\n    not-a-name: 1\n" MIN, 3,
               "lua.shared: 'not-a-name' is not a Lua identifier");
    refused_at("lua:\n  shared:\n    seen: 0\n" MIN, 3, "lua.shared size");
    refused_at("lua:\n  shared: [seen]\n" MIN, 2, "lua.shared must be a mapping");
    refused_at(SEC "hooks:\n  t:\n    - plugin: p.so\n      timeout_ms: soon\n", 5, "timeout_ms");
    refused_at(SEC "hooks:\n  t:\n    - lua: a.lua\n      timeout: 5\n", 5,
               "unknown key 'timeout' in a handler of hooks.t");
    refused_at(SEC "hooks:\n  t: []\n  t: []\n", 4, "duplicate key 't'");
    refused_at(SEC "hooks:\n  t:\n    - plugin: p.so\n      config:\n        a: 1\n        a: 2\n",
               7, "duplicate key 'a'");
}

static void secrets_can_be_left_unread(void **state)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN];
    (void)state;
    put("hooks.yaml", "secrets:\n  - env: WH_TEST_UNSET\nhooks: {}\n");
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), -1);
    assert_int_equal(manifest_load_no_secrets(file, &cfg, err, sizeof err), 0);
    assert_int_equal(cfg->n_secrets, 1);
    assert_null(cfg->secrets[0].key);
    manifest_free(cfg);
    put("hooks.yaml", "secrets:\n  - vault: x\nhooks: {}\n"); /* entries are still checked */
    assert_int_equal(manifest_load_no_secrets(file, &cfg, err, sizeof err), -1);
}

static void missing_file(void **state)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN];
    (void)state;
    assert_int_equal(manifest_load("/nonexistent/hooks.yaml", &cfg, err, sizeof err), -1);
    assert_string_equal(err, "/nonexistent/hooks.yaml: cannot open: No such file or directory");
}

static void alias_bomb_is_bounded(void **state)
{
    /* each level doubles: 2^30 nodes if expanded; the loader stops at its budget */
    char yaml[4096], line[100];
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN] = "";
    (void)state;
    snprintf(yaml, sizeof yaml,
             SEC "hooks:\n  t:\n    - plugin: p.so\n      config:\n"
                 "        l0: &l0 [x, x]\n");
    for (int i = 1; i < 30; i++) {
        snprintf(line, sizeof line, "        l%d: &l%d [*l%d, *l%d]\n", i, i, i - 1, i - 1);
        strcat(yaml, line);
    }
    put("hooks.yaml", yaml);
    assert_int_equal(manifest_load(file, &cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "plugin config is nested too deeply or too large"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults),
        cmocka_unit_test(defaults_are_the_documented_ones),
        cmocka_unit_test(out_of_range_values_name_the_range),
        cmocka_unit_test(unknown_keys_list_the_known_ones_in_order),
        cmocka_unit_test(every_key),
        cmocka_unit_test(handler_timeout_overrides_the_lua_one),
        cmocka_unit_test(plugin_config_defaults_to_empty_object),
        cmocka_unit_test(refusals_top_level),
        cmocka_unit_test(refusals_server),
        cmocka_unit_test(refusals_secrets),
        cmocka_unit_test(refusals_headers_lua_delivery),
        cmocka_unit_test(console_token_rules),
        cmocka_unit_test(a_shared_spool_is_a_uri),
        cmocka_unit_test(refusals_hooks),
        cmocka_unit_test(secrets_can_be_left_unread),
        cmocka_unit_test(missing_file),
        cmocka_unit_test(alias_bomb_is_bounded),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
