/*
 * Forced unwinds: a callback that ends its thread with pthread_exit() (as runtimes such as
 * Python do to their threads at exit) must not abort the process. The item in the callback stays
 * with the host (cancelled, not destroyed), the rest ends as cancelled, the pipeline ends with
 * FLUXUS_ECANCELED, and in threaded mode the runtime replaces the lost worker.
 * glibc behaviour: elsewhere pthread_exit() does not unwind, and this test is skipped.
 */
#include "test_util.h"

#include <pthread.h>
#include <stdlib.h>

#if defined(__linux__) && defined(__GLIBC__)

#define UNWIND_N 300u
#define UNWIND_AT 5u

typedef struct unwind_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
    uint32_t exited; /* pthread_exit was called once */
    uint32_t in_sink; /* 1: the sink ends the thread, 0: the map does */
} unwind_ctx;

static void maybe_exit(unwind_ctx *c, uint64_t item) {
    if (item == UNWIND_AT && __atomic_exchange_n(&c->exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

static int32_t unwind_map(void *user, uint64_t in, uint64_t *out) {
    unwind_ctx *c = (unwind_ctx *)user;
    if (!c->in_sink) {
        maybe_exit(c, in);
    }
    *out = in;
    return 0;
}

static int32_t unwind_sink(void *user, uint64_t item) {
    unwind_ctx *c = (unwind_ctx *)user;
    if (c->in_sink) {
        maybe_exit(c, item);
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void *drive(void *arg) {
    /* Runs the pipeline on this host thread until a callback ends the thread. */
    (void)fluxus_pipeline_wait((fluxus_pipeline *)arg, TU_WAIT_MS);
    return NULL;
}

static void check_outcome(unwind_ctx *c) {
    fluxus_pipeline_stats s;
    tu_stats(c->p, &s);
    assert_int_equal(TU_LOAD(&c->exited), 1);
    /* The item the host held when its thread ended: neither delivered nor destroyed. */
    assert_int_equal(TU_LOAD(&c->t.delivered[UNWIND_AT]), 0);
    assert_int_equal(TU_LOAD(&c->t.freed[UNWIND_AT]), 0);
    assert_true(s.cancelled >= 1);
    assert_int_equal(s.failed, 0);
    tu_check_conservation(c->p, &c->t, 1);
    tu_tracker_check_once(&c->t, 0, UNWIND_AT);
    tu_tracker_check_once(&c->t, UNWIND_AT + 1, s.admitted);
}

static fluxus_pipeline *unwind_pipeline(fluxus_runtime *rt, unwind_ctx *c, tu_range_source *src,
                                        int32_t fusion, uint32_t batch) {
    fluxus_pipeline *p = tu_pipeline(rt, "unwind", &c->t);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_batch_size(p, batch));
    TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "map", unwind_map, c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", unwind_sink, c, NULL));
    return p;
}

/* Host-driven: the host thread running the pipeline is ended inside a callback. */
static void test_pthread_exit_on_host_thread(void **state) {
    static const uint32_t batches[] = {1, 64};
    int32_t fusion;
    uint32_t in_sink;
    size_t b;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        for (in_sink = 0; in_sink <= 1; in_sink++) {
            for (b = 0; b < 2; b++) {
                unwind_ctx c;
                tu_range_source src = {0, UNWIND_N, 0};
                fluxus_runtime *rt = tu_runtime(0);
                pthread_t host;
                memset(&c, 0, sizeof c);
                c.in_sink = in_sink;
                tu_tracker_init(&c.t, UNWIND_N);
                c.p = unwind_pipeline(rt, &c, &src, fusion, batches[b]);
                TU_OK(fluxus_pipeline_start(c.p));
                assert_int_equal(pthread_create(&host, NULL, drive, c.p), 0);
                assert_int_equal(pthread_join(host, NULL), 0);
                /* Another host thread finishes the cancelled pipeline. */
                TU_EXPECT(FLUXUS_ECANCELED, tu_wait(c.p));
                check_outcome(&c);
                tu_free_all(c.p, rt);
                tu_tracker_destroy(&c.t);
            }
        }
    }
}

/* Threaded: a worker thread is ended; the runtime replaces it and keeps running pipelines. */
static void test_pthread_exit_on_worker_thread(void **state) {
    int32_t fusion;
    uint32_t in_sink;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        for (in_sink = 0; in_sink <= 1; in_sink++) {
            unwind_ctx c, after;
            tu_range_source src = {0, UNWIND_N, 0}, src2 = {0, UNWIND_N, 0};
            fluxus_runtime *rt = tu_runtime(1); /* one worker: it must be replaced */
            fluxus_pipeline *p2;
            fluxus_pipeline_stats s;
            memset(&c, 0, sizeof c);
            c.in_sink = in_sink;
            tu_tracker_init(&c.t, UNWIND_N);
            c.p = unwind_pipeline(rt, &c, &src, fusion, 16);
            tu_run_expect(c.p, FLUXUS_ECANCELED);
            check_outcome(&c);
            TU_OK(fluxus_pipeline_free(c.p));

            memset(&after, 0, sizeof after);
            after.exited = 1; /* nobody exits this time */
            tu_tracker_init(&after.t, UNWIND_N);
            p2 = unwind_pipeline(rt, &after, &src2, fusion, 16);
            after.p = p2;
            tu_run_expect(p2, FLUXUS_OK);
            tu_stats(p2, &s);
            assert_int_equal(s.delivered, UNWIND_N);
            tu_free_all(p2, rt);
            tu_tracker_destroy(&c.t);
            tu_tracker_destroy(&after.t);
        }
    }
}

/* A stage with several workers shares its batches (issue 13): a worker whose thread ends in the
 * middle of a shared batch hands its unstarted claim back, and every item still ends once. */
static void test_pthread_exit_in_a_shared_batch(void **state) {
    static const uint32_t workers[] = {2, 4};
    size_t w;
    int32_t ordered;
    (void)state;
    for (w = 0; w < 2; w++) {
        for (ordered = 0; ordered <= 1; ordered++) {
            unwind_ctx c;
            tu_range_source src = {0, UNWIND_N, 0};
            fluxus_runtime *rt = tu_runtime(workers[w] + 1);
            uint32_t m;
            memset(&c, 0, sizeof c);
            tu_tracker_init(&c.t, UNWIND_N);
            c.p = tu_pipeline(rt, "unwind-shared", &c.t);
            TU_OK(fluxus_pipeline_set_pull_source(c.p, "in", tu_range_pull, &src, NULL));
            TU_OK(fluxus_pipeline_add_map(&m, c.p, "map", unwind_map, &c, NULL));
            TU_OK(fluxus_stage_set_workers(c.p, m, workers[w]));
            TU_OK(fluxus_stage_set_order(c.p, m,
                                         ordered ? FLUXUS_ORDER_ORDERED : FLUXUS_ORDER_UNORDERED));
            TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "sink", unwind_sink, &c, NULL));
            tu_run_expect(c.p, FLUXUS_ECANCELED);
            check_outcome(&c);
            tu_free_all(c.p, rt);
            tu_tracker_destroy(&c.t);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pthread_exit_on_host_thread),
        cmocka_unit_test(test_pthread_exit_on_worker_thread),
        cmocka_unit_test(test_pthread_exit_in_a_shared_batch),
    };
    return TU_RUN_GROUP(tests);
}

#else
int main(void) {
    return 77; /* pthread_exit() does not unwind here */
}
#endif
