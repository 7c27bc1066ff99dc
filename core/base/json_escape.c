#include "json_escape.h"

#include "utf8.h"

size_t json_escape(char *dst, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char *d = dst;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];

        switch (c) {
        case '"':
            *d++ = '\\';
            *d++ = '"';
            break;
        case '\\':
            *d++ = '\\';
            *d++ = '\\';
            break;
        case '\n':
            *d++ = '\\';
            *d++ = 'n';
            break;
        case '\r':
            *d++ = '\\';
            *d++ = 'r';
            break;
        case '\t':
            *d++ = '\\';
            *d++ = 't';
            break;
        case '/':
            if (i > 0 && src[i - 1] == '<') *d++ = '\\';
            *d++ = '/';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                *d++ = '\\';
                *d++ = 'u';
                *d++ = '0';
                *d++ = '0';
                *d++ = hex[c >> 4];
                *d++ = hex[c & 15];
            } else if (c < 0x80) {
                *d++ = (char)c;
            } else {
                const unsigned char *p = (const unsigned char *)src + i;
                const unsigned char *next = utf8_next(p, (const unsigned char *)src + len);
                if (next) { /* a whole, valid sequence: as it is */
                    while (p < next)
                        *d++ = (char)*p++;
                    i = (size_t)(next - (const unsigned char *)src) - 1;
                } else { /* not UTF-8: the byte's value as text, \xHH, so the output stays
                          * valid JSON and valid UTF-8 whatever the input */
                    *d++ = '\\';
                    *d++ = '\\';
                    *d++ = 'x';
                    *d++ = hex[c >> 4];
                    *d++ = hex[c & 15];
                }
            }
        }
    }
    return (size_t)(d - dst);
}
