/*
 * Forced unwinds: a callback that ends its thread with pthread_exit() (as runtimes such as
 * Python do to their threads at exit) must not abort the process. The item in the callback stays
 * with the host (cancelled, not destroyed), the rest ends as cancelled, the pipeline ends with
 * FLUXUS_ECANCELED, and in threaded mode the runtime replaces the lost worker.
 * glibc behaviour: elsewhere pthread_exit() does not unwind, and this test is skipped.
 */
#include "test_util.h"

#include <pthread.h>
#include <stdlib.h>

#if defined(__linux__) && defined(__GLIBC__)

#define UNWIND_N 300u
#define UNWIND_AT 5u

typedef struct unwind_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
    uint32_t exited; /* pthread_exit was called once */
    uint32_t in_sink; /* 1: the sink ends the thread, 0: the map does */
} unwind_ctx;

static void maybe_exit(unwind_ctx *c, uint64_t item) {
    if (item == UNWIND_AT && __atomic_exchange_n(&c->exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

static int32_t unwind_map(void *user, uint64_t in, uint64_t *out) {
    unwind_ctx *c = (unwind_ctx *)user;
    if (!c->in_sink) {
        maybe_exit(c, in);
    }
    *out = in;
    return 0;
}

static int32_t unwind_sink(void *user, uint64_t item) {
    unwind_ctx *c = (unwind_ctx *)user;
    if (c->in_sink) {
        maybe_exit(c, item);
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void *drive(void *arg) {
    /* Runs the pipeline on this host thread until a callback ends the thread. */
    (void)fluxus_pipeline_wait((fluxus_pipeline *)arg, TU_WAIT_MS);
    return NULL;
}

static void check_outcome(unwind_ctx *c) {
    fluxus_pipeline_stats s;
    tu_stats(c->p, &s);
    assert_int_equal(TU_LOAD(&c->exited), 1);
    /* The item the host held when its thread ended: neither delivered nor destroyed. */
    assert_int_equal(TU_LOAD(&c->t.delivered[UNWIND_AT]), 0);
    assert_int_equal(TU_LOAD(&c->t.freed[UNWIND_AT]), 0);
    assert_true(s.cancelled >= 1);
    assert_int_equal(s.failed, 0);
    tu_check_conservation(c->p, &c->t, 1);
    tu_tracker_check_once(&c->t, 0, UNWIND_AT);
    tu_tracker_check_once(&c->t, UNWIND_AT + 1, s.admitted);
}

static fluxus_pipeline *unwind_pipeline(fluxus_runtime *rt, unwind_ctx *c, tu_range_source *src,
                                        int32_t fusion, uint32_t batch) {
    fluxus_pipeline *p = tu_pipeline(rt, "unwind", &c->t);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_batch_size(p, batch));
    TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "map", unwind_map, c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", unwind_sink, c, NULL));
    return p;
}

/* Host-driven: the host thread running the pipeline is ended inside a callback. */
static void test_pthread_exit_on_host_thread(void **state) {
    static const uint32_t batches[] = {1, 64};
    int32_t fusion;
    uint32_t in_sink;
    size_t b;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        for (in_sink = 0; in_sink <= 1; in_sink++) {
            for (b = 0; b < 2; b++) {
                unwind_ctx c;
                tu_range_source src = {0, UNWIND_N, 0};
                fluxus_runtime *rt = tu_runtime(0);
                pthread_t host;
                memset(&c, 0, sizeof c);
                c.in_sink = in_sink;
                tu_tracker_init(&c.t, UNWIND_N);
                c.p = unwind_pipeline(rt, &c, &src, fusion, batches[b]);
                TU_OK(fluxus_pipeline_start(c.p));
                assert_int_equal(pthread_create(&host, NULL, drive, c.p), 0);
                assert_int_equal(pthread_join(host, NULL), 0);
                /* Another host thread finishes the cancelled pipeline. */
                TU_EXPECT(FLUXUS_ECANCELED, tu_wait(c.p));
                check_outcome(&c);
                tu_free_all(c.p, rt);
                tu_tracker_destroy(&c.t);
            }
        }
    }
}

/* Threaded: a worker thread is ended; the runtime replaces it and keeps running pipelines. */
static void test_pthread_exit_on_worker_thread(void **state) {
    int32_t fusion;
    uint32_t in_sink;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        for (in_sink = 0; in_sink <= 1; in_sink++) {
            unwind_ctx c, after;
            tu_range_source src = {0, UNWIND_N, 0}, src2 = {0, UNWIND_N, 0};
            fluxus_runtime *rt = tu_runtime(1); /* one worker: it must be replaced */
            fluxus_pipeline *p2;
            fluxus_pipeline_stats s;
            memset(&c, 0, sizeof c);
            c.in_sink = in_sink;
            tu_tracker_init(&c.t, UNWIND_N);
            c.p = unwind_pipeline(rt, &c, &src, fusion, 16);
            tu_run_expect(c.p, FLUXUS_ECANCELED);
            check_outcome(&c);
            TU_OK(fluxus_pipeline_free(c.p));

            memset(&after, 0, sizeof after);
            after.exited = 1; /* nobody exits this time */
            tu_tracker_init(&after.t, UNWIND_N);
            p2 = unwind_pipeline(rt, &after, &src2, fusion, 16);
            after.p = p2;
            tu_run_expect(p2, FLUXUS_OK);
            tu_stats(p2, &s);
            assert_int_equal(s.delivered, UNWIND_N);
            tu_free_all(p2, rt);
            tu_tracker_destroy(&c.t);
            tu_tracker_destroy(&after.t);
        }
    }
}

/* A stage with several workers shares its batches (issue 13): a worker whose thread ends in the
 * middle of a shared batch hands its unstarted claim back, and every item still ends once. */
static void test_pthread_exit_in_a_shared_batch(void **state) {
    static const uint32_t workers[] = {2, 4};
    size_t w;
    int32_t ordered;
    (void)state;
    for (w = 0; w < 2; w++) {
        for (ordered = 0; ordered <= 1; ordered++) {
            unwind_ctx c;
            tu_range_source src = {0, UNWIND_N, 0};
            fluxus_runtime *rt = tu_runtime(workers[w] + 1);
            uint32_t m;
            memset(&c, 0, sizeof c);
            tu_tracker_init(&c.t, UNWIND_N);
            c.p = tu_pipeline(rt, "unwind-shared", &c.t);
            TU_OK(fluxus_pipeline_set_pull_source(c.p, "in", tu_range_pull, &src, NULL));
            TU_OK(fluxus_pipeline_add_map(&m, c.p, "map", unwind_map, &c, NULL));
            TU_OK(fluxus_stage_set_workers(c.p, m, workers[w]));
            TU_OK(fluxus_stage_set_order(c.p, m,
                                         ordered ? FLUXUS_ORDER_ORDERED : FLUXUS_ORDER_UNORDERED));
            TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "sink", unwind_sink, &c, NULL));
            tu_run_expect(c.p, FLUXUS_ECANCELED);
            check_outcome(&c);
            tu_free_all(c.p, rt);
            tu_tracker_destroy(&c.t);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Every callback kind (issue 13 part 4): a table of pipelines, each with one callback that ends
 * its thread when it meets item K_AT (or on its K_AT-th call). The items in that call stay with
 * the host (`held`: counted cancelled, never destroyed); every other admitted item is delivered
 * or destroyed exactly once; the stats add up; the runtime runs another pipeline afterwards.
 * Each case runs on a host thread (host-driven runtime) and on the one worker of a threaded
 * runtime (which must be replaced).
 */

#define K_N 300u
#define K_AT 37u
#define K_OUT 1000000u /* items made by stages (accumulators, window outputs): out of range */

typedef struct kind_ctx {
    tu_tracker t;
    fluxus_pipeline *p;
    uint32_t exited;
    uint32_t calls;         /* calls of the trapped callback kind (for counted traps) */
    uint8_t held[K_N];      /* items the host kept when its thread ended */
    uint32_t held_count;
    uint64_t next;          /* sources */
    uint64_t cursor_commits;
    uint64_t last_key_item; /* the item the key function saw last */
    uint64_t pair_keys[K_N];
} kind_ctx;

static kind_ctx g_k;

/* Ends the thread once, holding items[0..n) (those in range). */
static void k_exit_holding(const uint64_t *items, uint32_t n) {
    uint32_t i;
    if (__atomic_exchange_n(&g_k.exited, 1, __ATOMIC_SEQ_CST) != 0) {
        return;
    }
    for (i = 0; i < n; i++) {
        if (items[i] < K_N && !g_k.held[items[i]]) {
            g_k.held[items[i]] = 1;
            g_k.held_count++;
        }
    }
    pthread_exit(NULL);
}

static int k_hits(const uint64_t *items, uint32_t n) {
    uint32_t i;
    if (TU_LOAD(&g_k.exited)) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (items[i] == K_AT) {
            return 1;
        }
    }
    return 0;
}

static void k_trap(uint64_t item) {
    if (item == K_AT) {
        k_exit_holding(&item, 1);
    }
}

/* The at-th call of a callback that holds no item. */
static void k_trap_call(uint32_t at) {
    if (TU_ADD(&g_k.calls, 1) == at && __atomic_exchange_n(&g_k.exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

static int32_t k_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    k_trap(in);
    *out = in;
    return 0;
}

static int32_t k_filter(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    k_trap(item);
    *keep = 1;
    return 0;
}

static int32_t k_sink(void *user, uint64_t item) {
    (void)user;
    tu_tracker_deliver(&g_k.t, item);
    return 0;
}

static int32_t k_map_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                           uint32_t n) {
    (void)user;
    (void)status;
    if (k_hits(in, n)) {
        k_exit_holding(in, n);
    }
    memcpy(out, in, n * sizeof *in);
    return 0;
}

static int32_t k_filter_batch(void *user, const uint64_t *in, int32_t *keep, int32_t *status,
                              uint32_t n) {
    uint32_t i;
    (void)user;
    (void)status;
    if (k_hits(in, n)) {
        k_exit_holding(in, n);
    }
    for (i = 0; i < n; i++) {
        keep[i] = 1;
    }
    return 0;
}

static int32_t k_sink_batch(void *user, const uint64_t *in, int32_t *status, uint32_t n) {
    uint32_t i;
    (void)user;
    (void)status;
    if (k_hits(in, n)) {
        k_exit_holding(in, n);
    }
    for (i = 0; i < n; i++) {
        tu_tracker_deliver(&g_k.t, in[i]);
    }
    return 0;
}

/* Flat map: passes each item on as a new item (K_OUT + item), keeping nothing; the trapped call
 * emits first, then ends the thread. */
static int32_t k_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    (void)user;
    if (fluxus_emitter_emit(em, K_OUT + item) != FLUXUS_OK) {
        return -1;
    }
    k_trap(item);
    return 0;
}

static int32_t k_flat_map_batch(void *user, const uint64_t *items, uint32_t n, fluxus_emitter *em) {
    uint32_t i;
    (void)user;
    for (i = 0; i < n; i++) {
        if (fluxus_emitter_emit(em, K_OUT + items[i]) != FLUXUS_OK) {
            return -1;
        }
    }
    if (k_hits(items, n)) {
        k_exit_holding(items, n);
    }
    return 0;
}

static int32_t k_key(void *user, uint64_t item, const void **key, size_t *len) {
    static const uint8_t keys[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    (void)user;
    k_trap(item);
    *key = &keys[item % 8u];
    *len = 1;
    return 0;
}

static int32_t k_async_start(void *user, uint64_t item, uint64_t completion) {
    (void)user;
    k_trap(item);
    return fluxus_pipeline_complete_async(g_k.p, completion, 0, item);
}

static int32_t k_async_complete_inline(void *user, uint64_t item, uint64_t completion) {
    (void)user;
    return fluxus_pipeline_complete_async(g_k.p, completion, 0, item);
}

static int32_t k_reduce(void *user, uint64_t *acc, int32_t first, uint64_t item) {
    (void)user;
    (void)first;
    k_trap(item);
    *acc = K_OUT + item % 8u;
    return 0;
}

static int32_t k_window(void *user, const uint64_t *items, uint32_t n, uint64_t start_ns,
                        fluxus_emitter *em) {
    (void)user;
    (void)start_ns;
    if (fluxus_emitter_emit(em, K_OUT + items[0]) != FLUXUS_OK) {
        return -1;
    }
    if (k_hits(items, n)) {
        k_exit_holding(items, n);
    }
    return 0;
}

/* A sliding window's emitted items are in [5 K_OUT, 6 K_OUT): on cancel those not yet sent on
 * are released without being admitted (not counted by k_free). */
static int32_t k_window_sliding(void *user, const uint64_t *items, uint32_t n, uint64_t start_ns,
                                fluxus_emitter *em) {
    (void)user;
    (void)start_ns;
    if (fluxus_emitter_emit(em, 5u * K_OUT + items[0]) != FLUXUS_OK) {
        return -1;
    }
    if (k_hits(items, n)) {
        k_exit_holding(items, n);
    }
    return 0;
}

static int32_t k_join_input(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    k_trap(item);
    *input = (uint32_t)(item % 2u);
    return 0;
}

static int32_t k_load(void *user, const uint64_t *items, uint32_t n, uint64_t *results,
                      int32_t *status) {
    uint32_t i;
    (void)user;
    (void)status;
    if (k_hits(items, n)) {
        k_exit_holding(items, n);
    }
    for (i = 0; i < n; i++) {
        results[i] = 3u * K_OUT + items[i];
    }
    return 0;
}

static int32_t k_attach(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    (void)user;
    (void)result;
    k_trap(item);
    *out = item;
    return 0;
}

static int32_t k_route(void *user, uint64_t item, uint32_t *routes, uint32_t cap, uint32_t *count) {
    (void)user;
    (void)cap;
    k_trap(item);
    routes[0] = (uint32_t)(item % 2u);
    *count = 1;
    return 0;
}

static int32_t k_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    k_trap(item);
    *copy = K_OUT + item;
    return 0;
}

/* Sources: 0, 1, ..., K_N - 1. The trapped ones end the thread on the call that would give
 * K_AT (that item never reaches fluxus: nothing is held). */
static int32_t k_pull(void *user, uint64_t *item) {
    (void)user;
    if (g_k.next >= K_N) {
        return FLUXUS_PULL_END;
    }
    *item = g_k.next++;
    return FLUXUS_PULL_ITEM;
}

static int32_t k_pull_trap(void *user, uint64_t *item) {
    (void)user;
    if (g_k.next >= K_N) {
        return FLUXUS_PULL_END;
    }
    if (g_k.next == K_AT) {
        k_exit_holding(NULL, 0);
    }
    *item = g_k.next++;
    return FLUXUS_PULL_ITEM;
}

static int32_t k_pull_batch_trap(void *user, uint64_t *items, uint32_t cap, uint32_t *count) {
    uint32_t n = 0;
    (void)user;
    if (g_k.next >= K_N) {
        *count = 0;
        return FLUXUS_PULL_END;
    }
    if (g_k.next > K_AT - 8u && !TU_LOAD(&g_k.exited)) {
        k_exit_holding(NULL, 0);
    }
    while (n < cap && n < 8u && g_k.next < K_N) {
        items[n++] = g_k.next++;
    }
    *count = n;
    return FLUXUS_PULL_ITEM;
}

static int32_t k_cursor_read(void *user, uint64_t cursor, uint64_t *items, uint32_t cap,
                             uint32_t *count, uint64_t *next) {
    uint32_t n = 0;
    (void)user;
    if (cursor >= K_N) {
        *count = 0;
        return FLUXUS_PULL_END;
    }
    if (cursor > K_AT - 8u && !TU_LOAD(&g_k.exited) && g_k.calls == 0) {
        k_exit_holding(NULL, 0);
    }
    while (n < cap && n < 8u && cursor + n < K_N) {
        items[n] = cursor + n;
        n++;
    }
    *count = n;
    *next = cursor + n;
    return FLUXUS_PULL_ITEM;
}

static int32_t k_cursor_read_plain(void *user, uint64_t cursor, uint64_t *items, uint32_t cap,
                                   uint32_t *count, uint64_t *next) {
    uint32_t n = 0;
    (void)user;
    if (cursor >= K_N) {
        *count = 0;
        return FLUXUS_PULL_END;
    }
    while (n < cap && n < 8u && cursor + n < K_N) {
        items[n] = cursor + n;
        n++;
    }
    *count = n;
    *next = cursor + n;
    return FLUXUS_PULL_ITEM;
}

static uint64_t k_cursor_page(void *user, uint64_t item) {
    (void)user;
    return item / 8u;
}

static uint64_t k_cursor_page_trap(void *user, uint64_t item) {
    (void)user;
    k_trap(item);
    return item / 8u;
}

static void k_cursor_commit_trap(void *user, uint64_t cursor) {
    (void)user;
    (void)cursor;
    TU_ADD(&g_k.cursor_commits, 1);
    k_trap_call(3);
}

static void k_cursor_commit(void *user, uint64_t cursor) {
    (void)user;
    (void)cursor;
}

/* The item destructor ends the thread while it destroys K_AT: that item has ended (it was given
 * to the destructor), nothing is held. */
static void k_item_free(void *user, uint64_t item) {
    tu_item_free(user, item);
    if (item == K_AT && __atomic_exchange_n(&g_k.exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

static int32_t k_filter_odd(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    *keep = (int32_t)(item % 2u == 0); /* K_AT (odd) is dropped: destroyed */
    return 0;
}

static int32_t k_map_fail_odd(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return in % 2u ? -5 : 0;
}

static int32_t k_map_batch_fail_all(void *user, const uint64_t *in, uint64_t *out,
                                    int32_t *status, uint32_t n) {
    (void)user;
    (void)in;
    (void)out;
    (void)status;
    (void)n;
    return -5;
}

/* Cancels the pipeline at item 33: the rest of its batch is cancelled in bulk, and the item
 * destructor ends the thread at K_AT among them. */
static int32_t k_map_cancel(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in == 33u) {
        (void)fluxus_pipeline_cancel(g_k.p);
    }
    *out = in;
    return 0;
}

static void k_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    (void)user;
    (void)f;
    k_trap(item);
}

static int32_t k_retry_pred(void *user, uint64_t item, int32_t status, uint32_t attempt) {
    (void)user;
    (void)status;
    (void)attempt;
    k_trap(item);
    return 0;
}


/* Untrapped variants, for the cases that trap another callback of the same stage. */
static int32_t k_key_plain(void *user, uint64_t item, const void **key, size_t *len) {
    static const uint8_t keys[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    (void)user;
    g_k.last_key_item = item;
    *key = &keys[item % 8u];
    *len = 1;
    return 0;
}

/* Join pairs: items 2k and 2k + 1 share a key, on inputs 0 and 1. */
static int32_t k_key_pair(void *user, uint64_t item, const void **key, size_t *len) {
    (void)user;
    g_k.pair_keys[item % K_N] = item / 2u;
    *key = &g_k.pair_keys[item % K_N];
    *len = sizeof(uint64_t);
    return 0;
}

static int32_t k_join_input_plain(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    *input = (uint32_t)(item % 2u);
    return 0;
}

static int32_t k_reduce_plain(void *user, uint64_t *acc, int32_t first, uint64_t item) {
    (void)user;
    (void)first;
    *acc = K_OUT + item % 8u;
    return 0;
}

static int32_t k_window_plain(void *user, const uint64_t *items, uint32_t n, uint64_t start_ns,
                              fluxus_emitter *em) {
    (void)user;
    (void)n;
    (void)start_ns;
    return fluxus_emitter_emit(em, K_OUT + items[0]) == FLUXUS_OK ? 0 : -1;
}

static int32_t k_load_plain(void *user, const uint64_t *items, uint32_t n, uint64_t *results,
                            int32_t *status) {
    uint32_t i;
    (void)user;
    (void)status;
    for (i = 0; i < n; i++) {
        results[i] = 3u * K_OUT + items[i]; /* loaded results: fluxus's, never admitted */
    }
    return 0;
}

static int32_t k_attach_plain(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    (void)user;
    (void)result;
    *out = item;
    return 0;
}

/* Cache copies: a copy of a value v is 2 K_OUT + v. Copies the cache keeps are in
 * [2 K_OUT, 3 K_OUT) (never admitted); copies handed out for hits are admitted items. The
 * trapped one ends the thread on the K_AT-th copy for a hit, holding that hit's input. */
static int32_t k_copy_value(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    if (item >= 2u * K_OUT && TU_ADD(&g_k.calls, 1) == K_AT) {
        uint64_t held = g_k.last_key_item;
        k_exit_holding(&held, 1);
    }
    *copy = 2u * K_OUT + item;
    return 0;
}

static int32_t k_copy_plain(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    *copy = 2u * K_OUT + item;
    return 0;
}

static int32_t k_map_batch_plain(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                                 uint32_t n) {
    (void)user;
    (void)status;
    memcpy(out, in, n * sizeof *in);
    return 0;
}

static int32_t k_map_batch_fail_odd(void *user, const uint64_t *in, uint64_t *out,
                                    int32_t *status, uint32_t n) {
    uint32_t i;
    (void)user;
    for (i = 0; i < n; i++) {
        out[i] = in[i];
        status[i] = in[i] % 2u ? -5 : 0;
    }
    return 0;
}

/* The destructor of the case pipelines: values the cache or a loader keeps (never admitted)
 * are not counted, so the conservation check sees items only. */
static void k_free(void *user, uint64_t item) {
    if ((item >= 2u * K_OUT && item < 4u * K_OUT) || item >= 5u * K_OUT) {
        return;
    }
    tu_item_free(user, item);
}

/* Each builder adds everything after the source (which the runner sets, unless the builder
 * does) and ends in a sink. */
typedef void (*k_build_fn)(fluxus_pipeline *p);

static void b_filter(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_filter(NULL, p, "f", k_filter, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_map_batch(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_map_batch(NULL, p, "mb", k_map_batch, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_map_batch_ordered_workers(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map_batch(&s, p, "mb", k_map_batch, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, s, 2));
    TU_OK(fluxus_stage_set_order(p, s, FLUXUS_ORDER_ORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_flat_map_workers(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_flat_map(&s, p, "fm", k_flat_map, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, s, 2));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_filter_batch(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_filter_batch(NULL, p, "fb", k_filter_batch, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_sink_batch(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink_batch(NULL, p, "sb", k_sink_batch, NULL, NULL));
}
static void b_flat_map(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_flat_map(NULL, p, "fm", k_flat_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_flat_map_batch(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_flat_map_batch(NULL, p, "fmb", k_flat_map_batch, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_batch(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_batch(NULL, p, "batch", 10, 0, k_flat_map_batch, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_dedup_key(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&s, p, "dedup"));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_throttle_key(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_throttle(&s, p, "throttle", 1000000));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_async_start(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_async_map(NULL, p, "async", k_async_start, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_async_behind(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_async_map(NULL, p, "async", k_async_complete_inline, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", k_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_reduce(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_reduce(NULL, p, "reduce", k_reduce, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_reduce_key(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_reduce(&s, p, "reduce", k_reduce_plain, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_window_count(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_window(NULL, p, "win", FLUXUS_WINDOW_COUNT, 4, k_window, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_window_session(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_window(&s, p, "win", FLUXUS_WINDOW_SESSION, 1000, k_window, NULL,
                                     NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_window_time(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_window(NULL, p, "win", FLUXUS_WINDOW_TIME, 1000, k_window, NULL,
                                     NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_window_key(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_window(&s, p, "win", FLUXUS_WINDOW_COUNT, 4, k_window_plain, NULL,
                                     NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_sliding(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_sliding_window(&s, p, "slide", FLUXUS_WINDOW_COUNT, 4, 2,
                                             k_window_sliding, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_debounce_key(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_debounce(&s, p, "debounce", 100));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_join_input(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_join(&s, p, "join", 2, k_join_input, k_window_plain, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key_pair, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_join_fn(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_join(&s, p, "join", 2, k_join_input_plain, k_window, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key_pair, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_loader_load(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_loader(NULL, p, "loader", 16, 0, k_load, k_attach_plain, NULL,
                                     NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_loader_attach(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_loader(NULL, p, "loader", 16, 0, k_load_plain, k_attach, NULL,
                                     NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_cache_copy(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, s, 64, 0, k_copy_value, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_cache_map(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", k_map, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, s, 64, 0, k_copy_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_router(fluxus_pipeline *p) {
    uint32_t r, a, b, sink;
    TU_OK(fluxus_pipeline_add_router(&r, p, "router", k_route, NULL, NULL));
    TU_OK(fluxus_stage_add_route(&a, p, r, "even"));
    TU_OK(fluxus_stage_add_route(&b, p, r, "odd"));
    TU_OK(fluxus_pipeline_branch(p, r, a));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", k_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_connect(p, r, b, sink));
}
static void b_broadcast_copy(fluxus_pipeline *p) {
    uint32_t r, a, b, sink;
    TU_OK(fluxus_pipeline_add_broadcast(&r, p, "bcast"));
    TU_OK(fluxus_stage_add_route(&a, p, r, "one"));
    TU_OK(fluxus_stage_add_route(&b, p, r, "two"));
    TU_OK(fluxus_stage_set_copy(p, r, k_copy, NULL, NULL));
    TU_OK(fluxus_pipeline_branch(p, r, a));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", k_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_connect(p, r, b, sink));
}
static void b_plain_chain(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_plain_batch_stage(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_map_batch(NULL, p, "mb", k_map_batch_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_trap_map(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", k_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_extra_source(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_add_source(NULL, p, "extra", k_pull_trap, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_keyed_lanes(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&s, p, "dedup"));
    TU_OK(fluxus_stage_set_workers(p, s, 2));
    TU_OK(fluxus_stage_set_key_fn(p, s, k_key, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_item_free(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_set_item_free(p, k_item_free, &g_k.t, NULL));
    TU_OK(fluxus_pipeline_add_filter(NULL, p, "odd", k_filter_odd, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_item_free_batch(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_set_item_free(p, k_item_free, &g_k.t, NULL));
    TU_OK(fluxus_pipeline_add_filter(NULL, p, "odd", k_filter_odd, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(NULL, p, "mb", k_map_batch_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_item_free_batch_failure(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_set_item_free(p, k_item_free, &g_k.t, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(&s, p, "mb", k_map_batch_fail_all, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_item_free_in_cancel(fluxus_pipeline *p) {
    TU_OK(fluxus_pipeline_set_item_free(p, k_item_free, &g_k.t, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(NULL, p, "mb", k_map_batch_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", k_map_cancel, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_dead_letter(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_set_dead_letter(p, k_dead_letter, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", k_map_fail_odd, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_dead_letter_batch(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_set_dead_letter(p, k_dead_letter, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(&s, p, "mb", k_map_batch_fail_odd, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_retry_pred(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", k_map_fail_odd, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_stage_set_retry(p, s, 3, FLUXUS_BACKOFF_CONSTANT, 1, 1));
    TU_OK(fluxus_stage_set_retry_predicate(p, s, k_retry_pred, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}


/* ----- callbacks that hold no item ----- */

static void k_log_trap(void *user, int32_t level, const char *pipeline, const char *stage,
                       const char *message) {
    (void)user;
    (void)level;
    (void)pipeline;
    (void)stage;
    (void)message;
    k_trap_call(1);
}

static int32_t k_worker_init_trap(void *user, uint32_t worker) {
    (void)user;
    (void)worker;
    k_trap_call(1);
    return 0;
}

static void k_worker_close_trap(void *user, uint32_t worker) {
    (void)user;
    (void)worker;
    k_trap_call(1);
}

static void k_breaker_state_trap(void *user, int32_t from, int32_t to) {
    (void)user;
    (void)from;
    (void)to;
    k_trap_call(1);
}

static void k_route_observer(void *user, uint64_t item, const fluxus_failure *f) {
    (void)user;
    (void)f;
    k_trap(item);
}

/* Async: items from 40 on are kept by the host (never completed); item 45 cancels the pipeline
 * from a map in front, and the cancel hook, told of the abandoned items, ends the thread. */
static int32_t k_async_keep(void *user, uint64_t item, uint64_t completion) {
    (void)user;
    if (item >= 40u) {
        g_k.held[item] = 1;
        g_k.held_count++;
        return 0;
    }
    return fluxus_pipeline_complete_async(g_k.p, completion, 0, item);
}

static int32_t k_sink_cancel_at_39(void *user, uint64_t item) {
    (void)user;
    tu_tracker_deliver(&g_k.t, item);
    if (item == 39u) {
        (void)fluxus_pipeline_cancel(g_k.p);
    }
    return 0;
}

/* Fails items 30..49: a run of failures that opens a breaker. */
static int32_t k_map_fail_run(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return in >= 30u && in < 50u ? -5 : 0;
}

static void k_async_cancel_trap(void *user, uint64_t item, uint64_t completion, int32_t why) {
    (void)user;
    (void)item;
    (void)completion;
    (void)why;
    k_trap_call(1);
}

static fluxus_circuit_breaker *g_breaker;

static void b_log(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", k_map_fail_odd, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_worker_init(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_worker_hooks(p, s, k_worker_init_trap, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_worker_close(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_worker_hooks(p, s, NULL, k_worker_close_trap));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_breaker_state(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", k_map_fail_run, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_stage_set_circuit_breaker(p, s, g_breaker, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_async_cancel(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_async_map(&s, p, "async", k_async_keep, NULL, NULL));
    TU_OK(fluxus_stage_set_async_cancel(p, s, k_async_cancel_trap, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink_cancel_at_39, NULL, NULL));
}
static void b_async_timeout(fluxus_pipeline *p) {
    uint32_t s;
    TU_OK(fluxus_pipeline_add_async_map(&s, p, "async", k_async_keep, NULL, NULL));
    TU_OK(fluxus_stage_set_timeout_us(p, s, 1000));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_stage_set_async_cancel(p, s, k_async_cancel_trap, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", k_sink, NULL, NULL));
}
static void b_route_observer(fluxus_pipeline *p) {
    uint32_t s, sink;
    TU_OK(fluxus_pipeline_set_route_observer(p, k_route_observer, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", k_map_fail_odd, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, s, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", k_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_connect(p, s, FLUXUS_OUTLET_ERROR, sink));
}

/* Runtime set-up of the cases that need it. */
static void r_log(fluxus_runtime *rt) {
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_DEBUG, k_log_trap, NULL, NULL));
}
static void r_breaker(fluxus_runtime *rt) {
    TU_OK(fluxus_circuit_breaker_new(&g_breaker, rt));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(g_breaker, 3));
    TU_OK(fluxus_circuit_breaker_set_state_callback(g_breaker, k_breaker_state_trap, NULL, NULL));
}

/* Sources. */
enum { SRC_PULL, SRC_PULL_TRAP, SRC_PULL_BATCH_TRAP, SRC_CURSOR_TRAP, SRC_CURSOR_PAGE_TRAP,
       SRC_CURSOR_COMMIT_TRAP, SRC_CURSOR, SRC_NONE };

static void k_set_source(fluxus_pipeline *p, int src) {
    switch (src) {
    case SRC_PULL_TRAP:
        TU_OK(fluxus_pipeline_set_pull_source(p, "in", k_pull_trap, NULL, NULL));
        break;
    case SRC_PULL_BATCH_TRAP:
        TU_OK(fluxus_pipeline_set_pull_source_batch(p, "in", k_pull_batch_trap, NULL, NULL));
        break;
    case SRC_CURSOR_TRAP:
        TU_OK(fluxus_pipeline_set_cursor_source(p, "in", 0, k_cursor_read, k_cursor_page,
                                                k_cursor_commit, NULL, NULL));
        break;
    case SRC_CURSOR_PAGE_TRAP:
        TU_OK(fluxus_pipeline_set_cursor_source(p, "in", 0, k_cursor_read_plain,
                                                k_cursor_page_trap, k_cursor_commit, NULL, NULL));
        break;
    case SRC_CURSOR_COMMIT_TRAP:
        TU_OK(fluxus_pipeline_set_cursor_source(p, "in", 0, k_cursor_read_plain, k_cursor_page,
                                                k_cursor_commit_trap, NULL, NULL));
        break;
    case SRC_CURSOR:
        TU_OK(fluxus_pipeline_set_cursor_source(p, "in", 0, k_cursor_read_plain, k_cursor_page,
                                                k_cursor_commit, NULL, NULL));
        break;
    case SRC_NONE:
        break;
    default:
        TU_OK(fluxus_pipeline_set_pull_source(p, "in", k_pull, NULL, NULL));
        break;
    }
}

typedef struct kind_case {
    const char *name;
    int source;
    k_build_fn build;
    uint32_t batch; /* pipeline batch size (0: default) */
    int consumes;   /* the stage destroys inputs it answers with new items (a cache hit): the
                       destructor total does not follow from the stats */
    int may_finish; /* the callback runs after the last item: FLUXUS_OK is right too */
    void (*rt_setup)(fluxus_runtime *rt);
} kind_case;

static const kind_case k_cases[] = {
    {"filter", SRC_PULL, b_filter, 16, 0, 0, NULL},
    {"map batch", SRC_PULL, b_map_batch, 16, 0, 0, NULL},
    {"filter batch", SRC_PULL, b_filter_batch, 16, 0, 0, NULL},
    {"map batch (2 workers, ordered)", SRC_PULL, b_map_batch_ordered_workers, 16, 0, 0, NULL},
    {"flat map (2 workers)", SRC_PULL, b_flat_map_workers, 16, 0, 0, NULL},
    {"sink batch", SRC_PULL, b_sink_batch, 16, 0, 0, NULL},
    {"flat map", SRC_PULL, b_flat_map, 16, 0, 0, NULL},
    {"flat map batch", SRC_PULL, b_flat_map_batch, 16, 0, 0, NULL},
    {"batch stage", SRC_PULL, b_batch, 16, 0, 0, NULL},
    {"dedup key fn", SRC_PULL, b_dedup_key, 16, 0, 0, NULL},
    {"throttle key fn", SRC_PULL, b_throttle_key, 16, 0, 0, NULL},
    {"async start", SRC_PULL, b_async_start, 16, 0, 0, NULL},
    {"map behind an async stage", SRC_PULL, b_async_behind, 16, 0, 0, NULL},
    {"reduce", SRC_PULL, b_reduce, 16, 0, 0, NULL},
    {"reduce key fn", SRC_PULL, b_reduce_key, 16, 0, 0, NULL},
    {"count window", SRC_PULL, b_window_count, 16, 0, 0, NULL},
    {"session window", SRC_PULL, b_window_session, 16, 0, 0, NULL},
    {"time window", SRC_PULL, b_window_time, 16, 0, 0, NULL},
    {"window key fn", SRC_PULL, b_window_key, 16, 0, 0, NULL},
    {"sliding window", SRC_PULL, b_sliding, 16, 0, 0, NULL},
    {"debounce key fn", SRC_PULL, b_debounce_key, 16, 0, 0, NULL},
    {"join input fn", SRC_PULL, b_join_input, 16, 0, 0, NULL},
    {"join fn", SRC_PULL, b_join_fn, 16, 0, 0, NULL},
    {"loader load", SRC_PULL, b_loader_load, 16, 0, 0, NULL},
    {"loader attach", SRC_PULL, b_loader_attach, 16, 0, 0, NULL},
    {"cache copy", SRC_PULL, b_cache_copy, 16, 1, 0, NULL},
    {"map behind a cache", SRC_PULL, b_cache_map, 16, 0, 0, NULL},
    {"router selector", SRC_PULL, b_router, 16, 0, 0, NULL},
    {"broadcast copy", SRC_PULL, b_broadcast_copy, 16, 0, 0, NULL},
    {"pull source (fused)", SRC_PULL_TRAP, b_plain_chain, 16, 0, 0, NULL},
    {"pull source (batch stage)", SRC_PULL_TRAP, b_plain_batch_stage, 16, 0, 0, NULL},
    {"pull batch source", SRC_PULL_BATCH_TRAP, b_plain_chain, 16, 0, 0, NULL},
    {"cursor read", SRC_CURSOR_TRAP, b_plain_chain, 16, 0, 0, NULL},
    {"cursor page fn", SRC_CURSOR_PAGE_TRAP, b_plain_chain, 16, 0, 0, NULL},
    {"cursor commit", SRC_CURSOR_COMMIT_TRAP, b_plain_chain, 16, 0, 0, NULL},
    {"map on a cursor source", SRC_CURSOR, b_trap_map, 16, 0, 0, NULL},
    {"item destructor", SRC_PULL, b_item_free, 16, 0, 0, NULL},
    {"item destructor (batch stage behind)", SRC_PULL, b_item_free_batch, 16, 0, 0, NULL},
    {"item destructor (failed batch)", SRC_PULL, b_item_free_batch_failure, 16, 0, 0, NULL},
    {"item destructor (bulk cancel)", SRC_PULL, b_item_free_in_cancel, 16, 0, 0, NULL},
    {"dead letter", SRC_PULL, b_dead_letter, 16, 0, 0, NULL},
    {"dead letter (batch)", SRC_PULL, b_dead_letter_batch, 16, 0, 0, NULL},
    {"retry predicate", SRC_PULL, b_retry_pred, 16, 0, 0, NULL},
    {"log callback", SRC_PULL, b_log, 16, 0, 0, r_log},
    {"worker init hook", SRC_PULL, b_worker_init, 16, 0, 0, NULL},
    {"worker close hook", SRC_PULL, b_worker_close, 16, 0, 1, NULL},
    {"breaker state callback", SRC_PULL, b_breaker_state, 16, 0, 0, r_breaker},
    {"async cancel hook", SRC_PULL, b_async_cancel, 16, 0, 0, NULL},
    {"async cancel hook (timeout)", SRC_PULL, b_async_timeout, 16, 0, 0, NULL},
    {"extra source", SRC_NONE, b_extra_source, 16, 0, 0, NULL},
    {"key fn of a keyed multi-worker stage", SRC_PULL, b_keyed_lanes, 16, 0, 0, NULL},
    {"route observer", SRC_PULL, b_route_observer, 16, 0, 0, NULL},
};

static void *k_drive(void *arg) {
    (void)fluxus_pipeline_wait((fluxus_pipeline *)arg, TU_WAIT_MS);
    return NULL;
}

static void k_check(const char *name, int32_t rc, int consumes, int may_finish) {
    fluxus_pipeline_stats s;
    uint64_t i;
    if (rc != FLUXUS_ECANCELED && !(may_finish && rc == FLUXUS_OK)) {
        fail_msg("%s: wait returned %d (%s), expected FLUXUS_ECANCELED", name, (int)rc,
                 fluxus_err_name(rc));
    }
    tu_stats(g_k.p, &s);
    if (getenv("FLUXUS_TEST_VERBOSE")) {
        for (i = 0; i < K_N; i++) {
            fprintf(stderr, "%llu:%u%u%u ", (unsigned long long)i, g_k.held[i],
                    TU_LOAD(&g_k.t.delivered[i]), TU_LOAD(&g_k.t.freed[i]));
        }
        fprintf(stderr, "\nadmitted %llu delivered %llu filtered %llu failed %llu dead %llu "
                "cancelled %llu freed %llu out_of_range %llu\n",
                (unsigned long long)s.admitted, (unsigned long long)s.delivered,
                (unsigned long long)s.filtered, (unsigned long long)s.failed,
                (unsigned long long)s.dead_lettered, (unsigned long long)s.cancelled,
                (unsigned long long)g_k.t.freed_total, (unsigned long long)g_k.t.out_of_range);
    }
    if (!TU_LOAD(&g_k.exited)) {
        fail_msg("%s: the callback never ended its thread", name);
    }
    for (i = 0; i < K_N; i++) {
        uint32_t d = TU_LOAD(&g_k.t.delivered[i]), f = TU_LOAD(&g_k.t.freed[i]);
        if (g_k.held[i] && d + f != 0) {
            fail_msg("%s: held item %llu was delivered %u / destroyed %u times", name,
                     (unsigned long long)i, d, f);
        }
        if (d + f > 1) {
            fail_msg("%s: item %llu was delivered %u / destroyed %u times", name,
                     (unsigned long long)i, d, f);
        }
    }
    tu_check_conservation(g_k.p, consumes ? NULL : &g_k.t, g_k.held_count);
}

/* The runtime still runs pipelines after one of its threads was ended. */
static void k_run_after(fluxus_runtime *rt) {
    tu_tracker t;
    tu_range_source src = {0, K_N, 0};
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    tu_tracker_init(&t, K_N);
    p = tu_pipeline(rt, "after", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);
    tu_stats(p, &s);
    assert_int_equal(s.delivered, K_N);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    tu_tracker_destroy(&t);
}

static void k_run_case(const kind_case *kc, int on_worker) {
    fluxus_runtime *rt = tu_runtime(on_worker ? 1u : 0u);
    memset(&g_k, 0, sizeof g_k);
    if (kc->rt_setup) {
        kc->rt_setup(rt);
    }
    tu_tracker_init(&g_k.t, K_N);
    g_k.p = tu_pipeline(rt, kc->name, NULL);
    TU_OK(fluxus_pipeline_set_item_free(g_k.p, k_free, &g_k.t, NULL));
    if (kc->batch) {
        TU_OK(fluxus_pipeline_set_batch_size(g_k.p, kc->batch));
    }
    k_set_source(g_k.p, kc->source);
    kc->build(g_k.p);
    TU_OK(fluxus_pipeline_start(g_k.p));
    if (!on_worker) {
        pthread_t host;
        assert_int_equal(pthread_create(&host, NULL, k_drive, g_k.p), 0);
        assert_int_equal(pthread_join(host, NULL), 0);
    }
    k_check(kc->name, tu_wait(g_k.p), kc->consumes, kc->may_finish);
    TU_OK(fluxus_pipeline_free(g_k.p));
    if (g_breaker) {
        TU_OK(fluxus_circuit_breaker_free(g_breaker));
        g_breaker = NULL;
    }
    k_run_after(rt);
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&g_k.t);
}

/* FLUXUS_TEST_KIND=<name> runs one case only (debugging). */
static void k_run_all(int on_worker) {
    const char *only = getenv("FLUXUS_TEST_KIND");
    size_t i;
    for (i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        if (only && strcmp(only, k_cases[i].name) != 0) {
            continue;
        }
        if (getenv("FLUXUS_TEST_VERBOSE")) {
            fprintf(stderr, "case: %s (%s)\n", k_cases[i].name, on_worker ? "worker" : "host");
        }
        k_run_case(&k_cases[i], on_worker);
    }
}

static void test_every_callback_kind_on_a_host_thread(void **state) {
    (void)state;
    k_run_all(0);
}

static void test_every_callback_kind_on_a_worker_thread(void **state) {
    (void)state;
    k_run_all(1);
}

/* ---------------------------------------------------------------------------------------------
 * Threads the runtime owns, and host threads that drive it, ended outside any pipeline
 * callback: host timers, thread hooks, the wake-up callback. The runtime keeps working (timers
 * fire, pipelines run) and frees cleanly.
 */

typedef struct timer_ctx {
    uint32_t exit_calls; /* the timer that ends its thread ran */
    uint32_t fired;      /* the timer after it ran */
    uint32_t frees;      /* user_free calls */
} timer_ctx;

static timer_ctx g_tm;

static void tm_exit(void *user) {
    (void)user;
    TU_ADD(&g_tm.exit_calls, 1);
    pthread_exit(NULL);
}

static void tm_fire(void *user) {
    (void)user;
    TU_ADD(&g_tm.fired, 1);
}

static void tm_free(void *user) {
    (void)user;
    TU_ADD(&g_tm.frees, 1);
}

/* Waits up to 10 s for *flag to reach `want`. */
static void tm_wait_for(uint32_t *flag, uint32_t want) {
    uint64_t until = tu_now_ms() + 10000u;
    while (TU_LOAD(flag) < want && tu_now_ms() < until) {
        tu_sleep_us(1000);
    }
    assert_int_equal(TU_LOAD(flag), want);
}

/* Threaded: a host timer callback ends the loop thread; another loop thread takes over. */
static void test_pthread_exit_in_a_timer_on_the_loop_thread(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    (void)state;
    memset(&g_tm, 0, sizeof g_tm);
    TU_OK(fluxus_runtime_start(rt));
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_exit, NULL, tm_free));
    tm_wait_for(&g_tm.exit_calls, 1);
    tm_wait_for(&g_tm.frees, 1); /* its user_free ran although the callback never returned */
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_fire, NULL, tm_free));
    tm_wait_for(&g_tm.fired, 1);
    tm_wait_for(&g_tm.frees, 2);
    k_run_after(rt);
    TU_OK(fluxus_runtime_free(rt));
}

static void *tm_drive(void *arg) {
    /* Until a timer ends this thread (run_for returns at once while no pipeline runs). */
    uint64_t until = tu_now_ms() + 10000u;
    while (tu_now_ms() < until) {
        (void)fluxus_runtime_run_for((fluxus_runtime *)arg, 10);
        tu_sleep_us(100);
    }
    return NULL;
}

/* Host-driven: a host timer callback ends the thread driving the runtime. */
static void test_pthread_exit_in_a_timer_on_a_host_thread(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    pthread_t host;
    uint64_t until;
    (void)state;
    memset(&g_tm, 0, sizeof g_tm);
    TU_OK(fluxus_runtime_start(rt));
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_exit, NULL, tm_free));
    assert_int_equal(pthread_create(&host, NULL, tm_drive, rt), 0);
    assert_int_equal(pthread_join(host, NULL), 0);
    assert_int_equal(TU_LOAD(&g_tm.exit_calls), 1);
    assert_int_equal(TU_LOAD(&g_tm.frees), 1);
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_fire, NULL, tm_free));
    until = tu_now_ms() + 10000u;
    while (TU_LOAD(&g_tm.fired) == 0 && tu_now_ms() < until) {
        TU_OK(fluxus_runtime_run_for(rt, 10));
    }
    assert_int_equal(TU_LOAD(&g_tm.fired), 1);
    k_run_after(rt);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&g_tm.frees), 2);
}

static void *tm_advance(void *arg) {
    (void)fluxus_runtime_advance_clock((fluxus_runtime *)arg, 2000000u);
    return NULL;
}

/* Virtual clock: a timer callback ends the thread advancing the clock; the clock still
 * advances from another thread. */
static void test_pthread_exit_in_a_timer_while_advancing_a_virtual_clock(void **state) {
    fluxus_runtime *rt = tu_vruntime(0);
    pthread_t host;
    (void)state;
    memset(&g_tm, 0, sizeof g_tm);
    TU_OK(fluxus_runtime_start(rt));
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_exit, NULL, tm_free));
    assert_int_equal(pthread_create(&host, NULL, tm_advance, rt), 0);
    assert_int_equal(pthread_join(host, NULL), 0);
    assert_int_equal(TU_LOAD(&g_tm.exit_calls), 1);
    assert_int_equal(TU_LOAD(&g_tm.frees), 1);
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_fire, NULL, tm_free));
    TU_OK(fluxus_runtime_advance_clock(rt, 2000000u));
    assert_int_equal(TU_LOAD(&g_tm.fired), 1);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&g_tm.frees), 2);
}

typedef struct hook_ctx {
    int32_t exit_kind;  /* the thread kind whose start (or stop) hook ends the thread once */
    int stop;           /* the stop hook ends it, not the start hook */
    uint32_t exited;
    uint32_t starts;
} hook_ctx;

static hook_ctx g_hk;

static void hk_start(void *user, int32_t kind, uint32_t index, const char *name) {
    (void)user;
    (void)index;
    (void)name;
    TU_ADD(&g_hk.starts, 1);
    if (!g_hk.stop && kind == g_hk.exit_kind &&
        __atomic_exchange_n(&g_hk.exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

static void hk_stop(void *user, int32_t kind, uint32_t index) {
    (void)user;
    (void)index;
    if (g_hk.stop && kind == g_hk.exit_kind &&
        __atomic_exchange_n(&g_hk.exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

/* A start hook ends its thread: the worker (or the loop thread) is replaced, so pipelines run
 * and timers fire. A stop hook that ends its thread (at the runtime's free) is harmless. */
static void test_pthread_exit_in_a_thread_hook(void **state) {
    static const int32_t kinds[] = {FLUXUS_THREAD_WORKER, FLUXUS_THREAD_LOOP};
    size_t k;
    int stop;
    (void)state;
    for (stop = 0; stop <= 1; stop++) {
        for (k = 0; k < 2; k++) {
            fluxus_runtime *rt = tu_runtime(1);
            memset(&g_hk, 0, sizeof g_hk);
            memset(&g_tm, 0, sizeof g_tm);
            g_hk.exit_kind = kinds[k];
            g_hk.stop = stop;
            TU_OK(fluxus_runtime_set_thread_hooks(rt, hk_start, hk_stop, NULL, NULL));
            TU_OK(fluxus_runtime_start(rt));
            k_run_after(rt);
            TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_fire, NULL, NULL));
            tm_wait_for(&g_tm.fired, 1);
            TU_OK(fluxus_runtime_free(rt));
            assert_int_equal(TU_LOAD(&g_hk.exited), 1);
        }
    }
}

static pthread_t g_main_thread;

/* A push source in front of a keyed multi-worker stage: the key callback runs on the pushing
 * host thread and ends it. The items it had admitted are accounted; the pipeline goes on. */
static void *k_push_all(void *arg) {
    uint64_t i;
    for (i = 0; i < K_N; i++) {
        (void)fluxus_pipeline_push((fluxus_pipeline *)arg, i, TU_WAIT_MS);
    }
    return NULL;
}

static int32_t k_key_on_host(void *user, uint64_t item, const void **key, size_t *len) {
    (void)user;
    if (!pthread_equal(pthread_self(), g_main_thread) && item == K_AT &&
        tu_current_worker() == UINT32_MAX) {
        k_exit_holding(&item, 1);
    }
    g_k.pair_keys[item % K_N] = item; /* every item its own key: dedup passes them all */
    *key = &g_k.pair_keys[item % K_N];
    *len = sizeof(uint64_t);
    return 0;
}

static void test_pthread_exit_in_a_key_callback_run_by_a_push(void **state) {
    int on_worker;
    (void)state;
    g_main_thread = pthread_self();
    for (on_worker = 0; on_worker <= 1; on_worker++) {
        fluxus_runtime *rt = tu_runtime(on_worker ? 2u : 0u);
        pthread_t host;
        uint32_t s;
        memset(&g_k, 0, sizeof g_k);
        tu_tracker_init(&g_k.t, K_N);
        g_k.p = tu_pipeline(rt, "push", NULL);
        TU_OK(fluxus_pipeline_set_item_free(g_k.p, k_free, &g_k.t, NULL));
        TU_OK(fluxus_pipeline_set_push_source(g_k.p, "in"));
        TU_OK(fluxus_pipeline_add_dedup(&s, g_k.p, "dedup")); /* per key: keyed lanes */
        TU_OK(fluxus_stage_set_workers(g_k.p, s, 2));
        TU_OK(fluxus_stage_set_key_fn(g_k.p, s, k_key_on_host, NULL, NULL));
        TU_OK(fluxus_pipeline_add_sink(NULL, g_k.p, "sink", k_sink, NULL, NULL));
        TU_OK(fluxus_pipeline_start(g_k.p));
        assert_int_equal(pthread_create(&host, NULL, k_push_all, g_k.p), 0);
        assert_int_equal(pthread_join(host, NULL), 0);
        TU_OK(fluxus_pipeline_close_input(g_k.p));
        k_check("key callback run by a push", tu_wait(g_k.p), 0, 1);
        TU_OK(fluxus_pipeline_free(g_k.p));
        k_run_after(rt);
        TU_OK(fluxus_runtime_free(rt));
        tu_tracker_destroy(&g_k.t);
    }
}

/* Threaded: the stall watchdog (on the loop thread) logs a stalled worker, and the log callback
 * ends the loop thread; another takes over (timers fire), and the pipeline finishes. */
static int32_t wd_slow_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in == 5u) {
        tu_sleep_us(200000);
    }
    *out = in;
    return 0;
}

static pthread_t g_loop_thread;
static uint32_t g_loop_known;

static void wd_start(void *user, int32_t kind, uint32_t index, const char *name) {
    (void)user;
    (void)index;
    (void)name;
    if (kind == FLUXUS_THREAD_LOOP) {
        g_loop_thread = pthread_self();
        TU_STORE(&g_loop_known, 1);
    }
}

static void wd_log(void *user, int32_t level, const char *pipeline, const char *stage,
                   const char *message) {
    (void)user;
    (void)level;
    (void)pipeline;
    (void)stage;
    (void)message;
    if (TU_LOAD(&g_loop_known) && pthread_equal(pthread_self(), g_loop_thread) &&
        __atomic_exchange_n(&g_hk.exited, 1, __ATOMIC_SEQ_CST) == 0) {
        pthread_exit(NULL);
    }
}

static void test_pthread_exit_in_the_watchdog_log_on_the_loop_thread(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker t;
    tu_range_source src = {0, 50, 0};
    fluxus_pipeline *p;
    (void)state;
    memset(&g_hk, 0, sizeof g_hk);
    memset(&g_tm, 0, sizeof g_tm);
    TU_STORE(&g_loop_known, 0);
    TU_OK(fluxus_runtime_set_stall_threshold_ms(rt, 20));
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_WARN, wd_log, NULL, NULL));
    TU_OK(fluxus_runtime_set_thread_hooks(rt, wd_start, NULL, NULL, NULL));
    tu_tracker_init(&t, 50);
    p = tu_pipeline(rt, "stall", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "in", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "slow", wd_slow_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", tu_tracker_sink, &t, NULL));
    tu_run_expect(p, FLUXUS_OK);
    assert_int_equal(TU_LOAD(&g_hk.exited), 1);
    tu_check_conservation(p, &t, 0);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_call_after(NULL, rt, 1000000u, tm_fire, NULL, NULL));
    tm_wait_for(&g_tm.fired, 1);
    k_run_after(rt);
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&t);
}

/* Host-driven: the wake-up callback ends the (non-main) thread driving the pipeline. */

static void k_wakeup_trap(void *user) {
    (void)user;
    if (!pthread_equal(pthread_self(), g_main_thread)) {
        k_trap_call(1);
    }
}

static void test_pthread_exit_in_the_wakeup_callback(void **state) {
    fluxus_runtime *rt = tu_runtime(0);
    pthread_t host;
    (void)state;
    g_main_thread = pthread_self();
    memset(&g_k, 0, sizeof g_k);
    TU_OK(fluxus_runtime_set_wakeup(rt, k_wakeup_trap, NULL, NULL));
    tu_tracker_init(&g_k.t, K_N);
    g_k.p = tu_pipeline(rt, "wakeup", NULL);
    TU_OK(fluxus_pipeline_set_fusion(g_k.p, 0)); /* stages hand batches on: tasks wake others */
    TU_OK(fluxus_pipeline_set_item_free(g_k.p, k_free, &g_k.t, NULL));
    TU_OK(fluxus_pipeline_set_batch_size(g_k.p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(g_k.p, "in", k_pull, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(NULL, g_k.p, "mb", k_map_batch_plain, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, g_k.p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, g_k.p, "sink", k_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(g_k.p));
    assert_int_equal(pthread_create(&host, NULL, k_drive, g_k.p), 0);
    assert_int_equal(pthread_join(host, NULL), 0);
    k_check("wakeup callback", tu_wait(g_k.p), 0, 1);
    TU_OK(fluxus_pipeline_free(g_k.p));
    k_run_after(rt);
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&g_k.t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pthread_exit_on_host_thread),
        cmocka_unit_test(test_pthread_exit_on_worker_thread),
        cmocka_unit_test(test_pthread_exit_in_a_shared_batch),
        cmocka_unit_test(test_every_callback_kind_on_a_host_thread),
        cmocka_unit_test(test_every_callback_kind_on_a_worker_thread),
        cmocka_unit_test(test_pthread_exit_in_a_timer_on_the_loop_thread),
        cmocka_unit_test(test_pthread_exit_in_a_timer_on_a_host_thread),
        cmocka_unit_test(test_pthread_exit_in_a_timer_while_advancing_a_virtual_clock),
        cmocka_unit_test(test_pthread_exit_in_a_thread_hook),
        cmocka_unit_test(test_pthread_exit_in_the_wakeup_callback),
        cmocka_unit_test(test_pthread_exit_in_a_key_callback_run_by_a_push),
        cmocka_unit_test(test_pthread_exit_in_the_watchdog_log_on_the_loop_thread),
    };
    return TU_RUN_GROUP(tests);
}

#else
int main(void) {
    return 77; /* pthread_exit() does not unwind here */
}
#endif
