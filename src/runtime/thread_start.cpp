// start_thread(): see thread_start.hpp. The platform-specific parts, the thread's name and its
// signal mask, are in platform/thread_setup.
#include "runtime/thread_start.hpp"

#include <cstdio>

#include "platform/thread_setup.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {

const char *kind_prefix(int32_t kind) {
    switch (kind) {
    case FLUXUS_THREAD_LOOP: return "fluxus-loop";
    case FLUXUS_THREAD_WORKER: return "fluxus-w";
    default: return "fluxus-x";
    }
}

void run_hook_stop(const ThreadHooks &h, int32_t kind, uint32_t index) {
    if (!h.stop) return;
    try {
        h.stop(h.user, kind, index);
    } FLUXUS_CATCH_ALL {
        // A hook that throws loses only its own call.
    }
}


}  // namespace

std::thread start_thread(const ThreadHooks &hooks, int32_t kind, uint32_t index,
                         std::function<void()> body, std::function<void()> lost) {
    auto run = [hooks, kind, index, body = std::move(body), lost = std::move(lost)] {
        char name[16];
        if (kind == FLUXUS_THREAD_LOOP)
            snprintf(name, sizeof name, "%s", kind_prefix(kind));
        else
            snprintf(name, sizeof name, "%s%u", kind_prefix(kind), index);
        name_this_thread(name);
        // The stop hook runs last however the thread ends: after the body returns, or while a
        // forced unwind out of a callback (or out of the start hook) ends the thread; then
        // `lost` (also if the stop hook itself ends the thread).
        auto unwound = [&] {
            try {
                run_hook_stop(hooks, kind, index);
            } FLUXUS_ON_FORCED_UNWIND(if (lost) lost())
            if (lost) lost();
        };
        try {
            if (hooks.start) {
                try {
                    hooks.start(hooks.user, kind, index, name);
                } FLUXUS_CATCH_ALL {
                    // A hook that throws loses only its own call.
                }
            }
            body();
        } FLUXUS_ON_FORCED_UNWIND(unwound())
        run_hook_stop(hooks, kind, index);
    };
    std::thread t;
    // The new thread inherits the mask with the host's asynchronous signals blocked.
    with_async_signals_blocked([&] { t = std::thread(std::move(run)); });
    return t;
}

}  // namespace fluxus
