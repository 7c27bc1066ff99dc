/*
 * Socket activation (docs/operations.md): listening sockets handed over by systemd (or any
 * supervisor) through LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES, so that a restart or a
 * binary upgrade never closes the listener: connections that arrive meanwhile wait in the
 * kernel's queue for the next process. civetweb 1.15 only binds its own listeners, so bind()
 * is replaced (libc_overrides.c): when it binds the address of a socket handed over, that
 * socket takes the new one's place (dup3) and nothing is bound. Process-wide; set up before
 * the listeners.
 */
#ifndef WH_ACTIVATION_H
#define WH_ACTIVATION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Takes the sockets handed over (once; the LISTEN_* variables are removed so that commands
 * the handlers run do not see them). Returns how many, or -1 with a reason in err. */
int activation_take(char *err, size_t err_len);
/* After the listeners are set up: logs and closes the sockets no listener took. */
void activation_finish(void);
/* Is fd a socket handed over (after bind() put it there)? Such a listener is shared with
 * the supervisor and the next process: stopping must not shut it down. */
bool activation_shared(int fd);
/* Called by bind(): when addr is a socket handed over, that socket takes fd's place (0, or
 * -1 with errno). 1: not one of them, the real bind() is to run. */
int activation_bind(int fd, const struct sockaddr *addr, socklen_t len);

#endif
