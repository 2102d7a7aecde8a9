// Status codes and the per-thread last-error message.
// Internal code returns plain int32_t codes (the public FLUXUS_E* values) and records a detailed
// message with set_error(); the API layer hands both to the host unchanged.
#pragma once

#include <cstdint>
#include <string>

#include "fluxus.h"

namespace fluxus {

// Records `message` as the calling thread's last error and returns `code`, so that failure paths
// read `return set_error(FLUXUS_EINVAL, "...")`.
int32_t set_error(int32_t code, const std::string &message);

// printf-style variant for messages that name values.
int32_t set_errorf(int32_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Clears the calling thread's last error (start of every API call that succeeds).
void clear_error();

const char *last_error_message();
const char *status_text(int32_t status);
const char *status_name(int32_t status);

}  // namespace fluxus
