/*
 * The console API's JSON shapes (docs/operations.md, "The console API"), written into a
 * wh_buf, the same for the sync history and the spool.
 */
#ifndef WH_JSON_OUT_H
#define WH_JSON_OUT_H

#include "runtime/runtime.h"

/* "text", escaped (any bytes: what is not UTF-8 is written as \xHH text). */
void json_out_str(struct wh_buf *b, const char *s, size_t n);
/* E without its closing brace: {"id","type","received_at","state","handlers":[...] */
void json_out_event(struct wh_buf *b, const struct store_event *e);
/* One attempt: {"handler","attempt","at","outcome","duration_ms","error","log":[...]} */
void json_out_attempt(struct wh_buf *b, const struct store_attempt *a, int nth);
/* The body: the JSON object itself when whole and valid, else its text as a string. */
void json_out_payload(struct wh_buf *b, const char *body, size_t len, int cut);
/* A stored headers object with the signature header's value replaced by "redacted". */
void json_out_headers(struct wh_buf *b, const char *headers_json, const char *signature);

#endif
