// KeyWindow: the last N distinct keys, exactly — a dedup memory for streams that never end. A
// key seen again while it is among the last N is a repeat; the N+1-th distinct key makes the
// oldest one forgotten. Owned by one stage worker; not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_set>

#include "flow/keyed_state.hpp"

namespace fluxus {

class KeyWindow {
public:
    explicit KeyWindow(uint64_t n) : n_(n) {}
    // True if `k` is not among the last N distinct keys (and remembers it).
    bool admit(const Key128 &k) {
        if (!set_.insert(k).second) return false;
        order_.push_back(k);
        if (order_.size() > n_) {
            set_.erase(order_.front());
            order_.pop_front();
            ++forgotten_;
        }
        return true;
    }
    uint64_t size() const { return set_.size(); }
    uint64_t forgotten() const { return forgotten_; }

private:
    uint64_t n_;
    uint64_t forgotten_ = 0;
    std::unordered_set<Key128, Key128Hash> set_;
    std::deque<Key128> order_;  // oldest first
};

}  // namespace fluxus
