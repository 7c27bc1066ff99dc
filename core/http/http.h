/*
 * HTTP: the public listener and its pipeline, the admin listener, socket activation and
 * the libc functions replaced for civetweb. main.c uses it through this header
 * (docs/development.md, "Layout").
 */
#ifndef WH_HTTP_H
#define WH_HTTP_H

#include "activation.h"
#include "admin.h"

#include "conf/conf.h"

#include <stddef.h>

struct generation;
struct server;

/* Starts listening with gen (the server takes its own references; server.* settings come
 * from gen for the server's life); logs one "listening" line per listener with its actual
 * URL (port 0 becomes the port the kernel chose). 0, or -1 with a reason in err. */
int server_start(struct generation *gen, struct server **out, char *err, size_t err_len);

/* The port listener i actually listens on (port 0 in the manifest becomes a real one). */
int server_port(const struct server *s, int i);

/* New requests (and durable deliveries, and handshakes) use g from now on; those in flight
 * finish on theirs. */
void server_set_generation(struct server *s, struct generation *g);

/* Stops accepting at once and lets requests in flight finish, then (durable mode) the
 * deliveries running. 0 once they all have (the server is freed); -1 if requests, -2 if
 * deliveries still run after timeout_ms (nothing is freed: exit). */
int server_stop(struct server *s, int timeout_ms);

#endif
