/*
 * Runtime test support: a temporary folder, a real certificate, the real wapphook binary
 * started on free loopback ports (readiness = its "listening" log lines, never a sleep),
 * libcurl requests, raw socket exchanges, and the server's log for assertions.
 */
#ifndef WH_HARNESS_H
#define WH_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define TEST_SECRET "It's a Secret to Everybody"
#define TEST_SECRET2 "rotated-secret-2"

struct wh_proc {
    pid_t pid;
    int err_fd;
    char http[256];  /* http://127.0.0.1:PORT/webhook, or "" */
    char https[256]; /* https://127.0.0.1:PORT/webhook, or "" */
    char admin[256]; /* http://127.0.0.1:PORT (no path) when server.admin is set, or "" */
    int http_port, https_port;
    char *log; /* everything the server wrote on stderr so far */
    size_t log_len, log_cap;
    bool reader_running;
    unsigned long reader; /* pthread_t */
    void *mu;             /* pthread_mutex_t */
    void *cv;             /* pthread_cond_t: signalled on every append to log */
    int exit_status;      /* after proc_stop/proc_wait */
};

struct resp {
    long status;
    char body[65536];
    size_t body_len;
    char headers[16384];
    int curl_code;
};

/* A fresh folder under $TMPDIR; path written to out (at least 256 bytes). */
void tmpdir_make(char *out);
void file_write(const char *dir, const char *name, const char *content);
/* "dir/name" in one of 8 rotating static buffers (so a few can be used in one call). */
const char *path_in(const char *dir, const char *name);
/* Runs fn(i) on n threads at once (i = 0..n-1); returns the sum of what they return. */
long run_parallel(int n, long (*fn)(long i));
/* A P-256 key and self-signed certificate for 127.0.0.1/localhost, both in one PEM file at
 * path; the certificate alone at cert_path (for clients to trust), if not NULL. */
void cert_make(const char *path, const char *cert_path);

/* Starts `wapphook serve -c manifest --log-level debug` with env_extra (NULL-terminated
 * "K=V" list, may be NULL) added; waits until it logged `listeners` listening URLs (the
 * admin listener's line counts as one when server.admin is set).
 * Returns 0, or -1 if it exited or failed to start (its log stays in p->log). */
int proc_start(struct wh_proc *p, const char *manifest, char *const env_extra[], int listeners);
/* The same, handing listen_fd (a listening socket the test holds) over as systemd does:
 * descriptor 3, LISTEN_FDS=1, LISTEN_PID the child's. */
int proc_start_on(struct wh_proc *p, const char *manifest, char *const env_extra[], int listeners,
                  int listen_fd);
/* Is it started and not yet exited? Every proc_ function is safe on a server that is not
 * running (a case that failed half-way leaves one so): it fails, it never crashes. */
int proc_running(const struct wh_proc *p);
/* SIGTERM, wait for exit (up to 30 s); returns the exit status (-1 on timeout or signal). */
int proc_stop(struct wh_proc *p);
/* SIGKILL, then reap: a crash, on purpose. */
void proc_kill9(struct wh_proc *p);
/* Waits (up to timeout_ms) for the server to exit on its own; returns its exit status, or
 * -1 if it was killed by a signal, -2 if it is still running. */
int proc_wait_exit(struct wh_proc *p, int timeout_ms);
/* Copy of the log so far (caller frees). */
char *proc_log(struct wh_proc *p);
/* Waits (up to timeout_ms) until one line of the log contains both a and b (b may be
 * NULL). Returns 1 when it does, 0 on timeout. The server may log a line just before it
 * answers, while the harness has not read it yet: this waits for it, it never sleeps. */
int proc_wait_log(struct wh_proc *p, const char *a, const char *b, int timeout_ms);
/* The same, looking only at what the server logs after `mark` (from proc_log_mark()): for
 * waiting on the effect of something just done, in a log of any size. */
size_t proc_log_mark(struct wh_proc *p);
int proc_wait_log_since(struct wh_proc *p, size_t mark, const char *a, const char *b,
                        int timeout_ms);
/* The same, copying the first matching line into line (NUL-terminated, cut to cap). */
int proc_wait_line_since(struct wh_proc *p, size_t mark, const char *a, const char *b,
                         int timeout_ms, char *line, size_t cap);

/* Runs argv[0] (the CLI: WAPPHOOK_BIN) with argv; returns the exit status; stdout and stderr
 * captured into out (NUL-ended). */
int run_cli(char *const argv[], char *const env_extra[], const char *stdin_data, char *out,
            size_t out_len);

/* sha256=<hex> of body under key. */
void sign(const char *key, const void *body, size_t len, char out[80]);

/* One request. headers: NULL-terminated "Name: value" list. ca: certificate to trust (https).
 * Returns the HTTP status, 0 on transport failure (curl code in r->curl_code). */
long http_request(const char *method, const char *url, const char *const headers[],
                  const void *body, long body_len, const char *ca, struct resp *r);
/* Requests from this thread leave from this local address (any of 127.0.0.0/8 on
 * loopback: a second client), or from the default one again with NULL. */
void http_source(const char *addr);
/* A signed POST of body with the given event type, content type application/json. */
long post_signed(const char *url, const char *event, const char *body, const char *ca,
                 struct resp *r);

/* Sends data on a fresh TCP connection to 127.0.0.1:port and reads until EOF or timeout.
 * Returns bytes read; *closed says whether the server closed the connection. */
size_t raw_exchange(int port, const void *data, size_t len, char *out, size_t out_cap,
                    int timeout_ms, bool *closed);
/* Connects; returns the fd (caller closes). */
int raw_connect(int port);
/* The same from a local address such as "127.0.0.2" (NULL: the default). */
int raw_connect_from(const char *src, int port);
/* Reads until EOF or timeout from fd; returns bytes read, *closed as above. */
size_t raw_read(int fd, char *out, size_t cap, int timeout_ms, bool *closed);

/* Reads until `needle` has arrived, EOF or timeout; returns bytes read. */
size_t raw_read_until(int fd, char *out, size_t cap, int timeout_ms, const char *needle);

/* Status code of the first response in a raw HTTP reply, or 0. */
int raw_status(const char *reply);

long long now_ms(void);
/* Resident memory of process pid, in KiB (VmRSS), or -1. */
long proc_rss_kib(pid_t pid);
/* Waits (up to timeout_ms) until another thread has counted *counter up to target (an
 * atomic counter); 1 if it did. */
int wait_count(const long *counter, long target, int timeout_ms);

/* A real upstream HTTP/1.1 server on 127.0.0.1 for outbound-call tests, started once; returns
 * its port. Routes: /slow answers nothing for 2 s; /big a 2 MiB chunked body; /redirect a 302;
 * /fail a 500; anything else 201 with "METHOD X-In-header body" and two X-Out headers. A
 * connection is kept alive unless the client asks otherwise (except /slow, /big, /redirect). */
int upstream_start(void);
/* Connections it accepted so far. */
int upstream_connections(void);
/* The last request it received, head and body (NUL-terminated, cut to cap). */
void upstream_last_request(char *out, size_t cap);

#endif
