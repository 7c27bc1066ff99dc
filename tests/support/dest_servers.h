/*
 * Throwaway destination servers for the destination plugins' tests (docs/destinations.md):
 * Debian's redis-server and nats-server, each on a free loopback port with its data in a
 * temporary folder, started and stopped for real (an outage is a stopped server, not a
 * mock). Readiness is a real client's answer (Redis: PING; NATS: /healthz on its monitoring
 * port, JetStream included), never a sleep.
 */
#ifndef WH_DEST_SERVERS_H
#define WH_DEST_SERVERS_H

#include <sys/types.h>

struct dest_server {
    char dir[256];      /* data, config and log (server.log) */
    char url[300];      /* redis://127.0.0.1:PORT/0 or nats://127.0.0.1:PORT */
    int port;           /* the clients' port */
    int monitor_port;   /* nats: the HTTP monitoring port (/connz, /healthz); 0 for redis */
    int nats;           /* 1: nats-server, 0: redis-server */
    int jetstream;      /* nats: started with -js (store in dir/js) */
    char password[128]; /* redis: requirepass; nats: the user "wapphook"'s; "" for none */
    pid_t pid;          /* 0 while stopped */
};

/* Creates and starts one; 0, or -1 with a message on stderr (the package is missing, or
 * it did not come up within 20 s). password may be NULL. */
int redis_server_start(struct dest_server *s, const char *password);
int nats_server_start(struct dest_server *s, int jetstream, const char *password);
/* SIGTERM and wait (Redis keeps what it acknowledged: appendonly, fsync always). */
int dest_server_stop(struct dest_server *s);
/* Starts it again on the same port and folder (JetStream keeps its streams); waits ready. */
int dest_server_start(struct dest_server *s);
/* Stops it (if running) and removes its folder. */
void dest_server_destroy(struct dest_server *s);
/* How many client connections the server holds now (Redis: CLIENT LIST without the
 * asking one; NATS: /connz's num_connections), or -1. */
int dest_server_clients(const struct dest_server *s);

#endif
