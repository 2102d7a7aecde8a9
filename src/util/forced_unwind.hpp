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
