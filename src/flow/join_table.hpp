// JoinTable: the state of a join by key. Items of several inputs (0..inputs-1) wait per key
// until every input has one; the complete set goes out in input order. Incomplete keys expire
// after a timeout (checked in arrival order, so the sweep is a queue, not a scan), and the
// number of waiting keys is bounded. Owned by one stage worker; not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "flow/keyed_state.hpp"

namespace fluxus {

class JoinTable {
public:
    struct Done {
        std::vector<uint64_t> items;  // complete: one per input, in input order; else arrivals
        uint64_t start_ns;            // when the key's first item arrived
        int32_t status;  // 0: complete; FLUXUS_ETIMEDOUT: expired; FLUXUS_ECLOSED: end of input
    };

    JoinTable(uint32_t inputs, uint64_t timeout_ns, uint64_t max_keys)
        : inputs_(inputs), timeout_(timeout_ns), max_keys_(max_keys) {}

    // Adds `item` for `input` of key `k`. A completed key is appended to `out`. Returns 0, or
    // why the item cannot wait: FLUXUS_EINVAL (its input already has an item waiting for this
    // key), FLUXUS_EFULL (max_keys keys are waiting and this is a new one).
    int32_t add(const Key128 &k, uint32_t input, uint64_t item, uint64_t now,
                std::vector<Done> &out);
    // Appends the keys that waited longer than the timeout at `now`, oldest first.
    void expire(uint64_t now, std::vector<Done> &out);
    // Appends every waiting key, oldest first (end of input).
    void take_all(std::vector<Done> &out);
    // When the oldest waiting key expires (UINT64_MAX: none, or no timeout).
    uint64_t next_deadline();
    size_t waiting() const { return open_.size(); }

private:
    struct Open {
        std::vector<uint64_t> items;
        uint64_t mask = 0;
        uint64_t start = 0;
        uint64_t seq = 0;
    };
    struct Arrival {
        Key128 key;
        uint64_t seq;
    };
    // Drops queue entries of keys that completed (lazily: the queue is in arrival order).
    void skip_gone();
    // Drops every entry of a completed key. Keys that complete behind a key still waiting leave
    // entries skip_gone() cannot reach; without this, with no timeout, one key that never
    // completes would let the queue grow with every key joined after it. Run when the stale
    // entries outnumber the live ones, so the cost is amortised O(1) per key.
    void compact();
    // Moves the oldest waiting key (live) to `out`, incomplete, with `status`.
    void take_front(std::vector<Done> &out, int32_t status);

    uint32_t inputs_;
    uint64_t timeout_, max_keys_;
    uint64_t seq_ = 0;
    std::unordered_map<Key128, Open, Key128Hash> open_;
    std::deque<Arrival> arrivals_;
};

}  // namespace fluxus
