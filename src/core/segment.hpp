// Segment: a run of stages fused into one task per worker, fed by one input (the pull source or
// an ItemQueue) and feeding the next segment's queue. A segment with several workers holds one
// stage; in ordered mode its outputs pass through a reorder window of batch tickets.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/current_call.hpp"
#include "core/item_chain.hpp"
#include "core/pipeline.hpp"
#include "dedup/key_set.hpp"
#include "flow/debouncer.hpp"
#include "flow/key_window.hpp"
#include "flow/join_table.hpp"
#include "flow/keyed_windows.hpp"
#include "flow/sliding_windows.hpp"
#include "flow/throttler.hpp"
#include "flow/ttl_cache.hpp"
#include "queue/item_queue.hpp"
#include "runtime/task.hpp"
#include "util/forced_unwind.hpp"
#include "util/spin_mutex.hpp"

struct fluxus_emitter {
    uint32_t magic;
    std::vector<uint64_t> *out;
    bool keep_input;
    fluxus::CursorTracker *cursor;  // cursor sources: children join their page as emitted
};

namespace fluxus {

// Marks an emitter; only the one of the flat-map call running on this thread is live.
constexpr uint32_t kEmitterMagic = 0x454d4954;  // "EMIT"
extern thread_local fluxus_emitter *t_live_emitter;

class SegmentWorker;

// Bounded reorder window for ordered multi-worker segments: batch tickets are handed out at
// pop time; finished batches wait in their slot until every earlier ticket has gone downstream.
class ReorderWindow {
public:
    void init(uint32_t slots) { slots_.resize(slots); }
    // Reserves room for one more batch in flight, or registers `w` to be woken when there is.
    bool reserve(SegmentWorker *w);
    void unreserve();
    // Stores ticket's output and pushes every ready batch downstream in ticket order.
    void commit(uint64_t ticket, PendingItems &out, SegmentWorker *w);
    // Pushes ready batches; false if blocked downstream (w is then woken on room).
    bool flush(SegmentWorker *w);
    bool empty();
    // Cancellation: ends every stored batch as cancelled.
    void cancel_all(Segment &seg);

private:
    bool flush_locked(SegmentWorker *w, std::vector<Task *> &wake);
    struct Slot {
        bool ready = false;
        PendingItems items;
    };
    std::mutex mu_;
    std::vector<Slot> slots_;
    uint64_t next_ = 0;         // oldest ticket not yet sent downstream
    uint32_t outstanding_ = 0;  // tickets reserved and not yet sent downstream
    std::vector<Task *> waiters_;
};

// Shared batches (segment_share.cpp). A worker of a stage with several workers publishes the
// batch it took as a BatchShare and claims its items from the front, a few at a time; a sibling
// with nothing to do takes the unstarted half of the tail (a thief), publishes that part as its
// own share, and so on. In ordered mode the parts of one batch meet in a BatchJoin, and the
// part that finishes last hands the whole batch's output to the reorder window under the
// batch's ticket.
struct BatchJoin {
    std::mutex mu;
    uint64_t ticket = 0;
    uint32_t open = 0;  // parts still running (under mu)
    std::vector<std::pair<uint32_t, std::vector<uint64_t>>> parts;  // (first index, outputs)
};

struct BatchShare {
    // Low 32 bits: the next unstarted index; high 32 bits: the end. The owner claims with a
    // fetch_add on the low half; a thief lowers the end with a CAS while it holds `mu`. Both
    // halves are indices into the owner's items, so lo > end (a claim past the end) means empty.
    std::atomic<uint64_t> range{0};
    // Held by a thief while it copies the items it took, and by the owner to retire the share:
    // the owner's item buffer is never reused under a thief.
    SpinLock mu;
    BatchJoin *join = nullptr;  // ordered: where the parts meet (under mu; set by the first thief)
    uint32_t base = 0;          // index of the first item in the original batch
    uint64_t ticket = 0;        // ordered: the original batch's ticket
};

class Segment {
public:
    Pipeline *p = nullptr;
    std::vector<Stage *> stages;         // fused chain; empty for a lone source segment
    bool pull_input = false;             // input is a pull source: this one
    const SourceSpec *source = nullptr;
    Stage *source_stage = nullptr;       // an extra source's stage (counts its items)
    std::unique_ptr<ItemQueue> input;    // otherwise: the queue in front of stages[0]
    // Downstream: outs[r] takes outlet r of the tail stage (none after a sink). A router tail
    // splits its output across them; otherwise `next` is outs[0]. error_out takes the head's
    // error branch. targets: every distinct downstream segment (each closed once at the end).
    std::vector<Segment *> outs;
    Segment *next = nullptr;
    bool split = false;
    Segment *error_out = nullptr;
    std::vector<Segment *> targets;
    uint32_t workers = 1;
    bool ordered = false;                // several workers, output restored to input order
    bool keyed = false;                  // one input lane per worker (order per key)
    std::vector<std::unique_ptr<SegmentWorker>> tasks;
    ReorderWindow reorder;
    std::mutex ticket_mu;                // pop + ticket assignment are one step
    uint64_t next_ticket = 0;
    std::atomic<uint32_t> exhausted{0};
    std::atomic<bool> output_closed{false};
    bool shares = false;  // several workers share their batches (see BatchShare)
    // Shared batches: workers between taking a batch from the queue and publishing it (or
    // deciding not to). A worker that finds the queue drained does not count itself done
    // while this is not 0: the batch a sibling just took may still become stealable.
    std::atomic<uint32_t> taking{0};

    Stage *head() const { return stages.empty() ? nullptr : stages[0]; }
    // The stage the output goes to, or null.
    Stage *out_stage() const { return next ? next->head() : nullptr; }
    // Appends `items` to `pend` for this segment's input, with lanes when it is keyed. Items
    // whose key callback fails end here, at the head stage.
    void stage_items(const uint64_t *items, size_t n, PendingItems &pend);
    // Hands `pend` to this segment's input queue under the head stage's overflow policy.
    // Returns false if blocked; then `w` (if set) is woken when there is room.
    bool accept(PendingItems &pend, SegmentWorker *w);
    void prepare_out(const uint64_t *items, size_t n, PendingItems &pend) {
        next->stage_items(items, n, pend);
    }
    bool push_out(PendingItems &pend, SegmentWorker *w) { return next->accept(pend, w); }
    // Called once per worker when it has nothing left; closes the output after the last.
    void worker_exhausted();
    void try_close_output();
};

// Set by a worker while callbacks of its retrying head stage run (and while it settles their
// failures), so Pipeline::fail_item can hand a failure back to it for another attempt.
struct RetryScope {
    SegmentWorker *worker;
    Stage *stage;
    uint32_t attempt;  // of the item whose callback is running (1 = first call)
    bool refusal;      // a circuit breaker refused the attempt: report it, never retry it
};
extern thread_local RetryScope *t_retry_scope;

// Per-worker state of one fused stage.
struct WorkerStageState {
public:
    std::unique_ptr<KeySet> keys;  // dedup only
    std::unique_ptr<Throttler> throttle;  // throttle, and dedup with a time-to-live
    std::unique_ptr<KeyWindow> window;     // dedup of the last N keys
    std::unique_ptr<KeyedWindows> windows;  // window stages
    std::unique_ptr<SlidingWindows> sliding;  // sliding window stages
    std::unique_ptr<JoinTable> join;          // join stages
    std::unique_ptr<TtlCache> cache;          // a cache in front of a map or loader
    std::vector<uint64_t> gone;               // values leaving the cache, to release
    std::unique_ptr<Debouncer> debounce;
    std::vector<int8_t> verdict;   // dedup: per-item result of the batch insert
    std::vector<int32_t> status, keep;  // batch callbacks: per-item out-arrays
    std::vector<uint32_t> route;  // router: the route of each output item
    std::vector<uint32_t> chosen;  // router: the routes one item goes to (one per route)
    std::vector<uint8_t> taken;    // router: routes already in `chosen` (duplicates)
    CallErrors *call = nullptr;   // the worker's: texts its callbacks attach to failures

    int32_t *zeroed_status(size_t n) { return zeroed(status, n); }
    int32_t *zeroed_keep(size_t n) { return zeroed(keep, n); }

private:
    static int32_t *zeroed(std::vector<int32_t> &v, size_t n) {
        if (v.size() < n) v.resize(n);
        std::fill(v.begin(), v.begin() + n, 0);
        return v.data();
    }
};

class SegmentWorker : public Task {
public:
    SegmentWorker(Runtime *rt, Segment *seg, uint32_t index);
    void run() override;
    // The pipeline is cancelled (it ends with FLUXUS_ECANCELED) and a concurrency permit this
    // worker held goes back; the batch's items were ended by the loops the unwind left.
    void on_forced_unwind() override;
    // Schedules another attempt of `item` after a callback failure with `status`, if the head
    // stage's retry policy allows one. False: the item fails now.
    bool park_retry(uint64_t item, int32_t status);
    // Takes a failed item for the head stage's error route (sent by flush_routes()).
    void route_failed(uint64_t item) { route_pending_.push_back(item); }
    struct RetryEntry {
        uint64_t due, seq, item;
        uint32_t attempt;
    };
    uint64_t head_failures = 0;  // callback failures of the head stage (circuit breaker)
    uint64_t head_cancels = 0;   // its callbacks that returned FLUXUS_ECANCELED

    Segment *seg;
    uint32_t index;
    PendingItems pending;  // output not yet accepted downstream (unordered path)
    std::vector<PendingItems> split_;  // the same per outlet, when a router ends the segment
    bool has_output() const {
        if (!pending.empty()) return true;
        for (const PendingItems &s : split_)
            if (!s.empty()) return true;
        return false;
    }
    // Hands held output downstream. False: some queue is full (this worker is woken on room).
    bool flush_output();
    // Shared batches: set while this worker is parked with nothing to do, so that a sibling
    // that publishes stealable items wakes it.
    std::atomic<bool> wants_work{false};

private:
    size_t fetch(bool *drained);
    size_t pull(bool *drained);
    // The parts of pull() around the read: how many items may be read now (0: none, see
    // *drained), and the bookkeeping of a read of n items that returned rc.
    size_t pull_quota(bool *drained, uint32_t *granted);
    void pull_settle(size_t n, int32_t rc, uint32_t granted, bool *drained);
    // A pull source whose items go straight into the chain of the first stages: reads, runs the
    // chain and the stages behind it (as process() does). Returns the items read.
    size_t pull_through_chain(bool *drained);
    bool pull_chain_ = false;  // the segment is such a source and chain
    // When that chain is the whole segment and ends in a sink, nothing is moved between stages
    // and a pass may read several batches: fewer passes cost less bookkeeping. pass_batches_
    // follows the sampled time of the source and callbacks so that a pass stays within
    // kPassBudgetNs; sample_source_ns_ is the source's part of the last sample.
    bool chain_to_sink_ = false;
    uint32_t pass_batches_ = 1;
    uint64_t sample_source_ns_ = 0;
    // Runs a_[0..n) through the fused stages from `first` on; the survivors end up in a_.
    // Once the pipeline is cancelled no stage starts: the items left end as cancelled.
    void process(size_t n, size_t first = 0);
    // Under a forced unwind out of a callback (see util/forced_unwind.hpp): ends the survivors
    // of the interrupted loop (t_unwind.survivors, in buf) at stage `next` of this segment or
    // downstream as cancelled, and flushes the tallies. `stage`: the stage whose per-item loop
    // was interrupted, SIZE_MAX for a chain (which counted its own outputs).
    void end_unwound(size_t next, const uint64_t *buf, size_t stage);
    struct UnwindAt {
        size_t stage;  // a chain: the stage after it; else the stage being applied
        bool chain;
    };
    // Ends items that were headed for stage k (of this segment) as cancelled, in its tally.
    void cancel_unstarted(size_t k, const uint64_t *items, size_t n, bool count_in);
    // Async head: completions go on, new items start, timeouts fire (see run_async).
    void run_async();
    void start_async(size_t n, uint64_t now, const uint32_t *attempts = nullptr);
    size_t settle_async();
    // Debounce head: held items go on once their key is quiet (see run_debounce).
    void run_debounce();
    // Batch head: groups input by size and linger, then runs the group (see run_batching).
    void run_batching();
    std::vector<uint64_t> group_;
    // Reduce head: folds input per key; the accumulators go on at end of input.
    void run_reduce();
    // Window head: per-key windows go to the aggregate callback as they close.
    void run_windows();
    // Runs the aggregate callback over closed windows; their outputs go on. False: stop.
    bool fire_windows(std::vector<KeyedWindows::Closed> &closed);
    std::vector<KeyedWindows::Closed> closed_;
    // Sliding windows: the items of a window callback that ended its thread. They stay with the
    // host: cancel_all() counts them cancelled without destroying them.
    std::vector<uint64_t> host_kept_;
    // Join head: keys wait for every input; complete sets go to the callback (see run_join).
    void run_join();
    bool fire_joins();
    std::vector<JoinTable::Done> joined_;
    // Ends the items a window or join callback consumed (rc 0) or failed with (rc != 0).
    void end_consumed(const std::vector<uint64_t> &items, int32_t rc, bool keep_input,
                      const char *what);
    // Runs a window's or join's callback over `items`, collecting into `out`, and ends them.
    void fire_set(const std::vector<uint64_t> &items, uint64_t start_ns,
                  std::vector<uint64_t> &out, const char *what);
    // Sends what a head callback emitted on. False: stop this run.
    bool send_emitted(std::vector<uint64_t> &out);
    // Under a forced unwind: what a head callback emitted is counted and cancelled downstream.
    void unwind_emitted(std::vector<uint64_t> &out);
    // Under a forced unwind out of a callback for items[i] of a head's input loop: that item
    // stays with the host (cancelled, not destroyed) unless `held` is false or it had ended, the
    // rest is cancelled, and the head's tally is flushed.
    void unwind_input(const uint64_t *items, size_t i, size_t n, bool held);
    // Sliding window head: as run_windows, with items held across windows.
    void run_sliding();
    std::unordered_map<Key128, size_t, Key128Hash> acc_index_;  // key -> position in accs_
    std::vector<uint64_t> accs_;  // accumulators, in order of each key's first item
    uint64_t group_since_ = 0;  // when the group's first item arrived
    // Runs a_[0..n) through the stages behind the head and on; false: stop this run.
    bool send_on(size_t n);
    // The key of an input item, or false after failing the item at the head.
    bool key_or_fail(uint64_t item, Key128 *key, const char *what);
    // Arms one wake-up for `deadline` unless an earlier one is already armed.
    void arm_timer(uint64_t deadline, uint64_t now);
    // The batch loop of ordinary segments (run() holds a concurrency permit around it).
    void run_batches();
    // Input for the head stage, at most `max` items into a_, through the head's rate limiter
    // if it has one (items wait in held_ for tokens). 0 with *drained false: wait for a wake-up.
    size_t take_input(size_t max, uint64_t now, bool *drained);
    // Async head with a concurrency limiter: keeps one permit per item in flight.
    void reconcile_permits();
    void deliver();
    // Router tail: sorts the batch's output by route and hands each route its share.
    void deliver_split();
    std::vector<std::vector<uint64_t>> buckets_;
    void cancel_all();
    void exhaust();
    // Releases what the worker's caches hold (at its end).
    void release_caches();
    bool init_hooks();
    void close_hooks();
    // Texts the callbacks of this worker attach to their failures (current_call.hpp); the
    // thread running the worker points at it.
    CallErrors call_errors_;

    std::vector<uint64_t> a_, b_;  // batch buffers: input, then output of each stage in turn
    // Shared batches (segment_share.cpp; only when seg->shares). shared_ holds the items of the
    // live share; claim_ is how many items one claim takes: as many as the callbacks get through
    // in kClaimBudgetNs by the last measurement, and 1 until something was measured.
    BatchShare share_;
    std::vector<uint64_t> shared_;
    std::vector<uint64_t> share_out_;  // ordered: this part's outputs so far, in order
    bool live_share_ = false;
    uint32_t share_n_ = 0;  // items in the live share (shared_ may be longer)
    // The head is an item chain (a map or filter): it claims its items one at a time inside
    // the chain's loop (ItemChain::run_claimed()), so claim_ is not used. claiming_: process()
    // runs the live share that way.
    bool claims_in_loop_ = false;
    bool claiming_ = false;
    uint32_t claim_ = 1;
    // Whether a batch of n items just taken is shared (see segment_share.cpp).
    bool worth_sharing(size_t n);
    // Publishes shared_[0..n) as this worker's share and wakes idle siblings.
    void publish_share(uint32_t n, uint32_t base, BatchJoin *join, uint64_t ticket);
    // Claims and runs the next items of the live share. False: stop this run (parked or
    // cancelled).
    bool run_share();
    // Takes the unstarted half of the tail of a sibling's share. False: nothing to take.
    bool steal();
    // Parks as idle (wants_work) and looks once more for something to steal.
    bool idle_or_steal();
    // The queue is drained: true once no sibling is between taking a batch and publishing it
    // and nothing is left to steal (this worker may then count itself done); false when it
    // took part of a sibling's batch instead.
    bool nothing_left_to_steal();
    // The live share is done: retire it and, ordered, hand its part on (see BatchJoin).
    void finish_share();
    // Cancellation: the unclaimed items of the live share end as cancelled.
    void abandon_share();
    void wake_idle_siblings();
    void commit_ordered(uint64_t ticket, const uint64_t *items, size_t n);
    // Sets claim_ from a measurement: k items took dt ns.
    void note_claim_time(size_t k, uint64_t dt);
    size_t out_n_ = 0;             // items of the last processed batch, in a_
    uint64_t ticket_ = 0;
    // Ordered: ticket_ is reserved in the reorder window and not yet committed (a forced unwind
    // out of a callback commits it empty, or the window would wait for it forever).
    bool ticket_open_ = false;
    // Busy-time sampling: batches processed (a pass of several batches counts each of them) and
    // the count at which the next batch is timed.
    uint64_t batches_ = 0;
    uint64_t next_sample_ = 0;
    uint64_t cursor_pos_ = 0;  // cursor source: where the next read starts
    std::vector<WorkerStageState> state_;
    std::vector<StageTally> tally_;
    // chain_at_[k]: the per-item chain of the stages from k on (empty where stage k does not
    // qualify); process() runs it instead of those stages one by one, except in timed batches
    // (which run each such stage alone, timed).
    std::vector<ItemChain> chain_at_;
    std::vector<ItemChain> step_at_;  // stage k alone, for the timed batches
    bool initialized_ = false;
    bool init_ok_ = false;
    bool is_exhausted_ = false;
    // A concurrency-limited worker holds a permit while it runs batches; ending meanwhile waits
    // until the permit is back (see run()).
    bool holding_permit_ = false;
    bool exhaust_deferred_ = false;
    bool source_ended_ = false;
    // Async head only.
    std::vector<AsyncSlots::Ended> ended_;
    bool input_drained_ = false;
    uint64_t timer_at_ = 0;  // deadline of the timeout wake-up already armed (0: none)
    std::vector<uint64_t> emit_;  // debounce: items to send on
    // Rate-limited head: items taken from the queue that wait for tokens, in order.
    std::vector<uint64_t> held_;
    size_t held_head_ = 0;
    uint64_t held_since_ = 0;
    uint32_t permits_ = 0;  // concurrency permits held (async head)
    // Items waiting for a retry: a min-heap by due time (then arrival), woken by arm_timer.
    std::vector<RetryEntry> retries_;
    uint64_t retry_seq_ = 0, retry_draws_ = 0;
    uint32_t attempt_ = 1;  // attempt of the item being run (retries run one at a time)
    // Takes up to `max` retries due at `now` into `out` (item, attempt).
    size_t take_due_retries(uint64_t now, size_t max, std::vector<RetryEntry> &out);
    void cancel_retries();
    std::vector<RetryEntry> due_;
    // Circuit breaker: items taken but not yet run (refused in wait mode, or stopped by a full
    // queue downstream), in order, with their attempt counts.
    std::vector<RetryEntry> blocked_;
    // Failed items on their way to the error route's pipeline or the error branch, in order;
    // for the branch, then staged for its queue in error_pend_.
    std::vector<uint64_t> route_pending_;
    PendingItems error_pend_;
    bool routes_waiting() const { return !route_pending_.empty() || !error_pend_.empty(); }
    bool flush_error_branch();
    // Pushes route_pending_ into the route's pipeline. False: it is full, try again later (a
    // timer is armed); the caller stops taking input meanwhile (backpressure).
    bool flush_routes();
    // Runs a_[0..n) (attempts[i] or 1) one guarded call at a time. False: stop this run.
    bool run_guarded(size_t n, const uint32_t *attempts);
    // Asks the head's breaker for one call. False: refused (the item was failed, or the caller
    // must block it when `*wait`).
    bool breaker_allows(uint64_t now, uint64_t *epoch, bool *wait);
};

// Calls the stage's key function and digests the bytes it returns. Returns 0, the callback's
// nonzero status, or FLUXUS_EINVAL for a NULL key with a nonzero length. May throw what the
// callback throws.
int32_t byte_key_digest(const Stage &st, uint64_t item, Key128 *out);
// The key of an item for per-key state: the digest of the key function's bytes, or the word.
inline int32_t stage_key(const Stage &st, uint64_t item, Key128 *out) {
    if (st.key_fn) return byte_key_digest(st, item, out);
    *out = word_key(item);
    return 0;
}

// The key of `item` at `st`, or false after failing the item there with `what` (a key callback
// that fails or throws). `t`: the caller's tally of that stage.
bool key_or_fail(Pipeline &p, Stage &st, uint64_t item, Key128 *key, const char *what,
                 StageTally *t);

// Runs one stage over a batch: reads in[0..n), writes the survivors to out (resized as needed)
// and returns their count. Failures and drops are ended through the pipeline.
size_t apply_stage(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                   std::vector<uint64_t> &out, StageTally &t);

// Runs a router (or broadcast) over a batch: out gets each item and its copies, ws.route the
// route of each (see router.cpp).
// Tells an async stage's cancel hook (if it has one) that fluxus gave up on a started item
// (`why`: FLUXUS_ETIMEDOUT or FLUXUS_ECANCELED). Call it only once the item's completion can no
// longer be accepted.
void tell_async_abandoned(Stage &st, uint64_t item, uint64_t token, int32_t why);

size_t apply_router(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                    std::vector<uint64_t> &out, StageTally &t);

// A map with a cache in front, and the loader (one load call per group of items for their
// distinct keys, answered from the cache when it has them; see lookups.cpp).
size_t apply_cached_map(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in,
                        size_t n, std::vector<uint64_t> &out, StageTally &t);
size_t apply_loader(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                    std::vector<uint64_t> &out, StageTally &t);


}  // namespace fluxus
