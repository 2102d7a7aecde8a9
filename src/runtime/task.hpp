// Task: the unit the runtime schedules. A task is a stage worker (or a source); it runs one
// slice of work per execution and is never run by two threads at once. notify() makes it
// runnable; notifying a running task makes it run once more, so wake-ups are never lost.
#pragma once

#include <atomic>
#include <cstdint>

namespace fluxus {

class Runtime;

// Counts an owner's tasks that are scheduled or running, so the owner (a pipeline) can wait
// until none of its tasks can touch it any more before it is freed.
struct TaskOwner {
    std::atomic<int64_t> active_tasks{0};
};

class Task {
public:
    Task(Runtime *rt, TaskOwner *owner) : rt_(rt), owner_(owner) {}
    virtual ~Task() = default;
    Task(const Task &) = delete;
    Task &operator=(const Task &) = delete;

    // Makes the task runnable. Cheap when it already is. Callable from any thread.
    void notify();

    // Called by the scheduler only, on the thread that dequeued the task.
    void execute();

protected:
    // A forced unwind (pthread_exit() in a callback) is leaving run() on this thread: put the
    // task's owner in a state the task can finish from when it runs again (on another thread).
    virtual void on_forced_unwind() {}
    // One slice of work. Must return soon (a few batches) so other tasks get the thread.
    virtual void run() = 0;

    Runtime *rt_;

private:
    void unwound();
    void requeue();
    enum : int { kIdle, kScheduled, kRunning, kRerun };
    TaskOwner *owner_;
    std::atomic<int> state_{kIdle};
};

}  // namespace fluxus
