/*
 * Rate limiters and concurrency limiters used directly by the host. Rate schedules run on a
 * virtual clock the test drives, so every count and every instant is asserted exactly; the few
 * real-time tests use bounds that only a broken limiter can miss (a rate can never be beaten,
 * a blocked waiter cannot return while nothing changes), plus generous ones for slow machines.
 */
#include "test_util.h"

#include <math.h>

#define MS 1000000ull /* nanoseconds per millisecond */
#define US 1000ull    /* nanoseconds per microsecond */

/* ----- helpers ----- */

/* A runtime with a virtual clock at 0. It is never started: the limiters only read its clock. */
static fluxus_runtime *vclock_runtime(void) {
    fluxus_runtime *rt = tu_runtime(1);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 0));
    return rt;
}

static fluxus_rate_limiter *rate_limiter(fluxus_runtime *rt, double rate, uint32_t burst) {
    fluxus_rate_limiter *l = NULL;
    TU_OK(fluxus_rate_limiter_new(&l, rt, rate, burst));
    assert_non_null(l);
    return l;
}

static uint64_t clock_of(fluxus_runtime *rt) {
    uint64_t t = 0;
    TU_OK(fluxus_runtime_now_ns(rt, &t));
    return t;
}

static void advance(fluxus_runtime *rt, uint64_t ns) {
    TU_OK(fluxus_runtime_advance_clock(rt, ns));
}

/* Takes every whole token available now, one try-acquire per power of two from `top` down, so
 * at most a few calls per power; returns how many were taken. */
static uint64_t take_all_available(fluxus_rate_limiter *l, uint32_t top) {
    uint64_t taken = 0;
    uint32_t chunk;
    for (chunk = top; chunk >= 1; chunk /= 2) {
        int32_t rc;
        while ((rc = fluxus_rate_limiter_try_acquire(l, chunk)) == FLUXUS_OK) {
            taken += chunk;
        }
        TU_EXPECT(FLUXUS_ELIMITED, rc);
    }
    return taken;
}

static uint32_t in_use(fluxus_concurrency_limiter *c) {
    uint32_t n = UINT32_MAX;
    TU_OK(fluxus_concurrency_limiter_get_in_use(&n, c));
    return n;
}

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A host thread blocked in an acquire call; the main thread drives the clock or the limiter. */
typedef struct waiter {
    pthread_t thread;
    fluxus_rate_limiter *rl;
    fluxus_concurrency_limiter *cl;
    fluxus_runtime *rt; /* if set: the virtual clock, read before and after the call */
    uint32_t n;
    uint32_t timeout_ms;
    int32_t entered;
    int32_t done;
    int32_t rc;
    uint64_t clock_before;
    uint64_t clock_after;
    uint64_t real_ms;    /* real time the call took */
    uint64_t cpu_ns;     /* CPU time the waiting thread used during the call */
} waiter;

static void *waiter_main(void *arg) {
    waiter *w = (waiter *)arg;
    uint64_t t0, cpu0;
    int32_t rc;
    if (w->rt != NULL) {
        fluxus_runtime_now_ns(w->rt, &w->clock_before);
    }
    TU_STORE(&w->entered, 1);
    t0 = tu_now_ms();
    cpu0 = thread_cpu_ns();
    if (w->rl != NULL) {
        rc = fluxus_rate_limiter_acquire(w->rl, w->n, w->timeout_ms);
    } else {
        rc = fluxus_concurrency_limiter_acquire(w->cl, w->n, w->timeout_ms);
    }
    w->cpu_ns = thread_cpu_ns() - cpu0;
    w->real_ms = tu_now_ms() - t0;
    if (w->rt != NULL) {
        fluxus_runtime_now_ns(w->rt, &w->clock_after);
    }
    w->rc = rc;
    TU_STORE(&w->done, 1);
    return NULL;
}

static void waiter_start(waiter *w) {
    w->entered = 0;
    w->done = 0;
    w->rc = 12345;
    assert_int_equal(pthread_create(&w->thread, NULL, waiter_main, w), 0);
    while (!TU_LOAD(&w->entered)) {
        tu_sleep_us(100);
    }
}

static void waiter_join(waiter *w) { assert_int_equal(pthread_join(w->thread, NULL), 0); }

/* Advances the virtual clock in `step_ns` steps (1 ms of real time apart) until the waiter has
 * returned; fails after `max_steps`. Returns the number of steps taken. */
static uint32_t advance_until_done(fluxus_runtime *rt, waiter *w, uint64_t step_ns,
                                   uint32_t max_steps) {
    uint32_t steps = 0;
    while (!TU_LOAD(&w->done)) {
        if (steps == max_steps) {
            fail_msg("waiter still blocked after %u clock steps of %llu ns", max_steps,
                     (unsigned long long)step_ns);
        }
        advance(rt, step_ns);
        steps++;
        tu_sleep_us(1000);
    }
    waiter_join(w);
    return steps;
}

/* ----- rate limiter on a virtual clock ----- */

static void test_rate_limiter_burst_then_refills_exactly_on_schedule(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 3);
    (void)state;

    /* A new limiter is full: the burst passes at once, then nothing. */
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    /* 10/s: the next token is due at exactly +100 ms, not a microsecond earlier. */
    advance(rt, 100 * MS - 1 * US);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    advance(rt, 1 * US);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    /* ... and the one after at +200 ms. */
    advance(rt, 100 * MS - 1);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    advance(rt, 1);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));

    /* After a quiet spell the bucket is full again: 3 at once (not 30). */
    advance(rt, 3000 * MS);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 3));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_counts_exactly_at_a_rate_of_three_per_second(void **state) {
    /* Tokens k = 1, 2, 3 after an empty bucket are due at ceil(k * 1e9 / 3) ns: the refill
     * arithmetic must neither round a token early nor lose a nanosecond per token. */
    static const uint64_t due[3] = {333333334ull, 666666667ull, 1000000000ull};
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 3.0, 1);
    uint64_t t = 0;
    uint32_t k, round;
    (void)state;

    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    for (round = 0; round < 3; round++) { /* three seconds: the schedule repeats exactly */
        for (k = 0; k < 3; k++) {
            uint64_t target = round * 1000000000ull + due[k];
            advance(rt, target - 1 - t);
            t = target - 1;
            TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
            advance(rt, 1);
            t = target;
            TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
        }
    }
    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_smooth_mode_spaces_items_evenly(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 1);
    uint32_t i;
    (void)state;

    TU_OK(fluxus_rate_limiter_set_mode(l, FLUXUS_RATE_SMOOTH));
    TU_OK(fluxus_rate_limiter_set_burst(l, 5)); /* ignored in smooth mode */
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    for (i = 0; i < 20; i++) {
        advance(rt, 100 * MS - 1);
        TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
        advance(rt, 1);
        TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    }

    /* After a quiet spell only one item passes, not a burst: the capacity is 1 token plus the
     * 1 ms catch-up allowance (0.01 token at 10/s), so asking for 2 can never succeed... */
    advance(rt, 5000 * MS);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_try_acquire(l, 2));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    /* ... and the allowance left over brings the next item forward by exactly 1 ms. */
    advance(rt, 99 * MS - 1);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    advance(rt, 1);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));

    /* Back to the token bucket: the burst of 5 applies again once the bucket has refilled. */
    TU_OK(fluxus_rate_limiter_set_mode(l, FLUXUS_RATE_TOKEN_BUCKET));
    advance(rt, 500 * MS);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 5));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_rate_and_burst_changes_apply_to_the_next_tokens(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 1);
    (void)state;

    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    /* Half a token accrues at 10/s; the other half at 20/s takes 25 ms. */
    advance(rt, 50 * MS);
    TU_OK(fluxus_rate_limiter_set_rate(l, 20.0));
    advance(rt, 25 * MS - 1);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    advance(rt, 1);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));

    /* Lowering the rate is not retroactive either: 40 ms at 20/s is 0.8 token, then 0.2 token
     * at 2/s takes 100 ms. */
    advance(rt, 40 * MS);
    TU_OK(fluxus_rate_limiter_set_rate(l, 2.0));
    advance(rt, 100 * MS - 1);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    advance(rt, 1);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));

    /* Raising the burst adds no tokens... */
    TU_OK(fluxus_rate_limiter_set_rate(l, 10.0));
    TU_OK(fluxus_rate_limiter_set_burst(l, 10));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    /* ... but lets them accumulate: 1 s at 10/s. */
    advance(rt, 1000 * MS);
    TU_OK(fluxus_rate_limiter_try_acquire(l, 4));
    /* Lowering it drops what no longer fits (6 held, burst 2 keeps 2). */
    TU_OK(fluxus_rate_limiter_set_burst(l, 2));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_try_acquire(l, 3));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 2));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_rate_zero_lets_nothing_pass(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 0.0, 5);
    (void)state;

    /* The bucket starts full, but rate 0 stops the limiter altogether. */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    advance(rt, 1000000 * MS);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_rate_limiter_acquire(l, 1, 0));

    /* Raised again, the tokens it held (and only those: none accrued at rate 0) pass. */
    TU_OK(fluxus_rate_limiter_set_rate(l, 1.0));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 5));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    /* Stopping a running limiter stops it at once, whatever accrues meanwhile. */
    advance(rt, 3000 * MS);
    TU_OK(fluxus_rate_limiter_set_rate(l, 0.0));
    advance(rt, 3000 * MS);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    TU_OK(fluxus_rate_limiter_set_rate(l, 1.0));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 3)); /* 3 s at 1/s, nothing for the 3 s at 0 */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_try_acquire_of_more_than_available_takes_nothing(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 5);
    (void)state;

    TU_OK(fluxus_rate_limiter_try_acquire(l, 3));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 3));
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_rate_limiter_acquire(l, 3, 0));
    TU_OK(fluxus_rate_limiter_try_acquire(l, 2)); /* both 2 were still there */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    /* More than the capacity (burst 5 + 1 ms worth = 5.01 tokens) could never succeed. */
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_try_acquire(l, 6));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_acquire(l, 6, 10));
    /* n == 0 is a no-op. */
    TU_OK(fluxus_rate_limiter_try_acquire(l, 0));
    TU_OK(fluxus_rate_limiter_acquire(l, 0, 10));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_acquire_timeout_follows_the_virtual_clock(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 0.01, 1); /* one token per 100 s */
    waiter w;
    (void)state;

    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    memset(&w, 0, sizeof w);
    w.rl = l;
    w.rt = rt;
    w.n = 1;
    w.timeout_ms = 50;
    waiter_start(&w);
    /* The clock stands still, so a 50 ms timeout cannot expire however long we wait. */
    tu_sleep_us(200000);
    assert_int_equal(TU_LOAD(&w.done), 0);
    /* Moved 10 ms at a time, the clock passes the deadline long before the token (due at
     * 100 s: the waiter would have to start 99.95 s of clock late, ~10000 steps, to see it). */
    advance_until_done(rt, &w, 10 * MS, 5000);
    TU_EXPECT(FLUXUS_ETIMEDOUT, w.rc);
    assert_true(w.clock_after >= w.clock_before + 50 * MS);
    assert_true(w.clock_after < 100000 * MS);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_acquire_returns_when_the_clock_reaches_the_tokens(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 2);
    uint64_t t0;
    waiter w;
    (void)state;

    TU_OK(fluxus_rate_limiter_try_acquire(l, 2));
    t0 = clock_of(rt);
    memset(&w, 0, sizeof w);
    w.rl = l;
    w.rt = rt;
    w.n = 2;
    w.timeout_ms = UINT32_MAX;
    waiter_start(&w);
    tu_sleep_us(100000);
    assert_int_equal(TU_LOAD(&w.done), 0); /* the clock stands still: no token accrues */
    advance_until_done(rt, &w, 7 * MS, 100000);
    TU_OK(w.rc);
    /* Two tokens at 10/s are due at +200 ms; they cannot have been granted before. */
    assert_true(w.clock_after >= t0 + 200 * MS);
    /* The waiter took both: none is left to take now. */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));

    /* A long timeout on the virtual clock is fine too, and so is timeout 0 when tokens are
     * there. */
    advance(rt, 200 * MS);
    TU_OK(fluxus_rate_limiter_acquire(l, 2, 0));

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

/*
 * Long-run exactness: 10 simulated seconds, the clock moved in irregular steps of 37 us to 1 ms
 * (the lateness of a worker woken by a timer), taking every whole token after each step. The
 * 1 ms catch-up allowance means no step ever overflows the bucket, so the count must be exactly
 * 1 (the initial burst) + floor(R x elapsed) after every single step. The final count therefore
 * exceeds R x 10 s by the initial burst, 1 token: within 1 % even at 10/s (101 of 100).
 */
static void long_run(uint64_t rate, int32_t mode, uint32_t burst, uint64_t max_step_ns,
                     uint64_t seed) {
    const uint64_t total_ns = 10000 * MS;
    fluxus_runtime *rt = vclock_runtime();
    const int smooth = mode == FLUXUS_RATE_SMOOTH;
    /* Smooth mode is created with burst 1 and only then given `burst`, which it ignores. */
    fluxus_rate_limiter *l = rate_limiter(rt, (double)rate, smooth ? 1 : burst);
    const uint32_t initial = smooth ? 1 : burst;
    /* Whole tokens the bucket can hold: burst (1 if smooth) + 1 ms worth. */
    const uint32_t capacity = initial + (uint32_t)(rate / 1000u);
    uint64_t elapsed = 0, count = 0, expected = 0, target = rate * 10u;
    uint32_t top = 1;

    TU_OK(fluxus_rate_limiter_set_mode(l, mode));
    TU_OK(fluxus_rate_limiter_set_burst(l, burst));
    while (top * 2 <= capacity) {
        top *= 2;
    }
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_try_acquire(l, capacity + 1));
    count = take_all_available(l, top);
    assert_int_equal(count, initial);
    while (elapsed < total_ns) {
        uint64_t step = 37 * US + tu_splitmix64(&seed) % (max_step_ns - 37 * US + 1);
        if (step > total_ns - elapsed) {
            step = total_ns - elapsed;
        }
        advance(rt, step);
        elapsed += step;
        count += take_all_available(l, top);
        expected = initial + rate * elapsed / 1000000000ull;
        if (count != expected) {
            fail_msg("rate %llu/s mode %d: %llu tokens after %llu ns, expected exactly %llu",
                     (unsigned long long)rate, (int)mode, (unsigned long long)count,
                     (unsigned long long)elapsed, (unsigned long long)expected);
        }
    }
    /* Within 1 % of R x 10 s (the excess is the initial burst). */
    assert_true(count >= target);
    assert_true((count - target) * 100u <= target);
    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

static void test_rate_limiter_long_run_count_is_exact_on_a_virtual_clock(void **state) {
    (void)state;
    long_run(10, FLUXUS_RATE_TOKEN_BUCKET, 1, 1 * MS, 1);
    long_run(1000, FLUXUS_RATE_TOKEN_BUCKET, 1, 1 * MS, 2);
    long_run(1000000, FLUXUS_RATE_TOKEN_BUCKET, 1, 1 * MS, 3);
    long_run(10, FLUXUS_RATE_SMOOTH, 7, 1 * MS, 4);
    long_run(1000, FLUXUS_RATE_SMOOTH, 7, 1 * MS, 5);
    long_run(1000000, FLUXUS_RATE_SMOOTH, 7, 1 * MS, 6);
}

static void test_rate_limiter_long_run_with_gaps_of_up_to_2ms_needs_a_burst_to_cover_them(
    void **state) {
    (void)state;
    /* A poller up to 2 ms late exceeds the 1 ms allowance; a burst of 1 + R x 1 ms covers the
     * rest, and the count is exact again (the initial burst of 1001 at 1 M/s is 0.01 %). */
    long_run(1000000, FLUXUS_RATE_TOKEN_BUCKET, 1001, 2 * MS, 7);
    long_run(1000, FLUXUS_RATE_TOKEN_BUCKET, 2, 2 * MS, 8);
}

static void test_rate_limiter_survives_its_runtime_handle(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 2);
    (void)state;
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_OK(fluxus_runtime_free(rt)); /* the limiter keeps the runtime's memory (its clock) */
    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(l, 1));
    TU_OK(fluxus_rate_limiter_set_rate(l, 5.0));
    TU_OK(fluxus_rate_limiter_free(l));
}

/* ----- rate limiter on the real clock ----- */

static void test_rate_limiter_holds_the_rate_on_the_real_clock(void **state) {
    /* Burst 20: a loaded machine that deschedules this thread for up to 20 ms loses no tokens,
     * so the lower bound below holds under sanitizers and parallel tests too. */
    fluxus_rate_limiter *l = rate_limiter(NULL, 1000.0, 20);
    uint64_t start, now, count = 0;
    (void)state;

    start = tu_now_ms();
    now = start;
    while (now - start < 300) {
        TU_OK(fluxus_rate_limiter_acquire(l, 1, 10000));
        count++;
        now = tu_now_ms();
    }
    /* The rate can never be beaten: the initial 20 tokens + 1 per ms (+1 for the tokens that
     * accrued between creating the limiter and reading `start`, +1 for the millisecond
     * truncation of the readings). Sleeping late on every token (e.g. rounding each wait up to
     * a whole extra millisecond) would fall far below 250. */
    if (count > 22 + (now - start) || count < 250) {
        fail_msg("%llu tokens in %llu ms at 1000/s with burst 20", (unsigned long long)count,
                 (unsigned long long)(now - start));
    }
    TU_OK(fluxus_rate_limiter_free(l));
}

static void test_rate_limiter_acquire_sleeps_rather_than_spins(void **state) {
    fluxus_rate_limiter *l = rate_limiter(NULL, 5.0, 1);
    waiter w;
    (void)state;

    TU_OK(fluxus_rate_limiter_try_acquire(l, 1));
    memset(&w, 0, sizeof w);
    w.rl = l;
    w.n = 1;
    w.timeout_ms = 10000;
    waiter_start(&w);
    waiter_join(&w);
    TU_OK(w.rc);
    /* The next token was ~200 ms away (a hard lower bound: the rate cannot be beaten); the
     * waiting thread slept through it, using far less CPU than spinning would. */
    assert_true(w.real_ms >= 150);
    assert_true(w.cpu_ns < 50 * MS);
    TU_OK(fluxus_rate_limiter_free(l));
}

static void test_rate_limiter_set_rate_wakes_a_blocked_acquire(void **state) {
    fluxus_rate_limiter *l = rate_limiter(NULL, 0.0, 1);
    waiter w;
    (void)state;

    memset(&w, 0, sizeof w);
    w.rl = l;
    w.n = 1;
    w.timeout_ms = UINT32_MAX;
    waiter_start(&w);
    tu_sleep_us(100000);
    assert_int_equal(TU_LOAD(&w.done), 0); /* rate 0: nothing can pass */
    TU_OK(fluxus_rate_limiter_set_rate(l, 1000.0));
    waiter_join(&w);
    TU_OK(w.rc);
    TU_OK(fluxus_rate_limiter_free(l));
}

static void test_rate_limiter_free_releases_a_blocked_acquire(void **state) {
    fluxus_rate_limiter *l = rate_limiter(NULL, 0.0, 1);
    waiter w;
    (void)state;

    memset(&w, 0, sizeof w);
    w.rl = l;
    w.n = 1;
    w.timeout_ms = UINT32_MAX;
    waiter_start(&w);
    tu_sleep_us(100000);
    assert_int_equal(TU_LOAD(&w.done), 0);
    TU_OK(fluxus_rate_limiter_free(l));
    waiter_join(&w); /* a waiter left blocked forever would hang here */
    /* ECANCELED if it was waiting when the handle was freed; EINVAL only if the thread had not
     * reached the call yet (then the handle was already dead). Never a token. */
    if (w.rc != FLUXUS_ECANCELED && w.rc != FLUXUS_EINVAL) {
        fail_msg("blocked acquire returned %d (%s) after free", (int)w.rc,
                 fluxus_err_name(w.rc));
    }
    tu_assert_described(w.rc);
}

/* ----- concurrency limiter ----- */

static void test_concurrency_limiter_counts_permits(void **state) {
    fluxus_concurrency_limiter *c = NULL;
    (void)state;

    TU_OK(fluxus_concurrency_limiter_new(&c, 3));
    assert_int_equal(in_use(c), 0);
    TU_OK(fluxus_concurrency_limiter_try_acquire(c, 2));
    assert_int_equal(in_use(c), 2);
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_concurrency_limiter_try_acquire(c, 2));
    assert_int_equal(in_use(c), 2); /* all or nothing */
    TU_OK(fluxus_concurrency_limiter_acquire(c, 1, 1000));
    assert_int_equal(in_use(c), 3);
    TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_concurrency_limiter_acquire(c, 1, 0));
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_concurrency_limiter_try_acquire(c, 1));

    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_release(c, 4));
    assert_int_equal(in_use(c), 3); /* nothing released */
    TU_OK(fluxus_concurrency_limiter_release(c, 1));
    assert_int_equal(in_use(c), 2);
    TU_OK(fluxus_concurrency_limiter_release(c, 2));
    assert_int_equal(in_use(c), 0);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_release(c, 1));

    /* More than the maximum could never succeed. */
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_try_acquire(c, 4));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_acquire(c, 4, 10));
    /* n == 0 is a no-op everywhere. */
    TU_OK(fluxus_concurrency_limiter_try_acquire(c, 0));
    TU_OK(fluxus_concurrency_limiter_acquire(c, 0, 10));
    TU_OK(fluxus_concurrency_limiter_release(c, 0));
    assert_int_equal(in_use(c), 0);
    TU_OK(fluxus_concurrency_limiter_free(c));
}

static void test_concurrency_limiter_set_max_at_run_time(void **state) {
    fluxus_concurrency_limiter *c = NULL;
    waiter w;
    (void)state;

    TU_OK(fluxus_concurrency_limiter_new(&c, 2));
    TU_OK(fluxus_concurrency_limiter_try_acquire(c, 2));
    /* Lowering never revokes held permits... */
    TU_OK(fluxus_concurrency_limiter_set_max(c, 1));
    assert_int_equal(in_use(c), 2);
    TU_OK(fluxus_concurrency_limiter_release(c, 1));
    /* ... and grants none until fewer than the new maximum are in use. */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_concurrency_limiter_try_acquire(c, 1));
    TU_OK(fluxus_concurrency_limiter_release(c, 1));
    TU_OK(fluxus_concurrency_limiter_try_acquire(c, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_try_acquire(c, 2));

    /* Raising lets a blocked waiter through at once. */
    memset(&w, 0, sizeof w);
    w.cl = c;
    w.n = 2;
    w.timeout_ms = UINT32_MAX;
    TU_OK(fluxus_concurrency_limiter_set_max(c, 2));
    waiter_start(&w); /* needs 2, only 1 free */
    tu_sleep_us(100000);
    assert_int_equal(TU_LOAD(&w.done), 0);
    TU_OK(fluxus_concurrency_limiter_set_max(c, 3));
    waiter_join(&w);
    TU_OK(w.rc);
    assert_int_equal(in_use(c), 3);

    /* Lowering below what a waiter asks for ends its wait with FLUXUS_ERANGE. */
    memset(&w, 0, sizeof w);
    w.cl = c;
    w.n = 3;
    w.timeout_ms = UINT32_MAX;
    waiter_start(&w);
    tu_sleep_us(50000);
    assert_int_equal(TU_LOAD(&w.done), 0);
    TU_OK(fluxus_concurrency_limiter_set_max(c, 2));
    waiter_join(&w);
    TU_EXPECT(FLUXUS_ERANGE, w.rc);
    assert_int_equal(in_use(c), 3);
    TU_OK(fluxus_concurrency_limiter_release(c, 3));
    TU_OK(fluxus_concurrency_limiter_free(c));
}

typedef struct contender {
    pthread_t thread;
    fluxus_concurrency_limiter *c;
    uint32_t *active;
    uint32_t *peak;
    uint32_t rounds;
    uint32_t ok;
    uint32_t errors;
} contender;

static void *contender_main(void *arg) {
    contender *k = (contender *)arg;
    uint32_t i;
    for (i = 0; i < k->rounds; i++) {
        uint32_t now, seen;
        if (fluxus_concurrency_limiter_acquire(k->c, 1, 20000) != FLUXUS_OK) {
            k->errors++;
            continue;
        }
        k->ok++;
        now = TU_ADD(k->active, 1);
        seen = TU_LOAD(k->peak);
        while (now > seen && !__atomic_compare_exchange_n(k->peak, &seen, now, 0,
                                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        }
        tu_spin(2000);
        TU_ADD(k->active, (uint32_t)-1);
        if (fluxus_concurrency_limiter_release(k->c, 1) != FLUXUS_OK) {
            k->errors++;
        }
    }
    return NULL;
}

static void test_concurrency_limiter_two_threads_contend_with_acquire_and_timeout(void **state) {
    fluxus_concurrency_limiter *c = NULL;
    uint32_t active = 0, peak = 0, i;
    contender k[2];
    waiter w;
    (void)state;

    TU_OK(fluxus_concurrency_limiter_new(&c, 1));
    memset(k, 0, sizeof k);
    for (i = 0; i < 2; i++) {
        k[i].c = c;
        k[i].active = &active;
        k[i].peak = &peak;
        k[i].rounds = 2000;
        assert_int_equal(pthread_create(&k[i].thread, NULL, contender_main, &k[i]), 0);
    }
    for (i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(k[i].thread, NULL), 0);
        assert_int_equal(k[i].errors, 0);
        assert_int_equal(k[i].ok, 2000);
    }
    assert_int_equal(peak, 1); /* one permit: never two holders at once */
    assert_int_equal(in_use(c), 0);

    /* Held by the main thread, the permit is not free for another thread within 50 ms, and the
     * wait lasts the full timeout (real time). */
    TU_OK(fluxus_concurrency_limiter_acquire(c, 1, 0));
    memset(&w, 0, sizeof w);
    w.cl = c;
    w.n = 1;
    w.timeout_ms = 50;
    waiter_start(&w);
    waiter_join(&w);
    TU_EXPECT(FLUXUS_ETIMEDOUT, w.rc);
    assert_true(w.real_ms >= 49); /* tu_now_ms() truncates to whole milliseconds */
    assert_int_equal(in_use(c), 1);

    /* Released from here, it goes to a waiting thread. */
    memset(&w, 0, sizeof w);
    w.cl = c;
    w.n = 1;
    w.timeout_ms = UINT32_MAX;
    waiter_start(&w);
    tu_sleep_us(50000);
    assert_int_equal(TU_LOAD(&w.done), 0);
    TU_OK(fluxus_concurrency_limiter_release(c, 1));
    waiter_join(&w);
    TU_OK(w.rc);
    assert_int_equal(in_use(c), 1);
    TU_OK(fluxus_concurrency_limiter_release(c, 1));
    TU_OK(fluxus_concurrency_limiter_free(c));
}

static void test_concurrency_limiter_free_releases_a_blocked_acquire(void **state) {
    fluxus_concurrency_limiter *c = NULL;
    waiter w;
    (void)state;

    TU_OK(fluxus_concurrency_limiter_new(&c, 1));
    TU_OK(fluxus_concurrency_limiter_try_acquire(c, 1));
    memset(&w, 0, sizeof w);
    w.cl = c;
    w.n = 1;
    w.timeout_ms = UINT32_MAX;
    waiter_start(&w);
    tu_sleep_us(100000);
    assert_int_equal(TU_LOAD(&w.done), 0);
    TU_OK(fluxus_concurrency_limiter_free(c));
    waiter_join(&w);
    if (w.rc != FLUXUS_ECANCELED && w.rc != FLUXUS_EINVAL) {
        fail_msg("blocked acquire returned %d (%s) after free", (int)w.rc,
                 fluxus_err_name(w.rc));
    }
}

/* ----- calls from inside a fluxus callback ----- */

typedef struct inside {
    fluxus_rate_limiter *rl;
    fluxus_concurrency_limiter *cl;
    int32_t rl_wait_rc, rl_nowait_rc, rl_try_rc, rl_set_rc;
    int32_t cl_wait_rc, cl_nowait_rc, cl_try_rc, cl_release_rc;
    uint32_t calls;
} inside;

static void inside_timer(void *user) {
    inside *s = (inside *)user;
    s->calls++;
    s->rl_wait_rc = fluxus_rate_limiter_acquire(s->rl, 1, 10);
    s->rl_nowait_rc = fluxus_rate_limiter_acquire(s->rl, 1, 0);
    s->rl_try_rc = fluxus_rate_limiter_try_acquire(s->rl, 1);
    s->rl_set_rc = fluxus_rate_limiter_set_rate(s->rl, 20.0);
    s->cl_wait_rc = fluxus_concurrency_limiter_acquire(s->cl, 1, UINT32_MAX);
    s->cl_nowait_rc = fluxus_concurrency_limiter_acquire(s->cl, 1, 0);
    s->cl_try_rc = fluxus_concurrency_limiter_try_acquire(s->cl, 1);
    s->cl_release_rc = fluxus_concurrency_limiter_release(s->cl, 2);
}

static void test_limiter_waits_are_refused_inside_callbacks(void **state) {
    fluxus_runtime *rt = vclock_runtime();
    inside s;
    (void)state;

    memset(&s, 0, sizeof s);
    s.rl = rate_limiter(rt, 10.0, 2);
    TU_OK(fluxus_concurrency_limiter_new(&s.cl, 5));
    /* A host timer runs on the thread advancing the virtual clock, as a fluxus callback. */
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1 * MS, inside_timer, &s, NULL));
    advance(rt, 1 * MS);
    assert_int_equal(s.calls, 1);
    TU_EXPECT(FLUXUS_EINCALLBACK, s.rl_wait_rc); /* refused even though tokens were there */
    TU_OK(s.rl_nowait_rc);
    TU_OK(s.rl_try_rc);
    TU_OK(s.rl_set_rc);
    TU_EXPECT(FLUXUS_EINCALLBACK, s.cl_wait_rc);
    TU_OK(s.cl_nowait_rc);
    TU_OK(s.cl_try_rc);
    TU_OK(s.cl_release_rc);
    assert_int_equal(in_use(s.cl), 0);
    /* Both tokens were taken by the non-blocking calls. */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(s.rl, 1));

    TU_OK(fluxus_rate_limiter_free(s.rl));
    TU_OK(fluxus_concurrency_limiter_free(s.cl));
    TU_OK(fluxus_runtime_free(rt));
}

/* ----- misuse ----- */

static void test_limiter_status_code_is_described(void **state) {
    (void)state;
    tu_assert_described(FLUXUS_ELIMITED);
    assert_string_equal(fluxus_err_name(FLUXUS_ELIMITED), "FLUXUS_ELIMITED");
    assert_true(strcmp(fluxus_strerror(FLUXUS_ELIMITED), fluxus_strerror(FLUXUS_ETIMEDOUT)) != 0);
    assert_true(strcmp(fluxus_strerror(FLUXUS_ELIMITED), "unknown error") != 0);
}

static void expect_einval_with_message(int32_t rc) {
    tu_msg m;
    tu_msg_take(&m);
    TU_EXPECT(FLUXUS_EINVAL, rc);
    assert_true(m.text[0] != '\0');
}

static void test_limiter_null_and_freed_handles_are_rejected_with_einval(void **state) {
    fluxus_rate_limiter *rl = NULL;
    fluxus_concurrency_limiter *cl = NULL;
    fluxus_runtime *rt = tu_runtime(1);
    uint32_t n = 0;
    int pass;
    tu_msg m;
    (void)state;

    /* NULL out-pointers. */
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_rate_limiter_new(NULL, NULL, 1.0, 1), &m);
    assert_non_null(strstr(m.text, "out"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_concurrency_limiter_new(NULL, 1));

    /* A freed runtime is not a clock. */
    TU_OK(fluxus_runtime_free(rt));
    rl = (fluxus_rate_limiter *)1;
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_rate_limiter_new(&rl, rt, 1.0, 1), &m);
    assert_null(rl);
    assert_non_null(strstr(m.text, "runtime"));

    /* Pass 0: NULL handles; pass 1: freed handles. */
    for (pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            rl = rate_limiter(NULL, 1.0, 1);
            TU_OK(fluxus_concurrency_limiter_new(&cl, 1));
            TU_OK(fluxus_rate_limiter_free(rl));
            TU_OK(fluxus_concurrency_limiter_free(cl));
        } else {
            rl = NULL;
            cl = NULL;
        }
        expect_einval_with_message(fluxus_rate_limiter_set_rate(rl, 1.0));
        expect_einval_with_message(fluxus_rate_limiter_set_burst(rl, 1));
        expect_einval_with_message(fluxus_rate_limiter_set_mode(rl, FLUXUS_RATE_SMOOTH));
        expect_einval_with_message(fluxus_rate_limiter_try_acquire(rl, 1));
        expect_einval_with_message(fluxus_rate_limiter_acquire(rl, 1, 0));
        expect_einval_with_message(fluxus_concurrency_limiter_set_max(cl, 1));
        expect_einval_with_message(fluxus_concurrency_limiter_try_acquire(cl, 1));
        expect_einval_with_message(fluxus_concurrency_limiter_acquire(cl, 1, 0));
        expect_einval_with_message(fluxus_concurrency_limiter_release(cl, 1));
        expect_einval_with_message(fluxus_concurrency_limiter_get_in_use(&n, cl));
        if (pass == 0) {
            TU_OK(fluxus_rate_limiter_free(rl)); /* NULL is accepted */
            TU_OK(fluxus_concurrency_limiter_free(cl));
        } else {
            expect_einval_with_message(fluxus_rate_limiter_free(rl)); /* double free */
            expect_einval_with_message(fluxus_concurrency_limiter_free(cl));
        }
    }

    /* A handle of the other kind is not mistaken for a limiter. */
    rl = rate_limiter(NULL, 1.0, 1);
    TU_OK(fluxus_concurrency_limiter_new(&cl, 1));
    expect_einval_with_message(
        fluxus_concurrency_limiter_try_acquire((fluxus_concurrency_limiter *)rl, 1));
    expect_einval_with_message(fluxus_rate_limiter_try_acquire((fluxus_rate_limiter *)cl, 1));
    expect_einval_with_message(fluxus_concurrency_limiter_get_in_use(NULL, cl));
    TU_OK(fluxus_rate_limiter_free(rl));
    TU_OK(fluxus_concurrency_limiter_free(cl));
}

static void test_limiter_out_of_range_values_are_rejected_with_erange(void **state) {
    fluxus_rate_limiter *rl = NULL;
    fluxus_concurrency_limiter *cl = NULL;
    const double bad_rates[] = {-1.0, -0.0001, 1e9 + 1.0, 1e300, NAN, INFINITY, -INFINITY};
    size_t i;
    tu_msg m;
    (void)state;

    for (i = 0; i < sizeof bad_rates / sizeof bad_rates[0]; i++) {
        rl = (fluxus_rate_limiter *)1;
        TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_new(&rl, NULL, bad_rates[i], 1));
        assert_null(rl);
    }
    TU_EXPECT_MSG(FLUXUS_ERANGE, fluxus_rate_limiter_new(&rl, NULL, 1.0, 0), &m);
    assert_non_null(strstr(m.text, "burst"));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_new(&rl, NULL, 1.0, (1u << 30) + 1));
    /* The extremes are valid. */
    rl = rate_limiter(NULL, 1e9, 1u << 30);
    TU_OK(fluxus_rate_limiter_free(rl));
    rl = rate_limiter(NULL, 0.0, 1);

    for (i = 0; i < sizeof bad_rates / sizeof bad_rates[0]; i++) {
        TU_EXPECT_MSG(FLUXUS_ERANGE, fluxus_rate_limiter_set_rate(rl, bad_rates[i]), &m);
        assert_non_null(strstr(m.text, "rate"));
    }
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_set_burst(rl, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_set_burst(rl, (1u << 30) + 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_set_mode(rl, 2));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_set_mode(rl, -1));
    /* Nothing was changed by the refused calls: still rate 0, burst 1. */
    TU_EXPECT(FLUXUS_ELIMITED, fluxus_rate_limiter_try_acquire(rl, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_rate_limiter_try_acquire(rl, 2));
    TU_OK(fluxus_rate_limiter_free(rl));

    cl = (fluxus_concurrency_limiter *)1;
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_new(&cl, 0));
    assert_null(cl);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_new(&cl, (1u << 30) + 1));
    TU_OK(fluxus_concurrency_limiter_new(&cl, 1u << 30));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_set_max(cl, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_set_max(cl, (1u << 30) + 1));
    TU_OK(fluxus_concurrency_limiter_try_acquire(cl, 1u << 30));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_concurrency_limiter_release(cl, (1u << 30) + 1));
    TU_OK(fluxus_concurrency_limiter_release(cl, 1u << 30));
    TU_OK(fluxus_concurrency_limiter_free(cl));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_limiter_burst_then_refills_exactly_on_schedule),
        cmocka_unit_test(test_rate_limiter_counts_exactly_at_a_rate_of_three_per_second),
        cmocka_unit_test(test_rate_limiter_smooth_mode_spaces_items_evenly),
        cmocka_unit_test(test_rate_limiter_rate_and_burst_changes_apply_to_the_next_tokens),
        cmocka_unit_test(test_rate_limiter_rate_zero_lets_nothing_pass),
        cmocka_unit_test(test_rate_limiter_try_acquire_of_more_than_available_takes_nothing),
        cmocka_unit_test(test_rate_limiter_acquire_timeout_follows_the_virtual_clock),
        cmocka_unit_test(test_rate_limiter_acquire_returns_when_the_clock_reaches_the_tokens),
        cmocka_unit_test(test_rate_limiter_long_run_count_is_exact_on_a_virtual_clock),
        cmocka_unit_test(
            test_rate_limiter_long_run_with_gaps_of_up_to_2ms_needs_a_burst_to_cover_them),
        cmocka_unit_test(test_rate_limiter_survives_its_runtime_handle),
        cmocka_unit_test(test_rate_limiter_holds_the_rate_on_the_real_clock),
        cmocka_unit_test(test_rate_limiter_acquire_sleeps_rather_than_spins),
        cmocka_unit_test(test_rate_limiter_set_rate_wakes_a_blocked_acquire),
        cmocka_unit_test(test_rate_limiter_free_releases_a_blocked_acquire),
        cmocka_unit_test(test_concurrency_limiter_counts_permits),
        cmocka_unit_test(test_concurrency_limiter_set_max_at_run_time),
        cmocka_unit_test(test_concurrency_limiter_two_threads_contend_with_acquire_and_timeout),
        cmocka_unit_test(test_concurrency_limiter_free_releases_a_blocked_acquire),
        cmocka_unit_test(test_limiter_waits_are_refused_inside_callbacks),
        cmocka_unit_test(test_limiter_status_code_is_described),
        cmocka_unit_test(test_limiter_null_and_freed_handles_are_rejected_with_einval),
        cmocka_unit_test(test_limiter_out_of_range_values_are_rejected_with_erange),
    };
    return TU_RUN_GROUP(tests);
}
