/* Challenge echo (decoding, limits, UTF-8, escaping), Content-Type, header look-up,
 * event type names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "base/json_escape.h"
#include "conf/conf.h"
#include "http/request.h"

static char body[CHALLENGE_BODY_MAX];

static const char *ok(const char *query)
{
    const char *why = NULL;
    int n = request_challenge_body(query, body, sizeof body, &why);
    if (n < 0) fail_msg("refused %s: %s", query, why);
    assert_int_equal((size_t)n, strlen(body));
    return body;
}

static const char *refused(const char *query)
{
    const char *why = NULL;
    assert_int_equal(request_challenge_body(query, body, sizeof body, &why), -1);
    assert_non_null(why);
    return why;
}

static void challenge_echo(void **state)
{
    (void)state;
    assert_string_equal(ok("challenge=abc"), "{\"challenge\":\"abc\"}");
    assert_string_equal(ok("x=1&challenge=a+b&y=2"), "{\"challenge\":\"a b\"}");
    assert_string_equal(ok("challenge=first&challenge=second"), "{\"challenge\":\"first\"}");
    assert_string_equal(ok("challenge=%22q%22"), "{\"challenge\":\"\\\"q\\\"\"}");
    assert_string_equal(ok("challenge=a%5Cb"), "{\"challenge\":\"a\\\\b\"}");
    assert_string_equal(ok("challenge=%0A%01%7F"), "{\"challenge\":\"\\n\\u0001\\u007f\"}");
    assert_string_equal(ok("challenge=%3C%2Fscript%3E"), "{\"challenge\":\"<\\/script>\"}");
    assert_string_equal(ok("challenge=a%2Fb"), "{\"challenge\":\"a/b\"}");
    assert_string_equal(ok("challenge=%00"), "{\"challenge\":\"\\u0000\"}");
    assert_string_equal(ok("challenge=%C3%A9%F0%9F%98%80"),
                        "{\"challenge\":\"\xC3\xA9\xF0\x9F\x98\x80\"}");
}

static void challenge_limits(void **state)
{
    char q[4000];
    (void)state;
    strcpy(q, "challenge=");
    memset(q + 10, 'x', 1024);
    q[10 + 1024] = '\0';
    assert_int_equal(strlen(ok(q)), 16 + 1024);
    strcat(q, "y");
    assert_string_equal(refused(q), "challenge longer than 1024 bytes");
    /* 1024 bytes after decoding, 3072 before */
    strcpy(q, "challenge=");
    for (int i = 0; i < 1024; i++)
        strcat(q, "%41");
    assert_int_equal(strlen(ok(q)), 16 + 1024);
    strcat(q, "%41");
    refused(q);
}

static void challenge_refusals(void **state)
{
    const char *why = NULL;
    (void)state;
    assert_string_equal(refused("other=1"), "missing challenge");
    assert_string_equal(refused(""), "missing challenge");
    assert_int_equal(request_challenge_body(NULL, body, sizeof body, &why), -1);
    assert_string_equal(refused("challenge="), "empty challenge");
    assert_string_equal(refused("challenge=%FF"), "challenge is not valid UTF-8");
    assert_string_equal(refused("challenge=%C0%AF"), "challenge is not valid UTF-8"); /* overlong */
    assert_string_equal(refused("challenge=%ED%A0%80"),
                        "challenge is not valid UTF-8"); /* surrogate */
    assert_string_equal(refused("challenge=%E2%82"), "challenge is not valid UTF-8"); /* cut */
}

static void escape_everything_json_needs(void **state)
{
    char out[JSONESC_MAX(16)];
    size_t n;
    (void)state;
    n = json_escape(out, "a\"b\\c\td</e/", 11);
    assert_int_equal(n, strlen("a\\\"b\\\\c\\td<\\/e/"));
    assert_memory_equal(out, "a\\\"b\\\\c\\td<\\/e/", n);
    n = json_escape(out, "\r\x1f", 2);
    assert_memory_equal(out, "\\r\\u001f", n);
}

static void content_type(void **state)
{
    (void)state;
    assert_true(request_content_type_is_json("application/json"));
    assert_true(request_content_type_is_json("Application/JSON"));
    assert_true(request_content_type_is_json("application/json; charset=utf-8"));
    assert_true(request_content_type_is_json("application/json;charset=UTF-8"));
    assert_true(request_content_type_is_json(" application/json "));
    assert_false(request_content_type_is_json(NULL));
    assert_false(request_content_type_is_json(""));
    assert_false(request_content_type_is_json("text/plain"));
    assert_false(request_content_type_is_json("application/jsonx"));
    assert_false(request_content_type_is_json("application/json-patch+json"));
    assert_false(request_content_type_is_json("application/x-www-form-urlencoded"));
}

static void header_lookup(void **state)
{
    struct wh_header h[] = {{"Host", "x"},
                            {"x-wappcloud-signature", "a"},
                            {"X-Wappcloud-Signature", "b"},
                            {"Content-Type", "c"}};
    const char *v;
    (void)state;
    assert_int_equal(wh_header_find(h, 4, "X-WAPPCLOUD-SIGNATURE", &v), 2);
    assert_string_equal(v, "a");
    assert_int_equal(wh_header_find(h, 4, "content-type", &v), 1);
    assert_string_equal(v, "c");
    assert_int_equal(wh_header_find(h, 4, "X-Wappcloud-Event", &v), 0);
    assert_null(v);
}

static void event_types(void **state)
{
    char long_type[80];
    (void)state;
    assert_true(manifest_event_type_valid("incoming_message", 16));
    assert_true(manifest_event_type_valid("a.b:c-d_E9", 10));
    memset(long_type, 'a', 64);
    assert_true(manifest_event_type_valid(long_type, 64));
    assert_false(manifest_event_type_valid(long_type, 65));
    assert_false(manifest_event_type_valid("", 0));
    assert_false(manifest_event_type_valid("a b", 3));
    assert_false(manifest_event_type_valid("a/b", 3));
    assert_false(manifest_event_type_valid("*", 1));
    assert_false(manifest_event_type_valid("\xc3\xa9", 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(challenge_echo),     cmocka_unit_test(challenge_limits),
        cmocka_unit_test(challenge_refusals), cmocka_unit_test(escape_everything_json_needs),
        cmocka_unit_test(content_type),       cmocka_unit_test(header_lookup),
        cmocka_unit_test(event_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
