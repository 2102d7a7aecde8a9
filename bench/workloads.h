/*
 * workloads.h — the benchmark workloads W1..W4, re-implemented for fluxus's own bench.
 *
 * These are the exact definitions shared with the peer benchmarks (oneTBB, Go channels, ...):
 * the same item values, the same per-item work and the same expected checksums, so fluxus's
 * figures can be set beside theirs. The project must not depend on the peers' folder, hence this
 * copy. Output helpers print the `workload=<W> impl=<name> items=... seconds=... items_per_s=...`
 * lines that bench/summarize_median.py (and the peers' summarize.py) read.
 */
#ifndef FLUXUS_BENCH_WORKLOADS_H
#define FLUXUS_BENCH_WORKLOADS_H

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <unordered_set>
#include <vector>

namespace wl {

constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL;

/* splitmix64 finaliser. */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ---------------- W1 hop: x -> x+1 -> x*3 -> sum and order hash ---------------- */
constexpr uint64_t W1_N = 10000000;
constexpr uint64_t W1_SUM = 150000015000000ULL; /* 3 * N(N+1)/2 */
constexpr uint64_t W1_ORDHASH = 6823718006607868197ULL;
constexpr uint64_t W1_ORDHASH_INIT = 0xCBF29CE484222325ULL;
constexpr uint64_t W1_ORDHASH_MUL = 0x100000001B3ULL;

static inline uint64_t w1_s1(uint64_t x) { return x + 1; }
static inline uint64_t w1_s2(uint64_t x) { return x * 3; }

struct W1Sink {
    uint64_t sum = 0;
    uint64_t ordhash = W1_ORDHASH_INIT; /* FNV-1a style fold over 64-bit words: order sensitive */
    uint64_t n = 0;
    inline void operator()(uint64_t x) {
        sum += x;
        ordhash = (ordhash ^ x) * W1_ORDHASH_MUL;
        ++n;
    }
};

/* Expected (sum, ordhash) for any N, by a plain loop (used by --quick). */
static inline W1Sink w1_expected(uint64_t n) {
    W1Sink s;
    for (uint64_t x = 0; x < n; ++x) s(w1_s2(w1_s1(x)));
    return s;
}

/* ---------------- W2 cpu-parallel: ~2 us of mixing per item ---------------- */
constexpr uint64_t W2_N = 1000000;
constexpr uint64_t W2_SUM = 7904113322358310809ULL;
#ifndef W2_ROUNDS
#define W2_ROUNDS 550 /* calibrated once on the reference VM (3.62 ns/round); never re-calibrate */
#endif
__attribute__((noinline)) static uint64_t w2_work(uint64_t x) {
    uint64_t h = x;
    for (int r = 0; r < W2_ROUNDS; ++r) h = mix64(h + GOLDEN);
    return h;
}
static inline uint64_t w2_expected(uint64_t n) {
    uint64_t s = 0;
    for (uint64_t x = 0; x < n; ++x) s += w2_work(x);
    return s;
}

/* ---------------- W3 io-tail: simulated async I/O, lognormal latencies, K in flight ---------------- */
constexpr uint64_t W3_N = 20000;
constexpr int W3_MAX_INFLIGHT = 256;
constexpr uint64_t W3_SEED = 0x5EED000000000003ULL;
constexpr double W3_MEDIAN_US = 2000.0;
constexpr double W3_SIGMA = 1.3836;
constexpr uint64_t W3_SUM_LAT_US = 101890889ULL;
static inline uint64_t w3_latency_us(uint64_t i) {
    uint64_t z0 = mix64(W3_SEED + (2 * i + 1) * GOLDEN);
    uint64_t z1 = mix64(W3_SEED + (2 * i + 2) * GOLDEN);
    double u1 = ((double)(z0 >> 11) + 0.5) * (1.0 / 9007199254740992.0); /* (0,1) */
    double u2 = (double)(z1 >> 11) * (1.0 / 9007199254740992.0);         /* [0,1) */
    double n = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    double v = W3_MEDIAN_US * std::exp(W3_SIGMA * n);
    long long r = std::llround(v);
    return r < 1 ? 1 : (uint64_t)r;
}
/* Published reference figures of the zero-overhead ideal (WORKLOADS.md), for the full N. */
constexpr double W3_IDEAL_UNORDERED_S = 1.1587;
constexpr double W3_IDEAL_ORDERED_S = 7.7371;
static inline std::vector<uint64_t> w3_latencies(uint64_t n) {
    std::vector<uint64_t> v(n);
    for (uint64_t i = 0; i < n; ++i) v[i] = w3_latency_us(i);
    return v;
}
/* Zero-overhead ideal wall time (seconds) of the admission rule "at most K in flight, an item is
 * in flight from its start until the sink consumes it", by discrete-event simulation; the same
 * computation as W3Stats::ideal_s of the peers' workloads_reference.h. Ordered: item i starts
 * when item i-K has been consumed, and is consumed once it completed and i-1 was consumed.
 * Unordered: each start takes the slot of the earliest completion. */
static inline double w3_ideal_s(const std::vector<uint64_t> &lat, bool ordered,
                                uint64_t k = (uint64_t)W3_MAX_INFLIGHT) {
    const uint64_t n = lat.size();
    if (n == 0) return 0;
    if (ordered) {
        std::vector<double> cons(n);
        for (uint64_t i = 0; i < n; ++i) {
            double st = i >= k ? cons[i - k] : 0.0;
            cons[i] = std::max(st + (double)lat[i], i ? cons[i - 1] : 0.0);
        }
        return cons[n - 1] / 1e6;
    }
    std::vector<double> h; /* min-heap of completion times */
    double now = 0, end = 0;
    for (uint64_t i = 0; i < n; ++i) {
        if (h.size() >= k) {
            std::pop_heap(h.begin(), h.end(), std::greater<double>());
            now = h.back();
            h.pop_back();
        }
        h.push_back(now + (double)lat[i]);
        std::push_heap(h.begin(), h.end(), std::greater<double>());
        end = std::max(end, now + (double)lat[i]);
    }
    return end / 1e6;
}

/* ---------------- W4 dedup: 10 M keys over a 5 M key space ---------------- */
constexpr uint64_t W4_N = 10000000;
constexpr uint64_t W4_KEYSPACE = 5000000;
constexpr uint64_t W4_SEED = 0x5EED000000000004ULL;
constexpr uint64_t W4_UNIQUE = 4323541;
constexpr uint64_t W4_SUM = 10809739034370ULL;
static inline uint64_t w4_key(uint64_t i) {
    return mix64(W4_SEED + (i + 1) * GOLDEN) % W4_KEYSPACE;
}
struct W4Expected {
    uint64_t unique = 0, sum = 0;
};
static inline W4Expected w4_expected(uint64_t n) {
    W4Expected e;
    std::unordered_set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) {
        uint64_t k = w4_key(i);
        if (seen.insert(k).second) {
            ++e.unique;
            e.sum += k;
        }
    }
    return e;
}

/* ---------------- timing / output ---------------- */
using clk = std::chrono::steady_clock;
static inline double secs_since(clk::time_point t0) {
    return std::chrono::duration<double>(clk::now() - t0).count();
}
static inline uint64_t now_ns() {
    return (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(
               clk::now().time_since_epoch())
        .count();
}
static inline void print_result(const char *w, const std::string &impl, uint64_t items, double s,
                                const std::string &extra) {
    std::printf("workload=%s impl=%s items=%llu seconds=%.6f items_per_s=%.1f %s\n", w,
                impl.c_str(), (unsigned long long)items, s, s > 0 ? (double)items / s : 0.0,
                extra.c_str());
    std::fflush(stdout);
}
static inline std::string kv(const char *k, unsigned long long v) {
    char b[96];
    std::snprintf(b, sizeof b, "%s=%llu ", k, v);
    return b;
}
static inline std::string kvd(const char *k, double v) {
    char b[96];
    std::snprintf(b, sizeof b, "%s=%.4f ", k, v);
    return b;
}
static inline std::string kvs(const char *k, const std::string &v) {
    return std::string(k) + "=" + v + " ";
}

} // namespace wl

#endif /* FLUXUS_BENCH_WORKLOADS_H */
