#include "flow/ttl_cache.hpp"

namespace fluxus {

bool TtlCache::get(const Key128 &k, uint64_t now, uint64_t *value, std::vector<uint64_t> &gone) {
    auto it = map_.find(k);
    if (it == map_.end()) return false;
    if (now >= it->second.expires) {
        gone.push_back(it->second.value);
        lru_.erase(it->second.lru);
        map_.erase(it);
        return false;
    }
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    *value = it->second.value;
    return true;
}

void TtlCache::put(const Key128 &k, uint64_t value, uint64_t now, std::vector<uint64_t> &gone) {
    uint64_t expires = ttl_ && now + ttl_ > now ? now + ttl_ : UINT64_MAX;
    auto it = map_.find(k);
    if (it != map_.end()) {
        gone.push_back(it->second.value);
        it->second.value = value;
        it->second.expires = expires;
        lru_.splice(lru_.begin(), lru_, it->second.lru);
        return;
    }
    lru_.push_front(k);
    map_.emplace(k, Entry{value, expires, lru_.begin()});
    while (map_.size() > max_) {
        auto old = map_.find(lru_.back());
        gone.push_back(old->second.value);
        map_.erase(old);
        lru_.pop_back();
    }
}

void TtlCache::clear(std::vector<uint64_t> &gone) {
    for (auto &e : map_) gone.push_back(e.second.value);
    map_.clear();
    lru_.clear();
}

}  // namespace fluxus
