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

FLUXUS_API int32_t fluxus_stage_add_route(fluxus_pipeline *h, uint32_t stage, const char *name,
                                          uint32_t *out_route) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_add_route");
        return p->add_route(stage, name, out_route);
    });
}

FLUXUS_API int32_t fluxus_stage_route_index(fluxus_pipeline *h, uint32_t stage, const char *name,
                                            uint32_t *out_route) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_route_index");
        if (!name || !out_route)
            return set_error(FLUXUS_EINVAL, "fluxus_stage_route_index: name or out is NULL");
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
