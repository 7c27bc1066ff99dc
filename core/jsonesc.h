/*
 * JSON string escaping into a caller's buffer: quotes, backslashes, control characters and
 * the "/" of "</" (so an echoed value cannot close a <script> block). Valid UTF-8 is copied as
 * it is; a byte that is not part of a valid sequence is written as the text \xHH (an escaped
 * backslash, so the output is valid JSON and valid UTF-8 whatever the input: log lines and
 * stored headers stay parseable). No allocation.
 */
#ifndef WH_JSONESC_H
#define WH_JSONESC_H

#include <stddef.h>

/* Bytes the escaped form of src needs at most: 6 per input byte. */
#define JSONESC_MAX(len) ((len) * 6)

/* Writes the escaped form of src[0..len) to dst (no quotes, no NUL); returns its length.
 * dst must hold JSONESC_MAX(len) bytes. */
size_t json_escape(char *dst, const char *src, size_t len);

/* 1 if s[0..len) is valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
int utf8_valid(const char *s, size_t len);

/* The byte after the UTF-8 sequence at p (p < end), or NULL if it is not valid. */
const unsigned char *utf8_next(const unsigned char *p, const unsigned char *end);

#endif
