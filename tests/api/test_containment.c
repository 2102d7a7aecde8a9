/*
 * test_containment.c — a callback that blocks must not stop the other pipelines of its
 * runtime: the stall watchdog starts a stand-in worker.
 */
#include <pthread.h>

#include "test_util.h"

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
    int entered;
} gate;

/* Blocks until the gate opens (at most 20 s, so a broken watchdog fails instead of hanging). */
static int32_t blocking_map(void *user, uint64_t in, uint64_t *out) {
    gate *g = (gate *)user;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->open) {
        if (pthread_cond_timedwait(&g->cv, &g->mu, &until) != 0) break;
    }
    pthread_mutex_unlock(&g->mu);
    *out = in;
    return 0;
}

static int32_t count_sink(void *user, uint64_t item) {
    (void)item;
    __atomic_add_fetch((uint64_t *)user, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void open_gate(gate *g) {
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void wait_entered(gate *g) {
    pthread_mutex_lock(&g->mu);
    while (!g->entered) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static fluxus_pipeline *counting_pipeline(fluxus_runtime *rt, const char *name, uint64_t n,
                                          tu_range_source *src, uint64_t *count) {
    fluxus_pipeline *p = NULL;
    src->next = 0;
    src->end = n;
    TU_OK(fluxus_pipeline_new(&p, rt, name));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "count", count_sink, count, NULL));
    return p;
}

/* One worker; pipeline A's only callback blocks until pipeline B has finished. Without a
 * stand-in worker B could never run. */
static void test_blocked_callback_does_not_stop_other_pipelines(void **state) {
    fluxus_runtime *rt = NULL;
    gate g;
    tu_range_source sa = {0, 0, 0}, sb = {0, 0, 0};
    uint64_t ca = 0, cb = 0;
    fluxus_pipeline *a, *b;
    (void)state;
    memset(&g, 0, sizeof g);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);

    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 1));
    TU_OK(fluxus_runtime_set_stall_threshold_ms(rt, 50));
    TU_OK(fluxus_pipeline_new(&a, rt, "blocked"));
    sa.next = 0;
    sa.end = 3;
    TU_OK(fluxus_pipeline_set_pull_source(a, "src", tu_range_pull, &sa, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, a, "blocks", blocking_map, &g, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, a, "count", count_sink, &ca, NULL));
    TU_OK(fluxus_pipeline_start(a));
    wait_entered(&g);

    b = counting_pipeline(rt, "free", 10000, &sb, &cb);
    TU_OK(fluxus_pipeline_start(b));
    /* Pipeline B must finish while A's callback still blocks the only configured worker. */
    TU_OK(fluxus_pipeline_wait(b, 10000));
    assert_int_equal(__atomic_load_n(&cb, __ATOMIC_SEQ_CST), 10000);
    assert_int_equal(__atomic_load_n(&ca, __ATOMIC_SEQ_CST), 0);

    open_gate(&g);
    TU_OK(fluxus_pipeline_wait(a, 10000));
    assert_int_equal(__atomic_load_n(&ca, __ATOMIC_SEQ_CST), 3);
    TU_OK(fluxus_pipeline_free(a));
    TU_OK(fluxus_pipeline_free(b));
    TU_OK(fluxus_runtime_free(rt));
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
}

/* With the watchdog off, the option is honoured (B cannot run while A blocks the only
 * worker); the gate opens after a while and both finish. */
static void test_watchdog_off_means_no_stand_in(void **state) {
    fluxus_runtime *rt = NULL;
    gate g;
    tu_range_source sa = {0, 3, 0}, sb = {0, 0, 0};
    uint64_t ca = 0, cb = 0;
    fluxus_pipeline *a, *b;
    (void)state;
    memset(&g, 0, sizeof g);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);

    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 1));
    TU_OK(fluxus_runtime_set_stall_threshold_ms(rt, 0));
    TU_OK(fluxus_pipeline_new(&a, rt, "blocked"));
    TU_OK(fluxus_pipeline_set_pull_source(a, "src", tu_range_pull, &sa, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, a, "blocks", blocking_map, &g, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, a, "count", count_sink, &ca, NULL));
    TU_OK(fluxus_pipeline_start(a));
    wait_entered(&g);
    b = counting_pipeline(rt, "free", 100, &sb, &cb);
    TU_OK(fluxus_pipeline_start(b));
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_wait(b, 300));
    assert_int_equal(__atomic_load_n(&cb, __ATOMIC_SEQ_CST), 0);
    open_gate(&g);
    TU_OK(fluxus_pipeline_wait(b, 10000));
    TU_OK(fluxus_pipeline_wait(a, 10000));
    TU_OK(fluxus_pipeline_free(a));
    TU_OK(fluxus_pipeline_free(b));
    TU_OK(fluxus_runtime_free(rt));
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
}

static void test_stall_threshold_errors(void **state) {
    fluxus_runtime *rt = NULL;
    (void)state;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_stall_threshold_ms(NULL, 100));
    TU_OK(fluxus_runtime_new(&rt));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_stall_threshold_ms(rt, 5));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_stall_threshold_ms(rt, 3600001));
    TU_OK(fluxus_runtime_set_stall_threshold_ms(rt, 10));
    TU_OK(fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_stall_threshold_ms(rt, 100));
    TU_OK(fluxus_runtime_free(rt));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocked_callback_does_not_stop_other_pipelines),
        cmocka_unit_test(test_watchdog_off_means_no_stand_in),
        cmocka_unit_test(test_stall_threshold_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
