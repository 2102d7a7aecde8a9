// Helpers shared by the files of the segment worker (segment.cpp, segment_heads.cpp,
// segment_resilience.cpp). Private to src/core.
#pragma once

#include <cstdint>

#include "core/segment.hpp"

namespace fluxus {

// Installs a RetryScope for the current thread while a retrying head stage's callbacks run.
class RetryScopeGuard {
public:
    // Touches the thread-local only for stages that need it: in a shared library every access
    // is a call, and this runs once per batch on the hot path.
    RetryScopeGuard(SegmentWorker *w, Stage *head, uint32_t attempt, bool refusal = false)
        : scope_{w, head, attempt, refusal},
          active_(head && (head->retry.enabled() || head->breaker || head->routes_errors())) {
        if (active_) {
            saved_ = t_retry_scope;
            t_retry_scope = &scope_;
        }
    }
    ~RetryScopeGuard() {
        if (active_) t_retry_scope = saved_;
    }
    void set_attempt(uint32_t a) { scope_.attempt = a; }
    void set_refusal(bool r) { scope_.refusal = r; }

private:
    RetryScope scope_;
    bool active_;
    RetryScope *saved_ = nullptr;
};

inline bool retry_later(const SegmentWorker::RetryEntry &a, const SegmentWorker::RetryEntry &b) {
    return a.due != b.due ? a.due > b.due : a.seq > b.seq;
}

// Batches a worker runs before it yields its thread, if other tasks are waiting for one.
constexpr int kRoundsPerRun = 16;

// One batch in this many has its callback time measured (see process()).
constexpr uint64_t kBusySample = 64;

// A pass of a pull source straight into a chain that ends in a sink reads as many batches as
// its callbacks get through in kPassBudgetNs (by the last sampled batch), up to this many:
// with cheap callbacks the per-pass bookkeeping was ~5 % of W1 at one batch per pass; the
// budget keeps a pass short for stats, pauses from other threads and fairness.
constexpr uint32_t kMaxPassBatches = 16;
constexpr uint64_t kPassBudgetNs = 50000;

// Shared batches: one claim takes as many items as the callbacks get through in this time, by
// the last measurement (1 until there is one). Shorter claims let idle siblings take more of a
// batch (an item waits unstarted in a claim at most this long); longer ones cost less per item.
// Batches whose items all fit in one claim are not shared at all: cheap callbacks keep the
// whole batch. About the cost of waking a parked worker on this VM.
constexpr uint64_t kClaimBudgetNs = 100000;

inline uint32_t lane_for_hash(uint64_t h, uint32_t lanes) {
    // High bits pick the lane: dedup sets index their tables with the low bits of the same hash.
    return uint32_t(((h >> 32) * uint64_t(lanes)) >> 32);
}


}  // namespace fluxus
