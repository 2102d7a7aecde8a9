/*
 * fluxus_bench.cpp — the fluxus benchmark: workloads W1..W4 of bench/workloads.h run through the
 * public C API only, plus extra measurements (slowsink, latency, lifecycle).
 *
 *   fluxus-bench W1|W2|W3|W4|all|slowsink|latency|lifecycle [--quick] [--impl CFG] [--list]
 *                [--detail] [--items N]
 *
 * Each result is one `workload=<W> impl=<name> items=<n> seconds=<s> items_per_s=<r> k=v ...`
 * line on stdout. Every run checks its checksum (and ordhash / unique; W3: every index once,
 * sum_lat_us, order) and the process exits 1 on a wrong one, 3 on an API error, 64 on bad usage.
 * The timed region of W1/W2/W3/W4 starts just before fluxus_runtime_new() and stops after
 * fluxus_runtime_free() returned (pipeline finished, threads joined); the W3 latency table is
 * computed before it. --quick runs N/100 (W3: N/10) and checks against values computed by a
 * plain loop before the clock starts. --detail adds W3's distributions as '#' lines.
 * --items N runs W1/W2/W4 with exactly N items, checked the same way. Built with
 * FLUXUS_BENCH_CALLGRIND, the timed region of the fluxus configurations of W1/W2/W4 is also
 * the only code callgrind instruments when run with --instr-atstart=no
 * (bench/callgrind_guard.py); outside valgrind those requests cost a few instructions per run.
 */
#include <fluxus.h>

#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "workloads.h"

#ifdef FLUXUS_BENCH_CALLGRIND
#include <valgrind/callgrind.h>
#define REGION_BEGIN() CALLGRIND_START_INSTRUMENTATION
#define REGION_END() CALLGRIND_STOP_INSTRUMENTATION
#else
#define REGION_BEGIN() ((void)0)
#define REGION_END() ((void)0)
#endif

using wl::clk;

namespace {

/* ------------------------------------------------------------------------------------------
 * Options, errors, checks
 * ---------------------------------------------------------------------------------------- */

struct Opts {
    bool quick = false;
    uint64_t items = 0;   /* W1/W2/W4: this many items (0: the workload's N, or N/100 quick) */
    bool list = false;
    std::string impl;     /* empty: every configuration of the workload */
    uint64_t rate = 0;    /* latency: one rate only */
    double duration = 0;  /* slowsink: seconds (0: default) */
    bool detail = false;  /* W3: distributions on '#' lines */
    std::string dump;     /* W3: per-item times to this file (prefix; -<mode>.tsv appended) */
};

int g_failures = 0;
int g_selected = 0; /* configurations that matched --impl (or all of them) */

[[noreturn]] void die_api(const char *what, int32_t rc, int line) {
    /* Copy the message first: it is valid only until the next fluxus call on this thread. */
    std::string msg = fluxus_last_error_message();
    std::fprintf(stderr, "fluxus-bench: %s failed (line %d): %s: %s [%s]\n", what, line,
                 fluxus_err_name(rc), fluxus_strerror(rc), msg.c_str());
    std::exit(3);
}

#define CK(call)                                                                                   \
    do {                                                                                           \
        int32_t rc_ = (call);                                                                      \
        if (rc_ != FLUXUS_OK) die_api(#call, rc_, __LINE__);                                       \
    } while (0)

void check(const char *w, const std::string &impl, const char *what, uint64_t got,
           uint64_t want) {
    if (got == want) return;
    std::fprintf(stderr, "fluxus-bench: CHECK FAILED workload=%s impl=%s %s=%" PRIu64
                         " expected %" PRIu64 "\n",
                 w, impl.c_str(), what, got, want);
    ++g_failures;
}

/* Number of workers of a runtime, as the threads= field reports it (workers + 1 loop thread). */
uint32_t rt_workers(fluxus_runtime *rt) {
    uint32_t n = 0;
    CK(fluxus_runtime_get_workers(&n, rt));
    return n;
}

void finish(fluxus_pipeline *p, const char *w) {
    int32_t rc = fluxus_pipeline_wait(p, UINT32_MAX);
    if (rc != FLUXUS_OK) die_api(w, rc, __LINE__);
}

fluxus_pipeline_stats pipeline_stats(fluxus_pipeline *p) {
    fluxus_pipeline_stats st;
    std::memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CK(fluxus_pipeline_get_stats(&st, p));
    return st;
}

fluxus_stage_stats stage_stats(fluxus_pipeline *p, uint32_t stage) {
    fluxus_stage_stats st;
    std::memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CK(fluxus_stage_get_stats(&st, p, stage));
    return st;
}

bool selected(const Opts &o, const char *cfg) {
    if (o.list) {
        std::printf("%s\n", cfg);
        return false;
    }
    bool yes = o.impl.empty() || o.impl == cfg;
    g_selected += yes;
    return yes;
}

/* Resident set size of this process in KiB, from /proc/self/statm. */
uint64_t rss_kb() {
    FILE *f = std::fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long long size = 0, res = 0;
    int n = std::fscanf(f, "%llu %llu", &size, &res);
    std::fclose(f);
    if (n != 2) return 0;
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE) / 1024;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

void spin_until_ns(uint64_t t) {
    while (wl::now_ns() < t) cpu_relax();
}

/* ------------------------------------------------------------------------------------------
 * Shared callbacks
 * ---------------------------------------------------------------------------------------- */

/* Pull source of 0..n-1 (W1, W2). */
struct CountSrc {
    uint64_t next = 0, n = 0;
};
int32_t count_pull(void *u, uint64_t *item) {
    auto *s = static_cast<CountSrc *>(u);
    if (s->next >= s->n) return FLUXUS_PULL_END;
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}
int32_t count_pull_batch(void *u, uint64_t *items, uint32_t cap, uint32_t *count) {
    auto *s = static_cast<CountSrc *>(u);
    uint64_t left = s->n - s->next;
    uint32_t k = left < cap ? (uint32_t)left : cap;
    for (uint32_t i = 0; i < k; ++i) items[i] = s->next + i;
    s->next += k;
    *count = k;
    return s->next >= s->n ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

/* Sum-and-count sink (W2, W4, extras). */
struct SumSink {
    uint64_t sum = 0, n = 0;
};
int32_t sum_sink(void *u, uint64_t x) {
    auto *s = static_cast<SumSink *>(u);
    s->sum += x;
    ++s->n;
    return 0;
}
int32_t sum_sink_batch(void *u, const uint64_t *items, int32_t *, uint32_t count) {
    auto *s = static_cast<SumSink *>(u);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < count; ++i) sum += items[i];
    s->sum += sum;
    s->n += count;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * W1 hop
 * ---------------------------------------------------------------------------------------- */

int32_t w1_map1(void *, uint64_t in, uint64_t *out) {
    *out = wl::w1_s1(in);
    return 0;
}
int32_t w1_map2(void *, uint64_t in, uint64_t *out) {
    *out = wl::w1_s2(in);
    return 0;
}
int32_t w1_map1_batch(void *, const uint64_t *in, uint64_t *out, int32_t *, uint32_t count) {
    for (uint32_t i = 0; i < count; ++i) out[i] = wl::w1_s1(in[i]);
    return 0;
}
int32_t w1_map2_batch(void *, const uint64_t *in, uint64_t *out, int32_t *, uint32_t count) {
    for (uint32_t i = 0; i < count; ++i) out[i] = wl::w1_s2(in[i]);
    return 0;
}
int32_t w1_sink(void *u, uint64_t x) {
    (*static_cast<wl::W1Sink *>(u))(x);
    return 0;
}
int32_t w1_sink_batch(void *u, const uint64_t *items, int32_t *, uint32_t count) {
    wl::W1Sink &s = *static_cast<wl::W1Sink *>(u);
    for (uint32_t i = 0; i < count; ++i) s(items[i]);
    return 0;
}

/* Reference, not fluxus: the peers' "hand-written function-pointer loop" (292 M on the machine
 * of issue #4), run in the same session so fluxus's figures can be read against this machine's
 * speed at the moment. Source, maps and sink are called through pointers the compiler cannot
 * see through, one item at a time. */
void run_w1_plain_fnptr(const wl::W1Sink &want) {
    using pull_fn = int32_t (*)(void *, uint64_t *);
    using map_fn = int32_t (*)(void *, uint64_t, uint64_t *);
    using sink_fn = int32_t (*)(void *, uint64_t);
    volatile pull_fn vpull = count_pull;
    volatile map_fn vm1 = w1_map1, vm2 = w1_map2;
    volatile sink_fn vsink = w1_sink;
    pull_fn pull = vpull;
    map_fn m1 = vm1, m2 = vm2;
    sink_fn sink_cb = vsink;
    CountSrc src;
    src.n = want.n;
    wl::W1Sink sink;
    auto t0 = clk::now();
    uint64_t x, y, z;
    while (pull(&src, &x) == FLUXUS_PULL_ITEM) {
        if (m1(nullptr, x, &y) != 0 || m2(nullptr, y, &z) != 0 || sink_cb(&sink, z) != 0) break;
    }
    double s = wl::secs_since(t0);
    check("W1", "plain-fnptr", "items", sink.n, want.n);
    check("W1", "plain-fnptr", "checksum", sink.sum, want.sum);
    check("W1", "plain-fnptr", "ordhash", sink.ordhash, want.ordhash);
    wl::print_result("W1", "plain-fnptr", want.n, s,
                     wl::kv("checksum", sink.sum) + wl::kv("ordhash", sink.ordhash) +
                         wl::kv("threads", 1));
}

enum class W1Mode { Item, ItemNoFuse, Batch };

/* fluxus-bench-static (the same driver with the engine linked in, not loaded from libfluxus.so)
 * runs W1 only, its configurations named with "-static": see BENCHMARK.md, "Where the callbacks
 * live". */
#ifdef FLUXUS_BENCH_STATIC
const std::string kLinkSuffix = "-static";
#else
const std::string kLinkSuffix = "";
#endif

void run_w1_one(const char *impl, W1Mode mode, const wl::W1Sink &want) {
    const uint64_t n = want.n;
    CountSrc src;
    src.n = n;
    wl::W1Sink sink;

    REGION_BEGIN();
    auto t0 = clk::now();
    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    CK(fluxus_runtime_new(&rt));
    CK(fluxus_pipeline_new(&p, rt, "w1"));
    if (mode == W1Mode::Batch) {
        CK(fluxus_pipeline_set_pull_source_batch(p, "src", count_pull_batch, &src, nullptr));
        CK(fluxus_pipeline_add_map_batch(nullptr, p, "s1", w1_map1_batch, nullptr, nullptr));
        CK(fluxus_pipeline_add_map_batch(nullptr, p, "s2", w1_map2_batch, nullptr, nullptr));
        CK(fluxus_pipeline_add_sink_batch(nullptr, p, "sink", w1_sink_batch, &sink, nullptr));
    } else {
        if (mode == W1Mode::ItemNoFuse) CK(fluxus_pipeline_set_fusion(p, 0));
        CK(fluxus_pipeline_set_pull_source(p, "src", count_pull, &src, nullptr));
        CK(fluxus_pipeline_add_map(nullptr, p, "s1", w1_map1, nullptr, nullptr));
        CK(fluxus_pipeline_add_map(nullptr, p, "s2", w1_map2, nullptr, nullptr));
        CK(fluxus_pipeline_add_sink(nullptr, p, "sink", w1_sink, &sink, nullptr));
    }
    CK(fluxus_pipeline_start(p));
    finish(p, "W1 wait");
    fluxus_pipeline_stats st = pipeline_stats(p);
    uint32_t workers = rt_workers(rt);
    CK(fluxus_pipeline_free(p));
    CK(fluxus_runtime_free(rt));
    REGION_END();
    double s = wl::secs_since(t0);

    check("W1", impl, "items", sink.n, n);
    check("W1", impl, "delivered", st.delivered, n);
    check("W1", impl, "checksum", sink.sum, want.sum);
    check("W1", impl, "ordhash", sink.ordhash, want.ordhash);
    wl::print_result("W1", impl, n, s,
                     wl::kv("checksum", sink.sum) + wl::kv("ordhash", sink.ordhash) +
                         wl::kv("threads", workers + 1) + wl::kv("workers", workers));
}

void run_w1(const Opts &o) {
    wl::W1Sink want;
    if (!o.list) {
        if (o.items) {
            want = wl::w1_expected(o.items);
        } else if (o.quick) {
            want = wl::w1_expected(wl::W1_N / 100);
        } else {
            want.sum = wl::W1_SUM;
            want.ordhash = wl::W1_ORDHASH;
            want.n = wl::W1_N;
        }
    }
    const std::string item = "fluxus-item" + kLinkSuffix,
                      nofuse = "fluxus-item-nofuse" + kLinkSuffix,
                      batch = "fluxus-batch" + kLinkSuffix;
    if (selected(o, item.c_str())) run_w1_one(item.c_str(), W1Mode::Item, want);
    if (selected(o, nofuse.c_str())) run_w1_one(nofuse.c_str(), W1Mode::ItemNoFuse, want);
    if (selected(o, batch.c_str())) run_w1_one(batch.c_str(), W1Mode::Batch, want);
    if (kLinkSuffix.empty() && selected(o, "plain-fnptr")) run_w1_plain_fnptr(want);
}

/* ------------------------------------------------------------------------------------------
 * W2 cpu-parallel
 * ---------------------------------------------------------------------------------------- */

int32_t w2_map(void *, uint64_t in, uint64_t *out) {
    *out = wl::w2_work(in);
    return 0;
}

void run_w2_plain(uint64_t n, uint64_t want) {
    auto t0 = clk::now();
    uint64_t sum = 0, eos = 0;
    for (uint64_t x = 0; x < n; ++x) {
        uint64_t h = wl::w2_work(x);
        eos += h == ~0ULL;
        sum += h;
    }
    double s = wl::secs_since(t0);
    check("W2", "plain", "checksum", sum, want);
    wl::print_result("W2", "plain", n, s,
                     wl::kv("checksum", sum) + wl::kv("workers", 1) + wl::kv("threads", 1) +
                         wl::kv("eos_collisions", eos));
}

/* Reference, not fluxus: two threads, each summing a contiguous half. It shows what this machine
 * gives two threads at the moment (the peers' static split reached 0.92). */
void run_w2_static(uint64_t n, uint64_t want) {
    auto t0 = clk::now();
    uint64_t part[2] = {0, 0};
    auto half = [&](int k) {
        uint64_t lo = k == 0 ? 0 : n / 2, hi = k == 0 ? n / 2 : n, s = 0;
        for (uint64_t x = lo; x < hi; ++x) s += wl::w2_work(x);
        part[k] = s;
    };
    std::thread t(half, 1);
    half(0);
    t.join();
    double s = wl::secs_since(t0);
    uint64_t sum = part[0] + part[1];
    check("W2", "plain-static", "checksum", sum, want);
    wl::print_result("W2", "plain-static", n, s,
                     wl::kv("checksum", sum) + wl::kv("workers", 2) + wl::kv("threads", 2));
}

void run_w2_fluxus(uint64_t n, uint64_t want, uint32_t stage_workers) {
    CountSrc src;
    src.n = n;
    SumSink sink;

    REGION_BEGIN();
    auto t0 = clk::now();
    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    uint32_t map = 0;
    CK(fluxus_runtime_new(&rt));
    CK(fluxus_pipeline_new(&p, rt, "w2"));
    CK(fluxus_pipeline_set_pull_source(p, "src", count_pull, &src, nullptr));
    CK(fluxus_pipeline_add_map(&map, p, "work", w2_map, nullptr, nullptr));
    CK(fluxus_stage_set_workers(p, map, stage_workers));
    CK(fluxus_stage_set_order(p, map, FLUXUS_ORDER_UNORDERED));
    CK(fluxus_pipeline_add_sink(nullptr, p, "sink", sum_sink, &sink, nullptr));
    CK(fluxus_pipeline_start(p));
    finish(p, "W2 wait");
    fluxus_pipeline_stats st = pipeline_stats(p);
    uint32_t workers = rt_workers(rt);
    CK(fluxus_pipeline_free(p));
    CK(fluxus_runtime_free(rt));
    REGION_END();
    double s = wl::secs_since(t0);

    check("W2", "fluxus", "items", sink.n, n);
    check("W2", "fluxus", "delivered", st.delivered, n);
    check("W2", "fluxus", "checksum", sink.sum, want);
    wl::print_result("W2", "fluxus", n, s,
                     wl::kv("checksum", sink.sum) + wl::kv("workers", stage_workers) +
                         wl::kv("threads", workers + 1));
}

void run_w2(const Opts &o) {
    const uint64_t n = o.items ? o.items : o.quick ? wl::W2_N / 100 : wl::W2_N;
    uint64_t want = 0;
    if (!o.list) want = o.quick || o.items ? wl::w2_expected(n) : wl::W2_SUM;
    if (selected(o, "plain")) run_w2_plain(n, want);
    if (selected(o, "plain-static")) run_w2_static(n, want);
    if (selected(o, "fluxus-w1")) run_w2_fluxus(n, want, 1);
    if (selected(o, "fluxus-w2")) run_w2_fluxus(n, want, 2);
}

/* ------------------------------------------------------------------------------------------
 * W3 io-tail: N items of simulated asynchronous I/O (lognormal latencies, heavy tail), at most
 * K = 256 in flight. Pull source 0..N-1 -> async map (in-flight limit K; its callback records
 * the start and arms a runtime timer of lat_us(i); the timer callback completes the item with
 * i) -> sink (checks). One runtime worker: the process runs the main thread (waiting), the
 * runtime's loop thread (timers) and one worker (source, async starts, sink).
 * ---------------------------------------------------------------------------------------- */

struct W3Ctx;
struct W3Item {
    W3Ctx *ctx = nullptr;
    uint64_t completion = 0;
    uint64_t start_ns = 0; /* async callback: the item's I/O starts (runtime clock) */
    uint64_t fire_ns = 0;  /* timer callback: the I/O "completes" */
    uint64_t sink_ns = 0;  /* sink consumed it */
};
struct W3Ctx {
    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    const uint64_t *lat = nullptr;
    uint64_t n = 0;
    std::vector<W3Item> items;
    /* written by the async callback (one task) and the sink; read by both */
    std::atomic<uint64_t> started{0}, consumed{0};
    uint64_t max_in_flight = 0; /* async callback only */
    std::atomic<uint64_t> start_errors{0}, complete_errors{0};
    /* sink only */
    std::vector<uint8_t> seen;
    std::vector<uint64_t> sink_order; /* indices in consumption order */
    uint64_t dups = 0, bad = 0, out_of_order = 0, next = 0, sum_lat = 0;
};

void w3_fire(void *u) {
    W3Item &x = *static_cast<W3Item *>(u);
    W3Ctx *c = x.ctx;
    fluxus_runtime_now_ns(c->rt, &x.fire_ns);
    const uint64_t i = (uint64_t)(&x - c->items.data());
    if (fluxus_pipeline_complete_async(c->p, x.completion, 0, i) != FLUXUS_OK)
        c->complete_errors.fetch_add(1, std::memory_order_relaxed);
}

int32_t w3_start(void *u, uint64_t i, uint64_t completion) {
    auto *c = static_cast<W3Ctx *>(u);
    if (i >= c->n) {
        c->start_errors.fetch_add(1, std::memory_order_relaxed);
        return FLUXUS_EINVAL;
    }
    W3Item &x = c->items[i];
    x.completion = completion;
    fluxus_runtime_now_ns(c->rt, &x.start_ns);
    uint64_t s = c->started.fetch_add(1, std::memory_order_relaxed) + 1;
    uint64_t in_flight = s - c->consumed.load(std::memory_order_acquire);
    if (in_flight > c->max_in_flight) c->max_in_flight = in_flight;
    int32_t rc = fluxus_runtime_call_after(nullptr, c->rt, c->lat[i] * 1000, w3_fire, &x, nullptr);
    if (rc != FLUXUS_OK) {
        c->start_errors.fetch_add(1, std::memory_order_relaxed);
        return rc;
    }
    return 0;
}

int32_t w3_sink(void *u, uint64_t i) {
    auto *c = static_cast<W3Ctx *>(u);
    if (i >= c->n) {
        ++c->bad;
        return 0;
    }
    fluxus_runtime_now_ns(c->rt, &c->items[i].sink_ns);
    if (c->seen[i]++) ++c->dups;
    if (i != c->next) ++c->out_of_order; /* counted in both modes; checked in ordered mode */
    c->next = i + 1;
    c->sum_lat += c->lat[i];
    c->sink_order.push_back(i);
    c->consumed.fetch_add(1, std::memory_order_release);
    return 0;
}

/* Threads: of this process, from /proc/self/status (0 if unreadable). */
uint64_t proc_threads() {
    FILE *f = std::fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long n = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "Threads: %llu", &n) == 1) break;
    std::fclose(f);
    return n;
}

/* Percentile of a sorted vector (q in [0,1]): element floor(q * size), as the peers' report. */
double pct(const std::vector<double> &v, double q) {
    if (v.empty()) return 0;
    size_t i = (size_t)(q * (double)v.size());
    return v[std::min(i, v.size() - 1)];
}
double mean_of(const std::vector<double> &v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0 : s / (double)v.size();
}

/* Replay of a W3 run from its measured per-item delays, to say where the time over the ideal
 * went (--detail). Per item: a = admission delay (start - the consumption that freed its slot;
 * for the first K items: start - t0), ov = timer overshoot, h = hand-off (consumed - max(ready,
 * previous consumption)). The replay runs the admission rule of w3_ideal_s with those delays
 * added; with all of them it reproduces the measured end (up to the sink's consumption order in
 * unordered mode), with some of them zeroed it shows what they cost. Times in us from t0. */
struct W3Delays {
    std::vector<double> a, ov, h;
};
double w3_replay_us(const std::vector<uint64_t> &lat, bool ordered, const W3Delays &d, bool use_a,
                    bool use_ov, bool use_h) {
    const uint64_t n = lat.size(), K = (uint64_t)wl::W3_MAX_INFLIGHT;
    auto A = [&](uint64_t i) { return use_a || i < K ? d.a[i] : 0.0; }; /* setup always kept */
    auto OV = [&](uint64_t i) { return use_ov ? d.ov[i] : 0.0; };
    auto H = [&](uint64_t i) { return use_h ? d.h[i] : 0.0; };
    if (ordered) {
        std::vector<double> cons(n);
        for (uint64_t i = 0; i < n; ++i) {
            double st = (i >= K ? cons[i - K] : 0.0) + A(i);
            double ready = st + (double)lat[i] + OV(i);
            cons[i] = std::max(ready, i ? cons[i - 1] : 0.0) + H(i);
        }
        return n ? cons[n - 1] : 0;
    }
    /* unordered: a min-heap of ready times; the sink takes the earliest ready item. */
    using Ev = std::pair<double, uint64_t>;
    std::priority_queue<Ev, std::vector<Ev>, std::greater<Ev>> ready;
    uint64_t next = 0, consumed = 0;
    double last = 0;
    for (; next < std::min(n, K); ++next) ready.push({A(next) + (double)lat[next] + OV(next), next});
    while (!ready.empty()) {
        Ev e = ready.top();
        ready.pop();
        last = std::max(e.first, last) + H(e.second);
        ++consumed;
        if (next < n) { /* the slot freed by this consumption admits the next index */
            double st = last + A(next);
            ready.push({st + (double)lat[next] + OV(next), next});
            ++next;
        }
    }
    (void)consumed;
    return last;
}

/* Distribution summary "label: min p50 p90 p99 p99.9 max mean" on a '#' line (--detail). */
void print_dist(const char *impl, const char *label, std::vector<double> v) {
    std::sort(v.begin(), v.end());
    std::printf("# W3 %s %s (us, n=%zu): min=%.1f p10=%.1f p50=%.1f p90=%.1f p99=%.1f "
                "p99.9=%.1f max=%.1f mean=%.2f\n",
                impl, label, v.size(), v.empty() ? 0 : v.front(), pct(v, 0.10), pct(v, 0.50),
                pct(v, 0.90), pct(v, 0.99), pct(v, 0.999), v.empty() ? 0 : v.back(), mean_of(v));
}

void run_w3_one(const Opts &o, const char *impl, bool ordered, const std::vector<uint64_t> &lat,
                uint64_t want_sum, double ideal) {
    const uint64_t n = lat.size();
    const uint32_t K = (uint32_t)wl::W3_MAX_INFLIGHT;
    W3Ctx c;
    c.lat = lat.data();
    c.n = n;
    c.items.resize(n);
    for (W3Item &x : c.items) x.ctx = &c;
    c.seen.assign(n, 0);
    c.sink_order.reserve(n);
    CountSrc src;
    src.n = n;

    auto t0 = clk::now();
    uint64_t t0ns = wl::now_ns(); /* steady_clock and the runtime's clock are CLOCK_MONOTONIC */
    uint32_t stage = 0;
    CK(fluxus_runtime_new(&c.rt));
    CK(fluxus_runtime_set_workers(c.rt, 1));
    CK(fluxus_pipeline_new(&c.p, c.rt, "w3"));
    CK(fluxus_pipeline_set_pull_source(c.p, "src", count_pull, &src, nullptr));
    CK(fluxus_pipeline_add_async_map(&stage, c.p, "io", w3_start, &c, nullptr));
    CK(fluxus_stage_set_in_flight(c.p, stage, K));
    CK(fluxus_stage_set_order(c.p, stage, ordered ? FLUXUS_ORDER_ORDERED : FLUXUS_ORDER_UNORDERED));
    CK(fluxus_pipeline_add_sink(nullptr, c.p, "sink", w3_sink, &c, nullptr));
    CK(fluxus_pipeline_start(c.p));
    /* Wait, sampling the process's thread count every 50 ms (and once right after start). */
    uint64_t threads = proc_threads();
    for (;;) {
        int32_t rc = fluxus_pipeline_wait(c.p, 50);
        if (rc == FLUXUS_OK) break;
        if (rc != FLUXUS_ETIMEDOUT) die_api("W3 wait", rc, __LINE__);
        threads = std::max(threads, proc_threads());
        if (wl::secs_since(t0) > 120) { /* a lost completion would otherwise hang the run */
            std::fprintf(stderr,
                         "fluxus-bench: W3 %s not finished after 120 s: started=%" PRIu64
                         " consumed=%" PRIu64 " start_errors=%" PRIu64 " complete_errors=%" PRIu64
                         "\n",
                         impl, c.started.load(), c.consumed.load(), c.start_errors.load(),
                         c.complete_errors.load());
            std::exit(1);
        }
    }
    fluxus_pipeline_stats st = pipeline_stats(c.p);
    fluxus_stage_stats ast = stage_stats(c.p, stage);
    uint32_t workers = rt_workers(c.rt);
    CK(fluxus_pipeline_free(c.p));
    CK(fluxus_runtime_free(c.rt));
    double s = wl::secs_since(t0);
    uint64_t tend = t0ns + (uint64_t)(s * 1e9);

    const char *w = "W3";
    check(w, impl, "items", c.sink_order.size(), n);
    check(w, impl, "delivered", st.delivered, n);
    check(w, impl, "duplicates", c.dups, 0);
    check(w, impl, "bad_index", c.bad, 0);
    uint64_t unique = 0;
    for (uint8_t b : c.seen) unique += b != 0;
    check(w, impl, "unique", unique, n);
    check(w, impl, "sum_lat_us", c.sum_lat, want_sum);
    if (ordered) check(w, impl, "out_of_order", c.out_of_order, 0);
    check(w, impl, "start_errors", c.start_errors.load(), 0);
    check(w, impl, "complete_errors", c.complete_errors.load(), 0);
    if (c.max_in_flight > K) check(w, impl, "max_in_flight_over_K", c.max_in_flight, K);
    if (threads != 3)
        std::fprintf(stderr, "fluxus-bench: note: W3 %s ran with %" PRIu64 " threads (want 3)\n",
                     impl, threads);

    /* Overshoot: actual wait (timer callback - async start, runtime clock) - nominal latency. */
    std::vector<double> ov(n), f2s, admit, handoff;
    for (uint64_t i = 0; i < n; ++i)
        ov[i] = (double)(c.items[i].fire_ns - c.items[i].start_ns) / 1e3 - (double)lat[i];
    std::vector<double> ovs = ov;
    std::sort(ovs.begin(), ovs.end());
    /* Engine hand-off: consumed - max(ready, previous consumption), in consumption order
     * (the sink is serial, so it cannot take an item before it finished the previous one). */
    const std::vector<uint64_t> &so = c.sink_order;
    for (size_t k = 0; k < so.size(); ++k) {
        const W3Item &x = c.items[so[k]];
        f2s.push_back((double)(x.sink_ns - x.fire_ns) / 1e3);
        uint64_t ready = std::max(x.fire_ns, k ? c.items[so[k - 1]].sink_ns : 0);
        handoff.push_back((double)(x.sink_ns - ready) / 1e3);
    }
    /* Admission: item j (the source is in index order) may start once K items were consumed
     * in all, i.e. at the (j-K)-th consumption. */
    for (uint64_t j = K; j < n && j - K < so.size(); ++j)
        admit.push_back(
            ((double)c.items[j].start_ns - (double)c.items[so[j - K]].sink_ns) / 1e3);
    double setup_us = n ? (double)(c.items[0].start_ns - t0ns) / 1e3 : 0;
    double last_sink_ms = so.empty() ? 0 : (double)(c.items[so.back()].sink_ns - t0ns) / 1e6;
    double teardown_us = so.empty() ? 0 : ((double)tend - (double)c.items[so.back()].sink_ns) / 1e3;

    const double little = (double)c.sum_lat / 1e6 / K;
    std::string extra = wl::kvs("mode", ordered ? "ordered" : "unordered") +
                        wl::kvs("mech", "async_map+runtime_timer") + wl::kv("unique", unique) +
                        wl::kv("out_of_order", c.out_of_order) + wl::kv("sum_lat_us", c.sum_lat) +
                        wl::kvd("little_bound_s", little) + wl::kvd("eff", little / s);
    if (ideal > 0) extra += wl::kvd("ideal_s", ideal) + wl::kvd("eff_ideal", ideal / s);
    extra += wl::kvd("overshoot_mean_us", mean_of(ov)) +
             wl::kvd("overshoot_p99_us", pct(ovs, 0.99)) + wl::kvd("overshoot_min_us", ovs[0]) +
             wl::kvd("overshoot_p50_us", pct(ovs, 0.50)) +
             wl::kvd("overshoot_max_us", ovs.back()) + wl::kv("in_flight", K) +
             wl::kv("max_in_flight", c.max_in_flight) +
             wl::kvd("handoff_mean_us", mean_of(handoff)) +
             wl::kvd("admit_mean_us", mean_of(admit)) + wl::kvd("setup_us", setup_us) +
             wl::kvd("last_sink_ms", last_sink_ms) + wl::kvd("teardown_us", teardown_us) +
             wl::kv("late", ast.late) + wl::kv("workers", workers) + wl::kv("threads", threads);
    wl::print_result(w, impl, n, s, extra);
    if (!o.dump.empty()) {
        std::string path = o.dump + "-" + impl + ".tsv";
        FILE *f = std::fopen(path.c_str(), "w");
        if (!f) {
            std::fprintf(stderr, "fluxus-bench: cannot write %s\n", path.c_str());
        } else {
            /* i, lat_us, start, fire, sink (ns since t0), consumption rank */
            std::vector<uint64_t> rank(n, 0);
            for (size_t k = 0; k < so.size(); ++k) rank[so[k]] = k;
            std::fprintf(f, "i\tlat_us\tstart_ns\tfire_ns\tsink_ns\trank\n");
            for (uint64_t i = 0; i < n; ++i)
                std::fprintf(f, "%" PRIu64 "\t%" PRIu64 "\t%" PRIu64 "\t%" PRIu64 "\t%" PRIu64
                                "\t%" PRIu64 "\n",
                             i, lat[i], c.items[i].start_ns - t0ns, c.items[i].fire_ns - t0ns,
                             c.items[i].sink_ns - t0ns, rank[i]);
            std::fclose(f);
        }
    }
    if (o.detail) {
        print_dist(impl, "overshoot", ov);
        print_dist(impl, "fire_to_sink", f2s);
        print_dist(impl, "handoff(ready->consumed)", handoff);
        print_dist(impl, "admit(slot free->start)", admit);
        /* Replay with measured delays, then without each kind of delay. */
        W3Delays d;
        d.a.assign(n, 0);
        d.ov = ov;
        d.h.assign(n, 0);
        for (uint64_t j = 0; j < n; ++j)
            d.a[j] = j < K ? (double)(c.items[j].start_ns - t0ns) / 1e3 : admit[j - K];
        for (size_t k = 0; k < so.size(); ++k) d.h[so[k]] = handoff[k];
        if (so.size() == n && admit.size() + K == n) {
            std::printf("# W3 %s replay end_ms (measured delays added to the ideal schedule): "
                        "measured_last_sink=%.3f all=%.3f no_admit=%.3f no_overshoot=%.3f "
                        "no_handoff=%.3f none(setup only)=%.3f ideal=%.3f\n",
                        impl, last_sink_ms, w3_replay_us(lat, ordered, d, true, true, true) / 1e3,
                        w3_replay_us(lat, ordered, d, false, true, true) / 1e3,
                        w3_replay_us(lat, ordered, d, true, false, true) / 1e3,
                        w3_replay_us(lat, ordered, d, true, true, false) / 1e3,
                        w3_replay_us(lat, ordered, d, false, false, false) / 1e3,
                        wl::w3_ideal_s(lat, ordered) * 1e3);
        }
        /* The measured critical path, walked back from the last consumption: an item's
         * consumption waited either for its own timer (then its hand-off, overshoot, latency
         * and admission delay are on the path, and the path goes on to the consumption that
         * freed its slot) or for the previous consumption (the path goes on there, adding only
         * the hand-off). wall = setup + admit + lat + overshoot + hand-off + teardown. */
        if (so.size() == n && n > 0) {
            std::vector<uint64_t> rank(n, 0);
            for (size_t k = 0; k < n; ++k) rank[so[k]] = k;
            double s_lat = 0, s_ov = 0, s_h = 0, s_hw = 0, s_a = 0, setup_path = 0;
            uint64_t hops = 0, waits = 0;
            size_t k = n - 1;
            for (;;) {
                uint64_t x = so[k];
                const W3Item &it = c.items[x];
                s_h += handoff[k];
                if (k > 0 && it.fire_ns < c.items[so[k - 1]].sink_ns) {
                    s_hw += handoff[k];
                    ++waits; /* waited for the previous consumption */
                    --k;
                    continue;
                }
                ++hops;
                s_ov += ov[x];
                s_lat += (double)lat[x];
                if (x < K) {
                    setup_path = (double)(it.start_ns - t0ns) / 1e3;
                    break;
                }
                s_a += admit[x - K];
                k = rank[so[x - K]]; /* the consumption that freed x's slot */
            }
            std::printf("# W3 %s critical path: items_on_path=%" PRIu64 " waits_on_previous=%" PRIu64
                        " setup_us=%.1f admit_sum_us=%.1f lat_sum_ms=%.3f (ideal_ms=%.3f)"
                        " overshoot_sum_us=%.1f handoff_sum_us=%.1f (after own timer %.1f,"
                        " after previous consumption %.1f) teardown_us=%.1f wall_ms=%.3f\n",
                        impl, hops, waits, setup_path, s_a, s_lat / 1e3,
                        wl::w3_ideal_s(lat, ordered) * 1e3, s_ov, s_h, s_h - s_hw, s_hw,
                        teardown_us, s * 1e3);
        }
        /* Where the end of the run came from: the last item consumed. */
        if (!so.empty()) {
            uint64_t li = so.back();
            const W3Item &x = c.items[li];
            std::printf("# W3 %s last consumed: item %" PRIu64 " lat_us=%" PRIu64
                        " start_ms=%.3f fire_ms=%.3f sink_ms=%.3f end_ms=%.3f\n",
                        impl, li, lat[li], (double)(x.start_ns - t0ns) / 1e6,
                        (double)(x.fire_ns - t0ns) / 1e6, (double)(x.sink_ns - t0ns) / 1e6,
                        s * 1e3);
        }
        /* Overshoot histogram in 25 us buckets (the last one open-ended). */
        std::string h;
        std::vector<uint64_t> b(12, 0);
        for (double v : ov) {
            long k = v < 0 ? 0 : (long)(v / 25.0);
            ++b[(size_t)std::min<long>(k, (long)b.size() - 1)];
        }
        for (size_t k = 0; k < b.size(); ++k) {
            char t[64];
            std::snprintf(t, sizeof t, "%s%zu%s:%" PRIu64, k ? " " : "", k * 25,
                          k + 1 < b.size() ? "" : "+", b[k]);
            h += t;
        }
        std::printf("# W3 %s overshoot histogram (25 us buckets): %s\n", impl, h.c_str());
        std::fflush(stdout);
    }
}

void run_w3(const Opts &o) {
    /* --quick: N/10 (2000 items, so the in-flight limit still binds), expected sum by a loop,
     * no ideal (the published ideal is for the full N). */
    const uint64_t n = o.quick ? wl::W3_N / 10 : wl::W3_N;
    std::vector<uint64_t> lat;
    uint64_t want = 0;
    double ideal_u = 0, ideal_o = 0;
    if (!o.list) {
        lat = wl::w3_latencies(n);
        for (uint64_t l : lat) want += l;
        if (!o.quick) {
            check("W3", "table", "sum_lat_us", want, wl::W3_SUM_LAT_US);
            ideal_u = wl::w3_ideal_s(lat, false);
            ideal_o = wl::w3_ideal_s(lat, true);
            /* The simulation must reproduce the published figures (4 decimals). */
            check("W3", "table", "ideal_unordered_100us",
                  (uint64_t)std::llround(ideal_u * 1e4), (uint64_t)std::llround(wl::W3_IDEAL_UNORDERED_S * 1e4));
            check("W3", "table", "ideal_ordered_100us", (uint64_t)std::llround(ideal_o * 1e4),
                  (uint64_t)std::llround(wl::W3_IDEAL_ORDERED_S * 1e4));
        }
    }
    if (selected(o, "fluxus-async-unordered"))
        run_w3_one(o, "fluxus-async-unordered", false, lat, want, ideal_u);
    if (selected(o, "fluxus-async-ordered"))
        run_w3_one(o, "fluxus-async-ordered", true, lat, want, ideal_o);
}

/* ------------------------------------------------------------------------------------------
 * W4 dedup
 * ---------------------------------------------------------------------------------------- */

struct KeySrc {
    uint64_t next = 0, n = 0;
};
int32_t key_pull(void *u, uint64_t *item) {
    auto *s = static_cast<KeySrc *>(u);
    if (s->next >= s->n) return FLUXUS_PULL_END;
    *item = wl::w4_key(s->next++);
    return FLUXUS_PULL_ITEM;
}
int32_t key_pull_batch(void *u, uint64_t *items, uint32_t cap, uint32_t *count) {
    auto *s = static_cast<KeySrc *>(u);
    uint64_t left = s->n - s->next;
    uint32_t k = left < cap ? (uint32_t)left : cap;
    for (uint32_t i = 0; i < k; ++i) items[i] = wl::w4_key(s->next + i);
    s->next += k;
    *count = k;
    return s->next >= s->n ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

void run_w4_one(const char *impl, uint64_t n, const wl::W4Expected &want, uint32_t dedup_workers,
                bool batch) {
    KeySrc src;
    src.n = n;
    SumSink sink;

    REGION_BEGIN();
    auto t0 = clk::now();
    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    uint32_t dedup = 0;
    CK(fluxus_runtime_new(&rt));
    CK(fluxus_pipeline_new(&p, rt, "w4"));
    if (batch)
        CK(fluxus_pipeline_set_pull_source_batch(p, "keys", key_pull_batch, &src, nullptr));
    else
        CK(fluxus_pipeline_set_pull_source(p, "keys", key_pull, &src, nullptr));
    CK(fluxus_pipeline_add_dedup(&dedup, p, "dedup"));
    /* With 2 workers the dedup stage shards keys by hash and switches itself to
     * FLUXUS_ORDER_PER_KEY; the sink keeps its single worker, which the API allows (only a
     * multi-worker sink must be per-key), so the sink's sums need no synchronisation. */
    if (dedup_workers != 1) CK(fluxus_stage_set_workers(p, dedup, dedup_workers));
    if (batch)
        CK(fluxus_pipeline_add_sink_batch(nullptr, p, "sink", sum_sink_batch, &sink, nullptr));
    else
        CK(fluxus_pipeline_add_sink(nullptr, p, "sink", sum_sink, &sink, nullptr));
    CK(fluxus_pipeline_start(p));
    finish(p, "W4 wait");
    fluxus_pipeline_stats st = pipeline_stats(p);
    fluxus_stage_stats dst = stage_stats(p, dedup);
    uint32_t workers = rt_workers(rt);
    CK(fluxus_pipeline_free(p));
    CK(fluxus_runtime_free(rt));
    REGION_END();
    double s = wl::secs_since(t0);

    check("W4", impl, "unique", sink.n, want.unique);
    check("W4", impl, "checksum", sink.sum, want.sum);
    check("W4", impl, "delivered", st.delivered, want.unique);
    check("W4", impl, "filtered", st.filtered, n - want.unique);
    check("W4", impl, "dedup_keys", dst.dedup_keys, want.unique);
    wl::print_result("W4", impl, n, s,
                     wl::kv("checksum", sink.sum) + wl::kv("unique", sink.n) +
                         wl::kv("dedup_workers", dedup_workers) + wl::kv("threads", workers + 1));
}

/* Reference, not fluxus: the bare table issue #4 describes (about 25 M keys/s on its machine):
 * single-threaded open addressing over keys already in memory, linear probing, batched and
 * prefetched (hashes computed 16 keys ahead and their slots prefetched), at most 7/8 full,
 * growing by doubling from 64 Ki slots (not pre-sized). Keys are stored + 1, so 0 marks an
 * empty slot. Timed from after the key array is filled. */
void run_w4_plain_oa(uint64_t n, const wl::W4Expected &want) {
    std::vector<uint64_t> keys(n);
    for (uint64_t i = 0; i < n; ++i) keys[i] = wl::w4_key(i);
    auto t0 = clk::now();
    size_t cap = size_t(1) << 16, mask = cap - 1, size = 0;
    std::vector<uint64_t> table(cap, 0);
    constexpr size_t kAhead = 16;
    uint64_t unique = 0, sum = 0;
    auto slot_of = [](uint64_t k) { return wl::mix64(k); };
    for (size_t i = 0; i < n; ++i) {
        if (i + kAhead < n) __builtin_prefetch(&table[slot_of(keys[i + kAhead]) & mask], 1);
        if ((size + 1) * 8 > cap * 7) {  // grow before passing 7/8
            std::vector<uint64_t> bigger(cap * 2, 0);
            size_t bmask = cap * 2 - 1;
            for (uint64_t v : table) {
                if (!v) continue;
                size_t j = slot_of(v - 1) & bmask;
                while (bigger[j]) j = (j + 1) & bmask;
                bigger[j] = v;
            }
            table.swap(bigger);
            cap *= 2;
            mask = bmask;
        }
        uint64_t k = keys[i], v = k + 1;
        size_t j = slot_of(k) & mask;
        while (table[j] && table[j] != v) j = (j + 1) & mask;
        if (!table[j]) {
            table[j] = v;
            ++size;
            ++unique;
            sum += k;
        }
    }
    double s = wl::secs_since(t0);
    check("W4", "plain-oa", "unique", unique, want.unique);
    check("W4", "plain-oa", "checksum", sum, want.sum);
    wl::print_result("W4", "plain-oa", n, s,
                     wl::kv("checksum", sum) + wl::kv("unique", unique) + wl::kv("threads", 1));
}

void run_w4(const Opts &o) {
    const uint64_t n = o.items ? o.items : o.quick ? wl::W4_N / 100 : wl::W4_N;
    wl::W4Expected want;
    if (!o.list) {
        if (o.quick || o.items) {
            want = wl::w4_expected(n);
#ifdef __GLIBC__
            /* The check's set has just freed ~n small nodes into malloc's fast bins; glibc
             * consolidates them at the next large allocation, which would be the runtime's,
             * inside the timed region (under callgrind ~70 instructions per item). Do it now. */
            malloc_trim(0);
#endif
        } else {
            want.unique = wl::W4_UNIQUE;
            want.sum = wl::W4_SUM;
        }
    }
    if (selected(o, "fluxus-dedup")) run_w4_one("fluxus-dedup", n, want, 1, false);
    if (selected(o, "fluxus-dedup-2w")) run_w4_one("fluxus-dedup-2w", n, want, 2, false);
    if (selected(o, "fluxus-dedup-batch")) run_w4_one("fluxus-dedup-batch", n, want, 1, true);
    if (selected(o, "plain-oa")) run_w4_plain_oa(n, want);
}

/* ------------------------------------------------------------------------------------------
 * slowsink: a source 1000x faster than the sink. Memory must stay flat (backpressure).
 * The source spends ~50 ns per item (14 mix64 rounds at the calibrated 3.6 ns), the sink
 * busy-waits 50 us per item. Every 0.5 s the main thread samples RSS and the queue depths.
 * ---------------------------------------------------------------------------------------- */

constexpr uint64_t SLOW_SINK_NS = 50000;
constexpr int SLOW_SRC_ROUNDS = 14;

struct SlowSrc {
    uint64_t next = 0;
    uint64_t end_ns = 0;
    uint64_t fold = 0;
};
int32_t slow_pull(void *u, uint64_t *item) {
    auto *s = static_cast<SlowSrc *>(u);
    if (wl::now_ns() >= s->end_ns) return FLUXUS_PULL_END;
    uint64_t h = s->next;
    for (int r = 0; r < SLOW_SRC_ROUNDS; ++r) h = wl::mix64(h + wl::GOLDEN);
    s->fold ^= h;
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}
int32_t slow_ident(void *, uint64_t in, uint64_t *out) {
    *out = in;
    return 0;
}
int32_t slow_sink(void *u, uint64_t x) {
    spin_until_ns(wl::now_ns() + SLOW_SINK_NS);
    return sum_sink(u, x);
}

void run_slowsink_one(const Opts &o, const char *impl, bool fuse) {
    const double dur = o.duration > 0 ? o.duration : (o.quick ? 1.0 : 10.0);
    const double warm = o.quick ? 0.5 : 1.0;
    SlowSrc src;
    SumSink sink;

    auto t0 = clk::now();
    uint64_t t0ns = wl::now_ns();
    src.end_ns = t0ns + (uint64_t)(dur * 1e9);
    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    CK(fluxus_runtime_new(&rt));
    CK(fluxus_pipeline_new(&p, rt, "slowsink"));
    if (!fuse) CK(fluxus_pipeline_set_fusion(p, 0));
    CK(fluxus_pipeline_set_pull_source(p, "src", slow_pull, &src, nullptr));
    CK(fluxus_pipeline_add_map(nullptr, p, "map", slow_ident, nullptr, nullptr));
    CK(fluxus_pipeline_add_sink(nullptr, p, "sink", slow_sink, &sink, nullptr));
    uint32_t nstages = 0;
    CK(fluxus_pipeline_get_stage_count(&nstages, p));
    uint64_t rss_start = rss_kb();
    CK(fluxus_pipeline_start(p));

    /* Warm-up: the samples of the first second (quick: the first half second). */
    uint64_t rss_warm = 0, rss_max_after = 0, rss_last = 0, max_in_flight = 0;
    for (int k = 1;; ++k) {
        uint64_t due = t0ns + (uint64_t)k * 500000000ULL;
        uint64_t now = wl::now_ns();
        uint32_t ms = due > now ? (uint32_t)((due - now + 999999) / 1000000) : 0;
        int32_t rc = fluxus_pipeline_wait(p, ms);
        if (rc == FLUXUS_OK) break;
        if (rc != FLUXUS_ETIMEDOUT) die_api("slowsink wait", rc, __LINE__);
        double t = wl::secs_since(t0);
        uint64_t rss = rss_kb();
        fluxus_pipeline_stats ps = pipeline_stats(p);
        std::string q;
        for (uint32_t i = 0; i < nstages; ++i) {
            fluxus_stage_stats ss = stage_stats(p, i);
            q += (i ? "," : "") + std::to_string(ss.queue_depth);
        }
        max_in_flight = std::max(max_in_flight, ps.in_flight);
        if (t <= warm + 0.01)
            rss_warm = std::max(rss_warm, rss);
        else
            rss_max_after = std::max(rss_max_after, rss);
        std::printf("workload=slowsink-sample impl=%s t_s=%.2f rss_now_kb=%" PRIu64
                    " in_flight=%" PRIu64 " admitted=%" PRIu64 " delivered=%" PRIu64
                    " queue_depths=%s\n",
                    impl, t, rss, ps.in_flight, ps.admitted, ps.delivered, q.c_str());
        std::fflush(stdout);
    }
    double drain_s = wl::secs_since(t0) - dur;
    rss_last = rss_kb(); /* at the end: pipeline finished, not yet freed */
    fluxus_pipeline_stats st = pipeline_stats(p);
    std::string peaks, caps;
    for (uint32_t i = 0; i < nstages; ++i) {
        fluxus_stage_stats ss = stage_stats(p, i);
        peaks += (i ? "," : "") + std::to_string(ss.queue_peak);
        caps += (i ? "," : "") + std::to_string(ss.queue_capacity);
    }
    uint32_t workers = rt_workers(rt);
    CK(fluxus_pipeline_free(p));
    CK(fluxus_runtime_free(rt));
    double s = wl::secs_since(t0);

    const uint64_t produced = src.next;
    check("slowsink", impl, "delivered", sink.n, produced);
    check("slowsink", impl, "admitted", st.admitted, produced);
    check("slowsink", impl, "checksum", sink.sum, produced ? produced * (produced - 1) / 2 : 0);
    wl::print_result("slowsink", impl, sink.n, s,
                     wl::kv("checksum", sink.sum) + wl::kv("rss_start_kb", rss_start) +
                         wl::kv("rss_warm_kb", rss_warm) +
                         wl::kv("rss_max_after_warm_kb", rss_max_after) +
                         wl::kv("rss_end_kb", rss_last) + wl::kv("max_in_flight", max_in_flight) +
                         wl::kvs("queue_peaks", peaks) + wl::kvs("queue_caps", caps) +
                         wl::kvd("drain_s", drain_s) + wl::kv("threads", workers + 1) +
                         wl::kv("sink_ns_per_item", SLOW_SINK_NS));
}

void run_slowsink(const Opts &o) {
    if (selected(o, "fluxus")) run_slowsink_one(o, "fluxus", true);
    if (selected(o, "fluxus-nofuse")) run_slowsink_one(o, "fluxus-nofuse", false);
}

/* ------------------------------------------------------------------------------------------
 * latency: a host thread pushes single items at a fixed rate into map -> map -> sink; the
 * sink records (now - push time) per item id.
 * ---------------------------------------------------------------------------------------- */

struct LatCtx {
    std::vector<uint64_t> t_push;
    std::vector<uint64_t> lat;
    uint64_t n = 0;
    uint64_t bad = 0;
};
int32_t lat_map1(void *, uint64_t in, uint64_t *out) {
    *out = in + 1;
    return 0;
}
int32_t lat_map2(void *, uint64_t in, uint64_t *out) {
    *out = in - 1;
    return 0;
}
int32_t lat_sink(void *u, uint64_t id) {
    auto *c = static_cast<LatCtx *>(u);
    uint64_t now = wl::now_ns();
    if (id >= c->lat.size()) {
        ++c->bad;
        return 0;
    }
    c->lat[id] = now - c->t_push[id];
    ++c->n;
    return 0;
}

double pct_us(const std::vector<uint64_t> &sorted, double q) {
    if (sorted.empty()) return 0;
    size_t i = (size_t)(q * (double)sorted.size());
    if (i >= sorted.size()) i = sorted.size() - 1;
    return (double)sorted[i] / 1000.0;
}

void run_latency_one(const Opts &o, const char *impl, uint32_t rt_workers_n, uint64_t rate) {
    const double dur = o.quick ? 0.2 : 2.0;
    const uint64_t n = (uint64_t)(dur * (double)rate);
    const uint64_t warm = std::min<uint64_t>(1000, n / 20); /* first items: thread wake-up */
    LatCtx c;
    c.t_push.assign(n, 0);
    c.lat.assign(n, 0);
    const uint64_t interval = 1000000000ULL / rate;

    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    CK(fluxus_runtime_new(&rt));
    if (rt_workers_n) CK(fluxus_runtime_set_workers(rt, rt_workers_n));
    CK(fluxus_pipeline_new(&p, rt, "latency"));
    CK(fluxus_pipeline_set_push_source(p, "push"));
    CK(fluxus_pipeline_add_map(nullptr, p, "m1", lat_map1, nullptr, nullptr));
    CK(fluxus_pipeline_add_map(nullptr, p, "m2", lat_map2, nullptr, nullptr));
    CK(fluxus_pipeline_add_sink(nullptr, p, "sink", lat_sink, &c, nullptr));
    CK(fluxus_pipeline_start(p));

    uint64_t start = wl::now_ns() + 2000000; /* 2 ms to let the threads settle */
    uint64_t max_behind = 0;
    for (uint64_t i = 0; i < n; ++i) {
        uint64_t target = start + i * interval;
        for (;;) {
            uint64_t now = wl::now_ns();
            if (now >= target) {
                max_behind = std::max(max_behind, now - target);
                break;
            }
            uint64_t left = target - now;
            if (left > 150000) {
                struct timespec ts = {0, (long)(left - 100000)};
                nanosleep(&ts, nullptr);
            } else {
                cpu_relax();
            }
        }
        c.t_push[i] = wl::now_ns();
        CK(fluxus_pipeline_push(p, i, UINT32_MAX));
    }
    uint64_t push_end = wl::now_ns();
    CK(fluxus_pipeline_close_input(p));
    finish(p, "latency wait");
    uint32_t workers = rt_workers(rt);
    CK(fluxus_pipeline_free(p));
    CK(fluxus_runtime_free(rt));

    check("latency", impl, "delivered", c.n, n);
    check("latency", impl, "bad_ids", c.bad, 0);
    std::vector<uint64_t> v(c.lat.begin() + (long)warm, c.lat.end());
    std::sort(v.begin(), v.end());
    double mean = 0;
    for (uint64_t x : v) mean += (double)x;
    mean = v.empty() ? 0 : mean / (double)v.size() / 1000.0;
    double s = (double)(push_end - start) / 1e9;
    wl::print_result("latency", impl, n, s,
                     wl::kv("rate", rate) + wl::kv("measured", v.size()) + wl::kvd("mean_us", mean) +
                         wl::kvd("p50_us", pct_us(v, 0.50)) + wl::kvd("p90_us", pct_us(v, 0.90)) +
                         wl::kvd("p95_us", pct_us(v, 0.95)) + wl::kvd("p99_us", pct_us(v, 0.99)) +
                         wl::kvd("p999_us", pct_us(v, 0.999)) +
                         wl::kvd("max_us", v.empty() ? 0 : (double)v.back() / 1000.0) +
                         wl::kvd("pusher_max_behind_us", (double)max_behind / 1000.0) +
                         wl::kv("threads", workers + 1));
}

void run_latency(const Opts &o) {
    /* Default runtime (one worker per CPU), and one worker: on 2 vCPUs the pacing host thread
     * plus two spinning workers oversubscribe the CPUs. */
    struct Cfg {
        const char *impl;
        uint32_t workers;
    };
    const Cfg cfgs[] = {{"fluxus", 0}, {"fluxus-w1", 1}};
    const uint64_t rates[] = {10000, 100000, 1000000};
    for (const Cfg &c : cfgs) {
        if (!selected(o, c.impl)) continue;
        if (o.rate) {
            run_latency_one(o, c.impl, c.workers, o.rate);
            continue;
        }
        for (uint64_t r : rates) run_latency_one(o, c.impl, c.workers, r);
    }
}

/* ------------------------------------------------------------------------------------------
 * lifecycle: build + start + run 100 items + drain + free a small pipeline, many times.
 * ---------------------------------------------------------------------------------------- */

constexpr uint32_t LIFE_ITEMS = 100;

/* One lifecycle on an existing runtime; returns its duration in ns. */
uint64_t lifecycle_once(fluxus_runtime *rt, bool push, const uint64_t *items) {
    SumSink sink;
    CountSrc src;
    src.n = LIFE_ITEMS;
    uint64_t t0 = wl::now_ns();
    fluxus_pipeline *p = nullptr;
    CK(fluxus_pipeline_new(&p, rt, "life"));
    if (push)
        CK(fluxus_pipeline_set_push_source(p, "push"));
    else
        CK(fluxus_pipeline_set_pull_source(p, "pull", count_pull, &src, nullptr));
    CK(fluxus_pipeline_add_map(nullptr, p, "m", w1_map1, nullptr, nullptr));
    CK(fluxus_pipeline_add_sink(nullptr, p, "sink", sum_sink, &sink, nullptr));
    CK(fluxus_pipeline_start(p));
    if (push) {
        uint32_t pushed = 0;
        CK(fluxus_pipeline_push_many(&pushed, p, items, LIFE_ITEMS, UINT32_MAX));
        if (pushed != LIFE_ITEMS) die_api("push_many (short)", FLUXUS_OK, __LINE__);
        CK(fluxus_pipeline_drain(p, UINT32_MAX));
    } else {
        finish(p, "lifecycle wait");
    }
    CK(fluxus_pipeline_free(p));
    uint64_t dt = wl::now_ns() - t0;
    /* sum of (i+1) for i < 100 */
    const uint64_t want = (uint64_t)LIFE_ITEMS * (LIFE_ITEMS + 1) / 2;
    if (sink.n != LIFE_ITEMS || sink.sum != want) {
        check("lifecycle", push ? "push" : "pull", "items", sink.n, LIFE_ITEMS);
        check("lifecycle", push ? "push" : "pull", "checksum", sink.sum, want);
    }
    return dt;
}

void print_lifecycle(const char *impl, std::vector<uint64_t> &ns, uint32_t workers) {
    double total = 0;
    for (uint64_t x : ns) total += (double)x;
    std::sort(ns.begin(), ns.end());
    double mean = total / (double)ns.size() / 1000.0;
    wl::print_result("lifecycle", impl, (uint64_t)ns.size() * LIFE_ITEMS, total / 1e9,
                     wl::kv("iterations", ns.size()) + wl::kv("items_per_iteration", LIFE_ITEMS) +
                         wl::kvd("mean_us", mean) + wl::kvd("median_us", pct_us(ns, 0.5)) +
                         wl::kvd("p99_us", pct_us(ns, 0.99)) +
                         wl::kvd("max_us", (double)ns.back() / 1000.0) +
                         wl::kv("threads", workers + 1));
}

void run_lifecycle(const Opts &o) {
    const int iters = o.quick ? 100 : 1000;
    uint64_t items[LIFE_ITEMS];
    for (uint32_t i = 0; i < LIFE_ITEMS; ++i) items[i] = i;
    for (int push = 1; push >= 0; --push) {
        const char *impl = push ? "fluxus-push-drain" : "fluxus-pull-wait";
        if (!selected(o, impl)) continue;
        fluxus_runtime *rt = nullptr;
        CK(fluxus_runtime_new(&rt));
        CK(fluxus_runtime_start(rt));
        lifecycle_once(rt, push, items); /* warm-up: first-touch allocations */
        std::vector<uint64_t> ns;
        ns.reserve((size_t)iters);
        for (int i = 0; i < iters; ++i) ns.push_back(lifecycle_once(rt, push, items));
        uint32_t workers = rt_workers(rt);
        CK(fluxus_runtime_free(rt));
        print_lifecycle(impl, ns, workers);
    }
    if (selected(o, "fluxus-cold")) {
        /* Runtime included: new + start threads + one push lifecycle + free (join). */
        const int cold = o.quick ? 20 : 200;
        std::vector<uint64_t> ns;
        uint32_t workers = 0;
        for (int i = 0; i < cold; ++i) {
            uint64_t t0 = wl::now_ns();
            fluxus_runtime *rt = nullptr;
            CK(fluxus_runtime_new(&rt));
            lifecycle_once(rt, true, items);
            workers = rt_workers(rt);
            CK(fluxus_runtime_free(rt));
            ns.push_back(wl::now_ns() - t0);
        }
        print_lifecycle("fluxus-cold", ns, workers);
    }
}

/* ------------------------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------------------------- */

[[noreturn]] void usage() {
    std::fprintf(stderr,
                 "usage: fluxus-bench W1|W2|W3|W4|all|slowsink|latency|lifecycle [--quick]\n"
                 "                    [--impl CFG] [--list] [--rate N] [--duration S] [--detail]\n"
                 "                    [--items N]\n"
                 "  --quick     small N (N/100; W3: N/10), checked against a plain loop\n"
                 "  --items N   W1/W2/W4: exactly N items, checked against a plain loop\n"
                 "  --impl CFG  run one configuration only (see --list)\n"
                 "  --list      print the configurations of the workload, run nothing\n"
                 "  --rate N    latency: only this push rate (items/s)\n"
                 "  --duration  slowsink: seconds (default 10, --quick 1)\n"
                 "  --detail    W3: overshoot / hand-off / admission distributions ('#' lines)\n"
                 "  --dump P    W3: per-item times (ns from t0) to P-<impl>.tsv\n");
    std::exit(64);
}

} // namespace

int main(int argc, char **argv) {
    if (argc < 2) usage();
    std::string w = argv[1];
    Opts o;
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--quick") {
            o.quick = true;
        } else if (a == "--list") {
            o.list = true;
        } else if (a == "--impl" && i + 1 < argc) {
            o.impl = argv[++i];
        } else if (a.rfind("--impl=", 0) == 0) {
            o.impl = a.substr(7);
        } else if (a == "--rate" && i + 1 < argc) {
            o.rate = std::strtoull(argv[++i], nullptr, 10);
        } else if (a == "--detail") {
            o.detail = true;
        } else if (a == "--dump" && i + 1 < argc) {
            o.dump = argv[++i];
        } else if (a == "--items" && i + 1 < argc) {
            o.items = std::strtoull(argv[++i], nullptr, 10);
            if (o.items == 0) usage();
        } else if (a == "--duration" && i + 1 < argc) {
            o.duration = std::strtod(argv[++i], nullptr);
        } else {
            usage();
        }
    }
    if (fluxus_version_number() / 10000 != FLUXUS_VERSION_MAJOR) {
        std::fprintf(stderr, "fluxus-bench: library %s does not match header %s\n",
                     fluxus_version(), FLUXUS_VERSION_STRING);
        return 3;
    }

    if (!kLinkSuffix.empty() && w != "W1") {
        std::fprintf(stderr, "fluxus-bench-static runs W1 only\n");
        return 64;
    }
    if (w == "W1") {
        run_w1(o);
    } else if (w == "W2") {
        run_w2(o);
    } else if (w == "W3") {
        run_w3(o);
    } else if (w == "W4") {
        run_w4(o);
    } else if (w == "all") {
        if (!o.impl.empty()) usage();
        run_w1(o);
        run_w2(o);
        run_w3(o);
        run_w4(o);
    } else if (w == "slowsink") {
        run_slowsink(o);
    } else if (w == "latency") {
        run_latency(o);
    } else if (w == "lifecycle") {
        run_lifecycle(o);
    } else {
        usage();
    }
    if (!o.impl.empty() && !o.list && g_selected == 0) {
        /* A selector that matched nothing is a typo in a script, not an empty result. */
        std::fprintf(stderr, "fluxus-bench: %s has no configuration %s (try --list)\n", w.c_str(),
                     o.impl.c_str());
        return 64;
    }
    if (g_failures) {
        std::fprintf(stderr, "fluxus-bench: %d check(s) failed\n", g_failures);
        return 1;
    }
    return 0;
}
