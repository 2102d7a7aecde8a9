/*
 * Lifecycle: batch callbacks of every kind, per-worker hooks, per-stage stats, many pipelines on
 * one runtime, freeing the runtime first, the log callback, and user_free bookkeeping.
 */
#include "test_util.h"

#ifndef LIFE_N
#define LIFE_N 20000u
#endif
#define MAP_FAIL 31
#define SINK_FAIL 32

/* ----- batch variants ----- */

typedef struct batch_ctx {
    tu_tracker t;      /* values [0, 2N): inputs, and N + x for the extra items emitted */
    uint64_t next;     /* source position */
    uint64_t bad_args; /* callbacks that got bad arguments (count 0, NULL arrays, dirty status) */
    uint64_t big_batch;
    uint32_t batch_limit;
} batch_ctx;

static int32_t batch_pull(void *user, uint64_t *items, uint32_t capacity, uint32_t *count) {
    batch_ctx *c = (batch_ctx *)user;
    uint32_t n = 0;
    if (capacity == 0 || items == NULL || count == NULL) {
        TU_ADD(&c->bad_args, 1);
        return FLUXUS_PULL_END;
    }
    if (capacity > c->batch_limit) {
        TU_ADD(&c->big_batch, 1);
    }
    while (n < capacity && c->next < LIFE_N) {
        items[n++] = c->next++;
    }
    *count = n;
    /* The last batch comes with PULL_END: its items are still valid. */
    return c->next >= LIFE_N ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static int32_t batch_map(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                         uint32_t count) {
    batch_ctx *c = (batch_ctx *)user;
    uint32_t i;
    if (count == 0 || count > c->batch_limit) {
        TU_ADD(&c->bad_args, 1);
    }
    for (i = 0; i < count; i++) {
        if (status[i] != 0) {
            TU_ADD(&c->bad_args, 1);
        }
        out[i] = in[i];
        if (in[i] % 7u == 0) {
            status[i] = MAP_FAIL;
        }
    }
    return 0;
}

static int32_t batch_filter(void *user, const uint64_t *items, int32_t *keep, int32_t *status,
                            uint32_t count) {
    batch_ctx *c = (batch_ctx *)user;
    uint32_t i;
    for (i = 0; i < count; i++) {
        if (keep[i] != 0 || status[i] != 0) {
            TU_ADD(&c->bad_args, 1);
        }
        keep[i] = items[i] % 3u != 0;
    }
    return 0;
}

/* Emit each input itself (keeping it), plus N + x for even x. */
static int32_t batch_flat_map(void *user, const uint64_t *items, uint32_t count,
                              fluxus_emitter *em) {
    batch_ctx *c = (batch_ctx *)user;
    uint32_t i;
    for (i = 0; i < count; i++) {
        if (fluxus_emitter_emit(em, items[i]) != FLUXUS_OK) {
            TU_ADD(&c->bad_args, 1);
        }
        if (items[i] % 2u == 0 && fluxus_emitter_emit(em, LIFE_N + items[i]) != FLUXUS_OK) {
            TU_ADD(&c->bad_args, 1);
        }
    }
    if (fluxus_emitter_keep_input(em) != FLUXUS_OK) {
        TU_ADD(&c->bad_args, 1);
    }
    return 0;
}

static int32_t batch_sink(void *user, const uint64_t *items, int32_t *status, uint32_t count) {
    batch_ctx *c = (batch_ctx *)user;
    uint32_t i;
    for (i = 0; i < count; i++) {
        if (status[i] != 0) {
            TU_ADD(&c->bad_args, 1);
        }
        if ((items[i] % LIFE_N) % 11u == 0) {
            status[i] = SINK_FAIL;
        } else {
            tu_tracker_deliver(&c->t, items[i]);
        }
    }
    return 0;
}

typedef struct batch_expect {
    uint64_t map_failed, filtered, passed, emitted, sink_failed, delivered;
} batch_expect;

static void batch_expected(batch_expect *e) {
    uint64_t x;
    memset(e, 0, sizeof *e);
    for (x = 0; x < LIFE_N; x++) {
        uint64_t copies;
        if (x % 7u == 0) {
            e->map_failed++;
            continue;
        }
        if (x % 3u == 0) {
            e->filtered++;
            continue;
        }
        e->passed++;
        copies = x % 2u == 0 ? 2 : 1;
        e->emitted += copies;
        if (x % 11u == 0) {
            e->sink_failed += copies;
        } else {
            e->delivered += copies;
        }
    }
}

TU_RUNTIME_FIXTURE(2);

static void run_batch_pipeline(int32_t fusion) {
    batch_ctx c;
    batch_expect e;
    uint32_t st[4], i, n = 0;
    fluxus_stage_stats ss[4];
    fluxus_pipeline_stats s;
    fluxus_pipeline *p;
    uint64_t x;

    memset(&c, 0, sizeof c);
    c.batch_limit = 64;
    tu_tracker_init(&c.t, 2u * LIFE_N);
    batch_expected(&e);
    p = tu_pipeline(g_rt, "batches", &c.t);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_batch_size(p, 64));
    TU_OK(fluxus_pipeline_set_pull_source_batch(p, "src", batch_pull, &c, tu_user_free));
    TU_OK(fluxus_pipeline_add_map_batch(&st[0], p, "map", batch_map, &c, tu_user_free));
    TU_OK(fluxus_pipeline_add_filter_batch(&st[1], p, "filter", batch_filter, &c, tu_user_free));
    TU_OK(fluxus_pipeline_add_flat_map_batch(&st[2], p, "flat", batch_flat_map, &c, tu_user_free));
    TU_OK(fluxus_pipeline_add_sink_batch(&st[3], p, "sink", batch_sink, &c, tu_user_free));
    TU_OK(fluxus_stage_set_error_policy(p, st[0], FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_stage_set_error_policy(p, st[3], FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 4);
    for (i = 0; i < 4; i++) {
        assert_int_equal(st[i], i);
    }
    assert_string_equal(tu_stage_name(p, st[2]), "flat");
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.bad_args, 0);
    assert_int_equal(c.big_batch, 0); /* the source is never asked for more than a batch */
    assert_int_equal(c.next, LIFE_N);
    tu_stats(p, &s);
    assert_int_equal(s.admitted, LIFE_N + e.emitted);
    assert_int_equal(s.delivered, e.delivered);
    assert_int_equal(s.failed, e.map_failed + e.sink_failed);
    assert_int_equal(s.filtered, e.filtered + e.passed);
    assert_int_equal(s.dead_lettered, 0);
    assert_int_equal(s.cancelled, 0);

    for (i = 0; i < 4; i++) {
        tu_stage_stats(p, st[i], &ss[i]);
        assert_int_equal(ss[i].workers, 1);
        assert_true(ss[i].busy_ns > 0);
        assert_int_equal(ss[i].queue_depth, 0);
    }
    assert_int_equal(ss[0].in, LIFE_N);
    assert_int_equal(ss[0].failed, e.map_failed);
    assert_int_equal(ss[0].out, LIFE_N - e.map_failed);
    assert_int_equal(ss[1].in, LIFE_N - e.map_failed);
    assert_int_equal(ss[1].filtered, e.filtered);
    assert_int_equal(ss[1].out, e.passed);
    assert_int_equal(ss[2].in, e.passed);
    assert_int_equal(ss[2].filtered, e.passed);
    assert_int_equal(ss[2].out, e.emitted);
    assert_int_equal(ss[3].in, e.emitted);
    assert_int_equal(ss[3].failed, e.sink_failed);
    assert_int_equal(ss[3].out, e.delivered);
    if (fusion == 0) {
        for (i = 0; i < 4; i++) {
            assert_true(ss[i].queue_capacity > 0);
            assert_true(ss[i].queue_peak <= ss[i].queue_capacity);
        }
    }

    /* Kept flat-map inputs are not destroyed; everything else that did not arrive is. */
    tu_check_conservation(p, &c.t, e.passed);
    tu_tracker_check_once(&c.t, 0, LIFE_N);
    for (x = 0; x < LIFE_N; x++) {
        uint32_t seen = c.t.delivered[LIFE_N + x] + c.t.freed[LIFE_N + x];
        uint32_t expected = (x % 7u != 0 && x % 3u != 0 && x % 2u == 0) ? 1 : 0;
        if (seen != expected) {
            fail_msg("extra item for %llu ended %u times, expected %u", (unsigned long long)x, seen,
                     expected);
        }
    }
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 5);
    tu_tracker_destroy(&c.t);
}

static void test_batch_callbacks_of_every_kind_produce_the_right_results(void **state) {
    (void)state;
    run_batch_pipeline(1);
}

static void test_batch_callbacks_without_fusion_produce_the_same_results(void **state) {
    (void)state;
    run_batch_pipeline(0);
}

/* A nonzero return from a batch map fails every item of that batch. */
typedef struct whole_batch_ctx {
    uint64_t failed_items;
} whole_batch_ctx;

static int32_t map_batch_fails_whole_batch(void *user, const uint64_t *in, uint64_t *out,
                                           int32_t *status, uint32_t count) {
    whole_batch_ctx *c = (whole_batch_ctx *)user;
    uint32_t i;
    int fail = 0;
    (void)status;
    for (i = 0; i < count; i++) {
        out[i] = in[i];
        if (in[i] == 500) {
            fail = 1;
        }
    }
    if (fail) {
        TU_ADD(&c->failed_items, count);
        return 9;
    }
    return 0;
}

static void test_batch_map_returning_nonzero_fails_the_whole_batch(void **state) {
    whole_batch_ctx w = {0};
    tu_tracker t;
    tu_range_source src = {0, 2000, 0};
    uint32_t map = 0;
    fluxus_pipeline_stats s;
    fluxus_pipeline *p;
    (void)state;

    tu_tracker_init(&t, 2000);
    p = tu_pipeline(g_rt, "whole_batch", &t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(&map, p, "map", map_batch_fails_whole_batch, &w, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, map, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    tu_stats(p, &s);
    assert_true(w.failed_items >= 1);
    assert_int_equal(s.failed, w.failed_items);
    assert_int_equal(s.delivered, 2000 - w.failed_items);
    assert_int_equal(t.freed[500], 1);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, 2000);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

/* ----- worker hooks ----- */

#define HOOK_WORKERS 3u

typedef struct hook_ctx {
    uint32_t init_count[HOOK_WORKERS + 1];
    uint32_t close_count[HOOK_WORKERS + 1];
    uint64_t bad_worker;   /* callbacks or hooks with an out-of-range worker index */
    uint64_t before_init;  /* items processed by a worker before its init hook */
    uint64_t fail_init_of; /* worker whose init fails (UINT64_MAX: none) */
    uint64_t items;
} hook_ctx;

static int32_t hook_init(void *user, uint32_t worker) {
    hook_ctx *c = (hook_ctx *)user;
    if (worker >= HOOK_WORKERS) {
        TU_ADD(&c->bad_worker, 1);
        return 0;
    }
    TU_ADD(&c->init_count[worker], 1);
    return worker == c->fail_init_of ? 1 : 0;
}

static void hook_close(void *user, uint32_t worker) {
    hook_ctx *c = (hook_ctx *)user;
    if (worker >= HOOK_WORKERS) {
        TU_ADD(&c->bad_worker, 1);
        return;
    }
    TU_ADD(&c->close_count[worker], 1);
}

static int32_t hook_map(void *user, uint64_t in, uint64_t *out) {
    hook_ctx *c = (hook_ctx *)user;
    uint32_t w = tu_current_worker();
    if (w >= HOOK_WORKERS) {
        TU_ADD(&c->bad_worker, 1);
    } else if (TU_LOAD(&c->init_count[w]) == 0) {
        TU_ADD(&c->before_init, 1);
    }
    TU_ADD(&c->items, 1);
    tu_spin(200);
    *out = in;
    return 0;
}

static int32_t worker_checking_sink(void *user, uint64_t item) {
    tu_tracker *t = (tu_tracker *)user;
    if (tu_current_worker() != 0) { /* a one-worker sink is worker 0 */
        TU_ADD(&t->free_user_errors, 1);
    }
    tu_tracker_deliver(t, item);
    return 0;
}

static fluxus_pipeline *build_hooks(hook_ctx *c, tu_tracker *t, tu_range_source *src,
                                    uint32_t *map) {
    fluxus_pipeline *p = tu_pipeline(g_rt, "hooks", t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 8));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_map(map, p, "map", hook_map, c, tu_user_free));
    TU_OK(fluxus_stage_set_workers(p, *map, HOOK_WORKERS));
    TU_OK(fluxus_stage_set_worker_hooks(p, *map, hook_init, hook_close));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", worker_checking_sink, t, NULL));
    return p;
}

static void test_worker_hooks_run_once_per_worker_around_its_items(void **state) {
    hook_ctx c;
    tu_tracker t;
    tu_range_source src = {0, 3000, 0};
    uint32_t map = 0, w;
    fluxus_stage_stats st;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    c.fail_init_of = UINT64_MAX;
    tu_tracker_init(&t, 3000);
    p = build_hooks(&c, &t, &src, &map);
    assert_int_equal(tu_current_worker(), UINT32_MAX); /* not inside a callback */
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.bad_worker, 0);
    assert_int_equal(c.before_init, 0);
    assert_int_equal(c.items, 3000);
    assert_int_equal(t.free_user_errors, 0);
    for (w = 0; w < HOOK_WORKERS; w++) {
        assert_int_equal(c.init_count[w], 1);
        assert_int_equal(c.close_count[w], 1);
    }
    tu_stage_stats(p, map, &st);
    assert_int_equal(st.workers, HOOK_WORKERS);
    assert_true(st.busy_ns > 0);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, 3000);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    tu_tracker_destroy(&t);
}

static void test_failing_worker_init_stops_the_pipeline_with_efailed(void **state) {
    hook_ctx c;
    tu_tracker t;
    tu_range_source src = {0, 3000, 0};
    uint32_t map = 0, w;
    fluxus_pipeline *p;
    (void)state;

    memset(&c, 0, sizeof c);
    c.fail_init_of = 1;
    tu_tracker_init(&t, 3000);
    p = build_hooks(&c, &t, &src, &map);
    tu_run_expect(p, FLUXUS_EFAILED);
    assert_true(c.init_count[1] == 1);
    for (w = 0; w < HOOK_WORKERS; w++) {
        assert_true(c.init_count[w] <= 1);
        assert_true(c.close_count[w] <= c.init_count[w]);
    }
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, src.next);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

/* ----- a pull source that is sometimes not ready ----- */

typedef struct lazy_source {
    uint64_t next, end, calls, laters;
} lazy_source;

/* Says PULL_LATER on every third call. */
static int32_t lazy_pull(void *user, uint64_t *item) {
    lazy_source *s = (lazy_source *)user;
    if (++s->calls % 3u == 0) {
        s->laters++;
        return FLUXUS_PULL_LATER;
    }
    if (s->next >= s->end) {
        return FLUXUS_PULL_END;
    }
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}

static void test_pull_source_saying_later_is_polled_again(void **state) {
    tu_tracker t;
    lazy_source src = {0, 300, 0, 0};
    fluxus_pipeline *p;
    (void)state;

    tu_tracker_init(&t, 300);
    p = tu_pipeline(g_rt, "lazy", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", lazy_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_poll_interval_us(p, 50));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);
    assert_true(src.laters >= 100);
    assert_int_equal(t.delivered_total, 300);
    tu_tracker_check_once(&t, 0, 300);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

/* ----- many pipelines, runtime freed first ----- */

#define MANY 8u
#define MANY_N 5000u

static void test_many_pipelines_run_at_once_on_one_runtime(void **state) {
    tu_tracker t[MANY];
    tu_range_source src[MANY];
    fluxus_pipeline *p[MANY];
    uint32_t i;
    (void)state;

    for (i = 0; i < MANY; i++) {
        src[i].next = 0;
        src[i].end = MANY_N;
        src[i].calls = 0;
        tu_tracker_init(&t[i], MANY_N);
        p[i] = tu_pipeline(g_rt, "many", &t[i]);
        TU_OK(fluxus_pipeline_set_pull_source(p[i], "src", tu_range_pull, &src[i], NULL));
        TU_OK(fluxus_pipeline_add_map(NULL, p[i], NULL, tu_identity_map, NULL, NULL));
        TU_OK(fluxus_pipeline_add_sink(NULL, p[i], NULL, tu_tracker_sink, &t[i], NULL));
        assert_non_null(tu_stage_name(p[i], 0)); /* a name is made up */
        assert_true(tu_stage_name(p[i], 0)[0] != '\0');
    }
    for (i = 0; i < MANY; i++) {
        TU_OK(fluxus_pipeline_start(p[i]));
    }
    for (i = 0; i < MANY; i++) {
        TU_EXPECT(FLUXUS_OK, tu_wait(p[i]));
    }
    for (i = 0; i < MANY; i++) {
        assert_int_equal(t[i].delivered_total, MANY_N);
        tu_check_conservation(p[i], &t[i], 0);
        tu_tracker_check_once(&t[i], 0, MANY_N);
        TU_OK(fluxus_pipeline_free(p[i]));
        tu_tracker_destroy(&t[i]);
    }
}

static void test_freeing_the_runtime_first_leaves_pipelines_to_be_freed(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker t;
    tu_range_source src = {0, 100, 0};
    fluxus_pipeline *p;
    int32_t rc;
    (void)state;

    tu_tracker_init(&t, 100);
    p = tu_pipeline(rt, "orphan", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, tu_user_free));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, tu_user_free));
    tu_run_expect(p, FLUXUS_OK);
    assert_int_equal(t.delivered_total, 100);

    TU_OK(fluxus_runtime_free(rt));
    /* The pipeline handle stays valid; its calls now say ESTATE. */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    rc = fluxus_pipeline_wait(p, 0);
    if (rc != FLUXUS_ESTATE && rc != FLUXUS_OK) {
        fail_msg("wait after the runtime was freed returned %s", fluxus_err_name(rc));
    }
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 2);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

static int32_t slow_sink(void *user, uint64_t item) {
    tu_sleep_us(50);
    tu_tracker_deliver((tu_tracker *)user, item);
    return 0;
}

static void test_freeing_the_runtime_cancels_its_running_pipelines(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker t;
    tu_range_source src = {0, 100000, 0};
    fluxus_pipeline *p;
    uint64_t t0;
    (void)state;

    tu_tracker_init(&t, 100000);
    p = tu_pipeline(rt, "running", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, tu_user_free));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", slow_sink, &t, tu_user_free));
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    while (TU_LOAD(&t.delivered_total) < 10) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("no progress");
        }
        tu_sleep_us(500);
    }
    TU_OK(fluxus_runtime_free(rt)); /* cancels and finishes the pipeline, joins threads */
    assert_true(src.next < 100000);
    /* Every pulled item ended exactly once; nothing else was touched. */
    assert_int_equal(t.delivered_total + t.freed_total, src.next);
    tu_tracker_check_once(&t, 0, src.next);
    tu_tracker_check_untouched(&t, src.next, 100000);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 2);
    tu_tracker_destroy(&t);
}

/* ----- log callback and user_free bookkeeping ----- */

typedef struct log_ctx {
    uint32_t frees;
    uint64_t calls;
    uint64_t bad;
} log_ctx;

static void counting_log(void *user, int32_t level, const char *pl, const char *st,
                         const char *msg) {
    log_ctx *c = (log_ctx *)user;
    TU_ADD(&c->calls, 1);
    if (level < FLUXUS_LOG_ERROR || level > FLUXUS_LOG_DEBUG || pl == NULL || st == NULL ||
        msg == NULL) {
        TU_ADD(&c->bad, 1);
    }
}

static void log_ctx_free(void *user) {
    TU_ADD(&((log_ctx *)user)->frees, 1);
}

static int32_t failing_sink(void *user, uint64_t item) {
    (void)user;
    return item == 5 ? 1 : 0;
}

static void test_log_callback_can_be_installed_replaced_and_removed(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    log_ctx a, b, c;
    tu_range_source src = {0, 100, 0};
    fluxus_pipeline *p;
    (void)state;

    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_DEBUG, counting_log, &a, log_ctx_free));
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_WARN, counting_log, &b, log_ctx_free));
    assert_int_equal(a.frees, 1); /* replaced: its user_free ran */
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_WARN, NULL, NULL, NULL));
    assert_int_equal(b.frees, 1); /* removed */
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_DEBUG, counting_log, &c, log_ctx_free));

    /* A pipeline that fails, to give the runtime something to say. */
    p = tu_pipeline(rt, "logged", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", failing_sink, NULL, NULL));
    tu_run_expect(p, FLUXUS_EFAILED);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(a.frees, 1);
    assert_int_equal(b.frees, 1);
    assert_int_equal(c.frees, 1);
    assert_int_equal(a.bad + b.bad + c.bad, 0);
    assert_int_equal(b.calls, 0); /* removed before anything ran */
}

#define SLOTS 9

static uint32_t slot_frees[SLOTS];

static void slot_free(void *user) {
    TU_ADD((uint32_t *)user, 1);
}
static void slot_item_free(void *user, uint64_t item) {
    (void)user;
    (void)item;
}
static void slot_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    (void)user;
    (void)item;
    (void)f;
}
static int32_t slot_filter(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    *keep = item % 2u == 0;
    return 0;
}
static int32_t slot_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    (void)user;
    return fluxus_emitter_emit(em, item);
}
static int32_t slot_sink(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}
static int32_t slot_key(void *user, uint64_t item, const void **key, size_t *len) {
    static const uint64_t keys[4] = {0, 1, 2, 3};
    (void)user;
    *key = &keys[item % 4u];
    *len = sizeof keys[0];
    return 0;
}

/* Registers one distinct user pointer per callback kind. */
static fluxus_pipeline *build_slots(fluxus_runtime *rt, tu_range_source *src) {
    fluxus_pipeline *p = tu_pipeline(rt, "slots", NULL);
    uint32_t map = 0, sink = 0;
    memset(slot_frees, 0, sizeof slot_frees);
    TU_OK(fluxus_pipeline_set_item_free(p, slot_item_free, &slot_frees[0], slot_free));
    TU_OK(fluxus_pipeline_set_dead_letter(p, slot_dead_letter, &slot_frees[1], slot_free));
    /* tu_range_pull needs its own state; its user_free is the global counter. */
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, tu_user_free));
    TU_OK(fluxus_pipeline_add_map(&map, p, "map", tu_identity_map, &slot_frees[2], slot_free));
    TU_OK(fluxus_stage_set_key_fn(p, map, slot_key, &slot_frees[3], slot_free));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_PER_KEY));
    TU_OK(fluxus_stage_set_workers(p, map, 2));
    TU_OK(fluxus_pipeline_add_filter(NULL, p, "filter", slot_filter, &slot_frees[4], slot_free));
    TU_OK(fluxus_pipeline_add_flat_map(NULL, p, "flat", slot_flat_map, &slot_frees[5], slot_free));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", slot_sink, &slot_frees[6], slot_free));
    return p;
}

static void test_user_free_runs_exactly_once_per_registered_pointer(void **state) {
    tu_range_source src = {0, 1000, 0};
    fluxus_pipeline *p = build_slots(g_rt, &src);
    uint32_t i;
    (void)state;

    tu_run_expect(p, FLUXUS_OK);
    TU_OK(fluxus_pipeline_free(p));
    for (i = 0; i < 7; i++) {
        if (slot_frees[i] != 1) {
            fail_msg("user_free of registration %u ran %u times", i, slot_frees[i]);
        }
    }
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
}

static void test_user_free_runs_for_a_pipeline_that_never_started(void **state) {
    tu_range_source src = {0, 1000, 0};
    fluxus_pipeline *p = build_slots(g_rt, &src);
    uint32_t i;
    (void)state;

    TU_OK(fluxus_pipeline_free(p));
    for (i = 0; i < 7; i++) {
        assert_int_equal(slot_frees[i], 1);
    }
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_batch_callbacks_of_every_kind_produce_the_right_results, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_batch_callbacks_without_fusion_produce_the_same_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_map_returning_nonzero_fails_the_whole_batch,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_worker_hooks_run_once_per_worker_around_its_items,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_worker_init_stops_the_pipeline_with_efailed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_pull_source_saying_later_is_polled_again, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_many_pipelines_run_at_once_on_one_runtime, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_freeing_the_runtime_first_leaves_pipelines_to_be_freed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_freeing_the_runtime_cancels_its_running_pipelines,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_callback_can_be_installed_replaced_and_removed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_free_runs_exactly_once_per_registered_pointer,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_free_runs_for_a_pipeline_that_never_started,
                                        setup, teardown),
    };
    return TU_RUN_GROUP(tests);
}
