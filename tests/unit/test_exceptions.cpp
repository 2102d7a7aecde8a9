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
#include <cstring>
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
    int32_t status = 0;
    if (fluxus_failure_get_status(&status, f) == FLUXUS_OK && status == FLUXUS_EEXCEPTION)
        c->dead_exception++;
    throw std::runtime_error("dead-letter callback threw too");
}

fluxus_pipeline_stats stats_of(fluxus_pipeline *p) {
    fluxus_pipeline_stats s{};
    s.struct_size = sizeof s;
    assert_int_equal(fluxus_pipeline_get_stats(&s, p), FLUXUS_OK);
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

// The same, deep into the run: items 0..4002 come from the source, straight into a
// map -> map -> sink chain (every batch but the sampled ones, the first and one in 64, reads
// each item into the chain as it is pulled). The throw ends the source; every item read before
// it is still delivered.
int32_t throwing_pull_late(void *user, uint64_t *item) {
    auto *c = static_cast<Counter *>(user);
    if (c->next == 4003) throw std::runtime_error("source broke late");
    *item = c->next++;
    return FLUXUS_PULL_ITEM;
}
int32_t add_one(void *, uint64_t in, uint64_t *out) {
    *out = in + 1;
    return 0;
}
int32_t sub_one(void *, uint64_t in, uint64_t *out) {
    *out = in - 1;
    return 0;
}

void test_exception_in_source_feeding_a_chain_keeps_the_items_read(void **) {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    Counter c;
    assert_int_equal(fluxus_runtime_new(&rt), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_new(&p, rt, "throwing-source-chain"), FLUXUS_OK);
    fluxus_pipeline_set_pull_source(p, "breaks", throwing_pull_late, &c, nullptr);
    fluxus_pipeline_set_item_free(p, destroy, &c, nullptr);
    fluxus_pipeline_add_map(nullptr, p, "up", add_one, nullptr, nullptr);
    fluxus_pipeline_add_map(nullptr, p, "down", sub_one, nullptr, nullptr);
    fluxus_pipeline_add_sink(nullptr, p, "count", sink, &c, nullptr);
    assert_int_equal(fluxus_pipeline_start(p), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_wait(p, 60000), FLUXUS_ESOURCE);
    fluxus_pipeline_stats s = stats_of(p);
    assert_int_equal(s.admitted, 4003);
    assert_int_equal(s.delivered, 4003);  // all read before the throw, none lost
    assert_int_equal(c.delivered.load(), 4003);
    assert_conserved(s);
    fluxus_pipeline_free(p);
    fluxus_runtime_free(rt);
}

// A fused run of three maps and a sink goes through the per-item chain (all but one batch in 64
// of these 30000 items): a map in the middle throws for every 13th item and the sink for every
// 17th. Exactly those items fail with FLUXUS_EEXCEPTION at their stage (dead-lettered, then
// destroyed once), the others are delivered once each, in order, having passed every map.
constexpr uint64_t kChainItems = 30000;
constexpr uint64_t kTag0 = 1ull << 40, kTag1 = 1ull << 41, kTag2 = 1ull << 42;

struct ChainState {
    uint64_t next = 0;
    uint64_t last_plus1 = 0, delivered = 0, order_errors = 0, bad_items = 0;
    uint64_t calls[4] = {};
    std::atomic<uint64_t> destroyed{0}, dead_middle{0}, dead_sink{0}, dead_bad{0};
    std::atomic<uint64_t> destroyed_bad{0};
    uint32_t middle = 0, sink = 0;
};

uint64_t idx_of(uint64_t v) {
    return v & 0xFFFFFFFFull;
}

int32_t chain_pull(void *user, uint64_t *item) {
    auto *c = static_cast<ChainState *>(user);
    if (c->next == kChainItems)
        return FLUXUS_PULL_END;
    *item = c->next++;
    return FLUXUS_PULL_ITEM;
}

int32_t chain_map0(void *user, uint64_t in, uint64_t *out) {
    auto *c = static_cast<ChainState *>(user);
    c->calls[0]++;
    if (in != idx_of(in))
        c->bad_items++;
    *out = in + kTag0;
    return 0;
}

int32_t chain_map1_throws(void *user, uint64_t in, uint64_t *out) {
    auto *c = static_cast<ChainState *>(user);
    c->calls[1]++;
    if (in - idx_of(in) != kTag0)
        c->bad_items++;
    if (idx_of(in) % 13 == 4)
        throw std::runtime_error("every 13th");
    *out = in + kTag1;
    return 0;
}

int32_t chain_map2(void *user, uint64_t in, uint64_t *out) {
    auto *c = static_cast<ChainState *>(user);
    c->calls[2]++;
    if (in - idx_of(in) != kTag0 + kTag1)
        c->bad_items++;
    *out = in + kTag2;
    return 0;
}

int32_t chain_sink_throws(void *user, uint64_t item) {
    auto *c = static_cast<ChainState *>(user);
    c->calls[3]++;
    uint64_t idx = idx_of(item);
    if (item - idx != kTag0 + kTag1 + kTag2)
        c->bad_items++;
    if (idx % 17 == 9)
        throw std::logic_error("every 17th");
    if (idx + 1 <= c->last_plus1)
        c->order_errors++;
    c->last_plus1 = idx + 1;
    c->delivered++;
    return 0;
}

void chain_dead_letter(void *user, uint64_t item, const fluxus_failure *f) {
    auto *c = static_cast<ChainState *>(user);
    uint64_t idx = idx_of(item);
    int32_t status = 0;
    uint32_t attempts = 0, stage = 0;
    const char *name = "";
    bool ok = fluxus_failure_get_status(&status, f) == FLUXUS_OK &&
              fluxus_failure_get_attempts(&attempts, f) == FLUXUS_OK &&
              fluxus_failure_get_stage_index(&stage, f) == FLUXUS_OK &&
              fluxus_failure_get_stage_name(&name, f) == FLUXUS_OK;
    ok = ok && status == FLUXUS_EEXCEPTION && attempts == 1;
    if (stage == c->middle) {
        ok = ok && std::strcmp(name, "middle") == 0 && idx % 13 == 4 &&
             item - idx == kTag0;
        c->dead_middle++;
    } else if (stage == c->sink) {
        ok = ok && std::strcmp(name, "sink") == 0 && idx % 17 == 9 &&
             idx % 13 != 4 && item - idx == kTag0 + kTag1 + kTag2;
        c->dead_sink++;
    } else {
        ok = false;
    }
    if (!ok)
        c->dead_bad++;
}

void chain_destroy(void *user, uint64_t item) {
    auto *c = static_cast<ChainState *>(user);
    uint64_t idx = idx_of(item);
    // Only the items that threw end here, with the tags of the stage that threw.
    if (!((idx % 13 == 4 && item - idx == kTag0) ||
          (idx % 13 != 4 && idx % 17 == 9 && item - idx == kTag0 + kTag1 + kTag2)))
        c->destroyed_bad++;
    c->destroyed++;
}

fluxus_stage_stats stage_stats_of(fluxus_pipeline *p, uint32_t stage) {
    fluxus_stage_stats s{};
    s.struct_size = sizeof s;
    assert_int_equal(fluxus_stage_get_stats(&s, p, stage), FLUXUS_OK);
    return s;
}

void test_exceptions_in_a_fused_chain_fail_only_their_items(void **) {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    ChainState c;
    uint32_t m0, m2;
    uint64_t in_middle = kChainItems, thrown_middle = 0, thrown_sink = 0;
    for (uint64_t i = 0; i < kChainItems; ++i) {
        if (i % 13 == 4)
            ++thrown_middle;
        else if (i % 17 == 9)
            ++thrown_sink;
    }
    uint64_t delivered = kChainItems - thrown_middle - thrown_sink;
    assert_int_equal(fluxus_runtime_new(&rt), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_new(&p, rt, "throwing-chain"), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_set_pull_source(p, "numbers", chain_pull, &c, nullptr),
                     FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_set_item_free(p, chain_destroy, &c, nullptr), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_set_dead_letter(p, chain_dead_letter, &c, nullptr), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_add_map(&m0, p, "first", chain_map0, &c, nullptr), FLUXUS_OK);
    assert_int_equal(
        fluxus_pipeline_add_map(&c.middle, p, "middle", chain_map1_throws, &c, nullptr), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_add_map(&m2, p, "third", chain_map2, &c, nullptr), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_add_sink(&c.sink, p, "sink", chain_sink_throws, &c, nullptr),
                     FLUXUS_OK);
    assert_int_equal(fluxus_stage_set_error_policy(p, c.middle, FLUXUS_ERROR_DEAD_LETTER),
                     FLUXUS_OK);
    assert_int_equal(fluxus_stage_set_error_policy(p, c.sink, FLUXUS_ERROR_DEAD_LETTER), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_start(p), FLUXUS_OK);
    assert_int_equal(fluxus_pipeline_wait(p, 60000), FLUXUS_OK);

    assert_int_equal(c.bad_items, 0);
    assert_int_equal(c.order_errors, 0);
    assert_int_equal(c.dead_bad.load(), 0);
    assert_int_equal(c.destroyed_bad.load(), 0);
    assert_int_equal(c.calls[0], kChainItems);
    assert_int_equal(c.calls[1], in_middle);
    assert_int_equal(c.calls[2], kChainItems - thrown_middle);
    assert_int_equal(c.calls[3], kChainItems - thrown_middle);
    assert_int_equal(c.dead_middle.load(), thrown_middle);
    assert_int_equal(c.dead_sink.load(), thrown_sink);
    assert_int_equal(c.destroyed.load(), thrown_middle + thrown_sink);
    assert_int_equal(c.delivered, delivered);

    fluxus_pipeline_stats s = stats_of(p);
    assert_int_equal(s.admitted, kChainItems);
    assert_int_equal(s.delivered, delivered);
    assert_int_equal(s.dead_lettered, thrown_middle + thrown_sink);
    assert_int_equal(s.failed, 0);
    assert_int_equal(s.filtered, 0);
    assert_int_equal(s.cancelled, 0);
    assert_conserved(s);

    const uint32_t stages[] = {m0, c.middle, m2, c.sink};
    const uint64_t in[] = {kChainItems, kChainItems, kChainItems - thrown_middle,
                           kChainItems - thrown_middle};
    const uint64_t out[] = {kChainItems, kChainItems - thrown_middle, kChainItems - thrown_middle,
                            delivered};
    const uint64_t dead[] = {0, thrown_middle, 0, thrown_sink};
    for (int k = 0; k < 4; ++k) {
        fluxus_stage_stats st = stage_stats_of(p, stages[k]);
        assert_int_equal(st.in, in[k]);
        assert_int_equal(st.out, out[k]);
        assert_int_equal(st.dead_lettered, dead[k]);
        assert_int_equal(st.failed, 0);
        assert_int_equal(st.in + st.spawned, st.out + st.filtered + st.failed + st.dead_lettered +
                                                 st.cancelled + st.routed);
    }
    assert_int_equal(fluxus_pipeline_free(p), FLUXUS_OK);
    assert_int_equal(fluxus_runtime_free(rt), FLUXUS_OK);
}

}  // namespace

int main() {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exception_in_map_fails_only_that_item),
        cmocka_unit_test(test_exception_in_batch_callback_fails_its_batch),
        cmocka_unit_test(
            test_exception_in_sink_goes_to_dead_letter_and_throwing_handlers_are_contained),
        cmocka_unit_test(test_exception_in_source_stops_pipeline_with_esource),
        cmocka_unit_test(test_exception_in_source_feeding_a_chain_keeps_the_items_read),
        cmocka_unit_test(test_exceptions_in_a_fused_chain_fail_only_their_items),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
