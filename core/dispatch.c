#include "dispatch.h"

#include "log.h"

int dispatch_event(const struct wh_config *cfg, const struct wh_event *ev, int *n_handlers)
{
    const struct wh_hook *own = manifest_find_hook(cfg, ev->type);
    const struct wh_hook *any = manifest_find_hook(cfg, "*");

    /* Handlers run here once the Lua and plugin runtimes exist; until then an event is
     * accepted and logged. */
    *n_handlers = 0;
    log_msg(LOG_DEBUG, "event accepted", LOG_S("type", ev->type), LOG_I("bytes", ev->body_len),
            LOG_I("handlers", (own ? own->n_handlers : 0) + (any ? any->n_handlers : 0)));
    return 0;
}
