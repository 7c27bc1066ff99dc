/* Fuzz target: the signature header parser and the constant-time check. Input: a header
 * value, a NUL byte, then the body. */
#include "base/signature.h"

#include <stdint.h>
#include <string.h>

static struct verifier *v;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t hlen = nul ? (size_t)(nul - data) : size;
    const uint8_t *body = nul ? nul + 1 : data + size;
    size_t blen = nul ? size - hlen - 1 : 0;
    unsigned char mac[WH_MAC_LEN];
    char hex[2 * WH_MAC_LEN + 1], header[80];

    if (!v) {
        struct wh_secret s[2] = {{(const unsigned char *)"one", 3},
                                 {(const unsigned char *)"two", 3}};
        char err[64];
        if (signature_verifier_new(s, 2, &v, err, sizeof err)) __builtin_trap();
    }
    if (signature_parse((const char *)data, hlen, mac) == 0)
        (void)signature_check(v, mac, body, blen);
    /* the right signature for this body always verifies, and a flipped bit never does */
    signature_hmac_hex("two", 3, body, blen, hex);
    memcpy(header, "sha256=", 7);
    memcpy(header + 7, hex, 64);
    if (signature_parse(header, 71, mac) != 0 || signature_check(v, mac, body, blen) != 0)
        __builtin_trap();
    mac[blen % WH_MAC_LEN] ^= 1;
    if (signature_check(v, mac, body, blen) == 0) __builtin_trap();
    return 0;
}
