#define _GNU_SOURCE
#include "exec.h"

#include "alloc.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
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
        s->buf = wh_xrealloc(s->buf, cap); /* at most exec.max_output_bytes: bookkeeping */
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
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

/* --- the supervisor ---------------------------------------------------------------------------
 *
 * Every command runs under a supervisor: a fork of the server that is the command's parent
 * and a child subreaper (PR_SET_CHILD_SUBREAPER), so every process the command leaves behind
 * (one in the background, one that left the process group or the session with setsid) is
 * re-parented to it, never to init, and it can end them all: when the command exits, at
 * once; when the server signals the deadline, SIGTERM to all, SIGKILL a second later; when
 * the server dies (PR_SET_PDEATHSIG), the same. The server's call does not wait for any of
 * that: it returns at its deadline, whatever the descendants hold open.
 *
 * It runs in a fork of a multithreaded process, so only async-signal-safe calls: no malloc,
 * no stdio. It keeps no descriptor of the server's (close_range): a client connection the
 * server closes must close. Messages to the server on the status pipe: */
enum { MSG_SPAWN_ERRNO = 1, MSG_STATUS = 2, MSG_PID = 3 };
struct sup_msg {
    int kind, value;
};

#define FD_STATUS 3 /* in the supervisor and the command (close-on-exec there) */

static void sup_send(int kind, int value)
{
    struct sup_msg m = {kind, value};
    ssize_t w = write(FD_STATUS, &m, sizeof m);
    (void)w;
}

/* Signals every direct child of the supervisor (the command, and whatever was re-parented to
 * it). Returns how many it found. /proc/PID/task/PID/children: a single-threaded process's. */
static int signal_children(pid_t self, int sig)
{
    char path[64], buf[4096];
    int fd, n = 0, len = 0;
    ssize_t r;
    long pid = 0;
    bool digits = false;

    /* snprintf is not async-signal-safe: the path by hand */
    {
        char num[24];
        int k = 0;
        long v = self;
        do {
            num[k++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        memcpy(path, "/proc/", 6);
        len = 6;
        for (int i = k - 1; i >= 0; i--)
            path[len++] = num[i];
        memcpy(path + len, "/task/", 6);
        len += 6;
        for (int i = k - 1; i >= 0; i--)
            path[len++] = num[i];
        memcpy(path + len, "/children", 10);
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] >= '0' && buf[i] <= '9') {
                pid = pid * 10 + (buf[i] - '0');
                digits = true;
            } else if (digits) {
                kill((pid_t)pid, sig);
                n++;
                pid = 0;
                digits = false;
            }
        }
    }
    if (digits) {
        kill((pid_t)pid, sig);
        n++;
    }
    close(fd);
    return n;
}

/* Ends every descendant: SIGKILL to the command's group and to each child, whose own children
 * are then re-parented here and killed in the next round, until none is left. */
static void sweep(pid_t self, pid_t cmd)
{
    kill(-cmd, SIGKILL);
    for (;;) {
        int found = signal_children(self, SIGKILL);
        pid_t w = waitpid(-1, NULL, WNOHANG); /* reap what died; -1: no child at all */
        struct timespec ts = {0, 1000000};
        if (w < 0) return; /* nothing left, not even a zombie */
        if (found < 0)     /* no /proc: the group is what can be reached; its stragglers again */
            kill(-cmd, SIGKILL);
        if (w == 0) /* one being killed: look again soon (a new orphan may have come) */
            nanosleep(&ts, NULL);
    }
}

static void supervise(pid_t server, const char *const *argv, char *const *env)
{
    sigset_t all, waited;
    pid_t self = getpid(), cmd;
    long long grace_end = 0;
    bool cmd_done = false;
    struct sigaction dfl = {.sa_handler = SIG_DFL};

    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != server) _exit(127);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    sigaction(SIGCHLD, &dfl, NULL);
    cmd = _Fork(); /* not fork(): its atfork handlers would take locks the server's other
                    * threads may have held when the supervisor was forked */
    if (cmd < 0) {
        sup_send(MSG_SPAWN_ERRNO, errno);
        _exit(127);
    }
    if (cmd == 0) {
        sigset_t none;
        setpgid(0, 0);
        /* a command that kills its supervisor dies with it (its group too: see exec_run) */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != self) _exit(127);
        for (int sig = 1; sig < NSIG; sig++) /* the server ignores SIGPIPE: defaults here */
            sigaction(sig, &dfl, NULL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        fcntl(FD_STATUS, F_SETFD, FD_CLOEXEC);
        execve(argv[0], (char *const *)argv, env);
        sup_send(MSG_SPAWN_ERRNO, errno);
        _exit(127);
    }
    setpgid(cmd, cmd);
    sup_send(MSG_PID, cmd);
    close(0); /* the command holds its ends of the pipes; the supervisor none */
    close(1);
    close(2);
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    sigaddset(&waited, SIGTERM);
    for (;;) {
        int st;
        pid_t w;
        struct timespec ts = {1, 0};
        siginfo_t si;

        while ((w = waitpid(-1, &st, WNOHANG)) > 0)
            if (w == cmd) {
                sup_send(MSG_STATUS, st);
                cmd_done = true;
            }
        if (cmd_done) /* the command is over: nothing of it may outlive it */
            break;
        if (grace_end) {
            long long left = grace_end - wh_mono_ns();
            if (left <= 0) break;
            ts.tv_sec = (time_t)(left / 1000000000LL);
            ts.tv_nsec = (long)(left % 1000000000LL);
        }
        if (sigtimedwait(&waited, &si, &ts) == SIGTERM && !grace_end) {
            /* the deadline (or the server is gone): SIGTERM to all, SIGKILL a second later */
            kill(-cmd, SIGTERM);
            signal_children(self, SIGTERM);
            grace_end = wh_mono_ns() + KILL_GRACE_NS;
        }
    }
    sweep(self, cmd);
    _exit(0);
}

/* Supervisors whose call returned at its deadline, still ending their commands: reaped later
 * (exec_reap), so none is left a zombie. */
#define PENDING_MAX 1024
static pthread_mutex_t pending_mu = PTHREAD_MUTEX_INITIALIZER;
static pid_t pending[PENDING_MAX];
static int n_pending;

void exec_reap(void)
{
    pthread_mutex_lock(&pending_mu);
    for (int i = 0; i < n_pending;) {
        if (waitpid(pending[i], NULL, WNOHANG) != 0) /* reaped, or not ours any more */
            pending[i] = pending[--n_pending];
        else
            i++;
    }
    pthread_mutex_unlock(&pending_mu);
}

static void reap_later(pid_t pid)
{
    pthread_mutex_lock(&pending_mu);
    if (n_pending < PENDING_MAX) pending[n_pending++] = pid;
    pthread_mutex_unlock(&pending_mu);
    if (n_pending >= PENDING_MAX) /* never expected: a thousand commands past their deadline
                                   * within one monitor tick; wait rather than leak */
        waitpid(pid, NULL, 0);
}

/* Puts the supervisor's descriptors in place (0, 1, 2: the command's stdin, stdout and
 * stderr; FD_STATUS) and closes every other one. The sources are above FD_STATUS. */
static int place_fds(int in, int out, int err, int status)
{
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 || dup2(status, FD_STATUS) < 0)
        return -1;
    for (int fd = 0; fd <= FD_STATUS; fd++)
        fcntl(fd, F_SETFD, 0);
    if (syscall(SYS_close_range, FD_STATUS + 1, ~0U, 0) != 0) {
        struct rlimit rl;
        int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1 << 20 ? (int)rl.rlim_cur
                                                                              : 1 << 16;
        for (int fd = FD_STATUS + 1; fd < max; fd++)
            close(fd);
    }
    return 0;
}

/* Moves fd above FD_STATUS (so place_fds cannot clobber it), close-on-exec. */
static int high(int fd)
{
    int h;

    if (fd > FD_STATUS) return fd;
    h = fcntl(fd, F_DUPFD_CLOEXEC, FD_STATUS + 1);
    close(fd);
    return h;
}

enum exec_status exec_run(const struct exec_request *rq, struct exec_result *res, char *why,
                          size_t why_len)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, stp[2] = {-1, -1};
    char *env[MAX_ENV], path[4096], lang[256];
    struct sink so, se;
    size_t fed = 0, got = 0;
    struct sup_msg msg;
    bool have_status = false;
    int status = 0, spawn_errno = 0;
    pid_t server = getpid(), sup, cmd = 0;
    bool sup_reaped = false;

    memset(res, 0, sizeof *res);
    exec_reap();
    if (__atomic_add_fetch(&running, 1, __ATOMIC_ACQ_REL) >
        __atomic_load_n(&limit, __ATOMIC_RELAXED)) {
        __atomic_sub_fetch(&running, 1, __ATOMIC_ACQ_REL);
        snprintf(why, why_len, "busy: exec.max_concurrent (%d) commands are running", limit);
        return EXEC_BUSY;
    }
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) ||
        pipe2(stp, O_CLOEXEC)) {
        snprintf(why, why_len, "spawn: pipe: %s", strerror(errno));
        goto spawn_failed;
    }
    for (int i = 0; i < 2; i++) {
        in[i] = high(in[i]);
        out[i] = high(out[i]);
        err[i] = high(err[i]);
        stp[i] = high(stp[i]);
        if (in[i] < 0 || out[i] < 0 || err[i] < 0 || stp[i] < 0) {
            snprintf(why, why_len, "spawn: no descriptor: %s", strerror(errno));
            goto spawn_failed;
        }
    }
    build_env(rq->env, env, path, lang);
    sup = fork();
    if (sup < 0) {
        snprintf(why, why_len, "spawn: fork: %s", strerror(errno));
        goto spawn_failed;
    }
    if (sup == 0) {
        if (place_fds(in[0], out[1], err[1], stp[1]) != 0) _exit(127);
        supervise(server, rq->argv, env);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    close(stp[1]);
    in[0] = out[1] = err[1] = stp[1] = -1;
    nonblock(in[1]);
    nonblock(out[0]);
    nonblock(err[0]);
    nonblock(stp[0]);
    if (rq->stdin_len == 0) {
        close(in[1]);
        in[1] = -1;
    }
    so = (struct sink){NULL, 0, 0, rq->max_output, &res->truncated};
    se = (struct sink){NULL, 0, 0, rq->max_output, &res->truncated};
    sink_take(&so, "", 0);
    sink_take(&se, "", 0);

    /* until both outputs and the status pipe end (the supervisor exits once everything of the
     * command is gone), or the deadline */
    while (out[0] >= 0 || err[0] >= 0 || stp[0] >= 0) {
        struct pollfd p[4];
        int np = 0;
        long long now = wh_mono_ns(),
                  return_by = rq->return_by_ns ? rq->return_by_ns : rq->deadline_ns;
        long long left = (res->timed_out ? return_by : rq->deadline_ns) - now;
        char buf[16384];

        if (!res->timed_out && left <= 0) {
            res->timed_out = true;
            kill(sup, SIGTERM); /* it ends the command: SIGTERM, then SIGKILL */
            if (cmd > 0 && waitpid(sup, NULL, WNOHANG) != 0) { /* the command killed it */
                sup_reaped = true;
                kill(-cmd, SIGKILL);
            }
            left = return_by - now; /* its end may still be seen, within the call's own time */
        }
        if (left <= 0) break;
        if (out[0] >= 0) p[np++] = (struct pollfd){.fd = out[0], .events = POLLIN};
        if (err[0] >= 0) p[np++] = (struct pollfd){.fd = err[0], .events = POLLIN};
        if (stp[0] >= 0) p[np++] = (struct pollfd){.fd = stp[0], .events = POLLIN};
        if (in[1] >= 0) p[np++] = (struct pollfd){.fd = in[1], .events = POLLOUT};
        if (poll(p, (nfds_t)np, (int)(left / 1000000 + 1)) < 0 && errno != EINTR) break;
        for (int i = 0; i < np; i++) {
            if (!p[i].revents) continue;
            if (p[i].fd == in[1]) {
                ssize_t w = write(in[1], rq->stdin_data + fed, rq->stdin_len - fed);
                if (w > 0) fed += (size_t)w;
                if ((w < 0 && errno != EAGAIN) || fed == rq->stdin_len) {
                    close(in[1]); /* all fed, or the command closed its stdin */
                    in[1] = -1;
                }
                continue;
            }
            for (;;) {
                ssize_t r = p[i].fd == stp[0] ? read(stp[0], (char *)&msg + got, sizeof msg - got)
                                              : read(p[i].fd, buf, sizeof buf);
                if (r > 0 && p[i].fd == stp[0]) {
                    got += (size_t)r;
                    if (got == sizeof msg) {
                        if (msg.kind == MSG_STATUS) {
                            status = msg.value;
                            have_status = true;
                        } else if (msg.kind == MSG_SPAWN_ERRNO) {
                            spawn_errno = msg.value;
                        } else if (msg.kind == MSG_PID) {
                            cmd = (pid_t)msg.value;
                        }
                        got = 0;
                    }
                    continue;
                }
                if (r > 0) {
                    sink_take(p[i].fd == out[0] ? &so : &se, buf, (size_t)r);
                    continue;
                }
                if (r == 0 || errno != EAGAIN) { /* end of that stream */
                    close(p[i].fd);
                    if (p[i].fd == out[0])
                        out[0] = -1;
                    else if (p[i].fd == err[0])
                        err[0] = -1;
                    else {
                        stp[0] = -1;
                        if (!have_status && cmd > 0) /* the supervisor was killed: its
                                                      * command's group goes now */
                            kill(-cmd, SIGKILL);
                    }
                }
                break;
            }
        }
    }
    if (in[1] >= 0) close(in[1]);
    if (out[0] >= 0) close(out[0]);
    if (err[0] >= 0) close(err[0]);
    if (stp[0] >= 0) close(stp[0]);
    if (stp[0] < 0 && !have_status && cmd > 0)
        kill(-cmd, SIGKILL); /* the supervisor died before the command: its group goes */
    if (sup_reaped)
        ;
    else if (stp[0] < 0)
        waitpid(sup, NULL, 0); /* it closed the status pipe on its way out */
    else
        reap_later(sup);
    if (spawn_errno) {
        free(so.buf);
        free(se.buf);
        snprintf(why, why_len, "spawn: %s: %s", rq->argv[0], strerror(spawn_errno));
        __atomic_sub_fetch(&running, 1, __ATOMIC_ACQ_REL);
        return EXEC_SPAWN;
    }
    if (have_status && WIFEXITED(status)) {
        res->exited = true;
        res->code = WEXITSTATUS(status);
    } else if (have_status && WIFSIGNALED(status)) {
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
        if (in[i] >= 0) close(in[i]);
        if (out[i] >= 0) close(out[i]);
        if (err[i] >= 0) close(err[i]);
        if (stp[i] >= 0) close(stp[i]);
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
