#define _GNU_SOURCE
#include "http_policy.h"

#include "alloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct range {
    int family;
    const char *addr;
    int prefix;
};

/* Not the public Internet: refused unless allow_private or an allow CIDR names them. */
static const struct range private_ranges[] = {
    {AF_INET, "0.0.0.0", 8},        {AF_INET, "10.0.0.0", 8},     {AF_INET, "100.64.0.0", 10},
    {AF_INET, "127.0.0.0", 8},      {AF_INET, "169.254.0.0", 16}, {AF_INET, "172.16.0.0", 12},
    {AF_INET, "192.0.0.0", 24},     {AF_INET, "192.168.0.0", 16}, {AF_INET, "198.18.0.0", 15},
    {AF_INET, "224.0.0.0", 4},      {AF_INET, "240.0.0.0", 4},    {AF_INET6, "::", 127},
    {AF_INET6, "fe80::", 10},       {AF_INET6, "fc00::", 7},      {AF_INET6, "ff00::", 8},
    {AF_INET6, "::ffff:0:0", 96},   {AF_INET6, "64:ff9b::", 96},  {AF_INET6, "64:ff9b:1::", 48},
    {AF_INET6, "::", 96},           /* IPv4-compatible */
    {AF_INET6, "::ffff:0:0:0", 96}, /* IPv4-translated */
};

/* Cloud metadata services: credentials live there. Always refused. */
static const struct range metadata[] = {
    {AF_INET, "169.254.169.254", 32}, {AF_INET, "169.254.170.2", 32},
    {AF_INET, "100.100.100.200", 32}, {AF_INET, "168.63.129.16", 32},
    {AF_INET6, "fd00:ec2::254", 128}, {AF_INET, "192.0.0.192", 32},
};

static bool in_prefix(const unsigned char *a, const unsigned char *net, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;

    if (memcmp(a, net, (size_t)full) != 0) return false;
    return rest == 0 || ((a[full] ^ net[full]) & (0xff << (8 - rest))) == 0;
}

static bool in_range(int family, const unsigned char *a, const struct range *r)
{
    unsigned char net[16];

    return r->family == family && inet_pton(family, r->addr, net) == 1 &&
           in_prefix(a, net, r->prefix);
}

static bool in_list(int family, const unsigned char *a, const struct range *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (in_range(family, a, &list[i])) return true;
    return false;
}

int http_policy_allow_parse(const char *s, struct http_allow *out)
{
    char buf[80];
    const char *slash = strchr(s, '/');
    size_t len = slash ? (size_t)(slash - s) : strlen(s);

    memset(out, 0, sizeof *out);
    if (len < sizeof buf) {
        memcpy(buf, s, len);
        buf[len] = '\0';
        out->family = strchr(buf, ':') ? AF_INET6 : AF_INET;
        if (inet_pton(out->family, buf, out->addr) == 1) {
            int max = out->family == AF_INET ? 32 : 128;
            char *end;
            out->is_cidr = true;
            out->prefix = max;
            if (slash) {
                long p = strtol(slash + 1, &end, 10);
                if (!slash[1] || *end || p < 0 || p > max) return -1;
                out->prefix = (int)p;
            }
            return 0;
        }
    }
    if (slash || !*s) return -1;
    /* a host name, or *.domain: letters, digits, '-' and '.', each label non-empty */
    {
        const char *h = strncmp(s, "*.", 2) == 0 ? s + 2 : s;
        size_t label = 0;
        for (const char *p = h; *p; p++) {
            if (*p == '.') {
                if (!label) return -1;
                label = 0;
            } else if (isalnum((unsigned char)*p) || *p == '-') {
                label++;
            } else {
                return -1;
            }
        }
        if (!label) return -1;
    }
    out->host = wh_xstrdup(s);
    for (char *p = out->host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return 0;
}

static bool host_matches(const char *pattern, const char *host)
{
    if (strncmp(pattern, "*.", 2) == 0) {
        size_t pl = strlen(pattern + 1), hl = strlen(host); /* ".example.com" */
        return hl > pl && strcasecmp(host + hl - pl, pattern + 1) == 0;
    }
    return strcasecmp(pattern, host) == 0;
}

/* The IPv4 addresses an IPv6 address carries, which a connection to it may reach (or which a
 * relay would): IPv4-mapped ::ffff:a.b.c.d, IPv4-translated ::ffff:0:a.b.c.d,
 * IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d (and the local-use 64:ff9b:1::/48, with
 * the address after the prefix or in its last 32 bits), 6to4 2002:AABB:CCDD::/48, and Teredo
 * 2001:0::/32 (the server's address, and the client's inverted). Up to two, into v4; returns how
 * many. */
static int embedded_ipv4(const unsigned char *a, unsigned char v4[2][4])
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char translated[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};
    static const unsigned char zero[12] = {0};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 1};

    if (!memcmp(a, nat64_local, 6)) { /* RFC 8215: the address after /48 (RFC 6052 places it
                                       * in bytes 6, 7, 9, 10), or a /96 style last 32 bits */
        memcpy(v4[0], a + 12, 4);
        v4[1][0] = a[6];
        v4[1][1] = a[7];
        v4[1][2] = a[9];
        v4[1][3] = a[10];
        return 2;
    }
    if (!memcmp(a, mapped, 12) || !memcmp(a, translated, 12) || !memcmp(a, nat64, 12) ||
        (!memcmp(a, zero, 12) && (a[12] | a[13] | a[14] | a[15] >> 1) != 0)) { /* not :: or ::1 */
        memcpy(v4[0], a + 12, 4);
        return 1;
    }
    if (a[0] == 0x20 && a[1] == 0x02) { /* 6to4 */
        memcpy(v4[0], a + 2, 4);
        return 1;
    }
    if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) { /* Teredo */
        memcpy(v4[0], a + 4, 4);
        for (int i = 0; i < 4; i++)
            v4[1][i] = (unsigned char)~a[12 + i];
        return 2;
    }
    return 0;
}

/* The address itself, or an IPv4 address it carries, in the list. */
static bool any_in_list(int family, const unsigned char *a, const struct range *list, size_t n)
{
    unsigned char v4[2][4];
    int k = family == AF_INET6 ? embedded_ipv4(a, v4) : 0;

    if (in_list(family, a, list, n)) return true;
    for (int i = 0; i < k; i++)
        if (in_list(AF_INET, v4[i], list, n)) return true;
    return false;
}

enum http_verdict http_policy_check(const struct http_allow *allow, size_t n_allow, bool has_allow,
                                    bool allow_private, const char *host,
                                    const struct sockaddr *addr, char *why, size_t why_len)
{
    unsigned char a[16];
    char text[INET6_ADDRSTRLEN] = "?";
    int family = addr->sa_family;
    bool host_ok = false, cidr_ok = false;

    if (family == AF_INET)
        memcpy(a, &((const struct sockaddr_in *)addr)->sin_addr, 4);
    else if (family == AF_INET6)
        memcpy(a, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
    else {
        snprintf(why, why_len, "refused address: not an IP address");
        return HTTP_REFUSED_ADDRESS;
    }
    inet_ntop(family, a, text, sizeof text);
    if (any_in_list(family, a, metadata, sizeof metadata / sizeof metadata[0])) {
        snprintf(why, why_len, "refused address: %s is a cloud metadata address", text);
        return HTTP_REFUSED_ADDRESS;
    }
    for (size_t i = 0; i < n_allow; i++) {
        if (allow[i].is_cidr)
            cidr_ok |= allow[i].family == family && in_prefix(a, allow[i].addr, allow[i].prefix);
        else
            host_ok |= host_matches(allow[i].host, host);
    }
    if (has_allow && !host_ok && !cidr_ok) {
        snprintf(why, why_len, "not allowed: %s (%s) is not in http.allow", host, text);
        return HTTP_NOT_ALLOWED;
    }
    if (!allow_private && !cidr_ok &&
        any_in_list(family, a, private_ranges, sizeof private_ranges / sizeof private_ranges[0])) {
        snprintf(why, why_len,
                 "refused address: %s is not a public address (name it in http.allow)", text);
        return HTTP_REFUSED_ADDRESS;
    }
    return HTTP_OK;
}
