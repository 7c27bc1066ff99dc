/*
 * The stack floor works by interposition: this definition in the executable wins over
 * libc's for every caller, libcivetweb included (the link exports it dynamically).
 */
#define _GNU_SOURCE
#include "tls_compat.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

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

int wapphook_ssl_shim_present(void);
int wapphook_crypto_shim_present(void);

size_t tls_compat_stack_floor(void)
{
    return WH_STACK_FLOOR;
}

typedef int (*setstacksize_fn)(pthread_attr_t *, size_t);

int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size)
{
    static setstacksize_fn real;
    setstacksize_fn fn = __atomic_load_n(&real, __ATOMIC_ACQUIRE);

    if (!fn) {
        fn = (setstacksize_fn)dlsym(RTLD_NEXT, "pthread_attr_setstacksize");
        __atomic_store_n(&real, fn, __ATOMIC_RELEASE);
    }
    if (size < WH_STACK_FLOOR)
        size = WH_STACK_FLOOR;
    return fn(attr, size);
}

int tls_compat_check(char *err, size_t err_len)
{
    void *h;
    void *fn;

    /* Referencing the shims keeps them linked even under --as-needed. */
    if (!wapphook_ssl_shim_present() || !wapphook_crypto_shim_present())
        return -1;
    h = dlopen("libssl.so", RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        snprintf(err, err_len, "TLS: the libssl.so compatibility shim is not loaded (%s)",
                 dlerror());
        return -1;
    }
    fn = dlsym(h, "SSL_get_peer_certificate");
    dlclose(h);
    if (!fn) {
        snprintf(err, err_len, "TLS: libssl.so lacks SSL_get_peer_certificate; "
                               "civetweb would crash on the first HTTPS request");
        return -1;
    }
    return 0;
}
