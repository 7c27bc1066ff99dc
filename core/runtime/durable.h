/*
 * Durable mode's glue between the endpoint and the spool (docs/durability.md). An accepted
 * event becomes one spool entry naming the handlers dispatch would run, in dispatch's order
 * (dispatch_handlers); a delivery from the spool runs the current generation's handler of
 * that name, with the retry rules of that generation.
 */
#ifndef WH_DURABLE_H
#define WH_DURABLE_H

#include "generation.h"

#include "spool/spool.h"

/* The spool's hooks, running deliveries on slot's current generation. */
struct spool_hooks durable_hooks(struct generation_slot *slot);

/* Puts ev into sp for g's handlers (dedupe key, headers and size cap from g), and counts
 * the event. SPOOL_STORED or SPOOL_DUPLICATE: on disk, answer 200. */
enum spool_result durable_store(struct spool *sp, const struct generation *g,
                                const struct wh_event *ev);

#endif
