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

// Capacity of the per-thread message buffer, NUL included. A longer message is cut at a UTF-8
// character boundary and ends in kTruncationMarker.
constexpr size_t kErrorMessageMax = 1024;
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

const char *status_text(int32_t status);
const char *status_name(int32_t status);

}  // namespace fluxus
