#include "json_out.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void json_out_str(struct wh_buf *b, const char *s, size_t n)
{
    char chunk[JSONESC_MAX(256)];

    buf_add(b, "\"", 1);
    for (size_t off = 0; off < n;) {
        size_t take = n - off < 256 ? n - off : 256;
        /* a cut must not split a UTF-8 sequence: back up to its first byte */
        while (off + take < n && take > 4 && ((unsigned char)s[off + take] & 0xC0) == 0x80)
            take--;
        buf_add(b, chunk, json_escape(chunk, s + off, take));
        off += take;
    }
    buf_add(b, "\"", 1);
}

static void ms(struct wh_buf *b, double v)
{
    if (v < 0)
        buf_str(b, "null");
    else
        buf_printf(b, "%.3f", v);
}

void json_out_event(struct wh_buf *b, const struct store_event *e)
{
    buf_printf(b, "{\"id\":\"%lld\",\"type\":", e->id);
    json_out_str(b, e->type, strlen(e->type));
    buf_printf(b, ",\"received_at\":%.3f,\"state\":\"%s\",\"handlers\":[", e->received_at,
               store_event_states[e->state]);
    for (int i = 0; i < e->n_handlers; i++) {
        const struct store_outcome *h = &e->handlers[i];
        const char *state = h->state == EV_OK        ? "ok"
                            : h->state == EV_DEAD    ? "dead"
                            : h->state == EV_PENDING ? "pending"
                            : h->timeout             ? "timeout"
                                                     : "failed";
        buf_str(b, i ? ",{\"handler\":" : "{\"handler\":");
        json_out_str(b, h->handler, strlen(h->handler));
        buf_printf(b, ",\"state\":\"%s\",\"attempts\":%d,\"duration_ms\":", state,
                   h->recorded ? h->recorded : h->attempts);
        ms(b, h->duration_ms);
        buf_str(b, ",\"error\":");
        if (*h->error)
            json_out_str(b, h->error, strlen(h->error));
        else
            buf_str(b, "null");
        buf_str(b, "}");
    }
    buf_str(b, "]");
}

void json_out_attempt(struct wh_buf *b, const struct store_attempt *a, int nth)
{
    buf_str(b, "{\"handler\":");
    json_out_str(b, a->handler, strlen(a->handler));
    buf_printf(b, ",\"attempt\":%d,\"at\":%.3f,\"outcome\":\"%s\",\"duration_ms\":", nth, a->at,
               a->outcome >= 0 && a->outcome < ATTEMPT_KINDS ? store_attempt_names[a->outcome]
                                                             : "failed");
    ms(b, a->duration_ms);
    buf_str(b, ",\"error\":");
    if (*a->error)
        json_out_str(b, a->error, strlen(a->error));
    else
        buf_str(b, "null");
    buf_str(b, ",\"log\":[");
    for (const char *p = a->log, *end = a->log + strlen(a->log); *p;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        if (p != a->log) buf_str(b, ",");
        json_out_str(b, p, (size_t)(nl - p));
        p = *nl ? nl + 1 : nl;
    }
    buf_str(b, "]}");
}

void json_out_payload(struct wh_buf *b, const char *body, size_t len, int cut)
{
    if (!cut && json_text_check(body, len) == JSON_TEXT_OBJECT)
        buf_add(b, body, len); /* checked JSON: it goes in as it is */
    else
        json_out_str(b, body, len);
}

void json_out_headers(struct wh_buf *b, const char *headers_json, const char *signature)
{
    json_t *h = json_loads(headers_json ? headers_json : "{}", 0, NULL);
    const char *k;
    json_t *v;
    int first = 1;

    buf_str(b, "{");
    json_object_foreach(h, k, v)
    {
        if (!json_is_string(v)) continue;
        if (!first) buf_str(b, ",");
        first = 0;
        json_out_str(b, k, strlen(k));
        buf_str(b, ":");
        if (strcasecmp(k, signature) == 0)
            buf_str(b, "\"redacted\"");
        else
            json_out_str(b, json_string_value(v), json_string_length(v));
    }
    buf_str(b, "}");
    json_decref(h);
}
