// Helpers shared by the C API files: handle lookup and the exception barrier. Every exported
// function runs its body inside FLUXUS_API_GUARD so no C++ exception reaches the host.
// Every handle a call takes is pinned for the whole call (FLUXUS_GET_* declare a HandleRef), so a
// free on another thread waits for the call instead of destroying the object under it.
#pragma once

#include <new>

#include "core/pipeline.hpp"
#include "fluxus.h"
#include "runtime/runtime.hpp"
#include "util/handle_registry.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

// Unpinned liveness checks (for the frees; every other use pins).
inline bool runtime_live(fluxus_runtime *h) {
    return handle_lookup(HandleKind::runtime, reinterpret_cast<uintptr_t>(h)) != nullptr;
}

inline bool pipeline_live(fluxus_pipeline *h) {
    return handle_lookup(HandleKind::pipeline, reinterpret_cast<uintptr_t>(h)) != nullptr;
}

// A free that waits for the calls pinning its handle cannot run on a thread that is inside a
// fluxus callback or another fluxus call: that call may pin the handle (directly, or through a
// thread that frees a handle this one pins), and the free would wait for itself.
inline bool free_would_deadlock() { return in_callback() || handle_pins_held() > 0; }

}  // namespace fluxus

#define FLUXUS_API_GUARD(body)                                                          \
    do {                                                                                \
        try {                                                                           \
            fluxus::clear_error();                                                      \
            body                                                                        \
        } catch (const std::bad_alloc &) {                                              \
            return fluxus::set_error(FLUXUS_ENOMEM, "out of memory");                   \
        } FLUXUS_CATCH_ALL {                                                            \
            return fluxus::set_error(FLUXUS_EINTERNAL, "internal error (exception caught)"); \
        }                                                                               \
    } while (0)

// Looks up a pipeline handle into `var` or returns FLUXUS_EINVAL naming the function.
#define FLUXUS_GET_PIPELINE(var, handle, fname)                                              \
    fluxus::HandleRef var##_pin(fluxus::HandleKind::pipeline,                                \
                                reinterpret_cast<uintptr_t>(handle));                        \
    fluxus::Pipeline *var = static_cast<fluxus::Pipeline *>(var##_pin.get());                \
    if (!var)                                                                                \
        return fluxus::set_error(FLUXUS_EINVAL, std::string(fname) +                         \
                                                    ": not a live pipeline handle (NULL or " \
                                                    "already freed)");

namespace fluxus {

// Runs `set(stage)` on a stage that may still be configured.
template <class F>
int32_t with_stage(fluxus_pipeline *h, uint32_t index, const char *fname, F set) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, fname);
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(index, fname, &st)) return rc;
        return set(*st);
    });
}

}  // namespace fluxus

#define FLUXUS_GET_RUNTIME(var, handle, fname)                                              \
    fluxus::HandleRef var##_pin(fluxus::HandleKind::runtime,                                \
                                reinterpret_cast<uintptr_t>(handle));                       \
    fluxus::Runtime *var = static_cast<fluxus::Runtime *>(var##_pin.get());                 \
    if (!var)                                                                               \
        return fluxus::set_error(FLUXUS_EINVAL, std::string(fname) +                        \
                                                    ": not a live runtime handle (NULL or " \
                                                    "already freed)");
