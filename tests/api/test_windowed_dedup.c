/*
 * test_windowed_dedup.c — dedup for streams that never end: a time-to-live (exact on the
 * virtual clock) or the last N distinct keys.
 */
#include "test_util.h"

#define T0 1000000000ull
#define US 1000ull

typedef struct seen {
    uint64_t items[64];
    uint32_t n;
} seen;

static int32_t record(void *user, uint64_t item) {
    seen *s = (seen *)user;
    if (s->n < 64) s->items[s->n] = item;
    s->n++;
    return 0;
}

static fluxus_pipeline *dedup_pipeline(fluxus_runtime *rt, seen *s, uint32_t *stage) {
    fluxus_pipeline *p = tu_pipeline(rt, "wdedup", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_dedup(stage, p, "dedup"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", record, s, NULL));
    return p;
}

static void push_now(fluxus_runtime *rt, fluxus_pipeline *p, uint64_t item) {
    TU_OK(fluxus_pipeline_push(p, item, 0));
    tu_drive(rt);
}

static void test_ttl_forgets_a_key_exactly_after_its_ttl(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    seen s;
    uint32_t st = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats ss;
    (void)state;
    memset(&s, 0, sizeof s);
    p = dedup_pipeline(rt, &s, &st);
    TU_OK(fluxus_stage_set_dedup_ttl_us(p, st, 1000));
    TU_OK(fluxus_pipeline_start(p));
    push_now(rt, p, 5); /* t = 0: passes */
    push_now(rt, p, 6); /* another key passes */
    tu_step_to(rt, T0 + 1000 * US - 1);
    push_now(rt, p, 5); /* within the ttl: filtered */
    assert_int_equal(s.n, 2);
    tu_step_to(rt, T0 + 1000 * US);
    push_now(rt, p, 5); /* exactly one ttl after it passed: passes again */
    assert_int_equal(s.n, 3);
    assert_int_equal(s.items[2], 5);
    tu_stage_stats(p, st, &ss);
    assert_int_equal(ss.filtered, 1);
    assert_true(ss.dedup_forgotten >= 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    tu_free_all(p, rt);
}

static void test_window_remembers_exactly_the_last_n_keys(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    seen s;
    uint32_t st = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats ss;
    fluxus_pipeline_stats ps;
    static const uint64_t in[] = {1, 2, 1, 3, 1, 2, 2};
    static const uint64_t want[] = {1, 2, 3, 1, 2};
    uint32_t i;
    (void)state;
    memset(&s, 0, sizeof s);
    p = dedup_pipeline(rt, &s, &st);
    TU_OK(fluxus_stage_set_dedup_window(p, st, 2));
    TU_OK(fluxus_pipeline_start(p));
    /* window {1,2}; 1 repeat; 3 forgets 1; 1 passes, forgets 2; 2 passes; 2 repeat */
    for (i = 0; i < sizeof in / sizeof in[0]; i++) TU_OK(fluxus_pipeline_push(p, in[i], 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(s.n, 5);
    for (i = 0; i < 5; i++) assert_int_equal(s.items[i], want[i]);
    tu_stage_stats(p, st, &ss);
    assert_int_equal(ss.filtered, 2);
    assert_int_equal(ss.dedup_forgotten, 3);
    assert_int_equal(ss.dedup_keys, 2);
    tu_stats(p, &ps);
    assert_int_equal(ps.balanced, 1);
    tu_free_all(p, rt);
}

static void test_windowed_dedup_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    seen s;
    uint32_t st = 0, map = 0;
    fluxus_pipeline *p;
    (void)state;
    memset(&s, 0, sizeof s);
    p = tu_pipeline(rt, "opts", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(&map, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&st, p, "dedup"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", record, &s, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_dedup_ttl_us(p, map, 10));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_dedup_window(p, map, 10));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_dedup_ttl_us(p, st, 86400000001ull));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_dedup_window(p, 9, 10));
    TU_OK(fluxus_stage_set_dedup_ttl_us(p, st, 10));
    TU_OK(fluxus_stage_set_dedup_window(p, st, 10));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p)); /* two bounds at once */
    tu_free_all(p, rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ttl_forgets_a_key_exactly_after_its_ttl),
        cmocka_unit_test(test_window_remembers_exactly_the_last_n_keys),
        cmocka_unit_test(test_windowed_dedup_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
