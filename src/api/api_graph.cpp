// C API: graphs (routers, broadcast, routes, branches and merges).
#include "api/api_util.hpp"

using namespace fluxus;

extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_router(uint32_t *out, fluxus_pipeline *h, const char *name,
                                              fluxus_route_fn select, void *user,
                                              fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_router");
        if (!select)
            return set_error(FLUXUS_EINVAL, "fluxus_pipeline_add_router: the selector is NULL");
        return p->add_stage(out, StageKind::router, name, reinterpret_cast<void (*)()>(select),
                            user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_add_broadcast(uint32_t *out, fluxus_pipeline *h,
                                                 const char *name) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_broadcast");
        return p->add_stage(out, StageKind::router, name ? name : "broadcast", nullptr, nullptr,
                            nullptr);
    });
}

FLUXUS_API int32_t fluxus_stage_add_route(uint32_t *out_route, fluxus_pipeline *h, uint32_t stage,
                                          const char *name) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_add_route");
        return p->add_route(stage, name, out_route);
    });
}

FLUXUS_API int32_t fluxus_stage_get_route_index(uint32_t *out_route, fluxus_pipeline *h, uint32_t stage,
                                            const char *name) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_get_route_index");
        if (!name || !out_route)
            return set_error(FLUXUS_EINVAL, "fluxus_stage_get_route_index: name or out is NULL");
        return p->route_index(stage, name, out_route);
    });
}

FLUXUS_API int32_t fluxus_stage_set_default_route(fluxus_pipeline *h, uint32_t stage,
                                                  uint32_t route) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_default_route");
        return p->set_default_route(stage, route);
    });
}

FLUXUS_API int32_t fluxus_stage_set_copy(fluxus_pipeline *h, uint32_t stage, fluxus_copy_fn fn,
                                         void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_copy");
        if (!fn) return set_error(FLUXUS_EINVAL, "fluxus_stage_set_copy: the callback is NULL");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_copy", &st)) return rc;
        if (!st->is_router())
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_copy: stage '%s' is not a router or broadcast",
                              st->name.c_str());
        st->copy_user.release();
        st->copy = fn;
        st->copy_user = (UserRef{user, user_free});
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_branch(fluxus_pipeline *h, uint32_t stage, uint32_t outlet) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_branch");
        return p->branch(stage, outlet);
    });
}

FLUXUS_API int32_t fluxus_pipeline_connect(fluxus_pipeline *h, uint32_t from, uint32_t outlet,
                                           uint32_t to) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_connect");
        return p->connect(from, outlet, to);
    });
}

}  // extern "C"

// Joins.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_join(uint32_t *out, fluxus_pipeline *h, const char *name,
                                            uint32_t inputs, fluxus_join_input_fn input_of,
                                            fluxus_window_fn fn, void *user,
                                            fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_join");
        if (!input_of)
            return set_error(FLUXUS_EINVAL, "fluxus_pipeline_add_join: the input callback is NULL");
        if (inputs < 1 || inputs > 64)
            return set_errorf(FLUXUS_ERANGE, "fluxus_pipeline_add_join: %u inputs; 1..64",
                              inputs);
        uint32_t index = 0;
        if (int32_t rc = p->add_stage(&index, StageKind::join, name,
                                      reinterpret_cast<void (*)()>(fn), user, user_free))
            return rc;
        p->stage(index)->join_inputs = inputs;
        p->stage(index)->join_input = input_of;
        if (out) *out = index;
        return FLUXUS_OK;
    });
}

}  // extern "C"

namespace {

template <class F>
int32_t with_join(fluxus_pipeline *h, uint32_t index, const char *fname, F set) {
    return with_stage(h, index, fname, [&](Stage &st) {
        if (st.kind != StageKind::join)
            return set_errorf(FLUXUS_EINVAL, "%s: stage '%s' is not a join", fname,
                              st.name.c_str());
        return set(st);
    });
}

}  // namespace

extern "C" {

FLUXUS_API int32_t fluxus_stage_set_join_timeout_us(fluxus_pipeline *p, uint32_t stage,
                                                    uint64_t timeout_us) {
    return with_join(p, stage, "fluxus_stage_set_join_timeout_us", [&](Stage &st) {
        if (timeout_us > 86400ull * 1000000ull)
            return set_error(FLUXUS_ERANGE,
                             "fluxus_stage_set_join_timeout_us: more than a day");
        st.join_timeout_ns = timeout_us * 1000u;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_join_max_keys(fluxus_pipeline *p, uint32_t stage,
                                                  uint64_t max_keys) {
    return with_join(p, stage, "fluxus_stage_set_join_max_keys", [&](Stage &st) {
        if (max_keys == 0)
            return set_error(FLUXUS_ERANGE, "fluxus_stage_set_join_max_keys: 0 keys");
        st.join_max_keys = max_keys;
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Loader and cache.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_loader(uint32_t *out, fluxus_pipeline *h,
                                              const char *name, uint32_t max_items,
                                              uint64_t window_us, fluxus_load_fn load,
                                              fluxus_attach_fn attach, void *user,
                                              fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_loader");
        if (!load || !attach)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_add_loader: the load or attach callback is NULL");
        if (max_items < 1 || max_items > 65536)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_pipeline_add_loader: max_items %u is not in 1..65536",
                              max_items);
        if (window_us > 86400ull * 1000000ull)
            return set_error(FLUXUS_ERANGE, "fluxus_pipeline_add_loader: window over a day");
        uint32_t index = 0;
        if (int32_t rc = p->add_stage(&index, StageKind::loader, name,
                                      reinterpret_cast<void (*)()>(load), user, user_free))
            return rc;
        Stage &st = *p->stage(index);
        st.loader_attach = attach;
        st.batch_max = max_items;
        st.batch_linger_ns = window_us * 1000u;
        if (out) *out = index;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_cache(fluxus_pipeline *h, uint32_t stage,
                                          uint64_t max_entries, uint64_t ttl_us,
                                          fluxus_copy_fn copy, void *user,
                                          fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_cache");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_cache", &st)) return rc;
        if (ttl_us > 86400ull * 1000000ull)
            return set_error(FLUXUS_ERANGE, "fluxus_stage_set_cache: ttl over a day");
        st->cache_copy_user.release();
        st->cache_entries = max_entries;
        st->cache_ttl_ns = ttl_us * 1000u;
        st->cache_copy = copy;
        st->cache_copy_user = (UserRef{user, user_free});
        return FLUXUS_OK;
    });
}

}  // extern "C"

// Extra sources.
extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_source(uint32_t *out, fluxus_pipeline *h, const char *name,
                                              fluxus_pull_fn fn, void *user,
                                              fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_source");
        return p->add_source_stage(out, name, fn, user, user_free);
    });
}

}  // extern "C"
