// apply_stage: runs one stage's callback over a batch. This is the hot path: one indirect call
// per item (or one per batch for the batch variants), no locks, no allocations unless a
// flat-map emits more items than the batch buffer holds. A C++ exception thrown by a callback is
// caught here and becomes that item's failure; the loop resumes with the next item.
#include <algorithm>
#include <cstring>

#include "core/segment.hpp"
#include "dedup/key_set.hpp"
#include "runtime/runtime.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

thread_local fluxus_emitter *t_live_emitter = nullptr;

namespace {


// Ends items a stage had not started when the pipeline was cancelled (counted in already).
[[gnu::cold, gnu::noinline]] void cancel_rest(Pipeline &p, const uint64_t *items, size_t n,
                                              StageTally &t) {
    t.cancelled += n;
    p.release_items(items, n, false);
}

// Under a forced unwind out of the callback of item i: that item stays with the host (cancelled,
// not destroyed) unless it had already ended (the unwind came out of its destructor or its
// dead-letter callback, which counted it), the rest is cancelled, and the m outputs so far are
// left to the worker.
[[gnu::cold, gnu::noinline]] void unwind_rest(Pipeline &p, const uint64_t *in, size_t i,
                                              size_t n, size_t m, StageTally &t) {
    if (!t_unwind.ended) ++t.cancelled;
    t_unwind.ended = false;
    t_unwind.survivors = m;
    if (i + 1 < n) cancel_rest(p, in + i + 1, n - i - 1, t);
}

// Under a forced unwind out of a batch callback: the host holds every item of the call
// (cancelled, not destroyed). `emitted`: items a flat-map call emitted (fluxus's, new), which
// go on to be cancelled downstream.
[[gnu::cold, gnu::noinline]] void unwind_batch(WorkerStageState &ws, size_t n, size_t emitted,
                                               StageTally &t) {
    ws.call->end_batch();
    ws.call->drop_unused();
    t.cancelled += n;
    t.spawned += emitted;
    t_unwind.survivors = emitted;
}

// The emitter of the flat-map call running on this thread. fluxus_emitter_emit() compares against it by
// address, so an emitter kept past its call is refused without being dereferenced.
struct EmitterScope {
    explicit EmitterScope(fluxus_emitter *em) { t_live_emitter = em; }
    ~EmitterScope() { t_live_emitter = nullptr; }
};

// Runs body on each item. Once the pipeline is cancelled (or stopped by a failure), no further
// callback starts: the items not yet run end as cancelled here.
template <class Fn>
size_t per_item(Pipeline &p, Stage &st, const uint64_t *in, size_t n, StageTally &t,
                const char *what, Fn body) {
    size_t i = 0, m = 0;
    while (i < n) {
        try {
            for (; i < n; ++i) {
                if (__builtin_expect(p.cancelling(), 0)) break;
                body(in[i], m);
            }
        } FLUXUS_ON_FORCED_UNWIND(unwind_rest(p, in, i, n, m, t)) catch (...) {
            // (A handler is outside its try: the dead-letter callback or the destructor of
            // this failure may end the thread too.)
            try {
                p.fail_item(st, in[i], FLUXUS_EEXCEPTION, what, &t);
            } FLUXUS_ON_FORCED_UNWIND(unwind_rest(p, in, i, n, m, t))
            ++i;
            continue;
        }
        if (i < n) {
            // Outside the loop's try: a forced unwind out of an item destructor here leaves
            // these items ended (see Pipeline::release_items) and the m outputs to the worker.
            try {
                cancel_rest(p, in + i, n - i, t);
            } FLUXUS_ON_FORCED_UNWIND((t_unwind.ended = false, t_unwind.survivors = m))
        }
        break;
    }
    return m;
}

// True if status[0..n) are all 0: the usual outcome of a batch callback, checked eight
// statuses per step before any per-item work.
bool all_ok(const int32_t *status, size_t n) {
    size_t i = 0;
    uint64_t any = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w[4];
        std::memcpy(w, status + i, sizeof w);
        any |= w[0] | w[1] | w[2] | w[3];
    }
    for (; i < n; ++i) any |= uint32_t(status[i]);
    return any == 0;
}

// Fails item i of a batch call that failed, with the text the call attached for it.
inline void fail_batch_item(Pipeline &p, Stage &st, const BatchTexts &texts, size_t i,
                            uint64_t item, int32_t status, const char *what, StageTally &t) {
    FailureTextScope text(texts.for_item(uint32_t(i)));
    p.fail_item(st, item, status, what, &t);
}

// Under a forced unwind out of the dead-letter callback (or the item destructor, or a cursor
// commit) while the results of a batch call are settled, at item i: item i stays with the host
// (cancelled, not destroyed) unless it had ended; `rest` (what fluxus owns of the items after
// it that had not ended: a batch map's output where its status is 0) is cancelled. The m
// outputs so far go on to be cancelled downstream.
[[gnu::cold, gnu::noinline]] void unwind_settle(Pipeline &p, size_t m, StageTally &t,
                                                const std::vector<uint64_t> &rest) {
    if (!t_unwind.ended) ++t.cancelled;
    t_unwind.ended = false;
    t_unwind.survivors = m;
    t.cancelled += rest.size();
    p.release_items(rest.data(), rest.size(), false);
}

// The items after i of a batch: in[j], or out[j] where status[j] is 0 (when `out` is set).
[[gnu::cold]] std::vector<uint64_t> rest_after(size_t i, size_t n, const uint64_t *in,
                                               const uint64_t *out, const int32_t *status) {
    std::vector<uint64_t> rest;
    for (size_t j = i + 1; j < n; ++j) rest.push_back(out && status[j] == 0 ? out[j] : in[j]);
    return rest;
}

// Compacts the items whose status is 0 into out and fails the others, with their texts.
size_t settle_batch(Pipeline &p, Stage &st, CallErrors *call, const uint64_t *in, uint64_t *out,
                    size_t n, int32_t rc, const int32_t *status, StageTally &t,
                    const char *what) {
    size_t i = 0, m = 0;
    if (rc != 0) {
        BatchTexts texts(call);
        try {
            for (; i < n; ++i) fail_batch_item(p, st, texts, i, in[i], rc, what, t);
        } FLUXUS_ON_FORCED_UNWIND(unwind_settle(p, 0, t, rest_after(i, n, in, nullptr, nullptr)))
        return 0;
    }
    if (all_ok(status, n)) {
        call->drop_unused();
        return n;
    }
    BatchTexts texts(call);
    try {
        for (; i < n; ++i) {
            if (status[i] == 0)
                out[m++] = out[i];
            else
                fail_batch_item(p, st, texts, i, in[i], status[i], what, t);
        }
    } FLUXUS_ON_FORCED_UNWIND(unwind_settle(p, m, t, rest_after(i, n, in, out, status)))
    return m;
}

}  // namespace

bool key_or_fail(Pipeline &p, Stage &st, uint64_t item, Key128 *key, const char *what,
                 StageTally *t) {
    int32_t rc;
    try {
        rc = stage_key(st, item, key);
    } FLUXUS_CATCH_ALL {
        rc = FLUXUS_EEXCEPTION;
    }
    if (rc == 0) return true;
    p.fail_item(st, item, rc, what, t);
    return false;
}

int32_t byte_key_digest(const Stage &st, uint64_t item, Key128 *out) {
    const void *k = nullptr;
    size_t len = 0;
    int32_t rc = st.key_fn(st.key_user.user, item, &k, &len);
    if (rc != 0) return rc;
    if (!k && len) return FLUXUS_EINVAL;
    *out = digest_bytes(k, len);
    return 0;
}

namespace {

// Times callbacks against the stage timeout in the timed variant; compiles to nothing in the
// untimed one, so stages without a timeout pay no clock reads.
template <bool kTimed>
struct Overrun {
    Runtime *rt;
    uint64_t limit;
    uint64_t t0 = 0;
    void start() {
        if constexpr (kTimed) t0 = rt->now();
    }
    // True if the callback that started at start() ran past the limit; counts it.
    bool check(Stage &st) {
        if constexpr (kTimed) {
            if (rt->now() - t0 > limit) {
                st.c.timed_out.fetch_add(1, std::memory_order_relaxed);
                return true;
            }
        }
        return false;
    }
};

constexpr const char *kOverran = "callback overran the stage timeout";

template <bool kTimed>
size_t apply_impl(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                  std::vector<uint64_t> &out, StageTally &t) {
    if (out.size() < n) out.resize(n);
    void *u = st.user.user;
    uint64_t *o = out.data();
    Overrun<kTimed> clock{p.runtime(), st.timeout_ns};
    switch (st.kind) {
    case StageKind::map: {
        if (ws.cache) return apply_cached_map(p, st, ws, in, n, out, t);
        auto fn = reinterpret_cast<fluxus_map_fn>(st.fn);
        const char *failed = callback_failure_message(StageKind::map, false);
        return per_item(p, st, in, n, t, callback_failure_message(StageKind::map, true),
                        [&](uint64_t x, size_t &m) {
                            // Written straight into the output slot, preset to the input (a
                            // map that returns 0 without writing passes its input on, as in
                            // the fused chain); a failure leaves the slot to the next item.
                            o[m] = x;
                            clock.start();
                            int32_t rc = fn(u, x, &o[m]);
                            if (__builtin_expect(rc == 0, 1)) {
                                if (clock.check(st))  // the callback owns x; fail its output
                                    p.fail_item(st, o[m], FLUXUS_ETIMEDOUT, kOverran, &t);
                                else
                                    ++m;
                            } else {
                                p.fail_item(st, x, rc, failed, &t);
                            }
                        });
    }
    case StageKind::filter: {
        auto fn = reinterpret_cast<fluxus_filter_fn>(st.fn);
        const char *failed = callback_failure_message(StageKind::filter, false);
        return per_item(p, st, in, n, t, callback_failure_message(StageKind::filter, true),
                        [&](uint64_t x, size_t &m) {
                            int32_t keep = 0;
                            clock.start();
                            int32_t rc = fn(u, x, &keep);
                            if (rc == 0 && clock.check(st)) {
                                p.fail_item(st, x, FLUXUS_ETIMEDOUT, kOverran, &t);
                            } else if (rc != 0) {
                                p.fail_item(st, x, rc, failed, &t);
                            } else if (keep) {
                                o[m++] = x;
                            } else {
                                ++t.filtered;
                                p.destroy_item(x);
                            }
                        });
    }
    case StageKind::sink: {
        auto fn = reinterpret_cast<fluxus_sink_fn>(st.fn);
        // per_item counts the delivered items in its output counter; nothing is written.
        CursorTracker *cur = p.cursor();
        const char *threw = callback_failure_message(StageKind::sink, true);
        const char *failed = callback_failure_message(StageKind::sink, false);
        t.out += per_item(p, st, in, n, t, threw, [&](uint64_t x, size_t &m) {
            // The sink owns the item once it accepts it: ask its page before.
            uint64_t page = cur ? cur->page_of(x) : 0;
            clock.start();
            int32_t rc = fn(u, x);
            clock.check(st);  // the sink owns the item now: an overrun is only counted
            if (__builtin_expect(rc == 0, 1)) {
                ++m;  // before the commit callback the page's end may call (it may unwind)
                if (cur) cur->page_ended(page, true);
            } else {
                p.fail_item(st, x, rc, failed, &t);
            }
        });
        return 0;
    }
    case StageKind::flat_map: {
        auto fn = reinterpret_cast<fluxus_flat_map_fn>(st.fn);
        out.clear();
        fluxus_emitter em{kEmitterMagic, &out, false, p.cursor()};
        EmitterScope live(&em);
        try {
            per_item(p, st, in, n, t, "flat-map callback threw", [&](uint64_t x, size_t &) {
            em.keep_input = false;
            clock.start();
            int32_t rc = fn(u, x, &em);
            clock.check(st);  // emitted items are already admitted: only counted
            if (rc == 0) {
                ++t.filtered;  // the input is consumed; its outputs are new items
                if (!em.keep_input)
                    p.destroy_item(x);
                else if (CursorTracker *cur = p.cursor())
                    cur->item_ended(x, true);
            } else {
                p.fail_item(st, x, rc, "flat-map callback failed", &t);
            }
            });
        } FLUXUS_ON_FORCED_UNWIND((t.spawned += out.size(), t_unwind.survivors = out.size()))
        // (Under a forced unwind every item emitted so far, by the interrupted call too, is
        // fluxus's and goes on to be cancelled downstream.)
        t.spawned += out.size();
        return out.size();
    }
    case StageKind::dedup: {
        if (ws.throttle || ws.window) {
            // Windowed dedup: a time-to-live (first pass + ttl) or the last N distinct keys.
            uint64_t now = p.runtime()->now();
            uint64_t before_keys = ws.throttle ? ws.throttle->size() : ws.window->size();
            uint64_t before_forgotten =
                ws.throttle ? ws.throttle->forgotten() : ws.window->forgotten();
            size_t m = per_item(p, st, in, n, t, "dedup key callback threw",
                                [&](uint64_t x, size_t &kept) {
                                    Key128 k;
                                    if (int32_t rc = stage_key(st, x, &k)) {
                                        p.fail_item(st, x, rc, "dedup key callback failed", &t);
                                    } else if (ws.throttle ? ws.throttle->admit(k, now)
                                                           : ws.window->admit(k)) {
                                        o[kept++] = x;
                                    } else {
                                        ++t.filtered;
                                        p.destroy_item(x);
                                    }
                                });
            uint64_t keys = ws.throttle ? ws.throttle->size() : ws.window->size();
            uint64_t forgotten = ws.throttle ? ws.throttle->forgotten() : ws.window->forgotten();
            st.c.dedup_keys.fetch_add(keys - before_keys, std::memory_order_relaxed);
            st.c.dedup_forgotten.fetch_add(forgotten - before_forgotten,
                                           std::memory_order_relaxed);
            return m;
        }
        KeySet &keys = *ws.keys;
        uint64_t before_keys = keys.size(), before_forgotten = keys.forgotten();
        // r is KeySet's verdict: 1 new (passes), 0 seen (filtered), -1 out of memory.
        auto settle = [&](uint64_t x, int r, size_t &m) {
            if (r > 0) {
                o[m++] = x;
            } else if (r == 0) {
                ++t.filtered;
                p.destroy_item(x);
            } else {
                p.fail_item(st, x, FLUXUS_ENOMEM, "dedup set: out of memory", &t);
            }
        };
        size_t m = 0;
        if (!st.key_fn) {
            // Word keys: no callback to contain, and the batch form overlaps cache misses.
            ws.verdict.resize(n);
            keys.insert_words(in, n, ws.verdict.data());
            for (size_t i = 0; i < n; ++i) settle(in[i], ws.verdict[i], m);
        } else {
            m = per_item(p, st, in, n, t, "dedup key callback threw", [&](uint64_t x, size_t &kept) {
                Key128 key;
                if (int32_t rc = byte_key_digest(st, x, &key)) {
                    p.fail_item(st, x, rc, "dedup key callback failed", &t);
                    return;
                }
                settle(x, keys.insert_digest(key), kept);
            });
        }
        st.c.dedup_keys.fetch_add(keys.size() - before_keys, std::memory_order_relaxed);
        st.c.dedup_forgotten.fetch_add(keys.forgotten() - before_forgotten,
                                       std::memory_order_relaxed);
        return m;
    }
    case StageKind::map_batch: {
        auto fn = reinterpret_cast<fluxus_map_batch_fn>(st.fn);
        int32_t *status = ws.zeroed_status(n);
        int32_t rc;
        std::memcpy(o, in, n * sizeof *in);  // out[] arrives preset to the inputs
        clock.start();
        ws.call->begin_batch(uint32_t(n));  // texts per item: fluxus_call_set_item_error
        try {
            rc = fn(u, in, o, status, uint32_t(n));
        } FLUXUS_ON_FORCED_UNWIND(unwind_batch(ws, n, 0, t)) catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        ws.call->end_batch();
        if (rc == 0 && clock.check(st)) {
            // Every item the call mapped is discarded: the outputs fail, the failed ones too.
            st.c.timed_out.fetch_add(n - 1, std::memory_order_relaxed);
            BatchTexts texts(ws.call);
            for (size_t i = 0; i < n; ++i)
                fail_batch_item(p, st, texts, i, status[i] == 0 ? o[i] : in[i], FLUXUS_ETIMEDOUT,
                                kOverran, t);
            return 0;
        }
        return settle_batch(p, st, ws.call, in, o, n, rc, status, t, "batch map callback failed");
    }
    case StageKind::filter_batch: {
        auto fn = reinterpret_cast<fluxus_filter_batch_fn>(st.fn);
        int32_t *status = ws.zeroed_status(n);
        int32_t *keep = ws.zeroed_keep(n);
        int32_t rc;
        clock.start();
        ws.call->begin_batch(uint32_t(n));
        try {
            rc = fn(u, in, keep, status, uint32_t(n));
        } FLUXUS_ON_FORCED_UNWIND(unwind_batch(ws, n, 0, t)) catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        ws.call->end_batch();
        if (rc == 0 && clock.check(st)) {
            st.c.timed_out.fetch_add(n - 1, std::memory_order_relaxed);
            BatchTexts texts(ws.call);
            for (size_t i = 0; i < n; ++i)
                fail_batch_item(p, st, texts, i, in[i], FLUXUS_ETIMEDOUT, kOverran, t);
            return 0;
        }
        if (rc != 0)
            return settle_batch(p, st, ws.call, in, o, n, rc, nullptr, t, "batch filter failed");
        // What the call attached is taken out now; dropped with `texts` if no item failed.
        BatchTexts texts(ws.call);
        size_t m = 0, i = 0;
        try {
            for (; i < n; ++i) {
                if (status[i] != 0) {
                    fail_batch_item(p, st, texts, i, in[i], status[i], "batch filter failed", t);
                } else if (keep[i]) {
                    o[m++] = in[i];
                } else {
                    ++t.filtered;
                    p.destroy_item(in[i]);
                }
            }
        } FLUXUS_ON_FORCED_UNWIND(unwind_settle(p, m, t, rest_after(i, n, in, nullptr, nullptr)))
        return m;
    }
    case StageKind::batch:  // a formed group: the same contract as a batch flat map
    case StageKind::flat_map_batch: {
        auto fn = reinterpret_cast<fluxus_flat_map_batch_fn>(st.fn);
        out.clear();
        fluxus_emitter em{kEmitterMagic, &out, false, p.cursor()};
        EmitterScope live(&em);
        int32_t rc;
        clock.start();
        try {
            rc = fn(u, in, uint32_t(n), &em);
        } FLUXUS_ON_FORCED_UNWIND(unwind_batch(ws, n, out.size(), t)) catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        clock.check(st);
        t.spawned += out.size();
        size_t i = 0;
        try {
            if (rc != 0) {
                BatchTexts texts(ws.call);  // the call's text goes with every item
                for (; i < n; ++i)
                    fail_batch_item(p, st, texts, i, in[i], rc, "batch flat-map callback failed",
                                    t);
            } else {
                ws.call->drop_unused();
                t.filtered += n;
                for (; i < n; ++i) {
                    if (!em.keep_input)
                        p.destroy_item(in[i]);
                    else if (CursorTracker *cur = p.cursor())
                        cur->item_ended(in[i], true);
                }
            }
        } FLUXUS_ON_FORCED_UNWIND(([&] {
            if (rc != 0)
                return unwind_settle(p, out.size(), t, rest_after(i, n, in, nullptr, nullptr));
            // Consumed, and counted filtered already: out of item i's destructor (or a cursor
            // commit), the items after it are destroyed by another thread (or kept, with
            // keep_input).
            t_unwind.ended = false;
            t_unwind.survivors = out.size();
            if (!em.keep_input) p.orphan_rest(in + i + 1, n - i - 1);
        }()))
        return out.size();
    }
    case StageKind::sink_batch: {
        auto fn = reinterpret_cast<fluxus_sink_batch_fn>(st.fn);
        int32_t *status = ws.zeroed_status(n);
        CursorTracker *cur = p.cursor();
        std::vector<uint64_t> pages;
        if (cur)
            for (size_t i = 0; i < n; ++i) pages.push_back(cur->page_of(in[i]));
        int32_t rc;
        clock.start();
        ws.call->begin_batch(uint32_t(n));
        try {
            rc = fn(u, in, status, uint32_t(n));
        } FLUXUS_ON_FORCED_UNWIND(unwind_batch(ws, n, 0, t)) catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        ws.call->end_batch();
        clock.check(st);
        if (rc != 0) {
            BatchTexts texts(ws.call);
            for (size_t i = 0; i < n; ++i)
                fail_batch_item(p, st, texts, i, in[i], rc, "batch sink callback failed", t);
            return 0;
        }
        if (!cur && all_ok(status, n)) {
            ws.call->drop_unused();
            t.out += n;
            return 0;
        }
        BatchTexts texts(ws.call);
        size_t delivered = 0, i = 0;
        try {
            for (; i < n; ++i) {
                if (status[i] == 0) {
                    ++delivered;
                    if (cur) cur->page_ended(pages[i], true);
                } else {
                    fail_batch_item(p, st, texts, i, in[i], status[i],
                                    "batch sink callback failed", t);
                }
            }
        } FLUXUS_ON_FORCED_UNWIND(([&] {
            // Out of the dead-letter callback, the destructor or a cursor commit: the items
            // the sink accepted are delivered, the failed ones not yet ended are cancelled.
            if (status[i] == 0) t_unwind.ended = true;  // counted in `delivered`
            std::vector<uint64_t> rest;
            for (size_t j = i + 1; j < n; ++j) {
                if (status[j] == 0)
                    ++delivered;
                else
                    rest.push_back(in[j]);
            }
            t.out += delivered;
            unwind_settle(p, 0, t, rest);
        }()))
        t.out += delivered;
        return 0;
    }
    case StageKind::throttle: {
        Throttler &th = *ws.throttle;
        uint64_t now = p.runtime()->now();
        return per_item(p, st, in, n, t, "throttle key callback threw", [&](uint64_t x, size_t &m) {
            Key128 k;
            if (int32_t rc = stage_key(st, x, &k)) {
                p.fail_item(st, x, rc, "throttle key callback failed", &t);
            } else if (th.admit(k, now)) {
                o[m++] = x;
            } else {
                ++t.filtered;
                p.destroy_item(x);
            }
        });
    }
    case StageKind::router:
        return apply_router(p, st, ws, in, n, out, t);
    case StageKind::loader:
        return apply_loader(p, st, ws, in, n, out, t);
    case StageKind::async_map:
    case StageKind::debounce:
    case StageKind::reduce:
    case StageKind::window:
    case StageKind::join:
    case StageKind::source:
        break;  // run by SegmentWorker::run_async / run_debounce, never as a batch
    }
    return 0;
}

}  // namespace

size_t apply_stage(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                   std::vector<uint64_t> &out, StageTally &t) {
    if (__builtin_expect(st.timeout_ns != 0, 0))
        return apply_impl<true>(p, st, ws, in, n, out, t);
    return apply_impl<false>(p, st, ws, in, n, out, t);
}

}  // namespace fluxus
