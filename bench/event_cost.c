/* The cost of one event inside wapphook, without HTTP: signature check, JSON parse, and
 * dispatch to the bench's Lua handler (which reads the payload), on a real generation.
 * Usage: bench_event_cost EVENT.json  (prints microseconds per event) */
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
        struct dispatch_result res;

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
    generation_release(g);
    signature_thread_cleanup();
    return 0;
}
