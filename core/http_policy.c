#define _GNU_SOURCE
#include "http_policy.h"

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
    {AF_INET, "0.0.0.0", 8},        {AF_INET, "10.0.0.0", 8},      {AF_INET, "100.64.0.0", 10},
    {AF_INET, "127.0.0.0", 8},      {AF_INET, "169.254.0.0", 16},  {AF_INET, "172.16.0.0", 12},
    {AF_INET, "192.0.0.0", 24},     {AF_INET, "192.168.0.0", 16},  {AF_INET, "198.18.0.0", 15},
    {AF_INET, "224.0.0.0", 4},      {AF_INET, "240.0.0.0", 4},     {AF_INET6, "::", 127},
    {AF_INET6, "fe80::", 10},       {AF_INET6, "fc00::", 7},       {AF_INET6, "ff00::", 8},
    {AF_INET6, "::ffff:0:0", 96},   {AF_INET6, "64:ff9b::", 96},   {AF_INET6, "64:ff9b:1::", 48},
    {AF_INET6, "::", 96}, /* IPv4-compatible */
};

/* Cloud metadata services: credentials live there. Always refused. */
static const struct range metadata[] = {
    {AF_INET, "169.254.169.254", 32}, {AF_INET, "169.254.170.2", 32},
    {AF_INET, "100.100.100.200", 32}, {AF_INET, "168.63.129.16", 32},
    {AF_INET6, "fd00:ec2::254", 128},
};

static bool in_prefix(const unsigned char *a, const unsigned char *net, int prefix)
{
    int full = prefix / 8, rest = prefix % 8;

    if (memcmp(a, net, (size_t)full) != 0)
        return false;
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
        if (in_range(family, a, &list[i]))
            return true;
    return false;
}

int http_allow_parse(const char *s, struct http_allow *out)
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
                if (!slash[1] || *end || p < 0 || p > max)
                    return -1;
                out->prefix = (int)p;
            }
            return 0;
        }
    }
    if (slash || !*s)
        return -1;
    /* a host name, or *.domain: letters, digits, '-' and '.', each label non-empty */
    {
        const char *h = strncmp(s, "*.", 2) == 0 ? s + 2 : s;
        size_t label = 0;
        for (const char *p = h; *p; p++) {
            if (*p == '.') {
                if (!label)
                    return -1;
                label = 0;
            } else if (isalnum((unsigned char)*p) || *p == '-') {
                label++;
            } else {
                return -1;
            }
        }
        if (!label)
            return -1;
    }
    out->host = strdup(s);
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

enum http_verdict http_policy_check(const struct http_allow *allow, size_t n_allow,
                                    bool has_allow, bool allow_private, const char *host,
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
    if (in_list(family, a, metadata, sizeof metadata / sizeof metadata[0])) {
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
        in_list(family, a, private_ranges, sizeof private_ranges / sizeof private_ranges[0])) {
        snprintf(why, why_len,
                 "refused address: %s is not a public address (name it in http.allow)", text);
        return HTTP_REFUSED_ADDRESS;
    }
    return HTTP_OK;
}
