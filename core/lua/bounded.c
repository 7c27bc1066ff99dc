#include "bounded.h"

#include <lauxlib.h>
#include <limits.h>
#include <time.h>

/* Every function here has the budget as upvalue 1 (wl_steps_start). */

/* --- the table library ---------------------------------------------------------------------- */

enum { NEED_READ = 1, NEED_WRITE = 2, NEED_LEN = 4 };

/* Is field key of the metatable on top set (raw, as stock Lua checks it)? */
static int meta_has(lua_State *L, const char *key)
{
    int set;

    lua_pushstring(L, key);
    set = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
    return set;
}

/* A table, or anything whose metatable has the metamethods the operation needs (as stock
 * Lua allows). */
static void check_table(lua_State *L, int arg, int need)
{
    if (lua_type(L, arg) == LUA_TTABLE) return;
    if (lua_getmetatable(L, arg)) {
        int ok = (!(need & NEED_READ) || meta_has(L, "__index")) &&
                 (!(need & NEED_WRITE) || meta_has(L, "__newindex")) &&
                 (!(need & NEED_LEN) || meta_has(L, "__len"));
        lua_pop(L, 1);
        if (ok) return;
    }
    luaL_checktype(L, arg, LUA_TTABLE); /* raises the usual message */
}

static lua_Integer checked_len(lua_State *L, int need)
{
    check_table(L, 1, need | NEED_LEN);
    return luaL_len(L, 1);
}

static int b_insert(lua_State *L)
{
    struct wl_steps st = wl_steps_start(L);
    lua_Integer end = checked_len(L, NEED_READ | NEED_WRITE);
    lua_Integer pos;

    end = (lua_Integer)((lua_Unsigned)end + 1u); /* the first free slot, wrapping like Lua */
    switch (lua_gettop(L)) {
    case 2:
        pos = end;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)end, 2, "position out of bounds");
        for (lua_Integer i = end; i > pos; i--) { /* shift up */
            wl_step(&st);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int b_remove(lua_State *L)
{
    struct wl_steps st = wl_steps_start(L);
    lua_Integer size = checked_len(L, NEED_READ | NEED_WRITE);
    lua_Integer pos = luaL_optinteger(L, 2, size);

    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
    lua_geti(L, 1, pos);        /* the result */
    for (; pos < size; pos++) { /* shift down */
        wl_step(&st);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

static int b_move(lua_State *L)
{
    struct wl_steps st = wl_steps_start(L);
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int dst = lua_isnoneornil(L, 5) ? 1 : 5;

    check_table(L, 1, NEED_READ);
    check_table(L, dst, NEED_WRITE);
    if (e >= f) {
        lua_Integer n;
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        if (t > e || t <= f || (dst != 1 && !lua_compare(L, 1, dst, LUA_OPEQ))) {
            for (lua_Integer i = 0; i < n; i++) {
                wl_step(&st);
                lua_geti(L, 1, f + i);
                lua_seti(L, dst, t + i);
            }
        } else { /* overlapping, upwards: from the end */
            for (lua_Integer i = n - 1; i >= 0; i--) {
                wl_step(&st);
                lua_geti(L, 1, f + i);
                lua_seti(L, dst, t + i);
            }
        }
    }
    lua_pushvalue(L, dst);
    return 1;
}

static void concat_one(lua_State *L, luaL_Buffer *b, lua_Integer i)
{
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid value (at index %I) in table for 'concat'", (LUAI_UACINT)i);
    luaL_addvalue(b);
}

static int b_concat(lua_State *L)
{
    struct wl_steps st = wl_steps_start(L);
    lua_Integer last = checked_len(L, NEED_READ);
    size_t sep_len;
    const char *sep = luaL_optlstring(L, 2, "", &sep_len);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    luaL_Buffer b;

    last = luaL_optinteger(L, 4, last);
    luaL_buffinit(L, &b);
    for (; i < last; i++) {
        wl_step(&st);
        concat_one(L, &b, i);
        luaL_addlstring(&b, sep, sep_len);
    }
    if (i == last) concat_one(L, &b, i);
    luaL_pushresult(&b);
    return 1;
}

/* Is the value at stack index a less than the one at b (absolute indices)? */
static int sort_less(lua_State *L, int a, int b)
{
    int r;

    if (lua_isnil(L, 2)) return lua_compare(L, a, b, LUA_OPLT);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, a);
    lua_pushvalue(L, b);
    lua_call(L, 2, 1);
    r = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return r;
}

/* Moves t[root] down the max-heap t[1..end] (1-based: the children of i are 2i and 2i+1). */
static void sift_down(lua_State *L, struct wl_steps *st, lua_Integer root, lua_Integer end)
{
    for (;;) {
        lua_Integer child = 2 * root;
        int top = lua_gettop(L);

        wl_step(st);
        if (child > end) return;
        lua_geti(L, 1, child); /* top+1: the larger child */
        if (child + 1 <= end) {
            lua_geti(L, 1, child + 1);
            if (sort_less(L, top + 1, top + 2)) {
                lua_replace(L, top + 1);
                child++;
            } else {
                lua_pop(L, 1);
            }
        }
        lua_geti(L, 1, root); /* top+2 */
        if (!sort_less(L, top + 2, top + 1)) {
            lua_settop(L, top);
            return;
        }
        lua_seti(L, 1, child); /* t[child] = t[root] */
        lua_seti(L, 1, root);  /* t[root] = the child */
        root = child;
    }
}

static int b_sort(lua_State *L)
{
    struct wl_steps st = wl_steps_start(L);
    lua_Integer n = checked_len(L, NEED_READ | NEED_WRITE);

    if (n > 1) {
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
        lua_settop(L, 2);
        luaL_checkstack(L, 8, "table.sort");
        for (lua_Integer i = n / 2; i >= 1; i--)
            sift_down(L, &st, i, n);
        for (lua_Integer end = n; end > 1; end--) {
            lua_geti(L, 1, 1);
            lua_geti(L, 1, end);
            lua_seti(L, 1, 1);   /* t[1] = t[end] */
            lua_seti(L, 1, end); /* t[end] = the largest */
            sift_down(L, &st, 1, end - 1);
        }
    }
    return 0;
}

/* --- string.rep and load -------------------------------------------------------------------- */

/* upvalue 2: the stock string.rep, which is fine whenever it copies something */
static int b_rep(lua_State *L)
{
    size_t len, sep_len;

    luaL_checklstring(L, 1, &len);
    luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &sep_len);
    if (len == 0 && sep_len == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

/* os.date over a long format, a piece at a time: stock os.date makes one strftime call per
 * conversion, 0.5 s for 16 MiB of "%n" here. Pieces end between conversions and share one
 * time, so the result is what one call would give. upvalue 2: the stock os.date. */
#define DATE_PIECE 4096
static int b_date(lua_State *L)
{
    size_t len, start, utc;
    const char *f = luaL_optlstring(L, 1, "%c", &len);
    struct wl_steps st = wl_steps_start(L);
    luaL_Buffer b;

    utc = len > 0 && f[0] == '!';
    if (len <= DATE_PIECE || (len - utc >= 2 && f[utc] == '*' && f[utc + 1] == 't')) {
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, 1);
        return 1;
    }
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) {
        lua_pushinteger(L, (lua_Integer)time(NULL));
        lua_replace(L, 2);
    }
    luaL_buffinit(L, &b);
    for (start = utc; start < len;) {
        size_t end = start;
        while (end < len && end - start < DATE_PIECE) {
            if (f[end] != '%')
                end++;
            else /* %x, or %Ex / %Ox */
                end += end + 1 < len && (f[end + 1] == 'E' || f[end + 1] == 'O') ? 3 : 2;
        }
        if (end > len) end = len;
        st.left = 1; /* a piece is a step */
        wl_step(&st);
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_pushstring(L, utc ? "!" : "");
        lua_pushlstring(L, f + start, end - start);
        lua_concat(L, 2);
        lua_pushvalue(L, 2);
        lua_call(L, 2, 1);
        luaL_addvalue(&b);
        start = end;
    }
    luaL_pushresult(&b);
    return 1;
}

/* Lua's parser runs in C, where no hook fires: a chunk is at most this long (a MiB parses in
 * a few milliseconds here; 64 MiB took over a second). */
#define LOAD_MAX_BYTES (1 << 20)

/* upvalue 2: the script's reader function; upvalue 3: the bytes it gave so far */
static int bounded_reader(lua_State *L)
{
    struct wl_steps st = wl_steps_start(L);
    lua_Integer total = lua_tointeger(L, lua_upvalueindex(3));

    st.left = 1; /* each piece is a step */
    wl_step(&st);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
        total += (lua_Integer)lua_rawlen(L, -1);
        if (total > LOAD_MAX_BYTES)
            return luaL_error(L, "load: chunk larger than %d bytes", LOAD_MAX_BYTES);
        lua_pushinteger(L, total);
        lua_replace(L, lua_upvalueindex(3));
    }
    return 1;
}

/* upvalue 2: the load being wrapped */
static int b_load(lua_State *L)
{
    int n = lua_gettop(L);

    if (lua_type(L, 1) == LUA_TSTRING && lua_rawlen(L, 1) > LOAD_MAX_BYTES) {
        lua_pushnil(L);
        lua_pushfstring(L, "load: chunk larger than %d bytes", LOAD_MAX_BYTES);
        return 2;
    }
    if (lua_type(L, 1) == LUA_TFUNCTION) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_pushvalue(L, 1);
        lua_pushinteger(L, 0);
        lua_pushcclosure(L, bounded_reader, 3);
        lua_replace(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* Sets field `name` of the table on top to a closure of fn over the budget and, with
 * wraps, over the function that field held before. */
static void replace(lua_State *L, wl_budget budget, const char *name, lua_CFunction fn, int wraps)
{
    lua_pushlightuserdata(L, (void *)budget);
    if (wraps) {
        lua_getfield(L, -2, name);
        lua_pushcclosure(L, fn, 2);
    } else {
        lua_pushcclosure(L, fn, 1);
    }
    lua_setfield(L, -2, name);
}

void wl_bounded_install(lua_State *L, wl_budget budget)
{
    static const struct {
        const char *name;
        lua_CFunction fn;
    } table_fns[] = {{"insert", b_insert},
                     {"remove", b_remove},
                     {"move", b_move},
                     {"concat", b_concat},
                     {"sort", b_sort}};

    lua_getglobal(L, "table");
    for (size_t i = 0; i < sizeof table_fns / sizeof table_fns[0]; i++)
        replace(L, budget, table_fns[i].name, table_fns[i].fn, 0);
    lua_pop(L, 1);
    lua_getglobal(L, "string");
    replace(L, budget, "rep", b_rep, 1);
    lua_pop(L, 1);
    lua_getglobal(L, "os");
    replace(L, budget, "date", b_date, 1);
    lua_pop(L, 1);
    lua_pushglobaltable(L);
    replace(L, budget, "load", b_load, 1);
    lua_pop(L, 1);
}
