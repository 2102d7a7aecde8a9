// Status code tables and the thread-local last-error message.
#include "util/status.hpp"

#include <cstdarg>
#include <cstdio>
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {

thread_local std::string t_last_error;

struct StatusInfo {
    int32_t code;
    const char *name;
    const char *text;
};

// Pinned values: never renumber, never reuse.
const StatusInfo kStatusTable[] = {
    {FLUXUS_OK, "FLUXUS_OK", "success"},
    {FLUXUS_EINVAL, "FLUXUS_EINVAL", "invalid argument or handle"},
    {FLUXUS_ESTATE, "FLUXUS_ESTATE", "call not allowed in the current state"},
    {FLUXUS_ENOMEM, "FLUXUS_ENOMEM", "out of memory"},
    {FLUXUS_ERANGE, "FLUXUS_ERANGE", "value out of range"},
    {FLUXUS_EFULL, "FLUXUS_EFULL", "queue full"},
    {FLUXUS_ETIMEDOUT, "FLUXUS_ETIMEDOUT", "timed out"},
    {FLUXUS_ECANCELED, "FLUXUS_ECANCELED", "cancelled"},
    {FLUXUS_ECLOSED, "FLUXUS_ECLOSED", "input closed"},
    {FLUXUS_EINCALLBACK, "FLUXUS_EINCALLBACK", "not allowed from inside a fluxus callback"},
    {FLUXUS_ECALLBACK, "FLUXUS_ECALLBACK", "a callback failed"},
    {FLUXUS_EEXCEPTION, "FLUXUS_EEXCEPTION", "a callback threw an exception"},
    {FLUXUS_EFAILED, "FLUXUS_EFAILED", "pipeline stopped on an error"},
    {FLUXUS_EDROPPED, "FLUXUS_EDROPPED", "item dropped by an overflow policy"},
    {FLUXUS_ENOTFOUND, "FLUXUS_ENOTFOUND", "no such stage"},
    {FLUXUS_ESOURCE, "FLUXUS_ESOURCE", "the source reported an error"},
    {FLUXUS_ELIMITED, "FLUXUS_ELIMITED", "no token or permit available in time"},
    {FLUXUS_ECIRCUITOPEN, "FLUXUS_ECIRCUITOPEN", "refused by an open circuit breaker"},
    {FLUXUS_ENOROUTE, "FLUXUS_ENOROUTE", "no route matched and there is no default route"},
};

const StatusInfo *find_status(int32_t code) {
    for (const StatusInfo &s : kStatusTable)
        if (s.code == code) return &s;
    return nullptr;
}

}  // namespace

int32_t set_error(int32_t code, const std::string &message) {
    try {
        t_last_error = message;
    } FLUXUS_CATCH_ALL {
        // Out of memory while recording an error: keep the code, lose the details.
    }
    return code;
}

int32_t set_errorf(int32_t code, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return set_error(code, buf);
}

void clear_error() { t_last_error.clear(); }

const char *last_error_message() { return t_last_error.c_str(); }

const char *status_text(int32_t status) {
    const StatusInfo *s = find_status(status);
    if (s) return s->text;
    return status > 0 ? "callback-defined error" : "unknown error";
}

const char *status_name(int32_t status) {
    const StatusInfo *s = find_status(status);
    return s ? s->name : "FLUXUS_UNKNOWN";
}

}  // namespace fluxus
