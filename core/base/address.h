/*
 * Client addresses: an IPv4 or IPv6 address as one 16-byte key, CIDR ranges, and who a
 * request comes from behind trusted proxies (docs/security.md, "Hostile clients"). Pure:
 * no state, no allocation.
 */
#ifndef WH_ADDRESS_H
#define WH_ADDRESS_H

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
int address_cidr_parse(const char *s, struct cidr *out);
bool address_cidr_list_has(const struct cidr *list, size_t n, const struct client_key *k);

/* 0 and the key, or -1 if s is not an IP address (an IPv6 one may be in brackets, an IPv4
 * one may carry a ":port", as proxies write them). */
int address_parse(const char *s, struct client_key *out);
int address_from_sockaddr(const struct sockaddr *sa, struct client_key *out);
/* The address as text ("203.0.113.9", "2001:db8::1"). */
void address_format(const struct client_key *k, char *out, size_t out_len);

/* Is "HOST[:PORT]" (HOST: an IPv4 address, an IPv6 one in brackets, or a name) this machine
 * by loopback: 127.0.0.0/8, ::1, or the name localhost? Any other name, 127.x.example
 * included, is not (a DNS name can be made to point anywhere). */
bool address_is_loopback_host(const char *hostport);

/* The client of a request from peer: the peer itself, unless it is in trusted; then the
 * rightmost X-Forwarded-For address that is not trusted itself (xff: the header's values in
 * the order received, NULL entries skipped). An unparsable entry ends the walk: the address
 * to its right is the last one a trusted proxy vouched for. Returns true if the client came
 * from X-Forwarded-For. */
bool address_identify_client(const struct client_key *peer, const char *const *xff, size_t n_xff,
                             const struct cidr *trusted, size_t n_trusted,
                             struct client_key *client);

#endif
