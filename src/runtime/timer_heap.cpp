// Timer heap implementation. Tasks are notified under the heap mutex so that remove_owner()
// is a hard barrier: notify() only takes the run-queue lock, never this one. Host callbacks run
// outside the mutex, since they may add or cancel timers themselves.
#include "runtime/timer_heap.hpp"

#include <algorithm>

#include "runtime/task.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

TimerHeap::~TimerHeap() { drop_callbacks(); }

bool TimerHeap::push(Entry e) {
    heap_.push_back(e);
    std::push_heap(heap_.begin(), heap_.end(), later);
    return heap_.front().seq == e.seq;
}

bool TimerHeap::add(uint64_t deadline_ns, Task *task, TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    return push(Entry{deadline_ns, seq_++, task, owner, TimerCallback()});
}

bool TimerHeap::add_callback(uint64_t deadline_ns, const TimerCallback &cb, uint64_t *id) {
    std::lock_guard<std::mutex> lock(mu_);
    *id = seq_;
    return push(Entry{deadline_ns, seq_++, nullptr, nullptr, cb});
}

bool TimerHeap::cancel_callback(uint64_t id) {
    TimerCallback cb;
    {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = std::find_if(heap_.begin(), heap_.end(),
                               [id](const Entry &e) { return !e.task && e.seq == id; });
        if (it == heap_.end()) return false;
        cb = it->cb;
        *it = heap_.back();
        heap_.pop_back();
        std::make_heap(heap_.begin(), heap_.end(), later);
    }
    cb.release();
    return true;
}

uint64_t TimerHeap::fire_due(uint64_t now) {
    // Host callbacks are taken off the heap one at a time, so a callback can still cancel
    // another timer that is due at the same moment. Only entries that existed on entry fire:
    // one that a callback adds for "now" waits for the next pass, so a timer that re-arms itself
    // with no delay cannot keep this loop (and the thread driving it) busy forever. (A new entry
    // never sorts before an older due one: its deadline is at least `now`.)
    uint64_t last_seq;
    {
        std::lock_guard<std::mutex> lock(mu_);
        last_seq = seq_;
    }
    for (;;) {
        TimerCallback cb;
        {
            std::lock_guard<std::mutex> lock(mu_);
            auto due = [&] {
                return !heap_.empty() && heap_.front().deadline <= now &&
                       heap_.front().seq < last_seq;
            };
            while (due() && heap_.front().task) {
                heap_.front().task->notify();
                std::pop_heap(heap_.begin(), heap_.end(), later);
                heap_.pop_back();
            }
            if (!due()) return heap_.empty() ? UINT64_MAX : heap_.front().deadline;
            cb = heap_.front().cb;
            std::pop_heap(heap_.begin(), heap_.end(), later);
            heap_.pop_back();
        }
        try {
            cb.fn(cb.user);
        } FLUXUS_ON_FORCED_UNWIND(cb.release()) catch (...) {
            // A host timer callback that throws loses only its own call.
        }
        cb.release();
    }
}

void TimerHeap::remove_owner(TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(),
                               [owner](const Entry &e) { return e.task && e.owner == owner; }),
                heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), later);
}

void TimerHeap::drop_callbacks() {
    std::vector<TimerCallback> dropped;
    {
        std::lock_guard<std::mutex> lock(mu_);
        for (const Entry &e : heap_)
            if (!e.task) dropped.push_back(e.cb);
        heap_.erase(std::remove_if(heap_.begin(), heap_.end(),
                                   [](const Entry &e) { return !e.task; }),
                    heap_.end());
        std::make_heap(heap_.begin(), heap_.end(), later);
    }
    for (TimerCallback &cb : dropped) cb.release();
}

uint64_t TimerHeap::next_deadline() {
    std::lock_guard<std::mutex> lock(mu_);
    return heap_.empty() ? UINT64_MAX : heap_.front().deadline;
}

size_t TimerHeap::size() {
    std::lock_guard<std::mutex> lock(mu_);
    return heap_.size();
}

}  // namespace fluxus
