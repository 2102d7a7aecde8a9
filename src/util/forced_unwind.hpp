// Forced unwinds: on glibc, pthread_exit() and pthread_cancel() end a thread by unwinding its
// stack with an abi::__forced_unwind "exception" (some language runtimes use them: Python ends
// its threads that way when the interpreter exits). A catch (...) that swallows one makes
// libstdc++ abort the process ("FATAL: exception not rethrown"), so every exception barrier
// around host code is written FLUXUS_CATCH_ALL, which lets a forced unwind through. Other
// platforms do not unwind on pthread_exit(); there FLUXUS_CATCH_ALL is a plain catch (...).
#pragma once

#include <cstddef>  // defines __GLIBCXX__ with libstdc++

#if defined(__GLIBCXX__) && defined(__linux__)
#include <cxxabi.h>
#define FLUXUS_HAS_FORCED_UNWIND 1
#define FLUXUS_CATCH_ALL                                         \
    catch (abi::__forced_unwind &) {                             \
        throw;                                                   \
    }                                                            \
    catch (...)
#else
#define FLUXUS_HAS_FORCED_UNWIND 0
#define FLUXUS_CATCH_ALL catch (...)
#endif

#include <cstdint>

namespace fluxus {

// What the item loops leave for the frames above them when a forced unwind passes through,
// so that every item still ends exactly once: the loop that was running records how far it
// got, the worker ends the rest as cancelled (see SegmentWorker::process()). One per thread;
// only read and written while such an unwind is under way.
struct UnwindNote {
    size_t step = 0;             // an item chain: 1 + the step whose callback was running
    size_t read = 0;             // items that went all the way through the loop
    size_t survivors = SIZE_MAX; // items in the stage's output (SIZE_MAX: not known)
    size_t entered = 0;          // a chain fed by a pull source: items the source gave
    // The item of the interrupted call has already ended and was counted (the unwind came out
    // of its destructor, or out of the dead-letter callback, which counted it cancelled): the
    // loop it was in does not end it again. Cleared by the loop that reads it.
    bool ended = false;
};
extern thread_local UnwindNote t_unwind;

}  // namespace fluxus

// A handler for a forced unwind that runs `stmt` and lets the unwind go on. A catch (...) may
// follow it directly (FLUXUS_CATCH_ALL would handle the forced unwind twice).
#if FLUXUS_HAS_FORCED_UNWIND
#define FLUXUS_ON_FORCED_UNWIND(stmt) \
    catch (abi::__forced_unwind &) {   \
        stmt;                          \
        throw;                         \
    }
#else
// Without forced unwinds the handler still has to be a handler (it follows a try block), so it
// catches a type nothing throws. `stmt` is still compiled (never run), so that what it uses is
// used on every platform (and checked: no "unused function" or "set but not used" here only).
namespace fluxus {
struct NeverThrown {};
}  // namespace fluxus
#define FLUXUS_ON_FORCED_UNWIND(stmt)  \
    catch (fluxus::NeverThrown &) {    \
        stmt;                          \
        throw;                         \
    }
#endif
