#include "flow/join_table.hpp"

#include "fluxus.h"

namespace fluxus {

int32_t JoinTable::add(const Key128 &k, uint32_t input, uint64_t item, uint64_t now,
                       std::vector<Done> &out) {
    auto it = open_.find(k);
    if (it == open_.end()) {
        if (max_keys_ && open_.size() >= max_keys_) return FLUXUS_EFULL;
        it = open_.emplace(k, Open()).first;
        it->second.items.assign(inputs_, 0);
        it->second.start = now;
        it->second.seq = ++seq_;
        arrivals_.push_back(Arrival{k, seq_});
    }
    Open &o = it->second;
    uint64_t bit = uint64_t(1) << input;
    if (o.mask & bit) return FLUXUS_EINVAL;
    o.mask |= bit;
    o.items[input] = item;
    uint64_t all = inputs_ >= 64 ? ~uint64_t(0) : (uint64_t(1) << inputs_) - 1;
    if (o.mask == all) {
        out.push_back(Done{std::move(o.items), o.start, 0});
        open_.erase(it);
        if (arrivals_.size() > 2 * open_.size() + 64) compact();
    }
    return 0;
}

void JoinTable::compact() {
    std::deque<Arrival> live;
    for (const Arrival &a : arrivals_) {
        auto it = open_.find(a.key);
        if (it != open_.end() && it->second.seq == a.seq) live.push_back(a);
    }
    arrivals_.swap(live);
}

void JoinTable::skip_gone() {
    while (!arrivals_.empty()) {
        auto it = open_.find(arrivals_.front().key);
        if (it != open_.end() && it->second.seq == arrivals_.front().seq) return;
        arrivals_.pop_front();
    }
}

uint64_t JoinTable::next_deadline() {
    skip_gone();
    if (!timeout_ || arrivals_.empty()) return UINT64_MAX;
    return open_.find(arrivals_.front().key)->second.start + timeout_;
}

void JoinTable::take_front(std::vector<Done> &out, int32_t status) {
    auto it = open_.find(arrivals_.front().key);
    arrivals_.pop_front();
    Done done{{}, it->second.start, status};
    for (uint32_t i = 0; i < inputs_; ++i)
        if (it->second.mask & (uint64_t(1) << i)) done.items.push_back(it->second.items[i]);
    out.push_back(std::move(done));
    open_.erase(it);
}

void JoinTable::expire(uint64_t now, std::vector<Done> &out) {
    for (uint64_t d = next_deadline(); d != UINT64_MAX && d <= now; d = next_deadline())
        take_front(out, FLUXUS_ETIMEDOUT);
}

void JoinTable::take_all(std::vector<Done> &out) {
    for (skip_gone(); !arrivals_.empty(); skip_gone()) take_front(out, FLUXUS_ECLOSED);
}

}  // namespace fluxus
