/* Fuzz target: raw bytes to the endpoint through a real civetweb connection. The server
 * runs in this process (started once); each input is sent on a fresh TCP connection and the
 * answer read until the server closes or goes quiet. Afterwards the server must still answer
 * a valid challenge: no input may take it down. */
#include "runtime/generation.h"
#include "base/log.h"
#include "base/metrics.h"
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int port;

/* -1 only if the server refuses connections; local resource trouble is retried. */
static int connect_server(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct linger reset = {1, 0};
    int fd = -1, one = 1;
    struct timeval tv = {1, 0};

    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    for (int tries = 0; tries < 100; tries++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
        {
            int e = errno;
            close(fd);
            fd = -1;
            if (e == ECONNREFUSED) return -1;
        }
    }
    if (fd < 0) return -2;
    /* close with a reset: hundreds of thousands of client-side TIME_WAIT sockets would
     * exhaust the ephemeral ports long before anything is wrong with the server */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static size_t exchange(const void *data, size_t size, char *out, size_t cap, int quiet_ms)
{
    int fd = connect_server();
    size_t got = 0;

    if (fd == -1) __builtin_trap(); /* the server refuses connections: it stopped accepting */
    if (fd < 0) return 0;           /* no local port to connect from: not the server's fault */
    if (size) (void)!send(fd, data, size, MSG_NOSIGNAL);
    shutdown(fd, SHUT_WR); /* no more bytes: the server must answer or close */
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;
        if (poll(&p, 1, quiet_ms) <= 0) break;
        n = recv(fd, out + got, cap - 1 - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
        if (got + 1 >= cap) break;
    }
    out[got] = '\0';
    close(fd);
    return got;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/wapphook-fuzz-req-XXXXXX", p[128], err[2048];
    struct generation *g;
    struct server *s;
    struct mg_server_port sp;
    FILE *f;

    (void)argc;
    (void)argv;
    if (!mkdtemp(dir)) abort();
    snprintf(p, sizeof p, "%s/h.lua", dir);
    f = fopen(p, "w");
    fputs("function handle(e) local p = e.payload end\n", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/hooks.yaml", dir);
    f = fopen(p, "w");
    fputs("server:\n  listen: [http://127.0.0.1:0]\n  threads: 4\n  max_body_bytes: 4096\n"
          "  request_timeout_ms: 200\nsecrets: [{value: fuzz}]\n"
          "hooks:\n  t:\n    - lua: h.lua\n",
          f);
    fclose(f);
    log_setup(LOG_JSON, LOG_ERROR);
    metrics_init();
    mg_init_library(0);
    if (generation_build(p, 1, &g, err, sizeof err) || server_start(g, &s, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    (void)sp;
    port = server_port(s, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char out[65536];
    static unsigned long n;

    exchange(data, size, out, sizeof out, 300);
    /* a reply, if any, is a whole HTTP response with a JSON body */
    if (out[0] && (strncmp(out, "HTTP/1.1 ", 9) != 0 || !strstr(out, "Content-Type: ")))
        __builtin_trap();
    if (++n % 64 == 0) { /* and the server still serves */
        const char *ok =
            "GET /webhook?challenge=alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        exchange(ok, strlen(ok), out, sizeof out, 2000);
        if (!strstr(out, "{\"challenge\":\"alive\"}")) __builtin_trap();
    }
    return 0;
}
