#include "sockets.h"

#include <dirent.h>
#include <netinet/in.h>
#include <stdlib.h>

int sockaddr_port(const struct sockaddr_storage *s)
{
    if (s->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)s)->sin_port);
    if (s->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)s)->sin6_port);
    return -1;
}

void sockets_foreach(int (*fn)(int fd, const struct sockaddr_storage *local, void *arg), void *arg)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    if (!d)
        return;
    while ((e = readdir(d))) {
        struct sockaddr_storage local;
        socklen_t ll = sizeof local;
        int fd = atoi(e->d_name);

        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d))
            continue;
        if (getsockname(fd, (struct sockaddr *)&local, &ll) != 0)
            continue; /* not a socket */
        if (fn(fd, &local, arg))
            break;
    }
    closedir(d);
}
