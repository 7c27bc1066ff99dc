/*
 * Refusals for load and for hostile clients (docs/security.md, "Hostile clients and overload"):
 * counted by reason for wapphook_rejected_total, and logged once when refusing starts and once when
 * it stops, never per request (a flood of refusals must not become a flood of log lines).
 * Process-wide; shed_note is one atomic add and a clock read.
 */
#ifndef WH_SHED_H
#define WH_SHED_H

enum reject_reason {
    REJECT_OVERLOADED,     /* 503: max_inflight or a handler's max_concurrent */
    REJECT_CLIENT_CAP,     /* a client past max_connections_per_client */
    REJECT_FORBIDDEN,      /* 403: not in allow_from */
    REJECT_HEADER_TIMEOUT, /* headers not complete within header_timeout_ms */
    REJECT_REASONS
};

/* Quiet this long after the last refusal, and the episode is over. */
#define SHED_QUIET_MS 3000

void shed_note(enum reject_reason r);
/* Logs the end of an episode once it has been quiet for SHED_QUIET_MS: call periodically. */
void shed_tick(long long now_ms);
unsigned long long shed_count(enum reject_reason r);
const char *shed_reason_name(enum reject_reason r);

#endif
