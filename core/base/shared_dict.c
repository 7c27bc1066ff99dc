#define _GNU_SOURCE
#include "shared_dict.h"

#include "alloc.h"

#include "clock.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STRIPES 16

struct entry {
    struct entry *chain;         /* next in its hash bucket */
    struct entry *newer, *older; /* the stripe's LRU list */
    uint32_t hash;
    long long expires_ms;  /* 0: never */
    struct shared_value v; /* v.s points into data, after the key */
    size_t klen;
    char data[];
};

struct stripe {
    pthread_mutex_t mu;
    struct entry **buckets;
    size_t n_buckets;
    struct entry lru; /* sentinel: lru.older is the newest, lru.newer the oldest */
    size_t bytes, budget;
    unsigned long long evictions;
} __attribute__((aligned(64)));

struct shared_dict {
    struct shared_dict *next; /* in the registry */
    char *name;
    int refs; /* under registry_mu */
    struct stripe stripes[STRIPES];
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct shared_dict *registry;

static uint32_t hash_of(const char *k, size_t len)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h;
}

static size_t cost(size_t klen, size_t vlen)
{
    return sizeof(struct entry) + klen + vlen;
}

/* --- one stripe, under its mutex ------------------------------------------------------------ */

static void lru_unlink(struct entry *e)
{
    e->newer->older = e->older;
    e->older->newer = e->newer;
}

static void lru_push_newest(struct stripe *st, struct entry *e)
{
    e->older = st->lru.older;
    e->newer = &st->lru;
    st->lru.older->newer = e;
    st->lru.older = e;
}

static void entry_remove(struct stripe *st, struct entry *e)
{
    struct entry **p = &st->buckets[(e->hash >> 4) % st->n_buckets];

    while (*p != e)
        p = &(*p)->chain;
    *p = e->chain;
    lru_unlink(e);
    st->bytes -= cost(e->klen, e->v.type == SHARED_STRING ? e->v.len : 0);
    free(e);
}

/* The live entry for key (an expired one is removed on the way), or NULL. */
static struct entry *entry_find(struct stripe *st, uint32_t h, const char *k, size_t klen,
                                long long now)
{
    for (struct entry *e = st->buckets[(h >> 4) % st->n_buckets]; e; e = e->chain) {
        if (e->hash != h || e->klen != klen || memcmp(e->data, k, klen) != 0) continue;
        if (e->expires_ms && e->expires_ms <= now) {
            entry_remove(st, e);
            return NULL;
        }
        return e;
    }
    return NULL;
}

static struct stripe *stripe_of(struct shared_dict *d, uint32_t h)
{
    return &d->stripes[h % STRIPES];
}

static void stripe_init(struct stripe *st, size_t budget)
{
    pthread_mutex_init(&st->mu, NULL);
    st->budget = budget;
    st->n_buckets = budget / 256 > 16 ? budget / 256 : 16;
    st->buckets = wh_xcalloc(st->n_buckets, sizeof *st->buckets);
    st->lru.newer = st->lru.older = &st->lru;
}

/* --- the registry ----------------------------------------------------------------------------- */

struct shared_dict *shared_dict_open(const char *name, int size_mb)
{
    struct shared_dict *d;

    pthread_mutex_lock(&registry_mu);
    for (d = registry; d; d = d->next)
        if (strcmp(d->name, name) == 0) break;
    if (d) {
        d->refs++;
    } else {
        d = wh_xcalloc(1, sizeof *d);
        d->name = wh_xstrdup(name);
        for (int i = 0; i < STRIPES; i++)
            stripe_init(&d->stripes[i], ((size_t)size_mb << 20) / STRIPES);
        d->refs = 1;
        d->next = registry;
        registry = d;
    }
    pthread_mutex_unlock(&registry_mu);
    return d;
}

void shared_dict_release(struct shared_dict *d)
{
    struct shared_dict **p;

    if (!d) return;
    pthread_mutex_lock(&registry_mu);
    if (--d->refs > 0) {
        pthread_mutex_unlock(&registry_mu);
        return;
    }
    for (p = &registry; *p != d; p = &(*p)->next)
        ;
    *p = d->next;
    pthread_mutex_unlock(&registry_mu);
    for (int i = 0; i < STRIPES; i++) {
        struct stripe *st = &d->stripes[i];
        while (st->lru.older != &st->lru)
            entry_remove(st, st->lru.older);
        free(st->buckets);
        pthread_mutex_destroy(&st->mu);
    }
    free(d->name);
    free(d);
}

const char *shared_dict_name(const struct shared_dict *d)
{
    return d->name;
}

void shared_dict_each(shared_dict_visit fn, void *arg)
{
    pthread_mutex_lock(&registry_mu);
    for (struct shared_dict *d = registry; d; d = d->next) {
        size_t bytes = 0;
        unsigned long long ev = 0;
        for (int i = 0; i < STRIPES; i++) {
            pthread_mutex_lock(&d->stripes[i].mu);
            bytes += d->stripes[i].bytes;
            ev += d->stripes[i].evictions;
            pthread_mutex_unlock(&d->stripes[i].mu);
        }
        fn(d->name, bytes, ev, arg);
    }
    pthread_mutex_unlock(&registry_mu);
}

/* --- operations --------------------------------------------------------------------------------
 */

int shared_dict_get(struct shared_dict *d, const char *key, size_t klen, struct shared_value *out,
                    char *buf, size_t cap, long long *ttl_ms)
{
    uint32_t h = hash_of(key, klen);
    struct stripe *st = stripe_of(d, h);
    long long now = wh_mono_ms();
    struct entry *e;

    pthread_mutex_lock(&st->mu);
    e = entry_find(st, h, key, klen, now);
    if (e) {
        lru_unlink(e);
        lru_push_newest(st, e);
        *out = e->v;
        if (e->v.type == SHARED_STRING) {
            memcpy(buf, e->v.s, e->v.len < cap ? e->v.len : cap);
            out->s = buf;
        }
        if (ttl_ms) *ttl_ms = e->expires_ms ? e->expires_ms - now : -1;
    }
    pthread_mutex_unlock(&st->mu);
    return e != NULL;
}

/* Makes room for need bytes by evicting the oldest entries; returns how many went. */
static int make_room(struct stripe *st, size_t need)
{
    int evicted = 0;

    while (st->bytes + need > st->budget && st->lru.newer != &st->lru) {
        entry_remove(st, st->lru.newer);
        st->evictions++;
        evicted++;
    }
    return evicted;
}

static struct entry *entry_new(struct stripe *st, uint32_t h, const char *key, size_t klen,
                               const struct shared_value *v, long long expires_ms)
{
    size_t vlen = v->type == SHARED_STRING ? v->len : 0;
    struct entry *e = malloc(sizeof *e + klen + vlen);

    if (!e) return NULL;
    e->hash = h;
    e->klen = klen;
    e->expires_ms = expires_ms;
    e->v = *v;
    memcpy(e->data, key, klen);
    if (vlen) memcpy(e->data + klen, v->s, vlen);
    e->v.s = e->data + klen;
    e->chain = st->buckets[(h >> 4) % st->n_buckets];
    st->buckets[(h >> 4) % st->n_buckets] = e;
    lru_push_newest(st, e);
    st->bytes += cost(klen, vlen);
    return e;
}

int shared_dict_store(struct shared_dict *d, const char *key, size_t klen,
                      const struct shared_value *v, long long ttl_ms, enum shared_mode mode)
{
    uint32_t h = hash_of(key, klen);
    struct stripe *st = stripe_of(d, h);
    long long now = wh_mono_ms();
    size_t need = cost(klen, v->type == SHARED_STRING ? v->len : 0);
    struct entry *e;
    int evicted;

    if (need > st->budget) return -2;
    pthread_mutex_lock(&st->mu);
    e = entry_find(st, h, key, klen, now);
    if (e && mode == SHARED_ADD) {
        pthread_mutex_unlock(&st->mu);
        return -1;
    }
    if (e) entry_remove(st, e);
    evicted = make_room(st, need);
    e = entry_new(st, h, key, klen, v, ttl_ms > 0 ? now + ttl_ms : 0);
    pthread_mutex_unlock(&st->mu);
    if (!e) return -2;
    return evicted > 0;
}

int shared_dict_incr(struct shared_dict *d, const char *key, size_t klen, long long n,
                     bool has_init, long long init, long long ttl_ms, long long *result)
{
    uint32_t h = hash_of(key, klen);
    struct stripe *st = stripe_of(d, h);
    long long now = wh_mono_ms();
    struct entry *e;
    int rc = 0;

    pthread_mutex_lock(&st->mu);
    e = entry_find(st, h, key, klen, now);
    if (!e) {
        struct shared_value v = {.type = SHARED_INTEGER};
        if (!has_init)
            rc = -1;
        else if (__builtin_add_overflow(init, n, &v.i))
            rc = -3;
        else {
            make_room(st, cost(klen, 0));
            if (!entry_new(st, h, key, klen, &v, ttl_ms > 0 ? now + ttl_ms : 0)) rc = -3;
            *result = v.i;
        }
    } else if (e->v.type != SHARED_INTEGER) {
        rc = -2;
    } else if (__builtin_add_overflow(e->v.i, n, result)) {
        rc = -3; /* the stored value stays as it was */
    } else {
        e->v.i = *result;
        lru_unlink(e);
        lru_push_newest(st, e);
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

int shared_dict_delete(struct shared_dict *d, const char *key, size_t klen)
{
    uint32_t h = hash_of(key, klen);
    struct stripe *st = stripe_of(d, h);
    struct entry *e;

    pthread_mutex_lock(&st->mu);
    e = entry_find(st, h, key, klen, wh_mono_ms());
    if (e) entry_remove(st, e);
    pthread_mutex_unlock(&st->mu);
    return e != NULL;
}
