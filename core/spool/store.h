/*
 * A spool's storage backend: where events and their deliveries are kept. The queue policy
 * (spool.c: group commit, dispatchers, retries and backoff, dead letters, retention, metrics)
 * decides what to write and when; a backend only knows how to write it, read what is due,
 * and answer the `spool` commands. Two backends: SQLite (store_sqlite.c, one process) and
 * PostgreSQL (store_pg.c, any number of instances sharing one database).
 *
 * Threads: write is called by the spool's writer threads (`writers` of them, each with its
 * index: one transaction at a time per index); renew, purge_step, housekeep and release by
 * writer 0 only; poll and still_due by one dispatcher at a time; used_bytes from any thread.
 */
#ifndef WH_SPOOL_STORE_H
#define WH_SPOOL_STORE_H

#include "spool.h"

#include <stddef.h>

struct store;

/* A handler's first delivery of an event is tracked by a bit of the event's row (SQLite) for
 * the first STORE_SLOTS handlers: its slot. The others, and every retry, by a delivery row. */
#define STORE_SLOTS 63

/* An event of the batch being written. */
struct store_put {
    const struct spool_event *ev;
    int queued;               /* in: its deliveries go to the dispatchers in memory */
    enum spool_result result; /* out: SPOOL_STORED or SPOOL_DUPLICATE */
    long long event_id;       /* out, when stored */
    long long token;          /* out: the lease its fresh deliveries are held under */
};

enum { DELIVERY_PENDING = 0, DELIVERY_DONE = 1, DELIVERY_DEAD = 2 };

/* A delivery's outcome to record, decided by the policy. */
struct store_result {
    long long event_id;
    const char *handler;
    long long token; /* the lease it ran under (PostgreSQL: the fence) */
    int slot;        /* its bit in the event's row, or -1: a delivery row (see STORE_SLOTS) */
    int state;       /* DELIVERY_*: pending means a retry, due delay_s from now */
    int attempts;
    double delay_s;
    const char *error; /* NULL when it succeeded */
    /* the attempt, kept for the console: when, how long, stopped at its budget, its lines */
    double at, duration_ms;
    int timeout;
    const char *log; /* NULL: none */
    int fenced;      /* out: its lease had passed to another instance: not written */
};

/* A delivery the poller found due (or the writer handed over). Owns its strings. */
struct spool_due {
    long long event_id;
    char *handler, *type, *headers;
    void *body; /* NUL-terminated */
    int body_len, attempts;
    int slot;         /* see STORE_SLOTS */
    int body_checked; /* handed over by the writer: the request path already checked it */
    double received_at;
    long long token;
    struct spool_due *next;
};

/* ev's handler names as a JSON array, into b (emptied first): 0, or -1 out of memory
 * (spool.c). */
struct wh_buf;
int spool_handlers_json(const struct spool_event *ev, struct wh_buf *b);

/* Frees a list of them (spool.c). */
void spool_due_list_free(struct spool_due *d);

/* What a backend tells its spool from threads of its own (PostgreSQL's listener). */
struct store_hooks {
    void *arg;
    /* another instance made something due in delay_ms (a retry, a replay): poll then */
    void (*wake)(void *arg, long long delay_ms);
};

struct store_ops {
    const char *kind;
    int (*open)(const struct wh_config *cfg, const struct store_hooks *hooks, struct store **out,
                char *err, size_t err_len);
    /* One transaction: stores puts (dedupe, event, deliveries due now, or leased to this
     * instance when queued) and records results. 0, or -1 with nothing written. */
    int (*write)(struct store *s, int writer, struct store_put *puts, int n_puts,
                 struct store_result *res, int n_res);
    /* Transactions it can commit at once: the spool runs a writer thread for each. Writer 0
     * alone is given results; the others only store events. */
    int writers;
    const char *(*error)(struct store *s); /* why the last call failed (in this thread) */
    /* A failed write: must the process stop rather than trust the store (a failed fsync)?
     * NULL: never. */
    int (*fatal)(struct store *s);
    /* Keeps the leases of these deliveries (queued or running here) from expiring. NULL: a
     * store for one process, whose in-memory claims are the lease. */
    int (*renew)(struct store *s, const struct spool_due *held);
    /* Gives these deliveries (queued here, never run) back: due now, for any instance. NULL:
     * the next start makes them due. */
    void (*release)(struct store *s, const struct spool_due *held);
    /* A retention step over delivered events received before `before`: 1 more to do, 0 done,
     * -1 failed. */
    int (*purge_step)(struct store *s, double before);
    /* Expired dedupe keys out, gauges (metrics_spool) and used bytes refreshed. */
    void (*housekeep)(struct store *s);
    long long (*used_bytes)(struct store *s);
    /* Due deliveries, about limit of them, leased to this instance. A sweep: returns limit or
     * more while it goes on, less once it reached its end; -1 when it failed. */
    int (*poll)(struct store *s, int limit, struct spool_due **rows);
    /* Is a polled row still due once claimed in memory (a result may have landed since)? */
    int (*still_due)(struct store *s, const struct spool_due *d);
    /* Poll again this often when idle (ms). */
    int idle_poll_ms;
    void (*close)(struct store *s);
};

extern const struct store_ops store_sqlite, store_pg;

/* The backend for a delivery.spool value: PostgreSQL for a postgresql:// or postgres:// URI. */
const struct store_ops *store_for(const char *spool);
int spool_is_pg(const char *spool);

/* --- the `spool` commands ------------------------------------------------------------------ */

struct store_stats {
    long long deliveries[3]; /* by state */
    long long events;
    double oldest_pending_s; /* < 0: none */
    long long size_bytes;
};

struct store_row {
    long long event_id;
    const char *type, *handler, *error, *owner; /* owner: the instance holding its lease, or "" */
    int state, attempts;
};

/* An event read for the console's answers, with its handlers' outcomes; it owns its strings
 * (both backends, spool.c). */
struct store_found {
    long long id;
    char *type;
    double received_at;
    int state, n;
    struct store_outcome *h;
};
void store_found_free(struct store_found *f);
/* Its outcomes in handler order, and its state: the worst of them, unrouted when none. */
void store_found_finish(struct store_found *f);
/* The event as the console's answers show it (borrowing f's strings). */
struct store_event store_found_event(const struct store_found *f);
/* Hands f's event to ev, then frees f: 1 (an admin op's "found"). */
int store_found_give(struct store_found *f, void (*ev)(void *arg, const struct store_event *e),
                     void *arg);

struct store_admin;
struct admin_ops {
    int (*open)(const struct wh_config *cfg, struct store_admin **out, char *err, size_t err_len);
    int (*stats)(struct store_admin *a, struct store_stats *out);
    /* Calls row() for each delivery (dead ones only if dead_only), in event order; rows are
     * read a page at a time, and no read is open while row() runs (it may block on output). */
    int (*list)(struct store_admin *a, int dead_only,
                void (*row)(void *arg, const struct store_row *r), void *arg);
    /* Calls ev() for each event matching q, newest first, up to q->limit of them; *next: the
     * `before` of the next page, 0 when there is none. No read is open while ev() runs. */
    int (*events)(struct store_admin *a, const struct store_query *q,
                  void (*ev)(void *arg, const struct store_event *e), void *arg, long long *next);
    /* Event id as the list shows it (no body, no attempts): 1, 0 when there is no such
     * event, -1 on error. For the console's stream: one event per notice, cheaply. */
    int (*event)(struct store_admin *a, long long id,
                 void (*ev)(void *arg, const struct store_event *e), void *arg);
    /* Event id whole (d's strings live for the call only): 1, 0 when there is no such event,
     * -1 on error. NULL: not available on this backend. */
    int (*detail)(struct store_admin *a, long long id,
                  void (*got)(void *arg, const struct store_detail *d), void *arg);
    /* Event id's deliveries (handler's only, unless NULL) due again now, attempts reset; a
     * first delivery still owed is left as it is. How many (0 for no such event), -3 when the
     * event has no such handler, -1 on error. */
    long long (*replay_event)(struct store_admin *a, long long id, const char *handler);
    /* Dead letters of event id (0: all) pending again, attempts reset, due now. */
    long long (*replay)(struct store_admin *a, long long id);
    /* Delivered events received before `before` (and their deliveries) removed. */
    long long (*purge)(struct store_admin *a, double before);
    const char *(*error)(struct store_admin *a);
    void (*close)(struct store_admin *a);
};

extern const struct admin_ops store_sqlite_admin, store_pg_admin;

/* For `wapphook check`: could the backend open this spool? Writes nothing. */
int store_sqlite_check(const struct wh_config *cfg, char *err, size_t err_len);
int store_pg_check(const struct wh_config *cfg, char *err, size_t err_len);

/* A delivery.spool value as logs and messages show it: a URI's password replaced by "***";
 * a path as it is. */
void spool_shown(const char *spool, char *out, size_t cap);

#endif
