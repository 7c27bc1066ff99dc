/*
 * Who a request comes from, and how many connections each client holds (SPEC section 12).
 * A client is the peer address or, when the peer is a trusted proxy, the address its
 * X-Forwarded-For names. civetweb 1.15 has no accept hook, so the per-client connection cap
 * is applied by interposing accept(): a connection past the cap is closed the moment the
 * kernel hands it over, before any worker thread sees it; close() is interposed too, to
 * count it out. Everything here is process-wide, guarded by one mutex taken once per
 * connection (never per byte), and touches only descriptors accepted on watched listeners.
 */
#ifndef WH_CLIENTS_H
#define WH_CLIENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* An address, IPv4 as IPv4-mapped IPv6, so both families compare in one table. */
struct client_key {
    unsigned char a[16];
};

struct cidr {
    struct client_key net; /* masked */
    int prefix;            /* over the 128 bits of the key */
};

/* "10.0.0.0/8", "2001:db8::/32", or a bare address. 0, or -1. */
int cidr_parse(const char *s, struct cidr *out);
bool cidr_list_has(const struct cidr *list, size_t n, const struct client_key *k);

/* 0 and the key, or -1 if s is not an IP address (an IPv6 one may be in brackets, an IPv4
 * one may carry a ":port", as proxies write them). */
int client_key_parse(const char *s, struct client_key *out);
int client_key_from_sockaddr(const struct sockaddr *sa, struct client_key *out);
/* The address as text ("203.0.113.9", "2001:db8::1"). */
void client_key_format(const struct client_key *k, char *out, size_t out_len);

/* The client of a request from peer: the peer itself, unless it is in trusted; then the
 * rightmost X-Forwarded-For address that is not trusted itself (xff: the header's values in
 * the order received, NULL entries skipped). An unparsable entry ends the walk: the address
 * to its right is the last one a trusted proxy vouched for. Returns true if the client came
 * from X-Forwarded-For. */
bool client_identify(const struct client_key *peer, const char *const *xff, size_t n_xff,
                     const struct cidr *trusted, size_t n_trusted, struct client_key *client);

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

#endif
