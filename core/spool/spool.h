/*
 * Durable delivery (delivery.mode: durable): the queue policy. Every accepted event and one
 * delivery per (event, handler) are kept by a storage backend (store.h: SQLite on local disk,
 * or PostgreSQL shared by many instances). Writer threads own every write, as many as the
 * backend commits at once (SQLite 1, PostgreSQL 2): requests hand one their event and wait for
 * the transaction that stores it (group commit: one sync for everything queued), and
 * dispatchers hand them delivery results. The deliveries a commit stored
 * go to the dispatcher threads in memory (bounded; past the bound they wait in the store),
 * leased to this instance; one dispatcher at a time also polls the store for what is due
 * there (retries, replays, what a restart or a dead instance left). Dispatchers run a delivery
 * through the caller's deliver hook and record the outcome: done, retry later (exponential
 * backoff with jitter), or dead after retry.max_attempts. Between commits the writer also
 * removes delivered events older than delivery.keep_delivered_s, a step at a time, and renews
 * the leases of what it holds. Results a failed transaction could not write are kept and
 * written later. A failed fsync (SQLite) ends the process: the kernel may have dropped the
 * pages, and retrying fsync can report success falsely.
 */
#ifndef WH_SPOOL_H
#define WH_SPOOL_H

#include "conf/conf.h"

#include <stddef.h>
#include <time.h>

struct spool;

/* One delivery to run, borrowed for the call. */
struct spool_delivery {
    long long event_id;
    const char *handler, *type, *headers_json, *body;
    size_t body_len;
    int body_checked; /* the request path already checked the body is a JSON object */
    double received_at;
    int attempt; /* 1 for the first */
};

/* The retry rules a delivery ran under (the current configuration's). */
struct spool_rules {
    int max_attempts;
    long long initial_backoff_ms, max_backoff_ms;
    long long keep_delivered_s;
};

/* What an attempt came to besides success, filled in by the deliver hook: kept with the
 * delivery for the console (docs/operations.md, "The console"). */
struct spool_attempt {
    double at, duration_ms;
    int timeout;        /* its budget ran out */
    struct log_tee log; /* the lines it logged */
};

struct spool_hooks {
    void *arg;
    /* Runs d's handler: 0 when it succeeded, else -1 with err, and *give_up set when no retry
     * can help (its handler is gone). Fills in the rules in force, and the generation. */
    int (*deliver)(void *arg, const struct spool_delivery *d, struct spool_rules *rules,
                   long long *generation, int *give_up, struct spool_attempt *att, char *err,
                   size_t err_len);
    void (*rules)(void *arg, struct spool_rules *rules);
};

int spool_open(const struct wh_config *cfg, const struct spool_hooks *hooks, struct spool **out,
               char *err, size_t err_len);
/* Stops the spool's threads once what they hold is written. Handlers still running at
 * deadline (CLOCK_MONOTONIC, from wh_deadline_in; NULL: no limit) are left alone, their deliveries
 * pending in the spool; then it returns -1 without freeing anything, for a caller about to exit. */
int spool_close(struct spool *sp, const struct timespec *deadline);

/* For `wapphook check`: would spool_open succeed? Writes nothing. */
int spool_check(const struct wh_config *cfg, char *err, size_t err_len);

enum spool_result { SPOOL_STORED, SPOOL_DUPLICATE, SPOOL_FULL, SPOOL_ERROR };

struct spool_event {
    const char *type;
    const char *body;
    size_t body_len;
    const char *headers_json; /* {"name":"value",...}, lower-case names */
    double received_at;
    long long max_bytes;    /* delivery.max_spool_mb of the request's generation, in bytes */
    const char *dedupe_key; /* NULL: not deduplicated */
    long long dedupe_window_s;
    const char *const *handlers; /* names, as in generation.h */
    int n_handlers;
};

/* Stores ev durably (returns once its transaction is committed) or says why not; *id (if
 * id): the event's id when stored, else 0. */
enum spool_result spool_put(struct spool *sp, const struct spool_event *ev, long long *id);

/* `wapphook spool` (cli.c): argv[0] is the subcommand (stats, list, replay, purge). Returns
 * an exit code. */
int spool_cli(const char *manifest, int argc, char **argv);

/* --- the console's questions (and `spool events`) -------------------------------------------- */

/* An event's state is its worst delivery's (dead, then failed: pending after a failed attempt,
 * then pending), ok when every one succeeded, unrouted when it had none. */
enum { EV_OK, EV_PENDING, EV_FAILED, EV_DEAD, EV_UNROUTED, EV_STATES };
extern const char *const store_event_states[EV_STATES]; /* "ok", "pending", ... */

struct store_query {
    const char *type; /* NULL: any */
    int state;        /* EV_*, or -1: any */
    /* NULL: any. An event id or a dedupe key's value (every event type's) when one matches
     * exactly, else text in the body (a scan newest first, a bounded number of events a call:
     * the page may come back short with a next to go on from). */
    const char *q;
    long long before; /* events with a smaller id; 0: from the newest */
    int limit;        /* events per page */
};

struct store_outcome {
    const char *handler, *error; /* error: "" when none */
    int state;                   /* EV_OK, EV_PENDING, EV_FAILED or EV_DEAD */
    int attempts;
    int timeout;        /* its last attempt ran out of time */
    int recorded;       /* attempts kept (the console's); attempts restarts at a replay */
    double duration_ms; /* its last attempt's; < 0: none recorded */
};

struct store_event {
    long long id;
    const char *type;
    double received_at;
    int state; /* EV_* */
    const struct store_outcome *handlers;
    int n_handlers;
};

/* An attempt as kept (table attempts): how it ended. */
enum { ATTEMPT_OK, ATTEMPT_FAILED, ATTEMPT_TIMEOUT, ATTEMPT_DEAD, ATTEMPT_KINDS };
extern const char *const store_attempt_names[ATTEMPT_KINDS]; /* "ok", "failed", ... */

struct store_attempt {
    const char *handler, *error, *log; /* error, log: "" when none; log: '\n'-separated */
    double at, duration_ms;
    int outcome; /* ATTEMPT_* */
};

/* One event whole: the console's detail. */
struct store_detail {
    struct store_event e;
    const char *headers_json, *body;
    size_t body_len;
    const struct store_attempt *attempts; /* oldest first */
    int n_attempts;
};

/* The console's side of a spool (admin.c): its own connection, used by one thread at a
 * time (a lock). Each call returns what the backend's does, or -2 when the backend cannot
 * answer it (PostgreSQL: events and detail, see docs/operations.md). */
struct spool_admin;
int spool_admin_open(const struct wh_config *cfg, struct spool_admin **out, char *err,
                     size_t err_len);
void spool_admin_close(struct spool_admin *a);
const char *spool_admin_error(struct spool_admin *a);
int spool_admin_events(struct spool_admin *a, const struct store_query *q,
                       void (*ev)(void *arg, const struct store_event *e), void *arg,
                       long long *next);
int spool_admin_event(struct spool_admin *a, long long id,
                      void (*ev)(void *arg, const struct store_event *e), void *arg);
int spool_admin_detail(struct spool_admin *a, long long id,
                       void (*got)(void *arg, const struct store_detail *d), void *arg);
/* ... and -3 when the event has no such handler. */
long long spool_admin_replay_event(struct spool_admin *a, long long id, const char *handler);
long long spool_admin_replay_dead(struct spool_admin *a);

#endif
