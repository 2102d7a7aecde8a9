// Debouncer: per key, hold the latest item and emit it once the key has been quiet for a
// period (trailing edge). A newer item for a pending key replaces the held one. The number of
// pending keys is bounded: when a new key would exceed the bound, the key quiet the longest is
// emitted early. Owned by one stage worker; not thread-safe.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "flow/keyed_state.hpp"

namespace fluxus {

class Debouncer {
public:
    Debouncer(uint64_t quiet_ns, uint64_t max_keys) : quiet_(quiet_ns), max_keys_(max_keys) {}

    // Holds `item` for key `k` at `now`. Returns true and sets *replaced if it replaced a held
    // item (which the caller then ends as filtered). An item emitted early to respect the key
    // bound is appended to `early`.
    bool offer(const Key128 &k, uint64_t item, uint64_t now, uint64_t *replaced,
               std::vector<uint64_t> &early);
    // Appends the items whose key has been quiet for the period at `now`, oldest first.
    void collect_due(uint64_t now, std::vector<uint64_t> &out);
    // Appends every held item (end of stream, or cancellation).
    void take_all(std::vector<uint64_t> &out);
    uint64_t next_deadline() const { return order_.empty() ? UINT64_MAX : order_.front().due; }
    size_t size() const { return index_.size(); }

private:
    struct Held {
        Key128 key;
        uint64_t item;
        uint64_t due;
    };
    uint64_t quiet_;
    uint64_t max_keys_;
    std::list<Held> order_;  // by due time: a key moves to the back whenever it gets an item
    std::unordered_map<Key128, std::list<Held>::iterator, Key128Hash> index_;
};

}  // namespace fluxus
