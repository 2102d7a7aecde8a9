// Status code tables and the thread-local last-error message.
// The message is a fixed char array, not a std::string: a thread_local with a destructor makes
// every thread that records an error register that destructor with the C++ runtime, which pins
// the library in memory (dlclose() cannot unmap it while the registration is pending) and aborts
// the process if the registration cannot allocate.
#include "util/status.hpp"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace fluxus {

namespace {

// Zero-initialised, so a thread that never failed reads "". Only the owning thread touches it.
thread_local char t_message[kErrorMessageMax];
static_assert(std::is_trivially_destructible<decltype(t_message)>::value,
              "the last-error buffer must need no thread-exit destructor");

constexpr size_t kMarkerLen = sizeof kTruncationMarker - 1;

// Length of the longest prefix of `s` (`len` bytes) that has at most `max` bytes and does not end
// inside a UTF-8 multi-byte character. Backs up at most three bytes, the most a valid character
// needs; invalid UTF-8 is cut where it falls.
size_t utf8_prefix(const char *s, size_t len, size_t max) {
    if (len <= max) return len;
    size_t n = max;
    for (int i = 0; i < 3 && n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80; ++i) --n;
    return n;
}

// Stores the `len` bytes at `src` as the message. When the message does not fit, only the first
// kErrorMessageMax - kMarkerLen bytes of `src` are read (so `src` may be a truncated buffer whose
// full length was `len`). `src` may point into t_message.
void store_message(const char *src, size_t len) {
    if (len < kErrorMessageMax) {
        memmove(t_message, src, len);
        t_message[len] = '\0';
        return;
    }
    size_t keep = utf8_prefix(src, len, kErrorMessageMax - 1 - kMarkerLen);
    memmove(t_message, src, keep);
    memcpy(t_message + keep, kTruncationMarker, kMarkerLen + 1);
}

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
    {FLUXUS_EINTERNAL, "FLUXUS_EINTERNAL", "internal error in fluxus"},
    {FLUXUS_ENOTSUP, "FLUXUS_ENOTSUP", "not supported on this platform or build"},
};

const StatusInfo *find_status(int32_t code) {
    for (const StatusInfo &s : kStatusTable)
        if (s.code == code) return &s;
    return nullptr;
}

}  // namespace

int32_t set_error(int32_t code, const char *message) {
    if (!message) message = "";
    store_message(message, strlen(message));
    return code;
}

int32_t set_error(int32_t code, const std::string &message) {
    store_message(message.data(), message.size());
    return code;
}

int32_t set_errorf(int32_t code, const char *fmt, ...) {
    // Formatted on the stack, not in t_message: an argument may be last_error_message().
    char buf[kErrorMessageMax];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return set_error(code, fmt);  // an encoding error: the format says the most
    // When n >= sizeof buf, buf holds the first sizeof buf - 1 bytes, all store_message reads.
    store_message(buf, static_cast<size_t>(n));
    return code;
}

void clear_error() { t_message[0] = '\0'; }

const char *last_error_message() { return t_message; }

int32_t copy_last_error(char *buf, size_t cap, size_t *out_len) {
    size_t len = strlen(t_message);
    if (out_len) *out_len = len;
    if (!buf) return cap == 0 ? FLUXUS_OK : FLUXUS_EINVAL;
    if (len < cap) {
        memmove(buf, t_message, len + 1);  // memmove: buf may be (part of) t_message itself
        return FLUXUS_OK;
    }
    if (cap > 0) {
        size_t keep = utf8_prefix(t_message, len, cap - 1);
        memmove(buf, t_message, keep);
        buf[keep] = '\0';
    }
    return FLUXUS_ERANGE;
}

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
