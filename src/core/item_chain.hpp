// ItemChain: runs a fused run of per-item map, filter and sink stages item by item — each item
// goes through every stage of the run before the next item starts — instead of stage by stage
// over the batch. The stage-by-stage form passes the batch through a buffer once per stage; this
// one keeps the item in a register between callbacks, which is most of the engine's own cost in
// a chain of cheap callbacks. When a pull source feeds the chain, each item goes from the source
// callback straight into it (run_pulled). Each stage still sees its items in order; the interleaving of
// callbacks of different stages is not promised (the busy-time sample batch runs stage by stage).
//
// Only stages whose per-item work is the callback alone qualify: map (no cache), filter and sink
// (not behind a cursor source), without a timeout. Everything else (failures, filtering,
// exceptions) ends an item exactly as apply_stage does, through Pipeline::fail_item and
// Pipeline::destroy_item, with the same messages and the same counters.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/pipeline.hpp"
#include "core/stage.hpp"

namespace fluxus {

struct ChainStep {
    void (*fn)();
    void *user;
    StageKind kind;
    Stage *stage;
};

class ItemChain {
public:
    // Longest run a chain takes in one pass (a longer run is split into several chains): each
    // length has its own unrolled loop.
    static constexpr size_t kMaxSteps = 4;

    // True if `st` can run inside a chain (see above).
    static bool qualifies(const Stage &st, const Pipeline &p);

    // Steps of any kind, maps only, or maps then a sink: the last two test no kind per item.
    enum class Shape { any, maps, maps_sink };

    // Builds the steps for stages[0 .. len).
    void assign(Stage *const *stages, size_t len);
    size_t size() const { return steps_.size(); }

    // Runs items[0..n) through the chain, in place: the survivors of its last stage are
    // compacted into items[0..m) in order and m is returned (0 when the chain ends in a sink).
    // tallies[j] is the tally of step j: its in, out, filtered and failure counters grow here.
    // `count_first_in`: whether step 0's `in` is counted here (a queue head counted it already).
    // *read: the items that entered the chain; fewer than n when the pipeline was cancelled
    // meanwhile (items[*read..n) are untouched, for the caller to end as cancelled).
    size_t run(Pipeline &p, uint64_t *items, size_t n, StageTally *tallies, bool count_first_in,
               size_t *read);

    // A shared batch (segment_share.cpp): claims items before they start, by advancing the
    // claim index in the low half of *range (the high half is the end, which siblings lower
    // when they take the unclaimed tail), and runs shared[index] through the chain. A claim
    // takes 1/parts of the unclaimed rest (at least one item). Stops when a claim reaches the
    // end, after `max` items, or on cancel; what is left unclaimed stays in the share (the
    // caller ends it). Survivors go to items[0..m) as in run(); *read: the items run.
    size_t run_claimed(Pipeline &p, const uint64_t *shared, std::atomic<uint64_t> *range,
                       uint32_t parts, size_t max, uint64_t *items, StageTally *tallies,
                       bool count_first_in, size_t *read);

    // Reads up to `max` items from a pull source and runs each through the chain as it is read
    // (the first step's `in` counts them). *pulled: the items read; *rc: the source's last
    // status (FLUXUS_PULL_ITEM if it gave `max` items, or fewer because the source was stopped
    // meanwhile (Pipeline::CallLimit); FLUXUS_EEXCEPTION if it threw).
    // Otherwise as run().
    size_t run_pulled(Pipeline &p, fluxus_pull_fn pull, void *user, size_t max, uint64_t *items,
                      StageTally *tallies, size_t *pulled, int32_t *rc);

private:
    // The loop behind run() and run_pulled(): items from `feed` (see item_chain.cpp).
    template <class Feed>
    size_t run_feed(Pipeline &p, Feed &feed, size_t max, uint64_t *items, StageTally *tallies,
                    bool count_first_in, size_t *read);
    void settle_counts(size_t n, const uint64_t *stopped, StageTally *tallies,
                       bool count_first_in) const;
    // Under a forced unwind out of a callback: counts what the loop got through (t_unwind),
    // ends the item in the callback (kept by the host) and the unread rest of a batch as
    // cancelled, and leaves the survivors' count in t_unwind for the worker.
    void settle_unwind(Pipeline &p, uint64_t *items, size_t max, StageTally *tallies,
                       const uint64_t *stopped, bool count_first_in, bool rest_in_items) const;
    std::vector<ChainStep> steps_;
    Shape shape_ = Shape::any;
};

}  // namespace fluxus
