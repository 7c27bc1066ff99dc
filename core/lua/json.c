#include "json.h"

#include "base/base.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define ENCODE_MAX_DEPTH 128

void wl_push_json_null(lua_State *L)
{
    lua_pushlightuserdata(L, NULL);
}

int wl_is_json_null(lua_State *L, int idx)
{
    return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL;
}

void wl_push_json(lua_State *L, const json_t *j)
{
    /* jansson caps nesting at 2048; each level holds one stack slot */
    luaL_checkstack(L, 3, "JSON nested too deeply");
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *v;

        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_foreach((json_t *)j, k, v)
        {
            lua_pushstring(L, k);
            wl_push_json(L, v);
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);

        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            wl_push_json(L, json_array_get(j, i));
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        break;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(j));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_NULL:
        wl_push_json_null(L);
        break;
    }
}

typedef json_cursor cursor;

/* The string literal whose opening quote is at p; returns the byte after its closing quote. */
static cursor push_text_string(lua_State *L, cursor p)
{
    cursor b = p + 1;
    int esc;

    p = json_text_string_end(b, &esc);
    if (!esc) {
        lua_pushlstring(L, (const char *)b, (size_t)(p - b));
    } else {
        luaL_Buffer buf;
        char *out = luaL_buffinitsize(L, &buf, (size_t)(p - b));
        luaL_pushresultsize(&buf, json_text_unescape((const char *)b, (size_t)(p - b), out));
    }
    return p + 1;
}

static cursor push_text_number(lua_State *L, cursor p, cursor end)
{
    cursor start = p;
    int real = 0;
    unsigned long long u = 0;

    if (*p == '-') p++;
    for (; p < end && (unsigned)(*p - '0') < 10; p++)
        u = u * 10 + (*p - '0'); /* checked: fits, -2^63 included */
    while (p < end && (*p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-' ||
                       (unsigned)(*p - '0') < 10)) {
        real = 1;
        p++;
    }
    if (!real) {
        lua_pushinteger(L, (lua_Integer)(*start == '-' ? 0 - u : u));
    } else {
        size_t n = (size_t)(p - start);
        char small[64], *copy = n < sizeof small ? small : malloc(n + 1);
        if (!copy) luaL_error(L, "not enough memory");
        memcpy(copy, start, n);
        copy[n] = '\0';
        lua_pushnumber(L, strtod(copy, NULL));
        if (copy != small) free(copy);
    }
    return p;
}

#define SIZE_AHEAD 64

/* The n members above base (key, value pairs for an object; values for an array) become a
 * table sized for `size`, left at base + 1. */
static void flush_members(lua_State *L, int base, int n, int obj, int size)
{
    int first = base + 1;

    luaL_checkstack(L, 3, "JSON nested too deeply");
    if (obj)
        lua_createtable(L, 0, size);
    else
        lua_createtable(L, size, 0);
    for (int i = 0; i < n; i++) {
        if (obj) {
            lua_pushvalue(L, first + 2 * i);
            lua_pushvalue(L, first + 2 * i + 1);
            lua_rawset(L, -3);
        } else {
            lua_pushvalue(L, first + i);
            lua_rawseti(L, -2, i + 1);
        }
    }
    if (n > 0) { /* else the new table is already at first */
        lua_replace(L, first);
        lua_settop(L, first);
    }
}

static cursor push_text_value(lua_State *L, cursor p, cursor end)
{
    /* the checker caps nesting at 2048; each level holds a few stack slots */
    luaL_checkstack(L, 4, "JSON nested too deeply");
    switch (*p) {
    case '{':
    case '[': {
        /* Members wait on the stack, up to SIZE_AHEAD of them, so that the table is created
         * at its final size rather than grown (and rehashed) member by member. */
        int obj = *p == '{', base = lua_gettop(L), n = 0, flushed = 0;
        char close = obj ? '}' : ']';

        p = json_text_ws(p + 1, end);
        while (*p != close) {
            luaL_checkstack(L, 2, "JSON nested too deeply");
            if (obj) {
                p = push_text_string(L, p);
                p = json_text_ws(json_text_ws(p, end) + 1, end); /* the colon */
            }
            p = json_text_ws(push_text_value(L, p, end), end);
            if (++n == SIZE_AHEAD && !flushed) {
                flush_members(L, base, n, obj, SIZE_AHEAD * 2);
                flushed = 1;
            } else if (flushed) {
                if (obj)
                    lua_rawset(L, base + 1);
                else
                    lua_rawseti(L, base + 1, n);
            }
            if (*p == ',') p = json_text_ws(p + 1, end);
        }
        if (!flushed) flush_members(L, base, n, obj, n);
        return p + 1;
    }
    case '"':
        return push_text_string(L, p);
    case 't':
        lua_pushboolean(L, 1);
        return p + 4;
    case 'f':
        lua_pushboolean(L, 0);
        return p + 5;
    case 'n':
        wl_push_json_null(L);
        return p + 4;
    default:
        return push_text_number(L, p, end);
    }
}

void wl_push_json_text(lua_State *L, const char *s, size_t len)
{
    cursor end = (cursor)s + len;

    push_text_value(L, json_text_ws((cursor)s, end), end);
}

/* A table is an array when its keys are exactly 1..n (n > 0). */
static int table_array_len(lua_State *L, int idx, size_t *n)
{
    size_t count = 0;
    lua_Integer max = 0;

    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k >= 1 && k > max) max = k;
            if (k < 1) {
                lua_pop(L, 1);
                return -1;
            }
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pop(L, 1);
            return count ? -1 : 0; /* an object (or mixed: checked by the caller) */
        } else {
            lua_pop(L, 1);
            return -1;
        }
        count++;
    }
    if (count == 0) return 0;
    if ((size_t)max != count) return -1; /* sparse */
    *n = count;
    return 1;
}

static json_t *encode(lua_State *L, int idx, int depth, char *err)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return json_null();
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
        if (!isfinite(lua_tonumber(L, idx))) {
            snprintf(err, 256, "cannot encode %s as JSON", "NaN or infinity");
            return NULL;
        }
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        json_t *j = json_stringn(s, len);
        if (!j) snprintf(err, 256, "cannot encode a string that is not valid UTF-8 as JSON");
        return j;
    }
    case LUA_TLIGHTUSERDATA:
        if (wl_is_json_null(L, idx)) return json_null();
        break;
    case LUA_TTABLE: {
        size_t n = 0;
        int kind;
        json_t *out;

        if (depth >= ENCODE_MAX_DEPTH) {
            snprintf(err, 256, "cannot encode: tables nested deeper than %d (a cycle?)",
                     ENCODE_MAX_DEPTH);
            return NULL;
        }
        luaL_checkstack(L, 4, "JSON encode");
        kind = table_array_len(L, idx, &n);
        if (kind < 0) {
            snprintf(err, 256, "cannot encode a table with mixed, sparse or non-string keys");
            return NULL;
        }
        if (kind == 1) {
            out = json_array();
            for (size_t i = 1; i <= n; i++) {
                json_t *v;
                lua_rawgeti(L, idx, (lua_Integer)i);
                v = encode(L, -1, depth + 1, err);
                lua_pop(L, 1);
                if (!v) {
                    json_decref(out);
                    return NULL;
                }
                json_array_append_new(out, v);
            }
            return out;
        }
        out = json_object();
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            size_t kl;
            const char *k;
            json_t *v;

            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 2);
                json_decref(out);
                snprintf(err, 256, "cannot encode a table with mixed keys");
                return NULL;
            }
            k = lua_tolstring(L, -2, &kl);
            v = encode(L, -1, depth + 1, err);
            lua_pop(L, 1);
            if (!v || json_object_setn_new(out, k, kl, v) != 0) {
                if (v) snprintf(err, 256, "cannot encode a key that is not valid UTF-8");
                lua_pop(L, 1);
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    default:
        break;
    }
    snprintf(err, 256, "cannot encode a %s as JSON", luaL_typename(L, idx));
    return NULL;
}

json_t *wl_to_json(lua_State *L, int idx, char *err)
{
    return encode(L, idx, 0, err);
}

/* --- Lua -> JSON text, with no tree in between ------------------------------------------ */

struct text_out;
static char *lua_json_text_shrink_failed(struct text_out *o, size_t *len);

/* The text grows through the state's own allocator, so it counts against the state's limit
 * (never longjmp'd over: nothing here raises), up to `max`. */
struct text_out {
    char *buf;
    size_t len, cap, max;
    char *err;
    lua_Alloc alloc;
    void *ud;
};

static int out_put(struct text_out *o, const char *s, size_t n)
{
    if (n > o->max - o->len) {
        snprintf(o->err, 256, "cannot encode: the JSON text would pass %zu bytes", o->max);
        return -1;
    }
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        char *p;
        while (cap < o->len + n)
            cap *= 2;
        if (!(p = o->alloc(o->ud, o->buf, o->buf ? o->cap : 0, cap))) {
            snprintf(o->err, 256, "cannot encode: out of memory");
            return -1;
        }
        o->buf = p;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

/* A JSON string literal, escaped as jansson's compact dump does (upper-case \u hex). */
static int out_string(struct text_out *o, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0;

    if (out_put(o, "\"", 1)) return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = {'\\', 0};
        size_t n = 2;

        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            if (c >= 0x20) continue; /* part of the run copied as it is */
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        if (out_put(o, s + run, i - run) || out_put(o, esc, n)) return -1;
        run = i + 1;
    }
    return out_put(o, s + run, len - run) || out_put(o, "\"", 1) ? -1 : 0;
}

/* A real as jansson writes it: 17 significant digits, always a '.' or an exponent, no '+'
 * or leading zeros in the exponent. */
static int out_real(struct text_out *o, double d)
{
    char buf[40], *e;
    int n = snprintf(buf, sizeof buf, "%.17g", d);

    if (!strpbrk(buf, ".eE")) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    if ((e = strchr(buf, 'e'))) {
        char *from = e + 1, *to = e + 1;
        if (*from == '+')
            from++;
        else if (*from == '-')
            to++, from++;
        while (*from == '0' && from[1])
            from++;
        memmove(to, from, strlen(from) + 1);
        n = (int)strlen(buf);
    }
    return out_put(o, buf, (size_t)n);
}

static int out_value(lua_State *L, int idx, int depth, struct text_out *o)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return out_put(o, "null", 4);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? out_put(o, "true", 4) : out_put(o, "false", 5);
    case LUA_TNUMBER: {
        char buf[32];
        if (lua_isinteger(L, idx))
            return out_put(
                o, buf,
                (size_t)snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(L, idx)));
        if (!isfinite(lua_tonumber(L, idx))) {
            snprintf(o->err, 256, "cannot encode %s as JSON", "NaN or infinity");
            return -1;
        }
        return out_real(o, (double)lua_tonumber(L, idx));
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!utf8_valid(s, len)) {
            snprintf(o->err, 256, "cannot encode a string that is not valid UTF-8 as JSON");
            return -1;
        }
        return out_string(o, s, len);
    }
    case LUA_TLIGHTUSERDATA:
        if (wl_is_json_null(L, idx)) return out_put(o, "null", 4);
        break;
    case LUA_TTABLE: {
        size_t n = 0;
        int kind, first = 1;

        if (depth >= ENCODE_MAX_DEPTH) {
            snprintf(o->err, 256, "cannot encode: tables nested deeper than %d (a cycle?)",
                     ENCODE_MAX_DEPTH);
            return -1;
        }
        if (!lua_checkstack(L, 4)) {
            snprintf(o->err, 256, "cannot encode: out of stack");
            return -1;
        }
        kind = table_array_len(L, idx, &n);
        if (kind < 0) {
            snprintf(o->err, 256, "cannot encode a table with mixed, sparse or non-string keys");
            return -1;
        }
        if (kind == 1) {
            if (out_put(o, "[", 1)) return -1;
            for (size_t i = 1; i <= n; i++) {
                int rc;
                lua_rawgeti(L, idx, (lua_Integer)i);
                rc = (i > 1 && out_put(o, ",", 1)) || out_value(L, -1, depth + 1, o);
                lua_pop(L, 1);
                if (rc) return -1;
            }
            return out_put(o, "]", 1);
        }
        if (out_put(o, "{", 1)) return -1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            size_t kl;
            const char *k;
            int rc;

            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 2);
                snprintf(o->err, 256, "cannot encode a table with mixed keys");
                return -1;
            }
            k = lua_tolstring(L, -2, &kl);
            if (!utf8_valid(k, kl)) {
                lua_pop(L, 2);
                snprintf(o->err, 256, "cannot encode a key that is not valid UTF-8");
                return -1;
            }
            rc = (!first && out_put(o, ",", 1)) || out_string(o, k, kl) || out_put(o, ":", 1) ||
                 out_value(L, -1, depth + 1, o);
            first = 0;
            lua_pop(L, 1);
            if (rc) {
                lua_pop(L, 1);
                return -1;
            }
        }
        return out_put(o, "}", 1);
    }
    default:
        break;
    }
    snprintf(o->err, 256, "cannot encode a %s as JSON", luaL_typename(L, idx));
    return -1;
}

static char *lua_json_text_shrink_failed(struct text_out *o, size_t *len)
{
    char *p = o->alloc(o->ud, NULL, 0, o->len);

    if (p) memcpy(p, o->buf, o->len);
    o->alloc(o->ud, o->buf, o->cap, 0);
    if (!p) {
        snprintf(o->err, 256, "cannot encode: out of memory");
        return NULL;
    }
    *len = o->len - 1;
    p[*len] = '\0';
    return p;
}

char *wl_to_json_text(lua_State *L, int idx, size_t max, size_t *len, char *err)
{
    struct text_out o = {NULL, 0, 0, max, err, NULL, NULL};
    int top = lua_gettop(L);
    char *p;

    o.alloc = lua_getallocf(L, &o.ud);
    if (out_value(L, idx, 0, &o) || out_put(&o, "", 1) /* room for the NUL */) {
        lua_settop(L, top);
        if (o.buf) o.alloc(o.ud, o.buf, o.cap, 0);
        return NULL;
    }
    /* exactly len + 1 bytes from here on, which wl_json_text_free says */
    p = o.alloc(o.ud, o.buf, o.cap, o.len);
    if (p)
        o.buf = p;
    else /* a shrink failing: keep the larger block, give back its size... cannot: copy */
        return lua_json_text_shrink_failed(&o, len);
    *len = o.len - 1;
    o.buf[*len] = '\0';
    return o.buf;
}

void wl_json_text_free(lua_State *L, char *text, size_t len)
{
    void *ud;
    lua_Alloc alloc = lua_getallocf(L, &ud);

    if (text) alloc(ud, text, len + 1, 0);
}
