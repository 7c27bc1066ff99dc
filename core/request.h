/*
 * Pure checks on request parts, shared by the server and the unit tests: the challenge
 * echo, the Content-Type test, header look-up that sees duplicates. No allocation except
 * where stated; no civetweb types.
 */
#ifndef WH_REQUEST_H
#define WH_REQUEST_H

#include "jsonesc.h"

#include <stddef.h>

#define CHALLENGE_MAX 1024
/* {"challenge":"<escaped>"} */
#define CHALLENGE_BODY_MAX (16 + JSONESC_MAX(CHALLENGE_MAX))

/* Builds the body answering GET ?<query>: from the first "challenge" parameter, URL-decoded,
 * non-empty, at most CHALLENGE_MAX bytes, valid UTF-8. Returns the body's length, or -1 with
 * *why set to a static message for a 400. out must hold CHALLENGE_BODY_MAX bytes. */
int challenge_body(const char *query, char *out, size_t out_len, const char **why);

/* 1 if the Content-Type value is application/json, any case, with or without parameters. */
int content_type_is_json(const char *value);

struct wh_header {
    const char *name;
    const char *value;
};

/* Finds header `name` (any case) among n headers. Returns how many times it occurs and sets
 * *value to the first occurrence (NULL if none). */
int header_find(const struct wh_header *h, int n, const char *name, const char **value);

#endif
