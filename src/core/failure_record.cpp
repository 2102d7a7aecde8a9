// Failure records: see failure_record.hpp.
#include "core/failure_record.hpp"

#include <cstdio>
#include <cstring>

#include "util/status.hpp"

namespace fluxus {

std::string bounded_text(const char *s) {
    size_t n = strnlen(s, kErrorTextMax + 1);
    if (n > kErrorTextMax) {
        n = kErrorTextMax;
        // s[n] is the first byte left out. If it continues a character (10xxxxxx), cut before
        // that character's first byte; an invalid sequence (no first byte within 4) is cut as
        // it is.
        size_t k = n;
        while (k > 0 && n - k < 4 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        if ((static_cast<unsigned char>(s[k]) & 0xC0) != 0x80) n = k;
    }
    return std::string(s, n);
}

std::string describe_failure(const fluxus_failure &f) {
    std::string s = f.message ? f.message : "failed";
    if (f.text && *f.text) {
        s += ": ";
        s += f.text;
    }
    char buf[96];
    if (f.status < 0)
        snprintf(buf, sizeof buf, " (status %d %s", f.status, status_name(f.status));
    else
        snprintf(buf, sizeof buf, " (status %d", f.status);
    s += buf;
    if (f.attempts > 1) {
        snprintf(buf, sizeof buf, ", %u attempts", f.attempts);
        s += buf;
    }
    if (f.retries_exhausted) s += ", retries exhausted";
    s += ")";
    return s;
}

void FailureRecord::assign(const fluxus_failure &f) {
    stage_name_ = f.stage_name ? f.stage_name : "";
    message_ = f.message ? f.message : "";
    text_ = f.text ? f.text : "";
    view_ = f;
    view_.stage_name = stage_name_.c_str();
    view_.message = message_.c_str();
    view_.text = text_.empty() ? nullptr : text_.c_str();
    set_ = true;
}

std::string FailureRecord::summary() const {
    if (!set_) return std::string();
    std::string s;
    if (view_.stage_index == UINT32_MAX)
        s = "source '" + stage_name_ + "': ";
    else
        s = "stage '" + stage_name_ + "' (index " + std::to_string(view_.stage_index) + "): ";
    return s + describe_failure(view_);
}

}  // namespace fluxus
