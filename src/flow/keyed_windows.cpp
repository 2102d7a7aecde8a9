// KeyedWindows implementation. Deadlines sit in a min-heap with lazy deletion: an entry is
// stale when its key's window has closed or its deadline moved (session windows).
#include "flow/keyed_windows.hpp"

#include <algorithm>

#include "fluxus.h"

namespace fluxus {

void KeyedWindows::close(std::unordered_map<Key128, Open, Key128Hash>::iterator it,
                         std::vector<Closed> &out) {
    out.push_back(Closed{std::move(it->second.items), it->second.start});
    open_.erase(it);
}

void KeyedWindows::add(const Key128 &k, uint64_t item, uint64_t now, std::vector<Closed> &out) {
    auto it = open_.find(k);
    if (kind_ != FLUXUS_WINDOW_COUNT && it != open_.end() && now >= it->second.deadline) {
        // Its period is over, or its session ended (`size` passed without an item), and its
        // timer has not run yet: the item belongs to the key's next window.
        close(it, out);
        it = open_.end();
    }
    if (it == open_.end()) {
        Open w;
        w.order = opened_++;
        w.start = kind_ == FLUXUS_WINDOW_TIME ? now - now % size_ : now;
        it = open_.emplace(k, std::move(w)).first;
    }
    Open &w = it->second;
    w.items.push_back(item);
    if (kind_ == FLUXUS_WINDOW_COUNT) {
        if (w.items.size() >= size_) close(it, out);
        return;
    }
    uint64_t deadline = kind_ == FLUXUS_WINDOW_TIME ? w.start + size_ : now + size_;
    if (deadline != w.deadline) {
        w.deadline = deadline;
        w.version = ++versions_;
        due_.push(Due{deadline, w.version, k});
    }
}

void KeyedWindows::close_due(uint64_t now, std::vector<Closed> &out) {
    while (!due_.empty() && due_.top().deadline <= now) {
        Due d = due_.top();
        due_.pop();
        auto it = open_.find(d.key);
        if (it == open_.end() || it->second.version != d.version) continue;  // stale
        close(it, out);
    }
}

void KeyedWindows::close_all(std::vector<Closed> &out) {
    std::vector<std::unordered_map<Key128, Open, Key128Hash>::iterator> all;
    for (auto it = open_.begin(); it != open_.end(); ++it) all.push_back(it);
    std::sort(all.begin(), all.end(),
              [](const auto &a, const auto &b) { return a->second.order < b->second.order; });
    for (auto &it : all) out.push_back(Closed{std::move(it->second.items), it->second.start});
    open_.clear();
    due_ = decltype(due_)();
}

uint64_t KeyedWindows::next_deadline() {
    while (!due_.empty()) {
        const Due &d = due_.top();
        auto it = open_.find(d.key);
        if (it != open_.end() && it->second.version == d.version) return d.deadline;
        due_.pop();
    }
    return UINT64_MAX;
}

}  // namespace fluxus
