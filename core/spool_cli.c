#include "spool_cli.h"

#include "clock.h"

#include "manifest.h"
#include "spool.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const states[] = {"pending", "delivered", "dead"};

static int usage(void)
{
    fprintf(stderr, "usage: wapphook spool stats [-c FILE]\n"
                    "       wapphook spool list [--dead] [-c FILE]\n"
                    "       wapphook spool replay ID... | --dead [-c FILE]\n"
                    "       wapphook spool purge --delivered [--older-than DURATION] [-c FILE]\n"
                    "DURATION: a number with s, m, h or d (e.g. 7d)\n");
    return 2;
}

static int parse_duration(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || v < 0)
        return -1;
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

static int stats(sqlite3 *db)
{
    sqlite3_stmt *st;
    double now = (double)time(NULL);

    if (sqlite3_prepare_v2(db, "SELECT state, count(*) FROM deliveries GROUP BY state ORDER BY state",
                           -1, &st, NULL) != SQLITE_OK)
        return 1;
    printf("deliveries:");
    {
        long long n[3] = {0, 0, 0};
        while (sqlite3_step(st) == SQLITE_ROW) {
            int s = sqlite3_column_int(st, 0);
            if (s >= 0 && s < 3)
                n[s] = sqlite3_column_int64(st, 1);
        }
        for (int i = 0; i < 3; i++)
            printf(" %s %lld", states[i], n[i]);
        printf("\n");
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db, "SELECT count(*), (SELECT min(e.received_at) FROM deliveries d JOIN "
                               "events e ON e.id = d.event_id WHERE d.state = 0) FROM events",
                           -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        printf("events: %lld\n", sqlite3_column_int64(st, 0));
        if (sqlite3_column_type(st, 1) != SQLITE_NULL)
            printf("oldest pending: %.0f s\n", now - sqlite3_column_double(st, 1));
        else
            printf("oldest pending: none\n");
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db, "SELECT (SELECT page_count FROM pragma_page_count()) * "
                               "(SELECT page_size FROM pragma_page_size())", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        printf("size: %lld bytes\n", sqlite3_column_int64(st, 0));
    sqlite3_finalize(st);
    return 0;
}

/* Rows go out a page at a time, each page read in a read transaction of its own that ends
 * before it is printed: `spool list | less` left open must not pin the WAL (a reader's snapshot
 * stops checkpoints from going past it, and the server's WAL would grow for as long). */
#define LIST_PAGE 500

static int list(sqlite3 *db, int dead_only)
{
    sqlite3_stmt *st;
    long long after_id = 0;
    char *after_handler = strdup(""), *page = NULL;
    size_t page_len = 0;
    int rows;

    if (sqlite3_prepare_v2(db, "SELECT d.event_id, e.type, d.handler, d.state, d.attempts,"
                               " coalesce(d.last_error, '') FROM deliveries d JOIN events e"
                               " ON e.id = d.event_id WHERE (?1 = 0 OR d.state = 2)"
                               " AND (d.event_id, d.handler) > (?2, ?3)"
                               " ORDER BY d.event_id, d.handler LIMIT ?4", -1, &st, NULL) != SQLITE_OK) {
        free(after_handler);
        return 1;
    }
    printf("%-8s %-24s %-40s %-9s %-8s %s\n", "ID", "TYPE", "HANDLER", "STATE", "ATTEMPTS", "LAST ERROR");
    do {
        FILE *out = open_memstream(&page, &page_len);
        sqlite3_bind_int(st, 1, dead_only);
        sqlite3_bind_int64(st, 2, after_id);
        sqlite3_bind_text(st, 3, after_handler, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 4, LIST_PAGE);
        for (rows = 0; sqlite3_step(st) == SQLITE_ROW; rows++) {
            int s = sqlite3_column_int(st, 3);
            const char *e = (const char *)sqlite3_column_text(st, 5);
            fprintf(out, "%-8lld %-24s %-40s %-9s %-8d %.*s\n", sqlite3_column_int64(st, 0),
                    sqlite3_column_text(st, 1), sqlite3_column_text(st, 2),
                    s >= 0 && s < 3 ? states[s] : "?", sqlite3_column_int(st, 4),
                    (int)strcspn(e, "\n"), e);
            after_id = sqlite3_column_int64(st, 0);
            free(after_handler);
            after_handler = strdup((const char *)sqlite3_column_text(st, 2));
        }
        sqlite3_reset(st); /* the read transaction ends here, before the page is written */
        fclose(out);
        fwrite(page, 1, page_len, stdout);
        free(page);
        page = NULL;
    } while (rows == LIST_PAGE);
    sqlite3_finalize(st);
    free(after_handler);
    return 0;
}

static int exec_count(sqlite3 *db, const char *sql, long long id, double arg, const char *what)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "wapphook: spool: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_double(st, 2, arg);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "wapphook: spool: %s\n", sqlite3_errmsg(db));
        return -1;
    }
    if (what)
        printf("%s: %d\n", what, sqlite3_changes(db));
    return sqlite3_changes(db);
}

/* `spool purge --delivered`: events received before `before` whose every delivery is done,
 * PURGE_RANGE event ids per transaction, so that the running server's writer never waits long
 * for the lock (its requests would get 503 past its busy timeout). */
#define PURGE_RANGE 1000

static int purge_delivered(sqlite3 *db, double before)
{
    sqlite3_stmt *end = NULL;
    long long from = 0, to, purged = 0;
    int rc = 0;

    if (sqlite3_prepare_v2(db, "SELECT max(id) FROM (SELECT id FROM events WHERE id > ?1"
                               " ORDER BY id LIMIT ?2)", -1, &end, NULL) != SQLITE_OK) {
        fprintf(stderr, "wapphook: spool: %s\n", sqlite3_errmsg(db));
        rc = 1;
    }
    while (!rc) {
        int n;
        sqlite3_bind_int64(end, 1, from);
        sqlite3_bind_int(end, 2, PURGE_RANGE);
        if (sqlite3_step(end) != SQLITE_ROW || sqlite3_column_type(end, 0) == SQLITE_NULL) {
            sqlite3_reset(end);
            break; /* past the last event */
        }
        to = sqlite3_column_int64(end, 0);
        sqlite3_reset(end);
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
            (n = spool_purge_delivered(db, from, to, before)) < 0) {
            fprintf(stderr, "wapphook: spool: %s\n", sqlite3_errmsg(db));
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            rc = 1;
        } else if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            fprintf(stderr, "wapphook: spool: %s\n", sqlite3_errmsg(db));
            rc = 1;
        } else {
            purged += n;
        }
        from = to;
    }
    sqlite3_finalize(end);
    printf("purged events: %lld\n", purged);
    return rc;
}

int spool_cli(const char *manifest, int argc, char **argv)
{
    struct wh_config *cfg;
    char err[WH_ERR_LEN];
    sqlite3 *db = NULL;
    int rc = 1;
    double now = wh_now_s(); /* received_at has sub-second precision too */

    if (argc < 1)
        return usage();
    if (manifest_load_no_secrets(manifest, &cfg, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (cfg->delivery_mode != WH_DELIVERY_DURABLE)
        fprintf(stderr, "wapphook: note: %s is not in durable mode; its spool is %s\n", cfg->file,
                cfg->spool);
    if (sqlite3_open_v2(cfg->spool, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        fprintf(stderr, "wapphook: spool %s: %s\n", cfg->spool, db ? sqlite3_errmsg(db) : "cannot open");
        goto out;
    }
    sqlite3_busy_timeout(db, 10000);
    if (!strcmp(argv[0], "stats") && argc == 1) {
        rc = stats(db);
    } else if (!strcmp(argv[0], "list") && argc <= 2) {
        if (argc == 2 && strcmp(argv[1], "--dead"))
            rc = usage();
        else
            rc = list(db, argc == 2);
    } else if (!strcmp(argv[0], "replay") && argc >= 2) {
        /* dead letters become pending again, with their attempts reset, due now */
        const char *sql = "UPDATE deliveries SET state = 0, attempts = 0, next_at = ?2,"
                          " last_error = NULL WHERE state = 2 AND (?1 = 0 OR event_id = ?1)";
        rc = 0;
        if (argc == 2 && !strcmp(argv[1], "--dead")) {
            rc = exec_count(db, sql, 0, now, "replayed") < 0;
        } else {
            for (int i = 1; i < argc && !rc; i++) {
                char *end;
                long long id = strtoll(argv[i], &end, 10);
                if (*end || id <= 0) {
                    rc = usage();
                    break;
                }
                rc = exec_count(db, sql, id, now, NULL) < 0;
                if (!rc)
                    printf("event %lld: %d dead deliveries replayed\n", id, sqlite3_changes(db));
            }
        }
    } else if (!strcmp(argv[0], "purge") && argc >= 2 && !strcmp(argv[1], "--delivered")) {
        double age = 0;
        if (argc == 4 && !strcmp(argv[2], "--older-than") && parse_duration(argv[3], &age) == 0) {
        } else if (argc != 2) {
            rc = usage();
            goto out;
        }
        rc = purge_delivered(db, now - age);
    } else {
        rc = usage();
    }
out:
    sqlite3_close(db);
    manifest_free(cfg);
    return rc;
}
