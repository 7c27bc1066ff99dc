/*
 * Running a command for a handler (docs/handlers.md): an allowed path, no shell, a clean
 * environment (PATH, LANG and what the caller gives: never the server's, which holds the
 * secrets), only descriptors 0, 1 and 2, stdin fed and stdout/stderr drained together so
 * neither side can block the other, output capped. The command runs under a supervisor
 * process that is its subreaper: once the command exits, everything it started is ended (a
 * process that left its group or session included); at the deadline the call returns at once
 * and the supervisor sends SIGTERM to all of it, SIGKILL a second later. At most
 * exec.max_concurrent run at once in the process.
 */
#ifndef WH_EXEC_H
#define WH_EXEC_H

#include <stdbool.h>
#include <stddef.h>

struct exec_request {
    const char *const *argv; /* argv[0] the command's path; NULL-terminated */
    const char *const *env;  /* extra "K=V" entries, NULL-terminated, or NULL */
    const char *stdin_data;
    size_t stdin_len;
    long long deadline_ns;  /* wh_mono_ns() clock: then SIGTERM, SIGKILL a second later */
    long long return_by_ns; /* the call returns by then whatever the command does (the
                             * handler's budget); 0: at deadline_ns */
    size_t max_output;      /* per stream */
};

struct exec_result {
    bool exited; /* code is valid */
    int code;
    int signal; /* the signal that ended it, or 0 */
    bool timed_out;
    bool truncated;  /* some output went past max_output */
    char *out, *err; /* malloc'd, NUL-terminated */
    size_t out_len, err_len;
};

enum exec_status { EXEC_RAN = 0, EXEC_NOT_ALLOWED = -1, EXEC_BUSY = -2, EXEC_SPAWN = -3 };

/* Sets exec.max_concurrent for the process (the newest configuration's). */
void exec_set_limit(int max_concurrent);

/* Runs the command; EXEC_RAN with *res filled (free it with exec_result_free), or another
 * status with a message in why. Allowed-ness is the caller's check. */
enum exec_status exec_run(const struct exec_request *rq, struct exec_result *res, char *why,
                          size_t why_len);
void exec_result_free(struct exec_result *res);
/* Reaps supervisors still ending commands whose calls returned at their deadline: called by
 * every exec_run and by the stuck monitor's tick. */
void exec_reap(void);

#endif
