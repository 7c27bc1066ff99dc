/*
 * Whole HTTP responses on a civetweb connection, JSON unless stated: status line, headers
 * (nosniff, no-store, Content-Length) and body in one write where they fit. `close` ends
 * the connection after the response and keeps civetweb from draining a body we did not
 * read. Each returns the status, for the handler to return to civetweb.
 */
#ifndef WH_REPLY_H
#define WH_REPLY_H

#include <civetweb.h>
#include <stdbool.h>
#include <stddef.h>

int reply_typed(struct mg_connection *c, int status, const char *content_type, const char *body,
                size_t len, bool close, const char *extra_headers);
int reply(struct mg_connection *c, int status, const char *body, size_t len, bool close,
          const char *extra_headers);
/* The next reply on this thread answers a public request with this method: count it in
 * wapphook_requests_total before writing it. */
void reply_count_next(const char *method);
/* The next reply on this thread calls fn(arg) just before its bytes go out (once);
 * reply_release_now calls it now if no reply did. */
void reply_release_next(void (*fn)(void *), void *arg);
void reply_release_now(void);
/* 1 if the request carries a body the handler does not read: answer with close = true, rather
 * than let civetweb drain it (endlessly, if chunked). */
bool reply_request_has_body(struct mg_connection *c);
/* civetweb's max_request_size for every listener: the request line and headers must fit. */
#define WH_HEAD_BUF_SIZE 16384
#define WH_STR_(x) #x
#define WH_STR(x) WH_STR_(x)
/* Refuses a head civetweb accepted but RFC 9112 does not (request_head_check): answers 400
 * or 431 and closes. Returns that status, or 0 if the head is fine. */
int reply_if_malformed(struct mg_connection *c);
/* 1 if the request's path is exactly `path`, byte for byte as sent (request_path_is). */
bool reply_request_path_matches(struct mg_connection *c, const char *path);
/* reply() with a string literal body, its length counted by the compiler */
#define REPLY_LITERAL(c, status, literal, close, extra_headers)                                    \
    reply((c), (status), "" literal, sizeof(literal) - 1, (close), (extra_headers))

/* {"error":"msg"} */
int reply_error(struct mg_connection *c, int status, const char *msg, bool close);
/* civetweb's http_error callback: its own refusals, in our format. */
int reply_http_error(struct mg_connection *c, int status, const char *msg);
/* An authorisation handler (mg_set_auth_handler) that lets every request through: the
 * signature is the check. Without one, civetweb stat()s for an .htpasswd on every request. */
int reply_authorize_all(struct mg_connection *c, void *arg);

#endif
