#include "clients.h"

#include "libc_overrides.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
        if (!(*p = calloc(1, sizeof **p))) return -1;
        (*p)->key = *k;
    }
    if (cap > 0 && (*p)->n >= cap) return -1;
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
        return 0;                           /* once per process: close() reads the table unlocked */
    t = calloc((size_t)max_fds, sizeof *t); /* its pages stay untouched until used */
    if (!t) return -1;
    pthread_mutex_lock(&ct.mu);
    ct.fds = t;
    __atomic_store_n(&ct.max_fds, max_fds, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ct.mu);
    return 0;
}

void clients_set_policy(int cap_per_client, const struct cidr *trusted, size_t n_trusted)
{
    struct cidr *copy = n_trusted ? malloc(n_trusted * sizeof *copy) : NULL, *old;

    if (n_trusted && !copy) n_trusted = 0;
    if (copy) memcpy(copy, trusted, n_trusted * sizeof *copy);
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

/* --- what accept() and close() call ---------------------------------------------------- */

/* A connection just accepted on listener lfd: counted, or closed at once past the cap.
 * Returns fd, or -1 with errno set when it was refused. */
int clients_admit(int lfd, int fd)
{
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    struct client_key k;
    bool watched = false;
    int refused = 0;

    if (fd < 0) {
        /* a listener replaced by a stand-in at shutdown (socket_table.h) is woken by a datagram:
         * read it, or civetweb's accept loop would find it again and spin */
        if (errno == EOPNOTSUPP) {
            int saved = errno;
            char b;
            (void)!recv(lfd, &b, 1, MSG_DONTWAIT);
            errno = saved;
        }
        return fd;
    }
    if (!__atomic_load_n(&ct.n_listeners, __ATOMIC_RELAXED)) return fd;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 ||
        address_from_sockaddr((struct sockaddr *)&peer, &k) != 0)
        return fd;
    pthread_mutex_lock(&ct.mu);
    for (int i = 0; i < __atomic_load_n(&ct.n_listeners, __ATOMIC_RELAXED) && !watched; i++)
        watched = ct.listeners[i] == lfd;
    if (watched && fd < ct.max_fds) {
        /* a trusted proxy carries many clients: its requests are capped per client instead */
        int cap = address_cidr_list_has(ct.trusted, ct.n_trusted, &k) ? 0 : ct.cap;
        if (take(&k, cap) == 0) {
            ct.fds[fd].key = k;
            __atomic_store_n(&ct.fds[fd].used, 1, __ATOMIC_RELEASE);
            metrics_connections(__atomic_add_fetch(&ct.open, 1, __ATOMIC_RELAXED));
        } else {
            refused = 1;
        }
    }
    pthread_mutex_unlock(&ct.mu);
    if (!refused) return fd;
    libc_close(fd);
    shed_note(REJECT_CLIENT_CAP);
    errno = ECONNABORTED; /* civetweb ignores a failed accept and polls again */
    return -1;
}

void clients_closing(int fd)
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
}
