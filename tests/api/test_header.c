/*
 * Compiles <fluxus.h> as strict C99 (-std=c99 -pedantic -Wall -Wextra -Werror, set in
 * tests/meson.build), the way a C binding sees it, and checks that the header and the library
 * agree on the version. Nothing else is included, so the header must be self-contained.
 */
#include <fluxus.h>

/* Every handle type is opaque and usable as a pointer from plain C. */
static fluxus_runtime *unused_runtime;
static fluxus_pipeline *unused_pipeline;
static const fluxus_failure *unused_failure;
static fluxus_emitter *unused_emitter;

int main(void) {
    fluxus_pipeline_stats ps;
    fluxus_stage_stats ss;
    (void)unused_runtime;
    (void)unused_pipeline;
    (void)unused_failure;
    (void)unused_emitter;
    ps.struct_size = (uint32_t)sizeof ps;
    ss.struct_size = (uint32_t)sizeof ss;
    (void)ps;
    (void)ss;
    return fluxus_version_number() == FLUXUS_VERSION_NUMBER ? 0 : 1;
}
