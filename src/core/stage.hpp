// Stage: what the host declared for one step of a pipeline (kind, callback, options) plus its
// live counters. Declared before start and immutable afterwards, except for the counters.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/async_slots.hpp"
#include "core/failure_record.hpp"
#include "core/source_spec.hpp"
#include "flow/retry_policy.hpp"
#include "util/user_ref.hpp"

#include "fluxus.h"

namespace fluxus {

class ItemQueue;
class RateLimiter;
class ConcurrencyLimiter;
class CircuitBreaker;

enum class StageKind : uint8_t {
    map,
    map_batch,
    filter,
    filter_batch,
    flat_map,
    flat_map_batch,
    dedup,
    sink,
    sink_batch,
    async_map,
    debounce,
    throttle,
    batch,  // groups by size and linger, then a flat-map-batch callback
    reduce,  // folds items into one accumulator per key, emitted at end of input
    window,  // per-key windows handed to an aggregate callback
    router,  // each item to the routes its selector picks (broadcast: every route)
    join,    // waits per key for one item of every input, then an aggregate callback
    loader,  // groups by size and linger, one load call per group for its distinct keys
    source,  // an extra pull source: a stage with no input (see Stage::source)
};

const char *stage_kind_name(StageKind kind);

// The failure message of a map, filter or sink callback that failed (or threw), one text for
// both the batch path (stage_apply.cpp) and the per-item chains (item_chain.cpp).
inline const char *callback_failure_message(StageKind kind, bool threw) {
    switch (kind) {
    case StageKind::map: return threw ? "map callback threw" : "map callback failed";
    case StageKind::filter: return threw ? "filter callback threw" : "filter callback failed";
    default: return threw ? "sink callback threw" : "sink callback failed";
    }
}


// Outcome counters of one stage. Workers add their per-batch tallies with relaxed atomics, so a
// reader sees each batch's effect whole or not at all per counter.
struct StageCounters {
    std::atomic<uint64_t> in{0}, out{0}, filtered{0}, failed{0}, dead_lettered{0}, cancelled{0},
        dropped{0}, spawned{0}, busy_ns{0}, held_at_deadline{0}, dedup_keys{0},
        dedup_forgotten{0}, timed_out{0}, retries{0}, retry_waiting{0}, routed{0},
        cache_hits{0}, cache_misses{0};

    uint64_t ended() const {
        return out.load() + filtered.load() + failed.load() + dead_lettered.load() +
               cancelled.load();
    }
};

struct Stage {
    uint32_t index = 0;
    std::string name;
    StageKind kind = StageKind::map;
    void (*fn)() = nullptr;  // the callback, cast back according to `kind`
    UserRef user;

    uint32_t workers = 1;
    int32_t order = FLUXUS_ORDER_ORDERED;
    uint32_t reorder_window = 0;  // batches; 0 = 4 per worker
    uint32_t capacity = 1024;
    int32_t overflow = FLUXUS_OVERFLOW_BLOCK;
    uint64_t overflow_timeout_us = 0;  // FLUXUS_OVERFLOW_BLOCK_TIMEOUT: longest wait
    int32_t error_policy = FLUXUS_ERROR_FAIL_FAST;
    fluxus_worker_init_fn init = nullptr;
    fluxus_worker_close_fn close = nullptr;
    fluxus_key_fn key_fn = nullptr;
    UserRef key_user;
    uint64_t dedup_max_keys = 0;
    uint64_t dedup_ttl_ns = 0;   // windowed dedup: a key is remembered this long after it passed
    uint64_t dedup_window = 0;   // windowed dedup: the last N distinct keys
    uint32_t in_flight = 256;  // async: started and not yet completed (and, ordered, emitted)
    fluxus_async_cancel_fn async_cancel = nullptr;  // async: told when an item is abandoned
    UserRef async_cancel_user;
    uint64_t timeout_ns = 0;   // per-item time limit in the stage; 0 = none
    std::unique_ptr<AsyncSlots> async;  // async stages, once started
    uint64_t period_ns = 0;             // debounce: quiet period; throttle: period
    uint64_t debounce_max_keys = 1u << 20;
    int32_t window_kind = 0;      // window: FLUXUS_WINDOW_*
    uint64_t window_size = 0;     // window: items, or ns for time and session windows
    uint64_t window_step = 0;     // sliding windows: items or ns between starts (0: tumbling)
    uint32_t join_inputs = 0;         // join: inputs 0..n-1
    fluxus_join_input_fn join_input = nullptr;  // join: names an item's input (shares `user`)
    uint64_t join_timeout_ns = 0;     // join: incomplete keys fail after this (0: never)
    uint64_t join_max_keys = 1u << 20;  // join: keys waiting at most
    fluxus_attach_fn loader_attach = nullptr;  // loader: a waiter's output (shares `user`)
    // Cache in front of a map or loader: entries (0: none), time-to-live, and the copy callback
    // for map outputs handed out from it (null: outputs are plain values).
    uint64_t cache_entries = 0, cache_ttl_ns = 0;
    fluxus_copy_fn cache_copy = nullptr;
    UserRef cache_copy_user;
    uint32_t batch_max = 0;       // batch, loader: items per group
    uint64_t batch_linger_ns = 0;  // batch: longest wait of a group's first item
    RateLimiter *rate_limiter = nullptr;        // retained; tokens per item taken in
    uint32_t rate_wait_timeout_ms = UINT32_MAX;  // longest wait for a token (UINT32_MAX: none)
    ConcurrencyLimiter *concurrency = nullptr;  // retained; permits per running call/item
    RetryPolicy retry;
    uintptr_t error_route = 0;  // handle of the pipeline that takes failed items (0: none)
    CircuitBreaker *breaker = nullptr;  // retained; asked before every call
    bool breaker_wait = false;          // refused items wait (else they fail)
    // Pause the source when `pause_threshold` items fail here within `pause_window_ns`.
    uint32_t pause_threshold = 0;
    uint64_t pause_window_ns = 0, pause_ns = 0;
    std::mutex pause_mu;
    std::deque<uint64_t> recent_failures;  // times of the last failures (at most threshold)

    // Graph edges. outlets[r]: where outlet r leads (null: nowhere yet); one outlet for an
    // ordinary stage, one per route for a router, none for a sink. error_to: the error branch.
    std::vector<Stage *> outlets;
    std::vector<std::string> route_names;  // routers
    uint32_t default_route = UINT32_MAX;   // routers: where an empty selection goes
    fluxus_copy_fn copy = nullptr;         // routers: copies for the second route on
    UserRef copy_user;
    Stage *error_to = nullptr;
    uint32_t inputs = 0;  // edges that lead here (the source's counts)
    std::unique_ptr<SourceSpec> source;  // source stages: the pull callback (user borrowed)

    StageCounters c;
    ItemQueue *queue = nullptr;  // its input queue once started; null when fused behind another

    bool is_sink() const { return kind == StageKind::sink || kind == StageKind::sink_batch; }
    bool per_key() const { return order == FLUXUS_ORDER_PER_KEY && workers > 1; }
    bool is_async() const { return kind == StageKind::async_map; }
    // Stages that must head their own segment: their worker does more than run a batch.
    bool needs_own_segment() const {
        return is_async() || kind == StageKind::debounce || kind == StageKind::batch ||
               kind == StageKind::loader ||
               kind == StageKind::reduce || kind == StageKind::window ||
               kind == StageKind::join || rate_limiter || concurrency ||
               retry.enabled() || breaker || error_route || error_to;
    }
    bool is_router() const { return kind == StageKind::router; }
    bool is_source() const { return kind == StageKind::source; }
    // Failed items leave through a route (another pipeline, or the error branch).
    bool routes_errors() const { return error_route || error_to; }
    // Stages whose state is per key: with several workers they shard keys across them.
    bool keyed_state() const {
        return kind == StageKind::dedup || kind == StageKind::debounce ||
               kind == StageKind::throttle || kind == StageKind::reduce ||
               kind == StageKind::window || kind == StageKind::join;
    }
};

}  // namespace fluxus
