// ItemQueue implementation: rings per lane, one mutex, waiter lists notified outside the lock.
#include "queue/item_queue.hpp"

#include <algorithm>

#include "runtime/task.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

ItemQueue::ItemQueue(uint32_t lanes, uint32_t capacity_per_lane)
    : cap_(capacity_per_lane), lanes_(lanes ? lanes : 1) {
    for (Lane &l : lanes_) l.ring.resize(cap_);
}

void ItemQueue::add_waiter(std::vector<Task *> &list, Task *t) {
    if (std::find(list.begin(), list.end(), t) == list.end()) list.push_back(t);
}

void ItemQueue::notify_all(std::vector<Task *> &list) {
    size_t i = 0;
    try {
        for (; i < list.size(); ++i) list[i]->notify();
    } FLUXUS_ON_FORCED_UNWIND(([&] {
        // The host's wake-up callback ended this thread: the others are still woken (their
        // notify() finds the wake-up pending and calls no host code).
        for (size_t j = i + 1; j < list.size(); ++j) list[j]->notify();
    }()))
    list.clear();
}

void ItemQueue::note_depth(int64_t delta) {
    uint64_t d = depth_.load(std::memory_order_relaxed) + uint64_t(delta);
    depth_.store(d, std::memory_order_relaxed);  // written under mu_ only
    if (d > peak_.load(std::memory_order_relaxed)) peak_.store(d, std::memory_order_relaxed);
}

// Ring copies in at most two pieces (before and after the wrap): the ring is written by one
// thread and read by another, so these copies are where the items change cores.
void ItemQueue::copy_in(Lane &l, const uint64_t *items, size_t n) {
    size_t tail = l.head + l.count;
    if (tail >= cap_) tail -= cap_;
    size_t first = std::min(n, cap_ - tail);
    std::copy(items, items + first, l.ring.data() + tail);
    std::copy(items + first, items + n, l.ring.data());
}

void ItemQueue::copy_out(Lane &l, uint64_t *out, size_t n) {
    size_t first = std::min(n, cap_ - l.head);
    std::copy(l.ring.data() + l.head, l.ring.data() + l.head + first, out);
    std::copy(l.ring.data(), l.ring.data() + (n - first), out + first);
    l.head += n;
    if (l.head >= cap_) l.head -= cap_;
}

size_t ItemQueue::push_locked(PendingItems &pend, std::vector<uint64_t> *evict,
                              std::vector<Task *> &wake) {
    size_t n = pend.size();
    if (n == 0 || closed_) return 0;  // only host pushes can race with closing
    const uint64_t *items = pend.items.data() + pend.head;
    size_t moved = 0;
    if (lanes_.size() == 1) {
        Lane &l = lanes_[0];
        size_t room = cap_ - l.count;
        if (evict && room < n) {
            // Drop-oldest: evict from the front until the batch (or its last cap_ items) fits.
            size_t need = std::min<size_t>(n, cap_) - room;
            for (size_t i = 0; i < need; ++i) {
                evict->push_back(l.ring[l.head]);
                l.head = (l.head + 1) % cap_;
            }
            l.count -= need;
            note_depth(-int64_t(need));
            room = cap_ - l.count;
            if (n > room) {
                // Batch larger than the whole queue: its own oldest items are dropped too.
                for (size_t i = 0; i < n - room; ++i) evict->push_back(items[i]);
                items += n - room;
                pend.head += n - room;
                moved += n - room;  // handed over (as evicted), not left pending
                n = room;
            }
        }
        size_t take = std::min(room, n);
        copy_in(l, items, take);
        l.count += take;
        pend.head += take;
        moved += take;
        if (take) {
            note_depth(int64_t(take));
            for (Task *t : l.consumers) add_waiter(wake, t);
            l.consumers.clear();
        }
        if (pend.empty()) pend.clear();
        return moved;
    }
    // Several lanes: walk the batch once; an item whose lane is full stays pending, and so do
    // the later items of that lane, which keeps every lane (so every key) in order.
    const uint32_t *lane_of = pend.lanes.data() + pend.head;
    size_t kept = 0;  // pending items are compacted in place to the front of the batch
    uint64_t *keep_items = pend.items.data() + pend.head;
    uint32_t *keep_lanes = pend.lanes.data() + pend.head;
    uint64_t blocked = 0;  // bit per lane (lanes beyond 64 share bits; only costs fairness)
    uint64_t touched = 0;  // lanes that got items, for waking their consumers
    for (size_t i = 0; i < n; ++i) {
        uint32_t li = lane_of[i];
        Lane &l = lanes_[li];
        uint64_t bit = uint64_t(1) << (li & 63);
        if (!(blocked & bit) && evict && l.count == cap_) {
            evict->push_back(l.ring[l.head]);
            if (++l.head == cap_) l.head = 0;
            --l.count;
            note_depth(-1);
        }
        if ((blocked & bit) || l.count == cap_) {
            blocked |= bit;
            keep_items[kept] = items[i];
            keep_lanes[kept] = li;
            ++kept;
            continue;
        }
        size_t tail = l.head + l.count;
        if (tail >= cap_) tail -= cap_;
        l.ring[tail] = items[i];
        ++l.count;
        ++moved;
        touched |= bit;
    }
    if (moved) note_depth(int64_t(moved));
    for (size_t li = 0; li < lanes_.size(); ++li) {
        if (!(touched & (uint64_t(1) << (li & 63)))) continue;
        for (Task *t : lanes_[li].consumers) add_waiter(wake, t);
        lanes_[li].consumers.clear();
    }
    pend.items.resize(pend.head + kept);
    pend.lanes.resize(pend.head + kept);
    if (pend.empty()) pend.clear();
    return moved;
}

size_t ItemQueue::push(PendingItems &pend, Task *waiter, std::vector<uint64_t> *evict) {
    std::vector<Task *> wake;
    size_t moved;
    {
        std::lock_guard<SpinThenBlockMutex> lock(mu_);
        moved = push_locked(pend, evict, wake);
        if (!pend.empty() && waiter) add_producer_waiter(waiter, moved == 0);
    }
    notify_all(wake);
    return moved;
}

void ItemQueue::add_producer_waiter(Task *t, bool got_nothing) {
    auto &w = producers_waiting_;
    if (std::find(w.begin(), w.end(), t) != w.end()) return;
    // Waiters are woken in this order, and the run queue runs them in wake order, so the first
    // one woken takes all the room. A producer that got nothing this time goes ahead of those
    // that got some (after earlier ones that got nothing): with several producers on one queue
    // (a merge, a multi-worker stage) the room goes round, instead of to the same one forever.
    if (got_nothing) {
        w.insert(w.begin() + std::min(starved_waiters_, w.size()), t);
        ++starved_waiters_;
    } else {
        w.push_back(t);
    }
}

void ItemQueue::set_producers(uint32_t n) {
    std::lock_guard<SpinThenBlockMutex> lock(mu_);
    open_producers_ = n;
    closed_ = (n == 0);
}

void ItemQueue::producer_done() {
    std::vector<Task *> wake;
    {
        std::lock_guard<SpinThenBlockMutex> lock(mu_);
        if (open_producers_ == 0) return;
        if (--open_producers_ > 0) return;
        closed_ = true;
        for (Lane &l : lanes_) {
            for (Task *t : l.consumers) add_waiter(wake, t);
            l.consumers.clear();
        }
        if (host_waiters_) host_cv_.notify_all();
    }
    notify_all(wake);
}

bool ItemQueue::closed() const {
    std::lock_guard<SpinThenBlockMutex> lock(mu_);
    return closed_;
}

void ItemQueue::wake_hosts() {
    std::lock_guard<SpinThenBlockMutex> lock(mu_);
    if (host_waiters_) host_cv_.notify_all();
}

size_t ItemQueue::pop(uint32_t lane, uint64_t *out, size_t max, Task *waiter, bool *drained) {
    std::vector<Task *> wake;
    size_t take;
    {
        std::lock_guard<SpinThenBlockMutex> lock(mu_);
        Lane &l = lanes_[lane];
        take = std::min(max, l.count);
        if (take == 0) {
            *drained = closed_;
            if (!closed_ && waiter) add_waiter(l.consumers, waiter);
            return 0;
        }
        *drained = false;
        copy_out(l, out, take);
        l.count -= take;
        note_depth(-int64_t(take));
        wake.swap(producers_waiting_);
        starved_waiters_ = 0;
        if (host_waiters_) host_cv_.notify_all();
    }
    notify_all(wake);
    return take;
}

void ItemQueue::pop_all(uint32_t lane, std::vector<uint64_t> &out) {
    std::vector<Task *> wake;
    {
        std::lock_guard<SpinThenBlockMutex> lock(mu_);
        Lane &l = lanes_[lane];
        for (size_t i = 0; i < l.count; ++i) out.push_back(l.ring[(l.head + i) % cap_]);
        note_depth(-int64_t(l.count));
        l.head = 0;
        l.count = 0;
        wake.swap(producers_waiting_);
        starved_waiters_ = 0;
        if (host_waiters_) host_cv_.notify_all();
    }
    notify_all(wake);
}

}  // namespace fluxus
