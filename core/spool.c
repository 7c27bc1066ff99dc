#define _GNU_SOURCE
#include "spool.h"

#include "clock.h"

#include "dispatch.h"
#include "generation.h"
#include "json_text.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/stat.h>
#include <sys/syscall.h>

/* One dispatcher is woken per this many queued deliveries (a wake-up costs more than a fast
 * handler's run); each awake dispatcher takes them one at a time until none is left. */
#define DUE_BATCH 8
/* The poller reads this many due rows per query, and stops feeding the queue at QUEUE_FEED. */
#define POLL_BATCH 64
#define QUEUE_FEED 256
/* Past this many queued jobs, new deliveries are left for the poller rather than queued. */
#define QUEUE_MAX 8192
/* A delivery handed to the dispatchers in memory is invisible to the poller this long; its
 * result normally lands long before. A restart makes every such row due at once. */
#define LEASE_S 60.0
#define IDLE_POLL_MS 200
/* WAL pages after which the checkpointer copies them into the database (SQLite's own default
 * threshold, run on another thread so no commit waits for it). */
#define CHECKPOINT_PAGES 1000
#define SIZE_POLL_MS 500
/* Group commit: with fewer requests than this queued, wait up to GATHER_US for more before
 * committing. Their senders are a round trip away from sending; one fsync then covers all. */
#define GATHER_MIN 4
#define GATHER_US 200
/* Delivery results ride along with stored events; alone, they are written once this many
 * have queued or the oldest has waited this long. */
#define RESULTS_BATCH 256
#define RESULTS_MAX_WAIT_MS 20
/* Delivered events older than delivery.keep_delivered_s leave the spool: the writer looks at
 * PURGE_SCAN events per step, a step a second, or every PURGE_SOON_MS while a sweep is under
 * way (a backlog of old events goes at up to ~25,000 a second, between commits). */
#define PURGE_SCAN 500
#define PURGE_EVERY_MS 1000
#define PURGE_SOON_MS 20
/* Results a failed transaction could not write are tried again this much later. */
#define RESULTS_RETRY_MS 1000

/* One row per (event, handler), clustered on that key (WITHOUT ROWID: one B-tree, not a
 * table and an index of its primary key), and an index in the poller's order. (A partial index
 * of the pending rows only was measured too: fewer pages, but p99 rose from ~1.7 to ~6 ms.) */
#define DELIVERIES_TABLE                                                                      \
    "CREATE TABLE IF NOT EXISTS deliveries ("                                                 \
    "  event_id INTEGER NOT NULL REFERENCES events(id), handler TEXT NOT NULL,"              \
    "  state INTEGER NOT NULL DEFAULT 0," /* 0 pending, 1 delivered, 2 dead */               \
    "  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,"         \
    "  PRIMARY KEY (event_id, handler)) WITHOUT ROWID;"

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS events ("
    "  id INTEGER PRIMARY KEY, type TEXT NOT NULL, body BLOB NOT NULL,"
    "  headers TEXT NOT NULL, received_at REAL NOT NULL);"
    DELIVERIES_TABLE
    "CREATE INDEX IF NOT EXISTS deliveries_next ON deliveries(state, next_at, event_id, handler);"
    "CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);";

/* A spool written by wapphook 0.1.0 (deliveries with a rowid) keeps every row: they move into
 * the new table in one transaction. */
static int migrate(sqlite3 *db, char **errmsg)
{
    sqlite3_stmt *st = NULL;
    int old, rc;

    sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                           "name = 'deliveries' AND sql NOT LIKE '%WITHOUT ROWID%'", -1, &st, NULL);
    old = st && sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!old)
        return SQLITE_OK;
    rc = sqlite3_exec(db, "BEGIN IMMEDIATE;"
                          "ALTER TABLE deliveries RENAME TO deliveries_0_1;"
                          DELIVERIES_TABLE
                          "INSERT INTO deliveries SELECT event_id, handler, state, attempts,"
                          "  next_at, last_error FROM deliveries_0_1;"
                          "DROP TABLE deliveries_0_1;"
                          "COMMIT;", NULL, NULL, errmsg);
    if (rc != SQLITE_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    else
        log_msg(LOG_INFO, "spool upgraded: deliveries table rebuilt");
    return rc;
}

struct put {
    const struct spool_event *ev;
    enum spool_result result;
    long long event_id;
    int done; /* a futex word: 1 once result is final */
    struct put *next;
};

/* Marks p done and wakes its request. p may be gone as soon as done is stored: its address
 * is only handed to the kernel after that, never read. */
static void put_release(struct put *p)
{
    __atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &p->done, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* A delivery to run: handed over by the writer after the commit that stored it, or read from
 * the spool by the poller (retries, and everything pending after a restart). Owns its fields. */
struct due {
    long long event_id;
    char *handler, *type, *headers;
    void *body;
    int body_len, attempts;
    int body_checked; /* handed over by the writer: the request path already checked it */
    double received_at;
    struct due *next;
};

struct result {
    long long event_id;
    char *handler;
    int ok, attempts, max_attempts;
    long long initial_ms, max_ms;
    char *error;
    struct result *next;
};

struct dispatcher {
    struct spool *sp;
    pthread_t thread;
    int delivering; /* inside a handler (with mu) */
};

/* Deliveries queued or running, until their result is committed: never run twice at once. */
struct claim {
    long long event_id;
    char *handler;
    struct claim *next;
};
#define CLAIM_BUCKETS 4096

struct spool {
    const struct wh_config *cfg;
    spool_current_fn current;
    void *arg;
    sqlite3 *wdb;
    sqlite3_stmt *ins_event, *ins_delivery, *dd_ins, *dd_get, *dd_upd, *upd_ok, *upd_fail;
    sqlite3_stmt *begin, *commit, *rollback;
    sqlite3_stmt *purge_scan;
    long long purge_cursor;  /* the retention sweep: the last event id it looked at */
    long long next_purge_ms; /* monotonic */
    pthread_t writer, checkpointer;
    pthread_cond_t ckpt_cv;
    int wal_pages; /* after the last commit, from the WAL hook */
    struct dispatcher *dispatchers;
    int n_dispatchers;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, disp_cv, gather_cv;
    struct put *puts, **puts_tail;
    struct result *results, **results_tail;
    struct claim *claims[CLAIM_BUCKETS];
    struct due *jobs, **jobs_tail;
    int n_jobs;
    int polling;            /* a dispatcher is running the poller */
    long long next_poll_ms; /* monotonic; 0: now */
    double cur_next_at;     /* the poller's sweep: where the last query stopped */
    long long cur_event;
    char *cur_handler;
    int stopping;
    long long used_bytes;
    unsigned long queued_since;
    int n_results;
    long long first_result_ms; /* monotonic time the oldest queued result arrived */
    long long results_hold_ms; /* after a failed transaction: not alone before this time */
};

/* With mu held: are queued results due for a transaction of their own? */
static int results_due(const struct spool *sp)
{
    long long now = wh_mono_ms();

    return sp->results && (sp->stopping || (now >= sp->results_hold_ms &&
                                            (sp->n_results >= RESULTS_BATCH ||
                                             now - sp->first_result_ms >= RESULTS_MAX_WAIT_MS)));
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

/* After a failed fsync the kernel may have dropped the pages, and a second fsync can report
 * success falsely: the only safe answer is to stop (status 3) and let a restart read the file. */
static void exit_if_fsync_failed(sqlite3 *db)
{
    int ext = sqlite3_extended_errcode(db);

    if (ext == SQLITE_IOERR_FSYNC || ext == SQLITE_IOERR_DIR_FSYNC) {
        log_msg(LOG_ERROR, "spool fsync failed: exiting rather than trust the spool",
                LOG_S("error", sqlite3_errmsg(db)));
        _exit(3);
    }
}

/* --- the checkpointer ------------------------------------------------------------------------ */

/* Called by SQLite in the writer after each commit. Replaces the automatic checkpoint, which
 * would run inside that commit and hold every request of the next batch behind it. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct spool *sp = arg;

    (void)db;
    (void)name;
    pthread_mutex_lock(&sp->mu);
    sp->wal_pages = pages;
    if (pages >= CHECKPOINT_PAGES)
        pthread_cond_signal(&sp->ckpt_cv);
    pthread_mutex_unlock(&sp->mu);
    return SQLITE_OK;
}

static void *checkpointer_main(void *arg)
{
    struct spool *sp = arg;
    sqlite3 *db = NULL;
    char err[256];

    if (open_db(sp->cfg->spool, &db, err, sizeof err)) {
        log_msg(LOG_ERROR, "spool checkpointer cannot start", LOG_S("error", err));
        return NULL;
    }
    pthread_mutex_lock(&sp->mu);
    while (!sp->stopping) {
        int log = 0, done = 0;
        if (sp->wal_pages < CHECKPOINT_PAGES) {
            pthread_cond_wait(&sp->ckpt_cv, &sp->mu);
            continue;
        }
        sp->wal_pages = 0;
        pthread_mutex_unlock(&sp->mu);
        /* PASSIVE: copies what no reader still needs, never blocks the writer */
        if (sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) != SQLITE_OK) {
            exit_if_fsync_failed(db);
            log_msg(LOG_WARN, "spool checkpoint failed", LOG_S("error", sqlite3_errmsg(db)));
        }
        pthread_mutex_lock(&sp->mu);
    }
    pthread_mutex_unlock(&sp->mu);
    sqlite3_close(db);
    return NULL;
}

/* --- the writer ---------------------------------------------------------------------------- */

/* Runs a prepared statement that returns no rows: SQLITE_OK or the error code. */
static int step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Stores one event and its deliveries, due at next_at. */
static int store(struct spool *sp, struct put *p, double now, double next_at)
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
    p->event_id = id;
    for (int i = 0; i < ev->n_handlers; i++) {
        sqlite3_reset(sp->ins_delivery);
        sqlite3_bind_int64(sp->ins_delivery, 1, id);
        sqlite3_bind_text(sp->ins_delivery, 2, ev->handlers[i], -1, SQLITE_STATIC);
        sqlite3_bind_double(sp->ins_delivery, 3, next_at);
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

/* Writes one delivery result; a retry lowers *retry_at to its time. */
static int record(struct spool *sp, const struct result *r, double now, double *retry_at)
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
        double at = now + (dead ? 0 : backoff_s(r));
        if (!dead && at < *retry_at)
            *retry_at = at;
        st = sp->upd_fail;
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, dead ? 2 : 0);
        sqlite3_bind_int(st, 2, r->attempts);
        sqlite3_bind_double(st, 3, at);
        sqlite3_bind_text(st, 4, r->error ? r->error : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, r->event_id);
        sqlite3_bind_text(st, 6, r->handler, -1, SQLITE_STATIC);
    }
    return sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
}

static struct claim **claim_bucket(struct spool *sp, long long id, const char *handler)
{
    unsigned long long h = (unsigned long long)id * 0x9E3779B97F4A7C15ull;

    while (*handler)
        h = (h ^ (unsigned char)*handler++) * 0x100000001B3ull;
    return &sp->claims[(h >> 20) % CLAIM_BUCKETS];
}

/* With mu held. */
static int claimed(struct spool *sp, long long id, const char *handler)
{
    for (struct claim *c = *claim_bucket(sp, id, handler); c; c = c->next)
        if (c->event_id == id && strcmp(c->handler, handler) == 0)
            return 1;
    return 0;
}

/* With mu held. */
static void claim(struct spool *sp, long long id, const char *handler)
{
    struct claim **b = claim_bucket(sp, id, handler), *c = malloc(sizeof *c);

    c->event_id = id;
    c->handler = strdup(handler);
    c->next = *b;
    *b = c;
}

static void due_free(struct due *d)
{
    free(d->handler);
    free(d->type);
    free(d->body);
    free(d->headers);
    free(d);
}

/* With mu held: appends jobs (a list) to the dispatchers' queue and wakes enough of them. */
static void enqueue(struct spool *sp, struct due *jobs, int n)
{
    if (!jobs)
        return;
    *sp->jobs_tail = jobs;
    while (jobs->next)
        jobs = jobs->next;
    sp->jobs_tail = &jobs->next;
    sp->n_jobs += n;
    /* a dispatcher per DUE_BATCH queued: a wake-up costs more than a fast handler's run */
    for (int i = 0; i < (sp->n_jobs + DUE_BATCH - 1) / DUE_BATCH && i < sp->n_dispatchers; i++)
        pthread_cond_signal(&sp->disp_cv);
}

/* The jobs for the deliveries of the events a commit stored (no lock needed). */
static struct due *jobs_for(const struct put *puts, int *n)
{
    struct due *head = NULL, **tail = &head;

    *n = 0;
    for (const struct put *p = puts; p; p = p->next) {
        if (p->result != SPOOL_STORED)
            continue;
        for (int i = 0; i < p->ev->n_handlers; i++) {
            struct due *d = calloc(1, sizeof *d);
            d->event_id = p->event_id;
            d->handler = strdup(p->ev->handlers[i]);
            d->type = strdup(p->ev->type);
            d->headers = strdup(p->ev->headers_json);
            d->body = malloc(p->ev->body_len + 1);
            memcpy(d->body, p->ev->body, p->ev->body_len);
            ((char *)d->body)[p->ev->body_len] = '\0';
            d->body_len = (int)p->ev->body_len;
            d->received_at = p->ev->received_at;
            d->body_checked = 1;
            *tail = d;
            tail = &d->next;
            ++*n;
        }
    }
    return head;
}

static void unclaim(struct spool *sp, long long id, const char *handler)
{
    for (struct claim **c = claim_bucket(sp, id, handler); *c; c = &(*c)->next) {
        if ((*c)->event_id == id && strcmp((*c)->handler, handler) == 0) {
            struct claim *gone = *c;
            *c = gone->next;
            free(gone->handler);
            free(gone);
            return;
        }
    }
}

/* --- purging -------------------------------------------------------------------------------- */

int spool_purge_delivered(sqlite3 *db, long long from, long long to, double before)
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
        if (sqlite3_prepare_v2(db, sql[i], -1, &st, NULL) != SQLITE_OK)
            return -1;
        sqlite3_bind_int64(st, 1, from);
        sqlite3_bind_int64(st, 2, to);
        sqlite3_bind_double(st, 3, before);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(st);
    }
    return rc ? -1 : sqlite3_changes(db);
}

/* --- retention ------------------------------------------------------------------------------ */

/* One step of the retention sweep: of the next PURGE_SCAN events received before now - keep_s,
 * removes those whose every delivery is done (pending and dead ones stay). Returns 1 while the
 * sweep has more to look at, 0 once it reached the end (the next starts over), -1 on failure. */
static int purge_step(struct spool *sp, double keep_s)
{
    double cutoff = wh_now_s() - keep_s;
    long long to = sp->purge_cursor;
    int n = 0, more = 1, rc = step_once(sp->begin);

    if (rc != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(sp->purge_scan, 1, sp->purge_cursor);
    sqlite3_bind_int(sp->purge_scan, 2, PURGE_SCAN);
    for (; sqlite3_step(sp->purge_scan) == SQLITE_ROW; n++) {
        if (sqlite3_column_double(sp->purge_scan, 1) >= cutoff) {
            more = 0;
            break;
        }
        to = sqlite3_column_int64(sp->purge_scan, 0);
    }
    sqlite3_reset(sp->purge_scan);
    if (n < PURGE_SCAN)
        more = 0;
    if (to > sp->purge_cursor && spool_purge_delivered(sp->wdb, sp->purge_cursor, to, cutoff) < 0)
        rc = SQLITE_ERROR;
    if (rc == SQLITE_OK)
        rc = step_once(sp->commit);
    if (rc != SQLITE_OK) {
        exit_if_fsync_failed(sp->wdb);
        step_once(sp->rollback);
        return -1;
    }
    sp->purge_cursor = more ? to : 0;
    return more;
}

/* In the writer, between transactions: a retention step when one is due. Its transaction needs
 * no sync of its own (a purge lost in a crash only keeps events longer). */
static void maybe_purge(struct spool *sp, int *full_sync)
{
    long long now = wh_mono_ms();
    struct generation *g;
    double keep;
    int more;

    if (now < sp->next_purge_ms)
        return;
    g = sp->current(sp->arg); /* a reload applies to the next step */
    keep = (double)g->cfg->keep_delivered_s;
    generation_release(g);
    if (*full_sync) {
        sqlite3_exec(sp->wdb, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
        *full_sync = 0;
    }
    more = purge_step(sp, keep);
    sp->next_purge_ms = now + (more == 1 ? PURGE_SOON_MS : PURGE_EVERY_MS);
    __atomic_store_n(&sp->used_bytes, used_bytes(sp->wdb), __ATOMIC_RELAXED); /* room again? */
}

static void *writer_main(void *arg)
{
    struct spool *sp = arg;
    unsigned long batches = 0;
    int full_sync = 1; /* open_db set synchronous=FULL */
    int was_handoff = 1;

    pthread_mutex_lock(&sp->mu);
    for (;;) {
        struct put *puts;
        struct result *results;
        struct due *jobs = NULL;
        struct timespec until, t0, t1;
        int rc, failed = 0, handoff, n_jobs = 0, poll_now = 0;
        double now, retry_at = 1e300;

        while (!sp->puts && !results_due(sp) && !sp->stopping) {
            wh_deadline_in(&until, sp->results ? RESULTS_MAX_WAIT_MS : SIZE_POLL_MS);
            if (pthread_cond_timedwait(&sp->work_cv, &sp->mu, &until) != 0 && !sp->results) {
                pthread_mutex_unlock(&sp->mu);
                maybe_purge(sp, &full_sync);
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
        handoff = sp->n_jobs < QUEUE_MAX; /* else the poller finds them: memory stays bounded */
        pthread_mutex_unlock(&sp->mu);
        if (handoff != was_handoff && puts) {
            log_msg(handoff ? LOG_INFO : LOG_WARN,
                    handoff ? "dispatch queue has room again"
                            : "dispatch queue full: new deliveries wait in the spool",
                    LOG_I("queued", QUEUE_MAX));
            was_handoff = handoff;
        }

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
        rc = step_once(sp->begin);
        for (struct put *p = puts; p && rc == SQLITE_OK && !failed; p = p->next)
            failed = store(sp, p, now, handoff ? now + LEASE_S : now) != 0;
        for (struct result *r = results; r && rc == SQLITE_OK && !failed; r = r->next)
            failed = record(sp, r, now, &retry_at) != 0;
        if (rc == SQLITE_OK && !failed)
            rc = step_once(sp->commit);
        else
            rc = SQLITE_ERROR;
        if (rc != SQLITE_OK) {
            exit_if_fsync_failed(sp->wdb);
            log_msg(LOG_ERROR, "spool commit failed: answering 503",
                    LOG_S("error", sqlite3_errmsg(sp->wdb)));
            step_once(sp->rollback);
        }
        if (rc == SQLITE_OK && handoff)
            jobs = jobs_for(puts, &n_jobs); /* before the puts are released */
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
        for (struct due *d = jobs; d; d = d->next)
            claim(sp, d->event_id, d->handler);
        enqueue(sp, jobs, n_jobs);
        /* Wake the first request of the batch only: each one woken wakes the next, so the
         * writer can start the next transaction rather than make 16 wake-up calls. */
        for (struct put *p = puts; p; p = p->next)
            if (rc != SQLITE_OK)
                p->result = SPOOL_ERROR;
        if (puts)
            put_release(puts);
        if (rc == SQLITE_OK && retry_at < 1e300) {
            /* a retry falls due: have the poller look then, not at its next idle round */
            long long at = wh_mono_ms() + (long long)((retry_at - wh_now_s()) * 1000.0);
            if (at < sp->next_poll_ms) {
                sp->next_poll_ms = at;
                poll_now = 1;
            }
        }
        if (rc != SQLITE_OK && results && !sp->stopping) {
            /* Not written (a full disk, say): they go into a later transaction, a second from
             * now, rather than leave rows pending that the poller would run again. */
            struct result *last = results;
            while (last->next)
                last = last->next;
            last->next = sp->results;
            if (!sp->results)
                sp->results_tail = &last->next;
            sp->results = results;
            for (struct result *r = results; r; r = r->next)
                sp->n_results++;
            sp->results_hold_ms = wh_mono_ms() + RESULTS_RETRY_MS;
            results = NULL;
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
        if (poll_now)
            pthread_cond_signal(&sp->disp_cv);
        if (wh_mono_ms() >= sp->next_purge_ms) { /* after the batch's requests are answered */
            pthread_mutex_unlock(&sp->mu);
            maybe_purge(sp, &full_sync);
            pthread_mutex_lock(&sp->mu);
        }
    }
    pthread_mutex_unlock(&sp->mu);
    used_bytes_forget();
    return NULL;
}

enum spool_result spool_put(struct spool *sp, const struct spool_event *ev)
{
    struct put p = {.ev = ev};

    if (__atomic_load_n(&sp->used_bytes, __ATOMIC_RELAXED) > ev->max_bytes)
        return SPOOL_FULL;
    pthread_mutex_lock(&sp->mu);
    *sp->puts_tail = &p;
    sp->puts_tail = &p.next;
    pthread_cond_signal(&sp->work_cv);
    if (++sp->queued_since % GATHER_MIN == 0)
        pthread_cond_signal(&sp->gather_cv); /* enough for a batch: no need to wait longer */
    pthread_mutex_unlock(&sp->mu);
    while (!__atomic_load_n(&p.done, __ATOMIC_ACQUIRE))
        syscall(SYS_futex, &p.done, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    if (p.next) /* set before the writer took the batch; the next request still waits */
        put_release(p.next);
    if (p.result == SPOOL_DUPLICATE)
        metrics_duplicate();
    return p.result;
}

/* --- dispatchers ------------------------------------------------------------------------------ */

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
    } else if (d->body_checked ||
               json_text_check(d->body, (size_t)d->body_len) == JSON_TEXT_OBJECT) {
        struct wh_event ev = {.type = d->type, .body = d->body, .body_len = (size_t)d->body_len,
                              .received_at = d->received_at,
                              .headers = h, .n_headers = nh, .id = d->event_id};
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

/* Reads the next rows of the current sweep over due deliveries, claims those nobody runs,
 * and queues them. Runs in one dispatcher at a time (sp->polling), without the lock. */
static void poll_once(struct spool *sp, sqlite3_stmt *due, sqlite3_stmt *recheck)
{
    struct due *rows = NULL, **tail = &rows, *keep = NULL, **ktail = &keep, *last = NULL;
    int nrows = 0, n = 0;

    sqlite3_bind_double(due, 1, wh_now_s());
    sqlite3_bind_double(due, 2, sp->cur_next_at);
    sqlite3_bind_int64(due, 3, sp->cur_event);
    sqlite3_bind_text(due, 4, sp->cur_handler, -1, SQLITE_STATIC);
    sqlite3_bind_int(due, 5, POLL_BATCH);
    while (sqlite3_step(due) == SQLITE_ROW) {
        struct due *d = calloc(1, sizeof *d);
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
        sp->cur_next_at = sqlite3_column_double(due, 7);
        *tail = last = d;
        tail = &d->next;
        nrows++;
    }
    sqlite3_reset(due); /* ends the read transaction: checkpoints can run */
    if (last) { /* the next query of this sweep starts after it */
        free(sp->cur_handler);
        sp->cur_event = last->event_id;
        sp->cur_handler = strdup(last->handler);
    }
    /* claim what no dispatcher has queued or is running */
    pthread_mutex_lock(&sp->mu);
    for (struct due *d = rows, **link = &rows; d; d = *link) {
        if (claimed(sp, d->event_id, d->handler)) {
            *link = d->next;
            due_free(d);
        } else {
            claim(sp, d->event_id, d->handler);
            link = &d->next;
        }
    }
    pthread_mutex_unlock(&sp->mu);
    /* The rows were read before the claim: a result may have been committed since. */
    while (rows) {
        struct due *d = rows;
        int still_due;
        rows = d->next;
        d->next = NULL;
        sqlite3_bind_int64(recheck, 1, d->event_id);
        sqlite3_bind_text(recheck, 2, d->handler, -1, SQLITE_STATIC);
        still_due = sqlite3_step(recheck) == SQLITE_ROW && sqlite3_column_int(recheck, 0) == 0 &&
                    sqlite3_column_int(recheck, 1) == d->attempts;
        sqlite3_reset(recheck);
        if (still_due) {
            *ktail = d;
            ktail = &d->next;
            n++;
        } else {
            pthread_mutex_lock(&sp->mu);
            unclaim(sp, d->event_id, d->handler);
            pthread_mutex_unlock(&sp->mu);
            due_free(d);
        }
    }
    pthread_mutex_lock(&sp->mu);
    enqueue(sp, keep, n);
    if (nrows < POLL_BATCH) { /* the sweep is over: the next starts from the beginning */
        sp->cur_next_at = -1e300;
        sp->cur_event = 0;
        free(sp->cur_handler);
        sp->cur_handler = strdup("");
        if (sp->next_poll_ms <= wh_mono_ms())
            sp->next_poll_ms = wh_mono_ms() + IDLE_POLL_MS;
    }
    sp->polling = 0;
    pthread_mutex_unlock(&sp->mu);
}

static void *dispatcher_main(void *arg)
{
    struct dispatcher *self = arg;
    struct spool *sp = self->sp;
    sqlite3 *db = NULL;
    sqlite3_stmt *due = NULL, *recheck = NULL;
    char err[256];

    if (open_db(sp->cfg->spool, &db, err, sizeof err) ||
        sqlite3_prepare_v2(db,
                           "SELECT d.event_id, d.handler, d.attempts, e.type, e.body, e.headers,"
                           "       e.received_at, d.next_at"
                           "  FROM deliveries d JOIN events e ON e.id = d.event_id"
                           " WHERE d.state = 0 AND d.next_at <= ?1"
                           "   AND (d.next_at, d.event_id, d.handler) > (?2, ?3, ?4)"
                           " ORDER BY d.next_at, d.event_id, d.handler LIMIT ?5",
                           -1, &due, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT state, attempts FROM deliveries WHERE event_id = ?1 AND handler = ?2",
                           -1, &recheck, NULL) != SQLITE_OK) {
        log_msg(LOG_ERROR, "spool dispatcher cannot start", LOG_S("error", db ? sqlite3_errmsg(db) : err));
        sqlite3_close(db);
        return NULL;
    }
    pthread_mutex_lock(&sp->mu);
    while (!sp->stopping) {
        struct timespec until;
        long long wait_ms;

        if (sp->jobs) {
            /* One at a time: a slow handler holds up no job but its own. What is still queued
             * goes to the other dispatchers awake, or to the next idle one to wake. */
            struct due *d = sp->jobs;
            sp->jobs = d->next;
            if (!sp->jobs)
                sp->jobs_tail = &sp->jobs;
            sp->n_jobs--;
            self->delivering = 1;
            pthread_mutex_unlock(&sp->mu);
            deliver(sp, d);
            due_free(d);
            pthread_mutex_lock(&sp->mu);
            self->delivering = 0;
            continue;
        }
        wait_ms = sp->next_poll_ms - wh_mono_ms();
        if (!sp->polling && sp->n_jobs < QUEUE_FEED && wait_ms <= 0) {
            sp->polling = 1;
            pthread_mutex_unlock(&sp->mu);
            poll_once(sp, due, recheck); /* clears sp->polling */
            pthread_mutex_lock(&sp->mu);
            continue;
        }
        wh_deadline_in(&until, wait_ms > 0 ? wait_ms : IDLE_POLL_MS);
        pthread_cond_timedwait(&sp->disp_cv, &sp->mu, &until);
    }
    pthread_mutex_unlock(&sp->mu);
    sqlite3_finalize(due);
    sqlite3_finalize(recheck);
    sqlite3_close(db);
    return NULL;
}

/* --- open and close ----------------------------------------------------------------------------- */

static void close_writer_db(struct spool *sp)
{
    sqlite3_stmt *sts[] = {sp->ins_event, sp->ins_delivery, sp->dd_ins,   sp->dd_get,
                           sp->dd_upd,    sp->upd_ok,       sp->upd_fail, sp->begin,
                           sp->commit,    sp->rollback,     sp->purge_scan};

    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++)
        sqlite3_finalize(sts[i]);
    sqlite3_close(sp->wdb);
}

int spool_check(const struct wh_config *cfg, char *err, size_t err_len)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct stat sb;
    int rc = 0;

    if (stat(cfg->spool, &sb) != 0) { /* serve creates it: its folder must let it */
        char *copy = strdup(cfg->spool);
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

int spool_open(const struct wh_config *cfg, spool_current_fn current, void *arg,
               struct spool **out, char *err, size_t err_len)
{
    struct spool *sp = calloc(1, sizeof *sp);
    char *errmsg = NULL;

    sp->cfg = cfg;
    sp->current = current;
    sp->arg = arg;
    sp->puts_tail = &sp->puts;
    sp->results_tail = &sp->results;
    sp->jobs_tail = &sp->jobs;
    sp->cur_next_at = -1e300;
    sp->cur_handler = strdup("");
    pthread_mutex_init(&sp->mu, NULL);
    pthread_cond_init(&sp->work_cv, NULL);
    pthread_cond_init(&sp->disp_cv, NULL);
    pthread_cond_init(&sp->gather_cv, NULL);
    pthread_cond_init(&sp->ckpt_cv, NULL);
    if (open_db(cfg->spool, &sp->wdb, err, err_len)) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        snprintf(err, err_len, "%s:%d: %s", cfg->file, cfg->spool_line, why);
        goto fail;
    }
    if (sqlite3_exec(sp->wdb, "PRAGMA journal_mode=WAL", NULL, NULL, &errmsg) != SQLITE_OK ||
        migrate(sp->wdb, &errmsg) != SQLITE_OK ||
        sqlite3_exec(sp->wdb, schema, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_prepare_v2(sp->wdb, "INSERT INTO events(type, body, headers, received_at) VALUES(?,?,?,?)", -1, &sp->ins_event, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "INSERT INTO deliveries(event_id, handler, next_at) VALUES(?,?,?)", -1, &sp->ins_delivery, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "INSERT OR IGNORE INTO dedupe(key, expires_at) VALUES(?,?)", -1, &sp->dd_ins, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "SELECT expires_at FROM dedupe WHERE key=?", -1, &sp->dd_get, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "UPDATE dedupe SET expires_at=? WHERE key=?", -1, &sp->dd_upd, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "UPDATE deliveries SET state=1, attempts=?, last_error=NULL WHERE event_id=? AND handler=?", -1, &sp->upd_ok, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "UPDATE deliveries SET state=?, attempts=?, next_at=?, last_error=? WHERE event_id=? AND handler=?", -1, &sp->upd_fail, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "BEGIN IMMEDIATE", -1, &sp->begin, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "COMMIT", -1, &sp->commit, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "ROLLBACK", -1, &sp->rollback, NULL) ||
        sqlite3_prepare_v2(sp->wdb, "SELECT id, received_at FROM events WHERE id > ?1 ORDER BY id LIMIT ?2", -1, &sp->purge_scan, NULL)) {
        snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line, cfg->spool,
                 errmsg ? errmsg : sqlite3_errmsg(sp->wdb));
        sqlite3_free(errmsg);
        goto fail;
    }
    {
        /* deliveries handed to dispatchers in memory when the last process stopped: due now */
        char sql[160];
        snprintf(sql, sizeof sql, "UPDATE deliveries SET next_at = %.6f WHERE state = 0 AND "
                                  "attempts = 0 AND next_at > %.6f", wh_now_s(), wh_now_s());
        if (sqlite3_exec(sp->wdb, sql, NULL, NULL, &errmsg) != SQLITE_OK) {
            snprintf(err, err_len, "%s:%d: spool %s: %s", cfg->file, cfg->spool_line,
                     cfg->spool, errmsg);
            sqlite3_free(errmsg);
            goto fail;
        }
    }
    refresh_gauges(sp);
    used_bytes_forget(); /* the writer thread prepares its own */
    long long used_at_open = sp->used_bytes; /* before any thread can write it */
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    sqlite3_wal_hook(sp->wdb, wal_hook, sp);
    pthread_create(&sp->checkpointer, NULL, checkpointer_main, sp);
    pthread_setname_np(sp->checkpointer, "spool-ckpt");
    pthread_create(&sp->writer, NULL, writer_main, sp);
    pthread_setname_np(sp->writer, "spool-writer"); /* for top -H and perf */
    sp->n_dispatchers = cfg->delivery_workers;
    sp->dispatchers = calloc((size_t)sp->n_dispatchers, sizeof *sp->dispatchers);
    for (int i = 0; i < sp->n_dispatchers; i++) {
        sp->dispatchers[i].sp = sp;
        pthread_create(&sp->dispatchers[i].thread, NULL, dispatcher_main, &sp->dispatchers[i]);
        pthread_setname_np(sp->dispatchers[i].thread, "spool-dispatch");
    }
    log_msg(LOG_INFO, "spool open", LOG_S("path", cfg->spool), LOG_I("workers", sp->n_dispatchers),
            LOG_I("used_bytes", used_at_open));
    *out = sp;
    return 0;
fail:
    close_writer_db(sp);
    free(sp->cur_handler);
    free(sp);
    return -1;
}

int spool_close(struct spool *sp, const struct timespec *deadline)
{
    int running = 0;

    if (!sp)
        return 0;
    pthread_mutex_lock(&sp->mu);
    __atomic_store_n(&sp->stopping, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&sp->work_cv);
    pthread_cond_broadcast(&sp->disp_cv);
    pthread_mutex_unlock(&sp->mu);
    for (int i = 0; i < sp->n_dispatchers; i++) {
        struct dispatcher *d = &sp->dispatchers[i];
        int busy;
        if (!deadline || pthread_timedjoin_np(d->thread, NULL, deadline) != 0) {
            pthread_mutex_lock(&sp->mu);
            busy = deadline && d->delivering; /* it takes no new job once stopping is set */
            pthread_mutex_unlock(&sp->mu);
            if (busy) /* in a handler past the deadline: left alone */
                running++;
            else /* on its way out (the deadline may have passed before it woke) */
                pthread_join(d->thread, NULL);
        }
    }
    pthread_join(sp->writer, NULL); /* after the dispatchers: their last results are written */
    pthread_mutex_lock(&sp->mu);
    pthread_cond_signal(&sp->ckpt_cv);
    pthread_mutex_unlock(&sp->mu);
    pthread_join(sp->checkpointer, NULL);
    if (running) {
        /* Handlers still running: nothing more is written, and nothing is torn down under
         * them. Their deliveries stay pending in the spool and run again after a restart. */
        log_msg(LOG_WARN, "deliveries still running at the stop deadline: left pending in the spool",
                LOG_I("running", running));
        return -1;
    }
    close_writer_db(sp);
    for (int i = 0; i < CLAIM_BUCKETS; i++) {
        while (sp->claims[i]) {
            struct claim *c = sp->claims[i];
            sp->claims[i] = c->next;
            free(c->handler);
            free(c);
        }
    }
    while (sp->jobs) { /* not run: their rows stay pending, due at the next start */
        struct due *d = sp->jobs;
        sp->jobs = d->next;
        due_free(d);
    }
    free(sp->cur_handler);
    free(sp->dispatchers);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->work_cv);
    pthread_cond_destroy(&sp->disp_cv);
    pthread_cond_destroy(&sp->gather_cv);
    pthread_cond_destroy(&sp->ckpt_cv);
    free(sp);
    return 0;
}
