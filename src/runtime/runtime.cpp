// Runtime: worker threads pulling tasks from one run queue, a libuv loop thread for timers and
// wake-ups, and the host-driven variant of both.
#include "runtime/runtime.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>

#if defined(__linux__)
#include <sys/timerfd.h>
#include <unistd.h>
#endif

#include "core/current_call.hpp"
#include "core/pipeline.hpp"
#include "runtime/task.hpp"
#include "util/clock.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {

thread_local int t_task_depth = 0;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

}  // namespace

bool in_callback() { return t_task_depth > 0; }

CallbackScope::CallbackScope() { ++t_task_depth; }
CallbackScope::~CallbackScope() { --t_task_depth; }

Runtime::Runtime() {
    unsigned n = std::thread::hardware_concurrency();
    workers_ = n ? n : 1;
}

Runtime::~Runtime() { thread_hooks_user_.release(); }

void Runtime::release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

int32_t Runtime::set_workers(uint32_t n) {
    if (n > 1024) return set_errorf(FLUXUS_ERANGE, "runtime workers: %u is above 1024", n);
    std::lock_guard<std::mutex> lock(mu_);
    if (state_.load() != kCreated)
        return set_error(FLUXUS_ESTATE, "runtime workers: the runtime has already started");
    workers_ = n;
    return FLUXUS_OK;
}

int32_t Runtime::set_spin_us(uint32_t us) {
    if (us > 100000) return set_errorf(FLUXUS_ERANGE, "runtime spin: %u us is above 100000", us);
    std::lock_guard<std::mutex> lock(mu_);
    if (state_.load() != kCreated)
        return set_error(FLUXUS_ESTATE, "runtime spin: the runtime has already started");
    spin_us_ = us;
    return FLUXUS_OK;
}

int32_t Runtime::set_stall_threshold_ms(uint32_t ms) {
    if (ms != 0 && (ms < 10 || ms > 3600000))
        return set_errorf(FLUXUS_ERANGE, "runtime stall threshold: %u ms is not 0 or 10..3600000",
                          ms);
    std::lock_guard<std::mutex> lock(mu_);
    if (state_.load() != kCreated)
        return set_error(FLUXUS_ESTATE, "runtime stall threshold: the runtime has already started");
    stall_ms_ = ms;
    return FLUXUS_OK;
}

int32_t Runtime::set_virtual_clock(bool on, uint64_t start_ns) {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_.load() != kCreated)
        return set_error(FLUXUS_ESTATE, "virtual clock: the runtime has already started");
    virtual_clock_ = on;
    vnow_.store(start_ns, std::memory_order_release);
    return FLUXUS_OK;
}

int32_t Runtime::advance_clock(uint64_t delta_ns) {
    if (!virtual_clock_)
        return set_error(FLUXUS_ESTATE, "advance clock: the runtime uses the real clock");
    std::lock_guard<std::recursive_mutex> lock(advance_mu_);
    uint64_t now = vnow_.load(std::memory_order_relaxed);
    uint64_t target = delta_ns > UINT64_MAX - now ? UINT64_MAX : now + delta_ns;
    // Step through due deadlines in order, so what a fired timer schedules within the advanced
    // span fires too, and each sees the clock at its own deadline.
    CallbackScope scope;
    for (;;) {
        uint64_t next = timers_.next_deadline();
        if (next > target || timers_.size() == 0) break;  // (a saturated clock is UINT64_MAX)
        if (next > vnow_.load(std::memory_order_relaxed))
            vnow_.store(next, std::memory_order_release);
        timers_.fire_due(next);
    }
    // A nested advance (from a timer callback) may have gone further: the clock never goes back.
    if (target > vnow_.load(std::memory_order_relaxed)) vnow_.store(target, std::memory_order_release);
    return FLUXUS_OK;
}

int32_t Runtime::set_log(int32_t max_level, fluxus_log_fn fn, void *user,
                         fluxus_user_free_fn user_free) {
    if (max_level < 0 || max_level > FLUXUS_LOG_DEBUG)
        return set_errorf(FLUXUS_ERANGE, "log level %d is not 0..%d", max_level, FLUXUS_LOG_DEBUG);
    // The sink holds `user` even without a callback (fn NULL removes the callback, and `user`
    // stays fluxus's until the next set_log or the runtime's end). user_free goes in only once
    // nothing can fail: a refused call never calls it.
    std::shared_ptr<LogSink> sink;
    if (fn || user_free) {
        LogSink *raw = new (std::nothrow) LogSink{fn, user, nullptr};
        if (!raw) return set_error(FLUXUS_ENOMEM, "log callback: out of memory");
        try {
            sink.reset(raw);
        } catch (const std::bad_alloc &) {
            return set_error(FLUXUS_ENOMEM, "log callback: out of memory");
        }
        sink->user_free = user_free;
    }
    std::shared_ptr<LogSink> old;
    {
        std::lock_guard<std::mutex> lock(log_mu_);
        old = std::move(log_sink_);
        log_sink_ = std::move(sink);
        log_level_.store(max_level);
        has_log_.store(fn != nullptr);
    }
    return FLUXUS_OK;  // `old` is released here, outside the lock; its user_free runs once
}

void Runtime::log(int32_t level, const char *pipeline, const char *stage, const char *message) {
    if (!log_enabled(level)) return;
    std::shared_ptr<LogSink> sink;
    {
        std::lock_guard<std::mutex> lock(log_mu_);
        sink = log_sink_;
    }
    if (!sink || !sink->fn) return;
    CallSuspendScope suspended;  // a text set in the log callback would land on some failure
    sink->fn(sink->user, level, pipeline ? pipeline : "", stage ? stage : "", message);
}

int32_t Runtime::start() {
    std::lock_guard<std::mutex> lock(mu_);
    int s = state_.load();
    if (s == kStarted) return FLUXUS_OK;
    if (s == kDead) return set_error(FLUXUS_ESTATE, "runtime start: the runtime was shut down");
    if (uv_loop_init(&loop_) != 0) return set_error(FLUXUS_ENOMEM, "runtime start: uv_loop_init");
    loop_.data = this;
    uv_async_init(&loop_, &wake_, &Runtime::on_async);
    uv_timer_init(&loop_, &timer_);
    wake_.data = this;
    timer_.data = this;
#if defined(__linux__)
    if (!host_driven() && !virtual_clock_) {
        timerfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (timerfd_ >= 0) {
            uv_poll_init(&loop_, &timerfd_poll_, timerfd_);
            timerfd_poll_.data = this;
            uv_poll_start(&timerfd_poll_, UV_READABLE, &Runtime::on_timerfd);
        }
    }
#endif
    loop_ready_ = true;
    try {
        if (!host_driven()) {
            // Room for one stand-in per configured worker (at least 4).
            slot_count_ = workers_ + std::max<uint32_t>(workers_, 4);
            slots_.reset(new WorkerSlot[slot_count_]);
            if (stall_ms_) {
                uv_timer_init(&loop_, &watchdog_);
                watchdog_.data = this;
                uint64_t period = std::max<uint64_t>(stall_ms_ / 2, 5);
                uv_timer_start(&watchdog_, &Runtime::on_watchdog, period, period);
                uv_unref(reinterpret_cast<uv_handle_t *>(&watchdog_));
            }
            std::lock_guard<std::mutex> threads_lock(threads_mu_);
            loop_thread_ = start_loop_thread();
            for (uint32_t i = 0; i < workers_; ++i)
                threads_.push_back(start_worker(i));
        }
    } FLUXUS_CATCH_ALL {
        // Could not create every thread: stop those that exist and report.
        {
            std::lock_guard<std::mutex> rq(rq_mu_);
            stopping_ = true;
        }
        rq_cv_.notify_all();
        for (std::thread &t : threads_) t.join();
        threads_.clear();
        loop_stop_.store(true);
        uv_async_send(&wake_);
        if (loop_thread_.joinable()) loop_thread_.join();
        return set_error(FLUXUS_ENOMEM, "runtime start: could not create threads");
    }
    state_.store(kStarted, std::memory_order_release);
    timer_wakeup_changed();  // host timers added before start
    return FLUXUS_OK;
}

void Runtime::shutdown() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        int s = state_.load();
        if (s == kDead) return;
        for (Pipeline *p : pipelines_) p->cancel();
        if (s == kCreated) state_.store(kDead);
    }
    if (state_.load() == kDead) {
        timers_.drop_callbacks();  // never started: pending host timers are released unrun
        return;
    }
    // Let every pipeline finish its cancellation (host mode: drive it on this thread).
    while (running_pipelines_.load() > 0) {
        if (host_driven()) {
            if (run_ready() == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
        } else {
            std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
    }
    {
        std::lock_guard<std::mutex> lock(rq_mu_);
        stopping_ = true;
    }
    rq_cv_.notify_all();
    std::vector<std::thread> joining;
    std::thread loop_thread;
    {
        std::lock_guard<std::mutex> lock(threads_mu_);
        no_more_threads_.store(true);
        joining.swap(threads_);
        loop_thread.swap(loop_thread_);  // no replacement swaps it from here on
    }
    for (std::thread &t : joining) t.join();
    if (loop_thread.joinable()) {
        loop_stop_.store(true);
        uv_async_send(&wake_);
        loop_thread.join();
        loop_ready_.store(false);
    } else {
        // Host mode: a host thread may be in run_ready() (a pipeline's wait, a free driving its
        // own cancellation); it runs the loop only under loop_mu_, so close it under it too.
        std::lock_guard<std::mutex> lock(loop_mu_);
        if (loop_ready_.load()) {
            close_loop_handles();
            uv_run(&loop_, UV_RUN_DEFAULT);
            uv_loop_close(&loop_);
        }
        loop_ready_.store(false);
    }
#if defined(__linux__)
    if (timerfd_ >= 0) close(timerfd_);
    timerfd_ = -1;
#endif
    timers_.drop_callbacks();
    std::lock_guard<std::mutex> lock(mu_);
    state_.store(kDead);
}

void Runtime::add_pipeline(Pipeline *p) {
    std::lock_guard<std::mutex> lock(mu_);
    pipelines_.push_back(p);
}

void Runtime::remove_pipeline(Pipeline *p) {
    std::lock_guard<std::mutex> lock(mu_);
    pipelines_.erase(std::remove(pipelines_.begin(), pipelines_.end(), p), pipelines_.end());
}

void Runtime::enqueue(Task *task) {
    {
        std::lock_guard<std::mutex> lock(rq_mu_);
        rq_.push_back(task);
        rq_size_.store(uint32_t(rq_.size()), std::memory_order_release);
        // A spinning worker will take it; waking a sleeper too would cost this thread a futex
        // call (and the VM an idle-core wake-up) for nothing. A spinner that finds more work
        // queued behind its task wakes a sleeper itself (worker_main), so bursts still spread.
        if (sleepers_ > 0 && spinners_.load(std::memory_order_acquire) == 0) rq_cv_.notify_one();
    }
    if (workers_ == 0) host_wake_.signal();  // outside the lock: it may call the host
}

void Runtime::wake_one_if_backlog() {
    if (rq_size_.load(std::memory_order_acquire) == 0) return;
    if (spinners_.load(std::memory_order_acquire) > 0) return;
    std::lock_guard<std::mutex> lock(rq_mu_);
    if (!rq_.empty() && sleepers_ > 0) rq_cv_.notify_one();
}

Task *Runtime::try_pop() {
    if (rq_size_.load(std::memory_order_acquire) == 0) return nullptr;
    std::lock_guard<std::mutex> lock(rq_mu_);
    return rq_.empty() ? nullptr : pop_locked();
}

Task *Runtime::pop_locked() {
    Task *t = rq_.front();
    rq_.pop_front();
    rq_size_.store(uint32_t(rq_.size()), std::memory_order_release);
    return t;
}

void Runtime::execute(Task *task) {
    CallbackScope scope;
    task->execute();
}

void Runtime::worker_main(uint32_t slot_index) {
    WorkerSlot &slot = slots_[slot_index];
    for (;;) {
        Task *task = try_pop();
        if (!task && spin_us_ > 0) {
            // Short spin: a hand-off that arrives within the window costs no sleep/wake pair.
            // (Limiting this to one spinner was measured: it saves CPU but on a 2-vCPU VM
            // every hand-off to the sleeping worker then pays a wake-up, halving W1 no-fuse.)
            spinners_.fetch_add(1, std::memory_order_acq_rel);
            uint64_t until = now_ns() + uint64_t(spin_us_) * 1000;
            while (rq_size_.load(std::memory_order_acquire) == 0 && now_ns() < until) {
                for (int i = 0; i < 32; ++i) cpu_relax();
            }
            task = try_pop();
            spinners_.fetch_sub(1, std::memory_order_acq_rel);
        }
        if (!task) {
            std::unique_lock<std::mutex> lock(rq_mu_);
            while (rq_.empty() && !stopping_) {
                ++sleepers_;
                rq_cv_.wait(lock);
                --sleepers_;
            }
            if (rq_.empty()) return;  // stopping, and nothing left to run
            task = pop_locked();
        }
        wake_one_if_backlog();
        slot.seq.fetch_add(1, std::memory_order_relaxed);
        slot.busy.store(true, std::memory_order_relaxed);
        try {
            execute(task);
        } FLUXUS_ON_FORCED_UNWIND(slot.busy.store(false, std::memory_order_relaxed))
        slot.busy.store(false, std::memory_order_relaxed);
    }
}

std::thread Runtime::start_worker(uint32_t slot) {
    // A callback (or a thread hook) that ends the thread: another thread takes its slot.
    return start_thread(
        thread_hooks_, FLUXUS_THREAD_WORKER, slot, [this, slot] { worker_main(slot); },
        [this, slot] { replace_worker(slot); });
}

std::thread Runtime::start_loop_thread() {
    return start_thread(
        thread_hooks_, FLUXUS_THREAD_LOOP, 0, [this] { loop_main(); },
        [this] { replace_loop_thread(); });
}

void Runtime::replace_loop_thread() {
    // The loop ended inside a host timer callback (or the watchdog's log callback, or a thread
    // hook), outside uv_run(): the uv loop is intact and a new thread goes on running it. Timers
    // that were due may not have fired yet: the new thread looks first.
    std::lock_guard<std::mutex> lock(threads_mu_);
    if (no_more_threads_.load()) return;
    if (loop_thread_.joinable()) loop_thread_.detach();  // this thread, which is ending
    timers_due_.store(true);
    try {
        loop_thread_ = start_loop_thread();
    } FLUXUS_CATCH_ALL {
        // No thread to spare: timers stop firing; pipelines without timers carry on.
    }
}

int32_t Runtime::set_thread_hooks(fluxus_thread_start_fn on_start, fluxus_thread_stop_fn on_stop,
                                  void *user, fluxus_user_free_fn user_free) {
    UserRef old;
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_.load() != kCreated)
            return set_error(FLUXUS_ESTATE,
                             "fluxus_runtime_set_thread_hooks: the runtime has already started");
        old = thread_hooks_user_;
        thread_hooks_ = ThreadHooks{on_start, on_stop, user};
        thread_hooks_user_ = UserRef{user, user_free};
    }
    old.release();
    return FLUXUS_OK;
}

int32_t Runtime::set_wakeup(fluxus_wakeup_fn fn, void *user, fluxus_user_free_fn user_free) {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_.load() != kCreated)
        return set_error(FLUXUS_ESTATE, "fluxus_runtime_set_wakeup: the runtime has already started");
    host_wake_.set_callback(fn, user, user_free);
    return FLUXUS_OK;
}

uint64_t Runtime::next_due_in_ns() {
    if (rq_size_.load(std::memory_order_acquire) > 0) return 0;
    uint64_t next = timers_.next_deadline();
    if (next == UINT64_MAX) return UINT64_MAX;
    uint64_t now = this->now();
    return next > now ? next - now : 0;
}

void Runtime::replace_worker(uint32_t slot_index) {
    std::lock_guard<std::mutex> lock(threads_mu_);
    if (no_more_threads_.load()) return;
    try {
        threads_.push_back(start_worker(slot_index));
    } FLUXUS_CATCH_ALL {
        // No thread to spare: the remaining workers carry on.
    }
}

void Runtime::on_watchdog(uv_timer_t *handle) {
    // check_stalls() may call the log callback: it runs after uv_run() returns (loop_main()).
    static_cast<Runtime *>(handle->data)->stalls_due_.store(true);
}

void Runtime::check_stalls() {
    // Two ticks per threshold: a worker seen busy with the same task on three ticks in a row
    // has been in it for at least the threshold.
    uint32_t running;
    {
        std::lock_guard<std::mutex> lock(threads_mu_);
        running = uint32_t(threads_.size());
    }
    uint32_t stalled = 0;
    for (uint32_t i = 0; i < running; ++i) {
        WorkerSlot &s = slots_[i];
        uint64_t seq = s.seq.load(std::memory_order_relaxed);
        bool busy = s.busy.load(std::memory_order_relaxed);
        if (!busy || seq != s.seen_seq) {
            s.seen_seq = seq;
            s.stalled_ticks = 0;
            s.compensated = false;
            continue;
        }
        if (++s.stalled_ticks < 2) continue;
        ++stalled;
        if (s.compensated) continue;
        std::lock_guard<std::mutex> lock(threads_mu_);
        if (no_more_threads_.load() || threads_.size() >= slot_count_) break;
        if (!spawn_worker_locked(uint32_t(threads_.size()))) break;
        s.compensated = true;
        char msg[200];
        snprintf(msg, sizeof msg,
                 "a worker has been inside one callback for over %u ms; started a stand-in "
                 "worker so other stages keep running (%u stand-ins now)",
                 stall_ms_, extra_workers_.load());
        log(FLUXUS_LOG_WARN, "", "", msg);
    }
    (void)stalled;
}

bool Runtime::spawn_worker_locked(uint32_t slot) {
    try {
        threads_.push_back(start_worker(slot));
    } FLUXUS_CATCH_ALL {
        return false;
    }
    extra_workers_.fetch_add(1, std::memory_order_relaxed);
    return true;
}

void Runtime::add_timer(uint64_t deadline_ns, Task *task, TaskOwner *owner) {
    if (timers_.add(deadline_ns, task, owner)) timer_wakeup_changed();
}

uint64_t Runtime::call_after(uint64_t delay_ns, const TimerCallback &cb) {
    if (dead()) return 0;
    uint64_t now = this->now();
    uint64_t deadline = delay_ns > UINT64_MAX - now ? UINT64_MAX : now + delay_ns;
    uint64_t id = 0;
    if (timers_.add_callback(deadline, cb, &id)) timer_wakeup_changed();
    return id;
}

// The earliest deadline changed: whoever sleeps until it must look again. A virtual clock
// needs nobody: its timers fire when the host advances it.
void Runtime::timer_wakeup_changed() {
    if (virtual_clock_ || !started()) return;
    if (host_driven()) {
        {
            std::lock_guard<std::mutex> lock(rq_mu_);
            if (sleepers_ > 0) rq_cv_.notify_all();
        }
        host_wake_.signal();  // the host's loop sleeps until the earliest deadline: ask again
    } else if (loop_ready_) {
        uv_async_send(&wake_);
    }
}

void Runtime::fire_timers_and_rearm() {
    if (virtual_clock_) return;
    uint64_t now = now_ns();
    uint64_t next;
    {
        CallbackScope scope;  // host timer callbacks run here
        next = timers_.fire_due(now);
    }
#if defined(__linux__)
    if (timerfd_ >= 0) {
        // An absolute deadline on the same monotonic clock: wakes to the microsecond, and a
        // deadline already past fires at once.
        itimerspec its{};
        if (next != UINT64_MAX) {
            its.it_value.tv_sec = time_t(next / 1000000000u);
            its.it_value.tv_nsec = long(next % 1000000000u);
            if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
        }
        timerfd_settime(timerfd_, TFD_TIMER_ABSTIME, &its, nullptr);
        return;
    }
#endif
    if (next == UINT64_MAX) {
        uv_timer_stop(&timer_);
        return;
    }
    // libuv timers have millisecond resolution; round up so we never wake before the deadline.
    now = now_ns();
    uint64_t delay_ms = next > now ? (next - now + 999999) / 1000000 : 0;
    uv_update_time(&loop_);
    uv_timer_start(&timer_, &Runtime::on_timer, delay_ms, 0);
}

void Runtime::close_loop_handles() {
    uv_close(reinterpret_cast<uv_handle_t *>(&wake_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t *>(&timer_), nullptr);
    if (slots_ && stall_ms_) uv_close(reinterpret_cast<uv_handle_t *>(&watchdog_), nullptr);
    if (timerfd_ >= 0) uv_close(reinterpret_cast<uv_handle_t *>(&timerfd_poll_), nullptr);
}

// The uv callbacks run no host code: a host timer callback may end its thread (a forced
// unwind), which must not pass through uv_run(). They note that timers are due, and the timers
// fire after uv_run() returns (loop_main(), run_ready()).
void Runtime::on_async(uv_async_t *handle) {
    Runtime *rt = static_cast<Runtime *>(handle->data);
    if (rt->loop_stop_.load()) {
        rt->close_loop_handles();
        return;
    }
    rt->timers_due_.store(true);
}

void Runtime::on_timer(uv_timer_t *handle) {
    static_cast<Runtime *>(handle->data)->timers_due_.store(true);
}

void Runtime::on_timerfd(uv_poll_t *handle, int status, int) {
    Runtime *rt = static_cast<Runtime *>(handle->data);
#if defined(__linux__)
    uint64_t expirations;
    if (status == 0) (void)!read(rt->timerfd_, &expirations, sizeof expirations);
#else
    (void)status;
#endif
    rt->timers_due_.store(true);
}

void Runtime::loop_main() {
    for (;;) {
        int alive = uv_run(&loop_, UV_RUN_ONCE);
        if (!loop_stop_.load()) {
            // Host code (timer callbacks; the log callback of the watchdog) runs here, outside
            // uv_run(): if it ends this thread, another one takes over the loop.
            if (timers_due_.exchange(false)) fire_timers_and_rearm();
            if (stalls_due_.exchange(false)) check_stalls();
        }
        if (!alive) break;
    }
    uv_loop_close(&loop_);
}

uint32_t Runtime::run_ready() {
    host_wake_.clear();  // from here on, new work wakes the host again
    {
        CallbackScope scope;
        timers_.fire_due(now());
    }
    if (loop_ready_.load(std::memory_order_acquire) && loop_mu_.try_lock()) {
        // Unlocked also when a timer callback ends this thread (a forced unwind).
        std::unique_lock<std::mutex> lock(loop_mu_, std::adopt_lock);
        if (loop_ready_.load(std::memory_order_relaxed)) {
            uv_run(&loop_, UV_RUN_NOWAIT);
            if (timers_due_.exchange(false)) fire_timers_and_rearm();  // outside uv_run()
        }
    }
    // Run only what is queued now, so a task that keeps re-notifying itself cannot trap us.
    uint32_t budget = rq_size_.load(std::memory_order_acquire);
    uint32_t ran = 0;
    while (ran < budget) {
        Task *task = try_pop();
        if (!task) break;
        execute(task);
        ++ran;
    }
    return ran;
}

void Runtime::begin_close() {
    closing_.store(true, std::memory_order_release);
    std::lock_guard<std::mutex> lock(rq_mu_);
    rq_cv_.notify_all();
}

bool Runtime::run_for(uint64_t deadline_ns, const std::atomic<bool> *until) {
    for (;;) {
        if (until && until->load(std::memory_order_acquire)) return true;
        if (!until && closing_.load(std::memory_order_acquire)) return false;
        uint64_t now = now_ns();
        if (now >= deadline_ns) return true;
        if (run_ready() > 0) continue;
        if (!until && running_pipelines_.load() == 0) return true;
        uint64_t wake = deadline_ns;
        if (!virtual_clock_) wake = std::min(wake, timers_.next_deadline());
        wake = std::min(wake, now + 1000000);  // re-check flags at least every millisecond
        std::unique_lock<std::mutex> lock(rq_mu_);
        if (!rq_.empty()) continue;
        if (!until && closing_.load(std::memory_order_acquire)) return false;
        ++sleepers_;
        rq_cv_.wait_for(lock, std::chrono::nanoseconds(wake > now ? wake - now : 0));
        --sleepers_;
    }
}

bool Runtime::wait_flag(const std::atomic<bool> &flag, std::mutex &mu,
                        std::condition_variable &cv, uint64_t deadline_ns) {
    if (host_driven()) {
        run_for(deadline_ns, &flag);
        return flag.load(std::memory_order_acquire);
    }
    std::unique_lock<std::mutex> lock(mu);
    while (!flag.load(std::memory_order_acquire)) {
        if (deadline_ns == UINT64_MAX) {
            cv.wait(lock);
        } else {
            uint64_t now = now_ns();
            if (now >= deadline_ns) return false;
            cv.wait_for(lock, std::chrono::nanoseconds(deadline_ns - now));
        }
    }
    return true;
}

}  // namespace fluxus
