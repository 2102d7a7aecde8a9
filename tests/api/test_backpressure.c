/*
 * Backpressure: a fast source in front of a slow sink is held back by bounded queues, and each
 * overflow policy ends the items that do not fit the way its documentation says, with exact
 * accounting.
 */
#include "test_util.h"

#ifndef BP_N
#define BP_N 3000u
#endif
#define BP_BATCH 16u
#define BP_CAPACITY 64u
#define SMALL_CAPACITY 8u

typedef struct bp_ctx {
    tu_tracker t;
    uint32_t sink_delay_us; /* delay per item */
    uint32_t stall_every;   /* every n-th item stalls for stall_us (0 = never) */
    uint32_t stall_us;
    uint64_t last_item_plus1; /* order check: delivered items increase */
    uint64_t order_errors;
    /* dead-letter checks */
    int32_t expect_status;
    uint32_t expect_stage;
    uint64_t dl_calls;
    uint64_t dl_bad;
} bp_ctx;

static int32_t slow_sink(void *user, uint64_t item) {
    bp_ctx *c = (bp_ctx *)user;
    if (c->sink_delay_us) {
        tu_sleep_us(c->sink_delay_us);
    }
    if (c->stall_every && item % c->stall_every == 0) {
        tu_sleep_us(c->stall_us);
    }
    if (item + 1 <= c->last_item_plus1) {
        c->order_errors++;
    }
    c->last_item_plus1 = item + 1;
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void checking_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    bp_ctx *c = (bp_ctx *)user;
    (void)item;
    TU_ADD(&c->dl_calls, 1);
    if (tu_failure_status(f) != c->expect_status ||
        tu_failure_stage_index(f) != c->expect_stage || tu_failure_message(f) == NULL ||
        strcmp(tu_failure_stage_name(f), "slow_sink") != 0) {
        TU_ADD(&c->dl_bad, 1);
    }
}

TU_RUNTIME_FIXTURE(2);

static void test_slow_sink_holds_back_a_fast_source_within_queue_capacities(void **state) {
    bp_ctx c;
    tu_range_source src = {0, BP_N, 0};
    uint32_t stages[3], n = 0, i;
    uint64_t capacity_sum = 0, slack, max_in_flight = 0, samples = 0, t0;
    int32_t rc;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, BP_N);
    c.sink_delay_us = 50;
    p = tu_pipeline(g_rt, "backpressure", &c.t);
    TU_OK(fluxus_pipeline_set_fusion(p, 0)); /* real queues between all stages */
    TU_OK(fluxus_pipeline_set_batch_size(p, BP_BATCH));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&stages[0], p, "a", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(&stages[1], p, "b", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&stages[2], p, "slow_sink", slow_sink, &c, NULL));
    for (i = 0; i < 3; i++) {
        TU_OK(fluxus_stage_set_queue_capacity(p, stages[i], BP_CAPACITY));
    }
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 3);

    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    while ((rc = fluxus_pipeline_wait(p, 1)) == FLUXUS_ETIMEDOUT) {
        fluxus_pipeline_stats s;
        tu_stats(p, &s);
        if (s.in_flight > max_in_flight) {
            max_in_flight = s.in_flight;
        }
        samples++;
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("pipeline did not finish (hang?)");
        }
    }
    TU_EXPECT(FLUXUS_OK, rc);

    for (i = 0; i < 3; i++) {
        fluxus_stage_stats st;
        tu_stage_stats(p, stages[i], &st);
        assert_int_equal(st.queue_capacity, BP_CAPACITY);
        if (st.queue_peak > st.queue_capacity) {
            fail_msg("stage %u: queue_peak %llu > capacity %llu", i,
                     (unsigned long long)st.queue_peak, (unsigned long long)st.queue_capacity);
        }
        assert_int_equal(st.queue_depth, 0);
        capacity_sum += st.queue_capacity;
    }
    /*
     * Slack: besides what sits in the queues, each task may hold one batch it has taken out of
     * its input queue (being processed, or waiting for room downstream). That is one batch for
     * the source (pulled, not yet pushed) and one per stage: BP_BATCH x (stages + 1). The sink's
     * own batch counts as in flight until it is delivered. Without backpressure in_flight would
     * approach BP_N.
     */
    slack = (uint64_t)BP_BATCH * (n + 1);
    print_message("in_flight peaked at %llu over %llu samples (bound %llu + %llu)\n",
                  (unsigned long long)max_in_flight, (unsigned long long)samples,
                  (unsigned long long)capacity_sum, (unsigned long long)slack);
    if (max_in_flight > capacity_sum + slack) {
        fail_msg("in_flight reached %llu > capacities %llu + slack %llu (over %llu samples)",
                 (unsigned long long)max_in_flight, (unsigned long long)capacity_sum,
                 (unsigned long long)slack, (unsigned long long)samples);
    }
    assert_int_equal(c.order_errors, 0);
    assert_int_equal(c.t.delivered_total, BP_N);
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, BP_N);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

/*
 * source -> map "fast" -> sink "slow_sink" (queue of SMALL_CAPACITY items with `policy`).
 * Returns the pipeline after it finished; fills in the sink's stage stats.
 */
static fluxus_pipeline *run_overflow(bp_ctx *c, int32_t policy, uint32_t timeout_ms,
                                     int32_t error_policy, uint32_t n_items,
                                     fluxus_stage_stats *sink_stats) {
    tu_range_source src = {0, 0, 0};
    uint32_t map = 0, sink = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats st;

    src.end = n_items;
    p = tu_pipeline(g_rt, "overflow", &c->t);
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_batch_size(p, 4));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "fast", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "slow_sink", slow_sink, c, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(p, sink, SMALL_CAPACITY));
    TU_OK(fluxus_stage_set_overflow(p, sink, policy, timeout_ms));
    TU_OK(fluxus_stage_set_error_policy(p, sink, error_policy));
    if (error_policy == FLUXUS_ERROR_DEAD_LETTER) {
        c->expect_stage = sink;
        TU_OK(fluxus_pipeline_set_dead_letter(p, checking_dead_letter, c, NULL));
    }
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(src.next, n_items);
    tu_stage_stats(p, sink, &st);
    assert_int_equal(st.queue_capacity, SMALL_CAPACITY);
    assert_true(st.queue_peak <= SMALL_CAPACITY);
    if (policy == FLUXUS_OVERFLOW_BLOCK) {
        assert_int_equal(st.in, n_items);
    }
    assert_int_equal(st.out, c->t.delivered_total);
    assert_int_equal(c->order_errors, 0);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, n_items);
    *sink_stats = st;
    return p;
}

static void test_overflow_block_loses_nothing(void **state) {
    bp_ctx c;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 1000);
    c.sink_delay_us = 50;
    p = run_overflow(&c, FLUXUS_OVERFLOW_BLOCK, 0, FLUXUS_ERROR_SKIP, 1000, &st);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.failed, 0);
    assert_int_equal(c.t.delivered_total, 1000);
    assert_int_equal(c.t.freed_total, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_overflow_drop_newest_drops_and_counts_items_that_do_not_fit(void **state) {
    bp_ctx c;
    fluxus_stage_stats st;
    fluxus_pipeline_stats s;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 2000);
    c.sink_delay_us = 100;
    p = run_overflow(&c, FLUXUS_OVERFLOW_DROP_NEWEST, 0, FLUXUS_ERROR_SKIP, 2000, &st);
    assert_true(st.dropped > 0);
    assert_int_equal(st.failed, st.dropped);
    assert_int_equal(c.t.delivered_total + st.dropped, 2000);
    assert_int_equal(c.t.freed_total, st.dropped);
    assert_int_equal(c.t.delivered[0], 1); /* the first item found an empty queue */
    tu_stats(p, &s);
    assert_int_equal(s.dropped, st.dropped);
    assert_int_equal(s.failed, st.dropped);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_overflow_drop_oldest_keeps_the_newest_items(void **state) {
    bp_ctx c;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 2000);
    c.sink_delay_us = 100;
    p = run_overflow(&c, FLUXUS_OVERFLOW_DROP_OLDEST, 0, FLUXUS_ERROR_SKIP, 2000, &st);
    assert_true(st.dropped > 0);
    assert_int_equal(st.failed, st.dropped);
    assert_int_equal(c.t.delivered_total + st.dropped, 2000);
    assert_int_equal(c.t.freed_total, st.dropped);
    assert_int_equal(c.t.delivered[1999], 1); /* nothing newer ever pushed the last item out */
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_overflow_fail_fails_items_with_efull_under_the_error_policy(void **state) {
    bp_ctx c;
    fluxus_stage_stats st;
    fluxus_pipeline_stats s;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 2000);
    c.sink_delay_us = 100;
    p = run_overflow(&c, FLUXUS_OVERFLOW_FAIL, 0, FLUXUS_ERROR_SKIP, 2000, &st);
    assert_true(st.failed > 0);
    assert_true(st.dropped <= st.failed);
    assert_int_equal(c.t.delivered_total + st.failed, 2000);
    assert_int_equal(c.t.freed_total, st.failed);
    tu_stats(p, &s);
    assert_int_equal(s.failed, st.failed);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_overflow_fail_sends_items_to_the_dead_letter_callback_with_efull(void **state) {
    bp_ctx c;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 2000);
    c.sink_delay_us = 100;
    c.expect_status = FLUXUS_EFULL;
    p = run_overflow(&c, FLUXUS_OVERFLOW_FAIL, 0, FLUXUS_ERROR_DEAD_LETTER, 2000, &st);
    assert_true(st.dead_lettered > 0);
    assert_int_equal(c.dl_calls, st.dead_lettered);
    assert_int_equal(c.dl_bad, 0);
    assert_int_equal(c.t.delivered_total + st.dead_lettered, 2000);
    assert_int_equal(c.t.freed_total, st.dead_lettered);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_overflow_block_timeout_fails_items_with_etimedout_after_waiting(void **state) {
    bp_ctx c;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 500);
    /* Every 50th item stalls the sink for 20 ms, far longer than the 1 ms the producer waits. */
    c.stall_every = 50;
    c.stall_us = 20000;
    c.expect_status = FLUXUS_ETIMEDOUT;
    p = run_overflow(&c, FLUXUS_OVERFLOW_BLOCK_TIMEOUT, 1, FLUXUS_ERROR_DEAD_LETTER, 500, &st);
    assert_true(st.dead_lettered > 0);
    assert_int_equal(c.dl_calls, st.dead_lettered);
    assert_int_equal(c.dl_bad, 0);
    assert_int_equal(c.t.delivered_total + st.dead_lettered, 500);
    assert_int_equal(c.t.freed_total, st.dead_lettered);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_slow_sink_holds_back_a_fast_source_within_queue_capacities, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflow_block_loses_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_overflow_drop_newest_drops_and_counts_items_that_do_not_fit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflow_drop_oldest_keeps_the_newest_items, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_overflow_fail_fails_items_with_efull_under_the_error_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_overflow_fail_sends_items_to_the_dead_letter_callback_with_efull, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_overflow_block_timeout_fails_items_with_etimedout_after_waiting, setup, teardown),
    };
    return TU_RUN_GROUP(tests);
}
