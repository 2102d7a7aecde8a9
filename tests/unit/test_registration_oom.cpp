// Registrations refused for lack of memory part-way take nothing. Every function of the header
// that takes a user_free is called with the n-th allocation on the calling thread failing, for
// n = 0, 1, 2, ... until the call makes no more allocations: whatever it returns (FLUXUS_OK or
// FLUXUS_ENOMEM, nothing else), its user_free must run exactly once after FLUXUS_OK and never
// after a refusal, counted once every object involved has been freed. The global operator new
// is replaced here to inject the failures; the library is linked in from the static archive.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <vector>

// After the standard headers: cmocka defines a fail() macro. cmocka 1.1 declares its functions
// without extern "C".
extern "C" {
#include <cmocka.h>
}

#include "fluxus.h"

#ifndef OWNERSHIP_HEADER
#error "OWNERSHIP_HEADER (the path of include/fluxus.h) is defined by tests/unit/meson.build"
#endif

// ----- fault injection: the n-th allocation on this thread after arm(n) throws -----

namespace {
thread_local long t_countdown = -1;  // -1: no failure armed
thread_local bool t_fired = false;

void arm(long n) {
    t_fired = false;
    t_countdown = n;
}
bool disarm() {
    t_countdown = -1;
    return t_fired;
}
}  // namespace

// These allocate with malloc and free with free, consistently; GCC's check of matching pairs
// does not know they replace the global ones.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void *operator new(std::size_t n) {
    if (t_countdown >= 0 && t_countdown-- == 0) {
        t_fired = true;
        throw std::bad_alloc();
    }
    if (void *p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void *operator new[](std::size_t n) { return ::operator new(n); }
void *operator new(std::size_t n, const std::nothrow_t &) noexcept {
    try {
        return ::operator new(n);
    } catch (...) {
        return nullptr;
    }
}
void *operator new[](std::size_t n, const std::nothrow_t &t) noexcept {
    return ::operator new(n, t);
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete[](void *p) noexcept { std::free(p); }
void operator delete(void *p, std::size_t) noexcept { std::free(p); }
void operator delete[](void *p, std::size_t) noexcept { std::free(p); }
void operator delete(void *p, const std::nothrow_t &) noexcept { std::free(p); }
void operator delete[](void *p, const std::nothrow_t &) noexcept { std::free(p); }

namespace {

// ----- callbacks (never called) -----

void nop_log(void *, int32_t, const char *, const char *, const char *) {}
void nop_timer(void *) {}
void nop_item_free(void *, uint64_t) {}
void nop_dead_letter(void *, uint64_t, const fluxus_failure *) {}
int32_t nop_pull(void *, uint64_t *) { return FLUXUS_PULL_END; }
int32_t nop_pull_batch(void *, uint64_t *, uint32_t, uint32_t *count) {
    *count = 0;
    return FLUXUS_PULL_END;
}
int32_t nop_cursor_read(void *, uint64_t, uint64_t *, uint32_t, uint32_t *count, uint64_t *) {
    *count = 0;
    return FLUXUS_PULL_END;
}
uint64_t nop_page_of(void *, uint64_t) { return 0; }
void nop_commit(void *, uint64_t) {}
int32_t nop_map(void *, uint64_t, uint64_t *) { return 0; }
int32_t nop_map_batch(void *, const uint64_t *, uint64_t *, int32_t *, uint32_t) { return 0; }
int32_t nop_filter(void *, uint64_t, int32_t *) { return 0; }
int32_t nop_filter_batch(void *, const uint64_t *, int32_t *, int32_t *, uint32_t) { return 0; }
int32_t nop_flat_map(void *, uint64_t, fluxus_emitter *) { return 0; }
int32_t nop_flat_map_batch(void *, const uint64_t *, uint32_t, fluxus_emitter *) { return 0; }
int32_t nop_sink(void *, uint64_t) { return 0; }
int32_t nop_sink_batch(void *, const uint64_t *, int32_t *, uint32_t) { return 0; }
int32_t nop_async_map(void *, uint64_t, uint64_t) { return 1; }
int32_t nop_reduce(void *, uint64_t *, int32_t, uint64_t) { return 0; }
int32_t nop_window(void *, const uint64_t *, uint32_t, uint64_t, fluxus_emitter *) { return 0; }
int32_t nop_route(void *, uint64_t, uint32_t *, uint32_t, uint32_t *) { return 0; }
int32_t nop_copy(void *, uint64_t, uint32_t, uint64_t *) { return 0; }
int32_t nop_join_input(void *, uint64_t, uint32_t *) { return 0; }
int32_t nop_load(void *, const uint64_t *, uint32_t, uint64_t *, int32_t *) { return 0; }
int32_t nop_attach(void *, uint64_t, uint64_t, uint64_t *) { return 0; }
int32_t nop_retry(void *, uint64_t, int32_t, uint32_t) { return 0; }
int32_t nop_key(void *, uint64_t, const void **, size_t *) { return 0; }
void nop_breaker_state(void *, int32_t, int32_t) {}

void count_free(void *user) { ++*static_cast<int *>(user); }

// ----- the objects a registration may go to, made before the failure is armed -----

struct Env {
    fluxus_runtime *rt = nullptr;
    fluxus_pipeline *p = nullptr;  // push source -> map (stage 0), open for more stages
    fluxus_pipeline *q = nullptr;  // no source, no stage
    fluxus_pipeline *b = nullptr;  // push source -> broadcast (stage 0)
    fluxus_pipeline *a = nullptr;  // push source -> async map (stage 0)
    fluxus_registry *reg = nullptr;
    fluxus_circuit_breaker *cb = nullptr;

    Env() {
        ok(fluxus_runtime_new(&rt));
        ok(fluxus_pipeline_new(&p, rt, "p"));
        ok(fluxus_pipeline_set_push_source(p, "in"));
        ok(fluxus_pipeline_add_map(nullptr, p, "m", nop_map, nullptr, nullptr));
        ok(fluxus_pipeline_new(&q, rt, "q"));
        ok(fluxus_pipeline_new(&b, rt, "b"));
        ok(fluxus_pipeline_set_push_source(b, "in"));
        ok(fluxus_pipeline_add_broadcast(nullptr, b, "bc"));
        ok(fluxus_pipeline_new(&a, rt, "a"));
        ok(fluxus_pipeline_set_push_source(a, "in"));
        ok(fluxus_pipeline_add_async_map(nullptr, a, "am", nop_async_map, nullptr, nullptr));
        ok(fluxus_registry_new(&reg));
        ok(fluxus_circuit_breaker_new(&cb, rt));
    }
    ~Env() {
        fluxus_pipeline_free(p);
        fluxus_pipeline_free(q);
        fluxus_pipeline_free(b);
        fluxus_pipeline_free(a);
        fluxus_registry_free(reg);
        fluxus_circuit_breaker_free(cb);
        fluxus_runtime_free(rt);
    }
    static void ok(int32_t rc) {
        if (rc != FLUXUS_OK) fail_msg("setup call failed: %s", fluxus_err_name(rc));
    }
};

using Call = std::function<int32_t(Env &, void *, fluxus_user_free_fn)>;
struct Case {
    const char *name;  // the header function it calls
    Call call;
};

#define CASE(fn, ...) \
    Case { #fn, [](Env &e, void *u, fluxus_user_free_fn uf) -> int32_t { return fn(__VA_ARGS__); } }

void nop_thread_start(void *, int32_t, uint32_t, const char *) {}
void nop_wakeup(void *) {}
void nop_async_cancel(void *, uint64_t, uint64_t, int32_t) {}

const std::vector<Case> &cases() {
    static const std::vector<Case> all = {
        CASE(fluxus_runtime_set_log, e.rt, FLUXUS_LOG_WARN, nop_log, u, uf),
        CASE(fluxus_runtime_set_log, e.rt, FLUXUS_LOG_WARN, nullptr, u, uf),
        CASE(fluxus_runtime_set_thread_hooks, e.rt, nop_thread_start, nullptr, u, uf),
        CASE(fluxus_runtime_set_wakeup, e.rt, nop_wakeup, u, uf),
        CASE(fluxus_runtime_call_after, nullptr, e.rt, 1000000000, nop_timer, u, uf),
        CASE(fluxus_pipeline_set_item_free, e.p, nop_item_free, u, uf),
        CASE(fluxus_pipeline_set_dead_letter, e.p, nop_dead_letter, u, uf),
        CASE(fluxus_pipeline_set_route_observer, e.p, nop_dead_letter, u, uf),
        CASE(fluxus_pipeline_set_pull_source, e.q, "s", nop_pull, u, uf),
        CASE(fluxus_pipeline_set_pull_source, e.q, "a name too long to be stored inline",
             nop_pull, u, uf),
        CASE(fluxus_pipeline_set_pull_source_batch, e.q, "s", nop_pull_batch, u, uf),
        CASE(fluxus_pipeline_set_cursor_source, e.q, "s", 0, nop_cursor_read, nop_page_of,
             nop_commit, u, uf),
        CASE(fluxus_pipeline_add_map, nullptr, e.p, "x", nop_map, u, uf),
        CASE(fluxus_pipeline_add_map, nullptr, e.p, nullptr, nop_map, u, uf),  // a made name
        CASE(fluxus_pipeline_add_map, nullptr, e.p, "a name too long to be stored inline",
             nop_map, u, uf),
        CASE(fluxus_pipeline_add_map_batch, nullptr, e.p, "x", nop_map_batch, u, uf),
        CASE(fluxus_pipeline_add_filter, nullptr, e.p, "x", nop_filter, u, uf),
        CASE(fluxus_pipeline_add_filter_batch, nullptr, e.p, "x", nop_filter_batch, u, uf),
        CASE(fluxus_pipeline_add_flat_map, nullptr, e.p, "x", nop_flat_map, u, uf),
        CASE(fluxus_pipeline_add_flat_map_batch, nullptr, e.p, "x", nop_flat_map_batch, u, uf),
        CASE(fluxus_pipeline_add_sink, nullptr, e.p, "x", nop_sink, u, uf),
        CASE(fluxus_pipeline_add_sink_batch, nullptr, e.p, "x", nop_sink_batch, u, uf),
        CASE(fluxus_pipeline_add_async_map, nullptr, e.p, "x", nop_async_map, u, uf),
        CASE(fluxus_stage_set_async_cancel, e.a, 0, nop_async_cancel, u, uf),
        CASE(fluxus_pipeline_add_batch, nullptr, e.p, "x", 8, 0, nop_flat_map_batch, u, uf),
        CASE(fluxus_pipeline_add_reduce, nullptr, e.p, "x", nop_reduce, u, uf),
        CASE(fluxus_pipeline_add_window, nullptr, e.p, "x", FLUXUS_WINDOW_COUNT, 4, nop_window,
             u, uf),
        CASE(fluxus_pipeline_add_sliding_window, nullptr, e.p, "x", FLUXUS_WINDOW_COUNT, 4, 2,
             nop_window, u, uf),
        CASE(fluxus_pipeline_add_router, nullptr, e.p, "x", nop_route, u, uf),
        CASE(fluxus_stage_set_copy, e.b, 0, nop_copy, u, uf),
        CASE(fluxus_pipeline_add_source, nullptr, e.p, "x", nop_pull, u, uf),
        CASE(fluxus_pipeline_add_source, nullptr, e.p, nullptr, nop_pull, u, uf),
        CASE(fluxus_pipeline_add_source, nullptr, e.p, "a name too long to be stored inline",
             nop_pull, u, uf),
        CASE(fluxus_pipeline_add_join, nullptr, e.p, "x", 2, nop_join_input, nop_window, u, uf),
        CASE(fluxus_pipeline_add_loader, nullptr, e.p, "x", 8, 0, nop_load, nop_attach, u, uf),
        CASE(fluxus_stage_set_cache, e.p, 0, 16, 0, nop_copy, u, uf),
        CASE(fluxus_stage_set_retry_predicate, e.p, 0, nop_retry, u, uf),
        CASE(fluxus_stage_set_key_fn, e.p, 0, nop_key, u, uf),
        CASE(fluxus_registry_add, e.reg, "m", FLUXUS_FN_MAP, (fluxus_any_fn)nop_map, u, uf),
        CASE(fluxus_registry_add, e.reg, "a_name_too_long_to_be_stored_inline", FLUXUS_FN_MAP,
             (fluxus_any_fn)nop_map, u, uf),
        CASE(fluxus_circuit_breaker_set_state_callback, e.cb, nop_breaker_state, u, uf),
    };
    return all;
}

void test_refusals_for_lack_of_memory_take_nothing(void **) {
    size_t refusals = 0;
    for (const Case &c : cases()) {
        for (long n = 0;; ++n) {
            if (n > 10000) fail_msg("%s: no end to its allocations?", c.name);
            int freed = 0;
            int32_t rc;
            bool fired;
            {
                Env e;
                arm(n);
                rc = c.call(e, &freed, count_free);
                fired = disarm();
                if (rc != FLUXUS_OK && rc != FLUXUS_ENOMEM)
                    fail_msg("%s with allocation %ld failing returned %s", c.name, n,
                             fluxus_err_name(rc));
                if (rc != FLUXUS_OK && !fired)
                    fail_msg("%s returned %s with no allocation failing", c.name,
                             fluxus_err_name(rc));
                if (freed != 0)
                    fail_msg("%s with allocation %ld failing (%s): user_free ran during the call",
                             c.name, n, fluxus_err_name(rc));
            }  // frees every object
            int expected = rc == FLUXUS_OK ? 1 : 0;
            if (freed != expected)
                fail_msg("%s with allocation %ld failing returned %s; user_free then ran %d times "
                         "(expected %d)",
                         c.name, n, fluxus_err_name(rc), freed, expected);
            if (rc != FLUXUS_OK) ++refusals;
            if (!fired) break;  // the call made fewer than n + 1 allocations: all were tried
        }
    }
    std::printf("%zu refusals for lack of memory, over %zu cases\n", refusals, cases().size());
    // Most registrations allocate (names, stages, map entries): the injection did reach them.
    assert_true(refusals >= 20);
}

// Every function of the header taking a fluxus_user_free_fn has a case above.
void test_every_registration_in_the_header_has_a_case(void **) {
    std::ifstream in(OWNERSHIP_HEADER);
    if (!in) fail_msg("cannot read %s", OWNERSHIP_HEADER);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = "\n" + ss.str();
    std::set<std::string> have, missing;
    for (const Case &c : cases()) have.insert(c.name);
    size_t found = 0;
    for (size_t at = text.find("\nFLUXUS_API "); at != std::string::npos;
         at = text.find("\nFLUXUS_API ", at + 1)) {
        size_t end = text.find(';', at), paren = text.find('(', at);
        if (end == std::string::npos || paren > end) continue;
        if (text.substr(paren, end - paren).find("fluxus_user_free_fn") == std::string::npos)
            continue;
        size_t name_end = paren;
        while (name_end > at && text[name_end - 1] == ' ') --name_end;
        size_t name = name_end;
        while (name > at && (isalnum((unsigned char)text[name - 1]) || text[name - 1] == '_'))
            --name;
        ++found;
        std::string fn = text.substr(name, name_end - name);
        if (!have.count(fn)) missing.insert(fn);
    }
    std::string list;
    for (const std::string &m : missing) list += " " + m;
    if (!missing.empty()) fail_msg("functions taking a user_free without a case:%s", list.c_str());
    assert_int_equal(found, have.size());
}

}  // namespace

int main() {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_registration_in_the_header_has_a_case),
        cmocka_unit_test(test_refusals_for_lack_of_memory_take_nothing),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
