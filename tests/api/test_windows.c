/*
 * test_windows.c — per-key windows: tumbling by count, tumbling by time and session windows,
 * closing exactly on the virtual clock; tails at end of input; failures; cancel.
 */
#include "test_util.h"

#define T0 1000000000ull /* a multiple of every period used here: time windows align to it */
#define US 1000ull

typedef struct wins {
    fluxus_runtime *rt;
    uint32_t n;
    uint32_t count[32];
    uint64_t first[32], start[32], at[32];
    int32_t fail;
    uint32_t fail_at; /* 1-based window to fail (0: see `fail`) */
} wins;

/* Records the window and emits the sum of its items. */
static int32_t aggregate(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                         fluxus_emitter *em) {
    wins *w = (wins *)user;
    uint64_t sum = 0;
    uint32_t i;
    if (w->n < 32) {
        w->count[w->n] = count;
        w->first[w->n] = items[0];
        w->start[w->n] = start_ns - T0;
        w->at[w->n] = tu_clock_now(w->rt) - T0;
    }
    w->n++;
    if (w->fail) return w->fail;
    if (w->fail_at && w->n == w->fail_at) return 44;
    for (i = 0; i < count; i++) sum += items[i];
    return fluxus_emitter_emit(em, sum);
}

static int32_t key_parity(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = item % 2;
    *key = &k;
    *len = sizeof k;
    return 0;
}

static uint64_t sink_total;
static int32_t total(void *user, uint64_t item) {
    (void)user;
    sink_total += item;
    return 0;
}

static fluxus_pipeline *window_pipeline(fluxus_runtime *rt, wins *w, tu_tracker *t, int32_t kind,
                                        uint64_t size) {
    fluxus_pipeline *p = tu_pipeline(rt, "windows", t);
    uint32_t st = 0;
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_window(&st, p, "agg", kind, size, aggregate, w, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, st, key_parity, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, st, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "total", total, NULL, NULL));
    return p;
}

static void push_at(fluxus_runtime *rt, fluxus_pipeline *p, uint64_t at_ns, uint64_t item) {
    tu_step_to(rt, T0 + at_ns);
    TU_OK(fluxus_pipeline_push(p, item, 0));
    tu_drive(rt);
}

static void test_count_windows_per_key_and_the_tails(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    tu_tracker_init(&t, 64);
    p = window_pipeline(rt, &w, &t, FLUXUS_WINDOW_COUNT, 3);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 10; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    tu_drive(rt);
    assert_int_equal(w.n, 2); /* [0 2 4] and [1 3 5] closed when full */
    assert_int_equal(w.first[0], 0);
    assert_int_equal(w.first[1], 1);
    assert_int_equal(w.count[0], 3);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(w.n, 4); /* tails [6 8] then [7 9], in the order they opened */
    assert_int_equal(w.first[2], 6);
    assert_int_equal(w.count[2], 2);
    assert_int_equal(w.first[3], 7);
    assert_int_equal(sink_total, 45);
    tu_stats(p, &s);
    assert_int_equal(s.admitted, 14);
    assert_int_equal(s.filtered, 10);
    assert_int_equal(s.delivered, 4);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(t.freed_total, 10);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_time_windows_close_exactly_at_the_period_end(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    fluxus_pipeline *p;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    p = window_pipeline(rt, &w, NULL, FLUXUS_WINDOW_TIME, 1000);
    TU_OK(fluxus_pipeline_start(p));
    push_at(rt, p, 200 * US, 2);
    push_at(rt, p, 500 * US, 4);
    tu_step_to(rt, T0 + 1000 * US - 1);
    assert_int_equal(w.n, 0);
    tu_step_to(rt, T0 + 1000 * US);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.count[0], 2);
    assert_int_equal(w.start[0], 0); /* the aligned period [0, 1 ms) */
    assert_int_equal(w.at[0], 1000 * US);
    push_at(rt, p, 1500 * US, 6);
    tu_step_to(rt, T0 + 2000 * US);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.start[1], 1000 * US);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(sink_total, 12);
    tu_free_all(p, rt);
}

static void test_session_windows_close_after_the_gap(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    fluxus_pipeline *p;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    p = window_pipeline(rt, &w, NULL, FLUXUS_WINDOW_SESSION, 1000);
    TU_OK(fluxus_pipeline_start(p));
    push_at(rt, p, 0, 2);
    push_at(rt, p, 800 * US, 4);   /* within the gap: same session */
    push_at(rt, p, 900 * US, 3);   /* another key: its own session */
    tu_step_to(rt, T0 + 1800 * US - 1);
    assert_int_equal(w.n, 0);
    tu_step_to(rt, T0 + 1800 * US); /* key 0: 1 ms after its last item */
    assert_int_equal(w.n, 1);
    assert_int_equal(w.count[0], 2);
    tu_step_to(rt, T0 + 1900 * US); /* key 1 */
    assert_int_equal(w.n, 2);
    assert_int_equal(w.count[1], 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(sink_total, 9);
    tu_free_all(p, rt);
}

static void test_a_failing_window_fails_its_items(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    w.fail = 31;
    tu_tracker_init(&t, 64);
    p = window_pipeline(rt, &w, &t, FLUXUS_WINDOW_COUNT, 2);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 4; i++) TU_OK(fluxus_pipeline_push(p, i, 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    tu_stats(p, &s);
    assert_int_equal(s.failed, 4);
    assert_int_equal(s.delivered, 0);
    assert_int_equal(s.balanced, 1);
    tu_tracker_check_once(&t, 0, 4);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_cancel_cancels_open_windows(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    tu_tracker_init(&t, 64);
    p = window_pipeline(rt, &w, &t, FLUXUS_WINDOW_SESSION, 1000);
    TU_OK(fluxus_pipeline_start(p));
    push_at(rt, p, 0, 2);
    push_at(rt, p, 10 * US, 3);
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    assert_int_equal(w.n, 0);
    tu_stats(p, &s);
    assert_int_equal(s.cancelled, 2);
    assert_int_equal(s.balanced, 1);
    tu_tracker_check_once(&t, 2, 4);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_window_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "opts", NULL);
    wins w;
    uint32_t st = 0;
    (void)state;
    memset(&w, 0, sizeof w);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_window(&st, p, "w", 3, 10, aggregate, &w, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_window(&st, p, "w", FLUXUS_WINDOW_COUNT, 0,
                                                         aggregate, &w, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_window(&st, p, "w", FLUXUS_WINDOW_TIME,
                                                         86400000001ull, aggregate, &w, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_window(&st, p, "w", FLUXUS_WINDOW_COUNT, 5,
                                                         NULL, &w, NULL));
    TU_OK(fluxus_pipeline_add_window(&st, p, "w", FLUXUS_WINDOW_SESSION, 5, aggregate, &w, NULL));
    tu_free_all(p, rt);
}

static fluxus_pipeline *sliding_pipeline(fluxus_runtime *rt, wins *w, tu_tracker *t,
                                         int32_t kind, uint64_t size, uint64_t step) {
    fluxus_pipeline *p = tu_pipeline(rt, "sliding", t);
    uint32_t st = 0;
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sliding_window(&st, p, "agg", kind, size, step, aggregate, w,
                                             NULL));
    TU_OK(fluxus_stage_set_key_fn(p, st, key_parity, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, st, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "total", total, NULL, NULL));
    return p;
}

/* size 4, step 2 over one key's items 0 2 4 6 8 (indices 0..4): the windows are the indices
 * [0..3], [2..5], [4..7]. The first fires when its fourth item arrives (no partial window
 * leads); at end of input the two that have begun fire as they are: [4 6 8] and [8]. */
static void test_sliding_count_windows_overlap_and_flush(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    tu_tracker_init(&t, 64);
    p = sliding_pipeline(rt, &w, &t, FLUXUS_WINDOW_COUNT, 4, 2);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i <= 6; i += 2) TU_OK(fluxus_pipeline_push(p, i, 0));
    tu_drive(rt);
    assert_int_equal(w.n, 1); /* [0 2 4 6], complete when 6 arrived */
    assert_int_equal(w.count[0], 4);
    assert_int_equal(w.first[0], 0);
    assert_int_equal(t.freed_total, 2); /* 0 and 2 are in no later window */
    TU_OK(fluxus_pipeline_push(p, 8, 0));
    tu_drive(rt);
    assert_int_equal(w.n, 1); /* [4 6 8 .] still waits for its fourth item */
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(w.n, 3); /* the trailing partial windows, in order */
    assert_int_equal(w.count[1], 3);
    assert_int_equal(w.first[1], 4);
    assert_int_equal(w.count[2], 1);
    assert_int_equal(w.first[2], 8);
    assert_int_equal(sink_total, 12 + 18 + 8);
    tu_stats(p, &s);
    assert_int_equal(s.filtered, 5); /* each item consumed once, when it left its last window */
    assert_int_equal(s.delivered, 3);
    assert_int_equal(s.balanced, 1);
    for (i = 0; i <= 8; i += 2) assert_int_equal(t.freed[i], 1);
    assert_int_equal(t.freed_total, 5);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* size 1 ms, step 0.5 ms, aligned to the clock: items at 0.1, 0.6 and 1.2 ms fire
 * [-0.5, 0.5) at 0.5 ms, [0, 1) at 1 ms, [0.5, 1.5) at 1.5 ms and [1, 2) at 2 ms. */
static void test_sliding_time_windows_fire_at_each_period_end(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    p = sliding_pipeline(rt, &w, NULL, FLUXUS_WINDOW_TIME, 1000, 500);
    TU_OK(fluxus_pipeline_start(p));
    push_at(rt, p, 100 * US, 2);
    tu_step_to(rt, T0 + 500 * US - 1);
    assert_int_equal(w.n, 0);
    tu_step_to(rt, T0 + 500 * US);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.count[0], 1);
    assert_true((int64_t)w.start[0] == -(int64_t)(500 * US));
    push_at(rt, p, 600 * US, 4);
    tu_step_to(rt, T0 + 1000 * US - 1);
    assert_int_equal(w.n, 1);
    tu_step_to(rt, T0 + 1000 * US);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.count[1], 2);
    assert_int_equal(w.start[1], 0);
    push_at(rt, p, 1200 * US, 6);
    tu_step_to(rt, T0 + 1500 * US);
    assert_int_equal(w.n, 3);
    assert_int_equal(w.count[2], 2);
    assert_int_equal(w.first[2], 4);
    assert_int_equal(w.start[2], 500 * US);
    tu_step_to(rt, T0 + 2000 * US);
    assert_int_equal(w.n, 4);
    assert_int_equal(w.count[3], 1);
    assert_int_equal(w.start[3], 1000 * US);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(sink_total, 2 + 6 + 10 + 6);
    tu_stats(p, &s);
    assert_int_equal(s.filtered, 3);
    assert_int_equal(s.balanced, 1);
    tu_free_all(p, rt);
}

/* size 2, step 1: windows [a b], [b c], then the trailing [c]; the second fails: c (whose home
 * it was: the first window it is in) fails, a and b are consumed. */
static void test_sliding_window_failure_fails_its_home_items(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    w.fail_at = 2;
    tu_tracker_init(&t, 64);
    p = sliding_pipeline(rt, &w, &t, FLUXUS_WINDOW_COUNT, 2, 1);
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_push(p, 0, 0));
    TU_OK(fluxus_pipeline_push(p, 2, 0));
    TU_OK(fluxus_pipeline_push(p, 4, 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(w.n, 3);
    tu_stats(p, &s);
    assert_int_equal(s.failed, 1);
    assert_int_equal(s.filtered, 2);
    assert_int_equal(s.delivered, 2);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(t.freed_total, 3);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* step == size: the windows are tumbling, the same as fluxus_pipeline_add_window() gives. */
static void test_sliding_count_windows_with_step_equal_to_size_tumble(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w, tw;
    tu_tracker t;
    uint64_t i;
    uint32_t k;
    fluxus_pipeline *p, *q;
    (void)state;
    memset(&w, 0, sizeof w);
    memset(&tw, 0, sizeof tw);
    w.rt = rt;
    tw.rt = rt;
    tu_tracker_init(&t, 64);
    p = sliding_pipeline(rt, &w, &t, FLUXUS_WINDOW_COUNT, 3, 3);
    q = window_pipeline(rt, &tw, NULL, FLUXUS_WINDOW_COUNT, 3);
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_start(q));
    for (i = 0; i < 20; i++) { /* two keys (even, odd), ten items each */
        TU_OK(fluxus_pipeline_push(p, i, 0));
        TU_OK(fluxus_pipeline_push(q, i, 0));
    }
    tu_drive(rt);
    /* per key [0 2 4] [6 8 10] [12 14 16], [1 3 5] [7 9 11] [13 15 17], in arrival order */
    assert_int_equal(w.n, 6);
    assert_int_equal(tw.n, 6);
    for (k = 0; k < 6; k++) {
        assert_int_equal(w.count[k], 3);
        assert_int_equal(w.first[k], tw.first[k]);
    }
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(fluxus_pipeline_close_input(q));
    TU_OK(tu_wait(p));
    TU_OK(tu_wait(q));
    assert_int_equal(w.n, 8); /* then the tails [18] and [19] */
    assert_int_equal(tw.n, 8);
    for (k = 6; k < 8; k++) {
        assert_int_equal(w.count[k], 1);
        assert_int_equal(tw.count[k], 1);
    }
    assert_int_equal(w.first[6] + w.first[7], 18 + 19);
    assert_int_equal(tw.first[6] + tw.first[7], 18 + 19);
    assert_int_equal(t.freed_total, 20);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(q));
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* step > size samples: size 2, step 3 over one key's items 0 2 4 ... 18 (indices 0..9) gives the
 * windows [0..1] [3..4] [6..7] [9..10]; the items at indices 2, 5 and 8 are in none and end at
 * once, filtered; the last window ends partial, at end of input. */
static void test_sliding_count_windows_with_step_above_size_sample(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fluxus_stage_stats ss;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    tu_tracker_init(&t, 64);
    p = sliding_pipeline(rt, &w, &t, FLUXUS_WINDOW_COUNT, 2, 3);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 20; i += 2) TU_OK(fluxus_pipeline_push(p, i, 0));
    tu_drive(rt);
    assert_int_equal(w.n, 3);
    assert_int_equal(w.first[0], 0);
    assert_int_equal(w.count[0], 2);
    assert_int_equal(w.first[1], 6);
    assert_int_equal(w.count[1], 2);
    assert_int_equal(w.first[2], 12);
    assert_int_equal(w.count[2], 2);
    /* the items between windows were destroyed as they came; 18 is still held */
    assert_int_equal(t.freed[4], 1);
    assert_int_equal(t.freed[10], 1);
    assert_int_equal(t.freed[16], 1);
    assert_int_equal(t.freed[18], 0);
    assert_int_equal(t.freed_total, 9);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(w.n, 4);
    assert_int_equal(w.first[3], 18);
    assert_int_equal(w.count[3], 1);
    assert_int_equal(sink_total, 2 + 14 + 26 + 18);
    tu_stats(p, &s);
    assert_int_equal(s.admitted, 14);
    assert_int_equal(s.filtered, 10); /* 7 consumed by windows, 3 in no window */
    assert_int_equal(s.delivered, 4);
    tu_stage_stats(p, 0, &ss);
    assert_int_equal(ss.in, 10);
    assert_int_equal(ss.filtered, 10);
    assert_int_equal(ss.spawned, 4);
    tu_check_conservation(p, &t, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* Time windows with step > size: size 0.5 ms every 1 ms, [0, 0.5) [1, 1.5) ...; an item that
 * arrives at 0.7 ms is in none and ends at once. */
static void test_sliding_time_windows_with_step_above_size_sample(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    wins w;
    tu_tracker t;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    (void)state;
    memset(&w, 0, sizeof w);
    w.rt = rt;
    sink_total = 0;
    tu_tracker_init(&t, 64);
    p = sliding_pipeline(rt, &w, &t, FLUXUS_WINDOW_TIME, 500, 1000);
    TU_OK(fluxus_pipeline_start(p));
    push_at(rt, p, 100 * US, 2);
    push_at(rt, p, 300 * US, 4);
    tu_step_to(rt, T0 + 500 * US);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.count[0], 2);
    assert_int_equal(w.start[0], 0);
    push_at(rt, p, 700 * US, 6); /* in the gap */
    assert_int_equal(t.freed[6], 1);
    assert_int_equal(w.n, 1);
    push_at(rt, p, 1200 * US, 8);
    tu_step_to(rt, T0 + 1500 * US - 1);
    assert_int_equal(w.n, 1);
    tu_step_to(rt, T0 + 1500 * US);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.count[1], 1);
    assert_int_equal(w.first[1], 8);
    assert_int_equal(w.start[1], 1000 * US);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(sink_total, 6 + 8);
    tu_stats(p, &s);
    assert_int_equal(s.filtered, 4);
    assert_int_equal(s.delivered, 2);
    tu_check_conservation(p, &t, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

static void test_sliding_window_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "opts", NULL);
    wins w;
    uint32_t st = 0;
    (void)state;
    memset(&w, 0, sizeof w);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(&st, p, "w", FLUXUS_WINDOW_COUNT,
                                                                 4, 0, aggregate, &w, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(&st, p, "w", FLUXUS_WINDOW_COUNT,
                                                                 0, 1, aggregate, &w, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(&st, p, "w", FLUXUS_WINDOW_COUNT,
                                                                 4, (1u << 20) + 1, aggregate, &w,
                                                                 NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(&st, p, "w", FLUXUS_WINDOW_TIME,
                                                                 4, 86400000001ull, aggregate, &w,
                                                                 NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(
                                 &st, p, "w", FLUXUS_WINDOW_SESSION, 4, 2, aggregate, &w, NULL));
    TU_OK(fluxus_pipeline_add_sliding_window(&st, p, "w", FLUXUS_WINDOW_TIME, 4, 4, aggregate,
                                             &w, NULL));
    /* step > size: sampling windows */
    TU_OK(fluxus_pipeline_add_sliding_window(&st, p, "w", FLUXUS_WINDOW_COUNT, 4, 5, aggregate,
                                             &w, NULL));
    tu_free_all(p, rt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count_windows_per_key_and_the_tails),
        cmocka_unit_test(test_time_windows_close_exactly_at_the_period_end),
        cmocka_unit_test(test_session_windows_close_after_the_gap),
        cmocka_unit_test(test_a_failing_window_fails_its_items),
        cmocka_unit_test(test_cancel_cancels_open_windows),
        cmocka_unit_test(test_window_option_errors),
        cmocka_unit_test(test_sliding_count_windows_overlap_and_flush),
        cmocka_unit_test(test_sliding_time_windows_fire_at_each_period_end),
        cmocka_unit_test(test_sliding_window_failure_fails_its_home_items),
        cmocka_unit_test(test_sliding_count_windows_with_step_equal_to_size_tumble),
        cmocka_unit_test(test_sliding_count_windows_with_step_above_size_sample),
        cmocka_unit_test(test_sliding_time_windows_with_step_above_size_sample),
        cmocka_unit_test(test_sliding_window_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
