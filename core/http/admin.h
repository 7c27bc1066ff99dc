/*
 * The admin listener (server.admin): GET /healthz and GET /metrics on a separate civetweb
 * context with two threads, never on the public port.
 */
#ifndef WH_ADMIN_H
#define WH_ADMIN_H

#include <stddef.h>

struct admin;

/* Listens on "ADDRESS:PORT" (port 0 picks one; the URL is logged as "admin listening"). */
int admin_start(const char *hostport, struct admin **out, char *err, size_t err_len);
void admin_stop(struct admin *a);

#endif
