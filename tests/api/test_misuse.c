/*
 * Misuse returns its documented code and never crashes: NULL and freed handles, NULL out
 * pointers, calls in the wrong state, out-of-range options, calls from inside callbacks. Also the
 * version and error-name functions.
 */
#include "test_util.h"

/* ----- callbacks that are never run (the pipelines using them are not started) ----- */

static int32_t nop_pull(void *user, uint64_t *item) {
    (void)user;
    (void)item;
    return FLUXUS_PULL_END;
}
static int32_t nop_pull_batch(void *user, uint64_t *items, uint32_t cap, uint32_t *count) {
    (void)user;
    (void)items;
    (void)cap;
    *count = 0;
    return FLUXUS_PULL_END;
}
static int32_t nop_map_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                             uint32_t count) {
    (void)user;
    (void)status;
    memcpy(out, in, count * sizeof *in);
    return 0;
}
static int32_t nop_filter(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    (void)item;
    *keep = 1;
    return 0;
}
static int32_t nop_filter_batch(void *user, const uint64_t *items, int32_t *keep, int32_t *status,
                                uint32_t count) {
    uint32_t i;
    (void)user;
    (void)items;
    (void)status;
    for (i = 0; i < count; i++) {
        keep[i] = 1;
    }
    return 0;
}
static int32_t nop_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    (void)user;
    return fluxus_emitter_emit(em, item);
}
static int32_t nop_flat_map_batch(void *user, const uint64_t *items, uint32_t count,
                                  fluxus_emitter *em) {
    uint32_t i;
    (void)user;
    for (i = 0; i < count; i++) {
        fluxus_emitter_emit(em, items[i]);
    }
    return 0;
}
static int32_t nop_sink(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}
static int32_t nop_sink_batch(void *user, const uint64_t *items, int32_t *status, uint32_t count) {
    (void)user;
    (void)items;
    (void)status;
    (void)count;
    return 0;
}
static void nop_item_free(void *user, uint64_t item) {
    (void)user;
    (void)item;
}
static void nop_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    (void)user;
    (void)item;
    (void)f;
}
static int32_t nop_init(void *user, uint32_t worker) {
    (void)user;
    (void)worker;
    return 0;
}
static void nop_close(void *user, uint32_t worker) {
    (void)user;
    (void)worker;
}
static int32_t nop_key(void *user, uint64_t item, const void **key, size_t *len) {
    static const uint64_t zero = 0;
    (void)user;
    (void)item;
    *key = &zero;
    *len = sizeof zero;
    return 0;
}
static void nop_log(void *user, int32_t level, const char *pl, const char *st, const char *msg) {
    (void)user;
    (void)level;
    (void)pl;
    (void)st;
    (void)msg;
}

static void test_version_macros_match_the_loaded_library(void **state) {
    (void)state;
    assert_int_equal(fluxus_version_number(), FLUXUS_VERSION_NUMBER);
    assert_int_equal(FLUXUS_VERSION_NUMBER, FLUXUS_VERSION_MAJOR * 10000 +
                                                FLUXUS_VERSION_MINOR * 100 + FLUXUS_VERSION_PATCH);
    assert_non_null(fluxus_version());
    assert_string_equal(fluxus_version(), FLUXUS_VERSION_STRING);
}

static void test_every_status_code_has_a_name_and_a_description(void **state) {
    static const struct {
        int32_t code;
        const char *name;
    } codes[] = {
        {FLUXUS_OK, "FLUXUS_OK"},
        {FLUXUS_EINVAL, "FLUXUS_EINVAL"},
        {FLUXUS_ESTATE, "FLUXUS_ESTATE"},
        {FLUXUS_ENOMEM, "FLUXUS_ENOMEM"},
        {FLUXUS_ERANGE, "FLUXUS_ERANGE"},
        {FLUXUS_EFULL, "FLUXUS_EFULL"},
        {FLUXUS_ETIMEDOUT, "FLUXUS_ETIMEDOUT"},
        {FLUXUS_ECANCELED, "FLUXUS_ECANCELED"},
        {FLUXUS_ECLOSED, "FLUXUS_ECLOSED"},
        {FLUXUS_EINCALLBACK, "FLUXUS_EINCALLBACK"},
        {FLUXUS_ECALLBACK, "FLUXUS_ECALLBACK"},
        {FLUXUS_EEXCEPTION, "FLUXUS_EEXCEPTION"},
        {FLUXUS_EFAILED, "FLUXUS_EFAILED"},
        {FLUXUS_EDROPPED, "FLUXUS_EDROPPED"},
        {FLUXUS_ENOTFOUND, "FLUXUS_ENOTFOUND"},
        {FLUXUS_ESOURCE, "FLUXUS_ESOURCE"},
        {FLUXUS_ELIMITED, "FLUXUS_ELIMITED"},
        {FLUXUS_ECIRCUITOPEN, "FLUXUS_ECIRCUITOPEN"},
        {FLUXUS_ENOROUTE, "FLUXUS_ENOROUTE"},
        {FLUXUS_EINTERNAL, "FLUXUS_EINTERNAL"},
        {FLUXUS_ENOTSUP, "FLUXUS_ENOTSUP"},
    };
    size_t i, j;
    (void)state;

    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        /* The values are pinned. */
        assert_int_equal(codes[i].code, -(int32_t)i);
        assert_string_equal(fluxus_err_name(codes[i].code), codes[i].name);
        assert_non_null(fluxus_strerror(codes[i].code));
        assert_true(fluxus_strerror(codes[i].code)[0] != '\0');
        assert_string_not_equal(fluxus_strerror(codes[i].code), "unknown error");
        for (j = 0; j < i; j++) {
            assert_string_not_equal(fluxus_strerror(codes[i].code), fluxus_strerror(codes[j].code));
        }
    }
    assert_string_equal(fluxus_strerror(-999), "unknown error");
    assert_string_equal(fluxus_strerror(INT32_MIN), "unknown error");
    /* Positive values are callback-defined failure statuses: described, never NULL. */
    assert_non_null(fluxus_strerror(5));
    assert_true(fluxus_strerror(5)[0] != '\0');
    assert_string_equal(fluxus_err_name(-999), "FLUXUS_UNKNOWN");
    assert_string_equal(fluxus_err_name(INT32_MAX), "FLUXUS_UNKNOWN");
}

static void *fresh_thread_message(void *arg) {
    const char *msg = fluxus_last_error_message();
    *(int *)arg = msg != NULL && msg[0] == '\0';
    return NULL;
}

static void test_last_error_message_describes_the_last_failure_per_thread(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    pthread_t th;
    int fresh_empty = 0;
    tu_msg msg;
    (void)state;

    TU_EXPECT_MSG(FLUXUS_ERANGE, fluxus_runtime_set_workers(rt, 5000), &msg);
    assert_true(msg.text[0] != '\0');
    /* Another thread has its own message: empty, since nothing failed there. */
    assert_int_equal(pthread_create(&th, NULL, fresh_thread_message, &fresh_empty), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(fresh_empty, 1);
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_runtime_new(NULL), &msg);
    assert_true(msg.text[0] != '\0');
    TU_OK(fluxus_runtime_free(rt));
}

static void test_null_handles_are_rejected_with_einval(void **state) {
    fluxus_pipeline_stats ps;
    fluxus_stage_stats ss;
    uint32_t u32 = 0, pushed = 0;
    int32_t i32 = 0;
    uint64_t items[2] = {1, 2};
    fluxus_pipeline *p = NULL;
    (void)state;

    ps.struct_size = sizeof ps;
    ss.struct_size = sizeof ss;

    /* runtime */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_new(NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_workers(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_get_workers(&u32, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_spin_us(NULL, 10));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_log(NULL, FLUXUS_LOG_WARN, nop_log, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_start(NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_run_once(&u32, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_run_for(NULL, 1));
    TU_OK(fluxus_runtime_free(NULL)); /* NULL is accepted and ignored */

    /* pipeline construction */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_new(&p, NULL, "x"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_item_free(NULL, nop_item_free, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_dead_letter(NULL, nop_dead_letter, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_fusion(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_batch_size(NULL, 16));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source(NULL, "s", nop_pull, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_set_pull_source_batch(NULL, "s", nop_pull_batch, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_poll_interval_us(NULL, 100));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_push_source(NULL, "s"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_push(NULL, 1, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_try_push(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_push_many(&pushed, NULL, items, 2, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_close_input(NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_pause(NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_resume(NULL));

    /* stages */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_map(&u32, NULL, "m", tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_add_map_batch(&u32, NULL, "m", nop_map_batch, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_filter(&u32, NULL, "f", nop_filter, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_add_filter_batch(&u32, NULL, "f", nop_filter_batch, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_add_flat_map(&u32, NULL, "f", nop_flat_map, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_add_flat_map_batch(&u32, NULL, "f", nop_flat_map_batch, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_sink(&u32, NULL, "s", nop_sink, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_add_sink_batch(&u32, NULL, "s", nop_sink_batch, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_dedup(&u32, NULL, "d"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_workers(NULL, 0, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_order(NULL, 0, FLUXUS_ORDER_ORDERED));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_reorder_window(NULL, 0, 4));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_queue_capacity(NULL, 0, 16));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_overflow(NULL, 0, FLUXUS_OVERFLOW_BLOCK, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_error_policy(NULL, 0, FLUXUS_ERROR_SKIP));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_worker_hooks(NULL, 0, nop_init, nop_close));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_key_fn(NULL, 0, nop_key, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_dedup_max_keys(NULL, 0, 100));

    /* running and stats */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_wait(NULL, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_drain(NULL, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_cancel(NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_cancelled(&i32, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_state(&i32, NULL));
    TU_OK(fluxus_pipeline_free(NULL)); /* NULL is accepted */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stats(&ps, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_stats(&ss, NULL, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stage_count(&u32, NULL));
    {
        const char *name = "untouched";
        TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_name(&name, NULL, 0));
        assert_string_equal(name, "untouched");
    }
    TU_EXPECT(FLUXUS_EINVAL, fluxus_emitter_emit(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_emitter_keep_input(NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_call_get_worker(&u32)); /* not inside a callback */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_call_get_worker(NULL));
}

/* '/' in a stage name is reserved for the stages of nested pipelines ("outer/inner"). */
static void test_a_stage_name_with_a_slash_is_refused(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = NULL;
    uint32_t s = 99;
    tu_msg m;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "names"));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_map(&s, p, "outer/inner", tu_identity_map, NULL,
                                                     NULL));
    tu_msg_take(&m);
    assert_non_null(strstr(m.text, "reserved"));
    assert_int_equal(s, 99);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_dedup(NULL, p, "/"));
    TU_OK(fluxus_pipeline_add_map(&s, p, "outer-inner", tu_identity_map, NULL, NULL));
    assert_int_equal(s, 0);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_null_out_pointers_and_null_callbacks_are_rejected_with_einval(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "p", NULL);
    fluxus_pipeline_stats ps;
    uint32_t sink = 0, pushed = 0;
    (void)state;

    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_get_workers(NULL, rt));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_new(NULL, rt, "x"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_state(NULL, p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stats(NULL, p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stage_count(NULL, p));
    /* struct_size below the 8-byte header is refused */
    ps.struct_size = 4;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stats(&ps, p));

    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source(p, "s", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source_batch(p, "s", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_map(NULL, p, "m", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_map_batch(NULL, p, "m", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_filter(NULL, p, "f", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_filter_batch(NULL, p, "f", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_flat_map(NULL, p, "f", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_flat_map_batch(NULL, p, "f", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_sink(NULL, p, "s", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_sink_batch(NULL, p, "s", NULL, NULL, NULL));
    /* The failed adds added nothing. */
    {
        uint32_t n = 99;
        TU_OK(fluxus_pipeline_get_stage_count(&n, p));
        assert_int_equal(n, 0);
    }

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", nop_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_push_many(&pushed, p, NULL, 3, 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    tu_free_all(p, rt);
}

static void test_out_of_range_options_are_rejected_with_erange(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "p", NULL);
    uint32_t map = 0, dedup = 0, workers = 0;
    (void)state;

    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_workers(rt, 1025));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_workers(rt, UINT32_MAX));
    TU_OK(fluxus_runtime_get_workers(&workers, rt));
    assert_int_equal(workers, 1); /* a refused value changes nothing */
    TU_OK(fluxus_runtime_set_workers(rt, 1024));
    TU_OK(fluxus_runtime_set_workers(rt, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_spin_us(rt, 100001));
    TU_OK(fluxus_runtime_set_spin_us(rt, 100000));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_log(rt, 5, nop_log, NULL, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_log(rt, -1, nop_log, NULL, NULL));

    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_fusion(p, 2));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_fusion(p, -1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_batch_size(p, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_batch_size(p, 65537));
    TU_OK(fluxus_pipeline_set_batch_size(p, 65536));
    TU_OK(fluxus_pipeline_set_batch_size(p, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_poll_interval_us(p, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_poll_interval_us(p, 60000001));
    TU_OK(fluxus_pipeline_set_poll_interval_us(p, 60000000));

    TU_OK(fluxus_pipeline_add_map(&map, p, "m", tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_workers(p, map, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_workers(p, map, 257));
    TU_OK(fluxus_stage_set_workers(p, map, 256));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_order(p, map, 3));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_order(p, map, -1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_reorder_window(p, map, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_reorder_window(p, map, 4097));
    TU_OK(fluxus_stage_set_reorder_window(p, map, 4096));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_queue_capacity(p, map, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_queue_capacity(p, map, (1u << 24) + 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_queue_capacity(p, map, UINT32_MAX));
    TU_OK(fluxus_stage_set_queue_capacity(p, map, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_overflow(p, map, 5, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_overflow(p, map, -1, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_error_policy(p, map, 3));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_error_policy(p, map, -1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_dedup_max_keys(p, map, 100)); /* not a dedup */

    TU_OK(fluxus_pipeline_add_dedup(&dedup, p, "d"));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_dedup_max_keys(p, dedup, 1));
    TU_OK(fluxus_stage_set_dedup_max_keys(p, dedup, 0));
    TU_OK(fluxus_stage_set_dedup_max_keys(p, dedup, 2));

    /* Bad stage indexes. */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_workers(p, 2, 1));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_order(p, 99, FLUXUS_ORDER_ORDERED));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_reorder_window(p, 99, 4));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_queue_capacity(p, 99, 4));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_overflow(p, 99, FLUXUS_OVERFLOW_BLOCK, 0));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_error_policy(p, 99, FLUXUS_ERROR_SKIP));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_worker_hooks(p, 99, nop_init, nop_close));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_key_fn(p, 99, nop_key, NULL, NULL));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_dedup_max_keys(p, UINT32_MAX, 100));
    {
        fluxus_stage_stats ss;
        ss.struct_size = sizeof ss;
        TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_get_stats(&ss, p, 2));
    }
    {
        const char *name = NULL;
        TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_get_name(&name, p, 2));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_name(NULL, p, map));
        TU_OK(fluxus_stage_get_name(&name, p, map));
        assert_string_equal(name, "m");
    }
    tu_free_all(p, rt);
}

static void test_start_checks_the_pipeline_shape(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p;
    uint32_t s = 0;
    tu_msg msg;
    (void)state;

    /* no source */
    p = tu_pipeline(rt, "no_source", NULL);
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", nop_sink, NULL, NULL));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &msg);
    assert_true(msg.text[0] != '\0');
    TU_OK(fluxus_pipeline_free(p));

    /* no sink */
    p = tu_pipeline(rt, "no_sink", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", nop_pull, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_free(p));

    /* empty */
    p = tu_pipeline(rt, "empty", NULL);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_wait(p, 0)); /* not started */
    TU_OK(fluxus_pipeline_free(p));

    /* dead-letter policy without a dead-letter callback */
    p = tu_pipeline(rt, "no_dead_letter", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", nop_pull, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&s, p, "sink", nop_sink, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_DEAD_LETTER));
    /* a NULL dead-letter callback is refused at the call (it used to pass, and start failed) */
    {
        tu_msg m;
        TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_set_dead_letter(p, NULL, NULL, NULL), &m);
        assert_non_null(strstr(m.text, "fluxus_pipeline_set_dead_letter"));
        assert_non_null(strstr(m.text, "NULL"));
    }
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_set_dead_letter(p, nop_dead_letter, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    TU_OK(fluxus_pipeline_free(p));

    /* a multi-worker sink that is not per-key */
    p = tu_pipeline(rt, "parallel_sink", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", nop_pull, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&s, p, "sink", nop_sink, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, s, 2));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_free(p));

    /* two sources; a stage after the sink */
    p = tu_pipeline(rt, "two_sources", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", nop_pull, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source(p, "src2", nop_pull, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_push_source(p, "src3"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", nop_sink, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_map(NULL, p, "late", tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_sink(NULL, p, "sink2", nop_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_free(p));

    TU_OK(fluxus_runtime_free(rt));
}

static void test_calls_in_the_wrong_state_return_estate(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "p", NULL);
    uint32_t s = 0;
    (void)state;

    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_close_input(p)); /* no source, not started */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_pause(p));       /* no source */
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_close_input(p)); /* not started */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_try_push(p, 1)); /* not started */
    TU_OK(fluxus_pipeline_add_sink(&s, p, "sink", nop_sink, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_wait(p, 0)); /* not started */
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_start(p)); /* started twice */

    /* Construction and options after start. */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_dedup(NULL, p, "d"));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_item_free(p, nop_item_free, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_dead_letter(p, nop_dead_letter, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_fusion(p, 0));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_batch_size(p, 8));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_poll_interval_us(p, 100));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_queue_capacity(p, s, 8));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_order(p, s, FLUXUS_ORDER_PER_KEY));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_overflow(p, s, FLUXUS_OVERFLOW_DROP_NEWEST, 0));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_worker_hooks(p, s, nop_init, nop_close));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_key_fn(p, s, nop_key, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_workers(rt, 2)); /* the runtime started too */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_spin_us(rt, 10));

    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    tu_free_all(p, rt);
}

static void test_freed_handles_are_rejected_with_einval(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_runtime *rt2 = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "p", NULL);
    fluxus_pipeline *fresh = NULL;
    fluxus_pipeline_stats ps;
    int32_t st = 0, rc;
    uint32_t u32 = 0;
    tu_range_source src = {0, 100, 0};
    (void)state;

    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", nop_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    TU_OK(fluxus_pipeline_free(p));

    /* The handle is validated through the registry, never dereferenced. */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_wait(p, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_wait(p, UINT32_MAX));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_push(p, 1, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_state(&st, p));
    ps.struct_size = sizeof ps;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stats(&ps, p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_stage_count(&u32, p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    {
        const char *name = NULL;
        int32_t cancelled = 0;
        TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_cancelled(&cancelled, p));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_name(&name, p, 0));
    }
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_free(p)); /* double free */

    TU_OK(fluxus_runtime_free(rt));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_workers(rt, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_get_workers(&u32, rt));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_free(rt)); /* double free */
    /* pipeline_new documents ESTATE for a freed runtime; a freed handle is EINVAL by the general
     * rule. Either is a clean refusal; a crash or FLUXUS_OK is not. */
    rc = fluxus_pipeline_new(&fresh, rt, "late");
    if (rc != FLUXUS_EINVAL && rc != FLUXUS_ESTATE) {
        fail_msg("pipeline_new on a freed runtime returned %s", fluxus_err_name(rc));
    }
    tu_assert_described(rc);

    /* A live runtime is unaffected by all that. */
    TU_OK(fluxus_runtime_get_workers(&u32, rt2));
    assert_int_equal(u32, 1);
    TU_OK(fluxus_runtime_free(rt2));
}

/* ----- calls from inside callbacks ----- */

typedef struct inside_ctx {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    fluxus_pipeline *other; /* a push pipeline on the same runtime */
    int32_t free_rc, wait_rc, drain_rc, rt_free_rc, push_rc, try_push_rc;
    uint32_t done;
} inside_ctx;

static int32_t misbehaving_sink(void *user, uint64_t item) {
    inside_ctx *c = (inside_ctx *)user;
    if (item == 3) {
        c->free_rc = fluxus_pipeline_free(c->p);
        c->wait_rc = fluxus_pipeline_wait(c->p, 0);
        c->drain_rc = fluxus_pipeline_drain(c->p, 0);
        c->rt_free_rc = fluxus_runtime_free(c->rt);
        c->push_rc = fluxus_pipeline_push(c->other, 1, UINT32_MAX);
        c->try_push_rc = fluxus_pipeline_try_push(c->other, 2);
        TU_STORE(&c->done, 1);
    }
    return 0;
}

static void test_blocking_calls_from_inside_a_callback_return_eincallback(void **state) {
    inside_ctx c;
    tu_range_source src = {0, 10, 0};
    tu_tracker other_t;
    (void)state;

    memset(&c, 0, sizeof c);
    c.free_rc = c.wait_rc = c.drain_rc = c.rt_free_rc = c.push_rc = c.try_push_rc = 1;
    c.rt = tu_runtime(2);
    tu_tracker_init(&other_t, 10);
    c.other = tu_pipeline(c.rt, "other", &other_t);
    TU_OK(fluxus_pipeline_set_push_source(c.other, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, c.other, "sink", tu_tracker_sink, &other_t, NULL));
    TU_OK(fluxus_pipeline_start(c.other));

    c.p = tu_pipeline(c.rt, "p", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(c.p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "sink", misbehaving_sink, &c, NULL));
    tu_run_expect(c.p, FLUXUS_OK); /* the pipeline survived its own free attempt */
    assert_int_equal(c.done, 1);
    TU_EXPECT(FLUXUS_EINCALLBACK, c.free_rc);
    TU_EXPECT(FLUXUS_EINCALLBACK, c.wait_rc);
    TU_EXPECT(FLUXUS_EINCALLBACK, c.drain_rc);
    TU_EXPECT(FLUXUS_EINCALLBACK, c.rt_free_rc);
    TU_EXPECT(FLUXUS_EINCALLBACK, c.push_rc);
    TU_OK(c.try_push_rc); /* try-push is allowed inside callbacks */
    assert_int_equal(src.next, 10);

    TU_OK(fluxus_pipeline_close_input(c.other));
    TU_EXPECT(FLUXUS_OK, tu_wait(c.other));
    assert_int_equal(other_t.delivered_total, 1);
    assert_int_equal(other_t.delivered[2], 1);
    tu_check_conservation(c.other, &other_t, 0);
    TU_OK(fluxus_pipeline_free(c.p));
    TU_OK(fluxus_pipeline_free(c.other));
    TU_OK(fluxus_runtime_free(c.rt));
    tu_tracker_destroy(&other_t);
}

static void test_more_than_4096_stages_are_refused_with_erange(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "long", NULL);
    uint32_t i, n = 0, last = 0;
    (void)state;

    for (i = 0; i < 4096; i++) {
        int32_t rc = fluxus_pipeline_add_map(&last, p, NULL, tu_identity_map, NULL, NULL);
        if (rc != FLUXUS_OK) {
            fail_msg("adding stage %u failed with %s", i, fluxus_err_name(rc));
        }
    }
    assert_int_equal(last, 4095);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_map(NULL, p, NULL, tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_sink(NULL, p, NULL, nop_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 4096);
    tu_free_all(p, rt);
}

static void test_stats_respect_a_smaller_struct_size(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "p", NULL);
    fluxus_pipeline_stats ps;
    fluxus_stage_stats ss;
    uint32_t s = 0;
    (void)state;

    TU_OK(fluxus_pipeline_add_map(&s, p, "m", tu_identity_map, NULL, NULL));
    /* An old program knowing only the 8-byte header: nothing past it is written. */
    memset(&ps, 0xAB, sizeof ps);
    ps.struct_size = 8;
    TU_OK(fluxus_pipeline_get_stats(&ps, p));
    assert_int_equal(ps.state, FLUXUS_STATE_BUILDING);
    assert_int_equal(ps.admitted, 0xABABABABABABABABull);
    memset(&ps, 0xAB, sizeof ps);
    ps.struct_size = (uint32_t)offsetof(fluxus_pipeline_stats, delivered);
    TU_OK(fluxus_pipeline_get_stats(&ps, p));
    assert_int_equal(ps.admitted, 0);
    assert_int_equal(ps.delivered, 0xABABABABABABABABull);

    memset(&ss, 0xAB, sizeof ss);
    ss.struct_size = (uint32_t)offsetof(fluxus_stage_stats, out);
    TU_OK(fluxus_stage_get_stats(&ss, p, s));
    assert_int_equal(ss.workers, 1);
    assert_int_equal(ss.in, 0);
    assert_int_equal(ss.out, 0xABABABABABABABABull);
    ss.struct_size = 4;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_stats(&ss, p, s));
    tu_free_all(p, rt);
}

/* A flat-map callback that keeps its emitter for later, as a buggy binding might. */
static fluxus_emitter *kept_emitter;

static int32_t keep_emitter_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    (void)user;
    TU_STORE(&kept_emitter, em);
    return fluxus_emitter_emit(em, item);
}

static void test_an_emitter_used_after_its_call_returns_einval(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "stale-emitter", NULL);
    tu_range_source src = {0, 10, 0};
    tu_tracker t;
    (void)state;

    tu_tracker_init(&t, 10);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_flat_map(NULL, p, "fm", keep_emitter_flat_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);
    assert_non_null(TU_LOAD(&kept_emitter));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_emitter_emit(TU_LOAD(&kept_emitter), 99));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_emitter_keep_input(TU_LOAD(&kept_emitter)));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_emitter_emit(NULL, 1));
    assert_int_equal(t.delivered_total, 10);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* Dead-letter callback run on the pushing host thread (FAIL overflow policy): freeing the
 * pipeline or waiting on it from there must be refused, not free the pipeline under the push. */
typedef struct host_dl_ctx {
    fluxus_pipeline *p;
    int32_t free_rc;
    int32_t wait_rc;
    uint32_t calls;
    uint32_t gate_open;
} host_dl_ctx;

static int32_t gated_sink(void *user, uint64_t item) {
    host_dl_ctx *c = (host_dl_ctx *)user;
    (void)item;
    while (!TU_LOAD(&c->gate_open)) tu_sleep_us(100);
    return 0;
}

static void free_from_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    host_dl_ctx *c = (host_dl_ctx *)user;
    (void)item;
    (void)f;
    if (TU_ADD(&c->calls, 1) == 1) {
        c->free_rc = fluxus_pipeline_free(c->p);
        c->wait_rc = fluxus_pipeline_wait(c->p, 0);
    }
}

static void test_freeing_from_a_callback_run_by_a_host_push_returns_eincallback(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "host-dl", NULL);
    host_dl_ctx c;
    uint32_t s = 0, i;
    (void)state;

    memset(&c, 0, sizeof c);
    c.p = p;
    TU_OK(fluxus_pipeline_set_push_source(p, "push"));
    TU_OK(fluxus_pipeline_set_dead_letter(p, free_from_dead_letter, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(&s, p, "gated", gated_sink, &c, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(p, s, 1));
    TU_OK(fluxus_stage_set_overflow(p, s, FLUXUS_OVERFLOW_FAIL, 0));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_start(p));
    /* The sink holds one item, the queue one more; the rest fail on this thread. */
    for (i = 0; i < 10; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    assert_true(TU_LOAD(&c.calls) >= 1);
    assert_int_equal(c.free_rc, FLUXUS_EINCALLBACK);
    assert_int_equal(c.wait_rc, FLUXUS_EINCALLBACK);
    TU_STORE(&c.gate_open, 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_macros_match_the_loaded_library),
        cmocka_unit_test(test_every_status_code_has_a_name_and_a_description),
        cmocka_unit_test(test_last_error_message_describes_the_last_failure_per_thread),
        cmocka_unit_test(test_null_handles_are_rejected_with_einval),
        cmocka_unit_test(test_null_out_pointers_and_null_callbacks_are_rejected_with_einval),
        cmocka_unit_test(test_a_stage_name_with_a_slash_is_refused),
        cmocka_unit_test(test_out_of_range_options_are_rejected_with_erange),
        cmocka_unit_test(test_start_checks_the_pipeline_shape),
        cmocka_unit_test(test_calls_in_the_wrong_state_return_estate),
        cmocka_unit_test(test_freed_handles_are_rejected_with_einval),
        cmocka_unit_test(test_blocking_calls_from_inside_a_callback_return_eincallback),
        cmocka_unit_test(test_more_than_4096_stages_are_refused_with_erange),
        cmocka_unit_test(test_stats_respect_a_smaller_struct_size),
        cmocka_unit_test(test_an_emitter_used_after_its_call_returns_einval),
        cmocka_unit_test(test_freeing_from_a_callback_run_by_a_host_push_returns_eincallback),
    };
    return TU_RUN_GROUP(tests);
}
