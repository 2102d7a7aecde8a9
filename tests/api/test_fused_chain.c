/*
 * test_fused_chain.c — fused runs of per-item map / filter / sink stages (no timeout, no cache,
 * no cursor source) run item by item through an unrolled chain of up to four stages (longer runs
 * are split into several chains) instead of stage by stage over a batch. One batch in 64 (the
 * first of every worker among them) still takes the stage-by-stage path, so every test here
 * moves many batches (FC_N items): most items go through the chains, the first batch of each
 * worker stage by stage; both paths must give exactly the same results.
 *
 * The tests drive a small model: item idx (the low 32 bits of the item, or of the value a heap
 * item points to) meets at every stage a fate decided by idx alone (a map or filter or sink that
 * fails for idx % m == r, a filter that drops idx % m == r), and every map adds its own tag bit
 * above bit 32 (adding, so a map run twice or skipped shows). From the model each test knows, per
 * stage, the exact in / out / filtered / failed / dead-lettered / routed / retries counters and
 * the number of callback calls, which items end where and with which tags, the delivered sequence
 * (compared through a hash) and the pipeline totals; it checks all of them, the per-stage balance
 *   in + spawned == out + filtered + failed + dead_lettered + cancelled + routed,
 * that every item ended exactly once (item destructor, sink, dead letters), and what the
 * dead-letter callback was told (stage name and index, status, message, attempts, item).
 * Callbacks never assert (they run on fluxus threads): they count problems and the test thread
 * asserts.
 */
#include "test_util.h"

#ifndef FC_N
#define FC_N 30000u /* ~117 batches of 256: over 100 of them run through the chains */
#endif
#define FC_WORKERS 4u
#define FC_MAX_STAGES 12u
#define FC_IDX(v) ((v)&0xFFFFFFFFull)
#define FC_TAG(j) (1ull << (32 + (j)))
#define FC_TAG_FLAT (1ull << 62) /* items emitted by the fan-out flat map */
#define FC_BOX_MAGIC 0xF1C4A1B0C5EEDull

enum { FC_MAP = 0, FC_FILTER = 1, FC_SINK = 2 };

/* How an item ends (the model). */
enum {
    FC_END_DELIVERED = 0, /* the main sink accepted it */
    FC_END_FILTERED,      /* a filter dropped it */
    FC_END_FAILED,        /* failed under FLUXUS_ERROR_SKIP */
    FC_END_DEAD,          /* handed to the dead-letter callback */
    FC_END_BRANCH,        /* went down its stage's error branch to a quarantine sink */
    FC_END_ROUTE          /* handed to another pipeline by an error route */
};

typedef struct fc_harness fc_harness;

typedef struct fc_stage {
    /* ----- configuration (set by the test) ----- */
    int kind;
    uint32_t fail_mod, fail_rem;           /* the callback fails when idx % fail_mod == fail_rem */
    uint32_t drop_mod, drop_rem;           /* a filter drops idx % drop_mod == drop_rem */
    uint32_t transient_mod, transient_rem; /* the first attempt fails (a retrying stage) */
    int32_t policy;                        /* FLUXUS_ERROR_SKIP (fc_init) or DEAD_LETTER */
    uint64_t timeout_us;                   /* a stage timeout: not a chain stage */
    uint32_t slow_mod, slow_rem;           /* the callback overruns the timeout (it moves the
                                              runtime's virtual clock past it) */
    uint32_t workers;                      /* > 1: its own ordered task, not fused */
    uint32_t retry_attempts;               /* > 1: fluxus_stage_set_retry() */
    int error_branch;                      /* failures go down an error branch */
    fluxus_pipeline *error_route;          /* failures go to this pipeline */
    /* ----- filled in when the pipeline is built ----- */
    fc_harness *h;
    uint32_t pos;        /* position among the harness stages */
    uint32_t index;      /* fluxus stage index */
    uint32_t tag_no;     /* maps: the tag bit it adds */
    uint64_t tags_in;    /* tags every input carries */
    int32_t status;      /* what the callback returns when it fails */
    uint32_t quarantine; /* error branch: the quarantine sink's stage index */
    uint32_t *attempts;  /* per idx: calls so far (transient failures) */
    char name[24];
    /* ----- observed (atomics) ----- */
    uint64_t calls, bad_input, dead_seen, dead_bad, msg_mismatch, attempts_bad;
    int msg_set;
    char msg[96];
    /* ----- expected (the model) ----- */
    uint64_t e_in, e_out, e_filtered, e_failed, e_dead, e_routed, e_retries, e_calls;
    uint64_t e_timed_out;
} fc_stage;

typedef struct fc_box {
    uint64_t v;
    uint64_t magic;
} fc_box;

struct fc_harness {
    /* configuration */
    uint32_t nstages;
    fc_stage st[FC_MAX_STAGES];
    int pointers;          /* items are fc_box pointers (heap), values otherwise */
    int push;              /* push source (queue in front of the first stage) instead of pull */
    int cursor;            /* resumable cursor source (no chain at all) instead of pull */
    int fanout;            /* a flat map first: each source item i becomes 2i and 2i+1 */
    uint32_t batch;        /* batch size (0: default) */
    int reordered;         /* retries reorder: check the order of never-retried items only */
    uint64_t cancel_after; /* the sink cancels the pipeline after this many deliveries */
    int check_interleave;  /* stage 1 sees the item stage 0 just handled (the chain ran) */
    uint64_t src_n;        /* source items */
    /* runtime */
    fluxus_pipeline *p;
    fluxus_runtime *rt;
    fluxus_pipeline *route_target; /* the error route's pipeline, if any */
    uint32_t flat_index;
    uint64_t n;      /* idx domain: src_n, or 2 * src_n with the fan-out */
    uint64_t next;   /* pull source */
    uint64_t pushed; /* push source */
    uint64_t commits, committed, commit_errors; /* cursor source */
    pthread_mutex_t mu;
    uint32_t *delivered, *freed, *dead, *quarantined;
    uint64_t delivered_count, hash, last_plus1, order_errors, first_order_error;
    uint64_t bad_free, bad_sink, bad_quarantine, bad_box, bad_flat, inputs_freed;
    uint64_t allocs, frees;
    uint64_t last0, interleaved;
    /* expected */
    uint64_t e_delivered, e_hash, e_branch, e_route;
};

/* ----- items: values or heap boxes ----- */

static uint64_t fc_val(fc_harness *h, uint64_t item) {
    if (h->pointers) {
        const fc_box *b = (const fc_box *)(uintptr_t)item;
        if (b == NULL || b->magic != FC_BOX_MAGIC) {
            TU_ADD(&h->bad_box, 1);
            return UINT64_MAX;
        }
        return b->v;
    }
    return item;
}

static uint64_t fc_make(fc_harness *h, uint64_t v) {
    if (h->pointers) {
        fc_box *b = (fc_box *)malloc(sizeof *b);
        if (b == NULL) {
            abort();
        }
        b->v = v;
        b->magic = FC_BOX_MAGIC;
        TU_ADD(&h->allocs, 1);
        return (uint64_t)(uintptr_t)b;
    }
    return v;
}

static void fc_release(fc_harness *h, uint64_t item) {
    if (h->pointers) {
        fc_box *b = (fc_box *)(uintptr_t)item;
        b->magic = 0;
        free(b);
        TU_ADD(&h->frees, 1);
    }
}

/* ----- the model ----- */

static int fc_hit(uint64_t idx, uint32_t mod, uint32_t rem) {
    return mod != 0 && idx % mod == rem;
}

static uint64_t fc_flat_tag(const fc_harness *h) {
    return h->fanout ? FC_TAG_FLAT : 0;
}

/* Ends item idx where the model says; *at receives the stage position. */
static int fc_fate(const fc_harness *h, uint64_t idx, uint32_t *at) {
    uint32_t s;
    for (s = 0; s < h->nstages; s++) {
        const fc_stage *st = &h->st[s];
        *at = s;
        if (fc_hit(idx, st->fail_mod, st->fail_rem) ||
            (st->retry_attempts <= 1 && fc_hit(idx, st->transient_mod, st->transient_rem)) ||
            fc_hit(idx, st->slow_mod, st->slow_rem)) {
            if (st->error_branch)
                return FC_END_BRANCH;
            if (st->error_route != NULL)
                return FC_END_ROUTE;
            return st->policy == FLUXUS_ERROR_DEAD_LETTER ? FC_END_DEAD : FC_END_FAILED;
        }
        if (st->kind == FC_FILTER && fc_hit(idx, st->drop_mod, st->drop_rem)) {
            return FC_END_FILTERED;
        }
    }
    *at = h->nstages - 1;
    return FC_END_DELIVERED;
}

/* The tags an item carries when it ends at stage `at` (a map that overran its timeout fails the
 * item it returned). */
static uint64_t fc_end_tags(const fc_harness *h, uint64_t idx, uint32_t at) {
    const fc_stage *st = &h->st[at];
    uint64_t tags = st->tags_in + fc_flat_tag(h);
    if (st->kind == FC_MAP && !fc_hit(idx, st->fail_mod, st->fail_rem) &&
        fc_hit(idx, st->slow_mod, st->slow_rem))
        tags += FC_TAG(st->tag_no);
    return tags;
}

/* Was idx ever retried (retried items may come out after later ones)? */
static int fc_retried(const fc_harness *h, uint64_t idx) {
    uint32_t s, at = 0;
    int fate = fc_fate(h, idx, &at);
    (void)fate;
    for (s = 0; s <= at; s++) {
        const fc_stage *st = &h->st[s];
        if (st->retry_attempts > 1 && (fc_hit(idx, st->transient_mod, st->transient_rem) ||
                                       fc_hit(idx, st->fail_mod, st->fail_rem)))
            return 1;
    }
    return 0;
}

static void fc_model(fc_harness *h) {
    uint64_t idx;
    uint32_t s;
    h->e_delivered = h->e_branch = h->e_route = 0;
    h->e_hash = 0;
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        st->e_in = st->e_out = st->e_filtered = st->e_failed = st->e_dead = st->e_routed = 0;
        st->e_retries = st->e_calls = st->e_timed_out = 0;
    }
    for (idx = 0; idx < h->n; idx++) {
        uint32_t at = 0;
        int fate = fc_fate(h, idx, &at);
        for (s = 0; s <= at; s++) {
            fc_stage *st = &h->st[s];
            int perm = fc_hit(idx, st->fail_mod, st->fail_rem);
            st->e_in++;
            if (!perm && fc_hit(idx, st->slow_mod, st->slow_rem))
                st->e_timed_out++;
            st->e_calls++;
            if (st->retry_attempts > 1) {
                if (perm) {
                    st->e_retries += st->retry_attempts - 1;
                    st->e_calls += st->retry_attempts - 1;
                } else if (fc_hit(idx, st->transient_mod, st->transient_rem)) {
                    st->e_retries++;
                    st->e_calls++;
                }
            }
            if (s < at) {
                st->e_out++;
                continue;
            }
            switch (fate) {
                case FC_END_DELIVERED:
                    st->e_out++;
                    h->e_delivered++;
                    h->e_hash = tu_mix64(h->e_hash ^ (idx + st->tags_in + fc_flat_tag(h)));
                    break;
                case FC_END_FILTERED:
                    st->e_filtered++;
                    break;
                case FC_END_FAILED:
                    st->e_failed++;
                    break;
                case FC_END_DEAD:
                    st->e_dead++;
                    break;
                case FC_END_BRANCH:
                    st->e_routed++;
                    h->e_branch++;
                    break;
                default: /* FC_END_ROUTE: counted dead-lettered here, admitted by the target */
                    st->e_dead++;
                    h->e_route++;
                    break;
            }
        }
    }
}

/* ----- callbacks ----- */

/* Checks an input's tags and returns its idx (UINT64_MAX if wrong). */
static uint64_t fc_input(fc_stage *st, uint64_t item) {
    fc_harness *h = st->h;
    uint64_t v = fc_val(h, item);
    if (v == UINT64_MAX)
        return UINT64_MAX;
    if (v - FC_IDX(v) != st->tags_in + fc_flat_tag(h) || FC_IDX(v) >= h->n) {
        TU_ADD(&st->bad_input, 1);
        return UINT64_MAX;
    }
    return FC_IDX(v);
}

/* Whether the callback of st fails for idx on this call (counts the attempt). */
static int fc_fails(fc_stage *st, uint64_t idx) {
    int fail = fc_hit(idx, st->fail_mod, st->fail_rem);
    if (st->transient_mod != 0 && fc_hit(idx, st->transient_mod, st->transient_rem)) {
        uint32_t a = TU_ADD(&st->attempts[idx], 1);
        if (a == 1)
            fail = 1;
    }
    return fail;
}

static void fc_note_interleave(fc_stage *st, uint64_t idx) {
    fc_harness *h = st->h;
    if (!h->check_interleave)
        return;
    if (st->pos == 0) {
        TU_STORE(&h->last0, idx);
    } else if (st->pos == 1 && TU_LOAD(&h->last0) == idx) {
        TU_ADD(&h->interleaved, 1);
    }
}

/* The call "takes" twice the stage's timeout: the virtual clock moves on meanwhile. */
static void fc_overrun(fc_stage *st) {
    if (fluxus_runtime_advance_clock(st->h->rt, 2000u * st->timeout_us) != FLUXUS_OK)
        TU_ADD(&st->bad_input, 1);
}

static int32_t fc_map(void *user, uint64_t in, uint64_t *out) {
    fc_stage *st = (fc_stage *)user;
    fc_harness *h = st->h;
    uint64_t idx = fc_input(st, in);
    TU_ADD(&st->calls, 1);
    if (idx == UINT64_MAX)
        return 9999; /* the item ends (and the counts will not match) */
    fc_note_interleave(st, idx);
    if (fc_fails(st, idx))
        return st->status;
    if (fc_hit(idx, st->slow_mod, st->slow_rem))
        fc_overrun(st);
    if (h->pointers) {
        /* A new item; the callback owns (and releases) its input. */
        *out = fc_make(h, fc_val(h, in) + FC_TAG(st->tag_no));
        fc_release(h, in);
    } else {
        *out = in + FC_TAG(st->tag_no);
    }
    return 0;
}

static int32_t fc_filter(void *user, uint64_t item, int32_t *keep) {
    fc_stage *st = (fc_stage *)user;
    uint64_t idx = fc_input(st, item);
    TU_ADD(&st->calls, 1);
    if (idx == UINT64_MAX)
        return 9999;
    fc_note_interleave(st, idx);
    if (fc_fails(st, idx))
        return st->status;
    if (fc_hit(idx, st->slow_mod, st->slow_rem))
        fc_overrun(st);
    *keep = fc_hit(idx, st->drop_mod, st->drop_rem) ? 0 : 1;
    return 0;
}

static int32_t fc_sink(void *user, uint64_t item) {
    fc_stage *st = (fc_stage *)user;
    fc_harness *h = st->h;
    uint64_t idx = fc_input(st, item), v, n;
    TU_ADD(&st->calls, 1);
    if (idx == UINT64_MAX)
        return 9999;
    fc_note_interleave(st, idx);
    if (fc_fails(st, idx))
        return st->status;
    v = fc_val(h, item);
    /* One sink worker: delivery order is the order of these calls. */
    if (h->reordered == 0 || !fc_retried(h, idx)) {
        if (idx + 1 <= h->last_plus1 && h->order_errors++ == 0)
            h->first_order_error = idx;
        h->last_plus1 = idx + 1;
    }
    h->hash = tu_mix64(h->hash ^ v);
    TU_ADD(&h->delivered[idx], 1);
    n = TU_ADD(&h->delivered_count, 1);
    fc_release(h, item); /* the sink owns it now */
    if (h->cancel_after != 0 && n == h->cancel_after) {
        if (fluxus_pipeline_cancel(h->p) != FLUXUS_OK)
            TU_ADD(&h->bad_sink, 1);
    }
    return 0;
}

/* Sink of an error branch (user: the stage whose failures it takes) or of a route target. */
static int32_t fc_quarantine(void *user, uint64_t item) {
    fc_stage *st = (fc_stage *)user;
    fc_harness *h = st->h;
    uint64_t v = fc_val(h, item), idx = FC_IDX(v);
    uint32_t at = 0;
    int fate;
    if (v == UINT64_MAX || idx >= h->n) {
        TU_ADD(&h->bad_quarantine, 1);
        return 0;
    }
    fate = fc_fate(h, idx, &at);
    if (at != st->pos || (fate != FC_END_BRANCH && fate != FC_END_ROUTE) ||
        v - idx != st->tags_in + fc_flat_tag(h)) {
        TU_ADD(&h->bad_quarantine, 1);
    }
    TU_ADD(&h->quarantined[idx], 1);
    fc_release(h, item);
    return 0;
}

static void fc_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    fc_harness *h = (fc_harness *)user;
    uint32_t index = tu_failure_stage_index(f), s, at = 0;
    fc_stage *st = NULL;
    uint64_t v = fc_val(h, item), idx = FC_IDX(v);
    uint32_t want_attempts;
    const char *msg = tu_failure_message(f);
    for (s = 0; s < h->nstages; s++)
        if (h->st[s].index == index)
            st = &h->st[s];
    if (st == NULL || v == UINT64_MAX || idx >= h->n) {
        TU_ADD(&h->bad_free, 1);
        return;
    }
    TU_ADD(&st->dead_seen, 1);
    TU_ADD(&h->dead[idx], 1);
    if (strcmp(tu_failure_stage_name(f), st->name) != 0 ||
        fc_fate(h, idx, &at) != FC_END_DEAD || at != st->pos ||
        v - idx != fc_end_tags(h, idx, at)) {
        TU_ADD(&st->dead_bad, 1);
    }
    if (!fc_hit(idx, st->fail_mod, st->fail_rem) && fc_hit(idx, st->slow_mod, st->slow_rem)) {
        /* Overran the stage timeout: its own status and message. */
        if (tu_failure_status(f) != FLUXUS_ETIMEDOUT || strstr(msg, "timeout") == NULL)
            TU_ADD(&st->dead_bad, 1);
        return;
    }
    if (tu_failure_status(f) != st->status)
        TU_ADD(&st->dead_bad, 1);
    want_attempts = st->retry_attempts > 1 ? st->retry_attempts : 1;
    if (tu_failure_attempts(f) != want_attempts)
        TU_ADD(&st->attempts_bad, 1);
    /* Every failure of a stage has the same message, whichever path ran it. */
    pthread_mutex_lock(&h->mu);
    if (!st->msg_set) {
        strncpy(st->msg, msg, sizeof st->msg - 1);
        st->msg_set = 1;
    } else if (strncmp(st->msg, msg, sizeof st->msg - 1) != 0) {
        st->msg_mismatch++;
    }
    pthread_mutex_unlock(&h->mu);
}

static void fc_item_free(void *user, uint64_t item) {
    fc_harness *h = (fc_harness *)user;
    uint64_t v = fc_val(h, item), idx = FC_IDX(v);
    if (v == UINT64_MAX)
        return;
    if (h->fanout && (v & FC_TAG_FLAT) == 0) {
        /* A fan-out input, consumed by the flat map. */
        if (v >= h->src_n)
            TU_ADD(&h->bad_flat, 1);
        TU_ADD(&h->inputs_freed, 1);
        fc_release(h, item);
        return;
    }
    if (idx >= h->n) {
        TU_ADD(&h->bad_free, 1);
        return;
    }
    if (h->cancel_after == 0) {
        /* It ended where the model says, carrying the tags of that stage's input. */
        uint32_t at = 0;
        int fate = fc_fate(h, idx, &at);
        if (fate == FC_END_DELIVERED || fate == FC_END_BRANCH || fate == FC_END_ROUTE ||
            v - idx != fc_end_tags(h, idx, at)) {
            TU_ADD(&h->bad_free, 1);
        }
    }
    TU_ADD(&h->freed[idx], 1);
    fc_release(h, item);
}

static int32_t fc_pull(void *user, uint64_t *item) {
    fc_harness *h = (fc_harness *)user;
    if (h->next >= h->src_n)
        return FLUXUS_PULL_END;
    *item = fc_make(h, h->next++);
    return FLUXUS_PULL_ITEM;
}

/* Cursor source: page c holds the items c * FC_PAGE .. c * FC_PAGE + FC_PAGE - 1. */
#define FC_PAGE 100u

static int32_t fc_read_page(void *user, uint64_t cursor, uint64_t *items, uint32_t capacity,
                            uint32_t *count, uint64_t *next_cursor) {
    fc_harness *h = (fc_harness *)user;
    uint64_t first = cursor * FC_PAGE, i;
    uint32_t k = 0;
    if (capacity < FC_PAGE) {
        TU_ADD(&h->commit_errors, 1); /* a page is never split in these tests */
        return -1;
    }
    for (i = first; i < first + FC_PAGE && i < h->src_n; i++)
        items[k++] = fc_make(h, i);
    *count = k;
    *next_cursor = cursor + 1;
    return first + FC_PAGE >= h->src_n ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static uint64_t fc_page_of(void *user, uint64_t item) {
    fc_harness *h = (fc_harness *)user;
    return FC_IDX(fc_val(h, item)) / FC_PAGE;
}

/* Commits come in order, one at a time, and only move forward. */
static void fc_commit(void *user, uint64_t cursor) {
    fc_harness *h = (fc_harness *)user;
    if (cursor <= TU_LOAD(&h->committed) && TU_LOAD(&h->commits) != 0)
        TU_ADD(&h->commit_errors, 1);
    TU_STORE(&h->committed, cursor);
    TU_ADD(&h->commits, 1);
}

static int32_t fc_flat(void *user, uint64_t item, fluxus_emitter *em) {
    fc_harness *h = (fc_harness *)user;
    uint64_t v = fc_val(h, item);
    uint32_t c;
    if (v >= h->src_n) {
        TU_ADD(&h->bad_flat, 1);
        return 9999;
    }
    for (c = 0; c < 2; c++) {
        uint64_t out = fc_make(h, 2 * v + c + FC_TAG_FLAT);
        if (fluxus_emitter_emit(em, out) != FLUXUS_OK) {
            TU_ADD(&h->bad_flat, 1);
            fc_release(h, out);
        }
    }
    return 0; /* the input is consumed: fluxus destroys it */
}

/* ----- building, running, checking ----- */

TU_RUNTIME_FIXTURE(FC_WORKERS);

/* A harness with stages from a layout string: M map, F filter, S sink (last). */
static void fc_init(fc_harness *h, const char *layout) {
    uint32_t s;
    memset(h, 0, sizeof *h);
    h->nstages = (uint32_t)strlen(layout);
    assert_true(h->nstages >= 1 && h->nstages <= FC_MAX_STAGES);
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        switch (layout[s]) {
            case 'M':
                st->kind = FC_MAP;
                break;
            case 'F':
                st->kind = FC_FILTER;
                break;
            case 'S':
                st->kind = FC_SINK;
                break;
            default:
                fail_msg("bad layout '%s'", layout);
        }
        assert_true((st->kind == FC_SINK) == (s + 1 == h->nstages));
        st->policy = FLUXUS_ERROR_SKIP;
    }
    h->src_n = FC_N;
}

/* Stage s fails for idx % mod == rem (policy: SKIP or DEAD_LETTER). */
static void fc_fail(fc_harness *h, uint32_t s, uint32_t mod, uint32_t rem, int32_t policy) {
    h->st[s].fail_mod = mod;
    h->st[s].fail_rem = rem;
    h->st[s].policy = policy;
}

static void fc_drop(fc_harness *h, uint32_t s, uint32_t mod, uint32_t rem) {
    assert_int_equal(h->st[s].kind, FC_FILTER);
    h->st[s].drop_mod = mod;
    h->st[s].drop_rem = rem;
}

static void fc_build(fc_harness *h, fluxus_runtime *rt, const char *name) {
    uint32_t s, tag = 0;
    uint64_t tags = 0;
    int dead_letter = 0;
    fluxus_pipeline *p;

    h->n = h->fanout ? 2 * h->src_n : h->src_n;
    h->delivered = (uint32_t *)calloc((size_t)h->n, sizeof(uint32_t));
    h->freed = (uint32_t *)calloc((size_t)h->n, sizeof(uint32_t));
    h->dead = (uint32_t *)calloc((size_t)h->n, sizeof(uint32_t));
    h->quarantined = (uint32_t *)calloc((size_t)h->n, sizeof(uint32_t));
    assert_non_null(h->delivered);
    assert_non_null(h->freed);
    assert_non_null(h->dead);
    assert_non_null(h->quarantined);
    assert_int_equal(pthread_mutex_init(&h->mu, NULL), 0);

    TU_OK(fluxus_pipeline_new(&p, rt, name));
    h->p = p;
    h->rt = rt;
    TU_OK(fluxus_pipeline_set_item_free(p, fc_item_free, h, NULL));
    if (h->batch != 0)
        TU_OK(fluxus_pipeline_set_batch_size(p, h->batch));
    if (h->push) {
        TU_OK(fluxus_pipeline_set_push_source(p, "push"));
    } else if (h->cursor) {
        TU_OK(fluxus_pipeline_set_cursor_source(p, "pages", 0, fc_read_page, fc_page_of, fc_commit,
                                                h, NULL));
    } else {
        TU_OK(fluxus_pipeline_set_pull_source(p, "pull", fc_pull, h, NULL));
    }
    if (h->fanout) {
        TU_OK(fluxus_pipeline_add_flat_map(&h->flat_index, p, "fanout", fc_flat, h, NULL));
    }
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        st->h = h;
        st->pos = s;
        st->tags_in = tags;
        st->status = (int32_t)(100 + s);
        switch (st->kind) {
            case FC_MAP:
                snprintf(st->name, sizeof st->name, "map%u", s);
                TU_OK(fluxus_pipeline_add_map(&st->index, p, st->name, fc_map, st, NULL));
                st->tag_no = tag++;
                tags += FC_TAG(st->tag_no);
                break;
            case FC_FILTER:
                snprintf(st->name, sizeof st->name, "filter%u", s);
                TU_OK(fluxus_pipeline_add_filter(&st->index, p, st->name, fc_filter, st, NULL));
                break;
            default:
                snprintf(st->name, sizeof st->name, "sink%u", s);
                TU_OK(fluxus_pipeline_add_sink(&st->index, p, st->name, fc_sink, st, NULL));
                break;
        }
        TU_OK(fluxus_stage_set_error_policy(p, st->index, st->policy));
        if (st->policy == FLUXUS_ERROR_DEAD_LETTER)
            dead_letter = 1;
        if (st->timeout_us != 0)
            TU_OK(fluxus_stage_set_timeout_us(p, st->index, st->timeout_us));
        if (st->workers > 1) {
            TU_OK(fluxus_stage_set_workers(p, st->index, st->workers));
            TU_OK(fluxus_stage_set_order(p, st->index, FLUXUS_ORDER_ORDERED));
        }
        if (st->retry_attempts > 1) {
            TU_OK(fluxus_stage_set_retry(p, st->index, st->retry_attempts, FLUXUS_BACKOFF_CONSTANT,
                                         50, 50));
        }
        if (st->transient_mod != 0) {
            st->attempts = (uint32_t *)calloc((size_t)h->n, sizeof(uint32_t));
            assert_non_null(st->attempts);
        }
        if (st->error_route != NULL)
            TU_OK(fluxus_stage_set_error_route(p, st->index, st->error_route));
    }
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        if (!st->error_branch)
            continue;
        TU_OK(fluxus_pipeline_branch(p, st->index, FLUXUS_OUTLET_ERROR));
        TU_OK(fluxus_pipeline_add_sink(&st->quarantine, p, "quarantine", fc_quarantine, st, NULL));
    }
    if (dead_letter)
        TU_OK(fluxus_pipeline_set_dead_letter(p, fc_dead_letter, h, NULL));
    fc_model(h);
}

/* Pushes the source items from the test thread (push source), then closes the input. Stops at
 * the first refusal (a cancelled pipeline). */
static void fc_push_all(fc_harness *h) {
    uint64_t chunk[500];
    uint64_t i = 0;
    while (i < h->src_n) {
        uint32_t k = 0, pushed = 0;
        int32_t rc;
        while (k < 500 && i + k < h->src_n) {
            chunk[k] = fc_make(h, i + k);
            k++;
        }
        rc = fluxus_pipeline_push_many(&pushed, h->p, chunk, k, TU_WAIT_MS);
        h->pushed += pushed;
        i += pushed;
        if (rc != FLUXUS_OK) {
            uint32_t j;
            assert_true(h->cancel_after != 0); /* only a cancelled pipeline refuses */
            TU_EXPECT(FLUXUS_ECANCELED, rc);
            for (j = pushed; j < k; j++)
                fc_release(h, chunk[j]); /* still ours */
            break;
        }
    }
    if (h->pushed == h->src_n) {
        int32_t rc = fluxus_pipeline_close_input(h->p);
        assert_true(rc == FLUXUS_OK || (h->cancel_after != 0 && rc == FLUXUS_ESTATE));
    }
}

static void fc_run(fc_harness *h, int32_t expected) {
    TU_OK(fluxus_pipeline_start(h->p));
    if (h->push)
        fc_push_all(h);
    TU_EXPECT(expected, tu_wait(h->p));
}

static void fc_stage_balance(fluxus_pipeline *p) {
    uint32_t n = 0, i;
    TU_OK(fluxus_pipeline_get_stage_count(&n, p));
    for (i = 0; i < n; i++) {
        fluxus_stage_stats s;
        tu_stage_stats(p, i, &s);
        if (s.in + s.spawned !=
            s.out + s.filtered + s.failed + s.dead_lettered + s.cancelled + s.routed) {
            fail_msg(
                "stage %u '%s': in %llu + spawned %llu != out %llu + filtered %llu + failed "
                "%llu + dead_lettered %llu + cancelled %llu + routed %llu",
                i, tu_stage_name(p, i), (unsigned long long)s.in, (unsigned long long)s.spawned,
                (unsigned long long)s.out, (unsigned long long)s.filtered,
                (unsigned long long)s.failed, (unsigned long long)s.dead_lettered,
                (unsigned long long)s.cancelled, (unsigned long long)s.routed);
        }
        if (s.retry_waiting != 0 || s.queue_depth != 0) {
            fail_msg("stage %u '%s' still holds items", i, tu_stage_name(p, i));
        }
    }
}

#define FC_EQ(what, got, want)                                                               \
    do {                                                                                     \
        uint64_t fc_g_ = (uint64_t)(got), fc_w_ = (uint64_t)(want);                          \
        if (fc_g_ != fc_w_)                                                                  \
            fail_msg("%s: %s is %llu, expected %llu", what, #got, (unsigned long long)fc_g_, \
                     (unsigned long long)fc_w_);                                             \
    } while (0)

/* Problems the callbacks counted. */
static void fc_check_callbacks(fc_harness *h) {
    uint32_t s;
    FC_EQ("items", h->bad_box, 0);
    FC_EQ("item destructor", h->bad_free, 0);
    FC_EQ("sink", h->bad_sink, 0);
    FC_EQ("quarantine", h->bad_quarantine, 0);
    FC_EQ("fan-out", h->bad_flat, 0);
    if (h->order_errors != 0)
        fail_msg("%llu items delivered out of order, first idx %llu",
                 (unsigned long long)h->order_errors, (unsigned long long)h->first_order_error);
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        FC_EQ(st->name, st->bad_input, 0);
        FC_EQ(st->name, st->dead_bad, 0);
        FC_EQ(st->name, st->attempts_bad, 0);
        FC_EQ(st->name, st->msg_mismatch, 0);
    }
}

/* Everything the model predicts, after a run that was not cancelled. */
static void fc_check(fc_harness *h) {
    fluxus_pipeline_stats ps;
    uint64_t idx, filtered = 0, failed = 0, dead = 0;
    uint32_t s;

    fc_check_callbacks(h);
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        fluxus_stage_stats ss;
        tu_stage_stats(h->p, st->index, &ss);
        FC_EQ(st->name, ss.in, st->e_in);
        FC_EQ(st->name, ss.out, st->e_out);
        FC_EQ(st->name, ss.filtered, st->e_filtered);
        FC_EQ(st->name, ss.failed, st->e_failed);
        FC_EQ(st->name, ss.dead_lettered, st->e_dead);
        FC_EQ(st->name, ss.routed, st->e_routed);
        FC_EQ(st->name, ss.retries, st->e_retries);
        FC_EQ(st->name, ss.cancelled, 0);
        FC_EQ(st->name, ss.timed_out, st->e_timed_out);
        FC_EQ(st->name, st->calls, st->e_calls);
        if (st->policy == FLUXUS_ERROR_DEAD_LETTER && st->error_route == NULL && !st->error_branch)
            FC_EQ(st->name, st->dead_seen, st->e_dead);
        else
            FC_EQ(st->name, st->dead_seen, 0);
        if (st->error_branch) {
            fluxus_stage_stats q;
            tu_stage_stats(h->p, st->quarantine, &q);
            FC_EQ("quarantine", q.in, st->e_routed);
            FC_EQ("quarantine", q.out, st->e_routed);
        }
        filtered += st->e_filtered;
        failed += st->e_failed;
        dead += st->e_dead;
    }
    if (h->fanout) {
        fluxus_stage_stats fs;
        tu_stage_stats(h->p, h->flat_index, &fs);
        FC_EQ("fanout", fs.in, h->src_n);
        FC_EQ("fanout", fs.filtered, h->src_n);
        FC_EQ("fanout", fs.spawned, h->n);
        FC_EQ("fanout", fs.out, h->n);
        FC_EQ("fanout", h->inputs_freed, h->src_n);
        filtered += h->src_n;
    }
    fc_stage_balance(h->p);

    tu_stats(h->p, &ps);
    FC_EQ("pipeline", ps.state, FLUXUS_STATE_FINISHED);
    FC_EQ("pipeline", ps.admitted, h->src_n + (h->fanout ? h->n : 0));
    FC_EQ("pipeline", ps.delivered, h->e_delivered + h->e_branch);
    FC_EQ("pipeline", ps.filtered, filtered);
    FC_EQ("pipeline", ps.failed, failed);
    FC_EQ("pipeline", ps.dead_lettered, dead);
    FC_EQ("pipeline", ps.cancelled, 0);
    FC_EQ("pipeline", ps.in_flight, 0);
    FC_EQ("pipeline", ps.balanced, 1);
    FC_EQ("pipeline", ps.admitted,
          ps.delivered + ps.filtered + ps.failed + ps.dead_lettered + ps.cancelled);

    FC_EQ("sink", h->delivered_count, h->e_delivered);
    if (!h->reordered)
        FC_EQ("sink", h->hash, h->e_hash);
    for (idx = 0; idx < h->n; idx++) {
        uint32_t at = 0;
        int fate = fc_fate(h, idx, &at);
        uint32_t d = h->delivered[idx], f = h->freed[idx], q = h->quarantined[idx],
                 x = h->dead[idx];
        int ok;
        switch (fate) {
            case FC_END_DELIVERED:
                ok = d == 1 && f == 0 && q == 0 && x == 0;
                break;
            case FC_END_DEAD:
                ok = d == 0 && f == 1 && q == 0 && x == 1;
                break;
            case FC_END_BRANCH:
            case FC_END_ROUTE:
                ok = d == 0 && f == 0 && q == 1 && x == 0;
                break;
            default:
                ok = d == 0 && f == 1 && q == 0 && x == 0;
                break;
        }
        if (!ok)
            fail_msg(
                "idx %llu (fate %d at stage %u): delivered %u, destroyed %u, quarantined "
                "%u, dead-lettered %u",
                (unsigned long long)idx, fate, at, d, f, q, x);
    }
    if (h->pointers && h->route_target == NULL)
        FC_EQ("heap items", h->frees, h->allocs);
}

static void fc_free(fc_harness *h) {
    uint32_t s;
    if (h->p != NULL)
        TU_OK(fluxus_pipeline_free(h->p));
    h->p = NULL;
    for (s = 0; s < h->nstages; s++)
        free(h->st[s].attempts);
    free(h->delivered);
    free(h->freed);
    free(h->dead);
    free(h->quarantined);
    pthread_mutex_destroy(&h->mu);
}

static fc_harness *fc_new(const char *layout) {
    fc_harness *h = (fc_harness *)calloc(1, sizeof *h);
    assert_non_null(h);
    fc_init(h, layout);
    return h;
}

static void fc_done(fc_harness *h) {
    fc_free(h);
    free(h);
}

/* Builds, runs and checks a configured harness (fc_done() frees it). */
static void fc_go(fc_harness *h, const char *name) {
    fc_build(h, g_rt, name);
    fc_run(h, FLUXUS_OK);
    fc_check(h);
}

/* Layouts of n maps and a sink: chains of 1..7 stages (5 to 7 are split into two chains). */
static const char *const k_map_layouts[] = {"S", "MS", "MMS", "MMMS", "MMMMS", "MMMMMS", "MMMMMMS"};

/* The chain really ran: the second stage mostly saw the item the first one had just handled
 * (stage by stage over a batch, it would see it only once per batch). */
static void fc_assert_chain_ran(const fc_harness *h) {
    if (h->interleaved < h->n / 2)
        fail_msg(
            "only %llu of %llu items went straight from the first stage to the second: "
            "the per-item chain did not run",
            (unsigned long long)h->interleaved, (unsigned long long)h->n);
}

/* ----- 1. order, values and counters through chains of every length ----- */

/* push: the first stage heads a queue (its `in` is counted on arrival). */
static void fc_map_chains_of_every_length(int push) {
    size_t i;
    for (i = 0; i < sizeof k_map_layouts / sizeof k_map_layouts[0]; i++) {
        fc_harness *h = fc_new(k_map_layouts[i]);
        h->push = push;
        h->check_interleave = i > 0;
        fc_go(h, push ? "maps-push" : "maps-pull");
        if (i > 0)
            fc_assert_chain_ran(h);
        fc_done(h);
    }
}

static void test_map_chains_of_every_length_pull(void **state) {
    (void)state;
    fc_map_chains_of_every_length(0);
}

static void test_map_chains_of_every_length_push(void **state) {
    (void)state;
    fc_map_chains_of_every_length(1);
}

/* Heap items (each map makes a new one and frees its input) and an odd batch size. */
static void test_map_chains_of_every_length_heap_items_odd_batch(void **state) {
    size_t i;
    (void)state;
    for (i = 0; i < sizeof k_map_layouts / sizeof k_map_layouts[0]; i++) {
        fc_harness *h = fc_new(k_map_layouts[i]);
        h->pointers = 1;
        h->batch = 37;
        fc_go(h, "maps-heap");
        fc_done(h);
    }
}

/* Chains of any kind: filters among the maps (the generic variant), split or not. */
static const char *const k_mixed_layouts[] = {"FS",      "MFMS",      "FMFMS",    "FMFMMS",
                                              "MMMMFS",  "FFFFFFS",   "MFFMMFMS", "MMMMFMMMMS",
                                              "FMMMMMS", "MMMFFMMFFS"};

static void fc_drop_everywhere(fc_harness *h) {
    uint32_t s;
    for (s = 0; s < h->nstages; s++)
        if (h->st[s].kind == FC_FILTER)
            fc_drop(h, s, 3 + s % 4, s % 3);
}

static void test_mixed_chains(void **state) {
    size_t i;
    (void)state;
    for (i = 0; i < sizeof k_mixed_layouts / sizeof k_mixed_layouts[0]; i++) {
        fc_harness *h = fc_new(k_mixed_layouts[i]);
        fc_drop_everywhere(h);
        h->check_interleave = 1;
        fc_go(h, "mixed");
        if (h->st[0].kind == FC_MAP)
            fc_assert_chain_ran(h); /* a filter's drops thin it */
        fc_done(h);
    }
}

static void test_mixed_chains_push_heap_items(void **state) {
    size_t i;
    (void)state;
    for (i = 0; i < sizeof k_mixed_layouts / sizeof k_mixed_layouts[0]; i++) {
        fc_harness *h = fc_new(k_mixed_layouts[i]);
        fc_drop_everywhere(h);
        h->push = 1;
        h->pointers = 1;
        fc_go(h, "mixed-push-heap");
        fc_done(h);
    }
}

/* ----- 2. failures in the middle of chains ----- */

/* map0 fails every 7th item, filter1 drops every 3rd and fails every 13th, map2 fails every
 * 17th, the sink fails every 11th. */
static fc_harness *fc_failing_mfms(int32_t policy) {
    fc_harness *h = fc_new("MFMS");
    fc_fail(h, 0, 7, 3, policy);
    fc_fail(h, 1, 13, 1, policy);
    fc_drop(h, 1, 3, 0);
    fc_fail(h, 2, 17, 5, policy);
    fc_fail(h, 3, 11, 6, policy);
    return h;
}

static void test_failures_mid_chain_skip(void **state) {
    fc_harness *h;
    (void)state;
    h = fc_failing_mfms(FLUXUS_ERROR_SKIP);
    h->check_interleave = 1;
    fc_go(h, "fail-skip");
    assert_true(h->st[0].e_failed > 1000 && h->st[3].e_failed > 1000);
    fc_done(h);

    h = fc_failing_mfms(FLUXUS_ERROR_SKIP);
    h->pointers = 1;
    fc_go(h, "fail-skip-heap");
    fc_done(h);
}

static void test_failures_mid_chain_dead_letter(void **state) {
    fc_harness *h;
    uint32_t s;
    (void)state;
    h = fc_failing_mfms(FLUXUS_ERROR_DEAD_LETTER);
    fc_go(h, "fail-dead-letter");
    for (s = 0; s < h->nstages; s++) {
        /* The message is the same on both paths, and names what failed. */
        assert_true(h->st[s].dead_seen > 500);
        assert_non_null(strstr(h->st[s].msg, s == 0 || s == 2 ? "map"
                                             : s == 1         ? "filter"
                                                              : "sink"));
    }
    fc_done(h);

    h = fc_failing_mfms(FLUXUS_ERROR_DEAD_LETTER);
    h->pointers = 1;
    h->push = 1;
    fc_go(h, "fail-dead-letter-heap-push");
    fc_done(h);
}

/* Seven stages (a chain of four, then one of three) with both policies mixed. */
static void test_failures_mixed_policies_split_chains(void **state) {
    int heap;
    (void)state;
    for (heap = 0; heap < 2; heap++) {
        fc_harness *h = fc_new("MMFMFMS");
        fc_fail(h, 0, 7, 2, FLUXUS_ERROR_SKIP);
        fc_fail(h, 1, 23, 4, FLUXUS_ERROR_DEAD_LETTER);
        fc_fail(h, 2, 29, 0, FLUXUS_ERROR_DEAD_LETTER);
        fc_drop(h, 2, 3, 1);
        fc_fail(h, 3, 31, 9, FLUXUS_ERROR_SKIP);
        fc_drop(h, 4, 5, 2);
        fc_fail(h, 5, 37, 1, FLUXUS_ERROR_DEAD_LETTER);
        fc_fail(h, 6, 11, 10, FLUXUS_ERROR_DEAD_LETTER);
        h->pointers = heap;
        h->batch = heap ? 100 : 0;
        fc_go(h, "mixed-policies");
        fc_done(h);
    }
}

/* A flat map first: the chain takes a batch twice the batch size, out of the other buffer. */
static void test_fanout_before_chain(void **state) {
    int heap;
    (void)state;
    for (heap = 0; heap < 2; heap++) {
        fc_harness *h = fc_failing_mfms(heap ? FLUXUS_ERROR_DEAD_LETTER : FLUXUS_ERROR_SKIP);
        h->fanout = 1;
        h->src_n = FC_N / 2;
        h->pointers = heap;
        fc_go(h, "fanout");
        fc_done(h);
    }
}

/* ----- 3. stages that do not qualify split the chains ----- */

static void fc_fail_all(fc_harness *h, int32_t policy) {
    static const uint32_t mods[] = {7, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53};
    uint32_t s;
    for (s = 0; s < h->nstages; s++) {
        fc_fail(h, s, h->st[s].kind == FC_SINK ? 11 : mods[s], s % 5, policy);
        if (h->st[s].kind == FC_FILTER)
            fc_drop(h, s, 3 + s % 2, 2);
    }
}

/* A stage with a timeout stays fused but is not a chain stage: it runs stage by stage between
 * chains. Some of its calls overrun the timeout (they move the runtime's virtual clock past it,
 * so no other call can), and exactly those items fail with FLUXUS_ETIMEDOUT. */
static void fc_timeout_case(const char *layout, uint32_t at, int32_t policy, int heap, int push,
                            const char *name) {
    fluxus_runtime *rt = tu_runtime(FC_WORKERS);
    fc_harness *h = fc_new(layout);
    TU_OK(fluxus_runtime_set_virtual_clock(rt, 1, 1000000000ull));
    fc_fail_all(h, policy);
    h->st[at].timeout_us = 1000u;
    if (h->st[at].kind != FC_SINK) {
        h->st[at].slow_mod = 997;
        h->st[at].slow_rem = 500;
    }
    h->pointers = heap;
    h->push = push;
    fc_build(h, rt, name);
    fc_run(h, FLUXUS_OK);
    fc_check(h);
    if (h->st[at].kind != FC_SINK)
        assert_true(h->st[at].e_timed_out >= 5);
    fc_done(h);
    TU_OK(fluxus_runtime_free(rt));
}

static void test_timeout_stage_splits_chain(void **state) {
    (void)state;
    fc_timeout_case("MFMMFMS", 2, FLUXUS_ERROR_DEAD_LETTER, 0, 0, "timeout-middle-map");
    fc_timeout_case("MFMMFMS", 4, FLUXUS_ERROR_SKIP, 1, 1, "timeout-middle-filter");
    /* The first stage: the chain behind it reads the other buffer. */
    fc_timeout_case("MMFS", 0, FLUXUS_ERROR_SKIP, 1, 0, "timeout-first");
    fc_timeout_case("MFMMMS", 5, FLUXUS_ERROR_DEAD_LETTER, 0, 1, "timeout-sink");
}

/* An ordered stage on four workers in the middle breaks fusion: chains before and after it, and
 * each of its workers runs its own one-stage chain. */
static void test_parallel_ordered_stage_splits_chain(void **state) {
    int heap;
    (void)state;
    for (heap = 0; heap < 2; heap++) {
        fc_harness *h = fc_new("MMFMMFMS");
        fc_fail_all(h, heap ? FLUXUS_ERROR_DEAD_LETTER : FLUXUS_ERROR_SKIP);
        h->st[3].workers = 4;
        h->pointers = heap;
        fc_go(h, "parallel-middle");
        fc_done(h);
    }
}

/* A cursor source: no chain anywhere; the watermark must reach the last page. */
static void test_cursor_source_without_chain(void **state) {
    fc_harness *h;
    uint64_t cursor = 0;
    (void)state;
    h = fc_new("MFMMFMS");
    fc_fail_all(h, FLUXUS_ERROR_DEAD_LETTER);
    h->cursor = 1;
    fc_go(h, "cursor");
    FC_EQ("cursor", h->commit_errors, 0);
    TU_OK(fluxus_pipeline_get_committed_cursor(&cursor, h->p));
    FC_EQ("cursor", cursor, (FC_N + FC_PAGE - 1) / FC_PAGE);
    FC_EQ("cursor", TU_LOAD(&h->committed), cursor);
    fc_done(h);
}

/* ----- 4. retries, error branches and error routes on the head of a chain ----- */

/* The head fails every 5th item once (then succeeds on retry) and every 50th for good. */
static void fc_retrying_head(fc_harness *h, uint32_t attempts) {
    h->st[0].retry_attempts = attempts;
    h->st[0].transient_mod = 5;
    h->st[0].transient_rem = 0;
    h->st[0].fail_mod = 50;
    h->st[0].fail_rem = 5; /* also a transient one: it fails all its attempts */
    h->reordered = 1;      /* a retried item comes out after the items that passed meanwhile */
}

static void test_retry_on_head_with_error_branch(void **state) {
    int heap;
    (void)state;
    for (heap = 0; heap < 2; heap++) {
        fc_harness *h = fc_new("MFMS");
        fc_retrying_head(h, 3);
        h->st[0].error_branch = 1;
        fc_drop(h, 1, 3, 1);
        fc_fail(h, 2, 7, 6, FLUXUS_ERROR_SKIP);
        fc_fail(h, 3, 11, 0, FLUXUS_ERROR_DEAD_LETTER);
        h->pointers = heap;
        fc_go(h, "retry-branch");
        assert_int_equal(h->st[0].e_routed, FC_N / 50);
        assert_int_equal(h->st[0].e_retries, FC_N / 5 - FC_N / 50 + 2 * (FC_N / 50));
        fc_done(h);
    }
}

static void test_retry_on_head_dead_letter(void **state) {
    fc_harness *h;
    (void)state;
    h = fc_new("MMFMS");
    fc_retrying_head(h, 4);
    h->st[0].policy = FLUXUS_ERROR_DEAD_LETTER; /* attempts 4 in the dead letter */
    fc_drop(h, 2, 4, 3);
    fc_fail(h, 3, 9, 2, FLUXUS_ERROR_DEAD_LETTER);
    fc_fail(h, 4, 13, 12, FLUXUS_ERROR_SKIP);
    h->push = 1;
    fc_go(h, "retry-dead-letter");
    assert_int_equal(h->st[0].dead_seen, FC_N / 50);
    fc_done(h);
}

/* A failing head without retry whose failures go down the error branch. */
static void test_error_branch_on_head_without_retry(void **state) {
    fc_harness *h;
    (void)state;
    h = fc_new("MMFS");
    fc_fail(h, 0, 9, 4, FLUXUS_ERROR_SKIP);
    h->st[0].error_branch = 1;
    fc_drop(h, 2, 3, 2);
    fc_fail(h, 3, 11, 3, FLUXUS_ERROR_SKIP);
    h->pointers = 1;
    fc_go(h, "branch");
    fc_done(h);
}

/* The head's failures (after retries) go to another pipeline. */
static void test_retry_on_head_with_error_route(void **state) {
    fc_harness *h;
    fluxus_pipeline *target = NULL;
    fluxus_pipeline_stats ts;
    uint32_t qsink = 0;
    (void)state;
    h = fc_new("MFMMS");
    fc_retrying_head(h, 2);
    h->st[0].fail_mod = 9;
    h->st[0].fail_rem = 4;
    fc_drop(h, 1, 3, 1);
    fc_fail(h, 3, 11, 0, FLUXUS_ERROR_DEAD_LETTER);
    h->pointers = 1;

    TU_OK(fluxus_pipeline_new(&target, g_rt, "repair"));
    TU_OK(fluxus_pipeline_set_push_source(target, "failed"));
    TU_OK(fluxus_pipeline_add_sink(&qsink, target, "repair-sink", fc_quarantine, &h->st[0], NULL));
    TU_OK(fluxus_pipeline_start(target));
    h->st[0].error_route = target;
    h->route_target = target;

    fc_build(h, g_rt, "retry-route");
    fc_run(h, FLUXUS_OK);
    TU_OK(fluxus_pipeline_close_input(target));
    TU_EXPECT(FLUXUS_OK, tu_wait(target));
    tu_stats(target, &ts);
    FC_EQ("target", ts.admitted, h->e_route);
    FC_EQ("target", ts.delivered, h->e_route);
    assert_int_equal(h->e_route, FC_N / 9 + (FC_N % 9 > 4 ? 1 : 0));
    fc_check(h);
    FC_EQ("heap items", h->frees, h->allocs);
    fc_done(h);
    TU_OK(fluxus_pipeline_free(target));
}

/* ----- 5. cancel from the sink, midway ----- */

static void fc_check_cancelled(fc_harness *h) {
    fluxus_pipeline_stats ps;
    uint64_t admitted = h->push ? h->pushed : h->next, idx, freed = 0;
    uint32_t s;

    fc_check_callbacks(h);
    fc_stage_balance(h->p);
    tu_stats(h->p, &ps);
    FC_EQ("pipeline", ps.state, FLUXUS_STATE_FINISHED);
    FC_EQ("pipeline", ps.admitted, admitted);
    FC_EQ("pipeline", ps.admitted,
          ps.delivered + ps.filtered + ps.failed + ps.dead_lettered + ps.cancelled);
    FC_EQ("pipeline", ps.in_flight, 0);
    FC_EQ("pipeline", ps.balanced, 1);
    FC_EQ("pipeline", ps.delivered, h->delivered_count);
    assert_true(ps.delivered >= h->cancel_after);
    assert_true(ps.delivered < h->e_delivered); /* it did stop early */
    for (s = 0; s < h->nstages; s++) {
        fc_stage *st = &h->st[s];
        fluxus_stage_stats ss;
        tu_stage_stats(h->p, st->index, &ss);
        FC_EQ(st->name, ss.dead_lettered, st->dead_seen);
        assert_true(ss.in <= st->e_in);
        assert_true(ss.filtered <= st->e_filtered);
        assert_true(ss.failed <= st->e_failed);
    }
    for (idx = 0; idx < h->n; idx++) {
        uint32_t at = 0, d = h->delivered[idx], f = h->freed[idx];
        int fate = fc_fate(h, idx, &at);
        if (idx < admitted ? d + f != 1 : d + f != 0)
            fail_msg("idx %llu (admitted %llu): delivered %u, destroyed %u",
                     (unsigned long long)idx, (unsigned long long)admitted, d, f);
        if ((d != 0 && fate != FC_END_DELIVERED) || (h->dead[idx] != 0 && fate != FC_END_DEAD) ||
            h->dead[idx] > f)
            fail_msg("idx %llu ended wrongly: fate %d at %u, delivered %u, dead-lettered %u",
                     (unsigned long long)idx, fate, at, d, h->dead[idx]);
        freed += f;
    }
    FC_EQ("item destructor", freed, ps.admitted - ps.delivered);
    if (h->pointers)
        FC_EQ("heap items", h->frees, h->allocs);
}

static void test_cancel_from_sink_pull(void **state) {
    int heap;
    (void)state;
    for (heap = 0; heap < 2; heap++) {
        fc_harness *h = fc_failing_mfms(heap ? FLUXUS_ERROR_DEAD_LETTER : FLUXUS_ERROR_SKIP);
        h->src_n = 10u * FC_N;
        h->cancel_after = FC_N / 2 + 77;
        h->pointers = heap;
        fc_build(h, g_rt, "cancel-pull");
        fc_run(h, FLUXUS_ECANCELED);
        fc_check_cancelled(h);
        fc_done(h);
    }
}

static void test_cancel_from_sink_push_with_queues(void **state) {
    int heap;
    (void)state;
    for (heap = 0; heap < 2; heap++) {
        fc_harness *h = fc_new("MFMMFMS");
        fc_fail_all(h, FLUXUS_ERROR_DEAD_LETTER);
        h->st[3].workers = 3; /* queues before and after it hold items when the cancel comes */
        h->src_n = 10u * FC_N;
        h->cancel_after = FC_N / 2 + 13;
        h->push = 1;
        h->pointers = heap;
        fc_build(h, g_rt, "cancel-push");
        fc_run(h, FLUXUS_ECANCELED);
        fc_check_cancelled(h);
        fc_done(h);
    }
}

/* A pull source feeding a chain is called item by item, right before each item runs through
 * the chain. Once a callback pauses, cancels or fails the pipeline (here: at item 5000, deep
 * into a batch), the source must not be called again: the header promises it. */
typedef struct {
    uint64_t next, calls_after;
    int requested; /* set by the callback that asked for the stop */
    int mode;      /* 0 pause, 1 cancel, 2 fail-fast failure, 3 failure that auto-pauses */
    fluxus_pipeline *p;
} fc_stop_ctx;

static int32_t fc_stop_pull(void *u, uint64_t *item) {
    fc_stop_ctx *c = (fc_stop_ctx *)u;
    if (TU_LOAD(&c->requested)) TU_ADD(&c->calls_after, 1);
    if (c->next >= FC_N) return FLUXUS_PULL_END;
    *item = c->next++;
    return FLUXUS_PULL_ITEM;
}
static int32_t fc_stop_map(void *u, uint64_t in, uint64_t *out) {
    fc_stop_ctx *c = (fc_stop_ctx *)u;
    if (c->mode >= 2 && in == 5000) {
        TU_ADD(&c->requested, 1);
        return -100; /* fail-fast: the pipeline fails; skip: the source pauses itself */
    }
    *out = in;
    return 0;
}
static int32_t fc_stop_sink(void *u, uint64_t item) {
    fc_stop_ctx *c = (fc_stop_ctx *)u;
    if (item == 5000 && c->mode == 0) {
        TU_ADD(&c->requested, 1);
        fluxus_pipeline_pause(c->p);
    } else if (item == 5000 && c->mode == 1) {
        TU_ADD(&c->requested, 1);
        fluxus_pipeline_cancel(c->p);
    }
    return 0;
}

static void test_source_not_called_after_a_callback_stops_it(void **state) {
    (void)state;
    /* Batch size 256: item 5000 is in the middle of a batch; 1: it is the last of its batch,
     * inside a pass of several batches. */
    for (int run = 0; run < 8; ++run) {
        int mode = run % 4;
        fluxus_runtime *rt = tu_runtime(2);
        fc_stop_ctx c;
        memset(&c, 0, sizeof c);
        c.mode = mode;
        TU_OK(fluxus_pipeline_new(&c.p, rt, "stop"));
        if (run >= 4) TU_OK(fluxus_pipeline_set_batch_size(c.p, 1));
        TU_OK(fluxus_pipeline_set_pull_source(c.p, "src", fc_stop_pull, &c, NULL));
        uint32_t m;
        TU_OK(fluxus_pipeline_add_map(&m, c.p, "m", fc_stop_map, &c, NULL));
        TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "k", fc_stop_sink, &c, NULL));
        if (mode == 3) {
            /* One failure pauses the source for 60 s (the run is cancelled long before). */
            TU_OK(fluxus_stage_set_error_policy(c.p, m, FLUXUS_ERROR_SKIP));
            TU_OK(fluxus_stage_set_pause_source_on_errors(c.p, m, 1, 1000000, 60000000));
        }
        TU_OK(fluxus_pipeline_start(c.p));
        if (mode == 0 || mode == 3) {
            /* Paused: wait until the stop was asked for, give the worker time to misbehave,
             * then cancel to end the run. */
            while (!TU_LOAD(&c.requested)) tu_sleep_us(1000);
            tu_sleep_us(20000);
            assert_int_equal(TU_LOAD(&c.calls_after), 0);
            TU_OK(fluxus_pipeline_cancel(c.p));
        }
        (void)fluxus_pipeline_wait(c.p, 60000);
        assert_int_equal(TU_LOAD(&c.requested), 1);
        assert_int_equal(TU_LOAD(&c.calls_after), 0);
        fluxus_pipeline_stats st;
        tu_stats(c.p, &st);
        assert_int_equal(st.admitted, 5001); /* items 0..5000: none read after the stop */
        TU_OK(fluxus_pipeline_free(c.p));
        TU_OK(fluxus_runtime_free(rt));
    }
}

/* A pipeline that is one chain from a pull source to its sink moves nothing between stages:
 * while its callbacks are cheap a pass reads several batches (fewer passes, less bookkeeping),
 * while they are slow a pass stays one batch. Seen from the sink: how far the items it got ran
 * ahead of the pipeline's `admitted` counter, which grows once per pass. */
/* The pull source of the tests below: 0..n-1. */
typedef struct {
    uint64_t next, n;
} fc_count;

static int32_t fc_count_pull(void *u, uint64_t *item) {
    fc_count *c = (fc_count *)u;
    if (c->next >= c->n) return FLUXUS_PULL_END;
    *item = c->next++;
    return FLUXUS_PULL_ITEM;
}

typedef struct {
    fc_count src;
    fluxus_pipeline *p;
    uint64_t seen, ahead_max;
    uint32_t sleep_us;
} fc_pass_ctx;
static int32_t fc_pass_map(void *u, uint64_t in, uint64_t *out) {
    (void)u;
    *out = in + 1;
    return 0;
}
static int32_t fc_pass_sink(void *u, uint64_t item) {
    fc_pass_ctx *c = (fc_pass_ctx *)u;
    fluxus_pipeline_stats st;
    (void)item;
    if (c->sleep_us) tu_sleep_us(c->sleep_us);
    if (++c->seen % 16 == 8) { /* once per batch of 16: a stats read is slow under TSan */
        tu_stats(c->p, &st);
        if (c->seen > st.admitted && c->seen - st.admitted > c->ahead_max)
            c->ahead_max = c->seen - st.admitted;
    }
    return 0;
}

static uint64_t fc_pass_run(uint32_t sleep_us, uint64_t n) {
    fluxus_runtime *rt = tu_runtime(2);
    fc_pass_ctx c;
    fluxus_pipeline_stats st;
    memset(&c, 0, sizeof c);
    c.src.n = n;
    c.sleep_us = sleep_us;
    TU_OK(fluxus_pipeline_new(&c.p, rt, "passes"));
    TU_OK(fluxus_pipeline_set_batch_size(c.p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(c.p, "src", fc_count_pull, &c.src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, c.p, "m", fc_pass_map, &c, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, c.p, "k", fc_pass_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(c.p));
    TU_OK(fluxus_pipeline_wait(c.p, 60000));
    tu_stats(c.p, &st);
    assert_int_equal(st.admitted, n);
    assert_int_equal(st.delivered, n);
    assert_int_equal(c.seen, n);
    TU_OK(fluxus_pipeline_free(c.p));
    TU_OK(fluxus_runtime_free(rt));
    return c.ahead_max;
}

static void test_one_chain_to_sink_reads_several_batches_per_pass_while_cheap(void **state) {
    uint64_t cheap, slow;
    (void)state;
    /* 16 cheap items take well under the 50 us budget even under a sanitizer: passes grow. */
    cheap = fc_pass_run(0, 200000);
    /* 16 items sleeping 20 us each take more than the budget: one batch per pass. */
    slow = fc_pass_run(20, 2000);
    assert_true(cheap > 16);
    assert_true(slow <= 16);
}

/* busy_ns is sampled (one batch in 64, counted 64 times). When a pass reads several batches
 * the sample must still stand for the items in between: the sink, which spins ~100 ns per item
 * and so takes most of the worker's time, must show a busy_ns of the order of the CPU time its
 * worker thread used from its first item to its last (not a 16th of it). Only a lower bound is
 * asserted: a preempted sample batch can inflate busy_ns; CPU time is not inflated by
 * preemption. One worker, so that every item runs on the same thread. */
typedef struct {
    fc_count src;
    uint64_t seen, cpu_first_ns, spent_ns;
} fc_busy_ctx;

static uint64_t fc_clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static uint64_t fc_now_ns(void) { return fc_clock_ns(CLOCK_MONOTONIC); }
static int32_t fc_busy_sink(void *u, uint64_t item) {
    fc_busy_ctx *c = (fc_busy_ctx *)u;
    uint64_t t0, t;
    (void)item;
    if (c->seen == 0) c->cpu_first_ns = fc_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    t0 = fc_now_ns();
    do t = fc_now_ns(); while (t - t0 < 100); /* cheap enough for passes of 16 batches */
    if (++c->seen == c->src.n) c->spent_ns = fc_clock_ns(CLOCK_THREAD_CPUTIME_ID) - c->cpu_first_ns;
    return 0;
}

static void test_busy_time_counts_every_batch_of_a_pass(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p;
    fc_busy_ctx c;
    fluxus_stage_stats st;
    uint32_t sink;
    (void)state;
    memset(&c, 0, sizeof c);
    c.src.n = 500000;
    TU_OK(fluxus_pipeline_new(&p, rt, "busy"));
    TU_OK(fluxus_pipeline_set_batch_size(p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", fc_count_pull, &c.src, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, p, "m", fc_pass_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(&sink, p, "k", fc_busy_sink, &c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_wait(p, 60000));
    tu_stage_stats(p, sink, &st);
    assert_int_equal(st.out, c.src.n);
    if (st.busy_ns * 3 < c.spent_ns)
        fail_msg("sink busy_ns %llu, but its worker used %llu ns of CPU",
                 (unsigned long long)st.busy_ns, (unsigned long long)c.spent_ns);
    TU_OK(fluxus_pipeline_free(p));
    TU_OK(fluxus_runtime_free(rt));
}

/* Stop requests from another thread are seen between the batches of a pass: after cancel()
 * returns, the source is called at most for the rest of the batch being read (the header's
 * "callbacks already running finish their current batch"), not for the rest of a pass of up to
 * 16 batches. And a callback's own pause stops the source at once even when another thread had
 * paused the pipeline just before (its pause found the pipeline paused already). */
typedef struct {
    fluxus_pipeline *p;
    uint64_t calls, calls_after;
    int reached, host_paused, cb_paused, wait_for_host;
} fc_xstop_ctx;

static int32_t fc_xstop_pull(void *u, uint64_t *item) {
    fc_xstop_ctx *c = (fc_xstop_ctx *)u;
    uint64_t n = TU_ADD(&c->calls, 1);
    if (TU_LOAD(&c->cb_paused)) TU_ADD(&c->calls_after, 1);
    *item = n;
    return FLUXUS_PULL_ITEM; /* endless: the runs end by cancel */
}
static int32_t fc_xstop_sink(void *u, uint64_t item) {
    fc_xstop_ctx *c = (fc_xstop_ctx *)u;
    if (c->wait_for_host && item == 100000) {
        /* Item 100000 is deep inside a pass: wait for the host's pause, then pause too. */
        TU_STORE(&c->reached, 1);
        while (!TU_LOAD(&c->host_paused)) tu_sleep_us(100);
        TU_OK(fluxus_pipeline_pause(c->p));
        TU_STORE(&c->cb_paused, 1);
    }
    return 0;
}

static fluxus_pipeline *fc_xstop_start(fluxus_runtime *rt, fc_xstop_ctx *c, int wait_for_host) {
    memset(c, 0, sizeof *c);
    c->wait_for_host = wait_for_host;
    TU_OK(fluxus_pipeline_new(&c->p, rt, "xstop"));
    TU_OK(fluxus_pipeline_set_batch_size(c->p, 16));
    TU_OK(fluxus_pipeline_set_pull_source(c->p, "src", fc_xstop_pull, c, NULL));
    TU_OK(fluxus_pipeline_add_map(NULL, c->p, "m", fc_pass_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_sink(NULL, c->p, "k", fc_xstop_sink, c, NULL));
    TU_OK(fluxus_pipeline_start(c->p));
    return c->p;
}

static void test_stop_requests_from_another_thread_end_a_pass_between_batches(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fc_xstop_ctx c;
    uint64_t at_cancel, at_end;
    (void)state;
    /* Cancel from this thread while the worker reads passes of cheap items. */
    fc_xstop_start(rt, &c, 0);
    while (TU_LOAD(&c.calls) < 200000) tu_sleep_us(200);
    TU_OK(fluxus_pipeline_cancel(c.p));
    at_cancel = TU_LOAD(&c.calls);
    assert_int_equal(fluxus_pipeline_wait(c.p, 60000), FLUXUS_ECANCELED);
    at_end = TU_LOAD(&c.calls);
    if (at_end - at_cancel > 16)
        fail_msg("the source was called %llu times after cancel() returned (batch: 16)",
                 (unsigned long long)(at_end - at_cancel));
    TU_OK(fluxus_pipeline_free(c.p));

    /* This thread pauses; a callback of the pass in progress then pauses too. */
    fc_xstop_start(rt, &c, 1);
    while (!TU_LOAD(&c.reached)) tu_sleep_us(200);
    TU_OK(fluxus_pipeline_pause(c.p));
    TU_STORE(&c.host_paused, 1);
    while (!TU_LOAD(&c.cb_paused)) tu_sleep_us(200);
    tu_sleep_us(20000);
    assert_int_equal(TU_LOAD(&c.calls_after), 0);
    TU_OK(fluxus_pipeline_cancel(c.p));
    (void)fluxus_pipeline_wait(c.p, 60000);
    assert_int_equal(TU_LOAD(&c.calls_after), 0);
    TU_OK(fluxus_pipeline_free(c.p));
    TU_OK(fluxus_runtime_free(rt));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_source_not_called_after_a_callback_stops_it),
        cmocka_unit_test(test_one_chain_to_sink_reads_several_batches_per_pass_while_cheap),
        cmocka_unit_test(test_busy_time_counts_every_batch_of_a_pass),
        cmocka_unit_test(test_stop_requests_from_another_thread_end_a_pass_between_batches),
        cmocka_unit_test_setup_teardown(test_map_chains_of_every_length_pull, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_chains_of_every_length_push, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_chains_of_every_length_heap_items_odd_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_mixed_chains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_chains_push_heap_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures_mid_chain_skip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures_mid_chain_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures_mixed_policies_split_chains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fanout_before_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_stage_splits_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parallel_ordered_stage_splits_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cursor_source_without_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_on_head_with_error_branch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_on_head_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_branch_on_head_without_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_on_head_with_error_route, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_sink_pull, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_sink_push_with_queues, setup, teardown),
    };
    return TU_RUN_GROUP(tests);
}
