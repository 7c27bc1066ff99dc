/*
 * Pure checks on request parts, shared by the server and the unit tests: the challenge
 * echo, the Content-Type test, header look-up that sees duplicates. No allocation except
 * where stated; no civetweb types.
 */
#ifndef WH_REQUEST_H
#define WH_REQUEST_H

#include "base/base.h"

#include <stddef.h>

#define CHALLENGE_MAX 1024
/* {"challenge":"<escaped>"} */
#define CHALLENGE_BODY_MAX (16 + JSONESC_MAX(CHALLENGE_MAX))

/* Builds the body answering GET ?<query>: from the first "challenge" parameter, URL-decoded,
 * non-empty, at most CHALLENGE_MAX bytes, valid UTF-8. Returns the body's length, or -1 with
 * *why set to a static message for a 400. out must hold CHALLENGE_BODY_MAX bytes. */
int request_challenge_body(const char *query, char *out, size_t out_len, const char **why);

/* 1 if the Content-Type value is application/json, any case, with or without parameters. */
int request_content_type_is_json(const char *value);

/* A request head as civetweb 1.15's parser leaves it: the request line and every header cut
 * out of one buffer in place, with NUL written over each separator it consumed (the CR and LF
 * ending a line, the colon, spaces before the colon). The checks below read those bytes to
 * see what the parser accepted without saying so. */
struct wh_head {
    const char *method;        /* the start of the head in the parser's buffer */
    const char *version;       /* after "HTTP/" */
    const struct wh_header *h; /* the headers the parser kept, in order */
    int n;
    int max_headers; /* what it keeps at most (civetweb: MG_MAX_HEADERS, 64) */
    size_t buf_size; /* its buffer (max_request_size): nothing at or past method + buf_size
                      * minus a margin is read */
};

/* Refuses what RFC 9112 says a server must refuse and civetweb 1.15 accepts: a Content-Length
 * that is not 1*DIGIT, whitespace before a header's colon, a header name that is not a token,
 * an obs-folded or whitespace-led line, a bare LF line ending, HTTP/1.1 without exactly one
 * Host (or any request with two), and more header lines than the parser keeps (which it
 * drops without a word). Returns 0, or 400 or 431 with *why a static message. */
int request_head_check(const struct wh_head *hd, const char **why);

/* 1 if the request's path is exactly `path` as it was sent: `decoded` is the path after
 * civetweb decoded it in place, raw_len the length it had on the wire. Any percent-encoding
 * makes them differ, so "/webhook%00/x" and "/web%68ook" are other paths, as is "//webhook"
 * (compared before civetweb's dot-segment cleaning). */
int request_path_is(const char *decoded, size_t raw_len, const char *path);

#endif
