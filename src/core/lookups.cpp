// Lookups: a cache in front of a map, and the loader (dataloader). Both key each item (the
// stage's key function, or the item word). The cache answers repeated keys without calling the
// stage; the loader makes one load call per group for the group's distinct keys and hands each
// waiting item its key's result through the attach callback.
#include <unordered_map>

#include "core/segment.hpp"
#include "runtime/runtime.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {

// Releases the values that left a cache (they were never admitted as items).
void release_gone(Pipeline &p, std::vector<uint64_t> &gone) {
    for (uint64_t v : gone) p.free_unadmitted(v);
    gone.clear();
}

// A copy of a cached map output for a new item (the value itself without a copy callback).
int32_t copy_out(Stage &st, uint64_t v, uint64_t *out) {
    *out = v;  // preset: the copy itself without a copy callback (or one that writes nothing)
    if (!st.cache_copy) return 0;
    try {
        return st.cache_copy(st.cache_copy_user.user, v, 0, out);
    } FLUXUS_CATCH_ALL {
        return FLUXUS_EEXCEPTION;
    }
}

}  // namespace

size_t apply_cached_map(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in,
                        size_t n, std::vector<uint64_t> &out, StageTally &t) {
    auto fn = reinterpret_cast<fluxus_map_fn>(st.fn);
    TtlCache &cache = *ws.cache;
    uint64_t now = p.runtime()->now();
    uint64_t hits = 0, misses = 0;
    size_t m = 0, i = 0;
    bool mapped = false;  // item i's output is in out already
    try {
        for (; i < n; ++i) {
            uint64_t x = in[i], v = 0, y = 0;
            Key128 k;
            mapped = false;
            if (!key_or_fail(p, st, x, &k, "key callback failed", &t)) continue;
            if (cache.get(k, now, &v, ws.gone)) {
                ++hits;
                if (int32_t rc = copy_out(st, v, &y)) {
                    p.fail_item(st, x, rc, "cache copy callback failed", &t);
                    continue;
                }
                out[m++] = y;
                mapped = true;
                p.free_unadmitted(x);  // answered from the cache: the input is consumed here
                continue;
            }
            ++misses;
            int32_t rc;
            y = x;  // *out arrives preset to the input, as for every map
            try {
                rc = fn(st.user.user, x, &y);
            } FLUXUS_CATCH_ALL {
                rc = FLUXUS_EEXCEPTION;
            }
            if (rc != 0) {
                p.fail_item(st, x, rc, callback_failure_message(StageKind::map, false), &t);
                continue;
            }
            out[m++] = y;
            mapped = true;
            // The cache keeps its own copy; if one cannot be made the output is simply not
            // cached.
            if (copy_out(st, y, &v) == 0) cache.put(k, v, now, ws.gone);
        }
    } FLUXUS_ON_FORCED_UNWIND(([&] {
        // Out of a callback for item i (key, map, copy, dead letter, destructor): unless its
        // output was made or it had ended, it stays with the host (cancelled, not destroyed);
        // the rest is cancelled, the outputs so far go on to be cancelled downstream.
        if (!mapped && !t_unwind.ended) ++t.cancelled;
        t_unwind.ended = false;
        t_unwind.survivors = m;
        t.cancelled += n - i - 1;
        p.release_items(in + i + 1, n - i - 1, false);
        release_gone(p, ws.gone);
    }()))
    release_gone(p, ws.gone);
    st.c.cache_hits.fetch_add(hits, std::memory_order_relaxed);
    st.c.cache_misses.fetch_add(misses, std::memory_order_relaxed);
    return m;
}

size_t apply_loader(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                    std::vector<uint64_t> &out, StageTally &t) {
    struct Waiter {
        uint64_t item;
        uint32_t slot;  // index into `results`
        bool hit;
    };
    std::vector<Waiter> waiters;
    std::vector<Key128> keys;      // distinct keys missing from the cache, in first-seen order
    std::vector<uint64_t> reps;    // the first item waiting for each of them
    std::vector<uint64_t> results; // their results, then the cache hits' values
    std::unordered_map<Key128, uint32_t, Key128Hash> slot_of;
    uint64_t now = p.runtime()->now();
    uint64_t hits = 0;
    waiters.reserve(n);
    // Where a forced unwind out of a callback would leave the group (see unwind below).
    enum class Phase { kKeys, kLoad, kAttach } phase = Phase::kKeys;
    size_t at = 0;  // keys: the input; attach: the waiter
    std::vector<uint64_t> loaded;
    std::vector<int32_t> status;
    size_t m = 0;
    int32_t rc = 0;
    // Under a forced unwind: the items in the interrupted call stay with the host (cancelled,
    // not destroyed; a key or attach call holds its item, the load call the items it was
    // given), every other item of the group is cancelled, the outputs so far go on to be
    // cancelled downstream, and loaded results go to the cache or are released.
    auto unwind = [&] {
        std::vector<uint64_t> rest;
        size_t held = 0;
        if (phase == Phase::kKeys) {
            held = t_unwind.ended ? 0 : 1;
            for (const Waiter &w : waiters) rest.push_back(w.item);
            rest.insert(rest.end(), in + at + 1, in + n);
        } else if (phase == Phase::kLoad) {
            for (const Waiter &w : waiters) {
                if (!w.hit && reps[w.slot] == w.item)
                    ++held;
                else
                    rest.push_back(w.item);
            }
            ws.call->end_batch();
        } else {
            held = t_unwind.ended ? 0 : 1;
            for (size_t k = at + 1; k < waiters.size(); ++k) rest.push_back(waiters[k].item);
            for (size_t k = 0; k < keys.size() && k < loaded.size(); ++k) {
                if (rc != 0 || status[k] != 0) continue;
                if (ws.cache)
                    ws.cache->put(keys[k], loaded[k], now, ws.gone);
                else
                    ws.gone.push_back(loaded[k]);
            }
        }
        t_unwind.ended = false;
        t_unwind.survivors = m;
        t.cancelled += held + rest.size();
        p.release_items(rest.data(), rest.size(), false);
        release_gone(p, ws.gone);
    };
    try {
        for (size_t i = 0; i < n; ++i) {
            Key128 k;
            at = i;
            if (!key_or_fail(p, st, in[i], &k, "key callback failed", &t)) continue;
            auto it = slot_of.find(k);
            if (it != slot_of.end()) {  // coalesced with an earlier waiter of the group
                // Slots from n on are cache hits; below n, keys to load.
                waiters.push_back(Waiter{in[i], it->second, it->second >= n});
                continue;
            }
            uint64_t v = 0;
            if (ws.cache && ws.cache->get(k, now, &v, ws.gone)) {
                ++hits;  // once per distinct key of the group, as misses are
                uint32_t slot = uint32_t(n + results.size());
                slot_of.emplace(k, slot);
                waiters.push_back(Waiter{in[i], slot, true});
                results.push_back(v);
                continue;
            }
            uint32_t slot = uint32_t(keys.size());
            slot_of.emplace(k, slot);
            keys.push_back(k);
            reps.push_back(in[i]);
            waiters.push_back(Waiter{in[i], slot, false});
        }
        // One load call for every distinct key not in the cache.
        loaded.assign(keys.size(), 0);
        status.assign(keys.size(), 0);
        phase = Phase::kLoad;
        if (!keys.empty()) {
            // Texts per key: fluxus_call_set_item_error.
            ws.call->begin_batch(uint32_t(reps.size()));
            try {
                rc = reinterpret_cast<fluxus_load_fn>(st.fn)(st.user.user, reps.data(),
                                                             uint32_t(reps.size()), loaded.data(),
                                                             status.data());
            } FLUXUS_CATCH_ALL {
                rc = FLUXUS_EEXCEPTION;
            }
            ws.call->end_batch();
        }
        // The load call's texts, taken before any attach callback runs (those attach their own).
        BatchTexts texts(ws.call);
        auto result_of = [&](const Waiter &w, int32_t *st_out) -> uint64_t {
            if (w.hit) {
                *st_out = 0;
                return results[w.slot - n];
            }
            *st_out = rc != 0 ? rc : status[w.slot];
            return loaded[w.slot];
        };
        phase = Phase::kAttach;
        if (out.size() < waiters.size()) out.resize(waiters.size());
        for (at = 0; at < waiters.size(); ++at) {
            const Waiter &w = waiters[at];
            int32_t s;
            uint64_t r = result_of(w, &s), y = w.item;  // *out arrives preset to the input
            if (s != 0) {
                FailureTextScope text(texts.for_item(w.slot));
                p.fail_item(st, w.item, s,
                            rc != 0 ? "load callback failed" : "load failed for the key", &t);
                continue;
            }
            try {
                s = st.loader_attach(st.user.user, w.item, r, &y);
            } FLUXUS_CATCH_ALL {
                s = FLUXUS_EEXCEPTION;
            }
            if (s != 0) {
                p.fail_item(st, w.item, s, "attach callback failed", &t);
                continue;
            }
            out[m++] = y;
        }
    } FLUXUS_ON_FORCED_UNWIND(unwind())
    // The loaded results belong to fluxus now: kept by the cache, or released.
    for (size_t i = 0; i < keys.size(); ++i) {
        if (rc != 0 || status[i] != 0) continue;
        if (ws.cache)
            ws.cache->put(keys[i], loaded[i], now, ws.gone);
        else
            ws.gone.push_back(loaded[i]);
    }
    release_gone(p, ws.gone);
    st.c.cache_hits.fetch_add(hits, std::memory_order_relaxed);
    st.c.cache_misses.fetch_add(keys.size(), std::memory_order_relaxed);
    return m;
}

}  // namespace fluxus
