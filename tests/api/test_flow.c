/*
 * Flow control inside pipelines: debounce and throttle stages, rate limiters on stages and pull
 * sources, and concurrency limiters shared by stages. Timing is asserted exactly on a virtual
 * clock with a host-driven runtime (every step is deterministic: the test pushes, advances the
 * clock and runs the work itself); threaded runs check outcomes and bounds, and the one
 * real-time rate check uses generous bounds.
 */
#include "test_util.h"

#define US 1000ull              /* nanoseconds per microsecond */
#define MS 1000000ull           /* nanoseconds per millisecond */
#define T0 1000000000ull        /* virtual clock start: 1 s (not 0, to catch "0 = unset" bugs) */
#define LOG_MAX 4096u           /* deliveries recorded per run */
#define KEYS 64u                /* key-function keys: item = key << 8 | sequence */
#define ITEM(key, seq) (((uint64_t)(key) << 8) | (uint64_t)(seq))
#define KEY_FAIL_SEQ 0xFFu      /* the key function fails items whose sequence byte is 0xFF */
#define KEY_FAIL_STATUS 77
#define TRACKED (KEYS * 256u)   /* item values the tracker follows */

/* ----- shared context: a tracker plus an ordered log of deliveries with their clock ----- */

typedef struct flow_ctx {
    tu_tracker t;
    fluxus_runtime *rt;
    uint64_t n_log;            /* deliveries so far (read by the test thread) */
    uint64_t items[LOG_MAX];   /* delivered items, in delivery order */
    uint64_t times[LOG_MAX];   /* the runtime clock at each delivery */
    uint64_t dl_calls;         /* dead-letter callback */
    uint64_t dl_items[LOG_MAX];
    int32_t dl_status[LOG_MAX];
    uint32_t dl_stage[LOG_MAX];
    uint64_t dl_times[LOG_MAX];
} flow_ctx;

static flow_ctx *ctx_new(fluxus_runtime *rt) {
    flow_ctx *c = (flow_ctx *)calloc(1, sizeof *c);
    assert_non_null(c);
    c->rt = rt;
    tu_tracker_init(&c->t, TRACKED);
    return c;
}

static void ctx_free(flow_ctx *c) {
    tu_tracker_destroy(&c->t);
    free(c);
}


/* Virtual-clock helpers from test_util.h, on this file's clock origin T0. */
static fluxus_runtime *vruntime(void) { return tu_vruntime(T0); }
static void drive(fluxus_runtime *rt) { tu_drive(rt); }
static void step(fluxus_runtime *rt, uint64_t ns) { tu_step(rt, ns); }
static void step_to(fluxus_runtime *rt, uint64_t at_ns) { tu_step_to(rt, T0 + at_ns); }

/* Sink: records the item and the clock. A single-worker sink never runs concurrently with
 * itself; the count is published after the entry so the test thread can read both. */
static int32_t log_sink(void *user, uint64_t item) {
    flow_ctx *c = (flow_ctx *)user;
    uint64_t now = 0, i = TU_LOAD(&c->n_log);
    fluxus_runtime_now_ns(c->rt, &now);
    if (i < LOG_MAX) {
        c->items[i] = item;
        c->times[i] = now;
    }
    tu_tracker_deliver(&c->t, item);
    TU_STORE(&c->n_log, i + 1);
    return 0;
}

static void log_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    flow_ctx *c = (flow_ctx *)user;
    uint64_t now = 0, i = TU_LOAD(&c->dl_calls);
    fluxus_runtime_now_ns(c->rt, &now);
    if (i < LOG_MAX) {
        c->dl_items[i] = item;
        c->dl_status[i] = tu_failure_status(f);
        c->dl_stage[i] = tu_failure_stage_index(f);
        c->dl_times[i] = now;
    }
    TU_STORE(&c->dl_calls, i + 1);
}

static uint64_t delivered(flow_ctx *c) { return TU_LOAD(&c->n_log); }

/* Key function: key = item >> 8, from a constant table (the bytes stay valid for ever). */
static uint64_t key_words[KEYS];

static int32_t hi_key(void *user, uint64_t item, const void **key, size_t *len) {
    if (user != NULL) {
        TU_ADD((uint64_t *)user, 1);
    }
    if ((item & 0xFFu) == KEY_FAIL_SEQ) {
        return KEY_FAIL_STATUS;
    }
    *key = &key_words[(item >> 8) % KEYS];
    *len = sizeof key_words[0];
    return 0;
}

static void init_key_words(void) {
    uint32_t i;
    for (i = 0; i < KEYS; i++) {
        key_words[i] = 0x5EED0000ull + i * 7919u;
    }
}

/* ----- host-driven virtual-clock helpers ----- */





static void push(fluxus_pipeline *p, uint64_t item) { TU_OK(fluxus_pipeline_push(p, item, 0)); }

static int32_t state_of(fluxus_pipeline *p) {
    int32_t st = -1;
    TU_OK(fluxus_pipeline_get_state(&st, p));
    return st;
}

/* push source -> [stage added by the caller] -> log sink */
static fluxus_pipeline *push_pipeline(fluxus_runtime *rt, flow_ctx *c, const char *name) {
    fluxus_pipeline *p = tu_pipeline(rt, name, &c->t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    return p;
}

static void add_log_sink(fluxus_pipeline *p, flow_ctx *c) {
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", log_sink, c, NULL));
}

/* Closes the input, lets the rest finish and checks the accounting. */
static void close_and_finish(fluxus_pipeline *p, fluxus_runtime *rt, flow_ctx *c) {
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_check_conservation(p, &c->t, 0);
}

static void expect_delivery(flow_ctx *c, uint64_t index, uint64_t item, uint64_t at_ns) {
    assert_true(delivered(c) > index);
    if (c->items[index] != item || c->times[index] != T0 + at_ns) {
        fail_msg("delivery %llu: item %#llx at T0%+lld ns, expected item %#llx at T0%+lld ns",
                 (unsigned long long)index, (unsigned long long)c->items[index],
                 (long long)(c->times[index] - T0), (unsigned long long)item, (long long)at_ns);
    }
}

/* =============================================================================================
 * Debounce
 * =========================================================================================== */

#define QUIET_US 1000u

static void test_debounce_passes_an_item_once_its_key_was_quiet_for_exactly_the_period(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "debounce_exact");
    uint32_t deb = 0;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", QUIET_US));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));

    push(p, 1); /* word keys: the item is its own key */
    drive(rt);
    assert_int_equal(delivered(c), 0);
    step_to(rt, 300 * US);
    push(p, 2);
    drive(rt);
    step_to(rt, QUIET_US * US - 1);
    assert_int_equal(delivered(c), 0); /* 1 ns short of quiet */
    step_to(rt, QUIET_US * US);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 1, QUIET_US * US);
    step_to(rt, (300 + QUIET_US) * US - 1);
    assert_int_equal(delivered(c), 1); /* key 2 has its own deadline */
    step_to(rt, (300 + QUIET_US) * US);
    assert_int_equal(delivered(c), 2);
    expect_delivery(c, 1, 2, (300 + QUIET_US) * US);

    /* A key that already went on starts over with its next item. */
    push(p, 1);
    drive(rt);
    step(rt, QUIET_US * US - 1);
    assert_int_equal(delivered(c), 2);
    step(rt, 1);
    assert_int_equal(delivered(c), 3);
    expect_delivery(c, 2, 1, (300 + 2 * QUIET_US) * US);

    close_and_finish(p, rt, c);
    tu_stage_stats(p, deb, &st);
    assert_int_equal(st.in, 3);
    assert_int_equal(st.out, 3);
    assert_int_equal(st.filtered, 0);
    assert_int_equal(TU_LOAD(&c->t.freed_total), 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_debounce_newer_item_of_a_key_replaces_the_held_one(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "debounce_replace");
    uint32_t deb = 0, i;
    uint64_t key_calls = 0;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", QUIET_US));
    TU_OK(fluxus_stage_set_key_fn(p, deb, hi_key, &key_calls, NULL));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));

    push(p, ITEM(1, 0));
    drive(rt);
    step_to(rt, 600 * US);
    push(p, ITEM(1, 1)); /* same key: replaces ITEM(1,0) and restarts the quiet period */
    drive(rt);
    assert_int_equal(TU_LOAD(&c->t.freed[ITEM(1, 0)]), 1);
    tu_stage_stats(p, deb, &st);
    assert_int_equal(st.filtered, 1);
    step_to(rt, QUIET_US * US); /* the first item's deadline: nothing may go on */
    assert_int_equal(delivered(c), 0);
    step_to(rt, (600 + QUIET_US) * US - 1);
    assert_int_equal(delivered(c), 0);
    step_to(rt, (600 + QUIET_US) * US);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, ITEM(1, 1), (600 + QUIET_US) * US);

    /* Five items of one key in one batch: only the last goes on, four are destroyed once each. */
    for (i = 0; i < 5; i++) {
        push(p, ITEM(2, i));
    }
    drive(rt);
    tu_stage_stats(p, deb, &st);
    assert_int_equal(st.filtered, 5);
    for (i = 0; i < 4; i++) {
        assert_int_equal(TU_LOAD(&c->t.freed[ITEM(2, i)]), 1);
    }
    assert_int_equal(TU_LOAD(&c->t.freed[ITEM(2, 4)]), 0);
    step(rt, QUIET_US * US);
    assert_int_equal(delivered(c), 2);
    expect_delivery(c, 1, ITEM(2, 4), (600 + 2 * QUIET_US) * US);

    close_and_finish(p, rt, c);
    tu_tracker_check_once(&c->t, ITEM(1, 0), ITEM(1, 2));
    tu_tracker_check_once(&c->t, ITEM(2, 0), ITEM(2, 5));
    assert_int_equal(TU_LOAD(&c->t.freed_total), 5);
    assert_true(key_calls >= 7);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_debounce_close_input_flushes_every_held_item_at_once(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "debounce_flush");
    uint32_t deb = 0;
    uint64_t k, seen = 0;
    (void)s;

    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", 3600ull * 1000000ull)); /* 1 h */
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    for (k = 1; k <= 5; k++) {
        push(p, k);
    }
    push(p, 3); /* replaces the held 3 */
    drive(rt);
    step(rt, 10 * MS);
    assert_int_equal(delivered(c), 0);

    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt); /* no clock movement: the flush does not wait for the quiet period */
    assert_int_equal(delivered(c), 5);
    for (k = 0; k < 5; k++) {
        assert_int_equal(c->times[k], T0 + 10 * MS);
        assert_true(c->items[k] >= 1 && c->items[k] <= 5);
        seen |= 1ull << c->items[k];
    }
    assert_int_equal(seen, 0x3E); /* each of 1..5 once */
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    step(rt, 2 * 3600ull * 1000 * MS); /* no held item's deadline fires later */
    assert_int_equal(delivered(c), 5);
    tu_check_conservation(p, &c->t, 0);
    assert_int_equal(TU_LOAD(&c->t.freed[3]), 1); /* the replaced 3 */
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_debounce_cancel_cancels_the_held_items(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "debounce_cancel");
    uint32_t deb = 0;
    fluxus_pipeline_stats ps;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", QUIET_US));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    push(p, 10);
    push(p, 11);
    push(p, 12);
    drive(rt);
    step(rt, QUIET_US * US / 2);
    assert_int_equal(delivered(c), 0);
    TU_OK(fluxus_pipeline_cancel(p));
    drive(rt);
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));
    step(rt, 10 * QUIET_US * US); /* their deadlines pass: nothing is delivered or freed again */
    assert_int_equal(delivered(c), 0);
    assert_int_equal(TU_LOAD(&c->t.freed[10]), 1);
    assert_int_equal(TU_LOAD(&c->t.freed[11]), 1);
    assert_int_equal(TU_LOAD(&c->t.freed[12]), 1);
    tu_stats(p, &ps);
    assert_int_equal(ps.cancelled, 3);
    tu_stage_stats(p, deb, &st);
    assert_int_equal(st.cancelled, 3);
    tu_check_conservation(p, &c->t, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_debounce_max_keys_sends_the_longest_held_key_on_early(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "debounce_max_keys");
    uint32_t deb = 0;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", QUIET_US));
    TU_OK(fluxus_stage_set_debounce_max_keys(p, deb, 2));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    drive(rt);
    step_to(rt, 100 * US);
    push(p, 2);
    drive(rt);
    step_to(rt, 200 * US);
    assert_int_equal(delivered(c), 0);
    push(p, 3); /* a third key: key 1, held longest, goes on now */
    drive(rt);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 1, 200 * US);
    step_to(rt, (100 + QUIET_US) * US - 1);
    assert_int_equal(delivered(c), 1);
    step_to(rt, (100 + QUIET_US) * US);
    assert_int_equal(delivered(c), 2);
    expect_delivery(c, 1, 2, (100 + QUIET_US) * US);
    step_to(rt, (200 + QUIET_US) * US);
    assert_int_equal(delivered(c), 3);
    expect_delivery(c, 2, 3, (200 + QUIET_US) * US);
    step(rt, 10 * QUIET_US * US); /* key 1 is not delivered a second time at its old deadline */
    assert_int_equal(delivered(c), 3);

    close_and_finish(p, rt, c);
    tu_stage_stats(p, deb, &st);
    assert_int_equal(st.out, 3);
    assert_int_equal(st.filtered, 0);
    tu_tracker_check_once(&c->t, 1, 4);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_debounce_and_throttle_option_errors(void **s) {
    fluxus_runtime *rt = vruntime();
    fluxus_pipeline *p = tu_pipeline(rt, "flow_options", NULL);
    uint32_t map = 0, deb = 0, thr = 0, n = 0, out = 12345;
    const uint64_t one_day_us = 86400ull * 1000000ull;
    (void)s;

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_debounce(&out, p, "d0", 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_debounce(&out, p, "d1", one_day_us + 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_throttle(&out, p, "t0", 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_throttle(&out, p, "t1", one_day_us + 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_debounce(&out, NULL, "d", 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_throttle(&out, NULL, "t", 1));
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 0); /* refused stages were not added */

    TU_OK(fluxus_pipeline_add_map(&map, p, "map", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", one_day_us)); /* the maximum */
    TU_OK(fluxus_pipeline_add_throttle(&thr, p, "throttle", 1));          /* the minimum */
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, NULL, NULL));
    assert_int_equal(deb, map + 1);
    assert_int_equal(thr, deb + 1);
    assert_string_equal(tu_stage_name(p, deb), "debounce");

    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_debounce_max_keys(p, map, 2));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_debounce_max_keys(p, thr, 2));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_debounce_max_keys(p, deb, 0));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_debounce_max_keys(p, 99, 2));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_debounce_max_keys(NULL, deb, 2));
    TU_OK(fluxus_stage_set_debounce_max_keys(p, deb, 1));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_debounce_max_keys(p, deb, 2));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_debounce(&out, p, "late", 1));
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_free_all(p, rt);
}

/* Threaded runtime, two debounce workers (keys sharded across them), clock still virtual. */
#define SHARD_KEYS 32u
#define SHARD_SEQ 8u

static void wait_until_u64(const uint64_t *v, uint64_t want, const char *what) {
    uint64_t t0 = tu_now_ms();
    while (TU_LOAD(v) != want) {
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("%s: still %llu after %u ms, expected %llu", what,
                     (unsigned long long)TU_LOAD(v), (unsigned)TU_WAIT_MS,
                     (unsigned long long)want);
        }
        tu_sleep_us(200);
    }
}

static void wait_stage_filtered(fluxus_pipeline *p, uint32_t stage, uint64_t want) {
    fluxus_stage_stats st;
    uint64_t t0 = tu_now_ms();
    for (;;) {
        tu_stage_stats(p, stage, &st);
        if (st.filtered == want) {
            return;
        }
        if (st.filtered > want || tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("stage %u filtered %llu items, expected %llu", stage,
                     (unsigned long long)st.filtered, (unsigned long long)want);
        }
        tu_sleep_us(200);
    }
}

static void test_debounce_with_two_workers_on_a_threaded_runtime(void **s) {
    fluxus_runtime *rt = tu_runtime(3);
    flow_ctx *c;
    fluxus_pipeline *p;
    uint32_t deb = 0, k, q, per_key[SHARD_KEYS];
    uint64_t i;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, T0));
    c = ctx_new(rt);
    p = push_pipeline(rt, c, "debounce_sharded");
    TU_OK(fluxus_pipeline_add_debounce(&deb, p, "debounce", QUIET_US));
    TU_OK(fluxus_stage_set_key_fn(p, deb, hi_key, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, deb, 2));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));

    /* Keys interleaved: for each sequence number, one item of every key. */
    for (q = 0; q < SHARD_SEQ; q++) {
        for (k = 0; k < SHARD_KEYS; k++) {
            TU_OK(fluxus_pipeline_push(p, ITEM(k, q), UINT32_MAX));
        }
    }
    wait_stage_filtered(p, deb, SHARD_KEYS * (SHARD_SEQ - 1));
    tu_stage_stats(p, deb, &st);
    assert_int_equal(st.workers, 2);
    TU_OK(fluxus_runtime_advance_clock(rt, QUIET_US * US - 1));
    tu_sleep_us(20000);
    assert_int_equal(delivered(c), 0);
    TU_OK(fluxus_runtime_advance_clock(rt, 1));
    wait_until_u64(&c->n_log, SHARD_KEYS, "deliveries after the quiet period");

    memset(per_key, 0, sizeof per_key);
    for (i = 0; i < SHARD_KEYS; i++) {
        uint64_t item = c->items[i];
        if ((item & 0xFFu) != SHARD_SEQ - 1 || (item >> 8) >= SHARD_KEYS) {
            fail_msg("delivered %#llx: not the last item of its key", (unsigned long long)item);
        }
        per_key[item >> 8]++;
        assert_int_equal(c->times[i], T0 + QUIET_US * US);
    }
    for (k = 0; k < SHARD_KEYS; k++) {
        assert_int_equal(per_key[k], 1);
    }
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(delivered(c), SHARD_KEYS);
    tu_check_conservation(p, &c->t, 0);
    for (k = 0; k < SHARD_KEYS; k++) {
        tu_tracker_check_once(&c->t, ITEM(k, 0), ITEM(k, SHARD_SEQ));
    }
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Throttle
 * =========================================================================================== */

#define PERIOD_US 1000u

static void test_throttle_passes_one_item_per_key_and_period(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "throttle");
    uint32_t thr = 0;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_add_throttle(&thr, p, "throttle", PERIOD_US));
    TU_OK(fluxus_stage_set_key_fn(p, thr, hi_key, NULL, NULL));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));

    push(p, ITEM(1, 0)); /* first of key 1: passes */
    drive(rt);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, ITEM(1, 0), 0);
    step_to(rt, 500 * US);
    push(p, ITEM(1, 1)); /* within the period: filtered */
    push(p, ITEM(2, 0)); /* another key: passes */
    drive(rt);
    assert_int_equal(delivered(c), 2);
    expect_delivery(c, 1, ITEM(2, 0), 500 * US);
    assert_int_equal(TU_LOAD(&c->t.freed[ITEM(1, 1)]), 1);
    step_to(rt, PERIOD_US * US - 1);
    push(p, ITEM(1, 2)); /* 1 ns short of the period: filtered */
    drive(rt);
    assert_int_equal(delivered(c), 2);
    assert_int_equal(TU_LOAD(&c->t.freed[ITEM(1, 2)]), 1);
    step_to(rt, PERIOD_US * US);
    push(p, ITEM(1, 3)); /* exactly one period after ITEM(1,0): passes */
    drive(rt);
    assert_int_equal(delivered(c), 3);
    expect_delivery(c, 2, ITEM(1, 3), PERIOD_US * US);
    step_to(rt, (500 + PERIOD_US) * US - 1);
    push(p, ITEM(2, 1)); /* key 2 is 1 ns short of its own period */
    drive(rt);
    step_to(rt, (500 + PERIOD_US) * US);
    push(p, ITEM(2, 2));
    drive(rt);
    assert_int_equal(delivered(c), 4);
    expect_delivery(c, 3, ITEM(2, 2), (500 + PERIOD_US) * US);
    step_to(rt, 2 * PERIOD_US * US - 1);
    push(p, ITEM(1, 4)); /* the period restarts at the item that passed, ITEM(1,3) */
    drive(rt);
    step_to(rt, 2 * PERIOD_US * US);
    push(p, ITEM(1, 5));
    drive(rt);
    assert_int_equal(delivered(c), 5);
    expect_delivery(c, 4, ITEM(1, 5), 2 * PERIOD_US * US);
    step(rt, 100 * PERIOD_US * US); /* a long quiet spell: the next item passes at once */
    push(p, ITEM(1, 6));
    drive(rt);
    assert_int_equal(delivered(c), 6);

    close_and_finish(p, rt, c);
    tu_stage_stats(p, thr, &st);
    assert_int_equal(st.in, 10);
    assert_int_equal(st.out, 6);
    assert_int_equal(st.filtered, 4);
    assert_int_equal(TU_LOAD(&c->t.freed_total), 4);
    tu_tracker_check_once(&c->t, ITEM(1, 0), ITEM(1, 7));
    tu_tracker_check_once(&c->t, ITEM(2, 0), ITEM(2, 3));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_throttle_key_function_failure_fails_the_item_at_the_throttle(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_pipeline *p = push_pipeline(rt, c, "throttle_key_fail");
    uint32_t thr = 0;
    uint64_t i;
    fluxus_stage_stats st;
    (void)s;

    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "before", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_throttle(&thr, p, "throttle", PERIOD_US));
    TU_OK(fluxus_stage_set_key_fn(p, thr, hi_key, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, thr, FLUXUS_ERROR_DEAD_LETTER));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));

    push(p, ITEM(1, 0));            /* passes */
    push(p, ITEM(1, KEY_FAIL_SEQ)); /* key function fails */
    push(p, ITEM(1, 1));            /* filtered: key 1 passed at this instant */
    push(p, ITEM(2, KEY_FAIL_SEQ)); /* fails; does not mark key 2 as seen */
    push(p, ITEM(2, 1));            /* passes */
    drive(rt);
    assert_int_equal(delivered(c), 2);
    assert_int_equal(c->items[0], ITEM(1, 0));
    assert_int_equal(c->items[1], ITEM(2, 1));
    assert_int_equal(TU_LOAD(&c->dl_calls), 2);
    for (i = 0; i < 2; i++) {
        assert_int_equal(c->dl_items[i], i == 0 ? ITEM(1, KEY_FAIL_SEQ) : ITEM(2, KEY_FAIL_SEQ));
        assert_int_equal(c->dl_status[i], KEY_FAIL_STATUS);
        assert_int_equal(c->dl_stage[i], thr);
    }
    close_and_finish(p, rt, c);
    tu_stage_stats(p, thr, &st);
    assert_int_equal(st.dead_lettered, 2);
    assert_int_equal(st.filtered, 1);
    assert_int_equal(st.out, 2);
    tu_tracker_check_once(&c->t, ITEM(1, 0), ITEM(1, 2));
    tu_tracker_check_once(&c->t, ITEM(2, 1), ITEM(2, 2));
    assert_int_equal(TU_LOAD(&c->t.freed[ITEM(1, KEY_FAIL_SEQ)]), 1);
    assert_int_equal(TU_LOAD(&c->t.freed[ITEM(2, KEY_FAIL_SEQ)]), 1);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Rate limiter on a stage
 * =========================================================================================== */

static fluxus_rate_limiter *rate_limiter(fluxus_runtime *rt, double rate, uint32_t burst) {
    fluxus_rate_limiter *l = NULL;
    TU_OK(fluxus_rate_limiter_new(&l, rt, rate, burst));
    assert_non_null(l);
    return l;
}

/* push -> "limited" map (rate limited) -> sink. Returns the map's stage index in *stage. */
static fluxus_pipeline *limited_pipeline(fluxus_runtime *rt, flow_ctx *c, const char *name,
                                         fluxus_rate_limiter *l, uint32_t wait_timeout_ms,
                                         uint32_t *stage) {
    fluxus_pipeline *p = push_pipeline(rt, c, name);
    TU_OK(fluxus_pipeline_add_map(stage, p, "limited", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_rate_limiter(p, *stage, l, wait_timeout_ms));
    add_log_sink(p, c);
    return p;
}

/* Rate 10/s, burst 1, five items pushed at once: one every 100 ms exactly. */
static void run_stage_rate_spacing(int free_limiter_early) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 1);
    uint32_t stage = 0;
    fluxus_pipeline *p = limited_pipeline(rt, c, "rate_spacing", l, UINT32_MAX, &stage);
    uint64_t i, k;

    if (free_limiter_early) {
        TU_OK(fluxus_rate_limiter_free(l)); /* the stage keeps it alive */
        l = NULL;
    }
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 5; i++) {
        push(p, 100 + i);
    }
    drive(rt);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 100, 0);
    step_to(rt, 100 * MS - 1); /* the doc: with rate 10, burst 1, the second token is at +100 ms */
    assert_int_equal(delivered(c), 1);
    step_to(rt, 100 * MS);
    assert_int_equal(delivered(c), 2);
    for (k = 2; k < 5; k++) {
        step_to(rt, k * 100 * MS - US);
        assert_int_equal(delivered(c), k);
        step_to(rt, k * 100 * MS);
        assert_int_equal(delivered(c), k + 1);
    }
    for (k = 0; k < 5; k++) {
        expect_delivery(c, k, 100 + k, k * 100 * MS);
    }
    step(rt, 1000 * MS);
    assert_int_equal(delivered(c), 5);
    close_and_finish(p, rt, c);
    if (l != NULL) {
        TU_OK(fluxus_rate_limiter_free(l));
    }
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_stage_rate_limiter_spaces_items_exactly_on_the_virtual_clock(void **s) {
    (void)s;
    run_stage_rate_spacing(0);
}

static void test_stage_rate_limiter_keeps_limiting_after_its_handle_is_freed(void **s) {
    (void)s;
    run_stage_rate_spacing(1);
}

static void test_set_rate_at_run_time_wakes_the_waiting_stage_on_the_virtual_clock(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 1.0, 1);
    uint32_t stage = 0;
    fluxus_pipeline *p = limited_pipeline(rt, c, "set_rate_virtual", l, UINT32_MAX, &stage);
    uint64_t i;
    (void)s;

    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 5; i++) {
        push(p, i);
    }
    drive(rt);
    assert_int_equal(delivered(c), 1);
    step_to(rt, 10 * MS);
    assert_int_equal(delivered(c), 1); /* next token at +1 s */
    TU_OK(fluxus_rate_limiter_set_rate(l, 1000.0));
    drive(rt);
    /* New tokens accrue at 1000/s from now: one per millisecond, not at the old +1 s timer.
     * Step 1 ms at a time: in host-driven mode a woken stage runs after the advance returns,
     * and the bucket holds at most burst + 1 ms worth of catch-up tokens. */
    for (i = 11; i <= 15; i++) {
        step_to(rt, i * MS);
        assert_true(delivered(c) >= 2);
    }
    assert_int_equal(delivered(c), 5);
    for (i = 1; i < 5; i++) {
        if (c->times[i] > T0 + 15 * MS) {
            fail_msg("item %llu delivered at T0+%llu ns", (unsigned long long)i,
                     (unsigned long long)(c->times[i] - T0));
        }
    }
    close_and_finish(p, rt, c);
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_set_rate_at_run_time_wakes_the_waiting_stage_on_the_real_clock(void **s) {
    fluxus_runtime *rt = tu_runtime(2);
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 0.2, 1); /* next token 5 s after the first */
    uint32_t stage = 0;
    fluxus_pipeline *p = limited_pipeline(rt, c, "set_rate_real", l, UINT32_MAX, &stage);
    uint64_t i, t0;
    (void)s;

    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 5; i++) {
        push(p, i);
    }
    wait_until_u64(&c->n_log, 1, "first delivery");
    tu_sleep_us(50000);
    assert_int_equal(delivered(c), 1);
    t0 = tu_now_ms();
    TU_OK(fluxus_rate_limiter_set_rate(l, 1000.0));
    wait_until_u64(&c->n_log, 5, "deliveries after set_rate");
    if (tu_now_ms() - t0 > 2500) {
        fail_msg("after set_rate(1000) the 4 waiting items took %llu ms",
                 (unsigned long long)(tu_now_ms() - t0));
    }
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    tu_check_conservation(p, &c->t, 0);
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_stage_rate_limiter_at_rate_zero_lets_nothing_pass(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 0.0, 1); /* full: one token, but rate 0 */
    uint32_t stage = 0, k;
    fluxus_pipeline *p = limited_pipeline(rt, c, "rate_zero", l, UINT32_MAX, &stage);
    (void)s;

    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    push(p, 2);
    push(p, 3);
    drive(rt);
    for (k = 0; k < 10; k++) {
        step(rt, 1000 * MS);
        assert_int_equal(delivered(c), 0);
    }
    /* Raising the rate releases the kept token at once, then one per 100 ms. */
    TU_OK(fluxus_rate_limiter_set_rate(l, 10.0));
    drive(rt);
    assert_int_equal(delivered(c), 1);
    expect_delivery(c, 0, 1, 10000 * MS);
    step_to(rt, 10100 * MS - US);
    assert_int_equal(delivered(c), 1);
    step_to(rt, 10100 * MS);
    assert_int_equal(delivered(c), 2);
    step_to(rt, 10200 * MS);
    assert_int_equal(delivered(c), 3);
    expect_delivery(c, 2, 3, 10200 * MS);
    close_and_finish(p, rt, c);
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_stage_rate_limiter_at_rate_zero_then_cancel_cancels_the_waiting_items(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 0.0, 1);
    uint32_t stage = 0;
    fluxus_pipeline *p = limited_pipeline(rt, c, "rate_zero_cancel", l, UINT32_MAX, &stage);
    fluxus_pipeline_stats ps;
    (void)s;

    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    push(p, 2);
    drive(rt);
    step(rt, 5000 * MS);
    assert_int_equal(delivered(c), 0);
    TU_OK(fluxus_pipeline_cancel(p));
    drive(rt);
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));
    tu_stats(p, &ps);
    assert_int_equal(ps.cancelled, 2);
    tu_check_conservation(p, &c->t, 0);
    tu_tracker_check_once(&c->t, 1, 3);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_stage_rate_limiter_wait_timeout_fails_items_with_elimited_at_once(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 1);
    uint32_t stage = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats st;
    uint64_t i;
    (void)s;

    p = push_pipeline(rt, c, "rate_wait_timeout");
    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_map(&stage, p, "limited", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_rate_limiter(p, stage, l, 250));
    TU_OK(fluxus_stage_set_error_policy(p, stage, FLUXUS_ERROR_DEAD_LETTER));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 10; i++) {
        push(p, i);
    }
    drive(rt);
    /* Tokens: item 0 now, item 1 at +100 ms, item 2 at +200 ms (within 250 ms); items 3..9
     * could only get theirs at +300 ms or later: they fail now. */
    assert_int_equal(delivered(c), 1);
    assert_int_equal(TU_LOAD(&c->dl_calls), 7);
    for (i = 0; i < 7; i++) { /* items 3..9, in any order */
        assert_true(c->dl_items[i] >= 3 && c->dl_items[i] <= 9);
        assert_int_equal(TU_LOAD(&c->t.freed[c->dl_items[i]]), 1);
        assert_int_equal(c->dl_status[i], FLUXUS_ELIMITED);
        assert_int_equal(c->dl_stage[i], stage);
        assert_int_equal(c->dl_times[i], T0);
    }
    step_to(rt, 100 * MS);
    assert_int_equal(delivered(c), 2);
    step_to(rt, 200 * MS);
    assert_int_equal(delivered(c), 3);
    for (i = 0; i < 3; i++) {
        expect_delivery(c, i, i, i * 100 * MS);
    }
    close_and_finish(p, rt, c);
    tu_stage_stats(p, stage, &st);
    assert_int_equal(st.dead_lettered, 7);
    assert_int_equal(st.out, 3);
    tu_tracker_check_once(&c->t, 0, 10);
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
    ctx_free(c);
}

/*
 * The wait-timeout check must count from the next token even when the same pass took tokens for
 * the first items. Rate 10/s, burst 3, timeout 250 ms, 10 items taken at once: items 0..2 take
 * the burst, item 3's token comes at +100 ms and item 4's at +200 ms, so items 5..9 fail at once.
 * A closed gate downstream (a stage whose only concurrency permit the host holds, queue of 1)
 * parks the rate-limited stage right after that pass, so nothing corrects the count later.
 */
static void test_stage_rate_limiter_wait_timeout_counts_from_the_next_token_under_backpressure(
    void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 3);
    fluxus_concurrency_limiter *gate_permits = NULL;
    uint32_t stage = 0, gate = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats st;
    uint64_t i;
    (void)s;

    TU_OK(fluxus_concurrency_limiter_new(&gate_permits, 1));
    TU_OK(fluxus_concurrency_limiter_try_acquire(gate_permits, 1)); /* the gate is closed */
    p = push_pipeline(rt, c, "rate_wait_timeout_parked");
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_dead_letter(p, log_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_map(&stage, p, "limited", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_rate_limiter(p, stage, l, 250));
    TU_OK(fluxus_stage_set_error_policy(p, stage, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_add_map(&gate, p, "gate", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_concurrency_limiter(p, gate, gate_permits));
    TU_OK(fluxus_stage_set_queue_capacity(p, gate, 1));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 10; i++) {
        push(p, i);
    }
    drive(rt);
    assert_int_equal(delivered(c), 0);
    if (TU_LOAD(&c->dl_calls) != 5) {
        fail_msg("at T0, %llu items failed with FLUXUS_ELIMITED; expected 5 (items 5..9, whose "
                 "tokens come at +300 ms or later)",
                 (unsigned long long)TU_LOAD(&c->dl_calls));
    }
    for (i = 0; i < 5; i++) {
        assert_true(c->dl_items[i] >= 5 && c->dl_items[i] <= 9);
        assert_int_equal(c->dl_status[i], FLUXUS_ELIMITED);
    }
    /* Open the gate late: items 3 and 4 (kept) go on; nothing else may pass. */
    step_to(rt, 350 * MS);
    TU_OK(fluxus_concurrency_limiter_release(gate_permits, 1));
    drive(rt);
    step(rt, 1000 * MS);
    close_and_finish(p, rt, c);
    tu_stage_stats(p, stage, &st);
    if (st.out != 5 || st.dead_lettered != 5) {
        fail_msg("rate-limited stage passed %llu and dead-lettered %llu items; expected 5 and 5",
                 (unsigned long long)st.out, (unsigned long long)st.dead_lettered);
    }
    assert_int_equal(delivered(c), 5);
    for (i = 0; i < 5; i++) {
        assert_int_equal(c->items[i], i);
    }
    tu_tracker_check_once(&c->t, 0, 10);
    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_concurrency_limiter_free(gate_permits));
    tu_free_all(p, rt);
    ctx_free(c);
}

/* A limiter following another clock than the pipeline's runtime is refused at start. */
static void expect_start_refused_for_clock(fluxus_runtime *rt, fluxus_rate_limiter *l,
                                           int on_source, const char *what) {
    fluxus_pipeline *p = tu_pipeline(rt, "wrong_clock", NULL);
    tu_range_source src = {0, 3, 0};
    uint32_t map = 0;
    int32_t rc;
    tu_msg m;

    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "map", tu_identity_map, NULL, NULL));
    if (on_source) {
        TU_OK(fluxus_pipeline_set_source_rate_limiter(p, l));
    } else {
        TU_OK(fluxus_stage_set_rate_limiter(p, map, l, UINT32_MAX));
    }
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, NULL, NULL));
    rc = fluxus_pipeline_start(p);
    tu_msg_take(&m);
    if (rc != FLUXUS_EINVAL) {
        fail_msg("%s on a %s: fluxus_pipeline_start returned %s, expected FLUXUS_EINVAL", what,
                 on_source ? "pull source" : "stage", fluxus_err_name(rc));
    }
    assert_true(m.text[0] != '\0');
    assert_int_equal(state_of(p), FLUXUS_STATE_BUILDING);
    assert_int_equal(TU_LOAD(&src.calls), 0);
    TU_OK(fluxus_pipeline_free(p));
}

static void test_rate_limiter_on_the_other_kind_of_clock_is_refused_at_start(void **s) {
    fluxus_runtime *virt = vruntime();
    fluxus_runtime *real = tu_runtime(0);
    fluxus_rate_limiter *l_real = rate_limiter(NULL, 10.0, 1);
    fluxus_rate_limiter *l_virt = rate_limiter(virt, 10.0, 1);
    fluxus_pipeline *p;
    flow_ctx *c = ctx_new(virt);
    uint32_t stage = 0;
    int on_source;
    (void)s;

    for (on_source = 0; on_source <= 1; on_source++) {
        expect_start_refused_for_clock(virt, l_real, on_source,
                                       "a real-clock limiter (rt NULL) on a virtual-clock runtime");
        expect_start_refused_for_clock(real, l_virt, on_source,
                                       "a virtual-clock limiter on a real-clock runtime");
    }
    /* The right clock starts. */
    p = limited_pipeline(virt, c, "right_clock", l_virt, UINT32_MAX, &stage);
    TU_OK(fluxus_pipeline_start(p));
    push(p, 1);
    drive(virt);
    assert_int_equal(delivered(c), 1);
    close_and_finish(p, virt, c);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_rate_limiter_free(l_real));
    TU_OK(fluxus_rate_limiter_free(l_virt));
    TU_OK(fluxus_runtime_free(virt));
    TU_OK(fluxus_runtime_free(real));
    ctx_free(c);
}

/* Two virtual clocks are two different clocks: a limiter created on another virtual-clock
 * runtime does not use "the pipeline runtime's clock" and must be refused like the others. */
static void test_rate_limiter_on_another_virtual_clock_runtime_is_refused_at_start(void **s) {
    fluxus_runtime *virt = vruntime();
    fluxus_runtime *virt2 = vruntime();
    fluxus_rate_limiter *l_virt2 = rate_limiter(virt2, 10.0, 1);
    int on_source;
    (void)s;

    for (on_source = 0; on_source <= 1; on_source++) {
        expect_start_refused_for_clock(virt, l_virt2, on_source,
                                       "a limiter on another virtual-clock runtime");
    }
    TU_OK(fluxus_rate_limiter_free(l_virt2));
    TU_OK(fluxus_runtime_free(virt));
    TU_OK(fluxus_runtime_free(virt2));
}

static void test_rate_limited_stage_with_two_workers_must_not_be_ordered(void **s) {
    fluxus_runtime *rt = vruntime();
    fluxus_rate_limiter *l = rate_limiter(rt, 1000.0, 100);
    int32_t modes[3] = {FLUXUS_ORDER_ORDERED, FLUXUS_ORDER_UNORDERED, FLUXUS_ORDER_PER_KEY};
    uint32_t m;
    (void)s;

    for (m = 0; m < 3; m++) {
        flow_ctx *c = ctx_new(rt);
        uint32_t stage = 0;
        fluxus_pipeline *p = limited_pipeline(rt, c, "rate_workers", l, UINT32_MAX, &stage);
        TU_OK(fluxus_stage_set_workers(p, stage, 2));
        TU_OK(fluxus_stage_set_order(p, stage, modes[m]));
        if (modes[m] == FLUXUS_ORDER_ORDERED) {
            tu_msg msg;
            TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &msg);
            assert_true(msg.text[0] != '\0');
            assert_int_equal(state_of(p), FLUXUS_STATE_BUILDING);
        } else {
            uint64_t i;
            TU_OK(fluxus_pipeline_start(p));
            for (i = 0; i < 20; i++) {
                push(p, i);
            }
            drive(rt);
            assert_int_equal(delivered(c), 20);
            close_and_finish(p, rt, c);
            tu_tracker_check_once(&c->t, 0, 20);
        }
        TU_OK(fluxus_pipeline_free(p));
        ctx_free(c);
    }
    TU_OK(fluxus_rate_limiter_free(l));
    TU_OK(fluxus_runtime_free(rt));
}

/* =============================================================================================
 * Rate limiter on a pull source
 * =========================================================================================== */

#define CALLS_MAX 64u

typedef struct timed_source {
    fluxus_runtime *rt;
    uint64_t n_items; /* items to produce before FLUXUS_PULL_END */
    uint64_t calls;
    uint64_t produced;
    uint64_t call_times[CALLS_MAX];
    uint32_t capacities[CALLS_MAX];
    uint32_t per_call; /* batch form: items produced per call (at most the capacity) */
} timed_source;

static int32_t timed_pull(void *user, uint64_t *item) {
    timed_source *s = (timed_source *)user;
    uint64_t i = TU_LOAD(&s->calls), now = 0;
    fluxus_runtime_now_ns(s->rt, &now);
    if (i < CALLS_MAX) {
        s->call_times[i] = now;
    }
    TU_STORE(&s->calls, i + 1);
    if (s->produced >= s->n_items) {
        return FLUXUS_PULL_END;
    }
    *item = s->produced++;
    return FLUXUS_PULL_ITEM;
}

static int32_t timed_pull_batch(void *user, uint64_t *items, uint32_t capacity, uint32_t *count) {
    timed_source *s = (timed_source *)user;
    uint64_t i = TU_LOAD(&s->calls), now = 0;
    uint32_t n = 0;
    fluxus_runtime_now_ns(s->rt, &now);
    if (i < CALLS_MAX) {
        s->call_times[i] = now;
        s->capacities[i] = capacity;
    }
    while (n < capacity && n < s->per_call && s->produced < s->n_items) {
        items[n++] = s->produced++;
    }
    *count = n;
    TU_STORE(&s->calls, i + 1);
    return s->produced >= s->n_items ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static void test_source_rate_limiter_calls_the_pull_source_once_per_token(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 2);
    fluxus_pipeline *p = tu_pipeline(rt, "source_rate", &c->t);
    timed_source src;
    uint64_t k;
    uint32_t steps = 0;
    (void)s;

    memset(&src, 0, sizeof src);
    src.rt = rt;
    src.n_items = 8;
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", timed_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_source_rate_limiter(p, l));
    TU_OK(fluxus_rate_limiter_free(l)); /* the pipeline keeps it */
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_source_rate_limiter(p, NULL));
    drive(rt);
    assert_int_equal(TU_LOAD(&src.calls), 2); /* the burst: two tokens */
    assert_int_equal(delivered(c), 2);
    for (k = 1; k <= 6; k++) {
        step_to(rt, k * 100 * MS - US);
        assert_int_equal(TU_LOAD(&src.calls), k + 1);
        step_to(rt, k * 100 * MS);
        assert_int_equal(TU_LOAD(&src.calls), k + 2);
        assert_int_equal(delivered(c), k + 2);
    }
    /* Call k (0-based) ran at max(0, k - 1) * 100 ms. */
    for (k = 0; k < 8; k++) {
        uint64_t want = T0 + (k == 0 ? 0 : (k - 1) * 100 * MS);
        if (src.call_times[k] != want) {
            fail_msg("source call %llu at T0+%llu ns, expected T0+%llu ns", (unsigned long long)k,
                     (unsigned long long)(src.call_times[k] - T0),
                     (unsigned long long)(want - T0));
        }
    }
    /* The call that reports the end needs a token too; then the pipeline finishes. */
    while (state_of(p) != FLUXUS_STATE_FINISHED) {
        assert_true(++steps <= 10);
        step(rt, 100 * MS);
    }
    assert_int_equal(TU_LOAD(&src.calls), 9);
    assert_int_equal(delivered(c), 8);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    tu_check_conservation(p, &c->t, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_source_rate_limiter_grants_a_batch_source_its_tokens_as_capacity(void **s) {
    fluxus_runtime *rt = vruntime();
    flow_ctx *c = ctx_new(rt);
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 4);
    fluxus_pipeline *p = tu_pipeline(rt, "source_rate_batch", &c->t);
    timed_source src;
    uint64_t i, calls_at_t0;
    (void)s;

    memset(&src, 0, sizeof src);
    src.rt = rt;
    src.n_items = 7;
    src.per_call = 3; /* takes 3 of the 4 tokens: the unused one is given back */
    TU_OK(fluxus_pipeline_set_pull_source_batch(p, "src", timed_pull_batch, &src, NULL));
    TU_OK(fluxus_pipeline_set_source_rate_limiter(p, l));
    add_log_sink(p, c);
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    calls_at_t0 = TU_LOAD(&src.calls);
    assert_true(calls_at_t0 >= 2);
    assert_int_equal(src.produced, 4); /* exactly the 4 tokens of the burst */
    assert_int_equal(delivered(c), 4);
    for (i = 0; i < calls_at_t0; i++) {
        assert_true(src.capacities[i] >= 1 && src.capacities[i] <= 4);
    }
    assert_int_equal(src.capacities[0], 4);
    step_to(rt, 100 * MS - US);
    assert_int_equal(src.produced, 4);
    step_to(rt, 100 * MS);
    assert_int_equal(src.produced, 5);
    assert_int_equal(src.capacities[TU_LOAD(&src.calls) - 1], 1);
    step_to(rt, 200 * MS);
    assert_int_equal(src.produced, 6);
    step_to(rt, 300 * MS);
    assert_int_equal(src.produced, 7);
    drive(rt);
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(delivered(c), 7);
    tu_check_conservation(p, &c->t, 0);
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_source_rate_limiter_on_a_push_source_is_refused_at_start(void **s) {
    fluxus_runtime *rt = vruntime();
    fluxus_rate_limiter *l = rate_limiter(rt, 10.0, 1);
    fluxus_pipeline *p = tu_pipeline(rt, "push_source_rate", NULL);
    tu_msg m;
    (void)s;

    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_set_source_rate_limiter(p, l));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, NULL, NULL));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &m);
    assert_true(m.text[0] != '\0');
    assert_int_equal(state_of(p), FLUXUS_STATE_BUILDING);
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_push(p, 1, 0));
    /* Removing the limiter makes it valid. */
    TU_OK(fluxus_pipeline_set_source_rate_limiter(p, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_close_input(p));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
}

/* =============================================================================================
 * Concurrency limiters shared by stages
 * =========================================================================================== */

typedef struct conc_ctx {
    int64_t active; /* callbacks started and not yet completed, across all stages */
    int64_t max_active;
    uint64_t started;
    uint64_t over_limit_seen; /* in_use() read above the limit from inside a callback */
    fluxus_concurrency_limiter *limiter;
    uint32_t limit;
} conc_ctx;

static void conc_enter(conc_ctx *cc) {
    int64_t a = __atomic_add_fetch(&cc->active, 1, __ATOMIC_SEQ_CST);
    int64_t m = __atomic_load_n(&cc->max_active, __ATOMIC_SEQ_CST);
    uint32_t used = 0;
    while (a > m &&
           !__atomic_compare_exchange_n(&cc->max_active, &m, a, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    TU_ADD(&cc->started, 1);
    if (fluxus_concurrency_limiter_get_in_use(&used, cc->limiter) != FLUXUS_OK ||
        used > TU_LOAD(&cc->limit)) {
        TU_ADD(&cc->over_limit_seen, 1);
    }
}

static void conc_leave(conc_ctx *cc) { __atomic_sub_fetch(&cc->active, 1, __ATOMIC_SEQ_CST); }

static uint32_t limiter_in_use(fluxus_concurrency_limiter *l) {
    uint32_t n = UINT32_MAX;
    TU_OK(fluxus_concurrency_limiter_get_in_use(&n, l));
    return n;
}

/* An async item being completed later by a timer or by the host. */
typedef struct pending_item {
    fluxus_pipeline *p;
    conc_ctx *cc;
    uint64_t completion;
    uint64_t item;
    uint64_t *complete_errors;
} pending_item;

/* Host-side completion queue (for the stage completed by a host thread). */
#define PENDING_MAX 1024u
typedef struct host_queue {
    pthread_mutex_t mu;
    pending_item items[PENDING_MAX];
    uint32_t n;
    uint64_t overflow;
} host_queue;

typedef struct async_stage_ctx {
    conc_ctx *cc;
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    host_queue *hq;        /* NULL: completed by a timer */
    uint64_t timer_delay_ns;
    uint64_t errors;       /* failed call_after / complete calls */
} async_stage_ctx;

static void complete_pending(pending_item *pi) {
    conc_leave(pi->cc); /* before completing: the permit is still held until the item went on */
    if (fluxus_pipeline_complete_async(pi->p, pi->completion, 0, pi->item) != FLUXUS_OK) {
        TU_ADD(pi->complete_errors, 1);
    }
}

static void timer_complete(void *user) { complete_pending((pending_item *)user); }

static void free_pending(void *user) { free(user); }

static int32_t limited_async(void *user, uint64_t item, uint64_t completion) {
    async_stage_ctx *a = (async_stage_ctx *)user;
    pending_item pi;
    conc_enter(a->cc);
    pi.p = a->p;
    pi.cc = a->cc;
    pi.completion = completion;
    pi.item = item;
    pi.complete_errors = &a->errors;
    if (a->hq == NULL) {
        pending_item *heap = (pending_item *)malloc(sizeof *heap);
        if (heap == NULL) {
            conc_leave(a->cc);
            return 1;
        }
        *heap = pi;
        if (fluxus_runtime_call_after(NULL, a->rt, a->timer_delay_ns, timer_complete, heap,
                                      free_pending) != FLUXUS_OK) {
            TU_ADD(&a->errors, 1);
            free(heap);
            conc_leave(a->cc);
            return 1;
        }
        return 0;
    }
    pthread_mutex_lock(&a->hq->mu);
    if (a->hq->n < PENDING_MAX) {
        a->hq->items[a->hq->n++] = pi;
        pthread_mutex_unlock(&a->hq->mu);
        return 0;
    }
    a->hq->overflow++;
    pthread_mutex_unlock(&a->hq->mu);
    conc_leave(a->cc);
    return 1;
}

/* Completes everything queued so far; returns how many. */
static uint32_t host_complete_all(host_queue *hq) {
    pending_item local[PENDING_MAX];
    uint32_t n, i;
    pthread_mutex_lock(&hq->mu);
    n = hq->n;
    memcpy(local, hq->items, n * sizeof local[0]);
    hq->n = 0;
    pthread_mutex_unlock(&hq->mu);
    for (i = 0; i < n; i++) {
        complete_pending(&local[i]);
    }
    return n;
}

typedef struct completer {
    host_queue *hq;
    int32_t stop;
    uint64_t completed;
} completer;

static void *completer_main(void *arg) {
    completer *w = (completer *)arg;
    while (!TU_LOAD(&w->stop)) {
        tu_sleep_us(300);
        TU_ADD(&w->completed, host_complete_all(w->hq));
    }
    TU_ADD(&w->completed, host_complete_all(w->hq));
    return NULL;
}

#define CONC_N 150u

static fluxus_pipeline *async_pipeline(fluxus_runtime *rt, tu_tracker *t, const char *name,
                                       tu_range_source *src, async_stage_ctx *a,
                                       fluxus_concurrency_limiter *l, uint32_t *stage) {
    fluxus_pipeline *p = tu_pipeline(rt, name, t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_async_map(stage, p, "service", limited_async, a, NULL));
    TU_OK(fluxus_stage_set_in_flight(p, *stage, 32)); /* the limiter, not this, is binding */
    TU_OK(fluxus_stage_set_order(p, *stage, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_concurrency_limiter(p, *stage, l));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, t, NULL));
    a->p = p;
    a->rt = rt;
    return p;
}

static void test_concurrency_limiter_shared_by_async_stages_of_two_pipelines(void **s) {
    fluxus_runtime *rt = tu_runtime(4);
    fluxus_concurrency_limiter *l = NULL;
    conc_ctx cc;
    host_queue *hq = (host_queue *)calloc(1, sizeof *hq);
    async_stage_ctx a1, a2;
    tu_tracker t1, t2;
    tu_range_source src1 = {0, CONC_N, 0}, src2 = {0, CONC_N, 0};
    fluxus_pipeline *p1, *p2;
    uint32_t st1 = 0, st2 = 0, max_seen_in_use = 0;
    completer w;
    pthread_t th;
    (void)s;

    assert_non_null(hq);
    TU_OK(fluxus_concurrency_limiter_new(&l, 3));
    memset(&cc, 0, sizeof cc);
    cc.limiter = l;
    cc.limit = 3;
    memset(&a1, 0, sizeof a1);
    memset(&a2, 0, sizeof a2);
    a1.cc = a2.cc = &cc;
    a1.timer_delay_ns = 300 * US; /* pipeline 1: completed by runtime timers */
    a2.hq = hq;                   /* pipeline 2: completed by a host thread */
    pthread_mutex_init(&hq->mu, NULL);
    tu_tracker_init(&t1, CONC_N);
    tu_tracker_init(&t2, CONC_N);
    p1 = async_pipeline(rt, &t1, "conc_timer", &src1, &a1, l, &st1);
    p2 = async_pipeline(rt, &t2, "conc_host", &src2, &a2, l, &st2);

    memset(&w, 0, sizeof w);
    w.hq = hq;
    assert_int_equal(pthread_create(&th, NULL, completer_main, &w), 0);
    TU_OK(fluxus_pipeline_start(p1));
    TU_OK(fluxus_pipeline_start(p2));
    {
        int32_t st_a = 0, st_b = 0;
        uint64_t t0 = tu_now_ms();
        do {
            uint32_t u = limiter_in_use(l);
            if (u > max_seen_in_use) {
                max_seen_in_use = u;
            }
            tu_sleep_us(100);
            TU_OK(fluxus_pipeline_get_state(&st_a, p1));
            TU_OK(fluxus_pipeline_get_state(&st_b, p2));
            if (tu_now_ms() - t0 > TU_WAIT_MS) {
                fail_msg("pipelines did not finish");
            }
        } while (st_a != FLUXUS_STATE_FINISHED || st_b != FLUXUS_STATE_FINISHED);
    }
    TU_EXPECT(FLUXUS_OK, tu_wait(p1));
    TU_EXPECT(FLUXUS_OK, tu_wait(p2));
    TU_STORE(&w.stop, 1);
    assert_int_equal(pthread_join(th, NULL), 0);

    if (TU_LOAD(&cc.max_active) > 3) {
        fail_msg("%lld calls were in progress at once with a shared limit of 3",
                 (long long)cc.max_active);
    }
    assert_int_equal(cc.max_active, 3); /* 300 items against 3 permits: the limit was reached */
    assert_true(max_seen_in_use <= 3);
    assert_int_equal(cc.over_limit_seen, 0);
    assert_int_equal(cc.started, 2 * CONC_N);
    assert_int_equal(cc.active, 0);
    assert_int_equal(a1.errors, 0);
    assert_int_equal(a2.errors, 0);
    assert_int_equal(hq->overflow, 0);
    assert_int_equal(w.completed, CONC_N);
    assert_int_equal(t1.delivered_total, CONC_N);
    assert_int_equal(t2.delivered_total, CONC_N);
    tu_tracker_check_once(&t1, 0, CONC_N);
    tu_tracker_check_once(&t2, 0, CONC_N);
    tu_check_conservation(p1, &t1, 0);
    tu_check_conservation(p2, &t2, 0);
    assert_int_equal(limiter_in_use(l), 0); /* every permit returned */
    TU_OK(fluxus_concurrency_limiter_free(l));
    TU_OK(fluxus_pipeline_free(p1));
    TU_OK(fluxus_pipeline_free(p2));
    TU_OK(fluxus_runtime_free(rt));
    pthread_mutex_destroy(&hq->mu);
    free(hq);
    tu_tracker_destroy(&t1);
    tu_tracker_destroy(&t2);
}

static void wait_started(conc_ctx *cc, uint64_t want) {
    wait_until_u64(&cc->started, want, "async calls started");
}

static void test_concurrency_limiter_set_max_at_run_time_lets_more_run(void **s) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_concurrency_limiter *l = NULL;
    conc_ctx cc;
    host_queue *hq = (host_queue *)calloc(1, sizeof *hq);
    async_stage_ctx a;
    tu_tracker t;
    fluxus_pipeline *p;
    uint32_t stage = 0;
    uint64_t i, t0;
    (void)s;

    assert_non_null(hq);
    pthread_mutex_init(&hq->mu, NULL);
    TU_OK(fluxus_concurrency_limiter_new(&l, 1));
    memset(&cc, 0, sizeof cc);
    cc.limiter = l;
    cc.limit = 1;
    memset(&a, 0, sizeof a);
    a.cc = &cc;
    a.hq = hq;
    tu_tracker_init(&t, 8);
    p = tu_pipeline(rt, "conc_set_max", &t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_async_map(&stage, p, "service", limited_async, &a, NULL));
    TU_OK(fluxus_stage_set_concurrency_limiter(p, stage, l));
    TU_OK(fluxus_concurrency_limiter_free(l)); /* the stage keeps it alive... */
    TU_OK(fluxus_concurrency_limiter_new(&l, 1)); /* ...so use a second one we can steer */
    cc.limiter = l;
    TU_OK(fluxus_stage_set_concurrency_limiter(p, stage, l)); /* replaces the first */
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    a.p = p;
    a.rt = rt;
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 8; i++) {
        push(p, i);
    }

    wait_started(&cc, 1);
    tu_sleep_us(50000);
    assert_int_equal(TU_LOAD(&cc.started), 1); /* one permit: one call */
    assert_int_equal(limiter_in_use(l), 1);

    TU_STORE(&cc.limit, 3);
    TU_OK(fluxus_concurrency_limiter_set_max(l, 3));
    wait_started(&cc, 3); /* the waiting stage is woken without any completion */
    tu_sleep_us(50000);
    assert_int_equal(TU_LOAD(&cc.started), 3);
    assert_int_equal(limiter_in_use(l), 3);

    /* Complete as they come until all 8 went through. */
    t0 = tu_now_ms();
    while (TU_LOAD(&t.delivered_total) < 8) {
        host_complete_all(hq);
        tu_sleep_us(200);
        if (tu_now_ms() - t0 > TU_WAIT_MS) {
            fail_msg("only %llu of 8 items delivered",
                     (unsigned long long)TU_LOAD(&t.delivered_total));
        }
    }
    TU_OK(fluxus_pipeline_close_input(p));
    TU_EXPECT(FLUXUS_OK, tu_wait(p));
    assert_int_equal(cc.started, 8);
    assert_true(cc.max_active <= 3);
    assert_int_equal(cc.max_active, 3);
    assert_int_equal(cc.over_limit_seen, 0);
    assert_int_equal(a.errors, 0);
    assert_int_equal(limiter_in_use(l), 0);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, 8);
    TU_OK(fluxus_concurrency_limiter_free(l));
    tu_free_all(p, rt);
    pthread_mutex_destroy(&hq->mu);
    free(hq);
    tu_tracker_destroy(&t);
}

#define SYNC_N 120u

static int32_t limited_sync_map(void *user, uint64_t in, uint64_t *out) {
    conc_ctx *cc = (conc_ctx *)user;
    int i;
    conc_enter(cc);
    /* Until the limit has been reached once, wait (up to 2 s) for a partner, so that reaching
     * it does not depend on how a loaded machine schedules the workers. */
    for (i = 0; i < 2000 && __atomic_load_n(&cc->max_active, __ATOMIC_SEQ_CST) < (int64_t)cc->limit;
         ++i) {
        tu_sleep_us(1000);
    }
    tu_sleep_us(1000);
    conc_leave(cc);
    *out = in;
    return 0;
}

static void test_concurrency_limiter_bounds_a_sync_stage_with_four_workers(void **s) {
    fluxus_runtime *rt = tu_runtime(4);
    fluxus_concurrency_limiter *l = NULL;
    conc_ctx cc;
    tu_tracker t;
    tu_range_source src = {0, SYNC_N, 0};
    fluxus_pipeline *p;
    uint32_t map = 0;
    (void)s;

    TU_OK(fluxus_concurrency_limiter_new(&l, 2));
    memset(&cc, 0, sizeof cc);
    cc.limiter = l;
    cc.limit = 2;
    tu_tracker_init(&t, SYNC_N);
    p = tu_pipeline(rt, "conc_sync", &t);
    TU_OK(fluxus_pipeline_set_batch_size(p, 1)); /* spread items over the workers */
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "service", limited_sync_map, &cc, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, 4));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_concurrency_limiter(p, map, l));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);

    if (cc.max_active > 2) {
        fail_msg("%lld map callbacks ran at once with a limit of 2", (long long)cc.max_active);
    }
    assert_int_equal(cc.max_active, 2); /* 4 workers and a full queue: the limit was reached */
    assert_int_equal(cc.over_limit_seen, 0);
    assert_int_equal(cc.started, SYNC_N);
    assert_int_equal(t.delivered_total, SYNC_N);
    assert_int_equal(limiter_in_use(l), 0);
    tu_check_conservation(p, &t, 0);
    tu_tracker_check_once(&t, 0, SYNC_N);
    TU_OK(fluxus_concurrency_limiter_free(l));
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* =============================================================================================
 * Real clock
 * =========================================================================================== */

static void test_source_rate_limit_holds_on_the_real_clock(void **s) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_rate_limiter *l = rate_limiter(rt, 200.0, 1);
    tu_tracker t;
    tu_range_source src = {0, 100, 0};
    fluxus_pipeline *p;
    uint64_t t0, elapsed;
    (void)s;

    tu_tracker_init(&t, 100);
    p = tu_pipeline(rt, "real_rate", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_source_rate_limiter(p, l));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    t0 = tu_now_ms();
    tu_run_expect(p, FLUXUS_OK);
    elapsed = tu_now_ms() - t0;
    /* 100 items at 200/s: the first at once, 99 more 5 ms apart, about 0.5 s. */
    if (elapsed < 350 || elapsed > 1500) {
        fail_msg("100 items at 200/s took %llu ms (expected about 500)",
                 (unsigned long long)elapsed);
    }
    assert_int_equal(t.delivered_total, 100);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_rate_limiter_free(l));
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_debounce_passes_an_item_once_its_key_was_quiet_for_exactly_the_period),
        cmocka_unit_test(test_debounce_newer_item_of_a_key_replaces_the_held_one),
        cmocka_unit_test(test_debounce_close_input_flushes_every_held_item_at_once),
        cmocka_unit_test(test_debounce_cancel_cancels_the_held_items),
        cmocka_unit_test(test_debounce_max_keys_sends_the_longest_held_key_on_early),
        cmocka_unit_test(test_debounce_and_throttle_option_errors),
        cmocka_unit_test(test_debounce_with_two_workers_on_a_threaded_runtime),
        cmocka_unit_test(test_throttle_passes_one_item_per_key_and_period),
        cmocka_unit_test(test_throttle_key_function_failure_fails_the_item_at_the_throttle),
        cmocka_unit_test(test_stage_rate_limiter_spaces_items_exactly_on_the_virtual_clock),
        cmocka_unit_test(test_stage_rate_limiter_keeps_limiting_after_its_handle_is_freed),
        cmocka_unit_test(test_set_rate_at_run_time_wakes_the_waiting_stage_on_the_virtual_clock),
        cmocka_unit_test(test_set_rate_at_run_time_wakes_the_waiting_stage_on_the_real_clock),
        cmocka_unit_test(test_stage_rate_limiter_at_rate_zero_lets_nothing_pass),
        cmocka_unit_test(test_stage_rate_limiter_at_rate_zero_then_cancel_cancels_the_waiting_items),
        cmocka_unit_test(test_stage_rate_limiter_wait_timeout_fails_items_with_elimited_at_once),
        cmocka_unit_test(
            test_stage_rate_limiter_wait_timeout_counts_from_the_next_token_under_backpressure),
        cmocka_unit_test(test_rate_limiter_on_the_other_kind_of_clock_is_refused_at_start),
        cmocka_unit_test(test_rate_limiter_on_another_virtual_clock_runtime_is_refused_at_start),
        cmocka_unit_test(test_rate_limited_stage_with_two_workers_must_not_be_ordered),
        cmocka_unit_test(test_source_rate_limiter_calls_the_pull_source_once_per_token),
        cmocka_unit_test(test_source_rate_limiter_grants_a_batch_source_its_tokens_as_capacity),
        cmocka_unit_test(test_source_rate_limiter_on_a_push_source_is_refused_at_start),
        cmocka_unit_test(test_concurrency_limiter_shared_by_async_stages_of_two_pipelines),
        cmocka_unit_test(test_concurrency_limiter_set_max_at_run_time_lets_more_run),
        cmocka_unit_test(test_concurrency_limiter_bounds_a_sync_stage_with_four_workers),
        cmocka_unit_test(test_source_rate_limit_holds_on_the_real_clock),
    };
    init_key_words();
    return TU_RUN_GROUP(tests);
}
