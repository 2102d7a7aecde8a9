/*
 * Resilience: retry (backoff kinds, predicate, attempts, items in flight while they wait,
 * cancel and drain, async stages) and circuit breakers (standalone transitions, on map and
 * async stages in fail and wait mode, together with retry). Timing is asserted exactly on a
 * virtual clock with a host-driven runtime; threaded runs check outcomes, accounting and
 * generous real-time bounds only.
 */
#include "test_util.h"

#include <math.h>

#define US 1000ull       /* nanoseconds per microsecond */
#define MS 1000000ull    /* nanoseconds per millisecond */
#define T0 1000000000ull /* virtual clock start: 1 s (not 0, to catch "0 = unset" bugs) */
#define N_ITEMS 4096u    /* item values the tracker and the per-item arrays follow */
#define LOG_MAX 8192u    /* calls / deliveries / dead letters recorded per run */
#define MAX_W 8u         /* workers a schedule check follows */
#define DOWN_STATUS 55   /* what the service returns while it is "down" */
#define REFUSE_STATUS 7  /* what the async callback returns when it refuses an item */
#define GOLDEN 0x9E3779B97F4A7C15ull

/* Status of a failing call: tells the attempt, so "the last status" can be checked. */
static int32_t fail_status(uint32_t attempt) {
    return 100 + (int32_t)attempt;
}

/* ----- shared context ----- */

typedef struct call_rec {
    uint64_t item;
    uint64_t time;
    uint64_t completion; /* async: the handle passed to the callback */
    uint32_t attempt;    /* the n-th call for this item (counted by the test) */
    uint32_t worker;     /* tu_current_worker() during the call */
    int32_t status;      /* what the call returned (map) or 0 (async, started) */
} call_rec;

typedef struct pred_rec {
    uint64_t item;
    int32_t status;
    uint32_t attempt;
} pred_rec;

typedef struct rctx {
    tu_tracker t;
    fluxus_runtime *rt;
    /* behaviour of the service */
    uint32_t succeed_at[N_ITEMS];  /* 0: never succeeds; k: the k-th call succeeds */
    uint32_t refuse_mask[N_ITEMS]; /* async: bit k-1 set = refuse the k-th call */
    int32_t down;                  /* every call fails with DOWN_STATUS */
    /* calls of the map / async callback */
    uint32_t calls[N_ITEMS];
    uint64_t n_calls;
    call_rec call_log[LOG_MAX];
    /* async: started items waiting for the host (test thread) to complete them */
    uint64_t n_pend;
    call_rec pend[LOG_MAX];
    /* sink */
    uint64_t n_log;
    uint64_t items[LOG_MAX];
    uint64_t times[LOG_MAX];
    /* dead letters */
    uint64_t dl_calls;
    uint64_t dl_items[LOG_MAX];
    int32_t dl_status[LOG_MAX];
    uint32_t dl_stage[LOG_MAX];
    uint32_t dl_attempts[LOG_MAX];
    uint64_t dl_times[LOG_MAX];
    /* retry predicate */
    int32_t stop_status; /* the predicate says no to this status (0: never) */
    uint64_t n_pred;
    pred_rec pred_log[LOG_MAX];
    /* schedule check scratch */
    uint64_t due[N_ITEMS];
    uint8_t waiting[N_ITEMS];
} rctx;

static rctx *ctx_new(fluxus_runtime *rt) {
    rctx *c = (rctx *)calloc(1, sizeof *c);
    assert_non_null(c);
    c->rt = rt;
    tu_tracker_init(&c->t, N_ITEMS);
    return c;
}

static void ctx_free(rctx *c) {
    tu_tracker_destroy(&c->t);
    free(c);
}

/* Breaker tests: the service works for every item unless it is down. */
static void all_succeed(rctx *c) {
    uint32_t i;
    for (i = 0; i < N_ITEMS; i++) {
        c->succeed_at[i] = 1;
    }
}

static uint64_t clock_now(fluxus_runtime *rt) {
    uint64_t t = 0;
    TU_OK(fluxus_runtime_now_ns(rt, &t));
    return t;
}

/* Virtual-clock helpers from test_util.h, on this file's clock origin T0. */
static fluxus_runtime *vruntime(void) { return tu_vruntime(T0); }
static void drive(fluxus_runtime *rt) { tu_drive(rt); }
static void step(fluxus_runtime *rt, uint64_t ns) { tu_step(rt, ns); }
static void step_to(fluxus_runtime *rt, uint64_t at_ns) { tu_step_to(rt, T0 + at_ns); }

static uint64_t now_of(fluxus_runtime *rt) {
    uint64_t t = 0;
    fluxus_runtime_now_ns(rt, &t);
    return t;
}

static void log_call(rctx *c, uint64_t item, uint32_t attempt, int32_t status,
                     uint64_t completion) {
    uint64_t i = TU_ADD(&c->n_calls, 1) - 1;
    if (i < LOG_MAX) {
        call_rec *r = &c->call_log[i];
        r->item = item;
        r->time = now_of(c->rt);
        r->completion = completion;
        r->attempt = attempt;
        r->worker = tu_current_worker();
        r->status = status;
    }
}

static uint32_t count_call(rctx *c, uint64_t item) {
    return item < N_ITEMS ? TU_ADD(&c->calls[item], 1) : 0;
}

/* The map stage's service: fails while down, else until the item's succeed_at-th call. */
static int32_t flaky_map(void *user, uint64_t in, uint64_t *out) {
    rctx *c = (rctx *)user;
    uint32_t n = count_call(c, in);
    int32_t status;
    if (TU_LOAD(&c->down)) {
        status = DOWN_STATUS;
    } else if (in < N_ITEMS && c->succeed_at[in] != 0 && n >= c->succeed_at[in]) {
        status = 0;
    } else {
        status = fail_status(n);
    }
    log_call(c, in, n, status, 0);
    if (status == 0) {
        *out = in;
    }
    return status;
}

/* The async stage's service: refuses the calls marked in refuse_mask, otherwise queues the
 * item for the test thread, which completes it (host-driven runs only). */
static int32_t queued_async(void *user, uint64_t item, uint64_t completion) {
    rctx *c = (rctx *)user;
    uint32_t n = count_call(c, item);
    uint64_t i;
    if (item < N_ITEMS && n >= 1 && n <= 32 && (c->refuse_mask[item] >> (n - 1)) & 1u) {
        log_call(c, item, n, REFUSE_STATUS, completion);
        return REFUSE_STATUS;
    }
    log_call(c, item, n, 0, completion);
    i = TU_ADD(&c->n_pend, 1) - 1;
    if (i < LOG_MAX) {
        c->pend[i].item = item;
        c->pend[i].completion = completion;
        c->pend[i].attempt = n;
        c->pend[i].time = now_of(c->rt);
    }
    return 0;
}

/* Sink: records the item and the clock (single-worker sink). */
static int32_t log_sink(void *user, uint64_t item) {
    rctx *c = (rctx *)user;
    uint64_t i = TU_LOAD(&c->n_log);
    if (i < LOG_MAX) {
        c->items[i] = item;
        c->times[i] = now_of(c->rt);
    }
    tu_tracker_deliver(&c->t, item);
    TU_STORE(&c->n_log, i + 1);
    return 0;
}

static void log_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    rctx *c = (rctx *)user;
    uint64_t i = TU_ADD(&c->dl_calls, 1) - 1;
    if (i < LOG_MAX) {
        c->dl_items[i] = item;
        c->dl_status[i] = tu_failure_status(f);
        c->dl_stage[i] = tu_failure_stage_index(f);
        c->dl_attempts[i] = tu_failure_attempts(f);
        c->dl_times[i] = now_of(c->rt);
    }
}

static int32_t log_predicate(void *user, uint64_t item, int32_t status, uint32_t attempt) {
    rctx *c = (rctx *)user;
    uint64_t i = TU_ADD(&c->n_pred, 1) - 1;
    if (i < LOG_MAX) {
        c->pred_log[i].item = item;
        c->pred_log[i].status = status;
        c->pred_log[i].attempt = attempt;
    }
    return (c->stop_status != 0 && status == c->stop_status) ? 0 : 1;
}

/* Sink for pipelines without a tracker. */
static int32_t null_sink(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static uint64_t delivered(rctx *c) {
    return TU_LOAD(&c->n_log);
}
static uint64_t n_calls(rctx *c) {
    return TU_LOAD(&c->n_calls);
}
static uint64_t dead(rctx *c) {
    return TU_LOAD(&c->dl_calls);
}

/* ----- host-driven virtual-clock helpers ----- */





static void push(fluxus_pipeline *p, uint64_t item) {
    TU_OK(fluxus_pipeline_push(p, item, 0));
}

static int32_t state_of(fluxus_pipeline *p) {
    int32_t st = -1;
    TU_OK(fluxus_pipeline_get_state(&st, p));
    return st;
}

/* push -> "svc" (map or async) with dead letters -> log sink; returns the svc stage index. */
static fluxus_pipeline *svc_pipeline(fluxus_runtime *rt, rctx *c, const char *name, int async,
                                     uint32_t *svc) {
    fluxus_pipeline *p = tu_pipeline(rt, name, &c->t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    if (async) {
        TU_OK(fluxus_pipeline_add_async_map(svc, p, "svc", queued_async, c, NULL));
        TU_OK(fluxus_stage_set_order(p, *svc, FLUXUS_ORDER_UNORDERED));
    } else {
        TU_OK(fluxus_pipeline_add_map(svc, p, "svc", flaky_map, c, NULL));
    }
    TU_OK(fluxus_stage_set_error_policy(p, *svc, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", log_sink, c, NULL));
    return p;
}

static void close_and_finish(fluxus_pipeline *p, fluxus_runtime *rt, rctx *c) {
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_check_conservation(p, &c->t, 0);
}

static void expect_delivery(rctx *c, uint64_t index, uint64_t item, uint64_t at_ns) {
    assert_true(delivered(c) > index);
    if (c->items[index] != item || c->times[index] != T0 + at_ns) {
        fail_msg("delivery %llu: item %llu at T0%+lld ns, expected item %llu at T0%+lld ns",
                 (unsigned long long)index, (unsigned long long)c->items[index],
                 (long long)(c->times[index] - T0), (unsigned long long)item, (long long)at_ns);
    }
}

static void expect_dead_letter(rctx *c, uint64_t index, uint64_t item, int32_t status,
                               uint32_t attempts, uint32_t stage, uint64_t at_ns) {
    assert_true(dead(c) > index);
    if (c->dl_items[index] != item || c->dl_status[index] != status ||
        c->dl_attempts[index] != attempts || c->dl_stage[index] != stage ||
        c->dl_times[index] != T0 + at_ns) {
        fail_msg(
            "dead letter %llu: item %llu status %d attempts %u stage %u at T0%+lld ns; "
            "expected item %llu status %d attempts %u stage %u at T0%+lld ns",
            (unsigned long long)index, (unsigned long long)c->dl_items[index],
            (int)c->dl_status[index], c->dl_attempts[index], c->dl_stage[index],
            (long long)(c->dl_times[index] - T0), (unsigned long long)item, (int)status, attempts,
            stage, (long long)at_ns);
    }
}

/* The logged call of `item` number `attempt`; fails the test if there is none. */
static const call_rec *find_call(rctx *c, uint64_t item, uint32_t attempt) {
    uint64_t i, n = n_calls(c);
    for (i = 0; i < n && i < LOG_MAX; i++) {
        if (c->call_log[i].item == item && c->call_log[i].attempt == attempt) {
            return &c->call_log[i];
        }
    }
    fail_msg("item %llu had no call number %u", (unsigned long long)item, attempt);
    return NULL;
}

static void expect_call_at(rctx *c, uint64_t item, uint32_t attempt, uint64_t at_ns) {
    const call_rec *r = find_call(c, item, attempt);
    if (r->time != T0 + at_ns) {
        fail_msg("call %u of item %llu ran at T0%+lld ns, expected T0%+lld ns", attempt,
                 (unsigned long long)item, (long long)(r->time - T0), (long long)at_ns);
    }
}

/* The pending async call of `item` number `attempt` (queued by queued_async). */
static const call_rec *find_pending(rctx *c, uint64_t item, uint32_t attempt) {
    uint64_t i, n = TU_LOAD(&c->n_pend);
    for (i = 0; i < n && i < LOG_MAX; i++) {
        if (c->pend[i].item == item && c->pend[i].attempt == attempt) {
            return &c->pend[i];
        }
    }
    fail_msg("item %llu: async call %u was not started", (unsigned long long)item, attempt);
    return NULL;
}

/* Host side of an async item: complete `item`'s call number `attempt`. */
static void complete(fluxus_pipeline *p, rctx *c, uint64_t item, uint32_t attempt, int32_t status,
                     uint64_t out) {
    TU_OK(fluxus_pipeline_complete_async(p, find_pending(c, item, attempt)->completion, status, out));
}

static void stats_of(fluxus_pipeline *p, uint32_t stage, fluxus_stage_stats *st) {
    tu_stage_stats(p, stage, st);
}

/* =============================================================================================
 * Retry: backoff schedules, exact on the virtual clock
 * =========================================================================================== */

/* The documented jitter generator: splitmix64's output function on z. */
static uint64_t doc_splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct sched {
    int32_t backoff;
    uint64_t base_ns, max_ns, seed;
    uint32_t max_attempts;
} sched;

/* The exponential delay after the failure of call `attempt` (1-based): base x 2^(attempt-1),
 * at most max; the constant backoff is base every time. */
static uint64_t plain_delay(const sched *s, uint32_t attempt) {
    uint64_t d = s->base_ns;
    uint32_t k;
    if (s->backoff != FLUXUS_BACKOFF_CONSTANT) {
        for (k = 1; k < attempt && d < s->max_ns; k++) {
            d = d * 2 > s->max_ns ? s->max_ns : d * 2;
        }
    }
    return d > s->max_ns ? s->max_ns : d;
}

/* The documented delay: for jitter, worker w's n-th draw mod (d + 1). */
static uint64_t expected_delay(const sched *s, uint32_t attempt, uint32_t w, uint64_t n) {
    uint64_t d = plain_delay(s, attempt);
    if (s->backoff != FLUXUS_BACKOFF_EXPONENTIAL_JITTER) {
        return d;
    }
    return doc_splitmix64(s->seed + w + n * GOLDEN) % (d + 1);
}

/*
 * Drives a host-driven run through its retries and checks every call against the schedule the
 * test computes on its own from the log: each failing call (not the last attempt) draws the
 * next delay of its worker, and the item's next call must run exactly that long after it. The
 * clock is moved to 1 ns before the next due retry (nothing may run) and then onto it.
 */
static void run_schedule(fluxus_runtime *rt, rctx *c, const sched *s) {
    uint64_t draws[MAX_W], seen = 0, i;
    uint32_t guard = 0;
    memset(draws, 0, sizeof draws);
    memset(c->waiting, 0, sizeof c->waiting);
    for (;;) {
        uint64_t n, min = UINT64_MAX, now;
        drive(rt);
        n = n_calls(c);
        assert_true(n <= LOG_MAX);
        for (; seen < n; seen++) {
            const call_rec *r = &c->call_log[seen];
            assert_true(r->item < N_ITEMS);
            if (r->attempt > 1) {
                if (!c->waiting[r->item]) {
                    fail_msg("item %llu called a %u. time but no retry was due",
                             (unsigned long long)r->item, r->attempt);
                }
                if (r->time != c->due[r->item]) {
                    fail_msg("item %llu: call %u at T0%+lld ns, expected T0%+lld ns",
                             (unsigned long long)r->item, r->attempt, (long long)(r->time - T0),
                             (long long)(c->due[r->item] - T0));
                }
            }
            c->waiting[r->item] = 0;
            if (r->status != 0 && r->attempt < s->max_attempts) {
                uint64_t d;
                if (r->worker >= MAX_W) {
                    fail_msg("call ran on worker %u", r->worker);
                }
                d = expected_delay(s, r->attempt, r->worker, ++draws[r->worker]);
                assert_true(d <= plain_delay(s, r->attempt));
                c->due[r->item] = r->time + d;
                c->waiting[r->item] = 1;
            }
        }
        for (i = 0; i < N_ITEMS; i++) {
            if (c->waiting[i] && c->due[i] < min) {
                min = c->due[i];
            }
        }
        if (min == UINT64_MAX) {
            return;
        }
        now = clock_now(rt);
        if (min <= now) {
            fail_msg("a retry due at T0%+lld ns had not run at T0%+lld ns", (long long)(min - T0),
                     (long long)(now - T0));
        }
        if (min - 1 > now) {
            step(rt, min - 1 - now);
            if (n_calls(c) != n) {
                fail_msg("a call ran before T0%+lld ns, when the next retry was due",
                         (long long)(min - T0));
            }
        }
        step(rt, min - clock_now(rt));
        assert_true(++guard < 100000u);
    }
}

static void test_retry_constant_backoff_retries_at_exact_times(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_constant", 0, &svc);
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    (void)s;

    /* max_us is only the cap of the exponential kinds: constant waits base_us every time. */
    TU_OK(fluxus_stage_set_retry(p, svc, 4, FLUXUS_BACKOFF_CONSTANT, 250, 10000));
    c->succeed_at[1] = 3; /* item 1 succeeds on its 3rd call; item 2 never */
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    push(p, 2);
    drive(rt);
    assert_int_equal(n_calls(c), 2);
    assert_int_equal(delivered(c), 0);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.retry_waiting, 2);
    tu_stats(p, &ps);
    assert_int_equal(ps.in_flight, 2); /* waiting items are in flight */
    assert_int_equal(ps.balanced, 0);
    assert_int_equal(ps.dead_lettered + ps.failed, 0);

    step_to(rt, 250 * US - 1);
    assert_int_equal(n_calls(c), 2);
    step_to(rt, 250 * US);
    assert_int_equal(n_calls(c), 4);
    step_to(rt, 500 * US - 1);
    assert_int_equal(n_calls(c), 4);
    step_to(rt, 500 * US);
    assert_int_equal(n_calls(c), 6);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 1, 500 * US);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 1);
    step_to(rt, 750 * US - 1);
    assert_int_equal(n_calls(c), 6);
    assert_int_equal(dead(c), 0);
    step_to(rt, 750 * US);
    assert_int_equal(n_calls(c), 7);
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 2, fail_status(4), 4, svc, 750 * US);
    step(rt, 100 * MS); /* nothing further */
    assert_int_equal(n_calls(c), 7);

    expect_call_at(c, 1, 1, 0);
    expect_call_at(c, 1, 2, 250 * US);
    expect_call_at(c, 1, 3, 500 * US);
    expect_call_at(c, 2, 1, 0);
    expect_call_at(c, 2, 2, 250 * US);
    expect_call_at(c, 2, 3, 500 * US);
    expect_call_at(c, 2, 4, 750 * US);
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.in, 2);
    assert_int_equal(st.out, 1);
    assert_int_equal(st.dead_lettered, 1);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.retries, 5);
    assert_int_equal(st.retry_waiting, 0);
    assert_int_equal(c->t.freed[2], 1);
    tu_tracker_check_once(&c->t, 1, 3);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_retry_exponential_backoff_doubles_up_to_the_maximum(void **s) {
    static const uint64_t at_us[7] = {0, 100, 300, 700, 1500, 2500, 3500};
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_exponential", 0, &svc);
    fluxus_stage_stats st;
    (void)s;

    /* 100, 200, 400, 800, then capped: 1000, 1000. */
    TU_OK(fluxus_stage_set_retry(p, svc, 7, FLUXUS_BACKOFF_EXPONENTIAL, 100, 1000));
    TU_OK(fluxus_pipeline_start(p));
    push(p, 3);
    drive(rt);
    assert_int_equal(n_calls(c), 1);
    for (k = 1; k < 7; k++) {
        step_to(rt, at_us[k] * US - 1);
        if (n_calls(c) != k) {
            fail_msg("%llu calls by T0+%llu us - 1 ns, expected %u", (unsigned long long)n_calls(c),
                     (unsigned long long)at_us[k], k);
        }
        step_to(rt, at_us[k] * US);
        assert_int_equal(n_calls(c), k + 1);
    }
    for (k = 0; k < 7; k++) {
        expect_call_at(c, 3, k + 1, at_us[k] * US);
    }
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 3, fail_status(7), 7, svc, 3500 * US);
    step(rt, 10 * MS);
    assert_int_equal(n_calls(c), 7);
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 6);
    assert_int_equal(st.dead_lettered, 1);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_retry_with_zero_backoff_retries_at_once(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_zero_backoff", 0, &svc);
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_EXPONENTIAL, 0, 0));
    c->succeed_at[6] = 2;
    TU_OK(fluxus_pipeline_start(p));
    push(p, 5);
    push(p, 6);
    drive(rt); /* no clock movement needed */
    assert_int_equal(n_calls(c), 5);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 6, 0);
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 5, fail_status(3), 3, svc, 0);
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 5, 7);
    tu_free_all(p, rt);
    ctx_free(c);
}

#define JIT_ATTEMPTS 6u

/* One jittered run: items 0..n-1 pushed at T0, each failing a few times (some always). The
 * schedule is checked exactly by run_schedule(); the call log is copied to `out`. */
static uint64_t run_jitter(uint64_t seed, uint32_t workers, uint32_t n_items, call_rec *out,
                           uint32_t *workers_used) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, i;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_jitter", 0, &svc);
    sched sc;
    uint64_t n, k, jittered = 0;

    sc.backoff = FLUXUS_BACKOFF_EXPONENTIAL_JITTER;
    sc.base_ns = 100 * US;
    sc.max_ns = 1600 * US;
    sc.seed = seed;
    sc.max_attempts = JIT_ATTEMPTS;
    TU_OK(
        fluxus_stage_set_retry(p, svc, JIT_ATTEMPTS, FLUXUS_BACKOFF_EXPONENTIAL_JITTER, 100, 1600));
    TU_OK(fluxus_stage_set_retry_seed(p, svc, seed));
    if (workers > 1) {
        TU_OK(fluxus_stage_set_workers(p, svc, workers));
        TU_OK(fluxus_stage_set_order(p, svc, FLUXUS_ORDER_PER_KEY));
    }
    for (i = 0; i < n_items; i++) {
        c->succeed_at[i] = i % 3 == 0 ? 0 : 2 + i % 4; /* 0: fails all JIT_ATTEMPTS calls */
    }
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < n_items; i++) {
        push(p, i);
    }
    run_schedule(rt, c, &sc);
    n = n_calls(c);
    *workers_used = 0;
    for (k = 0; k < n; k++) {
        out[k] = c->call_log[k];
        *workers_used |= 1u << c->call_log[k].worker;
        if (c->call_log[k].attempt > 1) {
            const call_rec *prev = find_call(c, c->call_log[k].item, c->call_log[k].attempt - 1);
            if (c->call_log[k].time - prev->time != plain_delay(&sc, prev->attempt)) {
                jittered++;
            }
        }
    }
    assert_true(jittered > 0); /* the delays are not simply the exponential ones */
    for (i = 0; i < n_items; i++) {
        uint32_t want = c->succeed_at[i] == 0 ? JIT_ATTEMPTS : c->succeed_at[i];
        if (TU_LOAD(&c->calls[i]) != want) {
            fail_msg("item %u was called %u times, expected %u", i, TU_LOAD(&c->calls[i]), want);
        }
    }
    close_and_finish(p, rt, c);
    {
        fluxus_stage_stats st;
        uint64_t want_dead = (n_items + 2) / 3;
        stats_of(p, svc, &st);
        assert_int_equal(st.dead_lettered, want_dead);
        assert_int_equal(st.out, n_items - want_dead);
        assert_int_equal(st.retries, n - n_items);
        for (k = 0; k < dead(c); k++) {
            assert_int_equal(c->dl_attempts[k], JIT_ATTEMPTS);
            assert_int_equal(c->dl_status[k], fail_status(JIT_ATTEMPTS));
        }
    }
    tu_tracker_check_once(&c->t, 0, n_items);
    tu_free_all(p, rt);
    ctx_free(c);
    return n;
}

static int same_schedule(const call_rec *a, uint64_t na, const call_rec *b, uint64_t nb) {
    uint64_t i;
    if (na != nb) {
        return 0;
    }
    for (i = 0; i < na; i++) {
        if (a[i].item != b[i].item || a[i].attempt != b[i].attempt || a[i].time != b[i].time) {
            return 0;
        }
    }
    return 1;
}

static void test_retry_jitter_follows_the_documented_draws_and_the_seed(void **s) {
    call_rec *a = (call_rec *)calloc(LOG_MAX, sizeof *a);
    call_rec *b = (call_rec *)calloc(LOG_MAX, sizeof *b);
    call_rec *d = (call_rec *)calloc(LOG_MAX, sizeof *d);
    uint64_t na, nb, nd;
    uint32_t used = 0;
    (void)s;

    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(d);
    na = run_jitter(42, 1, 6, a, &used);
    assert_int_equal(used, 1u); /* one worker: w = 0 */
    nb = run_jitter(42, 1, 6, b, &used);
    if (!same_schedule(a, na, b, nb)) {
        fail_msg("two runs with seed 42 gave different retry schedules");
    }
    nd = run_jitter(43, 1, 6, d, &used);
    if (same_schedule(a, na, d, nd)) {
        fail_msg("seeds 42 and 43 gave the same retry schedule");
    }
    /* Two per-key workers: each draws from its own sequence, offset by its index. */
    run_jitter(0xC0FFEE, 2, 24, d, &used);
    assert_int_equal(used, 3u); /* both workers had items */
    free(a);
    free(b);
    free(d);
}

/* =============================================================================================
 * Retry: outcomes, predicate, attempts
 * =========================================================================================== */

static void test_retry_item_succeeding_on_attempt_k_is_delivered_once(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_attempt_k", 0, &svc);
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 5, FLUXUS_BACKOFF_CONSTANT, 10, 10));
    for (k = 1; k <= 5; k++) {
        c->succeed_at[k] = k; /* item k succeeds on call k */
    }
    /* item 6 never succeeds */
    TU_OK(fluxus_pipeline_start(p));
    for (k = 1; k <= 6; k++) {
        push(p, k);
    }
    drive(rt);
    for (k = 1; k <= 5; k++) {
        step(rt, 10 * US);
    }
    for (k = 1; k <= 5; k++) {
        assert_int_equal(c->calls[k], k);
        assert_int_equal(c->t.delivered[k], 1);
        assert_int_equal(c->t.freed[k], 0);
    }
    assert_int_equal(c->calls[6], 5);
    assert_int_equal(delivered(c), 5);
    for (k = 0; k < 5; k++) {
        expect_delivery(c, k, k + 1, k * 10 * US); /* item k+1 on call k+1, at k x 10 us */
    }
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 6, fail_status(5), 5, svc, 40 * US);
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.in, 6);
    assert_int_equal(st.out, 5);
    assert_int_equal(st.retries, 0 + 1 + 2 + 3 + 4 + 4);
    tu_tracker_check_once(&c->t, 1, 7);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_retry_with_skip_policy_counts_a_failure_once(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_skip", 0, &svc);
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    (void)s;

    TU_OK(fluxus_stage_set_error_policy(p, svc, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 50, 50));
    TU_OK(fluxus_pipeline_start(p));
    push(p, 9);
    drive(rt);
    step_to(rt, 50 * US);
    tu_stats(p, &ps);
    assert_int_equal(ps.failed, 0); /* still waiting for its third call */
    assert_int_equal(ps.in_flight, 1);
    step_to(rt, 100 * US);
    assert_int_equal(c->calls[9], 3);
    close_and_finish(p, rt, c);
    tu_stats(p, &ps);
    assert_int_equal(ps.failed, 1);
    assert_int_equal(ps.dead_lettered, 0);
    stats_of(p, svc, &st);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.retries, 2);
    assert_int_equal(c->t.freed[9], 1);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_retry_predicate_decides_and_sees_the_attempt_numbers(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_predicate", 0, &svc);
    uint64_t frees0 = TU_LOAD(&tu_user_frees), i, seen_a = 0, seen_b = 0, seen_c = 0;
    static int marker1, marker2;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 4, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    /* Replacing a predicate releases the previous user pointer once. */
    TU_OK(fluxus_stage_set_retry_predicate(p, svc, log_predicate, &marker1, tu_user_free));
    TU_OK(fluxus_stage_set_retry_predicate(p, svc, log_predicate, c, NULL));
    assert_int_equal(TU_LOAD(&tu_user_frees), frees0 + 1);
    TU_OK(fluxus_stage_set_retry_predicate(p, svc, NULL, NULL, NULL)); /* NULL: retry all */
    TU_OK(fluxus_stage_set_retry_predicate(p, svc, log_predicate, &marker2, tu_user_free));
    assert_int_equal(TU_LOAD(&tu_user_frees), frees0 + 1);
    TU_OK(fluxus_stage_set_retry_predicate(p, svc, log_predicate, c, NULL));
    assert_int_equal(TU_LOAD(&tu_user_frees), frees0 + 2);

    c->stop_status = fail_status(3); /* the predicate gives up on a 3rd failure */
    c->succeed_at[20] = 0;           /* A: stopped by the predicate after 3 calls */
    c->succeed_at[21] = 2;           /* B: succeeds on call 2 */
    TU_OK(fluxus_pipeline_start(p));
    push(p, 20);
    push(p, 21);
    drive(rt);
    step_to(rt, 100 * US);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 21, 100 * US);
    step_to(rt, 200 * US - 1);
    assert_int_equal(dead(c), 0);
    step_to(rt, 200 * US);
    assert_int_equal(dead(c), 1);
    /* attempts reported = calls made; the status is the one the predicate refused */
    expect_dead_letter(c, 0, 20, fail_status(3), 3, svc, 200 * US);
    step(rt, 10 * MS);
    assert_int_equal(c->calls[20], 3);
    assert_int_equal(c->calls[21], 2);

    for (i = 0; i < TU_LOAD(&c->n_pred); i++) {
        const pred_rec *r = &c->pred_log[i];
        if (r->item == 20) {
            seen_a++;
            assert_int_equal(r->attempt, seen_a);
            assert_int_equal(r->status, fail_status((uint32_t)seen_a));
        } else if (r->item == 21) {
            seen_b++;
            assert_int_equal(r->attempt, 1);
            assert_int_equal(r->status, fail_status(1));
        } else {
            fail_msg("predicate called for item %llu", (unsigned long long)r->item);
        }
    }
    assert_int_equal(seen_a, 3);
    assert_int_equal(seen_b, 1);

    /* C: the predicate always says yes; the attempts run out at 4. */
    c->stop_status = 0;
    push(p, 22);
    drive(rt);
    for (k = 0; k < 3; k++) {
        step(rt, 100 * US);
    }
    assert_int_equal(c->calls[22], 4);
    assert_int_equal(dead(c), 2);
    assert_int_equal(c->dl_items[1], 22);
    assert_int_equal(c->dl_attempts[1], 4);
    assert_int_equal(c->dl_status[1], fail_status(4));
    for (i = 0; i < TU_LOAD(&c->n_pred); i++) {
        if (c->pred_log[i].item == 22) {
            seen_c++;
            assert_int_equal(c->pred_log[i].attempt, seen_c);
        }
    }
    /* Asked after calls 1..3 at least; asking after the last one would change nothing. */
    assert_true(seen_c == 3 || seen_c == 4);

    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 20, 23);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    ctx_free(c);
}

/* =============================================================================================
 * Retry: waiting items are in flight and block nothing; cancel and drain
 * =========================================================================================== */

static void test_retry_waiting_item_does_not_hold_up_later_items(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_no_block", 0, &svc);
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 1000000, 1000000)); /* 1 s */
    c->succeed_at[0] = 2;
    for (k = 1; k < 13; k++) {
        c->succeed_at[k] = 1;
    }
    TU_OK(fluxus_pipeline_start(p));
    for (k = 0; k < 10; k++) {
        push(p, k);
    }
    drive(rt);
    assert_int_equal(delivered(c), 9); /* 1..9 went on at T0 */
    for (k = 0; k < 9; k++) {
        expect_delivery(c, k, k + 1, 0);
    }
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 1);
    assert_int_equal(st.retries, 1);
    tu_stats(p, &ps);
    assert_int_equal(ps.in_flight, 1);
    assert_int_equal(ps.state, FLUXUS_STATE_RUNNING);

    step_to(rt, 500 * MS);
    push(p, 10);
    push(p, 11);
    push(p, 12);
    drive(rt);
    assert_int_equal(delivered(c), 12);
    expect_delivery(c, 11, 12, 500 * MS);
    step_to(rt, 1000 * MS - 1);
    assert_int_equal(delivered(c), 12);
    assert_int_equal(c->calls[0], 1);
    step_to(rt, 1000 * MS);
    assert_int_equal(delivered(c), 13);
    expect_delivery(c, 12, 0, 1000 * MS);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 0);
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 0, 13);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void wait_until_u64(const uint64_t *v, uint64_t want, const char *what) {
    uint64_t t0 = tu_now_ms();
    while (TU_LOAD(v) < want) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("%s: still %llu after %u ms, expected %llu", what,
                     (unsigned long long)TU_LOAD(v), (unsigned)TU_WAIT_MS,
                     (unsigned long long)want);
        }
        tu_sleep_us(200);
    }
}

#define FLOW_N 300u

static void test_retry_long_backoff_blocks_no_worker_thread(void **s) {
    fluxus_runtime *rt = tu_runtime(1); /* a single worker thread */
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_threaded_no_block", 0, &svc);
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    uint64_t t0, elapsed;
    (void)s;

    TU_OK(
        fluxus_stage_set_retry(p, svc, 2, FLUXUS_BACKOFF_CONSTANT, 20000000, 20000000)); /* 20 s */
    c->succeed_at[0] = 2;
    for (k = 1; k <= FLOW_N; k++) {
        c->succeed_at[k] = 1;
    }
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    TU_OK(fluxus_pipeline_push(p, 0, UINT32_MAX));
    wait_until_u64(&c->n_calls, 1, "first call");
    for (k = 1; k <= FLOW_N; k++) {
        TU_OK(fluxus_pipeline_push(p, k, UINT32_MAX));
    }
    wait_until_u64(&c->n_log, FLOW_N, "deliveries while item 0 waits for its retry");
    elapsed = tu_now_ms() - t0;
    if (elapsed > 10000) {
        fail_msg("%u items took %llu ms while one item waited 20 s for a retry", FLOW_N,
                 (unsigned long long)elapsed);
    }
    assert_int_equal(TU_LOAD(&c->calls[0]), 1);
    assert_int_equal(TU_LOAD(&c->t.delivered[0]), 0);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 1);
    tu_stats(p, &ps);
    assert_int_equal(ps.in_flight, 1);

    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    assert_int_equal(TU_LOAD(&c->t.freed[0]), 1);
    assert_int_equal(TU_LOAD(&c->calls[0]), 1);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 0);
    assert_int_equal(st.cancelled, 1);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, FLOW_N + 1);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_retry_cancel_cancels_the_waiting_items(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_cancel", 0, &svc);
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 5, FLUXUS_BACKOFF_CONSTANT, 1000, 1000));
    TU_OK(fluxus_pipeline_start(p));
    for (k = 0; k < 5; k++) {
        push(p, k);
    }
    drive(rt);
    step_to(rt, 1000 * US); /* second calls; all wait again */
    assert_int_equal(n_calls(c), 10);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 5);
    step_to(rt, 1500 * US);
    TU_OK(fluxus_pipeline_cancel(p));
    drive(rt);
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));
    step(rt, 100 * MS); /* their retry times pass: no call, no second destruction */
    assert_int_equal(n_calls(c), 10);
    for (k = 0; k < 5; k++) {
        assert_int_equal(c->t.freed[k], 1);
    }
    assert_int_equal(dead(c), 0);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 0);
    assert_int_equal(st.cancelled, 5);
    tu_stats(p, &ps);
    assert_int_equal(ps.cancelled, 5);
    tu_check_conservation(p, &c->t, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_drain_waits_for_retries_to_finish(void **s) {
    fluxus_runtime *rt = tu_runtime(2);
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_drain", 0, &svc);
    fluxus_stage_stats st;
    uint64_t t0, elapsed;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 30000, 30000)); /* 30 ms */
    for (k = 0; k < 10; k++) {
        c->succeed_at[k] = 2;
    }
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    for (k = 0; k < 10; k++) {
        TU_OK(fluxus_pipeline_push(p, k, UINT32_MAX));
    }
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_drain(p, TU_WAIT_MS));
    elapsed = tu_now_ms() - t0;
    assert_true(elapsed >= 29); /* the retries really waited their 30 ms */
    assert_int_equal(delivered(c), 10);
    for (k = 0; k < 10; k++) {
        assert_int_equal(TU_LOAD(&c->calls[k]), 2);
    }
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 10);
    assert_int_equal(st.retry_waiting, 0);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, 10);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_drain_deadline_cancels_items_waiting_for_a_retry(void **s) {
    fluxus_runtime *rt = tu_runtime(2);
    rctx *c = ctx_new(rt);
    uint32_t svc = 0, k;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_drain_deadline", 0, &svc);
    fluxus_stage_stats st;
    uint64_t t0, elapsed;
    tu_msg m;
    (void)s;

    TU_OK(
        fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 10000000, 10000000)); /* 10 s */
    c->succeed_at[5] = 1;
    TU_OK(fluxus_pipeline_start(p));
    for (k = 0; k < 6; k++) {
        TU_OK(fluxus_pipeline_push(p, k, UINT32_MAX));
    }
    wait_until_u64(&c->n_calls, 6, "first calls");
    wait_until_u64(&c->n_log, 1, "delivery of item 5");
    t0 = tu_now_ms();
    TU_EXPECT_MSG(FLUXUS_ETIMEDOUT, fluxus_pipeline_drain(p, 150), &m);
    elapsed = tu_now_ms() - t0;
    assert_true(elapsed >= 140);
    if (elapsed > 8000) {
        fail_msg("drain with a 150 ms deadline took %llu ms", (unsigned long long)elapsed);
    }
    assert_non_null(strstr(m.text, "svc"));
    stats_of(p, svc, &st);
    assert_int_equal(st.held_at_deadline, 5);
    assert_int_equal(st.cancelled, 5);
    assert_int_equal(st.retry_waiting, 0);
    for (k = 0; k < 5; k++) {
        assert_int_equal(TU_LOAD(&c->calls[k]), 1);
        assert_int_equal(TU_LOAD(&c->t.freed[k]), 1);
    }
    tu_check_conservation(p, &c->t, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Retry on async stages
 * =========================================================================================== */

static void test_async_retry_on_error_completion_and_refusal_but_not_timeout(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "async_retry", 1, &svc);
    fluxus_stage_stats st;
    uint64_t first_comp_1, k;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 4, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    TU_OK(fluxus_stage_set_timeout_us(p, svc, 1000));
    c->refuse_mask[2] = 1u;   /* refuses call 1, then starts call 2 */
    c->refuse_mask[4] = 0xFu; /* refuses every call */
    TU_OK(fluxus_pipeline_start(p));
    for (k = 1; k <= 5; k++) {
        push(p, k);
    }
    drive(rt);
    assert_int_equal(n_calls(c), 5);
    assert_int_equal(TU_LOAD(&c->n_pend), 3); /* 1, 3, 5 started; 2, 4 refused */
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 2);
    assert_int_equal(st.in_flight, 3);

    /* Item 1: an error completion that hands back another item (101): 101 is retried. The
     * host keeps item 1 (it passed 101 instead). */
    first_comp_1 = find_pending(c, 1, 1)->completion;
    complete(p, c, 1, 1, 9, 101);
    complete(p, c, 5, 1, fail_status(1), 5);
    drive(rt);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 4);
    assert_int_equal(dead(c), 0);
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_complete_async(p, first_comp_1, 0, 1)); /* used */
    TU_EXPECT(FLUXUS_ESTATE,
              fluxus_pipeline_complete_async(p, find_call(c, 2, 1)->completion, 0, 2)); /* refused */

    step_to(rt, 100 * US - 1);
    assert_int_equal(n_calls(c), 5);
    step_to(rt, 100 * US);
    assert_int_equal(n_calls(c), 9);     /* 2, 4, 101 and 5 again */
    expect_call_at(c, 101, 1, 100 * US); /* the callback gets the item passed to complete */
    assert_true(find_pending(c, 101, 1)->completion != first_comp_1);
    expect_call_at(c, 2, 2, 100 * US);
    expect_call_at(c, 4, 2, 100 * US);
    expect_call_at(c, 5, 2, 100 * US);
    complete(p, c, 2, 2, 0, 2);
    complete(p, c, 101, 1, 0, 101);
    complete(p, c, 5, 2, fail_status(2), 5);
    drive(rt);
    assert_int_equal(delivered(c), 2);
    assert_int_equal(c->t.delivered[2], 1);
    assert_int_equal(c->t.delivered[101], 1);

    step_to(rt, 200 * US);
    complete(p, c, 5, 3, fail_status(3), 5);
    drive(rt);
    step_to(rt, 300 * US - 1);
    assert_int_equal(dead(c), 0);
    step_to(rt, 300 * US);
    complete(p, c, 5, 4, fail_status(4), 5);
    drive(rt);
    assert_int_equal(c->calls[4], 4);
    assert_int_equal(c->calls[5], 4);
    assert_int_equal(dead(c), 2);
    expect_dead_letter(c, 0, 4, REFUSE_STATUS, 4, svc, 300 * US);
    expect_dead_letter(c, 1, 5, fail_status(4), 4, svc, 300 * US);

    /* Item 3 times out at exactly +1000 us and is not retried: the host still holds it. */
    step_to(rt, 1000 * US - 1);
    assert_int_equal(dead(c), 2);
    step_to(rt, 1000 * US);
    assert_int_equal(dead(c), 3);
    expect_dead_letter(c, 2, 3, FLUXUS_ETIMEDOUT, 1, svc, 1000 * US);
    step(rt, 50 * MS);
    assert_int_equal(c->calls[3], 1);
    assert_int_equal(c->t.freed[3], 0);
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_complete_async(p, find_pending(c, 3, 1)->completion, 0, 3));
    tu_item_free(&c->t, 3); /* the host releases the item it still owned */

    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 1 /* 1 */ + 1 /* 2 */ + 3 /* 4 */ + 3 /* 5 */);
    assert_int_equal(st.timed_out, 1);
    assert_int_equal(st.dead_lettered, 3);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(c->t.freed[1], 0); /* the host's own: fluxus never destroyed item 1 */
    assert_int_equal(c->t.delivered[1], 0);
    tu_tracker_check_once(&c->t, 2, 6);
    tu_tracker_check_once(&c->t, 101, 102);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* Only the retrying stage's own callback failures are retried: a failure in the stage after it
 * follows that stage's policy at once, with attempts 1. */
static int32_t fail_13_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in == 13) {
        return 66;
    }
    *out = in;
    return 0;
}

static void test_retry_applies_to_its_own_stage_only(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_pipeline *p = tu_pipeline(rt, "retry_scope", &c->t);
    uint32_t pre = 0, svc = 0, post = 0;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_map(&pre, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(&svc, p, "svc", flaky_map, c, NULL));
    TU_OK(fluxus_pipeline_add_map(&post, p, "post", fail_13_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", log_sink, c, NULL));
    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    TU_OK(fluxus_stage_set_error_policy(p, svc, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_stage_set_error_policy(p, post, FLUXUS_ERROR_DEAD_LETTER));
    c->succeed_at[12] = 2;
    c->succeed_at[13] = 2; /* passes svc on its 2nd call, then fails at post */
    c->succeed_at[14] = 1;
    TU_OK(fluxus_pipeline_start(p));
    push(p, 12);
    push(p, 13);
    push(p, 14);
    drive(rt);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 14, 0);
    step_to(rt, 100 * US - 1);
    assert_int_equal(n_calls(c), 3);
    step_to(rt, 100 * US);
    assert_int_equal(n_calls(c), 5);
    assert_int_equal(delivered(c), 2);
    expect_delivery(c, 1, 12, 100 * US);
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 13, 66, 1, post, 100 * US);
    step(rt, 10 * MS);
    assert_int_equal(n_calls(c), 5);
    assert_int_equal(dead(c), 1);
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.out, 3);
    stats_of(p, post, &st);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.dead_lettered, 1);
    stats_of(p, pre, &st);
    assert_int_equal(st.retries, 0);
    tu_tracker_check_once(&c->t, 12, 15);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* A batch map fails single items through status[]: only those are retried, one at a time. */
static int32_t flaky_map_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                               uint32_t count) {
    rctx *c = (rctx *)user;
    uint32_t i;
    for (i = 0; i < count; i++) {
        status[i] = flaky_map(c, in[i], &out[i]);
    }
    return 0;
}

static void test_retry_on_a_batch_map_retries_the_failed_items_only(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_pipeline *p = tu_pipeline(rt, "retry_batch", &c->t);
    uint32_t svc = 0, k;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(&svc, p, "svc", flaky_map_batch, c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", log_sink, c, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, svc, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_EXPONENTIAL, 100, 1000));
    for (k = 0; k < 8; k++) {
        c->succeed_at[k] = k % 2 ? 2 : 1; /* odd items fail their first call */
    }
    c->succeed_at[7] = 0; /* never */
    TU_OK(fluxus_pipeline_start(p));
    for (k = 0; k < 8; k++) {
        push(p, k);
    }
    drive(rt);
    assert_int_equal(n_calls(c), 8);
    assert_int_equal(delivered(c), 4);
    step_to(rt, 100 * US - 1);
    assert_int_equal(n_calls(c), 8);
    step_to(rt, 100 * US);
    assert_int_equal(n_calls(c), 12); /* 1, 3, 5, 7 again; the even ones are not called again */
    assert_int_equal(delivered(c), 7);
    step_to(rt, 300 * US - 1);
    assert_int_equal(n_calls(c), 12);
    step_to(rt, 300 * US);
    assert_int_equal(n_calls(c), 13);
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 7, fail_status(3), 3, svc, 300 * US);
    for (k = 0; k < 7; k++) {
        assert_int_equal(c->calls[k], k % 2 ? 2 : 1);
    }
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 5);
    tu_tracker_check_once(&c->t, 0, 8);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* A sink is a stage like the others: its failures are retried, and the item is delivered once. */
static int32_t flaky_sink(void *user, uint64_t item) {
    rctx *c = (rctx *)user;
    uint64_t ignored;
    int32_t rc = flaky_map(c, item, &ignored);
    if (rc == 0) {
        log_sink(c, item);
    }
    return rc;
}

static void test_retry_on_a_sink(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_pipeline *p = tu_pipeline(rt, "retry_sink", &c->t);
    uint32_t sink = 0;
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    (void)s;

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", flaky_sink, c, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, sink, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_stage_set_retry(p, sink, 2, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    c->succeed_at[4] = 2;
    c->succeed_at[5] = 3; /* out of attempts first */
    TU_OK(fluxus_pipeline_start(p));
    push(p, 4);
    push(p, 5);
    drive(rt);
    assert_int_equal(delivered(c), 0);
    step_to(rt, 100 * US);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 4, 100 * US);
    expect_dead_letter(c, 0, 5, fail_status(2), 2, sink, 100 * US);
    close_and_finish(p, rt, c);
    tu_stats(p, &ps);
    assert_int_equal(ps.delivered, 1);
    stats_of(p, sink, &st);
    assert_int_equal(st.out, 1);
    assert_int_equal(st.retries, 2);
    tu_tracker_check_once(&c->t, 4, 6);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_async_retry_cancel_cancels_waiting_and_started_items(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "async_retry_cancel", 1, &svc);
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 1000, 1000));
    c->refuse_mask[1] = 0x7u; /* waits for a retry */
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    push(p, 2); /* started, held by the host */
    push(p, 3); /* fails by completion: waits for a retry */
    drive(rt);
    complete(p, c, 3, 1, 5, 3);
    drive(rt);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 2);
    assert_int_equal(st.in_flight, 1);
    TU_OK(fluxus_pipeline_cancel(p));
    drive(rt);
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));
    step(rt, 10 * MS);
    assert_int_equal(n_calls(c), 3);
    assert_int_equal(c->t.freed[1], 1);
    assert_int_equal(c->t.freed[3], 1);
    assert_int_equal(c->t.freed[2], 0); /* still the host's */
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_complete_async(p, find_pending(c, 2, 1)->completion, 0, 2));
    tu_item_free(&c->t, 2);
    stats_of(p, svc, &st);
    assert_int_equal(st.cancelled, 3);
    assert_int_equal(st.retry_waiting, 0);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 1, 4);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Retry options
 * =========================================================================================== */

static void test_retry_option_errors(void **s) {
    fluxus_runtime *rt = vruntime();
    fluxus_pipeline *p = tu_pipeline(rt, "retry_options", NULL);
    uint32_t map = 0;
    const uint64_t day_us = 86400ull * 1000000ull;
    (void)s;

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(&map, p, "map", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", null_sink, NULL, NULL));

    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_retry(p, map, 0, FLUXUS_BACKOFF_CONSTANT, 1, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_retry(p, map, 1001, FLUXUS_BACKOFF_CONSTANT, 1, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_retry(p, map, 3, -1, 1, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_retry(p, map, 3, 3, 1, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_retry(p, map, 3, FLUXUS_BACKOFF_EXPONENTIAL, 10, 9));
    TU_EXPECT(FLUXUS_ERANGE,
              fluxus_stage_set_retry(p, map, 3, FLUXUS_BACKOFF_CONSTANT, day_us + 1, day_us + 1));
    TU_EXPECT(FLUXUS_ERANGE,
              fluxus_stage_set_retry(p, map, 3, FLUXUS_BACKOFF_EXPONENTIAL, 1, day_us + 1));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_retry(p, 99, 3, FLUXUS_BACKOFF_CONSTANT, 1, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_retry(NULL, map, 3, FLUXUS_BACKOFF_CONSTANT, 1, 1));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_retry_predicate(p, 99, log_predicate, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_stage_set_retry_predicate(NULL, map, log_predicate, NULL, NULL));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_retry_seed(p, 99, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_retry_seed(NULL, map, 1));

    /* The limits themselves are accepted. */
    TU_OK(fluxus_stage_set_retry(p, map, 1000, FLUXUS_BACKOFF_EXPONENTIAL_JITTER, 0, day_us));
    TU_OK(fluxus_stage_set_retry(p, map, 1, FLUXUS_BACKOFF_CONSTANT, day_us, day_us));
    TU_OK(fluxus_stage_set_retry(p, map, 2, FLUXUS_BACKOFF_EXPONENTIAL, 5, 5));
    TU_OK(fluxus_stage_set_retry_seed(p, map, UINT64_MAX));

    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_retry(p, map, 3, FLUXUS_BACKOFF_CONSTANT, 1, 1));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_retry_predicate(p, map, log_predicate, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_retry_seed(p, map, 1));
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_free_all(p, rt);
}

static void test_retrying_stage_with_two_workers_must_not_be_ordered(void **s) {
    fluxus_runtime *rt = vruntime();
    int32_t modes[3] = {FLUXUS_ORDER_ORDERED, FLUXUS_ORDER_UNORDERED, FLUXUS_ORDER_PER_KEY};
    uint32_t m;
    (void)s;

    for (m = 0; m < 3; m++) {
        rctx *c = ctx_new(rt);
        uint32_t svc = 0;
        fluxus_pipeline *p = svc_pipeline(rt, c, "retry_workers", 0, &svc);
        TU_OK(fluxus_stage_set_retry(p, svc, 3, FLUXUS_BACKOFF_CONSTANT, 10, 10));
        TU_OK(fluxus_stage_set_workers(p, svc, 2));
        TU_OK(fluxus_stage_set_order(p, svc, modes[m]));
        if (modes[m] == FLUXUS_ORDER_ORDERED) {
            tu_msg msg;
            TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &msg);
            assert_non_null(strstr(msg.text, "svc"));
            assert_int_equal(state_of(p), FLUXUS_STATE_BUILDING);
        } else {
            uint64_t i;
            for (i = 0; i < 20; i++) {
                c->succeed_at[i] = 1 + (uint32_t)(i % 3);
            }
            TU_OK(fluxus_pipeline_start(p));
            for (i = 0; i < 20; i++) {
                push(p, i);
            }
            drive(rt);
            step(rt, 10 * US);
            step(rt, 10 * US);
            assert_int_equal(delivered(c), 20);
            close_and_finish(p, rt, c);
            tu_tracker_check_once(&c->t, 0, 20);
        }
        TU_OK(fluxus_pipeline_free(p));
        ctx_free(c);
    }
    TU_OK(fluxus_runtime_free(rt));
}

/* =============================================================================================
 * Circuit breaker, standalone
 * =========================================================================================== */

#define TR_MAX 64u

typedef struct tr_log {
    uint64_t n;
    int32_t from[TR_MAX];
    int32_t to[TR_MAX];
} tr_log;

static void log_transition(void *user, int32_t from, int32_t to) {
    tr_log *l = (tr_log *)user;
    uint64_t i = TU_LOAD(&l->n);
    if (i < TR_MAX) {
        l->from[i] = from;
        l->to[i] = to;
    }
    TU_STORE(&l->n, i + 1);
}

#define C_ FLUXUS_BREAKER_CLOSED
#define O_ FLUXUS_BREAKER_OPEN
#define H_ FLUXUS_BREAKER_HALF_OPEN

/* Asserts the transitions seen so far: pairs (from, to). */
static void expect_transitions(const tr_log *l, const int32_t *pairs, uint64_t n) {
    uint64_t i;
    if (TU_LOAD(&l->n) != n) {
        fail_msg("%llu state changes reported, expected %llu", (unsigned long long)l->n,
                 (unsigned long long)n);
    }
    for (i = 0; i < n; i++) {
        if (l->from[i] != pairs[2 * i] || l->to[i] != pairs[2 * i + 1]) {
            fail_msg("state change %llu: %d -> %d, expected %d -> %d", (unsigned long long)i,
                     (int)l->from[i], (int)l->to[i], (int)pairs[2 * i], (int)pairs[2 * i + 1]);
        }
    }
}

static fluxus_circuit_breaker *breaker(fluxus_runtime *rt, tr_log *l) {
    fluxus_circuit_breaker *cb = NULL;
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    assert_non_null(cb);
    if (l != NULL) {
        memset(l, 0, sizeof *l);
        TU_OK(fluxus_circuit_breaker_set_state_callback(cb, log_transition, l, NULL));
    }
    return cb;
}

static int32_t br_state(fluxus_circuit_breaker *cb) {
    int32_t st = -1;
    TU_OK(fluxus_circuit_breaker_get_state(&st, cb));
    return st;
}

static uint64_t br_allow(fluxus_circuit_breaker *cb) {
    uint64_t ticket = 0;
    TU_OK(fluxus_circuit_breaker_allow(&ticket, cb));
    return ticket;
}

static void br_refused(fluxus_circuit_breaker *cb) {
    uint64_t ticket = 0;
    TU_EXPECT(FLUXUS_ECIRCUITOPEN, fluxus_circuit_breaker_allow(&ticket, cb));
}

static void br_call(fluxus_circuit_breaker *cb, int32_t success) {
    TU_OK(fluxus_circuit_breaker_record(cb, br_allow(cb), success));
}

static void test_breaker_opens_after_exactly_n_consecutive_failures(void **s) {
    fluxus_runtime *rt = vruntime();
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    static const int32_t open[] = {C_, O_};
    (void)s;

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 3));
    assert_int_equal(br_state(cb), C_);
    br_call(cb, 0);
    br_call(cb, 0);
    br_call(cb, 1); /* a success resets the count */
    br_call(cb, 0);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), C_);
    assert_int_equal(l.n, 0);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), O_);
    expect_transitions(&l, open, 1);
    br_refused(cb);
    br_refused(cb);
    step(rt, 10 * MS); /* default reset timeout: 1 s */
    br_refused(cb);
    expect_transitions(&l, open, 1);
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_breaker_defaults(void **s) {
    fluxus_runtime *rt = vruntime();
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    static const int32_t seq[] = {C_, O_, O_, H_, H_, C_};
    uint32_t k;
    (void)s;

    for (k = 0; k < 4; k++) {
        br_call(cb, 0);
    }
    assert_int_equal(br_state(cb), C_);
    br_call(cb, 0); /* the 5th consecutive failure */
    assert_int_equal(br_state(cb), O_);
    step(rt, 1000 * MS - 1);
    br_refused(cb);
    step(rt, 1);
    {
        uint64_t trial = br_allow(cb); /* one trial call */
        assert_int_equal(br_state(cb), H_);
        br_refused(cb);
        TU_OK(fluxus_circuit_breaker_record(cb, trial, 1)); /* one success closes */
    }
    assert_int_equal(br_state(cb), C_);
    expect_transitions(&l, seq, 3);
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_breaker_failure_ratio_trips_on_the_exact_call(void **s) {
    fluxus_runtime *rt = vruntime();
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    static const int32_t open[] = {C_, O_};
    uint32_t k;
    (void)s;

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 0)); /* ratio only */
    TU_OK(fluxus_circuit_breaker_set_failure_ratio(cb, 0.5, 10, 4));
    /* Three failures are 100 % but below min_calls; the 4th call, a success, makes 3 of 4. */
    br_call(cb, 0);
    br_call(cb, 0);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), C_);
    br_call(cb, 1);
    assert_int_equal(br_state(cb), O_);
    expect_transitions(&l, open, 1);
    TU_OK(fluxus_circuit_breaker_free(cb));

    /* S S S F F: 2 of 5 (40 %); then F: 3 of 6 (50 %) trips. */
    cb = breaker(rt, &l);
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 0));
    TU_OK(fluxus_circuit_breaker_set_failure_ratio(cb, 0.5, 10, 4));
    br_call(cb, 1);
    br_call(cb, 1);
    br_call(cb, 1);
    br_call(cb, 0);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), C_);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), O_);
    TU_OK(fluxus_circuit_breaker_free(cb));

    /* The window slides: after 10 successes, 4 failures leave 6 S + 4 F (40 %), the 5th makes
     * 5 S + 5 F (50 %). Over all 15 calls it would be 33 %. */
    cb = breaker(rt, &l);
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 0));
    TU_OK(fluxus_circuit_breaker_set_failure_ratio(cb, 0.5, 10, 4));
    for (k = 0; k < 10; k++) {
        br_call(cb, 1);
    }
    for (k = 0; k < 4; k++) {
        br_call(cb, 0);
    }
    assert_int_equal(br_state(cb), C_);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), O_);
    expect_transitions(&l, open, 1);
    TU_OK(fluxus_circuit_breaker_free(cb));

    /* Both triggers on: the consecutive one fires first here. */
    cb = breaker(rt, &l);
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_failure_ratio(cb, 0.9, 10, 10));
    br_call(cb, 1);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), C_);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), O_);
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_breaker_reset_timeout_and_half_open_trials_are_exact(void **s) {
    fluxus_runtime *rt = vruntime();
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    static const int32_t seq[] = {C_, O_, O_, H_, H_, C_, C_, O_, O_, H_, H_, O_, O_, H_};
    uint64_t t1, t2, t3, opened;
    (void)s;

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_circuit_breaker_set_half_open(cb, 2, 2));
    step_to(rt, 50 * US);
    br_call(cb, 0);
    br_call(cb, 0); /* opens at T0+50us */
    assert_int_equal(br_state(cb), O_);
    step_to(rt, 1050 * US - 1);
    br_refused(cb); /* 1 ns before the reset timeout */
    assert_int_equal(br_state(cb), O_);
    step_to(rt, 1050 * US);
    t1 = br_allow(cb);
    assert_int_equal(br_state(cb), H_);
    t2 = br_allow(cb);
    br_refused(cb);                                  /* both trial slots in use */
    TU_OK(fluxus_circuit_breaker_record(cb, t1, 1)); /* 1 of 2 successes: still half-open */
    assert_int_equal(br_state(cb), H_);
    t3 = br_allow(cb); /* a slot is free again */
    br_refused(cb);
    TU_OK(fluxus_circuit_breaker_record(cb, t2, 1)); /* 2 of 2: closes */
    assert_int_equal(br_state(cb), C_);
    /* t3 was a half-open trial; its outcome no longer counts now that the breaker closed. */
    TU_OK(fluxus_circuit_breaker_record(cb, t3, 0));
    br_call(cb, 0); /* one failure of 2 */
    assert_int_equal(br_state(cb), C_);
    step_to(rt, 2000 * US);
    br_call(cb, 0); /* opens at T0+2000us */
    assert_int_equal(br_state(cb), O_);
    step_to(rt, 3000 * US);
    t1 = br_allow(cb);
    assert_int_equal(br_state(cb), H_);
    step_to(rt, 3500 * US);
    TU_OK(fluxus_circuit_breaker_record(cb, t1, 0)); /* a failed trial reopens at T0+3500us */
    assert_int_equal(br_state(cb), O_);
    opened = 3500 * US;
    step_to(rt, opened + 1000 * US - 1); /* the reset timer restarted at the reopening */
    br_refused(cb);
    step_to(rt, opened + 1000 * US);
    t1 = br_allow(cb);
    assert_int_equal(br_state(cb), H_);
    expect_transitions(&l, seq, 7);
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_breaker_stale_ticket_does_not_change_the_state(void **s) {
    fluxus_runtime *rt = vruntime();
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    static const int32_t seq[] = {C_, O_, O_, H_};
    uint64_t slow_ok, slow_fail, trial;
    (void)s;

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    slow_ok = br_allow(cb);   /* allowed while closed... */
    slow_fail = br_allow(cb); /* ...and finish later */
    br_call(cb, 0);
    br_call(cb, 0);
    assert_int_equal(br_state(cb), O_);
    TU_OK(fluxus_circuit_breaker_record(cb, slow_ok, 1)); /* no effect while open */
    assert_int_equal(br_state(cb), O_);
    step(rt, 1000 * US);
    assert_int_equal(br_state(cb), H_);
    /* Half-open needs 1 success to close and 1 failure to reopen: stale outcomes do neither. */
    TU_OK(fluxus_circuit_breaker_record(cb, slow_ok, 1));
    assert_int_equal(br_state(cb), H_);
    TU_OK(fluxus_circuit_breaker_record(cb, slow_fail, 0));
    assert_int_equal(br_state(cb), H_);
    expect_transitions(&l, seq, 2);
    trial = br_allow(cb); /* and they did not use up the trial slot */
    TU_OK(fluxus_circuit_breaker_record(cb, trial, 1));
    assert_int_equal(br_state(cb), C_);
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_breaker_state_callback_user_free_runs_once(void **s) {
    fluxus_runtime *rt = vruntime();
    tr_log l1, l2;
    fluxus_circuit_breaker *cb = NULL;
    fluxus_pipeline *p;
    uint64_t f0 = TU_LOAD(&tu_user_frees);
    uint32_t map = 0;
    (void)s;

    memset(&l1, 0, sizeof l1);
    memset(&l2, 0, sizeof l2);
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, log_transition, &l1, tu_user_free));
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, log_transition, &l2, tu_user_free));
    assert_int_equal(TU_LOAD(&tu_user_frees), f0 + 1); /* the replaced one */
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 1));
    br_call(cb, 0);
    assert_int_equal(l1.n, 0);
    assert_int_equal(l2.n, 1);
    TU_OK(fluxus_circuit_breaker_free(cb));
    assert_int_equal(TU_LOAD(&tu_user_frees), f0 + 2);

    /* A stage keeps its breaker (and the callback's user) alive until the pipeline is freed. */
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, log_transition, &l1, tu_user_free));
    p = tu_pipeline(rt, "breaker_retained", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(&map, p, "map", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", null_sink, NULL, NULL));
    TU_OK(fluxus_stage_set_circuit_breaker(p, map, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_get_state(&(int32_t){0}, cb));
    assert_int_equal(TU_LOAD(&tu_user_frees), f0 + 2);
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(TU_LOAD(&tu_user_frees), f0 + 2);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&tu_user_frees), f0 + 3);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&tu_user_frees), f0 + 3);
}

static void test_breaker_option_errors(void **s) {
    fluxus_runtime *rt = vruntime();
    fluxus_circuit_breaker *cb = NULL, *dead_cb = NULL;
    fluxus_runtime *gone = tu_runtime(0);
    fluxus_pipeline *p;
    uint64_t ticket = 0;
    int32_t st = 0;
    uint32_t map = 0;
    (void)s;

    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_new(NULL, rt));
    TU_OK(fluxus_runtime_free(gone));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_new(&cb, gone)); /* freed runtime */
    TU_OK(fluxus_circuit_breaker_new(&dead_cb, NULL));               /* real clock */
    TU_OK(fluxus_circuit_breaker_free(dead_cb));
    TU_OK(fluxus_circuit_breaker_free(NULL));

    /* NULL and freed handles */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_set_consecutive_failures(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_set_consecutive_failures(dead_cb, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_set_failure_ratio(NULL, 0.5, 10, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_set_reset_timeout_us(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_set_half_open(NULL, 1, 1));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_circuit_breaker_set_state_callback(NULL, log_transition, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_get_state(&st, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_get_state(&st, dead_cb));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_allow(&ticket, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_allow(&ticket, dead_cb));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_record(NULL, 1, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_free(dead_cb)); /* twice */

    cb = breaker(rt, NULL);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_get_state(NULL, cb));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_circuit_breaker_allow(NULL, cb));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_failure_ratio(cb, 1.5, 10, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_failure_ratio(cb, -0.1, 10, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_failure_ratio(cb, (double)NAN, 10, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_failure_ratio(cb, 0.5, 0, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_failure_ratio(cb, 0.5, 65537, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_failure_ratio(cb, 0.5, 10, 11));
    TU_OK(fluxus_circuit_breaker_set_failure_ratio(cb, 1.0, 65536, 65536));
    TU_OK(fluxus_circuit_breaker_set_failure_ratio(cb, 0.0, 0, 0)); /* off */
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_half_open(cb, 0, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_half_open(cb, 1, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_set_reset_timeout_us(cb, 86400000001ull));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 86400000000ull));
    ticket = br_allow(cb);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_record(cb, ticket, 2));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_circuit_breaker_record(cb, ticket, -1));
    TU_OK(fluxus_circuit_breaker_record(cb, ticket, 1));

    p = tu_pipeline(rt, "breaker_options", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(&map, p, "map", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", null_sink, NULL, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_circuit_breaker(p, map, cb, 7));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_circuit_breaker(p, map, cb, -1));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_circuit_breaker(p, 99, cb, FLUXUS_BREAKER_FAIL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_circuit_breaker(NULL, map, cb, FLUXUS_BREAKER_FAIL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_stage_set_circuit_breaker(p, map, dead_cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_stage_set_circuit_breaker(p, map, cb, FLUXUS_BREAKER_WAIT));
    TU_OK(fluxus_stage_set_circuit_breaker(p, map, NULL, FLUXUS_BREAKER_FAIL)); /* removes it */
    TU_OK(fluxus_stage_set_circuit_breaker(p, map, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_circuit_breaker(p, map, cb, FLUXUS_BREAKER_FAIL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_circuit_breaker(p, map, NULL, FLUXUS_BREAKER_FAIL));
    push(p, 1);
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_circuit_breaker_free(cb));
    TU_OK(fluxus_runtime_free(rt));
}

/* A breaker on another clock than the pipeline's runtime is refused at start. */
static void expect_breaker_refused_at_start(fluxus_runtime *rt, fluxus_circuit_breaker *cb,
                                            uint32_t workers, const char *what) {
    fluxus_pipeline *p = tu_pipeline(rt, "breaker_start", NULL);
    tu_range_source src = {0, 3, 0};
    uint32_t map = 0;
    int32_t rc;
    tu_msg m;

    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "guarded", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_circuit_breaker(p, map, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_stage_set_workers(p, map, workers));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", null_sink, NULL, NULL));
    rc = fluxus_pipeline_start(p);
    tu_msg_take(&m);
    if (rc != FLUXUS_EINVAL) {
        fail_msg("%s: fluxus_pipeline_start returned %s, expected FLUXUS_EINVAL", what,
                 fluxus_err_name(rc));
    }
    assert_non_null(strstr(m.text, "guarded"));
    assert_int_equal(state_of(p), FLUXUS_STATE_BUILDING);
    assert_int_equal(TU_LOAD(&src.calls), 0);
    TU_OK(fluxus_pipeline_free(p));
}

static void test_breaker_on_another_clock_or_ordered_workers_is_refused_at_start(void **s) {
    fluxus_runtime *virt = vruntime();
    fluxus_runtime *virt2 = vruntime();
    fluxus_runtime *real = tu_runtime(0);
    fluxus_circuit_breaker *cb_virt2 = breaker(virt2, NULL);
    fluxus_circuit_breaker *cb_real = breaker(NULL, NULL);
    fluxus_circuit_breaker *cb_virt = breaker(virt, NULL);
    (void)s;

    expect_breaker_refused_at_start(virt, cb_virt2, 1, "a breaker on another virtual clock");
    expect_breaker_refused_at_start(virt, cb_real, 1, "a real-clock breaker on a virtual clock");
    expect_breaker_refused_at_start(real, cb_virt, 1, "a virtual-clock breaker on a real clock");
    expect_breaker_refused_at_start(virt, cb_virt, 2, "a breaker on 2 ordered workers");
    TU_OK(fluxus_circuit_breaker_free(cb_virt2));
    TU_OK(fluxus_circuit_breaker_free(cb_real));
    TU_OK(fluxus_circuit_breaker_free(cb_virt));
    TU_OK(fluxus_runtime_free(virt));
    TU_OK(fluxus_runtime_free(virt2));
    TU_OK(fluxus_runtime_free(real));
}

/* =============================================================================================
 * Circuit breaker on stages
 * =========================================================================================== */

static void test_breaker_fail_mode_fails_refused_items_without_calling_the_stage(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "breaker_fail", 0, &svc);
    fluxus_stage_stats st;
    static const int32_t seq[] = {C_, O_, O_, H_, H_, C_};
    (void)s;

    all_succeed(c);

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_start(p));
    TU_STORE(&c->down, 1);
    push(p, 1);
    push(p, 2);
    drive(rt);
    assert_int_equal(br_state(cb), O_);
    push(p, 3);
    push(p, 4);
    drive(rt);
    assert_int_equal(c->calls[3] + c->calls[4], 0);
    TU_STORE(&c->down, 0);
    step_to(rt, 1000 * US - 1);
    push(p, 5);
    drive(rt);
    assert_int_equal(c->calls[5], 0);
    step_to(rt, 1000 * US);
    push(p, 6); /* the trial: succeeds and closes */
    push(p, 7);
    drive(rt);
    assert_int_equal(delivered(c), 2);
    expect_delivery(c, 0, 6, 1000 * US);
    expect_delivery(c, 1, 7, 1000 * US);
    assert_int_equal(dead(c), 5);
    expect_dead_letter(c, 0, 1, DOWN_STATUS, 1, svc, 0);
    expect_dead_letter(c, 1, 2, DOWN_STATUS, 1, svc, 0);
    expect_dead_letter(c, 2, 3, FLUXUS_ECIRCUITOPEN, 1, svc, 0);
    expect_dead_letter(c, 3, 4, FLUXUS_ECIRCUITOPEN, 1, svc, 0);
    expect_dead_letter(c, 4, 5, FLUXUS_ECIRCUITOPEN, 1, svc, 1000 * US - 1);
    expect_transitions(&l, seq, 3);
    assert_int_equal(n_calls(c), 4);
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.dead_lettered, 5);
    assert_int_equal(st.out, 2);
    tu_tracker_check_once(&c->t, 1, 8);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_breaker_fail_mode_with_skip_policy(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_circuit_breaker *cb = breaker(rt, NULL);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "breaker_skip", 0, &svc);
    fluxus_pipeline_stats ps;
    uint64_t k;
    (void)s;

    all_succeed(c);

    TU_OK(fluxus_stage_set_error_policy(p, svc, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 1));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_start(p));
    TU_STORE(&c->down, 1);
    for (k = 0; k < 10; k++) {
        push(p, k);
    }
    drive(rt);
    assert_int_equal(n_calls(c), 1); /* the first failure opened it; 9 refused */
    close_and_finish(p, rt, c);
    tu_stats(p, &ps);
    assert_int_equal(ps.failed, 10);
    assert_int_equal(dead(c), 0);
    tu_tracker_check_once(&c->t, 0, 10);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_breaker_wait_mode_holds_items_until_it_closes_in_order(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "breaker_wait", 0, &svc);
    fluxus_pipeline_stats ps;
    static const int32_t seq[] = {C_, O_, O_, H_, H_, O_, O_, H_, H_, C_};
    uint64_t k;
    (void)s;

    all_succeed(c);

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_WAIT));
    TU_OK(fluxus_pipeline_start(p));
    TU_STORE(&c->down, 1);
    push(p, 1);
    push(p, 2);
    drive(rt);
    assert_int_equal(dead(c), 2);
    assert_int_equal(br_state(cb), O_);
    for (k = 3; k <= 9; k++) {
        push(p, k);
    }
    drive(rt);
    assert_int_equal(n_calls(c), 2);
    tu_stats(p, &ps);
    assert_int_equal(ps.in_flight, 7);
    step_to(rt, 1000 * US - 1);
    assert_int_equal(n_calls(c), 2);
    step_to(rt, 1000 * US); /* half-open: item 3 is the trial, still down: reopens */
    assert_int_equal(n_calls(c), 3);
    assert_int_equal(c->calls[3], 1);
    assert_int_equal(dead(c), 3);
    expect_dead_letter(c, 2, 3, DOWN_STATUS, 1, svc, 1000 * US);
    assert_int_equal(br_state(cb), O_);
    TU_STORE(&c->down, 0);
    step_to(rt, 2000 * US - 1);
    assert_int_equal(n_calls(c), 3);
    assert_int_equal(delivered(c), 0);
    step_to(rt, 2000 * US); /* item 4 succeeds as the trial, closes; 5..9 follow */
    assert_int_equal(delivered(c), 6);
    for (k = 0; k < 6; k++) {
        expect_delivery(c, k, 4 + k, 2000 * US);
    }
    for (k = 0; k < dead(c); k++) {
        assert_int_equal(c->dl_status[k], DOWN_STATUS); /* none failed because of the breaker */
    }
    expect_transitions(&l, seq, 5);
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 1, 10);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_breaker_wait_mode_cancel_cancels_the_waiting_items(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_circuit_breaker *cb = breaker(rt, NULL);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "breaker_wait_cancel", 0, &svc);
    fluxus_stage_stats st;
    uint64_t k;
    (void)s;

    all_succeed(c);

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 1));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_WAIT));
    TU_OK(fluxus_pipeline_start(p));
    TU_STORE(&c->down, 1);
    for (k = 0; k < 6; k++) {
        push(p, k);
    }
    drive(rt);
    assert_int_equal(n_calls(c), 1);
    assert_int_equal(dead(c), 1);
    step_to(rt, 500 * US);
    TU_OK(fluxus_pipeline_cancel(p));
    drive(rt);
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));
    TU_STORE(&c->down, 0);
    step(rt, 10 * MS);
    assert_int_equal(n_calls(c), 1);
    stats_of(p, svc, &st);
    assert_int_equal(st.cancelled, 5);
    for (k = 0; k < 6; k++) {
        assert_int_equal(c->t.freed[k], 1);
    }
    tu_check_conservation(p, &c->t, 0);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_breaker_on_async_stage_counts_error_completions_and_timeouts(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "breaker_async", 1, &svc);
    static const int32_t seq[] = {C_, O_, O_, H_, H_, C_};
    (void)s;

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_timeout_us(p, svc, 500));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    drive(rt);
    complete(p, c, 1, 1, 9, 1); /* an error completion: failure 1 */
    drive(rt);
    assert_int_equal(br_state(cb), C_);
    push(p, 2);
    drive(rt);
    step_to(rt, 500 * US); /* item 2 times out: failure 2, opens at T0+500us */
    assert_int_equal(br_state(cb), O_);
    push(p, 3);
    drive(rt);
    assert_int_equal(c->calls[3], 0);
    step_to(rt, 1500 * US - 1);
    push(p, 4);
    drive(rt);
    assert_int_equal(c->calls[4], 0);
    step_to(rt, 1500 * US);
    push(p, 5); /* the trial */
    push(p, 6); /* refused: the one trial slot is taken */
    drive(rt);
    assert_int_equal(c->calls[5], 1);
    assert_int_equal(c->calls[6], 0);
    assert_int_equal(br_state(cb), H_);
    complete(p, c, 5, 1, 0, 5);
    drive(rt);
    assert_int_equal(br_state(cb), C_);
    push(p, 7);
    drive(rt);
    complete(p, c, 7, 1, 0, 7);
    drive(rt);
    assert_int_equal(delivered(c), 2);
    assert_int_equal(dead(c), 5);
    expect_dead_letter(c, 0, 1, 9, 1, svc, 0);
    expect_dead_letter(c, 1, 2, FLUXUS_ETIMEDOUT, 1, svc, 500 * US);
    expect_dead_letter(c, 2, 3, FLUXUS_ECIRCUITOPEN, 1, svc, 500 * US);
    expect_dead_letter(c, 3, 4, FLUXUS_ECIRCUITOPEN, 1, svc, 1500 * US - 1);
    expect_dead_letter(c, 4, 6, FLUXUS_ECIRCUITOPEN, 1, svc, 1500 * US);
    expect_transitions(&l, seq, 3);
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_complete_async(p, find_pending(c, 2, 1)->completion, 0, 2));
    tu_item_free(&c->t, 2); /* the host releases its timed-out item */
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 1, 8);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_breaker_on_async_stage_refusal_counts_as_failure_wait_mode(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_circuit_breaker *cb = breaker(rt, NULL);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "breaker_async_wait", 1, &svc);
    uint64_t k;
    (void)s;

    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 1));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_WAIT));
    c->refuse_mask[1] = 1u;
    TU_OK(fluxus_pipeline_start(p));
    for (k = 1; k <= 4; k++) {
        push(p, k);
    }
    drive(rt); /* 1 refused by the callback: opens; 2..4 wait */
    assert_int_equal(n_calls(c), 1);
    assert_int_equal(br_state(cb), O_);
    expect_dead_letter(c, 0, 1, REFUSE_STATUS, 1, svc, 0);
    step_to(rt, 1000 * US - 1);
    assert_int_equal(n_calls(c), 1);
    step_to(rt, 1000 * US); /* 2 is the trial; 3 and 4 wait for its outcome */
    assert_int_equal(n_calls(c), 2);
    assert_int_equal(c->calls[2], 1);
    complete(p, c, 2, 1, 0, 2);
    drive(rt); /* closed: 3 and 4 start */
    assert_int_equal(n_calls(c), 4);
    complete(p, c, 3, 1, 0, 3);
    complete(p, c, 4, 1, 0, 4);
    drive(rt);
    assert_int_equal(delivered(c), 3);
    assert_int_equal(dead(c), 1);
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 1, 5);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Retry and circuit breaker on one stage
 * =========================================================================================== */

static void test_retry_and_breaker_fail_mode_refusals_are_not_retried(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_breaker_fail", 0, &svc);
    fluxus_stage_stats st;
    (void)s;

    all_succeed(c);

    TU_OK(fluxus_stage_set_retry(p, svc, 5, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 3));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_start(p));
    TU_STORE(&c->down, 1);
    push(p, 1);
    drive(rt);
    step_to(rt, 100 * US);
    step_to(rt, 200 * US); /* call 3 fails: the breaker opens at T0+200us */
    assert_int_equal(c->calls[1], 3);
    assert_int_equal(br_state(cb), O_);
    expect_call_at(c, 1, 2, 100 * US);
    expect_call_at(c, 1, 3, 200 * US);
    step_to(rt, 300 * US); /* the 4th attempt is refused: it fails now, no more retries */
    assert_int_equal(c->calls[1], 3);
    assert_int_equal(dead(c), 1);
    assert_int_equal(c->dl_items[0], 1);
    assert_int_equal(c->dl_status[0], FLUXUS_ECIRCUITOPEN);
    assert_int_equal(c->dl_times[0], T0 + 300 * US);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 3);
    assert_int_equal(st.retry_waiting, 0);

    push(p, 2); /* refused at once; a refusal is not a callback failure: not retried */
    drive(rt);
    assert_int_equal(dead(c), 2);
    assert_int_equal(c->dl_status[1], FLUXUS_ECIRCUITOPEN);
    step_to(rt, 1200 * US - 1);
    assert_int_equal(c->calls[2], 0);
    assert_int_equal(dead(c), 2);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 3);
    TU_STORE(&c->down, 0);
    step_to(rt, 1200 * US);
    push(p, 3);
    drive(rt);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 3, 1200 * US);
    assert_int_equal(br_state(cb), C_);
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 1, 4);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    /* Checked last, so that a failure here does not hide the checks above. */
    if (c->dl_attempts[0] != 3 && c->dl_attempts[0] != 4) {
        uint32_t got = c->dl_attempts[0];
        ctx_free(c);
        fail_msg(
            "item 1 was called 3 times and refused by the breaker on its 4th attempt, but "
            "tu_failure_attempts() reported %u (expected 3 calls, or 4 attempts)",
            got);
    }
    ctx_free(c);
}

static void test_retry_and_breaker_wait_mode_retried_item_waits_and_keeps_its_attempts(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_circuit_breaker *cb = breaker(rt, NULL);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_breaker_wait", 0, &svc);
    fluxus_stage_stats st;
    uint64_t k;
    (void)s;

    all_succeed(c);

    TU_OK(fluxus_stage_set_retry(p, svc, 4, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    TU_OK(fluxus_stage_set_retry_predicate(p, svc, log_predicate, c, NULL));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 3));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_WAIT));
    TU_OK(fluxus_pipeline_start(p));
    TU_STORE(&c->down, 1);
    push(p, 1);
    drive(rt);
    step_to(rt, 100 * US);
    step_to(rt, 200 * US); /* opens */
    step_to(rt, 300 * US); /* the retry waits for the breaker */
    assert_int_equal(c->calls[1], 3);
    assert_int_equal(dead(c), 0);
    step_to(rt, 1200 * US - 1);
    assert_int_equal(c->calls[1], 3);
    step_to(rt, 1200 * US); /* the trial is item 1's 4th attempt: fails, the last attempt */
    assert_int_equal(c->calls[1], 4);
    assert_int_equal(dead(c), 1);
    expect_dead_letter(c, 0, 1, DOWN_STATUS, 4, svc, 1200 * US);
    for (k = 0; k < TU_LOAD(&c->n_pred); k++) {
        assert_int_equal(c->pred_log[k].attempt, k + 1);
    }
    assert_true(TU_LOAD(&c->n_pred) >= 3);
    assert_int_equal(br_state(cb), O_);
    TU_STORE(&c->down, 0);
    push(p, 2);
    drive(rt);
    step_to(rt, 2200 * US - 1);
    assert_int_equal(delivered(c), 0);
    step_to(rt, 2200 * US);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 2, 2200 * US);
    for (k = 0; k < dead(c); k++) {
        assert_true(c->dl_status[k] != FLUXUS_ECIRCUITOPEN);
    }
    close_and_finish(p, rt, c);
    stats_of(p, svc, &st);
    assert_int_equal(st.retries, 3);
    tu_tracker_check_once(&c->t, 1, 3);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_retry_and_breaker_on_async_stage_refusal_reports_the_attempts(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *c = ctx_new(rt);
    fluxus_circuit_breaker *cb = breaker(rt, NULL);
    uint32_t svc = 0;
    fluxus_pipeline *p = svc_pipeline(rt, c, "retry_breaker_async", 1, &svc);
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_stage_set_retry(p, svc, 5, FLUXUS_BACKOFF_CONSTANT, 100, 100));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    drive(rt);
    complete(p, c, 1, 1, 9, 1); /* failure 1: retried */
    drive(rt);
    step_to(rt, 100 * US);
    assert_int_equal(c->calls[1], 2);
    complete(p, c, 1, 2, 9, 1); /* failure 2: opens the breaker, retried */
    drive(rt);
    assert_int_equal(br_state(cb), O_);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 1);
    step_to(rt, 200 * US); /* the 3rd attempt is refused by the breaker: fails, not retried */
    assert_int_equal(c->calls[1], 2);
    assert_int_equal(dead(c), 1);
    assert_int_equal(c->dl_status[0], FLUXUS_ECIRCUITOPEN);
    step(rt, 10 * MS);
    assert_int_equal(c->calls[1], 2);
    assert_int_equal(dead(c), 1);
    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, 1, 2);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    /* Checked last, so that a failure here does not hide the checks above. */
    if (c->dl_attempts[0] != 2 && c->dl_attempts[0] != 3) {
        uint32_t got = c->dl_attempts[0];
        ctx_free(c);
        fail_msg(
            "async item called twice, then refused by the breaker on its 3rd attempt: "
            "tu_failure_attempts() reported %u (expected 2 calls, or 3 attempts)",
            got);
    }
    ctx_free(c);
}

/* One breaker guarding stages of two pipelines: failures in one refuse calls in the other. */
static void test_breaker_shared_by_two_pipelines(void **s) {
    fluxus_runtime *rt = vruntime();
    rctx *a = ctx_new(rt);
    rctx *b = ctx_new(rt);
    tr_log l;
    fluxus_circuit_breaker *cb = breaker(rt, &l);
    uint32_t sa = 0, sb = 0;
    fluxus_pipeline *pa = svc_pipeline(rt, a, "shared_a", 0, &sa);
    fluxus_pipeline *pb = svc_pipeline(rt, b, "shared_b", 0, &sb);
    static const int32_t seq[] = {C_, O_, O_, H_, H_, C_};
    (void)s;

    all_succeed(a);
    all_succeed(b);
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1000));
    TU_OK(fluxus_stage_set_circuit_breaker(pa, sa, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_stage_set_circuit_breaker(pb, sb, cb, FLUXUS_BREAKER_WAIT));
    TU_OK(fluxus_circuit_breaker_free(cb)); /* the stages keep it */
    TU_OK(fluxus_pipeline_start(pa));
    TU_OK(fluxus_pipeline_start(pb));
    TU_STORE(&a->down, 1);
    push(pa, 1);
    push(pa, 2);
    drive(rt); /* opens */
    push(pb, 10);
    push(pb, 11);
    drive(rt);
    assert_int_equal(n_calls(b), 0); /* b waits */
    push(pa, 3);
    drive(rt);
    assert_int_equal(dead(a), 3);
    assert_int_equal(a->dl_status[2], FLUXUS_ECIRCUITOPEN);
    step_to(rt, 1000 * US - 1);
    assert_int_equal(n_calls(b), 0);
    step_to(rt, 1000 * US); /* b's item 10 is the trial: closes; 11 follows */
    assert_int_equal(delivered(b), 2);
    expect_delivery(b, 0, 10, 1000 * US);
    expect_delivery(b, 1, 11, 1000 * US);
    expect_transitions(&l, seq, 3);
    TU_STORE(&a->down, 0);
    push(pa, 4);
    drive(rt);
    assert_int_equal(delivered(a), 1);
    close_and_finish(pa, rt, a);
    close_and_finish(pb, rt, b);
    tu_tracker_check_once(&a->t, 1, 5);
    tu_tracker_check_once(&b->t, 10, 12);
    TU_OK(fluxus_pipeline_free(pa));
    TU_OK(fluxus_pipeline_free(pb));
    TU_OK(fluxus_runtime_free(rt));
    ctx_free(a);
    ctx_free(b);
}

/* =============================================================================================
 * Threaded runs
 * =========================================================================================== */

/* Deterministic pseudo-random outcome of call `attempt` for `item`: fails ~40 %. */
static int call_fails(uint64_t item, uint32_t attempt) {
    return tu_mix64(item * 1315423911u + attempt) % 10 < 4;
}

typedef struct mt_ctx {
    tu_tracker t;
    uint32_t calls[N_ITEMS];
    uint64_t dl_calls;
    uint64_t dl_bad; /* dead letters with an unexpected status or attempt count */
    uint64_t dl_open;
} mt_ctx;

static int32_t mt_map(void *user, uint64_t in, uint64_t *out) {
    mt_ctx *c = (mt_ctx *)user;
    uint32_t n = TU_ADD(&c->calls[in % N_ITEMS], 1);
    if (call_fails(in, n)) {
        return fail_status(n);
    }
    *out = in;
    return 0;
}

static void mt_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    mt_ctx *c = (mt_ctx *)user;
    int32_t st = tu_failure_status(f);
    uint32_t att = tu_failure_attempts(f);
    (void)item;
    TU_ADD(&c->dl_calls, 1);
    if (st == FLUXUS_ECIRCUITOPEN) {
        TU_ADD(&c->dl_open, 1);
    } else if (st < 101 || st > 104 || att < 1 || att > 4 || st != fail_status(att)) {
        TU_ADD(&c->dl_bad, 1);
    }
}

static int32_t mt_sink(void *user, uint64_t item) {
    tu_tracker_deliver(&((mt_ctx *)user)->t, item);
    return 0;
}

#define MT_N 1500u

static void test_threaded_retry_and_breaker_keep_the_accounting(void **s) {
    fluxus_runtime *rt = tu_runtime(3);
    mt_ctx *c = (mt_ctx *)calloc(1, sizeof *c);
    fluxus_circuit_breaker *cb = NULL;
    tu_range_source src = {0, MT_N, 0};
    fluxus_pipeline *p;
    uint32_t svc = 0, i;
    fluxus_stage_stats st;
    fluxus_pipeline_stats ps;
    uint64_t calls = 0;
    (void)s;

    assert_non_null(c);
    tu_tracker_init(&c->t, MT_N);
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 6));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 300));
    TU_OK(fluxus_circuit_breaker_set_half_open(cb, 2, 2));
    p = tu_pipeline(rt, "threaded_resilience", &c->t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_dead_letter(p, mt_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_map(&svc, p, "svc", mt_map, c, NULL));
    TU_OK(fluxus_stage_set_workers(p, svc, 3));
    TU_OK(fluxus_stage_set_order(p, svc, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_error_policy(p, svc, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_stage_set_retry(p, svc, 4, FLUXUS_BACKOFF_EXPONENTIAL_JITTER, 50, 400));
    TU_OK(fluxus_stage_set_retry_seed(p, svc, 7));
    TU_OK(fluxus_stage_set_circuit_breaker(p, svc, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", mt_sink, c, NULL));
    tu_run_expect(p, FLUXUS_OK);

    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 0, MT_N);
    tu_stats(p, &ps);
    assert_int_equal(ps.admitted, MT_N);
    assert_int_equal(ps.dead_lettered, TU_LOAD(&c->dl_calls));
    assert_int_equal(TU_LOAD(&c->dl_bad), 0);
    stats_of(p, svc, &st);
    assert_int_equal(st.retry_waiting, 0);
    for (i = 0; i < MT_N; i++) {
        uint32_t n = TU_LOAD(&c->calls[i]);
        assert_true(n <= 4);
        calls += n;
        /* Delivered items succeeded on their last call. */
        if (c->t.delivered[i]) {
            assert_true(n >= 1 && !call_fails(i, n));
        }
    }
    /* Every call but the first of an item followed a scheduled retry, and every scheduled
     * retry followed a failed call (a retry refused by the breaker makes no call). */
    assert_true(st.retries + MT_N >= calls);
    assert_true(st.retries <= calls);
    assert_true(ps.delivered > 0);
    if (getenv("RES_DEBUG")) {
        fprintf(stderr, "delivered %llu dead %llu (refused %llu) retries %llu calls %llu\n",
                (unsigned long long)ps.delivered, (unsigned long long)ps.dead_lettered,
                (unsigned long long)c->dl_open, (unsigned long long)st.retries,
                (unsigned long long)calls);
    }
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_free_all(p, rt);
    tu_tracker_destroy(&c->t);
    free(c);
}

/* Several threads allow and record on one breaker that changes state constantly (reset
 * timeout 0): the state callback must see a gap-free chain of changes, each starting where the
 * previous one ended, and never two at once. */
#define HAMMER_THREADS 4
#define HAMMER_OPS 20000
#define HAMMER_LOG (1u << 20)

typedef struct hammer {
    fluxus_circuit_breaker *cb;
    int32_t *from;
    int32_t *to;
    uint64_t n;
    int32_t inside;
    uint64_t overlaps;
    uint64_t errors;
    uint32_t seed;
} hammer;

static void hammer_transition(void *user, int32_t from, int32_t to) {
    hammer *h = (hammer *)user;
    uint64_t i;
    if (TU_ADD(&h->inside, 1) != 1) {
        TU_ADD(&h->overlaps, 1);
    }
    i = TU_ADD(&h->n, 1) - 1;
    if (i < HAMMER_LOG) {
        h->from[i] = from;
        h->to[i] = to;
    }
    tu_spin(300); /* a callback that takes a moment: later changes queue up behind it */
    __atomic_sub_fetch(&h->inside, 1, __ATOMIC_SEQ_CST);
}

typedef struct hammer_arg {
    hammer *h;
    uint64_t seed;
} hammer_arg;

static void *hammer_main(void *arg) {
    hammer_arg *a = (hammer_arg *)arg;
    uint64_t state = a->seed;
    int i;
    for (i = 0; i < HAMMER_OPS; i++) {
        uint64_t ticket = 0;
        int32_t rc = fluxus_circuit_breaker_allow(&ticket, a->h->cb);
        if (rc == FLUXUS_OK) {
            if (fluxus_circuit_breaker_record(a->h->cb, ticket, (tu_splitmix64(&state) % 3) != 0) !=
                FLUXUS_OK) {
                TU_ADD(&a->h->errors, 1);
            }
        } else if (rc != FLUXUS_ECIRCUITOPEN) {
            TU_ADD(&a->h->errors, 1);
        }
    }
    return NULL;
}

static void test_breaker_state_callbacks_form_an_ordered_chain_under_concurrency(void **s) {
    hammer h;
    hammer_arg args[HAMMER_THREADS];
    pthread_t th[HAMMER_THREADS];
    uint64_t i, n, bad;
    int k;
    (void)s;

    memset(&h, 0, sizeof h);
    h.from = (int32_t *)calloc(HAMMER_LOG, sizeof(int32_t));
    h.to = (int32_t *)calloc(HAMMER_LOG, sizeof(int32_t));
    assert_non_null(h.from);
    assert_non_null(h.to);
    TU_OK(fluxus_circuit_breaker_new(&h.cb, NULL));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(h.cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(h.cb, 0));
    TU_OK(fluxus_circuit_breaker_set_half_open(h.cb, 2, 2));
    TU_OK(fluxus_circuit_breaker_set_state_callback(h.cb, hammer_transition, &h, NULL));
    for (k = 0; k < HAMMER_THREADS; k++) {
        args[k].h = &h;
        args[k].seed = 1000u + (uint64_t)k;
        assert_int_equal(pthread_create(&th[k], NULL, hammer_main, &args[k]), 0);
    }
    for (k = 0; k < HAMMER_THREADS; k++) {
        assert_int_equal(pthread_join(th[k], NULL), 0);
    }
    n = TU_LOAD(&h.n);
    TU_OK(fluxus_circuit_breaker_free(h.cb));
    assert_int_equal(h.errors, 0);
    assert_int_equal(h.overlaps, 0);
    assert_true(n > 10); /* the breaker really went round */
    assert_true(n <= HAMMER_LOG);
    bad = h.from[0] == C_ ? n : 0;
    for (i = 1; i < n && bad == n; i++) {
        if (h.from[i] != h.to[i - 1] || h.from[i] == h.to[i]) {
            bad = i;
        }
    }
    if (bad < n) {
        int32_t f = h.from[bad], t = h.to[bad], prev = bad ? h.to[bad - 1] : C_;
        free(h.from);
        free(h.to);
        fail_msg(
            "state change %llu reported %d -> %d, but the previous one ended in %d "
            "(changes reported out of order; %llu changes in all)",
            (unsigned long long)bad, (int)f, (int)t, (int)prev, (unsigned long long)n);
    }
    free(h.from);
    free(h.to);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_constant_backoff_retries_at_exact_times),
        cmocka_unit_test(test_retry_exponential_backoff_doubles_up_to_the_maximum),
        cmocka_unit_test(test_retry_with_zero_backoff_retries_at_once),
        cmocka_unit_test(test_retry_jitter_follows_the_documented_draws_and_the_seed),
        cmocka_unit_test(test_retry_item_succeeding_on_attempt_k_is_delivered_once),
        cmocka_unit_test(test_retry_with_skip_policy_counts_a_failure_once),
        cmocka_unit_test(test_retry_predicate_decides_and_sees_the_attempt_numbers),
        cmocka_unit_test(test_retry_waiting_item_does_not_hold_up_later_items),
        cmocka_unit_test(test_retry_long_backoff_blocks_no_worker_thread),
        cmocka_unit_test(test_retry_cancel_cancels_the_waiting_items),
        cmocka_unit_test(test_drain_waits_for_retries_to_finish),
        cmocka_unit_test(test_drain_deadline_cancels_items_waiting_for_a_retry),
        cmocka_unit_test(test_async_retry_on_error_completion_and_refusal_but_not_timeout),
        cmocka_unit_test(test_retry_applies_to_its_own_stage_only),
        cmocka_unit_test(test_retry_on_a_batch_map_retries_the_failed_items_only),
        cmocka_unit_test(test_retry_on_a_sink),
        cmocka_unit_test(test_async_retry_cancel_cancels_waiting_and_started_items),
        cmocka_unit_test(test_retry_option_errors),
        cmocka_unit_test(test_retrying_stage_with_two_workers_must_not_be_ordered),
        cmocka_unit_test(test_breaker_opens_after_exactly_n_consecutive_failures),
        cmocka_unit_test(test_breaker_defaults),
        cmocka_unit_test(test_breaker_failure_ratio_trips_on_the_exact_call),
        cmocka_unit_test(test_breaker_reset_timeout_and_half_open_trials_are_exact),
        cmocka_unit_test(test_breaker_stale_ticket_does_not_change_the_state),
        cmocka_unit_test(test_breaker_state_callback_user_free_runs_once),
        cmocka_unit_test(test_breaker_option_errors),
        cmocka_unit_test(test_breaker_on_another_clock_or_ordered_workers_is_refused_at_start),
        cmocka_unit_test(test_breaker_fail_mode_fails_refused_items_without_calling_the_stage),
        cmocka_unit_test(test_breaker_fail_mode_with_skip_policy),
        cmocka_unit_test(test_breaker_wait_mode_holds_items_until_it_closes_in_order),
        cmocka_unit_test(test_breaker_wait_mode_cancel_cancels_the_waiting_items),
        cmocka_unit_test(test_breaker_on_async_stage_counts_error_completions_and_timeouts),
        cmocka_unit_test(test_breaker_on_async_stage_refusal_counts_as_failure_wait_mode),
        cmocka_unit_test(test_retry_and_breaker_fail_mode_refusals_are_not_retried),
        cmocka_unit_test(
            test_retry_and_breaker_wait_mode_retried_item_waits_and_keeps_its_attempts),
        cmocka_unit_test(test_retry_and_breaker_on_async_stage_refusal_reports_the_attempts),
        cmocka_unit_test(test_breaker_shared_by_two_pipelines),
        cmocka_unit_test(test_threaded_retry_and_breaker_keep_the_accounting),
        cmocka_unit_test(test_breaker_state_callbacks_form_an_ordered_chain_under_concurrency),
    };
    return TU_RUN_GROUP(tests);
}
