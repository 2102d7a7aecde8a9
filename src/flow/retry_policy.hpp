// RetryPolicy: how a stage retries items whose callback failed — how many attempts, which
// backoff between them, and which failures are worth another try.
#pragma once

#include <algorithm>
#include <cstdint>

#include "util/user_ref.hpp"
#include "fluxus.h"

namespace fluxus {

struct RetryPolicy {
    uint32_t max_attempts = 1;  // 1: no retry
    int32_t backoff = FLUXUS_BACKOFF_EXPONENTIAL;
    uint64_t base_ns = 1000000;     // 1 ms (FLUXUS_OPT_RETRY_BASE_US 1000)
    uint64_t max_ns = 1000000000;   // 1 s
    uint64_t seed = 0;  // jitter
    fluxus_retry_fn predicate = nullptr;
    UserRef predicate_user;

    bool enabled() const { return max_attempts > 1; }

    // The wait before attempt `next` (2 for the first retry). `draw` is a per-worker counter
    // for the jitter: the n-th jittered delay of worker w is mix64(seed + w + n * GOLDEN) mod
    // (d + 1), where d is the exponential delay — "full jitter", reproducible from the seed.
    uint64_t delay_ns(uint32_t next, uint32_t worker, uint64_t *draw) const {
        uint32_t k = next > 1 ? next - 2 : 0;  // 0 for the first retry
        uint64_t d = base_ns;
        if (backoff != FLUXUS_BACKOFF_CONSTANT) {
            for (uint32_t i = 0; i < k && d < max_ns; ++i) d = d > max_ns / 2 ? max_ns : d * 2;
        }
        d = std::min(d, max_ns);
        if (backoff != FLUXUS_BACKOFF_EXPONENTIAL_JITTER) return d;
        uint64_t z = seed + worker + (++*draw) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return d == UINT64_MAX ? z : z % (d + 1);
    }
};

}  // namespace fluxus
