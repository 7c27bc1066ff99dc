#define _GNU_SOURCE
#include "pg_cluster.h"

#include <glob.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Runs a PostgreSQL tool: as postgres when we are root. Returns the shell's status. The
 * cluster keeps the real clock: a suite run a year ahead (libfaketime, tests/CMakeLists.txt)
 * moves the servers under test, whose spool reads PostgreSQL's now() where it must agree
 * with it; and libfaketime's shared state belongs to root, which postgres may not open. */
static int tool(const struct pg_cluster *c, const char *args)
{
    char cmd[2048];

    if (getuid() == 0)
        snprintf(cmd, sizeof cmd,
                 "env -u LD_PRELOAD -u FAKETIME -u FAKETIME_SHARED runuser -u postgres -- %s/%s "
                 ">>%s/tools.log 2>&1",
                 c->bin, args, c->dir);
    else
        snprintf(cmd, sizeof cmd,
                 "env -u LD_PRELOAD -u FAKETIME -u FAKETIME_SHARED %s/%s "
                 ">>%s/tools.log 2>&1",
                 c->bin, args, c->dir);
    return system(cmd);
}

int pg_cluster_start(struct pg_cluster *c)
{
    char args[1200];

    snprintf(args, sizeof args,
             "pg_ctl start -w -t 60 -D %s/data -l %s/server.log -o \"-k %s/sock -p %d "
             "-c listen_addresses= -c max_connections=100 -c shared_buffers=32MB\"",
             c->dir, c->dir, c->dir, c->port);
    if (tool(c, args) != 0) return -1;
    c->running = 1;
    return 0;
}

int pg_cluster_stop(struct pg_cluster *c)
{
    char args[600];

    snprintf(args, sizeof args, "pg_ctl stop -w -t 60 -m fast -D %s/data", c->dir);
    if (tool(c, args) != 0) return -1;
    c->running = 0;
    return 0;
}

int pg_cluster_create(struct pg_cluster *c)
{
    const char *t = getenv("TMPDIR");
    struct passwd *pw = getpwnam("postgres");
    glob_t g;
    char path[600], args[800];

    memset(c, 0, sizeof *c);
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0 || g.gl_pathc == 0) {
        fprintf(stderr, "pg_cluster: no initdb under /usr/lib/postgresql (package postgresql)\n");
        return -1;
    }
    snprintf(c->bin, sizeof c->bin, "%.*s", (int)(strlen(g.gl_pathv[g.gl_pathc - 1]) - 7),
             g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    if (getuid() == 0 && !pw) {
        fprintf(stderr, "pg_cluster: no postgres user\n");
        return -1;
    }
    snprintf(c->dir, sizeof c->dir, "%s/wapphook-pg-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(c->dir)) return -1;
    chmod(c->dir, 0755);
    snprintf(path, sizeof path, "%s/sock", c->dir);
    mkdir(path, 0755);
    if (getuid() == 0) {
        if (chown(c->dir, pw->pw_uid, pw->pw_gid) || chown(path, pw->pw_uid, pw->pw_gid)) return -1;
    }
    /* with no TCP listener the port only names the socket file, in a folder of its own */
    c->port = 5432;
    snprintf(args, sizeof args, "initdb -D %s/data -A trust -U postgres --no-sync -E UTF8", c->dir);
    if (tool(c, args) != 0) {
        fprintf(stderr, "pg_cluster: initdb failed (see %s/tools.log)\n", c->dir);
        return -1;
    }
    if (pg_cluster_start(c) != 0) {
        fprintf(stderr, "pg_cluster: pg_ctl start failed (see %s/server.log)\n", c->dir);
        return -1;
    }
    snprintf(c->uri, sizeof c->uri, "postgresql://postgres@/postgres?host=%s/sock&port=%d", c->dir,
             c->port);
    return 0;
}

void pg_cluster_destroy(struct pg_cluster *c)
{
    char cmd[400];

    if (!c->dir[0]) return;
    if (c->running) pg_cluster_stop(c);
    snprintf(cmd, sizeof cmd, "rm -rf %s", c->dir);
    if (system(cmd) != 0) fprintf(stderr, "pg_cluster: could not remove %s\n", c->dir);
    c->dir[0] = '\0';
}

long long pg_cluster_sql(const struct pg_cluster *c, const char *sql)
{
    PGconn *pg = PQconnectdb(c->uri);
    PGresult *r;
    long long v = -1;

    if (PQstatus(pg) == CONNECTION_OK) {
        r = PQexec(pg, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : 0;
        else if (PQresultStatus(r) == PGRES_COMMAND_OK)
            v = 0;
        else
            fprintf(stderr, "pg_cluster_sql: %s", PQresultErrorMessage(r));
        PQclear(r);
    } else {
        fprintf(stderr, "pg_cluster_sql: %s", PQerrorMessage(pg));
    }
    PQfinish(pg);
    return v;
}
