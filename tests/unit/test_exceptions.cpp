// C++ callbacks that throw: every exception is caught at the library boundary and becomes the
// failing item's error (FLUXUS_EEXCEPTION), following the stage's error policy; nothing unwinds
// into the host and the pipeline keeps its accounting.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <atomic>
#include <stdexcept>

#include <fluxus.h>

namespace {

constexpr uint64_t kItems = 20000;

struct Counter {
    uint64_t next = 0, end = kItems;
    std::atomic<uint64_t> delivered{0}, destroyed{0}, dead{0}, dead_exception{0};
};

int32_t pull(void *user, uint64_t *item) {
    auto *c = static_cast<Counter *>(user);
    if (c->next == c->end) return FLUXUS_PULL_END;
    *item = c->next++;
    return FLUXUS_PULL_ITEM;
}

int32_t throwing_pull(void *user, uint64_t *item) {
    auto *c = static_cast<Counter *>(user);
    if (c->next == 500) throw std::runtime_error("source broke");
    *item = c->next++;
    return FLUXUS_PULL_ITEM;
}

int32_t map_throws_every_tenth(void *, uint64_t in, uint64_t *out) {
    if (in % 10 == 0) throw std::runtime_error("bad item");
    *out = in;
    return 0;
}

int32_t map_batch_throws(void *, const uint64_t *in, uint64_t *out, int32_t *, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
        if (in[i] == 777) throw 42;  // not even an std::exception
        out[i] = in[i];
    }
    return 0;
}

int32_t sink(void *user, uint64_t) {
    static_cast<Counter *>(user)->delivered++;
    return 0;
}

int32_t sink_throws_on_odd(void *user, uint64_t item) {
    if (item & 1) throw std::logic_error("odd");
    static_cast<Counter *>(user)->delivered++;
    return 0;
}

void destroy(void *user, uint64_t) { static_cast<Counter *>(user)->destroyed++; }

void throwing_destroy(void *user, uint64_t) {
    static_cast<Counter *>(user)->destroyed++;
    throw std::runtime_error("destructor threw");
}

void dead_letter(void *user, uint64_t, const fluxus_failure *f) {
    auto *c = static_cast<Counter *>(user);
    c->dead++;
    if (fluxus_failure_status(f) == FLUXUS_EEXCEPTION) c->dead_exception++;
    throw std::runtime_error("dead-letter callback threw too");
}

fluxus_pipeline_stats stats_of(fluxus_pipeline *p) {
    fluxus_pipeline_stats s{};
    s.struct_size = sizeof s;
    assert_int_equal(fluxus_pipeline_get_stats(p, &s), FLUXUS_OK);
    return s;
}

void assert_conserved(const fluxus_pipeline_stats &s) {
    assert_int_equal(s.admitted, s.delivered + s.filtered + s.dead_lettered + s.failed +
                                     s.cancelled);
    assert_int_equal(s.balanced, 1);
    assert_int_equal(s.in_flight, 0);
}

void test_exception_in_map_fails_only_that_item(void **) {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    Counter c;
    uint32_t map;
    assert_int_equal(fluxus_runtime_new(&rt), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_new(&p, rt, "throwing-map"), FLUXUS_OK);
    fluxus_pipeline_set_pull_source(p, "numbers", pull, &c, nullptr);
    fluxus_pipeline_set_item_free(p, destroy, &c, nullptr);
    fluxus_pipeline_add_map(&map, p, "throws", map_throws_every_tenth, nullptr, nullptr);
    fluxus_stage_set_workers(p, map, 2);
    fluxus_stage_set_error_policy(p, map, FLUXUS_ERROR_SKIP);
    fluxus_pipeline_add_sink(nullptr, p, "count", sink, &c, nullptr);
    assert_int_equal(fluxus_pipeline_start(p), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_wait(p, 60000), FLUXUS_OK);
    fluxus_pipeline_stats s = stats_of(p);
    assert_int_equal(s.failed, kItems / 10);
    assert_int_equal(c.delivered.load(), kItems - kItems / 10);
    assert_int_equal(c.destroyed.load(), kItems / 10);
    assert_conserved(s);
    assert_int_equal(fluxus_pipeline_free(p), FLUXUS_OK);
    assert_int_equal(fluxus_runtime_free(rt), FLUXUS_OK);
}

void test_exception_in_batch_callback_fails_its_batch(void **) {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    Counter c;
    uint32_t map;
    assert_int_equal(fluxus_runtime_new(&rt), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_new(&p, rt, "throwing-batch"), FLUXUS_OK);
    fluxus_pipeline_set_pull_source(p, "numbers", pull, &c, nullptr);
    fluxus_pipeline_set_item_free(p, destroy, &c, nullptr);
    fluxus_pipeline_set_batch_size(p, 100);
    fluxus_pipeline_add_map_batch(&map, p, "throws", map_batch_throws, nullptr, nullptr);
    fluxus_stage_set_error_policy(p, map, FLUXUS_ERROR_SKIP);
    fluxus_pipeline_add_sink(nullptr, p, "count", sink, &c, nullptr);
    assert_int_equal(fluxus_pipeline_start(p), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_wait(p, 60000), FLUXUS_OK);
    fluxus_pipeline_stats s = stats_of(p);
    // The batch holding item 777 failed whole; batches never exceed 100 items.
    assert_true(s.failed >= 1 && s.failed <= 100);
    assert_int_equal(c.delivered.load() + s.failed, kItems);
    assert_int_equal(c.destroyed.load(), s.failed);
    assert_conserved(s);
    fluxus_pipeline_free(p);
    fluxus_runtime_free(rt);
}

void test_exception_in_sink_goes_to_dead_letter_and_throwing_handlers_are_contained(void **) {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    Counter c;
    uint32_t snk;
    assert_int_equal(fluxus_runtime_new(&rt), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_new(&p, rt, "throwing-sink"), FLUXUS_OK);
    fluxus_pipeline_set_pull_source(p, "numbers", pull, &c, nullptr);
    fluxus_pipeline_set_item_free(p, throwing_destroy, &c, nullptr);
    fluxus_pipeline_set_dead_letter(p, dead_letter, &c, nullptr);
    fluxus_pipeline_add_sink(&snk, p, "odd-throws", sink_throws_on_odd, &c, nullptr);
    fluxus_stage_set_error_policy(p, snk, FLUXUS_ERROR_DEAD_LETTER);
    assert_int_equal(fluxus_pipeline_start(p), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_wait(p, 60000), FLUXUS_OK);
    fluxus_pipeline_stats s = stats_of(p);
    assert_int_equal(s.dead_lettered, kItems / 2);
    assert_int_equal(c.dead.load(), kItems / 2);
    assert_int_equal(c.dead_exception.load(), kItems / 2);
    assert_int_equal(c.destroyed.load(), kItems / 2);  // each dead letter destroyed once
    assert_int_equal(c.delivered.load(), kItems / 2);
    assert_conserved(s);
    fluxus_pipeline_free(p);
    fluxus_runtime_free(rt);
}

void test_exception_in_source_stops_pipeline_with_esource(void **) {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    Counter c;
    assert_int_equal(fluxus_runtime_new(&rt), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_new(&p, rt, "throwing-source"), FLUXUS_OK);
    fluxus_pipeline_set_pull_source(p, "breaks", throwing_pull, &c, nullptr);
    fluxus_pipeline_set_item_free(p, destroy, &c, nullptr);
    fluxus_pipeline_add_sink(nullptr, p, "count", sink, &c, nullptr);
    assert_int_equal(fluxus_pipeline_start(p), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_wait(p, 60000), FLUXUS_ESOURCE);
    fluxus_pipeline_stats s = stats_of(p);
    assert_int_equal(s.admitted, 500);
    assert_int_equal(s.delivered + s.cancelled, 500);
    assert_int_equal(c.destroyed.load(), s.cancelled);
    assert_conserved(s);
    fluxus_pipeline_free(p);
    fluxus_runtime_free(rt);
}

}  // namespace

int main() {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exception_in_map_fails_only_that_item),
        cmocka_unit_test(test_exception_in_batch_callback_fails_its_batch),
        cmocka_unit_test(
            test_exception_in_sink_goes_to_dead_letter_and_throwing_handlers_are_contained),
        cmocka_unit_test(test_exception_in_source_stops_pipeline_with_esource),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
