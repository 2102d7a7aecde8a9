// Router and broadcast: each item goes to the routes its selector picks (a broadcast: every
// route). The first chosen route gets the item itself, every further route a copy made by the
// stage's copy callback. All routes or none: if a copy cannot be made, the copies made so far
// are destroyed before anyone counted them, and the item fails at the router.
#include "core/segment.hpp"
#include "util/status.hpp"

namespace fluxus {

namespace {

// The mask of routes for `x`, or a failure status with its message.
int32_t choose_routes(const Stage &st, uint64_t x, uint64_t *mask, const char **why) {
    uint32_t routes = uint32_t(st.outlets.size());
    uint64_t all = routes >= 64 ? ~uint64_t(0) : (uint64_t(1) << routes) - 1;
    if (!st.fn) {  // broadcast
        *mask = all;
        return 0;
    }
    *mask = 0;
    int32_t rc = reinterpret_cast<fluxus_route_fn>(st.fn)(st.user.user, x, mask);
    if (rc != 0) {
        *why = "router callback failed";
        return rc;
    }
    if (*mask == 0) {
        if (st.default_route == UINT32_MAX) {
            *why = "no route matched and the router has no default route";
            return FLUXUS_ENOROUTE;
        }
        *mask = uint64_t(1) << st.default_route;
    }
    if (*mask & ~all) {
        *why = "the selector chose a route the router does not have";
        return FLUXUS_ERANGE;
    }
    if ((*mask & (*mask - 1)) && !st.copy) {
        *why = "the selector chose several routes but the router has no copy callback";
        return FLUXUS_EINVAL;
    }
    return 0;
}

}  // namespace

size_t apply_router(Pipeline &p, Stage &st, WorkerStageState &ws, const uint64_t *in, size_t n,
                    std::vector<uint64_t> &out, StageTally &t) {
    out.clear();
    ws.route.clear();
    size_t copies = 0;
    for (size_t i = 0; i < n; ++i) {
        uint64_t x = in[i], mask = 0;
        const char *why = "router callback threw";
        int32_t rc;
        try {
            rc = choose_routes(st, x, &mask, &why);
        } catch (...) {
            rc = FLUXUS_EEXCEPTION;
        }
        if (rc != 0) {
            p.fail_item(st, x, rc, why, &t);
            continue;
        }
        size_t base = out.size();
        out.push_back(x);
        ws.route.push_back(uint32_t(__builtin_ctzll(mask)));
        for (uint64_t m = mask & (mask - 1); m != 0 && rc == 0; m &= m - 1) {
            uint32_t r = uint32_t(__builtin_ctzll(m));
            uint64_t c = x;  // *copy arrives preset to the item
            try {
                rc = st.copy(st.copy_user.user, x, r, &c);
                why = "copy callback failed";
            } catch (...) {
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
            if (CursorTracker *cur = p.cursor()) cur->items_spawned(&out[base + 1], out.size() - base - 1);
        }
    }
    t.spawned += copies;
    return out.size();
}

}  // namespace fluxus
