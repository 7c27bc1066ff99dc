/*
 * A throwaway PostgreSQL cluster for the shared-spool tests: Debian's initdb and pg_ctl (as
 * the postgres user when run as root: initdb refuses root), trust authentication, a unix
 * socket in a temporary folder and no TCP listener, removed by pg_cluster_destroy. fsync and
 * synchronous_commit stay on: the spool's promise is tested against a real commit.
 */
#ifndef WH_PG_CLUSTER_H
#define WH_PG_CLUSTER_H

struct pg_cluster {
    char dir[256]; /* data/, sock/, log */
    char uri[512]; /* postgresql://postgres@/postgres?host=...&port=... */
    char bin[256]; /* /usr/lib/postgresql/N/bin */
    int port;
    int running;
};

/* Creates and starts one; 0, or -1 (with a message on stderr) when PostgreSQL is missing. */
int pg_cluster_create(struct pg_cluster *c);
/* pg_ctl stop -m fast / start, waiting until done. 0 or -1. */
int pg_cluster_stop(struct pg_cluster *c);
int pg_cluster_start(struct pg_cluster *c);
void pg_cluster_destroy(struct pg_cluster *c);
/* Runs sql; returns the first column of the first row as a number (0 if none), -1 on error. */
long long pg_cluster_sql(const struct pg_cluster *c, const char *sql);

#endif
