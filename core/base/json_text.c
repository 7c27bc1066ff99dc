#include "json_text.h"
#include "utf8.h"

#include "json_escape.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

typedef json_cursor cursor;

/* Every allocation goes through the caller's allocator (a Lua state's, so that a script's
 * JSON costs it memory), or malloc. */
static void *plain_alloc(void *ud, void *p, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(p);
        return NULL;
    }
    return realloc(p, nsize);
}

static const struct json_text_alloc plain = {plain_alloc, NULL};

static void *jt_new(const struct json_text_alloc *a, size_t n)
{
    return a->fn(a->ud, NULL, 0, n);
}

static void jt_free(const struct json_text_alloc *a, void *p, size_t n)
{
    if (p) a->fn(a->ud, p, n, 0);
}

static int is_digit(unsigned c)
{
    return c - '0' < 10;
}

static int hex_value(unsigned c)
{
    if (c - '0' < 10) return (int)(c - '0');
    c |= 0x20;
    return c - 'a' < 6 ? (int)(c - 'a' + 10) : -1;
}

/* Four hex digits at p (p + 4 <= end checked by the caller); -1 if not hex. */
static long hex4(cursor p)
{
    long v = 0;

    for (int i = 0; i < 4; i++) {
        int d = hex_value(p[i]);
        if (d < 0) return -1;
        v = v << 4 | d;
    }
    return v;
}

/* The body of a string literal starting after its opening quote: the byte after the closing
 * quote, or NULL. *esc is set when the literal holds escapes. */
static cursor scan_string(cursor p, cursor end, int *esc)
{
    *esc = 0;
    for (;;) {
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p == end || *p < 0x20) return NULL;
        if (*p == '"') return p + 1;
        if (*p >= 0x80) {
            if (!(p = utf8_next(p, end))) return NULL;
            continue;
        }
        /* a backslash */
        *esc = 1;
        if (end - p < 2) return NULL;
        switch (p[1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            p += 2;
            continue;
        case 'u': {
            long u;
            if (end - p < 6 || (u = hex4(p + 2)) < 0 || u == 0) /* \u0000: refused, as jansson */
                return NULL;
            p += 6;
            if (u >= 0xDC00 && u <= 0xDFFF) return NULL; /* a low surrogate first */
            if (u >= 0xD800 && u <= 0xDBFF) {
                long lo;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || (lo = hex4(p + 2)) < 0xDC00 ||
                    lo > 0xDFFF)
                    return NULL;
                p += 6;
            }
            continue;
        }
        default:
            return NULL;
        }
    }
}

/* A number at p: the byte after it, or NULL if the grammar is broken, an integer does not fit
 * 64 bits, or a real overflows a double. */
static cursor scan_number(cursor p, cursor end, const struct json_text_alloc *a)
{
    cursor start = p, digits, int_end;
    int is_int = 1;
    long exp = 0;

    if (*p == '-') p++;
    digits = p;
    if (p == end) return NULL;
    if (*p == '0') {
        if (++p < end && is_digit(*p)) return NULL;
    } else if (is_digit(*p)) {
        while (p < end && is_digit(*p))
            p++;
    } else {
        return NULL;
    }
    int_end = p;
    if (p < end && *p == '.') {
        is_int = 0;
        if (++p == end || !is_digit(*p)) return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int neg = 0;
        is_int = 0;
        if (++p < end && (*p == '+' || *p == '-')) neg = *p++ == '-';
        if (p == end || !is_digit(*p)) return NULL;
        for (; p < end && is_digit(*p); p++)
            if (exp < 1000000) exp = exp * 10 + (*p - '0');
        if (neg) exp = -exp;
    }
    if (is_int) {
        size_t n = (size_t)(int_end - digits);
        /* same length, so byte order is numeric order */
        return n < 19 || (n == 19 &&
                          memcmp(digits,
                                 *start == '-' ? "9223372036854775808" : "9223372036854775807",
                                 19) <= 0)
                   ? p
                   : NULL;
    }
    /* the value is below 10^(integer digits + exponent): past 10^308 only strtod can tell */
    if ((*digits == '0' ? 0 : int_end - digits) + exp > 308) {
        size_t n = (size_t)(p - start);
        char small[64], *copy = n < sizeof small ? small : jt_new(a, n + 1);
        double d;

        if (!copy) return NULL;
        memcpy(copy, start, n);
        copy[n] = '\0';
        errno = 0;
        d = strtod(copy, NULL);
        if (copy != small) jt_free(a, copy, n + 1);
        if (errno == ERANGE && isinf(d)) return NULL;
    }
    return p;
}

size_t json_text_unescape(const char *raw, size_t raw_len, char *out)
{
    cursor p = (cursor)raw, end = p + raw_len;
    char *o = out;

    while (p < end) {
        cursor bs = memchr(p, '\\', (size_t)(end - p));
        size_t run = (size_t)((bs ? bs : end) - p);
        uint32_t u;

        memcpy(o, p, run);
        o += run;
        p += run;
        if (!bs) break;
        switch (p[1]) {
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u':
            u = (uint32_t)hex4(p + 2);
            if (u >= 0xD800 && u <= 0xDBFF) {
                u = 0x10000 + ((u - 0xD800) << 10) + ((uint32_t)hex4(p + 8) - 0xDC00);
                p += 6;
            }
            p += 4;
            if (u < 0x80) {
                *o++ = (char)u;
            } else if (u < 0x800) {
                *o++ = (char)(0xC0 | u >> 6);
                *o++ = (char)(0x80 | (u & 0x3F));
            } else if (u < 0x10000) {
                *o++ = (char)(0xE0 | u >> 12);
                *o++ = (char)(0x80 | (u >> 6 & 0x3F));
                *o++ = (char)(0x80 | (u & 0x3F));
            } else {
                *o++ = (char)(0xF0 | u >> 18);
                *o++ = (char)(0x80 | (u >> 12 & 0x3F));
                *o++ = (char)(0x80 | (u >> 6 & 0x3F));
                *o++ = (char)(0x80 | (u & 0x3F));
            }
            break;
        default: /* " \ / */
            *o++ = (char)p[1];
        }
        p += 2;
    }
    return (size_t)(o - out);
}

/* --- duplicate keys: one open-addressing table for the whole document ---------------------- */

struct key {
    uint64_t hash; /* of the unescaped bytes; 0 marks a free slot */
    cursor raw;    /* the literal's body */
    size_t len;
    uint32_t obj; /* which object it belongs to */
    int esc;
};

struct keys {
    struct key *slot;
    size_t cap, used; /* cap a power of two, used <= cap / 2 */
    const struct json_text_alloc *a;
    struct key inline_slots[64];
};

static uint64_t hash_seed;

__attribute__((constructor)) static void seed_init(void)
{
    /* per process, so that colliding key sets cannot be prepared in advance */
    if (getrandom(&hash_seed, sizeof hash_seed, GRND_NONBLOCK) != sizeof hash_seed)
        hash_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15u ^ (uint64_t)getpid();
}

static uint64_t hash_bytes(const unsigned char *s, size_t n, uint32_t obj)
{
    uint64_t h = hash_seed ^ ((uint64_t)obj * 0x9E3779B97F4A7C15u);

    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001B3u;
    h ^= h >> 29;
    return h ? h : 1;
}

/* 1 if the two keys' unescaped bytes are equal (-1: out of memory). */
static int key_equal(const struct json_text_alloc *al, const struct key *a, const struct key *b)
{
    char small[2][128], *x, *y;
    size_t nx, ny;
    int eq;

    if (!a->esc && !b->esc) return a->len == b->len && memcmp(a->raw, b->raw, a->len) == 0;
    x = a->len <= sizeof small[0] ? small[0] : jt_new(al, a->len);
    y = b->len <= sizeof small[1] ? small[1] : jt_new(al, b->len);
    eq = x && y ? 1 : -1;
    if (eq > 0) {
        nx = json_text_unescape((const char *)a->raw, a->len, x);
        ny = json_text_unescape((const char *)b->raw, b->len, y);
        eq = nx == ny && memcmp(x, y, nx) == 0;
    }
    if (x != small[0]) jt_free(al, x, a->len);
    if (y != small[1]) jt_free(al, y, b->len);
    return eq;
}

static void keys_place(struct key *slot, size_t cap, const struct key *k)
{
    size_t i = k->hash & (cap - 1);

    while (slot[i].hash)
        i = (i + 1) & (cap - 1);
    slot[i] = *k;
}

/* Adds a key of object obj; 1 if that object already has it, -1 out of memory, else 0. */
static int keys_add(struct keys *t, cursor raw, size_t len, int esc, uint32_t obj)
{
    struct key k = {.raw = raw, .len = len, .obj = obj, .esc = esc};

    if (!esc) {
        k.hash = hash_bytes(raw, len, obj);
    } else {
        char small[128], *u = len <= sizeof small ? small : jt_new(t->a, len);
        if (!u) return -1;
        k.hash = hash_bytes((unsigned char *)u, json_text_unescape((const char *)raw, len, u), obj);
        if (u != small) jt_free(t->a, u, len);
    }
    for (size_t i = k.hash & (t->cap - 1); t->slot[i].hash; i = (i + 1) & (t->cap - 1)) {
        int eq;
        if (t->slot[i].hash == k.hash && t->slot[i].obj == obj &&
            (eq = key_equal(t->a, &t->slot[i], &k)) != 0)
            return eq;
    }
    if (t->used + 1 > t->cap / 2) {
        size_t cap = t->cap * 2;
        struct key *slot = jt_new(t->a, cap * sizeof *slot);
        if (!slot) return -1;
        memset(slot, 0, cap * sizeof *slot);
        for (size_t i = 0; i < t->cap; i++)
            if (t->slot[i].hash) keys_place(slot, cap, &t->slot[i]);
        if (t->slot != t->inline_slots) jt_free(t->a, t->slot, t->cap * sizeof *t->slot);
        t->slot = slot;
        t->cap = cap;
    }
    keys_place(t->slot, t->cap, &k);
    t->used++;
    return 0;
}

/* --- the checker ----------------------------------------------------------------------------- */

enum json_text_kind json_text_check(const char *s, size_t len)
{
    return json_text_check_ex(s, len, NULL, NULL);
}

enum json_text_kind json_text_check_ex(const char *s, size_t len, const struct json_text_alloc *al,
                                       struct json_text_error *err)
{
    cursor p = (cursor)s, end = p + len, at = p;
    unsigned char is_obj[JSON_TEXT_MAX_DEPTH];
    uint32_t obj_id[JSON_TEXT_MAX_DEPTH];
    uint32_t objects = 0;
    int depth = 0, esc, added;
    enum json_text_kind top = JSON_TEXT_OTHER, rc = JSON_TEXT_INVALID;
    const char *why = "unexpected end of text";
    struct keys keys;

    keys.a = al ? al : &plain;
    keys.slot = keys.inline_slots;
    keys.cap = sizeof keys.inline_slots / sizeof keys.inline_slots[0];
    keys.used = 0;
    memset(keys.inline_slots, 0, sizeof keys.inline_slots);

    p = json_text_ws(p, end);
    at = p;
    if (p == end) goto out;
    top = *p == '{' ? JSON_TEXT_OBJECT : JSON_TEXT_OTHER;

value:
    /* jansson counts every value, scalars included, against its depth limit */
    at = p;
    if (p == end) goto out;
    if (depth >= JSON_TEXT_MAX_DEPTH) {
        why = "nested too deeply (at most 2048 levels)";
        goto out;
    }
    switch (*p) {
    case '{':
        is_obj[depth] = 1;
        obj_id[depth++] = objects++;
        p = json_text_ws(p + 1, end);
        if (p < end && *p == '}') {
            depth--;
            p++;
            goto after;
        }
        goto key;
    case '[':
        is_obj[depth++] = 0;
        p = json_text_ws(p + 1, end);
        if (p < end && *p == ']') {
            depth--;
            p++;
            goto after;
        }
        goto value;
    case '"':
        why = "invalid string (a control character, a bad escape, \\u0000, a lone surrogate or "
              "invalid UTF-8)";
        p = scan_string(p + 1, end, &esc);
        break;
    case 't':
        why = "invalid literal";
        p = end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
        break;
    case 'f':
        why = "invalid literal";
        p = end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
        break;
    case 'n':
        why = "invalid literal";
        p = end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
        break;
    default:
        why = *p == '-' || is_digit(*p) ? "invalid number (or one out of range)"
                                        : "unexpected character";
        p = *p == '-' || is_digit(*p) ? scan_number(p, end, keys.a) : NULL;
    }
    if (!p) goto out;

after:
    p = json_text_ws(p, end);
    at = p;
    if (depth == 0) {
        if (p == end)
            rc = top;
        else
            why = "text after the end of the value";
        goto out;
    }
    why = "unexpected end of text";
    if (p == end) goto out;
    if (*p == ',') {
        p = json_text_ws(p + 1, end);
        if (is_obj[depth - 1]) goto key;
        goto value;
    }
    if (*p != (is_obj[depth - 1] ? '}' : ']')) {
        why = is_obj[depth - 1] ? "expected ',' or '}'" : "expected ',' or ']'";
        goto out;
    }
    depth--;
    p++;
    goto after;

key:
    at = p;
    why = p == end ? "unexpected end of text" : "expected a string as the key";
    if (p == end || *p != '"') goto out;
    {
        cursor k = p + 1;
        why = "invalid string (a control character, a bad escape, \\u0000, a lone surrogate or "
              "invalid UTF-8)";
        if (!(p = scan_string(k, end, &esc))) goto out;
        if ((added = keys_add(&keys, k, (size_t)(p - 1 - k), esc, obj_id[depth - 1])) != 0) {
            why = added > 0 ? "duplicate key" : "out of memory";
            goto out;
        }
    }
    p = json_text_ws(p, end);
    at = p;
    why = "expected ':'";
    if (p == end || *p != ':') goto out;
    p = json_text_ws(p + 1, end);
    goto value;

out:
    if (keys.slot != keys.inline_slots) jt_free(keys.a, keys.slot, keys.cap * sizeof *keys.slot);
    if (err && rc == JSON_TEXT_INVALID) {
        err->offset = (size_t)(at - (cursor)s);
        err->reason = why;
    }
    return rc;
}

void json_text_where(const char *s, size_t offset, int *line, int *column)
{
    const char *nl;

    *line = 1;
    *column = (int)offset + 1;
    for (const char *p = s; (nl = memchr(p, '\n', (size_t)(s + offset - p))); p = nl + 1) {
        (*line)++;
        *column = (int)(s + offset - nl);
    }
}

/* --- reading checked text -------------------------------------------------------------------- */

/* The closing quote of the string literal whose body starts at p (checked text). */
static cursor string_end(cursor p)
{
    int esc;

    return json_text_string_end(p, &esc);
}

static int is_delimiter(unsigned c)
{
    return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The byte after the value at p (checked text). */
static cursor value_end(cursor p, cursor end)
{
    int nest = 0;

    do {
        switch (*p) {
        case '"':
            p = string_end(p + 1) + 1;
            break;
        case '{':
        case '[':
            nest++;
            p++;
            break;
        case '}':
        case ']':
            nest--;
            p++;
            break;
        default:
            p++;
            while (nest == 0 && p < end && !is_delimiter(*p))
                p++;
        }
    } while (nest > 0 && p < end);
    return p;
}

char *json_text_path(const char *s, size_t len, const char *path)
{
    cursor p = json_text_ws((cursor)s, (cursor)s + len), end = (cursor)s + len;

    for (;;) {
        const char *dot = strchr(path, '.');
        size_t seg = dot ? (size_t)(dot - path) : strlen(path);
        int found = 0;

        if (p == end || *p != '{') return NULL;
        p = json_text_ws(p + 1, end);
        while (!found && p < end && *p == '"') {
            cursor k = p + 1, ke = string_end(k);
            {
                size_t kl = (size_t)(ke - k);
                char small[128], *u = kl <= sizeof small ? small : malloc(kl);
                if (!u) return NULL;
                found =
                    json_text_unescape((const char *)k, kl, u) == seg && memcmp(u, path, seg) == 0;
                if (u != small) free(u);
            }
            p = json_text_ws(json_text_ws(ke + 1, end) + 1, end); /* past the colon */
            if (!found) {
                p = json_text_ws(value_end(p, end), end);
                if (p < end && *p == ',') p = json_text_ws(p + 1, end);
            }
        }
        if (!found) return NULL;
        if (dot) {
            path = dot + 1;
            continue;
        }
        if (*p == '"') {
            cursor b = p + 1, e = string_end(b);
            char *out = malloc((size_t)(e - b) + 1);
            if (out) out[json_text_unescape((const char *)b, (size_t)(e - b), out)] = '\0';
            return out;
        }
        if (*p == '-' || is_digit(*p)) {
            cursor e = value_end(p, end);
            size_t n = (size_t)(e - p);
            if (memchr(p, '.', n) || memchr(p, 'e', n) || memchr(p, 'E', n))
                return NULL;                                              /* a real */
            if (n == 2 && p[0] == '-' && p[1] == '0') return strdup("0"); /* -0 is the integer 0 */
            return strndup((const char *)p, n);
        }
        return NULL;
    }
}
