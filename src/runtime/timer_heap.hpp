// Timer heap: deadlines that wake tasks (source polls, overflow timeouts). One heap per runtime;
// the loop thread (or the host in host-driven mode) fires due entries. Entries are tagged with
// their owner so a pipeline can remove all of its timers before it is freed.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace fluxus {

class Task;
struct TaskOwner;

class TimerHeap {
public:
    // Adds a wake-up; returns true if it is now the earliest deadline (the loop must re-arm).
    bool add(uint64_t deadline_ns, Task *task, TaskOwner *owner);

    // Notifies every task whose deadline is <= now; returns the next deadline or UINT64_MAX.
    uint64_t fire_due(uint64_t now);

    // Drops every entry of `owner`. After it returns, no timer of that owner will fire.
    void remove_owner(TaskOwner *owner);

    uint64_t next_deadline();

private:
    struct Entry {
        uint64_t deadline;
        uint64_t seq;
        Task *task;
        TaskOwner *owner;
    };
    static bool later(const Entry &a, const Entry &b) {
        return a.deadline != b.deadline ? a.deadline > b.deadline : a.seq > b.seq;
    }
    std::mutex mu_;
    std::vector<Entry> heap_;  // min-heap by (deadline, seq)
    uint64_t seq_ = 0;
};

}  // namespace fluxus
