/*
 * The runtime clock and host timers: fluxus_runtime_set_virtual_clock / advance_clock / now_ns,
 * fluxus_runtime_call_after / cancel_timer. On the virtual clock every deadline is asserted
 * exactly; on the real clock only that no timer fires early, with a generous bound on lateness
 * (the overshoot percentiles are printed, not asserted).
 */
#include "test_util.h"

/* ----- a log of timer firings ----- */

#define LOG_CAP 256u

typedef struct fire_log {
    fluxus_runtime *rt;
    uint32_t n;               /* firings recorded */
    uint32_t tag[LOG_CAP];    /* which timer fired, in firing order */
    uint64_t now[LOG_CAP];    /* fluxus_runtime_now_ns() seen inside the callback */
    uint64_t frees_seen[LOG_CAP]; /* tu_user_frees seen inside the callback */
    uint64_t overflow;        /* firings past LOG_CAP */
    uint64_t now_errors;      /* fluxus_runtime_now_ns() failed inside a callback */
    pthread_t expected_thread;
    int check_thread;
    uint64_t wrong_thread;
} fire_log;

/* One timer: its log and its tag. */
typedef struct timer_arg {
    fire_log *log;
    uint32_t tag;
    uint64_t chain_delay;  /* chain_fn: delay of the timer it schedules */
    int32_t chain_rc;
    uint64_t chain_id;
} timer_arg;

static void log_fire(fire_log *l, uint32_t tag) {
    uint64_t now = 0;
    uint32_t i;
    if (fluxus_runtime_now_ns(l->rt, &now) != FLUXUS_OK) {
        TU_ADD(&l->now_errors, 1);
    }
    if (l->check_thread && !pthread_equal(pthread_self(), l->expected_thread)) {
        TU_ADD(&l->wrong_thread, 1);
    }
    i = TU_ADD(&l->n, 1) - 1;
    if (i >= LOG_CAP) {
        TU_ADD(&l->overflow, 1);
        return;
    }
    l->tag[i] = tag;
    TU_STORE(&l->now[i], now);
    TU_STORE(&l->frees_seen[i], TU_LOAD(&tu_user_frees));
}

static void record_fn(void *user) {
    timer_arg *a = (timer_arg *)user;
    log_fire(a->log, a->tag);
}

/* Records itself, then schedules record_fn chain_delay ns later for the next element of the
 * array `a` points into. */
static void chain_fn(void *user) {
    timer_arg *a = (timer_arg *)user;
    log_fire(a->log, a->tag);
    a->chain_rc = fluxus_runtime_call_after(&a->chain_id, a->log->rt, a->chain_delay, record_fn,
                                            a + 1, tu_user_free);
}

static fluxus_runtime *virtual_runtime(uint32_t workers, uint64_t start_ns) {
    fluxus_runtime *rt = tu_runtime(workers);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, start_ns));
    return rt;
}

static uint64_t now_of(fluxus_runtime *rt) {
    uint64_t now = 0;
    TU_OK(fluxus_runtime_now_ns(rt, &now));
    return now;
}

static void log_init(fire_log *l, fluxus_runtime *rt) {
    memset(l, 0, sizeof *l);
    l->rt = rt;
    l->expected_thread = pthread_self();
}

static int reset_counters(void **state) {
    (void)state;
    TU_STORE(&tu_user_frees, 0);
    return 0;
}

/* ----- virtual clock ----- */

static void test_virtual_timer_fires_at_its_deadline_and_not_one_ns_before(void **state) {
    /* Both a started host-driven runtime and one with a worker thread: timers fire on the thread
     * that advances the clock either way. */
    uint32_t workers;
    (void)state;
    for (workers = 0; workers <= 1; workers++) {
        fluxus_runtime *rt = virtual_runtime(workers, 1000);
        fire_log l;
        timer_arg a = {NULL, 7, 0, 0, 0};
        uint64_t id = 0;

        TU_STORE(&tu_user_frees, 0);
        log_init(&l, rt);
        l.check_thread = 1;
        a.log = &l;
        TU_OK(fluxus_runtime_start(rt));
        assert_int_equal(now_of(rt), 1000);
        TU_OK(fluxus_runtime_call_after(&id, rt, 500, record_fn, &a, tu_user_free));
        assert_true(id != 0);
        TU_OK(fluxus_runtime_advance_clock(rt, 499));
        assert_int_equal(now_of(rt), 1499);
        if (workers == 0) {
            TU_OK(fluxus_runtime_run_once(NULL, rt)); /* the clock has not reached it: nothing */
        }
        assert_int_equal(TU_LOAD(&l.n), 0);
        assert_int_equal(TU_LOAD(&tu_user_frees), 0);
        TU_OK(fluxus_runtime_advance_clock(rt, 1));
        assert_int_equal(TU_LOAD(&l.n), 1); /* fired during the advance, on this thread */
        assert_int_equal(l.tag[0], 7);
        assert_int_equal(l.now[0], 1500);
        assert_int_equal(l.now_errors, 0);
        assert_int_equal(l.wrong_thread, 0);
        /* user_free ran once, after the callback. */
        assert_int_equal(l.frees_seen[0], 0);
        assert_int_equal(TU_LOAD(&tu_user_frees), 1);
        TU_OK(fluxus_runtime_advance_clock(rt, 1000000));
        assert_int_equal(TU_LOAD(&l.n), 1); /* once only */
        assert_int_equal(TU_LOAD(&tu_user_frees), 1);
        TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(rt, id)); /* already ran */
        assert_int_equal(now_of(rt), 1001500);
        TU_OK(fluxus_runtime_free(rt));
        assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    }
}

static void test_virtual_clock_works_before_the_runtime_starts(void **state) {
    fluxus_runtime *rt = virtual_runtime(1, 0);
    fire_log l;
    timer_arg a = {NULL, 1, 0, 0, 0};
    (void)state;

    log_init(&l, rt);
    a.log = &l;
    TU_OK(fluxus_runtime_call_after(NULL, rt, 10, record_fn, &a, tu_user_free)); /* id NULL ok */
    TU_OK(fluxus_runtime_advance_clock(rt, 9));
    assert_int_equal(TU_LOAD(&l.n), 0);
    TU_OK(fluxus_runtime_advance_clock(rt, 1));
    assert_int_equal(TU_LOAD(&l.n), 1);
    assert_int_equal(l.now[0], 10);
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    TU_OK(fluxus_runtime_free(rt));
}

static void test_virtual_timers_fire_in_deadline_order_and_fifo_on_ties(void **state) {
    /* delays, in scheduling order; equal deadlines must fire in scheduling order */
    static const uint64_t delays[] = {30, 10, 20, 10, 50, 10, 40, 20, 0, 1000};
    static const uint32_t expect[] = {8, 1, 3, 5, 2, 7, 0, 6, 4};
    enum { N = sizeof delays / sizeof delays[0] };
    fluxus_runtime *rt = virtual_runtime(0, 5000);
    fire_log l;
    timer_arg a[N];
    uint32_t i;
    (void)state;

    log_init(&l, rt);
    TU_OK(fluxus_runtime_start(rt));
    for (i = 0; i < N; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].log = &l;
        a[i].tag = i;
        TU_OK(fluxus_runtime_call_after(NULL, rt, delays[i], record_fn, &a[i], tu_user_free));
    }
    /* Advancing by 0 fires what is due now (the 0-delay timer). */
    TU_OK(fluxus_runtime_advance_clock(rt, 0));
    assert_int_equal(TU_LOAD(&l.n), 1);
    assert_int_equal(l.tag[0], 8);
    TU_OK(fluxus_runtime_advance_clock(rt, 999)); /* the 1000 ns timer stays pending */
    assert_int_equal(TU_LOAD(&l.n), N - 1);
    for (i = 0; i < N - 1; i++) {
        if (l.tag[i] != expect[i]) {
            fail_msg("firing %u was timer %u, expected timer %u", i, l.tag[i], expect[i]);
        }
        assert_int_equal(l.now[i], 5000 + delays[expect[i]]); /* each sees its own deadline */
    }
    assert_int_equal(now_of(rt), 5999);
    assert_int_equal(TU_LOAD(&tu_user_frees), N - 1);
    TU_OK(fluxus_runtime_advance_clock(rt, 1));
    assert_int_equal(TU_LOAD(&l.n), N);
    assert_int_equal(l.tag[N - 1], 9);
    assert_int_equal(l.now[N - 1], 6000);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&tu_user_frees), N);
}

static void test_timer_scheduled_by_a_timer_within_the_span_fires_in_the_same_advance(void **s) {
    fluxus_runtime *rt = virtual_runtime(0, 100);
    fire_log l;
    timer_arg a[2];
    (void)s;

    log_init(&l, rt);
    memset(a, 0, sizeof a);
    /* a[0] fires at +10 and schedules a[1] (chain_fn uses the next array element) at +15. */
    a[0].log = &l, a[0].tag = 0, a[0].chain_delay = 5;
    a[1].log = &l, a[1].tag = 1;
    TU_OK(fluxus_runtime_call_after(NULL, rt, 10, chain_fn, &a[0], tu_user_free));
    TU_OK(fluxus_runtime_advance_clock(rt, 100));
    /* a[0] fired at 110 and scheduled a[1] (record_fn) at 115, which fired in the same advance. */
    assert_int_equal(a[0].chain_rc, FLUXUS_OK);
    assert_true(a[0].chain_id != 0);
    assert_int_equal(TU_LOAD(&l.n), 2);
    assert_int_equal(l.tag[0], 0);
    assert_int_equal(l.now[0], 110);
    assert_int_equal(l.tag[1], 1);
    assert_int_equal(l.now[1], 115);
    assert_int_equal(now_of(rt), 200);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&tu_user_frees), 2);
}

/* A chain of timers each scheduling the next: delays 0 (same instant), 7, and one beyond. */
typedef struct chain2 {
    fire_log *log;
    uint32_t step;
    int32_t rc[4];
} chain2;

static void chain2_fn(void *user) {
    chain2 *c = (chain2 *)user;
    static const uint64_t next_delay[] = {0, 7, 1000};
    uint32_t step = c->step;
    log_fire(c->log, step);
    c->step = step + 1;
    if (step < 3) {
        c->rc[step] = fluxus_runtime_call_after(NULL, c->log->rt, next_delay[step], chain2_fn, c,
                                                NULL);
    }
}

static void test_chained_timers_with_zero_delay_and_later_deadlines(void **state) {
    fluxus_runtime *rt = virtual_runtime(0, 0);
    fire_log l;
    chain2 c;
    (void)state;

    log_init(&l, rt);
    memset(&c, 0, sizeof c);
    c.log = &l;
    TU_OK(fluxus_runtime_call_after(NULL, rt, 50, chain2_fn, &c, NULL));
    TU_OK(fluxus_runtime_advance_clock(rt, 100));
    /* steps 0 (at 50), 1 (at 50, delay 0), 2 (at 57); step 3 is at 1057 */
    assert_int_equal(TU_LOAD(&l.n), 3);
    assert_int_equal(l.now[0], 50);
    assert_int_equal(l.now[1], 50);
    assert_int_equal(l.now[2], 57);
    assert_int_equal(c.rc[0], FLUXUS_OK);
    assert_int_equal(c.rc[1], FLUXUS_OK);
    assert_int_equal(c.rc[2], FLUXUS_OK);
    TU_OK(fluxus_runtime_advance_clock(rt, 956)); /* now 1056 */
    assert_int_equal(TU_LOAD(&l.n), 3);
    TU_OK(fluxus_runtime_advance_clock(rt, 1));
    assert_int_equal(TU_LOAD(&l.n), 4);
    assert_int_equal(l.now[3], 1057);
    TU_OK(fluxus_runtime_free(rt));
}

static void test_cancel_before_firing_frees_once_and_never_calls(void **state) {
    fluxus_runtime *rt = virtual_runtime(0, 0);
    fire_log l;
    timer_arg a[3];
    uint64_t id[3] = {0, 0, 0};
    uint32_t i;
    (void)state;

    log_init(&l, rt);
    TU_OK(fluxus_runtime_start(rt));
    for (i = 0; i < 3; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].log = &l;
        a[i].tag = i;
        TU_OK(fluxus_runtime_call_after(&id[i], rt, 100 + i, record_fn, &a[i], tu_user_free));
    }
    assert_true(id[0] != id[1] && id[1] != id[2] && id[0] != id[2]);
    TU_OK(fluxus_runtime_cancel_timer(rt, id[1]));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1); /* right away */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(rt, id[1]));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(rt, 0));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(rt, id[2] + 1000000));
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
    TU_OK(fluxus_runtime_advance_clock(rt, 1000));
    assert_int_equal(TU_LOAD(&l.n), 2);
    assert_int_equal(l.tag[0], 0);
    assert_int_equal(l.tag[1], 2);
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(rt, id[0])); /* already ran */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(rt, id[1]));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
}

/* A timer that cancels another one (and then itself) from inside its callback. */
typedef struct canceller {
    fluxus_runtime *rt;
    uint64_t victim;
    uint64_t self;
    int32_t victim_rc;
    int32_t self_rc;
    uint32_t calls;
} canceller;

static void cancel_fn(void *user) {
    canceller *c = (canceller *)user;
    c->calls++;
    c->victim_rc = fluxus_runtime_cancel_timer(c->rt, c->victim);
    c->self_rc = fluxus_runtime_cancel_timer(c->rt, c->self);
}

/* The canceller fires at +10; the victim is due at +10 + victim_extra (scheduled after the
 * canceller, so on a tie the canceller runs first) and must be cancelled before it runs. */
static void cancel_from_callback(uint64_t victim_extra) {
    fluxus_runtime *rt = virtual_runtime(0, 0);
    fire_log l;
    timer_arg victim = {NULL, 9, 0, 0, 0};
    canceller c;

    TU_STORE(&tu_user_frees, 0);
    log_init(&l, rt);
    victim.log = &l;
    memset(&c, 0, sizeof c);
    c.rt = rt;
    c.victim_rc = c.self_rc = 1;
    TU_OK(fluxus_runtime_call_after(&c.self, rt, 10, cancel_fn, &c, tu_user_free));
    TU_OK(fluxus_runtime_call_after(&c.victim, rt, 10 + victim_extra, record_fn, &victim,
                                    tu_user_free));
    TU_OK(fluxus_runtime_advance_clock(rt, 100));
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.self_rc, FLUXUS_ENOTFOUND); /* running: not pending any more */
    if (c.victim_rc != FLUXUS_OK || TU_LOAD(&l.n) != 0) {
        fail_msg("victim due %llu ns after the canceller: cancelling it from the canceller's "
                 "callback returned %s and the victim then ran %u time(s); expected FLUXUS_OK "
                 "and 0 (it had not started)",
                 (unsigned long long)victim_extra, fluxus_err_name(c.victim_rc), TU_LOAD(&l.n));
    }
    assert_int_equal(TU_LOAD(&tu_user_frees), 2);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&tu_user_frees), 2);
}

static void test_timer_cancels_a_later_timer_from_its_callback(void **state) {
    (void)state;
    cancel_from_callback(5);
}

static void test_timer_cancels_a_timer_due_at_the_same_instant(void **state) {
    (void)state;
    /* Both are due together; the victim has not started when the canceller runs, so it is still
     * pending and must not run ("no such pending timer: it has already run, is running, or was
     * cancelled" describes none of its states). */
    cancel_from_callback(0);
}

static void test_huge_delay_does_not_wrap_around(void **state) {
    fluxus_runtime *rt = virtual_runtime(0, 1000);
    fire_log l;
    timer_arg a = {NULL, 1, 0, 0, 0};
    (void)state;

    log_init(&l, rt);
    a.log = &l;
    TU_OK(fluxus_runtime_call_after(NULL, rt, UINT64_MAX, record_fn, &a, tu_user_free));
    TU_OK(fluxus_runtime_advance_clock(rt, 1000000000000ull));
    assert_int_equal(TU_LOAD(&l.n), 0);
    TU_OK(fluxus_runtime_free(rt)); /* pending: user_free, no call */
    assert_int_equal(TU_LOAD(&l.n), 0);
    assert_int_equal(TU_LOAD(&tu_user_frees), 1);
}

/* ----- pending timers when the runtime is freed ----- */

static void pending_at_free(uint32_t workers, int virtual_clock, int start, int with_pipeline) {
    fluxus_runtime *rt = tu_runtime(workers);
    fluxus_pipeline *p = NULL;
    fire_log l;
    timer_arg a[3];
    uint32_t i;

    TU_STORE(&tu_user_frees, 0);
    log_init(&l, rt);
    if (virtual_clock) {
        TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    }
    if (with_pipeline) {
        p = tu_pipeline(rt, "held", NULL);
    }
    if (start) {
        TU_OK(fluxus_runtime_start(rt));
    }
    for (i = 0; i < 3; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].log = &l;
        a[i].tag = i;
        /* an hour: never due during the test on either clock */
        TU_OK(fluxus_runtime_call_after(NULL, rt, 3600ull * 1000000000ull, record_fn, &a[i],
                                        tu_user_free));
    }
    TU_OK(fluxus_runtime_free(rt));
    if (TU_LOAD(&tu_user_frees) != 3) {
        fail_msg("workers %u, virtual %d, started %d, pipeline alive %d: %llu of 3 pending timers' "
                 "user_free ran at fluxus_runtime_free",
                 workers, virtual_clock, start, with_pipeline,
                 (unsigned long long)TU_LOAD(&tu_user_frees));
    }
    assert_int_equal(TU_LOAD(&l.n), 0);
    if (p != NULL) {
        TU_OK(fluxus_pipeline_free(p));
    }
    assert_int_equal(TU_LOAD(&tu_user_frees), 3);
    assert_int_equal(TU_LOAD(&l.n), 0);
}

static void test_pending_timers_at_runtime_free_get_user_free_not_fn(void **state) {
    (void)state;
    pending_at_free(1, 0, 1, 0); /* threaded, real clock */
    pending_at_free(0, 0, 1, 0); /* host-driven, real clock */
    pending_at_free(0, 1, 1, 0); /* host-driven, virtual clock */
    pending_at_free(1, 1, 1, 0); /* threaded, virtual clock */
    pending_at_free(1, 0, 0, 0); /* never started */
    pending_at_free(1, 0, 1, 1); /* started, a pipeline handle still alive */
}

static void test_pending_timers_of_a_never_started_runtime_with_a_live_pipeline(void **state) {
    (void)state;
    /* The runtime handle is freed while a (never started) pipeline still references it: the
     * timers' user_free must run at fluxus_runtime_free, not later. */
    pending_at_free(1, 0, 0, 1);
}

/* ----- option and argument errors ----- */

static void noop_fn(void *user) {
    (void)user;
}

static void test_clock_and_timer_argument_and_state_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_runtime *real = tu_runtime(1);
    uint64_t id = 12345, now = 0;
    (void)state;

    /* bad handles and arguments */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_virtual_clock(NULL, 1, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_advance_clock(NULL, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_now_ns(NULL, &now));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_now_ns(rt, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_call_after(&id, NULL, 10, noop_fn, NULL, NULL));
    assert_int_equal(id, 0); /* the id is cleared on failure */
    id = 12345;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_call_after(&id, rt, 10, NULL, NULL, NULL));
    assert_int_equal(id, 0);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_cancel_timer(NULL, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_virtual_clock(rt, 2, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_virtual_clock(rt, -1, 0));

    /* real clock: advancing is refused, before and after start; now_ns reads the monotonic
     * clock and moves */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_advance_clock(real, 1));
    TU_OK(fluxus_runtime_start(real));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_advance_clock(real, 1));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_advance_clock(real, 0));
    {
        uint64_t a = now_of(real), b;
        struct timespec ts;
        uint64_t mono;
        tu_sleep_us(2000);
        b = now_of(real);
        assert_true(b >= a + 2000000u);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        mono = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        /* CLOCK_MONOTONIC, read just after: the same clock (within a generous second) */
        assert_true(mono >= b && mono - b < 1000000000u);
    }
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_virtual_clock(real, 1, 0));

    /* virtual clock: switching it on and off before start is allowed; after start refused */
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 77));
    assert_int_equal(now_of(rt), 77);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 500));
    assert_int_equal(now_of(rt), 500);
    TU_OK(fluxus_runtime_advance_clock(rt, 5));
    assert_int_equal(now_of(rt), 505);
    TU_OK(fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_virtual_clock(rt, 1, 0));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_virtual_clock(rt, 0, 0));
    assert_int_equal(now_of(rt), 505);

    TU_OK(fluxus_runtime_free(rt));
    TU_OK(fluxus_runtime_free(real));
}

/* ----- real clock ----- */

#define REAL_N 200u

typedef struct real_timer {
    fluxus_runtime *rt;
    uint64_t earliest; /* now_ns read before call_after + delay: the deadline is not before it */
    uint64_t fired_at;
    uint32_t calls;
    pthread_t thread;
    uint64_t *fired_total;
} real_timer;

static void real_fn(void *user) {
    real_timer *t = (real_timer *)user;
    uint64_t now = 0;
    fluxus_runtime_now_ns(t->rt, &now);
    t->fired_at = now;
    t->thread = pthread_self();
    TU_ADD(&t->calls, 1);
    TU_ADD(t->fired_total, 1);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Schedules REAL_N timers with delays in 0.2..5 ms. */
static void schedule_real(fluxus_runtime *rt, real_timer *t, uint64_t *fired_total) {
    uint64_t seed = 42;
    uint32_t i;
    for (i = 0; i < REAL_N; i++) {
        uint64_t delay = 200000u + tu_splitmix64(&seed) % 4800001u; /* 0.2 .. 5 ms */
        memset(&t[i], 0, sizeof t[i]);
        t[i].rt = rt;
        t[i].fired_total = fired_total;
        t[i].earliest = now_of(rt) + delay;
        TU_OK(fluxus_runtime_call_after(NULL, rt, delay, real_fn, &t[i], tu_user_free));
    }
}

static void check_real(const char *what, real_timer *t, int on_this_thread) {
    uint64_t over[REAL_N];
    uint32_t i;
    for (i = 0; i < REAL_N; i++) {
        assert_int_equal(TU_LOAD(&t[i].calls), 1);
        if (t[i].fired_at < t[i].earliest) {
            fail_msg("%s: timer %u fired %llu ns early", what, i,
                     (unsigned long long)(t[i].earliest - t[i].fired_at));
        }
        if (on_this_thread != pthread_equal(t[i].thread, pthread_self())) {
            fail_msg("%s: timer %u ran on the %s thread", what, i,
                     on_this_thread ? "wrong" : "test's");
        }
        over[i] = t[i].fired_at - t[i].earliest;
    }
    qsort(over, REAL_N, sizeof over[0], cmp_u64);
    printf("[ timers ] %s: overshoot p50 %.1f us, p99 %.1f us, max %.1f us\n", what,
           (double)over[REAL_N / 2] / 1e3, (double)over[REAL_N * 99 / 100] / 1e3,
           (double)over[REAL_N - 1] / 1e3);
    /* Generous: no wall-clock luck needed, even under sanitizers on a loaded machine. */
    assert_true(over[REAL_N - 1] < 200000000u);
    assert_int_equal(TU_LOAD(&tu_user_frees), REAL_N);
}

static void test_real_clock_threaded_timers_all_fire_never_early(void **state) {
    static real_timer t[REAL_N];
    fluxus_runtime *rt = tu_runtime(1);
    uint64_t fired = 0, t0;
    (void)state;

    TU_OK(fluxus_runtime_start(rt));
    schedule_real(rt, t, &fired);
    t0 = tu_now_ms();
    while (TU_LOAD(&fired) < REAL_N) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of %u timers fired", (unsigned long long)TU_LOAD(&fired),
                     REAL_N);
        }
        tu_sleep_us(500);
    }
    /* user_free runs after the callback on the loop thread: give it the moment it needs */
    t0 = tu_now_ms();
    while (TU_LOAD(&tu_user_frees) < REAL_N && tu_now_ms() - t0 < TU_WAIT_MS) {
        tu_sleep_us(200);
    }
    check_real("threaded runtime", t, 0);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&tu_user_frees), REAL_N);
}

static void test_real_clock_timers_added_before_start_fire_after_start(void **state) {
    static real_timer t[REAL_N];
    fluxus_runtime *rt = tu_runtime(1);
    uint64_t fired = 0, t0;
    (void)state;

    schedule_real(rt, t, &fired);
    tu_sleep_us(6000); /* all are due already */
    assert_int_equal(TU_LOAD(&fired), 0); /* not started: nothing runs them */
    TU_OK(fluxus_runtime_start(rt));
    t0 = tu_now_ms();
    while (TU_LOAD(&tu_user_frees) < REAL_N) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of %u timers fired after start",
                     (unsigned long long)TU_LOAD(&fired), REAL_N);
        }
        tu_sleep_us(500);
    }
    assert_int_equal(TU_LOAD(&fired), REAL_N);
    TU_OK(fluxus_runtime_free(rt));
}

static int32_t count_sink(void *user, uint64_t item) {
    (void)item;
    TU_ADD((uint64_t *)user, 1);
    return 0;
}

static void test_host_driven_timers_fire_during_run_for(void **state) {
    static real_timer t[REAL_N];
    fluxus_runtime *rt = tu_runtime(0);
    fluxus_pipeline *p;
    uint64_t fired = 0, sunk = 0, t0;
    (void)state;

    /* run_for returns early while no pipeline runs, so keep one running (an open push source). */
    p = tu_pipeline(rt, "keepalive", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", count_sink, &sunk, NULL));
    TU_OK(fluxus_pipeline_start(p));
    schedule_real(rt, t, &fired);
    t0 = tu_now_ms();
    while (TU_LOAD(&fired) < REAL_N) {
        TU_OK(fluxus_runtime_run_for(rt, 20));
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of %u timers fired", (unsigned long long)fired, REAL_N);
        }
    }
    check_real("host-driven run_for", t, 1);
    TU_OK(fluxus_pipeline_push(p, 1, 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(sunk, 1);
    tu_free_all(p, rt);
}

static void test_host_driven_timers_fire_during_run_once_without_pipelines(void **state) {
    static real_timer t[REAL_N];
    fluxus_runtime *rt = tu_runtime(0);
    uint64_t fired = 0, t0;
    (void)state;

    TU_OK(fluxus_runtime_start(rt));
    schedule_real(rt, t, &fired);
    t0 = tu_now_ms();
    while (TU_LOAD(&fired) < REAL_N) {
        TU_OK(fluxus_runtime_run_once(NULL, rt));
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of %u timers fired", (unsigned long long)fired, REAL_N);
        }
        tu_sleep_us(50);
    }
    check_real("host-driven run_once", t, 1);
    TU_OK(fluxus_runtime_free(rt));
}

/* ----- what a timer callback may and may not call ----- */

typedef struct inside {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    int32_t wait_rc, drain_rc, push_rc, try_push_rc, pfree_rc, rtfree_rc, run_once_rc,
        run_for_rc, call_after_rc, cancel_rc, get_state_rc;
    uint64_t calls;
} inside;

static void inside_fn(void *user) {
    inside *c = (inside *)user;
    uint64_t id = 0;
    int32_t st = -1;
    c->wait_rc = fluxus_pipeline_wait(c->p, 0);
    c->drain_rc = fluxus_pipeline_drain(c->p, 10);
    c->push_rc = fluxus_pipeline_push(c->p, 1, 10);
    c->try_push_rc = fluxus_pipeline_try_push(c->p, 2);
    c->pfree_rc = fluxus_pipeline_free(c->p);
    c->rtfree_rc = fluxus_runtime_free(c->rt);
    c->run_once_rc = fluxus_runtime_run_once(NULL, c->rt);
    c->run_for_rc = fluxus_runtime_run_for(c->rt, 1);
    c->call_after_rc = fluxus_runtime_call_after(&id, c->rt, 1000000000000ull, noop_fn, NULL,
                                                 NULL);
    c->cancel_rc = id ? fluxus_runtime_cancel_timer(c->rt, id) : -999;
    c->get_state_rc = fluxus_pipeline_get_state(&st, c->p);
    TU_ADD(&c->calls, 1);
}

/* mode 0: virtual clock (fires in advance_clock), 1: threaded real clock (loop thread),
 * 2: host-driven real clock (run_once). */
static void blocking_in_timer(int mode) {
    fluxus_runtime *rt = tu_runtime(mode == 1 ? 1 : 0);
    fluxus_pipeline *p;
    inside c;
    uint64_t sunk = 0, t0;

    if (mode == 0) {
        TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    }
    p = tu_pipeline(rt, "target", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", count_sink, &sunk, NULL));
    TU_OK(fluxus_pipeline_start(p));
    memset(&c, 0, sizeof c);
    c.rt = rt;
    c.p = p;
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000, inside_fn, &c, NULL));
    t0 = tu_now_ms();
    if (mode == 0) {
        TU_OK(fluxus_runtime_advance_clock(rt, 1000));
    }
    while (TU_LOAD(&c.calls) == 0) {
        if (mode == 2) {
            TU_OK(fluxus_runtime_run_once(NULL, rt));
        }
        tu_sleep_us(100);
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("mode %d: the timer did not fire", mode);
        }
    }
    assert_int_equal(c.wait_rc, FLUXUS_EINCALLBACK);
    assert_int_equal(c.drain_rc, FLUXUS_EINCALLBACK);
    assert_int_equal(c.push_rc, FLUXUS_EINCALLBACK);
    assert_int_equal(c.try_push_rc, FLUXUS_OK); /* non-blocking calls are allowed */
    assert_int_equal(c.pfree_rc, FLUXUS_EINCALLBACK);
    assert_int_equal(c.rtfree_rc, FLUXUS_EINCALLBACK);
    if (mode == 1) {
        assert_int_equal(c.run_once_rc, FLUXUS_ESTATE); /* has its own workers */
        assert_int_equal(c.run_for_rc, FLUXUS_ESTATE);
    } else {
        assert_int_equal(c.run_once_rc, FLUXUS_EINCALLBACK);
        assert_int_equal(c.run_for_rc, FLUXUS_EINCALLBACK);
    }
    assert_int_equal(c.call_after_rc, FLUXUS_OK);
    assert_int_equal(c.cancel_rc, FLUXUS_OK);
    assert_int_equal(c.get_state_rc, FLUXUS_OK);
    /* Nothing was freed or drained: the pipeline still runs and delivers the try-pushed item. */
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(sunk, 1);
    tu_free_all(p, rt);
}

static void test_blocking_calls_in_a_virtual_clock_timer_return_eincallback(void **state) {
    (void)state;
    blocking_in_timer(0);
}

static void test_blocking_calls_in_a_loop_thread_timer_return_eincallback(void **state) {
    (void)state;
    blocking_in_timer(1);
}

static void test_blocking_calls_in_a_host_driven_timer_return_eincallback(void **state) {
    (void)state;
    blocking_in_timer(2);
}

/* Runs fluxus_runtime_advance_clock(rt, delta) on a helper thread and reports whether it
 * returned within `ms`; a stuck helper is detached (it is inside the library) and the test
 * fails instead of hanging. */
typedef struct bg_advance {
    fluxus_runtime *rt;
    uint64_t delta;
    int32_t rc;
    uint32_t finished;
} bg_advance;

static void *bg_advance_main(void *arg) {
    bg_advance *b = (bg_advance *)arg;
    b->rc = fluxus_runtime_advance_clock(b->rt, b->delta);
    TU_STORE(&b->finished, 1);
    return NULL;
}

/* Returns 1 if the advance finished (b->rc then holds its result), 0 if it is stuck. */
static int advance_with_watchdog(bg_advance *b, uint32_t ms) {
    pthread_t th;
    uint64_t t0 = tu_now_ms();
    assert_int_equal(pthread_create(&th, NULL, bg_advance_main, b), 0);
    while (!TU_LOAD(&b->finished)) {
        if (tu_now_ms() - t0 > ms) {
            pthread_detach(th);
            return 0;
        }
        tu_sleep_us(1000);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    return 1;
}

static void test_advancing_to_the_end_of_the_clock_saturates_and_returns(void **state) {
    fluxus_runtime *rt = virtual_runtime(0, 500);
    fire_log l;
    timer_arg a = {NULL, 3, 0, 0, 0};
    bg_advance b;
    (void)state;

    log_init(&l, rt);
    a.log = &l;
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000, record_fn, &a, tu_user_free));
    memset(&b, 0, sizeof b);
    b.rt = rt;
    b.delta = UINT64_MAX; /* 500 + UINT64_MAX does not fit: the clock saturates */
    if (!advance_with_watchdog(&b, 5000)) {
        fail_msg("fluxus_runtime_advance_clock(rt, UINT64_MAX) did not return within 5 s (the "
                 "timer at 1500 fired %u times)",
                 TU_LOAD(&l.n));
    }
    TU_OK(b.rc);
    assert_int_equal(TU_LOAD(&l.n), 1);
    assert_int_equal(l.now[0], 1500);
    assert_true(now_of(rt) == UINT64_MAX);
    /* at the end of the clock, a further advance stays there */
    memset(&b, 0, sizeof b);
    b.rt = rt;
    b.delta = 1;
    if (!advance_with_watchdog(&b, 5000)) {
        fail_msg("fluxus_runtime_advance_clock(rt, 1) at UINT64_MAX did not return within 5 s");
    }
    TU_OK(b.rc);
    assert_true(now_of(rt) == UINT64_MAX);
    TU_OK(fluxus_runtime_free(rt));
}

/* A timer callback that advances the (virtual) clock itself: allowed by the header (advance is
 * not a blocking call, and timer callbacks may call non-blocking functions), so it must not
 * deadlock; the outer advance runs under a watchdog so a deadlock fails instead of hanging. */
typedef struct advancer {
    fluxus_runtime *rt;
    int32_t rc;
    uint32_t done;
} advancer;

static void advance_inside_fn(void *user) {
    advancer *a = (advancer *)user;
    a->rc = fluxus_runtime_advance_clock(a->rt, 10);
    TU_STORE(&a->done, 1);
}

static void test_advance_clock_from_inside_a_timer_callback_does_not_deadlock(void **state) {
    fluxus_runtime *rt = virtual_runtime(0, 0);
    advancer a;
    bg_advance b;
    (void)state;

    memset(&a, 0, sizeof a);
    a.rt = rt;
    a.rc = 1;
    TU_OK(fluxus_runtime_call_after(NULL, rt, 50, advance_inside_fn, &a, NULL));
    memset(&b, 0, sizeof b);
    b.rt = rt;
    b.delta = 100;
    if (!advance_with_watchdog(&b, 5000)) {
        fail_msg("fluxus_runtime_advance_clock called from a timer callback (itself run by "
                 "advance_clock) did not return within 5 s: deadlock");
    }
    TU_OK(b.rc);
    assert_int_equal(TU_LOAD(&a.done), 1);
    /* Either accepted or refused with a code, but never a hang. */
    assert_true(a.rc == FLUXUS_OK || a.rc == FLUXUS_EINCALLBACK || a.rc == FLUXUS_ESTATE);
    assert_true(now_of(rt) >= 100);
    TU_OK(fluxus_runtime_free(rt));
}

/* run_once "runs the work that is ready now, then returns without waiting": a timer that keeps
 * re-arming itself for the same instant (delay 0 on a virtual clock that stands still) must not
 * trap it. Run on a helper thread under a watchdog. */
typedef struct rearm {
    fluxus_runtime *rt;
    uint64_t calls;
    int32_t last_rc;
} rearm;

static void rearm_fn(void *user) {
    rearm *r = (rearm *)user;
    if (TU_ADD(&r->calls, 1) < 100000000u) { /* a safety stop far beyond any sane pass */
        r->last_rc = fluxus_runtime_call_after(NULL, r->rt, 0, rearm_fn, r, NULL);
    }
}

typedef struct bg_run_once {
    fluxus_runtime *rt;
    int32_t rc;
    uint32_t finished;
} bg_run_once;

static void *bg_run_once_main(void *arg) {
    bg_run_once *b = (bg_run_once *)arg;
    b->rc = fluxus_runtime_run_once(NULL, b->rt);
    TU_STORE(&b->finished, 1);
    return NULL;
}

static void test_run_once_returns_while_a_timer_rearms_itself_for_now(void **state) {
    fluxus_runtime *rt = virtual_runtime(0, 0);
    rearm r;
    bg_run_once b;
    pthread_t th;
    uint64_t t0, after_first;
    (void)state;

    memset(&r, 0, sizeof r);
    r.rt = rt;
    TU_OK(fluxus_runtime_start(rt));
    TU_OK(fluxus_runtime_call_after(NULL, rt, 0, rearm_fn, &r, NULL));
    memset(&b, 0, sizeof b);
    b.rt = rt;
    assert_int_equal(pthread_create(&th, NULL, bg_run_once_main, &b), 0);
    t0 = tu_now_ms();
    while (!TU_LOAD(&b.finished)) {
        if (tu_now_ms() - t0 > 5000) {
            pthread_detach(th);
            fail_msg("fluxus_runtime_run_once did not return within 5 s while a timer re-armed "
                     "itself with delay 0 (%llu calls so far)",
                     (unsigned long long)TU_LOAD(&r.calls));
        }
        tu_sleep_us(1000);
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    TU_OK(b.rc);
    after_first = TU_LOAD(&r.calls);
    assert_true(after_first >= 1);
    assert_int_equal(r.last_rc, FLUXUS_OK);
    /* Each run_once makes progress: the re-armed timer runs on the next call. */
    TU_OK(fluxus_runtime_run_once(NULL, rt));
    assert_true(TU_LOAD(&r.calls) > after_first);
    TU_OK(fluxus_runtime_free(rt)); /* the re-armed timer is pending: dropped unrun */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_virtual_timer_fires_at_its_deadline_and_not_one_ns_before,
                               reset_counters),
        cmocka_unit_test_setup(test_virtual_clock_works_before_the_runtime_starts, reset_counters),
        cmocka_unit_test_setup(test_virtual_timers_fire_in_deadline_order_and_fifo_on_ties,
                               reset_counters),
        cmocka_unit_test_setup(
            test_timer_scheduled_by_a_timer_within_the_span_fires_in_the_same_advance,
            reset_counters),
        cmocka_unit_test_setup(test_chained_timers_with_zero_delay_and_later_deadlines,
                               reset_counters),
        cmocka_unit_test_setup(test_cancel_before_firing_frees_once_and_never_calls,
                               reset_counters),
        cmocka_unit_test_setup(test_timer_cancels_a_later_timer_from_its_callback, reset_counters),
        cmocka_unit_test_setup(test_timer_cancels_a_timer_due_at_the_same_instant, reset_counters),
        cmocka_unit_test_setup(test_huge_delay_does_not_wrap_around, reset_counters),
        cmocka_unit_test_setup(test_pending_timers_at_runtime_free_get_user_free_not_fn,
                               reset_counters),
        cmocka_unit_test_setup(
            test_pending_timers_of_a_never_started_runtime_with_a_live_pipeline, reset_counters),
        cmocka_unit_test_setup(test_clock_and_timer_argument_and_state_errors, reset_counters),
        cmocka_unit_test_setup(test_real_clock_threaded_timers_all_fire_never_early,
                               reset_counters),
        cmocka_unit_test_setup(test_real_clock_timers_added_before_start_fire_after_start,
                               reset_counters),
        cmocka_unit_test_setup(test_host_driven_timers_fire_during_run_for, reset_counters),
        cmocka_unit_test_setup(test_host_driven_timers_fire_during_run_once_without_pipelines,
                               reset_counters),
        cmocka_unit_test_setup(test_blocking_calls_in_a_virtual_clock_timer_return_eincallback,
                               reset_counters),
        cmocka_unit_test_setup(test_blocking_calls_in_a_loop_thread_timer_return_eincallback,
                               reset_counters),
        cmocka_unit_test_setup(test_blocking_calls_in_a_host_driven_timer_return_eincallback,
                               reset_counters),
        cmocka_unit_test_setup(test_advancing_to_the_end_of_the_clock_saturates_and_returns,
                               reset_counters),
        cmocka_unit_test_setup(test_advance_clock_from_inside_a_timer_callback_does_not_deadlock,
                               reset_counters),
        cmocka_unit_test_setup(test_run_once_returns_while_a_timer_rearms_itself_for_now,
                               reset_counters),
    };
    return TU_RUN_GROUP(tests);
}
