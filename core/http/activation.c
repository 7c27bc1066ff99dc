#define _GNU_SOURCE
#include "activation.h"

#include "base/base.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define MAX_HANDED 64

static struct {
    int n;
    int fd[MAX_HANDED];     /* the descriptor handed over, -1 once taken or closed */
    int placed[MAX_HANDED]; /* where bind() put it: civetweb's descriptor, or -1 */
    struct sockaddr_storage addr[MAX_HANDED];
    char name[MAX_HANDED][64];
} act;

static void describe(const struct sockaddr_storage *a, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)a;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        port = ntohs(v4->sin_port);
        snprintf(out, len, "%s:%d", host, port);
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const void *)a;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        port = ntohs(v6->sin6_port);
        snprintf(out, len, "[%s]:%d", host, port);
    } else {
        snprintf(out, len, "(not an IP socket)");
    }
}

int activation_take(char *err, size_t err_len)
{
    char **names = NULL;
    int n = sd_listen_fds_with_names(1, &names); /* 1: unset LISTEN_*, set FD_CLOEXEC */

    if (n <= 0) {
        free(names);
        return n < 0 ? 0 : 0; /* none handed over, or for another process (LISTEN_PID) */
    }
    if (n > MAX_HANDED) {
        snprintf(err, err_len, "LISTEN_FDS: %d sockets handed over, at most %d are taken", n,
                 MAX_HANDED);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        socklen_t len = sizeof act.addr[i];

        if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0 ||
            getsockname(fd, (struct sockaddr *)&act.addr[i], &len) != 0 ||
            (act.addr[i].ss_family != AF_INET && act.addr[i].ss_family != AF_INET6)) {
            snprintf(err, err_len, "LISTEN_FDS: descriptor %d is not a listening TCP socket", fd);
            return -1;
        }
        act.fd[i] = fd;
        act.placed[i] = -1;
        snprintf(act.name[i], sizeof act.name[i], "%s", names && names[i] ? names[i] : "unknown");
    }
    for (int i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
    act.n = n;
    return n;
}

static bool same_address(const struct sockaddr *a, socklen_t alen, const struct sockaddr_storage *b)
{
    if (a->sa_family != b->ss_family) return false;
    if (a->sa_family == AF_INET && alen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6 && alen >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return false;
}

int activation_bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    for (int i = 0; i < act.n; i++) {
        if (act.fd[i] >= 0 && same_address(addr, len, &act.addr[i])) {
            /* the handed-over socket, already bound and listening, in the new one's place */
            if (dup3(act.fd[i], fd, O_CLOEXEC) < 0) return -1;
            close(act.fd[i]);
            act.fd[i] = -1;
            act.placed[i] = fd;
            return 0;
        }
    }
    return 1;
}

void activation_finish(void)
{
    for (int i = 0; i < act.n; i++) {
        char where[96];

        describe(&act.addr[i], where, sizeof where);
        if (act.placed[i] >= 0) {
            log_msg(LOG_INFO, "listener handed over", LOG_S("address", where),
                    LOG_S("name", act.name[i]));
        } else if (act.fd[i] >= 0) {
            log_msg(LOG_WARN, "a socket handed over matches no listener: closed",
                    LOG_S("address", where), LOG_S("name", act.name[i]));
            close(act.fd[i]);
            act.fd[i] = -1;
        }
    }
}

bool activation_shared(int fd)
{
    for (int i = 0; i < act.n; i++)
        if (act.placed[i] == fd) return true;
    return false;
}
