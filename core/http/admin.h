/*
 * The admin listener (server.admin): GET /healthz, GET /metrics and the console (its page and
 * its API, console/console.h) on a separate civetweb context, never on the public port.
 */
#ifndef WH_ADMIN_H
#define WH_ADMIN_H

#include <stddef.h>

struct admin;

struct server;
struct generation;

/* Listens on g's server.admin, "ADDRESS:PORT" (port 0 picks one; the URL is logged as
 * "admin listening"), with the console (console.enabled) on srv's events. The listener keeps
 * its own hold of the current generation: it outlives the server's (admin_stop comes last). */
int admin_start(struct generation *g, struct server *srv, struct admin **out, char *err,
                size_t err_len);
/* A reload's new generation (a, NULL: none). */
void admin_set_generation(struct admin *a, struct generation *g);
void admin_stop(struct admin *a);

#endif
