/*
 * What happened lately, for the console (docs/operations.md, "The console"): live notices
 * for its stream (an event received, an outcome recorded) and counts in 10 s buckets for its
 * chart and stats. In memory only, from any thread; a notice costs nothing while nobody
 * reads the stream, and a reader that falls behind is told so rather than slowing anyone.
 */
#ifndef WH_ACTIVITY_H
#define WH_ACTIVITY_H

#include "buf.h"
#include "event.h"

#define ACTIVITY_BUCKET_S 10
#define ACTIVITY_WINDOW_MAX_S 86400 /* buckets kept: a day of them */

/* --- the stream's notices ---------------------------------------------------------------- */

enum activity_kind { ACTIVITY_RECEIVED, ACTIVITY_OUTCOME };

/* Event id (the spool's, or the sync history's) had this happen: for the readers, if any. */
void activity_notice(enum activity_kind kind, long long id);

/* A reader takes a place (-1: ACTIVITY_READERS_MAX are reading already), then waits for what
 * comes after *seq. */
#define ACTIVITY_READERS_MAX 8
#define ACTIVITY_READERS_MAX_PLUS_2 10 /* the admin listener's threads with the console */
int activity_reader_join(unsigned long long *seq);
void activity_reader_leave(void);
/* 1 with the next notice (and *seq past it), 0 when timeout_ms passed first, -1 when the
 * reader fell behind by more than the notices kept (it must leave). */
int activity_next(unsigned long long *seq, int timeout_ms, enum activity_kind *kind, long long *id);

/* --- the counts -------------------------------------------------------------------------- */

/* An event accepted (durable mode: stored) or dispatched (sync mode: with its outcome,
 * ok, failed or unrouted, and its handlers' time; durable: WH_OUTCOME_OK and -1). */
enum activity_event {
    ACTIVITY_ACCEPTED,
    ACTIVITY_EVENT_OK,
    ACTIVITY_EVENT_FAILED,
    ACTIVITY_UNROUTED
};
void activity_event(const char *type, enum activity_event what, double duration_ms);
/* One handler call and how it ended. */
void activity_attempt(const char *handler, enum wh_outcome outcome, double duration_ms);

/* The last window_s seconds as JSON, into b: per type and per handler, counts by outcome and
 * p50/p99 durations (from a histogram: within 20%), and events and failed handler attempts per
 * bucket. */
void activity_stats_json(long long window_s, struct wh_buf *b);

#endif
