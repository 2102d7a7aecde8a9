// ItemChain: see item_chain.hpp. The loop below is the hot path of a fused per-item pipeline.
// Each chain length has its own fully unrolled loop, so per item and step what runs is one
// predicted kind test, the indirect call and its status test: no buffer pass, no loop over the
// steps, no counter in memory (an item that does not get through is counted where it stopped,
// and in/out follow from those counts after the batch). Each call has its own try block, which
// costs nothing until a callback throws.
#include "core/item_chain.hpp"

#include <algorithm>
#include <utility>

#include "util/forced_unwind.hpp"

namespace fluxus {

bool ItemChain::qualifies(const Stage &st, const Pipeline &p) {
    // A sink behind a cursor source ends the item's page (apply_stage does that, not the chain).
    if (st.timeout_ns || st.cache_entries || (st.kind == StageKind::sink && p.cursor()))
        return false;
    return st.kind == StageKind::map || st.kind == StageKind::filter ||
           st.kind == StageKind::sink;
}

void ItemChain::assign(Stage *const *stages, size_t len) {
    steps_.clear();
    for (size_t j = 0; j < len; ++j)
        steps_.push_back(ChainStep{stages[j]->fn, stages[j]->user.user, stages[j]->kind, stages[j]});
    size_t maps = 0;
    while (maps < len && stages[maps]->kind == StageKind::map) ++maps;
    shape_ = maps == len                                                     ? Shape::maps
             : maps == len - 1 && stages[maps]->kind == StageKind::sink ? Shape::maps_sink
                                                                            : Shape::any;
}

namespace {

// Ends an item that did not get through step s: a failed (or throwing) callback, as
// apply_stage would end it.
[[gnu::noinline, gnu::cold]] void stop_failed(Pipeline &p, const ChainStep &s, uint64_t x,
                                              int32_t rc, bool threw, StageTally &t,
                                              uint64_t &stopped) {
    p.fail_item(*s.stage, x, rc, callback_failure_message(s.kind, threw), &t);
    ++stopped;
}

// Ends an item that reached a chain's sink after the pipeline was cancelled: the sink does not
// start once cancel() has returned. Counted in `calls` (the loop adds it to the sink's tally):
// arguments the hot path already holds, so nothing is computed for it before the check.
[[gnu::noinline, gnu::cold]] void withhold_from_sink(Pipeline &p, uint64_t x,
                                                     Pipeline::CallLimit &calls) {
    p.release_item(x, false);  // first: an unwind out of the destructor leaves it uncounted
    ++calls.withheld;
}

// Dropping an item is a filter's ordinary outcome, so this one stays inline (not cold).
inline void stop_filtered(Pipeline &p, uint64_t x, StageTally &t, uint64_t &stopped) {
    ++t.filtered;
    p.destroy_item(x);
    ++stopped;
}

// What a step is known to be at compile time: the common shape (maps, then a sink or a map) has
// no kind test in its loop.
enum class Known { any, map, sink };

// Runs step s on x (replaced by a map's output). False: the item ended here.
// `slot` holds x when a step starts (the loops keep it so): a map writes its output there, so
// a map that returns 0 without writing passes its input on.
// kGated: a sink that is not the chain's first step asks `calls` first whether the pipeline
// was cancelled while the item went through the steps before it (the loop asked before them).
// kIndex: the step's index, which a forced unwind out of its callback records (a constant, so
// the hot path keeps nothing live for it).
template <Known K, bool kGated, size_t kIndex>
[[gnu::always_inline]] inline bool step(Pipeline &p, const ChainStep &s, uint64_t &x,
                                        uint64_t &slot, StageTally &t, uint64_t &stopped,
                                        Pipeline::CallLimit &calls) {
    int32_t rc;
    bool threw = false;
    if (K == Known::map || (K == Known::any && __builtin_expect(s.kind == StageKind::map, 1))) {
        try {
            rc = reinterpret_cast<fluxus_map_fn>(s.fn)(s.user, x, &slot);
        } FLUXUS_ON_FORCED_UNWIND(t_unwind.step = kIndex + 1) catch (...) {
            rc = FLUXUS_EEXCEPTION;
            threw = true;
        }
        if (__builtin_expect(rc == 0, 1)) {
            x = slot;
            return true;
        }
    } else if (K == Known::any && s.kind == StageKind::filter) {
        int32_t keep = 0;
        try {
            rc = reinterpret_cast<fluxus_filter_fn>(s.fn)(s.user, x, &keep);
        } FLUXUS_ON_FORCED_UNWIND(t_unwind.step = kIndex + 1) catch (...) {
            rc = FLUXUS_EEXCEPTION;
            threw = true;
        }
        if (__builtin_expect(rc == 0 && keep, 1)) return true;
        if (rc == 0) {
            try {
                stop_filtered(p, x, t, stopped);
            } FLUXUS_ON_FORCED_UNWIND(t_unwind.step = kIndex + 1)
            return false;
        }
    } else {  // sink: the last step; it owns the item once it accepts it
        if (kGated && __builtin_expect(calls.cancelled(), 0)) {
            try {
                withhold_from_sink(p, x, calls);
            } FLUXUS_ON_FORCED_UNWIND((t_unwind.step = kIndex + 1, t_unwind.ended = false))
            return false;
        }
        try {
            rc = reinterpret_cast<fluxus_sink_fn>(s.fn)(s.user, x);
        } FLUXUS_ON_FORCED_UNWIND(t_unwind.step = kIndex + 1) catch (...) {
            rc = FLUXUS_EEXCEPTION;
            threw = true;
        }
        if (__builtin_expect(rc == 0, 1)) return true;
    }
    // A forced unwind out of the dead-letter callback leaves the item with the host; out of its
    // destructor, ended (t_unwind.ended). Either way it did not get through step kIndex.
    try {
        stop_failed(p, s, x, rc, threw, t, stopped);
    } FLUXUS_ON_FORCED_UNWIND(t_unwind.step = kIndex + 1)
    return false;
}

using Shape = ItemChain::Shape;

template <Shape S, size_t J, size_t L>
constexpr Known known_kind() {
    if (S == Shape::any) return Known::any;
    return S == Shape::maps_sink && J == L - 1 ? Known::sink : Known::map;
}

// Where a chain's items come from. Both write each item into `slot` (where the maps then write
// their outputs) and say false when there is none left. The loop's item limit (a
// Pipeline::CallLimit) drops to 0 on cancel or a fail-fast failure, and for a pull source also
// when the source must stop.
// A batch already read, run in place:
// kRestInItems: whether the items the loop did not reach are in `items` past the ones it read
// (the caller's to end), which a forced unwind then ends as cancelled.
struct BatchFeed {
    static constexpr bool kCallsSource = false;
    static constexpr bool kRestInItems = true;
    const uint64_t *items;
    bool next(size_t i, uint64_t &slot) {
        slot = items[i];
        return true;
    }
};
// A pull source called item by item, each item going straight into the first step. It stops
// at the first status other than FLUXUS_PULL_ITEM (kept in rc; a throwing source gives
// FLUXUS_EEXCEPTION), and as soon as a callback pauses, cancels or fails the pipeline (or trips
// an auto-pause): that lowers the loop's limit to 0, so the source is not called again, as
// when the batch was read before any callback ran.
struct PullFeed {
    static constexpr bool kCallsSource = true;
    static constexpr bool kRestInItems = false;
    fluxus_pull_fn pull;
    void *user;
    int32_t rc = FLUXUS_PULL_ITEM;
    // rc is stored only when the source stops: a store per item would cost an instruction
    // of the hot loop (the feed lives on the stack, its fields are not kept in registers).
    bool next(size_t, uint64_t &slot) {
        int32_t r;
        try {
            r = pull(user, &slot);
        } FLUXUS_CATCH_ALL {
            r = FLUXUS_EEXCEPTION;
        }
        if (__builtin_expect(r == FLUXUS_PULL_ITEM, 1)) return true;
        rc = r;
        return false;
    }
};

// The items of a shared batch (see ItemChain::run_claimed()), claimed a few at a time: each
// claim takes 1/parts of the unclaimed rest (at least one item), so a batch costs a few dozen
// atomic adds rather than one per item, and a sibling that goes idle still finds about half of
// what is left unclaimed. Only this worker claims from the front, so no item is taken twice; a
// sibling that lowered the end meanwhile shortens the claim.
struct ClaimFeed {
    static constexpr bool kCallsSource = false;
    static constexpr bool kRestInItems = false;
    const uint64_t *shared;
    std::atomic<uint64_t> *range;
    uint32_t parts;
    const uint64_t *at = nullptr, *stop = nullptr;  // the current claim, not started yet
    // A new claim as from | to << 32, or 0 when nothing is left. Static, on values: the
    // feed's fields then stay in registers in the loop (a call through `this` would keep them
    // in memory).
    [[gnu::noinline]] static uint64_t claim(std::atomic<uint64_t> *range, uint32_t parts) {
        uint64_t r = range->load(std::memory_order_relaxed);
        uint32_t rest = uint32_t(r >> 32) - uint32_t(r);
        if (int32_t(rest) <= 0) return 0;
        uint32_t c = std::max<uint32_t>(1, rest / parts);
        r = range->fetch_add(c, std::memory_order_acq_rel);
        uint32_t from = uint32_t(r), end = uint32_t(r >> 32);
        if (from >= end) return 0;
        return uint64_t(std::min(from + c, end)) << 32 | from;
    }
    // Hands the claimed items the loop did not start (it stopped on cancel or unwound) back to
    // the share: the claim index has not moved since this claim, as only this worker moves it,
    // and a sibling's cut is never below it.
    void give_back() {
        if (at == stop) return;
        uint64_t lo = uint64_t(at - shared);
        uint64_t r = range->load(std::memory_order_relaxed);
        while (!range->compare_exchange_weak(r, (r >> 32) << 32 | lo, std::memory_order_acq_rel,
                                             std::memory_order_relaxed)) {
        }
        stop = at;
    }
    bool next(size_t, uint64_t &slot) {
        if (__builtin_expect(at == stop, 0)) {
            uint64_t c = claim(range, parts);
            if (c == 0) return false;
            at = shared + uint32_t(c);
            stop = shared + uint32_t(c >> 32);
        }
        slot = *at++;
        return true;
    }
};

// Runs up to `max` items from `feed` through the steps; survivors are compacted into items.
// *read: the items the feed gave. Not inlined: in a function of its own, the loop's pointers
// stay in registers across the callbacks (inlined beside the other shapes and lengths they
// were reloaded from the stack after each call).
template <Shape S, class Feed, size_t... J>
[[gnu::noinline]] size_t run_unrolled(std::index_sequence<J...>, Pipeline &p, Feed &feed_in,
                                      size_t max, const ChainStep *steps, uint64_t *items,
                                      StageTally *tallies, uint64_t *stopped, size_t *read) {
    constexpr size_t L = sizeof...(J);
    size_t m = 0, i = 0;
    uint64_t slot = 0;
    Feed feed = feed_in;  // a local copy the callbacks cannot see: kept in registers
    Pipeline::CallLimit calls(p, max, Feed::kCallsSource);
    try {
        for (; i < calls.get() && feed.next(i, slot); ++i) {
            uint64_t x = slot;
            bool through = (step<known_kind<S, J, L>(), (J > 0 && J == L - 1), J>(
                                p, steps[J], x, slot, tallies[J], stopped[J], calls) &&
                            ...);
            if constexpr (S != Shape::maps_sink) {  // after a sink nothing survives
                if (through) items[m++] = x;        // m <= i: compaction in place
            }
        }
    } FLUXUS_ON_FORCED_UNWIND((t_unwind.read = i, t_unwind.survivors = m,
                               stopped[L - 1] += calls.withheld,
                               tallies[L - 1].cancelled += calls.withheld, feed_in = feed))
    stopped[L - 1] += calls.withheld;
    tallies[L - 1].cancelled += calls.withheld;
    feed_in = feed;
    *read = i;
    return m;
}

template <Shape S, class Feed>
size_t run_length(size_t len, Pipeline &p, Feed &feed, size_t max, const ChainStep *steps,
                  uint64_t *items, StageTally *tallies, uint64_t *stopped, size_t *read) {
    static_assert(ItemChain::kMaxSteps == 4, "one case per chain length");
    switch (len) {
    case 1: return run_unrolled<S>(std::make_index_sequence<1>(), p, feed, max, steps, items, tallies, stopped, read);
    case 2: return run_unrolled<S>(std::make_index_sequence<2>(), p, feed, max, steps, items, tallies, stopped, read);
    case 3: return run_unrolled<S>(std::make_index_sequence<3>(), p, feed, max, steps, items, tallies, stopped, read);
    default: return run_unrolled<S>(std::make_index_sequence<4>(), p, feed, max, steps, items, tallies, stopped, read);
    }
}

}  // namespace

void ItemChain::settle_counts(size_t n, const uint64_t *stopped, StageTally *tallies,
                              bool count_first_in) const {
    uint64_t reached = n;
    for (size_t j = 0; j < steps_.size(); ++j) {
        if (j > 0 || count_first_in) tallies[j].in += reached;
        reached -= stopped[j];
        tallies[j].out += reached;  // a sink's out is what it delivered
    }
}

void ItemChain::settle_unwind(Pipeline &p, uint64_t *items, size_t max, StageTally *tallies,
                              const uint64_t *stopped, bool count_first_in,
                              bool rest_in_items) const {
    if (steps_.back().kind == StageKind::sink) t_unwind.survivors = 0;
    // The items that went all the way through count as usual.
    size_t read = t_unwind.read, entered = read;
    settle_counts(read, stopped, tallies, count_first_in);
    if (t_unwind.step) {
        // The item in the callback reached steps 0..j and stays with the host: cancelled there,
        // not destroyed. Unless it had already ended there (out of its destructor).
        size_t j = t_unwind.step - 1;
        for (size_t k = 0; k <= j; ++k) {
            if (k > 0 || count_first_in) ++tallies[k].in;
            if (k < j) ++tallies[k].out;
        }
        if (!t_unwind.ended) ++tallies[j].cancelled;
        t_unwind.ended = false;
        ++entered;
        t_unwind.step = 0;
    }
    t_unwind.entered = entered;
    if (rest_in_items && entered < max) {
        // The rest of the batch never entered the chain.
        size_t r = max - entered;
        if (count_first_in) tallies[0].in += r;
        tallies[0].cancelled += r;
        p.release_items(items + entered, r, false);
    }
}

template <class Feed>
size_t ItemChain::run_feed(Pipeline &p, Feed &feed, size_t max, uint64_t *items,
                           StageTally *tallies, bool count_first_in, size_t *read) {
    const ChainStep *steps = steps_.data();
    const size_t len = steps_.size();
    uint64_t stopped[kMaxSteps] = {};  // items that ended at step j (failed or filtered)
    size_t m;
    try {
        switch (shape_) {
        case Shape::maps:
            m = run_length<Shape::maps>(len, p, feed, max, steps, items, tallies, stopped, read);
            break;
        case Shape::maps_sink:
            m = run_length<Shape::maps_sink>(len, p, feed, max, steps, items, tallies, stopped,
                                             read);
            break;
        default:
            m = run_length<Shape::any>(len, p, feed, max, steps, items, tallies, stopped, read);
            break;
        }
    } FLUXUS_ON_FORCED_UNWIND(settle_unwind(p, items, max, tallies, stopped, count_first_in,
                                            Feed::kRestInItems))
    settle_counts(*read, stopped, tallies, count_first_in);
    return steps[len - 1].kind == StageKind::sink ? 0 : m;
}

size_t ItemChain::run_pulled(Pipeline &p, fluxus_pull_fn pull, void *user, size_t max,
                             uint64_t *items, StageTally *tallies, size_t *pulled, int32_t *rc) {
    PullFeed feed{pull, user};
    size_t m = run_feed(p, feed, max, items, tallies, true, pulled);
    *rc = feed.rc;
    return m;
}

size_t ItemChain::run(Pipeline &p, uint64_t *items, size_t n, StageTally *tallies,
                      bool count_first_in, size_t *read) {
    BatchFeed feed{items};
    return run_feed(p, feed, n, items, tallies, count_first_in, read);
}

size_t ItemChain::run_claimed(Pipeline &p, const uint64_t *shared, std::atomic<uint64_t> *range,
                              uint32_t parts, size_t max, uint64_t *items,
                              StageTally *tallies, bool count_first_in, size_t *read) {
    ClaimFeed feed{shared, range, std::max<uint32_t>(parts, 1)};
    size_t m;
    try {
        m = run_feed(p, feed, max, items, tallies, count_first_in, read);
    } FLUXUS_ON_FORCED_UNWIND(feed.give_back())
    feed.give_back();
    return m;
}

}  // namespace fluxus
