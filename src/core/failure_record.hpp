// Failure records: the details of one failure (fluxus_failure) as the host reads them through
// the fluxus_failure_* accessors — stage, status, fluxus's description, the callback's own text,
// attempts — and FailureRecord, an owned copy for a failure that outlives its callback (the
// first failure that stopped a pipeline). Nothing here runs unless something fails.
#pragma once

#include <cstdint>
#include <string>

#include "fluxus.h"

// Details of one failure (opaque to the host). Strings are borrowed from whoever built it: the
// code reporting the failure for the length of a callback, or a FailureRecord.
struct fluxus_failure {
    const char *stage_name;
    uint32_t stage_index;  // UINT32_MAX: the pipeline's own source
    int32_t status;
    const char *message;  // fluxus's description ("map callback failed")
    uint32_t attempts;
    const char *text;           // the callback's own text, or null
    int32_t retries_exhausted;  // 1: failed on the last attempt its retry policy allows
};

namespace fluxus {

struct Stage;

// The longest callback text kept, in bytes (FLUXUS_ERROR_TEXT_MAX).
constexpr size_t kErrorTextMax = FLUXUS_ERROR_TEXT_MAX;

// Copies `s`, cut to at most kErrorTextMax bytes without splitting a UTF-8 character.
std::string bounded_text(const char *s);

// The failure of an item at `stage`, its strings borrowed from `stage` and the arguments;
// attempts and retries_exhausted come from the retry scope of the worker running the stage
// (pipeline_failures.cpp).
fluxus_failure item_failure(const Stage &stage, int32_t status, const char *message,
                            const std::string &text);

// One line for logs: "<message>[: <text>] (status N[, A attempts][, retries exhausted])".
std::string describe_failure(const fluxus_failure &f);

// An owned copy of a failure.
class FailureRecord {
public:
    bool empty() const { return !set_; }
    void assign(const fluxus_failure &f);
    const fluxus_failure *view() const { return set_ ? &view_ : nullptr; }
    // "stage 'NAME' (index I): " or "source 'NAME': ", then describe_failure().
    std::string summary() const;

private:
    bool set_ = false;
    std::string stage_name_, message_, text_;
    fluxus_failure view_{};
};

}  // namespace fluxus
