/*
 * The SQLite backend: one file on local disk (WAL, synchronous=FULL for every transaction
 * that stores events), for one process.
 *
 * An event is written once: one row that carries its body and the handlers it is owed to,
 * as a handler set (the names, kept once in handler_sets) and a bitmask of the first
 * STORE_SLOTS of them whose first delivery has not yet been made (owed). A delivery that
 * succeeds first time clears its bit; one that fails clears it and gets a row in deliveries,
 * which then follows its retries and its dead letter. Handlers past STORE_SLOTS get a row from
 * the start. A delivery handed to the dispatchers in memory is not looked for by the poller:
 * owed events are swept only up to the last event stored before this process started or stored
 * while the dispatchers had no room (sweep_to), and a queued overflow row is "leased" by
 * pushing its next_at LEASE_S ahead; a restart makes every owed bit and such row due at once.
 * WAL checkpoints run on a thread of their own.
 */
#define _GNU_SOURCE
#include "store.h"

#include "base/base.h"

#include <errno.h>
#include <jansson.h>
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
#define CHECKPOINT_PAGES 4000
/* The retention sweep looks at this many events per step. */
#define PURGE_SCAN 200
/* Expired dedupe keys removed per housekeeping round. */
#define DEDUPE_SWEEP 2000
/* Handler sets remembered per connection (a manifest has a few per event type). */
#define HSET_CACHE 64

/* One row per (event, handler) that needs one (a retry, a dead letter, a handler past the
 * event's mask), clustered on that key (WITHOUT ROWID), an index in the poller's order and one
 * by state and event for listings. */
#define DELIVERIES_TABLE                                                                           \
    "CREATE TABLE IF NOT EXISTS deliveries ("                                                      \
    "  event_id INTEGER NOT NULL REFERENCES events(id), handler TEXT NOT NULL,"                    \
    "  state INTEGER NOT NULL DEFAULT 0," /* 0 pending, 1 delivered, 2 dead */                     \
    "  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,"               \
    "  PRIMARY KEY (event_id, handler)) WITHOUT ROWID;"

/* Version 1's tables; version 2 adds columns (migrate) and indexes (schema). */
static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS events ("
    "  id INTEGER PRIMARY KEY, type TEXT NOT NULL, body BLOB NOT NULL,"
    "  headers TEXT NOT NULL, received_at REAL NOT NULL);" DELIVERIES_TABLE
    "CREATE INDEX IF NOT EXISTS deliveries_next ON deliveries(state, next_at, event_id, handler);"
    "CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);";

static const char schema_v2[] =
    "CREATE TABLE IF NOT EXISTS handler_sets (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE);"
    /* ids_used: the largest event id retention removed, so that no later event takes it */
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    /* what an event's handlers are still owed: a row while any first delivery is */
    "CREATE TABLE IF NOT EXISTS owed (event_id INTEGER PRIMARY KEY, mask INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, event_id);"
    "CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe(expires_at);"
    /* every attempt, with what its handler logged: the console's (added within schema 2: a
     * table an older binary ignores, and each open creates if missing) */
    "CREATE TABLE IF NOT EXISTS attempts (event_id INTEGER NOT NULL, at REAL NOT NULL,"
    "  handler TEXT NOT NULL, outcome INTEGER NOT NULL, duration_ms REAL NOT NULL, error TEXT,"
    "  log TEXT, PRIMARY KEY (event_id, at, handler)) WITHOUT ROWID;";

/* A connection's handler sets: id <-> names (a JSON array). */
struct hset {
    long long id;
    char *json;
    char **names;
    int n;
};
struct hcache {
    struct hset sets[HSET_CACHE];
    int n;
};

struct store {
    const struct wh_config *cfg;
    sqlite3 *wdb, *rdb; /* the writer's; the poller's */
    sqlite3_stmt *ins_event, *ins_delivery, *dd_put, *dd_get, *upd_ok, *upd_fail;
    sqlite3_stmt *upd_owed, *ins_failed, *hs_get, *hs_ins, *hs_names;
    sqlite3_stmt *begin, *commit, *rollback, *purge_scan, *size, *due, *recheck, *owed_due;
    sqlite3_stmt *owed_recheck, *ins_owed, *del_owed, *ins_attempt;
    int full_sync;       /* the writer's synchronous setting: FULL (1) or NORMAL (0), -1 unknown */
    long long sweep_to;  /* owed events up to this id are the poller's (atomic) */
    long long sweep_new; /* the transaction's: raises sweep_to once committed */
    long long next_id;   /* the next event's id: never one a removed event had */
    long long purge_cursor;       /* the retention sweep: the last event id it looked at */
    struct hcache wcache, rcache; /* the writer's; the poller's */
    struct wh_buf set_json;       /* the writer's scratch */
    /* the poller's sweep: the owed events first, then due delivery rows */
    int sweep_rows;
    long long cur_owed;
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

/* Runs a prepared statement that returns no rows: SQLITE_OK or the error code. */
static int step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* --- handler sets ------------------------------------------------------------------------------
 */

static void hcache_clear(struct hcache *c)
{
    for (int i = 0; i < c->n; i++) {
        for (int k = 0; k < c->sets[i].n; k++)
            free(c->sets[i].names[k]);
        free(c->sets[i].names);
        free(c->sets[i].json);
    }
    c->n = 0;
}

/* Remembers (id, json), parsing the names; the oldest entry goes when full. */
static struct hset *hcache_add(struct hcache *c, long long id, const char *json)
{
    struct hset *h;
    json_t *arr = json_loads(json, 0, NULL);
    size_t i;
    json_t *v;

    if (!json_is_array(arr)) {
        json_decref(arr);
        return NULL;
    }
    if (c->n == HSET_CACHE) {
        struct hcache one = {.n = 1};
        one.sets[0] = c->sets[0];
        hcache_clear(&one);
        memmove(&c->sets[0], &c->sets[1], (HSET_CACHE - 1) * sizeof c->sets[0]);
        c->n--;
    }
    h = &c->sets[c->n++];
    h->id = id;
    h->json = wh_xstrdup(json);
    h->n = (int)json_array_size(arr);
    h->names = wh_xcalloc((size_t)h->n + 1, sizeof *h->names);
    json_array_foreach(arr, i, v) h->names[i] =
        wh_xstrdup(json_is_string(v) ? json_string_value(v) : "");
    json_decref(arr);
    return h;
}

/* The handler set of id (NULL: not found). */
static struct hset *hset_by_id(sqlite3_stmt *st, struct hcache *c, long long id)
{
    struct hset *h = NULL;

    for (int i = 0; i < c->n; i++)
        if (c->sets[i].id == id) return &c->sets[i];
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW)
        h = hcache_add(c, id, (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    return h;
}

/* In the writer's transaction: the id of ev's handler set, made if new; -1 on failure. */
static long long hset_for(struct store *s, const struct spool_event *ev)
{
    struct wh_buf *b = &s->set_json;
    long long id = -1;

    if (spool_handlers_json(ev, b)) return -1;
    for (int i = 0; i < s->wcache.n; i++)
        if (strcmp(s->wcache.sets[i].json, b->p) == 0) return s->wcache.sets[i].id;
    sqlite3_bind_text(s->hs_get, 1, b->p, -1, SQLITE_STATIC);
    if (sqlite3_step(s->hs_get) == SQLITE_ROW) id = sqlite3_column_int64(s->hs_get, 0);
    sqlite3_reset(s->hs_get);
    if (id < 0) {
        sqlite3_bind_text(s->hs_ins, 1, b->p, -1, SQLITE_STATIC);
        if (step_once(s->hs_ins) != SQLITE_OK) return -1;
        id = sqlite3_last_insert_rowid(s->wdb);
    }
    /* a set made in a transaction that rolls back is forgotten with the cache (sq_write) */
    return hcache_add(&s->wcache, id, b->p) ? id : -1;
}
/* Does the query return a row? */
static int has_row(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int yes;

    sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    yes = st && sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

/* Brings a spool written by an earlier version to schema 2 (PRAGMA user_version) in place, each
 * step in one transaction, and makes a new one:
 * - 0.1.0 (deliveries with a rowid): every row moves into the clustered table.
 * - version 1 (a delivery row per handler from the start): events gain their handler set
 *   and mask, both 0 (their deliveries stay followed by their rows, states kept: a pending one
 *   runs, a delivered one does not run again), dedupe keys the event they let in. */
static int migrate(sqlite3 *db, char **errmsg)
{
    int fresh, rc;

    if (has_row(db, "SELECT 1 FROM pragma_user_version WHERE user_version >= 2"))
        return sqlite3_exec(db, schema_v2, NULL, NULL, errmsg);
    fresh = !has_row(db, "SELECT 1 FROM sqlite_master WHERE name = 'events'");
    if (has_row(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                    "name = 'deliveries' AND sql NOT LIKE '%WITHOUT ROWID%'")) {
        rc = sqlite3_exec(db,
                          "BEGIN IMMEDIATE;"
                          "ALTER TABLE deliveries RENAME TO deliveries_0_1;" DELIVERIES_TABLE
                          "INSERT INTO deliveries SELECT event_id, handler, state, attempts,"
                          "  next_at, last_error FROM deliveries_0_1;"
                          "DROP TABLE deliveries_0_1;"
                          "COMMIT;",
                          NULL, NULL, errmsg);
        if (rc != SQLITE_OK) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
        log_msg(LOG_INFO, "spool upgraded: deliveries table rebuilt");
    }
    rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, errmsg);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, schema_v1, NULL, NULL, errmsg);
    if (rc == SQLITE_OK &&
        !has_row(db, "SELECT 1 FROM pragma_table_info('events') WHERE name = 'hset'"))
        rc = sqlite3_exec(db,
                          "ALTER TABLE events ADD COLUMN hset INTEGER NOT NULL DEFAULT 0;"
                          "ALTER TABLE dedupe ADD COLUMN event_id INTEGER;",
                          NULL, NULL, errmsg);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, schema_v2, NULL, NULL, errmsg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "PRAGMA user_version = 2; COMMIT", NULL, NULL, errmsg);
    if (rc != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    if (!fresh) log_msg(LOG_INFO, "spool upgraded: events carry their handlers (schema 2)");
    return SQLITE_OK;
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

/* The id the next event gets: past every id an event has or had. */
static long long next_id_after(sqlite3 *db)
{
    sqlite3_stmt *st;
    long long v = 1;

    if (sqlite3_prepare_v2(db,
                           "SELECT max(coalesce((SELECT max(id) FROM events), 0),"
                           " coalesce((SELECT value FROM meta WHERE key = 'ids_used'), 0),"
                           " coalesce((SELECT max(event_id) FROM owed), 0),"
                           " coalesce((SELECT max(event_id) FROM deliveries), 0)) + 1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
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

/* Stores one event: its dedupe key, its row, and the delivery rows of handlers past its mask
 * (due now, or leased while the dispatchers have them). */
static int store_one(struct store *s, struct store_put *p, double now)
{
    const struct spool_event *ev = p->ev;
    long long id, hset = 0, owed = 0;
    int slots = ev->n_handlers < STORE_SLOTS ? ev->n_handlers : STORE_SLOTS;

    if (ev->dedupe_key) { /* a live key: a duplicate, nothing stored */
        double expires = 0;
        sqlite3_bind_text(s->dd_get, 1, ev->dedupe_key, -1, SQLITE_STATIC);
        if (sqlite3_step(s->dd_get) == SQLITE_ROW) expires = sqlite3_column_double(s->dd_get, 0);
        sqlite3_reset(s->dd_get);
        if (expires > now) {
            p->result = SPOOL_DUPLICATE;
            return 0;
        }
    }
    if (ev->n_handlers && (hset = hset_for(s, ev)) < 0) return -1;
    if (slots) owed = slots == 63 ? 0x7fffffffffffffffLL : (1LL << slots) - 1;
    sqlite3_bind_int64(s->ins_event, 1, s->next_id);
    sqlite3_bind_text(s->ins_event, 2, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s->ins_event, 3, ev->body, (int)ev->body_len, SQLITE_STATIC);
    sqlite3_bind_text(s->ins_event, 4, ev->headers_json, -1, SQLITE_STATIC);
    sqlite3_bind_double(s->ins_event, 5, ev->received_at);
    sqlite3_bind_int64(s->ins_event, 6, hset);
    if (step_once(s->ins_event) != SQLITE_OK) {
        /* the id is taken: an event was written beside the server (a test does); go on past
         * the largest */
        if (sqlite3_extended_errcode(s->wdb) != SQLITE_CONSTRAINT_PRIMARYKEY) return -1;
        s->next_id = next_id_after(s->wdb);
        sqlite3_bind_int64(s->ins_event, 1, s->next_id);
        if (step_once(s->ins_event) != SQLITE_OK) return -1;
    }
    id = s->next_id++;
    if (ev->dedupe_key) { /* the key, and the event it let in (the console finds it by key) */
        sqlite3_bind_text(s->dd_put, 1, ev->dedupe_key, -1, SQLITE_STATIC);
        sqlite3_bind_double(s->dd_put, 2, now + (double)ev->dedupe_window_s);
        sqlite3_bind_int64(s->dd_put, 3, id);
        if (step_once(s->dd_put) != SQLITE_OK) return -1;
    }
    if (owed) {
        sqlite3_bind_int64(s->ins_owed, 1, id);
        sqlite3_bind_int64(s->ins_owed, 2, owed);
        if (step_once(s->ins_owed) != SQLITE_OK) return -1;
    }
    for (int i = slots; i < ev->n_handlers; i++) {
        sqlite3_bind_int64(s->ins_delivery, 1, id);
        sqlite3_bind_text(s->ins_delivery, 2, ev->handlers[i], -1, SQLITE_STATIC);
        sqlite3_bind_double(s->ins_delivery, 3, p->queued ? now + LEASE_S : now);
        if (step_once(s->ins_delivery) != SQLITE_OK) return -1;
    }
    if (!p->queued && owed) s->sweep_new = id;
    p->event_id = id;
    p->token = 0;
    p->result = SPOOL_STORED;
    return 0;
}

/* A delivery's outcome. A first one tracked by the event's mask clears its bit; unless it
 * succeeded, the delivery gets its row (a retry due later, or a dead letter). */
static int record_state(struct store *s, const struct store_result *r, double now)
{
    sqlite3_stmt *st;

    if (r->slot >= 0) {
        long long left = -1;
        int rc;
        sqlite3_bind_int64(s->upd_owed, 1, 1LL << r->slot);
        sqlite3_bind_int64(s->upd_owed, 2, r->event_id);
        if ((rc = sqlite3_step(s->upd_owed)) == SQLITE_ROW) { /* the mask left; then done */
            left = sqlite3_column_int64(s->upd_owed, 0);
            rc = sqlite3_step(s->upd_owed);
        }
        sqlite3_reset(s->upd_owed);
        if (rc != SQLITE_DONE) return -1; /* no row: nothing was owed (a replay, a restart) */
        if (left == 0) {                  /* nothing more owed: the row goes */
            sqlite3_bind_int64(s->del_owed, 1, r->event_id);
            if (step_once(s->del_owed) != SQLITE_OK) return -1;
        }
        if (r->state == DELIVERY_DONE) return 0;
        st = s->ins_failed;
    } else {
        st = r->state == DELIVERY_DONE ? s->upd_ok : s->upd_fail;
    }
    /* ?1 state, ?2 attempts, ?3 next_at, ?4 error, ?5 event, ?6 handler */
    sqlite3_bind_int(st, 1, r->state);
    sqlite3_bind_int(st, 2, r->attempts);
    sqlite3_bind_double(st, 3, now + r->delay_s);
    if (r->error)
        sqlite3_bind_text(st, 4, r->error, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 4);
    sqlite3_bind_int64(st, 5, r->event_id);
    sqlite3_bind_text(st, 6, r->handler, -1, SQLITE_STATIC);
    return step_once(st) == SQLITE_OK ? 0 : -1;
}

/* The outcome, and the attempt as the console shows it. */
static int record(struct store *s, const struct store_result *r, double now)
{
    if (record_state(s, r, now)) return -1;
    sqlite3_bind_int64(s->ins_attempt, 1, r->event_id);
    sqlite3_bind_double(s->ins_attempt, 2, r->at > 0 ? r->at : now);
    sqlite3_bind_text(s->ins_attempt, 3, r->handler, -1, SQLITE_STATIC);
    sqlite3_bind_int(s->ins_attempt, 4,
                     r->state == DELIVERY_DONE   ? ATTEMPT_OK
                     : r->state == DELIVERY_DEAD ? ATTEMPT_DEAD
                     : r->timeout                ? ATTEMPT_TIMEOUT
                                                 : ATTEMPT_FAILED);
    sqlite3_bind_double(s->ins_attempt, 5, r->duration_ms);
    if (r->error)
        sqlite3_bind_text(s->ins_attempt, 6, r->error, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s->ins_attempt, 6);
    if (r->log)
        sqlite3_bind_text(s->ins_attempt, 7, r->log, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s->ins_attempt, 7);
    return step_once(s->ins_attempt) == SQLITE_OK ? 0 : -1;
}

static int sq_write(struct store *s, int writer, struct store_put *puts, int n_puts,
                    struct store_result *res, int n_res)
{
    double now = wh_now_s();
    long long next_id = s->next_id;
    int rc, failed = 0;

    (void)writer; /* one: SQLite has one writer at a time */
    s->sweep_new = 0;
    /* Results alone need no sync of their own: losing a "done" mark in a crash means one more
     * delivery (at least once), and the next stored event's sync covers them. */
    set_sync(s, n_puts > 0);
    rc = step_once(s->begin);
    for (int i = 0; i < n_puts && rc == SQLITE_OK && !failed; i++)
        failed = store_one(s, &puts[i], now) != 0;
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
        s->full_sync = -1;        /* unknown after a failure: set again next time */
        hcache_clear(&s->wcache); /* a handler set it made is gone with the transaction */
        s->next_id = next_id;     /* the ids go back: nothing has them */
        if (!fsync_failed(s->wdb)) step_once(s->rollback);
        return -1;
    }
    if (s->sweep_new) /* committed: the poller may take those events now */
        __atomic_store_n(&s->sweep_to, s->sweep_new, __ATOMIC_RELEASE);
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
        /* ids up to ?2 were given: none is given again, whatever goes now */
        "INSERT INTO meta(key, value) VALUES('ids_used', ?2) ON CONFLICT(key)"
        " DO UPDATE SET value = max(value, excluded.value)",
        /* the attempts and the delivery rows of events whose every delivery is done... */
        "DELETE FROM attempts WHERE event_id IN (SELECT e.id FROM events e"
        " WHERE e.id > ?1 AND e.id <= ?2 AND e.received_at < ?3"
        " AND NOT EXISTS (SELECT 1 FROM owed o WHERE o.event_id = e.id) AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state != 1))",
        "DELETE FROM deliveries WHERE event_id IN (SELECT e.id FROM events e"
        " WHERE e.id > ?1 AND e.id <= ?2 AND e.received_at < ?3"
        " AND NOT EXISTS (SELECT 1 FROM owed o WHERE o.event_id = e.id) AND NOT EXISTS"
        " (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state != 1))",
        /* ...then every such event, now without rows */
        "DELETE FROM events WHERE id > ?1 AND id <= ?2 AND received_at < ?3"
        " AND NOT EXISTS (SELECT 1 FROM owed o WHERE o.event_id = events.id)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)"};
    int rc = 0;

    for (int i = 0; i < 4 && rc == 0; i++) {
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
    long long pending = 0, dead = 0;
    char sql[200];

    /* a bounded step: expired keys leave in expiry order, never a scan of the whole table */
    snprintf(sql, sizeof sql,
             "DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe WHERE expires_at < %.3f"
             " ORDER BY expires_at LIMIT %d)",
             wh_now_s(), DEDUPE_SWEEP);
    if (sqlite3_exec(s->wdb, sql, NULL, NULL, NULL) != SQLITE_OK && fsync_failed(s->wdb)) {
        log_msg(LOG_ERROR, "spool fsync failed: exiting rather than trust the spool",
                LOG_S("error", sqlite3_errmsg(s->wdb)));
        _exit(WH_EXIT_SPOOL_SYNC);
    }
    /* pending: the owed bits of the owed events, and the delivery rows due or waiting */
    if (sqlite3_prepare_v2(s->wdb, "SELECT mask FROM owed", -1, &st, NULL) == SQLITE_OK)
        while (sqlite3_step(st) == SQLITE_ROW)
            pending += __builtin_popcountll((unsigned long long)sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(s->wdb,
                           "SELECT (SELECT count(*) FROM deliveries WHERE state=0),"
                           "       (SELECT count(*) FROM deliveries WHERE state=2)",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        pending += sqlite3_column_int64(st, 0);
        dead = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    metrics_spool(pending, dead);
    measure(s); /* a purge elsewhere may have freed space */
}

static long long sq_used_bytes(struct store *s)
{
    return __atomic_load_n(&s->used_bytes, __ATOMIC_RELAXED);
}

/* --- polling ---------------------------------------------------------------------------------- */

/* A row of owed_due or due: the event's part of a due delivery (columns from `first`: type,
 * body, headers, received_at). NULL when the body does not fit in memory now. */
static struct spool_due *due_row(sqlite3_stmt *st, int first, const char *handler, int slot,
                                 int attempts, long long event_id)
{
    struct spool_due *d = wh_xcalloc(1, sizeof *d);

    d->event_id = event_id;
    d->slot = slot;
    d->attempts = attempts;
    d->handler = wh_xstrdup(handler);
    d->type = wh_xstrdup((const char *)sqlite3_column_text(st, first));
    d->body_len = sqlite3_column_bytes(st, first + 1);
    if (!(d->body = malloc((size_t)d->body_len + 1))) { /* a sender's size: read it later */
        spool_due_list_free(d);
        return NULL;
    }
    if (d->body_len) memcpy(d->body, sqlite3_column_blob(st, first + 1), (size_t)d->body_len);
    ((char *)d->body)[d->body_len] = '\0';
    d->headers = wh_xstrdup((const char *)sqlite3_column_text(st, first + 2));
    d->received_at = sqlite3_column_double(st, first + 3);
    return d;
}

/* The sweep's first part: events whose mask still owes a first delivery, up to sweep_to (the
 * later ones are in the dispatchers' memory). Whole events, up to limit of them. */
static int poll_owed(struct store *s, int limit, struct spool_due ***tail, int *n)
{
    int events = 0;

    sqlite3_bind_int64(s->owed_due, 1, s->cur_owed);
    sqlite3_bind_int64(s->owed_due, 2, __atomic_load_n(&s->sweep_to, __ATOMIC_ACQUIRE));
    sqlite3_bind_int(s->owed_due, 3, limit);
    while (sqlite3_step(s->owed_due) == SQLITE_ROW) {
        long long id = sqlite3_column_int64(s->owed_due, 0);
        unsigned long long owed = (unsigned long long)sqlite3_column_int64(s->owed_due, 2);
        struct hset *h = hset_by_id(s->hs_names, &s->rcache, sqlite3_column_int64(s->owed_due, 1));
        events++;
        s->cur_owed = id;
        for (int slot = 0; h && slot < h->n && slot < STORE_SLOTS; slot++) {
            struct spool_due *d;
            if (!(owed & (1ULL << slot))) continue;
            if (!(d = due_row(s->owed_due, 3, h->names[slot], slot, 0, id))) continue;
            **tail = d;
            *tail = &d->next;
            ++*n;
        }
    }
    sqlite3_reset(s->owed_due);
    return events;
}

static int sq_poll(struct store *s, int limit, struct spool_due **rows)
{
    struct spool_due **tail = rows, *last = NULL;
    int n = 0, got = 0;

    *rows = NULL;
    if (!s->sweep_rows) {
        if (poll_owed(s, limit, &tail, &n) == limit) return n > limit ? n : limit; /* goes on */
        s->sweep_rows = 1; /* the owed events are done: the delivery rows now */
    }
    sqlite3_bind_double(s->due, 1, wh_now_s());
    sqlite3_bind_double(s->due, 2, s->cur_next_at);
    sqlite3_bind_int64(s->due, 3, s->cur_event);
    sqlite3_bind_text(s->due, 4, s->cur_handler, -1, SQLITE_STATIC);
    sqlite3_bind_int(s->due, 5, limit);
    while (sqlite3_step(s->due) == SQLITE_ROW) {
        struct spool_due *d =
            due_row(s->due, 3, (const char *)sqlite3_column_text(s->due, 1), -1,
                    sqlite3_column_int(s->due, 2), sqlite3_column_int64(s->due, 0));
        if (!d) break;
        s->cur_next_at = sqlite3_column_double(s->due, 7);
        *tail = last = d;
        tail = &d->next;
        n++;
        got++;
    }
    sqlite3_reset(s->due); /* ends the read transaction: checkpoints can run */
    if (last) {            /* the next query of this sweep starts after it */
        free(s->cur_handler);
        s->cur_event = last->event_id;
        s->cur_handler = wh_xstrdup(last->handler);
    }
    if (got == limit) return n > limit ? n : limit; /* a full page: more may follow */
    /* the sweep is over: the next starts from the beginning */
    s->sweep_rows = 0;
    s->cur_owed = 0;
    s->cur_next_at = -1e300;
    s->cur_event = 0;
    free(s->cur_handler);
    s->cur_handler = wh_xstrdup("");
    return n < limit ? n : limit - 1;
}

/* The rows were read before the policy claimed them: a result may have been committed since. */
static int sq_still_due(struct store *s, const struct spool_due *d)
{
    int due;

    if (d->slot >= 0) {
        sqlite3_bind_int64(s->owed_recheck, 1, d->event_id);
        due = sqlite3_step(s->owed_recheck) == SQLITE_ROW && /* no row: nothing owed */
              (sqlite3_column_int64(s->owed_recheck, 0) & (1LL << d->slot));
        sqlite3_reset(s->owed_recheck);
        return due;
    }
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
    sqlite3_stmt *sts[] = {
        s->ins_event, s->ins_delivery, s->dd_put,     s->dd_get,   s->upd_ok,     s->upd_fail,
        s->upd_owed,  s->ins_failed,   s->hs_get,     s->hs_ins,   s->hs_names,   s->begin,
        s->commit,    s->rollback,     s->purge_scan, s->size,     s->due,        s->recheck,
        s->owed_due,  s->owed_recheck, s->ins_owed,   s->del_owed, s->ins_attempt};

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
    hcache_clear(&s->wcache);
    hcache_clear(&s->rcache);
    buf_free(&s->set_json);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->ckpt_cv);
    free(s);
}

struct prep {
    sqlite3_stmt **st;
    const char *sql;
};

/* Prepares each statement on db: 0, or -1 (its error in db). */
static int prepare_all(sqlite3 *db, const struct prep *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (sqlite3_prepare_v2(db, p[i].sql, -1, p[i].st, NULL) != SQLITE_OK) return -1;
    return 0;
}

static int sq_open(const struct wh_config *cfg, const struct store_hooks *hooks, struct store **out,
                   char *err, size_t err_len)
{
    struct store *s = wh_xcalloc(1, sizeof *s);
    char *errmsg = NULL, sql[200], why[512];
    const struct prep wprep[] = {
        {&s->ins_event, "INSERT INTO events(id, type, body, headers, received_at, hset)"
                        " VALUES(?,?,?,?,?,?)"},
        {&s->ins_owed, "INSERT INTO owed(event_id, mask) VALUES(?,?)"},
        {&s->del_owed, "DELETE FROM owed WHERE event_id = ?"},
        {&s->ins_delivery, "INSERT INTO deliveries(event_id, handler, next_at) VALUES(?,?,?)"},
        {&s->dd_put, "INSERT OR REPLACE INTO dedupe(key, expires_at, event_id) VALUES(?,?,?)"},
        {&s->dd_get, "SELECT expires_at FROM dedupe WHERE key=?"},
        /* results: ?1 state, ?2 attempts, ?3 next_at, ?4 error, ?5 event, ?6 handler */
        {&s->upd_ok, "UPDATE deliveries SET state=?1, attempts=?2, last_error=NULL"
                     " WHERE event_id=?5 AND handler=?6"},
        {&s->upd_fail, "UPDATE deliveries SET state=?1, attempts=?2, next_at=?3, last_error=?4"
                       " WHERE event_id=?5 AND handler=?6"},
        {&s->ins_failed, "INSERT OR REPLACE INTO deliveries(event_id, handler, state, attempts,"
                         " next_at, last_error) VALUES(?5, ?6, ?1, ?2, ?3, ?4)"},
        {&s->upd_owed, "UPDATE owed SET mask = mask & ~?1 WHERE event_id = ?2 RETURNING mask"},
        {&s->hs_get, "SELECT id FROM handler_sets WHERE names = ?"},
        {&s->ins_attempt, "INSERT OR REPLACE INTO attempts(event_id, at, handler, outcome,"
                          " duration_ms, error, log) VALUES(?,?,?,?,?,?,?)"},
        {&s->hs_ins, "INSERT INTO handler_sets(names) VALUES(?)"},
        {&s->begin, "BEGIN IMMEDIATE"},
        {&s->commit, "COMMIT"},
        {&s->rollback, "ROLLBACK"},
        {&s->purge_scan, "SELECT id, received_at FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"},
        {&s->size, "SELECT (SELECT page_count FROM pragma_page_count()) - "
                   "(SELECT freelist_count FROM pragma_freelist_count()), "
                   "(SELECT page_size FROM pragma_page_size())"},
    };
    const struct prep rprep[] = {
        {&s->due, "SELECT d.event_id, d.handler, d.attempts, e.type, e.body, e.headers,"
                  "       e.received_at, d.next_at"
                  "  FROM deliveries d JOIN events e ON e.id = d.event_id"
                  " WHERE d.state = 0 AND d.next_at <= ?1"
                  "   AND (d.next_at, d.event_id, d.handler) > (?2, ?3, ?4)"
                  " ORDER BY d.next_at, d.event_id, d.handler LIMIT ?5"},
        {&s->recheck,
         "SELECT state, attempts FROM deliveries WHERE event_id = ?1 AND handler = ?2"},
        {&s->owed_due, "SELECT o.event_id, e.hset, o.mask, e.type, e.body, e.headers,"
                       " e.received_at FROM owed o JOIN events e ON e.id = o.event_id"
                       " WHERE o.event_id > ?1 AND o.event_id <= ?2 ORDER BY o.event_id LIMIT ?3"},
        {&s->owed_recheck, "SELECT mask FROM owed WHERE event_id = ?1"},
        {&s->hs_names, "SELECT names FROM handler_sets WHERE id = ?"},
    };

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
    /* overflow deliveries handed to dispatchers in memory when the last process stopped: due
     * now (owed bits need nothing: every owed event up to sweep_to is swept) */
    snprintf(sql, sizeof sql,
             "UPDATE deliveries SET next_at = %.6f WHERE state = 0 AND "
             "attempts = 0 AND next_at > %.6f",
             wh_now_s(), wh_now_s());
    if (sqlite3_exec(s->wdb, "PRAGMA journal_mode=WAL", NULL, NULL, &errmsg) != SQLITE_OK ||
        migrate(s->wdb, &errmsg) != SQLITE_OK ||
        sqlite3_exec(s->wdb, sql, NULL, NULL, &errmsg) != SQLITE_OK ||
        prepare_all(s->wdb, wprep, sizeof wprep / sizeof wprep[0])) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, cfg->spool,
                 errmsg ? errmsg : sqlite3_errmsg(s->wdb));
        sqlite3_free(errmsg);
        goto fail;
    }
    s->next_id = next_id_after(s->wdb);
    s->sweep_to = s->next_id - 1; /* every event from before is the poller's */
    if (open_db(cfg->spool, SQLITE_OPEN_READWRITE, &s->rdb, why, sizeof why) ||
        prepare_all(s->rdb, rprep, sizeof rprep / sizeof rprep[0])) {
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
    sqlite3_stmt *hs_names, *ev_get, *ev_mask, *ev_rows, *ev_att;
    struct hcache cache;
    char err[512];
};

static void ad_close(struct store_admin *a)
{
    sqlite3_finalize(a->hs_names);
    sqlite3_finalize(a->ev_get);
    sqlite3_finalize(a->ev_mask);
    sqlite3_finalize(a->ev_rows);
    sqlite3_finalize(a->ev_att);
    hcache_clear(&a->cache);
    sqlite3_close(a->db);
    free(a);
}

static int ad_open(const struct wh_config *cfg, struct store_admin **out, char *err, size_t err_len)
{
    struct store_admin *a = wh_xcalloc(1, sizeof *a);
    char *errmsg = NULL;

    if (sqlite3_open_v2(cfg->spool, &a->db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "spool %s: %s", cfg->spool,
                 a->db ? sqlite3_errmsg(a->db) : "cannot open");
        sqlite3_close(a->db);
        free(a);
        return -1;
    }
    sqlite3_busy_timeout(a->db, 10000);
    /* a spool the server has not opened since an upgrade is brought up to date first */
    if (migrate(a->db, &errmsg) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db, "SELECT names FROM handler_sets WHERE id = ?", -1, &a->hs_names,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db, "SELECT type, received_at, hset FROM events WHERE id = ?", -1,
                           &a->ev_get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db, "SELECT mask FROM owed WHERE event_id = ?", -1, &a->ev_mask,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db,
                           "SELECT handler, state, attempts, coalesce(last_error, '')"
                           " FROM deliveries WHERE event_id = ? ORDER BY handler",
                           -1, &a->ev_rows, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db,
                           "SELECT handler, outcome, duration_ms, at, coalesce(error, ''),"
                           " coalesce(log, '') FROM attempts WHERE event_id = ? ORDER BY at",
                           -1, &a->ev_att, NULL) != SQLITE_OK) {
        snprintf(err, err_len, "spool %s: %s", cfg->spool, errmsg ? errmsg : sqlite3_errmsg(a->db));
        sqlite3_free(errmsg);
        ad_close(a);
        return -1;
    }
    *out = a;
    return 0;
}

static int ad_fail(struct store_admin *a)
{
    snprintf(a->err, sizeof a->err, "%s", sqlite3_errmsg(a->db));
    return -1;
}

/* The value of a one-row, one-column query (0 if none). */
static long long ad_scalar(sqlite3 *db, const char *sql, int *ok)
{
    sqlite3_stmt *st;
    long long v = 0;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        *ok = 0;
        return 0;
    }
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* The handler sets' sizes (the admin's own cache). */
static int ad_set_size(struct store_admin *a, long long hset)
{
    struct hset *h = hset ? hset_by_id(a->hs_names, &a->cache, hset) : NULL;

    return h ? h->n : 0;
}

static int ad_stats_read(struct store_admin *a, struct store_stats *out);

static int ad_stats(struct store_admin *a, struct store_stats *out)
{
    int ok;

    memset(out, 0, sizeof *out);
    out->oldest_pending_s = -1;
    if (sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) return ad_fail(a);
    ok = ad_stats_read(a, out);
    sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
    return ok;
}

/* ad_stats' reads, in its read transaction (one snapshot: the counts agree). */
static int ad_stats_read(struct store_admin *a, struct store_stats *out)
{
    sqlite3_stmt *st;
    long long owed_bits = 0, by_mask = 0;
    int ok = 1;

    /* a delivery is followed by its row when it has one (any state), else by its event's
     * mask: owed (pending) or not (delivered) */
    if (sqlite3_prepare_v2(a->db, "SELECT state, count(*) FROM deliveries GROUP BY state", -1, &st,
                           NULL) != SQLITE_OK)
        return ad_fail(a);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int s = sqlite3_column_int(st, 0);
        if (s >= 0 && s < 3) out->deliveries[s] = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(a->db, "SELECT mask FROM owed", -1, &st, NULL) != SQLITE_OK)
        return ad_fail(a);
    while (sqlite3_step(st) == SQLITE_ROW)
        owed_bits += __builtin_popcountll((unsigned long long)sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(a->db, "SELECT hset, count(*) FROM events GROUP BY hset", -1, &st,
                           NULL) != SQLITE_OK)
        return ad_fail(a);
    while (sqlite3_step(st) == SQLITE_ROW)
        by_mask +=
            (long long)ad_set_size(a, sqlite3_column_int64(st, 0)) * sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    by_mask -= owed_bits + ad_scalar(a->db,
                                     "SELECT count(*) FROM deliveries d JOIN events e"
                                     " ON e.id = d.event_id WHERE e.hset != 0",
                                     &ok);
    out->deliveries[DELIVERY_PENDING] += owed_bits;
    out->deliveries[DELIVERY_DONE] += by_mask;
    out->events = ad_scalar(a->db, "SELECT count(*) FROM events", &ok);
    if (sqlite3_prepare_v2(a->db,
                           "SELECT min(r) FROM (SELECT min(e.received_at) r FROM deliveries d"
                           " JOIN events e ON e.id = d.event_id WHERE d.state = 0 UNION ALL"
                           " SELECT min(e.received_at) FROM owed o JOIN events e"
                           " ON e.id = o.event_id)",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_finalize(st);
        return ad_fail(a);
    }
    if (sqlite3_column_type(st, 0) != SQLITE_NULL)
        out->oldest_pending_s = wh_now_s() - sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    out->size_bytes = ad_scalar(a->db,
                                "SELECT (SELECT page_count FROM pragma_page_count()) * "
                                "(SELECT page_size FROM pragma_page_size())",
                                &ok);
    return ok ? 0 : ad_fail(a);
}

/* --- the console's questions -------------------------------------------------------------------
 */

/* Events a call looks at, at most, when no index narrows the search (text in bodies, a state
 * most events are in): a page may come back short, with a next to go on from. */
#define SCAN_BUDGET 10000

static void found_add(struct store_found *f, const char *handler, int state, int attempts,
                      const char *error)
{
    f->h = wh_xrealloc(f->h, (size_t)(f->n + 1) * sizeof *f->h);
    f->h[f->n++] = (struct store_outcome){.handler = wh_xstrdup(handler),
                                          .error = wh_xstrdup(error ? error : ""),
                                          .state = state,
                                          .attempts = attempts,
                                          .duration_ms = -1};
}

/* Reads event id and its deliveries' outcomes (from its mask and its rows): 1, 0 when it is
 * not there, -1 on error. */
static int found_read(struct store_admin *a, long long id, struct store_found *f)
{
    struct hset *h = NULL;
    long long mask = 0;
    int rc;

    memset(f, 0, sizeof *f);
    sqlite3_bind_int64(a->ev_get, 1, id);
    if ((rc = sqlite3_step(a->ev_get)) != SQLITE_ROW) {
        sqlite3_reset(a->ev_get);
        return rc == SQLITE_DONE ? 0 : -1;
    }
    f->id = id;
    f->type = wh_xstrdup((const char *)sqlite3_column_text(a->ev_get, 0));
    f->received_at = sqlite3_column_double(a->ev_get, 1);
    if (sqlite3_column_int64(a->ev_get, 2))
        h = hset_by_id(a->hs_names, &a->cache, sqlite3_column_int64(a->ev_get, 2));
    sqlite3_reset(a->ev_get);
    sqlite3_bind_int64(a->ev_mask, 1, id);
    if (sqlite3_step(a->ev_mask) == SQLITE_ROW) mask = sqlite3_column_int64(a->ev_mask, 0);
    sqlite3_reset(a->ev_mask);
    sqlite3_bind_int64(a->ev_rows, 1, id);
    while (sqlite3_step(a->ev_rows) == SQLITE_ROW) {
        int st = sqlite3_column_int(a->ev_rows, 1), att = sqlite3_column_int(a->ev_rows, 2);
        found_add(f, (const char *)sqlite3_column_text(a->ev_rows, 0),
                  st == DELIVERY_DONE   ? EV_OK
                  : st == DELIVERY_DEAD ? EV_DEAD
                  : att > 0             ? EV_FAILED
                                        : EV_PENDING,
                  att, (const char *)sqlite3_column_text(a->ev_rows, 3));
    }
    sqlite3_reset(a->ev_rows);
    for (int slot = 0; h && slot < h->n && slot < STORE_SLOTS; slot++) {
        int has_row = 0;
        for (int k = 0; k < f->n && !has_row; k++)
            has_row = strcmp(f->h[k].handler, h->names[slot]) == 0;
        if (has_row) continue; /* a failed first delivery: its row says the rest */
        if (mask & (1LL << slot))
            found_add(f, h->names[slot], EV_PENDING, 0, NULL);
        else
            found_add(f, h->names[slot], EV_OK, 1, NULL);
    }
    store_found_finish(f);
    /* each handler's last attempt: its time, and whether it ran out of it; and how many it
     * had in all (a replay starts the delivery's own count again) */
    sqlite3_bind_int64(a->ev_att, 1, id);
    while (sqlite3_step(a->ev_att) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(a->ev_att, 0);
        for (int k = 0; k < f->n; k++)
            if (strcmp(f->h[k].handler, name) == 0) {
                f->h[k].duration_ms = sqlite3_column_double(a->ev_att, 2);
                f->h[k].timeout = sqlite3_column_int(a->ev_att, 1) == ATTEMPT_TIMEOUT;
                f->h[k].recorded++;
            }
    }
    sqlite3_reset(a->ev_att);
    return 1;
}

/* --- the console's detail and replay ------------------------------------------------------ */

static int ad_event(struct store_admin *a, long long id,
                    void (*ev)(void *arg, const struct store_event *e), void *arg)
{
    struct store_found f;
    int rc;

    if (sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) return ad_fail(a);
    rc = found_read(a, id, &f);
    sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
    if (rc != 1) return rc < 0 ? ad_fail(a) : 0;
    return store_found_give(&f, ev, arg);
}

static int ad_detail(struct store_admin *a, long long id,
                     void (*got)(void *arg, const struct store_detail *d), void *arg)
{
    struct store_found f;
    struct store_attempt *att = NULL;
    sqlite3_stmt *ev = NULL;
    int n = 0, rc;

    if (sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) return ad_fail(a);
    if ((rc = found_read(a, id, &f)) != 1) {
        sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
        return rc < 0 ? ad_fail(a) : 0;
    }
    rc = -1;
    sqlite3_bind_int64(a->ev_att, 1, id);
    while (sqlite3_step(a->ev_att) == SQLITE_ROW) {
        if (!(n & 15)) att = wh_xrealloc(att, (size_t)(n + 16) * sizeof *att);
        att[n++] = (struct store_attempt){
            .handler = wh_xstrdup((const char *)sqlite3_column_text(a->ev_att, 0)),
            .outcome = sqlite3_column_int(a->ev_att, 1),
            .duration_ms = sqlite3_column_double(a->ev_att, 2),
            .at = sqlite3_column_double(a->ev_att, 3),
            .error = wh_xstrdup((const char *)sqlite3_column_text(a->ev_att, 4)),
            .log = wh_xstrdup((const char *)sqlite3_column_text(a->ev_att, 5))};
    }
    sqlite3_reset(a->ev_att);
    if (sqlite3_prepare_v2(a->db, "SELECT headers, body FROM events WHERE id = ?", -1, &ev, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(ev, 1, id);
        if (sqlite3_step(ev) == SQLITE_ROW) {
            struct store_detail d = {.e = store_found_event(&f),
                                     .headers_json = (const char *)sqlite3_column_text(ev, 0),
                                     .body = (const char *)sqlite3_column_blob(ev, 1),
                                     .body_len = (size_t)sqlite3_column_bytes(ev, 1),
                                     .attempts = att,
                                     .n_attempts = n};
            if (!d.body) d.body = "";
            got(arg, &d); /* inside the read: the body is the statement's */
            rc = 1;
        }
    }
    if (rc < 0) ad_fail(a);
    sqlite3_finalize(ev);
    sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        free((char *)att[i].handler);
        free((char *)att[i].error);
        free((char *)att[i].log);
    }
    free(att);
    store_found_free(&f);
    return rc;
}

static long long ad_replay_event(struct store_admin *a, long long id, const char *handler)
{
    struct store_found f;
    sqlite3_stmt *up = NULL;
    long long n = 0;
    int rc;

    if (sqlite3_exec(a->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return ad_fail(a);
    if ((rc = found_read(a, id, &f)) != 1) {
        sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
        return rc < 0 ? ad_fail(a) : 0;
    }
    if (sqlite3_prepare_v2(a->db,
                           "INSERT INTO deliveries(event_id, handler, state, attempts, next_at)"
                           " VALUES(?1, ?2, 0, 0, ?3) ON CONFLICT(event_id, handler) DO UPDATE"
                           " SET state = 0, attempts = 0, next_at = ?3, last_error = NULL",
                           -1, &up, NULL) != SQLITE_OK)
        goto fail;
    if (handler) { /* a handler the event does not have */
        int has = 0;
        for (int i = 0; i < f.n; i++)
            has |= strcmp(handler, f.h[i].handler) == 0;
        if (!has) {
            sqlite3_finalize(up);
            sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
            store_found_free(&f);
            return -3;
        }
    }
    for (int i = 0; i < f.n; i++) {
        const struct store_outcome *h = &f.h[i];
        if (handler && strcmp(handler, h->handler)) continue;
        if (h->state == EV_PENDING && h->attempts == 0) continue; /* its first run is owed */
        sqlite3_bind_int64(up, 1, id);
        sqlite3_bind_text(up, 2, h->handler, -1, SQLITE_STATIC);
        sqlite3_bind_double(up, 3, wh_now_s());
        if (step_once(up) != SQLITE_OK) goto fail;
        n++;
    }
    if (sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) goto fail;
    sqlite3_finalize(up);
    store_found_free(&f);
    return n;
fail:
    ad_fail(a);
    sqlite3_finalize(up);
    sqlite3_exec(a->db, "ROLLBACK", NULL, NULL, NULL);
    store_found_free(&f);
    return -1;
}

/* The candidates' query for q's filters: event ids newest first, below ?1. A state with an
 * index (dead, failed, pending) reads it; otherwise a window of ids is scanned (?3: its lowest)
 * for the text (?2) and the type (?4). There is no index by type: kept up to date it cost a
 * tenth of the ingest rate (each type's newest entries go in the middle of the index). */
static const char *candidates(const struct store_query *q)
{
    if (!q->q) switch (q->state) {
        case EV_DEAD:
            return "SELECT DISTINCT event_id FROM deliveries WHERE state = 2 AND event_id < ?1"
                   " ORDER BY event_id DESC";
        case EV_FAILED:
            return "SELECT DISTINCT event_id FROM deliveries WHERE state = 0 AND attempts > 0"
                   " AND event_id < ?1 ORDER BY event_id DESC";
        case EV_PENDING:
            return "SELECT event_id FROM owed WHERE event_id < ?1 UNION SELECT event_id"
                   " FROM deliveries WHERE state = 0 AND attempts = 0 AND event_id < ?1"
                   " ORDER BY 1 DESC";
        }
    return "SELECT id FROM events WHERE id < ?1 AND id >= ?3 AND (?2 IS NULL OR"
           " instr(body, ?2) > 0) AND (?4 IS NULL OR type = ?4) ORDER BY id DESC";
}

/* The events whose id or dedupe key is exactly q->q, below `before`, newest first. */
static int exact_matches(struct store_admin *a, const struct store_query *q, long long before,
                         long long *ids, int cap)
{
    sqlite3_stmt *types = NULL, *key = NULL;
    char *end, *type = NULL;
    long long id = strtoll(q->q, &end, 10);
    int n = 0;

    if (*q->q && !*end && id > 0 && id < before) { /* an id, if an event has it */
        sqlite3_bind_int64(a->ev_get, 1, id);
        if (sqlite3_step(a->ev_get) == SQLITE_ROW) ids[n++] = id;
        sqlite3_reset(a->ev_get);
    }
    /* a dedupe key is "type\nvalue": each type the keys have in turn, one seek of the keys'
     * index a type (the first key past "type\v" starts the next type) */
    if (sqlite3_prepare_v2(a->db, "SELECT key FROM dedupe WHERE key >= ?1 ORDER BY key LIMIT 1", -1,
                           &types, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(a->db,
                           "SELECT event_id FROM dedupe WHERE key = ?1 || char(10) || ?2"
                           " AND event_id < ?3",
                           -1, &key, NULL) != SQLITE_OK) {
        sqlite3_finalize(types);
        return -1;
    }
    for (;;) {
        const char *k;
        char *from = NULL;
        if (type && asprintf(&from, "%s\v", type) < 0) break;
        sqlite3_bind_text(types, 1, from ? from : "", -1, SQLITE_TRANSIENT);
        free(from);
        if (sqlite3_step(types) != SQLITE_ROW) break;
        k = (const char *)sqlite3_column_text(types, 0);
        free(type);
        type = wh_xstrdup(k);
        type[strcspn(type, "\n")] = '\0';
        sqlite3_reset(types);
        sqlite3_bind_text(key, 1, type, -1, SQLITE_STATIC);
        sqlite3_bind_text(key, 2, q->q, -1, SQLITE_STATIC);
        sqlite3_bind_int64(key, 3, before);
        if (sqlite3_step(key) == SQLITE_ROW && n < cap) {
            long long match = sqlite3_column_int64(key, 0);
            int dup = 0;
            for (int i = 0; i < n; i++)
                dup |= ids[i] == match;
            if (!dup) ids[n++] = match;
        }
        sqlite3_reset(key);
    }
    free(type);
    sqlite3_finalize(types);
    sqlite3_finalize(key);
    for (int i = 1; i < n; i++) /* newest first */
        for (int j = i; j > 0 && ids[j] > ids[j - 1]; j--) {
            long long t = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = t;
        }
    return n;
}

static int ad_events(struct store_admin *a, const struct store_query *q,
                     void (*ev)(void *arg, const struct store_event *e), void *arg, long long *next)
{
    long long before = q->before > 0 ? q->before : 0x7fffffffffffffffLL, exact[64], last = 0;
    struct store_query page = *q;
    struct store_found *got;
    sqlite3_stmt *st = NULL;
    int n = 0, n_exact = 0, looked = 0, rc = -1, more = 0, windowed = 0;

    *next = 0;
    page.limit = q->limit < 1 ? 1 : q->limit > 200 ? 200 : q->limit;
    q = &page;
    got = wh_xcalloc((size_t)q->limit + 1, sizeof *got);
    /* one read transaction for the page; it ends before ev() is called */
    if (sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) goto out;
    if (q->q && (n_exact = exact_matches(a, q, before, exact, 64)) < 0) goto out;
    if (n_exact) {
        for (int i = 0; i < n_exact && n < q->limit; i++) {
            int r = found_read(a, exact[i], &got[n]);
            if (r < 0) goto out;
            if (r == 0) continue;
            if ((q->type && strcmp(got[n].type, q->type)) ||
                (q->state >= 0 && got[n].state != q->state))
                store_found_free(&got[n]);
            else
                n++;
        }
        rc = 0;
        goto out;
    }
    if (sqlite3_prepare_v2(a->db, candidates(q), -1, &st, NULL) != SQLITE_OK) goto out;
    sqlite3_bind_int64(st, 1, before);
    windowed = sqlite3_bind_parameter_count(st) > 1;
    if (windowed) { /* ids in [top - SCAN_BUDGET, top): one call's share of the scan */
        long long top = before;
        if (top == 0x7fffffffffffffffLL) {
            sqlite3_stmt *mx;
            top = 1;
            if (sqlite3_prepare_v2(a->db, "SELECT max(id) + 1 FROM events", -1, &mx, NULL) ==
                    SQLITE_OK &&
                sqlite3_step(mx) == SQLITE_ROW)
                top = sqlite3_column_int64(mx, 0);
            sqlite3_finalize(mx);
        }
        if (q->q) sqlite3_bind_text(st, 2, q->q, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, top - SCAN_BUDGET);
        if (q->type) sqlite3_bind_text(st, 4, q->type, -1, SQLITE_STATIC);
        last = top - SCAN_BUDGET; /* where the next page goes on, if this one is short */
        more = last > 1;
    }
    while (n < q->limit && sqlite3_step(st) == SQLITE_ROW) {
        long long id = sqlite3_column_int64(st, 0);
        int r;
        if (!windowed && ++looked > SCAN_BUDGET) { /* enough for one call: go on from here */
            last = id + 1;
            more = 1;
            break;
        }
        if ((r = found_read(a, id, &got[n])) < 0) goto out;
        if (r == 0) continue;
        if ((q->type && strcmp(got[n].type, q->type)) ||
            (q->state >= 0 && got[n].state != q->state))
            store_found_free(&got[n]);
        else
            n++;
    }
    if (n == q->limit) { /* a full page: the next one starts below its last event */
        last = got[n - 1].id;
        more = sqlite3_step(st) == SQLITE_ROW || (windowed && last > 1);
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
    if (rc) ad_fail(a);
    if (!rc && more) *next = last;
    for (int i = 0; i < n; i++) {
        struct store_event e = store_found_event(&got[i]);
        if (!rc) ev(arg, &e);
        store_found_free(&got[i]);
    }
    free(got);
    return rc;
}

/* --- `spool list` ---------------------------------------------------------------------------- */

/* Rows go out a page of events at a time, each page read in a read transaction of its own
 * that ends before it is handed on: `spool list | less` left open must not pin the WAL (a
 * reader's snapshot stops checkpoints from going past it, and the server's WAL would grow as
 * long). */
#define LIST_PAGE 500

static int ad_list(struct store_admin *a, int dead_only,
                   void (*row)(void *arg, const struct store_row *r), void *arg)
{
    static const int delivery_state[] = {[EV_OK] = DELIVERY_DONE,
                                         [EV_PENDING] = DELIVERY_PENDING,
                                         [EV_FAILED] = DELIVERY_PENDING,
                                         [EV_DEAD] = DELIVERY_DEAD};
    struct store_found *got = wh_xcalloc(LIST_PAGE, sizeof *got);
    sqlite3_stmt *ids = NULL;
    long long after = 0;
    int n, rc = 0;

    /* the events of a page: every one, or those with a dead letter (a row) */
    if (sqlite3_prepare_v2(a->db,
                           dead_only ? "SELECT DISTINCT event_id FROM deliveries WHERE state = 2"
                                       " AND event_id > ?1 ORDER BY event_id LIMIT ?2"
                                     : "SELECT id FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                           -1, &ids, NULL) != SQLITE_OK) {
        free(got);
        return ad_fail(a);
    }
    do {
        n = 0;
        if (sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) rc = -1;
        sqlite3_bind_int64(ids, 1, after);
        sqlite3_bind_int(ids, 2, LIST_PAGE);
        while (!rc && sqlite3_step(ids) == SQLITE_ROW) {
            after = sqlite3_column_int64(ids, 0);
            int r = found_read(a, after, &got[n]);
            if (r < 0) rc = -1;
            n += r > 0;
        }
        sqlite3_reset(ids);
        sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
        /* the read transaction is over: the page is handed on now */
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < got[i].n && !rc; k++) {
                const struct store_outcome *h = &got[i].h[k];
                struct store_row r = {.event_id = got[i].id,
                                      .type = got[i].type,
                                      .handler = h->handler,
                                      .error = h->error,
                                      .owner = "",
                                      .state = delivery_state[h->state],
                                      .attempts = h->attempts};
                if (!dead_only || h->state == EV_DEAD) row(arg, &r);
            }
            store_found_free(&got[i]);
        }
    } while (!rc && n == LIST_PAGE);
    sqlite3_finalize(ids);
    free(got);
    return rc ? ad_fail(a) : 0;
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

const struct admin_ops store_sqlite_admin = {
    .open = ad_open,
    .stats = ad_stats,
    .list = ad_list,
    .events = ad_events,
    .replay = ad_replay,
    .event = ad_event,
    .detail = ad_detail,
    .replay_event = ad_replay_event,
    .purge = ad_purge,
    .error = ad_error,
    .close = ad_close,
};
