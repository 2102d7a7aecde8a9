/*
 * Output slots arrive preset to the input: a map that returns 0 without writing *out passes its
 * input on, and so do a batch map's unwritten out[i], a cached map (and its cache copy
 * callback), a loader's attach callback and a broadcast's copy callback. Checked on every path
 * the engine has for them: fused into an item chain or not, one worker or several, with a stage
 * timeout (which takes maps out of the chain), with a cache.
 *
 * The callbacks below write nothing for inputs that are multiples of 3, and write x + BIG for
 * the others, so every delivered value tells which input it came from and whether the preset
 * was what went on.
 */
#include "test_util.h"

#define N 5000u            /* items per run: several batches */
#define BIG 1000000000ull  /* outputs that were written are above this */

/* What goes on for input x. */
static uint64_t expected_out(uint64_t x) {
    return x % 3 == 0 ? x : x + BIG;
}

typedef struct run {
    uint64_t keys;      /* inputs are i % keys (keys < N repeats them, for the caches) */
    uint32_t *seen;     /* deliveries per input index */
    uint64_t delivered; /* deliveries in all */
    uint64_t wrong;     /* deliveries of a value that is not expected_out() of any input */
    uint64_t next;      /* the source's next index */
} run;

/* Never called concurrently with itself, but from whichever worker runs the source. */
static int32_t pull(void *user, uint64_t *item) {
    run *r = (run *)user;
    uint64_t i = TU_LOAD(&r->next);
    if (i >= N) return FLUXUS_PULL_END;
    TU_STORE(&r->next, i + 1);
    *item = i % r->keys;
    return FLUXUS_PULL_ITEM;
}

/* The sink counts values: with keys == N each input value must arrive once (each twice after a
 * broadcast of two routes). */
static int32_t sink(void *user, uint64_t v) {
    run *r = (run *)user;
    uint64_t x = v >= BIG ? v - BIG : v;
    TU_ADD(&r->delivered, 1);
    if (x >= r->keys || expected_out(x) != v) {
        TU_ADD(&r->wrong, 1);
    } else {
        TU_ADD(&r->seen[x], 1);
    }
    return 0;
}

/* ----- the callbacks under test: they write only for inputs that are not multiples of 3 ----- */

static int32_t map_some(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in % 3 != 0) *out = in + BIG;
    return 0;
}

static int32_t map_none(void *user, uint64_t in, uint64_t *out) {
    (void)user, (void)in, (void)out;
    return 0;
}

static int32_t map_batch_some(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                              uint32_t count) {
    uint32_t i;
    (void)user, (void)status;
    for (i = 0; i < count; i++) {
        if (in[i] % 3 != 0) out[i] = in[i] + BIG;
    }
    return 0;
}

static int32_t load_none(void *user, const uint64_t *items, uint32_t count, uint64_t *results,
                         int32_t *status) {
    uint32_t i;
    (void)user, (void)items, (void)status;
    for (i = 0; i < count; i++) {
        if (results[i] != 0) return 99; /* results[] arrive zeroed */
    }
    return 0;
}

static int32_t attach_some(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    (void)user, (void)result;
    if (item % 3 != 0) *out = item + BIG;
    return 0;
}

static int32_t copy_none(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user, (void)item, (void)route, (void)copy;
    return 0;
}

/* ----- runs ----- */

typedef enum shape {
    MAP,           /* source -> map -> sink */
    MAP_THEN_MAP,  /* source -> map that writes nothing -> map -> sink */
    MAP_TIMEOUT,   /* the map has a stage timeout (never reached): not in an item chain */
    MAP_CACHED,    /* the map has a cache; inputs repeat; no copy callback */
    MAP_CACHED_COPY, /* the same, with a copy callback that writes nothing */
    MAP_BATCH,     /* source -> batch map -> sink */
    LOADER,        /* source -> loader (attach writes some) -> sink */
    BROADCAST      /* source -> map -> broadcast of 2 routes (copy writes nothing) -> one sink */
} shape;

static void check_run(shape s, int fusion, uint32_t workers) {
    fluxus_runtime *rt = tu_runtime(4);
    fluxus_pipeline *p = tu_pipeline(rt, "preset", NULL);
    run r;
    uint32_t st = 0, fan = 0, out_sink = 0, route = 0;
    uint64_t copies = s == BROADCAST ? 2 : 1, x;
    memset(&r, 0, sizeof r);
    r.keys = (s == MAP_CACHED || s == MAP_CACHED_COPY) ? 50 : N;
    r.seen = (uint32_t *)calloc(N, sizeof *r.seen);
    assert_non_null(r.seen);
    TU_OK(fluxus_pipeline_set_fusion(p, fusion));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", pull, &r, NULL));
    switch (s) {
    case MAP_THEN_MAP:
        TU_OK(fluxus_pipeline_add_map(&st, p, "none", map_none, NULL, NULL));
        TU_OK(fluxus_stage_set_workers(p, st, workers));
        /* fall through */
    case MAP:
    case MAP_TIMEOUT:
    case MAP_CACHED:
    case MAP_CACHED_COPY:
    case BROADCAST:
        TU_OK(fluxus_pipeline_add_map(&st, p, "some", map_some, NULL, NULL));
        TU_OK(fluxus_stage_set_workers(p, st, workers));
        break;
    case MAP_BATCH:
        TU_OK(fluxus_pipeline_add_map_batch(&st, p, "some", map_batch_some, NULL, NULL));
        TU_OK(fluxus_stage_set_workers(p, st, workers));
        break;
    case LOADER:
        TU_OK(fluxus_pipeline_add_loader(&st, p, "some", 16, 0, load_none, attach_some, NULL,
                                         NULL));
        break;
    }
    if (s == MAP_TIMEOUT) TU_OK(fluxus_stage_set_timeout_us(p, st, 86400000000ull));
    if (s == MAP_CACHED) TU_OK(fluxus_stage_set_cache(p, st, 1000, 0, NULL, NULL, NULL));
    if (s == MAP_CACHED_COPY) TU_OK(fluxus_stage_set_cache(p, st, 1000, 0, copy_none, NULL, NULL));
    if (s == BROADCAST) {
        TU_OK(fluxus_pipeline_add_broadcast(&fan, p, "fan"));
        TU_OK(fluxus_stage_add_route(&route, p, fan, "a"));
        TU_OK(fluxus_stage_add_route(&route, p, fan, "b"));
        TU_OK(fluxus_stage_set_copy(p, fan, copy_none, NULL, NULL));
        TU_OK(fluxus_pipeline_branch(p, fan, 0));
        TU_OK(fluxus_pipeline_add_sink(&out_sink, p, "sink", sink, &r, NULL));
        TU_OK(fluxus_pipeline_connect(p, fan, 1, out_sink));
    } else {
        TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, &r, NULL));
    }
    tu_run_expect(p, FLUXUS_OK);
    assert_int_equal(r.wrong, 0);
    assert_int_equal(r.delivered, (uint64_t)N * copies);
    for (x = 0; x < r.keys; x++) {
        /* each input value arrives as often as the source gave it (N / keys times) */
        if (r.seen[x] != (N / r.keys) * copies) {
            fail_msg("input %llu arrived %u times, expected %llu", (unsigned long long)x,
                     r.seen[x], (unsigned long long)((N / r.keys) * copies));
        }
    }
    tu_free_all(p, rt);
    free(r.seen);
}

#define SHAPE_TESTS(name, s)                                          \
    static void name##_fused_one_worker(void **state) {               \
        (void)state;                                                  \
        check_run((s), 1, 1);                                         \
    }                                                                 \
    static void name##_unfused_one_worker(void **state) {             \
        (void)state;                                                  \
        check_run((s), 0, 1);                                         \
    }                                                                 \
    static void name##_fused_four_workers(void **state) {             \
        (void)state;                                                  \
        check_run((s), 1, 4);                                         \
    }                                                                 \
    static void name##_unfused_four_workers(void **state) {           \
        (void)state;                                                  \
        check_run((s), 0, 4);                                         \
    }

SHAPE_TESTS(test_map_passes_its_input_when_it_writes_no_output, MAP)
SHAPE_TESTS(test_chained_maps_pass_their_input_when_they_write_no_output, MAP_THEN_MAP)
SHAPE_TESTS(test_map_with_a_timeout_passes_its_input_when_it_writes_no_output, MAP_TIMEOUT)
SHAPE_TESTS(test_batch_map_passes_the_inputs_it_writes_no_output_for, MAP_BATCH)

/* Caches are per worker (and a loader runs on one worker). */
static void test_cached_map_passes_its_input_and_caches_it(void **state) {
    (void)state;
    check_run(MAP_CACHED, 1, 1);
    check_run(MAP_CACHED, 0, 1);
    check_run(MAP_CACHED, 1, 4);
    check_run(MAP_CACHED, 0, 4);
}

static void test_cache_copy_that_writes_nothing_hands_out_the_cached_value(void **state) {
    (void)state;
    check_run(MAP_CACHED_COPY, 1, 1);
    check_run(MAP_CACHED_COPY, 0, 1);
    check_run(MAP_CACHED_COPY, 1, 4);
    check_run(MAP_CACHED_COPY, 0, 4);
}

static void test_loader_attach_passes_its_item_when_it_writes_no_output(void **state) {
    (void)state;
    check_run(LOADER, 1, 1);
    check_run(LOADER, 0, 1);
}

static void test_broadcast_copy_that_writes_nothing_copies_the_item(void **state) {
    (void)state;
    check_run(BROADCAST, 1, 1);
    check_run(BROADCAST, 0, 1);
}

#define SHAPE_CASES(name)                           \
    cmocka_unit_test(name##_fused_one_worker),      \
        cmocka_unit_test(name##_unfused_one_worker), \
        cmocka_unit_test(name##_fused_four_workers), \
        cmocka_unit_test(name##_unfused_four_workers)

int main(void) {
    const struct CMUnitTest tests[] = {
        SHAPE_CASES(test_map_passes_its_input_when_it_writes_no_output),
        SHAPE_CASES(test_chained_maps_pass_their_input_when_they_write_no_output),
        SHAPE_CASES(test_map_with_a_timeout_passes_its_input_when_it_writes_no_output),
        SHAPE_CASES(test_batch_map_passes_the_inputs_it_writes_no_output_for),
        cmocka_unit_test(test_cached_map_passes_its_input_and_caches_it),
        cmocka_unit_test(test_cache_copy_that_writes_nothing_hands_out_the_cached_value),
        cmocka_unit_test(test_loader_attach_passes_its_item_when_it_writes_no_output),
        cmocka_unit_test(test_broadcast_copy_that_writes_nothing_copies_the_item),
    };
    return TU_RUN_GROUP(tests);
}
