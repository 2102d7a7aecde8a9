// Throttler: per key, at most one item per period (the first passes; the rest of that period is
// filtered). Entries expire one period after they passed, so memory follows the number of keys
// seen within one period. Owned by one stage worker; not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>

#include "flow/keyed_state.hpp"

namespace fluxus {

class Throttler {
public:
    explicit Throttler(uint64_t period_ns) : period_(period_ns) {}
    // True if an item with key `k` may pass at `now` (and remembers that it did).
    bool admit(const Key128 &k, uint64_t now);
    size_t size() const { return last_.size(); }
    uint64_t forgotten() const { return forgotten_; }  // keys whose period ran out

private:
    void expire(uint64_t now);
    uint64_t period_;
    uint64_t forgotten_ = 0;
    std::unordered_map<Key128, uint64_t, Key128Hash> last_;  // key -> when it last passed
    std::deque<std::pair<Key128, uint64_t>> order_;          // the same, in passing order
};

}  // namespace fluxus
