// C API: runtime handles.
#include "api/api_util.hpp"
#include "util/clock.hpp"

using namespace fluxus;

extern "C" {

FLUXUS_API int32_t fluxus_runtime_new(fluxus_runtime **out) {
    FLUXUS_API_GUARD({
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_runtime_new: out is NULL");
        *out = nullptr;
        Runtime *rt = new (std::nothrow) Runtime();
        if (!rt) return set_error(FLUXUS_ENOMEM, "fluxus_runtime_new: out of memory");
        uintptr_t h = handle_register(HandleKind::runtime, rt);
        if (!h) {
            rt->release();
            return set_error(FLUXUS_ENOMEM, "fluxus_runtime_new: no handle slot left");
        }
        *out = reinterpret_cast<fluxus_runtime *>(h);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_set_workers(fluxus_runtime *h, uint32_t n) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_workers");
        return rt->set_workers(n);
    });
}

FLUXUS_API int32_t fluxus_runtime_get_workers(uint32_t *out, fluxus_runtime *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_get_workers");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_runtime_get_workers: out is NULL");
        *out = rt->workers();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_set_spin_us(fluxus_runtime *h, uint32_t spin_us) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_spin_us");
        return rt->set_spin_us(spin_us);
    });
}

FLUXUS_API int32_t fluxus_runtime_set_stall_threshold_ms(fluxus_runtime *h, uint32_t ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_stall_threshold_ms");
        return rt->set_stall_threshold_ms(ms);
    });
}

FLUXUS_API int32_t fluxus_runtime_set_log(fluxus_runtime *h, int32_t max_level, fluxus_log_fn fn,
                                          void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_log");
        return rt->set_log(max_level, fn, user, user_free);
    });
}

FLUXUS_API int32_t fluxus_runtime_set_wakeup(fluxus_runtime *h, fluxus_wakeup_fn fn, void *user,
                                             fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_wakeup");
        return rt->set_wakeup(fn, user, user_free);
    });
}

FLUXUS_API int32_t fluxus_runtime_get_fd(int32_t *out, fluxus_runtime *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_get_fd");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_runtime_get_fd: out is NULL");
        if (!rt->host_driven())
            return set_error(FLUXUS_ESTATE,
                             "fluxus_runtime_get_fd: the runtime has its own worker threads");
        int32_t status = FLUXUS_OK;
        int fd = rt->host_wake().fd(&status);
        if (status == FLUXUS_ENOTSUP)
            return set_error(FLUXUS_ENOTSUP, "fluxus_runtime_get_fd: this platform has no "
                                             "such descriptor (use fluxus_runtime_set_wakeup)");
        if (status != FLUXUS_OK)
            return set_error(status, "fluxus_runtime_get_fd: could not make a descriptor");
        *out = fd;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_get_next_timer_us(uint64_t *out, fluxus_runtime *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_get_next_timer_us");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_runtime_get_next_timer_us: out is NULL");
        if (!rt->host_driven())
            return set_error(FLUXUS_ESTATE, "fluxus_runtime_get_next_timer_us: the runtime has "
                                            "its own worker threads");
        uint64_t ns = rt->next_due_in_ns();
        *out = ns == UINT64_MAX ? UINT64_MAX : (ns + 999) / 1000;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_set_thread_hooks(fluxus_runtime *h, fluxus_thread_start_fn start,
                                                   fluxus_thread_stop_fn stop, void *user,
                                                   fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_thread_hooks");
        return rt->set_thread_hooks(start, stop, user, user_free);
    });
}

FLUXUS_API int32_t fluxus_runtime_start(fluxus_runtime *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_start");
        if (rt->started())
            return set_error(FLUXUS_ESTATE, "fluxus_runtime_start: already started");
        return rt->start();
    });
}

FLUXUS_API int32_t fluxus_runtime_run_once(uint32_t *ran, fluxus_runtime *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_run_once");
        if (ran) *ran = 0;
        if (!rt->host_driven())
            return set_error(FLUXUS_ESTATE,
                             "fluxus_runtime_run_once: the runtime has its own worker threads");
        if (in_callback())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_runtime_run_once: not allowed from inside a callback");
        uint32_t n = rt->run_ready();
        if (ran) *ran = n;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_run_for(fluxus_runtime *h, uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_run_for");
        if (!rt->host_driven())
            return set_error(FLUXUS_ESTATE,
                             "fluxus_runtime_run_for: the runtime has its own worker threads");
        if (in_callback())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_runtime_run_for: not allowed from inside a callback");
        if (!rt->run_for(deadline_after_ms(timeout_ms), nullptr))
            return set_error(FLUXUS_ECANCELED,
                             "fluxus_runtime_run_for: the runtime is being freed");
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_set_virtual_clock(fluxus_runtime *h, int32_t enabled,
                                                    uint64_t start_ns) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_set_virtual_clock");
        if (enabled != 0 && enabled != 1)
            return set_errorf(FLUXUS_ERANGE, "fluxus_runtime_set_virtual_clock: enabled is %d, "
                                             "not 0 or 1", enabled);
        return rt->set_virtual_clock(enabled == 1, start_ns);
    });
}

FLUXUS_API int32_t fluxus_runtime_advance_clock(fluxus_runtime *h, uint64_t delta_ns) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_advance_clock");
        return rt->advance_clock(delta_ns);
    });
}

FLUXUS_API int32_t fluxus_runtime_now_ns(fluxus_runtime *h, uint64_t *out) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_now_ns");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_runtime_now_ns: out is NULL");
        *out = rt->now();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_call_after(uint64_t *out_id, fluxus_runtime *h,
                                             uint64_t delay_ns, fluxus_timer_fn fn, void *user,
                                             fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        if (out_id) *out_id = 0;
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_call_after");
        if (!fn) return set_error(FLUXUS_EINVAL, "fluxus_runtime_call_after: fn is NULL");
        TimerCallback cb;
        cb.fn = fn;
        cb.user = user;
        cb.user_free = user_free;
        uint64_t id = rt->call_after(delay_ns, cb);
        if (!id) return set_error(FLUXUS_EINVAL, "fluxus_runtime_call_after: runtime shut down");
        if (out_id) *out_id = id;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_cancel_timer(fluxus_runtime *h, uint64_t id) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_RUNTIME(rt, h, "fluxus_runtime_cancel_timer");
        if (!rt->cancel_timer(id))
            return set_errorf(FLUXUS_ENOTFOUND,
                              "fluxus_runtime_cancel_timer: no pending timer %llu (it ran, is "
                              "running, or was cancelled)",
                              (unsigned long long)id);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_runtime_free(fluxus_runtime *h) {
    FLUXUS_API_GUARD({
        if (!h) return FLUXUS_OK;
        if (!runtime_live(h))
            return set_error(FLUXUS_EINVAL,
                             "fluxus_runtime_free: not a live runtime handle (already freed?)");
        if (free_would_deadlock())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_runtime_free: not allowed from inside a fluxus callback or "
                             "call");
        Runtime *rt = static_cast<Runtime *>(
            handle_unregister(HandleKind::runtime, reinterpret_cast<uintptr_t>(h)));
        if (!rt) return set_error(FLUXUS_EINVAL, "fluxus_runtime_free: already freed");
        // Host threads in run_for() return; then wait for every call on the handle to end.
        rt->begin_close();
        handle_retire(reinterpret_cast<uintptr_t>(h));
        rt->shutdown();
        rt->release();
        return FLUXUS_OK;
    });
}

}  // extern "C"
