// SlidingWindows: per-key sliding windows of `size` (items, or ns of the runtime's clock)
// starting every `step` (step <= size), so an item can be in several windows. Items are held
// while a later window may still contain them and leave after their last one. Each item's
// "home" is the first window that fires with it: if the aggregate callback fails for that
// window, the item leaves as failed. Owned by one stage worker; not thread-safe.
//
// Count windows fire after every `step` items of a key with its last `size` items (fewer at
// first). Time windows are the aligned periods [k*step, k*step + size) and fire at their end
// with the key's items that arrived in them; only windows holding an item fire.
#pragma once

#include <cstdint>
#include <deque>
#include <queue>
#include <unordered_map>
#include <vector>

#include "flow/keyed_state.hpp"

namespace fluxus {

class SlidingWindows {
public:
    struct Leaving {
        uint64_t item;
        int32_t status;  // 0: consumed (filtered); else the home window's failure
    };
    // fire(items, count, start_ns) runs the aggregate callback and returns its status.
    template <class Fire>
    void add(const Key128 &k, uint64_t item, uint64_t now, Fire &&fire,
             std::vector<Leaving> &leaving);
    template <class Fire>
    void close_due(uint64_t now, Fire &&fire, std::vector<Leaving> &leaving);
    // End of input: every window still holding items fires, then every item leaves.
    template <class Fire>
    void close_all(Fire &&fire, std::vector<Leaving> &leaving);
    // Cancel: every held item leaves unfired (the caller cancels them).
    void drop_all(std::vector<uint64_t> &items);
    uint64_t next_deadline();

    SlidingWindows(int32_t kind, uint64_t size, uint64_t step)
        : time_(kind == 1), size_(size), step_(step) {}

private:
    struct Held {
        uint64_t item, t;
        int32_t status;
    };
    struct Key {
        std::deque<Held> held;
        uint64_t since = 0;  // count: items since the last firing (they are its home items)
        uint64_t next = 0;   // time: index of the next window to fire
        uint64_t version = 0;
    };
    struct Due {
        uint64_t deadline, version;
        Key128 key;
        bool operator>(const Due &o) const { return deadline > o.deadline; }
    };
    using Map = std::unordered_map<Key128, Key, Key128Hash>;
    uint64_t first_window(uint64_t t) const {  // the lowest k whose window holds t
        return t >= size_ ? (t - size_) / step_ + 1 : 0;
    }
    template <class Fire>
    void fire_count(Key &s, Fire &fire, std::vector<Leaving> &leaving);
    // Time: fires window s.next (if it holds items), lets out what no later window holds.
    template <class Fire>
    void fire_time(Key &s, Fire &fire, std::vector<Leaving> &leaving);
    void schedule(const Key128 &k, Key &s);

    bool time_;
    uint64_t size_, step_;
    Map keys_;
    std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due_;
    std::vector<uint64_t> scratch_;
};

template <class Fire>
void SlidingWindows::fire_count(Key &s, Fire &fire, std::vector<Leaving> &leaving) {
    size_t n = s.held.size();  // <= size
    scratch_.clear();
    for (const Held &h : s.held) scratch_.push_back(h.item);
    int32_t rc = fire(scratch_.data(), n, s.held.front().t);
    if (rc != 0)  // the newest `since` items had this window as their home
        for (size_t i = n - s.since; i < n; ++i) s.held[i].status = rc;
    s.since = 0;
    // The next window keeps the last size - step items.
    while (s.held.size() > size_ - step_) {
        leaving.push_back(Leaving{s.held.front().item, s.held.front().status});
        s.held.pop_front();
    }
}

template <class Fire>
void SlidingWindows::fire_time(Key &s, Fire &fire, std::vector<Leaving> &leaving) {
    uint64_t start = s.next * step_, end = start + size_;
    scratch_.clear();
    size_t home_from = SIZE_MAX;
    for (size_t i = 0; i < s.held.size() && s.held[i].t < end; ++i) {
        if (s.held[i].t < start) continue;
        if (home_from == SIZE_MAX && first_window(s.held[i].t) == s.next) home_from = i;
        scratch_.push_back(s.held[i].item);
    }
    if (!scratch_.empty()) {
        int32_t rc = fire(scratch_.data(), scratch_.size(), start);
        if (rc != 0 && home_from != SIZE_MAX)
            for (size_t i = home_from; i < s.held.size() && s.held[i].t < end; ++i)
                if (first_window(s.held[i].t) == s.next) s.held[i].status = rc;
    }
    ++s.next;
    uint64_t next_start = s.next * step_;
    while (!s.held.empty() && s.held.front().t < next_start) {
        leaving.push_back(Leaving{s.held.front().item, s.held.front().status});
        s.held.pop_front();
    }
    // Skip windows that would hold nothing.
    if (!s.held.empty() && first_window(s.held.front().t) > s.next)
        s.next = first_window(s.held.front().t);
}

template <class Fire>
void SlidingWindows::add(const Key128 &k, uint64_t item, uint64_t now, Fire &&fire,
                         std::vector<Leaving> &leaving) {
    Key &s = keys_[k];
    if (time_) {
        if (s.held.empty()) s.next = first_window(now);
        while (!s.held.empty() && s.next * step_ + size_ <= now) fire_time(s, fire, leaving);
        if (s.held.empty() && s.next < first_window(now)) s.next = first_window(now);
        s.held.push_back(Held{item, now, 0});
        schedule(k, s);
        return;
    }
    s.held.push_back(Held{item, now, 0});
    if (++s.since == step_) fire_count(s, fire, leaving);
}

template <class Fire>
void SlidingWindows::close_due(uint64_t now, Fire &&fire, std::vector<Leaving> &leaving) {
    while (!due_.empty() && due_.top().deadline <= now) {
        Due d = due_.top();
        due_.pop();
        auto it = keys_.find(d.key);
        if (it == keys_.end() || it->second.version != d.version) continue;
        Key &s = it->second;
        while (!s.held.empty() && s.next * step_ + size_ <= now) fire_time(s, fire, leaving);
        if (s.held.empty())
            keys_.erase(it);
        else
            schedule(d.key, s);
    }
}

template <class Fire>
void SlidingWindows::close_all(Fire &&fire, std::vector<Leaving> &leaving) {
    for (auto &kv : keys_) {
        Key &s = kv.second;
        if (time_) {
            while (!s.held.empty()) fire_time(s, fire, leaving);
        } else {
            if (s.since > 0) fire_count(s, fire, leaving);
            for (const Held &h : s.held) leaving.push_back(Leaving{h.item, h.status});
            s.held.clear();
        }
    }
    keys_.clear();
    due_ = decltype(due_)();
}

}  // namespace fluxus
