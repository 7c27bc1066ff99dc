/*
 * libcrypto.so shim: civetweb dlopen()s the unversioned "libcrypto.so", which only the
 * libssl-dev package installs. This empty object carries that SONAME and depends on
 * libcrypto.so.3, so TLS works on machines with the runtime library alone.
 */
int wapphook_crypto_shim_present(void);
int wapphook_crypto_shim_present(void)
{
    return 1;
}
