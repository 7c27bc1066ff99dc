/*
 * TLS material: a manifest's certificate chain and key (one PEM file), its minimum version
 * and TLS 1.2 suites (docs/configuration.md, server.tls), loaded into an OpenSSL context.
 * Each generation loads its own, checked whole before the generation is used; every new
 * handshake takes the current generation's (http/server.c), keeping a reference of its own.
 */
#ifndef WH_TLS_MATERIAL_H
#define WH_TLS_MATERIAL_H

#include "conf/conf.h"

#include <openssl/types.h>
#include <stdbool.h>
#include <stddef.h>

/* Does any listener of cfg serve HTTPS? */
bool tls_material_needed(const struct wh_config *cfg);

/* Puts cfg's certificate, key, minimum version and suites into ctx. 0, or -1 with
 * "FILE:LINE: reason" in err. */
int tls_material_apply(SSL_CTX *ctx, const struct wh_config *cfg, char *err, size_t err_len);

/* With an HTTPS listener: checks that TLS can work at all (tls_compat_check) and loads cfg's
 * material into a new context, *tls. Without one: 0 and *tls NULL. -1 with
 * "FILE:LINE: reason" in err. */
int tls_material_load(const struct wh_config *cfg, SSL_CTX **tls, char *err, size_t err_len);
/* Frees what tls_material_load gave (handshakes that took it keep their own reference). */
void tls_material_free(SSL_CTX *tls);

#endif
