/*
 * JSON <-> Lua for wapphook.json and the event: JSON text (checked by json_text_check) or a
 * jansson value (plugin configs) to Lua, and Lua to JSON text written through the state's own
 * allocator. Objects become tables, arrays 1-based sequences, integers Lua integers (64-bit),
 * reals floats, null the light userdata wapphook.null. The reverse refuses what JSON cannot
 * hold (NaN, non-UTF-8 strings, mixed or sparse tables, cycles) with a message. None keeps a
 * reference to its input.
 */
#ifndef WH_LUA_JSON_H
#define WH_LUA_JSON_H

#include <jansson.h>
#include <lua.h>

/* Pushes the Lua value of j (never fails short of memory, which raises). */
void wl_push_json(lua_State *L, const json_t *j);

/* Pushes the Lua value of JSON text that json_text_check() accepted, built straight from the
 * text: the request path's way, with no jansson tree in between. Same mapping as above. */
void wl_push_json_text(lua_State *L, const char *s, size_t len);

/* Converts the value at idx; NULL with a message in err (255 bytes) if it cannot. */
json_t *wl_to_json(lua_State *L, int idx, char *err);

/* The JSON text (compact, as jansson's json_dumps writes it) of the value at idx, built
 * straight from the Lua values in memory from the state's own allocator (so it counts against
 * the state's limit): *len bytes and a NUL, freed with wl_json_text_free, or NULL with a
 * message in err (255 bytes). Raises nothing (so the buffer cannot leak) and never grows past
 * max bytes. */
char *wl_to_json_text(lua_State *L, int idx, size_t max, size_t *len, char *err);
void wl_json_text_free(lua_State *L, char *text, size_t len);

/* Pushes wapphook.null. */
void wl_push_json_null(lua_State *L);
int wl_is_json_null(lua_State *L, int idx);

#endif
