/*
 * The seam between a verified request and its handlers: a wh_event borrows everything from
 * the request (valid for the duration of dispatch_event only).
 */
#ifndef WH_DISPATCH_H
#define WH_DISPATCH_H

#include "manifest.h"
#include "request.h"

#include <jansson.h>

struct wh_event {
    const char *type;
    const char *body;
    size_t body_len;
    json_t *payload; /* the decoded JSON object */
    double received_at;
    const struct wh_header *headers;
    int n_headers;
};

/* Runs the handlers registered for ev->type, then the "*" ones. 0 if all succeeded (or none
 * is registered), -1 if any failed. *n_handlers gets how many ran. */
int dispatch_event(const struct wh_config *cfg, const struct wh_event *ev, int *n_handlers);

#endif
