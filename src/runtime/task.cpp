// Task state machine: idle -> scheduled -> running -> idle, with "rerun" absorbing wake-ups that
// arrive while the task runs.
#include "runtime/task.hpp"

#include "runtime/runtime.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

void Task::notify() {
    int s = state_.load(std::memory_order_acquire);
    for (;;) {
        if (s == kIdle) {
            if (state_.compare_exchange_weak(s, kScheduled, std::memory_order_acq_rel)) {
                owner_->active_tasks.fetch_add(1, std::memory_order_relaxed);
                rt_->enqueue(this);
                return;
            }
        } else if (s == kRunning) {
            if (state_.compare_exchange_weak(s, kRerun, std::memory_order_acq_rel)) return;
        } else {
            return;  // already scheduled, or already asked to rerun
        }
    }
}

void Task::execute() {
    state_.store(kRunning, std::memory_order_release);
    try {
        run();
    } FLUXUS_ON_FORCED_UNWIND(unwound())
    TaskOwner *owner = owner_;
    int expected = kRunning;
    if (state_.compare_exchange_strong(expected, kIdle, std::memory_order_acq_rel)) {
        // Last touch of the task: once the count drops, its owner may free it.
        owner->active_tasks.fetch_sub(1, std::memory_order_acq_rel);
        return;
    }
    // Notified while running: go to the back of the queue rather than loop, for fairness.
    state_.store(kScheduled, std::memory_order_release);
    rt_->enqueue(this);
}

void Task::unwound() {
    // Still counted active: it runs again (on another thread) to finish what it held, also if
    // on_forced_unwind() itself is cut short by another forced unwind (its log callback).
    try {
        on_forced_unwind();
    } FLUXUS_ON_FORCED_UNWIND(requeue())
    requeue();
}

void Task::requeue() {
    state_.store(kScheduled, std::memory_order_release);
    rt_->enqueue(this);
}

}  // namespace fluxus
