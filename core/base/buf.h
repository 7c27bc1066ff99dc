/*
 * The growable byte buffer. Its content is NUL-terminated once anything was added. Errors
 * are sticky: after an allocation failed, or an addition would pass `max`, nothing more is
 * added and `failed` says why, so a writer adds without checking each call and checks once
 * at the end (docs/development.md, "Out of memory").
 */
#ifndef WH_BUF_H
#define WH_BUF_H

#include <stddef.h>

enum { WH_BUF_OOM = 1, WH_BUF_OVER = 2 };

struct wh_buf {
    char *p; /* NULL until the first addition; owned: buf_free */
    size_t len;
    size_t cap;
    size_t max; /* the most len may reach; 0: no limit */
    int failed; /* 0, WH_BUF_OOM or WH_BUF_OVER */
};

/* Appends n bytes of s. 0, or -1 (now or earlier) with b->failed set. */
int buf_add(struct wh_buf *b, const void *s, size_t n);
int buf_str(struct wh_buf *b, const char *s);
__attribute__((format(printf, 2, 3))) int buf_printf(struct wh_buf *b, const char *fmt, ...);
void buf_free(struct wh_buf *b);

#endif
