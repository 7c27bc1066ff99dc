#include "event.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/random.h>

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

static unsigned long long next_seq;

unsigned long long wh_event_next_seq(void)
{
    return __atomic_add_fetch(&next_seq, 1, __ATOMIC_RELAXED);
}

static char process_tag[13];
static pthread_once_t tag_once = PTHREAD_ONCE_INIT;

static void make_tag(void)
{
    unsigned char r[6];

    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) abort(); /* never on Linux >= 3.17 */
    for (int i = 0; i < 6; i++)
        sprintf(process_tag + 2 * i, "%02x", r[i]);
}

char *wh_event_id_text(const struct wh_event *ev, char out[WH_EVENT_ID_MAX])
{
    if (ev->id) {
        snprintf(out, WH_EVENT_ID_MAX, "%lld", ev->id);
    } else {
        pthread_once(&tag_once, make_tag);
        snprintf(out, WH_EVENT_ID_MAX, "sync-%s-%llu", process_tag, ev->seq);
    }
    return out;
}
