/*
 * civetweb 1.15 hands out no socket descriptors. For the things wapphook must do to a socket
 * it does not own — cut a dripping body read, stop accepting at shutdown, wake civetweb's
 * accept loop — this finds them by address in the process's descriptor table.
 */
#ifndef WH_SOCKETS_H
#define WH_SOCKETS_H

#include <stdbool.h>
#include <sys/socket.h>

/* Calls fn for every socket descriptor of the process, with its local address, until fn
 * returns non-zero. */
void socket_table_foreach(int (*fn)(int fd, const struct sockaddr_storage *local, void *arg),
                          void *arg);

/* Port of an AF_INET or AF_INET6 address, or -1. */
int socket_table_port(const struct sockaddr_storage *s);
/* For socket_table_foreach callbacks: is fd a listening socket on one of ports? */
bool socket_table_listening_on(int fd, const struct sockaddr_storage *local, const int *ports,
                               int n_ports);

/* Stopping a civetweb context at once. Its master thread sleeps in poll() on the listening
 * descriptors, up to 2 s at a time, and sees mg_stop()'s flag only when that returns; a
 * descriptor swapped under a poll in progress does not wake it. So each listener is
 * replaced (dup2, atomically) by a UDP socket bound to loopback and shut down: the kernel
 * refuses new connections from then on, and a datagram sent to the stand-in wakes the
 * poll. */
struct listen_stop {
    int n;
    struct sockaddr_storage wake[64]; /* each stand-in's address */
};

/* Replaces every listening socket on one of ports (n_ports of them) by its stand-in;
 * returns how many. A socket shared with a supervisor (socket activation, shared(fd)
 * true) is only swapped out, never shut down: its queue waits for the next process. */
int socket_table_stand_in(const int *ports, int n_ports, bool (*shared)(int fd),
                          struct listen_stop *ls);
/* Runs stop(arg) (mg_stop) while a thread sends a datagram to each stand-in every 20 ms. */
void socket_table_stop_waking(const struct listen_stop *ls, void (*stop)(void *), void *arg);

#endif
