// name_this_thread() and with_async_signals_blocked(): POSIX threads (Linux and macOS differ
// only in how a thread is named); elsewhere neither does anything.
#include "platform/thread_setup.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <signal.h>
#define FLUXUS_POSIX_THREADS 1
#endif

namespace fluxus {

void name_this_thread(const char *name) {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), name);
#elif defined(__APPLE__)
    pthread_setname_np(name);
#else
    (void)name;
#endif
}

#if FLUXUS_POSIX_THREADS

namespace {
// Blocks every signal but the ones the kernel raises on the faulting thread (a blocked SIGSEGV
// would kill the process instead of reaching a sanitizer or a crash handler), and SIGPROF,
// which profilers send on purpose; restores the mask when it goes (also if `create` throws).
class AsyncSignalsBlocked {
public:
    AsyncSignalsBlocked() {
        sigset_t all;
        sigfillset(&all);
        for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS, SIGPROF})
            sigdelset(&all, s);
        ok_ = pthread_sigmask(SIG_BLOCK, &all, &saved_) == 0;
    }
    ~AsyncSignalsBlocked() {
        if (ok_) pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
    }

private:
    sigset_t saved_;
    bool ok_;
};
}  // namespace

void with_async_signals_blocked(const std::function<void()> &create) {
    AsyncSignalsBlocked blocked;
    create();
}

#else

void with_async_signals_blocked(const std::function<void()> &create) { create(); }

#endif

}  // namespace fluxus
