// C API: adding stages and setting their options.
#include "api/api_util.hpp"

using namespace fluxus;

namespace {

template <class F>
int32_t add(uint32_t *out, fluxus_pipeline *h, const char *fname, StageKind kind,
            const char *name, F fn, void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, fname);
        return p->add_stage(out, kind, name, reinterpret_cast<void (*)()>(fn), user, user_free);
    });
}

}  // namespace

extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_map(uint32_t *out, fluxus_pipeline *p, const char *name,
                                           fluxus_map_fn fn, void *user,
                                           fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_map", StageKind::map, name, fn, user, user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_map_batch(uint32_t *out, fluxus_pipeline *p,
                                                 const char *name, fluxus_map_batch_fn fn,
                                                 void *user, fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_map_batch", StageKind::map_batch, name, fn, user,
               user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_filter(uint32_t *out, fluxus_pipeline *p, const char *name,
                                              fluxus_filter_fn fn, void *user,
                                              fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_filter", StageKind::filter, name, fn, user,
               user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_filter_batch(uint32_t *out, fluxus_pipeline *p,
                                                    const char *name, fluxus_filter_batch_fn fn,
                                                    void *user, fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_filter_batch", StageKind::filter_batch, name, fn,
               user, user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_flat_map(uint32_t *out, fluxus_pipeline *p,
                                                const char *name, fluxus_flat_map_fn fn,
                                                void *user, fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_flat_map", StageKind::flat_map, name, fn, user,
               user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_flat_map_batch(uint32_t *out, fluxus_pipeline *p,
                                                      const char *name,
                                                      fluxus_flat_map_batch_fn fn, void *user,
                                                      fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_flat_map_batch", StageKind::flat_map_batch, name,
               fn, user, user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_sink(uint32_t *out, fluxus_pipeline *p, const char *name,
                                            fluxus_sink_fn fn, void *user,
                                            fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_sink", StageKind::sink, name, fn, user, user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_sink_batch(uint32_t *out, fluxus_pipeline *p,
                                                  const char *name, fluxus_sink_batch_fn fn,
                                                  void *user, fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_sink_batch", StageKind::sink_batch, name, fn, user,
               user_free);
}

FLUXUS_API int32_t fluxus_pipeline_add_dedup(uint32_t *out, fluxus_pipeline *p,
                                             const char *name) {
    return add(out, p, "fluxus_pipeline_add_dedup", StageKind::dedup, name,
               static_cast<void (*)()>(nullptr), nullptr, nullptr);
}

FLUXUS_API int32_t fluxus_stage_set_workers(fluxus_pipeline *p, uint32_t stage, uint32_t n) {
    return with_stage(p, stage, "fluxus_stage_set_workers", [&](Stage &st) {
        if (n < 1 || n > 256)
            return set_errorf(FLUXUS_ERANGE, "fluxus_stage_set_workers: stage '%s': %u is not "
                                             "in 1..256",
                              st.name.c_str(), n);
        st.workers = n;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_order(fluxus_pipeline *p, uint32_t stage, int32_t mode) {
    return with_stage(p, stage, "fluxus_stage_set_order", [&](Stage &st) {
        if (mode < FLUXUS_ORDER_ORDERED || mode > FLUXUS_ORDER_PER_KEY)
            return set_errorf(FLUXUS_ERANGE, "fluxus_stage_set_order: stage '%s': unknown mode %d",
                              st.name.c_str(), mode);
        st.order = mode;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_reorder_window(fluxus_pipeline *p, uint32_t stage,
                                                   uint32_t batches) {
    return with_stage(p, stage, "fluxus_stage_set_reorder_window", [&](Stage &st) {
        if (batches < 1 || batches > 4096)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_reorder_window: stage '%s': %u is not in 1..4096",
                              st.name.c_str(), batches);
        st.reorder_window = batches;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_queue_capacity(fluxus_pipeline *p, uint32_t stage,
                                                   uint32_t items) {
    return with_stage(p, stage, "fluxus_stage_set_queue_capacity", [&](Stage &st) {
        if (items < 1 || items > (1u << 24))
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_queue_capacity: stage '%s': %u is not in "
                              "1..16777216",
                              st.name.c_str(), items);
        st.capacity = items;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_overflow(fluxus_pipeline *p, uint32_t stage, int32_t policy,
                                             uint32_t timeout_ms) {
    return with_stage(p, stage, "fluxus_stage_set_overflow", [&](Stage &st) {
        if (policy < FLUXUS_OVERFLOW_BLOCK || policy > FLUXUS_OVERFLOW_FAIL)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_overflow: stage '%s': unknown policy %d",
                              st.name.c_str(), policy);
        if (policy == FLUXUS_OVERFLOW_BLOCK_TIMEOUT && (timeout_ms == 0 || timeout_ms > 86400000))
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_overflow: stage '%s': timeout %u ms is not in "
                              "1..86400000",
                              st.name.c_str(), timeout_ms);
        st.overflow = policy;
        st.overflow_timeout_us = uint64_t(timeout_ms) * 1000u;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_error_policy(fluxus_pipeline *p, uint32_t stage,
                                                 int32_t policy) {
    return with_stage(p, stage, "fluxus_stage_set_error_policy", [&](Stage &st) {
        if (policy < FLUXUS_ERROR_FAIL_FAST || policy > FLUXUS_ERROR_DEAD_LETTER)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_error_policy: stage '%s': unknown policy %d",
                              st.name.c_str(), policy);
        st.error_policy = policy;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_worker_hooks(fluxus_pipeline *p, uint32_t stage,
                                                 fluxus_worker_init_fn init,
                                                 fluxus_worker_close_fn close) {
    return with_stage(p, stage, "fluxus_stage_set_worker_hooks", [&](Stage &st) {
        st.init = init;
        st.close = close;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_key_fn(fluxus_pipeline *p, uint32_t stage, fluxus_key_fn fn,
                                           void *user, fluxus_user_free_fn user_free) {
    return with_stage(p, stage, "fluxus_stage_set_key_fn", [&](Stage &st) {
        st.key_user.release();
        st.key_fn = fn;
        st.key_user = UserRef{user, user_free};
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_dedup_max_keys(fluxus_pipeline *p, uint32_t stage,
                                                   uint64_t max_keys) {
    return with_stage(p, stage, "fluxus_stage_set_dedup_max_keys", [&](Stage &st) {
        if (st.kind != StageKind::dedup)
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_dedup_max_keys: stage '%s' is not a dedup stage",
                              st.name.c_str());
        if (max_keys == 1)
            return set_error(FLUXUS_ERANGE,
                             "fluxus_stage_set_dedup_max_keys: 1 is too small (use 0 or >= 2)");
        st.dedup_max_keys = max_keys;
        return FLUXUS_OK;
    });
}

}  // extern "C"

namespace {

int32_t add_timed(uint32_t *out, fluxus_pipeline *h, const char *fname, StageKind kind,
                  const char *name, uint64_t period_us) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, fname);
        if (period_us == 0 || period_us > 86400ull * 1000000ull)
            return set_errorf(FLUXUS_ERANGE, "%s: period %llu us is not in 1..86400000000",
                              fname, (unsigned long long)period_us);
        uint32_t index = 0;
        if (int32_t rc = p->add_stage(&index, kind, name, nullptr, nullptr, nullptr)) return rc;
        p->stage(index)->period_ns = period_us * 1000u;
        if (out) *out = index;
        return FLUXUS_OK;
    });
}

}  // namespace

extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_debounce(uint32_t *out_stage, fluxus_pipeline *p,
                                                const char *name, uint64_t quiet_us) {
    return add_timed(out_stage, p, "fluxus_pipeline_add_debounce", StageKind::debounce, name,
                     quiet_us);
}

FLUXUS_API int32_t fluxus_pipeline_add_throttle(uint32_t *out_stage, fluxus_pipeline *p,
                                                const char *name, uint64_t period_us) {
    return add_timed(out_stage, p, "fluxus_pipeline_add_throttle", StageKind::throttle, name,
                     period_us);
}

FLUXUS_API int32_t fluxus_stage_set_debounce_max_keys(fluxus_pipeline *p, uint32_t stage,
                                                      uint64_t max_keys) {
    return with_stage(p, stage, "fluxus_stage_set_debounce_max_keys", [&](Stage &st) {
        if (st.kind != StageKind::debounce)
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_debounce_max_keys: stage '%s' is not a debounce "
                              "stage",
                              st.name.c_str());
        if (max_keys == 0)
            return set_error(FLUXUS_ERANGE, "fluxus_stage_set_debounce_max_keys: 0 keys");
        st.debounce_max_keys = max_keys;
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Limiters on stages and sources.
#include "flow/concurrency_limiter.hpp"
#include "flow/rate_limiter.hpp"

extern "C" {

FLUXUS_API int32_t fluxus_stage_set_rate_limiter(fluxus_pipeline *h, uint32_t stage,
                                                 fluxus_rate_limiter *lh,
                                                 uint32_t wait_timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_rate_limiter");
        HandleRef l_pin(HandleKind::rate_limiter, reinterpret_cast<uintptr_t>(lh));
        RateLimiter *l = static_cast<RateLimiter *>(l_pin.get());
        if (lh && !l)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_stage_set_rate_limiter: not a live rate limiter handle");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_rate_limiter", &st))
            return rc;
        return p->set_stage_rate_limiter(*st, l, wait_timeout_ms);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_source_rate_limiter(fluxus_pipeline *h,
                                                           fluxus_rate_limiter *lh) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_source_rate_limiter");
        HandleRef l_pin(HandleKind::rate_limiter, reinterpret_cast<uintptr_t>(lh));
        RateLimiter *l = static_cast<RateLimiter *>(l_pin.get());
        if (lh && !l)
            return set_error(FLUXUS_EINVAL, "fluxus_pipeline_set_source_rate_limiter: not a live "
                                            "rate limiter handle");
        return p->set_source_rate_limiter(l);
    });
}

FLUXUS_API int32_t fluxus_stage_set_concurrency_limiter(fluxus_pipeline *h, uint32_t stage,
                                                        fluxus_concurrency_limiter *lh) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_concurrency_limiter");
        HandleRef l_pin(HandleKind::concurrency_limiter, reinterpret_cast<uintptr_t>(lh));
        ConcurrencyLimiter *l = static_cast<ConcurrencyLimiter *>(l_pin.get());
        if (lh && !l)
            return set_error(FLUXUS_EINVAL, "fluxus_stage_set_concurrency_limiter: not a live "
                                            "concurrency limiter handle");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_concurrency_limiter", &st))
            return rc;
        return p->set_stage_concurrency(*st, l);
    });
}

}  // extern "C"

// Retry.
extern "C" {

FLUXUS_API int32_t fluxus_stage_set_retry(fluxus_pipeline *p, uint32_t stage,
                                          uint32_t max_attempts, int32_t backoff,
                                          uint64_t base_us, uint64_t max_us) {
    return with_stage(p, stage, "fluxus_stage_set_retry", [&](Stage &st) {
        const uint64_t day_us = 86400ull * 1000000ull;
        if (max_attempts < 1 || max_attempts > 1000)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_retry: stage '%s': %u attempts is not in 1..1000",
                              st.name.c_str(), max_attempts);
        if (backoff < FLUXUS_BACKOFF_CONSTANT || backoff > FLUXUS_BACKOFF_EXPONENTIAL_JITTER)
            return set_errorf(FLUXUS_ERANGE, "fluxus_stage_set_retry: stage '%s': unknown backoff %d",
                              st.name.c_str(), backoff);
        if (base_us > day_us || max_us > day_us || max_us < base_us)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_retry: stage '%s': need base_us <= max_us <= one "
                              "day (got %llu, %llu)",
                              st.name.c_str(), (unsigned long long)base_us,
                              (unsigned long long)max_us);
        st.retry.max_attempts = max_attempts;
        st.retry.backoff = backoff;
        st.retry.base_ns = base_us * 1000u;
        st.retry.max_ns = max_us * 1000u;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_retry_predicate(fluxus_pipeline *p, uint32_t stage,
                                                    fluxus_retry_fn fn, void *user,
                                                    fluxus_user_free_fn user_free) {
    return with_stage(p, stage, "fluxus_stage_set_retry_predicate", [&](Stage &st) {
        st.retry.predicate_user.release();
        st.retry.predicate = fn;
        st.retry.predicate_user = UserRef{user, user_free};
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_retry_seed(fluxus_pipeline *p, uint32_t stage,
                                               uint64_t seed) {
    return with_stage(p, stage, "fluxus_stage_set_retry_seed", [&](Stage &st) {
        st.retry.seed = seed;
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Error routes.
extern "C" {

FLUXUS_API int32_t fluxus_stage_set_error_route(fluxus_pipeline *h, uint32_t stage,
                                                fluxus_pipeline *target) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_error_route");
        HandleRef t_pin(HandleKind::pipeline, reinterpret_cast<uintptr_t>(target));
        Pipeline *t = static_cast<Pipeline *>(t_pin.get());
        if (target) {
            if (!t)
                return set_error(FLUXUS_EINVAL,
                                 "fluxus_stage_set_error_route: target is not a live pipeline");
            if (t == p)
                return set_error(FLUXUS_EINVAL,
                                 "fluxus_stage_set_error_route: a pipeline cannot route to itself");
            if (t->source().kind != SourceKind::push)
                return set_error(FLUXUS_EINVAL,
                                 "fluxus_stage_set_error_route: the target needs a push source");
        }
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_error_route", &st))
            return rc;
        if (target && st->error_to)
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_error_route: stage '%s' already has an error "
                              "branch ('%s')",
                              st->name.c_str(), st->error_to->name.c_str());
        st->error_route = reinterpret_cast<uintptr_t>(target);
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Batching.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_batch(uint32_t *out, fluxus_pipeline *h, const char *name,
                                             uint32_t max_items, uint64_t linger_us,
                                             fluxus_flat_map_batch_fn fn, void *user,
                                             fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_batch");
        if (max_items < 1 || max_items > 65536)
            return set_errorf(FLUXUS_ERANGE, "fluxus_pipeline_add_batch: %u items is not in "
                                             "1..65536", max_items);
        if (linger_us > 86400ull * 1000000ull)
            return set_error(FLUXUS_ERANGE, "fluxus_pipeline_add_batch: linger above one day");
        uint32_t index = 0;
        if (int32_t rc = p->add_stage(&index, StageKind::batch, name,
                                      reinterpret_cast<void (*)()>(fn), user, user_free))
            return rc;
        p->stage(index)->batch_max = max_items;
        p->stage(index)->batch_linger_ns = linger_us * 1000u;
        if (out) *out = index;
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Windowed dedup.
extern "C" {

FLUXUS_API int32_t fluxus_stage_set_dedup_ttl_us(fluxus_pipeline *p, uint32_t stage,
                                                 uint64_t ttl_us) {
    return with_stage(p, stage, "fluxus_stage_set_dedup_ttl_us", [&](Stage &st) {
        if (st.kind != StageKind::dedup)
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_dedup_ttl_us: stage '%s' is not a dedup stage",
                              st.name.c_str());
        if (ttl_us > 86400ull * 1000000ull)
            return set_error(FLUXUS_ERANGE, "fluxus_stage_set_dedup_ttl_us: above one day");
        st.dedup_ttl_ns = ttl_us * 1000u;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_dedup_window(fluxus_pipeline *p, uint32_t stage,
                                                 uint64_t keys) {
    return with_stage(p, stage, "fluxus_stage_set_dedup_window", [&](Stage &st) {
        if (st.kind != StageKind::dedup)
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_dedup_window: stage '%s' is not a dedup stage",
                              st.name.c_str());
        st.dedup_window = keys;
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Reduce.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_reduce(uint32_t *out, fluxus_pipeline *p, const char *name,
                                              fluxus_reduce_fn fn, void *user,
                                              fluxus_user_free_fn user_free) {
    return add(out, p, "fluxus_pipeline_add_reduce", StageKind::reduce, name, fn, user,
               user_free);
}

}  // extern "C"

// Windows.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_window(uint32_t *out, fluxus_pipeline *h, const char *name,
                                              int32_t kind, uint64_t size, fluxus_window_fn fn,
                                              void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_window");
        if (kind < FLUXUS_WINDOW_COUNT || kind > FLUXUS_WINDOW_SESSION)
            return set_errorf(FLUXUS_ERANGE, "fluxus_pipeline_add_window: unknown kind %d", kind);
        uint64_t max = kind == FLUXUS_WINDOW_COUNT ? (1u << 20) : 86400ull * 1000000ull;
        if (size < 1 || size > max)
            return set_errorf(FLUXUS_ERANGE, "fluxus_pipeline_add_window: size %llu is not in "
                                             "1..%llu",
                              (unsigned long long)size, (unsigned long long)max);
        uint32_t index = 0;
        if (int32_t rc = p->add_stage(&index, StageKind::window, name,
                                      reinterpret_cast<void (*)()>(fn), user, user_free))
            return rc;
        p->stage(index)->window_kind = kind;
        p->stage(index)->window_size = kind == FLUXUS_WINDOW_COUNT ? size : size * 1000u;
        if (out) *out = index;
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Sliding windows.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_sliding_window(uint32_t *out, fluxus_pipeline *h,
                                                      const char *name, int32_t kind,
                                                      uint64_t size, uint64_t step,
                                                      fluxus_window_fn fn, void *user,
                                                      fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_sliding_window");
        if (kind != FLUXUS_WINDOW_COUNT && kind != FLUXUS_WINDOW_TIME)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_pipeline_add_sliding_window: kind %d is not COUNT or TIME",
                              kind);
        // A step above the size is allowed: sampling windows, with gaps between them.
        uint64_t max = kind == FLUXUS_WINDOW_COUNT ? (1u << 20) : 86400ull * 1000000ull;
        if (size < 1 || size > max || step < 1 || step > max)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_pipeline_add_sliding_window: size and step must be in "
                              "1..%llu (got size %llu, step %llu)",
                              (unsigned long long)max, (unsigned long long)size,
                              (unsigned long long)step);
        uint32_t index = 0;
        if (int32_t rc = p->add_stage(&index, StageKind::window, name,
                                      reinterpret_cast<void (*)()>(fn), user, user_free))
            return rc;
        uint64_t unit = kind == FLUXUS_WINDOW_COUNT ? 1 : 1000;
        p->stage(index)->window_kind = kind;
        p->stage(index)->window_size = size * unit;
        p->stage(index)->window_step = step * unit;
        if (out) *out = index;
        return FLUXUS_OK;
    });
}

}  // extern "C"
