// C API: version and error reporting.
#include "api/api_util.hpp"
#include "core/current_call.hpp"

extern "C" {

FLUXUS_API const char *fluxus_version(void) { return FLUXUS_VERSION_STRING; }

FLUXUS_API int32_t fluxus_version_number(void) { return FLUXUS_VERSION_NUMBER; }

FLUXUS_API const char *fluxus_strerror(int32_t status) { return fluxus::status_text(status); }

FLUXUS_API const char *fluxus_err_name(int32_t status) { return fluxus::status_name(status); }

FLUXUS_API const char *fluxus_last_error_message(void) { return fluxus::last_error_message(); }

FLUXUS_API uint32_t fluxus_current_worker(void) { return fluxus::current_worker(); }

}  // extern "C"
