#define _GNU_SOURCE
#include "systemd_notify.h"

#include "clock.h"
#include "log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int fd = -1;

/* A non-blocking socket connected to NOTIFY_SOCKET ("/path" or "@abstract"), so that poll
 * can tell when the receiver's queue has room again. -1 if there is none. */
static int connect_notify_socket(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len;
    int s;

    if (!path || (path[0] != '/' && path[0] != '@') || (len = strlen(path)) >= sizeof a.sun_path)
        return -1;
    memcpy(a.sun_path, path, len);
    if (a.sun_path[0] == '@') a.sun_path[0] = '\0';
    s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&a,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len))) {
        close(s);
        return -1;
    }
    return s;
}

int systemd_notify(const char *state, int wait_ms)
{
    long long end = wh_mono_ms() + wait_ms;
    size_t len = strlen(state);
    int rc = -1, reconnected = 0;
    const char *why = "";

    if (!getenv("NOTIFY_SOCKET")) return 0;
    pthread_mutex_lock(&mu); /* one socket; sends from the signal thread and the monitor */
    for (;;) {
        if (fd < 0 && (fd = connect_notify_socket()) < 0) {
            why = "cannot connect to NOTIFY_SOCKET";
            break;
        }
        if (send(fd, state, len, MSG_NOSIGNAL) == (ssize_t)len) {
            rc = 0;
            break;
        }
        if (errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            long long left = end - wh_mono_ms();
            if (left > 0 && poll(&p, 1, (int)left) >= 0) continue;
            why = "nobody reads NOTIFY_SOCKET: its queue stayed full";
            break;
        }
        if (errno == EINTR) continue;
        /* the receiver went away (systemd re-executed): connect again, once */
        close(fd);
        fd = -1;
        why = "NOTIFY_SOCKET refused it";
        if (reconnected++) break;
    }
    pthread_mutex_unlock(&mu);
    if (rc != 0 && wait_ms > 0)
        log_msg(LOG_WARN, "systemd notification not delivered", LOG_S("reason", why),
                LOG_S("state", state), LOG_I("waited_ms", wait_ms));
    return rc;
}
