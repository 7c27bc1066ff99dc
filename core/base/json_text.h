/*
 * JSON text checked in one pass, without building a tree: the request path validates the
 * body here and hands the text itself on (Lua builds its tables straight from it, plugins get
 * the bytes). The rules are jansson's, with JSON_REJECT_DUPLICATES:
 * RFC 8259 grammar, UTF-8 checked (no overlongs, surrogates or code points past U+10FFFF),
 * \u escapes paired for surrogates, \u0000 refused, integers must fit 64 bits, reals must
 * not overflow a double, duplicate keys (compared after unescaping) refused, nesting at most
 * 2048 values deep. tests/unit/test_json_text.c and the fuzz target compare every verdict
 * with jansson's own.
 */
#ifndef WH_JSON_TEXT_H
#define WH_JSON_TEXT_H

#include <stddef.h>

#define JSON_TEXT_MAX_DEPTH 2048

enum json_text_kind {
    JSON_TEXT_INVALID = -1,
    JSON_TEXT_OBJECT = 0, /* valid, and the top-level value is an object */
    JSON_TEXT_OTHER = 1,  /* valid, but the top-level value is not an object */
};

/* Checks s[0..len) (need not be NUL-terminated). Allocates (malloc) only for objects with many
 * keys and for very long numbers. */
enum json_text_kind json_text_check(const char *s, size_t len);

/* An allocator with lua_Alloc's contract (nsize 0 frees; osize is the old size). */
struct json_text_alloc {
    void *(*fn)(void *ud, void *ptr, size_t osize, size_t nsize);
    void *ud;
};

/* Where the text went wrong: the byte offset and a static reason. */
struct json_text_error {
    size_t offset;
    const char *reason;
};

/* The same, allocating through a (NULL: malloc) and, when the text is invalid, saying where in
 * err (if not NULL). An allocation that fails makes the text invalid ("out of memory"). */
enum json_text_kind json_text_check_ex(const char *s, size_t len, const struct json_text_alloc *a,
                                       struct json_text_error *err);

/* The 1-based line and column (in bytes) of offset in s. */
void json_text_where(const char *s, size_t offset, int *line, int *column);

/* In text that json_text_check accepted: the value at a dot path ("data.message_id") when it
 * is a string (unescaped) or an integer (its decimal digits), as a new NUL-terminated string
 * the caller frees; NULL when absent or of another type. */
char *json_text_path(const char *s, size_t len, const char *path);

/* Readers of checked text (here and lua/json.c) share these two steps. */
typedef const unsigned char *json_cursor;

/* The first byte at or after p that is not JSON whitespace (or end). */
static inline json_cursor json_text_ws(json_cursor p, json_cursor end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

/* In checked text: the closing quote of the string literal whose body starts at p; *esc tells
 * whether the literal holds escapes. */
static inline json_cursor json_text_string_end(json_cursor p, int *esc)
{
    *esc = 0;
    while (*p != '"') {
        if (*p == '\\') {
            *esc = 1;
            p++;
        }
        p++;
    }
    return p;
}

/* Unescapes the body of a string literal (the bytes between the quotes, already checked) into
 * out, which must hold raw_len bytes; returns the length written. */
size_t json_text_unescape(const char *raw, size_t raw_len, char *out);

#endif
