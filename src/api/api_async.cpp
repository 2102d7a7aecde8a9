// C API: async map stages, their completions, in-flight limits and stage timeouts.
#include "api/api_util.hpp"

using namespace fluxus;

extern "C" {

FLUXUS_API int32_t fluxus_pipeline_add_async_map(uint32_t *out, fluxus_pipeline *h,
                                                 const char *name, fluxus_async_map_fn fn,
                                                 void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_add_async_map");
        return p->add_stage(out, StageKind::async_map, name, reinterpret_cast<void (*)()>(fn),
                            user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_complete_async(fluxus_pipeline *h, uint64_t completion, int32_t status,
                                         uint64_t item) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_complete_async");
        Stage *st = p->stage(AsyncSlots::token_stage(completion));
        if (!st || !st->is_async())
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_complete_async: not a completion handle of this pipeline");
        AsyncSlots *slots = st->async.get();
        if (!slots)
            return set_errorf(FLUXUS_ESTATE,
                              "fluxus_pipeline_complete_async: stage '%s' is not running (pipeline not "
                              "started)",
                              st->name.c_str());
        const char *why = "";
        int32_t rc = slots->complete(completion, status, item, &why);
        if (rc != FLUXUS_OK)
            return set_errorf(rc, "fluxus_pipeline_complete_async: stage '%s': %s", st->name.c_str(), why);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_fail_async(fluxus_pipeline *h, uint64_t completion, int32_t status,
                                     uint64_t item, const char *message) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_fail_async");
        if (status == 0)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_fail_async: status is 0 (a success: use "
                             "fluxus_pipeline_complete_async)");
        Stage *st = p->stage(AsyncSlots::token_stage(completion));
        if (!st || !st->is_async())
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_fail_async: not a completion handle of this pipeline");
        AsyncSlots *slots = st->async.get();
        if (!slots)
            return set_errorf(FLUXUS_ESTATE,
                              "fluxus_pipeline_fail_async: stage '%s' is not running (pipeline not "
                              "started)",
                              st->name.c_str());
        // Copied before the table's lock is taken; kept only if the completion is accepted.
        std::unique_ptr<std::string> text;
        if (message && *message) text.reset(new std::string(bounded_text(message)));
        const char *why = "";
        int32_t rc = slots->complete(completion, status, item, &why, std::move(text));
        if (rc != FLUXUS_OK)
            return set_errorf(rc, "fluxus_pipeline_fail_async: stage '%s': %s", st->name.c_str(), why);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_async_cancel(fluxus_pipeline *h, uint32_t stage,
                                                 fluxus_async_cancel_fn fn, void *user,
                                                 fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_async_cancel");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_async_cancel", &st))
            return rc;
        if (!st->is_async())
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_async_cancel: stage '%s' is not an async stage",
                              st->name.c_str());
        st->async_cancel_user.release();
        st->async_cancel = fn;
        st->async_cancel_user = (UserRef{user, user_free});
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_in_flight(fluxus_pipeline *h, uint32_t stage, uint32_t max) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_in_flight");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_in_flight", &st)) return rc;
        if (!st->is_async())
            return set_errorf(FLUXUS_EINVAL,
                              "fluxus_stage_set_in_flight: stage '%s' is not an async stage",
                              st->name.c_str());
        if (max < 1 || max > (1u << 20))
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_in_flight: stage '%s': %u is not in 1..1048576",
                              st->name.c_str(), max);
        st->in_flight = max;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_set_timeout_us(fluxus_pipeline *h, uint32_t stage,
                                               uint64_t timeout_us) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_set_timeout_us");
        Stage *st = nullptr;
        if (int32_t rc = p->stage_for_option(stage, "fluxus_stage_set_timeout_us", &st)) return rc;
        if (timeout_us > 86400ull * 1000000ull)
            return set_errorf(FLUXUS_ERANGE,
                              "fluxus_stage_set_timeout_us: stage '%s': %llu us is above one day",
                              st->name.c_str(), (unsigned long long)timeout_us);
        st->timeout_ns = timeout_us * 1000u;
        return FLUXUS_OK;
    });
}

}  // extern "C"
