/* Signature parsing and verification: known answers, every malformed shape, rotation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "base/signature.h"

#define KA_SECRET "It's a Secret to Everybody"
#define KA_BODY "Hello, World!"
#define KA_HEX "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

static void known_answer(void **state)
{
    char hex[65];
    (void)state;
    assert_int_equal(
        signature_hmac_hex(KA_SECRET, strlen(KA_SECRET), KA_BODY, strlen(KA_BODY), hex), 0);
    assert_string_equal(hex, KA_HEX);
}

static int parse(const char *s, unsigned char mac[WH_MAC_LEN])
{
    return signature_parse(s, strlen(s), mac);
}

static void parse_accepts_both_cases(void **state)
{
    unsigned char a[WH_MAC_LEN], b[WH_MAC_LEN];
    char upper[80] = "sha256=";
    (void)state;
    for (size_t i = 0; i < 64; i++)
        upper[7 + i] = (char)(KA_HEX[i] >= 'a' ? KA_HEX[i] - 32 : KA_HEX[i]);
    assert_int_equal(parse("sha256=" KA_HEX, a), 0);
    assert_int_equal(parse(upper, b), 0);
    assert_memory_equal(a, b, WH_MAC_LEN);
    assert_int_equal(a[0], 0x75);
    assert_int_equal(a[31], 0x17);
}

static void parse_refuses_malformed(void **state)
{
    unsigned char m[WH_MAC_LEN];
    const char *bad[] = {
        "",
        KA_HEX,           /* no prefix */
        "sha1=" KA_HEX,   /* other algorithm */
        "SHA256=" KA_HEX, /* prefix is lower-case */
        "sha256 =" KA_HEX,
        "sha256=" KA_HEX "0",                                                      /* 65 digits */
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",  /* 63 */
        "sha256=g57107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", /* not hex */
        "sha256= 57107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        " sha256=" KA_HEX,
        "sha256=",
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(parse(bad[i], m), -1);
    assert_int_equal(signature_parse(NULL, 0, m), -1);
    /* an embedded NUL must not shorten the comparison */
    assert_int_equal(signature_parse("sha256=\0" KA_HEX, 7 + 64, m), -1);
}

static void check_matches_any_secret(void **state)
{
    struct wh_secret s[2] = {{(const unsigned char *)"old", 3},
                             {(const unsigned char *)KA_SECRET, strlen(KA_SECRET)}};
    struct verifier *v;
    unsigned char mac[WH_MAC_LEN];
    char err[128];
    (void)state;
    assert_int_equal(signature_verifier_new(s, 2, &v, err, sizeof err), 0);
    assert_int_equal(parse("sha256=" KA_HEX, mac), 0);
    assert_int_equal(signature_check(v, mac, KA_BODY, strlen(KA_BODY)), 0);
    /* one byte of the body changed */
    assert_int_equal(signature_check(v, mac, "Hello, World?", 13), -1);
    /* one bit of the MAC changed */
    mac[31] ^= 1;
    assert_int_equal(signature_check(v, mac, KA_BODY, strlen(KA_BODY)), -1);
    signature_verifier_free(v);

    /* only the old secret: the same signature fails */
    assert_int_equal(signature_verifier_new(s, 1, &v, err, sizeof err), 0);
    mac[31] ^= 1;
    assert_int_equal(signature_check(v, mac, KA_BODY, strlen(KA_BODY)), -1);
    signature_verifier_free(v);
}

static void check_empty_body_and_reuse(void **state)
{
    struct wh_secret s = {(const unsigned char *)"k", 1};
    struct verifier *v;
    unsigned char mac[WH_MAC_LEN];
    char hex[65], hdr[80], err[64];
    (void)state;
    assert_int_equal(signature_hmac_hex("k", 1, "", 0, hex), 0);
    snprintf(hdr, sizeof hdr, "sha256=%s", hex);
    assert_int_equal(signature_verifier_new(&s, 1, &v, err, sizeof err), 0);
    assert_int_equal(parse(hdr, mac), 0);
    /* the keyed context is reused: many checks give the same answer */
    for (int i = 0; i < 100; i++)
        assert_int_equal(signature_check(v, mac, "", 0), 0);
    signature_verifier_free(v);
    assert_int_equal(signature_verifier_new(&s, 0, &v, err, sizeof err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(known_answer),
        cmocka_unit_test(parse_accepts_both_cases),
        cmocka_unit_test(parse_refuses_malformed),
        cmocka_unit_test(check_matches_any_secret),
        cmocka_unit_test(check_empty_body_and_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
