/* The console's side of a spool: the backend's admin operations behind one lock. */
#include "spool.h"

#include "base/base.h"
#include "store.h"

#include <pthread.h>
#include <stdlib.h>

struct spool_admin {
    const struct admin_ops *ops;
    struct store_admin *a;
    pthread_mutex_t mu;
};

int spool_admin_open(const struct wh_config *cfg, struct spool_admin **out, char *err,
                     size_t err_len)
{
    struct spool_admin *s = wh_xcalloc(1, sizeof *s);

    s->ops = spool_is_pg(cfg->spool) ? &store_pg_admin : &store_sqlite_admin;
    if (s->ops->open(cfg, &s->a, err, err_len)) {
        free(s);
        return -1;
    }
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return 0;
}

void spool_admin_close(struct spool_admin *s)
{
    if (!s) return;
    s->ops->close(s->a);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

const char *spool_admin_error(struct spool_admin *s)
{
    return s->ops->error(s->a); /* after a call, by the thread that made it */
}

int spool_admin_events(struct spool_admin *s, const struct store_query *q,
                       void (*ev)(void *arg, const struct store_event *e), void *arg,
                       long long *next)
{
    int rc;

    if (!s->ops->events) return -2;
    pthread_mutex_lock(&s->mu);
    rc = s->ops->events(s->a, q, ev, arg, next);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int spool_admin_event(struct spool_admin *s, long long id,
                      void (*ev)(void *arg, const struct store_event *e), void *arg)
{
    int rc;

    if (!s->ops->event) return -2;
    pthread_mutex_lock(&s->mu);
    rc = s->ops->event(s->a, id, ev, arg);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int spool_admin_detail(struct spool_admin *s, long long id,
                       void (*got)(void *arg, const struct store_detail *d), void *arg)
{
    int rc;

    if (!s->ops->detail) return -2;
    pthread_mutex_lock(&s->mu);
    rc = s->ops->detail(s->a, id, got, arg);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

long long spool_admin_replay_event(struct spool_admin *s, long long id, const char *handler)
{
    long long n;

    if (!s->ops->replay_event) return -2;
    pthread_mutex_lock(&s->mu);
    n = s->ops->replay_event(s->a, id, handler);
    pthread_mutex_unlock(&s->mu);
    return n;
}

long long spool_admin_replay_dead(struct spool_admin *s)
{
    long long n;

    pthread_mutex_lock(&s->mu);
    n = s->ops->replay(s->a, 0);
    pthread_mutex_unlock(&s->mu);
    return n;
}
