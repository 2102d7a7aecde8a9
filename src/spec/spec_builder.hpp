// Builds a pipeline from a spec's text with callbacks from a registry (spec_builder.cpp).
#pragma once

#include "fluxus.h"
#include "spec/registry.hpp"

namespace fluxus {

// Returns FLUXUS_OK or the first error (its message names the spec position).
int32_t build_from_spec(fluxus_pipeline *h, Registry &r, const char *text);

}  // namespace fluxus
