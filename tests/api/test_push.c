/*
 * Push sources: several host threads pushing at once, try-push on a full queue, push after
 * close-input, push_many, and pause/resume.
 */
#include "test_util.h"

#ifndef PUSH_PER_THREAD
#define PUSH_PER_THREAD 5000u
#endif
#define PUSH_THREADS 4u
#define PUSH_TOTAL (PUSH_THREADS * PUSH_PER_THREAD)

typedef struct push_ctx {
    tu_tracker t;
    uint64_t last_per_thread[PUSH_THREADS]; /* last item + 1 seen from each producer */
    uint64_t order_errors;
    uint32_t gate_open; /* the gated sink waits for this */
    uint32_t gave_up;
    uint32_t sink_calls;
} push_ctx;

static int32_t ordered_sink(void *user, uint64_t item) {
    push_ctx *c = (push_ctx *)user;
    uint64_t thread = item / PUSH_PER_THREAD;
    if (thread < PUSH_THREADS) {
        if (item + 1 <= c->last_per_thread[thread]) {
            c->order_errors++;
        }
        c->last_per_thread[thread] = item + 1;
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

/* Holds every item until the test opens the gate (gives up after about a minute). */
static int32_t gated_sink(void *user, uint64_t item) {
    push_ctx *c = (push_ctx *)user;
    uint32_t i;
    TU_ADD(&c->sink_calls, 1);
    for (i = 0; !TU_LOAD(&c->gate_open); i++) {
        if (i > 600000u) {
            TU_STORE(&c->gave_up, 1);
            break;
        }
        tu_sleep_us(100);
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static fluxus_runtime *g_rt;

/* The context lives on the heap from setup to teardown, not on a test's stack: teardown opens the
 * gate (so a failed test cannot leave the sink held) and a sink may still read it while the
 * runtime cancels a pipeline that a failed test left running. */
static int setup(void **state) {
    push_ctx *c = (push_ctx *)calloc(1, sizeof *c);
    if (c == NULL) {
        return -1;
    }
    *state = c;
    g_rt = tu_runtime(2);
    tu_user_frees = 0;
    return 0;
}

static int teardown(void **state) {
    push_ctx *c = (push_ctx *)*state;
    int rc;
    TU_STORE(&c->gate_open, 1);
    rc = fluxus_runtime_free(g_rt) == FLUXUS_OK ? 0 : -1;
    tu_tracker_destroy(&c->t); /* a no-op if the test destroyed it */
    free(c);
    *state = NULL;
    return rc;
}

/*
 * push source -> [map "map" ->] sink. `capacity` is the queue in front of the first stage, where
 * pushes land. The gated tests put the sink first, so a held sink leaves no other queue to fill.
 */
static fluxus_pipeline *build(push_ctx *c, uint64_t n, fluxus_sink_fn sink, uint32_t capacity,
                              int with_map) {
    fluxus_pipeline *p;
    uint32_t first = 0;
    memset(c, 0, sizeof *c);
    tu_tracker_init(&c->t, n);
    p = tu_pipeline(g_rt, "push", &c->t);
    TU_OK(fluxus_pipeline_set_push_source(p, "input"));
    TU_OK(fluxus_pipeline_set_batch_size(p, 1));
    if (with_map) {
        TU_OK(fluxus_pipeline_add_map(&first, p, "map", tu_identity_map, NULL, NULL));
        TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, tu_user_free));
    } else {
        TU_OK(fluxus_pipeline_add_sink(&first, p, "sink", sink, c, tu_user_free));
    }
    TU_OK(fluxus_stage_set_queue_capacity(p, first, capacity));
    return p;
}

typedef struct producer {
    fluxus_pipeline *p;
    uint32_t index;
    uint32_t errors;
    int32_t first_error;
} producer;

static void *produce(void *arg) {
    producer *pr = (producer *)arg;
    uint64_t i;
    for (i = 0; i < PUSH_PER_THREAD; i++) {
        int32_t rc = fluxus_pipeline_push(pr->p, pr->index * PUSH_PER_THREAD + i, UINT32_MAX);
        if (rc != FLUXUS_OK && pr->errors++ == 0) {
            pr->first_error = rc;
        }
    }
    return NULL;
}

static void test_four_host_threads_push_concurrently_without_loss(void **state) {
    push_ctx *c = (push_ctx *)*state;
    pthread_t th[PUSH_THREADS];
    producer pr[PUSH_THREADS];
    fluxus_pipeline_stats s;
    fluxus_pipeline *p = build(c, PUSH_TOTAL, ordered_sink, 16, 1);
    uint32_t i;

    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < PUSH_THREADS; i++) {
        pr[i].p = p;
        pr[i].index = i;
        pr[i].errors = 0;
        pr[i].first_error = 0;
        assert_int_equal(pthread_create(&th[i], NULL, produce, &pr[i]), 0);
    }
    for (i = 0; i < PUSH_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
    }
    for (i = 0; i < PUSH_THREADS; i++) {
        if (pr[i].errors) {
            fail_msg("producer %u: %u pushes failed, first with %s", i, pr[i].errors,
                     fluxus_err_name(pr[i].first_error));
        }
    }
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(fluxus_pipeline_close_input(p)); /* closing twice is allowed */
    TU_EXPECT(FLUXUS_OK, tu_wait(p));

    tu_stats(p, &s);
    assert_int_equal(s.admitted, PUSH_TOTAL);
    assert_int_equal(s.delivered, PUSH_TOTAL);
    assert_int_equal(c->order_errors, 0); /* each producer's items arrive in its push order */
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, PUSH_TOTAL);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    tu_tracker_destroy(&c->t);
}

static void test_try_push_returns_efull_when_the_queue_is_full(void **state) {
    push_ctx *c = (push_ctx *)*state;
    fluxus_pipeline *p = build(c, 1000, gated_sink, 4, 0);
    uint64_t pushed = 0;
    int32_t rc = FLUXUS_OK;
    uint64_t t0;

    TU_OK(fluxus_pipeline_start(p));
    /* The sink holds the first item; the queue (capacity 4) and the batches in hand fill up. */
    t0 = tu_now_ms();
    while (pushed < 1000) {
        /* Full may be transient until the sink has taken its item; once the sink is held, a
         * full queue stays full. So only an EFULL from a try that began after that counts. */
        uint32_t sink_held = TU_LOAD(&c->sink_calls) > 0;
        rc = fluxus_pipeline_try_push(p, pushed);
        if (rc == FLUXUS_OK) {
            pushed++;
        } else if (rc == FLUXUS_EFULL) {
            if (sink_held) {
                break;
            }
            tu_sleep_us(200);
        } else {
            fail_msg("try_push returned %s", fluxus_err_name(rc));
        }
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("never full");
        }
    }
    TU_EXPECT(FLUXUS_EFULL, rc);
    /* The queue holds 4 and the held sink has taken one batch of 1. */
    if (pushed < 4 || pushed > 4 + 1) {
        fail_msg("%llu items fit in front of a held sink with a queue of 4 and batches of 1",
                 (unsigned long long)pushed);
    }
    TU_EXPECT(FLUXUS_EFULL, fluxus_pipeline_try_push(p, pushed));
    /* A push with a short timeout times out; the caller keeps the item. */
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_push(p, pushed, 5));

    TU_STORE(&c->gate_open, 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(c->gave_up, 0);
    assert_int_equal(c->t.delivered_total, pushed);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, pushed);
    tu_tracker_check_untouched(&c->t, pushed, 1000);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c->t);
}

static void test_push_after_close_input_on_a_held_pipeline_returns_eclosed(void **state) {
    push_ctx *c = (push_ctx *)*state;
    fluxus_pipeline *p = build(c, 100, gated_sink, 16, 0);
    uint64_t items[3] = {10, 11, 12};
    uint32_t pushed = 99;

    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_push(p, 1, 0)); /* not started */
    /* The gated sink holds item 0, so the pipeline cannot finish while we push after close. */
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_push(p, 0, UINT32_MAX));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_ECLOSED, fluxus_pipeline_push(p, 1, 0));
    TU_EXPECT(FLUXUS_ECLOSED, fluxus_pipeline_push(p, 1, UINT32_MAX));
    TU_EXPECT(FLUXUS_ECLOSED, fluxus_pipeline_try_push(p, 1));
    TU_EXPECT(FLUXUS_ECLOSED, fluxus_pipeline_push_many(&pushed, p, items, 3, 0));
    assert_int_equal(pushed, 0);
    TU_STORE(&c->gate_open, 1);
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(c->t.delivered_total, 1);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_untouched(&c->t, 1, 100);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c->t);
}

static void test_push_many_pushes_all_items_in_order(void **state) {
    push_ctx *c = (push_ctx *)*state;
    fluxus_pipeline *p = build(c, PUSH_PER_THREAD, ordered_sink, 16, 1);
    uint64_t *items = (uint64_t *)malloc(PUSH_PER_THREAD * sizeof(uint64_t));
    uint32_t pushed = 0, i;

    assert_non_null(items);
    for (i = 0; i < PUSH_PER_THREAD; i++) {
        items[i] = i;
    }
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_push_many(&pushed, p, items, PUSH_PER_THREAD, UINT32_MAX));
    assert_int_equal(pushed, PUSH_PER_THREAD);
    TU_OK(fluxus_pipeline_push_many(&pushed, p, items, 0, 0)); /* nothing to push */
    assert_int_equal(pushed, 0);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(c->order_errors, 0);
    assert_int_equal(c->t.delivered_total, PUSH_PER_THREAD);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, PUSH_PER_THREAD);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c->t);
    free(items);
}

static void test_push_many_with_a_timeout_pushes_a_prefix(void **state) {
    push_ctx *c = (push_ctx *)*state;
    fluxus_pipeline *p = build(c, 1000, gated_sink, 4, 0);
    uint64_t items[1000];
    uint32_t pushed = 12345, i;

    for (i = 0; i < 1000; i++) {
        items[i] = i;
    }
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_push_many(&pushed, p, items, 1000, 20));
    assert_true(pushed >= 1);
    assert_true(pushed < 1000);
    TU_STORE(&c->gate_open, 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    /* Exactly the prefix items[0..pushed) went through; the caller kept the rest. */
    assert_int_equal(c->t.delivered_total, pushed);
    tu_tracker_check_once(&c->t, 0, pushed);
    tu_tracker_check_untouched(&c->t, pushed, 1000);
    tu_check_conservation(p, &c->t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c->t);
}

static void test_paused_push_source_refuses_pushes_until_resumed(void **state) {
    push_ctx *c = (push_ctx *)*state;
    fluxus_pipeline *p = build(c, 100, ordered_sink, 16, 1);

    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_pause(p));
    TU_OK(fluxus_pipeline_pause(p)); /* pausing a paused source is allowed */
    TU_EXPECT(FLUXUS_EFULL, fluxus_pipeline_try_push(p, 1));
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_push(p, 1, 5));
    TU_OK(fluxus_pipeline_resume(p));
    TU_OK(fluxus_pipeline_try_push(p, 2));
    TU_OK(fluxus_pipeline_push(p, 3, UINT32_MAX));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(c->t.delivered_total, 2);
    assert_int_equal(c->t.delivered[1], 0);
    assert_int_equal(c->t.delivered[2], 1);
    assert_int_equal(c->t.delivered[3], 1);
    tu_check_conservation(p, &c->t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&c->t);
}

static void test_push_on_a_pull_source_pipeline_returns_estate(void **state) {
    tu_tracker t;
    tu_range_source src = {0, 10, 0};
    fluxus_pipeline *p;
    (void)state;

    tu_tracker_init(&t, 10);
    p = tu_pipeline(g_rt, "pull", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_push_source(p, "again"));
    TU_OK(fluxus_pipeline_start(p));
    {
        int32_t rc = fluxus_pipeline_push(p, 1, 0);
        /* ESTATE (not a push source); the pipeline may have finished already, which may also
         * be reported as ECANCELED. */
        if (rc != FLUXUS_ESTATE && rc != FLUXUS_ECANCELED) {
            fail_msg("push on a pull pipeline returned %s", fluxus_err_name(rc));
        }
    }
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, 10);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_four_host_threads_push_concurrently_without_loss,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_try_push_returns_efull_when_the_queue_is_full, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_push_after_close_input_on_a_held_pipeline_returns_eclosed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_many_pushes_all_items_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_many_with_a_timeout_pushes_a_prefix, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_paused_push_source_refuses_pushes_until_resumed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_push_on_a_pull_source_pipeline_returns_estate, setup,
                                        teardown),
    };
    return TU_RUN_GROUP(tests);
}
