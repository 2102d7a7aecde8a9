// HostWake: see host_wake.hpp. The descriptor is the platform-specific part.
#include "runtime/host_wake.hpp"

#include <mutex>

#if defined(__linux__)
#include <sys/eventfd.h>
#include <unistd.h>
#elif defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#endif

#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {
std::mutex g_fd_mu;  // making the descriptor (once per runtime, rare)
}

HostWake::~HostWake() {
    int r = read_fd_.load();
#if defined(__unix__) || defined(__APPLE__)
    if (r >= 0) close(r);
    if (write_fd_ >= 0 && write_fd_ != r) close(write_fd_);
#endif
    user_.release();
}

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
#if defined(__linux__)
    r = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r < 0) {
        *status = FLUXUS_ENOMEM;
        return -1;
    }
    write_fd_ = r;
#elif defined(__unix__) || defined(__APPLE__)
    int p[2];
    if (pipe(p) != 0) {
        *status = FLUXUS_ENOMEM;
        return -1;
    }
    for (int d : p) {
        fcntl(d, F_SETFL, fcntl(d, F_GETFL) | O_NONBLOCK);
        fcntl(d, F_SETFD, FD_CLOEXEC);
    }
    r = p[0];
    write_fd_ = p[1];
#else
    *status = FLUXUS_ENOTSUP;
    return -1;
#endif
    // If work is already waiting, the new descriptor starts readable.
    if (pending_.load()) {
#if defined(__unix__) || defined(__APPLE__)
        uint64_t one = 1;
        (void)!write(write_fd_, &one, sizeof one);
#endif
    }
    read_fd_.store(r);
    *status = FLUXUS_OK;
    return r;
}

void HostWake::signal() {
    if (pending_.exchange(true)) return;
#if defined(__unix__) || defined(__APPLE__)
    if (read_fd_.load() >= 0) {
        uint64_t one = 1;  // an eventfd adds it; a pipe takes the 8 bytes
        (void)!write(write_fd_, &one, sizeof one);
    }
#endif
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
#if defined(__unix__) || defined(__APPLE__)
    int r = read_fd_.load();
    if (r >= 0) {
        uint64_t buf[8];
        while (read(r, buf, sizeof buf) > 0) {
        }
        // A signal between the exchange and the drain wrote a token the drain took: put one
        // back, or the host would sleep on a descriptor that no longer says work is waiting.
        if (pending_.load()) {
            uint64_t one = 1;
            (void)!write(write_fd_, &one, sizeof one);
        }
    }
#endif
}

}  // namespace fluxus
