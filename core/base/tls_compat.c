#define _GNU_SOURCE
#include "tls_compat.h"

#include <dlfcn.h>
#include <stdio.h>

int wapphook_ssl_shim_present(void);
int wapphook_crypto_shim_present(void);

int tls_compat_check(char *err, size_t err_len)
{
    void *h;
    void *fn;

    /* Referencing the shims keeps them linked even under --as-needed. */
    if (!wapphook_ssl_shim_present() || !wapphook_crypto_shim_present()) return -1;
    h = dlopen("libssl.so", RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        snprintf(err, err_len, "TLS: the libssl.so compatibility shim is not loaded (%s)",
                 dlerror());
        return -1;
    }
    fn = dlsym(h, "SSL_get_peer_certificate");
    dlclose(h);
    if (!fn) {
        snprintf(err, err_len,
                 "TLS: libssl.so lacks SSL_get_peer_certificate; "
                 "civetweb would crash on the first HTTPS request");
        return -1;
    }
    return 0;
}
