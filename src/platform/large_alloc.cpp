// large_alloc_zeroed(): mmap on POSIX systems, with a transparent-huge-page hint where the
// system has one (Linux); calloc elsewhere.
#include "platform/large_alloc.hpp"

#include <cstdlib>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define FLUXUS_HAVE_MMAP 1
#endif

namespace fluxus {

#if FLUXUS_HAVE_MMAP

void *large_alloc_zeroed(size_t bytes) {
    void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);  // a hint; without it the table still works
#endif
    return p;
}

void large_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes);
}

#else

void *large_alloc_zeroed(size_t bytes) { return std::calloc(bytes, 1); }

void large_free(void *p, size_t) { std::free(p); }

#endif

}  // namespace fluxus
