// The current call: see current_call.hpp. Everything here runs when a callback attaches text or
// an item fails.
#include "core/current_call.hpp"

#include "util/status.hpp"

namespace fluxus {

using detail::current_call;

void CallErrors::set_call_text(const char *message) {
    if (!message || !*message) {
        call_.clear();
        return;
    }
    call_ = bounded_text(message);
    pending_ = true;
}

int32_t CallErrors::set_item_text(uint32_t index, const char *message) {
    if (batch_n_ == 0)
        return set_error(FLUXUS_ESTATE,
                         "fluxus_call_set_item_error: not inside a batch callback with per-item "
                         "statuses (batch map, batch filter, batch sink, loader load)");
    if (index >= batch_n_)
        return set_errorf(FLUXUS_ERANGE,
                          "fluxus_call_set_item_error: index %u is not below the call's count %u",
                          index, batch_n_);
    if (!message || !*message) {
        if (index < items_.size()) items_[index].clear();
        return FLUXUS_OK;
    }
    if (items_.size() < batch_n_) items_.resize(batch_n_);
    items_[index] = bounded_text(message);
    pending_ = true;
    return FLUXUS_OK;
}

void CallErrors::discard() {
    call_.clear();
    items_.clear();
    pending_ = false;
}

std::string CallErrors::take() {
    std::string s;
    s.swap(call_);
    items_.clear();
    pending_ = false;
    return s;
}

BatchTexts::BatchTexts(CallErrors *e) {
    if (!e || !e->pending()) return;
    call_.swap(e->call_);
    items_.swap(e->items_);
    e->discard();
}

const std::string *BatchTexts::for_item(uint32_t index) const {
    if (index < items_.size() && !items_[index].empty()) return &items_[index];
    return &call_;
}

CallSuspendScope::CallSuspendScope() : saved_(current_call().suspended) {
    current_call().suspended = true;
}
CallSuspendScope::~CallSuspendScope() { current_call().suspended = saved_; }

FailureTextScope::FailureTextScope(const std::string *text) : saved_(current_call().text) {
    current_call().text = text;
}
FailureTextScope::~FailureTextScope() { current_call().text = saved_; }

const std::string *no_failure_text() {
    static const std::string none;
    return &none;
}

ReportingScope::ReportingScope(const fluxus_failure *f) : saved_(current_call().reporting) {
    current_call().reporting = f;
}
ReportingScope::~ReportingScope() { current_call().reporting = saved_; }

CallErrors *current_call_errors() {
    detail::CurrentCall &c = current_call();
    return c.suspended ? nullptr : c.errors;
}

std::string take_failure_text() {
    detail::CurrentCall &c = current_call();
    if (c.text) return *c.text;
    if (c.errors && c.errors->pending()) return c.errors->take();
    return std::string();
}

const fluxus_failure *failure_being_reported() { return current_call().reporting; }

}  // namespace fluxus
