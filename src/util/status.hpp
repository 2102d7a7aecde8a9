// Status codes and the per-thread last-error message.
// Internal code returns plain int32_t codes (the public FLUXUS_E* values) and records a detailed
// message with set_error(); the API layer hands both to the host unchanged. The message lives in
// a fixed thread-local buffer that needs no destructor, so recording one never allocates and
// never keeps the library loaded after dlclose().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fluxus.h"

namespace fluxus {

// Capacity of the per-thread message buffer, NUL included (FLUXUS_ERROR_MESSAGE_MAX). A longer
// message is cut at a UTF-8 character boundary and ends in kTruncationMarker.
constexpr size_t kErrorMessageMax = FLUXUS_ERROR_MESSAGE_MAX;
constexpr char kTruncationMarker[] = "...";

// Records `message` as the calling thread's last error and returns `code`, so that failure paths
// read `return set_error(FLUXUS_EINVAL, "...")`. Never allocates and never throws. `message`
// may point into the current message (it is moved, not copied over itself); NULL records "".
int32_t set_error(int32_t code, const char *message);
int32_t set_error(int32_t code, const std::string &message);

// printf-style variant for messages that name values. The arguments may include
// last_error_message().
int32_t set_errorf(int32_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Clears the calling thread's last error (start of every API call that succeeds).
void clear_error();

// The calling thread's message: valid until the thread records or clears another one, never
// NULL.
const char *last_error_message();

// Copies the calling thread's message into `buf` (the contract of fluxus_last_error_copy()).
// Never changes the message.
int32_t copy_last_error(char *buf, size_t cap, size_t *out_len);

const char *status_text(int32_t status);
const char *status_name(int32_t status);

}  // namespace fluxus
