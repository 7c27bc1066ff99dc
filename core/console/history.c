#define _GNU_SOURCE
#include "history.h"

#include "json_out.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct h_attempt {
    char *handler, *error, *log;
    double at, duration_ms;
    int outcome; /* ATTEMPT_* */
};

struct h_handler {
    char *name, *error;
    int state, attempts, timeout;
    double duration_ms;
};

struct entry {
    long long id;
    char *type, *headers, *body;
    size_t body_len, bytes;
    int body_cut, done;
    double received_at;
    struct h_handler *h;
    int n_h;
    struct h_attempt *att;
    int n_att;
};

static struct {
    pthread_mutex_t mu;
    struct entry **ring; /* slot (id - 1) % cap */
    int cap;
    long long body_bytes, next_id, bytes;
} hist = {.mu = PTHREAD_MUTEX_INITIALIZER, .next_id = 1};

static void entry_free(struct entry *e)
{
    if (!e) return;
    for (int i = 0; i < e->n_h; i++) {
        free(e->h[i].name);
        free(e->h[i].error);
    }
    for (int i = 0; i < e->n_att; i++) {
        free(e->att[i].handler);
        free(e->att[i].error);
        free(e->att[i].log);
    }
    free(e->h);
    free(e->att);
    free(e->type);
    free(e->headers);
    free(e->body);
    free(e);
}

void history_configure(int events, long long body_bytes)
{
    pthread_mutex_lock(&hist.mu);
    hist.body_bytes = body_bytes;
    if (events != hist.cap) {
        for (int i = 0; i < hist.cap; i++)
            entry_free(hist.ring[i]);
        free(hist.ring);
        hist.ring = events ? wh_xcalloc((size_t)events, sizeof *hist.ring) : NULL;
        hist.cap = events;
        hist.bytes = 0;
    }
    metrics_history_bytes(hist.cap ? hist.bytes : -1);
    pthread_mutex_unlock(&hist.mu);
}

/* The entry with this id, if still kept (with hist.mu). */
static struct entry *find(long long id)
{
    struct entry *e;

    if (id <= 0 || !hist.cap) return NULL;
    e = hist.ring[(id - 1) % hist.cap];
    return e && e->id == id ? e : NULL;
}

/* The request's headers as a JSON object: lower-case names, the first of repeated ones, the
 * signature's value "redacted". */
static char *headers_of(const struct wh_event *ev, const char *signature)
{
    struct wh_buf b = {0};

    buf_str(&b, "{");
    for (int i = 0; i < ev->n_headers; i++) {
        const char *name = ev->headers[i].name;
        char lower[128];
        size_t n = strlen(name);
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= strcasecmp(ev->headers[j].name, name) == 0;
        if (dup || n >= sizeof lower) continue;
        for (size_t k = 0; k <= n; k++)
            lower[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
        if (b.len > 1) buf_str(&b, ",");
        json_out_str(&b, lower, n);
        buf_str(&b, ":");
        if (strcasecmp(name, signature) == 0)
            buf_str(&b, "\"redacted\"");
        else
            json_out_str(&b, ev->headers[i].value, strlen(ev->headers[i].value));
    }
    buf_str(&b, "}");
    if (b.failed) {
        buf_free(&b);
        return NULL;
    }
    return b.p;
}

long long history_begin(const struct generation *g, const struct wh_event *ev)
{
    const struct bound_handler *plan[256];
    struct entry *e;
    size_t keep;
    long long id;
    int n;

    if (!__atomic_load_n(&hist.cap, __ATOMIC_RELAXED)) return 0;
    if (!(e = calloc(1, sizeof *e))) return 0;
    keep = ev->body_len;
    if ((long long)keep > hist.body_bytes) {
        keep = (size_t)hist.body_bytes;
        e->body_cut = 1;
    }
    e->type = strdup(ev->type);
    e->body = malloc(keep + 1);
    e->headers = headers_of(ev, g->cfg->signature_header);
    n = (int)dispatch_handlers(g, ev->type, plan, 256);
    e->h = calloc((size_t)n + 1, sizeof *e->h);
    if (!e->type || !e->body || !e->headers || !e->h) {
        entry_free(e);
        return 0; /* not kept: the request goes on */
    }
    memcpy(e->body, ev->body, keep);
    e->body[keep] = '\0';
    e->body_len = keep;
    e->received_at = ev->received_at;
    for (int i = 0; i < n; i++) {
        e->h[e->n_h].name = strdup(plan[i]->name);
        e->h[e->n_h].state = EV_PENDING;
        e->h[e->n_h].duration_ms = -1;
        if (e->h[e->n_h].name) e->n_h++;
    }
    e->bytes = sizeof *e + keep + strlen(e->headers) + strlen(e->type) + (size_t)n * 64;
    pthread_mutex_lock(&hist.mu);
    if (!hist.cap) {
        pthread_mutex_unlock(&hist.mu);
        entry_free(e);
        return 0;
    }
    id = e->id = hist.next_id++;
    {
        struct entry **slot = &hist.ring[(id - 1) % hist.cap];
        if (*slot) hist.bytes -= (long long)(*slot)->bytes;
        entry_free(*slot);
        *slot = e;
    }
    hist.bytes += (long long)e->bytes;
    metrics_history_bytes(hist.bytes);
    pthread_mutex_unlock(&hist.mu);
    activity_notice(ACTIVITY_RECEIVED, id);
    return id;
}

void history_attempt(void *arg, const struct bound_handler *b, const struct dispatch_attempt *a,
                     const char *error)
{
    long long id = *(long long *)arg;
    struct h_attempt at = {.at = a->at,
                           .duration_ms = a->duration_ms,
                           .outcome = a->outcome == WH_OUTCOME_OK        ? ATTEMPT_OK
                                      : a->outcome == WH_OUTCOME_TIMEOUT ? ATTEMPT_TIMEOUT
                                                                         : ATTEMPT_FAILED};
    struct entry *e;
    size_t added;

    if (!id) return;
    at.handler = strdup(b->name);
    at.error = strdup(error);
    at.log = strndup(a->log.text, a->log.len ? a->log.len - 1 : 0);
    if (!at.handler || !at.error || !at.log) goto drop;
    added = sizeof at + strlen(at.handler) + strlen(at.error) + strlen(at.log) + 3;
    pthread_mutex_lock(&hist.mu);
    if ((e = find(id)) != NULL) {
        struct h_attempt *grown = realloc(e->att, (size_t)(e->n_att + 1) * sizeof *grown);
        if (grown) {
            e->att = grown;
            e->att[e->n_att++] = at;
            e->bytes += added;
            hist.bytes += (long long)added;
            metrics_history_bytes(hist.bytes);
            for (int i = 0; i < e->n_h; i++) {
                struct h_handler *h = &e->h[i];
                if (strcmp(h->name, b->name)) continue;
                h->attempts++;
                h->state = at.outcome == ATTEMPT_OK ? EV_OK : EV_FAILED;
                h->timeout = at.outcome == ATTEMPT_TIMEOUT;
                h->duration_ms = at.duration_ms;
                free(h->error);
                h->error = strdup(error);
                break;
            }
            pthread_mutex_unlock(&hist.mu);
            return;
        }
    }
    pthread_mutex_unlock(&hist.mu);
drop:
    free(at.handler);
    free(at.error);
    free(at.log);
}

void history_end(long long id)
{
    if (!id) return;
    pthread_mutex_lock(&hist.mu);
    {
        struct entry *e = find(id);
        if (e) e->done = 1;
    }
    pthread_mutex_unlock(&hist.mu);
    activity_notice(ACTIVITY_OUTCOME, id);
}

/* The event's state: its worst handler's, unrouted when none. */
static int state_of(const struct entry *e)
{
    int st = EV_OK;

    if (!e->n_h) return EV_UNROUTED;
    for (int i = 0; i < e->n_h; i++)
        if (e->h[i].state > st) st = e->h[i].state;
    return st;
}

/* E (console.h), with hist.mu held. */
static void entry_json(const struct entry *e, int detail, struct wh_buf *b)
{
    struct store_outcome h[256];
    struct store_event se = {.id = e->id,
                             .type = e->type,
                             .received_at = e->received_at,
                             .state = state_of(e),
                             .handlers = h,
                             .n_handlers = e->n_h < 256 ? e->n_h : 256};

    for (int i = 0; i < se.n_handlers; i++)
        h[i] = (struct store_outcome){.handler = e->h[i].name,
                                      .error = e->h[i].error ? e->h[i].error : "",
                                      .state = e->h[i].state,
                                      .attempts = e->h[i].attempts,
                                      .timeout = e->h[i].timeout,
                                      .duration_ms = e->h[i].duration_ms};
    json_out_event(b, &se, detail);
    if (!detail) {
        buf_str(b, "}");
        return;
    }
    buf_printf(b, ",\"headers\":%s,\"body_cut\":%s,\"kept\":\"memory\",\"payload\":", e->headers,
               e->body_cut ? "true" : "false");
    json_out_payload(b, e->body, e->body_len, e->body_cut);
    buf_str(b, ",\"attempts\":[");
    for (int i = 0; i < e->n_att; i++) {
        const struct h_attempt *a = &e->att[i];
        struct store_attempt sa = {.handler = a->handler,
                                   .error = a->error,
                                   .log = a->log,
                                   .at = a->at,
                                   .duration_ms = a->duration_ms,
                                   .outcome = a->outcome};
        int nth = 1;
        for (int j = 0; j < i; j++)
            nth += strcmp(e->att[j].handler, a->handler) == 0;
        if (i) buf_str(b, ",");
        json_out_attempt(b, &sa, nth);
    }
    buf_str(b, "]}");
}

static int matches(const struct entry *e, const struct store_query *q)
{
    if (q->type && strcmp(e->type, q->type)) return 0;
    if (q->state >= 0 && state_of(e) != q->state) return 0;
    if (q->q) {
        char *end;
        long long id = strtoll(q->q, &end, 10);
        if (!(*q->q && !*end && id == e->id) && !memmem(e->body, e->body_len, q->q, strlen(q->q)))
            return 0;
    }
    return 1;
}

void history_events_json(const struct store_query *q, const char *signature_header,
                         struct wh_buf *out)
{
    int n = 0;
    long long last = 0, more = 0;

    (void)signature_header;
    buf_str(out, "{\"events\":[");
    pthread_mutex_lock(&hist.mu);
    for (long long id = (q->before > 0 && q->before < hist.next_id ? q->before : hist.next_id) - 1;
         hist.cap && id > 0 && id > hist.next_id - 1 - hist.cap; id--) {
        const struct entry *e = find(id);
        if (!e || !matches(e, q)) continue;
        if (n == q->limit) {
            more = 1;
            break;
        }
        if (n++) buf_str(out, ",");
        entry_json(e, 0, out);
        last = id;
    }
    pthread_mutex_unlock(&hist.mu);
    if (more)
        buf_printf(out, "],\"next\":\"%lld\"}", last);
    else
        buf_str(out, "],\"next\":null}");
}

int history_event_json(long long id, int detail, struct wh_buf *out)
{
    const struct entry *e;
    int found = 0;

    pthread_mutex_lock(&hist.mu);
    if ((e = find(id)) != NULL) {
        entry_json(e, detail, out);
        found = 1;
    }
    pthread_mutex_unlock(&hist.mu);
    return found;
}

int history_copy(long long id, struct history_copy *c)
{
    const struct entry *e;
    int rc = 0;

    memset(c, 0, sizeof *c);
    pthread_mutex_lock(&hist.mu);
    if ((e = find(id)) != NULL && e->body_cut) {
        rc = -1;
    } else if (e) {
        c->type = wh_xstrdup(e->type);
        c->body = wh_xmalloc(e->body_len + 1);
        memcpy(c->body, e->body, e->body_len + 1);
        c->body_len = e->body_len;
        c->received_at = e->received_at;
        c->handlers = wh_xcalloc((size_t)e->n_h + 1, sizeof *c->handlers);
        for (int i = 0; i < e->n_h; i++)
            c->handlers[c->n_handlers++] = wh_xstrdup(e->h[i].name);
        rc = 1;
    }
    pthread_mutex_unlock(&hist.mu);
    return rc;
}

void history_copy_free(struct history_copy *c)
{
    for (int i = 0; i < c->n_handlers; i++)
        free(c->handlers[i]);
    free(c->handlers);
    free(c->type);
    free(c->body);
}
