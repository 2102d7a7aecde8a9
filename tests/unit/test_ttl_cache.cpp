// Unit tests of the TTL cache: an entry is fresh until exactly put + ttl, ttl 0 and a deadline
// past the clock's range never expire, the least recently used entry is evicted first, and
// every value that leaves (expired, replaced, evicted, cleared) is handed back exactly once.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <algorithm>
#include <vector>

#include "flow/ttl_cache.hpp"

using fluxus::TtlCache;
using fluxus::word_key;

namespace {

using Items = std::vector<uint64_t>;

void test_entry_is_fresh_until_exactly_its_ttl(void **) {
    TtlCache c(10, 100);
    Items gone;
    uint64_t v = 0;
    assert_false(c.get(word_key(1), 0, &v, gone));
    c.put(word_key(1), 11, 1000, gone);
    assert_true(c.get(word_key(1), 1000, &v, gone));
    assert_int_equal(v, 11);
    assert_true(c.get(word_key(1), 1099, &v, gone));
    assert_false(c.get(word_key(1), 1100, &v, gone));
    assert_true(gone == Items{11});  // the expired value is handed back
    assert_int_equal(c.size(), 0);
    assert_false(c.get(word_key(1), 1100, &v, gone));
    assert_int_equal(gone.size(), 1);
}

void test_a_read_does_not_extend_the_ttl(void **) {
    TtlCache c(10, 100);
    Items gone;
    uint64_t v = 0;
    c.put(word_key(1), 11, 0, gone);
    assert_true(c.get(word_key(1), 99, &v, gone));
    assert_false(c.get(word_key(1), 100, &v, gone));
}

void test_zero_ttl_never_expires(void **) {
    TtlCache c(10, 0);
    Items gone;
    uint64_t v = 0;
    c.put(word_key(1), 11, 5, gone);
    assert_true(c.get(word_key(1), UINT64_MAX - 1, &v, gone));
    assert_int_equal(v, 11);
}

void test_a_deadline_past_the_clocks_range_never_expires(void **) {
    TtlCache c(10, 1000);
    Items gone;
    uint64_t v = 0;
    c.put(word_key(1), 11, UINT64_MAX - 10, gone);  // put + ttl would wrap to 989
    assert_true(c.get(word_key(1), UINT64_MAX - 1, &v, gone));
    assert_true(gone.empty());
}

void test_replacing_a_value_hands_back_the_old_one_and_restarts_the_ttl(void **) {
    TtlCache c(10, 100);
    Items gone;
    uint64_t v = 0;
    c.put(word_key(1), 11, 0, gone);
    c.put(word_key(1), 12, 50, gone);
    assert_true(gone == Items{11});
    assert_int_equal(c.size(), 1);
    assert_true(c.get(word_key(1), 149, &v, gone));
    assert_int_equal(v, 12);
    assert_false(c.get(word_key(1), 150, &v, gone));
    assert_true((gone == Items{11, 12}));
}

void test_least_recently_used_entry_is_evicted_first(void **) {
    TtlCache c(2, 0);
    Items gone;
    uint64_t v = 0;
    c.put(word_key(1), 11, 0, gone);
    c.put(word_key(2), 21, 0, gone);
    assert_true(c.get(word_key(1), 0, &v, gone));  // key 1 is now the most recent
    c.put(word_key(3), 31, 0, gone);
    assert_true(gone == Items{21});
    assert_false(c.get(word_key(2), 0, &v, gone));
    c.put(word_key(1), 12, 0, gone);  // a replacement also makes it the most recent
    c.put(word_key(4), 41, 0, gone);
    assert_true((gone == Items{21, 11, 31}));
    assert_int_equal(c.size(), 2);
    assert_true(c.get(word_key(1), 0, &v, gone));
    assert_int_equal(v, 12);
    assert_true(c.get(word_key(4), 0, &v, gone));
}

void test_clear_hands_back_every_value(void **) {
    TtlCache c(100, 0);
    Items gone;
    for (uint64_t k = 0; k < 50; ++k) c.put(word_key(k), 1000 + k, 0, gone);
    assert_true(gone.empty());
    c.clear(gone);
    assert_int_equal(c.size(), 0);
    std::sort(gone.begin(), gone.end());
    assert_int_equal(gone.size(), 50);
    for (uint64_t k = 0; k < 50; ++k) assert_int_equal(gone[k], 1000 + k);
    uint64_t v = 0;
    assert_false(c.get(word_key(3), 0, &v, gone));
}

void test_every_value_leaves_exactly_once(void **) {
    // Churn with a small bound and a short ttl; every value put is either still cached or was
    // handed back once.
    TtlCache c(8, 50);
    Items gone;
    uint64_t v = 0, puts = 0;
    for (uint64_t i = 0; i < 5000; ++i) {
        uint64_t k = (i * 7919) % 23;
        if (!c.get(word_key(k), i, &v, gone)) c.put(word_key(k), 1000000 + puts++, i, gone);
    }
    c.clear(gone);
    std::sort(gone.begin(), gone.end());
    assert_int_equal(gone.size(), puts);
    for (uint64_t j = 0; j < puts; ++j) assert_int_equal(gone[j], 1000000 + j);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_is_fresh_until_exactly_its_ttl),
        cmocka_unit_test(test_a_read_does_not_extend_the_ttl),
        cmocka_unit_test(test_zero_ttl_never_expires),
        cmocka_unit_test(test_a_deadline_past_the_clocks_range_never_expires),
        cmocka_unit_test(test_replacing_a_value_hands_back_the_old_one_and_restarts_the_ttl),
        cmocka_unit_test(test_least_recently_used_entry_is_evicted_first),
        cmocka_unit_test(test_clear_hands_back_every_value),
        cmocka_unit_test(test_every_value_leaves_exactly_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
