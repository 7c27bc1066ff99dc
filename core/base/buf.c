#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for n more bytes and the NUL. */
static int reserve(struct wh_buf *b, size_t n)
{
    size_t want, cap;
    char *p;

    if (b->failed) return -1;
    if (b->max && n > b->max - b->len) {
        b->failed = WH_BUF_OVER;
        return -1;
    }
    want = b->len + n + 1;
    if (want <= b->cap) return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < want)
        cap = cap > ((size_t)-1) / 2 ? want : cap * 2;
    if (!(p = realloc(b->p, cap))) {
        b->failed = WH_BUF_OOM;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int buf_add(struct wh_buf *b, const void *s, size_t n)
{
    if (reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int buf_str(struct wh_buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

int buf_printf(struct wh_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n)) return b->failed ? -1 : (b->failed = WH_BUF_OOM, -1);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void buf_free(struct wh_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}
