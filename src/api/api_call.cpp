// C API: the current call — what a running callback tells fluxus about the call it is in (the
// text of the failure it is about to report). No handle: the calling thread's worker is the
// object, found through current_call.hpp's thread-local current call.
#include "api/api_util.hpp"
#include "core/current_call.hpp"

using namespace fluxus;

extern "C" {

FLUXUS_API int32_t fluxus_call_set_error(const char *message) {
    FLUXUS_API_GUARD({
        CallErrors *e = current_call_errors();
        if (!e)
            return set_error(FLUXUS_ESTATE,
                             "fluxus_call_set_error: not inside a stage or source callback on "
                             "this thread");
        e->set_call_text(message);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_call_set_item_error(uint32_t index, const char *message) {
    FLUXUS_API_GUARD({
        CallErrors *e = current_call_errors();
        if (!e)
            return set_error(FLUXUS_ESTATE,
                             "fluxus_call_set_item_error: not inside a stage callback on this "
                             "thread");
        return e->set_item_text(index, message);
    });
}

}  // extern "C"
