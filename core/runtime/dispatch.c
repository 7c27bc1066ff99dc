#include "dispatch.h"

#include "base/base.h"

#include "generation.h"
#include "lua/wl.h"
#include "plugin_loader.h"
#include "stuck.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* An exec: handler: the raw body on stdin, the event in its environment; exit 0 is success,
 * anything else fails with the first line of its stderr. */
static enum wh_outcome run_exec_handler(const struct generation *g, const struct wh_handler *h,
                                        const struct wh_event *ev, int budget_ms, char *err,
                                        size_t err_len)
{
    char type_env[96], at_env[64], id_env[64], id[WH_EVENT_ID_MAX], why[512];
    const char *env[] = {type_env, at_env, id_env, NULL};
    struct exec_request rq = {.argv = (const char *const *)h->argv,
                              .env = env,
                              .stdin_data = ev->body,
                              .stdin_len = ev->body_len,
                              .deadline_ns = wh_mono_ns() + (long long)budget_ms * 1000000LL,
                              .max_output = (size_t)g->cfg->exec_max_output_bytes};
    struct exec_result r;
    enum exec_status st;
    enum wh_outcome outcome = WH_OUTCOME_FAILED;

    snprintf(type_env, sizeof type_env, "WAPPHOOK_EVENT_TYPE=%s", ev->type);
    snprintf(at_env, sizeof at_env, "WAPPHOOK_RECEIVED_AT=%.6f", ev->received_at);
    snprintf(id_env, sizeof id_env, "WAPPHOOK_EVENT_ID=%s", wh_event_id_text(ev, id));
    st = exec_run(&rq, &r, why, sizeof why);
    if (st == EXEC_RAN) /* its stderr, a line each, is what it logged */
        for (char *p = r.err, *end = r.err + r.err_len, *nl; p < end; p = nl + 1) {
            if (!(nl = memchr(p, '\n', (size_t)(end - p)))) nl = end;
            log_tee_line("stderr", p, (size_t)(nl - p));
        }
    if (st != EXEC_RAN) {
        metrics_exec(st == EXEC_BUSY ? MX_BUSY : MX_SPAWN);
        snprintf(err, err_len, "%s", why);
        return WH_OUTCOME_FAILED;
    }
    if (r.timed_out) {
        metrics_exec(MX_TIMEOUT);
        snprintf(err, err_len, "timeout: the command ran longer than its budget (%d ms)",
                 budget_ms);
        outcome = WH_OUTCOME_TIMEOUT;
    } else if (r.exited && r.code == 0) {
        metrics_exec(MX_OK);
        outcome = WH_OUTCOME_OK;
    } else {
        size_t first = strcspn(r.err, "\n");
        metrics_exec(MX_FAILED);
        if (r.exited)
            snprintf(err, err_len, "exit code %d%s%.*s", r.code, first ? ": " : "", (int)first,
                     r.err);
        else
            snprintf(err, err_len, "killed by signal %d%s%.*s", r.signal, first ? ": " : "",
                     (int)first, r.err);
    }
    exec_result_free(&r);
    return outcome;
}

int dispatch_handler(const struct generation *g, const struct bound_handler *b,
                     const struct wh_event *ev, char *err, size_t err_len,
                     struct dispatch_attempt *att)
{
    double t0 = wh_mono_ms_f(), took;
    int budget = wh_handler_budget_ms(g->cfg, b->h);
    enum wh_outcome outcome;
    int watched = stuck_enter(b->name, ev->type, budget);

    if (att) {
        att->at = wh_now_s();
        log_tee_start(&att->log);
    }
    metrics_set_current_handler(b->series);
    if (b->plugin)
        outcome = plugin_handle(b->plugin, ev, budget, err, err_len) == 0 ? WH_OUTCOME_OK
                                                                          : WH_OUTCOME_FAILED;
    else if (b->h->kind == WH_HANDLER_EXEC)
        outcome = run_exec_handler(g, b->h, ev, budget, err, err_len);
    else
        outcome = wl_runtime_call(g->lua, b->script, b->h->function, budget, ev, err, err_len);
    metrics_set_current_handler(NULL);
    stuck_leave(watched);
    took = wh_mono_ms_f() - t0;
    if (att) {
        log_tee_start(NULL);
        att->outcome = outcome;
        att->duration_ms = took;
    }
    metrics_handler(b->series, took / 1e3, outcome == WH_OUTCOME_OK);
    activity_attempt(b->name, outcome, took);
    if (b->h->kind == WH_HANDLER_LUA && outcome == WH_OUTCOME_TIMEOUT)
        metrics_lua_timeout(); /* an exec: handler's is wapphook_exec_total{result="timeout"} */
    else if (b->h->kind == WH_HANDLER_LUA && outcome == WH_OUTCOME_MEMORY)
        metrics_lua_memory_error();
    if (outcome != WH_OUTCOME_OK) {
        log_msg(LOG_WARN, "handler failed", LOG_S("handler", b->name), LOG_S("event", ev->type),
                LOG_S("outcome", wh_outcome_name(outcome)), LOG_S("error", err),
                LOG_D("duration_ms", took), LOG_I("generation", g->id));
        return -1;
    }
    log_msg(LOG_DEBUG, "handler ok", LOG_S("handler", b->name), LOG_S("event", ev->type),
            LOG_D("duration_ms", took));
    return 0;
}

static int run_hook(const struct generation *g, const struct bound_hook *hook,
                    const struct wh_event *ev, struct dispatch_result *res, double *took)
{
    int failed = 0;

    for (size_t i = 0; hook && i < hook->n; i++) {
        char err[4096] = "";
        struct dispatch_attempt att;
        int rc = dispatch_handler(g, &hook->handlers[i], ev, err, sizeof err,
                                  res->attempt ? &att : NULL);

        res->ran++;
        if (rc != 0) {
            res->failed++;
            failed = 1;
        }
        if (res->attempt) {
            *took += att.duration_ms;
            res->attempt(res->arg, &hook->handlers[i], &att, rc ? err : "");
        }
    }
    return failed;
}

/* The handlers an event of this type runs: its own hook (unless that is "*"), then "*". */
static void hooks_of(const struct generation *g, const char *type, const struct bound_hook *out[2])
{
    const struct bound_hook *own = generation_hook(g, type);

    out[0] = own != g->any ? own : NULL;
    out[1] = g->any;
}

size_t dispatch_handlers(const struct generation *g, const char *type,
                         const struct bound_handler **out, size_t max)
{
    const struct bound_hook *hooks[2];
    size_t n = 0;

    hooks_of(g, type, hooks);
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; hooks[k] && i < hooks[k]->n && n < max; i++)
            out[n++] = &hooks[k]->handlers[i];
    return n;
}

static int *running_of(const struct bound_handler *b)
{
    return (int *)&b->running; /* the one mutable field, see generation.h */
}

/* Gives back the places taken for the first `upto` capped handlers of hooks. */
static void give_back(const struct bound_hook *hooks[2], size_t upto)
{
    size_t seen = 0;

    for (int k = 0; k < 2; k++)
        for (size_t i = 0; hooks[k] && i < hooks[k]->n; i++)
            if (hooks[k]->handlers[i].h->max_concurrent && seen++ < upto)
                __atomic_sub_fetch(running_of(&hooks[k]->handlers[i]), 1, __ATOMIC_ACQ_REL);
}

int dispatch_reserve(const struct generation *g, const char *type)
{
    const struct bound_hook *hooks[2];
    size_t taken = 0;

    hooks_of(g, type, hooks);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; hooks[k] && i < hooks[k]->n; i++) {
            const struct bound_handler *b = &hooks[k]->handlers[i];
            if (!b->h->max_concurrent) continue;
            if (__atomic_add_fetch(running_of(b), 1, __ATOMIC_ACQ_REL) > b->h->max_concurrent) {
                __atomic_sub_fetch(running_of(b), 1, __ATOMIC_ACQ_REL);
                give_back(hooks, taken);
                return -1;
            }
            taken++;
        }
    }
    return 0;
}

void dispatch_unreserve(const struct generation *g, const char *type)
{
    const struct bound_hook *hooks[2];

    hooks_of(g, type, hooks);
    give_back(hooks, (size_t)-1);
}

struct event_series *dispatch_series(const struct generation *g, const char *type)
{
    const struct bound_hook *own = generation_hook(g, type);

    return own && own->series ? own->series : metrics_other_events();
}

int dispatch_event(const struct generation *g, const struct wh_event *ev,
                   struct dispatch_result *res)
{
    const struct bound_hook *hooks[2];
    int failed = 0;
    double took = 0;

    res->ran = res->failed = 0;
    log_msg(LOG_DEBUG, "event", LOG_S("event", ev->type), LOG_SN("body", ev->body, ev->body_len));
    hooks_of(g, ev->type, hooks);
    for (int k = 0; k < 2; k++)
        failed |= run_hook(g, hooks[k], ev, res, &took);
    metrics_event(dispatch_series(g, ev->type), failed     ? EVENT_FAILED
                                                : res->ran ? EVENT_OK
                                                           : EVENT_UNROUTED);
    activity_event(ev->type,
                   failed     ? ACTIVITY_EVENT_FAILED
                   : res->ran ? ACTIVITY_EVENT_OK
                              : ACTIVITY_UNROUTED,
                   res->attempt && res->ran ? took : -1);
    return failed ? -1 : 0;
}
