/*
 * Sync mode's history (docs/operations.md, "The console"): the last console.history events
 * in memory, each with its headers (the signature's value redacted), its body (kept cut past
 * console.history_body_bytes) and every attempt of its handlers with what they logged. Lost on
 * restart. One lock; an event costs a copy of its body and a few allocations.
 */
#ifndef WH_HISTORY_H
#define WH_HISTORY_H

#include "runtime/runtime.h"

/* Sizes the ring (a change drops what it held). */
void history_configure(int events, long long body_bytes);

/* A new entry for ev (now being dispatched on g): its id, or 0 when the history keeps
 * nothing. Announced on the console's stream as received. */
long long history_begin(const struct generation *g, const struct wh_event *ev);
/* dispatch_result.attempt for the entry whose id *arg (a long long) holds. */
void history_attempt(void *arg, const struct bound_handler *b, const struct dispatch_attempt *a,
                     const char *error);
/* Its handlers are done (for now): announced on the stream as an outcome. */
void history_end(long long id);

/* The console's questions, answered as JSON into out (console.h's shapes). */
struct store_query;
void history_events_json(const struct store_query *q, const char *signature_header,
                         struct wh_buf *out);
/* 1 with the event's E (detail: with headers, payload and attempts), 0 when it is gone. */
int history_event_json(long long id, int detail, struct wh_buf *out);

/* A copy of a kept event, for a replay: 1, 0 when gone, -1 when its body was kept cut. The
 * copy's strings are the caller's to free (history_copy_free). */
struct history_copy {
    char *type, *body;
    size_t body_len;
    double received_at;
    unsigned long long seq; /* its event id's (wh_event_id_text): a replay keeps the id */
    char **handlers;        /* the names its handlers had */
    int *attempts;          /* and each one's attempts so far */
    int n_handlers;
};
int history_copy(long long id, struct history_copy *out);
void history_copy_free(struct history_copy *c);

#endif
