#include "spool.h"

#include "base/base.h"

#include "conf/conf.h"
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const states[] = {"pending", "delivered", "dead"};

static int usage(void)
{
    fprintf(stderr, "usage: wapphook spool stats [-c FILE]\n"
                    "       wapphook spool list [--dead] [-c FILE]\n"
                    "       wapphook spool events [--type T] [--state S] [--q TEXT] [--before ID]\n"
                    "                             [--limit N] [-c FILE]\n"
                    "       wapphook spool replay ID... | --dead [-c FILE]\n"
                    "       wapphook spool purge --delivered [--older-than DURATION] [-c FILE]\n"
                    "DURATION: a number with s, m, h or d (e.g. 7d)\n"
                    "S: ok, pending, failed, dead or unrouted\n");
    return 2;
}

static int parse_duration(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || v < 0) return -1;
    if (!*end || !strcmp(end, "s"))
        *out = v;
    else if (!strcmp(end, "m"))
        *out = v * 60;
    else if (!strcmp(end, "h"))
        *out = v * 3600;
    else if (!strcmp(end, "d"))
        *out = v * 86400;
    else
        return -1;
    return 0;
}

static int stats(const struct admin_ops *ops, struct store_admin *a)
{
    struct store_stats st;

    if (ops->stats(a, &st)) return -1;
    printf("deliveries:");
    for (int i = 0; i < 3; i++)
        printf(" %s %lld", states[i], st.deliveries[i]);
    printf("\nevents: %lld\n", st.events);
    if (st.oldest_pending_s >= 0)
        printf("oldest pending: %.0f s\n", st.oldest_pending_s);
    else
        printf("oldest pending: none\n");
    printf("size: %lld bytes\n", st.size_bytes);
    return 0;
}

/* One line per delivery; a shared spool adds the instance holding a pending one's lease. */
static void print_row(void *arg, const struct store_row *r)
{
    (void)arg;
    printf("%-8lld %-24s %-40s %-9s %-8d %.*s", r->event_id, r->type, r->handler,
           r->state >= 0 && r->state < 3 ? states[r->state] : "?", r->attempts,
           (int)strcspn(r->error, "\n"), r->error);
    if (*r->owner) printf("%s[leased by %s]", *r->error ? " " : "", r->owner);
    printf("\n");
}

/* One line per event, newest first: its id, when, type, state, then each handler's. */
static void print_event(void *arg, const struct store_event *e)
{
    char when[32];
    time_t t = (time_t)e->received_at;
    struct tm tm;

    (void)arg;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%-8lld %s %-24s %-9s", e->id, when, e->type, store_event_states[e->state]);
    for (int i = 0; i < e->n_handlers; i++) {
        const struct store_outcome *h = &e->handlers[i];
        printf(" %s=%s/%d", h->handler, store_event_states[h->state], h->attempts);
    }
    printf("\n");
}

/* `spool events`: the console's question, asked from a shell. */
static int events(const struct admin_ops *ops, struct store_admin *a, int argc, char **argv)
{
    struct store_query q = {.state = -1, .limit = 50};
    long long next = 0;

    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!v) return usage();
        if (!strcmp(argv[i], "--type")) {
            q.type = v;
        } else if (!strcmp(argv[i], "--q")) {
            q.q = v;
        } else if (!strcmp(argv[i], "--state")) {
            for (q.state = 0; q.state < EV_STATES && strcmp(store_event_states[q.state], v);)
                q.state++;
            if (q.state == EV_STATES) return usage();
        } else if (!strcmp(argv[i], "--before")) {
            if ((q.before = strtoll(v, &end, 10)) <= 0 || *end) return usage();
        } else if (!strcmp(argv[i], "--limit")) {
            long n = strtol(v, &end, 10);
            if (n < 1 || n > 200 || *end) return usage();
            q.limit = (int)n;
        } else {
            return usage();
        }
    }
    if (ops->events(a, &q, print_event, NULL, &next)) return 1;
    if (next) printf("next: --before %lld\n", next);
    return 0;
}

int spool_cli(const char *manifest, int argc, char **argv)
{
    const struct admin_ops *ops;
    struct store_admin *a = NULL;
    struct wh_config *cfg;
    char err[WH_ERR_LEN];
    int rc = 1;
    double now = wh_now_s(); /* received_at has sub-second precision too */

    if (argc < 1) return usage();
    if (manifest_load_no_secrets(manifest, &cfg, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    ops = spool_is_pg(cfg->spool) ? &store_pg_admin : &store_sqlite_admin;
    if (cfg->delivery_mode != WH_DELIVERY_DURABLE) {
        char shown[1024];
        spool_shown(cfg->spool, shown, sizeof shown);
        fprintf(stderr, "wapphook: note: %s is not in durable mode; its spool is %s\n", cfg->file,
                shown);
    }
    if (ops->open(cfg, &a, err, sizeof err)) {
        fprintf(stderr, "wapphook: %s\n", err);
        goto out;
    }
    if (!strcmp(argv[0], "stats") && argc == 1) {
        rc = stats(ops, a) != 0;
    } else if (!strcmp(argv[0], "list") && argc <= 2) {
        if (argc == 2 && strcmp(argv[1], "--dead")) {
            rc = usage();
        } else {
            printf("%-8s %-24s %-40s %-9s %-8s %s\n", "ID", "TYPE", "HANDLER", "STATE", "ATTEMPTS",
                   "LAST ERROR");
            rc = ops->list(a, argc == 2, print_row, NULL) != 0;
        }
    } else if (!strcmp(argv[0], "events")) {
        rc = events(ops, a, argc, argv);
    } else if (!strcmp(argv[0], "replay") && argc >= 2) {
        /* dead letters become pending again, with their attempts reset, due now */
        long long n;
        rc = 0;
        if (argc == 2 && !strcmp(argv[1], "--dead")) {
            if ((n = ops->replay(a, 0)) < 0)
                rc = 1;
            else
                printf("replayed: %lld\n", n);
        } else {
            for (int i = 1; i < argc && !rc; i++) {
                char *end;
                long long id = strtoll(argv[i], &end, 10);
                if (*end || id <= 0) {
                    rc = usage();
                    goto out;
                }
                if ((n = ops->replay(a, id)) < 0)
                    rc = 1;
                else
                    printf("event %lld: %lld dead deliveries replayed\n", id, n);
            }
        }
    } else if (!strcmp(argv[0], "purge") && argc >= 2 && !strcmp(argv[1], "--delivered")) {
        double age = 0;
        long long n;
        if (argc == 4 && !strcmp(argv[2], "--older-than") && parse_duration(argv[3], &age) == 0) {
        } else if (argc != 2) {
            rc = usage();
            goto out;
        }
        n = ops->purge(a, now - age);
        if (n >= 0) printf("purged events: %lld\n", n);
        rc = n < 0;
    } else {
        rc = usage();
        goto out;
    }
    if (rc == 1) fprintf(stderr, "wapphook: spool: %s\n", ops->error(a));
out:
    if (a) ops->close(a);
    manifest_free(cfg);
    return rc;
}
