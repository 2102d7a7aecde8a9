// SpinThenBlockMutex: a mutex for locks held for a few hundred nanoseconds by threads on
// different cores (the queues between stages). It spins briefly before sleeping: with
// std::mutex a contended lock goes straight to a futex sleep, and on a VM the wake-up costs
// tens of microseconds, far more than the holder needed.
#pragma once

#include <mutex>

namespace fluxus {

class SpinThenBlockMutex {
public:
    void lock() {
        for (int i = 0; i < kSpins; ++i) {
            if (m_.try_lock()) return;
            relax();
        }
        m_.lock();
    }
    bool try_lock() { return m_.try_lock(); }
    void unlock() { m_.unlock(); }

private:
    static constexpr int kSpins = 256;
    static void relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }
    std::mutex m_;
};

}  // namespace fluxus
