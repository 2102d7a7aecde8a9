/*
 * test_batch.c — the batch stage: groups by size and by linger time (exact on the virtual
 * clock), the tail at end of input, a failing group, conservation and option errors.
 */
#include "test_util.h"

#define T0 1000000000ull
#define US 1000ull

typedef struct groups {
    fluxus_runtime *rt;
    uint32_t n;
    uint32_t size[64];
    uint64_t at[64]; /* clock of the call, from T0 */
    int fail_group;  /* 1-based index of a group to fail, 0 none */
} groups;

/* Emits the sum of the group (plus 1000, so it is told apart from the inputs). */
static int32_t sum_group(void *user, const uint64_t *items, uint32_t count, fluxus_emitter *em) {
    groups *g = (groups *)user;
    uint64_t sum = 1000;
    uint32_t i;
    if (g->n < 64) {
        g->size[g->n] = count;
        g->at[g->n] = tu_clock_now(g->rt) - T0;
    }
    g->n++;
    if (g->fail_group && (int)g->n == g->fail_group) return 55;
    for (i = 0; i < count; i++) sum += items[i];
    return fluxus_emitter_emit(em, sum);
}

static uint64_t sink_sum;
static int32_t summing_sink(void *user, uint64_t item) {
    (void)user;
    sink_sum += item;
    return 0;
}

static fluxus_pipeline *batch_pipeline(fluxus_runtime *rt, groups *g, tu_tracker *t,
                                       uint32_t max, uint64_t linger_us, uint32_t *stage) {
    fluxus_pipeline *p = tu_pipeline(rt, "batching", t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_batch(stage, p, "rows", max, linger_us, sum_group, g, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "store", summing_sink, NULL, NULL));
    return p;
}

static void test_full_groups_go_at_once_the_rest_after_the_linger(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    groups g;
    tu_tracker t;
    uint32_t st = 0;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&g, 0, sizeof g);
    g.rt = rt;
    sink_sum = 0;
    tu_tracker_init(&t, 4096);
    p = batch_pipeline(rt, &g, &t, 4, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 1; i <= 10; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    tu_drive(rt);
    assert_int_equal(g.n, 2); /* two full groups of 4 at once */
    assert_int_equal(g.size[0], 4);
    assert_int_equal(g.size[1], 4);
    assert_int_equal(g.at[1], 0);
    tu_step_to(rt, T0 + 1000 * US - 1);
    assert_int_equal(g.n, 2); /* the last 2 wait for their linger */
    tu_step_to(rt, T0 + 1000 * US);
    assert_int_equal(g.n, 3);
    assert_int_equal(g.size[2], 2);
    assert_int_equal(g.at[2], 1000 * US);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(sink_sum, 3000 + 55); /* 1..10 = 55, plus 1000 per group */
    tu_stats(p, &s);
    assert_int_equal(s.admitted, 13); /* 10 inputs + 3 emitted sums */
    assert_int_equal(s.filtered, 10); /* inputs consumed by the groups */
    assert_int_equal(s.delivered, 3);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(t.freed_total, 10);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_the_tail_goes_at_end_of_input(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    groups g;
    tu_tracker t;
    uint32_t st = 0;
    fluxus_pipeline *p;
    (void)state;
    memset(&g, 0, sizeof g);
    g.rt = rt;
    sink_sum = 0;
    tu_tracker_init(&t, 4096);
    p = batch_pipeline(rt, &g, &t, 100, 60000000ull, &st); /* a minute of linger */
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_push(p, 7, 0));
    TU_OK(fluxus_pipeline_push(p, 8, 0));
    tu_drive(rt);
    assert_int_equal(g.n, 0);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(g.n, 1);
    assert_int_equal(g.size[0], 2);
    assert_int_equal(g.at[0], 0); /* no waiting for the linger */
    assert_int_equal(sink_sum, 1015);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void dl_count(void *user, uint64_t item, const fluxus_failure *f) {
    (void)item;
    assert_int_equal(tu_failure_status(f), 55);
    TU_ADD((uint64_t *)user, 1);
}

static void test_a_failing_group_fails_each_of_its_items(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    groups g;
    tu_tracker t;
    uint32_t st = 0;
    uint64_t i, dead = 0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&g, 0, sizeof g);
    g.rt = rt;
    g.fail_group = 2;
    sink_sum = 0;
    tu_tracker_init(&t, 4096);
    p = batch_pipeline(rt, &g, &t, 3, 0, &st);
    TU_OK(fluxus_stage_set_error_policy(p, st, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, dl_count, &dead, NULL));
    TU_OK(fluxus_pipeline_start(p));
    for (i = 1; i <= 9; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(g.n, 3);
    assert_int_equal(dead, 3); /* the second group's 3 items */
    tu_stats(p, &s);
    assert_int_equal(s.dead_lettered, 3);
    assert_int_equal(s.delivered, 2);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(t.freed_total, 9); /* 6 consumed inputs + 3 dead-lettered */
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_cancel_cancels_the_open_group(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    groups g;
    tu_tracker t;
    uint32_t st = 0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&g, 0, sizeof g);
    g.rt = rt;
    tu_tracker_init(&t, 4096);
    p = batch_pipeline(rt, &g, &t, 10, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_push(p, 1, 0));
    TU_OK(fluxus_pipeline_push(p, 2, 0));
    tu_drive(rt);
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    tu_stats(p, &s);
    assert_int_equal(s.cancelled, 2);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(g.n, 0);
    tu_tracker_check_once(&t, 1, 3);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_batch_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p = tu_pipeline(rt, "opts", NULL);
    uint32_t st = 0;
    groups g;
    (void)state;
    memset(&g, 0, sizeof g);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_batch(&st, p, "b", 0, 0, sum_group, &g, NULL));
    TU_EXPECT(FLUXUS_ERANGE,
              fluxus_pipeline_add_batch(&st, p, "b", 65537, 0, sum_group, &g, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_batch(&st, p, "b", 4, 0, NULL, &g, NULL));
    TU_OK(fluxus_pipeline_add_batch(&st, p, "b", 4, 0, sum_group, &g, NULL));
    TU_OK(fluxus_stage_set_workers(p, st, 2));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", summing_sink, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p)); /* one worker only */
    tu_free_all(p, rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_groups_go_at_once_the_rest_after_the_linger),
        cmocka_unit_test(test_the_tail_goes_at_end_of_input),
        cmocka_unit_test(test_a_failing_group_fails_each_of_its_items),
        cmocka_unit_test(test_cancel_cancels_the_open_group),
        cmocka_unit_test(test_batch_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
