// Stage options by number: the one table behind fluxus_stage_set_option / _get_option, the
// option bounds and names, the typed setters that remain, and the spec grammar (which reaches
// it through the public fluxus_option_* calls). An option is a row: its id, name (also its spec
// keyword), bounds, the stage kinds it applies to, the words that name its values (enumerated
// options), and how it is stored. Adding an option is adding a row.
#pragma once

#include <cstdint>

#include "fluxus.h"

namespace fluxus {

class Pipeline;
struct Stage;

struct OptionWord {
    const char *word;
    int64_t value;
};

struct StageOption {
    int32_t id;
    const char *name;       // "workers": the spec keyword and the name in messages
    int64_t min, max;       // accepted values (some options refuse a few inside: see check)
    const char *applies_to; // "async stages", for messages; null: every stage
    bool (*applies)(const Stage &);
    const OptionWord *words;  // enumerated options: value names, ending in {nullptr, 0}
    // Extra rule inside [min, max] (e.g. dedup's "0 or at least 2"); returns a reason or null.
    const char *(*refuses)(const Stage &, int64_t);
    // Stores a checked value. May fail for reasons only the pipeline knows (a route index).
    int32_t (*set)(Pipeline &, Stage &, int64_t, const char *fname);
    int64_t (*get)(const Stage &);
};

// The row of option `id`, or null.
const StageOption *find_stage_option(int32_t id);
// The row whose name is `name`, or null.
const StageOption *find_stage_option(const char *name);

// Checks `value` against the row and the stage, then stores it. `fname` names the public
// function for messages. FLUXUS_EINVAL (the option does not apply to this stage's kind),
// FLUXUS_ERANGE (out of bounds), or what the row's set() returns.
int32_t set_stage_option(Pipeline &p, Stage &st, const StageOption &o, int64_t value,
                         const char *fname);

}  // namespace fluxus
