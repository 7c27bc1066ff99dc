/*
 * The public endpoint: civetweb set-up (listeners, TLS, threads, timeouts) and the request
 * handler that applies SPEC §1 in order: size -> signature -> content type -> event header
 * -> JSON -> dispatch. Each request holds a reference to the generation it started on.
 */
#ifndef WH_SERVER_H
#define WH_SERVER_H

#include "manifest.h"

#include <stddef.h>

struct server;

/* Checks what serve needs beyond the manifest's syntax: the TLS certificate and key load
 * and match, the TLS compatibility shim is in place. 0 and, with an https listener, *tls
 * (an SSL_CTX holding them, for the generation; NULL otherwise), or -1 with
 * "FILE:LINE: reason". */
int server_preflight(const struct wh_config *cfg, void **tls, char *err, size_t err_len);
/* Frees what server_preflight gave (handshakes that took it keep their own reference). */
void server_tls_free(void *tls);

struct generation;

/* Starts listening with gen (the server takes its own references; server.* settings come
 * from gen for the server's life); logs one "listening" line per listener with its actual
 * URL (port 0 becomes the port the kernel chose). 0, or -1 with a reason in err. */
int server_start(struct generation *gen, struct server **out, char *err, size_t err_len);

/* The port listener i actually listens on (port 0 in the manifest becomes a real one). */
int server_port(const struct server *s, int i);

/* The generation serving new requests, with a reference for the caller (arg: the server). */
struct generation *server_current(void *arg);

/* New requests use g from now on; requests in flight finish on theirs. */
void server_set_generation(struct server *s, struct generation *g);

/* Stops accepting at once and lets requests in flight finish, then (durable mode) the
 * deliveries running. 0 once they all have (the server is freed); -1 if requests, -2 if
 * deliveries still run after timeout_ms (nothing is freed: exit). */
int server_stop(struct server *s, int timeout_ms);

#endif
