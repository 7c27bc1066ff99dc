/*
 * Prometheus metrics. Every update on the request path is one relaxed atomic add: no lock.
 * Labelled series (per event type, per handler) are registered when a generation is built
 * and never freed, so their pointers stay valid across reloads and the number of label
 * values is bounded by what manifests name, never by what senders send. Process-wide.
 */
#ifndef WH_METRICS_H
#define WH_METRICS_H

#include <stddef.h>

struct event_series;
struct handler_series;

enum event_result { EVENT_OK, EVENT_FAILED, EVENT_UNROUTED };

void metrics_init(void);

/* Find-or-register (takes a lock: call at build time, not per request). */
struct event_series *metrics_event_series(const char *type);
struct handler_series *metrics_handler_series(const char *name);
/* Event types that no manifest names share this series ("other"). */
struct event_series *metrics_other_events(void);

void metrics_request(const char *method, int status);
void metrics_signature_failure(void);
/* Open connections on the public listeners (clients.h keeps the count). */
void metrics_connections(long open);
void metrics_event(struct event_series *s, enum event_result r);
void metrics_handler(struct handler_series *s, double seconds, int ok);
/* What a handler does (docs/handlers.md, "Handlers that act"), counted on the handler the calling
 * thread runs. */
enum metrics_exec_result {
    MX_OK,
    MX_FAILED,
    MX_TIMEOUT,
    MX_NOT_ALLOWED,
    MX_BUSY,
    MX_SPAWN,
    MX_RESULTS
};
enum metrics_http_result {
    MH_1XX,
    MH_2XX,
    MH_3XX,
    MH_4XX,
    MH_5XX, /* responses, by status class */
    MH_TIMEOUT,
    MH_REFUSED,
    MH_NOT_ALLOWED,
    MH_DNS,
    MH_CONNECT,
    MH_TLS,
    MH_TOO_LARGE,
    MH_PROTOCOL,
    MH_RESULTS
};
void metrics_set_current_handler(struct handler_series *s);
void metrics_http(int r); /* an enum metrics_http_result */
void metrics_exec(enum metrics_exec_result r);
void metrics_lua_timeout(void);
void metrics_lua_memory_error(void);
void metrics_reload(int ok);
void metrics_set_generation(unsigned long g);
void metrics_set_stuck(int n); /* stuck.h keeps it */
unsigned long metrics_generation(void);

/* The console's sync-mode history (console/history.c): bytes held, or -1 for none. */
void metrics_history_bytes(long long bytes);

/* Durable delivery (spool.h). */
void metrics_spool(long long pending, long long dead);
void metrics_spool_commit(double seconds);
void metrics_delivery(const char *handler, int result); /* 0 ok, 1 failed (will retry), 2 dead */
void metrics_duplicate(void);

/* The exposition text (Prometheus text format 0.0.4); the caller frees it. NULL when out of
 * memory. */
char *metrics_render(size_t *len);

#endif
