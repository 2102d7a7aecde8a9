// Platform layer: the monotonic clock in nanoseconds (util/clock.hpp builds deadlines on it).
// POSIX: clock_gettime(CLOCK_MONOTONIC), Linux and macOS alike. Inline: the timed paths read
// it per call.
#pragma once

#include <cstdint>
#include <ctime>

#if !defined(__unix__) && !defined(__APPLE__)
#error "fluxus: no monotonic clock for this platform yet (src/platform/clock.hpp)"
#endif

namespace fluxus {

inline uint64_t monotonic_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

}  // namespace fluxus
