#define _GNU_SOURCE
#include "patterns.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stddef.h>
#include <string.h>

/* Lua 5.4's limits, kept equal so that "too many captures" and "pattern too complex" come
 * at the same points as in stock Lua. */
#define MAX_CAPTURES 32
#define MAX_DEPTH 200

#define CAP_OPEN (-1)     /* a capture whose ')' has not been reached */
#define CAP_POSITION (-2) /* a () capture: its value is the position */

/* One subject and pattern being matched. */
struct pm {
    lua_State *L;
    const char *subject, *subject_end; /* subject_end[0] is the string's '\0' */
    const char *pattern_end;
    int depth_left;        /* recursion allowed below this call */
    struct wl_steps steps; /* the budget, checked as the match goes */
    int n_caps;
    struct {
        const char *at;
        ptrdiff_t len; /* or CAP_OPEN, CAP_POSITION */
    } caps[MAX_CAPTURES];
};

static void pm_init(struct pm *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
    m->L = L;
    m->subject = s;
    m->subject_end = s + ls;
    m->pattern_end = p + lp;
    m->depth_left = MAX_DEPTH;
    m->steps = wl_steps_start(L);
    m->n_caps = 0;
}

/* --- single characters and classes -------------------------------------------------------- */

/* Does byte c belong to class letter cl (%a, %d, ...; upper case is the complement)? Any
 * other letter stands for itself. */
static int in_class(int c, int cl)
{
    int yes;

    switch (tolower(cl)) {
    case 'a':
        yes = isalpha(c);
        break;
    case 'c':
        yes = iscntrl(c);
        break;
    case 'd':
        yes = isdigit(c);
        break;
    case 'g':
        yes = isgraph(c);
        break;
    case 'l':
        yes = islower(c);
        break;
    case 'p':
        yes = ispunct(c);
        break;
    case 's':
        yes = isspace(c);
        break;
    case 'u':
        yes = isupper(c);
        break;
    case 'w':
        yes = isalnum(c);
        break;
    case 'x':
        yes = isxdigit(c);
        break;
    case 'z':
        yes = c == 0;
        break;
    default:
        return cl == c;
    }
    return islower(cl) ? yes != 0 : yes == 0;
}

/* A set [...]: open points at '[', close at its ']'. */
static int in_set(int c, const char *open, const char *close)
{
    const char *p = open + 1;
    int found = 1;

    if (*p == '^') {
        found = 0;
        p++;
    }
    for (; p < close; p++) {
        if (*p == '%') {
            p++;
            if (in_class(c, (unsigned char)*p)) return found;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return found;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return found;
        }
    }
    return !found;
}

/* Where the single-character class starting at p ends (its quantifier, if any, is there). */
static const char *class_end(struct pm *m, const char *p)
{
    char first = *p++;

    if (first == '%') {
        if (p == m->pattern_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (first == '[') {
        if (*p == '^') p++;
        do { /* a ']' right after '[' or '[^' is a member */
            if (p == m->pattern_end) luaL_error(m->L, "malformed pattern (missing ']')");
            if (*p++ == '%' && p < m->pattern_end) p++;
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

/* Does the subject byte at s match the class p..end? Never past the subject's end. */
static int one_matches(const struct pm *m, const char *s, const char *p, const char *end)
{
    int c;

    if (s >= m->subject_end) return 0;
    c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return 1;
    case '%':
        return in_class(c, (unsigned char)p[1]);
    case '[':
        return in_set(c, p, end - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* --- the matcher --------------------------------------------------------------------------- */

static const char *match_here(struct pm *m, const char *s, const char *p);

/* %bxy at p (pointing at x). */
static const char *match_balanced(struct pm *m, const char *s, const char *p)
{
    int depth = 1;

    if (p >= m->pattern_end - 1) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (*s != p[0]) return NULL;
    while (++s < m->subject_end) {
        wl_step(&m->steps);
        if (*s == p[1]) {
            if (--depth == 0) return s + 1;
        } else if (*s == p[0]) {
            depth++;
        }
    }
    return NULL;
}

/* Greedy: as many as match, then give back one at a time. */
static const char *match_greedy(struct pm *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t n = 0;

    while (one_matches(m, s + n, p, ep))
        n++;
    wl_steps_take(&m->steps, (size_t)n);
    for (; n >= 0; n--) {
        const char *end = match_here(m, s + n, ep + 1);
        if (end) return end;
    }
    return NULL;
}

/* Lazy: the rest first, then one more at a time. */
static const char *match_lazy(struct pm *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *end = match_here(m, s, ep + 1);
        if (end) return end;
        if (!one_matches(m, s, p, ep)) return NULL;
        s++;
    }
}

static const char *open_capture(struct pm *m, const char *s, const char *p, ptrdiff_t kind)
{
    int i = m->n_caps;
    const char *end;

    if (i >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
    m->caps[i].at = s;
    m->caps[i].len = kind;
    m->n_caps = i + 1;
    end = match_here(m, s, p);
    if (!end) m->n_caps--;
    return end;
}

static const char *close_capture(struct pm *m, const char *s, const char *p)
{
    int i = m->n_caps - 1;
    const char *end;

    while (i >= 0 && m->caps[i].len != CAP_OPEN)
        i--;
    if (i < 0) luaL_error(m->L, "invalid pattern capture");
    m->caps[i].len = s - m->caps[i].at;
    end = match_here(m, s, p);
    if (!end) m->caps[i].len = CAP_OPEN;
    return end;
}

/* The index of the finished capture named by digit l ('1'..), or an error. */
static int capture_index(struct pm *m, int l)
{
    l -= '1';
    if (l < 0 || l >= m->n_caps || m->caps[l].len == CAP_OPEN)
        return luaL_error(m->L, "invalid capture index %%%d", l + 1);
    return l;
}

/* %1..%9 inside a pattern: the same bytes again. */
static const char *match_backref(struct pm *m, const char *s, int digit)
{
    int i = capture_index(m, digit);
    size_t len = (size_t)m->caps[i].len; /* a position capture never fits */

    if ((size_t)(m->subject_end - s) >= len && memcmp(m->caps[i].at, s, len) == 0) return s + len;
    return NULL;
}

/* Matches pattern p at subject position s: the end of the match, or NULL. Items that end
 * the work at this level loop instead of recursing, so depth counts only real nesting. */
static const char *match_here(struct pm *m, const char *s, const char *p)
{
    if (m->depth_left-- == 0) luaL_error(m->L, "pattern too complex");
    wl_step(&m->steps);
    while (p != m->pattern_end) {
        const char *ep;

        switch (*p) {
        case '(':
            if (p[1] == ')')
                s = open_capture(m, s, p + 2, CAP_POSITION);
            else
                s = open_capture(m, s, p + 1, CAP_OPEN);
            goto done;
        case ')':
            s = close_capture(m, s, p + 1);
            goto done;
        case '$':
            if (p + 1 != m->pattern_end) break; /* a plain '$' */
            s = s == m->subject_end ? s : NULL;
            goto done;
        case '%':
            if (p[1] == 'b') {
                s = match_balanced(m, s, p + 2);
                if (!s) goto done;
                p += 4;
                continue;
            }
            if (p[1] == 'f') {
                int before;
                p += 2;
                if (*p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
                ep = class_end(m, p);
                before = s == m->subject ? 0 : (unsigned char)s[-1];
                if (!in_set(before, p, ep - 1) && in_set((unsigned char)*s, p, ep - 1)) {
                    p = ep;
                    continue;
                }
                s = NULL;
                goto done;
            }
            if (isdigit((unsigned char)p[1])) {
                s = match_backref(m, s, (unsigned char)p[1]);
                if (!s) goto done;
                p += 2;
                continue;
            }
            break; /* a class such as %d */
        default:
            break;
        }
        /* a single-character class with an optional quantifier */
        ep = class_end(m, p);
        if (!one_matches(m, s, p, ep)) {
            if (*ep == '*' || *ep == '?' || *ep == '-') {
                p = ep + 1; /* zero repetitions are fine */
                continue;
            }
            s = NULL;
            goto done;
        }
        switch (*ep) {
        case '?': {
            const char *end = match_here(m, s + 1, ep + 1);
            if (end) {
                s = end;
                goto done;
            }
            p = ep + 1;
            continue;
        }
        case '+':
            s = match_greedy(m, s + 1, p, ep);
            goto done;
        case '*':
            s = match_greedy(m, s, p, ep);
            goto done;
        case '-':
            s = match_lazy(m, s, p, ep);
            goto done;
        default:
            s++;
            p = ep;
            continue;
        }
    }
done:
    m->depth_left++;
    return s;
}

/* --- captures to Lua values ----------------------------------------------------------------- */

/* Capture i as (pointer, length), or CAP_POSITION with the position pushed. With no
 * captures, capture 0 is the whole match s..e. */
static ptrdiff_t capture_get(struct pm *m, int i, const char *s, const char *e, const char **at)
{
    ptrdiff_t len;

    if (i >= m->n_caps) {
        if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
        *at = s;
        return e - s;
    }
    len = m->caps[i].len;
    *at = m->caps[i].at;
    if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
    if (len == CAP_POSITION) lua_pushinteger(m->L, (m->caps[i].at - m->subject) + 1);
    return len;
}

static void capture_push(struct pm *m, int i, const char *s, const char *e)
{
    const char *at;
    ptrdiff_t len = capture_get(m, i, s, e, &at);

    if (len != CAP_POSITION) lua_pushlstring(m->L, at, (size_t)len);
}

/* Pushes every capture (or the whole match when there are none and s is given). */
static int captures_push(struct pm *m, const char *s, const char *e)
{
    int n = m->n_caps == 0 && s ? 1 : m->n_caps;

    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        capture_push(m, i, s, e);
    return n;
}

/* --- the library functions ------------------------------------------------------------------ */

/* A 1-based, possibly negative start position, clipped to 1 below. */
static size_t start_position(lua_Integer pos, size_t len)
{
    if (pos > 0) return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len) return 1;
    return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (memchr("^$*+?.([%-", p[i], 10)) return 1;
    return 0;
}

static int find_or_match(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_position(luaL_optinteger(L, 3, 1), ls) - 1;
    struct pm m;
    const char *from;
    int anchored;

    if (init > ls) {
        lua_pushnil(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        /* glibc's memmem is linear in the subject: no budget needed */
        const char *at = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
        if (at) {
            lua_pushinteger(L, (at - s) + 1);
            lua_pushinteger(L, (lua_Integer)((size_t)(at - s) + lp));
            return 2;
        }
        lua_pushnil(L);
        return 1;
    }
    anchored = *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    pm_init(&m, L, s, ls, p, lp);
    from = s + init;
    do {
        const char *end;
        m.n_caps = 0;
        if ((end = match_here(&m, from, p)) != NULL) {
            if (!find) return captures_push(&m, from, end);
            lua_pushinteger(L, (from - s) + 1);
            lua_pushinteger(L, end - s);
            return captures_push(&m, NULL, NULL) + 2;
        }
    } while (from++ < m.subject_end && !anchored);
    lua_pushnil(L);
    return 1;
}

static int p_find(lua_State *L)
{
    return find_or_match(L, 1);
}

static int p_match(lua_State *L)
{
    return find_or_match(L, 0);
}

struct gmatch_state {
    const char *next;     /* where the next search starts */
    const char *last_end; /* end of the last match: an empty match there is skipped */
    const char *pattern;
    struct pm m;
};

/* upvalues: the budget, the subject, the pattern, the state */
static int gmatch_next(lua_State *L)
{
    struct gmatch_state *g = lua_touserdata(L, lua_upvalueindex(4));

    g->m.L = g->m.steps.L = L; /* the iterator may run in another coroutine */
    for (const char *from = g->next; from <= g->m.subject_end; from++) {
        const char *end;
        g->m.n_caps = 0;
        end = match_here(&g->m, from, g->pattern);
        if (end && end != g->last_end) {
            g->next = g->last_end = end;
            return captures_push(&g->m, from, end);
        }
    }
    return 0;
}

static int p_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_position(luaL_optinteger(L, 3, 1), ls) - 1;
    struct gmatch_state *g;

    lua_settop(L, 2); /* the closure keeps subject and pattern alive */
    g = lua_newuserdatauv(L, sizeof *g, 0);
    if (init > ls) init = ls + 1;
    pm_init(&g->m, L, s, ls, p, lp);
    g->next = s + init;
    g->pattern = p;
    g->last_end = NULL;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* A string replacement: %0..%9 and %%. */
static void add_template(struct pm *m, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = m->L;
    size_t left;
    const char *t = lua_tolstring(L, 3, &left);
    const char *pct;

    while ((pct = memchr(t, '%', left)) != NULL) {
        char c = pct[1]; /* the string's '\0' when '%' ends it */
        luaL_addlstring(b, t, (size_t)(pct - t));
        if (c == '%') {
            luaL_addchar(b, '%');
        } else if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)c)) {
            const char *at;
            ptrdiff_t len = capture_get(m, c - '1', s, e, &at);
            if (len == CAP_POSITION)
                luaL_addvalue(b);
            else
                luaL_addlstring(b, at, (size_t)len);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", '%');
        }
        left -= (size_t)(pct + 2 - t);
        t = pct + 2;
    }
    luaL_addlstring(b, t, left);
}

/* Adds the replacement of match s..e; 0 when it kept the original text. */
static int add_replacement(struct pm *m, luaL_Buffer *b, const char *s, const char *e, int kind)
{
    lua_State *L = m->L;

    if (kind == LUA_TFUNCTION) {
        int n;
        lua_pushvalue(L, 3);
        n = captures_push(m, s, e);
        lua_call(L, n, 1);
    } else if (kind == LUA_TTABLE) {
        capture_push(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        add_template(m, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int p_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int kind = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    const char *last_end = NULL;
    lua_Integer n = 0;
    int changed = 0, anchored;
    struct pm m;
    luaL_Buffer b;

    luaL_argexpected(L,
                     kind == LUA_TNUMBER || kind == LUA_TSTRING || kind == LUA_TFUNCTION ||
                         kind == LUA_TTABLE,
                     3, "string/function/table");
    luaL_buffinit(L, &b);
    anchored = *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    pm_init(&m, L, src, ls, p, lp);
    while (n < max) {
        const char *end;
        m.n_caps = 0;
        end = match_here(&m, src, p);
        if (end && end != last_end) {
            n++;
            changed |= add_replacement(&m, &b, src, end, kind);
            src = last_end = end;
        } else if (src < m.subject_end) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchored) break;
    }
    if (!changed) {
        lua_pushvalue(L, 1); /* the subject itself: no copy */
    } else {
        luaL_addlstring(&b, src, (size_t)(m.subject_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void wl_patterns_install(lua_State *L, int string_table, wl_budget budget)
{
    static const luaL_Reg fns[] = {
        {"find", p_find}, {"match", p_match}, {"gmatch", p_gmatch}, {"gsub", p_gsub}, {NULL, NULL}};

    lua_pushvalue(L, string_table);
    lua_pushlightuserdata(L, (void *)budget);
    luaL_setfuncs(L, fns, 1); /* each function keeps the budget as its upvalue 1 */
    lua_pop(L, 1);
}
