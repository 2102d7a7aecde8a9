// Shared batches: the workers of one stage split each other's batches, so that N workers run N
// items at once even when few items arrived in one batch (issue 13). See BatchShare in
// segment.hpp for the protocol; the owner of a share and its thieves run the same code.
#include "core/segment.hpp"
#include "core/segment_internal.hpp"

#include <algorithm>
#include <thread>

#include "util/clock.hpp"

namespace fluxus {

namespace {

constexpr uint64_t pack(uint32_t lo, uint32_t end) { return uint64_t(end) << 32 | lo; }

}  // namespace

void SegmentWorker::note_claim_time(size_t k, uint64_t dt) {
    uint64_t per_item = std::max<uint64_t>(1, dt / std::max<size_t>(k, 1));
    claim_ = uint32_t(std::clamp<uint64_t>(kClaimBudgetNs / per_item, 1, seg->p->batch_size()));
}

bool SegmentWorker::worth_sharing(size_t n) {
    // This worker is busy again.
    if (wants_work.load(std::memory_order_relaxed))
        wants_work.store(false, std::memory_order_relaxed);
    // A batch that emptied the queue (fewer items than a full one): a sibling that runs out of
    // work finds nothing there, so it may take part of this one.
    if (n < seg->p->batch_size()) return true;
    // A full batch: siblings that are idle now take part of it; one that goes idle later takes
    // the next batch from the queue. (A full batch that happens to be the last of the input
    // is not shared unless someone is idle when it is taken.)
    for (auto &t : seg->tasks)
        if (t.get() != this && t->wants_work.load(std::memory_order_relaxed)) return true;
    return false;
}

void SegmentWorker::publish_share(uint32_t n, uint32_t base, BatchJoin *join, uint64_t ticket) {
    {
        std::lock_guard<SpinLock> lock(share_.mu);
        share_.join = join;
        share_.base = base;
        share_.ticket = ticket;
        share_.range.store(pack(0, n), std::memory_order_release);
    }
    live_share_ = true;
    share_n_ = n;
    share_out_.clear();
    wants_work.store(false, std::memory_order_relaxed);
    if (n > 1) wake_idle_siblings();
}

void SegmentWorker::wake_idle_siblings() {
    // Pairs with the fence in idle_or_steal(): either the idle worker sees the range just
    // published, or this sees its wants_work.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    for (auto &t : seg->tasks) {
        SegmentWorker *w = t.get();
        if (w != this && w->wants_work.load(std::memory_order_relaxed) &&
            w->wants_work.exchange(false, std::memory_order_acq_rel))
            w->notify();
    }
}

bool SegmentWorker::idle_or_steal() {
    if (steal()) return true;
    wants_work.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!steal()) return false;
    wants_work.store(false, std::memory_order_relaxed);
    return true;
}

bool SegmentWorker::nothing_left_to_steal() {
    // The window is short (a queue pop and a few stores, no callback): wait it out.
    while (seg->taking.load(std::memory_order_acquire) != 0) {
        if (steal()) return false;
        std::this_thread::yield();
    }
    return !steal();
}

bool SegmentWorker::steal() {
    Pipeline &p = *seg->p;
    // Counted done: what it took could outlive the segment's output.
    if (is_exhausted_) return false;
    for (int attempt = 0; attempt < 8; ++attempt) {
        if (p.cancelling()) return false;
        // The sibling with the most unstarted items.
        SegmentWorker *victim = nullptr;
        uint32_t most = 0;
        for (auto &t : seg->tasks) {
            SegmentWorker *w = t.get();
            if (w == this) continue;
            uint64_t r = w->share_.range.load(std::memory_order_acquire);
            uint32_t lo = uint32_t(r), end = uint32_t(r >> 32);
            if (end > lo && end - lo > most) {
                most = end - lo;
                victim = w;
            }
        }
        if (!victim) return false;
        BatchShare &vs = victim->share_;
        uint32_t base = 0, take = 0;
        BatchJoin *join = nullptr;
        uint64_t ticket = 0;
        {
            std::lock_guard<SpinLock> lock(vs.mu);
            uint64_t r = vs.range.load(std::memory_order_acquire);
            for (;;) {
                uint32_t lo = uint32_t(r), end = uint32_t(r >> 32);
                if (end <= lo) break;  // claimed meanwhile: look again
                uint32_t n = (end - lo + 1) / 2, cut = end - n;
                if (!vs.range.compare_exchange_weak(r, pack(lo, cut), std::memory_order_acq_rel,
                                                    std::memory_order_acquire))
                    continue;
                // shared_[cut..end) is ours; the owner cannot retire its share (and reuse the
                // buffer) while we hold its lock.
                if (shared_.size() < n) shared_.resize(std::max<size_t>(n, p.batch_size()));
                std::copy(victim->shared_.begin() + cut, victim->shared_.begin() + end,
                          shared_.begin());
                join = vs.join;
                if (seg->ordered) {
                    if (!join) {
                        join = new BatchJoin();
                        join->ticket = vs.ticket;
                        join->open = 1;  // the victim's part
                        vs.join = join;
                    }
                    std::lock_guard<std::mutex> jl(join->mu);
                    ++join->open;
                }
                base = vs.base + cut;
                ticket = vs.ticket;
                take = n;
                break;
            }
        }
        if (take) {
            publish_share(take, base, join, ticket);
            return true;
        }
    }
    return false;
}

bool SegmentWorker::run_share() {
    Pipeline &p = *seg->p;
    if (p.cancelling()) {
        cancel_all();
        return false;
    }
    if (claims_in_loop_) {
        // The chain claims each item as it starts it, until the share runs out (or a cancel).
        uint64_t r = share_.range.load(std::memory_order_acquire);
        if (uint32_t(r) >= uint32_t(r >> 32)) {
            finish_share();
            return true;
        }
        struct Claiming {
            bool &on;
            explicit Claiming(bool &b) : on(b) { on = true; }
            ~Claiming() { on = false; }  // also when a forced unwind passes
        } claiming(claiming_);
        process(share_n_);
    } else {
        uint64_t r = share_.range.fetch_add(claim_, std::memory_order_acq_rel);
        uint32_t lo = uint32_t(r), end = uint32_t(r >> 32);
        if (lo >= end) {
            finish_share();
            return true;
        }
        size_t k = std::min<size_t>(claim_, end - lo);
        std::copy(shared_.begin() + lo, shared_.begin() + lo + k, a_.begin());
        uint64_t t0 = now_ns();
        process(k);
        note_claim_time(k, now_ns() - t0);
    }
    if (seg->ordered)
        share_out_.insert(share_out_.end(), a_.begin(), a_.begin() + out_n_);
    else
        deliver();
    if (p.cancelling()) {
        cancel_all();
        return false;
    }
    return !has_output();  // else parked until the next queue has room
}

void SegmentWorker::finish_share() {
    live_share_ = false;
    BatchJoin *join;
    uint64_t ticket;
    {
        std::lock_guard<SpinLock> lock(share_.mu);
        join = share_.join;
        ticket = share_.ticket;
        share_.join = nullptr;
        share_.range.store(0, std::memory_order_relaxed);
    }
    if (!seg->ordered) return;
    if (!join) {  // nobody took a part: the batch is whole here
        commit_ordered(ticket, share_out_.data(), share_out_.size());
        share_out_.clear();
        return;
    }
    bool last;
    {
        std::lock_guard<std::mutex> lock(join->mu);
        join->parts.emplace_back(share_.base, std::move(share_out_));
        last = --join->open == 0;
    }
    share_out_.clear();
    if (!last) return;
    // Every part is in: the batch's output in input order, under its ticket.
    std::sort(join->parts.begin(), join->parts.end(),
              [](const auto &a, const auto &b) { return a.first < b.first; });
    std::vector<uint64_t> all;
    for (auto &part : join->parts) all.insert(all.end(), part.second.begin(), part.second.end());
    commit_ordered(join->ticket, all.data(), all.size());
    delete join;
}

void SegmentWorker::commit_ordered(uint64_t ticket, const uint64_t *items, size_t n) {
    PendingItems out;
    std::swap(out, pending);  // reuse pending's buffers; it is empty on the ordered path
    seg->prepare_out(items, n, out);
    seg->reorder.commit(ticket, out, this);
    out.clear();
    std::swap(out, pending);
}

void SegmentWorker::abandon_share() {
    if (!live_share_) return;
    // Claims what is left, so that no thief takes it, and ends it as cancelled at the head.
    uint64_t r = share_.range.load(std::memory_order_acquire);
    for (;;) {
        uint32_t lo = uint32_t(r), end = uint32_t(r >> 32);
        if (end <= lo) break;
        if (share_.range.compare_exchange_weak(r, pack(end, end), std::memory_order_acq_rel,
                                               std::memory_order_acquire)) {
            seg->p->cancel_items(*seg->head(), shared_.data() + lo, end - lo, false);
            break;
        }
    }
    finish_share();  // ordered: the commit ends the part's outputs as cancelled
}

}  // namespace fluxus
