// Handle registry: chunked slot table with per-slot generations and a free list.
// The first chunk and the free list live in the library's own static storage, so a host that
// loads, uses and unloads the library leaves nothing behind on the heap; only the chunks for more
// than kChunkSize handles alive at once are heap-allocated (and kept until the process ends).
#include "util/handle_registry.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>
#include <thread>

namespace fluxus {

// One slot of the table (the public name of Slot, for HandleRef).
struct HandleSlot {
    // (generation << 8) | kind while live; generation << 8 (kind 0) while free or retiring.
    std::atomic<uint64_t> tag{0};
    std::atomic<void *> object{nullptr};
    // Calls that pin the slot now. A pin is taken before the tag is checked, and a free changes
    // the tag before it reads the pins (both sequentially consistent): either the pin sees the
    // handle dead and backs out, or the free sees the pin and waits for it.
    std::atomic<uint32_t> pins{0};
    // While the slot is free: 1 + the index of the next free slot, 0 at the end of the list.
    // Guarded by g_mu. Kept apart from `object`, which a racing lookup may still read.
    uint32_t next_free = 0;
};

namespace {

using Slot = HandleSlot;
thread_local uint32_t t_pins_held = 0;

constexpr uint32_t kIndexBits = 20;  // up to ~1M live handles
constexpr uint32_t kChunkSize = 1024;
constexpr uint32_t kMaxChunks = (1u << kIndexBits) / kChunkSize;
constexpr uintptr_t kGenLimit = (~uintptr_t(0)) >> (kIndexBits + 1);  // 43 bits on 64-bit

// All constant-initialised: no constructor runs at load and no destructor at unload or exit.
Slot g_first_chunk[kChunkSize];
std::atomic<Slot *> g_chunks[kMaxChunks] = {g_first_chunk};
std::mutex g_mu;             // guards allocation of slots and chunks, and the free list
uint32_t g_free_head = 0;    // 1 + the index of the most recently freed slot; 0: none
uint32_t g_next_index = 0;

Slot *slot_at(uint32_t index) {
    if (index >= kMaxChunks * kChunkSize) return nullptr;
    Slot *chunk = g_chunks[index / kChunkSize].load(std::memory_order_acquire);
    return chunk ? &chunk[index % kChunkSize] : nullptr;
}

bool decode(uintptr_t handle, uint32_t *index, uint64_t *gen) {
    uintptr_t low = handle & ((uintptr_t(1) << kIndexBits) - 1);
    if (low == 0) return false;
    *index = uint32_t(low - 1);
    *gen = uint64_t(handle >> kIndexBits);
    return true;
}

}  // namespace

uintptr_t handle_register(HandleKind kind, void *object, HandleSlot **out) {
    std::lock_guard<std::mutex> lock(g_mu);
    uint32_t index;
    if (g_free_head != 0) {
        index = g_free_head - 1;
        g_free_head = slot_at(index)->next_free;
    } else {
        if (g_next_index >= kMaxChunks * kChunkSize) return 0;
        index = g_next_index;
        uint32_t chunk = index / kChunkSize;
        if (!g_chunks[chunk].load(std::memory_order_relaxed)) {
            Slot *fresh = new (std::nothrow) Slot[kChunkSize];
            if (!fresh) return 0;
            g_chunks[chunk].store(fresh, std::memory_order_release);
        }
        ++g_next_index;
    }
    Slot *slot = slot_at(index);
    uint64_t gen = (slot->tag.load(std::memory_order_relaxed) >> 8) + 1;
    if (gen > kGenLimit) gen = 1;  // wraps after ~10^13 reuses of one slot
    slot->object.store(object, std::memory_order_relaxed);
    slot->tag.store((gen << 8) | uint64_t(kind), std::memory_order_release);
    if (out) *out = slot;
    return (uintptr_t(gen) << kIndexBits) | uintptr_t(index + 1);
}

void *handle_lookup(HandleKind kind, uintptr_t handle) {
    uint32_t index;
    uint64_t gen;
    if (!decode(handle, &index, &gen)) return nullptr;
    Slot *slot = slot_at(index);
    if (!slot) return nullptr;
    if (slot->tag.load(std::memory_order_acquire) != ((gen << 8) | uint64_t(kind))) return nullptr;
    return slot->object.load(std::memory_order_relaxed);
}

void *handle_pin(HandleKind kind, uintptr_t handle, HandleSlot **out) {
    uint32_t index;
    uint64_t gen;
    if (!decode(handle, &index, &gen)) return nullptr;
    Slot *slot = slot_at(index);
    if (!slot) return nullptr;
    slot->pins.fetch_add(1, std::memory_order_seq_cst);
    if (slot->tag.load(std::memory_order_seq_cst) != ((gen << 8) | uint64_t(kind))) {
        slot->pins.fetch_sub(1, std::memory_order_release);
        return nullptr;
    }
    ++t_pins_held;
    *out = slot;
    return slot->object.load(std::memory_order_relaxed);
}

void handle_unpin(HandleSlot *slot) {
    --t_pins_held;
    // Release: everything the call did happens before the free that sees the count drop.
    slot->pins.fetch_sub(1, std::memory_order_release);
}

uint32_t handle_pins_held() { return t_pins_held; }

void *handle_unregister(HandleKind kind, uintptr_t handle) {
    uint32_t index;
    uint64_t gen;
    if (!decode(handle, &index, &gen)) return nullptr;
    Slot *slot = slot_at(index);
    if (!slot) return nullptr;
    uint64_t expected = (gen << 8) | uint64_t(kind);
    void *object = slot->object.load(std::memory_order_relaxed);
    if (!slot->tag.compare_exchange_strong(expected, gen << 8, std::memory_order_seq_cst))
        return nullptr;
    return object;
}

void handle_retire(uintptr_t handle) {
    uint32_t index;
    uint64_t gen;
    if (!decode(handle, &index, &gen)) return;
    Slot *slot = slot_at(index);
    if (!slot) return;
    // Pins are short (one call) or woken by the free before it gets here; a failed pin of a
    // stale handle backs out at once. Spin briefly, then sleep with a growing backoff.
    for (uint32_t round = 0; slot->pins.load(std::memory_order_seq_cst) != 0; ++round) {
        if (round < 64)
            std::this_thread::yield();
        else
            std::this_thread::sleep_for(
                std::chrono::microseconds(round < 256 ? 10 : round < 1024 ? 100 : 1000));
    }
    std::lock_guard<std::mutex> lock(g_mu);
    slot->next_free = g_free_head;
    g_free_head = index + 1;
}

}  // namespace fluxus
