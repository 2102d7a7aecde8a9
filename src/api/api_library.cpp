// C API: version and error reporting.
#include "api/api_util.hpp"
#include "core/current_call.hpp"

extern "C" {

FLUXUS_API const char *fluxus_version(void) { return FLUXUS_VERSION_STRING; }

FLUXUS_API int32_t fluxus_version_number(void) { return FLUXUS_VERSION_NUMBER; }

FLUXUS_API const char *fluxus_strerror(int32_t status) { return fluxus::status_text(status); }

FLUXUS_API const char *fluxus_err_name(int32_t status) { return fluxus::status_name(status); }

// The two readers of the last error run no FLUXUS_API_GUARD: they must not clear the message, and
// nothing in them can throw.
FLUXUS_API const char *fluxus_last_error_message(void) { return fluxus::last_error_message(); }

FLUXUS_API int32_t fluxus_last_error_copy(char *buf, size_t cap, size_t *out_len) {
    return fluxus::copy_last_error(buf, cap, out_len);
}

FLUXUS_API int32_t fluxus_call_get_worker(uint32_t *out) {
    if (!out) return fluxus::set_error(FLUXUS_EINVAL, "fluxus_call_get_worker: out is NULL");
    uint32_t w = fluxus::current_worker();
    if (w == UINT32_MAX)
        return fluxus::set_error(FLUXUS_ESTATE, "fluxus_call_get_worker: not in a stage callback");
    *out = w;
    return FLUXUS_OK;
}

}  // extern "C"
