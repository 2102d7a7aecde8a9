// The fuzz target's body, shared by the libFuzzer build and the standalone driver.
#pragma once

#include <cstddef>
#include <cstdint>

// Builds `data` (up to its first NUL) as a spec into a fresh, never-started pipeline and frees
// everything; aborts on a violated invariant (see spec_fuzz.cpp). Returns the build's status
// and sets *built_ok (if not NULL) to whether it succeeded.
int spec_fuzz_one(const uint8_t *data, size_t size, int *built_ok);

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
