#define _GNU_SOURCE
#include "body_deadline.h"

#include "base/base.h"

#include "socket_table.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define TICK_MS 20

/* FREE: no thread owns it; IDLE: owned, no read under way; ARMED: a read with a deadline;
 * FIRED: the deadline passed and the read side was shut down. */
enum slot_state { SLOT_FREE, SLOT_IDLE, SLOT_ARMED, SLOT_FIRED };

struct slot {
    pthread_mutex_t mu; /* taken by its owner thread and, on expiry only, the watchdog */
    enum slot_state state;
    long long deadline_ms;
    struct sockaddr_storage peer;
    int local_port;
} __attribute__((aligned(64)));

struct body_deadlines {
    pthread_t thread;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;
    bool stopping;
    int n;
    struct slot slots[];
};

static bool same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return false;
}

/* The socket of a connection still inside its handler: its 4-tuple is unique. */
static int cut_if_ours(int fd, const struct sockaddr_storage *local, void *arg)
{
    const struct slot *s = arg;
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;

    if (socket_table_port(local) != s->local_port ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 || !same_peer(&peer, &s->peer))
        return 0;
    shutdown(fd, SHUT_RD);
    return 1;
}

static void *watchdog_main(void *arg)
{
    struct body_deadlines *w = arg;

    pthread_mutex_lock(&w->stop_mu);
    while (!w->stopping) {
        struct timespec until;
        long long now;

        wh_deadline_in(&until, TICK_MS);
        pthread_cond_timedwait(&w->stop_cv, &w->stop_mu, &until);
        now = wh_mono_ms();
        for (int i = 0; i < w->n; i++) {
            struct slot *s = &w->slots[i];

            /* unlocked peek; the decision is re-checked under the slot's lock */
            if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_ARMED ||
                __atomic_load_n(&s->deadline_ms, __ATOMIC_RELAXED) > now)
                continue;
            pthread_mutex_lock(&s->mu);
            if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_ARMED &&
                __atomic_load_n(&s->deadline_ms, __ATOMIC_RELAXED) <= now) {
                socket_table_foreach(cut_if_ours, s);
                __atomic_store_n(&s->state, SLOT_FIRED, __ATOMIC_RELEASE);
            }
            pthread_mutex_unlock(&s->mu);
        }
        shed_tick(now); /* the end of a shedding episode is logged from here */
    }
    pthread_mutex_unlock(&w->stop_mu);
    return NULL;
}

struct body_deadlines *body_deadline_start(int slots)
{
    struct body_deadlines *w = calloc(1, sizeof *w + (size_t)slots * sizeof w->slots[0]);

    if (!w) return NULL;
    w->n = slots;
    for (int i = 0; i < slots; i++)
        pthread_mutex_init(&w->slots[i].mu, NULL);
    pthread_mutex_init(&w->stop_mu, NULL);
    wh_cond_init(&w->stop_cv);
    if (pthread_create(&w->thread, NULL, watchdog_main, w) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void body_deadline_stop(struct body_deadlines *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->stop_mu);
    w->stopping = true;
    pthread_cond_signal(&w->stop_cv);
    pthread_mutex_unlock(&w->stop_mu);
    pthread_join(w->thread, NULL);
    for (int i = 0; i < w->n; i++)
        pthread_mutex_destroy(&w->slots[i].mu);
    pthread_mutex_destroy(&w->stop_mu);
    pthread_cond_destroy(&w->stop_cv);
    free(w);
}

/* Each thread keeps the slot it first claimed; threads never outnumber slots in practice
 * (civetweb's workers), and a thread that finds none free simply runs uncut. */
static __thread int my_slot = -1;
static __thread const struct body_deadlines *my_owner;

int body_deadline_arm(struct body_deadlines *w, long long deadline_ms, const char *remote_addr,
                      int remote_port, int local_port)
{
    struct sockaddr_storage peer;
    struct slot *s;

    memset(&peer, 0, sizeof peer);
    if (inet_pton(AF_INET, remote_addr, &((struct sockaddr_in *)&peer)->sin_addr) == 1) {
        peer.ss_family = AF_INET;
        ((struct sockaddr_in *)&peer)->sin_port = htons((uint16_t)remote_port);
    } else if (inet_pton(AF_INET6, remote_addr, &((struct sockaddr_in6 *)&peer)->sin6_addr) == 1) {
        peer.ss_family = AF_INET6;
        ((struct sockaddr_in6 *)&peer)->sin6_port = htons((uint16_t)remote_port);
    } else {
        return -1;
    }
    if (my_owner != w || my_slot < 0) {
        my_slot = -1;
        for (int i = 0; i < w->n && my_slot < 0; i++) {
            enum slot_state expect = SLOT_FREE;
            if (__atomic_compare_exchange_n(&w->slots[i].state, &expect, SLOT_IDLE, false,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                my_slot = i;
        }
        if (my_slot < 0) return -1;
        my_owner = w;
    }
    s = &w->slots[my_slot];
    pthread_mutex_lock(&s->mu);
    s->peer = peer;
    s->local_port = local_port;
    __atomic_store_n(&s->deadline_ms, deadline_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&s->state, SLOT_ARMED, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
    return my_slot;
}

bool body_deadline_disarm(struct body_deadlines *w, int slot)
{
    struct slot *s;
    bool fired;

    if (slot < 0) return false;
    s = &w->slots[slot];
    pthread_mutex_lock(&s->mu);
    /* state is also CAS-probed by threads looking for a free slot: atomics only */
    fired = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_FIRED;
    __atomic_store_n(&s->state, SLOT_IDLE, __ATOMIC_RELEASE); /* still this thread's */
    pthread_mutex_unlock(&s->mu);
    return fired;
}

bool body_deadline_disarm_mine(struct body_deadlines *w)
{
    if (my_owner != w || my_slot < 0) return false;
    return body_deadline_disarm(w, my_slot);
}
