/*
 * How many connections each client holds (docs/security.md, "Hostile clients"). civetweb
 * 1.15 has no accept hook, so the per-client connection cap is applied where accept()
 * returns (libc_overrides.c): a connection past the cap is closed the moment the kernel
 * hands it over, before any worker thread sees it; close() counts it out. Everything here is
 * process-wide, guarded by one mutex taken once per connection (never per byte), and touches
 * only descriptors accepted on watched listeners.
 */
#ifndef WH_CLIENTS_H
#define WH_CLIENTS_H

#include "base/base.h"

#include <stdbool.h>
#include <stddef.h>

/* --- connections --------------------------------------------------------------------------- */

/* Sizes the descriptor table for descriptors below max_fds. Call once, before the listeners
 * accept anything; -1 if out of memory. */
int clients_init(int max_fds);
/* The cap (0: none) and the proxies exempt from it (copied); takes effect for the next
 * connection. */
void clients_set_policy(int cap_per_client, const struct cidr *trusted, size_t n_trusted);
/* The listening descriptors whose connections are counted and capped; n 0 stops. */
void clients_watch(const int *listen_fds, int n);
/* Open connections accepted on the watched listeners. */
long clients_open(void);

/* A request from a client behind a trusted proxy: counted against the same cap while it
 * runs. 0, or -1 (not counted) when the client already holds cap; leave only after 0. */
int clients_enter(const struct client_key *k, int cap);
void clients_leave(const struct client_key *k);

/* Called by accept() and accept4() with what the kernel returned for listener lfd: fd, or -1
 * with errno set (ECONNABORTED) when the connection was over its client's cap and closed. */
int clients_admit(int lfd, int fd);
/* Called by close() before the descriptor is released. */
void clients_closing(int fd);

#endif
