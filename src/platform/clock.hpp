// Platform layer: the monotonic clock in nanoseconds (util/clock.hpp builds deadlines on it).
// POSIX: clock_gettime(CLOCK_MONOTONIC), Linux and macOS alike; elsewhere (Windows)
// std::chrono::steady_clock, which is QueryPerformanceCounter there. Inline: the timed paths
// read it per call.
#pragma once

#include <cstdint>

#if defined(__unix__) || defined(__APPLE__)
#include <ctime>
#define FLUXUS_HAVE_CLOCK_MONOTONIC 1
#else
#include <chrono>
#endif

namespace fluxus {

inline uint64_t monotonic_ns() {
#if FLUXUS_HAVE_CLOCK_MONOTONIC
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
#else
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count());
#endif
}

}  // namespace fluxus
