#include "signature.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One keyed HMAC context per secret, fetched and keyed once. A thread checking signatures
 * takes its own copies once (per verifier) and re-initialises them per request with the
 * key they already hold, which allocates nothing. */
struct verifier {
    EVP_MAC *mac;
    unsigned long id; /* unique per verifier: tells a thread its copies are stale */
    size_t n;
    EVP_MAC_CTX *keyed[];
};

#define THREAD_CTX_MAX 16

struct thread_ctxs {
    unsigned long id;
    size_t n;
    EVP_MAC_CTX *ctx[THREAD_CTX_MAX];
};

static __thread struct thread_ctxs mine;
static unsigned long next_id = 1;

int signature_verifier_new(const struct wh_secret *secrets, size_t n, struct verifier **out,
                           char *err, size_t err_len)
{
    struct verifier *v;
    OSSL_PARAM params[2];

    if (n == 0) {
        snprintf(err, err_len, "no secret configured");
        return -1;
    }
    v = calloc(1, sizeof *v + n * sizeof v->keyed[0]);
    if (!v) goto oom;
    v->id = __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED);
    v->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!v->mac) goto crypto_fail;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    for (size_t i = 0; i < n; i++) {
        v->keyed[i] = EVP_MAC_CTX_new(v->mac);
        v->n = i + 1;
        if (!v->keyed[i] || !EVP_MAC_init(v->keyed[i], secrets[i].key, secrets[i].len, params))
            goto crypto_fail;
    }
    *out = v;
    return 0;
crypto_fail:
    signature_verifier_free(v);
    snprintf(err, err_len, "OpenSSL could not set up HMAC-SHA256");
    return -1;
oom:
    snprintf(err, err_len, "out of memory");
    return -1;
}

void signature_verifier_free(struct verifier *v)
{
    if (!v) return;
    for (size_t i = 0; i < v->n; i++)
        EVP_MAC_CTX_free(v->keyed[i]); /* OpenSSL wipes the key material */
    EVP_MAC_free(v->mac);
    free(v);
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int signature_parse(const char *value, size_t len, unsigned char mac[WH_MAC_LEN])
{
    static const char prefix[] = "sha256=";
    const size_t plen = sizeof prefix - 1;

    if (!value || len != plen + 2 * WH_MAC_LEN || memcmp(value, prefix, plen) != 0) return -1;
    value += plen;
    for (size_t i = 0; i < WH_MAC_LEN; i++) {
        int hi = hexval((unsigned char)value[2 * i]);
        int lo = hexval((unsigned char)value[2 * i + 1]);

        if (hi < 0 || lo < 0) return -1;
        mac[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* The calling thread's copy of keyed context i of v, or NULL (then compute() dups). */
static EVP_MAC_CTX *thread_ctx(const struct verifier *v, size_t i)
{
    if (v->n > THREAD_CTX_MAX) return NULL;
    if (mine.id != v->id) {
        for (size_t k = 0; k < mine.n; k++)
            EVP_MAC_CTX_free(mine.ctx[k]);
        mine.n = 0;
        mine.id = v->id;
        for (size_t k = 0; k < v->n; k++) {
            mine.ctx[k] = EVP_MAC_CTX_dup(v->keyed[k]);
            if (!mine.ctx[k]) {
                mine.id = 0;
                return NULL;
            }
            mine.n = k + 1;
        }
    }
    return mine.ctx[i];
}

static int compute(const struct verifier *v, size_t i, const void *body, size_t len,
                   unsigned char out[WH_MAC_LEN])
{
    EVP_MAC_CTX *c = thread_ctx(v, i);
    EVP_MAC_CTX *own = NULL;
    size_t outl = 0;
    int ok;

    /* NULL key: start again with the key this context already holds */
    if (!c || !EVP_MAC_init(c, NULL, 0, NULL)) c = own = EVP_MAC_CTX_dup(v->keyed[i]);
    if (!c) return -1;
    ok = EVP_MAC_update(c, body, len) && EVP_MAC_final(c, out, &outl, WH_MAC_LEN) &&
         outl == WH_MAC_LEN;
    EVP_MAC_CTX_free(own);
    return ok ? 0 : -1;
}

void signature_thread_cleanup(void)
{
    for (size_t k = 0; k < mine.n; k++)
        EVP_MAC_CTX_free(mine.ctx[k]);
    mine.n = 0;
    mine.id = 0;
}

int signature_check(const struct verifier *v, const unsigned char mac[WH_MAC_LEN], const void *body,
                    size_t len)
{
    unsigned char expected[WH_MAC_LEN];
    int matched = 0;

    for (size_t i = 0; i < v->n; i++) {
        if (compute(v, i, body, len, expected) != 0) continue;
        matched |= CRYPTO_memcmp(expected, mac, WH_MAC_LEN) == 0;
    }
    OPENSSL_cleanse(expected, sizeof expected);
    return matched ? 0 : -1;
}

int signature_hmac_hex(const void *key, size_t key_len, const void *data, size_t len,
                       char out[2 * WH_MAC_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[WH_MAC_LEN];
    unsigned int maclen = 0;

    /* HMAC() rejects a NULL key even with length 0. */
    if (!HMAC(EVP_sha256(), key_len ? key : "", (int)key_len, data, len, mac, &maclen) ||
        maclen != WH_MAC_LEN)
        return -1;
    for (size_t i = 0; i < WH_MAC_LEN; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
    }
    out[2 * WH_MAC_LEN] = '\0';
    return 0;
}
