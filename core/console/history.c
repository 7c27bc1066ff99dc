#define _GNU_SOURCE
#include "history.h"

#include "json_out.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An attempt: its error and its lines in one allocation ("error\0log\0"), none when both are
 * empty (a quiet success: nothing allocated). */
struct h_attempt {
    const char *handler; /* the entry's own copy of the name */
    char *text;
    double at, duration_ms;
    int outcome; /* ATTEMPT_* */
};

struct h_handler {
    const char *name; /* in the entry's block */
    char *error;      /* NULL: none */
    int state, attempts, timeout;
    double duration_ms;
};

#define INLINE_ATTEMPTS 4
/* Attempts kept per event: past it (replays, again and again), the oldest goes. */
#define MAX_ATTEMPTS 32

/* One event, in one block: this struct, its handlers, then its type, headers ("name\0value\0"
 * each, the signature's value already "redacted") and body (NUL-terminated). */
struct entry {
    long long id;
    const char *type, *headers, *body;
    size_t body_len, bytes;
    int n_headers, body_cut;
    double received_at;
    unsigned long long seq;
    struct h_handler *h;
    int n_h;
    struct h_attempt *att; /* inline, or allocated past INLINE_ATTEMPTS */
    int n_att, cap_att;
    struct h_attempt inline_att[INLINE_ATTEMPTS];
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
    for (int i = 0; i < e->n_h; i++)
        free(e->h[i].error);
    for (int i = 0; i < e->n_att; i++)
        free(e->att[i].text);
    if (e->att != e->inline_att) free(e->att);
    free(e);
}

void history_configure(int events, long long body_bytes)
{
    struct entry **old = NULL;
    int n_old = 0;

    pthread_mutex_lock(&hist.mu);
    hist.body_bytes = body_bytes;
    if (events != hist.cap) {
        old = hist.ring;
        n_old = hist.cap;
        hist.ring = events ? wh_xcalloc((size_t)events, sizeof *hist.ring) : NULL;
        hist.cap = events;
        hist.bytes = 0;
    }
    metrics_history_bytes(hist.cap ? hist.bytes : -1);
    pthread_mutex_unlock(&hist.mu);
    for (int i = 0; i < n_old; i++)
        entry_free(old[i]);
    free(old);
}

/* The entry with this id, if still kept (with hist.mu). */
static struct entry *find(long long id)
{
    struct entry *e;

    if (id <= 0 || !hist.cap) return NULL;
    e = hist.ring[(id - 1) % hist.cap];
    return e && e->id == id ? e : NULL;
}

/* The headers as kept: lower-case names, the first of repeated ones. */
static void headers_json(const struct entry *e, struct wh_buf *b)
{
    const char *p = e->headers;

    buf_str(b, "{");
    for (int i = 0; i < e->n_headers; i++) {
        const char *name = p, *value = p + strlen(p) + 1;
        char lower[128];
        size_t n = strlen(name);
        for (size_t k = 0; k <= n; k++)
            lower[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
        if (i) buf_str(b, ",");
        json_out_str(b, lower, n);
        buf_str(b, ":");
        json_out_str(b, value, strlen(value));
        p = value + strlen(value) + 1;
    }
    buf_str(b, "}");
}

long long history_begin(const struct generation *g, const struct wh_event *ev)
{
    const struct bound_handler *plan[256];
    const char *signature = g->cfg->signature_header;
    struct entry *e, *evicted;
    size_t keep, type_len = strlen(ev->type), hdr_len = 0, names_len = 0, size;
    int n, n_headers = 0, cut = 0;
    bool kept[64] = {false};
    char *p;
    long long id;

    if (!__atomic_load_n(&hist.cap, __ATOMIC_RELAXED)) return 0;
    keep = ev->body_len;
    if ((long long)keep > __atomic_load_n(&hist.body_bytes, __ATOMIC_RELAXED)) {
        keep = (size_t)__atomic_load_n(&hist.body_bytes, __ATOMIC_RELAXED);
        cut = 1;
    }
    n = (int)dispatch_handlers(g, ev->type, plan, 256);
    for (int i = 0; i < n; i++)
        names_len += strlen(plan[i]->name) + 1;
    for (int i = 0; i < ev->n_headers && i < 64; i++) {
        const struct wh_header *h = &ev->headers[i];
        int dup = strlen(h->name) >= 128;
        for (int j = 0; j < i && !dup; j++)
            dup = kept[j] && strcasecmp(ev->headers[j].name, h->name) == 0;
        if (dup) continue;
        kept[i] = true;
        n_headers++;
        hdr_len += strlen(h->name) + 1 +
                   (strcasecmp(h->name, signature) == 0 ? sizeof "redacted" : strlen(h->value) + 1);
    }
    size = sizeof *e + (size_t)n * sizeof *e->h + names_len + type_len + 1 + hdr_len + keep + 1;
    if (!(e = malloc(size))) return 0; /* not kept: the request goes on */
    memset(e, 0, sizeof *e);
    e->h = (struct h_handler *)(e + 1);
    p = (char *)(e->h + n);
    for (int i = 0; i < n; i++) {
        size_t l = strlen(plan[i]->name) + 1;
        e->h[i] = (struct h_handler){
            .name = memcpy(p, plan[i]->name, l), .state = EV_PENDING, .duration_ms = -1};
        p += l;
    }
    e->n_h = n;
    e->type = memcpy(p, ev->type, type_len + 1);
    p += type_len + 1;
    e->headers = p;
    for (int i = 0; i < ev->n_headers && i < 64; i++) {
        const struct wh_header *h = &ev->headers[i];
        const char *v = strcasecmp(h->name, signature) == 0 ? "redacted" : h->value;
        if (!kept[i]) continue;
        p = stpcpy(p, h->name) + 1;
        p = stpcpy(p, v) + 1;
    }
    e->n_headers = n_headers;
    memcpy(p, ev->body, keep);
    p[keep] = '\0';
    e->body = p;
    e->body_len = keep;
    e->body_cut = cut;
    e->received_at = ev->received_at;
    e->seq = ev->seq;
    e->att = e->inline_att;
    e->cap_att = INLINE_ATTEMPTS;
    e->bytes = size;
    pthread_mutex_lock(&hist.mu);
    if (!hist.cap) {
        pthread_mutex_unlock(&hist.mu);
        entry_free(e);
        return 0;
    }
    id = e->id = hist.next_id++;
    evicted = hist.ring[(id - 1) % hist.cap];
    hist.ring[(id - 1) % hist.cap] = e;
    hist.bytes += (long long)e->bytes - (evicted ? (long long)evicted->bytes : 0);
    metrics_history_bytes(hist.bytes);
    pthread_mutex_unlock(&hist.mu);
    entry_free(evicted); /* outside the lock */
    activity_notice(ACTIVITY_RECEIVED, id);
    return id;
}

void history_attempt(void *arg, const struct bound_handler *b, const struct dispatch_attempt *a,
                     const char *error)
{
    long long id = *(long long *)arg;
    size_t el = strlen(error), ll = a->log.len ? a->log.len - 1 : 0; /* no last newline */
    struct h_attempt at = {.at = a->at,
                           .duration_ms = a->duration_ms,
                           .outcome = a->outcome == WH_OUTCOME_OK        ? ATTEMPT_OK
                                      : a->outcome == WH_OUTCOME_TIMEOUT ? ATTEMPT_TIMEOUT
                                                                         : ATTEMPT_FAILED};
    char *err_copy = NULL;
    struct entry *e;

    if (!id) return;
    if (el || ll) { /* something to keep: "error\0log\0" */
        if (!(at.text = malloc(el + ll + 2))) return;
        memcpy(at.text, error, el + 1);
        memcpy(at.text + el + 1, a->log.text, ll);
        at.text[el + 1 + ll] = '\0';
    }
    if (el && !(err_copy = strdup(error))) {
        free(at.text);
        return;
    }
    pthread_mutex_lock(&hist.mu);
    if ((e = find(id)) != NULL && e->n_att == MAX_ATTEMPTS) { /* the oldest makes room */
        struct h_attempt *old = &e->att[0];
        size_t freed =
            old->text ? strlen(old->text) + strlen(old->text + strlen(old->text) + 1) + 2 : 0;
        free(old->text);
        memmove(e->att, e->att + 1, (size_t)(e->n_att - 1) * sizeof *e->att);
        e->n_att--;
        e->bytes -= freed;
        hist.bytes -= (long long)freed;
    }
    if (e && e->n_att == e->cap_att) {
        struct h_attempt *grown = malloc((size_t)e->cap_att * 2 * sizeof *grown);
        if (grown) {
            size_t added = (size_t)e->cap_att * 2 * sizeof *grown -
                           (e->att == e->inline_att ? 0 : (size_t)e->cap_att * sizeof *grown);
            memcpy(grown, e->att, (size_t)e->n_att * sizeof *grown);
            if (e->att != e->inline_att) free(e->att);
            e->att = grown;
            e->cap_att *= 2;
            e->bytes += added;
            hist.bytes += (long long)added;
        }
    }
    if (e && e->n_att < e->cap_att) {
        for (int i = 0; i < e->n_h; i++) {
            struct h_handler *h = &e->h[i];
            if (strcmp(h->name, b->name)) continue;
            at.handler = h->name;
            h->attempts++;
            h->state = at.outcome == ATTEMPT_OK ? EV_OK : EV_FAILED;
            h->timeout = at.outcome == ATTEMPT_TIMEOUT;
            h->duration_ms = at.duration_ms;
            free(h->error);
            h->error = err_copy;
            err_copy = NULL;
            break;
        }
        if (at.handler) { /* a handler of this event (a replay runs only those) */
            size_t added = at.text ? el + ll + 2 + (el ? el + 1 : 0) : 0;
            e->att[e->n_att++] = at;
            at.text = NULL;
            e->bytes += added;
            hist.bytes += (long long)added;
            metrics_history_bytes(hist.bytes);
        }
    }
    pthread_mutex_unlock(&hist.mu);
    free(at.text);
    free(err_copy);
}

void history_end(long long id)
{
    if (id) activity_notice(ACTIVITY_OUTCOME, id);
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
    json_out_event(b, &se);
    if (!detail) {
        buf_str(b, "}");
        return;
    }
    buf_str(b, ",\"headers\":");
    headers_json(e, b);
    buf_printf(b,
               ",\"body_cut\":%s,\"kept\":\"memory\",\"payload\":", e->body_cut ? "true" : "false");
    json_out_payload(b, e->body, e->body_len, e->body_cut);
    buf_str(b, ",\"attempts\":[");
    for (int i = 0; i < e->n_att; i++) {
        const struct h_attempt *a = &e->att[i];
        struct store_attempt sa = {.handler = a->handler,
                                   .error = a->text ? a->text : "",
                                   .log = a->text ? a->text + strlen(a->text) + 1 : "",
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
        c->seq = e->seq;
        c->handlers = wh_xcalloc((size_t)e->n_h + 1, sizeof *c->handlers);
        c->attempts = wh_xcalloc((size_t)e->n_h + 1, sizeof *c->attempts);
        for (int i = 0; i < e->n_h; i++) {
            for (int k = 0; k < e->n_att; k++)
                c->attempts[c->n_handlers] += strcmp(e->att[k].handler, e->h[i].name) == 0;
            c->handlers[c->n_handlers++] = wh_xstrdup(e->h[i].name);
        }
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
    free(c->attempts);
    free(c->type);
    free(c->body);
}
