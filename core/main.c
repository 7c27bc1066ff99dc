/*
 * wapphook: command line, signals, start and stop. See `wapphook --help`.
 * Signals are blocked in every thread before civetweb starts; the main thread takes them
 * with sigwait(), so handlers never run in signal context.
 */
#include "http/http.h"
#include "base/base.h"
#include "runtime/runtime.h"
#include "lua/wl.h"
#include "conf/conf.h"
#include "spool/spool.h"

#include <civetweb.h>
#include <jansson.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIGN_MAX_BYTES (1LL << 30)
/* how long a READY/RELOADING/STOPPING notification may wait for systemd to read it */
#define NOTIFY_WAIT_MS 1000

static const char usage_text[] =
    "usage: wapphook COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  serve [-c FILE]        run the server (FILE defaults to ./hooks.yaml)\n"
    "  check [-c FILE]        load everything serve would and stop: exit 0 if it would\n"
    "                         start, 1 with \"FILE:LINE: reason\" if not\n"
    "  sign [--secret-env VAR | --secret-file F] [FILE|-]\n"
    "                         print \"sha256=<hex>\" for the bytes of FILE (default: stdin),\n"
    "                         keyed with $VAR (default WAPPCLOUD_SECRET) or the file F\n"
    "                         (one trailing newline stripped)\n"
    "  try [-c FILE] [--type TYPE] [EVENT.json|-]\n"
    "  try [-c FILE] --event ID\n"
    "                         run the handlers registered for TYPE (default\n"
    "                         incoming_message) on the JSON body in EVENT.json (default:\n"
    "                         stdin), in this process, as serve would after verifying it;\n"
    "                         print each one's outcome, duration and log lines; exit 0 if\n"
    "                         all succeeded, 1 if one failed or the body would be refused\n"
    "  spool stats|list [--dead]|replay ID...|--dead|purge --delivered [--older-than D]\n"
    "                         [-c FILE]: the durable spool (delivery.mode: durable)\n"
    "  version, --version     print the version\n"
    "  help, -h, --help       print this text\n"
    "\n"
    "options of serve and check:\n"
    "  -c, --config FILE      the manifest (default ./hooks.yaml)\n"
    "  --log-format json|text logs on stderr: JSON lines (default) or text for people\n"
    "  --log-level LEVEL      debug, info (default), warn or error\n"
    "\n"
    "signals (serve):\n"
    "  SIGTERM, SIGINT        stop accepting at once, let requests in flight finish (at\n"
    "                         most server.shutdown_timeout_ms, else exit 1), exit 0\n"
    "  SIGHUP                 reload: build everything from the manifest again and switch\n"
    "                         to it only if all of it loaded; requests in flight finish on\n"
    "                         the old configuration; server.*, delivery.mode, .spool and\n"
    "                         .workers changes need a restart\n"
    "\n"
    "\n"
    "systemd: with Type=notify, READY=1 is sent once listening, RELOADING=1 / READY=1\n"
    "around each reload, STOPPING=1 on stop.\n"
    "\n"
    "exit codes: 0 success, 1 configuration or runtime error (check, try: refused or\n"
    "failed), 2 usage error, 3 the durable spool's fsync failed (the spool file is not\n"
    "trusted after it; restart to recover from what is on disk)\n";

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "wapphook: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun 'wapphook --help' for usage.\n");
    return WH_EXIT_USAGE;
}

struct opts {
    const char *config;
    const char *secret_env;
    const char *secret_file;
    const char *input;
    const char *type; /* try */
    long long event;  /* try --event: an event of the spool */
    enum log_format log_format;
    enum log_level log_level;
};

static int parse_opts(int argc, char **argv, const char *cmd, struct opts *o)
{
    int is_sign = strcmp(cmd, "sign") == 0, is_try = strcmp(cmd, "try") == 0;

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;

        if (!is_sign && (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0)) {
            if (!next) return usage_error("%s needs a file", a);
            o->config = argv[++i];
        } else if (!is_sign && strcmp(a, "--log-format") == 0) {
            if (!next || log_parse_format(next, &o->log_format))
                return usage_error("--log-format takes json or text");
            i++;
        } else if (!is_sign && strcmp(a, "--log-level") == 0) {
            if (!next || log_parse_level(next, &o->log_level))
                return usage_error("--log-level takes debug, info, warn or error");
            i++;
        } else if (is_sign && strcmp(a, "--secret-env") == 0) {
            if (!next || o->secret_file)
                return usage_error("--secret-env takes a variable name and excludes "
                                   "--secret-file");
            o->secret_env = argv[++i];
        } else if (is_sign && strcmp(a, "--secret-file") == 0) {
            if (!next || o->secret_env)
                return usage_error("--secret-file takes a file and excludes --secret-env");
            o->secret_file = argv[++i];
        } else if (is_try && strcmp(a, "--type") == 0) {
            if (!next || !manifest_event_type_valid(next, strlen(next)))
                return usage_error("--type takes an event type ([A-Za-z0-9_.:-]{1,64})");
            o->type = argv[++i];
        } else if (is_try && strcmp(a, "--event") == 0) {
            char *end;
            if (!next || (o->event = strtoll(next, &end, 10)) <= 0 || *end)
                return usage_error("--event takes an event id of the spool");
            i++;
        } else if ((is_sign || is_try) && (a[0] != '-' || strcmp(a, "-") == 0) && !o->input) {
            o->input = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
    }
    return 0;
}

static unsigned char *read_all(FILE *f, size_t *len, long long max)
{
    size_t cap = 65536, n = 0;
    unsigned char *buf = malloc(cap);

    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if ((long long)n > max) {
            free(buf);
            return NULL;
        }
        if (r == 0) break;
        if (n == cap) {
            unsigned char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf && ferror(f)) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int cmd_sign(const struct opts *o)
{
    unsigned char *key = NULL, *data;
    size_t key_len = 0, len;
    char hex[2 * WH_MAC_LEN + 1];
    FILE *in = stdin;
    int rc = WH_EXIT_CONFIG;

    if (o->secret_file) {
        FILE *f = fopen(o->secret_file, "rb");
        if (!f) {
            fprintf(stderr, "wapphook: %s: %s\n", o->secret_file, strerror(errno));
            return WH_EXIT_CONFIG;
        }
        key = read_all(f, &key_len, 65536);
        fclose(f);
        if (key && key_len > 0 && key[key_len - 1] == '\n') key_len--;
    } else {
        const char *var = o->secret_env ? o->secret_env : "WAPPCLOUD_SECRET";
        const char *e = getenv(var);
        if (e && *e) {
            key_len = strlen(e);
            key = (unsigned char *)wh_xstrdup(e);
        } else {
            fprintf(stderr, "wapphook: environment variable %s is unset or empty\n", var);
            return WH_EXIT_CONFIG;
        }
    }
    if (!key || key_len == 0) {
        fprintf(stderr, "wapphook: the secret is empty or unreadable\n");
        goto out;
    }
    if (o->input && strcmp(o->input, "-") != 0) {
        in = fopen(o->input, "rb");
        if (!in) {
            fprintf(stderr, "wapphook: %s: %s\n", o->input, strerror(errno));
            goto out;
        }
    }
    data = read_all(in, &len, SIGN_MAX_BYTES);
    if (in != stdin) fclose(in);
    if (!data) {
        fprintf(stderr, "wapphook: cannot read the input\n");
        goto out;
    }
    if (signature_hmac_hex(key, key_len, data, len, hex) == 0) {
        printf("sha256=%s\n", hex);
        rc = 0;
    }
    free(data);
out:
    if (key) OPENSSL_cleanse(key, key_len);
    free(key);
    return rc;
}

/* Everything serve would load: manifest, secrets, TLS material, scripts (top level run),
 * plugins (created). */
static int load(const struct opts *o, struct generation **g)
{
    char err[WH_ERR_LEN * 4];

    if (generation_build(o->config, 1, g, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return WH_EXIT_CONFIG;
    }
    return 0;
}

/* wapphook try: the handlers of one event type on one body, in this process (docs/handlers.md, "Try
 * it without a sender"). */
static int try_hook(const struct generation *g, const struct bound_hook *hook,
                    const struct wh_event *ev, int *ran)
{
    static char lines[65536];
    int failed = 0;

    for (size_t i = 0; hook && i < hook->n; i++) {
        const struct bound_handler *b = &hook->handlers[i];
        char err[4096] = "";
        size_t n = 0;
        double t0 = wh_mono_ms_f(), took;
        int rc;

        log_capture(lines, sizeof lines, &n);
        rc = dispatch_handler(g, b, ev, err, sizeof err, NULL);
        log_capture(NULL, 0, NULL);
        took = wh_mono_ms_f() - t0;
        (*ran)++;
        failed |= rc != 0;
        printf("%s  %s  %.2f ms%s%s\n", b->name, rc ? "failed" : "ok", took, rc ? ": " : "",
               rc ? err : "");
        for (char *p = lines, *e; p < lines + n; p = e + 1) {
            e = memchr(p, '\n', (size_t)(lines + n - p));
            if (!e) e = lines + n;
            printf("    %.*s\n", (int)(e - p), p);
        }
    }
    return failed;
}

/* try --event: the stored event's type, body and headers */
struct stored {
    char *type, *headers;
    unsigned char *body;
    size_t len;
};

static void stored_copy(void *arg, const struct store_detail *d)
{
    struct stored *st = arg;

    st->type = wh_xstrdup(d->e.type);
    st->headers = wh_xstrdup(d->headers_json ? d->headers_json : "{}");
    if ((st->body = malloc(d->body_len + 1)) != NULL) {
        memcpy(st->body, d->body, d->body_len);
        st->body[d->body_len] = '\0';
        st->len = d->body_len;
    }
}

/* Reads event o->event from the manifest's spool into st: 0, or an exit code. */
static int try_load_event(const struct opts *o, struct stored *st)
{
    struct wh_config *cfg;
    struct spool_admin *a = NULL;
    char err[WH_ERR_LEN];
    int rc;

    if (manifest_load_no_secrets(o->config, &cfg, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return WH_EXIT_CONFIG;
    }
    if (cfg->delivery_mode != WH_DELIVERY_DURABLE) {
        fprintf(stderr, "%s: --event reads the spool: delivery.mode is not durable\n", cfg->file);
        manifest_free(cfg);
        return WH_EXIT_USAGE;
    }
    if (spool_admin_open(cfg, &a, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        manifest_free(cfg);
        return WH_EXIT_CONFIG;
    }
    rc = spool_admin_detail(a, o->event, stored_copy, st);
    if (rc == -2)
        fprintf(stderr, "--event is not available on this spool\n");
    else if (rc < 0)
        fprintf(stderr, "spool: %s\n", spool_admin_error(a));
    else if (rc == 0)
        fprintf(stderr,
                "no event %lld in the spool (delivered events leave it after "
                "delivery.keep_delivered_s)\n",
                o->event);
    spool_admin_close(a);
    manifest_free(cfg);
    if (rc == 1 && !st->body) {
        fprintf(stderr, "out of memory\n");
        return WH_EXIT_CONFIG;
    }
    return rc == 1 ? 0 : rc == 0 || rc == -2 ? WH_EXIT_USAGE : WH_EXIT_CONFIG;
}

static int cmd_try(const struct opts *o)
{
    struct generation *g;
    char err[WH_ERR_LEN];
    const char *type = o->type ? o->type : "incoming_message";
    FILE *f = !o->input || strcmp(o->input, "-") == 0 ? stdin : fopen(o->input, "rb");
    size_t len = 0;
    unsigned char *body;
    enum json_text_kind kind;
    const struct bound_hook *own;
    int ran = 0, failed = 0;

    struct stored st = {0};
    struct wh_header h[64];
    json_t *hdrs = NULL;
    int nh = 0;

    if (o->event) {
        int rc;
        if (f && f != stdin) fclose(f);
        if (o->input || o->type) return usage_error("--event takes no EVENT.json and no --type");
        if ((rc = try_load_event(o, &st)) != 0) return rc;
        type = st.type;
        body = st.body;
        len = st.len;
        hdrs = json_loads(st.headers, 0, NULL);
        {
            const char *k;
            json_t *v;
            json_object_foreach(hdrs, k, v) if (nh < 64 && json_is_string(v))
            {
                h[nh].name = k;
                h[nh++].value = json_string_value(v);
            }
        }
        printf("event %lld (%s), from the spool\n", o->event, type);
    } else {
        if (!f) {
            fprintf(stderr, "%s: %s\n", o->input, strerror(errno));
            return WH_EXIT_CONFIG;
        }
        body = read_all(f, &len, 1LL << 30);
        if (f != stdin) fclose(f);
    }
    if (!body) {
        fprintf(stderr, "cannot read the event body\n");
        return WH_EXIT_CONFIG;
    }
    body[len] = '\0'; /* read_all leaves room */
    if (generation_build_no_secrets(o->config, &g, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        free(body);
        free(st.type);
        free(st.headers);
        json_decref(hdrs);
        return WH_EXIT_CONFIG;
    }
    /* the endpoint's checks after the signature, with its answers */
    if ((long long)len > g->cfg->max_body_bytes) {
        printf("refused: 413 body larger than server.max_body_bytes\n");
        failed = 1;
    } else if ((kind = json_text_check((char *)body, len)) != JSON_TEXT_OBJECT) {
        printf("refused: 400 %s\n",
               kind == JSON_TEXT_OTHER ? "body is not a JSON object" : "invalid JSON");
        failed = 1;
    } else {
        struct wh_event ev = {.type = type,
                              .body = (char *)body,
                              .body_len = len,
                              .received_at = wh_now_s(),
                              .headers = h,
                              .n_headers = nh,
                              .id = o->event,
                              .seq = o->event ? 0 : wh_event_next_seq()};
        own = generation_hook(g, type);
        if (own != g->any) failed |= try_hook(g, own, &ev, &ran);
        failed |= try_hook(g, g->any, &ev, &ran);
        if (!ran) printf("no handler is registered for %s: the endpoint answers 200\n", type);
    }
    generation_release(g);
    free(body);
    free(st.type);
    free(st.headers);
    json_decref(hdrs);
    return failed ? WH_EXIT_CONFIG : 0;
}

static int cmd_check(const struct opts *o)
{
    struct generation *g;
    const struct wh_config *cfg;
    size_t handlers = 0;

    if (load(o, &g)) return WH_EXIT_CONFIG;
    cfg = g->cfg;
    if (cfg->delivery_mode == WH_DELIVERY_DURABLE) {
        char err[WH_ERR_LEN];
        if (spool_check(cfg, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            generation_release(g);
            return WH_EXIT_CONFIG;
        }
    }
    for (size_t i = 0; i < cfg->n_hooks; i++)
        handlers += cfg->hooks[i].n_handlers;
    printf("%s: ok\n", cfg->file);
    for (size_t i = 0; i < cfg->n_listeners; i++)
        printf("  listen  %s\n", cfg->listeners[i].url);
    printf("  path    %s\n", cfg->path);
    printf("  secrets %zu\n", cfg->n_secrets);
    for (size_t i = 0; i < cfg->n_hooks; i++) {
        printf("  hook    %s:", g->hooks[i].type);
        for (size_t j = 0; j < g->hooks[i].n; j++)
            printf(" %s", g->hooks[i].handlers[j].name);
        printf("%s\n", g->hooks[i].n ? "" : " (accepted, no handler)");
    }
    printf("  %zu event type(s), %zu handler(s)\n", cfg->n_hooks, handlers);
    generation_release(g);
    return 0;
}

/* SIGHUP: a complete new generation or nothing. Runs on the signal thread, so reloads
 * never overlap; a SIGHUP arriving meanwhile stays pending and starts one more build after
 * this one, so the newest files are always picked up. */
static void reload(struct server *srv, struct admin *adm, const struct opts *o,
                   const struct generation *start, unsigned long *generation)
{
    char err[WH_ERR_LEN * 4], changed[512];
    struct timespec t0, t1;
    struct generation *g;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    systemd_notify("RELOADING=1", NOTIFY_WAIT_MS);
    if (generation_build(o->config, *generation + 1, &g, err, sizeof err)) {
        metrics_reload(0); /* counted before it is logged: a log reader can scrape it */
        systemd_notify("READY=1", NOTIFY_WAIT_MS);
        log_msg(LOG_ERROR, "reload refused: the running configuration keeps serving",
                LOG_S("error", err), LOG_I("generation", *generation));
        return;
    }
    if (manifest_server_diff(start->cfg, g->cfg, changed, sizeof changed) > 0)
        log_msg(LOG_WARN, "settings changed: they apply after a restart", LOG_S("keys", changed));
    server_set_generation(srv, g);
    admin_set_generation(adm, g); /* the console's token, handlers, history size */
    metrics_reload(1);
    systemd_notify("READY=1", NOTIFY_WAIT_MS);
    *generation = g->id;
    generation_release(g);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    log_msg(LOG_INFO, "reloaded", LOG_I("generation", *generation),
            LOG_D("duration_ms",
                  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6));
}

static int cmd_serve(const struct opts *o)
{
    struct generation *g;
    struct server *srv;
    struct admin *adm = NULL;
    char err[WH_ERR_LEN];
    unsigned long generation;
    int timeout_ms, rc;
    sigset_t set;
    int sig;

    /* Before any thread exists, so every thread inherits the mask. */
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    /* first: the LISTEN_* variables must be gone before a plugin or a script could spawn */
    if (activation_take(err, sizeof err) < 0) {
        log_msg(LOG_ERROR, "cannot start", LOG_S("error", err));
        return WH_EXIT_CONFIG;
    }
    if (load(o, &g)) {
        log_msg(LOG_ERROR, "configuration refused", LOG_S("file", o->config));
        return WH_EXIT_CONFIG;
    }
    mg_init_library(MG_FEATURES_TLS | MG_FEATURES_IPV6);
    if (stuck_start() != 0) log_msg(LOG_WARN, "cannot start the stuck-handler monitor");
    srv = NULL;
    if (server_start(g, &srv, err, sizeof err) ||
        (g->cfg->admin && admin_start(g, srv, &adm, err, sizeof err))) {
        log_msg(LOG_ERROR, "cannot start", LOG_S("error", err));
        server_stop(srv, 0);
        stuck_stop();
        generation_release(g);
        mg_exit_library();
        return WH_EXIT_CONFIG;
    }
    activation_finish();
    log_msg(LOG_INFO, "started", LOG_S("version", WAPPHOOK_VERSION), LOG_S("config", g->cfg->file),
            LOG_I("threads", g->cfg->threads), LOG_I("generation", g->id));
    generation = g->id;
    timeout_ms = g->cfg->shutdown_timeout_ms;
    /* from here on only its settings, to compare reloads with: its plugins, states and
     * dictionaries go once a reload replaces it */
    generation_pin_config(g);
    generation_release(g);
    systemd_notify("READY=1", NOTIFY_WAIT_MS);
    for (;;) {
        if (sigwait(&set, &sig) != 0) continue;
        if (sig != SIGHUP) break;
        reload(srv, adm, o, g, &generation);
    }
    generation_unpin_config(g); /* the server holds its own */
    log_msg(LOG_INFO, "stopping", LOG_S("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"),
            LOG_I("timeout_ms", timeout_ms));
    systemd_notify("STOPPING=1", NOTIFY_WAIT_MS);
    rc = server_stop(srv, timeout_ms);
    if (rc != 0) {
        log_msg(LOG_ERROR,
                rc == -1 ? "requests still running after server.shutdown_timeout_ms; exiting"
                         : "deliveries still running after server.shutdown_timeout_ms; "
                           "exiting (they run again after a restart)",
                LOG_I("timeout_ms", timeout_ms));
        _exit(WH_EXIT_CONFIG); /* no teardown under running handlers: the OS reclaims it all */
    }
    admin_stop(adm); /* last: health and metrics stay visible while draining */
    stuck_stop();
    mg_exit_library();
    log_msg(LOG_INFO, "stopped");
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = {.config = "hooks.yaml", .log_format = LOG_JSON, .log_level = LOG_INFO};
    const char *cmd = argc > 1 ? argv[1] : NULL;
    int rc;

    /* the commands that run handlers (serve, try, check's top levels): a command that
     * stops reading its stdin, or a peer that closes, must fail a write, not end the
     * process. The others keep the default, so `wapphook spool list | head` just ends. */
    if (cmd && (!strcmp(cmd, "serve") || !strcmp(cmd, "try") || !strcmp(cmd, "check")))
        signal(SIGPIPE, SIG_IGN);
    if (!cmd) {
        fputs(usage_text, stderr);
        return WH_EXIT_USAGE;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("wapphook %s (civetweb %s, %s)\n", WAPPHOOK_VERSION, mg_version(),
               OpenSSL_version(OPENSSL_VERSION));
        return 0;
    }
    if (!strcmp(cmd, "spool")) {
        /* spool SUB [args] [-c FILE]: -c may come anywhere after SUB */
        const char *config = "hooks.yaml";
        char *rest[64];
        int n = 0;
        for (int i = 2; i < argc && n < 63; i++) {
            if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
                if (i + 1 >= argc) return usage_error("%s needs a file", argv[i]);
                config = argv[++i];
            } else {
                rest[n++] = argv[i];
            }
        }
        rest[n] = NULL;
        log_setup(LOG_TEXT, LOG_WARN);
        return spool_cli(config, n, rest);
    }
    if (strcmp(cmd, "serve") && strcmp(cmd, "check") && strcmp(cmd, "sign") && strcmp(cmd, "try"))
        return usage_error("unknown command '%s'", cmd);
    rc = parse_opts(argc, argv, cmd, &o);
    if (rc) return rc;
    /* try reports the lines each handler logged: text, for people */
    log_setup(strcmp(cmd, "try") == 0 ? LOG_TEXT : o.log_format, o.log_level);
    metrics_init();
    {
        char why[256];
        if (wl_http_global_init(why, sizeof why) != 0)
            log_msg(LOG_WARN, "wapphook.http", LOG_S("warning", why));
    }
    if (!strcmp(cmd, "sign"))
        rc = cmd_sign(&o);
    else if (!strcmp(cmd, "check"))
        rc = cmd_check(&o);
    else if (!strcmp(cmd, "try"))
        rc = cmd_try(&o);
    else
        rc = cmd_serve(&o);
    wl_http_global_cleanup();
    return rc;
}
