#define _GNU_SOURCE
#include "exec.h"

#include "clock.h"
#include "manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KILL_GRACE_NS 1000000000LL
#define MAX_ENV 64

static int limit = 8, running;

void exec_set_limit(int max_concurrent)
{
    __atomic_store_n(&limit, max_concurrent, __ATOMIC_RELAXED);
}

bool exec_allowed(const struct wh_config *cfg, const char *path)
{
    for (size_t i = 0; i < cfg->n_exec_allow; i++)
        if (strcmp(cfg->exec_allow[i], path) == 0)
            return true;
    return false;
}

struct sink {
    char *buf;
    size_t len, cap, max;
    bool *truncated;
};

static void sink_take(struct sink *s, const char *p, size_t n)
{
    size_t room = s->max - s->len;

    if (n > room) {
        *s->truncated = true;
        n = room; /* keep draining, keep nothing more */
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap < s->len + n + 1)
            cap *= 2;
        s->buf = realloc(s->buf, cap);
        if (!s->buf)
            abort();
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
}

/* How long the current wait may last (ms). Past it the group is signalled — SIGTERM at the
 * deadline, SIGKILL every grace period after — and 0 is returned: look again. */
static int wait_ms_left(pid_t pid, long long deadline, long long *kill_at, bool *timed_out)
{
    long long now = wh_mono_ns(), until = *kill_at ? *kill_at : deadline;

    if (now < until)
        return (int)((until - now) / 1000000 + 1);
    if (!*kill_at)
        *timed_out = true;
    kill(-pid, *kill_at ? SIGKILL : SIGTERM);
    *kill_at = now + KILL_GRACE_NS; /* the outputs end as the group dies */
    return 0;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* The environment: PATH and LANG (the server's values, or defaults), then the caller's. */
static void build_env(const char *const *extra, char **env, char *path, char *lang)
{
    int n = 0;
    const char *p = getenv("PATH"), *l = getenv("LANG");

    snprintf(path, 4096, "PATH=%s", p ? p : "/usr/local/bin:/usr/bin:/bin");
    snprintf(lang, 256, "LANG=%s", l ? l : "C.UTF-8");
    env[n++] = path;
    env[n++] = lang;
    for (int i = 0; extra && extra[i] && n < MAX_ENV - 1; i++)
        env[n++] = (char *)extra[i];
    env[n] = NULL;
}

enum exec_status exec_run(const struct exec_request *rq, struct exec_result *res, char *why,
                          size_t why_len)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, status = 0, rc;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, defaults;
    char *env[MAX_ENV], path[4096], lang[256];
    struct sink so, se;
    size_t fed = 0;
    long long kill_at = 0;
    pid_t pid;

    memset(res, 0, sizeof *res);
    if (__atomic_add_fetch(&running, 1, __ATOMIC_ACQ_REL) > __atomic_load_n(&limit, __ATOMIC_RELAXED)) {
        __atomic_sub_fetch(&running, 1, __ATOMIC_ACQ_REL);
        snprintf(why, why_len, "busy: exec.max_concurrent (%d) commands are running", limit);
        return EXEC_BUSY;
    }
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
        snprintf(why, why_len, "spawn: pipe: %s", strerror(errno));
        goto spawn_failed;
    }
    build_env(rq->env, env, path, lang);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawnattr_init(&at);
    /* its own process group (to end all of it), no signal blocked (the server blocks its
     * own), and SIGPIPE and the rest at their defaults (the server ignores SIGPIPE) */
    sigemptyset(&none);
    sigfillset(&defaults);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &defaults);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    rc = posix_spawn(&pid, rq->argv[0], &fa, &at, (char *const *)rq->argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        snprintf(why, why_len, "spawn: %s: %s", rq->argv[0], strerror(rc));
        goto spawn_failed;
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    in[0] = out[1] = err[1] = -1;
    nonblock(in[1]);
    nonblock(out[0]);
    nonblock(err[0]);
    if (rq->stdin_len == 0) {
        close(in[1]);
        in[1] = -1;
    }
    so = (struct sink){NULL, 0, 0, rq->max_output, &res->truncated};
    se = (struct sink){NULL, 0, 0, rq->max_output, &res->truncated};
    sink_take(&so, "", 0);
    sink_take(&se, "", 0);

    /* until both outputs end; past the deadline the group is ended, which ends them */
    while (out[0] >= 0 || err[0] >= 0) {
        struct pollfd p[3];
        int np = 0, ms = wait_ms_left(pid, rq->deadline_ns, &kill_at, &res->timed_out);
        char buf[16384];

        if (!ms)
            continue;
        if (out[0] >= 0)
            p[np++] = (struct pollfd){.fd = out[0], .events = POLLIN};
        if (err[0] >= 0)
            p[np++] = (struct pollfd){.fd = err[0], .events = POLLIN};
        if (in[1] >= 0)
            p[np++] = (struct pollfd){.fd = in[1], .events = POLLOUT};
        if (poll(p, (nfds_t)np, ms) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < np; i++) {
            if (!p[i].revents)
                continue;
            if (p[i].fd == in[1]) {
                ssize_t w = write(in[1], rq->stdin_data + fed, rq->stdin_len - fed);
                if (w > 0)
                    fed += (size_t)w;
                if ((w < 0 && errno != EAGAIN) || fed == rq->stdin_len) {
                    close(in[1]); /* all fed, or the command closed its stdin */
                    in[1] = -1;
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(p[i].fd, buf, sizeof buf);
                if (r > 0) {
                    sink_take(p[i].fd == out[0] ? &so : &se, buf, (size_t)r);
                    continue;
                }
                if (r == 0 || errno != EAGAIN) { /* end of that stream */
                    close(p[i].fd);
                    if (p[i].fd == out[0])
                        out[0] = -1;
                    else
                        err[0] = -1;
                }
                break;
            }
        }
    }
    if (in[1] >= 0)
        close(in[1]);
    /* ended within the time left (a command that closed its outputs may still run); seen
     * without reaping it, so its group id cannot be reused before the group is killed */
    {
        int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
        for (;;) {
            siginfo_t si = {0};
            int ms;

            if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid)
                break;
            if (!(ms = wait_ms_left(pid, rq->deadline_ns, &kill_at, &res->timed_out)))
                continue;
            if (pfd >= 0) {
                struct pollfd p = {.fd = pfd, .events = POLLIN};
                poll(&p, 1, ms);
            } else {
                usleep(1000); /* no pidfd (kernel < 5.3): look again soon */
            }
        }
        if (pfd >= 0)
            close(pfd);
    }
    kill(-pid, SIGKILL); /* what it left behind in its group goes too */
    waitpid(pid, &status, 0);
    if (WIFEXITED(status)) {
        res->exited = true;
        res->code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        res->signal = WTERMSIG(status);
    }
    res->out = so.buf;
    res->out_len = so.len;
    res->err = se.buf;
    res->err_len = se.len;
    __atomic_sub_fetch(&running, 1, __ATOMIC_ACQ_REL);
    return EXEC_RAN;

spawn_failed:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
        if (err[i] >= 0)
            close(err[i]);
    }
    __atomic_sub_fetch(&running, 1, __ATOMIC_ACQ_REL);
    return EXEC_SPAWN;
}

void exec_result_free(struct exec_result *res)
{
    free(res->out);
    free(res->err);
    res->out = res->err = NULL;
}
