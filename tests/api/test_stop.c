/*
 * Stopping: a fail-fast failure stops every callback (the failing item fails, the rest is
 * cancelled), a callback that returns FLUXUS_ECANCELED ends its item as cancelled (never
 * failed, retried, dead-lettered or counted by a breaker), and no sink starts once
 * fluxus_pipeline_cancel() has returned.
 */
#include "test_util.h"

#define STOP_N 200u

/* ----- fail-fast: every combination of fusion, batch size, workers, order and source ----- */

typedef struct ff_case {
    int32_t fusion;
    uint32_t batch;
    uint32_t workers;
    int32_t ordered;
    int32_t push;
} ff_case;

typedef struct ff_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
    uint32_t map_calls;
    uint32_t map_late;  /* map calls that started when the pipeline was already cancelled */
    uint32_t sink_late; /* the same for the sink */
} ff_ctx;

static int32_t ff_map(void *user, uint64_t in, uint64_t *out) {
    ff_ctx *c = (ff_ctx *)user;
    TU_ADD(&c->map_calls, 1);
    if (tu_is_cancelled(c->p)) {
        TU_ADD(&c->map_late, 1);
    }
    *out = in;
    return in % 2 == 0 ? -100 : 0;
}

static int32_t ff_sink(void *user, uint64_t item) {
    ff_ctx *c = (ff_ctx *)user;
    if (tu_is_cancelled(c->p)) {
        TU_ADD(&c->sink_late, 1);
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void run_fail_fast_case(const ff_case *k) {
    ff_ctx c;
    tu_range_source src = {1, STOP_N + 1, 0};
    fluxus_runtime *rt = tu_runtime(2);
    uint32_t map = 0, pushed = 0;
    fluxus_pipeline_stats s;
    fluxus_stage_stats ms;
    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, STOP_N + 2);
    c.p = tu_pipeline(rt, "fail-fast", &c.t);
    TU_OK(fluxus_pipeline_set_fusion(c.p, k->fusion));
    TU_OK(fluxus_pipeline_set_batch_size(c.p, k->batch));
    if (k->push) {
        TU_OK(fluxus_pipeline_set_push_source(c.p, "in"));
    } else {
        TU_OK(fluxus_pipeline_set_pull_source(c.p, "in", tu_range_pull, &src, NULL));
    }
    TU_OK(fluxus_pipeline_add_map(&map, c.p, "fails-on-even", ff_map, &c, NULL));
    TU_OK(fluxus_stage_set_workers(c.p, map, k->workers));
    if (k->workers > 1) {
        TU_OK(fluxus_stage_set_order(c.p, map,
                                     k->ordered ? FLUXUS_ORDER_ORDERED : FLUXUS_ORDER_UNORDERED));
    }
    TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "sink", ff_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(c.p));
    if (k->push) {
        uint64_t x;
        for (x = 1; x <= STOP_N; x++) {
            if (fluxus_pipeline_push(c.p, x, TU_WAIT_MS) != FLUXUS_OK) {
                break;
            }
            pushed++;
        }
        (void)fluxus_pipeline_close_input(c.p);
    }
    TU_EXPECT(FLUXUS_EFAILED, tu_wait(c.p));
    tu_stats(c.p, &s);
    tu_stage_stats(c.p, map, &ms);

    if (s.failed < 1 || s.failed > k->workers || c.map_late > (k->workers - 1) ||
        c.map_calls > 2 + 2 * k->workers || c.sink_late > k->workers) {
        fail_msg("fusion %d batch %u workers %u ordered %d push %d: failed %llu (at most %u), "
                 "map calls %u, started after the cancel: map %u sink %u, delivered %llu "
                 "cancelled %llu",
                 k->fusion, k->batch, k->workers, k->ordered, k->push,
                 (unsigned long long)s.failed, k->workers, c.map_calls, c.map_late, c.sink_late,
                 (unsigned long long)s.delivered, (unsigned long long)s.cancelled);
    }
    if (k->workers == 1) {
        /* One map worker: item 1 passes, item 2 fails, nothing else starts at the map. */
        assert_int_equal(c.map_calls, 2);
        assert_int_equal(s.failed, 1);
        assert_int_equal(c.map_late, 0);
        assert_true(s.delivered <= 1);
        if (k->fusion) {
            assert_int_equal(c.sink_late, 0); /* the same thread failed the pipeline */
        }
    }
    assert_int_equal(ms.failed, s.failed); /* only the map fails anything */
    assert_int_equal(s.dead_lettered, 0);
    assert_int_equal(s.filtered, 0);
    assert_int_equal(s.delivered + s.failed + s.cancelled, s.admitted);
    tu_check_conservation(c.p, &c.t, 0);
    tu_tracker_check_once(&c.t, 1, k->push ? pushed + 1 : (uint64_t)s.admitted + 1);
    tu_free_all(c.p, rt);
    tu_tracker_destroy(&c.t);
}

static void test_fail_fast_stops_every_callback(void **state) {
    static const uint32_t batches[] = {1, 4, 256};
    static const uint32_t workers[] = {1, 3};
    size_t b, w;
    int32_t fusion, ordered, push;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        for (b = 0; b < sizeof batches / sizeof batches[0]; b++) {
            for (w = 0; w < sizeof workers / sizeof workers[0]; w++) {
                for (ordered = 0; ordered <= (workers[w] > 1 ? 1 : 0); ordered++) {
                    for (push = 0; push <= 1; push++) {
                        ff_case k = {fusion, batches[b], workers[w], ordered, push};
                        run_fail_fast_case(&k);
                    }
                }
            }
        }
    }
}

/* A chain of several maps: after the failure at the first map, neither map starts again. */
typedef struct chain_ctx {
    tu_tracker t;
    uint32_t first_calls, second_calls;
} chain_ctx;

static int32_t chain_first(void *user, uint64_t in, uint64_t *out) {
    chain_ctx *c = (chain_ctx *)user;
    TU_ADD(&c->first_calls, 1);
    *out = in;
    return in == 5 ? -1 : 0;
}

static int32_t chain_second(void *user, uint64_t in, uint64_t *out) {
    chain_ctx *c = (chain_ctx *)user;
    TU_ADD(&c->second_calls, 1);
    *out = in;
    return 0;
}

static int32_t chain_sink(void *user, uint64_t item) {
    tu_tracker_deliver(&((chain_ctx *)user)->t, item);
    return 0;
}

static void test_fail_fast_stops_a_fused_chain(void **state) {
    int32_t fusion;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        chain_ctx c;
        tu_range_source src = {0, 1000, 0};
        fluxus_runtime *rt = tu_runtime(2);
        fluxus_pipeline *p;
        fluxus_pipeline_stats s;
        memset(&c, 0, sizeof c);
        tu_tracker_init(&c.t, 1000);
        p = tu_pipeline(rt, "chain", &c.t);
        TU_OK(fluxus_pipeline_set_fusion(p, fusion));
        TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, &src, NULL));
        TU_OK(fluxus_pipeline_add_map(NULL, p, "first", chain_first, &c, NULL));
        TU_OK(fluxus_pipeline_add_map(NULL, p, "second", chain_second, &c, NULL));
        TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", chain_sink, &c, NULL));
        tu_run_expect(p, FLUXUS_EFAILED);
        tu_stats(p, &s);
        assert_int_equal(c.first_calls, 6); /* items 0..5 */
        assert_true(c.second_calls <= 5);  /* never item 5, nor anything after it */
        assert_int_equal(s.failed, 1);
        assert_int_equal(s.delivered + s.cancelled + 1, s.admitted);
        tu_check_conservation(p, &c.t, 0);
        tu_tracker_check_once(&c.t, 0, s.admitted);
        tu_free_all(p, rt);
        tu_tracker_destroy(&c.t);
    }
}

/* ----- FLUXUS_ECANCELED from a callback ends the item as cancelled ----- */

typedef struct ecan_ctx {
    tu_tracker t;
    uint32_t calls_on_3;
    uint32_t dead_letters;
} ecan_ctx;

static int32_t ecan_map(void *user, uint64_t in, uint64_t *out) {
    ecan_ctx *c = (ecan_ctx *)user;
    *out = in;
    if (in == 3) {
        TU_ADD(&c->calls_on_3, 1);
        return FLUXUS_ECANCELED;
    }
    return 0;
}

static int32_t ecan_filter(void *user, uint64_t in, int32_t *keep) {
    ecan_ctx *c = (ecan_ctx *)user;
    *keep = 1;
    if (in == 3) {
        TU_ADD(&c->calls_on_3, 1);
        return FLUXUS_ECANCELED;
    }
    return 0;
}

static int32_t ecan_flat_map(void *user, uint64_t in, fluxus_emitter *em) {
    ecan_ctx *c = (ecan_ctx *)user;
    if (in == 3) {
        TU_ADD(&c->calls_on_3, 1);
        return FLUXUS_ECANCELED;
    }
    (void)fluxus_emitter_keep_input(em);
    return fluxus_emitter_emit(em, in);
}

static int32_t ecan_map_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                              uint32_t n) {
    ecan_ctx *c = (ecan_ctx *)user;
    uint32_t i;
    for (i = 0; i < n; i++) {
        out[i] = in[i];
        if (in[i] == 3) {
            TU_ADD(&c->calls_on_3, 1);
            status[i] = FLUXUS_ECANCELED;
        }
    }
    return 0;
}

static int32_t ecan_sink(void *user, uint64_t item) {
    ecan_ctx *c = (ecan_ctx *)user;
    if (item == 3) {
        TU_ADD(&c->calls_on_3, 1);
        return FLUXUS_ECANCELED;
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static int32_t plain_sink(void *user, uint64_t item) {
    tu_tracker_deliver(&((ecan_ctx *)user)->t, item);
    return 0;
}

static void ecan_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    (void)item;
    (void)f;
    TU_ADD(&((ecan_ctx *)user)->dead_letters, 1);
}

enum { ECAN_MAP, ECAN_FILTER, ECAN_FLAT_MAP, ECAN_MAP_BATCH, ECAN_SINK, ECAN_KINDS };

static void run_ecanceled_case(int kind, int32_t fusion, int32_t policy) {
    ecan_ctx c;
    tu_range_source src = {0, 20, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fluxus_stage_stats st;
    uint32_t stage = 0;
    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 20);
    p = tu_pipeline(rt, "ecanceled", &c.t);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_dead_letter(p, ecan_dead_letter, &c, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, &src, NULL));
    switch (kind) {
    case ECAN_MAP: TU_OK(fluxus_pipeline_add_map(&stage, p, "s", ecan_map, &c, NULL)); break;
    case ECAN_FILTER:
        TU_OK(fluxus_pipeline_add_filter(&stage, p, "s", ecan_filter, &c, NULL));
        break;
    case ECAN_FLAT_MAP:
        TU_OK(fluxus_pipeline_add_flat_map(&stage, p, "s", ecan_flat_map, &c, NULL));
        break;
    case ECAN_MAP_BATCH:
        TU_OK(fluxus_pipeline_add_map_batch(&stage, p, "s", ecan_map_batch, &c, NULL));
        break;
    default: TU_OK(fluxus_pipeline_add_sink(&stage, p, "s", ecan_sink, &c, NULL)); break;
    }
    TU_OK(fluxus_stage_set_error_policy(p, stage, policy));
    TU_OK(fluxus_stage_set_retry(p, stage, 3, FLUXUS_BACKOFF_CONSTANT, 0, 0));
    if (kind != ECAN_SINK) {
        TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", plain_sink, &c, NULL));
    }
    tu_run_expect(p, FLUXUS_OK); /* an item's cancel is not the pipeline's failure */
    tu_stats(p, &s);
    tu_stage_stats(p, stage, &st);
    if (c.calls_on_3 != 1 || s.cancelled != 1 || s.failed != 0 || s.dead_lettered != 0 ||
        c.dead_letters != 0 || st.retries != 0 || s.delivered != 19) {
        fail_msg("kind %d fusion %d policy %d: calls on item 3 %u, cancelled %llu, failed %llu, "
                 "dead-lettered %llu (callback %u), retries %llu, delivered %llu",
                 kind, fusion, policy, c.calls_on_3, (unsigned long long)s.cancelled,
                 (unsigned long long)s.failed, (unsigned long long)s.dead_lettered,
                 c.dead_letters, (unsigned long long)st.retries,
                 (unsigned long long)s.delivered);
    }
    assert_int_equal(st.cancelled, 1);
    assert_int_equal(TU_LOAD(&c.t.freed[3]), 1); /* destroyed once, never delivered */
    tu_check_conservation(p, &c.t, kind == ECAN_FLAT_MAP ? 19 : 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c.t);
}

static void test_callback_ecanceled_ends_item_cancelled(void **state) {
    int kind;
    int32_t fusion;
    (void)state;
    for (kind = 0; kind < ECAN_KINDS; kind++) {
        for (fusion = 0; fusion <= 1; fusion++) {
            run_ecanceled_case(kind, fusion, FLUXUS_ERROR_DEAD_LETTER);
            run_ecanceled_case(kind, fusion, FLUXUS_ERROR_FAIL_FAST);
            run_ecanceled_case(kind, fusion, FLUXUS_ERROR_SKIP);
        }
    }
}

/* ----- an async completion with FLUXUS_ECANCELED ----- */

typedef struct acan_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
} acan_ctx;

static int32_t acan_start(void *user, uint64_t item, uint64_t completion) {
    acan_ctx *c = (acan_ctx *)user;
    /* Completed at once, from inside the callback (allowed from any thread). */
    return fluxus_pipeline_complete_async(c->p, completion, item == 4 ? FLUXUS_ECANCELED : 0, item);
}

static int32_t acan_sink(void *user, uint64_t item) {
    tu_tracker_deliver(&((acan_ctx *)user)->t, item);
    return 0;
}

static void test_async_completion_ecanceled_ends_item_cancelled(void **state) {
    acan_ctx c;
    tu_range_source src = {0, 10, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline_stats s;
    uint32_t stage = 0;
    (void)state;
    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 10);
    c.p = tu_pipeline(rt, "async-ecanceled", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(c.p, "in", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&stage, c.p, "call", acan_start, &c, NULL));
    TU_OK(fluxus_stage_set_retry(c.p, stage, 3, FLUXUS_BACKOFF_CONSTANT, 0, 0));
    TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "sink", acan_sink, &c, NULL));
    tu_run_expect(c.p, FLUXUS_OK);
    tu_stats(c.p, &s);
    assert_int_equal(s.cancelled, 1);
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.delivered, 9);
    assert_int_equal(TU_LOAD(&c.t.freed[4]), 1);
    tu_check_conservation(c.p, &c.t, 0);
    tu_free_all(c.p, rt);
    tu_tracker_destroy(&c.t);
}

/* ----- three pipelines share a breaker; each is cancelled mid-call; it stays closed ----- */

typedef struct brk_ctx {
    fluxus_pipeline *p;
    uint32_t entered;
} brk_ctx;

static int32_t brk_map(void *user, uint64_t in, uint64_t *out) {
    brk_ctx *c = (brk_ctx *)user;
    uint32_t i;
    *out = in;
    TU_STORE(&c->entered, 1);
    for (i = 0; i < 300000u && !tu_is_cancelled(c->p); i++) {
        tu_sleep_us(100);
    }
    return FLUXUS_ECANCELED; /* gave up on the cancel */
}

static int32_t null_sink(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static void test_cancelled_calls_leave_breaker_closed(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_circuit_breaker *cb = NULL;
    int32_t breaker_state = -1;
    int i;
    (void)state;
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 3));
    for (i = 0; i < 3; i++) {
        brk_ctx c = {NULL, 0};
        tu_range_source src = {0, 5, 0};
        fluxus_pipeline_stats s;
        uint32_t stage = 0;
        c.p = tu_pipeline(rt, "breaker-user", NULL);
        TU_OK(fluxus_pipeline_set_pull_source(c.p, "in", tu_range_pull, &src, NULL));
        TU_OK(fluxus_pipeline_add_map(&stage, c.p, "call", brk_map, &c, NULL));
        TU_OK(fluxus_stage_set_circuit_breaker(c.p, stage, cb, FLUXUS_BREAKER_FAIL));
        TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "sink", null_sink, NULL, NULL));
        TU_OK(fluxus_pipeline_start(c.p));
        while (!TU_LOAD(&c.entered)) {
            tu_sleep_us(100);
        }
        TU_OK(fluxus_pipeline_cancel(c.p));
        TU_EXPECT(FLUXUS_ECANCELED, tu_wait(c.p));
        tu_stats(c.p, &s);
        assert_int_equal(s.failed, 0);
        assert_int_equal(s.cancelled, s.admitted);
        TU_OK(fluxus_pipeline_free(c.p));
    }
    TU_OK(fluxus_circuit_breaker_get_state(&breaker_state, cb));
    assert_int_equal(breaker_state, FLUXUS_BREAKER_CLOSED);
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

/* ----- no sink starts after fluxus_pipeline_cancel() has returned ----- */

typedef struct gate_ctx {
    tu_tracker t;
    uint32_t block_in_map; /* 1: the map blocks on item 0; 0: the sink does */
    uint32_t entered;      /* the blocked callback is waiting on the gate */
    uint32_t open;
    uint32_t cancel_returned;
    uint32_t sink_after_cancel;
    uint32_t sink_calls;
} gate_ctx;

static void gate_wait(gate_ctx *c) {
    TU_STORE(&c->entered, 1);
    while (!TU_LOAD(&c->open)) {
        tu_sleep_us(100);
    }
}

static int32_t gate_map(void *user, uint64_t in, uint64_t *out) {
    gate_ctx *c = (gate_ctx *)user;
    if (c->block_in_map && in == 0) {
        gate_wait(c);
    }
    *out = in;
    return 0;
}

static int32_t gate_sink(void *user, uint64_t item) {
    gate_ctx *c = (gate_ctx *)user;
    TU_ADD(&c->sink_calls, 1);
    if (TU_LOAD(&c->cancel_returned)) {
        TU_ADD(&c->sink_after_cancel, 1);
    }
    if (!c->block_in_map && item == 0) {
        gate_wait(c);
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void run_gate_case(uint32_t block_in_map, int32_t fusion, uint32_t batch, int32_t push) {
    gate_ctx c;
    tu_range_source src = {0, 500, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    uint32_t pushed = 0;
    memset(&c, 0, sizeof c);
    c.block_in_map = block_in_map;
    tu_tracker_init(&c.t, 500);
    p = tu_pipeline(rt, "gate", &c.t);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_batch_size(p, batch));
    if (push) {
        TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    } else {
        TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, &src, NULL));
    }
    TU_OK(fluxus_pipeline_add_map(NULL, p, "map", gate_map, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", gate_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    if (push) {
        uint64_t x;
        for (x = 0; x < 40; x++) {
            TU_OK(fluxus_pipeline_push(p, x, TU_WAIT_MS));
            pushed++;
        }
    }
    while (!TU_LOAD(&c.entered)) {
        tu_sleep_us(100);
    }
    TU_OK(fluxus_pipeline_cancel(p));
    TU_STORE(&c.cancel_returned, 1);
    tu_sleep_us(2000); /* give a wrongly started sink time to show */
    TU_STORE(&c.open, 1);
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    tu_stats(p, &s);
    if (c.sink_after_cancel != 0) {
        fail_msg("block in %s, fusion %d, batch %u, push %d: %u sink calls started after cancel "
                 "returned",
                 block_in_map ? "map" : "sink", fusion, batch, push, c.sink_after_cancel);
    }
    if (block_in_map) {
        /* Item 0 finished its map after the cancel: it is cancelled, not delivered. */
        assert_int_equal(TU_LOAD(&c.t.delivered[0]), 0);
        assert_int_equal(TU_LOAD(&c.t.freed[0]), 1);
    } else {
        /* The sink call already running completes its item: delivered. */
        assert_int_equal(TU_LOAD(&c.t.delivered[0]), 1);
        assert_true(s.delivered >= 1);
    }
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, push ? pushed : s.admitted);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c.t);
}

static void test_no_sink_starts_after_cancel_returned(void **state) {
    static const uint32_t batches[] = {1, 256};
    uint32_t block_in_map;
    int32_t fusion, push;
    size_t b;
    (void)state;
    for (block_in_map = 0; block_in_map <= 1; block_in_map++) {
        for (fusion = 0; fusion <= 1; fusion++) {
            for (b = 0; b < 2; b++) {
                for (push = 0; push <= 1; push++) {
                    run_gate_case(block_in_map, fusion, batches[b], push);
                }
            }
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_fast_stops_every_callback),
        cmocka_unit_test(test_fail_fast_stops_a_fused_chain),
        cmocka_unit_test(test_callback_ecanceled_ends_item_cancelled),
        cmocka_unit_test(test_async_completion_ecanceled_ends_item_cancelled),
        cmocka_unit_test(test_cancelled_calls_leave_breaker_closed),
        cmocka_unit_test(test_no_sink_starts_after_cancel_returned),
    };
    return TU_RUN_GROUP(tests);
}
