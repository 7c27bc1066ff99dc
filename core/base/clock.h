/*
 * Clocks, in the units the rest of the code speaks: monotonic milliseconds for deadlines and
 * durations, wall-clock seconds for timestamps, and absolute CLOCK_MONOTONIC timespecs for
 * timed waits. Every deadline is monotonic: a wall clock stepped by NTP, or a year ahead,
 * moves no wait. Condition variables that are waited on with a deadline are made with
 * wh_cond_init. No state.
 */
#ifndef WH_CLOCK_H
#define WH_CLOCK_H

#include <pthread.h>
#include <time.h>

static inline long long wh_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline long long wh_mono_ms(void)
{
    return wh_mono_ns() / 1000000;
}

/* Milliseconds with a fraction, for measured durations. */
static inline double wh_mono_ms_f(void)
{
    return (double)wh_mono_ns() / 1e6;
}

/* Unix time in seconds, with a fraction. */
static inline double wh_now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A condition variable whose timed waits take CLOCK_MONOTONIC deadlines (wh_deadline_in). */
static inline int wh_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc;

    if ((rc = pthread_condattr_init(&a)) != 0) return rc;
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0) rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

/* *t = now + us microseconds on CLOCK_MONOTONIC: for pthread_cond_timedwait on a condition
 * variable made by wh_cond_init, and pthread_clockjoin_np(..., CLOCK_MONOTONIC, t). */
static inline void wh_deadline_in_us(struct timespec *t, long long us)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_sec += (time_t)(us / 1000000);
    t->tv_nsec += (long)(us % 1000000) * 1000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static inline void wh_deadline_in(struct timespec *t, int ms)
{
    wh_deadline_in_us(t, (long long)ms * 1000);
}

#endif
