#define _GNU_SOURCE
#include "dest_servers.h"

#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* A port nothing listens on now (the kernel's choice for an ephemeral bind). */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* One command on a fresh connection; the reply (caller frees) or NULL. */
static redisReply *redis_ask(const struct dest_server *s, const char *cmd)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    redisReply *r = NULL;

    if (c && !c->err) {
        redisSetTimeout(c, tv);
        if (s->password[0]) freeReplyObject(redisCommand(c, "AUTH %s", s->password));
        r = redisCommand(c, cmd);
    }
    if (c) redisFree(c);
    return r;
}

static size_t keep_body(void *p, size_t size, size_t n, void *out)
{
    size_t have = strlen(out), add = size * n;

    (void)p;
    if (have + add < 4096) {
        memcpy((char *)out + have, p, add);
        ((char *)out)[have + add] = '\0';
    }
    return size * n;
}

/* GET http://127.0.0.1:<monitor_port><path>: the status, and the body into out (4096). */
static long monitor_get(const struct dest_server *s, const char *path, char *out)
{
    CURL *c = curl_easy_init();
    char url[128];
    long status = 0;

    out[0] = '\0';
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s->monitor_port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return status;
}

static int ready(const struct dest_server *s)
{
    char body[4096];

    if (s->nats)
        return monitor_get(s, s->jetstream ? "/healthz?js-enabled-only=true" : "/healthz", body) ==
               200;
    redisReply *r = redis_ask(s, "PING");
    int ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;

    if (r) freeReplyObject(r);
    return ok;
}

int dest_server_start(struct dest_server *s)
{
    char log[300], port[16], mport[16], store[300];
    long long deadline = now_ms() + 20000;
    pid_t pid;
    int status;

    snprintf(log, sizeof log, "%s/server.log", s->dir);
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(mport, sizeof mport, "%d", s->monitor_port);
    snprintf(store, sizeof store, "%s/js", s->dir);
    pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        char conf[300];

        setsid(); /* a signal to the test's group does not reach it */
        dup2(fd, 1);
        dup2(fd, 2);
        if (!s->nats) {
            /* no persistence: an outage test stops and starts it, the data is the test's */
            snprintf(conf, sizeof conf, "%s/redis.conf", s->dir);
            execlp("redis-server", "redis-server", conf, (char *)NULL);
        } else {
            snprintf(conf, sizeof conf, "%s/nats.conf", s->dir);
            if (s->jetstream)
                execlp("nats-server", "nats-server", "-c", conf, "-js", "-sd", store, (char *)NULL);
            else
                execlp("nats-server", "nats-server", "-c", conf, (char *)NULL);
        }
        _exit(127);
    }
    s->pid = pid;
    while (now_ms() < deadline) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "dest_servers: %s exited at start (see %s)\n",
                    s->nats ? "nats-server" : "redis-server", log);
            s->pid = 0;
            return -1;
        }
        if (ready(s)) return 0;
        usleep(20000); /* polling a real client's answer */
    }
    fprintf(stderr, "dest_servers: not ready within 20 s (see %s)\n", log);
    dest_server_stop(s);
    return -1;
}

static int create(struct dest_server *s, int nats, int jetstream, const char *password)
{
    const char *t = getenv("TMPDIR");
    char path[400];
    FILE *f;

    memset(s, 0, sizeof *s);
    s->nats = nats;
    s->jetstream = jetstream;
    snprintf(s->password, sizeof s->password, "%s", password ? password : "");
    snprintf(s->dir, sizeof s->dir, "%s/wapphook-%s-XXXXXX", t && *t ? t : "/tmp",
             nats ? "nats" : "redis");
    if (!mkdtemp(s->dir) || (s->port = free_port()) < 0) return -1;
    if (nats && (s->monitor_port = free_port()) < 0) return -1;
    snprintf(path, sizeof path, "%s/%s.conf", s->dir, nats ? "nats" : "redis");
    if (!(f = fopen(path, "w"))) return -1;
    if (!nats) {
        /* the append-only file, written at every write: what Redis acknowledged survives a
         * stop and a start (the outage tests count on it) */
        fprintf(f,
                "bind 127.0.0.1\nport %d\nsave \"\"\nappendonly yes\nappendfsync always\n"
                "dir %s\n",
                s->port, s->dir);
        if (s->password[0]) fprintf(f, "requirepass \"%s\"\n", s->password);
        snprintf(s->url, sizeof s->url, "redis://127.0.0.1:%d/0", s->port);
    } else {
        fprintf(f, "listen: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n", s->port, s->monitor_port);
        if (s->password[0])
            fprintf(f, "authorization { users = [ {user: wapphook, password: \"%s\"} ] }\n",
                    s->password);
        snprintf(s->url, sizeof s->url, "nats://127.0.0.1:%d", s->port);
    }
    fclose(f);
    return dest_server_start(s);
}

int redis_server_start(struct dest_server *s, const char *password)
{
    return create(s, 0, 0, password);
}

int nats_server_start(struct dest_server *s, int jetstream, const char *password)
{
    return create(s, 1, jetstream, password);
}

int dest_server_stop(struct dest_server *s)
{
    int status = -1;

    if (s->pid <= 0) return 0;
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 2000 && waitpid(s->pid, &status, WNOHANG) == 0; i++)
        usleep(10000);
    if (waitpid(s->pid, &status, WNOHANG) == 0) { /* 20 s: it is stuck */
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
    }
    s->pid = 0;
    return 0;
}

void dest_server_destroy(struct dest_server *s)
{
    char cmd[400];

    dest_server_stop(s);
    if (getenv("KEEP_DEST")) return;
    if (s->dir[0] && strstr(s->dir, "wapphook-")) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0) fprintf(stderr, "dest_servers: could not remove %s\n", s->dir);
    }
}

int dest_server_clients(const struct dest_server *s)
{
    if (s->nats) {
        char body[4096];
        const char *n;

        if (monitor_get(s, "/connz", body) != 200 || !(n = strstr(body, "\"num_connections\":")))
            return -1;
        return atoi(n + strlen("\"num_connections\":"));
    }
    redisReply *r = redis_ask(s, "CLIENT LIST");
    int lines = 0;

    if (!r || r->type != REDIS_REPLY_STRING) {
        if (r) freeReplyObject(r);
        return -1;
    }
    for (const char *p = r->str; *p; p++)
        lines += *p == '\n';
    freeReplyObject(r);
    return lines - 1; /* not the connection that asked */
}
