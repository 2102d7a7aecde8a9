// SlidingWindows: the parts that do not depend on the caller's fire callback.
#include "flow/sliding_windows.hpp"

namespace fluxus {

void SlidingWindows::schedule(const Key128 &k, Key &s) {
    s.version = ++versions_;
    due_.push(Due{s.next * step_ + size_, s.version, k});
}

void SlidingWindows::drop_all(std::vector<uint64_t> &items) {
    for (auto &kv : keys_)
        for (const Held &h : kv.second.held) items.push_back(h.item);
    keys_.clear();
    due_ = decltype(due_)();
}

uint64_t SlidingWindows::next_deadline() {
    while (!due_.empty()) {
        const Due &d = due_.top();
        auto it = keys_.find(d.key);
        if (it != keys_.end() && it->second.version == d.version) return d.deadline;
        due_.pop();
    }
    return UINT64_MAX;
}

}  // namespace fluxus
