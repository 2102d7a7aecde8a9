// SpinThenBlockMutex: a mutex for locks held for a few hundred nanoseconds by threads on
// different cores (the queues between stages). It spins briefly before sleeping: with
// std::mutex a contended lock goes straight to a futex sleep, and on a VM the wake-up costs
// tens of microseconds, far more than the holder needed.
#pragma once

#include <atomic>
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

    // A pause for spin loops (lets the sibling hyperthread run).
    static void relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }
private:
    static constexpr int kSpins = 256;
    std::mutex m_;
};

// SpinLock: for a lock that is almost never contended and held for a few instructions (a list
// insert); uncontended, lock and unlock cost one atomic exchange and one store, where
// std::mutex costs two library calls.
class SpinLock {
public:
    void lock() {
        while (locked_.exchange(true, std::memory_order_acquire))
            while (locked_.load(std::memory_order_relaxed)) SpinThenBlockMutex::relax();
    }
    void unlock() { locked_.store(false, std::memory_order_release); }

private:
    std::atomic<bool> locked_{false};
};

}  // namespace fluxus
