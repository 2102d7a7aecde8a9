// A task that only counts its runs, on a bare runtime used as a run queue: the runtime is never
// started (no thread, no loop), so a notify() just queues the task and run() executes it when
// the test calls run_queued(). Lets unit tests see exactly which waiters a class wakes.
#pragma once

#include <cstdint>

#include "runtime/runtime.hpp"
#include "runtime/task.hpp"

namespace fluxus_test {

struct CountingTask : fluxus::Task {
    CountingTask(fluxus::Runtime *rt, fluxus::TaskOwner *owner) : Task(rt, owner) {}
    int runs = 0;

protected:
    void run() override { ++runs; }
};

// The runtime and the owner the fake tasks belong to. Not started, so nothing runs by itself.
struct BareRuntime {
    fluxus::Runtime *rt;
    fluxus::TaskOwner owner;
    fluxus::TaskOwner other_owner;
    BareRuntime() : rt(new fluxus::Runtime()) { rt->set_workers(0); }
    ~BareRuntime() { rt->release(); }
    BareRuntime(const BareRuntime &) = delete;
    BareRuntime &operator=(const BareRuntime &) = delete;
    // Runs every queued task once (each increments its `runs`); returns how many ran.
    uint32_t run_queued() { return rt->run_ready(); }
};

}  // namespace fluxus_test
