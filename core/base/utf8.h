/*
 * The one UTF-8 decoder: every check of text for valid UTF-8 (headers, log lines, JSON text,
 * the spool's PostgreSQL text) goes through utf8_next. Valid means RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF.
 */
#ifndef WH_UTF8_H
#define WH_UTF8_H

#include <stddef.h>

/* The byte after the UTF-8 sequence at p (p < end), or NULL if it is not valid. */
const unsigned char *utf8_next(const unsigned char *p, const unsigned char *end);

/* 1 if s[0..len) is valid UTF-8. */
int utf8_valid(const char *s, size_t len);

#endif
