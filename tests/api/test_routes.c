/*
 * test_routes.c — error routes: a stage's failed items go to another pipeline (a dead-letter
 * pipeline), with backpressure, exact accounting in both pipelines, and safety when the route's
 * pipeline is closed or freed.
 */
#include "test_util.h"

#define N 2000u

/* Fails every item whose value is 3 mod 10. */
static int32_t fails_threes(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in % 10 == 3) return 77;
    *out = in;
    return 0;
}

typedef struct slow_store {
    tu_tracker *t;
    uint32_t sleep_us;
    uint64_t sum;
} slow_store;

static int32_t store(void *user, uint64_t item) {
    slow_store *s = (slow_store *)user;
    if (s->sleep_us) tu_sleep_us(s->sleep_us);
    s->sum += item;
    tu_tracker_deliver(s->t, item);
    return 0;
}

/* The route's pipeline: a push source into a sink with a tiny queue. */
static fluxus_pipeline *route_pipeline(fluxus_runtime *rt, tu_tracker *t, slow_store *s,
                                       uint32_t capacity) {
    fluxus_pipeline *d = tu_pipeline(rt, "dead-letters", t);
    uint32_t sink = 0;
    TU_OK(fluxus_pipeline_set_push_source(d, "routed"));
    TU_OK(fluxus_pipeline_add_sink(&sink, d, "store", store, s, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(d, sink, capacity));
    return d;
}

static void test_failed_items_go_to_the_route_and_both_pipelines_balance(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker tm, td;
    tu_range_source src = {0, N, 0};
    slow_store ds = {&td, 0, 0};
    fluxus_pipeline *d, *p;
    fluxus_pipeline_stats sm, sd;
    fluxus_stage_stats st;
    uint32_t map = 0;
    uint64_t i, expected_sum = 0;
    (void)state;
    tu_tracker_init(&tm, N);
    tu_tracker_init(&td, N);
    d = route_pipeline(rt, &td, &ds, 1024);
    p = tu_pipeline(rt, "main", &tm);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "flaky", fails_threes, NULL, NULL));
    TU_OK(fluxus_stage_set_error_route(p, map, d));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &tm, NULL));
    TU_OK(fluxus_pipeline_start(d));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    TU_OK(fluxus_pipeline_close_input(d));
    TU_OK(tu_wait(d));

    tu_stats(p, &sm);
    tu_stats(d, &sd);
    assert_int_equal(sm.admitted, N);
    assert_int_equal(sm.delivered, N - N / 10);
    assert_int_equal(sm.dead_lettered, N / 10); /* handed to the route */
    assert_int_equal(sm.failed, 0);
    assert_int_equal(sm.balanced, 1);
    tu_stage_stats(p, map, &st);
    assert_int_equal(st.dead_lettered, N / 10);
    assert_int_equal(sd.admitted, N / 10);
    assert_int_equal(sd.delivered, N / 10);
    assert_int_equal(sd.balanced, 1);
    for (i = 3; i < N; i += 10) expected_sum += i;
    assert_int_equal(ds.sum, expected_sum);
    /* Every item was delivered exactly once, by one pipeline or the other, and nobody ran the
     * destructor on a routed item. */
    for (i = 0; i < N; i++) {
        uint32_t total = TU_LOAD(&tm.delivered[i]) + TU_LOAD(&td.delivered[i]) +
                         TU_LOAD(&tm.freed[i]) + TU_LOAD(&td.freed[i]);
        if (total != 1) fail_msg("item %llu ended %u times", (unsigned long long)i, total);
    }
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_free(d));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&tm);
    tu_tracker_destroy(&td);
}

/* A slow route with a 2-item queue: the failing stage holds its routed items and stops taking
 * input, so the main pipeline slows down instead of buffering failures. */
static void test_a_full_route_applies_backpressure(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker tm, td;
    tu_range_source src = {0, 300, 0};
    slow_store ds = {&td, 2000, 0};
    fluxus_pipeline *d, *p;
    fluxus_pipeline_stats sm, sd;
    uint32_t map = 0;
    uint64_t t0, elapsed;
    (void)state;
    tu_tracker_init(&tm, 300);
    tu_tracker_init(&td, 300);
    d = route_pipeline(rt, &td, &ds, 2);
    p = tu_pipeline(rt, "main", &tm);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "flaky", fails_threes, NULL, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(p, map, 4));
    TU_OK(fluxus_stage_set_error_route(p, map, d));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &tm, NULL));
    TU_OK(fluxus_pipeline_start(d));
    t0 = tu_now_ms();
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    elapsed = tu_now_ms() - t0;
    /* 30 routed items at 2 ms each behind a 2-item queue: main cannot finish before most of
     * them were stored (generous bound: at least 20 x 2 ms). */
    assert_true(elapsed >= 40);
    TU_OK(fluxus_pipeline_close_input(d));
    TU_OK(tu_wait(d));
    tu_stats(p, &sm);
    tu_stats(d, &sd);
    assert_int_equal(sm.dead_lettered, 30);
    assert_int_equal(sd.delivered, 30);
    assert_int_equal(sm.balanced, 1);
    assert_int_equal(sd.balanced, 1);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_free(d));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&tm);
    tu_tracker_destroy(&td);
}

/* A route whose pipeline was closed: routed items fail in the main pipeline (destroyed once). */
static void test_a_closed_route_fails_the_items_here(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker tm, td;
    tu_range_source src = {0, 100, 0};
    slow_store ds = {&td, 0, 0};
    fluxus_pipeline *d, *p;
    fluxus_pipeline_stats sm;
    uint32_t map = 0;
    (void)state;
    tu_tracker_init(&tm, 100);
    tu_tracker_init(&td, 100);
    d = route_pipeline(rt, &td, &ds, 16);
    p = tu_pipeline(rt, "main", &tm);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "flaky", fails_threes, NULL, NULL));
    TU_OK(fluxus_stage_set_error_route(p, map, d));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &tm, NULL));
    TU_OK(fluxus_pipeline_start(d));
    TU_OK(fluxus_pipeline_close_input(d));
    TU_OK(tu_wait(d));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    tu_stats(p, &sm);
    assert_int_equal(sm.failed, 10);
    assert_int_equal(sm.dead_lettered, 0);
    assert_int_equal(sm.delivered, 90);
    assert_int_equal(sm.balanced, 1);
    tu_tracker_check_once(&tm, 0, 100);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_free(d));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&tm);
    tu_tracker_destroy(&td);
}

/* Freeing the route's pipeline while the main one routes to it is safe; what cannot be routed
 * any more fails here, and everything is still accounted for. */
static void test_freeing_the_route_while_routing_is_safe(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker tm, td;
    tu_range_source src = {0, 20000, 0};
    slow_store ds = {&td, 0, 0};
    fluxus_pipeline *d, *p;
    fluxus_pipeline_stats sm;
    uint32_t map = 0;
    (void)state;
    tu_tracker_init(&tm, 20000);
    tu_tracker_init(&td, 20000);
    d = route_pipeline(rt, &td, &ds, 8);
    p = tu_pipeline(rt, "main", &tm);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "flaky", fails_threes, NULL, NULL));
    TU_OK(fluxus_stage_set_error_route(p, map, d));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &tm, NULL));
    TU_OK(fluxus_pipeline_start(d));
    TU_OK(fluxus_pipeline_start(p));
    tu_sleep_us(2000);
    TU_OK(fluxus_pipeline_free(d)); /* cancels it; pushes in progress finish first */
    TU_OK(tu_wait(p));
    tu_stats(p, &sm);
    assert_int_equal(sm.balanced, 1);
    assert_int_equal(sm.admitted, 20000);
    assert_int_equal(sm.delivered, 18000);
    assert_int_equal(sm.dead_lettered + sm.failed, 2000);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&tm);
    tu_tracker_destroy(&td);
}

static void test_route_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "main", NULL), *pull = tu_pipeline(rt, "pull", NULL);
    fluxus_pipeline *d = tu_pipeline(rt, "dl", NULL);
    tu_range_source src = {0, 1, 0};
    uint32_t map = 0;
    (void)state;
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "m", fails_threes, NULL, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(pull, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_push_source(d, "in"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_error_route(NULL, map, d));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_error_route(p, map, p));    /* itself */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_error_route(p, map, pull)); /* no push source */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_error_route(p, 9, d));
    TU_OK(fluxus_stage_set_error_route(p, map, d));
    TU_OK(fluxus_stage_set_error_route(p, map, NULL)); /* removed */
    TU_OK(fluxus_pipeline_free(pull));
    TU_OK(fluxus_pipeline_free(d));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_items_go_to_the_route_and_both_pipelines_balance),
        cmocka_unit_test(test_a_full_route_applies_backpressure),
        cmocka_unit_test(test_a_closed_route_fails_the_items_here),
        cmocka_unit_test(test_freeing_the_route_while_routing_is_safe),
        cmocka_unit_test(test_route_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
