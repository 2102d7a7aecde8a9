// C API: rate limiter and concurrency limiter handles.
// A handle holds one reference to its limiter, and stages that use it hold their own. Every call
// pins the handle (handle_registry.hpp), so fluxus_*_limiter_free() on another thread can never
// release the handle's reference under a call: it unregisters the handle, wakes the threads
// blocked in acquire (they return FLUXUS_ECANCELED), waits for the calls to end, then releases.
// No limiter call runs a host callback, so a free may still run from inside one.
#include <cmath>

#include "api/api_util.hpp"
#include "flow/concurrency_limiter.hpp"
#include "flow/rate_limiter.hpp"

using namespace fluxus;

namespace {

int32_t bad_handle(const char *fname, const char *kind) {
    return set_errorf(FLUXUS_EINVAL, "%s: not a live %s handle (NULL or already freed)", fname,
                      kind);
}

}  // namespace

#define FLUXUS_GET_RATE_LIMITER(var, handle, fname)                                            \
    HandleRef var##_pin(HandleKind::rate_limiter, reinterpret_cast<uintptr_t>(handle));        \
    RateLimiter *var = static_cast<RateLimiter *>(var##_pin.get());                            \
    if (!var) return bad_handle(fname, "rate limiter");

#define FLUXUS_GET_CONCURRENCY_LIMITER(var, handle, fname)                                     \
    HandleRef var##_pin(HandleKind::concurrency_limiter, reinterpret_cast<uintptr_t>(handle)); \
    ConcurrencyLimiter *var = static_cast<ConcurrencyLimiter *>(var##_pin.get());              \
    if (!var) return bad_handle(fname, "concurrency limiter");

namespace {

int32_t check_rate(const char *fname, double rate_per_s) {
    if (RateLimiter::valid_rate(rate_per_s)) return FLUXUS_OK;
    return set_errorf(FLUXUS_ERANGE, "%s: rate %g per second is not a number in 0..1e9", fname,
                      rate_per_s);
}

int32_t check_burst(const char *fname, uint32_t burst) {
    if (RateLimiter::valid_burst(burst)) return FLUXUS_OK;
    return set_errorf(FLUXUS_ERANGE, "%s: burst %u is not in 1..%u", fname, burst, 1u << 30);
}

int32_t check_max(const char *fname, uint32_t max_permits) {
    if (ConcurrencyLimiter::valid_max(max_permits)) return FLUXUS_OK;
    return set_errorf(FLUXUS_ERANGE, "%s: max_permits %u is not in 1..%u", fname, max_permits,
                      1u << 30);
}

}  // namespace

extern "C" {

/* ----- rate limiter ----- */

FLUXUS_API int32_t fluxus_rate_limiter_new(fluxus_rate_limiter **out, fluxus_runtime *rth,
                                           double rate_per_s, uint32_t burst) {
    FLUXUS_API_GUARD({
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_rate_limiter_new: out is NULL");
        *out = nullptr;
        HandleRef rt_pin(HandleKind::runtime, reinterpret_cast<uintptr_t>(rth));
        Runtime *rt = static_cast<Runtime *>(rt_pin.get());
        if (rth) {
            if (!rt)
                return set_error(FLUXUS_EINVAL,
                                 "fluxus_rate_limiter_new: rt is not a live runtime handle "
                                 "(already freed?); pass NULL for the real clock");
        }
        if (int32_t rc = check_rate("fluxus_rate_limiter_new", rate_per_s)) return rc;
        if (int32_t rc = check_burst("fluxus_rate_limiter_new", burst)) return rc;
        RateLimiter *l = new (std::nothrow) RateLimiter(rt, rate_per_s, burst);
        if (!l) return set_error(FLUXUS_ENOMEM, "fluxus_rate_limiter_new: out of memory");
        uintptr_t h = handle_register(HandleKind::rate_limiter, l);
        if (!h) {
            l->release();
            return set_error(FLUXUS_ENOMEM, "fluxus_rate_limiter_new: no handle slot left");
        }
        *out = reinterpret_cast<fluxus_rate_limiter *>(h);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_rate_limiter_set_rate(fluxus_rate_limiter *h, double rate_per_s) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RATE_LIMITER(l, h, "fluxus_rate_limiter_set_rate");
        if (int32_t rc = check_rate("fluxus_rate_limiter_set_rate", rate_per_s)) return rc;
        return l->set_rate(rate_per_s);
    });
}

FLUXUS_API int32_t fluxus_rate_limiter_set_burst(fluxus_rate_limiter *h, uint32_t burst) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RATE_LIMITER(l, h, "fluxus_rate_limiter_set_burst");
        if (int32_t rc = check_burst("fluxus_rate_limiter_set_burst", burst)) return rc;
        return l->set_burst(burst);
    });
}

FLUXUS_API int32_t fluxus_rate_limiter_set_mode(fluxus_rate_limiter *h, int32_t mode) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RATE_LIMITER(l, h, "fluxus_rate_limiter_set_mode");
        if (mode != FLUXUS_RATE_TOKEN_BUCKET && mode != FLUXUS_RATE_SMOOTH)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_rate_limiter_set_mode: mode %d is not "
                              "FLUXUS_RATE_TOKEN_BUCKET (0) or FLUXUS_RATE_SMOOTH (1)",
                              mode);
        return l->set_mode(mode);
    });
}

FLUXUS_API int32_t fluxus_rate_limiter_try_acquire(fluxus_rate_limiter *h, uint32_t n) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RATE_LIMITER(l, h, "fluxus_rate_limiter_try_acquire");
        if (n == 0) return FLUXUS_OK;
        if (l->try_take_all(n, l->now())) return FLUXUS_OK;
        uint64_t cap = l->capacity();  // only on failure: one lock on the fast path
        if (n > cap)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_rate_limiter_try_acquire: %u tokens exceed the capacity "
                              "of %llu (burst, or 1 in smooth mode, plus 1 ms worth of tokens)",
                              n, (unsigned long long)cap);
        return set_errorf(FLUXUS_ELIMITED,
                          "fluxus_rate_limiter_try_acquire: %u tokens are not available now", n);
    });
}

FLUXUS_API int32_t fluxus_rate_limiter_acquire(fluxus_rate_limiter *h, uint32_t n,
                                               uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RATE_LIMITER(l, h, "fluxus_rate_limiter_acquire");
        if (timeout_ms != 0 && in_callback())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_rate_limiter_acquire: may not wait inside a fluxus "
                             "callback; use timeout 0 or fluxus_rate_limiter_try_acquire()");
        return l->acquire(n, timeout_ms);
    });
}

FLUXUS_API int32_t fluxus_rate_limiter_free(fluxus_rate_limiter *h) {
    FLUXUS_API_GUARD({
        if (!h) return FLUXUS_OK;
        RateLimiter *l = static_cast<RateLimiter *>(
            handle_unregister(HandleKind::rate_limiter, reinterpret_cast<uintptr_t>(h)));
        if (!l)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_rate_limiter_free: not a live rate limiter handle (already "
                             "freed?)");
        l->close_host_waiters();
        handle_retire(reinterpret_cast<uintptr_t>(h));
        l->release();
        return FLUXUS_OK;
    });
}

/* ----- concurrency limiter ----- */

FLUXUS_API int32_t fluxus_concurrency_limiter_new(fluxus_concurrency_limiter **out,
                                                  uint32_t max_permits) {
    FLUXUS_API_GUARD({
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_concurrency_limiter_new: out is NULL");
        *out = nullptr;
        if (int32_t rc = check_max("fluxus_concurrency_limiter_new", max_permits)) return rc;
        ConcurrencyLimiter *l = new (std::nothrow) ConcurrencyLimiter(max_permits);
        if (!l) return set_error(FLUXUS_ENOMEM, "fluxus_concurrency_limiter_new: out of memory");
        uintptr_t h = handle_register(HandleKind::concurrency_limiter, l);
        if (!h) {
            l->release();
            return set_error(FLUXUS_ENOMEM, "fluxus_concurrency_limiter_new: no handle slot left");
        }
        *out = reinterpret_cast<fluxus_concurrency_limiter *>(h);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_concurrency_limiter_set_max(fluxus_concurrency_limiter *h,
                                                      uint32_t max_permits) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_CONCURRENCY_LIMITER(l, h, "fluxus_concurrency_limiter_set_max");
        if (int32_t rc = check_max("fluxus_concurrency_limiter_set_max", max_permits)) return rc;
        return l->set_max(max_permits);
    });
}

FLUXUS_API int32_t fluxus_concurrency_limiter_try_acquire(fluxus_concurrency_limiter *h,
                                                          uint32_t n) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_CONCURRENCY_LIMITER(l, h, "fluxus_concurrency_limiter_try_acquire");
        if (n == 0) return FLUXUS_OK;
        if (l->try_take_all(n)) return FLUXUS_OK;
        uint32_t max = l->max();
        if (n > max)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_concurrency_limiter_try_acquire: %u permits exceed the "
                              "maximum of %u",
                              n, max);
        return set_errorf(FLUXUS_ELIMITED,
                          "fluxus_concurrency_limiter_try_acquire: %u permits are not free now "
                          "(%u of %u in use)",
                          n, l->in_use(), max);
    });
}

FLUXUS_API int32_t fluxus_concurrency_limiter_acquire(fluxus_concurrency_limiter *h, uint32_t n,
                                                      uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_CONCURRENCY_LIMITER(l, h, "fluxus_concurrency_limiter_acquire");
        if (timeout_ms != 0 && in_callback())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_concurrency_limiter_acquire: may not wait inside a fluxus "
                             "callback; use timeout 0 or "
                             "fluxus_concurrency_limiter_try_acquire()");
        return l->acquire(n, timeout_ms);
    });
}

FLUXUS_API int32_t fluxus_concurrency_limiter_release(fluxus_concurrency_limiter *h, uint32_t n) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_CONCURRENCY_LIMITER(l, h, "fluxus_concurrency_limiter_release");
        if (l->give_checked(n)) return FLUXUS_OK;
        return set_errorf(FLUXUS_ERANGE,
                          "fluxus_concurrency_limiter_release: %u permits is more than the %u in "
                          "use; nothing was released",
                          n, l->in_use());
    });
}

FLUXUS_API int32_t fluxus_concurrency_limiter_get_in_use(uint32_t *out,
                                                     fluxus_concurrency_limiter *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_CONCURRENCY_LIMITER(l, h, "fluxus_concurrency_limiter_get_in_use");
        if (!out)
            return set_error(FLUXUS_EINVAL, "fluxus_concurrency_limiter_get_in_use: out is NULL");
        *out = l->in_use();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_concurrency_limiter_free(fluxus_concurrency_limiter *h) {
    FLUXUS_API_GUARD({
        if (!h) return FLUXUS_OK;
        ConcurrencyLimiter *l = static_cast<ConcurrencyLimiter *>(handle_unregister(
            HandleKind::concurrency_limiter, reinterpret_cast<uintptr_t>(h)));
        if (!l)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_concurrency_limiter_free: not a live concurrency limiter "
                             "handle (already freed?)");
        l->close_host_waiters();
        handle_retire(reinterpret_cast<uintptr_t>(h));
        l->release();
        return FLUXUS_OK;
    });
}

}  // extern "C"
