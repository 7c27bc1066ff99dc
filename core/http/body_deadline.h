/*
 * Deadlines for blocking body reads. civetweb's mg_read() keeps reading until it has every
 * byte asked for, so a client dripping its body can hold a worker forever, and civetweb
 * exposes no socket to time out. Each worker thread arms its own slot (no shared lock on
 * the request path) before reading; when a deadline passes, the watchdog thread finds that
 * connection's socket by its address pair and shuts down its read side, so the blocked read
 * returns at once and the handler can answer 408. Its tick also ends shedding episodes
 * (shed.h).
 */
#ifndef WH_WATCHDOG_H
#define WH_WATCHDOG_H

#include <stdbool.h>

struct body_deadlines;

/* slots: the most threads that will arm at once (civetweb's worker count). */
struct body_deadlines *body_deadline_start(int slots);
void body_deadline_stop(struct body_deadlines *w);

/* Arms the calling thread's slot for the connection remote_addr:remote_port -> local_port.
 * Returns a slot handle (>= 0), or -1 if none is free (the read then runs without a cut). */
int body_deadline_arm(struct body_deadlines *w, long long deadline_ms, const char *remote_addr,
                      int remote_port, int local_port);
/* Disarms; returns true if the watchdog fired on this slot (the read was cut). */
bool body_deadline_disarm(struct body_deadlines *w, int slot);
/* The same for the calling thread's slot, whatever armed it (false if it has none). */
bool body_deadline_disarm_mine(struct body_deadlines *w);

#endif
