#include "address.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void key_v4(const void *in4, struct client_key *k)
{
    memset(k->a, 0, 10);
    k->a[10] = k->a[11] = 0xff;
    memcpy(k->a + 12, in4, 4);
}

static bool key_is_v4(const struct client_key *k)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(k->a, mapped, 12) == 0;
}

int address_from_sockaddr(const struct sockaddr *sa, struct client_key *out)
{
    if (sa->sa_family == AF_INET) {
        key_v4(&((const struct sockaddr_in *)(const void *)sa)->sin_addr, out);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out->a, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

int address_parse(const char *s, struct client_key *out)
{
    char buf[64];
    const char *end;
    size_t len;
    unsigned char in4[4];

    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '[') { /* [v6] or [v6]:port */
        end = strchr(++s, ']');
        if (!end || (end[1] && end[1] != ':')) return -1;
    } else {
        const char *colon = strchr(s, ':');
        /* one colon: an IPv4 address with a port; more: IPv6 */
        end = colon && !strchr(colon + 1, ':') ? colon : s + strlen(s);
        while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
    }
    len = (size_t)(end - s);
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, in4) == 1) {
        key_v4(in4, out);
        return 0;
    }
    return inet_pton(AF_INET6, buf, out->a) == 1 ? 0 : -1;
}

void address_format(const struct client_key *k, char *out, size_t out_len)
{
    if (!inet_ntop(key_is_v4(k) ? AF_INET : AF_INET6, key_is_v4(k) ? k->a + 12 : k->a, out,
                   (socklen_t)out_len) &&
        out_len)
        out[0] = '\0';
}

static void mask(struct client_key *k, int prefix)
{
    for (int i = 0; i < 16; i++) {
        int bits = prefix - i * 8;
        k->a[i] &= bits >= 8 ? 0xff : bits <= 0 ? 0 : (unsigned char)(0xff << (8 - bits));
    }
}

int address_cidr_parse(const char *s, struct cidr *out)
{
    char buf[64];
    const char *slash = strchr(s, '/');
    size_t len = slash ? (size_t)(slash - s) : strlen(s);
    bool v4;
    long p;
    char *end;

    if (len == 0 || len >= sizeof buf || strchr(s, '[') || strchr(s, ' ')) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    v4 = !strchr(buf, ':');
    if (address_parse(buf, &out->net) != 0) return -1;
    p = v4 ? 32 : 128;
    if (slash) {
        errno = 0;
        p = strtol(slash + 1, &end, 10);
        if (!slash[1] || *end || errno || p < 0 || p > (v4 ? 32 : 128) || slash[1] == '+' ||
            slash[1] == '-' || slash[1] == ' ')
            return -1;
    }
    out->prefix = (int)p + (v4 ? 96 : 0);
    mask(&out->net, out->prefix);
    return 0;
}

bool address_cidr_list_has(const struct cidr *list, size_t n, const struct client_key *k)
{
    for (size_t i = 0; i < n; i++) {
        struct client_key m = *k;
        mask(&m, list[i].prefix);
        if (memcmp(m.a, list[i].net.a, 16) == 0) return true;
    }
    return false;
}

bool address_identify_client(const struct client_key *peer, const char *const *xff, size_t n_xff,
                             const struct cidr *trusted, size_t n_trusted,
                             struct client_key *client)
{
    bool from_header = false;

    *client = *peer;
    if (!address_cidr_list_has(trusted, n_trusted, peer)) return false;
    /* right to left over every entry of every header: each hop appends the address it saw */
    for (size_t h = n_xff; h-- > 0;) {
        const char *v = xff[h], *p;

        if (!v) continue;
        for (p = v + strlen(v);;) {
            const char *start = p;
            char entry[80];
            struct client_key k;

            while (start > v && start[-1] != ',')
                start--;
            if ((size_t)(p - start) >= sizeof entry) return from_header;
            memcpy(entry, start, (size_t)(p - start));
            entry[p - start] = '\0';
            if (address_parse(entry, &k) != 0) return from_header;
            *client = k;
            from_header = true;
            if (!address_cidr_list_has(trusted, n_trusted, &k)) return true;
            if (start == v) break;
            p = start - 1;
        }
    }
    return from_header;
}

bool address_is_loopback_host(const char *hostport)
{
    char host[64];
    const char *end;
    size_t n;
    unsigned char a[16];

    if (!hostport) return false;
    if (hostport[0] == '[') { /* [v6]:port */
        if (!(end = strchr(hostport, ']')) || (end[1] && end[1] != ':')) return false;
        hostport++;
    } else {
        end = strchr(hostport, ':');
        if (end && strchr(end + 1, ':')) return false; /* a bare IPv6 address has no port */
        if (!end) end = hostport + strlen(hostport);
    }
    n = (size_t)(end - hostport);
    if (n == 0 || n >= sizeof host) return false;
    memcpy(host, hostport, n);
    host[n] = '\0';
    if (strcasecmp(host, "localhost") == 0) return true;
    if (inet_pton(AF_INET, host, a) == 1) return a[0] == 127;
    return inet_pton(AF_INET6, host, a) == 1 && IN6_IS_ADDR_LOOPBACK((struct in6_addr *)a);
}
