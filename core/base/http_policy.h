/*
 * Which addresses a handler's outbound HTTP may reach (docs/handlers.md, "Handlers that act": the
 * SSRF policy): pure functions over parsed http.allow entries, used by the Lua HTTP client on every
 * address it is about to connect to (and again on a reused connection). Private, loopback,
 * link-local, CGNAT, ULA, multicast, reserved and IPv4-mapped/NAT64 addresses are refused
 * unless allow_private is set or an allow CIDR names them; cloud metadata addresses always.
 * An IPv6 address that carries an IPv4 one (mapped, translated, compatible, NAT64, 6to4,
 * Teredo) is judged by that IPv4 address too.
 */
#ifndef WH_HTTP_POLICY_H
#define WH_HTTP_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct http_allow {
    bool is_cidr;
    int family; /* AF_INET or AF_INET6, for a CIDR */
    unsigned char addr[16];
    int prefix;
    char *host; /* "api.example.com", or "*.example.com" for its subdomains */
};

/* Parses one allow entry: a CIDR (or bare address) or a host pattern. 0, or -1. */
int http_policy_allow_parse(const char *s, struct http_allow *out);

enum http_verdict { HTTP_OK, HTTP_NOT_ALLOWED, HTTP_REFUSED_ADDRESS };

/* May host (as in the URL, lower case) be reached at addr? allow may be NULL (no list).
 * why gets the reason for a refusal. */
enum http_verdict http_policy_check(const struct http_allow *allow, size_t n_allow, bool has_allow,
                                    bool allow_private, const char *host,
                                    const struct sockaddr *addr, char *why, size_t why_len);

#endif
