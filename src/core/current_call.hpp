// The current call: what the callback running on this thread may tell fluxus about its call
// (the text of the failure it is about to report), and which worker it runs in. A segment
// worker owns a CallErrors; one thread-local record points at it (and holds the worker index)
// while the worker runs, so a callback reaches it with no handle. Nothing here is touched per
// item: the record is set once per worker run, the texts only when a callback attaches one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/failure_record.hpp"

namespace fluxus {

// What the callbacks a worker runs have attached to their failures. A per-item callback's text
// belongs to its next failure (taken, so the next item starts clean); a batch callback's texts
// are taken out at once and serve every item that call fails (BatchTexts). A text nobody took
// is dropped when the worker ends its batch (discard()), so it cannot outlive the call by much.
class CallErrors {
public:
    // ---- the callbacks, through fluxus_call_set_error / _set_item_error ----
    // NULL or "" drops the call's text.
    void set_call_text(const char *message);
    // FLUXUS_ESTATE outside a batch callback with per-item statuses, FLUXUS_ERANGE for an
    // index at or past its count.
    int32_t set_item_text(uint32_t index, const char *message);

    // ---- the worker ----
    bool pending() const { return pending_; }
    void discard();
    // After a call that failed nothing: what it attached goes nowhere.
    void drop_unused() {
        if (pending_) discard();
    }
    // Brackets a batch callback whose items have statuses of their own (index < n).
    void begin_batch(uint32_t n) { batch_n_ = n; }
    void end_batch() { batch_n_ = 0; }
    // The call's text for the failure being reported now, taken (item texts are dropped).
    std::string take();

private:
    friend class BatchTexts;
    bool pending_ = false;
    uint32_t batch_n_ = 0;
    std::string call_;
    std::vector<std::string> items_;  // by index within the batch call; "" = none
};

// The texts one batch call attached, taken out of `e` (the worker's) once the call has failed,
// so that callbacks run while its items are settled start clean. Each failing item is reported
// inside a FailureTextScope of for_item().
class BatchTexts {
public:
    explicit BatchTexts(CallErrors *e);
    // Item `index`'s text, else the call's, else "" (never null).
    const std::string *for_item(uint32_t index) const;
    // The call's text, or "".
    const std::string *for_call() const { return &call_; }

private:
    std::string call_;
    std::vector<std::string> items_;
};

namespace detail {
// The calling thread's current call: plain fields, zero when no worker runs.
struct CurrentCall {
    uint32_t worker_plus_one;         // the running worker's index + 1; 0: none
    CallErrors *errors;               // the running worker's texts; null: none
    bool suspended;                   // a callback that may not attach text is running
    const std::string *text;          // FailureTextScope
    const fluxus_failure *reporting;  // ReportingScope
};
// One per thread, constant-initialized (no guard, no init wrapper), defined by the inline
// function in each file that uses it: no extern thread_local to go through. In a shared
// library each access is a call, so a worker run touches it once on entry and once on exit.
inline CurrentCall &current_call() {
    static thread_local CurrentCall call;
    return call;
}
}  // namespace detail

// Index of the worker running on this thread (fluxus_call_get_worker()), or UINT32_MAX.
inline uint32_t current_worker() { return detail::current_call().worker_plus_one - 1; }

// Makes worker `index` (and its texts `e`) the calling thread's current call while it runs;
// restores the previous one and drops what no failure took.
class CurrentCallScope {
public:
    CurrentCallScope(uint32_t index, CallErrors *e) : e_(e) {
        detail::CurrentCall &c = detail::current_call();
        saved_worker_ = c.worker_plus_one;
        saved_errors_ = c.errors;
        c.worker_plus_one = index + 1;
        c.errors = e;
    }
    ~CurrentCallScope() {
        e_->drop_unused();
        detail::CurrentCall &c = detail::current_call();
        c.worker_plus_one = saved_worker_;
        c.errors = saved_errors_;
    }
    CurrentCallScope(const CurrentCallScope &) = delete;
    CurrentCallScope &operator=(const CurrentCallScope &) = delete;

private:
    CallErrors *e_;
    CallErrors *saved_errors_;
    uint32_t saved_worker_;
};

// While alive, callbacks on this thread cannot attach text (dead-letter, route observer and log
// callbacks: their text would land on some other failure).
class CallSuspendScope {
public:
    CallSuspendScope();
    ~CallSuspendScope();
    CallSuspendScope(const CallSuspendScope &) = delete;
    CallSuspendScope &operator=(const CallSuspendScope &) = delete;

private:
    bool saved_;
};

// While alive, the failures reported on this thread carry `text` (an async completion's, a
// batch call's) instead of what the current call holds; null: as without the scope.
class FailureTextScope {
public:
    explicit FailureTextScope(const std::string *text);
    ~FailureTextScope();
    FailureTextScope(const FailureTextScope &) = delete;
    FailureTextScope &operator=(const FailureTextScope &) = delete;

private:
    const std::string *saved_;
};

// A text that is no text: for a FailureTextScope that must not fall back to the current call.
const std::string *no_failure_text();

// While alive, fail_pipeline() on this thread records `f` (the item failure that stops it).
class ReportingScope {
public:
    explicit ReportingScope(const fluxus_failure *f);
    ~ReportingScope();
    ReportingScope(const ReportingScope &) = delete;
    ReportingScope &operator=(const ReportingScope &) = delete;

private:
    const fluxus_failure *saved_;
};

// The current call's texts, or null (no worker runs on this thread, or a callback that may not
// attach text runs).
CallErrors *current_call_errors();

// The callback text of the failure being reported on this thread ("" if none): a
// FailureTextScope's, else the current call's (CallErrors::take()).
std::string take_failure_text();

// The failure fail_item() is reporting on this thread, if any.
const fluxus_failure *failure_being_reported();

}  // namespace fluxus
