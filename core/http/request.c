#include "request.h"

#include "base/base.h"

#include <civetweb.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int request_challenge_body(const char *query, char *out, size_t out_len, const char **why)
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

int request_content_type_is_json(const char *value)
{
    static const char want[] = "application/json";
    const size_t wl = sizeof want - 1;

    if (!value) return 0;
    while (*value == ' ' || *value == '\t')
        value++;
    if (strncasecmp(value, want, wl) != 0) return 0;
    value += wl;
    while (*value == ' ' || *value == '\t')
        value++;
    return *value == '\0' || *value == ';';
}

/* RFC 9110 tchar */
static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* 1*DIGIT, then optional trailing whitespace (civetweb strips the leading one) */
static int is_length(const char *v)
{
    const char *p = v;

    while (*p >= '0' && *p <= '9')
        p++;
    if (p == v) return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0';
}

int request_head_check(const struct wh_head *hd, const char **why)
{
    int hosts = 0;
    const char *end, *p;

    for (int i = 0; i < hd->n; i++) {
        const char *name = hd->h[i].name, *value = hd->h[i].value;
        size_t len = strlen(name);

        for (size_t k = 0; k < len; k++)
            if (!is_tchar((unsigned char)name[k])) {
                *why = "invalid header name";
                return 400;
            }
        /* Between the name's end (the colon, or a space before it, now NUL) and the value
         * lie only the spaces and tabs the parser skipped after the colon, untouched. A NUL
         * there was a space before the colon, or the colon itself after it. */
        for (p = name + len + 1; p < value; p++)
            if (*p != ' ' && *p != '\t') {
                *why = "whitespace before a header's colon";
                return 400;
            }
        if (!strcasecmp(name, "Host")) hosts++;
        if (!strcasecmp(name, "Content-Length") && !is_length(value)) {
            *why = "invalid Content-Length";
            return 400;
        }
        /* Each line ends in CRLF, both bytes now NUL; the next header starts right after. */
        end = value + strlen(value);
        if (i + 1 < hd->n) {
            if (hd->h[i + 1].name != end + 2) {
                *why = end[1] ? "bare LF line ending" : "malformed header line";
                return 400;
            }
        } else if ((size_t)(end + 4 - hd->method) >= hd->buf_size - 64) {
            /* the last header's end is too near the buffer's end to look past it safely */
            *why = "request headers too large";
            return 431;
        } else if (end[1] != '\0' || !((end[2] == '\r' && end[3] == '\0') || end[2] == '\0')) {
            /* After the last header the parser stopped: the empty line should follow (its CR,
             * and its LF now NUL). Anything else is a line it did not read: a folded or
             * whitespace-led line, a line past its last header slot, or a bare LF. */
            if (hd->n >= hd->max_headers) {
                *why = "too many header lines";
                return 431;
            }
            *why =
                end[1] ? "bare LF line ending" : "obsolete line folding or a malformed header line";
            return 400;
        }
    }
    /* The request line's CRLF: the parser wrote NUL over it and over any whitespace after
     * it, so a first header line led by whitespace shows as more than two NULs. */
    if (hd->n > 0) {
        const char *v = hd->version + strlen(hd->version);
        if (hd->h[0].name != v + 2) {
            *why = hd->h[0].name == v + 1 ? "bare LF line ending" : "whitespace-led header line";
            return 400;
        }
    }
    if (hosts > 1 || (hosts == 0 && !strcmp(hd->version, "1.1"))) {
        *why = hosts ? "more than one Host header" : "HTTP/1.1 request without a Host header";
        return 400;
    }
    return 0;
}

int request_path_is(const char *decoded, size_t raw_len, const char *path)
{
    return decoded && strlen(decoded) == raw_len && strcmp(decoded, path) == 0;
}
