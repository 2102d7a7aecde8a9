/*
 * Async map stages: fluxus_pipeline_add_async_map, fluxus_pipeline_complete_async, the in-flight limit,
 * ordered and unordered output, stage timeouts (async and sync stages), completion errors,
 * cancel and drain with items in flight. Timing is asserted on a host-driven runtime with a
 * virtual clock; threaded runtimes are used for completions from other threads.
 */
#include "test_util.h"

#include <sched.h>

#define REFUSE_STATUS 33
#define FAIL_STATUS 77
#define NO_ITEM UINT64_MAX

/* What the async callback does with an item. */
enum {
    DO_HOLD = 0,  /* record the completion handle; the test completes it later */
    DO_SYNC,      /* complete it inside the callback */
    DO_TIMER,     /* complete it from a timer, delay_ns(item) later */
    DO_QUEUE      /* hand it to host threads through a locked queue */
};

typedef struct qentry {
    uint64_t item;
    uint64_t completion;
} qentry;

#define QCAP 8192u

typedef struct actx {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t async_stage;
    uint32_t sink_stage;
    uint64_t n;
    tu_tracker t;
    int mode;

    /* per item: completion handle (0 = not started) */
    uint64_t *comp;
    uint64_t started;
    uint64_t outstanding; /* started and not yet handed back by the test (upper-bounds in use) */
    uint64_t max_outstanding;
    uint64_t start_order_errors; /* callback saw items out of input order */
    uint64_t last_started_plus1;

    /* per-item callback behaviour */
    uint64_t refuse_item;               /* callback returns REFUSE_STATUS for it */
    uint64_t complete_then_refuse_item; /* callback completes it, then returns REFUSE_STATUS */
    int32_t complete_then_refuse_rc;
    uint64_t sync_errors; /* fluxus_pipeline_complete_async failures inside the callback */

    /* DO_TIMER */
    uint64_t delay_base_ns;
    uint64_t delay_spread_ns; /* 0: fixed; else pseudo-random in [base, base + spread) */
    int reverse_delays;       /* delay = (n - item) * delay_base_ns */
    uint64_t timer_errors;
    uint64_t timer_frees;

    /* DO_QUEUE */
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    qentry q[QCAP];
    uint32_t qhead, qlen;
    int qstop;
    uint64_t qoverflow;
    uint64_t thread_errors;

    /* sink */
    uint64_t *order; /* delivery order */
    uint64_t delivered;
    uint64_t checksum;
    uint64_t sink_order_errors; /* ordered: delivered out of input order */
    int check_sink_order;

    /* dead letters */
    uint64_t dl_calls;
    int32_t dl_status;
    uint64_t dl_item;
    uint32_t dl_index;
    char dl_stage[64];
    uint64_t dl_freed_before;
} actx;

static void note_started(actx *c, uint64_t item, uint64_t completion) {
    uint64_t o = TU_ADD(&c->outstanding, 1);
    uint64_t m = TU_LOAD(&c->max_outstanding);
    while (o > m && !__atomic_compare_exchange_n(&c->max_outstanding, &m, o, 0, __ATOMIC_SEQ_CST,
                                                 __ATOMIC_SEQ_CST)) {
    }
    if (item < c->n) {
        TU_STORE(&c->comp[item], completion);
    }
    if (item + 1 <= TU_LOAD(&c->last_started_plus1)) {
        TU_ADD(&c->start_order_errors, 1);
    }
    TU_STORE(&c->last_started_plus1, item + 1);
    TU_ADD(&c->started, 1);
}

/* The test (or a timer, or a host thread) completes an item: the outstanding count drops first,
 * so the count never exceeds what the stage really holds. */
static int32_t complete_item(actx *c, uint64_t item, int32_t status) {
    TU_ADD(&c->outstanding, (uint64_t)-1);
    return fluxus_pipeline_complete_async(c->p, TU_LOAD(&c->comp[item]), status, item);
}

typedef struct timer_job {
    actx *c;
    uint64_t item;
} timer_job;

static void timer_complete_fn(void *user) {
    timer_job *j = (timer_job *)user;
    if (complete_item(j->c, j->item, 0) != FLUXUS_OK) {
        TU_ADD(&j->c->timer_errors, 1);
    }
}

static void timer_job_free(void *user) {
    timer_job *j = (timer_job *)user;
    TU_ADD(&j->c->timer_frees, 1);
    free(j);
}

static uint64_t delay_of(const actx *c, uint64_t item) {
    if (c->reverse_delays) {
        return (c->n - item) * c->delay_base_ns;
    }
    if (c->delay_spread_ns == 0) {
        return c->delay_base_ns;
    }
    return c->delay_base_ns + tu_mix64(item) % c->delay_spread_ns;
}

static int32_t async_fn(void *user, uint64_t item, uint64_t completion) {
    actx *c = (actx *)user;
    note_started(c, item, completion);
    if (item == c->refuse_item) {
        TU_ADD(&c->outstanding, (uint64_t)-1);
        return REFUSE_STATUS;
    }
    if (item == c->complete_then_refuse_item) {
        c->complete_then_refuse_rc = complete_item(c, item, 0);
        return REFUSE_STATUS;
    }
    switch (c->mode) {
    case DO_SYNC:
        if (complete_item(c, item, 0) != FLUXUS_OK) {
            TU_ADD(&c->sync_errors, 1);
        }
        break;
    case DO_TIMER: {
        timer_job *j = (timer_job *)malloc(sizeof *j);
        if (j == NULL) {
            return FLUXUS_ENOMEM;
        }
        j->c = c;
        j->item = item;
        if (fluxus_runtime_call_after(NULL, c->rt, delay_of(c, item), timer_complete_fn, j,
                                      timer_job_free) != FLUXUS_OK) {
            TU_ADD(&c->timer_errors, 1);
        }
        break;
    }
    case DO_QUEUE:
        pthread_mutex_lock(&c->qmu);
        if (c->qlen == QCAP) {
            c->qoverflow++;
        } else {
            qentry *e = &c->q[(c->qhead + c->qlen) % QCAP];
            e->item = item;
            e->completion = completion;
            c->qlen++;
            pthread_cond_signal(&c->qcv);
        }
        pthread_mutex_unlock(&c->qmu);
        break;
    default:
        break; /* DO_HOLD */
    }
    return 0;
}

static int32_t order_sink(void *user, uint64_t item) {
    actx *c = (actx *)user;
    uint64_t i = TU_ADD(&c->delivered, 1) - 1;
    if (c->check_sink_order && item != i) {
        TU_ADD(&c->sink_order_errors, 1);
    }
    if (c->order != NULL && i < c->n) {
        c->order[i] = item;
    }
    TU_ADD(&c->checksum, item);
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void record_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    actx *c = (actx *)user;
    const char *name = tu_failure_stage_name(f);
    TU_ADD(&c->dl_calls, 1);
    c->dl_status = tu_failure_status(f);
    c->dl_item = item;
    c->dl_index = tu_failure_stage_index(f);
    strncpy(c->dl_stage, name != NULL ? name : "(null)", sizeof c->dl_stage - 1);
    if (item < c->t.n && TU_LOAD(&c->t.freed[item]) != 0) {
        TU_ADD(&c->dl_freed_before, 1);
    }
}

/* ----- building and driving ----- */

typedef struct build_opts {
    uint32_t workers;   /* runtime workers; 0 = host-driven */
    int virtual_clock;  /* host-driven tests use the virtual clock */
    uint64_t n;         /* items from the pull source */
    int order;          /* FLUXUS_ORDER_* */
    uint32_t in_flight; /* 0 = default */
    uint64_t timeout_us;
    int32_t policy;
    int mode;
} build_opts;

static tu_range_source g_src;

static void ctx_init(actx *c, uint64_t n) {
    memset(c, 0, sizeof *c);
    c->n = n;
    tu_tracker_init(&c->t, n);
    c->comp = (uint64_t *)calloc((size_t)n + 1, sizeof(uint64_t));
    c->order = (uint64_t *)calloc((size_t)n + 1, sizeof(uint64_t));
    assert_non_null(c->comp);
    assert_non_null(c->order);
    c->refuse_item = NO_ITEM;
    c->complete_then_refuse_item = NO_ITEM;
    c->complete_then_refuse_rc = 1;
    pthread_mutex_init(&c->qmu, NULL);
    pthread_cond_init(&c->qcv, NULL);
}

static void ctx_destroy(actx *c) {
    tu_tracker_destroy(&c->t);
    free(c->comp);
    free(c->order);
    pthread_mutex_destroy(&c->qmu);
    pthread_cond_destroy(&c->qcv);
}

/* Pull source -> async map "fetch" -> sink "sink"; a dead-letter callback is always set. */
static void build(actx *c, const build_opts *o) {
    fluxus_runtime *rt = tu_runtime(o->workers);
    fluxus_pipeline *p;
    ctx_init(c, o->n);
    c->mode = o->mode;
    c->check_sink_order = o->order == FLUXUS_ORDER_ORDERED;
    if (o->virtual_clock) {
        TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 1000000000ull));
    }
    p = tu_pipeline(rt, "async", &c->t);
    c->rt = rt;
    c->p = p;
    g_src.next = 0;
    g_src.end = o->n;
    g_src.calls = 0;
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &g_src, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&c->async_stage, p, "fetch", async_fn, c, tu_user_free));
    TU_OK(fluxus_stage_set_order(p, c->async_stage, o->order));
    if (o->in_flight) {
        TU_OK(fluxus_stage_set_in_flight(p, c->async_stage, o->in_flight));
    }
    if (o->timeout_us) {
        TU_OK(fluxus_stage_set_timeout_us(p, c->async_stage, o->timeout_us));
    }
    TU_OK(fluxus_stage_set_error_policy(p, c->async_stage, o->policy));
    TU_OK(fluxus_pipeline_add_sink(&c->sink_stage, p, "sink", order_sink, c, NULL));
    TU_OK(fluxus_pipeline_set_dead_letter(p, record_dead_letter, c, NULL));
}

static void teardown_ctx(actx *c) {
    tu_free_all(c->p, c->rt);
    ctx_destroy(c);
}

/* Host-driven: run work until nothing is ready. */
static void run_until_idle(fluxus_runtime *rt) {
    uint32_t ran = 1, rounds = 0;
    while (ran != 0) {
        TU_OK(fluxus_runtime_run_once(&ran, rt));
        if (++rounds > 1000000u) {
            fail_msg("run_once never became idle");
        }
    }
}

/* Advance the virtual clock and run what it woke. */
static void advance(actx *c, uint64_t ns) {
    TU_OK(fluxus_runtime_advance_clock(c->rt, ns));
    run_until_idle(c->rt);
}

/* Timer user_free runs after the callback, on the timer's thread: wait for all of them before
 * the context goes away. */
static void wait_timer_frees(actx *c, uint64_t n) {
    uint64_t t0 = tu_now_ms();
    while (TU_LOAD(&c->timer_frees) < n) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of %llu timer user_free calls ran",
                     (unsigned long long)TU_LOAD(&c->timer_frees), (unsigned long long)n);
        }
        tu_sleep_us(200);
    }
    assert_int_equal(TU_LOAD(&c->timer_frees), n);
}

static void async_stats(actx *c, fluxus_stage_stats *s) {
    tu_stage_stats(c->p, c->async_stage, s);
}

static int32_t state_of(fluxus_pipeline *p) {
    int32_t st = -1;
    TU_OK(fluxus_pipeline_get_state(&st, p));
    return st;
}

/* admitted == delivered + filtered + failed + dead_lettered + cancelled, in flight 0. */
static void check_balanced(actx *c) {
    fluxus_stage_stats as;
    tu_check_conservation(c->p, NULL, 0);
    async_stats(c, &as);
    assert_int_equal(as.in_flight, 0);
}

/* Every item delivered once, none destroyed, checksum 0 + 1 + ... + n-1. */
static void check_all_delivered(actx *c) {
    fluxus_pipeline_stats s;
    assert_int_equal(TU_LOAD(&c->delivered), c->n);
    assert_int_equal(TU_LOAD(&c->checksum), c->n * (c->n - 1) / 2);
    tu_tracker_check_once(&c->t, 0, c->n);
    assert_int_equal(TU_LOAD(&c->t.freed_total), 0);
    tu_stats(c->p, &s);
    assert_int_equal(s.admitted, c->n);
    assert_int_equal(s.delivered, c->n);
    check_balanced(c);
}

/* ----- where completions come from ----- */

static void test_completion_inside_the_callback(void **state) {
    int order;
    (void)state;
    for (order = FLUXUS_ORDER_ORDERED; order <= FLUXUS_ORDER_UNORDERED; order++) {
        uint32_t workers;
        for (workers = 0; workers <= 2; workers += 2) {
            actx c;
            build_opts o = {workers, 0, 10000, order, 16, 0, FLUXUS_ERROR_FAIL_FAST, DO_SYNC};
            build(&c, &o);
            c.check_sink_order = 1; /* synchronous completions come back in input order */
            tu_run_expect(c.p, FLUXUS_OK);
            assert_int_equal(c.sync_errors, 0);
            assert_int_equal(c.sink_order_errors, 0);
            assert_int_equal(c.start_order_errors, 0);
            assert_true(c.max_outstanding <= 1);
            check_all_delivered(&c);
            teardown_ctx(&c);
        }
    }
}

static void test_completion_from_timers_on_a_threaded_runtime(void **state) {
    int order;
    (void)state;
    for (order = FLUXUS_ORDER_ORDERED; order <= FLUXUS_ORDER_UNORDERED; order++) {
        actx c;
        build_opts o = {2, 0, 3000, order, 64, 0, FLUXUS_ERROR_FAIL_FAST, DO_TIMER};
        build(&c, &o);
        c.delay_base_ns = 10000;    /* 10 us */
        c.delay_spread_ns = 500000; /* .. 510 us: completions arrive out of order */
        tu_run_expect(c.p, FLUXUS_OK);
        wait_timer_frees(&c, o.n);
        assert_int_equal(c.timer_errors, 0);
        assert_int_equal(c.sink_order_errors, 0); /* checked in ordered mode only */
        assert_true(c.max_outstanding <= 64);
        check_all_delivered(&c);
        teardown_ctx(&c);
    }
}

static void test_completion_from_timers_on_a_virtual_clock(void **state) {
    int order;
    (void)state;
    for (order = FLUXUS_ORDER_ORDERED; order <= FLUXUS_ORDER_UNORDERED; order++) {
        actx c;
        build_opts o = {0, 1, 500, order, 32, 0, FLUXUS_ERROR_FAIL_FAST, DO_TIMER};
        uint32_t steps = 0;
        build(&c, &o);
        c.delay_base_ns = 1000;
        c.delay_spread_ns = 50000;
        TU_OK(fluxus_pipeline_start(c.p));
        while (state_of(c.p) != FLUXUS_STATE_FINISHED) {
            run_until_idle(c.rt);
            TU_OK(fluxus_runtime_advance_clock(c.rt, 1000));
            if (++steps > 1000000u) {
                fail_msg("pipeline did not finish");
            }
        }
        TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(c.p, 0));
        assert_int_equal(c.timer_frees, o.n); /* fired on this thread, during advance */
        assert_int_equal(c.timer_errors, 0);
        assert_int_equal(c.sink_order_errors, 0);
        assert_true(c.max_outstanding <= 32);
        assert_int_equal(c.max_outstanding, 32); /* the limit was reached */
        check_all_delivered(&c);
        teardown_ctx(&c);
    }
}

/* Host threads that complete what the callback queued. */
static void *completer_main(void *arg) {
    actx *c = (actx *)arg;
    uint64_t local = 0;
    for (;;) {
        qentry e;
        pthread_mutex_lock(&c->qmu);
        while (c->qlen == 0 && !c->qstop) {
            pthread_cond_wait(&c->qcv, &c->qmu);
        }
        if (c->qlen == 0) {
            pthread_mutex_unlock(&c->qmu);
            break;
        }
        e = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % QCAP;
        c->qlen--;
        pthread_mutex_unlock(&c->qmu);
        TU_ADD(&c->outstanding, (uint64_t)-1);
        if (fluxus_pipeline_complete_async(c->p, e.completion, 0, e.item) != FLUXUS_OK) {
            TU_ADD(&c->thread_errors, 1);
        }
        if ((++local & 1023u) == 0) {
            sched_yield(); /* let the other completer interleave */
        }
    }
    return NULL;
}

static void run_with_completers(actx *c, uint32_t threads) {
    pthread_t th[4];
    uint32_t i;
    assert_true(threads <= 4);
    for (i = 0; i < threads; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, completer_main, c), 0);
    }
    TU_OK(fluxus_pipeline_start(c->p));
    TU_EXPECT(FLUXUS_OK, tu_wait(c->p));
    pthread_mutex_lock(&c->qmu);
    c->qstop = 1;
    pthread_cond_broadcast(&c->qcv);
    pthread_mutex_unlock(&c->qmu);
    for (i = 0; i < threads; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
    }
    assert_int_equal(c->qoverflow, 0);
    assert_int_equal(c->thread_errors, 0);
}

static void test_completion_from_a_host_thread(void **state) {
    int order;
    (void)state;
    for (order = FLUXUS_ORDER_ORDERED; order <= FLUXUS_ORDER_UNORDERED; order++) {
        actx c;
        build_opts o = {1, 0, 20000, order, 100, 0, FLUXUS_ERROR_FAIL_FAST, DO_QUEUE};
        build(&c, &o);
        run_with_completers(&c, 1);
        assert_int_equal(c.sink_order_errors, 0);
        assert_true(c.max_outstanding <= 100);
        check_all_delivered(&c);
        teardown_ctx(&c);
    }
}

/* A host-driven runtime: the test thread runs the work inside fluxus_pipeline_wait(), another
 * host thread completes the items; each completion must wake the waiting host thread. */
static void test_completion_from_a_host_thread_on_a_host_driven_runtime(void **state) {
    actx c;
    build_opts o = {0, 0, 5000, FLUXUS_ORDER_UNORDERED, 50, 0, FLUXUS_ERROR_FAIL_FAST, DO_QUEUE};
    (void)state;
    build(&c, &o);
    run_with_completers(&c, 1); /* tu_wait runs the work on this thread */
    assert_true(c.max_outstanding <= 50);
    check_all_delivered(&c);
    teardown_ctx(&c);
}

/* ----- output order ----- */

static void reverse_completions(int order) {
    enum { N = 8 };
    actx c;
    build_opts o = {0, 1, N, order, N, 0, FLUXUS_ERROR_FAIL_FAST, DO_TIMER};
    uint32_t i;
    build(&c, &o);
    c.check_sink_order = 0;
    c.reverse_delays = 1; /* item i completes (N - i) us after it started: reverse order */
    c.delay_base_ns = 1000;
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, N); /* all started at the same virtual instant */
    for (i = 1; i < N; i++) {
        advance(&c, 1000); /* item N - i completes */
        if (order == FLUXUS_ORDER_ORDERED) {
            assert_int_equal(TU_LOAD(&c.delivered), 0); /* item 0 still holds the line */
        } else {
            assert_int_equal(TU_LOAD(&c.delivered), i);
            assert_int_equal(c.order[i - 1], N - i);
        }
    }
    advance(&c, 1000); /* item 0 completes */
    assert_int_equal(TU_LOAD(&c.delivered), N);
    for (i = 0; i < N; i++) {
        uint64_t expect = order == FLUXUS_ORDER_ORDERED ? i : N - 1 - i;
        if (c.order[i] != expect) {
            fail_msg("%s: delivery %u was item %llu, expected %llu",
                     order == FLUXUS_ORDER_ORDERED ? "ordered" : "unordered", i,
                     (unsigned long long)c.order[i], (unsigned long long)expect);
        }
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    assert_int_equal(c.timer_errors, 0);
    check_all_delivered(&c);
    teardown_ctx(&c);
}

static void test_ordered_delivers_in_input_order_when_completions_arrive_reversed(void **state) {
    (void)state;
    reverse_completions(FLUXUS_ORDER_ORDERED);
}

static void test_unordered_delivers_in_completion_order(void **state) {
    (void)state;
    reverse_completions(FLUXUS_ORDER_UNORDERED);
}

/* ----- in-flight limit ----- */

static void test_in_flight_limit_unordered(void **state) {
    actx c;
    build_opts o = {0, 0, 20, FLUXUS_ORDER_UNORDERED, 4, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_stage_stats as;
    uint64_t i;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 4);
    async_stats(&c, &as);
    assert_int_equal(as.in_flight, 4);
    run_until_idle(c.rt);
    assert_int_equal(c.started, 4); /* nothing more without a completion */

    TU_OK(complete_item(&c, 2, 0));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 5);
    assert_int_equal(TU_LOAD(&c.delivered), 1);
    assert_int_equal(c.order[0], 2);
    async_stats(&c, &as);
    assert_int_equal(as.in_flight, 4);
    assert_int_equal(as.out, 1);

    /* complete in input order: each completion lets exactly one more item start */
    for (i = 0; i < 20; i++) {
        if (i == 2) {
            continue;
        }
        assert_true(TU_LOAD(&c.comp[i]) != 0); /* started */
        TU_OK(complete_item(&c, i, 0));
        run_until_idle(c.rt);
        {
            /* 5 had started (0..4, with 2 completed); each later completion starts one more */
            uint64_t expect = i < 2 ? i + 6 : i + 5;
            assert_int_equal(c.started, expect < 20 ? expect : 20);
        }
        assert_true(c.max_outstanding <= 4);
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    assert_int_equal(c.max_outstanding, 4);
    check_all_delivered(&c);
    teardown_ctx(&c);
}

static void test_in_flight_limit_ordered_counts_completed_items_behind_the_head(void **state) {
    actx c;
    build_opts o = {0, 0, 20, FLUXUS_ORDER_ORDERED, 4, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_stage_stats as;
    uint64_t i;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 4);

    /* all but the head: they keep their slots until the head goes on */
    TU_OK(complete_item(&c, 1, 0));
    TU_OK(complete_item(&c, 2, 0));
    TU_OK(complete_item(&c, 3, 0));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 4);
    assert_int_equal(TU_LOAD(&c.delivered), 0);
    async_stats(&c, &as);
    assert_int_equal(as.in_flight, 4);

    TU_OK(complete_item(&c, 0, 0));
    run_until_idle(c.rt);
    assert_int_equal(TU_LOAD(&c.delivered), 4);
    assert_int_equal(c.started, 8);
    for (i = 0; i < 4; i++) {
        assert_int_equal(c.order[i], i);
    }
    for (i = 4; i < 20; i++) {
        run_until_idle(c.rt);
        assert_true(TU_LOAD(&c.comp[i]) != 0);
        TU_OK(complete_item(&c, i, 0));
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    assert_int_equal(c.sink_order_errors, 0);
    check_all_delivered(&c);
    teardown_ctx(&c);
}

static void test_in_flight_limit_holds_with_threaded_timer_completions(void **state) {
    int order;
    (void)state;
    for (order = FLUXUS_ORDER_ORDERED; order <= FLUXUS_ORDER_UNORDERED; order++) {
        actx c;
        build_opts o = {2, 0, 4000, order, 7, 0, FLUXUS_ERROR_FAIL_FAST, DO_TIMER};
        build(&c, &o);
        c.delay_base_ns = 1000;
        c.delay_spread_ns = 100000;
        tu_run_expect(c.p, FLUXUS_OK);
        wait_timer_frees(&c, o.n);
        assert_true(c.max_outstanding <= 7);
        assert_int_equal(c.timer_errors, 0);
        check_all_delivered(&c);
        teardown_ctx(&c);
    }
}

/* ----- completion errors ----- */

static void test_completing_twice_is_estate_and_the_rest_still_flows(void **state) {
    actx c;
    build_opts o = {0, 0, 10, FLUXUS_ORDER_ORDERED, 4, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    uint64_t i, h2;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    h2 = c.comp[2];
    TU_OK(complete_item(&c, 2, 0));
    /* second completion of the same handle, before and after the item went on */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, h2, 0, 2));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, h2, FAIL_STATUS, 2));
    TU_OK(complete_item(&c, 0, 0));
    TU_OK(complete_item(&c, 1, 0));
    run_until_idle(c.rt);
    assert_int_equal(TU_LOAD(&c.delivered), 3);
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, h2, 0, 2));
    for (i = 3; i < 10; i++) {
        run_until_idle(c.rt);
        assert_true(TU_LOAD(&c.comp[i]) != 0);
        TU_OK(complete_item(&c, i, 0));
        /* and a stale handle is never applied to the item that reuses its slot */
        TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, h2, 0, 2));
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, h2, 0, 2)); /* after the finish */
    assert_int_equal(c.sink_order_errors, 0);
    check_all_delivered(&c); /* item 2 delivered once, never destroyed */
    teardown_ctx(&c);
}

static void test_bogus_completion_values_are_einval(void **state) {
    actx c;
    build_opts o = {0, 0, 4, FLUXUS_ORDER_ORDERED, 4, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    uint64_t h0, i;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 4);
    h0 = c.comp[0];
    assert_true(h0 != 0);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(c.p, 0, 0, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(c.p, UINT64_MAX, 0, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(c.p, ~h0, 0, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(c.p, h0 ^ (1ull << 63), 0, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(NULL, h0, 0, 0));
    /* nothing was applied: every item still in flight, none destroyed */
    run_until_idle(c.rt);
    assert_int_equal(TU_LOAD(&c.delivered), 0);
    assert_int_equal(TU_LOAD(&c.t.freed_total), 0);
    for (i = 0; i < 4; i++) {
        TU_OK(complete_item(&c, i, 0));
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    check_all_delivered(&c);
    teardown_ctx(&c);
}

static void test_a_never_issued_completion_value_is_einval(void **state) {
    actx c;
    build_opts o = {0, 0, 1, FLUXUS_ORDER_ORDERED, 4, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    uint64_t h0;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    h0 = c.comp[0];
    /* The handle's neighbours were never handed out by this pipeline: "a value that is not a
     * completion handle of this pipeline" -> FLUXUS_EINVAL (FLUXUS_ESTATE is for handles that
     * were real but are used up). */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(c.p, h0 + 1, 0, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_complete_async(c.p, h0 + 1000, 0, 0));
    TU_OK(complete_item(&c, 0, 0));
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    check_all_delivered(&c);
    teardown_ctx(&c);
}

static void test_completion_handle_of_another_pipeline_is_refused(void **state) {
    actx a, b;
    build_opts o = {0, 0, 2, FLUXUS_ORDER_UNORDERED, 4, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    tu_range_source src_b = {0, 2, 0};
    fluxus_pipeline *pb;
    uint32_t sb = 0;
    int32_t rc;
    (void)state;

    /* a: the usual pipeline; b: the same shape on the same runtime. */
    build(&a, &o);
    ctx_init(&b, 2);
    b.mode = DO_HOLD;
    b.rt = a.rt;
    pb = tu_pipeline(a.rt, "other", &b.t);
    b.p = pb;
    TU_OK(fluxus_pipeline_set_pull_source(pb, "src", tu_range_pull, &src_b, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&sb, pb, "fetch", async_fn, &b, NULL));
    TU_OK(fluxus_stage_set_order(pb, sb, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, pb, "sink", order_sink, &b, NULL));
    assert_int_equal(sb, a.async_stage);

    TU_OK(fluxus_pipeline_start(a.p));
    TU_OK(fluxus_pipeline_start(pb));
    run_until_idle(a.rt);
    assert_int_equal(a.started, 2);
    assert_int_equal(b.started, 2);

    /* a's handle given to b: "not a completion handle of this pipeline" */
    rc = fluxus_pipeline_complete_async(pb, a.comp[0], 0, 1000);
    run_until_idle(a.rt);
    if (rc != FLUXUS_EINVAL) {
        fail_msg("completing pipeline b with pipeline a's handle returned %s (expected "
                 "FLUXUS_EINVAL); b then delivered %llu item(s)",
                 fluxus_err_name(rc), (unsigned long long)TU_LOAD(&b.delivered));
    }
    assert_int_equal(TU_LOAD(&b.delivered), 0);

    TU_OK(complete_item(&a, 0, 0));
    TU_OK(complete_item(&a, 1, 0));
    TU_OK(complete_item(&b, 0, 0));
    TU_OK(complete_item(&b, 1, 0));
    TU_EXPECT(FLUXUS_OK, tu_wait(a.p));
    TU_EXPECT(FLUXUS_OK, tu_wait(pb));
    check_all_delivered(&a);
    check_all_delivered(&b);
    TU_OK(fluxus_pipeline_free(pb));
    ctx_destroy(&b);
    teardown_ctx(&a);
}

static void test_completion_with_a_status_dead_letters_the_item(void **state) {
    actx c;
    build_opts o = {0, 0, 6, FLUXUS_ORDER_ORDERED, 8, 0, FLUXUS_ERROR_DEAD_LETTER, DO_HOLD};
    fluxus_pipeline_stats s;
    fluxus_stage_stats as;
    uint64_t i;
    (void)state;
    build(&c, &o);
    c.check_sink_order = 0;
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 6);
    for (i = 0; i < 6; i++) {
        TU_OK(complete_item(&c, i, i == 3 ? FAIL_STATUS : 0));
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    assert_int_equal(c.dl_calls, 1);
    assert_int_equal(c.dl_status, FAIL_STATUS);
    assert_int_equal(c.dl_item, 3);
    assert_int_equal(c.dl_index, c.async_stage);
    assert_string_equal(c.dl_stage, "fetch");
    assert_int_equal(c.dl_freed_before, 0); /* borrowed: destroyed after the callback */
    assert_int_equal(c.t.freed[3], 1);      /* ... exactly once */
    assert_int_equal(c.t.freed_total, 1);
    assert_int_equal(TU_LOAD(&c.delivered), 5);
    assert_int_equal(c.order[0], 0);
    assert_int_equal(c.order[1], 1);
    assert_int_equal(c.order[2], 2);
    assert_int_equal(c.order[3], 4);
    assert_int_equal(c.order[4], 5);
    tu_tracker_check_once(&c.t, 0, 6);
    tu_stats(c.p, &s);
    assert_int_equal(s.dead_lettered, 1);
    assert_int_equal(s.delivered, 5);
    async_stats(&c, &as);
    assert_int_equal(as.dead_lettered, 1);
    assert_int_equal(as.out, 5);
    tu_check_conservation(c.p, &c.t, 0);
    teardown_ctx(&c);
}

static void test_completion_with_a_status_under_fail_fast_stops_the_pipeline(void **state) {
    actx c;
    build_opts o = {0, 0, 6, FLUXUS_ORDER_UNORDERED, 8, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_pipeline_stats s;
    uint64_t i;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 6);
    TU_OK(complete_item(&c, 0, 0));
    TU_OK(complete_item(&c, 1, FAIL_STATUS));
    TU_EXPECT(FLUXUS_EFAILED, tu_wait(c.p));
    /* the items still in flight were the host's: their completions are refused, untouched */
    for (i = 2; i < 6; i++) {
        TU_EXPECT(FLUXUS_ECANCELED, complete_item(&c, i, 0));
        assert_int_equal(c.t.freed[i], 0);
    }
    assert_int_equal(c.t.freed[1], 1);
    assert_true(c.t.delivered[0] + c.t.freed[0] == 1);
    tu_stats(c.p, &s);
    assert_int_equal(s.failed, 1);
    assert_int_equal(s.result, FLUXUS_EFAILED);
    assert_int_equal(s.admitted, s.delivered + s.failed + s.cancelled);
    assert_true(s.cancelled >= 4);
    /* destroyed: the failed item and cancelled items fluxus owned; not the 4 the host holds */
    assert_int_equal(c.t.freed_total, s.admitted - s.delivered - 4);
    check_balanced(&c);
    teardown_ctx(&c);
}

static void test_callback_refusal_fails_the_item_and_voids_its_handle(void **state) {
    actx c;
    build_opts o = {0, 0, 6, FLUXUS_ORDER_ORDERED, 8, 0, FLUXUS_ERROR_SKIP, DO_SYNC};
    fluxus_pipeline_stats s;
    (void)state;
    build(&c, &o);
    c.check_sink_order = 0;
    c.refuse_item = 2;
    c.complete_then_refuse_item = 4; /* completed inside, then refused: the completion stands */
    TU_OK(fluxus_pipeline_start(c.p));
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    assert_int_equal(c.sync_errors, 0);
    assert_int_equal(c.complete_then_refuse_rc, FLUXUS_OK);
    /* item 2 failed with the callback's status, fluxus destroyed it once */
    assert_int_equal(c.t.freed[2], 1);
    assert_int_equal(c.t.delivered[2], 0);
    /* item 4 went on */
    assert_int_equal(c.t.delivered[4], 1);
    assert_int_equal(c.t.freed[4], 0);
    assert_int_equal(TU_LOAD(&c.delivered), 5);
    tu_tracker_check_once(&c.t, 0, 6);
    /* the refused item's handle is void */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, c.comp[2], 0, 2));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(c.p, c.comp[4], 0, 4)); /* used */
    tu_stats(c.p, &s);
    assert_int_equal(s.failed, 1);
    tu_check_conservation(c.p, &c.t, 0);
    teardown_ctx(&c);
}

static void test_refusal_dead_letter_sees_the_callback_status(void **state) {
    actx c;
    build_opts o = {0, 0, 3, FLUXUS_ORDER_ORDERED, 8, 0, FLUXUS_ERROR_DEAD_LETTER, DO_SYNC};
    (void)state;
    build(&c, &o);
    c.check_sink_order = 0;
    c.refuse_item = 1;
    TU_OK(fluxus_pipeline_start(c.p));
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    assert_int_equal(c.dl_calls, 1);
    assert_int_equal(c.dl_status, REFUSE_STATUS);
    assert_int_equal(c.dl_item, 1);
    assert_string_equal(c.dl_stage, "fetch");
    assert_int_equal(c.t.freed[1], 1);
    tu_tracker_check_once(&c.t, 0, 3);
    tu_check_conservation(c.p, &c.t, 0);
    teardown_ctx(&c);
}

/* ----- misuse ----- */

static int32_t plain_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return 0;
}

static int32_t null_sink(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static void test_async_options_and_misuse(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p = tu_pipeline(rt, "misuse", NULL);
    tu_range_source src = {0, 0, 0};
    uint32_t am = 0, mp = 0, sk = 0;
    actx dummy;
    (void)state;

    ctx_init(&dummy, 1);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_async_map(NULL, p, "x", NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_async_map(NULL, NULL, "x", async_fn, NULL, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&am, p, NULL, async_fn, &dummy, NULL));
    assert_non_null(tu_stage_name(p, am));
    assert_true(tu_stage_name(p, am)[0] != '\0'); /* a name was made */
    TU_OK(fluxus_pipeline_add_map(&mp, p, "plain", plain_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sk, p, "sink", null_sink, NULL, NULL));

    /* in-flight limit */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_in_flight(p, mp, 8));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_in_flight(p, sk, 8));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_in_flight(NULL, am, 8));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_in_flight(p, 99, 8));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_in_flight(p, am, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_in_flight(p, am, 1048577));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_in_flight(p, am, UINT32_MAX));
    TU_OK(fluxus_stage_set_in_flight(p, am, 1048576));
    TU_OK(fluxus_stage_set_in_flight(p, am, 1));
    TU_OK(fluxus_stage_set_in_flight(p, am, 16));

    /* timeouts: async and sync stages alike, up to one day */
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_timeout_us(p, am, 86400ull * 1000000ull + 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_timeout_us(p, mp, UINT64_MAX));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_timeout_us(p, 99, 10));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_timeout_us(NULL, am, 10));
    TU_OK(fluxus_stage_set_timeout_us(p, am, 86400ull * 1000000ull));
    TU_OK(fluxus_stage_set_timeout_us(p, mp, 1000));
    TU_OK(fluxus_stage_set_timeout_us(p, sk, 1000));
    TU_OK(fluxus_stage_set_timeout_us(p, am, 0));

    /* completing on a pipeline that has not started: refused (no value is a handle yet; the
     * header names no code for this case, so either refusal is accepted), nothing taken */
    {
        static const uint64_t values[] = {0, 1, (1ull << 32) | 1u, UINT64_MAX};
        uint32_t i;
        for (i = 0; i < sizeof values / sizeof values[0]; i++) {
            int32_t rc = fluxus_pipeline_complete_async(p, values[i], 0, 5);
            if (rc != FLUXUS_EINVAL && rc != FLUXUS_ESTATE) {
                fail_msg("fluxus_pipeline_complete_async(%llx) before start returned %s",
                         (unsigned long long)values[i], fluxus_err_name(rc));
            }
            tu_assert_described(rc);
        }
    }

    /* start and then change options: refused */
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_in_flight(p, am, 8));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_timeout_us(p, am, 8));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_timeout_us(p, mp, 8));
    TU_EXPECT(FLUXUS_ESTATE,
              fluxus_pipeline_add_async_map(NULL, p, "late", async_fn, NULL, NULL));
    TU_EXPECT(FLUXUS_OK, tu_wait(p)); /* the source is empty */
    tu_free_all(p, rt);
    ctx_destroy(&dummy);
}

static void start_refused(uint32_t workers, int32_t order) {
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p = tu_pipeline(rt, "refused", NULL);
    tu_range_source src = {0, 10, 0};
    actx dummy;
    uint32_t am = 0;
    tu_msg m;
    int32_t st = -1;

    ctx_init(&dummy, 1);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&am, p, "fetch", async_fn, &dummy, NULL));
    TU_OK(fluxus_stage_set_workers(p, am, workers));
    TU_OK(fluxus_stage_set_order(p, am, order));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", null_sink, NULL, NULL));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &m);
    assert_non_null(strstr(m.text, "fetch")); /* the message names the stage */
    TU_OK(fluxus_pipeline_get_state(&st, p));
    assert_int_equal(st, FLUXUS_STATE_BUILDING);
    assert_int_equal(dummy.started, 0);
    tu_free_all(p, rt);
    ctx_destroy(&dummy);
}

static void test_async_stage_with_two_workers_is_refused_at_start(void **state) {
    (void)state;
    start_refused(2, FLUXUS_ORDER_ORDERED);
    start_refused(2, FLUXUS_ORDER_UNORDERED);
}

static void test_async_stage_with_per_key_order_is_refused_at_start(void **state) {
    (void)state;
    start_refused(1, FLUXUS_ORDER_PER_KEY);
}

/* ----- async timeouts (virtual clock, host-driven) ----- */

static void test_async_timeout_fails_the_item_at_exactly_the_deadline(void **state) {
    actx c;
    build_opts o = {0, 1, 3, FLUXUS_ORDER_UNORDERED, 8, 1000, FLUXUS_ERROR_DEAD_LETTER, DO_HOLD};
    fluxus_stage_stats as;
    fluxus_pipeline_stats s;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 3);
    TU_OK(complete_item(&c, 2, 0)); /* at +0 */
    advance(&c, 500000);
    TU_OK(complete_item(&c, 1, 0)); /* at +500 us */
    run_until_idle(c.rt);
    assert_int_equal(TU_LOAD(&c.delivered), 2);

    advance(&c, 499999); /* +999.999 us: not yet */
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 0);
    assert_int_equal(as.in_flight, 1);
    assert_int_equal(c.dl_calls, 0);
    assert_true(state_of(c.p) != FLUXUS_STATE_FINISHED);

    advance(&c, 1); /* +1000 us exactly */
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 1);
    assert_int_equal(as.in_flight, 0);
    assert_int_equal(as.dead_lettered, 1);
    assert_int_equal(c.dl_calls, 1);
    assert_int_equal(c.dl_status, FLUXUS_ETIMEDOUT);
    assert_int_equal(c.dl_item, 0);
    assert_string_equal(c.dl_stage, "fetch");
    /* the host still owns item 0: no destructor call */
    assert_int_equal(c.t.freed[0], 0);
    assert_int_equal(c.t.freed_total, 0);

    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    /* the late completion is refused and counted */
    TU_EXPECT(FLUXUS_ETIMEDOUT, complete_item(&c, 0, 0));
    async_stats(&c, &as);
    assert_int_equal(as.late, 1);
    assert_int_equal(c.t.freed_total, 0);
    assert_int_equal(c.t.delivered[0], 0);
    tu_stats(c.p, &s);
    assert_int_equal(s.admitted, 3);
    assert_int_equal(s.delivered, 2);
    assert_int_equal(s.dead_lettered, 1);
    check_balanced(&c);
    teardown_ctx(&c);
}

static void test_async_timeout_in_ordered_mode_releases_the_items_behind(void **state) {
    actx c;
    build_opts o = {0, 1, 4, FLUXUS_ORDER_ORDERED, 8, 1000, FLUXUS_ERROR_SKIP, DO_HOLD};
    fluxus_stage_stats as;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 4);
    TU_OK(complete_item(&c, 1, 0));
    TU_OK(complete_item(&c, 2, 0));
    advance(&c, 300000);
    TU_OK(complete_item(&c, 3, 0)); /* started at +0 too; completes in time */
    advance(&c, 699999);
    assert_int_equal(TU_LOAD(&c.delivered), 0); /* item 0 holds the line */
    advance(&c, 1);
    assert_int_equal(TU_LOAD(&c.delivered), 3);
    assert_int_equal(c.order[0], 1);
    assert_int_equal(c.order[1], 2);
    assert_int_equal(c.order[2], 3);
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 1);
    assert_int_equal(as.failed, 1);
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    TU_EXPECT(FLUXUS_ETIMEDOUT, complete_item(&c, 0, 0));
    assert_int_equal(c.t.freed_total, 0);
    async_stats(&c, &as);
    assert_int_equal(as.late, 1);
    check_balanced(&c);
    teardown_ctx(&c);
}

static void test_async_timeouts_of_items_started_at_different_times(void **state) {
    actx c;
    build_opts o = {0, 1, 6, FLUXUS_ORDER_UNORDERED, 2, 1000, FLUXUS_ERROR_SKIP, DO_HOLD};
    fluxus_stage_stats as;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 2); /* items 0, 1 at t0 */
    advance(&c, 400000);
    TU_OK(complete_item(&c, 1, 0));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 3); /* item 2 at t0 + 400 us */
    advance(&c, 600000);            /* t0 + 1000 us: item 0 times out, item 3 starts */
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 1);
    assert_int_equal(c.started, 4);
    advance(&c, 399999); /* item 2's deadline is t0 + 1400 us */
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 1);
    advance(&c, 1);
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 2);
    assert_int_equal(c.started, 5);
    /* finish: complete items 3 and 4 (started at +1000 and +1400), let 5 time out */
    TU_OK(complete_item(&c, 3, 0));
    TU_OK(complete_item(&c, 4, 0));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 6);
    advance(&c, 1000000);
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 3);
    assert_int_equal(as.failed, 3);
    assert_int_equal(TU_LOAD(&c.delivered), 3);
    assert_int_equal(c.t.freed_total, 0);
    /* item 5's slot was not reused after it timed out (the late completion of an item whose
     * slot was reused is test_late_completion_after_the_slot_was_reused_is_still_etimedout) */
    TU_EXPECT(FLUXUS_ETIMEDOUT, complete_item(&c, 5, 0));
    async_stats(&c, &as);
    assert_int_equal(as.late, 1);
    check_balanced(&c);
    teardown_ctx(&c);
}

static void test_late_completion_after_the_slot_was_reused_is_still_etimedout(void **state) {
    actx c;
    build_opts o = {0, 1, 3, FLUXUS_ORDER_UNORDERED, 1, 1000, FLUXUS_ERROR_SKIP, DO_HOLD};
    fluxus_stage_stats as;
    int32_t rc;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 1);
    advance(&c, 1000000); /* item 0 times out; item 1 takes the (only) slot */
    assert_int_equal(c.started, 2);
    TU_OK(complete_item(&c, 1, 0));
    run_until_idle(c.rt); /* item 1 goes on; item 2 takes the slot */
    assert_int_equal(c.started, 3);
    TU_OK(complete_item(&c, 2, 0));
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    /* item 0's completion arrives now: it had timed out, whatever happened to its slot since */
    rc = complete_item(&c, 0, 0);
    async_stats(&c, &as);
    if (rc != FLUXUS_ETIMEDOUT || as.late != 1) {
        fail_msg("late completion of a timed-out item after its slot was reused twice returned "
                 "%s with late == %llu (expected FLUXUS_ETIMEDOUT and late == 1)",
                 fluxus_err_name(rc), (unsigned long long)as.late);
    }
    assert_int_equal(c.t.freed_total, 0);
    check_balanced(&c);
    teardown_ctx(&c);
}

/* A threaded runtime on the real clock: items never completed still time out. */
static void test_async_timeout_on_the_real_clock(void **state) {
    actx c;
    build_opts o = {1, 0, 50, FLUXUS_ORDER_UNORDERED, 64, 2000, FLUXUS_ERROR_DEAD_LETTER, DO_HOLD};
    fluxus_stage_stats as;
    (void)state;
    build(&c, &o);
    tu_run_expect(c.p, FLUXUS_OK); /* nothing is ever completed: all 50 time out */
    async_stats(&c, &as);
    assert_int_equal(as.timed_out, 50);
    assert_int_equal(as.dead_lettered, 50);
    assert_int_equal(c.dl_calls, 50);
    assert_int_equal(c.dl_status, FLUXUS_ETIMEDOUT);
    assert_int_equal(c.t.freed_total, 0);
    assert_int_equal(TU_LOAD(&c.delivered), 0);
    TU_EXPECT(FLUXUS_ETIMEDOUT, complete_item(&c, 7, 0));
    async_stats(&c, &as);
    assert_int_equal(as.late, 1);
    check_balanced(&c);
    teardown_ctx(&c);
}

/* ----- sync stage timeouts (the callback advances the virtual clock itself) ----- */

#define SYNC_N 10u

typedef struct sync_ctx {
    fluxus_runtime *rt;
    tu_tracker t; /* values 0..2*SYNC_N: the map outputs are in + SYNC_N */
    uint64_t delivered;
    uint64_t advance_errors;
    uint64_t dl_calls;
    uint64_t dl_etimedout;
    uint64_t dl_outputs; /* dead-lettered items that were map outputs (>= SYNC_N) */
} sync_ctx;

/* Odd items take 1001 us, even ones 999 us (of virtual time); the output is in + SYNC_N. */
static int32_t slow_map(void *user, uint64_t in, uint64_t *out) {
    sync_ctx *c = (sync_ctx *)user;
    if (fluxus_runtime_advance_clock(c->rt, (in % 2 ? 1001000u : 999000u)) != FLUXUS_OK) {
        TU_ADD(&c->advance_errors, 1);
    }
    *out = in + SYNC_N;
    return 0;
}

/* The sink overruns for output 3 + SYNC_N (item 3 failed at the map, so use 4 + SYNC_N). */
static int32_t slow_sink(void *user, uint64_t item) {
    sync_ctx *c = (sync_ctx *)user;
    if (item == 4 + SYNC_N &&
        fluxus_runtime_advance_clock(c->rt, 5000000u) != FLUXUS_OK) {
        TU_ADD(&c->advance_errors, 1);
    }
    TU_ADD(&c->delivered, 1);
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void sync_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    sync_ctx *c = (sync_ctx *)user;
    TU_ADD(&c->dl_calls, 1);
    if (tu_failure_status(f) == FLUXUS_ETIMEDOUT) {
        TU_ADD(&c->dl_etimedout, 1);
    }
    if (item >= SYNC_N) {
        TU_ADD(&c->dl_outputs, 1);
    }
}

static void test_sync_map_overrunning_its_timeout_fails_its_output(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p;
    tu_range_source src = {0, SYNC_N, 0};
    sync_ctx c;
    uint32_t mp = 0, sk = 0, i;
    fluxus_stage_stats ms, ss;
    fluxus_pipeline_stats s;
    (void)state;

    memset(&c, 0, sizeof c);
    c.rt = rt;
    tu_tracker_init(&c.t, 2 * SYNC_N);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    p = tu_pipeline(rt, "sync", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&mp, p, "slow", slow_map, &c, NULL));
    TU_OK(fluxus_stage_set_timeout_us(p, mp, 1000));
    TU_OK(fluxus_stage_set_error_policy(p, mp, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_add_sink(&sk, p, "sink", slow_sink, &c, NULL));
    TU_OK(fluxus_stage_set_timeout_us(p, sk, 1000));
    TU_OK(fluxus_pipeline_set_dead_letter(p, sync_dead_letter, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.advance_errors, 0);
    tu_stage_stats(p, mp, &ms);
    tu_stage_stats(p, sk, &ss);
    assert_int_equal(ms.timed_out, SYNC_N / 2);
    assert_int_equal(ms.dead_lettered, SYNC_N / 2);
    assert_int_equal(c.dl_calls, SYNC_N / 2);
    assert_int_equal(c.dl_etimedout, SYNC_N / 2);
    assert_int_equal(c.dl_outputs, SYNC_N / 2); /* the map's outputs were failed */
    /* the sink overran once: delivered anyway, counted */
    assert_int_equal(ss.timed_out, 1);
    assert_int_equal(ss.out, SYNC_N / 2);
    assert_int_equal(c.delivered, SYNC_N / 2);
    for (i = 0; i < SYNC_N; i++) {
        /* the callback owned its input: the failed output is what was destroyed */
        assert_int_equal(c.t.freed[i], 0);
        assert_int_equal(c.t.delivered[i], 0);
        assert_int_equal(c.t.freed[i + SYNC_N], i % 2 ? 1 : 0);
        assert_int_equal(c.t.delivered[i + SYNC_N], i % 2 ? 0 : 1);
    }
    tu_stats(p, &s);
    assert_int_equal(s.admitted, SYNC_N);
    assert_int_equal(s.delivered + s.dead_lettered, SYNC_N);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c.t);
}

/* Filter and batch map forms overrun too. */
static int32_t slow_filter(void *user, uint64_t item, int32_t *keep) {
    sync_ctx *c = (sync_ctx *)user;
    if (item == 5 && fluxus_runtime_advance_clock(c->rt, 2000000u) != FLUXUS_OK) {
        TU_ADD(&c->advance_errors, 1);
    }
    *keep = 1;
    return 0;
}

static int32_t slow_map_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                              uint32_t count) {
    sync_ctx *c = (sync_ctx *)user;
    uint32_t i;
    (void)status;
    for (i = 0; i < count; i++) {
        out[i] = in[i];
    }
    if (count > 0 && fluxus_runtime_advance_clock(c->rt, 100u) != FLUXUS_OK) {
        TU_ADD(&c->advance_errors, 1); /* far under the limit */
    }
    return 0;
}

static int32_t plain_sink(void *user, uint64_t item) {
    sync_ctx *c = (sync_ctx *)user;
    TU_ADD(&c->delivered, 1);
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void test_sync_filter_overrun_fails_the_item_and_a_fast_batch_passes(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p;
    tu_range_source src = {0, SYNC_N, 0};
    sync_ctx c;
    uint32_t fl = 0, mb = 0;
    fluxus_stage_stats fs, bs;
    (void)state;

    memset(&c, 0, sizeof c);
    c.rt = rt;
    tu_tracker_init(&c.t, SYNC_N);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    p = tu_pipeline(rt, "sync2", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_filter(&fl, p, "slowfilter", slow_filter, &c, NULL));
    TU_OK(fluxus_stage_set_timeout_us(p, fl, 1000));
    TU_OK(fluxus_stage_set_error_policy(p, fl, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_map_batch(&mb, p, "batch", slow_map_batch, &c, NULL));
    TU_OK(fluxus_stage_set_timeout_us(p, mb, 1000));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", plain_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(c.advance_errors, 0);
    tu_stage_stats(p, fl, &fs);
    tu_stage_stats(p, mb, &bs);
    assert_int_equal(fs.timed_out, 1);
    assert_int_equal(fs.failed, 1);
    assert_int_equal(bs.timed_out, 0);
    assert_int_equal(bs.failed, 0);
    assert_int_equal(c.delivered, SYNC_N - 1);
    assert_int_equal(c.t.freed[5], 1);
    tu_tracker_check_once(&c.t, 0, SYNC_N);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c.t);
}

/* Flat maps: the overrun is only counted; the emitted items go on. */
static int32_t slow_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    sync_ctx *c = (sync_ctx *)user;
    if (item == 3 && fluxus_runtime_advance_clock(c->rt, 1500000u) != FLUXUS_OK) {
        TU_ADD(&c->advance_errors, 1);
    }
    if (fluxus_emitter_emit(em, item) != FLUXUS_OK || fluxus_emitter_emit(em, item + SYNC_N) != FLUXUS_OK) {
        TU_ADD(&c->advance_errors, 1);
    }
    return 0;
}

static void test_flat_map_overrun_is_only_counted(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p;
    tu_range_source src = {0, SYNC_N, 0};
    sync_ctx c;
    uint32_t fm = 0;
    fluxus_stage_stats fs;
    (void)state;

    memset(&c, 0, sizeof c);
    c.rt = rt;
    tu_tracker_init(&c.t, 2 * SYNC_N);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    p = tu_pipeline(rt, "flat", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_flat_map(&fm, p, "fm", slow_flat_map, &c, NULL));
    TU_OK(fluxus_stage_set_timeout_us(p, fm, 1000));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", plain_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);
    assert_int_equal(c.advance_errors, 0);
    tu_stage_stats(p, fm, &fs);
    assert_int_equal(fs.timed_out, 1);
    assert_int_equal(fs.failed, 0);
    assert_int_equal(c.delivered, 2 * SYNC_N);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c.t);
}

/* ----- backpressure behind an async stage ----- */

/* A sink that now and then stalls, so its 2-item queue fills and the async stage must park. */
static int32_t slowish_sink(void *user, uint64_t item) {
    if (item % 64 == 0) {
        tu_sleep_us(100);
    }
    return order_sink(user, item);
}

static void test_async_stage_behind_a_full_downstream_queue(void **state) {
    int order;
    (void)state;
    for (order = FLUXUS_ORDER_ORDERED; order <= FLUXUS_ORDER_UNORDERED; order++) {
        actx c;
        fluxus_runtime *rt = tu_runtime(2);
        fluxus_pipeline *p;
        uint32_t sk = 0;
        ctx_init(&c, 3000);
        c.mode = DO_TIMER;
        c.delay_base_ns = 1000;
        c.delay_spread_ns = 200000;
        c.check_sink_order = order == FLUXUS_ORDER_ORDERED;
        c.rt = rt;
        p = tu_pipeline(rt, "backpressure", &c.t);
        c.p = p;
        g_src.next = 0;
        g_src.end = c.n;
        TU_OK(fluxus_pipeline_set_fusion(p, 0)); /* a real queue between async and sink */
        TU_OK(fluxus_pipeline_set_batch_size(p, 4));
        TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &g_src, NULL));
        TU_OK(fluxus_pipeline_add_async_map(&c.async_stage, p, "fetch", async_fn, &c, NULL));
        TU_OK(fluxus_stage_set_order(p, c.async_stage, order));
        TU_OK(fluxus_stage_set_in_flight(p, c.async_stage, 32));
        TU_OK(fluxus_stage_set_timeout_us(p, c.async_stage, 60000000u)); /* never reached */
        TU_OK(fluxus_pipeline_add_sink(&sk, p, "sink", slowish_sink, &c, NULL));
        TU_OK(fluxus_stage_set_queue_capacity(p, sk, 2));
        tu_run_expect(p, FLUXUS_OK);
        wait_timer_frees(&c, c.n);
        assert_int_equal(c.timer_errors, 0);
        assert_int_equal(c.sink_order_errors, 0);
        assert_true(c.max_outstanding <= 32);
        check_all_delivered(&c);
        teardown_ctx(&c);
    }
}

/* ----- cancel and drain with items in flight ----- */

static void wait_started(actx *c, uint64_t n) {
    uint64_t t0 = tu_now_ms();
    while (TU_LOAD(&c->started) < n) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of %llu items started", (unsigned long long)TU_LOAD(&c->started),
                     (unsigned long long)n);
        }
        tu_sleep_us(200);
    }
}

static void test_cancel_with_items_in_flight(void **state) {
    actx c;
    build_opts o = {1, 0, 100, FLUXUS_ORDER_ORDERED, 10, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_pipeline_stats s;
    fluxus_stage_stats as;
    uint64_t i;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    wait_started(&c, 10);
    tu_sleep_us(2000);
    assert_int_equal(TU_LOAD(&c.started), 10); /* the limit holds */
    /* items 1..4 completed behind the uncompleted head: fluxus owns them again */
    for (i = 1; i <= 4; i++) {
        TU_OK(complete_item(&c, i, 0));
    }
    TU_OK(fluxus_pipeline_cancel(c.p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(c.p));
    /* the host-owned ones: completion refused with ECANCELED, not destroyed */
    for (i = 0; i < 10; i++) {
        if (i >= 1 && i <= 4) {
            assert_int_equal(c.t.freed[i], 1); /* completed, then cancelled: destroyed */
        } else {
            TU_EXPECT(FLUXUS_ECANCELED, complete_item(&c, i, 0));
            assert_int_equal(c.t.freed[i], 0);
        }
        assert_int_equal(c.t.delivered[i], 0);
    }
    tu_stats(c.p, &s);
    assert_int_equal(s.result, FLUXUS_ECANCELED);
    assert_int_equal(s.delivered, 0);
    assert_int_equal(s.cancelled, s.admitted);
    assert_true(s.admitted >= 10);
    async_stats(&c, &as);
    assert_true(as.cancelled >= 10); /* the 10 in flight, and whatever was queued */
    assert_int_equal(as.in_flight, 0);
    /* destroyed: everything admitted but the 6 the host holds */
    assert_int_equal(c.t.freed_total, s.admitted - 6);
    check_balanced(&c);
    /* Completing 1..4 a second time is a double completion ("already completed" ->
     * FLUXUS_ESTATE); FLUXUS_ECANCELED would tell the host it still owns an item fluxus
     * already destroyed. */
    for (i = 1; i <= 4; i++) {
        int32_t rc = fluxus_pipeline_complete_async(c.p, c.comp[i], 0, i);
        if (rc != FLUXUS_ESTATE) {
            fail_msg("second completion of item %llu (completed before the cancel, then "
                     "destroyed by it) returned %s, expected FLUXUS_ESTATE",
                     (unsigned long long)i, fluxus_err_name(rc));
        }
    }
    teardown_ctx(&c);
}

static void test_cancel_with_items_in_flight_on_a_host_driven_runtime(void **state) {
    actx c;
    build_opts o = {0, 1, 20, FLUXUS_ORDER_UNORDERED, 5, 1000, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_pipeline_stats s;
    uint64_t i;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 5);
    TU_OK(complete_item(&c, 0, 0));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 6);
    assert_int_equal(TU_LOAD(&c.delivered), 1);
    TU_OK(fluxus_pipeline_cancel(c.p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(c.p));
    /* the stage timeout passes after the cancel: nothing more happens */
    advance(&c, 5000000);
    for (i = 1; i < 6; i++) {
        TU_EXPECT(FLUXUS_ECANCELED, complete_item(&c, i, 0));
        assert_int_equal(c.t.freed[i], 0);
    }
    tu_stats(c.p, &s);
    assert_int_equal(s.delivered, 1);
    assert_int_equal(s.cancelled, s.admitted - 1);
    assert_int_equal(c.t.freed_total, s.admitted - 1 - 5);
    assert_int_equal(c.dl_calls, 0);
    check_balanced(&c);
    teardown_ctx(&c);
}

/* A timer that completes every held item. */
static void complete_all_fn(void *user) {
    actx *c = (actx *)user;
    uint64_t i;
    for (i = 0; i < c->n; i++) {
        if (complete_item(c, i, 0) != FLUXUS_OK) {
            TU_ADD(&c->timer_errors, 1);
        }
    }
    TU_ADD(&c->timer_frees, 1); /* marks the callback as finished */
}

static void test_drain_waits_for_items_in_flight(void **state) {
    actx c;
    build_opts o = {1, 0, 40, FLUXUS_ORDER_ORDERED, 64, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_pipeline_stats s;
    fluxus_stage_stats as;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    wait_started(&c, 40);
    async_stats(&c, &as);
    assert_int_equal(as.in_flight, 40); /* held: nobody completes them before the timer */
    assert_int_equal(TU_LOAD(&c.delivered), 0);
    TU_OK(fluxus_runtime_call_after(NULL, c.rt, 30000000ull, complete_all_fn, &c, NULL));
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_drain(c.p, TU_WAIT_MS));
    wait_timer_frees(&c, 1);
    assert_int_equal(c.timer_errors, 0);
    tu_stats(c.p, &s);
    assert_int_equal(s.result, FLUXUS_OK);
    assert_int_equal(s.admitted, 40);
    assert_int_equal(s.delivered, 40);
    assert_int_equal(c.sink_order_errors, 0);
    check_all_delivered(&c);
    teardown_ctx(&c);
}

static void test_drain_deadline_with_items_in_flight_cancels_them(void **state) {
    actx c;
    build_opts o = {1, 0, 100, FLUXUS_ORDER_UNORDERED, 12, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    fluxus_pipeline_stats s;
    fluxus_stage_stats as;
    uint64_t i;
    tu_msg m;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    wait_started(&c, 12);
    TU_OK(complete_item(&c, 0, 0));
    TU_OK(complete_item(&c, 1, 0));
    wait_started(&c, 14);
    /* nothing completes the rest: the drain deadline passes */
    TU_EXPECT_MSG(FLUXUS_ETIMEDOUT, fluxus_pipeline_drain(c.p, 50), &m);
    assert_non_null(strstr(m.text, "fetch")); /* the stage that still held items */
    async_stats(&c, &as);
    assert_true(as.held_at_deadline >= 12); /* the 12 in flight (and any queued behind) */
    assert_int_equal(as.in_flight, 0);
    for (i = 2; i < 14; i++) {
        TU_EXPECT(FLUXUS_ECANCELED, complete_item(&c, i, 0));
        assert_int_equal(c.t.freed[i], 0);
    }
    tu_stats(c.p, &s);
    assert_int_equal(s.result, FLUXUS_ECANCELED);
    assert_int_equal(s.delivered, 2);
    assert_int_equal(c.t.freed_total, s.admitted - 2 - 12);
    check_balanced(&c);
    teardown_ctx(&c);
}

/* The pipeline runs on a host-driven runtime; the host thread that drains it runs the work, and
 * a second host thread completes the items it finds queued. */
static void test_drain_with_items_in_flight_on_a_host_driven_runtime(void **state) {
    actx c;
    build_opts o = {0, 0, 300, FLUXUS_ORDER_UNORDERED, 16, 0, FLUXUS_ERROR_FAIL_FAST, DO_QUEUE};
    pthread_t th;
    fluxus_pipeline_stats s;
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    run_until_idle(c.rt);
    assert_int_equal(c.started, 16);
    assert_int_equal(pthread_create(&th, NULL, completer_main, &c), 0);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_drain(c.p, TU_WAIT_MS));
    pthread_mutex_lock(&c.qmu);
    c.qstop = 1;
    pthread_cond_broadcast(&c.qcv);
    pthread_mutex_unlock(&c.qmu);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(c.thread_errors, 0);
    tu_stats(c.p, &s);
    assert_true(s.admitted >= 16);
    assert_int_equal(s.delivered, s.admitted);
    assert_int_equal(TU_LOAD(&c.t.freed_total), 0);
    check_balanced(&c);
    teardown_ctx(&c);
}

/* ----- freeing with items in flight ----- */

static void test_pipeline_free_with_items_in_flight(void **state) {
    actx c;
    build_opts o = {1, 0, 30, FLUXUS_ORDER_ORDERED, 8, 0, FLUXUS_ERROR_FAIL_FAST, DO_HOLD};
    (void)state;
    build(&c, &o);
    TU_OK(fluxus_pipeline_start(c.p));
    wait_started(&c, 8);
    TU_OK(complete_item(&c, 3, 0)); /* behind the head: fluxus's again */
    /* The host frees the pipeline with 7 requests outstanding (it must not complete them after
     * this): the pipeline is cancelled and finished first. */
    TU_OK(fluxus_pipeline_free(c.p));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1); /* the async stage's user */
    assert_int_equal(c.t.freed[3], 1);
    assert_int_equal(c.t.freed[0], 0);
    assert_int_equal(c.t.freed[7], 0);
    /* everything admitted but the 7 host-owned items was destroyed */
    assert_true(TU_LOAD(&c.t.freed_total) >= 1);
    assert_int_equal(TU_LOAD(&c.t.delivered_total), 0);
    assert_int_equal(TU_LOAD(&c.t.out_of_range), 0);
    TU_OK(fluxus_runtime_free(c.rt));
    ctx_destroy(&c);
}

static void test_runtime_free_with_items_in_flight(void **state) {
    uint32_t workers;
    (void)state;
    for (workers = 0; workers <= 1; workers++) {
        actx c;
        build_opts o = {workers, 0, 30, FLUXUS_ORDER_UNORDERED, 8, 0, FLUXUS_ERROR_FAIL_FAST,
                        DO_HOLD};
        fluxus_pipeline_stats s;
        uint64_t i;
        build(&c, &o);
        TU_OK(fluxus_pipeline_start(c.p));
        if (workers == 0) {
            run_until_idle(c.rt);
        }
        wait_started(&c, 8);
        TU_OK(fluxus_runtime_free(c.rt)); /* cancels and finishes the pipeline */
        TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(c.p, 0));
        for (i = 0; i < 8; i++) {
            TU_EXPECT(FLUXUS_ECANCELED, complete_item(&c, i, 0));
            assert_int_equal(c.t.freed[i], 0);
        }
        tu_stats(c.p, &s);
        assert_int_equal(s.delivered, 0);
        assert_int_equal(s.cancelled, s.admitted);
        assert_int_equal(c.t.freed_total, s.admitted - 8);
        check_balanced(&c);
        TU_OK(fluxus_pipeline_free(c.p));
        ctx_destroy(&c);
    }
}

/* ----- two async stages, a push source ----- */

typedef struct two_ctx {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    tu_tracker t;
    uint64_t errors;
    uint64_t delivered;
    uint64_t checksum;
    uint64_t next_expected;
    uint64_t order_errors;
} two_ctx;

typedef struct two_job {
    two_ctx *c;
    uint64_t completion;
    uint64_t item;
} two_job;

/* stage 1: completes at once with item + 1000 (a new item; the input is the host's) */
static int32_t first_async(void *user, uint64_t item, uint64_t completion) {
    two_ctx *c = (two_ctx *)user;
    if (item >= 1000 || fluxus_pipeline_complete_async(c->p, completion, 0, item + 1000) != FLUXUS_OK) {
        TU_ADD(&c->errors, 1);
    }
    return 0;
}

static void two_timer_fn(void *user) {
    two_job *j = (two_job *)user;
    if (fluxus_pipeline_complete_async(j->c->p, j->completion, 0, j->item - 1000) != FLUXUS_OK) {
        TU_ADD(&j->c->errors, 1);
    }
}

static void free_job(void *user) {
    free(user);
}

/* stage 2: completes from a virtual-clock timer, later for lower items, back to item - 1000 */
static int32_t second_async(void *user, uint64_t item, uint64_t completion) {
    two_ctx *c = (two_ctx *)user;
    two_job *j = (two_job *)malloc(sizeof *j);
    if (j == NULL) {
        return FLUXUS_ENOMEM;
    }
    j->c = c;
    j->completion = completion;
    j->item = item;
    if (fluxus_runtime_call_after(NULL, c->rt, (2000 - item) * 10, two_timer_fn, j, free_job) !=
        FLUXUS_OK) {
        TU_ADD(&c->errors, 1);
        free(j);
    }
    return 0;
}

static int32_t two_sink(void *user, uint64_t item) {
    two_ctx *c = (two_ctx *)user;
    if (item != c->next_expected) {
        c->order_errors++;
    }
    c->next_expected = item + 1;
    c->delivered++;
    c->checksum += item;
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void test_two_async_stages_with_a_push_source(void **state) {
    enum { N = 200 };
    two_ctx c;
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p;
    uint32_t s1 = 0, s2 = 0, i;
    uint32_t steps = 0;
    (void)state;

    memset(&c, 0, sizeof c);
    tu_tracker_init(&c.t, 2000);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    p = tu_pipeline(rt, "two", &c.t);
    c.rt = rt;
    c.p = p;
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_async_map(&s1, p, "first", first_async, &c, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&s2, p, "second", second_async, &c, NULL));
    TU_OK(fluxus_stage_set_in_flight(p, s2, 16));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", two_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < N; i++) {
        TU_OK(fluxus_pipeline_try_push(p, i));
    }
    TU_OK(fluxus_pipeline_close_input(p));
    while (state_of(p) != FLUXUS_STATE_FINISHED) {
        run_until_idle(rt);
        TU_OK(fluxus_runtime_advance_clock(rt, 100));
        if (++steps > 1000000u) {
            fail_msg("pipeline did not finish");
        }
    }
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(c.errors, 0);
    assert_int_equal(c.delivered, N);
    assert_int_equal(c.order_errors, 0); /* both ordered (the default) */
    assert_int_equal(c.checksum, (uint64_t)N * (N - 1) / 2);
    assert_int_equal(c.t.freed_total, 0);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c.t);
}

/* ----- completions racing with timeouts ----- */

#ifndef ASYNC_RACE_N
#define ASYNC_RACE_N 20000u
#endif

typedef struct race_ctx {
    actx *c;
    uint64_t dropped;    /* never completed */
    uint64_t failed_ok;  /* completed with FAIL_STATUS, accepted */
    uint64_t ok;         /* completed with 0, accepted */
    uint64_t late_seen;  /* completions refused with FLUXUS_ETIMEDOUT */
    uint64_t estate;     /* completions refused with FLUXUS_ESTATE */
    uint64_t other_rc;   /* any other result */
} race_ctx;

static void *race_completer(void *arg) {
    race_ctx *r = (race_ctx *)arg;
    actx *c = r->c;
    for (;;) {
        qentry e;
        uint64_t pick;
        int32_t status, rc;
        pthread_mutex_lock(&c->qmu);
        while (c->qlen == 0 && !c->qstop) {
            pthread_cond_wait(&c->qcv, &c->qmu);
        }
        if (c->qlen == 0) {
            pthread_mutex_unlock(&c->qmu);
            break;
        }
        e = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % QCAP;
        c->qlen--;
        pthread_mutex_unlock(&c->qmu);
        pick = tu_mix64(e.item) % 100u;
        if (pick == 0) {
            TU_ADD(&r->dropped, 1);
            continue;
        }
        if (pick == 1) {
            tu_sleep_us(3000); /* past the 2 ms timeout: a late completion, most likely */
        }
        status = pick == 2 ? FAIL_STATUS : 0;
        rc = fluxus_pipeline_complete_async(c->p, e.completion, status, e.item);
        if (rc == FLUXUS_OK) {
            TU_ADD(status ? &r->failed_ok : &r->ok, 1);
        } else if (rc == FLUXUS_ETIMEDOUT) {
            TU_ADD(&r->late_seen, 1);
        } else if (rc == FLUXUS_ESTATE) {
            TU_ADD(&r->estate, 1);
        } else {
            TU_ADD(&r->other_rc, 1);
        }
    }
    return NULL;
}

static void race(int order) {
    actx c;
    build_opts o = {2, 0, ASYNC_RACE_N, order, 32, 2000, FLUXUS_ERROR_SKIP, DO_QUEUE};
    race_ctx r;
    pthread_t th[2];
    fluxus_pipeline_stats s;
    fluxus_stage_stats as;
    uint32_t i;
    build(&c, &o);
    c.check_sink_order = 0; /* timeouts and failures leave gaps */
    memset(&r, 0, sizeof r);
    r.c = &c;
    for (i = 0; i < 2; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, race_completer, &r), 0);
    }
    TU_OK(fluxus_pipeline_start(c.p));
    TU_EXPECT(FLUXUS_OK, tu_wait(c.p));
    pthread_mutex_lock(&c.qmu);
    c.qstop = 1;
    pthread_cond_broadcast(&c.qcv);
    pthread_mutex_unlock(&c.qmu);
    for (i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
    }
    assert_int_equal(c.qoverflow, 0);
    tu_stats(c.p, &s);
    async_stats(&c, &as);
    printf("[ async ] %s race: %llu ok, %llu failed, %llu dropped, %llu late, %llu timed out\n",
           order == FLUXUS_ORDER_ORDERED ? "ordered" : "unordered", (unsigned long long)r.ok,
           (unsigned long long)r.failed_ok, (unsigned long long)r.dropped,
           (unsigned long long)r.late_seen, (unsigned long long)as.timed_out);
    assert_int_equal(r.other_rc, 0);
    assert_int_equal(s.admitted, ASYNC_RACE_N);
    assert_int_equal(r.ok + r.failed_ok + r.dropped + r.late_seen + r.estate, ASYNC_RACE_N);
    /* every item timed out that was never completed or completed too late (the ESTATE
     * refusals, if any, were late completions too: see the check at the end) */
    assert_int_equal(as.timed_out, r.dropped + r.late_seen + r.estate);
    assert_int_equal(as.late, r.late_seen);
    assert_int_equal(s.delivered, r.ok);
    assert_int_equal(s.failed, r.failed_ok + as.timed_out);
    assert_int_equal(TU_LOAD(&c.delivered), r.ok);
    /* destroyed: the failed completions only (timed-out items stayed the host's) */
    assert_int_equal(TU_LOAD(&c.t.freed_total), r.failed_ok);
    assert_int_equal(TU_LOAD(&c.t.out_of_range), 0);
    check_balanced(&c);
    /* Each handle is completed once, so the only refusal possible is "it timed out". */
    if (r.estate != 0) {
        fail_msg("%s: %llu single completions of timed-out items were refused with "
                 "FLUXUS_ESTATE (%llu with FLUXUS_ETIMEDOUT; stage timed_out %llu, late %llu): "
                 "a late completion must be FLUXUS_ETIMEDOUT and counted in `late`",
                 order == FLUXUS_ORDER_ORDERED ? "ordered" : "unordered",
                 (unsigned long long)r.estate, (unsigned long long)r.late_seen,
                 (unsigned long long)as.timed_out, (unsigned long long)as.late);
    }
    teardown_ctx(&c);
}

static void test_completions_racing_with_timeouts_unordered(void **state) {
    (void)state;
    race(FLUXUS_ORDER_UNORDERED);
}

static void test_completions_racing_with_timeouts_ordered(void **state) {
    (void)state;
    race(FLUXUS_ORDER_ORDERED);
}

/* ----- stress ----- */

#ifndef ASYNC_STRESS_N
#define ASYNC_STRESS_N 200000u
#endif

static void stress(int order) {
    actx c;
    build_opts o = {2, 0, ASYNC_STRESS_N, order, 64, 0, FLUXUS_ERROR_FAIL_FAST, DO_QUEUE};
    uint64_t t0 = tu_now_ms();
    fluxus_stage_stats as;
    build(&c, &o);
    run_with_completers(&c, 2);
    printf("[ async ] %s stress: %u items, 2 completer threads, %llu ms\n",
           order == FLUXUS_ORDER_ORDERED ? "ordered" : "unordered", ASYNC_STRESS_N,
           (unsigned long long)(tu_now_ms() - t0));
    assert_int_equal(c.sink_order_errors, 0);
    assert_true(c.max_outstanding <= 64);
    check_all_delivered(&c);
    async_stats(&c, &as);
    assert_int_equal(as.in, ASYNC_STRESS_N);
    assert_int_equal(as.out, ASYNC_STRESS_N);
    teardown_ctx(&c);
}

static void test_stress_unordered_two_completer_threads(void **state) {
    (void)state;
    stress(FLUXUS_ORDER_UNORDERED);
}

static void test_stress_ordered_two_completer_threads(void **state) {
    (void)state;
    stress(FLUXUS_ORDER_ORDERED);
}

static int reset_counters(void **state) {
    (void)state;
    TU_STORE(&tu_user_frees, 0);
    return 0;
}

#define T(f) cmocka_unit_test_setup(f, reset_counters)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_completion_inside_the_callback),
        T(test_completion_from_timers_on_a_threaded_runtime),
        T(test_completion_from_timers_on_a_virtual_clock),
        T(test_completion_from_a_host_thread),
        T(test_completion_from_a_host_thread_on_a_host_driven_runtime),
        T(test_ordered_delivers_in_input_order_when_completions_arrive_reversed),
        T(test_unordered_delivers_in_completion_order),
        T(test_in_flight_limit_unordered),
        T(test_in_flight_limit_ordered_counts_completed_items_behind_the_head),
        T(test_in_flight_limit_holds_with_threaded_timer_completions),
        T(test_completing_twice_is_estate_and_the_rest_still_flows),
        T(test_bogus_completion_values_are_einval),
        T(test_a_never_issued_completion_value_is_einval),
        T(test_completion_handle_of_another_pipeline_is_refused),
        T(test_completion_with_a_status_dead_letters_the_item),
        T(test_completion_with_a_status_under_fail_fast_stops_the_pipeline),
        T(test_callback_refusal_fails_the_item_and_voids_its_handle),
        T(test_refusal_dead_letter_sees_the_callback_status),
        T(test_async_options_and_misuse),
        T(test_async_stage_with_two_workers_is_refused_at_start),
        T(test_async_stage_with_per_key_order_is_refused_at_start),
        T(test_async_timeout_fails_the_item_at_exactly_the_deadline),
        T(test_async_timeout_in_ordered_mode_releases_the_items_behind),
        T(test_async_timeouts_of_items_started_at_different_times),
        T(test_late_completion_after_the_slot_was_reused_is_still_etimedout),
        T(test_async_timeout_on_the_real_clock),
        T(test_sync_map_overrunning_its_timeout_fails_its_output),
        T(test_sync_filter_overrun_fails_the_item_and_a_fast_batch_passes),
        T(test_flat_map_overrun_is_only_counted),
        T(test_async_stage_behind_a_full_downstream_queue),
        T(test_cancel_with_items_in_flight),
        T(test_cancel_with_items_in_flight_on_a_host_driven_runtime),
        T(test_drain_waits_for_items_in_flight),
        T(test_drain_deadline_with_items_in_flight_cancels_them),
        T(test_drain_with_items_in_flight_on_a_host_driven_runtime),
        T(test_pipeline_free_with_items_in_flight),
        T(test_runtime_free_with_items_in_flight),
        T(test_two_async_stages_with_a_push_source),
        T(test_completions_racing_with_timeouts_unordered),
        T(test_completions_racing_with_timeouts_ordered),
        T(test_stress_unordered_two_completer_threads),
        T(test_stress_ordered_two_completer_threads),
    };
    return TU_RUN_GROUP(tests);
}
