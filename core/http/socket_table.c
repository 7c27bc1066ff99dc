#include "socket_table.h"

#include "base/base.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int socket_table_port(const struct sockaddr_storage *s)
{
    if (s->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)s)->sin_port);
    if (s->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)s)->sin6_port);
    return -1;
}

bool socket_table_listening_on(int fd, const struct sockaddr_storage *local, const int *ports,
                               int n_ports)
{
    int listening = 0;
    socklen_t len = sizeof listening;

    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening)
        return false;
    for (int i = 0; i < n_ports; i++)
        if (ports[i] == socket_table_port(local)) return true;
    return false;
}

void socket_table_foreach(int (*fn)(int fd, const struct sockaddr_storage *local, void *arg),
                          void *arg)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    if (!d) return;
    while ((e = readdir(d))) {
        struct sockaddr_storage local;
        socklen_t ll = sizeof local;
        int fd = atoi(e->d_name);

        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d)) continue;
        if (getsockname(fd, (struct sockaddr *)&local, &ll) != 0) continue; /* not a socket */
        if (fn(fd, &local, arg)) break;
    }
    closedir(d);
}

struct stand_in_ctx {
    const int *ports;
    int n_ports;
    bool (*shared)(int fd);
    bool shared_swapped; /* a shared listener was swapped out: its poll needs a signal */
    struct listen_stop *ls;
};

static socklen_t addr_len(int family)
{
    return family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static void send_wake(const struct sockaddr_storage *to)
{
    int fd = to->ss_family == AF_UNSPEC ? -1 : socket(to->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0) return;
    (void)!sendto(fd, "w", 1, MSG_DONTWAIT, (const struct sockaddr *)to, addr_len(to->ss_family));
    close(fd);
}

/* A UDP socket bound to the loopback address of family, put in fd's place. A poll already
 * sleeping on the listener keeps waiting on it (and keeps it alive, still listening): so the
 * listener is also shut down, which stops it listening now (new connections are refused, not
 * queued) and wakes that poll; it then finds a datagram on the stand-in and returns, and the
 * next poll sleeps on the stand-in (civetweb's failed accept() on it reads the datagram, see
 * clients.c). */
static int stand_in(int fd, int family, bool shared, struct sockaddr_storage *wake)
{
    int udp = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0), old;
    socklen_t len = addr_len(family);

    if (udp < 0) return -1;
    memset(wake, 0, sizeof *wake);
    wake->ss_family = (sa_family_t)family;
    if (family == AF_INET6)
        ((struct sockaddr_in6 *)(void *)wake)->sin6_addr = in6addr_loopback;
    else
        ((struct sockaddr_in *)(void *)wake)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(udp, (struct sockaddr *)wake, len) != 0 ||
        getsockname(udp, (struct sockaddr *)wake, &len) != 0)
        wake->ss_family = AF_UNSPEC; /* refuses connections all the same; wakes nothing */
    old = shared ? -1 : dup(fd);
    dup2(udp, fd); /* atomically: fd now names the stand-in */
    close(udp);
    send_wake(wake);
    if (old >= 0) {
        shutdown(old, SHUT_RDWR);
        close(old);
    }
    return 0;
}

/* A shared listener cannot be shut down to wake the poll sleeping on it: a signal does
 * (poll returns EINTR, civetweb's loop polls again, on the stand-in now). Every civetweb
 * master thread gets it; one that was not concerned just polls again. */
#define WAKE_SIGNAL (SIGRTMIN + 2)

static void on_wake_signal(int sig)
{
    (void)sig;
}

static void install_wake_handler(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_wake_signal; /* no SA_RESTART: the poll must return */
    sigemptyset(&sa.sa_mask);
    sigaction(WAKE_SIGNAL, &sa, NULL);
}

static void interrupt_accept_loops(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;

    pthread_once(&once, install_wake_handler);
    if (!d) return;
    while ((e = readdir(d))) {
        char path[300], comm[32] = "";
        FILE *f;

        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        if (!(f = fopen(path, "r"))) continue;
        if (fgets(comm, sizeof comm, f) && strncmp(comm, "civetweb-master", 15) == 0)
            syscall(SYS_tgkill, getpid(), atoi(e->d_name), WAKE_SIGNAL);
        fclose(f);
    }
    closedir(d);
}

static int stand_in_one(int fd, const struct sockaddr_storage *local, void *arg)
{
    struct stand_in_ctx *c = arg;
    bool shared;

    if (c->ls->n >= 64 || !socket_table_listening_on(fd, local, c->ports, c->n_ports)) return 0;
    shared = c->shared && c->shared(fd);
    c->shared_swapped |= shared;
    if (stand_in(fd, local->ss_family, shared, &c->ls->wake[c->ls->n]) == 0) c->ls->n++;
    return 0;
}

int socket_table_stand_in(const int *ports, int n_ports, bool (*shared)(int fd),
                          struct listen_stop *ls)
{
    struct stand_in_ctx c = {.ports = ports, .n_ports = n_ports, .shared = shared, .ls = ls};

    ls->n = 0;
    socket_table_foreach(stand_in_one, &c);
    if (c.shared_swapped) interrupt_accept_loops();
    return ls->n;
}

struct waker {
    const struct listen_stop *ls;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void *waker_main(void *arg)
{
    struct waker *w = arg;

    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        struct timespec until;

        wh_deadline_in(&until, 20); /* mg_stop has set its flag by then */
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
        for (int i = 0; !w->done && i < w->ls->n; i++)
            send_wake(&w->ls->wake[i]);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void socket_table_stop_waking(const struct listen_stop *ls, void (*stop)(void *), void *arg)
{
    struct waker w = {.ls = ls, .done = false};
    pthread_t th;
    bool started;

    pthread_mutex_init(&w.mu, NULL);
    wh_cond_init(&w.cv);
    started = ls->n > 0 && pthread_create(&th, NULL, waker_main, &w) == 0;
    stop(arg);
    if (started) {
        pthread_mutex_lock(&w.mu);
        w.done = true;
        pthread_cond_signal(&w.cv);
        pthread_mutex_unlock(&w.mu);
        pthread_join(th, NULL);
    }
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
}
