/*
 * fluxus-parallel-bench: per-item parallelism of a stage with several workers (issue 13).
 *
 *   fluxus-parallel-bench [--runs N] [--quick] [--only CASE]
 *
 * A pull source of n items feeds a map with W workers and a sink. Each map call either sleeps
 * (an I/O-like call: W of them overlap on any number of cores) or spins on its thread's CPU
 * clock (CPU work: at most as many overlap as there are cores). Cases:
 *
 *   few-slow   10 items x 50 ms sleep, W = 1, 2, 4 (threaded): the case. The ideal is
 *              ceil(10 / W) x 50 ms.
 *   many-sleep 1000 items x 1 ms sleep, W = 1 and 4, threaded and host-driven (4 host threads
 *              in fluxus_runtime_run_for()): ideal speed-up W.
 *   many-cpu   1000 items x 1 ms of CPU, W = 1, 2 and 4, threaded and host-driven: ideal
 *              speed-up min(W, cores).
 *
 * Each figure is the median of --runs runs (5 by default). Speed-up is t(W = 1) / t(W) of the
 * same case and mode; "of ideal" divides it by the ideal speed-up. Every run checks that each
 * item reached the sink once; nothing asserts a time. --quick: one run of smaller cases (the
 * smoke test).
 */
#define _POSIX_C_SOURCE 200809L
#include <fluxus.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CK(call)                                                                              \
    do {                                                                                      \
        int32_t rc_ = (call);                                                                 \
        if (rc_ != FLUXUS_OK) {                                                               \
            fprintf(stderr, "%s:%d: %s failed: %d (%s)\n", __FILE__, __LINE__, #call, rc_,   \
                    fluxus_last_error_message());                                             \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static uint64_t now_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct job {
    uint64_t n;
    uint64_t next;    /* source (one thread at a time: self=no) */
    uint32_t item_us;
    int cpu;          /* 1: spin on the thread's CPU clock; 0: sleep */
    uint64_t sum;     /* sink (one worker) */
    uint64_t count;
} job;

static int32_t pull(void *user, uint64_t *item) {
    job *j = (job *)user;
    if (j->next >= j->n) return FLUXUS_PULL_END;
    *item = j->next++;
    return FLUXUS_PULL_ITEM;
}

static int32_t work(void *user, uint64_t in, uint64_t *out) {
    job *j = (job *)user;
    if (j->cpu) {
        uint64_t end = now_ns(CLOCK_THREAD_CPUTIME_ID) + (uint64_t)j->item_us * 1000u;
        while (now_ns(CLOCK_THREAD_CPUTIME_ID) < end) {
        }
    } else {
        struct timespec ts = {0, (long)j->item_us * 1000L};
        nanosleep(&ts, NULL);
    }
    *out = in;
    return 0;
}

static int32_t sink(void *user, uint64_t item) {
    job *j = (job *)user;
    j->sum += item;
    j->count++;
    return 0;
}

typedef struct host_thread {
    fluxus_runtime *rt;
    volatile int *stop;
} host_thread;

static void *host_main(void *arg) {
    host_thread *h = (host_thread *)arg;
    while (!__atomic_load_n(h->stop, __ATOMIC_ACQUIRE)) {
        if (fluxus_runtime_run_for(h->rt, 5) != FLUXUS_OK) {
            fprintf(stderr, "fluxus_runtime_run_for failed\n");
            exit(1);
        }
    }
    return NULL;
}

/* One run: milliseconds from fluxus_pipeline_start() until every item reached the sink. */
static double run_once(uint64_t n, uint32_t item_us, int cpu, uint32_t workers, int host) {
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    uint32_t m, i;
    job j;
    pthread_t th[8];
    host_thread h[8];
    volatile int stop = 0;
    uint64_t t0, t1;

    memset(&j, 0, sizeof j);
    j.n = n;
    j.item_us = item_us;
    j.cpu = cpu;
    CK(fluxus_runtime_new(&rt));
    CK(fluxus_runtime_set_workers(rt, host ? 0 : workers));
    if (host) {
        CK(fluxus_runtime_start(rt));
        for (i = 0; i < workers; i++) {
            h[i].rt = rt;
            h[i].stop = &stop;
            if (pthread_create(&th[i], NULL, host_main, &h[i]) != 0) exit(1);
        }
    }
    CK(fluxus_pipeline_new(&p, rt, "parallel"));
    CK(fluxus_pipeline_set_pull_source(p, "src", pull, &j, NULL));
    CK(fluxus_pipeline_add_map(&m, p, "work", work, &j, NULL));
    CK(fluxus_stage_set_workers(p, m, workers));
    CK(fluxus_stage_set_order(p, m, FLUXUS_ORDER_UNORDERED));
    CK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, &j, NULL));
    t0 = now_ns(CLOCK_MONOTONIC);
    CK(fluxus_pipeline_start(p));
    if (host) {
        int32_t st = 0;
        for (;;) {
            CK(fluxus_pipeline_get_state(&st, p));
            if (st == FLUXUS_STATE_FINISHED) break;
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
        t1 = now_ns(CLOCK_MONOTONIC);
        __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
        for (i = 0; i < workers; i++) pthread_join(th[i], NULL);
        CK(fluxus_pipeline_wait(p, 0));
    } else {
        CK(fluxus_pipeline_wait(p, 600000));
        t1 = now_ns(CLOCK_MONOTONIC);
    }
    if (j.count != n || j.sum != n * (n - 1) / 2) {
        fprintf(stderr, "wrong result: %llu items (want %llu), sum %llu\n",
                (unsigned long long)j.count, (unsigned long long)n, (unsigned long long)j.sum);
        exit(1);
    }
    CK(fluxus_pipeline_free(p));
    CK(fluxus_runtime_free(rt));
    return (double)(t1 - t0) / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_ms(int runs, uint64_t n, uint32_t item_us, int cpu, uint32_t workers,
                        int host) {
    double t[64];
    int r;
    if (runs > 64) runs = 64;
    for (r = 0; r < runs; r++) t[r] = run_once(n, item_us, cpu, workers, host);
    qsort(t, (size_t)runs, sizeof t[0], cmp_double);
    return runs % 2 ? t[runs / 2] : (t[runs / 2 - 1] + t[runs / 2]) / 2;
}

static long cores;
static const char *only; /* --only: run this case (few-slow, many-sleep, many-cpu) only */

static int selected(const char *name) { return !only || !strcmp(only, name); }

/* A case at W = 1 and the given worker counts; ideal speed-up W (sleep) or min(W, cores). */
static void run_case(const char *name, int runs, uint64_t n, uint32_t item_us, int cpu,
                     const uint32_t *ws, int nw, int host) {
    double t1 = median_ms(runs, n, item_us, cpu, 1, host);
    int k;
    printf("case=%s mode=%s items=%llu item_us=%u workers=1 ms=%.1f serial_ms=%.1f\n", name,
           host ? "host-driven" : "threaded", (unsigned long long)n, item_us, t1,
           (double)n * item_us / 1000.0);
    for (k = 0; k < nw; k++) {
        uint32_t w = ws[k];
        double tw = median_ms(runs, n, item_us, cpu, w, host);
        double ideal = cpu ? (double)(w < (uint32_t)cores ? w : (uint32_t)cores) : (double)w;
        double speedup = t1 / tw;
        printf("case=%s mode=%s items=%llu item_us=%u workers=%u ms=%.1f speedup=%.2f "
               "ideal=%.0f of_ideal=%.2f\n",
               name, host ? "host-driven" : "threaded", (unsigned long long)n, item_us, w, tw,
               speedup, ideal, speedup / ideal);
    }
}

int main(int argc, char **argv) {
    int runs = 5, quick = 0, i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--runs N] [--quick] [--only CASE]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    if (quick) runs = 1;
    printf("fluxus %s parallel-bench: %ld cores, median of %d run(s)\n", fluxus_version(),
           cores, runs);

    /* The case: 10 items x 50 ms on a stage with W workers. */
    for (i = 0; i < 3 && selected("few-slow"); i++) {
        static const uint32_t ws[3] = {1, 2, 4};
        uint32_t w = ws[i];
        uint64_t n = 10, ms = quick ? 5 : 50;
        double t = median_ms(runs, n, (uint32_t)ms * 1000u, 0, w, 0);
        double ideal = (double)((n + w - 1) / w * ms);
        printf("case=few-slow mode=threaded items=%llu item_us=%llu workers=%u ms=%.1f "
               "ideal_ms=%.0f\n",
               (unsigned long long)n, (unsigned long long)ms * 1000u, w, t, ideal);
    }
    {
        static const uint32_t w4[1] = {4};
        static const uint32_t w24[2] = {2, 4};
        uint64_t n = quick ? 100 : 1000;
        if (selected("many-sleep")) {
            run_case("many-sleep", runs, n, 1000, 0, w4, 1, 0);
            run_case("many-sleep", runs, n, 1000, 0, w4, 1, 1);
        }
        if (selected("many-cpu")) {
            run_case("many-cpu", runs, n, 1000, 1, w24, 2, 0);
            run_case("many-cpu", runs, n, 1000, 1, w24, 2, 1);
        }
    }
    return 0;
}
