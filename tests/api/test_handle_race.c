/*
 * A freed handle never touches freed memory (fluxus.h, "Handles and frees"): every public
 * function that takes a handle is called in a loop on one thread while another thread frees
 * that handle. Each call must return a code the header allows for a call racing a free (its
 * own codes, FLUXUS_EINVAL once the handle is gone, FLUXUS_ECANCELED for a call the free woke);
 * a call after the free must return FLUXUS_EINVAL; nothing may crash, hang, or (under ASan and
 * TSan) touch freed memory or race. The first test reads include/fluxus.h and fails if a
 * function that takes a handle has no race case here, for each kind of handle it takes.
 *
 * HANDLE_RACE_ITERS (environment) sets the rounds per case (default 4: one of each runtime
 * setup; soak with more, or repeat the test).
 */
#include "nop_callbacks.h"
#include "test_util.h"

#ifndef HANDLE_RACE_HEADER
#error "HANDLE_RACE_HEADER (the path of include/fluxus.h) is defined by tests/meson.build"
#endif

/* ----- callbacks beside nop_callbacks.h: none of them runs, except the map, sink and breaker
 * callbacks ----- */

static int32_t nop_async_map(void *u, uint64_t item, uint64_t completion) {
    (void)u, (void)item, (void)completion;
    return 0;
}
static int32_t nop_reduce(void *u, uint64_t *acc, int32_t first, uint64_t item) {
    (void)u, (void)first;
    *acc = item;
    return 0;
}
static int32_t nop_route(void *u, uint64_t item, uint32_t *routes, uint32_t cap,
                         uint32_t *count) {
    (void)u, (void)item, (void)routes, (void)cap;
    *count = 0;
    return 0;
}
static int32_t nop_key(void *u, uint64_t item, const void **key, size_t *len) {
    (void)u, (void)item;
    *key = "k";
    *len = 1;
    return 0;
}

/* ----- the objects one round works on ----- */

/* What is freed: the handle the racing call takes (of this kind). */
/* K_OWNER: the runtime of the pipeline `p` (the pipeline handle stays valid, see
 * fluxus_runtime_free()); K_TARGET: the error route target `t`. */
enum kind { K_RUNTIME, K_PIPELINE, K_TARGET, K_REGISTRY, K_RATE, K_CONC, K_BREAKER, K_OWNER };

/* The state of the pipeline `p` before the race (for K_RUNTIME: see make_runtime()). */
enum setup {
    P_EMPTY,     /* nothing set yet */
    P_MAP,       /* push source, map stage 0 (open end) */
    P_ASYNC,     /* push source, async map stage 0 */
    P_ROUTER,    /* push source, router stage 0 with route "a" */
    P_DEDUP,     /* push source, dedup stage 0 */
    P_DEBOUNCE,  /* push source, debounce stage 0 */
    P_JOIN,      /* push source, join stage 0 */
    P_CURSOR,    /* cursor source, sink stage 0 */
    P_READY,     /* push source, map stage 0, sink stage 1: ready to start */
    P_RUN,       /* P_READY, started */
    P_RUN_ASYNC, /* push source, async map stage 0, sink stage 1, started */
    P_PAUSED     /* P_RUN, paused */
};

typedef struct ctx {
    fluxus_runtime *rt;     /* the runtime (K_RUNTIME: the one freed) */
    fluxus_pipeline *p;     /* the pipeline calls take */
    fluxus_pipeline *t;     /* error route target (push source) */
    fluxus_registry *reg;   /* has "m" (map) and "out" (sink) */
    fluxus_rate_limiter *rl;
    fluxus_concurrency_limiter *cl;
    fluxus_circuit_breaker *cb;
    uint32_t n; /* calls made by the racer (names, items) */
} ctx;

#define BIT(code) (1u << (uint32_t)(-(code)))
#define OK BIT(FLUXUS_OK)
#define EINVAL_ BIT(FLUXUS_EINVAL)
#define ESTATE_ BIT(FLUXUS_ESTATE)
#define ERANGE_ BIT(FLUXUS_ERANGE)
#define EFULL_ BIT(FLUXUS_EFULL)
#define ETIMEDOUT_ BIT(FLUXUS_ETIMEDOUT)
#define ECANCELED_ BIT(FLUXUS_ECANCELED)
#define ECLOSED_ BIT(FLUXUS_ECLOSED)
#define ENOTFOUND_ BIT(FLUXUS_ENOTFOUND)
#define ELIMITED_ BIT(FLUXUS_ELIMITED)
#define ECIRCUITOPEN_ BIT(FLUXUS_ECIRCUITOPEN)
#define ENOTSUP_ BIT(FLUXUS_ENOTSUP)

/* Building calls: their own codes; ESTATE also because a pipeline free cancels first. */
#define M_BUILD (OK | EINVAL_ | ESTATE_ | ERANGE_ | ENOTFOUND_)
/* Calls on a running pipeline: the free cancels it under them. */
#define M_RUN (OK | EINVAL_ | ESTATE_ | ECANCELED_ | ECLOSED_ | EFULL_ | ETIMEDOUT_ | ENOTFOUND_)

static char *unique_name(ctx *c, char *buf, size_t cap) {
    snprintf(buf, cap, "n%u", c->n);
    return buf;
}

/* ----- the cases: function, handle freed, setup of `p`, codes allowed, the call ----- */

/* The racing call's result: functions that return no status map to OK / EINVAL. */
#define CASES(X)                                                                                  \
    /* runtime */                                                                                 \
    X(fluxus_runtime_set_workers, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                     \
      fluxus_runtime_set_workers(c->rt, 1))                                                       \
    X(fluxus_runtime_get_workers, K_RUNTIME, P_EMPTY, OK | EINVAL_,                               \
      fluxus_runtime_get_workers(&u32, c->rt))                                                    \
    X(fluxus_runtime_set_spin_us, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                     \
      fluxus_runtime_set_spin_us(c->rt, 10))                                                      \
    X(fluxus_runtime_set_stall_threshold_ms, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,          \
      fluxus_runtime_set_stall_threshold_ms(c->rt, 1000))                                         \
    X(fluxus_runtime_set_log, K_RUNTIME, P_EMPTY, OK | EINVAL_,                                   \
      fluxus_runtime_set_log(c->rt, FLUXUS_LOG_WARN, nop_log, NULL, NULL))                        \
    X(fluxus_runtime_set_wakeup, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                      \
      fluxus_runtime_set_wakeup(c->rt, nop_wakeup, NULL, NULL))                                   \
    X(fluxus_runtime_get_fd, K_RUNTIME, P_EMPTY, OK | ESTATE_ | ENOTSUP_ | EINVAL_,               \
      fluxus_runtime_get_fd(&i32, c->rt))                                                         \
    X(fluxus_runtime_get_next_timer_us, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,               \
      fluxus_runtime_get_next_timer_us(&u64, c->rt))                                              \
    X(fluxus_runtime_set_thread_hooks, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                \
      fluxus_runtime_set_thread_hooks(c->rt, NULL, NULL, NULL, NULL))                             \
    X(fluxus_runtime_start, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                           \
      fluxus_runtime_start(c->rt))                                                                \
    X(fluxus_runtime_run_once, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                        \
      fluxus_runtime_run_once(&u32, c->rt))                                                       \
    X(fluxus_runtime_run_for, K_RUNTIME, P_EMPTY, OK | ESTATE_ | ECANCELED_ | EINVAL_,            \
      fluxus_runtime_run_for(c->rt, UINT32_MAX))                                                  \
    X(fluxus_runtime_free, K_RUNTIME, P_EMPTY, OK | EINVAL_, fluxus_runtime_free(c->rt))          \
    X(fluxus_runtime_set_virtual_clock, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,               \
      fluxus_runtime_set_virtual_clock(c->rt, 0, 0))                                              \
    X(fluxus_runtime_advance_clock, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                   \
      fluxus_runtime_advance_clock(c->rt, 1000))                                                  \
    X(fluxus_runtime_now_ns, K_RUNTIME, P_EMPTY, OK | EINVAL_, fluxus_runtime_now_ns(c->rt, &u64)) \
    X(fluxus_runtime_call_after, K_RUNTIME, P_EMPTY, OK | EINVAL_,                                \
      fluxus_runtime_call_after(&u64, c->rt, 1000000000ull, nop_timer, NULL, NULL))               \
    X(fluxus_runtime_cancel_timer, K_RUNTIME, P_EMPTY, ENOTFOUND_ | EINVAL_,                      \
      fluxus_runtime_cancel_timer(c->rt, 123456789))                                              \
    X(fluxus_runtime_set_option, K_RUNTIME, P_EMPTY, OK | ESTATE_ | EINVAL_,                      \
      fluxus_runtime_set_option(c->rt, FLUXUS_OPT_SPIN_US, 10))                                   \
    X(fluxus_runtime_get_option, K_RUNTIME, P_EMPTY, OK | EINVAL_,                                \
      fluxus_runtime_get_option(&i64, c->rt, FLUXUS_OPT_SPIN_US))                                 \
    X(fluxus_pipeline_new, K_RUNTIME, P_EMPTY, OK | EINVAL_, new_pipeline_and_free(c))            \
    X(fluxus_rate_limiter_new, K_RUNTIME, P_EMPTY, OK | EINVAL_, new_rate_limiter_and_free(c))    \
    X(fluxus_circuit_breaker_new, K_RUNTIME, P_EMPTY, OK | EINVAL_, new_breaker_and_free(c))      \
    /* pipeline: building */                                                                      \
    X(fluxus_pipeline_set_item_free, K_PIPELINE, P_EMPTY, M_BUILD,                                \
      fluxus_pipeline_set_item_free(c->p, nop_item_free, NULL, NULL))                             \
    X(fluxus_pipeline_set_dead_letter, K_PIPELINE, P_EMPTY, M_BUILD,                              \
      fluxus_pipeline_set_dead_letter(c->p, nop_dead_letter, NULL, NULL))                         \
    X(fluxus_pipeline_set_route_observer, K_PIPELINE, P_EMPTY, M_BUILD,                           \
      fluxus_pipeline_set_route_observer(c->p, nop_dead_letter, NULL, NULL))                      \
    X(fluxus_pipeline_set_fusion, K_PIPELINE, P_EMPTY, M_BUILD, fluxus_pipeline_set_fusion(c->p, 1)) \
    X(fluxus_pipeline_set_batch_size, K_PIPELINE, P_EMPTY, M_BUILD,                               \
      fluxus_pipeline_set_batch_size(c->p, 64))                                                   \
    X(fluxus_pipeline_set_pull_source, K_PIPELINE, P_EMPTY, M_BUILD,                              \
      fluxus_pipeline_set_pull_source(c->p, "s", nop_pull, NULL, NULL))                           \
    X(fluxus_pipeline_set_pull_source_batch, K_PIPELINE, P_EMPTY, M_BUILD,                        \
      fluxus_pipeline_set_pull_source_batch(c->p, "s", nop_pull_batch, NULL, NULL))               \
    X(fluxus_pipeline_set_cursor_source, K_PIPELINE, P_EMPTY, M_BUILD,                            \
      fluxus_pipeline_set_cursor_source(c->p, "s", 0, nop_cursor_read, nop_page_of, nop_commit,   \
                                        NULL, NULL))                                              \
    X(fluxus_pipeline_get_committed_cursor, K_PIPELINE, P_CURSOR, ENOTFOUND_ | EINVAL_,           \
      fluxus_pipeline_get_committed_cursor(&u64, c->p))                                           \
    X(fluxus_pipeline_set_poll_interval_us, K_PIPELINE, P_EMPTY, M_BUILD,                         \
      fluxus_pipeline_set_poll_interval_us(c->p, 100))                                            \
    X(fluxus_pipeline_set_push_source, K_PIPELINE, P_EMPTY, M_BUILD,                              \
      fluxus_pipeline_set_push_source(c->p, "in"))                                                \
    X(fluxus_pipeline_add_map, K_PIPELINE, P_MAP, M_BUILD,                                        \
      fluxus_pipeline_add_map(&u32, c->p, NULL, nop_map, NULL, NULL))                             \
    X(fluxus_pipeline_add_map_batch, K_PIPELINE, P_MAP, M_BUILD,                                  \
      fluxus_pipeline_add_map_batch(&u32, c->p, NULL, nop_map_batch, NULL, NULL))                 \
    X(fluxus_pipeline_add_filter, K_PIPELINE, P_MAP, M_BUILD,                                     \
      fluxus_pipeline_add_filter(&u32, c->p, NULL, nop_filter, NULL, NULL))                       \
    X(fluxus_pipeline_add_filter_batch, K_PIPELINE, P_MAP, M_BUILD,                               \
      fluxus_pipeline_add_filter_batch(&u32, c->p, NULL, nop_filter_batch, NULL, NULL))           \
    X(fluxus_pipeline_add_flat_map, K_PIPELINE, P_MAP, M_BUILD,                                   \
      fluxus_pipeline_add_flat_map(&u32, c->p, NULL, nop_flat_map, NULL, NULL))                   \
    X(fluxus_pipeline_add_flat_map_batch, K_PIPELINE, P_MAP, M_BUILD,                             \
      fluxus_pipeline_add_flat_map_batch(&u32, c->p, NULL, nop_flat_map_batch, NULL, NULL))       \
    X(fluxus_pipeline_add_sink, K_PIPELINE, P_MAP, M_BUILD,                                       \
      fluxus_pipeline_add_sink(&u32, c->p, NULL, nop_sink, NULL, NULL))                           \
    X(fluxus_pipeline_add_sink_batch, K_PIPELINE, P_MAP, M_BUILD,                                 \
      fluxus_pipeline_add_sink_batch(&u32, c->p, NULL, nop_sink_batch, NULL, NULL))               \
    X(fluxus_pipeline_add_dedup, K_PIPELINE, P_MAP, M_BUILD,                                      \
      fluxus_pipeline_add_dedup(&u32, c->p, NULL))                                                \
    X(fluxus_pipeline_add_async_map, K_PIPELINE, P_MAP, M_BUILD,                                  \
      fluxus_pipeline_add_async_map(&u32, c->p, NULL, nop_async_map, NULL, NULL))                 \
    X(fluxus_stage_set_async_cancel, K_PIPELINE, P_ASYNC, M_BUILD,                                \
      fluxus_stage_set_async_cancel(c->p, 0, nop_async_cancel, NULL, NULL))                       \
    X(fluxus_stage_set_in_flight, K_PIPELINE, P_ASYNC, M_BUILD,                                   \
      fluxus_stage_set_in_flight(c->p, 0, 4))                                                     \
    X(fluxus_stage_set_timeout_us, K_PIPELINE, P_ASYNC, M_BUILD,                                  \
      fluxus_stage_set_timeout_us(c->p, 0, 1000))                                                 \
    X(fluxus_pipeline_add_batch, K_PIPELINE, P_MAP, M_BUILD,                                      \
      fluxus_pipeline_add_batch(&u32, c->p, NULL, 4, 1000, nop_flat_map_batch, NULL, NULL))       \
    X(fluxus_pipeline_add_reduce, K_PIPELINE, P_MAP, M_BUILD,                                     \
      fluxus_pipeline_add_reduce(&u32, c->p, NULL, nop_reduce, NULL, NULL))                       \
    X(fluxus_pipeline_add_window, K_PIPELINE, P_MAP, M_BUILD,                                     \
      fluxus_pipeline_add_window(&u32, c->p, NULL, FLUXUS_WINDOW_COUNT, 4, nop_window, NULL,      \
                                 NULL))                                                           \
    X(fluxus_pipeline_add_sliding_window, K_PIPELINE, P_MAP, M_BUILD,                             \
      fluxus_pipeline_add_sliding_window(&u32, c->p, NULL, FLUXUS_WINDOW_COUNT, 4, 2, nop_window, \
                                         NULL, NULL))                                             \
    X(fluxus_pipeline_add_router, K_PIPELINE, P_MAP, M_BUILD,                                     \
      fluxus_pipeline_add_router(&u32, c->p, NULL, nop_route, NULL, NULL))                        \
    X(fluxus_pipeline_add_broadcast, K_PIPELINE, P_MAP, M_BUILD,                                  \
      fluxus_pipeline_add_broadcast(&u32, c->p, NULL))                                            \
    X(fluxus_stage_add_route, K_PIPELINE, P_ROUTER, M_BUILD,                                      \
      fluxus_stage_add_route(&u32, c->p, 0, unique_name(c, name, sizeof name)))                   \
    X(fluxus_stage_get_route_index, K_PIPELINE, P_ROUTER, OK | ENOTFOUND_ | EINVAL_,                  \
      fluxus_stage_get_route_index(&u32, c->p, 0, "a"))                                               \
    X(fluxus_stage_set_default_route, K_PIPELINE, P_ROUTER, M_BUILD,                              \
      fluxus_stage_set_default_route(c->p, 0, 0))                                                 \
    X(fluxus_stage_set_copy, K_PIPELINE, P_ROUTER, M_BUILD,                                       \
      fluxus_stage_set_copy(c->p, 0, nop_copy, NULL, NULL))                                       \
    X(fluxus_pipeline_branch, K_PIPELINE, P_ROUTER, M_BUILD, fluxus_pipeline_branch(c->p, 0, 0))  \
    X(fluxus_pipeline_connect, K_PIPELINE, P_ROUTER, M_BUILD,                                     \
      fluxus_pipeline_connect(c->p, 0, 0, 0))                                                     \
    X(fluxus_pipeline_add_source, K_PIPELINE, P_EMPTY, M_BUILD,                                   \
      fluxus_pipeline_add_source(&u32, c->p, NULL, nop_pull, NULL, NULL))                         \
    X(fluxus_pipeline_add_join, K_PIPELINE, P_MAP, M_BUILD,                                       \
      fluxus_pipeline_add_join(&u32, c->p, NULL, 2, nop_join_input, nop_window, NULL, NULL))      \
    X(fluxus_stage_set_join_timeout_us, K_PIPELINE, P_JOIN, M_BUILD,                              \
      fluxus_stage_set_join_timeout_us(c->p, 0, 1000))                                            \
    X(fluxus_stage_set_join_max_keys, K_PIPELINE, P_JOIN, M_BUILD,                                \
      fluxus_stage_set_join_max_keys(c->p, 0, 100))                                               \
    X(fluxus_pipeline_add_loader, K_PIPELINE, P_MAP, M_BUILD,                                     \
      fluxus_pipeline_add_loader(&u32, c->p, NULL, 4, 1000, nop_load, nop_attach, NULL, NULL))    \
    X(fluxus_stage_set_cache, K_PIPELINE, P_MAP, M_BUILD,                                         \
      fluxus_stage_set_cache(c->p, 0, 16, 0, NULL, NULL, NULL))                                   \
    X(fluxus_stage_set_retry, K_PIPELINE, P_MAP, M_BUILD,                                         \
      fluxus_stage_set_retry(c->p, 0, 3, FLUXUS_BACKOFF_CONSTANT, 10, 10))                        \
    X(fluxus_stage_set_retry_predicate, K_PIPELINE, P_MAP, M_BUILD,                               \
      fluxus_stage_set_retry_predicate(c->p, 0, nop_retry, NULL, NULL))                           \
    X(fluxus_stage_set_retry_seed, K_PIPELINE, P_MAP, M_BUILD,                                    \
      fluxus_stage_set_retry_seed(c->p, 0, 42))                                                   \
    X(fluxus_stage_set_error_route, K_PIPELINE, P_MAP, M_BUILD,                                   \
      fluxus_stage_set_error_route(c->p, 0, c->t))                                                \
    X(fluxus_stage_set_error_route, K_TARGET, P_MAP, M_BUILD,                                     \
      fluxus_stage_set_error_route(c->p, 0, c->t))                                                \
    X(fluxus_pipeline_add_debounce, K_PIPELINE, P_MAP, M_BUILD,                                   \
      fluxus_pipeline_add_debounce(&u32, c->p, NULL, 1000))                                       \
    X(fluxus_pipeline_add_throttle, K_PIPELINE, P_MAP, M_BUILD,                                   \
      fluxus_pipeline_add_throttle(&u32, c->p, NULL, 1000))                                       \
    X(fluxus_stage_set_debounce_max_keys, K_PIPELINE, P_DEBOUNCE, M_BUILD,                        \
      fluxus_stage_set_debounce_max_keys(c->p, 0, 100))                                           \
    X(fluxus_stage_set_option, K_PIPELINE, P_MAP, M_BUILD,                                        \
      fluxus_stage_set_option(c->p, 0, FLUXUS_OPT_WORKERS, 1))                                    \
    X(fluxus_stage_get_option, K_PIPELINE, P_MAP, OK | EINVAL_,                                   \
      fluxus_stage_get_option(&i64, c->p, 0, FLUXUS_OPT_WORKERS))                                 \
    X(fluxus_pipeline_set_option, K_PIPELINE, P_EMPTY, M_BUILD,                                   \
      fluxus_pipeline_set_option(c->p, FLUXUS_OPT_BATCH_SIZE, 64))                                \
    X(fluxus_pipeline_get_option, K_PIPELINE, P_EMPTY, OK | EINVAL_,                              \
      fluxus_pipeline_get_option(&i64, c->p, FLUXUS_OPT_BATCH_SIZE))                              \
    X(fluxus_stage_set_workers, K_PIPELINE, P_MAP, M_BUILD, fluxus_stage_set_workers(c->p, 0, 2)) \
    X(fluxus_stage_set_order, K_PIPELINE, P_MAP, M_BUILD,                                         \
      fluxus_stage_set_order(c->p, 0, FLUXUS_ORDER_UNORDERED))                                    \
    X(fluxus_stage_set_reorder_window, K_PIPELINE, P_MAP, M_BUILD,                                \
      fluxus_stage_set_reorder_window(c->p, 0, 4))                                                \
    X(fluxus_stage_set_queue_capacity, K_PIPELINE, P_MAP, M_BUILD,                                \
      fluxus_stage_set_queue_capacity(c->p, 0, 64))                                               \
    X(fluxus_stage_set_overflow, K_PIPELINE, P_MAP, M_BUILD,                                      \
      fluxus_stage_set_overflow(c->p, 0, FLUXUS_OVERFLOW_BLOCK, 0))                               \
    X(fluxus_stage_set_error_policy, K_PIPELINE, P_MAP, M_BUILD,                                  \
      fluxus_stage_set_error_policy(c->p, 0, FLUXUS_ERROR_SKIP))                                  \
    X(fluxus_stage_set_worker_hooks, K_PIPELINE, P_MAP, M_BUILD,                                  \
      fluxus_stage_set_worker_hooks(c->p, 0, nop_worker_init, nop_worker_close))                  \
    X(fluxus_stage_set_key_fn, K_PIPELINE, P_MAP, M_BUILD,                                        \
      fluxus_stage_set_key_fn(c->p, 0, nop_key, NULL, NULL))                                      \
    X(fluxus_stage_set_dedup_max_keys, K_PIPELINE, P_DEDUP, M_BUILD,                              \
      fluxus_stage_set_dedup_max_keys(c->p, 0, 100))                                              \
    X(fluxus_stage_set_dedup_ttl_us, K_PIPELINE, P_DEDUP, M_BUILD,                                \
      fluxus_stage_set_dedup_ttl_us(c->p, 0, 1000))                                               \
    X(fluxus_stage_set_dedup_window, K_PIPELINE, P_DEDUP, M_BUILD,                                \
      fluxus_stage_set_dedup_window(c->p, 0, 100))                                                \
    X(fluxus_pipeline_build, K_PIPELINE, P_EMPTY, M_BUILD,                                        \
      fluxus_pipeline_build(c->p, c->reg, "source | m | out"))                                    \
    X(fluxus_stage_set_circuit_breaker, K_PIPELINE, P_MAP, M_BUILD,                               \
      fluxus_stage_set_circuit_breaker(c->p, 0, c->cb, FLUXUS_BREAKER_FAIL))                      \
    X(fluxus_stage_set_pause_source_on_errors, K_PIPELINE, P_MAP, M_BUILD,                        \
      fluxus_stage_set_pause_source_on_errors(c->p, 0, 3, 1000, 1000))                            \
    X(fluxus_pipeline_set_source_breaker, K_PIPELINE, P_EMPTY, M_BUILD,                           \
      fluxus_pipeline_set_source_breaker(c->p, c->cb))                                            \
    X(fluxus_stage_set_rate_limiter, K_PIPELINE, P_MAP, M_BUILD,                                  \
      fluxus_stage_set_rate_limiter(c->p, 0, c->rl, 0))                                           \
    X(fluxus_pipeline_set_source_rate_limiter, K_PIPELINE, P_EMPTY, M_BUILD,                      \
      fluxus_pipeline_set_source_rate_limiter(c->p, c->rl))                                       \
    X(fluxus_stage_set_concurrency_limiter, K_PIPELINE, P_MAP, M_BUILD,                           \
      fluxus_stage_set_concurrency_limiter(c->p, 0, c->cl))                                       \
    /* pipeline: running */                                                                       \
    X(fluxus_pipeline_start, K_PIPELINE, P_READY, OK | ESTATE_ | ECANCELED_ | EINVAL_,            \
      fluxus_pipeline_start(c->p))                                                                \
    X(fluxus_pipeline_push, K_PIPELINE, P_PAUSED, OK | ECANCELED_ | ECLOSED_ | EINVAL_,           \
      fluxus_pipeline_push(c->p, c->n, UINT32_MAX))                                               \
    X(fluxus_pipeline_try_push, K_PIPELINE, P_RUN, M_RUN, fluxus_pipeline_try_push(c->p, c->n))   \
    X(fluxus_pipeline_push_many, K_PIPELINE, P_RUN, M_RUN,                                        \
      fluxus_pipeline_push_many(&u32, c->p, items, 4, 0))                                         \
    X(fluxus_pipeline_close_input, K_PIPELINE, P_RUN, OK | EINVAL_,                               \
      fluxus_pipeline_close_input(c->p))                                                          \
    X(fluxus_pipeline_pause, K_PIPELINE, P_RUN, OK | EINVAL_, fluxus_pipeline_pause(c->p))        \
    X(fluxus_pipeline_resume, K_PIPELINE, P_PAUSED, OK | EINVAL_, pause_resume(c))                \
    X(fluxus_pipeline_complete_async, K_PIPELINE, P_RUN_ASYNC, M_RUN,                                      \
      fluxus_pipeline_complete_async(c->p, 0, 0, 1))                                                       \
    X(fluxus_pipeline_fail_async, K_PIPELINE, P_RUN_ASYNC, M_RUN,                                          \
      fluxus_pipeline_fail_async(c->p, 0, -1, 1, "x"))                                                     \
    X(fluxus_pipeline_wait, K_PIPELINE, P_RUN, OK | ECANCELED_ | EINVAL_,                         \
      fluxus_pipeline_wait(c->p, UINT32_MAX))                                                     \
    X(fluxus_pipeline_drain, K_PIPELINE, P_RUN, OK | ECANCELED_ | ETIMEDOUT_ | EINVAL_,           \
      fluxus_pipeline_drain(c->p, UINT32_MAX))                                                    \
    X(fluxus_pipeline_get_failure, K_PIPELINE, P_RUN, ENOTFOUND_ | EINVAL_,                       \
      fluxus_pipeline_get_failure(&failure, c->p))                                                \
    X(fluxus_pipeline_cancel, K_PIPELINE, P_RUN, OK | EINVAL_, fluxus_pipeline_cancel(c->p))      \
    X(fluxus_pipeline_get_cancelled, K_PIPELINE, P_RUN, OK | EINVAL_,                             \
      fluxus_pipeline_get_cancelled(&i32, c->p))                                                  \
    X(fluxus_pipeline_get_state, K_PIPELINE, P_RUN, OK | EINVAL_,                                 \
      fluxus_pipeline_get_state(&i32, c->p))                                                      \
    X(fluxus_pipeline_free, K_PIPELINE, P_RUN, OK | EINVAL_, fluxus_pipeline_free(c->p))          \
    X(fluxus_pipeline_get_stats, K_PIPELINE, P_RUN, OK | EINVAL_,                                 \
      fluxus_pipeline_get_stats(&pstats, c->p))                                                   \
    X(fluxus_stage_get_stats, K_PIPELINE, P_RUN, OK | EINVAL_,                                    \
      fluxus_stage_get_stats(&sstats, c->p, 0))                                                   \
    X(fluxus_pipeline_get_stage_count, K_PIPELINE, P_RUN, OK | EINVAL_,                               \
      fluxus_pipeline_get_stage_count(&u32, c->p))                                                    \
    X(fluxus_stage_get_name, K_PIPELINE, P_RUN, OK | EINVAL_,                                     \
      fluxus_stage_get_name(&str, c->p, 0))                                                       \
    /* pipeline calls racing the free of the pipeline's runtime (which cancels it) */             \
    X(fluxus_pipeline_start, K_OWNER, P_READY, OK | ESTATE_ | ECANCELED_,                         \
      fluxus_pipeline_start(c->p))                                                                \
    X(fluxus_pipeline_push, K_OWNER, P_PAUSED, OK | ECANCELED_ | ECLOSED_,                        \
      fluxus_pipeline_push(c->p, c->n, UINT32_MAX))                                               \
    X(fluxus_pipeline_wait, K_OWNER, P_RUN, OK | ECANCELED_,                                      \
      fluxus_pipeline_wait(c->p, UINT32_MAX))                                                     \
    X(fluxus_pipeline_drain, K_OWNER, P_RUN, OK | ECANCELED_ | ETIMEDOUT_,                        \
      fluxus_pipeline_drain(c->p, UINT32_MAX))                                                    \
    /* registry */                                                                                \
    X(fluxus_registry_free, K_REGISTRY, P_EMPTY, OK | EINVAL_, fluxus_registry_free(c->reg))      \
    X(fluxus_registry_add, K_REGISTRY, P_EMPTY, OK | EINVAL_,                                     \
      fluxus_registry_add(c->reg, unique_name(c, name, sizeof name), FLUXUS_FN_MAP,               \
                          (fluxus_any_fn)nop_map, NULL, NULL))                                    \
    X(fluxus_pipeline_build, K_REGISTRY, P_EMPTY, M_BUILD,                                        \
      fluxus_pipeline_build(c->p, c->reg, "source | m | out"))                                    \
    /* rate limiter (0.001 tokens per second, burst 1: acquire waits after the first token) */    \
    X(fluxus_rate_limiter_set_rate, K_RATE, P_EMPTY, OK | EINVAL_,                                \
      fluxus_rate_limiter_set_rate(c->rl, 0.001))                                                 \
    X(fluxus_rate_limiter_set_burst, K_RATE, P_EMPTY, OK | EINVAL_,                               \
      fluxus_rate_limiter_set_burst(c->rl, 1))                                                    \
    X(fluxus_rate_limiter_set_mode, K_RATE, P_EMPTY, OK | EINVAL_,                                \
      fluxus_rate_limiter_set_mode(c->rl, FLUXUS_RATE_TOKEN_BUCKET))                              \
    X(fluxus_rate_limiter_try_acquire, K_RATE, P_EMPTY, OK | ELIMITED_ | EINVAL_,                 \
      fluxus_rate_limiter_try_acquire(c->rl, 1))                                                  \
    X(fluxus_rate_limiter_acquire, K_RATE, P_EMPTY, OK | ECANCELED_ | EINVAL_,                    \
      fluxus_rate_limiter_acquire(c->rl, 1, UINT32_MAX))                                          \
    X(fluxus_rate_limiter_free, K_RATE, P_EMPTY, OK | EINVAL_, fluxus_rate_limiter_free(c->rl))   \
    X(fluxus_stage_set_rate_limiter, K_RATE, P_MAP, M_BUILD,                                      \
      fluxus_stage_set_rate_limiter(c->p, 0, c->rl, 0))                                           \
    X(fluxus_pipeline_set_source_rate_limiter, K_RATE, P_EMPTY, M_BUILD,                          \
      fluxus_pipeline_set_source_rate_limiter(c->p, c->rl))                                       \
    /* concurrency limiter (1 permit: acquire waits once it is taken) */                          \
    X(fluxus_concurrency_limiter_set_max, K_CONC, P_EMPTY, OK | EINVAL_,                          \
      fluxus_concurrency_limiter_set_max(c->cl, 1))                                               \
    X(fluxus_concurrency_limiter_try_acquire, K_CONC, P_EMPTY, OK | ELIMITED_ | EINVAL_,          \
      fluxus_concurrency_limiter_try_acquire(c->cl, 1))                                           \
    X(fluxus_concurrency_limiter_acquire, K_CONC, P_EMPTY, OK | ECANCELED_ | EINVAL_,             \
      fluxus_concurrency_limiter_acquire(c->cl, 1, UINT32_MAX))                                   \
    X(fluxus_concurrency_limiter_release, K_CONC, P_EMPTY, OK | ERANGE_ | EINVAL_,                \
      fluxus_concurrency_limiter_release(c->cl, 1))                                               \
    X(fluxus_concurrency_limiter_get_in_use, K_CONC, P_EMPTY, OK | EINVAL_,                           \
      fluxus_concurrency_limiter_get_in_use(&u32, c->cl))                                             \
    X(fluxus_concurrency_limiter_free, K_CONC, P_EMPTY, OK | EINVAL_,                             \
      fluxus_concurrency_limiter_free(c->cl))                                                     \
    X(fluxus_stage_set_concurrency_limiter, K_CONC, P_MAP, M_BUILD,                               \
      fluxus_stage_set_concurrency_limiter(c->p, 0, c->cl))                                       \
    /* circuit breaker (opens after 2 failures; its state callback tries to free it) */           \
    X(fluxus_circuit_breaker_set_consecutive_failures, K_BREAKER, P_EMPTY, OK | EINVAL_,          \
      fluxus_circuit_breaker_set_consecutive_failures(c->cb, 2))                                  \
    X(fluxus_circuit_breaker_set_failure_ratio, K_BREAKER, P_EMPTY, OK | EINVAL_,                 \
      fluxus_circuit_breaker_set_failure_ratio(c->cb, 0.5, 10, 5))                                \
    X(fluxus_circuit_breaker_set_reset_timeout_us, K_BREAKER, P_EMPTY, OK | EINVAL_,              \
      fluxus_circuit_breaker_set_reset_timeout_us(c->cb, 1))                                      \
    X(fluxus_circuit_breaker_set_half_open, K_BREAKER, P_EMPTY, OK | EINVAL_,                     \
      fluxus_circuit_breaker_set_half_open(c->cb, 1, 1))                                          \
    X(fluxus_circuit_breaker_set_state_callback, K_BREAKER, P_EMPTY, OK | EINVAL_,                \
      fluxus_circuit_breaker_set_state_callback(c->cb, nop_breaker_state, NULL, NULL))            \
    X(fluxus_circuit_breaker_get_state, K_BREAKER, P_EMPTY, OK | EINVAL_,                         \
      fluxus_circuit_breaker_get_state(&i32, c->cb))                                              \
    X(fluxus_circuit_breaker_allow, K_BREAKER, P_EMPTY, OK | ECIRCUITOPEN_ | EINVAL_,             \
      fluxus_circuit_breaker_allow(&u64, c->cb))                                                  \
    X(fluxus_circuit_breaker_record, K_BREAKER, P_EMPTY, OK | EINVAL_,                            \
      allow_and_fail(c))                                                                          \
    X(fluxus_circuit_breaker_free, K_BREAKER, P_EMPTY, OK | EINVAL_,                              \
      fluxus_circuit_breaker_free(c->cb))                                                         \
    X(fluxus_stage_set_circuit_breaker, K_BREAKER, P_MAP, M_BUILD,                                \
      fluxus_stage_set_circuit_breaker(c->p, 0, c->cb, FLUXUS_BREAKER_FAIL))                      \
    X(fluxus_pipeline_set_source_breaker, K_BREAKER, P_EMPTY, M_BUILD,                            \
      fluxus_pipeline_set_source_breaker(c->p, c->cb))

/* ----- calls that need more than one expression ----- */

static int32_t new_pipeline_and_free(ctx *c) {
    fluxus_pipeline *p = NULL;
    int32_t rc = fluxus_pipeline_new(&p, c->rt, "new");
    if (rc == FLUXUS_OK && fluxus_pipeline_free(p) != FLUXUS_OK) {
        return FLUXUS_EINTERNAL; /* reported as a code not allowed */
    }
    return rc;
}

static int32_t new_rate_limiter_and_free(ctx *c) {
    fluxus_rate_limiter *l = NULL;
    int32_t rc = fluxus_rate_limiter_new(&l, c->rt, 1000, 1);
    if (rc == FLUXUS_OK && fluxus_rate_limiter_free(l) != FLUXUS_OK) {
        return FLUXUS_EINTERNAL;
    }
    return rc;
}

static int32_t new_breaker_and_free(ctx *c) {
    fluxus_circuit_breaker *b = NULL;
    int32_t rc = fluxus_circuit_breaker_new(&b, c->rt);
    if (rc == FLUXUS_OK && fluxus_circuit_breaker_free(b) != FLUXUS_OK) {
        return FLUXUS_EINTERNAL;
    }
    return rc;
}

static int32_t pause_resume(ctx *c) {
    int32_t rc = fluxus_pipeline_resume(c->p);
    if (rc != FLUXUS_OK) {
        return rc;
    }
    return fluxus_pipeline_pause(c->p);
}

/* A failed call: after two the breaker opens, which calls its state callback. */
static int32_t allow_and_fail(ctx *c) {
    uint64_t ticket = 0;
    int32_t rc = fluxus_circuit_breaker_allow(&ticket, c->cb);
    if (rc == FLUXUS_ECIRCUITOPEN) {
        return FLUXUS_OK;
    }
    if (rc != FLUXUS_OK) {
        return rc;
    }
    return fluxus_circuit_breaker_record(c->cb, ticket, 0);
}

/* The breaker's state callback frees its own breaker: inside a callback (and inside the breaker
 * call that runs it) that must be refused (EINCALLBACK), or find the handle already freed by the
 * race (EINVAL); never freed under the call, never a deadlock. */
static uint32_t g_bad_free_in_callback;

static void freeing_breaker_state(void *user, int32_t from, int32_t to) {
    int32_t rc = fluxus_circuit_breaker_free((fluxus_circuit_breaker *)user);
    (void)from, (void)to;
    if (rc != FLUXUS_EINCALLBACK && rc != FLUXUS_EINVAL) {
        TU_ADD(&g_bad_free_in_callback, 1);
    }
}

/* ----- the case table ----- */

typedef struct race_case {
    const char *fn;
    enum kind kind;
    enum setup setup;
    uint32_t allowed;
    int32_t (*call)(ctx *c);
} race_case;

#define DEFINE_CALL(fn, kind, setup, allowed, expr)         \
    static int32_t call_##fn##_##kind(ctx *c) {             \
        uint32_t u32 = 0;                                   \
        uint64_t u64 = 0;                                   \
        int32_t i32 = 0;                                    \
        int64_t i64 = 0;                                    \
        char name[32];                                      \
        uint64_t items[4] = {1, 2, 3, 4};                   \
        const fluxus_failure *failure = NULL;               \
        const char *str = NULL;                             \
        fluxus_pipeline_stats pstats;                       \
        fluxus_stage_stats sstats;                          \
        memset(&pstats, 0, sizeof pstats);                  \
        memset(&sstats, 0, sizeof sstats);                  \
        pstats.struct_size = (uint32_t)sizeof pstats;       \
        sstats.struct_size = (uint32_t)sizeof sstats;       \
        (void)u32, (void)u64, (void)i32, (void)i64;         \
        (void)name, (void)items, (void)failure, (void)str;  \
        return (int32_t)(expr);                             \
    }
CASES(DEFINE_CALL)

#define CASE_ENTRY(fn, kind, setup, allowed, expr) {#fn, kind, setup, allowed, call_##fn##_##kind},
static const race_case k_cases[] = {CASES(CASE_ENTRY)};
#define N_CASES (sizeof k_cases / sizeof k_cases[0])

/* ----- building the objects of one round ----- */

static fluxus_pipeline *make_pipeline(fluxus_runtime *rt, enum setup setup) {
    fluxus_pipeline *p = NULL;
    uint32_t s = 0;
    TU_OK(fluxus_pipeline_new(&p, rt, "raced"));
    if (setup == P_EMPTY) {
        return p;
    }
    if (setup == P_CURSOR) {
        TU_OK(fluxus_pipeline_set_cursor_source(p, "c", 0, nop_cursor_read, nop_page_of,
                                                nop_commit, NULL, NULL));
        TU_OK(fluxus_pipeline_add_sink(&s, p, "out", nop_sink, NULL, NULL));
        return p;
    }
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    switch (setup) {
    case P_ASYNC:
    case P_RUN_ASYNC:
        TU_OK(fluxus_pipeline_add_async_map(&s, p, "a", nop_async_map, NULL, NULL));
        break;
    case P_ROUTER:
        TU_OK(fluxus_pipeline_add_router(&s, p, "r", nop_route, NULL, NULL));
        TU_OK(fluxus_stage_add_route(&s, p, s, "a"));
        break;
    case P_DEDUP:
        TU_OK(fluxus_pipeline_add_dedup(&s, p, "d"));
        break;
    case P_DEBOUNCE:
        TU_OK(fluxus_pipeline_add_debounce(&s, p, "d", 1000));
        break;
    case P_JOIN:
        TU_OK(fluxus_pipeline_add_join(&s, p, "j", 2, nop_join_input, nop_window, NULL, NULL));
        break;
    default:
        TU_OK(fluxus_pipeline_add_map(&s, p, "m", nop_map, NULL, NULL));
        break;
    }
    if (setup == P_READY || setup == P_RUN || setup == P_RUN_ASYNC || setup == P_PAUSED) {
        TU_OK(fluxus_pipeline_add_sink(&s, p, "out", nop_sink, NULL, NULL));
    }
    if (setup == P_RUN || setup == P_RUN_ASYNC || setup == P_PAUSED) {
        TU_OK(fluxus_pipeline_start(p));
    }
    if (setup == P_PAUSED) {
        TU_OK(fluxus_pipeline_pause(p));
    }
    return p;
}

/* Runtime rounds cycle through: threaded, host-driven, and each with a pipeline running. */
static fluxus_runtime *make_runtime(uint32_t round, fluxus_pipeline **running) {
    fluxus_runtime *rt = tu_runtime(round % 2 == 0 ? 1 : 0);
    *running = NULL;
    if (round % 4 >= 2) {
        *running = make_pipeline(rt, P_RUN);
    }
    return rt;
}

static fluxus_registry *make_registry(void) {
    fluxus_registry *r = NULL;
    TU_OK(fluxus_registry_new(&r));
    TU_OK(fluxus_registry_add(r, "m", FLUXUS_FN_MAP, (fluxus_any_fn)nop_map, NULL, NULL));
    TU_OK(fluxus_registry_add(r, "out", FLUXUS_FN_SINK, (fluxus_any_fn)nop_sink, NULL, NULL));
    return r;
}

static fluxus_circuit_breaker *make_breaker(void) {
    fluxus_circuit_breaker *cb = NULL;
    TU_OK(fluxus_circuit_breaker_new(&cb, NULL));
    TU_OK(fluxus_circuit_breaker_set_consecutive_failures(cb, 2));
    TU_OK(fluxus_circuit_breaker_set_reset_timeout_us(cb, 1));
    TU_OK(fluxus_circuit_breaker_set_state_callback(cb, freeing_breaker_state, cb, NULL));
    return cb;
}

/* ----- one round: a racer thread calls in a loop, this thread frees ----- */

typedef struct race {
    const race_case *rc;
    ctx *c;
    uint32_t started;  /* the racer is about to make its first call */
    uint32_t freed;    /* the free has returned */
    uint32_t done;     /* the racer has finished */
    uint32_t calls;
    uint32_t oks_of_free; /* free-vs-free: OK results the racer got */
    int32_t bad_rc;    /* a code not allowed (0: none) */
    int32_t after_rc;  /* the call after the free */
    int free_fn;       /* the racing call is a free itself */
} race;

static void *racer_main(void *arg) {
    race *r = (race *)arg;
    TU_STORE(&r->started, 1);
    while (!TU_LOAD(&r->freed)) {
        int32_t rc = r->rc->call(r->c);
        r->c->n++;
        r->calls++;
        if (rc > 0 || rc < -31 || !(r->rc->allowed & BIT(rc))) {
            if (r->bad_rc == 0) {
                r->bad_rc = rc == 0 ? 1 : rc;
            }
        } else if (rc == FLUXUS_OK && r->free_fn) {
            r->oks_of_free++;
        }
    }
    r->after_rc = r->rc->call(r->c);
    TU_STORE(&r->done, 1);
    return NULL;
}

static int32_t free_target(ctx *c, enum kind kind) {
    switch (kind) {
    case K_RUNTIME: return fluxus_runtime_free(c->rt);
    case K_PIPELINE: return fluxus_pipeline_free(c->p);
    case K_TARGET: return fluxus_pipeline_free(c->t);
    case K_OWNER: return fluxus_runtime_free(c->rt);
    case K_REGISTRY: return fluxus_registry_free(c->reg);
    case K_RATE: return fluxus_rate_limiter_free(c->rl);
    case K_CONC: return fluxus_concurrency_limiter_free(c->cl);
    case K_BREAKER: return fluxus_circuit_breaker_free(c->cb);
    }
    return FLUXUS_EINTERNAL;
}

/* The public free of a handle kind (a free racing a free of the same handle). */
static int is_free_fn(const char *fn) {
    static const char *const frees[] = {"fluxus_runtime_free", "fluxus_pipeline_free",
                                        "fluxus_registry_free", "fluxus_rate_limiter_free",
                                        "fluxus_concurrency_limiter_free",
                                        "fluxus_circuit_breaker_free"};
    size_t i;
    for (i = 0; i < sizeof frees / sizeof frees[0]; i++) {
        if (strcmp(fn, frees[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

static uint32_t rounds(void) {
    const char *s = getenv("HANDLE_RACE_ITERS");
    long n = s != NULL ? strtol(s, NULL, 10) : 0;
    return n > 0 ? (uint32_t)n : 4u;
}

static void run_case(void **state) {
    const race_case *rc = (const race_case *)*state;
    /* Shared objects for the rounds that free something else. */
    fluxus_runtime *rts[2];
    uint32_t round, n = rounds();
    uint64_t seed = 0x5EED ^ (uint64_t)(uintptr_t)rc;
    rts[0] = tu_runtime(1);
    rts[1] = tu_runtime(0);
    for (round = 0; round < n; round++) {
        ctx c;
        race r;
        pthread_t th;
        int32_t main_rc;
        fluxus_pipeline *running = NULL;
        uint32_t spin = (uint32_t)(tu_splitmix64(&seed) % 4000);
        uint64_t deadline;
        memset(&c, 0, sizeof c);
        memset(&r, 0, sizeof r);
        if (rc->kind == K_RUNTIME) {
            c.rt = make_runtime(round, &running);
        } else if (rc->kind == K_OWNER) {
            c.rt = tu_runtime(round % 2 == 0 ? 1 : 0);
            c.p = make_pipeline(c.rt, rc->setup);
        } else {
            c.rt = rts[round % 2];
            c.p = make_pipeline(c.rt, rc->setup);
            c.t = make_pipeline(c.rt, P_EMPTY);
            TU_OK(fluxus_pipeline_set_push_source(c.t, "in"));
        }
        c.reg = make_registry();
        TU_OK(fluxus_rate_limiter_new(&c.rl, NULL, 0.001, 1));
        TU_OK(fluxus_concurrency_limiter_new(&c.cl, 1));
        c.cb = make_breaker();
        r.rc = rc;
        r.c = &c;
        r.free_fn = is_free_fn(rc->fn);
        assert_int_equal(pthread_create(&th, NULL, racer_main, &r), 0);
        while (!TU_LOAD(&r.started)) {
        }
        tu_spin(spin); /* free at a different point of the racer's calls each round */
        main_rc = free_target(&c, rc->kind);
        TU_STORE(&r.freed, 1);
        deadline = tu_now_ms() + TU_WAIT_MS;
        while (!TU_LOAD(&r.done)) {
            if (tu_now_ms() > deadline) {
                fail_msg("%s: the racing call did not return %u ms after the free (round %u)",
                         rc->fn, TU_WAIT_MS, round);
            }
            tu_sleep_us(100);
        }
        pthread_join(th, NULL);
        if (r.bad_rc != 0) {
            fail_msg("%s racing a free returned %d (%s), which it may not (round %u)", rc->fn,
                     (int)r.bad_rc, fluxus_err_name(r.bad_rc), round);
        }
        if (r.free_fn) {
            /* Free against free: exactly one of them freed it. */
            assert_true(main_rc == FLUXUS_OK || main_rc == FLUXUS_EINVAL);
            assert_int_equal(r.oks_of_free + (main_rc == FLUXUS_OK ? 1u : 0u), 1);
        } else {
            TU_EXPECT(FLUXUS_OK, main_rc);
        }
        if (rc->kind == K_OWNER) {
            /* The pipeline outlives its runtime: after the free it is cancelled (or cannot
             * start), so the call fails with one of its allowed codes; only a drain may find
             * it drained before the free (FLUXUS_OK, see fluxus_pipeline_drain()). */
            uint32_t after_allowed = rc->allowed;
            if (strcmp(rc->fn, "fluxus_pipeline_drain") != 0) {
                after_allowed &= ~OK;
            }
            if (r.after_rc > 0 || r.after_rc < -31 || !(after_allowed & BIT(r.after_rc))) {
                fail_msg("%s after its runtime was freed returned %d (%s) (round %u)", rc->fn,
                         (int)r.after_rc, fluxus_err_name(r.after_rc), round);
            }
        } else if (r.after_rc != FLUXUS_EINVAL) {
            fail_msg("%s after the free returned %d (%s), not FLUXUS_EINVAL (round %u)", rc->fn,
                     (int)r.after_rc, fluxus_err_name(r.after_rc), round);
        }
        /* Free the rest (what was freed is freed again: EINVAL, never a crash). */
        if (rc->kind == K_OWNER) {
            TU_OK(fluxus_pipeline_free(c.p)); /* a pipeline freed after its runtime */
        } else if (rc->kind != K_RUNTIME) {
            int32_t prc = fluxus_pipeline_free(c.p);
            assert_true(prc == FLUXUS_OK || rc->kind == K_PIPELINE);
            prc = fluxus_pipeline_free(c.t);
            assert_true(prc == FLUXUS_OK || rc->kind == K_TARGET);
        } else if (running != NULL) {
            TU_OK(fluxus_pipeline_free(running)); /* a pipeline freed after its runtime */
        }
        if (rc->kind != K_REGISTRY) TU_OK(fluxus_registry_free(c.reg));
        if (rc->kind != K_RATE) TU_OK(fluxus_rate_limiter_free(c.rl));
        if (rc->kind != K_CONC) TU_OK(fluxus_concurrency_limiter_free(c.cl));
        if (rc->kind != K_BREAKER) TU_OK(fluxus_circuit_breaker_free(c.cb));
    }
    TU_OK(fluxus_runtime_free(rts[0]));
    TU_OK(fluxus_runtime_free(rts[1]));
    assert_int_equal(TU_LOAD(&g_bad_free_in_callback), 0);
}

/* ----- two frees from callbacks, each inside a call on the other's handle ----- */

/* Thread A's breaker X changes state inside A's call on X, and its callback frees Y, while B's
 * breaker Y does the same with X. Each free must be refused at once (FLUXUS_EINCALLBACK): if
 * either waited for the calls on its handle to end, the two would wait for each other. */
typedef struct cross {
    fluxus_circuit_breaker *self, *other;
    int32_t rc;
    uint32_t ready;
    uint32_t *go;
} cross;

static void cross_state(void *user, int32_t from, int32_t to) {
    cross *x = (cross *)user;
    (void)from;
    if (to == FLUXUS_BREAKER_OPEN) {
        x->rc = fluxus_circuit_breaker_free(x->other);
    }
}

static void *cross_main(void *arg) {
    cross *x = (cross *)arg;
    uint64_t ticket = 0;
    TU_STORE(&x->ready, 1);
    while (!TU_LOAD(x->go)) {
    }
    if (fluxus_circuit_breaker_allow(&ticket, x->self) == FLUXUS_OK) {
        fluxus_circuit_breaker_record(x->self, ticket, 0);
    }
    return NULL;
}

static void test_frees_from_callbacks_on_each_others_handles_are_refused(void **state) {
    uint32_t round;
    (void)state;
    for (round = 0; round < 50; round++) {
        cross a, b;
        pthread_t ta, tb;
        uint32_t go = 0;
        fluxus_circuit_breaker *x = NULL, *y = NULL;
        TU_OK(fluxus_circuit_breaker_new(&x, NULL));
        TU_OK(fluxus_circuit_breaker_new(&y, NULL));
        TU_OK(fluxus_circuit_breaker_set_consecutive_failures(x, 1));
        TU_OK(fluxus_circuit_breaker_set_consecutive_failures(y, 1));
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        a.self = x, a.other = y, a.go = &go, a.rc = 1;
        b.self = y, b.other = x, b.go = &go, b.rc = 1;
        TU_OK(fluxus_circuit_breaker_set_state_callback(x, cross_state, &a, NULL));
        TU_OK(fluxus_circuit_breaker_set_state_callback(y, cross_state, &b, NULL));
        assert_int_equal(pthread_create(&ta, NULL, cross_main, &a), 0);
        assert_int_equal(pthread_create(&tb, NULL, cross_main, &b), 0);
        while (!TU_LOAD(&a.ready) || !TU_LOAD(&b.ready)) {
        }
        TU_STORE(&go, 1);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        assert_int_equal(a.rc, FLUXUS_EINCALLBACK);
        assert_int_equal(b.rc, FLUXUS_EINCALLBACK);
        TU_OK(fluxus_circuit_breaker_free(x));
        TU_OK(fluxus_circuit_breaker_free(y));
    }
}

/* ----- every function of the header that takes a handle has a race case ----- */

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
        text[0] = '\n';
        text[1 + fread(text + 1, 1, (size_t)size, f)] = '\0';
    }
    fclose(f);
    return text;
}

static int is_ident(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

static const struct {
    const char *type; /* "fluxus_pipeline *" (a handle, not an out-pointer to one) */
    enum kind kind;
} k_handle_types[] = {
    {"fluxus_runtime *", K_RUNTIME},
    {"fluxus_pipeline *", K_PIPELINE},
    {"fluxus_registry *", K_REGISTRY},
    {"fluxus_rate_limiter *", K_RATE},
    {"fluxus_concurrency_limiter *", K_CONC},
    {"fluxus_circuit_breaker *", K_BREAKER},
};
#define N_HANDLE_TYPES (sizeof k_handle_types / sizeof k_handle_types[0])

static int has_case(const char *fn, enum kind kind) {
    size_t i;
    for (i = 0; i < N_CASES; i++) {
        if (strcmp(k_cases[i].fn, fn) == 0 &&
            (k_cases[i].kind == kind || (kind == K_PIPELINE && k_cases[i].kind == K_TARGET))) {
            return 1;
        }
    }
    return 0;
}

/* Every declaration "FLUXUS_API ... fluxus_name(...);" whose parameters take a handle must have
 * a case for each kind of handle it takes, and every case must name such a declaration. */
static void test_every_function_taking_a_handle_has_a_race_case(void **state) {
    char *text = read_text(HANDLE_RACE_HEADER);
    char *at;
    size_t matched = 0, i;
    char missing[4096] = "";
    (void)state;
    if (text == NULL) {
        fail_msg("cannot read %s", HANDLE_RACE_HEADER);
    }
    for (at = text; (at = strstr(at, "\nFLUXUS_API ")) != NULL; at++) {
        char *end = strchr(at, ';');
        char *paren = strchr(at, '(');
        char *name_end, *name;
        char saved, saved_end;
        if (paren != NULL && paren - at >= 17 &&
            strncmp(paren - 17, "FLUXUS_DEPRECATED", 17) == 0) {
            /* FLUXUS_API FLUXUS_DEPRECATED("...") int32_t fluxus_x(...): skip the message. */
            char *close = strstr(paren, "\")");
            paren = close != NULL ? strchr(close + 2, '(') : NULL;
            end = paren != NULL ? strchr(paren, ';') : NULL;
        }
        if (end == NULL || paren == NULL || paren > end) {
            continue;
        }
        name_end = paren;
        while (name_end > at && name_end[-1] == ' ') name_end--;
        name = name_end;
        while (name > at && is_ident(name[-1])) name--;
        saved = *name_end;
        saved_end = *end;
        *name_end = '\0';
        *end = '\0';
        for (i = 0; i < N_HANDLE_TYPES; i++) {
            const char *t = strstr(paren + 1, k_handle_types[i].type);
            int takes = 0;
            while (t != NULL) {
                if (t[strlen(k_handle_types[i].type)] != '*') {
                    takes = 1;
                    break;
                }
                t = strstr(t + 1, k_handle_types[i].type);
            }
            if (!takes) {
                continue;
            }
            if (has_case(name, k_handle_types[i].kind)) {
                matched++;
            } else if (strlen(missing) + strlen(name) + 40 < sizeof missing) {
                strcat(missing, " ");
                strcat(missing, name);
                strcat(missing, "(");
                strcat(missing, k_handle_types[i].type);
                strcat(missing, ")");
            }
        }
        *name_end = saved;
        *end = saved_end;
    }
    free(text);
    if (missing[0] != '\0') {
        fail_msg("functions taking a handle without a race case against its free:%s", missing);
    }
    /* No stale case: every case (but those freeing an error route target or a pipeline's
     * runtime, which add to a case of the same function) matched the header. */
    {
        size_t targets = 0;
        for (i = 0; i < N_CASES; i++) {
            targets += k_cases[i].kind == K_TARGET || k_cases[i].kind == K_OWNER;
        }
        assert_int_equal(matched, N_CASES - targets);
    }
}

int main(void) {
    struct CMUnitTest tests[N_CASES + 2];
    char names[N_CASES][96];
    size_t i;
    memset(tests, 0, sizeof tests);
    tests[0].name = "every_function_taking_a_handle_has_a_race_case";
    tests[0].test_func = test_every_function_taking_a_handle_has_a_race_case;
    tests[1].name = "frees_from_callbacks_on_each_others_handles_are_refused";
    tests[1].test_func = test_frees_from_callbacks_on_each_others_handles_are_refused;
    for (i = 0; i < N_CASES; i++) {
        static const char *const kinds[] = {"runtime",  "pipeline",     "route target",
                                            "registry", "rate limiter", "concurrency limiter",
                                            "circuit breaker", "pipeline's runtime"};
        snprintf(names[i], sizeof names[i], "%s racing the free of its %s", k_cases[i].fn,
                 kinds[k_cases[i].kind]);
        tests[i + 2].name = names[i];
        tests[i + 2].test_func = run_case;
        tests[i + 2].initial_state = (void *)&k_cases[i];
    }
    tu_apply_filters();
    return _cmocka_run_group_tests("handle_race", tests, N_CASES + 2, NULL, NULL);
}
