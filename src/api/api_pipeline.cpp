// C API: pipeline handles, sources, running, stats and failure details.
#include <cstring>

#include "api/api_util.hpp"

using namespace fluxus;

namespace {
template <class F>
void (*erase_fn(F fn))() {
    return reinterpret_cast<void (*)()>(fn);
}
}  // namespace

extern "C" {

FLUXUS_API int32_t fluxus_pipeline_new(fluxus_pipeline **out, fluxus_runtime *rth,
                                       const char *name) {
    FLUXUS_API_GUARD({
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_new: out is NULL");
        *out = nullptr;
        FLUXUS_GET_RUNTIME(rt, rth, "fluxus_pipeline_new");
        if (rt->dead()) return set_error(FLUXUS_ESTATE, "fluxus_pipeline_new: runtime is shut down");
        Pipeline *p = new (std::nothrow) Pipeline(rt, name);
        if (!p) return set_error(FLUXUS_ENOMEM, "fluxus_pipeline_new: out of memory");
        HandleSlot *slot = nullptr;
        uintptr_t h = handle_register(HandleKind::pipeline, p, &slot);
        if (!h) {
            delete p;
            return set_error(FLUXUS_ENOMEM, "fluxus_pipeline_new: no handle slot left");
        }
        p->set_handle_slot(slot);
        *out = reinterpret_cast<fluxus_pipeline *>(h);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_free(fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        if (!h) return FLUXUS_OK;
        if (!pipeline_live(h))
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_free: not a live pipeline handle (already freed?)");
        if (free_would_deadlock())
            return set_error(FLUXUS_EINCALLBACK,
                             "fluxus_pipeline_free: not allowed from inside a fluxus callback or "
                             "call; cancel it there and free it from a host thread");
        // From here on every lookup of the handle fails. Calls already inside the pipeline
        // (pinned) are woken by the cancel (wait, drain and a blocked push return), the free
        // waits until the last of them has returned, and only then destroys the pipeline.
        Pipeline *p = static_cast<Pipeline *>(
            handle_unregister(HandleKind::pipeline, reinterpret_cast<uintptr_t>(h)));
        if (!p) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_free: already freed");
        p->cancel();
        handle_retire(reinterpret_cast<uintptr_t>(h));
        delete p;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_item_free(fluxus_pipeline *h, fluxus_item_free_fn fn,
                                                 void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_item_free");
        return p->set_item_free(fn, user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_dead_letter(fluxus_pipeline *h, fluxus_dead_letter_fn fn,
                                                   void *user, fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_dead_letter");
        if (!fn)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_set_dead_letter: the callback is NULL (a stage with "
                             "FLUXUS_ERROR_DEAD_LETTER needs one; FLUXUS_ERROR_SKIP drops failed "
                             "items without it)");
        return p->set_dead_letter(fn, user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_fusion(fluxus_pipeline *h, int32_t enabled) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_fusion");
        return p->set_fusion(enabled);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_batch_size(fluxus_pipeline *h, uint32_t n) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_batch_size");
        return p->set_batch_size(n);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_pull_source(fluxus_pipeline *h, const char *name,
                                                   fluxus_pull_fn fn, void *user,
                                                   fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_pull_source");
        return p->set_source(SourceKind::pull, name, erase_fn(fn), user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_pull_source_batch(fluxus_pipeline *h, const char *name,
                                                         fluxus_pull_batch_fn fn, void *user,
                                                         fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_pull_source_batch");
        return p->set_source(SourceKind::pull_batch, name, erase_fn(fn), user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_poll_interval_us(fluxus_pipeline *h, uint32_t us) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_poll_interval_us");
        return p->set_poll_interval_us(us);
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_push_source(fluxus_pipeline *h, const char *name) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_push_source");
        return p->set_source(SourceKind::push, name, nullptr, nullptr, nullptr);
    });
}

FLUXUS_API int32_t fluxus_pipeline_push(fluxus_pipeline *h, uint64_t item, uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_push");
        uint32_t pushed;
        return p->push(&item, 1, timeout_ms, false, &pushed);
    });
}

FLUXUS_API int32_t fluxus_pipeline_try_push(fluxus_pipeline *h, uint64_t item) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_try_push");
        uint32_t pushed;
        return p->push(&item, 1, 0, true, &pushed);
    });
}

FLUXUS_API int32_t fluxus_pipeline_push_many(uint32_t *pushed, fluxus_pipeline *h,
                                             const uint64_t *items, uint32_t count,
                                             uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        if (pushed) *pushed = 0;
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_push_many");
        if (!items && count)
            return set_error(FLUXUS_EINVAL, "fluxus_pipeline_push_many: items is NULL");
        uint32_t n = 0;
        int32_t rc = p->push(items, count, timeout_ms, false, &n);
        if (pushed) *pushed = n;
        return rc;
    });
}

FLUXUS_API int32_t fluxus_pipeline_close_input(fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_close_input");
        return p->close_input();
    });
}

FLUXUS_API int32_t fluxus_pipeline_pause(fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_pause");
        return p->set_paused(true);
    });
}

FLUXUS_API int32_t fluxus_pipeline_resume(fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_resume");
        return p->set_paused(false);
    });
}

FLUXUS_API int32_t fluxus_pipeline_start(fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_start");
        return p->start();
    });
}

FLUXUS_API int32_t fluxus_pipeline_wait(fluxus_pipeline *h, uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_wait");
        return p->wait(timeout_ms);
    });
}

FLUXUS_API int32_t fluxus_pipeline_drain(fluxus_pipeline *h, uint32_t timeout_ms) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_drain");
        return p->drain(timeout_ms);
    });
}

FLUXUS_API int32_t fluxus_pipeline_cancel(fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_cancel");
        p->cancel();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_get_cancelled(int32_t *out, fluxus_pipeline *h) {
    // No FLUXUS_API_GUARD: long callbacks poll this, and it must not clear the last error.
    HandleRef pin(HandleKind::pipeline, reinterpret_cast<uintptr_t>(h));
    Pipeline *p = static_cast<Pipeline *>(pin.get());
    if (!out) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_get_cancelled: out is NULL");
    if (!p) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_get_cancelled: not a live pipeline");
    *out = p->cancelling() ? 1 : 0;
    return FLUXUS_OK;
}

FLUXUS_API int32_t fluxus_pipeline_get_state(int32_t *out, fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_get_state");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_get_state: out is NULL");
        *out = p->state();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_get_stats(fluxus_pipeline_stats *out, fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_get_stats");
        if (!out || out->struct_size < 8)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_get_stats: out is NULL or struct_size < 8");
        fluxus_pipeline_stats s;
        std::memset(&s, 0, sizeof s);
        p->fill_stats(s);
        uint32_t size = std::min<uint32_t>(out->struct_size, sizeof s);
        s.struct_size = out->struct_size;
        std::memcpy(out, &s, size);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_get_stats(fluxus_stage_stats *out, fluxus_pipeline *h,
                                          uint32_t stage) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_get_stats");
        if (!out || out->struct_size < 8)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_stage_get_stats: out is NULL or struct_size < 8");
        Stage *st = p->stage(stage);
        if (!st)
            return set_errorf(FLUXUS_ENOTFOUND, "fluxus_stage_get_stats: no stage %u", stage);
        fluxus_stage_stats s;
        std::memset(&s, 0, sizeof s);
        p->fill_stage_stats(*st, s);
        uint32_t size = std::min<uint32_t>(out->struct_size, sizeof s);
        s.struct_size = out->struct_size;
        std::memcpy(out, &s, size);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_get_stage_count(uint32_t *out, fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_get_stage_count");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_get_stage_count: out is NULL");
        *out = p->stage_count();
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_stage_get_name(const char **out, fluxus_pipeline *h, uint32_t stage) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_stage_get_name");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_stage_get_name: out is NULL");
        Stage *st = p->stage(stage);
        if (!st) return set_errorf(FLUXUS_ENOTFOUND, "fluxus_stage_get_name: no stage %u", stage);
        *out = st->name.c_str();
        return FLUXUS_OK;
    });
}

// The failure accessors: a failure is borrowed, not a registered handle, so they check only
// for NULL. No FLUXUS_API_GUARD: a dead-letter callback reads them, and reading must not clear
// the last error.
#define FLUXUS_FAILURE_READ(name, value)                                             \
    if (!out || !f) return set_error(FLUXUS_EINVAL, name ": out or failure is NULL"); \
    *out = (value);                                                                   \
    return FLUXUS_OK

FLUXUS_API int32_t fluxus_failure_get_stage_name(const char **out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_stage_name", f->stage_name ? f->stage_name : "");
}
FLUXUS_API int32_t fluxus_failure_get_stage_index(uint32_t *out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_stage_index", f->stage_index);
}
FLUXUS_API int32_t fluxus_failure_get_status(int32_t *out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_status", f->status);
}
FLUXUS_API int32_t fluxus_failure_get_message(const char **out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_message",
                        f->text && *f->text ? f->text : f->message ? f->message : "");
}
FLUXUS_API int32_t fluxus_failure_get_attempts(uint32_t *out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_attempts", f->attempts);
}
FLUXUS_API int32_t fluxus_failure_get_description(const char **out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_description", f->message ? f->message : "");
}
FLUXUS_API int32_t fluxus_failure_get_retries_exhausted(int32_t *out, const fluxus_failure *f) {
    FLUXUS_FAILURE_READ("fluxus_failure_get_retries_exhausted", f->retries_exhausted ? 1 : 0);
}
#undef FLUXUS_FAILURE_READ

FLUXUS_API int32_t fluxus_pipeline_get_failure(const fluxus_failure **out, fluxus_pipeline *h) {
    if (out) *out = nullptr;
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_get_failure");
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_get_failure: out is NULL");
        const fluxus_failure *f = p->failure();
        if (!f)
            return set_errorf(FLUXUS_ENOTFOUND,
                              "fluxus_pipeline_get_failure: no failure stopped pipeline '%s'",
                              p->name().c_str());
        *out = f;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_set_route_observer(fluxus_pipeline *h, fluxus_failure_fn fn,
                                                      void *user,
                                                      fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_route_observer");
        return p->set_route_observer(fn, user, user_free);
    });
}

}  // extern "C"

extern "C" {

FLUXUS_API int32_t fluxus_pipeline_set_cursor_source(fluxus_pipeline *h, const char *name,
                                                     uint64_t start_cursor,
                                                     fluxus_cursor_read_fn read,
                                                     fluxus_cursor_page_fn page_of,
                                                     fluxus_cursor_commit_fn commit, void *user,
                                                     fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_set_cursor_source");
        return p->set_cursor_source(name, start_cursor, read, page_of, commit, user, user_free);
    });
}

FLUXUS_API int32_t fluxus_pipeline_get_committed_cursor(uint64_t *cursor, fluxus_pipeline *h) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_get_committed_cursor");
        if (!cursor)
            return set_error(FLUXUS_EINVAL, "fluxus_pipeline_get_committed_cursor: out is NULL");
        CursorTracker *cur = p->cursor();
        if (!cur)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_get_committed_cursor: not a cursor source");
        if (!cur->has_committed())
            return set_error(FLUXUS_ENOTFOUND,
                             "fluxus_pipeline_get_committed_cursor: nothing committed yet");
        *cursor = cur->committed();
        return FLUXUS_OK;
    });
}

}  // extern "C"
