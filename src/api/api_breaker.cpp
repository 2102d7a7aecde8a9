// C API: circuit breakers, standalone and on stages.
#include "api/api_util.hpp"
#include "flow/circuit_breaker.hpp"

using namespace fluxus;

#define FLUXUS_GET_BREAKER(var, handle, fname)                                              \
    fluxus::HandleRef var##_pin(fluxus::HandleKind::circuit_breaker,                        \
                                reinterpret_cast<uintptr_t>(handle));                       \
    fluxus::CircuitBreaker *var = static_cast<fluxus::CircuitBreaker *>(var##_pin.get());   \
    if (!var)                                                                               \
        return fluxus::set_error(FLUXUS_EINVAL, std::string(fname) +                        \
                                                    ": not a live circuit breaker handle " \
                                                    "(NULL or already freed)");

extern "C" {

FLUXUS_API int32_t fluxus_circuit_breaker_new(fluxus_circuit_breaker **out, fluxus_runtime *rth) {
    FLUXUS_API_GUARD({
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_circuit_breaker_new: out is NULL");
        *out = nullptr;
        HandleRef rt_pin(HandleKind::runtime, reinterpret_cast<uintptr_t>(rth));
        Runtime *rt = static_cast<Runtime *>(rt_pin.get());
        if (rth && !rt)
            return set_error(FLUXUS_EINVAL, "fluxus_circuit_breaker_new: not a live runtime");
        CircuitBreaker *cb = new (std::nothrow) CircuitBreaker(rt);
        if (!cb) return set_error(FLUXUS_ENOMEM, "fluxus_circuit_breaker_new: out of memory");
        uintptr_t h = handle_register(HandleKind::circuit_breaker, cb);
        if (!h) {
            cb->release();
            return set_error(FLUXUS_ENOMEM, "fluxus_circuit_breaker_new: no handle slot left");
        }
        *out = reinterpret_cast<fluxus_circuit_breaker *>(h);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_set_consecutive_failures(fluxus_circuit_breaker *h,
                                                                   uint32_t n) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_set_consecutive_failures");
        cb->set_consecutive(n);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_set_failure_ratio(fluxus_circuit_breaker *h,
                                                            double ratio, uint32_t window,
                                                            uint32_t min_calls) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_set_failure_ratio");
        if (!(ratio >= 0 && ratio <= 1))
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_circuit_breaker_set_failure_ratio: ratio %g not in 0..1",
                              ratio);
        if (ratio > 0 && (window == 0 || window > 65536 || min_calls > window))
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_circuit_breaker_set_failure_ratio: window %u must be in "
                              "1..65536 and min_calls %u at most the window",
                              window, min_calls);
        cb->set_ratio(ratio, ratio > 0 ? window : 0, min_calls);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_set_reset_timeout_us(fluxus_circuit_breaker *h,
                                                               uint64_t timeout_us) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_set_reset_timeout_us");
        if (timeout_us > 86400ull * 1000000ull)
            return set_error(FLUXUS_ERANGE,
                             "fluxus_circuit_breaker_set_reset_timeout_us: above one day");
        cb->set_reset_ns(timeout_us * 1000u);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_set_half_open(fluxus_circuit_breaker *h,
                                                        uint32_t max_trial_calls,
                                                        uint32_t success_threshold) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_set_half_open");
        if (max_trial_calls < 1 || success_threshold < 1)
            return set_error(FLUXUS_ERANGE,
                             "fluxus_circuit_breaker_set_half_open: both must be at least 1");
        cb->set_half_open(max_trial_calls, success_threshold);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_set_state_callback(fluxus_circuit_breaker *h,
                                                             fluxus_breaker_state_fn fn,
                                                             void *user,
                                                             fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_set_state_callback");
        cb->set_callback(fn, user, user_free);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_get_state(int32_t *state, fluxus_circuit_breaker *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_get_state");
        if (!state) return set_error(FLUXUS_EINVAL, "fluxus_circuit_breaker_get_state: NULL");
        *state = cb->state(cb->now());
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_allow(uint64_t *ticket, fluxus_circuit_breaker *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_allow");
        if (!ticket) return set_error(FLUXUS_EINVAL, "fluxus_circuit_breaker_allow: ticket NULL");
        uint64_t retry_at = 0;
        if (!cb->allow(cb->now(), ticket, &retry_at))
            return set_error(FLUXUS_ECIRCUITOPEN, "fluxus_circuit_breaker_allow: the breaker is "
                                                  "open (or half-open with no trial slot)");
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_record(fluxus_circuit_breaker *h, uint64_t ticket,
                                                 int32_t success) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_BREAKER(cb, h, "fluxus_circuit_breaker_record");
        if (success != 0 && success != 1)
            return set_error(FLUXUS_ERANGE, "fluxus_circuit_breaker_record: success not 0/1");
        cb->record(ticket, success == 1, cb->now());
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_circuit_breaker_free(fluxus_circuit_breaker *h) {
    FLUXUS_API_GUARD({
        if (!h) return FLUXUS_OK;
        if (!handle_lookup(HandleKind::circuit_breaker, reinterpret_cast<uintptr_t>(h)))
            return set_error(FLUXUS_EINVAL,
                             "fluxus_circuit_breaker_free: not a live circuit breaker handle");
        // A state callback runs inside a breaker call (or a stage's task): the free would wait
        // for the call that runs it.
        if (free_would_deadlock())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_circuit_breaker_free: not allowed from inside a fluxus "
                             "callback or call");
        CircuitBreaker *cb = static_cast<CircuitBreaker *>(
            handle_unregister(HandleKind::circuit_breaker, reinterpret_cast<uintptr_t>(h)));
        if (!cb)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_circuit_breaker_free: not a live circuit breaker handle");
        handle_retire(reinterpret_cast<uintptr_t>(h));
        cb->release();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_circuit_breaker(fluxus_pipeline *ph, uint32_t stage,
                                                    fluxus_circuit_breaker *h,
                                                    int32_t when_open) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, ph, "fluxus_stage_set_circuit_breaker");
        HandleRef cb_pin(HandleKind::circuit_breaker, reinterpret_cast<uintptr_t>(h));
        CircuitBreaker *cb = static_cast<CircuitBreaker *>(cb_pin.get());
        if (h && !cb)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_stage_set_circuit_breaker: not a live circuit breaker");
        if (when_open != FLUXUS_BREAKER_FAIL && when_open != FLUXUS_BREAKER_WAIT)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_circuit_breaker: when_open %d is not "
                              "FLUXUS_BREAKER_FAIL or FLUXUS_BREAKER_WAIT",
                              when_open);
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_circuit_breaker", &st))
            return rc;
        if (cb) cb->retain();
        if (st->breaker) st->breaker->release();
        st->breaker = cb;
        st->breaker_wait = when_open == FLUXUS_BREAKER_WAIT;
        return FLUXUS_OK;
    });
}

}  // extern "C"

extern "C" {

FLUXUS_API int32_t fluxus_stage_set_pause_source_on_errors(fluxus_pipeline *ph, uint32_t stage,
                                                           uint32_t failures, uint64_t window_us,
                                                           uint64_t pause_us) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, ph, "fluxus_stage_set_pause_source_on_errors");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_pause_source_on_errors",
                                             &st))
            return rc;
        const uint64_t day_us = 86400ull * 1000000ull;
        if (failures && (window_us == 0 || window_us > day_us || pause_us == 0 || pause_us > day_us))
            return set_error(FLUXUS_ERANGE, "fluxus_stage_set_pause_source_on_errors: window and "
                                            "pause must be in 1 us .. one day");
        st->pause_threshold = failures;
        st->pause_window_ns = window_us * 1000u;
        st->pause_ns = pause_us * 1000u;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_source_breaker(fluxus_pipeline *ph,
                                                      fluxus_circuit_breaker *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, ph, "fluxus_pipeline_set_source_breaker");
        HandleRef cb_pin(HandleKind::circuit_breaker, reinterpret_cast<uintptr_t>(h));
        CircuitBreaker *cb = static_cast<CircuitBreaker *>(cb_pin.get());
        if (h && !cb)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_set_source_breaker: not a live circuit breaker");
        return p->set_source_breaker(cb);
    });
}

}  // extern "C"
