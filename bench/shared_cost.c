/* The cost of wapphook.shared's atomic incr in C, from 16 threads at once: all on one key
 * (one stripe's lock, the worst case) and each thread on its own keys (spread over the
 * stripes). Prints ns per incr and increments per second. Usage: bench_shared [PER_THREAD] */
#include "base/shared_dict.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define THREADS 16

static struct shared_dict *d;
static long per_thread;
static int same_key;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
    char key[32];
    long long r;
    int n = snprintf(key, sizeof key, "k%ld", (long)(intptr_t)arg);

    for (long i = 0; i < per_thread; i++) {
        if (same_key)
            shared_dict_incr(d, "hot", 3, 1, 1, 0, 0, &r);
        else
            shared_dict_incr(d, key, (size_t)n, 1, 1, 0, 0, &r);
    }
    return NULL;
}

static void run(int same)
{
    pthread_t t[THREADS];
    double t0 = now_s(), took;

    same_key = same;
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    took = now_s() - t0;
    printf("  %-26s %8.0f ns per incr (wall / all), %.1f M incr/s\n",
           same ? "16 threads, one key" : "16 threads, a key each",
           took * 1e9 / ((double)per_thread * THREADS), (double)per_thread * THREADS / took / 1e6);
}

int main(int argc, char **argv)
{
    per_thread = argc > 1 ? atol(argv[1]) : 200000;
    d = shared_dict_open("bench", 8);
    printf("\nwapphook.shared incr (C, %d threads x %ld):\n", THREADS, per_thread);
    run(1);
    run(0);
    shared_dict_release(d);
    return 0;
}
