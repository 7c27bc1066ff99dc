/* The console's questions on a spool, timed in-process (what GET /api/events costs without
 * HTTP): the newest 50, the next page, dead letters, a rare type, pending ones, an event by
 * its id, by its message id (a dedupe key), and a text that is nowhere (one bounded scan).
 * Usage: bench_spool_queries MANIFEST OLD_ID MESSAGE_ID RARE_TYPE
 * Prints the worst and the median of 11 runs of each, in milliseconds. */
#include "conf/conf.h"
#include "spool/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int seen;
static void count(void *arg, const struct store_event *e)
{
    (void)arg;
    (void)e;
    seen++;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    struct wh_config *cfg;
    struct store_admin *a;
    const struct admin_ops *ops;
    char err[4096];
    long long next = 0, page2 = 0;

    if (argc != 5) {
        fprintf(stderr, "usage: bench_spool_queries MANIFEST OLD_ID MESSAGE_ID RARE_TYPE\n");
        return 2;
    }
    if (manifest_load_no_secrets(argv[1], &cfg, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    ops = spool_is_pg(cfg->spool) ? &store_pg_admin : &store_sqlite_admin;
    if (ops->open(cfg, &a, err, sizeof err) || !ops->events) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    {
        struct store_query first = {.state = -1, .limit = 50};
        ops->events(a, &first, count, NULL, &page2);
    }
    struct {
        const char *name;
        struct store_query q;
    } qs[] = {
        {"newest 50", {.state = -1, .limit = 50}},
        {"the next page", {.state = -1, .limit = 50, .before = page2}},
        {"state=dead", {.state = EV_DEAD, .limit = 50}},
        {"state=pending", {.state = EV_PENDING, .limit = 50}},
        {"type=<rare>", {.type = argv[4], .state = -1, .limit = 50}},
        {"q=<old event id>", {.q = argv[2], .state = -1, .limit = 50}},
        {"q=<its message id>", {.q = argv[3], .state = -1, .limit = 50}},
        {"q=<text nowhere>", {.q = "no event says this", .state = -1, .limit = 50}},
    };
    printf("console queries on the spool (ms, worst / median of 11, events found):\n");
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        double t[11];
        for (int k = 0; k < 11; k++) {
            double t0 = now_ms();
            seen = 0;
            if (ops->events(a, &qs[i].q, count, NULL, &next)) {
                fprintf(stderr, "%s: %s\n", qs[i].name, ops->error(a));
                return 1;
            }
            t[k] = now_ms() - t0;
        }
        qsort(t, 11, sizeof t[0], by_value);
        printf("  %-22s %8.2f / %6.2f   %d%s\n", qs[i].name, t[10], t[5], seen,
               next ? " (and a next page)" : "");
    }
    ops->close(a);
    manifest_free(cfg);
    return 0;
}
