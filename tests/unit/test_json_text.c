/* json_text: every verdict compared with jansson's, on hand-picked edge
 * cases and on a few hundred thousand seeded mutations of real payloads; the Lua tables built
 * from text compared with those built from jansson's tree; the dedupe path look-up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json_text.h"
#include "lua_same.h"
#include "lua/json.h"

static enum json_text_kind jansson_kind(const char *s, size_t n)
{
    json_error_t e;
    json_t *j = json_loadb(s, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    enum json_text_kind k = !j                  ? JSON_TEXT_INVALID
                            : json_is_object(j) ? JSON_TEXT_OBJECT
                                                : JSON_TEXT_OTHER;
    json_decref(j);
    return k;
}

/* Checks one text against jansson; returns the verdict. */
static enum json_text_kind agree(const char *s, size_t n)
{
    enum json_text_kind mine = json_text_check(s, n), theirs = jansson_kind(s, n);

    if (mine != theirs)
        fail_msg("verdict %d, jansson %d, on %zu bytes: %.*s", mine, theirs, n,
                 n > 200 ? 200 : (int)n, s);
    return mine;
}

static void edge_cases(void **state)
{
    static const struct {
        const char *text;
        enum json_text_kind want;
    } cases[] = {
        {"{}", JSON_TEXT_OBJECT},
        {" \t\r\n{ } \n", JSON_TEXT_OBJECT},
        {"", JSON_TEXT_INVALID},
        {"   ", JSON_TEXT_INVALID},
        {"[]", JSON_TEXT_OTHER},
        {"1", JSON_TEXT_OTHER},
        {"\"s\"", JSON_TEXT_OTHER},
        {"null", JSON_TEXT_OTHER},
        {"{} {}", JSON_TEXT_INVALID},
        {"{}x", JSON_TEXT_INVALID},
        {"{\"a\":1,}", JSON_TEXT_INVALID},
        {"{\"a\" 1}", JSON_TEXT_INVALID},
        {"{a:1}", JSON_TEXT_INVALID},
        {"{'a':1}", JSON_TEXT_INVALID},
        {"[1,]", JSON_TEXT_INVALID},
        {"[,1]", JSON_TEXT_INVALID},
        {"{\"a\":[1,2,{\"b\":null}],\"c\":true,\"d\":false}", JSON_TEXT_OBJECT},
        {"{\"a\":tru}", JSON_TEXT_INVALID},
        {"{\"a\":truex}", JSON_TEXT_INVALID},
        {"{\"a\":nul}", JSON_TEXT_INVALID},
        {"{\"a\":NaN}", JSON_TEXT_INVALID},
        {"{\"a\":Infinity}", JSON_TEXT_INVALID},
        /* numbers */
        {"{\"a\":0}", JSON_TEXT_OBJECT},
        {"{\"a\":-0}", JSON_TEXT_OBJECT},
        {"{\"a\":01}", JSON_TEXT_INVALID},
        {"{\"a\":-01}", JSON_TEXT_INVALID},
        {"{\"a\":-}", JSON_TEXT_INVALID},
        {"{\"a\":+1}", JSON_TEXT_INVALID},
        {"{\"a\":.5}", JSON_TEXT_INVALID},
        {"{\"a\":1.}", JSON_TEXT_INVALID},
        {"{\"a\":1.5e}", JSON_TEXT_INVALID},
        {"{\"a\":1e+}", JSON_TEXT_INVALID},
        {"{\"a\":1E-7}", JSON_TEXT_OBJECT},
        {"{\"a\":9223372036854775807}", JSON_TEXT_OBJECT},
        {"{\"a\":9223372036854775808}", JSON_TEXT_INVALID},
        {"{\"a\":-9223372036854775808}", JSON_TEXT_OBJECT},
        {"{\"a\":-9223372036854775809}", JSON_TEXT_INVALID},
        {"{\"a\":10000000000000000000000}", JSON_TEXT_INVALID},
        {"{\"a\":1e308}", JSON_TEXT_OBJECT},
        {"{\"a\":1.7976931348623157e308}", JSON_TEXT_OBJECT},
        {"{\"a\":1.8e308}", JSON_TEXT_INVALID},
        {"{\"a\":-1e309}", JSON_TEXT_INVALID},
        {"{\"a\":1e-400}", JSON_TEXT_OBJECT},
        {"{\"a\":0.0000000001e317}", JSON_TEXT_OBJECT},
        {"{\"a\":1e99999999999999999999}", JSON_TEXT_INVALID},
        {"{\"a\":1e-99999999999999999999}", JSON_TEXT_OBJECT},
        /* strings */
        {"{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}", JSON_TEXT_OBJECT},
        {"{\"a\":\"\\x\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"\\u00e9\\u20AC\"}", JSON_TEXT_OBJECT},
        {"{\"a\":\"\\u00g9\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"\\u0000\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"\\ud83d\\ude00\"}", JSON_TEXT_OBJECT},
        {"{\"a\":\"\\ud83d\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"\\ud83dx\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"\\ud83d\\u0041\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"\\ude00\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"tab\there\"}", JSON_TEXT_INVALID},
        {"{\"a\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}", JSON_TEXT_OBJECT},
        {"{\"a\":\"\xc0\xaf\"}", JSON_TEXT_INVALID},         /* overlong */
        {"{\"a\":\"\xe0\x80\xaf\"}", JSON_TEXT_INVALID},     /* overlong */
        {"{\"a\":\"\xed\xa0\x80\"}", JSON_TEXT_INVALID},     /* a surrogate in UTF-8 */
        {"{\"a\":\"\xf4\x90\x80\x80\"}", JSON_TEXT_INVALID}, /* past U+10FFFF */
        {"{\"a\":\"\xc3\"}", JSON_TEXT_INVALID},             /* cut short */
        {"{\"a\":\"\x80\"}", JSON_TEXT_INVALID},
        {"\xef\xbb\xbf{}", JSON_TEXT_INVALID}, /* a byte-order mark */
        {"{\"a\":\"unterminated}", JSON_TEXT_INVALID},
        /* duplicate keys, compared after unescaping */
        {"{\"a\":1,\"a\":2}", JSON_TEXT_INVALID},
        {"{\"a\":1,\"\\u0061\":2}", JSON_TEXT_INVALID},
        {"{\"\\/\":1,\"/\":2}", JSON_TEXT_INVALID},
        {"{\"a\":1,\"b\":{\"a\":2}}", JSON_TEXT_OBJECT},
        {"{\"a\":{\"x\":1},\"b\":{\"x\":1}}", JSON_TEXT_OBJECT},
        {"{\"a\":[{\"x\":1,\"x\":2}]}", JSON_TEXT_INVALID},
        {"{\"\":1,\"\":2}", JSON_TEXT_INVALID},
        {"{\"ab\":1,\"a\":2,\"b\":3}", JSON_TEXT_OBJECT},
    };

    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].text);
        if (agree(cases[i].text, n) != cases[i].want) fail_msg("case %zu: %s", i, cases[i].text);
    }
    /* a NUL byte inside and after the document */
    assert_int_equal(agree("{\"a\":\"x\0\"}", 10), JSON_TEXT_INVALID);
    assert_int_equal(agree("{}\0", 3), JSON_TEXT_INVALID);
    /* the one intended difference: jansson 2.14 skips a NUL right after a number or a
     * literal; a raw NUL is never JSON, so it is refused here */
    assert_int_equal(json_text_check("{\"a\":1\0}", 8), JSON_TEXT_INVALID);
    assert_int_equal(json_text_check("{\"a\":true\0,\"b\":2}", 17), JSON_TEXT_INVALID);
}

/* n containers deep around `inner`: "[[...inner...]]" inside an object. */
static char *nested(int n, const char *inner)
{
    size_t il = strlen(inner), len = 7 + 2 * (size_t)n + il;
    char *s = malloc(len + 1), *p = s;

    p += sprintf(p, "{\"a\":");
    memset(p, '[', (size_t)n);
    p += n;
    memcpy(p, inner, il);
    p += il;
    memset(p, ']', (size_t)n);
    p += n;
    *p++ = '}';
    *p = '\0';
    return s;
}

static void depth_limit_is_janssons(void **state)
{
    /* the object is level 1; a value at level 2049 is one too many */
    const int want_ok[][2] = {{2046, 1}, {2047, 0}, {2047, 1}, {2048, 0}};

    (void)state;
    for (size_t i = 0; i < sizeof want_ok / sizeof want_ok[0]; i++) {
        int n = want_ok[i][0];
        char *with = nested(n, "1"), *empty = nested(n, "");
        agree(with, strlen(with));
        agree(empty, strlen(empty));
        free(with);
        free(empty);
    }
    {
        char *ok = nested(2046, "1"), *deep = nested(2047, "1");
        assert_int_equal(json_text_check(ok, strlen(ok)), JSON_TEXT_OBJECT);
        assert_int_equal(json_text_check(deep, strlen(deep)), JSON_TEXT_INVALID);
        free(ok);
        free(deep);
    }
}

static void many_keys(void **state)
{
    /* enough keys to grow the duplicate table several times, then one repeated key */
    size_t cap = 4 << 20, n;
    char *s = malloc(cap), *p;

    (void)state;
    for (int dup = 0; dup < 2; dup++) {
        p = s;
        *p++ = '{';
        for (int i = 0; i < 50000; i++)
            p += sprintf(p, "%s\"k\\u0030%d\":%d", i ? "," : "", i, i);
        if (dup) p += sprintf(p, ",\"k0%d\":0", 31337); /* equal to k\u003031337 once unescaped */
        *p++ = '}';
        n = (size_t)(p - s);
        assert_int_equal(agree(s, n), dup ? JSON_TEXT_INVALID : JSON_TEXT_OBJECT);
    }
    free(s);
}

static const char *seeds[] = {
    "{\"event\":\"incoming_message\",\"data\":{\"message_id\":\"wamid.HBgLMTU1NTA\","
    "\"from\":{\"phone\":\"+15550100\",\"name\":\"Ana\"},\"timestamp\":1795741200,"
    "\"text\":{\"body\":\"Ol\\u00e1, caf\xc3\xa9 \\ud83d\\ude00\"},\"score\":-1.25e-3,"
    "\"tags\":[\"a\",\"b\",null,true,false,[],{}]}}",
    "{\"a\":[1,2.5,-0,1e10,\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"],\"b\":{\"c\":{\"d\":[[[]]]}}}",
};

/* wapphook.json.encode's writer against jansson's json_dumps of the same Lua value: the
 * same text, or both refusing. The value is top of L's stack. Returns 1 if it encoded. */
static int encodings_agree(lua_State *L)
{
    char err1[256] = "", err2[256] = "";
    size_t len;
    char *ours = wl_to_json_text(L, -1, 1 << 24, &len, err1);
    json_t *j = wl_to_json(L, -1, err2);
    char *theirs = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

    if ((ours == NULL) != (theirs == NULL) ||
        (ours && (strlen(theirs) != len || memcmp(ours, theirs, len) != 0)))
        fail_msg("encodings differ: ours [%.*s] (%s), jansson's [%s] (%s)", ours ? (int)len : 0,
                 ours ? ours : "", err1, theirs ? theirs : "", err2);
    if (!ours && strcmp(err1, err2) != 0) fail_msg("different refusals: %s / %s", err1, err2);
    wl_json_text_free(L, ours, len);
    free(theirs);
    json_decref(j);
    return theirs != NULL;
}

static void encoder_writes_what_jansson_writes(void **state)
{
    lua_State *L = luaL_newstate();
    const double reals[] = {0.1,
                            1.5,
                            -0.0,
                            1.0,
                            1e300,
                            -1e-300,
                            5e-324,
                            1.7976931348623157e308,
                            123456789012345678.0,
                            9007199254740993.0,
                            1e21,
                            1e-7,
                            3.14159};
    static const char odd[] =
        "ctl\x01\x1f\x7f \"q\" back\\ nl\n tab\t \b\f\r nul\0 / </ caf\xc3\xa9";

    (void)state;
    luaL_openlibs(L);
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        lua_pushnumber(L, reals[i]);
        assert_true(encodings_agree(L));
        lua_pop(L, 1);
    }
    lua_pushlstring(L, odd, sizeof odd - 1);
    assert_true(encodings_agree(L));
    lua_pop(L, 1);
    /* keys, nesting, empties, refusals (NaN, invalid UTF-8, mixed keys, depth) */
    assert_int_equal(
        luaL_dostring(L, "return {['k\\0ey'] = {1, 2.5, {}, {x = false}}, [''] = 'e'}"), 0);
    assert_true(encodings_agree(L));
    for (const char *const *code =
             (const char *const[]){"return 0/0", "return '\xff'", "return {[1] = 1, x = 2}",
                                   "return {[0] = 1}", "return {1, nil, 3}",
                                   "return {['\xff'] = 1}", "local t = {} t[1] = t return t",
                                   "return print", "return 1/0", NULL};
         *code; code++) {
        lua_settop(L, 0);
        assert_int_equal(luaL_dostring(L, *code), 0);
        assert_false(encodings_agree(L));
    }
    lua_close(L);
}

/* Seeded mutations: flip, insert, delete and duplicate bytes of the seeds, compare verdicts. */
static void mutations_agree(void **state)
{
    unsigned long long x = 88172645463325252ull;
    const char alphabet[] = "{}[]\":,\\u0123456789abcdefEe.+-tnr \xc3\xa9\xed\xa0\x80";
    char buf[1024];
    long valid = 0, total = 0;
    lua_State *enc = luaL_newstate();

    (void)state;
    for (size_t si = 0; si < sizeof seeds / sizeof seeds[0]; si++) {
        for (int round = 0; round < 100000; round++) {
            size_t n = strlen(seeds[si]);
            memcpy(buf, seeds[si], n);
            for (int m = 0; m < 1 + round % 3; m++) {
                size_t at;
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                at = (size_t)(x >> 8) % n;
                switch (x % 4) {
                case 0:
                    buf[at] = alphabet[(x >> 32) % (sizeof alphabet - 1)];
                    break;
                case 1:
                    if (n + 1 < sizeof buf) {
                        memmove(buf + at + 1, buf + at, n - at);
                        buf[at] = alphabet[(x >> 32) % (sizeof alphabet - 1)];
                        n++;
                    }
                    break;
                case 2:
                    if (n > 1) {
                        memmove(buf + at, buf + at + 1, n - at - 1);
                        n--;
                    }
                    break;
                default: { /* repeat a slice: duplicate keys, deeper nesting */
                    size_t len = (size_t)(x >> 40) % 24;
                    if (at + len <= n && n + len < sizeof buf) {
                        memmove(buf + at + len, buf + at, n - at);
                        n += len;
                    }
                }
                }
            }
            if (agree(buf, n) != JSON_TEXT_INVALID) {
                /* and the Lua value re-encodes as jansson would write it */
                json_t *j = json_loadb(buf, n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
                if (j) {
                    lua_settop(enc, 0);
                    wl_push_json(enc, j);
                    encodings_agree(enc);
                    json_decref(j);
                }
                valid++;
            }
            total++;
        }
    }
    printf("%ld mutations compared with jansson, %ld of them valid (and re-encoded)\n", total,
           valid);
    assert_true(valid > 1000); /* the mutations reach both verdicts */
    lua_close(enc);
}

static void lua_tables_match_janssons(void **state)
{
    lua_State *L = luaL_newstate();
    const char *docs[] = {seeds[0], seeds[1], "{}",
                          "{\"big\":9223372036854775807,\"neg\":-9223372036854775808,\"r\":1.5,"
                          "\"i\":-0,\"e\":1e2,\"u\":\"\\u00e9\",\"k\\u00e9\":[true,null]}"};

    (void)state;
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        json_t *j = json_loads(docs[i], JSON_REJECT_DUPLICATES, NULL);
        assert_non_null(j);
        assert_int_equal(json_text_check(docs[i], strlen(docs[i])), JSON_TEXT_OBJECT);
        lua_settop(L, 0);
        wl_push_json(L, j);
        wl_push_json_text(L, docs[i], strlen(docs[i]));
        if (!lua_same(L, 1, 2)) fail_msg("tables differ for %s", docs[i]);
        json_decref(j);
    }
    /* and the comparison can tell: a different document differs */
    lua_settop(L, 0);
    wl_push_json_text(L, "{\"a\":1}", 7);
    wl_push_json_text(L, "{\"a\":1.0}", 9);
    assert_false(lua_same(L, 1, 2));
    lua_close(L);
}

static void path_lookup(void **state)
{
    const char *doc = "{ \"data\" : {\"skip\":[{\"message_id\":\"no\"},\"}\"], \"n\":-0, \"r\":1.5,"
                      "\"message_id\" : \"wamid.\\u0041\\\"q\\\"\", \"id\":42,\"ten\":10,"
                      "\"k\\u002ey\":\"esc\"}, \"top\":\"t\"}";
    const struct {
        const char *path, *want;
    } cases[] = {{"data.message_id", "wamid.A\"q\""},
                 {"data.id", "42"},
                 {"data.ten", "10"},
                 {"data.n", "0"},
                 {"top", "t"},
                 {"data.r", NULL},
                 {"data.skip", NULL},
                 {"data", NULL},
                 {"missing", NULL},
                 {"top.x", NULL},
                 {"data.k.y", NULL}};
    size_t n = strlen(doc);

    (void)state;
    assert_int_equal(json_text_check(doc, n), JSON_TEXT_OBJECT);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = json_text_path(doc, n, cases[i].path);
        if (!cases[i].want)
            assert_null(got);
        else if (!got || strcmp(got, cases[i].want) != 0)
            fail_msg("%s: got %s, want %s", cases[i].path, got ? got : "NULL", cases[i].want);
        free(got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(edge_cases),
        cmocka_unit_test(depth_limit_is_janssons),
        cmocka_unit_test(many_keys),
        cmocka_unit_test(mutations_agree),
        cmocka_unit_test(encoder_writes_what_jansson_writes),
        cmocka_unit_test(lua_tables_match_janssons),
        cmocka_unit_test(path_lookup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
