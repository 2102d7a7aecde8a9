// Router and broadcast: each item goes to the routes its selector picks (a broadcast: every
// route). The first chosen route gets the item itself, every further route (in the order the
// selector listed them) a copy made by the stage's copy callback. All routes or none: if a copy cannot be made, the copies made so far
// are destroyed before anyone counted them, and the item fails at the router.
#include "core/segment.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {

// The routes `x` goes to, in ws.chosen[0 .. *count), or a failure status with its message. A
// selector writes route indices (any number: a list, not a bit mask, so that routers have no
// width limit); one route, the common case, is one store and no loop here.
int32_t choose_routes(const Stage &st, WorkerStageState &ws, uint64_t x, uint32_t *count,
                      const char **why) {
    uint32_t routes = uint32_t(st.outlets.size());
    if (ws.chosen.size() != routes) {
        ws.chosen.assign(routes, 0);
        ws.taken.assign(routes, 0);
    }
    if (!st.fn) {  // broadcast
        for (uint32_t r = 0; r < routes; ++r) ws.chosen[r] = r;
        *count = routes;
        return 0;
    }
    *count = 0;
    int32_t rc = reinterpret_cast<fluxus_route_fn>(st.fn)(st.user.user, x, ws.chosen.data(), routes,
                                                         count);
    if (rc != 0) {
        *why = "router callback failed";
        return rc;
    }
    if (*count == 0) {
        if (st.default_route == UINT32_MAX) {
            *why = "no route matched and the router has no default route";
            return FLUXUS_ENOROUTE;
        }
        ws.chosen[0] = st.default_route;
        *count = 1;
        return 0;
    }
    if (__builtin_expect(*count == 1, 1)) {
        if (ws.chosen[0] >= routes) {
            *why = "the selector chose a route the router does not have";
            return FLUXUS_ERANGE;
        }
        return 0;
    }
    if (*count > routes) {
        *why = "the selector chose more routes than the router has";
        return FLUXUS_ERANGE;
    }
    rc = 0;
    uint32_t k = 0;
    for (; k < *count; ++k) {
        uint32_t r = ws.chosen[k];
        if (r >= routes) {
            *why = "the selector chose a route the router does not have";
            rc = FLUXUS_ERANGE;
            break;
        }
        if (ws.taken[r]) {
            *why = "the selector chose the same route twice";
            rc = FLUXUS_EINVAL;
            break;
        }
        ws.taken[r] = 1;
    }
    for (uint32_t j = 0; j < k; ++j) ws.taken[ws.chosen[j]] = 0;
    if (rc == 0 && !st.copy) {
        *why = "the selector chose several routes but the router has no copy callback";
        rc = FLUXUS_EINVAL;
    }
    return rc;
}

}  // namespace

size_t apply_router(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                    std::vector<uint64_t> &out, StageTally &t) {
    out.clear();
    ws.route.clear();
    size_t copies = 0;
    size_t i = 0, base = 0;
    // Under a forced unwind out of the selector or a copy callback (or the dead-letter callback
    // or item destructor they led to): item i stays with the host (cancelled, not destroyed)
    // unless it had ended, the copies made for it are released, the rest is cancelled, and the
    // outputs so far go on to be cancelled downstream (see SegmentWorker::end_unwound()).
    auto unwind = [&] {
        for (size_t k = base + 1; k < out.size(); ++k) p.free_unadmitted(out[k]);
        out.resize(base);
        ws.route.resize(base);
        if (!t_unwind.ended) ++t.cancelled;
        t_unwind.ended = false;
        t.spawned += copies;
        t_unwind.survivors = out.size();
        t.cancelled += n - i - 1;
        p.release_items(in + i + 1, n - i - 1, false);
    };
    try {
        for (; i < n; ++i) {
            uint64_t x = in[i];
            uint32_t count = 0;
            const char *why = "router callback threw";
            int32_t rc;
            base = out.size();
            try {
                rc = choose_routes(st, ws, x, &count, &why);
            } FLUXUS_CATCH_ALL {
                rc = FLUXUS_EEXCEPTION;
            }
            if (rc != 0) {
                p.fail_item(st, x, rc, why, &t);
                continue;
            }
            out.push_back(x);
            ws.route.push_back(ws.chosen[0]);
            for (uint32_t k = 1; k < count && rc == 0; ++k) {
                uint32_t r = ws.chosen[k];
                uint64_t c = x;  // *copy arrives preset to the item
                try {
                    rc = st.copy(st.copy_user.user, x, r, &c);
                    why = "copy callback failed";
                } FLUXUS_CATCH_ALL {
                    rc = FLUXUS_EEXCEPTION;
                    why = "copy callback threw";
                }
                if (rc == 0) {
                    out.push_back(c);
                    ws.route.push_back(r);
                }
            }
            if (rc != 0) {
                for (size_t k = base + 1; k < out.size(); ++k) p.free_unadmitted(out[k]);
                out.resize(base);
                ws.route.resize(base);
                p.fail_item(st, x, rc, why, &t);
                continue;
            }
            if (out.size() - base > 1) {
                copies += out.size() - base - 1;
                if (CursorTracker *cur = p.cursor())
                    cur->items_spawned(&out[base + 1], out.size() - base - 1);
            }
            base = out.size();  // item i has gone through: an unwind now is past it
        }
    } FLUXUS_ON_FORCED_UNWIND(unwind())
    t.spawned += copies;
    return out.size();
}

}  // namespace fluxus
