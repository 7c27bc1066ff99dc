#include "log.h"

#include "json_escape.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_min_level = LOG_INFO;
static enum log_format log_fmt = LOG_JSON;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

#define LINE_MAX_BYTES 8192
/* Longest string value copied into a line; longer ones are cut and marked. */
#define VALUE_MAX_BYTES 1024

void log_setup(enum log_format format, enum log_level min_level)
{
    log_fmt = format;
    log_min_level = min_level;
}

int log_parse_level(const char *s, enum log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_parse_format(const char *s, enum log_format *out)
{
    if (strcmp(s, "json") == 0)
        *out = LOG_JSON;
    else if (strcmp(s, "text") == 0)
        *out = LOG_TEXT;
    else
        return -1;
    return 0;
}

struct line {
    char buf[LINE_MAX_BYTES];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
    if (n > sizeof l->buf - 2 - l->len)
        n = sizeof l->buf - 2 - l->len; /* keep room for the closing "}\n" */
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void put_escaped(struct line *l, const char *s, size_t n)
{
    char tmp[JSONESC_MAX(VALUE_MAX_BYTES)];
    int cut = n > VALUE_MAX_BYTES;

    if (cut) { /* at a character's start, not inside one */
        n = VALUE_MAX_BYTES;
        while (n > VALUE_MAX_BYTES - 3 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    put(l, tmp, json_escape(tmp, s, n));
    if (cut) puts_(l, "...");
}

static void put_value(struct line *l, const struct log_field *f)
{
    char num[64];
    int quote = log_fmt == LOG_JSON;

    switch (f->type) {
    case LF_STR:
    case LF_STRN: {
        const char *s = f->v.s ? f->v.s : "";
        size_t n = f->type == LF_STRN ? f->len : strlen(s);

        if (log_fmt == LOG_TEXT) quote = n == 0 || memchr(s, ' ', n) || memchr(s, '"', n);
        if (quote) puts_(l, "\"");
        put_escaped(l, s, n);
        if (quote) puts_(l, "\"");
        break;
    }
    case LF_INT:
        put(l, num, (size_t)snprintf(num, sizeof num, "%lld", f->v.i));
        break;
    case LF_DBL:
        put(l, num, (size_t)snprintf(num, sizeof num, "%.6g", f->v.d));
        break;
    case LF_END:
        break;
    }
}

static __thread struct {
    char *buf;
    size_t cap, *len;
} capture;

void log_capture(char *buf, size_t cap, size_t *len)
{
    capture.buf = buf;
    capture.cap = cap;
    capture.len = len;
    if (len) *len = 0;
}

static __thread struct log_tee *tee;

void log_tee_start(struct log_tee *t)
{
    tee = t;
    if (t) t->len = 0, t->lines = 0, t->cut = 0;
}

void log_tee_line(const char *level, const char *text, size_t len)
{
    size_t room, head = strlen(level) + 2;

    if (!tee || tee->cut) return;
    room = sizeof tee->text - tee->len;
    if (tee->lines == LOG_TEE_LINES || room < head + 2) {
        tee->cut = 1;
        return;
    }
    if (head + len + 1 > room) { /* the line is kept cut, and nothing after it */
        len = room - head - 1;
        tee->cut = 1;
    }
    memcpy(tee->text + tee->len, level, head - 2);
    memcpy(tee->text + tee->len + head - 2, ": ", 2);
    tee->len += head;
    for (size_t i = 0; i < len; i++)
        tee->text[tee->len++] = text[i] == '\n' || text[i] == '\r' ? ' ' : text[i];
    tee->text[tee->len++] = '\n';
    tee->lines++;
}

void log_write(enum log_level level, const char *msg, const struct log_field *fields)
{
    struct line l;
    struct timeval tv;
    struct tm tm;
    char ts[80];

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    l.len = 0;
    if (log_fmt == LOG_JSON) {
        puts_(&l, "{\"ts\":\"");
        puts_(&l, ts);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"msg\":\"");
        put_escaped(&l, msg, strlen(msg));
        puts_(&l, "\"");
        for (const struct log_field *f = fields; f->type != LF_END; f++) {
            puts_(&l, ",\"");
            puts_(&l, f->key);
            puts_(&l, "\":");
            put_value(&l, f);
        }
        l.buf[l.len++] = '}';
    } else {
        puts_(&l, ts);
        puts_(&l, " ");
        puts_(&l, level_names[level]);
        puts_(&l, " ");
        put_escaped(&l, msg, strlen(msg));
        for (const struct log_field *f = fields; f->type != LF_END; f++) {
            puts_(&l, " ");
            puts_(&l, f->key);
            puts_(&l, "=");
            put_value(&l, f);
        }
    }
    l.buf[l.len++] = '\n';
    if (capture.buf) { /* wapphook try: the calling thread's lines, kept for its report */
        size_t room = capture.cap - *capture.len;
        size_t n = l.len < room ? l.len : room;
        memcpy(capture.buf + *capture.len, l.buf, n);
        *capture.len += n;
        return;
    }
    /* One write per line; a short write to a full pipe is retried so lines stay whole. */
    for (size_t off = 0; off < l.len;) {
        ssize_t n = write(STDERR_FILENO, l.buf + off, l.len - off);
        if (n <= 0) break;
        off += (size_t)n;
    }
}
