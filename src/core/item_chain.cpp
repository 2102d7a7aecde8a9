// ItemChain: see item_chain.hpp. The loop below is the hot path of a fused per-item pipeline.
// Each chain length has its own fully unrolled loop, so per item and step what runs is one
// predicted kind test, the indirect call and its status test: no buffer pass, no loop over the
// steps, no counter in memory (an item that does not get through is counted where it stopped,
// and in/out follow from those counts after the batch). Each call has its own try block, which
// costs nothing until a callback throws.
#include "core/item_chain.hpp"

#include <utility>

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
    const char *what;
    switch (s.kind) {
    case StageKind::map: what = threw ? "map callback threw" : "map callback failed"; break;
    case StageKind::filter:
        what = threw ? "filter callback threw" : "filter callback failed";
        break;
    default: what = threw ? "sink callback threw" : "sink callback failed"; break;
    }
    p.fail_item(*s.stage, x, rc, what, &t);
    ++stopped;
}

// Dropping an item is a filter's ordinary outcome, so this one stays inline (not cold).
inline void stop_filtered(Pipeline &p, uint64_t x, StageTally &t,
                                                uint64_t &stopped) {
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
template <Known K>
[[gnu::always_inline]] inline bool step(Pipeline &p, const ChainStep &s, uint64_t &x,
                                        uint64_t &slot, StageTally &t, uint64_t &stopped) {
    int32_t rc;
    bool threw = false;
    if (K == Known::map || (K == Known::any && __builtin_expect(s.kind == StageKind::map, 1))) {
        try {
            rc = reinterpret_cast<fluxus_map_fn>(s.fn)(s.user, x, &slot);
        } catch (...) {
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
        } catch (...) {
            rc = FLUXUS_EEXCEPTION;
            threw = true;
        }
        if (__builtin_expect(rc == 0 && keep, 1)) return true;
        if (rc == 0) {
            stop_filtered(p, x, t, stopped);
            return false;
        }
    } else {  // sink: the last step; it owns the item once it accepts it
        try {
            rc = reinterpret_cast<fluxus_sink_fn>(s.fn)(s.user, x);
        } catch (...) {
            rc = FLUXUS_EEXCEPTION;
            threw = true;
        }
        if (__builtin_expect(rc == 0, 1)) return true;
    }
    stop_failed(p, s, x, rc, threw, t, stopped);
    return false;
}

using Shape = ItemChain::Shape;

template <Shape S, size_t J, size_t L>
constexpr Known known_kind() {
    if (S == Shape::any) return Known::any;
    return S == Shape::maps_sink && J == L - 1 ? Known::sink : Known::map;
}

template <Shape S, size_t... J>
size_t run_unrolled(std::index_sequence<J...>, Pipeline &p, const ChainStep *steps,
                    uint64_t *items, size_t n, StageTally *tallies, uint64_t *stopped) {
    constexpr size_t L = sizeof...(J);
    size_t m = 0;
    uint64_t slot;
    for (size_t i = 0; i < n; ++i) {
        uint64_t x = items[i];
        slot = x;
        bool through =
            (step<known_kind<S, J, L>()>(p, steps[J], x, slot, tallies[J], stopped[J]) && ...);
        if constexpr (S != Shape::maps_sink) {  // after a sink nothing survives
            if (through) items[m++] = x;        // m <= i: compaction in place
        }
    }
    return m;
}

// The same loop with a pull source in front: each item goes from the source callback straight
// into the first step. Stops at the first status other than FLUXUS_PULL_ITEM (*rc; a throwing
// source gives FLUXUS_EEXCEPTION); *pulled: the items read.
template <Shape S, size_t... J>
size_t pull_unrolled(std::index_sequence<J...>, Pipeline &p, fluxus_pull_fn pull, void *user,
                     size_t max, const ChainStep *steps, uint64_t *items, StageTally *tallies,
                     uint64_t *stopped, size_t *pulled, int32_t *rc) {
    constexpr size_t L = sizeof...(J);
    size_t m = 0, i = 0;
    int32_t r = FLUXUS_PULL_ITEM;
    uint64_t slot = 0;  // the source writes each item here, and each map its output
    // A callback may pause, cancel or fail the pipeline (or trip an auto-pause): from then on
    // the source is not called, as when the batch was read before any callback ran.
    const std::atomic<uint32_t> &stops = p.source_stops();
    const uint32_t stops_at_start = stops.load(std::memory_order_relaxed);
    for (; i < max; ++i) {
        if (__builtin_expect(stops.load(std::memory_order_relaxed) != stops_at_start, 0)) break;
        try {
            r = pull(user, &slot);
        } catch (...) {
            r = FLUXUS_EEXCEPTION;
        }
        if (__builtin_expect(r != FLUXUS_PULL_ITEM, 0)) break;
        uint64_t x = slot;
        bool through =
            (step<known_kind<S, J, L>()>(p, steps[J], x, slot, tallies[J], stopped[J]) && ...);
        if constexpr (S != Shape::maps_sink) {
            if (through) items[m++] = x;
        }
    }
    *pulled = i;
    *rc = r;
    return m;
}

template <Shape S>
size_t pull_shape(size_t len, Pipeline &p, fluxus_pull_fn pull, void *user, size_t max,
                  const ChainStep *steps, uint64_t *items, StageTally *tallies, uint64_t *stopped,
                  size_t *pulled, int32_t *rc) {
    switch (len) {
    case 1: return pull_unrolled<S>(std::make_index_sequence<1>(), p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
    case 2: return pull_unrolled<S>(std::make_index_sequence<2>(), p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
    case 3: return pull_unrolled<S>(std::make_index_sequence<3>(), p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
    default: return pull_unrolled<S>(std::make_index_sequence<4>(), p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
    }
}

template <Shape S>
size_t run_shape(size_t len, Pipeline &p, const ChainStep *steps, uint64_t *items, size_t n,
                 StageTally *tallies, uint64_t *stopped) {
    switch (len) {
    case 1: return run_unrolled<S>(std::make_index_sequence<1>(), p, steps, items, n, tallies, stopped);
    case 2: return run_unrolled<S>(std::make_index_sequence<2>(), p, steps, items, n, tallies, stopped);
    case 3: return run_unrolled<S>(std::make_index_sequence<3>(), p, steps, items, n, tallies, stopped);
    default: return run_unrolled<S>(std::make_index_sequence<4>(), p, steps, items, n, tallies, stopped);
    }
    static_assert(ItemChain::kMaxSteps == 4, "one case per chain length");
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

size_t ItemChain::run_pulled(Pipeline &p, fluxus_pull_fn pull, void *user, size_t max,
                             uint64_t *items, StageTally *tallies, size_t *pulled, int32_t *rc) {
    const ChainStep *steps = steps_.data();
    const size_t len = steps_.size();
    uint64_t stopped[kMaxSteps] = {};
    size_t m;
    switch (shape_) {
    case Shape::maps:
        m = pull_shape<Shape::maps>(len, p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
        break;
    case Shape::maps_sink:
        m = pull_shape<Shape::maps_sink>(len, p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
        break;
    default:
        m = pull_shape<Shape::any>(len, p, pull, user, max, steps, items, tallies, stopped, pulled, rc);
        break;
    }
    settle_counts(*pulled, stopped, tallies, true);
    return steps[len - 1].kind == StageKind::sink ? 0 : m;
}

size_t ItemChain::run(Pipeline &p, uint64_t *items, size_t n, StageTally *tallies,
                      bool count_first_in) {
    const ChainStep *steps = steps_.data();
    const size_t len = steps_.size();
    uint64_t stopped[kMaxSteps] = {};  // items that ended at step j (failed or filtered)
    size_t m;
    switch (shape_) {
    case Shape::maps: m = run_shape<Shape::maps>(len, p, steps, items, n, tallies, stopped); break;
    case Shape::maps_sink:
        m = run_shape<Shape::maps_sink>(len, p, steps, items, n, tallies, stopped);
        break;
    default: m = run_shape<Shape::any>(len, p, steps, items, n, tallies, stopped); break;
    }
    settle_counts(n, stopped, tallies, count_first_in);
    return steps[len - 1].kind == StageKind::sink ? 0 : m;
}

}  // namespace fluxus
