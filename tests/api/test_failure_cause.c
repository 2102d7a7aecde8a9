/*
 * Failure causes: the text a callback attaches to its failure (fluxus_call_set_error,
 * fluxus_call_set_item_error, fluxus_pipeline_fail_async) reaches every place the failure goes — the
 * dead-letter record, the route observer of an error branch or error route, the log callback,
 * and, when it stops the pipeline, fluxus_pipeline_get_failure() and the last-error message of
 * wait() and drain() — with the stage, status and attempts, and retries exhausted told apart
 * from a first failure. Fused and unfused chains, several workers, every callback shape.
 */
#include "test_util.h"

#define FC_N 400u
#define FC_STATUS 42
#define FC_TEXT "HTTP 503 from api.example: item %llu"

/* The stage under test is always stage 1 (after an identity map), named "under_test". */
#define FC_STAGE 1u
#define FC_NAME "under_test"

enum { FC_MAP, FC_FILTER, FC_FLAT_MAP, FC_SINK, FC_MAP_BATCH, FC_SINK_BATCH };

/* One item's failure, as a dead-letter or route-observer callback saw it. */
typedef struct fc_rec {
    uint32_t calls;
    uint32_t stage_index;
    int32_t status;
    uint32_t attempts;
    int32_t exhausted;
    char stage[32];
    char message[FLUXUS_ERROR_TEXT_MAX + 1];
    char description[96];
} fc_rec;

typedef struct fc_ctx {
    pthread_mutex_t mu;
    uint64_t n;
    fc_rec *rec;           /* by item */
    uint64_t bad_item;     /* a failure reported for an item out of range */
    uint64_t inner_rc_bad; /* fluxus_call_set_error inside a dead-letter/observer/log callback
                              did not return FLUXUS_ESTATE */
    uint64_t set_rc_bad;   /* a fluxus_call_set_* inside a stage callback returned the wrong code */
    uint64_t erange_seen;  /* fluxus_call_set_item_error past the count returned FLUXUS_ERANGE */
    tu_tracker t;
    /* behaviour */
    uint64_t fail_only;     /* UINT64_MAX: fail as fc_fate() says; else only this item fails */
    uint32_t *attempts;     /* calls per item (retry tests) */
    /* logs */
    uint64_t log_text;      /* failure logs of the stage under test carrying a callback's text */
    uint64_t log_plain;     /* ... and those of failures without one */
    uint64_t log_bad;       /* a failure log with the wrong pipeline or stage name */
    char error_log[2048];   /* the last FLUXUS_LOG_ERROR message */
    /* async */
    fluxus_pipeline *p;
    fluxus_runtime *rt;
    uint64_t async_rc_bad;
    /* error branch and route */
    uint32_t *branch_seen;  /* by item: arrivals at the error branch's sink or the route's */
} fc_ctx;

static void fc_init(fc_ctx *c, uint64_t n) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->n = n;
    c->rec = (fc_rec *)calloc((size_t)n, sizeof(fc_rec));
    c->attempts = (uint32_t *)calloc((size_t)n, sizeof(uint32_t));
    c->branch_seen = (uint32_t *)calloc((size_t)n, sizeof(uint32_t));
    assert_non_null(c->rec);
    assert_non_null(c->attempts);
    assert_non_null(c->branch_seen);
    c->fail_only = UINT64_MAX;
    tu_tracker_init(&c->t, n);
}

static void fc_destroy(fc_ctx *c) {
    free(c->rec);
    free(c->attempts);
    free(c->branch_seen);
    tu_tracker_destroy(&c->t);
    pthread_mutex_destroy(&c->mu);
}

static void fc_copy(char *dst, size_t cap, const char *src) {
    strncpy(dst, src != NULL ? src : "(null)", cap - 1);
    dst[cap - 1] = '\0';
}

/* The dead-letter callback and the route observer: record what they see, per item. */
static void fc_record(void *user, uint64_t item, const fluxus_failure *f) {
    fc_ctx *c = (fc_ctx *)user;
    fc_rec *r;
    if (fluxus_call_set_error("from a dead-letter or observer callback") != FLUXUS_ESTATE) {
        TU_ADD(&c->inner_rc_bad, 1);
    }
    if (item >= c->n) {
        TU_ADD(&c->bad_item, 1);
        return;
    }
    pthread_mutex_lock(&c->mu);
    r = &c->rec[item];
    r->calls++;
    r->stage_index = tu_failure_stage_index(f);
    r->status = tu_failure_status(f);
    r->attempts = tu_failure_attempts(f);
    r->exhausted = tu_failure_retries_exhausted(f);
    fc_copy(r->stage, sizeof r->stage, tu_failure_stage_name(f));
    fc_copy(r->message, sizeof r->message, tu_failure_message(f));
    fc_copy(r->description, sizeof r->description, tu_failure_description(f));
    pthread_mutex_unlock(&c->mu);
}

static void fc_log(void *user, int32_t level, const char *pipeline, const char *stage,
                   const char *message) {
    fc_ctx *c = (fc_ctx *)user;
    if (fluxus_call_set_error("from the log callback") != FLUXUS_ESTATE) {
        TU_ADD(&c->inner_rc_bad, 1);
    }
    if (level == FLUXUS_LOG_ERROR) {
        pthread_mutex_lock(&c->mu);
        fc_copy(c->error_log, sizeof c->error_log, message);
        pthread_mutex_unlock(&c->mu);
    }
    if (strcmp(stage, FC_NAME) != 0 || strstr(message, "callback failed") == NULL) {
        return;
    }
    if (strcmp(pipeline, "fc") != 0) {
        TU_ADD(&c->log_bad, 1);
    }
    if (strstr(message, "HTTP 503 from api.example: item ") != NULL) {
        TU_ADD(&c->log_text, 1);
    } else if (strstr(message, "callback failed (status 42)") != NULL) {
        TU_ADD(&c->log_plain, 1);
    } else {
        TU_ADD(&c->log_bad, 1);
    }
}

/* Item x: x % 4 == 0 fails with a text, x % 4 == 1 fails without one, the rest pass. */
static int32_t fc_fate(fc_ctx *c, uint64_t x) {
    char buf[96];
    if (c->fail_only != UINT64_MAX) {
        if (x != c->fail_only) {
            return 0;
        }
        snprintf(buf, sizeof buf, "boom: item %llu", (unsigned long long)x);
        if (fluxus_call_set_error(buf) != FLUXUS_OK) {
            TU_ADD(&c->set_rc_bad, 1);
        }
        return FC_STATUS;
    }
    switch (x % 4) {
    case 0:
        snprintf(buf, sizeof buf, FC_TEXT, (unsigned long long)x);
        if (fluxus_call_set_error(buf) != FLUXUS_OK) {
            TU_ADD(&c->set_rc_bad, 1);
        }
        return FC_STATUS;
    case 1:
        /* Not a batch callback: a per-item text is refused. */
        if (fluxus_call_set_item_error(0, "not here") != FLUXUS_ESTATE) {
            TU_ADD(&c->set_rc_bad, 1);
        }
        return FC_STATUS;
    default:
        return 0;
    }
}

static int32_t fc_map(void *user, uint64_t in, uint64_t *out) {
    int32_t rc = fc_fate((fc_ctx *)user, in);
    if (rc == 0) {
        *out = in;
    }
    return rc;
}

static int32_t fc_filter(void *user, uint64_t item, int32_t *keep) {
    *keep = 1;
    return fc_fate((fc_ctx *)user, item);
}

static int32_t fc_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    int32_t rc = fc_fate((fc_ctx *)user, item);
    if (rc == 0 && fluxus_emitter_emit(em, item) != FLUXUS_OK) {
        TU_ADD(&((fc_ctx *)user)->set_rc_bad, 1);
    }
    return rc;
}

static int32_t fc_sink(void *user, uint64_t item) {
    fc_ctx *c = (fc_ctx *)user;
    int32_t rc = fc_fate(c, item);
    if (rc == 0) {
        tu_tracker_deliver(&c->t, item);
    }
    return rc;
}

static int32_t fc_count_sink(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static int32_t fc_out_sink(void *user, uint64_t item) {
    tu_tracker_deliver(&((fc_ctx *)user)->t, item);
    return 0;
}

/* Batch map: x % 4 == 0 fails with its own text, x % 4 == 1 with the call's text. */
static int32_t fc_batch_fate(fc_ctx *c, const uint64_t *in, int32_t *status, uint32_t count) {
    uint32_t i;
    int call_text = 0;
    for (i = 0; i < count; i++) {
        char buf[64];
        if (in[i] % 4 == 0) {
            status[i] = FC_STATUS;
            snprintf(buf, sizeof buf, "row %llu rejected", (unsigned long long)in[i]);
            if (fluxus_call_set_item_error(i, buf) != FLUXUS_OK) {
                TU_ADD(&c->set_rc_bad, 1);
            }
        } else if (in[i] % 4 == 1) {
            status[i] = FC_STATUS;
            call_text = 1;
        }
    }
    if (call_text && fluxus_call_set_error("batch call: constraint violated") != FLUXUS_OK) {
        TU_ADD(&c->set_rc_bad, 1);
    }
    if (fluxus_call_set_item_error(count, "past the end") == FLUXUS_ERANGE) {
        TU_ADD(&c->erange_seen, 1);
    }
    return 0;
}

static int32_t fc_map_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                            uint32_t count) {
    uint32_t i;
    for (i = 0; i < count; i++) {
        out[i] = in[i];
    }
    return fc_batch_fate((fc_ctx *)user, in, status, count);
}

static int32_t fc_sink_batch(void *user, const uint64_t *items, int32_t *status, uint32_t count) {
    fc_ctx *c = (fc_ctx *)user;
    int32_t rc = fc_batch_fate(c, items, status, count);
    uint32_t i;
    for (i = 0; i < count; i++) {
        if (status[i] == 0) {
            tu_tracker_deliver(&c->t, items[i]);
        }
    }
    return rc;
}

static const char *fc_description(int kind) {
    switch (kind) {
    case FC_MAP: return "map callback failed";
    case FC_FILTER: return "filter callback failed";
    case FC_FLAT_MAP: return "flat-map callback failed";
    case FC_SINK: return "sink callback failed";
    case FC_MAP_BATCH: return "batch map callback failed";
    default: return "batch sink callback failed";
    }
}

/*
 * source 0..n-1 -> map "pre" (identity) -> stage 1 "under_test" of `kind` [-> sink "out"].
 * The stage under test has `workers` workers (unordered, or per key for sinks).
 */
static fluxus_pipeline *fc_build(fc_ctx *c, fluxus_runtime *rt, tu_range_source *src, int kind,
                                 int fused, uint32_t workers, int32_t policy) {
    fluxus_pipeline *p = tu_pipeline(rt, "fc", &c->t);
    uint32_t st = 0;
    src->next = 0;
    src->end = c->n;
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_set_batch_size(p, 32));
    if (!fused) {
        TU_OK(fluxus_pipeline_set_fusion(p, 0));
    }
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    switch (kind) {
    case FC_MAP: TU_OK(fluxus_pipeline_add_map(&st, p, FC_NAME, fc_map, c, NULL)); break;
    case FC_FILTER: TU_OK(fluxus_pipeline_add_filter(&st, p, FC_NAME, fc_filter, c, NULL)); break;
    case FC_FLAT_MAP:
        TU_OK(fluxus_pipeline_add_flat_map(&st, p, FC_NAME, fc_flat_map, c, NULL));
        break;
    case FC_SINK: TU_OK(fluxus_pipeline_add_sink(&st, p, FC_NAME, fc_sink, c, NULL)); break;
    case FC_MAP_BATCH:
        TU_OK(fluxus_pipeline_add_map_batch(&st, p, FC_NAME, fc_map_batch, c, NULL));
        break;
    default:
        TU_OK(fluxus_pipeline_add_sink_batch(&st, p, FC_NAME, fc_sink_batch, c, NULL));
        break;
    }
    assert_int_equal(st, FC_STAGE);
    if (workers > 1) {
        TU_OK(fluxus_stage_set_workers(p, st, workers));
        TU_OK(fluxus_stage_set_order(p, st,
                                     kind == FC_SINK || kind == FC_SINK_BATCH
                                         ? FLUXUS_ORDER_PER_KEY
                                         : FLUXUS_ORDER_UNORDERED));
    }
    TU_OK(fluxus_stage_set_error_policy(p, st, policy));
    if (policy == FLUXUS_ERROR_DEAD_LETTER) {
        TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, c, NULL));
    }
    if (kind != FC_SINK && kind != FC_SINK_BATCH) {
        TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, c, NULL));
    }
    return p;
}

/* The record of item x (which failed at the stage under test) reads as expected. */
static void fc_expect_rec(const fc_ctx *c, uint64_t x, const char *message,
                          const char *description, uint32_t attempts, int32_t exhausted) {
    const fc_rec *r = &c->rec[x];
    if (r->calls != 1 || r->stage_index != FC_STAGE || strcmp(r->stage, FC_NAME) != 0 ||
        r->status != FC_STATUS || r->attempts != attempts || r->exhausted != exhausted ||
        strcmp(r->message, message) != 0 || strcmp(r->description, description) != 0) {
        fail_msg("item %llu: seen %u times at stage %u '%s', status %d, attempts %u, exhausted %d, "
                 "message '%s', description '%s'; expected once at stage %u '%s', status %d, "
                 "attempts %u, exhausted %d, message '%s', description '%s'",
                 (unsigned long long)x, r->calls, r->stage_index, r->stage, r->status,
                 r->attempts, r->exhausted, r->message, r->description, FC_STAGE, FC_NAME,
                 FC_STATUS, attempts, exhausted, message, description);
    }
}

/* Every item failed or passed as fc_fate() says, each failure with its own text or none. */
static void fc_check_fates(const fc_ctx *c, int kind) {
    uint64_t x;
    const char *desc = fc_description(kind);
    int batch = kind == FC_MAP_BATCH || kind == FC_SINK_BATCH;
    for (x = 0; x < c->n; x++) {
        char want[96];
        switch (x % 4) {
        case 0:
            if (batch) {
                snprintf(want, sizeof want, "row %llu rejected", (unsigned long long)x);
            } else {
                snprintf(want, sizeof want, FC_TEXT, (unsigned long long)x);
            }
            fc_expect_rec(c, x, want, desc, 1, 0);
            break;
        case 1:
            /* No text of its own: a per-item callback's is fluxus's description (no stale text of
             * the item before), a batch item's is the call's. */
            fc_expect_rec(c, x, batch ? "batch call: constraint violated" : desc, desc, 1, 0);
            break;
        default:
            if (c->rec[x].calls != 0) {
                fail_msg("item %llu passed but was reported failed: '%s'", (unsigned long long)x,
                         c->rec[x].message);
            }
            break;
        }
    }
    assert_int_equal(TU_LOAD(&c->bad_item), 0);
    assert_int_equal(TU_LOAD(&c->inner_rc_bad), 0);
    assert_int_equal(TU_LOAD(&c->set_rc_bad), 0);
}

static void fc_run_dead_letter_case(int kind, int fused, uint32_t workers) {
    fc_ctx c;
    tu_range_source src;
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fc_init(&c, FC_N);
    memset(&src, 0, sizeof src);
    p = fc_build(&c, rt, &src, kind, fused, workers, FLUXUS_ERROR_DEAD_LETTER);
    tu_run_expect(p, FLUXUS_OK);
    fc_check_fates(&c, kind);
    tu_stats(p, &s);
    assert_int_equal(s.dead_lettered, FC_N / 2);
    tu_check_conservation(p, &c.t, 0);
    if (kind != FC_FLAT_MAP) {
        tu_tracker_check_once(&c.t, 0, FC_N);
    }
    if (kind == FC_MAP_BATCH || kind == FC_SINK_BATCH) {
        assert_true(TU_LOAD(&c.erange_seen) > 0);
    }
    tu_free_all(p, rt);
    fc_destroy(&c);
}

/* ----- the setter outside a callback ----- */

static void test_call_set_error_outside_a_callback_returns_estate(void **state) {
    (void)state;
    TU_EXPECT(FLUXUS_ESTATE, fluxus_call_set_error("not in a callback"));
    assert_true(fluxus_last_error_message()[0] != '\0');
    TU_EXPECT(FLUXUS_ESTATE, fluxus_call_set_error(NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_call_set_item_error(0, "not in a callback"));
    assert_true(fluxus_last_error_message()[0] != '\0');
}

/* ----- each callback shape: the text reaches the dead-letter record ----- */

static void test_map_text_reaches_the_dead_letter_record_fused(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_MAP, 1, 1);
}

static void test_map_text_reaches_the_dead_letter_record_unfused(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_MAP, 0, 1);
}

static void test_map_text_reaches_the_dead_letter_record_with_three_workers(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_MAP, 1, 3);
}

static void test_filter_text_reaches_the_dead_letter_record(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_FILTER, 1, 1);
    fc_run_dead_letter_case(FC_FILTER, 0, 1);
    fc_run_dead_letter_case(FC_FILTER, 1, 3);
}

static void test_flat_map_text_reaches_the_dead_letter_record(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_FLAT_MAP, 1, 1);
    fc_run_dead_letter_case(FC_FLAT_MAP, 0, 1);
    fc_run_dead_letter_case(FC_FLAT_MAP, 1, 3);
}

static void test_sink_text_reaches_the_dead_letter_record(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_SINK, 1, 1);
    fc_run_dead_letter_case(FC_SINK, 0, 1);
    fc_run_dead_letter_case(FC_SINK, 1, 3);
}

static void test_batch_map_item_and_call_texts_reach_the_dead_letter_records(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_MAP_BATCH, 1, 1);
    fc_run_dead_letter_case(FC_MAP_BATCH, 0, 1);
    fc_run_dead_letter_case(FC_MAP_BATCH, 1, 3);
}

static void test_batch_sink_item_and_call_texts_reach_the_dead_letter_records(void **state) {
    (void)state;
    fc_run_dead_letter_case(FC_SINK_BATCH, 1, 1);
    fc_run_dead_letter_case(FC_SINK_BATCH, 0, 1);
}

/* A batch call that fails as a whole gives its text to every item without a text of its own. */
static int32_t fc_whole_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                              uint32_t count) {
    fc_ctx *c = (fc_ctx *)user;
    uint32_t i;
    int32_t rc = 0;
    (void)status;
    for (i = 0; i < count; i++) {
        out[i] = in[i];
        if (in[i] % 16 == 7) {
            char buf[64];
            snprintf(buf, sizeof buf, "culprit %llu", (unsigned long long)in[i]);
            if (fluxus_call_set_item_error(i, buf) != FLUXUS_OK) {
                TU_ADD(&c->set_rc_bad, 1);
            }
            rc = FC_STATUS;
        }
    }
    if (rc != 0 && fluxus_call_set_error("whole batch failed") != FLUXUS_OK) {
        TU_ADD(&c->set_rc_bad, 1);
    }
    return rc;
}

static void test_batch_call_failing_as_a_whole_gives_each_item_its_text(void **state) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint64_t x, whole = 0;
    (void)state;
    fc_init(&c, FC_N);
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_batch_size(p, 8));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(NULL, p, FC_NAME, fc_whole_batch, &c, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, FC_STAGE, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);
    for (x = 0; x < FC_N; x++) {
        char want[64];
        if (x % 16 == 7) {
            snprintf(want, sizeof want, "culprit %llu", (unsigned long long)x);
            fc_expect_rec(&c, x, want, "batch map callback failed", 1, 0);
        } else if (c.rec[x].calls != 0) {
            fc_expect_rec(&c, x, "whole batch failed", "batch map callback failed", 1, 0);
            whole++;
        }
    }
    assert_true(whole > 0); /* the culprits' batch mates failed with the call's text */
    assert_int_equal(TU_LOAD(&c.set_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, FC_N);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

/* A batch call that fails nothing: its text goes nowhere, not to the next stage's failure. */
static int32_t fc_vanishing_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                                  uint32_t count) {
    fc_ctx *c = (fc_ctx *)user;
    uint32_t i;
    (void)status;
    for (i = 0; i < count; i++) {
        out[i] = in[i];
    }
    if (fluxus_call_set_error("should vanish") != FLUXUS_OK ||
        fluxus_call_set_item_error(0, "should vanish too") != FLUXUS_OK) {
        TU_ADD(&c->set_rc_bad, 1);
    }
    return 0;
}

static int32_t fc_odd_fails(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return in % 2 == 1 ? FC_STATUS : 0;
}

static void test_text_of_a_batch_call_that_fails_nothing_goes_nowhere(void **state) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint64_t x;
    (void)state;
    fc_init(&c, FC_N);
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map_batch(NULL, p, "pre", fc_vanishing_batch, &c, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_odd_fails, &c, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, FC_STAGE, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);
    for (x = 1; x < FC_N; x += 2) {
        fc_expect_rec(&c, x, "map callback failed", "map callback failed", 1, 0);
    }
    assert_int_equal(TU_LOAD(&c.set_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

/* ----- windows: a tumbling window's text goes with each of its items, a sliding one's not ----- */

static int32_t fc_one_key(void *user, uint64_t item, const void **key, size_t *len) {
    static const char k = 'k';
    (void)user;
    (void)item;
    *key = &k;
    *len = 1;
    return 0;
}

static int32_t fc_window(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                         fluxus_emitter *em) {
    fc_ctx *c = (fc_ctx *)user;
    char buf[64];
    (void)start_ns;
    (void)em;
    if (count == 0 || items[0] % 8 != 0) {
        return 0;
    }
    snprintf(buf, sizeof buf, "window at %llu", (unsigned long long)items[0]);
    if (fluxus_call_set_error(buf) != FLUXUS_OK) {
        TU_ADD(&c->set_rc_bad, 1);
    }
    return FC_STATUS;
}

static void fc_run_window_case(int sliding) {
    fc_ctx c;
    tu_range_source src = {0, 64, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint64_t x, failed = 0;
    fc_init(&c, 64);
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    if (sliding) {
        TU_OK(fluxus_pipeline_add_sliding_window(NULL, p, FC_NAME, FLUXUS_WINDOW_COUNT, 4, 2,
                                                 fc_window, &c, NULL));
    } else {
        TU_OK(fluxus_pipeline_add_window(NULL, p, FC_NAME, FLUXUS_WINDOW_COUNT, 4, fc_window, &c,
                                         NULL));
    }
    TU_OK(fluxus_stage_set_key_fn(p, FC_STAGE, fc_one_key, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, FC_STAGE, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    tu_run_expect(p, FLUXUS_OK);
    for (x = 0; x < 64; x++) {
        char want[64];
        if (c.rec[x].calls == 0) {
            continue;
        }
        failed++;
        if (sliding) {
            /* Its items fail when they leave their last window: the status, not the text. */
            fc_expect_rec(&c, x, "window callback failed", "window callback failed", 1, 0);
        } else {
            snprintf(want, sizeof want, "window at %llu", (unsigned long long)(x - x % 4));
            fc_expect_rec(&c, x, want, "window callback failed", 1, 0);
        }
    }
    assert_true(failed > 0);
    if (!sliding) {
        assert_int_equal(failed, 32); /* windows 0-3, 8-11, ...: every other window */
    }
    assert_int_equal(TU_LOAD(&c.set_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_window_text_goes_with_each_item_of_the_window(void **state) {
    (void)state;
    fc_run_window_case(0);
}

static void test_sliding_window_items_keep_the_status_only(void **state) {
    (void)state;
    fc_run_window_case(1);
}

/* ----- async: a completion that carries its text, and a refusal with one ----- */

typedef struct fc_later {
    fc_ctx *c;
    uint64_t completion;
    uint64_t item;
} fc_later;

static void fc_later_fire(void *user) {
    fc_later *l = (fc_later *)user;
    char buf[96];
    /* A timer callback is no stage callback. */
    if (fluxus_call_set_error("from a timer") != FLUXUS_ESTATE) {
        TU_ADD(&l->c->async_rc_bad, 1);
    }
    snprintf(buf, sizeof buf, "async: upstream said no to %llu", (unsigned long long)l->item);
    if (fluxus_pipeline_fail_async(l->c->p, l->completion, FC_STATUS, l->item, buf) != FLUXUS_OK) {
        TU_ADD(&l->c->async_rc_bad, 1);
    }
}

static void fc_later_free(void *user) { free(user); }

static int32_t fc_async(void *user, uint64_t item, uint64_t completion) {
    fc_ctx *c = (fc_ctx *)user;
    char buf[96];
    switch (item % 4) {
    case 0:
        if (item % 8 == 0) {
            snprintf(buf, sizeof buf, "async: upstream said no to %llu", (unsigned long long)item);
            if (fluxus_pipeline_fail_async(c->p, completion, FC_STATUS, item, buf) != FLUXUS_OK) {
                TU_ADD(&c->async_rc_bad, 1);
            }
        } else {
            /* Completed later from the loop thread. */
            fc_later *l = (fc_later *)malloc(sizeof *l);
            if (l == NULL) {
                TU_ADD(&c->async_rc_bad, 1);
                return FLUXUS_ENOMEM;
            }
            l->c = c;
            l->completion = completion;
            l->item = item;
            if (fluxus_runtime_call_after(NULL, c->rt, 1000, fc_later_fire, l, fc_later_free) !=
                FLUXUS_OK) {
                TU_ADD(&c->async_rc_bad, 1);
            }
        }
        return 0;
    case 1:
        snprintf(buf, sizeof buf, "refused %llu", (unsigned long long)item);
        if (fluxus_call_set_error(buf) != FLUXUS_OK) {
            TU_ADD(&c->async_rc_bad, 1);
        }
        return FC_STATUS;
    case 2:
        if (fluxus_pipeline_complete_async(c->p, completion, FC_STATUS, item) != FLUXUS_OK) {
            TU_ADD(&c->async_rc_bad, 1);
        }
        return 0;
    default:
        /* A failure with status 0 is refused, and nothing is taken. */
        if (fluxus_pipeline_fail_async(c->p, completion, 0, item, "no") != FLUXUS_EINVAL) {
            TU_ADD(&c->async_rc_bad, 1);
        }
        if (fluxus_pipeline_complete_async(c->p, completion, 0, item) != FLUXUS_OK) {
            TU_ADD(&c->async_rc_bad, 1);
        }
        return 0;
    }
}

static void fc_run_async_case(int fused) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint64_t x;
    fc_init(&c, FC_N);
    p = tu_pipeline(rt, "fc", &c.t);
    c.p = p;
    c.rt = rt;
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    if (!fused) {
        TU_OK(fluxus_pipeline_set_fusion(p, 0));
    }
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_async_map(NULL, p, FC_NAME, fc_async, &c, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, FC_STAGE, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);
    for (x = 0; x < FC_N; x++) {
        char want[96];
        switch (x % 4) {
        case 0:
            snprintf(want, sizeof want, "async: upstream said no to %llu", (unsigned long long)x);
            fc_expect_rec(&c, x, want, "async completion reported an error", 1, 0);
            break;
        case 1:
            snprintf(want, sizeof want, "refused %llu", (unsigned long long)x);
            fc_expect_rec(&c, x, want, "async callback refused the item", 1, 0);
            break;
        case 2:
            fc_expect_rec(&c, x, "async completion reported an error",
                          "async completion reported an error", 1, 0);
            break;
        default:
            assert_int_equal(c.rec[x].calls, 0);
            break;
        }
    }
    assert_int_equal(TU_LOAD(&c.async_rc_bad), 0);
    assert_int_equal(TU_LOAD(&c.inner_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, FC_N);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_async_completion_and_refusal_texts_reach_the_dead_letter_record(void **state) {
    (void)state;
    fc_run_async_case(1);
    fc_run_async_case(0);
}

static void test_async_fail_misuse(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "fc", NULL);
    (void)state;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_fail_async(NULL, 1, FC_STATUS, 0, "x"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_fail_async(p, 1, 0, 0, "x"));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_fail_async(p, 1, FC_STATUS, 0, "x")); /* no async stage */
    tu_free_all(p, rt);
}

/* ----- error branch and error route: the route observer ----- */

static int32_t fc_branch_sink(void *user, uint64_t item) {
    fc_ctx *c = (fc_ctx *)user;
    if (item < c->n) {
        TU_ADD(&c->branch_seen[item], 1);
    }
    tu_tracker_deliver(&c->t, item);
    return 0;
}

static void fc_check_routed(const fc_ctx *c, int kind) {
    uint64_t x;
    fc_check_fates(c, kind);
    for (x = 0; x < c->n; x++) {
        uint32_t want = x % 4 < 2 ? 1u : 0u;
        if (TU_LOAD(&c->branch_seen[x]) != want) {
            fail_msg("item %llu arrived %u times where failed items go (expected %u)",
                     (unsigned long long)x, TU_LOAD(&c->branch_seen[x]), want);
        }
    }
}

static void fc_run_branch_case(int kind, int fused, uint32_t workers) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    fluxus_pipeline_stats s;
    fluxus_stage_stats st;
    fc_init(&c, FC_N);
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    if (!fused) {
        TU_OK(fluxus_pipeline_set_fusion(p, 0));
    }
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    if (kind == FC_MAP) {
        TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_map, &c, NULL));
    } else {
        TU_OK(fluxus_pipeline_add_map_batch(NULL, p, FC_NAME, fc_map_batch, &c, NULL));
    }
    if (workers > 1) {
        TU_OK(fluxus_stage_set_workers(p, FC_STAGE, workers));
        TU_OK(fluxus_stage_set_order(p, FC_STAGE, FLUXUS_ORDER_UNORDERED));
    }
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    TU_OK(fluxus_pipeline_branch(p, FC_STAGE, FLUXUS_OUTLET_ERROR));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "errors", fc_branch_sink, &c, NULL));
    TU_OK(fluxus_pipeline_set_route_observer(p, fc_record, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);
    fc_check_routed(&c, kind);
    tu_stats(p, &s);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(s.delivered, FC_N);
    tu_stage_stats(p, FC_STAGE, &st);
    assert_int_equal(st.routed, FC_N / 2);
    tu_tracker_check_once(&c.t, 0, FC_N);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_error_branch_route_observer_sees_each_text(void **state) {
    (void)state;
    fc_run_branch_case(FC_MAP, 1, 1);
    fc_run_branch_case(FC_MAP, 0, 1);
    fc_run_branch_case(FC_MAP, 1, 3);
    fc_run_branch_case(FC_MAP_BATCH, 1, 1);
}

static void test_error_route_observer_sees_each_text(void **state) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p, *target;
    fluxus_pipeline_stats s;
    (void)state;
    fc_init(&c, FC_N);
    target = tu_pipeline(rt, "fc-dead-letters", NULL);
    TU_OK(fluxus_pipeline_set_push_source(target, "failed"));
    TU_OK(fluxus_pipeline_add_sink(NULL, target, "store", fc_branch_sink, &c, NULL));
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_map, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    TU_OK(fluxus_stage_set_error_route(p, FC_STAGE, target));
    TU_OK(fluxus_pipeline_set_route_observer(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_start(target));
    tu_run_expect(p, FLUXUS_OK);
    TU_OK(fluxus_pipeline_close_input(target));
    TU_EXPECT(FLUXUS_OK, tu_wait(target));
    fc_check_routed(&c, FC_MAP);
    tu_stats(p, &s);
    assert_int_equal(s.dead_lettered, FC_N / 2); /* handed over */
    tu_tracker_check_once(&c.t, 0, FC_N);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_free(target));
    TU_OK(fluxus_runtime_free(rt));
    fc_destroy(&c);
}

static void test_route_observer_misuse(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "fc", NULL);
    tu_range_source src = {0, 0, 0};
    (void)state;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_route_observer(NULL, fc_record, NULL, NULL));
    TU_OK(fluxus_pipeline_set_route_observer(p, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    tu_run_expect(p, FLUXUS_OK);
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_route_observer(p, fc_record, NULL, NULL));
    tu_free_all(p, rt);
}

/* ----- the log callback ----- */

static void fc_run_log_case(int kind, int fused) {
    fc_ctx c;
    tu_range_source src;
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    fc_init(&c, FC_N);
    memset(&src, 0, sizeof src);
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_DEBUG, fc_log, &c, NULL));
    p = fc_build(&c, rt, &src, kind, fused, 1, FLUXUS_ERROR_SKIP);
    tu_run_expect(p, FLUXUS_OK);
    assert_int_equal(TU_LOAD(&c.log_text), FC_N / 4);
    assert_int_equal(TU_LOAD(&c.log_plain), FC_N / 4);
    assert_int_equal(TU_LOAD(&c.log_bad), 0);
    assert_int_equal(TU_LOAD(&c.inner_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_log_callback_messages_carry_the_text(void **state) {
    (void)state;
    fc_run_log_case(FC_MAP, 1);
    fc_run_log_case(FC_MAP, 0);
    fc_run_log_case(FC_FILTER, 1);
    fc_run_log_case(FC_SINK, 1);
}

/* ----- fail-fast: the failure that stopped the pipeline, after wait() and drain() ----- */

static void fc_expect_failure(fluxus_pipeline *p, uint32_t index, const char *stage,
                              int32_t status, const char *message, const char *description,
                              uint32_t attempts, int32_t exhausted) {
    const fluxus_failure *f = NULL;
    TU_OK(fluxus_pipeline_get_failure(&f, p));
    assert_non_null(f);
    assert_int_equal(tu_failure_stage_index(f), index);
    assert_string_equal(tu_failure_stage_name(f), stage);
    assert_int_equal(tu_failure_status(f), status);
    assert_string_equal(tu_failure_message(f), message);
    assert_string_equal(tu_failure_description(f), description);
    assert_int_equal(tu_failure_attempts(f), attempts);
    assert_int_equal(tu_failure_retries_exhausted(f), exhausted);
}

static void fc_run_fail_fast_case(int kind, int fused, uint32_t workers) {
    fc_ctx c;
    tu_range_source src;
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    tu_msg m;
    fc_init(&c, FC_N);
    memset(&src, 0, sizeof src);
    c.fail_only = 13;
    TU_OK(fluxus_runtime_set_log(rt, FLUXUS_LOG_WARN, fc_log, &c, NULL));
    p = fc_build(&c, rt, &src, kind, fused, workers, FLUXUS_ERROR_FAIL_FAST);
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT_MSG(FLUXUS_EFAILED, tu_wait(p), &m);
    if (strstr(m.text, "pipeline 'fc' ended with FLUXUS_EFAILED") == NULL ||
        strstr(m.text, "stage 'under_test' (index 1)") == NULL ||
        strstr(m.text, "boom: item 13") == NULL || strstr(m.text, "status 42") == NULL ||
        strstr(m.text, "retries exhausted") != NULL) {
        fail_msg("last error after wait: '%s'", m.text);
    }
    fc_expect_failure(p, FC_STAGE, FC_NAME, FC_STATUS, "boom: item 13", fc_description(kind), 1,
                      0);
    pthread_mutex_lock(&c.mu);
    if (strstr(c.error_log, "boom: item 13") == NULL ||
        strstr(c.error_log, "pipeline stopped") == NULL) {
        fail_msg("error log: '%s'", c.error_log);
    }
    pthread_mutex_unlock(&c.mu);
    assert_int_equal(TU_LOAD(&c.set_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_fail_fast_failure_is_readable_after_wait(void **state) {
    (void)state;
    fc_run_fail_fast_case(FC_MAP, 1, 1);
    fc_run_fail_fast_case(FC_MAP, 0, 1);
    fc_run_fail_fast_case(FC_MAP, 1, 3);
    fc_run_fail_fast_case(FC_FILTER, 1, 1);
    fc_run_fail_fast_case(FC_FLAT_MAP, 0, 1);
    fc_run_fail_fast_case(FC_SINK, 1, 1);
}

static void test_fail_fast_failure_is_readable_after_drain(void **state) {
    fc_ctx c;
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint64_t x;
    uint32_t pushed = 0;
    uint64_t items[32];
    tu_msg m;
    (void)state;
    fc_init(&c, 32);
    c.fail_only = 13;
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_map, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    for (x = 0; x < 32; x++) {
        items[x] = x;
    }
    TU_OK(fluxus_pipeline_push_many(&pushed, p, items, 32, TU_WAIT_MS));
    assert_int_equal(pushed, 32);
    TU_EXPECT_MSG(FLUXUS_EFAILED, fluxus_pipeline_drain(p, TU_WAIT_MS), &m);
    if (strstr(m.text, "stage 'under_test' (index 1)") == NULL ||
        strstr(m.text, "boom: item 13") == NULL) {
        fail_msg("last error after drain: '%s'", m.text);
    }
    fc_expect_failure(p, FC_STAGE, FC_NAME, FC_STATUS, "boom: item 13", "map callback failed", 1,
                      0);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_get_failure_misuse_and_no_failure(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = tu_pipeline(rt, "fc", NULL);
    const fluxus_failure *f = (const fluxus_failure *)(uintptr_t)1;
    tu_range_source src = {0, 10, 0};
    (void)state;
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_failure(&f, NULL));
    assert_null(f);
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_failure(NULL, p));
    f = (const fluxus_failure *)(uintptr_t)1;
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_pipeline_get_failure(&f, p)); /* not started */
    assert_null(f);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    tu_run_expect(p, FLUXUS_OK);
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_pipeline_get_failure(&f, p)); /* finished well */
    assert_null(f);
    TU_OK(fluxus_pipeline_free(p));

    p = tu_pipeline(rt, "fc", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_pipeline_get_failure(&f, p)); /* cancelled */
    TU_OK(fluxus_pipeline_free(p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_failure(&f, p)); /* freed */
    TU_OK(fluxus_runtime_free(rt));

    /* The accessors given NULL: FLUXUS_EINVAL, *out untouched. */
    {
        const char *text = "untouched";
        int32_t i32 = 7;
        uint32_t u32 = 7;
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_description(&text, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_message(&text, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_stage_name(&text, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_retries_exhausted(&i32, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_status(&i32, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_stage_index(&u32, NULL));
        TU_EXPECT(FLUXUS_EINVAL, fluxus_failure_get_attempts(&u32, NULL));
        assert_string_equal(text, "untouched");
        assert_int_equal(i32, 7);
        assert_int_equal(u32, 7);
    }
}

/* ----- retries exhausted versus a first failure ----- */

static int32_t fc_retry_map(void *user, uint64_t in, uint64_t *out) {
    fc_ctx *c = (fc_ctx *)user;
    uint32_t attempt = TU_ADD(&c->attempts[in], 1);
    char buf[96];
    if (c->fail_only != UINT64_MAX && in != c->fail_only) {
        *out = in;
        return 0;
    }
    switch (in % 4) {
    case 0: /* always fails: retries exhausted */
        snprintf(buf, sizeof buf, "attempt %u of item %llu", attempt, (unsigned long long)in);
        if (fluxus_call_set_error(buf) != FLUXUS_OK) {
            TU_ADD(&c->set_rc_bad, 1);
        }
        return FC_STATUS;
    case 1: /* fails once, then passes */
        if (attempt == 1) {
            if (fluxus_call_set_error("transient") != FLUXUS_OK) {
                TU_ADD(&c->set_rc_bad, 1);
            }
            return FC_STATUS;
        }
        *out = in;
        return 0;
    case 2: /* fails; the predicate declines a retry */
        snprintf(buf, sizeof buf, "permanent for item %llu", (unsigned long long)in);
        if (fluxus_call_set_error(buf) != FLUXUS_OK) {
            TU_ADD(&c->set_rc_bad, 1);
        }
        return FC_STATUS;
    default:
        *out = in;
        return 0;
    }
}

static int32_t fc_retry_if(void *user, uint64_t item, int32_t status, uint32_t attempt) {
    (void)user;
    (void)status;
    (void)attempt;
    return item % 4 == 2 ? 0 : 1;
}

static void test_retries_exhausted_are_told_from_a_first_failure(void **state) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint64_t x;
    (void)state;
    fc_init(&c, FC_N);
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_retry_map, &c, NULL));
    TU_OK(fluxus_stage_set_retry(p, FC_STAGE, 3, FLUXUS_BACKOFF_CONSTANT, 0, 0));
    TU_OK(fluxus_stage_set_retry_predicate(p, FC_STAGE, fc_retry_if, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, FC_STAGE, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);
    for (x = 0; x < FC_N; x++) {
        char want[96];
        switch (x % 4) {
        case 0:
            snprintf(want, sizeof want, "attempt 3 of item %llu", (unsigned long long)x);
            fc_expect_rec(&c, x, want, "map callback failed", 3, 1);
            break;
        case 2:
            snprintf(want, sizeof want, "permanent for item %llu", (unsigned long long)x);
            fc_expect_rec(&c, x, want, "map callback failed", 1, 0);
            break;
        default:
            assert_int_equal(c.rec[x].calls, 0);
            break;
        }
    }
    assert_int_equal(TU_LOAD(&c.set_rc_bad), 0);
    tu_check_conservation(p, &c.t, 0);
    tu_tracker_check_once(&c.t, 0, FC_N);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

static void test_fail_fast_after_retries_exhausted_says_so(void **state) {
    fc_ctx c;
    tu_range_source src = {0, FC_N, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    tu_msg m;
    (void)state;
    fc_init(&c, FC_N);
    c.fail_only = 8;
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_retry_map, &c, NULL));
    TU_OK(fluxus_stage_set_retry(p, FC_STAGE, 3, FLUXUS_BACKOFF_CONSTANT, 0, 0));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT_MSG(FLUXUS_EFAILED, tu_wait(p), &m);
    if (strstr(m.text, "attempt 3 of item 8") == NULL ||
        strstr(m.text, "3 attempts, retries exhausted") == NULL) {
        fail_msg("last error after wait: '%s'", m.text);
    }
    fc_expect_failure(p, FC_STAGE, FC_NAME, FC_STATUS, "attempt 3 of item 8",
                      "map callback failed", 3, 1);
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

/* ----- sources and worker init hooks ----- */

static int32_t fc_failing_pull(void *user, uint64_t *item) {
    tu_range_source *s = (tu_range_source *)user;
    if (s->next == 10) {
        fluxus_call_set_error("disk gone under /var/spool");
        return 77;
    }
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}

static void fc_run_source_case(int fused) {
    tu_range_source src = {0, 100, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p = tu_pipeline(rt, "fc", NULL);
    tu_msg m;
    TU_OK(fluxus_pipeline_set_pull_source(p, "spool", fc_failing_pull, &src, NULL));
    if (!fused) {
        TU_OK(fluxus_pipeline_set_fusion(p, 0));
    }
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT_MSG(FLUXUS_ESOURCE, tu_wait(p), &m);
    if (strstr(m.text, "pipeline 'fc' ended with FLUXUS_ESOURCE") == NULL ||
        strstr(m.text, "source 'spool'") == NULL ||
        strstr(m.text, "disk gone under /var/spool") == NULL ||
        strstr(m.text, "status 77") == NULL) {
        fail_msg("last error after wait: '%s'", m.text);
    }
    fc_expect_failure(p, UINT32_MAX, "spool", 77, "disk gone under /var/spool",
                      "the pull source returned an error", 1, 0);
    tu_free_all(p, rt);
}

static void test_source_failure_is_readable_after_wait(void **state) {
    tu_range_source src = {0, 100, 0};
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t extra = 0;
    (void)state;
    fc_run_source_case(1);
    fc_run_source_case(0);

    /* A source stage has its own index. */
    rt = tu_runtime(2);
    p = tu_pipeline(rt, "fc", NULL);
    TU_OK(fluxus_pipeline_add_source(&extra, p, "feed", fc_failing_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    tu_run_expect(p, FLUXUS_ESOURCE);
    fc_expect_failure(p, extra, "feed", 77, "disk gone under /var/spool",
                      "the pull source returned an error", 1, 0);
    tu_free_all(p, rt);
}

static int32_t fc_init_hook(void *user, uint32_t worker) {
    char buf[64];
    (void)user;
    snprintf(buf, sizeof buf, "no GPU for worker %u", worker);
    fluxus_call_set_error(buf);
    return 5;
}

static void test_worker_init_failure_is_readable_after_wait(void **state) {
    tu_range_source src = {0, 100, 0};
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p = tu_pipeline(rt, "fc", NULL);
    tu_msg m;
    (void)state;
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, tu_identity_map, NULL, NULL));
    TU_OK(fluxus_stage_set_worker_hooks(p, FC_STAGE, fc_init_hook, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_count_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT_MSG(FLUXUS_EFAILED, tu_wait(p), &m);
    if (strstr(m.text, "stage 'under_test' (index 1)") == NULL ||
        strstr(m.text, "no GPU for worker 0") == NULL || strstr(m.text, "status 5") == NULL) {
        fail_msg("last error after wait: '%s'", m.text);
    }
    fc_expect_failure(p, FC_STAGE, FC_NAME, 5, "no GPU for worker 0", "worker init callback failed",
                      1, 0);
    tu_free_all(p, rt);
}

/* ----- the text's bound, replacing and dropping it ----- */

static char fc_long[4096];

static int32_t fc_text_map(void *user, uint64_t in, uint64_t *out) {
    fc_ctx *c = (fc_ctx *)user;
    size_t i;
    (void)c;
    switch (in) {
    case 0: /* far too long: cut at the bound */
        memset(fc_long, 'x', 3000);
        fc_long[3000] = '\0';
        fluxus_call_set_error(fc_long);
        break;
    case 1: /* 'a' then 600 two-byte characters: the cut falls inside one, which is left out */
        fc_long[0] = 'a';
        for (i = 0; i < 600; i++) {
            fc_long[1 + 2 * i] = (char)0xC3;
            fc_long[2 + 2 * i] = (char)0xA9;
        }
        fc_long[1201] = '\0';
        fluxus_call_set_error(fc_long);
        break;
    case 2: /* exactly the bound: kept whole */
        memset(fc_long, 'y', FLUXUS_ERROR_TEXT_MAX);
        fc_long[FLUXUS_ERROR_TEXT_MAX] = '\0';
        fluxus_call_set_error(fc_long);
        break;
    case 3: /* set, then dropped */
        fluxus_call_set_error("never mind");
        fluxus_call_set_error(NULL);
        break;
    case 4: /* replaced */
        fluxus_call_set_error("first");
        fluxus_call_set_error("second");
        break;
    default:
        *out = in;
        return 0;
    }
    return FC_STATUS;
}

static void test_long_texts_are_cut_at_the_bound_and_can_be_replaced(void **state) {
    fc_ctx c;
    tu_range_source src = {0, 8, 0};
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p;
    const char *m1;
    size_t i;
    (void)state;
    fc_init(&c, 8);
    p = tu_pipeline(rt, "fc", &c.t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "pre", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, FC_NAME, fc_text_map, &c, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, FC_STAGE, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, fc_record, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", fc_out_sink, &c, NULL));
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(strlen(c.rec[0].message), FLUXUS_ERROR_TEXT_MAX);
    for (i = 0; i < FLUXUS_ERROR_TEXT_MAX; i++) {
        assert_int_equal(c.rec[0].message[i], 'x');
    }
    m1 = c.rec[1].message;
    assert_int_equal(strlen(m1), FLUXUS_ERROR_TEXT_MAX - 1); /* not inside a character */
    assert_int_equal((unsigned char)m1[FLUXUS_ERROR_TEXT_MAX - 2], 0xA9);
    assert_int_equal(strlen(c.rec[2].message), FLUXUS_ERROR_TEXT_MAX);
    assert_string_equal(c.rec[3].message, "map callback failed");
    assert_string_equal(c.rec[4].message, "second");
    for (i = 0; i < 5; i++) {
        assert_int_equal(c.rec[i].calls, 1);
    }
    for (i = 5; i < 8; i++) {
        assert_int_equal(c.rec[i].calls, 0);
    }
    tu_check_conservation(p, &c.t, 0);
    tu_free_all(p, rt);
    fc_destroy(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_set_error_outside_a_callback_returns_estate),
        cmocka_unit_test(test_map_text_reaches_the_dead_letter_record_fused),
        cmocka_unit_test(test_map_text_reaches_the_dead_letter_record_unfused),
        cmocka_unit_test(test_map_text_reaches_the_dead_letter_record_with_three_workers),
        cmocka_unit_test(test_filter_text_reaches_the_dead_letter_record),
        cmocka_unit_test(test_flat_map_text_reaches_the_dead_letter_record),
        cmocka_unit_test(test_sink_text_reaches_the_dead_letter_record),
        cmocka_unit_test(test_batch_map_item_and_call_texts_reach_the_dead_letter_records),
        cmocka_unit_test(test_batch_sink_item_and_call_texts_reach_the_dead_letter_records),
        cmocka_unit_test(test_batch_call_failing_as_a_whole_gives_each_item_its_text),
        cmocka_unit_test(test_text_of_a_batch_call_that_fails_nothing_goes_nowhere),
        cmocka_unit_test(test_window_text_goes_with_each_item_of_the_window),
        cmocka_unit_test(test_sliding_window_items_keep_the_status_only),
        cmocka_unit_test(test_async_completion_and_refusal_texts_reach_the_dead_letter_record),
        cmocka_unit_test(test_async_fail_misuse),
        cmocka_unit_test(test_error_branch_route_observer_sees_each_text),
        cmocka_unit_test(test_error_route_observer_sees_each_text),
        cmocka_unit_test(test_route_observer_misuse),
        cmocka_unit_test(test_log_callback_messages_carry_the_text),
        cmocka_unit_test(test_fail_fast_failure_is_readable_after_wait),
        cmocka_unit_test(test_fail_fast_failure_is_readable_after_drain),
        cmocka_unit_test(test_get_failure_misuse_and_no_failure),
        cmocka_unit_test(test_retries_exhausted_are_told_from_a_first_failure),
        cmocka_unit_test(test_fail_fast_after_retries_exhausted_says_so),
        cmocka_unit_test(test_source_failure_is_readable_after_wait),
        cmocka_unit_test(test_worker_init_failure_is_readable_after_wait),
        cmocka_unit_test(test_long_texts_are_cut_at_the_bound_and_can_be_replaced),
    };
    return TU_RUN_GROUP(tests);
}
