#include "utf8.h"

const unsigned char *utf8_next(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0], n;
    unsigned long cp;

    if (c < 0x80) return p + 1;
    if (c < 0xC2 || c > 0xF4) /* a continuation byte, an overlong lead, or past U+10FFFF */
        return NULL;
    n = c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
    cp = c & (0x3Fu >> n);
    if ((size_t)(end - p) <= n) return NULL;
    for (unsigned i = 1; i <= n; i++) {
        if ((p[i] & 0xC0) != 0x80) return NULL;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if (n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return NULL;
    if (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) return NULL;
    return p + n + 1;
}

int utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;

    while (p < end)
        if (!(p = utf8_next(p, end))) return 0;
    return 1;
}
