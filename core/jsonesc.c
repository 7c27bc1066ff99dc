#include "jsonesc.h"

#include <jansson.h>

size_t json_escape(char *dst, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char *d = dst;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];

        switch (c) {
        case '"': *d++ = '\\'; *d++ = '"'; break;
        case '\\': *d++ = '\\'; *d++ = '\\'; break;
        case '\n': *d++ = '\\'; *d++ = 'n'; break;
        case '\r': *d++ = '\\'; *d++ = 'r'; break;
        case '\t': *d++ = '\\'; *d++ = 't'; break;
        case '/':
            if (i > 0 && src[i - 1] == '<')
                *d++ = '\\';
            *d++ = '/';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                *d++ = '\\'; *d++ = 'u'; *d++ = '0'; *d++ = '0';
                *d++ = hex[c >> 4]; *d++ = hex[c & 15];
            } else {
                *d++ = (char)c;
            }
        }
    }
    return (size_t)(d - dst);
}

int utf8_valid(const char *s, size_t len)
{
    /* jansson's string constructor performs exactly the check JSON needs. */
    json_t *j = json_stringn(s, len);

    if (!j)
        return 0;
    json_decref(j);
    return 1;
}
