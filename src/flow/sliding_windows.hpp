// SlidingWindows: per-key windows [k*step, k*step + size), k = 0, 1, ..., over the key's item
// index (count) or the runtime's clock in ns (time). step < size overlaps them, so an item can
// be in several; step == size makes them tumbling; step > size leaves gaps, and an item in a
// gap is in no window: it leaves at once, consumed. Items are held while a later window may
// still contain them and leave after their last one. Each item's "home" is the first window
// it is in: if the aggregate callback fails for that window, the item leaves as failed. Owned
// by one stage worker; not thread-safe.
//
// A count window fires when its last item arrives, so none fires partial at the start; a time
// window fires at its end with the key's items that arrived in it (only windows holding an item
// fire). At end of input every window that holds items fires as it is: the trailing partial
// windows.
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
        uint64_t index;  // count: the item's index among its key's items
        int32_t status;
    };
    struct Key {
        std::deque<Held> held;
        uint64_t count = 0;  // count: the key's items so far (the next item's index)
        uint64_t next = 0;   // index of the next window to fire
        uint64_t version = 0;  // of its current heap entry (see versions_)
    };
    struct Due {
        uint64_t deadline, version;
        Key128 key;
        bool operator>(const Due &o) const { return deadline > o.deadline; }
    };
    using Map = std::unordered_map<Key128, Key, Key128Hash>;
    // The lowest k whose window ends after t; it holds t unless t falls in a gap (step > size).
    uint64_t first_window(uint64_t t) const { return t >= size_ ? (t - size_) / step_ + 1 : 0; }
    bool in_a_window(uint64_t t) const { return first_window(t) * step_ <= t; }
    // Count: fires window s.next with the items it holds (all of them once it is complete),
    // then lets out what no later window holds.
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
    // Heap entries are lazy: one is stale unless its version is its key's version now. Versions
    // come from this one counter, so an entry left behind when a key was erased can never match
    // the same key once it holds items again.
    uint64_t versions_ = 0;
    std::vector<uint64_t> scratch_;
};

template <class Fire>
void SlidingWindows::fire_count(Key &s, Fire &fire, std::vector<Leaving> &leaving) {
    // Items before this window's start left when the window before it fired, so the window
    // is every held item below its end.
    uint64_t end = s.next * step_ + size_;
    scratch_.clear();
    for (const Held &h : s.held) {
        if (h.index >= end) break;
        scratch_.push_back(h.item);
    }
    if (!scratch_.empty()) {
        int32_t rc = fire(scratch_.data(), scratch_.size(), s.held.front().t);
        if (rc != 0)
            for (size_t i = 0; i < scratch_.size(); ++i)
                if (first_window(s.held[i].index) == s.next) s.held[i].status = rc;
    }
    ++s.next;
    uint64_t next_start = s.next * step_;
    while (!s.held.empty() && s.held.front().index < next_start) {
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
        if (!in_a_window(now)) {  // between two windows (step > size): in none
            leaving.push_back(Leaving{item, 0});
            if (s.held.empty()) keys_.erase(k);
            return;
        }
        s.held.push_back(Held{item, now, 0, 0});
        schedule(k, s);
        return;
    }
    uint64_t index = s.count++;
    if (!in_a_window(index)) {  // between two windows (step > size): in none
        leaving.push_back(Leaving{item, 0});
        return;
    }
    s.held.push_back(Held{item, now, index, 0});
    // The window that ends with this item is complete. (Windows complete in order, and each
    // one before it has fired already.)
    if (index + 1 >= size_ && (index + 1 - size_) % step_ == 0) fire_count(s, fire, leaving);
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
            // Every window that has begun (it holds its first item) fires as it is.
            while (s.next * step_ < s.count) fire_count(s, fire, leaving);
            for (const Held &h : s.held) leaving.push_back(Leaving{h.item, h.status});
            s.held.clear();
        }
    }
    keys_.clear();
    due_ = decltype(due_)();
}

}  // namespace fluxus
