// Registry: host callbacks by name, for pipelines built from a spec. Shared: the host's handle
// and every pipeline built from it hold a reference, and the last one releases the `user`s.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "fluxus.h"
#include "util/user_ref.hpp"

namespace fluxus {

struct RegisteredFn {
    int32_t kind;
    fluxus_any_fn fn;
    UserRef user;
};

class Registry {
public:
    ~Registry() {
        for (auto &e : fns) e.second.user.release();
    }
    std::map<std::string, RegisteredFn> fns;
};

const char *fn_kind_name(int32_t kind);

}  // namespace fluxus
