#define _GNU_SOURCE
#include "stuck.h"

#include "base/base.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#define SLOTS 512 /* threads that run handlers: workers, dispatchers, the main thread */
#define TICK_MS 100

struct slot {
    pthread_mutex_t mu; /* its owner thread's, and the monitor's once a call is overdue */
    int claimed;        /* set once, by the thread that owns it */
    long long start_ms; /* 0: no call */
    long long stuck_at_ms;
    bool reported;
    int budget_ms;
    char handler[160];
    char event[72];
} __attribute__((aligned(64)));

static struct slot slots[SLOTS];
static pthread_once_t slots_once = PTHREAD_ONCE_INIT;
static int n_stuck;

static struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool running, stopping;
} mon = {.mu = PTHREAD_MUTEX_INITIALIZER}; /* cv: made by stuck_start (monotonic) */

static void slots_init(void)
{
    wh_cond_init(&mon.cv);
    for (int i = 0; i < SLOTS; i++)
        pthread_mutex_init(&slots[i].mu, NULL);
}

static __thread int my_slot = -2; /* -2: not looked for yet; -1: none free */

int stuck_enter(const char *handler, const char *event, int budget_ms)
{
    struct slot *s;
    long long now = wh_mono_ms();

    if (my_slot == -2) {
        pthread_once(&slots_once, slots_init);
        my_slot = -1;
        for (int i = 0; i < SLOTS && my_slot < 0; i++) {
            int expect = 0;
            if (__atomic_compare_exchange_n(&slots[i].claimed, &expect, 1, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_RELAXED))
                my_slot = i;
        }
    }
    if (my_slot < 0) return -1;
    s = &slots[my_slot];
    pthread_mutex_lock(&s->mu);
    snprintf(s->handler, sizeof s->handler, "%s", handler);
    snprintf(s->event, sizeof s->event, "%s", event);
    s->budget_ms = budget_ms;
    s->reported = false;
    __atomic_store_n(&s->stuck_at_ms, now + 2LL * budget_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&s->start_ms, now, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
    return my_slot;
}

void stuck_leave(int slot)
{
    struct slot *s;
    bool was_stuck;
    long long ran;

    if (slot < 0) return;
    s = &slots[slot];
    pthread_mutex_lock(&s->mu);
    was_stuck = s->reported;
    ran = wh_mono_ms() - s->start_ms;
    __atomic_store_n(&s->start_ms, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
    if (was_stuck) {
        metrics_set_stuck(__atomic_sub_fetch(&n_stuck, 1, __ATOMIC_ACQ_REL));
        log_msg(LOG_WARN, "stuck handler returned", LOG_S("handler", s->handler),
                LOG_S("event", s->event), LOG_I("duration_ms", ran));
    }
}

int stuck_count(void)
{
    return __atomic_load_n(&n_stuck, __ATOMIC_ACQUIRE);
}

size_t stuck_json(char *out, size_t cap)
{
    size_t len = 0;
    long long now = wh_mono_ms();

    if (cap < 3) return 0;
    out[len++] = '[';
    for (int i = 0; i < SLOTS; i++) {
        struct slot *s = &slots[i];
        char h[JSONESC_MAX(sizeof s->handler)], e[JSONESC_MAX(sizeof s->event)];
        int n;

        if (!__atomic_load_n(&s->claimed, __ATOMIC_ACQUIRE) ||
            !__atomic_load_n(&s->start_ms, __ATOMIC_ACQUIRE))
            continue;
        pthread_mutex_lock(&s->mu);
        if (!s->reported || !s->start_ms) {
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        h[json_escape(h, s->handler, strlen(s->handler))] = '\0';
        e[json_escape(e, s->event, strlen(s->event))] = '\0';
        n = snprintf(out + len, cap - len,
                     "%s{\"handler\":\"%s\",\"event\":\"%s\",\"running_ms\":%lld}",
                     len > 1 ? "," : "", h, e, now - s->start_ms);
        pthread_mutex_unlock(&s->mu);
        if (n < 0 || (size_t)n >= cap - len - 1) break; /* what fits */
        len += (size_t)n;
    }
    out[len++] = ']';
    out[len] = '\0';
    return len;
}

static void check_slots(void)
{
    long long now = wh_mono_ms();

    for (int i = 0; i < SLOTS; i++) {
        struct slot *s = &slots[i];
        char handler[sizeof s->handler], event[sizeof s->event];
        long long running;
        int budget;

        if (!__atomic_load_n(&s->claimed, __ATOMIC_ACQUIRE) ||
            !__atomic_load_n(&s->start_ms, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&s->stuck_at_ms, __ATOMIC_RELAXED) > now)
            continue;
        pthread_mutex_lock(&s->mu);
        if (!s->start_ms || s->reported || s->stuck_at_ms > now) {
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        s->reported = true;
        running = now - s->start_ms;
        budget = s->budget_ms;
        memcpy(handler, s->handler, sizeof handler);
        memcpy(event, s->event, sizeof event);
        pthread_mutex_unlock(&s->mu);
        metrics_set_stuck(__atomic_add_fetch(&n_stuck, 1, __ATOMIC_ACQ_REL));
        log_msg(LOG_WARN, "handler stuck: running 2x past its budget", LOG_S("handler", handler),
                LOG_S("event", event), LOG_I("running_ms", running), LOG_I("budget_ms", budget));
    }
}

/* Under systemd with WatchdogSec=, the monitor pings only while nothing is stuck: a stuck
 * handler then gets the process restarted (Restart=on-failure) without any other probe. */
static void *monitor_main(void *arg)
{
    uint64_t watchdog_us = 0;
    long long last_ping = 0;

    (void)arg;
    if (sd_watchdog_enabled(0, &watchdog_us) <= 0) watchdog_us = 0;
    pthread_mutex_lock(&mon.mu);
    while (!mon.stopping) {
        struct timespec until;

        wh_deadline_in(&until, TICK_MS);
        pthread_cond_timedwait(&mon.cv, &mon.mu, &until);
        pthread_mutex_unlock(&mon.mu);
        check_slots();
        exec_reap(); /* supervisors of commands whose calls ended at their deadline */
        if (watchdog_us && stuck_count() == 0 &&
            wh_mono_ms() - last_ping >= (long long)(watchdog_us / 2000)) {
            systemd_notify("WATCHDOG=1", 0); /* a missed ping is not worth waiting for */
            last_ping = wh_mono_ms();
        }
        pthread_mutex_lock(&mon.mu);
    }
    pthread_mutex_unlock(&mon.mu);
    return NULL;
}

int stuck_start(void)
{
    pthread_once(&slots_once, slots_init);
    mon.stopping = false;
    if (pthread_create(&mon.thread, NULL, monitor_main, NULL) != 0) return -1;
    pthread_setname_np(mon.thread, "stuck-monitor");
    mon.running = true;
    return 0;
}

void stuck_stop(void)
{
    if (!mon.running) return;
    pthread_mutex_lock(&mon.mu);
    mon.stopping = true;
    pthread_cond_signal(&mon.cv);
    pthread_mutex_unlock(&mon.mu);
    pthread_join(mon.thread, NULL);
    mon.running = false;
}
