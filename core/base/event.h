/*
 * An event as handlers receive it, and what one handler call came to. Shared by every kind
 * of handler (Lua, plugin, exec:), by durable mode's deliveries and by `wapphook try`.
 */
#ifndef WH_EVENT_H
#define WH_EVENT_H

#include <stddef.h>

struct wh_header {
    const char *name;
    const char *value;
};

/* Borrows everything from its request (or stored delivery): valid for one dispatch. */
struct wh_event {
    const char *type;
    const char *body; /* a JSON object, checked by json_text_check(); NUL-terminated */
    size_t body_len;
    double received_at;
    const struct wh_header *headers;
    int n_headers;
    long long id;           /* durable mode: the spool's event id; 0 in sync mode */
    unsigned long long seq; /* sync mode: from wh_event_next_seq(), for its id */
    int attempt;            /* 1-based (0 counts as 1) */
};

/* The next sync-mode event number of this process (1, 2, ...). */
unsigned long long wh_event_next_seq(void);

/* The event's id as handlers see it (WAPPHOOK_EVENT_ID, a plugin's event->id): the spool's
 * id, or in sync mode "sync-<this process's random tag>-<seq>", unique across restarts and
 * machines (a pid is not: in a container it is always the same). Returns out. */
#define WH_EVENT_ID_MAX 48
char *wh_event_id_text(const struct wh_event *ev, char out[WH_EVENT_ID_MAX]);

/* How a handler call ended, whatever ran it. TIMEOUT: its budget ran out (it was stopped);
 * MEMORY: it reached its memory cap (Lua only). */
enum wh_outcome { WH_OUTCOME_OK, WH_OUTCOME_FAILED, WH_OUTCOME_TIMEOUT, WH_OUTCOME_MEMORY };

/* "ok", "failed", "timeout", "memory limit": the log's "outcome" field */
const char *wh_outcome_name(enum wh_outcome o);

/* Finds header `name` (any case) among n headers. Returns how many times it occurs and sets
 * *value to the first occurrence (NULL if none). */
int wh_header_find(const struct wh_header *h, int n, const char *name, const char **value);

#endif
