// Keys for per-key flow control (debounce, throttle): the item word itself, or the 128-bit
// digest of the bytes a key function returns, with a hash for unordered containers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dedup/key_set.hpp"

namespace fluxus {

struct Key128Hash {
    size_t operator()(const Key128 &k) const { return size_t(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// A word key as a Key128 (hashed, so that nearby integers spread over the buckets).
inline Key128 word_key(uint64_t item) { return Key128{hash_word(item), item}; }

}  // namespace fluxus
