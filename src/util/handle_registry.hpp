// Handle registry: public handles are generation-checked slot numbers, not raw pointers.
// A freed or forged handle therefore fails the lookup with FLUXUS_EINVAL instead of touching
// freed memory, which is what makes "wait on a destroyed pipeline" safe for GC'd hosts.
// Slots live forever (chunks are never freed), so a stale handle can always be checked.
//
// Pins make lookup-then-use safe against a concurrent free: every API call pins the handles it
// takes for its whole duration (HandleRef). A free unregisters the handle first (no new pin can
// succeed), wakes calls blocked inside the object, then waits in handle_retire() until the pin
// count of the slot is zero before it destroys the object. A slot is reused only after that.
#pragma once

#include <cstdint>

namespace fluxus {

enum class HandleKind : uint8_t { runtime = 1, pipeline = 2, rate_limiter = 3, concurrency_limiter = 4,
                                  circuit_breaker = 5, registry = 6 };

struct HandleSlot;

// Registers `object` and returns its handle value, or 0 when out of memory or slots. `slot`, if
// not null, receives the handle's slot (for handle_unpin() of pins the object takes itself).
uintptr_t handle_register(HandleKind kind, void *object, HandleSlot **slot = nullptr);

// Returns the object for `handle` if it is live and of `kind`, else nullptr. Not pinned: the
// object may be freed at once by another thread; use it only as a liveness check.
void *handle_lookup(HandleKind kind, uintptr_t handle);

// Pins `handle` if it is live and of `kind` and returns its object (and its slot in *slot);
// else nullptr. The object is not destroyed before handle_unpin(*slot). Pins nest.
void *handle_pin(HandleKind kind, uintptr_t handle, HandleSlot **slot);
void handle_unpin(HandleSlot *slot);

// Unregisters a live handle; returns its object, or nullptr if it was not live (double free).
// Exactly one of several concurrent callers wins. Later lookups and pins fail. The winner must
// call handle_retire() once it has woken what is blocked inside the object.
void *handle_unregister(HandleKind kind, uintptr_t handle);

// Waits until no call pins the (unregistered) handle any more, then makes its slot reusable.
// After it returns, the object may be destroyed.
void handle_retire(uintptr_t handle);

// Number of handles the calling thread pins right now (it is inside that many API calls). A
// free that would wait for pins must not run then: it could wait for its own caller.
uint32_t handle_pins_held();

// Pins a handle for the lifetime of the object (one API call).
class HandleRef {
public:
    HandleRef(HandleKind kind, uintptr_t handle)
        : object_(handle ? handle_pin(kind, handle, &slot_) : nullptr) {}
    ~HandleRef() {
        if (object_) handle_unpin(slot_);
    }
    HandleRef(const HandleRef &) = delete;
    HandleRef &operator=(const HandleRef &) = delete;
    void *get() const { return object_; }

private:
    HandleSlot *slot_ = nullptr;
    void *object_;
};

}  // namespace fluxus
