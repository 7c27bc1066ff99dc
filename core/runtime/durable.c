#define _GNU_SOURCE
#include "durable.h"

#include "dispatch.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The request's headers as a JSON object for the spool: names in lower case, the first of
 * repeated names, values that are not UTF-8 left out. A new string; NULL if out of memory. */
static char *headers_json(const struct wh_header *h, int n)
{
    size_t cap = 3;
    char *out, *o;
    bool kept[64] = {false};

    n = n < 64 ? n : 64;
    for (int i = 0; i < n; i++)
        cap += JSONESC_MAX(strlen(h[i].name) + strlen(h[i].value)) + 6;
    if (!(o = out = malloc(cap))) return NULL;
    *o++ = '{';
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(h[i].name), vl = strlen(h[i].value);
        char *e;
        for (int j = 0; j < i; j++)
            if (kept[j] && strcasecmp(h[j].name, h[i].name) == 0) goto next;
        if (!utf8_valid(h[i].name, nl) || !utf8_valid(h[i].value, vl)) continue;
        kept[i] = true;
        if (o > out + 1) *o++ = ',';
        *o++ = '"';
        for (e = o + json_escape(o, h[i].name, nl); o < e; o++)
            if (*o >= 'A' && *o <= 'Z') *o += 32;
        memcpy(o, "\":\"", 3);
        o += 3;
        o += json_escape(o, h[i].value, vl);
        *o++ = '"';
    next:;
    }
    *o++ = '}';
    *o = '\0';
    return out;
}

static void rules_of(const struct generation *g, struct spool_rules *r)
{
    r->max_attempts = g->cfg->retry_max_attempts;
    r->initial_backoff_ms = g->cfg->retry_initial_backoff_ms;
    r->max_backoff_ms = g->cfg->retry_max_backoff_ms;
    r->keep_delivered_s = g->cfg->keep_delivered_s;
}

static void spool_rules(void *arg, struct spool_rules *r)
{
    struct generation *g = generation_slot_get(arg);

    rules_of(g, r);
    generation_release(g);
}

/* A delivery from the spool, run by the current generation's handler of that name. */
static int spool_deliver(void *arg, const struct spool_delivery *d, struct spool_rules *rules,
                         long long *generation, int *give_up, struct spool_attempt *att, char *err,
                         size_t err_len)
{
    struct dispatch_attempt a = {.at = wh_now_s()};

    struct generation *g = generation_slot_get(arg);
    const struct bound_handler *b = generation_handler(g, d->handler);
    json_t *hdrs = json_loads(d->headers_json, 0, NULL);
    struct wh_header h[64];
    int nh = 0, rc = -1;
    const char *k;
    json_t *v;

    json_object_foreach(hdrs, k, v)
    {
        if (nh < 64 && json_is_string(v)) {
            h[nh].name = k;
            h[nh++].value = json_string_value(v);
        }
    }
    rules_of(g, rules);
    *generation = (long long)g->id;
    if (!b) {
        snprintf(err, err_len, "handler %s is not in the running configuration", d->handler);
        *give_up = 1; /* nothing to retry with: a dead letter to replay */
    } else if (d->body_checked || json_text_check(d->body, d->body_len) == JSON_TEXT_OBJECT) {
        struct wh_event ev = {.type = d->type,
                              .body = d->body,
                              .body_len = d->body_len,
                              .received_at = d->received_at,
                              .headers = h,
                              .n_headers = nh,
                              .id = d->event_id,
                              .attempt = d->attempt};
        rc = dispatch_handler(g, b, &ev, err, err_len, &a);
    } else {
        snprintf(err, err_len, "stored body is not JSON");
    }
    json_decref(hdrs);
    generation_release(g);
    att->at = a.at;
    att->duration_ms = a.duration_ms;
    att->timeout = a.outcome == WH_OUTCOME_TIMEOUT;
    att->log = a.log;
    return rc;
}

struct spool_hooks durable_hooks(struct generation_slot *slot)
{
    return (struct spool_hooks){.arg = slot, .deliver = spool_deliver, .rules = spool_rules};
}

enum spool_result durable_store(struct spool *sp, const struct generation *g,
                                const struct wh_event *ev)
{
    const struct bound_handler *plan[256];
    const char *names[256];
    char *key = NULL, *headers = headers_json(ev->headers, ev->n_headers), *value;
    struct spool_event se = {.type = ev->type,
                             .body = ev->body,
                             .body_len = ev->body_len,
                             .received_at = ev->received_at,
                             .handlers = names,
                             .max_bytes = g->cfg->max_spool_mb << 20}; /* reloads apply it */
    enum spool_result r;
    long long id = 0;

    /* the deliveries dispatch_event would run, in its order */
    se.n_handlers = (int)dispatch_handlers(g, ev->type, plan, 256);
    for (int i = 0; i < se.n_handlers; i++)
        names[i] = plan[i]->name;
    se.headers_json = headers ? headers : "{}";
    if (g->cfg->dedupe_key &&
        (value = json_text_path(ev->body, ev->body_len, g->cfg->dedupe_key))) {
        if (asprintf(&key, "%s\n%s", ev->type, value) > 0) {
            se.dedupe_key = key; /* per event type: a status update is not a duplicate message */
            se.dedupe_window_s = g->cfg->dedupe_window_s;
        }
        free(value);
    }
    r = spool_put(sp, &se, &id);
    free(headers);
    free(key);
    /* accepted (handlers run later: their outcomes are wapphook_deliveries_total), or not */
    metrics_event(dispatch_series(g, ev->type), r == SPOOL_FULL || r == SPOOL_ERROR ? EVENT_FAILED
                                                : se.n_handlers                     ? EVENT_OK
                                                                : EVENT_UNROUTED);
    if (r == SPOOL_STORED) {
        activity_event(ev->type, se.n_handlers ? ACTIVITY_ACCEPTED : ACTIVITY_UNROUTED, -1);
        activity_notice(ACTIVITY_RECEIVED, id); /* the console's stream */
    }
    return r;
}
