// Platform layer: a timer on the runtime's libuv loop that wakes at an absolute monotonic
// deadline to the microsecond (libuv's own timers count whole milliseconds). Linux: a timerfd
// watched by a uv_poll_t. Elsewhere open() returns false and the runtime uses a uv_timer_t,
// rounded up to the next millisecond. The runtime owns it; every call but open() is made on
// the loop's thread (or under the runtime's loop lock).
#pragma once

#include <cstdint>

#include <uv.h>

namespace fluxus {

class PreciseTimer {
public:
    using Callback = void (*)(void *data);

    PreciseTimer() = default;
    PreciseTimer(const PreciseTimer &) = delete;
    PreciseTimer &operator=(const PreciseTimer &) = delete;
    ~PreciseTimer() { release(); }

    // Starts watching on `loop`; `on_expire(data)` runs on the loop's thread at each deadline.
    // False where the platform has no such timer (or it could not be made): the caller falls
    // back to libuv timers.
    bool open(uv_loop_t *loop, Callback on_expire, void *data);
    bool is_open() const { return fd_ >= 0; }
    // Fires at `deadline_ns` (monotonic_ns(); a past deadline fires at once); UINT64_MAX
    // disarms it.
    void arm_at(uint64_t deadline_ns);
    // Closes the loop handle (before the loop's last uv_run()).
    void close_handle();
    // Releases the OS timer, once the loop is closed.
    void release();

private:
    static void on_readable(uv_poll_t *handle, int status, int events);

    int fd_ = -1;
    uv_poll_t poll_;
    Callback on_expire_ = nullptr;
    void *data_ = nullptr;
};

}  // namespace fluxus
