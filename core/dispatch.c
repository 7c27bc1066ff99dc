#include "dispatch.h"

#include "clock.h"

#include "generation.h"
#include "log.h"
#include "lua_runtime.h"
#include "metrics.h"
#include "plugin_loader.h"
#include "stuck.h"


int dispatch_handler(const struct generation *g, const struct bound_handler *b,
                     const struct wh_event *ev, char *err, size_t err_len)
{
    static const char *const outcome_names[] = {"ok", "failed", "timeout", "memory limit"};
    double t0 = wh_mono_ms_f();
    int budget = wh_handler_budget_ms(g->cfg, b->h);
    int outcome, watched = stuck_enter(b->name, ev->type, budget);

    if (b->plugin)
        outcome = plugin_handle(b->plugin, ev, err, err_len) == 0 ? LUA_CALL_OK : LUA_CALL_FAILED;
    else
        outcome = (int)lua_runtime_call(g->lua, b->script, b->h->function, budget, ev, err,
                                        err_len);
    stuck_leave(watched);
    metrics_handler(b->series, (wh_mono_ms_f() - t0) / 1e3, outcome == LUA_CALL_OK);
    if (outcome == LUA_CALL_TIMEOUT)
        metrics_lua_timeout();
    else if (outcome == LUA_CALL_MEMORY)
        metrics_lua_memory_error();
    if (outcome != LUA_CALL_OK) {
        log_msg(LOG_WARN, "handler failed", LOG_S("handler", b->name), LOG_S("event", ev->type),
                LOG_S("outcome", outcome_names[outcome]), LOG_S("error", err),
                LOG_D("duration_ms", wh_mono_ms_f() - t0), LOG_I("generation", g->id));
        return -1;
    }
    log_msg(LOG_DEBUG, "handler ok", LOG_S("handler", b->name), LOG_S("event", ev->type),
            LOG_D("duration_ms", wh_mono_ms_f() - t0));
    return 0;
}

static int run_hook(const struct generation *g, const struct bound_hook *hook,
                    const struct wh_event *ev, struct dispatch_result *res)
{
    int failed = 0;

    for (size_t i = 0; hook && i < hook->n; i++) {
        char err[4096];

        res->ran++;
        if (dispatch_handler(g, &hook->handlers[i], ev, err, sizeof err) != 0) {
            res->failed++;
            failed = 1;
        }
    }
    return failed;
}

int dispatch_event(const struct generation *g, const struct wh_event *ev,
                   struct dispatch_result *res)
{
    const struct bound_hook *own = generation_hook(g, ev->type);
    int failed = 0;

    res->ran = res->failed = 0;
    log_msg(LOG_DEBUG, "event", LOG_S("event", ev->type), LOG_SN("body", ev->body, ev->body_len));
    if (own != g->any)
        failed |= run_hook(g, own, ev, res);
    failed |= run_hook(g, g->any, ev, res);
    metrics_event(own && own->series ? own->series : metrics_other_events(),
                  failed ? EVENT_FAILED : res->ran ? EVENT_OK : EVENT_UNROUTED);
    return failed ? -1 : 0;
}
