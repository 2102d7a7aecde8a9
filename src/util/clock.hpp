// Monotonic time in nanoseconds, the one clock every internal deadline uses.
#pragma once

#include <cstdint>

#include "platform/clock.hpp"

namespace fluxus {

inline uint64_t now_ns() { return monotonic_ns(); }

// Deadline for a timeout in milliseconds; UINT32_MAX means "never".
inline uint64_t deadline_after_ms(uint32_t timeout_ms) {
    if (timeout_ms == UINT32_MAX) return UINT64_MAX;
    return now_ns() + uint64_t(timeout_ms) * 1000000u;
}

}  // namespace fluxus
