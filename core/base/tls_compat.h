/*
 * TLS compatibility with Debian's libcivetweb 1.15 (see compat/README.md): a start-up check
 * of the libssl.so shim. (The stack-size floor civetweb's workers need is in
 * http/libc_overrides.c.)
 */
#ifndef WH_TLS_COMPAT_H
#define WH_TLS_COMPAT_H

#include <stddef.h>

/* 0 if civetweb's dlopen("libssl.so") will get the shim (or otherwise find every function it
 * needs); -1 with a message in err otherwise. */
int tls_compat_check(char *err, size_t err_len);

#endif
