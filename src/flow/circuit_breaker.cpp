// CircuitBreaker implementation. One mutex guards the state; state-change callbacks and task
// wake-ups happen after it is released, in the order the changes happened.
#include "flow/circuit_breaker.hpp"

#include "runtime/runtime.hpp"
#include "runtime/task.hpp"
#include "util/clock.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {
// The breaker whose state callbacks this thread is delivering: a callback that calls into the
// same breaker (and so queues another transition) leaves the delivery to this outer loop.
thread_local const CircuitBreaker *t_delivering = nullptr;
}  // namespace

CircuitBreaker::CircuitBreaker(Runtime *rt) : rt_(rt) {
    if (rt_) rt_->retain();
}

CircuitBreaker::~CircuitBreaker() {
    cb_user_.release();
    if (rt_) rt_->release();
}

void CircuitBreaker::release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

uint64_t CircuitBreaker::now() const { return rt_ ? rt_->now() : now_ns(); }

bool CircuitBreaker::same_clock(const Runtime *rt) const {
    if (rt_ && rt_->virtual_clock()) return rt == rt_;
    return !rt->virtual_clock();
}

void CircuitBreaker::set_consecutive(uint32_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    consecutive_limit_ = n;
}

void CircuitBreaker::set_ratio(double ratio, uint32_t window, uint32_t min_calls) {
    std::lock_guard<std::mutex> lock(mu_);
    ratio_ = ratio;
    window_ = window;
    min_calls_ = min_calls;
    ring_.assign(window, 0);
    ring_head_ = ring_count_ = ring_failures_ = 0;
}

void CircuitBreaker::set_reset_ns(uint64_t ns) {
    std::lock_guard<std::mutex> lock(mu_);
    reset_ns_ = ns;
}

void CircuitBreaker::set_half_open(uint32_t max_trials, uint32_t successes) {
    std::lock_guard<std::mutex> lock(mu_);
    max_trials_ = max_trials;
    successes_needed_ = successes;
}

void CircuitBreaker::set_callback(fluxus_breaker_state_fn fn, void *user,
                                  fluxus_user_free_fn user_free) {
    UserRef old;
    if (t_delivering == this) {
        // From inside this breaker's state callback: this thread holds cb_mu_ already. The call
        // in progress keeps its `user` until it returns; a registration made and replaced
        // within that call is released at once.
        old = cb_user_;
        cb_ = fn;
        cb_user_ = UserRef{user, user_free};
        if (!has_retired_) {
            cb_retired_ = old;
            has_retired_ = true;
        } else {
            old.release();
        }
        return;
    }
    {
        std::lock_guard<std::mutex> lock(cb_mu_);
        old = cb_user_;
        cb_ = fn;
        cb_user_ = UserRef{user, user_free};
    }
    old.release();
}

void CircuitBreaker::transition_locked(int32_t to, uint64_t now, std::vector<int32_t> &changes) {
    if (to == state_) return;
    changes.push_back(state_);  // marks that something changed; the queue keeps the order
    changes.push_back(to);
    transitions_.push_back(std::make_pair(state_, to));
    state_ = to;
    wake_waiters_locked();
    ++epoch_;  // outcomes of calls allowed before this change no longer count
    consecutive_ = 0;
    ring_head_ = ring_count_ = ring_failures_ = 0;
    trials_ = successes_ = 0;
    if (to == FLUXUS_BREAKER_OPEN) opened_at_ = now;
}

void CircuitBreaker::wake_waiters_locked() {
    // Under mu_, so that remove_owner() is a barrier: no task of a removed owner is touched.
    for (const Waiter &w : waiters_) w.task->notify();
    waiters_.clear();
}

void CircuitBreaker::notify_changes(const std::vector<int32_t> &changes) {
    if (changes.empty() || t_delivering == this) return;
    // Transitions were queued in order under mu_; whoever holds cb_mu_ delivers them all, so a
    // later change on another thread can never be reported before an earlier one.
    std::lock_guard<std::mutex> lock(cb_mu_);
    struct Delivering {
        const CircuitBreaker *saved;
        explicit Delivering(const CircuitBreaker *b) : saved(t_delivering) { t_delivering = b; }
        ~Delivering() { t_delivering = saved; }
    } delivering(this);
    for (;;) {
        std::deque<std::pair<int32_t, int32_t>> batch;
        {
            std::lock_guard<std::mutex> state(mu_);
            batch.swap(transitions_);
        }
        if (batch.empty()) return;
        for (const auto &t : batch) {
            if (!cb_) break;  // (a callback may remove itself)
            try {
                cb_(cb_user_.user, t.first, t.second);
            } FLUXUS_CATCH_ALL {
                // A state callback that throws loses only that notification.
            }
            if (has_retired_) {  // the callback replaced itself: its old `user` is done now
                has_retired_ = false;
                cb_retired_.release();
            }
        }
    }
}

bool CircuitBreaker::allow(uint64_t now, uint64_t *epoch, uint64_t *retry_at, Task *waiter,
                           TaskOwner *owner) {
    std::vector<int32_t> changes;
    bool ok = false;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_ == FLUXUS_BREAKER_OPEN && now >= opened_at_ + reset_ns_)
            transition_locked(FLUXUS_BREAKER_HALF_OPEN, now, changes);
        if (state_ == FLUXUS_BREAKER_CLOSED) {
            ok = true;
        } else if (state_ == FLUXUS_BREAKER_HALF_OPEN && trials_ < max_trials_) {
            ++trials_;
            ok = true;
        }
        if (ok) {
            *epoch = epoch_;
        } else {
            rejected.fetch_add(1, std::memory_order_relaxed);
            *retry_at = state_ == FLUXUS_BREAKER_OPEN ? opened_at_ + reset_ns_ : UINT64_MAX;
            if (waiter) {
                bool present = false;
                for (const Waiter &w : waiters_) present = present || w.task == waiter;
                if (!present) waiters_.push_back(Waiter{waiter, owner});
            }
        }
    }
    notify_changes(changes);
    return ok;
}

void CircuitBreaker::record(uint64_t epoch, bool success, uint64_t now) {
    std::vector<int32_t> changes;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (epoch != epoch_) return;  // allowed in an earlier state: does not count
        if (state_ == FLUXUS_BREAKER_HALF_OPEN) {
            // trials_ counts trial calls in progress; this one is done.
            if (trials_) --trials_;
            if (!success) {
                transition_locked(FLUXUS_BREAKER_OPEN, now, changes);
            } else if (++successes_ >= successes_needed_) {
                transition_locked(FLUXUS_BREAKER_CLOSED, now, changes);
            } else {
                wake_waiters_locked();  // a trial slot is free again
            }
        } else if (state_ == FLUXUS_BREAKER_CLOSED) {
            consecutive_ = success ? 0 : consecutive_ + 1;
            bool trip = consecutive_limit_ && consecutive_ >= consecutive_limit_;
            if (window_) {
                if (ring_count_ == window_) {
                    ring_failures_ -= ring_[ring_head_];
                } else {
                    ++ring_count_;
                }
                ring_[ring_head_] = success ? 0 : 1;
                ring_failures_ += ring_[ring_head_];
                ring_head_ = (ring_head_ + 1) % window_;
                if (ratio_ > 0 && ring_count_ >= min_calls_ &&
                    double(ring_failures_) >= ratio_ * double(ring_count_))
                    trip = true;
            }
            if (trip) transition_locked(FLUXUS_BREAKER_OPEN, now, changes);
        }
    }
    notify_changes(changes);
}

void CircuitBreaker::abandon(uint64_t epoch) {
    std::lock_guard<std::mutex> lock(mu_);
    if (epoch != epoch_ || state_ != FLUXUS_BREAKER_HALF_OPEN) return;
    if (trials_) --trials_;
    wake_waiters_locked();
}

int32_t CircuitBreaker::state(uint64_t now) {
    std::vector<int32_t> changes;
    int32_t s;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_ == FLUXUS_BREAKER_OPEN && now >= opened_at_ + reset_ns_)
            transition_locked(FLUXUS_BREAKER_HALF_OPEN, now, changes);
        s = state_;
    }
    notify_changes(changes);
    return s;
}

uint64_t CircuitBreaker::open_until(uint64_t now, Task *waiter, TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != FLUXUS_BREAKER_OPEN || now >= opened_at_ + reset_ns_) return 0;
    if (waiter) {
        bool present = false;
        for (const Waiter &w : waiters_) present = present || w.task == waiter;
        if (!present) waiters_.push_back(Waiter{waiter, owner});
    }
    return opened_at_ + reset_ns_;
}

void CircuitBreaker::remove_owner(TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Waiter> keep;
    for (const Waiter &w : waiters_)
        if (w.owner != owner) keep.push_back(w);
    waiters_.swap(keep);
}

}  // namespace fluxus
