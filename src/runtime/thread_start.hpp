// How fluxus starts a thread of its own (the loop thread, workers, stand-ins): with the host's
// asynchronous signals blocked, so that a process-directed SIGINT or SIGTERM goes to a host
// thread; with an OS name ("fluxus-w3"); and with the host's start and stop hooks
// (fluxus_runtime_set_thread_hooks()) around its body, on the new thread. The stop hook runs
// also when the thread ends by a forced unwind out of a callback.
#pragma once

#include <cstdint>
#include <functional>
#include <thread>

#include "fluxus.h"

namespace fluxus {

struct ThreadHooks {
    fluxus_thread_start_fn start = nullptr;
    fluxus_thread_stop_fn stop = nullptr;
    void *user = nullptr;
};

// Starts `body` on a new thread of `kind` (FLUXUS_THREAD_*) and `index`. Throws as
// std::thread does (std::system_error) when no thread can be created. `lost`, if set, runs on
// the thread when a forced unwind ends it (out of a callback in `body` or out of a hook), after
// the stop hook, so that the owner can start another thread in its place.
std::thread start_thread(const ThreadHooks &hooks, int32_t kind, uint32_t index,
                         std::function<void()> body, std::function<void()> lost = nullptr);

}  // namespace fluxus
