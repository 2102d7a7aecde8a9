/*
 * call_distance.h — the probe behind BENCHMARK.md's "Where the callbacks live": the W1 loop
 * (a pull source, two maps and a sink, each called through a pointer, one item at a time),
 * compiled into both the probe executable and a small shared library, with a copy of the four
 * callbacks in each, so that the loop's call sites and the callbacks can be placed in the same
 * binary or in different ones (an executable and a shared library are mapped terabytes apart).
 */
#pragma once

#include <cstddef>
#include <cstdint>

namespace calldist {

typedef int32_t (*pull_fn)(void *, uint64_t *);
typedef int32_t (*map_fn)(void *, uint64_t, uint64_t *);
typedef int32_t (*sink_fn)(void *, uint64_t);

struct Source {
    uint64_t next, n;
};
struct Sink {
    uint64_t sum, n;
};
struct Callbacks {
    pull_fn pull;
    map_fn m1, m2;
    sink_fn sink;
};

/* Runs up to `max` items; returns the number read. *rc: the source's last status. */
static inline size_t run_batch(const Callbacks &cb, Source *src, Sink *snk, size_t max,
                               int32_t *rc) {
    size_t i = 0;
    uint64_t slot = 0;
    for (; i < max; ++i) {
        *rc = cb.pull(src, &slot);
        if (*rc != 0) break;
        if (cb.m1(nullptr, slot, &slot) != 0 || cb.m2(nullptr, slot, &slot) != 0 ||
            cb.sink(snk, slot) != 0)
            break;
    }
    return i;
}

/* The callbacks (a copy is compiled into each binary). */
static inline int32_t cb_pull(void *u, uint64_t *item) {
    Source *s = static_cast<Source *>(u);
    if (s->next >= s->n) return 1;
    *item = s->next++;
    return 0;
}
static inline int32_t cb_m1(void *, uint64_t in, uint64_t *out) {
    *out = in + 1;
    return 0;
}
static inline int32_t cb_m2(void *, uint64_t in, uint64_t *out) {
    *out = in * 3;
    return 0;
}
static inline int32_t cb_sink(void *u, uint64_t x) {
    Sink *s = static_cast<Sink *>(u);
    s->sum += x;
    ++s->n;
    return 0;
}

}  // namespace calldist

extern "C" {
/* In the shared library: its copy of the loop, and its copy of the callbacks. */
size_t calldist_lib_run_batch(const calldist::Callbacks *cb, calldist::Source *src,
                              calldist::Sink *snk, size_t max, int32_t *rc);
void calldist_lib_callbacks(calldist::Callbacks *cb);
}
