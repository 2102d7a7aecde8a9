// Handle registry: public handles are generation-checked slot numbers, not raw pointers.
// A freed or forged handle therefore fails the lookup with FLUXUS_EINVAL instead of touching
// freed memory, which is what makes "wait on a destroyed pipeline" safe for GC'd hosts.
// Slots live forever (chunks are never freed), so a stale handle can always be checked.
#pragma once

#include <cstdint>

namespace fluxus {

enum class HandleKind : uint8_t { runtime = 1, pipeline = 2, rate_limiter = 3, concurrency_limiter = 4,
                                  circuit_breaker = 5, registry = 6 };

// Registers `object` and returns its handle value, or 0 when out of memory or slots.
uintptr_t handle_register(HandleKind kind, void *object);

// Returns the object for `handle` if it is live and of `kind`, else nullptr.
void *handle_lookup(HandleKind kind, uintptr_t handle);

// Unregisters a live handle; returns its object, or nullptr if it was not live (double free).
// Exactly one of several concurrent callers wins.
void *handle_unregister(HandleKind kind, uintptr_t handle);

}  // namespace fluxus
