/*
 * postgres: inserts every event into a PostgreSQL table, once per event id.
 *
 * config:
 *     conninfo:     libpq's connection string or URI (required); no password in it
 *     table:        the table, `name` or `schema.name` (required)
 *     create:       true to create the table when it is missing (default false)
 *     headers:      the request headers to keep (default Content-Type, User-Agent and
 *                   X-Wappcloud-Event; the signature is never kept)
 *     password_env: the environment variable that holds the password (optional)
 *
 * One row per event:
 *     event_id text PRIMARY KEY, type text, received_at timestamptz, payload jsonb,
 *     headers jsonb
 * inserted with ON CONFLICT (event_id) DO NOTHING: a retried delivery (durable mode, a
 * replay, another instance) finds its row there and adds nothing.
 *
 * Connections are pooled per loaded configuration and made lazily, so wapphook starts while
 * the database is down. Every call keeps to the handler's budget (event->timeout_ms): the
 * connection and the statement run non-blocking against one deadline, and a statement past
 * it is cancelled on the server.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wapphook/plugin.h>

#include "../common/batch.h"

#define MAX_IDLE 16
#define MAX_HEADERS 16

struct dest {
    const struct wapphook_host *host;
    char *conninfo, *password, *table_sql, *insert_sql, *create_sql;
    char *headers[MAX_HEADERS];
    int n_headers, create, created;
    pthread_mutex_t mu;
    PGconn *idle[MAX_IDLE];
    int n_idle;
    struct batch batch; /* concurrent calls, inserted together */
};

static void dest_free(struct dest *d)
{
    for (int i = 0; i < d->n_idle; i++)
        PQfinish(d->idle[i]);
    for (int i = 0; i < d->n_headers; i++)
        free(d->headers[i]);
    free(d->conninfo);
    free(d->password);
    free(d->table_sql);
    free(d->insert_sql);
    free(d->create_sql);
    free(d);
}

/* --- config --------------------------------------------------------------------------------- */

/* name or schema.name, each part an unquoted identifier; quoted for SQL into out. */
static int table_sql(const char *t, char **out)
{
    char buf[300];
    size_t n = 0;
    int dots = 0, start = 1;

    for (const char *p = t; *p; p++) {
        if (*p == '.') {
            if (start || ++dots > 1) return -1;
            n += (size_t)snprintf(buf + n, sizeof buf - n, "\".\"");
            start = 1;
            continue;
        }
        if (!(isalpha((unsigned char)*p) || *p == '_' || (!start && isdigit((unsigned char)*p))))
            return -1;
        if (n + 4 >= sizeof buf) return -1;
        buf[n++] = *p;
        start = 0;
    }
    if (start) return -1;
    buf[n] = '\0';
    if (asprintf(out, "\"%s\"", buf) < 0) return -1;
    return 0;
}

/* Whether conninfo carries a password (password=..., or user:pass@ in a URI). */
static int has_password(const char *conninfo, char *err, size_t len)
{
    char *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &why);
    int found = 0;

    if (!opts) {
        snprintf(err, len, "conninfo: %s", why ? why : "not a connection string");
        PQfreemem(why);
        return -1;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val && *o->val) found = 1;
    PQconninfoFree(opts);
    return found;
}

static int pg_create(const struct wapphook_host *host, const char *config_json, void **state,
                     char *err, size_t err_len)
{
    json_t *cfg = json_loads(config_json, 0, NULL), *v;
    const char *key, *table = NULL;
    struct dest *d = calloc(1, sizeof *d);
    int custom_headers = 0;

    if (!d || !cfg) goto bad_json;
    d->host = host;
    json_object_foreach(cfg, key, v)
    {
        if (!strcmp(key, "conninfo") && json_is_string(v)) {
            d->conninfo = strdup(json_string_value(v));
        } else if (!strcmp(key, "table") && json_is_string(v)) {
            table = json_string_value(v);
        } else if (!strcmp(key, "create") && json_is_boolean(v)) {
            d->create = json_is_true(v);
        } else if (!strcmp(key, "password_env") && json_is_string(v)) {
            const char *pw = getenv(json_string_value(v));
            if (!pw || !*pw) {
                snprintf(err, err_len, "password_env: the environment variable %s is not set",
                         json_string_value(v));
                goto fail;
            }
            d->password = strdup(pw);
        } else if (!strcmp(key, "headers") && json_is_array(v) &&
                   json_array_size(v) <= MAX_HEADERS) {
            size_t i;
            json_t *h;
            custom_headers = 1;
            json_array_foreach(v, i, h)
            {
                if (!json_is_string(h)) {
                    snprintf(err, err_len, "headers: a list of header names");
                    goto fail;
                }
                d->headers[d->n_headers++] = strdup(json_string_value(h));
            }
        } else {
            snprintf(err, err_len,
                     "config key %s: unknown, or not the right type (conninfo, table, "
                     "password_env: strings; create: true/false; headers: a list of at most %d "
                     "names)",
                     key, MAX_HEADERS);
            goto fail;
        }
    }
    if (!d->conninfo || !table) {
        snprintf(err, err_len, "config needs conninfo (a libpq connection string) and table");
        goto fail;
    }
    if (table_sql(table, &d->table_sql)) {
        snprintf(err, err_len, "table: '%s' is not a name or schema.name of letters, digits, _",
                 table);
        goto fail;
    }
    switch (has_password(d->conninfo, err, err_len)) {
    case -1:
        goto fail;
    case 1:
        snprintf(err, err_len,
                 "conninfo: a password here would end in logs: put it in an environment "
                 "variable and name it in password_env");
        goto fail;
    }
    if (!custom_headers) {
        d->headers[d->n_headers++] = strdup("Content-Type");
        d->headers[d->n_headers++] = strdup("User-Agent");
        d->headers[d->n_headers++] = strdup("X-Wappcloud-Event");
    }
    if (asprintf(&d->insert_sql,
                 "INSERT INTO %s (event_id, type, received_at, payload, headers) VALUES ",
                 d->table_sql) < 0 ||
        asprintf(&d->create_sql,
                 "CREATE TABLE IF NOT EXISTS %s (event_id text PRIMARY KEY, type text NOT NULL, "
                 "received_at timestamptz NOT NULL, payload jsonb NOT NULL, "
                 "headers jsonb NOT NULL)",
                 d->table_sql) < 0)
        goto bad_json;
    pthread_mutex_init(&d->mu, NULL);
    batch_init(&d->batch);
    json_decref(cfg);
    *state = d; /* no connection yet: the database may be down now, and up by the first event */
    return WAPPHOOK_OK;
bad_json:
    snprintf(err, err_len, "out of memory");
fail:
    json_decref(cfg);
    if (d) dest_free(d);
    return WAPPHOOK_ERR;
}

/* --- one deadline for the connection and the statement ---------------------------------------- */

/* Waits until the connection's socket is ready for events; 0, or -1 at the deadline. */
static int wait_socket(PGconn *c, short events, long long deadline)
{
    struct pollfd p = {.fd = PQsocket(c), .events = events};
    long long left;

    for (;;) {
        if ((left = deadline - batch_now_ms()) <= 0) return -1;
        int n = poll(&p, 1, (int)left);
        if (n > 0) return 0;
        if (n == 0) return -1;
    }
}

/* libpq's message, first line only. */
static const char *first_line(const char *m, char *buf, size_t len)
{
    snprintf(buf, len, "%.*s", (int)strcspn(m ? m : "", "\n"), m ? m : "");
    return buf;
}

static PGconn *connect_one(struct dest *d, long long deadline, char *err, size_t len)
{
    const char *keys[] = {"dbname", "fallback_application_name", "password", NULL};
    const char *vals[] = {d->conninfo, "wapphook", d->password, NULL};
    PGconn *c;
    char line[512];

    if (!d->password) keys[2] = NULL; /* libpq's own sources (PGPASSWORD, .pgpass) then */
    c = PQconnectStartParams(keys, vals, 1);
    if (!c) {
        snprintf(err, len, "postgres: out of memory");
        return NULL;
    }
    for (PostgresPollingStatusType st = PGRES_POLLING_WRITING;;) {
        if (PQstatus(c) == CONNECTION_BAD) st = PGRES_POLLING_FAILED;
        if (st == PGRES_POLLING_OK) break;
        if (st == PGRES_POLLING_FAILED) {
            snprintf(err, len, "postgres: cannot connect: %s",
                     first_line(PQerrorMessage(c), line, sizeof line));
            PQfinish(c);
            return NULL;
        }
        if (wait_socket(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) {
            snprintf(err, len, "postgres: cannot connect: timed out (the handler's timeout_ms)");
            PQfinish(c);
            return NULL;
        }
        st = PQconnectPoll(c);
    }
    PQsetnonblocking(c, 1);
    d->host->log(d->host, WAPPHOOK_LOG_INFO, "connected to postgres");
    return c;
}

/* Runs sql with params against the deadline. The result (caller clears), or NULL with err;
 * *broken when the connection must not be used again. */
static PGresult *run(PGconn *c, const char *sql, int n, const char *const *vals, long long deadline,
                     int *broken, char *err, size_t len)
{
    PGresult *r, *last = NULL;
    char line[512];
    int flushed;

    *broken = 1;
    if (!PQsendQueryParams(c, sql, n, NULL, vals, NULL, NULL, 0)) {
        snprintf(err, len, "postgres: %s", first_line(PQerrorMessage(c), line, sizeof line));
        return NULL;
    }
    while ((flushed = PQflush(c)) == 1)
        if (wait_socket(c, POLLOUT, deadline)) goto timed_out;
    if (flushed < 0) goto lost;
    for (;;) {
        while (PQisBusy(c)) {
            if (wait_socket(c, POLLIN, deadline)) goto timed_out;
            if (!PQconsumeInput(c)) goto lost;
        }
        if (!(r = PQgetResult(c))) break;
        PQclear(last);
        last = r;
    }
    *broken = PQstatus(c) != CONNECTION_OK;
    return last;
timed_out : {
    /* stop it on the server too: a statement stuck behind a lock must not wait there */
    PGcancel *k = PQgetCancel(c);
    char why[256];
    if (k) PQcancel(k, why, sizeof why);
    PQfreeCancel(k);
    PQclear(last);
    snprintf(err, len, "postgres: timed out (the handler's timeout_ms) and cancelled");
    return NULL;
}
lost:
    PQclear(last);
    snprintf(err, len, "postgres: %s", first_line(PQerrorMessage(c), line, sizeof line));
    return NULL;
}

static PGconn *take(struct dest *d, long long deadline, char *err, size_t len)
{
    PGconn *c = NULL;

    pthread_mutex_lock(&d->mu);
    if (d->n_idle) c = d->idle[--d->n_idle];
    pthread_mutex_unlock(&d->mu);
    return c ? c : connect_one(d, deadline, err, len);
}

static void give_back(struct dest *d, PGconn *c)
{
    pthread_mutex_lock(&d->mu);
    if (d->n_idle < MAX_IDLE) {
        d->idle[d->n_idle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&d->mu);
    if (c) PQfinish(c);
}

/* A failed statement's message: the server's, with a hint for a missing table. */
static void statement_error(const struct dest *d, PGresult *r, char *err, size_t len)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    char line[512];

    snprintf(err, len, "postgres: insert into %s failed: %s%s", d->table_sql,
             first_line(PQresultErrorMessage(r), line, sizeof line),
             state && !strcmp(state, "42P01") ? " (set create: true, or create the table)" : "");
}

/* --- events --------------------------------------------------------------------------------- */

static char *headers_json(const struct dest *d, const struct wapphook_event *ev)
{
    json_t *h = json_object();
    char *s;

    for (int i = 0; i < d->n_headers; i++) {
        const char *v = ev->header(ev, d->headers[i]);
        if (v) json_object_set_new(h, d->headers[i], json_string(v));
    }
    s = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    return s;
}

/* One event's row: event_id, type, received_at, payload, headers. */
struct row {
    const char *vals[5];
    char at[40];
    char *headers;
};

/* The table, created once when create: true. 0, or -1 with err. */
static int ensure_table(struct dest *d, PGconn *c, long long deadline, int *broken, char *err,
                        size_t len)
{
    PGresult *r;

    if (!d->create || __atomic_load_n(&d->created, __ATOMIC_ACQUIRE)) return 0;
    r = run(c, d->create_sql, 0, NULL, deadline, broken, err, len);
    /* two creates at once can meet on the catalog (23505, 42P07): the table is there */
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (r && (PQresultStatus(r) == PGRES_COMMAND_OK ||
              (st && (!strcmp(st, "23505") || !strcmp(st, "42P07")))))
        __atomic_store_n(&d->created, 1, __ATOMIC_RELEASE);
    else if (r)
        snprintf(err, len, "postgres: create table %s failed: %s", d->table_sql,
                 PQresultErrorMessage(r));
    PQclear(r);
    return __atomic_load_n(&d->created, __ATOMIC_ACQUIRE) ? 0 : -1;
}

/* Inserts jobs[0..n) with one statement (one transaction, one commit): 0, or -1 with err
 * when the statement failed (then no row of it is in). */
static int insert_rows(struct dest *d, PGconn *c, struct batch_job **jobs, int n,
                       long long deadline, int *broken, char *err, size_t len)
{
    const char *vals[5 * BATCH_MAX];
    char *sql, *p;
    size_t cap = strlen(d->insert_sql) + (size_t)n * 80 + 64; /* rows, then ON CONFLICT */
    PGresult *r;
    int ok;

    if (!(sql = malloc(cap))) return snprintf(err, len, "postgres: out of memory"), -1;
    p = sql + sprintf(sql, "%s", d->insert_sql);
    for (int i = 0; i < n; i++) {
        struct row *w = jobs[i]->data;
        p += sprintf(p, "%s($%d, $%d, to_timestamp($%d::float8), $%d::jsonb, $%d::jsonb)",
                     i ? ", " : "", 5 * i + 1, 5 * i + 2, 5 * i + 3, 5 * i + 4, 5 * i + 5);
        memcpy(vals + 5 * i, w->vals, sizeof w->vals);
    }
    strcpy(p, " ON CONFLICT (event_id) DO NOTHING");
    r = run(c, sql, 5 * n, vals, deadline, broken, err, len);
    free(sql);
    ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (r && !ok) statement_error(d, r, err, len);
    PQclear(r);
    return ok ? 0 : -1;
}

/* Sends a batch as one INSERT; when the server refuses it, row by row, so that one event it
 * cannot take (say, a \u0000 that jsonb refuses) fails alone. */
static void pg_send(void *state, struct batch_job **jobs, int n, long long deadline)
{
    struct dest *d = state;
    char err[600];
    PGconn *c;
    int broken = 0, i;

    if (!(c = take(d, deadline, err, sizeof err))) {
        batch_fail(jobs, n, err);
        return;
    }
    if (ensure_table(d, c, deadline, &broken, err, sizeof err)) {
        batch_fail(jobs, n, err);
    } else if (!insert_rows(d, c, jobs, n, deadline, &broken, err, sizeof err)) {
        for (i = 0; i < n; i++)
            jobs[i]->rc = WAPPHOOK_OK;
    } else if (broken || n == 1) {
        batch_fail(jobs, n, err); /* timed out, or the connection lost: no row went in */
    } else {
        for (i = 0; i < n; i++) {
            jobs[i]->rc = WAPPHOOK_ERR;
            if (broken)
                snprintf(jobs[i]->err, jobs[i]->err_len,
                         "postgres: not tried: the connection was lost on an earlier event of "
                         "its batch");
            else if (!insert_rows(d, c, jobs + i, 1, deadline, &broken, jobs[i]->err,
                                  jobs[i]->err_len))
                jobs[i]->rc = WAPPHOOK_OK;
        }
    }
    if (broken)
        PQfinish(c); /* the next call connects again */
    else
        give_back(d, c);
}

static int pg_handle(void *state, const struct wapphook_event *ev, char *err, size_t err_len)
{
    struct dest *d = state;
    struct row w;
    struct batch_job job = {.ev = ev, .err = err, .err_len = err_len, .data = &w};
    int rc;

    if (!WAPPHOOK_EVENT_HAS(ev, timeout_ms)) {
        snprintf(err, err_len, "this plugin needs wapphook with plugin ABI 1.1 or later");
        return WAPPHOOK_ERR;
    }
    job.deadline_ms = batch_now_ms() + ev->timeout_ms;
    snprintf(w.at, sizeof w.at, "%.6f", ev->received_at);
    if (!(w.headers = headers_json(d, ev))) {
        snprintf(err, err_len, "postgres: out of memory");
        return WAPPHOOK_ERR;
    }
    w.vals[0] = ev->id, w.vals[1] = ev->type, w.vals[2] = w.at, w.vals[3] = ev->body;
    w.vals[4] = w.headers;
    /* calls made while another is under way go together in its successor's INSERT */
    rc = batch_submit(&d->batch, &job, pg_send, d);
    free(w.headers);
    return rc;
}

static void pg_destroy(void *state)
{
    struct dest *d = state;

    pthread_mutex_destroy(&d->mu);
    batch_destroy(&d->batch);
    dest_free(d);
}

static const struct wapphook_plugin postgres = {
    WAPPHOOK_PLUGIN_HEADER, .name = "postgres",  .version = "1.0.0",
    .create = pg_create,    .handle = pg_handle, .destroy = pg_destroy,
};

const struct wapphook_plugin *wapphook_plugin_entry(void)
{
    return &postgres;
}
