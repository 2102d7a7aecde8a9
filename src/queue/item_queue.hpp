// ItemQueue: the bounded queue in front of a segment. Items move in batches under one lock per
// batch; it never grows past its capacity. With several lanes (order-per-key stages) each lane
// is its own ring, fed in order and drained by one worker.
// Waiting never blocks a worker thread: a task that finds the queue empty (consumer) or full
// (producer) is registered and notified when that changes. Host threads pushing into a push
// source block on a condition variable instead.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "util/clock.hpp"
#include "util/spin_mutex.hpp"

namespace fluxus {

class Task;

// Items a producer still has to hand to a queue, in order. `lanes` is parallel to `items` when
// the target queue has several lanes. `head` marks the first item not yet handed over.
struct PendingItems {
    std::vector<uint64_t> items;
    std::vector<uint32_t> lanes;
    size_t head = 0;
    uint64_t since_ns = 0;  // when the producer first found the queue full (timeouts)

    size_t size() const { return items.size() - head; }
    bool empty() const { return head == items.size(); }
    void clear() {
        items.clear();
        lanes.clear();
        head = 0;
        since_ns = 0;
    }
};

class ItemQueue {
public:
    ItemQueue(uint32_t lanes, uint32_t capacity_per_lane);

    uint32_t lanes() const { return uint32_t(lanes_.size()); }
    uint64_t capacity() const { return uint64_t(cap_) * lanes_.size(); }
    uint64_t depth() const { return depth_.load(std::memory_order_relaxed); }
    uint64_t peak() const { return peak_.load(std::memory_order_relaxed); }

    // ---- producer side ----

    // Moves what fits from `pend` into the queue (per lane in order; other lanes' items may pass
    // a blocked lane). Returns the number moved. Items that do not fit stay in `pend`, compacted
    // and in order. If some remain and `waiter` is set, it is notified when room appears.
    // With `evict` set, the oldest queued items of a full lane are removed to make room and
    // appended to *evict (drop-oldest policy); then everything fits.
    size_t push(PendingItems &pend, Task *waiter, std::vector<uint64_t> *evict = nullptr);

    // Host push: like push(), but waits on a condition variable until all of `pend` moved, the
    // deadline passes, the queue closes, or `gate()` returns 1 (stop). While `gate()` returns 2
    // (hold, e.g. paused) nothing is pushed but the wait goes on; 3 holds too, but re-asks the
    // gate every millisecond (a hold that ends by time, with nobody to wake the host).
    // Returns the number moved.
    template <class Gate>
    size_t push_wait(PendingItems &pend, uint64_t deadline_ns, Gate gate);

    // Producer bookkeeping: the queue closes when every producer is done.
    void set_producers(uint32_t n);
    void producer_done();
    bool closed() const;

    // Wakes host threads blocked in push_wait() so they re-check their abort condition.
    void wake_hosts();

    // ---- consumer side ----

    // Pops up to `max` items of `lane`. Returns 0 when it is empty; then *drained says whether it
    // will stay empty forever (closed), and otherwise `waiter` is notified on the next push.
    size_t pop(uint32_t lane, uint64_t *out, size_t max, Task *waiter, bool *drained);

    // Pops everything from `lane` (cancellation).
    void pop_all(uint32_t lane, std::vector<uint64_t> &out);

private:
    struct Lane {
        std::vector<uint64_t> ring;
        size_t head = 0;
        size_t count = 0;
        std::vector<Task *> consumers;  // tasks waiting for this lane to get items
    };
    void copy_in(Lane &l, const uint64_t *items, size_t n);  // at the tail; mu_ held
    void copy_out(Lane &l, uint64_t *out, size_t n);        // from the head; mu_ held
    size_t push_locked(PendingItems &pend, std::vector<uint64_t> *evict,
                       std::vector<Task *> &wake);
    void note_depth(int64_t delta);
    static void add_waiter(std::vector<Task *> &list, Task *t);
    static void notify_all(std::vector<Task *> &list);

    mutable SpinThenBlockMutex mu_;
    std::condition_variable_any host_cv_;  // host pushes wait here (rare: not the hot path)
    uint32_t host_waiters_ = 0;
    uint32_t cap_;
    std::vector<Lane> lanes_;
    std::vector<Task *> producers_waiting_;  // in wake order (see add_producer_waiter)
    size_t starved_waiters_ = 0;  // the first ones, that found no room at all
    void add_producer_waiter(Task *t, bool got_nothing);  // mu_ held
    uint32_t open_producers_ = 0;
    bool closed_ = false;
    std::atomic<uint64_t> depth_{0};
    std::atomic<uint64_t> peak_{0};
};

template <class Gate>
size_t ItemQueue::push_wait(PendingItems &pend, uint64_t deadline_ns, Gate gate) {
    size_t moved = 0;
    std::vector<Task *> wake;
    std::unique_lock<SpinThenBlockMutex> lock(mu_);
    for (;;) {
        int g = gate();
        if (g == 1 || closed_) break;
        if (g == 0) moved += push_locked(pend, nullptr, wake);
        if (pend.empty()) break;
        if (!wake.empty()) {
            // Consumers must hear about what we pushed before we sleep; then look again, since
            // they may have made room while the lock was released.
            lock.unlock();
            notify_all(wake);
            lock.lock();
            continue;
        }
        uint64_t now = now_ns();
        if (now >= deadline_ns) break;
        ++host_waiters_;
        uint64_t wait_ns = deadline_ns == UINT64_MAX ? UINT64_MAX : deadline_ns - now;
        if (g == 3) wait_ns = std::min<uint64_t>(wait_ns, 1000000);
        if (wait_ns == UINT64_MAX)
            host_cv_.wait(lock);
        else
            host_cv_.wait_for(lock, std::chrono::nanoseconds(wait_ns));
        --host_waiters_;
    }
    lock.unlock();
    notify_all(wake);
    return moved;
}

}  // namespace fluxus
