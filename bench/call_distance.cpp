/*
 * call_distance.cpp — does it matter where the callbacks live? Runs the W1 loop of
 * call_distance.h (10 M items, batches of 256, four indirect calls per item) with the loop and
 * the callbacks in the same binary or in different ones, the four placements interleaved over
 * R rounds, and prints the median rate of each with the distance between loop and callbacks.
 *
 *   call-distance [R]      (default R = 9)
 *
 * Not fluxus: a property of the machine that every engine shipped as a shared library meets
 * when its host's callbacks are in the executable (see BENCHMARK.md, "Where the callbacks live").
 */
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "call_distance.h"

using namespace calldist;

namespace {

__attribute__((noinline)) size_t exe_run_batch(const Callbacks *cb, Source *src, Sink *snk,
                                               size_t max, int32_t *rc) {
    return run_batch(*cb, src, snk, max, rc);
}
int32_t exe_pull(void *u, uint64_t *item) { return cb_pull(u, item); }
int32_t exe_m1(void *u, uint64_t in, uint64_t *out) { return cb_m1(u, in, out); }
int32_t exe_m2(void *u, uint64_t in, uint64_t *out) { return cb_m2(u, in, out); }
int32_t exe_sink(void *u, uint64_t x) { return cb_sink(u, x); }

typedef size_t (*loop_fn)(const Callbacks *, Source *, Sink *, size_t, int32_t *);

struct Placement {
    const char *name;
    loop_fn loop;
    Callbacks cb;
    std::vector<double> rates;
};

const uint64_t kN = 10000000;

double run(const Placement &p) {
    Source src{0, kN};
    Sink snk{0, 0};
    int32_t rc = 0;
    auto t0 = std::chrono::steady_clock::now();
    while (rc == 0) p.loop(&p.cb, &src, &snk, 256, &rc);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (snk.n != kN || snk.sum != 150000015000000ull) {
        std::fprintf(stderr, "call-distance: wrong result in %s\n", p.name);
        std::exit(1);
    }
    return double(kN) / s;
}

double distance_gib(const void *a, const void *b) {
    uintptr_t x = uintptr_t(a), y = uintptr_t(b);
    return double(x > y ? x - y : y - x) / (1024.0 * 1024 * 1024);
}

}  // namespace

int main(int argc, char **argv) {
    int rounds = argc > 1 ? std::atoi(argv[1]) : 9;
    if (rounds < 1) rounds = 1;
    Callbacks exe_cb{exe_pull, exe_m1, exe_m2, exe_sink}, lib_cb;
    calldist_lib_callbacks(&lib_cb);
    // Through volatile, so the compiler cannot inline the callbacks into the executable's loop.
    volatile loop_fn exe_loop = exe_run_batch, lib_loop = calldist_lib_run_batch;
    std::vector<Placement> ps = {
        {"loop in exe, callbacks in exe", exe_loop, exe_cb, {}},
        {"loop in lib, callbacks in lib", lib_loop, lib_cb, {}},
        {"loop in lib, callbacks in exe", lib_loop, exe_cb, {}},
        {"loop in exe, callbacks in lib", exe_loop, lib_cb, {}},
    };
    for (int r = 0; r < rounds; ++r)
        for (auto &p : ps) p.rates.push_back(run(p));
    for (auto &p : ps) {
        std::sort(p.rates.begin(), p.rates.end());
        double med = p.rates[p.rates.size() / 2];
        std::printf("call-distance: %-31s %7.1f M items/s  (loop %p, callback %p: %.0f GiB apart)\n",
                    p.name, med / 1e6, (const void *)p.loop, (const void *)p.cb.m1,
                    distance_gib((const void *)p.loop, (const void *)p.cb.m1));
    }
    return 0;
}
