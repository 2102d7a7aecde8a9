/*
 * Ownership of `user` on registrations (the header's contract paragraph): only FLUXUS_OK hands
 * `user` to fluxus. For every function of the header that takes a `user_free`, each refusal it
 * can get (NULL or freed handle, NULL callback, wrong state, bad argument, wrong stage kind, no
 * room) must never call that user_free, not even when the objects are freed afterwards; an
 * accepted registration calls it exactly once, when fluxus drops it (the object is freed, or a
 * later call replaces the registration). The first test reads include/fluxus.h and fails if a
 * function taking a user_free has no test here.
 */
#include "nop_callbacks.h"
#include "test_util.h"

#ifndef OWNERSHIP_HEADER
#error "OWNERSHIP_HEADER (the path of include/fluxus.h) is defined by tests/meson.build"
#endif

/* ----- the registrations under test: one test each (see the end of the file) ----- */

#define REGISTRATIONS(X)                       \
    X(fluxus_runtime_set_log)                  \
    X(fluxus_runtime_set_thread_hooks)         \
    X(fluxus_runtime_set_wakeup)               \
    X(fluxus_runtime_call_after)               \
    X(fluxus_pipeline_set_item_free)           \
    X(fluxus_pipeline_set_dead_letter)         \
    X(fluxus_pipeline_set_route_observer)      \
    X(fluxus_pipeline_set_pull_source)         \
    X(fluxus_pipeline_set_pull_source_batch)   \
    X(fluxus_pipeline_set_cursor_source)       \
    X(fluxus_pipeline_add_map)                 \
    X(fluxus_pipeline_add_map_batch)           \
    X(fluxus_pipeline_add_filter)              \
    X(fluxus_pipeline_add_filter_batch)        \
    X(fluxus_pipeline_add_flat_map)            \
    X(fluxus_pipeline_add_flat_map_batch)      \
    X(fluxus_pipeline_add_sink)                \
    X(fluxus_pipeline_add_sink_batch)          \
    X(fluxus_pipeline_add_async_map)           \
    X(fluxus_stage_set_async_cancel)           \
    X(fluxus_pipeline_add_batch)               \
    X(fluxus_pipeline_add_reduce)              \
    X(fluxus_pipeline_add_window)              \
    X(fluxus_pipeline_add_sliding_window)      \
    X(fluxus_pipeline_add_router)              \
    X(fluxus_stage_set_copy)                   \
    X(fluxus_pipeline_add_source)              \
    X(fluxus_pipeline_add_join)                \
    X(fluxus_pipeline_add_loader)              \
    X(fluxus_stage_set_cache)                  \
    X(fluxus_stage_set_retry_predicate)        \
    X(fluxus_stage_set_key_fn)                 \
    X(fluxus_registry_add)                     \
    X(fluxus_circuit_breaker_set_state_callback)

/* ----- user pointers that count their user_free calls ----- */

typedef struct owned {
    uint32_t frees;
} owned;

static void owned_free(void *user) {
    TU_ADD(&((owned *)user)->frees, 1);
}

static uint32_t frees(owned *o) {
    return TU_LOAD(&o->frees);
}

/* Every refused registration passes this one: its user_free must never run. */
static owned g_refused;

/* The call must return `code`, and no refused user was released (now, or before). */
#define REFUSED(code, call)                          \
    do {                                             \
        TU_EXPECT((code), (call));                   \
        assert_int_equal(frees(&g_refused), 0);      \
    } while (0)

/* ----- callbacks beside nop_callbacks.h (none of them runs, except where a test says so) ----- */

static int32_t nop_async_map(void *u, uint64_t item, uint64_t completion) {
    (void)u, (void)item, (void)completion;
    return 1;
}
static int32_t nop_reduce(void *u, uint64_t *acc, int32_t first, uint64_t item) {
    (void)u, (void)acc, (void)first, (void)item;
    return 0;
}
static int32_t nop_route(void *u, uint64_t item, uint32_t *routes, uint32_t capacity,
                         uint32_t *count) {
    (void)u, (void)item, (void)capacity;
    routes[0] = 0;
    *count = 1;
    return 0;
}
static int32_t nop_key(void *u, uint64_t item, const void **key, size_t *len) {
    static const uint64_t zero = 0;
    (void)u, (void)item;
    *key = &zero;
    *len = sizeof zero;
    return 0;
}

/* ----- fixture: one pipeline in each state a refusal needs ----- */

typedef struct fixture {
    fluxus_runtime *rt;
    fluxus_runtime *dead_rt;     /* a freed runtime handle */
    fluxus_pipeline *dead;       /* a freed pipeline handle */
    fluxus_pipeline *running;    /* push source -> sink "s" (stage 0), started */
    fluxus_pipeline *cancelled;  /* push source, cancelled before it started */
    fluxus_pipeline *ended;      /* push source -> sink: nothing can attach after it */
    fluxus_pipeline *full;       /* push source -> 4096 maps: no room for another stage */
    fluxus_pipeline *p;          /* being built: push source -> map "m" (stage 0) */
    owned ok;                    /* the user of the registrations a test makes on `p` */
} fixture;

static fluxus_pipeline *push_pipeline(fluxus_runtime *rt, const char *name) {
    fluxus_pipeline *p = tu_pipeline(rt, name, NULL);
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    return p;
}

static void fx_init(fixture *fx) {
    uint32_t i;
    memset(fx, 0, sizeof *fx);
    g_refused.frees = 0;
    fx->rt = tu_runtime(1);
    fx->dead_rt = tu_runtime(1);
    TU_OK(fluxus_runtime_free(fx->dead_rt));
    fx->dead = push_pipeline(fx->rt, "dead");
    TU_OK(fluxus_pipeline_free(fx->dead));
    fx->running = push_pipeline(fx->rt, "running");
    TU_OK(fluxus_pipeline_add_sink(NULL, fx->running, "s", nop_sink, NULL, NULL));
    TU_OK(fluxus_pipeline_start(fx->running));
    fx->cancelled = push_pipeline(fx->rt, "cancelled");
    TU_OK(fluxus_pipeline_cancel(fx->cancelled));
    fx->ended = push_pipeline(fx->rt, "ended");
    TU_OK(fluxus_pipeline_add_sink(NULL, fx->ended, "s", nop_sink, NULL, NULL));
    fx->full = push_pipeline(fx->rt, "full");
    for (i = 0; i < 4096; i++) {
        TU_OK(fluxus_pipeline_add_map(NULL, fx->full, NULL, nop_map, NULL, NULL));
    }
    fx->p = push_pipeline(fx->rt, "p");
    TU_OK(fluxus_pipeline_add_map(NULL, fx->p, "m", nop_map, NULL, NULL));
}

/* Frees everything; then `p`'s accepted registrations were released `ok_frees` times in all,
 * and no refused one ever was. */
static void fx_done(fixture *fx, uint32_t ok_frees) {
    TU_OK(fluxus_pipeline_close_input(fx->running));
    TU_OK(tu_wait(fx->running));
    TU_OK(fluxus_pipeline_free(fx->running));
    TU_OK(fluxus_pipeline_free(fx->cancelled));
    TU_OK(fluxus_pipeline_free(fx->ended));
    TU_OK(fluxus_pipeline_free(fx->full));
    TU_OK(fluxus_pipeline_free(fx->p));
    TU_OK(fluxus_runtime_free(fx->rt));
    assert_int_equal(frees(&fx->ok), ok_frees);
    assert_int_equal(frees(&g_refused), 0);
}

/* ----- the refusals every fluxus_pipeline_add_* can get ----- */

/*
 * ADD(p, fn, user) is the add call with `owned_free` as user_free. Refused: a NULL handle, a
 * freed one, a NULL callback, a started pipeline, a cancelled one, a chain ended by a sink, a
 * pipeline with 4096 stages. Then accepted on `p`, whose free releases it once (fx_done).
 */
#define CHECK_ADD(fx, ADD, fn)                                          \
    do {                                                                \
        REFUSED(FLUXUS_EINVAL, ADD(NULL, (fn), &g_refused));            \
        REFUSED(FLUXUS_EINVAL, ADD((fx)->dead, (fn), &g_refused));      \
        REFUSED(FLUXUS_EINVAL, ADD((fx)->p, NULL, &g_refused));         \
        REFUSED(FLUXUS_ESTATE, ADD((fx)->running, (fn), &g_refused));   \
        REFUSED(FLUXUS_ESTATE, ADD((fx)->cancelled, (fn), &g_refused)); \
        REFUSED(FLUXUS_ESTATE, ADD((fx)->ended, (fn), &g_refused));     \
        REFUSED(FLUXUS_ERANGE, ADD((fx)->full, (fn), &g_refused));      \
        TU_OK(ADD((fx)->p, (fn), &(fx)->ok));                           \
        assert_int_equal(frees(&(fx)->ok), 0);                          \
    } while (0)

#define ADD_MAP(p, f, u) fluxus_pipeline_add_map(NULL, (p), "x", (f), (u), owned_free)
#define ADD_MAP_BATCH(p, f, u) fluxus_pipeline_add_map_batch(NULL, (p), "x", (f), (u), owned_free)
#define ADD_FILTER(p, f, u) fluxus_pipeline_add_filter(NULL, (p), "x", (f), (u), owned_free)
#define ADD_FILTER_BATCH(p, f, u) \
    fluxus_pipeline_add_filter_batch(NULL, (p), "x", (f), (u), owned_free)
#define ADD_FLAT_MAP(p, f, u) fluxus_pipeline_add_flat_map(NULL, (p), "x", (f), (u), owned_free)
#define ADD_FLAT_MAP_BATCH(p, f, u) \
    fluxus_pipeline_add_flat_map_batch(NULL, (p), "x", (f), (u), owned_free)
#define ADD_SINK(p, f, u) fluxus_pipeline_add_sink(NULL, (p), "x", (f), (u), owned_free)
#define ADD_SINK_BATCH(p, f, u) fluxus_pipeline_add_sink_batch(NULL, (p), "x", (f), (u), owned_free)
#define ADD_ASYNC_MAP(p, f, u) fluxus_pipeline_add_async_map(NULL, (p), "x", (f), (u), owned_free)
#define ADD_BATCH(p, f, u) fluxus_pipeline_add_batch(NULL, (p), "x", 8, 0, (f), (u), owned_free)
#define ADD_REDUCE(p, f, u) fluxus_pipeline_add_reduce(NULL, (p), "x", (f), (u), owned_free)
#define ADD_WINDOW(p, f, u) \
    fluxus_pipeline_add_window(NULL, (p), "x", FLUXUS_WINDOW_COUNT, 4, (f), (u), owned_free)
#define ADD_SLIDING(p, f, u)                                                                  \
    fluxus_pipeline_add_sliding_window(NULL, (p), "x", FLUXUS_WINDOW_COUNT, 4, 2, (f), (u), \
                                       owned_free)
#define ADD_ROUTER(p, f, u) fluxus_pipeline_add_router(NULL, (p), "x", (f), (u), owned_free)
#define ADD_JOIN(p, f, u) \
    fluxus_pipeline_add_join(NULL, (p), "x", 2, nop_join_input, (f), (u), owned_free)
#define ADD_LOADER(p, f, u) \
    fluxus_pipeline_add_loader(NULL, (p), "x", 8, 0, (f), nop_attach, (u), owned_free)

/* ----- runtime ----- */

static void fluxus_runtime_set_log_takes_user_only_on_ok(void **state) {
    fixture fx;
    owned a = {0}, b = {0}, c = {0};
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_set_log(NULL, FLUXUS_LOG_WARN, nop_log, &g_refused,
                                                  owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_set_log(fx.dead_rt, FLUXUS_LOG_WARN, nop_log,
                                                  &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_runtime_set_log(fx.rt, -1, nop_log, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_runtime_set_log(fx.rt, FLUXUS_LOG_DEBUG + 1, nop_log,
                                                  &g_refused, owned_free));
    TU_OK(fluxus_runtime_set_log(fx.rt, FLUXUS_LOG_WARN, nop_log, &a, owned_free));
    assert_int_equal(frees(&a), 0);
    /* Replacing releases the previous registration at once. */
    TU_OK(fluxus_runtime_set_log(fx.rt, FLUXUS_LOG_WARN, nop_log, &b, owned_free));
    assert_int_equal(frees(&a), 1);
    assert_int_equal(frees(&b), 0);
    /* A NULL callback removes logging; its user is kept like any registration's. */
    TU_OK(fluxus_runtime_set_log(fx.rt, FLUXUS_LOG_WARN, NULL, &c, owned_free));
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&c), 0);
    fx_done(&fx, 0);
    assert_int_equal(frees(&a), 1);
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&c), 1);
}

static void nop_thread_start(void *user, int32_t kind, uint32_t index, const char *name) {
    (void)user;
    (void)kind;
    (void)index;
    (void)name;
}


static void fluxus_runtime_set_wakeup_takes_user_only_on_ok(void **state) {
    fluxus_runtime *rt = NULL;
    owned a = {0}, b = {0};
    (void)state;
    g_refused.frees = 0;
    TU_OK(fluxus_runtime_new(&rt));
    TU_OK(fluxus_runtime_set_workers(rt, 0));
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_set_wakeup(NULL, nop_wakeup, &g_refused, owned_free));
    TU_OK(fluxus_runtime_set_wakeup(rt, nop_wakeup, &a, owned_free));
    TU_OK(fluxus_runtime_set_wakeup(rt, NULL, &b, owned_free)); /* replaces: a released */
    assert_int_equal(frees(&a), 1);
    TU_OK(fluxus_runtime_start(rt));
    REFUSED(FLUXUS_ESTATE, fluxus_runtime_set_wakeup(rt, nop_wakeup, &g_refused, owned_free));
    assert_int_equal(frees(&b), 0);
    TU_OK(fluxus_runtime_free(rt));
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&g_refused), 0);
}

static void fluxus_runtime_set_thread_hooks_takes_user_only_on_ok(void **state) {
    fluxus_runtime *rt = NULL;
    owned a = {0}, b = {0};
    (void)state;
    g_refused.frees = 0;
    TU_OK(fluxus_runtime_new(&rt));
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_set_thread_hooks(NULL, nop_thread_start, NULL,
                                                           &g_refused, owned_free));
    TU_OK(fluxus_runtime_set_thread_hooks(rt, nop_thread_start, NULL, &a, owned_free));
    assert_int_equal(frees(&a), 0);
    /* Replacing releases the previous registration at once. */
    TU_OK(fluxus_runtime_set_thread_hooks(rt, nop_thread_start, NULL, &b, owned_free));
    assert_int_equal(frees(&a), 1);
    TU_OK(fluxus_runtime_set_workers(rt, 1));
    TU_OK(fluxus_runtime_start(rt));
    REFUSED(FLUXUS_ESTATE, fluxus_runtime_set_thread_hooks(rt, nop_thread_start, NULL,
                                                           &g_refused, owned_free));
    assert_int_equal(frees(&b), 0);
    TU_OK(fluxus_runtime_free(rt));
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_set_thread_hooks(rt, nop_thread_start, NULL,
                                                           &g_refused, owned_free));
    assert_int_equal(frees(&a), 1);
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&g_refused), 0);
}

static void fluxus_runtime_call_after_takes_user_only_on_ok(void **state) {
    fixture fx;
    fluxus_runtime *vrt = tu_vruntime(1000);
    owned ran = {0}, cancelled = {0}, pending = {0};
    uint64_t id = 0;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_call_after(&id, NULL, 10, nop_timer, &g_refused,
                                                     owned_free));
    assert_int_equal(id, 0);
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_call_after(&id, fx.dead_rt, 10, nop_timer, &g_refused,
                                                     owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_runtime_call_after(&id, vrt, 10, NULL, &g_refused,
                                                     owned_free));
    /* Released once after it ran, */
    TU_OK(fluxus_runtime_call_after(NULL, vrt, 10, nop_timer, &ran, owned_free));
    assert_int_equal(frees(&ran), 0);
    tu_step(vrt, 10);
    assert_int_equal(frees(&ran), 1);
    /* when it is cancelled, */
    TU_OK(fluxus_runtime_call_after(&id, vrt, 10, nop_timer, &cancelled, owned_free));
    TU_OK(fluxus_runtime_cancel_timer(vrt, id));
    assert_int_equal(frees(&cancelled), 1);
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_runtime_cancel_timer(vrt, id));
    /* or when the runtime is freed with it pending. */
    TU_OK(fluxus_runtime_call_after(NULL, vrt, 1000000, nop_timer, &pending, owned_free));
    TU_OK(fluxus_runtime_free(vrt));
    assert_int_equal(frees(&ran), 1);
    assert_int_equal(frees(&cancelled), 1);
    assert_int_equal(frees(&pending), 1);
    fx_done(&fx, 0);
}

/* ----- pipeline-level callbacks ----- */

static void fluxus_pipeline_set_item_free_takes_user_only_on_ok(void **state) {
    fixture fx;
    owned b = {0}, c = {0};
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_item_free(NULL, nop_item_free, &g_refused,
                                                         owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_item_free(fx.dead, nop_item_free, &g_refused,
                                                         owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_item_free(fx.running, nop_item_free, &g_refused,
                                                         owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_item_free(fx.cancelled, nop_item_free,
                                                         &g_refused, owned_free));
    TU_OK(fluxus_pipeline_set_item_free(fx.p, nop_item_free, &b, owned_free));
    TU_OK(fluxus_pipeline_set_item_free(fx.p, NULL, &c, owned_free)); /* replaces b */
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&c), 0);
    TU_OK(fluxus_pipeline_set_item_free(fx.p, nop_item_free, &fx.ok, owned_free));
    assert_int_equal(frees(&c), 1);
    fx_done(&fx, 1);
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&c), 1);
}

static void fluxus_pipeline_set_dead_letter_takes_user_only_on_ok(void **state) {
    fixture fx;
    owned b = {0};
    tu_msg msg;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_dead_letter(NULL, nop_dead_letter, &g_refused,
                                                           owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_dead_letter(fx.dead, nop_dead_letter, &g_refused,
                                                           owned_free));
    /* A NULL callback is refused at the call, not later by start. */
    TU_EXPECT_MSG(FLUXUS_EINVAL,
                  fluxus_pipeline_set_dead_letter(fx.p, NULL, &g_refused, owned_free), &msg);
    assert_non_null(strstr(msg.text, "fluxus_pipeline_set_dead_letter"));
    assert_non_null(strstr(msg.text, "NULL"));
    assert_int_equal(frees(&g_refused), 0);
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_dead_letter(fx.running, nop_dead_letter,
                                                           &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_dead_letter(fx.cancelled, nop_dead_letter,
                                                           &g_refused, owned_free));
    TU_OK(fluxus_pipeline_set_dead_letter(fx.p, nop_dead_letter, &b, owned_free));
    TU_OK(fluxus_pipeline_set_dead_letter(fx.p, nop_dead_letter, &fx.ok, owned_free));
    assert_int_equal(frees(&b), 1); /* replaced */
    fx_done(&fx, 1);
}

static void fluxus_pipeline_set_route_observer_takes_user_only_on_ok(void **state) {
    fixture fx;
    owned b = {0}, c = {0};
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_route_observer(NULL, nop_dead_letter, &g_refused,
                                                              owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_route_observer(fx.dead, nop_dead_letter,
                                                              &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_route_observer(fx.running, nop_dead_letter,
                                                              &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_route_observer(fx.cancelled, nop_dead_letter,
                                                              &g_refused, owned_free));
    TU_OK(fluxus_pipeline_set_route_observer(fx.p, nop_dead_letter, &b, owned_free));
    TU_OK(fluxus_pipeline_set_route_observer(fx.p, NULL, &c, owned_free)); /* replaces b */
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&c), 0);
    TU_OK(fluxus_pipeline_set_route_observer(fx.p, nop_dead_letter, &fx.ok, owned_free));
    assert_int_equal(frees(&c), 1);
    fx_done(&fx, 1);
    assert_int_equal(frees(&b), 1);
    assert_int_equal(frees(&c), 1);
}

/* ----- sources ----- */

static void fluxus_pipeline_set_pull_source_takes_user_only_on_ok(void **state) {
    fixture fx;
    fluxus_pipeline *q;
    owned ok = {0};
    (void)state;
    fx_init(&fx);
    q = tu_pipeline(fx.rt, "q", NULL);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source(NULL, "s", nop_pull, &g_refused,
                                                           owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source(fx.dead, "s", nop_pull, &g_refused,
                                                           owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source(q, "s", NULL, &g_refused,
                                                           owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source(fx.p, "s", nop_pull, &g_refused,
                                                           owned_free)); /* has a source */
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source(fx.running, "s", nop_pull,
                                                           &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source(fx.cancelled, "s", nop_pull,
                                                           &g_refused, owned_free));
    TU_OK(fluxus_pipeline_set_pull_source(q, "s", nop_pull, &ok, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source(q, "s", nop_pull, &g_refused,
                                                           owned_free)); /* only once */
    assert_int_equal(frees(&ok), 0);
    TU_OK(fluxus_pipeline_free(q));
    assert_int_equal(frees(&ok), 1);
    fx_done(&fx, 0);
}

static void fluxus_pipeline_set_pull_source_batch_takes_user_only_on_ok(void **state) {
    fixture fx;
    fluxus_pipeline *q;
    owned ok = {0};
    (void)state;
    fx_init(&fx);
    q = tu_pipeline(fx.rt, "q", NULL);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source_batch(NULL, "s", nop_pull_batch,
                                                                 &g_refused, owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_set_pull_source_batch(fx.dead, "s", nop_pull_batch,
                                                                 &g_refused, owned_free));
    REFUSED(FLUXUS_EINVAL,
            fluxus_pipeline_set_pull_source_batch(q, "s", NULL, &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source_batch(fx.p, "s", nop_pull_batch,
                                                                 &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source_batch(
                               fx.running, "s", nop_pull_batch, &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source_batch(
                               fx.cancelled, "s", nop_pull_batch, &g_refused, owned_free));
    TU_OK(fluxus_pipeline_set_pull_source_batch(q, "s", nop_pull_batch, &ok, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_set_pull_source_batch(q, "s", nop_pull_batch,
                                                                 &g_refused, owned_free));
    assert_int_equal(frees(&ok), 0);
    TU_OK(fluxus_pipeline_free(q));
    assert_int_equal(frees(&ok), 1);
    fx_done(&fx, 0);
}

#define SET_CURSOR(p, read, page_of, u) \
    fluxus_pipeline_set_cursor_source((p), "s", 0, (read), (page_of), nop_commit, (u), owned_free)

static void fluxus_pipeline_set_cursor_source_takes_user_only_on_ok(void **state) {
    fixture fx;
    fluxus_pipeline *q;
    owned ok = {0};
    (void)state;
    fx_init(&fx);
    q = tu_pipeline(fx.rt, "q", NULL);
    REFUSED(FLUXUS_EINVAL, SET_CURSOR(NULL, nop_cursor_read, nop_page_of, &g_refused));
    REFUSED(FLUXUS_EINVAL, SET_CURSOR(fx.dead, nop_cursor_read, nop_page_of, &g_refused));
    REFUSED(FLUXUS_EINVAL, SET_CURSOR(q, NULL, nop_page_of, &g_refused));
    REFUSED(FLUXUS_EINVAL, SET_CURSOR(q, nop_cursor_read, NULL, &g_refused));
    REFUSED(FLUXUS_ESTATE, SET_CURSOR(fx.p, nop_cursor_read, nop_page_of, &g_refused));
    REFUSED(FLUXUS_ESTATE, SET_CURSOR(fx.running, nop_cursor_read, nop_page_of, &g_refused));
    REFUSED(FLUXUS_ESTATE, SET_CURSOR(fx.cancelled, nop_cursor_read, nop_page_of, &g_refused));
    /* commit may be NULL */
    TU_OK(fluxus_pipeline_set_cursor_source(q, "s", 0, nop_cursor_read, nop_page_of, NULL, &ok,
                                            owned_free));
    REFUSED(FLUXUS_ESTATE, SET_CURSOR(q, nop_cursor_read, nop_page_of, &g_refused));
    assert_int_equal(frees(&ok), 0);
    TU_OK(fluxus_pipeline_free(q));
    assert_int_equal(frees(&ok), 1);
    fx_done(&fx, 0);
}

static void fluxus_pipeline_add_source_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL,
            fluxus_pipeline_add_source(NULL, NULL, "x", nop_pull, &g_refused, owned_free));
    REFUSED(FLUXUS_EINVAL,
            fluxus_pipeline_add_source(NULL, fx.dead, "x", nop_pull, &g_refused, owned_free));
    REFUSED(FLUXUS_EINVAL,
            fluxus_pipeline_add_source(NULL, fx.p, "x", NULL, &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE,
            fluxus_pipeline_add_source(NULL, fx.running, "x", nop_pull, &g_refused, owned_free));
    REFUSED(FLUXUS_ESTATE, fluxus_pipeline_add_source(NULL, fx.cancelled, "x", nop_pull,
                                                      &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE,
            fluxus_pipeline_add_source(NULL, fx.full, "x", nop_pull, &g_refused, owned_free));
    /* A source stage starts a chain of its own: a chain ended by a sink does not refuse it. */
    TU_OK(fluxus_pipeline_add_source(NULL, fx.ended, "x", nop_pull, &fx.ok, owned_free));
    TU_OK(fluxus_pipeline_add_source(NULL, fx.p, "x", nop_pull, &fx.ok, owned_free));
    assert_int_equal(frees(&fx.ok), 0);
    fx_done(&fx, 2);
}

/* ----- stages ----- */

static void fluxus_pipeline_add_map_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_MAP, nop_map);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_map_batch_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_MAP_BATCH, nop_map_batch);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_filter_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_FILTER, nop_filter);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_filter_batch_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_FILTER_BATCH, nop_filter_batch);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_flat_map_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_FLAT_MAP, nop_flat_map);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_flat_map_batch_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_FLAT_MAP_BATCH, nop_flat_map_batch);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_sink_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_SINK, nop_sink);
    /* the sink just added ended the chain */
    REFUSED(FLUXUS_ESTATE, ADD_SINK(fx.p, nop_sink, &g_refused));
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_sink_batch_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_SINK_BATCH, nop_sink_batch);
    REFUSED(FLUXUS_ESTATE, ADD_SINK_BATCH(fx.p, nop_sink_batch, &g_refused));
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_async_map_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_ASYNC_MAP, nop_async_map);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_batch_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_batch(NULL, fx.p, "x", 0, 0, nop_flat_map_batch,
                                                     &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_batch(NULL, fx.p, "x", 65537, 0,
                                                     nop_flat_map_batch, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_batch(NULL, fx.p, "x", 8, 86400000001ull,
                                                     nop_flat_map_batch, &g_refused, owned_free));
    CHECK_ADD(&fx, ADD_BATCH, nop_flat_map_batch);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_reduce_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_REDUCE, nop_reduce);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_window_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_ERANGE,
            fluxus_pipeline_add_window(NULL, fx.p, "x", 7, 4, nop_window, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_window(NULL, fx.p, "x", FLUXUS_WINDOW_COUNT, 0,
                                                      nop_window, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_window(NULL, fx.p, "x", FLUXUS_WINDOW_TIME,
                                                      86400000001ull, nop_window, &g_refused,
                                                      owned_free));
    CHECK_ADD(&fx, ADD_WINDOW, nop_window);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_sliding_window_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(NULL, fx.p, "x",
                                                              FLUXUS_WINDOW_SESSION, 4, 2,
                                                              nop_window, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(NULL, fx.p, "x",
                                                              FLUXUS_WINDOW_COUNT, 4, 0,
                                                              nop_window, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_sliding_window(NULL, fx.p, "x",
                                                              FLUXUS_WINDOW_COUNT, 0, 1,
                                                              nop_window, &g_refused, owned_free));
    CHECK_ADD(&fx, ADD_SLIDING, nop_window);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_join_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_add_join(NULL, fx.p, "x", 2, NULL, nop_window,
                                                    &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_join(NULL, fx.p, "x", 0, nop_join_input,
                                                    nop_window, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_join(NULL, fx.p, "x", 65, nop_join_input,
                                                    nop_window, &g_refused, owned_free));
    CHECK_ADD(&fx, ADD_JOIN, nop_window);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_loader_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    REFUSED(FLUXUS_EINVAL, fluxus_pipeline_add_loader(NULL, fx.p, "x", 8, 0, nop_load, NULL,
                                                      &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_loader(NULL, fx.p, "x", 0, 0, nop_load,
                                                      nop_attach, &g_refused, owned_free));
    REFUSED(FLUXUS_ERANGE, fluxus_pipeline_add_loader(NULL, fx.p, "x", 8, 86400000001ull,
                                                      nop_load, nop_attach, &g_refused,
                                                      owned_free));
    CHECK_ADD(&fx, ADD_LOADER, nop_load);
    fx_done(&fx, 1);
}

static void fluxus_pipeline_add_router_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_ADD(&fx, ADD_ROUTER, nop_route);
    fx_done(&fx, 1);
}

/* ----- stage options that keep a user ----- */

/*
 * SET(p, stage, fn, user) is the setter with `owned_free`. Refused: a NULL handle, a freed one,
 * no such stage, a started pipeline, a cancelled one.
 */
#define CHECK_STAGE_SETTER(fx, SET, fn)                                       \
    do {                                                                      \
        REFUSED(FLUXUS_EINVAL, SET(NULL, 0, (fn), &g_refused));               \
        REFUSED(FLUXUS_EINVAL, SET((fx)->dead, 0, (fn), &g_refused));         \
        REFUSED(FLUXUS_ENOTFOUND, SET((fx)->p, 99, (fn), &g_refused));        \
        REFUSED(FLUXUS_ESTATE, SET((fx)->running, 0, (fn), &g_refused));      \
        REFUSED(FLUXUS_ESTATE, SET((fx)->cancelled, 0, (fn), &g_refused));    \
    } while (0)

/* Accepted on stage `st` of `p`: replacing releases the old user, and a NULL callback (where
 * allowed) is kept like any other; the last one is fx.ok, released by fx_done. */
#define CHECK_STAGE_REPLACE(fx, SET, st, fn, null_fn_allowed)          \
    do {                                                               \
        owned first_ = {0}, nulled_ = {0};                             \
        TU_OK(SET((fx)->p, (st), (fn), &first_));                      \
        if (null_fn_allowed) {                                         \
            TU_OK(SET((fx)->p, (st), NULL, &nulled_));                 \
            assert_int_equal(frees(&first_), 1);                       \
            TU_OK(SET((fx)->p, (st), (fn), &(fx)->ok));                \
            assert_int_equal(frees(&nulled_), 1);                      \
        } else {                                                       \
            TU_OK(SET((fx)->p, (st), (fn), &(fx)->ok));                \
            assert_int_equal(frees(&first_), 1);                       \
        }                                                              \
        assert_int_equal(frees(&(fx)->ok), 0);                         \
    } while (0)

#define SET_COPY(p, st, f, u) fluxus_stage_set_copy((p), (st), (f), (u), owned_free)
#define SET_CACHE(p, st, f, u) fluxus_stage_set_cache((p), (st), 16, 0, (f), (u), owned_free)
#define SET_RETRY_IF(p, st, f, u) fluxus_stage_set_retry_predicate((p), (st), (f), (u), owned_free)
#define SET_KEY(p, st, f, u) fluxus_stage_set_key_fn((p), (st), (f), (u), owned_free)

static void fluxus_stage_set_copy_takes_user_only_on_ok(void **state) {
    fixture fx;
    uint32_t bc = 0;
    (void)state;
    fx_init(&fx);
    CHECK_STAGE_SETTER(&fx, SET_COPY, nop_copy);
    REFUSED(FLUXUS_EINVAL, SET_COPY(fx.p, 0, nop_copy, &g_refused)); /* a map, not a router */
    TU_OK(fluxus_pipeline_add_broadcast(&bc, fx.p, "bc"));
    REFUSED(FLUXUS_EINVAL, SET_COPY(fx.p, bc, NULL, &g_refused));
    CHECK_STAGE_REPLACE(&fx, SET_COPY, bc, nop_copy, 0);
    fx_done(&fx, 1);
}

static void fluxus_stage_set_cache_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_STAGE_SETTER(&fx, SET_CACHE, nop_copy);
    REFUSED(FLUXUS_ERANGE, fluxus_stage_set_cache(fx.p, 0, 16, 86400000001ull, nop_copy,
                                                  &g_refused, owned_free));
    /* (a cache on a stage that is not a map or loader is refused by start, not here) */
    CHECK_STAGE_REPLACE(&fx, SET_CACHE, 0, nop_copy, 1);
    fx_done(&fx, 1);
}


#define SET_ASYNC_CANCEL(p, st, f, u) \
    fluxus_stage_set_async_cancel((p), (st), (f), (u), owned_free)

static void fluxus_stage_set_async_cancel_takes_user_only_on_ok(void **state) {
    fixture fx;
    uint32_t a = 0;
    (void)state;
    fx_init(&fx);
    CHECK_STAGE_SETTER(&fx, SET_ASYNC_CANCEL, nop_async_cancel);
    /* stage 0 of p is a map, not an async stage */
    REFUSED(FLUXUS_EINVAL, SET_ASYNC_CANCEL(fx.p, 0, nop_async_cancel, &g_refused));
    TU_OK(fluxus_pipeline_add_async_map(&a, fx.p, "a", nop_async_map, NULL, NULL));
    CHECK_STAGE_REPLACE(&fx, SET_ASYNC_CANCEL, a, nop_async_cancel, 1);
    fx_done(&fx, 1);
}

static void fluxus_stage_set_retry_predicate_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_STAGE_SETTER(&fx, SET_RETRY_IF, nop_retry);
    CHECK_STAGE_REPLACE(&fx, SET_RETRY_IF, 0, nop_retry, 1);
    fx_done(&fx, 1);
}

static void fluxus_stage_set_key_fn_takes_user_only_on_ok(void **state) {
    fixture fx;
    (void)state;
    fx_init(&fx);
    CHECK_STAGE_SETTER(&fx, SET_KEY, nop_key);
    CHECK_STAGE_REPLACE(&fx, SET_KEY, 0, nop_key, 1);
    fx_done(&fx, 1);
}

/* ----- registry ----- */

#define REG_ADD(r, name, kind, f, u) \
    fluxus_registry_add((r), (name), (kind), (fluxus_any_fn)(f), (u), owned_free)

static void fluxus_registry_add_takes_user_only_on_ok(void **state) {
    fixture fx;
    fluxus_registry *r = NULL, *dead = NULL, *shared = NULL;
    fluxus_pipeline *q;
    owned ok = {0}, kept = {0};
    char long_name[200];
    (void)state;
    fx_init(&fx);
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    TU_OK(fluxus_registry_new(&dead));
    TU_OK(fluxus_registry_free(dead));
    TU_OK(fluxus_registry_new(&r));
    REFUSED(FLUXUS_EINVAL, REG_ADD(NULL, "m", FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(dead, "m", FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, NULL, FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, "", FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, "9m", FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, "a-b", FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, long_name, FLUXUS_FN_MAP, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, fluxus_registry_add(r, "m", FLUXUS_FN_MAP, NULL, &g_refused,
                                               owned_free));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, "m", 0, nop_map, &g_refused));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, "m", FLUXUS_FN_JOIN_INPUT + 1, nop_map, &g_refused));
    TU_OK(REG_ADD(r, "m", FLUXUS_FN_MAP, nop_map, &ok));
    REFUSED(FLUXUS_EINVAL, REG_ADD(r, "m", FLUXUS_FN_MAP, nop_map, &g_refused)); /* taken */
    assert_int_equal(frees(&ok), 0);
    TU_OK(fluxus_registry_free(r));
    assert_int_equal(frees(&ok), 1);

    /* A pipeline built from a registry keeps its users until the last of the two is freed. */
    TU_OK(fluxus_registry_new(&shared));
    TU_OK(REG_ADD(shared, "m", FLUXUS_FN_MAP, nop_map, &kept));
    TU_OK(REG_ADD(shared, "s", FLUXUS_FN_SINK, nop_sink, &kept));
    q = push_pipeline(fx.rt, "q");
    TU_OK(fluxus_pipeline_build(q, shared, "m | s"));
    TU_OK(fluxus_registry_free(shared));
    assert_int_equal(frees(&kept), 0);
    TU_OK(fluxus_pipeline_free(q));
    assert_int_equal(frees(&kept), 2);
    fx_done(&fx, 0);
}

/* ----- circuit breaker ----- */

typedef struct self_replacing {
    fluxus_circuit_breaker *cb;
    owned *next;
    uint32_t calls;
    uint32_t own_frees_during_call; /* frees of this registration's user, seen inside the call */
} self_replacing;

static owned g_first; /* the user of the callback that replaces itself */

static void replace_myself(void *user, int32_t from, int32_t to) {
    self_replacing *s = (self_replacing *)user;
    (void)from, (void)to;
    s->calls++;
    if (fluxus_circuit_breaker_set_state_callback(s->cb, nop_breaker_state, s->next, owned_free) !=
        FLUXUS_OK) {
        s->calls += 1000;
    }
    s->own_frees_during_call = frees(&g_first);
}

static void first_free(void *user) {
    (void)user;
    owned_free(&g_first);
}

static void fluxus_circuit_breaker_set_state_callback_takes_user_only_on_ok(void **state) {
    fixture fx;
    fluxus_circuit_breaker *cb = NULL, *dead = NULL;
    owned a = {0}, b = {0}, next = {0};
    self_replacing s;
    uint64_t ticket = 0;
    (void)state;
    fx_init(&fx);
    TU_OK(fluxus_circuit_breaker_new(&dead, NULL));
    TU_OK(fluxus_circuit_breaker_free(dead));
    TU_OK(fluxus_circuit_breaker_new(&cb, NULL));
    REFUSED(FLUXUS_EINVAL, fluxus_circuit_breaker_set_state_callback(NULL, nop_breaker_state,
                                                                     &g_refused, owned_free));
    REFUSED(FLUXUS_EINVAL, fluxus_circuit_breaker_set_state_callback(dead, nop_breaker_state,
                                                                     &g_refused, owned_free));
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, nop_breaker_state, &a, owned_free));
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, NULL, &b, owned_free));
    assert_int_equal(frees(&a), 1);
    assert_int_equal(frees(&b), 0);

    /* A callback that replaces itself keeps its user until its call returns. */
    memset(&s, 0, sizeof s);
    s.cb = cb;
    s.next = &next;
    g_first.frees = 0;
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, replace_myself, &s, first_free));
    assert_int_equal(frees(&b), 1);
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 1));
    TU_OK(fluxus_circuit_breaker_allow(&ticket, cb));
    TU_OK(fluxus_circuit_breaker_record(cb, ticket, 0)); /* closed -> open: one call */
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.own_frees_during_call, 0);
    assert_int_equal(frees(&g_first), 1);
    assert_int_equal(frees(&next), 0);
    TU_OK(fluxus_circuit_breaker_free(cb));
    assert_int_equal(frees(&next), 1);
    assert_int_equal(frees(&g_first), 1);
    fx_done(&fx, 0);
}

/* ----- every registration of the header has a test above ----- */

#define AS_NAME(name) #name,
static const char *const k_covered[] = {REGISTRATIONS(AS_NAME)};
#define N_COVERED (sizeof k_covered / sizeof k_covered[0])

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    char *text;
    long size;
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = (char *)malloc((size_t)size + 2);
    if (text != NULL) {
        text[0] = '\n'; /* so a declaration on the first line starts after a newline too */
        text[1 + fread(text + 1, 1, (size_t)size, f)] = '\0';
    }
    fclose(f);
    return text;
}

static int is_ident(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

static int covered(const char *name) {
    size_t i;
    for (i = 0; i < N_COVERED; i++) {
        if (strcmp(k_covered[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Every declaration "FLUXUS_API ... fluxus_name(...);" at the start of a line whose parameters
 * include a fluxus_user_free_fn must be in REGISTRATIONS, and nothing else may be. */
static void every_registration_in_the_header_has_a_test(void **state) {
    char *text = read_text(OWNERSHIP_HEADER);
    char *at;
    size_t found = 0;
    char missing[2048] = "";
    (void)state;
    if (text == NULL) {
        fail_msg("cannot read %s", OWNERSHIP_HEADER);
    }
    for (at = text; (at = strstr(at, "\nFLUXUS_API ")) != NULL; at++) {
        char *end = strchr(at, ';');
        char *paren = strchr(at, '(');
        char *name_end, *name;
        char saved;
        int takes_user_free;
        if (end == NULL || paren == NULL || paren > end) {
            continue;
        }
        saved = *end;
        *end = '\0';
        takes_user_free = strstr(paren, "fluxus_user_free_fn") != NULL;
        *end = saved;
        if (!takes_user_free) {
            continue;
        }
        name_end = paren;
        while (name_end > at && name_end[-1] == ' ') name_end--;
        name = name_end;
        while (name > at && is_ident(name[-1])) name--;
        saved = *name_end;
        *name_end = '\0';
        found++;
        if (!covered(name) && strlen(missing) + strlen(name) + 2 < sizeof missing) {
            strcat(missing, " ");
            strcat(missing, name);
        }
        *name_end = saved;
    }
    free(text);
    if (missing[0] != '\0') {
        fail_msg("functions taking a user_free without an ownership test:%s", missing);
    }
    /* Each name in REGISTRATIONS was found once: no stale entry, and the parse saw them all. */
    assert_int_equal(found, N_COVERED);
}

#define AS_TEST(name) cmocka_unit_test(name##_takes_user_only_on_ok),

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_registration_in_the_header_has_a_test),
        REGISTRATIONS(AS_TEST)
    };
    return TU_RUN_GROUP(tests);
}
