/*
 * test_loader.c — the dataloader and the cache. Loader: keys coalesced per group (one load
 * call, each distinct key once), groups bounded by max_items, the window flushing a partial
 * group exactly on the virtual clock, the tail at end of input, per-key and whole-group load
 * failures, attach failures, results released once, outputs in input order. Cache: hits skip
 * the map, exact hit/miss counts, TTL and LRU on the virtual clock, copies of heap outputs,
 * cached values released at the end and on cancel, a cache in front of a loader; option errors.
 */
#include "test_util.h"

#define T0 1000000000ull
#define US 1000ull

/* Value items: (serial << 16) | key. Results and outputs carry a tag bit. */
#define LITEM(serial, key) (((uint64_t)(serial) << 16) | (uint64_t)(key))
#define LKEY(item) ((item) & 0xFFFFull)
#define LSERIAL(item) (((item) >> 16) & 0xFFFFFFFFull)
#define RTAG (1ull << 62) /* load results: RTAG | key * 10 */
#define OTAG (1ull << 61) /* outputs: OTAG | input (loader), OTAG | key * 10 (map) */
#define RES(key) (RTAG | ((uint64_t)(key) * 10u))

static int32_t lkey(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = LKEY(item);
    *key = &k;
    *len = sizeof k;
    return 0;
}

typedef struct lrec {
    fluxus_runtime *rt;
    uint32_t calls;
    uint32_t count[64];
    uint64_t keys[64][64];
    uint64_t serials[64][64];
    uint64_t at[64]; /* clock - T0 */
    uint32_t dup_keys;
    uint64_t fail_key;           /* its status is 66 (0: none) */
    uint32_t fail_call;          /* 1-based load call returning 55 (0: none) */
    uint64_t attach_fail_serial; /* attach returns 88 for it (UINT64_MAX: none) */
    uint32_t attach_calls, attach_bad;
    /* item destructor */
    uint32_t res_freed[1024];
    uint32_t in_freed[4096];
    uint32_t out_freed[1024];
    uint32_t other_freed;
    /* sink, in order */
    uint32_t n_out;
    uint64_t out[4096];
    /* map (cache tests) */
    uint32_t map_calls;
    uint64_t map_keys[256];
} lrec;

static void lrec_init(lrec *r, fluxus_runtime *rt) {
    memset(r, 0, sizeof *r);
    r->rt = rt;
    r->attach_fail_serial = UINT64_MAX;
}

static int32_t lload(void *user, const uint64_t *items, uint32_t count, uint64_t *results,
                     int32_t *status) {
    lrec *r = (lrec *)user;
    uint32_t c = r->calls++, i, k;
    if (c < 64) {
        r->count[c] = count;
        r->at[c] = r->rt != NULL ? tu_clock_now(r->rt) - T0 : 0;
    }
    for (i = 0; i < count; i++) {
        uint64_t key = LKEY(items[i]);
        if (status[i] != 0) r->dup_keys += 1000; /* status[] must arrive zeroed */
        for (k = 0; k < i; k++)
            if (LKEY(items[k]) == key) r->dup_keys++;
        if (c < 64 && i < 64) {
            r->keys[c][i] = key;
            r->serials[c][i] = LSERIAL(items[i]);
        }
    }
    if (r->fail_call && c + 1 == r->fail_call) return 55;
    for (i = 0; i < count; i++) {
        if (r->fail_key && LKEY(items[i]) == r->fail_key)
            status[i] = 66;
        else
            results[i] = RES(LKEY(items[i]));
    }
    return 0;
}

static int32_t lattach(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    lrec *r = (lrec *)user;
    r->attach_calls++;
    if (result != RES(LKEY(item))) r->attach_bad++;
    if (LSERIAL(item) == r->attach_fail_serial) return 88;
    *out = OTAG | item;
    return 0;
}

static void lfree(void *user, uint64_t item) {
    lrec *r = (lrec *)user;
    if (item & RTAG) {
        uint64_t key = (item & ~RTAG) / 10;
        if (key < 1024) r->res_freed[key]++;
        else r->other_freed++;
    } else if (item & OTAG) {
        uint64_t key = (item & ~OTAG) / 10;
        if (key < 1024) r->out_freed[key]++;
        else r->other_freed++;
    } else if (LSERIAL(item) < 4096) {
        r->in_freed[LSERIAL(item)]++;
    } else {
        r->other_freed++;
    }
}

static int32_t lsink(void *user, uint64_t item) {
    lrec *r = (lrec *)user;
    if (r->n_out < 4096) r->out[r->n_out] = item;
    r->n_out++;
    return 0;
}

typedef struct dlrec {
    uint32_t n;
    uint64_t item[256];
    int32_t status[256];
} dlrec;

static void dl_record(void *user, uint64_t item, const fluxus_failure *f) {
    dlrec *d = (dlrec *)user;
    if (d->n < 256) {
        d->item[d->n] = item;
        d->status[d->n] = tu_failure_status(f);
    }
    d->n++;
}

/* push source -> loader (key fn, dead-letter policy) -> recording sink */
static fluxus_pipeline *loader_pipeline(fluxus_runtime *rt, lrec *r, dlrec *d, uint32_t max,
                                        uint64_t window_us, uint32_t *stage) {
    fluxus_pipeline *p = tu_pipeline(rt, "loader", NULL);
    TU_OK(fluxus_pipeline_set_item_free(p, lfree, r, NULL));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_loader(stage, p, "users", max, window_us, lload, lattach, r,
                                     NULL));
    TU_OK(fluxus_stage_set_key_fn(p, *stage, lkey, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, *stage, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, dl_record, d, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", lsink, r, NULL));
    return p;
}

static void push_keys(fluxus_pipeline *p, uint32_t *serial, const uint32_t *keys, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) TU_OK(fluxus_pipeline_push(p, LITEM((*serial)++, keys[i]), 0));
}

/* ----- loader ----- */

static void test_duplicates_in_a_group_are_loaded_once(void **state) {
    static const uint32_t keys[16] = {1, 2, 1, 3, 2, 1, 4, 1, 5, 5, 5, 5, 6, 6, 7, 5};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats ls;
    (void)state;
    lrec_init(&r, rt);
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 8, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    push_keys(p, &serial, keys, 16);
    tu_drive(rt);
    assert_int_equal(r.calls, 2); /* two full groups of 8, at once */
    assert_int_equal(r.count[0], 4);
    assert_int_equal(r.keys[0][0], 1);
    assert_int_equal(r.keys[0][1], 2);
    assert_int_equal(r.keys[0][2], 3);
    assert_int_equal(r.keys[0][3], 4);
    assert_int_equal(r.serials[0][0], 0); /* the first item of each key */
    assert_int_equal(r.serials[0][1], 1);
    assert_int_equal(r.serials[0][2], 3);
    assert_int_equal(r.serials[0][3], 6);
    assert_int_equal(r.count[1], 3);
    assert_int_equal(r.keys[1][0], 5);
    assert_int_equal(r.keys[1][1], 6);
    assert_int_equal(r.keys[1][2], 7);
    assert_int_equal(r.serials[1][2], 14);
    assert_int_equal(r.at[1], 0);
    assert_int_equal(r.dup_keys, 0);
    /* each result released exactly once, right after its group */
    for (i = 1; i <= 7; i++) assert_int_equal(r.res_freed[i], 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.attach_calls, 16);
    assert_int_equal(r.attach_bad, 0);
    assert_int_equal(r.n_out, 16);
    for (i = 0; i < 16; i++) assert_int_equal(r.out[i], OTAG | LITEM(i, keys[i]));
    for (i = 0; i < 16; i++) assert_int_equal(r.in_freed[i], 0); /* attach owns them */
    for (i = 1; i <= 7; i++) assert_int_equal(r.res_freed[i], 1);
    assert_int_equal(r.other_freed, 0);
    tu_stage_stats(p, st, &ls);
    assert_int_equal(ls.in, 16);
    assert_int_equal(ls.out, 16);
    assert_int_equal(ls.cache_hits, 0);
    assert_int_equal(ls.cache_misses, 7);
    assert_int_equal(d.n, 0);
    tu_check_conservation(p, NULL, 0);
    print_message("loader: 16 items, 7 distinct keys -> 2 load calls with 4 + 3 keys, 16 "
                  "outputs in input order, 7 results freed once\n");
    tu_free_all(p, rt);
}

static void test_max_items_bounds_a_group_and_the_window_flushes_the_rest_exactly(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    (void)state;
    lrec_init(&r, rt);
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 4, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    tu_step_to(rt, T0 + 100 * US);
    for (i = 0; i < 10; i++) TU_OK(fluxus_pipeline_push(p, LITEM(serial++, 100 + i), 0));
    tu_drive(rt);
    assert_int_equal(r.calls, 2); /* 4 + 4 at once, never more than max_items */
    assert_int_equal(r.count[0], 4);
    assert_int_equal(r.count[1], 4);
    assert_int_equal(r.at[1], 100 * US);
    tu_step_to(rt, T0 + 1100 * US - 1);
    assert_int_equal(r.calls, 2); /* the last 2 wait for the window */
    tu_step_to(rt, T0 + 1100 * US);
    assert_int_equal(r.calls, 3);
    assert_int_equal(r.count[2], 2);
    assert_int_equal(r.at[2], 1100 * US);
    assert_int_equal(r.keys[2][0], 108);
    /* a new group opens with its first item; a later item joins it */
    tu_step_to(rt, T0 + 1500 * US);
    TU_OK(fluxus_pipeline_push(p, LITEM(serial++, 200), 0));
    tu_drive(rt);
    tu_step_to(rt, T0 + 1800 * US);
    TU_OK(fluxus_pipeline_push(p, LITEM(serial++, 201), 0));
    tu_drive(rt);
    tu_step_to(rt, T0 + 2500 * US - 1);
    assert_int_equal(r.calls, 3);
    tu_step_to(rt, T0 + 2500 * US); /* first arrival 1500 + window 1000 */
    assert_int_equal(r.calls, 4);
    assert_int_equal(r.count[3], 2);
    assert_int_equal(r.at[3], 2500 * US);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, 4);
    assert_int_equal(r.n_out, 12);
    for (i = 0; i < 12; i++) assert_int_equal(LSERIAL(r.out[i] & ~OTAG), i);
    tu_check_conservation(p, NULL, 0);
    print_message("loader max 4, window 1000 us: 10 items -> 4 + 4 at once, 2 at exactly "
                  "+1000 us (not 1 ns before); a later group at first arrival + 1000 us\n");
    tu_free_all(p, rt);
}

static void test_the_tail_goes_at_end_of_input(void **state) {
    static const uint32_t keys[5] = {3, 1, 3, 2, 1};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    (void)state;
    lrec_init(&r, rt);
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 100, 60000000ull, &st); /* a minute of window */
    TU_OK(fluxus_pipeline_start(p));
    push_keys(p, &serial, keys, 5);
    tu_drive(rt);
    assert_int_equal(r.calls, 0);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.count[0], 3);
    assert_int_equal(r.at[0], 0); /* no waiting for the window */
    assert_int_equal(r.keys[0][0], 3);
    assert_int_equal(r.keys[0][1], 1);
    assert_int_equal(r.keys[0][2], 2);
    assert_int_equal(r.n_out, 5);
    for (i = 0; i < 5; i++) assert_int_equal(r.out[i], OTAG | LITEM(i, keys[i]));
    tu_check_conservation(p, NULL, 0);
    print_message("loader tail: 5 items (3 keys) flushed in one call at end of input, at t=0\n");
    tu_free_all(p, rt);
}

static void test_a_key_failure_fails_exactly_its_waiters(void **state) {
    static const uint32_t keys[8] = {13, 2, 13, 3, 13, 2, 4, 3};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats ls;
    (void)state;
    lrec_init(&r, rt);
    r.fail_key = 13;
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 8, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    push_keys(p, &serial, keys, 8);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.count[0], 4);
    assert_int_equal(d.n, 3);
    for (i = 0; i < 3; i++) {
        assert_int_equal(d.item[i], LITEM(2 * i, 13)); /* serials 0, 2, 4, in input order */
        assert_int_equal(d.status[i], 66);
    }
    assert_int_equal(r.attach_calls, 5); /* never for a failed key */
    assert_int_equal(r.n_out, 5);
    assert_int_equal(r.out[0], OTAG | LITEM(1, 2));
    assert_int_equal(r.out[1], OTAG | LITEM(3, 3));
    assert_int_equal(r.out[2], OTAG | LITEM(5, 2));
    assert_int_equal(r.out[3], OTAG | LITEM(6, 4));
    assert_int_equal(r.out[4], OTAG | LITEM(7, 3));
    assert_int_equal(r.res_freed[13], 0); /* a failed key's result is ignored */
    assert_int_equal(r.res_freed[2], 1);
    assert_int_equal(r.res_freed[3], 1);
    assert_int_equal(r.res_freed[4], 1);
    assert_int_equal(r.in_freed[0] + r.in_freed[2] + r.in_freed[4], 3);
    tu_stage_stats(p, st, &ls);
    assert_int_equal(ls.dead_lettered, 3);
    assert_int_equal(ls.out, 5);
    tu_check_conservation(p, NULL, 0);
    print_message("loader: key 13 failed with 66 -> exactly its 3 waiters dead-lettered, the "
                  "other 5 items delivered in order\n");
    tu_free_all(p, rt);
}

static void test_a_failing_load_fails_its_whole_group(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    (void)state;
    lrec_init(&r, rt);
    r.fail_call = 2;
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 3, 0, &st);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 9; i++) TU_OK(fluxus_pipeline_push(p, LITEM(serial++, 10 + i), 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, 3);
    assert_int_equal(d.n, 3);
    for (i = 0; i < 3; i++) {
        assert_int_equal(d.item[i], LITEM(3 + i, 13 + i));
        assert_int_equal(d.status[i], 55);
    }
    assert_int_equal(r.n_out, 6);
    assert_int_equal(r.attach_calls, 6);
    for (i = 0; i < 9; i++) {
        uint32_t in_group2 = (i >= 3 && i < 6);
        assert_int_equal(r.res_freed[10 + i], in_group2 ? 0u : 1u);
        assert_int_equal(r.in_freed[i], in_group2 ? 1u : 0u);
    }
    tu_stats(p, &ps);
    assert_int_equal(ps.dead_lettered, 3);
    tu_check_conservation(p, NULL, 0);
    print_message("loader: load returning 55 on its 2nd call -> that group's 3 items failed "
                  "with 55, 6 delivered\n");
    tu_free_all(p, rt);
}

static void test_an_attach_failure_fails_one_item(void **state) {
    static const uint32_t keys[5] = {7, 7, 7, 8, 7};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0;
    fluxus_pipeline *p;
    (void)state;
    lrec_init(&r, rt);
    r.attach_fail_serial = 2;
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 16, 0, &st);
    TU_OK(fluxus_pipeline_start(p));
    push_keys(p, &serial, keys, 5);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.count[0], 2);
    assert_int_equal(r.attach_calls, 5);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.item[0], LITEM(2, 7));
    assert_int_equal(d.status[0], 88);
    assert_int_equal(r.in_freed[2], 1);
    assert_int_equal(r.n_out, 4);
    assert_int_equal(r.out[2], OTAG | LITEM(3, 8));
    assert_int_equal(r.res_freed[7], 1);
    assert_int_equal(r.res_freed[8], 1);
    tu_check_conservation(p, NULL, 0);
    print_message("loader: attach returning 88 for one of 4 items of a key -> only it fails; "
                  "the key's result still freed once\n");
    tu_free_all(p, rt);
}

static void test_cancel_cancels_the_open_group_without_loading_it(void **state) {
    static const uint32_t keys[5] = {1, 2, 1, 3, 4};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    dlrec d;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    fluxus_stage_stats ls;
    (void)state;
    lrec_init(&r, rt);
    memset(&d, 0, sizeof d);
    p = loader_pipeline(rt, &r, &d, 4, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    push_keys(p, &serial, keys, 5); /* a full group of 4 goes; 1 item waits for the window */
    tu_drive(rt);
    assert_int_equal(r.calls, 1);
    push_keys(p, &serial, keys, 3); /* queued behind it */
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    assert_int_equal(r.calls, 1); /* the open group was not loaded */
    assert_int_equal(d.n, 0);
    tu_stats(p, &ps);
    assert_int_equal(ps.delivered, 4);
    assert_int_equal(ps.cancelled, 4);
    tu_stage_stats(p, st, &ls);
    assert_int_equal(ls.cancelled, 4);
    for (i = 4; i < 8; i++) assert_int_equal(r.in_freed[i], 1);
    for (i = 1; i <= 3; i++) assert_int_equal(r.res_freed[i], 1);
    tu_check_conservation(p, NULL, 0);
    print_message("loader cancel: the open group (1 item) and 3 queued items cancelled, never "
                  "loaded\n");
    tu_free_all(p, rt);
}

/* ----- heap inputs, results and outputs (threaded; ASan checks every free) ----- */

#define OBJ_MAGIC 0x10adu
enum { K_IN = 1, K_RES = 2, K_OUT = 3 };

typedef struct obj {
    uint32_t kind, magic;
    uint64_t serial, key, value;
} obj;

#define O(item) ((obj *)(uintptr_t)(item))
#define W(o) ((uint64_t)(uintptr_t)(o))

typedef struct hctx {
    uint64_t n, next;
    uint64_t allocs[4], frees[4], sink_frees;
    uint64_t bad, order_bad, last_serial, delivered;
    uint64_t load_calls, load_keys, attach_calls;
    int with_failures;
    uint64_t copies;
} hctx;

static obj *obj_new(hctx *c, uint32_t kind, uint64_t serial, uint64_t key, uint64_t value) {
    obj *o = (obj *)calloc(1, sizeof *o);
    if (o == NULL) abort();
    o->kind = kind;
    o->magic = OBJ_MAGIC;
    o->serial = serial;
    o->key = key;
    o->value = value;
    TU_ADD(&c->allocs[kind], 1);
    return o;
}

static void obj_free(hctx *c, obj *o) {
    if (o->magic != OBJ_MAGIC || o->kind < K_IN || o->kind > K_OUT) {
        TU_ADD(&c->bad, 1);
        return;
    }
    TU_ADD(&c->frees[o->kind], 1);
    o->magic = 0;
    free(o);
}

static uint64_t hkey_of(uint64_t serial) { return tu_mix64(serial) % 300; }

static int32_t h_pull(void *user, uint64_t *item) {
    hctx *c = (hctx *)user;
    if (c->next >= c->n) return FLUXUS_PULL_END;
    *item = W(obj_new(c, K_IN, c->next, hkey_of(c->next), 0));
    c->next++;
    return FLUXUS_PULL_ITEM;
}

static void h_free(void *user, uint64_t item) { obj_free((hctx *)user, O(item)); }

static int32_t h_key(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = O(item)->key;
    *key = &k;
    *len = sizeof k;
    return 0;
}

static int32_t h_load(void *user, const uint64_t *items, uint32_t count, uint64_t *results,
                      int32_t *status) {
    hctx *c = (hctx *)user;
    uint32_t i;
    c->load_calls++;
    c->load_keys += count;
    for (i = 0; i < count; i++) {
        obj *o = O(items[i]);
        if (o->kind != K_IN || o->magic != OBJ_MAGIC) TU_ADD(&c->bad, 1);
        if (c->with_failures && o->key % 50 == 7)
            status[i] = 66;
        else
            results[i] = W(obj_new(c, K_RES, 0, o->key, o->key * 1000 + 1));
    }
    return 0;
}

static int32_t h_attach(void *user, uint64_t item, uint64_t result, uint64_t *out) {
    hctx *c = (hctx *)user;
    obj *in = O(item), *r = O(result);
    c->attach_calls++;
    if (r->kind != K_RES || r->magic != OBJ_MAGIC || r->key != in->key ||
        r->value != in->key * 1000 + 1)
        TU_ADD(&c->bad, 1);
    if (c->with_failures && in->serial % 997 == 5) return 88;
    *out = W(obj_new(c, K_OUT, in->serial, in->key, r->value + in->serial));
    obj_free(c, in); /* attach owns its input on success */
    return 0;
}

static int32_t h_sink(void *user, uint64_t item) {
    hctx *c = (hctx *)user;
    obj *o = O(item);
    if (o->kind != K_OUT || o->value != o->key * 1000 + 1 + o->serial) TU_ADD(&c->bad, 1);
    if (c->delivered > 0 && o->serial <= c->last_serial) c->order_bad++;
    c->last_serial = o->serial;
    c->delivered++;
    TU_ADD(&c->sink_frees, 1);
    obj_free(c, o);
    return 0;
}

static void run_heap_loader(int with_cache, int with_failures) {
    enum { N = 20000 };
    fluxus_runtime *rt = tu_runtime(4);
    hctx c;
    uint32_t st = 0, i;
    uint64_t expect_failed = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats ls;
    fluxus_pipeline_stats ps;
    memset(&c, 0, sizeof c);
    c.n = N;
    c.with_failures = with_failures;
    p = tu_pipeline(rt, "heap-loader", NULL);
    TU_OK(fluxus_pipeline_set_item_free(p, h_free, &c, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(p, "ids", h_pull, &c, NULL));
    TU_OK(fluxus_pipeline_add_loader(&st, p, "load", 64, 200, h_load, h_attach, &c, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, st, h_key, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, st, FLUXUS_ERROR_SKIP));
    if (with_cache) TU_OK(fluxus_stage_set_cache(p, st, 100, 0, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", h_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (i = 0; i < N; i++)
        if (with_failures && (hkey_of(i) % 50 == 7 || i % 997 == 5)) expect_failed++;
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.order_bad, 0); /* outputs in input order */
    assert_int_equal(c.delivered, N - expect_failed);
    tu_stats(p, &ps);
    assert_int_equal(ps.failed, expect_failed);
    tu_stage_stats(p, st, &ls);
    assert_int_equal(ls.cache_misses, c.load_keys);
    if (!with_cache) assert_int_equal(ls.cache_hits, 0);
    if (with_cache) assert_true(ls.cache_hits > 0);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    /* every input, result and output freed exactly once (results in the cache too) */
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.allocs[K_IN], N);
    assert_int_equal(c.frees[K_IN], N);
    assert_int_equal(c.frees[K_RES], c.allocs[K_RES]);
    assert_int_equal(c.frees[K_OUT], c.allocs[K_OUT]);
    assert_int_equal(c.sink_frees, c.allocs[K_OUT]);
    print_message("heap loader%s%s: %u items, %llu load calls for %llu keys, %llu cache hits; "
                  "%llu results and %llu outputs all freed once\n",
                  with_cache ? " + cache" : "", with_failures ? " with failures" : "",
                  (unsigned)N, (unsigned long long)c.load_calls,
                  (unsigned long long)c.load_keys, (unsigned long long)ls.cache_hits,
                  (unsigned long long)c.allocs[K_RES], (unsigned long long)c.allocs[K_OUT]);
}

static void test_heap_results_are_released_once(void **state) {
    (void)state;
    run_heap_loader(0, 1);
}

static void test_heap_results_in_a_loader_cache_are_released_once(void **state) {
    (void)state;
    run_heap_loader(1, 1);
}

/* ----- cache in front of a map ----- */

#define MOUT(key) (OTAG | ((uint64_t)(key) * 10u))

static int32_t counting_map(void *user, uint64_t in, uint64_t *out) {
    lrec *r = (lrec *)user;
    if (r->map_calls < 256) r->map_keys[r->map_calls] = LKEY(in);
    r->map_calls++;
    *out = MOUT(LKEY(in));
    return 0;
}

static fluxus_pipeline *cached_map_pipeline(fluxus_runtime *rt, lrec *r, uint64_t entries,
                                            uint64_t ttl_us, uint32_t *stage) {
    fluxus_pipeline *p = tu_pipeline(rt, "cached-map", NULL);
    TU_OK(fluxus_pipeline_set_item_free(p, lfree, r, NULL));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(stage, p, "lookup", counting_map, r, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, *stage, lkey, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, *stage, entries, ttl_us, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", lsink, r, NULL));
    return p;
}

static void push_key_now(fluxus_runtime *rt, fluxus_pipeline *p, uint32_t *serial, uint32_t key) {
    TU_OK(fluxus_pipeline_push(p, LITEM((*serial)++, key), 0));
    tu_drive(rt);
}

static void test_map_cache_hits_do_not_call_the_map(void **state) {
    static const uint32_t keys[9] = {1, 2, 1, 1, 3, 2, 3, 4, 1};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    (void)state;
    lrec_init(&r, rt);
    p = cached_map_pipeline(rt, &r, 100, 0, &st);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 9; i++) push_key_now(rt, p, &serial, keys[i]);
    assert_int_equal(r.map_calls, 4);
    for (i = 0; i < 4; i++) assert_int_equal(r.map_keys[i], i + 1);
    tu_stage_stats(p, st, &ms);
    assert_int_equal(ms.cache_hits, 5);
    assert_int_equal(ms.cache_misses, 4);
    for (i = 1; i <= 4; i++) assert_int_equal(r.out_freed[i], 0); /* still cached */
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.n_out, 9);
    for (i = 0; i < 9; i++) assert_int_equal(r.out[i], MOUT(keys[i]));
    /* answered inputs destroyed; computed ones were the map's */
    for (i = 0; i < 9; i++) {
        uint32_t hit = (i == 2 || i == 3 || i == 5 || i == 6 || i == 8);
        assert_int_equal(r.in_freed[i], hit ? 1u : 0u);
    }
    /* the cached values released once, at the end */
    for (i = 1; i <= 4; i++) assert_int_equal(r.out_freed[i], 1);
    assert_int_equal(r.other_freed, 0);
    tu_stage_stats(p, st, &ms);
    assert_int_equal(ms.in, 9);
    assert_int_equal(ms.out, 9);
    tu_check_conservation(p, NULL, 0);
    print_message("map cache: 9 items, 4 keys -> 4 map calls, 5 hits / 4 misses; 4 cached "
                  "values released at the end\n");
    tu_free_all(p, rt);
}

static void test_a_cached_key_is_recomputed_after_the_ttl(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    uint32_t st = 0, serial = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    (void)state;
    lrec_init(&r, rt);
    p = cached_map_pipeline(rt, &r, 100, 1000, &st);
    TU_OK(fluxus_pipeline_start(p));
    push_key_now(rt, p, &serial, 1); /* t=0: computed */
    tu_step_to(rt, T0 + 500 * US);
    push_key_now(rt, p, &serial, 1); /* hit: does not extend the ttl */
    tu_step_to(rt, T0 + 1000 * US - 1);
    push_key_now(rt, p, &serial, 1); /* hit, 1 ns before expiry */
    assert_int_equal(r.map_calls, 1);
    assert_int_equal(r.out_freed[1], 0);
    tu_step_to(rt, T0 + 1000 * US);
    push_key_now(rt, p, &serial, 1); /* expired: computed again, the old value released */
    assert_int_equal(r.map_calls, 2);
    assert_int_equal(r.out_freed[1], 1);
    tu_step_to(rt, T0 + 1999 * US);
    push_key_now(rt, p, &serial, 1); /* hit */
    tu_step_to(rt, T0 + 2000 * US);
    push_key_now(rt, p, &serial, 1); /* expired again */
    assert_int_equal(r.map_calls, 3);
    tu_stage_stats(p, st, &ms);
    assert_int_equal(ms.cache_hits, 3);
    assert_int_equal(ms.cache_misses, 3);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.out_freed[1], 3); /* two expired + the last one at the end */
    assert_int_equal(r.n_out, 6);
    tu_check_conservation(p, NULL, 0);
    print_message("map cache ttl 1000 us: hits at 500 us and 1 ns before expiry, recomputed at "
                  "exactly 1000 and 2000 us (3 calls for 6 items)\n");
    tu_free_all(p, rt);
}

static void test_the_cache_evicts_the_least_recently_used_key(void **state) {
    /* A B A C A B with 2 entries. LRU evicts B for C (A was used since): calls A B C B.
     * FIFO would evict A: calls A B C A B. */
    static const uint32_t keys[6] = {1, 2, 1, 3, 1, 2};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    (void)state;
    lrec_init(&r, rt);
    p = cached_map_pipeline(rt, &r, 2, 0, &st);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 4; i++) push_key_now(rt, p, &serial, keys[i]);
    assert_int_equal(r.out_freed[2], 1); /* B evicted (released) when C came in */
    assert_int_equal(r.out_freed[1], 0);
    for (i = 4; i < 6; i++) push_key_now(rt, p, &serial, keys[i]);
    assert_int_equal(r.map_calls, 4);
    assert_int_equal(r.map_keys[0], 1);
    assert_int_equal(r.map_keys[1], 2);
    assert_int_equal(r.map_keys[2], 3);
    assert_int_equal(r.map_keys[3], 2);
    assert_int_equal(r.out_freed[3], 1); /* C evicted for B */
    tu_stage_stats(p, st, &ms);
    assert_int_equal(ms.cache_hits, 2);
    assert_int_equal(ms.cache_misses, 4);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.out_freed[1], 1);
    assert_int_equal(r.out_freed[2], 2);
    assert_int_equal(r.out_freed[3], 1);
    tu_check_conservation(p, NULL, 0);
    print_message("map cache 2 entries, A B A C A B: map called for A B C B (LRU, not FIFO)\n");
    tu_free_all(p, rt);
}

/* Heap outputs with a copy callback: every delivered output is its own object. */

static int32_t hmap(void *user, uint64_t in, uint64_t *out) {
    hctx *c = (hctx *)user;
    obj *o = O(in);
    TU_ADD(&c->load_calls, 1);
    if (o->kind != K_IN) TU_ADD(&c->bad, 1);
    *out = W(obj_new(c, K_OUT, 0, o->key, o->key * 7 + 3));
    obj_free(c, o); /* a map owns its input on success */
    return 0;
}

static int32_t hcopy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    hctx *c = (hctx *)user;
    obj *o = O(item);
    if (route != 0 || o->kind != K_OUT || o->magic != OBJ_MAGIC) TU_ADD(&c->bad, 1);
    TU_ADD(&c->copies, 1);
    *copy = W(obj_new(c, K_OUT, 0, o->key, o->value));
    return 0;
}

static int32_t hmap_sink(void *user, uint64_t item) {
    hctx *c = (hctx *)user;
    obj *o = O(item);
    if (o->kind != K_OUT || o->value != o->key * 7 + 3) TU_ADD(&c->bad, 1);
    TU_ADD(&c->delivered, 1);
    TU_ADD(&c->sink_frees, 1);
    obj_free(c, o);
    return 0;
}

static fluxus_pipeline *heap_map_pipeline(fluxus_runtime *rt, hctx *c, uint32_t workers,
                                          uint64_t entries, uint32_t *stage, int push) {
    fluxus_pipeline *p = tu_pipeline(rt, "heap-map", NULL);
    TU_OK(fluxus_pipeline_set_item_free(p, h_free, c, NULL));
    if (push)
        TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    else
        TU_OK(fluxus_pipeline_set_pull_source(p, "in", h_pull, c, NULL));
    TU_OK(fluxus_pipeline_add_map(stage, p, "lookup", hmap, c, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, *stage, h_key, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, *stage, entries, 0, hcopy, c, NULL));
    if (workers > 1) TU_OK(fluxus_stage_set_workers(p, *stage, workers));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", hmap_sink, c, NULL));
    return p;
}

static void test_a_copy_callback_gives_each_hit_its_own_heap_output(void **state) {
    static const uint32_t keys[6] = {1, 2, 1, 1, 2, 3};
    fluxus_runtime *rt = tu_vruntime(T0);
    hctx c;
    uint32_t st = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    (void)state;
    memset(&c, 0, sizeof c);
    p = heap_map_pipeline(rt, &c, 1, 100, &st, 1);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 6; i++) TU_OK(fluxus_pipeline_push(p, W(obj_new(&c, K_IN, i, keys[i], 0)), 0));
    tu_drive(rt);
    assert_int_equal(c.load_calls, 3); /* map calls */
    assert_int_equal(c.copies, 6);     /* one kept by the cache per miss, one per hit */
    assert_int_equal(c.frees[K_OUT], 6); /* the sink freed each delivered output */
    assert_int_equal(c.frees[K_IN], 6);  /* 3 by the map, 3 hits by the item destructor */
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    tu_stage_stats(p, st, &ms);
    assert_int_equal(ms.cache_hits, 3);
    assert_int_equal(ms.cache_misses, 3);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.delivered, 6);
    assert_int_equal(c.allocs[K_OUT], 9); /* 3 computed + 6 copies */
    assert_int_equal(c.frees[K_OUT], 9);  /* 6 by the sink + 3 cached ones at the end */
    assert_int_equal(c.allocs[K_IN], c.frees[K_IN]);
    print_message("map cache with copy callback: 6 heap outputs delivered (3 computed, 3 "
                  "copies), 3 cached copies released at the end\n");
}

static void test_a_cached_map_with_four_workers_frees_everything_once(void **state) {
    enum { N = 20000 };
    fluxus_runtime *rt = tu_runtime(4);
    hctx c;
    uint32_t st = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats ms;
    (void)state;
    memset(&c, 0, sizeof c);
    c.n = N;
    p = heap_map_pipeline(rt, &c, 4, 64, &st, 0);
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    tu_stage_stats(p, st, &ms);
    assert_int_equal(ms.cache_hits + ms.cache_misses, N);
    assert_int_equal(ms.cache_misses, c.load_calls);
    assert_true(ms.cache_hits > 0);
    assert_int_equal(c.delivered, N);
    assert_int_equal(c.copies, N); /* a cache copy per miss, a delivered copy per hit */
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.frees[K_IN], N);
    assert_int_equal(c.allocs[K_OUT], c.frees[K_OUT]);
    print_message("cached map, 4 workers: %u heap items, %llu hits / %llu misses, every input "
                  "and output freed once\n",
                  (unsigned)N, (unsigned long long)ms.cache_hits,
                  (unsigned long long)ms.cache_misses);
}

static void test_cached_values_are_released_on_cancel(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    hctx c;
    uint32_t st = 0, i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    (void)state;
    memset(&c, 0, sizeof c);
    p = heap_map_pipeline(rt, &c, 1, 100, &st, 1);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 10; i++) TU_OK(fluxus_pipeline_push(p, W(obj_new(&c, K_IN, i, i % 4, 0)), 0));
    tu_drive(rt);
    for (i = 0; i < 5; i++) TU_OK(fluxus_pipeline_push(p, W(obj_new(&c, K_IN, i, i, 0)), 0));
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    tu_stats(p, &ps);
    assert_int_equal(ps.delivered, 10);
    assert_int_equal(ps.cancelled, 5);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.allocs[K_IN], c.frees[K_IN]);
    assert_int_equal(c.allocs[K_OUT], c.frees[K_OUT]); /* the 4 cached copies too */
    print_message("cancel: 5 queued items cancelled, the 4 cached heap values released\n");
}

/* ----- cache in front of a loader ----- */

static void test_a_loader_cache_answers_keys_without_loading_them(void **state) {
    static const uint32_t g[4][3] = {{1, 2, 3}, {2, 3, 4}, {5, 2, 5}, {2, 6, 2}};
    fluxus_runtime *rt = tu_vruntime(T0);
    lrec r;
    uint32_t st = 0, serial = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats ls;
    (void)state;
    lrec_init(&r, rt);
    p = tu_pipeline(rt, "cached-loader", NULL);
    TU_OK(fluxus_pipeline_set_item_free(p, lfree, &r, NULL));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_loader(&st, p, "users", 3, 1000, lload, lattach, &r, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, st, lkey, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, st, 100, 5000, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", lsink, &r, NULL));
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 4; i++) {
        push_keys(p, &serial, g[i], 3);
        tu_drive(rt);
    }
    assert_int_equal(r.calls, 4);
    assert_int_equal(r.count[0], 3);
    assert_int_equal(r.count[1], 1); /* only key 4: 2 and 3 came from the cache */
    assert_int_equal(r.keys[1][0], 4);
    assert_int_equal(r.count[2], 1); /* only key 5 (twice in the group, loaded once) */
    assert_int_equal(r.keys[2][0], 5);
    assert_int_equal(r.count[3], 1); /* only key 6 (key 2, twice, from the cache) */
    assert_int_equal(r.keys[3][0], 6);
    assert_int_equal(r.dup_keys, 0);
    for (i = 1; i <= 6; i++) assert_int_equal(r.res_freed[i], 0); /* all kept by the cache */
    tu_stage_stats(p, st, &ls);
    /* counted per distinct key of a group, hits like misses: {2 3} + {2} + {2} */
    assert_int_equal(ls.cache_misses, 6);
    assert_int_equal(ls.cache_hits, 4);
    /* after the ttl, key 1 is loaded again (its old result released) */
    tu_step_to(rt, T0 + 5000 * US);
    push_key_now(rt, p, &serial, 1);
    tu_step_to(rt, T0 + 6000 * US); /* the window flushes the group of one */
    assert_int_equal(r.calls, 5);
    assert_int_equal(r.keys[4][0], 1);
    assert_int_equal(r.res_freed[1], 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.attach_calls, 13);
    assert_int_equal(r.attach_bad, 0);
    assert_int_equal(r.n_out, 13);
    for (i = 0; i < 13; i++) assert_int_equal(LSERIAL(r.out[i] & ~OTAG), i);
    assert_int_equal(r.res_freed[1], 2); /* expired one + the reloaded one at the end */
    for (i = 2; i <= 6; i++) assert_int_equal(r.res_freed[i], 1);
    assert_int_equal(r.other_freed, 0);
    tu_check_conservation(p, NULL, 0);
    print_message("loader cache: groups {1 2 3} {2 3 4} {5 2 5} {2 6 2} -> loads of 3, 1, 1, 1 "
                  "keys, 4 hits / 6 misses; key 1 reloaded after its ttl\n");
    tu_free_all(p, rt);
}

/* ----- option errors ----- */

static int32_t keep_all(void *user, uint64_t item, int32_t *keep) {
    (void)user;
    (void)item;
    *keep = 1;
    return 0;
}

static int32_t cursor_read(void *user, uint64_t cursor, uint64_t *items, uint32_t capacity,
                           uint32_t *count, uint64_t *next_cursor) {
    (void)user;
    (void)items;
    (void)capacity;
    *count = 0;
    *next_cursor = cursor + 1;
    return FLUXUS_PULL_END;
}

static uint64_t cursor_page(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static void test_loader_and_cache_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    lrec r;
    uint32_t st = 0, f = 0;
    (void)state;
    lrec_init(&r, NULL);

    /* loader arguments */
    p = tu_pipeline(rt, "opts", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_add_loader(&st, p, "l", 8, 0, NULL, lattach, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_loader(&st, p, "l", 8, 0, lload, NULL, &r, NULL));
    TU_EXPECT(FLUXUS_ERANGE,
              fluxus_pipeline_add_loader(&st, p, "l", 0, 0, lload, lattach, &r, NULL));
    TU_EXPECT(FLUXUS_ERANGE,
              fluxus_pipeline_add_loader(&st, p, "l", 65537, 0, lload, lattach, &r, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_loader(&st, p, "l", 8, 86400000001ull, lload,
                                                        lattach, &r, NULL));
    TU_OK(fluxus_pipeline_add_loader(&st, p, "l", 65536, 86400000000ull, lload, lattach, &r, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_cache(p, st, 10, 86400000001ull, NULL, NULL, NULL));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_cache(p, 77, 10, 0, NULL, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, st, 2));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", lsink, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p)); /* a loader runs on one worker */
    TU_OK(fluxus_pipeline_free(p));

    /* a cache on a filter is refused at start; 0 entries removes it */
    p = tu_pipeline(rt, "filter-cache", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_filter(&f, p, "f", keep_all, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, f, 10, 0, NULL, NULL, NULL)); /* accepted until start */
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", lsink, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_free(p));
    p = tu_pipeline(rt, "filter-no-cache", NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_filter(&f, p, "f", keep_all, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, f, 10, 0, NULL, NULL, NULL));
    TU_OK(fluxus_stage_set_cache(p, f, 0, 0, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", lsink, &r, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_cache(p, f, 10, 0, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    TU_OK(fluxus_pipeline_free(p));

    /* a cache with a cursor source is refused at start, on a map and on a loader */
    p = tu_pipeline(rt, "cursor-cache", NULL);
    TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", 0, cursor_read, cursor_page, NULL, NULL,
                                            NULL));
    TU_OK(fluxus_pipeline_add_map(&st, p, "m", counting_map, &r, NULL));
    TU_OK(fluxus_stage_set_cache(p, st, 10, 0, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", lsink, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_free(p));
    p = tu_pipeline(rt, "cursor-loader-cache", NULL);
    TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", 0, cursor_read, cursor_page, NULL, NULL,
                                            NULL));
    TU_OK(fluxus_pipeline_add_loader(&st, p, "l", 8, 0, lload, lattach, &r, NULL));
    TU_OK(fluxus_stage_set_cache(p, st, 10, 0, NULL, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", lsink, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    print_message("loader/cache options: NULL callbacks -> FLUXUS_EINVAL, max 0/65537 and "
                  "window/ttl over a day -> FLUXUS_ERANGE; cache on a filter, with a cursor "
                  "source, loader with 2 workers -> start FLUXUS_EINVAL\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicates_in_a_group_are_loaded_once),
        cmocka_unit_test(test_max_items_bounds_a_group_and_the_window_flushes_the_rest_exactly),
        cmocka_unit_test(test_the_tail_goes_at_end_of_input),
        cmocka_unit_test(test_a_key_failure_fails_exactly_its_waiters),
        cmocka_unit_test(test_a_failing_load_fails_its_whole_group),
        cmocka_unit_test(test_an_attach_failure_fails_one_item),
        cmocka_unit_test(test_cancel_cancels_the_open_group_without_loading_it),
        cmocka_unit_test(test_heap_results_are_released_once),
        cmocka_unit_test(test_heap_results_in_a_loader_cache_are_released_once),
        cmocka_unit_test(test_map_cache_hits_do_not_call_the_map),
        cmocka_unit_test(test_a_cached_key_is_recomputed_after_the_ttl),
        cmocka_unit_test(test_the_cache_evicts_the_least_recently_used_key),
        cmocka_unit_test(test_a_copy_callback_gives_each_hit_its_own_heap_output),
        cmocka_unit_test(test_a_cached_map_with_four_workers_frees_everything_once),
        cmocka_unit_test(test_cached_values_are_released_on_cancel),
        cmocka_unit_test(test_a_loader_cache_answers_keys_without_loading_them),
        cmocka_unit_test(test_loader_and_cache_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
