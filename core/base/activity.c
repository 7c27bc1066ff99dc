#include "activity.h"

#include "clock.h"
#include "json_escape.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- notices ------------------------------------------------------------------------------- */

#define NOTICES 4096 /* a reader further behind than this is dropped */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long long seq; /* notices published so far */
    struct {
        enum activity_kind kind;
        long long id;
    } ring[NOTICES];
    int readers;
} feed = {.mu = PTHREAD_MUTEX_INITIALIZER};
static pthread_once_t feed_once = PTHREAD_ONCE_INIT;

static void feed_init(void)
{
    wh_cond_init(&feed.cv); /* monotonic waits */
}

void activity_notice(enum activity_kind kind, long long id)
{
    if (__atomic_load_n(&feed.readers, __ATOMIC_RELAXED) == 0) return;
    pthread_mutex_lock(&feed.mu);
    feed.ring[feed.seq % NOTICES].kind = kind;
    feed.ring[feed.seq % NOTICES].id = id;
    feed.seq++;
    pthread_cond_broadcast(&feed.cv);
    pthread_mutex_unlock(&feed.mu);
}

int activity_reader_join(unsigned long long *seq)
{
    int rc = -1;

    pthread_once(&feed_once, feed_init);
    pthread_mutex_lock(&feed.mu);
    if (feed.readers < ACTIVITY_READERS_MAX) {
        __atomic_add_fetch(&feed.readers, 1, __ATOMIC_RELAXED);
        *seq = feed.seq;
        rc = 0;
    }
    pthread_mutex_unlock(&feed.mu);
    return rc;
}

void activity_reader_leave(void)
{
    pthread_mutex_lock(&feed.mu);
    __atomic_sub_fetch(&feed.readers, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&feed.mu);
}

int activity_next(unsigned long long *seq, int timeout_ms, enum activity_kind *kind, long long *id)
{
    struct timespec until;
    int rc = 0;

    wh_deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&feed.mu);
    while (*seq == feed.seq)
        if (pthread_cond_timedwait(&feed.cv, &feed.mu, &until) != 0) break;
    if (feed.seq - *seq > NOTICES) {
        rc = -1;
    } else if (*seq < feed.seq) {
        *kind = feed.ring[*seq % NOTICES].kind;
        *id = feed.ring[*seq % NOTICES].id;
        ++*seq;
        rc = 1;
    }
    pthread_mutex_unlock(&feed.mu);
    return rc;
}

/* --- counts -------------------------------------------------------------------------------- */

#define BUCKETS (ACTIVITY_WINDOW_MAX_S / ACTIVITY_BUCKET_S)
#define HIST 48      /* duration classes: up to 10 us x 1.4^i */
#define ROWS_MAX 256 /* names a bucket counts apart; more go to "other" */
enum { C_OK, C_FAILED, C_TIMEOUT, C_UNROUTED, C_ACCEPTED, C_N };

struct row {
    char name[72];
    int handler; /* else an event type */
    long long n[C_N];
    unsigned hist[HIST];
};

struct bucket {
    long long index; /* wall time / ACTIVITY_BUCKET_S */
    long long events, failures;
    struct row *rows;
    int n_rows, cap;
};

static struct {
    pthread_mutex_t mu;
    struct bucket b[BUCKETS];
} counts = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int hist_class(double ms)
{
    double bound = 0.01;
    int i = 0;

    while (i < HIST - 1 && ms > bound) {
        bound *= 1.4;
        i++;
    }
    return i;
}

static double hist_bound(int i)
{
    double bound = 0.01;

    while (i-- > 0)
        bound *= 1.4;
    return bound;
}

/* The current bucket (with counts.mu), emptied when it held an older one. */
static struct bucket *current(void)
{
    long long index = (long long)wh_now_s() / ACTIVITY_BUCKET_S;
    struct bucket *b = &counts.b[index % BUCKETS];

    if (b->index != index) {
        b->index = index;
        b->events = b->failures = 0;
        b->n_rows = 0;
    }
    return b;
}

static struct row *row_of(struct bucket *b, const char *name, int handler)
{
    struct row *r;

    for (int i = 0; i < b->n_rows; i++)
        if (b->rows[i].handler == handler && strcmp(b->rows[i].name, name) == 0) return &b->rows[i];
    if (b->n_rows == ROWS_MAX) { /* the rest count together */
        for (int i = 0; i < b->n_rows; i++)
            if (b->rows[i].handler == handler && strcmp(b->rows[i].name, "other") == 0)
                return &b->rows[i];
        name = "other";
    }
    if (b->n_rows == b->cap) {
        int cap = b->cap ? b->cap * 2 : 8;
        if (cap > ROWS_MAX + 2) cap = ROWS_MAX + 2; /* room for the two "other" rows */
        struct row *grown;
        if (cap <= b->cap || !(grown = realloc(b->rows, (size_t)cap * sizeof *grown)))
            return NULL; /* not counted: the chart is not worth failing a request for */
        b->rows = grown;
        b->cap = cap;
    }
    r = &b->rows[b->n_rows++];
    memset(r, 0, sizeof *r);
    strncpy(r->name, name, sizeof r->name - 1);
    r->handler = handler;
    return r;
}

void activity_event(const char *type, enum activity_event what, double duration_ms)
{
    static const int column[] = {C_ACCEPTED, C_OK, C_FAILED, C_UNROUTED};
    struct bucket *b;
    struct row *r;

    pthread_mutex_lock(&counts.mu);
    b = current();
    b->events++; /* its failures count by attempt (activity_attempt) */
    if ((r = row_of(b, type, 0)) != NULL) {
        r->n[column[what]]++;
        if (duration_ms >= 0) r->hist[hist_class(duration_ms)]++;
    }
    pthread_mutex_unlock(&counts.mu);
}

void activity_attempt(const char *handler, enum wh_outcome outcome, double duration_ms)
{
    struct bucket *b;
    struct row *r;

    pthread_mutex_lock(&counts.mu);
    b = current();
    if (outcome != WH_OUTCOME_OK) b->failures++; /* failed attempts, in both modes */
    if ((r = row_of(b, handler, 1)) != NULL) {
        r->n[outcome == WH_OUTCOME_OK        ? C_OK
             : outcome == WH_OUTCOME_TIMEOUT ? C_TIMEOUT
                                             : C_FAILED]++;
        r->hist[hist_class(duration_ms)]++;
    }
    pthread_mutex_unlock(&counts.mu);
}

static double percentile(const unsigned *hist, double p)
{
    unsigned long long total = 0, seen = 0;

    for (int i = 0; i < HIST; i++)
        total += hist[i];
    if (!total) return -1;
    for (int i = 0; i < HIST; i++) {
        seen += hist[i];
        /* the class's geometric middle: within 20% of any duration in it */
        if ((double)seen >= p * (double)total) return i ? hist_bound(i) / 1.1832 : hist_bound(0);
    }
    return hist_bound(HIST - 1);
}

static void json_name(struct wh_buf *b, const char *s)
{
    char esc[JSONESC_MAX(sizeof((struct row *)0)->name)];

    buf_add(b, "\"", 1);
    buf_add(b, esc, json_escape(esc, s, strlen(s)));
    buf_add(b, "\"", 1);
}

static void json_ms(struct wh_buf *b, const char *key, double ms)
{
    if (ms < 0)
        buf_printf(b, ",\"%s\":null", key);
    else
        buf_printf(b, ",\"%s\":%.3f", key, ms); /* always a real, never an integer */
}

void activity_stats_json(long long window_s, struct wh_buf *b)
{
    long long now = (long long)wh_now_s() / ACTIVITY_BUCKET_S, n;
    struct row *sum = NULL;
    int n_sum = 0;

    if (window_s < ACTIVITY_BUCKET_S) window_s = ACTIVITY_BUCKET_S;
    if (window_s > ACTIVITY_WINDOW_MAX_S) window_s = ACTIVITY_WINDOW_MAX_S;
    n = (window_s + ACTIVITY_BUCKET_S - 1) / ACTIVITY_BUCKET_S;
    buf_printf(b, "{\"window_s\":%lld,\"bucket_s\":%d,\"buckets\":[", window_s, ACTIVITY_BUCKET_S);
    sum = malloc((ROWS_MAX + 2) * 2 * sizeof *sum);
    for (long long index = now - n + 1; index <= now; index++) {
        const struct bucket *k = &counts.b[index % BUCKETS];
        int live;
        /* a bucket at a time: requests counting meanwhile wait for one bucket's sums at most */
        pthread_mutex_lock(&counts.mu);
        live = k->index == index;
        buf_printf(b, "%s{\"t\":%lld,\"events\":%lld,\"failures\":%lld}",
                   index > now - n + 1 ? "," : "", index * ACTIVITY_BUCKET_S, live ? k->events : 0,
                   live ? k->failures : 0);
        for (int i = 0; live && sum && i < k->n_rows; i++) { /* sums per name over the window */
            const struct row *r = &k->rows[i];
            int j = 0;
            while (j < n_sum && (sum[j].handler != r->handler || strcmp(sum[j].name, r->name)))
                j++;
            if (j == n_sum) {
                if (n_sum == (ROWS_MAX + 2) * 2) continue;
                memcpy(&sum[n_sum++], r, sizeof *r);
                continue;
            }
            for (int c = 0; c < C_N; c++)
                sum[j].n[c] += r->n[c];
            for (int h = 0; h < HIST; h++)
                sum[j].hist[h] += r->hist[h];
        }
        pthread_mutex_unlock(&counts.mu);
    }
    for (int kind = 0; kind < 2; kind++) {
        int first = 1;
        buf_str(b, kind ? "],\"handlers\":[" : "],\"types\":[");
        for (int j = 0; j < n_sum; j++) {
            const struct row *r = &sum[j];
            if (r->handler != kind) continue;
            buf_str(b, first ? "{" : ",{");
            first = 0;
            buf_str(b, kind ? "\"handler\":" : "\"type\":");
            json_name(b, r->name);
            if (kind)
                buf_printf(b, ",\"ok\":%lld,\"failed\":%lld,\"timeout\":%lld", r->n[C_OK],
                           r->n[C_FAILED], r->n[C_TIMEOUT]);
            else if (r->n[C_ACCEPTED]) /* durable mode: outcomes are the handlers' (below) */
                buf_printf(b, ",\"received\":%lld,\"unrouted\":%lld",
                           r->n[C_ACCEPTED] + r->n[C_UNROUTED], r->n[C_UNROUTED]);
            else
                buf_printf(b, ",\"received\":%lld,\"ok\":%lld,\"failed\":%lld,\"unrouted\":%lld",
                           r->n[C_OK] + r->n[C_FAILED] + r->n[C_UNROUTED], r->n[C_OK],
                           r->n[C_FAILED], r->n[C_UNROUTED]);
            if (kind || !r->n[C_ACCEPTED]) {
                json_ms(b, "p50_ms", percentile(r->hist, 0.5));
                json_ms(b, "p99_ms", percentile(r->hist, 0.99));
            }
            buf_str(b, "}");
        }
    }
    buf_str(b, "]}");
    free(sum);
}
