/*
 * The public endpoint: civetweb set-up (listeners, TLS, threads, timeouts) and the request
 * handler that applies SPEC §1 in order: size -> signature -> content type -> event header
 * -> JSON -> dispatch. The server borrows the config, which must outlive it.
 */
#ifndef WH_SERVER_H
#define WH_SERVER_H

#include "manifest.h"

#include <stddef.h>

struct server;

/* Checks what serve needs beyond the manifest's syntax: the TLS certificate and key load
 * and match, the TLS compatibility shim is in place. 0, or -1 with "FILE:LINE: reason". */
int server_preflight(const struct wh_config *cfg, char *err, size_t err_len);

/* Starts listening; logs one "listening" line per listener with its actual URL (port 0
 * becomes the port the kernel chose). 0, or -1 with a reason in err. */
int server_start(const struct wh_config *cfg, struct server **out, char *err, size_t err_len);

/* Stops accepting, lets in-flight requests finish, frees the server. */
void server_stop(struct server *s);

#endif
