/*
 * Callback failures under each error policy (skip, dead-letter, fail-fast) keep the outcome
 * accounting exact, and flat-map stages account for the items they emit. (An exception escaping a
 * callback cannot be produced from C; the C++ tests cover FLUXUS_EEXCEPTION.)
 */
#include "test_util.h"

#ifndef ERRORS_N
#define ERRORS_N 20000u
#endif
#define MAP_STATUS 42
#define SINK_STATUS 7

/* Deterministic "random" failure choices. */
static int map_fails(uint64_t item) {
    return tu_mix64(item) % 10u == 0;
}
static int sink_fails(uint64_t item) {
    return tu_mix64(item ^ 0xABCDEFull) % 13u == 0;
}

typedef struct err_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
    uint32_t map_stage;
    uint32_t sink_stage;
    uint64_t fail_only; /* fail-fast test: the single item that fails (else UINT64_MAX) */
    uint64_t dl_calls;
    uint64_t dl_bad;          /* dead-letter calls whose failure details were wrong */
    uint64_t dl_freed_before; /* dead-letter calls for items already destroyed */
    uint64_t dl_from_map;
    uint64_t dl_from_sink;
} err_ctx;

static int32_t failing_map(void *user, uint64_t in, uint64_t *out) {
    err_ctx *c = (err_ctx *)user;
    if (c->fail_only != UINT64_MAX ? in == c->fail_only : map_fails(in)) {
        return MAP_STATUS;
    }
    *out = in;
    return 0;
}

static int32_t failing_sink(void *user, uint64_t item) {
    err_ctx *c = (err_ctx *)user;
    if (c->fail_only == UINT64_MAX && sink_fails(item)) {
        return SINK_STATUS;
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void counting_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    err_ctx *c = (err_ctx *)user;
    const char *name = tu_failure_stage_name(f);
    const char *msg = tu_failure_message(f);
    uint32_t idx = tu_failure_stage_index(f);
    int32_t status = tu_failure_status(f);
    int ok = name != NULL && msg != NULL && tu_failure_attempts(f) == 1;

    TU_ADD(&c->dl_calls, 1);
    if (ok && idx == c->map_stage) {
        ok = strcmp(name, "mapper") == 0 && status == MAP_STATUS && map_fails(item);
        TU_ADD(&c->dl_from_map, 1);
    } else if (ok && idx == c->sink_stage) {
        ok = strcmp(name, "sink") == 0 && status == SINK_STATUS && sink_fails(item);
        TU_ADD(&c->dl_from_sink, 1);
    } else {
        ok = 0;
    }
    if (!ok) {
        TU_ADD(&c->dl_bad, 1);
    }
    /* The item is borrowed: its destructor runs only after this callback returns. */
    if (item < c->t.n && TU_LOAD(&c->t.freed[item]) != 0) {
        TU_ADD(&c->dl_freed_before, 1);
    }
}

TU_RUNTIME_FIXTURE(2);

static fluxus_pipeline *build(err_ctx *c, int32_t policy, tu_range_source *src) {
    fluxus_pipeline *p;
    memset(c, 0, sizeof *c);
    c->fail_only = UINT64_MAX;
    tu_tracker_init(&c->t, ERRORS_N);
    p = tu_pipeline(g_rt, "errors", &c->t);
    c->p = p;
    TU_OK(fluxus_pipeline_set_batch_size(p, 32));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, tu_user_free));
    TU_OK(fluxus_pipeline_add_map(&c->map_stage, p, "mapper", failing_map, c, tu_user_free));
    TU_OK(fluxus_stage_set_error_policy(p, c->map_stage, policy));
    TU_OK(fluxus_pipeline_add_sink(&c->sink_stage, p, "sink", failing_sink, c, tu_user_free));
    TU_OK(fluxus_stage_set_error_policy(p, c->sink_stage, policy));
    return p;
}

static void expected_failures(uint64_t *at_map, uint64_t *at_sink) {
    uint64_t i;
    *at_map = *at_sink = 0;
    for (i = 0; i < ERRORS_N; i++) {
        if (map_fails(i)) {
            ++*at_map;
        } else if (sink_fails(i)) {
            ++*at_sink;
        }
    }
}

/* Each item was delivered or destroyed once, and destroyed exactly when its callback failed. */
static void check_items(const err_ctx *c) {
    uint64_t i;
    tu_tracker_check_once(&c->t, 0, ERRORS_N);
    for (i = 0; i < ERRORS_N; i++) {
        uint32_t should_fail = map_fails(i) || sink_fails(i);
        if (c->t.freed[i] != should_fail) {
            fail_msg("item %llu destroyed %u times, expected %u", (unsigned long long)i,
                     c->t.freed[i], should_fail);
        }
    }
}

static void test_skip_policy_counts_failures_and_destroys_failed_items(void **state) {
    err_ctx c;
    tu_range_source src = {0, ERRORS_N, 0};
    uint64_t at_map, at_sink;
    fluxus_pipeline_stats s;
    fluxus_stage_stats ms, ss;
    fluxus_pipeline *p = build(&c, FLUXUS_ERROR_SKIP, &src);
    (void)state;

    expected_failures(&at_map, &at_sink);
    assert_true(at_map > 0 && at_sink > 0);
    tu_run_expect(p, FLUXUS_OK);

    tu_stats(p, &s);
    assert_int_equal(s.admitted, ERRORS_N);
    assert_int_equal(s.failed, at_map + at_sink);
    assert_int_equal(s.delivered, ERRORS_N - at_map - at_sink);
    assert_int_equal(s.dead_lettered, 0);
    assert_int_equal(s.cancelled, 0);
    assert_int_equal(s.result, FLUXUS_OK);
    tu_stage_stats(p, c.map_stage, &ms);
    tu_stage_stats(p, c.sink_stage, &ss);
    assert_int_equal(ms.failed, at_map);
    assert_int_equal(ms.out, ERRORS_N - at_map);
    assert_int_equal(ss.failed, at_sink);
    assert_int_equal(ss.in, ERRORS_N - at_map);
    tu_check_conservation(p, &c.t, 0);
    check_items(&c);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    tu_tracker_destroy(&c.t);
}

static void test_dead_letter_policy_hands_failures_to_the_callback_with_details(void **state) {
    err_ctx c;
    tu_range_source src = {0, ERRORS_N, 0};
    uint64_t at_map, at_sink;
    fluxus_pipeline_stats s;
    fluxus_pipeline *p = build(&c, FLUXUS_ERROR_DEAD_LETTER, &src);
    (void)state;

    TU_OK(fluxus_pipeline_set_dead_letter(p, counting_dead_letter, &c, tu_user_free));
    expected_failures(&at_map, &at_sink);
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.dl_bad, 0);
    assert_int_equal(c.dl_freed_before, 0);
    assert_int_equal(c.dl_calls, at_map + at_sink);
    assert_int_equal(c.dl_from_map, at_map);
    assert_int_equal(c.dl_from_sink, at_sink);
    tu_stats(p, &s);
    assert_int_equal(s.dead_lettered, at_map + at_sink);
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.delivered, ERRORS_N - at_map - at_sink);
    tu_check_conservation(p, &c.t, 0);
    check_items(&c);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 4);
    tu_tracker_destroy(&c.t);
}

static void test_fail_fast_policy_stops_the_pipeline_and_cancels_the_rest(void **state) {
    err_ctx c;
    tu_range_source src = {0, ERRORS_N, 0};
    fluxus_pipeline_stats s;
    fluxus_stage_stats ms;
    tu_msg msg;
    fluxus_pipeline *p = build(&c, FLUXUS_ERROR_FAIL_FAST, &src);
    (void)state;

    c.fail_only = ERRORS_N / 4;
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT_MSG(FLUXUS_EFAILED, tu_wait(p), &msg);
    assert_true(msg.text[0] != '\0');
    /* Waiting again gives the same result. */
    TU_EXPECT(FLUXUS_EFAILED, fluxus_pipeline_wait(p, 0));
    assert_int_equal(tu_is_cancelled(p), 1);

    tu_stats(p, &s);
    assert_int_equal(s.result, FLUXUS_EFAILED);
    assert_int_equal(s.failed, 1);
    assert_true(s.delivered < ERRORS_N);
    tu_stage_stats(p, c.map_stage, &ms);
    assert_int_equal(ms.failed, 1);
    /* The failed item itself was destroyed, and it never reached the sink. */
    assert_int_equal(c.t.freed[ERRORS_N / 4], 1);
    assert_int_equal(c.t.delivered[ERRORS_N / 4], 0);
    /* Everything before it went through (the map runs in order on one worker). */
    tu_tracker_check_once(&c.t, 0, ERRORS_N / 4);
    tu_check_conservation(p, &c.t, 0);
    /* Admitted items ended once; the rest were never pulled. */
    tu_tracker_check_once(&c.t, 0, s.admitted);
    tu_tracker_check_untouched(&c.t, s.admitted, ERRORS_N);
    assert_int_equal(src.next, s.admitted);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.t);
}

/* ----- source errors ----- */

#define SOURCE_ERROR 77

typedef struct bad_source {
    uint64_t next;
    uint64_t fail_at;
    uint64_t calls_after_error;
    int failed;
} bad_source;

static int32_t failing_pull(void *user, uint64_t *item) {
    bad_source *s = (bad_source *)user;
    if (s->failed) {
        s->calls_after_error++;
        return SOURCE_ERROR;
    }
    if (s->next == s->fail_at) {
        s->failed = 1;
        return SOURCE_ERROR;
    }
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}

static void test_source_error_stops_the_pipeline_with_esource(void **state) {
    tu_tracker t;
    bad_source src = {0, 5000, 0, 0};
    fluxus_pipeline_stats s;
    tu_msg msg;
    fluxus_pipeline *p;
    (void)state;

    tu_tracker_init(&t, ERRORS_N);
    p = tu_pipeline(g_rt, "bad_source", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", failing_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "map", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT_MSG(FLUXUS_ESOURCE, tu_wait(p), &msg);
    assert_true(msg.text[0] != '\0');
    assert_int_equal(src.calls_after_error, 0); /* never called again after its error */
    tu_stats(p, &s);
    assert_int_equal(s.result, FLUXUS_ESOURCE);
    assert_int_equal(s.admitted, 5000);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, 5000);
    tu_tracker_check_untouched(&t, 5000, ERRORS_N);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

/* ----- flat map ----- */

#define EMIT_FLAG (1ull << 40)

typedef struct fm_ctx {
    tu_tracker inputs;  /* inputs: destructor calls, indexed by item */
    uint64_t emitted;   /* items emitted by the callback */
    uint64_t delivered; /* emitted items that reached the sink */
    uint64_t delivered_inputs;
    uint64_t emit_errors;
    int keep;       /* re-emit the input and keep it */
    int fail_every; /* fail every n-th input after one emit (0 = never) */
} fm_ctx;

static int32_t fan_out(void *user, uint64_t item, fluxus_emitter *em) {
    fm_ctx *c = (fm_ctx *)user;
    uint64_t k = c->fail_every ? 1 : item % 4u, j;
    if (c->keep) {
        if (fluxus_emitter_emit(em, item) != FLUXUS_OK || fluxus_emitter_keep_input(em) != FLUXUS_OK) {
            TU_ADD(&c->emit_errors, 1);
        }
        TU_ADD(&c->emitted, 1);
    }
    for (j = 0; j < k; j++) {
        if (fluxus_emitter_emit(em, EMIT_FLAG | (item << 2) | j) != FLUXUS_OK) {
            TU_ADD(&c->emit_errors, 1);
        }
        TU_ADD(&c->emitted, 1);
    }
    if (c->fail_every && item % (uint64_t)c->fail_every == 0) {
        return 5;
    }
    return 0;
}

static int32_t fm_sink(void *user, uint64_t item) {
    fm_ctx *c = (fm_ctx *)user;
    if (item & EMIT_FLAG) {
        TU_ADD(&c->delivered, 1);
    } else {
        TU_ADD(&c->delivered_inputs, 1);
        tu_tracker_deliver(&c->inputs, item);
    }
    return 0;
}

static fluxus_pipeline *build_fm(fm_ctx *c, tu_range_source *src, uint32_t *fm_stage) {
    fluxus_pipeline *p;
    tu_tracker_init(&c->inputs, ERRORS_N);
    p = tu_pipeline(g_rt, "flat", &c->inputs);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_flat_map(fm_stage, p, "fan_out", fan_out, c, tu_user_free));
    TU_OK(fluxus_stage_set_error_policy(p, *fm_stage, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", fm_sink, c, NULL));
    return p;
}

static void test_flat_map_admits_emitted_items_and_filters_its_inputs(void **state) {
    fm_ctx c;
    tu_range_source src = {0, ERRORS_N, 0};
    uint32_t fm = 0;
    uint64_t i, expect_emitted = 0;
    fluxus_pipeline_stats s;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    p = build_fm(&c, &src, &fm);
    for (i = 0; i < ERRORS_N; i++) {
        expect_emitted += i % 4u;
    }
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.emit_errors, 0);
    assert_int_equal(c.emitted, expect_emitted);
    assert_int_equal(c.delivered, expect_emitted);
    assert_int_equal(c.delivered_inputs, 0);
    tu_stats(p, &s);
    assert_int_equal(s.admitted, ERRORS_N + expect_emitted);
    assert_int_equal(s.filtered, ERRORS_N);
    assert_int_equal(s.delivered, expect_emitted);
    tu_stage_stats(p, fm, &st);
    assert_int_equal(st.in, ERRORS_N);
    assert_int_equal(st.out, expect_emitted);
    assert_int_equal(st.filtered, ERRORS_N);
    /* Every input was consumed: destroyed exactly once. Emitted items were all delivered. */
    tu_check_conservation(p, &c.inputs, 0);
    tu_tracker_check_once(&c.inputs, 0, ERRORS_N);
    assert_int_equal(c.inputs.freed_total, ERRORS_N);
    assert_int_equal(c.inputs.out_of_range, 0);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    tu_tracker_destroy(&c.inputs);
}

static void test_flat_map_that_keeps_its_input_does_not_destroy_it(void **state) {
    fm_ctx c;
    tu_range_source src = {0, ERRORS_N, 0};
    uint32_t fm = 0;
    uint64_t i, extra = 0;
    fluxus_pipeline_stats s;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    c.keep = 1;
    p = build_fm(&c, &src, &fm);
    for (i = 0; i < ERRORS_N; i++) {
        extra += i % 4u;
    }
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.emit_errors, 0);
    tu_stats(p, &s);
    assert_int_equal(s.admitted, ERRORS_N + ERRORS_N + extra);
    assert_int_equal(s.filtered, ERRORS_N);
    assert_int_equal(s.delivered, ERRORS_N + extra);
    assert_int_equal(c.delivered_inputs, ERRORS_N);
    /* The inputs re-emitted as items reached the sink; the kept inputs were never destroyed. */
    tu_check_conservation(p, &c.inputs, ERRORS_N);
    assert_int_equal(c.inputs.freed_total, 0);
    tu_tracker_check_once(&c.inputs, 0, ERRORS_N);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.inputs);
}

static void test_flat_map_failure_keeps_items_emitted_before_it(void **state) {
    fm_ctx c;
    tu_range_source src = {0, ERRORS_N, 0};
    uint32_t fm = 0;
    uint64_t fails = (ERRORS_N + 4) / 5; /* items 0, 5, 10, ... */
    fluxus_pipeline_stats s;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    c.fail_every = 5;
    p = build_fm(&c, &src, &fm);
    tu_run_expect(p, FLUXUS_OK);

    tu_stats(p, &s);
    assert_int_equal(s.admitted, 2u * ERRORS_N);
    assert_int_equal(s.delivered, ERRORS_N); /* one emitted item per input, failed or not */
    assert_int_equal(s.failed, fails);
    assert_int_equal(s.filtered, ERRORS_N - fails);
    tu_stage_stats(p, fm, &st);
    assert_int_equal(st.failed, fails);
    tu_check_conservation(p, &c.inputs, 0);
    tu_tracker_check_once(&c.inputs, 0, ERRORS_N); /* each input destroyed once */
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c.inputs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_skip_policy_counts_failures_and_destroys_failed_items,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_dead_letter_policy_hands_failures_to_the_callback_with_details, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_fail_fast_policy_stops_the_pipeline_and_cancels_the_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_source_error_stops_the_pipeline_with_esource, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_flat_map_admits_emitted_items_and_filters_its_inputs,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_flat_map_that_keeps_its_input_does_not_destroy_it,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_flat_map_failure_keeps_items_emitted_before_it, setup,
                                        teardown),
    };
    return TU_RUN_GROUP(tests);
}
