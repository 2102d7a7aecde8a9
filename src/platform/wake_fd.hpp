// Platform layer: a file descriptor that a host's poll loop can wait on, made readable by
// another thread (fluxus_runtime_get_fd()). Linux: an eventfd; other POSIX systems: a
// non-blocking pipe. Windows has no such descriptor: open() answers FLUXUS_ENOTSUP and hosts
// there use the wake-up callback (fluxus_runtime_set_wakeup()). HostWake owns it.
#pragma once

#include <cstdint>

namespace fluxus {

class WakeFd {
public:
    WakeFd() = default;
    WakeFd(const WakeFd &) = delete;
    WakeFd &operator=(const WakeFd &) = delete;
    ~WakeFd();

    // Makes the descriptor: FLUXUS_OK, FLUXUS_ENOMEM (the OS refused), FLUXUS_ENOTSUP (none on
    // this platform). Called once, before read_fd() is published.
    int32_t open();
    int read_fd() const { return read_fd_; }
    // Makes it readable (any thread, after open()).
    void post();
    // Reads everything posted so far, so that it no longer polls readable.
    void drain();

private:
    int read_fd_ = -1;
    int write_fd_ = -1;
};

}  // namespace fluxus
