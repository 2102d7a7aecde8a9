// SourceSpec: what the host declared for a source — the pipeline's own (pull, batch pull,
// push or cursor) and every extra pull source added as a source stage.
#pragma once

#include <cstdint>
#include <string>

#include "fluxus.h"
#include "util/user_ref.hpp"

namespace fluxus {

class RateLimiter;

enum class SourceKind : uint8_t { none, pull, pull_batch, push, cursor };

struct SourceSpec {
    SourceKind kind = SourceKind::none;
    std::string name = "source";
    void (*fn)() = nullptr;
    UserRef user;
    uint32_t poll_interval_us = 1000;
    RateLimiter *rate_limiter = nullptr;  // pull sources: tokens per item pulled (retained)
    // Cursor sources: where the next read starts (the source's worker only), and the host's
    // page and commit callbacks (they share `user`).
    uint64_t cursor = 0;
    fluxus_cursor_page_fn page_of = nullptr;
    fluxus_cursor_commit_fn commit = nullptr;
};

}  // namespace fluxus
