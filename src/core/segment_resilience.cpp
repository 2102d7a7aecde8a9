// The segment worker's resilience machinery: retries waiting on timers, circuit-breaker gated
// calls, error routes to another pipeline, and the rate-limit gate on a stage's input.
#include <algorithm>

#include "core/segment.hpp"
#include "core/segment_internal.hpp"
#include "flow/circuit_breaker.hpp"
#include "flow/concurrency_limiter.hpp"
#include "flow/rate_limiter.hpp"
#include "runtime/runtime.hpp"
#include "util/clock.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

bool SegmentWorker::park_retry(uint64_t item, int32_t status) {
    Stage &head = *seg->head();
    const RetryPolicy &rp = head.retry;
    if (attempt_ >= rp.max_attempts || seg->p->cancelling()) return false;
    if (rp.predicate) {
        int32_t again;
        try {
            again = rp.predicate(rp.predicate_user.user, item, status, attempt_);
        } FLUXUS_CATCH_ALL {
            again = 0;  // a predicate that throws gives up on the item rather than loop
        }
        if (again != 1) return false;
    }
    uint64_t due = rt_->now() + rp.delay_ns(attempt_ + 1, index, &retry_draws_);
    retries_.push_back(RetryEntry{due, retry_seq_++, item, attempt_ + 1});
    std::push_heap(retries_.begin(), retries_.end(), retry_later);
    head.c.retries.fetch_add(1, std::memory_order_relaxed);
    head.c.retry_waiting.fetch_add(1, std::memory_order_relaxed);
    return true;
}

size_t SegmentWorker::take_due_retries(uint64_t now, size_t max,
                                       std::vector<RetryEntry> &out) {
    out.clear();
    while (!retries_.empty() && retries_.front().due <= now && out.size() < max) {
        out.push_back(retries_.front());
        std::pop_heap(retries_.begin(), retries_.end(), retry_later);
        retries_.pop_back();
    }
    if (!out.empty())
        seg->head()->c.retry_waiting.fetch_sub(out.size(), std::memory_order_relaxed);
    return out.size();
}

void SegmentWorker::cancel_retries() {
    if (retries_.empty()) return;
    Stage &head = *seg->head();
    std::vector<uint64_t> items;
    for (const RetryEntry &e : retries_) items.push_back(e.item);
    head.c.retry_waiting.fetch_sub(retries_.size(), std::memory_order_relaxed);
    retries_.clear();
    seg->p->cancel_items(head, items.data(), items.size(), false);
}

bool SegmentWorker::flush_error_branch() {
    Stage &head = *seg->head();
    if (!route_pending_.empty()) {
        // They leave this stage here (counted routed) and arrive at the branch when its queue
        // takes them; what waits for room is cancelled there if the pipeline is cancelled.
        head.c.routed.fetch_add(route_pending_.size(), std::memory_order_relaxed);
        seg->error_out->stage_items(route_pending_.data(), route_pending_.size(), error_pend_);
        route_pending_.clear();
    }
    return error_pend_.empty() || seg->error_out->accept(error_pend_, this);
}

bool SegmentWorker::flush_routes() {
    if (seg->error_out) return flush_error_branch();
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    Pipeline *target = Pipeline::pin_route_target(head.error_route);
    uint32_t pushed = 0;
    int32_t rc = FLUXUS_EINVAL;
    // A cursor source's watermark hears of handed-over items as finished; their pages are
    // asked before the push, after which the items belong to the route's pipeline.
    CursorTracker *cur = p.cursor();
    std::vector<uint64_t> pages;
    if (cur)
        for (uint64_t x : route_pending_) pages.push_back(cur->page_of(x));
    if (target) {
        rc = target->push(route_pending_.data(), uint32_t(route_pending_.size()), 0, true,
                          &pushed);
        target->unpin();
    }
    // Handed over: they end here as dead-lettered, and the route's pipeline admitted them.
    t.dead_lettered += pushed;
    if (cur)
        for (uint32_t i = 0; i < pushed; ++i) cur->page_ended(pages[i], true);
    route_pending_.erase(route_pending_.begin(), route_pending_.begin() + pushed);
    if (!route_pending_.empty()) {
        if (rc == FLUXUS_EFULL) {
            // Full (or paused): wait without a thread and try again; meanwhile this stage takes
            // no input, so the backpressure reaches our producers too.
            t.flush_to(head.c);
            uint64_t now = rt_->now();
            arm_timer(now + 1000000, now);
            return false;
        }
        // The route's pipeline is gone, closed or cancelled: the items fail here.
        char msg[160];
        snprintf(msg, sizeof msg, "error route unavailable (%s): failed items end here",
                 status_name(rc));
        p.log(FLUXUS_LOG_WARN, &head, msg);
        // They end as failures under the stage's policy: finished unless it is fail-fast.
        bool finished = head.error_policy != FLUXUS_ERROR_FAIL_FAST;
        for (uint64_t x : route_pending_) {
            ++t.failed;
            p.release_item(x, finished);
        }
        route_pending_.clear();
    }
    t.flush_to(head.c);
    return true;
}

bool SegmentWorker::breaker_allows(uint64_t now, uint64_t *epoch, bool *wait) {
    Stage &head = *seg->head();
    uint64_t retry_at = UINT64_MAX;
    *wait = false;
    if (head.breaker->allow(now, epoch, &retry_at, head.breaker_wait ? this : nullptr, seg->p))
        return true;
    if (head.breaker_wait) {
        *wait = true;
        arm_timer(retry_at, now);  // open: at the reset time; half-open: a change wakes us
    }
    return false;
}

bool SegmentWorker::run_guarded(size_t n, const uint32_t *attempts) {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    std::vector<uint64_t> items(a_.begin(), a_.begin() + n);
    auto keep_rest = [&](size_t from) {
        std::vector<RetryEntry> rest;
        for (size_t j = from; j < n; ++j)
            rest.push_back(RetryEntry{0, 0, items[j], attempts ? attempts[j] : 1});
        blocked_.insert(blocked_.begin(), rest.begin(), rest.end());
    };
    // Where a forced unwind out of a callback (the breaker's state callback, the stage's, the
    // dead-letter callback) leaves item i: not started (it waits with the rest, which
    // cancel_all() cancels), in the dead-letter callback of a refusal (it stays with the host),
    // or through process() (which ended it) with its outputs, if any, still in a_.
    enum class At { asking, refused, running, after } at = At::asking;
    size_t i = 0;
    try {
        for (; i < n; ++i) {
            uint64_t now = rt_->now(), epoch = 0;
            bool wait = false;
            at = At::asking;
            if (!breaker_allows(now, &epoch, &wait)) {
                if (wait) {
                    keep_rest(i);
                    return false;
                }
                StageTally &t = tally_[0];
                at = At::refused;
                {
                    RetryScopeGuard refused(this, &head, attempts ? attempts[i] : 1, true);
                    p.fail_item(head, items[i], FLUXUS_ECIRCUITOPEN, "circuit breaker open", &t);
                }
                t.flush_to(head.c);
                continue;
            }
            a_[0] = items[i];
            attempt_ = attempts ? attempts[i] : 1;
            uint64_t failures = head_failures, cancels = head_cancels;
            at = At::running;
            process(1);
            at = At::after;
            attempt_ = 1;
            if (head_cancels != cancels)
                head.breaker->abandon(epoch);  // the callback gave up on a cancel: no outcome
            else
                head.breaker->record(epoch, head_failures == failures, rt_->now());
            deliver();
            if (p.cancelling()) {
                keep_rest(i + 1);
                cancel_all();
                return false;
            }
            if (has_output()) {
                keep_rest(i + 1);
                return false;
            }
        }
    } FLUXUS_ON_FORCED_UNWIND(([&] {
        attempt_ = 1;
        if (at == At::refused) {
            if (!t_unwind.ended) ++tally_[0].cancelled;
            t_unwind.ended = false;
            tally_[0].flush_to(head.c);
        }
        if (at == At::after && out_n_ > 0) {
            if (Stage *ns = seg->out_stage()) p.cancel_items(*ns, a_.data(), out_n_, true);
            out_n_ = 0;
        }
        keep_rest(at == At::asking ? i : i + 1);
    }()))
    return true;
}

size_t SegmentWorker::take_input(size_t max, uint64_t now, bool *drained) {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    RateLimiter *rl = head.rate_limiter;
    uint32_t lane = seg->keyed ? index : 0;
    *drained = false;
    if (!rl) return seg->input->pop(lane, a_.data(), max, this, drained);
    for (;;) {
        if (held_head_ == held_.size()) {
            // Items start waiting for tokens when the stage takes them; until then they wait in
            // the queue, whose backpressure slows the producer.
            held_.resize(p.batch_size());
            size_t n = seg->input->pop(lane, held_.data(), std::min(max, held_.size()), this,
                                       drained);
            held_.resize(n);
            held_head_ = 0;
            if (n == 0) return 0;
            held_since_ = now;
        }
        size_t waiting = held_.size() - held_head_;
        uint64_t retry = 0;
        uint32_t g = rl->take_or_wait(uint32_t(std::min(max, waiting)), now, this, &p,
                                      &retry);
        std::copy(held_.begin() + held_head_, held_.begin() + held_head_ + g, a_.begin());
        held_head_ += g;
        waiting -= g;
        if (waiting == 0) return g;
        if (head.rate_wait_timeout_ms != UINT32_MAX) {
            // Like a deadline-aware wait: an item whose token cannot come within its wait
            // timeout (at the limiter's current rate) fails now rather than at the deadline.
            uint64_t limit = uint64_t(head.rate_wait_timeout_ms) * 1000000u;
            uint64_t waited = now - held_since_;
            uint64_t budget = limit > waited ? limit - waited : 0;
            // The next token, after the g just taken.
            uint64_t first = g ? rl->wait_ns(1, now) : retry;
            double rate = rl->rate();
            size_t keep = 0;
            if (first != UINT64_MAX && first <= budget && rate > 0)
                keep = 1 + size_t(double(budget - first) / (1e9 / rate));
            if (keep < waiting) {
                StageTally &t = tally_[0];
                for (size_t i = held_head_ + keep; i < held_.size(); ++i)
                    p.fail_item(head, held_[i], FLUXUS_ELIMITED,
                                "rate limit: no token within the wait timeout", &t);
                t.flush_to(head.c);
                held_.resize(held_head_ + keep);
                waiting = keep;
                if (waiting == 0) {
                    if (g) return g;
                    continue;  // all failed: take the next items
                }
            }
        }
        if (g == 0) {
            // Sleep until some tokens are due: about half a millisecond's worth at high rates,
            // so a fast limit costs a wake-up per batch, not per item. A rate change wakes us
            // earlier (we are registered as a waiter).
            double batch = std::max(1.0, rl->rate() * 0.0005);
            uint32_t want = uint32_t(std::min<double>(double(waiting), batch));
            uint64_t w = rl->wait_ns(want, now);
            if (w == UINT64_MAX) w = retry;
            if (w != UINT64_MAX) arm_timer(now + w, now);
        }
        return g;
    }
}

}  // namespace fluxus
