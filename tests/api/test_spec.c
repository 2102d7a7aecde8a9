/*
 * test_spec.c — declarative pipelines: a registry of named callbacks and fluxus_pipeline_build.
 * A branching spec (router with a default route, broadcast with copies, dedup, batch, an error
 * branch merged by name into a sink declared later) delivers exactly the expected items and
 * matches, stage by stage, the same pipeline built with C calls; options are really applied
 * (read back from the stage stats and seen in behaviour: workers, retry, retry_if, key, dedup
 * ttl, batch size and linger, dead letters); malformed or invalid specs fail with FLUXUS_EINVAL
 * and "spec:LINE:COL: ..." naming the exact position; registry misuse returns exact codes, and
 * the registry's user_free runs once, after the handle and every pipeline built from it.
 */
#include "test_util.h"

#define N 3000u
#define FIXED 1000000u   /* fix(v) = FIXED + v: failed items repaired by the error branch */
#define GROUPED 2000000u /* group emits GROUPED + v for each item of a batch */

/* ----- recorders: what each sink received, by value ----- */

typedef struct rec {
    uint32_t count[3 * N]; /* index: (v / FIXED) * N + v % FIXED */
    uint64_t total;
    uint64_t bad; /* values outside the expected ranges */
} rec;

static void rec_add(rec *r, uint64_t v) {
    uint64_t hi = v / FIXED, lo = v % FIXED;
    TU_ADD(&r->total, 1);
    if (hi < 3 && lo < N) {
        TU_ADD(&r->count[hi * N + lo], 1);
    } else {
        TU_ADD(&r->bad, 1);
    }
}

static uint32_t rec_get(rec *r, uint64_t v) {
    return TU_LOAD(&r->count[(v / FIXED) * N + v % FIXED]);
}

static int32_t collect(void *user, uint64_t item) {
    rec_add((rec *)user, item);
    return 0;
}

/* ----- the callbacks of the branching pipeline ----- */

/* Fails every value that is 3 mod 10 (status 5). */
static int32_t parse(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in % 10 == 3) return 5;
    *out = in;
    return 0;
}

static int32_t fix(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = FIXED + in;
    return 0;
}

/* 0 mod 3 -> route 0 (pairs), 1 mod 3 -> route 1 (copies), 2 mod 3 -> none (the default). */
static int32_t by_kind(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                       uint32_t *count) {
    (void)user;
    (void)capacity;
    if (item % 3 != 2) {
        routes[0] = (uint32_t)(item % 3);
        *count = 1;
    }
    return 0;
}

/* Values 6k and 6k + 3 both become k: the dedup after it sees every k twice. */
static int32_t halve(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in / 6;
    return 0;
}

static int32_t dup_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    *copy = item;
    return 0;
}

typedef struct group_log {
    uint64_t calls;
    uint64_t items;
    uint32_t sizes[64]; /* the first group sizes, in order */
} group_log;

static int32_t group(void *user, const uint64_t *items, uint32_t count, fluxus_emitter *em) {
    group_log *g = (group_log *)user;
    uint64_t call = TU_ADD(&g->calls, 1);
    uint32_t i;
    TU_ADD(&g->items, count);
    if (call <= 64) g->sizes[call - 1] = count;
    for (i = 0; i < count; i++) {
        if (fluxus_emitter_emit(em, GROUPED + items[i]) != FLUXUS_OK) return 1;
    }
    return 0;
}

/* Counts the item destructor's calls. */
static void count_item_free(void *user, uint64_t item) {
    (void)item;
    TU_ADD((uint64_t *)user, 1);
}

typedef struct world {
    tu_range_source src;
    rec pairs, x, repaired, rest;
    group_log groups;
    uint64_t item_frees;
} world;

static world *world_new(void) {
    world *w = (world *)calloc(1, sizeof *w);
    assert_non_null(w);
    w->src.next = 0;
    w->src.end = N;
    return w;
}

static fluxus_registry *world_registry(world *w) {
    fluxus_registry *r = NULL;
    TU_OK(fluxus_registry_new(&r));
    assert_non_null(r);
    TU_OK(fluxus_registry_add(r, "numbers", FLUXUS_FN_PULL, (fluxus_any_fn)tu_range_pull, &w->src,
                              NULL));
    TU_OK(fluxus_registry_add(r, "parse", FLUXUS_FN_MAP, (fluxus_any_fn)parse, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "fix", FLUXUS_FN_MAP, (fluxus_any_fn)fix, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "halve", FLUXUS_FN_MAP, (fluxus_any_fn)halve, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "by_kind", FLUXUS_FN_ROUTE, (fluxus_any_fn)by_kind, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "dup", FLUXUS_FN_COPY, (fluxus_any_fn)dup_copy, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "group", FLUXUS_FN_FLAT_MAP_BATCH, (fluxus_any_fn)group,
                              &w->groups, NULL));
    TU_OK(fluxus_registry_add(r, "collect_pairs", FLUXUS_FN_SINK, (fluxus_any_fn)collect,
                              &w->pairs, NULL));
    TU_OK(fluxus_registry_add(r, "collect_x", FLUXUS_FN_SINK, (fluxus_any_fn)collect, &w->x,
                              NULL));
    TU_OK(fluxus_registry_add(r, "collect_r", FLUXUS_FN_SINK, (fluxus_any_fn)collect,
                              &w->repaired, NULL));
    TU_OK(fluxus_registry_add(r, "collect_rest", FLUXUS_FN_SINK, (fluxus_any_fn)collect,
                              &w->rest, NULL));
    return r;
}

/* The branching pipeline. Stages, in the order they are added:
 *   0 parse  1 fix  2 by_kind  3 halve  4 dedup  5 pairs_out  6 broadcast  7 x_out  8 group
 *   9 repaired  10 rest_out
 * `@repaired` (in parse's error branch) names a sink declared further down. */
static const char *const kBranching =
    "# a realistic branching pipeline\n"
    "source(numbers)\n"
    "  | map(parse, workers=4, order=ordered, on_error=skip) { error: map(fix) | @repaired }\n"
    "  | router(by_kind, default=rest) {\n"
    "      pairs: map(halve) | dedup(last=1000) | sink(collect_pairs) as pairs_out\n"
    "      copies: broadcast(copy=dup) {\n"
    "          x: sink(collect_x) as x_out;\n"
    "          y: batch(group, size=16, linger_us=1000) | sink(collect_r) as repaired\n"
    "      }\n"
    "      rest: sink(collect_rest) as rest_out   # items the selector leaves unrouted\n"
    "  }\n";

#define STAGES 11u
static const char *const kStageNames[STAGES] = {"parse",    "fix",       "by_kind", "halve",
                                                "dedup",    "pairs_out", "broadcast", "x_out",
                                                "group",    "repaired",  "rest_out"};

/* The same pipeline with C calls, stage by stage in the same order. */
static void build_by_calls(fluxus_pipeline *p, world *w) {
    uint32_t map = 0, fx = 0, router = 0, route = 0, dd = 0, bc = 0, rep = 0, s = 0;
    TU_OK(fluxus_pipeline_set_pull_source(p, "numbers", tu_range_pull, &w->src, NULL));
    TU_OK(fluxus_pipeline_add_map(&map, p, "parse", parse, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, 4));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_ORDERED));
    TU_OK(fluxus_stage_set_error_policy(p, map, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_branch(p, map, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_map(&fx, p, "fix", fix, NULL, NULL));
    TU_OK(fluxus_pipeline_branch(p, map, FLUXUS_OUTLET_MAIN));
    TU_OK(fluxus_pipeline_add_router(&router, p, "by_kind", by_kind, NULL, NULL));
    TU_OK(fluxus_stage_add_route(NULL, p, router, "pairs"));
    TU_OK(fluxus_stage_add_route(NULL, p, router, "copies"));
    TU_OK(fluxus_stage_add_route(&route, p, router, "rest"));
    TU_OK(fluxus_stage_set_default_route(p, router, route));

    TU_OK(fluxus_pipeline_branch(p, router, 0));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "halve", halve, NULL, NULL));
    TU_OK(fluxus_pipeline_add_dedup(&dd, p, "dedup"));
    TU_OK(fluxus_stage_set_dedup_window(p, dd, 1000));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "pairs_out", collect, &w->pairs, NULL));

    TU_OK(fluxus_pipeline_branch(p, router, 1));
    TU_OK(fluxus_pipeline_add_broadcast(&bc, p, "broadcast"));
    TU_OK(fluxus_stage_set_copy(p, bc, dup_copy, NULL, NULL));
    TU_OK(fluxus_stage_add_route(NULL, p, bc, "x"));
    TU_OK(fluxus_stage_add_route(NULL, p, bc, "y"));
    TU_OK(fluxus_pipeline_branch(p, bc, 0));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "x_out", collect, &w->x, NULL));
    TU_OK(fluxus_pipeline_branch(p, bc, 1));
    TU_OK(fluxus_pipeline_add_batch(NULL, p, "group", 16, 1000, group, &w->groups, NULL));
    TU_OK(fluxus_pipeline_add_sink(&rep, p, "repaired", collect, &w->repaired, NULL));

    TU_OK(fluxus_pipeline_branch(p, router, 2));
    TU_OK(fluxus_pipeline_add_sink(&s, p, "rest_out", collect, &w->rest, NULL));
    TU_OK(fluxus_pipeline_connect(p, fx, FLUXUS_OUTLET_MAIN, rep));
    assert_int_equal(s, STAGES - 1);
}

/* What the branching pipeline must deliver, computed from the callbacks' rules. */
typedef struct expected {
    uint64_t failed_parse; /* 3 mod 10: repaired by the error branch */
    uint64_t pairs_in;     /* 0 mod 3, not failed */
    uint64_t pairs_distinct;
    uint64_t copies; /* 1 mod 3, not failed: broadcast to x and (as groups) to repaired */
    uint64_t rest;   /* 2 mod 3, not failed */
} expected;

static expected expect_branching(void) {
    expected e;
    uint8_t seen[N / 6 + 1];
    uint64_t v;
    memset(&e, 0, sizeof e);
    memset(seen, 0, sizeof seen);
    for (v = 0; v < N; v++) {
        if (v % 10 == 3) {
            e.failed_parse++;
        } else if (v % 3 == 0) {
            e.pairs_in++;
            if (!seen[v / 6]) {
                seen[v / 6] = 1;
                e.pairs_distinct++;
            }
        } else if (v % 3 == 1) {
            e.copies++;
        } else {
            e.rest++;
        }
    }
    return e;
}

/* Every sink got exactly its items, once each; the totals and every stage balance. */
static void check_branching_run(fluxus_pipeline *p, world *w) {
    expected e = expect_branching();
    fluxus_pipeline_stats s;
    fluxus_stage_stats st[STAGES];
    uint32_t n = 0, i;
    uint64_t v;

    /* Per sink, item by item. */
    for (v = 0; v < N; v++) {
        uint32_t want_x = 0, want_rest = 0, want_fixed = 0, want_grouped = 0;
        if (v % 10 == 3) {
            want_fixed = 1;
        } else if (v % 3 == 1) {
            want_x = 1;
            want_grouped = 1;
        } else if (v % 3 == 2) {
            want_rest = 1;
        }
        if (rec_get(&w->x, v) != want_x || rec_get(&w->rest, v) != want_rest ||
            rec_get(&w->repaired, FIXED + v) != want_fixed ||
            rec_get(&w->repaired, GROUPED + v) != want_grouped) {
            fail_msg("item %llu: x %u (want %u), rest %u (want %u), fixed %u (want %u), grouped "
                     "%u (want %u)",
                     (unsigned long long)v, rec_get(&w->x, v), want_x, rec_get(&w->rest, v),
                     want_rest, rec_get(&w->repaired, FIXED + v), want_fixed,
                     rec_get(&w->repaired, GROUPED + v), want_grouped);
        }
        /* The pairs sink gets k = 6k / 6 = (6k + 3) / 6 once (6k is even: parse passes it). */
        if (v * 6 < N && rec_get(&w->pairs, v) != 1)
            fail_msg("pairs: %llu received %u times, want 1", (unsigned long long)v,
                     rec_get(&w->pairs, v));
    }
    assert_int_equal(TU_LOAD(&w->pairs.total), e.pairs_distinct);
    assert_int_equal(TU_LOAD(&w->x.total), e.copies);
    assert_int_equal(TU_LOAD(&w->rest.total), e.rest);
    assert_int_equal(TU_LOAD(&w->repaired.total), e.failed_parse + e.copies);
    assert_int_equal(w->pairs.bad + w->x.bad + w->rest.bad + w->repaired.bad, 0);
    assert_int_equal(TU_LOAD(&w->groups.items), e.copies);
    assert_true(TU_LOAD(&w->groups.calls) >= (e.copies + 15) / 16);

    /* Pipeline totals: N from the source, a copy per broadcast item, an item per grouped one. */
    tu_stats(p, &s);
    assert_int_equal(s.state, FLUXUS_STATE_FINISHED);
    assert_int_equal(s.admitted, N + 2 * e.copies);
    assert_int_equal(s.delivered, e.pairs_distinct + e.copies + e.failed_parse + e.copies + e.rest);
    assert_int_equal(s.filtered, (e.pairs_in - e.pairs_distinct) + e.copies);
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.dead_lettered, 0);
    assert_int_equal(s.cancelled, 0);
    assert_int_equal(s.in_flight, 0);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(TU_LOAD(&w->item_frees), s.admitted - s.delivered);

    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, STAGES);
    for (i = 0; i < STAGES; i++) {
        const char *name = tu_stage_name(p, i);
        assert_non_null(name);
        assert_string_equal(name, kStageNames[i]);
        tu_stage_stats(p, i, &st[i]);
        /* Every stage balances. */
        if (st[i].in + st[i].spawned != st[i].out + st[i].filtered + st[i].failed +
                                            st[i].dead_lettered + st[i].cancelled + st[i].routed)
            fail_msg("stage %s does not balance", name);
    }
    assert_int_equal(st[0].workers, 4);
    assert_int_equal(st[0].in, N);
    assert_int_equal(st[0].routed, e.failed_parse);
    assert_int_equal(st[0].out, N - e.failed_parse);
    assert_int_equal(st[1].in, e.failed_parse);
    assert_int_equal(st[2].in, N - e.failed_parse);
    assert_int_equal(st[2].out, N - e.failed_parse);
    assert_int_equal(st[4].in, e.pairs_in);
    assert_int_equal(st[4].filtered, e.pairs_in - e.pairs_distinct);
    assert_int_equal(st[5].out, e.pairs_distinct);
    assert_int_equal(st[6].in, e.copies);
    assert_int_equal(st[6].spawned, e.copies);
    assert_int_equal(st[6].out, 2 * e.copies);
    assert_int_equal(st[8].in, e.copies);
    assert_int_equal(st[8].filtered, e.copies);
    assert_int_equal(st[8].spawned, e.copies);
    assert_int_equal(st[9].in, e.failed_parse + e.copies);
    assert_int_equal(st[9].out, e.failed_parse + e.copies);
    assert_int_equal(st[10].out, e.rest);
    for (i = 1; i < STAGES; i++) assert_int_equal(st[i].workers, 1);
}

static void test_a_branching_spec_delivers_exactly_the_expected_items(void **state) {
    fluxus_runtime *rt = tu_runtime(4);
    world *w = world_new();
    fluxus_registry *r = world_registry(w);
    fluxus_pipeline *p = NULL;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "spec"));
    TU_OK(fluxus_pipeline_set_item_free(p, count_item_free, &w->item_frees, NULL));
    TU_OK(fluxus_pipeline_build(p, r, kBranching));
    TU_OK(fluxus_registry_free(r)); /* the pipeline keeps what it needs */
    tu_run_expect(p, FLUXUS_OK);
    check_branching_run(p, w);
    tu_free_all(p, rt);
    free(w);
}

static void test_the_spec_and_the_same_c_calls_give_identical_stage_stats(void **state) {
    fluxus_runtime *rt = tu_runtime(4);
    world *ws = world_new(), *wc = world_new();
    fluxus_registry *r = world_registry(ws);
    fluxus_pipeline *ps = NULL, *pc = NULL;
    fluxus_pipeline_stats a, b;
    uint32_t na = 0, nb = 0, i;
    (void)state;
    TU_OK(fluxus_pipeline_new(&ps, rt, "by-spec"));
    TU_OK(fluxus_pipeline_set_item_free(ps, count_item_free, &ws->item_frees, NULL));
    TU_OK(fluxus_pipeline_build(ps, r, kBranching));
    TU_OK(fluxus_pipeline_new(&pc, rt, "by-calls"));
    TU_OK(fluxus_pipeline_set_item_free(pc, count_item_free, &wc->item_frees, NULL));
    build_by_calls(pc, wc);
    tu_run_expect(ps, FLUXUS_OK);
    tu_run_expect(pc, FLUXUS_OK);
    check_branching_run(pc, wc); /* the reference itself is right */

    tu_stats(ps, &a);
    tu_stats(pc, &b);
    assert_int_equal(a.admitted, b.admitted);
    assert_int_equal(a.delivered, b.delivered);
    assert_int_equal(a.filtered, b.filtered);
    assert_int_equal(a.failed, b.failed);
    assert_int_equal(a.dead_lettered, b.dead_lettered);
    assert_int_equal(a.cancelled, b.cancelled);
    assert_int_equal(a.balanced, b.balanced);
    TU_OK(fluxus_pipeline_get_stage_count(&na, ps));
    TU_OK(fluxus_pipeline_get_stage_count(&nb, pc));
    assert_int_equal(na, nb);
    for (i = 0; i < na; i++) {
        fluxus_stage_stats x, y;
        assert_string_equal(tu_stage_name(ps, i), tu_stage_name(pc, i));
        tu_stage_stats(ps, i, &x);
        tu_stage_stats(pc, i, &y);
        if (x.workers != y.workers || x.in != y.in || x.out != y.out ||
            x.filtered != y.filtered || x.failed != y.failed ||
            x.dead_lettered != y.dead_lettered || x.cancelled != y.cancelled ||
            x.dropped != y.dropped || x.spawned != y.spawned || x.routed != y.routed ||
            x.retries != y.retries || x.queue_capacity != y.queue_capacity)
            fail_msg("stage %u (%s) differs: spec workers %u in %llu out %llu filtered %llu "
                     "spawned %llu routed %llu capacity %llu; calls workers %u in %llu out %llu "
                     "filtered %llu spawned %llu routed %llu capacity %llu",
                     i, tu_stage_name(ps, i), x.workers, (unsigned long long)x.in,
                     (unsigned long long)x.out, (unsigned long long)x.filtered,
                     (unsigned long long)x.spawned, (unsigned long long)x.routed,
                     (unsigned long long)x.queue_capacity, y.workers, (unsigned long long)y.in,
                     (unsigned long long)y.out, (unsigned long long)y.filtered,
                     (unsigned long long)y.spawned, (unsigned long long)y.routed,
                     (unsigned long long)y.queue_capacity);
    }
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_pipeline_free(ps));
    tu_free_all(pc, rt);
    free(ws);
    free(wc);
}

/* ----- options really applied ----- */

typedef struct flaky {
    uint32_t calls[N];  /* calls per item */
    uint64_t refusals;  /* predicate said no */
    uint64_t dead;      /* dead-letter callback calls */
    uint64_t dead_bad;  /* ... with a wrong stage name or attempt count */
    uint32_t dead_attempts;
} flaky;

/* 0 mod 5: fails (status 7) on its first two calls, then passes. 1 mod 50: always fails with
 * status 9, which the retry predicate refuses to retry. */
static int32_t flaky_map(void *user, uint64_t in, uint64_t *out) {
    flaky *f = (flaky *)user;
    uint32_t call = TU_ADD(&f->calls[in], 1);
    if (in % 5 == 0 && call <= 2) return 7;
    if (in % 50 == 1) return 9;
    *out = in;
    return 0;
}

static int32_t not_nine(void *user, uint64_t item, int32_t status, uint32_t attempt) {
    flaky *f = (flaky *)user;
    (void)item;
    (void)attempt;
    if (status == 9) {
        TU_ADD(&f->refusals, 1);
        return 0;
    }
    return 1;
}

static void flaky_dead_letter(void *user, uint64_t item, const fluxus_failure *failure) {
    flaky *f = (flaky *)user;
    (void)item;
    TU_ADD(&f->dead, 1);
    if (strcmp(tu_failure_stage_name(failure), "flaky") != 0 ||
        tu_failure_attempts(failure) != f->dead_attempts)
        TU_ADD(&f->dead_bad, 1);
}

static int32_t mod7_key(void *user, uint64_t item, const void **key, size_t *len) {
    static const uint64_t keys[7] = {0, 1, 2, 3, 4, 5, 6};
    (void)user;
    *key = &keys[item % 7];
    *len = sizeof keys[0];
    return 0;
}

static int32_t keep_all(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    (void)item;
    *keep = 1;
    return 0;
}

typedef struct opts_world {
    tu_range_source src;
    flaky f;
    rec out;
} opts_world;

static fluxus_registry *opts_registry(opts_world *o) {
    fluxus_registry *r = NULL;
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "numbers", FLUXUS_FN_PULL, (fluxus_any_fn)tu_range_pull, &o->src,
                              NULL));
    TU_OK(fluxus_registry_add(r, "flaky", FLUXUS_FN_MAP, (fluxus_any_fn)flaky_map, &o->f, NULL));
    TU_OK(fluxus_registry_add(r, "same", FLUXUS_FN_MAP, (fluxus_any_fn)tu_identity_map, NULL,
                              NULL));
    TU_OK(fluxus_registry_add(r, "keep_all", FLUXUS_FN_FILTER, (fluxus_any_fn)keep_all, NULL,
                              NULL));
    TU_OK(fluxus_registry_add(r, "not_nine", FLUXUS_FN_RETRY_IF, (fluxus_any_fn)not_nine, &o->f,
                              NULL));
    TU_OK(fluxus_registry_add(r, "mod7", FLUXUS_FN_KEY, (fluxus_any_fn)mod7_key, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "out", FLUXUS_FN_SINK, (fluxus_any_fn)collect, &o->out, NULL));
    TU_OK(fluxus_registry_add(r, "group", FLUXUS_FN_FLAT_MAP_BATCH, (fluxus_any_fn)group, NULL,
                              NULL));
    return r;
}

static opts_world *opts_world_new(uint64_t n) {
    opts_world *o = (opts_world *)calloc(1, sizeof *o);
    assert_non_null(o);
    o->src.end = n;
    return o;
}

/* Builds `spec` on a fresh pipeline of `rt` from a fresh registry of `o`. */
static fluxus_pipeline *opts_pipeline(fluxus_runtime *rt, opts_world *o, const char *spec) {
    fluxus_registry *r = opts_registry(o);
    fluxus_pipeline *p = NULL;
    TU_OK(fluxus_pipeline_new(&p, rt, "options"));
    TU_OK(fluxus_pipeline_build(p, r, spec));
    TU_OK(fluxus_registry_free(r));
    return p;
}

static void test_workers_order_capacity_and_key_are_applied(void **state) {
    fluxus_runtime *rt = tu_runtime(4);
    opts_world *o = opts_world_new(N);
    fluxus_pipeline *p = opts_pipeline(
        rt, o,
        "source(numbers) | map(same, workers=3, order=unordered, capacity=64) as wide"
        " | filter(keep_all, workers=2, order=per_key, key=mod7) as keyed"
        " | map(same) as narrow | dedup(key=mod7, workers=2) | sink(out)");
    fluxus_stage_stats s;
    uint64_t v;
    (void)state;
    tu_stage_stats(p, 0, &s);
    assert_int_equal(s.workers, 3);
    tu_stage_stats(p, 1, &s);
    assert_int_equal(s.workers, 2);
    tu_stage_stats(p, 2, &s);
    assert_int_equal(s.workers, 1);
    tu_stage_stats(p, 3, &s);
    assert_int_equal(s.workers, 2);
    assert_string_equal(tu_stage_name(p, 0), "wide");
    assert_string_equal(tu_stage_name(p, 1), "keyed");
    assert_string_equal(tu_stage_name(p, 3), "dedup");
    assert_string_equal(tu_stage_name(p, 4), "out");
    tu_run_expect(p, FLUXUS_OK);
    tu_stage_stats(p, 0, &s);
    assert_int_equal(s.workers, 3);
    assert_int_equal(s.queue_capacity, 64); /* a 3-worker stage has its own queue */
    assert_true(s.queue_peak <= 64);
    assert_int_equal(s.out, N);
    /* The dedup keys by mod7: one item per residue passes (which one depends on the order the
     * unordered stage let them through). */
    tu_stage_stats(p, 3, &s);
    assert_int_equal(s.in, N);
    assert_int_equal(s.out, 7);
    assert_int_equal(s.filtered, N - 7);
    assert_int_equal(TU_LOAD(&o->out.total), 7);
    for (v = 0; v < 7; v++) {
        uint64_t k, got = 0;
        for (k = v; k < N; k += 7) got += rec_get(&o->out, k);
        assert_int_equal(got, 1);
    }
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    free(o);
}

static void test_retry_three_delivers_items_that_fail_twice(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    opts_world *o = opts_world_new(N);
    fluxus_pipeline *p = opts_pipeline(
        rt, o,
        "source(numbers)\n"
        "  | map(flaky, retry=3, backoff=constant, delay_us=1, retry_if=not_nine, on_error=skip)\n"
        "  | sink(out)");
    fluxus_stage_stats s;
    fluxus_pipeline_stats ps;
    uint64_t v, fives = 0, nines = 0;
    (void)state;
    tu_run_expect(p, FLUXUS_OK);
    for (v = 0; v < N; v++) {
        uint32_t want = v % 5 == 0 ? 3 : 1;
        if (v % 5 == 0) fives++;
        if (v % 50 == 1) nines++;
        if (TU_LOAD(&o->f.calls[v]) != want)
            fail_msg("item %llu was tried %u times, want %u", (unsigned long long)v,
                     TU_LOAD(&o->f.calls[v]), want);
        if (rec_get(&o->out, v) != (v % 50 == 1 ? 0u : 1u))
            fail_msg("item %llu delivered %u times", (unsigned long long)v, rec_get(&o->out, v));
    }
    tu_stage_stats(p, 0, &s);
    assert_int_equal(s.retries, 2 * fives);   /* two retries for each 0 mod 5 */
    assert_int_equal(s.failed, nines);        /* the predicate refused status 9 */
    assert_int_equal(TU_LOAD(&o->f.refusals), nines);
    assert_int_equal(s.retry_waiting, 0);
    tu_stats(p, &ps);
    assert_int_equal(ps.delivered, N - nines);
    assert_int_equal(ps.failed, nines);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    free(o);
}

/* retry=2 is not enough for the items that fail twice: they go to the dead letters with two
 * attempts; status-9 items (no retry_if here) are retried once too. */
static void test_retry_two_dead_letters_them_after_two_attempts(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    opts_world *o = opts_world_new(500);
    fluxus_pipeline *p = opts_pipeline(
        rt, o,
        "source(numbers) | map(flaky, retry=2, backoff=constant, delay_us=1,"
        " on_error=dead_letter) | sink(out)");
    fluxus_stage_stats s;
    uint64_t v, fives = 0, nines = 0;
    (void)state;
    o->f.dead_attempts = 2;
    TU_OK(fluxus_pipeline_set_dead_letter(p, flaky_dead_letter, &o->f, NULL));
    tu_run_expect(p, FLUXUS_OK);
    for (v = 0; v < 500; v++) {
        if (v % 5 == 0) fives++;
        if (v % 50 == 1) nines++;
        assert_int_equal(TU_LOAD(&o->f.calls[v]), v % 5 == 0 || v % 50 == 1 ? 2 : 1);
    }
    tu_stage_stats(p, 0, &s);
    assert_int_equal(s.retries, fives + nines);
    assert_int_equal(s.dead_lettered, fives + nines);
    assert_int_equal(TU_LOAD(&o->f.dead), fives + nines);
    assert_int_equal(TU_LOAD(&o->f.dead_bad), 0);
    assert_int_equal(TU_LOAD(&o->out.total), 500 - fives - nines);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    free(o);
}

/* Dedup ttl on a virtual clock, with the source set by the host (`source` with no callback). */
static void test_dedup_ttl_is_applied_and_the_host_sets_the_source(void **state) {
    fluxus_runtime *rt = tu_vruntime(0);
    opts_world *o = opts_world_new(0);
    fluxus_pipeline *p = opts_pipeline(rt, o, "source | dedup(ttl_us=1000) | sink(out)");
    fluxus_stage_stats s;
    (void)state;
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_try_push(p, 5));
    tu_drive(rt);
    tu_step(rt, 500000); /* +500 us: still remembered */
    TU_OK(fluxus_pipeline_try_push(p, 5));
    tu_drive(rt);
    tu_step(rt, 1000000); /* +1000 us more: forgotten */
    TU_OK(fluxus_pipeline_try_push(p, 5));
    TU_OK(fluxus_pipeline_close_input(p));
    tu_drive(rt);
    TU_OK(fluxus_pipeline_wait(p, 0));
    tu_stage_stats(p, 0, &s);
    assert_int_equal(s.in, 3);
    assert_int_equal(s.out, 2);
    assert_int_equal(s.filtered, 1);
    assert_int_equal(rec_get(&o->out, 5), 2);
    tu_free_all(p, rt);
    free(o);
}

/* batch(size=3, linger_us=500) on a virtual clock: full groups go at once, a partial one after
 * exactly 500 us. */
static void test_batch_size_and_linger_are_applied(void **state) {
    fluxus_runtime *rt = tu_vruntime(0);
    opts_world *o = opts_world_new(0);
    group_log *g = (group_log *)calloc(1, sizeof *g);
    fluxus_registry *r = NULL;
    fluxus_pipeline *p = NULL;
    uint64_t v;
    (void)state;
    assert_non_null(g);
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "grp", FLUXUS_FN_FLAT_MAP_BATCH, (fluxus_any_fn)group, g, NULL));
    TU_OK(fluxus_registry_add(r, "out", FLUXUS_FN_SINK, (fluxus_any_fn)collect, &o->out, NULL));
    TU_OK(fluxus_pipeline_new(&p, rt, "batch"));
    TU_OK(fluxus_pipeline_build(p, r, "source | batch(grp, size=3, linger_us=500) | out"));
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_start(p));
    for (v = 0; v < 4; v++) TU_OK(fluxus_pipeline_try_push(p, v));
    tu_drive(rt);
    assert_int_equal(TU_LOAD(&g->calls), 1);
    assert_int_equal(g->sizes[0], 3);
    tu_step(rt, 499000);
    assert_int_equal(TU_LOAD(&g->calls), 1); /* the lone item lingers */
    tu_step(rt, 1000);
    assert_int_equal(TU_LOAD(&g->calls), 2);
    assert_int_equal(g->sizes[1], 1);
    TU_OK(fluxus_pipeline_close_input(p));
    tu_drive(rt);
    TU_OK(fluxus_pipeline_wait(p, 0));
    assert_int_equal(TU_LOAD(&o->out.total), 4);
    for (v = 0; v < 4; v++) assert_int_equal(rec_get(&o->out, GROUPED + v), 1);
    tu_free_all(p, rt);
    free(o);
    free(g);
}

/* ttl_us and last are both applied: together they are refused when the pipeline starts. */
static void test_conflicting_dedup_bounds_are_both_applied(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    opts_world *o = opts_world_new(10);
    fluxus_pipeline *p =
        opts_pipeline(rt, o, "source(numbers) | dedup(ttl_us=1000, last=5) | sink(out)");
    fluxus_pipeline *q = opts_pipeline(rt, o, "source(numbers) | dedup(last=5) | sink(out)");
    (void)state;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_start(q));
    TU_OK(tu_wait(q));
    TU_OK(fluxus_pipeline_free(q));
    tu_free_all(p, rt);
    free(o);
}

/* ----- error messages ----- */

typedef struct bad_spec {
    const char *spec;
    const char *prefix;  /* exact "spec:LINE:COL: " */
    const char *words[3];
} bad_spec;

static const bad_spec kBadSpecs[] = {
    {"source | map(parse | collect_x", "spec:1:20: ", {"expected ',' or ')'", "found '|'", NULL}},
    {"source | map(parse, wrkers=4) | collect_x", "spec:1:21: ",
     {"unknown option 'wrkers'", "for map", NULL}},
    {"source | map(nope) | collect_x", "spec:1:14: ",
     {"no callback named 'nope'", "(map)", NULL}},
    {"source | map(collect_x) | collect_rest", "spec:1:14: ",
     {"'collect_x' is registered as a sink callback", "map needs a map callback", NULL}},
    {"source(collect_x) | collect_rest", "spec:1:8: ",
     {"registered as a sink callback", "source needs a pull callback", NULL}},
    {"source | parse | @nowhere", "spec:1:18: ", {"no stage is named 'nowhere'", "as nowhere", NULL}},
    {"source | router(by_kind) { a: parse | @s | collect_x; b: sink(collect_r) as s }",
     "spec:1:44: ",
     {"nothing may follow a merge", "'@s' ends its chain", NULL}},
    {"source | router(by_kind) { a: collect_x", "spec:1:40: ",
     {"expected a label", "or '}'", "found the end of the spec"}},
    {"source | map(parse, workers=two) | collect_x", "spec:1:21: ",
     {"option 'workers' takes a number", NULL, NULL}},
    {"source | map(parse, workers=123456789012345678901) | collect_x", "spec:1:29: ",
     {"expected a value", "a name or number too long", NULL}},
    {"source | map(parse, workers=4294967296) | collect_x", "spec:1:21: ",
     {"option 'workers'", "4294967296 is not in 1..256", NULL}},
    {"source | router(by_kind, default=missing) { a: collect_x; b: collect_r }", "spec:1:26: ",
     {"default=missing", "no route of that name", NULL}},
    {"source | map(parse) { a: collect_x } | collect_r", "spec:1:23: ",
     {"a map block takes only 'error:'", "'a' would be a route", NULL}},
    {"parse | source | collect_x", "spec:1:9: ", {"'source' may only start the spec", NULL, NULL}},
    {"", "spec:1:1: ", {"expected a stage", "found the end of the spec", NULL}},
    {"   # only a comment\n\t\n", "spec:3:1: ", {"expected a stage", "found the end of the spec", NULL}},
    {"# the header\nsource # the source\n  | map(parse, workers=4, ordr=unordered)  # here\n"
     "  | collect_x",
     "spec:3:27: ",
     {"unknown option 'ordr'", NULL, NULL}},
    {"source\n  | map(parse) # a | b ) {\n  | $ collect_x", "spec:3:5: ",
     {"expected a stage", "an unexpected character '$'", NULL}},
    {"source | map(parse) as 9x | collect_x", "spec:1:24: ",
     {"expected a stage name after 'as'", "found a number '9'", NULL}},
    {"source | parse | collect_x extra", "spec:1:28: ",
     {"expected '|', ';' or the end of the spec", "found a name 'extra'", NULL}},
    {"source | map(parse) as p | map(fix) as p | collect_x", "spec:1:40: ",
     {"a stage named 'p' is already declared", NULL, NULL}},
    {"source | frobnicate | collect_x", "spec:1:10: ",
     {"'frobnicate' is neither a stage kind", "nor a registered callback", NULL}},
    {"source | router(by_kind) | collect_x", "spec:1:10: ",
     {"router needs a block of routes", NULL, NULL}},
    {"source | map(parse, order=sideways) | collect_x", "spec:1:21: ",
     {"option 'order' is one of ordered, unordered, per_key", "not 'sideways'", NULL}},
    {"source | map(parse, parse) | collect_x", "spec:1:21: ",
     {"unexpected argument 'parse' for map", "it takes one callback", NULL}},
    {"@collect_x", "spec:1:1: ", {"a merge needs a stage before it", NULL, NULL}},
    {"source | map() | collect_x", "spec:1:10: ", {"map needs a registered map callback", NULL, NULL}},
    {"source | by_kind | collect_x", "spec:1:10: ",
     {"'by_kind' is a route callback", "name its stage kind", "router(by_kind) {"}},
    {"source | numbers | collect_x", "spec:1:10: ",
     {"'numbers' is a pull callback", "source(numbers)", NULL}},
    {"source | parse | collect_x ; parse | collect_x", "spec:1:30: ",
     {"a further chain (after ';') must start with source(PULL)", NULL, NULL}},
    {"source | parse | collect_x ; source | collect_x", "spec:1:30: ",
     {"a further chain (after ';') must start with source(PULL)", NULL, NULL}},
    /* A step after a sink: the API's FLUXUS_ESTATE is reported as a spec error (EINVAL). */
    {"source | collect_x | fix", "spec:1:22: ", {"nothing to attach it to", "'collect_x' is a sink", NULL}},
    {"source | map(parse, workers=0) | collect_x", "spec:1:21: ", {"0 is not in 1..256", NULL, NULL}},
};

static void expect_bad_spec(fluxus_runtime *rt, world *w, const bad_spec *b) {
    fluxus_registry *r = world_registry(w);
    fluxus_pipeline *p = NULL;
    tu_msg m;
    int i;
    TU_OK(fluxus_pipeline_new(&p, rt, "bad"));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_build(p, r, b->spec), &m);
    if (strncmp(m.text, b->prefix, strlen(b->prefix)) != 0)
        fail_msg("spec \"%s\": message \"%s\" does not start with \"%s\"", b->spec, m.text,
                 b->prefix);
    for (i = 0; i < 3; i++) {
        if (b->words[i] != NULL && strstr(m.text, b->words[i]) == NULL)
            fail_msg("spec \"%s\": message \"%s\" lacks \"%s\"", b->spec, m.text, b->words[i]);
    }
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_pipeline_free(p));
}

static void test_malformed_specs_say_exactly_where_and_what(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    world *w = world_new();
    size_t i;
    (void)state;
    assert_true(sizeof kBadSpecs / sizeof kBadSpecs[0] >= 15);
    for (i = 0; i < sizeof kBadSpecs / sizeof kBadSpecs[0]; i++) expect_bad_spec(rt, w, &kBadSpecs[i]);
    TU_OK(fluxus_runtime_free(rt));
    free(w);
}

/* `levels` error blocks nested in one another: "source | map(parse) { error: map(parse) {
 * error: ... collect_x } } | collect_x". */
static char *nested_spec(int levels, size_t *deepest_col) {
    const char *head = "source | ";
    const char *open = "map(parse) { error: ";
    size_t cap = strlen(head) + (size_t)levels * (strlen(open) + 16) + 64;
    char *s = (char *)malloc(cap);
    int i;
    assert_non_null(s);
    strcpy(s, head);
    for (i = 0; i < levels; i++) strcat(s, open);
    *deepest_col = strlen(s) + 1; /* where the innermost chain starts */
    strcat(s, "collect_x");
    for (i = 0; i < levels; i++) strcat(s, " }");
    strcat(s, " | collect_r");
    return s;
}

static void test_nesting_is_refused_beyond_64_levels(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    world *w = world_new();
    fluxus_registry *r = world_registry(w);
    fluxus_pipeline *p = NULL;
    size_t col = 0;
    char *ok = nested_spec(64, &col), *deep = nested_spec(65, &col);
    char prefix[64];
    tu_msg m;
    uint32_t n = 0;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "deep"));
    TU_OK(fluxus_pipeline_build(p, r, ok));
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 64 + 2);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_new(&p, rt, "too-deep"));
    TU_EXPECT_MSG(FLUXUS_EINVAL, fluxus_pipeline_build(p, r, deep), &m);
    snprintf(prefix, sizeof prefix, "spec:1:%u: ", (unsigned)col);
    if (strncmp(m.text, prefix, strlen(prefix)) != 0)
        fail_msg("message \"%s\" does not start with \"%s\"", m.text, prefix);
    assert_non_null(strstr(m.text, "nested too deep (at most 64 levels)"));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_runtime_free(rt));
    free(ok);
    free(deep);
    free(w);
}

/* A value the builder accepts but the stage option refuses keeps the spec position and the
 * API's own message. (The code is the API's: the header documents FLUXUS_EINVAL for spec
 * errors; only the failure and the message are asserted here.) */
static void test_an_option_the_stage_refuses_keeps_the_position(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    world *w = world_new();
    fluxus_registry *r = world_registry(w);
    fluxus_pipeline *p = NULL;
    tu_msg m;
    int32_t rc;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "range"));
    rc = fluxus_pipeline_build(p, r, "source\n  | map(parse, workers=0)\n  | collect_x");
    tu_msg_take(&m);
    TU_EXPECT(FLUXUS_EINVAL, rc);  /* the API's FLUXUS_ERANGE, reported as a spec error */
    if (strncmp(m.text, "spec:2:16: ", 11) != 0 || strstr(m.text, "1..256") == NULL ||
        strstr(m.text, "parse") == NULL)
        fail_msg("message: %s", m.text);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_runtime_free(rt));
    free(w);
}

/* Two chains separated by ';': the second starts at a source of its own and merges into the
 * first chain's stage named f; every value of both sources is delivered once. */
static void test_a_second_source_merges_from_a_spec(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    world *w = world_new();
    fluxus_registry *r = world_registry(w);
    tu_range_source more = {N / 2, N, 0};
    fluxus_pipeline *p = NULL;
    fluxus_stage_stats st;
    uint32_t n = 0;
    uint64_t v;
    (void)state;
    w->src.end = N / 2;
    TU_OK(fluxus_registry_add(r, "more", FLUXUS_FN_PULL, (fluxus_any_fn)tu_range_pull, &more,
                              NULL));
    TU_OK(fluxus_pipeline_new(&p, rt, "two-sources"));
    TU_OK(fluxus_pipeline_build(p, r,
                                "source(numbers) | fix as f | collect_x;\n"
                                "source(more) | @f;"));
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 3);
    assert_string_equal(tu_stage_name(p, 2), "more");
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (v = 0; v < N; v++) assert_int_equal(rec_get(&w->x, FIXED + v), 1);
    assert_int_equal(TU_LOAD(&w->x.bad), 0);
    tu_stage_stats(p, 2, &st);
    assert_int_equal(st.in, N / 2);
    assert_int_equal(st.out, N / 2);
    tu_stage_stats(p, 0, &st);
    assert_int_equal(st.in, N);
    {
        fluxus_pipeline_stats ps;
        tu_stats(p, &ps);
        assert_int_equal(ps.admitted, N);
        assert_int_equal(ps.delivered, N);
        assert_int_equal(ps.balanced, 1);
    }
    printf("  two sources through one spec: %u values delivered once each\n", N);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_runtime_free(rt));
    free(w);
}

/* Comments and newlines are spaces: a spec full of them builds like the one-liner. */
static void test_comments_and_newlines_do_not_change_the_pipeline(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    world *w = world_new();
    fluxus_registry *r = world_registry(w);
    fluxus_pipeline *p = NULL;
    uint32_t n = 0;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "comments"));
    TU_OK(fluxus_pipeline_build(p, r,
                                "# map( { | ) @ :\n"
                                "source(numbers)#no space needed\n"
                                "|\n"
                                "   fix   # | nope(\n"
                                "\t|\r\n"
                                " collect_x # the end ) } @ \n"));
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    assert_int_equal(n, 2);
    assert_string_equal(tu_stage_name(p, 0), "fix");
    assert_string_equal(tu_stage_name(p, 1), "collect_x");
    tu_run_expect(p, FLUXUS_OK);
    assert_int_equal(TU_LOAD(&w->x.total), N);
    assert_int_equal(rec_get(&w->x, FIXED + N - 1), 1);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_registry_free(r));
    TU_OK(fluxus_runtime_free(rt));
    free(w);
}

/* ----- registry misuse and lifetime ----- */

static uint64_t reg_frees, refused_frees;
static void count_reg_free(void *user) {
    (void)user;
    TU_ADD(&reg_frees, 1);
}
static int32_t discard(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}
static void count_refused_free(void *user) {
    (void)user;
    TU_ADD(&refused_frees, 1);
}

static void test_registry_misuse_returns_exact_codes(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_registry *r = NULL, *dead = NULL;
    fluxus_pipeline *p = NULL;
    fluxus_any_fn fn = (fluxus_any_fn)tu_identity_map;
    char name[140];
    tu_msg m;
    (void)state;
    TU_STORE(&refused_frees, 0);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_new(NULL));
    TU_OK(fluxus_registry_free(NULL)); /* NULL is accepted, as by every _free */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(NULL, "a", FLUXUS_FN_MAP, fn, NULL, NULL));

    TU_OK(fluxus_registry_new(&dead));
    TU_OK(fluxus_registry_free(dead));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_free(dead)); /* twice */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(dead, "a", FLUXUS_FN_MAP, fn, NULL, NULL));

    TU_OK(fluxus_registry_new(&r));
    /* Names: letters, digits and '_', not starting with a digit, at most 128 characters. */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, NULL, FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "", FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "9lives", FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "has-dash", FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "has space", FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "caf\xc3\xa9", FLUXUS_FN_MAP, fn, NULL, NULL));
    memset(name, 'a', 129);
    name[129] = '\0';
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, name, FLUXUS_FN_MAP, fn, NULL, NULL));
    name[128] = '\0';
    TU_OK(fluxus_registry_add(r, name, FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "_x9", FLUXUS_FN_MAP, fn, NULL, NULL));
    /* Kinds and callbacks. */
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "k0", 0, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "kneg", -1, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "kbig", 1000, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "kmax", INT32_MAX, fn, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "nofn", FLUXUS_FN_MAP, NULL, NULL, NULL));
    /* A name is taken once, whatever the kind; a refused registration keeps nothing. */
    TU_OK(fluxus_registry_add(r, "same", FLUXUS_FN_MAP, fn, NULL, NULL));
    TU_EXPECT_MSG(FLUXUS_EINVAL,
                  fluxus_registry_add(r, "same", FLUXUS_FN_SINK, (fluxus_any_fn)discard,
                                      &refused_frees, count_refused_free),
                  &m);
    assert_non_null(strstr(m.text, "'same' is already registered"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_registry_add(r, "bad-name", FLUXUS_FN_MAP, fn,
                                                 &refused_frees, count_refused_free));

    /* Building: bad handles and a NULL spec. */
    TU_OK(fluxus_pipeline_new(&p, rt, "misuse"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(NULL, r, "source | same | same"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(p, NULL, "source | same"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(p, dead, "source | same"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(p, r, NULL));
    TU_OK(fluxus_registry_free(r));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(p, r, "source | same")); /* freed */
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&refused_frees), 0);
}

static void test_building_a_started_pipeline_is_refused(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    world *w = world_new();
    fluxus_registry *r = world_registry(w);
    fluxus_pipeline *p = NULL;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "started"));
    TU_OK(fluxus_pipeline_build(p, r,
                                "source(numbers) | parse { error: fix | collect_r } | collect_x"));
    tu_run_expect(p, FLUXUS_OK);
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_build(p, r, "collect_rest"));
    assert_int_equal(TU_LOAD(&w->x.total), N - N / 10);
    assert_int_equal(TU_LOAD(&w->repaired.total), N / 10);
    TU_OK(fluxus_registry_free(r));
    tu_free_all(p, rt);
    free(w);
}

/* The registry's user_free runs exactly once, after the handle and every pipeline built from it
 * (a failed build included) are freed, in any order. */
static void test_registry_user_free_runs_once_after_the_last_owner(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_registry *r = NULL;
    fluxus_pipeline *a = NULL, *b = NULL, *c = NULL;
    int token = 0;
    (void)state;
    TU_STORE(&reg_frees, 0);

    /* A registry no pipeline used: freed with its handle. */
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "m", FLUXUS_FN_MAP, (fluxus_any_fn)tu_identity_map, &token,
                              count_reg_free));
    TU_OK(fluxus_registry_add(r, "s", FLUXUS_FN_SINK, (fluxus_any_fn)collect, &token,
                              count_reg_free));
    assert_int_equal(TU_LOAD(&reg_frees), 0);
    TU_OK(fluxus_registry_free(r));
    assert_int_equal(TU_LOAD(&reg_frees), 2);

    /* Handle first, then the pipelines (one of them failed to build). */
    TU_STORE(&reg_frees, 0);
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "m", FLUXUS_FN_MAP, (fluxus_any_fn)tu_identity_map, &token,
                              count_reg_free));
    TU_OK(fluxus_registry_add(r, "s", FLUXUS_FN_SINK, (fluxus_any_fn)collect, &token,
                              count_reg_free));
    TU_OK(fluxus_registry_add(r, "unused", FLUXUS_FN_FILTER, (fluxus_any_fn)keep_all, &token,
                              count_reg_free));
    TU_OK(fluxus_pipeline_new(&a, rt, "a"));
    TU_OK(fluxus_pipeline_new(&b, rt, "b"));
    TU_OK(fluxus_pipeline_new(&c, rt, "c"));
    TU_OK(fluxus_pipeline_build(a, r, "source | m | s"));
    TU_OK(fluxus_pipeline_build(b, r, "source | m | m | s"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(c, r, "source | m | nope"));
    TU_OK(fluxus_registry_free(r));
    assert_int_equal(TU_LOAD(&reg_frees), 0);
    TU_OK(fluxus_pipeline_free(b));
    assert_int_equal(TU_LOAD(&reg_frees), 0);
    TU_OK(fluxus_pipeline_free(c));
    assert_int_equal(TU_LOAD(&reg_frees), 0);
    TU_OK(fluxus_pipeline_free(a));
    assert_int_equal(TU_LOAD(&reg_frees), 3);

    /* Pipelines first (one of them ran), then the handle. */
    TU_STORE(&reg_frees, 0);
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "m", FLUXUS_FN_MAP, (fluxus_any_fn)tu_identity_map, &token,
                              count_reg_free));
    TU_OK(fluxus_registry_add(r, "s", FLUXUS_FN_SINK, (fluxus_any_fn)discard,
                              &token, count_reg_free));
    TU_OK(fluxus_pipeline_new(&a, rt, "a2"));
    TU_OK(fluxus_pipeline_build(a, r, "source | m | s"));
    TU_OK(fluxus_pipeline_set_push_source(a, "in"));
    TU_OK(fluxus_pipeline_start(a));
    TU_OK(fluxus_pipeline_push(a, 1, TU_WAIT_MS));
    TU_OK(fluxus_pipeline_close_input(a));
    TU_OK(tu_wait(a));
    TU_OK(fluxus_pipeline_free(a));
    assert_int_equal(TU_LOAD(&reg_frees), 0);
    TU_OK(fluxus_registry_free(r));
    assert_int_equal(TU_LOAD(&reg_frees), 2);
    /* The runtime goes first here: the pipelines it had do not hold the registry any more. */
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&reg_frees), 2);
}

/* ----- sliding windows from a spec: a step above the size samples ----- */

static uint32_t g_windows;
static int32_t count_window(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                            fluxus_emitter *em) {
    (void)user, (void)start_ns;
    TU_ADD(&g_windows, 1);
    return fluxus_emitter_emit(em, items[0] * 100 + count);
}

static int32_t one_key(void *user, uint64_t item, const void **key, size_t *len) {
    static const uint64_t k = 1;
    (void)user, (void)item;
    *key = &k;
    *len = sizeof k;
    return 0;
}

static void test_a_spec_window_with_a_step_above_its_size_samples(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_registry *r = NULL;
    fluxus_pipeline *p = tu_pipeline(rt, "sample", NULL);
    rec *got = (rec *)calloc(1, sizeof *got);
    fluxus_pipeline_stats s;
    uint64_t i;
    (void)state;
    assert_non_null(got);
    g_windows = 0;
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "agg", FLUXUS_FN_WINDOW, (fluxus_any_fn)count_window, NULL,
                              NULL));
    TU_OK(fluxus_registry_add(r, "out", FLUXUS_FN_SINK, (fluxus_any_fn)collect, got, NULL));
    TU_OK(fluxus_registry_add(r, "one", FLUXUS_FN_KEY, (fluxus_any_fn)one_key, NULL, NULL));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_build(p, r,
                                "window(agg, kind=count, size=2, step=3, key=one) | sink(out)"));
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 6; i++) TU_OK(fluxus_pipeline_push(p, i, UINT32_MAX));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    /* windows [0 1] and [3 4]; 2 and 5 fall between windows */
    assert_int_equal(g_windows, 2);
    assert_int_equal(rec_get(got, 2), 1);
    assert_int_equal(rec_get(got, 302), 1);
    tu_stats(p, &s);
    assert_int_equal(s.delivered, 2);
    assert_int_equal(s.filtered, 6);
    TU_OK(fluxus_registry_free(r));
    tu_free_all(p, rt);
    free(got);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_branching_spec_delivers_exactly_the_expected_items),
        cmocka_unit_test(test_the_spec_and_the_same_c_calls_give_identical_stage_stats),
        cmocka_unit_test(test_workers_order_capacity_and_key_are_applied),
        cmocka_unit_test(test_retry_three_delivers_items_that_fail_twice),
        cmocka_unit_test(test_retry_two_dead_letters_them_after_two_attempts),
        cmocka_unit_test(test_dedup_ttl_is_applied_and_the_host_sets_the_source),
        cmocka_unit_test(test_batch_size_and_linger_are_applied),
        cmocka_unit_test(test_conflicting_dedup_bounds_are_both_applied),
        cmocka_unit_test(test_malformed_specs_say_exactly_where_and_what),
        cmocka_unit_test(test_nesting_is_refused_beyond_64_levels),
        cmocka_unit_test(test_an_option_the_stage_refuses_keeps_the_position),
        cmocka_unit_test(test_comments_and_newlines_do_not_change_the_pipeline),
        cmocka_unit_test(test_a_second_source_merges_from_a_spec),
        cmocka_unit_test(test_registry_misuse_returns_exact_codes),
        cmocka_unit_test(test_building_a_started_pipeline_is_refused),
        cmocka_unit_test(test_registry_user_free_runs_once_after_the_last_owner),
        cmocka_unit_test(test_a_spec_window_with_a_step_above_its_size_samples),
    };
    return TU_RUN_GROUP(tests);
}
