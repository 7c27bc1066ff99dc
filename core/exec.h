/*
 * Running a command for a handler (SPEC section 10): posix_spawn of an allowed path, no shell,
 * a clean environment (PATH, LANG and what the caller gives: never the server's, which holds
 * the secrets), stdin fed and stdout/stderr drained together so neither side can block the
 * other, output capped, and the command's own process group ended at the deadline (SIGTERM,
 * then SIGKILL a second later) and again once it exits, so no process of it is left behind and
 * none is left a zombie. At most exec.max_concurrent run at once in the process.
 */
#ifndef WH_EXEC_H
#define WH_EXEC_H

#include <stdbool.h>
#include <stddef.h>

struct wh_config;

struct exec_request {
    const char *const *argv;     /* argv[0] the command's path; NULL-terminated */
    const char *const *env;      /* extra "K=V" entries, NULL-terminated, or NULL */
    const char *stdin_data;
    size_t stdin_len;
    long long deadline_ns;       /* wh_mono_ns() clock */
    size_t max_output;           /* per stream */
};

struct exec_result {
    bool exited;                 /* code is valid */
    int code;
    int signal;                  /* the signal that ended it, or 0 */
    bool timed_out;
    bool truncated;              /* some output went past max_output */
    char *out, *err;             /* malloc'd, NUL-terminated */
    size_t out_len, err_len;
};

enum exec_status { EXEC_RAN = 0, EXEC_NOT_ALLOWED = -1, EXEC_BUSY = -2, EXEC_SPAWN = -3 };

/* Sets exec.max_concurrent for the process (the newest configuration's). */
void exec_set_limit(int max_concurrent);

/* Is path (resolved) in cfg's exec.allow? */
bool exec_allowed(const struct wh_config *cfg, const char *path);

/* Runs the command; EXEC_RAN with *res filled (free it with exec_result_free), or another
 * status with a message in why. Allowed-ness is the caller's check. */
enum exec_status exec_run(const struct exec_request *rq, struct exec_result *res, char *why,
                          size_t why_len);
void exec_result_free(struct exec_result *res);

#endif
