/*
 * test_graph.c — pipelines as graphs: routers (routes by value, default route, selector
 * failures, several routes with and without copies), broadcast of heap items with copies
 * (including copies that fail), merges (exactly once, fairness between producers of different
 * speeds), error branches (repair, retry, circuit breaker, backpressure, cancel, a sink's),
 * what a drain deadline reports as held, build-time errors with exact codes, push sources, fusion
 * on/off, linear pipelines, and per-stage conservation at the end of nearly every test:
 *   in + spawned == out + filtered + failed + dead_lettered + cancelled + routed.
 */
#include "test_util.h"

/* ----- accounting helpers ----- */

/* Per-stage conservation of a finished pipeline, at every stage. */
static void check_stage_balance(fluxus_pipeline *p) {
    uint32_t n = 0, i;
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    for (i = 0; i < n; i++) {
        fluxus_stage_stats s;
        uint64_t lhs, rhs;
        tu_stage_stats(p, i, &s);
        lhs = s.in + s.spawned;
        rhs = s.out + s.filtered + s.failed + s.dead_lettered + s.cancelled + s.routed;
        if (lhs != rhs)
            fail_msg("stage %u '%s': in %llu + spawned %llu != out %llu + filtered %llu + failed "
                     "%llu + dead_lettered %llu + cancelled %llu + routed %llu",
                     i, tu_stage_name(p, i), (unsigned long long)s.in,
                     (unsigned long long)s.spawned, (unsigned long long)s.out,
                     (unsigned long long)s.filtered, (unsigned long long)s.failed,
                     (unsigned long long)s.dead_lettered, (unsigned long long)s.cancelled,
                     (unsigned long long)s.routed);
        if (s.retry_waiting != 0 || s.queue_depth != 0)
            fail_msg("stage %u '%s' still holds items: retry_waiting %llu, queue_depth %llu", i,
                     tu_stage_name(p, i), (unsigned long long)s.retry_waiting,
                     (unsigned long long)s.queue_depth);
    }
}

#define NO_STAGE UINT32_MAX

/*
 * Whole-graph accounting of a finished pipeline: the totals balance, the stage counters add up
 * to them, `delivered` is the sum of the sinks' `out` (sinks: a list ended by NO_STAGE), and
 * admitted == source_items + the stages' `spawned` (source_items UINT64_MAX: not checked).
 * Then the per-stage balance.
 */
static void check_graph(fluxus_pipeline *p, const uint32_t *sinks, uint64_t source_items) {
    fluxus_pipeline_stats s;
    uint32_t n = 0, i;
    uint64_t filtered = 0, failed = 0, dead = 0, cancelled = 0, dropped = 0, spawned = 0,
             delivered = 0;
    tu_stats(p, &s);
    assert_int_equal(s.state, FLUXUS_STATE_FINISHED);
    if (s.admitted != s.delivered + s.filtered + s.dead_lettered + s.failed + s.cancelled)
        fail_msg("conservation broken: admitted %llu != delivered %llu + filtered %llu + "
                 "dead_lettered %llu + failed %llu + cancelled %llu",
                 (unsigned long long)s.admitted, (unsigned long long)s.delivered,
                 (unsigned long long)s.filtered, (unsigned long long)s.dead_lettered,
                 (unsigned long long)s.failed, (unsigned long long)s.cancelled);
    assert_int_equal(s.in_flight, 0);
    assert_int_equal(s.balanced, 1);
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    for (i = 0; i < n; i++) {
        fluxus_stage_stats st;
        tu_stage_stats(p, i, &st);
        filtered += st.filtered;
        failed += st.failed;
        dead += st.dead_lettered;
        cancelled += st.cancelled;
        dropped += st.dropped;
        spawned += st.spawned;
    }
    for (i = 0; sinks[i] != NO_STAGE; i++) {
        fluxus_stage_stats st;
        tu_stage_stats(p, sinks[i], &st);
        delivered += st.out;
    }
    assert_int_equal(filtered, s.filtered);
    assert_int_equal(failed, s.failed);
    assert_int_equal(dead, s.dead_lettered);
    assert_int_equal(cancelled, s.cancelled);
    assert_int_equal(dropped, s.dropped);
    assert_int_equal(delivered, s.delivered);
    if (source_items != UINT64_MAX) assert_int_equal(s.admitted, source_items + spawned);
    check_stage_balance(p);
}

/* Dead-letter callback recording each item (values) and checking the failure it comes with. */
typedef struct dl_rec {
    tu_tracker t;
    int32_t expect_status;
    uint32_t expect_stage;
    const char *expect_name;
    uint64_t wrong;
} dl_rec;

static void dl_record(void *user, uint64_t item, const fluxus_failure *f) {
    dl_rec *d = (dl_rec *)user;
    if (tu_failure_status(f) != d->expect_status ||
        tu_failure_stage_index(f) != d->expect_stage ||
        strcmp(tu_failure_stage_name(f), d->expect_name) != 0)
        TU_ADD(&d->wrong, 1);
    tu_tracker_deliver(&d->t, item);
}

static uint64_t count_mod(uint64_t n, uint64_t mod, uint64_t rem) {
    uint64_t i, c = 0;
    for (i = 0; i < n; i++) c += (i % mod == rem);
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * 1. Router
 * ------------------------------------------------------------------------------------------- */

#define RN 4000u

/* What the selector does with values that are 3 mod 4 (0, 1, 2 go to routes 0, 1, 2). */
enum { SEL_NONE, SEL_BEYOND, SEL_ERROR, SEL_MULTI, SEL_TWICE, SEL_TOO_MANY };

typedef struct selector {
    int mode;
    uint64_t calls;
} selector;

static int32_t select_mod4(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                           uint32_t *count) {
    selector *s = (selector *)user;
    TU_ADD(&s->calls, 1);
    if (item % 4 != 3) {
        routes[0] = (uint32_t)(item % 4);
        *count = 1;
        return 0;
    }
    switch (s->mode) {
    case SEL_NONE: return 0;
    case SEL_BEYOND: routes[0] = 1, routes[1] = 3, *count = 2; return 0; /* 3 routes only */
    case SEL_ERROR: return 42;
    case SEL_TWICE: routes[0] = 2, routes[1] = 2, *count = 2; return 0;
    case SEL_TOO_MANY: routes[0] = 0, *count = capacity + 1; return 0;
    default: routes[0] = 0, routes[1] = 2, *count = 2; return 0;
    }
}

typedef struct value_copier {
    uint64_t calls, not_route_2;
} value_copier;

static int32_t copy_value(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    value_copier *c = (value_copier *)user;
    TU_ADD(&c->calls, 1);
    if (route != 2) TU_ADD(&c->not_route_2, 1);
    *copy = item;
    return 0;
}

typedef struct router_case {
    int mode;
    int policy;       /* of the router */
    int with_default; /* default route 1 */
    int with_copy;
    int fusion;
} router_case;

typedef struct router_run {
    tu_range_source src;
    tu_tracker freed, got[3];
    dl_rec dl;
    selector sel;
    value_copier cc;
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t router, sink[4];
} router_run;

/* Bit k set: value v ends at sink k; 0: v fails at the router. */
static uint32_t router_expect(const router_case *c, uint64_t v) {
    if (v % 4 != 3) return 1u << (v % 4);
    if (c->mode == SEL_NONE) return c->with_default ? 2u : 0u;
    if (c->mode == SEL_MULTI) return c->with_copy ? 5u : 0u;
    return 0u;
}

static int32_t router_fail_status(const router_case *c) {
    switch (c->mode) {
    case SEL_NONE: return FLUXUS_ENOROUTE;
    case SEL_BEYOND: return FLUXUS_ERANGE;
    case SEL_TOO_MANY: return FLUXUS_ERANGE;
    case SEL_ERROR: return 42;
    default: return FLUXUS_EINVAL;
    }
}

static void router_run_start(router_run *r, const router_case *c) {
    static const char *names[3] = {"zero", "one", "two"};
    static const char *sinks[3] = {"sink.zero", "sink.one", "sink.two"};
    uint32_t k, route = 99;
    memset(r, 0, sizeof *r);
    r->src.end = RN;
    r->sel.mode = c->mode;
    tu_tracker_init(&r->freed, RN);
    tu_tracker_init(&r->dl.t, RN);
    for (k = 0; k < 3; k++) tu_tracker_init(&r->got[k], RN);
    r->dl.expect_status = router_fail_status(c);
    r->dl.expect_name = "by-value";
    r->rt = tu_runtime(2);
    r->p = tu_pipeline(r->rt, "routing", &r->freed);
    TU_OK(fluxus_pipeline_set_fusion(r->p, c->fusion));
    TU_OK(fluxus_pipeline_set_dead_letter(r->p, dl_record, &r->dl, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(r->p, "src", tu_range_pull, &r->src, NULL));
    TU_OK(fluxus_pipeline_add_router(&r->router, r->p, "by-value", select_mod4, &r->sel, NULL));
    r->dl.expect_stage = r->router;
    for (k = 0; k < 3; k++) {
        TU_OK(fluxus_stage_add_route(&route, r->p, r->router, names[k]));
        assert_int_equal(route, k);
    }
    if (c->with_default) TU_OK(fluxus_stage_set_default_route(r->p, r->router, 1));
    if (c->with_copy) TU_OK(fluxus_stage_set_copy(r->p, r->router, copy_value, &r->cc, NULL));
    TU_OK(fluxus_stage_set_error_policy(r->p, r->router, c->policy));
    for (k = 0; k < 3; k++) {
        TU_OK(fluxus_pipeline_branch(r->p, r->router, k));
        TU_OK(fluxus_pipeline_add_sink(&r->sink[k], r->p, sinks[k], tu_tracker_sink, &r->got[k],
                                       NULL));
    }
    r->sink[3] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(r->p));
}

/* Runs one router case and checks every value, every counter. */
static void router_check(router_run *r, const router_case *c) {
    fluxus_pipeline_stats s;
    fluxus_stage_stats rs, ss;
    uint64_t v, failing = 0, copies = 0, at[3] = {0, 0, 0}, arrived = 0;
    uint32_t k;
    TU_OK(tu_wait(r->p));
    for (v = 0; v < RN; v++) {
        uint32_t m = router_expect(c, v);
        for (k = 0; k < 3; k++) {
            uint32_t want = (m >> k) & 1u, got = TU_LOAD(&r->got[k].delivered[v]);
            if (got != want)
                fail_msg("value %llu reached sink %u %u times, expected %u",
                         (unsigned long long)v, k, got, want);
            at[k] += want;
            arrived += want;
        }
        if (m == 0) failing++;
        if (m == 5) copies++;
        assert_int_equal(TU_LOAD(&r->freed.freed[v]), m == 0 ? 1 : 0);
        if (c->policy == FLUXUS_ERROR_DEAD_LETTER)
            assert_int_equal(TU_LOAD(&r->dl.t.delivered[v]), m == 0 ? 1 : 0);
    }
    assert_int_equal(TU_LOAD(&r->dl.wrong), 0);
    assert_int_equal(TU_LOAD(&r->freed.out_of_range) + TU_LOAD(&r->dl.t.out_of_range), 0);
    assert_int_equal(TU_LOAD(&r->sel.calls), RN);
    assert_int_equal(TU_LOAD(&r->cc.calls), copies);
    assert_int_equal(TU_LOAD(&r->cc.not_route_2), 0);

    tu_stage_stats(r->p, r->router, &rs);
    assert_int_equal(rs.in, RN);
    assert_int_equal(rs.spawned, copies);
    assert_int_equal(rs.out, arrived);
    assert_int_equal(rs.routed, 0);
    assert_int_equal(rs.failed, c->policy == FLUXUS_ERROR_SKIP ? failing : 0);
    assert_int_equal(rs.dead_lettered, c->policy == FLUXUS_ERROR_DEAD_LETTER ? failing : 0);
    for (k = 0; k < 3; k++) {
        tu_stage_stats(r->p, r->sink[k], &ss);
        assert_int_equal(ss.in, at[k]);
        assert_int_equal(ss.out, at[k]);
    }
    tu_stats(r->p, &s);
    assert_int_equal(s.admitted, RN + copies);
    assert_int_equal(s.delivered, arrived);
    check_graph(r->p, r->sink, RN);
}

static void router_run_free(router_run *r) {
    uint32_t k;
    tu_free_all(r->p, r->rt);
    tu_tracker_destroy(&r->freed);
    tu_tracker_destroy(&r->dl.t);
    for (k = 0; k < 3; k++) tu_tracker_destroy(&r->got[k]);
}

static void router_case_run(const router_case *c) {
    router_run r;
    router_run_start(&r, c);
    router_check(&r, c);
    router_run_free(&r);
}

/* Proves: a router sends each item to exactly the route its value selects, an empty selection
 * goes to the default route, per-route counts are exact, and fusion does not change any of it. */
static void test_router_routes_by_value_with_a_default_route(void **state) {
    router_case c = {SEL_NONE, FLUXUS_ERROR_FAIL_FAST, 1, 0, 1};
    (void)state;
    router_case_run(&c);
    c.fusion = 0;
    router_case_run(&c);
    print_message("router: %u items -> %u / %u / %u (default route took %u)\n", RN, RN / 4,
                  RN / 2, RN / 4, RN / 4);
}

/* Proves: without a default route an empty selection fails the item with FLUXUS_ENOROUTE at the
 * router: dead-lettered with that status (and the router's name and index), or counted failed
 * under the skip policy; the other items still arrive. */
static void test_router_without_default_fails_with_enoroute(void **state) {
    router_case c = {SEL_NONE, FLUXUS_ERROR_DEAD_LETTER, 0, 0, 1};
    (void)state;
    router_case_run(&c);
    c.policy = FLUXUS_ERROR_SKIP;
    c.fusion = 0;
    router_case_run(&c);
    print_message("router without default: %u of %u items failed with FLUXUS_ENOROUTE\n",
                  RN / 4, RN);
}

/* Proves: a selection with a route beyond the route count fails the item with FLUXUS_ERANGE and
 * sends it nowhere (not even to its valid route), and a selector's nonzero return fails the item
 * with exactly that status. */
static void test_router_selector_failures(void **state) {
    router_case c = {SEL_BEYOND, FLUXUS_ERROR_DEAD_LETTER, 1, 0, 1};
    (void)state;
    router_case_run(&c);
    c.policy = FLUXUS_ERROR_SKIP;
    router_case_run(&c);
    c.mode = SEL_ERROR;
    c.policy = FLUXUS_ERROR_DEAD_LETTER;
    router_case_run(&c);
    /* A count above the capacity (FLUXUS_ERANGE), the same route twice (FLUXUS_EINVAL, even
     * with a copy callback): the item goes nowhere. */
    c.mode = SEL_TOO_MANY;
    router_case_run(&c);
    c.mode = SEL_TWICE;
    c.with_copy = 1;
    router_case_run(&c);
    print_message("router selector failures: %u x FLUXUS_ERANGE, %u x status 42\n", RN / 4,
                  RN / 4);
}

/* Proves: a selection of several routes delivers the item to each, via the copy callback (called
 * once per extra route, with that route), counted `spawned` at the router and admitted; without
 * a copy callback such items fail with FLUXUS_EINVAL and nothing is delivered for them. */
static void test_router_several_routes_need_a_copy(void **state) {
    router_case c = {SEL_MULTI, FLUXUS_ERROR_DEAD_LETTER, 0, 1, 1};
    (void)state;
    router_case_run(&c);
    c.fusion = 0;
    router_case_run(&c);
    c.with_copy = 0;
    router_case_run(&c);
    print_message("router multi-route: %u copies spawned; without copy %u x FLUXUS_EINVAL\n",
                  RN / 4, RN / 4);
}

/* ---------------------------------------------------------------------------------------------
 * 2. Broadcast of heap items
 * ------------------------------------------------------------------------------------------- */

#define BN 3000u
#define HMAGIC 0x48495445u

typedef struct hitem {
    uint32_t magic;
    uint32_t route; /* 0: the original; k: the copy made for route k */
    uint64_t id;
    uint64_t work;
} hitem;

#define HI(x) ((hitem *)(uintptr_t)(x))
#define HW(h) ((uint64_t)(uintptr_t)(h))

static int64_t h_live; /* allocations not yet freed */

static hitem *h_new(uint64_t id, uint32_t route) {
    hitem *h = (hitem *)malloc(sizeof *h);
    if (h == NULL) return NULL;
    h->magic = HMAGIC;
    h->route = route;
    h->id = id;
    h->work = 0;
    TU_ADD(&h_live, 1);
    return h;
}

static void h_free(hitem *h) {
    h->magic = 0;
    free(h);
    TU_ADD(&h_live, -1);
}

typedef struct bcast {
    uint64_t next, end;        /* the source */
    uint32_t fail_r1, fail_r2; /* copies for route 1 / 2 of ids divisible by these fail */
    uint32_t *copy_calls;      /* per id */
    uint32_t *seen[3];         /* sink deliveries per route and id */
    uint32_t *freed[3];        /* item destructor calls per route and id */
    uint64_t freed_total, bad, dl_bad, dl_count;
} bcast;

typedef struct bsink {
    bcast *b;
    uint32_t route;
} bsink;

static int32_t heap_pull(void *user, uint64_t *item) {
    bcast *b = (bcast *)user;
    hitem *h;
    if (b->next >= b->end) return FLUXUS_PULL_END;
    h = h_new(b->next, 0);
    if (h == NULL) return -1;
    b->next++;
    *item = HW(h);
    return FLUXUS_PULL_ITEM;
}

static int32_t heap_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    bcast *b = (bcast *)user;
    hitem *h = HI(item), *k;
    if (h->magic != HMAGIC || h->route != 0) TU_ADD(&b->bad, 1);
    if (h->id < b->end) TU_ADD(&b->copy_calls[h->id], 1);
    if (route == 1 && b->fail_r1 && h->id % b->fail_r1 == 0) return 9;
    if (route == 2 && b->fail_r2 && h->id % b->fail_r2 == 0) return 9;
    k = h_new(h->id, route);
    if (k == NULL) return -1;
    *copy = HW(k);
    return 0;
}

static void heap_item_free(void *user, uint64_t item) {
    bcast *b = (bcast *)user;
    hitem *h = HI(item);
    TU_ADD(&b->freed_total, 1);
    if (h->magic != HMAGIC || h->route > 2 || h->id >= b->end) {
        TU_ADD(&b->bad, 1);
        return;
    }
    TU_ADD(&b->freed[h->route][h->id], 1);
    h_free(h);
}

static void heap_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    bcast *b = (bcast *)user;
    hitem *h = HI(item);
    TU_ADD(&b->dl_count, 1);
    /* the original, still alive, failing at the broadcast with the copy callback's status */
    if (h->magic != HMAGIC || h->route != 0 || tu_failure_status(f) != 9 ||
        strcmp(tu_failure_stage_name(f), "fan-out") != 0)
        TU_ADD(&b->dl_bad, 1);
}

/* Branch work: route 0 squares, route 1 drops multiples of 3, route 2 adds 7 (2 workers). */
static int32_t heap_square(void *user, uint64_t in, uint64_t *out) {
    hitem *h = HI(in);
    (void)user;
    h->work = h->id * h->id;
    *out = in;
    return 0;
}

static int32_t heap_thirds(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    *keep = HI(item)->id % 3 != 0;
    return 0;
}

static int32_t heap_plus7(void *user, uint64_t in, uint64_t *out) {
    hitem *h = HI(in);
    (void)user;
    h->work = h->id + 7;
    *out = in;
    return 0;
}

static int32_t heap_sink(void *user, uint64_t item) {
    bsink *s = (bsink *)user;
    hitem *h = HI(item);
    uint64_t want;
    if (h->magic != HMAGIC || h->route != s->route || h->id >= s->b->end) {
        TU_ADD(&s->b->bad, 1);
        return 0;
    }
    want = s->route == 0 ? h->id * h->id : s->route == 2 ? h->id + 7 : 0;
    if (h->work != want) TU_ADD(&s->b->bad, 1);
    s->b->seen[s->route][h->id]++; /* one sink per route: never concurrent with itself */
    h_free(h);
    return 0;
}

static void bcast_init(bcast *b, uint32_t fail_r1, uint32_t fail_r2) {
    uint32_t k;
    memset(b, 0, sizeof *b);
    b->end = BN;
    b->fail_r1 = fail_r1;
    b->fail_r2 = fail_r2;
    b->copy_calls = (uint32_t *)calloc(BN, sizeof(uint32_t));
    assert_non_null(b->copy_calls);
    for (k = 0; k < 3; k++) {
        b->seen[k] = (uint32_t *)calloc(BN, sizeof(uint32_t));
        b->freed[k] = (uint32_t *)calloc(BN, sizeof(uint32_t));
        assert_non_null(b->seen[k]);
        assert_non_null(b->freed[k]);
    }
}

static void bcast_destroy(bcast *b) {
    uint32_t k;
    free(b->copy_calls);
    for (k = 0; k < 3; k++) {
        free(b->seen[k]);
        free(b->freed[k]);
    }
}

/* Builds and runs: source -> broadcast "fan-out" -> square -> sink / thirds -> sink /
 * plus7 (2 workers) -> sink. Returns the broadcast's stage index; sinks[] gets the sinks. */
static uint32_t bcast_run(fluxus_runtime *rt, fluxus_pipeline **out, bcast *b, bsink bs[3],
                          uint32_t sinks[4], int fusion) {
    fluxus_pipeline *p = NULL;
    uint32_t fan = 0, r, stage = 0, k;
    static const char *routes[3] = {"square", "thirds", "plus7"};
    TU_OK(fluxus_pipeline_new(&p, rt, "broadcast"));
    TU_OK(fluxus_pipeline_set_item_free(p, heap_item_free, b, NULL));
    TU_OK(fluxus_pipeline_set_dead_letter(p, heap_dead_letter, b, NULL));
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_pull_source(p, "heap", heap_pull, b, NULL));
    TU_OK(fluxus_pipeline_add_broadcast(&fan, p, "fan-out"));
    for (k = 0; k < 3; k++) {
        TU_OK(fluxus_stage_add_route(&r, p, fan, routes[k]));
        assert_int_equal(r, k);
    }
    TU_OK(fluxus_stage_set_copy(p, fan, heap_copy, b, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, fan, FLUXUS_ERROR_DEAD_LETTER));
    for (k = 0; k < 3; k++) {
        bs[k].b = b;
        bs[k].route = k;
    }
    TU_OK(fluxus_pipeline_branch(p, fan, 0));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "square", heap_square, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sink.square", heap_sink, &bs[0], NULL));
    TU_OK(fluxus_pipeline_branch(p, fan, 1));
    TU_OK(fluxus_pipeline_add_filter(NULL, p, "thirds", heap_thirds, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "sink.thirds", heap_sink, &bs[1], NULL));
    TU_OK(fluxus_pipeline_branch(p, fan, 2));
    TU_OK(fluxus_pipeline_add_map(&stage, p, "plus7", heap_plus7, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, stage, 2));
    TU_OK(fluxus_pipeline_add_sink(&sinks[2], p, "sink.plus7", heap_sink, &bs[2], NULL));
    sinks[3] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    *out = p;
    return fan;
}

/* Proves: a broadcast sends the original down route 0 and a fresh copy down every other route;
 * every branch sees every item, each does its own work on its own copy, every allocation is
 * freed exactly once (by a sink or the item destructor: no leak, no double free under ASan),
 * admitted == source items + copies, and the broadcast counts spawned == 2 x items. */
static void test_broadcast_heap_items_reach_every_branch(void **state) {
    int fusion;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        fluxus_runtime *rt = tu_runtime(2);
        fluxus_pipeline *p = NULL;
        fluxus_pipeline_stats s;
        fluxus_stage_stats fs;
        bcast b;
        bsink bs[3];
        uint32_t sinks[4], fan;
        uint64_t id, thirds = count_mod(BN, 3, 0);
        h_live = 0;
        bcast_init(&b, 0, 0);
        fan = bcast_run(rt, &p, &b, bs, sinks, fusion);
        for (id = 0; id < BN; id++) {
            int kept = id % 3 != 0;
            if (b.seen[0][id] != 1 || b.seen[2][id] != 1 || b.seen[1][id] != (uint32_t)kept)
                fail_msg("id %llu seen %u/%u/%u times by the three branches",
                         (unsigned long long)id, b.seen[0][id], b.seen[1][id], b.seen[2][id]);
            assert_int_equal(b.freed[0][id], 0);
            assert_int_equal(b.freed[1][id], kept ? 0 : 1);
            assert_int_equal(b.freed[2][id], 0);
            assert_int_equal(b.copy_calls[id], 2);
        }
        assert_int_equal(TU_LOAD(&b.bad), 0);
        assert_int_equal(TU_LOAD(&b.dl_count), 0);
        tu_stage_stats(p, fan, &fs);
        assert_int_equal(fs.in, BN);
        assert_int_equal(fs.spawned, 2 * BN);
        assert_int_equal(fs.out, 3 * BN);
        assert_int_equal(fs.failed + fs.dead_lettered, 0);
        tu_stats(p, &s);
        assert_int_equal(s.admitted, 3 * BN);
        assert_int_equal(s.delivered, 3 * BN - thirds);
        assert_int_equal(s.filtered, thirds);
        assert_int_equal(TU_LOAD(&b.freed_total), thirds);
        check_graph(p, sinks, BN);
        tu_free_all(p, rt);
        assert_int_equal(TU_LOAD(&h_live), 0);
        bcast_destroy(&b);
    }
    print_message("broadcast: %u heap items x 3 branches, %u copies, %llu filtered, 0 live\n", BN,
                  2 * BN, (unsigned long long)count_mod(BN, 3, 0));
}

/* Proves: when a copy cannot be made, the item fails at the broadcast for all routes (no branch
 * sees it), the copies already made for it are destroyed by the item destructor but counted
 * nowhere, no further copy is attempted, and conservation holds with no leak. */
static void test_broadcast_copy_failure_is_all_or_nothing(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p = NULL;
    fluxus_pipeline_stats s;
    fluxus_stage_stats fs;
    bcast b;
    bsink bs[3];
    uint32_t sinks[4], fan;
    uint64_t id, n_fail = 0, n_uncounted = 0, thirds_ok = 0;
    (void)state;
    h_live = 0;
    bcast_init(&b, 11, 7); /* route 1 copies fail for multiples of 11, route 2 for 7 */
    fan = bcast_run(rt, &p, &b, bs, sinks, 1);
    for (id = 0; id < BN; id++) {
        int f11 = id % 11 == 0, f7 = id % 7 == 0, fails = f11 || f7;
        n_fail += fails;
        n_uncounted += !f11 && f7; /* its route-1 copy was made before route 2 failed */
        assert_int_equal(b.copy_calls[id], f11 ? 1 : 2);
        if (fails) {
            if (b.seen[0][id] + b.seen[1][id] + b.seen[2][id] != 0)
                fail_msg("id %llu failed at the broadcast but a branch saw it",
                         (unsigned long long)id);
            assert_int_equal(b.freed[0][id], 1);
            assert_int_equal(b.freed[1][id], (!f11 && f7) ? 1 : 0);
            assert_int_equal(b.freed[2][id], 0);
        } else {
            int kept = id % 3 != 0;
            thirds_ok += !kept;
            assert_int_equal(b.seen[0][id], 1);
            assert_int_equal(b.seen[1][id], kept ? 1 : 0);
            assert_int_equal(b.seen[2][id], 1);
            assert_int_equal(b.freed[0][id] + b.freed[2][id], 0);
            assert_int_equal(b.freed[1][id], kept ? 0 : 1);
        }
    }
    assert_int_equal(TU_LOAD(&b.bad), 0);
    assert_int_equal(TU_LOAD(&b.dl_bad), 0);
    assert_int_equal(TU_LOAD(&b.dl_count), n_fail);
    tu_stage_stats(p, fan, &fs);
    assert_int_equal(fs.in, BN);
    assert_int_equal(fs.dead_lettered, n_fail);
    assert_int_equal(fs.spawned, 2 * (BN - n_fail)); /* destroyed copies are not counted */
    assert_int_equal(fs.out, 3 * (BN - n_fail));
    tu_stats(p, &s);
    assert_int_equal(s.admitted, BN + 2 * (BN - n_fail));
    assert_int_equal(s.delivered, 3 * (BN - n_fail) - thirds_ok);
    /* destructor: every admitted item not delivered, plus the uncounted copies */
    assert_int_equal(TU_LOAD(&b.freed_total), s.admitted - s.delivered + n_uncounted);
    check_graph(p, sinks, BN);
    tu_free_all(p, rt);
    assert_int_equal(TU_LOAD(&h_live), 0);
    bcast_destroy(&b);
    print_message("broadcast copy failures: %llu items failed, %llu made copies destroyed "
                  "uncounted\n",
                  (unsigned long long)n_fail, (unsigned long long)n_uncounted);
}

/* ---------------------------------------------------------------------------------------------
 * 3. Merge (fan-in)
 * ------------------------------------------------------------------------------------------- */

#define TAG_A (1ull << 40)
#define TAG_B (1ull << 41)
#define VALUE_MASK (TAG_A - 1)

typedef struct merge_case {
    int broadcast;     /* else a router: even values to A, odd to B */
    uint32_t n;        /* source items */
    uint32_t a_workers, b_workers;
    int b_unordered;
    uint32_t a_sleep_us, b_sleep_us;
    uint32_t branch_capacity; /* 0: default */
    uint32_t merge_capacity;  /* 0: default */
    uint32_t sink_sleep_us;
    uint32_t batch; /* 0: default */
    int fusion;
} merge_case;

typedef struct branch_work {
    uint64_t tag;
    uint32_t sleep_us;
} branch_work;

static int32_t tag_branch(void *user, uint64_t in, uint64_t *out) {
    branch_work *w = (branch_work *)user;
    if (w->sleep_us) tu_sleep_us(w->sleep_us);
    *out = in | w->tag;
    return 0;
}

static int32_t select_parity(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                             uint32_t *count) {
    (void)capacity;
    *count = 1;
    (void)user;
    routes[0] = (uint32_t)(item % 2);
    return 0;
}

static int32_t plain_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    *copy = item;
    return 0;
}

/* The merged stage: every item must carry exactly one branch tag. */
static int32_t join_check(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (((in & TAG_A) != 0) == ((in & TAG_B) != 0)) return 13;
    *out = in;
    return 0;
}

typedef struct order_rec {
    uint64_t n;
    uint8_t *branch; /* branch (0 A, 1 B) of the i-th delivery */
    tu_tracker got[2];
    uint32_t sleep_us;
    uint64_t bad;
} order_rec;

static int32_t order_sink(void *user, uint64_t item) {
    order_rec *o = (order_rec *)user;
    uint32_t br = (item & TAG_B) ? 1u : 0u;
    if (o->sleep_us) tu_sleep_us(o->sleep_us);
    if (o->n < 2ull * o->got[0].n) o->branch[o->n] = (uint8_t)br;
    o->n++; /* a single-worker sink: never concurrent with itself */
    tu_tracker_deliver(&o->got[br], item & VALUE_MASK);
    return 0;
}

typedef struct merge_run {
    tu_range_source src;
    tu_tracker freed;
    branch_work wa, wb;
    order_rec rec;
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t split, a, b, join, sink;
} merge_run;

/* source -> router|broadcast -> A (tag A) / B (tag B) -> both into "join" -> sink. */
static void merge_run_go(merge_run *m, const merge_case *c) {
    uint32_t r0 = 0, r1 = 0;
    memset(m, 0, sizeof *m);
    m->src.end = c->n;
    tu_tracker_init(&m->freed, c->n);
    tu_tracker_init(&m->rec.got[0], c->n);
    tu_tracker_init(&m->rec.got[1], c->n);
    m->rec.branch = (uint8_t *)calloc(2 * (size_t)c->n, 1);
    assert_non_null(m->rec.branch);
    m->rec.sleep_us = c->sink_sleep_us;
    m->wa.tag = TAG_A;
    m->wa.sleep_us = c->a_sleep_us;
    m->wb.tag = TAG_B;
    m->wb.sleep_us = c->b_sleep_us;
    m->rt = tu_runtime(2);
    m->p = tu_pipeline(m->rt, "merging", &m->freed);
    TU_OK(fluxus_pipeline_set_fusion(m->p, c->fusion));
    if (c->batch) TU_OK(fluxus_pipeline_set_batch_size(m->p, c->batch));
    TU_OK(fluxus_pipeline_set_pull_source(m->p, "src", tu_range_pull, &m->src, NULL));
    if (c->broadcast) {
        TU_OK(fluxus_pipeline_add_broadcast(&m->split, m->p, "split"));
        TU_OK(fluxus_stage_set_copy(m->p, m->split, plain_copy, NULL, NULL));
    } else {
        TU_OK(fluxus_pipeline_add_router(&m->split, m->p, "split", select_parity, NULL, NULL));
    }
    TU_OK(fluxus_stage_add_route(&r0, m->p, m->split, "a"));
    TU_OK(fluxus_stage_add_route(&r1, m->p, m->split, "b"));
    TU_OK(fluxus_pipeline_branch(m->p, m->split, r0));
    TU_OK(fluxus_pipeline_add_map(&m->a, m->p, "branch.a", tag_branch, &m->wa, NULL));
    TU_OK(fluxus_stage_set_workers(m->p, m->a, c->a_workers));
    if (c->branch_capacity) TU_OK(fluxus_stage_set_queue_capacity(m->p, m->a, c->branch_capacity));
    TU_OK(fluxus_pipeline_branch(m->p, m->split, r1));
    TU_OK(fluxus_pipeline_add_map(&m->b, m->p, "branch.b", tag_branch, &m->wb, NULL));
    TU_OK(fluxus_stage_set_workers(m->p, m->b, c->b_workers));
    if (c->b_unordered) TU_OK(fluxus_stage_set_order(m->p, m->b, FLUXUS_ORDER_UNORDERED));
    if (c->branch_capacity) TU_OK(fluxus_stage_set_queue_capacity(m->p, m->b, c->branch_capacity));
    TU_OK(fluxus_pipeline_add_map(&m->join, m->p, "join", join_check, NULL, NULL));
    if (c->merge_capacity)
        TU_OK(fluxus_stage_set_queue_capacity(m->p, m->join, c->merge_capacity));
    TU_OK(fluxus_pipeline_add_sink(&m->sink, m->p, "sink", order_sink, &m->rec, NULL));
    TU_OK(fluxus_pipeline_connect(m->p, m->a, FLUXUS_OUTLET_MAIN, m->join));
    TU_OK(fluxus_pipeline_start(m->p));
    TU_OK(tu_wait(m->p));
}

/* Every value arrived exactly once per branch it was sent to; the join saw everything. */
static void merge_check(merge_run *m, const merge_case *c) {
    uint32_t sinks[2];
    fluxus_stage_stats js, as, bs;
    uint64_t v, total = c->broadcast ? 2ull * c->n : c->n;
    for (v = 0; v < c->n; v++) {
        uint32_t want_a = c->broadcast || v % 2 == 0, want_b = c->broadcast || v % 2 == 1;
        if (TU_LOAD(&m->rec.got[0].delivered[v]) != want_a ||
            TU_LOAD(&m->rec.got[1].delivered[v]) != want_b)
            fail_msg("value %llu arrived %u times from A and %u from B (expected %u, %u)",
                     (unsigned long long)v, TU_LOAD(&m->rec.got[0].delivered[v]),
                     TU_LOAD(&m->rec.got[1].delivered[v]), want_a, want_b);
    }
    assert_int_equal(m->rec.n, total);
    assert_int_equal(m->rec.got[0].out_of_range + m->rec.got[1].out_of_range, 0);
    assert_int_equal(TU_LOAD(&m->freed.freed_total), 0);
    tu_stage_stats(m->p, m->join, &js);
    tu_stage_stats(m->p, m->a, &as);
    tu_stage_stats(m->p, m->b, &bs);
    assert_int_equal(js.in, total);
    assert_int_equal(js.out, total);
    assert_int_equal(as.out + bs.out, total);
    if (c->merge_capacity) {
        assert_int_equal(js.queue_capacity, c->merge_capacity);
        assert_true(js.queue_peak <= c->merge_capacity);
    }
    sinks[0] = m->sink;
    sinks[1] = NO_STAGE;
    check_graph(m->p, sinks, c->n);
}

/* Share of each branch among the first half of the deliveries. */
static void merge_first_half(const merge_run *m, uint64_t *a, uint64_t *b) {
    uint64_t i, half = m->rec.n / 2;
    *a = *b = 0;
    for (i = 0; i < half; i++) {
        if (m->rec.branch[i])
            (*b)++;
        else
            (*a)++;
    }
}

static void merge_run_free(merge_run *m) {
    tu_free_all(m->p, m->rt);
    tu_tracker_destroy(&m->freed);
    tu_tracker_destroy(&m->rec.got[0]);
    tu_tracker_destroy(&m->rec.got[1]);
    free(m->rec.branch);
}

/* Proves: two branches (multi-worker, ordered and unordered) merged into one stage deliver every
 * item exactly once, after a router (each item once) and after a broadcast (each item once per
 * branch), with fusion on and off; the merged stage's counts add up. */
static void test_merge_delivers_everything_exactly_once(void **state) {
    merge_case c;
    merge_run m;
    int bc, fusion;
    (void)state;
    for (bc = 0; bc <= 1; bc++) {
        for (fusion = 0; fusion <= 1; fusion++) {
            memset(&c, 0, sizeof c);
            c.broadcast = bc;
            c.n = 6000;
            c.a_workers = 2;
            c.b_workers = 3;
            c.b_unordered = 1;
            c.fusion = fusion;
            merge_run_go(&m, &c);
            merge_check(&m, &c);
            merge_run_free(&m);
        }
    }
    print_message("merge: router 6000 -> 6000 and broadcast 6000 -> 12000 at the sink, once each\n");
}

/* Proves (fairness): two equally fast producers feeding a merged stage with a 2-item queue in
 * front of a slow consumer both make progress: in the first half of the deliveries each branch
 * has at least 20 % (a producer that always won the freed room would starve the other). */
static void test_merge_slow_consumer_serves_both_producers(void **state) {
    merge_case c;
    merge_run m;
    uint64_t a, b, half;
    (void)state;
    memset(&c, 0, sizeof c);
    c.n = 600; /* 300 per branch: both branch queues hold all of it, so the router never waits */
    c.a_workers = 1;
    c.b_workers = 1;
    c.merge_capacity = 2;
    c.sink_sleep_us = 20;
    c.fusion = 1;
    merge_run_go(&m, &c);
    merge_check(&m, &c);
    merge_first_half(&m, &a, &b);
    half = m.rec.n / 2;
    print_message("merge fairness (slow consumer): first half %llu A / %llu B\n",
                  (unsigned long long)a, (unsigned long long)b);
    assert_true(a * 5 >= half);
    assert_true(b * 5 >= half);
    merge_run_free(&m);
}

/* Proves: a fast branch and a slow one (2 workers each, the slow one unordered) merged into a
 * stage with a 4-item queue both make progress: each has at least 20 % of the first half of the
 * deliveries, after a router and after a broadcast; the merged queue never exceeds 4. */
static void test_merge_branches_of_different_speeds(void **state) {
    merge_case c;
    merge_run m;
    uint64_t a, b, half;
    int bc;
    (void)state;
    for (bc = 0; bc <= 1; bc++) {
        memset(&c, 0, sizeof c);
        c.broadcast = bc;
        c.n = 800;
        c.a_workers = 2;
        c.b_workers = 2;
        c.b_unordered = 1;
        c.b_sleep_us = 30;
        c.branch_capacity = 8;
        c.merge_capacity = 4;
        c.batch = 16;
        c.fusion = 1;
        merge_run_go(&m, &c);
        merge_check(&m, &c);
        merge_first_half(&m, &a, &b);
        half = m.rec.n / 2;
        print_message("merge fairness (%s, fast A / slow B): first half %llu A / %llu B\n",
                      bc ? "broadcast" : "router", (unsigned long long)a, (unsigned long long)b);
        assert_true(a * 5 >= half);
        assert_true(b * 5 >= half);
        merge_run_free(&m);
    }
}

/* ---------------------------------------------------------------------------------------------
 * 4. Error branches
 * ------------------------------------------------------------------------------------------- */

#define EN 2000u
#define REPAIRED (1ull << 40)

typedef struct flaky {
    uint32_t n;
    uint32_t *calls;   /* per value */
    uint64_t fail_lo, fail_hi; /* values in [lo, hi) fail always */
    uint32_t mod, rem; /* values with v % mod == rem fail always (mod 0: none) */
    uint32_t mod_once, rem_once; /* these fail on their first attempt only */
} flaky;

static int32_t flaky_map(void *user, uint64_t in, uint64_t *out) {
    flaky *f = (flaky *)user;
    uint32_t attempt = 1;
    if (in < f->n) attempt = TU_ADD(&f->calls[in], 1);
    if (in >= f->fail_lo && in < f->fail_hi) return 77;
    if (f->mod && in % f->mod == f->rem) return 77;
    if (f->mod_once && in % f->mod_once == f->rem_once && attempt == 1) return 78;
    *out = in;
    return 0;
}

static int32_t flaky_sink(void *user, uint64_t item) {
    flaky *f = (flaky *)user;
    if (item < f->n) TU_ADD(&f->calls[item], 1);
    if (f->mod && item % f->mod == f->rem) return 5;
    return 0;
}

static int32_t repair(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in | REPAIRED;
    return 0;
}

/* Sink recording plain and repaired values apart. */
typedef struct repair_rec {
    tu_tracker plain, repaired;
    uint32_t sleep_us;
    uint64_t block_after; /* 0: never; else the call after this many waits for `release` */
    uint64_t calls;
    int release, blocked;
} repair_rec;

static int32_t repair_sink(void *user, uint64_t item) {
    repair_rec *r = (repair_rec *)user;
    if (r->sleep_us) tu_sleep_us(r->sleep_us);
    if (r->block_after && ++r->calls > r->block_after) {
        TU_STORE(&r->blocked, 1);
        while (!TU_LOAD(&r->release)) tu_sleep_us(100);
    }
    if (item & REPAIRED)
        tu_tracker_deliver(&r->repaired, item & ~REPAIRED);
    else
        tu_tracker_deliver(&r->plain, item);
    return 0;
}

static void repair_rec_init(repair_rec *r, uint64_t n) {
    memset(r, 0, sizeof *r);
    tu_tracker_init(&r->plain, n);
    tu_tracker_init(&r->repaired, n);
}

static void repair_rec_destroy(repair_rec *r) {
    tu_tracker_destroy(&r->plain);
    tu_tracker_destroy(&r->repaired);
}

static void flaky_init(flaky *f, uint32_t n) {
    memset(f, 0, sizeof *f);
    f->n = n;
    f->calls = (uint32_t *)calloc(n, sizeof(uint32_t));
    assert_non_null(f->calls);
}

/* Error-branch topologies of test_error_branch_repairs_failed_items. */
enum { EB_REPAIR_INTO_MAIN, EB_REPAIR_OWN_SINK, EB_STRAIGHT_INTO_MAIN };

/* Proves: items a map fails (under the default fail-fast policy) go down its error branch
 * instead: to a repair map merged back into the main sink, to a repair map with its own sink,
 * or straight into the main sink. Every item arrives exactly once (failed ones repaired where
 * there is a repair), the failing stage counts them `routed`, not failed; the pipeline finishes
 * with FLUXUS_OK, balanced, the destructor never runs; fusion does not change the result. */
static void test_error_branch_repairs_failed_items(void **state) {
    int topo, fusion;
    (void)state;
    for (topo = EB_REPAIR_INTO_MAIN; topo <= EB_STRAIGHT_INTO_MAIN; topo++) {
        for (fusion = 0; fusion <= 1; fusion++) {
            fluxus_runtime *rt = tu_runtime(2);
            tu_tracker freed;
            tu_range_source src = {0, EN, 0};
            flaky f;
            repair_rec main_rec, err_rec;
            fluxus_pipeline *p;
            fluxus_pipeline_stats s;
            fluxus_stage_stats ms, rs, ss;
            uint32_t m = 0, sink = 0, rep = NO_STAGE, esink = NO_STAGE, sinks[3];
            uint64_t v, failing = EN / 10;
            tu_tracker_init(&freed, EN);
            flaky_init(&f, EN);
            f.mod = 10;
            f.rem = 3;
            repair_rec_init(&main_rec, EN);
            repair_rec_init(&err_rec, EN);
            p = tu_pipeline(rt, "error-branch", &freed);
            TU_OK(fluxus_pipeline_set_fusion(p, fusion));
            TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
            TU_OK(fluxus_pipeline_add_map(&m, p, "flaky", flaky_map, &f, NULL));
            TU_OK(fluxus_pipeline_add_sink(&sink, p, "sink", repair_sink, &main_rec, NULL));
            if (topo == EB_STRAIGHT_INTO_MAIN) {
                TU_OK(fluxus_pipeline_connect(p, m, FLUXUS_OUTLET_ERROR, sink));
            } else {
                TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
                TU_OK(fluxus_pipeline_add_map(&rep, p, "repair", repair, NULL, NULL));
                if (topo == EB_REPAIR_INTO_MAIN)
                    TU_OK(fluxus_pipeline_connect(p, rep, FLUXUS_OUTLET_MAIN, sink));
                else
                    TU_OK(fluxus_pipeline_add_sink(&esink, p, "errors", repair_sink, &err_rec,
                                                   NULL));
            }
            TU_OK(fluxus_pipeline_start(p));
            TU_OK(tu_wait(p));

            for (v = 0; v < EN; v++) {
                int fails = v % 10 == 3;
                repair_rec *where = topo == EB_REPAIR_OWN_SINK && fails ? &err_rec : &main_rec;
                repair_rec *other = where == &main_rec ? &err_rec : &main_rec;
                uint32_t want_repaired = fails && topo != EB_STRAIGHT_INTO_MAIN;
                assert_int_equal(where->repaired.delivered[v], want_repaired);
                assert_int_equal(where->plain.delivered[v], want_repaired ? 0 : 1);
                assert_int_equal(other->repaired.delivered[v] + other->plain.delivered[v], 0);
                assert_int_equal(f.calls[v], 1);
            }
            assert_int_equal(TU_LOAD(&freed.freed_total), 0);
            tu_stage_stats(p, m, &ms);
            assert_int_equal(ms.in, EN);
            assert_int_equal(ms.out, EN - failing);
            assert_int_equal(ms.routed, failing);
            assert_int_equal(ms.failed + ms.dead_lettered, 0);
            if (rep != NO_STAGE) {
                tu_stage_stats(p, rep, &rs);
                assert_int_equal(rs.in, failing);
                assert_int_equal(rs.out, failing);
            }
            tu_stage_stats(p, sink, &ss);
            assert_int_equal(ss.out, topo == EB_REPAIR_OWN_SINK ? EN - failing : EN);
            tu_stats(p, &s);
            assert_int_equal(s.admitted, EN);
            assert_int_equal(s.delivered, EN);
            assert_int_equal(s.failed, 0);
            assert_int_equal(s.result, FLUXUS_OK);
            sinks[0] = sink;
            sinks[1] = esink;
            sinks[2] = NO_STAGE;
            check_graph(p, sinks, EN);
            tu_free_all(p, rt);
            tu_tracker_destroy(&freed);
            repair_rec_destroy(&main_rec);
            repair_rec_destroy(&err_rec);
            free(f.calls);
        }
    }
    print_message("error branch: %u of %u items routed and repaired, 3 topologies x fusion on/off\n",
                  EN / 10, EN);
}

/* Proves: with retries only items that fail every attempt go down the error branch; items that
 * fail once and then pass go on normally; the attempts (calls per item, `retries`) are exact. */
static void test_error_branch_after_retries(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, 1000, 0};
    flaky f;
    repair_rec main_rec, err_rec;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    uint32_t m = 0, sinks[3];
    uint64_t v, always = 100, once = 100;
    (void)state;
    tu_tracker_init(&freed, 1000);
    flaky_init(&f, 1000);
    f.mod = 10;
    f.rem = 3;
    f.mod_once = 10;
    f.rem_once = 7;
    repair_rec_init(&main_rec, 1000);
    repair_rec_init(&err_rec, 1000);
    p = tu_pipeline(rt, "retrying", &freed);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "flaky", flaky_map, &f, NULL));
    TU_OK(fluxus_stage_set_retry(p, m, 3, FLUXUS_BACKOFF_CONSTANT, 50, 50));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sink", repair_sink, &main_rec, NULL));
    TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "errors", repair_sink, &err_rec, NULL));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (v = 0; v < 1000; v++) {
        uint32_t want_calls = v % 10 == 3 ? 3 : v % 10 == 7 ? 2 : 1;
        if (f.calls[v] != want_calls)
            fail_msg("value %llu: %u calls, expected %u", (unsigned long long)v, f.calls[v],
                     want_calls);
        assert_int_equal(err_rec.plain.delivered[v], v % 10 == 3 ? 1 : 0);
        assert_int_equal(main_rec.plain.delivered[v], v % 10 == 3 ? 0 : 1);
    }
    tu_stage_stats(p, m, &ms);
    assert_int_equal(ms.in, 1000);
    assert_int_equal(ms.routed, always);
    assert_int_equal(ms.retries, 2 * always + once);
    assert_int_equal(ms.retry_waiting, 0);
    assert_int_equal(ms.failed + ms.dead_lettered, 0);
    assert_int_equal(ms.out, 1000 - always);
    assert_int_equal(TU_LOAD(&freed.freed_total), 0);
    check_graph(p, sinks, 1000);
    print_message("error branch after retries: %llu routed after 3 attempts, %llu retries\n",
                  (unsigned long long)ms.routed, (unsigned long long)ms.retries);
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    repair_rec_destroy(&main_rec);
    repair_rec_destroy(&err_rec);
    free(f.calls);
}

/* Proves: under a circuit breaker in FAIL mode, items the open breaker refuses go down the error
 * branch too (counted routed, not failed): after 5 consecutive failures every later item is
 * refused without a call, and arrives at the branch's sink, in full. */
static void test_error_branch_takes_circuit_breaker_refusals(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, 1000, 0};
    flaky f;
    repair_rec main_rec, err_rec;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    fluxus_circuit_breaker *cb = NULL;
    int32_t bstate = -1;
    uint32_t m = 0, sinks[3];
    uint64_t v, calls = 0;
    (void)state;
    tu_tracker_init(&freed, 1000);
    flaky_init(&f, 1000);
    f.fail_lo = 100;
    f.fail_hi = 105;
    repair_rec_init(&main_rec, 1000);
    repair_rec_init(&err_rec, 1000);
    TU_OK(fluxus_circuit_breaker_new(&cb, rt));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 5));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 3600ull * 1000000ull));
    p = tu_pipeline(rt, "guarded", &freed);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "flaky", flaky_map, &f, NULL));
    TU_OK(fluxus_stage_set_circuit_breaker(p, m, cb, FLUXUS_BREAKER_FAIL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sink", repair_sink, &main_rec, NULL));
    TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "repair", repair, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "errors", repair_sink, &err_rec, NULL));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (v = 0; v < 1000; v++) {
        calls += f.calls[v];
        assert_int_equal(f.calls[v], v < 105 ? 1 : 0);
        assert_int_equal(main_rec.plain.delivered[v], v < 100 ? 1 : 0);
        assert_int_equal(err_rec.repaired.delivered[v], v < 100 ? 0 : 1);
    }
    assert_int_equal(calls, 105);
    TU_OK(fluxus_circuit_breaker_get_state(&bstate, cb));
    assert_int_equal(bstate, FLUXUS_BREAKER_OPEN);
    tu_stage_stats(p, m, &ms);
    assert_int_equal(ms.routed, 900);
    assert_int_equal(ms.failed + ms.dead_lettered, 0);
    assert_int_equal(ms.out, 100);
    assert_int_equal(TU_LOAD(&freed.freed_total), 0);
    check_graph(p, sinks, 1000);
    print_message("error branch with breaker: 5 failed calls + 895 refusals routed, 100 passed\n");
    tu_free_all(p, rt);
    TU_OK(fluxus_circuit_breaker_free(cb));
    tu_tracker_destroy(&freed);
    repair_rec_destroy(&main_rec);
    repair_rec_destroy(&err_rec);
    free(f.calls);
}

/* Proves: a slow error branch with a 1-item queue applies backpressure to the failing stage
 * without losing anything: every routed item arrives exactly once, the branch queue never holds
 * more than its capacity. */
static void test_error_branch_backpressure(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, 300, 0};
    flaky f;
    repair_rec main_rec, err_rec;
    fluxus_pipeline *p;
    fluxus_stage_stats ms, es;
    uint32_t m = 0, sinks[3];
    uint64_t v;
    (void)state;
    tu_tracker_init(&freed, 300);
    flaky_init(&f, 300);
    f.mod = 3;
    f.rem = 0;
    repair_rec_init(&main_rec, 300);
    repair_rec_init(&err_rec, 300);
    err_rec.sleep_us = 200;
    p = tu_pipeline(rt, "slow-branch", &freed);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "flaky", flaky_map, &f, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sink", repair_sink, &main_rec, NULL));
    TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "slow-errors", repair_sink, &err_rec, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(p, sinks[1], 1));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (v = 0; v < 300; v++) {
        assert_int_equal(err_rec.plain.delivered[v], v % 3 == 0 ? 1 : 0);
        assert_int_equal(main_rec.plain.delivered[v], v % 3 == 0 ? 0 : 1);
    }
    tu_stage_stats(p, m, &ms);
    tu_stage_stats(p, sinks[1], &es);
    assert_int_equal(ms.routed, 100);
    assert_int_equal(es.in, 100);
    assert_int_equal(es.out, 100);
    assert_int_equal(es.queue_capacity, 1);
    assert_true(es.queue_peak >= 1);
    assert_true(es.queue_peak <= 1);
    assert_int_equal(TU_LOAD(&freed.freed_total), 0);
    check_graph(p, sinks, 300);
    print_message("error branch backpressure: 100 routed through a 1-item queue, peak %llu\n",
                  (unsigned long long)es.queue_peak);
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    repair_rec_destroy(&main_rec);
    repair_rec_destroy(&err_rec);
    free(f.calls);
}

/* Proves: cancelling while failed items wait for room in a blocked error branch ends every
 * admitted item exactly once (delivered or destroyed), never touches the items that were not
 * admitted, and every stage balances: the items waiting at the failing stage for the branch are
 * cancelled at the branch (counted in and cancelled there, after routed at the failing stage). */
static void test_error_branch_cancel_midway(void **state) {
    enum { CN = 200000 };
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, CN, 0};
    flaky f;
    repair_rec main_rec, err_rec;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fluxus_stage_stats ms, es;
    uint32_t m = 0, sinks[3];
    uint64_t v, t0, admitted, waiting = 0;
    (void)state;
    tu_tracker_init(&freed, CN);
    flaky_init(&f, CN);
    f.mod = 2;
    f.rem = 1;
    repair_rec_init(&main_rec, CN);
    repair_rec_init(&err_rec, CN);
    err_rec.block_after = 3; /* the branch's sink takes 3 items, then blocks on the 4th */
    p = tu_pipeline(rt, "cancelled", &freed);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "flaky", flaky_map, &f, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sink", repair_sink, &main_rec, NULL));
    TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "blocked-errors", repair_sink, &err_rec, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(p, sinks[1], 1));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    /* Wait until the branch's sink is blocked, its queue is full, and more items are routed than
     * the branch took in: those wait at the failing stage for room. */
    t0 = tu_now_ms();
    for (;;) {
        tu_stage_stats(p, sinks[1], &es);
        tu_stage_stats(p, m, &ms);
        waiting = ms.routed > es.in ? ms.routed - es.in : 0;
        if (TU_LOAD(&err_rec.blocked) && es.queue_depth == 1 && waiting > 0) break;
        if (tu_now_ms() - t0 > TU_WAIT_MS) fail_msg("the error branch never filled up");
        tu_sleep_us(200);
    }
    TU_OK(fluxus_pipeline_cancel(p));
    TU_STORE(&err_rec.release, 1);
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    tu_stats(p, &s);
    admitted = TU_LOAD(&src.next);
    assert_int_equal(s.admitted, admitted);
    assert_true(admitted < CN);
    for (v = 0; v < admitted; v++) {
        uint32_t d = main_rec.plain.delivered[v] + err_rec.plain.delivered[v];
        if (d + TU_LOAD(&freed.freed[v]) != 1)
            fail_msg("item %llu: delivered %u, destroyed %u", (unsigned long long)v, d,
                     TU_LOAD(&freed.freed[v]));
    }
    for (v = admitted; v < CN; v++)
        if (main_rec.plain.delivered[v] + err_rec.plain.delivered[v] + freed.freed[v] != 0)
            fail_msg("item %llu was never admitted but was touched", (unsigned long long)v);
    assert_int_equal(TU_LOAD(&freed.freed_total), s.admitted - s.delivered);
    assert_int_equal(err_rec.plain.delivered_total, 4); /* 3, and the one it was blocked on */
    tu_stage_stats(p, m, &ms);
    tu_stage_stats(p, sinks[1], &es);
    /* the queued item and every waiting one were cancelled at the branch */
    assert_true(es.cancelled >= 1 + waiting);
    assert_int_equal(es.in, ms.routed);
    assert_int_equal(es.out, 4);
    check_graph(p, sinks, UINT64_MAX);
    print_message("error branch cancel: %llu admitted, %llu waiting for the branch at cancel, "
                  "%llu cancelled (%llu at the branch)\n",
                  (unsigned long long)admitted, (unsigned long long)waiting,
                  (unsigned long long)s.cancelled, (unsigned long long)es.cancelled);
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    repair_rec_destroy(&main_rec);
    repair_rec_destroy(&err_rec);
    free(f.calls);
}

/* Sink that blocks on one value until the pipeline is cancelled. */
typedef struct gate_sink {
    fluxus_pipeline *p;
    uint64_t block_on, count;
    int blocked;
} gate_sink;

static int32_t gated_sink(void *user, uint64_t item) {
    gate_sink *g = (gate_sink *)user;
    if (item == g->block_on) {
        TU_STORE(&g->blocked, 1);
        while (!tu_is_cancelled(g->p)) tu_sleep_us(200);
    }
    g->count++;
    return 0;
}

/* Proves: a drain whose deadline passes reports, per stage, the items it still holds, and a
 * stage that sent failed items down its error branch does not hold them: its routed items are
 * not counted as held (only the blocked sink's item is). */
static void test_drain_deadline_does_not_count_routed_items_as_held(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, 100, 0};
    flaky f;
    repair_rec err_rec;
    gate_sink g;
    fluxus_pipeline *p;
    fluxus_stage_stats ms, gs;
    tu_msg msg;
    uint32_t m = 0, sinks[3];
    uint64_t t0;
    (void)state;
    tu_tracker_init(&freed, 100);
    flaky_init(&f, 100);
    f.mod = 10;
    f.rem = 3;
    repair_rec_init(&err_rec, 100);
    memset(&g, 0, sizeof g);
    g.block_on = 99;
    p = tu_pipeline(rt, "draining", &freed);
    g.p = p;
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_batch_size(p, 1)); /* counters move per batch: one item each */
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "flaky", flaky_map, &f, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "gated", gated_sink, &g, NULL));
    TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "errors", repair_sink, &err_rec, NULL));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    /* Everything but value 99 has ended: 10 routed and stored, 89 delivered. */
    t0 = tu_now_ms();
    for (;;) {
        tu_stage_stats(p, m, &ms);
        if (TU_LOAD(&g.blocked) && ms.routed == 10 && TU_LOAD(&err_rec.plain.delivered_total) == 10)
            break;
        if (tu_now_ms() - t0 > TU_WAIT_MS) fail_msg("the pipeline never got to its last item");
        tu_sleep_us(200);
    }
    TU_EXPECT_MSG(FLUXUS_ETIMEDOUT, fluxus_pipeline_drain(p, 20), &msg);
    tu_stage_stats(p, m, &ms);
    tu_stage_stats(p, sinks[0], &gs);
    print_message("drain deadline: held flaky %llu, gated %llu; \"%s\"\n",
                  (unsigned long long)ms.held_at_deadline,
                  (unsigned long long)gs.held_at_deadline, msg.text);
    assert_int_equal(gs.held_at_deadline, 1);
    assert_int_equal(ms.held_at_deadline, 0);
    assert_non_null(strstr(msg.text, "gated (1)"));
    assert_null(strstr(msg.text, "flaky"));
    assert_int_equal(ms.routed, 10);
    check_graph(p, sinks, 100);
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    repair_rec_destroy(&err_rec);
    free(f.calls);
}

/* Copy callback that blocks on one value until the pipeline is cancelled. */
static int32_t gated_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    gate_sink *g = (gate_sink *)user;
    (void)route;
    if (item == g->block_on) {
        TU_STORE(&g->blocked, 1);
        while (!tu_is_cancelled(g->p)) tu_sleep_us(200);
    }
    *copy = item;
    return 0;
}

/* Proves: at a drain deadline a broadcast that made copies reports exactly what it still holds
 * (in + spawned - out): the item whose copy is being made and the ones queued behind it. */
static void test_drain_deadline_counts_what_a_broadcast_holds(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed, t0, t1;
    tu_range_source src = {0, 100, 0};
    gate_sink g;
    fluxus_pipeline *p;
    fluxus_stage_stats bs;
    tu_msg msg;
    uint32_t b = 0, sinks[3];
    uint64_t start;
    (void)state;
    tu_tracker_init(&freed, 100);
    tu_tracker_init(&t0, 100);
    tu_tracker_init(&t1, 100);
    memset(&g, 0, sizeof g);
    g.block_on = 50;
    p = tu_pipeline(rt, "draining-broadcast", &freed);
    g.p = p;
    TU_OK(fluxus_pipeline_set_fusion(p, 0));
    TU_OK(fluxus_pipeline_set_batch_size(p, 1));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_broadcast(&b, p, "fan"));
    TU_OK(fluxus_stage_add_route(NULL, p, b, "x"));
    TU_OK(fluxus_stage_add_route(NULL, p, b, "y"));
    TU_OK(fluxus_stage_set_copy(p, b, gated_copy, &g, NULL));
    TU_OK(fluxus_pipeline_branch(p, b, 0));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sx", tu_tracker_sink, &t0, NULL));
    TU_OK(fluxus_pipeline_branch(p, b, 1));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "sy", tu_tracker_sink, &t1, NULL));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    start = tu_now_ms();
    for (;;) {
        tu_stage_stats(p, b, &bs);
        if (TU_LOAD(&g.blocked) && bs.in == 100 && bs.out == 100) break;
        if (tu_now_ms() - start > TU_WAIT_MS) fail_msg("the broadcast never got to value 50");
        tu_sleep_us(200);
    }
    TU_EXPECT_MSG(FLUXUS_ETIMEDOUT, fluxus_pipeline_drain(p, 20), &msg);
    tu_stage_stats(p, b, &bs);
    print_message("drain deadline at a broadcast: held %llu; \"%s\"\n",
                  (unsigned long long)bs.held_at_deadline, msg.text);
    assert_int_equal(bs.held_at_deadline, 50); /* 100 in + 50 copies - 100 out */
    assert_non_null(strstr(msg.text, "fan (50)"));
    check_graph(p, sinks, 100);
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    tu_tracker_destroy(&t0);
    tu_tracker_destroy(&t1);
}

/* Proves: FLUXUS_OUTLET_ERROR works on a sink: items the sink fails go down its branch to
 * another sink (counted routed at the first sink), the rest are delivered. */
static void test_error_branch_on_a_sink(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, EN, 0};
    flaky f;
    repair_rec err_rec;
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fluxus_stage_stats ss, es;
    uint32_t sinks[3];
    uint64_t v, failing = EN / 5;
    (void)state;
    tu_tracker_init(&freed, EN);
    flaky_init(&f, EN);
    f.mod = 5;
    f.rem = 0;
    repair_rec_init(&err_rec, EN);
    p = tu_pipeline(rt, "failing-sink", &freed);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "store", flaky_sink, &f, NULL));
    TU_OK(fluxus_pipeline_branch(p, sinks[0], FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "store.errors", repair_sink, &err_rec, NULL));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (v = 0; v < EN; v++) {
        assert_int_equal(f.calls[v], 1);
        assert_int_equal(err_rec.plain.delivered[v], v % 5 == 0 ? 1 : 0);
    }
    tu_stage_stats(p, sinks[0], &ss);
    tu_stage_stats(p, sinks[1], &es);
    assert_int_equal(ss.in, EN);
    assert_int_equal(ss.out, EN - failing);
    assert_int_equal(ss.routed, failing);
    assert_int_equal(ss.failed, 0);
    assert_int_equal(es.out, failing);
    tu_stats(p, &s);
    assert_int_equal(s.delivered, EN);
    assert_int_equal(TU_LOAD(&freed.freed_total), 0);
    check_graph(p, sinks, EN);
    print_message("error branch on a sink: %llu of %u routed to the second sink\n",
                  (unsigned long long)failing, EN);
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    repair_rec_destroy(&err_rec);
    free(f.calls);
}


static int32_t collect_any(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static int32_t identity_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return 0;
}

/* Loader whose odd keys fail to load; batch whose groups holding a multiple of 97 fail. */
static int32_t odd_fails_load(void *user, const uint64_t *items, uint32_t count,
                              uint64_t *results, int32_t *status) {
    uint32_t i;
    (void)user;
    for (i = 0; i < count; i++) {
        if (items[i] & 1)
            status[i] = 7;
        else
            results[i] = 0; /* a plain value; the item destructor ignores 0 below */
    }
    return 0;
}

static int32_t keep_item(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    (void)user;
    (void)result;
    *out = item;
    return 0;
}

static int32_t group_fails_on_97(void *user, const uint64_t *items, uint32_t count,
                                 fluxus_emitter *em) {
    uint32_t i;
    (void)user;
    for (i = 0; i < count; i++)
        if (items[i] % 97 == 0) return 9;
    fluxus_emitter_keep_input(em);
    for (i = 0; i < count; i++)
        if (fluxus_emitter_emit(em, items[i]) != FLUXUS_OK) return 1;
    return 0;
}

/* Proves: a loader's and a batch stage's failures go down their error branch (routed, never
 * lost: the worker does not end while failures wait for the branch's queue, which here holds
 * one item). Regression: they used to be dropped on the floor (in_flight stuck, wait OK). */
static void test_error_branch_of_loader_and_batch_stages(void **state) {
    int kind;
    (void)state;
    for (kind = 0; kind < 2; kind++) {
        fluxus_runtime *rt = tu_runtime(2);
        tu_range_source src = {0, EN, 0};
        repair_rec ok_rec, err_rec;
        fluxus_pipeline *p;
        fluxus_stage_stats hs;
        uint32_t head, sinks[3];
        uint64_t v, failing = 0;
        repair_rec_init(&ok_rec, EN);
        repair_rec_init(&err_rec, EN);
        p = tu_pipeline(rt, kind ? "batch-errors" : "loader-errors", NULL);
        TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
        if (kind == 0)
            TU_OK(fluxus_pipeline_add_loader(&head, p, "loader", 16, 100, odd_fails_load,
                                             keep_item, NULL, NULL));
        else
            /* groups of 10 consecutive values: a long linger, so only full groups leave */
            TU_OK(fluxus_pipeline_add_batch(&head, p, "batch", 10, 10000000, group_fails_on_97,
                                            NULL, NULL));
        TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "ok", repair_sink, &ok_rec, NULL));
        TU_OK(fluxus_pipeline_branch(p, head, FLUXUS_OUTLET_ERROR));
        TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "errors", repair_sink, &err_rec, NULL));
        TU_OK(fluxus_stage_set_queue_capacity(p, sinks[1], 1));
        sinks[2] = NO_STAGE;
        TU_OK(fluxus_pipeline_start(p));
        TU_OK(tu_wait(p));
        for (v = 0; v < EN; v++) {
            /* batch: a group (values 10k..10k+9) fails when it holds a multiple of 97 */
            int fails = kind == 0 ? (int)(v & 1) : 0;
            if (kind == 1) {
                uint64_t g = v / 10 * 10, w;
                for (w = g; w < g + 10 && w < EN; w++)
                    if (w % 97 == 0) fails = 1;
            }
            failing += (uint64_t)fails;
            assert_int_equal(ok_rec.plain.delivered[v], fails ? 0 : 1);
            assert_int_equal(err_rec.plain.delivered[v], fails ? 1 : 0);
        }
        tu_stage_stats(p, head, &hs);
        assert_int_equal(hs.routed, failing);
        assert_int_equal(hs.failed, 0);
        check_graph(p, sinks, EN);
        print_message("%s: %llu of %u failed items routed to the error branch\n",
                      kind ? "batch" : "loader", (unsigned long long)failing, EN);
        tu_free_all(p, rt);
        repair_rec_destroy(&ok_rec);
        repair_rec_destroy(&err_rec);
    }
}

static int32_t win_pass(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                        fluxus_emitter *em) {
    (void)user;
    (void)items;
    (void)count;
    (void)start_ns;
    (void)em;
    return 0;
}

static int32_t join_input0(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    (void)item;
    *input = 0;
    return 0;
}

static int32_t noop_load(void *user, const uint64_t *items, uint32_t count, uint64_t *results,
                         int32_t *status) {
    (void)user;
    (void)items;
    (void)count;
    (void)results;
    (void)status;
    return 0;
}

/* Proves: what these heads cannot do is refused at start with FLUXUS_EINVAL (retry on a loader
 * or batch, an error branch on a join or window), and connect() into a source stage is refused
 * at once (it used to be accepted and crash at run time). */
static void test_heads_refuse_what_they_cannot_do(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    tu_range_source src = {0, 10, 0};
    fluxus_pipeline *p;
    uint32_t st, a, s2;
    int c;
    (void)state;
    for (c = 0; c < 4; c++) {
        p = tu_pipeline(rt, "refusals", NULL);
        TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
        if (c == 0) {
            TU_OK(fluxus_pipeline_add_loader(&st, p, "l", 4, 0, noop_load, keep_item, NULL, NULL));
            TU_OK(fluxus_stage_set_retry(p, st, 3, FLUXUS_BACKOFF_CONSTANT, 10, 10));
        } else if (c == 1) {
            TU_OK(fluxus_pipeline_add_batch(&st, p, "b", 4, 0, group_fails_on_97, NULL, NULL));
            TU_OK(fluxus_stage_set_retry(p, st, 3, FLUXUS_BACKOFF_CONSTANT, 10, 10));
        } else if (c == 2) {
            TU_OK(fluxus_pipeline_add_join(&st, p, "j", 1, join_input0, win_pass, NULL, NULL));
        } else {
            TU_OK(fluxus_pipeline_add_window(&st, p, "w", FLUXUS_WINDOW_COUNT, 3, win_pass, NULL,
                                             NULL));
        }
        TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", collect_any, NULL, NULL));
        if (c >= 2) {
            TU_OK(fluxus_pipeline_branch(p, st, FLUXUS_OUTLET_ERROR));
            TU_OK(fluxus_pipeline_add_sink(NULL, p, "errors", collect_any, NULL, NULL));
        }
        TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
        assert_non_null(strstr(fluxus_last_error_message(), c < 2 ? "does not retry"
                                                                  : "cannot be routed"));
        TU_OK(fluxus_pipeline_free(p));
    }
    p = tu_pipeline(rt, "into-a-source", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&a, p, "a", identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_source(&s2, p, "src2", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", collect_any, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_connect(p, a, 0, s2));
    assert_non_null(strstr(fluxus_last_error_message(), "is a source"));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
}

/* ---------------------------------------------------------------------------------------------
 * 5. Build-time errors
 * ------------------------------------------------------------------------------------------- */

static int32_t select_first(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                            uint32_t *count) {
    (void)capacity;
    *count = 1;
    (void)user;
    (void)item;
    routes[0] = 0;
    return 0;
}

/* Proves: each graph-building mistake is refused with its exact code, the pipeline stays
 * buildable after a refused start, and it then runs once the mistake is fixed. */
static void test_build_errors_have_exact_codes(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "building", NULL);
    tu_range_source src = {0, 100, 0};
    tu_tracker t0, t1;
    tu_msg msg;
    selector sel = {SEL_NONE, 0};
    uint32_t m = 0, r = 0, r0 = 9, r1 = 9, idx = 9, a = 0, s0 = 0, s1 = 0;
    (void)state;
    tu_tracker_init(&t0, 100);
    tu_tracker_init(&t1, 100);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "m", tu_identity_map, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_router(&r, p, "r", NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_router(&r, p, "r", select_mod4, &sel, NULL));
    /* a router ends its chain: nothing attaches after it until a branch is chosen */
    TU_EXPECT_MSG(FLUXUS_ESTATE, fluxus_pipeline_add_sink(NULL, p, "lost", tu_tracker_sink, &t0,
                                                          NULL),
                  &msg);
    assert_non_null(strstr(msg.text, "branch"));
    TU_OK(fluxus_stage_add_route(&r0, p, r, "zero"));
    TU_OK(fluxus_stage_add_route(&r1, p, r, "one"));
    assert_int_equal(r0, 0);
    assert_int_equal(r1, 1);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_add_route(NULL, p, r, "zero")); /* duplicate */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_add_route(NULL, p, r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_add_route(NULL, p, m, "x")); /* not a router */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_add_route(NULL, p, 77, "x"));
    TU_OK(fluxus_stage_get_route_index(&idx, p, r, "one"));
    assert_int_equal(idx, 1);
    TU_OK(fluxus_stage_get_route_index(&idx, p, r, "zero"));
    assert_int_equal(idx, 0);
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_get_route_index(&idx, p, r, "two"));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_get_route_index(&idx, p, 77, "one"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_route_index(&idx, p, r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_default_route(p, m, 0)); /* not a router */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_default_route(p, r, 2));
    TU_OK(fluxus_stage_set_default_route(p, r, 1));
    TU_OK(fluxus_stage_set_default_route(p, r, UINT32_MAX));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_copy(p, r, NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_copy(p, m, plain_copy, NULL, NULL));
    /* branches */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_branch(p, r, 2));             /* no route 2 */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_MAIN)); /* leads to r */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_branch(p, m, 1));             /* no outlet 1 */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_pipeline_branch(p, 77, 0));
    TU_OK(fluxus_pipeline_branch(p, r, r0));
    TU_OK(fluxus_pipeline_add_map(&a, p, "a", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&s0, p, "s0", tu_tracker_sink, &t0, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_add_map(NULL, p, "after-sink", tu_identity_map,
                                                     NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_branch(p, r, r0)); /* already leads to a */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_branch(p, s0, FLUXUS_OUTLET_MAIN)); /* a sink */
    /* loops */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_connect(p, a, FLUXUS_OUTLET_ERROR, a));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_connect(p, a, FLUXUS_OUTLET_ERROR, m));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_connect(p, s0, FLUXUS_OUTLET_ERROR, r), &msg);
    assert_non_null(strstr(msg.text, "loop"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_connect(p, a, FLUXUS_OUTLET_MAIN, s0)); /* taken */
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_pipeline_connect(p, a, FLUXUS_OUTLET_ERROR, 77));
    /* route "one" leads nowhere: start names it, and the pipeline stays buildable */
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &msg);
    assert_non_null(strstr(msg.text, "route 'one'"));
    TU_OK(fluxus_pipeline_branch(p, r, r1));
    TU_OK(fluxus_pipeline_add_sink(&s1, p, "s1", tu_tracker_sink, &t1, NULL));
    TU_OK(fluxus_stage_set_default_route(p, r, 1));
    TU_OK(fluxus_stage_set_error_policy(p, r, FLUXUS_ERROR_SKIP)); /* values 2 mod 4: ERANGE */
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    assert_int_equal(t0.delivered_total, 25);  /* 0 mod 4 */
    assert_int_equal(t1.delivered_total, 50);  /* 1 mod 4, and 3 mod 4 by default */
    /* after start */
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_branch(p, a, FLUXUS_OUTLET_ERROR));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_connect(p, a, FLUXUS_OUTLET_ERROR, s1));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_add_route(NULL, p, r, "late"));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&t0);
    tu_tracker_destroy(&t1);
    print_message("build errors: every misuse refused with its exact code\n");
}

/* Proves: the checks made at start: a broadcast of two routes needs a copy callback, a router
 * or broadcast needs routes and runs on one worker; an error route to another pipeline and an
 * error branch exclude each other; a router takes FLUXUS_MAX_ROUTES routes and no more. */
static void test_start_checks_of_graphs(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    tu_range_source src = {0, 10, 0};
    tu_tracker t;
    tu_msg msg;
    fluxus_pipeline *p, *d;
    uint32_t b = 0, m = 0, k, r = 0;
    char name[16];
    (void)state;
    tu_tracker_init(&t, 10);

    /* broadcast with 2 routes and no copy */
    p = tu_pipeline(rt, "no-copy", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_broadcast(&b, p, "fan"));
    TU_OK(fluxus_stage_add_route(NULL, p, b, "x"));
    TU_OK(fluxus_stage_add_route(NULL, p, b, "y"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_default_route(p, b, 0)); /* not a router */
    TU_OK(fluxus_pipeline_branch(p, b, 0));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sx", tu_tracker_sink, &t, NULL));
    TU_OK(fluxus_pipeline_branch(p, b, 1));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sy", tu_tracker_sink, &t, NULL));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &msg);
    assert_non_null(strstr(msg.text, "copy"));
    TU_OK(fluxus_pipeline_free(p));

    /* a broadcast without routes */
    p = tu_pipeline(rt, "no-routes", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_broadcast(&b, p, "fan"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_free(p));

    /* a router with 2 workers */
    p = tu_pipeline(rt, "two-workers", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_router(&r, p, "r", select_first, NULL, NULL));
    TU_OK(fluxus_stage_add_route(NULL, p, r, "only"));
    TU_OK(fluxus_stage_set_workers(p, r, 2));
    TU_OK(fluxus_pipeline_branch(p, r, 0));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", tu_tracker_sink, &t, NULL));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_start(p), &msg);
    assert_non_null(strstr(msg.text, "workers"));
    TU_OK(fluxus_pipeline_free(p));

    /* error route vs error branch */
    d = tu_pipeline(rt, "dead-letters", NULL);
    TU_OK(fluxus_pipeline_set_push_source(d, "in"));
    p = tu_pipeline(rt, "both", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", tu_tracker_sink, &t, NULL));
    TU_OK(fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "errors", tu_tracker_sink, &t, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_error_route(p, m, d));
    TU_OK(fluxus_pipeline_free(p));
    p = tu_pipeline(rt, "both2", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_error_route(p, m, d));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", tu_tracker_sink, &t, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_branch(p, m, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_free(d));

    /* FLUXUS_MAX_ROUTES routes, and no more */
    p = tu_pipeline(rt, "many", NULL);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_router(&r, p, "r", select_first, NULL, NULL));
    for (k = 0; k < FLUXUS_MAX_ROUTES; k++) {
        snprintf(name, sizeof name, "r%u", k);
        TU_OK(fluxus_stage_add_route(NULL, p, r, name));
    }
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_add_route(NULL, p, r, "one-too-many"));
    TU_OK(fluxus_pipeline_free(p));

    TU_OK(fluxus_runtime_free(rt));
    tu_tracker_destroy(&t);
    print_message("start checks: copy, routes, workers, error route/branch, %u routes max\n",
                  FLUXUS_MAX_ROUTES);
}

/* Selector over all the routes (more than the 64 a bit mask could name before 0.4). */
#define WIDE_ROUTES 1000u
static uint64_t g_wide_bad_calls; /* calls that got a wrong capacity or a nonzero count */
static int32_t select_wide(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                           uint32_t *count) {
    (void)user;
    if (capacity != WIDE_ROUTES || *count != 0) TU_ADD(&g_wide_bad_calls, 1);
    routes[0] = (uint32_t)(item % WIDE_ROUTES);
    *count = 1;
    return 0;
}

/* Proves: a router with 1000 routes, all leading into one shared sink, delivers every item
 * exactly once (routers have no width limit but FLUXUS_MAX_ROUTES). */
static void test_router_with_max_routes_into_one_sink(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker t;
    tu_range_source src = {0, 6400, 0};
    fluxus_pipeline *p;
    fluxus_stage_stats rs;
    uint32_t r = 0, k, sink = 0, sinks[2];
    char name[16];
    (void)state;
    tu_tracker_init(&t, 6400);
    p = tu_pipeline(rt, "max-routes", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_router(&r, p, "r", select_wide, NULL, NULL));
    for (k = 0; k < WIDE_ROUTES; k++) {
        snprintf(name, sizeof name, "r%u", k);
        TU_OK(fluxus_stage_add_route(NULL, p, r, name));
    }
    TU_OK(fluxus_pipeline_branch(p, r, 0));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "all", tu_tracker_sink, &t, NULL));
    for (k = 1; k < WIDE_ROUTES; k++) TU_OK(fluxus_pipeline_connect(p, r, k, sink));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    assert_int_equal(TU_LOAD(&g_wide_bad_calls), 0);
    tu_tracker_check_once(&t, 0, 6400);
    assert_int_equal(t.delivered_total, 6400);
    assert_int_equal(t.freed_total, 0);
    tu_stage_stats(p, r, &rs);
    assert_int_equal(rs.out, 6400);
    sinks[0] = sink;
    sinks[1] = NO_STAGE;
    check_graph(p, sinks, 6400);
    tu_check_conservation(p, &t, 0); /* the sink is the last stage here */
    print_message("router with %u routes into one sink: 6400 items once each\n", WIDE_ROUTES);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* ---------------------------------------------------------------------------------------------
 * 6. Push sources, fusion on/off, linear pipelines
 * ------------------------------------------------------------------------------------------- */

#define KN 3000u

static int32_t select_mod3(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                           uint32_t *count) {
    (void)user;
    (void)capacity;
    routes[0] = (uint32_t)(item % 3);
    *count = 1;
    return 0;
}

static int32_t keep_even(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    *keep = item % 2 == 0;
    return 0;
}

/* Per value: 1 plain at sink a, 2 plain at the main sink, 4 repaired at the main sink. */
typedef struct kg_rec {
    uint8_t *mark;
    uint64_t bad;
    uint32_t bit;
} kg_rec;

static int32_t kg_sink(void *user, uint64_t item) {
    kg_rec *k = (kg_rec *)user;
    uint64_t v = item & ~REPAIRED;
    uint8_t bit = (uint8_t)((item & REPAIRED) ? 4u : k->bit);
    if (v >= KN || (k->mark[v] & bit)) {
        k->bad++;
        return 0;
    }
    k->mark[v] |= bit;
    return 0;
}

typedef struct kg_result {
    uint8_t mark[KN];
    uint64_t bad, freed;
    uint32_t nstages;
    fluxus_stage_stats st[16];
    fluxus_pipeline_stats ps;
} kg_result;

/*
 * The mixed graph: source -> "scale" -> router "kind" (value mod 3):
 *   a: "a.work" -> "sink.a"
 *   b: filter "b.even" -> "join"
 *   c: "c.flaky" (fails multiples of 7; error branch -> "c.repair" -> "join") -> "join"
 *   "join" -> "sink.main"
 * With a push source when `push`, fed from this thread.
 */
static void kg_run(kg_result *res, int fusion, int push) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_tracker freed;
    tu_range_source src = {0, KN, 0};
    flaky f;
    kg_rec ra, rm;
    fluxus_pipeline *p;
    uint32_t scale = 0, kind = 0, a = 0, b = 0, c = 0, rep = 0, join = 0, sinks[3], i;
    uint8_t *mark_a = (uint8_t *)calloc(KN, 1), *mark_m = (uint8_t *)calloc(KN, 1);
    uint64_t v;
    assert_non_null(mark_a);
    assert_non_null(mark_m);
    memset(res, 0, sizeof *res);
    tu_tracker_init(&freed, KN);
    flaky_init(&f, KN);
    f.mod = 7;
    f.rem = 0;
    ra.mark = mark_a;
    ra.bad = 0;
    ra.bit = 1;
    rm.mark = mark_m;
    rm.bad = 0;
    rm.bit = 2;
    p = tu_pipeline(rt, "mixed", &freed);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    if (push)
        TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    else
        TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    if (!push) TU_OK(fluxus_pipeline_add_map(&scale, p, "scale", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_router(&kind, p, "kind", select_mod3, NULL, NULL));
    TU_OK(fluxus_stage_add_route(NULL, p, kind, "a"));
    TU_OK(fluxus_stage_add_route(NULL, p, kind, "b"));
    TU_OK(fluxus_stage_add_route(NULL, p, kind, "c"));
    TU_OK(fluxus_pipeline_branch(p, kind, 0));
    TU_OK(fluxus_pipeline_add_map(&a, p, "a.work", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[0], p, "sink.a", kg_sink, &ra, NULL));
    TU_OK(fluxus_pipeline_branch(p, kind, 1));
    TU_OK(fluxus_pipeline_add_filter(&b, p, "b.even", keep_even, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(&join, p, "join", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sinks[1], p, "sink.main", kg_sink, &rm, NULL));
    TU_OK(fluxus_pipeline_branch(p, kind, 2));
    TU_OK(fluxus_pipeline_add_map(&c, p, "c.flaky", flaky_map, &f, NULL));
    TU_OK(fluxus_pipeline_connect(p, c, FLUXUS_OUTLET_MAIN, join));
    TU_OK(fluxus_pipeline_branch(p, c, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_map(&rep, p, "c.repair", repair, NULL, NULL));
    TU_OK(fluxus_pipeline_connect(p, rep, FLUXUS_OUTLET_MAIN, join));
    sinks[2] = NO_STAGE;
    TU_OK(fluxus_pipeline_start(p));
    if (push) {
        for (v = 0; v < KN; v++) TU_OK(fluxus_pipeline_push(p, v, UINT32_MAX));
        TU_OK(fluxus_pipeline_close_input(p));
    }
    TU_OK(tu_wait(p));
    (void)scale;
    (void)a;
    (void)b;
    for (v = 0; v < KN; v++) res->mark[v] = (uint8_t)(mark_a[v] | mark_m[v]);
    res->bad = ra.bad + rm.bad + freed.out_of_range;
    res->freed = freed.freed_total;
    TU_OK(fluxus_pipeline_get_stage_count(&res->nstages, p));
    assert_true(res->nstages <= 16);
    for (i = 0; i < res->nstages; i++) tu_stage_stats(p, i, &res->st[i]);
    tu_stats(p, &res->ps);
    check_graph(p, sinks, KN);
    /* every value ended exactly once: delivered (marked) or destroyed */
    for (v = 0; v < KN; v++) {
        uint32_t ends = (res->mark[v] != 0) + freed.freed[v];
        if (ends != 1) fail_msg("value %llu ended %u times", (unsigned long long)v, ends);
    }
    tu_free_all(p, rt);
    tu_tracker_destroy(&freed);
    free(f.calls);
    free(mark_a);
    free(mark_m);
}

/* The mixed graph's expected mark of a value. */
static uint8_t kg_expect(uint64_t v) {
    if (v % 3 == 0) return 1;
    if (v % 3 == 1) return v % 2 == 0 ? 2 : 0;
    return v % 7 == 0 ? 4 : 2;
}

/* The counters that must not depend on fusion (queues and timing aside). */
static void kg_same(const kg_result *x, const kg_result *y, uint32_t offset_y) {
    uint32_t i;
    assert_int_equal(x->ps.admitted, y->ps.admitted);
    assert_int_equal(x->ps.delivered, y->ps.delivered);
    assert_int_equal(x->ps.filtered, y->ps.filtered);
    assert_int_equal(x->ps.failed, y->ps.failed);
    assert_int_equal(x->freed, y->freed);
    assert_memory_equal(x->mark, y->mark, KN);
    for (i = offset_y; i < x->nstages; i++) {
        const fluxus_stage_stats *a = &x->st[i], *b = &y->st[i - offset_y];
        if (a->in != b->in || a->out != b->out || a->filtered != b->filtered ||
            a->failed != b->failed || a->routed != b->routed || a->spawned != b->spawned ||
            a->cancelled != b->cancelled || a->dead_lettered != b->dead_lettered)
            fail_msg("stage %u differs between runs: in %llu/%llu out %llu/%llu routed "
                     "%llu/%llu",
                     i, (unsigned long long)a->in, (unsigned long long)b->in,
                     (unsigned long long)a->out, (unsigned long long)b->out,
                     (unsigned long long)a->routed, (unsigned long long)b->routed);
    }
}

/* Proves: the mixed graph (router, filter branch, error branch with repair, merge) gives exactly
 * the expected result per value and identical stage counters with fusion on and off, and with a
 * pull source and a push source feeding the router directly. Fusion really changes the layout:
 * fused stages have no queue of their own. */
static void test_fusion_and_push_source_give_the_same_results(void **state) {
    kg_result *on = (kg_result *)calloc(1, sizeof *on), *off = (kg_result *)calloc(1, sizeof *off);
    kg_result *push_on = (kg_result *)calloc(1, sizeof *push_on);
    kg_result *push_off = (kg_result *)calloc(1, sizeof *push_off);
    uint64_t v;
    (void)state;
    assert_non_null(on);
    assert_non_null(off);
    assert_non_null(push_on);
    assert_non_null(push_off);
    kg_run(on, 1, 0);
    kg_run(off, 0, 0);
    kg_run(push_on, 1, 1);
    kg_run(push_off, 0, 1);
    for (v = 0; v < KN; v++)
        if (on->mark[v] != kg_expect(v))
            fail_msg("value %llu: mark %u, expected %u", (unsigned long long)v, on->mark[v],
                     kg_expect(v));
    assert_int_equal(on->bad, 0);
    assert_int_equal(off->bad + push_on->bad + push_off->bad, 0);
    kg_same(on, off, 0);
    kg_same(push_on, push_off, 0);
    /* the pull runs have the extra "scale" stage 0; the rest lines up one index later */
    kg_same(on, push_on, 1);
    /* stage 0 "scale" and 1 "kind" ride with the pull source when fused */
    assert_int_equal(on->st[0].queue_capacity, 0);
    assert_int_equal(on->st[1].queue_capacity, 0);
    assert_true(off->st[0].queue_capacity > 0);
    assert_true(off->st[1].queue_capacity > 0);
    assert_true(push_on->st[0].queue_capacity > 0); /* the router takes the pushes */
    assert_int_equal(on->st[7].routed, count_mod(KN, 21, 14)); /* c.flaky: 2 mod 3, 0 mod 7 */
    print_message("fusion on/off, pull/push: %llu admitted, %llu delivered, %llu routed, same "
                  "everywhere\n",
                  (unsigned long long)on->ps.admitted, (unsigned long long)on->ps.delivered,
                  (unsigned long long)on->st[7].routed);
    free(on);
    free(off);
    free(push_on);
    free(push_off);
}

/* Sink that checks order: each value greater than the previous. */
typedef struct in_order {
    uint64_t last, count, disorder;
} in_order;

static int32_t ordered_sink(void *user, uint64_t item) {
    in_order *o = (in_order *)user;
    if (o->count > 0 && item <= o->last) o->disorder++;
    o->last = item;
    o->count++;
    return 0;
}

/* Proves: a linear pipeline with no branching behaves as before graphs: in order, fused into the
 * source's task when fusion is on (no queues), with queues when off, and the classic
 * conservation check (the sink is the last stage) passes. */
static void test_linear_pipeline_unchanged(void **state) {
    int fusion;
    (void)state;
    for (fusion = 0; fusion <= 1; fusion++) {
        fluxus_runtime *rt = tu_runtime(2);
        tu_tracker t;
        tu_range_source src = {0, 10000, 0};
        in_order o = {0, 0, 0};
        fluxus_pipeline *p;
        fluxus_pipeline_stats s;
        fluxus_stage_stats st;
        uint32_t m = 0, f = 0, k = 0, sinks[2];
        tu_tracker_init(&t, 10000);
        p = tu_pipeline(rt, "linear", &t);
        TU_OK(fluxus_pipeline_set_fusion(p, fusion));
        TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
        TU_OK(fluxus_pipeline_add_map(&m, p, "map", tu_identity_map, NULL, NULL));
        TU_OK(fluxus_pipeline_add_filter(&f, p, "even", keep_even, NULL, NULL));
        TU_OK(fluxus_pipeline_add_sink(&k, p, "sink", ordered_sink, &o, NULL));
        TU_OK(fluxus_pipeline_start(p));
        TU_OK(tu_wait(p));
        assert_int_equal(o.count, 5000);
        assert_int_equal(o.disorder, 0);
        tu_stats(p, &s);
        assert_int_equal(s.admitted, 10000);
        assert_int_equal(s.delivered, 5000);
        assert_int_equal(s.filtered, 5000);
        tu_check_conservation(p, &t, 0);
        sinks[0] = k;
        sinks[1] = NO_STAGE;
        check_graph(p, sinks, 10000);
        tu_stage_stats(p, m, &st);
        assert_int_equal(st.spawned + st.routed, 0);
        assert_int_equal(st.queue_capacity, fusion ? 0 : 1024);
        tu_stage_stats(p, k, &st);
        assert_int_equal(st.queue_capacity, fusion ? 0 : 1024);
        tu_free_all(p, rt);
        tu_tracker_destroy(&t);
    }
    print_message("linear: 10000 in, 5000 delivered in order, fused and unfused\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_routes_by_value_with_a_default_route),
        cmocka_unit_test(test_router_without_default_fails_with_enoroute),
        cmocka_unit_test(test_router_selector_failures),
        cmocka_unit_test(test_router_several_routes_need_a_copy),
        cmocka_unit_test(test_router_with_max_routes_into_one_sink),
        cmocka_unit_test(test_broadcast_heap_items_reach_every_branch),
        cmocka_unit_test(test_broadcast_copy_failure_is_all_or_nothing),
        cmocka_unit_test(test_merge_delivers_everything_exactly_once),
        cmocka_unit_test(test_merge_slow_consumer_serves_both_producers),
        cmocka_unit_test(test_merge_branches_of_different_speeds),
        cmocka_unit_test(test_error_branch_repairs_failed_items),
        cmocka_unit_test(test_error_branch_after_retries),
        cmocka_unit_test(test_error_branch_takes_circuit_breaker_refusals),
        cmocka_unit_test(test_error_branch_backpressure),
        cmocka_unit_test(test_error_branch_cancel_midway),
        cmocka_unit_test(test_error_branch_on_a_sink),
        cmocka_unit_test(test_error_branch_of_loader_and_batch_stages),
        cmocka_unit_test(test_heads_refuse_what_they_cannot_do),
        cmocka_unit_test(test_drain_deadline_does_not_count_routed_items_as_held),
        cmocka_unit_test(test_drain_deadline_counts_what_a_broadcast_holds),
        cmocka_unit_test(test_build_errors_have_exact_codes),
        cmocka_unit_test(test_start_checks_of_graphs),
        cmocka_unit_test(test_fusion_and_push_source_give_the_same_results),
        cmocka_unit_test(test_linear_pipeline_unchanged),
    };
    return TU_RUN_GROUP(tests);
}
