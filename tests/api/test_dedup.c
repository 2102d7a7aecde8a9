/*
 * Dedup: the set of items passed equals a reference set computed here, with word keys, byte keys
 * (key function), several workers (sharded sets), and a bounded key set.
 */
#include "test_util.h"

#ifndef DEDUP_N
#define DEDUP_N 1000000u /* reference test: 1 M pseudo-random keys */
#endif
#ifndef DEDUP_RANGE
#define DEDUP_RANGE 600000u
#endif
#ifndef DEDUP_SMALL_N
#define DEDUP_SMALL_N 50000u
#endif

/* Source: the i-th item is key_of(i), for i < n. */
typedef struct key_source {
    uint64_t i, n, range, seed;
} key_source;

static uint64_t key_at(uint64_t seed, uint64_t i, uint64_t range) {
    return tu_mix64(seed + i) % range;
}

static int32_t key_pull(void *user, uint64_t *item) {
    key_source *s = (key_source *)user;
    if (s->i >= s->n) {
        return FLUXUS_PULL_END;
    }
    *item = key_at(s->seed, s->i, s->range);
    s->i++;
    return FLUXUS_PULL_ITEM;
}

/* Sink recording the sequence of delivered keys. */
typedef struct seq {
    uint64_t *items;
    uint64_t count, cap;
    uint64_t overflow;
} seq;

static int32_t seq_sink(void *user, uint64_t item) {
    seq *s = (seq *)user;
    if (s->count < s->cap) {
        s->items[s->count] = item;
    } else {
        s->overflow++;
    }
    s->count++;
    return 0;
}

/* Reference: the keys in order of first occurrence, computed with a bitmap "seen" set. */
static uint64_t reference_first_seen(uint64_t seed, uint64_t n, uint64_t range, uint64_t *out,
                                     uint8_t *seen) {
    uint64_t i, unique = 0;
    memset(seen, 0, (size_t)range);
    for (i = 0; i < n; i++) {
        uint64_t k = key_at(seed, i, range);
        if (!seen[k]) {
            seen[k] = 1;
            out[unique++] = k;
        }
    }
    return unique;
}

TU_RUNTIME_FIXTURE(2);

typedef struct dedup_run {
    tu_tracker t; /* destructor calls per key value */
    seq out;
    uint64_t *ref;
    uint8_t *seen;
    uint64_t unique;
    fluxus_pipeline *p;
    uint32_t dedup;
} dedup_run;

static void run_word_dedup(dedup_run *r, uint64_t n, uint64_t range, uint32_t workers) {
    key_source src;
    uint64_t i;
    fluxus_stage_stats st;
    fluxus_pipeline_stats s;

    memset(r, 0, sizeof *r);
    src.i = 0;
    src.n = n;
    src.range = range;
    src.seed = 12345;
    r->ref = (uint64_t *)malloc((size_t)range * sizeof(uint64_t));
    r->seen = (uint8_t *)malloc((size_t)range);
    r->out.items = (uint64_t *)malloc((size_t)range * sizeof(uint64_t));
    assert_non_null(r->ref);
    assert_non_null(r->seen);
    assert_non_null(r->out.items);
    r->out.cap = range;
    r->unique = reference_first_seen(src.seed, n, range, r->ref, r->seen);
    tu_tracker_init(&r->t, range);

    r->p = tu_pipeline(g_rt, "dedup", &r->t);
    TU_OK(fluxus_pipeline_set_pull_source(r->p, "keys", key_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&r->dedup, r->p, "dedup"));
    if (workers > 1) {
        TU_OK(fluxus_stage_set_workers(r->p, r->dedup, workers));
    }
    TU_OK(fluxus_pipeline_add_sink(NULL, r->p, "sink", seq_sink, &r->out, NULL));
    tu_run_expect(r->p, FLUXUS_OK);

    assert_int_equal(src.i, n);
    assert_int_equal(r->out.overflow, 0);
    assert_int_equal(r->out.count, r->unique);
    /* Set equality with the reference: every delivered key is in it, and none twice. */
    memset(r->seen, 0, (size_t)range);
    for (i = 0; i < r->out.count; i++) {
        uint64_t k = r->out.items[i];
        if (k >= range || r->seen[k]) {
            fail_msg("key %llu delivered twice or out of range", (unsigned long long)k);
        }
        r->seen[k] = 1;
    }
    for (i = 0; i < r->unique; i++) {
        assert_true(r->seen[r->ref[i]]);
    }
    /* Each key's repeats were destroyed: occurrences - 1 destructor calls per key. */
    assert_int_equal(r->t.freed_total, n - r->unique);
    tu_stats(r->p, &s);
    assert_int_equal(s.admitted, n);
    assert_int_equal(s.delivered, r->unique);
    assert_int_equal(s.filtered, n - r->unique);
    tu_stage_stats(r->p, r->dedup, &st);
    assert_int_equal(st.workers, workers);
    assert_int_equal(st.filtered, n - r->unique);
    assert_int_equal(st.dedup_keys, r->unique);
    assert_int_equal(st.dedup_forgotten, 0);
    tu_check_conservation(r->p, &r->t, 0);
}

static void free_run(dedup_run *r) {
    TU_OK(fluxus_pipeline_free(r->p));
    tu_tracker_destroy(&r->t);
    free(r->ref);
    free(r->seen);
    free(r->out.items);
}

static void test_dedup_passes_exactly_the_reference_set_of_a_million_keys(void **state) {
    dedup_run r;
    uint64_t i;
    (void)state;

    run_word_dedup(&r, DEDUP_N, DEDUP_RANGE, 1);
    /* One worker, ordered: the keys come out in order of first occurrence. */
    for (i = 0; i < r.unique; i++) {
        if (r.out.items[i] != r.ref[i]) {
            fail_msg("position %llu: got key %llu, expected %llu", (unsigned long long)i,
                     (unsigned long long)r.out.items[i], (unsigned long long)r.ref[i]);
        }
    }
    free_run(&r);
}

static void test_dedup_with_two_workers_gives_the_same_unique_set(void **state) {
    dedup_run r;
    (void)state;

    run_word_dedup(&r, DEDUP_N / 4, DEDUP_RANGE / 4, 2);
    free_run(&r);
}

/* ----- byte keys ----- */

#define BYTE_KEYS 5000u
static char key_strings[BYTE_KEYS][24];
static size_t key_lengths[BYTE_KEYS];

/* Key of item i: the string "key-<i % BYTE_KEYS>" (variable length), from a constant table. */
static int32_t string_key(void *user, uint64_t item, const void **key, size_t *len) {
    uint64_t *calls = (uint64_t *)user;
    TU_ADD(calls, 1);
    *key = key_strings[item % BYTE_KEYS];
    *len = key_lengths[item % BYTE_KEYS];
    return 0;
}

static void test_dedup_with_a_key_function_compares_key_bytes(void **state) {
    tu_tracker t;
    tu_range_source src = {0, DEDUP_SMALL_N, 0};
    uint64_t key_calls = 0;
    uint32_t dedup = 0, i;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    for (i = 0; i < BYTE_KEYS; i++) {
        key_lengths[i] = (size_t)snprintf(key_strings[i], sizeof key_strings[i], "key-%u", i);
    }
    tu_tracker_init(&t, DEDUP_SMALL_N);
    p = tu_pipeline(g_rt, "dedup_bytes", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&dedup, p, "dedup"));
    TU_OK(fluxus_stage_set_key_fn(p, dedup, string_key, &key_calls, tu_user_free));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    /* Items 0..BYTE_KEYS-1 carry the first occurrence of each key; all later items repeat. */
    assert_int_equal(t.delivered_total, BYTE_KEYS);
    tu_tracker_check_once(&t, 0, DEDUP_SMALL_N);
    for (i = 0; i < BYTE_KEYS; i++) {
        assert_int_equal(t.delivered[i], 1);
    }
    assert_true(key_calls >= DEDUP_SMALL_N);
    tu_stage_stats(p, dedup, &st);
    assert_int_equal(st.dedup_keys, BYTE_KEYS);
    assert_int_equal(st.filtered, DEDUP_SMALL_N - BYTE_KEYS);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    tu_tracker_destroy(&t);
}

/* A key function that fails every 100th item: those items fail at the dedup stage. */
static int32_t picky_key(void *user, uint64_t item, const void **key, size_t *len) {
    if (item % 100u == 0) {
        return 3;
    }
    return string_key(user, item, key, len);
}

static void test_dedup_key_function_failure_fails_the_item(void **state) {
    tu_tracker t;
    tu_range_source src = {0, DEDUP_SMALL_N, 0};
    uint64_t key_calls = 0, i, expect_failed = 0, expect_delivered = 0;
    uint32_t dedup = 0;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    for (i = 0; i < BYTE_KEYS; i++) {
        key_lengths[i] =
            (size_t)snprintf(key_strings[i], sizeof key_strings[i], "key-%u", (unsigned)i);
    }
    /* Item i has key i % BYTE_KEYS; the first item of a key that does not fail passes. Items
     * with i % 100 == 0 fail, and since BYTE_KEYS is a multiple of 100, so do all their repeats. */
    for (i = 0; i < DEDUP_SMALL_N; i++) {
        if (i % 100u == 0) {
            expect_failed++;
        } else if (i < BYTE_KEYS) {
            expect_delivered++;
        }
    }
    tu_tracker_init(&t, DEDUP_SMALL_N);
    p = tu_pipeline(g_rt, "dedup_picky", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&dedup, p, "dedup"));
    TU_OK(fluxus_stage_set_key_fn(p, dedup, picky_key, &key_calls, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, dedup, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    tu_stage_stats(p, dedup, &st);
    assert_int_equal(st.failed, expect_failed);
    assert_int_equal(t.delivered_total, expect_delivered);
    assert_int_equal(st.filtered, DEDUP_SMALL_N - expect_failed - expect_delivered);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, DEDUP_SMALL_N);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

/* ----- bounded mode ----- */

#define BOUNDED_KEYS 10000u
#define BOUNDED_MAX 1000u

/* Key tables, filled before each run and only read while it runs. */
static uint64_t pair_keys[BOUNDED_KEYS];
#define CYCLE_KEYS 5000u
static uint64_t cycle_keys[CYCLE_KEYS];

/* Each key twice in a row: item j has key j / 2. */
static int32_t pair_key(void *user, uint64_t item, const void **key, size_t *len) {
    (void)user;
    *key = &pair_keys[(item / 2) % BOUNDED_KEYS];
    *len = sizeof pair_keys[0];
    return 0;
}

/* Keys cycle: item j has key j % CYCLE_KEYS. */
static int32_t cycle_key(void *user, uint64_t item, const void **key, size_t *len) {
    (void)user;
    *key = &cycle_keys[item % CYCLE_KEYS];
    *len = sizeof cycle_keys[0];
    return 0;
}

static void test_bounded_dedup_forgets_old_keys_but_remembers_recent_ones(void **state) {
    tu_tracker t;
    tu_range_source src = {0, 2 * BOUNDED_KEYS, 0};
    uint32_t dedup = 0, i;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    for (i = 0; i < BOUNDED_KEYS; i++) {
        pair_keys[i] = i;
    }
    tu_tracker_init(&t, 2 * BOUNDED_KEYS);
    p = tu_pipeline(g_rt, "dedup_bounded", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&dedup, p, "dedup"));
    TU_OK(fluxus_stage_set_key_fn(p, dedup, pair_key, NULL, NULL));
    TU_OK(fluxus_stage_set_dedup_max_keys(p, dedup, BOUNDED_MAX));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    /* The repeat comes right after its key, which is among the last max/2 keys: always caught. */
    assert_int_equal(t.delivered_total, BOUNDED_KEYS);
    for (i = 0; i < BOUNDED_KEYS; i++) {
        assert_int_equal(t.delivered[2 * i], 1);
        assert_int_equal(t.freed[2 * i + 1], 1);
    }
    tu_tracker_check_once(&t, 0, 2 * BOUNDED_KEYS);
    tu_stage_stats(p, dedup, &st);
    assert_true(st.dedup_forgotten > 0);
    assert_true(st.dedup_keys <= BOUNDED_MAX);
    assert_true(st.dedup_forgotten + st.dedup_keys == BOUNDED_KEYS);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

static void test_bounded_dedup_lets_a_forgotten_key_pass_again(void **state) {
    tu_tracker t;
    tu_range_source src = {0, 4 * CYCLE_KEYS, 0};
    uint32_t dedup = 0, i;
    fluxus_stage_stats st;
    fluxus_pipeline_stats s;
    fluxus_pipeline *p;
    (void)state;

    /* Keys 0..4999 cycled four times with room for about 1000 keys: 5000 other keys come between
     * two occurrences of a key, so every repeat was forgotten and passes again. */
    for (i = 0; i < CYCLE_KEYS; i++) {
        cycle_keys[i] = i;
    }
    tu_tracker_init(&t, 4 * CYCLE_KEYS);
    p = tu_pipeline(g_rt, "dedup_cycle", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&dedup, p, "dedup"));
    TU_OK(fluxus_stage_set_key_fn(p, dedup, cycle_key, NULL, NULL));
    TU_OK(fluxus_stage_set_dedup_max_keys(p, dedup, BOUNDED_MAX));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    tu_stats(p, &s);
    assert_int_equal(s.delivered, 4 * CYCLE_KEYS);
    assert_int_equal(s.filtered, 0);
    tu_stage_stats(p, dedup, &st);
    assert_true(st.dedup_forgotten > 0);
    assert_true(st.dedup_keys <= BOUNDED_MAX);
    tu_tracker_check_once(&t, 0, 4 * CYCLE_KEYS);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_dedup_passes_exactly_the_reference_set_of_a_million_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_with_two_workers_gives_the_same_unique_set,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_with_a_key_function_compares_key_bytes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dedup_key_function_failure_fails_the_item, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_bounded_dedup_forgets_old_keys_but_remembers_recent_ones, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounded_dedup_lets_a_forgotten_key_pass_again, setup,
                                        teardown),
    };
    return TU_RUN_GROUP(tests);
}
