// Debouncer implementation: an LRU-style list in due order plus an index. Every item moves its
// key to the back, so the front is always the next key to become quiet.
#include "flow/debouncer.hpp"

namespace fluxus {

bool Debouncer::offer(const Key128 &k, uint64_t item, uint64_t now, uint64_t *replaced,
                      std::vector<uint64_t> &early) {
    uint64_t due = now + quiet_;
    auto it = index_.find(k);
    if (it != index_.end()) {
        *replaced = it->second->item;
        it->second->item = item;
        it->second->due = due;
        order_.splice(order_.end(), order_, it->second);
        return true;
    }
    if (max_keys_ && index_.size() >= max_keys_) {
        early.push_back(order_.front().item);
        index_.erase(order_.front().key);
        order_.pop_front();
    }
    order_.push_back(Held{k, item, due});
    index_.emplace(k, std::prev(order_.end()));
    return false;
}

void Debouncer::collect_due(uint64_t now, std::vector<uint64_t> &out) {
    while (!order_.empty() && order_.front().due <= now) {
        out.push_back(order_.front().item);
        index_.erase(order_.front().key);
        order_.pop_front();
    }
}

void Debouncer::take_all(std::vector<uint64_t> &out) {
    for (const Held &h : order_) out.push_back(h.item);
    order_.clear();
    index_.clear();
}

}  // namespace fluxus
