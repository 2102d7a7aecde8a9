/*
 * Stage options by number (FLUXUS_OPT_*): every option can be set, read back and bounded, has a
 * name that is its spec keyword, refuses what it should with the documented code, and means the
 * same whether set by number, by a typed setter or in a spec. The table of cases below must name
 * every option the library reports: a new option without a case here fails the test.
 */
#include "test_util.h"

#include <string.h>

/* ----- callbacks ----- */

static int32_t map_fn(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return 0;
}

static int32_t sink_fn(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static int32_t async_fn(void *user, uint64_t item, uint64_t completion) {
    (void)user;
    (void)item;
    (void)completion;
    return 0;
}

static int32_t route_fn(void *user, uint64_t item, uint32_t *routes, uint32_t capacity,
                        uint32_t *count) {
    (void)user;
    (void)item;
    (void)capacity;
    routes[0] = 0;
    *count = 1;
    return 0;
}

static int32_t range_pull(void *user, uint64_t *item) {
    uint64_t *next = (uint64_t *)user;
    if (*next >= 100) return FLUXUS_PULL_END;
    *item = (*next)++;
    return FLUXUS_PULL_ITEM;
}

/* ----- the cases: one per option ----- */

enum kind { K_MAP, K_ASYNC, K_DEDUP, K_DEBOUNCE, K_ROUTER };

typedef struct option_case {
    int32_t id;
    const char *name;
    enum kind kind;      /* a stage kind the option applies to */
    int64_t fallback;    /* what a fresh stage of that kind reads */
    int64_t value;       /* a valid value other than the default */
    const char *text;    /* the same value as a spec writes it */
    int64_t refused;     /* a value inside the bounds the option refuses (0: none) */
} option_case;

static const option_case cases[] = {
    {FLUXUS_OPT_WORKERS, "workers", K_MAP, 1, 3, "3", 0},
    {FLUXUS_OPT_ORDER, "order", K_MAP, FLUXUS_ORDER_ORDERED, FLUXUS_ORDER_UNORDERED, "unordered",
     0},
    {FLUXUS_OPT_REORDER_WINDOW, "reorder_window", K_MAP, 0, 9, "9", 0},
    {FLUXUS_OPT_QUEUE_CAPACITY, "capacity", K_MAP, 1024, 77, "77", 0},
    {FLUXUS_OPT_OVERFLOW, "overflow", K_MAP, FLUXUS_OVERFLOW_BLOCK, FLUXUS_OVERFLOW_DROP_OLDEST,
     "drop_oldest", 0},
    {FLUXUS_OPT_OVERFLOW_TIMEOUT_US, "overflow_timeout_us", K_MAP, 0, 2500, "2500", 0},
    {FLUXUS_OPT_ERROR_POLICY, "on_error", K_MAP, FLUXUS_ERROR_FAIL_FAST, FLUXUS_ERROR_SKIP,
     "skip", 0},
    {FLUXUS_OPT_IN_FLIGHT, "in_flight", K_ASYNC, 256, 12, "12", 0},
    {FLUXUS_OPT_TIMEOUT_US, "timeout_us", K_MAP, 0, 4000, "4000", 0},
    {FLUXUS_OPT_RETRY_ATTEMPTS, "retry", K_MAP, 1, 4, "4", 0},
    {FLUXUS_OPT_RETRY_BACKOFF, "backoff", K_MAP, FLUXUS_BACKOFF_EXPONENTIAL,
     FLUXUS_BACKOFF_EXPONENTIAL_JITTER, "jitter", 0},
    {FLUXUS_OPT_RETRY_BASE_US, "delay_us", K_MAP, 1000, 250, "250", 0},
    {FLUXUS_OPT_RETRY_MAX_US, "max_delay_us", K_MAP, 1000000, 5000, "5000", 0},
    {FLUXUS_OPT_RETRY_SEED, "retry_seed", K_MAP, 0, 123456789, "123456789", 0},
    {FLUXUS_OPT_MAX_KEYS, "max_keys", K_DEDUP, 0, 1000, "1000", 1},
    {FLUXUS_OPT_DEDUP_TTL_US, "ttl_us", K_DEDUP, 0, 60000, "60000", 0},
    {FLUXUS_OPT_DEDUP_LAST_KEYS, "last", K_DEDUP, 0, 64, "64", 0},
    {FLUXUS_OPT_DEFAULT_ROUTE, "default", K_ROUTER, -1, 1, "b", 0},
    {FLUXUS_OPT_PAUSE_AFTER_FAILURES, "pause_after_failures", K_MAP, 0, 5, "5", 0},
    {FLUXUS_OPT_PAUSE_WINDOW_US, "pause_window_us", K_MAP, 0, 1000000, "1000000", 0},
    {FLUXUS_OPT_PAUSE_US, "pause_us", K_MAP, 0, 20000, "20000", 0},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

TU_RUNTIME_FIXTURE(2);

/* A pipeline with one stage of `kind` (returned in *stage), not started. */
static fluxus_pipeline *pipeline_with(enum kind kind, uint32_t *stage) {
    fluxus_pipeline *p = NULL;
    TU_OK(fluxus_pipeline_new(&p, g_rt, "options"));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    switch (kind) {
    case K_MAP: TU_OK(fluxus_pipeline_add_map(stage, p, "m", map_fn, NULL, NULL)); break;
    case K_ASYNC: TU_OK(fluxus_pipeline_add_async_map(stage, p, "a", async_fn, NULL, NULL)); break;
    case K_DEDUP: TU_OK(fluxus_pipeline_add_dedup(stage, p, "d")); break;
    case K_DEBOUNCE: TU_OK(fluxus_pipeline_add_debounce(stage, p, "db", 1000)); break;
    case K_ROUTER:
        TU_OK(fluxus_pipeline_add_router(stage, p, "r", route_fn, NULL, NULL));
        TU_OK(fluxus_stage_add_route(NULL, p, *stage, "a"));
        TU_OK(fluxus_stage_add_route(NULL, p, *stage, "b"));
        break;
    }
    return p;
}

/* Ids from `first` upwards until one is unknown: the options of one object the library has
 * (stage options from 1, pipeline options from 100, runtime options from 200). */
static int32_t library_option_count(int32_t first) {
    int32_t id = first;
    const char *name = NULL;
    while (fluxus_option_get_name(&name, id) == FLUXUS_OK) ++id;
    return id - first;
}

static void test_every_option_of_the_library_has_a_case_here(void **state) {
    size_t i;
    (void)state;
    assert_int_equal(library_option_count(1), (int32_t)NCASES);
    /* The pipeline and runtime tests below name 3 each. */
    assert_int_equal(library_option_count(100), 3);
    assert_int_equal(library_option_count(200), 3);
    for (i = 0; i < NCASES; ++i) assert_int_equal(cases[i].id, (int32_t)(i + 1));
}

static void test_names_and_ids_map_one_to_one(void **state) {
    size_t i, j;
    (void)state;
    for (i = 0; i < NCASES; ++i) {
        const char *name = NULL;
        int32_t id = 0;
        TU_OK(fluxus_option_get_name(&name, cases[i].id));
        assert_string_equal(name, cases[i].name);
        TU_OK(fluxus_option_get_id(&id, name));
        assert_int_equal(id, cases[i].id);
        for (j = 0; j < i; ++j) assert_string_not_equal(cases[j].name, name);
    }
    {
        int32_t id = 0;
        const char *name = NULL;
        int64_t lo, hi;
        TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_option_get_id(&id, "no_such_option"));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_id(NULL, "workers"));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_id(&id, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_name(&name, 0));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_name(&name, (int32_t)NCASES + 1));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_name(NULL, FLUXUS_OPT_WORKERS));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_bounds(&lo, &hi, -1));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_option_get_bounds(NULL, &hi, FLUXUS_OPT_WORKERS));
    }
}

static void test_a_fresh_stage_reads_the_defaults(void **state) {
    size_t i;
    (void)state;
    for (i = 0; i < NCASES; ++i) {
        uint32_t s = 0;
        int64_t v = -12345;
        fluxus_pipeline *p = pipeline_with(cases[i].kind, &s);
        TU_OK(fluxus_stage_get_option(&v, p, s, cases[i].id));
        if (v != cases[i].fallback)
            fail_msg("%s: default %lld, expected %lld", cases[i].name, (long long)v,
                     (long long)cases[i].fallback);
        TU_OK(fluxus_pipeline_free(p));
    }
}

static void test_each_option_reads_back_what_was_set_at_both_bounds(void **state) {
    size_t i;
    (void)state;
    for (i = 0; i < NCASES; ++i) {
        uint32_t s = 0;
        int64_t lo = 0, hi = 0, v = 0;
        fluxus_pipeline *p = pipeline_with(cases[i].kind, &s);
        TU_OK(fluxus_option_get_bounds(&lo, &hi, cases[i].id));
        assert_true(lo <= cases[i].value && cases[i].value <= hi);
        TU_OK(fluxus_stage_set_option(p, s, cases[i].id, cases[i].value));
        TU_OK(fluxus_stage_get_option(&v, p, s, cases[i].id));
        assert_int_equal(v, cases[i].value);
        /* The lowest bound (when the option does not refuse it and it is not a route a router
         * lacks) and the highest are accepted; one past each is refused and changes nothing. */
        if (cases[i].id != FLUXUS_OPT_DEFAULT_ROUTE) {
            if (lo != cases[i].refused || cases[i].refused == 0) {
                TU_OK(fluxus_stage_set_option(p, s, cases[i].id, lo));
                TU_OK(fluxus_stage_get_option(&v, p, s, cases[i].id));
                assert_int_equal(v, lo);
            }
            TU_OK(fluxus_stage_set_option(p, s, cases[i].id, hi));
            TU_OK(fluxus_stage_get_option(&v, p, s, cases[i].id));
            assert_int_equal(v, hi);
        }
        TU_OK(fluxus_stage_set_option(p, s, cases[i].id, cases[i].value));
        if (lo > INT64_MIN) TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_option(p, s, cases[i].id, lo - 1));
        if (hi < INT64_MAX) TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_option(p, s, cases[i].id, hi + 1));
        if (cases[i].refused)
            TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_option(p, s, cases[i].id, cases[i].refused));
        TU_OK(fluxus_stage_get_option(&v, p, s, cases[i].id));
        assert_int_equal(v, cases[i].value);
        TU_OK(fluxus_pipeline_free(p));
    }
}

static void test_an_option_of_another_kind_is_refused_and_says_where_it_applies(void **state) {
    uint32_t s = 0;
    int64_t v = 0;
    fluxus_pipeline *p = pipeline_with(K_MAP, &s);
    tu_msg m;
    (void)state;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_option(p, s, FLUXUS_OPT_IN_FLIGHT, 4));
    tu_msg_take(&m);
    assert_non_null(strstr(m.text, "in_flight"));
    assert_non_null(strstr(m.text, "async stages"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_MAX_KEYS));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_option(p, s, FLUXUS_OPT_DEFAULT_ROUTE, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_option(p, s, 0, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_option(p, s, 9999, 1));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_option(p, s + 5, FLUXUS_OPT_WORKERS, 2));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_get_option(&v, p, s + 5, FLUXUS_OPT_WORKERS));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_get_option(NULL, p, s, FLUXUS_OPT_WORKERS));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_option(NULL, 0, FLUXUS_OPT_WORKERS, 2));
    TU_OK(fluxus_pipeline_free(p));
}

static void test_max_keys_has_the_rules_of_each_kind(void **state) {
    uint32_t s = 0;
    fluxus_pipeline *p;
    (void)state;
    p = pipeline_with(K_DEDUP, &s);
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_MAX_KEYS, 0)); /* no bound */
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_option(p, s, FLUXUS_OPT_MAX_KEYS, 1));
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_MAX_KEYS, 2));
    TU_OK(fluxus_pipeline_free(p));
    p = pipeline_with(K_DEBOUNCE, &s);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_option(p, s, FLUXUS_OPT_MAX_KEYS, 0));
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_MAX_KEYS, 1));
    TU_OK(fluxus_pipeline_free(p));
}

static void test_values_parse_from_words_and_numbers(void **state) {
    int64_t v = 0;
    tu_msg m;
    (void)state;
    TU_OK(fluxus_option_parse_value(&v, FLUXUS_OPT_ORDER, "per_key"));
    assert_int_equal(v, FLUXUS_ORDER_PER_KEY);
    TU_OK(fluxus_option_parse_value(&v, FLUXUS_OPT_ORDER, "1"));
    assert_int_equal(v, 1);
    TU_OK(fluxus_option_parse_value(&v, FLUXUS_OPT_OVERFLOW, "block_timeout"));
    assert_int_equal(v, FLUXUS_OVERFLOW_BLOCK_TIMEOUT);
    TU_OK(fluxus_option_parse_value(&v, FLUXUS_OPT_ERROR_POLICY, "dead_letter"));
    assert_int_equal(v, FLUXUS_ERROR_DEAD_LETTER);
    TU_OK(fluxus_option_parse_value(&v, FLUXUS_OPT_DEFAULT_ROUTE, "none"));
    assert_int_equal(v, -1);
    TU_OK(fluxus_option_parse_value(&v, FLUXUS_OPT_RETRY_SEED, "-9223372036854775808"));
    assert_true(v == INT64_MIN);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_option_parse_value(&v, FLUXUS_OPT_WORKERS, "two"));
    tu_msg_take(&m);
    assert_non_null(strstr(m.text, "option 'workers' takes a number"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_option_parse_value(&v, FLUXUS_OPT_ORDER, "sideways"));
    tu_msg_take(&m);
    assert_non_null(strstr(m.text, "ordered, unordered, per_key"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_option_parse_value(&v, FLUXUS_OPT_WORKERS, ""));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_option_parse_value(&v, FLUXUS_OPT_WORKERS, "3x"));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_option_parse_value(&v, FLUXUS_OPT_WORKERS, "99999999999999999999"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_option_parse_value(&v, 0, "1"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_option_parse_value(NULL, FLUXUS_OPT_WORKERS, "1"));
}

static void test_every_option_has_spec_syntax_with_the_same_meaning(void **state) {
    size_t i;
    (void)state;
    for (i = 0; i < NCASES; ++i) {
        const option_case *c = &cases[i];
        fluxus_registry *r = NULL;
        fluxus_pipeline *p = NULL;
        char spec[256];
        int64_t v = 0;
        uint32_t s;
        TU_OK(fluxus_registry_new(&r));
        TU_OK(fluxus_registry_add(r, "m", FLUXUS_FN_MAP, (fluxus_any_fn)map_fn, NULL, NULL));
        TU_OK(fluxus_registry_add(r, "a", FLUXUS_FN_ASYNC_MAP, (fluxus_any_fn)async_fn, NULL,
                                  NULL));
        TU_OK(fluxus_registry_add(r, "rt", FLUXUS_FN_ROUTE, (fluxus_any_fn)route_fn, NULL, NULL));
        TU_OK(fluxus_registry_add(r, "out", FLUXUS_FN_SINK, (fluxus_any_fn)sink_fn, NULL, NULL));
        TU_OK(fluxus_pipeline_new(&p, g_rt, "spec"));
        TU_OK(fluxus_pipeline_set_push_source(p, "in"));
        switch (c->kind) {
        case K_MAP: snprintf(spec, sizeof spec, "source | map(m, %s=%s) | out", c->name, c->text); break;
        case K_ASYNC:
            snprintf(spec, sizeof spec, "source | async_map(a, %s=%s) | out", c->name, c->text);
            break;
        case K_DEDUP: snprintf(spec, sizeof spec, "source | dedup(%s=%s) | out", c->name, c->text); break;
        case K_DEBOUNCE:
            snprintf(spec, sizeof spec, "source | debounce(quiet_us=10, %s=%s) | out", c->name,
                     c->text);
            break;
        case K_ROUTER:
            snprintf(spec, sizeof spec, "source | router(rt, %s=%s) { a: out ; b: out as out2 }",
                     c->name, c->text);
            break;
        }
        if (fluxus_pipeline_build(p, r, spec) != FLUXUS_OK)
            fail_msg("%s: %s", spec, fluxus_last_error_message());
        /* The host set the source, so the spec's first stage is stage 0. */
        s = 0;
        TU_OK(fluxus_stage_get_option(&v, p, s, c->id));
        if (v != c->value)
            fail_msg("%s: read %lld, expected %lld", spec, (long long)v, (long long)c->value);
        TU_OK(fluxus_pipeline_free(p));
        TU_OK(fluxus_registry_free(r));
    }
}

static void test_typed_setters_and_options_are_the_same_settings(void **state) {
    uint32_t s = 0;
    int64_t v = 0;
    fluxus_pipeline *p = pipeline_with(K_MAP, &s);
    (void)state;
    TU_OK(fluxus_stage_set_workers(p, s, 5));
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_WORKERS));
    assert_int_equal(v, 5);
    TU_OK(fluxus_stage_set_overflow(p, s, FLUXUS_OVERFLOW_BLOCK_TIMEOUT, 7));
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_OVERFLOW));
    assert_int_equal(v, FLUXUS_OVERFLOW_BLOCK_TIMEOUT);
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_OVERFLOW_TIMEOUT_US));
    assert_int_equal(v, 7000);
    TU_OK(fluxus_stage_set_retry(p, s, 3, FLUXUS_BACKOFF_CONSTANT, 20, 40));
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_RETRY_ATTEMPTS));
    assert_int_equal(v, 3);
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_RETRY_BASE_US));
    assert_int_equal(v, 20);
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_RETRY_MAX_US));
    assert_int_equal(v, 40);
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_TIMEOUT_US, 1500));
    TU_OK(fluxus_stage_set_pause_source_on_errors(p, s, 4, 100, 200));
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_PAUSE_AFTER_FAILURES));
    assert_int_equal(v, 4);
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_PAUSE_US));
    assert_int_equal(v, 200);
    TU_OK(fluxus_pipeline_free(p));
}

/* Options that must agree are checked when the pipeline starts, whatever order they came in. */
static void expect_start_refused(int32_t id1, int64_t v1, int32_t id2, int64_t v2,
                                 const char *says) {
    uint32_t s = 0, k = 0;
    fluxus_pipeline *p = pipeline_with(K_MAP, &s);
    tu_msg m;
    TU_OK(fluxus_pipeline_add_sink(&k, p, "out", sink_fn, NULL, NULL));
    TU_OK(fluxus_stage_set_option(p, s, id1, v1));
    if (id2) TU_OK(fluxus_stage_set_option(p, s, id2, v2));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_start(p));
    tu_msg_take(&m);
    if (!strstr(m.text, says)) fail_msg("start said '%s', expected '%s'", m.text, says);
    TU_OK(fluxus_pipeline_free(p));
}

static void test_options_that_must_agree_are_checked_at_start(void **state) {
    (void)state;
    expect_start_refused(FLUXUS_OPT_RETRY_BASE_US, 5000, FLUXUS_OPT_RETRY_MAX_US, 4000,
                         "first retry delay (5000 us) is above its longest (4000 us)");
    expect_start_refused(FLUXUS_OPT_RETRY_MAX_US, 10, 0, 0, "first retry delay (1000 us)");
    expect_start_refused(FLUXUS_OPT_OVERFLOW, FLUXUS_OVERFLOW_BLOCK_TIMEOUT, 0, 0,
                         "block_timeout needs an overflow timeout");
    expect_start_refused(FLUXUS_OPT_PAUSE_AFTER_FAILURES, 3, FLUXUS_OPT_PAUSE_US, 100,
                         "window or pause is 0");
}

static void test_options_are_read_only_once_started(void **state) {
    uint32_t s = 0, k = 0;
    int64_t v = 0;
    uint64_t next = 0;
    fluxus_pipeline *p = NULL;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, g_rt, "started"));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", range_pull, &next, NULL));
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", map_fn, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&k, p, "out", sink_fn, NULL, NULL));
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_QUEUE_CAPACITY, 64));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_option(p, s, FLUXUS_OPT_QUEUE_CAPACITY, 32));
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_QUEUE_CAPACITY));
    assert_int_equal(v, 64);
    TU_OK(tu_wait(p));
    TU_OK(fluxus_stage_get_option(&v, p, s, FLUXUS_OPT_QUEUE_CAPACITY));
    assert_int_equal(v, 64);
    TU_OK(fluxus_pipeline_free(p));
}

/* A retry set up through options alone retries: the map fails each item's first call. */
static int32_t fail_first(void *user, uint64_t in, uint64_t *out) {
    uint8_t *tried = (uint8_t *)user;
    if (!tried[in]) {
        tried[in] = 1;
        return 7;
    }
    *out = in;
    return 0;
}

static void test_a_retry_set_by_options_alone_runs(void **state) {
    uint8_t tried[100] = {0};
    uint64_t next = 0;
    uint32_t s = 0, k = 0;
    fluxus_pipeline *p = NULL;
    fluxus_pipeline_stats ps;
    fluxus_stage_stats ss;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, g_rt, "retry"));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", range_pull, &next, NULL));
    TU_OK(fluxus_pipeline_add_map(&s, p, "m", fail_first, tried, NULL));
    TU_OK(fluxus_pipeline_add_sink(&k, p, "out", sink_fn, NULL, NULL));
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_RETRY_ATTEMPTS, 2));
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_RETRY_BASE_US, 10));
    TU_OK(fluxus_stage_set_option(p, s, FLUXUS_OPT_RETRY_MAX_US, 10));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    tu_stats(p, &ps);
    tu_stage_stats(p, s, &ss);
    assert_int_equal(ps.delivered, 100);
    assert_int_equal(ps.failed, 0);
    assert_int_equal(ss.retries, 100);
    TU_OK(fluxus_pipeline_free(p));
}

/* ----- pipeline-wide and runtime options ----- */

static void test_pipeline_options_read_back_and_keep_their_bounds(void **state) {
    static const struct {
        int32_t id;
        const char *name;
        int64_t fallback, value;
    } pcases[] = {
        {FLUXUS_OPT_BATCH_SIZE, "batch_size", 256, 64},
        {FLUXUS_OPT_FUSION, "fusion", 1, 0},
        {FLUXUS_OPT_POLL_INTERVAL_US, "poll_interval_us", 1000, 250},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof pcases / sizeof pcases[0]; ++i) {
        fluxus_pipeline *p = NULL;
        int64_t v = 0, lo = 0, hi = 0;
        const char *name = NULL;
        int32_t id = 0;
        TU_OK(fluxus_option_get_name(&name, pcases[i].id));
        assert_string_equal(name, pcases[i].name);
        TU_OK(fluxus_option_get_id(&id, name));
        assert_int_equal(id, pcases[i].id);
        TU_OK(fluxus_option_get_bounds(&lo, &hi, pcases[i].id));
        TU_OK(fluxus_pipeline_new(&p, g_rt, "p"));
        TU_OK(fluxus_pipeline_get_option(&v, p, pcases[i].id));
        assert_int_equal(v, pcases[i].fallback);
        TU_OK(fluxus_pipeline_set_option(p, pcases[i].id, pcases[i].value));
        TU_OK(fluxus_pipeline_get_option(&v, p, pcases[i].id));
        assert_int_equal(v, pcases[i].value);
        TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_option(p, pcases[i].id, lo - 1));
        TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_set_option(p, pcases[i].id, hi + 1));
        TU_OK(fluxus_pipeline_get_option(&v, p, pcases[i].id));
        assert_int_equal(v, pcases[i].value);
        /* A stage option is not a pipeline option, and the reverse. */
        TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_option(p, FLUXUS_OPT_WORKERS, 2));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_option(&v, p, FLUXUS_OPT_SPIN_US));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_option(NULL, p, pcases[i].id));
        TU_OK(fluxus_pipeline_free(p));
    }
}

static void test_runtime_options_read_back_and_refuse_after_start(void **state) {
    fluxus_runtime *rt = NULL;
    int64_t v = 0;
    (void)state;
    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_option(rt, FLUXUS_OPT_RUNTIME_WORKERS, 3));
    TU_OK(fluxus_runtime_get_option(&v, rt, FLUXUS_OPT_RUNTIME_WORKERS));
    assert_int_equal(v, 3);
    TU_OK(fluxus_runtime_get_option(&v, rt, FLUXUS_OPT_SPIN_US));
    assert_int_equal(v, 50);
    TU_OK(fluxus_runtime_set_option(rt, FLUXUS_OPT_SPIN_US, 0));
    TU_OK(fluxus_runtime_get_option(&v, rt, FLUXUS_OPT_STALL_THRESHOLD_US));
    assert_int_equal(v, 1000000);
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_option(rt, FLUXUS_OPT_STALL_THRESHOLD_US, 5000));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_option(rt, FLUXUS_OPT_STALL_THRESHOLD_US, 20500));
    TU_OK(fluxus_runtime_set_option(rt, FLUXUS_OPT_STALL_THRESHOLD_US, 20000));
    TU_OK(fluxus_runtime_get_option(&v, rt, FLUXUS_OPT_STALL_THRESHOLD_US));
    assert_int_equal(v, 20000);
    TU_OK(fluxus_runtime_set_option(rt, FLUXUS_OPT_STALL_THRESHOLD_US, 0));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_runtime_set_option(rt, FLUXUS_OPT_RUNTIME_WORKERS, 1025));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_runtime_set_option(rt, FLUXUS_OPT_BATCH_SIZE, 1));
    TU_OK(fluxus_runtime_start(rt));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_runtime_set_option(rt, FLUXUS_OPT_SPIN_US, 10));
    TU_OK(fluxus_runtime_get_option(&v, rt, FLUXUS_OPT_RUNTIME_WORKERS));
    assert_int_equal(v, 3);
    TU_OK(fluxus_runtime_free(rt));
}

static void test_a_spec_sets_pipeline_options_in_its_first_statement(void **state) {
    fluxus_registry *r = NULL;
    fluxus_pipeline *p = NULL;
    int64_t v = 0;
    tu_msg m;
    (void)state;
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "m", FLUXUS_FN_MAP, (fluxus_any_fn)map_fn, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "out", FLUXUS_FN_SINK, (fluxus_any_fn)sink_fn, NULL, NULL));
    TU_OK(fluxus_pipeline_new(&p, g_rt, "spec"));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_build(p, r, "pipeline(batch_size=32, fusion=0, poll_interval_us=77);"
                                      " source | m | out"));
    TU_OK(fluxus_pipeline_get_option(&v, p, FLUXUS_OPT_BATCH_SIZE));
    assert_int_equal(v, 32);
    TU_OK(fluxus_pipeline_get_option(&v, p, FLUXUS_OPT_FUSION));
    assert_int_equal(v, 0);
    TU_OK(fluxus_pipeline_get_option(&v, p, FLUXUS_OPT_POLL_INTERVAL_US));
    assert_int_equal(v, 77);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_new(&p, g_rt, "spec2"));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(p, r, "pipeline(workers=2); source | m | out"));
    tu_msg_take(&m);
    assert_non_null(strstr(m.text, "spec:1:10: "));
    assert_non_null(strstr(m.text, "not a pipeline option"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_build(p, r, "pipeline(batch_size=0); source | out"));
    tu_msg_take(&m);
    assert_non_null(strstr(m.text, "batch_size"));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_registry_free(r));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_option_of_the_library_has_a_case_here),
        cmocka_unit_test(test_names_and_ids_map_one_to_one),
        cmocka_unit_test(test_a_fresh_stage_reads_the_defaults),
        cmocka_unit_test(test_each_option_reads_back_what_was_set_at_both_bounds),
        cmocka_unit_test(test_an_option_of_another_kind_is_refused_and_says_where_it_applies),
        cmocka_unit_test(test_max_keys_has_the_rules_of_each_kind),
        cmocka_unit_test(test_values_parse_from_words_and_numbers),
        cmocka_unit_test(test_every_option_has_spec_syntax_with_the_same_meaning),
        cmocka_unit_test(test_typed_setters_and_options_are_the_same_settings),
        cmocka_unit_test(test_options_that_must_agree_are_checked_at_start),
        cmocka_unit_test(test_options_are_read_only_once_started),
        cmocka_unit_test(test_a_retry_set_by_options_alone_runs),
        cmocka_unit_test(test_pipeline_options_read_back_and_keep_their_bounds),
        cmocka_unit_test(test_runtime_options_read_back_and_refuse_after_start),
        cmocka_unit_test(test_a_spec_sets_pipeline_options_in_its_first_statement),
    };
    tu_apply_filters();
    return cmocka_run_group_tests(tests, setup, teardown);
}
