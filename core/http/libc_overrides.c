/*
 * Every libc function wapphook replaces process-wide, in one place. civetweb 1.15 offers no
 * hook for what these do, so the executable defines the functions themselves: a definition
 * in the executable wins over libc's for every caller, libcivetweb included, because the link
 * exports these names dynamically (CMakeLists.txt, --export-dynamic-symbol). Each does its
 * part, then calls the next definition (libc's), found once with dlsym(RTLD_NEXT).
 *
 *   accept, accept4  the per-client connection cap: a connection past it is closed as the
 *                    kernel hands it over, before a worker thread sees it (clients.h)
 *   close            the same table counts the connection out (clients.h)
 *   bind             socket activation: civetweb binds its own listeners, and a socket
 *                    handed over by systemd takes the new one's place (activation.h)
 *   pthread_attr_setstacksize
 *                    a stack-size floor: civetweb gives its workers 100 KiB stacks, which
 *                    OpenSSL 3's SSL_write overflows (compat/README.md)
 *
 * They run in every thread, libraries' included, before main() may have set anything up:
 * each is safe with its module not yet initialised (it then only forwards).
 */
#define _GNU_SOURCE
#include "libc_overrides.h"

#include "activation.h"
#include "clients.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sys/socket.h>

/* The smallest stack any thread may ask for (OpenSSL 3's SSL_write needs more than civetweb's
 * 100 KiB; AddressSanitizer's redzones need more again). */
#if defined(__SANITIZE_ADDRESS__)
#define WH_STACK_FLOOR (4u << 20)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WH_STACK_FLOOR (4u << 20)
#endif
#endif
#ifndef WH_STACK_FLOOR
#define WH_STACK_FLOOR (1u << 20)
#endif

/* The next definition of name (libc's), looked up once per slot. */
static void *next(void **slot, const char *name)
{
    void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

    if (!fn) {
        fn = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*close_fn)(int);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*setstacksize_fn)(pthread_attr_t *, size_t);

int libc_close(int fd)
{
    static void *fn;
    return ((close_fn)next(&fn, "close"))(fd);
}

int accept(int lfd, struct sockaddr *addr, socklen_t *len)
{
    static void *fn;
    return clients_admit(lfd, ((accept_fn)next(&fn, "accept"))(lfd, addr, len));
}

int accept4(int lfd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static void *fn;
    return clients_admit(lfd, ((accept4_fn)next(&fn, "accept4"))(lfd, addr, len, flags));
}

int close(int fd)
{
    clients_closing(fd);
    return libc_close(fd);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static void *fn;
    int rc = activation_bind(fd, addr, len);

    return rc != 1 ? rc : ((bind_fn)next(&fn, "bind"))(fd, addr, len);
}

int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size)
{
    static void *fn;
    return ((setstacksize_fn)next(&fn, "pthread_attr_setstacksize"))(
        attr, size < WH_STACK_FLOOR ? WH_STACK_FLOOR : size);
}
