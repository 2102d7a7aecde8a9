// RateLimiter implementation. One mutex guards the bucket; callers take it once per batch, not
// per item. Tasks are notified under that mutex (notify() only takes the run-queue lock), which
// makes remove_owner() a hard barrier, as in the timer heap.
#include "flow/rate_limiter.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "runtime/runtime.hpp"
#include "runtime/task.hpp"
#include "util/clock.hpp"
#include "util/status.hpp"

namespace fluxus {

namespace {

constexpr double kMaxRate = 1e9;
constexpr uint32_t kMaxBurst = 1u << 30;
// Catch-up allowance: the bucket may hold this much time's worth of tokens beyond the burst.
constexpr double kAllowanceNs = 1e6;
// While a consumer is backlogged (its last take got fewer tokens than it asked for), the bucket
// may also hold this much more: what accrued while it was being woken late. On a loaded VM a
// timer wake-up can be milliseconds late; without this the lost time would show as a rate
// several percent below the limit. The tokens accrue at the rate either way, so over any span
// T no more than rate x T + capacity + this pass.
constexpr double kBacklogCatchUpNs = 20e6;
// A host waiter on a virtual clock re-reads the clock at least this often (real time).
constexpr uint64_t kVirtualSliceNs = 1000000;
// Longest single condition-variable wait; later deadlines are waited for in several slices,
// which keeps the chrono arithmetic far from overflow.
constexpr uint64_t kMaxSliceNs = uint64_t(3600) * 1000000000u;

}  // namespace

RateLimiter::RateLimiter(Runtime *rt, double rate_per_s, uint32_t burst)
    : rt_(rt), rate_(rate_per_s), burst_(burst) {
    if (rt_) rt_->retain();
    recompute_capacity_locked();  // not shared yet: no lock needed
    // A new limiter is full: `burst` tokens, without the catch-up allowance, so that the first
    // tokens after the burst come exactly 1/rate apart. (Switching to smooth mode later clamps
    // the bucket to its smaller capacity.)
    level_nt_ = std::min<int64_t>(int64_t(burst_) * kNano, cap_nt_);
    last_ns_ = now();
}

RateLimiter::~RateLimiter() {
    if (rt_) rt_->release();
}

void RateLimiter::release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

bool RateLimiter::valid_rate(double rate_per_s) {
    return std::isfinite(rate_per_s) && rate_per_s >= 0 && rate_per_s <= kMaxRate;
}

bool RateLimiter::valid_burst(uint32_t burst) { return burst >= 1 && burst <= kMaxBurst; }

bool RateLimiter::same_clock(const Runtime *rt) const {
    // Real clocks are all the same clock; a virtual one belongs to its runtime alone.
    if (virtual_clock()) return rt == rt_;
    return !rt->virtual_clock();
}

uint64_t RateLimiter::now() const { return rt_ ? rt_->now() : now_ns(); }

bool RateLimiter::virtual_clock() const { return rt_ && rt_->virtual_clock(); }

void RateLimiter::recompute_capacity_locked() {
    int64_t burst_nt = int64_t(mode_ == FLUXUS_RATE_SMOOTH ? 1 : burst_) * kNano;
    // rate x 1 ms in nano-tokens is rate x 1e6; at most 1e15, so the sum stays below 2^61.
    cap_nt_ = burst_nt + int64_t(std::floor(rate_ * kAllowanceNs));
    if (level_nt_ > cap_nt_) {
        level_nt_ = cap_nt_;
        frac_nt_ = 0;
    }
}

void RateLimiter::refill_locked(uint64_t now) {
    // Threads read the clock before taking the lock, so `now` may be a little behind last_ns_:
    // such a caller simply sees the bucket as it is.
    if (now <= last_ns_) return;
    uint64_t dt = now - last_ns_;
    last_ns_ = now;
    if (rate_ <= 0) return;
    int64_t cap = backlogged_ ? cap_nt_ + int64_t(std::floor(rate_ * kBacklogCatchUpNs)) : cap_nt_;
    if (level_nt_ >= cap) {
        level_nt_ = cap;
        frac_nt_ = 0;
        return;
    }
    // dt x rate is exact in a double while it is below 2^53 nano-tokens (9e6 tokens); beyond
    // that the bucket is nearly always simply full.
    double add = double(dt) * rate_ + frac_nt_;
    double room = double(cap - level_nt_);
    if (add >= room) {
        level_nt_ = cap;
        frac_nt_ = 0;
        return;
    }
    double whole = std::floor(add);
    level_nt_ += int64_t(whole);
    frac_nt_ = add - whole;
}

uint32_t RateLimiter::take_locked(uint32_t want, bool all) {
    if (want == 0) return 0;
    uint32_t grant = 0;
    if (rate_ > 0) {
        int64_t avail = level_nt_ / kNano;
        grant = uint32_t(std::min<int64_t>(avail, int64_t(want)));
        if (all && grant < want) grant = 0;
        level_nt_ -= int64_t(grant) * kNano;
    }
    if (grant) granted_.fetch_add(grant, std::memory_order_relaxed);
    if (grant < want) rejected_.fetch_add(1, std::memory_order_relaxed);
    backlogged_ = grant < want && !all;
    return grant;
}

uint64_t RateLimiter::wait_ns_locked(uint32_t n) const {
    int64_t need = int64_t(n) * kNano;  // n < 2^32, so this is below 2^62
    if (need <= level_nt_) return rate_ > 0 ? 0 : UINT64_MAX;
    if (rate_ <= 0 || need > cap_nt_) return UINT64_MAX;
    int64_t deficit = need - level_nt_;
    double t = std::ceil((double(deficit) - frac_nt_) / rate_);
    if (!(t < 1.8e19)) return UINT64_MAX;  // beyond any clock's range: "never"
    uint64_t ns = t < 1 ? 1 : uint64_t(t);
    // Check against the very expression refill_locked() evaluates, so that rounding in the
    // division can never make a waiter wake 1 ns too early and find nothing.
    while (std::floor(double(ns) * rate_ + frac_nt_) < double(deficit)) ++ns;
    return ns;
}

void RateLimiter::wake_all_locked() {
    for (const Waiter &w : waiters_) w.task->notify();
    waiters_.clear();
    if (host_waiters_) cv_.notify_all();
}

int32_t RateLimiter::set_rate(double rate_per_s) {
    if (!valid_rate(rate_per_s))
        return set_errorf(FLUXUS_ERANGE,
                          "rate limiter: rate %g per second is not a number in 0..1e9",
                          rate_per_s);
    uint64_t t = now();
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(t);  // tokens accrued so far were earned at the old rate
    rate_ = rate_per_s;
    recompute_capacity_locked();
    wake_all_locked();
    return FLUXUS_OK;
}

int32_t RateLimiter::set_burst(uint32_t burst) {
    if (!valid_burst(burst))
        return set_errorf(FLUXUS_ERANGE, "rate limiter: burst %u is not in 1..%u", burst,
                          kMaxBurst);
    uint64_t t = now();
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(t);
    burst_ = burst;
    recompute_capacity_locked();
    wake_all_locked();
    return FLUXUS_OK;
}

int32_t RateLimiter::set_mode(int32_t mode) {
    if (mode != FLUXUS_RATE_TOKEN_BUCKET && mode != FLUXUS_RATE_SMOOTH)
        return set_errorf(FLUXUS_ERANGE,
                          "rate limiter: mode %d is not FLUXUS_RATE_TOKEN_BUCKET (0) or "
                          "FLUXUS_RATE_SMOOTH (1)",
                          mode);
    uint64_t t = now();
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(t);
    mode_ = mode;
    recompute_capacity_locked();
    wake_all_locked();
    return FLUXUS_OK;
}

double RateLimiter::rate() const {
    std::lock_guard<std::mutex> lock(mu_);
    return rate_;
}

uint32_t RateLimiter::burst() const {
    std::lock_guard<std::mutex> lock(mu_);
    return burst_;
}

int32_t RateLimiter::mode() const {
    std::lock_guard<std::mutex> lock(mu_);
    return mode_;
}

uint64_t RateLimiter::capacity() const {
    std::lock_guard<std::mutex> lock(mu_);
    return uint64_t(cap_nt_ / kNano);
}

uint32_t RateLimiter::try_take(uint32_t want, uint64_t now) {
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(now);
    return take_locked(want, false);
}

bool RateLimiter::try_take_all(uint32_t n, uint64_t now) {
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(now);
    return take_locked(n, true) == n;
}

void RateLimiter::give_back(uint32_t n) {
    if (n == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    // No refill needed first: min(cap, level + n + refill) is the same in either order. Tokens
    // given back mean the consumer had more than it needed: it is not backlogged.
    backlogged_ = false;
    level_nt_ = std::min(cap_nt_, level_nt_ + int64_t(n) * kNano);
    if (level_nt_ == cap_nt_) frac_nt_ = 0;
    uint64_t g = granted_.load(std::memory_order_relaxed);
    granted_.store(g - std::min<uint64_t>(g, n), std::memory_order_relaxed);
    wake_all_locked();
}

uint64_t RateLimiter::wait_ns(uint32_t n, uint64_t now) {
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(now);
    return wait_ns_locked(n);
}

void RateLimiter::add_waiter(Task *t, TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Waiter &w : waiters_)
        if (w.task == t) return;
    waiters_.push_back(Waiter{t, owner});
}

void RateLimiter::remove_owner(TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    waiters_.erase(std::remove_if(waiters_.begin(), waiters_.end(),
                                  [owner](const Waiter &w) { return w.owner == owner; }),
                   waiters_.end());
}

uint32_t RateLimiter::take_or_wait(uint32_t want, uint64_t now, Task *t, TaskOwner *owner,
                                   uint64_t *retry_ns) {
    std::lock_guard<std::mutex> lock(mu_);
    refill_locked(now);
    uint32_t grant = take_locked(want, false);
    if (retry_ns) *retry_ns = grant ? 0 : wait_ns_locked(1);
    if (grant == 0 && want > 0) {
        bool present = false;
        for (const Waiter &w : waiters_) present = present || w.task == t;
        if (!present) waiters_.push_back(Waiter{t, owner});
    }
    return grant;
}

void RateLimiter::close_host_waiters() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
}

int32_t RateLimiter::acquire(uint32_t n, uint32_t timeout_ms) {
    if (timeout_ms != 0 && in_callback())
        return set_error(FLUXUS_EINCALLBACK,
                         "rate limiter acquire: a blocking wait is not allowed inside a fluxus "
                         "callback (use timeout 0 or try-acquire)");
    if (n == 0) return FLUXUS_OK;
    const bool virt = virtual_clock();
    uint64_t start = now();
    uint64_t span = uint64_t(timeout_ms) * 1000000u;
    uint64_t deadline =
        timeout_ms == UINT32_MAX || span > UINT64_MAX - start ? UINT64_MAX : start + span;
    std::unique_lock<std::mutex> lock(mu_);
    ++host_waiters_;
    int32_t rc;
    for (uint64_t t = start;; t = now()) {
        if (closed_) {
            rc = set_error(FLUXUS_ECANCELED, "rate limiter acquire: the limiter was freed");
            break;
        }
        if (int64_t(n) * kNano > cap_nt_) {
            rc = set_errorf(FLUXUS_ERANGE,
                            "rate limiter acquire: %u tokens exceed the capacity of %llu "
                            "(burst, or 1 in smooth mode, plus 1 ms worth of tokens)",
                            n, (unsigned long long)(cap_nt_ / kNano));
            break;
        }
        refill_locked(t);
        if (rate_ > 0 && level_nt_ >= int64_t(n) * kNano) {
            take_locked(n, true);
            rc = FLUXUS_OK;
            break;
        }
        if (t >= deadline) {
            rejected_.fetch_add(1, std::memory_order_relaxed);
            rc = set_errorf(FLUXUS_ETIMEDOUT,
                            "rate limiter acquire: %u tokens not available within %u ms", n,
                            timeout_ms);
            break;
        }
        uint64_t sleep = std::min(wait_ns_locked(n), deadline - t);
        if (virt) sleep = std::min(sleep, kVirtualSliceNs);
        sleep = std::min(sleep, kMaxSliceNs);
        cv_.wait_for(lock, std::chrono::nanoseconds(sleep));
    }
    --host_waiters_;
    return rc;
}

}  // namespace fluxus
