// HostWake: see host_wake.hpp. The descriptor is platform/wake_fd.hpp's.
#include "runtime/host_wake.hpp"

#include <mutex>

#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {
std::mutex g_fd_mu;  // making the descriptor (once per runtime, rare)
}

HostWake::~HostWake() { user_.release(); }

void HostWake::set_callback(fluxus_wakeup_fn fn, void *user, fluxus_user_free_fn user_free) {
    UserRef old = user_;
    fn_ = fn;
    user_ = UserRef{user, user_free};
    old.release();
}

int HostWake::fd(int32_t *status) {
    std::lock_guard<std::mutex> lock(g_fd_mu);
    int r = read_fd_.load();
    if (r >= 0) {
        *status = FLUXUS_OK;
        return r;
    }
    *status = wake_fd_.open();
    if (*status != FLUXUS_OK) return -1;
    // If work is already waiting, the new descriptor starts readable.
    if (pending_.load()) wake_fd_.post();
    r = wake_fd_.read_fd();
    read_fd_.store(r);
    return r;
}

void HostWake::signal() {
    if (pending_.exchange(true)) return;
    if (read_fd_.load() >= 0) wake_fd_.post();
    if (fn_) {
        try {
            fn_(user_.user);
        } FLUXUS_CATCH_ALL {
            // A wake-up that throws loses only itself; the descriptor still signalled.
        }
    }
}

void HostWake::clear() {
    if (!pending_.exchange(false)) return;
    if (read_fd_.load() >= 0) {
        wake_fd_.drain();
        // A signal between the exchange and the drain wrote a token the drain took: put one
        // back, or the host would sleep on a descriptor that no longer says work is waiting.
        if (pending_.load()) wake_fd_.post();
    }
}

}  // namespace fluxus
