/*
 * Durable delivery (delivery.mode: durable). A SQLite spool (WAL, synchronous=FULL) holds
 * every accepted event and one delivery per (event, handler). One writer thread owns every
 * write: requests hand it their event and wait for the transaction that stores it (group
 * commit: one fsync for everything queued), and dispatchers hand it delivery results.
 * The deliveries a commit stored go to the dispatcher threads in memory (bounded; past the
 * bound they wait in the spool); one dispatcher at a time also sweeps the spool for what is
 * due there (retries, replays, what a restart left). Dispatchers run the handler through the
 * current generation and record the outcome: done, retry later (exponential backoff with
 * jitter), or dead after retry.max_attempts. WAL checkpoints run on a thread of their own.
 * Between commits the writer also removes delivered events older than
 * delivery.keep_delivered_s, a step at a time. Results a failed transaction could not write
 * (a full disk) are kept and written later. A failed fsync ends the process: the kernel may
 * have dropped the pages, and retrying fsync can report success falsely.
 */
#ifndef WH_SPOOL_H
#define WH_SPOOL_H

#include "manifest.h"

#include <stddef.h>
#include <time.h>

struct spool;
struct generation;

/* The running server's current generation, with a reference for the caller. */
typedef struct generation *(*spool_current_fn)(void *arg);

int spool_open(const struct wh_config *cfg, spool_current_fn current, void *arg,
               struct spool **out, char *err, size_t err_len);
/* Stops the spool's threads once what they hold is written. Handlers still running at
 * deadline (CLOCK_REALTIME; NULL: no limit) are left alone, their deliveries pending in the
 * spool; then it returns -1 without freeing anything, for a caller about to exit. */
int spool_close(struct spool *sp, const struct timespec *deadline);
/* In the caller's transaction: removes the events with from < id <= to received before
 * `before` whose every delivery succeeded (or that have none), with their deliveries; pending
 * deliveries and dead letters stay. Returns how many events went, or -1. The writer's retention
 * sweep and `wapphook spool purge` both use it. */
struct sqlite3;
int spool_purge_delivered(struct sqlite3 *db, long long from, long long to, double before);

/* For `wapphook check`: would spool_open succeed? An existing spool must open as a database;
 * a missing one needs a folder it can be created in. Writes nothing. */
int spool_check(const struct wh_config *cfg, char *err, size_t err_len);

enum spool_result { SPOOL_STORED, SPOOL_DUPLICATE, SPOOL_FULL, SPOOL_ERROR };

struct spool_event {
    const char *type;
    const char *body;
    size_t body_len;
    const char *headers_json; /* {"name":"value",...}, lower-case names */
    double received_at;
    long long max_bytes;      /* delivery.max_spool_mb of the request's generation, in bytes */
    const char *dedupe_key;   /* NULL: not deduplicated */
    long long dedupe_window_s;
    const char *const *handlers; /* names, as in generation.h */
    int n_handlers;
};

/* Stores ev durably (returns once its transaction is on disk) or says why not. */
enum spool_result spool_put(struct spool *sp, const struct spool_event *ev);

#endif
