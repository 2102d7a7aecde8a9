// Platform layer: zeroed memory for large tables (the dedup sets), straight from the OS so that
// it can be offered huge pages and goes back to the OS when freed.
#pragma once

#include <cstddef>

namespace fluxus {

// `bytes` of zeroed memory, or nullptr. Free with large_free() and the same size.
void *large_alloc_zeroed(size_t bytes);
void large_free(void *p, size_t bytes);

}  // namespace fluxus
