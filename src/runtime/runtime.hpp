// Runtime: the libuv loop thread (timers, cross-thread wake-ups) and the worker threads that
// run tasks, shared by every pipeline created on it. With zero workers the runtime owns no
// thread at all and the host drives it through run_once()/run_for().
// Lifetime: reference counted; the public handle and every pipeline hold one reference.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fluxus.h"
#include "runtime/host_wake.hpp"
#include "runtime/thread_start.hpp"
#include "runtime/timer_heap.hpp"
#include "util/clock.hpp"
#include "util/user_ref.hpp"

namespace fluxus {

class Task;
class Pipeline;

// True while the calling thread runs a fluxus task (so it is inside some host callback's
// call chain). Blocking API calls refuse to run there: they could wait for themselves.
bool in_callback();

// Marks the calling thread as running fluxus callbacks for its lifetime. Worker threads get it
// around every task; host threads get it while a push may call the item destructor, the
// dead-letter callback or a key function, so those cannot free the pipeline under the push.
class CallbackScope {
public:
    CallbackScope();
    ~CallbackScope();
    CallbackScope(const CallbackScope &) = delete;
    CallbackScope &operator=(const CallbackScope &) = delete;
};

class Runtime {
public:
    Runtime();
    ~Runtime();

    void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release();

    // Configuration (before start).
    int32_t set_workers(uint32_t n);
    int32_t set_spin_us(uint32_t us);
    int32_t set_stall_threshold_ms(uint32_t ms);
    uint32_t extra_workers() const { return extra_workers_.load(std::memory_order_relaxed); }
    uint32_t workers() const { return workers_; }
    uint32_t spin_us() const { return spin_us_; }
    uint32_t stall_threshold_ms() const { return stall_ms_; }
    bool host_driven() const { return workers_ == 0; }
    int32_t set_log(int32_t max_level, fluxus_log_fn fn, void *user, fluxus_user_free_fn user_free);
    // Host-driven mode: how the host's event loop hears that work is ready (before start).
    int32_t set_wakeup(fluxus_wakeup_fn fn, void *user, fluxus_user_free_fn user_free);
    HostWake &host_wake() { return host_wake_; }
    // Nanoseconds until something is due: 0 if a task is ready, UINT64_MAX if nothing waits.
    uint64_t next_due_in_ns();
    // Start and stop hooks of the threads it creates (before start; replaces earlier ones).
    int32_t set_thread_hooks(fluxus_thread_start_fn on_start, fluxus_thread_stop_fn on_stop,
                             void *user, fluxus_user_free_fn user_free);

    int32_t start();  // idempotent while running; FLUXUS_ESTATE after shutdown
    bool started() const { return state_.load(std::memory_order_acquire) == kStarted; }
    bool dead() const { return state_.load(std::memory_order_acquire) == kDead; }

    // Cancels and finishes every pipeline, stops and joins the threads. Idempotent.
    void shutdown();
    // The public handle is being freed: host threads in run_for() (the public call, not a
    // pipeline's wait) return now, so the free can wait for the calls on the handle to end.
    void begin_close();

    // Clock: every internal deadline (timers, timeouts, rate limits, debounce) is read from
    // here. A virtual clock stands still until the host advances it, for exact tests.
    uint64_t now() const {
        return virtual_clock_ ? vnow_.load(std::memory_order_acquire) : now_ns();
    }
    bool virtual_clock() const { return virtual_clock_; }
    int32_t set_virtual_clock(bool on, uint64_t start_ns);
    // Moves the virtual clock forward and fires what became due, on the calling thread.
    int32_t advance_clock(uint64_t delta_ns);

    // Scheduling.
    void enqueue(Task *task);
    // True if tasks are waiting for a thread (a hint: read without the lock).
    bool has_queued_tasks() const { return rq_size_.load(std::memory_order_relaxed) > 0; }
    void add_timer(uint64_t deadline_ns, Task *task, TaskOwner *owner);
    // Host timers (fluxus_runtime_call_after). Returns the id, or 0 if the runtime is dead.
    uint64_t call_after(uint64_t delay_ns, const TimerCallback &cb);
    bool cancel_timer(uint64_t id) { return timers_.cancel_callback(id); }
    void remove_timers(TaskOwner *owner) { timers_.remove_owner(owner); }

    // Host-driven mode: run what is ready; run_for also sleeps while idle.
    uint32_t run_ready();
    // Returns false if it stopped early because the handle is being freed (begin_close()).
    bool run_for(uint64_t deadline_ns, const std::atomic<bool> *until);
    // Waits (threaded mode) or drives work (host mode) until *flag or the deadline.
    // Returns true if the flag was set.
    bool wait_flag(const std::atomic<bool> &flag, std::mutex &mu, std::condition_variable &cv,
                   uint64_t deadline_ns);

    // Pipelines registered on the runtime (so shutdown can cancel them).
    void add_pipeline(Pipeline *p);
    void remove_pipeline(Pipeline *p);
    void pipeline_running(int delta) { running_pipelines_.fetch_add(delta); }

    void log(int32_t level, const char *pipeline, const char *stage, const char *message);
    bool log_enabled(int32_t level) const {
        return level <= log_level_.load(std::memory_order_relaxed) && has_log_.load();
    }

private:
    enum : int { kCreated, kStarted, kDead };
    struct LogSink {
        fluxus_log_fn fn;
        void *user;
        fluxus_user_free_fn user_free;
        ~LogSink() {
            if (user_free) user_free(user);
        }
    };

    void worker_main(uint32_t slot);
    std::thread start_worker(uint32_t slot);  // start_thread() for worker_main(slot)
    std::thread start_loop_thread();          // start_thread() for loop_main()
    // A callback ended the loop thread (forced unwind): another thread runs the loop.
    void replace_loop_thread();
    // A callback ended a worker thread (forced unwind): another thread takes its slot.
    void replace_worker(uint32_t slot);
    // Stall watchdog (loop thread): a worker that has been inside one task for the threshold
    // gets a stand-in, so a callback that blocks cannot starve every other pipeline.
    static void on_watchdog(uv_timer_t *handle);
    void check_stalls();
    bool spawn_worker_locked(uint32_t slot);
    void loop_main();
    Task *try_pop();
    Task *pop_locked();  // rq_mu_ held, rq_ not empty
    // Wakes a sleeping worker if tasks are still queued and nobody is spinning to take them.
    void wake_one_if_backlog();
    void execute(Task *task);
    void fire_timers_and_rearm();
    void timer_wakeup_changed();
    void close_loop_handles();
    static void on_async(uv_async_t *handle);
    static void on_timer(uv_timer_t *handle);
    static void on_timerfd(uv_poll_t *handle, int status, int events);

    std::atomic<int64_t> refs_{1};
    std::atomic<int> state_{kCreated};
    uint32_t workers_;
    uint32_t spin_us_ = 50;

    // Run queue: one lock per task hand-off (a task runs whole batches, never single items).
    std::mutex rq_mu_;
    std::condition_variable rq_cv_;
    std::deque<Task *> rq_;
    std::atomic<uint32_t> rq_size_{0};
    uint32_t sleepers_ = 0;
    std::atomic<uint32_t> spinners_{0};  // idle workers spinning now (they need no wake-up)
    bool stopping_ = false;

    std::vector<std::thread> threads_;
    std::mutex threads_mu_;  // threads_ grows from the loop thread (watchdog)
    // One per worker thread (the configured ones, then room for as many stand-ins): which task
    // it is running. `seq` changes at every task start, so the watchdog needs no clock here.
    struct WorkerSlot {
        std::atomic<uint64_t> seq{0};
        std::atomic<bool> busy{false};
        uint64_t seen_seq = 0;    // watchdog only
        uint32_t stalled_ticks = 0;
        bool compensated = false;
    };
    std::unique_ptr<WorkerSlot[]> slots_;
    uint32_t slot_count_ = 0;
    std::atomic<uint32_t> extra_workers_{0};
    std::atomic<bool> no_more_threads_{false};
    uint32_t stall_ms_ = 1000;  // 0: watchdog off
    uv_timer_t watchdog_;
    std::thread loop_thread_;
    uv_loop_t loop_;
    uv_async_t wake_;
    uv_timer_t timer_;
    int timerfd_ = -1;   // Linux: nanosecond wake-ups for the timer heap (libuv's are in ms)
    uv_poll_t timerfd_poll_;
    // The uv loop exists (start() to shutdown()). Host mode: read and cleared under loop_mu_,
    // so a host thread never runs the loop while shutdown() closes it.
    std::atomic<bool> loop_ready_{false};
    std::atomic<bool> closing_{false};  // begin_close() was called
    bool virtual_clock_ = false;
    std::atomic<uint64_t> vnow_{0};
    // One clock advance at a time; recursive because a timer callback fired by an advance may
    // advance the clock itself.
    std::recursive_mutex advance_mu_;
    std::mutex loop_mu_;  // host mode: one thread at a time runs the uv loop
    std::atomic<bool> loop_stop_{false};
    // Set by the uv callbacks; the host code they stand for runs after uv_run() returns.
    std::atomic<bool> timers_due_{false};
    std::atomic<bool> stalls_due_{false};
    TimerHeap timers_;

    std::mutex mu_;  // guards pipelines_ and state transitions
    std::vector<Pipeline *> pipelines_;
    std::atomic<int> running_pipelines_{0};

    HostWake host_wake_;           // host-driven mode: wake-ups for the host's loop
    ThreadHooks thread_hooks_;     // fixed once started: threads copy it when they start
    UserRef thread_hooks_user_;
    std::mutex log_mu_;
    std::shared_ptr<LogSink> log_sink_;
    std::atomic<int32_t> log_level_{FLUXUS_LOG_WARN};
    std::atomic<bool> has_log_{false};
};

}  // namespace fluxus
