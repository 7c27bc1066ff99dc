/*
 * The console (docs/operations.md, "The console"): a web page and its JSON API on the admin
 * listener, to see every event and what each handler did with it, replay it, and watch new
 * ones arrive. Its questions go to the spool in durable mode and to an in-memory history of
 * the last events in sync mode (history.h). No HTTP library here: the admin listener
 * (http/admin.c) hands each request in and writes each reply out.
 */
#ifndef WH_CONSOLE_H
#define WH_CONSOLE_H

#include "history.h"

/* On every console reply: no script or style from anywhere but the listener, no framing. */
#define CONSOLE_SECURITY_HEADERS                                                                   \
    "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'; form-action 'self'; "    \
    "base-uri 'none'\r\n"                                                                          \
    "X-Frame-Options: DENY\r\n"                                                                    \
    "Referrer-Policy: no-referrer\r\n"

struct console;

/* slot: the current generation (token, signature header, handlers); spool: NULL in sync
 * mode. 0, or -1 with err (the spool cannot be opened for reading). */
int console_open(const struct wh_config *cfg, struct generation_slot *slot, int durable,
                 struct console **out, char *err, size_t err_len);
/* A reload's configuration: the history's size (a change empties it); the token and the
 * handlers come from the slot. */
void console_reload(struct console *k, const struct wh_config *cfg);
/* Ends the streams first (each within a second), then frees. */
void console_stop_streams(struct console *k);
void console_close(struct console *k);

struct console_request {
    const char *method, *path, *query;                         /* query: NULL when none */
    const char *host, *origin, *authorization, *cookie, *csrf; /* headers, NULL when absent */
    const char *body;
    size_t body_len;
};

struct console_reply {
    int status;
    const char *content_type;
    const char *data; /* the body: static (the page), or body.p */
    size_t len;
    struct wh_buf body;
    char headers[256]; /* more header lines (Set-Cookie), each ending in CRLF */
    int stream;        /* an event stream: write its head, then console_stream() */
    /* the stream's credentials, checked again while it lasts */
    int stream_access;
    char stream_session[65];
    char *stream_bearer;
};

/* 1 when path is the console's (the reply is filled in), 0 when it is not. */
int console_handle(struct console *k, const struct console_request *rq, struct console_reply *r);
void console_reply_free(struct console_reply *r);
/* The stream's events through write (0, or -1 when the reader is gone), until the reader
 * goes, falls behind, is no longer let in (r's credentials, checked each quiet second and
 * each 256 events), or the console stops. */
void console_stream(struct console *k, const struct console_reply *r,
                    int (*write)(void *arg, const char *s, size_t n), void *arg);

/* The page, its script and its style, compiled in (assets.c). */
struct console_asset {
    const char *path, *content_type;
    const char *data;
    size_t len;
};
const struct console_asset *console_asset(const char *path);

#endif
