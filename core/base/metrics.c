#include "metrics.h"

#include "alloc.h"

#include "buf.h"

#include "shared_dict.h"
#include "shed.h"

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADD(x) __atomic_add_fetch(&(x), 1, __ATOMIC_RELAXED)
#define GET(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* Handler latency buckets, seconds: 50 us to 5 s. */
static const double bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5};
#define N_BOUNDS (sizeof bounds / sizeof bounds[0])

static const int codes[] = {200, 400, 401, 404, 405, 408, 413, 415, 500, 503};
#define N_CODES (sizeof codes / sizeof codes[0])
static const char *const methods[] = {"GET", "POST", "other"};

struct event_series {
    struct event_series *next;
    char *type;
    unsigned long long n[3]; /* by enum event_result */
};

struct handler_series {
    struct handler_series *next;
    char *name;
    unsigned long long buckets[N_BOUNDS]; /* non-cumulative; summed when rendered */
    unsigned long long count, failed;
    unsigned long long sum_ns;
    unsigned long long deliveries[3];    /* durable mode: ok, failed, dead */
    unsigned long long exec[MX_RESULTS]; /* commands run by this handler, by result */
    unsigned long long http[MH_RESULTS]; /* its outbound requests, by result */
};

static struct {
    pthread_mutex_t mu;                          /* registration and rendering only */
    unsigned long long requests[3][N_CODES + 1]; /* last column: any other code */
    unsigned long long signature_failures, lua_timeouts, lua_memory, reloads[2];
    unsigned long generation;
    long connections;
    int stuck;
    struct event_series other, *events;
    struct handler_series *handlers;
    int durable;
    long long spool_pending, spool_dead;
    long long history_bytes; /* -1: no history (durable mode, or console.history 0) */
    unsigned long long duplicates;
    struct handler_series commit; /* spool commit latency */
} m = {.mu = PTHREAD_MUTEX_INITIALIZER, .history_bytes = -1};

void metrics_init(void)
{
    m.other.type = "other";
}

struct event_series *metrics_other_events(void)
{
    return &m.other;
}

struct event_series *metrics_event_series(const char *type)
{
    struct event_series *s;

    pthread_mutex_lock(&m.mu);
    for (s = m.events; s && strcmp(s->type, type) != 0; s = s->next)
        ;
    if (!s) {
        s = wh_xcalloc(1, sizeof *s);
        s->type = wh_xstrdup(type);
        s->next = m.events;
        m.events = s;
    }
    pthread_mutex_unlock(&m.mu);
    return s;
}

struct handler_series *metrics_handler_series(const char *name)
{
    struct handler_series *s;

    pthread_mutex_lock(&m.mu);
    for (s = m.handlers; s && strcmp(s->name, name) != 0; s = s->next)
        ;
    if (!s) {
        s = wh_xcalloc(1, sizeof *s);
        s->name = wh_xstrdup(name);
        s->next = m.handlers;
        m.handlers = s;
    }
    pthread_mutex_unlock(&m.mu);
    return s;
}

void metrics_request(const char *method, int status)
{
    int mi = strcmp(method, "GET") == 0 ? 0 : strcmp(method, "POST") == 0 ? 1 : 2;
    size_t ci = N_CODES;

    for (size_t i = 0; i < N_CODES; i++)
        if (codes[i] == status) ci = i;
    ADD(m.requests[mi][ci]);
}

void metrics_signature_failure(void)
{
    ADD(m.signature_failures);
}

void metrics_connections(long open)
{
    __atomic_store_n(&m.connections, open, __ATOMIC_RELAXED);
}

void metrics_event(struct event_series *s, enum event_result r)
{
    ADD(s->n[r]);
}

void metrics_handler(struct handler_series *s, double seconds, int ok)
{
    size_t b = 0;

    while (b < N_BOUNDS && seconds > bounds[b])
        b++;
    if (b < N_BOUNDS) ADD(s->buckets[b]);
    ADD(s->count);
    if (!ok) ADD(s->failed);
    __atomic_add_fetch(&s->sum_ns, (unsigned long long)(seconds * 1e9), __ATOMIC_RELAXED);
}

static __thread struct handler_series *current_handler;

void metrics_set_current_handler(struct handler_series *s)
{
    current_handler = s;
}

void metrics_exec(enum metrics_exec_result r)
{
    if (current_handler) ADD(current_handler->exec[r]);
}

void metrics_http(int r)
{
    if (current_handler && r >= 0 && r < MH_RESULTS) ADD(current_handler->http[r]);
}

void metrics_lua_timeout(void)
{
    ADD(m.lua_timeouts);
}

void metrics_lua_memory_error(void)
{
    ADD(m.lua_memory);
}

void metrics_reload(int ok)
{
    ADD(m.reloads[ok ? 0 : 1]);
}

void metrics_history_bytes(long long bytes)
{
    __atomic_store_n(&m.history_bytes, bytes, __ATOMIC_RELAXED);
}

void metrics_spool(long long pending, long long dead)
{
    __atomic_store_n(&m.durable, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&m.spool_pending, pending, __ATOMIC_RELAXED);
    __atomic_store_n(&m.spool_dead, dead, __ATOMIC_RELAXED);
}

void metrics_spool_commit(double seconds)
{
    metrics_handler(&m.commit, seconds, 1);
}

void metrics_delivery(const char *handler, int result)
{
    ADD(metrics_handler_series(handler)->deliveries[result]);
}

void metrics_duplicate(void)
{
    ADD(m.duplicates);
}

void metrics_set_generation(unsigned long g)
{
    __atomic_store_n(&m.generation, g, __ATOMIC_RELAXED);
}

void metrics_set_stuck(int n)
{
    __atomic_store_n(&m.stuck, n, __ATOMIC_RELAXED);
}

unsigned long metrics_generation(void)
{
    return GET(m.generation);
}

/* --- rendering ---------------------------------------------------------------------------- */

/* Label values: backslash, double quote and newline escaped, as the format requires. */
static void label(struct wh_buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            buf_printf(b, "\\\\");
        else if (*v == '"')
            buf_printf(b, "\\\"");
        else if (*v == '\n')
            buf_printf(b, "\\n");
        else
            buf_add(b, v, 1);
    }
}

static void head(struct wh_buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void event_lines(struct wh_buf *b, const struct event_series *s)
{
    static const char *const results[] = {"ok", "failed", "unrouted"};

    for (int r = 0; r < 3; r++) {
        buf_printf(b, "wapphook_events_total{type=\"");
        label(b, s->type);
        buf_printf(b, "\",result=\"%s\"} %llu\n", results[r], GET(s->n[r]));
    }
}

/* One histogram: cumulative buckets, +Inf, sum and count; labelled by handler if named. */
static void histogram(struct wh_buf *b, const char *metric, const struct handler_series *s)
{
    unsigned long long cum = 0;

    for (size_t i = 0; i <= N_BOUNDS; i++) {
        cum = i < N_BOUNDS ? cum + GET(s->buckets[i]) : GET(s->count);
        buf_printf(b, "%s_bucket{", metric);
        if (s->name) {
            buf_printf(b, "handler=\"");
            label(b, s->name);
            buf_printf(b, "\",");
        }
        if (i < N_BOUNDS)
            buf_printf(b, "le=\"%g\"} %llu\n", bounds[i], cum);
        else
            buf_printf(b, "le=\"+Inf\"} %llu\n", cum);
    }
    buf_printf(b, "%s_sum", metric);
    if (s->name) {
        buf_printf(b, "{handler=\"");
        label(b, s->name);
        buf_printf(b, "\"}");
    }
    buf_printf(b, " %.9f\n%s_count", (double)GET(s->sum_ns) / 1e9, metric);
    if (s->name) {
        buf_printf(b, "{handler=\"");
        label(b, s->name);
        buf_printf(b, "\"}");
    }
    buf_printf(b, " %llu\n", GET(s->count));
}

/* Per-handler counters by result (the array at `offset` in each series), for the handlers
 * that have any: most never make a call. */
static void handler_results(struct wh_buf *b, const char *metric, size_t offset,
                            const char *const *names, int n)
{
    for (const struct handler_series *s = m.handlers; s; s = s->next) {
        const unsigned long long *c = (const void *)((const char *)s + offset);
        unsigned long long any = 0;
        for (int r = 0; r < n; r++)
            any += GET(c[r]);
        for (int r = 0; any && r < n; r++) {
            buf_printf(b, "%s{handler=\"", metric);
            label(b, s->name);
            buf_printf(b, "\",result=\"%s\"} %llu\n", names[r], GET(c[r]));
        }
    }
}

static void shared_bytes_line(const char *name, size_t bytes, unsigned long long ev, void *arg)
{
    (void)ev;
    buf_printf(arg, "wapphook_shared_bytes{dict=\"");
    label(arg, name);
    buf_printf(arg, "\"} %zu\n", bytes);
}

static void shared_evictions_line(const char *name, size_t bytes, unsigned long long ev, void *arg)
{
    (void)bytes;
    buf_printf(arg, "wapphook_shared_evictions_total{dict=\"");
    label(arg, name);
    buf_printf(arg, "\"} %llu\n", ev);
}

char *metrics_render(size_t *len)
{
    struct wh_buf b = {0};

    pthread_mutex_lock(&m.mu);
    head(&b, "wapphook_requests_total", "counter",
         "HTTP requests answered on the public endpoint.");
    for (int mi = 0; mi < 3; mi++) {
        for (size_t ci = 0; ci <= N_CODES; ci++) {
            unsigned long long v = GET(m.requests[mi][ci]);
            if (!v && ci == N_CODES) continue;
            if (ci < N_CODES)
                buf_printf(&b, "wapphook_requests_total{method=\"%s\",code=\"%d\"} %llu\n",
                           methods[mi], codes[ci], v);
            else
                buf_printf(&b, "wapphook_requests_total{method=\"%s\",code=\"other\"} %llu\n",
                           methods[mi], v);
        }
    }
    head(&b, "wapphook_signature_failures_total", "counter",
         "POSTs refused with 401: signature missing, malformed or matching no secret.");
    buf_printf(&b, "wapphook_signature_failures_total %llu\n", GET(m.signature_failures));
    head(&b, "wapphook_rejected_total", "counter",
         "Requests and connections refused for load or hostility, by reason.");
    for (int r = 0; r < REJECT_REASONS; r++)
        buf_printf(&b, "wapphook_rejected_total{reason=\"%s\"} %llu\n", shed_reason_name(r),
                   shed_count(r));
    head(&b, "wapphook_connections", "gauge", "Open connections on the public listeners.");
    buf_printf(&b, "wapphook_connections %ld\n", GET(m.connections));
    head(&b, "wapphook_events_total", "counter",
         "Verified events by type (types no manifest names count as \"other\") and result.");
    for (const struct event_series *s = m.events; s; s = s->next)
        event_lines(&b, s);
    event_lines(&b, &m.other);
    head(&b, "wapphook_handler_duration_seconds", "histogram", "Time one handler call took.");
    for (const struct handler_series *s = m.handlers; s; s = s->next)
        histogram(&b, "wapphook_handler_duration_seconds", s);
    head(&b, "wapphook_handler_failures_total", "counter", "Handler calls that failed.");
    for (const struct handler_series *s = m.handlers; s; s = s->next) {
        buf_printf(&b, "wapphook_handler_failures_total{handler=\"");
        label(&b, s->name);
        buf_printf(&b, "\"} %llu\n", GET(s->failed));
    }
    head(&b, "wapphook_reloads_total", "counter", "Reloads (SIGHUP) by result.");
    buf_printf(&b, "wapphook_reloads_total{result=\"ok\"} %llu\n", GET(m.reloads[0]));
    buf_printf(&b, "wapphook_reloads_total{result=\"failed\"} %llu\n", GET(m.reloads[1]));
    head(&b, "wapphook_config_generation", "gauge", "The generation serving new requests.");
    buf_printf(&b, "wapphook_config_generation %lu\n", GET(m.generation));
    head(&b, "wapphook_lua_timeouts_total", "counter", "Lua calls stopped at lua.timeout_ms.");
    buf_printf(&b, "wapphook_lua_timeouts_total %llu\n", GET(m.lua_timeouts));
    head(&b, "wapphook_lua_memory_errors_total", "counter",
         "Lua calls stopped at lua.memory_limit_mb.");
    buf_printf(&b, "wapphook_lua_memory_errors_total %llu\n", GET(m.lua_memory));
    {
        static const char *const http[] = {
            "1xx",         "2xx", "3xx",     "4xx", "5xx",       "timeout", "refused address",
            "not allowed", "dns", "connect", "tls", "too large", "protocol"};
        static const char *const exec[] = {"ok",          "failed", "timeout",
                                           "not allowed", "busy",   "spawn"};
        head(&b, "wapphook_http_requests_total", "counter",
             "Outbound HTTP requests of handlers, by status class or error.");
        handler_results(&b, "wapphook_http_requests_total", offsetof(struct handler_series, http),
                        http, MH_RESULTS);
        head(&b, "wapphook_exec_total", "counter", "Commands run by handlers, by result.");
        handler_results(&b, "wapphook_exec_total", offsetof(struct handler_series, exec), exec,
                        MX_RESULTS);
    }
    head(&b, "wapphook_shared_bytes", "gauge", "Bytes held by each lua.shared dictionary.");
    shared_dict_each(shared_bytes_line, &b);
    head(&b, "wapphook_shared_evictions_total", "counter",
         "Entries evicted from each lua.shared dictionary to make room.");
    shared_dict_each(shared_evictions_line, &b);
    head(&b, "wapphook_stuck_handlers", "gauge",
         "Handler calls running more than twice their budget (see /healthz).");
    buf_printf(&b, "wapphook_stuck_handlers %d\n", GET(m.stuck));
    if (GET(m.history_bytes) >= 0) {
        head(&b, "wapphook_history_bytes", "gauge",
             "Memory the console's sync-mode history holds (console.history events).");
        buf_printf(&b, "wapphook_history_bytes %lld\n", GET(m.history_bytes));
    }
    if (GET(m.durable)) {
        static const char *const results[] = {"ok", "failed", "dead"};
        head(&b, "wapphook_spool_pending", "gauge",
             "Deliveries waiting in the spool (durable mode).");
        buf_printf(&b, "wapphook_spool_pending %lld\n", GET(m.spool_pending));
        head(&b, "wapphook_spool_dead", "gauge",
             "Dead letters: deliveries that used up their attempts.");
        buf_printf(&b, "wapphook_spool_dead %lld\n", GET(m.spool_dead));
        head(&b, "wapphook_spool_commit_seconds", "histogram",
             "Time one spool transaction (a group commit, with its fsync) took.");
        histogram(&b, "wapphook_spool_commit_seconds", &m.commit);
        head(&b, "wapphook_deliveries_total", "counter",
             "Delivery attempts from the spool, by result.");
        for (const struct handler_series *s = m.handlers; s; s = s->next) {
            for (int r = 0; r < 3; r++) {
                buf_printf(&b, "wapphook_deliveries_total{handler=\"");
                label(&b, s->name);
                buf_printf(&b, "\",result=\"%s\"} %llu\n", results[r], GET(s->deliveries[r]));
            }
        }
        head(&b, "wapphook_duplicates_total", "counter", "Events dropped as duplicates (dedupe).");
        buf_printf(&b, "wapphook_duplicates_total %llu\n", GET(m.duplicates));
    }
    pthread_mutex_unlock(&m.mu);
    if (b.failed) { /* out of memory: /metrics answers 500 */
        buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
