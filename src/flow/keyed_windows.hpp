// KeyedWindows: per-key windows of items — tumbling by count, tumbling by time (aligned periods
// of the runtime's clock) and session windows (closed after a gap without items). It only
// decides which items form a window and when a window closes; the stage worker hands closed
// windows to the host's aggregate callback. Owned by one stage worker; not thread-safe.
#pragma once

#include <cstdint>
#include <queue>
#include <unordered_map>
#include <vector>

#include "flow/keyed_state.hpp"

namespace fluxus {

class KeyedWindows {
public:
    struct Closed {
        std::vector<uint64_t> items;
        uint64_t start_ns;  // count windows: when their first item came
    };

    KeyedWindows(int32_t kind, uint64_t size) : kind_(kind), size_(size) {}

    // Adds `item` of key `k` at `now`; windows it closes (a full count window, or the key's
    // previous time or session window whose end has come by `now`) are appended to `out`.
    void add(const Key128 &k, uint64_t item, uint64_t now, std::vector<Closed> &out);
    // Appends the windows whose time has come at `now`, oldest deadline first.
    void close_due(uint64_t now, std::vector<Closed> &out);
    // Appends every open window (end of input or drain: partial windows too), oldest first.
    void close_all(std::vector<Closed> &out);
    uint64_t next_deadline();
    size_t open() const { return open_.size(); }

private:
    struct Open {
        std::vector<uint64_t> items;
        uint64_t start = 0;
        uint64_t deadline = UINT64_MAX;  // time and session windows
        uint64_t version = 0;            // of its current heap entry (see versions_)
        uint64_t order = 0;              // when the window opened, for close_all's order
    };
    struct Due {
        uint64_t deadline, version;
        Key128 key;
        bool operator>(const Due &o) const { return deadline > o.deadline; }
    };
    void close(std::unordered_map<Key128, Open, Key128Hash>::iterator it,
               std::vector<Closed> &out);

    int32_t kind_;
    uint64_t size_;
    uint64_t opened_ = 0;
    // Heap entries are lazy: one is stale unless its version is its key's window's version now.
    // Versions come from this one counter, not per window, so that an entry left behind by a
    // window that add() closed can never match the key's next window.
    uint64_t versions_ = 0;
    std::unordered_map<Key128, Open, Key128Hash> open_;
    std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due_;
};

}  // namespace fluxus
