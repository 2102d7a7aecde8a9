/*
 * Drain: stop taking input and let admitted items finish, up to a deadline. Past the deadline the
 * rest is cancelled and the stages still holding items are reported.
 */
#include "test_util.h"

#define SLOW_NAME "slow_stage_xyz"
#define SLOW_US 5000u
#define SLOW_CAPACITY 64u

typedef struct drain_ctx {
    tu_tracker t;
    uint32_t slow_us;
} drain_ctx;

static int32_t slow_map(void *user, uint64_t in, uint64_t *out) {
    drain_ctx *c = (drain_ctx *)user;
    if (c->slow_us) {
        tu_sleep_us(c->slow_us);
    }
    *out = in;
    return 0;
}

/* A pull source that never ends: items 0, 1, 2, ... (bounded by the tracker size). */
static int32_t endless_pull(void *user, uint64_t *item) {
    tu_range_source *s = (tu_range_source *)user;
    if (TU_LOAD(&s->next) >= s->end) {
        return FLUXUS_PULL_LATER;
    }
    return tu_range_pull(s, item);
}

TU_RUNTIME_FIXTURE(2);

/* source (endless) -> map "fast" -> map SLOW_NAME -> sink */
static fluxus_pipeline *build(drain_ctx *c, tu_range_source *src, uint64_t n, uint32_t *slow) {
    fluxus_pipeline *p;
    memset(c, 0, sizeof *c);
    tu_tracker_init(&c->t, n);
    p = tu_pipeline(g_rt, "drain", &c->t);
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_batch_size(p, 4));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", endless_pull, src, tu_user_free));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "fast", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(slow, p, SLOW_NAME, slow_map, c, tu_user_free));
    TU_OK(fluxus_stage_set_queue_capacity(p, *slow, SLOW_CAPACITY));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &c->t, tu_user_free));
    return p;
}

static void wait_for_deliveries(drain_ctx *c, uint64_t n) {
    uint64_t t0 = tu_now_ms();
    while (TU_LOAD(&c->t.delivered_total) < n) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("no progress");
        }
        tu_sleep_us(500);
    }
}

static void test_drain_past_its_deadline_times_out_and_names_the_slow_stage(void **state) {
    drain_ctx c;
    tu_range_source src = {0, 100000, 0};
    uint32_t slow = 0;
    fluxus_pipeline *p = build(&c, &src, 100000, &slow);
    fluxus_stage_stats st;
    fluxus_pipeline_stats s;
    tu_msg msg;
    int32_t state_now = -1;
    (void)state;

    c.slow_us = SLOW_US;
    TU_OK(fluxus_pipeline_start(p));
    wait_for_deliveries(&c, 2);
    /* The slow stage's queue is full (64 items x 5 ms = 320 ms of work): 50 ms cannot drain it. */
    TU_EXPECT_MSG(FLUXUS_ETIMEDOUT, fluxus_pipeline_drain(p, 50), &msg);
    if (strstr(msg.text, SLOW_NAME) == NULL) {
        fail_msg("last error message does not name the slow stage: \"%s\"", msg.text);
    }
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    TU_OK(fluxus_pipeline_get_state(&state_now, p));
    assert_int_equal(state_now, FLUXUS_STATE_FINISHED);

    tu_stage_stats(p, slow, &st);
    assert_true(st.held_at_deadline > 0);
    tu_stats(p, &s);
    assert_true(s.cancelled > 0);
    assert_int_equal(s.result, FLUXUS_ECANCELED);
    assert_int_equal(s.admitted, src.next);
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, src.next);
    tu_tracker_check_untouched(&c.t, src.next, 100000);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    tu_tracker_destroy(&c.t);
}

static void test_drain_in_time_finishes_admitted_items_and_returns_ok(void **state) {
    drain_ctx c;
    tu_range_source src = {0, 100000, 0};
    uint32_t slow = 0, n = 0, i;
    fluxus_pipeline *p = build(&c, &src, 100000, &slow);
    fluxus_pipeline_stats s;
    uint64_t calls_after;
    (void)state;

    c.slow_us = 0;
    TU_OK(fluxus_pipeline_start(p));
    wait_for_deliveries(&c, 100);
    /* The source never ends by itself; drain stops calling it and lets the rest finish. */
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_drain(p, TU_WAIT_MS));
    calls_after = TU_LOAD(&src.calls);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_stats(p, &s);
    assert_int_equal(s.result, FLUXUS_OK);
    assert_int_equal(s.cancelled, 0);
    assert_int_equal(s.admitted, src.next);
    assert_int_equal(s.delivered, src.next);
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, src.next);
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    for (i = 0; i < n; i++) {
        fluxus_stage_stats st;
        tu_stage_stats(p, i, &st);
        assert_int_equal(st.held_at_deadline, 0);
    }
    tu_sleep_us(2000);
    assert_int_equal(TU_LOAD(&src.calls), calls_after); /* the source is not called any more */
    /* Draining a finished pipeline reports how it finished. */
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_drain(p, 0));
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_drain_of_a_push_pipeline_closes_its_input(void **state) {
    tu_tracker t;
    fluxus_pipeline *p;
    uint64_t i;
    (void)state;

    tu_tracker_init(&t, 100);
    p = tu_pipeline(g_rt, "drain_push", &t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 100; i++) {
        TU_OK(fluxus_pipeline_push(p, i, UINT32_MAX));
    }
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_drain(p, TU_WAIT_MS));
    assert_int_equal(t.delivered_total, 100);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, 100);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

static void test_drain_of_a_cancelled_pipeline_reports_ecanceled(void **state) {
    drain_ctx c;
    tu_range_source src = {0, 100000, 0};
    uint32_t slow = 0;
    fluxus_pipeline *p = build(&c, &src, 100000, &slow);
    (void)state;

    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_drain(p, TU_WAIT_MS));
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, src.next);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_drain_past_its_deadline_times_out_and_names_the_slow_stage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_in_time_finishes_admitted_items_and_returns_ok,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_of_a_push_pipeline_closes_its_input, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_drain_of_a_cancelled_pipeline_reports_ecanceled, setup,
                                        teardown),
    };
    return TU_RUN_GROUP(tests);
}
