// Helpers shared by the C API files: handle lookup and the exception barrier. Every exported
// function runs its body inside FLUXUS_API_GUARD so no C++ exception reaches the host.
#pragma once

#include <new>

#include "core/pipeline.hpp"
#include "fluxus.h"
#include "runtime/runtime.hpp"
#include "util/handle_registry.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

inline Runtime *runtime_of(fluxus_runtime *h) {
    return static_cast<Runtime *>(
        handle_lookup(HandleKind::runtime, reinterpret_cast<uintptr_t>(h)));
}

inline Pipeline *pipeline_of(fluxus_pipeline *h) {
    return static_cast<Pipeline *>(
        handle_lookup(HandleKind::pipeline, reinterpret_cast<uintptr_t>(h)));
}

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
    fluxus::Pipeline *var = fluxus::pipeline_of(handle);                                     \
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
    fluxus::Runtime *var = fluxus::runtime_of(handle);                                      \
    if (!var)                                                                               \
        return fluxus::set_error(FLUXUS_EINVAL, std::string(fname) +                        \
                                                    ": not a live runtime handle (NULL or " \
                                                    "already freed)");
