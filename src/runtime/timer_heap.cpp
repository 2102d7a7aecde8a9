// Timer heap implementation. Tasks are notified under the heap mutex so that remove_owner()
// is a hard barrier: notify() only takes the run-queue lock, never this one.
#include "runtime/timer_heap.hpp"

#include <algorithm>

#include "runtime/task.hpp"

namespace fluxus {

bool TimerHeap::add(uint64_t deadline_ns, Task *task, TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    heap_.push_back(Entry{deadline_ns, seq_++, task, owner});
    std::push_heap(heap_.begin(), heap_.end(), later);
    return heap_.front().task == task && heap_.front().deadline == deadline_ns;
}

uint64_t TimerHeap::fire_due(uint64_t now) {
    std::lock_guard<std::mutex> lock(mu_);
    while (!heap_.empty() && heap_.front().deadline <= now) {
        Task *task = heap_.front().task;
        std::pop_heap(heap_.begin(), heap_.end(), later);
        heap_.pop_back();
        task->notify();
    }
    return heap_.empty() ? UINT64_MAX : heap_.front().deadline;
}

void TimerHeap::remove_owner(TaskOwner *owner) {
    std::lock_guard<std::mutex> lock(mu_);
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(),
                               [owner](const Entry &e) { return e.owner == owner; }),
                heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), later);
}

uint64_t TimerHeap::next_deadline() {
    std::lock_guard<std::mutex> lock(mu_);
    return heap_.empty() ? UINT64_MAX : heap_.front().deadline;
}

}  // namespace fluxus
