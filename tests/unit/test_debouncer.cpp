// Unit tests of the debouncer: the held item leaves exactly `quiet` ns after its key's last
// item, a newer item replaces it and restarts the period, keys leave in due order, and the key
// bound sends the longest-quiet key on early.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <vector>

#include "flow/debouncer.hpp"

using fluxus::Debouncer;
using fluxus::word_key;

namespace {

using Items = std::vector<uint64_t>;

void test_item_leaves_exactly_quiet_ns_after_it_came(void **) {
    Debouncer d(100, 0);
    Items early, out;
    uint64_t replaced = 0;
    assert_int_equal(d.next_deadline(), UINT64_MAX);
    assert_false(d.offer(word_key(1), 11, 1000, &replaced, early));
    assert_int_equal(d.size(), 1);
    assert_int_equal(d.next_deadline(), 1100);
    d.collect_due(1099, out);
    assert_true(out.empty());
    d.collect_due(1100, out);
    assert_true(out == Items{11});
    assert_int_equal(d.size(), 0);
    assert_int_equal(d.next_deadline(), UINT64_MAX);
    assert_true(early.empty());
}

void test_newer_item_replaces_the_held_one_and_restarts_the_period(void **) {
    Debouncer d(100, 0);
    Items early, out;
    uint64_t replaced = 0;
    assert_false(d.offer(word_key(1), 11, 1000, &replaced, early));
    assert_true(d.offer(word_key(1), 12, 1050, &replaced, early));
    assert_int_equal(replaced, 11);
    assert_int_equal(d.size(), 1);
    assert_int_equal(d.next_deadline(), 1150);
    d.collect_due(1100, out);  // the first item's due time no longer counts
    assert_true(out.empty());
    d.collect_due(1150, out);
    assert_true(out == Items{12});
}

void test_keys_leave_in_due_order(void **) {
    Debouncer d(100, 0);
    Items early, out;
    uint64_t replaced = 0;
    d.offer(word_key(1), 11, 0, &replaced, early);
    d.offer(word_key(2), 21, 10, &replaced, early);
    d.offer(word_key(3), 31, 20, &replaced, early);
    d.offer(word_key(1), 12, 30, &replaced, early);  // key 1 now quiet last
    assert_int_equal(d.next_deadline(), 110);
    d.collect_due(120, out);
    assert_true((out == Items{21, 31}));
    assert_int_equal(d.next_deadline(), 130);
    d.collect_due(UINT64_MAX, out);
    assert_true((out == Items{21, 31, 12}));
}

void test_key_bound_sends_the_longest_quiet_key_on_early(void **) {
    Debouncer d(100, 2);
    Items early, out;
    uint64_t replaced = 0;
    d.offer(word_key(1), 11, 0, &replaced, early);
    d.offer(word_key(2), 21, 1, &replaced, early);
    d.offer(word_key(1), 12, 2, &replaced, early);  // a held key: no bound check
    assert_true(early.empty());
    assert_false(d.offer(word_key(3), 31, 3, &replaced, early));
    assert_true(early == Items{21});  // key 2 has been quiet the longest
    assert_int_equal(d.size(), 2);
    d.collect_due(UINT64_MAX, out);
    assert_true((out == Items{12, 31}));
}

void test_zero_key_bound_is_unbounded(void **) {
    Debouncer d(1, 0);
    Items early;
    uint64_t replaced = 0;
    for (uint64_t k = 0; k < 10000; ++k) d.offer(word_key(k), k, k, &replaced, early);
    assert_int_equal(d.size(), 10000);
    assert_true(early.empty());
}

void test_take_all_hands_back_every_held_item_in_due_order(void **) {
    Debouncer d(100, 0);
    Items early, out;
    uint64_t replaced = 0;
    d.offer(word_key(5), 51, 0, &replaced, early);
    d.offer(word_key(6), 61, 0, &replaced, early);
    d.offer(word_key(5), 52, 1, &replaced, early);
    d.take_all(out);
    assert_true((out == Items{61, 52}));
    assert_int_equal(d.size(), 0);
    assert_int_equal(d.next_deadline(), UINT64_MAX);
    // The debouncer is usable again afterwards: key 5 is new.
    assert_false(d.offer(word_key(5), 53, 2, &replaced, early));
}

void test_byte_keys_and_word_keys_are_distinct_keys(void **) {
    Debouncer d(10, 0);
    Items early;
    uint64_t replaced = 0;
    fluxus::Key128 bytes = fluxus::digest_bytes("a", 1);
    assert_false(d.offer(bytes, 1, 0, &replaced, early));
    assert_false(d.offer(word_key('a'), 2, 0, &replaced, early));
    assert_true(d.offer(fluxus::digest_bytes("a", 1), 3, 0, &replaced, early));
    assert_int_equal(replaced, 1);
    assert_int_equal(d.size(), 2);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_item_leaves_exactly_quiet_ns_after_it_came),
        cmocka_unit_test(test_newer_item_replaces_the_held_one_and_restarts_the_period),
        cmocka_unit_test(test_keys_leave_in_due_order),
        cmocka_unit_test(test_key_bound_sends_the_longest_quiet_key_on_early),
        cmocka_unit_test(test_zero_key_bound_is_unbounded),
        cmocka_unit_test(test_take_all_hands_back_every_held_item_in_due_order),
        cmocka_unit_test(test_byte_keys_and_word_keys_are_distinct_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
