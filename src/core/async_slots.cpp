// AsyncSlots implementation. Everything runs under one mutex per stage: a completion is a few
// stores and a push, and the worker takes whole batches of results per lock.
#include "core/async_slots.hpp"

#include <chrono>

#include <algorithm>

#include "fluxus.h"
#include "runtime/task.hpp"

namespace fluxus {

namespace {

constexpr uint64_t kSlotBits = 20;  // in-flight limit <= 2^20

// A generation base that differs between tables (and runs): the address, a counter and the
// clock, mixed. Never 0, which no token carries.
uint32_t random_generation_base(const void *self) {
    static std::atomic<uint64_t> counter{0};
    uint64_t z = uint64_t(reinterpret_cast<uintptr_t>(self)) ^
                 (counter.fetch_add(1, std::memory_order_relaxed) * 0x9E3779B97F4A7C15ull) ^
                 uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    uint32_t g = uint32_t(z ^ (z >> 31));
    return g ? g : 1;
}

uint32_t next_generation(uint32_t g) { return g == UINT32_MAX ? 1 : g + 1; }

}  // namespace

AsyncSlots::AsyncSlots(uint32_t stage_index, uint32_t capacity, bool ordered, uint64_t timeout_ns)
    : stage_bits_(uint64_t(stage_index) << 52),
      ordered_(ordered),
      timeout_ns_(timeout_ns),
      slots_(capacity) {
    base_ = random_generation_base(this);
    for (Slot &s : slots_) s.gen = base_;
    free_.reserve(capacity);
    for (uint32_t i = capacity; i-- > 0;) free_.push_back(i);
    done_.reserve(capacity);
}

uint64_t AsyncSlots::token_of(uint32_t slot) const {
    return stage_bits_ | (uint64_t(slot) << 32) | slots_[slot].gen;
}

uint32_t AsyncSlots::room() {
    std::lock_guard<std::mutex> lock(mu_);
    return uint32_t(free_.size());
}

uint32_t AsyncSlots::in_use() {
    std::lock_guard<std::mutex> lock(mu_);
    return uint32_t(slots_.size() - free_.size());
}

void AsyncSlots::set_worker(Task *t) {
    std::lock_guard<std::mutex> lock(mu_);
    worker_ = t;
}

uint64_t AsyncSlots::begin(uint64_t item, uint64_t now, uint32_t attempt, uint64_t epoch) {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t i = free_.back();
    free_.pop_back();
    Slot &s = slots_[i];
    s.state = State::pending;
    s.item = item;
    s.start = now;
    s.attempt = attempt;
    s.epoch = epoch;
    started_.push_back(Started{i, s.gen});
    if (started_.size() > 2 * slots_.size() + 64) compact_started();
    return token_of(i);
}

void AsyncSlots::release(uint32_t i, Reason how) {
    Slot &s = slots_[i];
    s.ended_gen = s.gen;
    s.ended_how = how;
    s.gen = next_generation(s.gen);  // generation 0 is never valid
    s.state = State::free;
    s.text.reset();
    free_.push_back(i);
}

void AsyncSlots::remember_timeout(uint64_t token) {
    size_t cap = std::max<size_t>(4096, 4 * slots_.size());
    if (timed_out_order_.size() >= cap) {
        timed_out_tokens_.erase(timed_out_order_.front());
        timed_out_order_.pop_front();
    }
    timed_out_tokens_.insert(token);
    timed_out_order_.push_back(token);
}

void AsyncSlots::compact_started() {
    // Unordered completions leave stale entries behind; drop them so the deque stays bounded by
    // the slot count.
    std::deque<Started> live;
    for (const Started &e : started_)
        if (slots_[e.slot].gen == e.gen && slots_[e.slot].state != State::free) live.push_back(e);
    started_.swap(live);
}

bool AsyncSlots::abort(uint64_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t i = uint32_t((token >> 32) & ((1u << kSlotBits) - 1));
    Slot &s = slots_[i];
    if (s.gen != uint32_t(token) || s.state != State::pending) return false;
    release(i, Reason::refused);
    return true;
}

int32_t AsyncSlots::complete(uint64_t token, int32_t status, uint64_t out, const char **why,
                             std::unique_ptr<std::string> text) {
    uint32_t i = uint32_t((token >> 32) & ((1u << kSlotBits) - 1));
    uint32_t gen = uint32_t(token);
    std::unique_lock<std::mutex> lock(mu_);
    if (i < slots_.size() && slots_[i].gen == gen && slots_[i].state == State::timing_out &&
        timeout_thread_ != std::this_thread::get_id()) {
        // The worker is still failing this item (the host's, until we say so): wait until it is
        // done with it, so that the refusal below really hands the item back.
        while (slots_[i].gen == gen && slots_[i].state == State::timing_out) {
            lock.unlock();
            std::this_thread::yield();
            lock.lock();
        }
    }
    if ((token & (uint64_t(0xfff) << 52)) != stage_bits_ || i >= slots_.size() || gen == 0) {
        *why = "not a completion handle of this stage";
        return FLUXUS_EINVAL;
    }
    Slot &s = slots_[i];
    if (s.gen == gen && s.state == State::timing_out) {
        // From the dead-letter callback of this very item: fluxus will not touch it again.
        late.fetch_add(1, std::memory_order_relaxed);
        *why = "the item had already timed out (late completion ignored)";
        return FLUXUS_ETIMEDOUT;
    }
    if (s.gen == gen) {
        if (s.state == State::pending) {
            s.state = State::done;
            s.status = status;
            s.out = out;
            s.text = std::move(text);
            if (!ordered_) done_.push_back(i);
            // Under the lock: set_worker(nullptr) is then a barrier against a freed task.
            if (worker_) worker_->notify();
            return FLUXUS_OK;
        }
        *why = "this item was already completed";
        return FLUXUS_ESTATE;
    }
    // Generations only move forward from the table's base: one past the slot's current one, or
    // before the base (another table's token, almost surely), was never handed out here.
    if (uint32_t(gen - base_) > uint32_t(s.gen - base_)) {
        *why = "not a completion handle of this stage (never issued)";
        return FLUXUS_EINVAL;
    }
    if (s.ended_gen == gen) {
        switch (s.ended_how) {
        case Reason::timed_out:
            late.fetch_add(1, std::memory_order_relaxed);
            *why = "the item had already timed out (late completion ignored)";
            return FLUXUS_ETIMEDOUT;
        case Reason::cancelled:
            *why = "the item was cancelled";
            return FLUXUS_ECANCELED;
        case Reason::refused:
            *why = "the callback returned an error for this item, which was failed";
            return FLUXUS_ESTATE;
        default:
            *why = "this item was already completed";
            return FLUXUS_ESTATE;
        }
    }
    if (timed_out_tokens_.count(token)) {
        late.fetch_add(1, std::memory_order_relaxed);
        *why = "the item had already timed out (late completion ignored)";
        return FLUXUS_ETIMEDOUT;
    }
    *why = "stale completion handle (already used)";
    return FLUXUS_ESTATE;
}

uint64_t AsyncSlots::collect(uint64_t now, std::vector<Ended> &out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto take_done = [&](uint32_t i) {
        Slot &s = slots_[i];
        out.push_back(Ended{s.out, s.status, s.status == 0 ? End::completed : End::failed,
                            s.attempt, s.epoch, i, 0, std::move(s.text)});
        release(i, Reason::completed);
    };
    if (!ordered_) {
        for (uint32_t i : done_) take_done(i);
        done_.clear();
    }
    // Walk the start order: stale entries go, due timeouts end, and in ordered mode completed
    // items go on while everything before them has.
    while (!started_.empty()) {
        Started e = started_.front();
        Slot &s = slots_[e.slot];
        if (s.gen != e.gen || s.state == State::free) {
            started_.pop_front();
            continue;
        }
        if (s.state == State::done) {
            if (!ordered_) break;  // on the done_ list already; cannot happen here
            take_done(e.slot);
            started_.pop_front();
            continue;
        }
        if (timeout_ns_ && now >= s.start + timeout_ns_) {
            // One at a time: while the worker fails it (dead-letter callback...), no other item
            // is half-way through timing out, so a callback that completes another item finds
            // it simply pending.
            out.push_back(Ended{s.item, FLUXUS_ETIMEDOUT, End::timed_out, s.attempt, s.epoch,
                                e.slot, token_of(e.slot), nullptr});
            timed_out.fetch_add(1, std::memory_order_relaxed);
            s.state = State::timing_out;
            timeout_thread_ = std::this_thread::get_id();
            started_.pop_front();
            break;
        }
        break;
    }
    if (!timeout_ns_) return UINT64_MAX;
    // In unordered mode a completed entry can sit at the front; the earliest pending start is
    // the first live pending entry.
    for (const Started &e : started_) {
        const Slot &s = slots_[e.slot];
        if (s.gen == e.gen && s.state == State::pending) return s.start + timeout_ns_;
    }
    return UINT64_MAX;
}

void AsyncSlots::finish_timeout(uint32_t slot) {
    std::lock_guard<std::mutex> lock(mu_);
    Slot &s = slots_[slot];
    if (s.state != State::timing_out) return;
    remember_timeout(token_of(slot));
    release(slot, Reason::timed_out);
}

size_t AsyncSlots::cancel_all(std::vector<uint64_t> &owned, std::vector<Abandoned> *abandoned) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t pending = 0;
    for (uint32_t i = 0; i < slots_.size(); ++i) {
        Slot &s = slots_[i];
        if (s.state == State::free) continue;
        // A completed item's completion stood (a second one is "already completed"); only the
        // pending ones were cut short by the cancel.
        if (s.state == State::timing_out) {
            release(i, Reason::timed_out);  // already counted as failed
            continue;
        }
        if (s.state == State::done) {
            owned.push_back(s.out);
            release(i, Reason::completed);
        } else {
            ++pending;
            if (abandoned) abandoned->push_back(Abandoned{s.item, token_of(i)});
            release(i, Reason::cancelled);
        }
    }
    started_.clear();
    done_.clear();
    return pending;
}

}  // namespace fluxus
