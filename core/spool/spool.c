#define _GNU_SOURCE
#include "spool.h"

#include "backoff.h"

#include "base/base.h"
#include "store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

/* One dispatcher is woken per this many queued deliveries (a wake-up costs more than a fast
 * handler's run); each awake dispatcher takes them one at a time until none is left. */
#define DUE_BATCH 8
/* The poller reads this many due rows per query, and stops feeding the queue at QUEUE_FEED. */
#define POLL_BATCH 64
#define QUEUE_FEED 256
/* Past this many queued jobs, new deliveries are left for the poller rather than queued. */
#define QUEUE_MAX 8192
#define SIZE_POLL_MS 500
/* Group commit: with fewer requests than this queued, wait up to GATHER_US for more before
 * committing. Their senders are a round trip away from sending; one sync then covers all. */
#define GATHER_MIN 4
#define GATHER_US 200
/* Delivery results ride along with stored events; alone, they are written once this many
 * have queued or the oldest has waited this long. */
#define RESULTS_BATCH 256
#define RESULTS_MAX_WAIT_MS 20
/* Delivered events older than delivery.keep_delivered_s leave the spool: a retention step a
 * second, or every PURGE_SOON_MS while a sweep is under way. */
#define PURGE_EVERY_MS 1000
#define PURGE_SOON_MS 8
/* Results a failed transaction could not write are tried again this much later. */
#define RESULTS_RETRY_MS 1000
/* Housekeeping (expired dedupe keys, gauges) every this many batches, and when idle. */
#define HOUSEKEEP_BATCHES 64

struct put {
    struct store_put sp;    /* .ev, and what the store says */
    struct spool_due *jobs; /* its deliveries for the dispatchers, when they have room */
    int n_jobs;
    int done; /* a futex word: 1 once the result is final */
    struct put *next;
};

/* Marks p done and wakes its request. p may be gone as soon as done is stored: its address
 * is only handed to the kernel after that, never read. */
static void put_release(struct put *p)
{
    __atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &p->done, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

struct result {
    long long event_id;
    char *handler;
    int slot, ok, give_up, attempts;
    struct spool_rules rules;
    char *error;
    double at, duration_ms;
    int timeout;
    char *log; /* NULL: it logged nothing */
    struct result *next;
};

/* The writers: as many as the backend can commit at once (SQLite 1, PostgreSQL 2). Writer 0
 * also writes results and runs the between-batches work; the others store events only, which
 * touch no row another writer updates. */
struct writer {
    struct spool *sp;
    int index;
    pthread_t thread;
};

struct dispatcher {
    struct spool *sp;
    pthread_t thread;
    int delivering; /* inside a handler (with mu) */
    int exited;     /* past its loop, about to return (with mu; done_cv signalled) */
};

/* Deliveries queued or running here, until their result is committed: never run twice at
 * once by this instance. token: the lease they hold (PostgreSQL), renewed and fenced by. */
struct claim {
    long long event_id, token;
    char *handler;
    struct claim *next;
};
#define CLAIM_BUCKETS 4096

struct spool {
    const struct wh_config *cfg;
    const struct store_ops *ops;
    struct store *store;
    struct spool_hooks hooks;
    struct writer *writers;
    int n_writers;
    struct dispatcher *dispatchers;
    int n_dispatchers;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, disp_cv, gather_cv, done_cv; /* done_cv: a dispatcher exited */
    struct put *puts, **puts_tail;
    struct result *results, **results_tail;
    struct claim *claims[CLAIM_BUCKETS];
    int n_claims;
    struct spool_due *jobs, **jobs_tail;
    int n_jobs;
    int polling;            /* a dispatcher is running the poller */
    long long next_poll_ms; /* monotonic; 0: now */
    int stopping;
    unsigned long queued_since;
    int n_results;
    long long first_result_ms; /* monotonic time the oldest queued result arrived */
    long long results_hold_ms; /* after a failed transaction: not alone before this time */
    long long next_purge_ms, next_renew_ms, next_housekeep_ms; /* monotonic */
};

const char *const store_event_states[EV_STATES] = {"ok", "pending", "failed", "dead", "unrouted"};
const char *const store_attempt_names[ATTEMPT_KINDS] = {"ok", "failed", "timeout", "dead"};

void store_found_free(struct store_found *f)
{
    for (int i = 0; i < f->n; i++) {
        free((char *)f->h[i].handler);
        free((char *)f->h[i].error);
    }
    free(f->h);
    free(f->type);
}

static int by_handler(const void *x, const void *y)
{
    return strcmp(((const struct store_outcome *)x)->handler,
                  ((const struct store_outcome *)y)->handler);
}

struct store_event store_found_event(const struct store_found *f)
{
    return (struct store_event){.id = f->id,
                                .type = f->type,
                                .received_at = f->received_at,
                                .state = f->state,
                                .handlers = f->h,
                                .n_handlers = f->n};
}

int store_found_give(struct store_found *f, void (*ev)(void *arg, const struct store_event *e),
                     void *arg)
{
    struct store_event e = store_found_event(f);

    ev(arg, &e);
    store_found_free(f);
    return 1;
}

void store_found_finish(struct store_found *f)
{
    f->state = f->n ? EV_OK : EV_UNROUTED;
    for (int i = 0; i < f->n; i++) /* EV_OK < EV_PENDING < EV_FAILED < EV_DEAD */
        if (f->h[i].state > f->state) f->state = f->h[i].state;
    if (f->n > 1) qsort(f->h, (size_t)f->n, sizeof *f->h, by_handler);
}

const struct store_ops *store_for(const char *spool)
{
    return spool_is_pg(spool) ? &store_pg : &store_sqlite;
}

int spool_is_pg(const char *spool)
{
    return spool && (!strncmp(spool, "postgresql://", 13) || !strncmp(spool, "postgres://", 11));
}

/* With mu held: are queued results due for a transaction of their own? */
static int results_due(const struct spool *sp)
{
    long long now = wh_mono_ms();

    return sp->results && (sp->stopping || (now >= sp->results_hold_ms &&
                                            (sp->n_results >= RESULTS_BATCH ||
                                             now - sp->first_result_ms >= RESULTS_MAX_WAIT_MS)));
}

/* --- claims ----------------------------------------------------------------------------------- */

static struct claim **claim_bucket(struct spool *sp, long long id, const char *handler)
{
    unsigned long long h = (unsigned long long)id * 0x9E3779B97F4A7C15ull;

    while (*handler)
        h = (h ^ (unsigned char)*handler++) * 0x100000001B3ull;
    return &sp->claims[(h >> 20) % CLAIM_BUCKETS];
}

/* With mu held. */
static struct claim *claimed(struct spool *sp, long long id, const char *handler)
{
    for (struct claim *c = *claim_bucket(sp, id, handler); c; c = c->next)
        if (c->event_id == id && strcmp(c->handler, handler) == 0) return c;
    return NULL;
}

/* With mu held. */
static void claim(struct spool *sp, long long id, const char *handler, long long token)
{
    struct claim **b = claim_bucket(sp, id, handler), *c = wh_xmalloc(sizeof *c);

    c->event_id = id;
    c->token = token;
    c->handler = wh_xstrdup(handler);
    c->next = *b;
    *b = c;
    sp->n_claims++;
}

/* With mu held. */
static void unclaim(struct spool *sp, long long id, const char *handler)
{
    for (struct claim **c = claim_bucket(sp, id, handler); *c; c = &(*c)->next) {
        if ((*c)->event_id == id && strcmp((*c)->handler, handler) == 0) {
            struct claim *gone = *c;
            *c = gone->next;
            free(gone->handler);
            free(gone);
            sp->n_claims--;
            return;
        }
    }
}

int spool_handlers_json(const struct spool_event *ev, struct wh_buf *b)
{
    b->len = 0;
    b->failed = 0;
    buf_add(b, "[", 1);
    for (int i = 0; i < ev->n_handlers; i++) {
        size_t n = strlen(ev->handlers[i]);
        char *e = wh_xmalloc(JSONESC_MAX(n) + 1);
        size_t m = json_escape(e, ev->handlers[i], n);
        if (i) buf_add(b, ",", 1);
        buf_add(b, "\"", 1);
        buf_add(b, e, m);
        buf_add(b, "\"", 1);
        free(e);
    }
    buf_add(b, "]", 1);
    return b->failed ? -1 : 0;
}

static void due_free(struct spool_due *d)
{
    free(d->handler);
    free(d->type);
    free(d->body);
    free(d->headers);
    free(d);
}

void spool_due_list_free(struct spool_due *d)
{
    while (d) {
        struct spool_due *next = d->next;
        due_free(d);
        d = next;
    }
}

/* With mu held: what this instance holds (queued or running), as a list for renew. */
static struct spool_due *held_list(struct spool *sp)
{
    struct spool_due *head = NULL;

    for (int i = 0; i < CLAIM_BUCKETS; i++) {
        for (struct claim *c = sp->claims[i]; c; c = c->next) {
            struct spool_due *d = wh_xcalloc(1, sizeof *d);
            d->event_id = c->event_id;
            d->token = c->token;
            d->handler = wh_xstrdup(c->handler);
            d->next = head;
            head = d;
        }
    }
    return head;
}

/* With mu held: appends jobs (a list) to the dispatchers' queue and wakes enough of them. */
static void enqueue(struct spool *sp, struct spool_due *jobs, int n)
{
    if (!jobs) return;
    *sp->jobs_tail = jobs;
    while (jobs->next)
        jobs = jobs->next;
    sp->jobs_tail = &jobs->next;
    sp->n_jobs += n;
    /* a dispatcher per DUE_BATCH queued: a wake-up costs more than a fast handler's run */
    for (int i = 0; i < (sp->n_jobs + DUE_BATCH - 1) / DUE_BATCH && i < sp->n_dispatchers; i++)
        pthread_cond_signal(&sp->disp_cv);
}

/* The deliveries of p's event, made before its transaction (ids are filled in after it): its
 * handlers' jobs for the dispatchers. Without room for a copy of the body (its size is the
 * sender's), none: the event is stored as not queued and the poller finds it in the store. */
static void jobs_for(struct put *p)
{
    const struct spool_event *ev = p->sp.ev;
    struct spool_due *head = NULL, **tail = &head;

    for (int i = 0; i < ev->n_handlers; i++) {
        struct spool_due *d = wh_xcalloc(1, sizeof *d);
        d->slot = i < STORE_SLOTS ? i : -1;
        d->handler = wh_xstrdup(ev->handlers[i]);
        d->type = wh_xstrdup(ev->type);
        d->headers = wh_xstrdup(ev->headers_json);
        if (!(d->body = malloc(ev->body_len + 1))) {
            spool_due_list_free(d);
            spool_due_list_free(head);
            p->n_jobs = 0;
            return;
        }
        memcpy(d->body, ev->body, ev->body_len);
        ((char *)d->body)[ev->body_len] = '\0';
        d->body_len = (int)ev->body_len;
        d->received_at = ev->received_at;
        d->body_checked = 1;
        *tail = d;
        tail = &d->next;
        p->n_jobs++;
    }
    p->jobs = head;
    p->sp.queued = 1;
}

/* After the commit: the jobs of the events it stored, as one list (no lock needed). */
static struct spool_due *jobs_stored(struct put *puts, int rc, int *n)
{
    struct spool_due *head = NULL, **tail = &head;

    *n = 0;
    for (struct put *p = puts; p; p = p->next) {
        if (rc != 0 || p->sp.result != SPOOL_STORED) {
            spool_due_list_free(p->jobs);
        } else if (p->jobs) {
            *tail = p->jobs;
            for (struct spool_due *d = p->jobs; d; d = d->next) {
                d->event_id = p->sp.event_id;
                d->token = p->sp.token;
                tail = &d->next;
            }
            *n += p->n_jobs;
        }
        p->jobs = NULL;
    }
    return head;
}

/* --- the writer ---------------------------------------------------------------------------- */

static double backoff_s(const struct result *r)
{
    return backoff_delay_ms(r->rules.initial_backoff_ms, r->rules.max_backoff_ms, r->attempts,
                            (double)random() / RAND_MAX) /
           1000.0;
}

static int result_state(const struct result *r)
{
    return r->ok                                                ? DELIVERY_DONE
           : r->give_up || r->attempts >= r->rules.max_attempts ? DELIVERY_DEAD
                                                                : DELIVERY_PENDING;
}

/* Between transactions, in the writer: retention, lease renewal and housekeeping when due. */
static void between_batches(struct spool *sp)
{
    long long now = wh_mono_ms();

    if (now >= sp->next_purge_ms) {
        struct spool_rules rules;
        int more;
        sp->hooks.rules(sp->hooks.arg, &rules); /* a reload applies to the next step */
        more = sp->ops->purge_step(sp->store, wh_now_s() - (double)rules.keep_delivered_s);
        sp->next_purge_ms = now + (more == 1 ? PURGE_SOON_MS : PURGE_EVERY_MS);
    }
    if (sp->ops->renew && now >= sp->next_renew_ms) {
        struct spool_due *held;
        pthread_mutex_lock(&sp->mu);
        held = held_list(sp);
        pthread_mutex_unlock(&sp->mu);
        if (held && sp->ops->renew(sp->store, held) != 0)
            log_msg(LOG_WARN, "spool lease renewal failed",
                    LOG_S("error", sp->ops->error(sp->store)));
        spool_due_list_free(held);
        /* three renewals per lease: one may fail and the lease still holds */
        sp->next_renew_ms = now + (long long)sp->cfg->lease_s * 1000 / 3;
    }
    if (now >= sp->next_housekeep_ms) {
        sp->ops->housekeep(sp->store);
        sp->next_housekeep_ms = now + SIZE_POLL_MS;
    }
}

static void *writer_main(void *arg)
{
    struct writer *self = arg;
    struct spool *sp = self->sp;
    const int first = self->index == 0; /* results and the between-batches work are its */
    unsigned long batches = 0;
    int was_handoff = 1, failing = 0;
    long long failed_batches = 0;
    struct store_put *puts_arr = NULL;
    struct store_result *res_arr = NULL;
    size_t puts_cap = 0, res_cap = 0;

    pthread_mutex_lock(&sp->mu);
    for (;;) {
        struct put *puts;
        struct result *results;
        struct spool_due *jobs = NULL;
        struct timespec until, t0, t1;
        int rc, handoff, n_jobs = 0, n_puts = 0, n_res = 0, poll_now = 0;
        double retry_delay = 1e300;

        while (!sp->puts && !(first && results_due(sp)) && !sp->stopping) {
            wh_deadline_in(&until, first && sp->results ? RESULTS_MAX_WAIT_MS : SIZE_POLL_MS);
            if (pthread_cond_timedwait(&sp->work_cv, &sp->mu, &until) != 0 && first &&
                !sp->results) {
                pthread_mutex_unlock(&sp->mu);
                between_batches(sp);
                pthread_mutex_lock(&sp->mu);
            }
        }
        if (!sp->puts && (!first || !sp->results) && sp->stopping) break;
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
        sp->puts = NULL;
        sp->puts_tail = &sp->puts;
        results = NULL;
        if (first) {
            results = sp->results;
            sp->results = NULL;
            sp->results_tail = &sp->results;
            sp->n_results = 0;
        }
        handoff = sp->n_jobs < QUEUE_MAX; /* else the poller finds them: memory stays bounded */
        /* the leases results ran under: their fences */
        for (struct result *r = results; r; r = r->next, n_res++) {
            struct claim *c;
            if ((size_t)n_res == res_cap) {
                res_cap = res_cap ? res_cap * 2 : 64;
                res_arr = wh_xrealloc(res_arr, res_cap * sizeof *res_arr);
            }
            c = claimed(sp, r->event_id, r->handler);
            res_arr[n_res] = (struct store_result){.event_id = r->event_id,
                                                   .handler = r->handler,
                                                   .token = c ? c->token : 0,
                                                   .slot = r->slot,
                                                   .state = result_state(r),
                                                   .attempts = r->attempts,
                                                   .error = r->error,
                                                   .at = r->at,
                                                   .duration_ms = r->duration_ms,
                                                   .timeout = r->timeout,
                                                   .log = r->log};
            if (res_arr[n_res].state == DELIVERY_PENDING) {
                res_arr[n_res].delay_s = backoff_s(r);
                if (res_arr[n_res].delay_s < retry_delay) retry_delay = res_arr[n_res].delay_s;
            }
        }
        pthread_mutex_unlock(&sp->mu);
        if (handoff != was_handoff && puts) {
            log_msg(handoff ? LOG_INFO : LOG_WARN,
                    handoff ? "dispatch queue has room again"
                            : "dispatch queue full: new deliveries wait in the spool",
                    LOG_I("queued", QUEUE_MAX));
            was_handoff = handoff;
        }
        for (struct put *p = puts; p; p = p->next, n_puts++) {
            if (handoff) jobs_for(p);
            if ((size_t)n_puts == puts_cap) {
                puts_cap = puts_cap ? puts_cap * 2 : 64;
                puts_arr = wh_xrealloc(puts_arr, puts_cap * sizeof *puts_arr);
            }
            puts_arr[n_puts] = p->sp;
        }

        /* one transaction, one sync, for everything queued meanwhile */
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rc = sp->ops->write(sp->store, self->index, puts_arr, n_puts, res_arr, n_res);
        if (rc != 0) {
            if (sp->ops->fatal && sp->ops->fatal(sp->store)) {
                log_msg(LOG_ERROR, "spool fsync failed: exiting rather than trust the spool",
                        LOG_S("error", sp->ops->error(sp->store)));
                _exit(WH_EXIT_SPOOL_SYNC);
            }
            if (!failing++)
                log_msg(LOG_ERROR, "spool commit failed: answering 503",
                        LOG_S("error", sp->ops->error(sp->store)));
            failed_batches++;
        } else if (failing) {
            log_msg(LOG_INFO, "spool commits again", LOG_I("failed_batches", failed_batches));
            failing = 0;
            failed_batches = 0;
        }
        {
            int i = 0;
            for (struct put *p = puts; p; p = p->next, i++)
                p->sp = puts_arr[i];
        }
        jobs = jobs_stored(puts, rc, &n_jobs); /* before the puts are released */
        clock_gettime(CLOCK_MONOTONIC, &t1);
        metrics_spool_commit((double)(t1.tv_sec - t0.tv_sec) +
                             (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        if (first && (++batches % HOUSEKEEP_BATCHES == 0 || rc != 0))
            sp->next_housekeep_ms = 0; /* writer 0's own: the others never touch its timers */

        pthread_mutex_lock(&sp->mu);
        {
            /* The poller may have read a delivery of this batch between the commit and now
             * and queued it first (an event it sweeps: stored while the queue was full, or
             * beside one that was): then that copy is the one that runs. */
            struct spool_due *keep = NULL, **tail = &keep;
            while (jobs) {
                struct spool_due *d = jobs;
                jobs = d->next;
                d->next = NULL;
                if (claimed(sp, d->event_id, d->handler)) {
                    due_free(d);
                    n_jobs--;
                    continue;
                }
                claim(sp, d->event_id, d->handler, d->token);
                *tail = d;
                tail = &d->next;
            }
            enqueue(sp, keep, n_jobs);
        }
        /* Wake the first request of the batch only: each one woken wakes the next, so the
         * writer can start the next transaction rather than make 16 wake-up calls. */
        for (struct put *p = puts; p; p = p->next)
            if (rc != 0) p->sp.result = SPOOL_ERROR;
        if (puts) put_release(puts);
        if (rc == 0 && retry_delay < 1e300) {
            /* a retry falls due: have the poller look then, not at its next idle round */
            long long at = wh_mono_ms() + (long long)(retry_delay * 1000.0);
            if (at < sp->next_poll_ms) {
                sp->next_poll_ms = at;
                poll_now = 1;
            }
        }
        if (rc != 0 && results && !sp->stopping) {
            /* Not written (a full disk, the database away): they go into a later
             * transaction, a second from now, rather than leave rows pending to run again. */
            struct result *last = results;
            while (last->next)
                last = last->next;
            last->next = sp->results;
            if (!sp->results) sp->results_tail = &last->next;
            sp->results = results;
            for (struct result *r = results; r; r = r->next)
                sp->n_results++;
            sp->results_hold_ms = wh_mono_ms() + RESULTS_RETRY_MS;
            results = NULL;
            /* at most once a RESULTS_RETRY_MS: they wait that long before the next try */
            log_msg(LOG_WARN, "delivery results not written: kept for a later transaction",
                    LOG_I("results", n_res), LOG_S("error", sp->ops->error(sp->store)));
        }
        for (int i = 0; results; i++) {
            struct result *r = results;
            results = r->next;
            if (rc == 0 && res_arr[i].fenced)
                log_msg(LOG_WARN,
                        "delivery result not written: its lease passed to another instance",
                        LOG_I("event_id", r->event_id), LOG_S("handler", r->handler));
            else if (rc == 0) {
                metrics_delivery(r->handler, res_arr[i].state == DELIVERY_DONE   ? 0
                                             : res_arr[i].state == DELIVERY_DEAD ? 2
                                                                                 : 1);
                activity_notice(ACTIVITY_OUTCOME, r->event_id); /* the console's stream */
            }
            unclaim(sp, r->event_id, r->handler); /* committed (or left pending): free to run */
            free(r->handler);
            free(r->error);
            free(r->log);
            free(r);
        }
        if (poll_now) pthread_cond_signal(&sp->disp_cv);
        pthread_mutex_unlock(&sp->mu);
        if (first) between_batches(sp); /* after the batch's requests are answered */
        pthread_mutex_lock(&sp->mu);
    }
    pthread_mutex_unlock(&sp->mu);
    free(puts_arr);
    free(res_arr);
    return NULL;
}

enum spool_result spool_put(struct spool *sp, const struct spool_event *ev, long long *id)
{
    struct put p = {.sp = {.ev = ev}};

    if (sp->ops->used_bytes(sp->store) > ev->max_bytes) return SPOOL_FULL;
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
    if (p.sp.result == SPOOL_DUPLICATE) metrics_duplicate();
    if (id) *id = p.sp.result == SPOOL_STORED ? p.sp.event_id : 0;
    return p.sp.result;
}

/* --- dispatchers ------------------------------------------------------------------------------ */

static void deliver(struct spool *sp, struct spool_due *d)
{
    struct result *r = wh_xcalloc(1, sizeof *r);
    struct spool_delivery del = {.event_id = d->event_id,
                                 .handler = d->handler,
                                 .type = d->type,
                                 .headers_json = d->headers,
                                 .body = d->body,
                                 .body_len = (size_t)d->body_len,
                                 .body_checked = d->body_checked,
                                 .received_at = d->received_at,
                                 .attempt = d->attempts + 1};
    char err[4096] = "";
    long long generation = 0;
    struct spool_attempt att = {.at = wh_now_s()};

    r->event_id = d->event_id;
    r->slot = d->slot;
    r->handler = wh_xstrdup(d->handler);
    r->attempts = d->attempts + 1;
    r->ok = sp->hooks.deliver(sp->hooks.arg, &del, &r->rules, &generation, &r->give_up, &att, err,
                              sizeof err) == 0;
    r->at = att.at;
    r->duration_ms = att.duration_ms;
    r->timeout = att.timeout;
    if (att.log.len) /* no last newline; out of memory: kept without its lines */
        r->log = strndup(att.log.text, att.log.len - 1);
    log_msg(r->ok ? LOG_INFO : LOG_WARN, "delivery", LOG_I("event_id", d->event_id),
            LOG_S("handler", d->handler), LOG_S("event", d->type), LOG_I("attempt", r->attempts),
            LOG_S("result", r->ok                              ? "ok"
                            : result_state(r) == DELIVERY_DEAD ? "dead"
                                                               : "retry"),
            LOG_S("error", r->ok ? "" : err), LOG_I("generation", generation));
    if (!r->ok) r->error = wh_xstrdup(err);
    pthread_mutex_lock(&sp->mu);
    if (!sp->results) {
        /* writer 0 may be asleep for SIZE_POLL_MS: it writes this within RESULTS_MAX_WAIT_MS
         * (an outcome on the console's stream soon after it happened) */
        sp->first_result_ms = wh_mono_ms();
        pthread_cond_broadcast(&sp->work_cv);
    }
    *sp->results_tail = r;
    sp->results_tail = &r->next;
    if (++sp->n_results >= RESULTS_BATCH)
        pthread_cond_broadcast(&sp->work_cv); /* writer 0 among them */
    pthread_mutex_unlock(&sp->mu);
}

/* Reads the next due rows from the store, claims those this instance is not already running,
 * and queues them. Runs in one dispatcher at a time (sp->polling), without the lock. */
static void poll_once(struct spool *sp)
{
    struct spool_due *rows = NULL, *keep = NULL, **ktail = &keep;
    int nrows = sp->ops->poll(sp->store, POLL_BATCH, &rows), n = 0;

    pthread_mutex_lock(&sp->mu);
    for (struct spool_due *d = rows, **link = &rows; d; d = *link) {
        struct claim *c = claimed(sp, d->event_id, d->handler);
        if (c) {
            /* Running here already, its lease lapsed and taken again by this instance: the
             * run in progress writes its result under the new lease. */
            c->token = d->token;
            *link = d->next;
            due_free(d);
        } else {
            claim(sp, d->event_id, d->handler, d->token);
            link = &d->next;
        }
    }
    pthread_mutex_unlock(&sp->mu);
    while (rows) {
        struct spool_due *d = rows;
        rows = d->next;
        d->next = NULL;
        if (sp->ops->still_due(sp->store, d)) {
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
    if (nrows < POLL_BATCH && sp->next_poll_ms <= wh_mono_ms()) /* the sweep is over */
        sp->next_poll_ms = wh_mono_ms() + sp->ops->idle_poll_ms;
    sp->polling = 0;
    pthread_mutex_unlock(&sp->mu);
}

static void *dispatcher_main(void *arg)
{
    struct dispatcher *self = arg;
    struct spool *sp = self->sp;

    pthread_mutex_lock(&sp->mu);
    while (!sp->stopping) {
        struct timespec until;
        long long wait_ms;

        if (sp->jobs) {
            /* One at a time: a slow handler holds up no job but its own. What is still queued
             * goes to the other dispatchers awake, or to the next idle one to wake. */
            struct spool_due *d = sp->jobs;
            sp->jobs = d->next;
            if (!sp->jobs) sp->jobs_tail = &sp->jobs;
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
            poll_once(sp); /* clears sp->polling */
            pthread_mutex_lock(&sp->mu);
            continue;
        }
        wh_deadline_in(&until, wait_ms > 0 ? wait_ms : sp->ops->idle_poll_ms);
        pthread_cond_timedwait(&sp->disp_cv, &sp->mu, &until);
    }
    self->exited = 1;
    pthread_cond_broadcast(&sp->done_cv);
    pthread_mutex_unlock(&sp->mu);
    return NULL;
}

/* The store's listener: another instance made something due. */
static void wake(void *arg, long long delay_ms)
{
    struct spool *sp = arg;
    long long at = wh_mono_ms() + (delay_ms > 0 ? delay_ms : 0);

    pthread_mutex_lock(&sp->mu);
    if (at < sp->next_poll_ms) {
        sp->next_poll_ms = at;
        pthread_cond_signal(&sp->disp_cv);
    }
    pthread_mutex_unlock(&sp->mu);
}

/* --- open and close -----------------------------------------------------------------------------
 */

int spool_check(const struct wh_config *cfg, char *err, size_t err_len)
{
    return spool_is_pg(cfg->spool) ? store_pg_check(cfg, err, err_len)
                                   : store_sqlite_check(cfg, err, err_len);
}

int spool_open(const struct wh_config *cfg, const struct spool_hooks *hooks, struct spool **out,
               char *err, size_t err_len)
{
    struct spool *sp = wh_xcalloc(1, sizeof *sp);
    struct store_hooks sh = {.arg = sp, .wake = wake};
    char shown[1024];

    sp->cfg = cfg;
    sp->ops = store_for(cfg->spool);
    sp->hooks = *hooks;
    sp->puts_tail = &sp->puts;
    sp->results_tail = &sp->results;
    sp->jobs_tail = &sp->jobs;
    pthread_mutex_init(&sp->mu, NULL);
    wh_cond_init(&sp->work_cv);
    wh_cond_init(&sp->disp_cv);
    wh_cond_init(&sp->gather_cv);
    wh_cond_init(&sp->done_cv);
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    if (sp->ops->open(cfg, &sh, &sp->store, err, err_len)) {
        pthread_mutex_destroy(&sp->mu);
        pthread_cond_destroy(&sp->work_cv);
        pthread_cond_destroy(&sp->disp_cv);
        pthread_cond_destroy(&sp->gather_cv);
        free(sp);
        return -1;
    }
    sp->next_renew_ms = wh_mono_ms() + (long long)cfg->lease_s * 1000 / 3;
    sp->n_writers = sp->ops->writers;
    sp->n_dispatchers = cfg->delivery_workers;
    sp->writers = wh_xcalloc((size_t)sp->n_writers, sizeof *sp->writers);
    sp->dispatchers = wh_xcalloc((size_t)sp->n_dispatchers, sizeof *sp->dispatchers);
    for (int i = 0; i < sp->n_writers; i++) {
        sp->writers[i].sp = sp;
        sp->writers[i].index = i;
        if (pthread_create(&sp->writers[i].thread, NULL, writer_main, &sp->writers[i]) != 0) {
            pthread_mutex_lock(&sp->mu);
            sp->n_writers = i;
            sp->n_dispatchers = 0;
            pthread_mutex_unlock(&sp->mu);
            goto no_thread;
        }
        pthread_setname_np(sp->writers[i].thread, "spool-writer"); /* for top -H and perf */
    }
    for (int i = 0; i < sp->n_dispatchers; i++) {
        sp->dispatchers[i].sp = sp;
        if (pthread_create(&sp->dispatchers[i].thread, NULL, dispatcher_main,
                           &sp->dispatchers[i]) != 0) {
            pthread_mutex_lock(&sp->mu);
            sp->n_dispatchers = i;
            pthread_mutex_unlock(&sp->mu);
            goto no_thread;
        }
        pthread_setname_np(sp->dispatchers[i].thread, "spool-dispatch");
    }
    spool_shown(cfg->spool, shown, sizeof shown);
    log_msg(LOG_INFO, "spool open", LOG_S("path", shown), LOG_S("backend", sp->ops->kind),
            LOG_I("workers", sp->n_dispatchers),
            LOG_I("used_bytes", sp->ops->used_bytes(sp->store)));
    *out = sp;
    return 0;
no_thread:
    snprintf(err, err_len, "delivery.spool: cannot start the spool's threads");
    spool_close(sp, NULL); /* the ones that started stop, the store closes */
    return -1;
}

int spool_close(struct spool *sp, const struct timespec *deadline)
{
    int running = 0;

    if (!sp) return 0;
    pthread_mutex_lock(&sp->mu);
    __atomic_store_n(&sp->stopping, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&sp->work_cv);
    pthread_cond_broadcast(&sp->disp_cv);
    pthread_mutex_unlock(&sp->mu);
    /* The deadline is waited for on a condition variable (monotonic), not with a timed join:
     * glibc's joins take wall-clock or raw clock deadlines that nothing else here uses. */
    pthread_mutex_lock(&sp->mu);
    for (;;) {
        int all = 1;
        for (int i = 0; i < sp->n_dispatchers; i++)
            all &= sp->dispatchers[i].exited;
        if (all || !deadline || pthread_cond_timedwait(&sp->done_cv, &sp->mu, deadline) != 0) break;
    }
    for (int i = 0; i < sp->n_dispatchers; i++) {
        struct dispatcher *d = &sp->dispatchers[i];
        /* it takes no new job once stopping is set: one still in a handler past the
         * deadline is left alone; any other is on its way out */
        if (deadline && !d->exited && d->delivering) {
            running++;
            continue;
        }
        pthread_mutex_unlock(&sp->mu);
        pthread_join(d->thread, NULL);
        pthread_mutex_lock(&sp->mu);
    }
    pthread_mutex_unlock(&sp->mu);
    for (int i = 0; i < sp->n_writers; i++) /* after the dispatchers: their last results */
        pthread_join(sp->writers[i].thread, NULL);
    /* queued, never run: given back, due now for any instance (the writer is gone: the store
     * is this thread's now) */
    pthread_mutex_lock(&sp->mu);
    if (sp->jobs && sp->ops->release) sp->ops->release(sp->store, sp->jobs);
    pthread_mutex_unlock(&sp->mu);
    if (running) {
        /* Handlers still running: nothing more is written, and nothing is torn down under
         * them. Their deliveries stay pending in the spool and run again after a restart
         * (or, shared, once their lease expires). */
        log_msg(LOG_WARN,
                "deliveries still running at the stop deadline: left pending in the spool",
                LOG_I("running", running));
        return -1;
    }
    sp->ops->close(sp->store);
    for (int i = 0; i < CLAIM_BUCKETS; i++) {
        while (sp->claims[i]) {
            struct claim *c = sp->claims[i];
            sp->claims[i] = c->next;
            free(c->handler);
            free(c);
        }
    }
    spool_due_list_free(sp->jobs);
    free(sp->dispatchers);
    free(sp->writers);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->work_cv);
    pthread_cond_destroy(&sp->disp_cv);
    pthread_cond_destroy(&sp->gather_cv);
    pthread_cond_destroy(&sp->done_cv);
    free(sp);
    return 0;
}
