#include "event.h"

#include <strings.h>

const char *wh_outcome_name(enum wh_outcome o)
{
    static const char *const names[] = {"ok", "failed", "timeout", "memory limit"};

    return (unsigned)o < sizeof names / sizeof names[0] ? names[o] : "failed";
}

int wh_header_find(const struct wh_header *h, int n, const char *name, const char **value)
{
    int count = 0;

    *value = NULL;
    for (int i = 0; i < n; i++) {
        if (strcasecmp(h[i].name, name) == 0) {
            if (count++ == 0) *value = h[i].value;
        }
    }
    return count;
}
