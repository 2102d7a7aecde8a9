/*
 * Cancel: every admitted item that was not delivered is destroyed exactly once, wait reports
 * FLUXUS_ECANCELED, the accounting still reconciles, and long callbacks can see the cancel.
 */
#include "test_util.h"

#ifndef CANCEL_N
#define CANCEL_N 50000u
#endif

typedef struct cancel_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
    uint64_t cancel_at; /* the sink cancels when it sees this item (UINT64_MAX: never) */
    uint32_t sink_delay_us;
    int32_t cancel_rc;
    /* long-callback test */
    uint64_t long_item;
    uint32_t entered;
    uint32_t saw_cancel;
    uint32_t cancelled_at_entry;
    uint32_t gave_up;
} cancel_ctx;

static int32_t slow_sink(void *user, uint64_t item) {
    cancel_ctx *c = (cancel_ctx *)user;
    if (c->sink_delay_us) {
        tu_sleep_us(c->sink_delay_us);
    }
    if (item == c->cancel_at) {
        TU_STORE(&c->cancel_rc, fluxus_pipeline_cancel(c->p));
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

/* On one item, loop until the pipeline is cancelled (giving up after a very long time). */
static int32_t long_map(void *user, uint64_t in, uint64_t *out) {
    cancel_ctx *c = (cancel_ctx *)user;
    if (in == c->long_item) {
        uint32_t i;
        TU_STORE(&c->cancelled_at_entry, (uint32_t)tu_is_cancelled(c->p));
        TU_STORE(&c->entered, 1);
        for (i = 0; i < 600000u; i++) { /* about a minute at most */
            if (tu_is_cancelled(c->p)) {
                TU_STORE(&c->saw_cancel, 1);
                break;
            }
            tu_sleep_us(100);
        }
        if (!TU_LOAD(&c->saw_cancel)) {
            TU_STORE(&c->gave_up, 1);
        }
    }
    *out = in;
    return 0;
}

TU_RUNTIME_FIXTURE(2);

static fluxus_pipeline *build(cancel_ctx *c, tu_range_source *src) {
    fluxus_pipeline *p;
    uint32_t map = 0;
    memset(c, 0, sizeof *c);
    c->cancel_at = UINT64_MAX;
    c->long_item = UINT64_MAX;
    tu_tracker_init(&c->t, CANCEL_N);
    p = tu_pipeline(g_rt, "cancel", &c->t);
    c->p = p;
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_batch_size(p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, tu_user_free));
    TU_OK(fluxus_pipeline_add_map(&map, p, "long", long_map, c, tu_user_free));
    TU_OK(fluxus_stage_set_queue_capacity(p, map, 256));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", slow_sink, c, tu_user_free));
    return p;
}

/* After a cancel: the pulled prefix ended once per item, the rest was never touched. */
static void check_after_cancel(cancel_ctx *c, fluxus_pipeline *p, const tu_range_source *src) {
    fluxus_pipeline_stats s;
    tu_check_conservation(p, &c->t, 0);
    tu_stats(p, &s);
    assert_int_equal(s.result, FLUXUS_ECANCELED);
    assert_int_equal(s.admitted, src->next);
    assert_int_equal(c->t.delivered_total, s.delivered);
    tu_tracker_check_once(&c->t, 0, src->next);
    tu_tracker_check_untouched(&c->t, src->next, CANCEL_N);
    assert_int_equal(c->t.out_of_range, 0);
}

static void test_cancel_mid_stream_destroys_every_undelivered_item_once(void **state) {
    cancel_ctx c;
    tu_range_source src = {0, CANCEL_N, 0};
    fluxus_pipeline_stats s;
    fluxus_pipeline *p = build(&c, &src);
    uint64_t t0;
    (void)state;

    c.sink_delay_us = 20;
    TU_OK(fluxus_pipeline_start(p));
    /* Let some items through; the slow sink keeps the queues full meanwhile. */
    t0 = tu_now_ms();
    while (TU_LOAD(&c.t.delivered_total) < 200) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("no progress before cancel");
        }
        tu_sleep_us(500);
    }
    TU_OK(fluxus_pipeline_cancel(p));
    assert_int_equal(tu_is_cancelled(p), 1);
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    TU_OK(fluxus_pipeline_cancel(p)); /* cancelling twice is allowed */
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));

    tu_stats(p, &s);
    assert_true(s.delivered >= 200);
    assert_true(s.delivered < CANCEL_N);
    assert_true(s.cancelled > 0);
    check_after_cancel(&c, p, &src);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    tu_tracker_destroy(&c.t);
}

static void test_cancel_from_inside_a_sink_callback_is_allowed(void **state) {
    cancel_ctx c;
    tu_range_source src = {0, CANCEL_N, 0};
    fluxus_pipeline_stats s;
    fluxus_pipeline *p = build(&c, &src);
    (void)state;

    c.cancel_at = 1000;
    c.sink_delay_us = 1;
    tu_run_expect(p, FLUXUS_ECANCELED);
    assert_int_equal(c.cancel_rc, FLUXUS_OK);
    tu_stats(p, &s);
    assert_true(s.delivered >= 1001); /* items up to the cancelling one were delivered */
    assert_true(s.delivered < CANCEL_N);
    tu_tracker_check_once(&c.t, 0, 1001);
    check_after_cancel(&c, p, &src);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_long_callback_sees_is_cancelled_after_cancel(void **state) {
    cancel_ctx c;
    tu_range_source src = {0, CANCEL_N, 0};
    fluxus_pipeline *p = build(&c, &src);
    uint64_t t0;
    (void)state;

    c.long_item = 50;
    assert_int_equal(tu_is_cancelled(p), 0);
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    while (!TU_LOAD(&c.entered)) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("the long callback never started");
        }
        tu_sleep_us(200);
    }
    assert_int_equal(tu_is_cancelled(p), 0);
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    assert_int_equal(c.cancelled_at_entry, 0);
    assert_int_equal(c.saw_cancel, 1);
    assert_int_equal(c.gave_up, 0);
    check_after_cancel(&c, p, &src);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_cancel_of_a_finished_pipeline_keeps_its_result(void **state) {
    cancel_ctx c;
    tu_range_source src = {0, 1000, 0};
    fluxus_pipeline *p = build(&c, &src);
    (void)state;

    tu_run_expect(p, FLUXUS_OK);
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, 1000);
    assert_int_equal(c.t.freed_total, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

static void test_pipeline_free_on_a_running_pipeline_cancels_and_destroys_items(void **state) {
    cancel_ctx c;
    tu_range_source src = {0, CANCEL_N, 0};
    fluxus_pipeline *p = build(&c, &src);
    uint64_t t0;
    (void)state;

    c.sink_delay_us = 20;
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    while (TU_LOAD(&c.t.delivered_total) < 100) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("no progress before free");
        }
        tu_sleep_us(500);
    }
    TU_OK(fluxus_pipeline_free(p)); /* cancels, waits for callbacks, releases */
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    assert_true(src.next < CANCEL_N);
    assert_true(c.t.freed_total > 0);
    assert_int_equal(c.t.delivered_total + c.t.freed_total, src.next);
    tu_tracker_check_once(&c.t, 0, src.next);
    tu_tracker_check_untouched(&c.t, src.next, CANCEL_N);
    tu_tracker_destroy(&c.t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cancel_mid_stream_destroys_every_undelivered_item_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_inside_a_sink_callback_is_allowed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_long_callback_sees_is_cancelled_after_cancel, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_of_a_finished_pipeline_keeps_its_result, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_pipeline_free_on_a_running_pipeline_cancels_and_destroys_items, setup, teardown),
    };
    return TU_RUN_GROUP(tests);
}
