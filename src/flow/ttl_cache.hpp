// TtlCache: a bounded map from key to a cached item word, with a time-to-live and least-
// recently-used eviction. Values leaving the cache (expired, replaced, evicted) are handed back
// to the caller, who owns releasing them. Owned by one stage worker; not thread-safe.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "flow/keyed_state.hpp"

namespace fluxus {

class TtlCache {
public:
    TtlCache(uint64_t max_entries, uint64_t ttl_ns) : max_(max_entries), ttl_(ttl_ns) {}

    // The fresh value of `k` at `now`, if any (it becomes the most recently used). An expired
    // entry found here is removed and its value appended to `gone`.
    bool get(const Key128 &k, uint64_t now, uint64_t *value, std::vector<uint64_t> &gone);
    // Stores `value` for `k` (a value it replaces goes to `gone`), evicting the least recently
    // used entries beyond the bound into `gone`.
    void put(const Key128 &k, uint64_t value, uint64_t now, std::vector<uint64_t> &gone);
    // Empties the cache into `gone`.
    void clear(std::vector<uint64_t> &gone);
    size_t size() const { return map_.size(); }

private:
    struct Entry {
        uint64_t value, expires;
        std::list<Key128>::iterator lru;
    };
    uint64_t max_, ttl_;
    std::unordered_map<Key128, Entry, Key128Hash> map_;
    std::list<Key128> lru_;  // most recently used first
};

}  // namespace fluxus
