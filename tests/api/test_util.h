/*
 * Helpers shared by the API tests. Each test file includes this header first (it sets the POSIX
 * feature macro before any libc header) and uses only the public <fluxus.h>, like a binding would.
 * Callbacks never call cmocka asserts (they run on fluxus threads, where a longjmp out of the
 * library would be undefined); they count and record problems, and the test thread asserts.
 */
#ifndef FLUXUS_TEST_UTIL_H
#define FLUXUS_TEST_UTIL_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h must come after the three headers above. */
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <fluxus.h>

/* ----- atomics (C99 has no <stdatomic.h>; GCC and Clang builtins are understood by TSan) ----- */

#define TU_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define TU_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define TU_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)

/* How long a test waits for a pipeline before it calls the run a hang. Not an assertion of speed:
 * the slowest sanitizer build finishes every test far below it. */
#ifndef TU_WAIT_MS
#define TU_WAIT_MS 30000u
#endif

/* ----- small utilities ----- */

static inline void tu_sleep_us(uint32_t us) {
    struct timespec ts;
    ts.tv_sec = (time_t)(us / 1000000u);
    ts.tv_nsec = (long)(us % 1000000u) * 1000L;
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static inline uint64_t tu_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ----- value readers over the status-returning 0.4 readers -----
 * The tests read these values inline (in asserts, and inside callbacks, which must not assert), so
 * each wraps the status-returning reader: a failed read gives a value no check accepts (NULL,
 * UINT32_MAX, INT32_MIN). test_misuse.c checks the readers' own error returns. */

#define TU_READER(type, name, bad, call) \
    static inline type name { \
        type v; \
        return (call) == FLUXUS_OK ? v : (bad); \
    }
TU_READER(const char *, tu_failure_stage_name(const fluxus_failure *f), NULL,
          fluxus_failure_get_stage_name(&v, f))
TU_READER(uint32_t, tu_failure_stage_index(const fluxus_failure *f), UINT32_MAX - 1,
          fluxus_failure_get_stage_index(&v, f))
TU_READER(int32_t, tu_failure_status(const fluxus_failure *f), INT32_MIN,
          fluxus_failure_get_status(&v, f))
TU_READER(const char *, tu_failure_message(const fluxus_failure *f), NULL,
          fluxus_failure_get_message(&v, f))
TU_READER(uint32_t, tu_failure_attempts(const fluxus_failure *f), UINT32_MAX,
          fluxus_failure_get_attempts(&v, f))
TU_READER(const char *, tu_failure_description(const fluxus_failure *f), NULL,
          fluxus_failure_get_description(&v, f))
TU_READER(int32_t, tu_failure_retries_exhausted(const fluxus_failure *f), INT32_MIN,
          fluxus_failure_get_retries_exhausted(&v, f))
TU_READER(const char *, tu_stage_name(fluxus_pipeline *p, uint32_t stage), NULL,
          fluxus_stage_get_name(&v, p, stage))
TU_READER(int32_t, tu_is_cancelled(fluxus_pipeline *p), INT32_MIN,
          fluxus_pipeline_get_cancelled(&v, p))
/* UINT32_MAX outside a stage callback, as the callbacks that keep per-worker state expect. */
TU_READER(uint32_t, tu_current_worker(void), UINT32_MAX, fluxus_call_get_worker(&v))
#undef TU_READER

/* splitmix64: the pseudo-random generator used for keys, delays and failure choices. */
static inline uint64_t tu_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t tu_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Busy-spin for about `iterations` steps: a delay that does not yield the thread. */
static inline void tu_spin(uint32_t iterations) {
    volatile uint64_t sink = 0;
    uint32_t i;
    for (i = 0; i < iterations; i++) {
        sink += i;
    }
    (void)sink;
}

/* Asserts that a status code has a non-empty description and a symbolic name. */
static inline void tu_assert_described(int32_t rc) {
    const char *s = fluxus_strerror(rc);
    const char *n = fluxus_err_name(rc);
    assert_non_null(s);
    assert_true(s[0] != '\0');
    assert_non_null(n);
    assert_true(strncmp(n, "FLUXUS_", 7) == 0);
}

/* Copy of the calling thread's last error message, taken right after a call. */
typedef struct tu_msg {
    char text[512];
} tu_msg;

static inline void tu_msg_take(tu_msg *m) {
    const char *s = fluxus_last_error_message();
    if (s == NULL) {
        fail_msg("fluxus_last_error_message() returned NULL");
    }
    strncpy(m->text, s, sizeof m->text - 1);
    m->text[sizeof m->text - 1] = '\0';
}

/* Asserts a call returned exactly `expected` and that the code is described. The last error
 * message is captured before any other fluxus call, and shown on failure. */
#define TU_EXPECT(expected, call)                                                                 \
    do {                                                                                          \
        int32_t tu_rc_ = (int32_t)(call);                                                         \
        if (tu_rc_ != (int32_t)(expected)) {                                                      \
            tu_msg tu_m_;                                                                         \
            tu_msg_take(&tu_m_);                                                                  \
            fail_msg("%s returned %d (%s), expected %d (%s); last error: %s", #call, (int)tu_rc_, \
                     fluxus_err_name(tu_rc_), (int)(expected), fluxus_err_name(expected),         \
                     tu_m_.text);                                                                 \
        }                                                                                         \
        tu_assert_described(tu_rc_);                                                              \
    } while (0)

/* As TU_EXPECT, and also stores the last error message (taken right after the call) in *msg. */
#define TU_EXPECT_MSG(expected, call, msg) \
    do {                                   \
        int32_t tu_rc2_ = (int32_t)(call); \
        tu_msg_take(msg);                  \
        TU_EXPECT(expected, tu_rc2_);      \
    } while (0)

#define TU_OK(call) TU_EXPECT(FLUXUS_OK, call)

/* ----- user_free accounting: every user pointer registered with tu_user_free is counted ----- */

static uint64_t tu_user_frees;

static inline void tu_user_free(void *user) {
    (void)user;
    TU_ADD(&tu_user_frees, 1);
}

/* ----- item tracker: counts destructor calls and deliveries per item value ----- */

typedef struct tu_tracker {
    uint64_t n;           /* item values tracked: [0, n) */
    uint32_t *freed;      /* item-destructor calls per value */
    uint32_t *delivered;  /* sink deliveries per value */
    uint64_t freed_total; /* all destructor calls, tracked or not */
    uint64_t delivered_total;
    uint64_t out_of_range;     /* calls for a value >= n */
    uint64_t free_user_errors; /* destructor called with a wrong user pointer */
} tu_tracker;

static inline void tu_tracker_init(tu_tracker *t, uint64_t n) {
    memset(t, 0, sizeof *t);
    t->n = n;
    t->freed = (uint32_t *)calloc((size_t)n + 1, sizeof(uint32_t));
    t->delivered = (uint32_t *)calloc((size_t)n + 1, sizeof(uint32_t));
    assert_non_null(t->freed);
    assert_non_null(t->delivered);
}

static inline void tu_tracker_destroy(tu_tracker *t) {
    free(t->freed);
    free(t->delivered);
    t->freed = NULL;
    t->delivered = NULL;
}

/* The item destructor; `user` is the tracker. */
static inline void tu_item_free(void *user, uint64_t item) {
    tu_tracker *t = (tu_tracker *)user;
    TU_ADD(&t->freed_total, 1);
    if (item < t->n) {
        TU_ADD(&t->freed[item], 1);
    } else {
        TU_ADD(&t->out_of_range, 1);
    }
}

static inline void tu_tracker_deliver(tu_tracker *t, uint64_t item) {
    TU_ADD(&t->delivered_total, 1);
    if (item < t->n) {
        TU_ADD(&t->delivered[item], 1);
    } else {
        TU_ADD(&t->out_of_range, 1);
    }
}

/* Every value in [lo, hi) was delivered or destroyed, exactly once in total. */
static inline void tu_tracker_check_once(const tu_tracker *t, uint64_t lo, uint64_t hi) {
    uint64_t i;
    assert_true(hi <= t->n);
    for (i = lo; i < hi; i++) {
        uint32_t d = TU_LOAD(&t->delivered[i]);
        uint32_t f = TU_LOAD(&t->freed[i]);
        if (d + f != 1) {
            fail_msg("item %llu: delivered %u times, destroyed %u times (expected once in total)",
                     (unsigned long long)i, d, f);
        }
    }
}

/* No value in [lo, hi) was delivered or destroyed (items that were never admitted). */
static inline void tu_tracker_check_untouched(const tu_tracker *t, uint64_t lo, uint64_t hi) {
    uint64_t i;
    assert_true(hi <= t->n);
    for (i = lo; i < hi; i++) {
        if (TU_LOAD(&t->delivered[i]) != 0 || TU_LOAD(&t->freed[i]) != 0) {
            fail_msg("item %llu was never admitted but was delivered %u / destroyed %u times",
                     (unsigned long long)i, TU_LOAD(&t->delivered[i]), TU_LOAD(&t->freed[i]));
        }
    }
}

/* ----- common callbacks ----- */

/* Pull source producing next, next+1, ..., end-1. Never called concurrently with itself. */
typedef struct tu_range_source {
    uint64_t next;
    uint64_t end;
    uint64_t calls;
} tu_range_source;

static inline int32_t tu_range_pull(void *user, uint64_t *item) {
    tu_range_source *s = (tu_range_source *)user;
    TU_ADD(&s->calls, 1);
    if (TU_LOAD(&s->next) >= s->end) {
        return FLUXUS_PULL_END;
    }
    *item = TU_LOAD(&s->next);
    TU_ADD(&s->next, 1);
    return FLUXUS_PULL_ITEM;
}

static inline int32_t tu_identity_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return 0;
}

/* Sink that records every item in the tracker given as `user`. */
static inline int32_t tu_tracker_sink(void *user, uint64_t item) {
    tu_tracker_deliver((tu_tracker *)user, item);
    return 0;
}

/* ----- runtime / pipeline helpers ----- */

static inline fluxus_runtime *tu_runtime(uint32_t workers) {
    fluxus_runtime *rt = NULL;
    TU_OK(fluxus_runtime_new(&rt));
    assert_non_null(rt);
    TU_OK(fluxus_runtime_set_workers(rt, workers));
    return rt;
}

/* The fixture most test files share: a runtime `g_rt` with `workers` workers made before each
 * test (cmocka's setup) and freed after it (teardown, which fails the test if the free does),
 * and the user-free counter reset. Write TU_RUNTIME_FIXTURE(n) once at file scope and pass
 * setup/teardown to cmocka_unit_test_setup_teardown(). */
#define TU_RUNTIME_FIXTURE(workers)                                     \
    static fluxus_runtime *g_rt;                                        \
    static int setup(void **state) {                                    \
        (void)state;                                                    \
        g_rt = tu_runtime(workers);                                     \
        tu_user_frees = 0;                                              \
        return 0;                                                       \
    }                                                                   \
    static int teardown(void **state) {                                 \
        (void)state;                                                    \
        return fluxus_runtime_free(g_rt) == FLUXUS_OK ? 0 : -1;         \
    }                                                                   \
    typedef int tu_runtime_fixture_needs_a_semicolon

/* A pipeline whose item destructor feeds `t` (if not NULL). */
static inline fluxus_pipeline *tu_pipeline(fluxus_runtime *rt, const char *name, tu_tracker *t) {
    fluxus_pipeline *p = NULL;
    TU_OK(fluxus_pipeline_new(&p, rt, name));
    assert_non_null(p);
    if (t != NULL) {
        TU_OK(fluxus_pipeline_set_item_free(p, tu_item_free, t, NULL));
    }
    return p;
}

static inline void tu_stats(fluxus_pipeline *p, fluxus_pipeline_stats *s) {
    memset(s, 0, sizeof *s);
    s->struct_size = (uint32_t)sizeof *s;
    TU_OK(fluxus_pipeline_get_stats(s, p));
}

static inline void tu_stage_stats(fluxus_pipeline *p, uint32_t stage, fluxus_stage_stats *s) {
    memset(s, 0, sizeof *s);
    s->struct_size = (uint32_t)sizeof *s;
    TU_OK(fluxus_stage_get_stats(s, p, stage));
}

/* Wait for the pipeline to finish; fails the test if it is still running after TU_WAIT_MS. */
static inline int32_t tu_wait(fluxus_pipeline *p) {
    int32_t rc = fluxus_pipeline_wait(p, TU_WAIT_MS);
    if (rc == FLUXUS_ETIMEDOUT) {
        fail_msg("pipeline did not finish within %u ms (hang?)", (unsigned)TU_WAIT_MS);
    }
    return rc;
}

/* Start and wait; asserts the wait result. */
static inline void tu_run_expect(fluxus_pipeline *p, int32_t expected) {
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(expected, tu_wait(p));
}

/*
 * Check the outcome accounting of a finished pipeline:
 *   admitted == delivered + filtered + dead_lettered + failed + cancelled, in_flight == 0,
 *   balanced == 1, the stage counters add up to the pipeline counters, and (with a tracker) the
 *   item destructor ran once for every admitted item that was not delivered, except the
 *   `kept_inputs` flat-map inputs whose ownership the callback took.
 */
static inline void tu_check_conservation(fluxus_pipeline *p, const tu_tracker *t,
                                         uint64_t kept_inputs) {
    fluxus_pipeline_stats s;
    uint32_t n = 0, i;
    uint64_t filtered = 0, failed = 0, dead = 0, dropped = 0;

    tu_stats(p, &s);
    assert_int_equal(s.state, FLUXUS_STATE_FINISHED);
    if (s.admitted != s.delivered + s.filtered + s.dead_lettered + s.failed + s.cancelled) {
        fail_msg(
            "conservation broken: admitted %llu != delivered %llu + filtered %llu + "
            "dead_lettered %llu + failed %llu + cancelled %llu",
            (unsigned long long)s.admitted, (unsigned long long)s.delivered,
            (unsigned long long)s.filtered, (unsigned long long)s.dead_lettered,
            (unsigned long long)s.failed, (unsigned long long)s.cancelled);
    }
    assert_int_equal(s.in_flight, 0);
    assert_int_equal(s.balanced, 1);
    assert_true(s.dropped <= s.failed + s.dead_lettered);

    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    for (i = 0; i < n; i++) {
        fluxus_stage_stats st;
        tu_stage_stats(p, i, &st);
        filtered += st.filtered;
        failed += st.failed;
        dead += st.dead_lettered;
        dropped += st.dropped;
        if (i + 1 == n) {
            assert_int_equal(st.out, s.delivered); /* the sink is the last stage */
        }
    }
    assert_int_equal(filtered, s.filtered);
    assert_int_equal(failed, s.failed);
    assert_int_equal(dead, s.dead_lettered);
    assert_int_equal(dropped, s.dropped);

    if (t != NULL) {
        uint64_t freed = TU_LOAD(&t->freed_total);
        if (freed != s.admitted - s.delivered - kept_inputs) {
            fail_msg(
                "item destructor ran %llu times; admitted %llu - delivered %llu - kept %llu = "
                "%llu",
                (unsigned long long)freed, (unsigned long long)s.admitted,
                (unsigned long long)s.delivered, (unsigned long long)kept_inputs,
                (unsigned long long)(s.admitted - s.delivered - kept_inputs));
        }
        assert_int_equal(TU_LOAD(&t->free_user_errors), 0);
    }
}

/* Free the pipeline and the runtime, asserting both succeed. */
static inline void tu_free_all(fluxus_pipeline *p, fluxus_runtime *rt) {
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
}

/* Runs a cmocka group. FLUXUS_TEST_FILTER / FLUXUS_TEST_SKIP (glob patterns on test names) select
 * tests when debugging one case, e.g. FLUXUS_TEST_FILTER='*per_key*' ./test_order. */
/* ----- virtual clock on a host-driven runtime: exact timing without threads ----- */

static inline uint64_t tu_clock_now(fluxus_runtime *rt) {
    uint64_t now = 0;
    TU_OK(fluxus_runtime_now_ns(rt, &now));
    return now;
}

/* A host-driven runtime (no threads) whose virtual clock starts at `start_ns`. */
static inline fluxus_runtime *tu_vruntime(uint64_t start_ns) {
    fluxus_runtime *rt = tu_runtime(0);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, start_ns));
    return rt;
}

/* Runs the ready work until the runtime is idle. */
static inline void tu_drive(fluxus_runtime *rt) {
    uint32_t ran = 1, rounds = 0;
    while (ran != 0) {
        TU_OK(fluxus_runtime_run_once(&ran, rt));
        if (++rounds > 1000000u) {
            fail_msg("runtime never became idle");
        }
    }
}

/* Moves the virtual clock by `ns` and runs what became ready. */
static inline void tu_step(fluxus_runtime *rt, uint64_t ns) {
    TU_OK(fluxus_runtime_advance_clock(rt, ns));
    tu_drive(rt);
}

/* Moves the virtual clock to exactly `at_ns` (not in the past) and runs what became ready. */
static inline void tu_step_to(fluxus_runtime *rt, uint64_t at_ns) {
    uint64_t now = tu_clock_now(rt);
    assert_true(at_ns >= now);
    tu_step(rt, at_ns - now);
    assert_int_equal(tu_clock_now(rt), at_ns);
}

static inline void tu_apply_filters(void) {
    const char *only = getenv("FLUXUS_TEST_FILTER");
    const char *skip = getenv("FLUXUS_TEST_SKIP");
    if (only != NULL && only[0] != '\0') {
        cmocka_set_test_filter(only);
    }
    if (skip != NULL && skip[0] != '\0') {
        cmocka_set_skip_filter(skip);
    }
}

#define TU_RUN_GROUP(tests) (tu_apply_filters(), cmocka_run_group_tests(tests, NULL, NULL))

#endif /* FLUXUS_TEST_UTIL_H */
