// start_thread(): see thread_start.hpp. The signal mask is the one platform-specific part: a new
// POSIX thread inherits its creator's mask, so the creator blocks the asynchronous signals for
// the moment of the creation and restores its own mask after.
#include "runtime/thread_start.hpp"

#include <cstdio>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <signal.h>
#define FLUXUS_POSIX_SIGNALS 1
#endif

#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {

const char *kind_prefix(int32_t kind) {
    switch (kind) {
    case FLUXUS_THREAD_LOOP: return "fluxus-loop";
    case FLUXUS_THREAD_WORKER: return "fluxus-w";
    default: return "fluxus-x";
    }
}

void run_hook_stop(const ThreadHooks &h, int32_t kind, uint32_t index) {
    if (!h.stop) return;
    try {
        h.stop(h.user, kind, index);
    } FLUXUS_CATCH_ALL {
        // A hook that throws loses only its own call.
    }
}

#if FLUXUS_POSIX_SIGNALS
// Blocks every signal a host may send to the process asynchronously; leaves the ones the
// kernel raises on the faulting thread (a blocked SIGSEGV would kill the process instead of
// reaching a sanitizer or a crash handler), and SIGPROF, which profilers send on purpose.
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
#endif

}  // namespace

std::thread start_thread(const ThreadHooks &hooks, int32_t kind, uint32_t index,
                         std::function<void()> body) {
#if FLUXUS_POSIX_SIGNALS
    AsyncSignalsBlocked blocked;  // inherited by the new thread
#endif
    return std::thread([hooks, kind, index, body = std::move(body)] {
        char name[16];
        if (kind == FLUXUS_THREAD_LOOP)
            snprintf(name, sizeof name, "%s", kind_prefix(kind));
        else
            snprintf(name, sizeof name, "%s%u", kind_prefix(kind), index);
#if defined(__linux__)
        pthread_setname_np(pthread_self(), name);
#endif
        // The stop hook runs last however the thread ends: after the body returns, or while a
        // forced unwind out of a callback (or out of the start hook) ends the thread.
        try {
            if (hooks.start) {
                try {
                    hooks.start(hooks.user, kind, index, name);
                } FLUXUS_CATCH_ALL {
                    // A hook that throws loses only its own call.
                }
            }
            body();
        } FLUXUS_ON_FORCED_UNWIND(run_hook_stop(hooks, kind, index))
        run_hook_stop(hooks, kind, index);
    });
}

}  // namespace fluxus
