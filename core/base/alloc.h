/*
 * The out-of-memory policy (docs/development.md, "Out of memory"), in one place:
 *   - memory whose size a sender, a script or a stored event decides (bodies, buffers, JSON,
 *     Lua states, rows read from the spool) is allocated with malloc and checked: a failure
 *     refuses that request (500/503), fails that call, or leaves that row for the next read;
 *   - fixed-size bookkeeping (structures, names, lists of what a manifest names) is allocated
 *     with these: a failure writes "out of memory" to stderr and aborts, as no caller could go
 *     on with a half-built structure. Nothing acknowledged in durable mode is lost by it;
 *   - a thread that cannot be created fails the start, the reload or the spool's open.
 */
#ifndef WH_ALLOC_H
#define WH_ALLOC_H

#include <stddef.h>

void *wh_xmalloc(size_t n);
void *wh_xcalloc(size_t n, size_t size);
void *wh_xrealloc(void *p, size_t n);
char *wh_xstrdup(const char *s);

#endif
