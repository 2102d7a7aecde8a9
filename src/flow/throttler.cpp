// Throttler implementation: a map for lookups plus a FIFO in passing order, so expiry is O(1)
// per key (passing times only grow).
#include "flow/throttler.hpp"

namespace fluxus {

void Throttler::expire(uint64_t now) {
    while (!order_.empty() && order_.front().second + period_ <= now) {
        auto it = last_.find(order_.front().first);
        if (it != last_.end() && it->second == order_.front().second) {
            last_.erase(it);
            ++forgotten_;
        }
        order_.pop_front();
    }
}

bool Throttler::admit(const Key128 &k, uint64_t now) {
    expire(now);
    auto ins = last_.emplace(k, now);
    if (!ins.second) return false;  // passed less than a period ago
    order_.emplace_back(k, now);
    return true;
}

}  // namespace fluxus
