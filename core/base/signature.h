/*
 * Signature checks: parse "sha256=<64 hex>" and compare HMAC-SHA256(secret, body) in
 * constant time against every configured secret. Pure functions over caller-owned memory;
 * a verifier owns copies of its keys (wiped on free) and is immutable once built, so any
 * number of threads may use one at once. Each thread keeps its own re-usable copies of the
 * keyed contexts of the last verifier it used (freed by signature_thread_cleanup()).
 */
#ifndef WH_VERIFY_H
#define WH_VERIFY_H

#include <stddef.h>

#define WH_MAC_LEN 32

struct wh_secret {
    const unsigned char *key;
    size_t len;
};

struct verifier;

/* 0, or -1 with a reason in err. */
int signature_verifier_new(const struct wh_secret *secrets, size_t n, struct verifier **out,
                           char *err, size_t err_len);
void signature_verifier_free(struct verifier *v);

/* Parses a signature header value: exactly "sha256=" followed by 64 hex digits, either case.
 * 0 and the decoded MAC, or -1. */
int signature_parse(const char *value, size_t len, unsigned char mac[WH_MAC_LEN]);

/* 0 if mac equals HMAC-SHA256 of body under any of the verifier's secrets, -1 otherwise.
 * Every secret is always computed and compared with CRYPTO_memcmp, so the time taken does
 * not depend on which secret matched, or on how much of the MAC was right. */
int signature_check(const struct verifier *v, const unsigned char mac[WH_MAC_LEN], const void *body,
                    size_t len);

/* Frees the calling thread's cached HMAC contexts (call before a thread exits). */
void signature_thread_cleanup(void);

/* HMAC-SHA256 of data under key, as 64 lower-case hex digits and a NUL. 0 or -1. */
int signature_hmac_hex(const void *key, size_t key_len, const void *data, size_t len,
                       char out[2 * WH_MAC_LEN + 1]);

#endif
