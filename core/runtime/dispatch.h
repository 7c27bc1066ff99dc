/*
 * Event type -> handlers: the type's own handlers in manifest order, then the "*" ones.
 * Every handler runs even if an earlier one failed. A wh_event borrows everything from the
 * request and is valid for the duration of dispatch_event() only.
 */
#ifndef WH_DISPATCH_H
#define WH_DISPATCH_H

#include "base/base.h"

struct generation;

/* What one handler call came to, for the console (docs/operations.md, "The console"). */
struct dispatch_attempt {
    enum wh_outcome outcome;
    double at; /* wall time it started */
    double duration_ms;
    struct log_tee log; /* the lines it logged */
};

struct bound_handler;

struct dispatch_result {
    int ran;    /* handlers called */
    int failed; /* of which failed */
    /* optional, set by the caller: told each handler's attempt as it ends (error: "" when it
     * succeeded) */
    void (*attempt)(void *arg, const struct bound_handler *b, const struct dispatch_attempt *a,
                    const char *error);
    void *arg;
};

/* Runs one handler (metrics and a log line on failure included). 0, or -1 with err. With
 * att, what it logged is kept there too, with its outcome and duration. */
int dispatch_handler(const struct generation *g, const struct bound_handler *b,
                     const struct wh_event *ev, char *err, size_t err_len,
                     struct dispatch_attempt *att);

/* Takes a place, for the event type's handlers, under each one's max_concurrent: all or
 * none. 0, or -1 when one of them is at its cap (nothing is taken). Sync mode: the event
 * is then refused whole, before any handler ran, so a retry repeats nothing. */
int dispatch_reserve(const struct generation *g, const char *type);
void dispatch_unreserve(const struct generation *g, const char *type);

/* The handlers an event of this type runs, in the order dispatch_event runs them (the
 * type's own, then the "*" ones): at most max of them into out; returns how many. */
size_t dispatch_handlers(const struct generation *g, const char *type,
                         const struct bound_handler **out, size_t max);

/* The metrics series events of this type count in. */
struct event_series *dispatch_series(const struct generation *g, const char *type);

/* 0 if every handler succeeded (or none is registered), -1 if any failed; each failure is
 * logged with the handler, the event type and the reason. */
int dispatch_event(const struct generation *g, const struct wh_event *ev,
                   struct dispatch_result *res);

#endif
