#include "reply.h"

#include "base/base.h"
#include "request.h"

#include <stdio.h>
#include <string.h>

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return status < 500 ? "Bad Request" : "Internal Server Error";
    }
}

/* Writes a whole JSON response in one write where it fits. `close` ends the connection
 * after it (and keeps civetweb from draining a body we chose not to read). */
/* Set by the public endpoint for the request this thread is serving: its answer is counted
 * just before its bytes go out, so a client that has the answer also sees it counted. */
static __thread const char *count_method;

void reply_count_next(const char *method)
{
    count_method = method;
}

/* Set by the endpoint: what the request holds (its place under max_inflight...), given back
 * just before the answer goes out, so that a client sending its next request the moment it
 * has this answer never finds the place still taken. */
static __thread void (*release_fn)(void *);
static __thread void *release_arg;

void reply_release_next(void (*fn)(void *), void *arg)
{
    release_fn = fn;
    release_arg = arg;
}

void reply_release_now(void)
{
    void (*fn)(void *) = release_fn;

    release_fn = NULL;
    if (fn) fn(release_arg);
}

int reply_typed(struct mg_connection *c, int status, const char *content_type, const char *body,
                size_t len, bool close, const char *extra_headers)
{
    char buf[4096];
    const struct mg_request_info *ri = mg_get_request_info(c);
    int n;

    if (close) mg_disable_connection_keep_alive(c);
    /* A response to HEAD has no body: bytes after its head would be read as the start of
     * the next response. Nor a Content-Length, which would have to be GET's (RFC 9110 8.6). */
    bool head = ri && ri->request_method && !strcmp(ri->request_method, "HEAD");
    char length[40] = "";

    if (head)
        len = 0;
    else
        snprintf(length, sizeof length, "Content-Length: %zu\r\n", len);
    n = snprintf(buf, sizeof buf,
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Type: %s\r\n"
                 "%s"
                 "X-Content-Type-Options: nosniff\r\n"
                 "Cache-Control: no-store\r\n"
                 "%s%s\r\n",
                 status, reason_phrase(status), content_type, length,
                 extra_headers ? extra_headers : "", close ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof buf) return status;
    if (count_method) {
        metrics_request(count_method, status);
        count_method = NULL;
    }
    reply_release_now();
    if ((size_t)n + len <= sizeof buf) {
        memcpy(buf + n, body, len);
        mg_write(c, buf, (size_t)n + len);
    } else {
        mg_write(c, buf, (size_t)n);
        mg_write(c, body, len);
    }
    return status;
}

bool reply_request_has_body(struct mg_connection *c)
{
    return mg_get_request_info(c)->content_length > 0 ||
           mg_get_header(c, "Transfer-Encoding") != NULL;
}

int reply_error(struct mg_connection *c, int status, const char *msg, bool close)
{
    char body[600];
    char esc[JSONESC_MAX(80)];
    size_t ml = strlen(msg);
    int n;

    if (ml > 80) ml = 80;
    n = snprintf(body, sizeof body, "{\"error\":\"%.*s\"}", (int)json_escape(esc, msg, ml), esc);
    return reply(c, status, body, (size_t)n, close, NULL);
}

/* civetweb's own refusals (malformed request line, headers too large...) in our format. */
int reply_http_error(struct mg_connection *c, int status, const char *msg)
{
    char lower[80];
    size_t i;

    for (i = 0; msg && msg[i] && i < sizeof lower - 1; i++)
        lower[i] = (char)(msg[i] >= 'A' && msg[i] <= 'Z' ? msg[i] + 32 : msg[i]);
    lower[i] = '\0';
    reply_error(c, status, i ? lower : "bad request", true);
    log_msg(LOG_INFO, "request refused by the HTTP parser", LOG_I("status", status),
            LOG_S("reason", lower));
    return 0;
}

int reply_if_malformed(struct mg_connection *c)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    struct wh_header h[MG_MAX_HEADERS];
    struct wh_head hd = {.method = ri->request_method,
                         .version = ri->http_version,
                         .h = h,
                         .max_headers = MG_MAX_HEADERS,
                         .buf_size = WH_HEAD_BUF_SIZE};
    const char *why = NULL;
    int status;

    hd.n = ri->num_headers < MG_MAX_HEADERS ? ri->num_headers : MG_MAX_HEADERS;
    for (int i = 0; i < hd.n; i++) {
        h[i].name = ri->http_headers[i].name;
        h[i].value = ri->http_headers[i].value;
    }
    if (!ri->request_method || !ri->http_version || (status = request_head_check(&hd, &why)) == 0)
        return 0;
    return reply_error(c, status, why, true); /* the body, if any, is never read */
}

bool reply_request_path_matches(struct mg_connection *c, const char *path)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *p = ri->local_uri_raw, *end;

    if (!p || !ri->http_version) return false;
    /* Where the path ended on the wire: at the '?' civetweb cut (now the NUL before the query
     * string), or else at the end of the request target, the last byte before the NULs that
     * were the spaces ahead of "HTTP/". Decoding in place left the rest of the raw bytes
     * between the decoded path's NUL and that end. */
    if (ri->query_string) {
        end = ri->query_string - 1;
    } else {
        end = ri->http_version - 5; /* "HTTP/" */
        while (end > p && end[-1] == '\0')
            end--;
    }
    return end >= p && request_path_is(p, (size_t)(end - p), path);
}

int reply(struct mg_connection *c, int status, const char *body, size_t len, bool close,
          const char *extra_headers)
{
    return reply_typed(c, status, "application/json", body, len, close, extra_headers);
}

int reply_authorize_all(struct mg_connection *c, void *arg)
{
    (void)c;
    (void)arg;
    return 1;
}
