// UserRef: a host `user` pointer with its destructor, released exactly once by its owner.
#pragma once

#include "fluxus.h"

namespace fluxus {

struct UserRef {
    void *user = nullptr;
    fluxus_user_free_fn user_free = nullptr;
    void release() {
        if (user_free) user_free(user);
        user_free = nullptr;
        user = nullptr;
    }
};

}  // namespace fluxus
