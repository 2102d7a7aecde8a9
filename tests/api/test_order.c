/*
 * Output order: an ordered multi-worker stage keeps input order, a per-key stage keeps order
 * within each key, and an unordered stage still delivers every item exactly once.
 */
#include "test_util.h"

#ifndef ORDER_N
#define ORDER_N 20000u
#endif
#define ORDER_WORKERS 4u
#define ORDER_KEYS 16u

/* A few items (about 1 in 64) are slow, so that workers finish out of order. */
static int32_t jittery_map(void *user, uint64_t in, uint64_t *out) {
    uint64_t h = tu_mix64(in);
    uint32_t w = tu_current_worker();
    uint64_t *bad_worker = (uint64_t *)user;
    if (w >= ORDER_WORKERS) {
        TU_ADD(bad_worker, 1);
    }
    if ((h & 63u) == 0) {
        tu_sleep_us((uint32_t)(20u + (h >> 58)));
    } else if ((h & 7u) == 0) {
        tu_spin(2000);
    }
    *out = in;
    return 0;
}

typedef struct seq_sink {
    tu_tracker t;
    uint64_t expected_next; /* ordered: the next item expected */
    uint64_t order_errors;
    uint64_t first_error_item;
    uint64_t last_per_key[ORDER_KEYS];  /* per-key: last item + 1 seen for the key */
    uint32_t worker_of_key[ORDER_KEYS]; /* per-key sink: worker that handled the key (+1) */
    uint64_t key_worker_errors;
} seq_sink;

static int32_t ordered_sink(void *user, uint64_t item) {
    seq_sink *s = (seq_sink *)user;
    if (item != s->expected_next && s->order_errors++ == 0) {
        s->first_error_item = item;
    }
    s->expected_next = item + 1;
    tu_tracker_deliver(&s->t, item);
    return 0;
}

static int32_t per_key_sink(void *user, uint64_t item) {
    seq_sink *s = (seq_sink *)user;
    uint64_t key = item % ORDER_KEYS;
    uint32_t w = tu_current_worker();
    /* Each key is handled by one worker at a time, so its slots are not shared concurrently. */
    if (s->worker_of_key[key] == 0) {
        s->worker_of_key[key] = w + 1;
    } else if (s->worker_of_key[key] != w + 1) {
        TU_ADD(&s->key_worker_errors, 1);
    }
    if (item + 1 <= s->last_per_key[key]) {
        if (TU_ADD(&s->order_errors, 1) == 1) {
            s->first_error_item = item;
        }
    }
    s->last_per_key[key] = item + 1;
    tu_tracker_deliver(&s->t, item);
    return 0;
}

static const uint64_t key_table[ORDER_KEYS] = {0, 1, 2,  3,  4,  5,  6,  7,
                                               8, 9, 10, 11, 12, 13, 14, 15};

/* Key = item % ORDER_KEYS; the bytes live in a constant table, so they are always valid. */
static int32_t mod_key(void *user, uint64_t item, const void **key, size_t *len) {
    (void)user;
    *key = &key_table[item % ORDER_KEYS];
    *len = sizeof key_table[0];
    return 0;
}

TU_RUNTIME_FIXTURE(ORDER_WORKERS);

static void run_ordered(uint32_t reorder_window) {
    seq_sink s;
    tu_range_source src = {0, ORDER_N, 0};
    uint64_t bad_worker = 0;
    uint32_t map = 0, sink = 0;
    fluxus_stage_stats st;
    fluxus_pipeline *p;

    memset(&s, 0, sizeof s);
    tu_tracker_init(&s.t, ORDER_N);
    p = tu_pipeline(g_rt, "ordered", &s.t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 8));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, tu_user_free));
    TU_OK(fluxus_pipeline_add_map(&map, p, "jitter", jittery_map, &bad_worker, tu_user_free));
    TU_OK(fluxus_stage_set_workers(p, map, ORDER_WORKERS));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_ORDERED));
    if (reorder_window != 0) {
        TU_OK(fluxus_stage_set_reorder_window(p, map, reorder_window));
    }
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", ordered_sink, &s, tu_user_free));
    tu_run_expect(p, FLUXUS_OK);

    if (s.order_errors != 0) {
        fail_msg("%llu items out of order, first %llu", (unsigned long long)s.order_errors,
                 (unsigned long long)s.first_error_item);
    }
    assert_int_equal(s.t.delivered_total, ORDER_N);
    assert_int_equal(s.expected_next, ORDER_N);
    assert_int_equal(TU_LOAD(&bad_worker), 0);
    tu_stage_stats(p, map, &st);
    assert_int_equal(st.workers, ORDER_WORKERS);
    assert_int_equal(st.in, ORDER_N);
    assert_int_equal(st.out, ORDER_N);
    tu_check_conservation(p, &s.t, 0);
    tu_tracker_check_once(&s.t, 0, ORDER_N);
    assert_int_equal(s.t.freed_total, 0);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    tu_tracker_destroy(&s.t);
}

static void test_ordered_map_with_four_workers_preserves_input_order(void **state) {
    (void)state;
    run_ordered(0);
}

static void test_ordered_map_with_a_one_batch_reorder_window_preserves_input_order(void **state) {
    (void)state;
    run_ordered(1);
}

static void test_per_key_map_with_four_workers_keeps_each_key_in_order(void **state) {
    seq_sink s;
    tu_range_source src = {0, ORDER_N, 0};
    uint64_t bad_worker = 0;
    uint32_t map = 0;
    fluxus_pipeline *p;
    (void)state;

    memset(&s, 0, sizeof s);
    tu_tracker_init(&s.t, ORDER_N);
    p = tu_pipeline(g_rt, "per_key", &s.t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 8));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "jitter", jittery_map, &bad_worker, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, ORDER_WORKERS));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_PER_KEY));
    TU_OK(fluxus_stage_set_key_fn(p, map, mod_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", per_key_sink, &s, NULL));
    tu_run_expect(p, FLUXUS_OK);

    if (s.order_errors != 0) {
        fail_msg("%llu items out of per-key order, first %llu", (unsigned long long)s.order_errors,
                 (unsigned long long)s.first_error_item);
    }
    assert_int_equal(TU_LOAD(&bad_worker), 0);
    assert_int_equal(s.t.delivered_total, ORDER_N);
    tu_check_conservation(p, &s.t, 0);
    tu_tracker_check_once(&s.t, 0, ORDER_N);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&s.t);
}

static void test_per_key_sink_with_four_workers_keeps_keys_on_one_worker_in_order(void **state) {
    seq_sink s;
    tu_range_source src = {0, ORDER_N, 0};
    uint32_t sink = 0, k;
    fluxus_pipeline *p;
    (void)state;

    memset(&s, 0, sizeof s);
    tu_tracker_init(&s.t, ORDER_N);
    p = tu_pipeline(g_rt, "per_key_sink", &s.t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 8));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", per_key_sink, &s, NULL));
    TU_OK(fluxus_stage_set_workers(p, sink, ORDER_WORKERS));
    TU_OK(fluxus_stage_set_order(p, sink, FLUXUS_ORDER_PER_KEY));
    TU_OK(fluxus_stage_set_key_fn(p, sink, mod_key, NULL, NULL));
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(s.order_errors, 0);
    assert_int_equal(s.key_worker_errors, 0);
    for (k = 0; k < ORDER_KEYS; k++) {
        assert_true(s.worker_of_key[k] >= 1 && s.worker_of_key[k] <= ORDER_WORKERS);
    }
    assert_int_equal(s.t.delivered_total, ORDER_N);
    tu_check_conservation(p, &s.t, 0);
    tu_tracker_check_once(&s.t, 0, ORDER_N);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&s.t);
}

static void test_unordered_map_delivers_every_item_exactly_once(void **state) {
    tu_tracker t;
    tu_range_source src = {0, ORDER_N, 0};
    uint64_t bad_worker = 0;
    uint32_t map = 0;
    fluxus_pipeline *p;
    (void)state;

    tu_tracker_init(&t, ORDER_N);
    p = tu_pipeline(g_rt, "unordered", &t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 8));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "jitter", jittery_map, &bad_worker, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, ORDER_WORKERS));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    /* Set equality: each of the N inputs arrives once, nothing else arrives. */
    assert_int_equal(t.delivered_total, ORDER_N);
    assert_int_equal(t.out_of_range, 0);
    tu_tracker_check_once(&t, 0, ORDER_N);
    assert_int_equal(t.freed_total, 0);
    assert_int_equal(TU_LOAD(&bad_worker), 0);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ordered_map_with_four_workers_preserves_input_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_ordered_map_with_a_one_batch_reorder_window_preserves_input_order, setup,
            teardown),
        cmocka_unit_test_setup_teardown(test_per_key_map_with_four_workers_keeps_each_key_in_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_per_key_sink_with_four_workers_keeps_keys_on_one_worker_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unordered_map_delivers_every_item_exactly_once, setup,
                                        teardown),
    };
    return TU_RUN_GROUP(tests);
}
