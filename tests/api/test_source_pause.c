/*
 * test_source_pause.c — the source pauses itself after too many failures at a stage, or while a
 * source breaker is open, and resumes by itself; exact on the virtual clock.
 */
#include "test_util.h"

#define T0 1000000000ull
#define MS 1000000ull

typedef struct pulls {
    fluxus_runtime *rt;
    uint64_t next, end;
    uint64_t at[256]; /* clock of each call that produced an item */
    uint32_t n;
} pulls;

static int32_t timed_pull(void *user, uint64_t *item) {
    pulls *s = (pulls *)user;
    if (s->next >= s->end) return FLUXUS_PULL_END;
    if (s->n < 256) s->at[s->n++] = tu_clock_now(s->rt) - T0;
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}

/* Items 5..9 fail. */
static int32_t fails_5_to_9(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in >= 5 && in < 10) return 9;
    *out = in;
    return 0;
}

static fluxus_pipeline *pausing_pipeline(fluxus_runtime *rt, pulls *src, tu_tracker *t,
                                         uint32_t *map) {
    fluxus_pipeline *p = tu_pipeline(rt, "pausing", t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 1)); /* one item per pull: exact pause points */
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", timed_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_map(map, p, "svc", fails_5_to_9, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, *map, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, t, NULL));
    return p;
}

/* Three failures within 10 ms pause the source for exactly 50 ms. */
static void test_failures_pause_the_source_then_it_resumes(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    pulls src;
    tu_tracker t;
    uint32_t map = 0, i, after = 0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&src, 0, sizeof src);
    src.rt = rt;
    src.end = 40;
    tu_tracker_init(&t, 40);
    p = pausing_pipeline(rt, &src, &t, &map);
    TU_OK(fluxus_stage_set_pause_source_on_errors(p, map, 3, 10000, 50000));
    TU_OK(fluxus_pipeline_start(p));
    tu_drive(rt);
    /* Items 5, 6, 7 failed at t = 0: the third failure paused the source. It may have been
     * asked for at most the item already in flight behind them. */
    assert_true(src.n >= 8 && src.n <= 9);
    tu_step_to(rt, T0 + 50 * MS - 1);
    assert_true(src.n <= 9); /* still paused 1 ns before the end */
    tu_step_to(rt, T0 + 50 * MS);
    for (i = 0; i < src.n; i++)
        if (src.at[i] >= 50 * MS) ++after;
    assert_true(after > 0);                 /* resumed by itself, exactly at 50 ms */
    for (i = 0; i < src.n; i++) assert_true(src.at[i] == 0 || src.at[i] == 50 * MS);
    TU_OK(tu_wait(p));
    tu_stats(p, &s);
    assert_int_equal(s.source_pauses, 1); /* items 8, 9 fail later: only 2 more, no trip */
    assert_int_equal(s.failed, 5);
    assert_int_equal(s.delivered, 35);
    assert_int_equal(s.balanced, 1);
    tu_tracker_check_once(&t, 0, 40);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* Failures spread wider than the window do not pause anything. */
static void test_failures_outside_the_window_do_not_pause(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    pulls src;
    tu_tracker t;
    uint32_t map = 0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&src, 0, sizeof src);
    src.rt = rt;
    src.end = 40;
    tu_tracker_init(&t, 40);
    p = pausing_pipeline(rt, &src, &t, &map);
    TU_OK(fluxus_stage_set_pause_source_on_errors(p, map, 6, 10000, 50000)); /* 5 < 6 */
    TU_OK(fluxus_pipeline_start(p));
    tu_drive(rt);
    assert_int_equal(src.n, 40);
    TU_OK(tu_wait(p));
    tu_stats(p, &s);
    assert_int_equal(s.source_pauses, 0);
    assert_int_equal(s.balanced, 1);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* While the source breaker is open the source is not called; it resumes when the breaker lets
 * trial calls through (at the reset time). */
static void test_an_open_source_breaker_holds_the_source(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    fluxus_circuit_breaker *cb = NULL;
    pulls src;
    tu_tracker t;
    uint32_t map = 0, i;
    uint64_t ticket = 0;
    fluxus_pipeline *p;
    (void)state;
    memset(&src, 0, sizeof src);
    src.rt = rt;
    src.end = 20;
    tu_tracker_init(&t, 20);
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 1));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 30000));
    p = pausing_pipeline(rt, &src, &t, &map);
    TU_OK(fluxus_pipeline_set_source_breaker(p, cb));
    /* Open it before the start: one failed call. */
    TU_OK(fluxus_circuit_breaker_allow(&ticket, cb));
    TU_OK(fluxus_circuit_breaker_record(cb, ticket, 0));
    TU_OK(fluxus_pipeline_start(p));
    tu_drive(rt);
    assert_int_equal(src.n, 0);
    tu_step_to(rt, T0 + 30 * MS - 1);
    assert_int_equal(src.n, 0);
    tu_step_to(rt, T0 + 30 * MS);
    assert_int_equal(src.n, 20);
    for (i = 0; i < src.n; i++) assert_int_equal(src.at[i], 30 * MS);
    TU_OK(tu_wait(p));
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* Pushes wait while the source is paused after failures (try-push says full). */
static void test_a_push_source_holds_pushes_while_paused(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    tu_tracker t;
    uint32_t map = 0;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    tu_tracker_init(&t, 20);
    p = tu_pipeline(rt, "push", &t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(&map, p, "svc", fails_5_to_9, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, map, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_stage_set_pause_source_on_errors(p, map, 2, 10000, 20000));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 7; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    tu_drive(rt); /* items 5 and 6 fail: paused for 20 ms */
    TU_EXPECT(FLUXUS_EFULL, fluxus_pipeline_try_push(p, 7));
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_push(p, 7, 5)); /* waits (real time), refused */
    tu_step_to(rt, T0 + 20 * MS);
    TU_OK(fluxus_pipeline_try_push(p, 7));
    for (i = 8; i < 20; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    tu_stats(p, &s);
    assert_int_equal(s.source_pauses, 2); /* 5+6 at t=0, then 7+8 after the resume */
    assert_int_equal(s.failed, 5);
    assert_int_equal(s.balanced, 1);
    tu_tracker_check_once(&t, 0, 20);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_source_pause_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "opts", NULL);
    uint32_t map = 0;
    (void)state;
    TU_OK(fluxus_pipeline_add_map(&map, p, "m", fails_5_to_9, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_pause_source_on_errors(NULL, map, 3, 1, 1));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_pause_source_on_errors(p, 7, 3, 1, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_pause_source_on_errors(p, map, 3, 0, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_pause_source_on_errors(p, map, 3, 1, 0));
    TU_OK(fluxus_stage_set_pause_source_on_errors(p, map, 0, 0, 0)); /* off */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_source_breaker(NULL, NULL));
    TU_OK(fluxus_pipeline_set_source_breaker(p, NULL));
    tu_free_all(p, rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failures_pause_the_source_then_it_resumes),
        cmocka_unit_test(test_failures_outside_the_window_do_not_pause),
        cmocka_unit_test(test_an_open_source_breaker_holds_the_source),
        cmocka_unit_test(test_a_push_source_holds_pushes_while_paused),
        cmocka_unit_test(test_source_pause_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
