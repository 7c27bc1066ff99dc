/* The cost of one event inside wapphook, without HTTP: signature check, JSON parse, and
 * dispatch to the bench's Lua handler (which reads the payload), on a real generation; then
 * the same dispatch kept in the console's sync-mode history.
 * Usage: bench_event_cost EVENT.json  (prints microseconds per event) */
#include "console/history.h"
#include "runtime/dispatch.h"
#include "runtime/generation.h"
#include "base/json_text.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/signature.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    char dir[] = "/tmp/wapphook-cost-XXXXXX", path[600], body[4096], err[4096], hex[65];
    unsigned char mac[WH_MAC_LEN];
    struct generation *g;
    FILE *f;
    size_t len;
    const int n = 200000;
    double t0, parts[3] = {0};

    if (argc < 2 || !mkdtemp(dir)) return 2;
    f = fopen(argv[1], "rb");
    len = f ? fread(body, 1, sizeof body, f) : 0;
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/bench.lua", dir);
    f = fopen(path, "w");
    fputs("function handle(e) local d = e.payload.data\n"
          "  if type(d.from) ~= 'table' or #d.text.body == 0 then return false end end\n",
          f);
    fclose(f);
    snprintf(path, sizeof path, "%s/hooks.yaml", dir);
    f = fopen(path, "w");
    fputs("secrets: [{value: cost}]\nhooks:\n  incoming_message:\n    - lua: bench.lua\n", f);
    fclose(f);
    log_setup(LOG_JSON, LOG_WARN);
    metrics_init();
    if (generation_build(path, 1, &g, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    signature_hmac_hex("cost", 4, body, len, hex);
    for (int i = 0; i < WH_MAC_LEN; i++)
        sscanf(hex + 2 * i, "%2hhx", &mac[i]);
    for (int i = 0; i < n; i++) {
        struct wh_event ev = {.type = "incoming_message", .body = body, .body_len = len};
        struct dispatch_result res = {0};

        t0 = now_us();
        if (signature_check(g->verifier, mac, body, len)) return 1;
        parts[0] += now_us() - t0;
        t0 = now_us();
        if (json_text_check(body, len) != JSON_TEXT_OBJECT) return 1;
        parts[1] += now_us() - t0;
        t0 = now_us();
        if (dispatch_event(g, &ev, &res) || res.ran != 1) return 1;
        parts[2] += now_us() - t0;
    }
    printf("cost per event inside wapphook (%zu-byte body, %d events): %.2f us = "
           "signature %.2f + JSON %.2f + Lua dispatch %.2f\n",
           len, n, (parts[0] + parts[1] + parts[2]) / n, parts[0] / n, parts[1] / n, parts[2] / n);
    {
        /* a request's headers, as the history keeps them */
        static const struct wh_header h[] = {
            {"Host", "127.0.0.1:8080"},
            {"User-Agent", "Wappcloud-Webhooks/2.0"},
            {"Content-Type", "application/json"},
            {"Content-Length", "412"},
            {"X-Wappcloud-Event", "incoming_message"},
            {"X-Wappcloud-Signature", "sha256=0123456789abcdef0123456789abcdef0123456789abcdef01"},
            {"Accept-Encoding", "gzip"}};
        double plain = 0, kept = 0;
        history_configure(1000, 65536);
        for (int i = 0; i < n; i++) {
            struct wh_event ev = {.type = "incoming_message",
                                  .body = body,
                                  .body_len = len,
                                  .headers = h,
                                  .n_headers = 7};
            struct dispatch_result res = {.attempt = history_attempt};
            long long id;
            t0 = now_us();
            if (dispatch_event(g, &ev, &(struct dispatch_result){0})) return 1;
            plain += now_us() - t0;
            t0 = now_us();
            id = history_begin(g, &ev);
            res.arg = &id;
            if (dispatch_event(g, &ev, &res)) return 1;
            history_end(id);
            kept += now_us() - t0;
        }
        printf("dispatch with the console's history (the last 1,000 events kept): %.2f us, "
               "without: %.2f us (+%.2f us an event)\n",
               kept / n, plain / n, (kept - plain) / n);
        history_configure(0, 0);
    }
    generation_release(g);
    signature_thread_cleanup();
    return 0;
}
