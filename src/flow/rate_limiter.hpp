// RateLimiter: a token bucket (or, in smooth mode, a meter that spaces items evenly) shared by
// the public fluxus_rate_limiter handle and by every stage or source that uses it. Reference
// counted: the handle holds one reference and each user holds its own, so freeing the handle
// never pulls the limiter out from under a running pipeline. It retains its runtime (if any),
// whose clock (real or virtual) it reads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "fluxus.h"

namespace fluxus {

class Runtime;
class Task;
struct TaskOwner;

// Semantics (the public header documents the same for hosts):
//  - Token bucket: `burst` tokens, refilled continuously at `rate` tokens per second. A new
//    limiter holds `burst` tokens. FLUXUS_RATE_SMOOTH treats the burst as 1, which spaces items
//    evenly at 1/rate.
//  - Catch-up allowance: the bucket can hold burst (1 in smooth mode) plus 1 ms worth of tokens
//    (rate x 1 ms). Stage workers are woken by timers and wake tens of microseconds late; without
//    the allowance that lateness would be lost at every wake-up and the long-run rate would fall
//    below `rate` (by rate x lateness, e.g. 5 % at 1000/s with 50 us lateness). With it, a
//    waiter that wakes up to 1 ms late still gets the tokens that accrued meanwhile, so the
//    average holds exactly; spacing is exact to about a millisecond, and at high rates items
//    pass in small groups per wake-up.
//  - Arithmetic: tokens are counted in nano-tokens (1e-9 token) as a 64-bit integer, refilled by
//    elapsed_ns x rate, with the sub-nano-token remainder carried in a double. For integral rates
//    (3/s, 1000/s, 1e6/s) refill is exact integer arithmetic: a token due at t is available at t,
//    not 1 ns earlier or later, and nothing drifts however the clock is stepped.
//  - Rate 0 stops the limiter: nothing passes, not even tokens still in the bucket (they are
//    kept for when the rate is raised again). Changing rate, burst or mode takes effect for the
//    next tokens: the bucket keeps what it holds (clamped to the new capacity); there is no
//    retroactive refill or penalty.
class RateLimiter {
public:
    // `rt` may be null (real clock); otherwise it is retained until the limiter is destroyed.
    // `rate_per_s` and `burst` must already be valid (see valid_rate()/valid_burst()).
    RateLimiter(Runtime *rt, double rate_per_s, uint32_t burst);
    ~RateLimiter();
    RateLimiter(const RateLimiter &) = delete;
    RateLimiter &operator=(const RateLimiter &) = delete;

    void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release();

    static bool valid_rate(double rate_per_s);  // 0 <= rate <= 1e9, not NaN
    static bool valid_burst(uint32_t burst);    // 1..(1u << 30)

    // The clock every method's `now` refers to: the runtime's clock, or now_ns() without one.
    uint64_t now() const;
    bool virtual_clock() const;
    // The runtime whose clock it reads, or null for the real clock.
    Runtime *runtime() const { return rt_; }
    // True if `rt`'s clock is this limiter's clock (the same runtime, or both real).
    bool same_clock(const Runtime *rt) const;

    // Setters validate (FLUXUS_ERANGE with a last-error message), refill up to now at the old
    // settings, apply, and wake every waiter (tasks and host threads) so it re-evaluates.
    int32_t set_rate(double rate_per_s);
    int32_t set_burst(uint32_t burst);
    int32_t set_mode(int32_t mode);  // FLUXUS_RATE_TOKEN_BUCKET / FLUXUS_RATE_SMOOTH
    double rate() const;
    uint32_t burst() const;
    int32_t mode() const;
    // Most tokens that can ever be taken at once: floor(burst (1 if smooth) + rate x 1 ms).
    uint64_t capacity() const;

    // Takes up to `want` tokens at time `now`; returns how many were granted (0..want).
    // Never blocks.
    uint32_t try_take(uint32_t want, uint64_t now);
    // Takes exactly `n` tokens or none; true if taken. Never blocks.
    bool try_take_all(uint32_t n, uint64_t now);
    // Gives back tokens taken but not used (e.g. a source that produced fewer items). The
    // bucket never exceeds its capacity, so tokens given back into a full bucket are lost.
    // Wakes every waiter.
    void give_back(uint32_t n);
    // Nanoseconds from `now` until `n` tokens can be taken: 0 if now; UINT64_MAX if the rate is
    // 0 or `n` exceeds capacity(). The answer is exact: try_take(n, now + wait_ns(n, now))
    // succeeds if nobody else takes tokens meanwhile.
    uint64_t wait_ns(uint32_t n, uint64_t now);

    // Task waiters. A task sleeping until tokens appear registers here (and arms its own timer
    // for wait_ns()); every set_rate/set_burst/set_mode/give_back notifies and clears all
    // registered tasks so they re-evaluate. Registering the same task twice keeps one entry.
    // To not miss a change made between a failed try_take() and add_waiter(), either register
    // first and then check again, or use take_or_wait(), which does both under one lock.
    // Tasks are notified under the limiter's lock, so after remove_owner(owner) returns no task
    // of that owner is touched again (call it before the owner's tasks are freed).
    void add_waiter(Task *t, TaskOwner *owner);
    void remove_owner(TaskOwner *owner);
    // try_take(); if it grants nothing, registers `t` as add_waiter() does and stores in
    // *retry_ns what wait_ns(1, now) says (UINT64_MAX: no timer needed, only a change helps).
    uint32_t take_or_wait(uint32_t want, uint64_t now, Task *t, TaskOwner *owner,
                          uint64_t *retry_ns);

    // Blocking acquire for host threads: waits on a condition variable (never spinning) until
    // `n` tokens are taken, or `timeout_ms` passes on the limiter's clock (UINT32_MAX = forever;
    // 0 = try once). With the real clock it sleeps exactly until the tokens are due (woken early
    // by setters and give_back); with a virtual clock it re-reads the clock at least every
    // millisecond of real time, so a host thread advancing the clock releases it.
    // Returns FLUXUS_OK, FLUXUS_ETIMEDOUT, FLUXUS_ERANGE (n exceeds capacity(), also if a setter
    // shrinks it while waiting), FLUXUS_ECANCELED (close_host_waiters() was called),
    // FLUXUS_EINCALLBACK (from inside a fluxus callback with timeout_ms != 0). n == 0 is a no-op.
    int32_t acquire(uint32_t n, uint32_t timeout_ms);
    // Makes every current and future acquire() return FLUXUS_ECANCELED (the public handle was
    // freed). Stages keep working.
    void close_host_waiters();

    // Counters for stats: tokens handed out (net of give_back), and take attempts that got
    // fewer tokens than asked for (a partial grant counts once; so does a timed-out acquire).
    uint64_t granted() const { return granted_.load(std::memory_order_relaxed); }
    uint64_t rejected() const { return rejected_.load(std::memory_order_relaxed); }

private:
    static constexpr int64_t kNano = 1000000000;  // nano-tokens per token

    // All of these need mu_ held.
    void refill_locked(uint64_t now);
    void recompute_capacity_locked();
    uint32_t take_locked(uint32_t want, bool all);
    uint64_t wait_ns_locked(uint32_t n) const;
    void wake_all_locked();

    std::atomic<int64_t> refs_{1};
    Runtime *rt_;

    mutable std::mutex mu_;
    std::condition_variable cv_;   // host threads in acquire()
    double rate_;                  // tokens per second; 0 stops the limiter
    uint32_t burst_;
    int32_t mode_ = FLUXUS_RATE_TOKEN_BUCKET;
    int64_t cap_nt_ = 0;           // capacity in nano-tokens (burst + rate x 1 ms)
    int64_t level_nt_ = 0;         // tokens held, in nano-tokens; <= cap_nt_ unless backlogged
    bool backlogged_ = false;      // the last take (not all-or-nothing) got less than it asked
    double frac_nt_ = 0;           // refill remainder below one nano-token, in [0, 1)
    uint64_t last_ns_ = 0;         // clock reading the bucket was last refilled to
    uint32_t host_waiters_ = 0;    // threads inside acquire()
    bool closed_ = false;          // close_host_waiters() was called
    struct Waiter {
        Task *task;
        TaskOwner *owner;
    };
    std::vector<Waiter> waiters_;

    std::atomic<uint64_t> granted_{0};
    std::atomic<uint64_t> rejected_{0};
};

}  // namespace fluxus
