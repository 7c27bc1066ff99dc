/*
 * Handler calls in flight, and the ones that are stuck. Lua calls end at their budget, but a
 * C plugin (or C code the runtime cannot stop) may not: every handler call registers in its
 * thread's slot (no shared lock on the request path), and a monitor thread reports a call
 * still running 2x past its budget with a warn log line, the wapphook_stuck_handlers gauge
 * and a degraded /healthz, until the call returns; under systemd's WatchdogSec= it also
 * stops the WATCHDOG=1 pings while a call is stuck. Process-wide; slots copy the names they
 * show, so nothing here points into a generation.
 */
#ifndef WH_STUCK_H
#define WH_STUCK_H

#include <stddef.h>

/* The monitor thread (serve only; without it calls are tracked but never reported). */
int stuck_start(void);
void stuck_stop(void);

/* Around one handler call: a slot handle (or -1 when this thread has none) to give back. */
int stuck_enter(const char *handler, const char *event, int budget_ms);
void stuck_leave(int slot);

/* Calls reported stuck now. */
int stuck_count(void);
/* Writes them as a JSON array ([{"handler":..,"event":..,"running_ms":N},...]) into out,
 * cut to fit cap; returns its length. */
size_t stuck_json(char *out, size_t cap);

#endif
