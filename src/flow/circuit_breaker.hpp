// CircuitBreaker: stops calls to a failing service for a while. Closed, it counts outcomes and
// opens after N consecutive failures or a failure ratio over the last calls; open, it refuses
// calls until the reset timeout has passed; half-open, it lets a few trial calls through and
// closes after enough of them succeed (one failure opens it again). Shared by stages of any
// pipelines and by the public handle; reference counted; reads its runtime's clock.
//
// Outcomes are tied to the state they were allowed in: allow() hands out the current epoch, and
// a record() from an earlier epoch (a slow call that started before the breaker opened) is
// ignored, so it cannot close or reopen the breaker by accident.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include "fluxus.h"
#include "util/user_ref.hpp"

namespace fluxus {

class Runtime;
class Task;
struct TaskOwner;

class CircuitBreaker {
public:
    explicit CircuitBreaker(Runtime *rt);  // rt may be null (real clock); retained
    ~CircuitBreaker();
    CircuitBreaker(const CircuitBreaker &) = delete;
    CircuitBreaker &operator=(const CircuitBreaker &) = delete;
    void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release();

    uint64_t now() const;
    bool same_clock(const Runtime *rt) const;

    // Configuration (any time; applies to the next outcomes).
    void set_consecutive(uint32_t n);
    void set_ratio(double ratio, uint32_t window, uint32_t min_calls);
    void set_reset_ns(uint64_t ns);
    void set_half_open(uint32_t max_trials, uint32_t successes);
    void set_callback(fluxus_breaker_state_fn fn, void *user, fluxus_user_free_fn user_free);

    // May a call start at `now`? On true, *epoch identifies the state it was allowed in. On
    // false, *retry_at says when asking again may succeed (UINT64_MAX: only after a change,
    // e.g. half-open trials completing) and, if `waiter` is set, it is notified on the next
    // state change.
    bool allow(uint64_t now, uint64_t *epoch, uint64_t *retry_at, Task *waiter = nullptr,
               TaskOwner *owner = nullptr);
    // The outcome of a call allowed in `epoch`.
    void record(uint64_t epoch, bool success, uint64_t now);
    // A call allowed in `epoch` that ended without an outcome (it was cancelled): it counts
    // neither way; a half-open trial slot it held is free again.
    void abandon(uint64_t epoch);
    int32_t state(uint64_t now);
    // 0 if not open at `now`; else when it may let calls through again, and `waiter` (if set)
    // is notified on the next change.
    uint64_t open_until(uint64_t now, Task *waiter, TaskOwner *owner);
    void remove_owner(TaskOwner *owner);

    std::atomic<uint64_t> rejected{0};  // calls refused while open (or half-open and full)

private:
    struct Waiter {
        Task *task;
        TaskOwner *owner;
    };
    // Moves to `to` (mu_ held); returns true if the state changed.
    void transition_locked(int32_t to, uint64_t now, std::vector<int32_t> &changes);
    void notify_changes(const std::vector<int32_t> &changes);
    void wake_waiters_locked();

    std::atomic<int64_t> refs_{1};
    Runtime *rt_;
    std::mutex mu_;
    int32_t state_ = FLUXUS_BREAKER_CLOSED;
    uint64_t epoch_ = 1;
    uint64_t opened_at_ = 0;
    // Closed: consecutive failures, and the last `window_` outcomes as a ring of bits.
    uint32_t consecutive_limit_ = 5, consecutive_ = 0;
    double ratio_ = 0;
    uint32_t window_ = 0, min_calls_ = 0;
    std::vector<uint8_t> ring_;
    uint32_t ring_head_ = 0, ring_count_ = 0, ring_failures_ = 0;
    // Open and half-open.
    uint64_t reset_ns_ = 1000000000;
    uint32_t max_trials_ = 1, successes_needed_ = 1;
    uint32_t trials_ = 0;     // half-open: trial calls in progress
    uint32_t successes_ = 0;  // half-open: trial calls that succeeded
    std::vector<Waiter> waiters_;
    std::deque<std::pair<int32_t, int32_t>> transitions_;  // not yet reported, oldest first
    std::mutex cb_mu_;  // serialises state callbacks, outside mu_
    fluxus_breaker_state_fn cb_ = nullptr;
    UserRef cb_user_;
    // The registration a state callback replaced from inside its own call: its `user` is
    // released once that call returns (under cb_mu_, by the delivering thread).
    UserRef cb_retired_;
    bool has_retired_ = false;
};

}  // namespace fluxus
