// HostWake: how a host-driven runtime tells the host's own event loop that work became ready —
// the host's wake-up callback (portable) and a file descriptor that becomes readable (eventfd on
// Linux, a pipe on other POSIX systems; none on Windows, where fluxus_runtime_get_fd() answers
// FLUXUS_ENOTSUP). Signals coalesce: one wake-up per round of run_once()/run_for(), whatever was
// enqueued meanwhile.
#pragma once

#include <atomic>

#include "fluxus.h"
#include "util/user_ref.hpp"

namespace fluxus {

class HostWake {
public:
    ~HostWake();

    // Before the runtime starts.
    void set_callback(fluxus_wakeup_fn fn, void *user, fluxus_user_free_fn user_free);
    // The readable descriptor, made on first use; -1 (and *errno_like set) where none exists.
    int fd(int32_t *status);

    // Work became ready: wakes the host once until the next clear().
    void signal();
    // The host is about to run what is ready: later work signals again.
    void clear();

private:
    std::atomic<bool> pending_{false};
    fluxus_wakeup_fn fn_ = nullptr;
    UserRef user_;
    std::atomic<int> read_fd_{-1};
    int write_fd_ = -1;
};

}  // namespace fluxus
