// The pipeline's side of failure causes: what an item failure looks like to the host (stage,
// status, text, attempts), the route observer that hears why items leave for an error route or
// branch, and the record of the first failure that stopped the pipeline, kept for
// fluxus_pipeline_get_failure() and the last-error message of wait() and drain().
#include "core/current_call.hpp"
#include "core/pipeline.hpp"
#include "core/segment.hpp"
#include "runtime/runtime.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

fluxus_failure item_failure(const Stage &stage, int32_t status, const char *message,
                            const std::string &text) {
    // The retry scope is the worker's for the stage heading it: the attempt of the item whose
    // callback ran, and whether the policy allows another.
    const RetryScope *rs =
        t_retry_scope && t_retry_scope->stage == &stage ? t_retry_scope : nullptr;
    uint32_t attempts = rs ? rs->attempt : 1;
    bool exhausted = rs && !rs->refusal && stage.retry.enabled() &&
                     attempts >= stage.retry.max_attempts;
    return fluxus_failure{stage.name.c_str(),
                          stage.index,
                          status,
                          message,
                          attempts,
                          text.empty() ? nullptr : text.c_str(),
                          exhausted ? 1 : 0};
}

int32_t Pipeline::set_route_observer(fluxus_failure_fn fn, void *user, fluxus_user_free_fn uf) {
    if (int32_t rc = check_building("set_route_observer")) return rc;
    route_observer_user_.release();
    route_observer_ = fn;
    route_observer_user_ = UserRef{user, uf};
    return FLUXUS_OK;
}

void Pipeline::report_routed(const Stage &stage, uint64_t item, const fluxus_failure &f) {
    if (route_observer_) {
        CallSuspendScope suspended;  // its text would land on another failure
        try {
            route_observer_(route_observer_user_.user, item, &f);
        } FLUXUS_CATCH_ALL {
            log(FLUXUS_LOG_ERROR, &stage, "the route observer threw; exception ignored");
        }
    }
    if (rt_->log_enabled(FLUXUS_LOG_DEBUG))
        log(FLUXUS_LOG_DEBUG, &stage, ("routed: " + describe_failure(f)).c_str());
}

void Pipeline::record_failure(int32_t status, const Stage *stage, const char *message) {
    if (const fluxus_failure *f = failure_being_reported()) {
        failure_.assign(*f);  // an item failure under fail-fast, with its text and attempts
        return;
    }
    // A source or a worker init hook: its text, if it attached one, is still the current call's.
    std::string text = take_failure_text();
    fluxus_failure f{stage ? stage->name.c_str() : source_.name.c_str(),
                     stage ? stage->index : UINT32_MAX,
                     status,
                     message,
                     1,
                     text.empty() ? nullptr : text.c_str(),
                     0};
    failure_.assign(f);
}

const fluxus_failure *Pipeline::failure() const {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_.view();
}

std::string Pipeline::ended_message() const {
    std::string s = "pipeline '" + name_ + "' ended with " + status_name(result_);
    if (!failure_.empty() && (result_ == FLUXUS_EFAILED || result_ == FLUXUS_ESOURCE))
        s += ": " + failure_.summary();
    return s;
}

}  // namespace fluxus
