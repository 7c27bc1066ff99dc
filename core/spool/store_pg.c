/*
 * The PostgreSQL backend: one spool shared by any number of instances (libpq).
 *
 * Tables live in delivery.pg_schema, created and migrated on first start under an advisory
 * lock (meta.schema_version says which shape they have). Every time is the database's clock.
 *
 * - Two writer connections commit at once (PostgreSQL flushes both in one WAL write, so this
 *   doubles what one instance can commit); the second stores events only.
 * - A batch is one pipeline, one round trip, one implicit transaction committed with
 *   synchronous_commit on: per event one statement that inserts its dedupe key (ON CONFLICT:
 *   a live key makes it a duplicate, atomically with other instances' commits), the event and
 *   its deliveries, leased to this instance (lease_owner, lease_token 1, next_at = the lease's
 *   end), then one statement for every result, then a NOTIFY when a retry was scheduled.
 * - A pending delivery's next_at is when it is due; while leased, when its lease ends. The
 *   poller claims due rows with FOR UPDATE SKIP LOCKED, bumping lease_token; the writer renews
 *   the leases of what this instance holds; a result is written only under the token it ran
 *   with (the fence): a lease that passed to another instance cannot be overwritten by a late
 *   holder.
 * - A listener connection LISTENs for other instances' retries and replays, and refreshes the
 *   gauges and the spool's size every second. The size (the bytes of stored events' bodies and
 *   headers) is a sum kept by the transactions that store and remove events, a row per
 *   writer, so reading it costs nothing however large the spool grows.
 * - A lost connection: writes fail at once (the server answers 503 with Retry-After) and the
 *   next write reconnects, with backoff from 100 ms to 5 s.
 */
#define _GNU_SOURCE
#include "store.h"

#include "base/base.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SCHEMA_VERSION 3
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000
#define GAUGES_EVERY_MS 1000
#define PURGE_SCAN 200
#define DEDUPE_SWEEP 1000
/* statement_timeout: a database that stops answering costs a request this long at most */
#define STATEMENT_TIMEOUT_MS 10000

struct conn {
    PGconn *pg;
    long long next_try_ms, delay_ms; /* reconnect backoff (monotonic) */
    int (*prepare)(struct store *s, PGconn *pg);
    const char *role; /* for the log */
    int was_up;
};

struct store {
    const struct wh_config *cfg;
    struct store_hooks hooks;
    char schema[64];        /* quoted identifier */
    char schema_lit[64];    /* as a string literal */
    char channel[80];       /* NOTIFY channel */
    char owner[160];        /* this instance, in lease_owner */
    char bytes_row[2][176]; /* each writer's row in spool_bytes: no writer waits on another */
    char shown[1024];       /* the URI without its password */
    struct conn w[2], r;    /* the writers'; the poller's */
    long long used_bytes;
    int writer_pid[2]; /* the writers' backends: their own notifications are not news */
    long long purge_cursor;
    /* the listener */
    pthread_t listener;
    int stopping;
    int wake_pipe[2];
};

/* Why the last call failed, per thread: writers, poller and listener fail on their own. */
static __thread char tl_err[1024];

static const char *const kw[] = {"connect_timeout", "application_name", "client_encoding", "dbname",
                                 NULL};

/* --- helpers ---------------------------------------------------------------------------------- */

void spool_shown(const char *uri, char *out, size_t cap)
{
    /* a path (no scheme) is shown as it is */
    const char *at, *colon, *scheme = strstr(uri, "://");
    const char *pw;
    size_t o = 0;

    snprintf(out, cap, "%s", uri);
    if (!scheme) return;
    scheme += 3;
    at = strchr(scheme, '@');
    colon = strchr(scheme, ':');
    if (at && colon && colon < at) /* user:password@ */
        snprintf(out, cap, "%.*s***%s", (int)(colon + 1 - uri), uri, at);
    /* ...and a password=... parameter */
    if ((pw = strstr(out, "password="))) {
        char rest[1024];
        const char *end = strchr(pw, '&');
        o = (size_t)(pw - out) + 9;
        snprintf(rest, sizeof rest, "%s", end ? end : "");
        snprintf(out + o, cap - o, "***%s", rest);
    }
}

/* Text PostgreSQL accepts: invalid UTF-8 bytes become '?' (a handler's error may hold any
 * bytes; one of them must not fail the batch that carries it, nor every batch after it). */
static char *utf8_clean(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n + 1), *o = out;
    const unsigned char *p = (const unsigned char *)s, *end = p + n, *next;

    if (!out) return NULL;
    for (; p < end; p = next) {
        if (!(next = utf8_next(p, end))) {
            *o++ = '?';
            next = p + 1;
            continue;
        }
        memcpy(o, p, (size_t)(next - p));
        o += next - p;
    }
    *o = '\0';
    return out;
}

/* One element of a text[] literal: quoted, with " and \ escaped; NULL unquoted. */
static void array_text(struct wh_buf *b, const char *s)
{
    if (b->len > 1) buf_add(b, ",", 1);
    if (!s) {
        buf_add(b, "NULL", 4);
        return;
    }
    buf_add(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') buf_add(b, "\\", 1);
        buf_add(b, s, 1);
    }
    buf_add(b, "\"", 1);
}

static void array_num(struct wh_buf *b, long long v)
{
    char n[32];

    if (b->len > 1) buf_add(b, ",", 1);
    snprintf(n, sizeof n, "%lld", v);
    buf_str(b, n);
}

/* tmpl with every "%1$s" replaced by schema (SQL text built here, never from input). */
static void with_schema(char *out, size_t cap, const char *tmpl, const char *schema)
{
    size_t o = 0, sl = strlen(schema);

    for (const char *p = tmpl; *p && o + 1 < cap;) {
        if (!strncmp(p, "%1$s", 4) && o + sl + 1 < cap) {
            memcpy(out + o, schema, sl);
            o += sl;
            p += 4;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
}

/* A one-dimensional array in PostgreSQL's binary format: no quoting, no escaping, no hex, and
 * nothing for the server to parse but lengths. */
struct barr {
    struct wh_buf b;
    int n, nulls;
};

static void put_u32(struct wh_buf *b, uint32_t v)
{
    uint32_t be = htonl(v);

    buf_add(b, (const char *)&be, 4);
}

static void put_u64(struct wh_buf *b, uint64_t v)
{
    put_u32(b, (uint32_t)(v >> 32));
    put_u32(b, (uint32_t)v);
}

static void barr_start(struct barr *a, uint32_t elem_oid)
{
    memset(a, 0, sizeof *a);
    put_u32(&a->b, 1); /* dimensions */
    put_u32(&a->b, 0); /* has nulls, patched at the end */
    put_u32(&a->b, elem_oid);
    put_u32(&a->b, 0); /* elements, patched at the end */
    put_u32(&a->b, 1); /* lower bound */
}

static void barr_bytes(struct barr *a, const void *p, size_t len) /* p NULL: a NULL element */
{
    a->n++;
    if (!p) {
        a->nulls = 1;
        put_u32(&a->b, 0xFFFFFFFFu);
        return;
    }
    put_u32(&a->b, (uint32_t)len);
    buf_add(&a->b, p, len);
}

static void barr_text(struct barr *a, const char *s)
{
    barr_bytes(a, s, s ? strlen(s) : 0);
}

static void barr_int8(struct barr *a, long long v)
{
    a->n++;
    put_u32(&a->b, 8);
    put_u64(&a->b, (uint64_t)v);
}

static void barr_float8(struct barr *a, double v)
{
    uint64_t bits;

    memcpy(&bits, &v, 8);
    a->n++;
    put_u32(&a->b, 8);
    put_u64(&a->b, bits);
}

static void barr_end(struct barr *a)
{
    uint32_t nulls = htonl((uint32_t)a->nulls), n = htonl((uint32_t)a->n);

    if (a->b.failed) /* out of memory: the caller sends nothing */
        return;
    memcpy(a->b.p + 4, &nulls, 4);
    memcpy(a->b.p + 12, &n, 4);
}

#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25
#define OID_FLOAT8 701

/* The first line of a libpq message, as the calling thread's error (prefixed when what). */
static void set_err(const char *what, const char *m)
{
    snprintf(tl_err, sizeof tl_err, "%s%s%.*s", what ? what : "", what ? ": " : "",
             (int)strcspn(m, "\n"), m);
}

static void fail_pg(PGconn *pg, const char *what)
{
    const char *m = pg ? PQerrorMessage(pg) : "no connection";

    set_err(what, m);
}

/* Runs sql (may be several statements); 0 or -1 with tl_err. */
static int exec_ok(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;

    if (!ok) {
        const char *m = PQresultErrorMessage(r);
        set_err(NULL, m);
    }
    PQclear(r);
    return ok ? 0 : -1;
}

/* --- connections ------------------------------------------------------------------------------ */

/* The server's notices ("schema already exists, skipping") are not the operator's business. */
static void no_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static PGconn *connect_to(const char *uri, char *err, size_t err_len)
{
    const char *vals[] = {"5", "wapphook", "UTF8", uri, NULL};
    PGconn *pg = PQconnectdbParams(kw, vals, 1); /* the URI's own settings come last: they win */

    if (PQstatus(pg) != CONNECTION_OK) {
        const char *m = PQerrorMessage(pg);
        snprintf(err, err_len, "%.*s", (int)strcspn(m, "\n"), m);
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, no_notices, NULL);
    return pg;
}

/* Connected and prepared, or -1 (at once while the backoff says to wait). */
static int conn_up(struct store *s, struct conn *c)
{
    char sql[128], why[512];
    long long now = wh_mono_ms();

    if (c->pg && PQstatus(c->pg) == CONNECTION_OK) return 0;
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    if (now < c->next_try_ms) {
        snprintf(tl_err, sizeof tl_err, "PostgreSQL unreachable (next try in %lld ms)",
                 c->next_try_ms - now);
        return -1;
    }
    snprintf(sql, sizeof sql, "SET synchronous_commit = on; SET statement_timeout = %d",
             STATEMENT_TIMEOUT_MS);
    if (!(c->pg = connect_to(s->cfg->spool, why, sizeof why)) || exec_ok(c->pg, sql) ||
        c->prepare(s, c->pg)) {
        if (!c->pg) snprintf(tl_err, sizeof tl_err, "PostgreSQL unreachable: %s", why);
        PQfinish(c->pg);
        c->pg = NULL;
        c->delay_ms = c->delay_ms ? c->delay_ms * 2 : RECONNECT_MIN_MS;
        if (c->delay_ms > RECONNECT_MAX_MS) c->delay_ms = RECONNECT_MAX_MS;
        c->next_try_ms = wh_mono_ms() + c->delay_ms;
        if (c->was_up) {
            log_msg(LOG_WARN, "spool connection lost", LOG_S("role", c->role),
                    LOG_S("spool", s->shown), LOG_S("error", tl_err));
            c->was_up = 0;
        }
        return -1;
    }
    if (c->delay_ms)
        log_msg(LOG_INFO, "spool connection back", LOG_S("role", c->role),
                LOG_S("spool", s->shown));
    c->delay_ms = 0;
    c->was_up = 1;
    return 0;
}

/* After a failure: a broken connection is dropped (the next call reconnects). */
static void conn_check(struct store *s, struct conn *c)
{
    if (c->pg && PQstatus(c->pg) != CONNECTION_OK) {
        log_msg(LOG_WARN, "spool connection lost", LOG_S("role", c->role), LOG_S("spool", s->shown),
                LOG_S("error", tl_err));
        c->was_up = 0;
        PQfinish(c->pg);
        c->pg = NULL;
        c->delay_ms = RECONNECT_MIN_MS;
        c->next_try_ms = wh_mono_ms(); /* the first try at once */
    }
}

static int prepare(struct store *s, PGconn *pg, const char *name, const char *fmt)
{
    char sql[4096];
    PGresult *r;
    int ok;

    with_schema(sql, sizeof sql, fmt, s->schema);
    r = PQprepare(pg, name, sql, 0, NULL);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        const char *m = PQresultErrorMessage(r);
        set_err(name, m);
    }
    PQclear(r);
    return ok ? 0 : -1;
}

static int prepare_writer(struct store *s, PGconn *pg)
{
    int rc =
        /* A whole batch, as binary arrays: $1 types, $2 bodies, $3 headers, $4 received_at, $5
         * dedupe keys (NULL: none), $6 windows; $7, $8 the deliveries (event ordinal, handler); $9
         * lease seconds (NULL: due now), $10 owner (NULL: not leased), $11 this writer, $12 the
         * events' handler lists (JSON). The events whose key another commit holds are left out;
         * the others get their ids. */
        prepare(
            s, pg, "put",
            "WITH src AS (SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[],"
            "  $4::float8[], $5::text[], $6::float8[], $12::text[]) WITH ORDINALITY"
            "  AS t(type, body, headers, received_at, dkey, win, hs, ord)),"
            " dd AS (INSERT INTO %1$s.dedupe AS x (key, expires_at)"
            "  SELECT dkey, extract(epoch FROM now())::float8 + win FROM src"
            "   WHERE dkey IS NOT NULL ORDER BY dkey"
            "  ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at"
            "   WHERE x.expires_at <= extract(epoch FROM now())::float8 RETURNING key),"
            " keep AS MATERIALIZED (SELECT src.*, nextval('%1$s.events_id_seq') AS id FROM src"
            "  WHERE dkey IS NULL OR dkey IN (SELECT key FROM dd)),"
            " ev AS (INSERT INTO %1$s.events (id, type, body, headers, received_at, handlers)"
            "  SELECT id, type, body, headers, received_at, hs FROM keep),"
            " dl AS (INSERT INTO %1$s.deliveries (event_id, handler, next_at, lease_owner,"
            "  lease_token) SELECT keep.id, h.handler, now() + make_interval(secs =>"
            "  coalesce($9::float8, 0)), $10::text, CASE WHEN $10::text IS NULL THEN 0 ELSE 1 END"
            "  FROM keep JOIN unnest($7::bigint[], $8::text[]) AS h(ord, handler)"
            "  ON h.ord = keep.ord),"
            " acc AS (INSERT INTO %1$s.spool_bytes AS b (owner, bytes)"
            "  SELECT $11::text, sum(octet_length(body) + octet_length(headers)) FROM keep"
            "  HAVING count(*) > 0"
            "  ON CONFLICT (owner) DO UPDATE SET bytes = b.bytes + EXCLUDED.bytes)"
            " SELECT ord, id FROM keep") ||
        /* results, under their fences: a first attempt that succeeded deletes its row (of an
         * event that names its handlers; version 1's keep theirs), another outcome updates it
         * (a retry's row says how many attempts it took) */
        prepare(s, pg, "res",
                "WITH r AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[],"
                "  $4::int[], $5::int[], $6::float8[], $7::text[], $8::float8[], $9::int[],"
                "  $10::float8[], $11::text[]) WITH ORDINALITY"
                "  AS r(e, h, t, st, att, delay, err, at, oc, dur, lg, ord)),"
                " done AS (DELETE FROM %1$s.deliveries d USING r, %1$s.events e"
                "  WHERE r.st = 1 AND r.att = 1 AND d.event_id = r.e AND d.handler = r.h"
                "  AND d.lease_token = r.t"
                "  AND d.state = 0 AND e.id = d.event_id AND e.handlers IS NOT NULL"
                "  RETURNING r.ord),"
                " upd AS (UPDATE %1$s.deliveries d SET state = r.st, attempts = r.att,"
                "  next_at = CASE WHEN r.st = 0 THEN now() + make_interval(secs => r.delay)"
                "  ELSE d.next_at END, last_error = r.err, lease_owner = NULL"
                " FROM r WHERE d.event_id = r.e AND d.handler = r.h AND d.lease_token = r.t"
                "  AND d.state = 0 AND (r.st <> 1 OR r.ord NOT IN (SELECT ord FROM done))"
                "  RETURNING r.ord),"
                /* the attempts of the results written (not of those fenced off) */
                " att AS (INSERT INTO %1$s.attempts (event_id, at, handler, outcome, duration_ms,"
                "  error, log) SELECT r.e, r.at, r.h, r.oc, r.dur, r.err, r.lg FROM r"
                "  WHERE r.ord IN (SELECT ord FROM done UNION ALL SELECT ord FROM upd))"
                " SELECT ord FROM done UNION ALL SELECT ord FROM upd") ||
        prepare(s, pg, "renew",
                "UPDATE %1$s.deliveries d SET next_at = now() + make_interval(secs => $4::float8),"
                "  lease_owner = $5::text"
                " FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS r(e, h, t)"
                " WHERE d.event_id = r.e AND d.handler = r.h AND d.lease_token = r.t AND d.state = "
                "0") ||
        prepare(s, pg, "release",
                "UPDATE %1$s.deliveries d SET next_at = now(), lease_owner = NULL"
                " FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS r(e, h, t)"
                " WHERE d.event_id = r.e AND d.handler = r.h AND d.lease_token = r.t AND d.state = "
                "0") ||
        prepare(s, pg, "notify", "SELECT pg_notify($1::text, $2::text)") ||
        prepare(
            s, pg, "purge",
            "WITH scan AS (SELECT id, received_at FROM %1$s.events WHERE id > $1::bigint"
            "  ORDER BY id LIMIT $3::int),"
            " cand AS (SELECT id FROM scan WHERE received_at < $2::float8 AND id < coalesce("
            "  (SELECT min(id) FROM scan WHERE received_at >= $2::float8), 9223372036854775807)),"
            " del AS (DELETE FROM %1$s.events e USING cand WHERE e.id = cand.id AND NOT EXISTS"
            "  (SELECT 1 FROM %1$s.deliveries d WHERE d.event_id = e.id AND d.state <> 1)"
            "  RETURNING e.id, octet_length(e.body) + octet_length(e.headers) AS n),"
            " dl AS (DELETE FROM %1$s.deliveries WHERE event_id IN (SELECT id FROM del)),"
            " da AS (DELETE FROM %1$s.attempts WHERE event_id IN (SELECT id FROM del)),"
            " acc AS (INSERT INTO %1$s.spool_bytes AS b (owner, bytes)"
            "  SELECT $4::text, -sum(n) FROM del HAVING count(*) > 0"
            "  ON CONFLICT (owner) DO UPDATE SET bytes = b.bytes + EXCLUDED.bytes)"
            " SELECT (SELECT max(id) FROM cand), (SELECT count(*) FROM scan),"
            "  (SELECT count(*) FROM cand), (SELECT count(*) FROM del)") ||
        prepare(s, pg, "dedupe_sweep",
                "DELETE FROM %1$s.dedupe WHERE key IN (SELECT key FROM %1$s.dedupe"
                " WHERE expires_at < extract(epoch FROM now())::float8 LIMIT $1::int)");
    if (rc == 0) /* which writer: the one whose connection this is */
        __atomic_store_n(&s->writer_pid[s->w[1].pg == pg], PQbackendPID(pg), __ATOMIC_RELAXED);
    return rc;
}

static int prepare_poller(struct store *s, PGconn *pg)
{
    /* $1 owner, $2 lease seconds, $3 how many */
    return prepare(s, pg, "poll",
                   "UPDATE %1$s.deliveries d SET lease_owner = $1::text,"
                   "  lease_token = d.lease_token + 1,"
                   "  next_at = now() + make_interval(secs => $2::float8)"
                   " FROM (SELECT event_id, handler FROM %1$s.deliveries"
                   "  WHERE state = 0 AND next_at <= now() ORDER BY next_at LIMIT $3::int"
                   "  FOR UPDATE SKIP LOCKED) c, %1$s.events e"
                   " WHERE d.event_id = c.event_id AND d.handler = c.handler AND e.id = d.event_id"
                   " RETURNING d.event_id, d.handler, d.attempts, d.lease_token, e.type, e.body,"
                   "  e.headers, e.received_at");
}

/* --- schema ----------------------------------------------------------------------------------- */

/* Version 1: the first shape. A later version appends its steps here, each run once, in
 * order, under the advisory lock, with meta.schema_version moved along in the same
 * transaction. */
static const char *const migrations[] = {
    NULL, /* 0: nothing */
    "CREATE TABLE IF NOT EXISTS %1$s.events ("
    "  id bigserial PRIMARY KEY, type text NOT NULL, body bytea NOT NULL,"
    "  headers text NOT NULL, received_at double precision NOT NULL);"
    "CREATE TABLE IF NOT EXISTS %1$s.deliveries ("
    /* no foreign key: its check would lock the event row once per delivery; deliveries go
     * with their event in the statements that remove events */
    "  event_id bigint NOT NULL,"
    "  handler text NOT NULL, state smallint NOT NULL DEFAULT 0,"
    "  attempts integer NOT NULL DEFAULT 0, next_at timestamptz NOT NULL, last_error text,"
    "  lease_owner text, lease_token bigint NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (event_id, handler));"
    "CREATE INDEX IF NOT EXISTS deliveries_due ON %1$s.deliveries (next_at) WHERE state = 0;"
    "CREATE INDEX IF NOT EXISTS deliveries_dead ON %1$s.deliveries (event_id) WHERE state = 2;"
    "CREATE TABLE IF NOT EXISTS %1$s.dedupe ("
    "  key text PRIMARY KEY, expires_at double precision NOT NULL);"
    "CREATE INDEX IF NOT EXISTS dedupe_expires ON %1$s.dedupe (expires_at);"
    /* the bytes of stored events, kept by the transactions that store and remove them: a row
     * per writer, so that instances never wait on each other's row */
    "CREATE TABLE IF NOT EXISTS %1$s.spool_bytes ("
    "  owner text PRIMARY KEY, bytes bigint NOT NULL);",
    /* 2: an event names its handlers (a JSON array), and a delivery that succeeded leaves no
     * row: its result deletes it rather than write a second version of it (a new tuple and its
     * index entries) for vacuum to clean. Version 1's events have NULL here and keep their rows,
     * delivered ones included. */
    "ALTER TABLE %1$s.events ADD COLUMN IF NOT EXISTS handlers text;",
    /* 3: every attempt, with the lines its handler logged (the console's); written by the
     * results' statement, removed with its event */
    "CREATE TABLE IF NOT EXISTS %1$s.attempts (event_id bigint NOT NULL,"
    "  at double precision NOT NULL, handler text NOT NULL, outcome smallint NOT NULL,"
    "  duration_ms double precision NOT NULL, error text, log text);"
    "CREATE INDEX IF NOT EXISTS attempts_event ON %1$s.attempts (event_id);",
};

static int migrate(struct store *s, PGconn *pg)
{
    char sql[4096];
    PGresult *r;
    int version = 0, rc = -1;

    snprintf(sql, sizeof sql,
             "SELECT pg_advisory_lock(hashtext('wapphook spool ' || %s));"
             "CREATE SCHEMA IF NOT EXISTS %s;"
             "CREATE TABLE IF NOT EXISTS %s.meta (key text PRIMARY KEY, value text NOT NULL)",
             s->schema_lit, s->schema, s->schema);
    if (exec_ok(pg, sql)) goto out;
    snprintf(sql, sizeof sql, "SELECT value::int FROM %s.meta WHERE key = 'schema_version'",
             s->schema);
    r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fail_pg(pg, "schema");
        PQclear(r);
        goto out;
    }
    if (PQntuples(r)) version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (version > SCHEMA_VERSION) {
        snprintf(tl_err, sizeof tl_err, "schema %s is at version %d, newer than this wapphook's %d",
                 s->schema, version, SCHEMA_VERSION);
        goto out;
    }
    for (int v = version + 1; v <= SCHEMA_VERSION; v++) {
        char step[3072];
        with_schema(step, sizeof step, migrations[v], s->schema);
        snprintf(sql, sizeof sql,
                 "BEGIN; %s INSERT INTO %s.meta VALUES ('schema_version', '%d')"
                 " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value; COMMIT",
                 step, s->schema, v);
        if (exec_ok(pg, sql)) {
            exec_ok(pg, "ROLLBACK");
            goto out;
        }
        log_msg(LOG_INFO, "spool schema migrated", LOG_S("schema", s->schema), LOG_I("version", v));
    }
    rc = 0;
out : {
    char why[sizeof tl_err];
    memcpy(why, tl_err, sizeof why);
    exec_ok(pg, "SELECT pg_advisory_unlock_all()");
    memcpy(tl_err, why, sizeof why);
}
    return rc;
}

/* --- writing ---------------------------------------------------------------------------------- */

/* Reads one query's results in a pipeline: the last non-NULL result (caller clears). */
static PGresult *next_result(PGconn *pg)
{
    PGresult *last = NULL, *r;

    while ((r = PQgetResult(pg))) {
        PQclear(last);
        last = r;
    }
    return last;
}

/* Ends a pipeline: consumes up to the sync. 0 when it came. */
static int end_pipeline(PGconn *pg)
{
    PGresult *r;
    int ok = 0;

    while ((r = PQgetResult(pg))) {
        ok = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
        PQclear(r);
        if (ok) break;
    }
    return PQexitPipelineMode(pg) == 1 && ok ? 0 : -1;
}

/* A pipelined query's result: is it rows? The first failure's message is kept in tl_err. */
static int rows_ok(PGconn *pg, const PGresult *r, int *rc)
{
    if (PQresultStatus(r) == PGRES_TUPLES_OK) return 1;
    if (!*rc) {
        const char *m = r ? PQresultErrorMessage(r) : PQerrorMessage(pg);
        set_err(NULL, m);
    }
    *rc = -1;
    return 0;
}

static int order_by_key(const void *a, const void *b)
{
    const struct store_put *x = *(struct store_put *const *)a, *y = *(struct store_put *const *)b;

    if (!x->ev->dedupe_key || !y->ev->dedupe_key)
        return (x->ev->dedupe_key == NULL) - (y->ev->dedupe_key == NULL);
    return strcmp(x->ev->dedupe_key, y->ev->dedupe_key);
}

static int pg_write(struct store *s, int writer, struct store_put *puts, int n_puts,
                    struct store_result *res, int n_res)
{
    struct conn *c = &s->w[writer];
    PGconn *pg;
    struct store_put **order = NULL, **sent = NULL;
    int n_sent_puts = 0;
    struct wh_buf arr[11] = {{0}};
    char lease_s[32], notify_ms[32] = "";
    long long stored_bytes = 0;
    int rc = 0, failed = 0;
    double retry_min = 1e300;

    int lease = 0; /* the batch's rows are leased to this instance when its dispatchers have them */

    for (int i = 0; i < n_puts; i++)
        lease |= puts[i].queued;
    if (conn_up(s, c)) return -1;
    pg = c->pg;
    snprintf(lease_s, sizeof lease_s, "%d", s->cfg->lease_s);
    order = wh_xmalloc((size_t)(n_puts ? n_puts : 1) * sizeof *order);
    for (int i = 0; i < n_puts; i++) {
        order[i] = &puts[i];
        puts[i].result = SPOOL_DUPLICATE; /* until the database gives it an id */
        puts[i].token = 0;
    }
    if (PQenterPipelineMode(pg) != 1) {
        fail_pg(pg, "pipeline");
        free(order);
        return -1;
    }
    if (n_puts) {
        /* A key twice in one batch: the first one goes to the database (stored, or a
         * duplicate of what another commit holds); the later ones are duplicates either way
         * and are not sent. sent[k]: the put at array position k + 1. */
        /* element types of $1..$8, then $12's */
        static const uint32_t oids[9] = {OID_TEXT,   OID_BYTEA, OID_TEXT, OID_FLOAT8, OID_TEXT,
                                         OID_FLOAT8, OID_INT8,  OID_TEXT, OID_TEXT};
        struct barr a[9];
        const char *v[12];
        int len[12] = {0}, fmt[12] = {0};
        int n_sent = 0;
        struct wh_buf names = {0};
        sent = wh_xmalloc((size_t)n_puts * sizeof *sent);
        qsort(order, (size_t)n_puts, sizeof *order, order_by_key);
        for (int k = 0; k < 9; k++)
            barr_start(&a[k], oids[k]);
        for (int i = 0; i < n_puts; i++) {
            const struct spool_event *ev = order[i]->ev;
            if (i > 0 && ev->dedupe_key && order[i - 1]->ev->dedupe_key &&
                !strcmp(order[i - 1]->ev->dedupe_key, ev->dedupe_key))
                continue; /* sorted: twins are neighbours */
            sent[n_sent++] = order[i];
            barr_text(&a[0], ev->type);
            barr_bytes(&a[1], ev->body, ev->body_len);
            barr_text(&a[2], ev->headers_json);
            barr_float8(&a[3], ev->received_at);
            {
                /* a key from the payload may be any bytes (a lone \ud800): PostgreSQL would
                 * refuse the whole batch for it, each time its sender retried */
                char *key = ev->dedupe_key ? utf8_clean(ev->dedupe_key) : NULL;
                if (ev->dedupe_key && !key) a[4].b.failed = WH_BUF_OOM;
                barr_text(&a[4], key);
                free(key);
            }
            barr_float8(&a[5], (double)ev->dedupe_window_s);
            for (int k = 0; k < ev->n_handlers; k++) {
                barr_int8(&a[6], n_sent);
                barr_text(&a[7], ev->handlers[k]);
            }
            if (spool_handlers_json(ev, &names)) a[8].b.failed = WH_BUF_OOM;
            barr_text(&a[8], names.p);
        }
        buf_free(&names);
        for (int k = 0; k < 9; k++) {
            int at = k < 8 ? k : 11; /* $1..$8, $12 */
            barr_end(&a[k]);
            v[at] = a[k].b.p;
            len[at] = (int)a[k].b.len;
            fmt[at] = 1;
            failed |= a[k].b.failed != 0; /* out of memory: the batch fails, nothing is sent */
        }
        v[8] = lease ? lease_s : NULL;
        v[9] = lease ? s->owner : NULL;
        v[10] = s->bytes_row[writer];
        failed = failed || PQsendQueryPrepared(pg, "put", 12, v, len, fmt, 0) != 1;
        for (int k = 0; k < 9; k++)
            buf_free(&a[k].b);
        n_sent_puts = n_sent;
    }
    if (n_res && !failed) {
        const char *v[11];
        for (int k = 0; k < 11; k++)
            buf_add(&arr[k], "{", 1);
        for (int i = 0; i < n_res; i++) {
            char *err = res[i].error ? utf8_clean(res[i].error) : NULL;
            char delay[32];
            if (res[i].error && !err) arr[6].failed = WH_BUF_OOM;
            array_num(&arr[0], res[i].event_id);
            array_text(&arr[1], res[i].handler);
            array_num(&arr[2], res[i].token);
            array_num(&arr[3], res[i].state);
            array_num(&arr[4], res[i].attempts);
            snprintf(delay, sizeof delay, "%.3f", res[i].delay_s);
            if (arr[5].len > 1) buf_add(&arr[5], ",", 1);
            buf_str(&arr[5], delay);
            array_text(&arr[6], err);
            free(err);
            {
                /* the attempt: when, how it ended, how long, what it logged */
                char num[48], *log = res[i].log ? utf8_clean(res[i].log) : NULL;
                if (res[i].log && !log) arr[10].failed = WH_BUF_OOM;
                snprintf(num, sizeof num, "%.6f", res[i].at > 0 ? res[i].at : wh_now_s());
                if (arr[7].len > 1) buf_add(&arr[7], ",", 1);
                buf_str(&arr[7], num);
                array_num(&arr[8], res[i].state == DELIVERY_DONE   ? ATTEMPT_OK
                                   : res[i].state == DELIVERY_DEAD ? ATTEMPT_DEAD
                                   : res[i].timeout                ? ATTEMPT_TIMEOUT
                                                                   : ATTEMPT_FAILED);
                snprintf(num, sizeof num, "%.3f", res[i].duration_ms);
                if (arr[9].len > 1) buf_add(&arr[9], ",", 1);
                buf_str(&arr[9], num);
                array_text(&arr[10], log);
                free(log);
            }
            res[i].fenced = 1; /* until the database says it wrote it */
            if (res[i].state == DELIVERY_PENDING && res[i].delay_s < retry_min)
                retry_min = res[i].delay_s;
        }
        for (int k = 0; k < 11; k++) {
            buf_add(&arr[k], "}", 1);
            v[k] = arr[k].p;
            failed |= arr[k].failed != 0;
        }
        failed = failed || PQsendQueryPrepared(pg, "res", 11, v, NULL, NULL, 0) != 1;
    }
    /* other instances: a retry to run (any of them may), or deliveries no one holds */
    if (retry_min < 1e300)
        snprintf(notify_ms, sizeof notify_ms, "%lld", (long long)(retry_min * 1000));
    else if (!lease && n_puts)
        snprintf(notify_ms, sizeof notify_ms, "0");
    if (*notify_ms && !failed) {
        const char *v[2] = {s->channel, notify_ms};
        failed = PQsendQueryPrepared(pg, "notify", 2, v, NULL, NULL, 0) != 1;
    }
    if (failed) {
        /* No sync: a sync would commit what was sent. The connection goes, and with it the
         * transaction; the next write reconnects. */
        fail_pg(pg, "send");
        PQfinish(pg);
        c->pg = NULL;
        c->was_up = 0;
        rc = -1;
        goto out;
    }
    if (PQpipelineSync(pg) != 1 || PQflush(pg) != 0) {
        fail_pg(pg, "send");
        conn_check(s, c);
        rc = -1;
        goto out;
    }
    if (n_puts) {
        PGresult *r = next_result(pg);
        if (rows_ok(pg, r, &rc)) {
            for (int k = 0; k < PQntuples(r); k++) {
                long ord = atol(PQgetvalue(r, k, 0));
                struct store_put *p = ord >= 1 && ord <= n_sent_puts ? sent[ord - 1] : NULL;
                if (!p) continue;
                p->result = SPOOL_STORED;
                p->event_id = atoll(PQgetvalue(r, k, 1));
                p->token = lease ? 1 : 0;
                stored_bytes += (long long)(p->ev->body_len + strlen(p->ev->headers_json));
            }
        }
        PQclear(r);
    }
    if (n_res) {
        PGresult *r = next_result(pg);
        if (rows_ok(pg, r, &rc)) {
            for (int k = 0; k < PQntuples(r); k++) {
                long ord = atol(PQgetvalue(r, k, 0));
                if (ord >= 1 && ord <= n_res) res[ord - 1].fenced = 0;
            }
        }
        PQclear(r);
    }
    if (*notify_ms) {
        PGresult *r = next_result(pg);
        rows_ok(pg, r, &rc);
        PQclear(r);
    }
    /* the commit: at the sync, the implicit transaction ends */
    if (end_pipeline(pg) != 0 && !rc) {
        fail_pg(pg, "commit");
        rc = -1;
    }
    if (rc)
        conn_check(s, c);
    else
        __atomic_add_fetch(&s->used_bytes, stored_bytes, __ATOMIC_RELAXED);
out:
    for (int k = 0; k < 11; k++)
        buf_free(&arr[k]);
    free(order);
    free(sent);
    return rc;
}

static const char *pg_error(struct store *s)
{
    (void)s;
    return tl_err;
}

/* Runs renew or release over held: one statement. */
static int lease_call(struct store *s, const char *stmt, const struct spool_due *held)
{
    struct wh_buf e = {0}, h = {0}, t = {0};
    char lease[32];
    const char *v[5];
    PGresult *r;
    int ok;

    if (conn_up(s, &s->w[0])) return -1;
    buf_add(&e, "{", 1);
    buf_add(&h, "{", 1);
    buf_add(&t, "{", 1);
    for (const struct spool_due *d = held; d; d = d->next) {
        array_num(&e, d->event_id);
        array_text(&h, d->handler);
        array_num(&t, d->token);
    }
    buf_add(&e, "}", 1);
    buf_add(&h, "}", 1);
    buf_add(&t, "}", 1);
    snprintf(lease, sizeof lease, "%d", s->cfg->lease_s);
    v[0] = e.p;
    v[1] = h.p;
    v[2] = t.p;
    v[3] = lease;
    v[4] = s->owner;
    if (e.failed || h.failed || t.failed) { /* out of memory: this renewal fails */
        buf_free(&e);
        buf_free(&h);
        buf_free(&t);
        return -1;
    }
    r = PQexecPrepared(s->w[0].pg, stmt, !strcmp(stmt, "renew") ? 5 : 3, v, NULL, NULL, 0);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) fail_pg(s->w[0].pg, stmt);
    PQclear(r);
    buf_free(&e);
    buf_free(&h);
    buf_free(&t);
    if (!ok) conn_check(s, &s->w[0]);
    return ok ? 0 : -1;
}

static int pg_renew(struct store *s, const struct spool_due *held)
{
    return lease_call(s, "renew", held);
}

static void pg_release(struct store *s, const struct spool_due *held)
{
    if (lease_call(s, "release", held) == 0) {
        const char *v[2] = {s->channel, "0"};
        PQclear(PQexecPrepared(s->w[0].pg, "notify", 2, v, NULL, NULL, 0));
    }
}

static int pg_purge_step(struct store *s, double before)
{
    char cursor[32], cutoff[32], scan[16];
    const char *v[4] = {cursor, cutoff, scan, s->bytes_row[0]};
    PGresult *r;
    int more = -1;

    if (conn_up(s, &s->w[0])) return -1;
    snprintf(cursor, sizeof cursor, "%lld", s->purge_cursor);
    snprintf(cutoff, sizeof cutoff, "%.6f", before);
    snprintf(scan, sizeof scan, "%d", PURGE_SCAN);
    r = PQexecPrepared(s->w[0].pg, "purge", 4, v, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        long long scanned = atoll(PQgetvalue(r, 0, 1)), cand = atoll(PQgetvalue(r, 0, 2));
        more = scanned == PURGE_SCAN && cand == scanned;
        s->purge_cursor = more ? atoll(PQgetvalue(r, 0, 0)) : 0;
    } else {
        fail_pg(s->w[0].pg, "purge");
    }
    PQclear(r);
    if (more < 0) conn_check(s, &s->w[0]);
    return more;
}

static void pg_housekeep(struct store *s)
{
    char n[16];
    const char *v[1] = {n};

    /* the gauges and the size are the listener's; expired dedupe keys are the writer's */
    if (!s->w[0].pg || PQstatus(s->w[0].pg) != CONNECTION_OK) return;
    snprintf(n, sizeof n, "%d", DEDUPE_SWEEP);
    PQclear(PQexecPrepared(s->w[0].pg, "dedupe_sweep", 1, v, NULL, NULL, 0));
}

static long long pg_used_bytes(struct store *s)
{
    return __atomic_load_n(&s->used_bytes, __ATOMIC_RELAXED);
}

/* --- polling ---------------------------------------------------------------------------------- */

static int pg_poll(struct store *s, int limit, struct spool_due **rows)
{
    char lease[32], n[16];
    const char *v[3] = {s->owner, lease, n};
    struct spool_due **tail = rows;
    PGresult *r;
    int got, rows_n;

    *rows = NULL;
    if (conn_up(s, &s->r)) return -1;
    snprintf(lease, sizeof lease, "%d", s->cfg->lease_s);
    snprintf(n, sizeof n, "%d", limit);
    r = PQexecPrepared(s->r.pg, "poll", 3, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fail_pg(s->r.pg, "poll");
        PQclear(r);
        conn_check(s, &s->r);
        return -1;
    }
    rows_n = PQntuples(r);
    got = 0;
    for (int i = 0; i < rows_n; i++) {
        struct spool_due *d;
        size_t blen = 0;
        unsigned char *body = PQunescapeBytea((const unsigned char *)PQgetvalue(r, i, 5), &blen);
        char *copy = body ? malloc(blen + 1) : NULL;

        if (!copy) {
            /* no room for a body of the sender's size: this one stays leased to this
             * instance and is due again when the lease runs out */
            PQfreemem(body);
            continue;
        }
        d = wh_xcalloc(1, sizeof *d);
        d->slot = -1; /* every delivery has a row here */
        d->event_id = atoll(PQgetvalue(r, i, 0));
        d->handler = wh_xstrdup(PQgetvalue(r, i, 1));
        d->attempts = atoi(PQgetvalue(r, i, 2));
        d->token = atoll(PQgetvalue(r, i, 3));
        d->type = wh_xstrdup(PQgetvalue(r, i, 4));
        d->body = copy;
        memcpy(d->body, body, blen);
        ((char *)d->body)[blen] = '\0';
        d->body_len = (int)blen;
        PQfreemem(body);
        d->headers = wh_xstrdup(PQgetvalue(r, i, 6));
        d->received_at = atof(PQgetvalue(r, i, 7));
        *tail = d;
        tail = &d->next;
        got++;
    }
    PQclear(r);
    return got;
}

static int pg_still_due(struct store *s, const struct spool_due *d)
{
    (void)s; /* the claim is the lease: nobody else writes it while it lasts */
    (void)d;
    return 1;
}

/* --- the listener ----------------------------------------------------------------------------- */

static void refresh_gauges(struct store *s, PGconn *pg)
{
    char sql[512];
    PGresult *r;

    snprintf(sql, sizeof sql,
             "SELECT (SELECT count(*) FROM %1$s.deliveries WHERE state = 0),"
             " (SELECT count(*) FROM %1$s.deliveries WHERE state = 2),"
             " (SELECT coalesce(sum(bytes), 0) FROM %1$s.spool_bytes)",
             s->schema);
    r = PQexec(pg, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        metrics_spool(atoll(PQgetvalue(r, 0, 0)), atoll(PQgetvalue(r, 0, 1)));
        __atomic_store_n(&s->used_bytes, atoll(PQgetvalue(r, 0, 2)), __ATOMIC_RELAXED);
    }
    PQclear(r);
}

static void *listener_main(void *arg)
{
    struct store *s = arg;
    PGconn *pg = NULL;
    long long delay = 0, next_gauges = 0;
    char sql[128], why[512];

    while (!__atomic_load_n(&s->stopping, __ATOMIC_ACQUIRE)) {
        struct pollfd fds[2] = {{.fd = s->wake_pipe[0], .events = POLLIN}};
        PGnotify *n;
        long long now = wh_mono_ms();

        if (!pg || PQstatus(pg) != CONNECTION_OK) {
            PQfinish(pg);
            snprintf(sql, sizeof sql, "LISTEN %s", s->channel);
            if (!(pg = connect_to(s->cfg->spool, why, sizeof why)) || exec_ok(pg, sql)) {
                PQfinish(pg);
                pg = NULL;
                delay = delay ? (delay * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : delay * 2)
                              : RECONNECT_MIN_MS;
                poll(fds, 1, (int)delay);
                continue;
            }
            delay = 0;
            next_gauges = 0;
            s->hooks.wake(s->hooks.arg, 0); /* what was missed meanwhile */
        }
        if (now >= next_gauges) {
            refresh_gauges(s, pg);
            next_gauges = now + GAUGES_EVERY_MS;
        }
        fds[1].fd = PQsocket(pg);
        fds[1].events = POLLIN;
        poll(fds, 2, (int)(next_gauges - now > 0 ? next_gauges - now : 1));
        if (PQconsumeInput(pg) != 1) continue; /* reconnects above */
        while ((n = PQnotifies(pg))) {
            if (n->be_pid != __atomic_load_n(&s->writer_pid[0], __ATOMIC_RELAXED) &&
                n->be_pid != __atomic_load_n(&s->writer_pid[1], __ATOMIC_RELAXED))
                s->hooks.wake(s->hooks.arg, atoll(n->extra));
            PQfreemem(n);
        }
    }
    PQfinish(pg);
    return NULL;
}

/* --- open and close --------------------------------------------------------------------------- */

static void pg_close(struct store *s)
{
    if (!s) return;
    if (s->listener) {
        __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
        if (write(s->wake_pipe[1], "x", 1) < 0) { /* the listener polls it */
        }
        pthread_join(s->listener, NULL);
    }
    if (s->wake_pipe[0] > 0) {
        close(s->wake_pipe[0]);
        close(s->wake_pipe[1]);
    }
    PQfinish(s->w[0].pg);
    PQfinish(s->w[1].pg);
    PQfinish(s->r.pg);
    free(s);
}

/* The schema quoted, as a literal, and its channel (delivery.pg_schema is [a-z0-9_]). */
static void names(struct store *s, const char *schema)
{
    snprintf(s->schema, sizeof s->schema, "\"%s\"", schema);
    snprintf(s->schema_lit, sizeof s->schema_lit, "'%s'", schema);
    snprintf(s->channel, sizeof s->channel, "wapphook_%s", schema);
}

static int pg_open(const struct wh_config *cfg, const struct store_hooks *hooks, struct store **out,
                   char *err, size_t err_len)
{
    struct store *s = wh_xcalloc(1, sizeof *s);
    char host[64] = "", why[512];
    PGconn *pg;

    s->cfg = cfg;
    s->hooks = *hooks;
    s->w[0] = (struct conn){.prepare = prepare_writer, .role = "writer"};
    s->w[1] = (struct conn){.prepare = prepare_writer, .role = "writer 2"};
    s->r = (struct conn){.prepare = prepare_poller, .role = "poller"};
    names(s, cfg->pg_schema);
    spool_shown(cfg->spool, s->shown, sizeof s->shown);
    gethostname(host, sizeof host - 1);
    snprintf(s->owner, sizeof s->owner, "%s:%d:%08lx", host, (int)getpid(),
             (unsigned long)random() & 0xffffffffUL);
    for (int i = 0; i < 2; i++)
        snprintf(s->bytes_row[i], sizeof s->bytes_row[i], "%s/%d", s->owner, i);
    if (!(pg = connect_to(cfg->spool, why, sizeof why))) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, s->shown, why);
        free(s);
        return -1;
    }
    if (migrate(s, pg)) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, s->shown, tl_err);
        PQfinish(pg);
        free(s);
        return -1;
    }
    refresh_gauges(s, pg);
    PQfinish(pg);
    if (conn_up(s, &s->w[0]) || conn_up(s, &s->w[1]) || conn_up(s, &s->r)) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, s->shown, tl_err);
        pg_close(s);
        return -1;
    }
    if (pipe(s->wake_pipe) != 0) {
        snprintf(err, err_len, "spool: pipe failed");
        pg_close(s);
        return -1;
    }
    if (pthread_create(&s->listener, NULL, listener_main, s) != 0) {
        s->listener = 0;
        snprintf(err, err_len, "%s:%d: spool %s: cannot start the listener thread", cfg->file,
                 cfg->spool_line, s->shown);
        pg_close(s);
        return -1;
    }
    pthread_setname_np(s->listener, "spool-listen");
    log_msg(LOG_INFO, "spool instance", LOG_S("owner", s->owner), LOG_S("schema", cfg->pg_schema),
            LOG_I("lease_s", cfg->lease_s));
    *out = s;
    return 0;
}

const struct store_ops store_pg = {
    .kind = "postgresql",
    .open = pg_open,
    .write = pg_write,
    .writers = 2, /* the database flushes both commits' WAL together: twice the batches */
    .error = pg_error,
    /* no .fatal: durability is the database's, a failure here never the process's to end */
    .renew = pg_renew,
    .release = pg_release,
    .purge_step = pg_purge_step,
    .housekeep = pg_housekeep,
    .used_bytes = pg_used_bytes,
    .poll = pg_poll,
    .still_due = pg_still_due,
    .idle_poll_ms = 250,
    .close = pg_close,
};

/* `wapphook check` writes nothing and needs no database: the URI must parse. */
int store_pg_check(const struct wh_config *cfg, char *err, size_t err_len)
{
    char *why = NULL, shown[1024];
    PQconninfoOption *o = PQconninfoParse(cfg->spool, &why);

    if (!o) {
        spool_shown(cfg->spool, shown, sizeof shown);
        snprintf(err, err_len, "%s:%d: spool %s: %.*s", cfg->file, cfg->spool_line, shown,
                 why ? (int)strcspn(why, "\n") : 20, why ? why : "not a connection URI");
        PQfreemem(why);
        return -1;
    }
    PQconninfoFree(o);
    return 0;
}

/* --- the `spool` commands --------------------------------------------------------------------- */

struct store_admin {
    struct store s; /* for its names and error buffer */
    PGconn *pg;
};

static int ad_open(const struct wh_config *cfg, struct store_admin **out, char *err, size_t err_len)
{
    struct store_admin *a = wh_xcalloc(1, sizeof *a);
    char why[512];

    a->s.cfg = cfg;
    names(&a->s, cfg->pg_schema);
    spool_shown(cfg->spool, a->s.shown, sizeof a->s.shown);
    if (!(a->pg = connect_to(cfg->spool, why, sizeof why))) {
        snprintf(err, err_len, "spool %s: %s", a->s.shown, why);
        free(a);
        return -1;
    }
    *out = a;
    return 0;
}

/* One row of text values from sql (%1$s: the schema), with params; NULL on failure. */
static PGresult *ad_query(struct store_admin *a, const char *fmt, int n, const char *const *v)
{
    char sql[2048];
    PGresult *r;

    with_schema(sql, sizeof sql, fmt, a->s.schema);
    r = PQexecParams(a->pg, sql, n, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *m = PQresultErrorMessage(r);
        set_err(NULL, m);
        PQclear(r);
        return NULL;
    }
    return r;
}

static int ad_stats(struct store_admin *a, struct store_stats *out)
{
    PGresult *r = ad_query(
        a,
        /* delivered: the rows that say so (version 1's), and the handlers an event names that
         * have no row (a success deletes it) */
        "SELECT (SELECT count(*) FROM %1$s.deliveries WHERE state = 0),"
        " (SELECT count(*) FROM %1$s.deliveries WHERE state = 1)"
        "  + (SELECT coalesce(sum(json_array_length(handlers::json)), 0) FROM %1$s.events"
        "     WHERE handlers IS NOT NULL)"
        "  - (SELECT count(*) FROM %1$s.deliveries d JOIN %1$s.events e ON e.id = d.event_id"
        "     WHERE e.handlers IS NOT NULL),"
        " (SELECT count(*) FROM %1$s.deliveries WHERE state = 2),"
        " (SELECT count(*) FROM %1$s.events),"
        " (SELECT extract(epoch FROM now())::float8 - min(e.received_at) FROM %1$s.deliveries d"
        "   JOIN %1$s.events e ON e.id = d.event_id WHERE d.state = 0),"
        " pg_total_relation_size('%1$s.events') + pg_total_relation_size('%1$s.deliveries')"
        "  + pg_total_relation_size('%1$s.dedupe')",
        0, NULL);

    memset(out, 0, sizeof *out);
    if (!r) return -1;
    for (int i = 0; i < 3; i++)
        out->deliveries[i] = atoll(PQgetvalue(r, 0, i));
    out->events = atoll(PQgetvalue(r, 0, 3));
    out->oldest_pending_s = PQgetisnull(r, 0, 4) ? -1 : atof(PQgetvalue(r, 0, 4));
    out->size_bytes = atoll(PQgetvalue(r, 0, 5));
    PQclear(r);
    return 0;
}

#define LIST_PAGE 500

static int ad_list(struct store_admin *a, int dead_only,
                   void (*row)(void *arg, const struct store_row *r), void *arg)
{
    char after_id[32] = "0", *after_handler = wh_xstrdup(""), dead[4], page[16];
    int rows;

    snprintf(dead, sizeof dead, "%d", dead_only);
    snprintf(page, sizeof page, "%d", LIST_PAGE);
    do {
        const char *v[4] = {dead, after_id, after_handler, page};
        /* the rows, and (not for --dead) the deliveries an event names that left no row: each
         * one succeeded */
        PGresult *r = ad_query(
            a,
            "SELECT x.event_id, e.type, x.handler, x.state, x.attempts, x.err, x.owner FROM ("
            " (SELECT d.event_id, d.handler, d.state, d.attempts, coalesce(d.last_error, '') err,"
            "  CASE WHEN d.state = 0 AND d.next_at > now() THEN coalesce(d.lease_owner, '')"
            "   ELSE '' END owner FROM %1$s.deliveries d"
            "  WHERE ($1::int = 0 OR d.state = 2) AND (d.event_id, d.handler) > ($2::bigint,"
            "   $3::text) ORDER BY d.event_id, d.handler LIMIT $4::int)"
            " UNION ALL"
            " (SELECT e.id, h.handler, 1, 1, '', '' FROM %1$s.events e,"
            "  json_array_elements_text(e.handlers::json) h(handler)"
            "  WHERE $1::int = 0 AND e.handlers IS NOT NULL AND e.id >= $2::bigint"
            "  AND (e.id, h.handler) > ($2::bigint, $3::text) AND NOT EXISTS (SELECT 1"
            "  FROM %1$s.deliveries d WHERE d.event_id = e.id AND d.handler = h.handler)"
            "  ORDER BY e.id, h.handler LIMIT $4::int)) x"
            " JOIN %1$s.events e ON e.id = x.event_id"
            " ORDER BY x.event_id, x.handler LIMIT $4::int",
            4, v);
        if (!r) {
            free(after_handler);
            return -1;
        }
        rows = PQntuples(r);
        for (int i = 0; i < rows; i++) {
            struct store_row sr = {.event_id = atoll(PQgetvalue(r, i, 0)),
                                   .type = PQgetvalue(r, i, 1),
                                   .handler = PQgetvalue(r, i, 2),
                                   .state = atoi(PQgetvalue(r, i, 3)),
                                   .attempts = atoi(PQgetvalue(r, i, 4)),
                                   .error = PQgetvalue(r, i, 5),
                                   .owner = PQgetvalue(r, i, 6)};
            row(arg, &sr);
        }
        if (rows) {
            snprintf(after_id, sizeof after_id, "%s", PQgetvalue(r, rows - 1, 0));
            free(after_handler);
            after_handler = wh_xstrdup(PQgetvalue(r, rows - 1, 2));
        }
        PQclear(r);
    } while (rows == LIST_PAGE);
    free(after_handler);
    return 0;
}

static long long ad_replay(struct store_admin *a, long long id)
{
    char ids[32];
    const char *v[2] = {ids, a->s.channel};
    long long n;
    PGresult *r;

    snprintf(ids, sizeof ids, "%lld", id);
    /* a new token: a late result of the old run cannot land on the replayed delivery */
    r = ad_query(a,
                 "WITH u AS (UPDATE %1$s.deliveries SET state = 0, attempts = 0, next_at = now(),"
                 "  last_error = NULL, lease_owner = NULL, lease_token = lease_token + 1"
                 "  WHERE state = 2 AND ($1::bigint = 0 OR event_id = $1::bigint) RETURNING 1)"
                 " SELECT count(*), pg_notify($2::text, '0') FROM u",
                 2, v);
    if (!r) return -1;
    n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static long long ad_purge(struct store_admin *a, double before)
{
    char cutoff[32], cursor[32] = "0", scan[16];
    long long purged = 0;

    snprintf(cutoff, sizeof cutoff, "%.6f", before);
    snprintf(scan, sizeof scan, "%d", 1000);
    for (;;) {
        /* a thousand events per transaction: the instances' writes never wait long */
        const char *v[3] = {cursor, cutoff, scan};
        PGresult *r = ad_query(
            a,
            "WITH scan AS (SELECT id FROM %1$s.events WHERE id > $1::bigint AND"
            "  received_at < $2::float8 ORDER BY id LIMIT $3::int),"
            " del AS (DELETE FROM %1$s.events e USING scan WHERE e.id = scan.id AND NOT EXISTS"
            "  (SELECT 1 FROM %1$s.deliveries d WHERE d.event_id = e.id AND d.state <> 1)"
            "  RETURNING e.id, octet_length(e.body) + octet_length(e.headers) AS n),"
            " dl AS (DELETE FROM %1$s.deliveries WHERE event_id IN (SELECT id FROM del)),"
            " da AS (DELETE FROM %1$s.attempts WHERE event_id IN (SELECT id FROM del)),"
            " acc AS (INSERT INTO %1$s.spool_bytes AS b (owner, bytes)"
            "  SELECT 'spool purge', -sum(n) FROM del HAVING count(*) > 0"
            "  ON CONFLICT (owner) DO UPDATE SET bytes = b.bytes + EXCLUDED.bytes)"
            " SELECT (SELECT max(id) FROM scan), (SELECT count(*) FROM del)",
            3, v);
        if (!r) return -1;
        purged += atoll(PQgetvalue(r, 0, 1));
        if (PQgetisnull(r, 0, 0)) {
            PQclear(r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    return purged;
}

/* --- the console's questions ------------------------------------------------------------------ */

/* Events a call looks at, at most, in a scan by id (a type or text filter): the page may come
 * back short, with a next to go on from. */
#define PG_SCAN_BUDGET 10000

static struct store_outcome *pg_found_handler(struct store_found *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->h[i].handler, name) == 0) return &f->h[i];
    f->h = wh_xrealloc(f->h, (size_t)(f->n + 1) * sizeof *f->h);
    f->h[f->n] = (struct store_outcome){.handler = wh_xstrdup(name),
                                        .error = wh_xstrdup(""),
                                        .state = EV_OK,
                                        .attempts = 1, /* a success leaves no row */
                                        .duration_ms = -1};
    return &f->h[f->n++];
}

/* Events ids[0..n) (in that order; those gone are left out) with their outcomes, into f
 * (n of them): how many, or -1. */
static int pg_found_read(struct store_admin *a, const long long *ids, int n, struct store_found *f)
{
    struct wh_buf list = {0};
    const char *v[1];
    PGresult *ev, *rows, *att;
    int got = 0;

    buf_str(&list, "{");
    for (int i = 0; i < n; i++)
        array_num(&list, ids[i]);
    buf_str(&list, "}");
    if (list.failed) {
        buf_free(&list);
        set_err(NULL, "out of memory");
        return -1;
    }
    v[0] = list.p;
    ev = ad_query(a,
                  "SELECT id, type, received_at, coalesce(handlers, '[]'), handlers IS NULL"
                  " FROM %1$s.events WHERE id = ANY($1::bigint[])",
                  1, v);
    rows = ev ? ad_query(a,
                         "SELECT event_id, handler, state, attempts, coalesce(last_error, '')"
                         " FROM %1$s.deliveries WHERE event_id = ANY($1::bigint[])"
                         " ORDER BY event_id, handler",
                         1, v)
              : NULL;
    att = rows ? ad_query(a,
                          "SELECT event_id, handler, outcome, duration_ms FROM %1$s.attempts"
                          " WHERE event_id = ANY($1::bigint[]) ORDER BY event_id, at",
                          1, v)
               : NULL;
    buf_free(&list);
    if (!att) {
        PQclear(ev);
        PQclear(rows);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        struct store_found *x = &f[got];
        int k = 0;
        while (k < PQntuples(ev) && atoll(PQgetvalue(ev, k, 0)) != ids[i])
            k++;
        if (k == PQntuples(ev)) continue; /* gone (retention) since it was a candidate */
        memset(x, 0, sizeof *x);
        x->id = ids[i];
        x->type = wh_xstrdup(PQgetvalue(ev, k, 1));
        x->received_at = atof(PQgetvalue(ev, k, 2));
        {
            /* the handlers it names (a version 1 event names none: its rows say all) */
            json_t *names = json_loads(PQgetvalue(ev, k, 3), 0, NULL);
            size_t j;
            json_t *name;
            json_array_foreach(names, j, name) if (json_is_string(name))
                pg_found_handler(x, json_string_value(name));
            json_decref(names);
        }
        for (int r = 0; r < PQntuples(rows); r++) {
            struct store_outcome *h;
            int st, tries;
            if (atoll(PQgetvalue(rows, r, 0)) != ids[i]) continue;
            h = pg_found_handler(x, PQgetvalue(rows, r, 1));
            st = atoi(PQgetvalue(rows, r, 2));
            tries = atoi(PQgetvalue(rows, r, 3));
            h->state = st == DELIVERY_DONE   ? EV_OK
                       : st == DELIVERY_DEAD ? EV_DEAD
                       : tries > 0           ? EV_FAILED
                                             : EV_PENDING;
            h->attempts = tries;
            free((char *)h->error);
            h->error = wh_xstrdup(PQgetvalue(rows, r, 4));
        }
        for (int r = 0; r < PQntuples(att); r++) {
            struct store_outcome *h;
            if (atoll(PQgetvalue(att, r, 0)) != ids[i]) continue;
            h = pg_found_handler(x, PQgetvalue(att, r, 1));
            h->duration_ms = atof(PQgetvalue(att, r, 3));
            h->timeout = atoi(PQgetvalue(att, r, 2)) == ATTEMPT_TIMEOUT;
            h->recorded++;
        }
        store_found_finish(x);
        got++;
    }
    PQclear(ev);
    PQclear(rows);
    PQclear(att);
    return got;
}

static int pg_matches(const struct store_found *f, const struct store_query *q)
{
    return (!q->type || strcmp(f->type, q->type) == 0) && (q->state < 0 || f->state == q->state);
}

/* The candidates for q below `before`, newest first, into *ids: how many, or -1. *full: the
 * query stopped at its limit; *window: where a scan by id stopped (0: it did not scan). */
static int pg_candidates(struct store_admin *a, const struct store_query *q, long long before,
                         int limit, int by_id, long long **ids, int *full, long long *window)
{
    char b[32], lim[16], floor_id[32];
    PGresult *r;
    int n;

    *full = 0;
    *window = 0;
    snprintf(b, sizeof b, "%lld", before);
    snprintf(lim, sizeof lim, "%d", limit);
    if (by_id) {
        *ids = wh_xmalloc(sizeof **ids);
        (*ids)[0] = strtoll(q->q, NULL, 10);
        return 1;
    }
    if (!q->q && q->state == EV_DEAD) {
        const char *v[2] = {b, lim};
        r = ad_query(a,
                     "SELECT DISTINCT event_id FROM %1$s.deliveries WHERE state = 2"
                     " AND event_id < $1::bigint ORDER BY event_id DESC LIMIT $2::int",
                     2, v);
    } else if (!q->q && (q->state == EV_FAILED || q->state == EV_PENDING)) {
        const char *v[3] = {b, lim, q->state == EV_FAILED ? "1" : "0"};
        r = ad_query(a,
                     "SELECT DISTINCT event_id FROM %1$s.deliveries WHERE state = 0"
                     " AND (attempts > 0) = ($3::int = 1) AND event_id < $1::bigint"
                     " ORDER BY event_id DESC LIMIT $2::int",
                     3, v);
    } else {
        /* a window of ids below `before`: one call's share of the scan */
        PGresult *top = ad_query(a, "SELECT coalesce(max(id), 0) + 1 FROM %1$s.events", 0, NULL);
        long long t;
        if (!top) return -1;
        t = atoll(PQgetvalue(top, 0, 0));
        PQclear(top);
        if (t > before) t = before;
        snprintf(b, sizeof b, "%lld", t);
        snprintf(floor_id, sizeof floor_id, "%lld", t - PG_SCAN_BUDGET);
        *window = t - PG_SCAN_BUDGET;
        {
            const char *v[5] = {b, lim, floor_id, q->type, q->q};
            r = ad_query(a,
                         "SELECT id FROM %1$s.events WHERE id < $1::bigint AND id >= $3::bigint"
                         " AND ($4::text IS NULL OR type = $4::text)"
                         " AND ($5::text IS NULL OR position(convert_to($5::text, 'UTF8') IN body)"
                         " > 0) ORDER BY id DESC LIMIT $2::int",
                         5, v);
        }
    }
    if (!r) return -1;
    n = PQntuples(r);
    *full = n == limit;
    *ids = wh_xmalloc((size_t)(n + 1) * sizeof **ids);
    for (int i = 0; i < n; i++)
        (*ids)[i] = atoll(PQgetvalue(r, i, 0));
    PQclear(r);
    return n;
}

static int ad_events(struct store_admin *a, const struct store_query *q,
                     void (*ev)(void *arg, const struct store_event *e), void *arg, long long *next)
{
    long long before = q->before > 0 ? q->before : 0x7fffffffffffffffLL, *ids = NULL, window;
    int limit = q->limit < 1 ? 1 : q->limit > 200 ? 200 : q->limit, n_ids, n, full, shown = 0;
    long long last = 0; /* the last candidate looked at */
    struct store_found *f;
    char *end = NULL;
    int by_id =
        q->q && *q->q && strtoll(q->q, &end, 10) > 0 && !*end && strtoll(q->q, NULL, 10) < before;

    *next = 0;
    for (;;) {
        if ((n_ids = pg_candidates(a, q, before, limit * 4, by_id, &ids, &full, &window)) < 0)
            return -1;
        f = wh_xcalloc((size_t)n_ids + 1, sizeof *f);
        if ((n = pg_found_read(a, ids, n_ids, f)) < 0) {
            free(ids);
            free(f);
            return -1;
        }
        if (by_id && (n == 0 || !pg_matches(&f[0], q))) { /* no such id: the text, then */
            for (int i = 0; i < n; i++)
                store_found_free(&f[i]);
            free(ids);
            free(f);
            by_id = 0;
            continue;
        }
        break;
    }
    for (int i = 0; i < n; i++) {
        struct store_event e = store_found_event(&f[i]);
        if (shown < limit) {
            last = f[i].id;
            if (pg_matches(&f[i], q)) {
                ev(arg, &e);
                shown++;
            }
        }
        store_found_free(&f[i]);
    }
    if (!by_id && n) {
        int more = (shown == limit && last != f[n - 1].id) || full || window > 1;
        /* a full page goes on below its last event; a short one below what it looked at */
        if (more) *next = shown == limit ? last : full ? ids[n_ids - 1] : window;
    } else if (!by_id && window > 1) {
        *next = window; /* nothing in this window: the scan goes on below it */
    }
    free(ids);
    free(f);
    return 0;
}

static int ad_event(struct store_admin *a, long long id,
                    void (*ev)(void *arg, const struct store_event *e), void *arg)
{
    struct store_found f;
    int n = pg_found_read(a, &id, 1, &f);

    if (n <= 0) return n;
    return store_found_give(&f, ev, arg);
}

static int ad_detail(struct store_admin *a, long long id,
                     void (*got)(void *arg, const struct store_detail *d), void *arg)
{
    struct store_found f;
    struct store_attempt *att;
    char ids[32];
    const char *v[1] = {ids};
    PGresult *ev, *at;
    int n;

    if ((n = pg_found_read(a, &id, 1, &f)) <= 0) return n;
    snprintf(ids, sizeof ids, "%lld", id);
    ev = ad_query(a, "SELECT headers, body FROM %1$s.events WHERE id = $1::bigint", 1, v);
    at = ev ? ad_query(a,
                       "SELECT handler, outcome, duration_ms, at, coalesce(error, ''),"
                       " coalesce(log, '') FROM %1$s.attempts WHERE event_id = $1::bigint"
                       " ORDER BY at",
                       1, v)
            : NULL;
    if (!at || PQntuples(ev) == 0) {
        PQclear(ev);
        PQclear(at);
        store_found_free(&f);
        return at ? 0 : -1;
    }
    att = wh_xcalloc((size_t)PQntuples(at) + 1, sizeof *att);
    for (int i = 0; i < PQntuples(at); i++)
        att[i] = (struct store_attempt){.handler = PQgetvalue(at, i, 0),
                                        .outcome = atoi(PQgetvalue(at, i, 1)),
                                        .duration_ms = atof(PQgetvalue(at, i, 2)),
                                        .at = atof(PQgetvalue(at, i, 3)),
                                        .error = PQgetvalue(at, i, 4),
                                        .log = PQgetvalue(at, i, 5)};
    {
        /* the body comes back in bytea's hex form */
        size_t len = 0;
        unsigned char *body = PQunescapeBytea((const unsigned char *)PQgetvalue(ev, 0, 1), &len);
        struct store_detail d = {.e = store_found_event(&f),
                                 .headers_json = PQgetvalue(ev, 0, 0),
                                 .body = body ? (const char *)body : "",
                                 .body_len = body ? len : 0,
                                 .attempts = att,
                                 .n_attempts = PQntuples(at)};
        got(arg, &d);
        PQfreemem(body);
    }
    free(att);
    PQclear(ev);
    PQclear(at);
    store_found_free(&f);
    return 1;
}

static long long ad_replay_event(struct store_admin *a, long long id, const char *handler)
{
    struct store_found f;
    struct wh_buf names = {0};
    char ids[32];
    long long n;
    int found;
    PGresult *r;

    if ((found = pg_found_read(a, &id, 1, &f)) <= 0) return found;
    buf_str(&names, "{");
    for (int i = 0; i < f.n; i++)
        if (!handler || strcmp(handler, f.h[i].handler) == 0) array_text(&names, f.h[i].handler);
    buf_str(&names, "}");
    store_found_free(&f);
    if (handler && names.len == 2) { /* "{}": a handler the event does not have */
        buf_free(&names);
        return -3;
    }
    if (names.failed) {
        buf_free(&names);
        set_err(NULL, "out of memory");
        return -1;
    }
    snprintf(ids, sizeof ids, "%lld", id);
    {
        /* due now, attempts afresh, a new token (a late result of an old run cannot land on
         * it); a first delivery still owed (pending, never tried) is left as it is */
        const char *v[3] = {ids, names.p, a->s.channel};
        r = ad_query(a,
                     "WITH u AS (INSERT INTO %1$s.deliveries AS d (event_id, handler, next_at)"
                     "  SELECT $1::bigint, h, now() FROM unnest($2::text[]) h"
                     "  ON CONFLICT (event_id, handler) DO UPDATE SET state = 0, attempts = 0,"
                     "  next_at = now(), last_error = NULL, lease_owner = NULL,"
                     "  lease_token = d.lease_token + 1 WHERE NOT (d.state = 0 AND d.attempts = 0)"
                     "  RETURNING 1)"
                     " SELECT count(*), pg_notify($3::text, '0') FROM u",
                     3, v);
    }
    buf_free(&names);
    if (!r) return -1;
    n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static const char *ad_error(struct store_admin *a)
{
    (void)a;
    return tl_err;
}

static void ad_close(struct store_admin *a)
{
    PQfinish(a->pg);
    free(a);
}

const struct admin_ops store_pg_admin = {
    .open = ad_open,
    .stats = ad_stats,
    .list = ad_list,
    .replay = ad_replay,
    .events = ad_events,
    .event = ad_event,
    .detail = ad_detail,
    .replay_event = ad_replay_event,
    .purge = ad_purge,
    .error = ad_error,
    .close = ad_close,
};
