/*
 * Resumable cursor sources: fluxus_pipeline_set_cursor_source() and
 * fluxus_pipeline_get_committed_cursor(). Items are pointers to a table of structs that carry
 * the page (the cursor their read was called with); every callback marks what happened to each
 * item, and the commit callback checks, at every commit, that every item of every page before
 * the committed cursor has finished (delivered, filtered, dead-lettered or skipped; for a
 * flat-map input: consumed, with all its children finished). Cursors are not page numbers:
 * page k starts at CBASE + k * CSTEP, so a library that assumed "next = cursor + 1" would fail.
 * Exact timing runs on a host-driven runtime with a virtual clock; threaded runs check the
 * invariants under real parallelism.
 */
#include "test_util.h"

#define US 1000ull       /* nanoseconds per microsecond */
#define MS 1000000ull    /* nanoseconds per millisecond */
#define T0 1000000000ull /* virtual clock start */

#define CBASE 1000u /* cursor of page 0 */
#define CSTEP 10u   /* cursor distance between pages */
#define MAX_PAGES 512u
#define LOG_MAX 4096u
#define CHILDREN 3u /* flat-map children per input */
#define NONE UINT32_MAX

#define READ_ERROR 91 /* the read callback's error for a cursor it never handed out */
#define SKIP_STATUS 41
#define DEAD_STATUS 42
#define FAST_STATUS 43
#define RETRY_STATUS 44

/* What a stage does with an item (by the item's `action`). */
enum { ACT_PASS = 0, ACT_FILTER, ACT_SKIP, ACT_DEAD, ACT_FAST, ACT_GATE, ACT_RETRY, ACT_HANG };

/* Async stage behaviour. */
enum { ASYNC_HOLD = 0, ASYNC_TIMER };

static uint64_t cursor_of(uint32_t page) { return (uint64_t)CBASE + (uint64_t)page * CSTEP; }

typedef struct citem {
    uint64_t page;       /* the cursor of its page's read; written before start, then constant */
    uint32_t page_index; /* k, for messages */
    uint32_t index;      /* in the context's table */
    uint32_t parent;     /* children: the parent's index; top-level items: NONE */
    uint32_t action;     /* ACT_* */
    uint64_t delay_ns;   /* ASYNC_TIMER: completion delay */
    uint64_t completion; /* async: the handle of its current attempt */
    /* What happened to it in this run (atomics). */
    uint32_t read;      /* its page was read */
    uint32_t mapped;    /* map callback calls */
    uint32_t delivered; /* sink deliveries */
    uint32_t finished;  /* filtered / skipped / dead-lettered / consumed by a flat map */
    uint32_t destroyed; /* item destructor calls */
    uint32_t retried;   /* retry_map calls */
    uint32_t released;  /* the host took it back (a late completion was refused) */
} citem;

/* fluxus calls (page_of, dead letter) on items the host had already taken back. */
static uint64_t touched_after_release;

typedef struct cctx {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t pages;
    uint32_t first[MAX_PAGES + 1]; /* items of page k: [first[k], first[k + 1]) */
    citem *items;                  /* n_items top-level items, then CHILDREN per item if flat */
    uint32_t n_items;
    int flat;
    uint32_t later[MAX_PAGES]; /* FLUXUS_PULL_LATER answers still to give per page */
    uint32_t error_page;       /* the read of this page fails (NONE: none does) */
    uint32_t start_page;       /* the run starts at cursor_of(start_page) */

    /* reads (never concurrent with each other) */
    uint64_t n_reads;
    uint64_t read_cursor[LOG_MAX];
    uint64_t read_time[LOG_MAX];
    uint32_t read_capacity[LOG_MAX];
    uint64_t read_errors;

    /* commits (in order, one at a time) */
    uint64_t n_commits;
    uint64_t commits[LOG_MAX];
    uint64_t commit_time[LOG_MAX];
    uint64_t commit_delivered[LOG_MAX]; /* sink deliveries seen when it was called */
    uint64_t commit_order_errors;       /* a commit lower than the one before, or not a cursor */
    uint64_t commit_unfinished;         /* items before a committed cursor not finished */
    uint64_t commit_overlap;            /* two commit calls at once */
    uint64_t in_commit;
    uint32_t bad_item;  /* first unfinished item seen by a commit */
    uint64_t bad_commit;
    uint32_t checked;   /* pages below this were checked by an earlier commit */

    /* sink */
    uint64_t delivered;
    uint32_t order[LOG_MAX]; /* delivery order (single-worker sink) */
    uint64_t cancel_after;   /* cancel from the sink once this many were delivered (0: never) */
    int cancel_needs_commit; /* ... and something has been committed */
    uint64_t cancelled_at;   /* deliveries when the sink cancelled */

    /* async stage */
    int async_mode;
    uint64_t timer_errors;

    /* gate (threaded reorder test): the gated item waits until every other item is delivered */
    uint64_t gate_commits_seen;
    uint64_t gate_timed_out;
    uint64_t gate_passed;

    uint64_t dl_calls;
    int32_t dl_status; /* the status dead letters should have */
    uint64_t dl_wrong_status;
} cctx;

static citem *item_of(uint64_t item) { return (citem *)(uintptr_t)item; }
static uint64_t word_of(citem *it) { return (uint64_t)(uintptr_t)it; }
static citem *child_of(cctx *c, uint32_t parent, uint32_t j) {
    return &c->items[c->n_items + parent * CHILDREN + j];
}

/* A context with `pages` pages; page k holds sizes[k] items (or `per_page` when sizes is NULL). */
static cctx *ctx_new(uint32_t pages, const uint32_t *sizes, uint32_t per_page, int flat) {
    cctx *c = (cctx *)calloc(1, sizeof *c);
    uint32_t k, i, total = 0;
    assert_non_null(c);
    assert_true(pages <= MAX_PAGES);
    c->pages = pages;
    c->flat = flat;
    c->error_page = NONE;
    c->dl_status = DEAD_STATUS;
    for (k = 0; k < pages; k++) {
        c->first[k] = total;
        total += sizes != NULL ? sizes[k] : per_page;
    }
    c->first[pages] = total;
    c->n_items = total;
    c->items = (citem *)calloc((size_t)total * (flat ? 1 + CHILDREN : 1) + 1, sizeof(citem));
    assert_non_null(c->items);
    for (k = 0; k < pages; k++) {
        for (i = c->first[k]; i < c->first[k + 1]; i++) {
            citem *it = &c->items[i];
            uint32_t j;
            it->page = cursor_of(k);
            it->page_index = k;
            it->index = i;
            it->parent = NONE;
            if (flat) {
                for (j = 0; j < CHILDREN; j++) {
                    citem *ch = child_of(c, i, j);
                    ch->page = cursor_of(k);
                    ch->page_index = k;
                    ch->index = c->n_items + i * CHILDREN + j;
                    ch->parent = i;
                }
            }
        }
    }
    return c;
}

static void ctx_free(cctx *c) {
    free(c->items);
    free(c);
}

static uint32_t page_size(const cctx *c, uint32_t k) { return c->first[k + 1] - c->first[k]; }

static uint32_t all_items(const cctx *c) { return c->n_items * (c->flat ? 1 + CHILDREN : 1); }

/* Forget what happened in a run (the item table stays), for a second run from `start_page`. */
static void ctx_new_run(cctx *c, uint32_t start_page) {
    uint32_t i;
    for (i = 0; i < all_items(c); i++) {
        citem *it = &c->items[i];
        it->read = it->mapped = it->delivered = it->finished = it->destroyed = 0;
        it->completion = 0;
    }
    c->start_page = start_page;
    c->n_reads = c->read_errors = 0;
    c->n_commits = c->commit_order_errors = c->commit_unfinished = c->commit_overlap = 0;
    c->checked = start_page;
    c->delivered = 0;
    c->cancelled_at = 0;
    c->dl_calls = c->dl_wrong_status = 0;
}


/* Virtual-clock helpers from test_util.h, on this file's clock origin T0. */
static fluxus_runtime *vruntime(void) { return tu_vruntime(T0); }
static void drive(fluxus_runtime *rt) { tu_drive(rt); }
static void step_to(fluxus_runtime *rt, uint64_t at_ns) { tu_step_to(rt, T0 + at_ns); }

static int item_done(const citem *it) {
    return TU_LOAD(&it->delivered) + TU_LOAD(&it->finished) > 0;
}

/* ----- the cursor source ----- */

static int32_t read_page(void *user, uint64_t cursor, uint64_t *items, uint32_t capacity,
                         uint32_t *count, uint64_t *next_cursor) {
    cctx *c = (cctx *)user;
    uint64_t i = TU_LOAD(&c->n_reads), now = 0;
    uint32_t k, n, j;
    fluxus_runtime_now_ns(c->rt, &now);
    if (i < LOG_MAX) {
        c->read_cursor[i] = cursor;
        c->read_time[i] = now;
        c->read_capacity[i] = capacity;
    }
    TU_STORE(&c->n_reads, i + 1);
    if (cursor < CBASE || (cursor - CBASE) % CSTEP != 0 || (cursor - CBASE) / CSTEP >= c->pages) {
        TU_ADD(&c->read_errors, 1);
        return READ_ERROR;
    }
    k = (uint32_t)((cursor - CBASE) / CSTEP);
    if (k == c->error_page) {
        return READ_ERROR;
    }
    if (c->later[k] > 0) {
        c->later[k]--;
        *count = 0;
        return FLUXUS_PULL_LATER;
    }
    n = page_size(c, k);
    if (n > capacity) { /* the tests size their pages to fit in a batch */
        TU_ADD(&c->read_errors, 1);
        n = capacity;
    }
    for (j = 0; j < n; j++) {
        citem *it = &c->items[c->first[k] + j];
        TU_ADD(&it->read, 1);
        items[j] = word_of(it);
    }
    *count = n;
    *next_cursor = cursor_of(k + 1);
    return k + 1 == c->pages ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static uint64_t page_of(void *user, uint64_t item) {
    (void)user;
    if (TU_LOAD(&item_of(item)->released)) {
        TU_ADD(&touched_after_release, 1);
    }
    return item_of(item)->page;
}

/* A page is finished when each of its items is: delivered, or ended as finished by a host
 * callback; a flat-map input also needs every child finished. */
static int page_done(cctx *c, uint32_t k, uint32_t *bad) {
    uint32_t i, j;
    for (i = c->first[k]; i < c->first[k + 1]; i++) {
        if (!item_done(&c->items[i])) {
            *bad = i;
            return 0;
        }
        if (c->flat) {
            for (j = 0; j < CHILDREN; j++) {
                if (!item_done(child_of(c, i, j))) {
                    *bad = child_of(c, i, j)->index;
                    return 0;
                }
            }
        }
    }
    return 1;
}

static void commit(void *user, uint64_t cursor) {
    cctx *c = (cctx *)user;
    uint64_t i = TU_LOAD(&c->n_commits), now = 0;
    uint32_t k, upto;
    if (TU_ADD(&c->in_commit, 1) != 1) {
        TU_ADD(&c->commit_overlap, 1);
    }
    fluxus_runtime_now_ns(c->rt, &now);
    if (i < LOG_MAX) {
        c->commits[i] = cursor;
        c->commit_time[i] = now;
        c->commit_delivered[i] = TU_LOAD(&c->delivered);
    }
    if (cursor < cursor_of(c->start_page) || (cursor - CBASE) % CSTEP != 0 ||
        (cursor - CBASE) / CSTEP > c->pages || (i > 0 && cursor < c->commits[i - 1])) {
        TU_ADD(&c->commit_order_errors, 1);
    } else {
        upto = (uint32_t)((cursor - CBASE) / CSTEP);
        for (k = c->checked; k < upto; k++) {
            uint32_t bad = 0;
            if (!page_done(c, k, &bad)) {
                if (TU_ADD(&c->commit_unfinished, 1) == 1) {
                    c->bad_item = bad;
                    c->bad_commit = cursor;
                }
            }
        }
        if (upto > c->checked) {
            c->checked = upto;
        }
    }
    TU_STORE(&c->n_commits, i + 1);
    TU_ADD(&c->in_commit, (uint64_t)-1);
}

static void count_destroyed(void *user, uint64_t item) {
    (void)user;
    TU_ADD(&item_of(item)->destroyed, 1);
}

/* Every commit covered finished items only, in order, one at a time. */
static void check_commits(cctx *c) {
    if (TU_LOAD(&c->commit_unfinished) != 0) {
        const citem *it = &c->items[c->bad_item];
        fail_msg("%llu commit(s) covered unfinished items; first: commit %llu while item %u of "
                 "page %u (cursor %llu) was delivered %u / finished %u",
                 (unsigned long long)c->commit_unfinished, (unsigned long long)c->bad_commit,
                 it->index, it->page_index, (unsigned long long)it->page, it->delivered,
                 it->finished);
    }
    assert_int_equal(TU_LOAD(&c->commit_order_errors), 0);
    assert_int_equal(TU_LOAD(&c->commit_overlap), 0);
    assert_int_equal(TU_LOAD(&c->read_errors), 0);
}

static uint64_t last_commit(cctx *c) {
    uint64_t n = TU_LOAD(&c->n_commits);
    assert_true(n > 0 && n <= LOG_MAX);
    return c->commits[n - 1];
}

static void expect_committed(fluxus_pipeline *p, uint64_t cursor) {
    uint64_t got = 0;
    TU_OK(fluxus_pipeline_get_committed_cursor(&got, p));
    if (got != cursor) {
        fail_msg("committed cursor %llu, expected %llu", (unsigned long long)got,
                 (unsigned long long)cursor);
    }
}

static void expect_nothing_committed(fluxus_pipeline *p) {
    uint64_t got = 0;
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_pipeline_get_committed_cursor(&got, p));
}

/* ----- stages ----- */

static int32_t sink(void *user, uint64_t item) {
    cctx *c = (cctx *)user;
    citem *it = item_of(item);
    uint64_t n;
    TU_ADD(&it->delivered, 1);
    n = TU_ADD(&c->delivered, 1);
    if (n <= LOG_MAX) {
        c->order[n - 1] = it->index;
    }
    if (c->cancel_after != 0 && n >= c->cancel_after && TU_LOAD(&c->cancelled_at) == 0) {
        uint64_t cur = 0;
        if (!c->cancel_needs_commit ||
            fluxus_pipeline_get_committed_cursor(&cur, c->p) == FLUXUS_OK) {
            TU_STORE(&c->cancelled_at, n);
            fluxus_pipeline_cancel(c->p);
        }
    }
    return 0;
}

static int32_t sink_batch(void *user, const uint64_t *items, int32_t *status, uint32_t count) {
    uint32_t i;
    (void)status;
    for (i = 0; i < count; i++) {
        sink(user, items[i]);
    }
    return 0;
}

/* A few hundred spins, different per item: enough for parallel workers to overtake. */
static int32_t jitter_map(void *user, uint64_t in, uint64_t *out) {
    citem *it = item_of(in);
    (void)user;
    TU_ADD(&it->mapped, 1);
    tu_spin((uint32_t)(tu_mix64(it->index) % 3000u));
    *out = in;
    return 0;
}

static int32_t drop_filter(void *user, uint64_t item, int32_t *keep) {
    citem *it = item_of(item);
    (void)user;
    if (it->action == ACT_FILTER) {
        TU_ADD(&it->finished, 1); /* decided before the call returns */
        *keep = 0;
    } else {
        *keep = 1;
    }
    return 0;
}

static int32_t skip_map(void *user, uint64_t in, uint64_t *out) {
    citem *it = item_of(in);
    (void)user;
    if (it->action == ACT_SKIP) {
        TU_ADD(&it->finished, 1);
        return SKIP_STATUS;
    }
    *out = in;
    return 0;
}

static int32_t dead_map(void *user, uint64_t in, uint64_t *out) {
    citem *it = item_of(in);
    (void)user;
    TU_ADD(&it->mapped, 1);
    tu_spin((uint32_t)(tu_mix64(it->index + 7) % 2000u));
    if (it->action == ACT_DEAD) {
        return DEAD_STATUS;
    }
    *out = in;
    return 0;
}

static int32_t fast_map(void *user, uint64_t in, uint64_t *out) {
    citem *it = item_of(in);
    (void)user;
    if (it->action == ACT_FAST) {
        return FAST_STATUS;
    }
    *out = in;
    return 0;
}

/* Fails an ACT_RETRY item's first attempt. */
static int32_t retry_map(void *user, uint64_t in, uint64_t *out) {
    citem *it = item_of(in);
    (void)user;
    if (it->action == ACT_RETRY && TU_ADD(&it->retried, 1) == 1) {
        return RETRY_STATUS;
    }
    *out = in;
    return 0;
}

static void dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    cctx *c = (cctx *)user;
    TU_ADD(&c->dl_calls, 1);
    if (tu_failure_status(f) != c->dl_status) {
        TU_ADD(&c->dl_wrong_status, 1);
    }
    TU_ADD(&item_of(item)->finished, 1);
}

/* Flat map: emit CHILDREN children, each answering page_of with the parent's page. */
static int32_t emit_children(cctx *c, uint64_t item, fluxus_emitter *em) {
    citem *it = item_of(item);
    uint32_t j;
    for (j = 0; j < CHILDREN; j++) {
        int32_t rc = fluxus_emitter_emit(em, word_of(child_of(c, it->index, j)));
        if (rc != FLUXUS_OK) {
            return rc;
        }
    }
    TU_ADD(&it->finished, 1); /* consumed */
    return 0;
}

static int32_t children_flat_map(void *user, uint64_t item, fluxus_emitter *em) {
    return emit_children((cctx *)user, item, em);
}

static int32_t children_flat_map_batch(void *user, const uint64_t *items, uint32_t count,
                                       fluxus_emitter *em) {
    uint32_t i;
    for (i = 0; i < count; i++) {
        int32_t rc = emit_children((cctx *)user, items[i], em);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* Gate: the gated item is held until every other item has been delivered (or 10 s). */
static int32_t gate_map(void *user, uint64_t in, uint64_t *out) {
    cctx *c = (cctx *)user;
    citem *it = item_of(in);
    TU_ADD(&it->mapped, 1);
    if (it->action == ACT_GATE) {
        uint64_t deadline = tu_now_ms() + 10000u;
        while (TU_LOAD(&c->delivered) < (uint64_t)c->n_items - 1u) {
            if (tu_now_ms() > deadline) {
                TU_ADD(&c->gate_timed_out, 1);
                break;
            }
            tu_sleep_us(200);
        }
        TU_STORE(&c->gate_commits_seen, TU_LOAD(&c->n_commits));
        TU_ADD(&c->gate_passed, 1);
    }
    *out = in;
    return 0;
}

/* ----- async stage: hold items for the test, or complete them from timers ----- */

typedef struct timer_job {
    cctx *c;
    citem *it;
} timer_job;

static void timer_complete(void *user) {
    timer_job *j = (timer_job *)user;
    if (fluxus_pipeline_complete_async(j->c->p, TU_LOAD(&j->it->completion), 0, word_of(j->it)) !=
        FLUXUS_OK) {
        TU_ADD(&j->c->timer_errors, 1);
    }
}

static int32_t async_start(void *user, uint64_t item, uint64_t completion) {
    cctx *c = (cctx *)user;
    citem *it = item_of(item);
    TU_STORE(&it->completion, completion);
    TU_ADD(&it->mapped, 1);
    if (c->async_mode == ASYNC_TIMER && it->action != ACT_HANG) {
        timer_job *j = (timer_job *)malloc(sizeof *j);
        if (j == NULL) {
            return FLUXUS_ENOMEM;
        }
        j->c = c;
        j->it = it;
        if (fluxus_runtime_call_after(NULL, c->rt, it->delay_ns, timer_complete, j, free) !=
            FLUXUS_OK) {
            TU_ADD(&c->timer_errors, 1);
        }
    }
    return 0;
}

/* The test completes a held item. */
static int32_t complete(cctx *c, citem *it) {
    return fluxus_pipeline_complete_async(c->p, TU_LOAD(&it->completion), 0, word_of(it));
}

/* ----- runtime helpers ----- */




static int32_t state_of(fluxus_pipeline *p) {
    int32_t st = -1;
    TU_OK(fluxus_pipeline_get_state(&st, p));
    return st;
}

/* A pipeline on `rt` whose source is the context's cursor source from its start page. */
static fluxus_pipeline *cursor_pipeline(cctx *c, fluxus_runtime *rt, const char *name,
                                        uint32_t batch) {
    fluxus_pipeline *p = tu_pipeline(rt, name, NULL);
    c->rt = rt;
    c->p = p;
    c->checked = c->start_page;
    TU_OK(fluxus_pipeline_set_item_free(p, count_destroyed, NULL, NULL));
    TU_OK(fluxus_pipeline_set_batch_size(p, batch));
    TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", cursor_of(c->start_page), read_page,
                                            page_of, commit, c, NULL));
    return p;
}

/* The source read each page from the start page on once, in order, and nothing else. */
static void expect_reads_in_order(cctx *c) {
    uint64_t i, n = TU_LOAD(&c->n_reads);
    assert_int_equal(n, c->pages - c->start_page);
    for (i = 0; i < n; i++) {
        assert_int_equal(c->read_cursor[i], cursor_of(c->start_page + (uint32_t)i));
    }
}

/* Every item (and child) of the run's pages was delivered exactly once, or finished once. */
static void expect_each_item_once(cctx *c) {
    uint32_t i;
    for (i = c->first[c->start_page]; i < c->n_items; i++) {
        const citem *it = &c->items[i];
        uint32_t j;
        if (it->delivered + it->finished != 1) {
            fail_msg("item %u (page %u): delivered %u, finished %u", i, it->page_index,
                     it->delivered, it->finished);
        }
        for (j = 0; c->flat && j < CHILDREN; j++) {
            const citem *ch = child_of(c, i, j);
            if (ch->delivered != 1) {
                fail_msg("child %u of item %u: delivered %u", j, i, ch->delivered);
            }
        }
    }
}

/* =============================================================================================
 * Commit order and content
 * =========================================================================================== */

#define ORDER_PAGES 48u
#define ORDER_PER_PAGE 8u

static void test_commits_cover_only_finished_items_and_end_at_the_cursor_after_the_last_page(
    void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    cctx *c = ctx_new(ORDER_PAGES, NULL, ORDER_PER_PAGE, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_order", ORDER_PER_PAGE);
    uint32_t map = 0;
    uint64_t i;
    (void)state;

    TU_OK(fluxus_pipeline_add_map(&map, p, "jitter", jitter_map, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, 3));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    expect_nothing_committed(p); /* built, not started */

    tu_run_expect(p, FLUXUS_OK);
    tu_check_conservation(p, NULL, 0);
    check_commits(c);
    assert_true(TU_LOAD(&c->n_commits) >= 1);
    for (i = 1; i < TU_LOAD(&c->n_commits); i++) {
        assert_true(c->commits[i] >= c->commits[i - 1]); /* non-decreasing */
    }
    assert_int_equal(last_commit(c), cursor_of(ORDER_PAGES));
    expect_committed(p, cursor_of(ORDER_PAGES));
    expect_reads_in_order(c);
    expect_each_item_once(c);
    for (i = 0; i < c->n_items; i++) {
        assert_int_equal(c->items[i].read, 1);
        assert_int_equal(c->items[i].destroyed, 0);
    }
    tu_free_all(p, rt);
    ctx_free(c);
}

static int32_t one_pull(void *user, uint64_t *item) {
    (void)user;
    (void)item;
    return FLUXUS_PULL_END;
}

static void test_committed_cursor_is_einval_for_other_sources_and_enotfound_before_a_commit(
    void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(2, NULL, 2, 0);
    fluxus_pipeline *pull = tu_pipeline(rt, "pull", NULL);
    fluxus_pipeline *push = tu_pipeline(rt, "push", NULL);
    fluxus_pipeline *none = tu_pipeline(rt, "none", NULL);
    fluxus_pipeline *p;
    uint64_t got = 7;
    (void)state;

    TU_OK(fluxus_pipeline_set_pull_source(pull, "src", one_pull, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, pull, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_set_push_source(push, "src"));
    TU_OK(fluxus_pipeline_add_sink(NULL, push, "sink", sink, c, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, pull));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, push));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, none));
    TU_OK(fluxus_pipeline_start(pull));
    TU_OK(fluxus_pipeline_start(push));
    TU_OK(fluxus_pipeline_close_input(push));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(pull, 0));
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(push, 0));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, pull));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, push));
    assert_int_equal(got, 7); /* untouched */

    p = cursor_pipeline(c, rt, "cursor", 8);
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(NULL, p));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, NULL));
    expect_nothing_committed(p);
    TU_OK(fluxus_pipeline_start(p));
    expect_nothing_committed(p); /* started, but the host has not run anything yet */
    assert_int_equal(TU_LOAD(&c->n_reads), 0);
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    check_commits(c);
    expect_committed(p, cursor_of(2));
    assert_int_equal(last_commit(c), cursor_of(2));

    TU_OK(fluxus_pipeline_free(pull));
    TU_OK(fluxus_pipeline_free(push));
    TU_OK(fluxus_pipeline_free(none));
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Reordering
 * =========================================================================================== */

/* Host-driven, virtual clock: an unordered async stage completes items from timers at chosen
 * times, so later pages finish first. Page 0's first item finishes last but one, page 2 has a
 * straggler: the watermark stays put until page 0 is done, then jumps over the finished pages
 * to page 2, then to the end. */
static void test_unordered_async_watermark_waits_for_the_oldest_page_then_jumps(void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(4, NULL, 4, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_reorder", 4);
    uint32_t st = 0, i, k;
    uint64_t pos_last_page_item = UINT64_MAX, pos_page0_item0 = UINT64_MAX;
    (void)state;

    for (k = 0; k < 4; k++) {
        for (i = c->first[k]; i < c->first[k + 1]; i++) {
            c->items[i].delay_ns = (uint64_t)(40 - 10 * k) * MS; /* later pages are faster */
        }
    }
    c->items[c->first[0]].delay_ns = 100 * MS;     /* page 0's first item: slow */
    c->items[c->first[2] + 2].delay_ns = 200 * MS; /* page 2's straggler: slowest */
    c->async_mode = ASYNC_TIMER;

    TU_OK(fluxus_pipeline_add_async_map(&st, p, "async", async_start, c, NULL));
    TU_OK(fluxus_stage_set_order(p, st, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    assert_int_equal(TU_LOAD(&c->n_reads), 4);
    expect_nothing_committed(p);

    step_to(rt, 99 * MS); /* everything but the two slow items is delivered */
    assert_int_equal(TU_LOAD(&c->delivered), 14);
    assert_int_equal(TU_LOAD(&c->n_commits), 0);
    expect_nothing_committed(p);

    step_to(rt, 100 * MS); /* page 0 finishes: pages 0 and 1 commit at once */
    assert_int_equal(TU_LOAD(&c->delivered), 15);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(c->commits[0], cursor_of(2));
    assert_int_equal(c->commit_time[0], T0 + 100 * MS);
    expect_committed(p, cursor_of(2));

    step_to(rt, 199 * MS);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    step_to(rt, 200 * MS); /* the straggler: pages 2 and 3 */
    assert_int_equal(TU_LOAD(&c->n_commits), 2);
    assert_int_equal(c->commits[1], cursor_of(4));
    assert_int_equal(c->commit_time[1], T0 + 200 * MS);
    expect_committed(p, cursor_of(4));
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));

    /* Later pages really did finish first. */
    for (i = 0; i < 16; i++) {
        if (c->order[i] == c->first[3] && pos_last_page_item == UINT64_MAX) {
            pos_last_page_item = i;
        }
        if (c->order[i] == c->first[0]) {
            pos_page0_item0 = i;
        }
    }
    assert_true(pos_last_page_item < pos_page0_item0);
    check_commits(c);
    expect_each_item_once(c);
    assert_int_equal(TU_LOAD(&c->timer_errors), 0);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* Threaded: a map stage on 4 workers, unordered; pages of one item (batch size 1). The item of
 * page 0 is held in its callback until every other item has been delivered: no commit may
 * happen before it goes on, and then the watermark jumps to the end in one commit. */
#define GATE_PAGES 40u

static void test_unordered_workers_hold_the_watermark_until_page_0_finishes(void **state) {
    fluxus_runtime *rt = tu_runtime(3);
    cctx *c = ctx_new(GATE_PAGES, NULL, 1, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_gate", 1);
    uint32_t map = 0;
    (void)state;

    c->items[0].action = ACT_GATE;
    TU_OK(fluxus_pipeline_add_map(&map, p, "gate", gate_map, c, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, 4));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    tu_run_expect(p, FLUXUS_OK);

    assert_int_equal(TU_LOAD(&c->gate_passed), 1);
    assert_int_equal(TU_LOAD(&c->gate_timed_out), 0);
    assert_int_equal(TU_LOAD(&c->gate_commits_seen), 0); /* 39 pages done, none committed */
    assert_int_equal(c->order[GATE_PAGES - 1], 0);       /* page 0 was delivered last */
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(c->commits[0], cursor_of(GATE_PAGES));
    assert_int_equal(c->commit_delivered[0], GATE_PAGES);
    check_commits(c);
    expect_committed(p, cursor_of(GATE_PAGES));
    expect_each_item_once(c);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Empty pages and FLUXUS_PULL_LATER
 * =========================================================================================== */

/* Helpers: a host-driven pipeline cursor source -> unordered async "hold" stage -> sink. */
static fluxus_pipeline *hold_pipeline(cctx *c, fluxus_runtime *rt, const char *name) {
    fluxus_pipeline *p = cursor_pipeline(c, rt, name, 8);
    uint32_t st = 0;
    TU_OK(fluxus_pipeline_add_async_map(&st, p, "hold", async_start, c, NULL));
    TU_OK(fluxus_stage_set_order(p, st, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    return p;
}

static void complete_page(cctx *c, uint32_t k) {
    uint32_t i;
    for (i = c->first[k]; i < c->first[k + 1]; i++) {
        TU_OK(complete(c, &c->items[i]));
    }
    drive(c->rt);
}

static void test_later_rereads_the_same_cursor_after_the_poll_interval(void **state) {
    uint32_t sizes[3] = {2, 3, 2};
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(3, sizes, 0, 0);
    fluxus_pipeline *p;
    (void)state;

    c->later[1] = 2; /* page 1 says "later" twice before it has data */
    p = hold_pipeline(c, rt, "cursor_later");
    TU_OK(fluxus_pipeline_set_poll_interval_us(p, 500));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    assert_int_equal(TU_LOAD(&c->n_reads), 2);
    assert_int_equal(c->read_cursor[0], cursor_of(0));
    assert_int_equal(c->read_cursor[1], cursor_of(1));
    complete_page(c, 0);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(c->commits[0], cursor_of(1));

    step_to(rt, 500 * US - 1); /* not polled again yet */
    assert_int_equal(TU_LOAD(&c->n_reads), 2);
    step_to(rt, 500 * US); /* the same cursor again: still later */
    assert_int_equal(TU_LOAD(&c->n_reads), 3);
    assert_int_equal(c->read_cursor[2], cursor_of(1));
    assert_int_equal(c->read_time[2], T0 + 500 * US);
    step_to(rt, 1000 * US); /* and again: now the page has items, and page 2 follows */
    assert_int_equal(TU_LOAD(&c->n_reads), 5);
    assert_int_equal(c->read_cursor[3], cursor_of(1));
    assert_int_equal(c->read_time[3], T0 + 1000 * US);
    assert_int_equal(c->read_cursor[4], cursor_of(2));
    assert_int_equal(TU_LOAD(&c->n_commits), 1); /* a "later" is not a page */

    complete_page(c, 2); /* page 1 is older: nothing moves */
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    complete_page(c, 1);
    assert_int_equal(TU_LOAD(&c->n_commits), 2);
    assert_int_equal(c->commits[1], cursor_of(3));
    expect_committed(p, cursor_of(3));
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    check_commits(c);
    expect_each_item_once(c);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* Empty pages (FLUXUS_PULL_ITEM with count 0) are pages: the source goes on reading, and the
 * watermark passes them with nothing delivered. */
static void test_empty_pages_are_read_past_and_advance_the_watermark(void **state) {
    /* page:            0  1  2  3  4  5 */
    uint32_t sizes[6] = {0, 0, 3, 0, 2, 0};
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(6, sizes, 0, 0);
    fluxus_pipeline *p = hold_pipeline(c, rt, "cursor_empty");
    (void)state;

    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    /* Without moving the clock: every page is read, pages 0 and 1 are committed with nothing
     * delivered, page 2's items are held. */
    if (TU_LOAD(&c->n_reads) != 6) {
        fail_msg("after an empty page the source read %llu page(s) in all, expected 6 (the "
                 "source stalls after an empty page?)",
                 (unsigned long long)TU_LOAD(&c->n_reads));
    }
    expect_reads_in_order(c);
    assert_int_equal(TU_LOAD(&c->delivered), 0);
    assert_int_equal(last_commit(c), cursor_of(2));
    expect_committed(p, cursor_of(2));

    complete_page(c, 4); /* page 2 is older: nothing moves */
    assert_int_equal(last_commit(c), cursor_of(2));
    /* Page 2: the watermark passes it, the empty page 3, page 4 and the empty last page 5. */
    complete_page(c, 2);
    assert_int_equal(last_commit(c), cursor_of(6));
    expect_committed(p, cursor_of(6));
    assert_int_equal(state_of(p), FLUXUS_STATE_FINISHED);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    check_commits(c);
    expect_each_item_once(c);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* A run whose first page is empty and last: one read, one commit. */
static void test_a_single_empty_last_page_commits_the_cursor_after_it(void **state) {
    uint32_t sizes[1] = {0};
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(1, sizes, 0, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_single_empty", 8);
    (void)state;

    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(TU_LOAD(&c->n_reads), 1);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(c->commits[0], cursor_of(1));
    expect_committed(p, cursor_of(1));
    check_commits(c);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Flat map: a page commits when all children of its inputs are finished
 * =========================================================================================== */

static void run_flat_map_children(int batch_form) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(3, NULL, 2, 1);
    fluxus_pipeline *p = cursor_pipeline(c, rt, batch_form ? "cursor_flat_batch" : "cursor_flat",
                                         4);
    uint32_t fm = 0, st = 0, i, j;
    fluxus_stage_stats fs;

    if (batch_form) {
        TU_OK(fluxus_pipeline_add_flat_map_batch(&fm, p, "children", children_flat_map_batch, c,
                                                 NULL));
    } else {
        TU_OK(fluxus_pipeline_add_flat_map(&fm, p, "children", children_flat_map, c, NULL));
    }
    TU_OK(fluxus_pipeline_add_async_map(&st, p, "hold", async_start, c, NULL));
    TU_OK(fluxus_stage_set_order(p, st, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);

    /* Every input was consumed (and destroyed), every child is held: nothing is committed. */
    tu_stage_stats(p, fm, &fs);
    assert_int_equal(fs.filtered, 6);
    for (i = 0; i < c->n_items; i++) {
        assert_int_equal(c->items[i].finished, 1);
        assert_int_equal(c->items[i].destroyed, 1);
        for (j = 0; j < CHILDREN; j++) {
            assert_true(child_of(c, i, j)->completion != 0);
        }
    }
    assert_int_equal(TU_LOAD(&c->n_commits), 0);
    expect_nothing_committed(p);

    /* Page 1's children all finish: page 0 still holds the watermark. */
    for (i = c->first[1]; i < c->first[2]; i++) {
        for (j = 0; j < CHILDREN; j++) {
            TU_OK(complete(c, child_of(c, i, j)));
        }
    }
    drive(rt);
    assert_int_equal(TU_LOAD(&c->delivered), 6);
    assert_int_equal(TU_LOAD(&c->n_commits), 0);

    /* Page 0: all children but the last one finish: still nothing. */
    for (i = c->first[0]; i < c->first[1]; i++) {
        for (j = 0; j < CHILDREN; j++) {
            if (i + 1 == c->first[1] && j + 1 == CHILDREN) {
                continue;
            }
            TU_OK(complete(c, child_of(c, i, j)));
        }
    }
    drive(rt);
    assert_int_equal(TU_LOAD(&c->delivered), 11);
    assert_int_equal(TU_LOAD(&c->n_commits), 0);
    expect_nothing_committed(p);

    /* The last child of page 0: pages 0 and 1 commit together. */
    TU_OK(complete(c, child_of(c, c->first[1] - 1, CHILDREN - 1)));
    drive(rt);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(c->commits[0], cursor_of(2));
    assert_int_equal(c->commit_delivered[0], 12);

    for (i = c->first[2]; i < c->first[3]; i++) {
        for (j = 0; j < CHILDREN; j++) {
            TU_OK(complete(c, child_of(c, i, j)));
        }
    }
    drive(rt);
    assert_int_equal(last_commit(c), cursor_of(3));
    expect_committed(p, cursor_of(3));
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    check_commits(c);
    expect_each_item_once(c);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

static void test_flat_map_page_commits_only_after_all_children_are_delivered(void **state) {
    (void)state;
    run_flat_map_children(0);
}

static void test_batch_flat_map_page_commits_only_after_all_children_are_delivered(void **state) {
    (void)state;
    run_flat_map_children(1);
}

/* =============================================================================================
 * Finished and unfinished ends
 * =========================================================================================== */

#define END_PAGES 40u
#define END_PER_PAGE 6u

/* Filtered, skipped (SKIP policy) and dead-lettered items finish their page like deliveries.
 * Whole pages of them (nothing delivered) commit too. Threaded, with an unordered 2-worker stage
 * and a batch sink. */
static void test_filtered_skipped_and_dead_lettered_items_count_as_finished(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    cctx *c = ctx_new(END_PAGES, NULL, END_PER_PAGE, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_ends", END_PER_PAGE);
    uint32_t filter = 0, skip = 0, dead = 0, i;
    uint64_t want_filtered = 0, want_skipped = 0, want_dead = 0;
    fluxus_pipeline_stats s;
    (void)state;

    for (i = 0; i < c->n_items; i++) {
        uint32_t k = c->items[i].page_index;
        uint32_t r = (uint32_t)(tu_mix64(i) % 6u);
        uint32_t a = r == 0 ? ACT_FILTER : r == 1 ? ACT_SKIP : r == 2 ? ACT_DEAD : ACT_PASS;
        if (k == 0 || k == 7) a = ACT_FILTER; /* whole pages that deliver nothing */
        if (k == 3) a = ACT_SKIP;
        if (k == 5 || k == END_PAGES - 1) a = ACT_DEAD;
        c->items[i].action = a;
        want_filtered += a == ACT_FILTER;
        want_skipped += a == ACT_SKIP;
        want_dead += a == ACT_DEAD;
    }
    TU_OK(fluxus_pipeline_add_filter(&filter, p, "filter", drop_filter, NULL, NULL));
    TU_OK(fluxus_pipeline_add_map(&skip, p, "skip", skip_map, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, skip, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_add_map(&dead, p, "dead", dead_map, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, dead, 2));
    TU_OK(fluxus_stage_set_order(p, dead, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_error_policy(p, dead, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_sink_batch(NULL, p, "sink", sink_batch, c, NULL));
    tu_run_expect(p, FLUXUS_OK);

    check_commits(c);
    assert_int_equal(last_commit(c), cursor_of(END_PAGES));
    expect_committed(p, cursor_of(END_PAGES));
    expect_each_item_once(c);
    tu_stats(p, &s);
    assert_int_equal(s.filtered, want_filtered);
    assert_int_equal(s.failed, want_skipped);
    assert_int_equal(s.dead_lettered, want_dead);
    assert_int_equal(TU_LOAD(&c->dl_calls), want_dead);
    assert_int_equal(TU_LOAD(&c->dl_wrong_status), 0);
    assert_int_equal(s.delivered, c->n_items - want_filtered - want_skipped - want_dead);
    for (i = 0; i < c->n_items; i++) {
        const citem *it = &c->items[i];
        assert_int_equal(it->destroyed, it->action == ACT_PASS ? 0 : 1);
    }
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* A cancelled item holds the watermark at its page for good, even when later pages finished. */
static void test_cancelled_item_holds_the_watermark_at_its_page(void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(4, NULL, 3, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_cancel", 4);
    uint32_t st = 0, i;
    fluxus_pipeline_stats s;
    (void)state;

    TU_OK(fluxus_pipeline_add_async_map(&st, p, "hold", async_start, c, NULL));
    TU_OK(fluxus_stage_set_order(p, st, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    assert_int_equal(TU_LOAD(&c->n_reads), 4);

    /* Pages 0, 2 and 3 finish; of page 1 only the first item does. */
    for (i = 0; i < c->n_items; i++) {
        if (c->items[i].page_index != 1 || i == c->first[1]) {
            TU_OK(complete(c, &c->items[i]));
        }
    }
    drive(rt);
    assert_int_equal(TU_LOAD(&c->delivered), 10);
    assert_int_equal(last_commit(c), cursor_of(1));
    expect_committed(p, cursor_of(1));

    TU_OK(fluxus_pipeline_cancel(p));
    drive(rt);
    TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_wait(p, 0));
    /* The late completions are refused; nothing moves. */
    TU_EXPECT(FLUXUS_ECANCELED, complete(c, &c->items[c->first[1] + 1]));
    drive(rt);
    assert_int_equal(last_commit(c), cursor_of(1));
    expect_committed(p, cursor_of(1));
    tu_stats(p, &s);
    assert_int_equal(s.cancelled, 2);
    /* In flight at the cancel: the host still owns them (their completion is refused). */
    assert_int_equal(c->items[c->first[1] + 1].destroyed, 0);
    assert_int_equal(c->items[c->first[1] + 2].destroyed, 0);
    check_commits(c);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* A fail-fast failure holds the watermark at the failed item's page. */
static void test_fail_fast_failure_holds_the_watermark_at_its_page(void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(6, NULL, 4, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_fail_fast", 4);
    uint32_t i;
    (void)state;

    c->items[c->first[3] + 2].action = ACT_FAST;
    TU_OK(fluxus_pipeline_add_map(NULL, p, "fast", fast_map, NULL, NULL)); /* FAIL_FAST */
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    TU_EXPECT(FLUXUS_EFAILED, fluxus_pipeline_wait(p, 0));
    check_commits(c);
    for (i = 0; i < TU_LOAD(&c->n_commits); i++) {
        assert_true(c->commits[i] <= cursor_of(3));
    }
    /* One task runs the pages in order: pages 0..2 were delivered before page 3 failed. */
    assert_int_equal(last_commit(c), cursor_of(3));
    expect_committed(p, cursor_of(3));
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* An item waiting for its retry holds its page; an async item that times out under the
 * dead-letter policy finishes its page (the host still owns it). */
static void test_retry_waits_hold_the_watermark_and_dead_lettered_timeouts_finish_the_page(
    void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(3, NULL, 3, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_retry_timeout", 4);
    uint32_t retry = 0, st = 0, i;
    citem *retried = &c->items[c->first[0] + 1], *hung = &c->items[c->first[1]];
    fluxus_stage_stats ss;
    (void)state;

    for (i = 0; i < c->n_items; i++) {
        c->items[i].delay_ns = 100 * US;
    }
    retried->action = ACT_RETRY;
    hung->action = ACT_HANG;
    c->async_mode = ASYNC_TIMER;
    c->dl_status = FLUXUS_ETIMEDOUT;
    TU_OK(fluxus_pipeline_add_map(&retry, p, "flaky", retry_map, NULL, NULL));
    TU_OK(fluxus_stage_set_retry(p, retry, 3, FLUXUS_BACKOFF_CONSTANT, 1000, 1000));
    TU_OK(fluxus_pipeline_add_async_map(&st, p, "service", async_start, c, NULL));
    TU_OK(fluxus_stage_set_order(p, st, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_timeout_us(p, st, 10000));
    TU_OK(fluxus_stage_set_error_policy(p, st, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);

    step_to(rt, 100 * US); /* all but the retried and the hung item are delivered */
    assert_int_equal(TU_LOAD(&c->delivered), 7);
    assert_int_equal(TU_LOAD(&c->n_commits), 0);
    tu_stage_stats(p, retry, &ss);
    assert_int_equal(ss.retry_waiting, 1);
    step_to(rt, 1000 * US); /* the retry passes the map and starts its call */
    assert_int_equal(TU_LOAD(&c->n_commits), 0);
    step_to(rt, 1100 * US); /* delivered: page 0 commits; page 1 waits for its hung call */
    assert_int_equal(TU_LOAD(&c->delivered), 8);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(c->commits[0], cursor_of(1));
    step_to(rt, 10 * MS - 1);
    assert_int_equal(TU_LOAD(&c->n_commits), 1);
    assert_int_equal(TU_LOAD(&c->dl_calls), 0);
    step_to(rt, 10 * MS); /* the hung call times out and is dead-lettered: pages 1 and 2 */
    assert_int_equal(TU_LOAD(&c->dl_calls), 1);
    assert_int_equal(TU_LOAD(&c->dl_wrong_status), 0);
    assert_int_equal(TU_LOAD(&c->n_commits), 2);
    assert_int_equal(c->commits[1], cursor_of(3));
    expect_committed(p, cursor_of(3));
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(hung->destroyed, 0); /* timed out: the host still owns it */
    assert_int_equal(retried->retried, 2);
    check_commits(c);
    expect_each_item_once(c);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}

/* Two calls of page 0 hang past their timeout. The host's dead-letter callback for the first
 * one completes the second one late: either accepted (fluxus had not timed it out yet: it goes
 * on) or refused with FLUXUS_ETIMEDOUT, which per the header means "the host releases it". In
 * the second case fluxus must not use the item again (no page_of, no dead-letter call): the
 * host may have freed it. A threaded host hits the same window when a
 * late completion races the worker that settles the timeouts. */
static void late_release_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    cctx *c = (cctx *)user;
    citem *it = item_of(item);
    uint32_t i;
    (void)f;
    if (TU_LOAD(&it->released)) {
        TU_ADD(&touched_after_release, 1);
    }
    TU_ADD(&c->dl_calls, 1);
    TU_ADD(&it->finished, 1);
    for (i = 0; i < c->n_items; i++) {
        citem *other = &c->items[i];
        if (other != it && other->action == ACT_HANG && TU_LOAD(&other->finished) == 0 &&
            TU_LOAD(&other->released) == 0) {
            int32_t rc = complete(c, other);
            if (rc == FLUXUS_ETIMEDOUT) {
                TU_STORE(&other->released, 1); /* a real host would free it here */
                TU_STORE(&other->finished, 1); /* ended as a timeout; the host is done with it */
            } else if (rc != FLUXUS_OK) {
                /* FLUXUS_OK is right too: fluxus handles timeouts one at a time, so the other
                 * item may not have been timed out yet; it then goes on, owned by fluxus. */
                TU_ADD(&c->timer_errors, 1);
            }
        }
    }
}

static void test_no_page_of_after_a_late_completion_was_refused_with_etimedout(void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(2, NULL, 2, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_late_release", 4);
    uint32_t st = 0;
    (void)state;

    TU_STORE(&touched_after_release, 0);
    c->items[0].action = ACT_HANG;
    c->items[1].action = ACT_HANG;
    c->items[2].delay_ns = c->items[3].delay_ns = 100 * US;
    c->async_mode = ASYNC_TIMER;
    TU_OK(fluxus_pipeline_add_async_map(&st, p, "service", async_start, c, NULL));
    TU_OK(fluxus_stage_set_order(p, st, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_timeout_us(p, st, 10000));
    TU_OK(fluxus_stage_set_error_policy(p, st, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_set_dead_letter(p, late_release_dead_letter, c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    step_to(rt, 10 * MS); /* both time out in the same collection */
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(TU_LOAD(&c->timer_errors), 0);
    assert_true(TU_LOAD(&c->items[0].released) + TU_LOAD(&c->items[1].released) <= 1);
    if (TU_LOAD(&touched_after_release) != 0) {
        fail_msg("fluxus used a timed-out item %llu time(s) (page_of / dead-letter callback) "
                 "after its late completion had been refused with FLUXUS_ETIMEDOUT, i.e. after "
                 "the host was told to release it",
                 (unsigned long long)TU_LOAD(&touched_after_release));
    }
    expect_committed(p, cursor_of(2));
    tu_free_all(p, rt);
    ctx_free(c);
}

/* =============================================================================================
 * Restart: run 1 is cancelled midway, run 2 resumes from its committed cursor
 * =========================================================================================== */

#define RESTART_PAGES 64u
#define RESTART_PER_PAGE 8u

/* Runs the pipeline from `start_page`; returns what wait() returned. */
static int32_t run_restart(cctx *c, const char *name, uint32_t start_page,
                           uint64_t cancel_after) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p;
    uint32_t map = 0;
    int32_t rc;
    ctx_new_run(c, start_page);
    c->cancel_after = cancel_after;
    c->cancel_needs_commit = 1;
    p = cursor_pipeline(c, rt, name, RESTART_PER_PAGE);
    TU_OK(fluxus_pipeline_add_map(&map, p, "jitter", jitter_map, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, map, 3));
    TU_OK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    rc = tu_wait(p);
    check_commits(c);
    tu_check_conservation(p, NULL, 0);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
    return rc;
}

static void test_restart_from_the_committed_cursor_repeats_nothing_before_it_and_loses_nothing(
    void **state) {
    cctx *c = ctx_new(RESTART_PAGES, NULL, RESTART_PER_PAGE, 0);
    uint32_t n = c->n_items, i, w1;
    uint32_t *delivered1 = (uint32_t *)calloc(n, sizeof(uint32_t));
    uint32_t *mapped1 = (uint32_t *)calloc(n, sizeof(uint32_t));
    uint64_t committed1;
    (void)state;
    assert_non_null(delivered1);
    assert_non_null(mapped1);

    /* Run 1: cancelled from the sink after about 40 % of the items, once something has been
     * committed. The sink can only see a commit once the first page has ended; when the worker
     * holding that page is stalled until every other item has been delivered (a VM stall in a
     * run of under a millisecond), the first commit comes with the last delivery and the run
     * ends normally instead. That is correct behaviour, so run 1 is repeated until it is
     * cancelled (it nearly always is the first time). */
    for (i = 0; i < 10; i++) {
        int32_t rc = run_restart(c, "cursor_run1", 0, (uint64_t)n * 2 / 5);
        if (rc == FLUXUS_ECANCELED) break;
        assert_int_equal(rc, FLUXUS_OK); /* the stall case: it ran to the end, uncancelled */
        assert_int_equal(TU_LOAD(&c->cancelled_at), 0);
    }
    assert_true(i < 10);
    assert_true(TU_LOAD(&c->cancelled_at) > 0);
    committed1 = last_commit(c);
    w1 = (uint32_t)((committed1 - CBASE) / CSTEP);
    assert_true(w1 > 0);
    assert_true(w1 < RESTART_PAGES);
    for (i = 0; i < n; i++) {
        delivered1[i] = c->items[i].delivered;
        mapped1[i] = c->items[i].mapped;
    }

    /* Run 2: from run 1's committed cursor, to the end. */
    TU_EXPECT(FLUXUS_OK, run_restart(c, "cursor_run2", w1, 0));
    expect_reads_in_order(c); /* it read nothing before the committed cursor */
    assert_int_equal(last_commit(c), cursor_of(RESTART_PAGES));
    for (i = 0; i < n; i++) {
        const citem *it = &c->items[i];
        uint32_t total = delivered1[i] + it->delivered;
        if (it->page_index < w1) {
            /* before the committed cursor: processed and delivered exactly once, by run 1 */
            if (total != 1 || mapped1[i] + it->mapped != 1 || it->read != 0) {
                fail_msg("item %u (page %u < %u): delivered %u + %u, mapped %u + %u, read again %u",
                         i, it->page_index, w1, delivered1[i], it->delivered, mapped1[i],
                         it->mapped, it->read);
            }
        } else if (total < 1 || it->delivered != 1) {
            fail_msg("item %u (page %u >= %u): delivered %u by run 1, %u by run 2", i,
                     it->page_index, w1, delivered1[i], it->delivered);
        }
    }
    free(delivered1);
    free(mapped1);
    ctx_free(c);
}

/* =============================================================================================
 * Page size caps: batch size and a source rate limiter (records model: cursor = offset)
 * =========================================================================================== */

#define RECORDS 50u
#define RECORDS_PAGE 7u /* the host would return 7 records per read if it could */

typedef struct rctx {
    fluxus_runtime *rt;
    citem rec[RECORDS];
    uint64_t n_reads;
    uint32_t capacity[LOG_MAX];
    uint64_t cursor[LOG_MAX];
    uint64_t n_commits;
    uint64_t commits[LOG_MAX];
    uint64_t errors;
    uint64_t delivered;
} rctx;

static int32_t read_records(void *user, uint64_t cursor, uint64_t *items, uint32_t capacity,
                            uint32_t *count, uint64_t *next_cursor) {
    rctx *r = (rctx *)user;
    uint64_t i = r->n_reads++;
    uint32_t n = RECORDS_PAGE, j;
    if (i < LOG_MAX) {
        r->capacity[i] = capacity;
        r->cursor[i] = cursor;
    }
    if (cursor > RECORDS) {
        TU_ADD(&r->errors, 1);
        return READ_ERROR;
    }
    if (n > capacity) n = capacity;
    if (n > RECORDS - cursor) n = (uint32_t)(RECORDS - cursor);
    for (j = 0; j < n; j++) {
        citem *it = &r->rec[cursor + j];
        it->page = cursor; /* written before fluxus sees the item */
        TU_ADD(&it->read, 1);
        items[j] = word_of(it);
    }
    *count = n;
    *next_cursor = cursor + n;
    return cursor + n == RECORDS ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static void commit_records(void *user, uint64_t cursor) {
    rctx *r = (rctx *)user;
    uint64_t i = TU_LOAD(&r->n_commits), j;
    if (i < LOG_MAX) r->commits[i] = cursor;
    if (i > 0 && cursor < r->commits[i - 1]) TU_ADD(&r->errors, 1);
    for (j = 0; j < cursor && j < RECORDS; j++) {
        if (TU_LOAD(&r->rec[j].delivered) != 1) TU_ADD(&r->errors, 1);
    }
    TU_STORE(&r->n_commits, i + 1);
}

static int32_t record_sink(void *user, uint64_t item) {
    rctx *r = (rctx *)user;
    TU_ADD(&item_of(item)->delivered, 1);
    TU_ADD(&r->delivered, 1);
    return 0;
}

static void run_capped(uint32_t batch, int limited) {
    fluxus_runtime *rt = vruntime();
    rctx *r = (rctx *)calloc(1, sizeof *r);
    fluxus_pipeline *p = tu_pipeline(rt, "cursor_records", NULL);
    fluxus_rate_limiter *l = NULL;
    uint32_t cap = limited ? 3u : batch, rounds = 0;
    uint64_t i, committed = 0;
    assert_non_null(r);
    r->rt = rt;

    TU_OK(fluxus_pipeline_set_batch_size(p, batch));
    TU_OK(fluxus_pipeline_set_cursor_source(p, "records", 0, read_records, page_of,
                                            commit_records, r, NULL));
    if (limited) {
        TU_OK(fluxus_rate_limiter_new(&l, rt, 1000.0, 3)); /* burst 3: at most 3 per read */
        TU_OK(fluxus_pipeline_set_source_rate_limiter(p, l));
        TU_OK(fluxus_rate_limiter_free(l));
    }
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", record_sink, r, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    while (state_of(p) != FLUXUS_STATE_FINISHED) {
        TU_OK(fluxus_runtime_advance_clock(rt, 1 * MS));
        drive(rt);
        if (++rounds > 10000u) fail_msg("the capped source never finished");
    }
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    assert_int_equal(TU_LOAD(&r->errors), 0);
    assert_true(r->n_reads >= (RECORDS + cap - 1) / cap);
    for (i = 0; i < r->n_reads && i < LOG_MAX; i++) {
        assert_true(r->capacity[i] >= 1);
        assert_true(r->capacity[i] <= cap);
    }
    for (i = 0; i < RECORDS; i++) {
        assert_int_equal(r->rec[i].delivered, 1);
        assert_int_equal(r->rec[i].read, 1);
        assert_true(r->rec[i].page <= i && i < r->rec[i].page + cap);
    }
    TU_OK(fluxus_pipeline_get_committed_cursor(&committed, p));
    assert_int_equal(committed, RECORDS);
    assert_int_equal(r->commits[r->n_commits - 1], RECORDS);
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    free(r);
}

static void test_batch_size_caps_a_page_and_commits_follow_the_hosts_cursors(void **state) {
    (void)state;
    run_capped(4, 0);
}

static void test_source_rate_limiter_caps_a_page_further(void **state) {
    (void)state;
    run_capped(16, 1);
}

/* =============================================================================================
 * Misuse
 * =========================================================================================== */

static uint64_t user_frees;

static void count_user_free(void *user) {
    (void)user;
    TU_ADD(&user_frees, 1);
}

static void test_misuse_null_callbacks_second_source_and_after_start(void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(3, NULL, 2, 0);
    fluxus_pipeline *p = tu_pipeline(rt, "cursor_misuse", NULL);
    fluxus_pipeline *q = tu_pipeline(rt, "cursor_second", NULL);
    fluxus_pipeline *r = tu_pipeline(rt, "cursor_after_push", NULL);
    uint64_t got = 0;
    (void)state;
    c->rt = rt;
    c->p = p;
    TU_STORE(&user_frees, 0);

    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_set_cursor_source(NULL, "s", 0, read_page, page_of,
                                                               commit, c, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_set_cursor_source(p, "s", 0, NULL, page_of, commit, c, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_set_cursor_source(p, "s", 0, read_page, NULL, commit, c, NULL));
    TU_EXPECT(FLUXUS_EINVAL,
              fluxus_pipeline_set_cursor_source(p, "s", 0, NULL, NULL, NULL, c, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_get_committed_cursor(&got, p)); /* still no source */

    /* `commit` may be NULL: poll the committed cursor instead. */
    TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", cursor_of(0), read_page, page_of, NULL, c,
                                            count_user_free));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_cursor_source(p, "again", cursor_of(0),
                                                               read_page, page_of, commit, c,
                                                               NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source(p, "pull", one_pull, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_push_source(p, "push"));

    TU_OK(fluxus_pipeline_set_pull_source(q, "pull", one_pull, NULL, NULL));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_cursor_source(q, "s", 0, read_page, page_of,
                                                               commit, c, NULL));
    TU_OK(fluxus_pipeline_set_push_source(r, "push"));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_cursor_source(r, "s", 0, read_page, page_of,
                                                               commit, c, NULL));

    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_pipeline_set_cursor_source(p, "late", 0, read_page, page_of,
                                                               commit, c, NULL));
    drive(rt);
    TU_EXPECT(FLUXUS_OK, fluxus_pipeline_wait(p, 0));
    expect_committed(p, cursor_of(3));
    assert_int_equal(TU_LOAD(&c->n_commits), 0); /* no callback */
    assert_int_equal(TU_LOAD(&c->delivered), 6);
    assert_int_equal(TU_LOAD(&user_frees), 0);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(TU_LOAD(&user_frees), 1); /* once, when the pipeline is freed */
    TU_OK(fluxus_pipeline_free(q));
    TU_OK(fluxus_pipeline_free(r));
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(TU_LOAD(&user_frees), 1);
    ctx_free(c);
}

/* A read error stops the pipeline with FLUXUS_ESOURCE; what was finished stays committed and
 * the failed page is not passed. */
static void test_read_error_stops_the_pipeline_and_keeps_the_watermark(void **state) {
    fluxus_runtime *rt = vruntime();
    cctx *c = ctx_new(4, NULL, 2, 0);
    fluxus_pipeline *p = cursor_pipeline(c, rt, "cursor_read_error", 2);
    uint32_t i;
    (void)state;

    c->error_page = 2;
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "sink", sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    drive(rt);
    TU_EXPECT(FLUXUS_ESOURCE, fluxus_pipeline_wait(p, 0));
    assert_int_equal(TU_LOAD(&c->n_reads), 3);
    assert_int_equal(c->read_cursor[2], cursor_of(2));
    check_commits(c);
    for (i = 0; i < TU_LOAD(&c->n_commits); i++) {
        assert_true(c->commits[i] <= cursor_of(2));
    }
    /* One task: pages 0 and 1 were delivered before page 2 was read. */
    expect_committed(p, cursor_of(2));
    tu_check_conservation(p, NULL, 0);
    tu_free_all(p, rt);
    ctx_free(c);
}


/* ----- plain-value pages for the error-route and reduce checks: page k holds k*100+1..k*100+8 */

static int32_t rv_read(void *user, uint64_t cursor, uint64_t *items, uint32_t capacity,
                       uint32_t *count, uint64_t *next_cursor) {
    uint32_t i;
    (void)user;
    (void)capacity;
    for (i = 0; i < 8; i++) items[i] = cursor * 100 + i + 1;
    *count = 8;
    *next_cursor = cursor + 1;
    return cursor == 9 ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}
static uint64_t rv_page(void *user, uint64_t item) {
    (void)user;
    return item / 100;
}
static void rv_commit(void *user, uint64_t cursor) {
    TU_STORE((uint64_t *)user, cursor);
}
static int32_t rv_fail_305(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in == 305) return 9;
    *out = in;
    return 0;
}
static int32_t rv_sink(void *user, uint64_t item) {
    (void)item;
    TU_ADD((uint64_t *)user, 1);
    return 0;
}
static int32_t rv_fold(void *user, uint64_t *acc, int32_t first, uint64_t item) {
    (void)user;
    (void)first;
    *acc += item;
    return 0;
}

/* Proves: an item an error route hands to another pipeline is finished for the watermark (it
 * is dead-lettered here), so the cursor still reaches the end; regression: the page stayed
 * open for good and every restart re-read it and all after it. */
static void test_error_route_to_another_pipeline_finishes_its_page(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *dl, *p;
    uint64_t committed = 0, last = 0, routed = 0, stored = 0;
    uint32_t m;
    (void)state;
    TU_OK(fluxus_pipeline_new(&dl, rt, "dead-letters"));
    TU_OK(fluxus_pipeline_set_push_source(dl, "in"));
    TU_OK(fluxus_pipeline_add_sink(NULL, dl, "kept", rv_sink, &routed, NULL));
    TU_OK(fluxus_pipeline_start(dl));
    TU_OK(fluxus_pipeline_new(&p, rt, "main"));
    TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", 0, rv_read, rv_page, rv_commit, &last,
                                            NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "m", rv_fail_305, NULL, NULL));
    TU_OK(fluxus_stage_set_error_route(p, m, dl));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "store", rv_sink, &stored, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    TU_OK(fluxus_pipeline_get_committed_cursor(&committed, p));
    assert_int_equal(committed, 10);
    assert_int_equal(TU_LOAD(&last), 10);
    assert_int_equal(stored, 79);
    TU_OK(fluxus_pipeline_close_input(dl));
    TU_OK(tu_wait(dl));
    assert_int_equal(routed, 1);
    printf("  error route from a cursor source: committed %llu, 1 item routed\n",
           (unsigned long long)committed);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_pipeline_free(dl));
    TU_OK(fluxus_runtime_free(rt));
}

/* Proves: a reduce stage behind a cursor source is refused at start (its inputs end when
 * folded, so the cursor would commit pages whose results were not delivered yet). */
static void test_reduce_after_a_cursor_source_is_refused(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p;
    uint64_t last = 0, stored = 0;
    (void)state;
    TU_OK(fluxus_pipeline_new(&p, rt, "reduce"));
    TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", 0, rv_read, rv_page, rv_commit, &last,
                                            NULL));
    TU_OK(fluxus_pipeline_add_reduce(NULL, p, "sum", rv_fold, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "store", rv_sink, &stored, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_start(p));
    assert_non_null(strstr(fluxus_last_error_message(), "cannot follow a cursor source"));
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_route_to_another_pipeline_finishes_its_page),
        cmocka_unit_test(test_reduce_after_a_cursor_source_is_refused),
        cmocka_unit_test(
            test_commits_cover_only_finished_items_and_end_at_the_cursor_after_the_last_page),
        cmocka_unit_test(
            test_committed_cursor_is_einval_for_other_sources_and_enotfound_before_a_commit),
        cmocka_unit_test(test_unordered_async_watermark_waits_for_the_oldest_page_then_jumps),
        cmocka_unit_test(test_unordered_workers_hold_the_watermark_until_page_0_finishes),
        cmocka_unit_test(test_later_rereads_the_same_cursor_after_the_poll_interval),
        cmocka_unit_test(test_empty_pages_are_read_past_and_advance_the_watermark),
        cmocka_unit_test(test_a_single_empty_last_page_commits_the_cursor_after_it),
        cmocka_unit_test(test_flat_map_page_commits_only_after_all_children_are_delivered),
        cmocka_unit_test(test_batch_flat_map_page_commits_only_after_all_children_are_delivered),
        cmocka_unit_test(test_filtered_skipped_and_dead_lettered_items_count_as_finished),
        cmocka_unit_test(test_cancelled_item_holds_the_watermark_at_its_page),
        cmocka_unit_test(test_fail_fast_failure_holds_the_watermark_at_its_page),
        cmocka_unit_test(
            test_retry_waits_hold_the_watermark_and_dead_lettered_timeouts_finish_the_page),
        cmocka_unit_test(test_no_page_of_after_a_late_completion_was_refused_with_etimedout),
        cmocka_unit_test(
            test_restart_from_the_committed_cursor_repeats_nothing_before_it_and_loses_nothing),
        cmocka_unit_test(test_batch_size_caps_a_page_and_commits_follow_the_hosts_cursors),
        cmocka_unit_test(test_source_rate_limiter_caps_a_page_further),
        cmocka_unit_test(test_misuse_null_callbacks_second_source_and_after_start),
        cmocka_unit_test(test_read_error_stops_the_pipeline_and_keeps_the_watermark),
    };
    return TU_RUN_GROUP(tests);
}
