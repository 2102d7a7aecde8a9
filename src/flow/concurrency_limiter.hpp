// ConcurrencyLimiter: a counting semaphore of permits shared by the public
// fluxus_concurrency_limiter handle and by every stage that uses it, so several stages (of one
// or several pipelines) and host threads can share one bound on work in flight. Reference
// counted like RateLimiter: the handle holds one reference and each user holds its own.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "fluxus.h"

namespace fluxus {

class Task;
struct TaskOwner;

// Invariants: 0 <= in_use() and, unless set_max() lowered the limit below what is held,
// in_use() <= max(). Permits are granted only while in_use() < max(). There is no FIFO order
// among waiters: whoever asks first after a release gets the permits.
class ConcurrencyLimiter {
public:
    // `max_permits` must already be valid (see valid_max()).
    explicit ConcurrencyLimiter(uint32_t max_permits);
    ~ConcurrencyLimiter() = default;
    ConcurrencyLimiter(const ConcurrencyLimiter &) = delete;
    ConcurrencyLimiter &operator=(const ConcurrencyLimiter &) = delete;

    void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release();

    static bool valid_max(uint32_t max_permits);  // 1..(1u << 30)

    // Up to `want` permits now; returns how many were granted. Never blocks.
    uint32_t try_take(uint32_t want);
    // Exactly `n` permits or none; true if taken. Never blocks.
    bool try_take_all(uint32_t n);
    // Like try_take(); if it grants 0 (and want > 0), registers `t` (with `owner`) under the
    // same lock, to be notified when permits are released or the maximum is raised. Notified
    // tasks are dropped from the list, so a task re-registers each time it finds none.
    uint32_t take_or_wait(uint32_t want, Task *t, TaskOwner *owner);
    // Releases permits (at most in_use(): extra ones are ignored); wakes every task waiter and
    // every host waiter, which re-evaluate.
    void give(uint32_t n);
    // As give(), but refuses (returns false, releases nothing) when n > in_use().
    bool give_checked(uint32_t n);
    // 1..(1u << 30), at run time (FLUXUS_ERANGE otherwise). Lowering never revokes permits
    // already held: new ones are granted once in_use() has fallen below the new maximum.
    // Wakes every waiter.
    int32_t set_max(uint32_t max_permits);
    uint32_t max() const;
    uint32_t in_use() const;

    // Tasks are notified under the limiter's lock: after remove_owner(owner) returns, no task
    // of that owner is touched again.
    void remove_owner(TaskOwner *owner);

    // Blocking acquire for host threads, in real time: waits on a condition variable until `n`
    // permits are taken together, or `timeout_ms` passes (UINT32_MAX = forever; 0 = try once).
    // Returns FLUXUS_OK, FLUXUS_ETIMEDOUT, FLUXUS_ERANGE (n > max(), also if set_max() lowers
    // it below n while waiting), FLUXUS_ECANCELED (close_host_waiters() was called),
    // FLUXUS_EINCALLBACK (inside a fluxus callback with timeout_ms != 0). n == 0 is a no-op.
    int32_t acquire(uint32_t n, uint32_t timeout_ms);
    // Makes every current and future acquire() return FLUXUS_ECANCELED (the handle was freed).
    void close_host_waiters();

private:
    void wake_all_locked();  // mu_ held

    std::atomic<int64_t> refs_{1};
    mutable std::mutex mu_;
    std::condition_variable cv_;  // host threads in acquire()
    uint32_t max_;
    uint32_t in_use_ = 0;
    uint32_t host_waiters_ = 0;
    bool closed_ = false;
    struct Waiter {
        Task *task;
        TaskOwner *owner;
    };
    std::vector<Waiter> waiters_;
};

}  // namespace fluxus
