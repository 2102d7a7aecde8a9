// Segment workers whose head stage does more than run a batch: async map (in-flight table,
// completions, timeouts), debounce, batch (size + linger), reduce by key, and windows. Each
// loop takes input, lets results go on through the stages fused behind, and parks on its queue
// or a timer instead of blocking a thread.
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

// Sends a_[0..n), results of the head stage, through the stages fused behind it and on
// downstream. False: stop this run (cancelled, or parked until the next queue has room).
bool SegmentWorker::send_on(size_t n) {
    process(n, 1);
    deliver();
    if (seg->p->cancelling()) {
        cancel_all();
        return false;
    }
    return !has_output();
}

// The key of an input item of a keyed head stage; if the key function fails (or throws), the
// item fails at the head with `what` and false is returned.
bool SegmentWorker::key_or_fail(uint64_t item, Key128 *key, const char *what) {
    return fluxus::key_or_fail(*seg->p, *seg->head(), item, key, what, &tally_[0]);
}

void SegmentWorker::unwind_input(const uint64_t *items, size_t i, size_t n, bool held) {
    StageTally &t = tally_[0];
    if (held && !t_unwind.ended) ++t.cancelled;
    t_unwind.ended = false;
    if (i + 1 < n) {
        t.cancelled += n - i - 1;
        seg->p->release_items(items + i + 1, n - i - 1, false);
    }
    t.flush_to(seg->head()->c);
}

namespace {

// Calls a window stage's aggregate callback with a live emitter that collects into `out`.
int32_t call_window_fn(Pipeline &p, Stage &head, const uint64_t *items, size_t count,
                       uint64_t start_ns, std::vector<uint64_t> &out, bool *keep_input) {
    fluxus_emitter em{kEmitterMagic, &out, false, p.cursor()};
    t_live_emitter = &em;  // the emitter is live only during the call
    int32_t rc;
    try {
        rc = reinterpret_cast<fluxus_window_fn>(head.fn)(head.user.user, items, uint32_t(count),
                                                         start_ns, &em);
    } FLUXUS_CATCH_ALL {
        rc = FLUXUS_EEXCEPTION;
    }
    t_live_emitter = nullptr;
    if (keep_input) *keep_input = em.keep_input;
    return rc;
}

}  // namespace

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
        if (routes_waiting() && !flush_routes()) return;
        bool progress = false;
        uint64_t now = rt_->now();
        ended_.clear();
        uint64_t next_deadline = slots.collect(now, ended_);
        if (!ended_.empty()) {
            progress = true;
            reconcile_permits();
            if (!send_on(settle_async())) return;
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
            retries_.empty() && blocked_.empty() && !routes_waiting()) {
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
        if (p.cancelling()) {
            // Cancelled while this loop runs: the open group is cancelled, not run (the input
            // closing under a cancel is not the end of input).
            cancel_all();
            return;
        }
        // A group's failures may be on their way down the error branch (or route): they go
        // first, and the stage takes no input while they wait for room.
        if (routes_waiting() && !flush_routes()) return;
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
            if (has_output()) return;
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
            if (routes_waiting()) continue;
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
        size_t i = 0;
        try {
            for (; i < n; ++i) {
                uint64_t x = a_[i];
                if (p.cancelling()) break;  // no callback starts once the pipeline is cancelled
                Key128 k;
                if (!key_or_fail(x, &k, "reduce key callback failed")) continue;
                int32_t rc;
                try {
                    auto ins = acc_index_.emplace(k, accs_.size());
                    if (ins.second) accs_.push_back(0);
                    rc = fn(head.user.user, &accs_[ins.first->second], ins.second ? 1 : 0, x);
                } FLUXUS_CATCH_ALL {
                    rc = FLUXUS_EEXCEPTION;
                }
                if (rc != 0) {
                    p.fail_item(head, x, rc, "reduce callback failed", &t);
                } else {
                    ++t.filtered;  // folded into its key's accumulator
                    p.destroy_item(x);
                }
            }
        } FLUXUS_ON_FORCED_UNWIND(unwind_input(a_.data(), i, n, true))
        if (i < n) {
            t.cancelled += n - i;
            p.release_items(a_.data() + i, n - i, false);
        }
        if (n) t.busy_ns += now_ns() - t0;
        t.flush_to(head.c);
        if (n) continue;
        if (!drained) return;  // the queue wakes us
        if (p.cancelling()) {  // the input closed under a cancel: not the end of input
            cancel_all();
            return;
        }
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
            if (!send_on(m)) return;
        }
        exhaust();
        return;
    }
}

void SegmentWorker::end_consumed(const std::vector<uint64_t> &items, int32_t rc,
                                 bool keep_input, const char *what) {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    StageTally &t = tally_[0];
    size_t i = 0;
    try {
        for (; i < items.size(); ++i) {
            uint64_t x = items[i];
            if (rc != 0) {
                p.fail_item(head, x, rc, what, &t);
                continue;
            }
            ++t.filtered;  // consumed by the callback
            if (!keep_input)
                p.destroy_item(x);
            else if (CursorTracker *cur = p.cursor())
                cur->item_ended(x, true);
        }
    } FLUXUS_ON_FORCED_UNWIND(([&] {
        // Out of the dead-letter callback (item i stays with the host) or the item destructor
        // (item i has ended): the items after it are cancelled.
        if (!t_unwind.ended) ++t.cancelled;
        t_unwind.ended = false;
        size_t rest = items.size() - i - 1;
        t.cancelled += rest;
        p.release_items(items.data() + i + 1, rest, false);
    }()))
}

bool SegmentWorker::send_emitted(std::vector<uint64_t> &out) {
    StageTally &t = tally_[0];
    t.spawned += out.size();
    t.out += out.size();
    t.flush_to(seg->head()->c);
    if (out.empty()) return true;
    if (a_.size() < out.size()) a_.resize(out.size());
    std::copy(out.begin(), out.end(), a_.begin());
    return send_on(out.size());
}

void SegmentWorker::fire_set(const std::vector<uint64_t> &items, uint64_t start_ns,
                             std::vector<uint64_t> &out, const char *what) {
    if (seg->p->cancelling()) {  // no callback starts once the pipeline is cancelled
        tally_[0].cancelled += items.size();
        seg->p->release_items(items.data(), items.size(), false);
        return;
    }
    bool keep_input = false;
    int32_t rc;
    try {
        rc = call_window_fn(*seg->p, *seg->head(), items.data(), items.size(), start_ns, out,
                            &keep_input);
    } FLUXUS_ON_FORCED_UNWIND(tally_[0].cancelled += items.size())  // the host holds them
    if (rc == 0) {
        call_errors_.drop_unused();
        return end_consumed(items, rc, keep_input, what);
    }
    BatchTexts texts(&call_errors_);  // the call's text goes with every item it fails
    FailureTextScope text(texts.for_call());
    end_consumed(items, rc, keep_input, what);
}

void SegmentWorker::unwind_emitted(std::vector<uint64_t> &out) {
    // New items of the head that a forced unwind stopped before they went on: cancelled where
    // they were headed.
    StageTally &t = tally_[0];
    t.spawned += out.size();
    t.out += out.size();
    t_unwind.survivors = out.size();
    end_unwound(1, out.data(), SIZE_MAX);
    out.clear();
}

bool SegmentWorker::fire_windows(std::vector<KeyedWindows::Closed> &closed) {
    std::vector<uint64_t> out;
    size_t w = 0;
    try {
        for (; w < closed.size(); ++w)
            fire_set(closed[w].items, closed[w].start_ns, out, "window callback failed");
    } FLUXUS_ON_FORCED_UNWIND((closed.erase(closed.begin(), closed.begin() + w + 1),
                               unwind_emitted(out)))
    closed.clear();
    return send_emitted(out);
}

bool SegmentWorker::fire_joins() {
    std::vector<uint64_t> out;
    size_t j = 0;
    try {
        for (; j < joined_.size(); ++j) {
            JoinTable::Done &d = joined_[j];
            if (d.status == 0)
                fire_set(d.items, d.start_ns, out, "join callback failed");
            else
                end_consumed(d.items, d.status, false,
                             d.status == FLUXUS_ETIMEDOUT
                                 ? "join key still incomplete after the join timeout"
                                 : "join key still incomplete at end of input");
        }
    } FLUXUS_ON_FORCED_UNWIND((joined_.erase(joined_.begin(), joined_.begin() + j + 1),
                               unwind_emitted(out)))
    joined_.clear();
    return send_emitted(out);
}

// The join head's loop: each input item waits under its key for the other inputs; complete
// sets go to the callback, keys past the join timeout (one timer at the oldest) or left at end
// of input fail.
void SegmentWorker::run_join() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    JoinTable &jt = *state_[0].join;
    StageTally &t = tally_[0];
    uint32_t lane = seg->keyed ? index : 0;
    for (int round = 0;; ++round) {
        if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
            notify();
            return;
        }
        if (p.cancelling()) {
            // Cancelled while this loop runs: waiting keys are cancelled, not failed with
            // FLUXUS_ECLOSED (the input closing under a cancel is not the end of input).
            cancel_all();
            return;
        }
        uint64_t now = rt_->now();
        jt.expire(now, joined_);
        if (input_drained_) jt.take_all(joined_);
        if (!joined_.empty()) {
            if (!fire_joins()) return;
            continue;
        }
        if (input_drained_) {
            exhaust();
            return;
        }
        bool drained = false;
        size_t n = seg->input->pop(lane, a_.data(), p.batch_size(), this, &drained);
        input_drained_ = drained;
        size_t i = 0;
        try {
            for (; i < n; ++i) {
                uint64_t x = a_[i];
                Key128 k;
                if (!key_or_fail(x, &k, "join key callback failed")) continue;
                uint32_t input = 0;
                int32_t rc;
                try {
                    rc = head.join_input(head.user.user, x, &input);
                } FLUXUS_CATCH_ALL {
                    rc = FLUXUS_EEXCEPTION;
                }
                const char *why = "join input callback failed";
                if (rc == 0 && input >= head.join_inputs) {
                    rc = FLUXUS_ERANGE;
                    why = "the join input callback named an input the join does not have";
                }
                if (rc == 0) {
                    rc = jt.add(k, input, x, now, joined_);
                    why = rc == FLUXUS_EFULL ? "join full: its most keys are waiting"
                                             : "a second item for an input of a key still waiting";
                }
                if (rc != 0) p.fail_item(head, x, rc, why, &t);
            }
        } FLUXUS_ON_FORCED_UNWIND(unwind_input(a_.data(), i, n, true))
        t.flush_to(head.c);
        if (n || drained) continue;
        arm_timer(jt.next_deadline(), now);
        return;
    }
}

// The sliding window head's loop. Firing a window runs the aggregate callback on borrowed items
// (they stay held for later windows); items end when they leave their last window, as consumed,
// or as failed if their home window's callback failed.
void SegmentWorker::run_sliding() {
    Pipeline &p = *seg->p;
    Stage &head = *seg->head();
    SlidingWindows &wins = *state_[0].sliding;
    StageTally &t = tally_[0];
    uint32_t lane = seg->keyed ? index : 0;
    std::vector<uint64_t> out;
    std::vector<SlidingWindows::Leaving> leaving;
    auto fire = [&](const uint64_t *items, size_t count, uint64_t start_ns) -> int32_t {
        // keep_input has no effect here: items stay held for later windows.
        int32_t rc;
        try {
            rc = call_window_fn(p, head, items, count, start_ns, out, nullptr);
        } FLUXUS_ON_FORCED_UNWIND(host_kept_.assign(items, items + count))
        // Its items fail when they leave their last window, later: they keep the status only
        // (a text kept that long would land on whichever failure came first).
        call_errors_.drop_unused();
        return rc;
    };
    // Ends what left its last window, then sends what the callbacks emitted on.
    auto settle = [&]() -> bool {
        for (const SlidingWindows::Leaving &l : leaving) {
            if (l.status != 0) {
                p.fail_item(head, l.item, l.status, "window callback failed", &t);
            } else {
                ++t.filtered;
                p.destroy_item(l.item);
            }
        }
        leaving.clear();
        t.spawned += out.size();
        t.out += out.size();
        t.flush_to(head.c);
        if (out.empty()) return true;
        if (a_.size() < out.size()) a_.resize(out.size());
        std::copy(out.begin(), out.end(), a_.begin());
        size_t m = out.size();
        out.clear();
        return send_on(m);
    };
    std::vector<uint64_t> batch;
    size_t bi = 0;
    bool keying = false;  // batch[bi] is in the key callback (not yet held by the windows)
    // Under a forced unwind out of a callback: items that left their last window and the rest
    // of the input batch are cancelled, the key callback's item stays with the host, what the
    // callbacks emitted is released uncounted (as on cancel), and the window callback's items
    // (host_kept_, still held by the windows) are left to cancel_all().
    auto unwind = [&] {
        for (const SlidingWindows::Leaving &l : leaving) p.cancel_items(head, &l.item, 1, false);
        leaving.clear();
        for (uint64_t x : out) p.free_unadmitted(x);
        out.clear();
        if (bi < batch.size()) unwind_input(batch.data(), bi, batch.size(), keying);
        t.flush_to(head.c);
    };
    try {
        for (int round = 0;; ++round) {
            batch.clear();
            bi = 0;
            if (round >= kRoundsPerRun && rt_->has_queued_tasks()) {
                notify();
                return;
            }
            if (p.cancelling()) {
                // Items that left their last window are cancelled; what the callbacks emitted was
                // never admitted and is released uncounted.
                for (const SlidingWindows::Leaving &l : leaving)
                    p.cancel_items(head, &l.item, 1, false);
                leaving.clear();
                for (uint64_t x : out) p.free_unadmitted(x);
                out.clear();
                cancel_all();
                return;
            }
            uint64_t now = rt_->now();
            wins.close_due(now, fire, leaving);
            if (input_drained_) wins.close_all(fire, leaving);
            if (!leaving.empty() || !out.empty()) {
                if (!settle()) return;
                continue;
            }
            if (input_drained_) {
                exhaust();
                return;
            }
            bool drained = false;
            size_t n = seg->input->pop(lane, a_.data(), p.batch_size(), this, &drained);
            input_drained_ = drained;
            batch.assign(a_.begin(), a_.begin() + n);
            for (bi = 0; bi < n; ++bi) {
                Key128 k;
                keying = true;
                bool ok = key_or_fail(batch[bi], &k, "window key callback failed");
                keying = false;
                if (ok) wins.add(k, batch[bi], now, fire, leaving);
            }
            t.flush_to(head.c);
            if (n || drained) continue;
            arm_timer(wins.next_deadline(), now);
            return;
        }
    } FLUXUS_ON_FORCED_UNWIND(unwind())
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
        if (p.cancelling()) {  // open and closed windows are cancelled, not fired
            cancel_all();
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
        size_t i = 0;
        try {
            for (; i < n; ++i) {
                Key128 k;
                if (!key_or_fail(batch[i], &k, "window key callback failed")) continue;
                wins.add(k, batch[i], now, closed_);
            }
        } FLUXUS_ON_FORCED_UNWIND(unwind_input(batch.data(), i, n, true))
        t.flush_to(head.c);
        if (n || drained) continue;
        arm_timer(wins.next_deadline(), now);
        return;
    }
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
        if (p.cancelling()) {  // held items are cancelled, not flushed
            cancel_all();
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
            if (!send_on(n)) return;
        }
        if (!input_drained_) {
            bool drained = false;
            size_t n = seg->input->pop(lane, a_.data(), p.batch_size(), this, &drained);
            input_drained_ = drained;
            size_t i = 0;
            try {
                for (; i < n; ++i) {
                    uint64_t x = a_[i], old = 0;
                    Key128 k;
                    if (!key_or_fail(x, &k, "debounce key callback failed")) continue;
                    if (deb.offer(k, x, now, &old, emit_)) {
                        ++t.filtered;  // superseded by a newer item of the same key
                        p.destroy_item(old);  // (x is held now: an unwind here ends `old`)
                    }
                }
            } FLUXUS_ON_FORCED_UNWIND(unwind_input(a_.data(), i, n, true))
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
    size_t i = 0;
    bool started = false;  // item i is in flight (its slot accounts for it)
    try {
        for (; i < n; ++i) {
            uint64_t x = a_[i];
            started = false;
            if (p.cancelling()) {  // no callback starts once the pipeline is cancelled
                t.cancelled += n - i;
                size_t from = i;
                i = n;
                p.release_items(a_.data() + from, n - from, false);
                break;
            }
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
            started = true;
            int32_t rc;
            try {
                rc = fn(u, x, token);
            } FLUXUS_CATCH_ALL {
                rc = FLUXUS_EEXCEPTION;
            }
            // A refusal after the host already completed the item is too late: the completion
            // stands and the item goes on.
            if (rc != 0 && slots.abort(token)) {
                if (epoch && rc == FLUXUS_ECANCELED)
                    head.breaker->abandon(epoch);
                else if (epoch)
                    head.breaker->record(epoch, false, rt_->now());
                started = false;  // no longer in flight: the failure ends it
                p.fail_item(head, x, rc, "async callback refused the item", &t);
            }
        }
    } FLUXUS_ON_FORCED_UNWIND((attempt_ = 1, unwind_input(a_.data(), i, n, !started)))
    call_errors_.drop_unused();  // a started item's text: dropped
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
    size_t m = 0, i = 0;
    // How far ended_[i] got: its breaker outcome being recorded (the item is untouched), its
    // failure being reported (the dead-letter callback holds it), or (timed out) failed with
    // the cancel hook being told.
    enum class At { record, fail, hook } at = At::record;
    RetryScopeGuard retry_scope(this, &head, 1);
    // Under a forced unwind out of a callback (the breaker's state callback, the dead-letter
    // callback, the async cancel hook, the destructor): the results not yet settled end as
    // cancelled (fluxus's items destroyed; a timed-out item stays the host's and its slot is
    // finished), an item in the dead-letter callback stays with the host, and the m completed
    // items go on to be cancelled downstream.
    auto unwind = [&] {
        attempt_ = 1;
        size_t from = i;
        if (at != At::record) {
            const AsyncSlots::Ended &cur = ended_[i];
            if (at == At::fail && !t_unwind.ended) ++t.cancelled;
            if (cur.how == AsyncSlots::End::timed_out) head.async->finish_timeout(cur.slot);
            from = i + 1;
        }
        t_unwind.ended = false;
        std::vector<uint64_t> ours;
        for (size_t j = from; j < ended_.size(); ++j) {
            const AsyncSlots::Ended &e = ended_[j];
            if (e.how == AsyncSlots::End::timed_out) {
                ++t.cancelled;  // the host's item: not destroyed
                head.async->finish_timeout(e.slot);
            } else {
                ours.push_back(e.item);
            }
        }
        t.cancelled += ours.size();
        seg->p->release_items(ours.data(), ours.size(), false);
        ended_.clear();
        t.out += m;
        t_unwind.survivors = m;
        end_unwound(1, a_.data(), SIZE_MAX);
    };
    try {
        for (; i < ended_.size(); ++i) {
            const AsyncSlots::Ended &e = ended_[i];
            at = At::record;
            attempt_ = e.attempt;
            retry_scope.set_attempt(e.attempt);
            if (e.epoch && e.how == AsyncSlots::End::failed && e.status == FLUXUS_ECANCELED)
                head.breaker->abandon(e.epoch);  // cancelled: not the service's failure
            else if (e.epoch)
                head.breaker->record(e.epoch, e.how == AsyncSlots::End::completed, rt_->now());
            at = At::fail;
            switch (e.how) {
            case AsyncSlots::End::completed:
                a_[m++] = e.item;
                break;
            case AsyncSlots::End::failed: {
                // fluxus_pipeline_fail_async's text, if any (never a callback's: none runs here)
                FailureTextScope text(e.text ? e.text.get() : no_failure_text());
                p.fail_item(head, e.item, e.status, "async completion reported an error", &t);
                break;
            }
            case AsyncSlots::End::timed_out:
                p.fail_item(head, e.item, FLUXUS_ETIMEDOUT, "async item timed out", &t, false);
                at = At::hook;
                // Before finish_timeout(): no completion of it can be accepted while the host hears
                // it may abandon the work.
                tell_async_abandoned(head, e.item, e.token, FLUXUS_ETIMEDOUT);
                head.async->finish_timeout(e.slot);  // only now may a late completion hand it back
                break;
            }
        }
    } FLUXUS_ON_FORCED_UNWIND(unwind())
    attempt_ = 1;
    t.out += m;
    return m;
}

void tell_async_abandoned(Stage &st, uint64_t item, uint64_t token, int32_t why) {
    if (!st.async_cancel) return;
    CallSuspendScope no_text;  // a text attached here would land on some other failure
    try {
        st.async_cancel(st.async_cancel_user.user, item, token, why);
    } FLUXUS_CATCH_ALL {
        // The hook is advice to the host: if it throws, the item is abandoned all the same.
    }
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

}  // namespace fluxus
