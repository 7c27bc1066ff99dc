/*
 * Shared dictionaries (lua.shared, docs/handlers.md): fixed-size key/value tables in the
 * process, shared by every thread and script, that outlive reloads. Each is split into
 * stripes, each with its own mutex, hash chains, LRU list and byte budget (the size / the
 * stripe count), so threads touching different keys rarely meet. Values are scalars
 * (string, integer, float, boolean) copied in and out: nothing returned points into a
 * dictionary. A dictionary belongs to every generation that names it (shared_dict_open
 * takes a reference, shared_dict_release drops it) and is freed with its last one, so a
 * reload keeps its contents and one a new manifest drops goes once the old generation ends.
 */
#ifndef WH_SHARED_DICT_H
#define WH_SHARED_DICT_H

#include <stdbool.h>
#include <stddef.h>

struct shared_dict;

enum shared_type { SHARED_NONE, SHARED_STRING, SHARED_INTEGER, SHARED_FLOAT, SHARED_BOOLEAN };

/* A value going in (s/len for strings) or coming out (s points into the caller's buffer). */
struct shared_value {
    enum shared_type type;
    const char *s;
    size_t len;
    long long i;
    double d;
    bool b;
};

/* The dictionary `name`: the existing one (its size stays until a restart) or a new one of
 * size_mb. One reference, the caller's. */
struct shared_dict *shared_dict_open(const char *name, int size_mb);
void shared_dict_release(struct shared_dict *d);
const char *shared_dict_name(const struct shared_dict *d);

/* Looks key up. 1 with *out (a string copied into buf, cut to cap: *out->len is its real
 * length), 0 if absent or expired. *ttl_ms gets the time left (-1: none), if not NULL. */
int shared_dict_get(struct shared_dict *d, const char *key, size_t klen, struct shared_value *out,
                    char *buf, size_t cap, long long *ttl_ms);

enum shared_mode { SHARED_SET, SHARED_ADD, SHARED_REPLACE };

/* Stores key = v (ttl_ms 0: no expiry). Returns 0, 1 if it had to evict entries to make room
 * ("forcible"), -1 if add found the key present, -2 if the pair is larger than a stripe. */
int shared_dict_store(struct shared_dict *d, const char *key, size_t klen,
                      const struct shared_value *v, long long ttl_ms, enum shared_mode mode);

/* Atomically adds n to the integer at key (absent: starts from init, when has_init, with
 * ttl_ms; else -1). 0 with *result, -1 absent and no init, -2 not an integer, -3 overflow. */
int shared_dict_incr(struct shared_dict *d, const char *key, size_t klen, long long n,
                     bool has_init, long long init, long long ttl_ms, long long *result);

/* 1 if it was there. */
int shared_dict_delete(struct shared_dict *d, const char *key, size_t klen);

/* For metrics: bytes held and evictions so far, of every open dictionary. */
typedef void (*shared_dict_visit)(const char *name, size_t bytes, unsigned long long evictions,
                                  void *arg);
void shared_dict_each(shared_dict_visit fn, void *arg);

#endif
