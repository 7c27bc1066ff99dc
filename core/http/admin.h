/*
 * The admin listener (server.admin): GET /healthz, GET /metrics and the console (its page and
 * its API, console/console.h) on a separate civetweb context, never on the public port.
 */
#ifndef WH_ADMIN_H
#define WH_ADMIN_H

#include <stddef.h>

struct admin;

struct server;
struct wh_config;

/* Listens on cfg's server.admin, "ADDRESS:PORT" (port 0 picks one; the URL is logged as
 * "admin listening"), with the console (console.enabled) on srv's events. */
int admin_start(const struct wh_config *cfg, struct server *srv, struct admin **out, char *err,
                size_t err_len);
void admin_stop(struct admin *a);

#endif
