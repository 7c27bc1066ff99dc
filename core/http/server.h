/*
 * The public listener, inside the http folder: civetweb's lifecycle and callbacks
 * (server.c), and the endpoint's pipeline they hand each request to (pipeline.c). Each
 * request holds a reference to the generation it started on.
 */
#ifndef WH_SERVER_H
#define WH_SERVER_H

#include "body_deadline.h"
#include "http.h"

#include "console/console.h"
#include "runtime/runtime.h"
#include "spool/spool.h"

#include <pthread.h>

struct mg_connection;
struct mg_context;

struct server {
    struct mg_context *ctx;
    const struct wh_config *cfg; /* the start-up config: server.* applies until restart */
    struct generation *start_gen;
    struct generation_slot current; /* what new requests use (secrets, headers, hooks ...) */
    struct body_deadlines *deadlines;
    struct spool *spool;      /* durable mode: where accepted events go; NULL in sync mode */
    int inflight;             /* requests inside on_request (atomic) */
    int posts;                /* of which POSTs, against server.max_inflight (atomic) */
    int routed;               /* civetweb has on_request as its handler (atomic) */
    int draining;             /* set by server_stop: finish, close, accept nothing new */
    pthread_mutex_t drain_mu; /* with drain_cv: server_stop waits for inflight == 0 */
    pthread_cond_t drain_cv;
    pthread_mutex_t err_lock;
    int started;
    char first_error[512]; /* civetweb's first complaint, for start-up failures */
};

/* civetweb's request handler for every path (arg: the server). */
int pipeline_request(struct mg_connection *c, void *arg);

#endif
