// Pipeline: a source, a chain of stages and a sink, compiled at start into segments (runs of
// fused stages behind one queue) whose workers are tasks on the runtime. It owns the stages,
// the segments and every host user pointer, and it is the one place that decides how an item
// ends (delivered, filtered, failed, dead-lettered, cancelled).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cursor_tracker.hpp"
#include "core/source_spec.hpp"
#include "core/stage.hpp"
#include "fluxus.h"
#include "runtime/task.hpp"
#include "util/handle_registry.hpp"
#include "util/spin_mutex.hpp"

namespace fluxus {

class Runtime;
class Segment;
class ItemQueue;
class RateLimiter;
class ConcurrencyLimiter;
class CircuitBreaker;
struct PendingItems;

// Per-batch outcome tally of one stage, added to its counters once per batch.
struct StageTally {
    uint64_t in = 0, out = 0, filtered = 0, failed = 0, dead_lettered = 0, cancelled = 0,
             dropped = 0, spawned = 0, busy_ns = 0;
    void flush_to(StageCounters &c);
};

class Pipeline : public TaskOwner {
public:
    Pipeline(Runtime *rt, const char *name);
    ~Pipeline();

    Runtime *runtime() const { return rt_; }
    const std::string &name() const { return name_; }

    // ---- building (FLUXUS_ESTATE once started) ----
    int32_t check_building(const char *what) const;
    int32_t set_item_free(fluxus_item_free_fn fn, void *user, fluxus_user_free_fn user_free);
    int32_t set_dead_letter(fluxus_dead_letter_fn fn, void *user, fluxus_user_free_fn user_free);
    int32_t set_fusion(int32_t enabled);
    int32_t set_batch_size(uint32_t n);
    int32_t set_source(SourceKind kind, const char *name, void (*fn)(), void *user,
                       fluxus_user_free_fn user_free);
    int32_t set_poll_interval_us(uint32_t us);
    // Limiters (retained here, released when replaced or when the pipeline is freed).
    int32_t set_source_rate_limiter(RateLimiter *l);
    int32_t set_stage_rate_limiter(Stage &st, RateLimiter *l, uint32_t wait_timeout_ms);
    int32_t set_stage_concurrency(Stage &st, ConcurrencyLimiter *l);
    int32_t add_stage(uint32_t *out, StageKind kind, const char *name, void (*fn)(), void *user,
                      fluxus_user_free_fn user_free);
    // ---- the graph (pipeline_graph.cpp) ----
    int32_t branch(uint32_t stage, uint32_t outlet);
    int32_t connect(uint32_t from, uint32_t outlet, uint32_t to);
    int32_t add_route(uint32_t stage, const char *name, uint32_t *out);
    // An extra pull source: a stage with no input; the next added stage attaches to it.
    int32_t add_source_stage(uint32_t *out, const char *name, fluxus_pull_fn fn, void *user,
                             fluxus_user_free_fn user_free);
    int32_t route_index(uint32_t stage, const char *name, uint32_t *out) const;
    int32_t set_default_route(uint32_t stage, uint32_t route);
    // Looks up a stage for an option setter; sets the error message on failure.
    int32_t stage_for_option(uint32_t index, const char *option, Stage **out);
    // The stage at `index` for reading its options, in any state (FLUXUS_ENOTFOUND if none).
    int32_t stage_for_reading(uint32_t index, const char *fname, const Stage **out) const;
    uint32_t stage_count() const { return uint32_t(stages_.size()); }
    Stage *stage(uint32_t i) const { return i < stages_.size() ? stages_[i].get() : nullptr; }

    // Keeps `obj` alive as long as the pipeline (a registry its stages' callbacks come from).
    void keep_alive(std::shared_ptr<void> obj) { keep_alive_.push_back(std::move(obj)); }

    // ---- running ----
    int32_t start();
    int32_t wait(uint32_t timeout_ms);
    int32_t drain(uint32_t timeout_ms);
    void cancel();
    int32_t close_input();
    int32_t set_paused(bool paused);
    int32_t push(const uint64_t *items, uint32_t count, uint32_t timeout_ms, bool try_only,
                 uint32_t *pushed);
    // Cancels, waits for every task and timer to let go, releases the segments. Idempotent.
    void shut_down();

    int32_t state() const { return state_.load(std::memory_order_acquire); }
    bool cancelling() const { return cancel_requested_.load(std::memory_order_relaxed); }
    bool draining() const { return drain_requested_.load(std::memory_order_relaxed); }
    bool paused() const { return paused_.load(std::memory_order_relaxed); }
    // A loop that runs items through callbacks one by one (ItemChain) registers its item limit
    // with the pipeline while it runs. cancel() and a fail-fast failure, from any thread, lower
    // every registered limit to 0 and raise `cancelled`, so no loop starts another item (and a
    // chain checks `cancelled` again before its sink): callbacks stop between items, not at the
    // end of a batch. A loop that calls the pull source (`calls_source`) also stops when the
    // source must stop (pause, drain, auto-pause): the source is then not called again, as when
    // the batch was read before any callback ran. The loop reads `limit` before each item: one
    // relaxed load and compare, the same as a plain local that callbacks may change.
    class CallLimit {
    public:
        CallLimit(Pipeline &p, size_t limit, bool calls_source);
        ~CallLimit();
        CallLimit(const CallLimit &) = delete;
        CallLimit &operator=(const CallLimit &) = delete;
        size_t get() const { return limit_.load(std::memory_order_relaxed); }
        bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
        // Items the loop itself ended as cancelled (a chain: before its sink). Its thread only.
        uint64_t withheld = 0;

    private:
        friend class Pipeline;
        std::atomic<size_t> limit_;
        std::atomic<bool> cancelled_{false};
        bool calls_source_;
        Pipeline *p_;
        CallLimit *prev_ = nullptr, *next_ = nullptr;
    };
    // Automatic pauses: after too many failures at a stage, and while the source breaker is
    // open. held_until() is 0 when the source may run, else when to look again (UINT64_MAX:
    // when the breaker changes; `waiter` is then notified).
    // False when neither an auto-pause nor a source breaker was ever set up, so a source need
    // not read the clock for source_held_until() (a clock read is ~35 ns on this VM, per batch).
    bool source_may_be_held() const {
        return source_breaker_ || auto_pause_until_.load(std::memory_order_acquire) != 0;
    }
    uint64_t source_held_until(uint64_t now, Task *waiter);
    void pause_source_for(uint64_t ns, const Stage &why);
    int32_t set_source_breaker(CircuitBreaker *cb);
    // Error routes: another pipeline's handle is pinned while items are pushed into it, and
    // freeing a pipeline waits until nobody pins it (handle_registry.hpp).
    static Pipeline *pin_route_target(uintptr_t handle);
    void unpin() { handle_unpin(handle_slot_); }
    // The slot of this pipeline's handle (set once, right after the handle is registered).
    void set_handle_slot(HandleSlot *slot) { handle_slot_ = slot; }
    bool finished() const { return finished_.load(std::memory_order_acquire); }
    void fill_stats(fluxus_pipeline_stats &s) const;
    void fill_stage_stats(const Stage &st, fluxus_stage_stats &s) const;

    // ---- used by segments ----
    uint32_t batch_size() const { return batch_; }
    bool fusion() const { return fusion_; }
    const SourceSpec &source() const { return source_; }
    void destroy_item(uint64_t item) { release_item(item, true); }
    // Ends an item fluxus owns: the cursor watermark hears of it, the destructor releases it.
    void release_item(uint64_t item, bool finished);
    // release_item() on items[0..n). If the item destructor ends the thread (a forced unwind)
    // the items after the one it was given are kept as orphans: release_orphans() destroys them
    // later, on another thread, so each still gets its one destructor call.
    void release_items(const uint64_t *items, size_t n, bool finished);
    void release_orphans();
    void orphan_rest(const uint64_t *items, size_t n);
    // Destroys an item that was never admitted (a copy that could not join its original).
    void free_unadmitted(uint64_t item);
    // Cursor sources only (null otherwise): the watermark.
    CursorTracker *cursor() const { return cursor_.get(); }
    int32_t set_cursor_source(const char *name, uint64_t start, fluxus_cursor_read_fn read,
                              fluxus_cursor_page_fn page_of, fluxus_cursor_commit_fn commit,
                              void *user, fluxus_user_free_fn user_free);
    // Ends `item` at `stage` as its error policy says. `tally` is the caller's per-batch tally
    // of that stage, or null to update the counters directly.
    // `destroy` false: the item is not fluxus's to destroy (an async item the host still owns).
    void fail_item(Stage &stage, uint64_t item, int32_t status, const char *message,
                   StageTally *tally, bool destroy = true);
    // Ends one item at `stage` as cancelled (a callback returned FLUXUS_ECANCELED); `tally` and
    // `destroy` as for fail_item.
    void end_cancelled(Stage &stage, uint64_t item, StageTally *tally, bool destroy);
    // Ends items that were headed for `stage` (or sat in its queue) as cancelled / dropped.
    void cancel_items(Stage &stage, const uint64_t *items, size_t n, bool count_in);
    void drop_items(Stage &stage, const uint64_t *items, size_t n, bool count_in);
    // Records the first fatal error (fail-fast, worker init, source) and cancels the rest.
    void fail_pipeline(int32_t result, int32_t status, const Stage *stage, const char *message);
    void admit(uint64_t n) { source_admitted_.fetch_add(n, std::memory_order_relaxed); }
    void segment_done();
    void log(int32_t level, const Stage *stage, const char *message);

    // ---- failure causes (pipeline_failures.cpp) ----
    int32_t set_route_observer(fluxus_failure_fn fn, void *user, fluxus_user_free_fn user_free);
    // The first failure that stopped the pipeline (fail_pipeline), or null. Never changes once
    // set; owned by the pipeline.
    const fluxus_failure *failure() const;

private:
    int32_t validate();
    int32_t validate_graph();  // also computes topo_
    int32_t build_segments();
    void attach_new_stage(Stage *st);
    int32_t new_stage(StageKind kind, const char *name, void (*fn)(), void *user,
                      fluxus_user_free_fn uf, Stage **out);
    // Wakes every pull source's worker (resume, drain).
    void notify_sources();
    static Stage **outlet_slot(Stage &st, uint32_t outlet);  // null: no such outlet
    // The stage of an outlet that leads nowhere yet, or an error naming `what`.
    int32_t free_outlet(uint32_t stage, uint32_t outlet, const char *what, Stage **out);
    bool reaches(const Stage *from, const Stage *to) const;
    void finish();
    void notify_all_tasks();

    Runtime *rt_;
    std::string name_;
    std::vector<std::unique_ptr<Stage>> stages_;
    SourceSpec source_;
    // The graph: the stage the source feeds, where the next added stage attaches (a null
    // stage: the source), and the stages in topological order (computed at start).
    Stage *source_to_ = nullptr;
    Stage *attach_stage_ = nullptr;
    uint32_t attach_outlet_ = 0;
    bool attach_open_ = true;
    std::vector<Stage *> topo_;
    std::vector<std::shared_ptr<void>> keep_alive_;  // released after the stages
    fluxus_item_free_fn item_free_ = nullptr;
    UserRef item_free_user_;
    fluxus_dead_letter_fn dead_letter_ = nullptr;
    UserRef dead_letter_user_;
    bool fusion_ = true;
    uint32_t batch_ = 256;

    std::vector<std::unique_ptr<Segment>> segments_;
    Segment *push_seg_ = nullptr;      // push sources: the segment the host pushes to
    ItemQueue *push_queue_ = nullptr;  // and its input queue
    std::atomic<uint32_t> segments_done_{0};

    std::atomic<int32_t> state_{FLUXUS_STATE_BUILDING};
    std::atomic<bool> cancel_requested_{false};
    std::atomic<bool> drain_requested_{false};
    std::atomic<bool> paused_{false};
    std::atomic<bool> input_closed_{false};
    std::atomic<bool> finished_{false};
    std::atomic<bool> shut_down_{false};
    std::atomic<uint64_t> source_admitted_{0};
    std::atomic<uint64_t> auto_pause_until_{0};
    // Lowers the limit of every registered CallLimit that calls the source (all of them when
    // `cancel`, which also marks them cancelled).
    void stop_calls(bool cancel);
    void stop_source_calls() { stop_calls(false); }
    SpinLock loops_mu_;
    CallLimit *loops_ = nullptr;  // registered CallLimits (a list through prev_/next_)
    std::atomic<uint64_t> source_pauses_{0};
    CircuitBreaker *source_breaker_ = nullptr;  // retained
    std::unique_ptr<CursorTracker> cursor_;
    HandleSlot *handle_slot_ = nullptr;

    std::mutex orphans_mu_;
    std::vector<uint64_t> orphans_;  // see release_items(); rare, so behind a plain mutex
    std::atomic<bool> has_orphans_{false};
    mutable std::mutex mu_;  // guards result_, failure details, start/shut_down transitions
    int32_t result_ = FLUXUS_OK;

    // Failure causes (pipeline_failures.cpp). The route observer hears why an item leaves a
    // stage for its error route or branch; failure_ is the first fatal failure (under mu_, set
    // once, with result_).
    void report_routed(const Stage &stage, uint64_t item, const fluxus_failure &f);
    void record_failure(int32_t status, const Stage *stage, const char *message);
    // "pipeline 'P' ended with CODE[: the failure]" for the last-error message of wait().
    std::string ended_message() const;
    fluxus_failure_fn route_observer_ = nullptr;
    UserRef route_observer_user_;
    FailureRecord failure_;
    std::mutex done_mu_;
    std::condition_variable done_cv_;
};

}  // namespace fluxus
