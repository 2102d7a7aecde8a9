// C API: emitting from flat-map callbacks.
#include "core/segment.hpp"
#include "util/status.hpp"
#include "util/forced_unwind.hpp"

using fluxus::kEmitterMagic;

extern "C" FLUXUS_API int32_t fluxus_emitter_emit(fluxus_emitter *em, uint64_t item) {
    if (!em || em != fluxus::t_live_emitter || em->magic != kEmitterMagic)
        return fluxus::set_error(FLUXUS_EINVAL, "fluxus_emitter_emit: not a live emitter");
    try {
        em->out->push_back(item);
    } FLUXUS_CATCH_ALL {
        return fluxus::set_error(FLUXUS_ENOMEM, "fluxus_emitter_emit: out of memory");
    }
    // Counted before the parent can end, so its page cannot look finished in between.
    if (em->cursor) em->cursor->items_spawned(&item, 1);
    return FLUXUS_OK;
}

extern "C" FLUXUS_API int32_t fluxus_emitter_keep_input(fluxus_emitter *em) {
    if (!em || em != fluxus::t_live_emitter || em->magic != kEmitterMagic)
        return fluxus::set_error(FLUXUS_EINVAL, "fluxus_emitter_keep_input: not a live emitter");
    em->keep_input = true;
    return FLUXUS_OK;
}
