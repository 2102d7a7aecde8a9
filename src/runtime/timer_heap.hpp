// Timer heap: deadlines that wake tasks (source polls, overflow timeouts, rate limits, stage
// timeouts) or call host callbacks (fluxus_runtime_call_after). One heap per runtime; the loop
// thread (or the host, in host-driven mode or on a virtual clock) fires due entries. Deadlines
// are in the runtime's clock (real or virtual). Task entries are tagged with their owner so a
// pipeline can remove all of its timers before it is freed.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "fluxus.h"

namespace fluxus {

class Task;
struct TaskOwner;

// A host timer callback with its user pointer (released once: after it runs, or when dropped).
struct TimerCallback {
    fluxus_timer_fn fn = nullptr;
    void *user = nullptr;
    fluxus_user_free_fn user_free = nullptr;
    void release() {
        if (user_free) user_free(user);
        user_free = nullptr;
    }
};

class TimerHeap {
public:
    ~TimerHeap();

    // Adds a task wake-up; returns true if it is now the earliest deadline (re-arm needed).
    bool add(uint64_t deadline_ns, Task *task, TaskOwner *owner);
    // Adds a host callback; *id receives its id (never 0). Returns true if earliest.
    bool add_callback(uint64_t deadline_ns, const TimerCallback &cb, uint64_t *id);
    // Removes a host callback that has not started to run. Its user_free runs (outside the
    // lock). Returns false if there is no such pending callback.
    bool cancel_callback(uint64_t id);

    // Notifies every task whose deadline is <= now and runs due host callbacks (outside the
    // lock, in deadline order). Returns the next deadline or UINT64_MAX.
    uint64_t fire_due(uint64_t now);

    // Drops every entry of `owner`. After it returns, no timer of that owner will fire.
    void remove_owner(TaskOwner *owner);
    // Drops every host callback without running it (runtime shutdown).
    void drop_callbacks();

    uint64_t next_deadline();
    size_t size();

private:
    struct Entry {
        uint64_t deadline;
        uint64_t seq;
        Task *task;         // a task to notify, or null for a host callback
        TaskOwner *owner;
        TimerCallback cb;
    };
    static bool later(const Entry &a, const Entry &b) {
        return a.deadline != b.deadline ? a.deadline > b.deadline : a.seq > b.seq;
    }
    bool push(Entry e);
    std::mutex mu_;
    std::vector<Entry> heap_;  // min-heap by (deadline, seq)
    uint64_t seq_ = 1;
};

}  // namespace fluxus
