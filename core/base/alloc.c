#include "alloc.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *enough(void *p)
{
    static const char msg[] = "wapphook: out of memory\n";

    if (!p) {
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1); /* no allocation on this path */
        abort();
    }
    return p;
}

void *wh_xmalloc(size_t n)
{
    return enough(malloc(n ? n : 1));
}

void *wh_xcalloc(size_t n, size_t size)
{
    return enough(calloc(n ? n : 1, size ? size : 1));
}

void *wh_xrealloc(void *p, size_t n)
{
    return enough(realloc(p, n ? n : 1));
}

char *wh_xstrdup(const char *s)
{
    return enough(strdup(s));
}
