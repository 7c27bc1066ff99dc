#define _GNU_SOURCE
#include "spool.h"

#include "clock.h"

#include "dispatch.h"
#include "generation.h"
#include "json_text.h"
#include "log.h"
#include "metrics.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DUE_BATCH 16
#define IDLE_POLL_MS 200
#define SIZE_POLL_MS 500
/* Group commit: with fewer requests than this queued, wait up to GATHER_US for more before
 * committing. Their senders are a round trip away from sending; one fsync then covers all. */
#define GATHER_MIN 8
#define GATHER_US 200
/* Delivery results ride along with stored events; alone, they are written once this many
 * have queued or the oldest has waited this long. */
#define RESULTS_BATCH 256
#define RESULTS_MAX_WAIT_MS 20

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE IF NOT EXISTS events ("
    "  id INTEGER PRIMARY KEY, type TEXT NOT NULL, body BLOB NOT NULL,"
    "  headers TEXT NOT NULL, received_at REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS deliveries ("
    "  event_id INTEGER NOT NULL REFERENCES events(id), handler TEXT NOT NULL,"
    "  state INTEGER NOT NULL DEFAULT 0,"   /* 0 pending, 1 delivered, 2 dead */
    "  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,"
    "  PRIMARY KEY (event_id, handler));"
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at);"
    "CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);";

struct put {
    const struct spool_event *ev;
    enum spool_result result;
    int done;
    struct put *next;
};

struct result {
    long long event_id;
    char *handler;
    int ok, attempts, max_attempts;
    long long initial_ms, max_ms;
    char *error;
    struct result *next;
};

struct claim {
    long long event_id;
    char *handler;
    struct claim *next;
};

struct spool {
    const struct wh_config *cfg;
    spool_current_fn current;
    void *arg;
    sqlite3 *wdb;
    sqlite3_stmt *ins_event, *ins_delivery, *dd_ins, *dd_get, *dd_upd, *upd_ok, *upd_fail;
    pthread_t writer;
    pthread_t *dispatchers;
    int n_dispatchers;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv, disp_cv, gather_cv;
    struct put *puts, **puts_tail;
    struct result *results, **results_tail;
    struct claim *claims;
    int stopping;
    long long used_bytes, max_bytes;
    unsigned long queued_since;
    int n_results;
    long long first_result_ms; /* monotonic time the oldest queued result arrived */
    int flush_results;         /* a dispatcher waits on uncommitted results: write them now */
};

/* With mu held: are queued results due for a transaction of their own? */
static int results_due(const struct spool *sp)
{
    return sp->results && (sp->n_results >= RESULTS_BATCH || sp->stopping || sp->flush_results ||
                           wh_mono_ms() - sp->first_result_ms >= RESULTS_MAX_WAIT_MS);
}

static int open_db(const char *path, sqlite3 **db, char *err, size_t err_len)
{
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, err_len, "spool %s: %s", path, *db ? sqlite3_errmsg(*db) : "cannot open");
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*db, 5000);
    sqlite3_exec(*db, "PRAGMA synchronous=FULL;", NULL, NULL, NULL);
    return 0;
}

/* Bytes the spool's live pages take (a purge frees pages: space returns without VACUUM). */
static long long used_bytes(sqlite3 *db)
{
    static __thread sqlite3_stmt *st; /* the writer's (or the opener's), prepared once */
    static __thread sqlite3 *for_db;
    long long v = 0;

    if (for_db != db) {
        sqlite3_finalize(st);
        st = NULL;
        for_db = db;
        if (!db)
            return 0;
        sqlite3_prepare_v2(db, "SELECT (SELECT page_count FROM pragma_page_count()) - "
                               "(SELECT freelist_count FROM pragma_freelist_count()), "
                               "(SELECT page_size FROM pragma_page_size())", -1, &st, NULL);
    }
    if (st && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0) * sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    return v;
}

static void used_bytes_forget(void)
{
    used_bytes(NULL); /* finalises this thread's statement */
}

static void refresh_gauges(struct spool *sp)
{
    sqlite3_stmt *st;

    if (sqlite3_prepare_v2(sp->wdb,
                           "SELECT (SELECT count(*) FROM deliveries WHERE state=0),"
                           "       (SELECT count(*) FROM deliveries WHERE state=2)",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        metrics_spool(sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    __atomic_store_n(&sp->used_bytes, used_bytes(sp->wdb), __ATOMIC_RELAXED);
}

/* --- the writer ---------------------------------------------------------------------------- */

static int store(struct spool *sp, struct put *p, double now)
{
    const struct spool_event *ev = p->ev;
    long long id;

    if (ev->dedupe_key) {
        sqlite3_reset(sp->dd_ins);
        sqlite3_bind_text(sp->dd_ins, 1, ev->dedupe_key, -1, SQLITE_STATIC);
        sqlite3_bind_double(sp->dd_ins, 2, now + (double)ev->dedupe_window_s);
        if (sqlite3_step(sp->dd_ins) != SQLITE_DONE)
            return -1;
        if (sqlite3_changes(sp->wdb) == 0) {
            double expires = 0;
            sqlite3_reset(sp->dd_get);
            sqlite3_bind_text(sp->dd_get, 1, ev->dedupe_key, -1, SQLITE_STATIC);
            if (sqlite3_step(sp->dd_get) == SQLITE_ROW)
                expires = sqlite3_column_double(sp->dd_get, 0);
            sqlite3_reset(sp->dd_get);
            if (expires > now) {
                p->result = SPOOL_DUPLICATE;
                return 0;
            }
            sqlite3_reset(sp->dd_upd);
            sqlite3_bind_double(sp->dd_upd, 1, now + (double)ev->dedupe_window_s);
            sqlite3_bind_text(sp->dd_upd, 2, ev->dedupe_key, -1, SQLITE_STATIC);
            if (sqlite3_step(sp->dd_upd) != SQLITE_DONE)
                return -1;
        }
    }
    sqlite3_reset(sp->ins_event);
    sqlite3_bind_text(sp->ins_event, 1, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_blob(sp->ins_event, 2, ev->body, (int)ev->body_len, SQLITE_STATIC);
    sqlite3_bind_text(sp->ins_event, 3, ev->headers_json, -1, SQLITE_STATIC);
    sqlite3_bind_double(sp->ins_event, 4, ev->received_at);
    if (sqlite3_step(sp->ins_event) != SQLITE_DONE)
        return -1;
    id = sqlite3_last_insert_rowid(sp->wdb);
    for (int i = 0; i < ev->n_handlers; i++) {
        sqlite3_reset(sp->ins_delivery);
        sqlite3_bind_int64(sp->ins_delivery, 1, id);
        sqlite3_bind_text(sp->ins_delivery, 2, ev->handlers[i], -1, SQLITE_STATIC);
        sqlite3_bind_double(sp->ins_delivery, 3, now);
        if (sqlite3_step(sp->ins_delivery) != SQLITE_DONE)
            return -1;
    }
    p->result = SPOOL_STORED;
    return 0;
}

static double backoff_s(const struct result *r)
{
    double ms = (double)r->initial_ms * pow(2.0, r->attempts - 1);

    if (ms > (double)r->max_ms)
        ms = (double)r->max_ms;
    /* jitter: between half and all of it, so retries of many events spread out */
    return ms * (0.5 + 0.5 * ((double)random() / RAND_MAX)) / 1000.0;
}

static int record(struct spool *sp, const struct result *r, double now)
{
    sqlite3_stmt *st;

    if (r->ok) {
        st = sp->upd_ok;
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, r->attempts);
        sqlite3_bind_int64(st, 2, r->event_id);
        sqlite3_bind_text(st, 3, r->handler, -1, SQLITE_STATIC);
    } else {
        int dead = r->attempts >= r->max_attempts;
        st = sp->upd_fail;
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, dead ? 2 : 0);
        sqlite3_bind_int(st, 2, r->attempts);
        sqlite3_bind_double(st, 3, now + (dead ? 0 : backoff_s(r)));
        sqlite3_bind_text(st, 4, r->error ? r->error : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, r->event_id);
        sqlite3_bind_text(st, 6, r->handler, -1, SQLITE_STATIC);
    }
    return sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
}

static void unclaim(struct spool *sp, long long id, const char *handler)
{
    for (struct claim **c = &sp->claims; *c; c = &(*c)->next) {
        if ((*c)->event_id == id && strcmp((*c)->handler, handler) == 0) {
            struct claim *gone = *c;
            *c = gone->next;
            free(gone->handler);
            free(gone);
            return;
        }
    }
}

static void *writer_main(void *arg)
{
    struct spool *sp = arg;
    unsigned long batches = 0;
    int full_sync = 1; /* open_db set synchronous=FULL */

    pthread_mutex_lock(&sp->mu);
    for (;;) {
        struct put *puts;
        struct result *results;
        struct timespec until, t0, t1;
        int rc, failed = 0;
        double now;

        while (!sp->puts && !results_due(sp) && !sp->stopping) {
            wh_deadline_in(&until, sp->results ? RESULTS_MAX_WAIT_MS : SIZE_POLL_MS);
            if (pthread_cond_timedwait(&sp->work_cv, &sp->mu, &until) != 0 && !sp->results) {
                pthread_mutex_unlock(&sp->mu);
                refresh_gauges(sp); /* a purge elsewhere may have freed space */
                pthread_mutex_lock(&sp->mu);
            }
        }
        if (!sp->puts && !sp->results && sp->stopping)
            break;
        if (sp->puts && !sp->stopping) {
            int queued = 0;
            for (struct put *p = sp->puts; p && queued < GATHER_MIN; p = p->next)
                queued++;
            if (queued < GATHER_MIN) {
                wh_deadline_in_us(&until, GATHER_US);
                pthread_cond_timedwait(&sp->gather_cv, &sp->mu, &until);
            }
        }
        puts = sp->puts;
        results = sp->results;
        sp->puts = NULL;
        sp->puts_tail = &sp->puts;
        sp->results = NULL;
        sp->results_tail = &sp->results;
        sp->n_results = 0;
        sp->flush_results = 0;
        pthread_mutex_unlock(&sp->mu);

        /* one transaction, one sync, for everything queued meanwhile */
        clock_gettime(CLOCK_MONOTONIC, &t0);
        now = wh_now_s();
        /* Results alone need no sync of their own: losing a "done" mark in a crash means one
         * more delivery (at least once), and the next stored event's sync covers them. */
        if (full_sync != (puts != NULL)) {
            full_sync = puts != NULL;
            sqlite3_exec(sp->wdb, full_sync ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                         NULL, NULL, NULL);
        }
        rc = sqlite3_exec(sp->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        for (struct put *p = puts; p && rc == SQLITE_OK && !failed; p = p->next)
            failed = store(sp, p, now) != 0;
        for (struct result *r = results; r && rc == SQLITE_OK && !failed; r = r->next)
            failed = record(sp, r, now) != 0;
        if (rc == SQLITE_OK && !failed)
            rc = sqlite3_exec(sp->wdb, "COMMIT", NULL, NULL, NULL);
        else
            rc = SQLITE_ERROR;
        if (rc != SQLITE_OK) {
            int ext = sqlite3_extended_errcode(sp->wdb);
            if (ext == SQLITE_IOERR_FSYNC || ext == SQLITE_IOERR_DIR_FSYNC) {
                /* the kernel may have dropped the pages; a second fsync can lie */
                log_msg(LOG_ERROR, "spool fsync failed: exiting rather than trust the spool",
                        LOG_S("error", sqlite3_errmsg(sp->wdb)));
                _exit(3);
            }
            log_msg(LOG_ERROR, "spool commit failed: answering 503",
                    LOG_S("error", sqlite3_errmsg(sp->wdb)));
            sqlite3_exec(sp->wdb, "ROLLBACK", NULL, NULL, NULL);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        metrics_spool_commit((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        if (++batches % 64 == 0 || rc != SQLITE_OK) {
            sqlite3_exec(sp->wdb, "DELETE FROM dedupe WHERE expires_at < unixepoch()", NULL, NULL, NULL);
            refresh_gauges(sp);
        } else if (puts) {
            /* the size limit follows every batch that stored events */
            __atomic_store_n(&sp->used_bytes, used_bytes(sp->wdb), __ATOMIC_RELAXED);
        }

        pthread_mutex_lock(&sp->mu);
        for (struct put *p = puts; p; p = p->next) {
            if (rc != SQLITE_OK)
                p->result = SPOOL_ERROR;
            p->done = 1;
        }
        while (results) {
            struct result *r = results;
            results = r->next;
            if (rc == SQLITE_OK)
                metrics_delivery(r->handler, r->ok ? 0 : r->attempts >= r->max_attempts ? 2 : 1);
            unclaim(sp, r->event_id, r->handler); /* committed (or left pending): free to run */
            free(r->handler);
            free(r->error);
            free(r);
        }
        pthread_cond_broadcast(&sp->done_cv);
        pthread_cond_broadcast(&sp->disp_cv);
    }
    pthread_mutex_unlock(&sp->mu);
    used_bytes_forget();
    return NULL;
}

enum spool_result spool_put(struct spool *sp, const struct spool_event *ev)
{
    struct put p = {.ev = ev};

    if (__atomic_load_n(&sp->used_bytes, __ATOMIC_RELAXED) > sp->max_bytes)
        return SPOOL_FULL;
    pthread_mutex_lock(&sp->mu);
    *sp->puts_tail = &p;
    sp->puts_tail = &p.next;
    pthread_cond_signal(&sp->work_cv);
    if (++sp->queued_since % GATHER_MIN == 0)
        pthread_cond_signal(&sp->gather_cv); /* enough for a batch: no need to wait longer */
    while (!p.done)
        pthread_cond_wait(&sp->done_cv, &sp->mu);
    pthread_mutex_unlock(&sp->mu);
    if (p.result == SPOOL_DUPLICATE)
        metrics_duplicate();
    return p.result;
}

/* --- dispatchers ------------------------------------------------------------------------------ */

struct due {
    long long event_id;
    char *handler, *type, *headers;
    void *body;
    int body_len, attempts;
    double received_at;
};

static int claimed(struct spool *sp, long long id, const char *handler)
{
    for (struct claim *c = sp->claims; c; c = c->next)
        if (c->event_id == id && strcmp(c->handler, handler) == 0)
            return 1;
    return 0;
}

static void deliver(struct spool *sp, struct due *d)
{
    struct generation *g = sp->current(sp->arg);
    const struct bound_handler *b = generation_handler(g, d->handler);
    struct result *r = calloc(1, sizeof *r);
    char err[4096] = "";
    json_t *hdrs = json_loads(d->headers, 0, NULL);
    struct wh_header h[64];
    int nh = 0;
    const char *k;
    json_t *v;

    json_object_foreach(hdrs, k, v) {
        if (nh < 64 && json_is_string(v)) {
            h[nh].name = k;
            h[nh++].value = json_string_value(v);
        }
    }
    r->event_id = d->event_id;
    r->handler = strdup(d->handler);
    r->attempts = d->attempts + 1;
    r->max_attempts = g->cfg->retry_max_attempts;
    r->initial_ms = g->cfg->retry_initial_backoff_ms;
    r->max_ms = g->cfg->retry_max_backoff_ms;
    if (!b) {
        snprintf(err, sizeof err, "handler %s is not in the running configuration", d->handler);
        r->attempts = r->max_attempts; /* nothing to retry with: a dead letter to replay */
    } else if (json_text_check(d->body, (size_t)d->body_len) == JSON_TEXT_OBJECT) {
        struct wh_event ev = {.type = d->type, .body = d->body, .body_len = (size_t)d->body_len,
                              .received_at = d->received_at,
                              .headers = h, .n_headers = nh};
        r->ok = dispatch_handler(g, b, &ev, err, sizeof err) == 0;
    } else {
        snprintf(err, sizeof err, "stored body is not JSON");
    }
    log_msg(r->ok ? LOG_INFO : LOG_WARN, "delivery", LOG_I("event_id", d->event_id),
            LOG_S("handler", d->handler), LOG_S("event", d->type), LOG_I("attempt", r->attempts),
            LOG_S("result", r->ok ? "ok" : r->attempts >= r->max_attempts ? "dead" : "retry"),
            LOG_S("error", r->ok ? "" : err), LOG_I("generation", g->id));
    if (!r->ok)
        r->error = strdup(err);
    json_decref(hdrs);
    generation_release(g);
    pthread_mutex_lock(&sp->mu);
    if (!sp->results)
        sp->first_result_ms = wh_mono_ms();
    *sp->results_tail = r;
    sp->results_tail = &r->next;
    if (++sp->n_results >= RESULTS_BATCH)
        pthread_cond_signal(&sp->work_cv);
    pthread_mutex_unlock(&sp->mu);
}

static void *dispatcher_main(void *arg)
{
    struct spool *sp = arg;
    sqlite3 *db = NULL;
    sqlite3_stmt *due = NULL, *recheck = NULL;
    char err[256];

    if (open_db(sp->cfg->spool, &db, err, sizeof err) ||
        sqlite3_prepare_v2(db,
                           "SELECT d.event_id, d.handler, d.attempts, e.type, e.body, e.headers,"
                           "       e.received_at FROM deliveries d JOIN events e ON e.id = d.event_id"
                           " WHERE d.state = 0 AND d.next_at <= ?1 ORDER BY d.next_at LIMIT ?2",
                           -1, &due, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT state, attempts FROM deliveries WHERE event_id = ?1 AND handler = ?2",
                           -1, &recheck, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "spool dispatcher cannot start", LOG_S("error", db ? sqlite3_errmsg(db) : err));
        sqlite3_close(db);
        return NULL;
    }
    for (;;) {
        struct due rows[DUE_BATCH], batch[DUE_BATCH];
        int nrows = 0, n = 0;

        if (__atomic_load_n(&sp->stopping, __ATOMIC_ACQUIRE))
            break;
        /* read without the lock: requests and the writer never wait on this query */
        sqlite3_bind_double(due, 1, wh_now_s());
        sqlite3_bind_int(due, 2, DUE_BATCH);
        while (nrows < DUE_BATCH && sqlite3_step(due) == SQLITE_ROW) {
            struct due *d = &rows[nrows++];
            d->event_id = sqlite3_column_int64(due, 0);
            d->handler = strdup((const char *)sqlite3_column_text(due, 1));
            d->attempts = sqlite3_column_int(due, 2);
            d->type = strdup((const char *)sqlite3_column_text(due, 3));
            d->body_len = sqlite3_column_bytes(due, 4);
            d->body = malloc((size_t)d->body_len + 1);
            memcpy(d->body, sqlite3_column_blob(due, 4), (size_t)d->body_len);
            ((char *)d->body)[d->body_len] = '\0';
            d->headers = strdup((const char *)sqlite3_column_text(due, 5));
            d->received_at = sqlite3_column_double(due, 6);
        }
        sqlite3_reset(due); /* ends the read transaction: checkpoints can run */
        /* then claim under the lock what no other dispatcher is running */
        pthread_mutex_lock(&sp->mu);
        for (int i = 0; i < nrows; i++) {
            if (claimed(sp, rows[i].event_id, rows[i].handler)) {
                free(rows[i].handler);
                free(rows[i].type);
                free(rows[i].body);
                free(rows[i].headers);
                continue;
            }
            struct claim *c = calloc(1, sizeof *c);
            c->event_id = rows[i].event_id;
            c->handler = strdup(rows[i].handler);
            c->next = sp->claims;
            sp->claims = c;
            batch[n++] = rows[i];
        }
        if (n == 0) {
            struct timespec until;
            if (nrows > 0 && sp->results) {
                /* everything due is ours already, waiting for its result to be written:
                 * have the writer write them rather than wait for them to age */
                sp->flush_results = 1;
                pthread_cond_signal(&sp->work_cv);
            }
            if (!sp->stopping) {
                wh_deadline_in(&until, IDLE_POLL_MS);
                pthread_cond_timedwait(&sp->disp_cv, &sp->mu, &until);
            }
            pthread_mutex_unlock(&sp->mu);
            continue;
        }
        pthread_mutex_unlock(&sp->mu);
        for (int i = 0; i < n; i++) {
            /* The rows were read before the claim: another dispatcher may have run one and
             * had its result written since. Now that it is ours, a fresh read tells. */
            int still_due;
            sqlite3_bind_int64(recheck, 1, batch[i].event_id);
            sqlite3_bind_text(recheck, 2, batch[i].handler, -1, SQLITE_STATIC);
            still_due = sqlite3_step(recheck) == SQLITE_ROW && sqlite3_column_int(recheck, 0) == 0 &&
                        sqlite3_column_int(recheck, 1) == batch[i].attempts;
            sqlite3_reset(recheck);
            if (still_due) {
                deliver(sp, &batch[i]);
            } else {
                pthread_mutex_lock(&sp->mu);
                unclaim(sp, batch[i].event_id, batch[i].handler);
                pthread_mutex_unlock(&sp->mu);
            }
            free(batch[i].handler);
            free(batch[i].type);
            free(batch[i].body);
            free(batch[i].headers);
        }
    }
    sqlite3_finalize(due);
    sqlite3_finalize(recheck);
    sqlite3_close(db);
    return NULL;
}

/* --- open and close ----------------------------------------------------------------------------- */

int spool_open(const struct wh_config *cfg, spool_current_fn current, void *arg,
               struct spool **out, char *err, size_t err_len)
{
    struct spool *sp = calloc(1, sizeof *sp);
    char *errmsg = NULL;

    sp->cfg = cfg;
    sp->current = current;
    sp->arg = arg;
    sp->max_bytes = cfg->max_spool_mb << 20;
    sp->puts_tail = &sp->puts;
    sp->results_tail = &sp->results;
    pthread_mutex_init(&sp->mu, NULL);
    pthread_cond_init(&sp->work_cv, NULL);
    pthread_cond_init(&sp->done_cv, NULL);
    pthread_cond_init(&sp->disp_cv, NULL);
    pthread_cond_init(&sp->gather_cv, NULL);
    if (open_db(cfg->spool, &sp->wdb, err, err_len))
        goto fail;
    if (sqlite3_exec(sp->wdb, schema, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_prepare_v2(sp->wdb, "INSERT INTO events(type, body, headers, received_at) VALUES(?,?,?,?)", -1, &sp->ins_event, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "INSERT INTO deliveries(event_id, handler, next_at) VALUES(?,?,?)", -1, &sp->ins_delivery, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "INSERT OR IGNORE INTO dedupe(key, expires_at) VALUES(?,?)", -1, &sp->dd_ins, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "SELECT expires_at FROM dedupe WHERE key=?", -1, &sp->dd_get, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "UPDATE dedupe SET expires_at=? WHERE key=?", -1, &sp->dd_upd, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "UPDATE deliveries SET state=1, attempts=?, last_error=NULL WHERE event_id=? AND handler=?", -1, &sp->upd_ok, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "UPDATE deliveries SET state=?, attempts=?, next_at=?, last_error=? WHERE event_id=? AND handler=?", -1, &sp->upd_fail, NULL)) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->delivery_mode_line, cfg->spool,
                 errmsg ? errmsg : sqlite3_errmsg(sp->wdb));
        sqlite3_free(errmsg);
        goto fail;
    }
    refresh_gauges(sp);
    used_bytes_forget(); /* the writer thread prepares its own */
    long long used_at_open = sp->used_bytes; /* before any thread can write it */
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    pthread_create(&sp->writer, NULL, writer_main, sp);
    sp->n_dispatchers = cfg->delivery_workers;
    sp->dispatchers = calloc((size_t)sp->n_dispatchers, sizeof *sp->dispatchers);
    for (int i = 0; i < sp->n_dispatchers; i++)
        pthread_create(&sp->dispatchers[i], NULL, dispatcher_main, sp);
    log_msg(LOG_INFO, "spool open", LOG_S("path", cfg->spool), LOG_I("workers", sp->n_dispatchers),
            LOG_I("used_bytes", used_at_open));
    *out = sp;
    return 0;
fail:
    sqlite3_close(sp->wdb);
    free(sp);
    return -1;
}

void spool_close(struct spool *sp)
{
    sqlite3_stmt *sts[7];

    if (!sp)
        return;
    pthread_mutex_lock(&sp->mu);
    __atomic_store_n(&sp->stopping, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&sp->work_cv);
    pthread_cond_broadcast(&sp->disp_cv);
    pthread_mutex_unlock(&sp->mu);
    for (int i = 0; i < sp->n_dispatchers; i++)
        pthread_join(sp->dispatchers[i], NULL);
    pthread_join(sp->writer, NULL); /* after the dispatchers: their last results are written */
    sts[0] = sp->ins_event; sts[1] = sp->ins_delivery; sts[2] = sp->dd_ins; sts[3] = sp->dd_get;
    sts[4] = sp->dd_upd; sts[5] = sp->upd_ok; sts[6] = sp->upd_fail;
    for (int i = 0; i < 7; i++)
        sqlite3_finalize(sts[i]);
    sqlite3_close(sp->wdb);
    while (sp->claims) {
        struct claim *c = sp->claims;
        sp->claims = c->next;
        free(c->handler);
        free(c);
    }
    free(sp->dispatchers);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->work_cv);
    pthread_cond_destroy(&sp->done_cv);
    pthread_cond_destroy(&sp->disp_cv);
    pthread_cond_destroy(&sp->gather_cv);
    free(sp);
}
