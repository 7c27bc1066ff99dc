#include "request.h"

#include "jsonesc.h"

#include <civetweb.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int challenge_body(const char *query, char *out, size_t out_len, const char **why)
{
    char value[CHALLENGE_MAX + 2];
    int n;
    size_t len;

    if (!query) {
        *why = "missing challenge";
        return -1;
    }
    /* -1: absent or badly encoded; -2: does not fit, i.e. longer than CHALLENGE_MAX */
    n = mg_get_var(query, strlen(query), "challenge", value, sizeof value);
    if (n == -2 || n > CHALLENGE_MAX) {
        *why = "challenge longer than 1024 bytes";
        return -1;
    }
    if (n < 0) {
        *why = "missing challenge";
        return -1;
    }
    if (n == 0) {
        *why = "empty challenge";
        return -1;
    }
    if (!utf8_valid(value, (size_t)n)) {
        *why = "challenge is not valid UTF-8";
        return -1;
    }
    if (out_len < CHALLENGE_BODY_MAX) {
        *why = "internal: buffer too small";
        return -1;
    }
    memcpy(out, "{\"challenge\":\"", 14);
    len = 14 + json_escape(out + 14, value, (size_t)n);
    memcpy(out + len, "\"}", 2);
    len += 2;
    out[len] = '\0';
    return (int)len;
}

int content_type_is_json(const char *value)
{
    static const char want[] = "application/json";
    const size_t wl = sizeof want - 1;

    if (!value)
        return 0;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strncasecmp(value, want, wl) != 0)
        return 0;
    value += wl;
    while (*value == ' ' || *value == '\t')
        value++;
    return *value == '\0' || *value == ';';
}

int header_find(const struct wh_header *h, int n, const char *name, const char **value)
{
    int count = 0;

    *value = NULL;
    for (int i = 0; i < n; i++) {
        if (strcasecmp(h[i].name, name) == 0) {
            if (count++ == 0)
                *value = h[i].value;
        }
    }
    return count;
}
