// C API: the registry of named callbacks and fluxus_pipeline_build (declarative specs).
#include <cctype>
#include <cstring>
#include <memory>

#include "api/api_util.hpp"
#include "spec/registry.hpp"
#include "spec/spec_builder.hpp"

using namespace fluxus;

// The handle's object: the host's reference to the shared registry.
struct RegistryRef {
    std::shared_ptr<Registry> reg;
};

namespace {

bool valid_name(const char *n) {
    if (!n || !*n || std::isdigit(static_cast<unsigned char>(*n)) || strlen(n) > 128) return false;
    for (const char *c = n; *c; ++c)
        if (!std::isalnum(static_cast<unsigned char>(*c)) && *c != '_') return false;
    return true;
}

}  // namespace

extern "C" {

FLUXUS_API int32_t fluxus_registry_new(fluxus_registry **out) {
    FLUXUS_API_GUARD({
        if (!out) return set_error(FLUXUS_EINVAL, "fluxus_registry_new: out is NULL");
        *out = nullptr;
        std::unique_ptr<RegistryRef> ref(new RegistryRef{std::make_shared<Registry>()});
        uintptr_t h = handle_register(HandleKind::registry, ref.get());
        if (!h) return set_error(FLUXUS_ENOMEM, "fluxus_registry_new: out of handles");
        ref.release();
        *out = reinterpret_cast<fluxus_registry *>(h);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_registry_free(fluxus_registry *h) {
    FLUXUS_API_GUARD({
        if (!h) return FLUXUS_OK;  // like every _free
        auto *ref = static_cast<RegistryRef *>(
            handle_unregister(HandleKind::registry, reinterpret_cast<uintptr_t>(h)));
        if (!ref)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_registry_free: not a live registry (already freed)");
        // Registry calls run no host callback and never block: waiting for them is short.
        handle_retire(reinterpret_cast<uintptr_t>(h));
        delete ref;
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_registry_add(fluxus_registry *h, const char *name, int32_t kind,
                                       fluxus_any_fn fn, void *user,
                                       fluxus_user_free_fn user_free) {
    FLUXUS_API_GUARD({
        HandleRef ref_pin(HandleKind::registry, reinterpret_cast<uintptr_t>(h));
        RegistryRef *ref = static_cast<RegistryRef *>(ref_pin.get());
        if (!ref)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_registry_add: not a live registry (NULL or already freed)");
        if (!valid_name(name))
            return set_error(FLUXUS_EINVAL,
                             "fluxus_registry_add: the name must be letters, digits and '_', not "
                             "starting with a digit, at most 128 characters");
        if (!fn) return set_error(FLUXUS_EINVAL, "fluxus_registry_add: the callback is NULL");
        if (kind < FLUXUS_FN_MAP || kind > FLUXUS_FN_JOIN_INPUT)
            return set_errorf(FLUXUS_EINVAL, "fluxus_registry_add: %d is not a FLUXUS_FN_* kind",
                              kind);
        auto &fns = ref->reg->fns;
        if (fns.count(name))
            return set_errorf(FLUXUS_EINVAL, "fluxus_registry_add: '%s' is already registered",
                              name);
        RegisteredFn f;
        f.kind = kind;
        f.fn = fn;
        f.user = (UserRef{user, user_free});
        fns.emplace(name, f);
        return FLUXUS_OK;
    });
}

FLUXUS_API int32_t fluxus_pipeline_build(fluxus_pipeline *h, fluxus_registry *r,
                                         const char *spec) {
    FLUXUS_API_GUARD({
        FLUXUS_GET_PIPELINE(p, h, "fluxus_pipeline_build");
        HandleRef ref_pin(HandleKind::registry, reinterpret_cast<uintptr_t>(r));
        RegistryRef *ref = static_cast<RegistryRef *>(ref_pin.get());
        if (!ref)
            return set_error(FLUXUS_EINVAL,
                             "fluxus_pipeline_build: not a live registry (NULL or already freed)");
        if (!spec) return set_error(FLUXUS_EINVAL, "fluxus_pipeline_build: the spec is NULL");
        if (int32_t rc = p->check_building("build")) return rc;
        p->keep_alive(ref->reg);
        return build_from_spec(h, *ref->reg, spec);
    });
}

}  // extern "C"
