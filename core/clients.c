#define _GNU_SOURCE
#include "clients.h"

#include "metrics.h"
#include "shed.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- addresses ----------------------------------------------------------------------------- */

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

int client_key_from_sockaddr(const struct sockaddr *sa, struct client_key *out)
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

int client_key_parse(const char *s, struct client_key *out)
{
    char buf[64];
    const char *end;
    size_t len;
    unsigned char in4[4];

    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '[') { /* [v6] or [v6]:port */
        end = strchr(++s, ']');
        if (!end || (end[1] && end[1] != ':'))
            return -1;
    } else {
        const char *colon = strchr(s, ':');
        /* one colon: an IPv4 address with a port; more: IPv6 */
        end = colon && !strchr(colon + 1, ':') ? colon : s + strlen(s);
        while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
    }
    len = (size_t)(end - s);
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, in4) == 1) {
        key_v4(in4, out);
        return 0;
    }
    return inet_pton(AF_INET6, buf, out->a) == 1 ? 0 : -1;
}

void client_key_format(const struct client_key *k, char *out, size_t out_len)
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

int cidr_parse(const char *s, struct cidr *out)
{
    char buf[64];
    const char *slash = strchr(s, '/');
    size_t len = slash ? (size_t)(slash - s) : strlen(s);
    bool v4;
    long p;
    char *end;

    if (len == 0 || len >= sizeof buf || strchr(s, '[') || strchr(s, ' '))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    v4 = !strchr(buf, ':');
    if (client_key_parse(buf, &out->net) != 0)
        return -1;
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

bool cidr_list_has(const struct cidr *list, size_t n, const struct client_key *k)
{
    for (size_t i = 0; i < n; i++) {
        struct client_key m = *k;
        mask(&m, list[i].prefix);
        if (memcmp(m.a, list[i].net.a, 16) == 0)
            return true;
    }
    return false;
}

bool client_identify(const struct client_key *peer, const char *const *xff, size_t n_xff,
                     const struct cidr *trusted, size_t n_trusted, struct client_key *client)
{
    bool from_header = false;

    *client = *peer;
    if (!cidr_list_has(trusted, n_trusted, peer))
        return false;
    /* right to left over every entry of every header: each hop appends the address it saw */
    for (size_t h = n_xff; h-- > 0;) {
        const char *v = xff[h], *p;

        if (!v)
            continue;
        for (p = v + strlen(v);;) {
            const char *start = p;
            char entry[80];
            struct client_key k;

            while (start > v && start[-1] != ',')
                start--;
            if ((size_t)(p - start) >= sizeof entry)
                return from_header;
            memcpy(entry, start, (size_t)(p - start));
            entry[p - start] = '\0';
            if (client_key_parse(entry, &k) != 0)
                return from_header;
            *client = k;
            from_header = true;
            if (!cidr_list_has(trusted, n_trusted, &k))
                return true;
            if (start == v)
                break;
            p = start - 1;
        }
    }
    return from_header;
}

/* --- the table of clients --------------------------------------------------------------- */

#define BUCKETS 4096

struct client {
    struct client *next;
    struct client_key key;
    int n; /* its connections, or (behind a proxy) its requests in flight */
};

/* One per descriptor: whom it counts against, if anyone. */
struct fd_entry {
    struct client_key key;
    unsigned char used; /* read unlocked by close(): atomics */
};

static struct {
    pthread_mutex_t mu;
    struct client *buckets[BUCKETS];
    struct fd_entry *fds;
    int max_fds;
    int cap;
    struct cidr *trusted;
    size_t n_trusted;
    int listeners[64];
    int n_listeners;
    long open;
} ct = {.mu = PTHREAD_MUTEX_INITIALIZER};

static unsigned bucket_of(const struct client_key *k)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ k->a[i]) * 16777619u;
    return h % BUCKETS;
}

/* With ct.mu held. */
static struct client **find(const struct client_key *k)
{
    struct client **p = &ct.buckets[bucket_of(k)];

    while (*p && memcmp((*p)->key.a, k->a, 16) != 0)
        p = &(*p)->next;
    return p;
}

/* With ct.mu held: one more for k, unless it holds cap already (cap 0: no cap). */
static int take(const struct client_key *k, int cap)
{
    struct client **p = find(k);

    if (!*p) {
        if (!(*p = calloc(1, sizeof **p)))
            return -1;
        (*p)->key = *k;
    }
    if (cap > 0 && (*p)->n >= cap)
        return -1;
    (*p)->n++;
    return 0;
}

static void give_back(const struct client_key *k)
{
    struct client **p = find(k), *c = *p;

    if (c && --c->n <= 0) {
        *p = c->next;
        free(c);
    }
}

int clients_init(int max_fds)
{
    struct fd_entry *t;

    if (__atomic_load_n(&ct.max_fds, __ATOMIC_ACQUIRE))
        return 0; /* once per process: close() reads the table unlocked */
    t = calloc((size_t)max_fds, sizeof *t); /* its pages stay untouched until used */
    if (!t)
        return -1;
    pthread_mutex_lock(&ct.mu);
    ct.fds = t;
    __atomic_store_n(&ct.max_fds, max_fds, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ct.mu);
    return 0;
}

void clients_set_policy(int cap_per_client, const struct cidr *trusted, size_t n_trusted)
{
    struct cidr *copy = n_trusted ? malloc(n_trusted * sizeof *copy) : NULL, *old;

    if (n_trusted && !copy)
        n_trusted = 0;
    if (copy)
        memcpy(copy, trusted, n_trusted * sizeof *copy);
    pthread_mutex_lock(&ct.mu);
    old = ct.trusted;
    ct.trusted = copy;
    ct.n_trusted = n_trusted;
    ct.cap = cap_per_client;
    pthread_mutex_unlock(&ct.mu);
    free(old);
}

void clients_watch(const int *listen_fds, int n)
{
    pthread_mutex_lock(&ct.mu);
    for (int i = 0; i < n && i < 64; i++)
        ct.listeners[i] = listen_fds[i];
    __atomic_store_n(&ct.n_listeners, n < 64 ? n : 64, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ct.mu);
}

long clients_open(void)
{
    return __atomic_load_n(&ct.open, __ATOMIC_RELAXED);
}

int clients_enter(const struct client_key *k, int cap)
{
    int r;

    pthread_mutex_lock(&ct.mu);
    r = take(k, cap);
    pthread_mutex_unlock(&ct.mu);
    return r;
}

void clients_leave(const struct client_key *k)
{
    pthread_mutex_lock(&ct.mu);
    give_back(k);
    pthread_mutex_unlock(&ct.mu);
}

/* --- accept() and close(), interposed ------------------------------------------------------ */

typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*close_fn)(int);

static void *next_symbol(void **slot, const char *name)
{
    void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

    if (!fn) {
        fn = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

static int real_close(int fd)
{
    static void *fn;
    return ((close_fn)next_symbol(&fn, "close"))(fd);
}

/* A connection just accepted on listener lfd: counted, or closed at once past the cap.
 * Returns fd, or -1 with errno set when it was refused. */
static int admit(int lfd, int fd)
{
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    struct client_key k;
    bool watched = false;
    int refused = 0;

    if (fd < 0) {
        /* a listener replaced by a stand-in at shutdown (sockets.h) is woken by a datagram:
         * read it, or civetweb's accept loop would find it again and spin */
        if (errno == EOPNOTSUPP) {
            int saved = errno;
            char b;
            (void)!recv(lfd, &b, 1, MSG_DONTWAIT);
            errno = saved;
        }
        return fd;
    }
    if (!__atomic_load_n(&ct.n_listeners, __ATOMIC_RELAXED))
        return fd;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 ||
        client_key_from_sockaddr((struct sockaddr *)&peer, &k) != 0)
        return fd;
    pthread_mutex_lock(&ct.mu);
    for (int i = 0; i < __atomic_load_n(&ct.n_listeners, __ATOMIC_RELAXED) && !watched; i++)
        watched = ct.listeners[i] == lfd;
    if (watched && fd < ct.max_fds) {
        /* a trusted proxy carries many clients: its requests are capped per client instead */
        int cap = cidr_list_has(ct.trusted, ct.n_trusted, &k) ? 0 : ct.cap;
        if (take(&k, cap) == 0) {
            ct.fds[fd].key = k;
            __atomic_store_n(&ct.fds[fd].used, 1, __ATOMIC_RELEASE);
            metrics_connections(__atomic_add_fetch(&ct.open, 1, __ATOMIC_RELAXED));
        } else {
            refused = 1;
        }
    }
    pthread_mutex_unlock(&ct.mu);
    if (!refused)
        return fd;
    real_close(fd);
    shed_note(REJECT_CLIENT_CAP);
    errno = ECONNABORTED; /* civetweb ignores a failed accept and polls again */
    return -1;
}

int accept(int lfd, struct sockaddr *addr, socklen_t *len)
{
    static void *fn;
    return admit(lfd, ((accept_fn)next_symbol(&fn, "accept"))(lfd, addr, len));
}

int accept4(int lfd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static void *fn;
    return admit(lfd, ((accept4_fn)next_symbol(&fn, "accept4"))(lfd, addr, len, flags));
}

int close(int fd)
{
    /* counted out before the descriptor is released: once it is, accept() may reuse it */
    if (fd >= 0 && fd < __atomic_load_n(&ct.max_fds, __ATOMIC_ACQUIRE) &&
        __atomic_load_n(&ct.fds[fd].used, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&ct.mu);
        if (ct.fds[fd].used) {
            __atomic_store_n(&ct.fds[fd].used, 0, __ATOMIC_RELEASE);
            give_back(&ct.fds[fd].key);
            metrics_connections(__atomic_sub_fetch(&ct.open, 1, __ATOMIC_RELAXED));
        }
        pthread_mutex_unlock(&ct.mu);
    }
    return real_close(fd);
}
