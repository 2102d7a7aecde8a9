// Segment workers: fetch a batch (pull source or queue), run it through the fused stages,
// hand the survivors downstream (directly, or through the reorder window), and park on the
// queue that is empty or full instead of blocking a thread.
#include "core/segment.hpp"
#include "core/segment_internal.hpp"

#include <algorithm>

#include "flow/circuit_breaker.hpp"
#include "flow/concurrency_limiter.hpp"
#include "flow/rate_limiter.hpp"
#include "runtime/runtime.hpp"
#include "util/clock.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

thread_local RetryScope *t_retry_scope = nullptr;
thread_local UnwindNote t_unwind;


void StageTally::flush_to(StageCounters &c) {
    // Admissions first, so a concurrent reader never sees more ends than admissions.
    if (spawned) c.spawned.fetch_add(spawned, std::memory_order_relaxed);
    if (in) c.in.fetch_add(in, std::memory_order_relaxed);
    if (out) c.out.fetch_add(out, std::memory_order_relaxed);
    if (filtered) c.filtered.fetch_add(filtered, std::memory_order_relaxed);
    if (failed) c.failed.fetch_add(failed, std::memory_order_relaxed);
    if (dead_lettered) c.dead_lettered.fetch_add(dead_lettered, std::memory_order_relaxed);
    if (cancelled) c.cancelled.fetch_add(cancelled, std::memory_order_relaxed);
    if (dropped) c.dropped.fetch_add(dropped, std::memory_order_relaxed);
    if (busy_ns) c.busy_ns.fetch_add(busy_ns, std::memory_order_relaxed);
    *this = StageTally();
}

// ---------------------------------------------------------------------------------------------
// ReorderWindow

bool ReorderWindow::reserve(SegmentWorker *w) {
    std::lock_guard<std::mutex> lock(mu_);
    if (outstanding_ < slots_.size()) {
        ++outstanding_;
        return true;
    }
    if (std::find(waiters_.begin(), waiters_.end(), w) == waiters_.end()) waiters_.push_back(w);
    return false;
}

void ReorderWindow::unreserve() {
    std::vector<Task *> wake;
    {
        std::lock_guard<std::mutex> lock(mu_);
        --outstanding_;
        wake.swap(waiters_);
    }
    for (Task *t : wake) t->notify();
}

bool ReorderWindow::flush_locked(SegmentWorker *w, std::vector<Task *> &wake) {
    Segment &seg = *w->seg;
    for (;;) {
        Slot &s = slots_[next_ % slots_.size()];
        if (!s.ready) return true;
        if (!s.items.empty() && !seg.push_out(s.items, w)) return false;
        s.items.clear();
        s.ready = false;
        ++next_;
        --outstanding_;
        for (Task *t : waiters_) wake.push_back(t);
        waiters_.clear();
    }
}

void ReorderWindow::commit(uint64_t ticket, PendingItems &out, SegmentWorker *w) {
    std::vector<Task *> wake;
    {
        std::lock_guard<std::mutex> lock(mu_);
        Segment &seg = *w->seg;
        if (seg.p->cancelling()) {
            if (Stage *ns = seg.out_stage())
                seg.p->cancel_items(*ns, out.items.data() + out.head, out.size(), true);
            out.clear();
            --outstanding_;
            wake.swap(waiters_);
        } else {
            Slot &s = slots_[ticket % slots_.size()];
            s.items.clear();
            std::swap(s.items, out);  // `out` gets the slot's old (empty) buffers back
            s.ready = true;
            flush_locked(w, wake);
        }
    }
    for (Task *t : wake) t->notify();
}

bool ReorderWindow::flush(SegmentWorker *w) {
    std::vector<Task *> wake;
    bool done;
    {
        std::lock_guard<std::mutex> lock(mu_);
        done = flush_locked(w, wake);
    }
    for (Task *t : wake) t->notify();
    return done;
}

bool ReorderWindow::empty() {
    std::lock_guard<std::mutex> lock(mu_);
    return outstanding_ == 0;
}

void ReorderWindow::cancel_all(Segment &seg) {
    std::vector<Task *> wake;
    {
        std::lock_guard<std::mutex> lock(mu_);
        Stage *ns = seg.out_stage();
        for (Slot &s : slots_) {
            if (!s.ready) continue;
            if (ns) seg.p->cancel_items(*ns, s.items.items.data() + s.items.head, s.items.size(),
                                        true);
            s.items.clear();
            s.ready = false;
            --outstanding_;
        }
        wake.swap(waiters_);
    }
    for (Task *t : wake) t->notify();
}

// ---------------------------------------------------------------------------------------------
// Segment

void Segment::stage_items(const uint64_t *items, size_t n, PendingItems &pend) {
    if (!keyed) {
        pend.items.insert(pend.items.end(), items, items + n);
        return;
    }
    Stage &ns = *head();
    uint32_t lanes = input->lanes();
    size_t i = 0;
    try {
        for (; i < n; ++i) {
            uint64_t h;
            if (ns.key_fn) {
                Key128 key;
                int32_t rc;
                try {
                    rc = byte_key_digest(ns, items[i], &key);
                } FLUXUS_CATCH_ALL {
                    rc = FLUXUS_EEXCEPTION;
                }
                if (rc != 0) {
                    ns.c.in.fetch_add(1, std::memory_order_relaxed);
                    p->fail_item(ns, items[i], rc, "key callback failed", nullptr);
                    continue;
                }
                h = key.lo;
            } else {
                h = hash_word(items[i]);
            }
            pend.items.push_back(items[i]);
            pend.lanes.push_back(lane_for_hash(h, lanes));
        }
    } FLUXUS_ON_FORCED_UNWIND(([&] {
        // Out of the key callback (or the dead-letter callback of its failure) for items[i]:
        // it stays with the host unless it had ended; the rest never reached the queue. Both
        // arrive at the head stage cancelled. (What was staged is the caller's to hand on or
        // cancel.)
        size_t held = t_unwind.ended ? 0 : 1;
        t_unwind.ended = false;
        ns.c.in.fetch_add(held, std::memory_order_relaxed);
        ns.c.cancelled.fetch_add(held, std::memory_order_relaxed);
        p->cancel_items(ns, items + i + 1, n - i - 1, true);
    }()))
}

bool Segment::accept(PendingItems &pend, SegmentWorker *w) {
    Stage &ns = *stages.front();  // a segment with an input queue always has a head stage
    ItemQueue &q = *input;
    size_t offered = pend.size();
    // Count the items as arrived before they become visible to the consumer, so its counts
    // never run ahead of ours; what stays pending is taken back below.
    ns.c.in.fetch_add(offered, std::memory_order_relaxed);
    switch (ns.overflow) {
    case FLUXUS_OVERFLOW_BLOCK:
    case FLUXUS_OVERFLOW_BLOCK_TIMEOUT: {
        q.push(pend, w);
        if (pend.empty()) {
            pend.since_ns = 0;
            return true;
        }
        ns.c.in.fetch_sub(pend.size(), std::memory_order_relaxed);
        if (ns.overflow == FLUXUS_OVERFLOW_BLOCK) return false;
        uint64_t now = p->runtime()->now();
        uint64_t limit = ns.overflow_timeout_us * 1000u;
        if (pend.since_ns == 0) {
            pend.since_ns = now;
            if (w) p->runtime()->add_timer(now + limit, w, p);
            return false;
        }
        if (now - pend.since_ns < limit) return false;
        size_t n = pend.size();
        ns.c.in.fetch_add(n, std::memory_order_relaxed);
        for (size_t i = 0; i < n; ++i)
            p->fail_item(ns, pend.items[pend.head + i], FLUXUS_ETIMEDOUT,
                         "queue stayed full past the overflow timeout", nullptr);
        pend.clear();
        return true;
    }
    case FLUXUS_OVERFLOW_DROP_OLDEST: {
        std::vector<uint64_t> evicted;
        q.push(pend, nullptr, &evicted);
        if (!evicted.empty()) p->drop_items(ns, evicted.data(), evicted.size(), false);
        break;
    }
    case FLUXUS_OVERFLOW_DROP_NEWEST:
        q.push(pend, nullptr);
        if (!pend.empty() && !q.closed()) {
            p->drop_items(ns, pend.items.data() + pend.head, pend.size(), false);
            pend.clear();
        }
        break;
    default:  // FLUXUS_OVERFLOW_FAIL
        q.push(pend, nullptr);
        if (!pend.empty() && !q.closed()) {
            for (size_t i = pend.head; i < pend.items.size(); ++i)
                p->fail_item(ns, pend.items[i], FLUXUS_EFULL, "queue full", nullptr);
            pend.clear();
        }
        break;
    }
    // Only a host push can meet a closed queue (cancel raced with it): what did not get in is
    // cancelled here, never left unaccounted.
    if (!pend.empty() && q.closed())
        p->cancel_items(ns, pend.items.data() + pend.head, pend.size(), false);
    pend.clear();
    return true;
}

void Segment::worker_exhausted() {
    if (exhausted.fetch_add(1, std::memory_order_acq_rel) + 1 == workers) try_close_output();
}

void Segment::try_close_output() {
    if (exhausted.load(std::memory_order_acquire) < workers) return;
    if (ordered && !reorder.empty()) return;
    if (output_closed.exchange(true)) return;
    for (Segment *t : targets) t->input->producer_done();
    p->segment_done();
}

// ---------------------------------------------------------------------------------------------
// SegmentWorker

SegmentWorker::SegmentWorker(Runtime *rt, Segment *s, uint32_t i)
    : Task(rt, s->p), seg(s), index(i) {
    size_t b = s->p->batch_size();
    a_.resize(b);
    b_.resize(b);
    state_.resize(s->stages.size());
    for (WorkerStageState &ws : state_) ws.call = &call_errors_;
    tally_.resize(s->stages.size());
    for (size_t k = 0; k < s->stages.size(); ++k)
    {
        Stage &st = *s->stages[k];
        if (st.kind == StageKind::dedup) {
            if (st.dedup_ttl_ns)
                state_[k].throttle.reset(new Throttler(st.dedup_ttl_ns));
            else if (st.dedup_window)
                state_[k].window.reset(new KeyWindow(st.dedup_window));
            else
                state_[k].keys.reset(new KeySet(st.dedup_max_keys));
        }
        if (st.kind == StageKind::throttle) state_[k].throttle.reset(new Throttler(st.period_ns));
        if (st.kind == StageKind::window && st.window_step)
            state_[k].sliding.reset(
                new SlidingWindows(st.window_kind, st.window_size, st.window_step));
        else if (st.kind == StageKind::window)
            state_[k].windows.reset(new KeyedWindows(st.window_kind, st.window_size));
        if (st.cache_entries)
            state_[k].cache.reset(new TtlCache(st.cache_entries, st.cache_ttl_ns));
        if (st.kind == StageKind::join)
            state_[k].join.reset(
                new JoinTable(st.join_inputs, st.join_timeout_ns, st.join_max_keys));
        if (st.kind == StageKind::debounce)
            state_[k].debounce.reset(new Debouncer(st.period_ns, st.debounce_max_keys));
    }
    chain_at_.resize(s->stages.size());
    step_at_.resize(s->stages.size());
    for (size_t k = 0; k < s->stages.size(); ++k) {
        size_t len = 0;
        while (k + len < s->stages.size() && len < ItemChain::kMaxSteps &&
               ItemChain::qualifies(*s->stages[k + len], *s->p))
            ++len;
        if (len > 0) {
            chain_at_[k].assign(&s->stages[k], len);
            step_at_[k].assign(&s->stages[k], 1);
        }
    }
    // A shared head that runs as an item chain claims item by item inside the chain's loop.
    claims_in_loop_ = s->shares && !s->stages.empty() && chain_at_[0].size() > 0;
    pull_chain_ = s->pull_input && s->source && s->source->kind == SourceKind::pull &&
                  !s->stages.empty() && chain_at_[0].size() > 0 && !s->head()->rate_limiter;
    chain_to_sink_ = pull_chain_ && chain_at_[0].size() == s->stages.size() &&
                     s->stages.back()->is_sink() && !s->next && !s->split;
    if (Stage *h = s->head())
        if (h->async) h->async->set_worker(this);
    if (s->split) {
        split_.resize(s->outs.size());
        buckets_.resize(s->outs.size());
    }
    cursor_pos_ = s->p->source().cursor;
}

bool SegmentWorker::init_hooks() {
    for (Stage *st : seg->stages) {
        if (!st->init) continue;
        int32_t rc;
        try {
            rc = st->init(st->user.user, index);
        } FLUXUS_CATCH_ALL {
            rc = FLUXUS_EEXCEPTION;
        }
        if (rc != 0) {
            seg->p->fail_pipeline(FLUXUS_EFAILED, rc, st, "worker init callback failed");
            return false;
        }
    }
    return true;
}

void SegmentWorker::close_hooks() {
    if (!initialized_ || !init_ok_) return;
    for (Stage *st : seg->stages) {
        if (!st->close) continue;
        try {
            st->close(st->user.user, index);
        } FLUXUS_CATCH_ALL {
            seg->p->log(FLUXUS_LOG_WARN, st, "worker close callback threw; ignored");
        }
    }
}

void SegmentWorker::on_forced_unwind() {
    if (holding_permit_) {
        holding_permit_ = false;
        seg->head()->concurrency->give(1);
    }
    seg->p->cancel();
    if (ticket_open_) {
        // The batch behind the ticket was ended by the loops the unwind left: an empty commit
        // (the pipeline is cancelling) releases its place in the reorder window.
        ticket_open_ = false;
        PendingItems none;
        seg->reorder.commit(ticket_, none, this);
    }
    // Last: the log callback may end this thread too.
    seg->p->log(FLUXUS_LOG_ERROR, seg->head(),
                "a callback ended its thread (forced unwind, e.g. pthread_exit): the pipeline is "
                "cancelled");
}

void SegmentWorker::run() {
    // fluxus_call_get_worker(), and the texts callbacks attach to their failures.
    CurrentCallScope call(index, &call_errors_);
    Pipeline &p = *seg->p;

    if (is_exhausted_) {
        // Woken only to push the reorder window's last batches and close the output.
        if (seg->ordered && !seg->reorder.flush(this)) return;
        seg->try_close_output();
        return;
    }
    if (!initialized_) {
        initialized_ = true;
        init_ok_ = init_hooks();
    }
    if (p.cancelling()) {
        cancel_all();
        return;
    }
    if (!flush_output()) return;
    if (seg->ordered) seg->reorder.flush(this);
    if (Stage *h = seg->head()) {
        // Heads that do more than run a batch have their own loops (segment_heads.cpp).
        switch (h->kind) {
        case StageKind::async_map: return run_async();
        case StageKind::debounce: return run_debounce();
        case StageKind::batch:
        case StageKind::loader: return run_batching();
        case StageKind::reduce: return run_reduce();
        case StageKind::window: return h->window_step ? run_sliding() : run_windows();
        case StageKind::join: return run_join();
        default: break;
        }
        if (ConcurrencyLimiter *cl = h->concurrency) {
            // One permit while this worker runs callbacks (one at a time); without one it waits
            // for a release, which notifies it.
            if (cl->take_or_wait(1, this, &p) == 0) return;
            holding_permit_ = true;
            run_batches();
            holding_permit_ = false;
            cl->give(1);
            // The permit goes back before the worker counts as done: once the last worker is
            // done the pipeline may finish, and its limiter must then have every permit back.
            if (exhaust_deferred_) {
                exhaust_deferred_ = false;
                exhaust();
            }
            return;
        }
    }
    run_batches();
}

void SegmentWorker::run_batches() {
    Pipeline &p = *seg->p;
    bool limited = seg->head() && seg->head()->rate_limiter;
    bool guarded = seg->head() && seg->head()->breaker;
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();  // others are waiting for a thread: run again after them
            return;
        }
        if (routes_waiting() && !flush_routes()) return;
        if (guarded && !blocked_.empty()) {
            // Items a breaker refused (wait mode) or a full queue stopped go first, in order.
            size_t n = std::min<size_t>(blocked_.size(), p.batch_size());
            std::vector<uint32_t> attempts(n);
            for (size_t i = 0; i < n; ++i) {
                a_[i] = blocked_[i].item;
                attempts[i] = blocked_[i].attempt;
            }
            blocked_.erase(blocked_.begin(), blocked_.begin() + n);
            if (!run_guarded(n, attempts.data())) return;
            continue;
        }
        if (!retries_.empty() && guarded) {
            take_due_retries(rt_->now(), p.batch_size(), due_);
            std::vector<uint32_t> attempts(due_.size());
            for (size_t i = 0; i < due_.size(); ++i) {
                a_[i] = due_[i].item;
                attempts[i] = due_[i].attempt;
            }
            if (!due_.empty() && !run_guarded(due_.size(), attempts.data())) return;
        } else if (!retries_.empty()) {
            // Retries due now run first, one item at a time (each has its own attempt count).
            take_due_retries(rt_->now(), p.batch_size(), due_);
            // What is left of this round goes back to the heap (then parked or cancelled there).
            auto requeue_after = [&](size_t done) {
                size_t back = 0;
                for (size_t i = done + 1; i < due_.size(); ++i, ++back) {
                    retries_.push_back(due_[i]);
                    std::push_heap(retries_.begin(), retries_.end(), retry_later);
                }
                if (Stage *h = seg->head())
                    h->c.retry_waiting.fetch_add(back, std::memory_order_relaxed);
            };
            for (size_t k = 0; k < due_.size(); ++k) {
                a_[0] = due_[k].item;
                attempt_ = due_[k].attempt;
                process(1);
                attempt_ = 1;
                deliver();
                if (p.cancelling()) {
                    requeue_after(k);
                    cancel_all();
                    return;
                }
                if (has_output()) {
                    requeue_after(k);  // parked downstream
                    return;
                }
            }
        }
        if (live_share_) {  // the rest of a shared batch first (segment_share.cpp)
            if (!run_share()) return;
            continue;
        }
        if (seg->ordered && !seg->reorder.reserve(this)) {
            // No room for another batch: help with a sibling's instead, if it has items left.
            if (seg->shares && idle_or_steal()) continue;
            return;
        }
        bool drained = false;
        // A pull source feeding a chain reads each item straight into it, except in the batch
        // whose callback time is sampled (process() runs that one stage by stage).
        bool through = pull_chain_ && !guarded && batches_ < next_sample_;
        // The sampled batch of a source fused down to its sink: the source's time counts too
        // when process() sizes the passes.
        bool time_source = chain_to_sink_ && !guarded && !through;
        uint64_t t0 = time_source ? now_ns() : 0;
        // Shared batches: siblings that find the queue drained wait for this worker's batch
        // to be published (or kept) before they count themselves done.
        if (seg->shares) seg->taking.fetch_add(1, std::memory_order_seq_cst);
        size_t n = through   ? pull_through_chain(&drained)
                   : limited ? take_input(p.batch_size(), rt_->now(), &drained)
                             : fetch(&drained);
        if (time_source) sample_source_ns_ = now_ns() - t0;
        if (n == 0) {
            if (seg->shares) seg->taking.fetch_sub(1, std::memory_order_release);
            if (seg->ordered) seg->reorder.unreserve();
            // The queue is empty: take the unstarted tail of a sibling's batch, or park as idle
            // so that the next sibling with items to spare wakes this one.
            if (seg->shares && idle_or_steal()) continue;
            if (!retries_.empty()) {
                arm_timer(retries_.front().due, rt_->now());
                if (retries_.front().due <= rt_->now()) continue;
                return;
            }
            if (routes_waiting()) continue;  // failed retries to route: flush first
            if (drained) {
                if (seg->shares && !nothing_left_to_steal()) continue;
                exhaust();
            }
            return;
        }
        if (guarded) {
            if (!run_guarded(n, nullptr)) return;
            continue;
        }
        if (seg->shares && n > (claims_in_loop_ ? 1 : claim_) && worth_sharing(n)) {
            // More items than one claim: share the batch (idle siblings take part of it).
            // The batch becomes the share without a copy: a_ takes the share's old buffer.
            if (shared_.size() < a_.size()) shared_.resize(a_.size());
            a_.swap(shared_);
            ticket_open_ = false;  // the share carries the ticket now (see finish_share())
            publish_share(uint32_t(n), 0, nullptr, ticket_);
            seg->taking.fetch_sub(1, std::memory_order_release);
            continue;
        }
        if (seg->shares) seg->taking.fetch_sub(1, std::memory_order_release);
        bool timed_claim = seg->shares && !claims_in_loop_;
        uint64_t tp = timed_claim ? now_ns() : 0;
        if (!through) process(n);
        if (timed_claim) note_claim_time(n, now_ns() - tp);
        deliver();
        if (p.cancelling()) {
            cancel_all();
            return;
        }
        if (has_output()) return;  // parked until the next queue has room
    }
}

size_t SegmentWorker::fetch(bool *drained) {
    if (seg->pull_input) return pull(drained);
    uint32_t lane = seg->keyed ? index : 0;
    size_t max = seg->p->batch_size();
    if (!seg->ordered) return seg->input->pop(lane, a_.data(), max, this, drained);
    std::lock_guard<std::mutex> lock(seg->ticket_mu);
    size_t n = seg->input->pop(lane, a_.data(), max, this, drained);
    if (n) {
        ticket_ = seg->next_ticket++;
        ticket_open_ = true;
    }
    return n;
}

namespace {

// The per-item pull loop, on its own so that its few variables stay in registers across the
// callback (in pull() they lived on the stack). A callback that throws ends the loop; the items
// pulled before it are in *count and go on as usual.
// The loop's limit (a Pipeline::CallLimit that calls the source) drops to 0 when the source must
// stop (drain, pause, cancel, a fail-fast failure): it then stops between items, not at the end
// of the batch, and reports FLUXUS_PULL_ITEM for the items it got.
[[gnu::noinline]] int32_t pull_items(fluxus_pull_fn fn, void *user, uint64_t *buf,
                                     const Pipeline::CallLimit &calls, size_t *count) {
    uint64_t *at = buf;
    int32_t rc = FLUXUS_PULL_ITEM;
    try {
        for (; at < buf + calls.get(); ++at) {
            rc = fn(user, at);
            if (rc != FLUXUS_PULL_ITEM) break;
        }
    } FLUXUS_CATCH_ALL {
        rc = FLUXUS_EEXCEPTION;
    }
    *count = size_t(at - buf);
    return rc;
}

}  // namespace

size_t SegmentWorker::pull_quota(bool *drained, uint32_t *granted) {
    Pipeline &p = *seg->p;
    const SourceSpec &src = *seg->source;
    *drained = false;
    *granted = 0;
    if (source_ended_ || p.draining() || p.cancelling()) {
        *drained = true;
        return 0;
    }
    if (p.paused()) return 0;  // resume() notifies us
    if (p.source_may_be_held()) {
        uint64_t t = rt_->now();
        uint64_t until = p.source_held_until(t, this);
        if (until) {
            arm_timer(until, t);  // UINT64_MAX: the breaker's change notifies us instead
            return 0;
        }
    }
    size_t max = p.batch_size();
    if (RateLimiter *rl = src.rate_limiter) {
        uint64_t now = rt_->now(), retry = 0;
        *granted = rl->take_or_wait(uint32_t(max), now, this, &p, &retry);
        if (*granted == 0) {
            double batch = std::max(1.0, rl->rate() * 0.0005);
            uint64_t w = rl->wait_ns(uint32_t(std::min<double>(double(max), batch)), now);
            if (w == UINT64_MAX) w = retry;
            if (w != UINT64_MAX) arm_timer(now + w, now);
            return 0;
        }
        max = *granted;
    }
    return max;
}

void SegmentWorker::pull_settle(size_t n, int32_t rc, uint32_t granted, bool *drained) {
    Pipeline &p = *seg->p;
    const SourceSpec &src = *seg->source;
    if (rc == FLUXUS_PULL_END) {
        source_ended_ = true;
    } else if (rc == FLUXUS_PULL_LATER) {
        if (n == 0)
            rt_->add_timer(rt_->now() + uint64_t(src.poll_interval_us) * 1000u, this, &p);
    } else if (rc != FLUXUS_PULL_ITEM) {
        source_ended_ = true;
        p.fail_pipeline(FLUXUS_ESOURCE, rc, seg->source_stage, "the pull source returned an error");
    }
    if (src.rate_limiter && n < granted) src.rate_limiter->give_back(uint32_t(granted - n));
    p.admit(n);
    if (Stage *ss = seg->source_stage; ss && n) {
        ss->c.in.fetch_add(n, std::memory_order_relaxed);
        ss->c.out.fetch_add(n, std::memory_order_relaxed);
    }
    if (n == 0) *drained = source_ended_;
}

size_t SegmentWorker::pull(bool *drained) {
    Pipeline &p = *seg->p;
    const SourceSpec &src = *seg->source;
    uint32_t granted;
    size_t max = pull_quota(drained, &granted);
    if (max == 0) return 0;
    size_t n = 0;
    int32_t rc = FLUXUS_PULL_ITEM;
    try {
        if (src.kind == SourceKind::pull) {
            Pipeline::CallLimit calls(p, max, true);
            rc = pull_items(reinterpret_cast<fluxus_pull_fn>(src.fn), src.user.user, a_.data(),
                            calls, &n);
        } else if (src.kind == SourceKind::cursor) {
            auto fn = reinterpret_cast<fluxus_cursor_read_fn>(src.fn);
            uint32_t count = 0;
            uint64_t next = cursor_pos_;
            rc = fn(src.user.user, cursor_pos_, a_.data(), uint32_t(max), &count, &next);
            if (rc == FLUXUS_PULL_ITEM || rc == FLUXUS_PULL_END) {
                // A page, possibly empty: the watermark counts its items before any can end.
                n = std::min<size_t>(count, max);
                p.cursor()->page_read(cursor_pos_, next, n);
                cursor_pos_ = next;
                if (n == 0 && rc == FLUXUS_PULL_ITEM) notify();  // empty page: read the next one
            }
        } else {
            auto fn = reinterpret_cast<fluxus_pull_batch_fn>(src.fn);
            uint32_t count = 0;
            rc = fn(src.user.user, a_.data(), uint32_t(max), &count);
            if (rc == FLUXUS_PULL_ITEM || rc == FLUXUS_PULL_END) n = std::min<size_t>(count, max);
            if (rc == FLUXUS_PULL_ITEM && n == 0) rc = FLUXUS_PULL_LATER;
        }
    } FLUXUS_CATCH_ALL {
        rc = FLUXUS_EEXCEPTION;
    }
    pull_settle(n, rc, granted, drained);
    return n;
}

size_t SegmentWorker::pull_through_chain(bool *drained) {
    uint32_t granted;
    size_t max = pull_quota(drained, &granted);
    if (max == 0) return 0;
    Pipeline &p = *seg->p;
    // Batches this pass may read (see chain_to_sink_): not with a rate limit or anything that
    // may hold the source (both are asked once per pass), and not past the next sampled batch.
    uint64_t batches = 1;
    if (chain_to_sink_ && granted == 0 && !p.source_may_be_held())
        batches = std::min<uint64_t>(pass_batches_, next_sample_ - batches_);
    const SourceSpec &src = *seg->source;
    auto fn = reinterpret_cast<fluxus_pull_fn>(src.fn);
    ItemChain &chain = chain_at_[0];
    size_t n = 0, m = 0;
    int32_t rc = FLUXUS_PULL_ITEM;
    {
        RetryScopeGuard retry_scope(this, seg->head(), attempt_);
        // Lowered to 0, like each batch's own limit, when a callback stops the source, even
        // one called for the last item of a batch.
        Pipeline::CallLimit pass_calls(p, 1, true);
        for (uint64_t b = 0; b < batches; ++b) {
            size_t read;
            try {
                m = chain.run_pulled(p, fn, src.user.user, max, a_.data(), tally_.data(), &read,
                                     &rc);
            } FLUXUS_ON_FORCED_UNWIND((pull_settle(n + t_unwind.entered, FLUXUS_PULL_ITEM, granted,
                                                   drained),
                                       end_unwound(chain.size(), a_.data(), SIZE_MAX)))
            n += read;
            // The next batch only if this one was read in full and nothing asked the source to
            // stop: a request from another thread (pause, cancel, drain, an auto-pause tripped
            // elsewhere) is seen here, between batches, as between separate passes.
            if (read < max || rc != FLUXUS_PULL_ITEM || pass_calls.get() == 0 ||
                p.cancelling() || p.paused() || p.draining() || p.source_may_be_held())
                break;
        }
    }
    // Admitted before this batch's stage counters are flushed (in process()), so a stats
    // reader never sees more items ended than admitted.
    pull_settle(n, rc, granted, drained);
    if (n) {
        process(m, chain.size());  // the stages behind the chain, then the batch's counters
        // A pass of several batches counts as that many for the busy-time sample (process()
        // counted one), so that a sampled batch still stands for kBusySample batches' items.
        batches_ += (n - 1) / max;
    }
    return n;
}

void SegmentWorker::process(size_t n, size_t first) {
    Pipeline &p = *seg->p;
    std::vector<uint64_t> *in = &a_, *out = &b_;
    size_t cur = n;
    // Callback time is sampled: one batch in kBusySample is timed and counted kBusySample
    // times. Reading the clock around every stage of every batch cost 7 % of a three-stage
    // fused chain on this VM (its clock_gettime is ~40 ns); the sampled batch also runs stage by
    // stage, which at one in 16 still cost ~5 % of W1 (one in 64: ~1 %).
    bool timed = batches_ >= next_sample_;
    if (timed) next_sample_ = batches_ + kBusySample;
    ++batches_;
    uint64_t timed_ns = 0;
    RetryScopeGuard retry_scope(this, first == 0 ? seg->head() : nullptr, attempt_);
    // Where a forced unwind out of a callback would leave this batch (see end_unwound()).
    UnwindAt unwind_at{first, true};
    try {
        for (size_t k = first; k < seg->stages.size() && cur > 0; ++k) {
            // A queue head counted its items on arrival; every other stage counts them here.
            bool count_in = k > 0 || seg->pull_input;
            // A shared batch's head claims its items in the loop (see run_share()): those not
            // claimed stay in the share, which cancel_all() ends.
            bool claims = k == 0 && claiming_;
            if (p.cancelling()) {
                // Cancelled (or stopped by a failure): no stage starts on these items.
                if (!claims) cancel_unstarted(k, in->data(), cur, count_in);
                cur = 0;
                break;
            }
            // Chains of per-item stages run item by item, in place in a_; timed batches run such
            // stages one at a time (each timed) through the same loop.
            if (ItemChain &chain = timed ? step_at_[k] : chain_at_[k]; chain.size()) {
                if (in != &a_) {
                    a_.swap(b_);
                    std::swap(in, out);
                }
                uint64_t t0 = timed ? now_ns() : 0;
                size_t read;
                unwind_at = UnwindAt{k + chain.size(), true};
                size_t m = claims ? chain.run_claimed(p, shared_.data(), &share_.range,
                                                      2 * seg->workers, cur,
                                                      a_.data(), &tally_[k], count_in, &read)
                                  : chain.run(p, a_.data(), cur, &tally_[k], count_in, &read);
                if (timed) {
                    uint64_t dt = now_ns() - t0;
                    timed_ns += dt;
                    tally_[k].busy_ns += dt * kBusySample;
                }
                // A cancel stopped the chain between items: the rest never entered it.
                if (read < cur && !claims)
                    cancel_unstarted(k, a_.data() + read, cur - read, count_in);
                cur = m;
                k += chain.size() - 1;
                continue;
            }
            Stage &st = *seg->stages[k];
            StageTally &t = tally_[k];
            if (count_in) t.in += cur;
            uint64_t t0 = timed ? now_ns() : 0;
            unwind_at = UnwindAt{k, false};
            size_t m = apply_stage(p, st, state_[k], in->data(), cur, *out, t);
            if (timed) t.busy_ns += (now_ns() - t0) * kBusySample;
            if (!st.is_sink()) t.out += m;
            std::swap(in, out);
            cur = m;
        }
    } FLUXUS_ON_FORCED_UNWIND(unwind_at.chain
                                  ? end_unwound(unwind_at.stage, a_.data(), SIZE_MAX)
                                  : end_unwound(unwind_at.stage + 1, out->data(), unwind_at.stage))
    if (in != &a_) a_.swap(b_);
    out_n_ = cur;
    if (timed && chain_to_sink_ && first == 0 && n > 0) {
        // The callback time of a whole batch, from this sample: how many batches a pass reads.
        uint64_t per_batch =
            std::max<uint64_t>(1, (timed_ns + sample_source_ns_) * p.batch_size() / n);
        pass_batches_ = uint32_t(std::clamp<uint64_t>(kPassBudgetNs / per_batch, 1,
                                                      kMaxPassBatches));
    }
    for (size_t k = 0; k < seg->stages.size(); ++k) tally_[k].flush_to(seg->stages[k]->c);
    call_errors_.drop_unused();  // a text no failure took: dropped
    size_t b = p.batch_size();
    if (a_.size() < b) a_.resize(b);
    if (b_.size() < b) b_.resize(b);
}

void SegmentWorker::end_unwound(size_t next, const uint64_t *buf, size_t stage) {
    size_t s = t_unwind.survivors;
    t_unwind.survivors = SIZE_MAX;
    if (s == SIZE_MAX) s = 0;  // a loop that could not say (a batch callback): nothing to end
    if (stage != SIZE_MAX) {
        // apply_stage's per-item loop: its outputs so far, not yet counted out.
        tally_[stage].out += s;
        if (seg->stages[stage]->is_sink()) s = 0;  // delivered
    }
    if (s) {
        if (next < seg->stages.size())
            cancel_unstarted(next, buf, s, true);
        else if (seg->split)  // a router's outputs, each for its route
            for (size_t i = 0; i < s; ++i)
                seg->p->cancel_items(*seg->outs[state_.back().route[i]]->head(), buf + i, 1, true);
        else if (Stage *ns = seg->out_stage())
            seg->p->cancel_items(*ns, buf, s, true);
        else
            seg->p->release_items(buf, s, false);
    }
    for (size_t k = 0; k < seg->stages.size(); ++k) tally_[k].flush_to(seg->stages[k]->c);
}

void SegmentWorker::cancel_unstarted(size_t k, const uint64_t *items, size_t n, bool count_in) {
    StageTally &t = tally_[k];
    if (count_in) t.in += n;
    t.cancelled += n;
    seg->p->release_items(items, n, false);
}

void SegmentWorker::arm_timer(uint64_t deadline, uint64_t now) {
    if (deadline == UINT64_MAX) return;
    if (timer_at_ != 0 && timer_at_ > now && timer_at_ <= deadline) return;  // armed earlier
    timer_at_ = deadline;
    rt_->add_timer(deadline, this, seg->p);
}

bool SegmentWorker::flush_output() {
    if (!seg->split) return pending.empty() || seg->push_out(pending, this);
    bool done = true;
    for (size_t r = 0; r < split_.size(); ++r)
        if (!split_[r].empty() && !seg->outs[r]->accept(split_[r], this)) done = false;
    return done;
}

void SegmentWorker::deliver_split() {
    const std::vector<uint32_t> &route = state_.back().route;
    for (auto &b : buckets_) b.clear();
    for (size_t i = 0; i < out_n_; ++i) buckets_[route[i]].push_back(a_[i]);
    for (size_t r = 0; r < buckets_.size(); ++r)
        if (!buckets_[r].empty())
            seg->outs[r]->stage_items(buckets_[r].data(), buckets_[r].size(), split_[r]);
    flush_output();
}

void SegmentWorker::deliver() {
    if (seg->split) return deliver_split();
    if (!seg->next) return;
    if (seg->ordered) {
        PendingItems out;
        std::swap(out, pending);  // reuse pending's buffers; it is empty on this path
        seg->prepare_out(a_.data(), out_n_, out);
        ticket_open_ = false;
        seg->reorder.commit(ticket_, out, this);
        out.clear();
        std::swap(out, pending);
        return;
    }
    if (out_n_ == 0) return;
    seg->prepare_out(a_.data(), out_n_, pending);
    seg->push_out(pending, this);
}

void SegmentWorker::cancel_all() {
    Pipeline &p = *seg->p;
    p.release_orphans();  // items a destructor that ended its thread left (release_items())
    abandon_share();
    if (!pending.empty()) {
        if (Stage *ns = seg->out_stage())
            p.cancel_items(*ns, pending.items.data() + pending.head, pending.size(), true);
        pending.clear();
    }
    for (size_t r = 0; r < split_.size(); ++r) {
        PendingItems &s = split_[r];
        if (s.empty()) continue;
        p.cancel_items(*seg->outs[r]->head(), s.items.data() + s.head, s.size(), true);
        s.clear();
    }
    if (!error_pend_.empty()) {
        // Counted routed at the head already: they end at the branch's first stage.
        p.cancel_items(*seg->error_out->head(), error_pend_.items.data() + error_pend_.head,
                       error_pend_.size(), true);
        error_pend_.clear();
    }
    if (seg->ordered) seg->reorder.cancel_all(*seg);
    if (is_exhausted_) return;
    if (Stage *h = seg->head()) {
        cancel_retries();
        if (!route_pending_.empty()) {
            p.cancel_items(*h, route_pending_.data(), route_pending_.size(), false);
            route_pending_.clear();
        }
        if (!blocked_.empty()) {
            std::vector<uint64_t> items;
            for (const RetryEntry &e : blocked_) items.push_back(e.item);
            blocked_.clear();
            p.cancel_items(*h, items.data(), items.size(), false);
        }
        if (held_head_ < held_.size())
            p.cancel_items(*h, held_.data() + held_head_, held_.size() - held_head_, false);
        held_.clear();
        held_head_ = 0;
        if (h->async) {
            // Completed items are fluxus's again and are destroyed; pending ones still belong to
            // the host (its completion will be refused with FLUXUS_ECANCELED).
            std::vector<uint64_t> owned;
            std::vector<AsyncSlots::Abandoned> abandoned;
            size_t host_owned =
                h->async->cancel_all(owned, h->async_cancel ? &abandoned : nullptr);
            if (!owned.empty()) p.cancel_items(*h, owned.data(), owned.size(), false);
            h->c.cancelled.fetch_add(host_owned, std::memory_order_relaxed);
            // After the slots were released: their completions are refused from here on.
            for (const AsyncSlots::Abandoned &a : abandoned)
                tell_async_abandoned(*h, a.item, a.token, FLUXUS_ECANCELED);
            reconcile_permits();
        }
        if (!group_.empty()) {
            p.cancel_items(*h, group_.data(), group_.size(), false);
            group_.clear();
        }
        if (state_.size() && state_[0].sliding) {
            std::vector<uint64_t> held;
            state_[0].sliding->drop_all(held);
            if (!host_kept_.empty()) {
                // A window callback's items the host kept (see run_sliding()): one each.
                std::vector<uint64_t> ours;
                for (uint64_t x : held) {
                    auto it = std::find(host_kept_.begin(), host_kept_.end(), x);
                    if (it == host_kept_.end()) {
                        ours.push_back(x);
                    } else {
                        host_kept_.erase(it);
                        h->c.cancelled.fetch_add(1, std::memory_order_relaxed);
                    }
                }
                held.swap(ours);
                host_kept_.clear();
            }
            if (!held.empty()) p.cancel_items(*h, held.data(), held.size(), false);
        }
        if (state_.size() && state_[0].windows) {
            std::vector<KeyedWindows::Closed> open;
            state_[0].windows->close_all(open);
            for (auto &w : closed_) open.push_back(std::move(w));
            closed_.clear();
            for (auto &w : open) p.cancel_items(*h, w.items.data(), w.items.size(), false);
        }
        if (state_.size() && state_[0].join) {
            std::vector<JoinTable::Done> waiting;
            state_[0].join->take_all(waiting);
            for (auto &d : joined_) waiting.push_back(std::move(d));
            joined_.clear();
            for (auto &d : waiting) p.cancel_items(*h, d.items.data(), d.items.size(), false);
        }
        if (h->kind == StageKind::debounce) {
            std::vector<uint64_t> held;
            state_[0].debounce->take_all(held);
            held.insert(held.end(), emit_.begin(), emit_.end());
            emit_.clear();
            if (!held.empty()) p.cancel_items(*h, held.data(), held.size(), false);
        }
    }
    if (seg->pull_input) {
        source_ended_ = true;
        exhaust();
        return;
    }
    uint32_t lane = seg->keyed ? index : 0;
    size_t max = p.batch_size();
    for (;;) {
        bool drained = false;
        size_t n = seg->input->pop(lane, a_.data(), max, this, &drained);
        if (n) {
            p.cancel_items(*seg->head(), a_.data(), n, false);
            continue;
        }
        if (drained) exhaust();
        return;  // otherwise parked until upstream pushes more or closes
    }
}

void SegmentWorker::release_caches() {
    std::vector<uint64_t> gone;
    for (WorkerStageState &ws : state_)
        if (ws.cache) ws.cache->clear(gone);
    for (uint64_t v : gone) seg->p->free_unadmitted(v);
}

void SegmentWorker::exhaust() {
    // Output or failures still to hand on keep the worker (and the queues it feeds) open.
    if (has_output() || routes_waiting() || is_exhausted_) return;
    if (holding_permit_) {
        exhaust_deferred_ = true;  // run() exhausts after giving the permit back
        return;
    }
    is_exhausted_ = true;
    try {
        release_caches();
        close_hooks();
    } FLUXUS_ON_FORCED_UNWIND(seg->worker_exhausted())  // a hook or destructor ended the thread
    seg->worker_exhausted();
}

}  // namespace fluxus
