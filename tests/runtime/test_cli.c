/* The command line of docs/operations.md: exit codes, sign's known answer, check's file:line,
 * serve's refusals. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "harness.h"

#define KA "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17\n"

static char dir[256], out[16384];

static int setup(void **state)
{
    (void)state;
    tmpdir_make(dir);
    file_write(dir, "body.txt", "Hello, World!");
    file_write(dir, "secret.key", TEST_SECRET "\n");
    file_write(dir, "good.yaml", "secrets: [{value: s}]\nhooks: {}\n");
    file_write(dir, "bad.yaml", "secrets: [{value: s}]\nhooks: {}\nserver:\n  threads: lots\n");
    file_write(dir, "bad-cert.pem", "not a certificate\n");
    file_write(dir, "tls.yaml",
               "server:\n  listen: [https://127.0.0.1:0]\n  tls:\n"
               "    certificate: bad-cert.pem\nsecrets: [{value: s}]\nhooks: {}\n");
    file_write(dir, "unset.yaml", "secrets:\n  - env: WH_CLI_UNSET\nhooks: {}\n");
    file_write(dir, "not-a-db.db", "not a database, but a file of text\n");
    file_write(dir, "spool-bad.yaml",
               "secrets: [{value: s}]\nhooks: {}\ndelivery:\n"
               "  mode: durable\n  spool: not-a-db.db\n");
    file_write(dir, "spool-nodir.yaml",
               "secrets: [{value: s}]\nhooks: {}\ndelivery:\n"
               "  mode: durable\n  spool: no/such/dir/s.db\n");
    /* shared spools: a URI libpq cannot parse; a database nobody answers for (a password in
     * both, never to be shown) */
    file_write(dir, "spool-pg-bad.yaml",
               "secrets: [{value: s}]\nhooks: {}\ndelivery:\n"
               "  mode: durable\n"
               "  spool: \"postgresql://u:pw-never-shown@/d?host=%zz\"\n");
    file_write(dir, "spool-pg-away.yaml",
               "secrets: [{value: s}]\nhooks: {}\ndelivery:\n"
               "  mode: durable\n  spool: \"postgresql://u:pw-never-shown"
               "@/d?host=/nonexistent/socket/dir\"\n");
    file_write(dir, "spool-new.yaml",
               "secrets: [{value: s}]\nhooks: {}\ndelivery:\n"
               "  mode: durable\n  spool: new.db\n");
    return 0;
}

static int cli(const char *stdin_data, char *const env[], ...)
{
    char *argv[16];
    int n = 0;
    va_list ap;
    argv[n++] = (char *)WAPPHOOK_BIN;
    va_start(ap, env);
    for (char *a; (a = va_arg(ap, char *)) && n < 15;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return run_cli(argv, env, stdin_data, out, sizeof out);
}

static char *in_dir(const char *name)
{
    return (char *)path_in(dir, name);
}

static void version_and_help(void **state)
{
    (void)state;
    assert_int_equal(cli(NULL, NULL, "version", NULL), 0);
    assert_non_null(strstr(out, "wapphook 0."));
    assert_int_equal(cli(NULL, NULL, "--version", NULL), 0);
    assert_int_equal(cli(NULL, NULL, "--help", NULL), 0);
    assert_non_null(strstr(out, "serve"));
    assert_non_null(strstr(out, "SIGHUP"));
    assert_int_equal(cli(NULL, NULL, "-h", NULL), 0);
}

static void usage_errors_exit_2(void **state)
{
    (void)state;
    assert_int_equal(cli(NULL, NULL, NULL), 2);
    assert_int_equal(cli(NULL, NULL, "frobnicate", NULL), 2);
    assert_non_null(strstr(out, "unknown command"));
    assert_int_equal(cli(NULL, NULL, "serve", "--bogus", NULL), 2);
    assert_int_equal(cli(NULL, NULL, "check", "-c", NULL), 2);
    assert_int_equal(cli(NULL, NULL, "serve", "--log-level", "loud", NULL), 2);
    assert_int_equal(cli(NULL, NULL, "serve", "--log-format", "xml", NULL), 2);
    assert_int_equal(cli(NULL, NULL, "sign", "--secret-env", "A", "--secret-file", "B", NULL), 2);
    assert_int_equal(cli(NULL, NULL, "sign", "a", "b", NULL), 2);
}

static void sign_known_answer(void **state)
{
    char *env[] = {"WAPPCLOUD_SECRET=" TEST_SECRET, "OTHER_SECRET=" TEST_SECRET, NULL};
    (void)state;
    assert_int_equal(cli(NULL, env, "sign", in_dir("body.txt"), NULL), 0);
    assert_string_equal(out, KA);
    assert_int_equal(cli("Hello, World!", env, "sign", NULL), 0);
    assert_string_equal(out, KA);
    assert_int_equal(cli("Hello, World!", env, "sign", "-", NULL), 0);
    assert_string_equal(out, KA);
    assert_int_equal(
        cli(NULL, env, "sign", "--secret-env", "OTHER_SECRET", in_dir("body.txt"), NULL), 0);
    assert_string_equal(out, KA);
    assert_int_equal(
        cli(NULL, NULL, "sign", "--secret-file", in_dir("secret.key"), in_dir("body.txt"), NULL),
        0);
    assert_string_equal(out, KA);
    /* a different body gives a different answer */
    assert_int_equal(cli("Hello, World?", env, "sign", NULL), 0);
    assert_string_not_equal(out, KA);
}

static void sign_refusals(void **state)
{
    char *env[] = {"WAPPCLOUD_SECRET=", NULL};
    (void)state;
    assert_int_equal(cli("x", env, "sign", NULL), 1);
    assert_non_null(strstr(out, "WAPPCLOUD_SECRET is unset or empty"));
    assert_int_equal(cli(NULL, NULL, "sign", "--secret-file", in_dir("nope.key"), NULL), 1);
    assert_int_equal(
        cli(NULL, NULL, "sign", "--secret-file", in_dir("secret.key"), in_dir("nope.txt"), NULL),
        1);
}

static void check_reports_file_and_line(void **state)
{
    char want[600];
    (void)state;
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("good.yaml"), NULL), 0);
    assert_non_null(strstr(out, ": ok"));
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("bad.yaml"), NULL), 1);
    snprintf(want, sizeof want, "%s:4: server.threads must be an integer", in_dir("bad.yaml"));
    assert_non_null(strstr(out, want));
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("missing.yaml"), NULL), 1);
    assert_non_null(strstr(out, "cannot open"));
    /* TLS material is loaded by check too, and blamed on its line */
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("tls.yaml"), NULL), 1);
    snprintf(want, sizeof want, "%s:4: server.tls.certificate", in_dir("tls.yaml"));
    assert_non_null(strstr(out, want));
    /* so is the durable spool: a file that is no database, a folder that does not exist */
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("spool-bad.yaml"), NULL), 1);
    snprintf(want, sizeof want, "%s:5: spool %s: file is not a database", in_dir("spool-bad.yaml"),
             in_dir("not-a-db.db"));
    assert_non_null(strstr(out, want));
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("spool-nodir.yaml"), NULL), 1);
    snprintf(want, sizeof want, "%s:5: spool %s: cannot create it in", in_dir("spool-nodir.yaml"),
             in_dir("no/such/dir/s.db"));
    assert_non_null(strstr(out, want));
    assert_int_equal(cli(NULL, NULL, "serve", "-c", in_dir("spool-nodir.yaml"), NULL), 1);
    snprintf(want, sizeof want, "%s:5: spool", in_dir("spool-nodir.yaml"));
    assert_non_null(strstr(out, want)); /* serve blames the same line */
    /* a shared spool's URI is checked by check, its database by serve, on the same line */
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("spool-pg-bad.yaml"), NULL), 1);
    snprintf(want, sizeof want,
             "%s:5: spool postgresql://u:***@/d?host=%%zz: ", in_dir("spool-pg-bad.yaml"));
    assert_non_null(strstr(out, want));
    assert_null(strstr(out, "pw-never-shown"));
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("spool-pg-away.yaml"), NULL), 0);
    assert_int_equal(cli(NULL, NULL, "serve", "-c", in_dir("spool-pg-away.yaml"), NULL), 1);
    snprintf(want, sizeof want, "%s:5: spool postgresql://u:***@/d?host=/nonexistent/socket/dir: ",
             in_dir("spool-pg-away.yaml"));
    assert_non_null(strstr(out, want));
    assert_null(strstr(out, "pw-never-shown"));
    assert_int_equal(cli(NULL, NULL, "spool", "stats", "-c", in_dir("spool-pg-away.yaml"), NULL),
                     1);
    assert_non_null(strstr(out, "spool postgresql://u:***@/d?host=/nonexistent/socket/dir: "));
    assert_null(strstr(out, "pw-never-shown"));
    /* a spool not made yet is fine, and check does not make it */
    assert_int_equal(cli(NULL, NULL, "check", "-c", in_dir("spool-new.yaml"), NULL), 0);
    assert_int_not_equal(access(in_dir("new.db"), F_OK), 0);
}

static void serve_refuses_a_missing_secret(void **state)
{
    char want[600];
    (void)state;
    assert_int_equal(cli(NULL, NULL, "serve", "-c", in_dir("unset.yaml"), NULL), 1);
    snprintf(want, sizeof want,
             "%s:2: secret from environment variable WH_CLI_UNSET: unset or empty",
             in_dir("unset.yaml"));
    assert_non_null(strstr(out, want));
}

static void serve_reports_a_busy_port(void **state)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t al = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char yaml[256];
    (void)state;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 1), 0);
    getsockname(fd, (struct sockaddr *)&a, &al);
    snprintf(yaml, sizeof yaml,
             "server:\n  listen: [http://127.0.0.1:%d]\nsecrets: [{value: s}]\nhooks: {}\n",
             ntohs(a.sin_port));
    file_write(dir, "busy.yaml", yaml);
    assert_int_equal(cli(NULL, NULL, "serve", "-c", in_dir("busy.yaml"), NULL), 1);
    assert_non_null(strstr(out, "cannot start"));
    assert_non_null(strstr(out, "Address already in use"));
    close(fd);
}

/* wapphook try (docs/handlers.md, "Try it without a sender"): the handlers of a type on a body, in
 * process, with their log lines; the endpoint's refusals; the shipped samples with the shipped
 * manifest. */
static void try_runs_the_handlers_on_a_body(void **state)
{
    char sample[512], manifest[512];
    (void)state;
    file_write(dir, "hello.lua",
               "function handle(e)\n"
               "  wapphook.log('info', 'hello ' .. e.payload.name .. ' ' .. e.type)\n"
               "end\n");
    file_write(dir, "fail.lua", "function handle(e) return false, 'not today' end\n");
    file_write(dir, "slow.lua", "function handle(e) while true do end end\n");
    /* a command that never reads the 4 MiB it is given: EPIPE, not the end of try */
    file_write(dir, "deaf.lua",
               "function handle(e)\n"
               "  local r = assert(wapphook.exec{argv = {'/bin/true'},\n"
               "                                 stdin = ('x'):rep(1 << 22)})\n"
               "  wapphook.log('info', 'exec returned ' .. r.code)\n"
               "end\n");
    file_write(dir, "try.yaml",
               "secrets:\n  - env: WH_CLI_UNSET\n"          /* never read by try */
               "server:\n  listen: [https://127.0.0.1:0]\n" /* nor TLS */
               "  tls: {certificate: no-such.pem}\n"
               "lua: {timeout_ms: 200}\n"
               "hooks:\n  greet:\n    - lua: hello.lua\n"
               "  bad:\n    - lua: hello.lua\n    - lua: fail.lua\n"
               "  loop:\n    - lua: slow.lua\n"
               "  deaf:\n    - lua: deaf.lua\n"
               "      timeout_ms: 5000\n" /* a fork and 4 MiB under ASan on a busy machine */
               "exec: {allow: [/bin/true]}\n");
    file_write(dir, "event.json", "{\"name\":\"Ada\"}");
    assert_int_equal(cli(NULL, NULL, "try", "-c", in_dir("try.yaml"), "--type", "greet",
                         in_dir("event.json"), NULL),
                     0);
    assert_non_null(strstr(out, "lua:hello.lua:handle  ok  "));
    assert_non_null(strstr(out, "hello Ada greet"));
    /* from stdin; one handler failing fails the run, and every handler still runs */
    assert_int_equal(
        cli("{\"name\":\"Bo\"}", NULL, "try", "-c", in_dir("try.yaml"), "--type", "bad", "-", NULL),
        1);
    assert_non_null(strstr(out, "hello Bo bad"));
    assert_non_null(strstr(out, "lua:fail.lua:handle  failed  "));
    assert_non_null(strstr(out, "not today"));
    /* the same budget as serve */
    assert_int_equal(cli("{}", NULL, "try", "-c", in_dir("try.yaml"), "--type", "loop", NULL), 1);
    assert_non_null(strstr(out, "timeout"));
    assert_int_equal(cli("{}", NULL, "try", "-c", in_dir("try.yaml"), "--type", "deaf", NULL), 0);
    assert_non_null(strstr(out, "exec returned 0"));
    /* what the endpoint would refuse */
    assert_int_equal(cli("[1]", NULL, "try", "-c", in_dir("try.yaml"), "--type", "greet", NULL), 1);
    assert_non_null(strstr(out, "400 body is not a JSON object"));
    assert_int_equal(cli("{\"a\":1,\"a\":2}", NULL, "try", "-c", in_dir("try.yaml"), NULL), 1);
    assert_non_null(strstr(out, "400 invalid JSON"));
    assert_int_equal(cli("{}", NULL, "try", "-c", in_dir("try.yaml"), "--type", "other", NULL), 0);
    assert_non_null(strstr(out, "no handler is registered for other"));
    assert_int_equal(cli("{}", NULL, "try", "--type", "two words", NULL), 2);
    assert_int_equal(cli("{}", NULL, "try", "-c", in_dir("try.yaml"), "--bogus", NULL), 2);
    assert_int_equal(cli(NULL, NULL, "try", "-c", in_dir("try.yaml"), in_dir("nope.json"), NULL),
                     1);
    /* the shipped samples through the shipped manifest's scripts */
    snprintf(sample, sizeof sample, "%s/scripts/samples/status_update.json", PROJECT_SOURCE_DIR);
    snprintf(manifest, sizeof manifest, "%s/try-shipped.yaml", dir);
    {
        char m[1024];
        snprintf(m, sizeof m,
                 "secrets: [{value: s}]\nlua:\n  path: %s/scripts/?.lua\n"
                 "  shared: {statuses: 1, replies: 1}\nhooks:\n"
                 "  status_update:\n    - lua: %s/scripts/status_update.lua\n"
                 "      function: on_status\n",
                 PROJECT_SOURCE_DIR, PROJECT_SOURCE_DIR);
        file_write(dir, "try-shipped.yaml", m);
    }
    assert_int_equal(
        cli(NULL, NULL, "try", "-c", manifest, "--type", "status_update", sample, NULL), 0);
    assert_non_null(strstr(out, "status_update.lua:on_status  ok  "));
}

/* The LuaLS definition file (contrib/luals/wapphook.lua) describes exactly the module and the
 * event a real handler gets: a Lua script run by try compares them key by key and type by type. */
static void lua_definitions_match_the_module(void **state)
{
    char m[1024], meta[600];
    char *env[] = {meta, NULL};
    (void)state;
    snprintf(meta, sizeof meta, "WH_LUALS_META=%s/contrib/luals/wapphook.lua", PROJECT_SOURCE_DIR);
    snprintf(m, sizeof m,
             "secrets: [{value: s}]\nlua: {sandbox: false, shared: {d: 1}}\nhooks:\n"
             "  t:\n    - lua: %s/tests/runtime/lua/luals_same.lua\n",
             PROJECT_SOURCE_DIR);
    file_write(dir, "luals.yaml", m);
    assert_int_equal(cli("{\"a\":1}", env, "try", "-c", in_dir("luals.yaml"), "--type", "t", NULL),
                     0);
    assert_non_null(strstr(out, "definitions match the module"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_and_help),
        cmocka_unit_test(try_runs_the_handlers_on_a_body),
        cmocka_unit_test(lua_definitions_match_the_module),
        cmocka_unit_test(usage_errors_exit_2),
        cmocka_unit_test(sign_known_answer),
        cmocka_unit_test(sign_refusals),
        cmocka_unit_test(check_reports_file_and_line),
        cmocka_unit_test(serve_refuses_a_missing_secret),
        cmocka_unit_test(serve_reports_a_busy_port),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
