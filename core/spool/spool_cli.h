/*
 * `wapphook spool ...`: look into the spool of a manifest's durable mode and act on it, from
 * another process, while the server runs (SQLite: WAL, readers never block the writer;
 * PostgreSQL: any machine that reaches the database).
 */
#ifndef WH_SPOOL_CLI_H
#define WH_SPOOL_CLI_H

/* argv[0] is the subcommand (stats, list, replay, purge). Returns an exit code. */
int spool_cli(const char *manifest, int argc, char **argv);

#endif
