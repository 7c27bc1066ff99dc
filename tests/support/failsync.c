/* LD_PRELOAD fault injection for the durable tests: while the file named by $FAILSYNC
 * exists, fsync() and fdatasync() fail with EIO (what a dying disk or a full thin volume
 * reports). Everything else goes to libc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void)
{
    const char *f = getenv("FAILSYNC");
    return f && access(f, F_OK) == 0;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
