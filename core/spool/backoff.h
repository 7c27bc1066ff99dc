/*
 * The retry delay of durable mode (docs/durability.md, delivery.retry): exponential, capped,
 * with jitter so that the retries of many events failed at once spread out. Pure.
 */
#ifndef WH_BACKOFF_H
#define WH_BACKOFF_H

/* The delay before retry `attempt` (the attempts made so far, >= 1), in ms: initial_ms times
 * 2^(attempt - 1), capped at max_ms, then scaled by 0.5 + 0.5 * r, r in [0, 1] (a random
 * draw): between half and all of it. */
double backoff_delay_ms(long long initial_ms, long long max_ms, int attempt, double r);

#endif
