/*
 * JSON string escaping into a caller's buffer: quotes, backslashes, control characters and
 * the "/" of "</" (so an echoed value cannot close a <script> block). Valid UTF-8 is copied as
 * it is; a byte that is not part of a valid sequence is written as the text \xHH (an escaped
 * backslash, so the output is valid JSON and valid UTF-8 whatever the input: log lines and
 * stored headers stay parseable). No allocation.
 */
#ifndef WH_JSON_ESCAPE_H
#define WH_JSON_ESCAPE_H

#include <stddef.h>

/* Bytes the escaped form of src needs at most: 6 per input byte. */
#define JSONESC_MAX(len) ((len)*6)

/* Writes the escaped form of src[0..len) to dst (no quotes, no NUL); returns its length.
 * dst must hold JSONESC_MAX(len) bytes. */
size_t json_escape(char *dst, const char *src, size_t len);

#endif
