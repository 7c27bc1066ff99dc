/*
 * civetweb 1.15 hands out no socket descriptors. For the two things wapphook must do to a
 * socket it does not own — cut a dripping body read, stop accepting at shutdown — this
 * finds them by address in the process's descriptor table.
 */
#ifndef WH_SOCKETS_H
#define WH_SOCKETS_H

#include <sys/socket.h>

/* Calls fn for every socket descriptor of the process, with its local address, until fn
 * returns non-zero. */
void sockets_foreach(int (*fn)(int fd, const struct sockaddr_storage *local, void *arg), void *arg);

/* Port of an AF_INET or AF_INET6 address, or -1. */
int sockaddr_port(const struct sockaddr_storage *s);

#endif
