#include "tls_material.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>

int tls_material_apply(SSL_CTX *ctx, const struct wh_config *cfg, char *err, size_t err_len)
{
    int min = cfg->tls_min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    unsigned long e;

    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_certificate) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_certificate, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        e = ERR_peek_last_error();
        snprintf(err, err_len,
                 "%s:%d: server.tls.certificate %s: %s (it must hold the private "
                 "key and the certificate chain, PEM)",
                 cfg->file, cfg->tls_certificate_line, cfg->tls_certificate,
                 e ? ERR_reason_error_string(e) : "unreadable");
        ERR_clear_error();
        return -1;
    }
    if (SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        snprintf(err, err_len,
                 "%s:%d: server.tls.ciphers \"%s\": no cipher suite OpenSSL knows "
                 "matches it",
                 cfg->file, cfg->tls_ciphers_line, cfg->tls_ciphers);
        ERR_clear_error();
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, min);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    return 0;
}

bool tls_material_needed(const struct wh_config *cfg)
{
    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (cfg->listeners[i].tls) return true;
    return false;
}

int tls_material_load(const struct wh_config *cfg, SSL_CTX **tls, char *err, size_t err_len)
{
    SSL_CTX *ctx;

    *tls = NULL;
    if (!tls_material_needed(cfg)) return 0;
    if (tls_compat_check(err, err_len)) return -1;
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, err_len, "TLS: OpenSSL could not create a context");
        return -1;
    }
    if (tls_material_apply(ctx, cfg, err, err_len)) {
        SSL_CTX_free(ctx);
        return -1;
    }
    *tls = ctx;
    return 0;
}

void tls_material_free(SSL_CTX *tls)
{
    SSL_CTX_free(tls);
}
