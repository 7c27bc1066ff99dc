/*
 * libssl.so shim for Debian's libcivetweb 1.15 on OpenSSL 3.
 *
 * civetweb dlopen()s "libssl.so" and looks every TLS function up by name. OpenSSL 3 turned
 * SSL_get_peer_certificate into a macro, so the lookup yields NULL and civetweb calls it on
 * every TLS connection. This object carries SONAME "libssl.so" and depends on libssl.so.3:
 * the wapphook binary links it, glibc then answers civetweb's dlopen("libssl.so") with it,
 * and dlsym() on it finds this one function here and every other one in libssl.so.3.
 * A civetweb that no longer needs the function simply never calls it.
 */
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate

X509 *SSL_get_peer_certificate(const SSL *ssl);

/* Same contract as OpenSSL 1.1's function: the caller owns the returned reference. */
X509 *SSL_get_peer_certificate(const SSL *ssl)
{
    return SSL_get1_peer_certificate(ssl);
}

/* Called by wapphook at start-up so the linker keeps this library as a dependency. */
int wapphook_ssl_shim_present(void);
int wapphook_ssl_shim_present(void)
{
    return 1;
}
