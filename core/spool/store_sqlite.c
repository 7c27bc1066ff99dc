/*
 * The SQLite backend: one file on local disk (WAL, synchronous=FULL for every transaction
 * that stores events), for one process. A delivery handed to the dispatchers in memory is
 * "leased" by pushing its next_at LEASE_S ahead, so the poller does not see it meanwhile; a
 * restart makes every such row due at once. WAL checkpoints run on a thread of their own.
 */
#define _GNU_SOURCE
#include "store.h"

#include "base/base.h"

#include <errno.h>
#include <libgen.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LEASE_S 60.0
/* WAL pages after which the checkpointer copies them into the database (SQLite's own default
 * threshold, run on another thread so no commit waits for it). */
#define CHECKPOINT_PAGES 1000
/* The retention sweep looks at this many events per step. */
#define PURGE_SCAN 500

/* One row per (event, handler), clustered on that key (WITHOUT ROWID: one B-tree, not a
 * table and an index of its primary key), and an index in the poller's order. (A partial index
 * of the pending rows only was measured too: fewer pages, but p99 rose from ~1.7 to ~6 ms.) */
#define DELIVERIES_TABLE                                                                           \
    "CREATE TABLE IF NOT EXISTS deliveries ("                                                      \
    "  event_id INTEGER NOT NULL REFERENCES events(id), handler TEXT NOT NULL,"                    \
    "  state INTEGER NOT NULL DEFAULT 0," /* 0 pending, 1 delivered, 2 dead */                     \
    "  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,"               \
    "  PRIMARY KEY (event_id, handler)) WITHOUT ROWID;"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS events ("
    "  id INTEGER PRIMARY KEY, type TEXT NOT NULL, body BLOB NOT NULL,"
    "  headers TEXT NOT NULL, received_at REAL NOT NULL);" DELIVERIES_TABLE
    "CREATE INDEX IF NOT EXISTS deliveries_next ON deliveries(state, next_at, event_id, handler);"
    "CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);";

struct store {
    const struct wh_config *cfg;
    sqlite3 *wdb, *rdb; /* the writer's; the poller's */
    sqlite3_stmt *ins_event, *ins_delivery, *dd_ins, *dd_get, *dd_upd, *upd_ok, *upd_fail;
    sqlite3_stmt *begin, *commit, *rollback, *purge_scan, *size, *due, *recheck;
    int full_sync;
    long long purge_cursor; /* the retention sweep: the last event id it looked at */
    /* the poller's sweep: where the last query stopped */
    double cur_next_at;
    long long cur_event;
    char *cur_handler;
    long long used_bytes;
    char err[512]; /* why the last write failed */
    /* the checkpointer */
    pthread_t checkpointer;
    pthread_mutex_t mu;
    pthread_cond_t ckpt_cv;
    int wal_pages, stopping;
};

/* A spool written by wapphook 0.1.0 (deliveries with a rowid) keeps every row: they move into
 * the new table in one transaction. */
static int migrate(sqlite3 *db, char **errmsg)
{
    sqlite3_stmt *st = NULL;
    int old, rc;

    sqlite3_prepare_v2(db,
                       "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                       "name = 'deliveries' AND sql NOT LIKE '%WITHOUT ROWID%'",
                       -1, &st, NULL);
    old = st && sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!old) return SQLITE_OK;
    rc = sqlite3_exec(db,
                      "BEGIN IMMEDIATE;"
                      "ALTER TABLE deliveries RENAME TO deliveries_0_1;" DELIVERIES_TABLE
                      "INSERT INTO deliveries SELECT event_id, handler, state, attempts,"
                      "  next_at, last_error FROM deliveries_0_1;"
                      "DROP TABLE deliveries_0_1;"
                      "COMMIT;",
                      NULL, NULL, errmsg);
    if (rc != SQLITE_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    else
        log_msg(LOG_INFO, "spool upgraded: deliveries table rebuilt");
    return rc;
}

static int open_db(const char *path, int flags, sqlite3 **db, char *err, size_t err_len)
{
    if (sqlite3_open_v2(path, db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "spool %s: %s", path, *db ? sqlite3_errmsg(*db) : "cannot open");
        sqlite3_close(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*db, 5000);
    sqlite3_exec(*db, "PRAGMA synchronous=FULL;", NULL, NULL, NULL);
    return 0;
}

/* Runs a prepared statement that returns no rows: SQLITE_OK or the error code. */
static int step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Bytes the spool's live pages take (a purge frees pages: space returns without VACUUM). */
static void measure(struct store *s)
{
    long long v = 0;

    if (sqlite3_step(s->size) == SQLITE_ROW)
        v = sqlite3_column_int64(s->size, 0) * sqlite3_column_int64(s->size, 1);
    sqlite3_reset(s->size);
    __atomic_store_n(&s->used_bytes, v, __ATOMIC_RELAXED);
}

static void set_sync(struct store *s, int full)
{
    if (s->full_sync != full) {
        s->full_sync = full;
        sqlite3_exec(s->wdb, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", NULL,
                     NULL, NULL);
    }
}

/* --- the checkpointer ------------------------------------------------------------------------ */

/* Called by SQLite in the writer after each commit. Replaces the automatic checkpoint, which
 * would run inside that commit and hold every request of the next batch behind it. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct store *s = arg;

    (void)db;
    (void)name;
    pthread_mutex_lock(&s->mu);
    s->wal_pages = pages;
    if (pages >= CHECKPOINT_PAGES) pthread_cond_signal(&s->ckpt_cv);
    pthread_mutex_unlock(&s->mu);
    return SQLITE_OK;
}

static int fsync_failed(sqlite3 *db)
{
    int ext = sqlite3_extended_errcode(db);

    return ext == SQLITE_IOERR_FSYNC || ext == SQLITE_IOERR_DIR_FSYNC;
}

static void *checkpointer_main(void *arg)
{
    struct store *s = arg;
    sqlite3 *db = NULL;
    char err[256];

    if (open_db(s->cfg->spool, SQLITE_OPEN_READWRITE, &db, err, sizeof err)) {
        log_msg(LOG_ERROR, "spool checkpointer cannot start", LOG_S("error", err));
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        int log = 0, done = 0;
        if (s->wal_pages < CHECKPOINT_PAGES) {
            pthread_cond_wait(&s->ckpt_cv, &s->mu);
            continue;
        }
        s->wal_pages = 0;
        pthread_mutex_unlock(&s->mu);
        /* PASSIVE: copies what no reader still needs, never blocks the writer */
        if (sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) !=
            SQLITE_OK) {
            if (fsync_failed(db)) {
                log_msg(LOG_ERROR, "spool fsync failed: exiting rather than trust the spool",
                        LOG_S("error", sqlite3_errmsg(db)));
                _exit(WH_EXIT_SPOOL_SYNC);
            }
            log_msg(LOG_WARN, "spool checkpoint failed", LOG_S("error", sqlite3_errmsg(db)));
        }
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    sqlite3_close(db);
    return NULL;
}

/* --- writing ---------------------------------------------------------------------------------- */

/* Stores one event and its deliveries, due at next_at. */
static int store_one(struct store *s, struct store_put *p, double now, double next_at)
{
    const struct spool_event *ev = p->ev;
    long long id;

    if (ev->dedupe_key) {
        sqlite3_reset(s->dd_ins);
        sqlite3_bind_text(s->dd_ins, 1, ev->dedupe_key, -1, SQLITE_STATIC);
        sqlite3_bind_double(s->dd_ins, 2, now + (double)ev->dedupe_window_s);
        if (sqlite3_step(s->dd_ins) != SQLITE_DONE) return -1;
        if (sqlite3_changes(s->wdb) == 0) {
            double expires = 0;
            sqlite3_reset(s->dd_get);
            sqlite3_bind_text(s->dd_get, 1, ev->dedupe_key, -1, SQLITE_STATIC);
            if (sqlite3_step(s->dd_get) == SQLITE_ROW)
                expires = sqlite3_column_double(s->dd_get, 0);
            sqlite3_reset(s->dd_get);
            if (expires > now) {
                p->result = SPOOL_DUPLICATE;
                return 0;
            }
            sqlite3_reset(s->dd_upd);
            sqlite3_bind_double(s->dd_upd, 1, now + (double)ev->dedupe_window_s);
            sqlite3_bind_text(s->dd_upd, 2, ev->dedupe_key, -1, SQLITE_STATIC);
            if (sqlite3_step(s->dd_upd) != SQLITE_DONE) return -1;
        }
    }
    sqlite3_reset(s->ins_event);
    sqlite3_bind_text(s->ins_event, 1, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s->ins_event, 2, ev->body, (int)ev->body_len, SQLITE_STATIC);
    sqlite3_bind_text(s->ins_event, 3, ev->headers_json, -1, SQLITE_STATIC);
    sqlite3_bind_double(s->ins_event, 4, ev->received_at);
    if (sqlite3_step(s->ins_event) != SQLITE_DONE) return -1;
    id = sqlite3_last_insert_rowid(s->wdb);
    p->event_id = id;
    p->token = 0;
    for (int i = 0; i < ev->n_handlers; i++) {
        sqlite3_reset(s->ins_delivery);
        sqlite3_bind_int64(s->ins_delivery, 1, id);
        sqlite3_bind_text(s->ins_delivery, 2, ev->handlers[i], -1, SQLITE_STATIC);
        sqlite3_bind_double(s->ins_delivery, 3, next_at);
        if (sqlite3_step(s->ins_delivery) != SQLITE_DONE) return -1;
    }
    p->result = SPOOL_STORED;
    return 0;
}

static int record(struct store *s, const struct store_result *r, double now)
{
    sqlite3_stmt *st;

    if (r->state == DELIVERY_DONE) {
        st = s->upd_ok;
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, r->attempts);
        sqlite3_bind_int64(st, 2, r->event_id);
        sqlite3_bind_text(st, 3, r->handler, -1, SQLITE_STATIC);
    } else {
        st = s->upd_fail;
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, r->state);
        sqlite3_bind_int(st, 2, r->attempts);
        sqlite3_bind_double(st, 3, now + r->delay_s);
        sqlite3_bind_text(st, 4, r->error ? r->error : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, r->event_id);
        sqlite3_bind_text(st, 6, r->handler, -1, SQLITE_STATIC);
    }
    return sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
}

static int sq_write(struct store *s, int writer, struct store_put *puts, int n_puts,
                    struct store_result *res, int n_res, int lease)
{
    double now = wh_now_s();
    int rc, failed = 0;

    (void)writer; /* one: SQLite has one writer at a time */
    /* Results alone need no sync of their own: losing a "done" mark in a crash means one more
     * delivery (at least once), and the next stored event's sync covers them. */
    set_sync(s, n_puts > 0);
    rc = step_once(s->begin);
    for (int i = 0; i < n_puts && rc == SQLITE_OK && !failed; i++)
        failed = store_one(s, &puts[i], now, lease ? now + LEASE_S : now) != 0;
    for (int i = 0; i < n_res && rc == SQLITE_OK && !failed; i++)
        failed = record(s, &res[i], now) != 0;
    if (rc == SQLITE_OK && !failed)
        rc = step_once(s->commit);
    else
        rc = SQLITE_ERROR;
    if (rc != SQLITE_OK) {
        /* kept for sq_error: ROLLBACK replaces it (and after a failed fsync, nothing more
         * is done with the file: sq_fatal says so, and the process exits) */
        snprintf(s->err, sizeof s->err, "%s", sqlite3_errmsg(s->wdb));
        s->full_sync = -1; /* unknown after a failure: set again next time */
        if (!fsync_failed(s->wdb)) step_once(s->rollback);
        return -1;
    }
    if (n_puts) /* the size limit follows every batch that stored events */
        measure(s);
    return 0;
}

static const char *sq_error(struct store *s)
{
    return s->err;
}

static int sq_fatal(struct store *s)
{
    return fsync_failed(s->wdb);
}

/* --- purging ---------------------------------------------------------------------------------- */

/* In the caller's transaction: removes the events with from < id <= to received before
 * `before` whose every delivery succeeded (or that have none), with their deliveries; pending
 * deliveries and dead letters stay. Returns how many events went, or -1. */
static int purge_delivered(sqlite3 *db, long long from, long long to, double before)
{
    static const char *const sql[] = {
        /* the deliveries of events whose every delivery is done... */
        "DELETE FROM deliveries WHERE event_id IN (SELECT e.id FROM events e"
        " WHERE e.id > ?1 AND e.id <= ?2 AND e.received_at < ?3 AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state != 1))",
        /* ...then every event left without deliveries */
        "DELETE FROM events WHERE id > ?1 AND id <= ?2 AND received_at < ?3"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)"};
    int rc = 0;

    for (int i = 0; i < 2 && rc == 0; i++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, sql[i], -1, &st, NULL) != SQLITE_OK) return -1;
        sqlite3_bind_int64(st, 1, from);
        sqlite3_bind_int64(st, 2, to);
        sqlite3_bind_double(st, 3, before);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(st);
    }
    return rc ? -1 : sqlite3_changes(db);
}

/* Of the next PURGE_SCAN events received before `before`, removes those whose every delivery
 * is done. Its transaction needs no sync of its own (a purge lost in a crash only keeps
 * events longer). */
static int sq_purge_step(struct store *s, double before)
{
    long long to = s->purge_cursor;
    int n = 0, more = 1, rc;

    set_sync(s, 0);
    rc = step_once(s->begin);
    if (rc != SQLITE_OK) return -1;
    sqlite3_bind_int64(s->purge_scan, 1, s->purge_cursor);
    sqlite3_bind_int(s->purge_scan, 2, PURGE_SCAN);
    for (; sqlite3_step(s->purge_scan) == SQLITE_ROW; n++) {
        if (sqlite3_column_double(s->purge_scan, 1) >= before) {
            more = 0;
            break;
        }
        to = sqlite3_column_int64(s->purge_scan, 0);
    }
    sqlite3_reset(s->purge_scan);
    if (n < PURGE_SCAN) more = 0;
    if (to > s->purge_cursor && purge_delivered(s->wdb, s->purge_cursor, to, before) < 0)
        rc = SQLITE_ERROR;
    if (rc == SQLITE_OK) rc = step_once(s->commit);
    if (rc != SQLITE_OK) {
        if (fsync_failed(s->wdb)) {
            log_msg(LOG_ERROR, "spool fsync failed: exiting rather than trust the spool",
                    LOG_S("error", sqlite3_errmsg(s->wdb)));
            _exit(WH_EXIT_SPOOL_SYNC);
        }
        step_once(s->rollback);
        return -1;
    }
    s->purge_cursor = more ? to : 0;
    measure(s); /* room again? */
    return more;
}

static void sq_housekeep(struct store *s)
{
    sqlite3_stmt *st;

    sqlite3_exec(s->wdb, "DELETE FROM dedupe WHERE expires_at < unixepoch()", NULL, NULL, NULL);
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT (SELECT count(*) FROM deliveries WHERE state=0),"
                           "       (SELECT count(*) FROM deliveries WHERE state=2)",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        metrics_spool(sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    measure(s); /* a purge elsewhere may have freed space */
}

static long long sq_used_bytes(struct store *s)
{
    return __atomic_load_n(&s->used_bytes, __ATOMIC_RELAXED);
}

/* --- polling ---------------------------------------------------------------------------------- */

static int sq_poll(struct store *s, int limit, struct spool_due **rows)
{
    struct spool_due **tail = rows, *last = NULL;
    int n = 0;

    *rows = NULL;
    sqlite3_bind_double(s->due, 1, wh_now_s());
    sqlite3_bind_double(s->due, 2, s->cur_next_at);
    sqlite3_bind_int64(s->due, 3, s->cur_event);
    sqlite3_bind_text(s->due, 4, s->cur_handler, -1, SQLITE_STATIC);
    sqlite3_bind_int(s->due, 5, limit);
    while (sqlite3_step(s->due) == SQLITE_ROW) {
        struct spool_due *d = wh_xcalloc(1, sizeof *d);
        d->event_id = sqlite3_column_int64(s->due, 0);
        d->handler = wh_xstrdup((const char *)sqlite3_column_text(s->due, 1));
        d->attempts = sqlite3_column_int(s->due, 2);
        d->type = wh_xstrdup((const char *)sqlite3_column_text(s->due, 3));
        d->body_len = sqlite3_column_bytes(s->due, 4);
        if (!(d->body = malloc((size_t)d->body_len + 1))) { /* a sender's size: read it later */
            spool_due_list_free(d);
            break;
        }
        memcpy(d->body, sqlite3_column_blob(s->due, 4), (size_t)d->body_len);
        ((char *)d->body)[d->body_len] = '\0';
        d->headers = wh_xstrdup((const char *)sqlite3_column_text(s->due, 5));
        d->received_at = sqlite3_column_double(s->due, 6);
        s->cur_next_at = sqlite3_column_double(s->due, 7);
        *tail = last = d;
        tail = &d->next;
        n++;
    }
    sqlite3_reset(s->due); /* ends the read transaction: checkpoints can run */
    if (last) {            /* the next query of this sweep starts after it */
        free(s->cur_handler);
        s->cur_event = last->event_id;
        s->cur_handler = wh_xstrdup(last->handler);
    }
    if (n < limit) { /* the sweep is over: the next starts from the beginning */
        s->cur_next_at = -1e300;
        s->cur_event = 0;
        free(s->cur_handler);
        s->cur_handler = wh_xstrdup("");
    }
    return n;
}

/* The rows were read before the policy claimed them: a result may have been committed since. */
static int sq_still_due(struct store *s, const struct spool_due *d)
{
    int due;

    sqlite3_bind_int64(s->recheck, 1, d->event_id);
    sqlite3_bind_text(s->recheck, 2, d->handler, -1, SQLITE_STATIC);
    due = sqlite3_step(s->recheck) == SQLITE_ROW && sqlite3_column_int(s->recheck, 0) == 0 &&
          sqlite3_column_int(s->recheck, 1) == d->attempts;
    sqlite3_reset(s->recheck);
    return due;
}

/* --- open and close --------------------------------------------------------------------------- */

static void sq_close(struct store *s)
{
    sqlite3_stmt *sts[] = {s->ins_event,  s->ins_delivery, s->dd_ins, s->dd_get, s->dd_upd,
                           s->upd_ok,     s->upd_fail,     s->begin,  s->commit, s->rollback,
                           s->purge_scan, s->size,         s->due,    s->recheck};

    if (!s) return;
    if (s->checkpointer) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->ckpt_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->checkpointer, NULL);
    }
    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++)
        sqlite3_finalize(sts[i]);
    sqlite3_close(s->wdb);
    sqlite3_close(s->rdb);
    free(s->cur_handler);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->ckpt_cv);
    free(s);
}

static int sq_open(const struct wh_config *cfg, const struct store_hooks *hooks, struct store **out,
                   char *err, size_t err_len)
{
    struct store *s = wh_xcalloc(1, sizeof *s);
    char *errmsg = NULL, sql[160], why[512];

    (void)hooks;
    s->cfg = cfg;
    s->full_sync = 1; /* open_db set synchronous=FULL */
    s->cur_next_at = -1e300;
    s->cur_handler = wh_xstrdup("");
    pthread_mutex_init(&s->mu, NULL);
    wh_cond_init(&s->ckpt_cv);
    if (open_db(cfg->spool, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &s->wdb, why, sizeof why)) {
        snprintf(err, err_len, "%s:%d: %s", cfg->file, cfg->spool_line, why);
        goto fail;
    }
    /* deliveries handed to dispatchers in memory when the last process stopped: due now */
    snprintf(sql, sizeof sql,
             "UPDATE deliveries SET next_at = %.6f WHERE state = 0 AND "
             "attempts = 0 AND next_at > %.6f",
             wh_now_s(), wh_now_s());
    if (sqlite3_exec(s->wdb, "PRAGMA journal_mode=WAL", NULL, NULL, &errmsg) != SQLITE_OK ||
        migrate(s->wdb, &errmsg) != SQLITE_OK ||
        sqlite3_exec(s->wdb, schema, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_exec(s->wdb, sql, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_prepare_v2(s->wdb,
                           "INSERT INTO events(type, body, headers, received_at) VALUES(?,?,?,?)",
                           -1, &s->ins_event, NULL) ||
        sqlite3_prepare_v2(s->wdb,
                           "INSERT INTO deliveries(event_id, handler, next_at) VALUES(?,?,?)", -1,
                           &s->ins_delivery, NULL) ||
        sqlite3_prepare_v2(s->wdb, "INSERT OR IGNORE INTO dedupe(key, expires_at) VALUES(?,?)", -1,
                           &s->dd_ins, NULL) ||
        sqlite3_prepare_v2(s->wdb, "SELECT expires_at FROM dedupe WHERE key=?", -1, &s->dd_get,
                           NULL) ||
        sqlite3_prepare_v2(s->wdb, "UPDATE dedupe SET expires_at=? WHERE key=?", -1, &s->dd_upd,
                           NULL) ||
        sqlite3_prepare_v2(s->wdb,
                           "UPDATE deliveries SET state=1, attempts=?, last_error=NULL WHERE "
                           "event_id=? AND handler=?",
                           -1, &s->upd_ok, NULL) ||
        sqlite3_prepare_v2(s->wdb,
                           "UPDATE deliveries SET state=?, attempts=?, next_at=?, last_error=? "
                           "WHERE event_id=? AND handler=?",
                           -1, &s->upd_fail, NULL) ||
        sqlite3_prepare_v2(s->wdb, "BEGIN IMMEDIATE", -1, &s->begin, NULL) ||
        sqlite3_prepare_v2(s->wdb, "COMMIT", -1, &s->commit, NULL) ||
        sqlite3_prepare_v2(s->wdb, "ROLLBACK", -1, &s->rollback, NULL) ||
        sqlite3_prepare_v2(s->wdb,
                           "SELECT id, received_at FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                           -1, &s->purge_scan, NULL) ||
        sqlite3_prepare_v2(s->wdb,
                           "SELECT (SELECT page_count FROM pragma_page_count()) - "
                           "(SELECT freelist_count FROM pragma_freelist_count()), "
                           "(SELECT page_size FROM pragma_page_size())",
                           -1, &s->size, NULL)) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, cfg->spool,
                 errmsg ? errmsg : sqlite3_errmsg(s->wdb));
        sqlite3_free(errmsg);
        goto fail;
    }
    if (open_db(cfg->spool, SQLITE_OPEN_READWRITE, &s->rdb, why, sizeof why) ||
        sqlite3_prepare_v2(s->rdb,
                           "SELECT d.event_id, d.handler, d.attempts, e.type, e.body, e.headers,"
                           "       e.received_at, d.next_at"
                           "  FROM deliveries d JOIN events e ON e.id = d.event_id"
                           " WHERE d.state = 0 AND d.next_at <= ?1"
                           "   AND (d.next_at, d.event_id, d.handler) > (?2, ?3, ?4)"
                           " ORDER BY d.next_at, d.event_id, d.handler LIMIT ?5",
                           -1, &s->due, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(
            s->rdb, "SELECT state, attempts FROM deliveries WHERE event_id = ?1 AND handler = ?2",
            -1, &s->recheck, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, cfg->spool,
                 s->rdb ? sqlite3_errmsg(s->rdb) : why);
        goto fail;
    }
    sq_housekeep(s);
    sqlite3_wal_hook(s->wdb, wal_hook, s);
    if (pthread_create(&s->checkpointer, NULL, checkpointer_main, s) != 0) {
        s->checkpointer = 0;
        snprintf(err, err_len, "%s:%d: spool %s: cannot start the checkpointer thread", cfg->file,
                 cfg->spool_line, cfg->spool);
        goto fail;
    }
    pthread_setname_np(s->checkpointer, "spool-ckpt");
    *out = s;
    return 0;
fail:
    sq_close(s);
    return -1;
}

const struct store_ops store_sqlite = {
    .kind = "sqlite",
    .open = sq_open,
    .write = sq_write,
    .writers = 1,
    .error = sq_error,
    .fatal = sq_fatal,
    .purge_step = sq_purge_step,
    .housekeep = sq_housekeep,
    .used_bytes = sq_used_bytes,
    .poll = sq_poll,
    .still_due = sq_still_due,
    .idle_poll_ms = 200,
    .close = sq_close,
};

int store_sqlite_check(const struct wh_config *cfg, char *err, size_t err_len)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct stat sb;
    int rc = 0;

    if (stat(cfg->spool, &sb) != 0) { /* serve creates it: its folder must let it */
        char *copy = wh_xstrdup(cfg->spool);
        const char *dir = dirname(copy);
        if (access(dir, W_OK | X_OK) != 0) {
            snprintf(err, err_len, "%s:%d: spool %s: cannot create it in %s: %s", cfg->file,
                     cfg->spool_line, cfg->spool, dir, strerror(errno));
            rc = -1;
        }
        free(copy);
        return rc;
    }
    if (sqlite3_open_v2(cfg->spool, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, cfg->spool,
                 db ? sqlite3_errmsg(db) : "cannot open");
        rc = -1;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* --- the `spool` commands --------------------------------------------------------------------- */

struct store_admin {
    sqlite3 *db;
    char err[512];
};

static int ad_open(const struct wh_config *cfg, struct store_admin **out, char *err, size_t err_len)
{
    struct store_admin *a = wh_xcalloc(1, sizeof *a);

    if (sqlite3_open_v2(cfg->spool, &a->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "spool %s: %s", cfg->spool,
                 a->db ? sqlite3_errmsg(a->db) : "cannot open");
        sqlite3_close(a->db);
        free(a);
        return -1;
    }
    sqlite3_busy_timeout(a->db, 10000);
    *out = a;
    return 0;
}

static int ad_fail(struct store_admin *a)
{
    snprintf(a->err, sizeof a->err, "%s", sqlite3_errmsg(a->db));
    return -1;
}

static int ad_stats(struct store_admin *a, struct store_stats *out)
{
    sqlite3_stmt *st;

    memset(out, 0, sizeof *out);
    out->oldest_pending_s = -1;
    if (sqlite3_prepare_v2(a->db, "SELECT state, count(*) FROM deliveries GROUP BY state", -1, &st,
                           NULL) != SQLITE_OK)
        return ad_fail(a);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int s = sqlite3_column_int(st, 0);
        if (s >= 0 && s < 3) out->deliveries[s] = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(a->db,
                           "SELECT count(*), (SELECT min(e.received_at) FROM deliveries d JOIN "
                           "events e ON e.id = d.event_id WHERE d.state = 0) FROM events",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return ad_fail(a);
    }
    out->events = sqlite3_column_int64(st, 0);
    if (sqlite3_column_type(st, 1) != SQLITE_NULL)
        out->oldest_pending_s = wh_now_s() - sqlite3_column_double(st, 1);
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(a->db,
                           "SELECT (SELECT page_count FROM pragma_page_count()) * "
                           "(SELECT page_size FROM pragma_page_size())",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        out->size_bytes = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return 0;
}

/* Rows go out a page at a time, each page read in a read transaction of its own that ends
 * before it is handed on: `spool list | less` left open must not pin the WAL (a reader's
 * snapshot stops checkpoints from going past it, and the server's WAL would grow as long). */
#define LIST_PAGE 500

struct page_row {
    long long id;
    char *type, *handler, *error;
    int state, attempts;
};

static int ad_list(struct store_admin *a, int dead_only,
                   void (*row)(void *arg, const struct store_row *r), void *arg)
{
    static struct page_row page[LIST_PAGE];
    sqlite3_stmt *st;
    long long after_id = 0;
    char *after_handler = wh_xstrdup("");
    int rows;

    if (sqlite3_prepare_v2(a->db,
                           "SELECT d.event_id, e.type, d.handler, d.state, d.attempts,"
                           " coalesce(d.last_error, '') FROM deliveries d JOIN events e"
                           " ON e.id = d.event_id WHERE (?1 = 0 OR d.state = 2)"
                           " AND (d.event_id, d.handler) > (?2, ?3)"
                           " ORDER BY d.event_id, d.handler LIMIT ?4",
                           -1, &st, NULL) != SQLITE_OK) {
        free(after_handler);
        return ad_fail(a);
    }
    do {
        sqlite3_bind_int(st, 1, dead_only);
        sqlite3_bind_int64(st, 2, after_id);
        sqlite3_bind_text(st, 3, after_handler, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 4, LIST_PAGE);
        for (rows = 0; sqlite3_step(st) == SQLITE_ROW; rows++) {
            struct page_row *p = &page[rows];
            p->id = sqlite3_column_int64(st, 0);
            p->type = wh_xstrdup((const char *)sqlite3_column_text(st, 1));
            p->handler = wh_xstrdup((const char *)sqlite3_column_text(st, 2));
            p->state = sqlite3_column_int(st, 3);
            p->attempts = sqlite3_column_int(st, 4);
            p->error = wh_xstrdup((const char *)sqlite3_column_text(st, 5));
        }
        sqlite3_reset(st); /* the read transaction ends here, before the page is handed on */
        for (int i = 0; i < rows; i++) {
            struct page_row *p = &page[i];
            struct store_row r = {.event_id = p->id,
                                  .type = p->type,
                                  .handler = p->handler,
                                  .error = p->error,
                                  .owner = "",
                                  .state = p->state,
                                  .attempts = p->attempts};
            row(arg, &r);
            if (i == rows - 1) {
                after_id = p->id;
                free(after_handler);
                after_handler = wh_xstrdup(p->handler);
            }
            free(p->type);
            free(p->handler);
            free(p->error);
        }
    } while (rows == LIST_PAGE);
    sqlite3_finalize(st);
    free(after_handler);
    return 0;
}

static long long ad_replay(struct store_admin *a, long long id)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(a->db,
                           "UPDATE deliveries SET state = 0, attempts = 0, next_at = ?2,"
                           " last_error = NULL WHERE state = 2 AND (?1 = 0 OR event_id = ?1)",
                           -1, &st, NULL) != SQLITE_OK)
        return ad_fail(a);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_double(st, 2, wh_now_s());
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? sqlite3_changes(a->db) : ad_fail(a);
}

/* PURGE_RANGE event ids per transaction, so that the running server's writer never waits long
 * for the lock (its requests would get 503 past its busy timeout). */
#define PURGE_RANGE 1000

static long long ad_purge(struct store_admin *a, double before)
{
    sqlite3_stmt *end = NULL;
    long long from = 0, to, purged = 0;

    if (sqlite3_prepare_v2(a->db,
                           "SELECT max(id) FROM (SELECT id FROM events WHERE id > ?1"
                           " ORDER BY id LIMIT ?2)",
                           -1, &end, NULL) != SQLITE_OK)
        return ad_fail(a);
    for (;;) {
        int n;
        sqlite3_bind_int64(end, 1, from);
        sqlite3_bind_int(end, 2, PURGE_RANGE);
        if (sqlite3_step(end) != SQLITE_ROW || sqlite3_column_type(end, 0) == SQLITE_NULL) {
            sqlite3_reset(end);
            break; /* past the last event */
        }
        to = sqlite3_column_int64(end, 0);
        sqlite3_reset(end);
        if (sqlite3_exec(a->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
            (n = purge_delivered(a->db, from, to, before)) < 0 ||
            sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            ad_fail(a);
            sqlite3_exec(a->db, "ROLLBACK", NULL, NULL, NULL);
            sqlite3_finalize(end);
            return -1;
        }
        purged += n;
        from = to;
    }
    sqlite3_finalize(end);
    return purged;
}

static const char *ad_error(struct store_admin *a)
{
    return a->err;
}

static void ad_close(struct store_admin *a)
{
    sqlite3_close(a->db);
    free(a);
}

const struct admin_ops store_sqlite_admin = {
    .open = ad_open,
    .stats = ad_stats,
    .list = ad_list,
    .replay = ad_replay,
    .purge = ad_purge,
    .error = ad_error,
    .close = ad_close,
};
