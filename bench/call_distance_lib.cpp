/* call_distance_lib.cpp — the shared-library half of the call-distance probe (call_distance.h). */
#include "call_distance.h"

extern "C" {

__attribute__((visibility("default"), noinline)) size_t calldist_lib_run_batch(
    const calldist::Callbacks *cb, calldist::Source *src, calldist::Sink *snk, size_t max,
    int32_t *rc) {
    return calldist::run_batch(*cb, src, snk, max, rc);
}

static int32_t lib_pull(void *u, uint64_t *item) { return calldist::cb_pull(u, item); }
static int32_t lib_m1(void *u, uint64_t in, uint64_t *out) { return calldist::cb_m1(u, in, out); }
static int32_t lib_m2(void *u, uint64_t in, uint64_t *out) { return calldist::cb_m2(u, in, out); }
static int32_t lib_sink(void *u, uint64_t x) { return calldist::cb_sink(u, x); }

__attribute__((visibility("default"))) void calldist_lib_callbacks(calldist::Callbacks *cb) {
    *cb = calldist::Callbacks{lib_pull, lib_m1, lib_m2, lib_sink};
}
}
