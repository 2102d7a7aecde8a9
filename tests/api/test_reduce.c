/*
 * test_reduce.c — reduce by key: one accumulator per key, emitted at end of input in order of
 * each key's first item; sharded across workers; failures, cancel and conservation.
 */
#include "test_util.h"

/* Key = item % 10 (through a key function); accumulator = 10^12 * key + running sum. */
static int32_t key_mod10(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = item % 10;
    *key = &k;
    *len = sizeof k;
    return 0;
}

static int32_t fold(void *user, uint64_t *acc, int32_t first, uint64_t item) {
    (void)user;
    if (item == 777) return 42; /* this one fails */
    if (first) {
        assert_int_equal(*acc, 0);
        *acc = 1000000000000ull * (item % 10);
    }
    *acc += item;
    return 0;
}

typedef struct outs {
    uint64_t v[64];
    uint32_t n;
} outs;

static int32_t collect(void *user, uint64_t item) {
    outs *o = (outs *)user;
    uint32_t i = __atomic_fetch_add(&o->n, 1, __ATOMIC_SEQ_CST);
    if (i < 64) o->v[i] = item;
    return 0;
}

static fluxus_pipeline *reduce_pipeline(fluxus_runtime *rt, tu_range_source *src, outs *o,
                                        uint32_t workers, uint32_t *stage) {
    fluxus_pipeline *p = tu_pipeline(rt, "reduce", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_reduce(stage, p, "sum", fold, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, *stage, key_mod10, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, *stage, workers));
    TU_OK(fluxus_stage_set_error_policy(p, *stage, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", collect, o, NULL));
    return p;
}

static void check_sums(const outs *o, uint64_t n) {
    uint64_t want[10] = {0}, i;
    uint32_t j;
    for (i = 0; i < n; i++)
        if (i != 777) want[i % 10] += i;
    assert_int_equal(o->n, 10);
    for (j = 0; j < o->n; j++) {
        uint64_t key = o->v[j] / 1000000000000ull;
        assert_true(key < 10);
        assert_int_equal(o->v[j] - 1000000000000ull * key, want[key]);
    }
}

static void test_one_accumulator_per_key_in_first_seen_order(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_range_source src = {0, 5000, 0};
    outs o;
    uint32_t st = 0, j;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fluxus_stage_stats ss;
    (void)state;
    memset(&o, 0, sizeof o);
    p = reduce_pipeline(rt, &src, &o, 1, &st);
    tu_run_expect(p, FLUXUS_OK);
    check_sums(&o, 5000);
    for (j = 0; j < 10; j++) assert_int_equal(o.v[j] / 1000000000000ull, j); /* keys 0..9 first seen in order */
    tu_stats(p, &s);
    assert_int_equal(s.admitted, 5000 + 10); /* inputs + accumulators */
    assert_int_equal(s.filtered, 4999);      /* folded inputs */
    assert_int_equal(s.failed, 1);           /* item 777 */
    assert_int_equal(s.delivered, 10);
    assert_int_equal(s.balanced, 1);
    tu_stage_stats(p, st, &ss);
    assert_int_equal(ss.out, 10);
    tu_free_all(p, rt);
}

static void test_keys_shard_across_workers(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_range_source src = {0, 20000, 0};
    outs o;
    uint32_t st = 0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&o, 0, sizeof o);
    p = reduce_pipeline(rt, &src, &o, 2, &st);
    tu_run_expect(p, FLUXUS_OK);
    check_sums(&o, 20000); /* each key reduced by exactly one worker: one result per key */
    tu_stats(p, &s);
    assert_int_equal(s.balanced, 1);
    tu_free_all(p, rt);
}

static void test_cancel_emits_nothing_and_balances(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    tu_range_source src = {0, UINT64_MAX, 0}; /* endless */
    outs o;
    uint32_t st = 0, ran = 0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&o, 0, sizeof o);
    p = reduce_pipeline(rt, &src, &o, 1, &st);
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_runtime_run_once(&ran, rt));
    TU_OK(fluxus_runtime_run_once(&ran, rt));
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    assert_int_equal(o.n, 0);
    tu_stats(p, &s);
    assert_int_equal(s.delivered, 0);
    assert_int_equal(s.balanced, 1);
    tu_free_all(p, rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_accumulator_per_key_in_first_seen_order),
        cmocka_unit_test(test_keys_shard_across_workers),
        cmocka_unit_test(test_cancel_emits_nothing_and_balances),
    };
    return TU_RUN_GROUP(tests);
}
