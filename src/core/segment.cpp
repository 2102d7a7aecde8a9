// Segment workers: fetch a batch (pull source or queue), run it through the fused stages,
// hand the survivors downstream (directly, or through the reorder window), and park on the
// queue that is empty or full instead of blocking a thread.
#include "core/segment.hpp"

#include <algorithm>

#include "flow/circuit_breaker.hpp"
#include "flow/concurrency_limiter.hpp"
#include "flow/rate_limiter.hpp"
#include "runtime/runtime.hpp"
#include "util/clock.hpp"
#include "util/status.hpp"

namespace fluxus {

thread_local uint32_t t_current_worker = UINT32_MAX;
thread_local RetryScope *t_retry_scope = nullptr;

namespace {

// Installs a RetryScope for the current thread while a retrying head stage's callbacks run.
class RetryScopeGuard {
public:
    // Touches the thread-local only for stages that need it: in a shared library every access
    // is a call, and this runs once per batch on the hot path.
    RetryScopeGuard(SegmentWorker *w, Stage *head, uint32_t attempt, bool refusal = false)
        : scope_{w, head, attempt, refusal},
          active_(head && (head->retry.enabled() || head->breaker || head->error_route)) {
        if (active_) {
            saved_ = t_retry_scope;
            t_retry_scope = &scope_;
        }
    }
    ~RetryScopeGuard() {
        if (active_) t_retry_scope = saved_;
    }
    void set_attempt(uint32_t a) { scope_.attempt = a; }
    void set_refusal(bool r) { scope_.refusal = r; }

private:
    RetryScope scope_;
    bool active_;
    RetryScope *saved_ = nullptr;
};

bool retry_later(const SegmentWorker::RetryEntry &a, const SegmentWorker::RetryEntry &b) {
    return a.due != b.due ? a.due > b.due : a.seq > b.seq;
}

// Batches a worker runs before it yields its thread, if other tasks are waiting for one.
constexpr int kRoundsPerRun = 16;

// One batch in this many has its callback time measured (see process()).
constexpr uint64_t kBusySample = 16;

uint32_t lane_for_hash(uint64_t h, uint32_t lanes) {
    // High bits pick the lane: dedup sets index their tables with the low bits of the same hash.
    return uint32_t(((h >> 32) * uint64_t(lanes)) >> 32);
}

}  // namespace

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
    for (size_t i = 0; i < n; ++i) {
        uint64_t h;
        if (ns.key_fn) {
            Key128 key;
            int32_t rc;
            try {
                rc = byte_key_digest(ns, items[i], &key);
            } catch (...) {
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
        uint64_t limit = uint64_t(ns.overflow_timeout_ms) * 1000000u;
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
    if (next) next->input->producer_done();
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
        if (st.kind == StageKind::window)
            state_[k].windows.reset(new KeyedWindows(st.window_kind, st.window_size));
        if (st.kind == StageKind::debounce)
            state_[k].debounce.reset(new Debouncer(st.period_ns, st.debounce_max_keys));
    }
    if (Stage *h = s->head())
        if (h->async) h->async->set_worker(this);
    cursor_pos_ = s->p->source().cursor;
}

bool SegmentWorker::init_hooks() {
    for (Stage *st : seg->stages) {
        if (!st->init) continue;
        int32_t rc;
        try {
            rc = st->init(st->user.user, index);
        } catch (...) {
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
        } catch (...) {
            seg->p->log(FLUXUS_LOG_WARN, st, "worker close callback threw; ignored");
        }
    }
}

void SegmentWorker::run() {
    struct WorkerIndexScope {
        uint32_t saved;
        explicit WorkerIndexScope(uint32_t i) : saved(t_current_worker) { t_current_worker = i; }
        ~WorkerIndexScope() { t_current_worker = saved; }
    } scope(index);
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
    if (!pending.empty() && !seg->push_out(pending, this)) return;
    if (seg->ordered) seg->reorder.flush(this);
    if (Stage *h = seg->head()) {
        if (h->is_async()) {
            run_async();
            return;
        }
        if (h->kind == StageKind::debounce) {
            run_debounce();
            return;
        }
        if (h->kind == StageKind::batch) {
            run_batching();
            return;
        }
        if (h->kind == StageKind::reduce) {
            run_reduce();
            return;
        }
        if (h->kind == StageKind::window) {
            run_windows();
            return;
        }
        if (ConcurrencyLimiter *cl = h->concurrency) {
            // One permit while this worker runs callbacks (one at a time); without one it waits
            // for a release, which notifies it.
            if (cl->take_or_wait(1, this, &p) == 0) return;
            run_batches();
            cl->give(1);
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
        if (!route_pending_.empty() && !flush_routes()) return;
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
                if (!pending.empty()) {
                    requeue_after(k);  // parked downstream
                    return;
                }
            }
        }
        if (seg->ordered && !seg->reorder.reserve(this)) return;
        bool drained = false;
        size_t n = limited ? take_input(p.batch_size(), rt_->now(), &drained) : fetch(&drained);
        if (n == 0) {
            if (seg->ordered) seg->reorder.unreserve();
            if (!retries_.empty()) {
                arm_timer(retries_.front().due, rt_->now());
                if (retries_.front().due <= rt_->now()) continue;
                return;
            }
            if (!route_pending_.empty()) continue;  // failed retries to route: flush first
            if (drained) exhaust();
            return;
        }
        if (guarded) {
            if (!run_guarded(n, nullptr)) return;
            continue;
        }
        process(n);
        deliver();
        if (p.cancelling()) {
            cancel_all();
            return;
        }
        if (!pending.empty()) return;  // parked until the next queue has room
    }
}

size_t SegmentWorker::fetch(bool *drained) {
    if (seg->pull_input) return pull(drained);
    uint32_t lane = seg->keyed ? index : 0;
    size_t max = seg->p->batch_size();
    if (!seg->ordered) return seg->input->pop(lane, a_.data(), max, this, drained);
    std::lock_guard<std::mutex> lock(seg->ticket_mu);
    size_t n = seg->input->pop(lane, a_.data(), max, this, drained);
    if (n) ticket_ = seg->next_ticket++;
    return n;
}

size_t SegmentWorker::pull(bool *drained) {
    Pipeline &p = *seg->p;
    const SourceSpec &src = p.source();
    *drained = false;
    if (source_ended_ || p.draining() || p.cancelling()) {
        *drained = true;
        return 0;
    }
    if (p.paused()) return 0;  // resume() notifies us
    {
        uint64_t t = rt_->now();
        uint64_t until = p.source_held_until(t, this);
        if (until) {
            arm_timer(until, t);  // UINT64_MAX: the breaker's change notifies us instead
            return 0;
        }
    }
    size_t max = p.batch_size();
    RateLimiter *rl = src.rate_limiter;
    uint32_t granted = 0;
    if (rl) {
        uint64_t now = rt_->now(), retry = 0;
        granted = rl->take_or_wait(uint32_t(max), now, this, &p, &retry);
        if (granted == 0) {
            double batch = std::max(1.0, rl->rate() * 0.0005);
            uint64_t w = rl->wait_ns(uint32_t(std::min<double>(double(max), batch)), now);
            if (w == UINT64_MAX) w = retry;
            if (w != UINT64_MAX) arm_timer(now + w, now);
            return 0;
        }
        max = granted;
    }
    size_t n = 0;
    int32_t rc = FLUXUS_PULL_ITEM;
    try {
        if (src.kind == SourceKind::pull) {
            auto fn = reinterpret_cast<fluxus_pull_fn>(src.fn);
            void *user = src.user.user;
            uint64_t *buf = a_.data();  // locals: the callback could alias any member
            while (n < max) {
                rc = fn(user, &buf[n]);
                if (rc != FLUXUS_PULL_ITEM) break;
                ++n;
            }
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
    } catch (...) {
        rc = FLUXUS_EEXCEPTION;
    }
    if (rc == FLUXUS_PULL_END) {
        source_ended_ = true;
    } else if (rc == FLUXUS_PULL_LATER) {
        if (n == 0)
            rt_->add_timer(rt_->now() + uint64_t(src.poll_interval_us) * 1000u, this, &p);
    } else if (rc != FLUXUS_PULL_ITEM) {
        source_ended_ = true;
        p.fail_pipeline(FLUXUS_ESOURCE, rc, nullptr, "the pull source returned an error");
    }
    if (rl && n < granted) rl->give_back(uint32_t(granted - n));
    p.admit(n);
    if (n == 0) *drained = source_ended_;
    return n;
}

void SegmentWorker::process(size_t n, size_t first) {
    Pipeline &p = *seg->p;
    std::vector<uint64_t> *in = &a_, *out = &b_;
    size_t cur = n;
    // Callback time is sampled: one batch in kBusySample is timed and counted kBusySample
    // times. Reading the clock around every stage of every batch cost 7 % of a three-stage
    // fused chain on this VM (its clock_gettime is ~40 ns).
    bool timed = (batches_++ % kBusySample) == 0;
    RetryScopeGuard retry_scope(this, first == 0 ? seg->head() : nullptr, attempt_);
    for (size_t k = first; k < seg->stages.size() && cur > 0; ++k) {
        Stage &st = *seg->stages[k];
        StageTally &t = tally_[k];
        if (k > 0 || seg->pull_input) t.in += cur;  // a queue head counted them on arrival
        uint64_t t0 = timed ? now_ns() : 0;
        size_t m = apply_stage(p, st, state_[k], in->data(), cur, *out, t);
        if (timed) t.busy_ns += (now_ns() - t0) * kBusySample;
        if (!st.is_sink()) t.out += m;
        std::swap(in, out);
        cur = m;
    }
    if (in != &a_) a_.swap(b_);
    out_n_ = cur;
    for (size_t k = 0; k < seg->stages.size(); ++k) tally_[k].flush_to(seg->stages[k]->c);
    size_t b = p.batch_size();
    if (a_.size() < b) a_.resize(b);
    if (b_.size() < b) b_.resize(b);
}

// The async head's loop. Items start while the in-flight table has room; completions are
// collected in batches and go on through the stages fused behind the async stage; the stage
// timeout is one timer at the earliest pending deadline. The worker never waits: the queue wakes
// it for input, a completion or the timer for results.
void SegmentWorker::run_async() {
    Pipeline &p = *seg->p;
    AsyncSlots &slots = *seg->head()->async;
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();
            return;
        }
        if (!route_pending_.empty() && !flush_routes()) return;
        bool progress = false;
        uint64_t now = rt_->now();
        ended_.clear();
        uint64_t next_deadline = slots.collect(now, ended_);
        if (!ended_.empty()) {
            progress = true;
            reconcile_permits();
            process(settle_async(), 1);
            deliver();
            if (p.cancelling()) {
                cancel_all();
                return;
            }
            if (!pending.empty()) return;  // parked until the next queue has room
        }
        if (!blocked_.empty() && slots.room()) {
            size_t k = std::min<size_t>({blocked_.size(), slots.room(), p.batch_size()});
            std::vector<uint32_t> attempts(k);
            for (size_t i = 0; i < k; ++i) {
                a_[i] = blocked_[i].item;
                attempts[i] = blocked_[i].attempt;
            }
            blocked_.erase(blocked_.begin(), blocked_.begin() + k);
            size_t before = blocked_.size();
            start_async(k, now, attempts.data());
            if (blocked_.size() - before < k) progress = true;  // some started
            if (blocked_.size() > before) {
                // start_async appended what the breaker refused; put it back in front.
                std::rotate(blocked_.begin(), blocked_.begin() + before, blocked_.end());
            }
        }
        if (!retries_.empty() && slots.room() && blocked_.empty()) {
            // Retries due now start first, each with its attempt count, when there is room.
            take_due_retries(now, std::min<size_t>(slots.room(), p.batch_size()), due_);
            if (!due_.empty()) {
                std::vector<uint32_t> attempts(due_.size());
                for (size_t i = 0; i < due_.size(); ++i) {
                    a_[i] = due_[i].item;
                    attempts[i] = due_[i].attempt;
                }
                start_async(due_.size(), now, attempts.data());
                progress = true;
            }
        }
        bool holding = held_head_ < held_.size();
        if ((!input_drained_ || holding) && blocked_.empty()) {
            uint32_t room = std::min<uint32_t>(slots.room(), p.batch_size());
            if (ConcurrencyLimiter *cl = seg->head()->concurrency) {
                // One permit per item in flight, taken before the item starts.
                uint32_t in_use = slots.in_use();
                uint32_t spare = permits_ > in_use ? permits_ - in_use : 0;
                if (room > spare) permits_ += cl->take_or_wait(room - spare, this, &p);
                room = std::min(room, permits_ > in_use ? permits_ - in_use : 0u);
            }
            if (room) {
                bool drained = false;
                size_t n = take_input(room, now, &drained);
                if (drained) input_drained_ = true;
                if (n) {
                    start_async(n, now);
                    progress = true;
                }
            }
            reconcile_permits();
        }
        if (input_drained_ && held_head_ == held_.size() && slots.in_use() == 0 &&
            retries_.empty() && blocked_.empty() && route_pending_.empty()) {
            reconcile_permits();
            exhaust();
            return;
        }
        if (!progress) {
            // A retry already due but without room waits for a completion, not a timer.
            if (!retries_.empty() && (slots.room() > 0 || retries_.front().due > now))
                next_deadline = std::min(next_deadline, retries_.front().due);
            arm_timer(next_deadline, now);
            return;
        }
    }
}

bool SegmentWorker::park_retry(uint64_t item, int32_t status) {
    Stage &head = *seg->head();
    const RetryPolicy &rp = head.retry;
    if (attempt_ >= rp.max_attempts || seg->p->cancelling()) return false;
    if (rp.predicate) {
        int32_t again;
        try {
            again = rp.predicate(rp.predicate_user.user, item, status, attempt_);
        } catch (...) {
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

bool SegmentWorker::flush_routes() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    Pipeline *target = Pipeline::pin_route_target(head.error_route);
    uint32_t pushed = 0;
    int32_t rc = FLUXUS_EINVAL;
    if (target) {
        rc = target->push(route_pending_.data(), uint32_t(route_pending_.size()), 0, true,
                          &pushed);
        target->unpin();
    }
    // Handed over: they end here as dead-lettered, and the route's pipeline admitted them.
    t.dead_lettered += pushed;
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
        for (uint64_t x : route_pending_) {
            ++t.failed;
            p.release_item(x, false);
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
    for (size_t i = 0; i < n; ++i) {
        uint64_t now = rt_->now(), epoch = 0;
        bool wait = false;
        if (!breaker_allows(now, &epoch, &wait)) {
            if (wait) {
                keep_rest(i);
                return false;
            }
            StageTally &t = tally_[0];
            {
                RetryScopeGuard refused(this, &head, attempts ? attempts[i] : 1, true);
                p.fail_item(head, items[i], FLUXUS_ECIRCUITOPEN, "circuit breaker open", &t);
            }
            t.flush_to(head.c);
            continue;
        }
        a_[0] = items[i];
        attempt_ = attempts ? attempts[i] : 1;
        uint64_t failures = head_failures;
        process(1);
        attempt_ = 1;
        head.breaker->record(epoch, head_failures == failures, rt_->now());
        deliver();
        if (p.cancelling()) {
            keep_rest(i + 1);
            cancel_all();
            return false;
        }
        if (!pending.empty()) {
            keep_rest(i + 1);
            return false;
        }
    }
    return true;
}

void SegmentWorker::reconcile_permits() {
    Stage &head = *seg->head();
    if (!head.concurrency || !head.async) return;
    uint32_t in_use = head.async->in_use();
    if (permits_ > in_use) {
        head.concurrency->give(permits_ - in_use);
        permits_ = in_use;
    }
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

// The batch head's loop: input joins the open group; a group goes to the callback when it is
// full, when its first item has waited the linger time, or at end of input (a drain too). The
// callback's output then runs through the stages fused behind.
void SegmentWorker::run_batching() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();
            return;
        }
        uint64_t now = rt_->now();
        bool due = !group_.empty() && (group_.size() >= head.batch_max || input_drained_ ||
                                       now >= group_since_ + head.batch_linger_ns);
        if (due) {
            size_t n = std::min<size_t>(group_.size(), head.batch_max);
            if (a_.size() < n) a_.resize(n);
            std::copy(group_.begin(), group_.begin() + n, a_.begin());
            group_.erase(group_.begin(), group_.begin() + n);
            group_since_ = now;  // what is left (input of this round) starts a new group now
            // Counted as arrived at the head when queued; process() runs the head from here.
            process(n);
            deliver();
            if (p.cancelling()) {
                cancel_all();
                return;
            }
            if (!pending.empty()) return;
            continue;
        }
        if (!input_drained_ && group_.size() < head.batch_max) {
            bool drained = false;
            size_t room = head.batch_max - group_.size();
            if (a_.size() < room) a_.resize(room);
            size_t n = seg->input->pop(0, a_.data(), room, this, &drained);
            input_drained_ = drained;
            if (n) {
                if (group_.empty()) group_since_ = now;
                group_.insert(group_.end(), a_.begin(), a_.begin() + n);
                continue;
            }
            if (drained) continue;  // flush the tail
        }
        if (input_drained_ && group_.empty()) {
            exhaust();
            return;
        }
        if (!group_.empty()) arm_timer(group_since_ + head.batch_linger_ns, now);
        return;
    }
}

void SegmentWorker::run_reduce() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    auto fn = reinterpret_cast<fluxus_reduce_fn>(head.fn);
    uint32_t lane = seg->keyed ? index : 0;
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();
            return;
        }
        bool drained = false;
        size_t n = seg->input->pop(lane, a_.data(), p.batch_size(), this, &drained);
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < n; ++i) {
            uint64_t x = a_[i];
            Key128 k;
            int32_t rc;
            try {
                rc = stage_key(head, x, &k);
                if (rc == 0) {
                    auto ins = acc_index_.emplace(k, accs_.size());
                    if (ins.second) accs_.push_back(0);
                    rc = fn(head.user.user, &accs_[ins.first->second], ins.second ? 1 : 0, x);
                }
            } catch (...) {
                rc = FLUXUS_EEXCEPTION;
            }
            if (rc != 0) {
                p.fail_item(head, x, rc, "reduce callback failed", &t);
            } else {
                ++t.filtered;  // folded into its key's accumulator
                p.destroy_item(x);
            }
        }
        if (n) t.busy_ns += now_ns() - t0;
        t.flush_to(head.c);
        if (n) continue;
        if (!drained) return;  // the queue wakes us
        // End of input: every accumulator goes on as a new item, through the stages behind.
        size_t m = accs_.size();
        if (m) {
            if (a_.size() < m) a_.resize(m);
            std::copy(accs_.begin(), accs_.end(), a_.begin());
            accs_.clear();
            acc_index_.clear();
            t.spawned += m;
            t.out += m;
            if (CursorTracker *cur = p.cursor()) cur->items_spawned(a_.data(), m);
            process(m, 1);
            deliver();
            if (p.cancelling()) {
                cancel_all();
                return;
            }
            if (!pending.empty()) return;
        }
        exhaust();
        return;
    }
}

bool SegmentWorker::fire_windows(std::vector<KeyedWindows::Closed> &closed) {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    auto fn = reinterpret_cast<fluxus_window_fn>(head.fn);
    std::vector<uint64_t> out;
    for (KeyedWindows::Closed &w : closed) {
        fluxus_emitter em{kEmitterMagic, &out, false, p.cursor()};
        t_live_emitter = &em;  // the emitter is live only during the call
        int32_t rc;
        try {
            rc = fn(head.user.user, w.items.data(), uint32_t(w.items.size()), w.start_ns, &em);
        } catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        t_live_emitter = nullptr;
        for (uint64_t x : w.items) {
            if (rc != 0) {
                p.fail_item(head, x, rc, "window callback failed", &t);
                continue;
            }
            ++t.filtered;  // consumed by its window
            if (!em.keep_input)
                p.destroy_item(x);
            else if (CursorTracker *cur = p.cursor())
                cur->item_ended(x, true);
        }
    }
    closed.clear();
    t.spawned += out.size();
    t.out += out.size();
    t.flush_to(head.c);
    if (out.empty()) return true;
    if (a_.size() < out.size()) a_.resize(out.size());
    std::copy(out.begin(), out.end(), a_.begin());
    process(out.size(), 1);
    deliver();
    if (p.cancelling()) {
        cancel_all();
        return false;
    }
    return pending.empty();
}

// The window head's loop: new input joins its key's window (a full count window closes at
// once); time and session windows close on the runtime's clock, woken by one timer at the
// earliest deadline; at end of input every open window closes.
void SegmentWorker::run_windows() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    KeyedWindows &wins = *state_[0].windows;
    StageTally &t = tally_[0];
    uint32_t lane = seg->keyed ? index : 0;
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();
            return;
        }
        uint64_t now = rt_->now();
        wins.close_due(now, closed_);
        if (input_drained_) wins.close_all(closed_);
        if (!closed_.empty()) {
            if (!fire_windows(closed_)) return;
            continue;
        }
        if (input_drained_) {
            exhaust();
            return;
        }
        bool drained = false;
        size_t n = seg->input->pop(lane, a_.data(), p.batch_size(), this, &drained);
        input_drained_ = drained;
        std::vector<uint64_t> batch(a_.begin(), a_.begin() + n);  // a_ is reused by firing
        for (uint64_t x : batch) {
            Key128 k;
            int32_t rc;
            try {
                rc = stage_key(head, x, &k);
            } catch (...) {
                rc = FLUXUS_EEXCEPTION;
            }
            if (rc != 0) {
                p.fail_item(head, x, rc, "window key callback failed", &t);
                continue;
            }
            wins.add(k, x, now, closed_);
        }
        t.flush_to(head.c);
        if (n || drained) continue;
        arm_timer(wins.next_deadline(), now);
        return;
    }
}

void SegmentWorker::arm_timer(uint64_t deadline, uint64_t now) {
    if (deadline == UINT64_MAX) return;
    if (timer_at_ != 0 && timer_at_ > now && timer_at_ <= deadline) return;  // armed earlier
    timer_at_ = deadline;
    rt_->add_timer(deadline, this, seg->p);
}

// The debounce head's loop: items whose key has been quiet for the period (or, at end of
// input, every held item) go on through the stages fused behind; new input replaces held items
// of the same key. One timer at the earliest due time wakes the worker.
void SegmentWorker::run_debounce() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    Debouncer &deb = *state_[0].debounce;
    StageTally &t = tally_[0];
    uint32_t lane = seg->keyed ? index : 0;
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();
            return;
        }
        bool progress = false;
        uint64_t now = rt_->now();
        deb.collect_due(now, emit_);
        if (input_drained_) deb.take_all(emit_);  // flushed on drain and end of stream
        if (!emit_.empty()) {
            progress = true;
            size_t n = emit_.size();
            if (a_.size() < n) a_.resize(n);
            std::copy(emit_.begin(), emit_.end(), a_.begin());
            emit_.clear();
            t.out += n;
            process(n, 1);
            deliver();
            if (p.cancelling()) {
                cancel_all();
                return;
            }
            if (!pending.empty()) return;
        }
        if (!input_drained_) {
            bool drained = false;
            size_t n = seg->input->pop(lane, a_.data(), p.batch_size(), this, &drained);
            input_drained_ = drained;
            for (size_t i = 0; i < n; ++i) {
                uint64_t x = a_[i], old = 0;
                Key128 k;
                int32_t rc;
                try {
                    rc = stage_key(head, x, &k);
                } catch (...) {
                    rc = FLUXUS_EEXCEPTION;
                }
                if (rc != 0) {
                    p.fail_item(head, x, rc, "debounce key callback failed", &t);
                    continue;
                }
                if (deb.offer(k, x, now, &old, emit_)) {
                    ++t.filtered;  // superseded by a newer item of the same key
                    p.destroy_item(old);
                }
            }
            t.flush_to(head.c);
            if (n || drained) progress = true;
        }
        if (input_drained_ && deb.size() == 0 && emit_.empty()) {
            exhaust();
            return;
        }
        if (!progress) {
            arm_timer(deb.next_deadline(), now);
            return;
        }
    }
}

void SegmentWorker::start_async(size_t n, uint64_t now, const uint32_t *attempts) {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    auto fn = reinterpret_cast<fluxus_async_map_fn>(head.fn);
    void *u = head.user.user;
    AsyncSlots &slots = *head.async;
    RetryScopeGuard retry_scope(this, &head, 1);
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; ++i) {
        uint64_t x = a_[i];
        attempt_ = attempts ? attempts[i] : 1;
        retry_scope.set_attempt(attempt_);
        uint64_t epoch = 0;
        if (head.breaker) {
            bool wait = false;
            if (!breaker_allows(now, &epoch, &wait)) {
                if (wait) {
                    for (size_t j = i; j < n; ++j)
                        blocked_.push_back(RetryEntry{0, 0, a_[j], attempts ? attempts[j] : 1});
                    break;
                }
                retry_scope.set_refusal(true);  // reported with its attempt, never retried
                p.fail_item(head, x, FLUXUS_ECIRCUITOPEN, "circuit breaker open", &t);
                retry_scope.set_refusal(false);
                continue;
            }
        }
        uint64_t token = slots.begin(x, now, attempt_, epoch);
        int32_t rc;
        try {
            rc = fn(u, x, token);
        } catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        // A refusal after the host already completed the item is too late: the completion
        // stands and the item goes on.
        if (rc != 0 && slots.abort(token)) {
            if (epoch) head.breaker->record(epoch, false, rt_->now());
            p.fail_item(head, x, rc, "async callback refused the item", &t);
        }
    }
    attempt_ = 1;
    t.busy_ns += now_ns() - t0;
    t.flush_to(head.c);
}

// Turns collected results into the batch for the stages behind: completed items go on, failed
// ones follow the error policy (fluxus owns them again), timed-out ones too, but their item
// still belongs to the host, which keeps it when its late completion is refused.
size_t SegmentWorker::settle_async() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    if (a_.size() < ended_.size()) a_.resize(ended_.size());
    size_t m = 0;
    RetryScopeGuard retry_scope(this, &head, 1);
    for (const AsyncSlots::Ended &e : ended_) {
        attempt_ = e.attempt;
        retry_scope.set_attempt(e.attempt);
        if (e.epoch)
            head.breaker->record(e.epoch, e.how == AsyncSlots::End::completed, rt_->now());
        switch (e.how) {
        case AsyncSlots::End::completed:
            a_[m++] = e.item;
            break;
        case AsyncSlots::End::failed:
            p.fail_item(head, e.item, e.status, "async completion reported an error", &t);
            break;
        case AsyncSlots::End::timed_out:
            p.fail_item(head, e.item, FLUXUS_ETIMEDOUT, "async item timed out", &t, false);
            head.async->finish_timeout(e.slot);  // only now may a late completion hand it back
            break;
        }
    }
    attempt_ = 1;
    t.out += m;
    return m;
}

void SegmentWorker::deliver() {
    if (!seg->next) return;
    if (seg->ordered) {
        PendingItems out;
        std::swap(out, pending);  // reuse pending's buffers; it is empty on this path
        seg->prepare_out(a_.data(), out_n_, out);
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
    if (!pending.empty()) {
        if (Stage *ns = seg->out_stage())
            p.cancel_items(*ns, pending.items.data() + pending.head, pending.size(), true);
        pending.clear();
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
            size_t host_owned = h->async->cancel_all(owned);
            if (!owned.empty()) p.cancel_items(*h, owned.data(), owned.size(), false);
            h->c.cancelled.fetch_add(host_owned, std::memory_order_relaxed);
            reconcile_permits();
        }
        if (!group_.empty()) {
            p.cancel_items(*h, group_.data(), group_.size(), false);
            group_.clear();
        }
        if (state_.size() && state_[0].windows) {
            std::vector<KeyedWindows::Closed> open;
            state_[0].windows->close_all(open);
            for (auto &w : closed_) open.push_back(std::move(w));
            closed_.clear();
            for (auto &w : open) p.cancel_items(*h, w.items.data(), w.items.size(), false);
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

void SegmentWorker::exhaust() {
    if (!pending.empty() || is_exhausted_) return;
    is_exhausted_ = true;
    close_hooks();
    seg->worker_exhausted();
}

}  // namespace fluxus
