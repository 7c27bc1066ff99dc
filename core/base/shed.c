#include "shed.h"

#include "clock.h"

#include "log.h"

#include <stdbool.h>

static const char *const names[REJECT_REASONS] = {"overloaded", "client_cap", "forbidden",
                                                  "header_timeout"};

static struct {
    unsigned long long count[REJECT_REASONS];
    unsigned long long at_start[REJECT_REASONS]; /* the counts when the episode began */
    long long last_ms, start_ms;
    int active;
} sh;

const char *shed_reason_name(enum reject_reason r)
{
    return names[r];
}

unsigned long long shed_count(enum reject_reason r)
{
    return __atomic_load_n(&sh.count[r], __ATOMIC_RELAXED);
}

void shed_note(enum reject_reason r)
{
    long long now = wh_mono_ms();
    int idle = 0;

    __atomic_add_fetch(&sh.count[r], 1, __ATOMIC_RELAXED);
    __atomic_store_n(&sh.last_ms, now, __ATOMIC_RELAXED);
    if (__atomic_load_n(&sh.active, __ATOMIC_RELAXED) ||
        !__atomic_compare_exchange_n(&sh.active, &idle, 1, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
        return;
    /* this thread opened the episode: it alone writes the start figures */
    for (int i = 0; i < REJECT_REASONS; i++)
        __atomic_store_n(&sh.at_start[i], shed_count(i) - (i == (int)r), __ATOMIC_RELAXED);
    __atomic_store_n(&sh.start_ms, now, __ATOMIC_RELAXED);
    log_msg(LOG_WARN, "shedding: refusing clients", LOG_S("reason", names[r]));
}

void shed_tick(long long now_ms)
{
    int on = 1;
    unsigned long long n[REJECT_REASONS];

    if (!__atomic_load_n(&sh.active, __ATOMIC_ACQUIRE) ||
        now_ms - __atomic_load_n(&sh.last_ms, __ATOMIC_RELAXED) < SHED_QUIET_MS ||
        !__atomic_compare_exchange_n(&sh.active, &on, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return;
    for (int i = 0; i < REJECT_REASONS; i++)
        n[i] = shed_count(i) - __atomic_load_n(&sh.at_start[i], __ATOMIC_RELAXED);
    log_msg(LOG_INFO, "shedding stopped", LOG_I("overloaded", n[REJECT_OVERLOADED]),
            LOG_I("client_cap", n[REJECT_CLIENT_CAP]), LOG_I("forbidden", n[REJECT_FORBIDDEN]),
            LOG_I("header_timeout", n[REJECT_HEADER_TIMEOUT]),
            LOG_I("duration_ms", __atomic_load_n(&sh.last_ms, __ATOMIC_RELAXED) -
                                     __atomic_load_n(&sh.start_ms, __ATOMIC_RELAXED)));
}
