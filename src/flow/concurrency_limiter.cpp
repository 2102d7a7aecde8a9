// ConcurrencyLimiter implementation: one mutex per limiter, taken once per batch by stages.
// Tasks are notified under it (notify() only takes the run-queue lock), which makes
// remove_owner() a hard barrier.
#include "flow/concurrency_limiter.hpp"

#include <algorithm>
#include <chrono>

#include "runtime/runtime.hpp"
#include "runtime/task.hpp"
#include "util/clock.hpp"
#include "util/status.hpp"

namespace fluxus {

namespace {
constexpr uint32_t kMaxPermits = 1u << 30;
// Longest single condition-variable wait (see RateLimiter).
constexpr uint64_t kMaxSliceNs = uint64_t(3600) * 1000000000u;
}  // namespace

ConcurrencyLimiter::ConcurrencyLimiter(uint32_t max_permits) : max_(max_permits) {}

void ConcurrencyLimiter::release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

bool ConcurrencyLimiter::valid_max(uint32_t max_permits) {
    return max_permits >= 1 && max_permits <= kMaxPermits;
}

uint32_t ConcurrencyLimiter::try_take(uint32_t want) {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t free = in_use_ < max_ ? max_ - in_use_ : 0;
    uint32_t grant = std::min(want, free);
    in_use_ += grant;
    return grant;
}

bool ConcurrencyLimiter::try_take_all(uint32_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_use_ >= max_ || max_ - in_use_ < n) return false;
    in_use_ += n;
    return true;
}

uint32_t ConcurrencyLimiter::take_or_wait(uint32_t want, Task *t, TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t free = in_use_ < max_ ? max_ - in_use_ : 0;
    uint32_t grant = std::min(want, free);
    in_use_ += grant;
    if (grant == 0 && want > 0) {
        bool present = false;
        for (const Waiter &w : waiters_) present = present || w.task == t;
        if (!present) waiters_.push_back(Waiter{t, owner});
    }
    return grant;
}

void ConcurrencyLimiter::wake_all_locked() {
    // Every waiter is woken, not just as many as there are free permits: a woken task may have
    // been cancelled and take nothing, and the others must not sleep on regardless. The number
    // of task waiters is bounded by the stages sharing the limiter.
    for (const Waiter &w : waiters_) w.task->notify();
    waiters_.clear();
    if (host_waiters_) cv_.notify_all();
}

void ConcurrencyLimiter::give(uint32_t n) {
    if (n == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    in_use_ -= std::min(n, in_use_);
    wake_all_locked();
}

bool ConcurrencyLimiter::give_checked(uint32_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    if (n > in_use_) return false;
    if (n == 0) return true;
    in_use_ -= n;
    wake_all_locked();
    return true;
}

int32_t ConcurrencyLimiter::set_max(uint32_t max_permits) {
    if (!valid_max(max_permits))
        return set_errorf(FLUXUS_ERANGE, "concurrency limiter: max %u permits is not in 1..%u",
                          max_permits, kMaxPermits);
    std::lock_guard<std::mutex> lock(mu_);
    max_ = max_permits;
    wake_all_locked();
    return FLUXUS_OK;
}

uint32_t ConcurrencyLimiter::max() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_;
}

uint32_t ConcurrencyLimiter::in_use() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_use_;
}

void ConcurrencyLimiter::remove_owner(TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    waiters_.erase(std::remove_if(waiters_.begin(), waiters_.end(),
                                  [owner](const Waiter &w) { return w.owner == owner; }),
                   waiters_.end());
}

void ConcurrencyLimiter::close_host_waiters() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
}

int32_t ConcurrencyLimiter::acquire(uint32_t n, uint32_t timeout_ms) {
    if (timeout_ms != 0 && in_callback())
        return set_error(FLUXUS_EINCALLBACK,
                         "concurrency limiter acquire: a blocking wait is not allowed inside a "
                         "fluxus callback (use timeout 0 or try-acquire)");
    if (n == 0) return FLUXUS_OK;
    uint64_t deadline = deadline_after_ms(timeout_ms);
    std::unique_lock<std::mutex> lock(mu_);
    ++host_waiters_;
    int32_t rc;
    for (;;) {
        if (closed_) {
            rc = set_error(FLUXUS_ECANCELED, "concurrency limiter acquire: the limiter was freed");
            break;
        }
        if (n > max_) {
            rc = set_errorf(FLUXUS_ERANGE,
                            "concurrency limiter acquire: %u permits exceed the maximum of %u", n,
                            max_);
            break;
        }
        if (in_use_ < max_ && max_ - in_use_ >= n) {
            in_use_ += n;
            rc = FLUXUS_OK;
            break;
        }
        uint64_t t = now_ns();
        if (t >= deadline) {
            rc = set_errorf(FLUXUS_ETIMEDOUT,
                            "concurrency limiter acquire: %u permits not available within %u ms "
                            "(%u of %u in use)",
                            n, timeout_ms, in_use_, max_);
            break;
        }
        uint64_t sleep = std::min(deadline - t, kMaxSliceNs);
        cv_.wait_for(lock, std::chrono::nanoseconds(sleep));
    }
    --host_waiters_;
    return rc;
}

}  // namespace fluxus
