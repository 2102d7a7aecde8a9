/*
 * test_join.c — join by key and scatter-gather: complete sets in input order whatever the
 * arrival order; broadcast -> three branches (a parallel unordered map, an async map completed
 * from a host thread) -> join; items that cannot join (partner failed upstream, join timeout
 * exactly on the virtual clock, max_keys, a duplicate input, an input out of range, a failing
 * callback); keep_input; conservation with heap items; two join workers; cancel with keys
 * waiting; option errors.
 */
#include "test_util.h"

#define T0 1000000000ull
#define US 1000ull

/* ----- value items for the exact tests: (serial << 32) | (id << 8) | input ----- */

#define JITEM(serial, id, input) \
    (((uint64_t)(serial) << 32) | ((uint64_t)(id) << 8) | (uint64_t)(input))
#define JID(item) (((item) >> 8) & 0xFFFFFFull)
#define JIN(item) ((uint32_t)((item) & 0xFFu))
#define JSERIAL(item) ((item) >> 32)
#define OUT_BASE 0x100000000000ull /* joined outputs: OUT_BASE + id */

static int32_t jkey(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = JID(item);
    *key = &k;
    *len = sizeof k;
    return 0;
}

/* The input is the low byte; 200 makes the input callback itself fail with 61. */
static int32_t jinput(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    if (JIN(item) == 200) return 61;
    *input = JIN(item);
    return 0;
}

typedef struct jrec {
    fluxus_runtime *rt; /* virtual clock tests: when the callback ran */
    uint32_t calls;
    uint32_t bad;       /* sets the callback saw that were not one item per input, in order */
    uint32_t n;
    uint64_t ids[512];
    uint64_t first_serial[512];
    uint64_t start[512]; /* start_ns - T0 */
    uint64_t at[512];    /* clock - T0 */
    uint32_t inputs;
    int32_t fail_odd; /* return this for odd ids */
    int keep;         /* take the inputs (fluxus_emitter_keep_input) */
    uint32_t nkept;
    uint64_t kept[512];
} jrec;

static int32_t jgather(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                       fluxus_emitter *em) {
    jrec *r = (jrec *)user;
    uint32_t i, slot;
    uint64_t id = JID(items[0]);
    TU_ADD(&r->calls, 1);
    if (count != r->inputs) TU_ADD(&r->bad, 1);
    for (i = 0; i < count; i++)
        if (JIN(items[i]) != i || JID(items[i]) != id) TU_ADD(&r->bad, 1);
    slot = TU_ADD(&r->n, 1) - 1;
    if (slot < 512) {
        r->ids[slot] = id;
        r->first_serial[slot] = JSERIAL(items[0]);
        if (r->rt != NULL) {
            r->start[slot] = start_ns - T0;
            r->at[slot] = tu_clock_now(r->rt) - T0;
        }
    }
    if (r->fail_odd && (id & 1)) return r->fail_odd;
    if (r->keep) {
        for (i = 0; i < count; i++) {
            uint32_t k = TU_ADD(&r->nkept, 1) - 1;
            if (k < 512) r->kept[k] = items[i];
        }
        if (fluxus_emitter_keep_input(em) != FLUXUS_OK) TU_ADD(&r->bad, 1);
    }
    return fluxus_emitter_emit(em, OUT_BASE + id);
}

/* Sink recording outputs in order. */
typedef struct outs {
    uint32_t n;
    uint64_t v[1024];
} outs;

static int32_t record_sink(void *user, uint64_t item) {
    outs *o = (outs *)user;
    uint32_t k = TU_ADD(&o->n, 1) - 1;
    if (k < 1024) o->v[k] = item;
    return 0;
}

/* Dead letters: item, status, stage and clock, under a lock (several workers may fail items). */
typedef struct dlrec {
    pthread_mutex_t mu;
    fluxus_runtime *rt;
    uint32_t n;
    uint64_t item[2048];
    int32_t status[2048];
    uint32_t stage[2048];
    uint64_t at[2048];
    uint32_t empty_messages;
} dlrec;

static void dl_init(dlrec *d, fluxus_runtime *rt) {
    memset(d, 0, sizeof *d);
    pthread_mutex_init(&d->mu, NULL);
    d->rt = rt;
}

static void dl_record(void *user, uint64_t item, const fluxus_failure *f) {
    dlrec *d = (dlrec *)user;
    const char *msg = tu_failure_message(f);
    pthread_mutex_lock(&d->mu);
    if (d->n < 2048) {
        d->item[d->n] = item;
        d->status[d->n] = tu_failure_status(f);
        d->stage[d->n] = tu_failure_stage_index(f);
        d->at[d->n] = d->rt != NULL ? tu_clock_now(d->rt) - T0 : 0;
    }
    if (msg == NULL || msg[0] == '\0') d->empty_messages++;
    d->n++;
    pthread_mutex_unlock(&d->mu);
}

/* A push-source pipeline: join (2 inputs unless told) -> recording sink, on the runtime given. */
static fluxus_pipeline *join_pipeline(fluxus_runtime *rt, jrec *r, outs *o, dlrec *d,
                                      tu_tracker *t, uint32_t inputs, uint32_t *join) {
    fluxus_pipeline *p = tu_pipeline(rt, "join", t);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_join(join, p, "gather", inputs, jinput, jgather, r, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, *join, jkey, NULL, NULL));
    if (d != NULL) {
        TU_OK(fluxus_stage_set_error_policy(p, *join, FLUXUS_ERROR_DEAD_LETTER));
        TU_OK(fluxus_pipeline_set_dead_letter(p, dl_record, d, NULL));
    } else {
        TU_OK(fluxus_stage_set_error_policy(p, *join, FLUXUS_ERROR_SKIP));
    }
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "out", record_sink, o, NULL));
    r->inputs = inputs;
    return p;
}

static void push_now(fluxus_runtime *rt, fluxus_pipeline *p, uint64_t item) {
    TU_OK(fluxus_pipeline_push(p, item, 0));
    tu_drive(rt);
}

static void push_at(fluxus_runtime *rt, fluxus_pipeline *p, uint64_t at_ns, uint64_t item) {
    tu_step_to(rt, T0 + at_ns);
    push_now(rt, p, item);
}

/*
 * Graph accounting of a finished pipeline: totals balance, stage counters add up to them, the
 * sink's `out` is `delivered`, admitted == source items + spawned, and every stage balances:
 * in + spawned == out + filtered + failed + dead_lettered + cancelled + routed.
 */
static void check_graph(fluxus_pipeline *p, uint32_t sink, uint64_t source_items) {
    fluxus_pipeline_stats s;
    uint32_t n = 0, i;
    uint64_t filtered = 0, failed = 0, dead = 0, cancelled = 0, spawned = 0;
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
        uint64_t lhs, rhs;
        tu_stage_stats(p, i, &st);
        filtered += st.filtered;
        failed += st.failed;
        dead += st.dead_lettered;
        cancelled += st.cancelled;
        spawned += st.spawned;
        lhs = st.in + st.spawned;
        rhs = st.out + st.filtered + st.failed + st.dead_lettered + st.cancelled + st.routed;
        if (lhs != rhs)
            fail_msg("stage %u '%s': in %llu + spawned %llu != out %llu + filtered %llu + "
                     "failed %llu + dead %llu + cancelled %llu + routed %llu",
                     i, tu_stage_name(p, i), (unsigned long long)st.in,
                     (unsigned long long)st.spawned, (unsigned long long)st.out,
                     (unsigned long long)st.filtered, (unsigned long long)st.failed,
                     (unsigned long long)st.dead_lettered, (unsigned long long)st.cancelled,
                     (unsigned long long)st.routed);
        if (i == sink) assert_int_equal(st.out, s.delivered);
    }
    assert_int_equal(filtered, s.filtered);
    assert_int_equal(failed, s.failed);
    assert_int_equal(dead, s.dead_lettered);
    assert_int_equal(cancelled, s.cancelled);
    if (source_items != UINT64_MAX) assert_int_equal(s.admitted, source_items + spawned);
}

/* ----- two inputs, any arrival order ----- */

static void test_two_inputs_join_in_input_order_whatever_the_arrival(void **state) {
    enum { N = 60 };
    fluxus_runtime *rt = tu_vruntime(T0);
    jrec r;
    outs o;
    tu_tracker t;
    uint32_t j = 0, i;
    uint64_t expect[N], serial = 0;
    uint32_t ne = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats js;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    tu_tracker_init(&t, 1u << 20);
    p = join_pipeline(rt, &r, &o, NULL, &t, 2, &j);
    TU_OK(fluxus_pipeline_start(p));
    /* First halves: even ids send input 1 first, odd ids input 0; then the partners, in an
     * order unrelated to the first (ids by a stride), in one batch and one by one. */
    for (i = 0; i < N; i++) TU_OK(fluxus_pipeline_push(p, JITEM(serial++, i, (i & 1) ? 0 : 1), 0));
    tu_drive(rt);
    assert_int_equal(r.calls, 0); /* nobody complete yet */
    for (i = 0; i < N; i++) {
        uint32_t id = (i * 7) % N; /* 7 and 60 are coprime: a permutation */
        TU_OK(fluxus_pipeline_push(p, JITEM(serial++, id, (id & 1) ? 1 : 0), 0));
        expect[ne++] = id;
        if (i % 3 == 0) tu_drive(rt);
    }
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.bad, 0);
    assert_int_equal(r.calls, N);
    assert_int_equal(o.n, N);
    for (i = 0; i < N; i++) {
        assert_int_equal(r.ids[i], expect[i]); /* each set goes when its last item arrives */
        assert_int_equal(o.v[i], OUT_BASE + expect[i]);
    }
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.in, 2 * N);
    assert_int_equal(js.filtered, 2 * N); /* the joined items are consumed */
    assert_int_equal(js.spawned, N);
    assert_int_equal(js.out, N);
    assert_int_equal(js.failed, 0);
    tu_check_conservation(p, &t, 0);
    assert_int_equal(t.freed_total, 2 * N); /* every input destroyed once, after its call */
    print_message("join 2 inputs: %u keys in shuffled order joined once each, in input order\n",
                  (unsigned)N);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* ----- scatter-gather with heap items ----- */

#define MSG_MAGIC 0x5ca77e12u
#define BR_REQUEST 9u
#define BR_RESULT 99u

typedef struct msg {
    uint64_t id;
    uint32_t branch;
    uint32_t magic;
    uint64_t value;
} msg;

static uint64_t g_allocs, g_frees, g_bad_frees;

static msg *msg_new(uint64_t id, uint32_t branch, uint64_t value) {
    msg *m = (msg *)calloc(1, sizeof *m);
    if (m == NULL) abort();
    m->id = id;
    m->branch = branch;
    m->magic = MSG_MAGIC;
    m->value = value;
    TU_ADD(&g_allocs, 1);
    return m;
}

static void msg_free(msg *m) {
    if (m->magic != MSG_MAGIC) TU_ADD(&g_bad_frees, 1);
    m->magic = 0;
    free(m);
    TU_ADD(&g_frees, 1);
}

#define M(item) ((msg *)(uintptr_t)(item))
#define W(m) ((uint64_t)(uintptr_t)(m))

static uint64_t branch_value(uint64_t id, uint32_t b) {
    return b == 0 ? id * 3 + 1 : b == 1 ? id * id + 5 : id + 1000003;
}

typedef struct sg {
    fluxus_pipeline *p;
    uint64_t n;    /* requests */
    uint64_t next; /* pull source */
    uint64_t *joined, *delivered;
    uint64_t bad_sets, bad_results, destroyed;
    /* the async branch's host thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t q_item[4096], q_token[4096];
    uint32_t q_head, q_tail;
    int stop;
    uint64_t take_limit; /* the host takes (and completes) only this many items until stopped
                            (0: no limit); it takes them in start order */
    uint64_t taken, completed, refused;
} sg;

static int32_t sg_pull(void *user, uint64_t *item) {
    sg *s = (sg *)user;
    if (s->next >= s->n) return FLUXUS_PULL_END;
    *item = W(msg_new(s->next++, BR_REQUEST, 0));
    return FLUXUS_PULL_ITEM;
}

static void sg_item_free(void *user, uint64_t item) {
    sg *s = (sg *)user;
    TU_ADD(&s->destroyed, 1);
    msg_free(M(item));
}

static int32_t sg_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    *copy = W(msg_new(M(item)->id, BR_REQUEST, 0));
    return 0;
}

static int32_t svc0(void *user, uint64_t in, uint64_t *out) {
    msg *m = M(in);
    (void)user;
    m->branch = 0;
    m->value = branch_value(m->id, 0);
    *out = in;
    return 0;
}

static int32_t svc1(void *user, uint64_t in, uint64_t *out) {
    msg *m = M(in);
    (void)user;
    tu_spin((uint32_t)(tu_mix64(m->id) % 2000)); /* uneven work: the two workers reorder */
    m->branch = 1;
    m->value = branch_value(m->id, 1);
    *out = in;
    return 0;
}

/* The async branch: queue the item for the host thread, which completes it. */
static int32_t svc2_start(void *user, uint64_t item, uint64_t completion) {
    sg *s = (sg *)user;
    pthread_mutex_lock(&s->mu);
    if (s->q_tail - s->q_head >= 4096) {
        pthread_mutex_unlock(&s->mu);
        return 70; /* cannot happen: in-flight limit 256 */
    }
    s->q_item[s->q_tail % 4096] = item;
    s->q_token[s->q_tail % 4096] = completion;
    s->q_tail++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void *svc2_host(void *arg) {
    sg *s = (sg *)arg;
    uint64_t items[64], tokens[64];
    for (;;) {
        uint32_t k = 0, i;
        pthread_mutex_lock(&s->mu);
        while (!s->stop && (s->q_head == s->q_tail ||
                            (s->take_limit && s->taken >= s->take_limit)))
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->q_head == s->q_tail) { /* stopped, nothing left */
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        while (s->q_head != s->q_tail && k < 64 &&
               (s->stop || !s->take_limit || s->taken < s->take_limit)) {
            items[k] = s->q_item[s->q_head % 4096];
            tokens[k] = s->q_token[s->q_head % 4096];
            s->q_head++;
            s->taken++;
            k++;
        }
        pthread_mutex_unlock(&s->mu);
        /* complete the batch in reverse: completion order differs from start order */
        for (i = k; i-- > 0;) {
            msg *m = M(items[i]);
            int32_t rc;
            m->branch = 2;
            m->value = branch_value(m->id, 2);
            rc = fluxus_pipeline_complete_async(s->p, tokens[i], 0, items[i]);
            if (rc == FLUXUS_OK)
                TU_ADD(&s->completed, 1);
            else {
                /* refused (cancelled): the item is still ours */
                TU_ADD(&s->refused, 1);
                msg_free(m);
            }
        }
    }
}

static int32_t sg_key(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = M(item)->id;
    *key = &k;
    *len = sizeof k;
    return 0;
}

static int32_t sg_input(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    *input = M(item)->branch;
    return 0;
}

static int32_t sg_gather(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                         fluxus_emitter *em) {
    sg *s = (sg *)user;
    uint64_t id = M(items[0])->id, sum = 0;
    uint32_t i;
    (void)start_ns;
    if (count != 3) TU_ADD(&s->bad_sets, 1);
    for (i = 0; i < count; i++) {
        msg *m = M(items[i]);
        if (m->magic != MSG_MAGIC || m->id != id || m->branch != i ||
            m->value != branch_value(id, i))
            TU_ADD(&s->bad_sets, 1);
        sum += m->value;
    }
    if (id < s->n) TU_ADD(&s->joined[id], 1);
    return fluxus_emitter_emit(em, W(msg_new(id, BR_RESULT, sum)));
}

static int32_t sg_sink(void *user, uint64_t item) {
    sg *s = (sg *)user;
    msg *m = M(item);
    uint64_t id = m->id;
    if (m->magic != MSG_MAGIC || m->branch != BR_RESULT ||
        m->value != branch_value(id, 0) + branch_value(id, 1) + branch_value(id, 2))
        TU_ADD(&s->bad_results, 1);
    if (id < s->n) TU_ADD(&s->delivered[id], 1);
    msg_free(m);
    TU_ADD(&s->delivered[s->n], 1); /* total in the spare slot */
    return 0;
}

typedef struct sg_stages {
    uint32_t bc, m0, m1, m2, join, sink;
} sg_stages;

/*
 * source -> broadcast -> { svc0 | svc1 (2 workers, unordered) | svc2 (async, host thread) }
 *        -> join (3 inputs, keyed by request id) -> sink.
 * Stages are added so that the sink is the last one.
 */
static fluxus_pipeline *sg_pipeline(fluxus_runtime *rt, sg *s, sg_stages *st,
                                    uint32_t join_workers) {
    fluxus_pipeline *p = tu_pipeline(rt, "scatter-gather", NULL);
    s->p = p;
    TU_OK(fluxus_pipeline_set_item_free(p, sg_item_free, s, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(p, "requests", sg_pull, s, NULL));
    TU_OK(fluxus_pipeline_add_broadcast(&st->bc, p, "scatter"));
    TU_OK(fluxus_stage_add_route(NULL, p, st->bc, "a"));
    TU_OK(fluxus_stage_add_route(NULL, p, st->bc, "b"));
    TU_OK(fluxus_stage_add_route(NULL, p, st->bc, "c"));
    TU_OK(fluxus_stage_set_copy(p, st->bc, sg_copy, NULL, NULL));
    TU_OK(fluxus_pipeline_branch(p, st->bc, 0));
    TU_OK(fluxus_pipeline_add_map(&st->m0, p, "svc0", svc0, NULL, NULL));
    TU_OK(fluxus_pipeline_branch(p, st->bc, 1));
    TU_OK(fluxus_pipeline_add_map(&st->m1, p, "svc1", svc1, NULL, NULL));
    TU_OK(fluxus_stage_set_workers(p, st->m1, 2));
    TU_OK(fluxus_stage_set_order(p, st->m1, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_pipeline_branch(p, st->bc, 2));
    TU_OK(fluxus_pipeline_add_async_map(&st->m2, p, "svc2", svc2_start, s, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, st->m2, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_branch(p, st->m0, 0));
    TU_OK(fluxus_pipeline_add_join(&st->join, p, "gather", 3, sg_input, sg_gather, s, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, st->join, sg_key, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, st->join, FLUXUS_ERROR_SKIP));
    if (join_workers > 1) TU_OK(fluxus_stage_set_workers(p, st->join, join_workers));
    TU_OK(fluxus_pipeline_add_sink(&st->sink, p, "reply", sg_sink, s, NULL));
    TU_OK(fluxus_pipeline_connect(p, st->m1, 0, st->join));
    TU_OK(fluxus_pipeline_connect(p, st->m2, 0, st->join));
    return p;
}

static void sg_init(sg *s, uint64_t n) {
    memset(s, 0, sizeof *s);
    s->n = n;
    s->joined = (uint64_t *)calloc(n + 1, sizeof(uint64_t));
    s->delivered = (uint64_t *)calloc(n + 1, sizeof(uint64_t));
    assert_non_null(s->joined);
    assert_non_null(s->delivered);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    g_allocs = g_frees = g_bad_frees = 0;
}

static void sg_stop_host(sg *s, pthread_t th) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(th, NULL);
}

static void sg_destroy(sg *s) {
    free(s->joined);
    free(s->delivered);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}

static void run_scatter_gather(uint32_t join_workers) {
    enum { N = 3000 };
    fluxus_runtime *rt = tu_runtime(4);
    sg s;
    sg_stages st;
    pthread_t th;
    uint64_t i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    fluxus_stage_stats bs, js;
    sg_init(&s, N);
    p = sg_pipeline(rt, &s, &st, join_workers);
    assert_int_equal(pthread_create(&th, NULL, svc2_host, &s), 0);
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    sg_stop_host(&s, th);
    assert_int_equal(s.bad_sets, 0);
    assert_int_equal(s.bad_results, 0);
    for (i = 0; i < N; i++) {
        if (s.joined[i] != 1 || s.delivered[i] != 1)
            fail_msg("request %llu joined %llu times, delivered %llu times",
                     (unsigned long long)i, (unsigned long long)s.joined[i],
                     (unsigned long long)s.delivered[i]);
    }
    assert_int_equal(s.completed, N);
    assert_int_equal(s.refused, 0);
    tu_stats(p, &ps);
    assert_int_equal(ps.admitted, 4 * N); /* requests + 2 copies each + one result each */
    assert_int_equal(ps.delivered, N);
    assert_int_equal(ps.filtered, 3 * N); /* the gathered parts, consumed at the join */
    assert_int_equal(ps.failed, 0);
    tu_stage_stats(p, st.bc, &bs);
    assert_int_equal(bs.spawned, 2 * N);
    assert_int_equal(bs.out, 3 * N);
    tu_stage_stats(p, st.join, &js);
    assert_int_equal(js.in, 3 * N);
    assert_int_equal(js.spawned, N);
    assert_int_equal(js.workers, join_workers);
    check_graph(p, st.sink, N);
    assert_int_equal(s.destroyed, 3 * N);
    tu_free_all(p, rt);
    assert_int_equal(g_bad_frees, 0);
    assert_int_equal(g_allocs, g_frees); /* every request, copy, part and result freed once */
    assert_int_equal(g_allocs, 4 * N);
    print_message("scatter-gather (%u join worker%s): %u requests x 3 branches gathered once "
                  "each; %llu heap items, all freed once\n",
                  (unsigned)join_workers, join_workers > 1 ? "s" : "", (unsigned)N,
                  (unsigned long long)g_allocs);
    sg_destroy(&s);
}

static void test_scatter_gather_three_branches_heap_items(void **state) {
    (void)state;
    run_scatter_gather(1);
}

static void test_scatter_gather_with_two_join_workers(void **state) {
    (void)state;
    run_scatter_gather(2);
}

/* ----- partial failure: partners fail at the join with FLUXUS_ECLOSED at end of input ----- */

static int32_t pf_copy(void *user, uint64_t item, uint32_t route, uint64_t *copy) {
    (void)user;
    (void)route;
    *copy = item;
    return 0;
}
static int32_t pf_b0(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in * 4 + 0;
    return 0;
}
static int32_t pf_b1(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in * 4 + 1;
    return 0;
}
static int32_t pf_b2(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    if (in % 7 == 3) return 77;
    *out = in * 4 + 2;
    return 0;
}
static int32_t pf_key(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = item / 4;
    *key = &k;
    *len = sizeof k;
    return 0;
}
static int32_t pf_input(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    *input = (uint32_t)(item % 4);
    return 0;
}
static uint64_t pf_bad;
static int32_t pf_gather(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                         fluxus_emitter *em) {
    uint32_t i;
    (void)user;
    (void)start_ns;
    for (i = 0; i < count; i++)
        if (items[i] / 4 != items[0] / 4 || items[i] % 4 != i) TU_ADD(&pf_bad, 1);
    return fluxus_emitter_emit(em, items[0] / 4);
}

static void test_partners_of_a_failed_branch_item_fail_closed_at_end(void **state) {
    enum { N = 700 };
    fluxus_runtime *rt = tu_runtime(4);
    tu_range_source src = {0, N, 0};
    tu_tracker t;
    dlrec d;
    uint32_t bc, m0, m1, m2, j, k, i, nfail = 0;
    uint8_t seen[4 * N];
    fluxus_pipeline *p;
    fluxus_stage_stats s2, js;
    fluxus_pipeline_stats ps;
    (void)state;
    pf_bad = 0;
    dl_init(&d, NULL);
    tu_tracker_init(&t, N);
    p = tu_pipeline(rt, "partial", &t);
    TU_OK(fluxus_pipeline_set_pull_source(p, "src", tu_range_pull, &src, NULL));
    TU_OK(fluxus_pipeline_set_dead_letter(p, dl_record, &d, NULL));
    TU_OK(fluxus_pipeline_add_broadcast(&bc, p, "scatter"));
    TU_OK(fluxus_stage_add_route(NULL, p, bc, "a"));
    TU_OK(fluxus_stage_add_route(NULL, p, bc, "b"));
    TU_OK(fluxus_stage_add_route(NULL, p, bc, "c"));
    TU_OK(fluxus_stage_set_copy(p, bc, pf_copy, NULL, NULL));
    TU_OK(fluxus_pipeline_branch(p, bc, 1));
    TU_OK(fluxus_pipeline_add_map(&m1, p, "b1", pf_b1, NULL, NULL));
    TU_OK(fluxus_pipeline_branch(p, bc, 2));
    TU_OK(fluxus_pipeline_add_map(&m2, p, "b2", pf_b2, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, m2, FLUXUS_ERROR_SKIP));
    TU_OK(fluxus_pipeline_branch(p, bc, 0));
    TU_OK(fluxus_pipeline_add_map(&m0, p, "b0", pf_b0, NULL, NULL));
    TU_OK(fluxus_pipeline_add_join(&j, p, "gather", 3, pf_input, pf_gather, NULL, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, j, pf_key, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, j, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_pipeline_add_sink(&k, p, "ids", tu_tracker_sink, &t, NULL));
    TU_OK(fluxus_pipeline_connect(p, m1, 0, j));
    TU_OK(fluxus_pipeline_connect(p, m2, 0, j));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    for (i = 0; i < N; i++) nfail += (i % 7 == 3);
    assert_int_equal(pf_bad, 0);
    tu_stage_stats(p, m2, &s2);
    assert_int_equal(s2.failed, nfail);
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.dead_lettered, 2 * nfail);
    assert_int_equal(js.spawned, N - nfail);
    assert_int_equal(d.n, 2 * nfail);
    assert_int_equal(d.empty_messages, 0);
    memset(seen, 0, sizeof seen);
    for (i = 0; i < d.n; i++) {
        uint64_t it = d.item[i];
        assert_int_equal(d.status[i], FLUXUS_ECLOSED);
        assert_int_equal(d.stage[i], j);
        assert_true(it < 4 * N);
        assert_int_equal((it / 4) % 7, 3); /* only partners of a failed id */
        assert_true(it % 4 == 0 || it % 4 == 1);
        assert_int_equal(seen[it], 0);
        seen[it] = 1;
    }
    for (i = 0; i < N; i++) {
        uint32_t want = (i % 7 == 3) ? 0u : 1u;
        assert_int_equal(t.delivered[i], want);
    }
    tu_stats(p, &ps);
    assert_int_equal(ps.delivered, N - nfail);
    assert_int_equal(ps.dead_lettered, 2 * nfail);
    assert_int_equal(ps.failed, nfail);
    check_graph(p, k, N);
    print_message("partial failure: %u ids failed at branch 2 -> %u partners FLUXUS_ECLOSED at "
                  "the join, %u gathered\n",
                  nfail, d.n, (unsigned)(N - nfail));
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
    pthread_mutex_destroy(&d.mu);
}

/* ----- join timeout, exactly on the virtual clock ----- */

static void test_join_timeout_fails_incomplete_keys_exactly_at_start_plus_timeout(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    jrec r;
    outs o;
    dlrec d;
    uint32_t j = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats js;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    r.rt = rt;
    dl_init(&d, rt);
    p = join_pipeline(rt, &r, &o, &d, NULL, 2, &j);
    TU_OK(fluxus_stage_set_join_timeout_us(p, j, 1000));
    TU_OK(fluxus_pipeline_start(p));
    push_at(rt, p, 100 * US, JITEM(1, 1, 0));   /* key 1 starts waiting at 100 us */
    push_at(rt, p, 500 * US, JITEM(2, 2, 0));   /* key 2 at 500 us */
    push_at(rt, p, 600 * US, JITEM(3, 2, 1));   /* key 2 complete */
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.start[0], 500 * US);     /* start_ns: its first item's arrival */
    assert_int_equal(r.at[0], 600 * US);
    tu_step_to(rt, T0 + 1100 * US - 1);         /* one ns before key 1's deadline */
    assert_int_equal(d.n, 0);
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.dead_lettered, 0);
    tu_step_to(rt, T0 + 1100 * US);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.item[0], JITEM(1, 1, 0));
    assert_int_equal(d.status[0], FLUXUS_ETIMEDOUT);
    assert_int_equal(d.at[0], 1100 * US);
    assert_int_equal(d.stage[0], j);
    /* Two keys waiting; the older goes first, each at its own deadline. */
    push_at(rt, p, 1200 * US, JITEM(4, 3, 1));
    push_at(rt, p, 1300 * US, JITEM(5, 4, 0));
    tu_step_to(rt, T0 + 2200 * US - 1);
    assert_int_equal(d.n, 1);
    tu_step_to(rt, T0 + 2200 * US);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.item[1], JITEM(4, 3, 1));
    assert_int_equal(d.at[1], 2200 * US);
    /* key 1 again: after its timeout it is a new key */
    push_at(rt, p, 2250 * US, JITEM(6, 1, 1));
    push_at(rt, p, 2299 * US, JITEM(7, 4, 1)); /* key 4 completes just before its deadline */
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.ids[1], 4);
    assert_int_equal(r.start[1], 1300 * US);
    tu_step_to(rt, T0 + 2300 * US);
    assert_int_equal(d.n, 2);
    /* End of input before key 1's deadline (3250 us): FLUXUS_ECLOSED. */
    tu_step_to(rt, T0 + 2500 * US);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(d.n, 3);
    assert_int_equal(d.item[2], JITEM(6, 1, 1));
    assert_int_equal(d.status[2], FLUXUS_ECLOSED);
    assert_int_equal(d.at[2], 2500 * US);
    assert_int_equal(o.n, 2);
    assert_int_equal(r.bad, 0);
    tu_check_conservation(p, NULL, 0);
    print_message("join timeout 1000 us: keys failed FLUXUS_ETIMEDOUT at exactly 1100 and "
                  "2200 us (not 1 ns before), the rest FLUXUS_ECLOSED at end of input\n");
    tu_free_all(p, rt);
    pthread_mutex_destroy(&d.mu);
}

/* ----- max_keys, duplicate input, input out of range, failing input callback ----- */

static void test_full_duplicate_and_out_of_range_items_fail_with_their_codes(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    jrec r;
    outs o;
    dlrec d;
    tu_tracker t;
    uint32_t j = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats js;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    dl_init(&d, NULL);
    tu_tracker_init(&t, 1u << 20);
    /* tracker values: the items are small here (serial 0) */
    p = join_pipeline(rt, &r, &o, &d, &t, 2, &j);
    TU_OK(fluxus_stage_set_join_max_keys(p, j, 2));
    TU_OK(fluxus_pipeline_start(p));
    push_now(rt, p, JITEM(0, 1, 0));
    push_now(rt, p, JITEM(0, 2, 0));
    push_now(rt, p, JITEM(0, 3, 0)); /* a third key while 2 wait */
    assert_int_equal(d.n, 1);
    assert_int_equal(d.item[0], JITEM(0, 3, 0));
    assert_int_equal(d.status[0], FLUXUS_EFULL);
    push_now(rt, p, JITEM(0, 2, 1)); /* key 2 completes: room for one */
    assert_int_equal(r.calls, 1);
    push_now(rt, p, JITEM(0, 3, 1)); /* now accepted */
    assert_int_equal(d.n, 1);
    push_now(rt, p, JITEM(0, 1, 0)); /* duplicate for input 0 of waiting key 1 */
    assert_int_equal(d.n, 2);
    assert_int_equal(d.item[1], JITEM(0, 1, 0));
    assert_int_equal(d.status[1], FLUXUS_EINVAL);
    push_now(rt, p, JITEM(0, 1, 2));   /* input 2 of a 2-input join */
    push_now(rt, p, JITEM(0, 1, 200)); /* input callback fails with 61 */
    push_now(rt, p, JITEM(0, 5, 64));  /* far out of range, on a key not waiting */
    assert_int_equal(d.n, 5);
    assert_int_equal(d.status[2], FLUXUS_ERANGE);
    assert_int_equal(d.status[3], 61);
    assert_int_equal(d.status[4], FLUXUS_ERANGE);
    /* none of these took a key slot (key 5 would not have fitted: FLUXUS_ERANGE came first) */
    push_now(rt, p, JITEM(0, 3, 0));
    push_now(rt, p, JITEM(0, 1, 1));
    assert_int_equal(r.calls, 3);
    assert_int_equal(r.ids[1], 3);
    assert_int_equal(r.ids[2], 1);
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(d.n, 5);
    assert_int_equal(r.bad, 0);
    assert_int_equal(o.n, 3);
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.in, 11);
    assert_int_equal(js.dead_lettered, 5);
    assert_int_equal(js.filtered, 6);
    tu_check_conservation(p, &t, 0);
    assert_int_equal(t.freed_total, 11); /* 6 consumed + 5 dead-lettered */
    print_message("join: max_keys 2 -> FLUXUS_EFULL, duplicate input -> FLUXUS_EINVAL, inputs 2 "
                  "and 64 -> FLUXUS_ERANGE, input callback 61 -> 61\n");
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
    pthread_mutex_destroy(&d.mu);
}

/* ----- a failing join callback; keep_input ----- */

static void test_a_failing_callback_fails_the_joined_items_with_its_status(void **state) {
    enum { N = 20 };
    fluxus_runtime *rt = tu_vruntime(T0);
    jrec r;
    outs o;
    dlrec d;
    tu_tracker t;
    uint32_t j = 0, i, in;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    r.fail_odd = 42;
    dl_init(&d, NULL);
    tu_tracker_init(&t, 1u << 20);
    p = join_pipeline(rt, &r, &o, &d, &t, 3, &j);
    TU_OK(fluxus_pipeline_start(p));
    for (in = 3; in-- > 0;)
        for (i = 0; i < N; i++) TU_OK(fluxus_pipeline_push(p, JITEM(0, i, in), 0));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, N);
    assert_int_equal(r.bad, 0);
    assert_int_equal(o.n, N / 2);
    assert_int_equal(d.n, 3 * (N / 2));
    for (i = 0; i < d.n; i++) {
        assert_int_equal(d.status[i], 42);
        assert_int_equal(JID(d.item[i]) & 1, 1);
    }
    for (i = 0; i < o.n; i++) assert_int_equal((o.v[i] - OUT_BASE) & 1, 0);
    tu_stats(p, &ps);
    assert_int_equal(ps.dead_lettered, 3 * (N / 2));
    assert_int_equal(ps.filtered, 3 * (N / 2));
    tu_check_conservation(p, &t, 0);
    print_message("join callback returning 42 for %u of %u keys: their %u items dead-lettered "
                  "with 42\n",
                  (unsigned)(N / 2), (unsigned)N, d.n);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
    pthread_mutex_destroy(&d.mu);
}

static void test_keep_input_leaves_the_joined_items_to_the_callback(void **state) {
    enum { N = 30 };
    fluxus_runtime *rt = tu_vruntime(T0);
    jrec r;
    outs o;
    tu_tracker t;
    uint32_t j = 0, i;
    fluxus_pipeline *p;
    fluxus_stage_stats js;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    r.keep = 1;
    tu_tracker_init(&t, 1u << 20);
    p = join_pipeline(rt, &r, &o, NULL, &t, 2, &j);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < N; i++) TU_OK(fluxus_pipeline_push(p, JITEM(0, i, 1), 0));
    for (i = 0; i < N; i++) TU_OK(fluxus_pipeline_push(p, JITEM(0, i, 0), 0));
    TU_OK(fluxus_pipeline_push(p, JITEM(0, 999, 0), 0)); /* never completes */
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    assert_int_equal(r.calls, N);
    assert_int_equal(r.nkept, 2 * N);
    assert_int_equal(o.n, N);
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.filtered, 2 * N); /* still counted consumed */
    assert_int_equal(js.failed, 1);
    /* the destructor ran only for the incomplete key's item, never for a kept one */
    assert_int_equal(t.freed_total, 1);
    assert_int_equal(t.freed[JITEM(0, 999, 0)], 1);
    for (i = 0; i < r.nkept; i++) assert_int_equal(t.freed[r.kept[i]], 0);
    tu_check_conservation(p, &t, 2 * N);
    print_message("keep_input: %u joined items left to the callback, destructor ran for none "
                  "of them\n",
                  r.nkept);
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* ----- heap items: every item ends once, with one and two join workers ----- */

typedef struct hitem {
    uint64_t idx; /* tracker index */
    uint64_t id;
    uint32_t input; /* 200: the input callback fails */
    uint32_t magic;
} hitem;

#define HI(item) ((hitem *)(uintptr_t)(item))

enum { H_IDS = 400, H_MAX_ITEMS = 2048, H_OUT = H_MAX_ITEMS };

typedef struct hctx {
    tu_tracker t;
    hitem *seq[H_MAX_ITEMS]; /* pulled in this order; freed by the pipeline */
    uint64_t id_of[H_MAX_ITEMS];
    uint32_t input_of[H_MAX_ITEMS];
    uint32_t n, next;
    int32_t status[H_MAX_ITEMS + H_IDS]; /* dead-letter status per idx */
    uint32_t dl_count[H_MAX_ITEMS + H_IDS];
    uint32_t joined[H_IDS];
    uint32_t bad;
} hctx;

static hitem *hitem_new(hctx *c, uint64_t id, uint32_t input) {
    hitem *h = (hitem *)calloc(1, sizeof *h);
    if (h == NULL) abort();
    h->idx = c->n;
    h->id = id;
    h->input = input;
    h->magic = MSG_MAGIC;
    c->id_of[c->n] = id;
    c->input_of[c->n] = input;
    c->seq[c->n++] = h;
    return h;
}

static int32_t h_pull(void *user, uint64_t *item) {
    hctx *c = (hctx *)user;
    if (c->next >= c->n) return FLUXUS_PULL_END;
    *item = W(c->seq[c->next++]);
    return FLUXUS_PULL_ITEM;
}

static void h_free(void *user, uint64_t item) {
    hctx *c = (hctx *)user;
    hitem *h = HI(item);
    if (h->magic != MSG_MAGIC) TU_ADD(&c->bad, 1);
    h->magic = 0;
    tu_item_free(&c->t, h->idx);
    free(h);
}

static int32_t h_key(void *user, uint64_t item, const void **key, size_t *len) {
    static __thread uint64_t k;
    (void)user;
    k = HI(item)->id;
    *key = &k;
    *len = sizeof k;
    return 0;
}

static int32_t h_input(void *user, uint64_t item, uint32_t *input) {
    (void)user;
    if (HI(item)->input == 200) return 61;
    *input = HI(item)->input;
    return 0;
}

static int32_t h_gather(void *user, const uint64_t *items, uint32_t count, uint64_t start_ns,
                        fluxus_emitter *em) {
    hctx *c = (hctx *)user;
    uint64_t id = HI(items[0])->id;
    uint32_t i;
    hitem *out;
    (void)start_ns;
    if (count != 2) TU_ADD(&c->bad, 1);
    for (i = 0; i < count; i++)
        if (HI(items[i])->id != id || HI(items[i])->input != i) TU_ADD(&c->bad, 1);
    if (id < H_IDS) TU_ADD(&c->joined[id], 1);
    if (id % 5 == 3) return 42;
    out = (hitem *)calloc(1, sizeof *out);
    if (out == NULL) abort();
    out->idx = H_OUT + id;
    out->id = id;
    out->input = 100;
    out->magic = MSG_MAGIC;
    return fluxus_emitter_emit(em, W(out));
}

static int32_t h_sink(void *user, uint64_t item) {
    hctx *c = (hctx *)user;
    hitem *h = HI(item);
    if (h->magic != MSG_MAGIC || h->input != 100) TU_ADD(&c->bad, 1);
    tu_tracker_deliver(&c->t, h->idx);
    free(h);
    return 0;
}

static void h_dead(void *user, uint64_t item, const fluxus_failure *f) {
    hctx *c = (hctx *)user;
    uint64_t idx = HI(item)->idx;
    if (idx < H_MAX_ITEMS + H_IDS) {
        TU_STORE(&c->status[idx], tu_failure_status(f));
        TU_ADD(&c->dl_count[idx], 1);
    }
}

/*
 * Per id class (id % 5), after every id's first item (input 0) arrived:
 *   0: input 1                      -> joined, one output
 *   1: an item whose input fails 61 -> that item 61; the waiting one FLUXUS_ECLOSED
 *   2: input 0 again, then input 1  -> the duplicate FLUXUS_EINVAL; joined
 *   3: input 1                      -> joined, the callback fails both with 42
 *   4: input 7                      -> that item FLUXUS_ERANGE; the waiting one FLUXUS_ECLOSED
 */
static void h_build(hctx *c) {
    uint32_t id;
    memset(c, 0, sizeof *c);
    tu_tracker_init(&c->t, H_MAX_ITEMS + H_IDS);
    for (id = 0; id < H_IDS; id++) hitem_new(c, id, 0);
    for (id = H_IDS; id-- > 0;) {
        switch (id % 5) {
        case 0: hitem_new(c, id, 1); break;
        case 1: hitem_new(c, id, 200); break;
        case 2:
            hitem_new(c, id, 0);
            hitem_new(c, id, 1);
            break;
        case 3: hitem_new(c, id, 1); break;
        default: hitem_new(c, id, 7); break;
        }
    }
}

/* The expected dead-letter status of item idx (0: consumed by a successful join). */
static int32_t h_expected(const hctx *c, uint32_t idx) {
    uint32_t cls = (uint32_t)(c->id_of[idx] % 5);
    int first = idx < H_IDS;
    switch (cls) {
    case 0: return 0;
    case 1: return first ? FLUXUS_ECLOSED : 61;
    case 2: return (!first && c->input_of[idx] == 0) ? FLUXUS_EINVAL : 0;
    case 3: return 42;
    default: return first ? FLUXUS_ECLOSED : FLUXUS_ERANGE;
    }
}

static void run_heap_join(uint32_t workers, int32_t *statuses_out) {
    fluxus_runtime *rt = tu_runtime(4);
    hctx *c = (hctx *)malloc(sizeof(hctx));
    uint32_t j = 0, k = 0, i, outputs = 0;
    fluxus_pipeline *p;
    fluxus_stage_stats js;
    assert_non_null(c);
    h_build(c);
    p = tu_pipeline(rt, "heap-join", NULL);
    TU_OK(fluxus_pipeline_set_item_free(p, h_free, c, NULL));
    TU_OK(fluxus_pipeline_set_dead_letter(p, h_dead, c, NULL));
    TU_OK(fluxus_pipeline_set_pull_source(p, "items", h_pull, c, NULL));
    TU_OK(fluxus_pipeline_add_join(&j, p, "gather", 2, h_input, h_gather, c, NULL));
    TU_OK(fluxus_stage_set_key_fn(p, j, h_key, NULL, NULL));
    TU_OK(fluxus_stage_set_error_policy(p, j, FLUXUS_ERROR_DEAD_LETTER));
    TU_OK(fluxus_stage_set_workers(p, j, workers));
    TU_OK(fluxus_pipeline_add_sink(&k, p, "out", h_sink, c, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(tu_wait(p));
    assert_int_equal(c->bad, 0);
    for (i = 0; i < c->n; i++) {
        int32_t want = h_expected(c, i);
        if (c->dl_count[i] != (want != 0 ? 1u : 0u) || c->status[i] != want)
            fail_msg("%u workers: item %u (id %llu, input %u): dead-lettered %u times with %d, "
                     "expected %d",
                     workers, i, (unsigned long long)c->id_of[i], c->input_of[i],
                     c->dl_count[i], c->status[i], want);
        statuses_out[i] = c->status[i];
    }
    for (i = 0; i < H_IDS; i++) {
        uint32_t cls = i % 5;
        uint32_t want_join = (cls == 0 || cls == 2 || cls == 3) ? 1u : 0u;
        uint32_t want_out = (cls == 0 || cls == 2) ? 1u : 0u;
        assert_int_equal(c->joined[i], want_join);
        assert_int_equal(c->t.delivered[H_OUT + i], want_out);
        assert_int_equal(c->t.freed[H_OUT + i], 0);
        outputs += want_out;
    }
    /* every input ended exactly once, by the destructor (consumed or dead-lettered) */
    for (i = 0; i < c->n; i++) {
        assert_int_equal(c->t.freed[i], 1);
        assert_int_equal(c->t.delivered[i], 0);
    }
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.workers, workers);
    assert_int_equal(js.in, c->n);
    assert_int_equal(js.spawned, outputs);
    check_graph(p, k, c->n);
    assert_int_equal(c->t.freed_total, c->n);
    assert_int_equal(c->t.out_of_range, 0);
    tu_free_all(p, rt);
    tu_tracker_destroy(&c->t);
    free(c);
}

static void test_heap_items_end_once_and_two_workers_agree(void **state) {
    static int32_t one[H_MAX_ITEMS], two[H_MAX_ITEMS];
    (void)state;
    run_heap_join(1, one);
    run_heap_join(2, two);
    assert_memory_equal(one, two, sizeof one);
    print_message("heap join: the same status for each of %u items (5 outcomes) with 1 and 2 "
                  "join workers; each ended once\n",
                  (unsigned)(H_IDS + H_IDS / 5 * 6));
}

/* ----- cancel with keys waiting ----- */

static void test_cancel_with_keys_waiting_cancels_them(void **state) {
    fluxus_runtime *rt = tu_vruntime(T0);
    jrec r;
    outs o;
    tu_tracker t;
    uint32_t j = 0, i;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    fluxus_stage_stats js;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    tu_tracker_init(&t, 1u << 20);
    p = join_pipeline(rt, &r, &o, NULL, &t, 2, &j);
    TU_OK(fluxus_pipeline_start(p));
    for (i = 0; i < 50; i++) TU_OK(fluxus_pipeline_push(p, JITEM(0, i, 0), 0));
    for (i = 0; i < 10; i++) TU_OK(fluxus_pipeline_push(p, JITEM(0, i, 1), 0));
    tu_drive(rt); /* 10 joined, 40 keys waiting */
    assert_int_equal(r.calls, 10);
    for (i = 100; i < 130; i++) TU_OK(fluxus_pipeline_push(p, JITEM(0, i, 0), 0)); /* queued */
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    assert_int_equal(r.calls, 10);
    tu_stats(p, &ps);
    assert_int_equal(ps.cancelled, 70);
    assert_int_equal(ps.delivered, 10);
    tu_stage_stats(p, j, &js);
    assert_int_equal(js.cancelled, 70);
    tu_check_conservation(p, &t, 0);
    for (i = 10; i < 50; i++) assert_int_equal(t.freed[JITEM(0, i, 0)], 1);
    for (i = 100; i < 130; i++) assert_int_equal(t.freed[JITEM(0, i, 0)], 1);
    assert_int_equal(t.freed_total, 90); /* 20 consumed + 70 cancelled */
    print_message("cancel: 40 waiting keys + 30 queued items cancelled, conservation holds\n");
    tu_free_all(p, rt);
    tu_tracker_destroy(&t);
}

/* Cancel while the join works through a backlog (threads): its waiting keys are cancelled, not
 * failed as if the input had ended (no FLUXUS_ECLOSED dead letters). */
static uint64_t counted_frees;
static void count_free(void *user, uint64_t item) {
    (void)user;
    (void)item;
    TU_ADD(&counted_frees, 1);
}

static void test_cancel_while_the_join_works_through_a_backlog(void **state) {
    enum { N = 100000 };
    fluxus_runtime *rt = tu_runtime(2);
    jrec r;
    outs o;
    dlrec d;
    uint32_t j = 0, pushed = 0, i;
    uint64_t *items = (uint64_t *)malloc(N * sizeof(uint64_t));
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    (void)state;
    assert_non_null(items);
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    dl_init(&d, NULL);
    counted_frees = 0;
    for (i = 0; i < N; i++) items[i] = JITEM(0, i, 0); /* N keys, none completes */
    p = join_pipeline(rt, &r, &o, &d, NULL, 2, &j);
    TU_OK(fluxus_pipeline_set_item_free(p, count_free, NULL, NULL));
    TU_OK(fluxus_stage_set_queue_capacity(p, j, N));
    TU_OK(fluxus_pipeline_start(p));
    TU_OK(fluxus_pipeline_push_many(&pushed, p, items, N, TU_WAIT_MS));
    assert_int_equal(pushed, N);
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    tu_stats(p, &ps);
    if (d.n != 0)
        fail_msg("%u items dead-lettered during the cancel (first status %d); cancelled %llu",
                 d.n, d.status[0], (unsigned long long)ps.cancelled);
    assert_int_equal(ps.cancelled, N);
    assert_int_equal(r.calls, 0);
    tu_check_conservation(p, NULL, 0);
    assert_int_equal(counted_frees, N);
    print_message("cancel during a backlog of %u waiting keys: all cancelled, none failed with "
                  "FLUXUS_ECLOSED\n",
                  (unsigned)N);
    tu_free_all(p, rt);
    free(items);
    pthread_mutex_destroy(&d.mu);
}

/*
 * Cancel midway with keys waiting at the join: the async branch's host completes only the first
 * K requests, then holds the next ones (as many as the in-flight limit allows). Once the K
 * replies are out and the other two branches' parts of the held requests wait at the join, the
 * test cancels. The held async items are refused back to the host, which frees them.
 */
static void test_cancel_midway_through_a_threaded_scatter_gather(void **state) {
    enum { N = 20000, K = 300, IN_FLIGHT = 64 };
    fluxus_runtime *rt = tu_runtime(4);
    sg s;
    sg_stages st;
    pthread_t th;
    uint64_t t0;
    fluxus_pipeline *p;
    fluxus_pipeline_stats ps;
    fluxus_stage_stats as, js;
    (void)state;
    sg_init(&s, N);
    s.take_limit = K;
    p = sg_pipeline(rt, &s, &st, 1);
    TU_OK(fluxus_stage_set_in_flight(p, st.m2, IN_FLIGHT));
    assert_int_equal(pthread_create(&th, NULL, svc2_host, &s), 0);
    TU_OK(fluxus_pipeline_start(p));
    t0 = tu_now_ms();
    for (;;) {
        tu_stage_stats(p, st.m2, &as);
        tu_stage_stats(p, st.join, &js);
        if (TU_LOAD(&s.delivered[N]) == K && as.in_flight == IN_FLIGHT &&
            js.in >= 3 * K + 2 * IN_FLIGHT)
            break;
        if (tu_now_ms() - t0 > TU_WAIT_MS)
            fail_msg("never settled: delivered %llu, async in flight %llu, join in %llu",
                     (unsigned long long)TU_LOAD(&s.delivered[N]),
                     (unsigned long long)as.in_flight, (unsigned long long)js.in);
        tu_sleep_us(1000);
    }
    TU_OK(fluxus_pipeline_cancel(p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(p));
    sg_stop_host(&s, th);
    tu_stats(p, &ps);
    assert_int_equal(ps.delivered, K);
    assert_int_equal(s.completed, K);
    assert_int_equal(s.refused, IN_FLIGHT); /* the held ones, refused with FLUXUS_ECANCELED */
    assert_int_equal(s.bad_sets, 0);
    assert_int_equal(s.bad_results, 0);
    tu_stage_stats(p, st.join, &js);
    if (js.cancelled < 2 * IN_FLIGHT) /* the parts waiting for the held replies */
        fail_msg("join: in %llu out %llu spawned %llu filtered %llu failed %llu cancelled %llu; "
                 "pipeline admitted %llu delivered %llu filtered %llu cancelled %llu "
                 "in_flight %llu balanced %d",
                 (unsigned long long)js.in, (unsigned long long)js.out,
                 (unsigned long long)js.spawned, (unsigned long long)js.filtered,
                 (unsigned long long)js.failed, (unsigned long long)js.cancelled,
                 (unsigned long long)ps.admitted, (unsigned long long)ps.delivered,
                 (unsigned long long)ps.filtered, (unsigned long long)ps.cancelled,
                 (unsigned long long)ps.in_flight, ps.balanced);
    tu_stage_stats(p, st.m2, &as);
    assert_true(as.cancelled >= IN_FLIGHT); /* counted there, though the host frees them */
    check_graph(p, st.sink, UINT64_MAX);
    tu_free_all(p, rt);
    assert_int_equal(g_bad_frees, 0);
    assert_int_equal(g_allocs, g_frees); /* every heap item freed once, by fluxus or the host */
    print_message("scatter-gather cancelled after %u of %u replies: %llu cancelled (%llu parts "
                  "waiting at the join), %llu async items refused back to the host\n",
                  (unsigned)K, (unsigned)N, (unsigned long long)ps.cancelled,
                  (unsigned long long)js.cancelled, (unsigned long long)s.refused);
    sg_destroy(&s);
}

/* ----- option errors ----- */

static int32_t plain_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return 0;
}

static void test_join_option_errors(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    fluxus_pipeline *p = tu_pipeline(rt, "opts", NULL);
    jrec r;
    outs o;
    uint32_t j = 0, m = 0, j64 = 0;
    (void)state;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_join(&j, p, "j", 0, jinput, jgather, &r, NULL));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_pipeline_add_join(&j, p, "j", 65, jinput, jgather, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_join(&j, p, "j", 2, NULL, jgather, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_join(&j, p, "j", 2, jinput, NULL, &r, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_pipeline_add_join(&j, NULL, "j", 2, jinput, jgather, &r, NULL));
    TU_OK(fluxus_pipeline_add_map(&m, p, "m", plain_map, NULL, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_join_timeout_us(p, m, 1000));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_join_max_keys(p, m, 10));
    TU_OK(fluxus_pipeline_add_join(&j64, p, "j64", 64, jinput, jgather, &r, NULL));
    TU_OK(fluxus_stage_set_join_timeout_us(p, j64, 86400000000ull)); /* one day */
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_join_timeout_us(p, j64, 86400000001ull));
    TU_OK(fluxus_stage_set_join_timeout_us(p, j64, 1000));
    TU_OK(fluxus_stage_set_join_max_keys(p, j64, 1));
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_join_max_keys(p, j64, 0));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_join_timeout_us(p, 999, 1000));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_join_max_keys(p, 999, 1));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_join_timeout_us(NULL, j64, 1000));
    TU_OK(fluxus_pipeline_add_sink(NULL, p, "s", record_sink, &o, NULL));
    TU_OK(fluxus_pipeline_start(p));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_join_timeout_us(p, j64, 5));
    TU_EXPECT(FLUXUS_ESTATE, fluxus_stage_set_join_max_keys(p, j64, 5));
    TU_OK(fluxus_pipeline_close_input(p));
    TU_OK(tu_wait(p));
    tu_free_all(p, rt);
    print_message("join options: inputs 0/65 -> FLUXUS_ERANGE, NULL callbacks -> FLUXUS_EINVAL, "
                  "join options on a map -> FLUXUS_EINVAL, after start -> FLUXUS_ESTATE\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_inputs_join_in_input_order_whatever_the_arrival),
        cmocka_unit_test(test_scatter_gather_three_branches_heap_items),
        cmocka_unit_test(test_scatter_gather_with_two_join_workers),
        cmocka_unit_test(test_partners_of_a_failed_branch_item_fail_closed_at_end),
        cmocka_unit_test(test_join_timeout_fails_incomplete_keys_exactly_at_start_plus_timeout),
        cmocka_unit_test(test_full_duplicate_and_out_of_range_items_fail_with_their_codes),
        cmocka_unit_test(test_a_failing_callback_fails_the_joined_items_with_its_status),
        cmocka_unit_test(test_keep_input_leaves_the_joined_items_to_the_callback),
        cmocka_unit_test(test_heap_items_end_once_and_two_workers_agree),
        cmocka_unit_test(test_cancel_with_keys_waiting_cancels_them),
        cmocka_unit_test(test_cancel_while_the_join_works_through_a_backlog),
        cmocka_unit_test(test_cancel_midway_through_a_threaded_scatter_gather),
        cmocka_unit_test(test_join_option_errors),
    };
    return TU_RUN_GROUP(tests);
}
