/*
 * Structured logs on stderr: one line per event, a JSON object by default
 * ({"ts":..., "level":..., "msg":..., fields...}) or key=value text for people.
 * Each line is written with one write(2), so lines from many threads never interleave.
 * Fields borrow their strings for the duration of the call only.
 */
#ifndef WH_LOG_H
#define WH_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_JSON, LOG_TEXT };

enum log_field_type { LF_END, LF_STR, LF_INT, LF_DBL, LF_STRN };

struct log_field {
    const char *key;
    enum log_field_type type;
    union {
        const char *s;
        long long i;
        double d;
    } v;
    size_t len; /* LF_STRN only */
};

#define LOG_S(k, val) ((struct log_field){.key = (k), .type = LF_STR, .v.s = (val)})
#define LOG_SN(k, val, n)                                                                          \
    ((struct log_field){.key = (k), .type = LF_STRN, .v.s = (val), .len = (n)})
#define LOG_I(k, val) ((struct log_field){.key = (k), .type = LF_INT, .v.i = (long long)(val)})
#define LOG_D(k, val) ((struct log_field){.key = (k), .type = LF_DBL, .v.d = (double)(val)})

extern enum log_level log_min_level;

void log_setup(enum log_format format, enum log_level min_level);
int log_parse_level(const char *s, enum log_level *out);
int log_parse_format(const char *s, enum log_format *out);
void log_write(enum log_level level, const char *msg, const struct log_field *fields);
/* Until called again with buf NULL, the calling thread's lines go to buf (*len bytes so
 * far, cut at cap) instead of stderr: for `wapphook try`'s report per handler. */
void log_capture(char *buf, size_t cap, size_t *len);

/* What one handler call logged, for the console (docs/operations.md, "The console"): the
 * lines a Lua handler logs (wapphook.log, print), a plugin's host log and an exec: handler's
 * stderr, at most LOG_TEE_LINES lines and LOG_TEE_BYTES bytes, one per '\n'-ended line; past
 * that, cut is set and the rest dropped. The lines still go to the log as well. */
#define LOG_TEE_LINES 16
#define LOG_TEE_BYTES 4096
struct log_tee {
    char text[LOG_TEE_BYTES];
    size_t len;
    int lines;
    int cut;
};
/* Until called again with NULL, the calling thread's handler lines are also kept in t
 * (emptied first). */
void log_tee_start(struct log_tee *t);
/* A handler line: "LEVEL: text" into the calling thread's tee, if any (newlines in text
 * become spaces). */
void log_tee_line(const char *level, const char *text, size_t len);

/* log_msg(LOG_INFO, "listening", LOG_S("url", url), LOG_I("port", 8080)); */
#define log_msg(level, msg, ...)                                                                   \
    do {                                                                                           \
        if ((level) >= log_min_level) {                                                            \
            const struct log_field log_f_[] = {__VA_ARGS__ __VA_OPT__(, ){.type = LF_END}};        \
            log_write((level), (msg), log_f_);                                                     \
        }                                                                                          \
    } while (0)

#endif
