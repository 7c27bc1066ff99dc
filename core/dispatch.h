/*
 * Event type -> handlers: the type's own handlers in manifest order, then the "*" ones.
 * Every handler runs even if an earlier one failed. A wh_event borrows everything from the
 * request and is valid for the duration of dispatch_event() only.
 */
#ifndef WH_DISPATCH_H
#define WH_DISPATCH_H

#include "request.h"

struct generation;

struct wh_event {
    const char *type;
    const char *body; /* a JSON object, checked by json_text_check(); NUL-terminated */
    size_t body_len;
    double received_at;
    const struct wh_header *headers;
    int n_headers;
    long long id; /* durable mode: the spool's event id; 0 in sync mode */
};

struct dispatch_result {
    int ran;    /* handlers called */
    int failed; /* of which failed */
};

struct bound_handler;

/* Runs one handler (metrics and a log line on failure included). 0, or -1 with err. */
int dispatch_handler(const struct generation *g, const struct bound_handler *b,
                     const struct wh_event *ev, char *err, size_t err_len);

/* Takes a place, for the event type's handlers, under each one's max_concurrent: all or
 * none. 0, or -1 when one of them is at its cap (nothing is taken). Sync mode: the event
 * is then refused whole, before any handler ran, so a retry repeats nothing. */
int dispatch_reserve(const struct generation *g, const char *type);
void dispatch_unreserve(const struct generation *g, const char *type);

/* 0 if every handler succeeded (or none is registered), -1 if any failed; each failure is
 * logged with the handler, the event type and the reason. */
int dispatch_event(const struct generation *g, const struct wh_event *ev,
                   struct dispatch_result *res);

#endif
