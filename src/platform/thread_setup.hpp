// Platform layer: what a new fluxus thread needs from the OS — a name debuggers and `top -H`
// show, and a signal mask that leaves the host's asynchronous signals to the host's threads.
#pragma once

#include <functional>

namespace fluxus {

// Names the calling thread (at most 15 characters are kept). A no-op where threads have no
// names.
void name_this_thread(const char *name);

// Runs `create` (which starts a thread) with the signals a host may send to the process
// asynchronously blocked on the calling thread, so that the new thread inherits that mask
// (POSIX), and restores the caller's mask after. Elsewhere it just runs `create`.
void with_async_signals_blocked(const std::function<void()> &create);

}  // namespace fluxus
