// Fuzz target for the declarative spec (fluxus_pipeline_build): the parser and the builder.
// Each input is NUL-terminated and built into a fresh pipeline with a registry that holds a few
// callbacks of every kind; the pipeline is never started, and everything is freed each run.
// Besides crashes and sanitizer reports, it checks (and aborts on a violation):
//  - a failed build says where: the message starts with "spec:LINE:COL: " and that position
//    lies within the input (LINE <= its lines, COL <= the line's length + 1);
//  - the registry's user_free calls: none while a pipeline built from it lives, each exactly
//    once after the registry handle and the pipeline are both freed.
// Built two ways (fuzz/meson.build): with libFuzzer (clang, -Dfuzz=true), and with the
// standalone driver spec_fuzz_driver.cpp (any compiler; the spec-fuzz-smoke test).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

// The spec language is in the experimental tier (fluxus.h, "Stability").
#define FLUXUS_EXPERIMENTAL
#include <fluxus.h>

#include "spec_fuzz.hpp"

namespace {

int32_t map_fn(void *, uint64_t in, uint64_t *out) { *out = in; return 0; }
int32_t map_batch_fn(void *, const uint64_t *in, uint64_t *out, int32_t *, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) out[i] = in[i];
    return 0;
}
int32_t filter_fn(void *, uint64_t, int32_t *keep) { *keep = 1; return 0; }
int32_t filter_batch_fn(void *, const uint64_t *, int32_t *keep, int32_t *, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) keep[i] = 1;
    return 0;
}
int32_t flat_map_fn(void *, uint64_t item, fluxus_emitter *em) { return fluxus_emitter_emit(em, item); }
int32_t flat_map_batch_fn(void *, const uint64_t *, uint32_t, fluxus_emitter *) { return 0; }
int32_t sink_fn(void *, uint64_t) { return 0; }
int32_t sink_batch_fn(void *, const uint64_t *, int32_t *, uint32_t) { return 0; }
int32_t async_fn(void *, uint64_t, uint64_t) { return 1; }
int32_t reduce_fn(void *, uint64_t *acc, int32_t, uint64_t item) { *acc += item; return 0; }
int32_t window_fn(void *, const uint64_t *, uint32_t, uint64_t, fluxus_emitter *) { return 0; }
int32_t route_fn(void *, uint64_t, uint32_t *routes, uint32_t, uint32_t *count) {
    routes[0] = 0;
    *count = 1;
    return 0;
}
int32_t copy_fn(void *, uint64_t item, uint32_t, uint64_t *copy) { *copy = item; return 0; }
int32_t key_fn(void *, uint64_t, const void **key, size_t *len) {
    static const char k = 'k';
    *key = &k;
    *len = 1;
    return 0;
}
int32_t retry_fn(void *, uint64_t, int32_t, uint32_t) { return 1; }
int32_t pull_fn(void *, uint64_t *) { return FLUXUS_PULL_END; }

struct Entry {
    const char *name;
    int32_t kind;
    fluxus_any_fn fn;
};

#define FN(f) reinterpret_cast<fluxus_any_fn>(f)
// The names the seed corpus and the dictionary (spec.dict) use.
const Entry kEntries[] = {
    {"parse", FLUXUS_FN_MAP, FN(map_fn)},
    {"enrich", FLUXUS_FN_MAP, FN(map_fn)},
    {"fix", FLUXUS_FN_MAP, FN(map_fn)},
    {"parse_batch", FLUXUS_FN_MAP_BATCH, FN(map_batch_fn)},
    {"keep", FLUXUS_FN_FILTER, FN(filter_fn)},
    {"keep_batch", FLUXUS_FN_FILTER_BATCH, FN(filter_batch_fn)},
    {"explode", FLUXUS_FN_FLAT_MAP, FN(flat_map_fn)},
    {"group", FLUXUS_FN_FLAT_MAP_BATCH, FN(flat_map_batch_fn)},
    {"write", FLUXUS_FN_SINK, FN(sink_fn)},
    {"store", FLUXUS_FN_SINK, FN(sink_fn)},
    {"count", FLUXUS_FN_SINK, FN(sink_fn)},
    {"write_batch", FLUXUS_FN_SINK_BATCH, FN(sink_batch_fn)},
    {"fetch", FLUXUS_FN_ASYNC_MAP, FN(async_fn)},
    {"total", FLUXUS_FN_REDUCE, FN(reduce_fn)},
    {"agg", FLUXUS_FN_WINDOW, FN(window_fn)},
    {"by_kind", FLUXUS_FN_ROUTE, FN(route_fn)},
    {"dup", FLUXUS_FN_COPY, FN(copy_fn)},
    {"by_id", FLUXUS_FN_KEY, FN(key_fn)},
    {"transient", FLUXUS_FN_RETRY_IF, FN(retry_fn)},
    {"numbers", FLUXUS_FN_PULL, FN(pull_fn)},
// Kinds newer than the target: no callback is ever called (the pipeline never starts), so any
// function stands in for them.
#ifdef FLUXUS_FN_LOAD
    {"fetch_rows", FLUXUS_FN_LOAD, FN(map_fn)},
#endif
#ifdef FLUXUS_FN_ATTACH
    {"put_rows", FLUXUS_FN_ATTACH, FN(map_fn)},
#endif
#ifdef FLUXUS_FN_JOIN_INPUT
    {"which_side", FLUXUS_FN_JOIN_INPUT, FN(map_fn)},
#endif
};
#undef FN
constexpr int kEntryCount = int(sizeof kEntries / sizeof kEntries[0]);

int g_user_frees;  // the fuzz target runs on one thread
void count_free(void *user) {
    if (user != &g_user_frees) {
        fprintf(stderr, "spec_fuzz: user_free got a wrong user pointer\n");
        abort();
    }
    ++g_user_frees;
}

[[noreturn]] void violation(const char *what, const std::string &spec, const char *msg) {
    fprintf(stderr, "spec_fuzz: %s\n  message: %s\n  spec (%zu bytes): %s\n", what, msg,
            spec.size(), spec.c_str());
    abort();
}

// "spec:LINE:COL: " with a position inside `spec`.
void check_message(const std::string &spec, const char *msg) {
    unsigned line = 0, col = 0;
    int used = 0;
    if (std::strncmp(msg, "spec:", 5) != 0 ||
        std::sscanf(msg, "spec:%u:%u: %n", &line, &col, &used) != 2 || used == 0)
        violation("a failed build's message does not start with spec:LINE:COL:", spec, msg);
    if (msg[used] == '\0') violation("the message says nothing after the position", spec, msg);
    unsigned lines = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < spec.size(); ++i)
        if (spec[i] == '\n') {
            ++lines;
            if (lines == line) line_start = i + 1;
        }
    if (line < 1 || line > lines) violation("the error's line is outside the spec", spec, msg);
    size_t line_end = spec.find('\n', line_start);
    size_t len = (line_end == std::string::npos ? spec.size() : line_end) - line_start;
    if (col < 1 || col > len + 1) violation("the error's column is outside its line", spec, msg);
}

void check(bool ok, const char *what, const std::string &spec) {
    if (!ok) violation(what, spec, fluxus_last_error_message());
}

}  // namespace

int spec_fuzz_one(const uint8_t *data, size_t size, int *built_ok) {
    std::string spec(reinterpret_cast<const char *>(data), size);
    spec.resize(std::strlen(spec.c_str()));  // the spec ends at the first NUL, as C sees it

    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;
    fluxus_registry *r = nullptr;
    check(fluxus_runtime_new(&rt) == FLUXUS_OK, "fluxus_runtime_new failed", spec);
    check(fluxus_pipeline_new(&p, rt, "fuzz") == FLUXUS_OK, "fluxus_pipeline_new failed", spec);
    check(fluxus_registry_new(&r) == FLUXUS_OK, "fluxus_registry_new failed", spec);
    g_user_frees = 0;
    for (const Entry &e : kEntries)
        check(fluxus_registry_add(r, e.name, e.kind, e.fn, &g_user_frees, count_free) == FLUXUS_OK,
              "fluxus_registry_add failed", spec);

    int32_t rc = fluxus_pipeline_build(p, r, spec.c_str());
    if (rc != FLUXUS_OK) {
        if (rc > 0) violation("fluxus_pipeline_build returned a positive code", spec, "");
        std::string msg = fluxus_last_error_message();
        check_message(spec, msg.c_str());
    } else {
        uint32_t n = 0;
        check(fluxus_pipeline_get_stage_count(&n, p) == FLUXUS_OK && n <= 4096, "stage count", spec);
        for (uint32_t i = 0; i < n; ++i) {
            const char *name = nullptr;
            check(fluxus_stage_get_name(&name, p, i) == FLUXUS_OK && name != nullptr,
                  "a built stage has no name", spec);
        }
    }
    if (built_ok) *built_ok = rc == FLUXUS_OK;

    // The pipeline keeps the registry alive: no user_free before both are gone.
    check(fluxus_registry_free(r) == FLUXUS_OK, "fluxus_registry_free failed", spec);
    check(g_user_frees == 0, "user_free ran while a pipeline built from the registry lives", spec);
    check(fluxus_pipeline_free(p) == FLUXUS_OK, "fluxus_pipeline_free failed", spec);
    check(g_user_frees == kEntryCount, "user_free did not run exactly once per callback", spec);
    check(fluxus_runtime_free(rt) == FLUXUS_OK, "fluxus_runtime_free failed", spec);
    return rc;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    spec_fuzz_one(data, size, nullptr);
    return 0;
}
