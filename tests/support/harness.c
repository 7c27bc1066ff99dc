#define _GNU_SOURCE
#include "harness.h"

#include "base/signature.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define DIE(...)                                                                                   \
    do {                                                                                           \
        fprintf(stderr, "harness: " __VA_ARGS__);                                                  \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

/* WH_TEST_FILTER=pattern runs only the cases whose names match (cmocka's wildcards): for
 * working on one case of a long suite. */
void cmocka_set_test_filter(const char *pattern);
__attribute__((constructor)) static void filter_from_env(void)
{
    const char *f = getenv("WH_TEST_FILTER");
    if (f && *f) cmocka_set_test_filter(f);
}

long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tmpdir_make(char *out)
{
    const char *t = getenv("TMPDIR");
    snprintf(out, 256, "%s/wapphook-test-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(out)) DIE("mkdtemp: %s", strerror(errno));
}

void file_write(const char *dir, const char *name, const char *content)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) DIE("%s: %s", path, strerror(errno));
    fputs(content, f);
    fclose(f);
}

const char *path_in(const char *dir, const char *name)
{
    static __thread char p[8][600];
    static __thread int i;

    i = (i + 1) % 8;
    snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
    return p[i];
}

struct par {
    long (*fn)(long);
    long i, result;
};

static void *par_main(void *arg)
{
    struct par *p = arg;
    p->result = p->fn(p->i);
    return NULL;
}

long run_parallel(int n, long (*fn)(long i))
{
    pthread_t *th = calloc((size_t)n, sizeof *th);
    struct par *ps = calloc((size_t)n, sizeof *ps);
    long total = 0;

    for (int i = 0; i < n; i++) {
        ps[i].fn = fn;
        ps[i].i = i;
        if (pthread_create(&th[i], NULL, par_main, &ps[i])) DIE("pthread_create");
    }
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += ps[i].result;
    }
    free(th);
    free(ps);
    return total;
}

void cert_make(const char *path, const char *cert_path)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    FILE *f;

    if (!key || !x) DIE("cannot make a key");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
    X509_set_pubkey(x, key);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!X509_sign(x, key, EVP_sha256())) DIE("cannot sign the certificate");
    f = fopen(path, "wb");
    if (!f) DIE("%s: %s", path, strerror(errno));
    PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    PEM_write_X509(f, x);
    fclose(f);
    if (cert_path) {
        f = fopen(cert_path, "wb");
        PEM_write_X509(f, x);
        fclose(f);
    }
    X509_free(x);
    EVP_PKEY_free(key);
}

static char **env_with(char *const extra[])
{
    size_t n = 0, m = 0, k = 0;
    char **env;

    while (environ[n])
        n++;
    while (extra && extra[m])
        m++;
    env = calloc(n + m + 1, sizeof *env);
    for (size_t i = 0; i < m; i++)
        env[k++] = extra[i];
    for (size_t i = 0; i < n; i++) {
        /* extra entries override inherited ones */
        const char *eq = strchr(environ[i], '=');
        size_t kl = eq ? (size_t)(eq - environ[i]) + 1 : strlen(environ[i]);
        int dup = 0;
        for (size_t j = 0; j < m; j++)
            dup |= strncmp(extra[j], environ[i], kl) == 0;
        if (!dup) env[k++] = environ[i];
    }
    return env;
}

static void log_append(struct wh_proc *p, const char *buf, size_t n)
{
    pthread_mutex_lock(p->mu);
    if (p->log_len + n + 1 > p->log_cap) {
        /* doubling: a chatty server must never wait for the harness to copy its log */
        p->log_cap = (p->log_len + n + 1) * 2;
        p->log = realloc(p->log, p->log_cap);
    }
    memcpy(p->log + p->log_len, buf, n);
    p->log_len += n;
    p->log[p->log_len] = '\0';
    pthread_cond_broadcast(p->cv);
    pthread_mutex_unlock(p->mu);
}

static void *reader_main(void *arg)
{
    struct wh_proc *p = arg;
    char buf[8192];
    ssize_t n;

    while ((n = read(p->err_fd, buf, sizeof buf)) > 0)
        log_append(p, buf, (size_t)n);
    return NULL;
}

/* "scheme://host:PORT/path" -> PORT (host may be [v6]) */
static int parse_url_port(const char *url)
{
    const char *c = strrchr(url, ':');
    return c ? atoi(c + 1) : 0;
}

static void proc_cleanup(struct wh_proc *p);

int proc_start(struct wh_proc *p, const char *manifest, char *const env_extra[], int listeners)
{
    return proc_start_on(p, manifest, env_extra, listeners, -1);
}

int proc_start_on(struct wh_proc *p, const char *manifest, char *const env_extra[], int listeners,
                  int listen_fd)
{
    int fds[2];
    char **env;
    /* socket activation: the variables, LISTEN_PID filled in by the child (no allocation
     * after fork: the tests have threads) */
    static __thread char pid_var[32];
    char *act[68];
    size_t na = 0;
    long long deadline = now_ms() + 20000;
    int seen = 0;
    size_t scanned = 0;
    pthread_t th;

    memset(p, 0, sizeof *p);
    p->mu = malloc(sizeof(pthread_mutex_t));
    pthread_mutex_init(p->mu, NULL);
    p->cv = malloc(sizeof(pthread_cond_t));
    {
        pthread_condattr_t ca; /* waits on it take monotonic deadlines (no wall-clock steps) */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(p->cv, &ca);
        pthread_condattr_destroy(&ca);
    }
    if (pipe2(fds, O_CLOEXEC)) DIE("pipe");
    if (listen_fd >= 0) {
        act[na++] = "LISTEN_FDS=1";
        act[na++] = pid_var;
    }
    for (size_t i = 0; env_extra && env_extra[i] && na < 67; i++)
        act[na++] = env_extra[i];
    act[na] = NULL;
    env = env_with(act);
    {
        pid_t parent = getpid();
        p->pid = fork();
        /* a server outlives no test: when the test process ends (a failed assertion
         * skips its proc_stop), the kernel kills the server, which would otherwise hold
         * ctest's output pipe until the suite's timeout */
        if (p->pid == 0 && (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)) _exit(127);
    }
    if (p->pid == 0) {
        char *argv[] = {(char *)WAPPHOOK_BIN, "serve", "-c", (char *)manifest,
                        "--log-level",        "debug", NULL};
        dup2(fds[1], STDERR_FILENO);
        if (listen_fd >= 0) {
            snprintf(pid_var, sizeof pid_var, "LISTEN_PID=%d", (int)getpid());
            if (listen_fd == 3)
                fcntl(3, F_SETFD, 0);
            else
                dup2(listen_fd, 3); /* SD_LISTEN_FDS_START, without close-on-exec */
        }
        execve(WAPPHOOK_BIN, argv, env);
        _exit(127);
    }
    free(env);
    close(fds[1]);
    p->err_fd = fds[0];
    /* Read the log until the server says where it listens, or exits. */
    while (seen < listeners && now_ms() < deadline) {
        struct pollfd pfd = {.fd = p->err_fd, .events = POLLIN};
        char buf[4096];
        ssize_t n;

        if (poll(&pfd, 1, 200) <= 0) continue;
        n = read(p->err_fd, buf, sizeof buf);
        if (n <= 0) break;
        log_append(p, buf, (size_t)n);
        for (char *nl; (nl = memchr(p->log + scanned, '\n', p->log_len - scanned));
             scanned = (size_t)(nl - p->log) + 1) {
            char *line = p->log + scanned;
            char *u;
            *nl = '\0';
            if (strstr(line, "\"msg\":\"admin listening\"") && (u = strstr(line, "\"url\":\""))) {
                sscanf(u + 7, "%255[^\"]", p->admin);
                seen++;
            } else if (strstr(line, "\"msg\":\"listening\"") && (u = strstr(line, "\"url\":\""))) {
                char url[256];
                sscanf(u + 7, "%255[^\"]", url);
                if (strncmp(url, "https", 5) == 0) {
                    snprintf(p->https, sizeof p->https, "%s", url);
                    p->https_port = parse_url_port(url);
                } else {
                    snprintf(p->http, sizeof p->http, "%s", url);
                    p->http_port = parse_url_port(url);
                }
                seen++;
            }
            *nl = '\n';
        }
    }
    if (seen < listeners) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->exit_status, 0);
        fprintf(stderr, "harness: server did not start; its log:\n%s\n", p->log ? p->log : "");
        proc_cleanup(p); /* nothing left: proc_running says no, proc_stop fails */
        return -1;
    }
    if (pthread_create(&th, NULL, reader_main, p)) DIE("pthread_create");
    p->reader = (unsigned long)th;
    p->reader_running = true;
    return 0;
}

static void proc_cleanup(struct wh_proc *p)
{
    if (p->reader_running) {
        pthread_join((pthread_t)p->reader, NULL);
        p->reader_running = false;
    }
    close(p->err_fd);
    free(p->log);
    p->log = NULL;
    p->log_len = p->log_cap = 0;
    pthread_mutex_destroy(p->mu);
    free(p->mu);
    p->mu = NULL;
    pthread_cond_destroy(p->cv);
    free(p->cv);
    p->cv = NULL;
    p->pid = 0; /* reaped: never signal that number again */
}

/* Waits for the child's exit: its status, -1 if a signal ended it, -2 if still running. */
static int wait_exit(struct wh_proc *p, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    int st = 0;
    pid_t r = 0;

    while (now_ms() < deadline && (r = waitpid(p->pid, &st, WNOHANG)) == 0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL); /* polling a child's exit: there is no fd to wait on */
    }
    if (r == 0) return -2;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int proc_running(const struct wh_proc *p)
{
    siginfo_t si = {0};

    if (!p->mu || p->pid <= 0) return 0;
    /* exited but not reaped yet counts as not running; WNOWAIT leaves the status to reap */
    return waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

int proc_stop(struct wh_proc *p)
{
    int st;

    if (!p->mu || p->pid <= 0) { /* stopped already (a case that failed half-way) */
        fprintf(stderr, "harness: proc_stop on a server that is not running\n");
        return -1;
    }
    kill(p->pid, SIGTERM);
    st = wait_exit(p, 30000);
    if (st == -2) { /* it would not stop */
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        st = -1;
    }
    if (p->reader_running) { /* the whole log, exit reports included */
        pthread_join((pthread_t)p->reader, NULL);
        p->reader_running = false;
    }
    if (st != 0)
        fprintf(stderr, "harness: server exited with %d; log:\n%s\n", st, p->log ? p->log : "");
    p->exit_status = st;
    proc_cleanup(p);
    return st;
}

void proc_kill9(struct wh_proc *p)
{
    if (!p->mu || p->pid <= 0) return;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    proc_cleanup(p);
}

int proc_wait_exit(struct wh_proc *p, int timeout_ms)
{
    int st;

    if (!p->mu || p->pid <= 0) return -1;
    st = wait_exit(p, timeout_ms);

    if (st != -2) proc_cleanup(p);
    return st;
}

char *proc_log(struct wh_proc *p)
{
    char *copy;

    if (!p->mu) return strdup("");
    pthread_mutex_lock(p->mu);
    copy = strdup(p->log ? p->log : "");
    pthread_mutex_unlock(p->mu);
    return copy;
}

/* The first line of log containing a and b (b may be NULL), copied into out if given. */
static int log_has_line(const char *log, const char *a, const char *b, char *out, size_t cap)
{
    for (const char *line = log; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        const char *x = memmem(line, len, a, strlen(a));
        if (x && (!b || memmem(line, len, b, strlen(b)))) {
            if (out && cap) {
                size_t n = len < cap - 1 ? len : cap - 1;
                memcpy(out, line, n);
                out[n] = '\0';
            }
            return 1;
        }
        line = eol ? eol + 1 : NULL;
    }
    return 0;
}

size_t proc_log_mark(struct wh_proc *p)
{
    size_t n;

    if (!p->mu) return 0;
    pthread_mutex_lock(p->mu);
    n = p->log_len;
    pthread_mutex_unlock(p->mu);
    return n;
}

int proc_wait_log_since(struct wh_proc *p, size_t mark, const char *a, const char *b,
                        int timeout_ms)
{
    return proc_wait_line_since(p, mark, a, b, timeout_ms, NULL, 0);
}

int proc_wait_line_since(struct wh_proc *p, size_t mark, const char *a, const char *b,
                         int timeout_ms, char *out, size_t cap)
{
    struct timespec until;
    size_t from = mark; /* each wake-up scans only complete lines not seen yet */
    int found = 0, timed_out = 0;

    if (!p->mu) /* not running: nothing will be logged */
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(p->mu);
    for (;;) {
        const char *last_nl =
            p->log_len > from ? memrchr(p->log + from, '\n', p->log_len - from) : NULL;

        if (last_nl) {
            size_t end = (size_t)(last_nl - p->log) + 1;
            char saved = p->log[end];

            p->log[end] = '\0';
            found = log_has_line(p->log + from, a, b, out, cap);
            p->log[end] = saved;
            from = end;
        }
        if (found || timed_out) break;
        timed_out = pthread_cond_timedwait(p->cv, p->mu, &until) != 0;
    }
    pthread_mutex_unlock(p->mu);
    return found;
}

int proc_wait_log(struct wh_proc *p, const char *a, const char *b, int timeout_ms)
{
    return proc_wait_log_since(p, 0, a, b, timeout_ms);
}

int run_cli(char *const argv[], char *const env_extra[], const char *stdin_data, char *out,
            size_t out_len)
{
    int in[2], outp[2], st;
    size_t got = 0;
    char **env = env_with(env_extra);
    pid_t pid;

    if (pipe(in) || pipe(outp)) DIE("pipe");
    pid = fork();
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(outp[1], STDOUT_FILENO);
        dup2(outp[1], STDERR_FILENO);
        close(in[1]);
        close(outp[0]);
        execve(argv[0], argv, env);
        _exit(127);
    }
    free(env);
    close(in[0]);
    close(outp[1]);
    if (stdin_data) (void)!write(in[1], stdin_data, strlen(stdin_data));
    close(in[1]);
    for (ssize_t n; got + 1 < out_len && (n = read(outp[0], out + got, out_len - 1 - got)) > 0;)
        got += (size_t)n;
    out[got] = '\0';
    close(outp[0]);
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void sign(const char *key, const void *body, size_t len, char out[80])
{
    char hex[2 * WH_MAC_LEN + 1];

    if (signature_hmac_hex(key, strlen(key), body, len, hex)) DIE("hmac");
    snprintf(out, 80, "sha256=%s", hex);
}

static size_t on_body(char *ptr, size_t size, size_t n, void *arg)
{
    struct resp *r = arg;
    size_t len = size * n;
    size_t room = sizeof r->body - 1 - r->body_len;

    if (len > room) len = room;
    memcpy(r->body + r->body_len, ptr, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return size * n;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *arg)
{
    struct resp *r = arg;
    size_t have = strlen(r->headers);
    size_t len = size * n;

    if (len > sizeof r->headers - 1 - have) len = sizeof r->headers - 1 - have;
    memcpy(r->headers + have, ptr, len);
    r->headers[have + len] = '\0';
    return size * n;
}

static __thread const char *source_address;

void http_source(const char *addr)
{
    source_address = addr;
}

long http_request(const char *method, const char *url, const char *const headers[],
                  const void *body, long body_len, const char *ca, struct resp *r)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hl = NULL;

    memset(r, 0, sizeof *r);
    if (source_address) curl_easy_setopt(c, CURLOPT_INTERFACE, source_address);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (ca) {
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    }
    hl = curl_slist_append(hl, "Expect:");
    for (int i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body_len);
    }
    r->curl_code = curl_easy_perform(c);
    if (r->curl_code == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return r->status;
}

long post_signed(const char *url, const char *event, const char *body, const char *ca,
                 struct resp *r)
{
    char sig[80], sig_h[120], ev_h[200];
    const char *h[4];

    sign(TEST_SECRET, body, strlen(body), sig);
    snprintf(sig_h, sizeof sig_h, "X-Wappcloud-Signature: %s", sig);
    snprintf(ev_h, sizeof ev_h, "X-Wappcloud-Event: %s", event);
    h[0] = sig_h;
    h[1] = ev_h;
    h[2] = "Content-Type: application/json";
    h[3] = NULL;
    return http_request("POST", url, h, body, (long)strlen(body), ca, r);
}

int raw_connect(int port)
{
    return raw_connect_from(NULL, port);
}

int raw_connect_from(const char *src, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;

    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &b.sin_addr);
        if (bind(fd, (struct sockaddr *)&b, sizeof b)) DIE("bind to %s: %s", src, strerror(errno));
    }
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a))
        DIE("connect to %d: %s", port, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Reads until EOF, the timeout, or (if needle) until needle has arrived. */
static size_t read_loop(int fd, char *out, size_t cap, int timeout_ms, const char *needle,
                        bool *closed)
{
    size_t got = 0;
    long long deadline = now_ms() + timeout_ms;

    *closed = false;
    out[0] = '\0';
    while (got + 1 < cap && !(needle && strstr(out, needle))) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        ssize_t n;

        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) break;
        n = recv(fd, out + got, cap - 1 - got, 0);
        if (n <= 0) {
            *closed = true;
            break;
        }
        got += (size_t)n;
        out[got] = '\0';
    }
    return got;
}

size_t raw_read(int fd, char *out, size_t cap, int timeout_ms, bool *closed)
{
    return read_loop(fd, out, cap, timeout_ms, NULL, closed);
}

size_t raw_read_until(int fd, char *out, size_t cap, int timeout_ms, const char *needle)
{
    bool closed;

    return read_loop(fd, out, cap, timeout_ms, needle, &closed);
}

size_t raw_exchange(int port, const void *data, size_t len, char *out, size_t out_cap,
                    int timeout_ms, bool *closed)
{
    int fd = raw_connect(port);
    size_t got;

    if (send(fd, data, len, MSG_NOSIGNAL) != (ssize_t)len) DIE("send: %s", strerror(errno));
    got = raw_read(fd, out, out_cap, timeout_ms, closed);
    close(fd);
    return got;
}

int raw_status(const char *reply)
{
    int status = 0;

    if (sscanf(reply, "HTTP/1.%*d %d", &status) != 1) return 0;
    return status;
}

/* --- the upstream server ---------------------------------------------------------------------- */

static int up_fd = -1, up_port, up_conns;
static pthread_mutex_t up_mu = PTHREAD_MUTEX_INITIALIZER;
static char up_last[65536];

static void *upstream_conn(void *arg)
{
    int c = (int)(intptr_t)arg;
    char req[65536];
    size_t got = 0;

    for (;;) {
        char *head_end = NULL, *path, resp[4096];
        size_t used;
        int keep;

        /* one request: its head, then Content-Length bytes */
        for (;;) {
            ssize_t n;
            req[got] = '\0';
            if ((head_end = strstr(req, "\r\n\r\n"))) {
                const char *cl = strcasestr(req, "content-length:");
                size_t want = cl && cl < head_end ? (size_t)atol(cl + 15) : 0;
                if (got >= (size_t)(head_end + 4 - req) + want) {
                    used = (size_t)(head_end + 4 - req) + want;
                    break;
                }
            }
            if (got >= sizeof req - 1 || (n = read(c, req + got, sizeof req - 1 - got)) <= 0) {
                close(c);
                return NULL;
            }
            got += (size_t)n;
        }
        pthread_mutex_lock(&up_mu);
        snprintf(up_last, sizeof up_last, "%.*s", (int)used, req);
        pthread_mutex_unlock(&up_mu);
        keep = !strcasestr(req, "\r\nconnection: close");
        path = strchr(req, ' ');
        if (path && strncmp(path + 1, "/slow", 5) == 0) {
            struct timespec ts = {2, 0};
            nanosleep(&ts, NULL); /* answers nothing: the client's deadline ends it */
            keep = 0;
        } else if (path && strncmp(path + 1, "/big", 4) == 0) {
            static char chunk[4096];
            const char *h = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                            "Connection: close\r\n\r\n";
            memset(chunk, 'z', sizeof chunk);
            if (write(c, h, strlen(h)) > 0)
                for (int i = 0; i < 512; i++) {
                    char sz[16];
                    int n = snprintf(sz, sizeof sz, "%zx\r\n", sizeof chunk);
                    if (write(c, sz, (size_t)n) < 0 || write(c, chunk, sizeof chunk) < 0 ||
                        write(c, "\r\n", 2) < 0)
                        break;
                }
            keep = 0;
        } else if (path && strncmp(path + 1, "/redirect", 9) == 0) {
            const char *r = "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\n"
                            "Content-Length: 0\r\nConnection: close\r\n\r\n";
            (void)!write(c, r, strlen(r));
            keep = 0;
        } else if (path && strncmp(path + 1, "/fail", 5) == 0) {
            const char *r = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope";
            (void)!write(c, r, strlen(r));
        } else { /* echo: the method, the X-In header and the body */
            char method[16] = "", in[64] = "";
            char *xin = strcasestr(req, "\r\nx-in: ");
            int n, bl = (int)(used - (size_t)(head_end + 4 - req));
            sscanf(req, "%15s", method);
            if (xin && xin < head_end) sscanf(xin + 8, "%63[^\r]", in);
            n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 201 Created\r\nX-Out: yes\r\nX-Out: twice\r\n"
                         "Content-Length: %d\r\n%s\r\n%s %s %.*s",
                         (int)(strlen(method) + 1 + strlen(in) + 1) + bl,
                         keep ? "" : "Connection: close\r\n", method, in, bl, head_end + 4);
            (void)!write(c, resp, (size_t)n);
        }
        if (!keep) {
            close(c);
            return NULL;
        }
        memmove(req, req + used, got - used); /* a pipelined next request, if any */
        got -= used;
    }
}

static void *upstream_accept(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_t t;
        int c = accept(up_fd, NULL, NULL);
        if (c < 0) return NULL;
        __atomic_add_fetch(&up_conns, 1, __ATOMIC_RELAXED);
        pthread_create(&t, NULL, upstream_conn, (void *)(intptr_t)c);
        pthread_detach(t);
    }
}

int upstream_start(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    pthread_t t;

    if (up_fd >= 0) return up_port;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    up_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (up_fd < 0 || bind(up_fd, (struct sockaddr *)&a, sizeof a) || listen(up_fd, 128))
        DIE("upstream");
    getsockname(up_fd, (struct sockaddr *)&a, &len);
    up_port = ntohs(a.sin_port);
    pthread_create(&t, NULL, upstream_accept, NULL);
    pthread_detach(t);
    return up_port;
}

int upstream_connections(void)
{
    return __atomic_load_n(&up_conns, __ATOMIC_RELAXED);
}

void upstream_last_request(char *out, size_t cap)
{
    pthread_mutex_lock(&up_mu);
    snprintf(out, cap, "%s", up_last);
    pthread_mutex_unlock(&up_mu);
}

long proc_rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

int wait_count(const long *counter, long target, int timeout_ms)
{
    long long t0 = now_ms();
    while (__atomic_load_n(counter, __ATOMIC_RELAXED) < target && now_ms() - t0 < timeout_ms) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL); /* between two looks at the counter */
    }
    return __atomic_load_n(counter, __ATOMIC_RELAXED) >= target;
}
