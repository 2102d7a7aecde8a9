// PreciseTimer: a timerfd on Linux; no precise timer elsewhere (open() says so, and the
// runtime uses libuv's millisecond timers).
#include "platform/precise_timer.hpp"

#if defined(__linux__)
#include <sys/timerfd.h>
#include <unistd.h>
#define FLUXUS_HAVE_TIMERFD 1
#endif

namespace fluxus {

#if FLUXUS_HAVE_TIMERFD

bool PreciseTimer::open(uv_loop_t *loop, Callback on_expire, void *data) {
    fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd_ < 0) return false;
    on_expire_ = on_expire;
    data_ = data;
    if (uv_poll_init(loop, &poll_, fd_) != 0) {
        close(fd_);
        fd_ = -1;
        return false;
    }
    poll_.data = this;
    uv_poll_start(&poll_, UV_READABLE, &PreciseTimer::on_readable);
    return true;
}

void PreciseTimer::arm_at(uint64_t deadline_ns) {
    // An absolute deadline on the same monotonic clock: wakes to the microsecond, and a
    // deadline already past fires at once. All zeroes disarms, so "now" is 1 ns.
    itimerspec its{};
    if (deadline_ns != UINT64_MAX) {
        its.it_value.tv_sec = time_t(deadline_ns / 1000000000u);
        its.it_value.tv_nsec = long(deadline_ns % 1000000000u);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    }
    timerfd_settime(fd_, TFD_TIMER_ABSTIME, &its, nullptr);
}

void PreciseTimer::close_handle() {
    if (fd_ >= 0) uv_close(reinterpret_cast<uv_handle_t *>(&poll_), nullptr);
}

void PreciseTimer::release() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
}

void PreciseTimer::on_readable(uv_poll_t *handle, int status, int) {
    PreciseTimer *t = static_cast<PreciseTimer *>(handle->data);
    uint64_t expirations;
    if (status == 0) (void)!read(t->fd_, &expirations, sizeof expirations);
    t->on_expire_(t->data_);
}

#else

bool PreciseTimer::open(uv_loop_t *, Callback, void *) { return false; }
void PreciseTimer::arm_at(uint64_t) {}
void PreciseTimer::close_handle() {}
void PreciseTimer::release() {}
void PreciseTimer::on_readable(uv_poll_t *, int, int) {}

#endif

}  // namespace fluxus
